"""Counting tests for the batch paths chosen for speed (no timing: calls, chunks and bytes are counted)."""

from __future__ import annotations

import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr

from lazystack import LazyImageStack
from lazystack.io.cache import ChunkCache, chunk_cache_size
from lazystack.io.chunked import CPU_WORKERS, fetch_concurrently
from lazystack.ops.batch import extract_patches
from lazystack.sources.zarr.engines import AutoEngine, DirectEngine, TensorstoreEngine, ZarrArrayReader


def _zstd_array(path: Path, shape: tuple[int, ...], chunks: tuple[int, ...]) -> tuple[Any, np.ndarray]:
    from zarr.codecs import ZstdCodec

    data = np.random.default_rng(3).integers(0, 4000, shape, dtype=np.uint16)
    z = zarr.create_array(path, shape=shape, chunks=chunks, dtype="uint16", compressors=ZstdCodec(level=1))
    z[...] = data
    return zarr.open_array(path, mode="r"), data


def _random_requests(stack: Any, shape: tuple[int, ...], n: int, size: int) -> list[Any]:
    rng = np.random.default_rng(5)
    return [
        (
            stack,
            int(rng.integers(shape[0])),
            None,
            tuple(int(rng.integers(0, s - size)) for s in shape[1:]),
            (size,) * 2,
        )
        for _ in range(n)
    ]


def _count_calls(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    calls: Counter[str] = Counter()
    ts_fetch, one = TensorstoreEngine.fetch, DirectEngine.fetch_one

    def spy_ts(self: Any, indices: Any) -> Any:
        calls["tensorstore rounds"] += 1
        calls["tensorstore chunks"] += len(indices)
        return ts_fetch(self, indices)

    def spy_one(self: Any, idx: Any) -> Any:
        calls[f"direct {idx}"] += 1
        calls["direct chunks"] += 1
        return one(self, idx)

    monkeypatch.setattr(TensorstoreEngine, "fetch", spy_ts)
    monkeypatch.setattr(DirectEngine, "fetch_one", spy_one)
    return calls


@pytest.mark.parametrize("chunks", [(1, 256, 256), (1, 512, 256)])  # 128 KiB and 256 KiB chunks: both decoded directly
def test_a_cached_batch_of_small_chunks_is_decoded_directly_each_chunk_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, chunks: tuple[int, ...]
) -> None:
    pytest.importorskip("tensorstore", reason="the auto engine mixes in tensorstore only when it is installed")
    shape = (4, 1024, 1024)
    array, data = _zstd_array(tmp_path / "a.zarr", shape, chunks)
    reader = ZarrArrayReader(array, engine="auto")
    assert isinstance(reader.engine, AutoEngine)
    stack = LazyImageStack(reader, "SYX")
    reqs = _random_requests(stack, shape, 32, 64)
    grid = reader.chunk_grid
    touched = {
        idx
        for _, s, _, (y, x), _ in reqs
        for idx in grid.touched((slice(s, s + 1), slice(y, y + 64), slice(x, x + 64)))
    }
    assert len(touched) * np.prod(chunks) * 2 >= 2**20  # enough bytes that a plain fetch would go to tensorstore
    assert reader.engine.prefers_tensorstore(len(touched))
    calls = _count_calls(monkeypatch)
    with chunk_cache_size(2**28) as cache:
        got = extract_patches(reqs)
        assert cache.stats().misses == len(touched)  # every chunk looked up once, none twice
    for (_, s, _, (y, x), _), patch in zip(reqs, got, strict=True):
        np.testing.assert_array_equal(patch, data[s : s + 1, y : y + 64, x : x + 64].astype(np.float32))
        assert patch.dtype == np.float32
    # not in tensorstore rounds, though a plain fetch of these chunks would go there (measured: 256 KiB 3-D
    # chunks 1.16x / 1.19x the patches/s of rounds with 0 / 2 workers, see ZarrArrayReader.parallel_fetch)
    assert calls["tensorstore rounds"] == 0
    assert calls["direct chunks"] == len(touched)  # each touched chunk decoded once
    assert all(n == 1 for key, n in calls.items() if key.startswith("direct ("))


@pytest.mark.skipif(CPU_WORKERS < 2, reason="CPU-bound fetches use the calling thread alone on one core")
def test_cpu_bound_fetches_are_dealt_one_at_a_time_so_a_stalled_thread_holds_up_one_item() -> None:
    # Item 0 stalls its thread until every other item is done: with a static split in halves the
    # other half could never finish them; dealt one at a time, the other threads take all the rest.
    n = 10
    others_done = threading.Event()
    done: Counter[str] = Counter()
    lock = threading.Lock()

    def fetch_one(i: int) -> int:
        if i == 0:
            assert others_done.wait(timeout=60), "the other items were not taken by the other threads"
        with lock:
            done[threading.current_thread().name] += 1
            if sum(done.values()) == n - 1:
                others_done.set()
        return i * i

    out = fetch_concurrently(list(range(n)), fetch_one, parallel=True)
    assert out == {i: i * i for i in range(n)}
    assert list(out) == list(range(n))  # in the order asked
    assert sum(done.values()) == n


