"""A local Zarr array whose data a zarr writer updates after a stack read it (metadata document untouched).

What a demanding user expects: a stack opened *after* the update reads the new data, and no patch ever
mixes chunks of before and after the update (a clear error or one version). Both fail today with the
decoded-chunk cache on: the cache key of a local Zarr chunk is the array's path plus its metadata
document's mtime, which a data update leaves alone, and only cache misses are checked. Marked as strict
expected failures until sources/zarr gives each open its own cache token and checks chunk files on the
cold path (see the robust helper's report); with the cache off both pass.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import zarr

import lazystack
from lazystack.io.cache import get_chunk_cache

pytestmark = pytest.mark.xfail(
    condition=get_chunk_cache().enabled,
    strict=True,
    reason="decoded-chunk cache keyed by array path + metadata mtime: data rewritten by zarr is not seen",
)


def _store(path: Path) -> zarr.Array:
    array = zarr.create_array(path, shape=(2, 64, 64), chunks=(1, 32, 32), dtype="uint16")
    array[...] = 1
    return array


def _update(path: Path) -> None:
    """Rewrite every chunk as zarr does (new files renamed in place); the metadata document stays as it was."""
    before = os.stat(path / "zarr.json")
    zarr.open_array(path, mode="r+")[...] = 2
    after = os.stat(path / "zarr.json")
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


def test_a_stack_opened_after_an_update_reads_the_new_data(tmp_path: Path) -> None:
    path = tmp_path / "a.zarr"
    _store(path)
    (before,) = lazystack.load_zarrs([path], "SYX")
    assert before.extract_patch(0, None, (0, 0), (8, 8)).max() == 1  # now in the chunk cache
    _update(path)
    (after,) = lazystack.load_zarrs([path], "SYX")
    reference = zarr.open_array(path, mode="r")[0, :8, :8]
    np.testing.assert_array_equal(after.extract_patch(0, None, (0, 0), (8, 8))[0], reference)


def test_an_open_stack_never_mixes_data_of_before_and_after_an_update(tmp_path: Path) -> None:
    path = tmp_path / "a.zarr"
    _store(path)
    (stack,) = lazystack.load_zarrs([path], "SYX")
    stack.extract_patch(0, None, (0, 0), (8, 8))  # chunk (0, 0, 0) cached
    _update(path)
    try:
        patch = stack.extract_patch(0, None, (28, 0), (8, 8))  # chunks (0, 0, 0) cached and (0, 1, 0) not
    except lazystack.LazyStackError as exc:
        error = str(exc)
    else:
        error = None
        assert np.unique(patch).size == 1, f"a patch mixing old and new chunks: values {np.unique(patch)}"
    assert error is None or "a.zarr" in error, error
