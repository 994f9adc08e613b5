"""Samplers and resolution levels: full resolution by default, foreground found on a coarse level or thumbnail.

Pyramids are written by lazystack's own writer and by ome-zarr-py; references are zarr-python's
read of each level's array and numpy slicing of the data written.
"""

from __future__ import annotations

import logging
import pickle
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr
from dask.callbacks import Callback

from lazystack import (
    ChannelIndexError,
    CoarseForegroundSampler,
    ForegroundSampler,
    GridSampler,
    LazyImageStack,
    MaskWeightedSampler,
    PatchError,
    RandomSampler,
    SelectionError,
    Stitcher,
    StratifiedSampler,
    WholeSampleSampler,
    load_zarrs,
    otsu_threshold,
    write_ome_zarr,
)
from lazystack.sampling import read_specs

SHAPE = (1, 64, 96)  # C Y X of level 0


def _image(seed: int) -> np.ndarray:
    """Background ~10, a bright 16 x 24 block at rows 32:48, columns 48:72 (aligned to 4-pixel cells)."""
    rng = np.random.default_rng(seed)
    image = rng.integers(5, 15, SHAPE).astype(np.uint16)
    image[:, 32:48, 48:72] = rng.integers(900, 1000, (1, 16, 24))
    return image


def _write_lazystack(path: Path) -> None:
    write_ome_zarr(LazyImageStack(_image(1), "CYX"), str(path), levels=3)


def _write_ome_zarr_py(path: Path) -> None:
    from ome_zarr.writer import write_image

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        root = zarr.open_group(str(path), mode="w")
        write_image(_image(2), root, axes="cyx", scale_factors=(2, 4), scale={"y": 0.5, "x": 0.5})


@pytest.fixture(scope="module")
def pyramids(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Any], list[np.ndarray]]:
    """Two 3-level images (lazystack, ome-zarr-py) and a plain in-memory stack; level arrays read by zarr."""
    root = tmp_path_factory.mktemp("pyramids")
    _write_lazystack(root / "ls.ome.zarr")
    _write_ome_zarr_py(root / "oz.ome.zarr")
    stacks = load_zarrs(str(root / "ls.ome.zarr"), "CYX") + load_zarrs(str(root / "oz.ome.zarr"), "CYX")
    plain = np.random.default_rng(5).integers(0, 100, (2, 1, 40, 40)).astype(np.uint16)
    stacks = [*stacks, LazyImageStack(plain, "SCYX")]
    arrays = []
    for s in stacks[:6]:
        a = np.asarray(zarr.open_array(s.source, mode="r")[...])
        arrays.append(a[None])  # S C Y X
    arrays.append(plain)
    return stacks, arrays


def _reference(arrays: list[np.ndarray], spec: Any) -> np.ndarray:
    region = tuple(slice(c, c + n) for c, n in zip(spec.coords, spec.patch_size, strict=True))
    return arrays[spec.stack][(spec.sample, slice(None), *region)].astype(np.float32)


# -- 1. full resolution by default ------------------------------------------------------------------------------
def test_the_fixture_holds_two_pyramids(pyramids: tuple[list[Any], list[np.ndarray]]) -> None:
    stacks, arrays = pyramids
    assert [s.level for s in stacks] == [0, 1, 2, 0, 1, 2, None]
    assert [a.shape[2:] for a in arrays[:3]] == [(64, 96), (32, 48), (16, 24)]


def test_random_sampler_draws_full_resolution_only_and_says_so(
    pyramids: tuple[list[Any], list[np.ndarray]], caplog: pytest.LogCaptureFixture
) -> None:
    stacks, arrays = pyramids
    with caplog.at_level(logging.INFO, logger="lazystack.sampling"):
        sampler = RandomSampler(stacks, 32, 300, seed=4)  # 32 does not fit level 2 (16 x 24): not needed
    assert sampler.levels_left_out == (1, 2, 4, 5)
    records = [r for r in caplog.records if r.name == "lazystack.sampling"]
    assert len(records) == 1
    assert "left out" in records[0].getMessage()
    assert "[1, 2, 4, 5]" in records[0].getMessage()
    specs = sampler.epoch_specs(1)
    assert {s.stack for s in specs} == {0, 3, 6}
    for s, patch in zip(specs[:30], read_specs(stacks, specs[:30]), strict=True):
        np.testing.assert_array_equal(patch, _reference(arrays, s))
    # without pyramids nothing is left out, and nothing is logged
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="lazystack.sampling"):
        assert RandomSampler(stacks[6:], 8, 4).levels_left_out == ()
    assert not caplog.records


