"""Zarr fetch engines: every engine returns what ``zarr.Array[...]`` returns.

Arrays cover zarr v2 and v3, sharding (index at the end and at the start),
missing chunks and fill values, many dtypes and codecs, F order, big-endian
data, arrays inside groups, and remote stores over a local HTTP server.
Each test runs with the chunk cache on and off.
"""

from __future__ import annotations

import itertools
import multiprocessing
import os
import pickle
import threading
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import numcodecs
import numpy as np
import pytest
import zarr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from zarr.codecs import (
    BloscCodec,
    BytesCodec,
    Crc32cCodec,
    GzipCodec,
    ShardingCodec,
    TransposeCodec,
    ZstdCodec,
)

from benchmarks.http_range import LocalHTTPServer, RangeHandler
from lazystack import LazyImageStack
from lazystack.core.errors import MissingDependencyError
from lazystack.io import chunked
from lazystack.io.cache import chunk_cache_size, get_chunk_cache, set_chunk_cache_size
from lazystack.sources.zarr.engines import (
    ENV_ZARR_ENGINE,
    AutoEngine,
    DirectEngine,
    TensorstoreEngine,
    ZarrArrayReader,
    available_engines,
    get_zarr_engine,
    make_engine,
    set_zarr_engine,
)

ENGINE_NAMES = ["auto", "direct", "tensorstore", "zarr"]


