"""Batched patch extraction: same arrays as one-by-one calls, each chunk read once."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr

from lazystack import LazyImageStack, PatchError, SampleIndexError
from lazystack.batch import extract_patches
from lazystack.cache import get_chunk_cache, set_chunk_cache_size
from lazystack.chunked import ChunkedReader, ChunkIndex, fetch_concurrently
from lazystack.engines import ZarrArrayReader, available_engines


class CountingReader(ChunkedReader):
    """Chunked reader over numpy data that counts every chunk it decodes."""

    def __init__(self, data: np.ndarray, chunks: Sequence[int]) -> None:
        super().__init__(data.shape, data.dtype, chunks, token=f"counting-{id(self)}")
        self.data = data
        self.decoded: Counter[ChunkIndex] = Counter()
        self.calls = 0
        self._lock = threading.Lock()

    def _one(self, idx: ChunkIndex) -> np.ndarray:
        with self._lock:
            self.decoded[idx] += 1
        return self.data[self.chunk_grid.chunk_region(idx)].copy()

    def fetch_chunks(self, indices: Sequence[ChunkIndex]) -> Mapping[ChunkIndex, np.ndarray]:
        self.calls += 1
        return fetch_concurrently(indices, self._one)


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


@pytest.mark.parametrize("engine", ["direct", "tensorstore", "zarr"])
def test_batch_equals_one_by_one_over_zarr_stacks(zarr_arrays: dict[str, Any], engine: str, cache_mode: str) -> None:
    rng = np.random.default_rng(1)
    assert engine in available_engines(zarr_arrays["syx"])
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


def test_each_touched_chunk_is_decoded_once_per_batch(cache_mode: str) -> None:
    data = np.arange(2 * 100 * 100, dtype=np.int32).reshape(2, 100, 100)
    reader = CountingReader(data, (1, 10, 10))
    stack = LazyImageStack(reader, "SYX")
    rng = np.random.default_rng(2)
    reqs = _requests(rng, stack, 64, (25, 25))
    ref = LazyImageStack(data, "SYX")
    _assert_same(extract_patches([(stack, *r) for r in reqs]), _one_by_one(ref, reqs))
    assert reader.calls == 1  # one fetch for the whole batch
    assert reader.decoded
    assert max(reader.decoded.values()) == 1
    # one-by-one without a cache decodes overlapping chunks again and again
    if cache_mode == "cache-off":
        before = sum(reader.decoded.values())
        _one_by_one(stack, reqs)
        assert sum(reader.decoded.values()) - before > before


def test_small_byte_bound_serves_the_batch_in_rounds(cache_mode: str) -> None:
    data = np.random.default_rng(3).random((80, 90)).astype(np.float32)
    reader = CountingReader(data, (10, 10))
    stack = LazyImageStack(reader, "YX")
    reqs = _requests(np.random.default_rng(4), stack, 30, (20, 20))
    got = extract_patches([(stack, *r) for r in reqs], max_batch_bytes=4 * 10 * 10 * 4)
    _assert_same(got, _one_by_one(LazyImageStack(data, "YX"), reqs))
    assert reader.calls > 1


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


class WrappingReader:
    """A back end's own reader class that hands out a chunked reader with ``as_chunked()``."""

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
    assert wrapper.inner.calls == 1
    assert max(wrapper.inner.decoded.values()) == 1
