"""Session 15 (stale15): a local Zarr store rewritten while a stack over it is open, on every engine.

A chunk (shard) file modified after the opening is a ``SourceReadError`` naming the file and the array
when a read decodes it (never a patch mixing chunks of before and after the rewrite), with the chunk cache
on or off, in this process, after pickling, in forked workers and in dask tasks. References: numpy slicing
of the data written, zarr-python's own read.
"""

from __future__ import annotations

import multiprocessing
import os
import pickle
import re
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr

import lazystack
from lazystack.io.cache import chunk_cache_size, get_chunk_cache
from lazystack.ops.batch import extract_patches
from lazystack.sources.zarr import engines
from lazystack.sources.zarr.engines import DirectEngine, ZarrPythonEngine, set_zarr_engine

ENGINES = ["auto", "direct", "zarr", "tensorstore"]


def _write(path: Path, data: np.ndarray, **kwargs: Any) -> Path:
    from zarr.codecs import ZstdCodec

    kwargs.setdefault("compressors", ZstdCodec(level=1))
    z = zarr.create_array(str(path), shape=data.shape, dtype=data.dtype, **kwargs)
    z[...] = data
    return path


def _old_new() -> tuple[np.ndarray, np.ndarray]:
    old = np.random.default_rng(15).integers(0, 60000, (2, 64, 64), dtype=np.uint16)
    return old, 60000 - old


def _rewrite(path: Path, new: np.ndarray) -> None:
    time.sleep(0.01)  # a later modification time than the opening, whatever the file system's resolution
    zarr.open_array(str(path), mode="r+")[...] = new


@pytest.fixture(params=ENGINES)
def engine(request: pytest.FixtureRequest) -> Any:
    if request.param == "tensorstore":
        pytest.importorskip("tensorstore")
    previous = set_zarr_engine(request.param)
    yield request.param
    set_zarr_engine(previous)


STALE = r"(?s)changed after it was opened.*was modified after the opening.*reopen"


@pytest.mark.parametrize("cache", [0, 64 * 2**20], ids=["cache-off", "cache-on"])
@pytest.mark.parametrize("sharded", [False, True], ids=["chunks", "shards"])
def test_a_chunk_file_rewritten_after_the_opening_raises_naming_it_on_every_engine(
    tmp_path: Path, engine: str, cache: int, sharded: bool
) -> None:
    old, new = _old_new()
    layout: dict[str, Any] = {"chunks": (1, 16, 16), "shards": (1, 32, 32)} if sharded else {"chunks": (1, 16, 16)}
    path = _write(tmp_path / "a.zarr", old, **layout)
    with chunk_cache_size(cache):
        get_chunk_cache().clear()
        (stack,) = lazystack.load_zarrs([path], "SYX")
        np.testing.assert_array_equal(stack.extract_patch(0, None, (0, 0), (20, 20))[0], old[0, :20, :20])
        _rewrite(path, new)
        batch = [(stack, 0, None, (y, x), (20, 20)) for y in (0, 30) for x in (0, 30)]
        with pytest.raises(lazystack.SourceReadError, match=STALE) as info:
            extract_patches(batch)
        with pytest.raises(lazystack.SourceReadError, match=STALE):
            stack.extract_patch(1, None, (40, 40), (20, 20))
    message = str(info.value)
    assert str(path) in message  # the array
    files = re.findall(r"chunk file '([^']+)'", message)
    assert files, message
    assert Path(files[0]).is_file(), message
    assert Path(files[0]).is_relative_to(path / "c"), message


