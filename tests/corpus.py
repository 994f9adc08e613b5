"""Bad-input corpus: generated broken files per format, and a runner that classifies each case.

Every case is a file (or store) that a loader must reject clearly, or read
correctly where the input is valid but extreme (a huge declared shape whose
chunks are missing reads as the fill value). Each case is opened and read
(patches at the corners, the middle and over the edges; for error cases a
patch covering every sample's whole image) in a **subprocess**, one per
format, so that a crash of a native reader (pylibCZIrw, imagecodecs) is
caught and reported as a crash instead of killing the test session. When a
format's subprocess dies, the remaining cases are re-run one subprocess each.

Outcomes
--------
``clear``     a :class:`~lazystack.LazyStackError` whose message names the file
``ok``        no error, on a case where that is allowed, and the values are right
``unclear``   another exception, or a message that does not name the file
``tolerated`` no error on a damaged input whose pixel data is intact: the values equal
              the format library's own read of the same file
``silent``    no error on a corrupt input (wrong data passed silently)
``wrong``     no error on an "ok-allowed" case but the values are wrong
``crash``     the interpreter died (signal, abort)
``hang``      the case did not finish within the time bound

A case also records whether any file of the source changed (hash, size,
mtime). Run ``python tests/corpus.py`` to generate the corpus in a
temporary folder, run it and print the results table.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
#: Per-format subprocess bound (seconds); a single case re-run alone gets :data:`CASE_TIMEOUT`.
FORMAT_TIMEOUT = 90.0
CASE_TIMEOUT = 30.0
OUTCOMES = ("clear", "ok", "tolerated", "unclear", "silent", "wrong", "crash", "hang")


@dataclass
class BadCase:
    """One bad input.

    Attributes
    ----------
    fmt : str
        Format group (one subprocess per group).
    name : str
        Case name, unique within the group.
    source : str
        What the loader is given (path relative to the corpus root).
    loader : str
        ``tiff``, ``iter_tiff``, ``czi``, ``zarr``, ``custom_eager``, ``custom_mmap``, ``bioio``.
    axes : str
        Axes given to the loader.
    expect : str
        ``"error"`` (must fail clearly) or ``"error-or-ok"`` (valid but extreme input).
    ok_npy : str or None
        For ``error-or-ok``: ``.npy`` (relative) of the expected data in the stack's original axes,
        or ``"zeros"`` when every patch must be zero.
    names : list of str
        Strings of which the error message must contain one (the file or store name).
    """

    fmt: str
    name: str
    source: str
    loader: str
    axes: str
    expect: str = "error"
    ok_npy: str | None = None
    names: list[str] = field(default_factory=list)


# -- generation helpers ---------------------------------------------------------------------------
def _data(shape: Sequence[int], dtype: str = "uint16", seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(1, 60000, tuple(shape)).astype(dtype)


def _truncate(src: Path, dst: Path, size: int) -> None:
    dst.write_bytes(src.read_bytes()[:size])


def _scramble(path: Path, start: int, length: int, seed: int = 0) -> None:
    raw = bytearray(path.read_bytes())
    rng = np.random.default_rng(seed)
    end = min(start + length, len(raw))
    raw[start:end] = rng.integers(0, 256, end - start, dtype=np.uint8).tobytes()
    path.write_bytes(bytes(raw))


def _patch_bytes(path: Path, offset: int, value: bytes) -> None:
    raw = bytearray(path.read_bytes())
    raw[offset : offset + len(value)] = value
    path.write_bytes(bytes(raw))


def _random_with(magic: bytes, n: int, seed: int) -> bytes:
    return magic + np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()


# -- TIFF -------------------------------------------------------------------------------------------------
def _tiff_tag_offset(path: Path, tag_code: int) -> tuple[int, int]:
    """File offset of the value field of ``tag_code`` in the first IFD (classic TIFF), and its type."""
    import tifffile

    with tifffile.TiffFile(path) as tif:
        tag = tif.pages.first.tags[tag_code]
        return tag.valueoffset, tag.dtype


def gen_tiff(root: Path) -> list[BadCase]:
    """TIFF cases (each run through ``load_tiffs`` and the file-by-file ``load_iter_tiff``)."""
    import tifffile

    d = root / "tiff"
    d.mkdir(parents=True, exist_ok=True)
    plain, tiled = d / "base-plain.tif", d / "base-tiled.tif"
    tifffile.imwrite(plain, _data((3, 64, 64)), metadata=None, photometric="minisblack")
    tifffile.imwrite(
        tiled, _data((2, 64, 64), seed=1), tile=(16, 16), compression="zlib", metadata=None, photometric="minisblack"
    )
    made: dict[str, str] = {}  # case name -> axes

    def add(name: str, axes: str = "ZYX") -> Path:
        made[name] = axes
        return d / f"{name}.tif"

    add("empty").write_bytes(b"")
    add("wrong-magic").write_bytes(b"PK\x03\x04" + plain.read_bytes()[4:])
    add("random-with-magic").write_bytes(_random_with(b"II*\x00", 4096, 1))
    add("random-with-bigtiff-magic").write_bytes(_random_with(b"II+\x00\x08\x00\x00\x00", 4096, 2))
    add("header-only").write_bytes(plain.read_bytes()[:8])
    for base, tag in ((plain, "plain"), (tiled, "tiled")):
        size = base.stat().st_size
        for frac in (0.01, 0.25, 0.5, 0.9):
            _truncate(base, add(f"truncated-{tag}-{int(frac * 100)}pct"), max(9, int(size * frac)))
        _truncate(base, add(f"truncated-{tag}-minus1"), size - 1)
    # corrupt compressed tiles
    with tifffile.TiffFile(tiled) as tif:
        offsets, counts = tif.pages[0].dataoffsets, tif.pages[0].databytecounts
    p = add("corrupt-first-tile")
    shutil.copy(tiled, p)
    _scramble(p, offsets[0], counts[0], seed=3)
    p = add("corrupt-all-tiles")
    shutil.copy(tiled, p)
    for i, (o, c) in enumerate(zip(offsets, counts, strict=True)):
        _scramble(p, o + 2, max(c - 2, 1), seed=10 + i)
    p = add("tile-bytecount-lies")
    shutil.copy(tiled, p)
    with tifffile.TiffFile(p, mode="r+") as tif:
        tif.pages.first.tags["TileByteCounts"].overwrite([1] * len(counts))
    p = add("tile-offset-beyond-eof")
    shutil.copy(tiled, p)
    with tifffile.TiffFile(p, mode="r+") as tif:
        tif.pages.first.tags["TileOffsets"].overwrite([10**9] * len(offsets))
    # metadata that lies about shapes
    one = d / "base-one.tif"
    tifffile.imwrite(one, _data((64, 64), seed=2), metadata=None)
    for name, tagname, value in (
        ("huge-declared-width", "ImageWidth", 2**31 - 1),
        ("huge-declared-length", "ImageLength", 2**31 - 1),
        ("zero-width", "ImageWidth", 0),
        ("strip-offset-beyond-eof", "StripOffsets", 10**9),
        ("strip-bytecount-lies", "StripByteCounts", 7),
        ("unknown-compression", "Compression", 50123),
        ("bad-bitspersample", "BitsPerSample", 13),
    ):
        p = add(name, "YX")
        shutil.copy(one, p)
        with tifffile.TiffFile(p, mode="r+") as tif:
            tif.pages.first.tags[tagname].overwrite(value)
    p = add("ifd-offset-beyond-eof")
    shutil.copy(plain, p)
    _patch_bytes(p, 4, struct.pack("<I", 10**9))
    p = add("ifd-loop")  # first IFD's next-IFD pointer points at itself
    shutil.copy(one, p)
    first = struct.unpack("<I", p.read_bytes()[4:8])[0]
    n_tags = struct.unpack("<H", p.read_bytes()[first : first + 2])[0]
    _patch_bytes(p, first + 2 + 12 * n_tags, struct.pack("<I", first))
    # complex data: a clear error, never the real part as float32 (issue 22)
    tifffile.imwrite(add("complex64"), (_data((2, 16, 16)) * (1 + 1j)).astype(np.complex64), metadata=None)
    # 65,535 pages, one per plane: valid; reading it builds a few dask chunks, not one per page (issue 22)
    pages = (np.arange(65535, dtype=np.uint32)[:, None, None] % 251 + np.zeros((1, 4, 4), np.uint32)).astype(np.uint8)
    tifffile.imwrite(add("pages-65535"), pages, metadata=None, photometric="minisblack")
    np.save(d / "pages-65535.expected.npy", pages)
    (d / "a-directory.tif").mkdir(exist_ok=True)
    made["a-directory"] = "ZYX"
    made["missing-file"] = "ZYX"
    cases: list[BadCase] = []
    for loader in ("tiff", "iter_tiff"):
        for name, axes in made.items():
            src = f"tiff/{name}.tif"
            cases.append(BadCase(loader, name, src, loader, axes, names=[f"{name}.tif"]))
    # a loop of IFDs is valid data (tifffile stops at the loop): the first page reads correctly
    for bc in cases:
        if bc.name == "ifd-loop":
            np.save(d / "ifd-loop.expected.npy", tifffile.imread(one))
            bc.expect, bc.ok_npy = "error-or-ok", "tiff/ifd-loop.expected.npy"
        if bc.name == "pages-65535":
            bc.expect, bc.ok_npy = "error-or-ok", "tiff/pages-65535.expected.npy"
    return cases


# -- CZI ------------------------------------------------------------------------------------------------
def _czi_segments(raw: bytes) -> dict[str, int]:
    out = {}
    for sid in (b"ZISRAWDIRECTORY", b"ZISRAWMETADATA", b"ZISRAWSUBBLOCK", b"ZISRAWATTDIR"):
        i = raw.find(sid)
        if i >= 0:
            out[sid.decode()] = i
    return out


def gen_czi(root: Path) -> list[BadCase]:
    """CZI cases (pylibCZIrw writer, uncompressed and zstd)."""
    from pylibCZIrw import czi as pyczi

    d = root / "czi"
    d.mkdir(parents=True, exist_ok=True)
    plain, packed = d / "base-plain.czi", d / "base-zstd.czi"
    data = _data((2, 2, 48, 40))
    for path, opts in ((plain, None), (packed, "zstd1:ExplicitLevel=1;PreProcess=HiLoByteUnpack")):
        with pyczi.create_czi(str(path), exist_ok=True, compression_options=opts) as w:
            for z in range(2):
                for c in range(2):
                    w.write(data[z, c], plane={"Z": z, "C": c})
    names: list[str] = []

    def add(name: str) -> Path:
        names.append(name)
        return d / f"{name}.czi"

    add("empty").write_bytes(b"")
    add("wrong-magic").write_bytes(b"NOTACZIFILE12345" + plain.read_bytes()[16:])
    add("random-with-magic").write_bytes(_random_with(b"ZISRAWFILE\x00\x00\x00\x00\x00\x00", 8192, 4))
    raw = plain.read_bytes()
    add("header-only").write_bytes(raw[:512])
    for base, tag in ((plain, "plain"), (packed, "zstd")):
        size = base.stat().st_size
        for frac in (0.05, 0.3, 0.6, 0.95):
            _truncate(base, add(f"truncated-{tag}-{int(frac * 100)}pct"), int(size * frac))
    seg = _czi_segments(raw)
    p = add("corrupt-directory")
    shutil.copy(plain, p)
    _scramble(p, seg["ZISRAWDIRECTORY"] + 32, 256, seed=5)
    p = add("corrupt-metadata-xml")
    shutil.copy(plain, p)
    _scramble(p, seg["ZISRAWMETADATA"] + 32 + 256, 200, seed=6)
    p = add("corrupt-segment-ids")
    shutil.copy(plain, p)
    body = bytearray(p.read_bytes())
    for sid in (b"ZISRAWSUBBLOCK", b"ZISRAWDIRECTORY"):
        at = body.find(sid)
        while at >= 0:
            body[at : at + len(sid)] = b"X" * len(sid)
            at = body.find(sid, at + 1)
    p.write_bytes(bytes(body))
    praw = packed.read_bytes()
    pseg = praw.find(b"ZISRAWSUBBLOCK")
    p = add("corrupt-zstd-subblocks")
    body = bytearray(praw)
    at = pseg
    i = 0
    while at >= 0:
        # scramble the compressed payload of every subblock (skip its 32-byte segment header + 256-byte header)
        payload = at + 32 + 256 + 64
        body[payload : payload + 400] = np.random.default_rng(20 + i).integers(0, 256, 400, dtype=np.uint8).tobytes()
        at = praw.find(b"ZISRAWSUBBLOCK", at + 1)
        i += 1
    p.write_bytes(bytes(body))
    # directory entries that lie: find "DV" entries inside the directory segment
    dstart = seg["ZISRAWDIRECTORY"]
    entries: list[int] = []
    at = raw.find(b"DV", dstart + 32 + 128)
    while at >= 0 and len(entries) < 4:
        entries.append(at)
        at = raw.find(b"DV", at + 2)
    for name, field_name, value in (
        ("subblock-size-huge", "size", 2**30),
        ("subblock-position-beyond-eof", "pos", 10**12),
        ("subblock-pixeltype-unknown", "ptype", 77),
        ("subblock-dimcount-huge", "dimcount", 10**6),
    ):
        p = add(name)
        body = bytearray(raw)
        for e in entries:
            if field_name == "pos":
                body[e + 6 : e + 14] = struct.pack("<q", value)
            elif field_name == "ptype":
                body[e + 2 : e + 6] = struct.pack("<i", value)
            elif field_name == "dimcount":
                body[e + 28 : e + 32] = struct.pack("<i", value)
            else:  # the X and Y dimension entries: Size of each
                n_dims = struct.unpack("<i", bytes(body[e + 28 : e + 32]))[0]
                for k in range(min(n_dims, 10)):
                    de = e + 32 + 20 * k
                    if bytes(body[de : de + 1]) in (b"X", b"Y"):
                        body[de + 8 : de + 12] = struct.pack("<i", value)
        p.write_bytes(bytes(body))
    # issue 22: a sub-block DataSize of 2**40 (libCZI dies with SIGSEGV on the zstd one), 40 random bytes
    # in the sub-block directory, a complex pixel type
    for base, tag in ((plain, "plain"), (packed, "zstd")):
        body = bytearray(base.read_bytes())
        struct.pack_into("<q", body, body.find(b"ZISRAWSUBBLOCK") + 32 + 8, 2**40)
        add(f"subblock-datasize-2pow40-{tag}").write_bytes(bytes(body))
    dused = struct.unpack_from("<q", raw, dstart + 24)[0]
    for k in range(4):
        body = bytearray(raw)
        rng = np.random.default_rng(40 + k)
        at = dstart + 32 + 128 + int(rng.integers(0, dused - 128 - 40))
        body[at : at + 40] = rng.integers(0, 256, 40, dtype=np.uint8).tobytes()
        add(f"directory-40-random-bytes-{k}").write_bytes(bytes(body))
    body = bytearray(raw)
    for e in entries:
        body[e + 2 : e + 6] = struct.pack("<i", 10)  # Gray64ComplexFloat
    add("complex-pixel-type").write_bytes(bytes(body))
    (d / "a-directory.czi").mkdir(exist_ok=True)
    names.append("a-directory")
    names.append("missing-file")
    return [BadCase("czi", n, f"czi/{n}.czi", "czi", "SCZYX", names=[f"{n}.czi"]) for n in names]


# -- Zarr -------------------------------------------------------------------------------------------------
def _write_zarr(path: Path, zarr_format: int, shards: bool = False) -> None:
    import zarr

    root = zarr.open_group(str(path), mode="w", zarr_format=zarr_format)  # type: ignore[arg-type]
    kwargs: dict[str, Any] = {"chunks": (1, 16, 16)}
    if shards:
        kwargs["shards"] = (1, 32, 32)
    root.create_array("img", shape=(2, 32, 32), dtype="uint16", **kwargs)[...] = _data((2, 32, 32), seed=7)


def _edit_json(path: Path, fn: Callable[[dict[str, Any]], Any]) -> None:
    meta = json.loads(path.read_text())
    fn(meta)
    path.write_text(json.dumps(meta))


def gen_zarr(root: Path) -> list[BadCase]:
    """Zarr v2 / v3 / v3-sharded cases (metadata missing or contradictory, corrupt chunks, huge shapes)."""
    d = root / "zarr"
    d.mkdir(parents=True, exist_ok=True)
    cases: list[BadCase] = []

    def add(name: str, version: int, expect: str = "error", ok_npy: str | None = None, shards: bool = False) -> Path:
        store = d / f"{name}.zarr"
        if store.exists():
            shutil.rmtree(store)
        _write_zarr(store, version, shards)
        cases.append(BadCase("zarr", name, f"zarr/{name}.zarr/img", "zarr", "SYX", expect, ok_npy, [f"{name}.zarr"]))
        return store / "img"

    def v3_chunk(arr: Path) -> Path:
        return arr / "c" / "0" / "0" / "0"

    def v2_chunk(arr: Path) -> Path:
        return arr / "0.0.0"

    for v in (2, 3):
        meta = ".zarray" if v == 2 else "zarr.json"
        chunk = v2_chunk if v == 2 else v3_chunk
        (add(f"v{v}-missing-metadata", v) / meta).unlink()
        (add(f"v{v}-invalid-json", v) / meta).write_text("{ this is not json")
        (add(f"v{v}-empty-metadata", v) / meta).write_text("")
        _edit_json(add(f"v{v}-no-shape", v) / meta, lambda m: m.pop("shape"))
        _edit_json(add(f"v{v}-negative-shape", v) / meta, lambda m: m.update(shape=[2, -32, 32]))
        _edit_json(add(f"v{v}-shape-is-string", v) / meta, lambda m: m.update(shape="2,32,32"))
        _edit_json(add(f"v{v}-rank-mismatch-chunks", v) / meta, _rank_mismatch(v))
        _edit_json(add(f"v{v}-unknown-dtype", v) / meta, _set_dtype(v, "quaternion128"))
        _edit_json(add(f"v{v}-dtype-lies", v) / meta, _set_dtype(v, "<f8" if v == 2 else "float64"))
        _edit_json(add(f"v{v}-unknown-codec", v) / meta, _unknown_codec(v))
        _edit_json(add(f"v{v}-zero-chunk", v) / meta, _zero_chunks(v))
        c = chunk(add(f"v{v}-truncated-chunk", v))
        c.write_bytes(c.read_bytes()[: max(1, c.stat().st_size // 2)])
        c = chunk(add(f"v{v}-random-chunk", v))
        c.write_bytes(_random_with(b"", c.stat().st_size, 8))
        chunk(add(f"v{v}-empty-chunk", v)).write_bytes(b"")
        c = chunk(add(f"v{v}-chunk-is-directory", v))
        c.unlink()
        c.mkdir()
        arr = add(f"v{v}-array-is-file", v)
        shutil.rmtree(arr)
        arr.write_bytes(b"not a zarr array")
        # a huge declared shape with no chunk written: valid, every patch is the fill value
        arr = add(f"v{v}-huge-shape", v, "error-or-ok", "zeros")
        for child in list(arr.rglob("*")):
            if child.is_file() and child.name not in (".zarray", "zarr.json", ".zattrs"):
                child.unlink()
        _edit_json(arr / meta, lambda m: m.update(shape=[3, 2**40, 2**40]))
        _edit_json(add(f"v{v}-fill-value-wrong-type", v) / meta, lambda m: m.update(fill_value="not a number"))
        # issue 22: a huge declared chunk (1 x 2^19 x 2^19 uint16, 512 GiB) whose file is missing: the fill value,
        # read without allocating the declared chunk
        arr = add(f"v{v}-huge-chunk-missing", v, "error-or-ok", "zeros")
        for child in list(arr.rglob("*")):
            if child.is_file() and child.name not in (".zarray", "zarr.json", ".zattrs"):
                child.unlink()
        _edit_json(arr / meta, _huge_chunks(v))
    # sharded v3: corrupt shard index, truncated shard
    shard = v3_chunk(add("v3-shard-truncated", 3, shards=True))
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    shard = v3_chunk(add("v3-shard-index-corrupt", 3, shards=True))
    _scramble(shard, shard.stat().st_size - 40, 36, seed=9)
    shard = v3_chunk(add("v3-shard-random", 3, shards=True))
    shard.write_bytes(_random_with(b"", shard.stat().st_size, 10))
    # issue 22: complex data is refused; a 200-byte metadata declaring 2 * 10**12 chunks opens, prints and
    # reads patches (the fill value) without a graph of a task per chunk
    import zarr

    for name, kwargs in (
        ("v3-complex64", {"shape": (2, 32, 32), "chunks": (1, 16, 16), "dtype": "complex64"}),
        ("v3-trillion-chunks", {"shape": (2, 10**6, 10**6), "chunks": (1, 1, 1), "dtype": "uint8"}),
    ):
        store = d / f"{name}.zarr"
        if store.exists():
            shutil.rmtree(store)
        zarr.open_group(str(store), mode="w", zarr_format=3).create_array("img", fill_value=0, **kwargs)
        ok = name == "v3-trillion-chunks"
        expect, npy = ("error-or-ok", "zeros") if ok else ("error", None)
        cases.append(BadCase("zarr", name, f"zarr/{name}.zarr/img", "zarr", "SYX", expect, npy, [f"{name}.zarr"]))
    cases.append(BadCase("zarr", "missing-store", "zarr/missing-store.zarr", "zarr", "SYX", names=["missing-store"]))
    return cases


def _huge_chunks(v: int) -> Callable[[dict[str, Any]], None]:
    def edit(m: dict[str, Any]) -> None:
        if v == 2:
            m["chunks"] = [1, 2**19, 2**19]
        else:
            m["chunk_grid"]["configuration"]["chunk_shape"] = [1, 2**19, 2**19]

    return edit


def _rank_mismatch(v: int) -> Callable[[dict[str, Any]], None]:
    def fn(m: dict[str, Any]) -> None:
        if v == 2:
            m["chunks"] = [16, 16]
        else:
            m["chunk_grid"]["configuration"]["chunk_shape"] = [16, 16]

    return fn


def _set_dtype(v: int, value: str) -> Callable[[dict[str, Any]], None]:
    def fn(m: dict[str, Any]) -> None:
        m["dtype" if v == 2 else "data_type"] = value

    return fn


def _unknown_codec(v: int) -> Callable[[dict[str, Any]], None]:
    def fn(m: dict[str, Any]) -> None:
        if v == 2:
            m["compressor"] = {"id": "no-such-codec"}
        else:
            m["codecs"] = [*m["codecs"], {"name": "no-such-codec", "configuration": {}}]

    return fn


def _zero_chunks(v: int) -> Callable[[dict[str, Any]], None]:
    def fn(m: dict[str, Any]) -> None:
        if v == 2:
            m["chunks"] = [1, 0, 16]
        else:
            m["chunk_grid"]["configuration"]["chunk_shape"] = [1, 0, 16]

    return fn


# -- OME-Zarr ----------------------------------------------------------------------------------------------
def gen_ome_zarr(root: Path) -> list[BadCase]:
    """OME-Zarr 0.5 (ome-zarr-py) images whose multiscales metadata is wrong or whose levels are missing."""
    import zarr
    from ome_zarr.format import FormatV05
    from ome_zarr.writer import write_image

    d = root / "ome-zarr"
    d.mkdir(parents=True, exist_ok=True)
    data = _data((2, 3, 32, 32), seed=11)
    np.save(d / "expected-s0.npy", data)
    cases: list[BadCase] = []

    def add(name: str, expect: str = "error", ok_npy: str | None = None, axes: str = "CZYX") -> Path:
        store = d / f"{name}.ome.zarr"
        if store.exists():
            shutil.rmtree(store)
        g = zarr.open_group(str(store), mode="w", zarr_format=3)
        write_image(
            data, g, axes="czyx", fmt=FormatV05(), scale_factors=(2,), storage_options={"chunks": (1, 1, 16, 16)}
        )
        cases.append(
            BadCase("ome-zarr", name, f"ome-zarr/{name}.ome.zarr", "zarr", axes, expect, ok_npy, [f"{name}.ome.zarr"])
        )
        return store

    def ms(store: Path, fn: Callable[[dict[str, Any]], Any]) -> None:
        _edit_json(store / "zarr.json", lambda m: fn(m["attributes"]["ome"]["multiscales"][0]))

    ms(add("axes-too-few"), lambda m: m.update(axes=m["axes"][1:]))
    ms(add("axes-too-many"), lambda m: m.update(axes=[{"name": "t", "type": "time"}, *m["axes"]]))
    ms(add("axes-unknown-name"), lambda m: m["axes"][0].update(name="q", type="weird"))
    ms(add("axes-duplicated"), lambda m: m["axes"].__setitem__(1, dict(m["axes"][2])))
    ms(add("axes-not-a-list"), lambda m: m.update(axes="czyx"))
    ms(add("level-path-missing"), lambda m: m["datasets"][0].update(path="s9"))
    ms(add("datasets-missing"), lambda m: m.pop("datasets"))
    ms(add("datasets-empty"), lambda m: m.update(datasets=[]))
    ms(add("datasets-path-missing"), lambda m: m["datasets"][0].pop("path"))
    ms(add("scale-wrong-length"), lambda m: m["datasets"][0]["coordinateTransformations"][0].update(scale=[1.0, 1.0]))
    ms(add("transforms-not-a-list"), lambda m: m["datasets"][0].update(coordinateTransformations="scale"))
    _edit_json(add("multiscales-empty") / "zarr.json", lambda m: m["attributes"]["ome"].update(multiscales=[]))
    _edit_json(add("multiscales-not-a-list") / "zarr.json", lambda m: m["attributes"]["ome"].update(multiscales="s0"))
    shutil.rmtree(add("level0-deleted") / "s0")
    store = add("level0-is-a-group")
    shutil.rmtree(store / "s0")
    zarr.open_group(str(store / "s0"), mode="w", zarr_format=3)
    # the level holds 3-D data where the metadata declares 4 axes
    store = add("level-rank-lies")
    shutil.rmtree(store / "s0")
    zarr.create_array(str(store / "s0"), shape=(3, 32, 32), dtype="uint16", chunks=(1, 16, 16))[...] = 1
    # the axes the user gives disagree with the file's own
    add("user-axes-disagree", axes="TCYX")
    return cases


# -- custom (.npy through np.load) ----------------------------------------------------------------------------
def gen_custom(root: Path) -> list[BadCase]:
    """``.npy`` files read with ``np.load`` (eager) and ``np.load(mmap_mode="r")`` (lazy)."""
    d = root / "custom"
    d.mkdir(parents=True, exist_ok=True)
    base = d / "base.npy"
    np.save(base, _data((2, 40, 40), seed=12))
    raw = base.read_bytes()
    header_len = 10 + struct.unpack("<H", raw[8:10])[0]
    names: list[str] = []

    def add(name: str) -> Path:
        names.append(name)
        return d / f"{name}.npy"

    add("empty").write_bytes(b"")
    add("wrong-magic").write_bytes(b"\x93NOTPY" + raw[6:])
    add("random-with-magic").write_bytes(_random_with(b"\x93NUMPY\x01\x00", 2048, 13))
    add("truncated-header").write_bytes(raw[: header_len // 2])
    add("truncated-data").write_bytes(raw[: header_len + (len(raw) - header_len) // 2])
    add("truncated-minus1").write_bytes(raw[:-1])

    def header(text: str) -> bytes:
        body = text.encode("latin1")
        body = body + b" " * (header_len - 10 - len(body) - 1) + b"\n"
        return raw[:8] + struct.pack("<H", len(body)) + body

    add("shape-lies-bigger").write_bytes(
        header("{'descr': '<u2', 'fortran_order': False, 'shape': (2, 400, 40), }") + raw[header_len:]
    )
    add("huge-declared-shape").write_bytes(
        header("{'descr': '<u2', 'fortran_order': False, 'shape': (3, 1099511627776, 2), }") + raw[header_len:]
    )
    add("unknown-dtype").write_bytes(
        header("{'descr': '<q9', 'fortran_order': False, 'shape': (2, 40, 40), }") + raw[header_len:]
    )
    add("header-not-a-dict").write_bytes(header("[1, 2, 3]") + raw[header_len:])
    add("object-dtype").write_bytes(
        header("{'descr': '|O', 'fortran_order': False, 'shape': (2, 40, 40), }") + raw[header_len:]
    )
    np.save(add("complex64"), (_data((2, 40, 40)) * (1 + 1j)).astype(np.complex64))  # issue 22
    (d / "a-directory.npy").mkdir(exist_ok=True)
    names += ["a-directory", "missing-file"]
    return [
        BadCase(loader, n, f"custom/{n}.npy", loader, "SYX", names=[f"{n}.npy"])
        for loader in ("custom_eager", "custom_mmap")
        for n in names
    ]


# -- bioio (OME-TIFF) ---------------------------------------------------------------------------------------
def gen_bioio(root: Path) -> list[BadCase]:
    """OME-TIFF files read through ``load_bioio`` (bioio-ome-tiff)."""
    import tifffile

    d = root / "bioio"
    d.mkdir(parents=True, exist_ok=True)
    base = d / "base.ome.tif"
    tifffile.imwrite(base, _data((2, 3, 32, 32), seed=14), ome=True, metadata={"axes": "TZYX"})
    names: list[str] = []

    def add(name: str) -> Path:
        names.append(name)
        return d / f"{name}.ome.tif"

    add("empty").write_bytes(b"")
    add("wrong-magic").write_bytes(b"PK\x03\x04" + base.read_bytes()[4:])
    add("random-with-magic").write_bytes(_random_with(b"II*\x00", 4096, 15))
    size = base.stat().st_size
    for frac in (0.01, 0.3, 0.7):
        _truncate(base, add(f"truncated-{int(frac * 100)}pct"), int(size * frac))
    with tifffile.TiffFile(base) as tif:
        xml = tif.pages.first.description
    for name, new in (
        ("ome-xml-broken", xml[: len(xml) // 2]),
        ("ome-sizez-lies", xml.replace('SizeZ="3"', 'SizeZ="9"')),
        ("ome-sizex-lies", xml.replace('SizeX="32"', 'SizeX="320000"')),
        ("ome-dimorder-lies", xml.replace('DimensionOrder="XYZCT"', 'DimensionOrder="XYQCT"')),
    ):
        p = add(name)
        shutil.copy(base, p)
        with tifffile.TiffFile(p, mode="r+") as tif:
            tif.pages.first.tags["ImageDescription"].overwrite(new)
    (d / "a-directory.ome.tif").mkdir(exist_ok=True)
    names += ["a-directory", "missing-file"]
    return [BadCase("bioio", n, f"bioio/{n}.ome.tif", "bioio", "TZYX", names=[f"{n}.ome.tif"]) for n in names]


#: Real microscope files beside the checkout (read-only; only truncated copies are written, into the corpus).
SHARED_DATA = Path(os.environ.get("LAZYSTACK_SHARED_DATA", HERE.parents[1] / "shared" / "data"))


def gen_real(root: Path) -> list[BadCase]:
    """Truncated copies of the real CZI and TIFF files in ``../shared/data`` (none when the folder is absent)."""
    import tifffile

    cases: list[BadCase] = []
    d = root / "real"
    d.mkdir(parents=True, exist_ok=True)
    for src in sorted((SHARED_DATA / "czi").glob("*.czi")) if (SHARED_DATA / "czi").is_dir() else []:
        raw = src.read_bytes()
        for frac in (0.3, 0.7, 0.95):
            name = f"{src.stem}-{int(frac * 100)}pct"
            (d / f"{name}.czi").write_bytes(raw[: int(len(raw) * frac)])
            cases.append(BadCase("czi-real", name, f"real/{name}.czi", "czi", "SCYX", names=[f"{name}.czi"]))
    tiffs = sorted((SHARED_DATA / "tiff").glob("*.tif*")) if (SHARED_DATA / "tiff").is_dir() else []
    for src in tiffs:
        with tifffile.TiffFile(src) as tif:
            rank = len(tif.series[0].shape)
        axes = ["YX", "ZYX", "CZYX", "TCZYX", "STCZYX"][rank - 2]
        raw = src.read_bytes()
        for frac in (0.5, 0.95):
            name = f"{src.name.split('.')[0]}-{int(frac * 100)}pct"
            (d / f"{name}.tif").write_bytes(raw[: int(len(raw) * frac)])
            cases.append(BadCase("tiff-real", name, f"real/{name}.tif", "tiff", axes, names=[f"{name}.tif"]))
    return cases


GENERATORS: dict[str, Callable[[Path], list[BadCase]]] = {
    "tiff": gen_tiff,
    "czi": gen_czi,
    "zarr": gen_zarr,
    "ome-zarr": gen_ome_zarr,
    "custom": gen_custom,
    "bioio": gen_bioio,
    "real": gen_real,
}


def generate(root: Path, formats: Sequence[str] | None = None) -> list[BadCase]:
    """Write the corpus under ``root`` and return its cases.

    Parameters
    ----------
    root : Path
        Folder to write into (created).
    formats : sequence of str, optional
        Generator names of :data:`GENERATORS` (all by default).

    Returns
    -------
    list of BadCase
    """
    root.mkdir(parents=True, exist_ok=True)
    cases: list[BadCase] = []
    for name in formats or GENERATORS:
        cases.extend(GENERATORS[name](root))
    save_cases(root, cases)
    return cases


def save_cases(root: Path, cases: Sequence[BadCase]) -> None:
    """Record ``cases`` in ``root/cases.json`` (what the runner subprocess reads)."""
    (root / "cases.json").write_text(json.dumps([asdict(c) for c in cases]))


# -- running one case (inside the subprocess) ------------------------------------------------------------------
def _load(case: BadCase, source: str) -> list[Any]:
    import lazystack

    if case.loader == "tiff":
        return lazystack.load_tiffs(source, case.axes)
    if case.loader == "iter_tiff":
        return lazystack.load_iter_tiff(source, case.axes)
    if case.loader == "czi":
        return lazystack.load_czis(source, case.axes)
    if case.loader == "zarr":
        return lazystack.load_zarrs(source, case.axes)
    if case.loader == "custom_eager":
        return lazystack.load_custom_file(source, case.axes, read_func=np.load)
    if case.loader == "custom_mmap":
        return lazystack.load_custom_file(source, case.axes, read_func=np.load, read_kwargs={"mmap_mode": "r"})
    if case.loader == "bioio":
        return lazystack.load_bioio(source, case.axes)
    if case.loader == "selftest-crash":  # proves the runner reports a dying interpreter
        import signal

        os.kill(os.getpid(), signal.SIGSEGV)
    if case.loader == "selftest-hang":  # proves the runner bounds the time
        time.sleep(3600)
    msg = f"unknown loader {case.loader!r}"
    raise ValueError(msg)


def _hash_tree(path: Path) -> dict[str, str]:
    if not path.exists():
        return {}
    files = [path] if path.is_file() else sorted(q for q in path.rglob("*") if q.is_file())
    out = {}
    for f in files:
        st = f.stat()
        out[str(f)] = f"{hashlib.sha256(f.read_bytes()).hexdigest()}-{st.st_size}-{st.st_mtime_ns}"
    return out


def _source_root(root: Path, case: BadCase) -> Path:
    """The file or store folder the case's source lives in (what must not change)."""
    parts = Path(case.source).parts
    for i, part in enumerate(parts):
        if part.endswith((".zarr", ".tif", ".czi", ".npy")):
            return root.joinpath(*parts[: i + 1])
    return root / case.source


