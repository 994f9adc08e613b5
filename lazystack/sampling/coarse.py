"""Foreground-aware sampling from a coarse view of the images themselves.

[`CoarseForegroundSampler`][CoarseForegroundSampler] finds the foreground of
each full-resolution image on a coarse view of it (a coarser level of its
pyramid, or else a thumbnail block-reduced with dask) and draws patches
there. The coarse views are read once, when the sampler is built; a spec is
then a pure function of ``(seed, epoch, index)`` and reads nothing.
"""

from __future__ import annotations

import logging
import math
import numbers
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ..core.errors import ChannelIndexError, ShapeMismatchError
from ..core.levels import image_key
from .samplers import (
    PatchSpec,
    Sampler,
    _as_int,
    _check_seed,
    _positive,
    _random_base,
    geometry,
    spec_rng,
)

__all__ = ["CoarseForegroundSampler", "otsu_threshold"]

_log = logging.getLogger("lazystack.sampling")

#: A foreground rule: a threshold, "otsu", or a function of the coarse image (samples first) to a boolean mask.
Threshold = float | str | Callable[[NDArray[np.float32]], Any]


def otsu_threshold(values: NDArray[Any], bins: int = 256) -> float:
    """Otsu's threshold of some values: the cut that maximises the between-class variance.

    The same definition as ``skimage.filters.threshold_otsu`` (a histogram of
    ``bins`` bins over the values' range; the threshold is a bin centre),
    without the dependency.

    Parameters
    ----------
    values : numpy.ndarray
        Any shape; NaNs are ignored.
    bins : int
        Histogram bins.

    Returns
    -------
    float
        Values strictly above it are foreground. For constant values, that value
        (so nothing is foreground).

    Examples
    --------
    >>> otsu_threshold(np.array([1.0, 1.0, 2.0, 9.0, 10.0, 10.0])) > 2
    True
    """
    v = np.asarray(values, dtype=np.float64).ravel()
    v = v[np.isfinite(v)]
    if v.size == 0 or v.min() == v.max():
        return float(v.max()) if v.size else 0.0
    counts, edges = np.histogram(v, bins=bins)
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(counts)[:-1].astype(np.float64)
    w1 = v.size - w0
    s0 = np.cumsum(counts * centres)[:-1]
    m0 = s0 / np.maximum(w0, 1)
    m1 = (float(np.sum(counts * centres)) - s0) / np.maximum(w1, 1)
    between = w0 * w1 * (m0 - m1) ** 2
    return float(centres[int(np.argmax(between))])  # the centre of the last background bin, as scikit-image's


def _is_view(stack: Any) -> bool:
    """Whether ``stack`` is a view (``isel``) of its source: its shape is not the stored array's."""
    reader = getattr(stack, "reader", None)
    shape = getattr(stack, "original_data_shape", None)
    if reader is None or shape is None:
        return False
    return tuple(int(n) for n in shape) != tuple(int(n) for n in reader.shape)


def _cell_bounds(
    full: Any, coarse: Any, full_shape: tuple[int, ...], coarse_shape: tuple[int, ...]
) -> list[tuple[NDArray[np.int64], NDArray[np.int64]]]:
    """Per spatial dim, the full-resolution range ``[lo, hi)`` each coarse pixel covers.

    The factor is the ratio of the levels' physical pixel sizes (their OME-Zarr
    ``scale``), else of their shapes. A coarse level with a ``translation``
    is placed by it, NGFF's pixel-centre convention (a level written without
    one is taken as corner-aligned with level 0, as its block means are).
    The last cell reaches the end of the image when less than one cell is
    left over (a level 0 of 65 rows over a level 2 of 16: its last cell
    covers rows 60 to 64), so every full-resolution pixel belongs to a cell.
    """
    out = []
    full_sizes = getattr(full, "physical_pixel_sizes", None) or {}
    coarse_sizes = getattr(coarse, "physical_pixel_sizes", None) or {}
    full_tr = (getattr(full, "attrs", None) or {}).get("translation") or {}
    coarse_tr = (getattr(coarse, "attrs", None) or {}).get("translation") or {}
    for axis, n, m in zip("ZYX"[3 - len(full_shape) :], full_shape, coarse_shape, strict=True):
        sf, sc = full_sizes.get(axis), coarse_sizes.get(axis)
        factor = float(sc) / float(sf) if sf and sc else n / m
        offset = 0.0
        if axis in coarse_tr and sf:
            offset = (float(coarse_tr[axis]) - float(full_tr.get(axis, 0.0))) / float(sf) - (factor - 1) / 2
        j = np.arange(m + 1, dtype=np.float64)
        edges = np.clip(np.floor(offset + j * factor + 0.5), 0, n).astype(np.int64)
        if n - edges[-1] < factor:  # the rows a flooring downsampler dropped belong to the last cell
            edges[-1] = n
        out.append((edges[:-1], edges[1:]))
    return out


