"""A local Zarr array whose data a zarr writer updates after a stack read it (metadata document untouched).

What a demanding user expects: a stack opened *after* the update reads the new data, and no patch ever
mixes chunks of before and after the update (a clear error or one version). Each open of a Zarr source has
its own names in the decoded-chunk cache, and a local chunk file found modified after the opening when it is
read from the store (cache misses only) raises an error naming it. References: zarr-python's own read of
the updated store.
"""

from __future__ import annotations

import os
import pickle
import re
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr
from zarr_helpers import dated_now

import lazystack
from lazystack.io.cache import get_chunk_cache
from lazystack.ops.batch import extract_patches
from lazystack.sources.zarr.engines import AutoEngine, set_zarr_engine


def _store(path: Path) -> zarr.Array:
    array = zarr.create_array(path, shape=(2, 64, 64), chunks=(1, 32, 32), dtype="uint16")
    array[...] = 1
    return array


def _update(path: Path) -> None:
    """Rewrite every chunk as zarr does (new files renamed in place); the metadata document stays as it was."""
    before = os.stat(path / "zarr.json")
    with dated_now(path):  # a date after the opening, whatever the file system's clock
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


def test_the_open_stack_raises_naming_the_rewritten_chunk(tmp_path: Path) -> None:
    path = tmp_path / "a.zarr"
    _store(path)
    (stack,) = lazystack.load_zarrs([path], "SYX")
    stack.extract_patch(0, None, (0, 0), (8, 8))
    _update(path)
    with pytest.raises(lazystack.SourceReadError, match=r"(?s)a\.zarr.*c/0/1/0.*reopen"):
        stack.extract_patch(0, None, (28, 0), (8, 8))
    (reopened,) = lazystack.load_zarrs([path], "SYX")  # what the message says to do
    reference = zarr.open_array(path, mode="r")[0, 28:36, :8]
    np.testing.assert_array_equal(reopened.extract_patch(0, None, (28, 0), (8, 8))[0], reference)


def test_a_rewritten_shard_of_an_open_stack_raises(tmp_path: Path) -> None:
    path = tmp_path / "s.zarr"
    array = zarr.create_array(path, shape=(64, 64), chunks=(16, 16), shards=(32, 32), dtype="uint16")
    array[...] = 1
    (stack,) = lazystack.load_zarrs([path], "YX")
    assert stack.extract_patch(0, None, (0, 0), (8, 8)).max() == 1  # shard (0, 0)'s index and chunk cached
    with dated_now(path):
        zarr.open_array(path, mode="r+")[...] = 2
    with pytest.raises(lazystack.SourceReadError, match=r"(?s)s\.zarr.*c/0/0.*reopen"):
        stack.extract_patch(0, None, (16, 0), (8, 8))  # another inner chunk of the same, rewritten, shard


def test_a_pickled_stack_keeps_its_cache_names_and_a_new_open_has_its_own(tmp_path: Path) -> None:
    if not get_chunk_cache().enabled:
        pytest.skip("the decoded-chunk cache is off")
    path = tmp_path / "a.zarr"
    _store(path)
    (stack,) = lazystack.load_zarrs([path], "SYX")
    stack.extract_patch(0, None, (0, 0), (8, 8))
    cache = get_chunk_cache()
    hits, misses = cache.stats().hits, cache.stats().misses
    pickle.loads(pickle.dumps(stack)).extract_patch(0, None, (0, 0), (8, 8))
    assert (cache.stats().hits, cache.stats().misses) == (hits + 1, misses)
    (again,) = lazystack.load_zarrs([path], "SYX")
    again.extract_patch(0, None, (0, 0), (8, 8))
    assert (cache.stats().hits, cache.stats().misses) == (hits + 1, misses + 1)


def test_chunk_files_dated_in_the_future_are_read(tmp_path: Path) -> None:
    """A copy from a machine whose clock runs ahead is not a change after the opening."""
    path = tmp_path / "a.zarr"
    _store(path)
    zarr.open_array(path, mode="r+")[1] = 3
    (stack,) = lazystack.load_zarrs([path], "SYX")
    future = time.time_ns() + 3600 * 10**9
    for chunk in (path / "c").rglob("*"):
        if chunk.is_file():
            os.utime(chunk, ns=(future, future))
    reference = zarr.open_array(path, mode="r")[:]
    for s in range(2):
        np.testing.assert_array_equal(stack.extract_patch(s, None, (20, 20), (24, 24))[0], reference[s, 20:44, 20:44])


def test_chunks_decoded_by_tensorstore_are_checked_too(tmp_path: Path) -> None:
    pytest.importorskip("tensorstore")
    path = tmp_path / "a.zarr"
    _store(path)
    opened = time.time_ns()
    engine = AutoEngine(zarr.open_array(path, mode="r"), min_tensorstore=1, min_tensorstore_bytes=0)
    engine.direct.modified_after = opened
    chunks = [(0, 0, 0), (0, 1, 0)]
    assert engine.prefers_tensorstore(len(chunks))
    assert all(v.max() == 1 for v in engine.fetch(chunks).values())
    _update(path)
    with pytest.raises(lazystack.SourceReadError, match=r"(?s)a\.zarr.*c/0/0/0.*reopen"):
        engine.fetch(chunks)


