"""The batch path's per-chunk work in DataLoader workers.

Worker-aware decoding threads (each DataLoader worker decoding on
``cores // num_workers`` threads) were measured and rejected (docs/benchmarks.md,
"Decoding threads in DataLoader workers"); what stays is the rounds path
casting a chunk not in the reader's dtype once, not once per piece, counted
here against numpy slicing.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from lazystack import LazyImageStack
from lazystack.io.cache import chunk_cache_size
from lazystack.io.chunked import FunctionChunkedReader
from lazystack.ops.batch import extract_patches


class _CountingCasts(np.ndarray):
    """A chunk that counts its ``astype`` calls (the batch casts a chunk not in the reader's dtype)."""

    casts = 0

    def astype(self, *args: Any, **kwargs: Any) -> Any:
        type(self).casts += 1
        return np.asarray(self).astype(*args, **kwargs)


def test_the_rounds_path_casts_each_chunk_once_not_once_per_piece() -> None:
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
