"""TIFF back end: load_tiffs / load_iter_tiff against tifffile.imread and numpy slicing."""

from __future__ import annotations

import hashlib
import itertools
import multiprocessing
import os
import pickle
import shutil
import stat
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import dask
import numpy as np
import pytest
import tifffile
import xarray as xr
from conftest import raise_if_dask_computes, shared_files
from harness import truncate_then_read
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lazystack import (
    MissingDependencyError,
    ShapeMismatchError,
    SourceFormatError,
    SourceNotFoundError,
    SourceReadError,
    load_iter_tiff,
    load_tiffs,
)
from lazystack.io.cache import get_chunk_cache
from lazystack.io.process import max_open_files
from lazystack.sources import tiff as tiff_source

RNG = np.random.default_rng(1234)


# -- references (numpy / xarray, not lazystack) --------------------------------------------------
def canonical_reference(arr: np.ndarray, axes: str) -> np.ndarray:
    """Canonical SC(Z)YX array of ``arr`` via xarray."""
    x = xr.DataArray(np.asarray(arr), dims=list(axes))
    for a in "STC":
        if a not in axes:
            x = x.expand_dims(a)
    spatial = ["Z", "Y", "X"] if "Z" in axes else ["Y", "X"]
    x = x.transpose("S", "T", "C", *spatial).stack(sample=("S", "T"))
    return x.transpose("sample", "C", *spatial).values


def patch_reference(canonical: np.ndarray, sample: int, coords: tuple[int, ...], size: tuple[int, ...]) -> np.ndarray:
    """Zero-padded float32 patch cut from a canonical array by padding the whole image."""
    img = canonical[sample].astype(np.float32)
    pad = [(0, 0)] + [(max(0, -c) + n, max(0, c + n) + n) for c, n in zip(coords, size, strict=True)]
    padded = np.pad(img, pad)
    key = tuple(
        slice(c + pad[i + 1][0], c + pad[i + 1][0] + n) for i, (c, n) in enumerate(zip(coords, size, strict=True))
    )
    return padded[(slice(None), *key)]


