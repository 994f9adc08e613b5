"""A per-process, byte-bounded, scan-resistant cache of decoded chunks, shared by all stacks.

Random patches that revisit a chunk (neighbouring patches, several epochs
over a dataset that fits in the cache) then cost a memory copy instead of a
read and a decode. The cache holds *decoded* chunks as read-only numpy
arrays, keyed by ``(reader token, chunk index)``; the token names the data
(source, array path, modification time ...) so stacks of the same source
share entries.

Admission (2Q, the per-process cache's policy)
    A chunk read for the first time goes to a small *probation* FIFO
    ([`PROBATION_FRACTION`][PROBATION_FRACTION] of the bound). A chunk looked up again while
    on probation, or read again soon after it left probation (its key is
    still in a *ghost* list of recently dropped keys, which holds no data),
    moves to the *main* LRU part, which takes the rest of the bound. So
    uniform random patches over data much larger than the cache (each chunk
    rarely re-read) hold the probation's bytes plus the chunks actually read
    again, instead of filling the whole bound at once, page by page, for a
    hit rate of about ``bound / data size``. Re-used chunks (the same or overlapping patches,
    tiles, neighbours, epochs over data that fits) still reach the main part
    and hit; the main part grows only as fast as chunks are re-read. A
    reader that uses a chunk at once and drops it (a batch decoded chunk by
    chunk) stores through [`ChunkCache.put_if_seen()`][ChunkCache.put_if_seen]: a
    chunk read for the first time leaves only its key in the ghost list.

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

from .process import at_fork

__all__ = [
    "DEFAULT_CHUNK_CACHE_BYTES",
    "ENV_CHUNK_CACHE_BYTES",
    "GHOST_FRACTION",
    "PROBATION_FRACTION",
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

#: Share of the bound held by chunks read once (the probation FIFO; 2Q's ``Kin``).
PROBATION_FRACTION = 0.25

#: Bytes of chunks whose keys the ghost list remembers after they leave probation, as a share of the bound.
GHOST_FRACTION = 0.5

#: At most this many keys in the ghost list (about 200 bytes each), whatever the chunk size.
_GHOST_MAX_KEYS = 1 << 16


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
        from dask.utils import parse_bytes  # on first use: dask costs a spawned worker 0.3-0.4 s to import

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
    promotions : int
        Chunks moved from probation to the main part (looked up again while on
        probation, or read again while their key was in the ghost list).
    probation_nbytes : int
        Bytes held now by chunks on probation (read once; part of ``nbytes``).
    """

    hits: int
    misses: int
    evictions: int
    entries: int
    nbytes: int
    max_bytes: int
    promotions: int = 0
    probation_nbytes: int = 0


