"""Custom-file back end: files of any type, read by a user-supplied function.

``read_func(path, **read_kwargs)`` (a [`ReadFunc`][ReadFunc]) returns an
array-like for one file; ``path`` is a `pathlib.Path`, as CAREamics'
``ReadFunc`` receives it (CAREamics' own readers use ``path.suffix``). What it returns decides how lazy the stack is:

* **a lazy array-like** (``np.memmap``, ``np.load(..., mmap_mode="r")``,
  ``zarr.Array``, ``h5py.Dataset``, a dask array, any object with ``shape``,
  ``dtype`` and ``__getitem__`` that is not a plain ``numpy.ndarray``): the
  stack stays fully lazy; a patch reads only its region through the object.
  The object is kept per process in lazystack's bounded LRU of open files
  ([`lazystack.io.process.max_open_files()`][lazystack.io.process.max_open_files]); an
  evicted object is dropped (an ``h5py`` file closed) and ``read_func`` is
  called again when the file is next read.
* **a plain** ``numpy.ndarray`` (the file was read whole): ``read_func`` is
  called once when the stack is created, to learn shape and dtype. Whole-file
  results are kept in a bounded, per-process LRU cache, so random patches
  from one file do not re-read it and memory stays bounded across thousands
  of files. The bound is [`DEFAULT_CACHE_BYTES`][DEFAULT_CACHE_BYTES] (1 GiB), set by the
  environment variable ``LAZYSTACK_CUSTOM_CACHE_BYTES`` or
  [`set_cache_bytes()`][set_cache_bytes]; ``0`` disables the cache (each patch calls
  ``read_func``). An array larger than the bound is never cached. A forked
  child starts with an empty cache. The dask array of such a stack has one
  chunk per file.

Pickling and processes: a stack pickles as ``(path, read_func, read_kwargs)``
and calls ``read_func`` again in the process that unpickles it, so
``read_func`` must be picklable (a module-level function or a
``functools.partial`` of one, not a lambda or a local function) for process
pools, spawn DataLoader workers and dask clusters. Thread or fork workers have
no such limit.

A file replaced or rewritten after the stack was created (its inode, size or
modification time changed) is not read as if it were the same file: the next
call of ``read_func`` on it (in a dask worker, a process that unpickled the
stack, after the cached result was evicted) raises
[`SourceReadError`][lazystack.SourceReadError] ("changed since the stack was
opened"); load it again to read the new file. A result already held by this
process (a cached whole-file array, a live memory map) is not re-checked.

Errors: a ``read_func`` that raises is reported as
[`SourceReadError`][lazystack.SourceReadError] (or [`SourceNotFoundError`][lazystack.SourceNotFoundError]
for a ``FileNotFoundError``) naming the file and the function, the original
exception chained; a result that is not array-like is an
[`UnsupportedSourceError`][lazystack.UnsupportedSourceError].
"""

from __future__ import annotations

import contextlib
import hashlib
import mmap
import os
import stat
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple, Protocol, runtime_checkable

import numpy as np

from ..core.errors import SourceNotFoundError, SourceReadError, UnsupportedSourceError
from ..io.cache import ChunkCache, parse_size
from ..io.handles import check_mapped_size, check_regular_file, check_stamp, file_stamp, mapping_of, system_path
from ..io.process import FileManager, at_fork
from ..io.reader import OpenedSource, Reader, check_region, is_array_like, read_numpy, reader_chunks

__all__ = [
    "CACHE_ENV_VAR",
    "DEFAULT_CACHE_BYTES",
    "CustomReader",
    "ReadFunc",
    "cache_info",
    "clear_cache",
    "open_custom",
    "set_cache_bytes",
]

FORMAT = "custom"
#: Default bound of the per-process whole-file cache, in bytes (1 GiB).
DEFAULT_CACHE_BYTES = 1 << 30
#: Environment variable overriding [`DEFAULT_CACHE_BYTES`][DEFAULT_CACHE_BYTES] (bytes, or a size like ``512MiB``).
CACHE_ENV_VAR = "LAZYSTACK_CUSTOM_CACHE_BYTES"


