"""A quick look at one plane of a stack with matplotlib (the optional ``plot`` extra).

[`thumbnail()`][thumbnail] reads one plane (sample, channel, z) at reduced resolution
by striding through the stack's dask array chunk by chunk, so memory stays
bounded by the source's chunks and the result by ``max_size``;
[`show()`][show] draws it. matplotlib is imported only when [`show()`][show] runs.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np

from ..core.errors import MissingDependencyError, SelectionError

if TYPE_CHECKING:
    from matplotlib.axes import Axes

    from ..stack import LazyImageStack

__all__ = ["show", "thumbnail"]


def _check_index(name: str, value: int, size: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        msg = f"{name} must be an integer in range({size}), got {value!r}"
        raise SelectionError(msg)
    if not 0 <= int(value) < size:
        msg = f"{name}={value} is out of range: the stack has {size} along it; accepted 0 to {size - 1}"
        raise SelectionError(msg)
    return int(value)


def thumbnail(
    stack: LazyImageStack,
    sample: int = 0,
    channel: int = 0,
    z: int | None = None,
    *,
    max_size: int = 512,
    use_levels: bool = True,
) -> tuple[np.ndarray, int]:
    """Read one plane at reduced resolution, so that neither side exceeds ``max_size``.

    Parameters
    ----------
    stack : LazyImageStack
        The stack.
    sample : int
        Canonical sample index.
    channel : int
        Channel index.
    z : int, optional
        Z plane (default: the middle one); ignored for stacks without ``Z``.
    max_size : int
        Largest number of pixels along Y or X in the result.
    use_levels : bool
        When the stack is one level of an OME-Zarr pyramid (and not a view),
        read the coarsest level that still has at least ``max_size`` pixels
        along its longer side (or the coarsest one, for a small image).

    Returns
    -------
    plane : numpy.ndarray
        ``data[sample, channel, (z,) ::step, ::step]`` of the level read, in
        the stored dtype.
    step : int
        The reduction factor along Y and X against the stack's own
        resolution, rounded (1 when the plane is read whole).

    Raises
    ------
    SelectionError
        If an index is out of range or ``max_size`` is not positive.

    Examples
    --------
    >>> import numpy as np
    >>> from lazystack import load_arrays
    >>> (stack,) = load_arrays([np.arange(4 * 100 * 60).reshape(4, 100, 60)], "ZYX")
    >>> plane, step = thumbnail(stack, max_size=50)
    >>> plane.shape, step, bool((plane == np.arange(4 * 100 * 60).reshape(4, 100, 60)[2, ::2, ::2]).all())
    ((50, 30), 2, True)
    """
    if isinstance(max_size, bool) or not isinstance(max_size, (int, np.integer)) or max_size < 1:
        msg = f"max_size must be a positive integer, got {max_size!r}"
        raise SelectionError(msg)
    n_samples, n_channels, *spatial = stack.data_shape
    sample = _check_index("sample", sample, n_samples)
    channel = _check_index("channel", channel, n_channels)
    if len(spatial) == 3:
        z = spatial[0] // 2 if z is None else _check_index("z", z, spatial[0])
    height, width = spatial[-2:]
    source = _coarser_level(stack, int(max_size)) if use_levels else None
    plane = _strided_plane(source or stack, sample, channel, z, int(max_size))
    factor = max(1, round(max(height, width) / max(plane.shape)))
    return plane, factor


def _strided_plane(stack: LazyImageStack, sample: int, channel: int, z: int | None, max_size: int) -> np.ndarray:
    spatial = stack.data_shape[2:]
    height, width = spatial[-2:]
    step = max(1, math.ceil(max(height, width) / max_size))
    key: list[Any] = [sample, channel]
    if len(spatial) == 3:
        key.append(z)
    key += [slice(None, None, step), slice(None, None, step)]
    return np.asarray(stack.data[tuple(key)].compute())


def _coarser_level(stack: LazyImageStack, max_size: int) -> LazyImageStack | None:
    """The coarsest level of the stack's OME-Zarr pyramid with at least ``max_size`` pixels a side, if any.

    Only for a whole level (not a view) whose other levels keep every axis
    but ``Y`` and ``X``; anything unexpected gives None (then the plane is strided).
    """
    if stack.level is None or not isinstance(stack.source, str) or "zarr" not in stack.format.lower():
        return None
    if tuple(stack.original_data_shape) != tuple(stack.reader.shape):
        return None  # a view: its indices do not carry over to other levels
    try:
        levels = _pyramid(stack)
    except Exception:  # an optimisation only: fall back to striding
        return None
    axes = stack.original_axes
    keep = [i for i, a in enumerate(axes) if a not in "YX"]
    current = max(stack.data_shape[-2:])
    best = None
    for level in levels:
        shape = level.original_data_shape
        if level.original_axes != axes or any(shape[i] != stack.original_data_shape[i] for i in keep):
            continue
        side = max(level.data_shape[-2:])
        if side >= min(max_size, current) and side < current and (best is None or side < max(best.data_shape[-2:])):
            best = level
    return best


def _pyramid(stack: LazyImageStack) -> list[LazyImageStack]:
    """Every level of the multiscale image listing ``stack``'s array (empty if none is found)."""
    import zarr

    from ..loading.loaders import load_zarrs
    from ..sources.zarr import parse_zarr_source

    location = parse_zarr_source(stack.source)
    store = location.open_store()
    parts = [p for p in location.path.split("/") if p]
    for depth in range(len(parts) - 1, -1, -1):
        try:
            group = zarr.open_group(store=store, path="/".join(parts[:depth]), mode="r")
        except Exception:  # not a group: look further up
            continue
        attrs: dict[str, Any] = dict(group.attrs.asdict())
        ome: dict[str, Any] = attrs.get("ome") or {}
        multiscales: list[Any] = ome.get("multiscales") or attrs.get("multiscales") or []
        rel = "/".join(parts[depth:])
        for ms in multiscales:
            paths = [str(d.get("path", "")).strip("/") for d in ms.get("datasets", [])]
            if rel in paths:
                return [load_zarrs(location.uri("/".join([*parts[:depth], p])), stack.original_axes)[0] for p in paths]
    return []


