"""Zarr source defects of session 13, each pinned by a test that fails without its fix.

References are independent of the code under test: the number of ``stat`` calls on the chunk files, the
error the other read path raises, zarr-python's own reads of the same store.
"""

from __future__ import annotations

import os
import time
import warnings
import zipfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr
from zarr_helpers import ServerState, dated_now, serve_directory

import lazystack
from lazystack.io.cache import chunk_cache_size
from lazystack.sources.zarr import engines
from lazystack.sources.zarr.engines import AutoEngine


def _compressed(path: Path, **kwargs: Any) -> Path:
    """A local zstd array of 2 x 64 x 64 uint16 in chunks of 1 x 32 x 32 (or ``kwargs``), values 1."""
    array = zarr.create_array(path, shape=(2, 64, 64), dtype="uint16", **({"chunks": (1, 32, 32)} | kwargs))
    array[...] = 1
    return path


@pytest.fixture
def auto_stack_cache_off(tmp_path: Path) -> Iterator[tuple[Path, lazystack.LazyImageStack]]:
    """The path of a local zstd array (``_compressed``: values 1, chunks 1 x 8 x 8) and its ``SYX`` stack, read by
    the ``auto`` engine with the chunk cache off for the test's duration, its tensorstore used for any region over
    two chunks or more."""
    pytest.importorskip("tensorstore")
    path = _compressed(tmp_path / "a.zarr", chunks=(1, 8, 8))
    (stack,) = lazystack.load_zarrs([path], "SYX")
    with chunk_cache_size(0):
        reader = stack.reader.as_chunked()
        assert isinstance(reader.engine, AutoEngine)
        reader.engine.min_tensorstore_bytes = 0
        yield path, stack


