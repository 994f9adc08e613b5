"""The lazy stack on array sources: values, views, laziness, pickling, bad input."""

from __future__ import annotations

import multiprocessing as mp
import pickle
import threading
from typing import Any

import dask
import dask.array as da
import numpy as np
import pytest
import xarray as xr
import zarr
from conftest import raise_if_dask_computes
from reference import canonical_reference, patch_reference

import lazystack
from lazystack import (
    AxesError,
    ChannelIndexError,
    ImageStack,
    ImageStackLoader,
    LazyImageStack,
    PatchError,
    SampleIndexError,
    SelectionError,
    ShapeMismatchError,
    UnsupportedSourceError,
    load_arrays,
)
from lazystack.io.chunked import ChunkedReader
from lazystack.io.reader import ArrayReader, Reader

AXES = "TCZYX"
SHAPE = (3, 2, 5, 40, 50)


@pytest.fixture
def data() -> np.ndarray:
    return np.random.default_rng(1).integers(0, 60000, SHAPE, dtype=np.uint16)


class CountingReader:
    """An array-like that records every key it is asked for (and checks the contract)."""

    def __init__(self, arr: np.ndarray, chunks: tuple[int, ...] | None = None) -> None:
        self.arr = arr
        self.shape = arr.shape
        self.dtype = arr.dtype
        self.chunks = chunks
        self.keys: list[tuple[Any, ...]] = []
        self.closed = 0

    def __getitem__(self, key: tuple[Any, ...]) -> np.ndarray:
        assert isinstance(key, tuple)
        assert len(key) == self.arr.ndim
        for k, n in zip(key, self.shape, strict=True):
            if isinstance(k, slice):
                assert k.step in (None, 1), f"reader got a stepped slice {k}"
                assert 0 <= k.start <= k.stop <= n, f"reader got an out-of-bounds slice {k} for size {n}"
            else:
                assert 0 <= k < n
        self.keys.append(key)
        return self.arr[key]

    def close(self) -> None:
        self.closed += 1


# -- construction from every kind of array-like -----------------------------------------
def _sources(data: np.ndarray, tmp_path: Any) -> dict[str, Any]:
    np.save(tmp_path / "a.npy", data)
    z = zarr.create_array(tmp_path / "a.zarr", shape=data.shape, chunks=(1, 1, 5, 20, 25), dtype=data.dtype)
    z[...] = data
    h5py = pytest.importorskip("h5py")
    f = h5py.File(tmp_path / "a.h5", "w")
    f.create_dataset("d", data=data, chunks=(1, 1, 5, 20, 25))
    return {
        "numpy": data,
        "memmap": np.load(tmp_path / "a.npy", mmap_mode="r"),
        "dask": da.from_array(data, chunks=(1, 2, 5, 20, 20)),
        "zarr": zarr.open_array(tmp_path / "a.zarr", mode="r"),
        "xarray": xr.DataArray(data, dims=list(AXES), coords={"C": ["dapi", "gfp"]}),
        "h5py": f["d"],
    }


@pytest.mark.parametrize("kind", ["numpy", "memmap", "dask", "zarr", "xarray", "h5py"])
def test_load_arrays_every_array_like(kind: str, data: np.ndarray, tmp_path: Any) -> None:
    src = _sources(data, tmp_path)[kind]
    (stack,) = load_arrays([src], AXES.lower())
    ref = canonical_reference(data, AXES)
    assert stack.source == "array"
    assert stack.data_shape == ref.shape
    assert stack.data_dtype == np.uint16
    assert stack.original_axes == AXES
    assert stack.original_data_shape == SHAPE
    np.testing.assert_array_equal(stack.compute(), ref)
    np.testing.assert_array_equal(stack.data.compute(), ref)
    np.testing.assert_array_equal(stack.xarray.values, data)
    rng = np.random.default_rng(0)
    for _ in range(20):
        sample = int(rng.integers(stack.n_samples))
        coords = [int(rng.integers(-10, n)) for n in ref.shape[2:]]
        size = [int(rng.integers(1, 30)) for _ in coords]
        chans = [1, 0] if rng.random() < 0.5 else None
        patch = stack.extract_patch(sample, chans, coords, size)
        assert patch.dtype == np.float32
        np.testing.assert_array_equal(patch, patch_reference(ref, sample, chans, coords, size))
    if kind == "xarray":
        assert stack.channel_names == ["dapi", "gfp"]
        assert list(stack.xarray.coords["C"].values) == ["dapi", "gfp"]


