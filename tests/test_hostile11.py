"""Hostile inputs: metadata that lies, memory bombs, odd files, lying HTTP servers (session 11 audit).

Every case that could crash, hang or exhaust the process runs in a child
interpreter with a time bound and an address-space cap
(``resource.setrlimit(RLIMIT_AS)``), so a segfault, an abort, a hang or a
memory blow-up is a failed test instead of a dead pytest. The child prints
one ``RESULT`` line: what the call returned or raised. Sizes are huge only
in declared metadata; every file written here is a few kilobytes.

Cases that fail in modules other than the TIFF source and ``lazystack.io``
are strict xfails whose reason names the fix.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import re
import struct
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile
from conftest import run_python, shared_files

import lazystack
from lazystack import SourceFormatError, SourceReadError

pytestmark = pytest.mark.timeout(180)

ROOT = Path(lazystack.__file__).resolve().parents[1]
#: Address space of a child: enough for numpy, dask, zarr, tensorstore and their thread pools.
CHILD_MEMORY = 3 << 30

_PRELUDE = f"""
import faulthandler, json, os, resource, sys
resource.setrlimit(resource.RLIMIT_AS, ({CHILD_MEMORY}, {CHILD_MEMORY}))
import lazystack

def describe(fn):
    try:
        value = fn()
    except BaseException as exc:
        return {{"raised": type(exc).__name__, "lazystack": isinstance(exc, lazystack.LazyStackError),
                 "message": str(exc)}}
    return {{"returned": repr(value)[:2000]}}

def report(fn):
    print("RESULT " + json.dumps(describe(fn)), flush=True)

def report_unblocking(fn, warm_up=None, wait=30.0):
    # fn under a watchdog (faulthandler's own C thread: it fires even while a native call blocks holding the GIL,
    # as opening a FIFO does), after warm_up (the same call on an ordinary file: imports done before the clock runs)
    # wait: a bound on a hang, not a speed check (a first call importing tifffile or dask on a loaded CI machine
    # took seconds; the watchdog was 4 s)
    if warm_up is not None:
        describe(warm_up)
    faulthandler.dump_traceback_later(wait, exit=True)
    report(fn)
    faulthandler.cancel_dump_traceback_later()

def peak_rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM"):
            return int(line.split()[1]) * 1024
