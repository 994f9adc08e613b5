"""The conformance suite: every check runs over every format case of ``harness.CASES``.

Values against the format library's reader, views, zero padding, pickling,
fork / spawn pools, dask.distributed, no compute at creation, no file left
open after ``close()``, read-only sources. Adding a format means adding a
:class:`harness.FormatCase`, not a test.
"""

from __future__ import annotations

import gc
import multiprocessing
import pickle
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import raise_if_dask_computes
from harness import (
    CASE_IDS,
    CASES,
    FormatCase,
    Made,
    canonical_of,
    extract_after_pickle_check,
    extract_many,
    file_hashes,
    mapped_files,
    open_fds_to,
    random_requests,
    read_only,
    reference_patches,
)

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module", params=CASES, ids=CASE_IDS)
def case(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[FormatCase, Made]:
    fc: FormatCase = request.param
    return fc, fc.make(tmp_path_factory.mktemp(fc.name))


def _assert_patches(stack: Any, canonical: np.ndarray, n: int, seed: int) -> None:
    requests = random_requests(canonical.shape, n, seed)
    for req, got, want in zip(
        requests, extract_many(stack, requests), reference_patches(canonical, requests), strict=True
    ):
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got, want, err_msg=f"request {req}")


# -- values -----------------------------------------------------------------------------------------
def test_metadata(case: tuple[FormatCase, Made]) -> None:
    _fc, made = case
    stack = made.open()
    assert stack.original_axes == made.original_axes
    assert stack.original_data_shape == made.reference.shape
    assert tuple(stack.data_shape) == made.canonical.shape
    assert stack.data_dtype == made.reference.dtype
    assert isinstance(stack, __import__("lazystack").ImageStack)


def test_patches_equal_reference(case: tuple[FormatCase, Made]) -> None:
    _fc, made = case
    _assert_patches(made.open(), made.canonical, 60, seed=1)


def test_patch_wholly_outside_is_zero(case: tuple[FormatCase, Made]) -> None:
    _fc, made = case
    stack = made.open()
    spatial = stack.data_shape[2:]
    size = [2] * len(spatial)
    for coords in ([-5] * len(spatial), [n + 3 for n in spatial]):
        out = stack.extract_patch(0, None, coords, size)
        assert out.shape == (stack.n_channels, *size)
        assert not out.any()


def test_compute_data_xarray(case: tuple[FormatCase, Made]) -> None:
    _fc, made = case
    stack = made.open()
    np.testing.assert_array_equal(stack.compute(), made.canonical)
    np.testing.assert_array_equal(stack.data.compute(scheduler="sync"), made.canonical)
    xa = stack.xarray
    assert xa.dims == tuple(made.original_axes)
    np.testing.assert_array_equal(xa.values, made.reference)


def test_views(case: tuple[FormatCase, Made]) -> None:
    _fc, made = case
    stack = made.open()
    axes = stack.original_axes
    ref = made.reference
    key: list[Any] = [slice(None)] * len(axes)
    sel: dict[str, Any] = {"Y": slice(3, None, 2), "X": slice(1, -2)}
    key[axes.index("Y")] = slice(3, None, 2)
    key[axes.index("X")] = slice(1, -2)
    dropped = ""
    for a in axes:
        if a not in "YX" and ref.shape[axes.index(a)] > 1:
            sel[a] = ref.shape[axes.index(a)] - 1  # drop the first non-trivial axis
            key[axes.index(a)] = sel[a]
            dropped = a
            break
    view = stack.isel(**sel)
    view_ref = ref[tuple(key)]
    view_axes = axes.replace(dropped, "") if dropped else axes
    assert view.original_axes == view_axes
    canonical = canonical_of(view_ref, view_axes)
    np.testing.assert_array_equal(view.compute(), canonical)
    np.testing.assert_array_equal(view.data.compute(scheduler="sync"), canonical)
    _assert_patches(view, canonical, 20, seed=2)
    # a view of a view
    inner = view.isel(X=slice(2, 9))
    np.testing.assert_array_equal(inner.compute(), canonical[..., 2:9])


def test_batch_and_loaded_equal_reference(case: tuple[FormatCase, Made]) -> None:
    _fc, made = case
    stack = made.open()
    requests = random_requests(made.canonical.shape, 30, seed=11)
    want = reference_patches(made.canonical, requests)
    for got, w in zip(stack.extract_patches(requests), want, strict=True):
        np.testing.assert_array_equal(got, w)
    assert stack.load() is stack
    assert stack.is_loaded
    for got, w in zip(extract_many(stack, requests), want, strict=True):
        np.testing.assert_array_equal(got, w)
    np.testing.assert_array_equal(stack.data.compute(scheduler="sync"), made.canonical)
    stack.close()
    assert not stack.is_loaded
    _assert_patches(stack, made.canonical, 5, seed=12)


