"""lazystack.sampling: pure samplers, grid coverage and stitching, manifests, pairs.

References are numpy slicing of the arrays the stacks were made from.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr

from lazystack import ChannelIndexError, LazyImageStack, PatchError, ShapeMismatchError, load_tiffs, load_zarrs
from lazystack.sampling import (
    FixedSampler,
    ForegroundSampler,
    GridSampler,
    ManifestMismatchError,
    MaskWeightedSampler,
    PatchSpec,
    RandomSampler,
    Stitcher,
    StratifiedSampler,
    WholeSampleSampler,
    check_pairs,
    read_manifest,
    read_specs,
    tile_starts,
    write_manifest,
)


def _arrays() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return (
        rng.integers(0, 60000, (3, 2, 37, 45), dtype=np.uint16),  # SCYX
        rng.integers(0, 60000, (1, 2, 70, 23), dtype=np.uint16),
    )


def _stacks() -> list[LazyImageStack]:
    return [LazyImageStack(a, "SCYX") for a in _arrays()]


def _reference(arrays: list[np.ndarray], spec: PatchSpec) -> np.ndarray:
    a = arrays[spec.stack][spec.sample]
    if spec.channels is not None:
        a = a[list(spec.channels)]
    region = tuple(slice(c, c + n) for c, n in zip(spec.coords, spec.patch_size, strict=True))
    return a[(slice(None), *region)].astype(np.float32)


# -- random ---------------------------------------------------------------------
def test_random_is_a_pure_function_of_seed_epoch_index() -> None:
    stacks = _stacks()
    a = RandomSampler(stacks, (8, 8), 50, seed=7)
    b = pickle.loads(pickle.dumps(RandomSampler(stacks, 8, 50, seed=7)))
    whole = a.epoch_specs(3)
    # any share, in any order, by another object: the same specs
    assert [b.spec(i, 3) for i in reversed(range(50))] == whole[::-1]
    assert a.epoch_specs(3, indices=range(1, 50, 2)) == whole[1::2]
    assert a.epoch_specs(4) != whole
    assert RandomSampler(stacks, 8, 50, seed=8).epoch_specs(3) != whole


def test_random_stays_within_valid_positions_and_reaches_the_edges() -> None:
    stacks = _stacks()
    sampler = RandomSampler(stacks, (9, 20), 3000, seed=1, weights="positions")
    specs = sampler.epoch_specs()
    hit_max = set()
    for s in specs:
        shape = stacks[s.stack].data_shape
        assert 0 <= s.sample < shape[0]
        for c, n, extent in zip(s.coords, s.patch_size, shape[2:], strict=True):
            assert 0 <= c <= extent - n
        hit_max.update(
            (s.stack, d) for d, (c, n, e) in enumerate(zip(s.coords, (9, 20), shape[2:], strict=True)) if c == e - n
        )
    assert {(0, 0), (0, 1), (1, 0), (1, 1)} <= hit_max  # the last valid corner is drawn
    arrays = list(_arrays())
    patches = read_specs(stacks, specs[:40])
    for s, p in zip(specs[:40], patches, strict=True):
        np.testing.assert_array_equal(p, _reference(arrays, s))


def test_random_weights() -> None:
    stacks = _stacks()
    only_second = RandomSampler(stacks, 8, 200, weights=[0, 1]).epoch_specs()
    assert {s.stack for s in only_second} == {1}
    only_first = RandomSampler(stacks, 8, 200, weights=[1, 0]).epoch_specs()
    assert {s.stack for s in only_first} == {0}
    by_size = RandomSampler(stacks, 8, 4000, seed=2).epoch_specs()
    share = sum(s.stack == 0 for s in by_size) / 4000
    expected = 3 * 37 * 45 / (3 * 37 * 45 + 70 * 23)
    assert abs(share - expected) < 0.05
    with pytest.raises(ValueError, match="one per stack"):
        RandomSampler(stacks, 8, 10, weights=[1])
    with pytest.raises(ValueError, match="positive weight"):
        RandomSampler(stacks, 8, 10, weights=[0, 0])


def test_random_rejects_a_patch_larger_than_a_stack_and_bad_channels() -> None:
    stacks = _stacks()
    with pytest.raises(PatchError, match=r"does not fit in stack 1 .*\(70, 23\)"):
        RandomSampler(stacks, (8, 30), 5)
    with pytest.raises(ChannelIndexError, match="channel 2 is out of range for stack 0"):
        RandomSampler(stacks, 8, 5, channels=[2])
    odd = [stacks[0], LazyImageStack(np.zeros((1, 3, 20, 20), np.uint8), "SCYX")]
    with pytest.raises(ChannelIndexError, match="different channel counts"):
        RandomSampler(odd, 8, 5)
    specs = RandomSampler(odd, 8, 5, channels=[1]).epoch_specs()
    assert all(s.channels == (1,) for s in specs)


def _chi2_outside(counts: np.ndarray, expected: np.ndarray, z: float = 5.0) -> str | None:
    """A chi-square goodness-of-fit check: None, or why the counts are too far from (or too close to) ``expected``.

    Both tails at ``z`` standard deviations (Wilson-Hilferty's normal approximation of the chi-square
    quantiles): a biased generator lands above, a low-discrepancy (non-random) one below.
    """
    counts, expected = counts.ravel(), expected.ravel()
    keep = expected > 0
    assert counts[~keep].sum() == 0, "counts where none can be"
    stat = float((((counts - expected) ** 2)[keep] / expected[keep]).sum())
    df = int(keep.sum()) - 1
    if df < 1:  # one cell: nothing to test
        return None if stat == 0 else f"chi-square {stat:.1f} with a single cell"
    lo, hi = (df * (1 - 2 / (9 * df) + sign * z * (2 / (9 * df)) ** 0.5) ** 3 for sign in (-1, 1))
    return None if lo <= stat <= hi else f"chi-square {stat:.1f} with {df} dof outside [{lo:.1f}, {hi:.1f}]"


def _uniformity_failures(sampler: RandomSampler, stacks: list[LazyImageStack], n: int) -> list[str]:
    """Chi-square checks of an epoch against the documented distribution; the failures, named."""
    specs = sampler.epoch_specs(5)
    out = []
    k = np.array([s.stack for s in specs])
    sizes = np.array([s.n_samples * np.prod(s.data_shape[2:]) for s in stacks], float)
    check = {"stacks by size": (np.bincount(k, minlength=len(stacks)), n * sizes / sizes.sum())}
    for j, st in enumerate(stacks):
        mine = [s for s in specs if s.stack == j]
        extents = [e - p + 1 for e, p in zip(st.data_shape[2:], sampler.patch_size, strict=True)]
        c = np.array([s.coords for s in mine])
        samples = np.bincount([s.sample for s in mine], minlength=st.n_samples)
        check[f"stack {j} samples"] = (samples, np.full(st.n_samples, len(mine) / st.n_samples))
        for d, e in enumerate(extents):
            check[f"stack {j} corner dim {d}"] = (np.bincount(c[:, d], minlength=e), np.full(e, len(mine) / e))
        # the dims jointly (a draw must not depend on another draw of the index), 8 x 8 bins of equal width
        ey, ex = extents
        joint = np.histogram2d(c[:, 0], c[:, 1], bins=8, range=[[0, ey], [0, ex]])[0]
        py = np.histogram(np.arange(ey), bins=8, range=(0, ey))[0] / ey
        px = np.histogram(np.arange(ex), bins=8, range=(0, ex))[0] / ex
        check[f"stack {j} corner dims jointly"] = (joint, len(mine) * np.outer(py, px))
    # neighbouring indices and epochs independent: 10 x 10 bins of the first draw's stand-in (corner y / extent)
    frac = np.array([s.coords[0] / (stacks[s.stack].data_shape[2] - sampler.patch_size[0] + 1) for s in specs], float)
    bins = np.minimum((frac * 10).astype(int), 9)
    pairs = np.zeros((10, 10))
    np.add.at(pairs, (bins[:-1], bins[1:]), 1)
    marg = np.bincount(bins, minlength=10) / n
    check["index i against i + 1"] = (pairs, (n - 1) * np.outer(marg, marg))
    other = sampler.epoch_specs(6)
    frac6 = np.array([s.coords[0] / (stacks[s.stack].data_shape[2] - sampler.patch_size[0] + 1) for s in other])
    same_stack = k == np.array([s.stack for s in other])
    b6 = np.minimum((frac6 * 10).astype(int), 9)
    across = np.zeros((10, 10))
    np.add.at(across, (bins[same_stack], b6[same_stack]), 1)
    m5 = np.bincount(bins[same_stack], minlength=10) / same_stack.sum()
    m6 = np.bincount(b6[same_stack], minlength=10) / same_stack.sum()
    check["epoch 5 against epoch 6"] = (across, same_stack.sum() * np.outer(m5, m6))
    for name, (counts, expected) in check.items():
        why = _chi2_outside(np.asarray(counts, float), np.asarray(expected, float))
        if why:
            out.append(f"{name}: {why}")
    return out


def test_random_specs_pass_chi_square_uniformity_and_a_bad_hash_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    """Stacks by size, samples and corners uniform, draws and neighbouring indices / epochs independent."""
    from lazystack.sampling import samplers

    stacks = [
        LazyImageStack(np.zeros((3, 1, 40, 57), np.uint8), "SCYX"),
        LazyImageStack(np.zeros((1, 1, 70, 23), np.uint8), "SCYX"),
        LazyImageStack(np.zeros((5, 1, 19, 30), np.uint8), "SCYX"),
    ]
    n = 120_000
    sampler = RandomSampler(stacks, (8, 8), n, seed=12345)
    assert _uniformity_failures(sampler, stacks, n) == []
    # the checks can fail: without the splitmix64 finaliser, the counters alone are far too regular
    monkeypatch.setattr(samplers, "_mix", lambda z: z)
    assert _uniformity_failures(RandomSampler(stacks, (8, 8), n, seed=12345), stacks, n)


def test_random_batch_and_single_index_specs_agree_and_reject_bad_indices() -> None:
    stacks = _stacks()
    for weights in ("size", [0, 1], [1, 0]):
        sampler = RandomSampler(stacks, (5, 7), 300, seed=2**70 + 3, weights=weights)  # a seed beyond 64 bits
        whole = sampler.epoch_specs(2)
        assert [sampler.spec(i, 2) for i in range(300)] == whole
        assert sampler.epoch_specs(2, np.array([299, 0, 299])) == [whole[299], whole[0], whole[299]]
    with pytest.raises(IndexError, match="index 300 is out of range"):
        sampler.epoch_specs(0, [0, 300])
    with pytest.raises(IndexError, match="index -1 is out of range"):
        sampler.epoch_specs(0, [-1])
    with pytest.raises(TypeError, match=r"index must be an integer, got 1\.5"):
        sampler.epoch_specs(0, [1.5])
    with pytest.raises(ValueError, match="epoch must be a non-negative"):
        sampler.epoch_specs(-1, [0])
    assert sampler.epoch_specs(0, []) == []


# -- stratified, whole, fixed ------------------------------------------------------
def test_stratified_draws_from_every_region_inside_it() -> None:
    stacks = _stacks()
    regions = [(0, 0, (0, 0), (10, 10)), (0, 2, (20, 30), (37, 45)), (1, 0, (50, 0), (70, 23))]
    specs = StratifiedSampler(stacks, regions, 8, 30, seed=4).epoch_specs(1)
    for i, s in enumerate(specs):
        k, sample, lo, hi = regions[i % 3]
        assert (s.stack, s.sample) == (k, sample)
        assert all(a <= c and c + 8 <= b for a, b, c in zip(lo, hi, s.coords, strict=True))
    with pytest.raises(PatchError, match="region 0"):
        StratifiedSampler(stacks, [(0, 0, (0, 0), (5, 5))], 8, 3)


def test_whole_sample_sampler_reads_every_sample() -> None:
    stacks, arrays = _stacks(), _arrays()
    sampler = WholeSampleSampler(stacks)
    assert len(sampler) == 4
    for spec, patch in zip(sampler.epoch_specs(), read_specs(stacks, sampler.epoch_specs()), strict=True):
        np.testing.assert_array_equal(patch, arrays[spec.stack][spec.sample].astype(np.float32))


def test_fixed_sampler_and_index_range() -> None:
    specs = [PatchSpec(0, 1, None, (2, 3), (4, 4)), PatchSpec(1, 0, (0,), (0, 0), (5, 5))]
    fixed = FixedSampler(specs)
    assert fixed.epoch_specs(0) == fixed.epoch_specs(9) == specs
    with pytest.raises(IndexError, match="index 2 is out of range"):
        fixed.spec(2)


# -- grid and stitching -------------------------------------------------------------
@pytest.mark.parametrize(("extent", "size", "overlap"), [(10, 6, 2), (37, 8, 0), (37, 8, 7), (5, 8, 3), (64, 16, 4)])
def test_tile_keep_ranges_partition_the_dim(extent: int, size: int, overlap: int) -> None:
    tiles = tile_starts(extent, size, overlap)
    counts = np.zeros(extent, int)
    for j, (start, lo, hi) in enumerate(tiles):
        assert start <= lo < hi <= start + size
        assert start + size <= extent or (start == 0 and size > extent)
        if j:
            assert tiles[j - 1][0] + size - start >= min(overlap, size)  # neighbours overlap enough
        counts[lo:hi] += 1
    assert (counts == 1).all()


@pytest.mark.parametrize("overlap", [0, 3])
def test_grid_covers_every_pixel_and_stitches_identity_back(overlap: int) -> None:
    stacks, arrays = _stacks(), _arrays()
    grid = GridSampler(stacks, (16, 12), overlap=overlap)
    covered = [np.zeros((a.shape[0], *a.shape[2:]), int) for a in arrays]
    stitcher = Stitcher(grid, n_channels=2)
    indices = list(range(len(grid)))[::-1]  # any order
    for i in indices:
        tile = grid.tile(i)
        covered[tile.spec.stack][(tile.spec.sample, *tile.image_region)] += 1
    for start in range(0, len(indices), 5):
        batch = indices[start : start + 5]
        stitcher.add_batch(batch, read_specs(stacks, [grid.spec(i) for i in batch]))
    assert all((c == 1).all() for c in covered)
    assert stitcher.complete
    for out, a in zip(stitcher.outputs, arrays, strict=True):
        np.testing.assert_array_equal(out, a.astype(np.float32))


def test_stitcher_3d_into_a_zarr_array() -> None:
    data = np.random.default_rng(1).random((2, 9, 20, 17)).astype(np.float32)  # SZYX
    stack = LazyImageStack(data, "SZYX")
    grid = GridSampler([stack], (4, 8, 8), overlap=(1, 2, 2))
    target = zarr.create_array(store={}, shape=(2, 1, 9, 20, 17), chunks=(1, 1, 4, 8, 8), dtype="float32")
    stitcher = Stitcher(grid, 1, out=[target])
    for i in range(len(grid)):
        stitcher.add(i, stack.extract_patch(*grid.spec(i)[1:]) * 2)
    np.testing.assert_array_equal(target[:][:, 0], data * 2)
    with pytest.raises(ShapeMismatchError, match="expected"):
        stitcher.add(0, np.zeros((1, 4, 8, 7), np.float32))


# -- manifests ---------------------------------------------------------------------------
def _file_stacks(tmp_path: Path) -> tuple[list[LazyImageStack], list[np.ndarray]]:
    a, b = _arrays()
    z = zarr.create_array(str(tmp_path / "a.zarr"), shape=a.shape, chunks=(1, 1, 16, 16), dtype=a.dtype)
    z[:] = a
    tifffile.imwrite(tmp_path / "b.tif", b[0])
    stacks = [load_zarrs(str(tmp_path / "a.zarr"), "SCYX")[0], load_tiffs(str(tmp_path / "b.tif"), "CYX")[0]]
    return stacks, [a, b]


def test_manifest_replays_bit_identically(tmp_path: Path) -> None:
    stacks, arrays = _file_stacks(tmp_path)
    sampler = RandomSampler(stacks, 10, 25, seed=5, channels=[1])
    path = write_manifest(tmp_path / "epochs.csv", sampler, stacks, epochs=[0, 1])
    replay = read_manifest(path, stacks, epoch=1)
    assert replay.epoch_specs() == sampler.epoch_specs(1)
    again = load_zarrs(str(tmp_path / "a.zarr"), "SCYX") + load_tiffs(str(tmp_path / "b.tif"), "CYX")
    for x, y, spec in zip(
        read_specs(again, replay.epoch_specs()), read_specs(stacks, sampler.epoch_specs(1)), replay, strict=True
    ):
        assert x.tobytes() == y.tobytes()
        np.testing.assert_array_equal(x, _reference(arrays, spec))
    assert len(read_manifest(path, stacks)) == 50
    pandas = pytest.importorskip("pandas")
    table = pandas.read_csv(path)
    assert list(table["index"][:3]) == [0, 1, 2]
    assert set(table["source"]) <= {stacks[0].source, stacks[1].source}


def test_manifest_refuses_a_changed_source(tmp_path: Path) -> None:
    stacks, _ = _file_stacks(tmp_path)
    sampler = RandomSampler(stacks, 10, 40, seed=5)
    path = write_manifest(tmp_path / "m.csv", sampler, stacks)
    read_manifest(path, stacks)  # unchanged: accepted
    tif = tmp_path / "b.tif"
    st = tif.stat()
    os.utime(tif, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    with pytest.raises(ManifestMismatchError, match=r"b\.tif.*source_mtime_ns"):
        read_manifest(path, stacks)
    with pytest.raises(ManifestMismatchError, match="only 1 stack"):
        read_manifest(path, stacks[:1], check=True)


def test_manifest_refuses_a_changed_array_and_a_swapped_stack(tmp_path: Path) -> None:
    arrays = list(_arrays())
    stacks = [LazyImageStack(a, "SCYX") for a in arrays]
    sampler = RandomSampler(stacks, 6, 10)
    path = write_manifest(tmp_path / "m.csv", sampler, stacks)
    changed = arrays[0].copy()
    changed[0, 0, 0, 0] += 1
    with pytest.raises(ManifestMismatchError, match="source_sha256"):
        read_manifest(path, [LazyImageStack(changed, "SCYX"), stacks[1]])
    with pytest.raises(ManifestMismatchError, match="data_shape"):
        read_manifest(path, stacks[::-1])
    (tmp_path / "bad.csv").write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="not a lazystack manifest"):
        read_manifest(tmp_path / "bad.csv", stacks)


# -- pairs ------------------------------------------------------------------------------
def test_check_pairs() -> None:
    inputs = _stacks()
    targets = [LazyImageStack(np.zeros((3, 1, 37, 45), np.uint8), "SCYX"), LazyImageStack(np.zeros((70, 23)), "YX")]
    check_pairs(inputs, targets, names=["input", "target"])  # channel counts may differ
    with pytest.raises(ShapeMismatchError, match="input has 2 stack"):
        check_pairs(inputs, targets[:1], names=["input", "target"])
    wrong = [targets[0], LazyImageStack(np.zeros((70, 22)), "YX")]
    with pytest.raises(ShapeMismatchError, match=r"target stack 1 .*\(70, 22\)"):
        check_pairs(inputs, wrong, names=["input", "target"])


def test_paired_stacks_read_at_the_same_specs() -> None:
    inputs, arrays = _stacks(), _arrays()
    target_arrays = [a[:, :1] * 2 for a in arrays]
    targets = [LazyImageStack(t, "SCYX") for t in target_arrays]
    specs = RandomSampler(inputs, 7, 20, seed=11).epoch_specs()
    for spec, x, y in zip(specs, read_specs(inputs, specs), read_specs(targets, specs, channels=None), strict=True):
        np.testing.assert_array_equal(x, _reference(list(arrays), spec))
        np.testing.assert_array_equal(y, _reference(target_arrays, spec))


# -- foreground ---------------------------------------------------------------------------
def test_foreground_rejection_respects_its_threshold_and_bound() -> None:
    stacks, arrays = _stacks(), _arrays()
    mask_arrays = [np.zeros((a.shape[0], 1, *a.shape[2:]), np.uint8) for a in arrays]
    mask_arrays[0][1, 0, 20:30, 30:40] = 1  # a small foreground island in one sample
    masks = [LazyImageStack(m, "SCYX") for m in mask_arrays]
    sampler = ForegroundSampler(stacks, masks, 8, 60, min_foreground=0.25, max_attempts=50, seed=3)
    draws = [sampler.draw(i, 2) for i in range(60)]
    assert sum(d[2] >= 0.25 for d in draws) > 30  # without rejection, about 1 in 200 would be
    for spec, attempts, fraction in draws:
        assert 1 <= attempts <= 50
        region = mask_arrays[spec.stack][(spec.sample, 0, *(slice(c, c + 8) for c in spec.coords))]
        assert fraction == pytest.approx(np.count_nonzero(region) / 64)
        if fraction >= 0.25:
            assert (spec.stack, spec.sample) == (0, 1)
        else:
            assert attempts == 50  # gave up only after the bound
    assert [sampler.spec(i, 2) for i in range(60)] == [d[0] for d in draws]  # pure
    stingy = ForegroundSampler(stacks, masks, 8, 20, min_foreground=1.0, max_attempts=2, seed=3)
    assert all(stingy.draw(i)[1] <= 2 for i in range(20))
    with pytest.raises(ShapeMismatchError, match="masks stack 1"):
        ForegroundSampler(stacks, [masks[0], LazyImageStack(np.zeros((70, 22)), "YX")], 8, 5)


def test_mask_weighted_patches_hold_foreground_in_proportion() -> None:
    stacks = _stacks()
    mask_arrays = [np.zeros((a.shape[0], 1, *a.shape[2:]), np.uint8) for a in _arrays()]
    mask_arrays[0][2, 0, 30:37, 40:45] = 1  # 35 pixels in the corner of stack 0, sample 2
    mask_arrays[1][0, 0, 0:35, 0:3] = 1  # 105 pixels along the left edge of stack 1
    masks = [LazyImageStack(m, "SCYX") for m in mask_arrays]
    sampler = MaskWeightedSampler(stacks, masks, 8, 400, seed=5, cell=4)
    specs = sampler.epoch_specs(1)
    for s in specs:
        shape = stacks[s.stack].data_shape[2:]
        assert all(0 <= c <= n - 8 for c, n in zip(s.coords, shape, strict=True))
        cell_box = mask_arrays[s.stack][(s.sample, 0, *(slice(c, c + 8) for c in s.coords))]
        assert cell_box.any()  # cells are 4 px, patches 8: the drawn cell's foreground is inside
    share = sum(s.stack == 1 for s in specs) / len(specs)
    assert abs(share - 105 / 140) < 0.08
    assert specs == MaskWeightedSampler(stacks, masks, 8, 400, seed=5, cell=4).epoch_specs(1)
    empty = [LazyImageStack(np.zeros_like(m), "SCYX") for m in mask_arrays]
    with pytest.raises(ValueError, match="no foreground"):
        MaskWeightedSampler(stacks, empty, 8, 4)
