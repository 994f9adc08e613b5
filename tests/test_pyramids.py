"""Pyramids outside OME-Zarr: OME-TIFF SubIFD levels and CZI pyramid layers as level stacks.

References: tifffile's own reads of a level (``tifffile.imread(path, series=i, level=k)``,
``series.levels[k].asarray()``) for OME-TIFFs written with tifffile's ``subifds=``; for CZI,
pylibCZIrw's own ``read(roi=..., zoom=1 / f)`` of a whole scene, the sub-block headers it
enumerates, and the full-resolution plane (a stored Gaussian pyramid layer is not a subsampling
of it, but resembles its Gaussian-filtered subsampling).
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile

from lazystack import load, load_czis, load_iter_tiff, load_tiffs
from lazystack.core.errors import SelectionError, SourceNotFoundError
from lazystack.frontends.cli import main

SHAPE = (2, 3, 65, 97)  # C Z Y X: odd sizes, so that levels round up (tifffile's [::2])
SIZES = {"X": 0.5, "Y": 0.25, "Z": 2.0}


def _data(shape: tuple[int, ...] = SHAPE, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 60000, shape, dtype=np.uint16)


def _write_pyramid(tw: tifffile.TiffWriter, data: np.ndarray, name: str) -> None:
    """Level 0 and 1: tiled, deflate; level 2: uncompressed, contiguous (memory-mapped by lazystack)."""
    meta = {"axes": "CZYX", "Name": name, "Channel": {"Name": ["a", "b"]}}
    meta.update({f"PhysicalSize{a}": v for a, v in SIZES.items()})
    kw: dict[str, Any] = {"photometric": "minisblack"}
    tw.write(data, subifds=2, tile=(16, 16), compression="zlib", metadata=meta, **kw)
    tw.write(data[..., ::2, ::2], subfiletype=1, tile=(16, 16), compression="zlib", **kw)
    tw.write(data[..., ::4, ::4], subfiletype=1, **kw)


@pytest.fixture(scope="module")
def pyramid(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An OME-TIFF with one 3-level SubIFD pyramid."""
    path = tmp_path_factory.mktemp("pyr") / "pyramid.ome.tif"
    with tifffile.TiffWriter(path, ome=True) as tw:
        _write_pyramid(tw, _data(), "one")
    with tifffile.TiffFile(path) as tif:
        assert [lv.shape for lv in tif.series[0].levels] == [SHAPE, (2, 3, 33, 49), (2, 3, 17, 25)]
    return path