@pytest.fixture
def stats(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """Counts ``os.stat`` calls per path (chunk files only: paths with a ``/c/`` part)."""
    counts: Counter[str] = Counter()
    original = os.stat

    def counting(path: Any, *args: Any, **kwargs: Any) -> os.stat_result:
        if "/c/" in os.fspath(path):
            counts[os.fspath(path)] += 1
        return original(path, *args, **kwargs)

    monkeypatch.setattr(os, "stat", counting)
    return counts


# -- 1. auto's tensorstore fetch: one stat per chunk file before the read, one after ----------------------------
@pytest.mark.parametrize("layout", [{}, {"chunks": (1, 16, 16), "shards": (1, 32, 32)}], ids=["chunks", "shards"])
def test_auto_stats_each_file_once_per_tensorstore_fetch(tmp_path: Path, stats: Counter[str], layout: Any) -> None:
    """Each file (shard) once before the read (a FIFO or device: tensorstore would wait on it) and once after (its
    modification time: a stat before the read misses a file replaced during it, tests/test_review13_b.py), not
    once per chunk."""
    pytest.importorskip("tensorstore")
    path = _compressed(tmp_path / "a.zarr", **layout)
    engine = AutoEngine(zarr.open_array(path, mode="r"), min_tensorstore=1, min_tensorstore_bytes=0)
    engine.direct.modified_after = time.time_ns()
    chunks = [(0, 0, 0), (0, 1, 0), (1, 1, 1)]
    assert engine.tensorstore is not None
    stats.clear()
    got = engine.fetch(chunks)
    reference = zarr.open_array(path, mode="r")
    for idx, chunk in got.items():
        np.testing.assert_array_equal(chunk, reference[engine.chunk_region(idx)])
    assert stats, "the files were not checked"
    assert set(stats.values()) == {2}, stats


def test_autos_tensorstore_region_reads_check_the_files_modification_too(
    auto_stack_cache_off: tuple[Path, lazystack.LazyImageStack],
) -> None:
    """With the cache off, ``auto`` reads a region over many chunks whole in tensorstore: a chunk rewritten after
    the opening is an error there too (it was checked on chunk fetches only)."""
    path, stack = auto_stack_cache_off
    assert stack.extract_patch(0, None, (0, 0), (32, 32)).max() == 1
    with dated_now(path):  # a later modification time than the opening, whatever the file system's clock
        zarr.open_array(path, mode="r+")[...] = 2
    with pytest.raises(lazystack.SourceReadError, match=r"(?s)a\.zarr.*c/0/0/0.*reopen"):
        stack.extract_patch(0, None, (0, 0), (32, 32))


# -- 2. a rewritten chunk: one message on every path -----------------------------------------------------------
@pytest.mark.parametrize("cache", ["cache-on", "cache-off"])
def test_a_rewritten_chunk_gives_one_message_on_the_patch_and_the_batch_paths(tmp_path: Path, cache: str) -> None:
    group = zarr.open_group(tmp_path / "g.zarr", mode="w")
    group.create_array("b", shape=(2, 64, 64), chunks=(1, 32, 32), dtype="uint16")[...] = 1
    path = tmp_path / "g.zarr" / "b"
    (stack,) = lazystack.load_zarrs([path], "SYX")
    stack.extract_patch(0, None, (0, 0), (8, 8))
    with dated_now(path):  # a later modification time than the opening, whatever the file system's clock
        zarr.open_array(path, mode="r+")[...] = 3
    messages = {}
    with chunk_cache_size("64 MiB" if cache == "cache-on" else 0):
        for kind, read in {
            "patch": lambda: stack.extract_patch(1, None, (0, 0), (8, 8)),
            "batch": lambda: lazystack.extract_patches([(stack, 1, None, (0, 0), (8, 8))]),
            "stack-batch": lambda: stack.extract_patches([(1, None, (0, 0), (8, 8))]),
        }.items():
            with pytest.raises(lazystack.SourceReadError) as info:
                read()
            messages[kind] = str(info.value)
    assert len(set(messages.values())) == 1, messages
    message = messages["patch"]
    assert f"{stack.source!r}" in message  # the array's URI
    assert repr(str(path / "c" / "1" / "0" / "0")) in message  # the chunk file
    assert "'b/c/1/0/0'" in message  # its store key
    assert "modified after" in message
    assert "reopen" in message


# -- 3. engine_name says which engine reads ---------------------------------------------------------------------
def test_engine_name_is_direct_for_an_uncompressed_array_auto_never_sends_to_tensorstore(tmp_path: Path) -> None:
    """An uncompressed local array: ``auto`` never gave tensorstore a read (raw chunks are a memory copy) yet
    reported ``'auto'``; every read goes through the direct engine, which it now reports."""
    path = tmp_path / "raw.zarr"
    array = zarr.create_array(path, shape=(2, 64, 64), chunks=(1, 8, 8), dtype="uint16", compressors=None)
    array[...] = np.arange(array.size, dtype="uint16").reshape(array.shape)
    (stack,) = lazystack.load_zarrs([path], "SYX")
    reader = stack.reader.as_chunked()
    with chunk_cache_size(0):
        np.testing.assert_array_equal(stack.extract_patch(1, None, (0, 0), (64, 64))[0], array[1])
        assert reader.region_reads() is None  # a batch is read chunk by chunk, directly
        assert not reader.parallel_fetch(64)
    assert reader.engine_name == "direct"
    assert isinstance(reader.engine, engines.DirectEngine)


def test_engine_name_is_direct_once_tensorstore_refused_the_array_on_opening_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _compressed(tmp_path / "a.zarr")
    engine = AutoEngine(zarr.open_array(path, mode="r"), min_tensorstore=1, min_tensorstore_bytes=0)
    assert engine.name == "auto"

    def refuse(self: Any, array: Any) -> None:
        raise NotImplementedError("tensorstore cannot open it")

    monkeypatch.setattr(engines.TensorstoreEngine, "__init__", refuse)
    got = engine.fetch([(0, 0, 0), (1, 1, 1)])
    assert all(chunk.max() == 1 for chunk in got.values())
    assert engine.tensorstore is None
    assert engine.name == "direct"


# -- 4. a well of a plate through a chained URL ------------------------------------------------------------------
@pytest.fixture(scope="module")
def plates(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str, ServerState]]:
    """An OME-Zarr plate (wells A/1 and A/2, one field each), its zip archive (the store at the archive's root),
    both served on 127.0.0.1."""
    from ome_zarr.writer import write_image, write_plate_metadata, write_well_metadata

    root = tmp_path_factory.mktemp("plates")
    plate = zarr.open_group(str(root / "plate.zarr"), mode="w")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        write_plate_metadata(plate, ["A"], ["1", "2"], ["A/1", "A/2"], name="screen", field_count=1)
        for column in ("1", "2"):
            well = plate.require_group("A").require_group(column)
            write_well_metadata(well, [{"path": "0"}])
            data = np.arange(2 * 16 * 16, dtype=np.uint16).reshape(2, 16, 16) * int(column)
            write_image(data, well.require_group("0"), axes="cyx", scale_factors=())
    with zipfile.ZipFile(root / "plate.zip", "w", zipfile.ZIP_STORED) as archive:
        for file in sorted((root / "plate.zarr").rglob("*")):
            if file.is_file():
                archive.write(file, file.relative_to(root / "plate.zarr").as_posix())
    with serve_directory(root) as (url, state):
        yield root, url, state


