"""A spawned process reads a pickled local Zarr stack without importing zarr-python (issue 20).

A local array's reader pickles its chunk layout (``ArrayLayout``: chunk keys, numcodecs
configurations, shard index, fill value); a fresh interpreter that unpickles it reads with the
direct engine (and tensorstore, in ``auto``) from that alone. Every test compares the patches
read in a fresh interpreter with numpy slicing of zarr-python's own read of the array; the
fallbacks (the ``zarr`` and ``tensorstore`` engines, a codec the direct engine cannot run, a
zipped store) read the same, through zarr; a store changed after the pickling raises as before.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import shutil
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr
from conftest import run_python
from zarr.codecs import BloscCodec, BytesCodec, Crc32cCodec, GzipCodec, TransposeCodec, ZstdCodec

import lazystack
from lazystack.io.cache import ENV_CHUNK_CACHE_BYTES
from lazystack.sources.zarr.engines import ENV_ZARR_ENGINE

_CHILD = """
import json, pickle, sys
import numpy as np
stacks, requests = pickle.load(open(sys.argv[1], "rb"))
try:
    out = [stacks[0].extract_patch(*r) for r in requests]
except Exception as e:
    print(json.dumps({"error": type(e).__name__, "message": str(e), "zarr": "zarr" in sys.modules}))
    raise SystemExit(0)