@runtime_checkable
class ReadFunc(Protocol):
    """Reads one file: ``read_func(path, **read_kwargs) -> array-like``.

    ``path`` is a `pathlib.Path` (CAREamics' ``ReadFunc`` contract).
    The result has ``shape``, ``dtype`` and ``__getitem__`` (numpy, dask,
    zarr arrays, ``np.memmap``, ``h5py.Dataset`` ...) with one dimension per
    letter of the loader's axes, and the same shape and dtype every time it is
    called for the same file. To use stacks in other processes the function
    must be picklable (module level).

    Examples
    --------
    >>> import numpy as np
    >>> from pathlib import Path
    >>> def read_npy(path: Path, *, mmap: bool = True) -> np.ndarray:
    ...     return np.load(path, mmap_mode="r" if mmap else None)
    """

    def __call__(self, path: Path, /, **kwargs: Any) -> Any:
        """Return the array-like stored in ``path``."""
        ...


# -- the bounded whole-file cache ------------------------------------------------------------------
_ENV = os.environ.get(CACHE_ENV_VAR, "").strip()
#: The whole-file arrays: the same bounded, thread-safe LRU as the chunk cache (a separate instance and bound).
_CACHE = ChunkCache(parse_size(_ENV, f"{CACHE_ENV_VAR}={_ENV!r}: cache size") if _ENV else DEFAULT_CACHE_BYTES)
at_fork(after_in_child=_CACHE._reset_after_fork)


def set_cache_bytes(max_bytes: int | str) -> None:
    """Set the bound of this process's whole-file cache (evicting as needed).

    Parameters
    ----------
    max_bytes : int or str
        Bound in bytes (or a size like ``"512MiB"``); ``0`` disables the cache.
    """
    _CACHE.resize(parse_size(max_bytes, "whole-file cache size"))


def clear_cache() -> None:
    """Empty this process's whole-file cache."""
    _CACHE.clear()


def cache_info() -> dict[str, int]:
    """Bound, current size, entries, hits and misses of this process's whole-file cache."""
    stats = _CACHE.stats()
    return {k: getattr(stats, k) for k in ("max_bytes", "nbytes", "entries", "hits", "misses")}


# -- lazy results: kept per process as an "open file" ---------------------------------------------------
class _Recipe(NamedTuple):
    """What one call of ``read_func`` needs (the lazy handle's opener argument).

    ``stamp``: the file's [`file_stamp()`][lazystack.io.handles.file_stamp] when the stack was created (None
    for a folder, a path that is no file, or the first call): a later call on a file replaced or rewritten
    since raises instead of reading other data than the stack was opened on.
    """

    path: str
    read_func: Any
    read_kwargs: dict[str, Any]
    stamp: tuple[int, int, int] | None = None


def _func_name(func: Any) -> str:
    module = getattr(func, "__module__", None) or ""
    name = getattr(func, "__qualname__", None) or getattr(func, "__name__", None) or type(func).__name__
    return f"{module}.{name}" if module else str(name)


def _call(recipe: _Recipe) -> Any:
    """Call ``read_func`` and check its result is array-like."""
    where = f"read_func {_func_name(recipe.read_func)} on {recipe.path!r}"
    if os.path.exists(recipe.path) and not os.path.isdir(recipe.path):  # a folder may be a custom format's file
        st = check_regular_file(recipe.path, "file", "a regular file (or a folder) for read_func")  # not a FIFO
        # a file replaced or rewritten since the stack was created: a worker, a fresh process or an evicted
        # cache entry would read the new file while the creating process still serves the old one
        check_stamp(f"file {recipe.path!r} (read by read_func {_func_name(recipe.read_func)})", recipe.stamp, st)
    try:
        result = recipe.read_func(Path(recipe.path), **recipe.read_kwargs)
    except FileNotFoundError as exc:
        msg = f"file not found: {recipe.path!r} ({where} raised {type(exc).__name__}: {exc})"
        raise SourceNotFoundError(msg) from exc
    except Exception as exc:
        msg = f"{where} raised {type(exc).__name__}: {exc}"
        raise SourceReadError(msg) from exc
    if not is_array_like(result):
        msg = (
            f"{where} returned a {type(result).__name__}, not an array-like; accepted: an object with shape, "
            "dtype and __getitem__ (numpy/dask/zarr arrays, np.memmap, h5py.Dataset)"
        )
        raise UnsupportedSourceError(msg)
    return result