def random_patches(spatial: tuple[int, ...], n: int, rng: np.random.Generator) -> list[tuple[tuple, tuple]]:
    """Random (coords, size) pairs, some overhanging the edges (zero padding)."""
    out = []
    for _ in range(n):
        size = tuple(int(rng.integers(1, max(2, s // 2 + 3))) for s in spatial)
        coords = tuple(int(rng.integers(-sz // 2 - 1, s - sz // 2 + 2)) for s, sz in zip(spatial, size, strict=True))
        out.append((coords, size))
    return out


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# -- the variants --------------------------------------------------------------------------------
def _data(shape: tuple[int, ...], dtype: str) -> np.ndarray:
    if np.dtype(dtype).kind == "f":
        return RNG.standard_normal(shape).astype(dtype)
    info = np.iinfo(dtype)
    return RNG.integers(info.min, info.max, shape, endpoint=True).astype(dtype)


# name -> (shape, dtype, axes, imwrite kwargs)
VARIANTS: dict[str, tuple[tuple[int, ...], str, str, dict[str, Any]]] = {
    "raw-2d-uint8": ((67, 45), "uint8", "YX", {}),
    "raw-pages-uint16": ((5, 40, 33), "uint16", "TYX", {}),
    "raw-float32-bigtiff": ((3, 31, 29), "float32", "ZYX", {"bigtiff": True}),
    "raw-strips-uint16": ((2, 50, 37), "uint16", "ZYX", {"rowsperstrip": 7, "contiguous": False}),
    "deflate-tiled-uint16": ((3, 70, 90), "uint16", "TYX", {"tile": (32, 48), "compression": "zlib"}),
    "deflate-predictor-float32": (
        (2, 45, 61),
        "float32",
        "ZYX",
        {"tile": (16, 32), "compression": "zlib", "predictor": True},
    ),
    "lzw-strips-uint16": ((3, 53, 40), "uint16", "TYX", {"rowsperstrip": 5, "compression": "lzw"}),
    "zstd-tiled-uint8": ((70, 81), "uint8", "YX", {"tile": (32, 32), "compression": "zstd"}),
    "zstd-bigtiff-float32": (
        (2, 3, 40, 50),
        "float32",
        "TZYX",
        {"tile": (16, 16), "compression": "zstd", "bigtiff": True},
    ),
    "lzw-pages-uint8": ((4, 33, 35), "uint8", "TYX", {"compression": "lzw"}),
    "rgb-uint8": ((40, 50, 3), "uint8", "YXC", {"photometric": "rgb"}),
    "rgba-deflate-tiled": (
        (48, 64, 4),
        "uint8",
        "YXC",
        {"photometric": "rgb", "tile": (16, 16), "compression": "zlib", "extrasamples": ["unassalpha"]},
    ),
    "rgb-stack-lzw-strips": (
        (3, 30, 20, 3),
        "uint16",
        "ZYXC",
        {"photometric": "rgb", "rowsperstrip": 4, "compression": "lzw"},
    ),
    "rgb-planar-deflate": (
        (3, 30, 40),
        "uint8",
        "CYX",
        {"photometric": "rgb", "planarconfig": "separate", "compression": "zlib"},
    ),
    "imagej-hyperstack": ((2, 3, 2, 25, 30), "uint16", "TZCYX", {"imagej": True, "metadata": {"axes": "TZCYX"}}),
    "ome-czyx-deflate": (
        (2, 3, 40, 36),
        "uint16",
        "CZYX",
        {"ome": True, "compression": "zlib", "tile": (16, 16), "metadata": {"axes": "CZYX"}},
    ),
}


def write_variant(folder: Path, name: str) -> tuple[Path, np.ndarray, str]:
    shape, dtype, axes, kwargs = VARIANTS[name]
    data = _data(shape, dtype)
    kwargs = dict(kwargs)
    if "photometric" not in kwargs and not kwargs.get("imagej"):
        kwargs["photometric"] = "minisblack"  # leading dims of 3 or 4 are pages, not RGB planes
    suffix = ".ome.tif" if kwargs.get("ome") else ".tif"
    path = folder / f"{name}{suffix}"
    tifffile.imwrite(path, data, **kwargs)
    return path, data, axes


@pytest.fixture(scope="module")
def variant_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("tiff-variants")


@pytest.fixture(params=sorted(VARIANTS))
def variant(request: pytest.FixtureRequest, variant_dir: Path) -> tuple[Path, np.ndarray, str]:
    path, data, axes = write_variant(variant_dir, request.param)
    np.testing.assert_array_equal(tifffile.imread(path), data)  # the writer did what we think
    return path, data, axes


# -- correctness against tifffile ---------------------------------------------------------------------
def test_variant_whole_array_and_patches(variant: tuple[Path, np.ndarray, str]) -> None:
    path, _, axes = variant
    ref = tifffile.imread(path)
    with raise_if_dask_computes():
        (stack,) = load_tiffs(path, axes)
    assert stack.source == str(path)
    assert stack.format == "tiff"
    assert stack.original_data_shape == ref.shape
    assert stack.data_dtype == ref.dtype
    canonical = canonical_reference(ref, axes)
    np.testing.assert_array_equal(stack.compute(), canonical)
    np.testing.assert_array_equal(stack.data.compute(scheduler="sync"), canonical)
    assert stack.data.dtype == ref.dtype
    # reader regions == numpy slicing
    reader = stack.reader
    for _ in range(10):
        key = []
        for n in ref.shape:
            a = int(RNG.integers(0, n))
            b = int(RNG.integers(a + 1, n + 1))
            key.append(slice(a, b) if RNG.random() < 0.8 else a)
        np.testing.assert_array_equal(reader[tuple(key)], ref[tuple(key)])
    # patches, including zero-padded edges
    spatial = stack.data_shape[2:]
    patches = [(int(RNG.integers(0, stack.n_samples)), *p) for p in random_patches(spatial, 12, RNG)]
    for _ in ("cold", "warm"):  # the second pass is served from the chunk cache (when it is on)
        for sample, coords, size in patches:
            got = stack.extract_patch(sample, None, coords, size)
            np.testing.assert_array_equal(got, patch_reference(canonical, sample, coords, size))
            assert got.dtype == np.float32


def test_variant_views(variant: tuple[Path, np.ndarray, str]) -> None:
    path, _, axes = variant
    ref = tifffile.imread(path)
    (stack,) = load_tiffs(path, axes)
    sel: dict[str, Any] = {"Y": slice(3, None, 2), "X": slice(1, -2)}
    ref_view = ref[tuple(sel.get(a, slice(None)) for a in axes)]
    first = next((a for a in axes if a not in "YX"), None)
    if first is not None:
        sel[first] = ref.shape[axes.index(first)] - 1
        ref_view = np.take(ref_view, ref.shape[axes.index(first)] - 1, axis=axes.index(first))
    view = stack.isel(**sel)
    view_axes = "".join(a for a in axes if a != first)
    canonical = canonical_reference(ref_view, view_axes)
    np.testing.assert_array_equal(view.compute(), canonical)
    for coords, size in random_patches(view.data_shape[2:], 5, RNG):
        np.testing.assert_array_equal(
            view.extract_patch(0, None, coords, size), patch_reference(canonical, 0, coords, size)
        )


def _segments_match_tifffile(path: Path, series: int = 0) -> None:
    """Every segment of a series, decoded alone by the handle, equals its region of tifffile's whole read."""
    ref = tifffile.imread(path, series=series, level=0)
    handle = tiff_source._TiffHandle(str(path), series)
    try:
        chunks = handle.chunks
        assert handle.steps, path.name  # located: segments, or the pages of raw data
        for index in itertools.product(*(range(-(-n // c)) for n, c in zip(ref.shape, chunks, strict=True))):
            region = tuple(slice(i * c, min((i + 1) * c, n)) for i, c, n in zip(index, chunks, ref.shape, strict=True))
            chunk = handle.read_chunk(index, ref.dtype)
            if chunk is None:  # a missing segment: tifffile fills it too
                assert (ref[region] == handle.fillvalue).all(), (path.name, index)
                continue
            assert all(n >= s.stop - s.start for n, s in zip(chunk.shape, region, strict=True)), (path.name, index)
            within = tuple(slice(0, s.stop - s.start) for s in region)
            np.testing.assert_array_equal(chunk[within], ref[region], err_msg=f"{path.name} chunk {index}")
    finally:
        handle.close()


def test_segments_located_as_tifffile_reads_them(variant: tuple[Path, np.ndarray, str]) -> None:
    _segments_match_tifffile(variant[0])


def test_segment_layout_of_a_series_it_cannot_explain_is_none() -> None:
    from types import SimpleNamespace

    page = SimpleNamespace(shaped=(1, 1, 8, 6, 1), is_tiled=True, tiledepth=1, tilelength=4, tilewidth=3)

    class Series(SimpleNamespace):
        def __len__(self) -> int:
            return self.n_pages

    assert tiff_source._segment_layout(Series(keyframe=page, shape=(2, 8, 6), n_pages=2)) == (
        (1, 4, 3),
        ((1, 0), (0, 2), (0, 1)),
        (None, 2, 3),
    )
    # the pages' grid does not number the pages tifffile lists
    assert tiff_source._segment_layout(Series(keyframe=page, shape=(2, 8, 6), n_pages=3)) is None
    # no trailing run of axes holds one page (48 values)
    assert tiff_source._segment_layout(Series(keyframe=page, shape=(4, 24), n_pages=1)) is None
    # a page's axes in another order
    assert tiff_source._segment_layout(Series(keyframe=page, shape=(2, 6, 8), n_pages=2)) is None


def test_missing_segments_read_as_tifffile_fills_them(tmp_path: Path) -> None:
    """Tiles with offset or byte count 0 (sparse files): the fill value, as tifffile reads them."""
    path = tmp_path / "sparse.tif"
    data = RNG.integers(1, 60000, (2, 64, 96), dtype=np.uint16)
    tifffile.imwrite(path, data, tile=(32, 32), compression="zlib", photometric="minisblack", metadata=None)
    with tifffile.TiffFile(path, mode="r+b") as tif:
        offsets = tif.pages[1].tags["TileOffsets"]
        offsets.overwrite(tuple(0 if i == 4 else v for i, v in enumerate(offsets.value)))  # page 1, row 1, col 1
    ref = tifffile.imread(path)
    assert (ref[1, 32:64, 32:64] == 0).all()
    assert (ref[1, :32] != 0).all()
    (stack,) = load_tiffs(path, "TYX")
    np.testing.assert_array_equal(stack.compute()[:, 0], ref)
    np.testing.assert_array_equal(stack.extract_patch(1, None, (20, 20), (30, 40))[0], ref[1, 20:50, 20:60])
    _segments_match_tifffile(path)


def test_jpeg_tiles_decode_as_tifffile_does(tmp_path: Path) -> None:
    """Lossy JPEG tiles (RGB, YCbCr): compared with tifffile's own reading of the file."""
    path = tmp_path / "jpeg.tif"
    yy, xx = np.mgrid[0:80, 0:112]
    rgb = np.stack([(yy * 3) % 256, (xx * 2) % 256, (yy + xx) % 256], axis=-1).astype(np.uint8)
    tifffile.imwrite(path, rgb, tile=(32, 48), compression="jpeg", photometric="rgb")
    ref = tifffile.imread(path)
    (stack,) = load_tiffs(path, "YXC")
    np.testing.assert_array_equal(stack.compute()[0], np.moveaxis(ref, -1, 0))
    patch = stack.extract_patch(0, None, (30, 40), (40, 50))
    np.testing.assert_array_equal(patch, np.moveaxis(ref[30:70, 40:90], -1, 0).astype(np.float32))
    _segments_match_tifffile(path)


def test_rgb_samples_become_channels(variant_dir: Path) -> None:
    path, data, _ = write_variant(variant_dir, "rgb-uint8")
    (stack,) = load_tiffs(path, "YXC")
    assert stack.n_channels == 3
    patch = stack.extract_patch(0, [2, 0], (5, 7), (10, 12))
    np.testing.assert_array_equal(patch, np.moveaxis(data[5:15, 7:19, [2, 0]], -1, 0).astype(np.float32))


# -- chunk layout and reading only what a patch touches ----------------------------------------------------
def test_chunks_follow_tiles(variant_dir: Path) -> None:
    path, _, axes = write_variant(variant_dir, "deflate-tiled-uint16")
    (stack,) = load_tiffs(path, axes)
    reader = stack.reader
    assert not reader.is_memmapped
    assert reader.native_chunks == (1, 32, 48)
    assert reader.chunks == ((1, 1, 1), (32, 32, 6), (48, 42))
    with dask.config.set({"array.chunk-size": "1B"}):  # a target below one tile: no merging
        assert stack.data.chunks[-2:] == ((32, 32, 6), (48, 42))


def test_chunks_strips_are_whole_strips(variant_dir: Path) -> None:
    path, _, axes = write_variant(variant_dir, "lzw-strips-uint16")
    (stack,) = load_tiffs(path, axes)
    reader = stack.reader
    assert reader.native_chunks == (1, 5, 40)
    # strips are merged into runs, but every boundary is a strip boundary
    bounds = np.cumsum(reader.chunks[1])
    assert all(b % 5 == 0 or b == 53 for b in bounds)
    assert reader.chunks[0] == (1, 1, 1)


def test_chunks_pages_of_memmapped_file(variant_dir: Path) -> None:
    path, _, axes = write_variant(variant_dir, "raw-pages-uint16")
    (stack,) = load_tiffs(path, axes)
    assert stack.reader.is_memmapped
    assert stack.reader.chunks == ((1,) * 5, (40,), (33,))


def test_patch_decodes_only_touched_tiles(variant_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path, data, _ = write_variant(variant_dir, "deflate-tiled-uint16")  # tiles 32 x 48, image 70 x 90
    (stack,) = load_tiffs(path, "TYX")
    decoded: list[tuple[int, ...]] = []
    original = tiff_source._TiffHandle.read_chunk

    def spy(self: Any, index: tuple[int, ...], dtype: np.dtype) -> Any:
        decoded.append(index)
        return original(self, index, dtype)

    monkeypatch.setattr(tiff_source._TiffHandle, "read_chunk", spy)
    patch = stack.extract_patch(1, None, (30, 40), (10, 10))  # rows 30-39 (tiles 0, 1), cols 40-49 (tiles 0, 1)
    np.testing.assert_array_equal(patch[0], data[1, 30:40, 40:50])
    assert sorted(decoded) == [(1, 0, 0), (1, 0, 1), (1, 1, 0), (1, 1, 1)]
    decoded.clear()
    stack.extract_patch(2, None, (64, 0), (6, 40))  # last tile row, first tile column only
    assert decoded == [(2, 2, 0)]


# -- series, pyramids, metadata ----------------------------------------------------------------------------
def test_multi_series_ome(tmp_path: Path) -> None:
    path = tmp_path / "multi.ome.tif"
    a = _data((2, 30, 40), "uint16")
    b = _data((2, 20, 24), "uint16")
    with tifffile.TiffWriter(path, ome=True) as tw:
        tw.write(a, metadata={"axes": "CYX", "Channel": {"Name": ["dapi", "gfp"]}})
        tw.write(b, metadata={"axes": "CYX"}, compression="zlib", tile=(16, 16))
    stacks = load_tiffs(path, "CYX")
    assert [s.source for s in stacks] == [str(path), f"{path}@1"]
    assert [s.series for s in stacks] == [0, 1]
    np.testing.assert_array_equal(stacks[0].compute()[0], a)
    np.testing.assert_array_equal(stacks[1].compute()[0], b)
    assert stacks[0].channel_names == ["dapi", "gfp"]
    # the source re-opens exactly that series
    (again,) = load_tiffs(stacks[1].source, "CYX")
    assert again.source == f"{path}@1"
    np.testing.assert_array_equal(again.compute()[0], tifffile.imread(path, series=1))
    with pytest.raises(SourceNotFoundError, match=r"no image series 5.*2 series.*'@0' to '@1'"):
        load_tiffs(f"{path}@5", "CYX")


def test_pyramidal_ome_gives_full_resolution(tmp_path: Path) -> None:
    path = tmp_path / "pyramid.ome.tif"
    data = _data((64, 96), "uint16")
    with tifffile.TiffWriter(path, ome=True) as tw:
        tw.write(data, subifds=2, tile=(16, 16), compression="zlib", metadata={"axes": "YX"})
        tw.write(data[::2, ::2], subfiletype=1, tile=(16, 16), compression="zlib")
        tw.write(data[::4, ::4], subfiletype=1, tile=(16, 16), compression="zlib")
    with tifffile.TiffFile(path) as tif:
        assert len(tif.series[0].levels) == 3
    (stack,) = load_tiffs(path, "YX")  # load_tiffs' default: full resolution (tests/test_pyramids.py: levels=)
    assert stack.original_data_shape == (64, 96)
    assert (stack.level, stack.attrs["image_uri"]) == (0, f"{path}@0")
    np.testing.assert_array_equal(stack.compute()[0, 0], data)


def test_ome_metadata_becomes_coords(tmp_path: Path) -> None:
    path = tmp_path / "meta.ome.tif"
    data = _data((2, 3, 16, 20), "uint16")
    meta = {
        "axes": "CZYX",
        "Channel": {"Name": ["red", "green"]},
        "PhysicalSizeX": 0.25,
        "PhysicalSizeY": 0.5,
        "PhysicalSizeZ": 2.0,
    }
    tifffile.imwrite(path, data, ome=True, metadata=meta)
    (stack,) = load_tiffs(path, "CZYX")
    assert stack.channel_names == ["red", "green"]
    assert stack.physical_pixel_sizes == {"X": 0.25, "Y": 0.5, "Z": 2.0}
    xa = stack.xarray
    assert list(xa.coords["C"].values) == ["red", "green"]
    np.testing.assert_allclose(xa.coords["X"].values, np.arange(20) * 0.25)
    assert xa.attrs["series"] == 0


def test_imagej_metadata_becomes_attrs(tmp_path: Path) -> None:
    path = tmp_path / "ij.tif"
    data = _data((3, 2, 16, 20), "uint16")
    tifffile.imwrite(path, data, imagej=True, resolution=(1 / 0.4, 1 / 0.4), metadata={"axes": "ZCYX", "spacing": 1.5})
    (stack,) = load_tiffs(path, "ZCYX")
    sizes = stack.physical_pixel_sizes
    assert sizes["Z"] == pytest.approx(1.5)
    assert sizes["X"] == pytest.approx(0.4, rel=1e-5)
    assert sizes["Y"] == pytest.approx(0.4, rel=1e-5)


def test_declared_axes_mismatch_quotes_file_axes(variant_dir: Path) -> None:
    path, _, _ = write_variant(variant_dir, "ome-czyx-deflate")
    with pytest.raises(ShapeMismatchError, match=r"'ZYX'.*3.*4 dimension.*\(2, 3, 40, 36\).*declares axes 'CZYX'"):
        load_tiffs(path, "ZYX")
    path, _, _ = write_variant(variant_dir, "imagej-hyperstack")
    with pytest.raises(ShapeMismatchError, match="declares axes 'TZCYX'"):
        load_tiffs(path, "CZYX")


def test_plain_file_rank_mismatch(variant_dir: Path) -> None:
    path, _, _ = write_variant(variant_dir, "raw-pages-uint16")
    with pytest.raises(ShapeMismatchError, match=r"'YX'.*3 dimension.*\(5, 40, 33\)"):
        load_tiffs(path, "YX")
    with pytest.raises(ValueError, match="ZYX"):  # also a ValueError for callers that do not know lazystack
        load_tiffs(path, "TZYX")


# -- bad input -------------------------------------------------------------------------------------------
def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.tif"
    with pytest.raises(SourceNotFoundError, match=r"nope\.tif"):
        load_tiffs(path, "YX")
    with pytest.raises(FileNotFoundError):
        load_iter_tiff([path], "YX")


def test_directory(tmp_path: Path) -> None:
    with pytest.raises(SourceFormatError, match="is a directory"):
        load_tiffs(tmp_path, "YX")


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.tif"
    path.touch()
    with pytest.raises(SourceFormatError, match=r"empty\.tif.*empty"):
        load_tiffs(path, "YX")


def test_not_a_tiff(tmp_path: Path) -> None:
    path = tmp_path / "text.tif"
    path.write_text("hello, I am not a TIFF file at all\n" * 10)
    with pytest.raises(SourceFormatError, match=r"text\.tif.*not a readable TIFF"):
        load_tiffs(path, "YX")
    npy = tmp_path / "array.tif"
    np.save(npy.with_suffix(".npy"), np.zeros((4, 4)))
    shutil.move(npy.with_suffix(".npy"), npy)
    with pytest.raises(ValueError, match=r"array\.tif"):
        load_tiffs(npy, "YX")


@pytest.mark.parametrize("name", ["raw-pages-uint16", "deflate-tiled-uint16", "lzw-strips-uint16"])
def test_truncated_file_raises_on_read(tmp_path: Path, variant_dir: Path, name: str) -> None:
    src, data, axes = write_variant(variant_dir, name)
    path = tmp_path / f"truncated-{name}.tif"
    shutil.copy(src, path)
    with tifffile.TiffFile(path) as tif:  # cut inside the pixel data of the last page
        page = tif.series[0].pages[-1]
        cut = page.dataoffsets[0] + page.databytecounts[0] // 2
    assert cut < path.stat().st_size
    os.truncate(path, cut)
    for loader in (load_tiffs, load_iter_tiff):
        (stack,) = loader(path, axes)  # metadata is intact: opening works
        # the first page is intact and reads correctly
        np.testing.assert_array_equal(stack.extract_patch(0, None, (0, 0), (8, 8))[0], data[0, :8, :8])
        last = stack.n_samples - 1
        with pytest.raises(SourceReadError, match=f"truncated-{name}"):
            stack.extract_patch(last, None, (0, 0), tuple(stack.data_shape[2:]))
        with pytest.raises(SourceReadError, match=f"truncated-{name}"):
            stack.compute()
        with pytest.raises(OSError, match="truncated"):
            stack.data.compute(scheduler="sync")


def test_unavailable_codec(tmp_path: Path) -> None:
    """A compression tifffile knows but cannot decode here, and an unknown one."""
    from tifffile import COMPRESSION
    from tifffile.tifffile import TIFF

    missing = [c for c in COMPRESSION if c not in TIFF.DECOMPRESSORS]
    cases: list[tuple[int, type[Exception], str]] = [(60001, SourceFormatError, "compression 60001")]
    if missing:  # e.g. JBIG: tifffile knows the code, imagecodecs has no decoder
        cases.append((int(missing[0]), MissingDependencyError, f"{missing[0].name}.*imagecodecs"))
    for code, error, match in cases:
        path = tmp_path / f"codec-{code}.tif"
        tifffile.imwrite(path, _data((16, 16), "uint8"), compression="zlib")
        with tifffile.TiffFile(path) as tif:
            tag = tif.pages[0].tags["Compression"]
            offset = tag.valueoffset
        raw = bytearray(path.read_bytes())
        raw[offset : offset + 2] = code.to_bytes(2, "little")
        path.write_bytes(bytes(raw))
        with pytest.raises(error, match=match) as info:
            load_tiffs(path, "YX")
        assert str(path) in str(info.value)


def test_sources_are_never_modified(tmp_path: Path, variant_dir: Path) -> None:
    paths = []
    for name in ["raw-pages-uint16", "deflate-tiled-uint16", "rgb-uint8"]:
        src, _, axes = write_variant(variant_dir, name)
        path = tmp_path / src.name
        shutil.copy(src, path)
        path.chmod(stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
        paths.append((path, axes))
    before = {p: sha(p) for p, _ in paths}
    try:
        for path, axes in paths:
            (stack,) = load_tiffs(path, axes)
            np.testing.assert_array_equal(stack.compute(), canonical_reference(tifffile.imread(path), axes))
            stack.extract_patch(0, None, (1, 1), (5, 5))
            (it,) = load_iter_tiff(path, axes)
            it.load()
            it.close()
            stack.close()
        assert {p: sha(p) for p, _ in paths} == before
    finally:
        for path, _ in paths:
            path.chmod(stat.S_IRUSR | stat.S_IWUSR)


# -- load_iter_tiff -------------------------------------------------------------------------------------------
def test_iter_tiff_one_chunk_read_once(variant_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path, data, _ = write_variant(variant_dir, "deflate-tiled-uint16")
    axes = "TYX"
    (stack,) = load_iter_tiff(path, axes)
    assert all(len(c) == 1 for c in stack.reader.chunks)
    assert stack.data.npartitions == 1
    calls = {"all": 0, "chunk": 0}
    read_all, read_chunk = tiff_source._TiffHandle.read_all, tiff_source._TiffHandle.read_chunk

    def spy_all(self: Any, *args: Any) -> Any:
        calls["all"] += 1
        return read_all(self, *args)

    def spy_chunk(self: Any, *args: Any) -> Any:
        calls["chunk"] += 1
        return read_chunk(self, *args)

    monkeypatch.setattr(tiff_source._TiffHandle, "read_all", spy_all)
    monkeypatch.setattr(tiff_source._TiffHandle, "read_chunk", spy_chunk)
    np.testing.assert_array_equal(stack.data.compute(scheduler="sync")[:, 0], data)
    assert calls == {"all": 1, "chunk": 0}
    # before load(): a patch reads its region only
    p1 = stack.extract_patch(2, None, (-3, 80), (10, 20))
    assert calls["all"] == 1
    assert 0 < calls["chunk"] <= 2
    stack.load()
    assert stack.is_loaded
    n = dict(calls)
    p2 = stack.extract_patch(2, None, (-3, 80), (10, 20))
    assert calls == n  # from memory
    np.testing.assert_array_equal(p1, p2)
    np.testing.assert_array_equal(p1, patch_reference(canonical_reference(data, axes), 2, (-3, 80), (10, 20)))
    stack.close()
    assert not stack.is_loaded
    np.testing.assert_array_equal(stack.extract_patch(2, None, (-3, 80), (10, 20)), p1)


def test_iter_tiff_memmapped_file(variant_dir: Path) -> None:
    path, data, axes = write_variant(variant_dir, "raw-pages-uint16")
    stacks = load_iter_tiff([path, path], axes)
    assert len(stacks) == 2
    for stack in stacks:
        assert stack.data.npartitions == 1
        np.testing.assert_array_equal(stack.data.compute(scheduler="sync")[:, 0], data)
        with stack:
            stack.load()
            np.testing.assert_array_equal(stack.compute()[:, 0], data)
        assert not stack.is_loaded


# -- pickling, processes, threads, handles ------------------------------------------------------------------
def test_pickle_is_a_recipe(variant_dir: Path) -> None:
    for name in ["deflate-tiled-uint16", "raw-pages-uint16"]:
        path, data, axes = write_variant(variant_dir, name)
        (stack,) = load_tiffs(path, axes)
        stack.extract_patch(0, None, (0, 0), (4, 4))  # a handle is open now
        blob = pickle.dumps(stack)
        assert len(blob) < 4000
        assert data.tobytes()[:64] not in blob
        clone = pickle.loads(blob)
        np.testing.assert_array_equal(clone.compute(), stack.compute())
        assert clone.data.name == stack.data.name  # same token: dask deduplicates


def test_dask_distributed_style_graph_pickles(variant_dir: Path) -> None:
    path, data, axes = write_variant(variant_dir, "lzw-strips-uint16")
    (stack,) = load_tiffs(path, axes)
    arr = pickle.loads(pickle.dumps(stack.data))
    np.testing.assert_array_equal(arr.compute(scheduler="processes", num_workers=2)[:, 0], data)


_FORK_STACKS: list[Any] = []


def _fork_worker(task: tuple[int, int, tuple[int, int], tuple[int, int]]) -> np.ndarray:
    i, sample, coords, size = task
    return _FORK_STACKS[i].extract_patch(sample, None, coords, size)


def _patch_tasks(stacks: list[Any], n: int) -> list[tuple[int, int, tuple[int, int], tuple[int, int]]]:
    rng = np.random.default_rng(7)
    tasks = []
    for _ in range(n):
        i = int(rng.integers(0, len(stacks)))
        ny, nx = stacks[i].data_shape[-2:]
        coords = (int(rng.integers(-4, ny)), int(rng.integers(-4, nx)))
        tasks.append((i, int(rng.integers(0, stacks[i].n_samples)), coords, (12, 12)))
    return tasks


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_process_pools(variant_dir: Path, method: str) -> None:
    if method not in multiprocessing.get_all_start_methods():
        pytest.skip(f"start method {method!r} is not available here")
    stacks = []
    for name in ["deflate-tiled-uint16", "lzw-strips-uint16", "raw-pages-uint16"]:
        path, _, axes = write_variant(variant_dir, name)
        stacks.extend(load_tiffs(path, axes))
    for s in stacks:
        s.extract_patch(0, None, (0, 0), (4, 4))  # handles opened in the parent before the pool starts
    tasks = _patch_tasks(stacks, 120)
    expected = [stacks[i].extract_patch(s, None, c, z) for i, s, c, z in tasks]
    ctx = multiprocessing.get_context(method)
    if method == "fork":
        _FORK_STACKS[:] = stacks
        with ctx.Pool(2) as pool:
            # the parent keeps reading its own handles while the children read theirs
            result = pool.map_async(_fork_worker, tasks, chunksize=5)
            again = [stacks[i].extract_patch(s, None, c, z) for i, s, c, z in tasks]
            got = result.get(timeout=60)
        _FORK_STACKS.clear()
        for a, b in zip(again, expected, strict=True):
            np.testing.assert_array_equal(a, b)
    else:
        import operator

        jobs = [(operator.methodcaller("extract_patch", s, None, c, z), stacks[i]) for i, s, c, z in tasks]
        with ctx.Pool(2) as pool:
            got = pool.starmap(_apply, jobs, chunksize=10)
    for a, b in zip(got, expected, strict=True):
        np.testing.assert_array_equal(a, b)


def _apply(func: Any, arg: Any) -> Any:
    return func(arg)


def test_threads_share_one_stack(variant_dir: Path) -> None:
    path, data, _ = write_variant(variant_dir, "deflate-tiled-uint16")
    axes = "TYX"
    (stack,) = load_tiffs(path, axes)
    canonical = canonical_reference(data, axes)
    errors: list[BaseException] = []
    barrier = threading.Barrier(4)

    def work(seed: int) -> None:
        rng = np.random.default_rng(seed)
        barrier.wait()
        try:
            for coords, size in random_patches((70, 90), 60, rng):
                sample = int(rng.integers(0, 3))
                got = stack.extract_patch(sample, None, coords, size)
                np.testing.assert_array_equal(got, patch_reference(canonical, sample, coords, size))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors[0]


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc/self/fd (Linux)")
def test_two_thousand_files_keep_fds_bounded(tmp_path: Path) -> None:
    small = _data((2, 16, 16), "uint16")
    paths = []
    for i in range(2000):
        path = tmp_path / f"f{i:04d}.tif"
        kwargs: dict[str, Any] = {"compression": "zlib", "tile": (16, 16)} if i % 2 else {}
        tifffile.imwrite(path, small + i, **kwargs)
        paths.append(path)
    maxsize = max_open_files()
    baseline = _open_fds()
    stacks = load_tiffs(paths, "TYX")
    peak = _open_fds()
    for i, stack in enumerate(stacks):
        patch = stack.extract_patch(1, None, (3, 3), (8, 8))
        np.testing.assert_array_equal(patch[0], (small[1, 3:11, 3:11] + i).astype(np.float32))
        if i % 100 == 0:
            peak = max(peak, _open_fds())
    peak = max(peak, _open_fds())
    assert peak - baseline <= maxsize + 8
    for stack in stacks:
        stack.close()
    assert _open_fds() <= baseline + 2


def test_close_and_context_manager_release_handles(variant_dir: Path) -> None:
    path, _, axes = write_variant(variant_dir, "deflate-tiled-uint16")
    target = os.path.realpath(path)

    def open_on_path() -> int:
        n = 0
        for fd in os.listdir("/proc/self/fd"):
            try:
                n += os.path.realpath(os.readlink(f"/proc/self/fd/{fd}")) == target
            except OSError:
                continue
        return n

    (stack,) = load_tiffs(path, axes)
    with stack:
        stack.extract_patch(0, None, (0, 0), (8, 8))
        assert open_on_path() >= 1
    assert open_on_path() == 0
    get_chunk_cache().clear()  # else the tile comes from the decoded-chunk cache, without the file
    stack.extract_patch(0, None, (0, 0), (8, 8))  # reopens transparently
    assert open_on_path() >= 1
    stack.close()
    assert open_on_path() == 0


def test_dask_graph_of_many_files_computes(variant_dir: Path) -> None:
    path, data, _ = write_variant(variant_dir, "zstd-tiled-uint8")
    stacks = load_tiffs([path, path, path], "YX")
    total = sum(s.data.sum() for s in stacks)
    with dask.config.set(scheduler="threads"):
        assert int(total.compute()) == 3 * int(data.sum(dtype=np.int64))


# -- real files -------------------------------------------------------------------------------------------
REAL_TIFFS = shared_files("tiff", "*.tif*")


@pytest.mark.parametrize("path", REAL_TIFFS or [None], ids=[p.name for p in REAL_TIFFS] or ["absent"])
def test_real_tiff_files(path: Path | None, shared_tiff_dir: Path) -> None:
    if path is None:
        pytest.skip(f"no *.tif* files in {shared_tiff_dir}")
    ref = tifffile.imread(path)
    with tifffile.TiffFile(path) as tif:
        file_axes = tif.series[0].axes
    axes = file_axes.replace("S", "C").replace("Q", "T").replace("I", "T")
    before = sha(path)
    (stack,) = load_tiffs(path, axes)
    canonical = canonical_reference(ref, axes)
    np.testing.assert_array_equal(stack.compute(), canonical)
    rng = np.random.default_rng(3)
    for coords, size in random_patches(stack.data_shape[2:], 20, rng):
        np.testing.assert_array_equal(
            stack.extract_patch(0, None, coords, size), patch_reference(canonical, 0, coords, size)
        )
    (it,) = load_iter_tiff(path, axes)
    np.testing.assert_array_equal(it.data.compute(scheduler="sync"), canonical)
    _segments_match_tifffile(path)
    assert sha(path) == before


# -- property: any region of any layout equals numpy slicing ---------------------------------------------------


@st.composite
def _layouts(draw: st.DrawFn) -> tuple[tuple[int, int, int], dict[str, Any], tuple[slice, ...]]:
    shape = (draw(st.integers(1, 3)), draw(st.integers(1, 70)), draw(st.integers(1, 70)))
    layout = draw(st.sampled_from(["tiles", "strips", "raw"]))
    kwargs: dict[str, Any] = {"photometric": "minisblack"}
    if layout == "tiles":
        kwargs.update(tile=(draw(st.sampled_from([16, 32])), draw(st.sampled_from([16, 48]))), compression="zlib")
    elif layout == "strips":
        kwargs.update(rowsperstrip=draw(st.integers(1, 9)), compression=draw(st.sampled_from(["lzw", "zlib", None])))
    key = []
    for n in shape:
        a = draw(st.integers(0, n - 1))
        key.append(slice(a, draw(st.integers(a + 1, n))))
    return shape, kwargs, tuple(key)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)
@given(layout=_layouts())
def test_property_regions_equal_numpy(tmp_path: Path, layout: tuple[Any, dict[str, Any], tuple[slice, ...]]) -> None:
    shape, kwargs, key = layout
    data = np.arange(np.prod(shape), dtype=np.uint16).reshape(shape) * np.uint16(7)
    path = tmp_path / "prop.tif"
    tifffile.imwrite(path, data, **kwargs)
    for loader in (load_tiffs, load_iter_tiff):
        (stack,) = loader(path, "TYX")
        np.testing.assert_array_equal(stack.reader[key], data[key])
        stack.close()


@pytest.mark.parametrize(
    ("tag", "value", "match"),
    [
        ("ImageWidth", 0, "empty dimension"),
        ("ImageLength", 2**31 - 1, r"declares \d+ segment\(s\).*stores 1 offset"),
    ],
)
def test_inconsistent_tags_rejected_at_open(tmp_path: Path, tag: str, value: int, match: str) -> None:
    path = tmp_path / f"bad-{tag}.tif"
    tifffile.imwrite(path, _data((64, 64), "uint8"), metadata=None)
    with tifffile.TiffFile(path, mode="r+b") as tif:
        tif.pages[0].tags[tag].overwrite(value)
    for loader in (load_tiffs, load_iter_tiff):
        with pytest.raises(SourceFormatError, match=match) as info:
            loader(path, "YX")
        assert str(path) in str(info.value)


def _in_fork(func: Any, *args: Any) -> str:
    """Run ``func(*args)`` in a forked child; return what it returns, or how it died (a SIGBUS is caught)."""
    ctx = multiprocessing.get_context("fork")
    parent, child = ctx.Pipe(duplex=False)

    def target() -> None:
        try:
            child.send(str(func(*args)))
        except BaseException as exc:
            child.send(f"{type(exc).__name__}: {exc}")

    proc = ctx.Process(target=target)
    proc.start()
    child.close()
    result = parent.recv() if parent.poll(60) else None
    proc.join(10)
    return result if result is not None else f"died (exit code {proc.exitcode})"


def _truncate_then_read(path: str, read_first: bool) -> str:
    (stack,) = load_tiffs(path, "ZYX")
    assert stack.reader.is_memmapped
    return truncate_then_read(stack, path, read_first)


@pytest.mark.parametrize("read_first", [True, False], ids=["after-a-read", "before-any-read"])
def test_memmap_truncated_after_open_is_an_error_not_sigbus(tmp_path: Path, read_first: bool) -> None:
    path = tmp_path / "mapped.tif"
    tifffile.imwrite(path, np.ones((4, 64, 64), np.uint16), metadata=None, photometric="minisblack")
    outcome = _in_fork(_truncate_then_read, str(path), read_first)
    assert outcome.startswith("SourceReadError"), outcome
    assert "mapped.tif" in outcome
    assert "truncated" in outcome


@pytest.mark.parametrize("compression", [None, "zlib"], ids=["memmap", "zlib"])
@pytest.mark.parametrize("loader", [load_tiffs, load_iter_tiff], ids=["load_tiffs", "load_iter_tiff"])
def test_file_replaced_before_first_read_is_an_error(tmp_path: Path, compression: str | None, loader: Any) -> None:
    path = tmp_path / "replaced.tif"
    old, new = np.zeros((3, 32, 32), np.uint16), np.full((3, 32, 32), 7, np.uint16)
    tifffile.imwrite(path, old, metadata=None, photometric="minisblack", compression=compression)
    (stack,) = loader(path, "ZYX")
    pickled = pickle.dumps(stack)
    tifffile.imwrite(tmp_path / "new.tif", new, metadata=None, photometric="minisblack", compression=compression)
    os.replace(tmp_path / "new.tif", path)  # a new inode under the same name
    for s in (stack, pickle.loads(pickled)):  # a stale pickled stack too
        with pytest.raises(SourceReadError, match=r"replaced\.tif.*changed since the stack was opened"):
            s.extract_patch(0, None, (0, 0, 0), (1, 8, 8))
    (fresh,) = loader(path, "ZYX")  # loading again reads the new file
    np.testing.assert_array_equal(fresh.extract_patch(0, None, (0, 0, 0), (1, 8, 8))[0, 0], new[0, :8, :8])


@pytest.mark.parametrize("compression", [None, "zlib"], ids=["memmap", "zlib"])
def test_close_from_another_thread_never_fails_a_read(tmp_path: Path, compression: str | None) -> None:
    path = tmp_path / "closing.tif"
    data = RNG.integers(0, 60000, (4, 64, 64), dtype=np.uint16)
    tile = (16, 16) if compression else None
    tifffile.imwrite(path, data, metadata=None, photometric="minisblack", compression=compression, tile=tile)
    (stack,) = load_tiffs(path, "ZYX")
    stop = threading.Event()

    def closer() -> None:
        while not stop.is_set():
            stack.close()
            stop.wait(0.0005)

    def reader(seed: int) -> int:
        rng = np.random.default_rng(seed)
        bad = 0
        for _ in range(150):
            z, y, x = int(rng.integers(0, 4)), int(rng.integers(0, 40)), int(rng.integers(0, 40))
            got = stack.extract_patch(0, None, (z, y, x), (1, 24, 24))[0, 0]
            bad += not np.array_equal(got, data[z, y : y + 24, x : x + 24])
        return bad

    t = threading.Thread(target=closer)
    t.start()
    try:
        with ThreadPoolExecutor(4) as pool:
            assert list(pool.map(reader, range(4))) == [0] * 4  # no exception, no wrong data
    finally:
        stop.set()
        t.join()


def _mapped_rss(path: Path) -> int:
    """Resident bytes of this process's mappings of ``path`` (Linux ``/proc/self/smaps``)."""
    total, inside = 0, False
    target = str(path.resolve())
    with open("/proc/self/smaps") as fh:
        for line in fh:
            head = line.split(maxsplit=5)
            if len(head) >= 5 and "-" in head[0] and ":" in head[3]:  # a mapping's header line
                inside = len(head) == 6 and head[5].strip() == target
            elif inside and line.startswith("Rss:"):
                total += int(line.split()[1]) * 1024
    return total


@pytest.mark.skipif(not os.path.exists("/proc/self/smaps"), reason="needs Linux /proc/self/smaps")
def test_memory_mapped_pages_are_released_after_the_bound(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bound = 4 << 20
    monkeypatch.setattr(tiff_source, "_MEMMAP_RELEASE_BYTES", bound)
    data = np.random.default_rng(11).integers(0, 60000, (8, 1024, 2048), dtype=np.uint16)  # 32 MiB
    path = tmp_path / "raw.tif"
    tifffile.imwrite(path, data, photometric="minisblack")
    (stack,) = load_tiffs(str(path), "TYX")
    assert stack.reader.memmap is not None
    peak = 0
    rng = np.random.default_rng(12)
    for _ in range(400):
        t, y, x = int(rng.integers(0, 8)), int(rng.integers(0, 1024 - 64)), int(rng.integers(0, 2048 - 64))
        np.testing.assert_array_equal(
            stack.extract_patch(t, None, (y, x), (64, 64))[0], data[t, y : y + 64, x : x + 64]
        )
        peak = max(peak, _mapped_rss(path))
    assert peak > 0  # the pages were mapped, and counted here
    # Without the release the 400 patches would leave most of the 32 MiB file resident.
    assert peak <= bound + (2 << 20), f"{peak / 2**20:.1f} MiB of the file resident, bound {bound / 2**20:.0f} MiB"


def test_memory_map_counts_each_plane_of_a_3d_region_on_its_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = np.zeros((16, 256, 256), dtype=np.uint16)  # planes of 128 KiB
    path = tmp_path / "zyx.tif"
    tifffile.imwrite(path, data, photometric="minisblack")
    (stack,) = load_tiffs(str(path), "ZYX")
    stack.extract_patch(0, None, (0, 0, 0), (2, 2, 2))
    handle = stack.reader._mm_handle
    assert handle is not None
    monkeypatch.setattr(tiff_source, "_MAP_GRANULE", 1 << 14)
    region = (slice(0, 16), slice(0, 8), slice(0, 8))  # 8 rows of 512 bytes in each of 16 planes
    blocks = handle._blocks_of(region)
    assert 16 <= len(blocks) <= 32  # one block per plane (two where a run straddles), not the span's 128
    whole = handle._blocks_of((slice(0, 16), slice(0, 256), slice(0, 256)))
    assert len(whole) == (16 * 256 * 256 * 2) // (1 << 14) + (handle._address % (1 << 14) != 0)
