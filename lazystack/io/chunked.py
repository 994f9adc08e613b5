"""Read a region of a chunked source by decoding only the chunks it touches.

The shared machinery under ``extract_patch`` for every chunked format
(Zarr/OME-Zarr, TIFF tiles and strips, CZI subblocks): a back end says how
to decode *whole chunks* ([`ChunkedReader.fetch_chunks()`][ChunkedReader.fetch_chunks]); this module
finds the chunks a region overlaps, takes the ones it already has from the
per-process [`ChunkCache`][lazystack.io.cache.ChunkCache], fetches the others in one
call (concurrently, in a small shared thread pool, when there are several),
stores them in the cache and copies the overlapping parts into the output.
No event loop, no task graph: the cost of a warm read is a dictionary look-up
and a memory copy.

A back end that also decodes one chunk on its own (it overrides
[`ChunkedReader.fetch_chunk()`][ChunkedReader.fetch_chunk]) and is local gets two more paths: a region
inside one chunk is one ``fetch_chunk`` call, and with the cache off a
region over several chunks is streamed (each chunk decoded, copied into
place and dropped, so decoded chunks never pile up in memory).

A back end subclasses [`ChunkedReader`][ChunkedReader]::

    class MyReader(ChunkedReader):
        def __init__(self, path):
            shape, dtype, chunk_shape = read_metadata(path)
            super().__init__(shape, dtype, chunk_shape, token=f"myformat:{path}:{mtime}")
            self._path = path

        def fetch_chunks(self, indices):
            return fetch_concurrently(indices, self._decode_one)

and gets the reader contract of [`lazystack.io.reader`][lazystack.io.reader] (``__getitem__``,
``read_region``, ``read_cached``, ``chunks``, ``token``, ``capabilities``),
caching and batched reads ([`lazystack.ops.batch`][lazystack.ops.batch]).
"""

from __future__ import annotations

import itertools
import math
import operator
import os
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from typing import Any, TypeVar

import numpy as np

from .cache import ChunkCache, get_chunk_cache
from .process import at_fork
from .reader import Reader, ReaderCapabilities

__all__ = [
    "ChunkGrid",
    "ChunkIndex",
    "ChunkedReader",
    "copy_piece",
    "FunctionChunkedReader",
    "as_chunked_reader",
    "FetchChunks",
    "fetch_concurrently",
    "get_chunks",
    "normalize_key",
    "PARALLEL_MIN_CHUNKS",
    "read_region",
    "shared_executor",
]

ChunkIndex = tuple[int, ...]
"""Index of a chunk in the chunk grid (one int per axis)."""

FetchChunks = Callable[[Sequence[ChunkIndex]], Mapping[ChunkIndex, np.ndarray]]
"""Decodes whole chunks: ``fetch(indices) -> {index: array}`` (edge chunks may be cropped or full-size)."""


# -- the shared thread pool -----------------------------------------------------------------
_POOL: ThreadPoolExecutor | None = None
_POOL_LOCK = threading.Lock()
#: Worker threads of the shared pool (I/O bound work: a few per core).
POOL_WORKERS = int(os.environ.get("LAZYSTACK_IO_THREADS", "0") or 0) or min(16, 4 * (os.cpu_count() or 1))


def shared_executor() -> ThreadPoolExecutor:
    """The per-process thread pool used to fetch and decode chunks concurrently.

    Created on first use; a forked child gets a new one (threads do not
    survive ``fork``). ``LAZYSTACK_IO_THREADS`` sets its size (default:
    4 per core, at most 16).
    """
    global _POOL
    pool = _POOL
    if pool is None:
        with _POOL_LOCK:
            if _POOL is None:
                _POOL = ThreadPoolExecutor(max_workers=POOL_WORKERS, thread_name_prefix="lazystack-io")
            pool = _POOL
    return pool


def _reset_pool_after_fork() -> None:
    global _POOL, _POOL_LOCK
    _POOL = None
    _POOL_LOCK = threading.Lock()


at_fork(after_in_child=_reset_pool_after_fork)


#: Fewest chunks decoded in the pool rather than in the calling thread (``LAZYSTACK_PARALLEL_MIN_CHUNKS``).
#: Handing work to another thread costs tens of microseconds, and waking an idle core (on a virtual
#: machine especially) can cost more than decoding a chunk: for fewer local chunks than this the
#: caller decoding them in turn is faster (``benchmarks/``).
PARALLEL_MIN_CHUNKS = int(os.environ.get("LAZYSTACK_PARALLEL_MIN_CHUNKS", "0") or 0) or 8

