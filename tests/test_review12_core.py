"""Review of session 12's core changes: the slim pass (``slimcore``) and the Zarr ``auto`` engine opening
tensorstore on first use (4ac6773).

Each test compares against an independent reference (zarr-python's own read, numpy, the documented behaviour).
The fork and broken-install cases run in a fresh interpreter, so no earlier test's tensorstore state counts.
"""

from __future__ import annotations

import json
import os
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr
from conftest import run_python

from lazystack.io.cache import chunk_cache_size
from lazystack.sources.zarr import engines
from lazystack.sources.zarr.engines import AutoEngine, ZarrArrayReader

#: builds a zstd array whose chunks (16 x 128 x 128 uint16, 512 KiB) a whole read sends to tensorstore
_ARRAY = """
import json, os, sys, numpy as np, zarr
from lazystack.io.cache import set_chunk_cache_size
from lazystack.sources.zarr.engines import AutoEngine, ZarrArrayReader, available_engines

set_chunk_cache_size(0)
path = sys.argv[1]
z = zarr.create_array(path, shape=(32, 256, 256), chunks=(16, 128, 128), dtype="uint16")
z[...] = (np.arange(z.size, dtype=np.uint64) * 7919 % 65521).astype("uint16").reshape(z.shape)
z = zarr.open_array(path, mode="r")
want = np.asarray(z[...])
region = (slice(0, 32), slice(0, 256), slice(0, 256))
"""


def _run(code: str, *args: str, extra_path: str | None = None, timeout: float = 120.0) -> dict[str, Any]:
    """Run ``code`` after ``_ARRAY`` in a fresh interpreter; its last stdout line, parsed as JSON."""
    proc = run_python(textwrap.dedent(_ARRAY) + textwrap.dedent(code), *args, extra_path=extra_path, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.splitlines()[-1])


# -- change 2: tensorstore opened on first use ------------------------------------------------------------------
_BROKEN_TENSORSTORE = """
from lazystack.core.errors import MissingDependencyError
out = {}
try:
    out["available"] = available_engines(z)
except Exception as e:
    out["available"] = f"{type(e).__name__}: {e}"
reader = ZarrArrayReader(z, engine="auto")
try:
    out["auto_equal"] = bool(np.array_equal(reader[region], want))
except Exception as e:
    out["auto_equal"] = f"{type(e).__name__}: {e}"
try:
    ZarrArrayReader(z, engine="tensorstore").engine_name
    out["tensorstore"] = "built"
except Exception as e:
    out["tensorstore"] = type(e).__name__
    out["tensorstore_message"] = str(e)
print(json.dumps(out))
"""


def test_a_tensorstore_that_fails_to_import_is_a_missing_dependency(tmp_path: Path) -> None:
    """A tensorstore that is installed but fails to import (a wheel built for another glibc: ImportError) is
    missing, as before the lazy open: ``auto`` reads directly, ``available_engines`` leaves it out, and the
    ``tensorstore`` engine asked for raises MissingDependencyError. Found lazily opened, it raised the raw
    ImportError out of the first large read and out of ``available_engines``."""
    fake = tmp_path / "site"
    (fake / "tensorstore").mkdir(parents=True)
    (fake / "tensorstore" / "__init__.py").write_text(
        'raise ImportError("_tensorstore.so: undefined symbol: fake_for_this_test")\n'
    )
    out = _run(_BROKEN_TENSORSTORE, str(tmp_path / "a.zarr"), extra_path=str(fake))
    assert out["auto_equal"] is True, out
    assert out["available"] == ["direct", "zarr"], out
    assert out["tensorstore"] == "MissingDependencyError", out
    assert "fake_for_this_test" in out["tensorstore_message"], out


def _compressed_array(path: Path) -> Any:
    z = zarr.create_array(path, shape=(32, 256, 256), chunks=(16, 128, 128), dtype="uint16")
    z[...] = (np.arange(z.size, dtype=np.uint64) * 7919 % 65521).astype("uint16").reshape(z.shape)
    return zarr.open_array(path, mode="r")


