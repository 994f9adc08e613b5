"""The axes a Zarr store declares: OME-Zarr (NGFF) multiscales axes, else dimension names."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from ...core.axes import axes_or_none
from ...core.errors import SourceFormatError, SourceNotFoundError
from . import _ngff, _ngff_letter, _ome_holder, _open_error, _try_group, parse_zarr_source

__all__ = ["propose_axes"]


def propose_axes(source: str | os.PathLike[str], storage_options: Mapping[str, Any] | None = None) -> str | None:
    """The axes a Zarr array or group declares, as a lazystack axes string, or None.

    The OME-Zarr ``multiscales`` axes of the image (or of the image an array
    belongs to), else the arrays' dimension names (``dimension_names`` in
    Zarr v3, ``_ARRAY_DIMENSIONS`` in v2) when all arrays agree.

    Parameters
    ----------
    source : str or os.PathLike
        A local path or URI of a Zarr array or group.
    storage_options : mapping, optional
        fsspec options for remote stores.

    Returns
    -------
    str or None

    Raises
    ------
    SourceNotFoundError
        When nothing is at ``source``.
    SourceFormatError
        When ``source`` is not a readable Zarr store.
    SourceReadError
        When the store cannot be reached (a dead or slow server ...).
    """
    import zarr

    text = os.fspath(source)
    location = parse_zarr_source(text, dict(storage_options or {}))
    store = location.open_store()
    try:
        node = zarr.open(store=store, path=location.path, mode="r")
    except FileNotFoundError as exc:
        msg = f"no Zarr array or group at {text!r}"
        raise SourceNotFoundError(msg) from exc
    except (ValueError, KeyError, TypeError) as exc:
        msg = f"{text!r} is not a readable Zarr store: {exc}"
        raise SourceFormatError(msg) from exc
    except Exception as exc:  # an unreachable server, a refused request ...: named, not the client's raw error
        raise _open_error(location, exc) from exc
    if isinstance(node, zarr.Group):
        declared = _multiscale_axes(node.attrs)
        if declared is not None:
            return declared
        first = _first_image(node, text)  # a plate or a bioformats2raw collection: its first image's axes
        if first is not None:
            return _multiscale_axes(first.attrs)
        proposals = {_array_dim_axes(a) for _, a in sorted(node.arrays())}
        return proposals.pop() if len(proposals) == 1 else None
    # an array: the multiscales of the nearest ancestor group that has them, else its own dimension names
    parts = location.path.strip("/").split("/") if location.path else []
    for depth in range(len(parts) - 1, -1, -1):
        group = _try_group(location.child("/".join(parts[:depth])), store)
        declared = None if group is None else _multiscale_axes(group.attrs)
        if declared is not None:
            return declared
    return _array_dim_axes(node)


def _axis_letter(axis: Any) -> str | None:
    """The letter of an NGFF axis (a name in NGFF 0.3, an object since 0.4), or None."""
    if isinstance(axis, str):
        return _ngff_letter(axis, None)
    return _ngff_letter(str(axis.get("name", "")), axis.get("type")) if isinstance(axis, dict) else None


def _multiscale_axes(attrs: Any) -> str | None:
    multiscales = _ngff(attrs)[0]
    if not multiscales or not isinstance(multiscales[0], Mapping):
        return None
    axes = multiscales[0].get("axes")
    if not axes or not isinstance(axes, list):  # a string "czyx" is no NGFF axes list (opening it says so)
        return None
    letters = [_axis_letter(a) for a in axes]
    if any(letter is None for letter in letters):
        return None
    return axes_or_none("".join(letters))  # type: ignore[arg-type]


def _array_dim_axes(array: Any) -> str | None:
    names = getattr(getattr(array, "metadata", None), "dimension_names", None)
    if not names:
        names = array.attrs.get("_ARRAY_DIMENSIONS")
    if not names or any(not isinstance(n, str) or len(n) != 1 for n in names):
        return None
    return axes_or_none("".join(names))


def _member(group: Any, entries: Any, field: str, where: str) -> Any:
    """The group named by ``entries[0]["path"]`` (a plate's first well, a well's first field) of ``group``."""
    first = entries[0] if isinstance(entries, list) and entries else None
    path = first.get("path") if isinstance(first, Mapping) else None
    if not isinstance(path, str) or not path.strip("/"):
        msg = (
            f"invalid OME-Zarr metadata in {where!r}: {field} must be a non-empty list of {{'path': ...}} objects, "
            f"got {entries!r:.200}"
        )
        raise SourceFormatError(msg)
    try:
        return group[str(path).strip("/")]
    except KeyError as exc:  # zarr's missing member
        msg = f"{field}[0].path = {path!r} of the OME-Zarr metadata in {where!r} is not a group in the store"
        raise SourceNotFoundError(msg) from exc
    except ValueError as exc:  # zarr refuses the path ('..' segments ...)
        msg = f"invalid OME-Zarr metadata in {where!r}: {field}[0].path = {path!r}: {exc}"
        raise SourceFormatError(msg) from exc


def _first_image(group: Any, where: str) -> Any:
    """The first image of a plate (first well, first field), a well, a bioformats2raw layout or a labels group.

    A plate or well whose metadata does not lead to a field raises (``SourceFormatError``, ``SourceNotFoundError``
    naming the field): returning None made ``load()`` ask for axes, hiding what is wrong.
    """
    holder = _ome_holder(group.attrs)
    plate = holder.get("plate")
    if isinstance(plate, dict):
        well = _member(group, plate.get("wells"), "plate.wells", where)
        return _first_field(well, f"{where.rstrip('/')}/{str(plate['wells'][0]['path']).strip('/')}")
    if isinstance(holder.get("well"), dict):  # a well of a plate: its first field
        return _first_field(group, where)
    if "bioformats2raw.layout" in holder:
        return _first_layout_image(group, where)
    labels = holder.get("labels")
    if isinstance(labels, list) and labels:
        name = str(labels[0]).strip("/")
        try:
            return group[name]
        except KeyError as exc:  # was no proposal: load() asked for axes instead of naming the label
            msg = f"label {name!r} listed first by the OME-Zarr labels metadata of {where!r} is not a group there"
            raise SourceNotFoundError(msg) from exc
        except Exception:  # a path zarr refuses, an unreachable server ...: no proposal (opening it says why)
            return None
    return None


def _first_layout_image(group: Any, where: str) -> Any:
    """The first numbered group of a ``bioformats2raw.layout`` group that is an OME-Zarr image (as the loader)."""
    try:
        names = sorted((str(n) for n in group.group_keys() if str(n).isdigit()), key=int)
    except Exception:  # no listing (plain HTTP): the first image is "0"
        names = ["0"]
    for name in names:
        try:
            child = group[name]
        except Exception:
            continue
        if _ngff(child.attrs)[0]:
            return child
    msg = (
        f"Zarr group {where!r} declares the bioformats2raw.layout but none of its numbered groups is an OME-Zarr "
        f"image (numbered groups: {names[:8]})"
    )
    raise SourceFormatError(msg)


def _first_field(well: Any, where: str) -> Any:
    """The first field (image group) of a well group."""
    spec = _ome_holder(well.attrs).get("well")
    images = spec.get("images") if isinstance(spec, Mapping) else None
    return _member(well, images, "well.images", where)
