"""Zarr and OME-Zarr back end: local paths, ``file://`` and fsspec URIs.

A source names a *store* (the path component ending in ``.zarr``) and,
optionally, a node inside it::

    /data/store.zarr                      # a group (or a store that is an array)
    file:///data/store.zarr/group/array   # a group or an array inside the store
    http://host/data/image.ome.zarr/0     # one OME-Zarr level over HTTP
    zip://store.zarr/raw::file:///data/archive.zip   # chained fsspec URL

What a group, an OME-Zarr image (NGFF 0.4 / 0.5), a ``bioformats2raw.layout``,
an HCS plate or a label image gives is listed in [`open_zarr()`][open_zarr].
[`ZarrArrayReader`][ZarrArrayReader] is the chunk reader: it holds a *recipe* (store
URI, array path, storage options), opens the array lazily once per process (a
forked child reopens, so aiohttp sessions and event loops are never shared) and
pickles without any handle. Stores are always opened read-only.
"""

from __future__ import annotations

import itertools
import os
import re
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from ...core.errors import (
    LazyStackError,
    MetadataWarning,
    MissingDependencyError,
    ShapeMismatchError,
    SourceFormatError,
    SourceNotFoundError,
    SourceReadError,
    UnsupportedSourceError,
)
from ...core.units import unit_name
from ...io.handles import local_path
from ...io.overwrite import interrupted_overwrite_note
from ...io.process import current_pid
from ...io.reader import OpenedSource, Reader, ReaderCapabilities
from .engines import (
    ArrayLayout,
    AutoEngine,
    DirectEngine,
    RetryPolicy,
    _array_token,
    _format_region,
    _is_compressed,
    _special_file,
    _StaleChunkError,
    close_http_session_at_exit,
    get_zarr_engine,
    is_read_failure,
)
from .engines import ZarrArrayReader as _EngineReader

if TYPE_CHECKING:
    import zarr as zarr_lib
    from zarr.abc.store import Store

__all__ = [
    "DEFAULT_HTTP_TIMEOUT",
    "RETRY_OPTIONS",
    "ZarrArrayReader",
    "ZarrLocation",
    "is_store_path",
    "open_zarr",
    "parse_zarr_source",
    "retry_policy",
    "store_path_location",
]

#: Keyword arguments of [`aiohttp.ClientTimeout`][aiohttp.ClientTimeout] used for ``http(s)://``
#: stores unless ``storage_options["client_kwargs"]["timeout"]`` is given:
#: a dead, silent or trickling server raises instead of hanging. ``total``
#: bounds one request (a chunk or an inner chunk of a shard, rarely more
#: than a few MB), ``sock_read`` the wait for any byte (headers included).
DEFAULT_HTTP_TIMEOUT: dict[str, float] = {"total": 60.0, "sock_connect": 10.0, "sock_read": 20.0}

