"""The chunk cache's scan-resistant (2Q) admission, and the decoded bytes a batch holds at once.

Counted, never timed: cache hits / misses / bytes held, and the decoded
chunk bytes alive while a batch is extracted; every patch is compared with
numpy slicing.
"""

from __future__ import annotations

import gc
import threading
import weakref
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pytest

from lazystack import LazyImageStack
from lazystack.io.cache import GHOST_FRACTION, PROBATION_FRACTION, ChunkCache, get_chunk_cache, set_chunk_cache_size
from lazystack.io.chunked import ChunkedReader, ChunkIndex, fetch_concurrently
from lazystack.io.reader import ReaderCapabilities
from lazystack.ops.batch import DEFAULT_MAX_BATCH_BYTES, extract_patches


def _held(cache: ChunkCache) -> int:
    return sum(a.nbytes for a in [*cache._main.values(), *cache._probation.values()])


# -- the policy on its own ------------------------------------------------------------------
def test_default_policies() -> None:
    assert get_chunk_cache().policy == "2q"
    assert ChunkCache(10).policy == "lru"
    with pytest.raises(ValueError, match=r"invalid cache policy 'fifo': expected 'lru' or '2q'"):
        ChunkCache(10, policy="fifo")


def test_probation_ghost_and_main_lru_order() -> None:
    """Chunks read once wait on probation (oldest dropped first); re-used ones are kept in LRU order."""
    cache = ChunkCache(1000, policy="2q")  # probation: 250 bytes (two 100-byte chunks)
    assert PROBATION_FRACTION == 0.25
    assert GHOST_FRACTION == 0.5
    for i in range(5):
        cache.put(i, np.zeros(100, dtype=np.uint8))
        assert cache.nbytes == _held(cache) <= 1000
    assert (list(cache._probation), list(cache._main)) == ([3, 4], [])
    assert list(cache._ghost) == [0, 1, 2]  # dropped from probation: keys remembered, no data
    assert cache.stats().evictions == 3
    assert cache.get(3) is not None  # re-used while on probation: to the main part
    assert cache.get(1) is None  # read again soon after it was dropped: straight to the main part
    cache.put(1, np.zeros(100, dtype=np.uint8))
    assert (list(cache._probation), list(cache._main)) == ([4], [3, 1])
    assert cache.get(3) is not None  # 3 becomes most recent
    for k in range(10, 18):  # eight more re-used chunks: 1000 bytes with 4 on probation, the LRU chunk goes
        cache.put(k, np.zeros(100, dtype=np.uint8))
        assert cache.get(k) is not None
        assert cache.nbytes == _held(cache) <= 1000
    assert 1 not in cache
    assert 3 in cache
    assert list(cache._main) == [3, *range(10, 18)]
    assert list(cache._probation) == [4]
    s = cache.stats()
    assert (s.promotions, s.entries, s.nbytes, s.probation_nbytes) == (10, 10, 1000, 100)
    # the ghost list remembers at most GHOST_FRACTION of the bound
    for k in range(100, 120):
        cache.put(k, np.zeros(100, dtype=np.uint8))
    assert sum(cache._ghost.values()) <= 500
    assert len(cache._ghost) == 5


def test_a_chunk_larger_than_the_probation_bound_is_kept_until_the_next_one() -> None:
    """The newest chunk always stays on probation (an immediate re-read of a patch hits)."""
    cache = ChunkCache(1000, policy="2q")
    cache.put("a", np.zeros(600, dtype=np.uint8))
    assert cache.get("a") is not None
    cache.put("b", np.zeros(300, dtype=np.uint8))
    cache.put("c", np.zeros(300, dtype=np.uint8))
    assert list(cache._probation) == ["c"]
    assert list(cache._main) == ["a"]
    cache.put("d", np.zeros(500, dtype=np.uint8))  # 600 + 500 > 1000: the main part's LRU chunk goes
    assert list(cache._probation) == ["d"]
    assert not cache._main
    assert cache.nbytes == _held(cache) == 500


