"""napari reader plugin (npe2): CZI, TIFF and Zarr / OME-Zarr paths as lazy layers.

The manifest ``lazystack/napari.yaml`` registers [`get_reader()`][get_reader] for
``*.czi``, ``*.tif``, ``*.tiff``, ``*.btf``, ``*.tf8`` files and for
directories (Zarr stores and groups, ``*.zarr``). Opening a path gives one
image layer per stack and channel:

* every layer wraps the stack's dask array ([`LazyImageStack.data`][LazyImageStack.data]), so
  napari reads only the chunks of the planes it shows;
* the levels of an OME-Zarr image become one multiscale layer (level 0
  first); the scenes of a CZI and the images of a ``bioformats2raw.layout``
  store become separate layers;
* channels become separate layers named after the file's channel names,
  coloured red / green / blue for RGB channels and blended additively;
* ``scale`` comes from the stack's physical pixel sizes, ``translate`` from an
  OME-Zarr translation and a view's offset (a view overlays its whole stack),
  ``units`` from the file's units where napari knows
  them; CZI scenes all start at the origin (napari's grid mode shows them side
  by side; a scene's stage position is in ``metadata["lazystack_attrs"]``);
* contrast limits are the range of the coarsest level when it is small, else
  of a bounded window of its middle plane, so opening reads no more than the
  coarsest level (or that window) plus metadata.

Nothing here imports napari: [`read()`][read] returns plain layer-data tuples
``(data, kwargs, "image")``, which napari (or ``npe2.read``) turns into layers.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..core.errors import AxesError, LazyStackError
from ..stack import LazyImageStack

__all__ = ["LayerData", "get_reader", "layer_data", "read"]

#: One napari layer: ``(data, layer keyword arguments, layer type)``.
LayerData = tuple[Any, dict[str, Any], str]

#: A reader function as napari calls it: path(s) in, layer data out.
ReaderFunction = Callable[[str | Sequence[str]], list[LayerData]]

#: Largest number of elements of the coarsest level read whole for contrast limits;
#: above it, a window of its middle plane (at most ``_WINDOW`` pixels a side) is read.
_SAMPLE_ELEMENTS = 1 << 22
_WINDOW = 1024

_FILE_KINDS = ("tiff", "czi", "zarr")

#: Units as files write them -> names napari's unit registry (pint) knows.
_UNITS = {
    "µm": "micrometer",
    "μm": "micrometer",
    "um": "micrometer",
    "micron": "micrometer",
    "microns": "micrometer",
    "micrometer": "micrometer",
    "micrometre": "micrometer",
    "nm": "nanometer",
    "nanometer": "nanometer",
    "nanometre": "nanometer",
    "mm": "millimeter",
    "millimeter": "millimeter",
    "millimetre": "millimeter",
    "cm": "centimeter",
    "centimeter": "centimeter",
    "m": "meter",
    "meter": "meter",
    "metre": "meter",
    "å": "angstrom",
    "angstrom": "angstrom",
}

_RGB_COLORMAPS = {"R": "red", "G": "green", "B": "blue"}
_CYCLE = ("magenta", "green", "cyan", "yellow", "blue", "red")


def get_reader(path: str | Sequence[str]) -> ReaderFunction | None:
    """Return [`read()`][read] if lazystack opens every path, else None (napari's ``get_reader``).

    Only the paths are looked at (extension, Zarr metadata files): nothing is
    opened, so napari can ask every plugin cheaply.

    Parameters
    ----------
    path : str or sequence of str
        What napari was asked to open (a file, a directory or a URI).

    Returns
    -------
    callable or None
        [`read()`][read], or None when a path is not a CZI, TIFF or Zarr source.

    Examples
    --------
    >>> get_reader("image.png") is None
    True
    """
    paths = [path] if isinstance(path, (str, os.PathLike)) else list(path)
    if not paths or not all(_accepts(os.fspath(p)) for p in paths):
        return None
    return read


def _accepts(path: str) -> bool:
    from ..loading.auto import _is_zarr_dir, source_kind

    try:
        kind = source_kind(path)
    except LazyStackError:
        return False
    if kind not in _FILE_KINDS:
        return False
    # a local Zarr source is a directory holding Zarr metadata (not a chunk file inside a store)
    return kind != "zarr" or "://" in path or _is_zarr_dir(Path(path))


def read(path: str | Sequence[str]) -> list[LayerData]:
    """Open CZI, TIFF or Zarr / OME-Zarr paths as lazy napari image layers.

    Parameters
    ----------
    path : str or sequence of str
        One path / URI or several; the layers of every path, in order.

    Returns
    -------
    list of LayerData
        ``(data, kwargs, "image")`` per layer; ``data`` is a dask array, or a
        list of dask arrays (level 0 first) for a multiscale layer.

    Raises
    ------
    LazyStackError
        As [`lazystack.load()`][lazystack.load] (a missing file, an unreadable format ...).
    """
    paths = [path] if isinstance(path, (str, os.PathLike)) else list(path)
    layers: list[LayerData] = []
    for p in paths:
        text = os.fspath(p)
        layers.extend(layer_data(_load(text), name=_display_name(text)))
    return layers


def _load(path: str) -> list[LazyImageStack]:
    from ..loading.auto import load, propose_axes, source_kind

    axes = propose_axes(path)
    if axes is None and source_kind(path) == "tiff":
        axes = _guess_tiff_axes(path)
    if axes is None:
        msg = f"{path!r} declares no axes lazystack can use; open it in Python with lazystack.load(path, axes=...)"
        raise AxesError(msg)
    return list(load(path, axes))


def _guess_tiff_axes(path: str) -> str | None:
    """Axes for a TIFF whose own axes lazystack cannot use: unknown axes become ``S``, ``T``, ``Z``.

    tifffile names axes it cannot tell ``Q`` (or ``I``, ``E`` ...); for viewing, such an axis is a
    slider like any other. None when there are not enough letters, or for RGB samples beside channels.
    """
    import tifffile

    with tifffile.TiffFile(path) as tif:
        declared = str(tif.series[0].axes).upper() if tif.series else ""
    if not declared or ("S" in declared and "C" in declared):
        return None
    declared = declared.replace("S", "C")  # tifffile's S: the samples of RGB pixels
    free = [a for a in "STZ" if a not in declared]
    axes = ""
    for a in declared:
        if a in "TCZYX" and a not in axes:
            axes += a
        elif free:
            axes += free.pop(0)
        else:
            return None
    return axes if "Y" in axes and "X" in axes else None


def _display_name(path: str) -> str:
    text = path.rstrip("/\\")
    return text.replace("\\", "/").rsplit("/", 1)[-1] or text


def layer_data(stacks: Sequence[LazyImageStack], name: str = "lazystack") -> list[LayerData]:
    """napari image layers for lazystack stacks (the levels of an OME-Zarr image become one layer).

    Parameters
    ----------
    stacks : sequence of LazyImageStack
        Stacks as a loader returns them: consecutive levels ``0, 1, 2 ...`` of
        one OME-Zarr image form one multiscale layer; every other stack (a CZI
        scene, a TIFF series, a Zarr array) is a layer of its own.
    name : str
        Base of the layer names (the file name); scenes, images and channels
        are appended.

    Returns
    -------
    list of LayerData
        One ``(data, kwargs, "image")`` per stack (or multiscale image) and
        channel. ``kwargs`` holds ``name``, ``scale``, ``translate``,
        ``axis_labels``, ``contrast_limits``, ``colormap``, ``blending``,
        ``multiscale``, ``metadata`` and, where the file names them, ``units``.

    Examples
    --------
    >>> import numpy as np
    >>> from lazystack import load_arrays
    >>> stacks = load_arrays([np.arange(2 * 32 * 32, dtype=np.uint16).reshape(2, 32, 32)], "CYX")
    >>> [(kw["name"], kw["contrast_limits"]) for _, kw, _ in layer_data(stacks, "demo")]
    [('demo [0]', [0.0, 1023.0]), ('demo [1]', [1024.0, 2047.0])]
    """
    groups = _group_levels(stacks)
    layers: list[LayerData] = []
    for group in groups:
        layers.extend(_image_layers(group, _group_name(group, name, len(groups))))
    return layers


def _group_levels(stacks: Sequence[LazyImageStack]) -> list[list[LazyImageStack]]:
    """Split stacks into images: a run of levels 0, 1, 2 ... of shrinking size is one image."""
    groups: list[list[LazyImageStack]] = []
    for stack in stacks:
        level = stack.level
        if groups and level is not None and level > 0 and _continues(groups[-1], stack):
            groups[-1].append(stack)
        else:
            groups.append([stack])
    return groups


def _continues(group: list[LazyImageStack], stack: LazyImageStack) -> bool:
    last = group[-1]
    if last.level is None or stack.level != last.level + 1 or stack.canonical_axes != last.canonical_axes:
        return False
    if stack.attrs.get("image") != last.attrs.get("image"):
        return False
    same = ("S", "C")  # levels share samples and channels; spatial sizes do not grow
    pairs = zip(stack.canonical_axes, stack.data_shape, last.data_shape, strict=True)
    return all((n == m) if a in same else (n <= m) for a, n, m in pairs)


def _group_name(group: list[LazyImageStack], base: str, n_groups: int) -> str:
    first = group[0]
    if first.scene is not None:
        label = f"scene {first.scene}"
        return f"{base} {label} ({first.scene_name})" if first.scene_name else f"{base} {label}"
    if first.attrs.get("image") is not None:
        return f"{base} image {first.attrs['image']}"
    if first.series is not None and n_groups > 1:
        return f"{base} series {first.series}"
    if n_groups > 1:
        return f"{base} {_display_name(str(first.source))}"
    return base


def _image_layers(levels: list[LazyImageStack], name: str) -> list[LayerData]:
    first = levels[0]
    axes = first.canonical_axes  # "SCYX" or "SCZYX": Y and X always last
    shape = first.data_shape
    # drop singleton samples / channels / planes (napari would show a slider of one step)
    keep = [i for i, (a, n) in enumerate(zip(axes, shape, strict=True)) if a in "YX" or n > 1]
    index = tuple(slice(None) if i in keep else 0 for i in range(len(axes)))
    arrays = [s.data[index] for s in levels]
    kept = "".join(axes[i] for i in keep)
    c_pos = kept.find("C")
    n_channels = shape[axes.index("C")] if c_pos >= 0 else 1
    spatial = kept.replace("C", "")
    scale, translate = _placement(first, spatial)
    labels = [_label(first, a) for a in spatial]
    units = _units(first, spatial)
    limits = _contrast_limits(levels[-1], arrays[-1], c_pos, n_channels)
    names = first.channel_names if c_pos >= 0 else None
    multiscale = len(arrays) > 1
    metadata = {
        "lazystack_source": str(first.source),
        "lazystack_format": first.format,
        "lazystack_levels": [str(s.source) for s in levels],
        "lazystack_attrs": {k: v for k, v in first.attrs.items() if v is not None},
    }
    layers: list[LayerData] = []
    for c in range(n_channels):
        if c_pos >= 0:
            data = [a[(slice(None),) * c_pos + (c,)] for a in arrays]
            channel = names[c] if names is not None and c < len(names) else str(c)
            layer_name = f"{name} [{channel}]"
            colormap = _colormap(channel, c, n_channels)
            blending = "translucent_no_depth" if c == 0 else "additive"
        else:
            data, channel, layer_name, colormap, blending = arrays, None, name, "gray", "translucent_no_depth"
        kwargs: dict[str, Any] = {
            "name": layer_name,
            "scale": scale,
            "translate": translate,
            "axis_labels": labels,
            "contrast_limits": limits[c],
            "colormap": colormap,
            "blending": blending,
            "multiscale": multiscale,
            "metadata": {**metadata, "lazystack_channel": channel},
        }
        if units is not None:
            kwargs["units"] = units
        layers.append((data if multiscale else data[0], kwargs, "image"))
    return layers


def _label(stack: LazyImageStack, axis: str) -> str:
    if axis == "S" and "T" in stack.original_axes and "S" not in stack.original_axes:
        return "T"
    return axis


def _placement(stack: LazyImageStack, spatial: str) -> tuple[list[float], list[float]]:
    """The layer's ``scale`` and ``translate``: a view sits where its pixels are in the source.

    Along ``Z``, ``Y``, ``X``, view pixel ``i`` is source pixel ``start + i * step``, which lies at
    ``translation + (start + i * step) * size`` (``size`` the source's pixel size, 1 without one): the
    scale is ``step * size``, the translate ``translation + start * size``, so that a view (a crop, a
    strided view) overlays the whole stack. Other axes (samples, time) start at 0.
    """
    # CZI scenes stay at the origin: wells millimetres apart would be specks in one view (their
    # positions are in metadata["lazystack_attrs"]["bounding_box"]); napari's grid mode tiles them
    attrs = stack.attrs
    offsets = {a: float(v) for a, v in (attrs.get("translation") or {}).items()}
    sizes = {a: float(v) for a, v in (attrs.get("physical_pixel_sizes") or {}).items()}
    grid = stack.spatial_selection
    coords = stack.coords  # a derived stack's (normalized view's) positions: its selection is its source's
    scale, translate = [], []
    for a in spatial:
        start, step = grid.get(a, (0, 1))
        size = sizes.get(a, 1.0)
        scale.append(step * size)
        first = coords.get(a) if a in sizes else None
        translate.append(float(first[0]) if first is not None and len(first) else offsets.get(a, 0.0) + start * size)
    return scale, translate


def _units(stack: LazyImageStack, spatial: str) -> list[str] | None:
    sizes = stack.physical_pixel_sizes
    if not sizes:
        return None
    declared = stack.attrs.get("units") or stack.attrs.get("physical_pixel_units")
    if declared is None and stack.format == "czi":
        declared = dict.fromkeys(sizes, "micrometer")  # lazystack gives CZI pixel sizes in micrometres
    if not declared:
        return None
    out = []
    for a in spatial:
        if a in sizes:
            unit = _UNITS.get(str(declared.get(a, "")).strip().lower())
            if unit is None:
                return None
            out.append(unit)
        else:
            out.append("pixel")
    return out


def _colormap(channel: str, index: int, n_channels: int) -> str:
    suffix = channel.rsplit(":", 1)[-1].upper()
    if suffix in _RGB_COLORMAPS and n_channels % 3 == 0:
        return _RGB_COLORMAPS[suffix]
    if n_channels == 1:
        return "gray"
    return _CYCLE[index % len(_CYCLE)]


def _contrast_limits(stack: LazyImageStack, coarsest: Any, c_pos: int, n_channels: int) -> list[list[float]]:
    """Per-channel ``[min, max]`` of the coarsest level, or of a window of its middle plane if it is big.

    The window is read with ``extract_patch`` (only the chunks it touches), not through the
    level's dask array, whose chunks may group many stored chunks.
    """
    per_channel = int(np.prod(coarsest.shape)) // max(n_channels, 1)
    if per_channel > _SAMPLE_ELEMENTS:
        shape = stack.data_shape  # S C (Z) Y X
        spatial = shape[2:]
        coords = [n // 2 for n in spatial[:-2]] + [max(0, (n - _WINDOW) // 2) for n in spatial[-2:]]
        size = [1] * (len(spatial) - 2) + [min(_WINDOW, n) for n in spatial[-2:]]
        patch = stack.extract_patch(shape[0] // 2, None, coords, size)  # the middle sample and plane
        values = patch.reshape(patch.shape[0], -1)
        c_pos = 0
    else:
        values = np.asarray(coarsest.compute())
    values = np.moveaxis(values, c_pos, 0) if c_pos >= 0 else values[np.newaxis]
    limits = []
    for plane in values:
        finite = plane[np.isfinite(plane)] if plane.dtype.kind == "f" else plane
        if finite.size == 0:
            limits.append([0.0, 1.0])
            continue
        limits.append(_increasing(float(finite.min()), float(finite.max())))
    return limits


def _increasing(lo: float, hi: float) -> list[float]:
    """``[lo, hi]`` widened when flat: napari refuses contrast limits that do not increase.

    A constant plane gets ``[lo, lo + 1]``, or a step relative to ``lo`` where ``lo + 1 == lo`` (``|lo| >= 2**53``,
    a float32 1e20: ``[lo, lo]`` failed "must be monotonically increasing"), also distinct once napari casts
    the limits to float32.
    """
    if hi > lo:
        return [lo, hi]
    step = max(1.0, abs(lo) * 2.0**-20)
    return [lo, lo + step] if np.isfinite(lo + step) else [lo - step, lo]
