"""Per-channel statistics over many stacks, computed chunk by chunk with dask.

[`channel_statistics()`][channel_statistics] reduces any list of stacks (different shapes and
dtypes allowed, the same number of channels) to per-channel mean, standard
deviation, minimum, maximum, count and percentiles, on whatever dask
scheduler is active (threads, processes, a [`distributed.Client`][distributed.Client]).

How it is computed
------------------
Every chunk of every stack (the chunks of its dask array, in the stack's own
axes) becomes one task that reads the chunk straight from the stack and
returns small per-channel partial results; partials are merged in a tree
(``split_every`` at a time), so no task holds more than one chunk and the graph
carries no pixel data: each stack enters it once, as its pickled recipe (a
file-backed stack pickles as its path and options). Stack-likes other than
[`LazyImageStack`][lazystack.LazyImageStack] are reduced over the chunks of their
canonical ``.data``.

- **Mean and standard deviation**: each chunk gives ``(count, mean, M2)`` in
  float64 (``M2`` is the sum of squared deviations from the chunk's own mean,
  computed in slices of at most 4 Mi values); partials are merged with the
  pairwise update of Chan, Golub & LeVeque (1979). There is no sum of squares,
  so the result has float64 accuracy whatever the data's scale or offset.
  ``std`` is the population standard deviation (``ddof=0``, as ``numpy.std``).
- **Percentiles** use numpy's default definition (linear interpolation
  between order statistics) and are computed from per-channel histograms:

  * 8- and 16-bit integer (and bool) data: a bin per integer value, in the
    same pass as the moments (which are then computed from the histogram,
    exactly, in float64) — **exact**;
  * other integer data whose per-channel range spans at most ``bins``
    values (within ±2**53, where float64 holds every integer): a bin per
    integer value in a second pass — **exact**;
  * floating-point data (and wider integer ranges): ``bins`` equal bins
    between the channel's minimum and maximum in a second pass (halved until
    float64 tells their edges apart, for a range only a few float64 values
    wide). An order
    statistic is replaced by the centre of its bin (the extremes by the exact
    minimum / maximum), so every percentile is within
    ``percentile_error = (max - min) / bins`` of numpy's value (the actual
    error is at most half that, plus float rounding).
    [`ChannelStatistics.percentile_error`][ChannelStatistics.percentile_error] gives the bound per channel
    (0 where exact).

Non-finite values (NaN, ±inf) of floating-point data are ignored, as
``numpy.nanmean`` ignores NaN; ``count`` is the number of values used.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from itertools import accumulate, pairwise, product
from typing import Any
from uuid import uuid4

import numpy as np

from ..core.errors import ShapeMismatchError, UnsupportedSourceError
from ..core.levels import finest_levels, select_levels
from ..stack import LazyImageStack
from .progress import compute

__all__ = ["ChannelStatistics", "channel_statistics"]

#: Most histogram bins per channel (``channel_statistics(bins=...)``): 128 MiB of counts per channel and task.
MAX_BINS = 1 << 24
#: Values handled at once per channel when computing moments (bounds float64 temporaries to 32 MiB).
_SLICE = 1 << 22
#: Dtypes whose every value gets its own histogram bin in the first pass.
_SMALL_INT_KINDS = {np.dtype(t) for t in (np.bool_, np.uint8, np.int8, np.uint16, np.int16)}


@dataclass(frozen=True, eq=False)
class ChannelStatistics:
    """Per-channel statistics of one or more stacks (arrays of length ``C``).

    Attributes
    ----------
    mean, std, min, max : numpy.ndarray
        float64 arrays of length ``C``; ``std`` has ``ddof=0``.
    count : numpy.ndarray
        int64 array of length ``C``: values used per channel.
    percentiles : dict of float to numpy.ndarray
        Percentile level (0 to 100) to a float64 array of length ``C``.
    percentile_error : numpy.ndarray
        Bound on ``abs(percentile - numpy's exact percentile)`` per channel
        (0 where the percentiles are exact). For a ``sample_fraction`` run
        the bound holds against numpy's value *over the sampled chunks*.
    sample_fraction : float or None
        The fraction of chunks read (None: all of them).
    n_stacks : int
        Number of stacks reduced.
    levels_left_out : int
        Number of stacks given but left out as coarser resolution levels of an
        image whose finer level was given too (see ``levels`` of
        [`channel_statistics()`][channel_statistics]).
    """

    mean: np.ndarray
    std: np.ndarray
    min: np.ndarray
    max: np.ndarray
    count: np.ndarray
    percentiles: dict[float, np.ndarray] = field(default_factory=dict)
    percentile_error: np.ndarray = field(default_factory=lambda: np.zeros(0))
    sample_fraction: float | None = None
    n_stacks: int = 1
    levels_left_out: int = 0

    @property
    def n_channels(self) -> int:
        """Number of channels."""
        return int(self.mean.shape[0])

    @property
    def percentile_levels(self) -> tuple[float, ...]:
        """The percentile levels, in the order requested."""
        return tuple(self.percentiles)

    def percentile(self, q: float) -> np.ndarray:
        """Return the per-channel values of percentile ``q``.

        Raises
        ------
        KeyError
            If ``q`` was not computed (the message lists those that were).
        """
        for level, values in self.percentiles.items():
            if math.isclose(level, float(q)):
                return values
        msg = f"percentile {q} was not computed; available levels: {list(self.percentiles)}"
        raise KeyError(msg)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict (lists of floats; percentile levels as strings)."""
        return {
            "n_channels": self.n_channels,
            "n_stacks": self.n_stacks,
            "levels_left_out": self.levels_left_out,
            "sample_fraction": self.sample_fraction,
            "count": [int(v) for v in self.count],
            "mean": _floats(self.mean),
            "std": _floats(self.std),
            "min": _floats(self.min),
            "max": _floats(self.max),
            "percentiles": {repr(float(q)): _floats(v) for q, v in self.percentiles.items()},
            "percentile_error": _floats(self.percentile_error),
        }

    def to_json(self, **kwargs: Any) -> str:
        """[`to_dict()`][to_dict] as a JSON string (``kwargs`` go to `json.dumps()`)."""
        return json.dumps(self.to_dict(), **kwargs)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ChannelStatistics:
        """Rebuild statistics from [`to_dict()`][to_dict] output."""

        def arr(values: Sequence[float | None]) -> np.ndarray:
            return np.array([np.nan if v is None else v for v in values], dtype=np.float64)

        return cls(
            mean=arr(data["mean"]),
            std=arr(data["std"]),
            min=arr(data["min"]),
            max=arr(data["max"]),
            count=np.asarray(data["count"], dtype=np.int64),
            percentiles={float(q): arr(vals) for q, vals in data.get("percentiles", {}).items()},
            percentile_error=arr(data.get("percentile_error", [0.0] * len(data["mean"]))),
            sample_fraction=data.get("sample_fraction"),
            n_stacks=int(data.get("n_stacks", 1)),
            levels_left_out=int(data.get("levels_left_out", 0)),
        )

    def __repr__(self) -> str:
        def fmt(a: np.ndarray) -> str:
            return np.array2string(np.asarray(a), precision=4, separator=", ")

        lines = [f"<ChannelStatistics C={self.n_channels} stacks={self.n_stacks} count={fmt(self.count)}"]
        lines += [f"  {name:<6}{fmt(getattr(self, name))}" for name in ("mean", "std", "min", "max")]
        lines += [f"  p{q:<5g}{fmt(v)}" for q, v in self.percentiles.items()]
        return "\n".join(lines) + ">"


def _floats(a: np.ndarray) -> list[float | None]:
    return [None if not np.isfinite(v) else float(v) for v in np.asarray(a, dtype=np.float64)]


# -- per-chunk partial results ----------------------------------------------------------
# A partial is a dict of per-channel arrays: n (int64), mean, m2, min, max (float64) and,
# optionally, "hist": a list (one per channel) of (offset, counts) pairs -- counts[i] is the
# number of values equal to offset + i (integer bins) or falling in bin offset + i.


def _finite(values: np.ndarray) -> np.ndarray:
    if values.dtype.kind == "f":
        ok = np.isfinite(values)
        if not ok.all():
            return values[ok]
    return values


def _moments(values: np.ndarray) -> tuple[int, float, float]:
    """(count, mean, M2) of a 1-D array, in float64 slices merged with Chan's update."""
    n_tot, mean_tot, m2_tot = 0, 0.0, 0.0
    for start in range(0, values.size, _SLICE):
        part = values[start : start + _SLICE].astype(np.float64)
        n = part.size
        with np.errstate(over="ignore"):
            mean = float(part.sum()) / n
        if not math.isfinite(mean):  # the sum of values near the float64 maximum overflowed; their mean did not
            mean = float((part / n).sum())
        part -= mean
        with np.errstate(over="ignore"):  # deviations past 1e154: M2 (and the std) is inf, as float64 holds no more
            m2 = float(np.dot(part, part))
        n_tot, mean_tot, m2_tot = _chan(n_tot, mean_tot, m2_tot, n, mean, m2)
    return n_tot, mean_tot, m2_tot


def _chan(na: Any, ma: Any, m2a: Any, nb: Any, mb: Any, m2b: Any) -> tuple[Any, Any, Any]:
    """Chan et al.'s pairwise merge of (count, mean, M2); works on scalars and arrays."""
    n = na + nb
    with np.errstate(invalid="ignore", divide="ignore"):
        with np.errstate(over="ignore"):
            delta = mb - ma
        frac = np.where(n > 0, nb / np.maximum(n, 1), 0.0)
        # means of opposite signs near the float64 maximum: their difference overflows, a weighted sum does not
        mean = np.where(np.isfinite(delta), ma + delta * frac, ma * (1 - frac) + mb * frac)
        # (delta * frac) * (delta * na), not delta * delta first: |delta| > 1e154 squared is inf, and inf * 0 (an
        # empty partial merged into one of mean 1e300) was NaN
        m2 = m2a + m2b + np.where(na > 0, (delta * frac) * (delta * na), 0.0)
    if np.ndim(n) == 0:
        return int(n), float(mean), float(m2)
    return n, mean, m2


def _small_int_counts(v: np.ndarray) -> tuple[int, np.ndarray]:
    """Exact histogram of 8/16-bit integers (or bools): (offset, counts), trimmed to the occupied range."""
    if v.dtype.kind == "i":  # order-preserving map onto the unsigned type of the same size
        bits = 8 * v.dtype.itemsize
        u = v.view(f"u{v.dtype.itemsize}") ^ np.array(1 << (bits - 1), dtype=f"u{v.dtype.itemsize}")
        base = -(1 << (bits - 1))
    else:
        u, base = (v.view(np.uint8) if v.dtype.kind == "b" else v), 0
    counts = np.bincount(u.ravel())
    nonzero = np.flatnonzero(counts)
    first = int(nonzero[0])
    return base + first, counts[first : int(nonzero[-1]) + 1].astype(np.int64)


def _moments_from_counts(offset: int, counts: np.ndarray) -> tuple[int, float, float]:
    values = offset + np.arange(counts.size, dtype=np.float64)
    n = int(counts.sum())
    w = counts.astype(np.float64)
    mean = float(w @ values) / n
    d = values - mean
    return n, mean, float(w @ (d * d))


def _block_partial(values: np.ndarray, c0: int, c: int, small_int: bool) -> dict[str, Any]:
    """First pass over one chunk's ``(channels, values)`` (channels ``c0...`` of ``c``): moments, min, max.

    For 8/16-bit integers the moments come from the chunk's exact histogram
    (one ``bincount`` per channel); otherwise from float64 slices of the values.
    """
    out: dict[str, Any] = {
        "n": np.zeros(c, dtype=np.int64),
        "mean": np.zeros(c),
        "m2": np.zeros(c),
        "min": np.full(c, np.inf),
        "max": np.full(c, -np.inf),
    }
    hists: list[tuple[int, np.ndarray]] = [(0, np.zeros(0, dtype=np.int64))] * c
    for ch in range(c0, c0 + values.shape[0]):
        v = _finite(values[ch - c0])
        if v.size == 0:
            continue
        if small_int:
            offset, counts = _small_int_counts(np.ascontiguousarray(v))
            hists[ch] = (offset, counts)
            n, mean, m2 = _moments_from_counts(offset, counts)
            lo, hi = offset, offset + counts.size - 1
        else:
            n, mean, m2 = _moments(v)
            lo, hi = v.min(), v.max()
        out["n"][ch], out["mean"][ch], out["m2"][ch] = n, mean, m2
        out["min"][ch], out["max"][ch] = float(lo), float(hi)
    if small_int:
        out["hist"] = hists
    return out


def _block_histogram(
    values: np.ndarray, c0: int, c: int, lo: np.ndarray, hi: np.ndarray, bins: int, exact: bool
) -> dict[str, Any]:
    """Second pass over one chunk: per-channel histograms between the global min and max."""
    hists: list[tuple[int, np.ndarray]] = [(0, np.zeros(0, dtype=np.int64))] * c
    for ch in range(c0, c0 + values.shape[0]):
        v = _finite(values[ch - c0])
        if not np.isfinite(lo[ch]):  # channel without values
            continue
        if exact:
            offset = int(lo[ch])
            counts = np.bincount((v.astype(np.int64) - offset).ravel(), minlength=int(hi[ch]) - offset + 1)
            hists[ch] = (0, counts.astype(np.int64))
        elif lo[ch] == hi[ch]:
            hists[ch] = (0, np.array([v.size], dtype=np.int64))
        else:
            f = _span_factor(float(lo[ch]), float(hi[ch]))
            n = _finite_bins(float(lo[ch]) * f, float(hi[ch]) * f, bins)
            counts = np.zeros(n, dtype=np.int64)
            for start in range(0, v.size, _SLICE):  # float64 edges whatever the data's dtype
                part = v[start : start + _SLICE].astype(np.float64) * f
                counts += np.histogram(part, bins=n, range=(float(lo[ch]) * f, float(hi[ch]) * f))[0]
            hists[ch] = (0, counts)
    return {"hist": hists}


def _span_factor(lo: float, hi: float) -> float:
    """1.0, or 0.5 when ``hi - lo`` overflows float64 (values of both signs near its maximum).

    The histogram of such a channel is taken over the halved values (exact: a power of two), whose span is finite;
    ``np.histogram`` over an infinite span indexed its bins with NaN (an IndexError).
    """
    with np.errstate(over="ignore"):
        return 1.0 if math.isfinite(hi - lo) else 0.5


@lru_cache(maxsize=256)
def _finite_bins(lo: float, hi: float, bins: int) -> int:
    """The most bins, up to ``bins`` (halved), whose float64 edges from ``lo`` to ``hi`` increase strictly.

    ``np.histogram`` refuses more ("Too many bins for data range"): 64-bit integers past 2**53 or float64 values a
    few ulps apart span fewer distinct float64 numbers than ``bins``.
    """
    while bins > 1 and not bool(np.all(np.diff(np.linspace(lo, hi, bins + 1)) > 0)):
        bins //= 2
    return bins


def _merge_hist(a: tuple[int, np.ndarray], b: tuple[int, np.ndarray]) -> tuple[int, np.ndarray]:
    (oa, ca), (ob, cb) = a, b
    if ca.size == 0 or cb.size == 0:
        return b if ca.size == 0 else a
    lo = min(oa, ob)
    out = np.zeros(max(oa + ca.size, ob + cb.size) - lo, dtype=np.int64)
    out[oa - lo : oa - lo + ca.size] += ca
    out[ob - lo : ob - lo + cb.size] += cb
    return lo, out


def _merge(*parts: dict[str, Any]) -> dict[str, Any]:
    """Merge partial results (associative, so it is applied as a tree)."""
    acc = dict(parts[0])
    for p in parts[1:]:
        if "n" in acc:
            acc["n"], acc["mean"], acc["m2"] = _chan(acc["n"], acc["mean"], acc["m2"], p["n"], p["mean"], p["m2"])
            acc["min"] = np.minimum(acc["min"], p["min"])
            acc["max"] = np.maximum(acc["max"], p["max"])
        if "hist" in acc:
            acc["hist"] = [_merge_hist(x, y) for x, y in zip(acc["hist"], p["hist"], strict=True)]
    return acc


# -- graph construction ------------------------------------------------------------------


def _as_stack_list(stacks: Any) -> list[Any]:
    if hasattr(stacks, "data") and hasattr(stacks, "data_shape"):
        return [stacks]
    if isinstance(stacks, (str, bytes)) or not isinstance(stacks, Sequence):
        msg = f"channel_statistics expects a stack or a sequence of stacks, got {type(stacks).__name__}"
        raise UnsupportedSourceError(msg)
    items = list(stacks)
    if not items:
        msg = "channel_statistics got no stacks: pass a stack or a non-empty sequence of stacks"
        raise ValueError(msg)
    bad = [s for s in items if not (hasattr(s, "data") and hasattr(s, "data_shape"))]
    if bad:
        msg = f"channel_statistics expects lazystack stacks (with .data), got {type(bad[0]).__name__}: {bad[0]!r:.80}"
        raise UnsupportedSourceError(msg)
    return items


def _check_channels(stacks: list[Any]) -> int:
    counts = [int(s.data_shape[1]) for s in stacks]
    if len(set(counts)) > 1:
        detail = ", ".join(f"{s.source!r}: {n}" for s, n in list(zip(stacks, counts, strict=True))[:6])
        msg = (
            f"channel_statistics needs the same number of channels in every stack, got {sorted(set(counts))} "
            f"({detail}{', ...' if len(stacks) > 6 else ''}); select channels with stack.isel(C=...) first"
        )
        raise ShapeMismatchError(msg)
    for s in stacks:
        kind = np.dtype(s.data_dtype).kind
        if kind not in "biuf":
            msg = f"channel_statistics supports bool, integer and float data; {s.source!r} has dtype {s.data_dtype}"
            raise UnsupportedSourceError(msg)
    if counts[0] == 0:  # no channel to give statistics for (numpy's "cannot reshape array of size 0" otherwise)
        msg = (
            f"channel_statistics got stacks with 0 channels ({stacks[0].source!r}, shape {tuple(stacks[0].data_shape)}"
            "): accepted stacks with at least one channel"
        )
        raise ShapeMismatchError(msg)
    return counts[0]


Block = tuple[Any, Any, Any, int]
"""A chunk to reduce: (source, key, channel axis, first channel).

``key`` None: ``source`` is a (delayed) canonical ``SC(Z)YX`` block. Otherwise
``source`` is a (delayed) stack read with ``stack.read(key)`` in its own
axes, whose channel axis is at position ``channel axis`` (None: one channel).
"""


def _run(func: Callable[..., dict[str, Any]], source: Any, key: Any, cpos: int | None, *args: Any) -> dict[str, Any]:
    """``func`` over the ``(channels, n)`` values of one chunk."""
    if key is None:  # a canonical SC(Z)YX block
        block, cpos = np.asarray(source), 1
    else:
        block = np.asarray(source.read(key))
    values = block.reshape(1, -1) if cpos is None else np.moveaxis(block, cpos, 0).reshape(block.shape[cpos], -1)
    return func(values, *args)


def _stack_blocks(stack: Any) -> list[Block]:
    """One block per chunk of the stack's view, read straight from the stack (one task per chunk)."""
    from dask import delayed

    axes = stack.axes_model.axes
    cpos = axes.index("C") if "C" in axes else None
    # the stack enters the graph once, under a fresh name (no hashing of its data)
    source = delayed(stack, name=f"lazystack-stack-{uuid4().hex}", pure=False)
    bounds = [list(accumulate(map(int, c), initial=0)) for c in stack.original_chunks]
    keys = product(*[[slice(lo, hi) for lo, hi in pairwise(edges)] for edges in bounds])  # per chunk, C order
    return [(source, key, cpos, 0 if cpos is None else key[cpos].start) for key in keys]


def _dask_blocks(stack: Any) -> list[Block]:
    """One block per chunk of ``stack.data`` (for stacks that are not [`LazyImageStack`][LazyImageStack])."""
    x = stack.data
    starts = np.concatenate([[0], np.cumsum(x.chunks[1])[:-1]]).astype(int)
    grid = x.to_delayed(optimize_graph=False)
    return [(grid[idx], None, None, int(starts[idx[1]])) for idx in np.ndindex(grid.shape)]


def _select_blocks(stacks: list[Any], sample_fraction: float | None, seed: int) -> list[list[Block]]:
    """The chunks of every stack; with ``sample_fraction`` a reproducible random subset of them all.

    The subset is drawn over every stack's chunks together (at least one chunk in all).
    """
    selected = [_stack_blocks(s) if isinstance(s, LazyImageStack) else _dask_blocks(s) for s in stacks]
    if sample_fraction is not None:
        total = sum(len(b) for b in selected)
        k = max(1, round(sample_fraction * total))
        chosen = set(np.random.default_rng(seed).choice(total, size=k, replace=False).tolist())
        starts = np.cumsum([0] + [len(b) for b in selected[:-1]]).tolist()  # each stack's first chunk
        pairs = zip(selected, starts, strict=True)
        selected = [[b for j, b in enumerate(blocks, start) if j in chosen] for blocks, start in pairs]
    return selected


def _reduce(
    blocks: list[list[Block]],
    func: Callable[..., dict[str, Any]],
    n_channels: int,
    *args: Any,
    split_every: int,
) -> Any:
    from dask import delayed

    task = delayed(_run, pure=False)  # fresh keys: a repeated call recomputes
    parts = [
        task(func, source, key, cpos, c0, n_channels, *args, dask_key_name=f"{func.__name__}-{uuid4()}")
        for per_stack in blocks
        for source, key, cpos, c0 in per_stack
    ]
    merge = delayed(_merge, pure=False)  # merged as a tree, split_every partials per task
    while len(parts) > 1:
        parts = [merge(*parts[i : i + split_every]) for i in range(0, len(parts), split_every)]
    return parts[0]


def _validate_options(percentiles: Sequence[float], sample_fraction: float | None, bins: int) -> tuple[float, ...]:
    try:
        if isinstance(percentiles, (str, bytes)):
            raise TypeError
        levels = tuple(float(q) for q in percentiles)
    except (TypeError, ValueError):
        msg = f"percentiles must be a sequence of numbers between 0 and 100, got {percentiles!r}"
        raise ValueError(msg) from None
    bad = [q for q in levels if not 0 <= q <= 100]
    if bad:
        msg = f"percentile levels must be between 0 and 100, got {bad[0]}"
        raise ValueError(msg)
    if sample_fraction is not None and not 0 < sample_fraction <= 1:
        msg = f"sample_fraction must be in (0, 1] or None (all chunks), got {sample_fraction!r}"
        raise ValueError(msg)
    if isinstance(bins, bool) or not isinstance(bins, (int, np.integer)) or not 2 <= bins <= MAX_BINS:
        # 2**40 bins: an 8 TiB histogram per channel and task (a MemoryError at best); 2.5: silently 2
        msg = f"bins must be an integer from 2 to {MAX_BINS} (2**24), got {bins!r}"
        raise ValueError(msg)
    return levels


def channel_statistics(
    stacks: Any,
    *,
    percentiles: Sequence[float] = (0.1, 1, 50, 99, 99.9),
    sample_fraction: float | None = None,
    seed: int = 0,
    progress: bool = False,
    bins: int = 65536,
    split_every: int = 8,
    levels: Any = "finest",
) -> ChannelStatistics:
    """Per-channel mean, std, min, max, count and percentiles over stacks.

    Parameters
    ----------
    stacks : LazyImageStack or sequence of LazyImageStack
        Any stacks (views included) with the same number of channels; shapes
        and dtypes may differ.
    percentiles : sequence of float
        Percentile levels between 0 and 100 (numpy's linear definition);
        empty for none (then a single pass over the data).
    sample_fraction : float, optional
        Read only this fraction of all the stacks' chunks (at least one),
        chosen at random with ``seed``: a quick, reproducible estimate. Small
        stacks may be left out entirely.
    seed : int
        Seed of the chunk sample.
    progress : bool
        Show a progress bar (see `lazystack.ops.progress`).
    bins : int
        Number of histogram bins per channel for floating-point percentiles
        (2 to ``2**24``); the error bound is ``(max - min) / bins``.
    split_every : int
        Partial results merged per task in the reduction tree.
    levels : "finest", "all", int or sequence of int
        Resolution levels of multiscale images (OME-Zarr pyramids) to reduce.
        ``"finest"`` (default): the finest level given of each image (full
        resolution for a whole pyramid), so that the downsampled copies do not
        bias the statistics; the number of stacks left out is
        `ChannelStatistics.levels_left_out`. ``"all"``: every stack
        given; an int or sequence: those levels (stacks without a pyramid
        count as level 0). See `lazystack.core.levels`.

    Returns
    -------
    ChannelStatistics

    Raises
    ------
    ShapeMismatchError
        If the stacks do not all have the same number of channels.
    UnsupportedSourceError
        If an item is not a stack or its dtype is not bool, integer or float.
    ValueError
        For percentile levels outside 0..100, a ``sample_fraction`` outside
        (0, 1] or fewer than 2 bins.

    Notes
    -----
    Computations run on the active dask scheduler: a ``distributed.Client``
    when one is the default, else dask's configured scheduler. The reduction
    reads every selected chunk once, plus once more for the percentiles of
    data that are not 8/16-bit integers (see the module documentation).

    Examples
    --------
    >>> import numpy as np
    >>> from lazystack import load_arrays
    >>> from lazystack.ops.stats import channel_statistics
    >>> (stack,) = load_arrays([np.arange(2 * 3 * 4 * 4, dtype=np.uint16).reshape(2, 3, 4, 4)], "SCYX")
    >>> stats = channel_statistics(stack, percentiles=(50,))
    >>> stats.mean
    array([31.5, 47.5, 63.5])
    >>> stats.percentile(50)
    array([31.5, 47.5, 63.5])
    """
    given = _as_stack_list(stacks)
    if isinstance(levels, str) and levels.lower() == "finest":
        items, left_out = finest_levels(given)
    else:
        items = select_levels(given, levels)
        left_out = [s for s in given if all(s is not k for k in items)]
        if not items:
            msg = f"channel_statistics: levels={levels!r} selects none of the {len(given)} stack(s) given"
            raise ValueError(msg)
    q_levels = _validate_options(percentiles, sample_fraction, bins)
    n_channels = _check_channels(items)
    dtypes = {np.dtype(s.data_dtype) for s in items}
    small_int = dtypes <= _SMALL_INT_KINDS
    blocks = _select_blocks(items, sample_fraction, seed)

    first_pass = _reduce(blocks, _block_partial, n_channels, small_int, split_every=split_every)
    (first,) = compute(first_pass, progress=progress)
    n = np.asarray(first["n"], dtype=np.int64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(n > 0, first["mean"], np.nan)
        std = np.where(n > 0, np.sqrt(np.maximum(first["m2"], 0) / np.maximum(n, 1)), np.nan)
    lo = np.where(n > 0, first["min"], np.nan)
    hi = np.where(n > 0, first["max"], np.nan)

    error = np.zeros(n_channels)
    values: dict[float, np.ndarray] = {}
    if q_levels:
        if small_int:
            hists = first["hist"]
            grids = [offset + np.arange(c.size, dtype=np.float64) for offset, c in hists]
        else:
            # one bin per integer, for integers float64 holds exactly (64-bit values past 2**53 are binned)
            exact = (
                all(d.kind in "biu" for d in dtypes)
                and bool(np.all(np.nan_to_num(hi - lo) + 1 <= bins))
                and bool(np.all(np.abs(np.nan_to_num(np.concatenate([lo, hi]))) <= 2**53))
            )
            (second,) = compute(
                _reduce(blocks, _block_histogram, n_channels, lo, hi, int(bins), exact, split_every=split_every),
                progress=progress,
            )
            hists = second["hist"]
            grids = []
            for ch, (_, counts) in enumerate(hists):
                if exact or not np.isfinite(lo[ch]) or lo[ch] == hi[ch]:
                    grids.append(lo[ch] + np.arange(counts.size, dtype=np.float64))
                else:  # counts.size: the bins of _finite_bins
                    f = _span_factor(float(lo[ch]), float(hi[ch]))  # the histogram's scale (0.5: halved values)
                    width = (hi[ch] * f - lo[ch] * f) / counts.size / f
                    edges = np.linspace(lo[ch] * f, hi[ch] * f, counts.size + 1) / f
                    grids.append(np.clip(edges[:-1] + width / 2, lo[ch], hi[ch]))
                    error[ch] = width
        table = np.array(
            [
                _percentiles_from_counts(counts, grid, q_levels, lo[ch], hi[ch])
                for ch, ((_, counts), grid) in enumerate(zip(hists, grids, strict=True))
            ]
        ).reshape(n_channels, len(q_levels))
        values = {q: table[:, i].copy() for i, q in enumerate(q_levels)}

    return ChannelStatistics(
        mean=mean,
        std=std,
        min=lo,
        max=hi,
        count=n,
        percentiles=values,
        percentile_error=error,
        sample_fraction=sample_fraction,
        n_stacks=len(items),
        levels_left_out=len(left_out),
    )


def _percentiles_from_counts(
    counts: np.ndarray, grid: np.ndarray, levels: Sequence[float], lo: float, hi: float
) -> list[float]:
    """numpy's linear percentiles from a histogram (``grid[i]`` stands for bin ``i``)."""
    total = int(counts.sum())
    if total == 0:
        return [math.nan] * len(levels)
    cum = np.cumsum(counts)

    def order_stat(i: np.ndarray) -> np.ndarray:
        inner = grid[np.searchsorted(cum, i, side="right")].astype(np.float64)
        return np.where(i <= 0, float(lo), np.where(i >= total - 1, float(hi), inner))

    h = (total - 1) * np.asarray(levels, dtype=np.float64) / 100.0
    i0 = np.floor(h).astype(np.int64)
    frac = h - i0
    a = order_stat(i0)
    b = order_stat(np.minimum(i0 + 1, total - 1))
    with np.errstate(over="ignore", invalid="ignore"):
        step = b - a  # infinite between values of both signs near the float64 maximum: a weighted sum then
        between = np.where(np.isfinite(step), a + frac * step, a * (1 - frac) + b * frac)
    return np.where(frac == 0, a, between).tolist()
