"""Custom-file back end: load_custom_file with lazy and eager read functions."""

from __future__ import annotations

import functools
import multiprocessing
import operator
import os
import pickle
import subprocess
import sys
from pathlib import Path
from typing import Any

import dask.array as da
import h5py
import numpy as np
import pytest
import zarr
from conftest import raise_if_dask_computes
from harness import truncate_then_read

from lazystack import (
    ShapeMismatchError,
    SourceNotFoundError,
    SourceReadError,
    UnsupportedSourceError,
    load_custom_file,
)
from lazystack.sources import custom

RNG = np.random.default_rng(99)

CALLS: list[Path] = []


def read_npy(path: Path, *, mmap_mode: str | None = None, scale: int = 1) -> Any:
    """Module-level (picklable) reader that records its calls."""
    CALLS.append(path)
    arr = np.load(path, mmap_mode=mmap_mode)
    return arr * scale if scale != 1 else arr


def read_zarr(path: Path) -> Any:
    return zarr.open_array(path, mode="r")


def read_h5(path: Path, *, name: str = "data") -> Any:
    return h5py.File(path, "r")[name]


def read_dask(path: Path) -> Any:
    return da.from_array(np.load(path, mmap_mode="r"), chunks=(1, 16, 16))


def read_raises(path: Path) -> Any:
    msg = f"cannot parse {path}"
    raise RuntimeError(msg)


def read_list(path: Path) -> Any:
    return [[1, 2], [3, 4]]


@pytest.fixture(autouse=True)
def _fresh_cache() -> Any:
    custom.clear_cache()
    custom.set_cache_bytes(custom.DEFAULT_CACHE_BYTES)
    CALLS.clear()
    yield
    custom.clear_cache()
    custom.set_cache_bytes(custom.DEFAULT_CACHE_BYTES)


@pytest.fixture
def npy_files(tmp_path: Path) -> list[tuple[Path, np.ndarray]]:
    out = []
    for i in range(3):
        data = RNG.integers(0, 1000, (2, 40, 50)).astype(np.uint16)
        path = tmp_path / f"img{i}.npy"
        np.save(path, data)
        out.append((path, data))
    return out


def _ref_patch(img: np.ndarray, coords: tuple[int, int], size: tuple[int, int]) -> np.ndarray:
    """Zero-padded float32 patch of a 2-D image (numpy padding)."""
    (y, x), (h, w) = coords, size
    padded = np.pad(img.astype(np.float32), ((h, h), (w, w)))
    return padded[y + h : y + 2 * h, x + w : x + 2 * w]


def test_eager_reader_called_once_then_cached(npy_files: list[tuple[Path, np.ndarray]]) -> None:
    paths = [p for p, _ in npy_files]
    with raise_if_dask_computes():
        stacks = load_custom_file(paths, "TYX", read_func=read_npy)
    assert [Path(p) for p in paths] == CALLS  # once each, at creation (shape and dtype), with a Path
    for stack, (path, data) in zip(stacks, npy_files, strict=True):
        assert stack.source == str(path)
        assert stack.format == "custom"
        assert stack.original_data_shape == data.shape
        assert stack.data_dtype == data.dtype
        assert stack.reader.eager
        assert stack.data.npartitions == 1  # one chunk per file
        for _ in range(10):
            t = int(RNG.integers(0, 2))
            coords = (int(RNG.integers(-5, 40)), int(RNG.integers(-5, 50)))
            np.testing.assert_array_equal(
                stack.extract_patch(t, None, coords, (9, 11))[0], _ref_patch(data[t], coords, (9, 11))
            )
        np.testing.assert_array_equal(stack.compute()[:, 0], data)
    assert len(CALLS) == 3  # patches came from the cache
    assert custom.cache_info()["entries"] == 3


def test_read_kwargs_are_passed(npy_files: list[tuple[Path, np.ndarray]]) -> None:
    path, data = npy_files[0]
    (stack,) = load_custom_file(path, "TYX", read_func=read_npy, read_kwargs={"scale": 3})
    np.testing.assert_array_equal(stack.compute()[:, 0], data * 3)
    (stack,) = load_custom_file(path, "TYX", read_func=read_npy, read_kwargs=None)
    np.testing.assert_array_equal(stack.compute()[:, 0], data)