#: lazystack's own keys in ``storage_options`` (not passed to fsspec): retries of a
#: failed remote chunk read (5xx answers, reset connections), and the first
#: wait between attempts in seconds (doubled each time); see
#: [`lazystack.sources.zarr.engines.RetryPolicy`][lazystack.sources.zarr.engines.RetryPolicy] for the defaults.
RETRY_OPTIONS = ("retries", "retry_backoff")

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*)://")
#: a chained URL whose first segment is a bare protocol (``zip::file:///x.zip``, ``simplecache::http://...``,
#: ``zip::simplecache::http://...``: another bare protocol may follow)
_BARE_CHAIN = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*)::(?=[A-Za-z][A-Za-z0-9+.\-]*(?:://|::))")
#: fsspec archive file systems: a chained URL's first segment is a path from the archive's root (the store's)
_ARCHIVES = ("zip", "tar")
_NUMERIC_KINDS = "biuf"
_MAX_KEYS_SHOWN = 8
_MAX_PROBED = 64
_MAX_FAST_GRID = 1 << 22
_MAX_LAYOUT_PROBED = 10_000
_T = TypeVar("_T")
_OPENS = itertools.count()  # numbers the opens of this process: each open has its own chunk-cache entries


# -- where a source points ----------------------------------------------------------------
@dataclass(frozen=True)
class ZarrLocation:
    """A store and a node path inside it (the parsed form of a source string).

    Attributes
    ----------
    protocol : str
        ``"file"`` for local stores, else the fsspec protocol (``"http"``, ``"s3"`` ...).
    root : str
        Local absolute path of the store, or the URL of the store root
        (first segment of a chained URL).
    path : str
        Node path inside the store (``""`` for the root), ``/``-separated.
    chain : str
        The rest of a chained fsspec URL (``"::file:///archive.zip"``) or ``""``.
    storage_options : dict
        The user's fsspec options (unused for local stores).
    """

    protocol: str
    root: str
    path: str = ""
    chain: str = ""
    storage_options: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def is_local(self) -> bool:
        """Whether the store is a local directory."""
        return self.protocol == "file"

    @property
    def store_uri(self) -> str:
        """URI of the store root."""
        if self.is_local:
            return "file://" + self.root
        return self.root + self.chain

    def uri(self, path: str | None = None) -> str:
        """URI of the node ``path`` (default: this location's node) that re-creates it."""
        path = self.path if path is None else path
        base = "file://" + self.root if self.is_local else self.root
        if base.endswith("://"):  # the store is the root of a chained archive (zip://::file:///x.zip)
            return base + path + self.chain
        full = base.rstrip("/") + ("/" + path if path else "")
        return full if self.is_local else full + self.chain

    def child(self, path: str) -> ZarrLocation:
        """The same store, node ``path``."""
        return replace(self, path=path.strip("/"))

    def open_store(self) -> Store:
        """Open the store read-only (a new store object, in this process)."""
        from zarr.storage import FsspecStore, LocalStore

        if self.is_local:
            return LocalStore(self.root, read_only=True)
        url = self.root + self.chain
        try:
            store = FsspecStore.from_url(url, storage_options=effective_storage_options(self), read_only=True)
            close_http_session_at_exit(store.fs)
            return store
        except ImportError as exc:
            msg = f"opening {url!r} needs the fsspec implementation of {self.protocol!r}: {exc}"
            raise MissingDependencyError(msg) from exc
        except FileNotFoundError as exc:  # e.g. a missing zip archive in a chained URL
            if _is_timeout(exc):  # fsspec's HTTP info() says "not found" for a server that did not answer
                msg = f"cannot open the Zarr store {url!r}: the server did not answer in time ({exc})"
                raise SourceReadError(msg) from exc
            msg = f"Zarr store {url!r} does not exist: {exc}"
            raise SourceNotFoundError(msg) from exc
        except Exception as exc:  # e.g. zipfile's BadZipFile: a chained URL's archive is no archive, or a folder
            if not is_read_failure(exc):
                raise
            msg = f"cannot open the Zarr store {url!r}: {type(exc).__name__}: {exc}"
            if self.chain:
                msg += f" (a chained URL: its last URL names a {self.protocol} archive file)"
            raise SourceReadError(msg) from exc


def effective_storage_options(location: ZarrLocation) -> dict[str, Any]:
    """The user's storage options plus lazystack's defaults (bounded HTTP timeouts).

    Parameters
    ----------
    location : ZarrLocation
        The store.

    Returns
    -------
    dict
        Options passed to fsspec; for ``http(s)`` an [`aiohttp.ClientTimeout`][aiohttp.ClientTimeout]
        built from [`DEFAULT_HTTP_TIMEOUT`][DEFAULT_HTTP_TIMEOUT] unless the user gave one. In a chained
        URL (``zip://A/1::https://host/plate.zip``), an ``http(s)`` layer's options are those under its
        protocol's name (fsspec's convention, e.g. ``{"https": {"client_kwargs": ...}}``): the default
        timeout goes there.
    """
    opts = {k: v for k, v in location.storage_options.items() if k not in RETRY_OPTIONS}
    if location.protocol in ("http", "https"):
        opts = _with_default_timeout(opts)
    for bit in location.chain.split("::"):
        protocol = bit.split("://", 1)[0]
        if protocol in ("http", "https"):
            opts[protocol] = _with_default_timeout(dict(opts.get(protocol) or {}))
    return opts


def _with_default_timeout(options: dict[str, Any]) -> dict[str, Any]:
    """``options`` with lazystack's bounded HTTP timeout unless its ``client_kwargs`` hold one."""
    client_kwargs = dict(options.get("client_kwargs") or {})
    if "timeout" not in client_kwargs:
        import aiohttp

        client_kwargs["timeout"] = aiohttp.ClientTimeout(**DEFAULT_HTTP_TIMEOUT)
    return {**options, "client_kwargs": client_kwargs}


def retry_policy(location: ZarrLocation) -> RetryPolicy:
    """The retries of remote chunk reads ``storage_options`` asks for ([`RETRY_OPTIONS`][RETRY_OPTIONS]).

    Parameters
    ----------
    location : ZarrLocation
        The store.

    Returns
    -------
    lazystack.sources.zarr.engines.RetryPolicy

    Raises
    ------
    ValueError
        If ``retries`` is not an integer >= 0 or ``retry_backoff`` not a number of seconds >= 0.
    """
    opts, names = location.storage_options, {"retries": "retries", "retry_backoff": "backoff"}
    try:
        return RetryPolicy(**{name: opts[key] for key, name in names.items() if key in opts})
    except ValueError as e:
        msg = f"storage_options of {location.store_uri!r}: {e} (keys 'retries' and 'retry_backoff')"
        raise ValueError(msg) from None


def _split_at_store(parts: Sequence[str]) -> int:
    """Index just past the first component ending in ``.zarr`` (len(parts) when none)."""
    return next((i + 1 for i, part in enumerate(parts) if part.lower().endswith(".zarr")), len(parts))


def parse_zarr_source(source: str, storage_options: Mapping[str, Any] | None = None) -> ZarrLocation:
    """Split a path or URI into a store and a node path.

    Parameters
    ----------
    source : str
        Local path (``~`` expanded), ``file:`` URL (read by
        `lazystack.io.handles.local_path()`) or fsspec URI; the store is the path up to
        the first component ending in ``.zarr`` (the whole path when none does;
        ``zip::file:///data/x.zip`` is ``zip://::file:///data/x.zip``, the archive's root).
    storage_options : mapping, optional
        fsspec options for remote stores.

    Returns
    -------
    ZarrLocation

    Raises
    ------
    UnsupportedSourceError
        For a URI scheme fsspec does not know, a ``file:`` URL naming a host or
        holding a query or a fragment, an empty path, or a chained URL whose first segment is a
        bare protocol other than an archive's (``simplecache::http://...``).
    MissingDependencyError
        For a known scheme whose implementation is not installed.
    SourceNotFoundError
        For a local path that does not exist.
    SourceFormatError
        For a local path that is a file, not a Zarr store directory.
    """
    opts = dict(storage_options or {})
    bare = _BARE_CHAIN.match(source)
    if bare is not None and not os.path.exists(source):
        if bare.group(1).lower() not in _ARCHIVES:
            rest = source[bare.end() :]
            msg = (
                f"unsupported chained URL {source!r}: its first segment {bare.group(1) + '::'!r} names no path "
                f"(a caching or wrapping file system); accepted: a chain whose first URL holds the path, such as "
                f"'zip://plate.zarr/A/1::file:///data/plate.zip', or the URL alone ({rest!r}: lazystack keeps "
                "decoded chunks in its own cache)"
            )
            raise UnsupportedSourceError(msg)
        source = f"{bare.group(1)}://{source[bare.end() - 2 :]}"  # zip::file:///x.zip: the archive's root
    local = local_path(source, who="load_zarrs", reading=True)  # a path or file: URL (one parser); None: remote
    if local is not None:
        return _parse_local(local, source)
    match = _SCHEME.match(source)
    assert match is not None  # local_path() gives None for a scheme:// URL only
    protocol = match.group(1).lower()
    _check_protocol(protocol, source)
    first, sep, rest = source.partition("::")
    prefix = first[: len(match.group(0))]
    body = first[len(match.group(0)) :]
    parts = body.split("/")
    cut = _split_at_store(parts)
    root = prefix + "/".join(parts[:cut])
    path = "/".join(p for p in parts[cut:] if p)
    root = root if root == prefix else root.rstrip("/")  # "zip://": a store at the archive's root
    return ZarrLocation(protocol, root, path, sep + rest, opts)


def is_store_path(source: Any) -> bool:
    """Whether ``source`` is a [`zarr.storage.StorePath`][zarr.storage.StorePath] (zarr itself is imported only if
    loaded)."""
    import sys

    storage = sys.modules.get("zarr.storage")
    return storage is not None and isinstance(source, storage.StorePath)


def store_path_location(source: Any, storage_options: Mapping[str, Any] | None = None) -> ZarrLocation:
    """The location of a [`zarr.storage.StorePath`][zarr.storage.StorePath] (as CAREamics' ``load_zarrs`` accepts).

    A stack pickles as its recipe and reopens its store in the process that
    reads it, so the store must be one that can be named: a ``LocalStore``
    (its root directory) or an ``FsspecStore`` (its filesystem's URL, with the
    filesystem's own storage options under the given ones).

    Parameters
    ----------
    source : zarr.storage.StorePath
        A store and a node path in it.
    storage_options : mapping, optional
        fsspec options; they win over the filesystem's own.

    Returns
    -------
    ZarrLocation

    Raises
    ------
    UnsupportedSourceError
        For a store of another kind (``MemoryStore``, ``ZipStore`` ...).
    """
    from zarr.storage import FsspecStore, LocalStore

    store, path = source.store, str(source.path).strip("/")
    if isinstance(store, LocalStore):
        root, shown = str(store.root), str(source)
    elif isinstance(store, FsspecStore):
        fs = store.fs
        url = fs.unstrip_protocol(str(store.path).rstrip("/"))
        protocol = url.split("://", 1)[0].lower() if "://" in url else "file"
        if protocol != "file":
            opts = {k: v for k, v in dict(fs.storage_options).items() if k != "asynchronous"}
            opts.update(storage_options or {})
            return ZarrLocation(protocol, url.rstrip("/"), path, "", opts)
        root, shown = url.removeprefix("file://"), url
    else:
        msg = (
            f"a zarr StorePath on a {type(store).__name__} ({source}) cannot be reopened by name in another "
            "process; accepted: StorePaths on a LocalStore or an FsspecStore, paths and URIs (pass in-memory "
            "zarr arrays to load_arrays)"
        )
        raise UnsupportedSourceError(msg)
    location = _parse_local(root, shown)
    return replace(location, path="/".join(p for p in (location.path, path) if p))


def _check_protocol(protocol: str, source: str) -> None:
    import fsspec

    try:
        fsspec.get_filesystem_class(protocol)
    except ValueError:
        known = sorted(set(fsspec.available_protocols()))
        msg = (
            f"unsupported URI scheme {protocol!r} in {source!r}: accepted are local paths, file:// "
            f"and the fsspec protocols {known}"
        )
        raise UnsupportedSourceError(msg) from None
    except ImportError as exc:
        msg = f"the URI scheme {protocol!r} of {source!r} needs an extra package: {exc}"
        raise MissingDependencyError(msg) from exc


def zip_archive_of(path: str) -> tuple[str, str] | None:
    """Split a local path into a zip archive and a node path inside it, or None when no component is a zip file.

    Parameters
    ----------
    path : str
        A local path such as ``/data/image.ome.zarr.zip`` or ``/data/plate.zip/A/1/0``.

    Returns
    -------
    tuple of (str, str) or None
        Absolute path of the archive and the ``/``-separated path inside it.
    """
    import zipfile

    full = os.path.abspath(os.path.expanduser(path))
    parts = full.replace(os.sep, "/").split("/")
    for i in range(1, len(parts) + 1):
        candidate = "/".join(parts[:i]) or "/"
        if os.path.isfile(candidate):
            if candidate.lower().endswith(".zip") and zipfile.is_zipfile(candidate):
                return candidate, "/".join(p for p in parts[i:] if p)
            return None
    return None


def _parse_local(raw: str, source: str) -> ZarrLocation:
    full = os.path.abspath(os.path.expanduser(raw))  # a plain path is literal: no percent-decoding
    parts = full.replace(os.sep, "/").split("/")
    cut = _split_at_store(parts)
    location = ZarrLocation("file", "/".join(parts[:cut]) or "/", "/".join(p for p in parts[cut:] if p))
    zipped = zip_archive_of(raw)
    if zipped is not None:  # a zipped store given by its local path: zip://<inner>::file://<archive>
        return ZarrLocation("zip", "zip://", zipped[1], "::file://" + zipped[0])
    if not os.path.exists(location.root):
        msg = f"Zarr store {location.root!r} does not exist (source {source!r}){interrupted_overwrite_note(full)}"
        raise SourceNotFoundError(msg)
    if not os.path.isdir(location.root):
        msg = (
            f"{location.root!r} is a file, not a Zarr store (source {source!r}): a Zarr store is a directory "
            "holding zarr.json (Zarr v3) or .zgroup/.zarray (Zarr v2), or a .zip archive of one"
        )
        raise SourceFormatError(msg)
    return location


# -- the chunk reader ------------------------------------------------------------------------
class ZarrArrayReader(Reader):
    """Chunk reader over one Zarr array, reopened lazily in every process.

    It fulfils the reader contract of [`lazystack.io.reader`][lazystack.io.reader].

    Parameters
    ----------
    location : ZarrLocation
        Store and array path.
    array : zarr.Array, optional
        An already-open array (this process), reused until pickled or closed.

    Attributes
    ----------
    shape, dtype : tuple of int, numpy.dtype
        Of the array.
    chunks : tuple of int
        The array's (inner, for sharded arrays) chunk shape: dask chunks follow it.
    shards : tuple of int or None
        Shard shape of a sharded Zarr v3 array.
    token : str
        URI of the array (names the dask array).
    """

    capabilities: ReaderCapabilities

    def __init__(self, location: ZarrLocation, array: zarr_lib.Array | None = None) -> None:
        # before anything is read: a local chunk file modified after this raises when it is decoded
        self._opened_ns: int | None = time.time_ns() if location.is_local else None
        if array is None:
            array = _open_array(location)
        self._location = location
        self.shape: tuple[int, ...] = tuple(int(n) for n in array.shape)
        self.dtype: np.dtype[Any] = np.dtype(array.dtype)
        if self.dtype.kind not in _NUMERIC_KINDS:
            msg = (
                f"Zarr array {location.uri()!r} has dtype {array.dtype}, which is not an image dtype; "
                "accepted: bool, integer and floating-point arrays"
            )
            raise SourceFormatError(msg)
        try:
            self.chunks: tuple[int, ...] = tuple(int(c) for c in array.chunks)
            shards = array.shards
        except NotImplementedError:  # irregular chunk grids
            msg = f"Zarr array {location.uri()!r} does not use a regular chunk grid, which lazystack needs"
            raise SourceFormatError(msg) from None
        self.shards: tuple[int, ...] | None = None if shards is None else tuple(int(s) for s in shards)
        for what, grid in (("chunks", self.chunks), ("shards", self.shards)):
            if grid is not None and (len(grid) != len(self.shape) or any(c <= 0 for c in grid)):
                msg = (
                    f"Zarr array {location.uri()!r} has {what} {grid} for shape {self.shape}: "
                    "every chunk dimension must be positive, one per array dimension"
                )
                raise SourceFormatError(msg)
        self.zarr_format: int = int(array.metadata.zarr_format)
        self.token: str = "zarr-" + location.uri()
        # the decoded-chunk cache's name of this open's data: a zarr writer replaces chunk files and leaves
        # the metadata document alone, so an open after an update must not find the chunks cached before it
        # (kept when pickled: a process's cache is its own)
        self._cache_token = f"{_array_token(array)}#open-{os.getpid()}-{next(_OPENS)}"
        self.capabilities = ReaderCapabilities(remote=not location.is_local, compressed=_is_compressed(array))
        # the fast path keeps per-axis chunk tables: arrays with astronomically many chunks read through zarr
        self._use_fast = sum(-(-n // c) for n, c in zip(self.shape, self.chunks, strict=True)) <= _MAX_FAST_GRID
        self._opened_stat = _stat_of(self._metadata_file())
        #: a local array's chunk layout in plain data: another process (spawned, forked) reads it without zarr
        self._layout = _layout_of(array) if location.is_local else None
        self._array: zarr_lib.Array | None = array
        self._fast: _EngineReader | None = None
        self._fast_pid = -1  # the process that built _fast
        self._pid = current_pid()
        self._lock = threading.Lock()

    # recipe, not handle
    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_array": None, "_fast": None, "_lock": None}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    @property
    def location(self) -> ZarrLocation:
        """Store and array path of this reader."""
        return self._location

    def array(self) -> zarr_lib.Array:
        """The open [`zarr.Array`][zarr.Array] of this process (opened on first use)."""
        arr = self._array
        if arr is None or self._pid != current_pid():
            with self._lock:
                arr = self._array
                if arr is None or self._pid != current_pid():
                    self._check_store()  # a store changed since the opening is said so, not as a missing store
                    arr = _open_array(self._location)
                    self._array, self._pid = arr, current_pid()
        return arr

    def as_chunked(self) -> _EngineReader:
        """The fast chunk reader of this process (chunk engine and per-process chunk cache).

        A local array read by the ``auto`` or ``direct`` engine (the setting in force) is read from its
        [`ArrayLayout`][lazystack.sources.zarr.engines.ArrayLayout], known since the opening: a process
        that unpickles the reader (a spawned DataLoader worker) or was forked reads without importing
        zarr or reopening the array; its metadata document is checked unchanged first, as a reopen does.
        Other arrays (remote stores, the ``tensorstore`` and ``zarr`` engines, codecs numcodecs does
        not know in this process) are read through [`array()`][array].

        Returns
        -------
        lazystack.io.chunked.ChunkedReader
            A [`lazystack.sources.zarr.engines.ZarrArrayReader`][lazystack.sources.zarr.engines.ZarrArrayReader],
            rebuilt in each process and after [`close()`][close].
        """
        fast = self._fast
        if fast is not None and self._fast_pid == current_pid():
            return fast
        fast = self._layout_reader()
        if fast is None:
            arr = self.array()
            engine = None  # the setting in force (set_zarr_engine / LAZYSTACK_ZARR_ENGINE)
            if not self._location.is_local and get_zarr_engine() == "tensorstore":
                # tensorstore's own HTTP client ignores storage_options (headers, credentials, timeouts)
                # and retries a dead server for minutes: remote stores keep fsspec's client
                engine = "direct"
            retry = None if self._location.is_local else retry_policy(self._location)
            fast = self._engine_reader(arr, engine, retry)
        self._fast, self._fast_pid = fast, current_pid()
        return fast

    def _engine_reader(self, array: Any, engine: str | None, retry: RetryPolicy | None) -> _EngineReader:
        # the store is checked after every read of it (cache misses only): zarr reads a missing chunk as
        # the fill value, so a store deleted after the opening would read as zeros, and a rewritten one
        # would mix cached old chunks with new ones; one stat of the metadata document turns both into errors
        return _EngineReader(
            array,
            engine=engine,
            retry=retry,
            token=self._cache_token,
            modified_after=self._opened_ns,
            name=self._location.uri(),
            after_read=self._check_store,
        )

    def _layout_reader(self) -> _EngineReader | None:
        """The fast reader built from the array's layout (no zarr object), or None where it does not apply."""
        layout = self._layout
        if layout is None or get_zarr_engine() not in ("auto", "direct"):
            return None
        if self._array is None or self._pid != current_pid():
            self._check_store()  # as a reopen: a store changed since the opening is said so
        fast = self._engine_reader(layout, None, None)
        try:
            engine = fast.engine  # built now: a direct engine this process cannot build reads through zarr instead
        except (NotImplementedError, MissingDependencyError):
            return None
        # the layout is the direct engine's: one it cannot decode here (a codec registered in the parent only)
        # is read as the parent would read it, through the zarr array
        return fast if isinstance(engine, (AutoEngine, DirectEngine)) else None

    def _metadata_file(self) -> str | None:
        """Local path of the array's metadata document (None for remote stores)."""
        if not self._location.is_local:
            return None
        name = "zarr.json" if self.zarr_format == 3 else ".zarray"
        return os.path.join(self._location.root, *[p for p in self._location.path.split("/") if p], name)

    def _check_store(self) -> None:
        """Raise [`_StoreChangedError`][_StoreChangedError] when the local array's metadata document is gone or
        rewritten since the opening."""
        _check_unchanged(self._metadata_file(), self._opened_stat, self._location)

    def __getitem__(self, key: tuple[int | slice, ...]) -> np.ndarray:
        """Read ``key`` (ints and step-1 slices) as a numpy array.

        The result may be a read-only view of a cached chunk: copy it before writing to it.
        """
        if self._use_fast:
            return self._guarded(lambda k: self.as_chunked()[k], key)
        return self._guarded(self._read_through_zarr, key)

    def _read_through_zarr(self, key: tuple[int | slice, ...]) -> np.ndarray:
        out = np.asarray(self.array()[key])
        self._check_store()
        return out

    def read_region(self, region: tuple[slice, ...]) -> np.ndarray:
        """Read step-1 slices inside the bounds, one per axis (the patch fast path; may be a read-only view)."""
        if not self._use_fast:
            return self[region]
        return self._guarded(lambda r: self.as_chunked().read(r), region)

    def read_float32(self, region: tuple[slice, ...]) -> np.ndarray | None:
        """``region`` as a new ``float32`` array when the engine converts it itself (tensorstore, cache off), else None.

        Tried on every patch the cache does not serve, so it opens nothing: None before the first
        [`read_region()`][read_region] of this process.
        """
        fast = self._fast
        if fast is None or not self._use_fast or self._fast_pid != current_pid():
            return None
        return self._guarded(fast.read_float32, region)

    def _guarded(self, read: Callable[[Any], _T], key: tuple[int | slice, ...]) -> _T:
        """``read(key)``, its failures translated as every read's: a changed or deleted store as it is (it names
        the array), else wrapped with the path."""
        try:
            return read(key)
        except Exception as exc:
            if not is_read_failure(exc):  # a programming error (NotImplementedError, TypeError ...): as it is
                raise
            if isinstance(exc, (_StoreChangedError, _StaleChunkError)):  # not chained: the message says it all
                raise exc from None
            raise self._read_error(key, exc) from exc

    def read_cached(self, region: tuple[slice, ...]) -> np.ndarray | None:
        """``region`` from the chunk cache alone, or None until a fast reader exists (see
        [`lazystack.io.chunked.ChunkedReader.read_cached()`][lazystack.io.chunked.ChunkedReader.read_cached]).

        It reads this process's chunk cache (emptied in a forked child), never a handle: fork-safe.
        """
        fast = self._fast
        return None if fast is None else fast.read_cached(region)

    def close(self) -> None:
        """Drop the open array (reopened transparently on the next read)."""
        fast, self._fast, self._array = self._fast, None, None
        if fast is not None:
            fast.close()

    def _chunk_coords(self, key: tuple[int | slice, ...], limit: int) -> list[tuple[int, ...]]:
        """Grid coordinates of the stored chunks (shards) ``key`` touches, at most ``limit + 1``."""
        grid = self.shards or self.chunks
        ranges = []
        for k, c, n in zip(key, grid, self.shape, strict=False):
            if isinstance(k, slice):
                start, stop, _ = k.indices(n)
                ranges.append(range(start // c, (stop - 1) // c + 1) if stop > start else range(0))
            else:
                i = int(k) % n if n else 0
                ranges.append(range(i // c, i // c + 1))
        ranges += [range(-(-n // c)) for c, n in zip(grid[len(key) :], self.shape[len(key) :], strict=True)]
        return list(itertools.islice(itertools.product(*ranges), limit + 1))

    def _store_key(self, coords: tuple[int, ...]) -> str:
        arr, layout = self._array, self._layout
        if layout is not None:
            name = layout.chunk_key(coords)
        elif arr is not None:
            name = arr.metadata.encode_chunk_key(coords)
        else:
            name = ".".join(map(str, coords))
        return f"{self._location.path}/{name}".lstrip("/")

    def chunk_keys(self, key: tuple[int | slice, ...]) -> list[str]:
        """Store keys of the chunks (shards, for a sharded array) that ``key`` touches.

        Parameters
        ----------
        key : tuple of int or slice
            Region (ints and step-1 slices within bounds).

        Returns
        -------
        list of str
            At most ``_MAX_KEYS_SHOWN + 1`` keys (the first ones, in C order).
        """
        return [self._store_key(c) for c in self._chunk_coords(key, _MAX_KEYS_SHOWN)]

    def _failing_keys(self, key: tuple[int | slice, ...]) -> list[str] | None:
        """Read each touched chunk alone to find the failing one(s); None when too many to probe."""
        coords_list = self._chunk_coords(key, _MAX_PROBED)
        if len(coords_list) > _MAX_PROBED:
            return None
        try:
            arr = self.array()  # this process's (a reader built from the layout has opened none yet)
        except Exception:  # the store is gone or changed: the message lists the keys without probing them
            return None
        grid = self.shards or self.chunks
        failing = []
        for coords in coords_list:
            region = tuple(slice(i * c, min((i + 1) * c, n)) for i, c, n in zip(coords, grid, self.shape, strict=True))
            if self._not_a_file(self._store_key(coords)):  # a FIFO: zarr would wait for a writer for ever
                failing.append(self._store_key(coords))
                continue
            try:
                arr[region]
            except Exception:
                failing.append(self._store_key(coords))
        return failing or None

    def _not_a_file(self, store_key: str) -> bool:
        """Whether the local file of ``store_key`` exists and is neither a regular file nor a folder (a FIFO, a
        device, a socket)."""
        if not self._location.is_local or self._location.chain:
            return False
        return _special_file(os.path.join(self._location.root, store_key))

    def _read_error(self, key: tuple[int | slice, ...], exc: Exception) -> SourceReadError:
        what = "shard" if self.shards else "chunk"
        timeout = _is_timeout(exc)
        failing = None if timeout else self._failing_keys(key)
        if failing:
            where = f"failing {what}(s) {', '.join(repr(k) for k in failing)}"
        else:
            keys = self.chunk_keys(key)
            shown = ", ".join(repr(k) for k in keys[:_MAX_KEYS_SHOWN])
            where = f"{what}(s) {shown}{' ...' if len(keys) > _MAX_KEYS_SHOWN else ''}"
        hint = ""
        if timeout:
            hint = (
                " (the server did not answer in time; set storage_options={'client_kwargs': "
                "{'timeout': aiohttp.ClientTimeout(...)}} to change the limit)"
            )
        msg = (
            f"reading region {_format_region(key)} of Zarr array {self._location.uri()!r} "
            f"(store {self._location.store_uri!r}) failed in {where}: "
            f"{type(exc).__name__}: {exc}{hint}"
        )
        return SourceReadError(msg)

    def __repr__(self) -> str:
        uri = self._location.uri()
        return f"ZarrArrayReader({uri!r}, shape={self.shape}, dtype={self.dtype}, chunks={self.chunks})"


class _StoreChangedError(LazyStackError):
    """A local array's metadata document was deleted or rewritten after opening (raised as the subclasses below,
    public error types, naming the array on every path: a patch, a batch, a reopen in another process).

    Built from its message alone, as every lazystack error (``type(err)(str(err))`` gives the same message: what
    a DataLoader does to re-raise a worker's error); the subclasses' ``of(path, array, store)`` writes the message
    for the metadata document ``path`` of the array ``array`` (URI) in the store ``store`` (URI).
    """

    def __init__(self, message: str, *, path: str | None = None) -> None:
        super().__init__(message)
        self.path = path


class _StoreDeletedError(_StoreChangedError, SourceNotFoundError):
    @classmethod
    def of(cls, path: str, array: str, store: str) -> _StoreDeletedError:
        msg = (
            f"Zarr store {store!r} no longer holds the array {array!r}: its metadata document "
            f"{path!r} was deleted after the stack was opened"
        )
        return cls(msg, path=path)


class _StoreRewrittenError(_StoreChangedError, SourceReadError):
    @classmethod
    def of(cls, path: str, array: str, store: str) -> _StoreRewrittenError:
        msg = (
            f"Zarr array {array!r} (store {store!r}) changed after the stack was opened: its metadata document "
            f"{path!r} was rewritten; open the source again to read the new data"
        )
        return cls(msg, path=path)


def _stat_of(path: str | None) -> tuple[int, int, int] | None:
    """(inode, size, mtime_ns) of a local file, None for remote stores or when it cannot be read."""
    if path is None:
        return None
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def _check_unchanged(path: str | None, opened: tuple[int, int, int] | None, location: ZarrLocation) -> None:
    """Raise [`_StoreChangedError`][_StoreChangedError] when a local array's metadata document is gone or rewritten."""
    if path is None or opened is None:
        return
    now = _stat_of(path)
    if now is None:
        raise _StoreDeletedError.of(path, location.uri(), location.store_uri)
    if now != opened:
        raise _StoreRewrittenError.of(path, location.uri(), location.store_uri)


def _is_timeout(exc: BaseException) -> bool:
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        if isinstance(e, TimeoutError) or "Timeout" in type(e).__name__:
            return True
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return False


# -- opening nodes ------------------------------------------------------------------------
def _open_node(location: ZarrLocation, store: Store | None = None) -> zarr_lib.Array | zarr_lib.Group:
    """Open the array or group at ``location`` read-only (metadata only)."""
    import zarr as zarr_lib

    store = store if store is not None else location.open_store()
    try:
        return zarr_lib.open(store=store, path=location.path, mode="r")
    except FileNotFoundError as exc:  # zarr's NodeNotFoundError derives from it
        raise _not_found(location, store) from exc
    except (SourceNotFoundError, SourceFormatError, SourceReadError, MissingDependencyError):
        raise
    except Exception as exc:
        raise _open_error(location, exc) from exc


def _open_error(location: ZarrLocation, exc: Exception) -> SourceReadError:
    """The error for a node that could not be opened for a reason other than its absence (a dead server ...)."""
    msg = f"cannot open Zarr node {location.uri()!r}: {type(exc).__name__}: {exc}"
    if _is_timeout(exc):
        msg += " (the server did not answer in time)"
    return SourceReadError(msg)


def _layout_of(array: zarr_lib.Array) -> ArrayLayout | None:
    """The chunk layout of a local array, or None when the direct engine cannot read it (read through zarr)."""
    try:
        return ArrayLayout.of(array)
    except Exception:  # NotImplementedError, or metadata zarr reads and the layout does not: zarr reads it, as before
        return None


def _open_array(location: ZarrLocation) -> zarr_lib.Array:
    import zarr as zarr_lib

    node = _open_node(location)
    if not isinstance(node, zarr_lib.Array):
        msg = f"{location.uri()!r} is a Zarr group, not an array"
        raise SourceFormatError(msg)
    return node


def _try_array(location: ZarrLocation, store: Store) -> zarr_lib.Array | None:
    import zarr as zarr_lib

    try:
        return zarr_lib.open_array(store=store, path=location.path, mode="r")
    except Exception:  # not an array (or not reachable): the caller decides
        return None


def _try_group(location: ZarrLocation, store: Store) -> zarr_lib.Group | None:
    import zarr as zarr_lib

    try:
        return zarr_lib.open_group(store=store, path=location.path, mode="r")
    except Exception:  # not a group (or not reachable): the caller decides
        return None


def _describe_members(group: zarr_lib.Group) -> str:
    import zarr as zarr_lib

    try:
        members = sorted(group.members(), key=lambda m: m[0])
    except Exception as exc:  # e.g. HTTP without directory listing
        return f"(its members cannot be listed: {type(exc).__name__})"
    if not members:
        return "nothing (it is empty)"
    items = [
        f"{name!r} (array {tuple(node.shape)} {node.dtype})"
        if isinstance(node, zarr_lib.Array)
        else f"{name!r} (group)"
        for name, node in members
    ]
    return ", ".join(items)


def _not_found(location: ZarrLocation, store: Store) -> Exception:
    parts = [p for p in location.path.split("/") if p]
    for depth in range(len(parts) - 1, -1, -1):
        parent = location.child("/".join(parts[:depth]))
        group = _try_group(parent, store)
        if group is None and (array := _try_array(parent, store)) is not None:
            msg = (
                f"no Zarr array or group {parts[depth]!r} in {parent.uri()!r} (source {location.uri()!r}): "
                f"that is an array {tuple(array.shape)} {array.dtype}, which has no members; "
                f"accepted: {parent.uri()!r} itself"
            )
            return SourceNotFoundError(msg)
        if group is not None:
            msg = (
                f"no Zarr array or group {parts[depth]!r} in {parent.uri()!r} (source {location.uri()!r}); "
                f"that group holds {_describe_members(group)}"
            )
            return SourceNotFoundError(msg)
    if location.is_local:
        msg = (
            f"{location.root!r} is not a Zarr store: it holds no zarr.json (Zarr v3) or .zgroup/.zarray "
            f"(Zarr v2) metadata (source {location.uri()!r}){interrupted_overwrite_note(location.root)}"
        )
        return SourceFormatError(msg)
    msg = (
        f"no Zarr store at {location.store_uri!r} (source {location.uri()!r}): no zarr.json, .zgroup or "
        ".zarray metadata could be read there"
    )
    return SourceNotFoundError(msg)


# -- OME-Zarr (NGFF) ------------------------------------------------------------------------
@dataclass
class _Multiscale:
    version: str
    axes_names: list[str]
    axes_types: list[str | None]
    units: dict[str, str]
    datasets: list[Mapping[str, Any]]
    global_scale: list[float] | None
    channel_names: list[str] | None
    name: str | None


def _ngff(attrs: Mapping[str, Any]) -> tuple[list[Any], Mapping[str, Any], str]:
    """(multiscales, the dict holding them, version) from group attrs (0.4 or 0.5).

    A value that is not a list comes as a list of it (empty when falsy), for
    [`_parse_multiscales()`][_parse_multiscales] to refuse by name.
    """
    ome = attrs.get("ome")
    if isinstance(ome, Mapping) and "multiscales" in ome:
        return _as_list(ome["multiscales"]), ome, str(ome.get("version", "0.5"))
    if "multiscales" in attrs:
        ms = _as_list(attrs["multiscales"])
        version = str(ms[0].get("version", "0.4")) if ms and isinstance(ms[0], Mapping) else "0.4"
        return ms, attrs, version
    return [], attrs, ""


def _as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list) else [value] if value else []


def _transform_of(transforms: Any, ndim: int, kind: str = "scale") -> list[float] | None:
    """The values of the first ``kind`` (``scale`` or ``translation``) transformation with ``ndim`` of them."""
    for t in transforms or []:
        if isinstance(t, Mapping) and t.get("type") == kind and kind in t:
            values = [float(s) for s in t[kind]]
            if len(values) == ndim:
                return values
    return None


def _bad_metadata(where: str, field: str, problem: str) -> SourceFormatError:
    return SourceFormatError(f"invalid OME-Zarr metadata in {where!r}: {field} {problem}")


def _check_transforms(transforms: Any, axes: Sequence[str], where: str, field: str) -> None:
    """Check the ``scale`` / ``translation`` of a ``coordinateTransformations`` list against the axes.

    Structure errors (not a list, a value that is not a number, a length that is not the number of
    axes) raise; a scale that is zero, negative or not finite warns (the stack then has no physical
    size along that axis).
    """
    if transforms is None:
        return
    if not isinstance(transforms, list):
        raise _bad_metadata(where, field, f"must be a list of transformations, got {transforms!r}")
    for j, t in enumerate(transforms):
        kind = t.get("type") if isinstance(t, Mapping) else None
        if kind not in ("scale", "translation") or kind not in t:
            continue  # other types ("identity", "path" ...) are not read
        name = f"{field}[{j}].{kind}"
        values = t[kind]
        if not isinstance(values, list):
            raise _bad_metadata(where, name, f"must be a list of {len(axes)} numbers, got {values!r}")
        bad = [v for v in values if isinstance(v, bool) or not isinstance(v, (int, float))]
        if bad:
            raise _bad_metadata(where, name, f"= {values!r} holds {bad[0]!r}, which is not a number")
        if len(values) != len(axes):
            raise _bad_metadata(
                where, name, f"= {values!r} has {len(values)} values for the {len(axes)} axes {list(axes)}"
            )
        odd = [(a, v) for a, v in zip(axes, values, strict=True) if not np.isfinite(v) or (kind == "scale" and v <= 0)]
        if odd and kind == "scale":
            warnings.warn(
                f"OME-Zarr metadata in {where!r}: {name} = {values!r} is not a positive size along "
                f"{', '.join(repr(a) for a, _ in odd)}; the physical pixel size along it is left out",
                MetadataWarning,
                stacklevel=2,
            )
        elif odd:
            raise _bad_metadata(where, name, f"= {values!r} is not finite along {odd[0][0]!r}")


#: Most resolution levels a multiscale may list: a pyramid halving each level has at most 64 (2**64 pixels along an
#: axis); more, or a path listed twice, is refused before any level opens (each level is a stack of its own).
_MAX_LEVELS = 64


def _check_level_count(datasets: list[Any], where: str, k: int) -> None:
    """Refuse a ``multiscales[k].datasets`` list longer than ``_MAX_LEVELS`` or repeating a path."""
    field = f"multiscales[{k}].datasets"
    if len(datasets) > _MAX_LEVELS:
        raise _bad_metadata(
            where, field, f"lists {len(datasets)} resolution levels; at most {_MAX_LEVELS} are accepted"
        )
    paths = [str(d.get("path")).strip("/") for d in datasets if isinstance(d, Mapping) and "path" in d]
    repeated = sorted({p for p in paths if paths.count(p) > 1})
    if repeated:
        raise _bad_metadata(
            where,
            field,
            f"lists {len(datasets)} resolution levels but repeats the path(s) {repeated[:4]}: "
            "every level needs an array of its own",
        )


def _check_level_order(datasets: list[Any], axes: Sequence[str], where: str, k: int) -> None:
    """Refuse datasets whose scales shrink from one level to the next (NGFF: highest resolution first).

    Level 0 is read as the full resolution (``stats`` / ``convert`` use it alone): a reversed list made a
    coarse level pass for it.
    """
    scales = [_transform_of(d.get("coordinateTransformations"), len(axes)) for d in datasets]
    for i in range(1, len(scales)):
        a, b = scales[i - 1], scales[i]
        if a is None or b is None:
            continue
        # finer by more than rounding: writers that compute each level's scale (or round it to float32) differ in
        # the last digits along an axis not downsampled (0.30000000000000004, then 0.3)
        finer = [n for n, x, y in zip(axes, a, b, strict=True) if 0 < y < x * (1 - 1e-6) and np.isfinite(x)]
        if finer:
            raise _bad_metadata(
                where,
                f"multiscales[{k}].datasets",
                f"are not ordered from the highest resolution to the lowest, as NGFF requires: level {i} "
                f"(path {datasets[i].get('path')!r}, scale {b}) is finer than level {i - 1} (path "
                f"{datasets[i - 1].get('path')!r}, scale {a}) along {finer}; list the full resolution first "
                "(the datasets' order decides which level is the full resolution)",
            )


#: the OME-NGFF versions whose images lazystack reads
NGFF_VERSIONS = ("0.1", "0.2", "0.3", "0.4", "0.5")


def _check_version(version: str, ms: Mapping[str, Any], where: str) -> None:
    """Warn (MetadataWarning) about an NGFF version lazystack does not know: it is read as the newest one known."""
    declared = str(ms.get("version", version))
    if ".".join(declared.split("-")[0].split(".")[:2]) not in NGFF_VERSIONS:  # "0.5-dev", "0.4.1": known
        msg = (
            f"OME-Zarr image {where!r} declares NGFF version {declared!r}, which lazystack does not know; read as "
            f"{NGFF_VERSIONS[-1]} (lazystack reads versions {', '.join(NGFF_VERSIONS)})"
        )
        warnings.warn(msg, MetadataWarning, stacklevel=3)


def _parse_multiscales(attrs: Mapping[str, Any], where: str) -> list[_Multiscale]:
    multiscales, holder, version = _ngff(attrs)
    if "multiscales" in holder and not isinstance(holder["multiscales"], list):
        got = holder.get("multiscales")
        raise _bad_metadata(
            where, "'multiscales'", f"must be a list of multiscale objects, got a {type(got).__name__}: {got!r:.200}"
        )
    out = []
    omero = holder.get("omero") if isinstance(holder.get("omero"), Mapping) else attrs.get("omero")
    channel_names = None
    if isinstance(omero, Mapping) and isinstance(omero.get("channels"), list):
        labels = [c.get("label") if isinstance(c, Mapping) else None for c in omero["channels"]]
        channel_names = [str(lab) if lab is not None else str(i) for i, lab in enumerate(labels)]
    for k, ms in enumerate(multiscales):
        if not isinstance(ms, Mapping):
            raise _bad_metadata(where, f"multiscales[{k}]", f"must be an object, got {ms!r:.200}")
        if not isinstance(ms.get("datasets"), list):
            raise _bad_metadata(
                where,
                f"multiscales[{k}].datasets",
                f"must be a list of {{'path': ..., 'coordinateTransformations': ...}} objects, "
                f"got {ms.get('datasets')!r:.200} (keys of the multiscale: {sorted(ms)})",
            )
        if not ms["datasets"]:
            raise _bad_metadata(
                where, f"multiscales[{k}].datasets", "is empty: an image needs at least one resolution level"
            )
        _check_level_count(ms["datasets"], where, k)
        axes = ms.get("axes")
        if axes is None:
            if str(ms.get("version", version)) not in ("0.1", "0.2"):
                msg = f"invalid OME-Zarr metadata in {where!r}: a multiscale of NGFF >= 0.3 needs 'axes', got {ms!r}"
                raise SourceFormatError(msg)
            axes = list("tczyx")  # NGFF 0.1 / 0.2 images are always 5-D TCZYX
        for i, d in enumerate(ms["datasets"]):
            path = d.get("path") if isinstance(d, Mapping) else None
            if not isinstance(path, (str, int)) or isinstance(path, bool) or not str(path).strip("/"):
                msg = (
                    f"invalid OME-Zarr metadata in {where!r}: dataset {i} of a multiscale is {d!r}; "
                    "every dataset needs a 'path' naming its array (e.g. {'path': 's0', ...})"
                )
                raise SourceFormatError(msg)
        if not isinstance(axes, list):  # a string "czyx" was read letter by letter as NGFF 0.3 names
            raise _bad_metadata(where, f"multiscales[{k}].axes", f"must be a list of axes, got {axes!r:.200}")
        names, types, units = [], [], {}
        for ax in axes:
            if isinstance(ax, Mapping):
                name = str(ax.get("name", ""))
                types.append(ax.get("type"))
                if ax.get("unit"):
                    units[name.upper()] = str(ax["unit"])
            else:  # NGFF 0.3: plain names
                name = str(ax)
                types.append(None)
            names.append(name)
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise _bad_metadata(
                where,
                f"multiscales[{k}].axes",
                f"names {repeated} more than once ({names}): NGFF axis names are unique",
            )
        letters = [_ngff_letter(n, t) for n, t in zip(names, types, strict=True)]
        twice = [(n, t) for n, t in zip(names, letters, strict=True) if t is not None and letters.count(t) > 1]
        if twice:  # unique names, one letter ('y' and 'Y'; 'c' and a channel-typed 'ch'): no axes string fits
            msg = (
                f"OME-Zarr image {where!r}: multiscales[{k}].axes {names} give the axis letter {twice[0][1]!r} to "
                f"{', '.join(repr(n) for n, _ in twice)}; lazystack reads one axis per letter of 'STCZYX' (a "
                "one-letter name is its letter; a time or channel axis of another name is 'T' or 'C')"
            )
            raise SourceFormatError(msg)
        _check_version(version, ms, where)
        for axis, unit in units.items():
            if unit_name(unit) is None:
                msg = (
                    f"OME-Zarr image {where!r}: axis {axis.lower()!r} has the unit {unit!r}, which is not an NGFF "
                    "(UDUNITS-2) unit name such as 'micrometer', 'nanometer' or 'second'; kept as given"
                )
                warnings.warn(msg, MetadataWarning, stacklevel=2)
        _check_transforms(
            ms.get("coordinateTransformations"), names, where, f"multiscales[{k}].coordinateTransformations"
        )
        for i, d in enumerate(ms["datasets"]):
            field = f"multiscales[{k}].datasets[{i}].coordinateTransformations"
            _check_transforms(d.get("coordinateTransformations"), names, where, field)
        _check_level_order(ms["datasets"], names, where, k)
        out.append(
            _Multiscale(
                version=version or str(ms.get("version", "")),
                axes_names=names,
                axes_types=types,
                units=units,
                datasets=list(ms["datasets"]),
                global_scale=_transform_of(ms.get("coordinateTransformations"), len(names)),
                channel_names=channel_names,
                name=ms.get("name"),
            )
        )
    return out


#: NGFF axis types that name a lazystack letter whatever the axis is called ("time", "channel" ...).
_NGFF_TYPE_LETTERS = {"time": "T", "channel": "C"}


def _ngff_letter(name: str, kind: Any) -> str | None:
    """The letter of an NGFF axis: a one-letter name in STCZYX, else its type's (time, channel), else None."""
    if len(name) == 1 and name.upper() in "STCZYX":
        return name.upper()
    return _NGFF_TYPE_LETTERS.get(str(kind)) if kind else None


def _level_source(
    ms: _Multiscale, level: int, location: ZarrLocation, array: zarr_lib.Array, axes: str
) -> OpenedSource:
    letters = [_ngff_letter(name, kind) for name, kind in zip(ms.axes_names, ms.axes_types, strict=True)]
    declared = "".join(letter or "?" for letter in letters)
    uri = location.uri()
    if len(axes) != len(letters) or any(d is not None and d != a for a, d in zip(axes, letters, strict=False)):
        msg = (
            f"axes {axes!r} disagree with the OME-Zarr axes {declared!r} (NGFF names {ms.axes_names}) of {uri!r}: "
            f"pass axes={declared!r}"
        )
        if "?" in declared:  # an axis such as "angle": its letter is the caller's to choose
            msg += ", with a letter of 'STCZYX' for each '?' (an NGFF axis whose name and type have none)"
        raise ShapeMismatchError(msg)
    # from here ``axes`` are the caller's letters: those the NGFF axes declare, the caller's own for the others
    if len(array.shape) != len(axes):
        msg = f"OME-Zarr level {uri!r} has shape {tuple(array.shape)} but its multiscale declares axes {axes!r}"
        raise SourceFormatError(msg)
    ds = ms.datasets[level]
    scale = _transform_of(ds.get("coordinateTransformations"), len(axes))
    if scale is not None and ms.global_scale is not None:
        scale = [s * g for s, g in zip(scale, ms.global_scale, strict=True)]
    elif scale is None:
        scale = ms.global_scale
    sizes: dict[str, float] = {}
    translation: dict[str, float] = {}
    tr = _transform_of(ds.get("coordinateTransformations"), len(axes), "translation")
    for i, (letter, kind) in enumerate(zip(axes, ms.axes_types, strict=True)):
        spatial = kind == "space" if kind is not None else letter in "ZYX"
        if spatial and scale is not None and np.isfinite(scale[i]) and scale[i] > 0:
            sizes[letter] = scale[i]
        if spatial and tr is not None:
            translation[letter] = tr[i]
    coords: dict[str, Any] = {}
    names = ms.channel_names
    if names is not None and "C" in axes and len(names) == int(array.shape[axes.index("C")]):
        coords["C"] = np.asarray(names)
    attrs: dict[str, Any] = {
        "level": level,
        "physical_pixel_sizes": sizes,
        "ngff_axes": axes,
        "ngff_version": ms.version,
        "zarr_format": int(array.metadata.zarr_format),
    }
    if translation:
        attrs["translation"] = translation
    if ms.units:  # keyed by upper-cased NGFF name: by letter, for axes named otherwise ("time" ...)
        by_name = dict(zip((n.upper() for n in ms.axes_names), axes, strict=True))
        attrs["units"] = {by_name.get(name, name): unit for name, unit in ms.units.items()}
    if ms.name:
        attrs["multiscale_name"] = str(ms.name)
    reader = ZarrArrayReader(location, array)
    return OpenedSource(reader=reader, source=uri, format="ome-zarr", axes=axes, coords=coords, attrs=attrs)


def _image_levels(
    group: zarr_lib.Group, location: ZarrLocation, axes: str, store: Store, levels: tuple[int, ...] | None
) -> Iterator[OpenedSource]:
    import zarr as zarr_lib

    for ms in _parse_multiscales(group.attrs.asdict(), location.uri()):
        if levels is not None and levels[-1] >= len(ms.datasets):
            msg = (
                f"OME-Zarr image {location.uri()!r} has {len(ms.datasets)} resolution level(s) "
                f"(0 to {len(ms.datasets) - 1}), not level {levels[-1]} asked for by levels={list(levels)}"
            )
            raise SourceNotFoundError(msg)
        for level, ds in enumerate(ms.datasets):
            if levels is not None and level not in levels:
                continue
            child = location.child(f"{location.path}/{str(ds['path']).strip('/')}")
            node = _open_node(child, store)
            if not isinstance(node, zarr_lib.Array):
                msg = f"OME-Zarr level {level} of {location.uri()!r} at {child.uri()!r} is a group, not an array"
                raise SourceFormatError(msg)
            opened = _level_source(ms, level, child, node, axes)
            opened.attrs["image_uri"] = location.uri()
            yield opened


def _find_level(location: ZarrLocation, store: Store) -> tuple[_Multiscale, int, str] | None:
    """Find the multiscale (in an ancestor group) that lists the array at ``location``."""
    parts = [p for p in location.path.split("/") if p]
    for depth in range(len(parts) - 1, -1, -1):
        parent = location.child("/".join(parts[:depth]))
        group = _try_group(parent, store)
        if group is None:
            continue
        rel = "/".join(parts[depth:])
        attrs = group.attrs.asdict()
        for ms in _parse_multiscales(attrs, parent.uri()):
            for level, ds in enumerate(ms.datasets):
                if str(ds["path"]).strip("/") == rel:
                    return ms, level, parent.uri()
    return None


# -- entry point ------------------------------------------------------------------------------
def open_zarr(
    path: Any, axes: str, storage_options: Mapping[str, Any] | None = None, levels: tuple[int, ...] | None = None
) -> list[OpenedSource]:
    """Open a Zarr / OME-Zarr source: one [`OpenedSource`][OpenedSource] per stack.

    Parameters
    ----------
    path : str or zarr.storage.StorePath
        Local path, ``file://`` URI or fsspec URI of a store, group or array;
        or a ``StorePath`` (see [`store_path_location()`][store_path_location]).
    axes : str
        Validated axes of every array (must equal the NGFF axes of an OME-Zarr image).
    storage_options : mapping, optional
        fsspec options for remote stores (credentials, ``client_kwargs`` with an
        [`aiohttp.ClientTimeout`][aiohttp.ClientTimeout] ...; [`DEFAULT_HTTP_TIMEOUT`][DEFAULT_HTTP_TIMEOUT] otherwise),
        plus lazystack's ``retries`` and ``retry_backoff`` ([`RETRY_OPTIONS`][RETRY_OPTIONS]).
    levels : tuple of int, optional
        Resolution levels to open of every OME-Zarr image (sorted, as
        [`lazystack.core.levels.parse_levels()`][lazystack.core.levels.parse_levels] returns them); None for all.
        A path to one level's array is opened whatever ``levels`` says (the path is
        the selection); an array no OME-Zarr image lists is level 0, its only level.

    Returns
    -------
    list of OpenedSource
        A group: one per array at its first level, sorted by name; an OME-Zarr
        image group: one per (selected) multiscale level, level 0 first; a
        ``bioformats2raw.layout`` group: the levels of image ``0``, then of image
        ``1`` ... (attrs ``image``: its name); an HCS plate: the levels of every field of every well, in the
        plate's well order (attrs ``plate``, ``well``, ``row``, ``column``,
        ``field``); a well of a plate (``plate.zarr/A/1``): the levels of its fields, named as the plate
        names them; a label image or an image's ``labels`` group: the label images'
        levels (attrs ``label_name``, ``label_of``); an array: itself (an OME-Zarr
        level keeps the metadata of the ancestor group listing it). Level stacks
        carry ``attrs["level"]`` and ``attrs["image_uri"]`` (the image group's URI).

    Raises
    ------
    SourceNotFoundError
        If the store, group or array does not exist (the message lists what is there),
        or an image (or an array no image lists: level 0 only) has no level of ``levels``.
    SourceFormatError
        If the path is not a Zarr store, a group has no arrays, or metadata is invalid.
    ShapeMismatchError
        If ``axes`` disagree with an OME-Zarr image's axes.
    UnsupportedSourceError, MissingDependencyError
        For an unknown or uninstalled URI scheme.
    """
    import zarr as zarr_lib

    location = (
        store_path_location(path, storage_options) if is_store_path(path) else parse_zarr_source(path, storage_options)
    )
    if not location.is_local:
        retry_policy(location)  # bad retry options fail here, not on the first read
    store = location.open_store()
    node = _open_node(location, store)
    if isinstance(node, zarr_lib.Array):
        found = _find_level(location, store) if location.path else None
        if found is not None:
            ms, level, image_uri = found
            opened = _level_source(ms, level, location, node, axes)
            opened.attrs["image_uri"] = image_uri
            return [opened]
        return [_plain_source(location, node, axes, levels)]
    attrs = node.attrs.asdict()
    if _ngff(attrs)[0]:
        found_levels = list(_image_levels(node, location, axes, store, levels))
        if found_levels:
            if "image-label" in _ome_holder(attrs):
                _link_label(found_levels, location)
            return found_levels
    label_names = _ome_holder(attrs).get("labels")
    if isinstance(label_names, list) and label_names:
        return _labels(label_names, location, axes, store, levels)
    if isinstance(_ome_holder(attrs).get("plate"), Mapping):
        return _plate_fields(node, location, axes, store, levels)
    if isinstance(_ome_holder(attrs).get("well"), Mapping):
        return _well_alone(node, location, axes, store, levels)
    if "bioformats2raw.layout" in attrs or "bioformats2raw.layout" in _ome_holder(attrs):
        return _layout_images(node, location, axes, store, levels)
    arrays = _first_level_arrays(node, location)
    if not arrays:
        msg = (
            f"Zarr group {location.uri()!r} holds no arrays at its first level; it holds "
            f"{_describe_members(node)}. Point at an array or a group of arrays "
            f"(e.g. {location.uri().rstrip('/')}/<name>)"
        )
        raise SourceFormatError(msg)
    return [_plain_source(location.child(f"{location.path}/{name}"), arr, axes, levels) for name, arr in arrays]


def _ome_holder(attrs: Mapping[str, Any]) -> Mapping[str, Any]:
    """The dict holding NGFF keys: ``attrs["ome"]`` (0.5) or the attrs themselves (0.4)."""
    ome = attrs.get("ome")
    return ome if isinstance(ome, Mapping) else attrs


def _link_label(opened: list[OpenedSource], location: ZarrLocation) -> None:
    """Mark the level stacks of a label image (``<image>/labels/<name>``) with their name and image."""
    parts = [p for p in location.path.split("/") if p]
    name = parts[-1] if parts else location.root.rsplit("/", 1)[-1]
    image = location.child("/".join(parts[:-2])).uri() if len(parts) >= 2 and parts[-2] == "labels" else None
    for o in opened:
        o.attrs["label_name"] = name
        if image is not None:
            o.attrs["label_of"] = image


def _labels(
    names: list[Any], location: ZarrLocation, axes: str, store: Store, levels: tuple[int, ...] | None
) -> list[OpenedSource]:
    """The level stacks of every label image listed by a ``labels`` group, in its order."""
    out: list[OpenedSource] = []
    for i, name in enumerate(names):
        if not isinstance(name, str) or not name.strip("/"):
            raise _bad_metadata(location.uri(), f"labels[{i}]", f"must name a label image, got {name!r}")
        child = location.child(f"{location.path}/{name.strip('/')}")
        node = _try_group(child, store)
        if node is None or not _ngff(node.attrs.asdict())[0]:
            msg = f"label {name!r} listed by {location.uri()!r} is not an OME-Zarr image at {child.uri()!r}"
            raise SourceNotFoundError(msg)
        found = list(_image_levels(node, child, axes, store, levels))
        _link_label(found, child)
        out += found
    return out


def _plate_fields(
    group: zarr_lib.Group, location: ZarrLocation, axes: str, store: Store, levels: tuple[int, ...] | None
) -> list[OpenedSource]:
    """Every (selected) level of every field of every well of an HCS plate, in the plate's well order.

    Each stack's attrs name the ``plate``, ``well`` (``"A/1"``), ``row``, ``column`` and ``field``
    (index in the well); its source URI is ``<plate>/<row>/<column>/<field>/<level path>``.
    """
    where = location.uri()
    plate = _ome_holder(group.attrs.asdict())["plate"]
    wells = plate.get("wells")
    if not isinstance(wells, list) or not wells:
        raise _bad_metadata(
            where, "plate.wells", f"must be a non-empty list of {{'path': 'A/1', ...}}, got {wells!r:.200}"
        )
    plate_name = _plate_name(plate, location)
    out: list[OpenedSource] = []
    for i, well in enumerate(wells):
        well_path = well.get("path") if isinstance(well, Mapping) else None
        if not isinstance(well_path, str) or not well_path.strip("/"):
            raise _bad_metadata(where, f"plate.wells[{i}]", f"needs a 'path' like 'A/1', got {well!r:.200}")
        well_path = well_path.strip("/")
        well_loc = location.child(f"{location.path}/{well_path}")
        well_group = _try_group(well_loc, store)
        if well_group is None:
            msg = f"well {well_path!r} listed in the plate metadata of {where!r} is not a group at {well_loc.uri()!r}"
            raise SourceNotFoundError(msg)
        out += _well_fields(well_group, well_loc, well_path, plate_name, axes, store, levels)
    return out


def _plate_name(plate: Mapping[str, Any], location: ZarrLocation) -> str:
    """A plate's name: its metadata's ``name``, else the plate group's own name."""
    return str(plate.get("name") or location.path.rsplit("/", 1)[-1] or location.root.rsplit("/", 1)[-1])


def _well_fields(
    well_group: zarr_lib.Group,
    well_loc: ZarrLocation,
    well_path: str,
    plate_name: str | None,
    axes: str,
    store: Store,
    levels: tuple[int, ...] | None,
) -> list[OpenedSource]:
    """Every (selected) level of every field of one well (``well_path``: ``"A/1"``), in the well's image order.

    attrs ``plate`` (unless None), ``well``, ``row``, ``column``, ``field`` (index in the well).
    """
    well = _ome_holder(well_group.attrs.asdict()).get("well")
    images = well.get("images") if isinstance(well, Mapping) else None  # a well that is no object: no images
    if not isinstance(images, list):
        raise _bad_metadata(well_loc.uri(), "well.images", f"must be a list of {{'path': ...}}, got {images!r:.200}")
    row, _, column = well_path.partition("/")
    names = {"plate": plate_name} if plate_name is not None else {}
    out: list[OpenedSource] = []
    for f, image in enumerate(images):
        image_path = image.get("path") if isinstance(image, Mapping) else None
        if not isinstance(image_path, (str, int)) or isinstance(image_path, bool):
            raise _bad_metadata(well_loc.uri(), f"well.images[{f}]", f"needs a 'path', got {image!r:.200}")
        field_loc = well_loc.child(f"{well_loc.path}/{str(image_path).strip('/')}")
        field_group = _try_group(field_loc, store)
        if field_group is None:
            msg = f"field {image_path!r} of well {well_loc.uri()!r} is not a group at {field_loc.uri()!r}"
            raise SourceNotFoundError(msg)
        for opened in _image_levels(field_group, field_loc, axes, store, levels):
            opened.attrs.update(names, well=well_path, row=row, column=column, field=f)
            out.append(opened)
    return out


def _well_alone(
    group: zarr_lib.Group, location: ZarrLocation, axes: str, store: Store, levels: tuple[int, ...] | None
) -> list[OpenedSource]:
    """The fields of a well group opened by its own path (``plate.zarr/A/1``), named as the plate names them.

    The well is ``row/column``: the last two parts of its path; the plate, the group above them when
    its plate metadata lists that well.
    """
    parts = [p for p in location.path.split("/") if p]
    every = [p for p in location.root.split("/") if p] + parts  # a well at the root of its store: the root's name
    well_path = "/".join(every[-2:])
    plate_name = None
    plate_loc: ZarrLocation | None = None
    if len(parts) >= 2:
        plate_loc, plate_store = location.child("/".join(parts[:-2])), store
    elif (plate_root := _two_up(location)) is not None:
        # no folder ends in .zarr: the store is the well, its plate 2 up
        plate_loc = replace(location, root=plate_root, path="")
        plate_store = plate_loc.open_store()
    if plate_loc is not None:
        plate_group = _try_group(plate_loc, plate_store)
        plate = _ome_holder(plate_group.attrs.asdict()).get("plate") if plate_group is not None else None
        if isinstance(plate, Mapping):
            listed = [str(w.get("path", "")).strip("/") for w in plate.get("wells") or [] if isinstance(w, Mapping)]
            if well_path in listed:
                plate_name = _plate_name(plate, plate_loc)
    return _well_fields(group, location, well_path, plate_name, axes, store, levels)


def _two_up(location: ZarrLocation) -> str | None:
    """The root of the store two folders above ``location``'s store (a well's plate), or None without two folders
    (a URL's scheme and host are no folders, nor is ``/``; in a chained URL only an archive's paths are folders:
    ``zip://A/1::...`` gives ``zip://``, the archive's root)."""
    root = location.root.rstrip("/")
    if location.is_local:
        head, body, least = "/", root, 3
    elif location.chain and location.protocol not in _ARCHIVES:
        return None
    else:
        scheme, _, body = root.partition("://")
        head, least = scheme + "://", 2
        if not location.chain:  # a URL: its host stays
            host, _, body = body.partition("/")
            head += host + "/"
    parts = [p for p in body.split("/") if p]
    if len(parts) < least:
        return None
    up = head + "/".join(parts[:-2])
    return up if location.chain else up.rstrip("/")  # an archive's root is "zip://"


def _image_names(group: zarr_lib.Group, location: ZarrLocation, store: Store) -> list[str]:
    """Names of the numbered image groups of a bioformats2raw layout, in numeric order."""
    try:
        names = [str(name) for name in group.group_keys()]
    except Exception:  # no directory listing (plain HTTP): the images are numbered 0, 1, 2 ... without gaps
        names = []
        while len(names) < _MAX_LAYOUT_PROBED and _try_group(location.child(f"{location.path}/{len(names)}"), store):
            names.append(str(len(names)))
    return sorted((n for n in names if n.isdigit()), key=int)


def _layout_images(
    group: zarr_lib.Group, location: ZarrLocation, axes: str, store: Store, levels: tuple[int, ...] | None
) -> list[OpenedSource]:
    """Every level of every image of a ``bioformats2raw.layout`` group (image 0's levels first)."""
    out: list[OpenedSource] = []
    for name in _image_names(group, location, store):
        child = location.child(f"{location.path}/{name}")
        image = _try_group(child, store)
        if image is None or not _ngff(image.attrs.asdict())[0]:
            continue  # e.g. a plate or label group: not an image
        for opened in _image_levels(image, child, axes, store, levels):
            opened.attrs["image"] = name
            out.append(opened)
    if not out:
        msg = (
            f"Zarr group {location.uri()!r} declares the bioformats2raw.layout but none of its numbered groups "
            f"is an OME-Zarr image; it holds {_describe_members(group)}"
        )
        raise SourceFormatError(msg)
    return out


def _first_level_arrays(group: zarr_lib.Group, location: ZarrLocation) -> list[tuple[str, zarr_lib.Array]]:
    try:
        return sorted(((str(name), arr) for name, arr in group.arrays()), key=lambda item: item[0])
    except Exception as exc:
        msg = (
            f"cannot list the arrays of Zarr group {location.uri()!r}: {type(exc).__name__}: {exc}. "
            "Over HTTP a group needs consolidated metadata or a server that lists directories; "
            "otherwise point at each array"
        )
        raise SourceReadError(msg) from exc


def _plain_source(
    location: ZarrLocation, array: zarr_lib.Array, axes: str, levels: tuple[int, ...] | None = None
) -> OpenedSource:
    """An array that no OME-Zarr image lists: one resolution level, level 0 (as a TIFF series without a pyramid)."""
    if levels is not None and levels[-1] >= 1:
        msg = (
            f"Zarr array {location.uri()!r} is not a level of an OME-Zarr image: it has 1 resolution level "
            f"(level 0), not level {levels[-1]} asked for by levels={list(levels)}; "
            "give levels=0 or levels='all', or open an OME-Zarr image (a group with multiscales metadata)"
        )
        raise SourceNotFoundError(msg)
    reader = ZarrArrayReader(location, array)
    attrs = {"zarr_format": reader.zarr_format}
    return OpenedSource(reader=reader, source=location.uri(), format="zarr", axes=axes, attrs=attrs)