def test_no_copy_no_cast(data: np.ndarray) -> None:
    (stack,) = load_arrays([data], AXES)
    assert isinstance(stack.reader, ArrayReader)  # adapted once, where the stack is built
    assert stack.reader.array is data
    assert stack.data_dtype == data.dtype


def test_single_array_is_one_source(data: np.ndarray) -> None:
    stacks = load_arrays(data, AXES)
    assert len(stacks) == 1


def test_protocols() -> None:
    (stack,) = load_arrays([np.zeros((4, 4))], "YX")
    assert isinstance(stack, ImageStack)
    loader: ImageStackLoader[[], LazyImageStack] = load_arrays
    assert loader([np.zeros((2, 4, 4))], "SYX")[0].data_shape == (2, 1, 4, 4)


# -- patches -------------------------------------------------------------------------------
def test_extract_patch_reads_only_the_overlapping_region(data: np.ndarray) -> None:
    reader = CountingReader(data)
    (stack,) = load_arrays([reader], AXES)
    stack.extract_patch(1, [1], (1, 30, -5), (2, 20, 15))
    # one region read: step-1 slices only (the sample's axis too), inside the bounds
    assert reader.keys == [(slice(1, 2), slice(1, 2), slice(1, 3), slice(30, 40), slice(0, 10))]
    reader.keys.clear()
    out = stack.extract_patch(0, None, (100, 100, 100), (2, 2, 2))
    assert reader.keys == []  # entirely outside: nothing read
    assert not out.any()


class _RegionReader(Reader):
    """A numpy-backed reader (the contract of lazystack.io.reader) recording which entry point each read used."""

    def __init__(self, arr: np.ndarray) -> None:
        self.arr = arr
        self.shape = arr.shape
        self.dtype = arr.dtype
        self.calls: list[str] = []

    def __getitem__(self, key: Any) -> np.ndarray:
        self.calls.append("getitem")
        return self.arr[key]

    def read_region(self, region: tuple[slice, ...]) -> np.ndarray:
        assert all(
            type(s) is slice and s.step is None and 0 <= s.start <= s.stop <= n
            for s, n in zip(region, self.shape, strict=True)
        )
        self.calls.append("read_region")
        return self.arr[region]


@pytest.mark.parametrize(
    ("axes", "shape"),
    [
        ("YX", (30, 40)),
        ("SYXC", (2, 30, 40, 3)),
        ("CTZXYS", (2, 3, 4, 20, 25, 2)),
        ("XYS", (40, 30, 3)),
        ("ZCYX", (6, 2, 30, 40)),
    ],
)
def test_the_fast_patch_path_matches_the_reference(axes: str, shape: tuple[int, ...]) -> None:
    """Every patch, fast path or not, is one ``read_region`` call of the reader (never ``__getitem__``)."""
    arr = np.random.default_rng(3).integers(0, 1000, shape).astype(np.int32)
    reader = _RegionReader(arr)
    (stack,) = load_arrays([reader], axes)
    (plain,) = load_arrays([arr], axes)
    spatial = [a for a in "ZYX" if a in axes]
    size = tuple(min(5, arr.shape[axes.index(a)]) for a in spatial)
    rng = np.random.default_rng(4)
    for i in range(20):
        sample = int(rng.integers(0, stack.n_samples))
        coords = tuple(
            int(rng.integers(0, arr.shape[axes.index(a)] - n + 1)) for a, n in zip(spatial, size, strict=True)
        )
        reader.calls.clear()
        got = stack.extract_patch(sample, None, list(coords) if i % 2 else coords, size)
        assert reader.calls == ["read_region"]
        assert got.dtype == np.float32
        assert got.flags.c_contiguous
        assert got.flags.writeable
        want = patch_reference(canonical_reference(arr, axes), sample, None, coords, size)
        np.testing.assert_array_equal(got, want)
        np.testing.assert_array_equal(plain.extract_patch(sample, None, coords, size), want)
    # not the fast path: a channel list, a patch leaving the image, a bool or float coordinate
    reader.calls.clear()
    stack.extract_patch(0, [0], (0,) * len(spatial), size)
    stack.extract_patch(0, None, (-1,) * len(spatial), size)
    stack.extract_patch(0, None, (True,) * len(spatial), size)
    with pytest.raises(PatchError):
        stack.extract_patch(0, None, (0.0,) * len(spatial), size)
    assert reader.calls == ["read_region"] * 3


