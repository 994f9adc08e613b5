"""A per-process, byte-bounded LRU cache of decoded chunks, shared by all stacks.

Random patches that revisit a chunk (neighbouring patches, several epochs
over a dataset that fits in the cache) then cost a memory copy instead of a
read and a decode. The cache holds *decoded* chunks as read-only numpy
arrays, keyed by ``(reader token, chunk index)``; the token names the data
(source, array path, modification time ...) so stacks of the same source
share entries.

Size
    ``LAZYSTACK_CHUNK_CACHE_BYTES`` (read when the module is imported) or
    [`set_chunk_cache_size()`][set_chunk_cache_size] at run time. The default is
    [`DEFAULT_CHUNK_CACHE_BYTES`][DEFAULT_CHUNK_CACHE_BYTES] (256 MiB). ``0`` disables the cache.
    Sizes accept a plain number of bytes or a unit: ``"512MiB"``, ``"2G"``,
    ``"100 kB"``.
Threads
    Every operation holds one lock; the arrays handed out are read-only,
    so readers never see a chunk change under them.
Processes
    A forked child starts with an empty cache of the same size (nothing of
    the parent's is shared or double-counted); a spawned process reads the
    environment variable afresh.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Hashable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
from dask.utils import parse_bytes

from .process import at_fork

__all__ = [
    "DEFAULT_CHUNK_CACHE_BYTES",
    "ENV_CHUNK_CACHE_BYTES",
    "CacheStats",
    "ChunkCache",
    "chunk_cache_size",
    "get_chunk_cache",
    "parse_size",
    "set_chunk_cache_size",
]

#: Default size of the per-process chunk cache, in bytes (256 MiB).
DEFAULT_CHUNK_CACHE_BYTES = 256 * 2**20

#: Environment variable setting the size of the per-process chunk cache.
ENV_CHUNK_CACHE_BYTES = "LAZYSTACK_CHUNK_CACHE_BYTES"


def parse_size(value: int | str, what: str = "cache size") -> int:
    """Parse a size in bytes: an int, or a string with an optional unit
    ([`dask.utils.parse_bytes()`][dask.utils.parse_bytes]).

    Parameters
    ----------
    value : int or str
        ``268435456``, ``"256MiB"``, ``"1.5 GB"``, ``"4k"``, ``"0"`` ...
    what : str
        What the size is for, named in the error message.

    Returns
    -------
    int
        The size in bytes (non-negative).

    Raises
    ------
    ValueError
        If ``value`` is negative or not a size (the message names it and
        what is accepted).

    Examples
    --------
    >>> parse_size("256MiB")
    268435456
    >>> parse_size(1000)
    1000
    """
    n: int | None = None
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        n = int(value)
    elif isinstance(value, str) and any(c.isdigit() for c in value):  # dask reads a bare unit ("MiB") as 1 of it
        try:
            n = int(parse_bytes(value))
        except ValueError:
            n = None
    if n is None:
        msg = (
            f"invalid {what} {value!r}: expected a number of bytes (int) or a string with an optional unit "
            "(kB, MB, GB, KiB, MiB, GiB ...), e.g. '256MiB'"
        )
        raise ValueError(msg)
    if n < 0:
        msg = f"invalid {what} {value!r}: must be >= 0 (0 disables the cache)"
        raise ValueError(msg)
    return n


@dataclass(frozen=True)
class CacheStats:
    """A snapshot of a [`ChunkCache`][ChunkCache]'s counters.

    Attributes
    ----------
    hits, misses : int
        Lookups that found / did not find their chunk.
    evictions : int
        Chunks dropped to respect the byte bound.
    entries : int
        Chunks held now.
    nbytes : int
        Bytes held now.
    max_bytes : int
        The bound.
    """

    hits: int
    misses: int
    evictions: int
    entries: int
    nbytes: int
    max_bytes: int


class ChunkCache:
    """A thread-safe LRU cache of decoded chunks bounded in bytes.

    Parameters
    ----------
    max_bytes : int or str
        Bound on the bytes of the arrays held (``0`` disables the cache: ``put``
        keeps nothing). Strings take a unit (``"256MiB"``).

    Notes
    -----
    Arrays are stored read-only (a read-only view of the array given to
    [`put()`][put], no copy): a caller that needs to write must copy. A chunk
    larger than ``max_bytes`` is not stored.

    Examples
    --------
    >>> import numpy as np
    >>> cache = ChunkCache(1024)
    >>> cache.put(("token", (0, 0)), np.zeros(64, dtype=np.uint8))
    >>> cache.get(("token", (0, 0))).shape
    (64,)
    >>> cache.nbytes
    64
    """

    def __init__(self, max_bytes: int | str = DEFAULT_CHUNK_CACHE_BYTES) -> None:
        self._max_bytes = parse_size(max_bytes)
        self._lock = threading.Lock()
        self._data: OrderedDict[Hashable, np.ndarray] = OrderedDict()
        self._nbytes = 0
        self._hits = 0
        self._misses = 0
        self._evictions = 0

    # -- state ------------------------------------------------------------------
    @property
    def max_bytes(self) -> int:
        """The bound, in bytes (0: disabled)."""
        return self._max_bytes

    @property
    def enabled(self) -> bool:
        """Whether the cache keeps anything (``max_bytes > 0``)."""
        return self._max_bytes > 0

    @property
    def nbytes(self) -> int:
        """Bytes of the arrays held now."""
        return self._nbytes

    @property
    def hits(self) -> int:
        """Number of lookups that found their chunk."""
        return self._hits

    @property
    def misses(self) -> int:
        """Number of lookups that did not find their chunk."""
        return self._misses

    def stats(self) -> CacheStats:
        """Return a consistent snapshot of the counters."""
        with self._lock:
            return CacheStats(self._hits, self._misses, self._evictions, len(self._data), self._nbytes, self._max_bytes)

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, key: object) -> bool:
        return key in self._data

    def __repr__(self) -> str:
        s = self.stats()
        return (
            f"<ChunkCache {s.nbytes}/{s.max_bytes} bytes, {s.entries} chunks, "
            f"{s.hits} hits, {s.misses} misses, {s.evictions} evictions>"
        )

    # -- operations ------------------------------------------------------------------
    def get(self, key: Hashable, *, count_miss: bool = True) -> np.ndarray | None:
        """Return the chunk stored under ``key`` (read-only) or None, and count a hit or a miss.

        ``count_miss=False`` leaves a miss uncounted (for a look-up that is retried).
        """
        with self._lock:
            array = self._data.get(key)
            if array is None:
                self._misses += count_miss
                return None
            self._data.move_to_end(key)
            self._hits += 1
            return array

    def get_many(self, keys: list[Hashable]) -> list[np.ndarray | None]:
        """[`get()`][get] for several keys under one lock acquisition."""
        out: list[np.ndarray | None] = []
        with self._lock:
            for key in keys:
                array = self._data.get(key)
                if array is None:
                    self._misses += 1
                else:
                    self._data.move_to_end(key)
                    self._hits += 1
                out.append(array)
        return out

    def get_all(self, keys: list[Hashable]) -> list[np.ndarray] | None:
        """Every chunk of ``keys`` (counted as hits), or None when any is missing (nothing counted or reordered).

        For a read served from memory alone: a caller that gets None reads
        through [`get_many()`][get_many] instead, which counts the misses.
        """
        with self._lock:
            data = self._data
            found = [data.get(key) for key in keys]
            if any(array is None for array in found):
                return None
            for key in keys:
                data.move_to_end(key)
            self._hits += len(keys)
        return found  # type: ignore[return-value]  # no None left

    def put(self, key: Hashable, array: Any) -> None:
        """Store ``array`` under ``key`` (as a read-only view), evicting least recently used chunks.

        Parameters
        ----------
        key : hashable
            ``(reader token, chunk index tuple)`` by convention.
        array : numpy.ndarray
            The decoded chunk. Not copied: do not modify it afterwards.
        """
        if self._max_bytes <= 0:
            return
        view = np.asarray(array).view()
        view.flags.writeable = False
        size = int(view.nbytes)
        with self._lock:
            if size > self._max_bytes:
                return
            old = self._data.pop(key, None)
            if old is not None:
                self._nbytes -= int(old.nbytes)
            self._data[key] = view
            self._nbytes += size
            self._evict_locked()

    def _evict_locked(self) -> None:
        while self._nbytes > self._max_bytes and self._data:
            _, dropped = self._data.popitem(last=False)
            self._nbytes -= int(dropped.nbytes)
            self._evictions += 1

    def clear(self) -> None:
        """Drop every chunk and reset the counters."""
        with self._lock:
            self._data.clear()
            self._nbytes = 0
            self._hits = self._misses = self._evictions = 0

    def resize(self, max_bytes: int | str) -> None:
        """Change the bound (evicting as needed); ``0`` disables and empties the cache."""
        n = parse_size(max_bytes)
        with self._lock:
            self._max_bytes = n
            self._evict_locked()

    def _reset_after_fork(self) -> None:
        # The parent's lock may have been held by another thread at fork time.
        self._lock = threading.Lock()
        self._data = OrderedDict()
        self._nbytes = 0
        self._hits = self._misses = self._evictions = 0


def _size_from_env() -> int:
    raw = os.environ.get(ENV_CHUNK_CACHE_BYTES)
    if raw is None or raw.strip() == "":
        return DEFAULT_CHUNK_CACHE_BYTES
    return parse_size(raw, f"{ENV_CHUNK_CACHE_BYTES}={raw!r}: cache size")


_CACHE = ChunkCache(_size_from_env())


def get_chunk_cache() -> ChunkCache:
    """Return this process's chunk cache (shared by every stack and reader).

    Returns
    -------
    ChunkCache
    """
    return _CACHE


def set_chunk_cache_size(max_bytes: int | str) -> int:
    """Set the bound of this process's chunk cache; return the previous bound.

    Parameters
    ----------
    max_bytes : int or str
        Bytes (``0`` disables the cache), or a string with a unit such as
        ``"1GiB"``. Overrides ``LAZYSTACK_CHUNK_CACHE_BYTES``.

    Returns
    -------
    int
        The previous bound in bytes (handy to restore it).

    Examples
    --------
    >>> previous = set_chunk_cache_size("64MiB")
    >>> get_chunk_cache().max_bytes
    67108864
    >>> _ = set_chunk_cache_size(previous)
    """
    previous = _CACHE.max_bytes
    _CACHE.resize(max_bytes)
    return previous


@contextmanager
def chunk_cache_size(max_bytes: int | str) -> Iterator[ChunkCache]:
    """Give this process's chunk cache the bound ``max_bytes`` inside a ``with`` block.

    The cache is emptied on entering and on leaving the block, and its
    previous bound comes back on leaving (also on an exception): timing cold
    reads (``chunk_cache_size(0)``), or a pass over data that should not
    evict what the rest of the program cached.

    Parameters
    ----------
    max_bytes : int or str
        As for [`set_chunk_cache_size()`][set_chunk_cache_size] (``0`` disables the cache).

    Yields
    ------
    ChunkCache
        This process's cache.

    Examples
    --------
    >>> before = get_chunk_cache().max_bytes
    >>> with chunk_cache_size(0) as cache:
    ...     cache.enabled
    False
    >>> get_chunk_cache().max_bytes == before
    True
    """
    previous = set_chunk_cache_size(max_bytes)
    _CACHE.clear()
    try:
        yield _CACHE
    finally:
        _CACHE.clear()
        set_chunk_cache_size(previous)


def _after_fork_in_child() -> None:
    _CACHE._reset_after_fork()


at_fork(after_in_child=_after_fork_in_child)