def _data(shape: tuple[int, ...], dtype: str, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    dt = np.dtype(dtype)
    if dt.kind == "b":
        return rng.random(shape) > 0.5
    if dt.kind == "f":
        return (rng.random(shape) * 100).astype(dt)
    if dt.kind == "c":
        return (rng.random(shape) + 1j * rng.random(shape)).astype(dt)
    info = np.iinfo(dt)
    return rng.integers(max(info.min, -1000), min(info.max, 1000), size=shape, endpoint=True).astype(dt)


def _partial(z: Any, data: np.ndarray) -> np.ndarray:
    """Write only part of ``data`` (other chunks stay missing) and return what the array holds."""
    sl = tuple(slice(0, max(1, n // 2)) for n in data.shape)
    z[sl] = data[sl]
    return np.asarray(z[...])


def _v3_zstd(p: Path) -> Any:
    z = zarr.create_array(p, shape=(70, 90), chunks=(16, 32), dtype="uint16", compressors=ZstdCodec(level=1))
    z[...] = _data((70, 90), "uint16")
    return z


def _v3_raw_3d(p: Path) -> Any:
    z = zarr.create_array(p, shape=(9, 40, 45), chunks=(4, 16, 16), dtype="float32", compressors=None)
    z[...] = _data((9, 40, 45), "float32")
    return z


def _v3_sharded(p: Path) -> Any:
    z = zarr.create_array(p, shape=(100, 75), chunks=(10, 15), shards=(40, 30), dtype="int32", fill_value=-3)
    _partial(z, _data((100, 75), "int32"))
    return z


def _v3_sharded_start(p: Path) -> Any:
    codec = ShardingCodec(chunk_shape=(8, 8), codecs=[BytesCodec(), GzipCodec(level=1)], index_location="start")
    z = zarr.create_array(p, shape=(50, 61), chunks=(24, 16), dtype="int16", serializer=codec, compressors=None)
    z[...] = _data((50, 61), "int16")
    return z


def _v3_transpose_crc_nan(p: Path) -> Any:
    z = zarr.create_array(
        p,
        shape=(33, 47),
        chunks=(10, 10),
        dtype="float64",
        filters=[TransposeCodec(order=(1, 0))],
        compressors=[BloscCodec(cname="lz4"), Crc32cCodec()],
        fill_value=np.nan,
    )
    _partial(z, _data((33, 47), "float64"))
    return z


def _v3_big_endian_bool_group(p: Path) -> Any:
    root = zarr.open_group(p, mode="w")
    z = root.create_array("sub/arr", shape=(30, 20), chunks=(7, 9), dtype="bool", fill_value=True)
    _partial(z, _data((30, 20), "bool"))
    return z


def _v3_big_endian(p: Path) -> Any:
    z = zarr.create_array(p, shape=(25, 26), chunks=(8, 8), dtype="uint64", serializer=BytesCodec(endian="big"))
    z[...] = _data((25, 26), "uint64")
    return z


def _v3_blosc_float(p: Path) -> Any:
    z = zarr.create_array(p, shape=(31, 44), chunks=(12, 12), dtype="<f4", compressors=BloscCodec(cname="zstd"))
    z[...] = _data((31, 44), "float32")
    return z


def _v3_uint8_4d(p: Path) -> Any:
    z = zarr.create_array(p, shape=(2, 3, 20, 21), chunks=(1, 2, 8, 8), dtype="uint8", fill_value=5)
    _partial(z, _data((2, 3, 20, 21), "uint8"))
    return z


def _v2_zstd_fill_none(p: Path) -> Any:
    z = zarr.create_array(
        p, shape=(60, 50), chunks=(16, 16), dtype="int16", zarr_format=2, compressors=numcodecs.Zstd(), fill_value=None
    )
    _partial(z, _data((60, 50), "int16"))
    return z


def _v2_fortran_big_endian_delta(p: Path) -> Any:
    z = zarr.create_array(
        p,
        shape=(41, 37),
        chunks=(16, 16),
        dtype=">i4",
        zarr_format=2,
        compressors=numcodecs.Blosc(cname="zstd"),
        filters=[numcodecs.Delta(dtype=">i4")],
        order="F",
        fill_value=11,
    )
    _partial(z, _data((41, 37), ">i4"))
    return z


def _v2_slash_separator_complex(p: Path) -> Any:
    z = zarr.create_array(
        p,
        shape=(20, 30),
        chunks=(8, 8),
        dtype="complex64",
        zarr_format=2,
        chunk_key_encoding={"name": "v2", "separator": "/"},
    )
    z[...] = _data((20, 30), "complex64")
    return z


BUILDERS: dict[str, Callable[[Path], Any]] = {
    "v3-zstd-uint16": _v3_zstd,
    "v3-raw-3d-float32": _v3_raw_3d,
    "v3-sharded-missing": _v3_sharded,
    "v3-sharded-index-start": _v3_sharded_start,
    "v3-transpose-blosc-crc-nan": _v3_transpose_crc_nan,
    "v3-group-bool-missing": _v3_big_endian_bool_group,
    "v3-big-endian-uint64": _v3_big_endian,
    "v3-uint8-4d-missing": _v3_uint8_4d,
    "v3-blosc-float32": _v3_blosc_float,
    "v2-zstd-fill-none": _v2_zstd_fill_none,
    "v2-F-bigendian-delta-blosc": _v2_fortran_big_endian_delta,
    "v2-slash-complex64": _v2_slash_separator_complex,
}


@pytest.fixture(scope="module")
def arrays(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, str | None]]:
    """Build every array once; return where to reopen it read-only (store path, array path)."""
    root = tmp_path_factory.mktemp("zarrs")
    out: dict[str, tuple[Path, str | None]] = {}
    for name, build in BUILDERS.items():
        p = root / f"{name}.zarr"
        z = build(p)
        out[name] = (p, z.path or None)
    return out


def _open(where: tuple[Path | str, str | None]) -> Any:
    store, path = where
    return zarr.open_array(str(store), path=path or "", mode="r")


@pytest.fixture(params=["cache-on", "cache-off"])
def cache_mode(request: pytest.FixtureRequest) -> Iterator[str]:
    previous = set_chunk_cache_size(64 * 2**20 if request.param == "cache-on" else 0)
    get_chunk_cache().clear()
    yield request.param
    get_chunk_cache().clear()
    set_chunk_cache_size(previous)


def _regions(rng: np.random.Generator, shape: tuple[int, ...], n: int) -> Iterator[tuple[int | slice, ...]]:
    for i in range(n):
        key: list[int | slice] = []
        for s in shape:
            if i % 5 == 4 and s > 1:
                key.append(int(rng.integers(0, s)))
            else:
                a = int(rng.integers(0, s))
                key.append(slice(a, int(rng.integers(a + 1, s + 1))))
        yield tuple(key)


def _same(got: np.ndarray, want: np.ndarray) -> None:
    assert got.shape == want.shape
    np.testing.assert_array_equal(got, want)  # NaN == NaN here


def _expected_name(z: Any, engine: str) -> str:
    """``auto`` is the hybrid for a local compressed array tensorstore is not known to refuse before opening it
    (installed, numeric dtype, chunks it can allocate), else ``direct``; one tensorstore refuses when it opens the
    array (a filter it lacks) is read directly by the hybrid (``test_auto_reads_directly_what_tensorstore_refuses``),
    which then says ``direct``."""
    if engine == "auto":
        local = isinstance(z.store, zarr.storage.LocalStore) and bool(z.compressors or z.filters)
        try:
            TensorstoreEngine.check_usable(z, tuple(z.chunks), np.dtype(z.dtype))
        except (NotImplementedError, MissingDependencyError):
            return "direct"
        return "auto" if local else "direct"
    return engine


#: (array, engine) pairs an engine refuses (it raises NotImplementedError; "auto" picks another).
UNSUPPORTED = {("v2-F-bigendian-delta-blosc", "tensorstore")}  # tensorstore has no numcodecs Delta filter


def test_auto_reads_directly_what_tensorstore_refuses(arrays: dict[str, Any]) -> None:
    """tensorstore refuses the numcodecs Delta filter only when it opens the array, which ``auto`` does on the
    first fetch it would give tensorstore: that fetch, and every later one, is decoded directly."""
    pytest.importorskip("tensorstore")
    z = _open(arrays["v2-F-bigendian-delta-blosc"])
    engine = AutoEngine(z, min_tensorstore=1, min_tensorstore_bytes=0)
    indices = list(itertools.product(range(3), range(3)))
    assert engine.prefers_tensorstore(len(indices))
    for _ in range(2):
        got = engine.fetch(indices)
        for idx in indices:
            region = engine.chunk_region(idx)  # an edge chunk comes whole: its part inside the array is compared
            inside = tuple(slice(0, r.stop - r.start) for r in region)
            np.testing.assert_array_equal(got[idx][inside], z[region])
        assert engine.tensorstore is None


_LAZY_TENSORSTORE_CHILD = """
import sys, numpy as np, zarr, lazystack
from lazystack.io.cache import set_chunk_cache_size
z = zarr.create_array(sys.argv[1], shape=(2, 16, 256, 256), chunks=(1, 8, 128, 128), dtype="uint16")
z[...] = np.arange(z.size, dtype="uint16").reshape(z.shape)
(stack,) = lazystack.load_zarrs([sys.argv[1]], "TZYX")
patches = stack.extract_patches([(t, None, (0, 0, 0), (16, 64, 64)) for t in range(2)])
np.testing.assert_array_equal(patches[1][0], z[1, :, :64, :64])
print("after a batch with the cache on:", "tensorstore" in sys.modules)
set_chunk_cache_size(0)
np.testing.assert_array_equal(stack.extract_patch(0, None, (0, 0, 64), (16, 128, 128))[0], z[0, :, :128, 64:192])
print("after a cache-off read of 8 chunks:", "tensorstore" in sys.modules)
"""


def test_auto_imports_tensorstore_only_when_a_read_goes_to_it(tmp_path: Path) -> None:
    """A spawned DataLoader worker reading batches with the chunk cache on never needs tensorstore: ``auto``
    opens it (and imports it: 0.3-1 s) on the first read it gives it, not when the engine is built."""
    pytest.importorskip("tensorstore")
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "LAZYSTACK_ZARR_ENGINE": "auto"}
    out = subprocess.run(
        [sys.executable, "-c", _LAZY_TENSORSTORE_CHILD, str(tmp_path / "a.zarr")],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [
        "after a batch with the cache on: False",
        "after a cache-off read of 8 chunks: True",
    ]


@pytest.mark.parametrize("engine", ENGINE_NAMES)
@pytest.mark.parametrize("name", list(BUILDERS))
def test_engine_matches_zarr_on_random_regions(arrays: dict[str, Any], name: str, engine: str, cache_mode: str) -> None:
    z = _open(arrays[name])
    if (name, engine) in UNSUPPORTED:
        assert engine not in available_engines(z)
        with pytest.raises(NotImplementedError, match=engine):
            make_engine(z, engine)
        return
    reader = ZarrArrayReader(z, engine=engine)
    assert reader.engine_name == _expected_name(reader.array, engine)
    assert reader.shape == z.shape
    assert reader.dtype == z.dtype
    rng = np.random.default_rng(len(name))
    for key in _regions(rng, z.shape, 25):
        got = reader[key]
        _same(got, np.asarray(z[key]))
        assert got.dtype == z.dtype
    _same(reader[...], np.asarray(z[...]))


@pytest.mark.parametrize("name", list(BUILDERS))
def test_direct_engine_supports_every_test_array(arrays: dict[str, Any], name: str) -> None:
    z = _open(arrays[name])
    assert "direct" in available_engines(z)
    auto = make_engine(z, "auto")
    if _expected_name(z, "auto") == "auto":
        assert isinstance(auto, AutoEngine)
        # tensorstore opened on first use; None where it refuses the array (a filter it lacks): read directly
        assert (auto.tensorstore is None) == ("tensorstore" not in available_engines(z))
        assert auto.direct.chunk_shape == tuple(z.chunks)
        if auto.tensorstore is not None:
            assert auto.tensorstore.chunk_shape == tuple(z.chunks)
    else:
        assert isinstance(auto, DirectEngine)


def test_fetch_unit_is_the_inner_chunk_of_a_sharded_array(arrays: dict[str, Any]) -> None:
    z = _open(arrays["v3-sharded-missing"])
    reader = ZarrArrayReader(z, engine="direct")
    assert reader.chunk_grid.chunk_shape == (10, 15)
    chunks = reader.engine.fetch([(0, 0), (9, 4), (5, 2)])
    _same(chunks[(9, 4)], np.asarray(z[90:100, 60:75]))  # a missing chunk: fill value
    assert (chunks[(9, 4)] == -3).all()
    _same(chunks[(0, 0)], np.asarray(z[0:10, 0:15]))


def test_uncompressed_arrays_stay_direct_and_in_the_calling_thread(
    arrays: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    raw = _open(arrays["v3-raw-3d-float32"])
    assert not ZarrArrayReader(raw).capabilities.compressed
    assert ZarrArrayReader(_open(arrays["v3-zstd-uint16"])).capabilities.compressed
    assert ZarrArrayReader(_open(arrays["v3-sharded-missing"])).capabilities.compressed
    # a memory copy: tensorstore's hand-off only costs, so auto never uses it: the direct engine reads them
    with pytest.raises(NotImplementedError, match="compressed"):
        AutoEngine(raw, min_tensorstore=2, min_tensorstore_bytes=0)
    assert isinstance(make_engine(raw, "auto"), DirectEngine)
    # With the cache off a region over many raw chunks is copied in the calling thread.
    threads: set[str] = set()
    reader = ZarrArrayReader(raw, engine="direct")
    original = reader.fetch_chunk

    def spy(idx: tuple[int, ...]) -> np.ndarray:
        threads.add(threading.current_thread().name)
        return original(idx)

    monkeypatch.setattr(reader, "fetch_chunk", spy)
    monkeypatch.setattr(chunked, "CPU_WORKERS", 2)
    monkeypatch.setattr(chunked, "PARALLEL_MIN_BYTES", 1)
    with chunk_cache_size(0):
        _same(reader[...], np.asarray(raw[...]))
    assert threads == {threading.current_thread().name}


def test_auto_engine_sends_little_work_to_direct_and_much_to_tensorstore(arrays: dict[str, Any]) -> None:
    z = _open(arrays["v3-sharded-missing"])  # inner chunks of 10 x 15 int32: 600 bytes
    auto = make_engine(z, "auto")
    assert isinstance(auto, AutoEngine)
    assert not auto.prefers_tensorstore(1)
    assert not auto.prefers_tensorstore(9)  # 5.4 kB: not worth tensorstore's hand-off
    assert auto.prefers_tensorstore(auto.min_tensorstore_bytes // 600 + 1)
    auto = AutoEngine(z, min_tensorstore=3, min_tensorstore_bytes=0)
    assert [auto.prefers_tensorstore(n) for n in (1, 2, 3, 9)] == [False, False, True, True]
    calls: list[str] = []
    for part in (auto.direct, auto.tensorstore):
        original = part.fetch
        part.fetch = lambda idx, _o=original, _n=part.name: (calls.append(_n), _o(idx))[1]  # type: ignore[method-assign]
    few = [(0, 0), (9, 4)]
    many = [(i, j) for i in range(3) for j in range(3)]
    got = {**auto.fetch(few), **auto.fetch(many)}
    assert calls == ["direct", "tensorstore"]
    for idx, chunk in got.items():
        region = tuple(slice(i * c, min((i + 1) * c, n)) for i, c, n in zip(idx, z.chunks, z.shape, strict=True))
        want = np.asarray(z[region])
        _same(chunk[tuple(slice(0, n) for n in want.shape)], want)


def test_missing_store_objects_come_back_as_fill_value(tmp_path: Path) -> None:
    z = zarr.create_array(tmp_path / "empty.zarr", shape=(20, 20), chunks=(5, 5), dtype="float32", fill_value=2.5)
    z = zarr.open_array(tmp_path / "empty.zarr", mode="r")
    for engine in available_engines(z):
        out = ZarrArrayReader(z, engine=engine)[3:17, 0:20]
        assert (out == 2.5).all(), engine


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)
@given(data=st.data())
def test_property_engines_agree(arrays: dict[str, Any], data: st.DataObject) -> None:
    name = data.draw(st.sampled_from(["v3-sharded-missing", "v2-F-bigendian-delta-blosc", "v3-uint8-4d-missing"]))
    z = _open(arrays[name])
    key = []
    for n in z.shape:
        a = data.draw(st.integers(0, n - 1))
        key.append(slice(a, data.draw(st.integers(a + 1, n))))
    want = np.asarray(z[tuple(key)])
    for engine in available_engines(z):
        _same(ZarrArrayReader(z, engine=engine)[tuple(key)], want)


# -- selection -------------------------------------------------------------------------------
def test_engine_setting_and_environment(monkeypatch: pytest.MonkeyPatch, arrays: dict[str, Any]) -> None:
    z = _open(arrays["v3-zstd-uint16"])
    monkeypatch.delenv(ENV_ZARR_ENGINE, raising=False)
    previous = set_zarr_engine(None)
    try:
        assert get_zarr_engine() == "auto"
        monkeypatch.setenv(ENV_ZARR_ENGINE, "zarr")
        assert get_zarr_engine() == "zarr"
        assert ZarrArrayReader(z).engine_name == "zarr"
        set_zarr_engine("tensorstore")  # the Python setting wins over the environment
        assert ZarrArrayReader(z).engine_name == "tensorstore"
        set_zarr_engine(None)
        monkeypatch.setenv(ENV_ZARR_ENGINE, "fastest")
        with pytest.raises(ValueError, match=f"unknown {ENV_ZARR_ENGINE} 'fastest'; accepted: 'auto', 'direct'"):
            get_zarr_engine()
    finally:
        set_zarr_engine(previous if previous != "auto" else None)
    with pytest.raises(ValueError, match="unknown zarr engine 'numpy'"):
        set_zarr_engine("numpy")
    with pytest.raises(ValueError, match="unknown zarr engine"):
        ZarrArrayReader(z, engine="nope")


def test_tensorstore_refuses_a_memory_store() -> None:
    z = zarr.create_array(store={}, shape=(10, 10), chunks=(5, 5), dtype="uint8")
    with pytest.raises(NotImplementedError, match="MemoryStore"):
        TensorstoreEngine(z)
    with pytest.raises(NotImplementedError, match="MemoryStore"):
        make_engine(z, "tensorstore")  # asked for by name: strict
    assert available_engines(z) == ["direct", "zarr"]
    assert isinstance(make_engine(z, "auto"), DirectEngine)
    previous = set_zarr_engine("tensorstore")
    try:  # the process-wide setting is a preference: this array gets auto's choice
        assert isinstance(make_engine(z), DirectEngine)
        assert ZarrArrayReader(z).engine_name == "direct"
    finally:
        set_zarr_engine(previous)


@pytest.mark.parametrize("name", list(BUILDERS))
def test_direct_engine_decodes_every_chunk_as_zarr_does(arrays: dict[str, Any], name: str) -> None:
    """Every chunk, one by one and batched, equals zarr-python's read of its region (the reference)."""
    z = _open(arrays[name])
    engine = DirectEngine(z)
    grid = [range(-(-n // c)) for n, c in zip(z.shape, engine.chunk_shape, strict=True)]
    indices = list(itertools.product(*grid))
    batched = engine.fetch(indices)
    for idx in indices:
        region = tuple(
            slice(i * c, min((i + 1) * c, n)) for i, c, n in zip(idx, engine.chunk_shape, z.shape, strict=True)
        )
        want = np.asarray(z[region])
        one = engine.fetch_one(idx)
        for got in (one, batched[idx]):
            assert got.dtype == z.dtype
            _same(got[tuple(slice(0, n) for n in want.shape)], want)


def test_a_chunk_of_the_wrong_decoded_size_is_a_read_error(tmp_path: Path) -> None:
    z = zarr.create_array(tmp_path / "r.zarr", shape=(8, 8), chunks=(4, 4), dtype="uint16", compressors=None)
    z[...] = 3
    (tmp_path / "r.zarr" / "c" / "1" / "1").write_bytes(b"\x00" * 30)  # 30 bytes, a chunk holds 32
    reader = ZarrArrayReader(zarr.open_array(tmp_path / "r.zarr", mode="r"), engine="direct")
    np.testing.assert_array_equal(reader[0:4, 0:4], 3)
    with pytest.raises(OSError, match=r"cannot decode chunk \(1, 1\).*holds 30 bytes, expected 32"):
        reader[5:6, 5:6]


def test_corrupt_chunk_is_a_clear_read_error(tmp_path: Path) -> None:
    z = zarr.create_array(tmp_path / "c.zarr", shape=(10, 10), chunks=(5, 5), dtype="uint16")
    z[...] = 1
    (tmp_path / "c.zarr" / "c" / "0" / "1").write_bytes(b"not zstd at all")
    reader = ZarrArrayReader(zarr.open_array(tmp_path / "c.zarr", mode="r"), engine="direct")
    with pytest.raises(OSError, match=r"cannot decode chunk \(0, 1\)"):
        reader[0:10, 0:10]


# -- pickling, processes, stacks -----------------------------------------------------------
def test_reader_pickles_as_a_recipe(arrays: dict[str, Any], cache_mode: str) -> None:
    z = _open(arrays["v3-sharded-index-start"])
    reader = ZarrArrayReader(z, engine="direct")
    reader[0:5, 0:5]  # builds the engine
    blob = pickle.dumps(reader)
    assert len(blob) < 20_000
    clone = pickle.loads(blob)
    assert clone._engine is None
    assert clone.token == reader.token
    _same(clone[3:44, 7:60], np.asarray(z[3:44, 7:60]))


def _child_read(reader: ZarrArrayReader, key: tuple[slice, ...], queue: Any) -> None:
    queue.put((np.asarray(reader[key]).tolist(), reader.engine_name))


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork is POSIX only")
@pytest.mark.parametrize("engine", ENGINE_NAMES)
def test_reader_used_in_a_forked_child(arrays: dict[str, Any], engine: str) -> None:
    z = _open(arrays["v3-zstd-uint16"])
    reader = ZarrArrayReader(z, engine=engine)
    key = (slice(5, 40), slice(10, 70))
    want = np.asarray(z[key])
    _same(reader[key], want)  # engine and cache live in the parent
    assert reader.engine_name == _expected_name(z, engine)  # built here even when the read was a cache hit
    if isinstance(reader.engine, AutoEngine):  # opens tensorstore on first use: open it here, before the fork
        assert reader.engine.tensorstore is not None
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child_read, args=(reader, key, queue))
    proc.start()
    values, child_engine = queue.get(timeout=60)
    proc.join(timeout=60)
    assert proc.exitcode == 0
    _same(np.asarray(values, dtype=want.dtype), want)
    # tensorstore's threads do not survive fork: a forked child reads with the direct engine
    assert child_engine == ("direct" if engine in ("auto", "tensorstore") else engine)


def test_stack_over_a_zarr_reader(arrays: dict[str, Any], cache_mode: str) -> None:
    z = _open(arrays["v3-uint8-4d-missing"])
    full = np.asarray(z[...])
    ref = LazyImageStack(full, "TCYX")
    rng = np.random.default_rng(3)
    for engine in available_engines(z):
        stack = LazyImageStack(ZarrArrayReader(z, engine=engine), "TCYX")
        for _ in range(10):
            args = (int(rng.integers(0, 2)), [2, 0], (int(rng.integers(-5, 20)), int(rng.integers(-5, 20))), (9, 7))
            _same(stack.extract_patch(*args), ref.extract_patch(*args))
        _same(stack.data.compute(scheduler="sync"), ref.data.compute(scheduler="sync"))


@pytest.mark.parametrize("engine", ENGINE_NAMES)
@pytest.mark.parametrize("name", list(BUILDERS))
def test_read_float32_is_the_cast_region_or_none(
    arrays: dict[str, Any], name: str, engine: str, cache_mode: str
) -> None:
    z = _open(arrays[name])
    if engine not in available_engines(z) and engine != "auto":
        return
    reader = ZarrArrayReader(z, engine=engine)
    # every region read whole by tensorstore: auto sends it any read of two chunks or more
    if isinstance(reader.engine, AutoEngine):
        reader.engine.min_tensorstore_bytes = 0
    rng = np.random.default_rng(len(name) + 7)
    served = 0
    for _ in range(15):
        region = tuple(
            slice(a, int(rng.integers(a + 1, n + 1))) for a, n in ((int(rng.integers(0, n)), n) for n in z.shape)
        )
        got = reader.read_float32(region)
        touched = reader.chunk_grid.n_touched(region)
        exact = (z.dtype.kind in "iu" and z.dtype.itemsize <= 2) or (z.dtype.kind == "f" and z.dtype.itemsize <= 4)
        by_ts = engine == "tensorstore" or (engine == "auto" and reader.engine_name == "auto" and touched >= 2)
        if cache_mode == "cache-off" and by_ts and exact and reader.capabilities.compressed:
            assert got is not None, region
        if not exact:
            assert got is None, region  # tensorstore's cast would round (int32, float64) or is no cast (complex)
        if got is None:
            continue
        served += 1
        assert cache_mode == "cache-off", "with the cache on a region comes through the cache, never like this"
        assert got.dtype == np.float32
        assert got.flags.writeable  # a new array, the patch itself
        assert got.flags.c_contiguous
        _same(got, np.asarray(z[region]).astype(np.float32))
    if engine in ("direct", "zarr") or cache_mode == "cache-on":
        assert served == 0


def test_patches_come_as_float32_from_tensorstore_with_the_cache_off(
    arrays: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    z = _open(arrays["v3-zstd-uint16"])
    full = np.asarray(z[...])
    reader = ZarrArrayReader(z, engine="tensorstore")
    calls: list[tuple[slice, ...]] = []
    original = reader.read_float32
    monkeypatch.setattr(reader, "read_float32", lambda r: (calls.append(r), original(r))[1])
    stack = LazyImageStack(reader, "YX")  # the fast plan takes the reader's methods as they are now
    with chunk_cache_size(0):
        patch = stack.extract_patch(0, None, (3, 5), (40, 50))
        outside = stack.extract_patch(0, None, (-3, 60), (20, 40))  # leaves the image: the general path
    _same(patch, full[None, 3:43, 5:55].astype(np.float32))
    assert patch.flags.writeable
    assert patch.dtype == np.float32
    want = np.zeros((1, 20, 40), np.float32)
    want[0, 3:, :30] = full[0:17, 60:90]
    _same(outside, want)
    assert calls == [(slice(3, 43), slice(5, 55))]


# -- remote --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def http_root(arrays: dict[str, Any]) -> Iterator[str]:
    root = next(iter(arrays.values()))[0].parent
    server = LocalHTTPServer(("127.0.0.1", 0), partial(RangeHandler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("engine", ENGINE_NAMES)
@pytest.mark.parametrize("name", ["v3-zstd-uint16", "v3-sharded-missing", "v2-zstd-fill-none"])
def test_remote_http_store(arrays: dict[str, Any], http_root: str, name: str, engine: str, cache_mode: str) -> None:
    local = _open(arrays[name])
    remote = zarr.open_array(f"{http_root}/{name}.zarr", mode="r")
    reader = ZarrArrayReader(remote, engine=engine)
    assert reader.engine_name == _expected_name(reader.array, engine)
    rng = np.random.default_rng(7)
    for key in _regions(rng, local.shape, 8):
        _same(reader[key], np.asarray(local[key]))


@pytest.mark.parametrize("zarr_format", [2, 3])
@pytest.mark.parametrize("engine", ["direct", "auto", "zarr"])
def test_truncated_blosc_chunk_is_an_error_not_garbage(tmp_path: Path, zarr_format: int, engine: str) -> None:
    import numcodecs

    from lazystack.core.errors import SourceReadError
    from lazystack.sources.zarr.engines import ZarrArrayReader

    compressors = numcodecs.Blosc() if zarr_format == 2 else zarr.codecs.BloscCodec()
    path = tmp_path / "b.zarr"
    arr = zarr.create_array(
        path, shape=(64, 64), chunks=(32, 32), dtype="uint16", zarr_format=zarr_format, compressors=compressors
    )
    arr[...] = np.arange(64 * 64, dtype=np.uint16).reshape(64, 64)
    key = path / ("0.0" if zarr_format == 2 else "c/0/0")
    raw = key.read_bytes()
    key.write_bytes(raw[: len(raw) // 2])
    reader = ZarrArrayReader(zarr.open_array(path, mode="r"), engine=engine)
    with pytest.raises(SourceReadError, match=r"chunk \(0, 0\).*blosc chunk holds"):
        reader[(slice(0, 8), slice(0, 8))]
    np.testing.assert_array_equal(reader[(slice(32, 64), slice(0, 8))], np.asarray(arr[32:64, 0:8]))


def test_check_blosc_frame_rejects_short_frames() -> None:
    from lazystack.sources.zarr.engines import check_blosc_frame

    with pytest.raises(ValueError, match="shorter than its 16-byte header"):
        check_blosc_frame(b"\x02\x01")


def _own_private_names() -> set[str]:
    """Underscore names lazystack itself defines (functions, classes, attributes it assigns, parameters)."""
    import ast

    names: set[str] = set()
    for path in Path(chunked.__file__).parents[1].rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(node.name)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                names.add(node.attr)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                names.add(node.id)
    return {n for n in names if n.startswith("_")}


def _is_foreign_private(name: str, own: set[str]) -> bool:
    return name.startswith("_") and not name.startswith("__") and name not in own


@pytest.mark.parametrize("module", ["sources/zarr/engines.py", "sources/zarr/__init__.py"])
def test_zarr_reading_uses_no_private_name_of_another_package(module: str) -> None:
    """Issue 19: no ``_private`` module or attribute of zarr, numcodecs, fsspec or asyncio in the Zarr path."""
    import ast

    source = Path(chunked.__file__).parents[1] / module
    own = _own_private_names()
    foreign = []
    for node in ast.walk(ast.parse(source.read_text())):
        module_parts = (node.module or "").split(".") if isinstance(node, ast.ImportFrom) else []
        if any(_is_foreign_private(p, set()) for p in module_parts):
            foreign.append(f"from {node.module} import ...")
        elif isinstance(node, ast.Import):
            foreign += [a.name for a in node.names if any(_is_foreign_private(p, set()) for p in a.name.split("."))]
        elif isinstance(node, ast.Attribute) and _is_foreign_private(node.attr, own):
            foreign.append(f"line {node.lineno}: .{node.attr}")
    assert foreign == []


# -- layering: the engine returns data, the source decides what follows ------------------------------------
def _engine_module_tree() -> Any:
    import ast

    from lazystack.sources.zarr import engines

    return ast.parse(Path(engines.__file__).read_text(encoding="utf-8"))


def test_the_engine_calls_no_method_the_zarr_source_overrides() -> None:
    """No method engines.py calls on ``self`` is overridden by the Zarr source's reader (a hook calling back up).

    The source may override the chunk-reader contract's own entry points (``fetch_chunks``, ``read`` ...),
    which the engine module never calls on itself.
    """
    import ast

    from lazystack.sources import zarr as zarr_source

    called = {
        node.func.attr
        for node in ast.walk(_engine_module_tree())
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and isinstance(node.func.value, ast.Name)
        and node.func.value.id == "self"
    }
    assert "_region_engine" in called  # the walk sees the engine reader's own calls
    source_classes = [
        cls
        for cls in vars(zarr_source).values()
        if isinstance(cls, type) and issubclass(cls, ZarrArrayReader) and cls is not ZarrArrayReader
    ]
    # the Zarr source uses the engine reader as it is (its store check is an ``after_read`` callback, no
    # subclass since session 13): a subclass it adds must not override what the engine module calls on itself
    for cls in source_classes:
        hooks = sorted(called & set(vars(cls)))
        assert not hooks, f"engines.py calls {hooks} on self, which {cls.__name__} in the Zarr source overrides"


def test_the_engine_module_imports_only_lower_layers() -> None:
    """engines.py imports lazystack's core and io layers only, never the Zarr source package it serves."""
    import ast

    relative = [
        (node.level, node.module or "")
        for node in ast.walk(_engine_module_tree())
        if isinstance(node, ast.ImportFrom) and node.level
    ]
    absolute = [
        node.module
        for node in ast.walk(_engine_module_tree())
        if isinstance(node, ast.ImportFrom) and not node.level and (node.module or "").startswith("lazystack")
    ]
    assert relative
    assert all(level == 3 and module.split(".")[0] in ("core", "io") for level, module in relative), relative
    assert not absolute, absolute


def test_float32_policy_is_the_contracts() -> None:
    """float32_is_exact (io.reader) against numpy: a dtype is exact when its extreme and awkward values survive
    a round trip through float32; the engine module uses that function and defines no policy of its own."""
    from lazystack.io import reader as contract
    from lazystack.sources.zarr import engines

    names = ["bool", "int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "uint64"]
    for name in [*names, "float16", "float32", "float64", "complex64"]:
        dt = np.dtype(name)
        if dt.kind == "b":
            continue  # not converted by readers (kept out of the policy, as before)
        if dt.kind in "iu":
            info = np.iinfo(dt)
            values = np.array([info.min, info.max, info.max - 1], dtype=dt)
        elif dt.kind == "f":
            info_f = np.finfo(dt)
            values = np.array([info_f.max, info_f.tiny, info_f.eps, 0.1, -1 / 3], dtype=dt)
        else:
            values = np.array([1 + 2j], dtype=dt)
        with np.errstate(over="ignore", invalid="ignore"):
            exact = dt.kind != "c" and bool(np.all(values.astype(np.float32).astype(dt) == values))
        assert contract.float32_is_exact(dt) is exact, name
    assert engines.float32_is_exact is contract.float32_is_exact
    assert not hasattr(engines.TensorstoreEngine, "exact_float32")


def test_region_reads_convert_to_float32_only_when_their_maker_allows(arrays: dict[str, Any]) -> None:
    """RegionReads does as told: ``float32=False`` keeps the stored dtype even for a float32 request."""
    from lazystack.sources.zarr.engines import RegionReads

    z = _open(arrays["v3-zstd-uint16"])
    if "tensorstore" not in available_engines(z):
        pytest.skip("tensorstore cannot read this array here")
    engine = TensorstoreEngine(z)
    region = (slice(3, 40), slice(5, 60))
    for allowed in (False, True):
        reads = RegionReads(engine, engine.dtype, float32=allowed)
        reads.start(region, as_float32=True)
        reads.start(region)
        got = list(reads.results())
        assert [g.dtype for g in got] == [np.dtype(np.float32) if allowed else engine.dtype, engine.dtype]
        for g in got:
            _same(g.astype(np.float32), np.asarray(z[region]).astype(np.float32))
