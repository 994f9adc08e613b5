"""Chunk fetch engines for Zarr arrays, and the chunk reader built on them.

An *engine* decodes whole chunks of one zarr array (opened read-only):

``direct``
    each chunk's stored bytes through the store's public API (one ``pread``
    of a local chunk file, byte-range ``get`` otherwise, a fetch's requests
    at once), decoded with the numcodecs codecs the metadata names; sharded
    arrays per inner chunk through the shard index of the Zarr v3 spec.
``tensorstore``
    tensorstore's ``zarr`` / ``zarr3`` driver on the same local or HTTP store
    (the optional ``tensorstore`` extra).
``zarr``
    ``array[region]`` through zarr-python, chunk by chunk: always correct, slowest.

``auto`` (the default) uses [`AutoEngine`][AutoEngine] for a local array both
``direct`` and ``tensorstore`` read, else the first of ``direct``,
``tensorstore``, ``zarr`` that can; see ``benchmarks/``. Choose with
``LAZYSTACK_ZARR_ENGINE`` or [`set_zarr_engine()`][set_zarr_engine]; every
engine returns identical arrays.

[`ZarrArrayReader`][ZarrArrayReader] is the [`ChunkedReader`][lazystack.io.chunked.ChunkedReader]
over a ``zarr.Array`` (or the [`ArrayLayout`][ArrayLayout] of a local one, which the direct engine and
tensorstore read without zarr-python); it pickles as the array and rebuilds its engine per process.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import importlib.util
import itertools
import math
import os
import stat
import sys
import threading
import time
import weakref
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast

import numpy as np

from ...core.errors import MissingDependencyError, SourceFormatError, SourceReadError
from ...io.chunked import ChunkedReader, ChunkIndex, fetch_concurrently
from ...io.process import at_fork, current_pid
from ...io.reader import ReaderCapabilities, float32_is_exact

__all__ = [
    "ENGINES",
    "ENV_ZARR_ENGINE",
    "ArrayLayout",
    "AutoEngine",
    "DirectEngine",
    "RetryPolicy",
    "TensorstoreEngine",
    "ZarrArrayReader",
    "ZarrEngine",
    "ZarrPythonEngine",
    "available_engines",
    "close_http_session_at_exit",
    "get_zarr_engine",
    "is_read_failure",
    "is_retryable",
    "make_engine",
    "set_zarr_engine",
]

#: Accepted engine names.
ENGINES = ("auto", "direct", "tensorstore", "zarr")

#: Environment variable choosing the engine.
ENV_ZARR_ENGINE = "LAZYSTACK_ZARR_ENGINE"

_AUTO_ORDER = ("direct", "tensorstore", "zarr")
#: ``auto``: fewest chunks of one fetch that go to tensorstore rather than the direct engine ...
TENSORSTORE_MIN_CHUNKS = 2
#: ... when chunks decode to at least this many bytes each (worth tensorstore's thread hand-off) ...
TENSORSTORE_MIN_CHUNK_BYTES = 256 * 2**10
#: ... or the fetch decodes at least this many bytes in all.
TENSORSTORE_MIN_BYTES = 2**20
#: Most bytes one chunk (an inner chunk when sharded) may decode to, or one shard index may hold, for the tensorstore
#: engine: tensorstore aborts the whole process (``std::bad_alloc``) when it cannot allocate a chunk, where the
#: direct engine raises. ``auto`` reads arrays with larger chunks directly; ``tensorstore`` asked for refuses them.
TENSORSTORE_MAX_CHUNK_BYTES = 2**30
_MISSING = 2**64 - 1  # offset and length of a missing inner chunk in a shard index
_Request = tuple[str, tuple[int, int] | None, int | None]  # store key, byte range, suffix length


#: zarr's and fsspec's event loops and their threads, held across a fork (see _hold_loops_before_fork).
_LOOPS_HELD_AT_FORK: list[Any] = []


def _hold_loops_before_fork() -> None:
    """Keep zarr's and fsspec's event loops (their public one-item ``loop`` / ``iothread`` lists) referenced while a
    child forks.

    A forked child shares the parent's epoll instance; were it to collect a loop zarr or fsspec
    dropped at fork, closing it would unregister the parent's sockets from that epoll, and the
    parent's next remote read would wait for its timeout. The child keeps them, unused.
    """
    for name in ("zarr.core.sync", "fsspec.asyn"):
        module = sys.modules.get(name)
        if module is not None:
            held = [obj for obj in (*getattr(module, "loop", ()), *getattr(module, "iothread", ())) if obj is not None]
            _LOOPS_HELD_AT_FORK.extend(held)


def _freeze_inherited_objects_in_child() -> None:
    """In a child forked after remote reads: ``gc.freeze()`` the inherited objects.

    The parent's aiohttp sessions and transports sit in cycles pointing at the shared epoll;
    collecting one in the child would unregister the parent's sockets.
    """
    if _LOOPS_HELD_AT_FORK:
        import gc

        gc.freeze()


at_fork(
    before=_hold_loops_before_fork,
    after_in_parent=_LOOPS_HELD_AT_FORK.clear,
    after_in_child=_freeze_inherited_objects_in_child,
)


def _check_engine(name: str, where: str = "zarr engine") -> str:
    value = str(name).strip().lower()
    if value not in ENGINES:
        msg = f"unknown {where} {name!r}; accepted: {', '.join(repr(e) for e in ENGINES)}"
        raise ValueError(msg)
    return value


_ENGINE_SETTING: str | None = None


def set_zarr_engine(name: str | None) -> str:
    """Choose the engine new readers use in this process; return the previous choice.

    Parameters
    ----------
    name : {"auto", "direct", "tensorstore", "zarr"} or None
        None goes back to ``LAZYSTACK_ZARR_ENGINE`` (default ``"auto"``).

    Returns
    -------
    str
        The engine in force before the call.

    Raises
    ------
    ValueError
        If ``name`` is not an accepted engine.

    Examples
    --------
    >>> previous = set_zarr_engine("zarr")
    >>> get_zarr_engine()
    'zarr'
    >>> _ = set_zarr_engine(None)
    """
    global _ENGINE_SETTING
    try:
        previous = get_zarr_engine()
    except ValueError:  # an invalid environment variable is being overridden
        previous = "auto"
    _ENGINE_SETTING = None if name is None else _check_engine(name)
    return previous


def get_zarr_engine() -> str:
    """The engine in force: [`set_zarr_engine()`][set_zarr_engine]'s, else ``LAZYSTACK_ZARR_ENGINE``, else
    ``"auto"``."""
    if _ENGINE_SETTING is not None:
        return _ENGINE_SETTING
    raw = os.environ.get(ENV_ZARR_ENGINE, "").strip()
    return _check_engine(raw, f"{ENV_ZARR_ENGINE}") if raw else "auto"


# tensorstore's thread pools do not survive fork() (a child can hang on its first read): such a child reads directly
_TS_STARTED_IN: int | None = None


def _tensorstore_forked() -> bool:
    """Whether tensorstore was started in a parent of this (forked) process."""
    return _TS_STARTED_IN is not None and current_pid() != _TS_STARTED_IN


#: HTTP file systems (fsspec's, opened asynchronously by zarr) whose aiohttp session closes with them or at exit.
# keyed by identity: fsspec file systems compare equal by their options (every default HTTP one is equal to another)
_HTTP_FILESYSTEMS: dict[int, weakref.ref[Any]] = {}
_SESSION_FINALIZERS: list[weakref.finalize[Any, Any]] = []
_HTTP_PID = [-1]  # the process that registered them: a forked child closes none of its parent's sessions


def close_http_session_at_exit(fs: Any) -> None:
    """Close ``fs``'s aiohttp session when ``fs`` is collected or the interpreter exits (other file systems: nothing).

    fsspec's asynchronous HTTP file system (as zarr opens it) registers no finalizer, and aiohttp
    warns "Unclosed client session". The session is made here on zarr's event loop, where every
    read of the store runs (``HTTPFileSystem.set_session()``), and closed on that loop.

    Parameters
    ----------
    fs : fsspec.AbstractFileSystem
        A store's file system (``FsspecStore.fs``).
    """
    from fsspec.implementations.http import HTTPFileSystem

    if not isinstance(fs, HTTPFileSystem):
        return
    pid = current_pid()
    if _HTTP_PID[0] != pid:
        if _HTTP_PID[0] == -1:
            # after zarr's own exit hook is registered (zarr is imported): runs before it stops zarr's loop
            atexit.register(_close_http_sessions)
        _HTTP_FILESYSTEMS.clear()  # a forked child's registrations are its own
        _SESSION_FINALIZERS.clear()
        _HTTP_PID[0] = pid
    known = _HTTP_FILESYSTEMS.get(id(fs))
    if known is not None and known() is fs:
        return
    from zarr.core.sync import sync

    async def session_and_loop() -> tuple[Any, asyncio.AbstractEventLoop]:
        return await fs.set_session(), asyncio.get_running_loop()

    session, loop = sync(session_and_loop())
    for key in [k for k, ref in _HTTP_FILESYSTEMS.items() if ref() is None]:
        del _HTTP_FILESYSTEMS[key]
    _HTTP_FILESYSTEMS[id(fs)] = weakref.ref(fs)
    _SESSION_FINALIZERS[:] = [f for f in _SESSION_FINALIZERS if f.alive]
    _SESSION_FINALIZERS.append(weakref.finalize(fs, _close_session, pid, loop, session))


def _close_session(pid: int, loop: Any, session: Any) -> None:
    """Close an aiohttp session on its event loop (only in the process that made it; waits unless on that loop)."""
    if current_pid() != pid or session.closed or loop.is_closed():
        return
    try:
        future = asyncio.run_coroutine_threadsafe(session.close(), loop)
    except RuntimeError:  # the loop is shutting down
        return
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if running is not loop:  # collected on the loop's own thread: the close runs after this returns
        with contextlib.suppress(Exception):
            future.result(timeout=5)


def _close_http_sessions() -> None:
    """At exit: close the sessions still open (before zarr's exit hook stops its loop)."""
    finalizers = list(_SESSION_FINALIZERS)
    _SESSION_FINALIZERS.clear()
    for finalizer in finalizers:
        finalizer()  # runs once: a finalizer already run (its file system collected) does nothing


# -- engines ----------------------------------------------------------------------------------
class ZarrEngine(ABC):
    """Decodes whole chunks of one zarr array (opened read-only).

    Attributes
    ----------
    name : str
        Engine name.
    chunk_shape : tuple of int
        The unit of a fetch: the array's chunks (inner chunks when sharded).
    """

    name = "abstract"
    #: local stores: a chunk (shard) file found modified after this time (ns since the epoch: the opening of the
    #: array) when a read decodes it raises ``SourceReadError``, from one ``stat`` of the file made after the read
    #: (a chunk the cache serves is not looked at); None: not checked. [`ZarrArrayReader`][ZarrArrayReader] sets it.
    modified_after: int | None = None
    #: how that error names the array (the source's URI; default: its path)
    array_name: str | None = None

    def __init__(self, array: Any) -> None:
        self.array = array
        self.shape: tuple[int, ...] = tuple(int(n) for n in array.shape)
        self.dtype = np.dtype(array.dtype)
        self.chunk_shape: tuple[int, ...] = tuple(int(c) for c in array.chunks)

    def chunk_region(self, idx: ChunkIndex) -> tuple[slice, ...]:
        """Region of the array chunk ``idx`` covers, cut at the array's edge."""
        return tuple(
            slice(i * c, min((i + 1) * c, n)) for i, c, n in zip(idx, self.chunk_shape, self.shape, strict=True)
        )

    @abstractmethod
    def fetch(self, indices: Sequence[ChunkIndex]) -> dict[ChunkIndex, np.ndarray]:
        """Decode the chunks ``indices`` (full-size or cut at the edge; missing ones filled)."""

    def fetch_one(self, idx: ChunkIndex) -> np.ndarray:
        """Decode one chunk (default: [`fetch()`][fetch] of one index)."""
        return self.fetch([idx])[idx]

    def read_region(self, region: tuple[slice, ...]) -> np.ndarray:
        """Read a region straight through the engine (no cache). Default: ``array[region]``."""
        return np.asarray(self.array[region])


def _special_file(path: str) -> bool:
    """Whether ``path`` is a FIFO, device or socket (an open would wait for ever); absent or unreadable: False."""
    try:
        mode = os.stat(path).st_mode
    except OSError:  # not stored (the fill value) or unreadable: the read says so
        return False
    return not (stat.S_ISREG(mode) or stat.S_ISDIR(mode))


class ZarrPythonEngine(ZarrEngine):
    """``array[chunk region]`` through zarr-python, one call per chunk (the reference).

    zarr-python hands blosc frames to c-blosc unchecked, which decodes a chunk cut short into
    whatever lies past its buffer. When blosc is the outermost codec of a local array, each chunk's
    stored bytes are read first and checked ([`check_blosc_frame()`][check_blosc_frame]): a second
    read, from the page cache. Remote arrays are not checked (it would double the requests).
    """

    name = "zarr"

    def __init__(self, array: Any) -> None:
        if isinstance(array, ArrayLayout):  # auto's last resort for a layout neither other engine reads, or asked for
            msg = (
                f"zarr engine: it reads the zarr.Array, not the ArrayLayout of {array.store_path!r}: "
                "open the array (zarr.open_array(..., mode='r')) or use the 'auto', 'direct' or 'tensorstore' engine"
            )
            raise NotImplementedError(msg)
        super().__init__(array)
        blosc = bool(array.compressors) and _is_blosc(array.compressors[-1])  # the stored bytes are a blosc frame
        sharded = getattr(array, "shards", None) is not None
        direct: DirectEngine | None = None
        if blosc or sharded:
            with contextlib.suppress(NotImplementedError):  # chunk bytes or an index it cannot locate: unchecked
                direct = DirectEngine(array)
        local = direct if direct is not None and direct.local_root is not None else None
        self._frames = local if blosc else None
        #: a sharded local array: each shard's index checked (once, cached) before zarr reads its ranges
        self._shards = local if sharded else None
        from zarr.storage import LocalStore

        #: a local array's folder (None for other stores)
        self._local_dir: str | None = None
        if isinstance(array.store, LocalStore):
            self._local_dir = os.path.join(os.fspath(array.store.root), *[p for p in str(array.path).split("/") if p])
        #: an unsharded local array's folder: a chunk file that is a FIFO is refused (zarr would wait on it)
        self._folder = self._local_dir if not sharded and self._frames is None else None
        #: inner chunks per shard (a chunk's file is its shard's), None when not sharded
        self._per_file: tuple[int, ...] | None = None
        if sharded:
            self._per_file = tuple(int(s) // c for s, c in zip(array.shards, self.chunk_shape, strict=True))

    def chunk_file(self, idx: ChunkIndex) -> tuple[str, str]:
        """The store key (relative to the array) and the path or URL of the file holding chunk ``idx`` (its
        shard's, when sharded), from the array's public chunk key encoding (``metadata.encode_chunk_key``)."""
        per = self._per_file
        coords = idx if per is None else tuple(i // c for i, c in zip(idx, per, strict=True))
        key = str(self.array.metadata.encode_chunk_key(coords))
        if self._local_dir is not None:
            return key, os.path.join(self._local_dir, key)
        base = getattr(self.array.store, "path", None)  # a remote store's URL (its str() is the store's repr)
        if not isinstance(base, str):
            return key, f"{str(self.array.store_path).rstrip('/')}/{key}"
        return key, "/".join([base.rstrip("/"), *[p for p in str(self.array.path).split("/") if p], key])

    def _check_read(self, indices: Iterable[ChunkIndex]) -> None:
        """After a read: raise ``_StaleChunkError`` when a local file of ``indices`` (one ``stat`` each, once per
        file) was modified after [`modified_after`][modified_after]. After, not before: a file rewritten (in place
        or renamed over) while zarr read it is seen."""
        opened = self.modified_after
        if opened is None or self._local_dir is None:
            return
        files = {self.chunk_file(idx) for idx in indices}
        for key, path in files:
            try:
                mtime = os.stat(path).st_mtime_ns
            except OSError:  # not stored (the fill value): nothing was read from it
                continue
            _check_mtime(path, key, mtime, opened, self.array_name or self._local_dir)

    def _one(self, idx: ChunkIndex) -> np.ndarray:
        if self._folder is not None:
            path = os.path.join(self._folder, self.array.metadata.encode_chunk_key(idx))
            if _special_file(path):
                msg = f"cannot read chunk {idx} of the zarr array {str(self.array.store_path)!r}: {path} is not "
                msg += "a regular file (a FIFO, device or socket; chunks are files)"
                raise SourceReadError(msg)
        if self._shards is not None:
            self._shards.shard_indexes([idx])  # raises SourceReadError for an index pointing outside its shard
        if self._frames is not None:
            raw = self._frames.raw_chunk(idx)
            if raw is not None:
                try:
                    check_blosc_frame(raw)
                except ValueError as e:
                    msg = f"chunk {idx} of the zarr array {self.array.store_path}: {e}"
                    raise SourceReadError(msg) from e
        try:
            out = np.asarray(self.array[self.chunk_region(idx)])
        except SourceReadError:
            raise
        except Exception as e:
            if not is_read_failure(e):  # a programming error (a codec's NotImplementedError ...): as it is
                raise
            # the store's, a codec's, a checksum's: named with the array and the file, as the engines' errors
            msg = (
                f"cannot read chunk {idx} of the zarr array {str(self.array.store_path)!r} "
                f"(stored in {self.chunk_file(idx)[1]!r}): {type(e).__name__}: {e}"
            )
            raise SourceReadError(msg) from e
        self._check_read((idx,))
        return out

    def fetch(self, indices: Sequence[ChunkIndex]) -> dict[ChunkIndex, np.ndarray]:
        """Decode chunks with ``array[region]`` (concurrently when several); each local file read is checked after
        the read when [`modified_after`][modified_after] is set."""
        return fetch_concurrently(indices, self._one)

    def read_region(self, region: tuple[slice, ...]) -> np.ndarray:
        """``array[region]`` (no cache), the files of the chunks it touches checked after the read."""
        out = np.asarray(self.array[region])
        if self.modified_after is not None:
            self._check_read(
                itertools.product(
                    *(range(r.start // c, -(-r.stop // c)) for r, c in zip(region, self.chunk_shape, strict=True))
                )
            )
        return out


#: Errors of code, not of stored data (see [`is_read_failure()`][is_read_failure]): never wrapped.
_CODE_ERRORS: tuple[type[BaseException], ...] = (
    NotImplementedError,
    RecursionError,
    TypeError,
    AttributeError,
    NameError,
    AssertionError,
    ImportError,
)


def is_read_failure(exc: BaseException) -> bool:
    """Whether ``exc``, raised while reading chunks through zarr, says the stored data could not be read.

    Every ``Exception`` but an error of code is a read failure: what the store
    and the network raise differs with each back end (``OSError``, fsspec's
    errors, aiohttp's ``ClientError``, botocore's ``BotoCoreError``, gcsfs'
    and azure's own classes, ``zipfile.BadZipFile`` for a zipped store's
    damaged member), and so does what a codec raises on damaged bytes
    (numcodecs' blosc, zstd and lz4 ``RuntimeError``, gzip ``OSError`` or
    ``EOFError``, ``zlib.error``, ``LZMAError``, ``ValueError`` for a checksum
    or a chunk of the wrong size, ``OverflowError`` or ``MemoryError`` for a
    shard index pointing past any file): a list of accepted classes would let
    the next back end's escape unnamed. They are wrapped as ``SourceReadError``
    naming the array and the chunk. Errors of code (``NotImplementedError``,
    ``RecursionError``, ``TypeError``, ``AttributeError``, ``NameError``,
    ``AssertionError``, ``ImportError``) and what is not an ``Exception``
    (``KeyboardInterrupt``) propagate as they are.

    Parameters
    ----------
    exc : BaseException
        The exception a read raised.

    Returns
    -------
    bool
        True for a read failure.
    """
    return isinstance(exc, Exception) and not isinstance(exc, _CODE_ERRORS)


def check_blosc_frame(raw: Any) -> None:
    """Refuse a blosc frame shorter or longer than its header says.

    c-blosc does not check the frame length itself: a chunk cut short decodes
    without error to whatever lies past the buffer. The header's bytes 12-16
    hold the frame's total compressed size.

    Raises
    ------
    ValueError
        If the frame is shorter than a header or its length disagrees with it.
    """
    view = memoryview(raw).cast("B")
    if len(view) < 16:
        msg = f"blosc chunk of {len(view)} bytes is shorter than its 16-byte header (truncated)"
        raise ValueError(msg)
    declared = int.from_bytes(view[12:16], "little")
    if declared != len(view):
        msg = f"blosc chunk holds {len(view)} bytes but its header declares {declared} (truncated or corrupt)"
        raise ValueError(msg)


def _is_blosc(codec: Any) -> bool:
    return type(codec).__name__ in ("Blosc", "BloscCodec")


def _pread_all(fd: int, offset: int, length: int) -> bytes:
    """Up to ``length`` bytes at ``offset`` (fewer only at the end of the file; one ``pread`` caps at 2 GiB)."""
    parts = []
    while length > 0 and (data := os.pread(fd, length, offset)):
        parts.append(data)
        offset, length = offset + len(data), length - len(data)
    return parts[0] if len(parts) == 1 else b"".join(parts)


class _StaleChunkError(SourceReadError):
    """A local chunk (or shard) file was modified after its array was opened: the store changed under a reader.

    Raised on the cold path only (a chunk read from its file), by every engine, so that a patch never mixes
    chunks cached before a rewrite with chunks decoded after it. Caught as ``SourceReadError`` (the public
    class): private like the Zarr source's ``_StoreDeletedError`` and ``_StoreRewrittenError``, its message
    says all (the chunk file, its key, the array, what to do). Built from its message alone, as every lazystack error
    (unpickled, or re-raised by a DataLoader from a worker as ``type(err)(message)``); [`of()`][of] writes
    the message for a chunk file.
    """

    def __init__(
        self, message: str, *, path: str | None = None, key: str | None = None, array: str | None = None
    ) -> None:
        super().__init__(message)
        self.path, self.key, self.array = path, key, array

    @classmethod
    def of(cls, path: str, key: str, array: str | None) -> _StaleChunkError:
        """The error for the chunk (shard) file ``path`` of store key ``key`` of the array ``array`` (its URI):
        the one message of every read path (a patch, a batch, a DataLoader worker)."""
        what = f"Zarr array {array!r}" if array else "the Zarr array"
        msg = (
            f"{what} changed after it was opened: its chunk file {path!r} (key {key!r}) was modified after "
            "the opening; reopen the array (load the stack again) to read the new data"
        )
        return cls(msg, path=path, key=key, array=array)


def _check_mtime(path: str, key: str, mtime_ns: int, opened: int | None, array: str | None) -> None:
    """Raise ``_StaleChunkError`` when the chunk (shard) file ``path`` (store key ``key``), modified at ``mtime_ns``,
    changed after ``opened`` (None: not checked).

    A modification time in the future of this process's clock (a copy from a machine whose clock runs ahead, an
    archive) says nothing about a change after the opening: such files are read as they are.
    """
    if opened is not None and opened < mtime_ns <= time.time_ns():
        raise _StaleChunkError.of(path, key, array)


def _is_compressed(array: Any) -> bool:
    """Whether a zarr array's (an [`ArrayLayout`][ArrayLayout]'s) chunks go through compressors or filters."""
    if isinstance(array, ArrayLayout):
        return array.compressed
    return bool(array.compressors or array.filters)


def _format_region(region: tuple[int | slice, ...]) -> str:
    return "[" + ", ".join(f"{s.start}:{s.stop}" if isinstance(s, slice) else str(s) for s in region) + "]"


def _checked_decode(codec: Any) -> Callable[[Any], Any]:
    """``codec.decode``, refusing a blosc frame whose length disagrees with its header first."""
    if not _is_blosc(codec):
        return cast("Callable[[Any], Any]", codec.decode)

    def decode(data: Any) -> Any:
        check_blosc_frame(data)
        return codec.decode(data)

    return decode


def _unsupported(what: str) -> NotImplementedError:
    return NotImplementedError(f"direct engine: {what}")


def _bytes_config(codec: Any) -> dict[str, Any]:
    """The numcodecs configuration that decodes a zarr v3 bytes-to-bytes codec (NotImplementedError for other kinds).

    Decoding needs none of the codec's parameters (a zstd, blosc or gzip frame describes itself).
    """
    from zarr.codecs import BloscCodec, Crc32cCodec, GzipCodec, ZstdCodec

    # numcodecs' CRC32C checks and strips the same 4-byte little-endian trailer as zarr's crc32c
    for kind, codec_id in ((ZstdCodec, "zstd"), (BloscCodec, "blosc"), (GzipCodec, "gzip"), (Crc32cCodec, "crc32c")):
        if isinstance(codec, kind):
            return {"id": codec_id}
    config = getattr(codec, "codec_config", None)  # a numcodecs codec wrapped for zarr v3
    if isinstance(config, Mapping) and "id" in config:
        return dict(config)
    raise _unsupported(f"bytes-to-bytes codec {type(codec).__name__}")


def _decode_step(config: Mapping[str, Any]) -> Callable[[Any], Any]:
    """The decode of the numcodecs codec ``config`` names (a blosc frame's length checked first)."""
    import numcodecs

    try:
        codec = numcodecs.get_codec(dict(config))
    except Exception as e:  # an id numcodecs does not know here
        raise _unsupported(f"codec {dict(config)!r}: {e}") from e
    return _checked_decode(codec)


@dataclass(frozen=True, eq=False)
class ArrayLayout:
    """How a zarr array's chunks are keyed, laid out and decoded, in plain data: the direct engine's whole recipe.

    Built from an open array by [`of()`][of] (which needs zarr-python); the direct engine and tensorstore
    (``auto``) read a local array from it alone. It pickles without any zarr object, so a process that
    unpickles a reader of a local array reads its chunks without importing zarr (0.3-1 s of a spawned
    DataLoader worker's start). The codecs are numcodecs configurations, the chunk keys those of the
    array's chunk key encoding (Zarr v2: ``1.2`` or ``1/2``; v3: ``c/1/2``, ``c.1.2``, or v2-style).

    Attributes
    ----------
    shape, dtype : tuple of int, numpy.dtype
        Of the array.
    chunks : tuple of int
        The unit of a fetch: the array's chunks (inner chunks when sharded).
    shards : tuple of int or None
        Shard shape of a sharded Zarr v3 array.
    zarr_format : int
        2 or 3.
    path : str
        The array's path inside its store.
    root : str or None
        The local store's directory (None for other stores, read through the zarr array).
    key_prefix, key_separator : str
        Chunk key encoding: ``"c"`` and the separator for v3's default one, ``""`` for v2-style keys.
    decode : tuple of dict
        numcodecs configurations applied in turn to a chunk's stored bytes (the outermost codec first).
    stored_dtype : numpy.dtype
        The dtype (with byte order) of the decoded bytes.
    order : str
        ``"C"`` or ``"F"`` (Zarr v2's memory layout of a chunk).
    transpose : tuple of int or None
        A v3 ``transpose`` codec's order (composed), or None.
    shard_index : tuple of (bool, str, bool) or None
        A sharded array's index: crc32c-checked, byte order (``"<"`` / ``">"``), at the shard's start.
    fill_value : numpy.ndarray
        0-d array of ``dtype``: what a chunk that is not stored reads as.
    compressed : bool
        Whether chunks go through compressors or filters.
    """

    shape: tuple[int, ...]
    dtype: np.dtype[Any]
    chunks: tuple[int, ...]
    shards: tuple[int, ...] | None
    zarr_format: int
    path: str
    root: str | None
    key_prefix: str
    key_separator: str
    decode: tuple[dict[str, Any], ...]
    stored_dtype: np.dtype[Any]
    order: str
    transpose: tuple[int, ...] | None
    shard_index: tuple[bool, str, bool] | None
    fill_value: np.ndarray
    compressed: bool

    @classmethod
    def of(cls, array: Any) -> ArrayLayout:
        """The layout of an open ``zarr.Array`` (its public metadata, codecs and store).

        Raises
        ------
        NotImplementedError
            For arrays the direct engine cannot read (irregular grids, codecs other than transpose / bytes /
            numcodecs bytes-to-bytes codecs, nested sharding, codecs around a sharding codec, a chunk key
            encoding other than the spec's two).
        """
        from zarr.codecs import BytesCodec, Crc32cCodec, ShardingCodec
        from zarr.storage import LocalStore

        meta = array.metadata
        shape = tuple(int(n) for n in array.shape)
        dtype = np.dtype(array.dtype)
        shards: tuple[int, ...] | None = None
        shard_index: tuple[bool, str, bool] | None = None
        transpose: tuple[int, ...] | None = None
        if meta.zarr_format == 2:
            chunks = tuple(int(c) for c in meta.chunks)
            decode = tuple(dict(c.get_config()) for c in array.compressors)
            decode += tuple(dict(f.get_config()) for f in reversed(array.filters))
            stored, order = dtype, str(array.order)
            prefix, separator = "", str(meta.dimension_separator or ".")
        else:
            grid = getattr(meta, "chunk_grid", None)
            if type(grid).__name__ != "RegularChunkGrid":
                raise _unsupported(f"unsupported chunk grid {type(grid).__name__}")
            chunks = tuple(int(c) for c in grid.chunk_shape)  # type: ignore[union-attr]
            codecs = list(meta.codecs)
            if any(isinstance(c, ShardingCodec) for c in codecs):
                if len(codecs) != 1:
                    raise _unsupported("codecs around a sharding codec are not supported")
                ab = codecs[0]
                if any(isinstance(c, ShardingCodec) for c in ab.codecs):
                    raise _unsupported("nested sharding is not supported")
                inner = tuple(int(c) for c in ab.chunk_shape)
                if len(inner) != len(chunks) or any(s % c for s, c in zip(chunks, inner, strict=True)):
                    raise _unsupported(f"inner chunks {inner} do not divide shards {chunks}")
                index_codecs = list(ab.index_codecs)
                if [type(c) for c in index_codecs] not in ([BytesCodec], [BytesCodec, Crc32cCodec]):
                    raise _unsupported(f"shard index codecs {index_codecs}")
                at_start = str(getattr(ab.index_location, "value", ab.index_location)) == "start"
                shard_index = (len(index_codecs) == 2, _byte_order(index_codecs[0].endian), at_start)
                shards, chunks, codecs = chunks, inner, list(ab.codecs)
            stored, transpose, decode = _v3_codecs(codecs, dtype)
            order = "C"
            encoding = meta.chunk_key_encoding.to_dict()
            name = encoding.get("name")
            if name not in ("default", "v2"):
                raise _unsupported(f"chunk key encoding {encoding!r}")
            separator = str((encoding.get("configuration") or {}).get("separator", "/" if name == "default" else "."))
            prefix = "c" if name == "default" else ""
        fill = array.fill_value
        layout = cls(
            shape=shape,
            dtype=dtype,
            chunks=chunks,
            shards=shards,
            zarr_format=int(meta.zarr_format),
            path=str(array.path),
            root=os.fspath(array.store.root) if isinstance(array.store, LocalStore) else None,
            key_prefix=prefix,
            key_separator=separator,
            decode=decode,
            stored_dtype=stored,
            order=order,
            transpose=transpose,
            shard_index=shard_index,
            fill_value=np.asarray(0 if fill is None else fill, dtype=dtype),
            compressed=_is_compressed(array),
        )
        probe = tuple(range(1, len(shape) + 1))
        if layout.chunk_key(probe) != meta.encode_chunk_key(probe):  # an encoding read otherwise than zarr does
            raise _unsupported(f"chunk key {meta.encode_chunk_key(probe)!r} of {probe}")
        return layout

    def chunk_key(self, coords: tuple[int, ...]) -> str:
        """The key of the chunk (shard, when sharded) of grid coordinates ``coords``, relative to the array."""
        body = self.key_separator.join(str(int(i)) for i in coords)
        if self.key_prefix:
            return f"{self.key_prefix}{self.key_separator}{body}" if coords else self.key_prefix
        return body or "0"

    @property
    def store_path(self) -> str:
        """Where the array lives (its local folder, else its path in the store), for messages."""
        return os.path.join(self.root, self.path).rstrip("/") if self.root is not None else self.path


def _byte_order(endian: Any) -> Literal["<", ">"]:
    """``"<"`` or ``">"`` for a v3 ``bytes`` codec's ``endian`` (None: one-byte data, little)."""
    return "<" if endian is None or str(getattr(endian, "value", endian)) == "little" else ">"


def _v3_codecs(
    codecs: Sequence[Any], dtype: np.dtype[Any]
) -> tuple[np.dtype[Any], tuple[int, ...] | None, tuple[dict[str, Any], ...]]:
    """(stored dtype, transpose order, numcodecs decode configurations) of a zarr v3 codec list without sharding."""
    from zarr.codecs import BytesCodec, TransposeCodec

    transpose: tuple[int, ...] | None = None
    position = 0
    for codec in codecs:
        if not isinstance(codec, TransposeCodec):
            break
        order = tuple(int(i) for i in codec.order)
        transpose = order if transpose is None else tuple(transpose[i] for i in order)
        position += 1
    if position == len(codecs) or not isinstance(codecs[position], BytesCodec):
        what = type(codecs[position]).__name__ if position < len(codecs) else "none"
        raise _unsupported(f"array-to-bytes codec {what} (only 'bytes' after 'transpose')")
    endian = codecs[position].endian
    stored = np.dtype(dtype)
    if endian is not None and stored.itemsize > 1:
        stored = stored.newbyteorder(_byte_order(endian))
    return stored, transpose, tuple(_bytes_config(c) for c in reversed(codecs[position + 1 :]))


def _to_array(x: Any, dtype: np.dtype[Any]) -> np.ndarray:
    """A decoded buffer (bytes or an array) as a flat array of ``dtype``."""
    if isinstance(x, np.ndarray):
        if x.dtype == dtype:
            return x.reshape(-1)
        try:
            return np.ascontiguousarray(x).reshape(-1).view(np.uint8).view(dtype)
        except ValueError:  # a filter's output of another item size: zarr casts it
            return x.reshape(-1).astype(dtype)
    return np.frombuffer(x, dtype=np.uint8).view(dtype)


class _ChunkDecoder:
    """Decodes the stored bytes of one chunk into an array of the chunk's shape.

    Built from the array's public codecs: zarr v3 ``transpose`` + ``bytes`` + bytes-to-bytes codecs
    (decoded with numcodecs, as zarr does), or a zarr v2 compressor + filters. NotImplementedError
    for others (``auto`` then falls back).
    """

    def __init__(
        self,
        shape: tuple[int, ...],
        stored: np.dtype[Any],
        out: np.dtype[Any],
        steps: list[Callable[[Any], Any]],
        *,
        order: str = "C",
        transpose: tuple[int, ...] | None = None,
    ) -> None:
        if stored.hasobject or stored.itemsize == 0:
            raise _unsupported(f"dtype {stored}")
        self.shape = shape
        self.stored = stored
        self.out = out
        self.steps = steps
        self.order: Any = order
        self.inverse = None if transpose is None else tuple(int(i) for i in np.argsort(transpose))
        self.encoded_shape = shape if transpose is None else tuple(shape[i] for i in transpose)
        self.nbytes = math.prod(shape) * stored.itemsize

    @classmethod
    def of(cls, layout: ArrayLayout) -> _ChunkDecoder:
        """The decoder of chunks (inner chunks, when sharded) of ``layout`` (numcodecs alone)."""
        steps = [_decode_step(c) for c in layout.decode]
        return cls(
            layout.chunks, layout.stored_dtype, layout.dtype, steps, order=layout.order, transpose=layout.transpose
        )

    def __call__(self, data: Any) -> np.ndarray:
        x = data
        for fn in self.steps:
            x = fn(x)
        flat = _to_array(x, self.stored)
        if flat.nbytes != self.nbytes:
            what = f"shape {self.shape} of {self.stored}"
            msg = f"decoded chunk holds {flat.nbytes} bytes, expected {self.nbytes} for {what}"
            raise ValueError(msg)
        out = flat.reshape(self.encoded_shape, order=self.order)
        if self.inverse is not None:
            out = out.transpose(self.inverse)
        return out if out.dtype == self.out else out.astype(self.out)


class _ShardIndex:
    """A shard index as the Zarr v3 sharding spec defines it: ``chunks_per_shard + (2,)`` uint64 (offset, length)
    pairs in ``bytes`` (+ ``crc32c``) at the shard's start or end; ``2**64 - 1`` twice marks a missing chunk."""

    def __init__(self, cps: tuple[int, ...], *, crc: bool, byte_order: str, at_start: bool) -> None:
        self.crc = _decode_step({"id": "crc32c"}) if crc else None
        self.dtype = np.dtype(byte_order + "u8")
        self.cps = cps
        self.size = 16 * math.prod(cps) + (4 if self.crc is not None else 0)
        self.at_start = at_start

    def decode(self, raw: bytes) -> np.ndarray:
        """The ``(offset, length)`` table of a shard's index bytes (checksum checked)."""
        data: Any = raw if self.crc is None else self.crc(raw)
        return np.frombuffer(data, dtype=self.dtype).reshape((*self.cps, 2))

    def first_outside(self, index: np.ndarray, shard_size: int) -> tuple[tuple[int, ...], int, int] | None:
        """The first entry of ``index`` (inner chunk, offset, length) whose bytes are not inside a shard of
        ``shard_size`` bytes less its index, or None (entries marking a missing chunk are skipped)."""
        offsets, lengths = index[..., 0], index[..., 1]
        stop = max(shard_size - (0 if self.at_start else self.size), 0)
        ends = offsets + lengths  # wraps past 2**64: then smaller than the offset
        inside = (ends >= offsets) & (ends <= np.uint64(stop))
        if self.at_start:
            inside &= offsets >= np.uint64(self.size)
        inside |= (offsets & lengths) == np.uint64(_MISSING)  # both all-ones: a missing chunk
        if inside.all():
            return None
        at = tuple(int(i) for i in np.argwhere(~inside)[0])
        return at, int(offsets[at]), int(lengths[at])


@dataclass(frozen=True)
class RetryPolicy:
    """How a remote chunk read retries a failed request (bounded, with exponential backoff).

    Retried: statuses >= 500 and connections reset or closed by the server. Never retried:
    timeouts (their bound is the configured timeout), missing keys, other statuses.

    Attributes
    ----------
    retries : int
        Retries after the first attempt (0: none).
    backoff : float
        Seconds before the first retry, doubled before each next one (at most ``max_backoff``).
    max_backoff : float
        Longest wait between two attempts, in seconds.
    """

    retries: int = 3
    backoff: float = 0.25
    max_backoff: float = 4.0

    def __post_init__(self) -> None:
        if not isinstance(self.retries, int) or isinstance(self.retries, bool) or self.retries < 0:
            msg = f"retries must be an integer >= 0, got {self.retries!r}"
            raise ValueError(msg)
        for name in ("backoff", "max_backoff"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not value >= 0:
                msg = f"{name} must be a number of seconds >= 0, got {value!r}"
                raise ValueError(msg)

    def delay(self, attempt: int) -> float:
        """Seconds to wait before retry number ``attempt`` (0 for the first retry)."""
        return float(min(self.max_backoff, self.backoff * 2**attempt))


def is_retryable(exc: BaseException) -> bool:
    """Whether a failed request is worth another attempt (see [`RetryPolicy`][RetryPolicy])."""
    if isinstance(exc, TimeoutError):
        return False
    status = getattr(exc, "status", None)
    if isinstance(status, int):
        return status >= 500
    if isinstance(exc, ConnectionError):  # reset, aborted, broken pipe
        return True
    import aiohttp

    return isinstance(exc, (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError))


class DirectEngine(ZarrEngine):
    """Read encoded chunks from the store and decode them with numcodecs, synchronously.

    Uses zarr's public metadata, the store's byte-range ``get`` (``get_sync``
    where offered) and the Zarr v3 shard index layout. A local chunk is one
    ``pread`` of the file its key names (a ``LocalStore``'s documented layout):
    ``LocalStore.get_sync`` measured 40-100 µs more per chunk, a third of a
    cold 2D patch. Remote requests of a fetch go out at once on zarr's
    event-loop thread, each retried as [`RetryPolicy`][RetryPolicy] says.

    Parameters
    ----------
    array : zarr.Array or ArrayLayout
        The array, opened read-only, or the [`ArrayLayout`][ArrayLayout] of a local one (read without zarr).
    retry : RetryPolicy, optional
        Retries of remote reads (default: [`RetryPolicy`][RetryPolicy]'s defaults).

    Raises
    ------
    NotImplementedError
        For arrays it cannot read directly (irregular grids, codecs other than
        transpose / bytes / numcodecs bytes-to-bytes codecs, nested sharding,
        codecs around a sharding codec); ``auto`` then uses another engine.
    """

    name = "direct"

    def __init__(self, array: Any, retry: RetryPolicy | None = None) -> None:
        super().__init__(array)
        #: the array's chunk keys, layout and codecs: all the engine reads a local array with (no zarr object)
        self.layout = layout = array if isinstance(array, ArrayLayout) else ArrayLayout.of(array)
        self._prefix = layout.path
        self.retry = retry if retry is not None else RetryPolicy()
        self._decoder = _ChunkDecoder.of(layout)
        #: the stored size of an uncompressed chunk (read without asking its file's size first), else None
        self._raw_size = self._decoder.nbytes if not layout.decode and layout.shards is None else None
        self.chunk_shape = layout.chunks
        self._sharded = layout.shards is not None
        if layout.shards is not None and layout.shard_index is not None:
            self._cps = tuple(s // c for s, c in zip(layout.shards, layout.chunks, strict=True))
            crc, byte_order, at_start = layout.shard_index
            self._index = _ShardIndex(self._cps, crc=crc, byte_order=byte_order, at_start=at_start)
            self._indexes: OrderedDict[tuple[int, ...], np.ndarray | None] = OrderedDict()
            self._index_lock = threading.Lock()
        self._fill = layout.fill_value
        #: the local store's directory (None for other stores)
        self.local_root: str | None = layout.root
        #: local stores: a chunk file modified after this time (ns since the epoch) raises _StaleChunkError
        self.modified_after: int | None = None
        #: how that error names the array (the source's URI; default: its path)
        self.array_name: str | None = None
        self._get_sync: Any = None
        self._store: Any = None
        self._prototype: Any = None
        if self.local_root is None:
            if isinstance(array, ArrayLayout):
                raise _unsupported("a layout of an array outside a local store needs the zarr array")
            from zarr.core.buffer import default_buffer_prototype

            self._store = array.store
            self._prototype = default_buffer_prototype()
            try:
                from zarr.abc.store import SupportsGetSync
            except ImportError:  # zarr before the synchronous store protocol
                pass
            else:
                if isinstance(self._store, SupportsGetSync):  # e.g. a MemoryStore (zarr >= 3.1)
                    self._get_sync = self._store.get_sync
        # stores read through their asynchronous get, all requests of a fetch at once
        self._remote = self.local_root is None and self._get_sync is None
        if self._remote:
            close_http_session_at_exit(getattr(self._store, "fs", None))  # an HTTP store's session: closed at exit

    # -- bytes ---------------------------------------------------------------------------
    def _key(self, coords: tuple[int, ...]) -> str:
        key = self.layout.chunk_key(coords)
        return f"{self._prefix}/{key}" if self._prefix else key

    def _where(self, key: str) -> str:
        """The URL or path of store key ``key``, for messages."""
        if self.local_root is not None:
            return os.path.join(self.local_root, key)
        base = getattr(self._store, "path", None)
        return f"{str(base).rstrip('/')}/{key}" if isinstance(base, str) else f"{self._store}/{key}"

    def _array_where(self) -> str:
        """The URL or path of the array, for messages."""
        return self._where(self._prefix).rstrip("/")

    def _read_local(
        self, key: str, byte_range: tuple[int, int] | None = None, suffix: int | None = None, *, sized: bool = False
    ) -> tuple[bytes | None, int | None]:
        """The bytes of ``key`` (None: not stored) and the file's size (None unless ``sized`` or a suffix read).

        With [`modified_after`][modified_after] set, a chunk's modification time is taken from an ``fstat``
        made *after* its ``pread``: a file rewritten in place (the same inode: truncated and written again)
        after the open and before the read is refused, never decoded as if unchanged (a file renamed over the
        chunk's after the open is not seen: the open file is the old one, read whole, one version). An
        uncompressed chunk (its size known) and an inner chunk's byte range are read first and ``fstat``'ed
        after (one ``fstat``); a compressed chunk needs its size first (two: before, and after to check). A
        shard's index is sized and checked by one ``fstat`` before its read (the inner chunks read from it are
        checked after theirs). Without the check: one ``fstat`` for a whole file, none for a range.
        """
        assert self.local_root is not None
        try:
            # non-blocking: a FIFO in a chunk's place opens at once (then fails the pread or the check below)
            # instead of waiting for a writer for ever; no effect on regular files
            fd = os.open(self.local_root + "/" + key, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
            try:
                return self._read_fd(fd, key, byte_range, suffix, sized)
            finally:
                os.close(fd)
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):  # not stored: the fill value
            return None, None
        except _StaleChunkError:  # an OSError too (SourceReadError): said as it is
            raise
        except OSError as e:
            msg = f"cannot read chunk {key!r} of the zarr array at {self.local_root}: {e}"
            raise SourceReadError(msg) from e

    def _read_fd(
        self, fd: int, key: str, byte_range: tuple[int, int] | None, suffix: int | None, sized: bool
    ) -> tuple[bytes, int | None]:
        """[`_read_local()`][_read_local] on the open file ``fd``."""
        opened = self.modified_after
        if sized or suffix is not None:  # a shard's index: the size first (where the index is, its check): one fstat
            st = self._checked_stat(fd, key)
            if opened is not None and st.st_mtime_ns > opened:
                self._check_modified(key, st.st_mtime_ns)
            size = st.st_size
            if byte_range is not None:
                start, stop = byte_range
            else:
                start, stop = (max(0, size - suffix), size) if suffix is not None else (0, size)
            return _pread_all(fd, start, stop - start), size
        known = self._raw_size if byte_range is None else None
        before: os.stat_result | None = None
        if byte_range is not None:
            start, stop = byte_range
        elif known is not None:
            start, stop = 0, known
        else:  # a compressed chunk: its size first
            before = self._checked_stat(fd, key)
            start, stop = 0, before.st_size
        try:
            data = _pread_all(fd, start, stop - start)
        except OSError:
            self._checked_stat(fd, key)  # a FIFO (ESPIPE), a device: said so
            raise
        if opened is None and known is None:  # no check asked, and no guessed size to confirm: no fstat after
            return data, None
        after = self._checked_stat(fd, key)  # after the read: a file rewritten in place before it is seen
        if opened is not None and after.st_mtime_ns > opened:
            self._check_modified(key, after.st_mtime_ns)
        if known is not None and after.st_size != len(data):  # not an uncompressed chunk's size: read it whole,
            data = _pread_all(fd, 0, after.st_size)  # and the decoder says how much it holds
        elif before is not None and (after.st_size, after.st_mtime_ns) != (before.st_size, before.st_mtime_ns):
            # changed during the read (a time stamp in the future, or one the clock's resolution hides)
            raise _StaleChunkError.of(self._where(key), key, self.array_name or self._array_where())
        return data, None

    def _checked_stat(self, fd: int, key: str) -> os.stat_result:
        """``fstat`` of ``fd``, refusing a FIFO, device or socket (a folder passes: its read fails, as not stored)."""
        st = os.fstat(fd)
        if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
            raise OSError(f"{self.local_root}/{key} is not a regular file (chunks and shards are files)")
        return st

    def _check_modified(self, key: str, mtime_ns: int) -> None:
        """Raise ``SourceReadError``: the file of ``key`` is newer than the array's opening.

        A modification time in the future of this process's clock (a copy from a machine whose clock runs
        ahead, an archive) says nothing about a change after the opening: such files are read as they are.
        """
        _check_mtime(self._where(key), key, mtime_ns, self.modified_after, self.array_name or self._array_where())

    def check_file_unmodified(self, coords: tuple[int, ...], mtime_ns: int) -> None:
        """For a file read by another engine (tensorstore, in ``auto``), from the ``stat`` that engine made: raise
        ``SourceReadError`` when the local chunk (shard) file of grid coordinates ``coords`` was modified, at
        ``mtime_ns``, after the array was opened ([`modified_after`][modified_after])."""
        opened = self.modified_after
        if opened is not None and mtime_ns > opened:
            self._check_modified(self._key(coords), mtime_ns)

    @staticmethod
    def _byte_request(rng: tuple[int, int] | None, suffix: int | None) -> Any:
        from zarr.abc.store import RangeByteRequest, SuffixByteRequest

        if rng is not None:
            return RangeByteRequest(rng[0], rng[1])
        return None if suffix is None else SuffixByteRequest(suffix)

    def _read_sync(self, key: str, rng: tuple[int, int] | None, suffix: int | None) -> bytes | None:
        buf = self._get_sync(key, prototype=self._prototype, byte_range=self._byte_request(rng, suffix))
        return None if buf is None else buf.to_bytes()

    async def _get(self, key: str, rng: tuple[int, int] | None, suffix: int | None) -> bytes | None:
        """One store ``get``, retried as [`retry`][retry] says; failures name the key's URL."""
        byte_range = self._byte_request(rng, suffix)
        attempt = 0
        while True:
            try:
                buf = await self._store.get(key, prototype=self._prototype, byte_range=byte_range)
            except Exception as e:
                if attempt < self.retry.retries and is_retryable(e):
                    await asyncio.sleep(self.retry.delay(attempt))
                    attempt += 1
                    continue
                tries = f" (after {attempt + 1} attempts)" if attempt else ""
                detail = str(e) or ("timed out" if isinstance(e, TimeoutError) else "")
                msg = f"cannot read {self._where(key)!r}{tries}: {type(e).__name__}: {detail}"
                raise SourceReadError(msg) from e
            return None if buf is None else buf.to_bytes()

    def _read_remote(self, requests: list[_Request]) -> list[bytes | None]:
        """The requests through the store's ``get``, all at once, on zarr's event-loop thread."""
        from zarr.core.sync import sync

        async def gather() -> list[bytes | None]:
            return list(await asyncio.gather(*(self._get(*r) for r in requests)))

        return sync(gather())

    def _read_many(self, requests: list[_Request]) -> list[bytes | None]:
        if self.local_root is not None:
            return [self._read_local(*r)[0] for r in requests]
        if self._get_sync is not None:
            return [self._read_sync(*r) for r in requests]
        return self._read_remote(requests)

    # -- decoding ------------------------------------------------------------------------
    def _decode(self, data: bytes | None, idx: ChunkIndex) -> np.ndarray:
        if data is None:
            # a chunk that is not stored: its fill value, as a read-only broadcast view (no memory for
            # the declared chunk, however large; the chunk cache does not keep views bigger than itself)
            return np.broadcast_to(self._fill, self._decoder.shape)
        try:
            return self._decoder(data)
        except Exception as e:
            msg = (
                f"cannot decode chunk {idx} of the zarr array {self._array_where()!r} "
                f"(stored in {self._where(self._key_of(idx))!r}): {e}"
            )
            raise SourceReadError(msg) from e

    def _key_of(self, idx: ChunkIndex) -> str:
        if not self._sharded:
            return self._key(idx)
        return self._key(tuple(i // c for i, c in zip(idx, self._cps, strict=True)))

    def _check_index(self, shard: tuple[int, ...], index: np.ndarray, size: int | None) -> None:
        """Raise ``SourceReadError`` when an entry of a local shard's index points outside the shard of ``size``
        bytes (a corrupt index would read past the file, or allocate the terabytes it claims). Remote shards
        are not sized (``size`` None: a range past their end fails when read)."""
        if size is None:
            return
        key = self._key(shard)
        bad = self._index.first_outside(index, size)
        if bad is not None:
            at, offset, length = bad
            where = "after" if self._index.at_start else "before"
            msg = (
                f"corrupt index of shard {self._where(key)!r} of the zarr array {self._array_where()!r}: the entry "
                f"of inner chunk {at} (offset {offset}, nbytes {length}) lies outside the shard's {size} bytes "
                f"(its chunks lie {where} its {self._index.size}-byte index)"
            )
            raise SourceReadError(msg)

    def _locate(self, idx: ChunkIndex, indexes: Mapping[tuple[int, ...], np.ndarray | None]) -> _Request | None:
        """Where chunk ``idx``'s bytes are: ``(key, byte range, None)``, or None when it is missing."""
        if not self._sharded:
            return (self._key(idx), None, None)
        cps = self._cps
        shard = tuple(i // c for i, c in zip(idx, cps, strict=True))
        index = indexes[shard]
        if index is None:
            return None
        start, length = (int(v) for v in index[tuple(i % c for i, c in zip(idx, cps, strict=True))])
        if start == _MISSING and length == _MISSING:
            return None
        return (self._key(shard), (start, start + length), None)

    def shard_indexes(self, indices: Sequence[ChunkIndex]) -> dict[tuple[int, ...], np.ndarray | None]:
        """The checked indexes of the shards holding the inner chunks ``indices`` (read once, then cached).

        Parameters
        ----------
        indices : sequence of tuple of int
            Inner-chunk grid coordinates.

        Returns
        -------
        dict
            Shard grid coordinates to the shard's ``(offset, length)`` table (``chunks_per_shard + (2,)``
            uint64), None for a shard that is not stored; empty for an array that is not sharded.

        Raises
        ------
        SourceReadError
            If a shard is shorter than its index, its index does not decode, or an entry of a local
            shard's index points outside the shard.
        """
        if not self._sharded:
            return {}
        shards = dict.fromkeys(tuple(i // c for i, c in zip(idx, self._cps, strict=True)) for idx in indices)
        out: dict[tuple[int, ...], np.ndarray | None] = {}
        todo: list[tuple[int, ...]] = []
        with self._index_lock:
            for s in shards:
                if s in self._indexes:
                    self._indexes.move_to_end(s)
                    out[s] = self._indexes[s]
                else:
                    todo.append(s)
        if todo:
            layout = self._index
            rng, suffix = ((0, layout.size), None) if layout.at_start else (None, layout.size)
            reqs: list[_Request] = [(self._key(s), rng, suffix) for s in todo]
            if self.local_root is not None:  # with each shard's size, for the index check (one fstat)
                got = [self._read_local(*r, sized=True) for r in reqs]
            else:
                got = [(data, None) for data in self._read_many(reqs)]
            for s, (data, size) in zip(todo, got, strict=True):
                if data is None:  # a missing shard: every inner chunk reads as the fill value
                    index = None
                elif len(data) < layout.size:
                    msg = (
                        f"shard {self._where(self._key(s))!r} of the zarr array {self._array_where()!r} "
                        f"is shorter than its index ({len(data)} < {layout.size} bytes): truncated or corrupt"
                    )
                    raise SourceReadError(msg)
                else:
                    try:
                        index = layout.decode(data)
                    except Exception as e:
                        msg = (
                            f"cannot decode the index of shard {self._where(self._key(s))!r} "
                            f"of the zarr array {self._array_where()!r}: {e}"
                        )
                        raise SourceReadError(msg) from e
                    self._check_index(s, index, size)
                out[s] = index
            with self._index_lock:
                for s in todo:
                    self._indexes[s] = out[s]
                while len(self._indexes) > 4096:
                    self._indexes.popitem(last=False)
        return out

    def raw_chunk(self, idx: ChunkIndex) -> bytes | None:
        """The stored (encoded) bytes of chunk ``idx`` (an inner chunk when sharded); None when missing."""
        where = self._locate(idx, self.shard_indexes([idx]))
        return None if where is None else self._read_many([where])[0]

    def fetch_one(self, idx: ChunkIndex) -> np.ndarray:
        """Read and decode one chunk (a local store: one file read, no thread hand-off)."""
        if self._remote:
            return self.fetch([idx])[idx]
        return self._decode(self.raw_chunk(idx), idx)

    def fetch(self, indices: Sequence[ChunkIndex]) -> dict[ChunkIndex, np.ndarray]:
        """Read and decode chunks: local stores chunk by chunk, remote ones in one concurrent request batch."""
        indices = list(indices)
        if not self._remote:
            return fetch_concurrently(indices, self.fetch_one)
        indexes = self.shard_indexes(indices)
        wheres = [self._locate(idx, indexes) for idx in indices]
        reqs = [w for w in wheres if w is not None]
        got = iter(self._read_remote(reqs) if reqs else [])
        raw = {idx: (None if w is None else next(got)) for idx, w in zip(indices, wheres, strict=True)}
        return fetch_concurrently(indices, lambda idx: self._decode(raw[idx], idx))


class _ChunkTooLargeError(SourceFormatError, NotImplementedError):
    """An array whose chunks tensorstore is not given (see ``TENSORSTORE_MAX_CHUNK_BYTES``): ``auto`` reads it
    with another engine (a NotImplementedError), the ``tensorstore`` engine asked for refuses it."""


def _check_chunk_bytes(array: Any, chunk_shape: tuple[int, ...], dtype: np.dtype[Any]) -> None:
    """Raise ``_ChunkTooLargeError`` when a chunk of ``array`` decodes to more than ``TENSORSTORE_MAX_CHUNK_BYTES``
    (or a shard's index holds more), naming the array and its chunk shape."""
    nbytes = math.prod(chunk_shape) * dtype.itemsize
    shards = getattr(array, "shards", None)
    index_bytes = 16 * math.prod(s // max(c, 1) for s, c in zip(shards, chunk_shape, strict=True)) if shards else 0
    if max(nbytes, index_bytes) > TENSORSTORE_MAX_CHUNK_BYTES:
        what = f"chunk shape {chunk_shape} of {dtype}: {nbytes} bytes decoded"
        if shards:
            what += f" (shard shape {tuple(shards)}: an index of {index_bytes} bytes)"
        msg = (
            f"zarr array {str(array.store_path)!r}: {what}; the tensorstore engine accepts at most "
            f"{TENSORSTORE_MAX_CHUNK_BYTES} bytes (tensorstore aborts the process when it cannot allocate one): "
            "use the 'direct' or 'zarr' engine"
        )
        raise _ChunkTooLargeError(msg)


def _local_root(array: Any) -> str | None:
    """The local store directory of a zarr array or an [`ArrayLayout`][ArrayLayout] (None for other stores)."""
    if isinstance(array, ArrayLayout):
        return array.root
    from zarr.storage import LocalStore

    return os.fspath(array.store.root) if isinstance(array.store, LocalStore) else None


def _is_http_store(store: Any) -> bool:
    """Whether ``store`` is an fsspec store over HTTP(S)."""
    from zarr.storage import FsspecStore

    return isinstance(store, FsspecStore) and str(store.path).startswith(("http://", "https://"))


class TensorstoreEngine(ZarrEngine):
    """Decode chunks with tensorstore, opened read-only on the same store.

    Parameters
    ----------
    array : zarr.Array or ArrayLayout
        The array, opened read-only, or the [`ArrayLayout`][ArrayLayout] of a local one.

    Raises
    ------
    MissingDependencyError
        If tensorstore is not installed, or fails to import.
    NotImplementedError
        If the store is neither local nor HTTP(S), or tensorstore rejects the array.
    SourceFormatError
        (a ``NotImplementedError`` too) If a chunk decodes to more than
        [`TENSORSTORE_MAX_CHUNK_BYTES`][TENSORSTORE_MAX_CHUNK_BYTES], or a shard index holds more:
        tensorstore would abort the process where its allocation fails.
    """

    name = "tensorstore"

    def __init__(self, array: Any) -> None:
        super().__init__(array)
        self.check_usable(array, self.chunk_shape, self.dtype)
        try:
            import tensorstore as ts
        except ImportError as e:  # installed (check_usable found it) but broken, e.g. built for another glibc
            msg = f"the tensorstore engine needs tensorstore, which fails to import ({e}): reinstall it"
            raise MissingDependencyError(msg) from e
        local_root, prefix = _local_root(array), str(array.path)
        #: the chunk key of grid coordinates (shard coordinates, when sharded), relative to the array
        self._chunk_key: Callable[[tuple[int, ...]], str] = (
            array.chunk_key if isinstance(array, ArrayLayout) else array.metadata.encode_chunk_key
        )
        if local_root is not None:
            path = Path(local_root) / prefix if prefix else Path(local_root)
            kvstore: dict[str, Any] = {"driver": "file", "path": str(path) + "/"}
        elif _is_http_store(array.store):
            base = str(array.store.path).rstrip("/")
            kvstore = {"driver": "http", "base_url": f"{base}/{prefix}" if prefix else base}
        else:
            msg = f"tensorstore engine: store {type(array.store).__name__} is not supported (local or http only)"
            raise NotImplementedError(msg)
        #: where the array lives, for error messages
        self.location = kvstore.get("path") or kvstore.get("base_url") or str(kvstore)
        zarr_format = array.zarr_format if isinstance(array, ArrayLayout) else array.metadata.zarr_format
        driver = "zarr3" if zarr_format == 3 else "zarr"
        spec = {"driver": driver, "kvstore": kvstore}
        context = ts.Context({"cache_pool": {"total_bytes_limit": 0}})
        global _TS_STARTED_IN
        if _TS_STARTED_IN is None:
            _TS_STARTED_IN = current_pid()
        try:
            handle = ts.open(spec, read=True, context=context).result()
        except Exception as e:
            msg = f"tensorstore cannot open {kvstore}: {e}"
            raise NotImplementedError(msg) from e
        if tuple(handle.shape) != self.shape or np.dtype(handle.dtype.numpy_dtype) != self.dtype.newbyteorder("="):
            msg = f"tensorstore sees shape {handle.shape} / {handle.dtype}, zarr {self.shape} / {self.dtype}"
            raise NotImplementedError(msg)
        self._ts = handle
        self._ts_float32: Any = None  # a float32 view of it, made on first use (RegionReads)
        # local files are checked before tensorstore opens them: it would wait on a FIFO for ever
        self._local_dir = str(path) if local_root is not None else None
        shards = getattr(array, "shards", None)
        self._chunks_per_file = (
            None if not shards else tuple(s // c for s, c in zip(shards, self.chunk_shape, strict=True))
        )
        #: called with the grid coordinates (shard coordinates, when sharded) and ``st_mtime_ns`` of each local
        #: chunk file a read has just read, from a ``stat`` made *after* the read, so that a file replaced while
        #: tensorstore read it is seen (``auto``: the direct engine's
        #: [`DirectEngine.check_file_unmodified()`][DirectEngine.check_file_unmodified]); may raise
        self.check_file: Callable[[tuple[int, ...], int], None] | None = None
        self._paths: dict[tuple[int, ...], str] = {}  # local file paths by grid coordinates (see _stats)

    @staticmethod
    def check_usable(array: Any, chunk_shape: tuple[int, ...], dtype: np.dtype[Any]) -> None:
        """Refuse what tensorstore cannot read, without importing it (importing it takes 0.3-1 s).

        Raises
        ------
        MissingDependencyError
            If tensorstore is not installed.
        NotImplementedError
            If this process was forked after its parent started tensorstore, or the dtype is not numeric.
        SourceFormatError
            (a ``NotImplementedError`` too) If a chunk or a shard index is too large for tensorstore.
        """
        _check_chunk_bytes(array, chunk_shape, dtype)
        if _tensorstore_forked():
            msg = "tensorstore engine: unusable in a process forked after its parent started tensorstore"
            raise NotImplementedError(msg)
        if importlib.util.find_spec("tensorstore") is None:
            msg = "the tensorstore engine needs tensorstore: pip install 'lazystack[tensorstore]'"
            raise MissingDependencyError(msg)
        if dtype.kind not in "biufc":
            msg = f"tensorstore engine: dtype {dtype} is not supported"
            raise NotImplementedError(msg)

    def _stats(self, indices: Iterable[ChunkIndex]) -> Iterator[tuple[tuple[int, ...], str, os.stat_result]]:
        """Grid coordinates, path and ``stat`` of each local chunk (shard, when sharded) file of ``indices`` that
        exists, once each; nothing for other stores. A file not stored (the fill value) or unreadable is skipped:
        tensorstore's read says so."""
        if self._local_dir is None:
            return
        per = self._chunks_per_file
        files = dict.fromkeys(
            idx if per is None else tuple(i // c for i, c in zip(idx, per, strict=True)) for idx in indices
        )
        paths = self._paths
        for coords in files:
            path = paths.get(coords)
            if path is None:  # each file's path worked out once (a read stats its files before and after it)
                if len(paths) >= 65536:
                    paths.clear()
                path = paths[coords] = os.path.join(self._local_dir, self._chunk_key(coords))
            try:
                st = os.stat(path)
            except OSError:
                continue
            yield coords, path, st

    def _check_files(self, indices: Iterable[ChunkIndex]) -> None:
        """Before a read: raise ``SourceReadError`` when the local file of a chunk (its shard, when sharded) of
        ``indices`` exists and is not a regular file (a FIFO, device or socket swapped in after opening: tensorstore
        would wait on it)."""
        for _, path, st in self._stats(indices):
            if not stat.S_ISREG(st.st_mode):
                msg = (
                    f"cannot read the zarr array at {self.location!r}: {path!r} is not a regular file "
                    "(chunks and shards are files; a FIFO, device or socket is refused)"
                )
                raise SourceReadError(msg)

    def _check_read_files(self, indices: Iterable[ChunkIndex]) -> None:
        """After a read: [`check_file`][check_file] each local file of ``indices`` that exists. The ``stat`` must
        follow the read: one made before it misses a file replaced (a new one renamed over it, as zarr-python
        writes) between it and tensorstore's open."""
        check = self.check_file
        if check is None:
            if self.modified_after is None:
                return
            check = self.check_file_unmodified
        for coords, _, st in self._stats(indices):
            check(coords, st.st_mtime_ns)

    def check_file_unmodified(self, coords: tuple[int, ...], mtime_ns: int) -> None:
        """Raise ``SourceReadError`` when the local chunk (shard) file of grid coordinates ``coords``, modified at
        ``mtime_ns``, changed after the array was opened ([`modified_after`][modified_after]); the check of the
        engine asked for by name (``auto`` uses its direct engine's)."""
        opened = self.modified_after
        if self._local_dir is None or opened is None or mtime_ns <= opened:
            return
        key = self._chunk_key(coords)
        path = os.path.join(self._local_dir, key)
        _check_mtime(path, key, mtime_ns, self.modified_after, self.array_name or self._local_dir.rstrip("/"))

    @staticmethod
    def _region_indices(region: tuple[slice, ...], chunk_shape: tuple[int, ...]) -> Iterator[ChunkIndex]:
        return itertools.product(
            *(range(r.start // c, -(-r.stop // c)) for r, c in zip(region, chunk_shape, strict=True))
        )

    def fetch(self, indices: Sequence[ChunkIndex]) -> dict[ChunkIndex, np.ndarray]:
        """Issue one tensorstore read per chunk, all at once, and wait for them."""
        self._check_files(indices)
        futures = [self._ts[self.chunk_region(idx)].read() for idx in indices]
        try:
            out = {idx: np.asarray(f.result()) for idx, f in zip(indices, futures, strict=True)}
        except Exception as e:
            msg = f"cannot read chunks {list(indices)[:4]}... of the zarr array at {self.location!r} (tensorstore): {e}"
            raise SourceReadError(msg) from e
        self._check_read_files(indices)
        return out

    def read_region(self, region: tuple[slice, ...]) -> np.ndarray:
        """One tensorstore read of the region."""
        return self.take(region, self.start_read(region))

    def start_read(self, region: tuple[slice, ...], *, as_float32: bool = False) -> Any:
        """Start a read of ``region`` in tensorstore's threads (``as_float32``: converted there, exact or not:
        the caller's call); its future, for [`take()`][take]."""
        self._check_files(self._region_indices(region, self.chunk_shape))
        if as_float32:
            view = self._ts_float32
            if view is None:
                import tensorstore as ts

                view = self._ts_float32 = ts.cast(self._ts, "float32")
            return view[region].read()
        return self._ts[region].read()

    def take(self, region: tuple[slice, ...], future: Any) -> np.ndarray:
        """The result of [`start_read()`][start_read] (waits for it).

        Raises
        ------
        SourceReadError
            If the read failed.
        """
        try:
            out = np.asarray(future.result())
        except Exception as e:
            msg = (
                f"cannot read region {_format_region(region)} of the zarr array at {self.location!r} (tensorstore): {e}"
            )
            raise SourceReadError(msg) from e
        self._check_read_files(self._region_indices(region, self.chunk_shape))
        return out


def _note_tensorstore_before_fork() -> None:
    # tensorstore imported here may run threads started by anyone (the caller's own reads, not only lazystack's,
    # which open it on first use): tensorstore aborts a forked child that uses it, so the child reads directly
    global _TS_STARTED_IN
    if _TS_STARTED_IN is None and "tensorstore" in sys.modules:
        _TS_STARTED_IN = current_pid()


at_fork(before=_note_tensorstore_before_fork)


_FLOAT32 = np.dtype(np.float32)


def _no_check() -> None:
    """The engine reader's ``after_read`` when none is given."""


class RegionReads:
    """Region reads started one at a time in tensorstore's threads, their results taken in order.

    Made by [`ZarrArrayReader.region_reads()`][ZarrArrayReader.region_reads]: tensorstore decodes
    while batched extraction ([`lazystack.ops.batch`][lazystack.ops.batch]) plans and cuts patches.

    Parameters
    ----------
    engine : TensorstoreEngine
        The engine reading the regions.
    dtype : numpy.dtype
        The array's dtype (results not converted come in it).
    float32 : bool
        Whether a region started ``as_float32`` is converted in tensorstore's threads: the caller's
        decision ([`float32_is_exact()`][lazystack.io.reader.float32_is_exact]), not the engine's.
    after_read : callable, optional
        Called once every result has been taken (the reader's ``after_read``); may raise.
    """

    def __init__(
        self,
        engine: TensorstoreEngine,
        dtype: np.dtype[Any],
        *,
        float32: bool,
        after_read: Callable[[], None] | None = None,
    ) -> None:
        self._engine = engine
        self._dtype = dtype
        self._float32 = float32
        self._after_read = after_read
        self._started: list[tuple[tuple[slice, ...], Any, bool]] = []

    def start(self, region: tuple[slice, ...], *, as_float32: bool = False) -> None:
        """Start reading ``region`` (normalised, not empty); ``as_float32``: converted in tensorstore's threads
        when the maker allowed it (``float32``), else in the array's dtype."""
        exact = as_float32 and self._float32
        self._started.append((region, self._engine.start_read(region, as_float32=exact), exact))

    def results(self) -> Iterator[np.ndarray]:
        """The started regions' data as new arrays, in the order started (a failed read raises SourceReadError)."""
        for region, future, exact in self._started:
            out = self._engine.take(region, future)
            yield out if exact else out.astype(self._dtype, copy=False)
        if self._after_read is not None:
            self._after_read()


class AutoEngine(ZarrEngine):
    """``auto`` for a local compressed array both engines read: direct for little work, tensorstore for much.

    The direct engine has the least overhead per call; tensorstore decodes chunks in parallel in
    its C++ threads, at the cost of a hand-off per read. A fetch of a compressed array goes to
    tensorstore with at least ``min_tensorstore`` chunks ([`TENSORSTORE_MIN_CHUNKS`][TENSORSTORE_MIN_CHUNKS])
    of at least [`TENSORSTORE_MIN_CHUNK_BYTES`][TENSORSTORE_MIN_CHUNK_BYTES] each, or of
    ``min_tensorstore_bytes`` ([`TENSORSTORE_MIN_BYTES`][TENSORSTORE_MIN_BYTES]) in all. Measured on
    2 cores (``benchmarks/``): a 3D patch's six 256 KiB zstd chunks 1.6x faster in tensorstore than
    in one Python thread; a 2D patch's four 128 KiB chunks, and raw chunks, faster directly.

    Tensorstore is imported and opened on the first fetch that goes to it
    ([`tensorstore`][tensorstore]): a DataLoader worker that reads batches with the chunk cache on never
    needs it, and a spawned one saves its import (0.3-1.4 s on 2 cores) and about 25 MiB of RSS
    (``benchmarks/results/loader-s12-lazy-tensorstore.txt``). An array tensorstore refuses only when
    it opens it (a filter it lacks) is then read directly, and the engine's [`name`][name] becomes
    ``"direct"``. An array it would never send to tensorstore (uncompressed, remote, refused by
    [`TensorstoreEngine.check_usable()`][TensorstoreEngine.check_usable]) raises ``NotImplementedError``:
    ``make_engine`` gives it the direct engine, whose name says what reads it.
    """

    name = "auto"

    def __init__(
        self,
        array: Any,
        *,
        min_tensorstore: int | None = None,
        min_tensorstore_bytes: int | None = None,
        retry: RetryPolicy | None = None,
    ) -> None:
        super().__init__(array)
        if not _is_compressed(array):
            # Raw chunks are a memory copy: the direct engine in the calling thread measured fastest, and the
            # hybrid would never use tensorstore (an engine named "auto" that always reads directly: "direct")
            msg = "auto engine: tensorstore is only mixed in for compressed arrays"
            raise NotImplementedError(msg)
        self.direct = DirectEngine(array, retry=retry)
        if self.direct.local_root is None:
            # Remote stores: direct already fetches concurrently, and tensorstore's HTTP reads measured slower.
            msg = "auto engine: tensorstore is only mixed in for local stores"
            raise NotImplementedError(msg)
        # tensorstore is opened on the first read that goes to it (importing it costs a spawned worker 0.3-1 s,
        # and a batch with the chunk cache on never uses it); what would refuse it is checked now
        TensorstoreEngine.check_usable(array, self.chunk_shape, self.dtype)
        self._tensorstore: TensorstoreEngine | None = None
        self._tensorstore_refused = False
        self._tensorstore_lock = threading.Lock()
        self.chunk_shape = self.direct.chunk_shape
        self.min_tensorstore = TENSORSTORE_MIN_CHUNKS if min_tensorstore is None else min_tensorstore
        self.min_tensorstore_bytes = TENSORSTORE_MIN_BYTES if min_tensorstore_bytes is None else min_tensorstore_bytes
        self._chunk_nbytes = math.prod(self.chunk_shape) * self.dtype.itemsize

    def prefers_tensorstore(self, n_chunks: int) -> bool:
        """Whether a fetch of ``n_chunks`` whole chunks goes to tensorstore."""
        if n_chunks < self.min_tensorstore:
            return False
        return (
            self._chunk_nbytes >= TENSORSTORE_MIN_CHUNK_BYTES
            or n_chunks * self._chunk_nbytes >= self.min_tensorstore_bytes
        )

    def prefers_tensorstore_for_batches(self) -> bool:
        """Whether a batch with the cache off reads its patches from tensorstore (else it decodes directly).

        A batch decodes on all the cores either way, so only chunk size counts: compressed chunks of
        at least [`TENSORSTORE_MIN_CHUNK_BYTES`][TENSORSTORE_MIN_CHUNK_BYTES]. Measured on 2 cores (64
        patches): 256 KiB zstd chunks (3D) 5-10 % faster in tensorstore, 128 KiB ones (2D) directly.
        """
        return self._chunk_nbytes >= TENSORSTORE_MIN_CHUNK_BYTES

    @property
    def tensorstore(self) -> TensorstoreEngine | None:
        """The tensorstore engine, opened on first use; None if tensorstore refused the array (or failed to import)."""
        if self._tensorstore is None and not self._tensorstore_refused:
            with self._tensorstore_lock:
                if self._tensorstore is None and not self._tensorstore_refused:
                    try:
                        engine = TensorstoreEngine(self.array)
                        # each file it read is stat'ed after the read: changed since the opening?
                        engine.check_file = self.direct.check_file_unmodified
                        self._tensorstore = engine
                    except (NotImplementedError, MissingDependencyError):  # e.g. its open refused it: read directly
                        self._tensorstore_refused = True
                        self.name = self.direct.name  # what reads every chunk from now on
        return self._tensorstore

    def fetch(self, indices: Sequence[ChunkIndex]) -> dict[ChunkIndex, np.ndarray]:
        """Tensorstore for enough work (see [`prefers_tensorstore()`][prefers_tensorstore]), else direct."""
        tensorstore = self.tensorstore if self.prefers_tensorstore(len(indices)) else None
        if tensorstore is not None:  # it checks each file's type before the read, its modification time after
            return tensorstore.fetch(indices)
        return self.direct.fetch(indices)

    def fetch_one(self, idx: ChunkIndex) -> np.ndarray:
        """One chunk: direct."""
        return self.direct.fetch_one(idx)


_ENGINE_CLASSES: dict[str, type[ZarrEngine]] = {
    "direct": DirectEngine,
    "tensorstore": TensorstoreEngine,
    "zarr": ZarrPythonEngine,
}


def available_engines(array: Any) -> list[str]:
    """Names of the engines that can read ``array`` (in ``auto``'s order of preference)."""
    names = []
    for name in _AUTO_ORDER:
        try:
            _ENGINE_CLASSES[name](array)
        except (NotImplementedError, MissingDependencyError):
            continue
        names.append(name)
    return names


def _construct(name: str, array: Any, retry: RetryPolicy | None) -> ZarrEngine:
    if name in ("direct", "hybrid"):
        return (DirectEngine if name == "direct" else AutoEngine)(array, retry=retry)
    return _ENGINE_CLASSES[name](array)


def make_engine(array: Any, name: str | None = None, *, retry: RetryPolicy | None = None) -> ZarrEngine:
    """Build the engine ``name`` (default: the setting in force) for ``array``.

    Parameters
    ----------
    array : zarr.Array or ArrayLayout
        The array, opened read-only, or the [`ArrayLayout`][ArrayLayout] of a local one (read by the
        ``direct`` and ``tensorstore`` engines; the ``zarr`` engine refuses it).
    name : str, optional
        ``"auto"``, ``"direct"``, ``"tensorstore"`` or ``"zarr"``. An engine named here that cannot
        read the array raises; the process-wide setting (``name=None``) is a preference: arrays its
        engine cannot read get ``"auto"``'s choice.
    retry : RetryPolicy, optional
        Retries of the direct engine's remote reads (default: [`RetryPolicy`][RetryPolicy]'s).

    Returns
    -------
    ZarrEngine

    Raises
    ------
    ValueError
        If ``name`` is unknown.
    MissingDependencyError
        If ``"tensorstore"`` is asked for and not installed.
    NotImplementedError
        If the engine asked for cannot read this array (``auto`` never raises this for a ``zarr.Array``; for an
        [`ArrayLayout`][ArrayLayout] neither the direct engine nor tensorstore can read, it does).
    """
    choice = _check_engine(name) if name is not None else get_zarr_engine()
    if choice == "tensorstore" and _tensorstore_forked():
        return DirectEngine(array, retry=retry)  # see _TS_STARTED_IN: same results, no hang
    if choice != "auto":
        try:
            return _construct(choice, array, retry)
        except (NotImplementedError, MissingDependencyError):
            if name is not None:
                raise
            # the process-wide setting is a preference: arrays it cannot read use "auto"
    for candidate in ("hybrid", *_AUTO_ORDER[:-1]):
        try:
            return _construct(candidate, array, retry)
        except (NotImplementedError, MissingDependencyError):
            continue
    return ZarrPythonEngine(array)  # "zarr" never refuses


_MEMORY_STORES: dict[int, tuple[Any, int]] = {}
_MEMORY_SERIAL = itertools.count()
_MEMORY_LOCK = threading.Lock()


def _memory_serial(store: Any) -> int:
    """A number naming one in-memory store object for as long as it lives (never reused after it is gone)."""
    with _MEMORY_LOCK:
        entry = _MEMORY_STORES.get(id(store))
        if entry is not None and entry[0]() is store:
            return entry[1]
        serial = next(_MEMORY_SERIAL)
        try:
            ref = weakref.ref(store)
        except TypeError:  # pragma: no cover - a store without weak references: a fresh name each time
            return serial
        _MEMORY_STORES[id(store)] = (ref, serial)
        for key in [k for k, (r, _) in _MEMORY_STORES.items() if r() is None]:
            del _MEMORY_STORES[key]
        return serial


def _array_token(array: Any) -> str:
    if isinstance(array, ArrayLayout):  # a local array
        meta = os.path.join(array.store_path, "zarr.json" if array.zarr_format == 3 else ".zarray")
        try:
            return f"zarr:file://{array.store_path}@{os.stat(meta).st_mtime_ns}"
        except OSError:
            return f"zarr:file://{array.store_path}"
    store = array.store
    path = str(array.path)
    base = f"zarr:{store}/{path}"
    root = getattr(store, "root", None)
    if root is not None:
        meta_file = "zarr.json" if array.metadata.zarr_format == 3 else ".zarray"
        try:
            st = os.stat(Path(root) / path / meta_file)
            base += f"@{st.st_mtime_ns}"
        except OSError:
            pass
    elif type(store).__name__ == "MemoryStore":
        base += f"@{_memory_serial(store)}"
    return base


class ZarrArrayReader(ChunkedReader):
    """A chunk reader over a ``zarr.Array`` (v2 or v3, sharded or not, local or remote).

    Parameters
    ----------
    array : zarr.Array or ArrayLayout
        The array, opened read-only (``zarr.open_array(..., mode="r")``), or the [`ArrayLayout`][ArrayLayout]
        of a local one: read by the ``auto``, ``direct`` or ``tensorstore`` engine without importing zarr.
    engine : str, optional
        ``"auto"``, ``"direct"``, ``"tensorstore"`` or ``"zarr"``; default:
        the setting in force ([`set_zarr_engine()`][set_zarr_engine], ``LAZYSTACK_ZARR_ENGINE``)
        when the reader is first used in a process.
    token : str, optional
        Names the data (default: store URL, array path and the metadata
        file's modification time).
    retry : RetryPolicy, optional
        Retries of remote chunk reads (default: [`RetryPolicy`][RetryPolicy]'s).
    modified_after : int, optional
        For a local store: the time (``time.time_ns()``) the array was opened. A chunk file found
        modified after it when a chunk is read from the store (never on a cache hit) raises
        ``SourceReadError`` naming the file and the array, whatever the engine (from one ``stat`` of each
        file read, made after the read: a rewrite during the read is seen). Default: no check.
    name : str, optional
        How that error names the array (e.g. the source's URI). Default: its path.
    after_read : callable, optional
        Called after every read of the store (cache misses, direct region reads, a batch's region
        reads once all taken), never on a cache hit; may raise (e.g. the store changed). Default: none.

    Notes
    -----
    Pickles as the zarr array (store and metadata, no handle) or the layout; the engine is rebuilt lazily in each
    process, so a reader used after ``fork`` never shares tensorstore or event-loop state.

    Examples
    --------
    >>> import numpy as np, zarr
    >>> z = zarr.create_array(store={}, shape=(100, 100), chunks=(32, 32), dtype="uint16")
    >>> z[:] = np.arange(10000, dtype="uint16").reshape(100, 100)
    >>> reader = ZarrArrayReader(z, engine="direct")
    >>> int(reader[40:42, 50:52].sum())
    16402
    """

    def __init__(
        self,
        array: Any,
        *,
        engine: str | None = None,
        token: str | None = None,
        retry: RetryPolicy | None = None,
        modified_after: int | None = None,
        name: str | None = None,
        after_read: Callable[[], None] | None = None,
    ) -> None:
        if engine is not None:
            _check_engine(engine)
        self._array = array
        self._retry = retry
        self._modified_after = modified_after
        self._name = name
        self._after_read = after_read if after_read is not None else _no_check
        self._engine_name = engine
        self._engine: ZarrEngine | None = None
        self._engine_pid = -1
        self._engine_lock = threading.Lock()
        unit = tuple(int(c) for c in array.chunks)  # inner chunks when sharded
        # fixed for the array's lifetime: worked out once, not on every read
        if isinstance(array, ArrayLayout):  # no zarr object (see ArrayLayout): read by the direct engine, tensorstore
            capabilities = ReaderCapabilities(remote=array.root is None, compressed=array.compressed)
        else:
            from zarr.storage import LocalStore, MemoryStore

            capabilities = ReaderCapabilities(
                remote=not isinstance(array.store, (LocalStore, MemoryStore)), compressed=_is_compressed(array)
            )
        if capabilities.remote:  # whichever engine reads it: an HTTP store's session is closed at exit
            close_http_session_at_exit(getattr(array.store, "fs", None))
        super().__init__(array.shape, array.dtype, unit, token or _array_token(array), capabilities=capabilities)
        self._float32_exact = float32_is_exact(self.dtype)  # the contract's float32 policy, for this dtype

    @property
    def array(self) -> Any:
        """The wrapped ``zarr.Array`` (or [`ArrayLayout`][ArrayLayout])."""
        return self._array

    @property
    def engine(self) -> ZarrEngine:
        """This process's engine (built on first use)."""
        pid = current_pid()
        engine = self._engine
        if engine is None or self._engine_pid != pid:
            with self._engine_lock:
                if self._engine is None or self._engine_pid != pid:
                    built = make_engine(self._array, self._engine_name, retry=self._retry)
                    # every engine checks the local files it reads (auto: its direct engine, for tensorstore too)
                    for target in (built, built.direct) if isinstance(built, AutoEngine) else (built,):
                        target.modified_after = self._modified_after
                        target.array_name = self._name
                    self._engine = built
                    self._engine_pid = pid
                engine = self._engine
        return engine

    def parallel_fetch(self, n_chunks: int) -> bool:
        """Whether a batch fetches its ``n_chunks`` chunks in one call, decoded in tensorstore's threads.

        True for the tensorstore engine only. With ``auto``, a batch with the chunk cache on is
        decoded directly on the cores, each chunk cast straight into its patches and kept only if
        read again soon, whatever the chunk size. Measured with ``benchmarks/bench_loader.py
        --baseline`` (batches of 32 random patches, the default cache, interleaved, quiet 2-core
        machine): 2-D 128 KiB zstd chunks 1.04x (0 workers) and 1.07x (2 fork workers) the
        patches/s of tensorstore rounds; 3-D 256 KiB chunks 1.16x and 1.19x (0.98x and 1.06x the
        decode floor), with a peak RSS of 464 MiB against 850 (0 workers) and 246 against 445 per
        worker (``benchmarks/results/loader-s11-direct3d.txt``).
        """
        return isinstance(self.engine, TensorstoreEngine)

    @property
    def engine_name(self) -> str:
        """Name of the engine that reads the chunks (builds it if needed).

        ``"auto"`` only for the hybrid of the direct engine and tensorstore, i.e. a local compressed array
        tensorstore is not known to refuse; ``"direct"`` for an array ``auto`` reads directly (uncompressed,
        remote, refused by tensorstore, also when tensorstore refused it on opening it).
        """
        return self.engine.name

    def fetch_chunks(self, indices: Sequence[ChunkIndex]) -> Mapping[ChunkIndex, np.ndarray]:
        """Decode whole chunks with this process's engine (then ``after_read``)."""
        out = self.engine.fetch(indices)
        self._after_read()
        return out

    def fetch_chunk(self, idx: ChunkIndex) -> np.ndarray:
        """Decode one whole chunk with this process's engine (then ``after_read``)."""
        out = self.engine.fetch_one(idx)
        self._after_read()
        return out

    def _region_engine(self, region: tuple[slice, ...] | None) -> TensorstoreEngine | None:
        """The tensorstore engine that reads ``region`` (None: a batch's regions) whole, or None: chunk by chunk.

        Only with the chunk cache off. The ``auto`` engine judges one region by the chunks it touches
        ([`AutoEngine.prefers_tensorstore()`][AutoEngine.prefers_tensorstore]), a batch by chunk size alone
        ([`AutoEngine.prefers_tensorstore_for_batches()`][AutoEngine.prefers_tensorstore_for_batches]).
        """
        cache = self.cache
        if cache is not None and cache.enabled:
            return None
        engine = self.engine
        if isinstance(engine, TensorstoreEngine):
            return engine
        if isinstance(engine, AutoEngine) and (
            engine.prefers_tensorstore_for_batches()
            if region is None
            else engine.prefers_tensorstore(self.chunk_grid.n_touched(region))
        ):
            return engine.tensorstore
        return None

    def read_direct(self, region: tuple[slice, ...], *, as_float32: bool = False) -> np.ndarray | None:
        """``region`` read whole by tensorstore, bypassing the chunk cache; None when it is read chunk by chunk.

        A result that is not None *is* the information that a direct read
        happened: the caller decides what follows (the Zarr source checks
        that its store is unchanged).

        Parameters
        ----------
        region : tuple of slice
            Step-1 slices inside the bounds, one per axis.
        as_float32 : bool
            Return a new ``float32`` array converted in tensorstore's threads
            (whether that is exact is the caller's decision:
            [`lazystack.io.reader.float32_is_exact`][lazystack.io.reader.float32_is_exact]); else the array's dtype.

        Returns
        -------
        numpy.ndarray or None
        """
        ts = self._region_engine(region)
        if ts is None:
            return None
        if 0 in (s.stop - s.start for s in region):
            return np.empty(tuple(s.stop - s.start for s in region), dtype=_FLOAT32 if as_float32 else self.dtype)
        out = ts.take(region, ts.start_read(region, as_float32=as_float32))
        self._after_read()
        return out if as_float32 else out.astype(self.dtype, copy=False)

    def read(self, region: tuple[slice, ...]) -> np.ndarray:
        """Read a region: [`read_direct()`][read_direct] when it reads, else through the chunk cache."""
        out = self.read_direct(region)
        return ChunkedReader.read(self, region) if out is None else out

    def read_float32(self, region: tuple[slice, ...]) -> np.ndarray | None:
        """``region`` as a new ``float32`` array converted by tensorstore's threads, or None.

        Only when [`read_direct()`][read_direct] reads the region and the reader contract allows the
        conversion ([`lazystack.io.reader.float32_is_exact`][lazystack.io.reader.float32_is_exact]); None
        otherwise: the caller reads with [`read()`][read] and casts. Measured on 2 cores (``benchmarks/``):
        a cold 16x64x64 uint16 patch over six zstd chunks 2-5 % faster.

        Parameters
        ----------
        region : tuple of slice
            Step-1 slices inside the bounds, one per axis.

        Returns
        -------
        numpy.ndarray or None
        """
        if not self._float32_exact or 0 in (s.stop - s.start for s in region):
            return None
        return self.read_direct(region, as_float32=True)

    def region_reads(self) -> RegionReads | None:
        """Region reads straight from tensorstore for a batch (the chunk cache off), or None.

        Batched extraction ([`lazystack.ops.batch`][lazystack.ops.batch]) uses them: tensorstore
        decodes in its own threads while the caller plans and cuts patches; otherwise a batch decodes
        each chunk once, directly, on all the cores. Regions asked for as ``float32`` come converted when
        the reader contract allows it ([`lazystack.io.reader.float32_is_exact`][lazystack.io.reader.float32_is_exact]).

        Returns
        -------
        RegionReads or None
            None when the regions are to be read chunk by chunk instead.
        """
        ts = self._region_engine(None)
        if ts is None:
            return None
        return RegionReads(ts, self.dtype, float32=self._float32_exact, after_read=self._after_read)

    def close(self) -> None:
        """Drop this process's engine (rebuilt on next use)."""
        with self._engine_lock:
            self._engine = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_engine": None, "_engine_pid": -1, "_engine_lock": None}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._engine_lock = threading.Lock()
