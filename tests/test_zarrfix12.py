"""Zarr source defects left alone in session 11, each pinned by a test that fails without its fix.

References are independent of the code under test: the error the single-patch path raises (for the batch
path and a forked worker), zarr-python's own reads, the plate's own metadata, the number of ``stat`` calls.
"""

from __future__ import annotations

import ast
import inspect
import multiprocessing as mp
import os
import pickle
import textwrap
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr
from zarr_helpers import serve_directory

import lazystack
from lazystack import extract_patches
from lazystack.io.cache import get_chunk_cache
from lazystack.sources.zarr import engines


def _change(metadata: Path, change: str) -> None:
    if change == "deleted":
        metadata.unlink()
    else:  # same metadata, a later modification time and another size
        metadata.write_text(metadata.read_text(encoding="utf-8") + "\n", encoding="utf-8")
        st = metadata.stat()
        os.utime(metadata, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))


def _raised(read: Any) -> BaseException:
    with pytest.raises(lazystack.LazyStackError) as info:
        read()
    return info.value


# -- 1. a changed store is named with its array's URI on the batch path too, in the same words ---------------------
@pytest.mark.parametrize("change", ["deleted", "rewritten"])
def test_a_changed_store_error_names_the_array_alike_on_the_patch_and_batch_paths(tmp_path: Path, change: str) -> None:
    path = tmp_path / "a.zarr"
    zarr.create_array(path / "img", shape=(2, 64, 64), chunks=(1, 32, 32), dtype="uint16")[...] = 1
    (stack,) = lazystack.load_zarrs([path / "img"], "SYX")
    _change(path / "img" / "zarr.json", change)
    get_chunk_cache().clear()
    single = _raised(lambda: stack.extract_patch(1, None, (0, 0), (8, 8)))
    get_chunk_cache().clear()
    batch = _raised(lambda: extract_patches([(stack, 1, None, (0, 0), (8, 8)), (stack, 0, None, (40, 40), (8, 8))]))
    expected = lazystack.SourceNotFoundError if change == "deleted" else lazystack.SourceReadError
    for error in (single, batch):
        assert isinstance(error, expected)
        assert f"file://{path}/img" in str(error)  # the array's URI
        assert str(path / "img" / "zarr.json") in str(error)  # and its metadata document
        assert str(type(error)(str(error))) == str(error)  # a DataLoader's re-raise
        again = pickle.loads(pickle.dumps(error))
        assert type(again) is type(error)
        assert str(again) == str(error)
    assert str(batch) == str(single)


# -- 2. a store deleted between the opening and a fork: the worker says what the parent says -----------------------
def _read_in_child(stack: Any, queue: Any) -> None:
    try:
        stack.extract_patch(0, None, (0, 0), (8, 8))
    except Exception as e:
        queue.put((type(e).__name__, str(e)))
    else:
        queue.put(("", "read without error"))


@pytest.mark.parametrize("where", ["root", "group"])
def test_a_store_deleted_before_a_fork_is_named_alike_in_the_worker(tmp_path: Path, where: str) -> None:
    path = tmp_path / "a.zarr"
    array_dir = path if where == "root" else path / "img"
    zarr.create_array(array_dir, shape=(2, 64, 64), chunks=(1, 32, 32), dtype="uint16")[...] = 1
    (stack,) = lazystack.load(array_dir, "SYX")
    (array_dir / "zarr.json").unlink()
    get_chunk_cache().clear()
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_read_in_child, args=(stack, queue))  # inherited, not pickled
    child.start()
    in_child = queue.get(timeout=60)
    child.join(60)
    unpickled = pickle.loads(pickle.dumps(stack))  # reopens by its recipe, as a spawned worker does
    in_unpickled = _raised(lambda: unpickled.extract_patch(0, None, (0, 0), (8, 8)))
    in_parent = _raised(lambda: stack.extract_patch(0, None, (0, 0), (8, 8)))
    assert "deleted after the stack was opened" in str(in_parent)
    assert in_child == (type(in_parent).__name__, str(in_parent))
    assert (type(in_unpickled), str(in_unpickled)) == (type(in_parent), str(in_parent))