"""


def run_child(code: str, timeout: float = 150.0) -> list[dict[str, Any]]:
    """Run ``code`` after the prelude in a capped child; its RESULT lines, or fail naming a crash or a hang."""
    proc = run_python(_PRELUDE + textwrap.dedent(code), timeout=timeout)
    if "Timeout (0:" in proc.stderr:  # the watchdog of report_unblocking fired
        pytest.fail(f"HANG: a call blocked past its bound; stderr: {proc.stderr[-1500:]}")
    if proc.returncode != 0:
        how = f"killed by signal {-proc.returncode}" if proc.returncode < 0 else f"exit status {proc.returncode}"
        pytest.fail(f"CRASH: the child ended with {how}; stderr: {proc.stderr[-1500:]}")
    return [json.loads(line[len("RESULT ") :]) for line in proc.stdout.splitlines() if line.startswith("RESULT ")]


def assert_clear(result: dict[str, Any], error: str, *names: str) -> None:
    """A lazystack error of type ``error`` (or a subclass name) whose message names ``names``."""
    assert result.get("raised") == error, result
    assert result.get("lazystack"), result
    for name in names:
        assert name in result["message"], (name, result["message"])


# -- TIFF: metadata that lies ----------------------------------------------------------------------------------
def _tiff_with_tiles(path: Path, tile: int) -> np.ndarray:
    """A zlib TIFF of one 64 x 64 tile whose tags then declare ``tile`` x ``tile`` tiles (one tile either way)."""
    data = np.arange(64 * 64, dtype=np.uint16).reshape(64, 64)
    tifffile.imwrite(path, data, tile=(64, 64), compression="zlib", metadata=None)
    with tifffile.TiffFile(path, mode="r+") as tif:
        tif.pages.first.tags["TileWidth"].overwrite(tile)
        tif.pages.first.tags["TileLength"].overwrite(tile)
    return data


def test_tile_far_larger_than_the_image_is_refused_at_open(tmp_path: Path) -> None:
    """A 7 KB file declaring one 65536 x 65536 tile over a 64 x 64 image: every read would allocate 8 GiB."""
    path = tmp_path / "tile-bomb.tif"
    _tiff_with_tiles(path, 65536)
    (result,) = run_child(f"report(lambda: lazystack.load_tiffs([{str(path)!r}], 'YX'))")
    assert_clear(result, "SourceFormatError", str(path), "TileWidth", "65536")


def test_tile_somewhat_larger_than_the_image_still_reads(tmp_path: Path) -> None:
    """Tiles may overhang the image (a writer's fixed 256 x 256 tile on a 40 x 50 image): read as tifffile does."""
    data = np.arange(40 * 50, dtype=np.uint16).reshape(40, 50)
    path = tmp_path / "small-image-big-tile.tif"
    tifffile.imwrite(path, data, tile=(256, 256), compression="zlib", metadata=None)
    (stack,) = lazystack.load_tiffs([path], "YX")
    np.testing.assert_array_equal(stack.extract_patch(0, None, (0, 0), (40, 50))[0], tifffile.imread(path))


@pytest.mark.parametrize("compression", [None, "zlib"])
def test_rows_per_strip_zero_is_a_clear_error(tmp_path: Path, compression: str | None) -> None:
    """RowsPerStrip 0: tifffile's own TiffFileError (or ZeroDivisionError) must not reach the caller."""
    path = tmp_path / "rows-per-strip-0.tif"
    tifffile.imwrite(path, np.ones((64, 64), np.uint16), compression=compression, rowsperstrip=16, metadata=None)
    with tifffile.TiffFile(path, mode="r+") as tif:
        tif.pages.first.tags["RowsPerStrip"].overwrite(0)
    with pytest.raises(SourceFormatError, match=re.escape(str(path))):
        lazystack.load_tiffs([path], "YX")


def _ome_tiff(path: Path, edit: tuple[str, str]) -> None:
    tifffile.imwrite(path, np.zeros((2, 3, 32, 32), np.uint16), ome=True, metadata={"axes": "TZYX"})
    with tifffile.TiffFile(path) as tif:
        xml = tif.pages.first.description
    assert edit[0] in xml
    with tifffile.TiffFile(path, mode="r+") as tif:
        tif.pages.first.tags["ImageDescription"].overwrite(xml.replace(*edit))


OME_LIES = {
    "SizeT-2e9": ('SizeT="2"', 'SizeT="2000000000"'),
    "SizeX-SizeY-2e9": ('SizeX="32" SizeY="32"', 'SizeX="2000000000" SizeY="2000000000"'),
    "NumPlanes-2e9": ('PlaneCount="6"', 'PlaneCount="2000000000"'),
}


@pytest.mark.parametrize("lie", OME_LIES)
def test_ome_xml_declaring_billions_of_planes(tmp_path: Path, lie: str) -> None:
    """tifffile makes a list entry per declared plane (a 48 GB list for a 14 KB file): refused before that."""
    path = tmp_path / f"{lie}.ome.tif"
    _ome_tiff(path, OME_LIES[lie])
    code = f"""
    P = {str(path)!r}
    report(lambda: lazystack.load_tiffs([P], "TZYX"))
    report(lambda: lazystack.load(P))
    report(lambda: lazystack.propose_axes(P))
    """
    for result in run_child(code):  # load_tiffs, load, propose_axes
        assert_clear(result, "SourceFormatError", str(path), "OME-XML", "planes")


def test_ome_xml_within_the_bound_still_reads(tmp_path: Path) -> None:
    """An ordinary OME-TIFF passes the plane bound and reads as written."""
    data = np.arange(2 * 3 * 8 * 8, dtype=np.uint16).reshape(2, 3, 8, 8)
    path = tmp_path / "fine.ome.tif"
    tifffile.imwrite(path, data, ome=True, metadata={"axes": "TZYX"})
    (stack,) = lazystack.load_tiffs([path], "TZYX")
    np.testing.assert_array_equal(stack.extract_patch(1, None, (0, 0, 0), (3, 8, 8))[0], data[1])


def _sparse_tiff(path: Path, size: int, tile: int) -> None:
    """A classic TIFF of ``size`` x ``size`` uint16 pixels in zlib tiles, none of them stored (offsets 0)."""
    n = (-(-size // tile)) ** 2
    tags = [  # (code, type, count, value or values): LONG = 4, SHORT = 3
        (256, 4, 1, [size]),
        (257, 4, 1, [size]),
        (258, 3, 1, [16]),
        (259, 3, 1, [8]),
        (262, 3, 1, [1]),
        (277, 3, 1, [1]),
        (322, 4, 1, [tile]),
        (323, 4, 1, [tile]),
        (324, 4, n, [0] * n),
        (325, 4, n, [0] * n),
    ]
    ifd = 8
    extra = ifd + 2 + 12 * len(tags) + 4
    entries, blobs = b"", b""
    for code, typ, count, values in tags:
        raw = struct.pack(f"<{count}{'I' if typ == 4 else 'H'}", *values)
        if len(raw) <= 4:
            entries += struct.pack("<HHI", code, typ, count) + raw.ljust(4, b"\0")
        else:
            entries += struct.pack("<HHII", code, typ, count, extra + len(blobs))
            blobs += raw
    path.write_bytes(b"II*\0" + struct.pack("<I", ifd) + struct.pack("<H", len(tags)) + entries + b"\0" * 4 + blobs)


def test_sparse_tiff_declaring_128_gib_opens_and_reads_in_small_memory(tmp_path: Path) -> None:
    """2**36 declared pixels, no tile stored: open, repr, xarray repr and patches allocate per read, not per size."""
    path = tmp_path / "sparse.tif"
    _sparse_tiff(path, 2**18, 4096)
    assert path.stat().st_size < 64 << 10
    code = f"""
    (stack,) = lazystack.load_tiffs([{str(path)!r}], "YX")
    report(lambda: stack.data_shape)
    report(lambda: len(repr(stack)) + len(repr(stack.xarray)) + stack.data.npartitions)
    report(lambda: float(abs(stack.extract_patch(0, None, (200000, 100000), (64, 64))).sum()))
    report(lambda: lazystack.propose_axes({str(path)!r}))
    report(peak_rss)
    """
    shape, reprs, patch, axes, rss = run_child(code)
    assert shape == {"returned": repr((1, 1, 2**18, 2**18))}
    assert "raised" not in reprs, reprs
    assert patch == {"returned": "0.0"}  # a missing tile is tifffile's fill value
    assert axes == {"returned": "'YX'"}
    assert int(rss["returned"]) < 1 << 30


# -- file system ---------------------------------------------------------------------------------------------------
def _special(tmp_path: Path, kind: str, name: str) -> Path:
    path = tmp_path / name
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "dev-zero":
        path.symlink_to("/dev/zero")
    elif kind == "proc-file":  # a regular file that stat calls empty and that cannot seek to its end
        path.symlink_to("/proc/self/status")
    elif kind == "symlink-loop":
        path.symlink_to(path)
    return path


TIFF_ENTRIES = (
    "lazystack.load_tiffs([P], 'YX')",
    "lazystack.load_iter_tiff([P], 'YX')",
    "lazystack.load(P)",
    "lazystack.propose_axes(P)",
)
EXPECTED = {
    "fifo": ("SourceFormatError", "FIFO"),
    "dev-zero": ("SourceFormatError", "character device"),
    "proc-file": ("SourceFormatError", "empty"),
    "symlink-loop": ("SourceNotFoundError", ""),
}


@pytest.mark.parametrize("kind", list(EXPECTED))
def test_tiff_name_on_a_fifo_device_or_loop(tmp_path: Path, kind: str) -> None:
    """``x.tif`` that is a FIFO (opening it waits for a writer for ever), /dev/zero, a /proc file, a link loop.

    Each of ``load_tiffs``, ``load_iter_tiff``, ``load`` and ``propose_axes``.
    """
    path = _special(tmp_path, kind, "x.tif")
    code = f"P = {str(path)!r}\n" + "".join(f"report_unblocking(lambda: {call})\n" for call in TIFF_ENTRIES)
    results = run_child(code)
    assert len(results) == len(TIFF_ENTRIES)
    error, word = EXPECTED[kind]
    for result in results:
        assert_clear(result, error, str(path), word)


@pytest.mark.parametrize("compression", [None, "zlib"])  # memory-mapped, decoded segments
def test_tiff_replaced_by_a_fifo_after_open(tmp_path: Path, compression: str | None) -> None:
    """A FIFO renamed over the file between ``load`` and the first patch: a read error, not a blocked reopen."""
    path = tmp_path / "x.tif"
    tile = (16, 16) if compression else None
    tifffile.imwrite(path, np.ones((64, 64), np.uint16), compression=compression, tile=tile, metadata=None)
    code = f"""
    P = {str(path)!r}
    (stack,) = lazystack.load_tiffs([P], "YX")
    os.mkfifo(P + ".fifo")
    os.rename(P + ".fifo", P)
    report_unblocking(lambda: stack.extract_patch(0, None, (0, 0), (8, 8)))
    """
    (result,) = run_child(code)
    assert_clear(result, "SourceReadError", str(path), "FIFO", "changed since the stack was opened")


def test_info_on_a_folder_holding_a_fifo(tmp_path: Path) -> None:
    """``lazystack info folder/`` names the FIFO among its failures and still describes the good file."""
    tifffile.imwrite(tmp_path / "good.tif", np.ones((8, 8), np.uint8))
    fifo = _special(tmp_path, "fifo", "pipe.tif")
    (tmp_path / "loop").symlink_to(tmp_path)  # a folder that contains itself
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "lazystack.frontends.cli", "info", str(tmp_path)],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
            check=False,
        )
    except subprocess.TimeoutExpired:
        with open(fifo, "wb"):
            pass
        pytest.fail("HANG: lazystack info blocked on a FIFO named pipe.tif")
    assert proc.returncode == 1, proc
    assert "good.tif" in proc.stdout
    assert str(fifo) in proc.stderr
    assert "FIFO" in proc.stderr


FOREIGN_FIFOS = {
    "czi": (
        "x.czi",
        "lazystack.load_czis([P], 'SCYX')",
        "sources/czi.py: _check_file (and propose_axes) open the file before checking what it is: call "
        "lazystack.io.handles.check_regular_file(path, 'CZI file', 'a .czi file') first",
    ),
    "load-czi": (
        "x.czi",
        "lazystack.load(P)",
        "sources/czi.py propose_axes hands a FIFO to pylibCZIrw, which blocks: check_regular_file first",
    ),
    "custom": (
        "x.npy",
        "lazystack.load_custom_file([P], 'YX', read_func=__import__('numpy').load)",
        "sources/custom.py calls read_func on a FIFO, which blocks: check_regular_file(path, ...) before read_func",
    ),
    "load-npy": (
        "x.npy",
        "lazystack.load(P, 'YX')",
        "loading/auto.py _load_npy / sources/array.py np.load a FIFO, which blocks: check_regular_file first",
    ),
    "bioio": (
        "x.ome.tif",
        "lazystack.load_bioio([P], 'YX')",
        "sources/bioio.py hands a FIFO to bioio, which blocks: check_regular_file(path, ...) before BioImage",
    ),
}


@pytest.mark.parametrize("case", list(FOREIGN_FIFOS))
def test_other_formats_named_on_a_fifo(tmp_path: Path, case: str) -> None:
    name, call, _ = FOREIGN_FIFOS[case]
    path = _special(tmp_path, "fifo", name)
    (tmp_path / "plain").mkdir()
    plain = tmp_path / "plain" / name
    plain.write_bytes(b"")  # the same call on an empty regular file first: imports are done before the clock runs
    code = f"report_unblocking(lambda P={str(path)!r}: {call}, warm_up=lambda P={str(plain)!r}: {call})"
    (result,) = run_child(code)
    assert_clear(result, "SourceFormatError", str(path), "FIFO")


# -- CZI truncated at every segment boundary ----------------------------------------------------------------------
REAL_CZIS = shared_files("czi", "*.czi")


@pytest.mark.skipif(not REAL_CZIS, reason="the real CZI files of ../shared/data/czi are absent")
def test_real_czis_truncated_at_every_segment_boundary(tmp_path: Path) -> None:
    """Each real CZI cut at the start, the end of the header and the middle of the header of every segment.

    Every cut is a clear error naming the copy, or (a cut that loses no
    sub-block: the trailing attachments) exactly the original's pixels.
    """
    code = f"""
    import numpy as np, warnings
    warnings.simplefilter("ignore")
    def planes(path):
        out = []
        for s in lazystack.load_czis([path], "SCYX"):
            out += [s.extract_patch(i, None, (0, 0), s.data_shape[2:]) for i in range(s.data_shape[0])]
        return out
    for src in {[str(p) for p in REAL_CZIS]!r}:
        raw = open(src, "rb").read()
        ref = planes(src)
        cuts = {{len(raw) - 1}}
        for at in range(0, len(raw), 32):  # segments start on 32-byte boundaries
            if raw[at : at + 6] == b"ZISRAW":
                cuts |= {{at, at + 16, at + 32}}
        for cut in sorted(c for c in cuts if 0 < c < len(raw)):
            path = {str(tmp_path)!r} + f"/cut-{{cut}}-" + os.path.basename(src)
            open(path, "wb").write(raw[:cut])
            result = describe(lambda: planes(path))
            if "returned" in result:
                got = planes(path)
                same = len(got) == len(ref) and all(np.array_equal(a, b) for a, b in zip(got, ref))
                result = {{"returned": "same" if same else "DIFFERENT"}}
            result["path"] = path
            print("RESULT " + json.dumps(result), flush=True)
            os.remove(path)
    """
    results = run_child(code, timeout=150)
    assert len(results) > 10 * len(REAL_CZIS)
    bad = [
        r
        for r in results
        if r.get("returned") != "same"
        and not (r.get("lazystack") and r["path"] in r["message"] and r["raised"] == "SourceFormatError")
    ]
    assert not bad, bad[:5]


# -- Zarr / OME-Zarr ------------------------------------------------------------------------------------------------
def _ome_zarr(path: Path) -> Path:
    import zarr
    from ome_zarr.format import FormatV05
    from ome_zarr.writer import write_image

    data = np.arange(2 * 32 * 32, dtype=np.uint16).reshape(2, 32, 32)
    group = zarr.open_group(str(path), mode="w", zarr_format=3)
    write_image(data, group, axes="cyx", fmt=FormatV05(), scale_factors=(2,), storage_options={"chunks": (1, 16, 16)})
    return path


def _edit(path: Path, fn: Any) -> None:
    meta = json.loads(path.read_text())
    fn(meta)
    path.write_text(json.dumps(meta))


def test_ome_zarr_multiscales_listing_one_level_a_thousand_times(tmp_path: Path) -> None:
    store = _ome_zarr(tmp_path / "many.ome.zarr")

    def repeat(meta: dict[str, Any]) -> None:
        ms = meta["attributes"]["ome"]["multiscales"][0]
        ms["datasets"] = [dict(ms["datasets"][0]) for _ in range(1000)]

    _edit(store / "zarr.json", repeat)
    (result,) = run_child(f"report(lambda: len(lazystack.load({str(store)!r})))")
    assert_clear(result, "SourceFormatError", str(store))


@pytest.mark.parametrize(
    ("kind", "engine"),
    [
        ("v3", "tensorstore"),
        ("v2", "tensorstore"),
        ("ome-zarr", "auto"),
        ("v3", "direct"),
        ("v2", "zarr"),
    ],
)
def test_zarr_chunk_declared_far_larger_than_its_file(tmp_path: Path, kind: str, engine: str) -> None:
    """The metadata says a chunk is 512 GiB; the chunk file holds 2 KiB: a read error, never an abort."""
    import zarr

    if kind == "ome-zarr":
        source = _ome_zarr(tmp_path / "o.ome.zarr")
        meta = source / "s0" / "zarr.json"
    else:
        group = zarr.open_group(str(tmp_path / "c.zarr"), mode="w", zarr_format=int(kind[1]))  # type: ignore[arg-type]
        group.create_array("img", shape=(2, 32, 32), dtype="uint16", chunks=(1, 32, 32))[...] = 7
        source = tmp_path / "c.zarr" / "img"
        meta = source / (".zarray" if kind == "v2" else "zarr.json")

    def huge(m: dict[str, Any]) -> None:
        if "chunk_grid" in m:
            m["chunk_grid"]["configuration"]["chunk_shape"] = [1, 2**19, 2**19]
        else:
            m["chunks"] = [1, 2**19, 2**19]

    _edit(meta, huge)
    code = f"""
    lazystack.set_zarr_engine({engine!r})
    stack = lazystack.load({str(source)!r}, None if {kind!r} == "ome-zarr" else "SYX")[0]
    report(lambda: stack.extract_patch(0, None, (0, 0), (8, 8)).sum())
    """
    (result,) = run_child(code)
    assert result.get("lazystack"), result
    assert result["raised"] in ("SourceReadError", "SourceFormatError"), result
    assert str(source) in result["message"]


@pytest.mark.parametrize(
    "engine",
    [
        "auto",
        "direct",
        "zarr",
        "tensorstore",
    ],
)
def test_shard_index_pointing_past_its_shard(tmp_path: Path, engine: str) -> None:
    """Index entries (offset, nbytes) of (10**12, 512) and (0, 2**40) in a 2 KB shard: a read error naming the shard."""
    import zarr
    from zarr.codecs import BytesCodec, ShardingCodec

    sources = []
    for name, entry in (("past-end", (10**12, 512)), ("huge-nbytes", (0, 2**40))):
        group = zarr.open_group(str(tmp_path / f"{name}.zarr"), mode="w", zarr_format=3)
        codec = ShardingCodec(chunk_shape=(1, 16, 16), codecs=[BytesCodec()], index_codecs=[BytesCodec()])
        array = group.create_array(
            "img", shape=(2, 32, 32), dtype="uint16", chunks=(1, 32, 32), serializer=codec, compressors=None
        )
        array[...] = 7
        shard = tmp_path / f"{name}.zarr" / "img" / "c" / "0" / "0" / "0"
        raw = bytearray(shard.read_bytes())
        struct.pack_into("<QQ", raw, len(raw) - 4 * 16, *entry)  # the first of the 4 entries of the index at the end
        shard.write_bytes(bytes(raw))
        sources.append(str(tmp_path / f"{name}.zarr" / "img"))
    code = f"""
    lazystack.set_zarr_engine({engine!r})
    for source in {sources!r}:
        (stack,) = lazystack.load_zarrs([source], "SYX")
        report(lambda: stack.extract_patch(0, None, (0, 0), (16, 16)).sum())
    """
    results = run_child(code)
    assert len(results) == 2
    for source, result in zip(sources, results, strict=True):
        assert_clear(result, "SourceReadError", source.removesuffix("/img"))


def test_ome_zarr_multiscales_listing_more_levels_than_a_pyramid_can_have(tmp_path: Path) -> None:
    """65 distinct level paths (none of them stored): refused by count before any level opens."""
    store = _ome_zarr(tmp_path / "deep.ome.zarr")

    def deepen(meta: dict[str, Any]) -> None:
        ms = meta["attributes"]["ome"]["multiscales"][0]
        ms["datasets"] = [dict(ms["datasets"][0], path=f"s{i}") for i in range(65)]

    _edit(store / "zarr.json", deepen)
    with pytest.raises(SourceFormatError, match="65 resolution levels") as info:
        lazystack.load(store)
    assert str(store) in str(info.value)


def test_tensorstore_engine_asked_for_refuses_a_huge_chunk(tmp_path: Path) -> None:
    """engine="tensorstore" named for one array: SourceFormatError naming the array and the chunk shape, before
    tensorstore sees it; the same array with honest chunks reads through tensorstore as zarr reads it."""
    import zarr

    group = zarr.open_group(str(tmp_path / "c.zarr"), mode="w", zarr_format=3)
    data = np.arange(2 * 32 * 32, dtype=np.uint16).reshape(2, 32, 32)
    group.create_array("ok", shape=data.shape, dtype="uint16", chunks=(1, 32, 32))[...] = data
    group.create_array("huge", shape=data.shape, dtype="uint16", chunks=(1, 32, 32))[...] = data
    _edit(
        tmp_path / "c.zarr" / "huge" / "zarr.json",
        lambda m: m["chunk_grid"]["configuration"].update(chunk_shape=[1, 2**19, 2**19]),
    )
    code = f"""
    import zarr
    from lazystack.sources.zarr.engines import ZarrArrayReader
    for name in ("huge", "ok"):
        array = zarr.open_array({str(tmp_path / "c.zarr")!r} + "/" + name, mode="r")
        reader = ZarrArrayReader(array, engine="tensorstore")
        report(lambda: (reader.engine_name, reader[0:2, 0:32, 0:32].tolist()))
    """
    huge, ok = run_child(code)
    assert_clear(huge, "_ChunkTooLargeError", str(tmp_path / "c.zarr" / "huge"), "(1, 524288, 524288)")
    assert ok.get("returned") == repr(("tensorstore", data.tolist()))[:2000], ok


@pytest.mark.parametrize("index_location", ["start", "end"])
@pytest.mark.parametrize("crc", [False, True])
def test_shard_index_checked_at_either_end(tmp_path: Path, index_location: str, crc: bool) -> None:
    """Index at the shard's start or end (with crc32c or not): partly written shards read as zarr reads them with
    every engine; without a checksum to stop it, an entry reaching 8 bytes into the index is refused naming the shard.
    """
    import zarr
    from zarr.codecs import BytesCodec, Crc32cCodec, ShardingCodec

    index_codecs: list[Any] = [BytesCodec(), Crc32cCodec()] if crc else [BytesCodec()]
    for engine in ("direct", "zarr", "auto"):
        store = tmp_path / f"{engine}.zarr"
        group = zarr.open_group(str(store), mode="w", zarr_format=3)
        codec = ShardingCodec(
            chunk_shape=(1, 16, 16),
            codecs=[BytesCodec()],
            index_codecs=index_codecs,
            index_location=index_location,  # type: ignore[arg-type]
        )
        array = group.create_array(
            "img", shape=(2, 40, 40), dtype="uint16", chunks=(2, 32, 32), serializer=codec, compressors=None
        )
        array[0, :20, :] = np.arange(20 * 40, dtype=np.uint16).reshape(20, 40)
        expected = np.asarray(zarr.open_array(str(store / "img"), mode="r")[0]).astype(np.float32)
        lazystack.set_zarr_engine(engine)
        try:
            (stack,) = lazystack.load_zarrs([store / "img"], "SYX")
            np.testing.assert_array_equal(stack.extract_patch(0, None, (0, 0), (40, 40))[0], expected)
            if crc:
                continue
            shard = store / "img" / "c" / "0" / "0" / "0"
            raw = bytearray(shard.read_bytes())
            index_size = 16 * 2 * 2 * 2
            at = 0 if index_location == "start" else len(raw) - index_size
            entry = (index_size - 8, 512) if index_location == "start" else (at - 504, 512)
            struct.pack_into("<QQ", raw, at, *entry)  # inner chunk (0, 0, 0)
            shard.write_bytes(bytes(raw))
            (stack,) = lazystack.load_zarrs([store / "img"], "SYX")
            with pytest.raises(SourceReadError, match="offset") as info:
                stack.extract_patch(0, None, (0, 0), (8, 8))
            assert str(shard) in str(info.value)
        finally:
            lazystack.set_zarr_engine(None)


# -- a lying HTTP server ----------------------------------------------------------------------------------------------
@contextlib.contextmanager
def lying_server(root: Path) -> Iterator[tuple[str, dict[str, str]]]:
    """Serves ``root`` (metadata honestly); chunk answers lie as ``state["mode"]`` says."""
    state = {"mode": "ok"}

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - silence
            pass

        def do_HEAD(self) -> None:
            self._answer(head=True)

        def do_GET(self) -> None:
            self._answer(head=False)

        def _answer(self, *, head: bool) -> None:
            path = root / self.path.split("?")[0].lstrip("/")
            if not path.is_file():
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            body = path.read_bytes()
            mode = "ok" if path.name in ("zarr.json", ".zarray", ".zgroup", ".zattrs") else state["mode"]
            rng = self.headers.get("Range")
            status = 200
            if rng and mode != "ignore-range":  # bytes=a-b, bytes=a- or bytes=-n
                first, _, last = rng.split("=", 1)[1].partition("-")
                if not first:
                    start, stop = len(body) - int(last), len(body)
                else:
                    start, stop = int(first), len(body) if not last else int(last) + 1
                body, status = body[start:stop], 206
            length = {"short-length": len(body) - 10, "long-length": len(body) + 100}.get(mode, len(body))
            self.send_response(status)
            self.send_header("Content-Length", str(length))
            self.end_headers()
            if head:
                return
            self.wfile.write(body[:length])
            if mode == "long-length":
                self.close_connection = True

    with serving(Handler) as url:
        yield url, state


@contextlib.contextmanager
def serving(handler: type[http.server.BaseHTTPRequestHandler]) -> Iterator[str]:
    """``handler`` served on 127.0.0.1 in a thread while the context lasts; its base URL."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def served_stores(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, dict[str, str], np.ndarray]]:
    import zarr

    root = tmp_path_factory.mktemp("lying-http")
    data = np.arange(2 * 32 * 32, dtype=np.uint16).reshape(2, 32, 32)
    for name, kwargs in (
        ("v2.zarr", {"zarr_format": 2, "chunks": (1, 16, 16)}),
        ("v3.zarr", {"zarr_format": 3, "chunks": (1, 16, 16)}),
        ("sharded.zarr", {"zarr_format": 3, "chunks": (1, 16, 16), "shards": (1, 32, 32)}),
    ):
        fmt = kwargs.pop("zarr_format")
        group = zarr.open_group(str(root / name), mode="w", zarr_format=fmt)  # type: ignore[arg-type]
        group.create_array("img", shape=data.shape, dtype=data.dtype, compressors=None, **kwargs)[...] = data
    with lying_server(root) as (url, state):
        yield url, state, data


@pytest.mark.timeout(120)
@pytest.mark.parametrize("mode", ["short-length", "long-length", "ignore-range"])
@pytest.mark.parametrize("store", ["v2.zarr", "v3.zarr", "sharded.zarr"])
def test_http_server_lying_about_lengths_or_ranges(served_stores: Any, store: str, mode: str) -> None:
    """A Content-Length 10 bytes short or 100 long, a 200 with the whole file for a range: an error or the data."""
    from lazystack.io.cache import chunk_cache_size

    url, state, data = served_stores
    state["mode"] = "ok"
    (stack,) = lazystack.load_zarrs([f"{url}/{store}/img"], "SYX")
    # a whole file answering a range still holds the right bytes where no range is asked (an unsharded store)
    readable = mode == "ignore-range" and store != "sharded.zarr"
    state["mode"] = mode
    try:
        with chunk_cache_size(0):
            if readable:
                got = np.stack([stack.extract_patch(i, None, (0, 0), (32, 32))[0] for i in range(2)])
                np.testing.assert_array_equal(got, data)
            else:
                with pytest.raises(SourceReadError, match=re.escape(f"{url}/{store}")):
                    stack.extract_patch(0, None, (0, 0), (32, 32))
    finally:
        state["mode"] = "ok"
