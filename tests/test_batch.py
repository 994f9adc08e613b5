"""Batched patch extraction: same arrays as one-by-one calls, each chunk read once."""

from __future__ import annotations

import threading
import weakref
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr

from lazystack import LazyImageStack, PatchError, SampleIndexError
from lazystack.io.cache import chunk_cache_size, get_chunk_cache, set_chunk_cache_size
from lazystack.io.chunked import ChunkedReader, ChunkIndex, FunctionChunkedReader, fetch_concurrently
from lazystack.io.reader import Reader, ReaderCapabilities
from lazystack.ops.batch import extract_patches
from lazystack.sources.zarr.engines import ZarrArrayReader, available_engines


class CountingReader(ChunkedReader):
    """Chunked reader over numpy data that counts every chunk it decodes, the threads and the chunks alive."""

    def __init__(self, data: np.ndarray, chunks: Sequence[int], *, remote: bool = False) -> None:
        super().__init__(
            data.shape, data.dtype, chunks, token=f"counting-{id(self)}", capabilities=ReaderCapabilities(remote=remote)
        )
        self.data = data
        self.decoded: Counter[ChunkIndex] = Counter()
        self.calls = 0
        self.threads: set[str] = set()
        self.alive = self.peak_alive = 0
        self._lock = threading.Lock()

    def _released(self) -> None:
        with self._lock:
            self.alive -= 1

    def _one(self, idx: ChunkIndex) -> np.ndarray:
        with self._lock:
            self.decoded[idx] += 1
            self.threads.add(threading.current_thread().name)
            self.alive += 1
            self.peak_alive = max(self.peak_alive, self.alive)
        out = self.data[self.chunk_grid.chunk_region(idx)].copy()
        weakref.finalize(out, self._released)
        return out

    def fetch_chunks(self, indices: Sequence[ChunkIndex]) -> Mapping[ChunkIndex, np.ndarray]:
        self.calls += 1
        return fetch_concurrently(indices, self._one)

    def fetch_chunk(self, idx: ChunkIndex) -> np.ndarray:
        return self._one(idx)


@pytest.fixture(params=["cache-on", "cache-off"])
def cache_mode(request: pytest.FixtureRequest) -> Iterator[str]:
    previous = set_chunk_cache_size(64 * 2**20 if request.param == "cache-on" else 0)
    get_chunk_cache().clear()
    yield request.param
    get_chunk_cache().clear()
    set_chunk_cache_size(previous)