np.save(sys.argv[2], np.stack(out))
zarr_imported = "zarr" in sys.modules  # before anything else is asked of the stack
engine = stacks[0].reader.as_chunked().engine_name
print(json.dumps({"zarr": zarr_imported, "engine": engine, "tensorstore": "tensorstore" in sys.modules}))
"""


def _write(path: Path, data: np.ndarray, **kwargs: Any) -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # numcodecs codecs in v3 arrays: "not in the Zarr version 3 specification"
        z = zarr.create_array(str(path), shape=data.shape, dtype=data.dtype, **kwargs)
        z[...] = data
    return str(path)


def _data(shape: tuple[int, ...], dtype: str = "uint16") -> np.ndarray:
    return np.random.default_rng(sum(shape)).integers(0, 4000, shape).astype(dtype)


def _requests(stack: Any) -> list[tuple[Any, ...]]:
    """Patches across chunk borders and the array's edge (parts outside read as zeros)."""
    spatial = stack.data_shape[2:]
    size = tuple(min(40, n) for n in spatial)
    corners = [
        tuple(0 for _ in spatial),
        tuple(n // 3 for n in spatial),
        tuple(n - s // 2 for n, s in zip(spatial, size, strict=True)),
    ]
    return [(s, None, c, size) for s in range(stack.data_shape[0]) for c in corners]


def _spawned(tmp_path: Path, source: str, axes: str) -> tuple[dict[str, Any], list[np.ndarray], list[np.ndarray]]:
    """Open ``source``, pickle its stack, read patches in a fresh interpreter; (its report, its patches, reference)."""
    stacks = lazystack.load_zarrs([source], axes)
    requests = _requests(stacks[0])
    blob, out = tmp_path / "stacks.pkl", tmp_path / "patches.npy"
    blob.write_bytes(pickle.dumps((stacks, requests)))
    stored = zarr.open_array(source, mode="r")[...]
    want = [_reference(stored, axes, r) for r in requests]
    run = run_python(_CHILD, str(blob), str(out))
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(run.stdout.strip().splitlines()[-1])
    got = list(np.load(out)) if out.exists() else []
    return report, got, want


def _reference(stored: np.ndarray, axes: str, request: tuple[Any, ...]) -> np.ndarray:
    """The patch by numpy slicing of zarr's own read (axes ``TYX`` or ``ZYX``), zeros outside the image."""
    sample, _, corner, size = request
    image = stored[sample] if axes == "TYX" else stored
    out = np.zeros(size, dtype=np.float32)
    inside = tuple(slice(c, min(c + s, n)) for c, s, n in zip(corner, size, image.shape, strict=True))
    out[tuple(slice(0, s.stop - s.start) for s in inside)] = image[inside]
    return out[None]


# (name, axes, shape, dtype, create_array keyword arguments)
_CASES: list[tuple[str, str, tuple[int, ...], str, dict[str, Any]]] = [
    ("v2-zstd", "TYX", (2, 100, 90), "uint16", {"zarr_format": 2, "chunks": (1, 32, 32), "compressors": "auto"}),
    ("v3-zstd", "TYX", (2, 100, 90), "uint16", {"zarr_format": 3, "chunks": (1, 32, 32)}),
    (
        "v2-blosc",
        "TYX",
        (2, 100, 90),
        "uint16",
        {"zarr_format": 2, "chunks": (1, 32, 32), "compressors": {"id": "blosc", "cname": "lz4", "shuffle": 2}},
    ),
    (
        "v3-blosc",
        "TYX",
        (2, 100, 90),
        "uint16",
        {"zarr_format": 3, "chunks": (1, 32, 32), "compressors": BloscCodec(cname="zstd")},
    ),
    (
        "v2-gzip",
        "TYX",
        (2, 100, 90),
        "float32",
        {"zarr_format": 2, "chunks": (1, 32, 32), "compressors": {"id": "gzip"}},
    ),
    (
        "v3-gzip",
        "TYX",
        (2, 100, 90),
        "int16",
        {"zarr_format": 3, "chunks": (1, 32, 32), "compressors": GzipCodec()},
    ),
    ("v2-raw", "TYX", (2, 100, 90), "uint8", {"zarr_format": 2, "chunks": (1, 32, 32), "compressors": None}),
    ("v3-raw", "TYX", (2, 100, 90), "uint16", {"zarr_format": 3, "chunks": (1, 32, 32), "compressors": None}),
    ("v3-sharded", "TYX", (2, 100, 90), "uint16", {"zarr_format": 3, "chunks": (1, 16, 16), "shards": (1, 64, 32)}),
    ("v3-3d", "ZYX", (20, 70, 60), "uint16", {"zarr_format": 3, "chunks": (8, 32, 32)}),
    (
        "v2-slash-F-order",
        "TYX",
        (2, 100, 90),
        "uint16",
        {"zarr_format": 2, "chunks": (1, 32, 32), "chunk_key_encoding": {"name": "v2", "separator": "/"}, "order": "F"},
    ),
    (
        "v3-dot-keys-crc-bigendian",
        "TYX",
        (2, 100, 90),
        "uint16",
        {
            "zarr_format": 3,
            "chunks": (1, 32, 32),
            "chunk_key_encoding": {"name": "default", "separator": "."},
            "serializer": BytesCodec(endian="big"),
            "compressors": [ZstdCodec(), Crc32cCodec()],
        },
    ),
    (
        "v3-v2-keys-transpose",
        "TYX",
        (2, 100, 90),
        "uint16",
        {
            "zarr_format": 3,
            "chunks": (1, 32, 32),
            "chunk_key_encoding": {"name": "v2", "separator": "."},
            "filters": [TransposeCodec(order=(2, 0, 1))],
        },
    ),
]


@pytest.mark.parametrize(("name", "axes", "shape", "dtype", "kwargs"), _CASES, ids=[c[0] for c in _CASES])
def test_a_spawned_process_reads_a_pickled_local_stack_without_zarr(
    tmp_path: Path, name: str, axes: str, shape: tuple[int, ...], dtype: str, kwargs: dict[str, Any]
) -> None:
    data = _data(shape, dtype)
    data[(0,) * (len(shape) - 2) + (slice(0, 32), slice(0, 32))] = 0  # a chunk zarr does not store: the fill value
    source = _write(tmp_path / f"{name}.zarr", data, fill_value=0, **kwargs)
    report, got, want = _spawned(tmp_path, source, axes)
    assert "error" not in report, report
    assert report["zarr"] is False, f"{name}: the spawned reader imported zarr-python"
    for g, w in zip(got, want, strict=True):
        np.testing.assert_array_equal(g, w)
    assert len(got) == len(want)


def test_a_missing_chunk_reads_as_a_nonzero_fill_value_in_a_spawned_process(tmp_path: Path) -> None:
    data = _data((2, 64, 64))
    z = zarr.create_array(
        str(tmp_path / "fill.zarr"), shape=data.shape, chunks=(1, 32, 32), dtype="uint16", fill_value=7
    )
    z[0] = data[0]  # sample 1 is never written: every chunk reads as 7
    report, got, want = _spawned(tmp_path, str(tmp_path / "fill.zarr"), "TYX")
    assert report["zarr"] is False
    assert any((w == 7).any() for w in want)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_array_equal(g, w)


def test_tensorstore_reads_a_pickled_layout_in_auto_without_zarr(tmp_path: Path) -> None:
    pytest.importorskip("tensorstore")
    # 256 KiB chunks: a patch over two of them goes to tensorstore (auto), opened from the layout
    source = _write(tmp_path / "big.zarr", _data((16, 160, 130)), chunks=(8, 128, 128))
    report, got, want = _spawned(tmp_path, source, "ZYX")
    assert report == {"zarr": False, "engine": "auto", "tensorstore": True}
    for g, w in zip(got, want, strict=True):
        np.testing.assert_array_equal(g, w)


@pytest.mark.parametrize("engine", ["zarr", "tensorstore", "direct"])
def test_the_engine_set_in_the_spawned_process_decides(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, engine: str
) -> None:
    if engine == "tensorstore":
        pytest.importorskip("tensorstore")
    source = _write(tmp_path / "a.zarr", _data((2, 100, 90)), chunks=(1, 32, 32))
    monkeypatch.setenv(ENV_ZARR_ENGINE, engine)
    report, got, want = _spawned(tmp_path, source, "TYX")
    assert report["engine"] == engine
    assert report["zarr"] is (engine != "direct")  # only auto and direct read from the layout
    for g, w in zip(got, want, strict=True):
        np.testing.assert_array_equal(g, w)


def test_a_codec_the_direct_engine_cannot_run_reads_through_zarr(tmp_path: Path) -> None:
    pytest.importorskip(
        "zarr.codecs.numcodecs", reason="this zarr has no zarr.codecs.numcodecs (numcodecs codecs in v3 arrays)"
    )
    from zarr.codecs.numcodecs import Delta

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        filters = [Delta(dtype="<u2")]  # an array-to-array codec other than transpose
    source = _write(tmp_path / "delta.zarr", _data((2, 100, 90)), chunks=(1, 32, 32), filters=filters)
    report, got, want = _spawned(tmp_path, source, "TYX")
    assert report["zarr"] is True
    for g, w in zip(got, want, strict=True):
        np.testing.assert_array_equal(g, w)


def test_a_layout_this_process_cannot_decode_falls_back_to_zarr(tmp_path: Path) -> None:
    data = _data((2, 100, 90))
    source = _write(tmp_path / "a.zarr", data, chunks=(1, 32, 32))
    stack = lazystack.load_zarrs([source], "TYX")[0]
    reader = pickle.loads(pickle.dumps(stack.reader))
    # as a codec registered in the parent only would be: numcodecs here does not know it
    reader._layout = dataclasses.replace(reader._layout, decode=({"id": "no-such-codec-spawn14"},))
    np.testing.assert_array_equal(reader.read_region((slice(1, 2), slice(5, 70), slice(3, 80))), data[1:2, 5:70, 3:80])
    # read through the zarr array (auto's engine for an array the direct engine refuses: tensorstore, else zarr)
    assert reader.as_chunked().array is reader.array()


def test_a_zipped_store_is_read_through_zarr(tmp_path: Path) -> None:
    data = _data((2, 64, 64))
    with zarr.storage.ZipStore(tmp_path / "a.zip", mode="w") as store:
        z = zarr.create_array(store, shape=data.shape, chunks=(1, 32, 32), dtype="uint16")
        z[...] = data
    stack = lazystack.load_zarrs([str(tmp_path / "a.zip")], "TYX")[0]
    clone = pickle.loads(pickle.dumps(stack))
    assert clone.reader._layout is None  # not a local folder: the direct engine reads it through the store
    np.testing.assert_array_equal(clone.extract_patch(1, None, (10, 20), (30, 30))[0], data[1, 10:40, 20:50])


def _child_error(tmp_path: Path, source: str, change: Any) -> dict[str, Any]:
    stacks = lazystack.load_zarrs([source], "TYX")
    blob = tmp_path / "stacks.pkl"
    blob.write_bytes(pickle.dumps((stacks, [(1, None, (5, 5), (30, 30))])))
    change()
    run = run_python(_CHILD, str(blob), str(tmp_path / "patches.npy"))
    assert run.returncode == 0, run.stderr[-3000:]
    return dict(json.loads(run.stdout.strip().splitlines()[-1]))


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_a_store_rewritten_after_the_pickling_raises_in_the_spawned_process(tmp_path: Path, zarr_format: int) -> None:
    source = _write(tmp_path / "a.zarr", _data((2, 64, 64)), chunks=(1, 32, 32), zarr_format=zarr_format)

    def rewrite() -> None:
        _write(tmp_path / "a.zarr", _data((2, 64, 64)) + 1, chunks=(1, 16, 16), zarr_format=zarr_format, overwrite=True)

    report = _child_error(tmp_path, source, rewrite)
    assert report["error"] == "_StoreRewrittenError", report
    assert "changed after the stack was opened" in report["message"]
    assert report["zarr"] is False


def test_a_store_deleted_after_the_pickling_raises_in_the_spawned_process(tmp_path: Path) -> None:
    source = _write(tmp_path / "a.zarr", _data((2, 64, 64)), chunks=(1, 32, 32))
    report = _child_error(tmp_path, source, lambda: shutil.rmtree(source))
    assert report["error"] == "_StoreDeletedError", report
    assert "no longer holds the array" in report["message"]


def test_a_chunk_file_modified_after_the_opening_raises_in_the_spawned_process(tmp_path: Path) -> None:
    source = _write(tmp_path / "a.zarr", _data((2, 64, 64)), chunks=(1, 32, 32))
    chunk = Path(source) / "c" / "1" / "0" / "0"

    def touch() -> None:
        chunk.write_bytes(chunk.read_bytes())  # same bytes, written after the opening
        now = time.time_ns()  # the fine clock: the file system's (coarse) one can lag the opening's time_ns()
        os.utime(chunk, ns=(now, now))

    report = _child_error(tmp_path, source, touch)
    assert report["error"] == "_StaleChunkError", report
    assert str(chunk) in report["message"]
    assert "was modified after the opening" in report["message"]


def test_a_spawned_process_with_the_cache_off_reads_the_same(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_CHUNK_CACHE_BYTES, "0")
    source = _write(tmp_path / "a.zarr", _data((2, 100, 90)), chunks=(1, 32, 32))
    report, got, want = _spawned(tmp_path, source, "TYX")
    assert report["zarr"] is False
    for g, w in zip(got, want, strict=True):
        np.testing.assert_array_equal(g, w)


def test_a_corrupt_chunk_is_named_as_failing_in_the_spawned_process(tmp_path: Path) -> None:
    source = _write(tmp_path / "a.zarr", _data((2, 64, 64)), chunks=(1, 32, 32))
    chunk = Path(source) / "c" / "1" / "0" / "0"

    def corrupt() -> None:
        st = chunk.stat()
        chunk.write_bytes(b"not a zstd frame")
        os.utime(chunk, ns=(st.st_atime_ns, st.st_mtime_ns))  # as before: not said to be modified after the opening

    report = _child_error(tmp_path, source, corrupt)
    assert report["error"] == "SourceReadError", report
    # each touched chunk read alone through zarr (opened for the probe) names the one that fails
    assert "failing chunk(s) 'c/1/0/0'" in report["message"], report["message"]


def test_an_array_whose_layout_cannot_be_made_opens_and_reads_through_zarr(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lazystack.sources.zarr.engines import ArrayLayout

    def refuse(cls: Any, array: Any) -> ArrayLayout:
        raise AttributeError("metadata this layout does not know")  # as a zarr release with other metadata would

    data = _data((2, 64, 64))
    source = _write(tmp_path / "a.zarr", data, chunks=(1, 32, 32))
    monkeypatch.setattr(ArrayLayout, "of", classmethod(refuse))
    (stack,) = lazystack.load_zarrs([source], "TYX")  # the layout is an optimisation: opening never fails on it
    monkeypatch.undo()
    clone = pickle.loads(pickle.dumps(stack))
    np.testing.assert_array_equal(clone.extract_patch(1, None, (10, 20), (30, 30))[0], data[1, 10:40, 20:50])