def test_the_zarr_engine_checks_after_the_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A chunk file rewritten in place while zarr reads it (between the read's start and its end) is refused."""
    old, new = _old_new()
    path = _write(tmp_path / "a.zarr", old, chunks=(1, 32, 32))
    other = _write(tmp_path / "b.zarr", new, chunks=(1, 32, 32))
    engine = ZarrPythonEngine(zarr.open_array(str(path), mode="r"))
    engine.modified_after = time.time_ns()
    time.sleep(0.01)
    read = engine.array.__class__.__getitem__

    def rewrite_then_read(array: Any, key: Any) -> Any:
        out = read(array, key)  # the old bytes decoded
        _copy_in_place(other / "c/0/0/0", path / "c/0/0/0")
        return out

    monkeypatch.setattr(engine.array.__class__, "__getitem__", rewrite_then_read)
    with pytest.raises(lazystack.SourceReadError, match=STALE + r".*") as info:
        engine.fetch_one((0, 0, 0))
    assert str(path / "c/0/0/0") in str(info.value)


def _copy_in_place(source: Path, target: Path) -> None:
    """Truncate ``target`` and write ``source``'s bytes into it: the same inode, new contents."""
    data = source.read_bytes()
    with open(target, "r+b") as f:
        f.truncate(0)
        f.write(data)


@pytest.mark.parametrize("dtype", ["uint16", "uint8"])
@pytest.mark.parametrize("compressed", [True, False], ids=["zstd", "raw"])
def test_the_direct_engine_refuses_a_chunk_rewritten_in_place_between_its_open_and_its_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, compressed: bool, dtype: str
) -> None:
    """Session 13's left-alone: truncate + write in place (the same inode) after the engine opened the file and
    before its ``pread``. Before stale15 the new chunk was decoded as if unchanged (its ``fstat`` came before the
    read), silently mixing versions; the ``fstat`` after the read sees it."""
    old, new = _old_new()
    old, new = old.astype(dtype), new.astype(dtype)
    codec: dict[str, Any] = {} if compressed else {"compressors": None}
    path = _write(tmp_path / "a.zarr", old, chunks=(1, 32, 32), **codec)
    other = _write(tmp_path / "b.zarr", new, chunks=(1, 32, 32), **codec)
    engine = DirectEngine(zarr.open_array(str(path), mode="r"))
    engine.modified_after = time.time_ns()
    time.sleep(0.01)
    original = engines._pread_all
    done: list[int] = []

    def rewrite_then_pread(fd: int, offset: int, length: int) -> bytes:
        if not done:
            done.append(fd)
            _copy_in_place(other / "c/0/0/0", path / "c/0/0/0")
        return original(fd, offset, length)

    monkeypatch.setattr(engines, "_pread_all", rewrite_then_pread)
    with pytest.raises(lazystack.SourceReadError, match=STALE) as info:  # it was the new chunk, decoded silently
        engine.fetch_one((0, 0, 0))
    assert str(path / "c/0/0/0") in str(info.value)
    assert done
    monkeypatch.undo()
    # a stack opened now reads the new chunk (reference: the data written)
    fresh = DirectEngine(zarr.open_array(str(path), mode="r"))
    fresh.modified_after = time.time_ns()
    np.testing.assert_array_equal(fresh.fetch_one((0, 0, 0)), new[:1, :32, :32])


# -- pickled readers, forked workers, dask tasks ------------------------------------------------------------------
def _read_in_child(stack: Any) -> str:
    try:
        stack.extract_patch(0, None, (30, 30), (20, 20))
    except lazystack.SourceReadError as e:
        return f"{type(e).__name__}: {e}"
    return "no error"


@pytest.mark.parametrize("engine_name", ["zarr", "tensorstore"])
def test_a_pickled_stack_and_a_forked_worker_refuse_a_rewritten_chunk(tmp_path: Path, engine_name: str) -> None:
    if engine_name == "tensorstore":
        pytest.importorskip("tensorstore")
    if "fork" not in multiprocessing.get_all_start_methods():
        pytest.skip("no fork on this platform")
    old, new = _old_new()
    path = _write(tmp_path / "a.zarr", old, chunks=(1, 16, 16))
    previous = set_zarr_engine(engine_name)
    try:
        (stack,) = lazystack.load_zarrs([path], "SYX")
        stack.extract_patch(0, None, (0, 0), (20, 20))
        blob = pickle.dumps(stack)
        _rewrite(path, new)
        with pytest.raises(lazystack.SourceReadError, match=STALE):
            pickle.loads(blob).extract_patch(0, None, (30, 30), (20, 20))
        with multiprocessing.get_context("fork").Pool(1) as pool:
            report = pool.apply(_read_in_child, (stack,))
    finally:
        set_zarr_engine(previous)
    assert re.search(STALE, report), report
    assert str(path) in report


def test_a_dask_task_refuses_a_rewritten_chunk(tmp_path: Path, engine: str) -> None:
    old, new = _old_new()
    path = _write(tmp_path / "a.zarr", old, chunks=(1, 16, 16))
    (stack,) = lazystack.load_zarrs([path], "SYX")
    data = stack.data  # S C Y X
    assert data.shape == (2, 1, 64, 64)
    np.testing.assert_array_equal(data[0, 0, :16, :16].compute(scheduler="threads"), old[0, :16, :16])
    _rewrite(path, new)
    with pytest.raises(lazystack.SourceReadError, match=STALE):
        data[:, :, 8:40, 8:40].compute(scheduler="threads")


