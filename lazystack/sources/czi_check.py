"""Structural check of a CZI file before libCZI (pylibCZIrw) sees it.

libCZI trusts the sizes and offsets a CZI file declares: a sub-block whose
``DataSize`` is 2**40, or a sub-block directory overwritten with random bytes,
can kill the interpreter with ``SIGSEGV`` instead of raising an exception. So
`check_czi_structure()` reads the file's segment headers itself (with
[`struct`][struct], a few small reads) and checks every declared size and offset
against the file size and against each other, raising
[`SourceFormatError`][lazystack.SourceFormatError] naming the file, the sub-block and
the field. What it reads (Zeiss' published CZI file format, ZISRAW 1.x):

* the file header segment ``ZISRAWFILE``: ``DirectoryPosition``,
  ``MetadataPosition``, ``AttachmentDirectoryPosition``;
* the sub-block directory ``ZISRAWDIRECTORY``: ``EntryCount`` and every
  ``DirectoryEntryDV`` (schema ``"DV"``, ``PixelType``, ``FilePosition``,
  ``Compression``, ``DimensionCount`` and its ``DimensionEntryDV`` items);
* the first 80 bytes of every sub-block segment ``ZISRAWSUBBLOCK``: its
  ``AllocatedSize`` / ``UsedSize``, ``MetadataSize``, ``AttachmentSize``,
  ``DataSize`` and the ``DimensionCount`` of its own copy of the entry;
* the headers of the metadata segment ``ZISRAWMETADATA`` and of the
  attachment directory ``ZISRAWATTDIR`` (with its entries' positions).

The pixel payload is not decoded: a compressed payload (zstd, JPEG XR) that is
corrupt *inside* consistent sizes is left to the codec, which reports an error
in the cases the bad-input corpus covers. For untrusted files,
[`check_czi_decodes()`][check_czi_decodes] is an opt-in *checked mode*: it decodes every
sub-block once in a child process, so a crash of the native decoder becomes a
[`SourceFormatError`][lazystack.SourceFormatError] instead of the death of the
caller.
"""

from __future__ import annotations

import os
import struct
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass

from ..core.errors import SourceFormatError, SourceNotFoundError, SourceReadError
from ..io.handles import check_regular_file

__all__ = ["SubBlockEntry", "check_czi_decodes", "check_czi_structure"]

#: Size of a segment header (Id, AllocatedSize, UsedSize).
SEGMENT_HEADER = 32
#: Fixed part of a ``DirectoryEntryDV``; each ``DimensionEntryDV`` adds 20 bytes.
ENTRY_FIXED = 32
DIMENSION_ENTRY = 20
#: ``DimensionCount`` above this is not a real file (CZI defines 13 dimension letters).
MAX_DIMENSIONS = 32
#: libCZI's pixel types (``PixelType`` field): name and bytes per pixel.
PIXEL_TYPES = {0: ("Gray8", 1), 1: ("Gray16", 2), 2: ("Gray32Float", 4), 3: ("Bgr24", 3), 4: ("Bgr48", 6)}
PIXEL_TYPES |= {8: ("Bgr96Float", 12), 9: ("Bgra32", 4), 10: ("Gray64ComplexFloat", 8), 11: ("Bgr192ComplexFloat", 24)}
PIXEL_TYPES |= {12: ("Gray32", 4), 13: ("Gray64", 8)}

_SEG = struct.Struct("<16sqq")
_FILE_POSITIONS = struct.Struct("<qqiq")  # DirectoryPosition, MetadataPosition, UpdatePending, AttachmentDirPosition
_ENTRY = struct.Struct("<2siqiib5xi")  # schema, PixelType, FilePosition, FilePart, Compression, PyramidType, DimCount
_DIM = struct.Struct("<4siifi")  # Dimension, Start, Size, StartCoordinate, StoredSize
_SUBBLOCK_SIZES = struct.Struct("<iiq")  # MetadataSize, AttachmentSize, DataSize


@dataclass(frozen=True)
class SubBlockEntry:
    """One checked entry of the sub-block directory.

    Attributes
    ----------
    index : int
        Position of the entry in the directory.
    offset : int
        File offset of the entry (inside the directory segment).
    pixel_type : int
        libCZI pixel type code.
    position : int
        File offset of the sub-block segment.
    compression : int
        Compression code (0: uncompressed).
    dims : dict of str to tuple of int
        Dimension letter -> ``(start, size, stored_size)``.
    """

    index: int
    offset: int
    pixel_type: int
    position: int
    compression: int
    dims: dict[str, tuple[int, int, int]]


