"""The per-process chunk cache: byte bound, LRU order, threads, fork, settings."""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
import threading

import numpy as np
import pytest

from lazystack.io.cache import (
    DEFAULT_CHUNK_CACHE_BYTES,
    ENV_CHUNK_CACHE_BYTES,
    ChunkCache,
    chunk_cache_size,
    get_chunk_cache,
    parse_size,
    set_chunk_cache_size,
)


def _held(cache: ChunkCache) -> int:
    return sum(a.nbytes for a in [*cache._main.values(), *cache._probation.values()])


def test_put_get_roundtrip_is_read_only_and_not_copied() -> None:
    cache = ChunkCache(10_000)
    a = np.arange(100, dtype=np.int32)
    cache.put(("t", (0,)), a)
    got = cache.get(("t", (0,)))
    assert got is not None
    np.testing.assert_array_equal(got, a)
    assert not got.flags.writeable
    assert np.shares_memory(got, a)
    with pytest.raises(ValueError, match="read-only"):
        got[0] = 1
    assert a.flags.writeable  # the caller's array is untouched
    assert cache.get(("t", (1,))) is None
    assert (cache.hits, cache.misses) == (1, 1)


def test_byte_bound_is_respected_and_lru_order() -> None:
    cache = ChunkCache(1000)
    for i in range(5):
        cache.put(i, np.zeros(300, dtype=np.uint8))
        assert cache.nbytes <= 1000
        assert cache.nbytes == _held(cache)
    assert sorted(cache._main) == [2, 3, 4]
    assert cache.get(2) is not None  # 2 becomes most recent
    cache.put(5, np.zeros(300, dtype=np.uint8))
    assert 3 not in cache
    assert 2 in cache
    assert cache.stats().evictions == 3


def test_get_all_is_all_or_nothing() -> None:
    """get_all: every chunk (hits counted, LRU refreshed), or None with nothing counted or reordered."""
    cache = ChunkCache(1000)
    for i in range(3):
        cache.put(i, np.full(300, i, dtype=np.uint8))
    assert cache.get_all([0, 7]) is None
    assert (cache.hits, cache.misses) == (0, 0)
    assert list(cache._main) == [0, 1, 2]  # a failed look-up leaves the LRU order alone
    got = cache.get_all([1, 0])
    assert got is not None
    assert [int(a[0]) for a in got] == [1, 0]
    assert (cache.hits, cache.misses) == (2, 0)
    assert list(cache._main) == [2, 1, 0]
    assert cache.get_all([]) == []


def test_random_sizes_never_exceed_bound() -> None:
    rng = np.random.default_rng(1)
    cache = ChunkCache(50_000)
    for i in range(500):
        cache.put(int(rng.integers(0, 100)), np.zeros(int(rng.integers(1, 20_000)), dtype=np.uint8))
        if i % 7 == 0:
            cache.get(int(rng.integers(0, 100)))
        assert cache.nbytes <= 50_000
    assert cache.nbytes == _held(cache)


def test_replacing_a_key_keeps_the_count_right() -> None:
    cache = ChunkCache(1000)
    cache.put("k", np.zeros(100, dtype=np.uint8))
    cache.put("k", np.zeros(200, dtype=np.uint8))
    assert cache.nbytes == 200
    assert len(cache) == 1


def test_oversized_chunk_is_not_stored_and_zero_disables() -> None:
    cache = ChunkCache(100)
    cache.put("big", np.zeros(101, dtype=np.uint8))
    assert "big" not in cache
    assert cache.nbytes == 0
    off = ChunkCache(0)
    assert not off.enabled
    off.put("x", np.zeros(1))
    assert len(off) == 0


def test_resize_evicts_and_clear_resets() -> None:
    cache = ChunkCache("1KiB")
    for i in range(4):
        cache.put(i, np.zeros(256, dtype=np.uint8))
    cache.resize(512)
    assert cache.nbytes == 512
    assert sorted(cache._main) == [2, 3]
    cache.clear()
    assert (len(cache), cache.nbytes, cache.hits, cache.misses) == (0, 0, 0, 0)
    cache.resize(0)
    assert not cache.enabled


