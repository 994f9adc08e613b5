"""Review of the "perf" change (direct batch decode, shared-iterator dealing, fill from rounds, put_if_seen).

Batches against numpy slicing (an independent reference), over every batch path the change touched:
direct/auto/tensorstore engines, cache off/tiny/large, rounds forced by a small ``max_batch_bytes``.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import lazystack.io.chunked as chunked
from lazystack import LazyImageStack
from lazystack.io.cache import ChunkCache, chunk_cache_size
from lazystack.io.chunked import fetch_concurrently
from lazystack.ops.batch import extract_patches
from lazystack.sources.zarr.engines import ZarrArrayReader

# (axes, shape, chunks): 2-D and 3-D, with and without a channel axis
_LAYOUTS = {
    "SYX": ((3, 70, 90), (1, 16, 32)),
    "SCYX": ((2, 3, 60, 50), (1, 2, 16, 16)),
    "SZYX": ((2, 12, 40, 40), (1, 4, 16, 16)),
    "SCZYX": ((2, 2, 9, 30, 30), (1, 1, 4, 16, 16)),
}
_DTYPES = ["uint8", "int16", "uint16", "float32", "float64"]
_ENGINES = ["direct", "auto", "tensorstore"]


def _data(shape: tuple[int, ...], dtype: str) -> np.ndarray:
    rng = np.random.default_rng(7)
    if dtype.startswith("float"):
        return rng.normal(0, 1000, shape).astype(dtype)
    info = np.iinfo(dtype)
    return rng.integers(info.min, info.max, shape, dtype=dtype, endpoint=True)


@pytest.fixture(scope="module")
def arrays(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], tuple[Path, np.ndarray]]:
    from zarr.codecs import ZstdCodec

    root = tmp_path_factory.mktemp("review-perf")
    out = {}
    for axes, (shape, chunks) in _LAYOUTS.items():
        for dtype in _DTYPES:
            data = _data(shape, dtype)
            path = root / f"{axes}-{dtype}.zarr"
            z = zarr.create_array(path, shape=shape, chunks=chunks, dtype=dtype, compressors=ZstdCodec(level=1))
            z[...] = data
            out[axes, dtype] = (path, data)
    return out


def _expected(data: np.ndarray, axes: str, s: int, channels: list[int] | None, coords: Any, size: Any) -> np.ndarray:
    """numpy reference: the patch, zero where it leaves the image."""
    sample = data[s]
    if "C" not in axes:
        sample = sample[np.newaxis]
    chans = list(range(sample.shape[0])) if channels is None else channels
    out = np.zeros((len(chans), *size), dtype=np.float32)
    src, dst = [], []
    for c0, n, extent in zip(coords, size, sample.shape[1:], strict=True):
        lo, hi = max(c0, 0), min(c0 + n, extent)
        if hi <= lo:
            return out
        src.append(slice(lo, hi))
        dst.append(slice(lo - c0, hi - c0))
    out[(slice(None), *dst)] = sample[(chans, *src)]
    return out


@st.composite
def _batches(draw: Any) -> Any:
    axes = draw(st.sampled_from(sorted(_LAYOUTS)))
    shape, _ = _LAYOUTS[axes]
    spatial = shape[2:] if "C" in axes else shape[1:]
    n_c = shape[1] if "C" in axes else 1
    reqs = []
    for _ in range(draw(st.integers(1, 40))):
        s = draw(st.integers(0, shape[0] - 1))
        kind = draw(st.sampled_from(["inside", "inside", "inside", "border", "outside"]))
        size = tuple(draw(st.integers(1, min(e, 24))) for e in spatial)
        if kind == "inside":
            coords = tuple(draw(st.integers(0, e - n)) for e, n in zip(spatial, size, strict=True))
        elif kind == "border":
            coords = tuple(draw(st.integers(-n + 1, e - 1)) for e, n in zip(spatial, size, strict=True))
        else:
            coords = tuple(e + 3 for e in spatial)
        channels = draw(st.one_of(st.none(), st.lists(st.integers(0, n_c - 1), min_size=1, max_size=3)))
        reqs.append((s, channels, coords, size))
    return axes, reqs


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)
@given(
    batch=_batches(),
    dtype=st.sampled_from(_DTYPES),
    engine=st.sampled_from(_ENGINES),
    cache=st.sampled_from([0, 3000, 2**24]),
    max_batch_bytes=st.sampled_from([1, 4096, 16 * 2**20]),
    repeat=st.integers(1, 2),
)
def test_random_batches_equal_numpy_slicing_on_every_path(
    arrays: dict[tuple[str, str], tuple[Path, np.ndarray]],
    batch: Any,
    dtype: str,
    engine: str,
    cache: int,
    max_batch_bytes: int,
    repeat: int,
) -> None:
    if engine != "direct":
        pytest.importorskip("tensorstore")
    axes, reqs = batch
    path, data = arrays[axes, dtype]
    stack = LazyImageStack(ZarrArrayReader(zarr.open_array(path, mode="r"), engine=engine), axes)
    with chunk_cache_size(cache) as c:
        for _ in range(repeat):  # the second pass finds chunks in the ghost list / main part
            got = extract_patches([(stack, *r) for r in reqs], max_batch_bytes=max_batch_bytes)
            for r, patch in zip(reqs, got, strict=True):
                assert patch.dtype == np.float32
                np.testing.assert_array_equal(patch, _expected(data, axes, *r))
            assert c.nbytes <= max(cache, 0)


def test_io_bound_fetches_wait_for_the_running_ones_after_a_pool_task_fails() -> None:
    # Index 1 fails in a pool thread while index 2 is still being fetched in another: the error must not leave
    # fetch_concurrently before index 2's fetch is over (as after a failure of the calling thread's own share).
    # (Index 1 waits until index 2 is running: on a loaded machine, a pool thread may not have taken index 2 or 3
    # yet when the error is seen, and a task not started is rightly cancelled, not waited for.)
    started: list[int] = []
    finished: list[int] = []
    failed, slow_started = threading.Event(), threading.Event()

    def fetch_one(i: int) -> int:
        started.append(i)
        if i == 0:
            assert failed.wait(timeout=60)
            time.sleep(0.05)
        elif i == 1:
            assert slow_started.wait(timeout=60)
            failed.set()
            raise ValueError("chunk 1 is corrupt")
        elif i == 2:
            slow_started.set()
            time.sleep(0.5)
        finished.append(i)
        return i

    with pytest.raises(ValueError, match="chunk 1 is corrupt"):
        fetch_concurrently([0, 1, 2, 3], fetch_one, min_parallel=2)
    assert 2 in finished  # the fetch running when the error happened
    assert sorted(finished) == sorted(i for i in started if i != 1)  # nothing still running after the error


def test_cpu_bound_fetches_wait_for_every_running_thread_after_a_pool_thread_fails(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # On a machine with more than two cores: one pool thread fails, another is still decoding.
    monkeypatch.setattr(chunked, "CPU_WORKERS", 4)
    running: set[str] = set()
    lock = threading.Lock()
    slow_started = threading.Event()
    left_running: list[set[str]] = []

    def fetch_one(i: int) -> int:
        name = threading.current_thread().name
        with lock:
            running.add(name)
        try:
            if i == 0:  # the caller (first item): waits for the error to happen elsewhere
                time.sleep(0.3)
            elif i == 1:  # the first pool task's: its future is the first one looked at
                assert slow_started.wait(timeout=60)
                raise ValueError("chunk 1 is corrupt")
            elif i == 2:
                slow_started.set()
                time.sleep(0.6)
            return i
        finally:
            with lock:
                running.discard(name)

    def fetch_all() -> None:
        try:
            fetch_concurrently(list(range(4)), fetch_one, parallel=True)
        finally:
            with lock:
                left_running.append(set(running))  # the threads still in fetch_one as the error leaves

    with pytest.raises(ValueError, match="chunk 1 is corrupt"):
        fetch_all()
    assert left_running == [set()]


def test_put_if_seen_from_many_threads_keeps_the_bound_and_the_ghost_list_consistent() -> None:
    chunk = np.zeros(1000, dtype=np.uint8)
    cache = ChunkCache(20_000, policy="2q")
    barrier = threading.Barrier(4)

    def work(seed: int) -> None:
        rng = np.random.default_rng(seed)
        barrier.wait()
        for k in rng.integers(0, 60, 3000):
            key = ("t", int(k))
            if cache.get(key) is None:
                cache.put_if_seen(key, chunk)
            assert cache.nbytes <= 20_000

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stats = cache.stats()
    assert cache.nbytes <= 20_000
    assert cache.nbytes == len(cache) * 1000
    assert stats.probation_nbytes == 0  # put_if_seen never puts on probation
    assert stats.hits + stats.misses == 4 * 3000
