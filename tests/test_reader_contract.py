"""The reader contract (lazystack.io.reader): declared by every source, used by the stack and batches as declared.

Each source's reader is checked against numpy slicing of the data it was
written from; the stack and batched extraction are checked to use the
contract's methods (counted calls), not to probe readers for optional ones.
"""

from __future__ import annotations

import ast
import dataclasses
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import shared_files

import lazystack
from lazystack import LazyImageStack, UnsupportedSourceError, extract_patches, load_arrays
from lazystack.io.cache import chunk_cache_size
from lazystack.io.chunked import ChunkedReader
from lazystack.io.reader import ArrayReader, Reader, ReaderCapabilities, as_reader

PACKAGE = Path(lazystack.__file__).parent


# -- every source hands the stack a declared reader ------------------------------------------------------
def _tiff(tmp_path: Path, *, tiled: bool) -> tuple[list[LazyImageStack], np.ndarray]:
    tifffile = pytest.importorskip("tifffile")
    data = np.random.default_rng(0).integers(0, 60000, (3, 70, 90)).astype(np.uint16)
    path = tmp_path / ("tiled.tif" if tiled else "raw.tif")
    if tiled:
        tifffile.imwrite(path, data, tile=(32, 32), compression="zlib")
    else:
        tifffile.imwrite(path, data)
    return lazystack.load_tiffs(path, "ZYX"), data


def _zarr(tmp_path: Path) -> tuple[list[LazyImageStack], np.ndarray]:
    zarr = pytest.importorskip("zarr")
    data = np.random.default_rng(1).integers(0, 60000, (2, 70, 90)).astype(np.uint16)
    z = zarr.create_array(str(tmp_path / "a.zarr"), shape=data.shape, chunks=(1, 32, 32), dtype=data.dtype)
    z[:] = data
    return lazystack.load_zarrs(str(tmp_path / "a.zarr"), "SYX"), data


def _memmap(tmp_path: Path) -> tuple[list[LazyImageStack], np.ndarray]:
    data = np.random.default_rng(2).random((2, 40, 50)).astype(np.float32)
    np.save(tmp_path / "a.npy", data)
    return load_arrays([np.load(tmp_path / "a.npy", mmap_mode="r")], "SYX"), data


def _custom(tmp_path: Path) -> tuple[list[LazyImageStack], np.ndarray]:
    data = np.random.default_rng(3).integers(0, 255, (2, 40, 50)).astype(np.uint8)
    np.save(tmp_path / "b.npy", data)
    return lazystack.load_custom_file(tmp_path / "b.npy", "SYX", read_func=np.load), data


def _numpy(tmp_path: Path) -> tuple[list[LazyImageStack], np.ndarray]:
    data = np.random.default_rng(4).integers(-100, 100, (2, 40, 50)).astype(np.int16)
    return load_arrays([data], "SYX"), data


def _dask(tmp_path: Path) -> tuple[list[LazyImageStack], np.ndarray]:
    da = pytest.importorskip("dask.array")
    data = np.random.default_rng(5).random((2, 40, 50))
    return load_arrays([da.from_array(data, chunks=(1, 16, 16))], "SYX"), data


SOURCES = {
    "tiff-tiled": lambda p: _tiff(p, tiled=True),
    "tiff-memmap": lambda p: _tiff(p, tiled=False),
    "zarr": _zarr,
    "memmap": _memmap,
    "custom": _custom,
    "numpy": _numpy,
    "dask": _dask,
}


def _check_reader(reader: Any, data: np.ndarray) -> None:
    """The contract's members, each checked against numpy slicing of ``data``."""
    assert isinstance(reader, Reader)
    assert tuple(reader.shape) == data.shape
    assert np.dtype(reader.dtype) == data.dtype
    caps = reader.capabilities
    assert isinstance(caps, ReaderCapabilities)
    assert all(isinstance(getattr(caps, f.name), bool) for f in dataclasses.fields(caps))
    with pytest.raises(dataclasses.FrozenInstanceError):
        caps.remote = True  # type: ignore[misc]
    assert reader.token is None or isinstance(reader.token, str)
    rng = np.random.default_rng(9)
    for _ in range(10):
        region = tuple(
            slice(int(a), int(rng.integers(a + 1, n + 1))) for a, n in ((rng.integers(0, n), n) for n in data.shape)
        )
        np.testing.assert_array_equal(reader.read_region(region), data[region])
        assert reader.read_region(region).dtype == data.dtype  # the stored dtype, no cast
        cached = reader.read_cached(region)
        assert cached is None or np.array_equal(cached, data[region])
        as_f32 = reader.read_float32(region)
        assert as_f32 is None or (
            as_f32.dtype == np.float32 and np.array_equal(as_f32, data[region].astype(np.float32))
        )
    chunked = reader.as_chunked()
    assert chunked is None or (isinstance(chunked, ChunkedReader) and chunked.shape == reader.shape)
    reader.close()  # every reader has it; reading again reopens
    np.testing.assert_array_equal(reader.read_region(tuple(slice(0, n) for n in data.shape)), data)
    again = pickle.loads(pickle.dumps(reader))
    assert type(again) is type(reader)
    assert again.capabilities == caps