def test_an_unchanged_store_reads_as_numpy_on_every_engine(tmp_path: Path, engine: str) -> None:
    """The checks never refuse a store nobody wrote to (reference: numpy slicing, zarr's own read)."""
    old, _ = _old_new()
    path = _write(tmp_path / "a.zarr", old, chunks=(1, 16, 16), shards=(1, 32, 32))
    (stack,) = lazystack.load_zarrs([path], "SYX")
    for s, y, x in [(0, 0, 0), (1, 30, 5), (0, 44, 44)]:
        np.testing.assert_array_equal(stack.extract_patch(s, None, (y, x), (20, 20))[0], old[s, y : y + 20, x : x + 20])
    np.testing.assert_array_equal(np.asarray(stack.data), zarr.open_array(str(path), mode="r")[...][:, None])


# -- the zarr engine names the chunk file of a chunk it cannot decode -----------------------------------------
@pytest.mark.parametrize("sharded", [False, True], ids=["chunks", "shards"])
def test_the_zarr_engine_names_the_file_of_a_corrupt_chunk(tmp_path: Path, sharded: bool) -> None:
    old, _ = _old_new()
    layout: dict[str, Any] = {"chunks": (1, 16, 16), "shards": (1, 32, 32)} if sharded else {"chunks": (1, 16, 16)}
    path = _write(tmp_path / "a.zarr", old, **layout)
    target = path / "c" / "1" / ("1" if sharded else "2") / "0"  # holds chunk (1, 2, 0)
    raw = bytearray(target.read_bytes())
    if sharded:  # the first inner chunk's frame (the index is at the end): garbage, same length
        raw[:8] = b"\x00" * 8
    else:
        raw[:] = b"\x00" * len(raw)
    target.write_bytes(bytes(raw))
    os.utime(target, ns=(1, 1))  # not a change after the opening: a corrupt chunk
    engine = ZarrPythonEngine(zarr.open_array(str(path), mode="r"))
    with pytest.raises(lazystack.SourceReadError) as info:
        engine.fetch_one((1, 2, 0))
    message = str(info.value)
    assert f"stored in {str(target)!r}" in message, message
    assert "chunk (1, 2, 0)" in message


# -- the direct engine reads an uncompressed chunk before its fstat: what is not a file is still refused ---------
@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this platform")
@pytest.mark.parametrize("kind", ["fifo", "device"])
@pytest.mark.parametrize("checked", [True, False], ids=["checked", "unchecked"])
def test_an_uncompressed_chunk_that_is_a_fifo_or_a_device_is_refused_naming_it(
    tmp_path: Path, kind: str, checked: bool
) -> None:
    old, _ = _old_new()
    path = _write(tmp_path / "a.zarr", old, chunks=(1, 32, 32), compressors=None)
    chunk = path / "c" / "0" / "1" / "0"
    chunk.unlink()
    if kind == "fifo":
        os.mkfifo(chunk)
    else:
        if not os.path.exists("/dev/zero"):
            pytest.skip("no /dev/zero")
        chunk.symlink_to("/dev/zero")
    engine = DirectEngine(zarr.open_array(str(path), mode="r"))
    engine.modified_after = time.time_ns() if checked else None
    with pytest.raises(lazystack.SourceReadError, match=r"c/0/1/0 is not a regular file"):
        engine.fetch_one((0, 1, 0))
    np.testing.assert_array_equal(engine.fetch_one((0, 0, 0)), old[:1, :32, :32])


_SPAWNED = """
import json, pickle, sys
stack = pickle.load(open(sys.argv[1], "rb"))
try:
    stack.extract_patch(0, None, (30, 30), (20, 20))
except Exception as e:
    engine = stack.reader.as_chunked().engine_name
    print(json.dumps({"error": type(e).__name__, "message": str(e), "engine": engine}))
else:
    print(json.dumps({"error": None}))
"""


@pytest.mark.parametrize("engine_name", ["zarr", "tensorstore"])
def test_a_spawned_process_refuses_a_rewritten_chunk_with_the_engine_of_its_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, engine_name: str
) -> None:
    import json

    from conftest import run_python

    if engine_name == "tensorstore":
        pytest.importorskip("tensorstore")
    old, new = _old_new()
    path = _write(tmp_path / "a.zarr", old, chunks=(1, 16, 16))
    (stack,) = lazystack.load_zarrs([path], "SYX")
    blob = tmp_path / "stack.pkl"
    blob.write_bytes(pickle.dumps(stack))
    _rewrite(path, new)
    monkeypatch.setenv("LAZYSTACK_ZARR_ENGINE", engine_name)
    run = run_python(_SPAWNED, str(blob))
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(run.stdout.strip().splitlines()[-1])
    assert report["error"] == "_StaleChunkError", report  # before stale15: no error, the new chunk read
    assert report["engine"] == engine_name, report
    assert re.search(STALE, report["message"]), report
    assert str(path / "c") in report["message"]
