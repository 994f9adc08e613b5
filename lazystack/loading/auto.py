"""One entry point for every source: [`load()`][load] picks the loader, [`propose_axes()`][propose_axes] reads
declared axes.

[`load()`][load] dispatches on the file extension or URI scheme of each source
to the matching ``load_*`` function, which is handy in notebooks and is what
the command line uses. [`propose_axes()`][propose_axes] reads the axes a file declares
itself (OME / ImageJ TIFF via tifffile, OME-Zarr ``multiscales`` axes or Zarr
dimension names, the dimensions of a CZI file), so that ``lazystack info``
works without ``--axes`` where the file says what its axes are.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from ..core.axes import VALID_AXES, validate_axes
from ..core.errors import (
    AxesError,
    LazyStackError,
    MissingDependencyError,
    SourceFormatError,
    SourceNotFoundError,
    SourceReadError,
    UnsupportedSourceError,
)
from ..core.levels import Levels, parse_levels, select_levels
from ..io.handles import is_file_url, local_path
from ..io.overwrite import interrupted_overwrite_note
from ..io.reader import is_array_like
from ..stack import LazyImageStack

__all__ = ["ACCEPTED_EXTENSIONS", "ACCEPTED_SCHEMES", "load", "propose_axes", "source_kind"]

Kind = Literal["tiff", "zarr", "czi", "npy"]

#: File extensions [`load()`][load] recognises, and the loader each one goes to.
ACCEPTED_EXTENSIONS: dict[str, Kind] = {
    ".tif": "tiff",
    ".tiff": "tiff",
    ".btf": "tiff",
    ".tf8": "tiff",
    ".zarr": "zarr",
    ".czi": "czi",
    ".npy": "npy",
    ".zip": "zarr",  # a zipped Zarr / OME-Zarr store
}

#: URI schemes [`load()`][load] sends to [`lazystack.load_zarrs()`][lazystack.load_zarrs] (fsspec).
ACCEPTED_SCHEMES = ("file", "http", "https", "s3", "gs", "gcs", "az", "abfs", "zip", "memory")

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*)://")
_AT_INDEX = re.compile(r"@(\d+)(?:#level=\d+)?$|#level=\d+$")


def _accepted() -> str:
    exts = ", ".join(ACCEPTED_EXTENSIONS)
    schemes = ", ".join(f"{s}://" for s in ACCEPTED_SCHEMES)
    return (
        f"accepted: files ending in {exts} (a Zarr store may be any directory holding zarr metadata), "
        f"URIs starting with {schemes}, or array-likes; other files: lazystack.load_custom_file or load_bioio"
    )


def _split_index(source: str) -> tuple[str, int | None]:
    """Split ``"file.czi@2"`` into ``("file.czi", 2)`` (a ``#level=k`` suffix, one pyramid level, is dropped)."""
    m = _AT_INDEX.search(source)
    if m is None:
        return source, None
    return source[: m.start()], None if m.group(1) is None else int(m.group(1))


def _is_zarr_dir(path: Path) -> bool:
    return path.is_dir() and any((path / name).exists() for name in ("zarr.json", ".zgroup", ".zarray", ".zattrs"))


def _zarr_root_in(path: str) -> bool:
    return any(part.lower().endswith(".zarr") for part in re.split(r"[/\\]", path))


def _path_text(source: Any, who: str) -> str:
    """``os.fspath(source)``, refusing what is not a str or os.PathLike of str (``bytes``) naming it."""
    if not isinstance(source, (str, os.PathLike)) or not isinstance(text := os.fspath(source), str):
        hint = " (decode bytes paths with os.fsdecode())" if isinstance(source, (bytes, bytearray, os.PathLike)) else ""
        got = f"{type(source).__name__}: {source!r}"
        msg = f"{who} expects a path (str or os.PathLike of str) or a URI, got {got}{hint}"
        raise UnsupportedSourceError(msg)
    return text


def source_kind(source: str | os.PathLike[str]) -> Kind:
    """Name the loader [`load()`][load] would use for ``source``.

    Parameters
    ----------
    source : str or os.PathLike
        A path (optionally with an ``@N`` scene / series suffix) or a URI.

    Returns
    -------
    {"tiff", "zarr", "czi", "npy"}

    Raises
    ------
    SourceNotFoundError
        If ``source`` is a local path that does not exist.
    SourceFormatError
        If a path goes into a ``.zarr`` that is a file (``f.zarr/0``).
    SourceReadError
        If the system refuses to look at the path (permission denied on a folder, a name too long).
    UnsupportedSourceError
        If neither the extension nor the scheme is one lazystack reads (a
        folder of sources names what it holds: load them as a list), a
        ``file:`` URL is refused by `lazystack.io.handles.local_path()`, or
        ``source`` is not a str or os.PathLike of str (a ``bytes`` path:
        decode it with ``os.fsdecode()``).

    Examples
    --------
    >>> source_kind("s3://bucket/image.ome.zarr")
    'zarr'
    """
    text = _path_text(source, "source_kind")
    local = local_path(text, who="load", selector=True, reading=True)  # a path or file: URL, as every loader reads it
    if local is not None and is_file_url(text):  # a file: URL: by its extension (a Zarr store need not exist yet)
        kind = ACCEPTED_EXTENSIONS.get(Path(_split_index(local)[0]).suffix.lower())
        return kind if kind in ("tiff", "czi", "npy") else "zarr"
    m = _SCHEME.match(text) if local is None else None
    if m is not None:
        scheme = m.group(1).lower()
        if scheme in ACCEPTED_SCHEMES:
            kind = ACCEPTED_EXTENSIONS.get(Path(_split_index(text)[0]).suffix.lower())
            if kind in ("tiff", "czi", "npy"):
                msg = (
                    f"{text!r} is a remote {kind.upper() if kind != 'npy' else '.npy'} file: URIs are read as "
                    f"Zarr stores only; copy the file to a local path first (or convert it to OME-Zarr with "
                    f"'lazystack convert' and serve that)"
                )
                raise UnsupportedSourceError(msg)
            return "zarr"
        msg = f"unsupported URI scheme {scheme!r} in {text!r}; {_accepted()}"
        raise UnsupportedSourceError(msg)
    try:
        return _local_kind(local if local is not None else text)
    except LazyStackError:
        raise
    except OSError as exc:  # a stat the system refuses (permission denied on a folder, a name too long)
        msg = f"cannot read {text!r}: {exc}"
        raise SourceReadError(msg) from exc


def _local_kind(text: str) -> Kind:
    """[`source_kind()`][source_kind] of a local path (raises the OSError of a stat the system refuses)."""
    base, _ = _split_index(text)
    path = Path(base)
    from ..sources.zarr import zip_archive_of

    if not path.exists() and zip_archive_of(base) is not None:  # a node inside a zipped store
        return "zarr"
    if _zarr_root_in(base):
        root = base[: base.lower().rfind(".zarr") + len(".zarr")]
        if not Path(root).exists():
            msg = f"no such Zarr store: {root!r} (from source {text!r}){_why_missing(root)}"
            raise SourceNotFoundError(msg + interrupted_overwrite_note(base))
        if not path.exists():
            if not Path(root).is_dir():  # ``f.zarr/0`` with ``f.zarr`` a file: not a store to look into
                msg = (
                    f"{root!r} is a file, not a Zarr store (source {text!r}): a Zarr store is a directory "
                    "holding zarr.json (Zarr v3) or .zgroup/.zarray (Zarr v2), or a .zip archive of one"
                )
                raise SourceFormatError(msg)
            msg = f"no such array or group {base!r} in Zarr store {root!r}{_why_missing(base)}"
            raise SourceNotFoundError(msg)
        return "zarr"
    if not path.exists():
        msg = f"no such file or directory: {base!r}{_why_missing(base)}{interrupted_overwrite_note(base)}"
        raise SourceNotFoundError(msg)
    kind = ACCEPTED_EXTENSIONS.get(path.suffix.lower())
    if kind is not None:
        return kind
    if _is_zarr_dir(path):
        return "zarr"
    if path.is_dir():
        msg = f"cannot tell the format of {text!r} (a directory that is not a Zarr store{_folder_hint(base)}); "
        raise UnsupportedSourceError(msg + _accepted())
    what = f"extension {path.suffix!r}" if path.suffix else "file without extension"
    msg = f"cannot tell the format of {text!r} ({what}); {_accepted()}"
    raise UnsupportedSourceError(msg)


def _why_missing(path: str) -> str:
    """Why a path the system cannot stat does not exist, when it is not simply absent (a looping or dangling link)."""
    try:
        os.stat(path)
    except FileNotFoundError:
        if os.path.islink(path):
            return f" (a symbolic link to {os.readlink(path)!r}, which does not exist)"
        return ""
    except OSError as exc:  # ELOOP (a symbolic link loop), ENOTDIR (a path through a file) ...
        return f" ({exc.strerror})"
    return ""


def _folder_hint(folder: str) -> str:
    """``", holding 2 .tif and 1 .zarr: pass them as a list ..."`` for a folder of sources (the first 10000 names)."""
    import itertools
    from collections import Counter

    try:
        with os.scandir(folder) as entries:
            names = [e.name for e in itertools.islice(entries, 10000)]
    except OSError:
        return ""
    counts = Counter(ext for ext in (Path(n).suffix.lower() for n in names) if ext in ACCEPTED_EXTENSIONS)
    if not counts:
        return ""
    held = " and ".join(f"{n} {ext}" for ext, n in sorted(counts.items()))
    ext = max(sorted(counts), key=lambda e: counts[e])
    example = f"sorted(glob.glob({os.path.join(folder, '*' + ext)!r}))"
    return f", holding {held}: load its sources as a list, e.g. load({example}, ...)"


def _as_sources(source: Any) -> list[Any]:
    if isinstance(source, (str, os.PathLike, bytes, bytearray)) or is_array_like(source):
        return [source]
    if isinstance(source, Sequence):
        return list(source)
    msg = f"expected a path, a URI, an array-like or a sequence of them, got {type(source).__name__}: {source!r}"
    raise UnsupportedSourceError(msg)


def load(source: Any, axes: str | None = None, *, levels: Levels = None, **options: Any) -> list[LazyImageStack]:
    """Open any source lazily, choosing the loader from its extension or URI scheme.

    * ``.tif``, ``.tiff``, ``.btf``, ``.tf8`` (``path@N``: series ``N``):
    [`lazystack.load_tiffs()`][lazystack.load_tiffs];
    * ``.zarr`` paths, directories holding Zarr metadata, and fsspec URIs
      (``file://``, ``http(s)://``, ``s3://``, ``gs://``, ``zip://``, ``memory://`` ...):
      [`lazystack.load_zarrs()`][lazystack.load_zarrs];
    * ``.czi`` (``path@N``: scene ``N``): [`lazystack.load_czis()`][lazystack.load_czis];
    * ``.npy``: one stack over ``np.load(path, mmap_mode="r")`` (read-only, no copy);
    * array-likes (numpy, dask, zarr, h5py ...): [`lazystack.load_arrays()`][lazystack.load_arrays].

    Parameters
    ----------
    source : path, URI, array-like or a sequence of them
        What to open. Sources of different kinds may be mixed.
    axes : str, optional
        Axes of every source (letters of ``STCZYX``). When omitted, the axes
        each file declares are used (see [`propose_axes()`][propose_axes]).
    levels : None, "all", int, sequence of int or str
        Resolution levels of multiscale images (OME-Zarr, OME-TIFF and CZI
        pyramids) to open, 0 = full resolution: None or ``"all"`` (default)
        for all of them, one stack per level. Sources without a pyramid count
        as level 0 (arrays and ``.npy`` files are left out when ``levels``
        excludes 0; a TIFF series, CZI scene or plain Zarr array is a one-level
        image, checked like an OME-Zarr image). See [`lazystack.load_zarrs()`][lazystack.load_zarrs],
        [`lazystack.load_tiffs()`][lazystack.load_tiffs], [`lazystack.load_czis()`][lazystack.load_czis] and
        `lazystack.core.levels`.
    **options
        Passed to the loader (``storage_options=`` for Zarr ...).
        ``storage_options`` is used by Zarr sources only: the other kinds
        (local files and array-likes) ignore it, so one call may mix them.

    Returns
    -------
    StackList of LazyImageStack
        The stacks of every source, in order (a list that shows itself as a
        table, see [`lazystack.StackList`][lazystack.StackList]).

    Raises
    ------
    SourceNotFoundError
        If a local path does not exist.
    UnsupportedSourceError
        If a source is of no kind lazystack reads.
    AxesError
        If ``axes`` is invalid, or omitted for a source that declares none.
    SelectionError
        If ``levels`` is invalid.

    Examples
    --------
    >>> import os, tempfile
    >>> import numpy as np
    >>> path = os.path.join(tempfile.mkdtemp(), "frames.npy")
    >>> np.save(path, np.zeros((3, 64, 64), np.uint16))
    >>> (stack,) = load(path, "TYX")
    >>> stack.data_shape, stack.format
    ((3, 1, 64, 64), 'npy')
    """
    from . import loaders
    from .stacklist import StackList

    if axes is not None:
        axes = validate_axes(axes)
    chosen = parse_levels(levels)
    stacks: list[LazyImageStack] = StackList()
    local_options = {k: v for k, v in options.items() if k != "storage_options"}  # for what is not a Zarr store
    for item in _as_sources(source):
        if is_array_like(item):
            if axes is None:
                msg = f"axes are required for an array of shape {tuple(item.shape)}: give letters of {VALID_AXES!r}"
                raise AxesError(msg)
            stacks.extend(select_levels(loaders.load_arrays([item], axes, **local_options), chosen))
            continue
        if not isinstance(item, (str, os.PathLike)) or not isinstance(os.fspath(item), str):
            hint = (
                " (decode bytes paths with os.fsdecode())" if isinstance(item, (bytes, bytearray, os.PathLike)) else ""
            )
            msg = (
                f"expected a path (str or os.PathLike of str), a URI or an array-like, "
                f"got {type(item).__name__}: {item!r}{hint}"
            )
            raise UnsupportedSourceError(msg)
        text = os.fspath(item)
        kind = source_kind(text)
        item_axes = axes or propose_axes(text, **options)
        if item_axes is None:
            msg = (
                f"{text!r} declares no axes lazystack can use: give them explicitly "
                f"(axes=... in Python, --axes on the command line) as letters of {VALID_AXES!r}"
            )
            raise AxesError(msg)
        try:
            if kind == "zarr":
                stacks.extend(loaders.load_zarrs([text], item_axes, levels=chosen, **options))
            elif kind in ("tiff", "czi"):  # their loaders default to full resolution (CAREamics'); here: all
                load_kind = loaders.load_tiffs if kind == "tiff" else loaders.load_czis
                every = "all" if chosen is None else chosen
                stacks.extend(load_kind([_local(text)], item_axes, levels=every, **local_options))
            else:  # npy: one stack over a read-only memory map
                if local_options:
                    msg = f"{text!r} is a .npy file, which takes no options: got {sorted(local_options)}"
                    raise UnsupportedSourceError(msg)
                stacks.extend(select_levels([_load_npy(_local(text), item_axes)], chosen))
        except MissingDependencyError:
            raise
        except ImportError as exc:
            msg = f"cannot open {text!r}: the {kind} back end of lazystack could not be imported ({exc})"
            raise MissingDependencyError(msg) from exc
    return stacks


def _local(text: str) -> str:
    """The local path of a path or ``file:`` URL, as ``load_tiffs`` / ``load_czis`` read it (``~`` expanded)."""
    from .loaders import local_files

    return local_files(text, "paths", "load")[0]


def _load_npy(path: str, axes: str) -> LazyImageStack:
    import numpy as np

    from ..io.handles import check_regular_file

    check_regular_file(path, ".npy file", "a .npy file")  # np.load would block on a FIFO
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError as exc:
        msg = f"{path!r} is not a readable .npy file: {exc}"
        raise SourceFormatError(msg) from exc
    from ..sources.array import as_reader

    return LazyImageStack(as_reader(array), validate_axes(axes), source=str(path), format="npy")


# -- declared axes ---------------------------------------------------------------------------


def propose_axes(source: str | os.PathLike[str], **options: Any) -> str | None:
    """Return the axes ``source`` declares itself, as a lazystack axes string, or None.

    * TIFF: the axes tifffile reads from OME-XML, ImageJ or other metadata
      for the series (``path@N``: series ``N``, else series 0); tifffile's
      ``S`` (samples of RGB pixels) becomes ``C``. Axes tifffile does not
      know (``Q``, ``I``) or that lazystack has no letter for give None.
    * Zarr: the OME-Zarr ``multiscales`` axes of the image (or of the image
      an array belongs to), else the arrays' dimension names
      (``dimension_names`` in Zarr v3, ``_ARRAY_DIMENSIONS`` in v2) when all
      arrays agree.
    * CZI: ``SCZYX`` when the file has more than one Z plane, else
      ``SCYX`` (time points and other CZI dimensions become samples).
    * ``.npy``: ``YX`` for a 2-D array, None otherwise (no metadata).

    Parameters
    ----------
    source : str or os.PathLike
        A path or URI.
    **options
        ``storage_options=`` for remote Zarr stores; others are ignored.

    Returns
    -------
    str or None
        Validated axes, or None when the source declares none lazystack can use.

    Raises
    ------
    SourceNotFoundError, UnsupportedSourceError
        As `source_kind()`.
    """
    text = _path_text(source, "propose_axes")
    kind = source_kind(text)
    if kind == "tiff":
        from ..sources import tiff

        return tiff.propose_axes(_local(text))
    if kind == "zarr":
        from ..sources.zarr.axes import propose_axes as zarr_axes
        from .loaders import _system_zarr_path

        return zarr_axes(_system_zarr_path(text), options.get("storage_options"))  # ``link/..`` as load_zarrs
    if kind == "czi":
        from ..sources import czi

        return czi.propose_axes(_local(text))
    from ..sources import array

    return array.propose_axes(_local(text))