# -- the batch path names the array too -------------------------------------------------------------
def _group_array(root: Path, **kwargs: object) -> Path:
    """An array ``b`` in the group ``root`` (so the array's path is not the store's), 2x64x64 uint16."""
    group = zarr.open_group(root, mode="w")
    array = group.create_array("b", shape=(2, 64, 64), dtype="uint16", **kwargs)  # type: ignore[arg-type]
    array[...] = np.arange(2 * 64 * 64, dtype="uint16").reshape(2, 64, 64)
    return root / "b"


@pytest.mark.parametrize("path_kind", ["single", "batch", "stack-batch"])
def test_a_rewritten_chunk_names_the_array_the_file_the_key_and_reopen_on_every_path(
    tmp_path: Path, path_kind: str
) -> None:
    path = _group_array(tmp_path / "g.zarr", chunks=(1, 32, 32))
    (stack,) = lazystack.load_zarrs([path], "SYX")
    stack.extract_patch(0, None, (0, 0), (8, 8))
    with dated_now(path):  # a later modification time than the opening, whatever the file system's clock
        zarr.open_array(path, mode="r+")[...] = 3
    reads = {
        "single": lambda: stack.extract_patch(1, None, (0, 0), (8, 8)),
        "batch": lambda: extract_patches([(stack, 1, None, (0, 0), (8, 8)), (stack, 1, None, (0, 0), (40, 40))]),
        "stack-batch": lambda: stack.extract_patches([(1, None, (0, 0), (8, 8))]),
    }
    with pytest.raises(lazystack.SourceReadError) as info:
        reads[path_kind]()
    message = str(info.value)
    assert re.search(rf"{re.escape(str(path))}/?'", message), message  # the array, as such
    # the chunk file and its store key: a chunk of sample 1 (the batch decodes its four chunks concurrently, so
    # whichever fails first is named)
    named = re.search(r"chunk file '([^']+)' \(key '([^']+)'\)", message)
    assert named is not None, message
    file, key = named.groups()
    assert key.startswith("b/c/1/"), message
    assert file == str(path.parent / key), message
    assert "reopen" in message
    (reopened,) = lazystack.load_zarrs([path], "SYX")  # what the message says to do
    np.testing.assert_array_equal(reopened.extract_patch(1, None, (0, 0), (8, 8))[0], np.full((8, 8), 3))


def _corrupt_chunk(array: Path) -> None:
    (array / "c" / "0" / "0" / "0").write_bytes(b"not a chunk" * 8)


def _short_shard(array: Path) -> None:
    (array / "c" / "0" / "0" / "0").write_bytes(b"x" * 10)


def _bad_shard_index(array: Path) -> None:
    shard = array / "c" / "0" / "0" / "0"
    data = bytearray(shard.read_bytes())
    data[-4:] = b"\0\0\0\0"  # the index's crc32c
    shard.write_bytes(bytes(data))


@pytest.mark.parametrize("engine", ["auto", "direct", "zarr", "tensorstore"])
@pytest.mark.parametrize(
    ("damage", "layout"),
    [
        (_corrupt_chunk, {"chunks": (1, 32, 32)}),
        (_short_shard, {"chunks": (1, 16, 16), "shards": (1, 32, 32)}),
        (_bad_shard_index, {"chunks": (1, 16, 16), "shards": (1, 32, 32)}),
    ],
    ids=["corrupt-chunk", "short-shard", "bad-shard-index"],
)
def test_a_damaged_store_raises_a_read_error_naming_the_array_in_a_batch(
    tmp_path: Path, engine: str, damage: Any, layout: dict[str, Any]
) -> None:
    if engine == "tensorstore":
        pytest.importorskip("tensorstore")
    path = _group_array(tmp_path / "g.zarr", **layout)
    damage(path)
    previous = set_zarr_engine(engine)
    try:
        get_chunk_cache().clear()
        (stack,) = lazystack.load_zarrs([path], "SYX")
        reqs = [
            (stack, 0, None, (0, 0), (8, 8)),
            (stack, 0, None, (20, 20), (30, 30)),
            (stack, 1, [0], (0, 0), (40, 40)),
        ]
        with pytest.raises(lazystack.SourceReadError) as info:
            extract_patches(reqs)
        named = rf"{re.escape(str(path))}/?'"  # the array as such, not only a chunk file in it
        assert re.search(named, str(info.value)), str(info.value)
        with pytest.raises(lazystack.SourceReadError) as single:
            stack.extract_patch(0, None, (0, 0), (8, 8))
        assert re.search(named, str(single.value)), str(single.value)
    finally:
        set_zarr_engine(previous)
        get_chunk_cache().clear()