def test_cache_is_bounded(tmp_path: Path) -> None:
    files = []
    for i in range(30):
        path = tmp_path / f"f{i}.npy"
        np.save(path, np.full((64, 64), i, dtype=np.float64))  # 32 KiB each
        files.append(path)
    custom.set_cache_bytes(100_000)  # three files
    stacks = load_custom_file(files, "YX", read_func=read_npy)
    for _ in range(2):
        for i, stack in enumerate(stacks):
            assert stack.extract_patch(0, None, (1, 1), (4, 4)).max() == i
            assert custom.cache_info()["nbytes"] <= 100_000
    assert custom.cache_info()["entries"] == 3
    # a file bigger than the bound is never cached: every read calls read_func
    custom.set_cache_bytes(1000)
    CALLS.clear()
    stacks[0].extract_patch(0, None, (0, 0), (2, 2))
    stacks[0].extract_patch(0, None, (0, 0), (2, 2))
    assert len(CALLS) == 2
    assert custom.cache_info()["entries"] == 0
    with pytest.raises(ValueError, match="whole-file cache size -1: must be >= 0"):
        custom.set_cache_bytes(-1)


def test_cache_default_and_environment_variable() -> None:
    assert custom.DEFAULT_CACHE_BYTES == 1 << 30
    code = "from lazystack.sources import custom; print(custom.cache_info()['max_bytes'])"
    env = {**os.environ, custom.CACHE_ENV_VAR: "12345"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "12345"
    env[custom.CACHE_ENV_VAR] = "lots"
    bad = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=False)
    assert bad.returncode != 0
    assert custom.CACHE_ENV_VAR in bad.stderr