def test_levels_opt_in(pyramids: tuple[list[Any], list[np.ndarray]]) -> None:
    stacks, arrays = pyramids
    every = RandomSampler(stacks, 8, 2000, seed=1, levels="all")
    assert every.levels_left_out == ()
    assert {s.stack for s in every.epoch_specs()} == set(range(7))
    level_one = RandomSampler(stacks, 8, 200, seed=1, levels=1)
    assert level_one.levels_left_out == (0, 2, 3, 5, 6)  # the plain stack counts as level 0
    specs = level_one.epoch_specs()
    assert {s.stack for s in specs} == {1, 4}
    for s, patch in zip(specs[:20], read_specs(stacks, specs[:20]), strict=True):
        np.testing.assert_array_equal(patch, _reference(arrays, s))
    with pytest.raises(PatchError, match=r"does not fit in stack 2 .*\(16, 24\)"):
        RandomSampler(stacks, 32, 5, levels="all")  # the coarse levels are really sampled now
    with pytest.raises(SelectionError, match="selects none"):
        RandomSampler(stacks, 8, 5, levels=7)
    with pytest.raises(SelectionError, match="invalid level"):
        RandomSampler(stacks, 8, 5, levels=[-1])


def test_grid_tiles_and_stitches_full_resolution_only(pyramids: tuple[list[Any], list[np.ndarray]]) -> None:
    stacks, arrays = pyramids
    grid = GridSampler(stacks, 24, overlap=4)
    assert grid.levels_left_out == (1, 2, 4, 5)
    tiles = [grid.tile(i) for i in range(len(grid))]
    assert {t.spec.stack for t in tiles} == {0, 3, 6}
    stitcher = Stitcher(grid, n_channels=1)
    for i, patch in enumerate(read_specs(stacks, [t.spec for t in tiles])):
        stitcher.add(i, patch)
    assert stitcher.complete
    assert [o is None for o in stitcher.outputs] == [False, True, True, False, True, True, False]
    for k in (0, 3, 6):
        np.testing.assert_array_equal(stitcher.outputs[k], arrays[k].astype(np.float32))
    assert len(GridSampler(stacks, 8, levels="all")) > len(GridSampler(stacks, 8))


def test_whole_sample_stratified_and_mask_samplers_use_full_resolution(
    pyramids: tuple[list[Any], list[np.ndarray]], caplog: pytest.LogCaptureFixture
) -> None:
    stacks, _ = pyramids
    whole = WholeSampleSampler(stacks)
    assert [(s.stack, s.sample) for s in whole] == [(0, 0), (3, 0), (6, 0), (6, 1)]
    assert len(WholeSampleSampler(stacks, levels="all")) == 8
    with pytest.raises(SelectionError, match=r"region 1 names stack 1 .*level 1.*levels='all'"):
        StratifiedSampler(stacks, [(0, 0, (0, 0), (16, 16)), (1, 0, (0, 0), (16, 16))], 8, 10)
    ok = StratifiedSampler(stacks, [(1, 0, (0, 0), (16, 16))], 8, 10, levels="all")
    assert {s.stack for s in ok.epoch_specs()} == {1}
    masks = [LazyImageStack((np.asarray(s.data) > 500).astype(np.uint8), "SCYX") for s in stacks]
    with caplog.at_level(logging.INFO, logger="lazystack.sampling"):
        weighted = MaskWeightedSampler(stacks, masks, 8, 200, cell=4, seed=2)
    assert [r.getMessage().split(" ")[0] for r in caplog.records] == ["MaskWeightedSampler"]
    assert weighted.levels_left_out == (1, 2, 4, 5)
    assert {s.stack for s in weighted.epoch_specs()} == {0, 3}  # the plain stack has no pixel > 500
    rejecting = ForegroundSampler(stacks, masks, 8, 50, min_foreground=0.5, seed=2)
    assert {s.stack for s in rejecting.epoch_specs()} <= {0, 3, 6}