class _LazyHandle:
    """A lazy array-like returned by ``read_func``, held like an open file."""

    def __init__(self, recipe: _Recipe, array: Any = None) -> None:
        self.array = _call(recipe) if array is None else array

    def close(self) -> None:
        array, self.array = self.array, None
        if type(array).__module__.startswith("h5py"):
            with contextlib.suppress(Exception):
                array.file.close()


def _check_memmap(array: np.memmap[Any, Any], path: str) -> None:
    """Raise SourceReadError when the file under ``array`` was truncated (reading it would SIGBUS)."""
    raw = mapping_of(array)
    if raw is None:
        return
    offset = int(getattr(array, "offset", 0) or 0)
    end = offset - offset % mmap.ALLOCATIONGRANULARITY + len(raw)  # the file bytes the mapping covers
    check_mapped_size(raw, end, f"file {path!r} (memory-mapped by read_func)")


class CustomReader(Reader):
    """Chunk reader over one file read by a [`ReadFunc`][ReadFunc] (see the module docs).

    Made by [`open_custom()`][open_custom]; ``eager``: ``read_func`` reads the file
    whole (a plain ndarray, kept in the whole-file cache).
    """

    shape: tuple[int, ...]
    dtype: np.dtype[Any]
    chunks: Any
    token: str

    def __init__(
        self,
        path: str,
        read_func: Any,
        read_kwargs: dict[str, Any],
        *,
        shape: tuple[int, ...],
        dtype: str,
        chunks: tuple[tuple[int, ...], ...],
        eager: bool,
        token: str,
        stamp: tuple[int, int, int] | None = None,
    ) -> None:
        self.path = path
        self.read_func = read_func
        self.read_kwargs = dict(read_kwargs)
        self.shape = tuple(shape)
        self.dtype = np.dtype(dtype)
        self.chunks = chunks
        self.eager = eager
        self.token = token
        self.stamp = None if stamp is None else (int(stamp[0]), int(stamp[1]), int(stamp[2]))
        self._recipe = _Recipe(path, read_func, self.read_kwargs, self.stamp)
        self._manager = None if eager else FileManager(_LazyHandle, self._recipe)

    def __reduce__(self) -> tuple[Any, ...]:
        recipe = {"shape": self.shape, "dtype": self.dtype.str, "chunks": self.chunks, "eager": self.eager}
        reader = partial(CustomReader, **recipe, token=self.token, stamp=self.stamp)
        return (reader, (self.path, self.read_func, self.read_kwargs))

    def __repr__(self) -> str:
        how = "whole-file, cached" if self.eager else "lazy"
        return (
            f"CustomReader({self.path!r}, read_func={_func_name(self.read_func)}, shape={self.shape}, "
            f"dtype={self.dtype}, {how})"
        )

    def _seed(self, result: Any) -> None:
        """Keep the result of the call made at creation (no second call for the first read)."""
        if self.eager:
            _CACHE.put(self.token, np.asarray(result))
        else:
            assert self._manager is not None
            self._manager.seed(_LazyHandle(self._recipe, result))

    def _check(self, result: Any) -> None:
        shape, dtype = tuple(int(n) for n in result.shape), np.dtype(result.dtype)
        if shape != self.shape or dtype != self.dtype:
            msg = (
                f"read_func {_func_name(self.read_func)} on {self.path!r} returned shape {shape} dtype {dtype}, "
                f"but {self.shape} {self.dtype} when the stack was created (has the file changed?)"
            )
            raise SourceReadError(msg)

    def _whole(self) -> np.ndarray:
        data = _CACHE.get(self.token)
        if data is None:
            result = _call(self._recipe)
            self._check(result)
            data = np.asarray(result)
            _CACHE.put(self.token, data)
        return data

    def __getitem__(self, key: Any) -> Any:
        """Read a region (ints and step-1 slices) as a numpy array."""
        if self.eager:
            return np.array(self._whole()[key])
        assert self._manager is not None
        with self._manager.acquire_context() as handle:
            array = handle.array
            if array is None:  # closed between acquiring and reading: read through a fresh call
                array = _call(self._recipe)
            if isinstance(array, np.memmap):
                _check_memmap(array, self.path)
            key = key if isinstance(key, tuple) else (key,)
            return check_region(read_numpy(array, key), key, self.shape, self.dtype, lambda: self._what(array))

    def _what(self, array: Any) -> str:
        return f"read_func {_func_name(self.read_func)}'s {type(array).__name__} for {self.path!r}"

    def close(self) -> None:
        """Release this process's lazy array (an ``h5py`` file is closed); the whole-file cache is shared."""
        if self._manager is not None:
            self._manager.close()


