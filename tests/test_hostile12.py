"""Hostile inputs, second audit (session 12): manifests, writing, OME-Zarr breadth metadata, CZI fuzz, degenerate
stacks for samplers and statistics, misbehaving HTTP servers.

What could crash, hang or exhaust the process runs in a capped child (``run_child`` of ``test_hostile11``). Failures
in modules other than sampling, ops and the command line are strict xfails whose reason names the fix.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import http.server
import json
import os
import random
import socket
import struct
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile
import zarr
from conftest import shared_files
from test_hostile11 import assert_clear, run_child, serving

import lazystack
from lazystack import LazyImageStack, SourceFormatError, SourceReadError, UnsupportedSourceError, write_ome_zarr
from lazystack.sampling import (
    ForegroundSampler,
    GridSampler,
    MaskWeightedSampler,
    RandomSampler,
    WholeSampleSampler,
    read_manifest,
    write_manifest,
)
from lazystack.sampling.manifest import ManifestMismatchError

pytestmark = pytest.mark.timeout(180)


# -- manifests ------------------------------------------------------------------------------------------------------
@pytest.fixture
def manifest(tmp_path: Path) -> tuple[Path, list[Any], list[dict[str, str]]]:
    """A 4-row manifest over one 2 x 32 x 32 TIFF: its path, stacks and rows (as csv.DictReader reads them)."""
    import csv

    tifffile.imwrite(tmp_path / "a.tif", np.arange(2 * 32 * 32, dtype=np.uint16).reshape(2, 32, 32))
    stacks = list(lazystack.load_tiffs([tmp_path / "a.tif"], "SYX"))
    path = write_manifest(tmp_path / "m.csv", RandomSampler(stacks, 8, 4, seed=1), stacks)
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    return path, stacks, rows


def _edited(path: Path, rows: list[dict[str, str]], **fields: str) -> Path:
    import csv

    out = path.with_name("edited.csv")
    names = list(rows[0]) + [k for k in fields if k not in rows[0]]
    with out.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=names)
        writer.writeheader()
        writer.writerow({**rows[0], **fields})
    return out


@pytest.mark.parametrize(
    ("fields", "error", "names"),
    [
        ({"coords": "nan;3"}, SourceFormatError, ["coords", "'nan'", "line 2", "integer"]),
        ({"coords": "1.5;3"}, SourceFormatError, ["coords", "'1.5'", "line 2"]),
        ({"sample": "-1"}, SourceFormatError, ["sample", "-1", "negative"]),
        ({"epoch": "abc"}, SourceFormatError, ["epoch", "'abc'"]),
        ({"coords": "-8;-5"}, ManifestMismatchError, ["(-8, -5)", "spatial shape (32, 32)"]),
        ({"coords": "99999999999999999999;3"}, ManifestMismatchError, ["99999999999999999999", "inside the image"]),
        ({"patch_size": "0;8"}, ManifestMismatchError, ["(0, 8)", "positive"]),
        ({"coords": "1;2;3"}, ManifestMismatchError, ["(1, 2, 3)", "2 coords"]),
        ({"coords": ""}, ManifestMismatchError, ["coords ()"]),
        ({"sample": "9"}, ManifestMismatchError, ["sample 9", "2 sample(s)", "0 to 1"]),
        ({"channels": "5"}, ManifestMismatchError, ["channel 5", "1 channel(s)"]),
        ({"stack": "9"}, ManifestMismatchError, ["stack 9", "1 stack(s)"]),
        ({"data_shape": "2;1;32;33"}, ManifestMismatchError, ["data_shape", "a.tif"]),
        ({"source": "/elsewhere/b.tif"}, ManifestMismatchError, ["source", "/elsewhere/b.tif", "a.tif"]),
    ],
)
def test_a_hand_edited_manifest_row_is_a_clear_error(manifest: Any, fields: dict, error: type, names: list) -> None:
    """On main: nan / 1.5 raised a bare ValueError, negative or far coords replayed zeros, stack 9 an IndexError."""
    path, stacks, rows = manifest
    edited = _edited(path, rows, **fields)
    with pytest.raises(error) as info:
        read_manifest(edited, stacks, epoch=0)
    assert str(edited) in str(info.value)
    for name in names:
        assert name in str(info.value), (name, str(info.value))


@pytest.mark.parametrize("fields", [{"stack": "9"}, {"coords": "-8;-5"}, {"sample": "9"}])
def test_rows_are_checked_against_the_stacks_without_the_identity_check(manifest: Any, fields: dict) -> None:
    """``check=False`` skips the source identity, not the range checks (main: IndexError or zeros at replay)."""
    path, stacks, rows = manifest
    with pytest.raises(ManifestMismatchError, match="line 2"):
        read_manifest(_edited(path, rows, **fields), stacks, check=False)


def test_an_extra_column_is_ignored_and_the_rows_replay_exactly(manifest: Any) -> None:
    path, stacks, rows = manifest
    sampler = read_manifest(_edited(path, rows, comment="hand-made"), stacks)
    spec = sampler.spec(0)
    y, x = spec.coords
    expected = tifffile.imread(path.parent / "a.tif")[spec.sample, y : y + 8, x : x + 8]
    np.testing.assert_array_equal(stacks[0].extract_patch(*spec.request(stacks)[1:])[0], expected)


@pytest.mark.parametrize(
    ("content", "what"),
    [(b"", "columns"), (b"\x00\xff\xfe" * 50, "UTF-8"), (b"a,b\n1,2\n", "columns"), (b'epoch,"in\x00dex\n', "")],
)
def test_a_file_that_is_not_a_manifest(manifest: Any, content: bytes, what: str) -> None:
    """An empty file gave an empty sampler on main, a binary one a UnicodeDecodeError."""
    path, stacks, _ = manifest
    path.write_bytes(content)
    with pytest.raises(SourceFormatError, match="not a lazystack manifest") as info:
        read_manifest(path, stacks)
    assert str(path) in str(info.value)
    assert what in str(info.value)


def test_a_manifest_that_is_a_fifo_is_refused_not_a_blocked_read(manifest: Any) -> None:
    path, _, _ = manifest
    fifo = path.with_name("fifo.csv")
    os.mkfifo(fifo)
    code = f"""
    from lazystack.sampling import read_manifest
    stacks = lazystack.load_tiffs([{str(path.parent / "a.tif")!r}], "SYX")
    warm_up = lambda: read_manifest({str(path)!r}, stacks)
    report_unblocking(lambda: read_manifest({str(fifo)!r}, stacks), warm_up=warm_up)
    """
    (result,) = run_child(code)
    assert_clear(result, "SourceFormatError", str(fifo), "regular file")


def test_reading_a_manifest_keeps_only_the_specs_in_memory(tmp_path: Path) -> None:
    """Rows are streamed: main held every row's dict at once (1182 B/row peak on 200k rows, ~12 GB for 10**7)."""
    tifffile.imwrite(tmp_path / "a.tif", np.zeros((4, 64, 64), np.uint16), photometric="minisblack")
    stacks = list(lazystack.load_tiffs([tmp_path / "a.tif"], "SYX"))
    n = 20_000
    path = write_manifest(tmp_path / "m.csv", RandomSampler(stacks, 8, n), stacks)
    tracemalloc.start()
    try:
        sampler = read_manifest(path, stacks)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(sampler) == n
    assert peak / n < 450, f"{peak / n:.0f} bytes per row"


