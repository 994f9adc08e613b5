"""load_zarrs on local and in-memory stores: Zarr v2 / v3 / sharded, groups, URIs, bad input, workers.

Every value is compared with zarr-python's own read of the same array.
"""

from __future__ import annotations

import multiprocessing as mp
import operator
import os
import pickle
import shutil
from pathlib import Path
from typing import Any

import dask
import numpy as np
import pytest
import zarr
from conftest import raise_if_dask_computes
from reference import canonical_reference, patch_reference
from zarr_helpers import store_file_count, write_plain_store

from lazystack import load_zarrs
from lazystack.core.errors import (
    MissingDependencyError,
    ShapeMismatchError,
    SourceFormatError,
    SourceNotFoundError,
    SourceReadError,
    UnsupportedSourceError,
)
from lazystack.sources.zarr import ZarrArrayReader, parse_zarr_source

KINDS = ["v2", "v3", "v3-sharded"]


def _write(tmp_path: Path, kind: str) -> tuple[Path, dict[str, np.ndarray]]:
    path = tmp_path / f"{kind}.zarr"
    fmt = 2 if kind == "v2" else 3
    return path, write_plain_store(path, fmt, shards=kind == "v3-sharded")


@pytest.fixture(params=KINDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[Path, dict[str, np.ndarray], str]:
    path, data = _write(tmp_path, request.param)
    return path, data, request.param


def zarr_read(path: Path | str, name: str) -> zarr.Array:
    """The reference: zarr-python's own array."""
    return zarr.open_array(str(path), path=name, mode="r")


# -- values ------------------------------------------------------------------------------------
def test_group_gives_sorted_first_level_arrays(store: Any) -> None:
    path, data, _ = store
    stacks = load_zarrs([path], "SYX")
    assert [s.source for s in stacks] == [f"file://{path}/a", f"file://{path}/b"]
    assert [s.original_data_shape for s in stacks] == [data["a"].shape, data["b"].shape]
    assert [s.data_dtype for s in stacks] == [np.float32, np.uint16]
    assert all(s.format == "zarr" and s.level is None for s in stacks)


def test_patches_views_and_whole_arrays_equal_zarr(store: Any) -> None:
    path, _, _ = store
    rng = np.random.default_rng(1)
    for stack in load_zarrs([str(path)], "SYX"):
        ref = zarr_read(path, stack.source.rsplit("/", 1)[-1])
        full = ref[...]
        canon = canonical_reference(full, "SYX")
        np.testing.assert_array_equal(stack.compute(), canon)
        np.testing.assert_array_equal(stack.data.compute(), canon)
        np.testing.assert_array_equal(stack.xarray.values, full)
        for _ in range(15):
            sample = int(rng.integers(stack.n_samples))
            coords = [int(rng.integers(-10, n)) for n in full.shape[1:]]
            size = [int(rng.integers(1, 40)) for _ in full.shape[1:]]
            got = stack.extract_patch(sample, None, coords, size)
            np.testing.assert_array_equal(got, patch_reference(canon, sample, None, coords, size))
        # a view reads what zarr reads for the same region
        view = stack.isel(S=slice(1, None), Y=slice(3, 40, 2), X=slice(5, 30))
        np.testing.assert_array_equal(view.compute(), canonical_reference(ref[1:, 3:40:2, 5:30], "SYX"))
        np.testing.assert_array_equal(view.data.compute(), view.compute())


def test_dask_chunks_follow_inner_chunks(store: Any) -> None:
    path, data, kind = store
    stack = load_zarrs([path / "b"], "SYX")[0]
    ref = zarr_read(path, "b")
    assert stack.reader.chunks == ref.chunks == (1, 16, 16)
    assert stack.reader.shards == ((1, 32, 32) if kind == "v3-sharded" else None)
    with dask.config.set({"array.chunk-size": "1B"}):  # a target below one chunk: no merging
        assert stack.data.chunks[2:] == ((16, 16, 16, 16, 6), (16,) * 5 + (10,))
        np.testing.assert_array_equal(stack.data.blocks[2, 0, 1, 3].compute()[0, 0], data["b"][2, 16:32, 48:64])


def test_array_at_store_root_and_nested_path(tmp_path: Path) -> None:
    arr = np.arange(4 * 30 * 20, dtype=np.int32).reshape(4, 30, 20)
    z = zarr.create_array(str(tmp_path / "root.zarr"), shape=arr.shape, chunks=(2, 8, 8), dtype=arr.dtype)
    z[...] = arr
    (stack,) = load_zarrs(tmp_path / "root.zarr", "TYX")
    assert stack.source == f"file://{tmp_path}/root.zarr"
    np.testing.assert_array_equal(stack.compute()[:, 0], arr)
    write_plain_store(tmp_path / "p.zarr", 3)
    (deep,) = load_zarrs([f"{tmp_path}/p.zarr/nested/deep"], "YX")
    np.testing.assert_array_equal(deep.compute()[0, 0], zarr_read(tmp_path / "p.zarr", "nested/deep")[...])
    (sub,) = load_zarrs([f"file://{tmp_path}/p.zarr/nested"], "YX")
    assert sub.source == f"file://{tmp_path}/p.zarr/nested/deep"


def test_source_recreates_the_stack(store: Any) -> None:
    path, _, _ = store
    for stack in load_zarrs([path], "SYX"):
        (again,) = load_zarrs([stack.source], "SYX")
        assert again.source == stack.source
        assert again.original_data_shape == stack.original_data_shape
        np.testing.assert_array_equal(again.compute(), stack.compute())


def test_file_uri_with_relative_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``file://rel.zarr/b`` names the host ``rel.zarr`` (RFC 8089, ``urllib.parse``): refused, as
    ``write_ome_zarr`` and the file loaders refuse it (session 15: one parser); the relative path reads."""
    write_plain_store(tmp_path / "rel.zarr", 2)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UnsupportedSourceError, match=r"naming a host: got 'file://rel\.zarr/b'"):
        load_zarrs(["file://rel.zarr/b"], "SYX")
    (stack,) = load_zarrs(["rel.zarr/b"], "SYX")
    assert stack.source == f"file://{tmp_path}/rel.zarr/b"


@pytest.mark.parametrize(
    "codec",
    ["zstd", "gzip", "blosc", "crc32c+zstd", "bytes-big-endian", "v2-blosc", "v2-zlib", "v2-none", "v2-delta"],
)
def test_codecs(tmp_path: Path, codec: str) -> None:
    from numcodecs import Blosc, Delta, Zlib
    from zarr.codecs import BloscCodec, BytesCodec, Crc32cCodec, GzipCodec, ZstdCodec

    arr = np.random.default_rng(3).integers(0, 2**16, (3, 40, 33), dtype=np.uint16)
    kwargs: dict[str, Any] = {}
    if codec.startswith("v2-"):
        kwargs["zarr_format"] = 2
        kwargs["compressors"] = {"v2-blosc": Blosc(), "v2-zlib": Zlib(), "v2-none": None, "v2-delta": Zlib()}[codec]
        if codec == "v2-delta":
            kwargs["filters"] = [Delta(dtype="u2")]
    elif codec == "crc32c+zstd":
        kwargs["compressors"] = [ZstdCodec(), Crc32cCodec()]
    elif codec == "bytes-big-endian":
        kwargs["serializer"] = BytesCodec(endian="big")
    else:
        kwargs["compressors"] = {"zstd": ZstdCodec(), "gzip": GzipCodec(), "blosc": BloscCodec()}[codec]
    z = zarr.create_array(str(tmp_path / "c.zarr"), shape=arr.shape, chunks=(1, 16, 16), dtype=arr.dtype, **kwargs)
    z[...] = arr
    (stack,) = load_zarrs([tmp_path / "c.zarr"], "CYX")
    np.testing.assert_array_equal(stack.compute()[0], arr)
    np.testing.assert_array_equal(stack.extract_patch(0, [2, 0], (10, 5), (20, 20)), arr[[2, 0], 10:30, 5:25])


def test_memory_uri(tmp_path: Path) -> None:
    from zarr.storage import FsspecStore

    arr = np.arange(2 * 20 * 24, dtype=np.float64).reshape(2, 20, 24)
    url = f"memory://lazystack-test-{os.getpid()}/m.zarr"
    group = zarr.open_group(store=FsspecStore.from_url(url), mode="w")
    group.create_array("img", shape=arr.shape, chunks=(1, 8, 8), dtype=arr.dtype)[...] = arr
    try:
        (stack,) = load_zarrs([url], "SYX")
        assert stack.source == url + "/img"
        np.testing.assert_array_equal(stack.compute()[:, 0], arr)
        (again,) = load_zarrs([stack.source], "SYX")
        np.testing.assert_array_equal(again.extract_patch(1, None, (3, 4), (5, 6))[0], arr[1, 3:8, 4:10])
    finally:
        import fsspec

        fsspec.filesystem("memory").rm(url.removeprefix("memory://"), recursive=True)


def test_zip_uri(tmp_path: Path) -> None:
    data = write_plain_store(tmp_path / "inzip" / "z.zarr", 3)
    archive = shutil.make_archive(str(tmp_path / "archive"), "zip", root_dir=tmp_path / "inzip")
    uri = f"zip://z.zarr::file://{archive}"
    stacks = load_zarrs([uri], "SYX")
    assert [s.source for s in stacks] == [f"zip://z.zarr/a::file://{archive}", f"zip://z.zarr/b::file://{archive}"]
    np.testing.assert_array_equal(stacks[1].compute()[:, 0], data["b"])
    (again,) = load_zarrs([stacks[0].source], "SYX")
    np.testing.assert_array_equal(again.extract_patch(1, None, (10, 10), (8, 8))[0], data["a"][1, 10:18, 10:18])


def test_opening_reads_metadata_only(tmp_path: Path) -> None:
    path, _ = _write(tmp_path, "v3")
    for chunk in (path / "b" / "c").rglob("*"):
        if chunk.is_file():
            chunk.write_bytes(b"garbage")  # any chunk read would now fail
    with raise_if_dask_computes():
        stacks = load_zarrs([path], "SYX")
        _ = stacks[1].data, stacks[1].xarray, repr(stacks[1])
    with pytest.raises(SourceReadError):
        stacks[1].extract_patch(0, None, (0, 0), (4, 4))


def test_sources_are_never_written(tmp_path: Path) -> None:
    path, _ = _write(tmp_path, "v2")
    before = {p: p.stat().st_mtime_ns for p in path.rglob("*")}
    stacks = load_zarrs([path], "SYX")
    for s in stacks:
        s.compute()
        s.extract_patch(0, None, (0, 0), (70, 70))
        s.close()
    assert {p: p.stat().st_mtime_ns for p in path.rglob("*")} == before
    assert store_file_count(path) == len(before) - sum(p.is_dir() for p in before)


# -- pickling and worker processes ----------------------------------------------------------
def test_reader_pickles_as_recipe(store: Any) -> None:
    path, data, _ = store
    stack = load_zarrs([path / "b"], "SYX")[0]
    stack.extract_patch(0, None, (0, 0), (16, 16))  # opens the array
    blob = pickle.dumps(stack)
    assert len(blob) < 5000, "a pickled stack must not carry data"
    assert b"zarr.core" not in blob  # no zarr Array / store object inside
    again = pickle.loads(blob)
    assert isinstance(again.reader, ZarrArrayReader)
    np.testing.assert_array_equal(again.extract_patch(2, None, (60, 80), (10, 10))[0], data["b"][2, 60:70, 80:90])


def _patch_in_child(stack: Any, queue: Any) -> None:
    queue.put(stack.extract_patch(1, None, (5, 7), (20, 20)))


def test_fork_after_use_reopens(tmp_path: Path) -> None:
    path, data = _write(tmp_path, "v3-sharded")
    stack = load_zarrs([path / "b"], "SYX")[0]
    stack.extract_patch(0, None, (0, 0), (8, 8))  # the parent has the array open
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    proc = ctx.Process(target=_patch_in_child, args=(stack, queue))
    proc.start()
    got = queue.get(timeout=60)
    proc.join(30)
    assert proc.exitcode == 0
    np.testing.assert_array_equal(got[0], data["b"][1, 5:25, 7:27])


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_worker_pool(tmp_path: Path, method: str) -> None:
    path, data = _write(tmp_path, "v2")
    stacks = load_zarrs([path], "SYX")
    call = operator.methodcaller("extract_patch", 1, None, (3, 4), (16, 16))
    with mp.get_context(method).Pool(2) as pool:
        results = pool.map(call, stacks)
    np.testing.assert_array_equal(results[0][0], data["a"][1, 3:19, 4:20])
    np.testing.assert_array_equal(results[1][0], data["b"][1, 3:19, 4:20])


def test_dask_distributed_workers(tmp_path: Path) -> None:
    distributed = pytest.importorskip("distributed")
    path, data = _write(tmp_path, "v3")
    stack = load_zarrs([path / "b"], "SYX")[0]
    with (
        distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=True, dashboard_address=":0") as cluster,
        distributed.Client(cluster) as client,
    ):
        total = client.compute(stack.data.sum(dtype=np.int64)).result()
        patch = client.submit(operator.methodcaller("extract_patch", 2, None, (30, 40), (9, 9)), stack).result()
    assert total == data["b"].sum(dtype=np.int64)
    np.testing.assert_array_equal(patch[0], data["b"][2, 30:39, 40:49])


# -- missing and corrupt chunks --------------------------------------------------------------
def test_missing_chunk_reads_fill_value(tmp_path: Path) -> None:
    arr = np.full((32, 32), 5, dtype=np.int16)
    z = zarr.create_array(str(tmp_path / "f.zarr"), shape=arr.shape, chunks=(16, 16), dtype=arr.dtype, fill_value=-3)
    z[...] = arr
    (tmp_path / "f.zarr" / "c" / "1" / "0").unlink()
    (stack,) = load_zarrs([tmp_path / "f.zarr"], "YX")
    ref = zarr.open_array(str(tmp_path / "f.zarr"), mode="r")[...]
    assert (ref[16:, :16] == -3).all()
    np.testing.assert_array_equal(stack.compute()[0, 0], ref)


@pytest.mark.parametrize("kind", KINDS)
def test_corrupt_chunk_names_key_and_store(tmp_path: Path, kind: str) -> None:
    path, _ = _write(tmp_path, kind)
    key = {"v2": "b/0.1.2", "v3": "b/c/0/1/2", "v3-sharded": "b/c/0/0/1"}[kind]
    (path / key).write_bytes(b"\x00not a valid chunk\xff" * 3)
    (stack,) = load_zarrs([path / "b"], "SYX")
    stack.extract_patch(1, None, (0, 0), (16, 16))  # other chunks still read
    with pytest.raises(SourceReadError) as info:
        stack.extract_patch(0, None, (20, 35), (20, 20))  # touches 4 chunks (2 shards), one of them corrupt
    assert f"failing {'shard' if kind == 'v3-sharded' else 'chunk'}(s) {key!r}:" in str(info.value)
    assert f"store 'file://{path}'" in str(info.value)
    assert isinstance(info.value, OSError)


# -- bad input -------------------------------------------------------------------------------
def test_path_does_not_exist(tmp_path: Path) -> None:
    with pytest.raises(SourceNotFoundError, match="does not exist") as info:
        load_zarrs([tmp_path / "nope.zarr"], "YX")
    assert "nope.zarr" in str(info.value)
    with pytest.raises(FileNotFoundError):
        load_zarrs([f"file://{tmp_path}/nope.zarr/a"], "YX")


def test_path_is_not_a_zarr_store(tmp_path: Path) -> None:
    (tmp_path / "plain.zarr").mkdir()
    (tmp_path / "plain.zarr" / "readme.txt").write_text("hello")
    with pytest.raises(SourceFormatError, match="not a Zarr store"):
        load_zarrs([tmp_path / "plain.zarr"], "YX")
    (tmp_path / "image.tif").write_bytes(b"II*\x00")
    with pytest.raises(SourceFormatError, match="is a file, not a Zarr store"):
        load_zarrs([tmp_path / "image.tif"], "YX")


def test_missing_array_lists_what_is_there(tmp_path: Path) -> None:
    path, _ = _write(tmp_path, "v3")
    with pytest.raises(SourceNotFoundError) as info:
        load_zarrs([f"file://{path}/c"], "SYX")
    text = str(info.value)
    assert "'c'" in text
    assert "'a' (array" in text
    assert "'b' (array" in text
    assert "'nested' (group)" in text
    with pytest.raises(SourceNotFoundError, match="'deep' \\(array"):
        load_zarrs([f"{path}/nested/missing/deeper"], "YX")


def test_unsupported_scheme() -> None:
    with pytest.raises(UnsupportedSourceError, match="unsupported URI scheme 'nosuchproto'") as info:
        load_zarrs(["nosuchproto://host/x.zarr"], "YX")
    assert "http" in str(info.value)


def test_scheme_without_its_package() -> None:
    import importlib.util

    if importlib.util.find_spec("gcsfs") is not None:
        pytest.skip("gcsfs is installed: gs:// is supported here")
    with pytest.raises(MissingDependencyError, match="gcsfs") as info:
        load_zarrs(["gs://bucket/x.zarr"], "YX")
    assert isinstance(info.value, ImportError)


def test_group_without_arrays(tmp_path: Path) -> None:
    root = zarr.open_group(str(tmp_path / "g.zarr"), mode="w")
    root.create_group("sub1").create_array("x", shape=(4, 4), dtype="u1")
    root.create_group("sub2")
    with pytest.raises(SourceFormatError, match="holds no arrays") as info:
        load_zarrs([tmp_path / "g.zarr"], "YX")
    assert "'sub1' (group)" in str(info.value)
    assert "'sub2' (group)" in str(info.value)
    zarr.open_group(str(tmp_path / "empty.zarr"), mode="w")
    with pytest.raises(SourceFormatError, match="empty"):
        load_zarrs([tmp_path / "empty.zarr"], "YX")


def test_axes_rank_mismatch_names_the_array(tmp_path: Path) -> None:
    path, _ = _write(tmp_path, "v3")
    with pytest.raises(ShapeMismatchError):
        load_zarrs([path / "a"], "YX")


def test_non_numeric_array_is_rejected(tmp_path: Path) -> None:
    z = zarr.create_array(str(tmp_path / "s.zarr"), shape=(3, 3), dtype=str)
    z[...] = np.full((3, 3), "x")
    with pytest.raises(SourceFormatError, match="not an image dtype"):
        load_zarrs([tmp_path / "s.zarr"], "YX")


def test_parse_source_splits_at_the_store() -> None:
    loc = parse_zarr_source("http://h:1/a/b.zarr/g/arr", {"x": 1})
    assert (loc.protocol, loc.root, loc.path) == ("http", "http://h:1/a/b.zarr", "g/arr")
    assert loc.uri() == "http://h:1/a/b.zarr/g/arr"
    loc = parse_zarr_source("zip://in.zarr/g::s3://bucket/a.zip")
    assert (loc.root, loc.path, loc.chain) == ("zip://in.zarr", "g", "::s3://bucket/a.zip")
    assert loc.uri() == "zip://in.zarr/g::s3://bucket/a.zip"


# -- hardening: invalid chunk grids, stores changed after opening, the fast read path ---------------
@pytest.mark.parametrize("zarr_format", [2, 3])
def test_zero_chunk_dimension_is_rejected_at_open(tmp_path: Path, zarr_format: int) -> None:
    import json

    path = tmp_path / "zero.zarr"
    zarr.create_array(str(path), shape=(4, 8), chunks=(2, 4), dtype="u1", zarr_format=zarr_format)[...] = 1  # type: ignore[arg-type]
    meta_file = path / ("zarr.json" if zarr_format == 3 else ".zarray")
    meta = json.loads(meta_file.read_text())
    if zarr_format == 3:
        meta["chunk_grid"]["configuration"]["chunk_shape"] = [2, 0]
    else:
        meta["chunks"] = [2, 0]
    meta_file.write_text(json.dumps(meta))
    with pytest.raises(SourceFormatError, match="every chunk dimension must be positive") as info:
        load_zarrs([path], "YX")
    assert str(path) in str(info.value)
    assert "(2, 0)" in str(info.value)


def test_store_deleted_after_opening_is_not_read_as_zeros(tmp_path: Path) -> None:
    path, data = _write(tmp_path, "v3")
    (stack,) = load_zarrs([path / "b"], "SYX")
    np.testing.assert_array_equal(stack.extract_patch(0, None, (0, 0), (4, 4))[0], data["b"][0, :4, :4])
    shutil.rmtree(path)
    with pytest.raises(SourceNotFoundError, match="was deleted after the stack was opened") as info:
        stack.extract_patch(2, None, (30, 30), (8, 8))  # chunks never read before: zarr would give the fill value
    assert f"file://{path}" in str(info.value)


def test_store_replaced_after_opening_raises(tmp_path: Path) -> None:
    path, _ = _write(tmp_path, "v2")
    (stack,) = load_zarrs([path / "b"], "SYX")
    new = tmp_path / "new.zarr"
    write_plain_store(new, 2, seed=1)
    shutil.rmtree(path)
    os.replace(new, path)
    with pytest.raises(SourceReadError, match=r"changed after (the stack|it) was opened"):
        stack.extract_patch(1, None, (0, 0), (8, 8))


def test_reads_go_through_the_chunk_cache_and_never_hand_out_cache_memory(tmp_path: Path) -> None:
    from lazystack.io.cache import get_chunk_cache

    path, data = _write(tmp_path, "v3")
    (stack,) = load_zarrs([path / "b"], "SYX")
    reader = ZarrArrayReader(parse_zarr_source(str(path / "b")))
    region = (slice(1, 2), slice(3, 40), slice(5, 60))
    assert reader.read_cached(region) is None  # nothing read yet: the cache-only read reads nothing
    reader.read_region(region)
    cached = reader.read_cached(region)
    if get_chunk_cache().enabled:
        assert cached is not None
        np.testing.assert_array_equal(cached, data["b"][region])
    else:
        assert cached is None
    np.testing.assert_array_equal(reader[1, 3:40, 5:60], data["b"][1, 3:40, 5:60])
    np.testing.assert_array_equal(reader[(1, slice(3, 40), slice(5, 60))], data["b"][1, 3:40, 5:60])
    patch = stack.extract_patch(1, None, (3, 5), (10, 10))
    assert patch.flags.writeable
    patch[...] = -1  # the caller's own copy: the next read is unchanged
    np.testing.assert_array_equal(stack.extract_patch(1, None, (3, 5), (10, 10))[0], data["b"][1, 3:13, 5:15])
    if get_chunk_cache().enabled:
        assert reader.as_chunked() is reader.as_chunked()
        assert get_chunk_cache().nbytes > 0
    clone = pickle.loads(pickle.dumps(reader))
    assert clone._fast is None
    assert clone._array is None
    np.testing.assert_array_equal(clone[2, 60:70, 80:90], data["b"][2, 60:70, 80:90])


def test_cold_patches_through_the_loader_come_as_float32_from_tensorstore(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lazystack.core.errors import SourceNotFoundError
    from lazystack.io.cache import chunk_cache_size
    from lazystack.sources.zarr.engines import ZarrArrayReader as EngineReader
    from lazystack.sources.zarr.engines import set_zarr_engine

    pytest.importorskip("tensorstore", reason="the float32 reads come from tensorstore")
    data = np.random.default_rng(5).integers(0, 4000, (2, 90, 120), dtype=np.uint16)
    z = zarr.create_array(tmp_path / "a.zarr", shape=data.shape, chunks=(1, 32, 32), dtype=data.dtype)
    z[...] = data
    served: list[bool] = []
    original = EngineReader.read_float32
    monkeypatch.setattr(EngineReader, "read_float32", lambda self, r: (served.append(True), original(self, r))[1])
    previous = set_zarr_engine("tensorstore")
    try:
        (stack,) = load_zarrs(str(tmp_path / "a.zarr"), "SYX")
        with chunk_cache_size(0):
            first = stack.extract_patch(1, None, (3, 5), (40, 50))  # opens the fast reader: read_region
            assert served == []
            second = stack.extract_patch(0, None, (50, 60), (40, 50))
            assert served == [True]
            np.testing.assert_array_equal(first, data[None, 1, 3:43, 5:55].astype(np.float32))
            np.testing.assert_array_equal(second, data[None, 0, 50:90, 60:110].astype(np.float32))
            shutil.rmtree(tmp_path / "a.zarr")  # a failure in the float32 read is named as every read's
            with pytest.raises(SourceNotFoundError, match="deleted after the stack was opened"):
                stack.extract_patch(0, None, (0, 0), (40, 50))
    finally:
        set_zarr_engine(previous)


@pytest.mark.parametrize("dtype", ["uint16", "uint32"])
@pytest.mark.parametrize("how", ["patch", "batch"])
def test_reads_straight_from_tensorstore_check_the_store_in_the_source(tmp_path: Path, dtype: str, how: str) -> None:
    """With the cache off, tensorstore reads regions whole, bypassing chunk fetches: the source (not the
    engine) checks the store after them, for float32 reads (uint16), plain reads (uint32) and batches."""
    from lazystack import extract_patches
    from lazystack.core.errors import SourceNotFoundError
    from lazystack.io.cache import chunk_cache_size
    from lazystack.sources.zarr.engines import set_zarr_engine

    pytest.importorskip("tensorstore", reason="the region reads come from tensorstore")
    data = np.random.default_rng(6).integers(0, 4000, (2, 90, 120)).astype(dtype)
    z = zarr.create_array(tmp_path / "a.zarr", shape=data.shape, chunks=(1, 32, 32), dtype=data.dtype)
    z[...] = data
    previous = set_zarr_engine("tensorstore")
    try:
        (stack,) = load_zarrs(str(tmp_path / "a.zarr"), "SYX")
        with chunk_cache_size(0):

            def read() -> list[np.ndarray]:
                if how == "patch":
                    return [
                        stack.extract_patch(0, None, (50, 60), (40, 50)),
                        stack.extract_patch(1, None, (3, 5), (40, 50)),
                    ]
                reqs = [(stack, 0, None, (50, 60), (40, 50)), (stack, 1, None, (3, 5), (40, 50))]
                return list(extract_patches(reqs))

            first, second = read()
            np.testing.assert_array_equal(first, data[None, 0, 50:90, 60:110].astype(np.float32))
            np.testing.assert_array_equal(second, data[None, 1, 3:43, 5:55].astype(np.float32))
            shutil.rmtree(tmp_path / "a.zarr")
            with pytest.raises(SourceNotFoundError, match="deleted after the stack was opened"):
                read()
    finally:
        set_zarr_engine(previous)


@pytest.mark.parametrize("cache_bytes", [0, 64 * 2**20])
@pytest.mark.parametrize("engine", ["direct", "auto", "zarr"])
@pytest.mark.parametrize("zarr_format", [2, 3])
def test_huge_declared_chunk_with_no_file_reads_its_fill_value_without_allocating_it(
    tmp_path: Path, engine: str, zarr_format: int, cache_bytes: int
) -> None:
    """Issue 22: a 16x16 image in one declared 500000x500000 uint32 chunk (931 GiB) that was never written.

    zarr-python reads the 16x16 fill value (the reference); so must every patch, the whole stack and a
    dask compute, without allocating the declared chunk (numpy's MemoryError before).
    """
    from lazystack.io.cache import chunk_cache_size
    from lazystack.sources.zarr.engines import set_zarr_engine

    path = tmp_path / "huge-chunk.zarr"
    zarr.create_array(
        str(path),
        shape=(2, 16, 16),
        chunks=(1, 500_000, 500_000),
        dtype="uint32",
        fill_value=7,
        zarr_format=zarr_format,
    )
    assert not [p for p in path.rglob("*") if p.is_file() and p.name not in ("zarr.json", ".zarray", ".zattrs")]
    reference = np.asarray(zarr.open_array(str(path), mode="r")[...])
    np.testing.assert_array_equal(reference, 7)
    previous = set_zarr_engine(engine)
    try:
        with chunk_cache_size(cache_bytes):
            (stack,) = load_zarrs(str(path), "SYX")
            np.testing.assert_array_equal(stack.extract_patch(1, None, (3, 4), (8, 8))[0], reference[1, 3:11, 4:12])
            np.testing.assert_array_equal(stack.compute()[:, 0], reference)
            np.testing.assert_array_equal(stack.data.compute()[:, 0], reference)
    finally:
        set_zarr_engine(previous)