def _merge_cells(
    bounds: list[tuple[NDArray[np.int64], NDArray[np.int64]]], extra: int
) -> list[tuple[NDArray[np.int64], NDArray[np.int64]]]:
    """The bounds of cells merging ``extra`` consecutive cells per dim (the last one takes what is left)."""
    firsts = [np.arange(0, lo.size, extra) for lo, _ in bounds]
    return [(lo[f], hi[np.minimum(f + extra, lo.size) - 1]) for (lo, hi), f in zip(bounds, firsts, strict=True)]


def _extra_factor(n_samples: int, shape: Sequence[int], max_pixels: int) -> int:
    """The smallest factor ``f >= 1`` with ``n_samples * prod(ceil(shape / f)) <= max_pixels``."""
    # ceil(n / f) >= n / f: no f below the ndim-th root of the excess fits; start just below it
    excess = n_samples * math.prod(shape) / max_pixels
    f = max(1, int(excess ** (1 / max(len(shape), 1))) - 1)
    while n_samples * math.prod(-(-n // f) for n in shape) > max_pixels:
        f += 1
    return f


class CoarseForegroundSampler(Sampler):
    """Random patches placed on the foreground of a coarse view of each image.

    For each full-resolution image, the foreground is found on a coarse view
    of it: a coarser level of its pyramid given among ``stacks`` (an
    OME-Zarr level, mapped to full-resolution pixels through the levels'
    ``scale`` and ``translation``), or, for an image given at one level only
    and for a view (``isel``) of a level (not pixel-aligned with the other
    levels), a thumbnail averaged over blocks of ``factor`` pixels with dask. All
    coarse views are read in one parallel dask computation when the sampler
    is built, and kept in ``thumbnails``
    keyed by the stack's token (a stack given twice is reduced once;
    workers receive them with the pickled sampler and read nothing).

    Index ``i`` of epoch ``e`` draws, from ``spec_rng(seed, e, i)``, a
    foreground pixel uniformly (a coarse foreground cell with probability
    proportional to the full-resolution pixels it covers, then a pixel in
    it) and the valid patch position centred on it (moved inside the image
    at the edges). Only full-resolution stacks are sampled unless ``levels``
    says otherwise (see [`Sampler`][lazystack.Sampler]); a stack sampled
    whose coarsest level is itself gets a thumbnail.

    Parameters
    ----------
    stacks : sequence of ImageStack
        The stacks, e.g. every level of some OME-Zarr images (``load(...)``).
    patch_size : int or sequence of int
        Patch size in the spatial dims.
    length : int
        Patches per epoch.
    threshold : float, "otsu" or callable
        Foreground is where the coarse view of ``channel`` is above a number
        (Python or NumPy, not NaN),
        above its Otsu threshold ([`otsu_threshold`][lazystack.otsu_threshold],
        per stack; the default), or where a function of the coarse view
        (``float32``, samples first: ``S(Z)YX``) returns True.
    level : "coarsest" or int
        Which level of an image's pyramid (among ``stacks``) to judge on:
        its coarsest given (default) or this level number (an image without
        it gets a thumbnail).
    factor : int or sequence of int
        Block size of a thumbnail, in full-resolution pixels.
    channel : int
        Channel the foreground is judged on.
    seed : int
        Non-negative seed.
    channels : int or sequence of int, optional
        Channels of every patch.
    levels : "finest", "all", int or sequence of int
        Resolution levels to sample (by default full resolution).
    max_pixels : int
        Bound on each stack's coarse view, in pixels (samples times spatial
        pixels; default ``2**20``). A coarse level or thumbnail bigger than
        this is averaged further over blocks of ``f`` coarse pixels in every
        spatial dim, ``f`` the smallest integer that brings it within the
        bound, in the same dask computation (``coarse_source`` then says so:
        ``"level 1, mean over 5x5"``, ``"thumbnail 40x40"``). The kept
        foreground takes 1 byte and the coarse view 4 bytes per pixel, so
        this bounds what the pickled sampler sends to every DataLoader worker.
        Coarse views within the bound are used as they are.

    Attributes
    ----------
    foreground : list of numpy.ndarray or None
        Per stack, the boolean coarse foreground (``S(Z)YX`` at the coarse
        view's resolution); None for a stack not sampled.
    coarse_source : list of str or None
        Per stack, what its foreground was judged on: ``"level 2"`` or
        ``"thumbnail 8x8"``; None for a stack not sampled.
    thumbnails : dict of str to numpy.ndarray
        The coarse views read, keyed by the token of the stack read and the reduction.

    Raises
    ------
    PatchError
        If the patch does not fit in a stack sampled.
    ChannelIndexError
        If ``channel`` is not a channel of every stack.
    ShapeMismatchError
        If a coarse level has another number of samples than its full resolution.
    ValueError
        If no stack has any foreground, if ``max_pixels`` is below 1, or if
        a stack has more samples than ``max_pixels``.
    TypeError
        If ``max_pixels`` is not an integer.

    Examples
    --------
    >>> import numpy as np
    >>> from lazystack import LazyImageStack
    >>> image = np.zeros((64, 64), np.uint8)
    >>> image[40:56, 8:24] = 200  # one bright square
    >>> sampler = CoarseForegroundSampler([LazyImageStack(image, "YX")], 8, 100, factor=4, seed=0)
    >>> all(32 <= s.coords[0] <= 56 and 0 <= s.coords[1] <= 24 for s in sampler.epoch_specs(3))
    True
    """

    def __init__(
        self,
        stacks: Sequence[Any],
        patch_size: int | Sequence[int],
        length: int,
        *,
        threshold: Threshold = "otsu",
        level: str | int = "coarsest",
        factor: int | Sequence[int] = 8,
        channel: int = 0,
        seed: int = 0,
        channels: int | Sequence[int] | None = None,
        levels: Any = "finest",
        max_pixels: int = 2**20,
    ) -> None:
        import dask
        import dask.array as da

        base = _random_base(stacks, patch_size, length, seed, channels, levels, "CoarseForegroundSampler")
        self.geometries, self.patch_size, self.channels = base.geometries, base.patch_size, base.channels
        self.levels_left_out = base.levels_left_out
        self.length = _check_seed("length", length)
        self.seed = base.seed
        ndim = len(self.patch_size)
        self.factor = _positive("factor", factor, ndim)
        integral = isinstance(level, numbers.Integral) and not isinstance(level, bool)
        if not ((isinstance(level, str) and level == "coarsest") or (integral and int(level) >= 0)):
            msg = f"level must be 'coarsest' or a level number >= 0, got {level!r}"
            raise ValueError(msg)
        level = level if isinstance(level, str) else int(level)
        number = float(threshold) if isinstance(threshold, numbers.Real) and not isinstance(threshold, bool) else None
        if not (
            (number is not None and not math.isnan(number))
            or (isinstance(threshold, str) and threshold == "otsu")
            or (number is None and callable(threshold))
        ):
            msg = (
                f"threshold must be a number (not NaN), 'otsu' or a function of the coarse image, "
                f"got {threshold!r} ({type(threshold).__name__})"
            )
            raise ValueError(msg)
        if isinstance(max_pixels, bool):
            msg = f"max_pixels must be an integer >= 1, got {max_pixels!r} (bool)"
            raise TypeError(msg)
        self.max_pixels = _as_int("max_pixels", max_pixels)
        if self.max_pixels < 1:
            msg = f"max_pixels must be an integer >= 1 (pixels of a coarse view), got {max_pixels!r}"
            raise ValueError(msg)
        self.channel = _as_int("channel", channel)
        n_channels = {g.n_channels for g in self.geometries}
        if not 0 <= self.channel < min(n_channels):
            msg = (
                f"channel {channel!r} is out of range: the stacks have {sorted(n_channels)} channel(s); "
                f"accepted are 0 to {min(n_channels) - 1}"
            )
            raise ChannelIndexError(msg)

        def level_of(s: Any) -> int:
            return int(getattr(s, "level", None) or 0)

        images: dict[str, list[Any]] = {}
        for s in stacks:
            images.setdefault(image_key(s), []).append(s)
        self.thumbnails: dict[str, NDArray[np.float32]] = {}
        self.coarse_source: list[str | None] = []
        plans: list[tuple[str, Any, tuple[int, ...], int] | None] = []  # (key, coarse stack, factor, extra)
        pending: dict[str, Any] = {}
        for k, s in enumerate(stacks):
            if k in self.levels_left_out or self.geometries[k].n_samples == 0:  # no sample: nothing to judge or draw
                plans.append(None)
                self.coarse_source.append(None)
                continue
            # a view (isel) is not pixel-aligned with the other levels of its pyramid: it gets a thumbnail
            others = [] if _is_view(s) else [o for o in images[image_key(s)] if level_of(o) > level_of(s)]
            others = [o for o in others if not _is_view(o)]
            if level != "coarsest":
                others = [o for o in others if level_of(o) == level]
            coarse = max(others, key=level_of) if others else None
            read = coarse if coarse is not None else s
            token = str(getattr(read, "token", None) or f"id-{id(read)}")
            n_samples = self.geometries[k].n_samples
            if n_samples > self.max_pixels:
                msg = (
                    f"stack {k} has {n_samples} samples: its coarse view cannot be within max_pixels="
                    f"{self.max_pixels} pixels (one per sample at least); pass max_pixels >= {n_samples}"
                )
                raise ValueError(msg)
            if coarse is not None:
                if geometry(coarse).n_samples != n_samples:
                    msg = (
                        f"level {level_of(coarse)} ({getattr(coarse, 'source', '?')!r}) has "
                        f"{geometry(coarse).n_samples} sample(s) but its full resolution "
                        f"({getattr(s, 'source', '?')!r}) has {n_samples}"
                    )
                    raise ShapeMismatchError(msg)
                factor = tuple(1 for _ in self.factor)
                extra = _extra_factor(n_samples, geometry(coarse).spatial_shape, self.max_pixels)
                mean = f"mean over {'x'.join([str(extra)] * ndim)}" if extra > 1 else ""
                key = f"{token}|channel {self.channel}" + (f"|{mean}" if mean else "")
                source = f"level {level_of(coarse)}" + (f", {mean}" if mean else "")
            else:
                cells = [-(-n // f) for n, f in zip(self.geometries[k].spatial_shape, self.factor, strict=True)]
                extra = _extra_factor(n_samples, cells, self.max_pixels)
                factor = tuple(f * extra for f in self.factor)
                extra = 1  # a thumbnail is averaged over the bigger blocks at once
                key = f"{token}|channel {self.channel}|mean over {'x'.join(map(str, factor))}"
                source = f"thumbnail {'x'.join(map(str, factor))}"
            self.coarse_source.append(source)
            plans.append((key, coarse, factor, extra))
            if key not in self.thumbnails and key not in pending:
                x = read.data[:, self.channel].astype(np.float32)
                blocks = factor if coarse is None else tuple(extra for _ in factor)
                if any(b > 1 for b in blocks):
                    pad = [(0, 0)] + [(0, -n % b) for n, b in zip(x.shape[1:], blocks, strict=True)]
                    x = da.pad(x, pad, mode="edge") if any(p for _, p in pad) else x
                    x = da.coarsen(np.mean, x, {1 + d: b for d, b in enumerate(blocks)})
                pending[key] = x
        if pending:
            self.thumbnails.update(zip(pending, dask.compute(*pending.values()), strict=True))

        self.foreground: list[NDArray[np.bool_] | None] = []
        self._bounds: list[list[tuple[NDArray[np.int64], NDArray[np.int64]]] | None] = []
        weights = []
        constant: list[int] = []  # stacks whose coarse view Otsu's threshold cannot split
        for k, (s, plan) in enumerate(zip(stacks, plans, strict=True)):
            if plan is None:
                self.foreground.append(None)
                self._bounds.append(None)
                weights.append(np.zeros(0, np.int64))
                continue
            key, coarse, factor, extra = plan
            view = np.asarray(self.thumbnails[key], dtype=np.float32)
            spatial = self.geometries[k].spatial_shape
            if coarse is None:
                bounds = [
                    (np.arange(0, n, f, dtype=np.int64), np.minimum(np.arange(f, n + f, f, dtype=np.int64), n))
                    for n, f in zip(spatial, factor, strict=True)
                ]
            else:
                bounds = _cell_bounds(s, coarse, spatial, geometry(coarse).spatial_shape)
                if extra > 1:
                    bounds = _merge_cells(bounds, extra)
            if callable(threshold):
                fg = np.asarray(threshold(view), dtype=bool)
                if fg.shape != view.shape:
                    msg = f"threshold function returned shape {fg.shape} for a coarse image of shape {view.shape}"
                    raise ShapeMismatchError(msg)
            else:
                cut = otsu_threshold(view) if isinstance(threshold, str) else float(threshold)
                fg = view > cut
                finite = view[np.isfinite(view)]
                if isinstance(threshold, str) and (finite.size == 0 or finite.min() == finite.max()):
                    constant.append(k)
            self.foreground.append(fg)
            self._bounds.append(bounds)
            volume = math.prod(np.ix_(*[hi - lo for lo, hi in bounds]))  # pixels per cell: outer product of sizes
            weights.append((fg * volume).astype(np.int64).ravel())
        every = np.concatenate(weights)
        # only the cells that can be drawn (foreground) are kept: their flat index and cumulative weight
        self._cells = np.flatnonzero(every)
        self._cumulative = np.cumsum(every[self._cells])
        if self._cumulative.size == 0 or self._cumulative[-1] == 0:
            msg = (
                f"no foreground in the coarse views of the stacks (threshold {threshold!r} on channel "
                f"{self.channel}; judged on {', '.join(c for c in self.coarse_source if c)}): nothing to sample"
            )
            if constant:
                msg += (
                    f"; the coarse view of stack(s) {constant} is constant (or NaN), which Otsu's threshold "
                    "cannot split: pass threshold=<a number> (foreground is above it)"
                )
            raise ValueError(msg)
        self._offsets = np.cumsum([0] + [w.size for w in weights])
        self._mass = [None if b is None else int(w.sum()) for b, w in zip(self._bounds, weights, strict=True)]
        _log.info(
            "CoarseForegroundSampler: foreground judged on %s",
            ", ".join(f"stack {k}: {c}" for k, c in enumerate(self.coarse_source) if c),
        )

    def foreground_fraction(self) -> list[float | None]:
        """Per stack, the fraction of its full-resolution pixels in coarse foreground cells (None if not sampled).

        Returns
        -------
        list of float or None
        """
        return [
            None if mass is None else mass / (g.n_samples * math.prod(g.spatial_shape))
            for mass, g in zip(self._mass, self.geometries, strict=True)
        ]

    def spec(self, index: int, epoch: int = 0) -> PatchSpec:
        """The spec of ``index`` in ``epoch`` (see the class description)."""
        i = self._check_index(index)
        rng = spec_rng(self.seed, _check_seed("epoch", epoch), i)
        drawn = int(np.searchsorted(self._cumulative, rng.integers(int(self._cumulative[-1])), side="right"))
        flat = int(self._cells[drawn])
        k = int(np.searchsorted(self._offsets, flat, side="right")) - 1
        fg = self.foreground[k]
        bounds = self._bounds[k]
        assert fg is not None
        assert bounds is not None
        where = np.unravel_index(flat - int(self._offsets[k]), fg.shape)
        sample, cells = int(where[0]), [int(w) for w in where[1:]]
        coords = []
        for j, (lo, hi), n, p in zip(cells, bounds, self.geometries[k].spatial_shape, self.patch_size, strict=True):
            pixel = int(lo[j]) + int(rng.integers(int(hi[j] - lo[j])))
            coords.append(min(max(pixel - p // 2, 0), n - p))
        return PatchSpec(k, sample, self.channels, tuple(coords), self.patch_size)