@pytest.mark.parametrize("target", ["source", "inside-store", "symlink", "fifo"])
def test_a_manifest_is_never_written_over_a_source(tmp_path: Path, target: str) -> None:
    """On main ``write_manifest(stack.source, ...)`` replaced the TIFF by a CSV; a FIFO blocked the write."""
    tif = tmp_path / "a.tif"
    tifffile.imwrite(tif, np.arange(2 * 32 * 32, dtype=np.uint16).reshape(2, 32, 32))
    store = tmp_path / "b.zarr"
    write_ome_zarr(lazystack.load_arrays([np.ones((32, 32), np.uint8)], "YX")[0], store, levels=1)
    stacks = [*lazystack.load_tiffs([tif], "SYX"), *lazystack.load_zarrs([store], "YX")]
    (tmp_path / "link.tif").symlink_to(tif)
    os.mkfifo(tmp_path / "fifo.csv")
    path = {"source": tif, "inside-store": store / "m.csv", "symlink": tmp_path / "link.tif"}.get(
        target, tmp_path / "fifo.csv"
    )
    before = _snapshot(tif) | _snapshot(store)
    code = f"""
    from lazystack.sampling import RandomSampler, write_manifest
    stacks = [*lazystack.load_tiffs([{str(tif)!r}], "SYX"), *lazystack.load_zarrs([{str(store)!r}], "YX")]
    report_unblocking(lambda: write_manifest({str(path)!r}, RandomSampler(stacks, 8, 4), stacks))
    """
    (result,) = run_child(code)
    assert_clear(result, "UnsupportedSourceError", str(path))
    assert _snapshot(tif) | _snapshot(store) == before
    assert len(stacks) == 2


def test_a_manifest_write_killed_midway_keeps_the_previous_file(manifest: Any) -> None:
    """On main the file was truncated in place: the previous manifest was lost and a cut at a row boundary read
    back as a shorter epoch."""
    import subprocess
    import sys
    import textwrap

    path, stacks, _ = manifest
    previous = path.read_bytes()
    code = f"""
    import os, signal, lazystack
    from lazystack.sampling import FixedSampler, write_manifest
    class Dying(FixedSampler):
        def spec(self, index, epoch=0):
            if index == 3000:
                os.kill(os.getpid(), signal.SIGKILL)
            return super().spec(index, epoch)
    stacks = lazystack.load_tiffs([{str(path.parent / "a.tif")!r}], "SYX")
    write_manifest({str(path)!r}, Dying([(0, 0, None, (1, 1), (8, 8))] * 5000), stacks)
    """
    env = dict(os.environ, PYTHONPATH=str(Path(lazystack.__file__).resolve().parents[1]))
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True, timeout=120)
    assert proc.returncode == -9, proc.stderr[-500:]
    assert path.read_bytes() == previous
    assert len(read_manifest(path, stacks)) == 4
    leftovers = [p.name for p in path.parent.iterdir() if p.name.startswith(".")]
    assert all(name.startswith(f".{path.name}.partial-") for name in leftovers), leftovers


