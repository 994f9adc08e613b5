"""Batched patch extraction: read each touched chunk once for a whole batch.

[`extract_patches()`][extract_patches] takes many patch requests, over one stack or many,
works out every chunk the batch touches and reads each of them once (through
the chunk cache), then cuts the patches out of the decoded chunks. The result
is exactly what one [`extract_patch()`][lazystack.LazyImageStack.extract_patch] call per
request returns.

How the chunks are read depends on where they live:

- **local** sources (files, memory) that decode one chunk on their own
  (not [`fetches_in_groups`][lazystack.io.reader.ReaderCapabilities.fetches_in_groups]):

  - requests for every channel wholly inside an identity view (a training
    loop's) are *scattered*: the chunks they touch are shared over the cores
    ([`CPU_WORKERS`][lazystack.io.chunked.CPU_WORKERS]) in grid order, and each chunk
    is decoded once, copied (cast to ``float32``) straight into every patch
    it feeds, and dropped;
  - the others (a channel list, a patch leaving the image, a view), and any
    request sharing a chunk with them, are split into groups that share no
    chunk, the groups are spread over the cores, and each core streams
    through its requests, decoding a chunk when a request first needs it and
    dropping it after its last use.

  Decoding runs in parallel (the codecs release the GIL), and few decoded
  chunks are alive at once: a batch does not fault in fresh memory for every
  chunk it touches, which on a virtual machine costs about as much as
  decoding.
- **remote** sources ([`remote`][lazystack.io.reader.ReaderCapabilities.remote]),
  sources that only fetch chunks in groups, and sources whose fetch decodes
  many chunks in native threads
  ([`parallel_fetch()`][lazystack.io.chunked.ChunkedReader.parallel_fetch]: tensorstore): all
  the chunks a batch touches are fetched in one round (up to
  ``max_batch_bytes`` of them at once), so the round trips or decodes overlap.
  A remote source has two rounds in flight (the next fetched while the
  current one is served), so a batch of two rounds waits for one network
  round trip and holds up to ``2 * max_batch_bytes``.
- with the chunk cache off, a Zarr array on tensorstore (or on ``auto``
  over compressed chunks of 256 KiB and up) reads one region per patch
  ([`region_reads()`][lazystack.io.chunked.ChunkedReader.region_reads]), all
  started once the batch is planned, except for the requests that share a
  chunk with another request of the batch (neighbours, a chunk-local
  sampler's patches): those are served chunk by chunk as above, each shared
  chunk decoded once, while tensorstore reads the others.

Everything goes through public interfaces: a stack's
[`plan_patch()`][lazystack.LazyImageStack.plan_patch],
[`patch_from_region()`][lazystack.LazyImageStack.patch_from_region] and
[`with_reader()`][lazystack.LazyImageStack.with_reader], and its reader's
``as_chunked()`` and ``capabilities`` (the contract of
[`lazystack.io.reader`][lazystack.io.reader]). Stacks whose reader has no chunk reader
(``as_chunked()`` is None: in-memory arrays, dask arrays, custom readers)
or that are loaded in memory are served one by one, in order.
"""

from __future__ import annotations

import threading
from collections import Counter, deque
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ..core.errors import PatchError
from ..io import chunked as _chunked
from ..io.chunked import ChunkedReader, ChunkIndex, as_chunked_reader, copy_piece, fetch_concurrently
from ..io.process import at_fork
from ..io.reader import ReaderCapabilities

__all__ = ["PatchRequest", "extract_patches"]

PatchRequest = tuple[Any, int, Sequence[int] | None, Sequence[int], Sequence[int]]
"""``(stack, sample_idx, channels, coords, patch_size)``; the last four as for ``extract_patch``."""

#: Default bound on the decoded bytes one source's share of a batch holds at once (16 MiB: a round of 64 chunks
#: of 256 KiB still gives tensorstore's threads plenty to decode in parallel; a training batch of 32 3-D patches
#: touches about 50 MiB of chunks, which held at once grew a DataLoader worker by as much).
DEFAULT_MAX_BATCH_BYTES = 16 * 2**20

_POOLS: dict[str, ThreadPoolExecutor] = {}
_POOL_LOCK = threading.Lock()


