"""Loaders: a source plus an axes string in, a list of lazy image stacks out.

Every loader follows the [`ImageStackLoader`][lazystack.ImageStackLoader] protocol:
``loader(source, axes, **options) -> list[LazyImageStack]``. Options say
*how* to load, never *what*, so one call serves an input and a target
source alike. The loaders are thin: a format back end in
[`lazystack.sources`][lazystack.sources] opens the source and reads its metadata; the loader
wraps what it returns in [`LazyImageStack`][lazystack.LazyImageStack].
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from ..core.axes import validate_axes
from ..core.errors import AxesError, UnsupportedSourceError
from ..core.levels import Levels, parse_levels
from ..io.handles import local_path, system_path
from ..io.reader import OpenedSource, is_array_like
from ..sources.array import as_reader
from ..stack import LazyImageStack
from .stacklist import StackList

__all__ = [
    "load_arrays",
    "load_bioio",
    "load_custom_file",
    "load_czis",
    "load_iter_tiff",
    "load_tiffs",
    "load_zarrs",
]

PathLike = str | os.PathLike[str]


def _stacks(opened: Iterable[OpenedSource]) -> StackList:
    return StackList(
        LazyImageStack(o.reader, o.axes, source=o.source, format=o.format, coords=o.coords, attrs=o.attrs)
        for o in opened
    )


def as_source_list(source: PathLike | Sequence[PathLike], what: str = "paths") -> list[str]:
    """Normalise one path/URI or a sequence of them into a list of strings.

    Parameters
    ----------
    source : str, os.PathLike or sequence of them
        The source(s).
    what : str
        What the sources are, for the error message.

    Returns
    -------
    list of str

    Raises
    ------
    UnsupportedSourceError
        If ``source`` is neither a path nor a sequence of paths. A ``bytes``
        path (or an ``os.PathLike`` giving bytes) is refused too: decode it
        with ``os.fsdecode()``.
    """
    if isinstance(source, (str, os.PathLike, bytes, bytearray)):
        source = [source]
    if isinstance(source, Iterable):
        items = list(source)
        bad = [s for s in items if not isinstance(s, (str, os.PathLike)) or not isinstance(os.fspath(s), str)]
        if not bad:
            return [os.fspath(s) for s in items]
        hint = " (decode bytes paths with os.fsdecode())" if isinstance(bad[0], (bytes, bytearray, os.PathLike)) else ""
        msg = f"expected {what} (str or os.PathLike of str), got {type(bad[0]).__name__}: {bad[0]!r}{hint}"
        raise UnsupportedSourceError(msg)
    msg = f"expected {what} (str, os.PathLike or a sequence of them), got {type(source).__name__}: {source!r}"
    raise UnsupportedSourceError(msg)


def local_files(source: PathLike | Sequence[PathLike], what: str, loader: str) -> list[str]:
    """``as_source_list()`` of local files, each read by `lazystack.io.handles.local_path()`.

    ``file:///abs/x.tif`` (or ``file://localhost/abs/x.tif``, ``file:/abs/x.tif``,
    percent-encoded or not, with an ``@N`` / ``#level=K`` selector or not) is
    the local file ``/abs/x.tif``, and ``~/x.tif`` is ``$HOME/x.tif``, as
    [`lazystack.load()`][lazystack.load], [`load_zarrs()`][load_zarrs] and
    [`write_ome_zarr()`][lazystack.write_ome_zarr] read them.

    Parameters
    ----------
    source : str, os.PathLike or sequence of them
        The source(s).
    what : str
        What the sources are, for the error message (``"TIFF paths"``).
    loader : str
        The loader's name, for the error message.

    Returns
    -------
    list of str
        Local paths.

    Raises
    ------
    UnsupportedSourceError
        If an item is not a path, is empty, is a URL of another scheme than
        ``file`` (these loaders read local files only), or a ``file:`` URL
        naming a host or holding a query or a fragment other than ``#level=K``.
    """
    out = []
    for text in as_source_list(source, what):
        local = local_path(text, who=loader, selector=True, reading=True)
        if local is None:
            scheme = text.partition(":")[0].lower()
            msg = (
                f"{loader} reads local files only, not URLs of scheme {scheme!r}: got {text!r}; accepted a local "
                "path or a file:// URL of an absolute path ('file:///data/x'); copy a remote file to a local path first"
            )
            raise UnsupportedSourceError(msg)
        out.append(local)
    return out


def load_arrays(source: Any, axes: str) -> StackList:
    """Wrap array-likes in lazy stacks, without copying or casting.

    Parameters
    ----------
    source : array-like or sequence of array-likes
        numpy arrays, ``np.memmap``, dask arrays, ``zarr.Array``, h5py
        datasets, ``xarray.DataArray`` ... (anything with ``shape``,
        ``dtype`` and ``__getitem__``). A single array-like is one source.
    axes : str
        Axes of every array (e.g. ``"SYX"``, ``"TCZYX"``).

    Returns
    -------
    StackList
        A list of [`LazyImageStack`][LazyImageStack] with a table repr.
        One stack per array, with ``source == "array"``. Data is read (and
        cast to float32) only when a patch is extracted. An in-memory numpy
        array pickles with its data.

    Raises
    ------
    AxesError
        If ``axes`` is invalid, or names an ``xarray.DataArray``'s dims in
        another order (dims ``("y", "x")`` with ``axes="XY"``).
    ShapeMismatchError
        If an array's rank differs from ``len(axes)``.
    UnsupportedSourceError
        If an item is not array-like.

    Examples
    --------
    >>> import numpy as np
    >>> from lazystack import load_arrays
    >>> (stack,) = load_arrays([np.arange(2 * 64 * 64).reshape(2, 64, 64)], "SYX")
    >>> stack.data_shape
    (2, 1, 64, 64)
    >>> stack.extract_patch(1, None, (-8, 60), (16, 16)).shape
    (1, 16, 16)
    """
    axes = validate_axes(axes)
    if not is_array_like(source) and (
        isinstance(source, (str, bytes, Mapping)) or not isinstance(source, Iterable)
    ):  # list(None): a bare "'NoneType' object is not iterable"; a dict or str: its keys or letters as items
        msg = (
            f"load_arrays expects an array-like or a sequence of array-likes, got {type(source).__name__}: "
            f"{source!r:.80}; accepted: numpy/dask/zarr/h5py arrays, np.memmap, xarray.DataArray (or a list of them)"
        )
        raise UnsupportedSourceError(msg)
    items = [source] if is_array_like(source) else list(source)
    if not items:
        msg = "load_arrays got no arrays: pass a non-empty sequence of array-likes"
        raise UnsupportedSourceError(msg)
    stacks = []
    for i, item in enumerate(items):
        coords: dict[str, Any] = {}
        reader = item
        if type(item).__module__.startswith("xarray.") and hasattr(item, "dims"):
            reader = item.data  # the wrapped numpy / dask array: no copy
            named = "".join(str(d) for d in item.dims).upper()
            if len(named) == len(axes) and named != axes and sorted(named) == sorted(axes):
                msg = (
                    f"load_arrays: item {i} is an xarray.DataArray with dims {tuple(item.dims)}, which axes={axes!r} "
                    f"names in another order: pass axes={named!r}, or transpose the DataArray"
                )
                raise AxesError(msg)
            for dim, letter in zip(item.dims, axes, strict=False):
                if str(dim).upper() == letter and dim in item.coords:
                    coords[letter] = item.coords[dim].values
        if not is_array_like(reader):
            msg = (
                f"load_arrays: item {i} is a {type(item).__name__}, not an array-like; "
                "accepted: numpy/dask/zarr/h5py arrays, np.memmap, xarray.DataArray (convert lists with np.asarray)"
            )
            raise UnsupportedSourceError(msg)
        stacks.append(LazyImageStack(as_reader(reader), axes, source="array", format="array", coords=coords))
    return StackList(stacks)


def load_tiffs(source: PathLike | Sequence[PathLike], axes: str, *, levels: Levels = 0) -> StackList:
    """Open TIFF files lazily, one stack per file, image series and resolution level.

    Parameters
    ----------
    source : path or sequence of paths
        TIFF files (``.tif``, ``.tiff``, OME-TIFF, ImageJ hyperstacks ...).
        ``"file.tif@2"`` selects image series 2 alone, ``"file.tif@2#level=1"``
        its resolution level 1 alone. A ``file://`` URL is read as its local
        path; other URLs are refused, as are ``bytes`` paths (decode them
        with ``os.fsdecode()``).
    axes : str
        Axes of each image series (samples of RGB(A) pixels count as ``C``).
    levels : None, "all", int, sequence of int or str
        Resolution levels of every pyramidal series (OME-TIFF SubIFDs ...) to
        open, as for [`load_zarrs()`][load_zarrs]: None or ``"all"`` for every
        level, ``[0, 2]`` or ``"0,2"`` for those. Default ``0``, full
        resolution only: one stack per series, what CAREamics'
        ``load_tiffs`` returns ([`lazystack.load()`][lazystack.load] and the command line
        open every level by default, as for OME-Zarr). Each level is one stack
        (``stack.level``, pixel sizes scaled by the level's downsampling); a
        series without a pyramid is level 0. See `lazystack.sources.tiff`.

    Returns
    -------
    StackList
        A list of [`LazyImageStack`][LazyImageStack] with a table repr (the levels of
        one series are shown grouped, see [`StackList.images()`][StackList.images]).
        Chunked by the file's own tiles, strips or pages; uncompressed
        contiguous data is memory-mapped.

    Raises
    ------
    SelectionError
        For an invalid ``levels``.
    SourceNotFoundError
        If a file or series does not exist, or a series has no level of ``levels``.
    UnsupportedSourceError
        For an item that is not a path, a ``bytes`` path, or a URL other
        than a ``file://`` one of an absolute path.
    """
    axes = validate_axes(axes)
    from ..sources import tiff

    chosen = parse_levels(levels)
    return _stacks(
        o for path in local_files(source, "TIFF paths", "load_tiffs") for o in tiff.open_tiff(path, axes, levels=chosen)
    )


def load_iter_tiff(source: PathLike | Sequence[PathLike], axes: str) -> StackList:
    """Open TIFF files for file-by-file iteration: one dask chunk per file.

    ``stack.load()`` reads the file whole and keeps it in memory until
    ``stack.close()``; ``extract_patch`` works before (region read) and after
    (from memory). Of a pyramidal series only full resolution (level 0) is
    opened.

    Parameters
    ----------
    source : path or sequence of paths
        TIFF files (``file://`` URLs accepted, as for [`load_tiffs()`][load_tiffs]).
    axes : str
        Axes of each file's image series.

    Returns
    -------
    StackList
        A list of [`LazyImageStack`][LazyImageStack] with a table repr.
    """
    axes = validate_axes(axes)
    from ..sources import tiff

    return _stacks(
        o
        for path in local_files(source, "TIFF paths", "load_iter_tiff")
        for o in tiff.open_tiff(path, axes, whole_file_chunks=True, levels=(0,))
    )


def load_custom_file(
    source: PathLike | Sequence[PathLike],
    axes: str,
    *,
    read_func: Callable[..., Any],
    read_kwargs: Mapping[str, Any] | None = None,
) -> StackList:
    """Open files of a custom type with a user-supplied reader, one stack per file.

    Parameters
    ----------
    source : path or sequence of paths
        The files (``file://`` URLs accepted, as for [`load_tiffs()`][load_tiffs];
        ``read_func`` receives the local path).
    axes : str
        Axes of the arrays ``read_func`` returns.
    read_func : callable
        ``read_func(path, **read_kwargs)`` returning an array-like (see
        [`lazystack.sources.custom.ReadFunc`][lazystack.sources.custom.ReadFunc]). A lazy array-like
        (``np.memmap``, ``zarr.Array``, ``h5py.Dataset``, dask array) keeps
        the stack fully lazy; a plain ndarray is kept in a bounded
        per-process cache once read.
    read_kwargs : mapping, optional
        Extra keyword arguments of ``read_func``.

    Returns
    -------
    StackList
        A list of [`LazyImageStack`][LazyImageStack] with a table repr.
    """
    axes = validate_axes(axes)
    from ..sources import custom

    return _stacks(
        custom.open_custom(path, axes, read_func=read_func, read_kwargs=dict(read_kwargs or {}))
        for path in local_files(source, "paths", "load_custom_file")
    )


def load_zarrs(
    source: Any,
    axes: str,
    *,
    storage_options: Mapping[str, Any] | None = None,
    levels: Levels = None,
) -> StackList:
    """Open Zarr / OME-Zarr arrays, local or remote, lazily.

    Parameters
    ----------
    source : path, URI, zarr StorePath or sequence of them
        ``.zarr`` paths (a ``..`` resolved as the system does: ``link/..`` is
        the parent of the folder a symbolic link names), ``file://`` URIs or any fsspec URI
        (``http(s)://``, ``s3://``, ``zip://``, ``memory://`` ...) to a group
        (one stack per array, sorted; one per multiscale level for an
        OME-Zarr image) or to an array; or a `zarr.storage.StorePath`
        on a ``LocalStore`` or an ``FsspecStore`` (as CAREamics accepts).
    axes : str
        Axes of each array (checked against OME-Zarr's own axes).
    storage_options : mapping, optional
        Passed to fsspec (credentials, timeouts ...).
    levels : None, "all", int, sequence of int or str
        Resolution levels of every OME-Zarr image to open (0 = full
        resolution): None or ``"all"`` (default) for every level, ``0`` for
        full resolution only, ``[0, 2]`` or ``"0,2"`` for those. Each level is
        one stack (``stack.level``); a path to one level's array is opened as
        given; an array no OME-Zarr image lists has level 0 only (asking it
        for another raises, as a TIFF series without a pyramid does). See
        `lazystack.core.levels`.

    Returns
    -------
    StackList
        A list of [`LazyImageStack`][LazyImageStack] with a table repr (the levels of
        one image are shown grouped, see [`StackList.images()`][StackList.images]).

    Raises
    ------
    SelectionError
        For an invalid ``levels``.
    SourceNotFoundError
        If a store, group or array does not exist, or an image (or a plain array: level 0 only) has no
        level of ``levels``.

    Examples
    --------
    >>> import os, tempfile
    >>> import numpy as np
    >>> from lazystack import load_arrays, write_ome_zarr
    >>> (image,) = load_arrays([np.zeros((64, 64), np.uint8)], "YX")
    >>> path = write_ome_zarr(image, os.path.join(tempfile.mkdtemp(), "x.ome.zarr"), levels=3)
    >>> [s.level for s in load_zarrs(path, "YX")], [s.level for s in load_zarrs(path, "YX", levels=0)]
    ([0, 1, 2], [0])
    """
    axes = validate_axes(axes)
    from ..sources import zarr as zarr_source

    opts = dict(storage_options or {})
    chosen = parse_levels(levels)
    if zarr_source.is_store_path(source):
        items: list[Any] = [source]
    elif isinstance(source, Iterable) and not isinstance(source, (str, bytes, bytearray, os.PathLike)):
        items = list(source)
        paths = as_source_list([s for s in items if not zarr_source.is_store_path(s)], "Zarr paths, URIs or StorePaths")
        items = [s if zarr_source.is_store_path(s) else paths.pop(0) for s in items]
    else:
        items = as_source_list(source, "Zarr paths, URIs or StorePaths")
    items = [_system_zarr_path(s) if isinstance(s, str) else s for s in items]
    return _stacks(o for path in items for o in zarr_source.open_zarr(path, axes, opts, levels=chosen))


def _system_zarr_path(text: str) -> str:
    """A Zarr path or ``file:`` URL as its local path (``..`` resolved as the system does: ``link/..``); a remote
    URL as given."""
    local = local_path(text, who="load_zarrs", reading=True)
    if local is None or ".." not in local.replace(os.sep, "/").split("/"):
        return text  # parse_zarr_source() reads it with the same local_path(), naming the source as given
    return system_path(local)


def load_czis(source: PathLike | Sequence[PathLike], axes: str, *, levels: Levels = 0) -> StackList:
    """Open Zeiss CZI files, one lazy stack per scene and pyramid level (needs the ``czi`` extra).

    Parameters
    ----------
    source : path or sequence of paths
        CZI files; ``"file.czi@2"`` selects scene 2 alone, ``"file.czi@2#level=1"``
        its pyramid level 1 alone (``file://`` URLs accepted, as for
        [`load_tiffs()`][load_tiffs]).
    axes : str
        ``"SCYX"``, ``"SCZYX"`` or ``"SCTYX"``.
    levels : None, "all", int, sequence of int or str
        Pyramid levels of every scene to open, as for [`load_zarrs()`][load_zarrs]:
        None or ``"all"`` for every level the file stores, ``[0, 1]`` or
        ``"0,1"`` for those. Default ``0``, full resolution only: one stack per
        scene, what CAREamics' ``load_czis`` returns ([`lazystack.load()`][lazystack.load]
        and the command line open every level by default, as for OME-Zarr).
        Each level is one stack (``stack.level``); a scene without pyramid
        sub-blocks is level 0. See `lazystack.sources.czi`.

    Returns
    -------
    StackList
        A list of [`LazyImageStack`][LazyImageStack] with a table repr (the levels of
        one scene are shown grouped, see [`StackList.images()`][StackList.images]).

    Raises
    ------
    SelectionError
        For an invalid ``levels``.
    SourceNotFoundError
        If a file or scene does not exist, or a scene has no level of ``levels``.
    """
    from ..sources import czi

    chosen = parse_levels(levels)
    return _stacks(
        o for path in local_files(source, "CZI paths", "load_czis") for o in czi.open_czi(path, axes, levels=chosen)
    )


def load_bioio(source: PathLike | Sequence[PathLike], axes: str, **reader_options: Any) -> StackList:
    """Open any file an installed bioio reader plugin reads, one stack per scene.

    Parameters
    ----------
    source : path or sequence of paths
        Files (OME-TIFF, ND2, LIF ... whatever plugins are installed);
        ``file://`` URLs accepted, as for [`load_tiffs()`][load_tiffs].
    axes : str
        Axes of each scene, applied to the reader's dims with the same rules
        as [`load_arrays()`][load_arrays].
    **reader_options
        Passed to `bioio.BioImage` (e.g. ``reader=``).

    Returns
    -------
    StackList
        A list of [`LazyImageStack`][LazyImageStack] with a table repr.
    """
    axes = validate_axes(axes)
    from ..sources import bioio as bioio_source

    paths = local_files(source, "paths", "load_bioio")
    return _stacks(o for path in paths for o in bioio_source.open_bioio(path, axes, reader_options))
