"""Review of branch hostile13 (session 13, reviewer C): the epoch order, sampler iteration, strided reads, the
dataset / sampler stack check and the new argument checks, against independent references."""

from __future__ import annotations

import itertools
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import tifffile

import lazystack
from lazystack import LazyImageStack, RandomSampler, ShapeMismatchError

torch = pytest.importorskip("torch")

from lazystack.torch import EpochSampler, PatchDataset  # noqa: E402  (after the torch skip)


def _reference_order(length: int, rank: int, world_size: int, shuffle: bool, seed: int, epoch: int, pad: bool) -> list:
    """EpochSampler's share as computed before hostile13 (the whole list, then padded, then sliced)."""
    order = (
        [int(i) for i in np.random.default_rng([seed, epoch]).permutation(length)] if shuffle else list(range(length))
    )
    if pad and order and len(order) % world_size:
        extra = world_size - len(order) % world_size
        order += (order * (extra // len(order) + 1))[:extra]
    return [(epoch, i) for i in order[rank::world_size]]


def test_epoch_sampler_share_is_the_order_before_the_lazy_rewrite() -> None:
    for length, world_size in itertools.product([0, 1, 2, 5, 8, 13, 100], [1, 2, 3, 7, 16]):
        for rank, shuffle, pad, epoch in itertools.product(range(world_size), [False, True], [True, False], [0, 3]):
            expected = _reference_order(length, rank, world_size, shuffle, 5, epoch, pad)
            sampler = EpochSampler(length, rank=rank, world_size=world_size, shuffle=shuffle, seed=5, pad=pad)
            sampler.set_epoch(epoch)
            assert list(sampler) == expected, (length, world_size, rank, shuffle, pad, epoch)
            assert len(sampler) == len(expected)


@pytest.mark.parametrize("length", [1, 4095, 4096, 4097, 8193])
def test_sampler_iteration_is_epoch_zero(length: int) -> None:
    stacks = [
        LazyImageStack(np.zeros((3, 40, 50), np.uint8), "SYX"),
        LazyImageStack(np.zeros((2, 33, 70), np.uint8), "SYX"),
    ]
    sampler = RandomSampler(stacks, 8, length, seed=3)
    assert list(sampler) == sampler.epoch_specs(0) == [sampler.spec(i) for i in range(length)]


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32, bool])
def test_strided_reads_of_a_file_stack_match_numpy(tmp_path: Path, dtype: type) -> None:
    rng = np.random.default_rng(1)
    a = (rng.random((3, 2, 37, 53)) * 200).astype(dtype)
    tifffile.imwrite(tmp_path / "a.tif", a, tile=None if dtype is bool else (16, 16))
    data = lazystack.load_tiffs(tmp_path / "a.tif", "SCYX")[0].data
    small = data.rechunk((1, 1, 9, 11))
    for sel in [
        np.s_[..., ::2],
        np.s_[:, :, 1::4, 2::7],
        np.s_[..., ::-3, 5:40:2],
        np.s_[-1, :, 30:2:-4, 50:0:-6],
        np.s_[..., [3, 1, 7], ::2],
        np.s_[::2, 0, ::9, ::11],
    ]:
        np.testing.assert_array_equal(np.asarray(data[sel]), a[sel])
        np.testing.assert_array_equal(np.asarray(small[sel]), a[sel])


def test_dataset_over_the_finest_level_of_a_pyramid_sampler(tmp_path: Path) -> None:
    """A sampler over every level of a one-image pyramid (e.g. CoarseForegroundSampler, which judges foreground on
    the coarse levels) draws only from the finest, stack 0: a dataset given that stack alone worked at 199f8bc and
    was refused by hostile13's check ("fewer stacks") though no spec names the missing ones."""
    rng = np.random.default_rng(0)
    lazystack.write_ome_zarr(
        LazyImageStack(rng.integers(0, 255, (1, 96, 96), dtype=np.uint8), "CYX"), tmp_path / "p.zarr", levels=3
    )
    levels = lazystack.load_zarrs(tmp_path / "p.zarr", "CYX", levels="all")
    assert len(levels) == 3
    for sampler in (RandomSampler(levels, 16, 8, seed=1), lazystack.CoarseForegroundSampler(levels, 16, 8, seed=1)):
        assert {s.stack for s in sampler} == {0}
        finest = PatchDataset([levels[0]], sampler)
        for i in range(8):
            spec = sampler.spec(i)
            expected = np.asarray(levels[0].data)[
                0, :, spec.coords[0] : spec.coords[0] + 16, spec.coords[1] : spec.coords[1] + 16
            ]
            np.testing.assert_array_equal(np.asarray(finest[i]["input"]), expected)
    # a level drawn from is still checked: the coarse level in place of the finest is refused
    with pytest.raises(ShapeMismatchError, match="built over 3 of"):
        PatchDataset([levels[1]], RandomSampler(levels, 16, 8, seed=1))


@pytest.mark.parametrize(
    "fraction", [np.array(0.25), torch.tensor(0.25), Fraction(1, 4), np.float32(0.25), np.int64(0)], ids=repr
)
def test_foreground_sampler_takes_any_real_min_foreground(fraction: object) -> None:
    """hostile13's type check of ``min_foreground`` (int, float or NumPy scalar) refused a 0-d array, a 0-d tensor
    and a ``Fraction``, which 199f8bc took (a threshold computed with NumPy or torch, e.g. a quantile)."""
    stacks = [LazyImageStack(np.ones((2, 32, 32), np.uint8), "SYX")]
    sampler = lazystack.ForegroundSampler(stacks, stacks, 8, 4, min_foreground=fraction, seed=1)
    assert sampler.min_foreground == float(fraction)  # type: ignore[arg-type]
    for wrong in ("0.5", None, True, np.True_, np.array([0.5]), 0.5j):
        with pytest.raises(TypeError, match="min_foreground"):
            lazystack.ForegroundSampler(stacks, stacks, 8, 4, min_foreground=wrong)


def test_stitcher_writes_complex_predictions_into_a_complex_tensorstore_output() -> None:
    """A tensorstore output's dtype has no NumPy ``kind``: hostile13's check took it for a real output and refused
    complex predictions into a complex64 tensorstore, which 199f8bc wrote."""
    ts = pytest.importorskip("tensorstore")
    a = np.random.default_rng(0).random((2, 1, 30, 30)).astype(np.complex64) * (1 + 2j)
    grid = lazystack.GridSampler([LazyImageStack(a.real.copy(), "SCYX")], 16, overlap=4)
    spec = {"driver": "zarr3", "kvstore": {"driver": "memory"}}
    for dtype, accepted in ((ts.complex64, True), (ts.float32, False)):
        out = ts.open(spec, create=True, dtype=dtype, shape=a.shape).result()
        stitcher = lazystack.Stitcher(grid, 1, out=[out])
        predictions = [a[s.sample, :, s.coords[0] : s.coords[0] + 16, s.coords[1] : s.coords[1] + 16] for s in grid]
        if accepted:
            stitcher.add_batch(range(len(grid)), predictions)
            np.testing.assert_array_equal(out.read().result(), a)
        else:  # complex into real: refused naming the dtypes (not cast with the imaginary part dropped)
            with pytest.raises(TypeError, match="complex64"):
                stitcher.add_batch(range(len(grid)), predictions)
