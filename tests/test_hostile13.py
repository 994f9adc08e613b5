"""Hostile use, third audit (session 13): samplers, the torch dataset, tiling and stitching, the command line, plots.

What a demanding ML user does by mistake or at scale: epochs of ``2**62`` patches, weights that are infinite,
a dataset given other stacks than its sampler's, overlaps that never advance, predictions of the wrong kind,
thumbnails of a 100000-pixel-wide stack. Cases that could exhaust memory or hang run in a capped child
(``run_child`` of ``test_hostile11``). The first part holds the findings (each test failed before its fix); the
second, table-driven, checks the documented errors and what held up.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile
from conftest import run_python
from test_hostile11 import run_child

import lazystack
from lazystack import LazyImageStack, LazyStackError, PatchError, ShapeMismatchError
from lazystack.core.errors import ChannelIndexError, SelectionError
from lazystack.sampling import (
    FixedSampler,
    ForegroundSampler,
    GridSampler,
    RandomSampler,
    Stitcher,
    StratifiedSampler,
    WholeSampleSampler,
    tile_starts,
)

torch = pytest.importorskip("torch")

from lazystack.torch import EpochSampler, PatchDataset  # noqa: E402  (after the torch skip)

pytestmark = pytest.mark.timeout(180)


def _stack(shape: tuple[int, ...] = (2, 32, 32), axes: str = "SYX") -> LazyImageStack:
    return LazyImageStack(np.arange(int(np.prod(shape)), dtype=np.uint16).reshape(shape), axes)


# == findings ========================================================================================================
# -- samplers ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("weights", [[np.inf], [np.inf, 1.0], [1.0, -np.inf], [1e308, 1e308]])
def test_non_finite_weights_are_refused(weights: list[float]) -> None:
    """``weights=[inf, 1]`` normalised to ``(nan, 0)``: every patch then came from stack 0 at corner (0, 0).

    ``[1e308, 1e308]`` is finite but sums to inf: the same NaN weights.
    """
    stacks = [_stack() for _ in weights]
    with pytest.raises(ValueError, match="finite") as info:
        RandomSampler(stacks, 8, 16, weights=weights)
    assert repr(weights) in str(info.value) or "inf" in str(info.value)


def test_huge_finite_weights_still_draw_every_corner() -> None:
    """Large finite weights whose sum is finite keep working (the reference: corners spread over the image)."""
    sampler = RandomSampler([_stack(), _stack()], 8, 256, weights=[1e300, 1e300], seed=3)
    corners = {s.coords for s in sampler.epoch_specs(0)}
    assert len(corners) > 100
    assert {s.stack for s in sampler.epoch_specs(0)} == {0, 1}


def test_length_that_len_cannot_return_is_refused() -> None:
    """``length=2**63`` built a sampler whose ``len()`` raised a bare OverflowError (and so did the DataLoader's)."""
    with pytest.raises(ValueError, match=r"length 9223372036854775808 is too large"):
        RandomSampler([_stack()], 8, 2**63)
    with pytest.raises(ValueError, match=r"length 9223372036854775808 is too large"):
        EpochSampler(2**63)
    assert len(RandomSampler([_stack()], 8, 2**63 - 1)) == 2**63 - 1


def test_epoch_specs_index_past_int64_names_itself() -> None:
    """``epoch_specs(0, [2**70])`` raised numpy's OverflowError ("Python int too large to convert to C long")."""
    sampler = RandomSampler([_stack()], 8, 4)
    with pytest.raises(IndexError, match=r"index 1180591620717411303424 is out of range .* accepted 0 to 3"):
        sampler.epoch_specs(0, [1, 2**70])


def test_iterating_a_huge_sampler_is_lazy() -> None:
    """``iter(sampler)`` computed the whole epoch first: ``next(iter(RandomSampler(..., 2**62)))`` raised
    "array is too big" (and a length of 10**9 took gigabytes before the first spec)."""
    (result,) = run_child(
        """
        import itertools
        import numpy as np
        from lazystack import LazyImageStack, RandomSampler
        sampler = RandomSampler([LazyImageStack(np.zeros((2, 32, 32), np.uint8), "SYX")], 8, 2**62, seed=5)
        first = list(itertools.islice(iter(sampler), 3))
        report(lambda: (first == [sampler.spec(i) for i in range(3)], peak_rss() < 1 << 30))
        """
    )
    assert result == {"returned": "(True, True)"}, result


def test_iteration_is_the_epoch_0_specs_across_batches() -> None:
    """Iterating batch by batch gives exactly ``epoch_specs(0)`` (5000 specs: more than one internal batch)."""
    sampler = RandomSampler([_stack(), _stack((3, 40, 40))], 8, 5000, seed=11)
    assert list(sampler) == sampler.epoch_specs(0)
    grid = GridSampler([_stack()], 8, overlap=2)
    assert list(grid) == [grid.spec(i) for i in range(len(grid))]


@pytest.mark.parametrize(
    ("kwargs", "error", "words"),
    [
        ({"max_attempts": 2.5}, TypeError, ["max_attempts", "2.5"]),
        ({"min_foreground": "0.5"}, TypeError, ["min_foreground", "'0.5'"]),
        ({"min_foreground": None}, TypeError, ["min_foreground", "None"]),
    ],
)
def test_foreground_sampler_parameters_of_the_wrong_type_are_named(
    kwargs: dict[str, Any], error: type[Exception], words: list[str]
) -> None:
    """Were bare ``'float' object cannot be interpreted as an integer`` / ``'<=' not supported`` TypeErrors."""
    stack = _stack()
    with pytest.raises(error) as info:
        ForegroundSampler([stack], [stack], 8, 4, **kwargs)
    for word in words:
        assert word in str(info.value)


@pytest.mark.parametrize("make", [lambda: WholeSampleSampler([]), lambda: StratifiedSampler([], [], 8, 4)])
def test_no_stacks_says_so(make: Any) -> None:
    """Was "levels='finest' selects none of the 0 stack(s) given": blamed the levels for an empty list."""
    with pytest.raises(SelectionError, match="needs at least one stack, got an empty sequence"):
        make()


def test_a_stack_without_samples_and_a_positive_weight_is_refused() -> None:
    """An empty file among the stacks, weights given: specs of ``sample=-1`` (RandomSampler), numpy's bare
    "high <= 0" (ForegroundSampler). With the default weights it gets none and is never drawn (as before)."""
    empty, a = _stack((0, 32, 32)), _stack()
    with pytest.raises(ValueError, match=r"give stack 0 .* positive weight, but it has no samples"):
        RandomSampler([empty, a], 8, 6, weights=[1, 1])
    with pytest.raises(ValueError, match="no samples"):
        ForegroundSampler([empty, a], [empty, a], 8, 6, weights=[1, 1])
    assert {s.stack for s in RandomSampler([empty, a], 8, 64).epoch_specs(0)} == {1}


@pytest.mark.parametrize("kind", ["mask-weighted", "coarse"])
def test_foreground_samplers_skip_a_stack_without_samples(kind: str) -> None:
    """A 0-sample stack among others: dask's "Empty tuples are not allowed in chunks" while summarising it."""
    empty, a = _stack((0, 32, 32)), _stack()
    if kind == "mask-weighted":
        sampler: Any = lazystack.sampling.MaskWeightedSampler([empty, a], [empty, a], 8, 32, seed=1)
    else:
        sampler = lazystack.sampling.CoarseForegroundSampler([empty, a], 8, 32, factor=4, seed=1)
        assert sampler.foreground_fraction()[0] is None
    specs = sampler.epoch_specs(0)
    assert {s.stack for s in specs} == {1}
    assert all(0 <= s.sample < 2 for s in specs)


# -- torch -------------------------------------------------------------------------------------------------------
def test_dataset_over_other_stacks_than_its_sampler_fails_at_construction() -> None:
    """A sampler over two stacks, a dataset over one: a bare ``IndexError: list index out of range`` at the first
    batch; over stacks of another size, patches read past the image (zeros) with no error at all."""
    a = _stack()
    with pytest.raises(ShapeMismatchError, match=r"built over 2 of") as info:
        PatchDataset([a], RandomSampler([a, a], 8, 4))
    assert "give the stacks the sampler was built over" in str(info.value)
    with pytest.raises(ShapeMismatchError, match=r"\(32, 32\)"):
        PatchDataset([_stack((2, 16, 16))], RandomSampler([a], 12, 4))
    same = PatchDataset([_stack()], RandomSampler([a], 8, 4))  # other objects of the same geometry: fine
    assert same[0]["input"].shape == (1, 8, 8)


@pytest.mark.parametrize("stack", [-1, 2])
def test_a_spec_naming_a_stack_not_given_is_an_error(stack: int) -> None:
    """``FixedSampler`` specs (a manifest, a validation list) are not checked against stacks it never sees: stack
    -1 read the last stack's pixels without a word, stack 2 of 2 raised a bare "list index out of range"."""
    ones, zeros = LazyImageStack(np.ones((2, 32, 32), np.uint16), "SYX"), _stack()
    dataset = PatchDataset([ones, zeros], FixedSampler([(stack, 0, None, (0, 0), (8, 8))]))
    with pytest.raises(IndexError, match=rf"a spec names stack {stack}, but 2 stack\(s\) were given"):
        dataset[0]
    with pytest.raises(IndexError, match=rf"stack {stack}"):
        lazystack.sampling.read_specs([ones, zeros], [lazystack.sampling.PatchSpec(stack, 0, None, (0, 0), (8, 8))])


def test_unsigned_index_past_int64_is_named_as_given() -> None:
    """A ``uint64`` index of ``2**63`` wrapped to ``-9223372036854775808`` in the message."""
    with pytest.raises(IndexError, match="index 9223372036854775808 is out of range"):
        RandomSampler([_stack()], 8, 4).epoch_specs(0, np.array([1, 2**63], dtype=np.uint64))


@pytest.mark.parametrize(
    ("index", "words"),
    [((0, 1, 2), ["(0, 1, 2)", "(epoch, index) pair"]), (1.0, ["index", "1.0"]), ((0, "a"), ["'a'"])],
)
def test_dataset_index_of_the_wrong_form_is_named(index: Any, words: list[str]) -> None:
    """Were ``too many values to unpack`` and ``'float' object cannot be interpreted as an integer``."""
    a = _stack()
    dataset = PatchDataset([a], RandomSampler([a], 8, 4))
    with pytest.raises(TypeError) as info:
        dataset.__getitems__([index])
    for word in words:
        assert word in str(info.value)


def _reference_order(n: int, world: int, pad: bool, shuffle: bool, seed: int, epoch: int) -> list[int]:
    """The epoch order as DistributedSampler builds it: a permutation (or range), padded by repeating its start."""
    order = [int(i) for i in np.random.default_rng([seed, epoch]).permutation(n)] if shuffle else list(range(n))
    if pad and order and len(order) % world:
        extra = world - len(order) % world
        order += (order * (extra // len(order) + 1))[:extra]
    return order


@pytest.mark.parametrize("shuffle", [False, True])
@pytest.mark.parametrize("pad", [False, True])
def test_epoch_sampler_shares_match_the_reference(shuffle: bool, pad: bool) -> None:
    """The lazy shares: every rank's indices and length as the whole padded order, sliced."""
    for n, world in itertools.product([0, 1, 2, 5, 13], [1, 2, 3, 7, 20]):
        order = _reference_order(n, world, pad, shuffle, 3, 2)
        for rank in range(world):
            sampler = EpochSampler(n, rank=rank, world_size=world, pad=pad, shuffle=shuffle, seed=3, epoch=2)
            assert sampler.order() == order
            assert list(sampler) == [(2, i) for i in order[rank::world]], (n, world, rank)
            assert len(sampler) == len(order[rank::world])


def test_epoch_sampler_over_a_huge_epoch_is_lazy() -> None:
    """``len(EpochSampler(2**62))`` and its first index built the whole order first: a bare MemoryError (and
    gigabytes for 10**9 patches, at every ``len()`` the DataLoader calls)."""
    (result,) = run_child(
        """
        import itertools
        from lazystack.torch import EpochSampler
        sampler = EpochSampler(2**62 + 1, rank=1, world_size=4)
        report(lambda: (len(sampler), list(itertools.islice(sampler, 3)), peak_rss() < 1 << 30))
        """
    )
    assert result == {"returned": f"({(2**62 + 4) // 4}, [(0, 1), (0, 5), (0, 9)], True)"}, result


# -- tiling and stitching -------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("extent", "size", "overlap"), [(10, 6, 6), (10, 6, 7), (100, 10, -20), (10, 0, 0), (-1, 4, 0)]
)
def test_tile_starts_refuses_overlaps_that_never_advance_or_leave_gaps(extent: int, size: int, overlap: int) -> None:
    """``tile_starts`` is public: overlap == size raised ``range() arg 3 must not be zero``; a negative overlap
    returned tiles 30 apart for a size of 10, whose kept ranges (20 long) lie outside the tiles."""
    with pytest.raises(PatchError, match=f"extent={extent}, size={size}, overlap={overlap}"):
        tile_starts(extent, size, overlap)


def test_tile_starts_kept_ranges_lie_inside_their_tiles() -> None:
    for extent, size, overlap in itertools.product([1, 5, 17, 64], [1, 4, 16], [0, 1, 3]):
        if overlap >= size:
            continue
        tiles = tile_starts(extent, size, overlap)
        assert tiles[0][1] == 0
        assert tiles[-1][2] == extent
        assert all(b == c for (_, _, b), (_, c, _) in itertools.pairwise(tiles))
        assert all(s <= a <= b <= s + size for s, a, b in tiles)


@pytest.mark.parametrize(
    ("n_channels", "error"), [(-1, ValueError), (0, ValueError), (1.5, TypeError), (True, ValueError)]
)
def test_stitcher_channel_count_is_checked(n_channels: Any, error: type[Exception]) -> None:
    """``n_channels=-1`` raised numpy's "negative dimensions are not allowed"; 0 made empty outputs."""
    with pytest.raises(error, match=rf"n_channels .*{n_channels!r}"):
        Stitcher(GridSampler([_stack()], 12, overlap=4), n_channels)


@pytest.mark.parametrize(
    "prediction",
    [np.ones((1, 12, 12), complex), np.full((1, 12, 12), "a"), np.full((1, 12, 12), None, dtype=object)],
    ids=["complex", "str", "object"],
)
def test_stitcher_refuses_predictions_that_are_not_real_numbers(prediction: np.ndarray) -> None:
    """A complex prediction lost its imaginary part with only a ComplexWarning; ``None`` pixels became NaN."""
    stitcher = Stitcher(GridSampler([_stack()], 12, overlap=4), 1)
    with pytest.raises(TypeError, match=rf"tile 0 has dtype {prediction.dtype}"):
        stitcher.add(0, prediction)
    assert not stitcher.outputs[0].any()


def test_stitcher_complex_output_takes_complex_predictions() -> None:
    stack = _stack()
    grid = GridSampler([stack], 12, overlap=4)
    stitcher = Stitcher(grid, 1, dtype=np.complex64)
    for i in range(len(grid)):
        stitcher.add(i, stack.extract_patch(*grid.spec(i)[1:]) * 1j)
    np.testing.assert_array_equal(stitcher.outputs[0][:, 0], np.asarray(stack.data[:, 0]) * 1j)


def test_stitcher_batch_and_out_mistakes_are_named() -> None:
    """``add_batch`` of 2 indices and 1 prediction: a bare zip error; ``out=[None]``: an AttributeError."""
    grid = GridSampler([_stack()], 12, overlap=4)
    stitcher = Stitcher(grid, 1)
    with pytest.raises(ShapeMismatchError, match="2 indices and 1 predictions"):
        stitcher.add_batch([0, 1], np.zeros((1, 1, 12, 12)))
    with pytest.raises(ShapeMismatchError, match=r"out\[0\] is NoneType, not an array.*\(2, 1, 32, 32\)"):
        Stitcher(grid, 1, out=[None])
    stitcher.add_batch(iter([0, 1]), (np.ones((1, 12, 12)) for _ in range(2)))  # iterators, as before
    assert stitcher.outputs[0][0, 0, 0, 0] == 1


# -- display -------------------------------------------------------------------------------------------------------
def test_thumbnail_of_a_huge_stack_holds_one_region_at_a_time() -> None:
    """A 64-pixel thumbnail of a 40000 x 40000 dask-backed stack kept every region read alive (a strided view of
    each) until dask joined them: gigabytes (7.5 GB at 100000 x 100000); now about one region per thread."""
    (result,) = run_child(
        """
        import numpy as np, dask.array as da
        from lazystack import LazyImageStack
        from lazystack.frontends.plot import thumbnail
        big = da.ones((40000, 40000), dtype=np.uint16, chunks=(4096, 4096)) * 3
        plane, step = thumbnail(LazyImageStack(big, "YX"), max_size=64)
        same = plane.shape == (64, 64) and step == 625 and bool((plane == 3).all())
        report(lambda: (same, peak_rss() < 1 << 30))
        """,
        timeout=150,
    )
    assert result == {"returned": "(True, True)"}, result


def test_strided_read_matches_numpy() -> None:
    """The copy of a strided region read keeps its values (the reference: numpy's own slicing)."""
    data = np.random.default_rng(2).integers(0, 1000, (3, 2, 50, 70), dtype=np.uint16)
    stack = LazyImageStack(data, "TCYX")
    np.testing.assert_array_equal(stack.data[1, :, ::7, 3::9].compute(), data[1, :, ::7, 3::9])
    np.testing.assert_array_equal(stack.data[:, 1, ::-3, [5, 1, 60]].compute(), data[:, 1, ::-3][:, :, [5, 1, 60]])


@pytest.mark.parametrize("limits", [{"vmin": np.nan}, {"vmax": np.inf}, {"vmin": -np.inf, "vmax": 1.0}])
def test_show_refuses_non_finite_contrast_limits(limits: dict[str, float]) -> None:
    """``vmin=nan`` drew a blank image without a word (the limits became ``(nan, nan)``)."""
    pytest.importorskip("matplotlib")
    from lazystack.frontends.plot import show

    name = next(iter(limits))
    with pytest.raises(SelectionError, match=rf"{name} must be a finite number .* got {limits[name]!r}"):
        show(_stack(), **limits)


# -- command line --------------------------------------------------------------------------------------------------
def _cli(*args: str) -> Any:
    return run_python("import sys; from lazystack.frontends.cli import main; sys.exit(main())", *args, timeout=120)


@pytest.mark.parametrize("option", ["--size", "--patches", "--patch-size", "--frames"])
@pytest.mark.parametrize("value", ["0", "-3", "x"])
def test_demo_sizes_below_one_are_usage_errors(option: str, value: str) -> None:
    """``--size 0`` failed with numpy's "high <= 0", ``--frames 0`` with an unrelated sample_idx error and
    ``--patches -1`` succeeded (exit 0) extracting nothing."""
    proc = _cli("demo", "--quiet", option, value)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    for word in (option, repr(value), ">= 1"):
        assert word in proc.stderr, proc.stderr


def test_run_demo_checks_its_sizes() -> None:
    from lazystack.frontends.demo import run_demo

    with pytest.raises(ValueError, match="frames must be an integer >= 1, got 0"):
        run_demo(size=16, frames=0, progress=False)


# == what held up (documented errors, table-driven) ==================================================================
def _sampler_errors() -> list[tuple[str, Any, type[Exception], str]]:
    a, c3 = _stack(), _stack((2, 3, 32, 32), "SCYX")
    z = _stack((2, 4, 32, 32), "SZYX")
    zeros = LazyImageStack(np.zeros((2, 32, 32), np.uint8), "SYX")
    return [
        ("patch larger than the image", lambda: RandomSampler([a], 64, 4), PatchError, "does not fit"),
        ("zero patch", lambda: RandomSampler([a], 0, 4), PatchError, "must be positive"),
        ("negative patch", lambda: RandomSampler([a], (8, -1), 4), PatchError, "must be positive"),
        ("patch of the wrong length", lambda: RandomSampler([a], (8, 8, 8), 4), PatchError, "one per spatial dim"),
        ("negative length", lambda: RandomSampler([a], 8, -1), ValueError, "length must be a non-negative"),
        ("negative seed", lambda: RandomSampler([a], 8, 4, seed=-1), ValueError, "got -1"),
        ("seed None", lambda: RandomSampler([a], 8, 4, seed=None), TypeError, "got None"),
        ("float seed", lambda: RandomSampler([a], 8, 4, seed=1.5), TypeError, "got 1.5"),
        ("NaN weight", lambda: RandomSampler([a], 8, 4, weights=[np.nan]), ValueError, "[nan]"),
        ("negative weight", lambda: RandomSampler([a], 8, 4, weights=[-1.0]), ValueError, "[-1.0]"),
        ("all-zero weights", lambda: RandomSampler([a, a], 8, 4, weights=[0, 0]), ValueError, "sum to 0"),
        ("weights of the wrong length", lambda: RandomSampler([a], 8, 4, weights=[1, 1]), ValueError, "one per stack"),
        ("mixed 2-D and 3-D", lambda: RandomSampler([a, z], 8, 4), PatchError, "spatial dims"),
        ("mixed channel counts", lambda: RandomSampler([a, c3], 8, 4), ChannelIndexError, "different channel"),
        ("channel out of range", lambda: RandomSampler([a, c3], 8, 4, channels=2), ChannelIndexError, "channel 2"),
        ("no stacks", lambda: RandomSampler([], 8, 4), ValueError, "at least one stack"),
        (
            "mask of another shape",
            lambda: ForegroundSampler([a], [_stack((2, 16, 16))], 8, 4),
            ShapeMismatchError,
            "(16, 16)",
        ),
        ("mask list too short", lambda: ForegroundSampler([a, a], [a], 8, 4), ShapeMismatchError, "pairs need"),
        ("min_foreground NaN", lambda: ForegroundSampler([a], [a], 8, 4, min_foreground=np.nan), ValueError, "nan"),
        ("max_attempts 0", lambda: ForegroundSampler([a], [a], 8, 4, max_attempts=0), ValueError, "at least 1"),
        (
            "mask without foreground",
            lambda: lazystack.sampling.MaskWeightedSampler([a], [zeros], 8, 4),
            ValueError,
            "no foreground",
        ),
        ("grid overlap == size", lambda: GridSampler([a], 8, overlap=8), PatchError, "smaller than"),
        ("grid negative overlap", lambda: GridSampler([a], 8, overlap=-1), PatchError, "must be >= 0"),
        ("grid no stacks", lambda: GridSampler([], 8), ValueError, "at least one stack"),
        ("index past the end", lambda: RandomSampler([a], 8, 4).spec(4), IndexError, "index 4"),
        ("negative index", lambda: RandomSampler([a], 8, 4).epoch_specs(0, [np.int64(-1)]), IndexError, "index -1"),
        ("float index", lambda: RandomSampler([a], 8, 4).spec(1.0), TypeError, "got 1.0"),
        ("negative epoch", lambda: RandomSampler([a], 8, 4).spec(0, -1), ValueError, "epoch"),
        ("fixed sampler past the end", lambda: FixedSampler([]).spec(0), IndexError, "index 0"),
        ("rank >= world size", lambda: EpochSampler(10, rank=2, world_size=2), ValueError, "rank 2"),
        ("world size 0", lambda: EpochSampler(10, world_size=0), ValueError, "world_size 0"),
        (
            "dataset channels 'all'",
            lambda: PatchDataset([a], RandomSampler([a], 8, 4), channels="all"),
            ValueError,
            "'all'",
        ),
        (
            "dataset mixed channels",
            lambda: PatchDataset([a, c3], FixedSampler([(0, 0, None, (0, 0), (8, 8))])),
            ChannelIndexError,
            "different channel",
        ),
        (
            "dataset target of another shape",
            lambda: PatchDataset([a], RandomSampler([a], 8, 4), targets=[_stack((2, 16, 16))]),
            ShapeMismatchError,
            "target stack 0",
        ),
        (
            "dataset negative epoch",
            lambda: PatchDataset([a], RandomSampler([a], 8, 4)).set_epoch(-1),
            ValueError,
            "epoch",
        ),
        (
            "dataset index past the end",
            lambda: PatchDataset([a], RandomSampler([a], 8, 4)).__getitems__([0, 4]),
            IndexError,
            "index 4",
        ),
    ]


@pytest.mark.parametrize(("name", "call", "error", "words"), _sampler_errors(), ids=[c[0] for c in _sampler_errors()])
def test_documented_sampler_errors(name: str, call: Any, error: type[Exception], words: str) -> None:
    with pytest.raises(error) as info:
        call()
    assert words in str(info.value), (name, str(info.value))


def test_rejection_that_can_never_succeed_ends_within_its_bound() -> None:
    """``min_foreground=1`` on an empty mask: ``max_attempts`` tries, then the best attempt (0 foreground)."""
    a = _stack()
    never = ForegroundSampler(
        [a], [LazyImageStack(np.zeros((2, 32, 32), np.uint8), "SYX")], 8, 4, min_foreground=1.0, max_attempts=3
    )
    spec, attempts, fraction = never.draw(2, epoch=5)
    assert (attempts, fraction) == (3, 0.0)
    assert never.spec(2, 5) == spec


@pytest.mark.parametrize("seed", [0, np.int64(3), np.uint64(2**64 - 1), 2**200])
def test_specs_are_the_same_in_a_fresh_interpreter(seed: Any) -> None:
    """spec(seed, epoch, i) as computed here equals the spec a new process computes (hash seeds, numpy ints)."""
    a = _stack((3, 40, 50), "SYX")
    sampler = RandomSampler([a, _stack()], (8, 12), 2**40, seed=seed)
    keys = [(0, 0), (7, 2**40 - 1), (2**70, 12345)]
    here = [tuple(sampler.spec(i, e)) for e, i in keys]
    assert here == [tuple(s) for e, i in keys for s in sampler.epoch_specs(e, [i])]
    (result,) = run_child(
        f"""
        import numpy as np
        from lazystack import LazyImageStack, RandomSampler
        def stack(shape):
            return LazyImageStack(np.arange(int(np.prod(shape)), dtype=np.uint16).reshape(shape), "SYX")
        sampler = RandomSampler([stack((3, 40, 50)), stack((2, 32, 32))], (8, 12), 2**40, seed={int(seed)})
        report(lambda: [tuple(sampler.spec(i, e)) for e, i in {keys!r}])
        """
    )
    assert result == {"returned": repr(here)}, result


def test_dataloader_fork_spawn_and_persistent_workers_give_the_same_epochs(tmp_path: Path) -> None:
    """One DDP rank's two epochs through DataLoaders in-process, with fork workers and with persistent spawn
    workers (``set_epoch`` on the EpochSampler between epochs): the same patches and specs."""
    path = tmp_path / "b.tif"
    data = np.random.default_rng(0).integers(0, 60000, (3, 64, 64), dtype=np.uint16)
    tifffile.imwrite(path, data, tile=(16, 16), photometric="minisblack")
    code = f"""
import sys, numpy as np, torch, lazystack
from lazystack.sampling import RandomSampler
from lazystack.torch import PatchDataset, EpochSampler
if __name__ == "__main__":
    stacks = list(lazystack.load_tiffs([{str(path)!r}], "SYX"))
    ds = PatchDataset(stacks, RandomSampler(stacks, 8, 20, seed=np.int64(7)), return_spec=True)
    out = {{}}
    for name, kw in [("main", dict(num_workers=0)), ("fork", dict(num_workers=2, multiprocessing_context="fork")),
                     ("spawn", dict(num_workers=2, multiprocessing_context="spawn", persistent_workers=True))]:
        es = EpochSampler(ds, rank=1, world_size=3)
        dl = torch.utils.data.DataLoader(ds, batch_size=4, sampler=es, **kw)
        res = []
        for epoch in (0, 3):
            es.set_epoch(epoch)
            batches = list(dl)
            res.append(torch.cat([b["input"].flatten() for b in batches]).numpy())
            res.append(torch.cat([b["spec"] for b in batches]).numpy())
        out[name] = res
    same = [all(np.array_equal(a, b) for a, b in zip(out["main"], out[n], strict=True)) for n in ("fork", "spawn")]
    print("RESULT", same, not np.array_equal(out["main"][1], out["main"][3]), len(out["main"][1]))
"""
    proc = run_python(code, timeout=170)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "RESULT [True, True] True 7" in proc.stdout, proc.stdout + proc.stderr[-2000:]


def test_grid_and_stitcher_edge_geometry() -> None:
    """Tiles larger than the image and 1-pixel images stitch back exactly; a tile given twice counts once; a
    missing tile leaves ``complete`` False."""
    for shape in [(1, 1, 1), (2, 5, 3), (1, 40, 33)]:
        data = np.random.default_rng(1).random(shape).astype(np.float32)
        stack = LazyImageStack(data, "SYX")
        grid = GridSampler([stack], (16, 8), overlap=(3, 7))
        stitcher = Stitcher(grid, 1)
        for i in [*range(len(grid)), 0]:
            stitcher.add(i, stack.extract_patch(*grid.spec(i)[1:]))
        assert stitcher.complete
        np.testing.assert_array_equal(stitcher.outputs[0][:, 0], data)
    partial = Stitcher(grid, 1)
    partial.add(0, np.zeros((1, 16, 8), np.float32))
    assert not partial.complete


def test_stitcher_into_a_source_store_is_the_callers_array() -> None:
    """``Stitcher`` writes into the arrays it is given and nothing else: an output that is a source's array is
    written (as asked); the OME-Zarr writer, not the stitcher, guards sources (``test_overwrite_safety``)."""
    grid = GridSampler([_stack()], 12, overlap=4)
    with pytest.raises(ShapeMismatchError, match="need"):
        Stitcher(grid, 1, out=[np.zeros((2, 1, 16, 16), np.float32)])


@pytest.mark.parametrize(
    ("args", "code", "words"),
    [
        ((), 2, "required: COMMAND"),
        (("info",), 2, "required: SOURCE"),
        (("info", "/nonexistent/x.tif"), 1, "/nonexistent/x.tif"),
        (("info", "{tif}", "--axes", "QQ"), 1, "'Q'"),
        (("info", "{tif}", "--axes", "YX"), 1, "do not match"),
        (("info", "{tif}", "--levels", "abc"), 1, "'abc'"),
        (("stats", "{tif}", "--axes", "SYX", "--percentiles", "200"), 2, "'200'"),
        (("stats", "{tif}", "--axes", "SYX", "--output", "{tif}"), 1, "never writes to"),
        (("stats", "{tif}", "--axes", "SYX", "--output", "{tmp}/no/such/dir/x.json"), 1, "No such file"),
        (("convert", "{tif}", "--axes", "SYX"), 2, "--out"),
        (("convert", "{tif}", "--axes", "SYX", "--out", "{tif}"), 1, "already exists"),
        (("convert", "{tif}", "--axes", "SYX", "--out", "{tif}", "--overwrite"), 1, "exists and is a file"),
        (("convert", "{tif}", "--axes", "SYX", "--out", "{tmp}/o.zarr", "--levels", "0"), 1, "levels must be"),
        (("convert", "{tif}", "--axes", "SYX", "--out", "{tmp}/o.zarr", "--chunks", "Q=3"), 1, "'Q'"),
        (("demo", "--format", "nope"), 1, "'nope'"),
        (("demo", "--cache-bytes", "lots", "--size", "16"), 1, "'lots'"),
    ],
)
def test_cli_user_errors_are_one_line(tmp_path: Path, args: tuple[str, ...], code: int, words: str) -> None:
    tif = tmp_path / "a.tif"
    tifffile.imwrite(tif, np.arange(2 * 32 * 32, dtype=np.uint16).reshape(2, 32, 32))
    before = tif.read_bytes()
    proc = _cli(*(a.format(tif=tif, tmp=tmp_path) for a in args))
    assert proc.returncode == code, proc.stderr
    assert "Traceback" not in proc.stderr
    assert words in proc.stderr, proc.stderr
    assert tif.read_bytes() == before


@pytest.mark.parametrize(
    ("data", "axes", "kwargs"),
    [
        (np.ones((1, 1), np.float32), "YX", {}),
        (np.full((8, 8), np.nan, np.float32), "YX", {}),
        (np.full((2, 8, 8), np.nan, np.float32), "CYX", {"channel": "all"}),
        (np.full((8, 8), np.inf, np.float32), "YX", {}),
        (np.zeros((0, 8), np.float32), "YX", {}),
        (np.ones((8, 8), bool), "YX", {}),
    ],
    ids=["1x1", "all-nan", "all-nan-composite", "all-inf", "empty-rows", "bool"],
)
@pytest.mark.filterwarnings("ignore:Attempting to set identical:UserWarning")  # matplotlib, for 0 rows
def test_show_degenerate_images(data: np.ndarray, axes: str, kwargs: dict[str, Any]) -> None:
    pytest.importorskip("matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from lazystack.frontends.plot import show

    ax = show(LazyImageStack(data, axes), **kwargs)
    plt.close(ax.figure)


def test_show_of_an_empty_stack_names_the_sample() -> None:
    pytest.importorskip("matplotlib")
    from lazystack.frontends.plot import show

    with pytest.raises(LazyStackError, match=r"sample=0 is out of range: the stack has 0"):
        show(LazyImageStack(np.zeros((0, 8, 8), np.float32), "SYX"))
