"""Review of branch fast14 (session 14, reviewer C): the rewritten scattered-batch path (pieces worked out once, the
cache looked up once up front, pieces copied inline), ChunkGrid's regular-grid pieces and the bool-index refusal,
attacked with inputs the helper's tests do not use; everything is compared with numpy slicing."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile
import zarr

import lazystack
from lazystack import LazyImageStack, extract_patches
from lazystack.io.cache import chunk_cache_size, get_chunk_cache
from lazystack.io.chunked import ChunkedReader, ChunkGrid, ChunkIndex, fetch_concurrently
from lazystack.sources.zarr.engines import ZarrArrayReader


class MemReader(ChunkedReader):
    """A custom chunk reader over numpy data (regular or dask-style irregular chunks), local, decoding one chunk."""

    def __init__(self, data: np.ndarray, chunks: Any, *, full_edge: bool = False) -> None:
        super().__init__(data.shape, data.dtype, chunks, token=f"mem-{id(self)}")
        self.data = data
        self.full_edge = full_edge  # return full-size chunks at the array's edge (allowed: "cut or full-size")

    def fetch_chunk(self, idx: ChunkIndex) -> np.ndarray:
        region = self.chunk_grid.chunk_region(idx)
        out = self.data[region].copy()
        if self.full_edge and self.chunk_grid.regular:
            pad = [(0, c - n) for c, n in zip(self.chunk_grid.chunk_shape, out.shape, strict=True)]
            out = np.pad(out, pad, constant_values=99)
        return out

    def fetch_chunks(self, indices: Sequence[ChunkIndex]) -> Mapping[ChunkIndex, np.ndarray]:
        return fetch_concurrently(indices, self.fetch_chunk)


def _zarr(path: Path, data: np.ndarray, chunks: tuple[int, ...]) -> Any:
    from zarr.codecs import ZstdCodec

    z = zarr.create_array(str(path), shape=data.shape, chunks=chunks, dtype=data.dtype, compressors=ZstdCodec(level=1))
    z[...] = data
    return zarr.open_array(str(path), mode="r")


def _want(data: np.ndarray, axes: str, s: int, chans: Any, coords: Sequence[int], size: Sequence[int]) -> np.ndarray:
    """The patch by numpy slicing: C(Z)YX float32, zeros outside the image."""
    arr = data[s]
    if "C" not in axes:
        arr = arr[None]
    if chans is not None:
        arr = arr[list(chans)]
    out = np.zeros((arr.shape[0], *size), np.float32)
    src, dst = [], []
    for c, n, d in zip(coords, size, arr.shape[1:], strict=True):
        lo, hi = max(0, c), min(d, c + n)
        src.append(slice(lo, max(lo, hi)))
        dst.append(slice(lo - c, max(lo, hi) - c))
    out[(slice(None), *dst)] = arr[(slice(None), *src)]
    return out


def _requests(rng: np.random.Generator, stack: Any, data: np.ndarray, axes: str, n: int, sizes: Sequence[int]) -> list:
    spatial = data.shape[2:] if "C" in axes else data.shape[1:]
    n_ch = data.shape[1] if "C" in axes else 1
    out = []
    for k in range(n):
        size = tuple(sizes[k % len(sizes)] for _ in spatial)
        size = tuple(min(a, b) for a, b in zip(size, spatial, strict=True))
        if k % 5 == 4:  # leaving the image on the low side
            coords = tuple(int(rng.integers(-a // 2, 1)) for a in size)
        else:
            coords = tuple(int(rng.integers(0, d - a + 1)) for a, d in zip(size, spatial, strict=True))
        chans: list[int] | None = None
        if n_ch > 1 and k % 3 == 1:
            chans = [[n_ch - 1, 0], [1, 1, 0], [0]][(k // 3) % 3]
        out.append((stack, int(rng.integers(0, data.shape[0])), chans, coords, size))
    return out


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[Any, np.ndarray, str, list[int]]]:
    """(stack, data, axes, patch sizes) for many kinds of source and chunking."""
    tmp = tmp_path_factory.mktemp("rev14c")
    rng = np.random.default_rng(5)
    d2 = rng.integers(0, 60000, (2, 3, 50, 61), dtype=np.uint16)
    d1px = rng.integers(0, 255, (2, 9, 11), dtype=np.uint8)
    d4 = rng.standard_normal((2, 2, 9, 20, 23)).astype(np.float32)
    dbig = rng.integers(0, 255, (3, 70, 45), dtype=np.uint8)
    out: list[tuple[Any, np.ndarray, str, list[int]]] = []
    for engine in ("direct", "tensorstore", "zarr", "auto"):
        z = _zarr(tmp / f"d2-{engine}.zarr", d2, (1, 1, 7, 9))
        out.append((LazyImageStack(ZarrArrayReader(z, engine=engine), "SCYX"), d2, "SCYX", [5, 16, 23]))
    z1 = _zarr(tmp / "d1px.zarr", d1px, (1, 1, 1))
    out.append((LazyImageStack(ZarrArrayReader(z1, engine="direct"), "SYX"), d1px, "SYX", [1, 3, 9]))
    z4 = _zarr(tmp / "d4.zarr", d4, (1, 1, 4, 8, 8))
    out.append((LazyImageStack(ZarrArrayReader(z4, engine="direct"), "SCZYX"), d4, "SCZYX", [3, 9, 12]))
    tifffile.imwrite(tmp / "t.tif", dbig, tile=(16, 16), photometric="minisblack")
    out.append((lazystack.load_tiffs(tmp / "t.tif", "SYX")[0], dbig, "SYX", [8, 20, 33]))
    out.append((LazyImageStack(d2, "SCYX"), d2, "SCYX", [6, 20]))
    irregular = ((1, 1), (2, 1), (5, 13, 1, 31), (1, 30, 30))
    out.append((LazyImageStack(MemReader(d2, irregular), "SCYX"), d2, "SCYX", [4, 15, 40]))
    out.append((LazyImageStack(MemReader(dbig, (1, 16, 16), full_edge=True), "SYX"), dbig, "SYX", [7, 17, 30]))
    return out


@pytest.fixture(params=[0, 3 * 2**10, 64 * 2**20], ids=["off", "tiny", "big"])
def cache_bytes(request: pytest.FixtureRequest) -> Iterator[int]:
    with chunk_cache_size(request.param):
        get_chunk_cache().clear()
        yield request.param
        get_chunk_cache().clear()


def _check(batch: list, expected: list[np.ndarray], got: list[np.ndarray]) -> None:
    assert len(got) == len(batch)
    for k, (req, want, patch) in enumerate(zip(batch, expected, got, strict=True)):
        assert patch.dtype == np.float32, k
        np.testing.assert_array_equal(patch, want, err_msg=f"request {k}: {req[1:]}")


def test_mixed_batches_equal_numpy_slicing(sources: list, cache_bytes: int) -> None:
    # one batch over every kind of source at once (zarr on each engine, 1-pixel chunks, 4-D, TIFF, numpy, custom
    # irregular and full-edge readers), channel lists (unsorted, duplicated), patches larger than a chunk, patches
    # leaving the image; the cache off, smaller than one batch's chunks (evicting within the batch), and large
    rng = np.random.default_rng(1)
    batch: list = []
    expected: list[np.ndarray] = []
    for stack, data, axes, sizes in sources:
        for req in _requests(rng, stack, data, axes, 12, sizes):
            batch.append(req)
            expected.append(_want(data, axes, *req[1:]))
    order = rng.permutation(len(batch))
    batch = [batch[i] for i in order]
    expected = [expected[i] for i in order]
    for _ in range(3):  # cold, seen again, held
        _check(batch, expected, extract_patches(batch))
    half = batch[::2] + batch[1::2]
    _check(half, expected[::2] + expected[1::2], extract_patches(half, max_batch_bytes=2048))


def test_concurrent_batches_from_threads_equal_numpy_slicing(sources: list, cache_bytes: int) -> None:
    # a read-ahead thread and the caller (and two more) extracting overlapping batches at once, the cache shared
    rng = np.random.default_rng(2)
    jobs = []
    for t in range(4):
        batch: list = []
        expected: list[np.ndarray] = []
        for stack, data, axes, sizes in sources[t % 2 :: 2]:
            for req in _requests(rng, stack, data, axes, 10, sizes):
                batch.append(req)
                expected.append(_want(data, axes, *req[1:]))
        jobs.append((batch, expected))
    errors: list[BaseException] = []
    start = threading.Barrier(len(jobs))

    def run(batch: list, expected: list) -> None:
        try:
            start.wait()
            for _ in range(3):
                _check(batch, expected, extract_patches(batch))
        except BaseException as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=run, args=job) for job in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not any(t.is_alive() for t in threads)
    if errors:
        raise errors[0]


def test_regular_pieces_equal_the_general_algorithm_on_regions_past_a_cut_last_chunk() -> None:
    # 1-pixel chunks, chunks larger than the axis, regions spanning many chunks: against the irregular path
    import random

    rng = random.Random(3)
    for _ in range(3000):
        nd = rng.randint(1, 4)
        shape = tuple(rng.randint(1, 30) for _ in range(nd))
        grid = ChunkGrid(shape, tuple(rng.choice([1, 1, 2, 3, 7, 40]) for _ in range(nd)))
        general = ChunkGrid(shape, grid.sizes)
        region = []
        for n in shape:
            a = rng.randint(0, n - 1)
            region.append(slice(a, rng.randint(a + 1, n)))
        assert grid.pieces(region) == general.pieces(region), (shape, grid.chunk_shape, region)
        assert [p[0] for p in grid.pieces(region)] == grid.touched(region)


# -- errors in the middle of a batch ---------------------------------------------------------------------------
@pytest.mark.parametrize("engine", ["direct", "auto"])
def test_a_corrupt_chunk_mid_batch_raises_naming_its_file_and_poisons_nothing(
    tmp_path: Path, engine: str, cache_bytes: int
) -> None:
    from lazystack import SourceReadError

    data = np.random.default_rng(4).integers(0, 255, (2, 64, 64), dtype=np.uint8)
    _zarr(tmp_path / "a.zarr", data, (1, 16, 16))
    stack = LazyImageStack(ZarrArrayReader(zarr.open_array(str(tmp_path / "a.zarr"), mode="r"), engine=engine), "SYX")
    batch = [(stack, s, None, (y, x), (16, 16)) for s in range(2) for y in range(0, 64, 16) for x in range(0, 64, 16)]
    warm = batch[:8]  # sample 0: held by the cache (when on) on the failing batch
    for _ in range(3):
        extract_patches(warm)
    bad = tmp_path / "a.zarr" / "c" / "1" / "2" / "3"
    good = bad.read_bytes()
    bad.write_bytes(good[: len(good) // 2])
    with pytest.raises(SourceReadError, match=r"chunk \(1, 2, 3\).*a\.zarr/c/1/2/3"):
        extract_patches(batch)
    bad.write_bytes(good)
    got = extract_patches(batch)
    _check(batch, [data[s, y : y + 16, x : x + 16][None].astype(np.float32) for _, s, _, (y, x), _ in batch], got)


# -- bool indices: operator.index(True) is 1 -------------------------------------------------------------------
def test_a_sampler_refuses_torch_bools_and_a_bool_epoch() -> None:
    # fast14 refused Python / NumPy bools only: a torch bool (a mask tensor, a 0-d tensor) still gave index 1 / 0
    torch = pytest.importorskip("torch")
    from lazystack import RandomSampler
    from lazystack.torch import ChunkLocalSampler

    stack = LazyImageStack(np.zeros((2, 64, 64), np.uint8), "SYX")
    random = RandomSampler([stack], 16, 10, seed=3)
    for sampler in (random, ChunkLocalSampler(random, [stack], per_chunk=4, window=32)):
        with pytest.raises(TypeError, match=r"tensor\(True\).*bool.*accepted integers 0 to 9"):
            sampler.spec(torch.tensor(True))
        with pytest.raises(TypeError, match="bool"):
            sampler.epoch_specs(0, torch.tensor([True, False]))
        with pytest.raises(TypeError, match="bool"):
            sampler.epoch_specs(0, [torch.tensor(True)])
        with pytest.raises(TypeError, match=r"epoch must be .*integer, got True.*bool"):
            sampler.epoch_specs(True, [1])
        with pytest.raises(TypeError, match=r"epoch must be .*integer, got True.*bool"):
            sampler.spec(1, True)
        assert sampler.spec(torch.tensor(1)) == sampler.spec(1) == sampler.epoch_specs(0, torch.tensor([1]))[0]
        assert sampler.spec(1, np.int64(2)) == sampler.epoch_specs(2, [1])[0]


# -- remote, and DataLoader workers ----------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["v2", "v3-sharded"])
def test_batches_over_http_equal_numpy_slicing(tmp_path: Path, kind: str, cache_bytes: int) -> None:
    from zarr_helpers import serve_directory, write_plain_store

    data = write_plain_store(tmp_path / f"{kind}.zarr", 2 if kind == "v2" else 3, shards=kind != "v2")
    with serve_directory(tmp_path) as (url, _):
        stacks = lazystack.load_zarrs([f"{url}/{kind}.zarr"], "SYX")
        rng = np.random.default_rng(6)
        batch: list = []
        expected: list[np.ndarray] = []
        for stack, name in zip(stacks, ["a", "b"], strict=True):
            for req in _requests(rng, stack, data[name], "SYX", 16, [5, 16, 33]):
                batch.append(req)
                expected.append(_want(data[name], "SYX", *req[1:]))
        for max_bytes in (16 * 2**20, 2048):  # one round; many rounds (two in flight)
            _check(batch, expected, extract_patches(batch, max_batch_bytes=max_bytes))


@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_dataloader_workers_batches_equal_numpy_slicing(tmp_path: Path, context: str) -> None:
    torch = pytest.importorskip("torch")
    from torch.utils.data import DataLoader

    from lazystack import RandomSampler
    from lazystack.torch import EpochSampler, PatchDataset

    data = np.random.default_rng(8).integers(0, 60000, (3, 2, 70, 50), dtype=np.uint16)
    _zarr(tmp_path / "a.zarr", data, (1, 1, 16, 16))
    stacks = lazystack.load_zarrs([tmp_path / "a.zarr"], "SCYX")
    sampler = RandomSampler(stacks, 20, 24, seed=4)
    dataset = PatchDataset(stacks, sampler)
    loader = DataLoader(
        dataset, batch_size=8, sampler=EpochSampler(dataset), num_workers=2, multiprocessing_context=context
    )
    specs = sampler.epoch_specs(0)
    got = torch.cat([b["input"] for b in loader]).numpy()
    want = np.stack([_want(data, "SCYX", s.sample, s.channels, s.coords, s.patch_size) for s in specs])
    np.testing.assert_array_equal(got, want)


# -- found, not fast14's: an open stack over a rewritten store, on the zarr and tensorstore engines --------------
# (fixed by stale15: every engine checks each local chunk file it reads, after the read)
@pytest.mark.parametrize("engine", ["zarr", "tensorstore"])
def test_an_open_stack_over_a_rewritten_store_never_mixes_versions_in_a_patch(tmp_path: Path, engine: str) -> None:
    import time

    from lazystack.sources.zarr.engines import set_zarr_engine

    if engine == "tensorstore":
        pytest.importorskip("tensorstore")

    old = np.random.default_rng(0).integers(0, 255, (2, 64, 64), dtype=np.uint8)
    new = 255 - old
    _zarr(tmp_path / "a.zarr", old, (1, 16, 16))
    previous = set_zarr_engine(engine)
    try:
        with chunk_cache_size(64 * 2**20):
            get_chunk_cache().clear()
            (stack,) = lazystack.load_zarrs([tmp_path / "a.zarr"], "SYX")
            batch = [(stack, s, None, (y, x), (20, 20)) for s in range(2) for y in (0, 22, 44) for x in (0, 22, 44)]
            for _ in range(3):
                extract_patches(batch[:6])  # held by the cache
            time.sleep(0.01)  # a later modification time than the opening, whatever the file system's resolution
            zarr.open_array(str(tmp_path / "a.zarr"), mode="r+")[...] = new
            try:
                got = extract_patches(batch)
            except lazystack.SourceReadError as e:
                error = str(e)
            else:
                error = None
    finally:
        set_zarr_engine(previous)
    if error is not None:  # an error is fine when it names the store
        assert "a.zarr" in error, error
        return
    for (_, s, _, (y, x), _), patch in zip(batch, got, strict=True):
        versions = [v[s, y : y + 20, x : x + 20] for v in (old, new)]
        assert any(np.array_equal(patch[0], v) for v in versions), (s, y, x)


@pytest.mark.parametrize("indices", [[0, True], (2, np.True_), [False, 3]], ids=repr)
def test_epoch_specs_refuses_a_bool_among_int_indices(indices: Any) -> None:
    # np.asarray([0, True]) is an int64 array: fast14's check (a bool dtype) let True through as 1
    from lazystack import RandomSampler

    stack = LazyImageStack(np.zeros((2, 64, 64), np.uint8), "SYX")
    sampler = RandomSampler([stack], 16, 10, seed=3)
    with pytest.raises(TypeError, match=r"(True|False).*bool.*accepted integers 0 to 9"):
        sampler.epoch_specs(0, indices)
    assert sampler.epoch_specs(0, [0, 1, np.int64(2)]) == [sampler.spec(i) for i in range(3)]


class ShortReader(MemReader):
    """Returns chunk (0, 1, 1) one row short: an error naming the chunk, never a broadcast or a half-filled patch."""

    def fetch_chunk(self, idx: ChunkIndex) -> np.ndarray:
        out = super().fetch_chunk(idx)
        return out[:, :-1] if idx == (0, 1, 1) else out


@pytest.mark.parametrize("cache", [0, 64 * 2**20])
def test_a_chunk_too_small_for_its_cell_mid_batch_raises_naming_it(cache: int) -> None:
    data = np.arange(2 * 48 * 48, dtype=np.uint16).reshape(2, 48, 48)
    stack = LazyImageStack(ShortReader(data, (1, 16, 16)), "SYX")
    batch = [(stack, s, None, (y, x), (16, 16)) for s in range(2) for y in (0, 8, 16, 32) for x in (0, 8, 16, 32)]
    with chunk_cache_size(cache):
        get_chunk_cache().clear()
        with pytest.raises(ValueError, match=r"chunk \(0, 1, 1\) has shape \(1, 15, 16\), too small"):
            extract_patches(batch)
        ok = [r for r in batch if r[1] == 1]
        _check(ok, [_want(data, "SYX", *r[1:]) for r in ok], extract_patches(ok))


def test_a_truncated_tiff_mid_batch_raises_naming_the_file(tmp_path: Path, cache_bytes: int) -> None:
    from lazystack import SourceReadError

    data = np.random.default_rng(9).integers(0, 60000, (3, 96, 80), dtype=np.uint16)
    path = tmp_path / "t.tif"
    tifffile.imwrite(path, data, tile=(16, 16), photometric="minisblack", compression="zlib")
    (stack,) = lazystack.load_tiffs(path, "SYX")
    batch = [(stack, s, None, (y, x), (20, 20)) for s in range(3) for y in (0, 30, 76) for x in (0, 30, 60)]
    _check(batch[:9], [_want(data, "SYX", *r[1:]) for r in batch[:9]], extract_patches(batch[:9]))
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.truncate(size * 2 // 3)
    with pytest.raises(SourceReadError, match=r"t\.tif"):
        extract_patches(batch)