def test_a_huge_patch_size_is_a_patch_error_not_a_memory_error() -> None:
    stack = LazyImageStack(np.zeros((1, 1, 32, 32), np.uint8), "SCYX")
    code = """
    import numpy as np
    stack = lazystack.LazyImageStack(np.zeros((1, 1, 32, 32), np.uint8), "SCYX")
    report(lambda: stack.extract_patch(0, None, (0, 0), (10**9, 10**9)).shape)
    """
    del stack
    (result,) = run_child(code)
    assert_clear(result, "PatchError", "1000000000")


# -- writing --------------------------------------------------------------------------------------------------------
def _snapshot(root: Path) -> dict[str, tuple[str, int]]:
    """Every file under ``root`` (or ``root`` itself): content hash and modification time."""
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    return {str(p): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns) for p in files}


@pytest.fixture
def source_store(tmp_path: Path) -> tuple[Path, LazyImageStack, np.ndarray]:
    data = np.arange(64 * 64, dtype=np.uint16).reshape(64, 64)
    store = tmp_path / "src.zarr"
    write_ome_zarr(lazystack.load_arrays([data], "YX")[0], store, levels=1)
    (stack,) = lazystack.load_zarrs([store], "YX")
    return store, stack, data


@pytest.mark.parametrize(
    ("target", "how"),
    [
        ("src.zarr", "is"),
        ("src.zarr/0", "lies inside"),
        ("src.zarr/derived.zarr", "lies inside"),
        ("src.zarr/../src.zarr", "is"),
        ("link.zarr", "is"),
    ],
)
@pytest.mark.parametrize("overwrite", [False, True])
def test_a_target_that_is_in_or_holds_the_source_is_refused(
    source_store: Any, tmp_path: Path, target: str, how: str, overwrite: bool
) -> None:
    """On main, overwrite=True replaced the source store by a copy (and ``src.zarr/../src.zarr`` moved it aside
    and failed), ``src.zarr/derived.zarr`` was written inside it, the symlink was replaced."""
    store, stack, data = source_store
    (tmp_path / "link.zarr").symlink_to(store)
    before = _snapshot(store)
    if not overwrite and target != "src.zarr/derived.zarr":  # an existing path: refused as before
        with pytest.raises(FileExistsError, match="already exists"):
            write_ome_zarr(stack, tmp_path / target, levels=1)
    else:
        with pytest.raises(UnsupportedSourceError, match="never writes to") as info:
            write_ome_zarr(stack, tmp_path / target, levels=1, overwrite=overwrite)
        assert how in str(info.value)
        assert str(stack.source) in str(info.value)
    assert _snapshot(store) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link.zarr", "src.zarr"]  # no partial folder left
    np.testing.assert_array_equal(stack.extract_patch(0, None, (0, 0), (64, 64))[0], data)


def test_a_group_holding_the_source_image_is_not_replaced(tmp_path: Path) -> None:
    data = np.arange(2 * 16 * 16, dtype=np.uint16).reshape(2, 16, 16)
    outer = tmp_path / "outer.zarr"
    write_ome_zarr(lazystack.load_arrays([data], "SYX")[0], outer, levels=1)  # images outer.zarr/0 and /1
    (first, _) = lazystack.load_zarrs([outer], "YX")
    before = _snapshot(outer)
    with pytest.raises(UnsupportedSourceError, match="never writes to"):
        write_ome_zarr(first, outer, levels=1, overwrite=True)
    assert _snapshot(outer) == before


def test_a_tiff_source_as_the_target(tmp_path: Path) -> None:
    tif = tmp_path / "a.tif"
    tifffile.imwrite(tif, np.ones((8, 8), np.uint8))
    (stack,) = lazystack.load_tiffs([tif], "YX")
    before = _snapshot(tif)
    for overwrite, match in ((False, "already exists"), (True, "is a file")):
        with pytest.raises(FileExistsError, match=match):
            write_ome_zarr(stack, tif, overwrite=overwrite)
    with pytest.raises(UnsupportedSourceError, match="empty path"):
        write_ome_zarr(stack, "", overwrite=True)
    assert _snapshot(tif) == before