#: Fewest decoded bytes of one region read (cache off) shared over the cores (``LAZYSTACK_PARALLEL_MIN_BYTES``).
PARALLEL_MIN_BYTES = int(os.environ.get("LAZYSTACK_PARALLEL_MIN_BYTES", "0") or 0) or 1 << 20

#: Cores the CPU-bound work of one read is split over (decoding: more threads than cores only adds switches).
CPU_WORKERS = max(1, min(POOL_WORKERS, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1))


_K = TypeVar("_K", bound=Hashable)


def fetch_concurrently(
    indices: Sequence[_K],
    fetch_one: Callable[[_K], Any],
    *,
    min_parallel: int | None = None,
    parallel: bool | None = None,
) -> dict[_K, Any]:
    """Call ``fetch_one`` for every index, spreading the work over the shared pool when there are many.

    By default the work is taken to be CPU-bound (decoding local chunks):
    from [`PARALLEL_MIN_CHUNKS`][PARALLEL_MIN_CHUNKS] indices on, one thread per core
    ([`CPU_WORKERS`][CPU_WORKERS]), the calling thread one of them, takes the
    indices one at a time from a shared iterator: one hand-off per thread, and
    a thread that is descheduled on a busy machine holds up one index only.
    With ``min_parallel`` the work is taken to be I/O-bound (remote reads):
    every index is its own task, so slow requests overlap.

    Parameters
    ----------
    indices : sequence of tuple of int
        Chunk indices.
    fetch_one : callable
        Reads and decodes one chunk (must be thread-safe).
    min_parallel : int, optional
        For I/O-bound work: fewest indices for which the pool is used, one
        task per index (at least 2).
    parallel : bool, optional
        For CPU-bound work, the caller's judgement instead of
        [`PARALLEL_MIN_CHUNKS`][PARALLEL_MIN_CHUNKS]: True shares even two indices over the
        cores (each is much work), False keeps them all in the calling thread.

    Returns
    -------
    dict
        ``{index: result}``. The first exception raised by ``fetch_one`` propagates.
    """
    io_bound = min_parallel is not None
    if min_parallel is not None:
        limit = max(2, min_parallel)
    elif parallel is not None:
        limit = 2 if parallel else len(indices) + 1
    else:
        limit = PARALLEL_MIN_CHUNKS
    n = len(indices)
    if n < limit or (not io_bound and CPU_WORKERS < 2) or threading.current_thread().name.startswith("lazystack-io"):
        # Few chunks, one core, or already inside the pool (nested fetch: never wait on ourselves).
        return {idx: fetch_one(idx) for idx in indices}
    pool = shared_executor()
    if not io_bound:
        return _fetch_on_cores(indices, fetch_one, pool, min(CPU_WORKERS, n))
    rest = list(indices)[1:]
    futures = [pool.submit(fetch_one, idx) for idx in rest]
    try:
        out = {indices[0]: fetch_one(indices[0])}
        for idx, f in zip(rest, futures, strict=True):
            out[idx] = f.result()
    except BaseException:
        _stop(futures)  # the caller or a pool task failed: the others may still be running
        raise
    return out


def _fetch_on_cores(
    indices: Sequence[_K], fetch_one: Callable[[_K], Any], pool: ThreadPoolExecutor, k: int
) -> dict[_K, Any]:
    """CPU-bound ``fetch_one`` calls on ``k`` threads (the caller and ``k - 1`` of the pool), dealt one at a time.

    Each thread takes the next index from one shared iterator (taking an item is atomic under the GIL), so a
    thread the OS leaves waiting on a busy machine delays the batch by one item, not by its half of a static
    split. Results land in a dict (one ``__setitem__`` per item, atomic too); after the first exception the
    other threads stop at their next item.
    """
    todo = iter(list(indices))  # a list's iterator: next() is atomic under the GIL (a generator's is not)
    out: dict[_K, Any] = {}
    failed: list[BaseException] = []

    def run() -> None:
        try:
            for idx in todo:
                if failed:
                    return
                out[idx] = fetch_one(idx)
        except BaseException as e:
            failed.append(e)
            raise

    futures = [pool.submit(run) for _ in range(k - 1)]
    try:
        run()
        for f in futures:  # a task not started yet would find nothing left: don't wait for a thread to wake up
            f.cancel()
        for f in futures:
            if not f.cancelled():
                f.result()
    except BaseException:
        _stop(futures)  # the caller or a pool thread failed: the other threads may still be decoding
        out.clear()
        raise
    result = {idx: out[idx] for idx in indices}
    out.clear()  # a cancelled task stays queued until a pool thread pops it: its ``run`` must not hold the chunks
    return result


