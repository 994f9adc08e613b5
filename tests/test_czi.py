"""load_czis: scenes, region reads, RGB, mosaics, pickling, bad input.

References are independent of lazystack's CZI code: numpy arrays that the
fixtures write with pylibCZIrw's writer, and for the real Zeiss files in
``shared/data/czi`` the data bioio-czi's own reader returns (its default
aicspylibczi back end; aicspylibczi directly where bioio-czi cannot parse a
file's metadata), reordered by :func:`_bioio_reference` below.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import operator
import os
import pickle
import subprocess
import sys
import threading
import warnings
from pathlib import Path
from typing import Any

import dask
import numpy as np
import pytest

pyczi = pytest.importorskip("pylibCZIrw.czi", reason="the czi extra (pylibCZIrw) is not installed")

from conftest import raise_if_dask_computes, shared_files  # noqa: E402
from reference import patch_reference  # noqa: E402

import lazystack  # noqa: E402
from lazystack import load_czis  # noqa: E402
from lazystack.core.errors import (  # noqa: E402
    AxesError,
    ChannelIndexError,
    MissingDependencyError,
    ShapeMismatchError,
    SourceFormatError,
    SourceNotFoundError,
    SourceReadError,
)
from lazystack.frontends import samples as sample_files  # noqa: E402
from lazystack.sources import czi  # noqa: E402

REAL = shared_files("czi", "*.czi")


# -- fixtures: CZI files written with pylibCZIrw, and the arrays they hold ------------------------
@pytest.fixture(scope="module")
def multi_scene(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray, np.ndarray]:
    """Two scenes of different sizes (TZCYX uint16): scene 0 a 2-tile mosaic at a negative offset."""
    rng = np.random.default_rng(0)
    a = rng.integers(0, 60000, (2, 3, 2, 40, 50), dtype=np.uint16)
    b = rng.integers(0, 60000, (2, 3, 2, 30, 70), dtype=np.uint16)
    path = tmp_path_factory.mktemp("czi") / "scenes.czi"
    with pyczi.create_czi(str(path), exist_ok=True) as w:
        for t in range(2):
            for z in range(3):
                for c in range(2):
                    plane = {"T": t, "Z": z, "C": c}
                    w.write(a[t, z, c, :, :25], plane=plane, scene=0, location=(-300, -50))
                    w.write(a[t, z, c, :, 25:], plane=plane, scene=0, location=(-275, -50))
                    w.write(b[t, z, c], plane=plane, scene=1, location=(1000, 2000))
        w.write_metadata(channel_names={0: "dapi", 1: "gfp"})
    sample_files.add_scene_metadata(path, {0: "left", 1: "right"})
    return path, a, b


@pytest.fixture(scope="module")
def rgb(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    """A Bgr24 CZI; the array is in pylibCZIrw's memory order (B, G, R)."""
    bgr = np.random.default_rng(1).integers(0, 255, (33, 47, 3), dtype=np.uint8)
    path = tmp_path_factory.mktemp("czi") / "rgb.czi"
    with pyczi.create_czi(str(path), exist_ok=True) as w:
        w.write(bgr, location=(7, -3))
    return path, bgr