@pytest.mark.parametrize(
    ("text", "expected"),
    [("0", 0), ("1024", 1024), ("256MiB", 256 * 2**20), ("1.5 GB", 1_500_000_000), ("4k", 4000), (7, 7)],
)
def test_parse_size(text: str | int, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("bad", ["-1", "12 parsecs", "", "MiB", -5, True, 1.5])
def test_parse_size_rejects(bad: object) -> None:
    with pytest.raises(ValueError, match="cache size"):
        parse_size(bad)  # type: ignore[arg-type]


def test_set_chunk_cache_size_returns_previous_and_validates() -> None:
    cache = get_chunk_cache()
    previous = set_chunk_cache_size("2MiB")
    try:
        assert cache.max_bytes == 2 * 2**20
        assert set_chunk_cache_size(0) == 2 * 2**20
        assert not cache.enabled
        with pytest.raises(ValueError, match="expected a number of bytes"):
            set_chunk_cache_size("lots")
    finally:
        set_chunk_cache_size(previous)


def test_chunk_cache_size_block_empties_and_restores_even_on_error() -> None:
    cache = get_chunk_cache()
    previous = set_chunk_cache_size("4MiB")
    try:
        cache.put(("outside", (0,)), np.zeros(10))
        with chunk_cache_size("1MiB") as inside:
            assert inside is cache
            assert cache.max_bytes == 2**20
            assert len(cache) == 0  # emptied on entry: nothing cached before leaks into the block
            cache.put(("inside", (0,)), np.zeros(10))
        assert cache.max_bytes == 4 * 2**20
        assert len(cache) == 0  # emptied on exit: nothing read with another bound stays
        seen: list[bool] = []

        def fail_inside() -> None:
            with chunk_cache_size(0):
                seen.append(cache.enabled)
                raise RuntimeError("boom")

        with pytest.raises(RuntimeError, match="boom"):
            fail_inside()
        assert seen == [False]
        assert cache.max_bytes == 4 * 2**20
        with pytest.raises(ValueError, match="expected a number of bytes"), chunk_cache_size("lots"):
            pass
        assert cache.max_bytes == 4 * 2**20  # a bad size changes nothing
    finally:
        set_chunk_cache_size(previous)


def _run(code: str, env_value: str | None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env.pop(ENV_CHUNK_CACHE_BYTES, None)
    if env_value is not None:
        env[ENV_CHUNK_CACHE_BYTES] = env_value
    return subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60, check=False
    )


def test_environment_variable_sets_the_size() -> None:
    code = "from lazystack.io.cache import get_chunk_cache; print(get_chunk_cache().max_bytes)"
    assert _run(code, "3MiB").stdout.strip() == str(3 * 2**20)
    assert _run(code, "0").stdout.strip() == "0"
    assert _run(code, None).stdout.strip() == str(DEFAULT_CHUNK_CACHE_BYTES)
    bad = _run(code, "huge")
    assert bad.returncode != 0
    assert ENV_CHUNK_CACHE_BYTES in bad.stderr


def test_eight_threads_hammering_overlapping_chunks() -> None:
    cache = ChunkCache(64 * 1024)  # far smaller than the working set: constant eviction
    errors: list[str] = []
    barrier = threading.Barrier(8)

    def chunk(key: int) -> np.ndarray:
        return np.full(1024 + 64 * (key % 5), key, dtype=np.int32)

    def work(seed: int) -> None:
        rng = np.random.default_rng(seed)
        barrier.wait()
        for _ in range(3000):
            key = int(rng.integers(0, 200))
            got = cache.get(("tok", (key,)))
            if got is None:
                cache.put(("tok", (key,)), chunk(key))
            elif got.shape != chunk(key).shape or not (got == key).all():
                errors.append(f"key {key} returned wrong data")
            if cache.nbytes > cache.max_bytes:
                errors.append(f"bound broken: {cache.nbytes}")

    threads = [threading.Thread(target=work, args=(s,)) for s in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads)
    assert errors == []
    assert cache.nbytes == _held(cache) <= cache.max_bytes
    s = cache.stats()
    assert s.hits + s.misses == 8 * 3000


def _child_report(queue: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    cache = get_chunk_cache()
    report = [len(cache), cache.nbytes, cache.max_bytes, cache.hits]
    cache.put(("child", (0,)), np.zeros(10))  # the lock works in the child
    report.append(len(cache))
    queue.put(report)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork is POSIX only")
def test_forked_child_starts_with_an_empty_cache_even_if_the_lock_was_held() -> None:
    cache = get_chunk_cache()
    previous = set_chunk_cache_size("8MiB")
    try:
        cache.put(("parent", (0,)), np.ones(1000))
        cache.get(("parent", (0,)))
        held = threading.Event()
        release = threading.Event()

        def hold_lock() -> None:
            with cache._lock:
                held.set()
                release.wait(30)

        holder = threading.Thread(target=hold_lock)
        holder.start()
        assert held.wait(60)  # the lock is held when the child is forked
        ctx = multiprocessing.get_context("fork")
        queue = ctx.Queue()
        proc = ctx.Process(target=_child_report, args=(queue,))
        proc.start()
        release.set()
        holder.join()
        report = queue.get(timeout=60)
        proc.join(timeout=30)
        assert proc.exitcode == 0
        assert report == [0, 0, 8 * 2**20, 0, 1]
        assert ("parent", (0,)) in cache  # the parent keeps its own
    finally:
        cache.clear()
        set_chunk_cache_size(previous)