def _stop(futures: list[Any]) -> None:
    """After an error: cancel the tasks not started and wait for the running ones.

    So no fetch goes on (holding its chunk, or reading a file the caller is
    about to close) after the error has left [`fetch_concurrently`][fetch_concurrently].
    """
    for f in futures:
        f.cancel()
    wait(futures)


# -- keys and the chunk grid ------------------------------------------------------------------
def normalize_key(key: Any, shape: Sequence[int]) -> tuple[tuple[slice, ...], tuple[int, ...]]:
    """Turn a reader key into step-1 slices inside the bounds, plus the axes to drop.

    Parameters
    ----------
    key : int, slice, Ellipsis or tuple of them
        One entry per axis (missing trailing axes mean "all"); ints drop
        their axis; negative ints and slice bounds count from the end.
    shape : sequence of int
        Shape of the array.

    Returns
    -------
    region : tuple of slice
        ``slice(start, stop)`` per axis, ``0 <= start <= stop <= n``.
    drop : tuple of int
        Axes that an int selected (to squeeze from the result).

    Raises
    ------
    IndexError
        If an int is out of bounds, there are too many entries, or a slice
        step is not 1.
    TypeError
        If an entry is neither an int nor a slice.
    """
    if not isinstance(key, tuple):
        key = (key,)
    if len(key) == len(shape):  # fast path: the stack's keys (step-1 slices and ints inside the bounds)
        fast: list[slice] = []
        dropped: list[int] = []
        for axis, (k, n) in enumerate(zip(key, shape, strict=True)):
            if type(k) is slice:
                a, b = k.start, k.stop
                if k.step not in (None, 1) or type(a) is not int or type(b) is not int or not 0 <= a <= b <= n:
                    break
                fast.append(k)
            elif type(k) is int and 0 <= k < n:
                fast.append(slice(k, k + 1))
                dropped.append(axis)
            else:
                break
        else:
            return tuple(fast), tuple(dropped)
    if any(k is Ellipsis for k in key):
        i = next(i for i, k in enumerate(key) if k is Ellipsis)
        fill = (slice(None),) * (len(shape) - len(key) + 1)
        key = key[:i] + fill + key[i + 1 :]
    if len(key) > len(shape):
        msg = f"too many indices ({len(key)}) for an array of shape {tuple(shape)}"
        raise IndexError(msg)
    key = key + (slice(None),) * (len(shape) - len(key))
    region: list[slice] = []
    drop: list[int] = []
    for axis, (k, n) in enumerate(zip(key, shape, strict=True)):
        if isinstance(k, slice):
            start, stop, step = k.indices(n)
            if step != 1:
                msg = f"only step-1 slices are supported, got {k!r} on axis {axis}"
                raise IndexError(msg)
            region.append(slice(start, max(start, stop)))
        else:
            try:
                i = operator.index(k)
            except TypeError:
                msg = f"index {k!r} on axis {axis} must be an int or a slice"
                raise TypeError(msg) from None
            if not -n <= i < n:
                msg = f"index {i} is out of bounds for axis {axis} of size {n}"
                raise IndexError(msg)
            i %= n
            region.append(slice(i, i + 1))
            drop.append(axis)
    return tuple(region), tuple(drop)