class _CachedRegions(ChunkedReader):
    """A chunked numpy reader that records its fetches and every ``read_region`` call."""

    def __init__(self, arr: np.ndarray, chunks: tuple[int, ...]) -> None:
        super().__init__(arr.shape, arr.dtype, chunks, token=f"cached-regions-{id(self)}")
        self.arr = arr
        self.fetched: list[tuple[int, ...]] = []
        self.region_reads = 0

    def fetch_chunks(self, indices: Any) -> dict[tuple[int, ...], np.ndarray]:
        self.fetched.extend(indices)
        return {idx: self.arr[self.chunk_grid.chunk_region(idx)].copy() for idx in indices}

    def read_region(self, region: tuple[slice, ...]) -> np.ndarray:
        self.region_reads += 1
        return super().read_region(region)


@pytest.mark.parametrize(
    ("axes", "shape", "chunks"), [("SCYX", (2, 3, 30, 40), (1, 3, 8, 16)), ("YXS", (30, 40, 2), (8, 16, 1))]
)
def test_a_warm_patch_comes_from_the_cache_alone(axes: str, shape: tuple[int, ...], chunks: tuple[int, ...]) -> None:
    """Every chunk cached: no read_region, no fetch, the reference's values in a fresh writable array."""
    previous = lazystack.set_chunk_cache_size(2**24)
    try:
        arr = np.random.default_rng(5).integers(0, 60000, shape).astype(np.uint16)
        reader = _CachedRegions(arr, chunks)
        (stack,) = load_arrays([reader], axes)
        ref = canonical_reference(arr, axes)
        rng = np.random.default_rng(6)
        requests = [
            (int(rng.integers(0, 2)), (int(rng.integers(0, 25)), int(rng.integers(0, 31))), (5, 9)) for _ in range(40)
        ]
        for sample, coords, size in requests:  # cold: through read_region, filling the cache
            np.testing.assert_array_equal(
                stack.extract_patch(sample, None, coords, size), patch_reference(ref, sample, None, coords, size)
            )
        reads, fetched = reader.region_reads, len(reader.fetched)
        assert 0 < reads < len(requests)  # later requests already found all their chunks cached
        spans = 0
        for sample, coords, size in requests:  # warm: one cache look-up each, one chunk or several
            got = stack.extract_patch(sample, None, coords, size)
            np.testing.assert_array_equal(got, patch_reference(ref, sample, None, coords, size))
            assert got.dtype == np.float32
            assert got.flags.c_contiguous
            assert got.flags.writeable
            spans += reader.chunk_grid.n_touched(stack._inside_region(sample, coords, size)[0]) > 1
        assert spans > 0, "no warm patch spanned several chunks"
        assert (reader.region_reads, len(reader.fetched)) == (reads, fetched)
        # a patch over one cached and one uncached chunk: the cache alone cannot serve it, read_region does
        lazystack.get_chunk_cache().clear()
        stack.extract_patch(0, None, (0, 0), (5, 9))
        got = stack.extract_patch(0, None, (0, 10), (5, 9))
        np.testing.assert_array_equal(got, patch_reference(ref, 0, None, (0, 10), (5, 9)))
        assert reader.region_reads == reads + 2
    finally:
        lazystack.get_chunk_cache().clear()
        lazystack.set_chunk_cache_size(previous)


def test_the_fast_patch_path_leaves_errors_to_the_general_path(data: np.ndarray) -> None:
    (stack,) = load_arrays([_RegionReader(data)], AXES)
    with pytest.raises(SampleIndexError):
        stack.extract_patch(3 * 1, None, (0, 0, 0), (1, 1, 1))
    with pytest.raises(PatchError):
        stack.extract_patch(0, None, (0, 0), (1, 1, 1))
    with pytest.raises(PatchError):
        stack.extract_patch(0, None, (0, 0, 0), (1, 0, 1))
    with pytest.raises(PatchError):
        stack.extract_patch(0, None, (0, 0.5, 0), (1, 1, 1))