# -- pickling and processes -------------------------------------------------------------------------------
def test_pickle_round_trip(case: tuple[FormatCase, Made]) -> None:
    fc, made = case
    stack = made.open()
    stack.extract_patch(0, None, [0] * (len(stack.data_shape) - 2), [4] * (len(stack.data_shape) - 2))
    blob = pickle.dumps(stack)
    if fc.file_backed:
        assert len(blob) < 10_000, f"a file-backed stack pickles to {len(blob)} bytes (a recipe should be small)"
    back = pickle.loads(blob)
    assert back.source == stack.source
    assert back.data_shape == stack.data_shape
    _assert_patches(back, made.canonical, 15, seed=3)
    view = pickle.loads(pickle.dumps(stack.isel(X=slice(0, 7))))
    np.testing.assert_array_equal(view.compute(), made.canonical[..., :7])


@pytest.fixture(scope="module")
def spawn_pool() -> Iterator[Any]:
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        yield pool


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_process_pools(case: tuple[FormatCase, Made], method: str, spawn_pool: Any) -> None:
    _fc, made = case
    stack = made.open()
    stack.extract_patch(0, None, [0] * (len(stack.data_shape) - 2), [4] * (len(stack.data_shape) - 2))  # open now
    requests = random_requests(stack.data_shape, 12, seed=4)
    want = reference_patches(made.canonical, requests)
    if method == "fork":
        with multiprocessing.get_context("fork").Pool(2) as pool:
            results = pool.starmap(extract_after_pickle_check, [(stack, requests)] * 2)
    else:
        results = spawn_pool.starmap(extract_after_pickle_check, [(stack, requests)])
    for _pid, got in results:
        for g, w in zip(got, want, strict=True):
            np.testing.assert_array_equal(g, w)
    # the parent still reads correctly after the children did
    _assert_patches(stack, made.canonical, 5, seed=5)


@pytest.fixture(scope="module")
def dask_client() -> Iterator[Any]:
    distributed = pytest.importorskip("distributed")
    with (
        distributed.LocalCluster(
            n_workers=1, processes=True, threads_per_worker=1, dashboard_address=":0", silence_logs=40
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        yield client


def test_dask_distributed(case: tuple[FormatCase, Made], dask_client: Any) -> None:
    _fc, made = case
    stack = made.open()
    total = dask_client.compute(stack.data.astype(np.float64).sum()).result(timeout=60)
    np.testing.assert_allclose(total, made.canonical.astype(np.float64).sum(), rtol=1e-9)
    requests = random_requests(stack.data_shape, 8, seed=6)
    got = dask_client.submit(extract_many, stack, requests, pure=False).result(timeout=60)
    for g, w in zip(got, reference_patches(made.canonical, requests), strict=True):
        np.testing.assert_array_equal(g, w)
    mean = dask_client.compute(stack.xarray.mean()).result(timeout=60)
    np.testing.assert_allclose(float(mean), made.reference.astype(np.float64).mean(), rtol=1e-6)


# -- laziness, handles, read-only -----------------------------------------------------------------------
def test_no_compute_at_creation(case: tuple[FormatCase, Made]) -> None:
    _fc, made = case
    with raise_if_dask_computes():
        stack = made.open()
        stack.data  # noqa: B018
        stack.xarray  # noqa: B018
        repr(stack)
        stack.isel(X=slice(0, 5)).data  # noqa: B018
        pickle.loads(pickle.dumps(stack))
        stack.extract_patch(0, None, [0] * (len(stack.data_shape) - 2), [3] * (len(stack.data_shape) - 2))


def test_no_file_left_open_after_close(case: tuple[FormatCase, Made]) -> None:
    fc, made = case
    if not made.files:
        pytest.skip(f"{fc.name} reads no file")
    roots = [Path(p) for p in made.files]
    gc.collect()
    before = open_fds_to(roots)
    stacks = made.load(made.sources, made.axes)
    if fc.name in ("memmap", "zarr-array"):
        # the caller's own array object holds its map; only lazystack's handles are checked
        made = Made([], made.axes, made.reference, made.original_axes, made.load, made.files)
    for stack in stacks:
        _assert_patches(stack, made.canonical, 5, seed=7)
        stack.compute()
        stack.close()
    gc.collect()
    assert open_fds_to(roots) == before, "file descriptors still open after close()"
    if fc.name not in ("memmap", "zarr-array"):
        assert mapped_files(roots) == [], "files still memory-mapped after close()"
    # usable again after close, and a context manager closes too
    with stacks[0] as again:
        _assert_patches(again, made.canonical, 3, seed=8)
    gc.collect()
    assert open_fds_to(roots) == before


def test_read_only_sources(case: tuple[FormatCase, Made], tmp_path: Path) -> None:
    fc, made = case
    if not made.files:
        pytest.skip(f"{fc.name} reads no file")
    roots = [Path(p) for p in made.files]
    before = file_hashes(roots)
    listing = {r.parent: sorted(p.name for p in r.parent.iterdir()) for r in roots}
    with read_only(roots):
        stacks = made.load(made.sources, made.axes)
        for stack in stacks:
            _assert_patches(stack, made.canonical, 10, seed=9)
            np.testing.assert_array_equal(stack.compute(), made.canonical)
            stack.load()
            stack.close()
    assert file_hashes(roots) == before
    # no new file (lock, cache, index) appeared beside the source
    assert {d: sorted(p.name for p in d.iterdir()) for d in listing} == listing
