"""Review of branch zarr13 (session 13): each defect found pinned by a test that fails without its fix.

References are independent of the code under test: zarr-python's own writes and reads of the same store, the
error a read raises, the plate directory opened as a local path.
"""

from __future__ import annotations

import pickle
import time
import warnings
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import test_zarr13
import zarr
from test_zarr13 import _compressed
from zarr_helpers import dated_now

import lazystack
from lazystack.io.cache import chunk_cache_size
from lazystack.sources.zarr import engines
from lazystack.sources.zarr.engines import AutoEngine

auto_stack_cache_off = test_zarr13.auto_stack_cache_off  # the fixture, shared


@pytest.fixture
def rewrite_after_the_file_check(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """After tensorstore's FIFO/device check of the chunk files and before tensorstore reads them, the arrays in
    the returned list are rewritten by zarr-python (a temporary file renamed over each chunk: a new inode), as a
    writer racing the read would."""
    targets: list[Path] = []
    original = engines.TensorstoreEngine._check_files

    def check_then_rewrite(self: Any, indices: Any) -> None:
        original(self, indices)
        for path in targets:
            with dated_now(path):  # a modification time after the opening whatever the file system's clock
                zarr.open_array(path, mode="r+")[...] = 7
        targets.clear()

    monkeypatch.setattr(engines.TensorstoreEngine, "_check_files", check_then_rewrite)
    return targets


# -- the single stat before the read: a chunk replaced during the read is read silently ---------------------------
@pytest.mark.parametrize("layout", [{}, {"chunks": (1, 16, 16), "shards": (1, 32, 32)}], ids=["chunks", "shards"])
def test_autos_tensorstore_fetch_refuses_a_chunk_replaced_while_it_was_read(
    tmp_path: Path, rewrite_after_the_file_check: list[Path], layout: Any
) -> None:
    """The one stat per file of 6f52737 happens *before* tensorstore opens the file: a chunk file replaced between
    that stat and the read (zarr-python renames a new file over it) was returned without error, the new data
    mixed with whatever the cache holds of the old. 5428efd stat'ed after the read and raised."""
    pytest.importorskip("tensorstore")
    path = _compressed(tmp_path / "a.zarr", **layout)
    engine = AutoEngine(zarr.open_array(path, mode="r"), min_tensorstore=1, min_tensorstore_bytes=0)
    engine.direct.modified_after = time.time_ns()
    assert engine.tensorstore is not None
    rewrite_after_the_file_check.append(path)
    with pytest.raises(lazystack.SourceReadError, match=r"(?s)c/0/0/0.*modified after.*reopen"):
        engine.fetch([(0, 0, 0), (1, 1, 1)])


def test_autos_tensorstore_region_read_refuses_a_chunk_replaced_while_it_was_read(
    auto_stack_cache_off: tuple[Path, lazystack.LazyImageStack], rewrite_after_the_file_check: list[Path]
) -> None:
    """The same race on a patch read whole by tensorstore with the cache off (the path 6f52737 newly checks)."""
    path, stack = auto_stack_cache_off
    assert stack.extract_patch(0, None, (0, 0), (32, 32)).max() == 1
    rewrite_after_the_file_check.append(path)
    with pytest.raises(lazystack.SourceReadError, match=r"(?s)modified after.*reopen"):
        stack.extract_patch(0, None, (0, 0), (32, 32))


# -- one stale-chunk message: variants the branch's test does not try (tensorstore's reads, the direct engine) -----
@pytest.mark.parametrize("engine", ["auto", "direct"])
@pytest.mark.parametrize("cache", ["cache-on", "cache-off"])
def test_a_rewritten_big_chunk_gives_one_message_on_every_path(tmp_path: Path, engine: str, cache: str) -> None:
    """Chunks of 256 KiB: with ``auto`` and the cache off, a patch and a batch are read by tensorstore (its region
    reads), whose changed-file check names the array as the direct engine's does."""
    if engine == "auto":
        pytest.importorskip("tensorstore")
    path = tmp_path / "big.zarr"
    zarr.create_array(path, shape=(2, 256, 512), chunks=(1, 256, 512), dtype="uint16")[...] = 1
    previous = lazystack.set_zarr_engine(engine)
    try:
        (stack,) = lazystack.load_zarrs([path], "SYX")
        assert stack.reader.as_chunked().engine_name == engine
        stack.extract_patch(0, None, (0, 0), (8, 8))
        with dated_now(path):
            zarr.open_array(path, mode="r+")[...] = 3
        messages = {}
        with chunk_cache_size("64 MiB" if cache == "cache-on" else 0):
            for kind, read in {
                "patch": lambda: stack.extract_patch(1, None, (0, 0), (64, 64)),
                "batch": lambda: lazystack.extract_patches([(stack, 1, None, (0, 0), (64, 64))] * 2),
            }.items():
                with pytest.raises(lazystack.SourceReadError) as info:
                    read()
                messages[kind] = str(info.value)
    finally:
        lazystack.set_zarr_engine(previous)
    assert len(set(messages.values())) == 1, messages
    assert repr(stack.source) in messages["patch"]
    assert repr(str(path / "c" / "1" / "0" / "0")) in messages["patch"]


# -- after_read: every read of the store is followed by the source's store check ----------------------------------
@pytest.mark.parametrize("engine", ["auto", "direct", "tensorstore"])
@pytest.mark.parametrize("how", ["patch", "batch"])
@pytest.mark.parametrize("cache", ["cache-on", "cache-off"])
def test_a_store_deleted_after_opening_is_an_error_on_every_read_path(
    tmp_path: Path, engine: str, how: str, cache: str
) -> None:
    """The callback that replaced the _FastReader subclass: tensorstore's region reads (a patch over several
    256 KiB chunks, a batch) and the chunk fetches read a deleted store as the fill value; the check after the
    read turns that into an error naming the store."""
    if engine != "direct":
        pytest.importorskip("tensorstore")
    path = tmp_path / "gone.zarr"
    zarr.create_array(path, shape=(2, 512, 512), chunks=(1, 256, 512), dtype="uint16")[...] = 5
    previous = lazystack.set_zarr_engine(engine)
    try:
        (stack,) = lazystack.load_zarrs([path], "SYX")
        assert stack.reader.as_chunked().engine_name == engine
        for file in sorted(path.rglob("*"), reverse=True):
            file.unlink() if file.is_file() else file.rmdir()
        path.rmdir()
        requests = [(stack, 1, None, (200, 0), (100, 64))]  # two chunks
        if how == "batch":
            requests.append((stack, 0, None, (0, 0), (8, 8)))
        read = lazystack.extract_patches if how == "batch" else lambda r: r[0][0].extract_patch(*r[0][1:])
        with (
            chunk_cache_size("64 MiB" if cache == "cache-on" else 0),
            pytest.raises(lazystack.SourceNotFoundError, match=r"gone\.zarr.*deleted after"),
        ):
            read(requests)
    finally:
        lazystack.set_zarr_engine(previous)


def test_a_pickled_stack_gives_the_same_stale_chunk_message(tmp_path: Path) -> None:
    """A spawned DataLoader worker gets the stack pickled: its engine reader is rebuilt from the recipe, with the
    source's URI as ``name=`` and the store check as ``after_read``."""
    path = _compressed(tmp_path / "a.zarr")
    (stack,) = lazystack.load_zarrs([path], "SYX")
    copy = pickle.loads(pickle.dumps(stack))
    with dated_now(path):
        zarr.open_array(path, mode="r+")[...] = 4
    messages = []
    for s in (stack, copy):
        with pytest.raises(lazystack.SourceReadError) as info:
            s.extract_patch(1, None, (0, 0), (8, 8))
        messages.append(str(info.value))
    assert messages[0] == messages[1]
    assert repr(stack.source) in messages[1]


# -- a bare archive protocol followed by another bare one ----------------------------------------------------------
@pytest.fixture(scope="module")
def zipped_plate(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An OME-Zarr plate (well A/1, one field) zipped with the plate at the archive's root."""
    from ome_zarr.writer import write_image, write_plate_metadata, write_well_metadata

    root = tmp_path_factory.mktemp("plate")
    plate = zarr.open_group(str(root / "plate.zarr"), mode="w")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        write_plate_metadata(plate, ["A"], ["1"], ["A/1"], name="screen", field_count=1)
        well = plate.require_group("A").require_group("1")
        write_well_metadata(well, [{"path": "0"}])
        write_image(
            np.arange(2 * 16 * 16, dtype=np.uint16).reshape(2, 16, 16),
            well.require_group("0"),
            axes="cyx",
            scale_factors=(),
        )
    with zipfile.ZipFile(root / "plate.zip", "w", zipfile.ZIP_STORED) as archive:
        for file in sorted((root / "plate.zarr").rglob("*")):
            if file.is_file():
                archive.write(file, file.relative_to(root / "plate.zarr").as_posix())
    return root


def test_a_bare_zip_chain_over_a_cache_opens_the_archive_root(zipped_plate: Path) -> None:
    """``zip::simplecache::file:///x.zip`` is fsspec's spelling of ``zip://::simplecache::file:///x.zip`` (which
    opens): the bare-chain rule of ae28fd4 only looked for ``zip::<scheme>://``, so this one was taken for a local
    path ('Zarr store '<cwd>/zip::simplecache::file:/...' does not exist')."""
    archive = f"file://{zipped_plate}/plate.zip"
    want = [(s.attrs.get("well"), s.source) for s in lazystack.load_zarrs(f"zip://::simplecache::{archive}", "CYX")]
    assert want == [("A/1", f"zip://A/1/0/s0::simplecache::{archive}")]
    got = [(s.attrs.get("well"), s.source) for s in lazystack.load_zarrs(f"zip::simplecache::{archive}", "CYX")]
    assert got == want


# -- a chained URL whose archive is not one ------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["not-a-zip", "a-folder"])
def test_a_chained_url_over_something_not_an_archive_names_the_url(zipped_plate: Path, kind: str) -> None:
    """``zip://A/1::file:///x.zip`` where x.zip is not a zip archive raised zipfile's ``BadZipFile: File is not a zip
    file`` (a folder: ``IsADirectoryError``) naming neither the source nor the URL; the chained URLs ae28fd4
    documents deserve a lazystack error naming them (pre-existing in 5428efd)."""
    if kind == "not-a-zip":
        target = zipped_plate / "not.zip"
        target.write_text("hello")
    else:
        target = zipped_plate / "plate.zarr"
    source = f"zip://A/1::file://{target}"
    with pytest.raises(lazystack.LazyStackError) as info:
        lazystack.load_zarrs(source, "CYX")
    assert str(target) in str(info.value)