def test_extract_patch_zero_padding(data: np.ndarray) -> None:
    (stack,) = load_arrays([data], AXES)
    patch = stack.extract_patch(0, [0], (-2, -3, 45), (4, 6, 10))
    assert patch.shape == (1, 4, 6, 10)
    assert not patch[:, :2].any()
    assert not patch[:, :, :3].any()
    assert not patch[..., 5:].any()
    np.testing.assert_array_equal(patch[0, 2:, 3:, :5], data[0, 0, 0:2, 0:3, 45:50])


def test_channels_any_order_and_repeats(data: np.ndarray) -> None:
    (stack,) = load_arrays([data], AXES)
    patch = stack.extract_patch(2, [1, 0, 1], (0, 0, 0), (1, 3, 3))
    np.testing.assert_array_equal(patch, data[2, [1, 0, 1], 0:1, 0:3, 0:3].astype(np.float32))


def test_stack_without_channel_axis_has_one_channel() -> None:
    arr = np.arange(2 * 6 * 7).reshape(2, 6, 7)
    (stack,) = load_arrays([arr], "SYX")
    assert stack.data_shape == (2, 1, 6, 7)
    np.testing.assert_array_equal(stack.extract_patch(1, [0], (0, 0), (6, 7))[0], arr[1])
    with pytest.raises(ChannelIndexError, match="has 1 channel"):
        stack.extract_patch(1, [1], (0, 0), (6, 7))


# -- bad input -----------------------------------------------------------------------------
@pytest.mark.parametrize("axes", ["YXQ", "YYX", "ZX", ""])
def test_bad_axes(axes: str) -> None:
    with pytest.raises(AxesError, match=repr(axes) if axes else "empty"):
        load_arrays([np.zeros((3, 4, 5))], axes)


def test_axes_length_must_match_ndim() -> None:
    with pytest.raises(ShapeMismatchError, match=r"'ZYX' have 3 letter.*2 dimension.*\(4, 5\)"):
        load_arrays([np.zeros((4, 5))], "ZYX")


def test_not_array_like() -> None:
    with pytest.raises(UnsupportedSourceError, match="item 0 is a list"):
        load_arrays([[[1, 2], [3, 4]]], "YX")
    with pytest.raises(UnsupportedSourceError, match="no arrays"):
        load_arrays([], "YX")


@pytest.mark.parametrize(
    ("coords", "size", "fragment"),
    [
        ((0, 0), (4, 4, 4), "must each have 3 entries"),
        ((0, 0, 0), (4, 4), "must each have 3 entries"),
        ((0, 0), (4, 4), "must each have 3 entries"),
        ((0, 0, 0), (4, 0, 4), "positive"),
        ((0, 0, 0), (4, -2, 4), "positive"),
        ((0, 0.5, 0), (4, 4, 4), "sequence of integers"),
    ],
)
def test_bad_patch_geometry(data: np.ndarray, coords: Any, size: Any, fragment: str) -> None:
    (stack,) = load_arrays([data], AXES)
    with pytest.raises(PatchError, match=fragment):
        stack.extract_patch(0, None, coords, size)


@pytest.mark.parametrize("sample", [-1, 3, 99])
def test_sample_out_of_range(data: np.ndarray, sample: int) -> None:
    (stack,) = load_arrays([data], AXES)
    with pytest.raises(SampleIndexError, match=f"sample_idx {sample} is out of range for 3 sample"):
        stack.extract_patch(sample, None, (0, 0, 0), (1, 1, 1))


@pytest.mark.parametrize("channels", [[2], [-1], [0, 5]])
def test_channel_out_of_range(data: np.ndarray, channels: list[int]) -> None:
    (stack,) = load_arrays([data], AXES)
    bad = next(c for c in channels if not 0 <= c < 2)
    with pytest.raises(ChannelIndexError, match=rf"channel index {bad} is out of range.*2 channel") as info:
        stack.extract_patch(0, channels, (0, 0, 0), (1, 1, 1))
    assert isinstance(info.value, ValueError)


def test_empty_channel_list(data: np.ndarray) -> None:
    (stack,) = load_arrays([data], AXES)
    with pytest.raises(ChannelIndexError, match="must not be empty"):
        stack.extract_patch(0, [], (0, 0, 0), (1, 1, 1))


