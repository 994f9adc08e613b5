"""Review of spawn14 (a local Zarr reader rebuilds its fast reader from an ``ArrayLayout``, without zarr-python).

Variants spawn14's tests do not try, each compared with numpy slicing of zarr-python's own read of the array:
arrays inside a group (OME-Zarr levels, v2 and v3), Zarr v2 numcodecs filters, v3 numcodecs-wrapped codecs, a
zstd checksum, a shard index at the shard's start without crc32c, NaN fill values, the batch path (cache on and
off, tensorstore's region reads over a nested sharded array), a worker forked after the main process read (and
one forked after the store was rewritten), threads racing on a spawned worker's first read; and the zarr engine
refusing a layout with a message that names the array.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import pickle
import time
from pathlib import Path
from typing import Any

import numcodecs
import numpy as np
import pytest
import zarr
from conftest import run_python
from test_spawn14 import _data, _write
from zarr.codecs import BytesCodec, ShardingCodec, ZstdCodec

import lazystack
from lazystack.io.cache import ENV_CHUNK_CACHE_BYTES
from lazystack.sources.zarr.engines import ArrayLayout, make_engine

# reads every (name, stacks, requests) entry of the pickle in a fresh interpreter: patches one by one from 4 threads
# at once (the first read of each stack races), then the same requests as one batch; reports zarr-python imported
_CHILD = """
import json, pickle, sys, threading
import numpy as np
import lazystack
cases = pickle.load(open(sys.argv[1], "rb"))
out = {}
for name, stacks, requests in cases:
    single = [None] * len(requests)
    def work(i):
        for j in range(i, len(requests), 4):
            stack, *rest = requests[j]
            single[j] = stacks[stack].extract_patch(*rest)
    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    batch = lazystack.extract_patches([(stacks[s], *rest) for s, *rest in requests])
    out[name] = [p.tolist() for p in single] + [p.tolist() for p in batch]