class ChunkGrid:
    """A chunk grid: regular (one chunk shape) or irregular (dask-style chunks).

    Parameters
    ----------
    shape : sequence of int
        Shape of the array.
    chunks : sequence of int, or sequence of sequences of int
        A regular chunk shape (the last chunk along an axis may be cut by
        the array's edge), or dask-style chunk sizes per axis.

    Raises
    ------
    ValueError
        If ``chunks`` does not fit ``shape``.
    """

    def __init__(self, shape: Sequence[int], chunks: Sequence[int] | Sequence[Sequence[int]]) -> None:
        self.shape = tuple(int(n) for n in shape)
        if len(chunks) != len(self.shape):
            msg = f"chunks {chunks!r} must have one entry per axis of shape {self.shape}"
            raise ValueError(msg)
        self.regular = all(isinstance(c, (int, np.integer)) for c in chunks)
        if self.regular:
            self.chunk_shape: tuple[int, ...] = tuple(max(1, int(c)) for c in chunks)  # type: ignore[arg-type]
            sizes = []
            for n, c in zip(self.shape, self.chunk_shape, strict=True):
                full, rest = divmod(n, c)
                sizes.append((c,) * full + ((rest,) if rest else ()) if n else (0,))
            self.sizes: tuple[tuple[int, ...], ...] = tuple(sizes)
        else:
            self.sizes = tuple(tuple(int(s) for s in c) for c in chunks)  # type: ignore[union-attr]
            for n, sz in zip(self.shape, self.sizes, strict=True):
                if sum(sz) != n:
                    msg = f"chunks {chunks!r} do not add up to shape {self.shape}"
                    raise ValueError(msg)
            self.chunk_shape = tuple(max(c) if c else 0 for c in self.sizes)
        self.bounds = tuple(np.concatenate([[0], np.cumsum(c, dtype=np.int64)]) for c in self.sizes)

    def axis_range(self, axis: int, start: int, stop: int) -> range:
        """Indices of the chunks along ``axis`` that ``[start, stop)`` overlaps."""
        if stop <= start:
            return range(0)
        if self.regular:
            c = self.chunk_shape[axis]
            return range(start // c, (stop - 1) // c + 1)
        b = self.bounds[axis]
        lo = int(np.searchsorted(b, start, side="right")) - 1
        hi = int(np.searchsorted(b, stop - 1, side="right"))
        return range(lo, hi)

    def n_touched(self, region: Sequence[slice]) -> int:
        """Number of chunks ``region`` overlaps."""
        return math.prod(len(self.axis_range(a, s.start, s.stop)) for a, s in enumerate(region))

    def touched(self, region: Sequence[slice]) -> list[ChunkIndex]:
        """Indices of every chunk ``region`` overlaps (C order)."""
        ranges = [self.axis_range(a, s.start, s.stop) for a, s in enumerate(region)]
        return list(itertools.product(*ranges))

    def pieces(self, region: Sequence[slice]) -> list[tuple[ChunkIndex, tuple[slice, ...], tuple[slice, ...]]]:
        """Every chunk ``region`` overlaps (C order), with the part of it inside ``region``.

        Parameters
        ----------
        region : sequence of slice
            Step-1 slices inside the array.

        Returns
        -------
        list of (index, src, dst)
            ``chunk[src]`` (``src`` counted from the chunk's first element) is
            ``region_array[dst]``. Worked out with integer arithmetic on a
            regular grid: this runs on every read of several chunks.
        """
        if self.regular:
            one = self._one_chunk_piece(region)
            if one is not None:
                return one
        # per axis: the chunk numbers, and each one's part as slices of the chunk and of the region;
        # the pieces are their products, taken alike (C order) and zipped
        idxs: list[list[int]] = []
        srcs: list[list[slice]] = []
        dsts: list[list[slice]] = []
        for a, s in enumerate(region):
            start, stop = s.start, s.stop
            ia: list[int] = []
            sa: list[slice] = []
            da: list[slice] = []
            b = self.bounds[a]
            for i in self.axis_range(a, start, stop):
                lo, hi = int(b[i]), int(b[i + 1])
                first = start if start > lo else lo
                last = stop if stop < hi else hi
                ia.append(i)
                sa.append(slice(first - lo, last - lo))
                da.append(slice(first - start, last - start))
            idxs.append(ia)
            srcs.append(sa)
            dsts.append(da)
        product = itertools.product
        return list(zip(product(*idxs), product(*srcs), product(*dsts), strict=True))

    def _one_chunk_piece(
        self, region: Sequence[slice]
    ) -> list[tuple[ChunkIndex, tuple[slice, ...], tuple[slice, ...]]] | None:
        """[`pieces()`][pieces] on a regular grid for a region inside one chunk per axis (most patches), without
        products; None when it spans several chunks."""
        idx: list[int] = []
        src: list[slice] = []
        dst: list[slice] = []
        for s, c in zip(region, self.chunk_shape, strict=True):
            start, stop = s.start, s.stop
            if stop <= start:
                return []
            first = start // c
            if first != (stop - 1) // c:
                return None
            lo = first * c
            idx.append(first)
            src.append(slice(start - lo, stop - lo))
            dst.append(slice(0, stop - start))
        return [(tuple(idx), tuple(src), tuple(dst))]

    def chunk_region(self, idx: ChunkIndex) -> tuple[slice, ...]:
        """The region of the array chunk ``idx`` covers (cut at the array's edge)."""
        return tuple(slice(int(b[i]), int(b[i + 1])) for i, b in zip(idx, self.bounds, strict=True))

    def chunk_nbytes(self, itemsize: int) -> int:
        """Bytes of one full chunk of ``itemsize``-byte elements."""
        return math.prod(self.chunk_shape) * itemsize  # Python ints: no overflow, no numpy call per read


# -- reading through the cache ----------------------------------------------------------------
def get_chunks(
    indices: Sequence[ChunkIndex],
    fetch: FetchChunks,
    *,
    cache: ChunkCache | None,
    token: str,
) -> dict[ChunkIndex, np.ndarray]:
    """Return decoded chunks, from the cache where it holds them, else from ``fetch`` (one call).

    Parameters
    ----------
    indices : sequence of tuple of int
        Chunks wanted (no duplicates needed).
    fetch : callable
        ``fetch(missing) -> {index: array}``.
    cache : ChunkCache or None
        Cache to consult and fill (None or disabled: always fetch).
    token : str
        Names the data; cache keys are ``(token, index)``.

    Returns
    -------
    dict
        ``{index: array}`` for every index (arrays from the cache are read-only).

    Raises
    ------
    KeyError
        If ``fetch`` did not return an index it was asked for.
    """
    unique = list(dict.fromkeys(indices))
    found: dict[ChunkIndex, np.ndarray] = {}
    missing = unique
    use_cache = cache is not None and cache.enabled
    if use_cache:
        assert cache is not None
        hits = cache.get_many([(token, idx) for idx in unique])
        missing = []
        for idx, hit in zip(unique, hits, strict=True):
            if hit is None:
                missing.append(idx)
            else:
                found[idx] = hit
    if missing:
        fetched = fetch(missing)
        for idx in missing:
            found[idx] = array = _fetched(fetched, idx, token)
            if use_cache:
                assert cache is not None
                cache.put((token, idx), array)
    return found


def _fetched(fetched: Mapping[ChunkIndex, np.ndarray], idx: ChunkIndex, token: str) -> np.ndarray:
    """``fetched[idx]``, or a KeyError naming what the fetcher returned instead."""
    try:
        return fetched[idx]
    except KeyError:
        msg = f"chunk fetcher returned no chunk {idx} (token {token!r}); it returned {sorted(fetched)}"
        raise KeyError(msg) from None


def _block(
    chunk: np.ndarray,
    idx: ChunkIndex,
    src: tuple[slice, ...],
    shape: tuple[int, ...],
    region: tuple[slice, ...],
    grid: ChunkGrid,
) -> np.ndarray:
    """``chunk[src]``, checked to have ``shape``: a chunk too small for its grid cell is an error, never broadcast.

    The chunk may be cut at the array's edge or full-size.
    """
    block = chunk[src]
    if block.shape != shape:
        msg = f"chunk {idx} has shape {chunk.shape}, too small for region {region} of grid {grid.sizes}"
        raise ValueError(msg)
    return block


def copy_piece(
    out: np.ndarray,
    idx: ChunkIndex,
    chunk: np.ndarray,
    src: tuple[slice, ...],
    dst: tuple[slice, ...],
    region: tuple[slice, ...],
    grid: ChunkGrid,
) -> None:
    """Copy ``chunk[src]`` into ``out[dst]``, cast to ``out``'s dtype (one of [`ChunkGrid.pieces()`][ChunkGrid.pieces]).

    Raises
    ------
    ValueError
        If the chunk is too small for its grid cell (never broadcast).
    """
    target = out[dst]
    target[...] = _block(chunk, idx, src, target.shape, region, grid)


def read_region(
    region: tuple[slice, ...],
    grid: ChunkGrid,
    fetch: FetchChunks,
    *,
    dtype: Any,
    cache: ChunkCache | None,
    token: str,
) -> np.ndarray:
    """Read ``region`` (step-1 slices inside the array) from whole chunks.

    Returns
    -------
    numpy.ndarray
        The region. When it lies in one chunk this is a view of the decoded
        chunk, read-only when the chunk came from (or went into) the cache.
    """
    dtype = np.dtype(dtype)
    out_shape = tuple(s.stop - s.start for s in region)
    if 0 in out_shape:
        return np.empty(out_shape, dtype=dtype)
    pieces = grid.pieces(region)
    chunks = get_chunks([p[0] for p in pieces], fetch, cache=cache, token=token)
    if len(pieces) == 1:  # one chunk: a view of it (read-only when cached), no copy
        idx, src, _ = pieces[0]
        block = _block(chunks[idx], idx, src, out_shape, region, grid)
        return block if block.dtype == dtype else block.astype(dtype)
    out = np.empty(out_shape, dtype=dtype)
    for idx, src, dst in pieces:
        copy_piece(out, idx, chunks[idx], src, dst, region, grid)
    return out


class ChunkedReader(Reader, ABC):
    """Base class of chunk readers: a back end implements [`fetch_chunks()`][fetch_chunks], this class the rest.

    It fulfils the reader contract of [`lazystack.io.reader`][lazystack.io.reader]
    (``shape``, ``dtype``, ``chunks``, ``token``, ``capabilities``,
    ``__getitem__``, ``read_region``, ``read_cached``) and reads through the
    per-process chunk cache. Subclasses must stay picklable as a recipe (no
    handles, no data); this base class holds only plain metadata.

    Parameters
    ----------
    shape : sequence of int
        Shape of the source in its own axes.
    dtype : numpy dtype
        Dtype of the stored data.
    chunks : sequence of int or of sequences of int
        Regular chunk shape or dask-style chunks (see [`ChunkGrid`][ChunkGrid]).
    token : str
        Names the data; readers with the same token share cache entries, so
        it must change when the data does (include a modification time).
    capabilities : ReaderCapabilities, optional
        What the back end is (remote, compressed, fetches only in groups);
        default: a local, compressed source that decodes one chunk on its own.
    """

    capabilities: ReaderCapabilities

    def __init__(
        self,
        shape: Sequence[int],
        dtype: Any,
        chunks: Sequence[int] | Sequence[Sequence[int]],
        token: str,
        *,
        capabilities: ReaderCapabilities | None = None,
    ) -> None:
        self._shape = tuple(int(n) for n in shape)
        self._dtype = np.dtype(dtype)
        self._grid = ChunkGrid(self._shape, chunks)
        self._token = str(token)
        self.capabilities = ReaderCapabilities() if capabilities is None else capabilities

    # -- the reader contract ------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of the source in its own axes."""
        return self._shape

    @property
    def dtype(self) -> np.dtype[Any]:
        """Dtype of the stored data."""
        return self._dtype

    @property
    def chunks(self) -> tuple[tuple[int, ...], ...]:
        """dask-style chunks (the source's own chunk grid)."""
        return self._grid.sizes

    @property
    def chunk_grid(self) -> ChunkGrid:
        """The chunk grid whole chunks are decoded on."""
        return self._grid

    @property
    def token(self) -> str:
        """Names the data (cache keys and the dask name)."""
        return self._token

    @property
    def cache(self) -> ChunkCache | None:
        """The chunk cache reads go through (the per-process one by default)."""
        return get_chunk_cache()

    def parallel_fetch(self, n_chunks: int) -> bool:
        """Whether one [`fetch_chunks()`][fetch_chunks] call of ``n_chunks`` chunks decodes them in parallel outside
        Python.

        Default False. A back end that hands many chunks to native threads
        (tensorstore) says True: with the chunk cache on, batched extraction
        then fetches all of a batch's chunks in one call instead of decoding
        them in Python threads (with it off, a batch decodes each chunk once
        and drops it after its copies, or reads regions: see [`lazystack.ops.batch`][lazystack.ops.batch]).
        """
        return False

    def region_reads(self) -> Any:
        """Region reads a batch starts as it plans its requests, or None (default: chunk by chunk).

        A back end whose engine reads whole regions in its own threads
        (tensorstore, cache off) returns an object with ``start(region, *,
        as_float32=False)`` and ``results()`` (see
        [`lazystack.sources.zarr.engines.RegionReads`][lazystack.sources.zarr.engines.RegionReads]).
        """
        return None

    def as_chunked(self) -> ChunkedReader:
        """This reader itself (see [`as_chunked_reader()`][as_chunked_reader])."""
        return self

    @abstractmethod
    def fetch_chunks(self, indices: Sequence[ChunkIndex]) -> Mapping[ChunkIndex, np.ndarray]:
        """Read and decode whole chunks (the one method a back end implements).

        Parameters
        ----------
        indices : sequence of tuple of int
            Chunks to decode (all inside the grid, no duplicates).

        Returns
        -------
        mapping
            ``{index: array}``, each array the chunk's data: either cut at
            the array's edge or full-size (only the part inside the array
            is used). Missing chunks must come back filled with the fill
            value. Use [`fetch_concurrently()`][fetch_concurrently] to overlap I/O.
        """

    def fetch_chunk(self, idx: ChunkIndex) -> np.ndarray:
        """Read and decode one whole chunk (default: [`fetch_chunks()`][fetch_chunks] of one index).

        Back ends with a cheaper single-chunk path override it: a patch that
        lies in one chunk (the common case) is read through it.

        Raises
        ------
        KeyError
            If [`fetch_chunks()`][fetch_chunks] did not return the chunk.
        """
        return _fetched(self.fetch_chunks([idx]), idx, self._token)

    def read_chunks(self, indices: Iterable[ChunkIndex]) -> dict[ChunkIndex, np.ndarray]:
        """Return decoded chunks through the cache (one [`fetch_chunks()`][fetch_chunks] call for the misses)."""
        return get_chunks(list(indices), self.fetch_chunks, cache=self.cache, token=self._token)

    def _in_one_chunk(self, region: tuple[slice, ...]) -> tuple[ChunkIndex, tuple[slice, ...], tuple[int, ...]] | None:
        """``(chunk index, region within that chunk, region shape)`` when ``region`` lies in one chunk.

        Only on a regular grid. On every patch, warm or cold: plain loops over the axes, nothing else.
        """
        grid = self._grid
        if not grid.regular:
            return None
        idx = []
        within = []
        shape = []
        for s, c in zip(region, grid.chunk_shape, strict=True):
            start, stop = s.start, s.stop
            i = start // c
            if stop <= start or (stop - 1) // c != i:
                return None
            lo = i * c
            idx.append(i)
            within.append(slice(start - lo, stop - lo))
            shape.append(stop - start)
        return tuple(idx), tuple(within), tuple(shape)

    def _cut(
        self,
        chunk: np.ndarray,
        idx: ChunkIndex,
        within: tuple[slice, ...],
        shape: tuple[int, ...],
        region: tuple[slice, ...],
    ) -> np.ndarray:
        """``chunk[within]`` in the stored dtype (a chunk too small for ``shape`` raises, see [`_block()`][_block])."""
        block = chunk[within]
        if block.shape != shape:
            _block(chunk, idx, within, shape, region, self._grid)  # raises: never broadcast
        return block if block.dtype == self._dtype else block.astype(self._dtype)

    def read(self, region: tuple[slice, ...]) -> np.ndarray:
        """Read a normalised region (step-1 slices within bounds), possibly as a read-only view."""
        one = self._in_one_chunk(region)
        if one is not None:
            # The common case, warm or cold: the region lies in one chunk. One cache look-up, at
            # most one fetch, and a view of the chunk (no copy, no intermediate lists or dicts).
            idx, within, shape = one
            return self._cut(self.read_chunk(idx), idx, within, shape, region)
        grid = self._grid
        cache = self.cache
        caps = self.capabilities
        if (cache is None or not cache.enabled) and not caps.remote and not caps.fetches_in_groups:
            return self._read_streamed(region)
        return read_region(region, grid, self.fetch_chunks, dtype=self._dtype, cache=cache, token=self._token)

    def _read_streamed(self, region: tuple[slice, ...]) -> np.ndarray:
        """A region of a local source read with the cache off: each chunk decoded, copied into place, dropped.

        No chunk outlives its copy, so the memory a decode allocates is reused
        by the next one instead of being faulted in afresh (on a virtual
        machine a fresh page costs about a microsecond: a 256 KiB chunk
        as much as a third of its decode). Enough work is shared over the cores.
        """
        grid = self._grid
        out_shape = tuple(s.stop - s.start for s in region)
        if 0 in out_shape:
            return np.empty(out_shape, dtype=self._dtype)
        pieces = grid.pieces(region)
        out = np.empty(out_shape, dtype=self._dtype)

        def place(k: int) -> None:
            idx, src, dst = pieces[k]
            copy_piece(out, idx, self.fetch_chunk(idx), src, dst, region, grid)

        parallel = (
            self.capabilities.compressed and len(pieces) * grid.chunk_nbytes(self._dtype.itemsize) >= PARALLEL_MIN_BYTES
        )
        fetch_concurrently(range(len(pieces)), place, parallel=parallel)
        return out

    def read_region(self, region: tuple[slice, ...]) -> np.ndarray:
        """``read_region`` of the reader contract: [`read()`][read]."""
        return self.read(region)

    def read_cached(self, region: tuple[slice, ...]) -> np.ndarray | None:
        """``read_cached`` of the reader contract: ``region`` from the chunk cache alone, or None.

        When the cache holds every chunk ``region`` touches, the region comes
        back as [`read()`][read] would return it: a read-only view when it lies
        in one chunk, else a new array assembled from the chunks. Otherwise
        (a chunk not cached, the cache off) the result is None and nothing
        is read or counted: the caller then calls [`read()`][read]. A warm patch
        is this one look-up.
        """
        cache = self.cache
        if cache is None or not cache.enabled:
            return None
        one = self._in_one_chunk(region)
        if one is not None:
            idx, within, shape = one
            chunk = cache.get((self._token, idx), count_miss=False)
            return None if chunk is None else self._cut(chunk, idx, within, shape, region)
        grid = self._grid
        pieces = grid.pieces(region)
        chunks = cache.get_all([(self._token, p[0]) for p in pieces])
        if chunks is None:
            return None
        # assembled in the stored dtype, cast once by the caller: measured faster than casting piece by piece
        out = np.empty(tuple(s.stop - s.start for s in region), dtype=self._dtype)
        for (idx, src, dst), chunk in zip(pieces, chunks, strict=True):
            copy_piece(out, idx, chunk, src, dst, region, grid)
        return out

    def read_chunk(self, idx: ChunkIndex) -> np.ndarray:
        """Return one decoded chunk through the cache (one look-up, at most one [`fetch_chunk()`][fetch_chunk])."""
        cache = self.cache
        if cache is None or not cache.enabled:
            return self.fetch_chunk(idx)
        key = (self._token, idx)
        chunk = cache.get(key)
        if chunk is None:
            chunk = self.fetch_chunk(idx)
            cache.put(key, chunk)
        return chunk

    def __getitem__(self, key: Any) -> np.ndarray:
        """Read ``key`` (ints and step-1 slices) decoding only the touched chunks.

        The result may be a read-only view of a cached chunk; copy it before
        writing to it.
        """
        region, drop = normalize_key(key, self._shape)
        out = self.read(region)
        if drop:
            out = out.reshape(tuple(n for a, n in enumerate(out.shape) if a not in drop))
        return out

    def __len__(self) -> int:
        return self._shape[0] if self._shape else 0

    def __repr__(self) -> str:
        return f"<{type(self).__name__} shape={self._shape} dtype={self._dtype} chunks={self._grid.chunk_shape}>"


class FunctionChunkedReader(ChunkedReader):
    """A [`ChunkedReader`][ChunkedReader] whose chunks come from a function: no subclass needed.

    For a back end that keeps its own reader class (with its own pickling
    and error messages) and builds one of these per process, returning it
    from ``as_chunked()`` (see [`as_chunked_reader()`][as_chunked_reader]).

    Parameters
    ----------
    shape, dtype, chunks, token
        As for [`ChunkedReader`][ChunkedReader].
    fetch_one : callable, optional
        ``fetch_one(index) -> array``: decodes one chunk (thread-safe);
        without ``fetch_many`` several are fetched with [`fetch_concurrently()`][fetch_concurrently].
    fetch_many : callable, optional
        ``fetch_many(indices) -> {index: array}``: decodes several chunks
        at once (its own concurrency). Give one of the two, or both: then
        ``fetch_one`` serves the reads that take chunks one at a time (a
        region inside one chunk; with the cache off, every chunk of a local
        source) and ``fetch_many`` the reads of several chunks at once.

    Raises
    ------
    TypeError
        If neither ``fetch_one`` nor ``fetch_many`` is given.

    Examples
    --------
    >>> import numpy as np
    >>> data = np.arange(100).reshape(10, 10)
    >>> reader = FunctionChunkedReader(
    ...     data.shape, data.dtype, (4, 4), "doc-example",
    ...     fetch_one=lambda idx: data[idx[0] * 4 : idx[0] * 4 + 4, idx[1] * 4 : idx[1] * 4 + 4],
    ... )
    >>> reader[3:6, 2:4].tolist()
    [[32, 33], [42, 43], [52, 53]]
    """

    def __init__(
        self,
        shape: Sequence[int],
        dtype: Any,
        chunks: Sequence[int] | Sequence[Sequence[int]],
        token: str,
        *,
        fetch_one: Callable[[ChunkIndex], np.ndarray] | None = None,
        fetch_many: FetchChunks | None = None,
    ) -> None:
        if fetch_one is None and fetch_many is None:
            msg = "FunctionChunkedReader needs fetch_one=, fetch_many= or both"
            raise TypeError(msg)
        super().__init__(
            shape, dtype, chunks, token, capabilities=ReaderCapabilities(fetches_in_groups=fetch_one is None)
        )
        self._fetch_one = fetch_one
        self._fetch_many = fetch_many

    def fetch_chunks(self, indices: Sequence[ChunkIndex]) -> Mapping[ChunkIndex, np.ndarray]:
        """Decode chunks with the function given at construction."""
        if self._fetch_many is not None:
            return self._fetch_many(indices)
        assert self._fetch_one is not None
        return fetch_concurrently(indices, self._fetch_one)

    def fetch_chunk(self, idx: ChunkIndex) -> np.ndarray:
        """Decode one chunk: ``fetch_one`` when given, else ``fetch_many`` of one index."""
        if self._fetch_one is not None:
            return self._fetch_one(idx)
        return super().fetch_chunk(idx)


def as_chunked_reader(reader: Any) -> ChunkedReader | None:
    """The [`ChunkedReader`][ChunkedReader] behind a reader, or None.

    A [`Reader`][lazystack.io.reader.Reader]'s own ``as_chunked()`` (a
    [`ChunkedReader`][ChunkedReader] returns itself); None for anything else.
    Batched extraction ([`lazystack.ops.batch`][lazystack.ops.batch]) uses it.
    """
    inner = reader.as_chunked() if isinstance(reader, Reader) else None
    return inner if isinstance(inner, ChunkedReader) else None