@pytest.mark.parametrize(
    ("indexers", "fragment"),
    [
        ({"S": 0}, "cannot select on axis 'S'"),
        ({"T": 3}, "out of range for axis 'T' of size 3"),
        ({"Y": 0}, "cannot drop spatial axis 'Y'"),
        ({"X": slice(10, 5)}, "selects nothing"),
        ({"Z": slice(None, None, -1)}, "positive slice steps"),
        ({"C": "a"}, "expected an int or a slice"),
    ],
)
def test_bad_isel(data: np.ndarray, indexers: dict[str, Any], fragment: str) -> None:
    (stack,) = load_arrays([data], AXES)
    with pytest.raises(SelectionError, match=fragment):
        stack.isel(**indexers)


# -- views ---------------------------------------------------------------------------------
def test_views_compose_and_read_only_their_region(data: np.ndarray) -> None:
    reader = CountingReader(data)
    (stack,) = load_arrays([reader], AXES)
    view = stack.isel(t=slice(1, 3), Y=slice(5, 35)).isel(C=1, X=slice(10, 40, 3), Y=slice(2, None))
    assert view.original_axes == "TZYX"
    sub = data[1:3, 1, :, 5:35][:, :, 2:, 10:40:3]
    assert view.original_data_shape == sub.shape
    assert view.data_shape == (2, 1, *sub.shape[1:])
    np.testing.assert_array_equal(view.compute(), canonical_reference(sub, "TZYX"))
    np.testing.assert_array_equal(view.data.compute(), canonical_reference(sub, "TZYX"))
    np.testing.assert_array_equal(view.xarray.values, sub)
    reader.keys.clear()
    patch = view.extract_patch(1, None, (0, 1, 2), (2, 3, 4))
    np.testing.assert_array_equal(
        patch, patch_reference(canonical_reference(sub, "TZYX"), 1, None, (0, 1, 2), (2, 3, 4))
    )
    # one read, confined to the view: T=2, C=1, Y from 5+2+1, X from 10+3*2 (bounding slice, then strided)
    assert reader.keys == [(slice(2, 3), slice(1, 2), slice(0, 2), slice(8, 11), slice(16, 26))]


def test_view_with_negative_int(data: np.ndarray) -> None:
    (stack,) = load_arrays([data], AXES)
    view = stack.isel(T=-1, Z=-2)
    assert view.original_axes == "CYX"
    np.testing.assert_array_equal(view.compute()[0], data[2, :, 3])


# -- laziness --------------------------------------------------------------------------------
def test_creating_stacks_and_views_computes_nothing(data: np.ndarray) -> None:
    lazy = da.from_array(data, chunks=(1, 1, 5, 20, 25))
    with raise_if_dask_computes():
        (stack,) = load_arrays([lazy], AXES)
        view = stack.isel(T=slice(0, 2), C=0)
        _ = (stack.data, view.data, view.xarray, repr(view), view.data_shape, view.chunks)
    with raise_if_dask_computes(), pytest.raises(AssertionError, match="nothing should be computed"):
        stack.data.sum().compute()


def test_creating_stacks_reads_nothing(data: np.ndarray) -> None:
    reader = CountingReader(data, chunks=(1, 1, 5, 20, 25))
    (stack,) = load_arrays([reader], AXES)
    view = stack.isel(T=1)
    _ = (stack.data, view.xarray, repr(stack), stack._repr_html_(), view.data.chunks)
    assert reader.keys == []


def test_dask_chunks_follow_the_source(data: np.ndarray, tmp_path: Any) -> None:
    z = zarr.create_array(tmp_path / "c.zarr", shape=data.shape, chunks=(1, 1, 5, 16, 32), dtype=data.dtype)
    z[...] = data
    (stack,) = load_arrays([zarr.open_array(tmp_path / "c.zarr", mode="r")], AXES)
    with dask.config.set({"array.chunk-size": "1B"}):  # a target below one chunk: no merging
        assert stack.data.chunks == ((1, 1, 1), (1, 1), (5,), (16, 16, 8), (32, 18))
        assert stack.xarray.chunks == ((1, 1, 1), (1, 1), (5,), (16, 16, 8), (32, 18))