def _fail(path: str, where: str, detail: str) -> SourceFormatError:
    return SourceFormatError(
        f"CZI file {path!r} is corrupt: {where}: {detail}; lazystack checks a CZI file's declared sizes and "
        "offsets before pylibCZIrw reads it (a damaged or truncated file)"
    )


def _segment(path: str, fd: int, size: int, pos: int, expect: bytes, what: str) -> tuple[int, bytes]:
    """Check the segment header at ``pos``; return (used size, the header's 32 bytes)."""
    if pos < SEGMENT_HEADER or pos + SEGMENT_HEADER > size:
        raise _fail(path, what, f"its position {pos} is outside the file ({size} bytes)")
    head = os.pread(fd, SEGMENT_HEADER, pos)
    sid, allocated, used = _SEG.unpack(head)
    name = sid.rstrip(b"\0")
    if name != expect:
        raise _fail(path, f"{what} at offset {pos}", f"segment Id is {name[:16]!r}, expected {expect.decode()!r}")
    used = used or allocated  # UsedSize 0 means AllocatedSize (CZI specification)
    if allocated < 0 or used < 0:
        raise _fail(path, f"{what} at offset {pos}", f"AllocatedSize {allocated} / UsedSize {used} is negative")
    if pos + SEGMENT_HEADER + used > size:
        raise _fail(
            path,
            f"{what} at offset {pos}",
            f"UsedSize {used} runs past the end of the file (segment ends at {pos + SEGMENT_HEADER + used}, "
            f"the file has {size} bytes)",
        )
    return used, head


def _entries(path: str, body: bytes, base: int, count: int, size: int) -> Iterator[SubBlockEntry]:
    """Parse and check ``count`` DirectoryEntryDV items of ``body`` (which starts at file offset ``base``)."""
    off = 0
    for i in range(count):
        where = f"sub-block {i} (directory entry at offset {base + off})"
        if off + ENTRY_FIXED > len(body):
            raise _fail(path, where, f"the directory declares {count} entries but its segment ends after {i}")
        schema, ptype, pos, part, comp, _pyr, n_dims = _ENTRY.unpack_from(body, off)
        if schema != b"DV":
            raise _fail(path, where, f"SchemaType is {schema!r}, expected b'DV'")
        if ptype not in PIXEL_TYPES:
            accepted = [name for name, _ in PIXEL_TYPES.values()]
            raise _fail(path, where, f"PixelType {ptype} is not a known pixel type; accepted: {accepted}")
        if not 2 <= n_dims <= MAX_DIMENSIONS:
            raise _fail(path, where, f"DimensionCount {n_dims} is not in 2..{MAX_DIMENSIONS}")
        end = off + ENTRY_FIXED + DIMENSION_ENTRY * n_dims
        if end > len(body):
            raise _fail(path, where, f"DimensionCount {n_dims} runs past the end of the directory segment")
        if part == 0 and not SEGMENT_HEADER <= pos <= size - SEGMENT_HEADER:
            raise _fail(path, where, f"FilePosition {pos} is outside the file ({size} bytes)")
        dims: dict[str, tuple[int, int, int]] = {}
        for k in range(n_dims):
            letter, start, extent, _coord, stored = _DIM.unpack_from(body, off + ENTRY_FIXED + DIMENSION_ENTRY * k)
            name = letter.split(b"\0", 1)[0]
            if len(name) != 1 or not name.isalpha():
                raise _fail(path, where, f"dimension {k} has the name {letter!r}, expected one letter")
            text = name.decode()
            if text in dims:
                raise _fail(path, where, f"dimension {text!r} is listed twice")
            if extent < 0 or stored < 0:
                raise _fail(path, where, f"dimension {text!r} has Size {extent} / StoredSize {stored} < 0")
            dims[text] = (start, extent, stored)
        for axis in "XY":
            if axis not in dims or dims[axis][1] < 1 or dims[axis][2] < 1:
                got = dims.get(axis)
                raise _fail(path, where, f"dimension {axis!r} is missing or empty ((start, Size, StoredSize) {got})")
        yield SubBlockEntry(i, base + off, ptype, pos if part == 0 else -1, comp, dims)
        off = end


