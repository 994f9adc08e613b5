"""Patch specs and reproducible samplers.

A [`PatchSpec`][PatchSpec] names one patch: which stack, which sample, which
channels, where and how large. A sampler maps ``(index, epoch)`` to a spec as
a *pure* function of its seed, the epoch and the index, never of a generator
shared by (and copied into) worker processes. So an epoch is the same list of
specs whatever the number of DataLoader workers, their start method, or how
the indices are split over distributed ranks, and each worker computes only
the specs of the indices it is given.

**Where the randomness comes from.** [`RandomSampler`][RandomSampler] (the
training default) and ``lazystack.torch.ChunkLocalSampler`` draw a whole
batch's specs at once from a counter-based splitmix64 hash of ``(seed,
epoch, index, draw)`` (see [`RandomSampler`][RandomSampler]'s notes); the
samplers whose logic needs a sequence of draws (rejection, weighted cells,
regions) use ``numpy.random.default_rng([seed, epoch, index, ...])`` per
index ([`spec_rng`][spec_rng]).

Samplers hold only the geometry of the stacks (shapes), not the stacks: they
are small and pickle cheaply.

**Resolution levels.** Given the levels of multiscale images (OME-Zarr
pyramids: stacks with a ``level``, grouped by image as in
``StackList.images()``), every sampler draws from full resolution only by
default (``levels="finest"``: the finest level given of each image, level 0
when the whole pyramid was loaded; see ``lazystack.core.levels``). The coarser levels keep their
places in the list (a spec's ``stack`` indexes the list given) but get no
patch: their indices are in the sampler's ``levels_left_out``, and the
sampler logs that it left them out (logger ``lazystack.sampling``, level
INFO). ``levels="all"``, a level number or a sequence of them opts in to
sampling other levels.
"""

from __future__ import annotations

import bisect
import logging
import math
import numbers
import operator
import sys
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, NamedTuple

import numpy as np

from ..core.errors import ChannelIndexError, PatchError, SelectionError, ShapeMismatchError
from ..core.levels import finest_levels, select_levels

__all__ = [
    "FixedSampler",
    "ForegroundSampler",
    "MaskWeightedSampler",
    "PatchSpec",
    "RandomSampler",
    "Sampler",
    "StackGeometry",
    "StratifiedSampler",
    "WholeSampleSampler",
    "check_pairs",
    "geometry",
    "resolve_channels",
    "sampled_stacks",
    "spec_rng",
]

_log = logging.getLogger("lazystack.sampling")

#: Specs computed at a time when a sampler is iterated (epoch 0).
_ITER_BATCH = 4096


class PatchSpec(NamedTuple):
    """One patch: the arguments of ``extract_patch`` plus the stack it comes from.

    Attributes
    ----------
    stack : int
        Index of the stack in the list the sampler was built over.
    sample : int
        Sample index (``S`` times ``T``) in that stack.
    channels : tuple of int or None
        Channels to read; None for all.
    coords : tuple of int
        Top-left corner in the spatial dims (``(Z)YX``).
    patch_size : tuple of int
        Size in the spatial dims.
    """

    stack: int
    sample: int
    channels: tuple[int, ...] | None
    coords: tuple[int, ...]
    patch_size: tuple[int, ...]

    def request(
        self, stacks: Sequence[Any]
    ) -> tuple[Any, int, tuple[int, ...] | None, tuple[int, ...], tuple[int, ...]]:
        """The ``extract_patches`` request of this spec over ``stacks``.

        Parameters
        ----------
        stacks : sequence of LazyImageStack
            The stacks the sampler was built over (or stacks of the same shapes).

        Returns
        -------
        tuple
            ``(stack, sample, channels, coords, patch_size)``.

        Raises
        ------
        IndexError
            If ``stack`` is not an index of ``stacks`` (a negative one included).
        """
        return (_indexed(stacks, self.stack), self.sample, self.channels, self.coords, self.patch_size)


def _indexed(stacks: Sequence[Any], stack: int) -> Any:
    """``stacks[stack]`` for a spec's stack index; a negative or too large one is an error naming it."""
    if not 0 <= stack < len(stacks):
        msg = f"a spec names stack {stack!r}, but {len(stacks)} stack(s) were given: accepted 0 to {len(stacks) - 1}"
        raise IndexError(msg)
    return stacks[stack]


class StackGeometry(NamedTuple):
    """What a sampler needs to know of a stack.

    Attributes
    ----------
    n_samples : int
        Number of samples.
    n_channels : int
        Number of channels.
    spatial_shape : tuple of int
        Shape of the spatial dims (``(Z)YX``).
    """

    n_samples: int
    n_channels: int
    spatial_shape: tuple[int, ...]


def geometry(stack: Any) -> StackGeometry:
    """The [`StackGeometry`][StackGeometry] of a stack, from its canonical ``SC(Z)YX`` ``data_shape``.

    Parameters
    ----------
    stack : ImageStack
        Any object with a ``data_shape`` in ``SC(Z)YX`` order.

    Returns
    -------
    StackGeometry
    """
    shape = tuple(int(n) for n in stack.data_shape)
    if len(shape) not in (4, 5):
        msg = f"stack {getattr(stack, 'source', stack)!r} has data_shape {shape}: expected SCYX or SCZYX"
        raise ShapeMismatchError(msg)
    return StackGeometry(shape[0], shape[1], shape[2:])


def spec_rng(seed: int, epoch: int, index: int, *extra: int) -> np.random.Generator:
    """The random generator of one index of one epoch: a pure function of its arguments.

    Parameters
    ----------
    seed, epoch, index : int
        Non-negative integers.
    *extra : int
        Further non-negative integers (an attempt number ...).

    Returns
    -------
    numpy.random.Generator
        ``numpy.random.default_rng([seed, epoch, index, *extra])``.
    """
    return np.random.default_rng([seed, epoch, index, *extra])


_GOLDEN = 0x9E3779B97F4A7C15  # splitmix64's increment (2**64 / golden ratio, odd)
_MASK64 = 2**64 - 1
_U53 = 2.0**-53


