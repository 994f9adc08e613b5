"""The generic chunked region reader, checked against numpy slicing."""

from __future__ import annotations

import itertools
import pickle
import threading
import weakref
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lazystack import LazyImageStack
from lazystack.io import chunked
from lazystack.io.cache import ChunkCache, get_chunk_cache, set_chunk_cache_size
from lazystack.io.chunked import (
    ChunkedReader,
    ChunkGrid,
    ChunkIndex,
    fetch_concurrently,
    get_chunks,
    normalize_key,
    read_region,
)
from lazystack.io.reader import Reader


class NumpyChunks(ChunkedReader):
    """A chunked reader over a numpy array that records what it was asked to decode."""

    def __init__(self, data: np.ndarray, chunks: Sequence[int] | Sequence[Sequence[int]], *, pad: bool = False) -> None:
        super().__init__(data.shape, data.dtype, chunks, token=f"numpy-test-{id(self)}")
        self.data = data
        self.pad = pad
        self.calls: list[list[ChunkIndex]] = []
        self.threads: set[str] = set()
        self._lock = threading.Lock()

    def _one(self, idx: ChunkIndex) -> np.ndarray:
        with self._lock:
            self.threads.add(threading.current_thread().name)
        block = self.data[self.chunk_grid.chunk_region(idx)].copy()
        if self.pad:  # a full-size edge chunk, as zarr stores them, padded with garbage
            full = np.full(self.chunk_grid.chunk_shape, 99, dtype=self.data.dtype)
            full[tuple(slice(0, n) for n in block.shape)] = block
            return full
        return block

    def fetch_chunks(self, indices: Sequence[ChunkIndex]) -> Mapping[ChunkIndex, np.ndarray]:
        self.calls.append(list(indices))
        return fetch_concurrently(indices, self._one)

    def __getstate__(self) -> dict[str, object]:
        state = dict(self.__dict__)
        del state["_lock"]
        return state

    def __setstate__(self, state: dict[str, object]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()


@pytest.fixture(params=["cache", "no-cache"])
def cache_mode(request: pytest.FixtureRequest) -> Iterator[str]:
    previous = set_chunk_cache_size(32 * 2**20 if request.param == "cache" else 0)
    get_chunk_cache().clear()
    yield request.param
    get_chunk_cache().clear()
    set_chunk_cache_size(previous)


# -- keys ------------------------------------------------------------------------------------
def test_normalize_key_forms() -> None:
    shape = (4, 10, 20)
    assert normalize_key((1, slice(2, 5), slice(None)), shape) == ((slice(1, 2), slice(2, 5), slice(0, 20)), (0,))
    assert normalize_key((-1,), shape) == ((slice(3, 4), slice(0, 10), slice(0, 20)), (0,))
    assert normalize_key((Ellipsis, 3), shape) == ((slice(0, 4), slice(0, 10), slice(3, 4)), (2,))
    assert normalize_key(np.int64(2), shape)[0][0] == slice(2, 3)
    assert normalize_key((slice(-3, None), slice(8, 2)), shape)[0][:2] == (slice(1, 4), slice(8, 8))


@pytest.mark.parametrize(
    ("key", "error", "match"),
    [
        ((4,), IndexError, "out of bounds for axis 0 of size 4"),
        ((0, 0, 0, 0), IndexError, "too many indices"),
        ((slice(0, 4, 2),), IndexError, "step-1"),
        (("a",), TypeError, "must be an int or a slice"),
    ],
)
def test_normalize_key_rejects(key: tuple[object, ...], error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        normalize_key(key, (4, 10, 20))


# -- the grid --------------------------------------------------------------------------------
def _brute_touched(grid: ChunkGrid, region: Sequence[slice]) -> list[ChunkIndex]:
    out = []
    for idx in itertools.product(*(range(n) for n in map(len, grid.sizes))):
        cr = grid.chunk_region(idx)
        if all(max(r.start, c.start) < min(r.stop, c.stop) for r, c in zip(region, cr, strict=True)):
            out.append(idx)
    return out


@pytest.mark.parametrize("chunks", [(3, 4), ((2, 5, 3), (1, 1, 6, 4))])
def test_grid_touched_matches_brute_force(chunks: Sequence[int] | Sequence[Sequence[int]]) -> None:
    grid = ChunkGrid((10, 12), chunks)
    rng = np.random.default_rng(0)
    for _ in range(200):
        lo = rng.integers(0, (10, 12))
        hi = lo + rng.integers(1, 8, size=2)
        region = tuple(slice(int(a), int(min(b, n))) for a, b, n in zip(lo, hi, (10, 12), strict=True))
        assert grid.touched(region) == _brute_touched(grid, region)
        assert grid.n_touched(region) == len(_brute_touched(grid, region))


@pytest.mark.parametrize(
    ("shape", "chunks"),
    [((10, 12), (3, 4)), ((10, 12), ((2, 5, 3), (1, 1, 6, 4))), ((7, 10, 12), (3, 4, 5)), ((5, 9), (5, 9))],
)
def test_grid_pieces_cut_each_touched_chunk_into_its_place(
    shape: tuple[int, ...], chunks: Sequence[int] | Sequence[Sequence[int]]
) -> None:
    """pieces() against numpy: every touched chunk once, in C order, its part landing where it belongs."""
    grid = ChunkGrid(shape, chunks)
    arr = np.arange(np.prod(shape)).reshape(shape)
    rng = np.random.default_rng(1)
    for _ in range(200):
        lo = rng.integers(0, shape)
        hi = lo + rng.integers(1, 9, size=len(shape))
        region = tuple(slice(int(a), int(min(b, n))) for a, b, n in zip(lo, hi, shape, strict=True))
        pieces = grid.pieces(region)
        assert [p[0] for p in pieces] == _brute_touched(grid, region)
        out = np.full(tuple(s.stop - s.start for s in region), -1)
        for idx, src, dst in pieces:
            chunk = arr[grid.chunk_region(idx)]
            assert (out[dst] == -1).all(), f"{idx} overlaps another piece"
            out[dst] = chunk[src]
        np.testing.assert_array_equal(out, arr[region])
    assert grid.pieces((slice(3, 3),) + (slice(0, 4),) * (len(shape) - 1)) == []  # an empty region touches nothing


def test_grid_shapes_and_errors() -> None:
    grid = ChunkGrid((10, 7), (4, 7))
    assert grid.sizes == ((4, 4, 2), (7,))
    assert grid.chunk_region((2, 0)) == (slice(8, 10), slice(0, 7))
    assert grid.chunk_nbytes(2) == 4 * 7 * 2
    assert grid.touched((slice(3, 3), slice(0, 7))) == []
    with pytest.raises(ValueError, match="do not add up"):
        ChunkGrid((10,), ((3, 3),))
    with pytest.raises(ValueError, match="one entry per axis"):
        ChunkGrid((10, 10), (3,))


# -- reading ---------------------------------------------------------------------------------
def _regions(rng: np.random.Generator, shape: Sequence[int], n: int) -> Iterator[tuple[slice, ...]]:
    for _ in range(n):
        lo = [int(rng.integers(0, s)) for s in shape]
        yield tuple(slice(a, int(rng.integers(a + 1, s + 1))) for a, s in zip(lo, shape, strict=True))


@pytest.mark.parametrize(
    ("shape", "chunks", "pad"),
    [
        ((37, 41), (8, 16), False),
        ((37, 41), (8, 16), True),
        ((5, 30, 33), (2, 7, 10), False),
        ((5, 30, 33), (2, 7, 10), True),
        ((23, 19), ((5, 10, 8), (19,)), False),
        ((50,), (50,), False),
    ],
)
def test_reads_match_numpy(cache_mode: str, shape: tuple[int, ...], chunks: tuple[int, ...], pad: bool) -> None:
    rng = np.random.default_rng(sum(shape))
    data = rng.integers(0, 1000, size=shape).astype(np.uint16)
    reader = NumpyChunks(data, chunks, pad=pad)
    for region in _regions(rng, shape, 60):
        got = reader[region]
        np.testing.assert_array_equal(got, data[region])
        assert got.dtype == data.dtype
    np.testing.assert_array_equal(reader[...], data)
    np.testing.assert_array_equal(np.asarray(reader), data)


def test_ints_drop_axes_like_numpy(cache_mode: str) -> None:
    data = np.arange(4 * 9 * 10).reshape(4, 9, 10)
    reader = NumpyChunks(data, (1, 4, 4))
    for key in [(2, slice(1, 7), 3), (0,), (-1, -1, -1), (slice(None), 5)]:
        np.testing.assert_array_equal(reader[key], data[key])


def test_only_touched_chunks_are_fetched_once_with_cache() -> None:
    data = np.arange(100 * 100, dtype=np.int32).reshape(100, 100)
    reader = NumpyChunks(data, (10, 10))
    cache = ChunkCache(10**6)
    out = read_region(
        (slice(15, 35), slice(5, 12)), reader.chunk_grid, reader.fetch_chunks, dtype=data.dtype, cache=cache, token="t"
    )
    np.testing.assert_array_equal(out, data[15:35, 5:12])
    assert len(reader.calls) == 1
    assert sorted(reader.calls[0]) == [(1, 0), (1, 1), (2, 0), (2, 1), (3, 0), (3, 1)]
    # overlapping region: only the new chunks are fetched
    read_region(
        (slice(25, 45), slice(5, 12)), reader.chunk_grid, reader.fetch_chunks, dtype=data.dtype, cache=cache, token="t"
    )
    assert sorted(reader.calls[1]) == [(4, 0), (4, 1)]
    # same region again: no fetch at all
    read_region(
        (slice(25, 45), slice(5, 12)), reader.chunk_grid, reader.fetch_chunks, dtype=data.dtype, cache=cache, token="t"
    )
    assert len(reader.calls) == 2
    assert cache.hits >= 6


def test_cached_single_chunk_read_is_a_read_only_view(cache_mode: str) -> None:
    data = np.arange(64, dtype=np.float32).reshape(8, 8)
    reader = NumpyChunks(data, (4, 4))
    reader[0:2, 0:2]
    block = reader[0:2, 0:2]
    np.testing.assert_array_equal(block, data[0:2, 0:2])
    if cache_mode == "cache":
        assert not block.flags.writeable
        assert len(reader.calls) == 1
    else:
        assert len(reader.calls) == 2


@pytest.mark.parametrize("pad", [False, True])
def test_read_cached_serves_only_what_the_cache_holds(cache_mode: str, pad: bool) -> None:
    """read_cached: None (nothing fetched, nothing counted) unless every touched chunk is cached; then read()'s data."""
    data = np.arange(30 * 22, dtype=np.uint16).reshape(30, 22)
    reader = NumpyChunks(data, (8, 6), pad=pad)
    cache = get_chunk_cache()
    one, four, edge = (slice(17, 23), slice(13, 17)), (slice(5, 12), slice(4, 9)), (slice(26, 30), slice(19, 22))
    for region in (one, four, edge):
        assert reader.read_cached(region) is None
    assert reader.calls == []
    assert (cache.hits, cache.misses) == (0, 0)
    reader.read(four)  # caches chunks (0..1, 0..1) only, when the cache is on
    fetched = len(reader.calls)
    if cache_mode == "no-cache":
        assert reader.read_cached(four) is None
        return
    hits = cache.hits
    got = reader.read_cached(four)
    assert got is not None
    np.testing.assert_array_equal(got, data[four])
    assert cache.hits == hits + 4
    assert reader.read_cached((slice(5, 12), slice(4, 13))) is None  # chunk column 2 not cached
    assert cache.misses == 4  # only read()'s own misses
    reader.read(one)
    reader.read(edge)
    for region in (one, edge):
        view = reader.read_cached(region)
        assert view is not None
        assert not view.flags.writeable  # a view of the cached chunk, as read() returns it
        np.testing.assert_array_equal(view, data[region])
    assembled = reader.read_cached(four)
    assert assembled is not None
    assert assembled.dtype == data.dtype
    assert assembled.flags.writeable  # a new array, never the cache's memory
    assert len(reader.calls) == fetched + 2  # read_cached itself never fetched


def test_read_cached_refuses_a_chunk_too_small_for_its_cell() -> None:
    previous = set_chunk_cache_size(2**20)
    try:
        reader = NumpyChunks(np.zeros((8, 8), np.uint8), (4, 4))
        get_chunk_cache().put((reader.token, (0, 0)), np.zeros((4, 1), np.uint8))
        with pytest.raises(ValueError, match="too small"):
            reader.read_cached((slice(0, 4), slice(0, 4)))
        get_chunk_cache().put((reader.token, (0, 1)), np.zeros((1, 4), np.uint8))
        with pytest.raises(ValueError, match="too small"):
            reader.read_cached((slice(0, 2), slice(2, 6)))
    finally:
        get_chunk_cache().clear()
        set_chunk_cache_size(previous)


def test_several_chunks_are_fetched_in_the_shared_pool(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(chunked, "CPU_WORKERS", 2)
    data = np.arange(1600, dtype=np.int32).reshape(40, 40)
    reader = NumpyChunks(data, (10, 10))
    indices = [(i, j) for i in range(4) for j in range(4)]
    two = threading.Barrier(2, timeout=60)  # the first two chunks are taken by two threads at once

    def one(idx: ChunkIndex) -> np.ndarray:
        if idx in indices[:2]:
            two.wait()
        return reader._one(idx)

    got = fetch_concurrently(indices, one)
    assert list(got) == indices
    for idx, block in got.items():
        np.testing.assert_array_equal(block, data[reader.chunk_grid.chunk_region(idx)])
    assert any(name.startswith("lazystack-io") for name in reader.threads)
    assert threading.current_thread().name in reader.threads  # the caller decodes its own share
    single = NumpyChunks(data, (10, 10))
    fetch_concurrently([(0, 0)], single._one)
    assert single.threads == {threading.current_thread().name}


def test_cpu_bound_work_is_dealt_to_one_thread_per_core(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(chunked, "CPU_WORKERS", 2)
    monkeypatch.setattr(chunked, "PARALLEL_MIN_CHUNKS", 4)
    seen: dict[ChunkIndex, str] = {}
    two = threading.Barrier(2, timeout=60)  # in the first call, the first two indices are taken by two threads at once
    first_done = False

    def one(idx: ChunkIndex) -> int:
        if idx[0] < 2 and not first_done:
            two.wait()
        seen[idx] = threading.current_thread().name
        return idx[0]

    got = fetch_concurrently([(i,) for i in range(10)], one)
    first_done = True
    assert got == {(i,): i for i in range(10)}
    assert list(got) == [(i,) for i in range(10)]
    names = set(seen.values())
    assert len(names) == 2  # the caller and one pool thread (CPU_WORKERS), each taking indices one at a time
    assert threading.current_thread().name in names
    assert any(name.startswith("lazystack-io") for name in names)
    # fewer chunks than the threshold, or a single core: all in the calling thread
    seen.clear()
    fetch_concurrently([(i,) for i in range(3)], one)
    assert set(seen.values()) == {threading.current_thread().name}
    monkeypatch.setattr(chunked, "CPU_WORKERS", 1)
    seen.clear()
    fetch_concurrently([(i,) for i in range(10)], one)
    assert set(seen.values()) == {threading.current_thread().name}


def test_io_bound_work_gives_every_index_its_own_task(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(chunked, "CPU_WORKERS", 1)  # ignored for I/O-bound work
    barrier = threading.Barrier(4, timeout=60)

    def one(idx: ChunkIndex) -> int:
        barrier.wait()  # only returns once four indices are being fetched at the same time
        return idx[0]

    assert fetch_concurrently([(i,) for i in range(4)], one, min_parallel=2) == {(i,): i for i in range(4)}


def test_an_error_in_a_share_propagates(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(chunked, "CPU_WORKERS", 2)

    def one(idx: ChunkIndex) -> int:
        if idx == (15,):
            msg = "chunk 15 is corrupt"
            raise ValueError(msg)
        return 0

    with pytest.raises(ValueError, match="chunk 15 is corrupt"):
        fetch_concurrently([(i,) for i in range(16)], one)


@pytest.mark.parametrize("io_bound", [False, True])
def test_an_error_returns_only_once_the_other_fetches_have_stopped(
    monkeypatch: pytest.MonkeyPatch, io_bound: bool
) -> None:
    """The caller's fetch fails while a pool thread is mid-fetch: the error leaves once that fetch is done.

    (Else the pool thread goes on decoding after the batch failed, holding its chunk: a batch test counting the
    chunks alive after an error failed once under load.)
    """
    monkeypatch.setattr(chunked, "CPU_WORKERS", 2)
    caller = threading.current_thread()
    started, release = threading.Event(), threading.Event()
    finished: list[ChunkIndex] = []

    def one(idx: ChunkIndex) -> int:
        if threading.current_thread() is caller:
            assert started.wait(60)
            threading.Timer(0.3, release.set).start()  # released after the error has been raised
            msg = f"chunk {idx} is corrupt"
            raise ValueError(msg)
        started.set()
        assert release.wait(60)
        finished.append(idx)
        return 0

    kwargs = {"min_parallel": 2} if io_bound else {"parallel": True}
    with pytest.raises(ValueError, match="is corrupt"):
        fetch_concurrently([(i,) for i in range(4)], one, **kwargs)  # type: ignore[arg-type]
    assert finished  # the pool thread's fetch ended before the error reached us


def test_the_caller_does_not_wait_for_a_pool_thread_that_never_started(monkeypatch: pytest.MonkeyPatch) -> None:
    """The pool is busy elsewhere: the caller takes every index itself and returns without waiting for it.

    (Waiting for the queued task, which would find nothing left, costs a thread wake-up on a loaded machine.)
    """
    monkeypatch.setattr(chunked, "CPU_WORKERS", 2)
    busy = ThreadPoolExecutor(1)
    release = threading.Event()
    blocker = busy.submit(release.wait, 120)
    # frees the pool's thread later: a caller waiting for it returns after (60 s: the 8 reads surely end before)
    timer = threading.Timer(60, release.set)
    timer.start()
    monkeypatch.setattr(chunked, "shared_executor", lambda: busy)
    try:
        seen: list[str] = []

        def one(idx: ChunkIndex) -> np.ndarray:
            seen.append(threading.current_thread().name)
            return np.full(4, idx[0])

        got = fetch_concurrently([(i,) for i in range(8)], one, parallel=True)
        assert not release.is_set()  # returned while the pool's only thread was still busy
        assert {k: int(v[0]) for k, v in got.items()} == {(i,): i for i in range(8)}
        assert set(seen) == {threading.current_thread().name}
        refs = [weakref.ref(v) for v in got.values()]
        del got
        assert not any(r() is not None for r in refs)  # the cancelled task, still queued, holds none of them
        assert not release.is_set()
    finally:
        timer.cancel()
        release.set()
        blocker.result()
        busy.shutdown()


class _CountingChunks(NumpyChunks):
    """Records single-chunk fetches separately."""

    def __init__(self, data: np.ndarray, chunks: Sequence[int]) -> None:
        super().__init__(data, chunks)
        self.single: list[ChunkIndex] = []

    def fetch_chunk(self, idx: ChunkIndex) -> np.ndarray:
        self.single.append(idx)
        return self._one(idx)


def test_a_region_in_one_chunk_takes_the_single_chunk_path(cache_mode: str) -> None:
    data = np.arange(40 * 30, dtype=np.uint16).reshape(40, 30)
    reader = _CountingChunks(data, (16, 16))
    cache = get_chunk_cache()
    np.testing.assert_array_equal(reader[17:30, 2:14], data[17:30, 2:14])
    np.testing.assert_array_equal(reader[33:40, 20:30], data[33:40, 20:30])  # an edge chunk, cut by the array
    assert reader.single == [(1, 0), (2, 1)]
    assert reader.calls == []  # no batched fetch for one chunk
    np.testing.assert_array_equal(reader[18:20, 3:4], data[18:20, 3:4])
    if cache_mode == "cache":
        assert reader.single == [(1, 0), (2, 1)]  # served from the cache
        stats = cache.stats()
        assert (stats.hits, stats.misses) == (1, 2)
    else:
        assert reader.single == [(1, 0), (2, 1), (1, 0)]
    before = len(reader.single)
    np.testing.assert_array_equal(reader[10:20, 10:20], data[10:20, 10:20])  # four chunks
    if cache_mode == "cache":
        assert len(reader.calls) == 1  # the batched path, through the cache
    else:
        assert reader.calls == []  # streamed: each chunk fetched, copied into place and dropped
        assert sorted(reader.single[before:]) == [(0, 0), (0, 1), (1, 0), (1, 1)]


class _AliveChunks(NumpyChunks):
    """Counts the fetched chunks still referenced somewhere."""

    def __init__(self, data: np.ndarray, chunks: Sequence[int], *, short: bool = False) -> None:
        super().__init__(data, chunks)
        self.alive = self.peak = 0
        self.short = short
        self._lock = threading.Lock()

    def _gone(self) -> None:
        with self._lock:
            self.alive -= 1

    def fetch_chunk(self, idx: ChunkIndex) -> np.ndarray:
        out = self._one(idx).copy()
        if self.short:
            out = out[:-1]
        with self._lock:
            self.alive += 1
            self.peak = max(self.peak, self.alive)
        weakref.finalize(out, self._gone)
        return out


@pytest.mark.parametrize("workers", [1, 2])
def test_a_region_over_many_chunks_with_the_cache_off_is_streamed(
    monkeypatch: pytest.MonkeyPatch, workers: int
) -> None:
    monkeypatch.setattr(chunked, "CPU_WORKERS", workers)
    monkeypatch.setattr(chunked, "PARALLEL_MIN_BYTES", 1)
    previous = set_chunk_cache_size(0)
    try:
        data = np.random.default_rng(3).random((6, 50, 70)).astype(np.float32)
        reader = _AliveChunks(data, (2, 8, 8))
        np.testing.assert_array_equal(reader[1:6, 3:47, 5:69], data[1:6, 3:47, 5:69])  # 3 x 6 x 9 chunks
        assert reader.calls == []
        assert 1 <= reader.peak <= workers  # one chunk in hand per thread, never the 162 of the region
        assert reader.alive == 0
        with pytest.raises(ValueError, match=r"chunk \(0, 0, 0\) has shape \(1, 8, 8\), too small"):
            _AliveChunks(data, (2, 8, 8), short=True)[0:2, 0:10, 0:10]
    finally:
        set_chunk_cache_size(previous)


def test_the_default_fetch_chunk_goes_through_fetch_chunks() -> None:
    data = np.arange(100, dtype=np.int64).reshape(10, 10)
    reader = NumpyChunks(data, (4, 4))
    np.testing.assert_array_equal(reader.fetch_chunk((1, 2)), data[4:8, 8:10])
    assert reader.calls == [[(1, 2)]]

    class Forgetful(NumpyChunks):
        def fetch_chunks(self, indices: Sequence[ChunkIndex]) -> Mapping[ChunkIndex, np.ndarray]:
            return {}

    with pytest.raises(KeyError, match=r"returned no chunk \(0, 0\)"):
        Forgetful(data, (4, 4)).fetch_chunk((0, 0))


def test_read_region_is_read() -> None:
    data = np.arange(64, dtype=np.uint8).reshape(8, 8)
    reader = NumpyChunks(data, (3, 3))
    region = (slice(1, 7), slice(2, 5))
    np.testing.assert_array_equal(reader.read_region(region), data[1:7, 2:5])


def test_a_fetcher_that_forgets_a_chunk_is_an_error() -> None:
    with pytest.raises(KeyError, match=r"returned no chunk \(1,\)"):
        get_chunks([(0,), (1,)], lambda idx: {(0,): np.zeros(3)}, cache=None, token="bad")


def test_empty_region_reads_nothing() -> None:
    reader = NumpyChunks(np.zeros((10, 10)), (5, 5))
    assert reader[3:3, :].shape == (0, 10)
    assert reader.calls == []


def test_reader_contract_and_pickle(cache_mode: str) -> None:
    data = np.arange(2 * 3 * 20 * 30, dtype=np.uint8).reshape(2, 3, 20, 30)
    reader = NumpyChunks(data, (1, 1, 8, 8))
    assert reader.shape == data.shape
    assert reader.dtype == data.dtype
    assert reader.chunks == ((1, 1), (1, 1, 1), (8, 8, 4), (8, 8, 8, 6))
    assert reader.token.startswith("numpy-test")
    clone = pickle.loads(pickle.dumps(reader))
    np.testing.assert_array_equal(clone[1, 2, 3:17, 5:29], data[1, 2, 3:17, 5:29])


def test_stack_over_a_chunked_reader_matches_a_numpy_stack(cache_mode: str) -> None:
    rng = np.random.default_rng(5)
    data = rng.random((3, 2, 40, 50)).astype(np.float32)
    lazy = LazyImageStack(NumpyChunks(data, (1, 2, 16, 16)), "TCYX")
    ref = LazyImageStack(data, "TCYX")
    for _ in range(30):
        s = int(rng.integers(0, 3))
        coords = (int(rng.integers(-10, 45)), int(rng.integers(-10, 45)))
        np.testing.assert_array_equal(
            lazy.extract_patch(s, [1, 0], coords, (16, 24)), ref.extract_patch(s, [1, 0], coords, (16, 24))
        )
    np.testing.assert_array_equal(lazy.data.compute(scheduler="sync"), ref.data.compute(scheduler="sync"))
    view = lazy.isel(X=slice(3, 40, 2))
    np.testing.assert_array_equal(
        view.extract_patch(2, None, (1, 1), (8, 8)), ref.isel(X=slice(3, 40, 2)).extract_patch(2, None, (1, 1), (8, 8))
    )


@settings(max_examples=60, deadline=None)
@given(
    shape=st.tuples(st.integers(1, 30), st.integers(1, 30)),
    chunks=st.tuples(st.integers(1, 12), st.integers(1, 12)),
    data=st.data(),
)
def test_property_any_region_any_grid(shape: tuple[int, int], chunks: tuple[int, int], data: st.DataObject) -> None:
    arr = np.arange(shape[0] * shape[1], dtype=np.int64).reshape(shape)
    reader = NumpyChunks(arr, chunks)
    cache = ChunkCache(10**6) if data.draw(st.booleans()) else None
    region = []
    for n in shape:
        a = data.draw(st.integers(0, n))
        b = data.draw(st.integers(a, n))
        region.append(slice(a, b))
    out = read_region(tuple(region), reader.chunk_grid, reader.fetch_chunks, dtype=arr.dtype, cache=cache, token="prop")
    np.testing.assert_array_equal(out, arr[tuple(region)])


def test_cache_counters_on_the_single_chunk_fast_path() -> None:
    previous = set_chunk_cache_size(2**20)
    cache = get_chunk_cache()
    cache.clear()
    try:
        data = np.arange(400, dtype=np.uint16).reshape(20, 20)
        reader = NumpyChunks(data, (10, 10))
        np.testing.assert_array_equal(reader[2:5, 3:9], data[2:5, 3:9])  # miss, fetched, stored
        np.testing.assert_array_equal(reader[1:9, 0:10], data[1:9, 0:10])  # hit on the fast path
        np.testing.assert_array_equal(reader[5:15, 5:8], data[5:15, 5:8])  # two chunks: one hit, one miss
        assert (cache.hits, cache.misses) == (2, 2)
        assert len(reader.calls) == 2
    finally:
        cache.clear()
        set_chunk_cache_size(previous)


def test_function_chunked_reader_and_as_chunked_reader(cache_mode: str) -> None:
    from lazystack.io.chunked import FunctionChunkedReader, as_chunked_reader

    data = np.arange(30 * 40, dtype=np.int16).reshape(30, 40)
    grid = ChunkGrid(data.shape, (8, 16))
    one = FunctionChunkedReader(data.shape, data.dtype, (8, 16), "f1", fetch_one=lambda i: data[grid.chunk_region(i)])
    many = FunctionChunkedReader(
        data.shape, data.dtype, (8, 16), "f2", fetch_many=lambda ii: {i: data[grid.chunk_region(i)] for i in ii}
    )
    for region in _regions(np.random.default_rng(9), data.shape, 30):
        np.testing.assert_array_equal(one[region], data[region])
        np.testing.assert_array_equal(many[region], data[region])
    with pytest.raises(TypeError, match="fetch_one=, fetch_many= or both"):
        FunctionChunkedReader(data.shape, data.dtype, (8, 16), "f3")

    class Wrapper(Reader):
        def as_chunked(self) -> ChunkedReader:
            return one

    assert as_chunked_reader(one) is one
    assert as_chunked_reader(Wrapper()) is one
    assert as_chunked_reader(data) is None