@pytest.fixture(scope="module")
def big_plane(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    """One 1100 x 900 plane written as 256 x 256 tiles (no scenes)."""
    data = np.random.default_rng(2).integers(0, 60000, (1100, 900), dtype=np.uint16)
    path = tmp_path_factory.mktemp("czi") / "big.czi"
    with pyczi.create_czi(str(path), exist_ok=True) as w:
        for y in range(0, 1100, 256):
            for x in range(0, 900, 256):
                w.write(data[y : y + 256, x : x + 256], location=(x, y))
    return path, data


def _canonical(tzcyx: np.ndarray, axes: str) -> np.ndarray:
    """Canonical array of a TZCYX array read with ``axes`` (numpy only)."""
    n_t, n_z, n_c, h, w = tzcyx.shape
    if axes == "SCZYX":  # S = T
        return tzcyx.transpose(0, 2, 1, 3, 4)
    if axes == "SCTYX":  # S = Z, depth = T
        return tzcyx.transpose(1, 2, 0, 3, 4)
    return tzcyx.reshape(n_t * n_z, n_c, h, w)  # SCYX: S = (T outer, Z inner), CAREamics' order


def _random_patches(
    stack: lazystack.LazyImageStack, ref: np.ndarray, rng: np.random.Generator, n: int = 12, size: int = 24
) -> None:
    spatial = ref.shape[2:]
    psize = [min(size, 4) if i < len(spatial) - 2 else size for i in range(len(spatial))]
    for k in range(n):
        s = int(rng.integers(ref.shape[0]))
        chans = None if k % 3 == 0 else sorted({int(rng.integers(ref.shape[1])) for _ in range(2)})
        if k % 4 == 0:  # at the far edge, partly outside
            coords = [int(extent - p // 2) for extent, p in zip(spatial, psize, strict=True)]
        elif k % 4 == 1:  # before the start, partly outside
            coords = [-p // 3 for p in psize]
        else:
            coords = [
                int(rng.integers(-p // 2, max(extent - p // 2, 1))) for extent, p in zip(spatial, psize, strict=True)
            ]
        got = stack.extract_patch(s, chans, coords, psize)
        np.testing.assert_array_equal(got, patch_reference(ref, s, chans, coords, psize), err_msg=f"{coords} {psize}")
    # a patch wholly outside is zeros
    outside = stack.extract_patch(0, None, [-100] * len(spatial), psize)
    assert not outside.any()


# -- the data --------------------------------------------------------------------------------
@pytest.mark.parametrize("axes", ["SCYX", "SCZYX", "SCTYX", "sczyx"])
def test_fixture_scenes_of_different_sizes(multi_scene: Any, axes: str) -> None:
    path, a, b = multi_scene
    stacks = load_czis(path, axes)
    assert [s.source for s in stacks] == [f"{path}@0", f"{path}@1"]
    assert [s.scene for s in stacks] == [0, 1]
    assert [s.scene_name for s in stacks] == ["left", "right"]
    rng = np.random.default_rng(3)
    for stack, data in zip(stacks, [a, b], strict=True):
        ref = _canonical(data, axes.upper())
        assert stack.data_shape == ref.shape
        assert stack.data_dtype == np.uint16
        assert stack.channel_names == ["dapi", "gfp"]
        np.testing.assert_array_equal(stack.compute(), ref)
        np.testing.assert_array_equal(stack.data.compute(), ref)
        _random_patches(stack, ref, rng)


def test_fixture_axes_models(multi_scene: Any) -> None:
    path, _a, _ = multi_scene
    s2d = load_czis(path, "SCYX")[0]
    assert (s2d.original_axes, s2d.original_data_shape) == ("TZCYX", (2, 3, 2, 40, 50))
    assert s2d.axes_model.axes == "SCYX"
    assert (s2d.attrs["sample_dims"], s2d.attrs["sample_shape"]) == ("TZ", (2, 3))
    assert s2d.xarray.dims == ("T", "Z", "C", "Y", "X")
    s3d = load_czis(path, "SCZYX")[0]
    assert (s3d.original_axes, s3d.original_data_shape) == ("TCZYX", (2, 2, 3, 40, 50))
    assert s3d.attrs["czi_dims"] == "TZCYX"
    assert s3d.attrs["czi_shape"] == (2, 3, 2, 40, 50)
    st = load_czis(path, "SCTYX")[0]
    assert (st.original_axes, st.data_shape) == ("ZCTYX", (3, 2, 2, 40, 50))  # the T depth sits in the Z slot
    assert st.axes_model.axes == "SCZYX"
    assert st.attrs["depth_axis"] == "T"
    assert st.xarray.dims == ("Z", "C", "T", "Y", "X")


def test_source_recreates_the_stack(multi_scene: Any) -> None:
    path, _, b = multi_scene
    stacks = load_czis(path, "SCZYX")
    (again,) = load_czis(stacks[1].source, "SCZYX")
    assert again.source == stacks[1].source
    assert again.scene == 1
    assert again.scene_name == "right"
    np.testing.assert_array_equal(again.compute(), _canonical(b, "SCZYX"))


def test_negative_offset_and_mosaic_bounding_box(multi_scene: Any) -> None:
    path, a, _ = multi_scene
    stack = load_czis(path, "SCZYX")[0]
    assert stack.attrs["bounding_box"] == (-300, -50, 50, 40)  # two 25-pixel-wide tiles stitched
    np.testing.assert_array_equal(stack.extract_patch(1, [1], (2, 10, 20), (1, 5, 10))[0, 0], a[1, 2, 1, 10:15, 20:30])


def test_rgb_samples_become_channels_in_rgb_order(rgb: Any) -> None:
    path, bgr = rgb
    (stack,) = load_czis(path, "SCYX")
    assert stack.source == f"{path}@0"
    assert stack.scene == 0
    assert stack.data_shape == (1, 3, 33, 47)
    assert stack.data_dtype == np.uint8
    assert [n[-2:] for n in stack.channel_names or []] == [":R", ":G", ":B"]
    ref = bgr[..., ::-1].transpose(2, 0, 1)[np.newaxis]
    np.testing.assert_array_equal(stack.compute(), ref)
    np.testing.assert_array_equal(
        stack.extract_patch(0, [2, 0], (5, -4), (8, 8)), patch_reference(ref, 0, [2, 0], (5, -4), (8, 8))
    )


def test_tiled_plane(big_plane: Any) -> None:
    path, data = big_plane
    (stack,) = load_czis(path, "SCYX")
    _random_patches(stack, data[np.newaxis, np.newaxis], np.random.default_rng(4), n=8, size=100)


def test_file_without_scenes_is_one_stack_named_by_its_path(shared_czi_dir: Path) -> None:
    path = shared_czi_dir / "CellDivision_T3_Z5_CH2_X240_Y170.czi"  # its sub-blocks carry no scene index
    (stack,) = load_czis(path, "SCZYX")
    assert stack.source == str(path)
    assert stack.scene is None
    assert stack.scene_name is None
    (again,) = load_czis(stack.source, "SCZYX")
    assert again.data_shape == stack.data_shape == (3, 2, 5, 170, 240)


# -- region reads and chunks -------------------------------------------------------------------
class _ReadSpy:
    """Records the ROI of every pylibCZIrw read."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.rois: list[tuple[int, int, int, int]] = []
        original = pyczi.CziReader.read

        def read(doc: Any, *args: Any, **kwargs: Any) -> Any:
            self.rois.append(tuple(kwargs["roi"]))
            return original(doc, *args, **kwargs)

        monkeypatch.setattr(pyczi.CziReader, "read", read)


@pytest.fixture
def cache_size(request: pytest.FixtureRequest) -> Any:
    """Sets this process's chunk cache to ``request.param`` bytes (emptied), restored afterwards."""
    from lazystack.io.cache import get_chunk_cache, set_chunk_cache_size

    previous = set_chunk_cache_size(request.param)
    get_chunk_cache().clear()
    yield request.param
    set_chunk_cache_size(previous)


@pytest.mark.parametrize("cache_size", [0], indirect=True)
def test_extract_patch_reads_only_the_patch_region(
    multi_scene: Any, monkeypatch: pytest.MonkeyPatch, cache_size: int
) -> None:
    path, a, _ = multi_scene
    stack = load_czis(path, "SCZYX")[0]
    spy = _ReadSpy(monkeypatch)
    patch = stack.extract_patch(1, [0], (1, -3, 40), (2, 8, 16))
    np.testing.assert_array_equal(patch[0, :, 3:, :10], a[1, 1:3, 0, 0:5, 40:50])
    # one read per Z plane of the one channel, each of the clipped 10 x 5 region only
    assert spy.rois == [(-300 + 40, -50, 10, 5)] * 2


@pytest.mark.parametrize("cache_size", [64 << 20], indirect=True)
def test_cached_blocks_are_read_once(multi_scene: Any, monkeypatch: pytest.MonkeyPatch, cache_size: int) -> None:
    path, a, _ = multi_scene
    stack = load_czis(path, "SCZYX")[0]
    assert stack.reader._cache_block == (czi.CACHE_BLOCK, czi.CACHE_BLOCK)  # its 40 x 25 tiles are too small
    spy = _ReadSpy(monkeypatch)
    patch = stack.extract_patch(1, [0], (1, -3, 40), (2, 8, 16))
    np.testing.assert_array_equal(patch[0, :, 3:, :10], a[1, 1:3, 0, 0:5, 40:50])
    # one block per Z plane of the one channel: the whole 50 x 40 plane (smaller than a block)
    assert spy.rois == [(-300, -50, 50, 40)] * 2
    again = stack.extract_patch(1, [0], (1, 0, 0), (2, 40, 50))  # inside the cached blocks: no read
    np.testing.assert_array_equal(again[0], a[1, 1:3, 0])
    assert len(spy.rois) == 2


@pytest.mark.parametrize("cache_size", [64 << 20], indirect=True)
def test_file_changed_after_a_cached_read_is_a_clear_error(multi_scene: Any, tmp_path: Path, cache_size: int) -> None:
    path, a, _ = multi_scene
    copy = tmp_path / "copy.czi"
    copy.write_bytes(path.read_bytes())
    stack = load_czis(copy, "SCZYX")[0]
    np.testing.assert_array_equal(stack.extract_patch(0, [0], (0, 0, 0), (3, 40, 50))[0], a[0, :, 0])
    st = copy.stat()
    os.utime(copy, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # cached blocks may no longer be the file's
    with pytest.raises(SourceReadError, match=r"copy\.czi@0.*changed since the stack was opened"):
        stack.extract_patch(0, [0], (0, 0, 0), (3, 40, 50))


@pytest.mark.parametrize("cache_size", [64 << 20], indirect=True)
def test_regular_tiles_are_the_cache_unit(big_plane: Any, cache_size: int) -> None:
    path, data = big_plane
    (stack,) = load_czis(path, "SCYX")
    reader = stack.reader
    assert reader._cache_block == (256, 256)  # written as 256 x 256 tiles
    chunked = reader.as_chunked()
    assert chunked is not None
    assert chunked.chunk_grid.chunk_shape == (1, 1, 256, 256)
    np.testing.assert_array_equal(stack.extract_patch(0, None, (250, 250), (300, 20))[0], data[250:550, 250:270])


@pytest.mark.parametrize("cache_size", [0, 64 << 20, 100_000], indirect=True)
def test_same_patches_with_the_cache_on_and_off(multi_scene: Any, big_plane: Any, cache_size: int) -> None:
    """Random patches (reread twice: cold then warm) equal numpy slicing, whatever the cache size."""
    path, a, b = multi_scene
    for axes in ("SCZYX", "SCYX"):
        for stack, tzcyx in zip(load_czis(path, axes), (a, b), strict=True):
            for _ in range(2):  # cold, then warm
                _random_patches(stack, _canonical(tzcyx, axes), np.random.default_rng(3), size=20)
    bpath, data = big_plane
    (big,) = load_czis(bpath, "SCYX")
    for _ in range(2):
        np.testing.assert_array_equal(big.extract_patch(0, None, (500, 300), (600, 500))[0], data[500:1100, 300:800])
    np.testing.assert_array_equal(big.compute()[0, 0], data)


@pytest.mark.parametrize("cache_size", [0], indirect=True)
def test_chunks_one_plane_and_spatial_blocks(big_plane: Any, monkeypatch: pytest.MonkeyPatch, cache_size: int) -> None:
    path, data = big_plane
    monkeypatch.setattr(czi, "BLOCK", 512)
    (stack,) = load_czis(path, "SCYX")
    monkeypatch.setitem(dask.config.config["array"], "chunk-size", "1B")  # a target below one block: no merging
    assert stack.chunks == ((1,), (1,), (512, 512, 76), (512, 388))
    spy = _ReadSpy(monkeypatch)
    np.testing.assert_array_equal(stack.data.compute(scheduler="threads")[0, 0], data)
    assert len(spy.rois) == 6
    assert all(w <= 512 and h <= 512 for _, _, w, h in spy.rois)


def test_chunks_per_plane(multi_scene: Any) -> None:
    path, _, _ = multi_scene
    stack = load_czis(path, "SCZYX")[1]
    with dask.config.set({"array.chunk-size": "1B"}):  # a target below one plane: no merging
        assert stack.chunks == ((1, 1), (1, 1), (1, 1, 1), (30,), (70,))


def test_opening_reads_metadata_once_per_file_and_no_pixels(multi_scene: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    path, _, _ = multi_scene
    calls = {"info": 0, "open": 0}
    read_info, open_handle = czi._read_info, czi._CziHandle

    def counting_info(*args: Any) -> Any:
        calls["info"] += 1
        return read_info(*args)

    def counting_open(*args: Any, **kwargs: Any) -> Any:
        calls["open"] += 1
        return open_handle(*args, **kwargs)

    monkeypatch.setattr(czi, "_read_info", counting_info)
    monkeypatch.setattr(czi, "_CziHandle", counting_open)
    spy = _ReadSpy(monkeypatch)
    with raise_if_dask_computes():
        stacks = load_czis(path, "SCZYX")
        for s in stacks:
            _ = (s.data_shape, s.scene_name, s.channel_names, s.physical_pixel_sizes, s.data, repr(s))
    assert calls == {"info": 1, "open": 1}
    assert spy.rois == []
    for s in stacks:  # the scenes share the file's open handle
        s.extract_patch(0, None, (0, 0, 0), (1, 4, 4))
    assert calls["open"] == 1


# -- real Zeiss files ---------------------------------------------------------------------------
def _bioio_reference(path: Path, scene_index: int, axes: str) -> np.ndarray:
    """The scene as bioio-czi reads it, reordered to lazystack's canonical layout for ``axes``.

    bioio-czi names colour samples ``S`` (in B, G, R order); lazystack makes
    them channels in R, G, B order. Every dim other than C, the depth, Y and
    X is a sample dim, in CAREamics' order: T, Z (unless the depth), then ``R I H V B``.
    """
    import xarray as xr
    from bioio_czi import Reader

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reader = Reader(str(path))
        reader.set_scene(reader.scenes[scene_index])
        try:
            x = reader.mosaic_xarray_data if "M" in reader.dims.order else reader.xarray_data
        except Exception:  # bioio-czi cannot parse this file's metadata: read with aicspylibczi, which it wraps
            import aicspylibczi

            with open(path, "rb") as fh:  # aicspylibczi leaves a file it opened itself open
                f = aicspylibczi.CziFile(fh)
                arr, dims = f.read_image(S=scene_index) if "S" in f.dims else f.read_image()
            x = xr.DataArray(arr, dims=[d if d != "A" else "S" for d, _ in dims])
    x = x.rename({"S": "RGB"}) if "S" in x.dims else x
    x = x.squeeze([d for d in x.dims if x.sizes[d] == 1 and d not in "CYX"], drop=True)
    if "RGB" in x.dims:
        x = x.isel(RGB=slice(None, None, -1))
        x = x.stack(CH=("C", "RGB")) if "C" in x.dims else x.rename({"RGB": "CH"})
    elif "C" in x.dims:
        x = x.rename({"C": "CH"})
    else:
        x = x.expand_dims("CH")
    depth = axes[2] if len(axes) == 5 else None
    samples = [d for d in "TZRIHVB" if d in x.dims and d != depth]
    order = [*samples, "CH", *([depth] if depth else []), "Y", "X"]
    x = x.transpose(*order)
    arr = x.values
    n_samples = int(np.prod(arr.shape[: len(samples)], dtype=np.int64))
    return arr.reshape(n_samples, *arr.shape[len(samples) :])


def _real_axes(path: Path) -> list[str]:
    (probe,) = load_czis(path, "SCYX")[:1]
    dims = dict(zip(probe.attrs["czi_dims"], probe.attrs["czi_shape"], strict=True))
    return ["SCYX"] + [f"SC{d}YX" for d in "ZT" if dims.get(d, 1) > 1]


@pytest.mark.parametrize("path", REAL, ids=[p.name for p in REAL])
def test_real_files_match_bioio_czi(path: Path) -> None:
    rng = np.random.default_rng(5)
    for axes in _real_axes(path):
        stacks = load_czis(path, axes)
        for i, stack in enumerate(stacks):
            ref = _bioio_reference(path, i, axes)
            assert stack.data_shape == ref.shape, (axes, i)
            np.testing.assert_array_equal(stack.compute(), ref)
            _random_patches(stack, ref, rng, n=8, size=64)


def test_real_multi_scene_and_rgb(shared_czi_dir: Path) -> None:
    stacks = load_czis(shared_czi_dir / "WellD6-7_S2.czi", "SCYX")
    assert [(s.scene, s.scene_name) for s in stacks] == [(0, "D6"), (1, "D7")]
    assert stacks[1].attrs["bounding_box"][0] == 90000
    (rgb,) = load_czis(shared_czi_dir / "RGB-8bit.czi", "scyx")
    assert rgb.data_shape[1] == 3
    assert rgb.data_dtype == np.uint8
    (tiles,) = load_czis(shared_czi_dir / "tiles_z.czi", "SCZYX")
    assert tiles.attrs["bounding_box"][:2] == (-127, -128)


def test_real_czi_equals_its_ome_tiff_twin(shared_czi_dir: Path, shared_tiff_dir: Path) -> None:
    tifffile = pytest.importorskip("tifffile")
    (stack,) = load_czis(shared_czi_dir / "FOV7_HV110_P0500510000.czi", "SCYX")
    tiff = tifffile.imread(shared_tiff_dir / "FOV7_HV110_P0500510000.ome.tiff")
    np.testing.assert_array_equal(stack.compute()[0, 0], tiff)
    np.testing.assert_array_equal(stack.extract_patch(0, None, (500, -10), (64, 64))[0, :12, 10:], tiff[500:, :54])


# -- pickling, processes, threads ----------------------------------------------------------------
def test_pickles_as_a_recipe(multi_scene: Any) -> None:
    path, _, b = multi_scene
    stack = load_czis(path, "SCZYX")[1]
    stack.extract_patch(0, None, (0, 0, 0), (1, 4, 4))  # opens the handle
    blob = pickle.dumps(stack)
    assert len(blob) < 4096
    clone = pickle.loads(blob)
    np.testing.assert_array_equal(clone.compute(), _canonical(b, "SCZYX"))
    assert clone.scene == 1
    assert clone.source == stack.source


@pytest.mark.parametrize("method", ["fork", "spawn"])
@pytest.mark.timeout(120)
def test_pool_workers(multi_scene: Any, method: str) -> None:
    path, a, b = multi_scene
    stacks = load_czis(path, "SCZYX")
    stacks[0].extract_patch(0, None, (0, 0, 0), (1, 4, 4))  # a handle open in the parent before fork
    call = operator.methodcaller("extract_patch", 1, None, (0, 3, 4), (2, 16, 16))
    with mp.get_context(method).Pool(2) as pool:
        results = pool.map(call, stacks)
    np.testing.assert_array_equal(results[0], a[1, 0:2, :, 3:19, 4:20].transpose(1, 0, 2, 3))
    np.testing.assert_array_equal(results[1], b[1, 0:2, :, 3:19, 4:20].transpose(1, 0, 2, 3))


@pytest.mark.timeout(120)
def test_dask_distributed_workers(multi_scene: Any) -> None:
    distributed = pytest.importorskip("distributed")
    path, _, b = multi_scene
    stack = load_czis(path, "SCZYX")[1]
    with (
        distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=True, dashboard_address=None) as cluster,
        distributed.Client(cluster) as client,
    ):
        total = client.compute(stack.data.sum(dtype=np.int64)).result()
        patch = client.submit(operator.methodcaller("extract_patch", 1, [1], (2, 5, 6), (1, 9, 9)), stack).result()
    assert total == b.sum(dtype=np.int64)
    np.testing.assert_array_equal(patch[0, 0], b[1, 2, 1, 5:14, 6:15])


def test_threads_share_a_stack(multi_scene: Any) -> None:
    path, a, _ = multi_scene
    stack = load_czis(path, "SCYX")[0]
    ref = _canonical(a, "SCYX")
    errors: list[BaseException] = []

    def work(seed: int) -> None:
        rng = np.random.default_rng(seed)
        try:
            for _ in range(100):
                s, c = int(rng.integers(ref.shape[0])), [int(rng.integers(-5, 40)), int(rng.integers(-5, 50))]
                np.testing.assert_array_equal(
                    stack.extract_patch(s, None, c, (8, 8)), patch_reference(ref, s, None, c, (8, 8))
                )
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors[0]


def test_close_then_read_again(multi_scene: Any) -> None:
    path, _, _b = multi_scene
    stack = load_czis(path, "SCZYX")[1]
    first = stack.extract_patch(0, None, (0, 0, 0), (3, 30, 70))
    stack.close()
    np.testing.assert_array_equal(stack.extract_patch(0, None, (0, 0, 0), (3, 30, 70)), first)


def test_close_waits_for_the_read_in_flight_and_reads_after_it_reopen(
    multi_scene: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    path, _, _ = multi_scene
    stack = load_czis(path, "SCZYX")[1]
    first = stack.extract_patch(0, None, (0, 0, 0), (3, 30, 70))
    manager = stack.reader._manager
    with manager.acquire_context() as handle:
        pass
    closer = threading.Thread(target=stack.close)
    with handle.lock:  # a read in flight on the handle
        closer.start()
        closer.join(0.3)
        assert closer.is_alive(), "close() did not wait for the read in flight"
        assert not handle.closed
    closer.join(60)
    assert handle.closed
    assert not closer.is_alive()
    # a read that was handed the old handle before close() finds it closed and asks again
    calls = []
    real = manager.acquire_context

    @contextlib.contextmanager
    def stale_first() -> Any:
        calls.append(1)
        if len(calls) == 1:
            yield handle
        else:
            with real() as f:
                yield f

    monkeypatch.setattr(manager, "acquire_context", stale_first)
    with czi._live_handle(manager, str(path)) as fresh:
        assert fresh is not handle
        assert not fresh.closed
    assert len(calls) == 2
    np.testing.assert_array_equal(stack.extract_patch(0, None, (0, 0, 0), (3, 30, 70)), first)


def test_write_demo_czi_round_trip(tmp_path: Path) -> None:
    data = np.random.default_rng(6).integers(0, 60000, (2, 2, 600, 530), dtype=np.uint16)
    sample_files.write_demo_czi(tmp_path / "demo.czi", data)
    left, right = load_czis(tmp_path / "demo.czi", "SCYX")
    assert (left.scene_name, right.scene_name) == ("left", "right-flipped")
    np.testing.assert_array_equal(left.compute(), data)
    np.testing.assert_array_equal(right.compute(), data[..., ::-1])


# -- bad input ---------------------------------------------------------------------------------
def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(SourceNotFoundError, match=r"nope\.czi"):
        load_czis(tmp_path / "nope.czi", "SCYX")


def test_not_a_czi(tmp_path: Path) -> None:
    (tmp_path / "x.czi").write_text("hello, I am text")
    with pytest.raises(SourceFormatError, match=r"x\.czi.*not a CZI"):
        load_czis(tmp_path / "x.czi", "SCYX")
    with pytest.raises(SourceFormatError, match="directory"):
        load_czis(tmp_path, "SCYX")


_CORRUPT_SCRIPT = """
import sys
from lazystack import load_czis
from lazystack.core.errors import LazyStackError
try:
    stacks = load_czis(sys.argv[1], "SCZYX")
    for s in stacks:
        s.compute()
except LazyStackError as exc:
    print("CLEAN", type(exc).__name__, exc)
else:
    print("READ")
"""


@pytest.mark.parametrize("damage", ["truncated-head", "truncated-tail", "bad-magic", "overwritten-directory"])
def test_corrupt_or_truncated_file_fails_cleanly_in_a_subprocess(multi_scene: Any, tmp_path: Path, damage: str) -> None:
    path, _, _ = multi_scene
    raw = bytearray(path.read_bytes())
    if damage == "truncated-head":
        raw = raw[:300]
    elif damage == "truncated-tail":
        raw = raw[: len(raw) - 200]
    elif damage == "bad-magic":
        raw[:16] = b"\0" * 16
    else:  # overwrite the sub-block directory, which CZI writers put near the end
        raw[len(raw) // 2 :] = (
            np.random.default_rng(7).integers(0, 256, len(raw) - len(raw) // 2, dtype=np.uint8).tobytes()
        )
    bad = tmp_path / f"{damage}.czi"
    bad.write_bytes(bytes(raw))
    run = subprocess.run([sys.executable, "-c", _CORRUPT_SCRIPT, str(bad)], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, f"the interpreter died ({run.returncode}): {run.stderr[-2000:]}"
    assert run.stdout.startswith("CLEAN"), run.stdout + run.stderr[-2000:]
    assert str(bad) in run.stdout


def test_scene_that_does_not_exist_lists_the_scenes(multi_scene: Any) -> None:
    path, _, _ = multi_scene
    with pytest.raises(SourceNotFoundError, match=r"no scene 9.*0 \(left\), 1 \(right\)"):
        load_czis(f"{path}@9", "SCYX")


@pytest.mark.parametrize("axes", ["YX", "CYX", "SYX", "SZCYX", "SCZTYX", "TCZYX", "SCXY", "", "SCQYX"])
def test_invalid_axes_quote_the_accepted_forms(multi_scene: Any, axes: str) -> None:
    path, _, _ = multi_scene
    with pytest.raises(AxesError, match="'SCYX', 'SCZYX', 'SCTYX'"):
        load_czis(path, axes)


def test_depth_axis_the_file_lacks(rgb: Any) -> None:
    path, _ = rgb
    with pytest.raises(ShapeMismatchError, match=r"depth axis 'Z'.*rgb\.czi.*'SCYX'"):
        load_czis(path, "SCZYX")
    with pytest.raises(ShapeMismatchError, match=r"depth axis 'T'.*'SCYX'"):
        load_czis(path, "SCTYX")


def test_channel_out_of_range(multi_scene: Any) -> None:
    path, _, _ = multi_scene
    stack = load_czis(path, "SCYX")[0]
    with pytest.raises(ChannelIndexError, match="2 channel"):
        stack.extract_patch(0, [2], (0, 0), (4, 4))


def test_missing_extra_names_it(multi_scene: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    path, _, _ = multi_scene
    monkeypatch.setitem(sys.modules, "pylibCZIrw", None)
    monkeypatch.setitem(sys.modules, "pylibCZIrw.czi", None)
    with pytest.raises(MissingDependencyError, match=r"lazystack\[czi\]"):
        load_czis(path, "SCYX")


def test_lazystack_works_without_the_extra() -> None:
    script = (
        "import sys\n"
        "for m in ('pylibCZIrw', 'pylibCZIrw.czi', '_pylibCZIrw', 'bioio', 'bioio_czi', 'aicspylibczi'):\n"
        "    sys.modules[m] = None\n"
        "import numpy as np, lazystack\n"
        "(s,) = lazystack.load_arrays([np.ones((2, 8, 8))], 'SYX')\n"
        "assert s.extract_patch(1, None, (0, 0), (4, 4)).sum() == 16\n"
        "try:\n"
        "    lazystack.load_czis('x.czi', 'SCYX')\n"
        "except lazystack.core.errors.MissingDependencyError as exc:\n"
        "    print('MISSING', exc)\n"
    )
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "MISSING" in run.stdout
    assert "lazystack[czi]" in run.stdout


def test_unknown_pixel_type_names_the_file_and_the_supported_types(tmp_path: Path) -> None:
    import struct

    from pylibCZIrw import czi as pyczi

    path = tmp_path / "ptype.czi"
    with pyczi.create_czi(str(path), exist_ok=True) as w:
        for c in range(2):
            w.write(np.full((16, 12), c, dtype=np.uint16), plane={"C": c})
    raw = bytearray(path.read_bytes())
    entry = raw.find(b"DV", raw.find(b"ZISRAWDIRECTORY") + 32 + 128)
    assert entry > 0
    while entry >= 0:  # every directory entry ("DV" schema): pixel type 77, which no CZI defines
        raw[entry + 2 : entry + 6] = struct.pack("<i", 77)
        entry = raw.find(b"DV", entry + 2)
    path.write_bytes(bytes(raw))
    with pytest.raises(SourceFormatError, match=r"ptype\.czi.*pixel type.*'Gray16'"):
        load_czis(path, "SCYX")


def test_stack_repr_shows_the_original_axes_the_stacklist_shows(shared_czi_dir: Path) -> None:
    # original_axes names a CZI's merged dimensions (TB here, not S): the stack's own facts
    # table, its text repr and the StackList row all show that, not the reader's SCZYX
    (stack,) = load_czis([shared_czi_dir / "CellDivision_T3_Z5_CH2_X240_Y170.czi"], "SCZYX")
    assert (stack.original_axes, stack.original_data_shape) == ("TBCZYX", (3, 1, 2, 5, 170, 240))
    shown = "TBCZYX (3, 1, 2, 5, 170, 240)"
    row = lazystack.StackList([stack])._rows()[0]
    assert row["original"] == shown
    assert f"original:   {shown}" in repr(stack)
    assert f"<th style='text-align:left'>original</th><td style='text-align:left'>{shown}</td>" in stack._repr_html_()