@pytest.mark.parametrize("source", sorted(SOURCES))
def test_every_source_hands_the_stack_one_declared_reader(tmp_path: Path, source: str) -> None:
    stacks, data = SOURCES[source](tmp_path)
    (stack,) = stacks
    _check_reader(stack.reader, data)


def test_capabilities_are_declared_as_the_sources_are(tmp_path: Path) -> None:
    """Declared values, not probes: memory-mapped TIFF and .npy, compressed tiles, a local Zarr store."""
    (tiled,), _ = _tiff(tmp_path, tiled=True)
    (raw,), _ = _tiff(tmp_path, tiled=False)
    (zarr_stack,), _ = _zarr(tmp_path)
    (mm,), _ = _memmap(tmp_path)
    (plain,), _ = _numpy(tmp_path)
    assert raw.reader.capabilities.memory_mapped
    assert not raw.reader.capabilities.compressed
    assert raw.reader.as_chunked() is None  # a memory map is sliced, never chunked
    assert not tiled.reader.capabilities.memory_mapped
    assert not zarr_stack.reader.capabilities.remote
    assert zarr_stack.reader.capabilities.compressed  # zarr's default codec (zstd)
    assert mm.reader.capabilities.memory_mapped
    assert plain.reader.capabilities == ReaderCapabilities(compressed=False)


@pytest.mark.parametrize("path", shared_files("czi", "*.czi")[:1], ids=lambda p: p.name)
def test_czi_reader_is_declared(path: Path) -> None:
    pytest.importorskip("pylibCZIrw")
    stack = lazystack.load_czis(path, "SCYX" if "100x100" in path.name else "STCZYX")[0]
    assert isinstance(stack.reader, Reader)
    reference = np.asarray(stack.reader[tuple(slice(0, n) for n in stack.reader.shape)])
    _check_reader(stack.reader, reference)


# -- plain array-likes are adapted once, where a stack is built ------------------------------------------
def test_plain_arrays_are_adapted_once() -> None:
    data = np.arange(2 * 30 * 40, dtype=np.uint16).reshape(2, 30, 40)
    stack = LazyImageStack(data, "SYX")
    assert isinstance(stack.reader, ArrayReader)
    assert stack.reader.array is data
    assert stack.isel(S=1).reader is stack.reader  # views share the one adapter
    reader = as_reader(data)
    assert isinstance(reader, ArrayReader)
    assert as_reader(reader) is reader  # a reader is taken as is
    assert as_reader(object()) is None
    with pytest.raises(UnsupportedSourceError, match="shape, dtype and __getitem__"):
        LazyImageStack([1, 2, 3], "X")


def test_a_dask_array_keeps_its_own_graph() -> None:
    da = pytest.importorskip("dask.array")
    x = da.from_array(np.arange(2 * 30 * 40).reshape(2, 30, 40), chunks=(1, 10, 20))
    stack = LazyImageStack(x, "SYX")
    assert stack.reader.as_dask() is x
    assert stack.reader.chunks == x.chunks
    assert stack.original_chunks == x.chunks
    np.testing.assert_array_equal(stack.extract_patch(1, None, (3, 4), (5, 6))[0], np.asarray(x[1, 3:8, 4:10]))


# -- the stack uses the contract's methods, with their defaults --------------------------------------------
class MinimalReader(Reader):
    """Only what a subclass must give: shape, dtype, __getitem__ (every other member has its default)."""

    def __init__(self, data: np.ndarray) -> None:
        self.shape, self.dtype, self.data = data.shape, data.dtype, data
        self.keys: list[Any] = []

    def __getitem__(self, key: Any) -> np.ndarray:
        self.keys.append(key)
        return self.data[key]


