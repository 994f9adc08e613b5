"""Session 14, helper fast14: the batch path's per-patch cost (bit-identical fast paths) and bool spec indices."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import zarr

from lazystack import (
    FixedSampler,
    LazyImageStack,
    RandomSampler,
    StratifiedSampler,
    WholeSampleSampler,
    extract_patches,
)
from lazystack.sampling.samplers import PatchSpec


def _samplers() -> list[Any]:
    stack = LazyImageStack(np.zeros((2, 64, 64), np.uint8), "SYX")
    random = RandomSampler([stack], 16, 10, seed=3)
    out = [
        random,
        FixedSampler([PatchSpec(0, 0, None, (0, 0), (16, 16))] * 3),
        WholeSampleSampler([stack]),
        StratifiedSampler([stack], [(0, 0, (0, 0), (32, 64)), (0, 1, (0, 0), (64, 64))], 16, 8, seed=1),
    ]
    try:
        from lazystack.torch import ChunkLocalSampler
    except ImportError:  # torch missing
        return out
    return [*out, ChunkLocalSampler(random, [stack], per_chunk=4, window=32)]


@pytest.mark.parametrize("sampler", _samplers(), ids=lambda s: type(s).__name__)
@pytest.mark.parametrize("index", [True, False, np.bool_(True)])
def test_spec_refuses_a_bool_index(sampler: Any, index: Any) -> None:
    # operator.index(True) is 1: before the fix spec(True) silently returned index 1's spec
    with pytest.raises(TypeError, match=rf"{index!r}.*bool.*accepted integers 0 to {len(sampler) - 1}"):
        sampler.spec(index)
    with pytest.raises(TypeError, match=rf"{index!r}.*bool"):
        sampler.epoch_specs(0, [index])
    with pytest.raises(TypeError, match="bool"):
        sampler.epoch_specs(0, np.array([True, False]))
    assert sampler.spec(1) == sampler.epoch_specs(0, [1])[0]  # an int still works


# -- the scattered batch path: bit-identical to numpy slicing --------------------------------------
def _array(path: Any, data: np.ndarray, chunks: tuple[int, ...]) -> Any:
    from zarr.codecs import ZstdCodec

    z = zarr.create_array(path, shape=data.shape, chunks=chunks, dtype=data.dtype, compressors=ZstdCodec(level=1))
    z[...] = data
    return zarr.open_array(path, mode="r")


def _data(shape: tuple[int, ...], dtype: str) -> np.ndarray:
    rng = np.random.default_rng(7)
    if dtype == "float32":
        return rng.standard_normal(shape).astype(np.float32)
    return rng.integers(0, np.iinfo(dtype).max, shape, dtype=dtype)


def _requests(stack: Any, spatial: tuple[int, ...], chunks: tuple[int, ...], n_samples: int, size: int) -> list[Any]:
    """Patches inside one chunk, over every chunk border, at the image's far edge (a cut chunk), and random ones."""
    rng = np.random.default_rng(11)
    corners: list[tuple[int, ...]] = [
        (0,) * len(spatial),
        tuple(c - size // 2 for c in chunks),  # over the first border in every dim
        tuple(n - size for n in spatial),  # at the far edge, in the last (cut) chunk
        tuple(c for c in chunks),  # starting exactly on a border
        tuple(c - size for c in chunks),  # ending exactly on a border
    ]
    corners = [tuple(min(max(0, a), n - size) for a, n in zip(c, spatial, strict=True)) for c in corners]  # inside
    corners += [tuple(int(rng.integers(0, n - size + 1)) for n in spatial) for _ in range(27)]
    return [(stack, int(rng.integers(n_samples)), None, c, (size,) * len(spatial)) for c in corners]


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "float32"])
@pytest.mark.parametrize(
    ("shape", "chunks", "size"),
    [((3, 150, 170), (1, 32, 48), 20), ((2, 21, 70, 90), (1, 8, 32, 32), 12)],
    ids=["2d", "3d"],
)
@pytest.mark.parametrize("cache_mib", [0, 64])
def test_scattered_batches_equal_numpy_slicing(
    tmp_path: Any, dtype: str, shape: tuple[int, ...], chunks: tuple[int, ...], size: int, cache_mib: int
) -> None:
    from lazystack.io.cache import chunk_cache_size
    from lazystack.sources.zarr.engines import ZarrArrayReader

    data = _data(shape, dtype)
    stack = LazyImageStack(
        ZarrArrayReader(_array(tmp_path / "a.zarr", data, chunks), engine="direct"),
        "SYX" if len(shape) == 3 else "SZYX",
    )
    reqs = _requests(stack, shape[1:], chunks[1:], shape[0], size)
    with chunk_cache_size(cache_mib * 2**20):
        # three rounds: chunks read for the first time, then seen again (kept), then served from the cache;
        # the fourth batch mixes held chunks with new ones
        more = _requests(stack, shape[1:], chunks[1:], shape[0], size + 3)
        for batch in (reqs, reqs, reqs, reqs[::2] + more):
            got = extract_patches(batch)
            for (_, s, _, c, p), patch in zip(batch, got, strict=True):
                want = data[(s, *(slice(a, a + n) for a, n in zip(c, p, strict=True)))].astype(np.float32)[None]
                assert patch.dtype == np.float32
                np.testing.assert_array_equal(patch, want)


def test_regular_grid_pieces_equal_the_general_algorithm() -> None:
    # the regular grid's own pieces() against the same grid given by its explicit chunk sizes (the general path)
    import random

    from lazystack.io.chunked import ChunkGrid

    rng = random.Random(0)
    for _ in range(2000):
        nd = rng.randint(0, 4)
        shape = tuple(rng.randint(0, 40) for _ in range(nd))
        grid = ChunkGrid(shape, tuple(rng.randint(1, 12) for _ in range(nd)))
        general = ChunkGrid(shape, grid.sizes)
        region = []
        for n in shape:
            a = rng.randint(0, n)
            region.append(slice(a, rng.randint(a, n)))
        assert grid.pieces(region) == general.pieces(region), (shape, grid.chunk_shape, region)
