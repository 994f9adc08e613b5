"""dask chunks of a target size, built from the source's own chunks; task counts stay bounded.

References: dask's own slicing (for the chunk arithmetic of views), numpy
(for values), and task counts (``len`` of the graph), never seconds.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import dask
import dask.array as da
import numpy as np
import pytest
import tifffile
import zarr
from conftest import raise_if_dask_computes
from dask.callbacks import Callback

import lazystack
from lazystack import LazyImageStack, channel_statistics, load_arrays, load_tiffs, load_zarrs
from lazystack.io.reader import MAX_DASK_CHUNKS, dask_chunks
from lazystack.loading.stacklist import stack_summary


class Reader:
    """An array-like with chunks that records the regions it is asked for."""

    def __init__(self, data: np.ndarray, chunks: Any) -> None:
        self._data = data
        self.shape, self.dtype, self.chunks = data.shape, data.dtype, chunks
        self.keys: list[tuple[Any, ...]] = []

    def __getitem__(self, key: tuple[Any, ...]) -> np.ndarray:
        for k in key:
            assert isinstance(k, int) or (isinstance(k, slice) and k.step in (None, 1)), key
        self.keys.append(key)
        return self._data[key]


class Shape:
    """Metadata only: shape, dtype, chunks."""

    def __init__(self, shape: tuple[int, ...], dtype: str, chunks: Any) -> None:
        self.shape, self.dtype, self.chunks = shape, np.dtype(dtype), chunks


def _bounds(sizes: tuple[int, ...]) -> set[int]:
    return set(np.cumsum((0, *sizes)).tolist())


@pytest.mark.parametrize(
    ("shape", "chunks"),
    [
        ((65535, 64, 64), ((1,) * 65535, (64,), (64,))),
        ((3, 48, 1000, 1000), (1, 1, 256, 256)),
        ((10**6, 10**6), (1, 1)),
        ((2, 5000, 5000), (1, (1024,) * 4 + (904,), (5000,))),
        ((4, 3, 16, 16), (1, 1, 16, 16)),
    ],
)
def test_chunks_are_whole_storage_chunks_near_the_target(shape: tuple[int, ...], chunks: Any) -> None:
    target = 128 * 2**20
    reader = Shape(shape, "uint16", chunks)
    out = dask_chunks(reader, limit=target)
    storage = da.core.normalize_chunks(chunks, shape=shape)
    nbytes = int(np.prod(shape, dtype=np.float64)) * 2
    for axis, sizes in enumerate(out):
        assert sum(sizes) == shape[axis]
        assert _bounds(sizes) <= _bounds(storage[axis])  # merged, never split
    biggest = int(np.prod([max(c) for c in out])) * 2
    assert biggest <= target or all(len(c) == 1 for c in storage)
    n_out = int(np.prod([len(c) for c in out]))
    # within a factor 4 of the fewest chunks of the target size (doubling, plus edge chunks)
    assert n_out <= max(1, 4 * nbytes / target) * 4


def test_astronomic_declared_shape_stays_buildable() -> None:
    out = dask_chunks(Shape((3, 2**40, 2**40), "uint16", (1, 16, 16)))
    assert int(np.prod([len(c) for c in out])) <= MAX_DASK_CHUNKS


def test_target_follows_dask_config() -> None:
    reader = Shape((64, 256, 256), "uint8", (1, 256, 256))
    with dask.config.set({"array.chunk-size": "1MiB"}):
        assert dask_chunks(reader)[0] == (16,) * 4
    with dask.config.set({"array.chunk-size": "256KiB"}):
        assert dask_chunks(reader)[0] == (4,) * 16


def _huge_store(tmp_path: Path) -> Path:
    path = tmp_path / "huge.zarr"
    zarr.create_array(path, shape=(10**6, 10**6), chunks=(1, 1), dtype="uint8", fill_value=0)
    return path


def test_trillion_chunk_store_prints_and_gives_data_with_few_tasks(tmp_path: Path) -> None:
    path = _huge_store(tmp_path)
    meta = json.loads((path / "zarr.json").read_text())
    assert meta["chunk_grid"]["configuration"]["chunk_shape"] == [1, 1]  # 10**12 chunks declared
    stacks = load_zarrs(str(path), "YX")
    with raise_if_dask_computes():
        text = repr(stacks) + repr(stacks[0])
        summary = stack_summary(stacks[0])
        assert "huge.zarr" in text
        x = stacks[0].data
        n_tasks = len(x.__dask_graph__())
    nbytes = 10**12
    target = dask.utils.parse_bytes(dask.config.get("array.chunk-size"))
    assert n_tasks <= x.npartitions + 1 <= 2 * nbytes / target + 3  # one task per ~128 MiB, not per stored chunk
    assert tuple(summary["chunks"]) == tuple(c[0] for c in x.chunks)
    xr = stacks[0].xarray
    assert len(xr.data.__dask_graph__()) <= 2 * nbytes / target + 2
    # a patch still reads straight from the store (no dask), and is the fill value
    assert not stacks[0].extract_patch(0, None, (123456, 654321), (8, 8)).any()


def test_info_never_builds_a_dask_array(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _huge_store(tmp_path)

    def forbidden(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a dask array was built")

    monkeypatch.setattr(da, "from_array", forbidden)
    (stack,) = load_zarrs(str(path), "YX")
    repr(stack)
    stack_summary(stack)
    assert stack.chunk_shape[:2] == (1, 1)
    from lazystack.frontends.cli import main

    assert main(["info", str(path), "--axes", "YX"]) == 0


@pytest.fixture(scope="module")
def many_pages(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    path = tmp_path_factory.mktemp("pages") / "pages.tif"
    data = (np.arange(65535, dtype=np.uint32)[:, None, None] % 251 + np.zeros((1, 4, 4), np.uint32)).astype(np.uint8)
    tifffile.imwrite(path, data, metadata=None, photometric="minisblack")  # one page per plane
    return path, data


def test_channel_statistics_of_65535_pages_builds_few_tasks(many_pages: tuple[Path, np.ndarray]) -> None:
    path, data = many_pages
    with tifffile.TiffFile(path) as tif:
        assert len(tif.pages) == 65535
    (stack,) = load_tiffs(str(path), "SYX")
    sizes: list[int] = []
    with Callback(start=lambda dsk: sizes.append(len(dsk))):
        stats = channel_statistics(stack, percentiles=(50,))
    assert sizes, "no graph ran"
    assert max(sizes) <= 300, sizes
    assert stats.mean[0] == pytest.approx(data.mean())
    assert stats.percentile(50)[0] == np.percentile(data, 50)
    assert len(stack.data.__dask_graph__()) <= 10


def test_patches_never_go_through_dask(many_pages: tuple[Path, np.ndarray]) -> None:
    path, data = many_pages
    (stack,) = load_tiffs(str(path), "SYX")
    _ = stack.data  # a dask array exists: patches still read the reader directly
    with raise_if_dask_computes():
        np.testing.assert_array_equal(stack.extract_patch(60000, None, (1, 1), (2, 3))[0], data[60000, 1:3, 1:4])


def test_a_slice_of_data_reads_only_the_slice() -> None:
    data = np.random.default_rng(1).integers(0, 1000, (2, 3, 5, 64, 48)).astype(np.uint16)
    reader = Reader(data, (1, 1, 1, 32, 16))
    stack = LazyImageStack(reader, "TCZYX")
    assert stack.data.numblocks == (1, 1, 1, 1, 1)  # 2*3*5*64*48 uint16 values: one merged chunk
    got = stack.data[1, 2, 3, 5:9, ::7].compute()
    np.testing.assert_array_equal(got, data[1, 2, 3, 5:9, ::7])
    assert reader.keys == [(slice(1, 2), slice(2, 3), slice(3, 4), slice(5, 9), slice(0, 43))]
    reader.keys.clear()
    np.testing.assert_array_equal(stack.xarray[0, :, 1, -3:, 4].values, data[0, :, 1, -3:, 4])
    assert len(reader.keys) == 1
    assert reader.keys[0][3:] == (slice(61, 64), 4)


@pytest.mark.parametrize(
    ("axes", "shape", "chunks", "select"),
    [
        ("STCYX", (3, 4, 2, 30, 20), (1, 1, 1, 7, 5), {"T": slice(1, 4, 2), "Y": slice(3, 29, 4)}),
        ("YXC", (50, 40, 3), (8, 6, 1), {"Y": slice(None, None, 3), "C": 1}),
        ("TZYX", (5, 6, 20, 20), (2, 4, 20, 20), {"Z": slice(1, 5), "T": 3}),
    ],
)
def test_views_chunks_and_values_match_dask_slicing(
    axes: str, shape: tuple[int, ...], chunks: tuple[int, ...], select: dict[str, Any]
) -> None:
    data = np.random.default_rng(2).integers(0, 1000, shape).astype(np.uint16)
    (stack,) = load_arrays([Reader(data, chunks)], axes)
    view = stack.isel(**select)
    with dask.config.set({"array.chunk-size": "1B"}):
        (small,) = load_arrays([Reader(data, chunks)], axes)
        root = da.from_array(data, chunks=small._root_chunks)
        key = tuple(select.get(a, slice(None)) for a in axes)
        assert small.isel(**select).original_chunks == root[key].chunks  # dask's own slicing arithmetic
    root = da.from_array(data, chunks=stack._root_chunks)
    assert view.original_chunks == root[key].chunks
    np.testing.assert_array_equal(view.xarray.values, data[key])
    np.testing.assert_array_equal(view.data.compute(), view.compute())
    assert view.data.chunks == view.chunks
    assert view.chunk_shape == tuple(c[0] for c in view.data.chunks)


def test_lazystack_is_this_checkout() -> None:
    assert Path(lazystack.__file__).resolve().parents[1] == Path(__file__).resolve().parents[1]