@pytest.mark.parametrize("kind", ["memmap", "zarr", "h5py", "dask"])
def test_lazy_array_likes_stay_lazy(tmp_path: Path, kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    data = RNG.standard_normal((3, 48, 40)).astype(np.float32)
    if kind in {"memmap", "dask"}:
        path = tmp_path / "x.npy"
        np.save(path, data)
        func: Any = read_dask if kind == "dask" else functools.partial(read_npy, mmap_mode="r")
    elif kind == "zarr":
        path = tmp_path / "x.zarr"
        zarr.create_array(str(path), data=data, chunks=(1, 16, 16))
        func = read_zarr
    else:
        path = tmp_path / "x.h5"
        with h5py.File(path, "w") as f:
            f.create_dataset("data", data=data, chunks=(1, 16, 16))
        func = read_h5
    with raise_if_dask_computes():
        (stack,) = load_custom_file(path, "ZYX", read_func=func)
    reader = stack.reader
    assert not reader.eager
    assert custom.cache_info()["entries"] == 0  # nothing read whole
    if kind in {"zarr", "h5py", "dask"}:
        assert reader.chunks == ((1, 1, 1), (16, 16, 16), (16, 16, 8))
    canonical = data[np.newaxis, np.newaxis]
    for _ in range(8):
        z, y, x = (int(RNG.integers(-2, n)) for n in data.shape)
        got = stack.extract_patch(0, [0], (z, y, x), (2, 10, 10))
        pad = np.pad(canonical[0, 0], ((2, 2), (10, 10), (10, 10)))
        np.testing.assert_array_equal(got[0], pad[z + 2 : z + 4, y + 10 : y + 20, x + 10 : x + 20])
    np.testing.assert_array_equal(stack.data.compute(scheduler="sync")[0, 0], data)
    clone = pickle.loads(pickle.dumps(stack))
    np.testing.assert_array_equal(clone.compute()[0, 0], data)
    stack.close()  # releases the object (h5py: closes the file); reopens when read again
    np.testing.assert_array_equal(stack.extract_patch(0, None, (1, 2, 3), (1, 4, 4))[0, 0], data[1, 2:6, 3:7])


def test_lazy_reader_called_once_at_creation(npy_files: list[tuple[Path, np.ndarray]]) -> None:
    path, data = npy_files[0]
    (stack,) = load_custom_file(path, "TYX", read_func=read_npy, read_kwargs={"mmap_mode": "r"})
    assert len(CALLS) == 1
    for i in range(5):
        np.testing.assert_array_equal(stack.extract_patch(1, None, (i, i), (3, 3))[0], data[1, i : i + 3, i : i + 3])
    assert len(CALLS) == 1  # the memmap made at creation is reused


# -- bad input ------------------------------------------------------------------------------------
def test_read_func_raises(tmp_path: Path) -> None:
    path = tmp_path / "x.bin"
    path.write_bytes(b"abc")
    with pytest.raises(SourceReadError, match=r"read_raises.*x\.bin.*RuntimeError: cannot parse") as info:
        load_custom_file(path, "YX", read_func=read_raises)
    assert isinstance(info.value.__cause__, RuntimeError)


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "missing.npy"
    with pytest.raises(SourceNotFoundError, match=r"missing\.npy"):
        load_custom_file(path, "YX", read_func=read_npy)


def test_not_array_like(tmp_path: Path) -> None:
    path = tmp_path / "x.bin"
    path.write_bytes(b"abc")
    with pytest.raises(UnsupportedSourceError, match=r"read_list.*x\.bin.*returned a list, not an array-like"):
        load_custom_file(path, "YX", read_func=read_list)
    with pytest.raises(UnsupportedSourceError, match="callable"):
        load_custom_file(path, "YX", read_func="np.load")  # type: ignore[arg-type]


def test_axes_rank_mismatch(npy_files: list[tuple[Path, np.ndarray]]) -> None:
    path, _ = npy_files[0]
    with pytest.raises(ShapeMismatchError, match=r"'YX'.*img0\.npy.*3 dimension.*\(2, 40, 50\)"):
        load_custom_file(path, "YX", read_func=read_npy)


def test_file_changed_after_creation(tmp_path: Path) -> None:
    path = tmp_path / "x.npy"
    np.save(path, np.zeros((8, 8), np.uint8))
    (stack,) = load_custom_file(path, "YX", read_func=read_npy)
    custom.clear_cache()
    np.save(path, np.zeros((9, 8), np.uint8))
    with pytest.raises(SourceReadError, match=r"x\.npy.*changed since the stack was opened"):  # its stamp
        stack.extract_patch(0, None, (0, 0), (2, 2))


def test_source_files_not_modified(npy_files: list[tuple[Path, np.ndarray]]) -> None:
    paths = [p for p, _ in npy_files]
    before = [p.read_bytes() for p in paths]
    for p in paths:
        p.chmod(0o444)
    try:
        for kwargs in ({}, {"mmap_mode": "r"}):
            for stack in load_custom_file(paths, "TYX", read_func=read_npy, read_kwargs=kwargs):
                stack.extract_patch(0, None, (0, 0), (5, 5))
                stack.compute()
        assert [p.read_bytes() for p in paths] == before
    finally:
        for p in paths:
            p.chmod(0o644)


# -- pickling and processes ---------------------------------------------------------------------------
def test_pickle_recipe_and_lambda(npy_files: list[tuple[Path, np.ndarray]]) -> None:
    path, data = npy_files[0]
    (stack,) = load_custom_file(path, "TYX", read_func=read_npy)
    blob = pickle.dumps(stack)
    assert data.tobytes()[:64] not in blob
    assert len(blob) < 4000
    np.testing.assert_array_equal(pickle.loads(blob).compute()[:, 0], data)
    (local,) = load_custom_file(path, "TYX", read_func=lambda p: np.load(p))
    np.testing.assert_array_equal(local.compute()[:, 0], data)  # fine in-process
    with pytest.raises((pickle.PicklingError, AttributeError, TypeError)):
        pickle.dumps(local)  # documented: read_func must be picklable for process pools


def _apply(func: Any, arg: Any) -> Any:
    return func(arg)


def _apply_with_cache_info(func: Any, arg: Any) -> tuple[Any, dict[str, int]]:
    """``func(arg)`` and the cache of the process that ran it, just after."""
    return func(arg), custom.cache_info()


@pytest.mark.parametrize("method", ["fork", "spawn"])
@pytest.mark.parametrize("lazy", [False, True])
def test_process_pools(npy_files: list[tuple[Path, np.ndarray]], method: str, lazy: bool) -> None:
    if method not in multiprocessing.get_all_start_methods():
        pytest.skip(f"start method {method!r} is not available here")
    paths = [p for p, _ in npy_files]
    kwargs = {"mmap_mode": "r"} if lazy else {}
    # np.load itself is the read function: picklable by reference in any child
    stacks = load_custom_file(paths, "TYX", read_func=np.load, read_kwargs=kwargs)
    tasks = [(i % 3, i % 2, (i % 30 - 3, (7 * i) % 45 - 3)) for i in range(40)]
    jobs = [(operator.methodcaller("extract_patch", t, None, c, (8, 8)), stacks[i]) for i, t, c in tasks]
    ctx = multiprocessing.get_context(method)
    with ctx.Pool(2) as pool:
        got = pool.starmap(_apply_with_cache_info, jobs, chunksize=5)
    for (i, t, c), (patch, _) in zip(tasks, got, strict=True):
        np.testing.assert_array_equal(patch[0], _ref_patch(npy_files[i][1][t], c, (8, 8)))
    if not lazy:
        assert custom.cache_info()["entries"] == 3  # the parent's cache ...
        # ... is not the children's: each child that ran a job started empty and filled its own (a job's
        # child, not whichever child answers a later query: under load one child may run every job)
        for _, child_cache in got:
            assert 1 <= child_cache["entries"] <= 3
            assert child_cache["misses"] >= 1


def test_fork_child_starts_with_empty_cache(npy_files: list[tuple[Path, np.ndarray]]) -> None:
    if "fork" not in multiprocessing.get_all_start_methods():
        pytest.skip("fork is not available here")
    load_custom_file([p for p, _ in npy_files], "TYX", read_func=np.load)
    assert custom.cache_info()["entries"] == 3
    with multiprocessing.get_context("fork").Pool(1) as pool:
        info = pool.apply(custom.cache_info)
    assert info["entries"] == 0
    assert info["nbytes"] == 0


def test_threads_share_one_stack(npy_files: list[tuple[Path, np.ndarray]]) -> None:
    from concurrent.futures import ThreadPoolExecutor

    path, data = npy_files[0]
    (stack,) = load_custom_file(path, "TYX", read_func=read_npy, read_kwargs={"mmap_mode": "r"})
    coords = [((i * 7) % 45 - 4, (i * 11) % 55 - 4) for i in range(200)]
    with ThreadPoolExecutor(4) as ex:
        got = list(ex.map(lambda c: stack.extract_patch(1, None, c, (6, 6)), coords))
    for c, patch in zip(coords, got, strict=True):
        np.testing.assert_array_equal(patch[0], _ref_patch(data[1], c, (6, 6)))


def test_read_func_protocol() -> None:
    assert isinstance(read_npy, custom.ReadFunc)
    assert isinstance(np.load, custom.ReadFunc)


def test_different_lambdas_on_one_file_do_not_share_data(npy_files: list[tuple[Path, np.ndarray]]) -> None:
    path, data = npy_files[0]
    (a,) = load_custom_file(path, "TYX", read_func=lambda p: np.load(p))
    (b,) = load_custom_file(path, "TYX", read_func=lambda p: np.load(p) * 2)
    assert a.data.name != b.data.name
    np.testing.assert_array_equal(a.compute()[:, 0], data)
    np.testing.assert_array_equal(b.compute()[:, 0], data * 2)


def _truncate_then_read_npy(path: str, read_first: bool) -> str:
    (stack,) = load_custom_file(path, "ZYX", read_func=read_npy, read_kwargs={"mmap_mode": "r"})
    return truncate_then_read(stack, path, read_first)


@pytest.mark.parametrize("read_first", [True, False], ids=["after-a-read", "before-any-read"])
def test_memmap_truncated_after_open_is_an_error_not_sigbus(tmp_path: Path, read_first: bool) -> None:
    path = tmp_path / "mapped.npy"
    np.save(path, np.ones((4, 64, 64), np.uint16))
    ctx = multiprocessing.get_context("fork")  # a SIGBUS kills the child, not the test session
    with ctx.Pool(1) as pool:
        outcome = pool.apply_async(_truncate_then_read_npy, (str(path), read_first)).get(timeout=60)
    assert outcome.startswith("SourceReadError"), outcome
    assert "mapped.npy" in outcome
    assert "truncated" in outcome