# -- memory, handles, display ------------------------------------------------------------------
def test_load_and_close(data: np.ndarray) -> None:
    reader = CountingReader(data)
    (stack,) = load_arrays([reader], AXES)
    view = stack.isel(C=1)
    assert not view.is_loaded
    view.load()
    assert view.is_loaded
    reader.keys.clear()
    patch = view.extract_patch(1, None, (0, 0, 0), (5, 40, 50))
    assert reader.keys == []  # from memory
    np.testing.assert_array_equal(patch[0], data[1, 1])
    np.testing.assert_array_equal(view.data.compute()[:, 0], data[:, 1])
    view.close()
    assert not view.is_loaded
    assert reader.closed == 1
    view.extract_patch(1, None, (0, 0, 0), (1, 1, 1))
    assert len(reader.keys) == 1  # lazy again


def test_context_manager_closes(data: np.ndarray) -> None:
    reader = CountingReader(data)
    with load_arrays([reader], AXES)[0] as stack:
        stack.load()
    assert reader.closed == 1
    assert not stack.is_loaded


def test_repr_and_html(data: np.ndarray) -> None:
    (stack,) = load_arrays([xr.DataArray(data, dims=list(AXES), coords={"C": ["a", "b"]})], AXES)
    view = stack.isel(T=0)
    text = repr(view)
    for fact in ["array", "CZYX (2, 5, 40, 50)", "SCZYX (1, 2, 5, 40, 50)", "uint16", "view of", "channels:   a, b"]:
        assert fact in text
    page = view._repr_html_()
    assert "SCZYX (1, 2, 5, 40, 50)" in page
    assert "uint16" in page
    assert "xr-" in page


def test_physical_pixel_sizes_become_coordinates() -> None:
    stack = LazyImageStack(np.zeros((4, 6)), "YX", attrs={"physical_pixel_sizes": {"Y": 0.5, "X": 0.25}})
    assert stack.physical_pixel_sizes == {"Y": 0.5, "X": 0.25}
    np.testing.assert_allclose(stack.xarray.coords["X"].values, np.arange(6) * 0.25)
    np.testing.assert_allclose(stack.isel(Y=slice(1, 4, 2)).coords["Y"], [0.5, 1.5])


# -- pickling and processes --------------------------------------------------------------------
def test_pickle_round_trip_of_a_view(data: np.ndarray, tmp_path: Any) -> None:
    np.save(tmp_path / "a.npy", data)
    (stack,) = load_arrays([np.load(tmp_path / "a.npy", mmap_mode="r")], AXES)
    view = stack.isel(T=slice(1, 3), C=0).load()
    blob = pickle.dumps(view)
    assert len(blob) < 4096  # a memmap pickles as its file, the loaded data is not pickled
    clone = pickle.loads(blob)
    assert not clone.is_loaded
    assert clone.original_axes == view.original_axes
    np.testing.assert_array_equal(clone.compute(), view.compute())


def _patch_in_worker(args: tuple[LazyImageStack, int]) -> np.ndarray:
    stack, sample = args
    return stack.extract_patch(sample, None, (1, 10, 20), (3, 16, 16))


@pytest.mark.parametrize("method", ["fork", "spawn"])
@pytest.mark.timeout(120)
def test_pool_workers(data: np.ndarray, tmp_path: Any, method: str) -> None:
    np.save(tmp_path / "a.npy", data)
    (stack,) = load_arrays([np.load(tmp_path / "a.npy", mmap_mode="r")], AXES)
    view = stack.isel(C=slice(0, 2))
    with mp.get_context(method).Pool(2) as pool:
        results = pool.map(_patch_in_worker, [(view, s) for s in range(3)])
    for s, got in enumerate(results):
        np.testing.assert_array_equal(got, data[s, :, 1:4, 10:26, 20:36].astype(np.float32))


def test_threads_share_a_stack(data: np.ndarray) -> None:
    (stack,) = load_arrays([data], AXES)
    ref = canonical_reference(data, AXES)
    errors: list[BaseException] = []

    def work(seed: int) -> None:
        rng = np.random.default_rng(seed)
        try:
            for _ in range(200):
                s = int(rng.integers(3))
                c = [int(rng.integers(-2, 4)), int(rng.integers(-5, 35)), int(rng.integers(-5, 45))]
                np.testing.assert_array_equal(
                    stack.extract_patch(s, None, c, (2, 8, 8)), patch_reference(ref, s, None, c, (2, 8, 8))
                )
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors[0]


def test_public_api_is_exported() -> None:
    for name in lazystack.__all__:
        assert hasattr(lazystack, name), name