def _check_subblock(path: str, fd: int, size: int, entry: SubBlockEntry) -> None:
    """Check the segment header and sizes of one sub-block against its directory entry and the file."""
    where = f"sub-block {entry.index} (segment at offset {entry.position})"
    used, _ = _segment(path, fd, size, entry.position, b"ZISRAWSUBBLOCK", f"sub-block {entry.index}")
    raw = os.pread(fd, 16 + ENTRY_FIXED, entry.position + SEGMENT_HEADER)
    if len(raw) < 16 + ENTRY_FIXED or used < 16 + ENTRY_FIXED:
        raise _fail(path, where, f"UsedSize {used} is too small for a sub-block header")
    meta, att, data = _SUBBLOCK_SIZES.unpack_from(raw, 0)
    n_dims = _ENTRY.unpack_from(raw, 16)[-1]
    if n_dims != len(entry.dims):
        raise _fail(path, where, f"its own DimensionCount {n_dims} differs from the directory's {len(entry.dims)}")
    for name, value in (("MetadataSize", meta), ("AttachmentSize", att), ("DataSize", data)):
        if value < 0:
            raise _fail(path, where, f"{name} {value} is negative")
    header = max(256, 16 + ENTRY_FIXED + DIMENSION_ENTRY * n_dims)
    need = header + meta + data + att
    if need > used:
        raise _fail(
            path,
            where,
            f"its header ({header} bytes) + MetadataSize {meta} + DataSize {data} + AttachmentSize {att} "
            f"= {need} bytes exceed the segment's UsedSize {used} (the file has {size} bytes)",
        )
    if entry.compression == 0:
        w, h = entry.dims["X"][2], entry.dims["Y"][2]
        name, nbytes = PIXEL_TYPES[entry.pixel_type]
        expected = w * h * nbytes
        if data < expected:
            raise _fail(
                path,
                where,
                f"DataSize {data} is smaller than its uncompressed {w}x{h} {name} pixels ({expected} bytes)",
            )


def check_czi_structure(path: str | os.PathLike[str]) -> list[SubBlockEntry]:
    """Check a CZI file's segments, directory and sub-block headers against its size.

    Reads the file header, the sub-block directory once and 112 bytes of
    every sub-block (one ``pread`` each), never pixel data.

    Raises
    ------
    SourceFormatError
        If the file does not start with the ``ZISRAWFILE`` header (not a
        CZI), or a declared offset or size is outside the file or inconsistent
        with another (the message names the file, the sub-block or segment
        and the field), or ``path`` is a directory, a FIFO or a device.
    SourceNotFoundError
        If there is no file at ``path``.
    SourceReadError
        If the file cannot be read (permission denied, an I/O error).
    """
    path = os.fspath(path)
    check_regular_file(path, "CZI file", "a .czi file")  # a FIFO would block the open below
    try:
        with open(path, "rb") as f:
            return _check_open_file(path, f.fileno())
    except FileNotFoundError as e:
        msg = f"CZI file not found: {path!r}"
        raise SourceNotFoundError(msg) from e
    except OSError as e:  # permission denied, an I/O error: the file could not be read, it is not malformed
        msg = f"cannot read the CZI file {path!r}: {e}"
        raise SourceReadError(msg) from e


def _check_open_file(path: str, fd: int) -> list[SubBlockEntry]:
    size = os.fstat(fd).st_size
    head = os.pread(fd, 112, 0)
    if not head.startswith(b"ZISRAWFILE"):
        msg = (
            f"{path!r} is not a CZI file: it does not start with the 'ZISRAWFILE' header (got {head[:10]!r}); "
            "load_czis reads Zeiss .czi files (use load_tiffs, load_zarrs or load_bioio for other formats)"
        )
        raise SourceFormatError(msg)
    if len(head) < 112:
        raise _fail(path, "file header", f"the file has {size} bytes, too short for a ZISRAWFILE header")
    dir_pos, meta_pos, _pending, att_pos = _FILE_POSITIONS.unpack_from(head, 84)
    if dir_pos == 0:
        raise _fail(path, "file header", "DirectoryPosition is 0 (the file has no sub-block directory)")
    used, _ = _segment(path, fd, size, dir_pos, b"ZISRAWDIRECTORY", "sub-block directory")
    if used < 128:
        raise _fail(path, f"sub-block directory at offset {dir_pos}", f"UsedSize {used} < 128 bytes")
    body = os.pread(fd, used, dir_pos + SEGMENT_HEADER)
    (count,) = struct.unpack_from("<i", body, 0)
    most = (used - 128) // (ENTRY_FIXED + 2 * DIMENSION_ENTRY)
    if not 0 <= count <= most:
        raise _fail(
            path,
            f"sub-block directory at offset {dir_pos}",
            f"EntryCount {count} is not in 0..{most} (what its UsedSize {used} can hold)",
        )
    entries = list(_entries(path, body[128:], dir_pos + SEGMENT_HEADER + 128, count, size))
    for entry in entries:
        if entry.position >= 0:
            _check_subblock(path, fd, size, entry)
    if meta_pos:
        used, _ = _segment(path, fd, size, meta_pos, b"ZISRAWMETADATA", "metadata segment")
        xml, att = struct.unpack("<ii", os.pread(fd, 8, meta_pos + SEGMENT_HEADER))
        if xml < 0 or att < 0 or 256 + xml + att > used:
            raise _fail(
                path,
                f"metadata segment at offset {meta_pos}",
                f"XmlSize {xml} + AttachmentSize {att} (+ 256 header bytes) do not fit its UsedSize {used}",
            )
    if att_pos:
        _check_attachment_directory(path, fd, size, att_pos)
    return entries