def _requests(rng: np.random.Generator, stack: LazyImageStack, n: int, size: Sequence[int]) -> list[tuple[Any, ...]]:
    out = []
    spatial = stack.data_shape[2:]
    for _ in range(n):
        coords = tuple(int(rng.integers(-s // 2, d)) for s, d in zip(size, spatial, strict=True))
        chans: list[int] | None = None
        if stack.n_channels > 1 and rng.random() < 0.5:
            chans = [int(c) for c in rng.permutation(stack.n_channels)[: int(rng.integers(1, stack.n_channels + 1))]]
        out.append((int(rng.integers(0, stack.n_samples)), chans, coords, tuple(size)))
    return out


def _one_by_one(stack: LazyImageStack, reqs: list[tuple[Any, ...]]) -> list[np.ndarray]:
    return [stack.extract_patch(*r) for r in reqs]


def _assert_same(got: list[np.ndarray], want: list[np.ndarray]) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert g.dtype == np.float32
        np.testing.assert_array_equal(g, w)


@pytest.fixture
def region_reads(monkeypatch: pytest.MonkeyPatch) -> list[tuple[tuple[slice, ...], bool]]:
    """Every region read started in tensorstore during the test: ``(region, as_float32)``."""
    from lazystack.sources.zarr.engines import TensorstoreEngine

    started: list[tuple[tuple[slice, ...], bool]] = []
    original = TensorstoreEngine.start_read

    def spy(self: TensorstoreEngine, region: tuple[slice, ...], *, as_float32: bool = False) -> Any:
        started.append((region, as_float32))
        return original(self, region, as_float32=as_float32)

    monkeypatch.setattr(TensorstoreEngine, "start_read", spy)
    return started


@pytest.fixture(scope="module")
def zarr_arrays(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("batch")
    rng = np.random.default_rng(0)
    a = zarr.create_array(root / "syx.zarr", shape=(3, 130, 150), chunks=(1, 32, 32), dtype="uint16")
    a[...] = rng.integers(0, 60000, size=a.shape, dtype=np.uint16)
    b = zarr.create_array(
        root / "czyx.zarr", shape=(2, 20, 64, 70), chunks=(1, 8, 16, 16), shards=(2, 8, 32, 32), dtype="float32"
    )
    b[...] = rng.random(b.shape, dtype=np.float32)
    return {"syx": zarr.open_array(root / "syx.zarr", mode="r"), "czyx": zarr.open_array(root / "czyx.zarr", mode="r")}


@pytest.mark.parametrize("engine", ["direct", "tensorstore", "zarr", "auto"])
def test_batch_equals_one_by_one_over_zarr_stacks(zarr_arrays: dict[str, Any], engine: str, cache_mode: str) -> None:
    rng = np.random.default_rng(1)
    assert engine == "auto" or engine in available_engines(zarr_arrays["syx"])
    s2 = LazyImageStack(ZarrArrayReader(zarr_arrays["syx"], engine=engine), "SYX")
    s3 = LazyImageStack(ZarrArrayReader(zarr_arrays["czyx"], engine=engine), "CZYX")
    view = s2.isel(S=slice(0, 3, 2), X=slice(5, 140))
    r2 = _requests(rng, s2, 40, (24, 24))
    r3 = _requests(rng, s3, 20, (6, 20, 20))
    rv = _requests(rng, view, 20, (16, 16))
    want = _one_by_one(s2, r2) + _one_by_one(s3, r3) + _one_by_one(view, rv)
    get_chunk_cache().clear()
    mixed = [(s2, *r) for r in r2] + [(s3, *r) for r in r3] + [(view, *r) for r in rv]
    _assert_same(extract_patches(mixed), want)
    _assert_same(s3.extract_patches(r3), want[40:60])


@pytest.mark.parametrize("remote", [False, True], ids=["local", "remote"])
def test_each_touched_chunk_is_decoded_once_per_batch(cache_mode: str, remote: bool) -> None:
    data = np.arange(2 * 100 * 100, dtype=np.int32).reshape(2, 100, 100)
    reader = CountingReader(data, (1, 10, 10), remote=remote)
    stack = LazyImageStack(reader, "SYX")
    rng = np.random.default_rng(2)
    reqs = _requests(rng, stack, 64, (25, 25))
    ref = LazyImageStack(data, "SYX")
    _assert_same(extract_patches([(stack, *r) for r in reqs]), _one_by_one(ref, reqs))
    if remote:
        assert reader.calls == 1  # one concurrent round for the whole batch
    assert reader.decoded
    assert max(reader.decoded.values()) == 1
    # one-by-one without a cache decodes overlapping chunks again and again
    if cache_mode == "cache-off":
        before = sum(reader.decoded.values())
        _one_by_one(stack, reqs)
        assert sum(reader.decoded.values()) - before > before


def test_small_byte_bound_serves_the_batch_in_rounds(cache_mode: str) -> None:
    data = np.random.default_rng(3).random((80, 90)).astype(np.float32)
    reader = CountingReader(data, (10, 10), remote=True)
    stack = LazyImageStack(reader, "YX")
    reqs = _requests(np.random.default_rng(4), stack, 30, (20, 20))
    got = extract_patches([(stack, *r) for r in reqs], max_batch_bytes=4 * 10 * 10 * 4)
    _assert_same(got, _one_by_one(LazyImageStack(data, "YX"), reqs))
    assert reader.calls > 1


def _sparse_requests(rng: np.random.Generator, n: int) -> list[tuple[Any, ...]]:
    """``n`` 8x8 patches inside distinct 20x20 chunks of a 400x400 image (so no two share a chunk)."""
    cells = rng.choice(400, size=n, replace=False)
    return [(0, None, (int(c // 20) * 20 + 6, int(c % 20) * 20 + 6), (8, 8)) for c in cells]


def test_local_batch_spreads_over_cores_and_drops_each_chunk_after_its_last_use(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import lazystack.io.chunked as chunked_module

    monkeypatch.setattr(chunked_module, "CPU_WORKERS", 2)
    with chunk_cache_size(0):
        data = np.random.default_rng(8).integers(0, 1000, (400, 400)).astype(np.uint16)
        reader = CountingReader(data, (20, 20))
        stack = LazyImageStack(reader, "YX")
        reqs = _sparse_requests(np.random.default_rng(9), 64)
        _assert_same(stack.extract_patches(reqs), _one_by_one(LazyImageStack(data, "YX"), reqs))
    assert sum(reader.decoded.values()) == 64
    assert 1 <= len(reader.threads) <= 2  # the caller and one pool thread, taking chunks one at a time
    assert reader.peak_alive <= 2  # one chunk in hand per thread, not the 64 of the batch
    assert reader.alive == 0


def test_overlapping_requests_stay_in_one_share_and_chunks_are_decoded_once(monkeypatch: pytest.MonkeyPatch) -> None:
    import lazystack.io.chunked as chunked_module
    import lazystack.ops.batch as batch_module

    monkeypatch.setattr(chunked_module, "CPU_WORKERS", 4)
    monkeypatch.setattr(batch_module, "_shares", _shuffled_shares(batch_module._shares))
    data = np.arange(60 * 300, dtype=np.float32).reshape(60, 300)
    reader = CountingReader(data, (10, 10))
    stack = LazyImageStack(reader, "YX")
    # Chains of overlapping patches along rows: every chain is one group, whole. A channel list takes the
    # requests off the fast path (which scatters chunks instead of sharing groups of requests out).
    reqs = [(0, [0], (row, x), (10, 25)) for row in (0, 20, 40) for x in range(0, 280, 15)]
    with chunk_cache_size(0):  # no cache to hide a chunk decoded by two shares
        _assert_same(stack.extract_patches(reqs), _one_by_one(LazyImageStack(data, "YX"), reqs))
    assert max(reader.decoded.values()) == 1
    assert sum(reader.decoded.values()) == len({c for r in reqs for c in _touched(reader, r)})


def _shuffled_shares(shares: Any) -> Any:
    """``_shares``, each share's requests reversed (a share serves its groups in any order)."""

    def run(items: Any, k: int) -> Any:
        return [list(reversed(share)) for share in shares(items, k)]

    return run


def _touched(reader: ChunkedReader, request: tuple[Any, ...]) -> list[ChunkIndex]:
    """The chunks a request on a YX or SYX reader touches (worked out here, to count fetches against)."""
    sample, _, (y, x), (h, w) = request
    *lead, ny, nx = reader.shape
    if y >= ny or x >= nx or y + h <= 0 or x + w <= 0:
        return []
    inside = (slice(max(y, 0), min(y + h, ny)), slice(max(x, 0), min(x + w, nx)))
    return reader.chunk_grid.touched(tuple(slice(sample, sample + 1) for _ in lead) + inside)


def _region_of(reader: ChunkedReader, request: tuple[Any, ...]) -> tuple[tuple[slice, ...], bool]:
    """The source region (and whether it is read as float32) of a request on a SYX reader."""
    sample, _, (y, x), (h, w) = request
    _, ny, nx = reader.shape
    inside = (slice(max(y, 0), min(y + h, ny)), slice(max(x, 0), min(x + w, nx)))
    whole = y >= 0 and x >= 0 and y + h <= ny and x + w <= nx
    return (slice(sample, sample + 1), *inside), whole


def test_local_byte_bound_caps_the_chunks_alive(monkeypatch: pytest.MonkeyPatch) -> None:
    import lazystack.io.chunked as chunked_module

    monkeypatch.setattr(chunked_module, "CPU_WORKERS", 1)
    data = np.arange(10 * 400, dtype=np.float32).reshape(10, 400)
    # 40 requests on 40 chunks, then the same 40 again: every chunk stays needed until its second use.
    # A channel list keeps them off the scattered fast path: they stream through their stack.
    reqs = [(0, [0], (2, 10 * k + 2), (5, 5)) for k in range(40)] * 2
    want = _one_by_one(LazyImageStack(data, "YX"), reqs)
    with chunk_cache_size(0):
        unbounded = CountingReader(data, (10, 10))
        _assert_same(extract_patches([(LazyImageStack(unbounded, "YX"), *r) for r in reqs]), want)
        bounded = CountingReader(data, (10, 10))
        got = extract_patches([(LazyImageStack(bounded, "YX"), *r) for r in reqs], max_batch_bytes=6 * 10 * 10 * 4)
    _assert_same(got, want)
    assert unbounded.peak_alive == 40  # all kept for their second use
    assert max(unbounded.decoded.values()) == 1
    assert bounded.peak_alive <= 6 + 1  # the bound, plus the chunk of the request in hand
    assert max(bounded.decoded.values()) == 2  # dropped chunks are read again


class _WaitsForAPoolThread(CountingReader):
    """The first chunk each of two threads takes waits for the other's: both cores decode, whatever the timing.

    (Chunks are dealt one at a time: tiny ones could all be decoded by one thread before the other wakes up on
    a loaded machine, which would make "both cores decode" a matter of timing.)
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._both = threading.Barrier(2, timeout=60)  # a bound on a hang only
        self._first = threading.local()

    def _one(self, idx: ChunkIndex) -> np.ndarray:
        if not getattr(self._first, "done", False):
            self._first.done = True
            self._both.wait()
        return super()._one(idx)


@pytest.mark.parametrize("workers", [1, 2])
def test_scattered_requests_decode_each_chunk_once_and_hold_one_per_core(
    monkeypatch: pytest.MonkeyPatch, workers: int
) -> None:
    import lazystack.io.chunked as chunked_module

    monkeypatch.setattr(chunked_module, "CPU_WORKERS", workers)
    data = np.random.default_rng(12).integers(0, 2**16, (2, 90, 400), dtype=np.uint16)
    # every request is on the fast path (all channels, inside); each chunk is fed to many patches,
    # some of them twice over (the same request again, in another order)
    reqs = [(s, None, (y, x), (23, 37)) for s in (0, 1) for y in (0, 20, 61) for x in range(0, 360, 30)]
    reqs += reqs[::-3]
    reader = _WaitsForAPoolThread(data, (1, 16, 32)) if workers > 1 else CountingReader(data, (1, 16, 32))
    with chunk_cache_size(0):
        got = LazyImageStack(reader, "SYX").extract_patches(reqs)
    _assert_same(got, _one_by_one(LazyImageStack(data, "SYX"), reqs))
    assert set(reader.decoded) == {c for r in reqs for c in _touched(reader, r)}
    assert max(reader.decoded.values()) == 1
    assert len(reader.threads) == workers
    assert reader.peak_alive <= workers  # one chunk in hand per core
    assert reader.alive == 0
    # every patch is its own array
    assert not any(np.may_share_memory(a, b) for k, a in enumerate(got) for b in got[k + 1 :])


@pytest.mark.parametrize("dtype", ["uint8", "int16", ">u2", "int32", "uint32", "float64", "int64", "bool"])
def test_scattered_patches_cast_as_one_by_one(dtype: str) -> None:
    rng = np.random.default_rng(13)
    if dtype == "bool":
        data = rng.random((70, 90)) < 0.5
    elif np.dtype(dtype).kind == "f":
        data = (rng.standard_normal((70, 90)) * 1e9).astype(dtype)  # values float32 must round
    else:
        info = np.iinfo(dtype)
        data = rng.integers(info.min, info.max, (70, 90), endpoint=True, dtype=np.dtype(dtype).newbyteorder("="))
        data = data.astype(dtype)
    reader = CountingReader(data, (16, 16))
    reqs = [(0, None, (y, x), (20, 30)) for y in range(0, 50, 7) for x in range(0, 60, 11)]
    with chunk_cache_size(0):
        got = LazyImageStack(reader, "YX").extract_patches(reqs)
    _assert_same(got, _one_by_one(LazyImageStack(data, "YX"), reqs))
    assert max(reader.decoded.values()) == 1


class WideReader(CountingReader):
    """A back end whose decoded chunks come wider than the stored dtype (int64 values for uint8 data)."""

    def _one(self, idx: ChunkIndex) -> np.ndarray:
        return super()._one(idx).astype(np.int64) + 250


def test_scattered_chunks_are_cast_to_the_stored_dtype_first() -> None:
    data = np.random.default_rng(16).integers(0, 256, (70, 90), dtype=np.uint8)
    reqs = [(0, None, (y, x), (20, 30)) for y in range(0, 50, 7) for x in range(0, 60, 11)]
    with chunk_cache_size(0):
        got = LazyImageStack(WideReader(data, (16, 16)), "YX").extract_patches(reqs)
        one_by_one = _one_by_one(LazyImageStack(WideReader(data, (16, 16)), "YX"), reqs)
    # as a read casts a chunk to the stored dtype (uint8 wraps), then to float32
    stored = (data.astype(np.int64) + 250).astype(np.uint8)
    _assert_same(got, _one_by_one(LazyImageStack(stored, "YX"), reqs))
    _assert_same(got, one_by_one)


class _CountingCasts(np.ndarray):
    """A chunk that counts its ``astype`` calls (the batch casts a chunk not in the reader's dtype)."""

    casts = 0

    def astype(self, *args: Any, **kwargs: Any) -> Any:
        type(self).casts += 1
        return np.asarray(self).astype(*args, **kwargs)


def test_the_rounds_path_casts_each_chunk_once_not_once_per_piece() -> None:
    """A chunk not in the reader's dtype is cast once per round, not once per piece (counted, numpy reference)."""
    data = np.random.default_rng(2).integers(0, 30000, (64, 64)).astype(np.int32)
    fetched: list[tuple[int, ...]] = []

    def fetch_many(indices: Any) -> dict[tuple[int, ...], np.ndarray]:
        fetched.extend(indices)
        # stored as int32, declared int16 (values fit): each chunk must be cast to int16 before float32
        return {i: data[16 * i[0] : 16 * i[0] + 16, 16 * i[1] : 16 * i[1] + 16].view(_CountingCasts) for i in indices}

    reader = FunctionChunkedReader(data.shape, np.int16, (16, 16), "casts", fetch_many=fetch_many)
    stack = LazyImageStack(reader, "YX")
    # overlapping patches over chunk borders: 20 patches, most cut into 4 pieces, sharing 16 chunks
    corners = [(y, x) for y in (4, 12, 20, 36, 44) for x in (6, 14, 30, 40)]
    _CountingCasts.casts = 0
    with chunk_cache_size(0):
        got = extract_patches([(stack, 0, None, c, (20, 20)) for c in corners])
    for (y, x), patch in zip(corners, got, strict=True):
        np.testing.assert_array_equal(patch[0], data[y : y + 20, x : x + 20].astype(np.int16).astype(np.float32))
    pieces = sum(len(reader.chunk_grid.pieces((slice(y, y + 20), slice(x, x + 20)))) for y, x in corners)
    assert pieces > len(set(fetched))  # the test means something: more pieces than chunks
    assert _CountingCasts.casts == len(set(fetched)) == len(fetched)  # one cast per chunk of the round


def test_requests_sharing_chunks_with_slow_path_requests_are_still_decoded_once(
    cache_mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import lazystack.ops.batch as batch_module

    scattered: list[int] = []
    original = batch_module._Batch._scatter

    def spy(self: Any, reader: ChunkedReader, indices: list[int]) -> None:
        scattered.extend(indices)
        original(self, reader, indices)

    monkeypatch.setattr(batch_module._Batch, "_scatter", spy)
    data = np.random.default_rng(14).random((2, 3, 80, 120)).astype(np.float32)
    reader = CountingReader(data, (1, 3, 16, 16))
    stack = LazyImageStack(reader, "SCYX")
    inside = [(s, None, (y, x), (20, 20)) for s in (0, 1) for y in (0, 30, 60) for x in (0, 45, 90)]
    # a channel list, a patch leaving the image, next to and overlapping the fast ones
    slow = [(0, [2, 0], (25, 40), (20, 20)), (1, None, (70, 110), (20, 20)), (1, [1], (0, 0), (8, 8))]
    reqs = [r for pair in zip(inside, slow * 6, strict=False) for r in pair] + inside[len(slow) :]
    _assert_same(stack.extract_patches(reqs), _one_by_one(LazyImageStack(data, "SCYX"), reqs))
    assert max(reader.decoded.values()) == 1
    assert set(reader.decoded) == {c for r in reqs for c in _touched_c(reader, r)}
    # the fast requests clear of the others were scattered; none that shares a chunk with them was
    assert scattered
    slow_chunks = {c for r in reqs if r[1] is not None or r[2] == (70, 110) for c in _touched_c(reader, r)}
    assert all(not slow_chunks & set(_touched_c(reader, reqs[i])) for i in scattered)
    assert len(scattered) < sum(r[1] is None and r[2] != (70, 110) for r in reqs)


def _touched_c(reader: ChunkedReader, request: tuple[Any, ...]) -> list[ChunkIndex]:
    """The chunks a request on an SCYX reader touches."""
    sample, chans, (y, x), (h, w) = request
    _, n_c, ny, nx = reader.shape
    c = range(n_c) if chans is None else chans
    inside = (slice(max(y, 0), min(y + h, ny)), slice(max(x, 0), min(x + w, nx)))
    return reader.chunk_grid.touched((slice(sample, sample + 1), slice(min(c), max(c) + 1), *inside))


def test_auto_engine_with_the_cache_off_reads_regions_only_for_big_chunks(
    tmp_path: Path, region_reads: list[tuple[tuple[slice, ...], bool]]
) -> None:
    pytest.importorskip("tensorstore", reason="the auto engine mixes in tensorstore only when it is installed")
    data = np.random.default_rng(15).integers(0, 4000, (2, 600, 1100), dtype=np.uint16)
    reqs = [(s, None, (y, x), (96, 96)) for s in (0, 1) for y in (0, 200, 480) for x in (100, 460, 900)]
    want = _one_by_one(LazyImageStack(data, "SYX"), reqs)
    with chunk_cache_size(0):
        for chunks, regions in [((1, 64, 64), False), ((1, 256, 512), True)]:  # 8 KiB and 256 KiB chunks
            z = zarr.create_array(tmp_path / f"{chunks[1]}.zarr", shape=data.shape, chunks=chunks, dtype=data.dtype)
            z[...] = data
            stack = LazyImageStack(ZarrArrayReader(zarr.open_array(z.store, mode="r"), engine="auto"), "SYX")
            region_reads.clear()
            _assert_same(stack.extract_patches(reqs), want)

            # small chunks: decoded once each, directly, on all cores; big ones: tensorstore reads each patch
            # that shares no chunk with another request (the others: each shared chunk decoded once)
            def chunks_of(r: tuple[Any, ...], c: tuple[int, int, int] = chunks) -> set[tuple[int, int, int]]:
                (y, x), (h, w) = r[2], r[3]
                ys = range(y // c[1], (y + h - 1) // c[1] + 1)
                xs = range(x // c[2], (x + w - 1) // c[2] + 1)
                return {(r[0], a, b) for a in ys for b in xs}

            for batch in (reqs, [reqs[i] for i in (0, 1, 8, 12)]):
                region_reads.clear()
                _assert_same(stack.extract_patches(batch), [want[reqs.index(r)] for r in batch])
                lone = [r for r in batch if not any(chunks_of(r) & chunks_of(o) for o in batch if o is not r)]
                assert len(region_reads) == (len(lone) if regions else 0)
            assert not regions or len(lone) == 2  # the second batch mixes both kinds


def test_back_ends_without_a_single_chunk_fetch_keep_one_fetch_per_read() -> None:
    from lazystack.io.chunked import FunctionChunkedReader

    data = np.arange(64 * 64, dtype=np.uint16).reshape(64, 64)
    calls: list[int] = []

    def many(indices: Sequence[ChunkIndex]) -> dict[ChunkIndex, np.ndarray]:
        calls.append(len(indices))  # a back end with its own concurrent or remote I/O
        return {i: data[i[0] * 8 : i[0] * 8 + 8, i[1] * 8 : i[1] * 8 + 8] for i in indices}

    reader = FunctionChunkedReader(data.shape, data.dtype, (8, 8), f"many-{id(calls)}", fetch_many=many)
    assert reader.capabilities.fetches_in_groups
    with chunk_cache_size(0):
        np.testing.assert_array_equal(reader[3:30, 5:40], data[3:30, 5:40])
        assert calls == [4 * 5]  # one call for the 20 chunks, not 20 calls
        calls.clear()
        stack = LazyImageStack(reader, "YX")
        reqs = [(0, None, (8 * k, 8 * k), (8, 8)) for k in range(8)]
        _assert_same(stack.extract_patches(reqs), _one_by_one(LazyImageStack(data, "YX"), reqs))
        assert calls == [8]  # the batch in one round


def test_tensorstore_batches_read_regions_with_the_cache_off(
    zarr_arrays: dict[str, Any], region_reads: list[tuple[tuple[slice, ...], bool]]
) -> None:
    stack = LazyImageStack(ZarrArrayReader(zarr_arrays["syx"], engine="tensorstore"), "SYX")
    reqs = _requests(np.random.default_rng(10), stack, 30, (24, 24))
    want = [LazyImageStack(np.asarray(zarr_arrays["syx"]), "SYX").extract_patch(*r) for r in reqs]
    with chunk_cache_size(0):
        _assert_same(stack.extract_patches(reqs), want)
        uses = Counter(c for r in reqs for c in _touched(stack.reader, r))
        lone = [r for r in reqs if _touched(stack.reader, r) and all(uses[c] == 1 for c in _touched(stack.reader, r))]
        assert 0 < len(lone) < len(reqs)
        # one region read per patch that overlaps the image and shares no chunk with another request
        assert sorted(region_reads) == sorted(_region_of(stack.reader, r) for r in lone)
        set_chunk_cache_size(2**20)
        region_reads.clear()
        _assert_same(stack.extract_patches(reqs), want)
        assert not region_reads  # with the cache on, chunks go through the cache


@pytest.mark.parametrize("dtype", ["uint8", "int16", ">u2", "float32", "int32", "float64", "uint32"])
def test_tensorstore_region_reads_cast_to_float32_only_when_exact(
    tmp_path: Path, dtype: str, region_reads: list[tuple[tuple[slice, ...], bool]]
) -> None:
    rng = np.random.default_rng(4)
    if np.dtype(dtype).kind == "f":
        data = (rng.standard_normal((2, 90, 80)) * 1e6).astype(dtype)  # float64: values float32 must round
    else:
        info = np.iinfo(dtype)
        data = rng.integers(info.min, info.max, (2, 90, 80), endpoint=True).astype(dtype)
    z = zarr.create_array(tmp_path / "a.zarr", shape=data.shape, chunks=(1, 32, 32), dtype=data.dtype)
    z[...] = data
    stack = LazyImageStack(ZarrArrayReader(zarr.open_array(tmp_path / "a.zarr", mode="r"), engine="tensorstore"), "SYX")
    inside = [(0, None, (0, 0), (20, 24)), (1, None, (50, 40), (20, 24)), (0, None, (30, 33), (20, 24))]
    edge = [(1, None, (80, 70), (20, 24)), (0, [0], (64, 0), (20, 24))]  # leaves the image; a channel list
    reqs = inside + edge
    want = [LazyImageStack(data, "SYX").extract_patch(*r) for r in reqs]
    with chunk_cache_size(0):
        got = stack.extract_patches(reqs)
    _assert_same(got, want)
    exact = np.dtype(dtype).itemsize <= 2 or dtype == "float32"
    # converted by tensorstore: the requests whose patch is the region as float32, for an exact dtype
    assert [f32 for _, f32 in region_reads] == [exact] * len(inside) + [False] * len(edge)
    got[0][...] = -1  # every patch is its own array
    np.testing.assert_array_equal(stack.extract_patches(reqs[:1])[0], want[0])


def test_tensorstore_batches_with_the_cache_on_fetch_all_their_chunks_in_one_round(
    zarr_arrays: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    from lazystack.sources.zarr.engines import TensorstoreEngine

    fetched: list[int] = []
    original = TensorstoreEngine.fetch

    def spy(self: TensorstoreEngine, indices: Sequence[ChunkIndex]) -> dict[ChunkIndex, np.ndarray]:
        fetched.append(len(indices))
        return original(self, indices)

    monkeypatch.setattr(TensorstoreEngine, "fetch", spy)
    reader = ZarrArrayReader(zarr_arrays["syx"], engine="tensorstore")
    assert reader.parallel_fetch(2)
    assert not ZarrArrayReader(zarr_arrays["syx"], engine="direct").parallel_fetch(1000)
    stack = LazyImageStack(reader, "SYX")
    reqs = _requests(np.random.default_rng(11), stack, 30, (24, 24))
    previous = set_chunk_cache_size(2**24)
    try:
        get_chunk_cache().clear()
        want = [LazyImageStack(np.asarray(zarr_arrays["syx"]), "SYX").extract_patch(*r) for r in reqs]
        _assert_same(stack.extract_patches(reqs), want)
        assert len(fetched) == 1  # one round: tensorstore decodes them all in its own threads
        assert fetched[0] == len({c for r in reqs for c in _touched(stack.reader, r)})
    finally:
        get_chunk_cache().clear()
        set_chunk_cache_size(previous)


def test_auto_engine_decodes_a_batch_directly_with_the_cache_on_and_reads_regions_with_it_off(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lazystack.sources.zarr import engines
    from lazystack.sources.zarr.engines import AutoEngine

    pytest.importorskip("tensorstore", reason="the auto engine mixes in tensorstore only when it is installed")
    data = np.random.default_rng(17).integers(0, 4000, (512, 1024), dtype=np.uint16)
    z = zarr.create_array(tmp_path / "a.zarr", shape=data.shape, chunks=(32, 32), dtype=data.dtype)  # 2 KiB each
    z[...] = data
    reader = ZarrArrayReader(zarr.open_array(tmp_path / "a.zarr", mode="r"), engine="auto")
    assert isinstance(reader.engine, AutoEngine)
    rounds: list[int] = []
    original = reader.fetch_chunks
    monkeypatch.setattr(reader, "fetch_chunks", lambda indices: (rounds.append(len(indices)), original(indices))[1])
    stack = LazyImageStack(reader, "YX")
    reqs = [(0, None, (y, x), (40, 40)) for y in range(0, 460, 50) for x in range(0, 980, 70)]
    want = _one_by_one(LazyImageStack(data, "YX"), reqs)
    touched = len({c for r in reqs for c in _touched(reader, r)})
    large = engines.TENSORSTORE_MIN_CHUNK_BYTES
    for cache in (0, 2**24):
        with chunk_cache_size(cache) as chunk_cache:
            monkeypatch.setattr(engines, "TENSORSTORE_MIN_CHUNK_BYTES", large)
            reader.engine.min_tensorstore_bytes = 2**40  # tensorstore does not suit: each chunk decoded directly
            rounds.clear()
            _assert_same(stack.extract_patches(reqs), want)
            assert rounds == []
            reader.engine.min_tensorstore_bytes = 0  # any fetch of two chunks or more suits tensorstore ...
            chunk_cache.clear()
            _assert_same(stack.extract_patches(reqs), want)
            assert rounds == []  # ... but a batch of small chunks is decoded directly, chunk by chunk
            monkeypatch.setattr(engines, "TENSORSTORE_MIN_CHUNK_BYTES", 0)  # these chunks now count as large
            chunk_cache.clear()
            _assert_same(stack.extract_patches(reqs), want)
            # cache on: still decoded directly, chunk by chunk (measured faster than tensorstore rounds for
            # 128 KiB and 256 KiB chunks); off: tensorstore reads the patches' regions
            assert rounds == []
            assert not reader.parallel_fetch(touched)


def test_tensorstore_batch_names_a_corrupt_chunk(tmp_path: Path) -> None:
    from lazystack.core.errors import SourceReadError

    z = zarr.create_array(tmp_path / "a.zarr", shape=(64, 64), chunks=(32, 32), dtype="uint16")
    z[...] = 7
    (tmp_path / "a.zarr" / "c" / "1" / "0").write_bytes(b"not zstd at all")
    stack = LazyImageStack(ZarrArrayReader(zarr.open_array(tmp_path / "a.zarr", mode="r"), engine="tensorstore"), "YX")
    with chunk_cache_size(0):
        with pytest.raises(SourceReadError, match=r"32:40, 0:8") as info:
            stack.extract_patches([(0, None, (0, 0), (8, 8)), (0, None, (32, 0), (8, 8))])
        assert str(tmp_path / "a.zarr") in str(info.value)


@pytest.mark.parametrize("engine", ["direct", "tensorstore"])
@pytest.mark.parametrize("cache", [0, 2**20])
def test_a_store_deleted_after_opening_raises_a_public_error_in_a_batch(
    tmp_path: Path, engine: str, cache: int
) -> None:
    import shutil

    from lazystack import SourceNotFoundError, load_zarrs, set_zarr_engine

    z = zarr.create_array(tmp_path / "a.zarr", shape=(64, 64), chunks=(16, 16), dtype="uint16")
    z[...] = 3
    previous_engine = set_zarr_engine(engine)
    previous = set_chunk_cache_size(cache)
    try:
        (stack,) = load_zarrs(str(tmp_path / "a.zarr"), "YX")
        shutil.rmtree(tmp_path / "a.zarr")
        get_chunk_cache().clear()
        with pytest.raises(SourceNotFoundError, match="deleted after the stack was opened"):
            stack.extract_patches([(0, None, (8 * k, 8 * k), (8, 8)) for k in range(6)])
    finally:
        set_chunk_cache_size(previous)
        set_zarr_engine(previous_engine)


def test_other_stacks_fall_back_to_one_by_one(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    numpy_stack = LazyImageStack(rng.random((2, 3, 40, 40)), "SCYX")
    loaded = LazyImageStack(CountingReader(rng.random((50, 50)), (16, 16)), "YX").load()
    reqs_a = _requests(rng, numpy_stack, 10, (12, 12))
    reqs_b = _requests(rng, loaded, 10, (12, 12))
    mixed = [(numpy_stack, *r) for r in reqs_a] + [(loaded, *r) for r in reqs_b]
    _assert_same(extract_patches(mixed), _one_by_one(numpy_stack, reqs_a) + _one_by_one(loaded, reqs_b))
    assert extract_patches([]) == []


def test_bad_requests_raise_like_extract_patch() -> None:
    stack = LazyImageStack(CountingReader(np.zeros((2, 30, 30)), (1, 8, 8)), "SYX")
    with pytest.raises(PatchError, match="expected a tuple"):
        extract_patches([(stack, 0, None, (0, 0))])  # type: ignore[list-item]
    with pytest.raises(SampleIndexError):
        extract_patches([(stack, 5, None, (0, 0), (4, 4))])
    with pytest.raises(PatchError):
        extract_patches([(stack, 0, None, (0, 0), (4, 0))])


def test_patches_entirely_outside_are_zero_and_read_nothing() -> None:
    reader = CountingReader(np.ones((30, 30), dtype=np.uint8), (8, 8))
    stack = LazyImageStack(reader, "YX")
    (patch,) = extract_patches([(stack, 0, None, (100, 100), (5, 5))])
    assert patch.shape == (1, 5, 5)
    assert not patch.any()
    assert reader.calls == 0


class WrappingReader(Reader):
    """A back end's own reader class that hands out a chunked reader with ``as_chunked()`` (the reader contract)."""

    def __init__(self, data: np.ndarray) -> None:
        self.shape, self.dtype, self.data = data.shape, data.dtype, data
        self.inner = CountingReader(data, (1, 16, 16))

    def __getitem__(self, key: Any) -> np.ndarray:
        return self.inner[key]

    def as_chunked(self) -> ChunkedReader:
        return self.inner


def test_readers_exposing_as_chunked_are_batched(cache_mode: str) -> None:
    data = np.random.default_rng(6).random((2, 50, 60)).astype(np.float32)
    wrapper = WrappingReader(data)
    stack = LazyImageStack(wrapper, "SYX")
    reqs = _requests(np.random.default_rng(7), stack, 40, (20, 20))
    _assert_same(extract_patches([(stack, *r) for r in reqs]), _one_by_one(LazyImageStack(data, "SYX"), reqs))
    assert max(wrapper.inner.decoded.values()) == 1


def test_a_failed_source_share_returns_only_once_the_other_sources_shares_have_stopped() -> None:
    """Two sources' shares run in the batch pool; one fails while the other is mid-read: the error leaves
    ``extract_patches`` once the other share is over (not with a read still going on behind the caller's back,
    holding its chunks or a file the caller is about to close)."""
    started, release = threading.Event(), threading.Event()
    finished: list[ChunkIndex] = []

    class Failing(CountingReader):
        def _one(self, idx: ChunkIndex) -> np.ndarray:
            assert started.wait(60)  # the other source is reading
            threading.Timer(0.3, release.set).start()  # released after the error has been raised
            raise ValueError("source A is corrupt")

    class Slow(CountingReader):
        def _one(self, idx: ChunkIndex) -> np.ndarray:
            started.set()
            assert release.wait(60)
            finished.append(idx)
            return super()._one(idx)

    data = np.arange(2 * 16 * 16, dtype=np.uint16).reshape(2, 16, 16)
    a = LazyImageStack(Failing(data, (1, 8, 8)), "SYX")
    b = LazyImageStack(Slow(data, (1, 8, 8)), "SYX")
    with chunk_cache_size(0), pytest.raises(Exception, match="source A is corrupt"):
        extract_patches([(a, 0, None, (0, 0), (12, 12)), (b, 1, None, (2, 2), (12, 12))])
    assert finished  # the other source's read ended before the error reached us