def test_a_minimal_reader_gets_the_defaults() -> None:
    data = np.random.default_rng(6).integers(0, 1000, (3, 2, 30, 40)).astype(np.uint16)
    reader = MinimalReader(data)
    region = (slice(0, 1), slice(0, 2), slice(3, 9), slice(4, 5))
    assert reader.read_cached(region) is None
    assert reader.read_float32(region) is None
    assert reader.as_chunked() is None
    assert reader.as_dask() is None
    assert reader.capabilities == ReaderCapabilities()
    assert reader.chunks is None
    assert reader.token is None
    reader.close()
    np.testing.assert_array_equal(reader.read_region(region), data[region])
    stack = LazyImageStack(reader, "TCYX")
    assert stack.reader is reader
    reader.keys.clear()
    patch = stack.extract_patch(2, None, (3, 4), (6, 7))
    np.testing.assert_array_equal(patch, data[2, :, 3:9, 4:11].astype(np.float32))
    assert reader.keys == [(slice(2, 3), slice(0, 2), slice(3, 9), slice(4, 11))]  # one region read
    np.testing.assert_array_equal(np.asarray(reader), data)
    (batched,) = extract_patches([(stack, 2, None, (3, 4), (6, 7))])  # no chunk reader: one by one
    np.testing.assert_array_equal(batched, patch)


class CountingRegions(MinimalReader):
    """Overrides the optional reads: counts them, serves ``cached`` from a dict, float32 when asked."""

    def __init__(self, data: np.ndarray, *, float32: bool) -> None:
        super().__init__(data)
        self.calls: list[str] = []
        self.cached: dict[tuple[tuple[int, int], ...], np.ndarray] = {}
        self.float32 = float32
        self.made: list[np.ndarray] = []

    def read_region(self, region: tuple[slice, ...]) -> np.ndarray:
        self.calls.append("region")
        out = self.data[region]
        self.cached[tuple((s.start, s.stop) for s in region)] = out
        return out

    def read_cached(self, region: tuple[slice, ...]) -> np.ndarray | None:
        self.calls.append("cached")
        return self.cached.get(tuple((s.start, s.stop) for s in region))

    def read_float32(self, region: tuple[slice, ...]) -> np.ndarray | None:
        self.calls.append("float32")
        if not self.float32:
            return None
        out = self.data[region].astype(np.float32)
        self.made.append(out)
        return out


@pytest.mark.parametrize("float32", [False, True])
def test_one_read_path_cache_then_float32_then_region(float32: bool) -> None:
    data = np.random.default_rng(7).integers(0, 1000, (2, 30, 40)).astype(np.uint16)
    reader = CountingRegions(data, float32=float32)
    stack = LazyImageStack(reader, "SYX")
    want = data[1, 5:15, 6:26].astype(np.float32)[np.newaxis]
    first = stack.extract_patch(1, None, (5, 6), (10, 20))
    np.testing.assert_array_equal(first, want)
    if float32:  # the reader's new float32 array is the patch itself: no copy, no cast in the stack
        assert reader.calls == ["cached", "float32"]
        assert np.shares_memory(first, reader.made[0])
    else:
        assert reader.calls == ["cached", "float32", "region"]
        reader.calls.clear()
        again = stack.extract_patch(1, None, (5, 6), (10, 20))
        np.testing.assert_array_equal(again, want)
        assert reader.calls == ["cached"]  # served from memory alone
        assert again.flags.writeable
        assert not np.shares_memory(again, data)
    # the general path (a channel list, a view) reads through the same cache-then-region path
    reader.calls.clear()
    np.testing.assert_array_equal(stack.extract_patch(1, [0], (-2, 6), (10, 20))[0, 2:], data[1, 0:8, 6:26])
    assert reader.calls == ["cached", "region"]
    reader.calls.clear()
    np.testing.assert_array_equal(stack.isel(S=0).compute()[0, 0], data[0])
    assert reader.calls == ["cached", "region"]