def show(
    stack: LazyImageStack,
    sample: int = 0,
    channel: int = 0,
    z: int | None = None,
    *,
    max_size: int = 512,
    use_levels: bool = True,
    ax: Axes | None = None,
    cmap: str = "gray",
    robust: bool = True,
    colorbar: bool = True,
    **imshow_kwargs: Any,
) -> Axes:
    """Draw one plane of ``stack`` with matplotlib (needs the ``plot`` extra).

    Only that plane is read, strided to at most ``max_size`` pixels a side
    (see [`thumbnail()`][thumbnail]). Axis ticks are in pixels of the full-resolution
    plane; the title names the source, sample, channel (and its name) and z.

    Parameters
    ----------
    stack : LazyImageStack
        The stack.
    sample, channel : int
        Canonical sample and channel index.
    z : int, optional
        Z plane (default: the middle one) for stacks with ``Z``.
    max_size : int
        Largest number of pixels read along Y or X.
    use_levels : bool
        Read a coarser level of an OME-Zarr pyramid when there is one (see
        [`thumbnail()`][thumbnail]).
    ax : matplotlib.axes.Axes, optional
        Where to draw (default: a new figure).
    cmap : str
        Colour map.
    robust : bool
        Stretch the contrast between the 2nd and 98th percentiles instead of
        the minimum and maximum (unless ``vmin`` / ``vmax`` are given).
    colorbar : bool
        Add a colour bar.
    **imshow_kwargs
        Passed to `matplotlib.axes.Axes.imshow()`.

    Returns
    -------
    matplotlib.axes.Axes
        The axes drawn on (its figure is ``ax.figure``).

    Raises
    ------
    MissingDependencyError
        If matplotlib is not installed.
    SelectionError
        If an index is out of range.
    """
    try:
        import matplotlib.pyplot as plt
    except ImportError as exc:
        msg = "stack.show() needs matplotlib, the optional 'plot' extra: pip install 'lazystack[plot]'"
        raise MissingDependencyError(msg) from exc
    plane, step = thumbnail(stack, sample, channel, z, max_size=max_size, use_levels=use_levels)
    height, width = stack.data_shape[-2:]
    if ax is None:
        _, ax = plt.subplots()
    if robust and plane.size and "vmin" not in imshow_kwargs and "vmax" not in imshow_kwargs:
        finite = plane[np.isfinite(plane)] if plane.dtype.kind == "f" else plane
        if finite.size:
            lo, hi = np.percentile(finite, [2, 98])
            imshow_kwargs.update(vmin=float(lo), vmax=float(hi) if hi > lo else float(lo) + 1)
    image = ax.imshow(plane, cmap=cmap, extent=(0, width, height, 0), interpolation="nearest", **imshow_kwargs)
    names = stack.channel_names
    label = f"channel {channel}" + (f" ({names[channel]})" if names else "")
    where = f"sample {sample}, {label}"
    if len(stack.data_shape) == 5:
        where += f", z {stack.data_shape[2] // 2 if z is None else z}"
    if step > 1:
        where += f", 1/{step} resolution"
    source = str(stack.source)
    ax.set_title(f"{source if len(source) <= 60 else '...' + source[-57:]}\n{where}", fontsize="small")
    ax.set_xlabel("X (pixels)")
    ax.set_ylabel("Y (pixels)")
    if colorbar:
        ax.figure.colorbar(image, ax=ax)
    return ax