class ChunkCache:
    """A thread-safe cache of decoded chunks bounded in bytes: LRU, or scan-resistant (2Q).

    Parameters
    ----------
    max_bytes : int or str
        Bound on the bytes of the arrays held (``0`` disables the cache: ``put``
        keeps nothing). Strings take a unit (``"256MiB"``).
    policy : {"lru", "2q"}, optional
        ``"lru"`` (default): every chunk put is kept, least recently used
        dropped first. ``"2q"``: scan-resistant admission (below); the
        per-process chunk cache ([`get_chunk_cache()`][get_chunk_cache]) uses it.

    Raises
    ------
    ValueError
        For a ``max_bytes`` that is not a size, or an unknown ``policy``.

    Notes
    -----
    Arrays are stored read-only (a read-only view of the array given to
    [`put()`][put], no copy): a caller that needs to write must copy. A chunk
    larger than ``max_bytes`` is not stored.

    ``"2q"`` admission: a new chunk goes to a probation FIFO of at most
    [`PROBATION_FRACTION`][PROBATION_FRACTION] of ``max_bytes`` (its newest chunk is always
    kept, so an immediate re-read hits); a chunk dropped from probation
    leaves its key in a ghost list (no data, [`GHOST_FRACTION`][GHOST_FRACTION] of
    ``max_bytes`` worth of keys). A look-up that finds a chunk on probation,
    or a [`put()`][put] of a key in the ghost list, moves the chunk to the main
    LRU part. Probation and main together hold at most ``max_bytes``; the
    main part's least recently used chunks go first, but a chunk just put in
    the main part goes only after the chunks on probation.

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

    def __init__(self, max_bytes: int | str = DEFAULT_CHUNK_CACHE_BYTES, *, policy: str = "lru") -> None:
        if policy not in ("lru", "2q"):
            msg = f"invalid cache policy {policy!r}: expected 'lru' or '2q'"
            raise ValueError(msg)
        self._max_bytes = parse_size(max_bytes)
        self._two_q = policy == "2q"
        self._lock = threading.Lock()
        self._init_state()

    def _init_state(self) -> None:
        self._main: OrderedDict[Hashable, np.ndarray] = OrderedDict()  # re-used chunks, least recent first
        self._probation: OrderedDict[Hashable, np.ndarray] = OrderedDict()  # chunks read once, oldest first
        self._ghost: OrderedDict[Hashable, int] = OrderedDict()  # keys dropped from probation -> their bytes
        self._nbytes = 0
        self._probation_nbytes = 0
        self._ghost_nbytes = 0
        self._hits = 0
        self._misses = 0
        self._evictions = 0
        self._promotions = 0

    # -- state ------------------------------------------------------------------
    @property
    def policy(self) -> str:
        """The admission policy: ``"lru"`` or ``"2q"``."""
        return "2q" if self._two_q else "lru"

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
        with self._lock:  # a put() adds a chunk's bytes before it evicts down to the bound
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
            return CacheStats(
                self._hits,
                self._misses,
                self._evictions,
                len(self._main) + len(self._probation),
                self._nbytes,
                self._max_bytes,
                self._promotions,
                self._probation_nbytes,
            )

    def __len__(self) -> int:
        with self._lock:  # a chunk moving from probation to main is in neither or both part-way
            return len(self._main) + len(self._probation)

    def __contains__(self, key: object) -> bool:
        with self._lock:
            return key in self._main or key in self._probation

    def __repr__(self) -> str:
        s = self.stats()
        return (
            f"<ChunkCache {s.nbytes}/{s.max_bytes} bytes ({s.probation_nbytes} on probation), {s.entries} chunks, "
            f"{s.hits} hits, {s.misses} misses, {s.evictions} evictions, {s.promotions} promotions>"
        )

    # -- operations ------------------------------------------------------------------
    def _find_locked(self, key: Hashable) -> np.ndarray | None:
        """The chunk under ``key`` (refreshed in the main part, or promoted from probation), or None."""
        main = self._main
        array = main.get(key)
        if array is not None:
            main.move_to_end(key)
            return array
        array = self._probation.pop(key, None)
        if array is not None:  # re-used while on probation: into the main part (same bytes in all)
            self._probation_nbytes -= int(array.nbytes)
            main[key] = array
            self._promotions += 1
        return array

    def get(self, key: Hashable, *, count_miss: bool = True) -> np.ndarray | None:
        """Return the chunk stored under ``key`` (read-only) or None, and count a hit or a miss.

        ``count_miss=False`` leaves a miss uncounted (for a look-up that is retried).
        """
        with self._lock:
            array = self._find_locked(key)
            if array is None:
                self._misses += count_miss
                return None
            self._hits += 1
            return array

    def get_many(self, keys: list[Hashable]) -> list[np.ndarray | None]:
        """[`get()`][get] for several keys under one lock acquisition."""
        out: list[np.ndarray | None] = []
        with self._lock:
            for key in keys:
                array = self._find_locked(key)
                if array is None:
                    self._misses += 1
                else:
                    self._hits += 1
                out.append(array)
        return out

    def get_all(self, keys: list[Hashable]) -> list[np.ndarray] | None:
        """Every chunk of ``keys`` (counted as hits), or None when any is missing (nothing counted or moved).

        For a read served from memory alone: a caller that gets None reads
        through [`get_many()`][get_many] instead, which counts the misses.
        """
        with self._lock:
            main, probation = self._main, self._probation
            if not all(key in main or key in probation for key in keys):
                return None
            found = [self._find_locked(key) for key in keys]
            self._hits += len(keys)
        return found  # type: ignore[return-value]  # no None left

    def put(self, key: Hashable, array: Any) -> None:
        """Store ``array`` under ``key`` (as a read-only view), evicting as the bound requires.

        A key not held goes on probation, unless it is in the ghost list
        (read again soon after it was dropped): then into the main part.
        A key held is replaced where it is.

        Parameters
        ----------
        key : hashable
            ``(reader token, chunk index tuple)`` by convention.
        array : numpy.ndarray
            The decoded chunk. Not copied: do not modify it afterwards.
        """
        if self._max_bytes <= 0:
            return
        with self._lock:
            self._put_locked(key, array)

    def _put_locked(self, key: Hashable, array: Any) -> None:
        """[`put()`][put] with the lock held."""
        view = np.asarray(array).view()
        view.flags.writeable = False
        size = int(view.nbytes)
        if size > self._max_bytes:
            return
        if (old := self._main.pop(key, None)) is not None:
            self._nbytes -= int(old.nbytes)
            self._main[key] = view
        elif (old := self._probation.pop(key, None)) is not None:
            self._nbytes -= int(old.nbytes)
            self._probation_nbytes += size - int(old.nbytes)
            self._probation[key] = view
        elif not self._two_q:
            self._main[key] = view
        elif key in self._ghost:  # read again soon after it left probation
            self._ghost_nbytes -= self._ghost.pop(key)
            self._main[key] = view
            self._promotions += 1
        else:
            self._probation[key] = view
            self._probation_nbytes += size
        self._nbytes += size
        # a chunk just put in the main part outlives the chunks on probation (as the newest on probation does)
        self._evict_locked(keep_newest_main=key in self._main)

    def put_if_seen(self, key: Hashable, array: Any) -> bool:
        """[`put()`][put] a chunk read again soon, only remember the key of one read for the first time.

        For a reader that uses a chunk at once and drops it (a batch
        copying each chunk into its patches): with ``"2q"``, a key neither
        held nor in the ghost list goes straight to the ghost list, as if
        its chunk had passed through probation, and the chunk is not kept,
        so its memory is free for the next decode instead of being held by
        probation; a key in the ghost list (read again soon) or held is
        stored as [`put()`][put] stores it. With ``"lru"`` this is
        [`put()`][put].

        Parameters
        ----------
        key : hashable
            As for [`put()`][put].
        array : numpy.ndarray
            The decoded chunk (not copied when kept).

        Returns
        -------
        bool
            Whether the chunk was stored.
        """
        size = int(np.asarray(array).nbytes)
        if self._max_bytes <= 0 or size > self._max_bytes:  # put() would not keep it
            return False
        # one lock for the check and the store: another thread's ghost trim between them would put the
        # chunk on probation, which put_if_seen never does
        with self._lock:
            if self._two_q and key not in self._ghost and key not in self._main and key not in self._probation:
                self._ghost[key] = size
                self._ghost_nbytes += size
                self._trim_ghost_locked()
                return False
            self._put_locked(key, array)
        return True

    def _drop_probation_locked(self) -> None:
        """Drop the oldest chunk on probation, remembering its key in the ghost list."""
        key, dropped = self._probation.popitem(last=False)
        size = int(dropped.nbytes)
        self._probation_nbytes -= size
        self._nbytes -= size
        self._evictions += 1
        self._ghost[key] = size
        self._ghost_nbytes += size
        self._trim_ghost_locked()

    def _trim_ghost_locked(self) -> None:
        ghost = self._ghost
        limit = int(self._max_bytes * GHOST_FRACTION)
        while ghost and (self._ghost_nbytes > limit or len(ghost) > _GHOST_MAX_KEYS):
            self._ghost_nbytes -= ghost.popitem(last=False)[1]

    def _evict_locked(self, *, keep_newest_main: bool = False) -> None:
        probation_limit = int(self._max_bytes * PROBATION_FRACTION)
        while self._probation_nbytes > probation_limit and len(self._probation) > 1:
            self._drop_probation_locked()
        while self._nbytes > self._max_bytes:
            if self._main and not (keep_newest_main and len(self._main) == 1 and self._probation):
                _, dropped = self._main.popitem(last=False)
                self._nbytes -= int(dropped.nbytes)
                self._evictions += 1
            elif self._probation:
                self._drop_probation_locked()
            else:
                break

    def clear(self) -> None:
        """Drop every chunk and remembered key, and reset the counters."""
        with self._lock:
            self._init_state()

    def resize(self, max_bytes: int | str) -> None:
        """Change the bound (evicting as needed); ``0`` disables and empties the cache."""
        n = parse_size(max_bytes)
        with self._lock:
            self._max_bytes = n
            self._evict_locked()
            self._trim_ghost_locked()

    def _reset_after_fork(self) -> None:
        # The parent's lock may have been held by another thread at fork time.
        self._lock = threading.Lock()
        self._init_state()


def _size_from_env() -> int:
    raw = os.environ.get(ENV_CHUNK_CACHE_BYTES)
    if raw is None or raw.strip() == "":
        return DEFAULT_CHUNK_CACHE_BYTES
    return parse_size(raw, f"{ENV_CHUNK_CACHE_BYTES}={raw!r}: cache size")


_CACHE = ChunkCache(_size_from_env(), policy="2q")


def get_chunk_cache() -> ChunkCache:
    """Return this process's chunk cache (shared by every stack and reader; scan-resistant ``"2q"`` admission).

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


at_fork(after_in_child=_CACHE._reset_after_fork)