# -- 2. foreground from a coarse level or a thumbnail -------------------------------------------------------------
def _foreground_box(spec: Any, lo: tuple[int, int], hi: tuple[int, int]) -> bool:
    """Whether the patch overlaps the box [lo, hi)."""
    return all(c < b and c + n > a for c, n, a, b in zip(spec.coords, spec.patch_size, lo, hi, strict=True))


def test_coarse_level_foreground_maps_cells_through_the_scale(pyramids: tuple[list[Any], list[np.ndarray]]) -> None:
    stacks, arrays = pyramids
    sampler = CoarseForegroundSampler(stacks[:6], 8, 400, threshold=400, seed=3)
    assert sampler.coarse_source == ["level 2", None, None, "level 2", None, None]
    # level 2 (16 x 24) of a 64 x 96 image: the block at rows 32:48, columns 48:72 is coarse cells 8:12, 12:18
    for k in (0, 3):
        fg = sampler.foreground[k]
        assert fg is not None
        expected = np.zeros((1, 16, 24), bool)
        expected[0, 8:12, 12:18] = True
        np.testing.assert_array_equal(fg, expected)
    assert sampler.foreground_fraction() == [pytest.approx(16 * 24 / (64 * 96)), None, None] * 2
    specs = sampler.epoch_specs(2)
    assert {s.stack for s in specs} == {0, 3}
    for s in specs:
        # the patch is centred on a foreground pixel: its centre lies in the full-resolution block
        centre = [c + n // 2 for c, n in zip(s.coords, s.patch_size, strict=True)]
        assert 32 <= centre[0] < 48
        assert 48 <= centre[1] < 72
        patch = _reference(arrays, s)
        assert patch.max() >= 900
    centres = {tuple(c + 4 for c in s.coords) for s in specs}
    assert min(c[0] for c in centres) == 32  # the whole block is reached, not a shifted one
    assert max(c[0] for c in centres) == 47
    level_one = CoarseForegroundSampler(stacks[:6], 8, 50, threshold=400, level=1, seed=3)
    assert level_one.coarse_source[0] == "level 1"
    fg1 = level_one.foreground[0]
    assert fg1 is not None
    assert fg1.shape == (1, 32, 48)
    assert fg1.sum() == 8 * 12


def _write_ngff_zarr(path: Path) -> None:
    import ngff_zarr as nz

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        image = nz.to_ngff_image(_image(3), dims=["c", "y", "x"], scale={"y": 0.5, "x": 0.5})
        pyramid = nz.to_multiscales(image, scale_factors=[2, 4], chunks=32, method=nz.Methods.ITKWASM_BIN_SHRINK)
        nz.to_ngff_zarr(str(path), pyramid, version="0.5")


def _write_without_translation(path: Path) -> None:
    """NGFF 0.5 written by hand: levels 0 and 1 (block means of 4 x 4), scales only (corner-aligned)."""
    image = _image(4)
    coarse = image.reshape(1, 16, 4, 24, 4).mean(axis=(2, 4)).astype(np.uint16)
    root = zarr.open_group(str(path), mode="w", zarr_format=3)
    axes = [{"name": "c", "type": "channel"}, {"name": "y", "type": "space"}, {"name": "x", "type": "space"}]
    datasets = [
        {"path": str(i), "coordinateTransformations": [{"type": "scale", "scale": [1.0, f, f]}]}
        for i, f in enumerate((0.25, 1.0))
    ]
    root.attrs["ome"] = {"version": "0.5", "multiscales": [{"axes": axes, "datasets": datasets}]}
    for i, level in enumerate((image, coarse)):
        root.create_array(str(i), shape=level.shape, dtype=level.dtype, chunks=level.shape)[...] = level


WRITERS = {
    "lazystack": _write_lazystack,
    "ome-zarr-py": _write_ome_zarr_py,
    "ngff-zarr": _write_ngff_zarr,
    "no-translation": _write_without_translation,
}


@pytest.mark.parametrize("writer", sorted(WRITERS))
def test_coarse_cells_land_on_the_full_resolution_block(writer: str, tmp_path: Path) -> None:
    """Every writer's pyramid: patches are centred on the block, and on all of it (no shifted cells)."""
    path = tmp_path / "image.ome.zarr"
    WRITERS[writer](path)
    stacks = load_zarrs(str(path), "CYX")
    level0 = np.asarray(zarr.open_array(stacks[0].source, mode="r")[...])
    assert level0.shape == SHAPE
    sampler = CoarseForegroundSampler(stacks, 8, 1500, threshold=400, seed=2)
    assert sampler.coarse_source[0] == f"level {len(stacks) - 1}"
    centres = np.array([[c + 4 for c in s.coords] for s in sampler.epoch_specs(0)])
    assert {s.stack for s in sampler.epoch_specs(0)} == {0}
    assert (level0[0][centres[:, 0], centres[:, 1]] >= 900).all()  # every centre on the bright block
    assert centres.min(axis=0).tolist() == [32, 48]  # ... and its first and last rows and columns reached
    assert centres.max(axis=0).tolist() == [47, 71]


def test_thumbnail_when_no_coarse_level() -> None:
    image = np.full((2, 1, 50, 70), 10, np.uint16)
    image[0, 0, 8:16, 40:56] = 1000  # sample 0 only
    image[1, 0, 44:50, 0:4] = 1000  # sample 1, in the edge cells of a 50 x 70 image (padded to 56 x 72)
    stack = LazyImageStack(image, "SCYX")
    sampler = CoarseForegroundSampler([stack], 6, 600, factor=8, threshold=200, seed=1)
    assert sampler.coarse_source == ["thumbnail 8x8"]
    fg = sampler.foreground[0]
    assert fg is not None
    # reference: numpy block means over the image padded with its edge values to 56 x 72
    padded = np.pad(image[:, 0].astype(np.float64), [(0, 0), (0, 6), (0, 2)], mode="edge")
    means = padded.reshape(2, 7, 8, 9, 8).mean(axis=(2, 4))
    np.testing.assert_array_equal(fg, means > 200)
    assert fg.sum() == 4  # two cells in sample 0, the two edge cells in sample 1
    specs = sampler.epoch_specs(0)
    assert {s.sample for s in specs} == {0, 1}
    for s in specs:
        centre = [c + 3 for c in s.coords]
        assert 0 <= s.coords[0] <= 44
        assert 0 <= s.coords[1] <= 64
        assert fg[(s.sample, centre[0] // 8, centre[1] // 8)]  # centred in a foreground cell
        if s.sample == 0:  # its foreground cells are foreground throughout
            assert image[0, 0, centre[0], centre[1]] == 1000


class _CountingArray:
    """An array-like counting the reads a stack makes of it."""

    def __init__(self, array: np.ndarray) -> None:
        self.array = array
        self.shape, self.dtype, self.ndim = array.shape, array.dtype, array.ndim
        self.reads = 0

    def __getitem__(self, key: Any) -> np.ndarray:
        self.reads += 1
        return self.array[key]


def test_thumbnail_is_computed_once_and_specs_read_nothing() -> None:
    image = np.full((64, 64), 10, np.float32)
    image[16:32, 40:56] = 500
    source = _CountingArray(image)
    stack = LazyImageStack(source, "YX")
    computes = []
    with Callback(start=lambda dsk: computes.append(len(dsk))):
        sampler = CoarseForegroundSampler([stack, stack], 8, 100, factor=4, seed=9)  # the same stack twice
    assert len(computes) == 1  # one dask computation for every coarse view
    assert len(sampler.thumbnails) == 1  # keyed by the stack's token: reduced once
    assert next(iter(sampler.thumbnails)).startswith(stack.token)
    reads = source.reads
    assert reads >= 1
    with Callback(start=lambda dsk: computes.append(len(dsk))):
        first = sampler.epoch_specs(0) + sampler.epoch_specs(1)
        copy = pickle.loads(pickle.dumps(sampler))
        again = copy.epoch_specs(0) + copy.epoch_specs(1)
    assert first == again
    assert len(computes) == 1
    assert source.reads == reads  # drawing specs never reads the image
    for s in first:
        assert _foreground_box(s, (16, 40), (32, 56))


def test_coarse_foreground_is_a_pure_function_and_validates() -> None:
    image = np.zeros((40, 40), np.uint8)
    image[0:8, 0:8] = 200
    stack = LazyImageStack(image, "YX")
    a = CoarseForegroundSampler([stack], 4, 30, factor=4, seed=2)
    assert [a.spec(i, 5) for i in reversed(range(30))] == a.epoch_specs(5)[::-1]
    assert a.epoch_specs(5) != a.epoch_specs(6)
    by_rule = CoarseForegroundSampler([stack], 4, 30, factor=4, seed=2, threshold=lambda v: v > 100)
    assert by_rule.epoch_specs(5) == a.epoch_specs(5)
    with pytest.raises(ValueError, match="no foreground"):
        CoarseForegroundSampler([LazyImageStack(np.zeros((40, 40), np.uint8), "YX")], 4, 3)
    with pytest.raises(ValueError, match="threshold must be"):
        CoarseForegroundSampler([stack], 4, 3, threshold="mean")
    with pytest.raises(PatchError, match="factor"):
        CoarseForegroundSampler([stack], 4, 3, factor=0)
    with pytest.raises(ChannelIndexError, match=r"channel 1 is out of range.*accepted are 0 to 0"):
        CoarseForegroundSampler([stack], 4, 3, channel=1)
    with pytest.raises(PatchError, match="does not fit"):
        CoarseForegroundSampler([stack], 41, 3)


def test_otsu_threshold_matches_scikit_image() -> None:
    filters = pytest.importorskip("skimage.filters")
    rng = np.random.default_rng(0)
    for values in (
        np.concatenate([rng.normal(10, 1, 5000), rng.normal(100, 5, 500)]),
        rng.integers(0, 4000, (30, 40)).astype(np.float32),
        np.array([1.0, 1.0, 2.0, 9.0, 10.0, 10.0]),
    ):
        assert otsu_threshold(values) == pytest.approx(filters.threshold_otsu(values), rel=1e-6)
    assert otsu_threshold(np.full(10, 3.0)) == 3.0


@pytest.mark.filterwarnings("ignore:This DataLoader will create:UserWarning")
def test_coarse_foreground_epochs_equal_with_0_and_2_workers(pyramids: tuple[list[Any], list[np.ndarray]]) -> None:
    torch = pytest.importorskip("torch")
    from torch.utils.data import DataLoader

    from lazystack.torch import EpochSampler, PatchDataset

    stacks, arrays = pyramids
    sampler = CoarseForegroundSampler(stacks, 16, 24, threshold=400, seed=11)
    dataset = PatchDataset(stacks, sampler, return_spec=True)

    def epoch(workers: int) -> tuple[list[tuple[int, ...]], Any]:
        epochs = EpochSampler(dataset)
        epochs.set_epoch(1)
        loader = DataLoader(
            dataset,
            batch_size=5,
            sampler=epochs,
            num_workers=workers,
            multiprocessing_context="fork" if workers else None,
        )
        specs, patches = [], []
        for batch in loader:
            specs += [tuple(int(v) for v in row) for row in batch["spec"]]
            patches.append(batch["input"])
        return specs, torch.cat(patches)

    specs0, patches0 = epoch(0)
    specs2, patches2 = epoch(2)
    assert specs0 == specs2
    assert torch.equal(patches0, patches2)
    expected = [sampler.spec(i, 1) for i in range(24)]
    assert specs0 == [(s.stack, s.sample, *s.coords, *s.patch_size) for s in expected]
    for s, patch in zip(expected, patches0, strict=True):
        np.testing.assert_array_equal(patch.numpy(), _reference(arrays, s))


# -- review regressions -------------------------------------------------------------------------------------------
def test_view_of_a_level_is_judged_on_its_own_thumbnail(tmp_path: Path) -> None:
    """A crop (isel) of level 0 is not pixel-aligned with levels 1, 2: its patches sit on its own bright block."""
    _write_lazystack(tmp_path / "image.ome.zarr")
    stacks = load_zarrs(str(tmp_path / "image.ome.zarr"), "CYX")
    image = np.asarray(zarr.open_array(stacks[0].source, mode="r")[...])
    crop = stacks[0].isel(Y=slice(16, 64), X=slice(8, 96))
    sampler = CoarseForegroundSampler([crop, *stacks[1:]], 8, 1000, threshold=400, factor=4, seed=0)
    assert sampler.coarse_source == ["thumbnail 4x4", None, None]
    centres = np.array([[c + 4 for c in s.coords] for s in sampler.epoch_specs(0)])
    # the block at rows 32:48, columns 48:72 of level 0 is at rows 16:32, columns 40:64 of the crop
    assert (image[0, 16:, 8:][centres[:, 0], centres[:, 1]] >= 900).all()
    assert centres.min(axis=0).tolist() == [16, 40]
    assert centres.max(axis=0).tolist() == [31, 63]


def test_odd_sized_pyramid_every_full_resolution_pixel_is_in_a_cell(tmp_path: Path) -> None:
    """Level 0 of 65 x 97 over levels of 32 x 48 and 16 x 24: the last row and column are still drawn."""
    data = np.random.default_rng(3).integers(0, 1000, (1, 65, 97)).astype(np.uint16)
    write_ome_zarr(LazyImageStack(data, "CYX"), str(tmp_path / "odd.ome.zarr"), levels=3)
    stacks = load_zarrs(str(tmp_path / "odd.ome.zarr"), "CYX")
    assert [tuple(s.data_shape[2:]) for s in stacks] == [(65, 97), (32, 48), (16, 24)]
    sampler = CoarseForegroundSampler(stacks, 1, 4000, threshold=-1, seed=1)  # everything is foreground
    assert sampler.coarse_source[0] == "level 2"
    assert sampler.foreground_fraction()[0] == 1.0
    coords = np.array([s.coords for s in sampler.epoch_specs(0)])
    assert (coords[:, 0] == 64).any()
    assert (coords[:, 1] == 96).any()


def test_constant_image_with_otsu_says_why_nothing_is_foreground() -> None:
    stack = LazyImageStack(np.full((40, 40), 200, np.uint8), "YX")
    with pytest.raises(ValueError, match=r"stack\(s\) \[0\] is constant.*pass threshold=<a number>"):
        CoarseForegroundSampler([stack], 8, 5)
    everything = CoarseForegroundSampler([stack], 8, 500, threshold=100, factor=4, seed=0)
    assert everything.foreground_fraction() == [1.0]
    coords = np.array([s.coords for s in everything.epoch_specs(0)])
    assert coords.min(axis=0).tolist() == [0, 0]  # all foreground: every position is reached
    assert coords.max(axis=0).tolist() == [32, 32]


def test_numpy_numbers_as_threshold_and_level(pyramids: tuple[list[Any], list[np.ndarray]]) -> None:
    """A threshold computed with numpy (np.float32, np.int64) and a numpy level are numbers like any other."""
    stacks, _ = pyramids
    reference = CoarseForegroundSampler(stacks[:3], 8, 50, threshold=400, level=1, seed=3)
    for threshold in (np.float32(400), np.int64(400), np.uint16(400)):
        same = CoarseForegroundSampler(stacks[:3], 8, 50, threshold=threshold, level=np.int64(1), seed=3)
        assert same.coarse_source == reference.coarse_source == ["level 1", None, None]
        assert same.epoch_specs(0) == reference.epoch_specs(0)
    for bad in (float("nan"), True, "mean", [400]):
        with pytest.raises(ValueError, match=r"threshold must be a number \(not NaN\), 'otsu' or a function"):
            CoarseForegroundSampler(stacks[:3], 8, 5, threshold=bad)  # type: ignore[arg-type]


def test_coarse_foreground_specs_equal_in_a_fresh_process(
    pyramids: tuple[list[Any], list[np.ndarray]], tmp_path: Path
) -> None:
    """A pickled sampler gives the same specs in another interpreter (another hash seed, nothing shared)."""
    import json
    import os
    import subprocess
    import sys

    import lazystack

    stacks, _ = pyramids
    sampler = CoarseForegroundSampler(stacks, 8, 40, threshold=400, seed=5)
    blob = tmp_path / "sampler.pkl"
    blob.write_bytes(pickle.dumps(sampler))
    code = (
        "import json, pickle, sys; s = pickle.load(open(sys.argv[1], 'rb')); "
        "print(json.dumps([[x.stack, x.sample, *x.coords] for x in s.epoch_specs(2)]))"
    )
    root = str(Path(lazystack.__file__).parent.parent)
    env = {**os.environ, "PYTHONPATH": root, "PYTHONHASHSEED": "12345"}
    out = subprocess.run([sys.executable, "-c", code, str(blob)], env=env, capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == [[x.stack, x.sample, *x.coords] for x in sampler.epoch_specs(2)]


def test_non_integer_seed_length_index_and_channel_are_named() -> None:
    stack = LazyImageStack(np.arange(1600, dtype=np.float32).reshape(40, 40), "YX")
    with pytest.raises(TypeError, match=r"seed must be an integer, got 1.5 \(float\)"):
        RandomSampler([stack], 8, 4, seed=1.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"length must be an integer, got 2.5"):
        RandomSampler([stack], 8, 2.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"channel must be an integer, got 0.5"):
        CoarseForegroundSampler([stack], 8, 4, channel=0.5)  # type: ignore[arg-type]
    sampler = RandomSampler([stack], 8, 4)
    with pytest.raises(TypeError, match=r"index must be an integer, got 1.5"):
        sampler.spec(1.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"epoch must be an integer, got '1'"):
        sampler.spec(0, "1")  # type: ignore[arg-type]
    with pytest.raises(IndexError, match=r"index 4 is out of range .* 4 specs per epoch: accepted 0 to 3"):
        sampler.spec(4)


# -- a bound on the coarse view -----------------------------------------------------------------------------------
def _big_two_level_pyramid(path: Path) -> np.ndarray:
    """Level 0 of 512 x 768 (background ~10, a bright block at rows 100:200, columns 300:500) and level 1."""
    rng = np.random.default_rng(7)
    image = rng.integers(5, 15, (1, 512, 768)).astype(np.uint16)
    image[:, 100:200, 300:500] = rng.integers(900, 1000, (1, 100, 200))
    write_ome_zarr(LazyImageStack(image, "CYX"), str(path), levels=2)
    return image


def test_a_coarse_level_above_max_pixels_is_averaged_further_in_one_compute(tmp_path: Path) -> None:
    image = _big_two_level_pyramid(tmp_path / "big.ome.zarr")
    stacks = load_zarrs(str(tmp_path / "big.ome.zarr"), "CYX")
    level1 = np.asarray(zarr.open_array(stacks[1].source, mode="r")[...]).astype(np.float64)
    assert level1.shape == (1, 256, 384)  # 98304 pixels: above the bound of 4096
    computes = []
    with Callback(start=lambda dsk: computes.append(len(dsk))):
        sampler = CoarseForegroundSampler(stacks, 8, 3000, threshold=400, seed=4, max_pixels=4096)
    assert len(computes) == 1
    # 5 x 5 blocks is the least that fits: 52 x 77 = 4004 <= 4096 (4 x 4 gives 64 x 96 = 6144)
    assert sampler.coarse_source == ["level 1, mean over 5x5", None]
    fg = sampler.foreground[0]
    assert fg is not None
    assert fg.shape == (1, 52, 77)
    assert fg.size <= 4096
    assert all(v.size <= 4096 and v.nbytes <= 4 * 4096 for v in sampler.thumbnails.values())
    # reference: numpy block means of level 1 (read by zarr) padded with its edge values to 260 x 385
    padded = np.pad(level1[0], [(0, 4), (0, 1)], mode="edge")
    np.testing.assert_array_equal(fg[0], padded.reshape(52, 5, 77, 5).mean(axis=(1, 3)) > 400)
    # the block at full resolution is level 1 rows 50:100, columns 150:250: reduced cells 10:20, 30:50
    assert fg.sum() == 10 * 20
    centres = np.array([[c + 4 for c in s.coords] for s in sampler.epoch_specs(0)])
    assert (image[0][centres[:, 0], centres[:, 1]] >= 900).all()  # every centre on the bright block
    assert centres.min(axis=0).tolist() == [100, 300]  # ... and all of it: the mapping is exact
    assert centres.max(axis=0).tolist() == [199, 499]
    # what a DataLoader worker receives is bounded by max_pixels, unlike the full level 1
    small = len(pickle.dumps(sampler))
    full = len(pickle.dumps(CoarseForegroundSampler(stacks, 8, 3000, threshold=400, seed=4)))
    assert small <= 21 * 4096 + 32_768
    assert full > 4 * level1.size > 3 * small


def test_a_thumbnail_above_max_pixels_is_averaged_over_bigger_blocks() -> None:
    image = np.full((2, 300, 400), 10, np.uint16)
    image[0, 32:96, 64:128] = 1000
    image[1, 288:300, 384:400] = 1000  # in the edge cells (the image is padded to 304 x 400)
    stack = LazyImageStack(image, "SYX")
    computes = []
    with Callback(start=lambda dsk: computes.append(len(dsk))):
        sampler = CoarseForegroundSampler([stack], 8, 2000, factor=4, threshold=200, seed=2, max_pixels=1000)
    assert len(computes) == 1
    # 2 x 75 x 100 cells of 4 x 4 are above 1000; blocks of 16 x 16 give 2 x 19 x 25 = 950
    assert sampler.coarse_source == ["thumbnail 16x16"]
    fg = sampler.foreground[0]
    assert fg is not None
    assert fg.size <= 1000
    padded = np.pad(image.astype(np.float64), [(0, 0), (0, 4), (0, 0)], mode="edge")
    np.testing.assert_array_equal(fg, padded.reshape(2, 19, 16, 25, 16).mean(axis=(2, 4)) > 200)
    for s in sampler.epoch_specs(0):
        centre = [c + 4 for c in s.coords]
        assert fg[(s.sample, centre[0] // 16, centre[1] // 16)]  # centred in a foreground cell
        if s.sample == 0:
            assert image[0, centre[0], centre[1]] == 1000


def test_odd_sized_pyramid_above_max_pixels_still_covers_every_pixel(tmp_path: Path) -> None:
    """Level 2 (16 x 24) of a 65 x 97 image merged in 3 x 3 blocks (6 x 8): every row and column is drawn."""
    data = np.random.default_rng(3).integers(0, 1000, (1, 65, 97)).astype(np.uint16)
    write_ome_zarr(LazyImageStack(data, "CYX"), str(tmp_path / "odd.ome.zarr"), levels=3)
    stacks = load_zarrs(str(tmp_path / "odd.ome.zarr"), "CYX")
    sampler = CoarseForegroundSampler(stacks, 1, 8000, threshold=-1, seed=1, max_pixels=50)
    assert sampler.coarse_source[0] == "level 2, mean over 3x3"
    fg = sampler.foreground[0]
    assert fg is not None
    assert fg.shape == (1, 6, 8)
    assert sampler.foreground_fraction()[0] == 1.0
    coords = np.array([s.coords for s in sampler.epoch_specs(0)])
    assert set(coords[:, 0].tolist()) == set(range(65))
    assert set(coords[:, 1].tolist()) == set(range(97))


def test_coarse_views_within_max_pixels_are_used_as_they_are(pyramids: tuple[list[Any], list[np.ndarray]]) -> None:
    stacks, _ = pyramids
    default = CoarseForegroundSampler(stacks[:3], 8, 200, threshold=400, seed=3)
    at_bound = CoarseForegroundSampler(stacks[:3], 8, 200, threshold=400, seed=3, max_pixels=np.int64(16 * 24))
    assert default.coarse_source == at_bound.coarse_source == ["level 2", None, None]
    assert at_bound.epoch_specs(0) == default.epoch_specs(0)
    below = CoarseForegroundSampler(stacks[:3], 8, 200, threshold=400, seed=3, max_pixels=16 * 24 - 1)
    assert below.coarse_source[0] == "level 2, mean over 2x2"


def test_bad_max_pixels_is_named() -> None:
    stack = LazyImageStack(np.arange(3 * 40 * 40, dtype=np.float32).reshape(3, 40, 40), "SYX")
    for bad in (0, -5):
        with pytest.raises(ValueError, match=rf"max_pixels must be an integer >= 1 .*got {bad}"):
            CoarseForegroundSampler([stack], 8, 4, max_pixels=bad)
    for wrong in (1.5, "big", True, None):
        with pytest.raises(TypeError, match=r"max_pixels must be an integer"):
            CoarseForegroundSampler([stack], 8, 4, max_pixels=wrong)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"stack 0 has 3 samples.*max_pixels=2.*pass max_pixels >= 3"):
        CoarseForegroundSampler([stack], 8, 4, max_pixels=2)
    assert CoarseForegroundSampler([stack], 8, 4, max_pixels=3).foreground[0].shape == (3, 1, 1)  # type: ignore[union-attr]