def _mix(z: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser on a ``uint64`` array (a bijection; wraps modulo 2**64)."""
    z = z ^ (z >> np.uint64(30))
    z = z * np.uint64(0xBF58476D1CE4E5B9)
    z = z ^ (z >> np.uint64(27))
    z = z * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def _mix_int(z: int) -> int:
    """``_mix`` on one Python int (modulo 2**64)."""
    z &= _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def _hash_key(*words: int) -> int:
    """A 64-bit key of non-negative integers of any size (each word's 64-bit limbs and its limb count)."""
    h = 0
    for w in words:
        limbs = 0
        while True:
            h = _mix_int((h ^ (w & _MASK64)) + _GOLDEN)
            w >>= 64
            limbs += 1
            if not w:
                break
        h = _mix_int(h + limbs * _GOLDEN)
    return h


def _uniforms(key: int, indices: np.ndarray, n_draws: int) -> np.ndarray:
    """Draws ``0 .. n_draws - 1`` of each index under ``key``: floats in ``[0, 1)``, shape ``(len, n_draws)``.

    Draw ``d`` of index ``i`` is splitmix64's output ``mix(h_i + (d + 1) * G)``
    of the stream ``h_i = mix(key ^ ((i + 1) * G))``: a pure function of
    ``(key, i, d)``, whatever other indices are computed with it.
    """
    g = np.uint64(_GOLDEN)
    with np.errstate(over="ignore"):
        h = _mix((indices.astype(np.uint64) + np.uint64(1)) * g ^ np.uint64(key))
        steps = (np.arange(1, n_draws + 1, dtype=np.uint64) * g)[None, :]
        bits = _mix(h[:, None] + steps)
    return (bits >> np.uint64(11)).astype(np.float64) * _U53


def _uniforms_one(key: int, index: int, n_draws: int) -> list[float]:
    """``_uniforms`` of one index with Python ints (the same bits: wrapping arithmetic modulo 2**64)."""
    h = _mix_int(((index + 1) * _GOLDEN & _MASK64) ^ key)
    return [(_mix_int(h + d * _GOLDEN) >> 11) * _U53 for d in range(1, n_draws + 1)]


def _below(u: np.ndarray, n: np.ndarray) -> np.ndarray:
    """Integers ``floor(u * n)`` in ``[0, n)`` (``int64``), from uniforms ``u`` in ``[0, 1)``."""
    return np.minimum((u * n).astype(np.int64), np.asarray(n, dtype=np.int64) - 1)


def _index_array(indices: Any, n: int) -> np.ndarray:
    """Indices as an ``int64`` array, each checked to be an integer in ``range(n)`` (errors name the first bad one)."""
    arr = np.asarray(indices)
    if (
        arr.ndim != 1
        or (arr.size and arr.dtype.kind not in "iu")
        or arr.dtype == bool
        # a list mixing ints and bools is an int array: True would be taken as 1
        or (isinstance(indices, (list, tuple)) and any(type(i) is not int and _is_bool(i) for i in indices))
    ):
        ints = [_as_index(i, n) for i in indices]  # raises for a non-integer or a bool
        for i in ints:  # before int64: an index past 2**63 would overflow there (not name itself)
            if not 0 <= i < n:
                msg = f"index {i!r} is out of range for a sampler of {n} specs per epoch: accepted 0 to {n - 1}"
                raise IndexError(msg)
        arr = np.asarray(ints, dtype=np.int64)
    if arr.dtype.kind == "u" and arr.size and int(arr.max()) >= n:  # before int64: 2**63 would wrap to negative
        index = int(arr[int(np.argmax(arr >= n))])
        msg = f"index {index!r} is out of range for a sampler of {n} specs per epoch: accepted 0 to {n - 1}"
        raise IndexError(msg)
    arr = arr.astype(np.int64, copy=False)
    bad = (arr < 0) | (arr >= n)
    if bad.any():
        index = int(arr[int(np.argmax(bad))])
        msg = f"index {index!r} is out of range for a sampler of {n} specs per epoch: accepted 0 to {n - 1}"
        raise IndexError(msg)
    return arr


def _int_tuple(name: str, values: Sequence[int] | int, ndim: int) -> tuple[int, ...]:
    if isinstance(values, (int, np.integer)):
        values = (int(values),) * ndim
    try:
        out = tuple(operator.index(v) for v in values)
    except TypeError:
        msg = f"{name} must be an int or a sequence of {ndim} ints, got {values!r}"
        raise PatchError(msg) from None
    if len(out) != ndim:
        msg = f"{name} {out} must have {ndim} entries, one per spatial dim"
        raise PatchError(msg)
    return out


def _positive(name: str, values: Sequence[int] | int, ndim: int) -> tuple[int, ...]:
    """``values`` (``patch_size``, a cell ...) as one positive int per spatial dim (a PatchError otherwise)."""
    out = _int_tuple(name, values, ndim)
    if any(p <= 0 for p in out):
        msg = f"{name} {out} must be positive in every spatial dim"
        raise PatchError(msg)
    return out


def resolve_channels(
    channels: Sequence[int] | int | None, geoms: Sequence[StackGeometry], stacks: Sequence[Any]
) -> Any:
    """Validate a channel selection for every stack; without one, every stack must have as many channels.

    Parameters
    ----------
    channels : int, sequence of int or None
        The selection (None: all channels).
    geoms : sequence of StackGeometry
        The stacks' geometries.
    stacks : sequence of ImageStack
        The stacks (named in errors).

    Returns
    -------
    tuple of int or None
        The selection as a tuple, or None.

    Raises
    ------
    ChannelIndexError
        For an index out of range in some stack, a boolean or a non-integer, or (no selection) different
        channel counts.
    """
    if channels is None:
        counts = {g.n_channels for g in geoms}
        if len(counts) > 1:
            listing = ", ".join(
                f"stack {i} ({getattr(s, 'source', '?')!r}): {g.n_channels}"
                for i, (s, g) in enumerate(zip(stacks, geoms, strict=True))
            )
            msg = (
                f"the stacks have different channel counts ({listing}): patches would not batch together; "
                "pass channels=[...] with indices valid in every stack, or sample the stacks separately"
            )
            raise ChannelIndexError(msg)
        return None
    if isinstance(channels, (int, np.integer)) and not isinstance(channels, bool):
        channels = (int(channels),)
    try:
        given = tuple(channels)  # type: ignore[arg-type]
        chans = tuple(operator.index(c) for c in given if not isinstance(c, (bool, np.bool_)))
    except TypeError:
        msg = f"channels must be None or a sequence of channel indices, got {channels!r}"
        raise ChannelIndexError(msg) from None
    if len(chans) != len(given):
        # operator.index(True) is 1: a mask [True, False, True] would read channels 1, 0, 1
        msg = (
            f"channels must be channel indices, got {list(given)!r} (booleans): "
            "for a mask, pass numpy.flatnonzero(mask)"
        )
        raise ChannelIndexError(msg)
    if not chans:
        msg = "channels must not be empty: give None for all channels or a sequence of indices"
        raise ChannelIndexError(msg)
    for i, (s, g) in enumerate(zip(stacks, geoms, strict=True)):
        bad = [c for c in chans if not 0 <= c < g.n_channels]
        if bad:
            msg = (
                f"channel {bad[0]} is out of range for stack {i} ({getattr(s, 'source', '?')!r}), "
                f"which has {g.n_channels} channel(s): accepted indices are 0 to {g.n_channels - 1}"
            )
            raise ChannelIndexError(msg)
    return chans


def _as_int(name: str, value: Any) -> int:
    """``operator.index(value)``, with an error naming the parameter and the value."""
    try:
        return operator.index(value)
    except TypeError:
        msg = f"{name} must be an integer, got {value!r} ({type(value).__name__})"
        raise TypeError(msg) from None


def _is_bool(value: Any) -> bool:
    """A Python, NumPy or torch boolean (a 0-d bool array or tensor too): ``operator.index`` takes some for 0 / 1."""
    if isinstance(value, (bool, np.bool_)):
        return True
    return str(getattr(value, "dtype", "")) in ("bool", "torch.bool")


def _as_index(value: Any, n: int) -> int:
    """A spec index as an ``int``: an integer, not a bool (``True`` is no index), with an error naming the value."""
    if type(value) is int:  # the common case first
        return value
    if _is_bool(value):
        msg = (
            f"index must be an integer, got {value!r} ({type(value).__name__}): a bool is no index; "
            f"accepted integers 0 to {n - 1}"
        )
        raise TypeError(msg)
    return _as_int("index", value)


def _check_seed(name: str, value: int) -> int:
    if type(value) is not int and _is_bool(value):  # operator.index(True) is 1: True as an epoch is a mistake
        msg = f"{name} must be a non-negative integer, got {value!r} ({type(value).__name__}): a bool is no number"
        raise TypeError(msg)
    v = _as_int(name, value)
    if v < 0:
        msg = f"{name} must be a non-negative integer, got {value!r}"
        raise ValueError(msg)
    return v


def _is_real_number(value: Any) -> bool:
    """A real number, not a bool nor a string: Python / NumPy numbers, ``Fraction``, 0-d numeric arrays and tensors."""
    if isinstance(value, (str, bytes, bool, np.bool_)):
        return False
    if isinstance(value, numbers.Real):
        return True
    try:
        arr = np.asarray(value)
    except (TypeError, ValueError, RuntimeError):
        return False
    return arr.ndim == 0 and arr.dtype.kind in "iuf"


def _check_length(value: int) -> int:
    """A number of specs per epoch: a non-negative integer ``len()`` can return (below ``2**63``)."""
    v = _check_seed("length", value)
    if v > sys.maxsize:
        msg = f"length {value!r} is too large: len() of a sampler must be at most {sys.maxsize} (2**63 - 1)"
        raise ValueError(msg)
    return v


def sampled_stacks(stacks: Sequence[Any], levels: Any = "finest", *, who: str = "sampler") -> tuple[int, ...]:
    """Indices of the stacks a sampler draws from, given their resolution levels.

    Parameters
    ----------
    stacks : sequence of ImageStack
        The stacks (a stack without a ``level`` counts as its own full resolution).
    levels : "finest", "all", int or sequence of int
        ``"finest"`` (default): the finest level given of each image (level 0
        of a whole pyramid); ``"all"`` (or None): every stack; an int, a
        sequence or a string like ``"0,2"``: those levels.
    who : str
        Name of the caller, for the log message and errors.

    Returns
    -------
    tuple of int
        The indices sampled, in order. The others are logged (logger
        ``lazystack.sampling``, INFO) as left out.

    Raises
    ------
    SelectionError
        For no stacks, an invalid ``levels`` or one that selects none of the stacks.
    """
    items = list(stacks)
    if not items:
        msg = f"{who} needs at least one stack, got an empty sequence"
        raise SelectionError(msg)
    finest = isinstance(levels, str) and levels.strip().lower() == "finest"
    keep = {id(s) for s in (finest_levels(items)[0] if finest else select_levels(items, levels))}
    kept = tuple(i for i, s in enumerate(items) if id(s) in keep)
    if not kept:
        found = sorted({getattr(s, "level", None) or 0 for s in items})
        msg = f"{who}: levels={levels!r} selects none of the {len(items)} stack(s) given (their levels: {found})"
        raise SelectionError(msg)
    if len(kept) < len(items):
        out = list(_left_out(len(items), kept))
        _log.info(
            "%s samples %s: %d stack(s) left out as other resolution levels (indices %s); "
            "pass levels='all' or the levels to sample them",
            who,
            "full resolution (the finest level of each image)" if finest else f"levels={levels!r}",
            len(out),
            out,
        )
    return kept


def _left_out(n: int, kept: Iterable[int]) -> tuple[int, ...]:
    keep = set(kept)
    return tuple(i for i in range(n) if i not in keep)


def _random_base(
    stacks: Sequence[Any],
    patch_size: int | Sequence[int],
    length: int,
    seed: int,
    channels: int | Sequence[int] | None,
    levels: Any,
    who: str,
) -> RandomSampler:
    """A RandomSampler's validation of stacks, patch size, seed, channels and levels, on behalf of ``who``."""
    base = RandomSampler.__new__(RandomSampler)
    base._setup(stacks, patch_size, max(1, operator.index(length)), seed, "size", channels, levels, who)
    return base


class Sampler:
    """Base class: ``len(sampler)`` specs per epoch, ``sampler.spec(index, epoch)`` each.

    Subclasses implement [`spec()`][spec] as a pure function of ``(seed, epoch,
    index)`` and ``__len__`` (or set ``length``, the specs per epoch). They
    may override [`epoch_specs()`][epoch_specs] to draw many indices at once
    ([`lazystack.torch.PatchDataset`][lazystack.torch.PatchDataset] calls it
    once per batch), returning the same specs as ``spec()`` of each.

    **Resolution levels.** Given the levels of multiscale images (OME-Zarr
    pyramids: stacks with a ``level``, grouped by image as in
    [`StackList.images()`][lazystack.StackList.images]), every sampler draws
    from full resolution only by default (``levels="finest"``: the finest
    level given of each image, level 0 when the whole pyramid was loaded).
    The coarser levels keep their places in the list (a spec's ``stack``
    indexes the list given) but get no patch: their indices are in
    ``levels_left_out``, and the sampler says so once, when it is built, in
    the log (logger ``lazystack.sampling``, level INFO). ``levels="all"``, a
    level number or a sequence of them opts in to sampling other levels.

    Attributes
    ----------
    seed : int
        The seed.
    levels_left_out : tuple of int
        Indices of the given stacks that get no patch, being other resolution
        levels of an image (empty without pyramids).
    """

    seed: int = 0
    levels_left_out: tuple[int, ...] = ()

    def __len__(self) -> int:
        length = getattr(self, "length", None)  # the samplers drawing a set number of specs per epoch
        if length is None:
            raise NotImplementedError
        return int(length)

    def spec(self, index: int, epoch: int = 0) -> PatchSpec:
        """The spec of ``index`` in ``epoch``.

        Parameters
        ----------
        index : int
            In ``range(len(self))``.
        epoch : int
            Epoch number (non-negative).

        Returns
        -------
        PatchSpec
        """
        raise NotImplementedError

    def _check_index(self, index: int) -> int:
        n = len(self)
        i = _as_index(index, n)
        if not 0 <= i < n:
            msg = f"index {index!r} is out of range for a sampler of {n} specs per epoch: accepted 0 to {n - 1}"
            raise IndexError(msg)
        return i

    def epoch_specs(self, epoch: int = 0, indices: Sequence[int] | None = None) -> list[PatchSpec]:
        """The specs of an epoch (or of some of its indices), in order.

        Parameters
        ----------
        epoch : int
            Epoch number.
        indices : sequence of int, optional
            Indices to compute; all of ``range(len(self))`` by default.

        Returns
        -------
        list of PatchSpec
        """
        idx = range(len(self)) if indices is None else indices
        return [self.spec(i, epoch) for i in idx]  # samplers drawing a batch at once override this

    def __iter__(self) -> Iterator[PatchSpec]:
        n = len(self)
        for start in range(0, n, _ITER_BATCH):  # batch by batch: memory bounded whatever the length
            yield from self.epoch_specs(0, range(start, min(start + _ITER_BATCH, n)))


class RandomSampler(Sampler):
    """Patches drawn uniformly over every valid position, a fixed number per epoch.

    A valid position puts the whole patch inside the image. The stack of an
    index is drawn with probability proportional to ``weights``; then a
    sample and a corner are drawn uniformly.

    Parameters
    ----------
    stacks : sequence of ImageStack
        The stacks to sample (only their ``data_shape`` is kept).
    patch_size : int or sequence of int
        Patch size in the spatial dims (an int for every dim).
    length : int
        Number of patches per epoch.
    seed : int
        Non-negative seed.
    weights : "size", "positions" or sequence of float
        ``"size"`` (default): proportional to a stack's pixel count (samples
        times spatial size); ``"positions"``: to its number of valid
        positions; or one finite non-negative weight per stack.
    channels : int or sequence of int, optional
        Channels of every patch; None (all) requires equal channel counts.
    levels : "finest", "all", int or sequence of int
        Resolution levels to sample: by default the finest level given of
        each image (full resolution), the others listed in
        ``levels_left_out`` (see [`Sampler`][lazystack.Sampler]).

    Raises
    ------
    PatchError
        If the patch does not fit in a stack sampled, or ``patch_size`` has the wrong length.
    ChannelIndexError
        For channels out of range, or stacks with different channel counts and no selection.
    ValueError
        For invalid weights, length or seed.

    Notes
    -----
    The specs of a batch are drawn at once (``epoch_specs(epoch, indices)``,
    what [`lazystack.torch.PatchDataset`][lazystack.torch.PatchDataset] calls
    per batch) from a counter-based hash, vectorised over ``uint64`` numpy
    arrays: draw ``d`` of index ``i`` is splitmix64's output
    ``mix(h_i + (d + 1) * G)`` with ``h_i = mix(key ^ ((i + 1) * G))``,
    ``key`` a hash of ``(seed, epoch)``, ``G = 0x9E3779B97F4A7C15`` and
    ``mix`` the splitmix64 finaliser; its top 53 bits give a float ``u`` in
    ``[0, 1)``, and ``floor(u * n)`` an integer below ``n``. Draw 0 picks the
    stack, draw 1 the sample, draws 2... the corner in each spatial dim. It
    is the same function of ``(seed, epoch, i)`` whether one index or a
    thousand are computed (about 1.5 us per patch in batches of 32, against
    about 45 us for a ``numpy.random.Generator`` per
    index), and the tests check its uniformity with chi-square tests.

    Earlier versions of lazystack drew each index from
    ``numpy.random.default_rng([seed, epoch, index])``: the same seed now
    gives other specs than they did. A manifest written by them replays
    unchanged, from the specs it stores.

    Examples
    --------
    >>> import numpy as np
    >>> from lazystack import LazyImageStack
    >>> stack = LazyImageStack(np.zeros((2, 64, 64), np.uint8), "SYX")
    >>> sampler = RandomSampler([stack], 16, length=4, seed=1)
    >>> sampler.spec(3, epoch=2) == RandomSampler([stack], 16, length=4, seed=1).spec(3, epoch=2)
    True
    """

    def __init__(
        self,
        stacks: Sequence[Any],
        patch_size: int | Sequence[int],
        length: int,
        *,
        seed: int = 0,
        weights: str | Sequence[float] = "size",
        channels: int | Sequence[int] | None = None,
        levels: Any = "finest",
    ) -> None:
        self._setup(stacks, patch_size, length, seed, weights, channels, levels, type(self).__name__)

    def _setup(
        self,
        stacks: Sequence[Any],
        patch_size: int | Sequence[int],
        length: int,
        seed: int,
        weights: str | Sequence[float],
        channels: int | Sequence[int] | None,
        levels: Any,
        who: str,
    ) -> None:
        if not stacks:
            msg = f"{who} needs at least one stack, got an empty sequence"
            raise ValueError(msg)
        self.geometries = [geometry(s) for s in stacks]
        sampled = set(sampled_stacks(stacks, levels, who=who))
        self.levels_left_out = _left_out(len(stacks), sampled)
        ndim = len(self.geometries[min(sampled)].spatial_shape)
        self.patch_size = _positive("patch_size", patch_size, ndim)
        self.length = _check_length(length)
        self.seed = _check_seed("seed", seed)
        self.channels = resolve_channels(channels, self.geometries, stacks)
        positions = []
        for i, (s, g) in enumerate(zip(stacks, self.geometries, strict=True)):
            if i not in sampled:
                positions.append(0)
                continue
            if len(g.spatial_shape) != ndim:
                msg = (
                    f"stack {i} ({getattr(s, 'source', '?')!r}) has {len(g.spatial_shape)} spatial dims "
                    f"(spatial shape {g.spatial_shape}) but stack {min(sampled)} has {ndim} spatial dims: "
                    "patches of one sampler must have the same dims; sample 2-D and 3-D stacks separately"
                )
                raise PatchError(msg)
            if any(p > n for p, n in zip(self.patch_size, g.spatial_shape, strict=True)):
                msg = (
                    f"patch_size {self.patch_size} does not fit in stack {i} ({getattr(s, 'source', '?')!r}) "
                    f"of spatial shape {g.spatial_shape}: a random patch must lie inside the image"
                )
                raise PatchError(msg)
            positions.append(
                g.n_samples * math.prod(n - p + 1 for n, p in zip(g.spatial_shape, self.patch_size, strict=True))
            )
        if isinstance(weights, str):
            if weights == "size":
                w = [float(g.n_samples * math.prod(g.spatial_shape)) for g in self.geometries]
            elif weights == "positions":
                w = [float(p) for p in positions]
            else:
                msg = f"weights must be 'size', 'positions' or one number per stack, got {weights!r}"
                raise ValueError(msg)
        else:
            w = [float(x) for x in weights]
            if len(w) != len(stacks) or any(not 0 <= x < math.inf for x in w):
                msg = f"weights {weights!r} must be {len(stacks)} finite non-negative numbers, one per stack"
                raise ValueError(msg)
        w = [x if i in sampled else 0.0 for i, x in enumerate(w)]
        empty = [i for i, x in enumerate(w) if x > 0 and self.geometries[i].n_samples == 0]
        if empty:
            msg = (
                f"weights {weights!r} give stack {empty[0]} ({getattr(stacks[empty[0]], 'source', '?')!r}) a "
                "positive weight, but it has no samples: nothing to draw from it; give it weight 0 or leave it out"
            )
            raise ValueError(msg)
        total = sum(w)
        if not total > 0:
            msg = f"weights {weights!r} sum to {total}: at least one stack sampled needs a positive weight"
            raise ValueError(msg)
        if total == math.inf:
            msg = f"weights {weights!r} sum to inf: give finite weights of a finite sum (relative sizes are what count)"
            raise ValueError(msg)
        self.weights = tuple(x / total for x in w)
        self._cumulative = np.cumsum(self.weights)
        self._tables = self._make_tables()

    def spec(self, index: int, epoch: int = 0) -> PatchSpec:
        """The spec of ``index`` in ``epoch`` (see [`Sampler.spec()`][Sampler.spec]).

        The same as ``epoch_specs(epoch, [index])[0]``: draws from the
        counter-based hash of ``(seed, epoch, index)`` described in the
        class notes.
        """
        i = self._check_index(index)
        first_valid, n_samples, extents = self._tables
        u = _uniforms_one(_hash_key(self.seed, _check_seed("epoch", epoch)), i, 2 + extents.shape[1])
        cumulative = self._cumulative
        k = min(bisect.bisect_right(cumulative.tolist(), u[0] * float(cumulative[-1])), len(first_valid) - 1)
        k = int(first_valid[k])
        corner = tuple(min(int(x * n), n - 1) for x, n in zip(u[2:], extents[k].tolist(), strict=True))
        n = int(n_samples[k])
        return PatchSpec(k, min(int(u[1] * n), n - 1), self.channels, corner, self.patch_size)

    def epoch_specs(self, epoch: int = 0, indices: Sequence[int] | None = None) -> list[PatchSpec]:
        """The specs of an epoch (or of some of its indices), in order, drawn all at once.

        Draw 0 of an index picks the stack (by weight), draw 1 the sample,
        draws 2... the corner in each spatial dim, each from the index's own
        hash stream (see the module docstring): vectorised over the indices,
        and the same specs as [`spec()`][spec] of each index.

        Parameters
        ----------
        epoch : int
            Epoch number (non-negative).
        indices : sequence of int, optional
            Indices to compute; all of ``range(len(self))`` by default.

        Returns
        -------
        list of PatchSpec
        """
        e = _check_seed("epoch", epoch)
        idx = np.arange(len(self), dtype=np.int64) if indices is None else _index_array(indices, len(self))
        if not idx.size:
            return []
        first_valid, n_samples, extents = self._tables
        u = _uniforms(_hash_key(self.seed, e), idx, 2 + extents.shape[1])
        k = np.searchsorted(self._cumulative, u[:, 0] * self._cumulative[-1], side="right")
        k = first_valid[np.minimum(k, len(first_valid) - 1)]
        samples = _below(u[:, 1], n_samples[k]).tolist()
        corners = _below(u[:, 2:], extents[k]).tolist()
        channels, size = self.channels, self.patch_size
        return [PatchSpec(s, n, channels, tuple(c), size) for s, n, c in zip(k.tolist(), samples, corners, strict=True)]

    def _make_tables(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per stack: the stack drawn for it (the last one of positive weight at or before it), samples, extents."""
        drawn = np.asarray(self.weights) > 0
        first_valid = np.maximum.accumulate(np.where(drawn, np.arange(drawn.size), np.argmax(drawn)))
        n_samples = np.array([g.n_samples for g in self.geometries], np.int64)
        extents = np.ones((len(self.geometries), len(self.patch_size)), np.int64)
        for i in np.flatnonzero(drawn):
            extents[i] = [n - p + 1 for n, p in zip(self.geometries[i].spatial_shape, self.patch_size, strict=True)]
        return first_valid, n_samples, extents

    def _draw(self, rng: np.random.Generator) -> PatchSpec:
        """A spec drawn from a generator (the rejection attempts of [`ForegroundSampler`][ForegroundSampler])."""
        k = int(np.searchsorted(self._cumulative, rng.random() * self._cumulative[-1], side="right"))
        k = min(k, len(self.geometries) - 1)
        while self.weights[k] == 0:  # a zero-weight stack is never drawn (edge of the cumulative sum)
            k -= 1
        g = self.geometries[k]
        sample = int(rng.integers(g.n_samples))
        coords = tuple(int(rng.integers(n - p + 1)) for n, p in zip(g.spatial_shape, self.patch_size, strict=True))
        return PatchSpec(k, sample, self.channels, coords, self.patch_size)


class StratifiedSampler(Sampler):
    """Random patches drawn in turn from given regions, so every region gets its share.

    Index ``i`` of an epoch draws from region ``i % len(regions)``, uniformly
    over the positions whose patch lies inside the region.

    Parameters
    ----------
    stacks : sequence of ImageStack
        The stacks the regions refer to.
    regions : sequence of (stack, sample, start, stop)
        Each region: a stack index, a sample index, and the corner and end
        (exclusive) of a box in the spatial dims.
    patch_size : int or sequence of int
        Patch size in the spatial dims.
    length : int
        Number of patches per epoch.
    seed : int
        Non-negative seed.
    channels : int or sequence of int, optional
        Channels of every patch.
    levels : "finest", "all", int or sequence of int
        Resolution levels to sample: by default the finest level given of
        each image (full resolution), the others listed in
        ``levels_left_out`` (see [`Sampler`][lazystack.Sampler]).

    Raises
    ------
    PatchError
        If a region is outside its stack or smaller than the patch.
    SelectionError
        If a region names a stack at a level not sampled (a coarser level, by default).
    """

    def __init__(
        self,
        stacks: Sequence[Any],
        regions: Sequence[tuple[int, int, Sequence[int], Sequence[int]]],
        patch_size: int | Sequence[int],
        length: int,
        *,
        seed: int = 0,
        channels: int | Sequence[int] | None = None,
        levels: Any = "finest",
    ) -> None:
        self.geometries = [geometry(s) for s in stacks]
        sampled = sampled_stacks(stacks, levels, who="StratifiedSampler")
        self.levels_left_out = _left_out(len(stacks), sampled)
        ndim = len(self.geometries[0].spatial_shape)
        self.patch_size = _positive("patch_size", patch_size, ndim)
        self.length = _check_length(length)
        self.seed = _check_seed("seed", seed)
        self.channels = resolve_channels(channels, self.geometries, stacks)
        if not regions:
            msg = "StratifiedSampler needs at least one region, got an empty sequence"
            raise ValueError(msg)
        self.regions: list[tuple[int, int, tuple[int, ...], tuple[int, ...]]] = []
        for r, (k, sample, start, stop) in enumerate(regions):
            if not 0 <= k < len(self.geometries):
                msg = f"region {r} names stack {k}: accepted are 0 to {len(self.geometries) - 1}"
                raise PatchError(msg)
            if k in self.levels_left_out:
                msg = (
                    f"region {r} names stack {k} ({getattr(stacks[k], 'source', '?')!r}), resolution level "
                    f"{getattr(stacks[k], 'level', None)} of an image given at a finer level too, which "
                    f"levels={levels!r} leaves out: pass levels='all' (or its level) to sample it"
                )
                raise SelectionError(msg)
            g = self.geometries[k]
            lo = _int_tuple("region start", start, ndim)
            hi = _int_tuple("region stop", stop, ndim)
            bad = not 0 <= sample < g.n_samples or any(
                not (a >= 0 and b <= n and b - a >= p)
                for a, b, n, p in zip(lo, hi, g.spatial_shape, self.patch_size, strict=True)
            )
            if bad:
                msg = (
                    f"region {r} (stack {k}, sample {sample}, {lo} to {hi}) must lie inside the stack "
                    f"({g.n_samples} samples, spatial shape {g.spatial_shape}) and hold a patch of {self.patch_size}"
                )
                raise PatchError(msg)
            self.regions.append((k, int(sample), lo, hi))

    def spec(self, index: int, epoch: int = 0) -> PatchSpec:
        """The spec of ``index`` in ``epoch`` (see [`Sampler.spec()`][Sampler.spec])."""
        i = self._check_index(index)
        k, sample, lo, hi = self.regions[i % len(self.regions)]
        rng = spec_rng(self.seed, _check_seed("epoch", epoch), i)
        coords = tuple(int(a + rng.integers(b - a - p + 1)) for a, b, p in zip(lo, hi, self.patch_size, strict=True))
        return PatchSpec(k, sample, self.channels, coords, self.patch_size)


class FixedSampler(Sampler):
    """A fixed list of specs, the same every epoch (a manifest replayed, a validation set).

    Parameters
    ----------
    specs : sequence of PatchSpec
        The specs, in order.
    """

    def __init__(self, specs: Sequence[PatchSpec]) -> None:
        self.specs = [PatchSpec(*s) for s in specs]

    def __len__(self) -> int:
        return len(self.specs)

    def spec(self, index: int, epoch: int = 0) -> PatchSpec:
        """The spec of ``index`` (every epoch alike)."""
        return self.specs[self._check_index(index)]


class WholeSampleSampler(Sampler):
    """One spec per sample of every stack sampled: the whole image.

    Parameters
    ----------
    stacks : sequence of ImageStack
        The stacks.
    channels : int or sequence of int, optional
        Channels of every patch.
    levels : "finest", "all", int or sequence of int
        Resolution levels to sample: by default the finest level given of
        each image (full resolution), the others listed in
        ``levels_left_out`` (see [`Sampler`][lazystack.Sampler]).
    """

    def __init__(
        self, stacks: Sequence[Any], *, channels: int | Sequence[int] | None = None, levels: Any = "finest"
    ) -> None:
        self.geometries = [geometry(s) for s in stacks]
        self.levels_left_out = _left_out(len(stacks), sampled_stacks(stacks, levels, who="WholeSampleSampler"))
        self.channels = resolve_channels(channels, self.geometries, stacks)
        counts = [0 if i in self.levels_left_out else g.n_samples for i, g in enumerate(self.geometries)]
        self._offsets = np.cumsum([0, *counts])

    def __len__(self) -> int:
        return int(self._offsets[-1])

    def spec(self, index: int, epoch: int = 0) -> PatchSpec:
        """The spec of ``index``: stack and sample in order (every epoch alike)."""
        i = self._check_index(index)
        k = int(np.searchsorted(self._offsets, i, side="right")) - 1
        g = self.geometries[k]
        return PatchSpec(k, i - int(self._offsets[k]), self.channels, (0,) * len(g.spatial_shape), g.spatial_shape)


def check_pairs(*groups: Sequence[Any], names: Sequence[str] | None = None) -> None:
    """Check that stacks to be sampled at the same specs (input / target / mask) match.

    Every group must hold as many stacks, and the stacks at one position the
    same number of samples and the same spatial shape (channel counts may
    differ).

    Parameters
    ----------
    *groups : sequence of ImageStack
        Lists of stacks, e.g. inputs and targets.
    names : sequence of str, optional
        Names of the groups for error messages (``"input"``, ``"target"`` ...).

    Raises
    ------
    ShapeMismatchError
        Naming the groups, the position and the shapes that differ.
    """
    labels = list(names) if names is not None else [f"group {i}" for i in range(len(groups))]
    if len(groups) < 2:
        return
    first = groups[0]
    for label, group in zip(labels[1:], groups[1:], strict=True):
        if len(group) != len(first):
            msg = f"{labels[0]} has {len(first)} stack(s) but {label} has {len(group)}: pairs need equal counts"
            raise ShapeMismatchError(msg)
        for i, (a, b) in enumerate(zip(first, group, strict=True)):
            ga, gb = geometry(a), geometry(b)
            if ga.n_samples != gb.n_samples or ga.spatial_shape != gb.spatial_shape:
                msg = (
                    f"{labels[0]} stack {i} ({getattr(a, 'source', '?')!r}) has {ga.n_samples} sample(s) of "
                    f"spatial shape {ga.spatial_shape} but {label} stack {i} ({getattr(b, 'source', '?')!r}) has "
                    f"{gb.n_samples} of {gb.spatial_shape}: paired stacks must match in samples and spatial shape"
                )
                raise ShapeMismatchError(msg)


class ForegroundSampler(RandomSampler):
    """Random patches with at least some foreground in a mask, found by bounded rejection.

    Index ``i`` of epoch ``e`` tries the random specs of
    ``spec_rng(seed, e, i, attempt)`` for ``attempt = 0, 1, ...`` and keeps
    the first whose mask patch has a foreground fraction (mask > 0) of at
    least ``min_foreground``; after ``max_attempts`` it keeps the attempt
    with the most foreground. The result is still a pure function of the
    seed, epoch and index (the masks are read, never a shared state).

    Parameters
    ----------
    stacks : sequence of ImageStack
        The stacks to sample.
    masks : sequence of ImageStack
        One mask stack per stack (same samples and spatial shape; its first channel is used).
    patch_size : int or sequence of int
        Patch size in the spatial dims.
    length : int
        Patches per epoch.
    min_foreground : float
        Fraction of mask pixels > 0 a patch needs, in ``[0, 1]``.
    max_attempts : int
        Bound on the specs tried per index (>= 1).
    seed : int
        Non-negative seed.
    weights : "size", "positions" or sequence of float
        How stacks are drawn (as for [`RandomSampler`][RandomSampler]).
    channels : int or sequence of int, optional
        Channels of every patch.
    levels : "finest", "all", int or sequence of int
        Resolution levels to sample: by default the finest level given of
        each image (full resolution), the others listed in
        ``levels_left_out`` (see [`Sampler`][lazystack.Sampler]).
    """

    def __init__(
        self,
        stacks: Sequence[Any],
        masks: Sequence[Any],
        patch_size: int | Sequence[int],
        length: int,
        *,
        min_foreground: float = 0.1,
        max_attempts: int = 10,
        seed: int = 0,
        weights: str | Sequence[float] = "size",
        channels: int | Sequence[int] | None = None,
        levels: Any = "finest",
    ) -> None:
        super().__init__(stacks, patch_size, length, seed=seed, weights=weights, channels=channels, levels=levels)
        check_pairs(stacks, masks, names=["stacks", "masks"])
        if not _is_real_number(min_foreground):
            kind = type(min_foreground).__name__
            msg = f"min_foreground must be a fraction in [0, 1], got {min_foreground!r} ({kind})"
            raise TypeError(msg)
        if not 0 <= min_foreground <= 1:
            msg = f"min_foreground must be a fraction in [0, 1], got {min_foreground!r}"
            raise ValueError(msg)
        attempts = _as_int("max_attempts", max_attempts)
        if attempts < 1:
            msg = f"max_attempts must be at least 1, got {max_attempts!r}"
            raise ValueError(msg)
        self.masks = list(masks)
        self.min_foreground = float(min_foreground)
        self.max_attempts = attempts

    def foreground(self, spec: PatchSpec) -> float:
        """Fraction of the mask's pixels > 0 under a spec (first mask channel).

        Parameters
        ----------
        spec : PatchSpec
            A spec of this sampler.

        Returns
        -------
        float
        """
        patch = self.masks[spec.stack].extract_patch(spec.sample, [0], spec.coords, spec.patch_size)
        return float(np.count_nonzero(patch > 0)) / patch.size  # not nonzero: -1 (ignore) and NaN are background

    def draw(self, index: int, epoch: int = 0) -> tuple[PatchSpec, int, float]:
        """The spec of ``index`` in ``epoch`` with the attempts it took and its foreground fraction.

        Parameters
        ----------
        index : int
            In ``range(len(self))``.
        epoch : int
            Epoch number.

        Returns
        -------
        tuple
            ``(spec, attempts, foreground fraction)``.
        """
        i = self._check_index(index)
        e = _check_seed("epoch", epoch)
        best: tuple[PatchSpec, float] | None = None
        for attempt in range(self.max_attempts):
            spec = self._draw(spec_rng(self.seed, e, i, attempt))
            fraction = self.foreground(spec)
            if fraction >= self.min_foreground:
                return spec, attempt + 1, fraction
            if best is None or fraction > best[1]:
                best = (spec, fraction)
        assert best is not None
        return best[0], self.max_attempts, best[1]

    def spec(self, index: int, epoch: int = 0) -> PatchSpec:
        """The spec of ``index`` in ``epoch`` (see [`draw()`][draw])."""
        return self.draw(index, epoch)[0]

    def epoch_specs(self, epoch: int = 0, indices: Sequence[int] | None = None) -> list[PatchSpec]:
        """The specs of an epoch (or of some of its indices), in order: [`spec()`][spec] of each."""
        return Sampler.epoch_specs(self, epoch, indices)


class MaskWeightedSampler(Sampler):
    """Random patches placed where a mask has foreground, in proportion to it (at cell resolution).

    At construction each mask is summarised (with dask, in parallel) into
    foreground counts (mask > 0, first channel) per cell of a coarse grid.
    Index ``i`` of epoch ``e`` draws, from ``spec_rng(seed, e, i)``, a cell
    with probability proportional to its count, a pixel uniformly in that
    cell, and the valid patch position that centres on the pixel (moved
    inside the image at the edges): every patch contains foreground cells'
    pixels, and regions are drawn by how much foreground they hold.

    Parameters
    ----------
    stacks : sequence of ImageStack
        The stacks to sample.
    masks : sequence of ImageStack
        One mask per stack (same samples and spatial shape).
    patch_size : int or sequence of int
        Patch size in the spatial dims (must fit in every stack).
    length : int
        Patches per epoch.
    cell : int or sequence of int, optional
        Cell size of the coarse grid (default: the patch size).
    seed : int
        Non-negative seed.
    channels : int or sequence of int, optional
        Channels of every patch.
    levels : "finest", "all", int or sequence of int
        Resolution levels to sample: by default the finest level given of
        each image (full resolution), the others listed in
        ``levels_left_out`` (see [`Sampler`][lazystack.Sampler]).

    Raises
    ------
    ValueError
        If no mask has any foreground.
    """

    def __init__(
        self,
        stacks: Sequence[Any],
        masks: Sequence[Any],
        patch_size: int | Sequence[int],
        length: int,
        *,
        cell: int | Sequence[int] | None = None,
        seed: int = 0,
        channels: int | Sequence[int] | None = None,
        levels: Any = "finest",
    ) -> None:
        import dask
        import dask.array as da

        base = _random_base(stacks, patch_size, length, seed, channels, levels, "MaskWeightedSampler")
        self.levels_left_out = base.levels_left_out
        check_pairs(stacks, masks, names=["stacks", "masks"])
        self.geometries, self.patch_size, self.channels = base.geometries, base.patch_size, base.channels
        self.length = _check_length(length)
        self.seed = base.seed
        ndim = len(self.patch_size)
        self.cell = self.patch_size if cell is None else _positive("cell", cell, ndim)
        summaries = []
        for k, m in enumerate(masks):
            if k in self.levels_left_out or self.geometries[k].n_samples == 0:  # no cell: never drawn, never read
                summaries.append(np.zeros((0,) * (1 + ndim), np.int64))
                continue
            fg = m.data[:, 0] > 0
            pad = [(0, 0)] + [(0, -n % c) for n, c in zip(fg.shape[1:], self.cell, strict=True)]
            fg = da.pad(fg, pad) if any(p for _, p in pad) else fg
            summaries.append(da.coarsen(np.sum, fg, {1 + d: c for d, c in enumerate(self.cell)}))
        counts = dask.compute(*summaries)
        self.cell_counts = [np.asarray(c, dtype=np.int64) for c in counts]
        self._cumulative = np.cumsum(np.concatenate([c.ravel() for c in self.cell_counts]))
        if self._cumulative.size == 0 or self._cumulative[-1] == 0:
            names = [str(getattr(m, "source", "?")) for m in masks]
            msg = (
                f"MaskWeightedSampler: the masks {names} have no foreground (no pixel > 0) in the stacks sampled: "
                "nothing to sample; give masks with at least one pixel > 0"
            )
            raise ValueError(msg)
        self._offsets = np.cumsum([0] + [c.size for c in self.cell_counts])

    def spec(self, index: int, epoch: int = 0) -> PatchSpec:
        """The spec of ``index`` in ``epoch`` (see the class description)."""
        i = self._check_index(index)
        rng = spec_rng(self.seed, _check_seed("epoch", epoch), i)
        flat = int(np.searchsorted(self._cumulative, rng.integers(int(self._cumulative[-1])), side="right"))
        k = int(np.searchsorted(self._offsets, flat, side="right")) - 1
        where = np.unravel_index(flat - int(self._offsets[k]), self.cell_counts[k].shape)
        sample, cells = int(where[0]), [int(w) for w in where[1:]]
        coords = []
        for j, n, c, p in zip(cells, self.geometries[k].spatial_shape, self.cell, self.patch_size, strict=True):
            lo, hi = j * c, min((j + 1) * c, n)
            pixel = lo + int(rng.integers(hi - lo))
            coords.append(min(max(pixel - p // 2, 0), n - p))
        return PatchSpec(k, sample, self.channels, tuple(coords), self.patch_size)