def test_get_all_promotes_and_failed_get_all_moves_nothing() -> None:
    cache = ChunkCache(1000, policy="2q")
    cache.put(0, np.full(100, 0, dtype=np.uint8))
    cache.put(1, np.full(100, 1, dtype=np.uint8))
    assert cache.get_all([0, 7]) is None
    assert (list(cache._probation), cache.hits, cache.misses) == ([0, 1], 0, 0)
    found = cache.get_all([1, 0])
    assert found is not None
    assert [int(a[0]) for a in found] == [1, 0]
    assert list(cache._main) == [1, 0]
    assert not cache._probation


def test_resize_and_clear_forget_the_ghosts() -> None:
    cache = ChunkCache(1000, policy="2q")
    for i in range(10):
        cache.put(i, np.zeros(100, dtype=np.uint8))
    assert len(cache._ghost) == 5
    cache.resize(400)  # probation 100 bytes, ghosts 200
    assert cache.nbytes == _held(cache) == 100
    assert len(cache._ghost) == 2
    cache.clear()
    assert (len(cache), cache.nbytes, len(cache._ghost)) == (0, 0, 0)
    cache.resize(0)
    cache.put(1, np.zeros(10))
    assert len(cache) == 0


def test_threads_hammering_a_two_q_cache_keep_the_counts_right() -> None:
    cache = ChunkCache(64 * 1024, policy="2q")
    barrier = threading.Barrier(6)
    errors: list[str] = []

    def work(seed: int) -> None:
        rng = np.random.default_rng(seed)
        barrier.wait()
        for _ in range(2000):
            key = int(rng.integers(0, 150))
            got = cache.get(("t", key))
            if got is None:
                cache.put(("t", key), np.full(1024 + 64 * (key % 5), key, dtype=np.int32))
            elif not (got == key).all():
                errors.append(f"key {key}: wrong data")
            if cache.nbytes > cache.max_bytes:
                errors.append(f"bound broken: {cache.nbytes}")

    threads = [threading.Thread(target=work, args=(s,)) for s in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert errors == []
    s = cache.stats()
    assert s.hits + s.misses == 6 * 2000
    assert s.nbytes == _held(cache) <= s.max_bytes
    assert s.probation_nbytes == sum(a.nbytes for a in cache._probation.values())
    assert s.promotions > 0


# -- through a reader: random training, tiles, epochs -----------------------------------------------
class _Reader(ChunkedReader):
    """A chunked reader over numpy data with its own cache; counts every decode and the decoded bytes alive."""

    def __init__(
        self, data: np.ndarray, chunks: Sequence[int], cache: ChunkCache | None = None, *, groups: bool = False
    ) -> None:
        super().__init__(
            data.shape,
            data.dtype,
            chunks,
            token=f"adm-{id(self)}",
            capabilities=ReaderCapabilities(fetches_in_groups=groups),
        )
        self.data = data
        self._own_cache = cache
        self.decodes = 0
        self.alive = self.peak = 0
        self._lock = threading.Lock()

    @property
    def cache(self) -> ChunkCache | None:
        return self._own_cache if self._own_cache is not None else get_chunk_cache()

    def _gone(self, n: int) -> None:
        with self._lock:
            self.alive -= n

    def _one(self, idx: ChunkIndex) -> np.ndarray:
        out = self.data[self.chunk_grid.chunk_region(idx)].copy()
        with self._lock:
            self.decodes += 1
            self.alive += out.nbytes
            self.peak = max(self.peak, self.alive)
        weakref.finalize(out, self._gone, out.nbytes)
        return out

    def fetch_chunks(self, indices: Sequence[ChunkIndex]) -> Mapping[ChunkIndex, np.ndarray]:
        return fetch_concurrently(indices, self._one)

    def fetch_chunk(self, idx: ChunkIndex) -> np.ndarray:
        return self._one(idx)


_DATA = np.random.default_rng(0).integers(0, 2**16, (64, 256, 256), dtype=np.uint16)  # 8 MiB, 1024 chunks of 8 KiB
_CHUNKS = (1, 64, 64)
_BOUND = 1 << 20  # the cache holds 1/8 of the data


def _random_patches(policy: str, n: int) -> tuple[_Reader, ChunkCache]:
    cache = ChunkCache(_BOUND, policy=policy)
    reader = _Reader(_DATA, _CHUNKS, cache)
    stack = LazyImageStack(reader, "SYX")
    rng = np.random.default_rng(1)
    for _ in range(n):
        s, y, x = int(rng.integers(0, 64)), int(rng.integers(0, 256 - 32)), int(rng.integers(0, 256 - 32))
        patch = stack.extract_patch(s, None, (y, x), (32, 32))
        np.testing.assert_array_equal(patch[0], _DATA[s, y : y + 32, x : x + 32])
    return reader, cache


def test_uniform_random_patches_do_not_fill_the_cache_for_nothing() -> None:
    """Random patches over data 8x the cache: LRU fills the bound; 2Q holds about its probation plus what is re-read."""
    lru_reader, lru = _random_patches("lru", 300)
    q_reader, q = _random_patches("2q", 300)
    ls, qs = lru.stats(), q.stats()
    assert ls.nbytes > 0.9 * _BOUND  # LRU: filled to its bound (about 650 chunks read so far)
    assert qs.nbytes <= _BOUND * PROBATION_FRACTION + qs.promotions * 8192
    assert qs.nbytes < 0.65 * ls.nbytes  # (measured: 616 KiB against 1 MiB)
    assert qs.promotions < 0.1 * qs.misses  # only the chunks read again while remembered (measured 45 of 571)
    # the price: while LRU fills, it hits more (62 against 21 of 592 look-ups here); 2Q's main part grows
    # by the chunks read again, so over a long run both approach bound / data size
    assert 0 < qs.hits < ls.hits
    assert q_reader.decodes == qs.misses
    assert lru_reader.decodes == ls.misses


def test_overlapping_tiles_and_repeated_patches_keep_their_hits() -> None:
    """A tiled sweep with overlap hits as often under 2Q as under LRU; so does an immediate re-read."""
    counts = {}
    for policy in ("lru", "2q"):
        cache = ChunkCache(_BOUND, policy=policy)
        reader = _Reader(_DATA, _CHUNKS, cache)
        stack = LazyImageStack(reader, "SYX")
        for s in range(4):
            for y in range(0, 256 - 48 + 1, 32):
                for x in range(0, 256 - 48 + 1, 32):
                    patch = stack.extract_patch(s, None, (y, x), (48, 48))
                    np.testing.assert_array_equal(patch[0], _DATA[s, y : y + 48, x : x + 48])
        before = cache.stats()
        stack.extract_patch(10, None, (100, 100), (48, 48))
        stack.extract_patch(10, None, (100, 100), (48, 48))  # the same patch again: all hits
        after = cache.stats()
        assert after.misses == before.misses + 4
        assert after.hits == before.hits + 4
        counts[policy] = (after.hits, after.misses, reader.decodes)
    assert counts["2q"] == counts["lru"]
    assert counts["2q"][1] == 4 * 16 + 4  # every chunk of the four planes decoded once


def test_epochs_over_data_that_fits_are_served_from_memory_from_the_third() -> None:
    data = _DATA[:8]  # 1 MiB: 128 chunks, the cache holds 2 MiB
    cache = ChunkCache(2 << 20, policy="2q")
    reader = _Reader(data, _CHUNKS, cache)
    stack = LazyImageStack(reader, "SYX")
    misses = []
    for epoch in range(3):
        order = np.random.default_rng(epoch).permutation(8 * 16)
        before = cache.misses
        for k in order:
            s, y, x = int(k // 16), int(k % 16 // 4 * 64), int(k % 4 * 64)
            np.testing.assert_array_equal(
                stack.extract_patch(s, None, (y, x), (64, 64))[0], data[s, y : y + 64, x : x + 64]
            )
        misses.append(cache.misses - before)
    assert misses[0] == 128
    assert misses[1] < 128  # probation and ghost cover 3/4 of the bound: most chunks promoted on their 2nd read
    assert misses[2] == 0
    assert cache.nbytes == 1 << 20


# -- the decoded bytes a batch holds ------------------------------------------------------------
def _batch(
    reader: _Reader, n: int, size: tuple[int, int, int], seed: int
) -> list[tuple[int, None, tuple[int, ...], tuple[int, ...]]]:
    rng = np.random.default_rng(seed)
    shape = reader.data.shape
    return [(0, None, tuple(int(rng.integers(0, shape[a] - size[a] + 1)) for a in range(3)), size) for _ in range(n)]


def _check(reader: _Reader, reqs: list, got: list[np.ndarray]) -> None:
    for (_, _, c, s), patch in zip(reqs, got, strict=True):
        np.testing.assert_array_equal(patch[0], reader.data[c[0] : c[0] + s[0], c[1] : c[1] + s[1], c[2] : c[2] + s[2]])


@pytest.mark.parametrize("groups", [True, False])
def test_a_batch_holds_at_most_its_bound_of_decoded_chunks(groups: bool) -> None:
    """3-D patches touching up to 12 chunks each: rounds (or streams) of at most max_batch_bytes, patches exact."""
    data = np.random.default_rng(2).integers(0, 2**16, (32, 256, 256), dtype=np.uint16)  # chunks 8x64x64: 64 KiB
    previous = set_chunk_cache_size(0)
    try:
        for bound in (256 * 1024, 1 << 20):
            reader = _Reader(data, (8, 64, 64), groups=groups)
            stack = LazyImageStack(reader, "ZYX")
            reqs = _batch(reader, 48, (16, 48, 48), 5)
            got = extract_patches([(stack, *r) for r in reqs], max_batch_bytes=bound)
            _check(reader, reqs, got)
            one_request = 12 * 64 * 1024  # a request's chunks are held together, whatever the bound
            assert 0 < reader.peak <= max(bound, one_request)
            assert reader.alive == 0
    finally:
        set_chunk_cache_size(previous)


def test_the_default_batch_bound_holds_a_few_mib_not_the_whole_batch() -> None:
    """With the default bound a 3-D batch whose chunks add up to ~30 MiB never holds more than the bound at once."""
    assert DEFAULT_MAX_BATCH_BYTES <= 16 * 2**20
    data = np.random.default_rng(3).integers(0, 2**16, (64, 512, 512), dtype=np.uint16)  # 32 MiB, 256 KiB chunks
    for cache_bytes in (0, 4 << 20):
        previous = set_chunk_cache_size(cache_bytes)
        try:
            get_chunk_cache().clear()
            reader = _Reader(data, (8, 128, 128), groups=True)  # fetched in rounds (a remote or tensorstore source)
            stack = LazyImageStack(reader, "ZYX")
            reqs = _batch(reader, 64, (16, 64, 64), 6)
            got = extract_patches([(stack, *r) for r in reqs])
            _check(reader, reqs, got)
            distinct = len({c for r in reqs for c in reader.chunk_grid.touched(stack.plan_patch(*r)[0])})
            assert distinct * 256 * 1024 > 1.5 * DEFAULT_MAX_BATCH_BYTES  # the batch touches more than the bound
            held_by_cache = get_chunk_cache().max_bytes  # the cache may hold chunks of earlier rounds
            assert reader.peak <= DEFAULT_MAX_BATCH_BYTES + held_by_cache
        finally:
            get_chunk_cache().clear()
            set_chunk_cache_size(previous)


def test_a_chunk_read_again_from_the_ghost_list_is_kept_before_chunks_read_once() -> None:
    """A re-read chunk admitted to the main part is not dropped at once while a read-once chunk stays."""
    cache = ChunkCache(100, policy="2q")  # probation 25 bytes, ghosts 50
    cache.put("x", np.zeros(50, dtype=np.uint8))
    cache.put("y", np.zeros(60, dtype=np.uint8))  # x leaves probation, its key goes to the ghost list
    assert "x" not in cache
    cache.put("x", np.zeros(50, dtype=np.uint8))  # read again: into the main part; 110 > 100 bytes
    assert "x" in cache
    assert cache.get("x") is not None
    assert "y" not in cache
    assert cache.nbytes == _held(cache) == 50
    # replacing a main chunk by a larger one: the same
    cache.put("z", np.zeros(40, dtype=np.uint8))
    cache.put("x", np.zeros(70, dtype=np.uint8))
    assert ("x" in cache, "z" in cache, cache.nbytes) == (True, False, 70)


class _HookedKey:
    """A key whose ``hash`` runs ``hook`` once, on the ``at``-th call made from the arming thread."""

    def __init__(self) -> None:
        self.hook: Any = None
        self.calls = 0
        self.thread: int | None = None
        self.at = 0

    def __hash__(self) -> int:
        if self.hook is not None and threading.get_ident() == self.thread:
            self.calls += 1
            if self.calls == self.at:
                hook, self.hook = self.hook, None
                hook()
        return 7


def test_membership_is_atomic_while_another_thread_promotes_the_chunk() -> None:
    """``key in cache`` is True for a chunk held throughout, even while another thread moves it to the main part."""
    cache = ChunkCache(1000, policy="2q")
    key = _HookedKey()
    cache.put(key, np.zeros(10, dtype=np.uint8))  # on probation
    promoter = threading.Thread(target=cache.get, args=(key,))

    def promote_now() -> None:  # between the look-up in the main part and the one on probation
        promoter.start()
        promoter.join(timeout=0.5)  # returns at once without a lock; with it, waits for the look-up to end

    key.hook, key.thread, key.at = promote_now, threading.get_ident(), 2
    assert key in cache
    promoter.join()
    assert key.hook is None  # the hook ran
    assert cache.stats().promotions == 1
    assert key in cache
    assert len(cache) == 1


class _CountingReader(_Reader):
    """Records every group fetch; raises on the ``fail_at``-th one (counting from 1) if set."""

    def __init__(self, *args: Any, fail_at: int = 0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.calls: list[list[ChunkIndex]] = []
        self.fail_at = fail_at

    def fetch_chunks(self, indices: Sequence[ChunkIndex]) -> Mapping[ChunkIndex, np.ndarray]:
        self.calls.append(list(indices))
        if len(self.calls) == self.fail_at:
            got = super().fetch_chunks(indices[: len(indices) // 2])  # half decoded, then the source fails
            msg = f"source failed on fetch {self.fail_at} ({len(got)} chunks decoded)"
            raise OSError(msg)
        return super().fetch_chunks(indices)

    def fetch_chunk(self, idx: ChunkIndex) -> np.ndarray:
        if self.fail_at and self.decodes + 1 == 4 * self.fail_at:  # chunk by chunk: fail at a later chunk
            msg = f"source failed on fetch {self.fail_at} (chunk {idx})"
            raise OSError(msg)
        return super().fetch_chunk(idx)


@pytest.mark.parametrize("cache_bytes", [0, 1 << 20, 64 << 20])
def test_rounds_with_a_request_larger_than_the_bound_and_chunks_shared_across_rounds(cache_bytes: int) -> None:
    """Requests bigger than a round, neighbours sharing chunks across rounds: exact patches, no chunk twice a round."""
    data = np.random.default_rng(4).integers(0, 2**16, (16, 256, 256), dtype=np.uint16)  # chunks 4x64x64: 32 KiB
    bound = 128 * 1024  # 4 chunks a round
    previous = set_chunk_cache_size(cache_bytes)
    try:
        get_chunk_cache().clear()
        reader = _CountingReader(data, (4, 64, 64), groups=True)
        stack = LazyImageStack(reader, "ZYX")
        reqs = [
            (0, None, (0, 0, 0), (8, 128, 128)),  # 8 chunks: alone in its round, over the bound
            (0, None, (4, 100, 100), (4, 40, 40)),  # shares chunks with the first and the next
            (0, None, (2, 120, 120), (8, 64, 64)),  # 12 chunks, overlapping both
            (0, None, (12, 200, 10), (4, 50, 200)),  # 4 chunks
            (0, None, (12, 200, 10), (4, 50, 200)),  # the same again
        ]
        got = extract_patches([(stack, *r) for r in reqs], max_batch_bytes=bound)
        _check(reader, reqs, got)
        assert len(reader.calls) >= 3  # fetched in several rounds
        for call in reader.calls:
            assert len(call) == len(set(call))  # no chunk twice in a fetch
        touched = [set(reader.chunk_grid.touched(stack.plan_patch(*r)[0])) for r in reqs]
        assert all(set(c) <= set().union(*touched) for c in reader.calls)  # nothing fetched that no patch touches
        assert reader.decodes <= sum(len(t) for t in touched)
        if cache_bytes >= 64 << 20:  # every chunk decoded once, the later rounds' shared ones from the cache
            assert reader.decodes == len(set().union(*touched))
        largest = max(len(t) for t in touched) * 32 * 1024  # a request's chunks are held together
        assert largest > bound
        assert 0 < reader.peak <= max(bound, largest) + get_chunk_cache().max_bytes
    finally:
        get_chunk_cache().clear()
        set_chunk_cache_size(previous)
    assert reader.alive == 0


@pytest.mark.parametrize("groups", [True, False])
def test_a_source_failing_in_a_later_round_raises_and_holds_no_chunk(groups: bool) -> None:
    data = np.random.default_rng(5).integers(0, 2**16, (16, 256, 256), dtype=np.uint16)
    previous = set_chunk_cache_size(0)
    try:
        reader = _CountingReader(data, (4, 64, 64), groups=groups, fail_at=2)
        stack = LazyImageStack(reader, "ZYX")
        reqs = _batch(reader, 12, (4, 64, 64), 7)
        with pytest.raises(OSError, match="source failed on fetch 2"):
            extract_patches([(stack, *r) for r in reqs], max_batch_bytes=128 * 1024)
        if groups:
            assert len(reader.calls) == 2  # the batch stopped at the failing round
    finally:
        set_chunk_cache_size(previous)
    gc.collect()
    assert reader.alive == 0


def test_the_ghost_list_holds_at_most_its_key_count_whatever_the_chunk_size() -> None:
    """Tiny chunks: the ghost list's bytes would allow 100 000 keys; it keeps the newest 65 536."""
    cache = ChunkCache(200_000, policy="2q")  # probation 50 000 one-byte chunks, ghosts 100 000 bytes
    one = np.zeros(1, dtype=np.uint8)
    n = 50_000 + 70_000
    for k in range(n):
        cache.put(k, one)
    assert len(cache._ghost) == 1 << 16
    assert next(iter(cache._ghost)) == n - 50_000 - (1 << 16)  # the oldest remembered
    assert cache.stats().probation_nbytes == 50_000
    cache.put(n - 50_000 - (1 << 16), one)  # remembered: straight into the main part
    cache.put(n - 50_000 - (1 << 16) - 1, one)  # forgotten: on probation
    assert cache.stats().promotions == 1


@pytest.mark.parametrize("groups", [True, False])
def test_requests_sharing_chunks_share_a_round(groups: bool) -> None:
    """Cache off, rounds of one request's chunks: neighbours far apart in the batch are fetched in one round."""
    data = np.random.default_rng(6).integers(0, 2**16, (8, 256, 256), dtype=np.uint16)  # chunks 4x64x64: 32 KiB
    previous = set_chunk_cache_size(0)
    try:
        reader = _CountingReader(data, (4, 64, 64), groups=groups)
        stack = LazyImageStack(reader, "ZYX")
        reqs = [  # each touches 4 chunks; the 1st and 3rd share them all, so do the 2nd and 4th
            (0, None, (0, 32, 32), (4, 64, 64)),
            (0, None, (4, 160, 160), (4, 64, 64)),
            (0, None, (0, 40, 40), (4, 64, 64)),
            (0, None, (4, 170, 170), (4, 64, 64)),
        ]
        got = extract_patches([(stack, *r) for r in reqs], max_batch_bytes=4 * 32 * 1024)
        _check(reader, reqs, got)
        assert reader.decodes == 8  # every chunk once
    finally:
        set_chunk_cache_size(previous)