def test_cpu_bound_fetches_raise_the_first_error_and_stop_taking_items() -> None:
    taken: list[int] = []
    raising = threading.Event()

    def fetch_one(i: int) -> int:
        taken.append(i)
        if i == 3:
            raising.set()
            raise ValueError("chunk 3 is corrupt")
        if i > 3:  # the other threads go on only once the error is under way, however the OS schedules them
            assert raising.wait(timeout=60)
        time.sleep(0.001)  # lets the other thread see the error between items
        return i

    with pytest.raises(ValueError, match="chunk 3 is corrupt"):
        fetch_concurrently(list(range(200)), fetch_one, parallel=True)
    assert len(taken) < 200  # the threads stop at their next item after the error


def test_rounds_fill_fast_path_patches_straight_from_the_chunks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A batch fetched in rounds (tensorstore here) fills whole-channel patches inside the image straight
    # from the round's chunks: no stack read per patch. A channel list still goes through its stack.
    pytest.importorskip("tensorstore")
    shape = (3, 300, 300)
    array, data = _zstd_array(tmp_path / "a.zarr", shape, (1, 64, 64))
    stack = LazyImageStack(ZarrArrayReader(array, engine="tensorstore"), "SYX")
    reqs = _random_requests(stack, shape, 24, 50)
    reqs.append((stack, 1, [0], (250, 10), (50, 50)))  # off the fast path (a channel list)
    views = Counter[str]()
    with_reader = LazyImageStack.with_reader

    def spy(self: Any, reader: Any) -> Any:
        views["with_reader"] += 1
        return with_reader(self, reader)

    monkeypatch.setattr(LazyImageStack, "with_reader", spy)
    for cache in (0, 2**26):
        views.clear()
        with chunk_cache_size(cache):
            got = extract_patches(reqs, max_batch_bytes=64 * 64 * 2 * 20)  # several rounds
        for (_, s, _, (y, x), (h, w)), patch in zip(reqs, got, strict=True):
            np.testing.assert_array_equal(patch, data[s : s + 1, y : y + h, x : x + w].astype(np.float32))
        if cache:
            assert views["with_reader"] == 1  # only the channel-list request's round made a view


def test_put_if_seen_keeps_a_chunk_only_when_read_again_soon() -> None:
    chunk = np.zeros(1024, dtype=np.uint8)
    cache = ChunkCache(16 * 1024, policy="2q")
    assert not cache.put_if_seen("a", chunk)  # first read: only its key is remembered
    assert ("a" in cache, cache.nbytes, len(cache)) == (False, 0, 0)
    assert cache.put_if_seen("a", chunk)  # read again while remembered: kept, in the main part
    assert ("a" in cache, cache.nbytes) == (True, 1024)
    assert cache.stats().promotions == 1
    assert cache.stats().probation_nbytes == 0
    cache.put("b", chunk)  # an ordinary put goes on probation
    assert cache.put_if_seen("b", chunk)  # a held key is stored as put stores it
    assert cache.stats().probation_nbytes == 1024
    for i in range(100):  # the ghost list forgets old keys: half the bound's worth of bytes
        cache.put_if_seen(("other", i), chunk)
    assert cache.nbytes == 2048
    assert not cache.put_if_seen(("other", 0), chunk)
    lru = ChunkCache(16 * 1024)
    assert lru.put_if_seen("a", chunk)
    assert "a" in lru
    off = ChunkCache(0, policy="2q")
    assert not off.put_if_seen("a", chunk)
    assert off.nbytes == 0


def test_a_batch_keeps_no_chunk_read_once_and_keeps_those_read_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shape = (4, 512, 512)
    array, data = _zstd_array(tmp_path / "a.zarr", shape, (1, 128, 128))
    reader = ZarrArrayReader(array, engine="direct")
    stack = LazyImageStack(reader, "SYX")
    reqs = _random_requests(stack, shape, 32, 48)
    grid = reader.chunk_grid
    touched = {
        idx
        for _, s, _, (y, x), _ in reqs
        for idx in grid.touched((slice(s, s + 1), slice(y, y + 48), slice(x, x + 48)))
    }
    calls = _count_calls(monkeypatch)
    with chunk_cache_size(2**26) as cache:
        decodes = []
        for _ in range(3):
            before = calls["direct chunks"]
            got = extract_patches(reqs)
            decodes.append(calls["direct chunks"] - before)
            for (_, s, _, (y, x), _), patch in zip(reqs, got, strict=True):
                np.testing.assert_array_equal(patch, data[s : s + 1, y : y + 48, x : x + 48].astype(np.float32))
            if len(decodes) == 1:
                assert cache.nbytes == 0  # each chunk read once, dropped after its copies
        assert decodes == [len(touched), len(touched), 0]  # read again soon: kept (main part), then hit
        assert cache.nbytes == len(touched) * 128 * 128 * 2
        assert cache.stats().probation_nbytes == 0
