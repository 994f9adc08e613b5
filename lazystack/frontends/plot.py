"""A quick look at one plane of a stack with matplotlib (the optional ``plot`` extra).

[`thumbnail()`][thumbnail] reads one plane (sample, channel(s), z) at reduced resolution
by striding through the stack's dask array chunk by chunk, so memory stays
bounded by the source's chunks and the result by ``max_size``;
[`show()`][show] draws it: one channel with a colour map, several channels as an
additive colour composite, RGB(A) pixels in true colour, with a scale bar when
the stack has physical pixel sizes with units. matplotlib is imported only
when [`show()`][show] runs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from ..core.errors import MissingDependencyError, SelectionError
from ..core.units import unit_name, unit_symbol

if TYPE_CHECKING:
    from matplotlib.axes import Axes

    from ..stack import LazyImageStack

__all__ = ["COMPOSITE_COLORS", "SCALEBAR_LOCATIONS", "composite", "is_rgb", "scale_bar_length", "show", "thumbnail"]


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
    channel: int | Sequence[int] = 0,
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
    channel : int or sequence of int
        Channel index, or several channel indices (read together, in the order given).
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
        the stored dtype: 2-D for one channel, ``(len(channel), height, width)``
        for a sequence of channels.
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
    if isinstance(channel, Sequence) and not isinstance(channel, str):
        if not channel:
            msg = f"channel must be an integer in range({n_channels}) or a non-empty sequence of them, got {channel!r}"
            raise SelectionError(msg)
        channels: int | list[int] = [_check_index("channel", c, n_channels) for c in channel]
    else:
        channels = _check_index("channel", channel, n_channels)
    if len(spatial) == 3:
        z = spatial[0] // 2 if z is None else _check_index("z", z, spatial[0])
    height, width = spatial[-2:]
    source = _coarser_level(stack, int(max_size)) if use_levels else None
    plane = _strided_plane(source or stack, sample, channels, z, int(max_size))
    factor = max(1, round(max(height, width) / max(plane.shape[-2:])))
    return plane, factor


def _strided_plane(
    stack: LazyImageStack, sample: int, channel: int | list[int], z: int | None, max_size: int
) -> np.ndarray:
    spatial = stack.data_shape[2:]
    height, width = spatial[-2:]
    step = max(1, math.ceil(max(height, width) / max_size))
    rest: list[Any] = [z] if len(spatial) == 3 else []
    rest += [slice(None, None, step), slice(None, None, step)]
    data = stack.data
    if isinstance(channel, list):
        # one computation per channel: dask then fuses each plane's slice into the read of its chunk,
        # where a single graph sharing a chunk between channels would read the whole chunk
        return np.stack([np.asarray(data[(sample, c, *rest)].compute()) for c in channel])
    return np.asarray(data[(sample, channel, *rest)].compute())


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
    """Every level of the multiscale ``stack`` is a level of (in ``attrs["image_uri"]``; empty if none)."""
    from ..loading.loaders import load_zarrs

    image = stack.attrs.get("image_uri")
    if image is None:
        return []
    runs: list[list[LazyImageStack]] = []  # one per multiscale of the image group, each from its level 0
    for level in load_zarrs(image, stack.original_axes):
        if level.level == 0 or not runs:
            runs.append([])
        runs[-1].append(level)
    return next((run for run in runs if any(s.source == stack.source for s in run)), [])


#: Where [`show()`][show] may put its scale bar (matplotlib's location names).
SCALEBAR_LOCATIONS = (
    "lower right",
    "lower left",
    "upper right",
    "upper left",
    "lower center",
    "upper center",
    "center left",
    "center right",
    "right",
    "center",
)

#: Colours of a composite's channels, in order (the napari front end's order; matplotlib's
#: ``"lime"`` is pure green, its ``"green"`` half as bright), unless the channel names end in
#: ``R``, ``G``, ``B`` (``"R"``, ``"Brightfield:G"``): then red, lime, blue.
COMPOSITE_COLORS = ("magenta", "lime", "cyan", "yellow", "red", "blue")

_RGB_SUFFIXES = {"R": "red", "G": "lime", "B": "blue"}

#: Length units as powers of ten of a metre (OME-NGFF / UDUNITS-2 names).
_METRE_EXPONENTS = {
    "picometer": -12,
    "angstrom": -10,
    "nanometer": -9,
    "micrometer": -6,
    "millimeter": -3,
    "centimeter": -2,
    "decimeter": -1,
    "meter": 0,
    "kilometer": 3,
}

#: Units a scale bar's label is written in: the largest whose value is at least 1.
_LABEL_UNITS = ((3, "km"), (0, "m"), (-3, "mm"), (-6, "µm"), (-9, "nm"))

_TICKS = ("pixels", "physical")


def scale_bar_length(pixel_size: float, unit: str | None, width: int, fraction: float = 0.25) -> tuple[float, str]:
    """A "nice" scale bar for an image ``width`` pixels wide: 1, 2 or 5 times a power of ten, at most ``fraction``.

    Parameters
    ----------
    pixel_size : float
        Size of one pixel along X, in ``unit``.
    unit : str, optional
        The unit of ``pixel_size`` (a name or symbol: ``"micrometer"``, ``"µm"``).
        A length unit's label is written in nm, µm, mm, m or km, whichever gives
        a value of at least 1 (``0.5 µm`` is ``500 nm``); any other unit is kept.
    width : int
        Width of the image in pixels.
    fraction : float
        Largest length of the bar as a fraction of the image's width (the bar is
        longer than ``fraction / 2.5`` of it).

    Returns
    -------
    length : float
        The bar's length in pixels.
    label : str
        Its length with the unit's symbol (``"50 µm"``).

    Raises
    ------
    SelectionError
        If ``pixel_size``, ``width`` or ``fraction`` is not positive and finite.

    Examples
    --------
    >>> scale_bar_length(0.65, "micrometer", 384)
    (76.92307692307692, '50 µm')
    >>> scale_bar_length(0.005, "micrometer", 200)
    (40.0, '200 nm')
    """
    values = {"pixel_size": pixel_size, "width": width, "fraction": fraction}
    for key, value in values.items():
        if isinstance(value, bool) or not isinstance(value, (int, float, np.number)) or not 0 < value < math.inf:
            msg = f"{key} must be a positive finite number, got {value!r}"
            raise SelectionError(msg)
    target = float(fraction) * int(width) * float(pixel_size)  # in ``unit``
    k = math.floor(math.log10(target))
    mantissa = next((m for m in (5, 2) if m * 10.0**k <= target * (1 + 1e-12)), 1)
    length = mantissa * 10.0**k / float(pixel_size)
    name = unit_name(unit)
    exponent = _METRE_EXPONENTS.get(name or "")
    if exponent is None:  # not a length unit lazystack can convert: keep it
        kept = unit_symbol(name or unit)
        return length, f"{mantissa * 10.0**k:g}" + (f" {kept}" if kept else "")
    metres = k + exponent  # the bar is mantissa * 10**metres metres
    power, symbol = next(((p, u) for p, u in _LABEL_UNITS if p <= metres), _LABEL_UNITS[-1])
    shift = metres - power
    value = mantissa * 10**shift if shift >= 0 else mantissa * 10.0**shift
    return length, f"{value:g} {symbol}"


def _x_scale(stack: LazyImageStack) -> tuple[float, str] | None:
    """(size of one pixel of the stack along X, its unit name) when the stack declares both, else None."""
    units = stack.attrs.get("units") or {}
    size = _pixel_step(stack, "X") if "X" in stack.physical_pixel_sizes else None
    if "X" not in units or size is None or not 0 < size < math.inf:
        return None
    return size, str(units["X"])


def _pixel_step(stack: LazyImageStack, axis: str) -> float | None:
    """Physical distance between neighbouring pixels along ``axis`` (a strided view's), None without a size."""
    positions = stack.coords.get(axis)
    if positions is not None and len(positions) > 1 and np.issubdtype(np.asarray(positions).dtype, np.number):
        return abs(float(positions[-1] - positions[0]) / (len(positions) - 1))
    size = stack.physical_pixel_sizes.get(axis)
    return None if size is None else abs(float(size))


def _channel_list(stack: LazyImageStack, channel: Any) -> list[int]:
    """Channel indices from an int, a name, ``"all"`` or a sequence of ints and names."""
    n_channels = stack.data_shape[1]
    names = stack.channel_names or []
    accepted = f"an index in range({n_channels})" + (f" or a name of {names}" if names else "")

    def one(value: Any) -> int:
        if isinstance(value, str):
            if value in names:
                return names.index(value)
            msg = f"channel {value!r} is not a channel of {stack.source}: accepted {accepted}, 'all' or a list of these"
            raise SelectionError(msg)
        return _check_index("channel", value, n_channels)

    if isinstance(channel, str) and channel == "all" and "all" not in names:
        return list(range(n_channels))
    if isinstance(channel, str) or not isinstance(channel, Sequence):
        return [one(channel)]
    if not channel:
        msg = f"channel=[] selects no channel: give {accepted}, 'all' or a non-empty list of these"
        raise SelectionError(msg)
    out = [one(c) for c in channel]
    repeated = sorted({c for c in out if out.count(c) > 1})
    if repeated:
        msg = f"channel={list(channel)!r} repeats channel(s) {repeated}: each may appear once"
        raise SelectionError(msg)
    return out


def _rgb_names(names: list[str]) -> list[str | None]:
    """``"red"``/``"lime"``/``"blue"`` for channel names ending in R, G, B (after a ``:``), else None."""
    return [_RGB_SUFFIXES.get(n.rsplit(":", 1)[-1].strip().upper()) for n in names]


def is_rgb(stack: LazyImageStack, channels: Sequence[int] | None = None) -> bool:
    """Whether ``channels`` (default: all) of ``stack`` are the samples of RGB(A) pixels.

    True for 3 (RGB) or 4 (RGBA) channels when their names end in ``R``, ``G``,
    ``B`` (and ``A``) in that order (a CZI's ``"R"``, ``"G"``, ``"B"`` or
    ``"Brightfield:R"`` ...), when the source declares colour samples (a TIFF
    whose axes, as tifffile reads them, have ``S``), or for unnamed ``uint8``
    channels.

    Parameters
    ----------
    stack : LazyImageStack
        The stack.
    channels : sequence of int, optional
        Channel indices (default: every channel).

    Returns
    -------
    bool

    Examples
    --------
    >>> import numpy as np
    >>> from lazystack import load_arrays
    >>> (photo,) = load_arrays([np.zeros((8, 8, 3), np.uint8)], "YXC")
    >>> (cells,) = load_arrays([np.zeros((3, 8, 8), np.uint16)], "CYX")
    >>> is_rgb(photo), is_rgb(cells), is_rgb(photo, [0, 1])
    (True, False, False)
    """
    n_channels = stack.data_shape[1]
    selected = list(range(n_channels)) if channels is None else list(channels)
    if len(selected) not in (3, 4):
        return False
    names = stack.channel_names
    if names is not None:
        picked = [names[c] for c in selected]
        suffixes = [n.rsplit(":", 1)[-1].strip().upper() for n in picked]
        return suffixes == list("RGBA"[: len(selected)])
    if selected != list(range(len(selected))) or n_channels != len(selected):
        return False
    file_axes = str(stack.attrs.get("file_axes") or "").upper()
    return "S" in file_axes or np.dtype(stack.data_dtype) == np.uint8


def _limits(plane: np.ndarray, robust: bool, vmin: float | None, vmax: float | None) -> tuple[float, float]:
    """Contrast limits of one channel: given, 2nd/98th percentiles (robust) or min/max of its finite values."""
    finite = plane[np.isfinite(plane)] if plane.dtype.kind == "f" else plane
    if finite.dtype == bool:  # a mask: numpy's percentile cannot interpolate booleans
        finite = finite.view(np.uint8)
    if finite.size:
        lo, hi = np.percentile(finite, [2, 98]) if robust else (finite.min(), finite.max())
    else:
        lo, hi = 0.0, 1.0
    for name, value in (("vmin", vmin), ("vmax", vmax)):
        if value is not None and not np.isfinite(float(value)):
            msg = f"{name} must be a finite number (or None for the image's own limits), got {value!r}"
            raise SelectionError(msg)
    if vmin is not None and vmax is not None and not float(vmax) > float(vmin):
        msg = f"vmin must be below vmax, got vmin={vmin!r}, vmax={vmax!r}"
        raise SelectionError(msg)
    lo = float(lo) if vmin is None else float(vmin)
    hi = float(hi) if vmax is None else float(vmax)
    return lo, hi if hi > lo else lo + 1


def composite(planes: np.ndarray, colors: Sequence[Any], limits: Sequence[tuple[float, float]]) -> np.ndarray:
    """Blend channels additively into an RGB image, each in its colour (as napari and Fiji composites).

    Channel ``i`` is stretched linearly between its limits ``(lo_i, hi_i)`` and
    clipped to ``[0, 1]``, ``n_i = clip((plane_i - lo_i) / (hi_i - lo_i), 0, 1)``
    (NaN counts as 0); the result is ``clip(sum_i n_i * rgb(colors[i]), 0, 1)``.

    Parameters
    ----------
    planes : numpy.ndarray
        ``(n_channels, height, width)``.
    colors : sequence
        One matplotlib colour per channel (``"magenta"``, ``"#00ff00"``, ``(1, 0, 0)``).
    limits : sequence of (float, float)
        ``(lo, hi)`` per channel, ``hi > lo``.

    Returns
    -------
    numpy.ndarray
        ``(height, width, 3)`` float64 in ``[0, 1]``.

    Raises
    ------
    SelectionError
        If the numbers of planes, colours and limits differ, a colour is not a
        matplotlib colour, or limits are not increasing.

    Examples
    --------
    >>> planes = np.array([[[0, 10]], [[10, 5]]])
    >>> composite(planes, ["red", "lime"], [(0, 10), (0, 10)])[0].tolist()
    [[0.0, 1.0, 0.0], [1.0, 0.5, 0.0]]
    """
    from matplotlib.colors import to_rgb

    planes = np.asarray(planes)
    if planes.ndim != 3 or not len(planes) == len(colors) == len(limits):
        msg = (
            f"composite needs planes of shape (n_channels, height, width) with one colour and one (lo, hi) per "
            f"channel, got planes of shape {planes.shape}, {len(colors)} colour(s), {len(limits)} limit(s)"
        )
        raise SelectionError(msg)
    out = np.zeros((*planes.shape[1:], 3))
    for plane, color, (lo, hi) in zip(planes, colors, limits, strict=True):
        try:
            rgb = np.asarray(to_rgb(color))
        except ValueError as exc:
            msg = f"{color!r} is not a matplotlib colour (a name like 'magenta', '#ff00ff' or an RGB tuple)"
            raise SelectionError(msg) from exc
        if not hi > lo:
            msg = f"contrast limits must increase (lo < hi), got {(lo, hi)!r}"
            raise SelectionError(msg)
        scaled = np.nan_to_num(np.clip((plane.astype(np.float64) - lo) / (hi - lo), 0, 1))
        out += scaled[..., None] * rgb
    return np.clip(out, 0, 1)


def _true_colour(planes: np.ndarray, vmin: float | None, vmax: float | None) -> np.ndarray:
    """``(3|4, h, w)`` samples as an image matplotlib shows as they are: uint8 unchanged, else floats in [0, 1]."""
    pixels = np.moveaxis(planes, 0, -1)
    if vmin is not None or vmax is not None:
        lo = 0.0 if vmin is None else float(vmin)
        hi = (_integer_top(pixels) if pixels.dtype.kind in "ui" else 1.0) if vmax is None else float(vmax)
        if not hi > lo:
            msg = f"vmin must be below vmax for RGB samples, got vmin={lo!r}, vmax={hi!r}"
            raise SelectionError(msg)
        return np.clip(np.nan_to_num((pixels.astype(np.float64) - lo) / (hi - lo)), 0, 1)
    if pixels.dtype == np.uint8:
        return pixels
    if pixels.dtype.kind in "ui":
        return np.clip(pixels.astype(np.float64) / _integer_top(pixels), 0, 1)
    return np.clip(np.nan_to_num(pixels.astype(np.float64)), 0, 1)


#: Bit depths of integer RGB samples (cameras store 10, 12 or 14 bits in uint16).
_BIT_DEPTHS = (8, 10, 12, 14, 16, 32, 64)


def _integer_top(pixels: np.ndarray) -> float:
    """The largest value of the smallest common bit depth holding ``pixels`` (4095 for 12-bit data)."""
    top = int(pixels.max()) if pixels.size else 0
    bits = next((b for b in _BIT_DEPTHS if top < 2**b), _BIT_DEPTHS[-1])
    return float(min(2**bits - 1, np.iinfo(pixels.dtype).max))


def _per_channel(name: str, value: Any, n: int) -> list[Any]:
    if value is None or isinstance(value, (int, float, np.number)):
        return [value] * n
    values = list(value)
    if len(values) != n:
        msg = f"{name} must be one number or one per shown channel ({n}), got {value!r}"
        raise SelectionError(msg)
    return values


def _scalebar_location(scalebar: bool | str) -> str | None:
    if scalebar is True:
        return "lower right"
    if scalebar is False or scalebar is None:
        return None
    if isinstance(scalebar, str) and scalebar in SCALEBAR_LOCATIONS:
        return scalebar
    msg = f"scalebar={scalebar!r} is not accepted: give True, False or a location, one of {list(SCALEBAR_LOCATIONS)}"
    raise SelectionError(msg)


def show(
    stack: LazyImageStack,
    sample: int = 0,
    channel: int | str | Sequence[int | str] | None = None,
    z: int | None = None,
    *,
    max_size: int = 512,
    use_levels: bool = True,
    ax: Axes | None = None,
    cmap: str = "gray",
    robust: bool = True,
    colorbar: bool = True,
    rgb: bool | None = None,
    colors: Sequence[Any] | None = None,
    scalebar: bool | str = True,
    ticks: str = "pixels",
    **imshow_kwargs: Any,
) -> Axes:
    """Draw one plane of ``stack`` with matplotlib (needs the ``plot`` extra).

    Only that plane is read, for the channels shown, strided to at most
    ``max_size`` pixels a side (see [`thumbnail()`][thumbnail]). The title names
    the source, sample, channel(s) (and their names) and z.

    * **One channel** (an index or a name) is drawn with ``cmap``.
    * **Several channels** (a list, or ``"all"`` of a stack with more than
      one channel; ``"all"`` of one channel is that channel) are blended additively, as
      napari and Fiji show composites: channel ``i``, stretched between its
      limits and clipped, ``n_i = clip((plane_i - lo_i) / (hi_i - lo_i), 0, 1)``
      (NaN as 0), adds ``n_i`` times the RGB of its colour; the sum is clipped
      to ``[0, 1]``.
    * **RGB(A) pixels** are shown in true colour: ``uint8`` as stored, other
      integers divided by the largest value of the smallest bit depth of 8,
      10, 12, 14, 16 (32, 64) bits that holds the plane (12-bit camera data
      stored as ``uint16`` by 4095, full-range ``uint16`` by 65535), floats
      clipped to ``[0, 1]``.
      3 (or 4) channels are RGB(A) when their names end in ``R``, ``G``, ``B``
      (``A``) in that order (a CZI's ``Bgr24`` pixels: ``"R"``, ``"G"``,
      ``"B"``), when the source declares colour samples (a TIFF whose axes, as
      tifffile reads them, have ``S``), or when they are unnamed ``uint8``.
    * A **scale bar** is drawn when the stack has a physical pixel size along
      X with a unit (OME-Zarr scale and units, OME-TIFF ``PhysicalSizeX``,
      ImageJ, CZI), and none otherwise: its length is 1, 2 or 5 times a power
      of ten, at most a quarter of the plane's width (at least a tenth), and
      its label is in nm, µm, mm, m or km, whichever gives a value of at least
      1 (``500 nm``, not ``0.5 µm``).

    Parameters
    ----------
    stack : LazyImageStack
        The stack.
    sample : int
        Canonical sample index.
    channel : int, str, sequence or "all", optional
        A channel index or name; a list of them, or ``"all"``, for a composite
        (``"all"`` of a one-channel stack draws that channel with ``cmap``).
        Default: every channel of an RGB(A) stack, else channel 0.
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
        Colour map of one channel.
    robust : bool
        Stretch the contrast of each channel between its 2nd and 98th
        percentiles instead of its minimum and maximum (unless ``vmin`` /
        ``vmax`` are given).
    colorbar : bool
        Add a colour bar (one channel) or a legend of the channels' colours (a composite).
    rgb : bool, optional
        Show 3 or 4 channels as RGB(A) samples (True) or as a composite (False);
        default: when they are RGB(A), as described above.
    colors : sequence, optional
        A matplotlib colour per channel of a composite; default: red, lime
        (pure green), blue for channels named R, G, B, else magenta, lime,
        cyan, yellow, red, blue in turn (the napari front end's order).
    scalebar : bool or str
        Draw a scale bar (``True``: in the lower right corner), none
        (``False``), or draw it at a location matplotlib names: ``"lower
        right"``, ``"lower left"``, ``"upper right"``, ``"upper left"``,
        ``"lower center"``, ``"upper center"``, ``"center left"``, ``"center
        right"``, ``"right"``, ``"center"``.
    ticks : {"pixels", "physical"}
        Axis ticks in pixels of the full-resolution plane (default; pixel ``i``
        spans ``[i, i + 1)``), or at the stack's physical positions (its xarray
        coordinates, with their units, as pixel centres: pixel ``i`` is centred
        on its coordinate, as xarray's ``plot.imshow`` draws it; needs physical
        pixel sizes along Y and X).
    **imshow_kwargs
        Passed to `matplotlib.axes.Axes.imshow()`. For a composite, ``vmin`` and
        ``vmax`` may be one number or one per channel; for RGB they rescale
        every sample.

    Returns
    -------
    matplotlib.axes.Axes
        The axes drawn on (its figure is ``ax.figure``).

    Raises
    ------
    MissingDependencyError
        If matplotlib is not installed.
    SelectionError
        If an index or channel name is out of range, ``rgb=True`` is asked for
        other than 3 or 4 channels, ``vmin`` is not below ``vmax``, or an option is
        not one of those accepted.
    """
    try:
        import matplotlib.pyplot as plt
    except ImportError as exc:
        msg = "stack.show() needs matplotlib, the optional 'plot' extra: pip install 'lazystack[plot]'"
        raise MissingDependencyError(msg) from exc
    location = _scalebar_location(scalebar)
    if ticks not in _TICKS:
        msg = f"ticks must be one of {list(_TICKS)}, got {ticks!r}"
        raise SelectionError(msg)
    if rgb not in (None, True, False):
        msg = f"rgb must be True, False or None (decide from the stack), got {rgb!r}"
        raise SelectionError(msg)
    if channel is None:
        every = rgb is True or (rgb is None and is_rgb(stack))
        channels = list(range(stack.data_shape[1])) if every else [0]
        several = len(channels) > 1
    else:
        channels = _channel_list(stack, channel)
        as_list = isinstance(channel, Sequence) and not isinstance(channel, str)
        every = isinstance(channel, str) and channel == "all" and "all" not in (stack.channel_names or [])
        several = as_list or (every and len(channels) > 1)
    if rgb is True and len(channels) not in (3, 4):
        msg = f"rgb=True needs 3 (RGB) or 4 (RGBA) channels, got channel={channel!r}: {len(channels)} channel(s)"
        raise SelectionError(msg)
    true_colour = several and (rgb is True or (rgb is None and is_rgb(stack, channels)))
    extent, labels = _extent(stack, ticks)

    picked: int | list[int] = channels if several else channels[0]
    plane, step = thumbnail(stack, sample, picked, z, max_size=max_size, use_levels=use_levels)
    if ax is None:
        _, ax = plt.subplots()
    names = stack.channel_names
    shown = [f"{c}" + (f" ({names[c]})" if names else "") for c in channels]
    vmin, vmax = imshow_kwargs.pop("vmin", None), imshow_kwargs.pop("vmax", None)
    options = {"extent": extent, "interpolation": "nearest", **imshow_kwargs}
    if not several:
        if robust or vmin is not None or vmax is not None:
            vmin, vmax = _limits(plane, robust, vmin, vmax) if plane.size else (vmin, vmax)
        image = ax.imshow(plane, cmap=cmap, vmin=vmin, vmax=vmax, **options)
        if colorbar:
            ax.figure.colorbar(image, ax=ax)
        label = f"channel {shown[0]}"
    elif true_colour:
        ax.imshow(_true_colour(plane, vmin, vmax), **options)
        label = ("RGBA" if len(channels) == 4 else "RGB") + f" (channels {', '.join(map(str, channels))})"
    else:
        colours = list(colors) if colors is not None else _default_colours(stack, channels)
        if len(colours) != len(channels):
            msg = f"colors must give one colour per shown channel ({len(channels)}), got {colors!r}"
            raise SelectionError(msg)
        lows, highs = _per_channel("vmin", vmin, len(channels)), _per_channel("vmax", vmax, len(channels))
        limits = [_limits(p, robust, lo, hi) for p, lo, hi in zip(plane, lows, highs, strict=True)]
        ax.imshow(composite(plane, colours, limits), **options)
        if colorbar:
            _legend(ax, shown, colours)
        label = "channels " + " + ".join(shown)
    where = f"sample {sample}, {label}"
    if len(stack.data_shape) == 5:
        where += f", z {stack.data_shape[2] // 2 if z is None else z}"
    if step > 1:
        where += f", 1/{step} resolution"
    source = str(stack.source)
    ax.set_title(f"{source if len(source) <= 60 else '...' + source[-57:]}\n{where}", fontsize="small")
    ax.set_xlabel(labels[1])
    ax.set_ylabel(labels[0])
    if location is not None:
        _add_scalebar(ax, stack, location, physical=ticks == "physical")
    return ax


def _default_colours(stack: LazyImageStack, channels: list[int]) -> list[str]:
    names = stack.channel_names
    suffixes = _rgb_names([names[c] for c in channels]) if names else [None] * len(channels)
    if all(suffixes) and len(set(suffixes)) == len(suffixes):
        return [str(s) for s in suffixes]
    return [COMPOSITE_COLORS[i % len(COMPOSITE_COLORS)] for i in range(len(channels))]


def _extent(stack: LazyImageStack, ticks: str) -> tuple[tuple[float, float, float, float], tuple[str, str]]:
    """imshow's extent and the Y, X axis labels: full-resolution pixels, or physical positions."""
    height, width = stack.data_shape[-2:]
    if ticks == "pixels":
        return (0, width, height, 0), ("Y (pixels)", "X (pixels)")
    coords = stack.coords
    sizes = stack.physical_pixel_sizes
    units = stack.attrs.get("units") or {}
    missing = [a for a in "YX" if a not in sizes or a not in coords]
    if missing:
        msg = (
            f"ticks='physical' needs physical pixel sizes along Y and X; {stack.source} has "
            f"{sizes or 'none'}: use ticks='pixels'"
        )
        raise SelectionError(msg)
    spans = []
    for axis, n in (("Y", height), ("X", width)):
        positions = np.asarray(coords[axis], dtype=np.float64)
        step = (positions[-1] - positions[0]) / (n - 1) if n > 1 else float(sizes[axis])
        # positions are pixel centres (OME-NGFF's scale and translation; xarray's imshow draws them so)
        spans.append((float(positions[0] - step / 2), float(positions[0] + (n - 0.5) * step)))
    (y0, y1), (x0, x1) = spans
    names = tuple(f"{a} ({unit_symbol(units[a])})" if a in units else a for a in "YX")
    return (x0, x1, y1, y0), (names[0], names[1])


def _legend(ax: Axes, shown: list[str], colours: list[Any]) -> None:
    from matplotlib.patches import Patch

    handles = [Patch(facecolor=c, edgecolor="none", label=s) for s, c in zip(shown, colours, strict=True)]
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1), fontsize="small", frameon=False)


def _add_scalebar(ax: Axes, stack: LazyImageStack, location: str, *, physical: bool) -> None:
    from mpl_toolkits.axes_grid1.anchored_artists import AnchoredSizeBar

    scale = _x_scale(stack)
    if scale is None:
        return
    size, unit = scale
    length, label = scale_bar_length(size, unit, stack.data_shape[-1])
    thickness = max(stack.data_shape[-2] / 150, 0.5)  # in pixels: a visible bar at any size
    bar = AnchoredSizeBar(
        ax.transData,
        length * size if physical else length,
        label,
        location,
        pad=0.4,
        borderpad=0.6,
        sep=3,
        color="white",
        frameon=True,
        size_vertical=thickness * (_pixel_step(stack, "Y") or 1.0) if physical else thickness,
        label_top=True,
        fontproperties={"size": "small"},
    )
    bar.patch.set_facecolor("black")
    bar.patch.set_edgecolor("none")
    bar.patch.set_alpha(0.55)
    bar.set_gid("lazystack-scalebar")
    ax.add_artist(bar)