@pytest.fixture(scope="module")
def two_pyramids(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An OME-TIFF with two image series, each a 3-level SubIFD pyramid."""
    path = tmp_path_factory.mktemp("pyr") / "two.ome.tif"
    with tifffile.TiffWriter(path, ome=True) as tw:
        _write_pyramid(tw, _data(seed=1), "first")
        _write_pyramid(tw, _data((2, 3, 40, 30), seed=2), "second")
    return path


def _tifffile_level(path: Path, series: int, level: int) -> np.ndarray:
    via_imread = tifffile.imread(path, series=series, level=level)
    with tifffile.TiffFile(path) as tif:
        np.testing.assert_array_equal(tif.series[series].levels[level].asarray(), via_imread)
    return via_imread


def _check_patches(stack: Any, ref: np.ndarray, rng: np.random.Generator, n: int = 12) -> None:
    """Random patches (some over the edges) against slices of ``ref`` (C Z Y X), zero outside."""
    _, depth, height, width = ref.shape
    for _ in range(n):
        size = (int(rng.integers(1, depth + 1)), int(rng.integers(1, 24)), int(rng.integers(1, 24)))
        corner = [
            int(rng.integers(-s // 2, n_ - s // 2 + 1)) for s, n_ in zip(size, (depth, height, width), strict=True)
        ]
        expected = np.zeros((ref.shape[0], *size), np.float32)
        src = tuple(
            slice(max(c, 0), min(c + s, n_)) for c, s, n_ in zip(corner, size, (depth, height, width), strict=True)
        )
        dst = tuple(slice(s.start - c, s.stop - c) for s, c in zip(src, corner, strict=True))
        expected[(slice(None), *dst)] = ref[(slice(None), *src)]
        np.testing.assert_array_equal(stack.extract_patch(0, None, corner, size), expected)


# -- OME-TIFF ---------------------------------------------------------------------------------------------
def test_every_tiff_level_equals_tifffiles_level(pyramid: Path) -> None:
    stacks = load_tiffs(pyramid, "CZYX", levels="all")
    assert [s.level for s in stacks] == [0, 1, 2]
    assert [s.reader.is_memmapped for s in stacks] == [False, False, True]  # level 2 is stored uncompressed
    rng = np.random.default_rng(7)
    for stack in stacks:
        ref = _tifffile_level(pyramid, 0, stack.level)
        assert stack.original_data_shape == ref.shape
        np.testing.assert_array_equal(stack.compute()[0], ref)
        _check_patches(stack, ref, rng)


def test_tiff_levels_metadata(pyramid: Path) -> None:
    stacks = load_tiffs(pyramid, "CZYX", levels="all")
    assert [s.source for s in stacks] == [str(pyramid), f"{pyramid}@0#level=1", f"{pyramid}@0#level=2"]
    assert {s.attrs["image_uri"] for s in stacks} == {f"{pyramid}@0"}
    # 65 x 97 -> 33 x 49 -> 17 x 25 pixels: factors 2 and 4 (rounded up, as data[::2], data[::4])
    assert [s.attrs["downsample"] for s in stacks] == [{"Z": 1.0, "Y": f, "X": f} for f in (1.0, 2.0, 4.0)]
    for stack, f in zip(stacks, (1, 2, 4), strict=True):
        assert stack.physical_pixel_sizes == pytest.approx({"X": 0.5 * f, "Y": 0.25 * f, "Z": 2.0})
        assert stack.channel_names == ["a", "b"]
        assert stack.series == 0


@pytest.mark.parametrize(
    ("levels", "expected"), [("all", [0, 1, 2]), (None, [0, 1, 2]), (0, [0]), ([2, 0], [0, 2]), ("1,2", [1, 2])]
)
def test_tiff_level_selection(pyramid: Path, levels: Any, expected: list[int]) -> None:
    assert [s.level for s in load_tiffs(pyramid, "CZYX", levels=levels)] == expected
    assert [s.level for s in load(pyramid, levels=levels)] == expected  # axes declared by the file


def test_tiff_defaults_load_tiffs_full_resolution_load_every_level(pyramid: Path) -> None:
    # load_tiffs: one stack per series, as CAREamics' load_tiffs; load() and the CLI: every level, as OME-Zarr
    assert [s.level for s in load_tiffs(pyramid, "CZYX")] == [0]
    assert [s.level for s in load_iter_tiff(pyramid, "CZYX")] == [0]
    assert [s.level for s in load(pyramid)] == [0, 1, 2]
    assert [s.level for s in load(pyramid).at_level(1)] == [1]


def test_tiff_level_source_reopens_that_level(pyramid: Path) -> None:
    source = f"{pyramid}@0#level=2"
    for stacks in (load_tiffs(source, "CZYX"), load_tiffs(source, "CZYX", levels=0), load(source, levels=0)):
        (stack,) = stacks
        assert (stack.source, stack.level, stack.attrs["image_uri"]) == (source, 2, f"{pyramid}@0")
        np.testing.assert_array_equal(stack.compute()[0], _tifffile_level(pyramid, 0, 2))


def test_tiff_level_stack_pickles(pyramid: Path) -> None:
    stack = load_tiffs(pyramid, "CZYX", levels=1)[0]
    again = pickle.loads(pickle.dumps(stack))
    assert again.level == 1
    np.testing.assert_array_equal(again.compute()[0], _tifffile_level(pyramid, 0, 1))


def test_tiff_missing_level_names_value_path_and_levels(pyramid: Path) -> None:
    with pytest.raises(SourceNotFoundError) as info:
        load_tiffs(pyramid, "CZYX", levels=[0, 5])
    text = str(info.value)
    assert str(pyramid) in text
    assert "has 3 resolution level(s) (0 to 2), not level 5 asked for by levels=[0, 5]" in text
    with pytest.raises(SourceNotFoundError, match=r"3 resolution level\(s\) \(0 to 2\), not level 3 asked for by the"):
        load_tiffs(f"{pyramid}@0#level=3", "CZYX")
    with pytest.raises(SelectionError, match="levels"):
        load_tiffs(pyramid, "CZYX", levels=-1)


def test_tiff_without_pyramid_is_one_level(tmp_path: Path) -> None:
    path = tmp_path / "plain.ome.tif"
    data = _data((2, 3, 20, 30))
    tifffile.imwrite(path, data, ome=True, metadata={"axes": "CZYX"}, photometric="minisblack")
    (stack,) = load_tiffs(path, "CZYX", levels="all")
    assert stack.level is None  # not part of a pyramid (counts as level 0)
    assert "downsample" not in stack.attrs
    with pytest.raises(SourceNotFoundError, match=r"has 1 resolution level\(s\) \(0 to 0\), not level 1"):
        load_tiffs(path, "CZYX", levels=1)


def test_tiff_levels_of_two_series_group_by_series(two_pyramids: Path) -> None:
    stacks = load_tiffs(two_pyramids, "CZYX", levels="all")
    assert [(s.series, s.level) for s in stacks] == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)]
    assert [s.source for s in stacks][3:] == [
        f"{two_pyramids}@1",
        f"{two_pyramids}@1#level=1",
        f"{two_pyramids}@1#level=2",
    ]
    for stack in stacks:
        np.testing.assert_array_equal(stack.compute()[0], _tifffile_level(two_pyramids, stack.series, stack.level))
    groups = stacks.images()
    assert [[(s.series, s.level) for s in g] for g in groups] == [[(0, 0), (0, 1), (0, 2)], [(1, 0), (1, 1), (1, 2)]]
    assert [s.level for s in stacks.at_level(2)] == [2, 2]
    text = repr(stacks)
    assert text.startswith("StackList of 6 stacks (2 images, levels of one image grouped)")
    rows = text.splitlines()[3:]
    assert [row.split()[0] for row in rows] == [str(two_pyramids), "└", "└", f"{two_pyramids}@1", "└", "└"]
    assert [row.split()[1] for row in rows if row.startswith("  └ ")] == ["#level=1", "#level=2"] * 2


def test_cli_info_lists_tiff_levels(pyramid: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", str(pyramid), "--levels", "0,2"]) == 0
    rows = capsys.readouterr().out.strip().splitlines()[2:4]
    assert [row.split()[0] for row in rows] == [str(pyramid), f"{pyramid}@0#level=2"]
    assert ["series 0, level 0" in rows[0], "series 0, level 2" in rows[1]] == [True, True]
    assert main(["info", str(pyramid), "--levels", "7"]) == 1
    err = capsys.readouterr().err
    assert str(pyramid) in err
    assert "not level 7" in err


# -- CZI ------------------------------------------------------------------------------------------------------
def _pyczi() -> Any:
    return pytest.importorskip("pylibCZIrw.czi", reason="the czi extra (pylibCZIrw) is not installed")


def _czi_layers(path: Path) -> dict[int | None, set[float]]:
    """Per scene: the zooms of its sub-blocks (pylibCZIrw's sub-block headers)."""
    zooms: dict[int | None, set[float]] = {}

    def visit(_index: int, info: Any) -> bool:
        coordinate = info.coordinate.to_dict()
        zooms.setdefault(coordinate.get("S"), set()).add(float(info.get_zoom()))
        return True

    with _pyczi().open_czi(str(path)) as doc:
        doc.enumerate_subblocks(visit)
    return zooms


def _czi_reference(path: Path, scene: int | None, factor: int) -> np.ndarray:
    """pylibCZIrw's own read of a whole scene (channel 0) at zoom 1 / factor."""
    with _pyczi().open_czi(str(path)) as doc:
        r = doc.total_bounding_rectangle if scene is None else doc.scenes_bounding_rectangle[scene]
        return doc.read(roi=(r.x, r.y, r.w, r.h), plane={"C": 0}, scene=scene, zoom=1 / factor)[..., 0]


@pytest.fixture(scope="module")
def well(shared_czi_dir: Path) -> Path:
    """A real Zeiss CZI with two scenes, each stored with one pyramid layer minified 2 x."""
    path = shared_czi_dir / "WellD6-7_S2.czi"
    if not path.exists():
        pytest.skip(f"{path} is not available")
    assert _czi_layers(path) == {0: {1.0, 0.5}, 1: {1.0, 0.5}}
    return path


@pytest.mark.parametrize("cache", ["on", "off"])
def test_czi_pyramid_levels_equal_pylibczirws_zoomed_read(well: Path, cache: str) -> None:
    from lazystack.io.cache import get_chunk_cache, set_chunk_cache_size

    previous = set_chunk_cache_size(0 if cache == "off" else 64 << 20)
    get_chunk_cache().clear()
    try:
        stacks = load_czis(well, "SCYX", levels="all")
        assert [(s.scene, s.level) for s in stacks] == [(0, 0), (0, 1), (1, 0), (1, 1)]
        rng = np.random.default_rng(3)
        for stack in stacks:
            factor = 2**stack.level
            ref = _czi_reference(well, stack.scene, factor)
            assert ref.shape == (440 // factor, 544 // factor)
            assert stack.data_shape == (1, 1, *ref.shape)
            np.testing.assert_array_equal(stack.compute()[0, 0], ref)
            for _ in range(10):  # unaligned patches, some over the edges (zero outside)
                h, w = (int(n) for n in rng.integers(1, 80, 2))
                y, x = int(rng.integers(-h // 2, ref.shape[0])), int(rng.integers(-w // 2, ref.shape[1]))
                expected = np.zeros((1, h, w), np.float32)
                ys, xs = slice(max(y, 0), min(y + h, ref.shape[0])), slice(max(x, 0), min(x + w, ref.shape[1]))
                expected[0, ys.start - y : ys.stop - y, xs.start - x : xs.stop - x] = ref[ys, xs]
                np.testing.assert_array_equal(stack.extract_patch(0, None, (y, x), (h, w)), expected)
    finally:
        set_chunk_cache_size(previous)


def test_czi_level_is_the_stored_layer_not_a_resampling(well: Path) -> None:
    scipy_ndimage = pytest.importorskip("scipy.ndimage")
    full, half = load_czis(well, "SCYX", levels="all")[:2]
    level0 = full.compute()[0, 0].astype(np.float64)
    level1 = half.compute()[0, 0].astype(np.float64)
    assert not np.array_equal(level1, level0[::2, ::2])  # not nearest-neighbour subsampling
    # ZEN's layer is Gaussian-minified ("MinificationMethod" Gaussian in the file's PyramidInfo)
    smoothed = scipy_ndimage.gaussian_filter(level0, 1.0)[::2, ::2]
    assert np.corrcoef(level1.ravel(), smoothed.ravel())[0, 1] > 0.99


def test_czi_level_metadata_and_sources(well: Path) -> None:
    stacks = load_czis(well, "SCYX", levels="all")
    assert [s.source for s in stacks] == [f"{well}@0", f"{well}@0#level=1", f"{well}@1", f"{well}@1#level=1"]
    assert [s.attrs["image_uri"] for s in stacks] == [f"{well}@0", f"{well}@0", f"{well}@1", f"{well}@1"]
    assert [s.attrs["downsample"] for s in stacks] == [{"Y": f, "X": f} for f in (1.0, 2.0, 1.0, 2.0)]
    full, half = stacks[:2]
    assert half.physical_pixel_sizes == pytest.approx({a: 2 * v for a, v in full.physical_pixel_sizes.items()})
    assert half.attrs["units"] == full.attrs["units"]
    assert (half.scene, half.scene_name, half.channel_names) == (full.scene, full.scene_name, full.channel_names)
    assert half.attrs["czi_shape"][-2:] == (220, 272)
    assert half.attrs["bounding_box"] == full.attrs["bounding_box"]  # in full-resolution pixels
    groups = stacks.images()
    assert [[(s.scene, s.level) for s in g] for g in groups] == [[(0, 0), (0, 1)], [(1, 0), (1, 1)]]
    assert "(2 images, levels of one image grouped)" in repr(stacks).splitlines()[0]


def test_czi_defaults_and_level_source(well: Path) -> None:
    # load_czis: one stack per scene (CAREamics' load_czis); load(): every level
    assert [(s.scene, s.level) for s in load_czis(well, "SCYX")] == [(0, 0), (1, 0)]
    assert [(s.scene, s.level) for s in load(well)] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert [(s.scene, s.level) for s in load(well, levels=1)] == [(0, 1), (1, 1)]
    source = f"{well}@1#level=1"
    for stacks in (load_czis(source, "SCYX"), load(source, levels=0)):
        (stack,) = stacks
        assert (stack.source, stack.scene, stack.level) == (source, 1, 1)
        np.testing.assert_array_equal(stack.compute()[0, 0], _czi_reference(well, 1, 2))
    again = pickle.loads(pickle.dumps(stack))
    np.testing.assert_array_equal(
        again.extract_patch(0, None, (10, 20), (30, 40))[0], _czi_reference(well, 1, 2)[10:40, 20:60]
    )


def test_czi_missing_level_names_value_path_and_levels(well: Path) -> None:
    with pytest.raises(SourceNotFoundError) as info:
        load_czis(well, "SCYX", levels=[0, 2])
    text = str(info.value)
    assert str(well) in text
    assert (
        "scene 0 has 2 pyramid level(s) (0 to 1, downsample factors 1, 2), not level 2 asked for by levels=[0, 2]"
        in text
    )
    with pytest.raises(SourceNotFoundError, match="not level 4 asked for by the source"):
        load_czis(f"{well}@0#level=4", "SCYX")


def test_real_czis_without_pyramid_layers_are_one_level(shared_czi_dir: Path) -> None:
    plain = [p for p in sorted(shared_czi_dir.glob("*.czi")) if p.name != "WellD6-7_S2.czi"]
    if not plain:
        pytest.skip("no real CZI files")
    for path in plain:
        assert all(z == {1.0} for z in _czi_layers(path).values()), path.name  # layer 0 sub-blocks only
        axes = "SCYX"
        stacks = load_czis(path, axes, levels="all")
        assert stacks, path.name
        assert all(s.level is None for s in stacks), path.name  # no level offered that the file lacks
        with pytest.raises(SourceNotFoundError, match=r"has 1 pyramid level\(s\) \(0 to 0, downsample factors 1\)"):
            load_czis(path, axes, levels=1)


def test_czi_written_by_pylibczirw_has_no_levels(tmp_path: Path) -> None:
    """pylibCZIrw's writer stores no pyramid: such a file is one level, even where zoomed reads would work."""
    path = tmp_path / "plain.czi"
    data = _data((100, 130))
    with _pyczi().create_czi(str(path), exist_ok=True) as w:
        w.write(data=data[..., None], plane={"C": 0})
    (stack,) = load_czis(path, "SCYX", levels="all")
    assert stack.level is None
    np.testing.assert_array_equal(stack.compute()[0, 0], data)


def test_napari_layers_of_tiff_and_czi_levels_are_multiscale(pyramid: Path, well: Path) -> None:
    from lazystack.frontends.napari import layer_data

    layers = layer_data(load(pyramid), "slide")
    assert [kw["name"] for _, kw, _ in layers] == ["slide [a]", "slide [b]"]  # one layer per channel, all levels
    for data, kw, _ in layers:
        assert kw["multiscale"] is True
        assert [tuple(level.shape) for level in data] == [(3, 65, 97), (3, 33, 49), (3, 17, 25)]
    layers = layer_data(load(well), "well")
    assert [(kw["name"], len(data)) for data, kw, _ in layers] == [("well scene 0 (D6)", 2), ("well scene 1 (D7)", 2)]