def _regular_file_stamp(path: str) -> tuple[int, int, int] | None:
    """The file's stamp, or None for a folder (a custom format's "file") or a path that is no local file."""
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return None
    return file_stamp(st) if stat.S_ISREG(st.st_mode) else None


def _token(path: str, read_func: Any, read_kwargs: dict[str, Any]) -> str:
    try:
        st = os.stat(path)
        stamp = f"{st.st_mtime_ns}|{st.st_size}"
    except OSError:
        stamp = "-"
    name = _func_name(read_func)
    if "<" in name or not hasattr(read_func, "__qualname__"):
        # lambdas, local functions, partials, callable objects: their name does not identify them
        name = f"{name}@{id(read_func):x}|{read_func!r}"
    text = f"{os.path.realpath(path)}|{stamp}|{name}|{sorted(read_kwargs.items())!r}"
    return f"custom-{hashlib.sha1(os.fsencode(text)).hexdigest()[:20]}"


def open_custom(path: str, axes: str, *, read_func: ReadFunc, read_kwargs: dict[str, Any]) -> OpenedSource:
    """Open one file with ``read_func`` (called once now, to learn shape and dtype).

    Raises
    ------
    UnsupportedSourceError
        If ``read_func`` is not callable or returns something that is not
        array-like.
    SourceNotFoundError
        If ``read_func`` raises ``FileNotFoundError``.
    SourceReadError
        If ``read_func`` raises anything else.
    ShapeMismatchError
        If ``axes`` does not have the rank of the array.
    """
    from ..core.axes import check_rank

    if not callable(read_func):
        msg = f"read_func must be callable as read_func(path, **read_kwargs), got {type(read_func).__name__}"
        raise UnsupportedSourceError(msg)
    if not isinstance(read_kwargs, dict):
        msg = f"read_kwargs must be a dict of keyword arguments, got {type(read_kwargs).__name__}"
        raise UnsupportedSourceError(msg)
    path = os.fspath(path)
    recipe = _Recipe(path, read_func, dict(read_kwargs))
    before = _regular_file_stamp(path)
    result = _call(recipe)
    stamp = before if before is not None and before == _regular_file_stamp(path) else None  # not mid-rewrite
    shape = tuple(int(n) for n in result.shape)
    check_rank(axes, shape, f"the array read_func {_func_name(read_func)} returned for {path!r}")
    dtype = np.dtype(result.dtype)
    if dtype.hasobject:
        msg = f"read_func {_func_name(read_func)} on {path!r} returned dtype {dtype}; accepted: numeric dtypes"
        raise UnsupportedSourceError(msg)
    eager = isinstance(result, np.ndarray) and not isinstance(result, np.memmap)  # the file was read whole
    chunks = tuple((n,) for n in shape) if eager else reader_chunks(result)
    reader = CustomReader(
        # a worker in another working folder reads the same file (``link/..`` as the system resolves it)
        system_path(path if os.path.isabs(path) else os.path.join(os.getcwd(), path)) if os.path.exists(path) else path,
        read_func,
        dict(read_kwargs),
        shape=shape,
        dtype=dtype.str,
        chunks=chunks,
        eager=eager,
        token=_token(path, read_func, dict(read_kwargs)),
        stamp=stamp,
    )
    reader._seed(result)
    return OpenedSource(
        reader=reader, source=path, format=FORMAT, axes=axes, attrs={"read_func": _func_name(read_func)}
    )