# -- batches work through the public interface ---------------------------------------------------------------
def test_plan_patch_and_patch_from_region_give_extract_patch() -> None:
    data = np.random.default_rng(8).integers(0, 1000, (2, 3, 30, 40)).astype(np.uint16)
    stack = LazyImageStack(data, "SCYX")
    inside = stack.plan_patch(1, None, (4, 5), (6, 7))
    assert inside.region == (slice(1, 2), slice(0, 3), slice(4, 10), slice(5, 12))
    assert inside.size == [6, 7]
    block = data[inside.region].copy()
    np.testing.assert_array_equal(
        stack.patch_from_region(block, inside.size), stack.extract_patch(1, None, (4, 5), (6, 7))
    )
    edge = stack.plan_patch(0, [2, 0], (-3, 35), (6, 7))
    assert edge.size is None  # not the region as is: a channel list, a patch leaving the image
    assert edge.region == (slice(0, 1), slice(0, 3), slice(0, 3), slice(35, 40))
    assert stack.plan_patch(0, None, (100, 100), (6, 7)) == (None, None)  # wholly outside
    view = stack.isel(C=slice(1, 3), X=slice(0, 40, 2))
    plan = view.plan_patch(1, [1], (2, 3), (4, 5))
    assert plan.region == (slice(1, 2), slice(2, 3), slice(2, 6), slice(6, 15))  # bounding slices in root axes
    with pytest.raises(lazystack.ChannelIndexError):
        stack.plan_patch(0, [5], (0, 0), (4, 4))


def test_with_reader_reads_through_the_given_reader() -> None:
    data = np.random.default_rng(10).integers(0, 1000, (2, 30, 40)).astype(np.uint16)
    stack = LazyImageStack(data, "SYX").isel(Y=slice(2, 30))
    other = MinimalReader(data + 1)
    moved = stack.with_reader(other)
    np.testing.assert_array_equal(moved.extract_patch(1, None, (0, 0), (3, 3))[0], data[1, 2:5, 0:3] + 1)
    assert other.keys
    np.testing.assert_array_equal(stack.extract_patch(1, None, (0, 0), (3, 3))[0], data[1, 2:5, 0:3])  # unchanged
    with pytest.raises(lazystack.ShapeMismatchError, match=r"\(2, 30, 41\)"):
        stack.with_reader(MinimalReader(np.zeros((2, 30, 41), np.uint16)))


def test_batches_of_chunked_stacks_match_one_by_one(tmp_path: Path) -> None:
    (stack,), _data = _zarr(tmp_path)
    rng = np.random.default_rng(11)
    reqs = [
        (int(rng.integers(0, 2)), None, (int(rng.integers(-5, 60)), int(rng.integers(-5, 80))), (16, 16))
        for _ in range(30)
    ]
    reqs += [(0, [0], (3, 4), (10, 10))]
    for size in (0, 2**24):
        with chunk_cache_size(size):
            got = extract_patches([(stack, *r) for r in reqs])
        want = [stack.extract_patch(*r) for r in reqs]
        for g, w in zip(got, want, strict=True):
            np.testing.assert_array_equal(g, w)


# -- no probing, no private state (alongside the behavioural tests above) ---------------------------------
_STACK_PRIVATE = {
    "_reader", "_model", "_identity", "_compose", "_channel_list", "_inside_region", "_finish_inside",
    "_fast", "_fast_plan", "_view_chunks", "_selection", "_root",
}  # fmt: skip


def _calls(tree: ast.AST, names: set[str]) -> list[ast.Call]:
    return [
        n for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id in names
    ]


def test_the_stack_probes_no_reader() -> None:
    tree = ast.parse((PACKAGE / "stack.py").read_text())
    assert [ast.unparse(c) for c in _calls(tree, {"getattr", "hasattr", "callable"})] == []


@pytest.mark.parametrize("module", sorted(p.name for p in (PACKAGE / "ops").glob("*.py")))
def test_operations_probe_no_reader_and_touch_no_private_stack_state(module: str) -> None:
    tree = ast.parse((PACKAGE / "ops" / module).read_text())
    probes = [ast.unparse(c) for c in _calls(tree, {"getattr", "hasattr"}) if "reader" in ast.unparse(c.args[0])]
    assert probes == []
    private = [
        f"line {n.lineno}: {ast.unparse(n)}"
        for n in ast.walk(tree)
        if isinstance(n, ast.Attribute)
        and (n.attr in _STACK_PRIVATE or n.attr == "__dict__")
        and not (isinstance(n.value, ast.Name) and n.value.id == "self")
    ]
    assert private == []