def library_read(case: BadCase, source: str) -> np.ndarray | None:
    """The format library's own read of a case (None when it fails too or no reference applies)."""
    try:
        if case.loader in ("tiff", "iter_tiff"):
            import tifffile

            return np.asarray(tifffile.imread(source))
        if case.loader == "zarr" and case.fmt == "zarr":
            import zarr

            arr = zarr.open_array(source, mode="r")
            return None if arr.size > 2**24 else np.asarray(arr[...])
        if case.loader.startswith("custom"):
            return np.asarray(np.load(source))
        if case.loader == "bioio":
            import bioio

            return np.asarray(bioio.BioImage(source).get_image_data(case.axes))
        if case.fmt == "ome-zarr":  # the level-0 data ome-zarr-py wrote (the metadata was edited afterwards)
            return np.load(Path(source).parent / "expected-s0.npy")
    except Exception:
        return None
    return None


def _exercise(case: BadCase, root: Path) -> tuple[str, str]:
    """Open and read; return (outcome, detail)."""
    import lazystack

    source = str(root / case.source)
    full = case.expect == "error"
    try:
        stacks = _load(case, source)
        repr(stacks)
        for stack in stacks:
            if len(stack.data.__dask_graph__()) > 200_000:  # a graph of a task per stored chunk
                return "hang", f"stack.data has {len(stack.data.__dask_graph__())} tasks"
            n_s = stack.data_shape[0]
            spatial = list(stack.data_shape[2:])
            if 0 in spatial:
                return "silent", f"opened as an empty image: data_shape {stack.data_shape}"
            small = [min(8, n) for n in spatial]
            # corners, middle, over the far edge
            corners = [[0] * len(spatial), [n // 2 for n in spatial], [n - 3 for n in spatial]]
            patches = [stack.extract_patch(s, None, c, small) for s in {0, n_s - 1} for c in corners]
            if full:  # read every pixel: a corrupt input cannot pass unnoticed
                patches += [stack.extract_patch(s, None, [0] * len(spatial), spatial) for s in range(n_s)]
                patches.append(stack.compute())
            if case.ok_npy == "zeros":
                if any(p.any() for p in patches):
                    return "wrong", "patches of a store with no chunks are not all zero"
            elif case.ok_npy:
                expected = np.load(root / case.ok_npy)
                if not np.array_equal(stack.xarray.values, expected):
                    return "wrong", f"values differ from the expected {case.ok_npy}"
            stack.close()
    except lazystack.LazyStackError as exc:
        text = f"{type(exc).__name__}: {exc}"
        if any(n in str(exc) for n in case.names):
            return "clear", text
        return "unclear", f"message does not name {case.names}: {text}"
    except BaseException as exc:
        frames = traceback.extract_tb(exc.__traceback__)
        ours = [f for f in frames if "/lazystack/" in f.filename]
        where = "; ".join(f"{Path(f.filename).name}:{f.lineno} {f.name}" for f in (ours[-2:] or frames[-1:]))
        return (
            "unclear",
            f"{type(exc).__name__}: {exc} (via {where}; raised at {frames[-1].filename}:{frames[-1].lineno})",
        )
    if case.expect != "error":
        return "ok", "read correctly"
    reference = library_read(case, source)
    if reference is not None and stacks and np.array_equal(stacks[0].xarray.values, reference):
        return "tolerated", "no error, and the values equal the format library's own read of the file"
    return "silent", "no error on a corrupt input" + (
        "" if reference is None else " (values differ from the library's)"
    )


def run_cases_here(root: Path, cases: Sequence[BadCase]) -> None:
    """Run cases in this process, printing one JSON line per case (``BEGIN`` first, for crash attribution)."""
    for case in cases:
        print(f"BEGIN {case.fmt}/{case.name}", flush=True)
        watched = _source_root(root, case)
        before = _hash_tree(watched)
        t0 = time.perf_counter()
        outcome, detail = _exercise(case, root)
        modified = _hash_tree(watched) != before
        row = {"fmt": case.fmt, "name": case.name, "outcome": outcome, "detail": detail[:600], "modified": modified}
        row["seconds"] = round(time.perf_counter() - t0, 3)
        print("RESULT " + json.dumps(row), flush=True)


def _subprocess(root: Path, fmt: str, names: Sequence[str], timeout: float) -> tuple[list[dict], str | None, str]:
    """Run ``names`` of ``fmt`` in one subprocess. Returns (rows, case running when it died, how it died)."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--run", str(root), fmt, *names]
    env = dict(os.environ, PYTHONFAULTHANDLER="1")
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=HERE)
        out, rc, how = proc.stdout, proc.returncode, f"exit status {proc.returncode}: {proc.stderr[-400:]}"
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        rc, how = None, f"timeout after {timeout} s"
    rows = [json.loads(line[7:]) for line in out.splitlines() if line.startswith("RESULT ")]
    done = {r["name"] for r in rows}
    begun = [line[6:].split("/", 1)[1] for line in out.splitlines() if line.startswith("BEGIN ")]
    running = next((b for b in reversed(begun) if b not in done), None)
    if rc == 0 and running is None:
        return rows, None, ""
    return rows, running, how


def run_corpus(
    root: Path, cases: Sequence[BadCase], format_timeout: float = FORMAT_TIMEOUT, case_timeout: float = CASE_TIMEOUT
) -> list[dict[str, Any]]:
    """Run every case, one subprocess per format; after a crash or hang, the rest one subprocess each.

    Returns
    -------
    list of dict
        One row per case: ``fmt``, ``name``, ``outcome``, ``detail``, ``modified``, ``seconds``.
    """
    by_fmt: dict[str, list[str]] = {}
    for c in cases:
        by_fmt.setdefault(c.fmt, []).append(c.name)
    results: list[dict[str, Any]] = []
    for fmt, names in by_fmt.items():
        rows, running, how = _subprocess(root, fmt, names, format_timeout)
        results.extend(rows)
        if running is None and len(rows) == len(names):
            continue
        done = {r["name"] for r in rows}
        for name in (n for n in names if n not in done):
            rows, running, how = _subprocess(root, fmt, [name], case_timeout)
            if rows:
                results.extend(rows)
            else:
                outcome = "hang" if how.startswith("timeout") else "crash"
                results.append({"fmt": fmt, "name": name, "outcome": outcome, "detail": how, "modified": False})
    return results


def table(results: Sequence[dict[str, Any]]) -> str:
    """Markdown table: per format, cases tried and count per outcome, and files modified."""
    fmts: dict[str, list[dict[str, Any]]] = {}
    for r in results:
        fmts.setdefault(r["fmt"], []).append(r)
    head = [
        "format",
        "cases",
        "clear errors",
        "ok (valid)",
        "tolerated",
        "unclear",
        "silent",
        "wrong",
        "crashes",
        "hangs",
        "modified",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    total = dict.fromkeys(head[1:], 0)
    for fmt, rows in fmts.items():
        counts = [
            len(rows),
            *(sum(r["outcome"] == o for r in rows) for o in OUTCOMES),
            sum(r["modified"] for r in rows),
        ]
        for k, v in zip(head[1:], counts, strict=True):
            total[k] += v
        lines.append(f"| {fmt} | " + " | ".join(str(v) for v in counts) + " |")
    lines.append("| **total** | " + " | ".join(str(v) for v in total.values()) + " |")
    return "\n".join(lines)


def failures(results: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows that are not a clear error or a correct read, or that modified a file."""
    return [r for r in results if r["outcome"] not in ("clear", "ok", "tolerated") or r["modified"]]


def main(argv: Sequence[str] | None = None) -> int:
    """Generate the corpus in a temporary folder, run it, print the table (and the failures)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", nargs="+", metavar=("ROOT", "FMT"), help="internal: run cases in this process")
    parser.add_argument("--formats", nargs="*", choices=sorted(GENERATORS), help="generators to run (default all)")
    parser.add_argument("--keep", type=Path, help="write the corpus here and keep it")
    args = parser.parse_args(argv)
    if args.run:
        root, fmt, *names = args.run
        all_cases = [BadCase(**c) for c in json.loads((Path(root) / "cases.json").read_text())]
        wanted = set(names)
        run_cases_here(Path(root), [c for c in all_cases if c.fmt == fmt and (not wanted or c.name in wanted)])
        return 0
    with tempfile.TemporaryDirectory(prefix="lazystack-corpus-") as tmp:
        root = args.keep or Path(tmp)
        cases = generate(root, args.formats)
        t0 = time.perf_counter()
        results = run_corpus(root, cases)
        print(table(results))
        print(f"\n{len(results)} cases in {time.perf_counter() - t0:.1f} s")
        bad = failures(results)
        for r in bad:
            print(f"- {r['fmt']}/{r['name']}: {r['outcome']}{' MODIFIED' if r['modified'] else ''}: {r['detail']}")
        return 1 if bad else 0


if __name__ == "__main__":
    sys.path.insert(0, str(HERE.parent))
    raise SystemExit(main())