def test_tensorstore_is_opened_once_when_many_threads_fetch_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Eight threads making their first tensorstore fetch together: one open, every thread served by it and given
    zarr's data (an open made slow so that the threads meet inside it)."""
    pytest.importorskip("tensorstore")
    z = _compressed_array(tmp_path / "a.zarr")
    engine = AutoEngine(z, min_tensorstore=1, min_tensorstore_bytes=0)
    indices = [(i, j, k) for i in range(2) for j in range(2) for k in range(2)]
    assert engine.prefers_tensorstore(len(indices))
    opened: list[Any] = []
    original = engines.TensorstoreEngine.__init__

    def slow_open(self: Any, array: Any) -> None:
        opened.append(self)
        time.sleep(0.05)
        original(self, array)

    monkeypatch.setattr(engines.TensorstoreEngine, "__init__", slow_open)
    barrier = threading.Barrier(8)
    results: list[Any] = [None] * 8

    def run(t: int) -> None:
        barrier.wait()
        try:
            results[t] = engine.fetch(indices)
        except BaseException as e:  # reported below
            results[t] = e

    threads = [threading.Thread(target=run, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert len(opened) == 1
    assert engine.tensorstore is opened[0]
    for got in results:
        assert isinstance(got, dict), got
        for idx in indices:
            np.testing.assert_array_equal(got[idx], z[engine.chunk_region(idx)])


_FORK = """
import select, time
mode = sys.argv[2]
reader = ZarrArrayReader(z, engine="auto")
assert np.array_equal(reader[0:1, 0:8, 0:8], want[0:1, 0:8, 0:8])  # builds the engine: one chunk, read directly
assert isinstance(reader.engine, AutoEngine) and reader.engine._tensorstore is None
if mode == "after":
    assert np.array_equal(reader[region], want)
    assert reader.engine._tensorstore is not None  # opened in the parent before the fork
r, w = os.pipe()
go_r, go_w = os.pipe()
pid = os.fork()
if pid == 0:
    try:
        os.close(r)
        if mode == "before":
            os.read(go_r, 1)  # the parent has opened tensorstore since the fork
        got = reader[region]
        msg = {"equal": bool(np.array_equal(got, want)), "engine": reader.engine_name}
    except BaseException as e:
        msg = {"error": repr(e)}
    os.write(w, json.dumps(msg).encode())
    os._exit(0)
os.close(w)
if mode == "before":
    assert np.array_equal(reader[region], want)
    assert reader.engine._tensorstore is not None  # opened in the parent after the fork
    os.write(go_w, b"x")
data, ended = b"", False
deadline = time.monotonic() + 60
while not ended and time.monotonic() < deadline:
    ready, _, _ = select.select([r], [], [], max(0.0, deadline - time.monotonic()))
    part = os.read(r, 65536) if ready else b""
    ended = bool(ready) and not part
    data += part
if not ended:
    os.kill(pid, 9)
    os.waitpid(pid, 0)
    print(json.dumps({"hang": True}))
else:
    _, status = os.waitpid(pid, 0)
    child = json.loads(data) if data else {"status": status}
    print(json.dumps({"child": child, "parent_equal": bool(np.array_equal(reader[region], want))}))
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork is POSIX only")
@pytest.mark.parametrize("mode", ["before", "after"])
def test_a_child_forked_before_or_after_the_lazy_open_reads_right(tmp_path: Path, mode: str) -> None:
    """A child forked before its parent opened tensorstore (lazily, after the fork) may open its own; one forked
    after reads directly (tensorstore's threads do not survive fork). Either way: zarr's data, no hang."""
    pytest.importorskip("tensorstore")
    out = _run(_FORK, str(tmp_path / "a.zarr"), mode)
    assert "hang" not in out, out
    assert out["child"].get("equal") is True, out
    assert out["parent_equal"] is True, out
    if mode == "after":
        assert out["child"]["engine"] == "direct", out


def test_region_reads_with_a_refused_tensorstore_come_chunk_by_chunk(tmp_path: Path) -> None:
    """The cache off and tensorstore refusing the array when it opens it (a numcodecs Delta filter): region reads,
    float32 reads and batches come chunk by chunk, equal to zarr's (``_region_engine`` returns None)."""
    pytest.importorskip("tensorstore")
    import numcodecs

    from lazystack import LazyImageStack

    z = zarr.create_array(
        tmp_path / "d.zarr",
        shape=(4, 300, 300),
        chunks=(2, 128, 128),
        dtype="<u2",
        zarr_format=2,
        compressors=numcodecs.Blosc(cname="zstd"),
        filters=[numcodecs.Delta(dtype="<u2")],
    )
    z[...] = (np.arange(z.size, dtype=np.uint64) % 65521).astype("<u2").reshape(z.shape)
    z = zarr.open_array(tmp_path / "d.zarr", mode="r")
    want = np.asarray(z[...])
    with chunk_cache_size(0):
        reader = ZarrArrayReader(z, engine="auto")
        assert isinstance(reader.engine, AutoEngine)
        region = (slice(0, 4), slice(5, 290), slice(7, 299))
        np.testing.assert_array_equal(reader.read(region), want[region])
        assert reader.engine.tensorstore is None  # refused when opened: read directly
        assert reader.read_float32(region) is None
        assert reader.region_reads() is None
        stack = LazyImageStack(reader, "SYX")
        reqs = [(s, None, (y, x), (64, 64)) for s in range(4) for y, x in ((0, 0), (250, 260), (-10, 100))]
        for got, (s, _, (y, x), _) in zip(stack.extract_patches(reqs), reqs, strict=True):
            ref = np.zeros((64, 64), np.float32)
            ys, xs = slice(max(y, 0), min(y + 64, 300)), slice(max(x, 0), min(x + 64, 300))
            ref[ys.start - y : ys.stop - y, xs.start - x : xs.stop - x] = want[s, ys, xs]
            np.testing.assert_array_equal(got[0], ref)


_FORK_AFTER_USER_TENSORSTORE = """
import tensorstore as ts

built = sys.argv[2]
handle = ts.open({"driver": "zarr3", "kvstore": {"driver": "file", "path": path + "/"}}, read=True).result()
assert np.array_equal(np.asarray(handle[region].read().result()), want)  # the caller's own tensorstore: threads run
reader = ZarrArrayReader(z, engine="auto")
if built == "parent":
    assert np.array_equal(reader[0:1, 0:8, 0:8], want[0:1, 0:8, 0:8])  # builds the engine: one chunk, read directly
r, w = os.pipe()
pid = os.fork()
if pid == 0:
    os.close(r)
    got = reader[region]
    os.write(w, json.dumps({"equal": bool(np.array_equal(got, want)), "engine": reader.engine_name}).encode())
    os._exit(0)
os.close(w)
_, status = os.waitpid(pid, 0)
data = os.read(r, 65536)
print(json.dumps({"status": status, "child": json.loads(data) if data else None}))
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork is POSIX only")
@pytest.mark.parametrize("built", ["parent", "child"])
def test_a_child_of_a_process_using_tensorstore_itself_reads_directly(tmp_path: Path, built: str) -> None:
    """The parent used tensorstore itself (its threads run), not through lazystack, then forked: tensorstore
    aborts a child that uses it ("fork() use detected"), so the child's ``auto`` reads directly. Since the lazy
    open the ``auto`` engine built in the parent no longer opened tensorstore, and the child aborted."""
    pytest.importorskip("tensorstore")
    out = _run(_FORK_AFTER_USER_TENSORSTORE, str(tmp_path / "a.zarr"), built)
    assert out["status"] == 0, out
    assert out["child"] == {"equal": True, "engine": "direct"}, out