json.dump({"zarr": "zarr" in sys.modules, "patches": out}, open(sys.argv[2], "w"))
"""


def _patch(image: np.ndarray, corner: tuple[int, ...], size: tuple[int, ...]) -> np.ndarray:
    """The patch of ``image`` by numpy slicing, zeros outside it (as ``extract_patch`` pads)."""
    out = np.zeros(size, dtype=np.float32)
    inside = tuple(slice(c, min(c + s, n)) for c, s, n in zip(corner, size, image.shape, strict=True))
    out[tuple(slice(0, s.stop - s.start) for s in inside)] = image[inside]
    return out[None]


def _case(name: str, sources: list[str], axes: str, size: tuple[int, ...]) -> tuple[Any, list[np.ndarray]]:
    """(the pickled case, the reference patches): two patches per sample of each source, across chunk borders and
    the image's edge."""
    stacks = lazystack.load_zarrs(sources, axes)
    requests, want = [], []
    for s, source in enumerate(sources):
        stored = zarr.open_array(source, mode="r")[...]
        images = list(stored) if axes == "TYX" else [stored]
        for sample, image in enumerate(images):
            for corner in (
                tuple(n // 5 for n in image.shape),
                tuple(n - m // 2 for n, m in zip(image.shape, size, strict=True)),
            ):
                requests.append((s, sample, None, corner, size))
                want.append(_patch(image, corner, size))
    return (name, stacks, requests), want


def _spawned(tmp_path: Path, cases: list[tuple[Any, list[np.ndarray]]]) -> bool:
    """Read every case in a fresh interpreter; assert each patch (one by one, then as a batch) equals its reference;
    return whether the interpreter imported zarr-python."""
    blob, out = tmp_path / "cases.pkl", tmp_path / "out.json"
    blob.write_bytes(pickle.dumps([c for c, _ in cases]))
    run = run_python(_CHILD, str(blob), str(out), timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(out.read_text())
    for (name, _, _), want in cases:
        got = report["patches"][name]
        assert len(got) == 2 * len(want), name
        for i, w in enumerate(want + want):
            np.testing.assert_array_equal(np.asarray(got[i], dtype=np.float32), w, err_msg=f"{name} patch {i}")
    return bool(report["zarr"])


def test_spawned_reads_of_group_levels_filters_and_wrapped_codecs_without_zarr(tmp_path: Path) -> None:
    """Arrays inside groups (the layout's array path), v2 numcodecs filters, v3 numcodecs-wrapped codecs, a zstd
    checksum, a start-of-shard index without crc32c, NaN fill values: read from the layout alone (held)."""
    pytest.importorskip(
        "zarr.codecs.numcodecs", reason="this zarr has no zarr.codecs.numcodecs (numcodecs codecs in v3 arrays)"
    )
    from zarr.codecs.numcodecs import LZ4, Zlib

    data = _data((2, 100, 90))
    cases = []
    for fmt in (2, 3):
        group = zarr.open_group(str(tmp_path / f"g{fmt}.zarr"), mode="w", zarr_format=fmt)
        for level, step in enumerate((1, 2)):
            level_array = group.create_array(
                f"img/{level}", shape=data[:, ::step, ::step].shape, dtype="uint16", chunks=(1, 32, 32)
            )
            level_array[...] = data[:, ::step, ::step]
        levels = [str(tmp_path / f"g{fmt}.zarr" / "img" / str(level)) for level in (0, 1)]
        cases.append(_case(f"group-v{fmt}", levels, "TYX", (40, 40)))
    floats = np.random.default_rng(2).random((2, 100, 90)).astype("float32")
    v2 = {"zarr_format": 2, "chunks": (1, 32, 32)}
    sources = [
        _write(
            tmp_path / "delta.zarr", data, filters=[numcodecs.Delta(dtype="<u2")], compressors=numcodecs.Zstd(), **v2
        ),
        _write(
            tmp_path / "shuffle.zarr",
            data,
            filters=[numcodecs.Shuffle(elementsize=2)],
            compressors=numcodecs.LZ4(),
            **v2,
        ),
        _write(tmp_path / "zlib.zarr", data, compressors=numcodecs.Zlib(), **v2),
        _write(tmp_path / "be.zarr", data.astype(">u2"), **v2),
        _write(tmp_path / "lz4.zarr", data, chunks=(1, 32, 32), compressors=[LZ4()]),
        _write(tmp_path / "zlib3.zarr", data, chunks=(1, 32, 32), compressors=[Zlib()]),
        _write(tmp_path / "checksum.zarr", data, chunks=(1, 32, 32), compressors=[ZstdCodec(checksum=True)]),
        _write(
            tmp_path / "start.zarr",
            data,
            chunks=(1, 64, 32),
            serializer=ShardingCodec(
                chunk_shape=(1, 16, 16),
                codecs=[BytesCodec(), ZstdCodec()],
                index_codecs=[BytesCodec()],
                index_location="start",
            ),
            compressors=None,
        ),
    ]
    cases += [_case(Path(s).stem, [s], "TYX", (40, 40)) for s in sources]
    fso = [numcodecs.FixedScaleOffset(offset=0, scale=1000, dtype="<f4", astype="<u2")]
    cases.append(_case("fso", [_write(tmp_path / "fso.zarr", floats, filters=fso, **v2)], "TYX", (40, 40)))
    for fmt in (2, 3):
        z = zarr.create_array(
            str(tmp_path / f"nan{fmt}.zarr"),
            shape=floats.shape,
            dtype="float32",
            chunks=(1, 32, 32),
            fill_value=float("nan"),
            zarr_format=fmt,
        )
        z[0] = floats[0]  # sample 1 is the fill value: NaN
        cases.append(_case(f"nan-v{fmt}", [str(tmp_path / f"nan{fmt}.zarr")], "TYX", (40, 40)))
    for (name, _, _), want in cases[-2:]:
        assert np.isnan(want[-1]).any(), name
    assert _spawned(tmp_path, cases) is False


def test_spawned_tensorstore_region_reads_of_a_nested_sharded_array(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Cache off, ``auto``: 256 KiB chunks of a sharded array inside a group go to tensorstore, opened from the
    layout (the array's path inside the store), for single patches and a batch's region reads (held)."""
    pytest.importorskip("tensorstore")
    data = _data((16, 300, 300))
    group = zarr.open_group(str(tmp_path / "g.zarr"), mode="w")
    array = group.create_array("x/0", shape=data.shape, dtype="uint16", chunks=(8, 128, 128), shards=(16, 256, 256))
    array[...] = data
    cases = [_case("nested-sharded", [str(tmp_path / "g.zarr" / "x" / "0")], "ZYX", (12, 180, 170))]
    monkeypatch.setenv(ENV_CHUNK_CACHE_BYTES, "0")  # the spawned interpreter's chunk cache
    assert _spawned(tmp_path, cases) is False


def _forked_read(queue: Any, stack: Any, requests: list[tuple[Any, ...]]) -> None:
    try:
        queue.put(("ok", [stack.extract_patch(*r) for r in requests]))
    except Exception as e:  # the parent asserts on it
        queue.put(("error", type(e).__name__, str(e)))


def _fork(stack: Any, requests: list[tuple[Any, ...]]) -> tuple[Any, ...]:
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_forked_read, args=(queue, stack, requests))
    child.start()
    try:
        return tuple(queue.get(timeout=120))
    finally:
        child.join(30)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork only")
def test_a_worker_forked_after_the_main_process_read_reads_the_same_and_sees_a_rewrite(tmp_path: Path) -> None:
    """The parent's fast reader (built from the layout, its pid) is rebuilt in the child, which checks the store
    first: equal patches; a store rewritten before the fork raises the rewrite, not stale or mixed data (held)."""
    data = _data((2, 100, 90))
    source = _write(tmp_path / "a.zarr", data, chunks=(1, 32, 32))
    (stack,) = lazystack.load_zarrs([source], "TYX")
    requests = [(s, None, (y, x), (40, 40)) for s in (0, 1) for y, x in ((0, 0), (30, 70))]
    want = [_patch(data[s], c, z) for s, _, c, z in requests]
    first = stack.extract_patch(*requests[0])  # the main process reads (and caches) first
    np.testing.assert_array_equal(first, want[0])
    result = _fork(stack, requests)
    assert result[0] == "ok", result
    for got, w in zip(result[1], want, strict=True):
        np.testing.assert_array_equal(got, w)
    time.sleep(0.01)
    _write(tmp_path / "a.zarr", data + 1, chunks=(1, 16, 16), overwrite=True)
    result = _fork(stack, requests[1:])
    assert result[:2] == ("error", "_StoreRewrittenError"), result
    assert "a.zarr" in result[2]


def test_the_zarr_engine_refuses_a_layout_naming_the_array(tmp_path: Path) -> None:
    """``make_engine(layout, "zarr")`` (``ZarrArrayReader(layout, engine="zarr")``, public) refuses: the message
    names the zarr engine and the array, not the direct engine (spawn14 said 'direct engine: the zarr engine ...')."""
    source = _write(tmp_path / "a.zarr", _data((2, 64, 64)), chunks=(1, 32, 32))
    layout = ArrayLayout.of(zarr.open_array(source, mode="r"))
    with pytest.raises(NotImplementedError) as info:
        make_engine(layout, "zarr")
    message = str(info.value)
    assert message.startswith("zarr engine:"), message
    assert source in message, message
