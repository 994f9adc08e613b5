"""Normalised views of stacks: per-channel affine transforms applied on read.

[`normalized()`][normalized] wraps a stack (or a view of one) in a chunk reader that
applies ``(x - offset[c]) * scale[c]`` to every region it reads, as float32.
The result is an ordinary [`LazyImageStack`][lazystack.LazyImageStack]: its patches,
dask array and xarray are normalised, nothing is computed until read, and it
pickles as the original stack's recipe plus ``2 * C`` numbers.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from ..core.errors import ShapeMismatchError
from ..io.chunked import normalize_key
from ..io.reader import Reader

if TYPE_CHECKING:
    from ..stack import LazyImageStack
    from .stats import ChannelStatistics

__all__ = ["METHODS", "NormalizedReader", "normalization_parameters", "normalized"]

#: Accepted ``method`` values of [`normalized()`][normalized].
METHODS = ("zscore", "minmax", "percentile")


class NormalizedReader(Reader):
    """Chunk reader applying ``(x - offset[c]) * scale[c]`` to what a stack reads (see
    [`lazystack.io.reader`][lazystack.io.reader]).

    Parameters
    ----------
    stack : LazyImageStack
        The stack (or view) to read from, in its original axes.
    offset, scale : array-like of float
        One value per channel of ``stack``.
    clip : tuple of float, optional
        ``(low, high)`` bounds applied after the transform.
    """

    shape: tuple[int, ...]
    dtype: np.dtype[Any]
    chunks: tuple[tuple[int, ...], ...]
    token: str

    def __init__(
        self,
        stack: LazyImageStack,
        offset: Any,
        scale: Any,
        clip: tuple[float, float] | None = None,
    ) -> None:
        from dask.base import tokenize

        self._stack = stack
        self.offset = np.asarray(offset, dtype=np.float64).reshape(-1)
        self.scale = np.asarray(scale, dtype=np.float64).reshape(-1)
        self.clip = None if clip is None else (float(clip[0]), float(clip[1]))
        self.shape = tuple(stack.axes_model.shape)
        self.dtype = np.dtype(np.float32)
        self.chunks = stack.original_chunks
        axes = stack.axes_model.axes
        self._c_axis = axes.index("C") if "C" in axes else None
        self.token = "normalized-" + tokenize(stack.token, self.offset.tobytes(), self.scale.tobytes(), self.clip)

    def __getitem__(self, key: Any) -> np.ndarray:
        """Read ``key`` (ints and step-1 slices in the stack's original axes), normalised, as float32."""
        region, drop = normalize_key(key, self.shape)
        block = np.asarray(self._stack.read(region))
        off, scale, shape = self.offset[:1], self.scale[:1], [1] * block.ndim
        if self._c_axis is not None:  # one value per channel read, along the channel axis
            off, scale = self.offset[region[self._c_axis]], self.scale[region[self._c_axis]]
            shape[self._c_axis] = -1
        out = ((block - off.reshape(shape)) * scale.reshape(shape)).astype(np.float32)
        if self.clip is not None:
            np.clip(out, self.clip[0], self.clip[1], out=out)
        return out.reshape([n for i, n in enumerate(out.shape) if i not in drop]) if drop else out

    def close(self) -> None:
        """Close the wrapped stack's handles (reopened on next read)."""
        self._stack.close()


def _outside_level() -> int:
    """The ``stacklevel`` of the caller's first frame outside lazystack (``normalized()``, ``stack.normalized()``)."""
    import inspect
    import os

    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep
    frame, level = inspect.currentframe(), 0  # this frame counts for the one calling ``warnings.warn``
    while frame is not None and frame.f_code.co_filename.startswith(package):
        frame, level = frame.f_back, level + 1
    return max(level, 2)


def normalization_parameters(
    stats: ChannelStatistics | Mapping[str, Any],
    method: str = "zscore",
    *,
    lower: float = 1.0,
    upper: float = 99.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel ``(offset, scale)`` such that ``(x - offset) * scale`` is normalised.

    Parameters
    ----------
    stats : ChannelStatistics or mapping
        Statistics, their [`to_dict()`][lazystack.ChannelStatistics.to_dict], or a
        mapping of only the keys ``method`` reads, one value per channel
        (``{"mean": [...], "std": [...]}`` for ``zscore``, ``min`` / ``max`` for
        ``minmax``, ``{"percentiles": {level: [...]}}`` for ``percentile``).
    method : {"zscore", "minmax", "percentile"}
        ``zscore``: ``(x - mean) / std``; ``minmax``: ``(x - min) / (max - min)``;
        ``percentile``: ``(x - p[lower]) / (p[upper] - p[lower])``.
    lower, upper : float
        Percentile levels for ``method="percentile"`` (must be in ``stats``).

    Returns
    -------
    offset, scale : numpy.ndarray
        float64 arrays of length ``C``. A channel whose spread is zero or
        undefined gets ``scale = 1`` (it is only shifted). A channel without
        statistics (no finite value: all NaN / inf, or no values at all, as
        [`channel_statistics()`][lazystack.channel_statistics] reports it
        with NaN statistics and ``count == 0``) gets ``offset = 0`` and
        ``scale = 1``, left as it is, with a warning.

    Warns
    -----
    UserWarning
        Naming each channel without statistics (its data is not normalised).

    Raises
    ------
    ValueError
        For an unknown method, ``lower >= upper``, a mapping without the keys
        ``method`` reads or with values that are not numbers, or a negative
        spread (``std < 0``, ``max < min``).
    KeyError
        If a percentile level was not computed.
    """
    if method not in METHODS:
        msg = f"unknown normalisation method {method!r}; accepted: {', '.join(METHODS)}"
        raise ValueError(msg)
    if method == "percentile" and not float(lower) < float(upper):  # p[upper] - p[lower] <= 0: inverted or flat
        msg = f"normalization_parameters('percentile'): lower={lower!r} must be below upper={upper!r}"
        raise ValueError(msg)
    if isinstance(stats, Mapping):
        stats = _stats_of_mapping(stats, method)
    if method == "zscore":
        offset, spread = stats.mean, stats.std
    elif method == "minmax":
        offset, spread = stats.min, stats.max - stats.min
    elif method == "percentile":
        lo, hi = stats.percentile(lower), stats.percentile(upper)
        offset, spread = lo, hi - lo
    else:  # checked above
        raise AssertionError(method)
    spread = np.asarray(spread, dtype=np.float64)
    offset = np.asarray(offset, dtype=np.float64)
    negative = np.flatnonzero(spread < 0).tolist()
    if negative:  # a negative std, or max below min: the channel would come out flipped
        what = {"zscore": "std", "minmax": "max - min", "percentile": "p[upper] - p[lower]"}[method]
        msg = (
            f"normalization_parameters({method!r}): channel(s) {negative} have a negative spread ({what} = "
            f"{[float(spread[c]) for c in negative]}); accepted statistics with std >= 0 and min <= max"
        )
        raise ValueError(msg)
    missing = np.flatnonzero(~np.isfinite(offset)).tolist()
    if missing:  # no finite value in the channel: (0, 1) would silently leave it unnormalised
        counts = np.broadcast_to(np.asarray(stats.count), offset.shape)
        msg = (
            f"normalization_parameters({method!r}): channel(s) {missing} have no statistics "
            f"(offset {[float(offset[c]) for c in missing]}, value count {[int(counts[c]) for c in missing]}: "
            "all NaN / inf, or no values); they get offset 0 and scale 1, i.e. are NOT normalised. "
            "Compute the statistics over data where these channels have finite values, or drop them"
        )
        warnings.warn(msg, UserWarning, stacklevel=_outside_level())
    ok = np.isfinite(spread) & (spread != 0)
    scale = np.where(ok, 1.0 / np.where(ok, spread, 1.0), 1.0)
    offset = np.where(np.isfinite(offset), offset, 0.0)
    return offset, scale


#: The keys of a statistics mapping each method reads.
_NEEDS = {"zscore": ("mean", "std"), "minmax": ("min", "max"), "percentile": ("percentiles",)}


def _per_channel(stats: Mapping[str, Any], key: str) -> np.ndarray:
    """``stats[key]`` as a float64 array, one value per channel (a scalar is one channel; None is NaN)."""
    raw = stats[key]
    values = [raw] if np.ndim(raw) == 0 else list(np.asarray(raw, dtype=object).reshape(-1))
    try:
        return np.array([np.nan if v is None else float(v) for v in values], dtype=np.float64)
    except (TypeError, ValueError):
        msg = f"statistics[{key!r}] must be numbers, one per channel, got {raw!r}"
        raise ValueError(msg) from None


def _stats_of_mapping(stats: Mapping[str, Any], method: str) -> ChannelStatistics:
    """Statistics from a mapping: ``to_dict()`` output, or only the keys ``method`` reads (``{"mean", "std"}``)."""
    from .stats import ChannelStatistics

    missing = [k for k in _NEEDS[method] if k not in stats]
    if missing:
        msg = (
            f"normalization_parameters({method!r}) reads {list(_NEEDS[method])} from the statistics; the mapping "
            f"given has no {missing} (its keys: {sorted(map(str, stats))}); pass channel_statistics() output or "
            "its to_dict()"
        )
        raise ValueError(msg)
    arrays = {k: _per_channel(stats, k) for k in ("mean", "std", "min", "max") if k in stats}
    percentiles = {}
    if "percentiles" in stats:
        if not isinstance(stats["percentiles"], Mapping):
            msg = f"statistics['percentiles'] must map levels to per-channel values, got {stats['percentiles']!r}"
            raise ValueError(msg)
        percentiles = {float(q): _per_channel(stats["percentiles"], q) for q in stats["percentiles"]}
    sizes = {len(v) for v in [*arrays.values(), *percentiles.values()]}
    if len(sizes) > 1:
        msg = f"the statistics' per-channel values differ in length ({sorted(sizes)}): one value per channel each"
        raise ValueError(msg)
    n = sizes.pop() if sizes else 0
    nan = np.full(n, np.nan)
    count = np.asarray(stats.get("count", [0] * n), dtype=np.int64).reshape(-1)
    return ChannelStatistics(
        mean=arrays.get("mean", nan),
        std=arrays.get("std", nan),
        min=arrays.get("min", nan),
        max=arrays.get("max", nan),
        count=count if count.shape == (n,) else np.zeros(n, np.int64),
        percentiles=percentiles,
        percentile_error=np.zeros(n),
    )


def _clip_pair(clip: Any) -> bool:
    """Whether ``clip`` is two real numbers, ``low <= high`` (not NaN). A string or a bare number is not
    (``len()`` / ``math.isnan()`` of them raised a TypeError naming neither ``clip`` nor what it accepts)."""
    if isinstance(clip, (str, bytes)):
        return False
    try:  # clip[0], clip[1] as the reader takes them (a set has a length but no items; a dict's keys are not them)
        if len(clip) != 2:  # a 0-d numpy array has __len__, and len() of it raises TypeError
            return False
        low, high = float(clip[0]), float(clip[1])
    except (TypeError, ValueError, LookupError):
        return False
    return not math.isnan(low) and low <= high


def normalized(
    stack: LazyImageStack,
    stats: ChannelStatistics | Mapping[str, Any],
    *,
    method: str = "zscore",
    lower: float = 1.0,
    upper: float = 99.0,
    clip: tuple[float, float] | None = None,
) -> LazyImageStack:
    """A lazy, normalised view of ``stack`` (float32), per channel.

    Parameters
    ----------
    stack : LazyImageStack
        Any stack or view.
    stats : ChannelStatistics or mapping
        Statistics with one value per channel of ``stack`` (e.g. from
        [`channel_statistics()`][lazystack.channel_statistics] over a training set).
    method : {"zscore", "minmax", "percentile"}
        See `normalization_parameters()`.
    lower, upper : float
        Percentile levels for ``method="percentile"``.
    clip : tuple of float, optional
        Clip the normalised values to ``(low, high)``.

    Returns
    -------
    LazyImageStack
        Same axes, shape, source, format, coordinates and attributes (plus
        ``attrs["normalization"]``); dtype float32. Nothing is read until a
        patch, the dask array or the xarray is computed.

    Raises
    ------
    ShapeMismatchError
        If ``stats`` has a different number of channels from ``stack``.
    ValueError, KeyError
        See `normalization_parameters()`; a ValueError also for a ``clip``
        that is not a ``(low, high)`` pair of numbers with ``low <= high``.

    Examples
    --------
    >>> import numpy as np
    >>> from lazystack import load_arrays
    >>> from lazystack.ops.stats import channel_statistics
    >>> (stack,) = load_arrays([np.arange(32, dtype=np.uint8).reshape(2, 4, 4)], "CYX")
    >>> norm = normalized(stack, channel_statistics(stack), method="minmax")
    >>> float(norm.extract_patch(0, None, (0, 0), (4, 4)).max())
    1.0
    """
    from ..stack import LazyImageStack

    offset, scale = normalization_parameters(stats, method, lower=lower, upper=upper)
    if offset.shape[0] != stack.n_channels:
        msg = (
            f"statistics have {offset.shape[0]} channel(s) but the stack {stack.source!r} has "
            f"{stack.n_channels}; compute statistics over stacks with the same channels"
        )
        raise ShapeMismatchError(msg)
    if clip is not None and not _clip_pair(clip):
        msg = f"clip must be a (low, high) pair of numbers with low <= high, got {clip!r}"
        raise ValueError(msg)
    reader = NormalizedReader(stack, offset, scale, clip)
    attrs = stack.attrs
    if attrs.get("physical_pixel_sizes"):  # a strided view's, not its source's (as its coords, passed below)
        attrs["physical_pixel_sizes"] = stack.physical_pixel_sizes
    attrs["normalization"] = {
        "method": method,
        "offset": [float(v) for v in offset],
        "scale": [float(v) for v in scale],
        **({"clip": list(reader.clip)} if reader.clip else {}),
    }
    return LazyImageStack(
        reader,
        stack.axes_model.axes,
        source=stack.source,
        format=stack.format,
        coords=stack.coords,
        attrs=attrs,
    )