# -- 3. no engine calls another class's private members ------------------------------------------------------------
@pytest.mark.parametrize("cls", [engines.ZarrPythonEngine, engines.AutoEngine], ids=lambda c: c.__name__)
def test_engines_use_only_the_public_members_of_the_engines_they_hold(cls: type) -> None:
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    foreign = [
        ast.unparse(node)
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute)
        and node.attr.startswith("_")
        and not node.attr.startswith("__")
        and not (isinstance(node.value, ast.Name) and node.value.id == "self")
    ]
    assert foreign == []


def test_the_zarr_engine_checks_a_shard_index_through_the_direct_engines_public_method(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "s.zarr"
    data = np.arange(64 * 64, dtype="uint16").reshape(64, 64)
    zarr.create_array(path, shape=(64, 64), chunks=(16, 16), shards=(32, 32), dtype="uint16")[...] = data
    checked: list[list[Any]] = []
    original = engines.DirectEngine.shard_indexes
    monkeypatch.setattr(
        engines.DirectEngine, "shard_indexes", lambda self, idx: (checked.append(list(idx)), original(self, idx))[1]
    )
    engine = engines.ZarrPythonEngine(zarr.open_array(path, mode="r"))
    np.testing.assert_array_equal(engine.fetch_one((2, 1)), data[32:48, 16:32])
    assert checked == [[(2, 1)]]
    assert original.__doc__


# -- 4. one stat per shard index read (the size of the file the index was read from) -------------------------------
@pytest.mark.parametrize("index_location", ["end", "start"])
@pytest.mark.parametrize("modified_after", [True, False])
def test_a_local_shard_index_read_stats_its_file_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, index_location: str, modified_after: bool
) -> None:
    from zarr.codecs import BytesCodec, ShardingCodec, ZstdCodec

    path = tmp_path / "s.zarr"
    data = np.random.default_rng(3).integers(0, 4000, (64, 64), dtype=np.uint16)
    sharding = ShardingCodec(chunk_shape=(16, 16), codecs=[BytesCodec(), ZstdCodec()], index_location=index_location)
    zarr.create_array(path, shape=(64, 64), chunks=(32, 32), dtype="uint16", serializer=sharding, compressors=None)[
        ...
    ] = data
    engine = engines.DirectEngine(zarr.open_array(path, mode="r"))
    engine.modified_after = time.time_ns() if modified_after else None
    calls: list[str] = []
    stat, fstat = os.stat, os.fstat
    monkeypatch.setattr(os, "stat", lambda *a, **k: (calls.append("stat"), stat(*a, **k))[1])
    monkeypatch.setattr(os, "fstat", lambda *a, **k: (calls.append("fstat"), fstat(*a, **k))[1])
    indexes = engine.shard_indexes([(2, 1), (3, 0)])  # two inner chunks of shard (1, 0)
    monkeypatch.undo()
    assert len(calls) == 1, calls
    reference = zarr.open_array(path, mode="r")
    np.testing.assert_array_equal(engine.fetch_one((2, 1)), reference[32:48, 16:32])
    assert list(indexes) == [(1, 0)]


# -- 5. a well opened by an http URL whose path has no .zarr folder is named as its plate names it ----------------
def test_a_remote_well_without_a_zarr_folder_is_named_as_through_its_plate(tmp_path: Path) -> None:
    from test_review_fixes import _NAMING, _write_plate

    _write_plate(tmp_path / "screen")  # no folder ends in .zarr: the store is the whole path given
    local = lazystack.load(tmp_path / "screen" / "A" / "2")
    with serve_directory(tmp_path) as (url, _):
        well = lazystack.load(f"{url}/screen/A/2")
        assert {s.attrs["plate"] for s in well} == {"screen-9"}  # the plate's own metadata name
        assert [{k: s.attrs.get(k) for k in _NAMING} for s in well] == [
            {k: s.attrs.get(k) for k in _NAMING} for s in local
        ]
        for stack, ref in zip(well, local, strict=True):
            np.testing.assert_array_equal(stack.compute(), ref.compute())