def _pool(name: str) -> ThreadPoolExecutor:
    """This process's 4-thread pool ``lazystack-<name>``, made on first use.

    ``"batch"`` serves several sources' shares of a batch at once; ``"round"``
    fetches a remote source's next round while the calling thread serves the
    current one (its tasks never wait on this pool, so a full pool only queues
    them).
    """
    with _POOL_LOCK:
        pool = _POOLS.get(name)
        if pool is None:
            pool = _POOLS[name] = ThreadPoolExecutor(max_workers=4, thread_name_prefix=f"lazystack-{name}")
        return pool


def _reset_after_fork() -> None:
    global _POOL_LOCK
    _POOLS.clear()
    _POOL_LOCK = threading.Lock()


at_fork(after_in_child=_reset_after_fork)


class _PrefetchedReader(ChunkedReader):
    """A reader that serves chunks already decoded for a batch (falls back to its source for others)."""

    def __init__(self, source: ChunkedReader, chunks: Mapping[ChunkIndex, np.ndarray]) -> None:
        # No ChunkedReader.__init__: share the source's metadata as is.
        self._shape = source.shape
        self._dtype = source.dtype
        self._grid = source.chunk_grid
        self._token = source.token
        # only fetch_chunks: several chunks are read at once, from the chunks held
        self.capabilities = ReaderCapabilities(
            remote=source.capabilities.remote, compressed=source.capabilities.compressed, fetches_in_groups=True
        )
        self._source = source
        self._chunks = chunks

    @property
    def cache(self) -> None:
        return None

    def fetch_chunks(self, indices: Sequence[ChunkIndex]) -> Mapping[ChunkIndex, np.ndarray]:
        missing = [idx for idx in indices if idx not in self._chunks]
        if not missing:
            return self._chunks
        more = self._source.read_chunks(missing)
        return {**self._chunks, **more}


def _chunked_reader(stack: Any) -> ChunkedReader | None:
    from ..stack import LazyImageStack

    return None if not isinstance(stack, LazyImageStack) or stack.is_loaded else as_chunked_reader(stack.reader)


class _RegionReader(_PrefetchedReader):
    """A reader that serves one region already read for the request in hand (its source for anything else)."""

    def __init__(self, source: ChunkedReader) -> None:
        super().__init__(source, {})
        self._key: tuple[tuple[int, int], ...] | None = None
        self._data: np.ndarray | None = None

    def hold(self, region: tuple[slice, ...], data: np.ndarray) -> None:
        """Serve ``data`` for reads of exactly ``region`` (until the next call)."""
        self._key = tuple((s.start, s.stop) for s in region)
        self._data = data

    def read(self, region: tuple[slice, ...]) -> np.ndarray:
        if self._data is not None and tuple((s.start, s.stop) for s in region) == self._key:
            return self._data
        return self._source.read(region)


def _split(
    items: list[tuple[int, list[ChunkIndex]]], chunk_nbytes: int, max_bytes: int
) -> Iterable[list[tuple[int, list[ChunkIndex]]]]:
    """Split a reader's requests into groups whose distinct chunks stay under ``max_bytes``."""
    group: list[tuple[int, list[ChunkIndex]]] = []
    seen: set[ChunkIndex] = set()
    for item in items:
        new = [c for c in item[1] if c not in seen]
        if group and (len(seen) + len(new)) * chunk_nbytes > max_bytes:
            yield group
            group, seen = [], set()
            new = list(dict.fromkeys(item[1]))
        group.append(item)
        seen.update(new)
    if group:
        yield group


class _StoppedError(Exception):
    """Another source's share of the batch failed (or the caller was interrupted): this share leaves."""


_Item = tuple[int, list[ChunkIndex]]
"""A request's position in the batch and the chunks it touches."""


def _components(items: list[_Item]) -> list[list[_Item]]:
    """Group requests that share a chunk (transitively), in batch order: no chunk is in two groups."""
    parent: dict[ChunkIndex, ChunkIndex] = {}

    def find(c: ChunkIndex) -> ChunkIndex:
        root = c
        while parent[root] != root:
            root = parent[root]
        while parent[c] != root:
            parent[c], c = root, parent[c]
        return root

    for _, touched in items:
        for c in touched:
            parent.setdefault(c, c)
        for c in touched[1:]:
            a, b = find(touched[0]), find(c)
            if a != b:
                parent[b] = a
    groups: dict[ChunkIndex | None, list[_Item]] = {}
    for item in items:
        groups.setdefault(find(item[1][0]) if item[1] else None, []).append(item)
    return list(groups.values())