def _check_attachment_directory(path: str, fd: int, size: int, pos: int) -> None:
    used, _ = _segment(path, fd, size, pos, b"ZISRAWATTDIR", "attachment directory")
    body = os.pread(fd, used, pos + SEGMENT_HEADER)
    (count,) = struct.unpack_from("<i", body, 0) if len(body) >= 4 else (-1,)
    if not 0 <= count <= (used - 256) // 128:
        raise _fail(path, f"attachment directory at offset {pos}", f"EntryCount {count} does not fit UsedSize {used}")
    for i in range(count):
        at_pos, part = struct.unpack_from("<qi", body, 256 + 128 * i + 12)
        if part == 0 and not SEGMENT_HEADER <= at_pos <= size - SEGMENT_HEADER:
            raise _fail(path, f"attachment {i}", f"FilePosition {at_pos} is outside the file ({size} bytes)")


_DECODE_ALL = """
import sys
from pylibCZIrw import czi as pyczi
with pyczi.open_czi(sys.argv[1]) as doc:
    boxes = doc.scenes_bounding_rectangle_no_pyramid or {None: doc.total_bounding_rectangle_no_pyramid}
    dims = doc.total_bounding_box_no_pyramid
    planes = [{}]
    for d, (lo, hi) in dims.items():
        if d in ("X", "Y", "S", "M") or hi - lo <= 1:
            continue
        planes = [{**p, d: v} for p in planes for v in range(lo, hi)]
    for scene, r in boxes.items():
        for plane in planes:
            doc.read(plane=plane, roi=(r.x, r.y, r.w, r.h), scene=scene)
"""


def check_czi_decodes(path: str | os.PathLike[str], timeout: float = 600.0) -> None:
    """Checked mode for untrusted CZI files: decode every plane once in a child process.

    `check_czi_structure()` (run whenever lazystack opens a CZI) rules out
    the declared sizes and offsets that crash libCZI; a compressed payload
    that is corrupt inside consistent sizes is decoded by the native codec,
    which lazystack cannot vet without decoding. This function reads every
    plane of every scene in a separate Python process (``sys.executable``
    running pylibCZIrw), so a native crash fails the check instead of the
    caller. It costs one full read of the file; call it once on files from
    an untrusted origin before [`lazystack.load_czis()`][lazystack.load_czis].

    Parameters
    ----------
    path : str or os.PathLike
        The ``.czi`` file.
    timeout : float
        Seconds allowed for the child process.

    Raises
    ------
    SourceFormatError
        If the structure check fails, or the child process fails, crashes or
        times out (the message names the file and how the child ended).
    """
    path = os.fspath(path)
    check_czi_structure(path)
    try:
        proc = subprocess.run(
            [sys.executable, "-c", _DECODE_ALL, path], capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired:
        msg = f"CZI file {path!r}: decoding every plane in a child process did not finish within {timeout} s"
        raise SourceFormatError(msg) from None
    if proc.returncode != 0:
        how = f"was killed by signal {-proc.returncode}" if proc.returncode < 0 else f"exited {proc.returncode}"
        tail = proc.stderr.strip().splitlines()[-1:] or [""]
        msg = f"CZI file {path!r} cannot be decoded: a child process reading every plane {how} ({tail[0][:300]})"
        raise SourceFormatError(msg)