def test_convert_onto_its_own_source_exits_with_the_reason(source_store: Any, capsys: Any) -> None:
    from lazystack.frontends.cli import main

    store, _, _ = source_store
    before = _snapshot(store)
    assert main(["convert", str(store), "--axes", "YX", "--out", str(store), "--overwrite", "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "never writes to" in err
    assert str(store) in err
    assert _snapshot(store) == before


@pytest.mark.parametrize("output", ["a.tif", "link.tif", "folder"])
def test_stats_output_onto_a_source_is_refused_before_computing(tmp_path: Path, capsys: Any, output: str) -> None:
    """On main ``lazystack stats a.tif --output a.tif`` replaced the TIFF by the JSON statistics."""
    from lazystack.frontends.cli import main

    tif = tmp_path / "a.tif"
    tifffile.imwrite(tif, np.arange(64, dtype=np.uint16).reshape(8, 8))
    (tmp_path / "link.tif").symlink_to(tif)
    (tmp_path / "folder").mkdir()
    before = _snapshot(tif)
    assert main(["stats", str(tif), "--axes", "YX", "--output", str(tmp_path / output), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert str(tmp_path / output) in err
    assert "never writes to" in err or "not a regular file" in err
    assert _snapshot(tif) == before
    assert main(["stats", str(tif), "--axes", "YX", "--output", str(tmp_path / "s.json"), "--quiet"]) == 0
    assert json.loads((tmp_path / "s.json").read_text())["max"] == [63.0]


@pytest.mark.parametrize("name", ["out[*?]{a,b}.zarr", "ünï 图像 ✓.zarr", "a\nb.zarr", "-rf .zarr"])
def test_odd_target_names_write_reopen_and_overwrite(source_store: Any, tmp_path: Path, name: str) -> None:
    store, stack, data = source_store
    before = _snapshot(store)
    for overwrite in (False, True):  # the overwrite looks for hidden folders by a glob of the name
        write_ome_zarr(stack, tmp_path / name, levels=1, overwrite=overwrite)
    (again,) = lazystack.load_zarrs([tmp_path / name], "YX")
    np.testing.assert_array_equal(again.extract_patch(0, None, (0, 0), (64, 64))[0], data)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert _snapshot(store) == before


def test_an_existing_file_or_a_file_as_parent_is_refused(source_store: Any, tmp_path: Path) -> None:
    _store, stack, _ = source_store
    other = tmp_path / "notes.txt"
    other.write_text("keep me")
    with pytest.raises(FileExistsError, match="is a file"):
        write_ome_zarr(stack, other, overwrite=True)
    with pytest.raises(FileExistsError, match=r"notes\.txt"):
        write_ome_zarr(stack, other / "out.zarr")
    assert other.read_text() == "keep me"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a read-only folder")
def test_a_read_only_parent_is_an_os_error_naming_it(source_store: Any, tmp_path: Path) -> None:
    _, stack, _ = source_store
    parent = tmp_path / "ro"
    parent.mkdir()
    parent.chmod(0o555)
    try:
        with pytest.raises(PermissionError, match="ro"):
            write_ome_zarr(stack, parent / "out.zarr")
    finally:
        parent.chmod(0o755)


# -- OME-Zarr breadth metadata --------------------------------------------------------------------------------------
def _image(path: Path) -> Path:
    data = np.arange(2 * 32 * 32, dtype=np.uint16).reshape(2, 32, 32)
    write_ome_zarr(lazystack.load_arrays([data], "CYX")[0], path, levels=1)
    return path


def _edit_ome(path: Path, fn: Any) -> None:
    meta = json.loads((path / "zarr.json").read_text())
    fn(meta["attributes"]["ome"])
    (path / "zarr.json").write_text(json.dumps(meta))


@pytest.mark.parametrize("listed", ["../../victim.zarr", "/VICTIM", "missing"])
def test_a_labels_listing_cannot_escape_the_store(tmp_path: Path, listed: str) -> None:
    victim = _image(tmp_path / "victim.zarr")
    listed = listed.replace("/VICTIM", str(victim))
    image = _image(tmp_path / "img.zarr")
    labels = zarr.open_group(str(image), mode="a").create_group("labels")
    labels.attrs["ome"] = {"version": "0.5", "labels": [listed]}
    with pytest.raises(lazystack.SourceNotFoundError) as info:
        lazystack.load(image / "labels", "CYX")
    assert listed in str(info.value)
    assert "img.zarr/labels" in str(info.value)


@pytest.mark.parametrize(
    ("where", "path"),
    [("well", "../victim.zarr/../plate.zarr/A/1"), ("well", "/ABS/plate.zarr/A/1"), ("field", "../../../victim.zarr")],
)
def test_a_plate_listing_cannot_escape_the_store(tmp_path: Path, where: str, path: str) -> None:
    _image(tmp_path / "victim.zarr")
    plate = zarr.open_group(str(tmp_path / "plate.zarr"), mode="w", zarr_format=3)
    well = plate.create_group("A").create_group("1")
    _image(tmp_path / "plate.zarr" / "A" / "1" / "0")
    path = path.replace("/ABS", str(tmp_path))
    well_path, field = (path, "0") if where == "well" else ("A/1", path)
    well.attrs["ome"] = {"version": "0.5", "well": {"images": [{"path": field}]}}
    wells = [{"path": well_path, "rowIndex": 0, "columnIndex": 0}]
    plate.attrs["ome"] = {
        "version": "0.5",
        "plate": {"rows": [{"name": "A"}], "columns": [{"name": "1"}], "wells": wells},
    }
    with pytest.raises(lazystack.SourceNotFoundError) as info:
        lazystack.load(tmp_path / "plate.zarr", "CYX")
    assert "plate.zarr" in str(info.value)
    assert path.strip("/") in str(info.value)


def test_a_plate_listing_300_000_wells_fails_at_the_first_missing_one(tmp_path: Path) -> None:
    plate = zarr.open_group(str(tmp_path / "plate.zarr"), mode="w", zarr_format=3)
    wells = [{"path": f"Z{i}/{i}", "rowIndex": 0, "columnIndex": 0} for i in range(300_000)]
    plate.attrs["ome"] = {
        "version": "0.5",
        "plate": {"rows": [{"name": "A"}], "columns": [{"name": "1"}], "wells": wells},
    }
    code = f"report(lambda: lazystack.load({str(tmp_path / 'plate.zarr')!r}, 'CYX'))"
    (result,) = run_child(code, timeout=120)
    assert_clear(result, "SourceNotFoundError", "Z0/0", "plate.zarr")


@pytest.mark.parametrize(
    "edit",
    [
        lambda ome: ome.__setitem__("omero", {"channels": [{"window": {"start": 1e308, "end": -1e308}}] * 2}),
        lambda ome: ome.__setitem__("omero", {"channels": 5}),
        lambda ome: ome.__setitem__("omero", {"channels": [{"label": "x"}] * 1000}),
    ],
    ids=["absurd-window", "channels-not-a-list", "1000-channels-for-2"],
)
def test_omero_rendering_metadata_does_not_change_the_pixels(tmp_path: Path, edit: Any) -> None:
    image = _image(tmp_path / "img.zarr")
    _edit_ome(image, edit)
    (stack,) = lazystack.load(image, "CYX")
    expected = np.arange(2 * 32 * 32, dtype=np.uint16).reshape(2, 32, 32)
    np.testing.assert_array_equal(stack.extract_patch(0, None, (0, 0), (32, 32)), expected)


def test_duplicate_ngff_axis_names_are_a_format_error(tmp_path: Path) -> None:
    image = _image(tmp_path / "img.zarr")
    _edit_ome(image, lambda ome: ome["multiscales"][0]["axes"].__setitem__(2, dict(ome["multiscales"][0]["axes"][1])))
    with pytest.raises(SourceFormatError, match="'y'") as info:
        lazystack.load(image, "CYX")
    assert str(image) in str(info.value)


def test_an_ome_zarr_version_from_the_future_warns(tmp_path: Path) -> None:
    image = _image(tmp_path / "img.zarr")
    _edit_ome(image, lambda ome: ome.__setitem__("version", "9.9"))
    with pytest.warns(lazystack.MetadataWarning, match="9.9"):
        lazystack.load(image, "CYX")


def test_a_unit_ngff_does_not_know_warns(tmp_path: Path) -> None:
    image = _image(tmp_path / "img.zarr")
    _edit_ome(image, lambda ome: [a.__setitem__("unit", "furlong") for a in ome["multiscales"][0]["axes"][1:]])
    with pytest.warns(lazystack.MetadataWarning, match="furlong"):
        lazystack.load(image, "CYX")


# -- CZI fuzz -------------------------------------------------------------------------------------------------------
CZIS = {p.name: p for p in shared_files("czi", "*.czi")}
_SEGMENT_IDS = (b"ZISRAWFILE", b"ZISRAWDIRECTORY", b"ZISRAWSUBBLOCK", b"ZISRAWMETADATA", b"ZISRAWATTDIR")
needs_czis = pytest.mark.skipif(
    not {"100x100.czi", "DAPI_GFP.czi", "WellD6-7_S2.czi"} <= set(CZIS), reason="the real CZI files are absent"
)


def _segments(raw: bytes) -> list[tuple[int, bytes]]:
    """(offset, id) of every segment header (they start on 32-byte boundaries)."""
    return [
        (at, raw[at : at + 16].rstrip(b"\0"))
        for at in range(0, len(raw) - 32, 32)
        if raw[at : at + 16].rstrip(b"\0") in _SEGMENT_IDS
    ]


def _first_entry(raw: bytes) -> tuple[int, dict[str, int]]:
    """Offset of the first sub-block directory entry and of each of its dimension entries, by letter."""
    (directory,) = [at for at, kind in _segments(raw) if kind == b"ZISRAWDIRECTORY"]
    entry = directory + 32 + 128
    n_dims = struct.unpack_from("<i", raw, entry + 28)[0]
    dims = {raw[entry + 32 + 20 * k : entry + 33 + 20 * k].decode(): entry + 32 + 20 * k for k in range(n_dims)}
    return entry, dims


def _patched(raw: bytes, at: int, fmt: str, value: int) -> bytes:
    out = bytearray(raw)
    struct.pack_into(fmt, out, at, value)
    return bytes(out)


def _czi_mutations(raw: bytes, rng: random.Random) -> dict[str, bytes]:
    """Damaged copies: header and directory fields set to edge values, random bit flips, cuts."""
    out: dict[str, bytes] = {}
    for field, offset in (("DirectoryPosition", 92), ("MetadataPosition", 100), ("AttachmentDirectoryPosition", 112)):
        for v in (0, 1, len(raw) - 8, len(raw) + 4096, 2**62, -1):
            out[f"{field}={v}"] = _patched(raw, offset, "<q", v)
    segments = _segments(raw)
    for at, kind in [s for s in segments if s[1] != b"ZISRAWSUBBLOCK"] + [
        s for s in segments if s[1] == b"ZISRAWSUBBLOCK"
    ][:1]:
        for v in (0, -1, 2**40, 2**63 - 1):
            out[f"{kind.decode()}@{at}.UsedSize={v}"] = _patched(raw, at + 24, "<q", v)
            out[f"{kind.decode()}@{at}.AllocatedSize={v}"] = _patched(raw, at + 16, "<q", v)
        if kind == b"ZISRAWSUBBLOCK":
            for v in (-1, 2**31 - 1):
                out[f"sub-block.MetadataSize={v}"] = _patched(raw, at + 32, "<i", v)
            for v in (0, -1, 2**40):
                out[f"sub-block.DataSize={v}"] = _patched(raw, at + 40, "<q", v)
    (directory,) = [at for at, kind in segments if kind == b"ZISRAWDIRECTORY"]
    for v in (0, -1, 2**31 - 1):
        out[f"EntryCount={v}"] = _patched(raw, directory + 32, "<i", v)
    entry, dims = _first_entry(raw)
    for v in (0, 1, len(raw) + 100, 2**62, -5):
        out[f"entry.FilePosition={v}"] = _patched(raw, entry + 6, "<q", v)
    for v in (-1, 99, 2**31 - 1):
        out[f"entry.PixelType={v}"] = _patched(raw, entry + 2, "<i", v)
        out[f"entry.Compression={v}"] = _patched(raw, entry + 18, "<i", v)
    for v in (0, 1000, -1):
        out[f"entry.DimensionCount={v}"] = _patched(raw, entry + 28, "<i", v)
    out["entry.SchemaType=XX"] = raw[:entry] + b"XX" + raw[entry + 2 :]
    for letter, at in dims.items():
        for field, offset in (("Size", 8), ("StoredSize", 16)):
            for v in (0, -1, 2**31 - 1):
                out[f"entry.{letter}.{field}={v}"] = _patched(raw, at + offset, "<i", v)
        for v in (2**31 - 1, -1):  # in X or Y it only moves the plane; in C, T, Z, S: a declared range to refuse
            out[f"entry.{letter}.Start={v}"] = _patched(raw, at + 4, "<i", v)
        out[f"entry.{letter}.name=Q"] = raw[:at] + b"Q\0\0\0" + raw[at + 4 :]
    for i in range(6):  # bit flips in the directory entries' fixed part and X / Y dimensions (not the other Starts)
        flipped = bytearray(raw)
        for _ in range(rng.randint(1, 3)):
            at = rng.choice(
                [
                    *range(entry + 2, entry + 28),
                    *range(dims["X"] + 8, dims["X"] + 20),
                    *range(dims["Y"] + 8, dims["Y"] + 20),
                ]
            )
            flipped[at] ^= 1 << rng.randrange(8)
        out[f"directory-flip-{i}"] = bytes(flipped)
    for _ in range(6):
        cut = rng.randrange(1, len(raw))
        out[f"cut-at-{cut}"] = raw[:cut]
    return out


@needs_czis
@pytest.mark.parametrize("name", ["100x100.czi", "DAPI_GFP.czi"])
def test_damaged_czi_headers_and_directory_give_clear_errors_or_the_pixels(tmp_path: Path, name: str) -> None:
    """~130 damaged copies of each file: a SourceFormatError / SourceReadError naming the copy, or planes read
    (damage pylibCZIrw tolerates: a field it does not use); never a crash, a hang or another exception."""
    raw = CZIS[name].read_bytes()
    cases = _czi_mutations(raw, random.Random(12))
    paths = {}
    for label, content in cases.items():
        paths[label] = str(tmp_path / f"{len(paths)}.czi")
        Path(paths[label]).write_bytes(content)
    code = f"""
    import sys, warnings
    warnings.simplefilter("ignore")
    axes = {lazystack.propose_axes(CZIS[name])!r}
    def planes(path):
        out = []
        for s in lazystack.load_czis([path], axes):
            for i in sorted({{0, s.data_shape[0] - 1}}):
                out.append(s.extract_patch(i, None, (0,) * (len(s.data_shape) - 2), s.data_shape[2:]).shape)
        return out
    for label, path in {paths!r}.items():
        print("CASE", label, file=sys.stderr, flush=True)  # the last one names a crash
        faulthandler.dump_traceback_later(30, exit=True)
        result = describe(lambda: planes(path))
        faulthandler.cancel_dump_traceback_later()
        print("RESULT " + json.dumps(dict(result, label=label, path=path)), flush=True)
    """
    results = run_child(code, timeout=170)
    assert len(results) == len(cases)
    bad = [
        r
        for r in results
        if "returned" not in r
        and not (
            r["lazystack"] and r["raised"] in ("SourceFormatError", "SourceReadError") and r["path"] in r["message"]
        )
    ]
    assert not bad, bad[:5]


def _czi_copy(tmp_path: Path, name: str, letter: str, field_offset: int, value: int) -> Path:
    raw = CZIS[name].read_bytes()
    entry, dims = _first_entry(raw)
    at = entry + 28 if letter == "count" else dims[letter] + field_offset
    path = tmp_path / f"{letter}-{value}-{name}"
    path.write_bytes(_patched(raw, at, "<i", value))
    return path


@needs_czis
@pytest.mark.parametrize("name", ["100x100.czi", "DAPI_GFP.czi"])
def test_propose_axes_on_a_negative_dimension_count_is_an_error_not_a_segfault(tmp_path: Path, name: str) -> None:
    path = _czi_copy(tmp_path, name, "count", 0, -1)
    (result,) = run_child(f"report(lambda: lazystack.propose_axes({str(path)!r}))")
    assert_clear(result, "SourceFormatError", str(path), "DimensionCount")


@needs_czis
def test_a_channel_start_of_2_31_is_an_error_not_a_hang(tmp_path: Path) -> None:
    path = _czi_copy(tmp_path, "DAPI_GFP.czi", "C", 4, 2**31 - 1)
    (result,) = run_child(f"report_unblocking(lambda: lazystack.load_czis([{str(path)!r}], 'SCYX'))")
    assert_clear(result, "SourceFormatError", str(path))


@needs_czis
def test_a_time_start_of_2_31_is_an_error_not_a_memory_error(tmp_path: Path) -> None:
    path = _czi_copy(tmp_path, "DAPI_GFP.czi", "T", 4, 2**31 - 1)
    (result,) = run_child(f"report(lambda: lazystack.load_czis([{str(path)!r}], 'SCYX'))")
    assert_clear(result, "SourceFormatError", str(path))


@needs_czis
def test_a_negative_scene_start_names_the_file(tmp_path: Path) -> None:
    path = _czi_copy(tmp_path, "WellD6-7_S2.czi", "S", 4, -1)
    (result,) = run_child(f"report(lambda: lazystack.load_czis([{str(path)!r}], 'SCYX'))")
    assert_clear(result, "SourceFormatError", str(path))


# -- samplers and statistics on degenerate stacks ------------------------------------------------------------------
def test_one_pixel_images_and_patches_larger_than_the_image() -> None:
    one = LazyImageStack(np.full((1, 1, 1, 1), 7, np.uint8), "SCYX")
    specs = RandomSampler([one], 1, 3).epoch_specs(0)
    assert [s.coords for s in specs] == [(0, 0)] * 3
    assert one.extract_patch(*specs[0].request([one])[1:]).tolist() == [[[7.0]]]
    with pytest.raises(lazystack.PatchError, match=r"\(2, 2\).*\(1, 1\)"):
        RandomSampler([one], 2, 3)
    (tile,) = GridSampler([one], 4, overlap=1).epoch_specs(0)  # a tile larger than the image overhangs with zeros
    patch = one.extract_patch(*tile.request([one])[1:])
    assert patch.shape == (1, 4, 4)
    assert patch[0, 0, 0] == 7
    assert patch.sum() == 7
    assert WholeSampleSampler([one]).epoch_specs(0)[0].patch_size == (1, 1)


def test_zero_length_epochs() -> None:
    stack = LazyImageStack(np.zeros((1, 1, 8, 8), np.uint8), "SCYX")
    sampler = RandomSampler([stack], 4, 0)
    assert len(sampler) == 0
    assert sampler.epoch_specs(3) == []
    assert list(sampler) == []
    with pytest.raises(IndexError, match="out of range"):
        sampler.spec(0)


def test_a_mask_without_foreground(tmp_path: Path) -> None:
    image = LazyImageStack(np.random.default_rng(0).random((2, 1, 16, 16)).astype(np.float32), "SCYX")
    zarr.create_array(str(tmp_path / "mask.zarr"), shape=(2, 16, 16), dtype="u1", chunks=(1, 16, 16))[:] = 0
    (mask,) = lazystack.load_zarrs([tmp_path / "mask.zarr"], "SYX")
    with pytest.raises(ValueError, match="no foreground") as info:
        MaskWeightedSampler([image], [mask], 4, 5)
    assert "mask.zarr" in str(info.value)  # main: no name
    # a foreground threshold never reached: every spec still comes, after a bounded number of draws
    sampler = ForegroundSampler([image], [mask], 4, 5, min_foreground=0.5, max_attempts=3)
    draws = [sampler.draw(i) for i in range(5)]
    assert all(attempts <= 3 and fraction == 0 for _, attempts, fraction in draws)
    assert sampler.epoch_specs(0) == [spec for spec, _, _ in draws]


def test_statistics_of_all_nan_and_all_inf_stacks() -> None:
    from lazystack.ops.stats import channel_statistics

    for value in (np.nan, np.inf):
        stack = LazyImageStack(np.full((2, 1, 8, 8), value, np.float32), "SCYX")
        stats = channel_statistics([stack])
        assert stats.count.tolist() == [0]
        assert np.isnan(stats.mean).all()
        assert np.isnan(stats.min).all()
        assert np.isnan(stats.percentile(50)).all()


@pytest.mark.parametrize("dtype", [np.uint64, np.int64])
def test_statistics_of_64_bit_extremes(dtype: type) -> None:
    """A uint64 stack at its maximum raised OverflowError on main (an exact histogram from an int64 offset)."""
    from lazystack.ops.stats import channel_statistics

    info = np.iinfo(dtype)
    data = np.full((2, 1, 8, 8), info.max, dtype)
    stats = channel_statistics([LazyImageStack(data, "SCYX")])
    assert stats.count.tolist() == [128]
    assert stats.min[0] == stats.max[0] == float(info.max) == stats.percentile(50)[0]
    data[0, 0, 0, 0] = info.min
    stats = channel_statistics([LazyImageStack(data, "SCYX")])
    assert stats.min[0] == float(info.min)
    assert stats.max[0] == float(info.max)
    # binned: within the documented bound of the true percentile (the maximum)
    assert abs(stats.percentile(50)[0] - float(info.max)) <= stats.percentile_error[0]


# -- misbehaving HTTP servers ---------------------------------------------------------------------------------------
@contextlib.contextmanager
def _server(root: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """Serves ``root``; metadata honestly, chunks as ``state["mode"]`` says."""
    state: dict[str, Any] = {"mode": "ok", "count": 0}

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - silence
            pass

        def do_GET(self) -> None:
            self._answer(head=False)

        def do_HEAD(self) -> None:
            self._answer(head=True)

        def _empty(self, status: int, **headers: str) -> None:
            self.send_response(status)
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def _answer(self, *, head: bool) -> None:
            path = root / self.path.split("?")[0].lstrip("/")
            mode = "ok" if path.name == "zarr.json" else state["mode"]
            if mode == "redirect-loop":
                return self._empty(302, Location=self.path)
            if mode == "500-then-200":
                state["count"] += 1
                if state["count"] % 2:
                    return self._empty(500)
            if not path.is_file():
                return self._empty(404)
            body, status = path.read_bytes(), 200
            rng = self.headers.get("Range")
            if rng:
                first, _, last = rng.split("=", 1)[1].partition("-")
                start, stop = (
                    (len(body) - int(last), len(body)) if not first else (int(first), int(last or len(body) - 1) + 1)
                )
                body, status = body[start:stop], 206
            self.send_response(status)
            if mode == "gzip":
                body = gzip.compress(body)
                self.send_header("Content-Encoding", "gzip")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if head:
                return None
            if mode == "close-mid-body":
                self.wfile.write(body[: len(body) // 2])
                self.wfile.flush()
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
                return None
            self.wfile.write(body)
            return None

    with serving(Handler) as url:
        yield url, state


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, dict[str, Any], np.ndarray]]:
    root = tmp_path_factory.mktemp("hostile-http")
    data = np.arange(2 * 32 * 32, dtype=np.uint16).reshape(2, 32, 32)
    for name, kwargs in (("v3.zarr", {}), ("sharded.zarr", {"shards": (1, 32, 32)})):
        group = zarr.open_group(str(root / name), mode="w", zarr_format=3)
        group.create_array("img", shape=data.shape, dtype=data.dtype, chunks=(1, 16, 16), compressors=None, **kwargs)[
            ...
        ] = data
    with _server(root) as (url, state):
        yield url, state, data


@pytest.mark.timeout(120)
@pytest.mark.parametrize("mode", ["close-mid-body", "500-then-200", "redirect-loop", "gzip"])
@pytest.mark.parametrize("store", ["v3.zarr", "sharded.zarr"])
def test_http_server_closing_failing_once_looping_or_gzipping(served: Any, store: str, mode: str) -> None:
    """A body cut mid-way and a redirect loop: SourceReadError naming the URL; a 500 once: retried; gzip-encoded
    ranges: decoded (all as on main)."""
    from lazystack.io.cache import chunk_cache_size

    url, state, data = served
    state["mode"] = "ok"
    (stack,) = lazystack.load_zarrs([f"{url}/{store}/img"], "SYX")
    state["mode"], state["count"] = mode, 0
    try:
        with chunk_cache_size(0):
            if mode in ("500-then-200", "gzip"):
                got = np.stack([stack.extract_patch(i, None, (0, 0), (32, 32))[0] for i in range(2)])
                np.testing.assert_array_equal(got, data)
            else:
                with pytest.raises(SourceReadError, match=f"{url}/{store}"):
                    stack.extract_patch(0, None, (0, 0), (32, 32))
    finally:
        state["mode"] = "ok"


def test_an_in_memory_stack_is_no_source_whatever_the_current_folder_holds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An array's stack is named ``"array"``: a folder of that name in the current directory is not its source."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "array").mkdir()
    (stack,) = lazystack.load_arrays([np.arange(64, dtype=np.uint16).reshape(1, 8, 8)], "SYX")
    lazystack.write_ome_zarr([stack], "array/out.zarr")
    written = lazystack.load_zarrs(["array/out.zarr"], "YX")[0]  # level 0 first
    np.testing.assert_array_equal(np.asarray(written.compute()).ravel(), np.arange(64, dtype=np.uint16))