def _shares(items: list[_Item], k: int) -> list[list[_Item]]:
    """Deal the chunk-disjoint groups of ``items`` to at most ``k`` workers, balancing their chunk counts."""
    groups = _components(items)
    if k < 2 or len(groups) < 2:
        return [items]
    loads = [0] * k
    shares: list[list[_Item]] = [[] for _ in range(k)]
    sized = [(len({c for _, touched in g for c in touched}), g) for g in groups]
    for n_chunks, group in sorted(sized, key=lambda t: -t[0]):
        j = loads.index(min(loads))
        shares[j].extend(group)
        loads[j] += n_chunks
    return [share for share in shares if share]


def _stream(
    reader: ChunkedReader,
    share: list[_Item],
    extract: Any,
    max_bytes: int,
) -> None:
    """Serve ``share`` in order, each chunk read when first needed and dropped after its last use."""
    uses = Counter(c for _, touched in share for c in touched)
    nbytes = reader.chunk_grid.chunk_nbytes(reader.dtype.itemsize)
    live: dict[ChunkIndex, np.ndarray] = {}
    proxy = _PrefetchedReader(reader, live)
    for i, touched in share:
        need = [c for c in touched if c not in live]
        if need and live and (len(live) + len(need)) * nbytes > max_bytes:
            # Over the bound (a long chain of overlapping requests): keep only this request's chunks.
            # A dropped chunk needed again later is read again (from the cache when it holds it).
            kept = {c: live[c] for c in touched if c in live}
            live.clear()
            live.update(kept)
        if len(need) == 1:
            live[need[0]] = reader.read_chunk(need[0])
        elif need:
            live.update(reader.read_chunks(need))
        extract(i, proxy)
        for c in touched:
            uses[c] -= 1
            if not uses[c]:
                live.pop(c, None)


