"""Regressions an independent review of the session-11 "fixes" change found, each pinned by a test that failed
before its fix. References: zarr-python's own read of the same bytes, numpy slicing, the plate's own metadata.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr
from zarr.codecs import BloscCodec, BytesCodec, ShardingCodec

import lazystack
from lazystack.io.cache import get_chunk_cache
from lazystack.sources.zarr.engines import set_zarr_engine


@pytest.fixture(params=["zarr", "direct", "tensorstore"])
def zarr_engine(request: pytest.FixtureRequest) -> Any:
    if request.param == "tensorstore":
        pytest.importorskip("tensorstore")
    previous = set_zarr_engine(request.param)
    get_chunk_cache().clear()
    try:
        yield request.param
    finally:
        set_zarr_engine(previous)
        get_chunk_cache().clear()


# -- is_read_failure: a damaged shard index is a read failure, whatever Python error zarr's decoding raises ----------
def test_a_shard_index_with_an_offset_past_any_file_is_a_read_error(tmp_path: Path, zarr_engine: str) -> None:
    path = tmp_path / "a.zarr"
    sharding = ShardingCodec(chunk_shape=(32, 32), codecs=[BytesCodec(), BloscCodec()], index_codecs=[BytesCodec()])
    array = zarr.create_array(
        path, shape=(64, 64), dtype="uint16", chunks=(64, 64), serializer=sharding, compressors=None
    )
    array[...] = np.arange(64 * 64, dtype="uint16").reshape(64, 64)
    shard = path / "c" / "0" / "0"
    stat = os.stat(shard)
    raw = bytearray(shard.read_bytes())
    struct.pack_into("<Q", raw, len(raw) - 4 * 16, 2**64 - 5)  # the first inner chunk's offset: 2**64 - 5
    shard.write_bytes(bytes(raw))
    os.utime(shard, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # damaged bytes, not a rewrite after the opening
    with pytest.raises(Exception) as reference:  # noqa: PT011 - zarr's own read fails on these bytes
        zarr.open_array(path, mode="r")[:32, :32]
    assert not isinstance(reference.value, lazystack.LazyStackError)
    (stack,) = lazystack.load_zarrs([path], "YX")
    with pytest.raises(lazystack.SourceReadError, match=r"a\.zarr"):
        stack.extract_patch(0, None, (0, 0), (32, 32))