def _described(stacks: Any) -> list[tuple[Any, ...]]:
    return [(s.attrs.get("plate"), s.attrs.get("well"), s.attrs.get("field"), s.data_shape) for s in stacks]


@pytest.mark.parametrize("where", ["file", "http"])
def test_a_well_in_a_zipped_plate_opened_by_a_chained_url_is_named_by_its_plate(
    plates: tuple[Path, str, ServerState], where: str
) -> None:
    """``zip://A/1::<archive>`` took the well for the store (``zip://A/1``) and never looked for the plate above
    it; the local path of the same well (``plate.zip/A/1``) and the plate directory name it ``screen``."""
    root, url, _ = plates
    archive = f"file://{root}/plate.zip" if where == "file" else f"{url}/plate.zip"
    reference = [s for s in lazystack.load_zarrs(str(root / "plate.zarr"), "CYX") if s.attrs["well"] == "A/1"]
    stacks = lazystack.load_zarrs(f"zip://A/1::{archive}", "CYX")
    assert _described(stacks) == _described(reference)
    assert _described(stacks)[0][:3] == ("screen", "A/1", 0)
    assert stacks[0].source == f"zip://A/1/0/s0::{archive}"
    want = zarr.open_array(root / "plate.zarr" / "A" / "1" / "0" / "s0", mode="r")[...]
    np.testing.assert_array_equal(stacks[0].extract_patch(0, None, (0, 0), (16, 16)), want)


def test_a_zipped_plate_opens_by_a_bare_zip_chain(plates: tuple[Path, str, ServerState]) -> None:
    root, _, _ = plates
    stacks = lazystack.load_zarrs(f"zip::file://{root}/plate.zip", "CYX")
    assert _described(stacks) == _described(lazystack.load_zarrs(str(root / "plate.zarr"), "CYX"))


def test_a_caching_chain_is_refused_naming_the_url_to_open(plates: tuple[Path, str, ServerState]) -> None:
    """``simplecache::http://...`` was taken for a local path ('store .../simplecache::http:/... does not
    exist'); it is an UnsupportedSourceError naming the source and the URL to open instead."""
    _, url, _ = plates
    source = f"simplecache::{url}/plate.zarr/A/1"
    with pytest.raises(lazystack.UnsupportedSourceError) as info:
        lazystack.load_zarrs(source, "CYX")
    message = str(info.value)
    assert repr(source) in message
    assert repr(f"{url}/plate.zarr/A/1") in message
    assert "does not exist" not in message
    (well,) = lazystack.load_zarrs(f"{url}/plate.zarr/A/1", "CYX")  # what the message says to do
    assert well.attrs["plate"] == "screen"