class _Batch:
    """One [`extract_patches()`][extract_patches] call: the requests, their plans and results, and how each source
    serves its share.

    A request for all channels wholly inside an identity view is planned by
    the stack's own fast path (its source region and patch size); any other
    is planned by [`_plan()`][_plan], which validates it as ``extract_patch`` does.
    """

    def __init__(self, reqs: list[Any], max_bytes: int) -> None:
        self.reqs, self.max_bytes = reqs, max_bytes
        self.out: list[NDArray[np.float32] | None] = [None] * len(reqs)
        self.regions: dict[int, tuple[slice, ...] | None] = {}
        self.sizes: dict[int, list[int]] = {}  # requests on the stack's fast path
        self._touched: dict[int, list[ChunkIndex]] = {}
        self._pieces: dict[int, list[tuple[ChunkIndex, tuple[slice, ...], tuple[slice, ...]]]] = {}
        #: Set once a source's share failed: the other shares leave at their next chunk, request or round.
        self.stop = threading.Event()

    def go_on(self) -> None:
        """Raise ``_StoppedError`` if another source's share of the batch failed."""
        if self.stop.is_set():
            raise _StoppedError

    def plan(self, i: int) -> None:
        """Work out (and check) the source region of request ``i``."""
        self.regions[i], size = self.reqs[i][0].plan_patch(*self.reqs[i][1:])
        if size is not None:
            self.sizes[i] = size

    def touched(self, i: int, reader: ChunkedReader) -> list[ChunkIndex]:
        """The chunks request ``i`` touches (C order)."""
        found = self._touched.get(i)
        if found is None:
            region = self.regions[i]
            if region is None:
                found = []
            elif i in self.sizes:  # a fast-path request: its pieces are needed anyway, worked out once
                found = [p[0] for p in self.pieces(i, reader)]
            else:
                found = reader.chunk_grid.touched(region)
            self._touched[i] = found
        return found

    def pieces(self, i: int, reader: ChunkedReader) -> list[tuple[ChunkIndex, tuple[slice, ...], tuple[slice, ...]]]:
        """The chunk pieces of fast-path request ``i`` (its region is never None), worked out once per batch."""
        found = self._pieces.get(i)
        if found is None:
            region = self.regions[i]
            assert region is not None
            found = self._pieces[i] = reader.chunk_grid.pieces(region)
        return found

    def extract(self, i: int, proxy: ChunkedReader, views: dict[tuple[int, int], Any]) -> None:
        """Serve request ``i`` through ``proxy`` (a view of its stack over the proxy, made once per stack)."""
        stack = self.reqs[i][0]
        view = views.get((id(stack), id(proxy)))
        if view is None:
            view = views[(id(stack), id(proxy))] = stack.with_reader(proxy)  # its reads go to ``proxy``
        self.out[i] = view.extract_patch(*self.reqs[i][1:])

    def serve_share(self, reader: ChunkedReader, indices: list[int]) -> None:
        """``serve()`` in a pool thread, one source's share of several: a failure stops the other shares."""
        try:
            self.serve(reader, indices)
        except BaseException:
            self.stop.set()
            raise

    def serve(self, reader: ChunkedReader, indices: list[int]) -> None:
        """Serve the requests ``indices``, all on the source ``reader``."""
        reads = reader.region_reads()
        if reads is not None:
            self._serve_regions(reader, reads, indices)
            return
        caps = reader.capabilities
        if caps.remote or caps.fetches_in_groups or self._parallel_rounds(reader, indices):
            self._serve_rounds(reader, [(i, self.touched(i, reader)) for i in indices])
            return
        self._serve_chunks(reader, indices)

    def _serve_chunks(self, reader: ChunkedReader, indices: list[int]) -> None:
        """Serve ``indices`` chunk by chunk on the cores, each chunk decoded once (scattered or streamed)."""
        scattered, streamed = self._split_fast(reader, indices)
        if scattered:
            self._scatter(reader, scattered)
        if streamed:
            self._stream(reader, [(i, self.touched(i, reader)) for i in streamed])

    def _split_shared(self, reader: ChunkedReader, indices: list[int]) -> tuple[list[int], list[int]]:
        """Split ``indices`` into requests that share no chunk with another request of the batch, and the others."""
        uses = Counter(c for i in indices for c in self.touched(i, reader))
        lone: list[int] = []
        shared: list[int] = []
        for i in indices:
            (shared if any(uses[c] > 1 for c in self.touched(i, reader)) else lone).append(i)
        return lone, shared

    def _parallel_rounds(self, reader: ChunkedReader, indices: list[int]) -> bool:
        """Whether to fetch in rounds because the source decodes a round's chunks in parallel (tensorstore).

        The reader decides ([`parallel_fetch()`][lazystack.io.chunked.ChunkedReader.parallel_fetch]):
        a Zarr reader on the ``tensorstore`` engine says so; on ``auto`` or
        ``direct`` the chunks are decoded on the cores here, chunk by chunk.
        """
        return reader.parallel_fetch(len({c for i in indices for c in self.touched(i, reader)}))

    def _split_fast(self, reader: ChunkedReader, indices: list[int]) -> tuple[list[int], list[int]]:
        """Split ``indices`` into requests to scatter and requests to stream, sharing no chunk.

        Fast-path requests (every channel, wholly inside, an identity view)
        are scattered, unless they share a chunk (transitively) with a
        request off the fast path: a chunk is read once either way.
        """
        fast = [i for i in indices if i in self.sizes]
        if len(fast) == len(indices) or not fast:
            return fast, [i for i in indices if i not in self.sizes]
        scattered: list[int] = []
        streamed: list[int] = []
        for group in _components([(i, self.touched(i, reader)) for i in indices]):
            to = scattered if all(i in self.sizes for i, _ in group) else streamed
            to.extend(i for i, _ in group)
        return scattered, streamed

    def _new_blocks(self, indices: list[int]) -> dict[int, np.ndarray]:
        """An empty ``float32`` block per fast-path request, its region's shape."""
        # a fast-path request's region is never None (it lies wholly inside the image)
        return {i: np.empty([s.stop - s.start for s in self.regions[i] or ()], dtype=np.float32) for i in indices}

    def _finish(self, blocks: dict[int, np.ndarray]) -> None:
        """Fast-path requests' patches from their filled blocks."""
        for i, block in blocks.items():
            # None (a reader returning the wrong shape) is left to extract_patch, which reports it
            self.out[i] = self.reqs[i][0].patch_from_region(block, self.sizes[i])

    def _scatter(self, reader: ChunkedReader, indices: list[int]) -> None:
        """Serve fast-path requests chunk by chunk: each chunk read once and copied into every patch it feeds.

        The cache is looked up once per chunk, in the calling thread; the
        chunks it lacks are decoded first, in grid order, then the ones it
        holds follow, all dealt one at a time over the cores. Each chunk is
        copied (cast to ``float32``) straight into the patches it feeds and
        then dropped: besides the chunks the cache holds, one decoded chunk
        per core is alive at a time, and no request goes through a read of
        its own.
        """
        grid = reader.chunk_grid
        dtype = reader.dtype
        regions = self.regions
        blocks = self._new_blocks(indices)
        uses: dict[ChunkIndex, list[tuple[np.ndarray, tuple[slice, ...], tuple[slice, ...], int]]] = {}
        for i in indices:
            block = blocks[i]
            for idx, src, dst in self.pieces(i, reader):
                found = uses.get(idx)
                if found is None:
                    uses[idx] = [(block, src, dst, i)]
                else:
                    found.append((block, src, dst, i))

        cache = reader.cache
        if cache is not None and not cache.enabled:
            cache = None
        token = reader.token
        # the chunks the cache holds are looked up here, once: dealt last (a copy each), after the decodes
        held: dict[ChunkIndex, np.ndarray] = {}
        order = sorted(uses)
        if cache is not None:
            for idx in order:
                chunk = cache.get((token, idx))
                if chunk is not None:
                    held[idx] = chunk
            if held:
                order = [idx for idx in order if idx not in held] + list(held)

        def place(idx: ChunkIndex) -> None:
            self.go_on()
            chunk = held.get(idx)
            if chunk is None:
                chunk = reader.fetch_chunk(idx)
                if cache is not None:
                    # kept only when read again soon (put_if_seen): a chunk read once is dropped after its copies,
                    # and the next decode reuses its memory, still in the CPU's cache
                    cache.put_if_seen((token, idx), chunk)
            if chunk.dtype != dtype:
                chunk = chunk.astype(dtype)  # as a read casts it, before the cast to float32
            for block, src, dst, i in uses[idx]:
                target = block[dst]
                piece = chunk[src]
                if piece.shape != target.shape:  # a chunk too small for its grid cell: an error, never broadcast
                    copy_piece(block, idx, chunk, src, dst, regions[i], grid)  # type: ignore[arg-type]  # raises
                target[...] = piece

        # held chunks too, as before: numpy's casting copies release the GIL, so both cores can copy (copying a
        # wholly held batch in the calling thread alone measured 0.88-0.94x in bench_loader, on a loaded machine)
        fetch_concurrently(order, place, parallel=reader.capabilities.compressed)
        self._finish(blocks)

    def _stream(self, reader: ChunkedReader, items: list[_Item]) -> None:
        """Serve requests through their stacks, each core streaming through a chunk-disjoint share."""
        shares = _shares(items, _chunked.CPU_WORKERS)  # read here: tests patch the one name
        bound = max(1, self.max_bytes // len(shares))

        def extract(i: int, proxy: ChunkedReader, views: dict[tuple[int, int], Any]) -> None:
            self.go_on()
            self.extract(i, proxy, views)

        def run(j: int) -> None:
            views: dict[tuple[int, int], Any] = {}
            _stream(reader, shares[j], lambda i, proxy: extract(i, proxy, views), bound)

        fetch_concurrently(range(len(shares)), run, min_parallel=2)

    def _serve_regions(self, reader: ChunkedReader, reads: Any, indices: list[int]) -> None:
        """Serve from region reads (tensorstore, cache off), except requests that share a chunk.

        A region read decodes every chunk it touches, so requests sharing a
        chunk with another request of the batch (neighbours, a chunk-local
        sampler's patches) are served chunk by chunk instead, each shared
        chunk decoded once, while tensorstore reads the lone regions in its
        own threads.
        """
        self.go_on()  # not once the region reads are started: their results are all taken
        lone, shared = self._split_shared(reader, indices)
        started: list[int] = []
        for i in lone:
            region = self.regions[i]
            if region is not None and all(s.stop > s.start for s in region):
                reads.start(region, as_float32=i in self.sizes)  # its patch is the region as float32
                started.append(i)
        if shared:
            self._serve_chunks(reader, shared)
        proxy = _RegionReader(reader)
        views: dict[tuple[int, int], Any] = {}
        for i, data in zip(started, reads.results(), strict=True):
            size = self.sizes.get(i)
            patch = None if size is None else self.reqs[i][0].patch_from_region(data, size)
            if patch is not None:
                self.out[i] = patch
            else:
                region = self.regions[i]
                assert region is not None
                proxy.hold(region, data)
                self.extract(i, proxy, views)
        done = set(started).union(shared)
        for i in lone:
            if i not in done:
                self.extract(i, proxy, views)

    def _serve_rounds(self, reader: ChunkedReader, items: list[_Item]) -> None:
        """All the chunks of a round in one fetch (concurrent I/O or native threads), at most ``max_bytes`` a round.

        Requests go in the order of the first chunk they touch, so that
        requests sharing chunks fall in the same round: a chunk needed in two
        rounds is fetched twice unless the cache still holds it. A fast-path
        request's patch is filled straight from the round's chunks, each
        piece cast once to ``float32`` (no read of its own, no intermediate
        block in the stored dtype); the others go through their stacks.
        """
        nbytes = reader.chunk_grid.chunk_nbytes(reader.dtype.itemsize)
        items = sorted(items, key=lambda item: min(item[1], default=()))
        if reader.capabilities.remote:
            self._pipeline_rounds(reader, list(_split(items, nbytes, self.max_bytes)))
            return
        for group in _split(items, nbytes, self.max_bytes):
            self.go_on()
            wanted = list(dict.fromkeys(c for _, touched in group for c in touched))
            chunks = reader.read_chunks(wanted) if wanted else {}
            # fast-path requests: each chunk piece cast once, straight into its float32 patch (as _scatter does);
            # the others through their stacks
            placed = self._place(reader, [i for i, _ in group if i in self.sizes], chunks)
            proxy = _PrefetchedReader(reader, chunks)
            views: dict[tuple[int, int], Any] = {}
            for i, _ in group:
                if i not in placed:
                    self.extract(i, proxy, views)
            # let go of this round's chunks before the next round is fetched (else two rounds are alive at once)
            del proxy, views, chunks

    def _place(self, reader: ChunkedReader, indices: list[int], chunks: Mapping[ChunkIndex, np.ndarray]) -> set[int]:
        """Fill the fast-path requests ``indices`` straight from ``chunks`` (each piece cast once); return them."""
        grid = reader.chunk_grid
        dtype = reader.dtype
        blocks = self._new_blocks(indices)
        cast: dict[ChunkIndex, np.ndarray] = {}  # chunks not in the reader's dtype, each cast once for the round
        for i, block in blocks.items():
            region = self.regions[i]
            assert region is not None
            for idx, src, dst in self.pieces(i, reader):
                chunk = chunks[idx]
                if chunk.dtype != dtype:
                    held = cast.get(idx)
                    if held is None:
                        held = cast[idx] = chunk.astype(dtype)  # as a read casts it, before the cast to float32
                    chunk = held
                copy_piece(block, idx, chunk, src, dst, region, grid)
        self._finish(blocks)
        return set(blocks)

    def _pipeline_rounds(self, reader: ChunkedReader, groups: list[list[_Item]]) -> None:
        """Remote rounds, two in flight: round ``k + 1`` is fetched while round ``k`` is fetched and served.

        Each round is one network round trip, so a batch of two rounds (a
        training batch of 3-D patches under the 16 MiB bound) waits for one
        round trip, not two, and a longer batch about half its rounds. At most
        two rounds' chunks are alive at once (``2 * max_batch_bytes``): round
        ``k + 2`` is started once round ``k`` is served and released. A chunk
        of round ``k + 1`` that round ``k`` also needs is not fetched again: it
        is handed over from round ``k`` (one needed by rounds further apart is
        fetched again unless the cache holds it).
        """
        wanted = [list(dict.fromkeys(c for _, touched in group for c in touched)) for group in groups]

        def fetch(k: int) -> dict[ChunkIndex, np.ndarray]:
            prev = set(wanted[k - 1]) if k else set()
            todo = [c for c in wanted[k] if c not in prev]
            return reader.read_chunks(todo) if todo else {}

        pending: deque[Future[dict[ChunkIndex, np.ndarray]]] = deque()
        try:
            if len(groups) > 1:
                pending.append(_pool("round").submit(fetch, 1))
            chunks = fetch(0)
            for k, group in enumerate(groups):
                self.go_on()
                proxy = _PrefetchedReader(reader, chunks)
                views: dict[tuple[int, int], Any] = {}
                for i, _ in group:
                    self.extract(i, proxy, views)
                if k + 1 == len(groups):
                    break
                carry = {c: chunks[c] for c in wanted[k + 1] if c in chunks}  # the next round's share of this one
                del proxy, views, chunks  # released before round k + 2 is fetched
                if k + 2 < len(groups):
                    pending.append(_pool("round").submit(fetch, k + 2))
                chunks = pending[0].result()  # left in ``pending`` until done: an interrupt here waits for it
                pending.popleft()
                chunks.update(carry)
                del carry
        finally:
            for future in pending:  # a failure: wait for the rounds in flight (their chunks are dropped)
                if not future.cancel():
                    future.exception()


def extract_patches(
    requests: Iterable[PatchRequest], *, max_batch_bytes: int = DEFAULT_MAX_BATCH_BYTES
) -> list[NDArray[np.float32]]:
    """Extract many patches, from one stack or many, reading each touched chunk once.

    Parameters
    ----------
    requests : iterable of tuple
        ``(stack, sample_idx, channels, coords, patch_size)`` per patch; the
        last four as for [`extract_patch()`][lazystack.LazyImageStack.extract_patch].
    max_batch_bytes : int, optional
        Bound on the decoded chunk bytes held at once for one source
        (default 16 MiB; the chunks of one request are held together even
        when they are more): a batch fetched in rounds takes several, a
        streamed one drops chunks early (a chunk dropped and needed again is
        read again, from the cache if it holds it). A remote source has two
        rounds in flight, so it holds up to twice the bound. Region reads
        (tensorstore, cache off) hold no chunks and are not bounded by it.

    Returns
    -------
    list of numpy.ndarray
        One ``float32`` ``C(Z)YX`` patch per request, in order, equal to the
        one-by-one ``extract_patch`` results.

    Raises
    ------
    PatchError
        If a request is not a 5-tuple; the errors of ``extract_patch`` for
        an invalid sample, channel or patch geometry.

    Examples
    --------
    >>> import numpy as np, zarr
    >>> from lazystack import LazyImageStack
    >>> from lazystack.sources.zarr.engines import ZarrArrayReader
    >>> z = zarr.create_array(store={}, shape=(2, 100, 100), chunks=(1, 32, 32), dtype="uint8")
    >>> z[:] = 7
    >>> stack = LazyImageStack(ZarrArrayReader(z), "SYX")
    >>> patches = extract_patches([(stack, 0, None, (0, 0), (40, 40)), (stack, 1, None, (90, 90), (20, 20))])
    >>> [p.shape for p in patches], float(patches[1][0, -1, -1])
    ([(1, 40, 40), (1, 20, 20)], 0.0)
    """
    reqs = list(requests)
    for i, r in enumerate(reqs):
        if not isinstance(r, (tuple, list)) or len(r) != 5:
            msg = (
                f"patch request {i} is {r!r}: expected a tuple (stack, sample_idx, channels, coords, patch_size); "
                "for one stack use stack.extract_patches([(sample_idx, channels, coords, patch_size), ...])"
            )
            raise PatchError(msg)
    batch = _Batch(reqs, max_batch_bytes)
    groups: dict[int, tuple[ChunkedReader, list[int]]] = {}
    readers: dict[int, ChunkedReader | None] = {}
    for i, r in enumerate(reqs):
        key = id(r[0])
        if key not in readers:
            readers[key] = _chunked_reader(r[0])
        reader = readers[key]
        if reader is None:
            continue
        batch.plan(i)
        groups.setdefault(id(reader), (reader, []))[1].append(i)

    out = batch.out
    work = list(groups.values())
    if len(work) == 1:
        batch.serve(*work[0])
    elif work:
        futures = [_pool("batch").submit(batch.serve_share, reader, items) for reader, items in work]
        failure: BaseException | None = None
        try:
            for f in futures:
                f.result()
        except BaseException as exc:  # a share failed (or the caller was interrupted): the others may still be reading
            batch.stop.set()  # they leave at their next chunk, request or round
            for f in futures:
                f.cancel()
            wait(futures)  # no share goes on, holding its chunks or a file, after the error has left
            if not isinstance(exc, _StoppedError):
                raise
            # a share stopped by another one's failure: that failure is the error, raised below, outside this
            # handler, as it was raised (``raise ... from None`` here wiped its ``__cause__`` and hid its context)
            errors = [f.exception() for f in futures if not f.cancelled()]
            failure = next((e for e in errors if e is not None and not isinstance(e, _StoppedError)), exc)
            if failure is exc:
                raise
        if failure is not None:
            raise failure
    for i, r in enumerate(reqs):
        if out[i] is None:
            out[i] = r[0].extract_patch(*r[1:])
    return out  # type: ignore[return-value]
