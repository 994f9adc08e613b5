"""TIFF back end: lazy chunk readers over the image series of TIFF files.

One stack per image series (tifffile's ``TiffFile.series``): a plain or
multi-page TIFF has one, a multi-series OME-TIFF several. The stack of
series ``i > 0`` has the source ``"path@i"``, which re-opens that series
alone (the mirror of CZI scenes).

The user guide (``docs/loaders/tiff.md``) shows series, RGB, pyramids and
declared axes at work; what the reader does beneath them:

Pyramids
    Each level of ``TiffPageSeries.levels`` (OME-TIFF SubIFDs, SVS, NDPI
    ...) selected by ``levels=`` is a stack read through the same segment
    (or memory-map) path as full resolution, with ``stack.level``,
    ``attrs["image_uri"]`` (``"file.tif@i"``, grouping the levels of one
    series), ``attrs["downsample"]`` (see [`_level_attrs()`][_level_attrs]) and the
    series' pixel sizes times that factor (the OME-XML declares level 0
    only). Level ``k > 0`` has the source ``"file.tif@i#level=k"``, which
    re-opens it alone; a series without a pyramid has no ``level``.

Axes
    The user's axes describe the array as ``tifffile.imread(path, series=i)``
    returns it; where the file declares axes (OME, ImageJ) only the rank must
    agree. tifffile's ``S`` (samples of RGB(A) pixels) is named ``C``:
    lazystack's ``S`` is the sample axis of a training set.

Reading
    * Uncompressed, contiguous series are memory-mapped (read-only) and
      sliced: the fastest path.
    * Any other series (deflate, LZW, zstd, JPEG ..., tiled or stripped) is
      read segment by segment: a region decodes only the tiles, strips or
      pages it overlaps, through tifffile's own decoders (``imagecodecs``).
      Segments are located with tifffile's public page attributes
      (``shaped``, tile / strip shape, ``dataoffsets``, ``databytecounts``),
      read with ``os.pread`` and decoded with ``TiffPage.decode``; a series
      whose shape does not split into pages of segments is read whole. An
      uncompressed series in a truncated file is read page by page. The
      dask chunks follow that layout (whole tiles; runs of strips
      merged up to about 1 MiB; pages). Decoded segments go through the
      per-process chunk cache ([`lazystack.io.cache`][lazystack.io.cache],
      ``LAZYSTACK_CHUNK_CACHE_BYTES``, 0 disables it) keyed by the reader's
      token (path, mtime, size, series), so patches over the same tiles
      decode them once; several segments of one read decode in the shared
      thread pool ([`TiffReader.as_chunked()`][TiffReader.as_chunked]). A region inside one
      segment may come back as a read-only view of the cached segment.
    * ``whole_file_chunks=True`` ([`lazystack.load_iter_tiff()`][lazystack.load_iter_tiff]) makes
      the series one dask chunk, which a dask task reads whole with
      tifffile; ``extract_patch`` still reads only its region.

Handles
    Readers pickle as a small recipe (path, series, layout), never with an
    open file. Files are opened lazily per process through
    [`FileManager`][lazystack.io.process.FileManager] (a per-process bounded
    LRU of open files that follows the open-file limit:
    [`lazystack.io.process.max_open_files()`][lazystack.io.process.max_open_files]),
    so thousands of stacks do not exhaust file descriptors and a forked
    child re-opens instead of sharing its parent's file offset. Several
    threads read one file with ``os.pread``, which moves no shared file
    offset; tifffile's own seek + read (loading a page's tags, other files
    of a multi-file OME-TIFF) is serialised on a lock. Decoding runs
    outside it, in parallel. ``close()`` releases the
    handle; the reader re-opens when used again. The file's
    ``(st_ino, st_size, st_mtime_ns)`` is part of the recipe: a handle
    (re)opened on a file replaced or rewritten since [`open_tiff()`][open_tiff]
    raises [`SourceReadError`][lazystack.SourceReadError] ("changed since the stack was
    opened") instead of reading other data, also for stale pickled stacks.
    Each read checks the open file once (an ``fstat``). The other files of
    a multi-file OME-TIFF ([`source_files()`][source_files]) are checked the
    same way: their stamps are part of the recipe and of the token, and a
    read from one of them ``fstat``-s that file.

Errors
    A missing file is a [`SourceNotFoundError`][lazystack.SourceNotFoundError]; a directory,
    an empty or non-TIFF file a [`SourceFormatError`][lazystack.SourceFormatError]; a file
    the system cannot read (``OSError``) a [`SourceReadError`][lazystack.SourceReadError]; a
    compression tifffile cannot decode here a
    [`MissingDependencyError`][lazystack.MissingDependencyError] (known codec, decoder not
    installed) or [`SourceFormatError`][lazystack.SourceFormatError] (unknown codec),
    raised when the stack is created. Pixel data cut short (a truncated
    file) raises [`SourceReadError`][lazystack.SourceReadError] naming the file when
    the missing bytes are read, never zeros. Metadata that would make a read
    allocate per declared size is a [`SourceFormatError`][lazystack.SourceFormatError]
    at creation: OME-XML declaring more than ``max(2**20, file size / 8)``
    planes (tifffile makes a list entry per plane; the size is the bytes the
    file stores, not a sparse file's holes; a multi-file OME-TIFF counts the
    bytes the files it lists store), tiles or strips decoding
    to more than 64 MiB and 4 times their image. A FIFO, device or socket
    named like a TIFF is refused before it is opened (a FIFO would block).
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import math
import mmap
import os
import stat
import threading
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from functools import lru_cache, partial
from typing import Any, NamedTuple, TypeVar

import numpy as np

from ..core.axes import axes_or_none
from ..core.errors import (
    LazyStackError,
    MetadataWarning,
    MissingDependencyError,
    SourceFormatError,
    SourceNotFoundError,
    SourceReadError,
)
from ..core.units import unit_name
from ..io.chunked import FunctionChunkedReader, fetch_concurrently, normalize_key
from ..io.handles import (
    check_mapped_size,
    check_regular_file,
    check_stamp,
    file_stamp,
    split_source,
    system_path,
)
from ..io.process import FileManager, current_pid
from ..io.reader import OpenedSource, Reader, ReaderCapabilities

__all__ = ["TiffReader", "open_tiff", "propose_axes", "source_files", "tiff_axes_to_lazystack"]

_T = TypeVar("_T")

FORMAT = "tiff"
#: Runs of strips are merged into dask chunks of about this many bytes.
_STRIP_CHUNK_BYTES = 1 << 20
#: Memory-mapped pages larger than this are split along rows for dask.
_MEMMAP_CHUNK_BYTES = 64 << 20
#: Once this many bytes of a memory map may be resident, its pages are released.
_MEMMAP_RELEASE_BYTES = 256 << 20


def _pmd_bytes() -> int:
    """The span of one last-level page table (2 MiB with 4 KiB pages): the most one page fault maps.

    Fault-around and large page-cache folios map many pages per fault, but
    never beyond the page-table block around the faulting address.
    """
    with contextlib.suppress(OSError, ValueError), open("/sys/kernel/mm/transparent_hugepage/hpage_pmd_size") as fh:
        return int(fh.read())
    page = mmap.PAGESIZE
    return page * (page // 8)  # a page of 8-byte entries


#: Granule of the resident-memory bound of memory maps (see [`_MemmapHandle`][_MemmapHandle]). Capped at 16 MiB:
#: with 64 KiB pages a page-table block spans 512 MiB, more than the whole bound, and folios that large
#: are not what a patch read maps in practice.
_MAP_GRANULE = min(_pmd_bytes(), 16 << 20)
#: Pages whose segment offsets are remembered per open file.
_PAGES_MAX = 1 << 16
#: A tile (or strip) that decodes to more than this many bytes *and* to more than
#: [`_SEGMENT_OVERSIZE`][_SEGMENT_OVERSIZE] times its page is refused: a 7 KB file declaring 65536 x 65536
#: tiles over a 64 x 64 image would make every read allocate 8 GiB.
_SEGMENT_BYTES_FREE = 64 << 20
_SEGMENT_OVERSIZE = 4
#: OME-XML declaring more image planes than this, or than the file has bytes / 8, is refused before
#: tifffile builds its series: tifffile makes a list entry per declared plane (SizeT="2000000000" in a
#: 10 KB file is a 48 GB list).
_OME_PLANES_FREE = 1 << 20


# -- per-process open state ------------------------------------------------------------------
class _HandleClosedError(Exception):
    """The handle a read was using was closed by another thread: the reader acquires a fresh one."""


#: A read whose handle keeps being closed under it gives up after this many fresh handles.
_REOPEN_ATTEMPTS = 50


def _why(exc: BaseException) -> str:
    """An exception's message, or its type when it has none (a ``MemoryError()`` says nothing)."""
    return str(exc) or repr(exc)


def _check_still_a_file(path: str) -> None:
    """Before a handle (re)opens ``path``: a FIFO or device renamed over the file would block or never end."""
    try:
        check_regular_file(path, "TIFF file", "a TIFF file")
    except SourceFormatError as exc:
        msg = f"TIFF file {path!r} changed since the stack was opened: {exc}; load it again"
        raise SourceReadError(msg) from exc


def _fstat(fh: Any, path: str) -> os.stat_result:
    """stat of the file tifffile opened (its descriptor), else of the path."""
    with contextlib.suppress(AttributeError, OSError, ValueError):
        return os.fstat(fh.fileno())
    return os.stat(path)


class _MemmapHandle:
    """An open read-only memory map of a contiguous series (one per process).

    Pages of a file mapping count in the process's resident memory once
    touched, and one page fault may map a whole page-table block around the
    address ([`_MAP_GRANULE`][_MAP_GRANULE], 2 MiB with 4 KiB pages: fault-around,
    large page-cache folios). The map remembers which blocks its reads
    touched; once they could hold more than [`_MEMMAP_RELEASE_BYTES`][_MEMMAP_RELEASE_BYTES]
    (256 MiB, the chunk cache's default) it drops its pages
    (``madvise(MADV_DONTNEED)``: they stay in the page cache, a later read
    faults them back in), so random patches over a huge file keep the
    resident memory bounded.
    """

    def __init__(
        self, path: str, offset: int, dtype: str, shape: tuple[int, ...], stamp: tuple[int, int, int] | None = None
    ) -> None:
        dt = np.dtype(dtype)
        nbytes = math.prod(shape) * dt.itemsize
        _check_still_a_file(path)
        try:
            fh = open(path, "rb")  # noqa: SIM115 - closed below; the map keeps its own descriptor
        except FileNotFoundError:
            raise
        except OSError as exc:
            msg = f"cannot open TIFF file {path!r}: {exc}"
            raise SourceReadError(msg) from exc
        with fh:
            st = os.fstat(fh.fileno())
            check_stamp(f"TIFF file {path!r}", stamp, st)
            if offset + nbytes > st.st_size:
                msg = (
                    f"TIFF file {path!r} is truncated: its image data need bytes {offset} to {offset + nbytes}, "
                    f"the file has {st.st_size} bytes"
                )
                raise SourceReadError(msg)
            start = offset - offset % mmap.ALLOCATIONGRANULARITY
            raw = mmap.mmap(fh.fileno(), offset + nbytes - start, access=mmap.ACCESS_READ, offset=start)
        self.path = path
        #: the mapping (its own descriptor: ``size()`` is an fstat of the file as it is now)
        self._raw: mmap.mmap | None = raw
        #: a read-only ndarray over the mapping (it keeps the mapping alive while a view of it is in use)
        self.plain: np.ndarray | None = np.frombuffer(raw, dt, math.prod(shape), offset - start).reshape(shape)
        self._what = f"TIFF file {path!r}"
        self._end = offset + nbytes
        #: page-table blocks (address // _MAP_GRANULE) read since the pages were last dropped
        self._blocks: set[int] = set()
        self._address = int(self.plain.__array_interface__["data"][0])
        self._strides = self.plain.strides
        self._split = max(0, self.plain.ndim - 2)  # axes before a plane's rows

    def read(self, key: tuple[slice, ...], dtype: np.dtype[Any], *, copy: bool = True) -> np.ndarray:
        """The region ``key`` of the map in native byte order: a copy, or (``copy=False``) a view when possible.

        A view must be consumed at once (the patch fast path casts it to
        float32 straight away): the file's size is checked here, and a
        file truncated later makes reading the view's pages fail.
        """
        mm = self.plain
        if mm is None:
            raise _HandleClosedError(self.path)
        raw = self._raw
        if raw is not None:
            check_mapped_size(raw, self._end, self._what)
        view = mm[key]
        out = np.array(view, dtype=dtype) if copy else (view if view.dtype == dtype else view.astype(dtype))
        mine = self._blocks_of(key)
        blocks = self._blocks
        blocks.update(mine)
        # No lock: set updates are atomic, and a race on the size check only shifts one release.
        release = len(blocks) * _MAP_GRANULE > _MEMMAP_RELEASE_BYTES
        if release:
            blocks.clear()
            blocks.update(mine)  # the caller is about to read this region (a view faults it back in)
        if release and raw is not None and hasattr(raw, "madvise") and hasattr(mmap, "MADV_DONTNEED"):
            with contextlib.suppress(OSError, ValueError):
                raw.madvise(mmap.MADV_DONTNEED)
        return out

    def _blocks_of(self, key: tuple[slice, ...]) -> range | set[int]:
        """The page-table blocks (address // [`_MAP_GRANULE`][_MAP_GRANULE]) that reading ``key`` maps.

        The last two axes of a region span one run of bytes (its rows); the
        axes before them repeat that run, at offsets far apart in a large
        file (a 3D patch: one run per plane), so each run counts on its own.
        Runs per patch: plain loops, the common single run first.
        """
        granule = _MAP_GRANULE
        split = self._split
        first = last = self._address
        for k, st in zip(key, self._strides, strict=False):
            first += k.start * st
            last += (k.stop - 1) * st
        runs = 1
        for i in range(split):
            runs *= key[i].stop - key[i].start
        if runs == 1 or runs > 64:  # one run, or so many that the whole span is the honest count
            return range(first // granule, last // granule + 1)
        outer = key[:split]
        strides = self._strides
        run_first = first - sum(k.start * st for k, st in zip(outer, strides, strict=False))
        run_last = last - sum((k.stop - 1) * st for k, st in zip(outer, strides, strict=False))
        blocks: set[int] = set()
        for index in itertools.product(*(range(k.start, k.stop) for k in outer)):
            offset = sum(i * st for i, st in zip(index, strides, strict=False))
            blocks.update(range((run_first + offset) // granule, (run_last + offset) // granule + 1))
        return blocks

    def close(self) -> None:
        # Dropping the references unmaps once no read still uses the map (never closes under a reader).
        self.plain = None
        self._raw = None  # the mapping holds a descriptor of its own


class _TiffHandle:
    """An open ``TiffFile`` with the series to read and where its segments are (one per process)."""

    def __init__(
        self,
        path: str,
        series: int,
        stamp: tuple[int, int, int] | None = None,
        level: int = 0,
        others: tuple[tuple[str, tuple[int, int, int]], ...] = (),
    ) -> None:
        import tifffile

        self.path = path
        self.closed = False  # close requested
        self.released = False  # file actually closed
        self.stamp = stamp
        #: the other files of a multi-file OME-TIFF (real path -> stamp when the stack was opened)
        self.others = dict(others)
        self._reads = 0  # reads started (check_unchanged): each checks the other files it reads once
        self._checked: dict[str, int] = {}  # other file -> the read that last checked it
        self._users = 0
        self._state = threading.Lock()
        #: serialises tifffile's seek + read on the shared file objects (page loading, reads without pread)
        self.lock = threading.RLock()
        _check_still_a_file(path)
        self.tif = tifffile.TiffFile(path, mode="r")
        try:
            self.fh = self.tif.filehandle
            check_stamp(f"TIFF file {path!r}", stamp, _fstat(self.fh, path))
            if self.tif.is_ome and "FileName" in (self.tif.ome_metadata or ""):  # tifffile opens the listed files
                try:
                    _check_ome_planes(self.tif, path, self.fh.size)
                except SourceFormatError as exc:
                    msg = f"TIFF file {path!r} changed since the stack was opened: {exc}; load it again"
                    raise SourceReadError(msg) from exc
            self.fd: int | None = None
            if self.fh.is_file and hasattr(os, "pread"):
                with contextlib.suppress(AttributeError, OSError, ValueError):
                    self.fd = self.fh.fileno()
            self.series = self.tif.series[series].levels[level]
            self.keyframe = self.series.keyframe
            self.keyframe.decode  # noqa: B018 - build and cache the decode function now
            nodata = self.keyframe.nodata
            self.fillvalue = nodata if isinstance(nodata, (int, float)) else 0
            self.transform = self.series.transform
            self.page_cut = tuple(slice(0, int(n)) for n in self.keyframe.shaped[1:])
            #: (offset, file dtype) of a series stored as one uncompressed block (read page by page)
            self.raw = _raw_recipe(self.series, self.tif.byteorder)
            layout = _segment_layout(self.series, raw=self.raw is not None)
            self.chunks = tuple(self.series.shape) if layout is None else layout.chunks
            #: per axis of the series: (page step, segment step) and the page dimension it is (see _segment_layout)
            self.steps: tuple[tuple[int, int], ...] = () if layout is None else layout.steps
            self.page_axes: tuple[int | None, ...] = () if layout is None else layout.page_axes
            # page index -> (keyframe, page, segment offsets, byte counts, decode keywords), bounded
            self._pages: dict[int, tuple[Any, ...]] = {}
        except Exception:
            self.tif.close()
            raise

    def check_unchanged(self) -> None:
        """Raise SourceReadError when the open file was rewritten in place (size or mtime changed).

        Called once per read: it also starts a new read for
        [`_check_other()`][_check_other], which checks each other file a read
        takes segments from once.
        """
        self._reads += 1
        if self.stamp is not None and self.fd is not None:
            check_stamp(f"TIFF file {self.path!r}", self.stamp, os.fstat(self.fd))

    def _check_other(self, fh: Any) -> None:
        """Raise SourceReadError when ``fh`` (another file of a multi-file OME-TIFF) is not the file opened then.

        One ``fstat`` per read that takes segments from that file, as the
        master file gets ([`check_unchanged()`][check_unchanged]); a file that
        was missing when the stack was opened (its planes were zeros) and
        exists now changed too. Called under [`lock`][lock].
        """
        path = fh.path
        if self.stamp is None or self._checked.get(path) == self._reads:
            return
        stamp = self.others.get(path)
        what = f"TIFF file {path!r} (listed in the OME-XML of {self.path!r})"
        if stamp is None:
            msg = f"{what} changed since the stack was opened (it did not exist then); load it again"
            raise SourceReadError(msg)
        try:
            st = os.fstat(fh.fileno())
        except (AttributeError, ValueError, OSError):
            st = os.stat(path)
        check_stamp(what, stamp, st)
        self._checked[path] = self._reads

    def check_others_unchanged(self) -> None:
        """Raise SourceReadError when any other file of a multi-file OME-TIFF changed (before reading all)."""
        if self.stamp is None:
            return
        for path, stamp in self.others.items():
            what = f"TIFF file {path!r} (listed in the OME-XML of {self.path!r})"
            try:
                st = os.stat(path)
            except OSError as exc:
                msg = f"{what} changed since the stack was opened: {exc}; load it again"
                raise SourceReadError(msg) from exc
            check_stamp(what, stamp, st)

    def enter(self) -> bool:
        """Register a read in flight; False when the handle is already closed (acquire a fresh one)."""
        with self._state:
            if self.closed:
                return False
            self._users += 1
            return True

    def exit(self) -> None:
        """End a read; the last one out performs a close requested meanwhile."""
        with self._state:
            self._users -= 1
            close = self.closed and self._users == 0
        if close:
            self._close_file()

    def close(self) -> None:
        """Close now, or once the reads in flight have finished (their handle never closes under them)."""
        with self._state:
            self.closed = True
            close = self._users == 0
        if close:
            self._close_file()

    def _close_file(self) -> None:
        with self.lock:  # a locked read of another caller finishes first
            self.released = True
            self.tif.close()
            self._pages = {}  # a reader may keep this object: hold no page metadata

    def _page(self, frame: int) -> tuple[Any, ...]:
        """``(keyframe, page, offsets, byte counts, decode keywords)`` of page ``frame`` of the series (memoised)."""
        entry = self._pages.get(frame)
        if entry is None:
            with self.lock:
                if self.released:
                    raise _HandleClosedError(self.path)
                page = self.series[frame]
            if page is None or page.keyframe is None:  # a page missing from the file (OME): the fill value
                entry = (self.keyframe, None, (), (), {})
            else:
                keyframe = page.keyframe
                jpeg = {"jpegtables": page.jpegtables, "jpegheader": keyframe.jpegheader}
                kwargs = {k: v for k, v in jpeg.items() if v is not None}
                entry = (keyframe, page, page.dataoffsets, page.databytecounts, kwargs)
            if len(self._pages) >= _PAGES_MAX:
                self._pages.clear()
            self._pages[frame] = entry
        return entry

    def read_chunk(self, index: tuple[int, ...], dtype: np.dtype[Any]) -> np.ndarray | None:
        """Decode the chunk (tile / strip, or page of a raw series) at grid ``index``; None for a missing one.

        The chunk is one segment of one page: the page number and the
        segment number are dot products of ``index`` with [`steps`][steps]. The
        last strip of a page comes back cut at the image's edge.
        """
        frame = segment = 0
        for i, (page_step, segment_step) in zip(index, self.steps, strict=True):
            frame += i * page_step
            segment += i * segment_step
        if self.raw is not None:  # pages one after the other from the series' offset
            bytecount = math.prod(self.chunks) * np.dtype(self.raw[1]).itemsize
            data = self._read(self.fh, self.raw[0] + frame * bytecount, bytecount)
            return np.frombuffer(data, self.raw[1]).reshape(self.chunks).astype(dtype)
        keyframe, page, offsets, counts, kwargs = self._page(frame)
        if page is None or segment >= len(offsets):  # as tifffile: missing page, or segments missing (Philips)
            return None
        if segment >= len(counts):
            msg = f"TIFF file {self.path!r}: segment {segment} of page {frame} has no byte count (chunk {index})"
            raise SourceReadError(msg)
        offset, bytecount = offsets[segment], counts[segment]
        if not offset or not bytecount:
            return None
        data = self._read(page.parent.filehandle, offset, bytecount)  # another file for a multi-file OME-TIFF
        try:
            decoded = keyframe.decode(data, segment, **kwargs)[0]
            if decoded is None:
                return None
            if self.transform is not None:
                decoded = self.transform(decoded)
            # (depth, length, width, samples) -> the series' axes; a tile larger than the image is cut to it
            decoded = decoded[self.page_cut]
            shaped = (1, *decoded.shape)
            decoded = decoded.reshape(tuple(1 if j is None else shaped[j] for j in self.page_axes))
        except Exception as exc:
            msg = f"cannot decode a segment of TIFF file {self.path!r} at offset {offset}: {_why(exc)}"
            raise SourceReadError(msg) from exc
        return np.asarray(decoded, dtype=dtype)

    def _read(self, fh: Any, offset: int, bytecount: int) -> bytes:
        """``bytecount`` bytes at ``offset`` of ``fh`` (tifffile's file handle); a short read raises."""
        if offset + bytecount > fh.size:
            msg = (
                f"TIFF file {fh.path!r} is truncated: a segment of its image data spans bytes {offset} to "
                f"{offset + bytecount}, the file has {fh.size} bytes"
            )
            raise SourceReadError(msg)
        if self.fd is not None and fh is self.fh:
            if self.released:
                raise _HandleClosedError(self.path)
            data = os.pread(self.fd, bytecount, offset)  # moves no shared file offset: no lock
        else:
            with self.lock:
                if self.released:
                    raise _HandleClosedError(self.path)
                if fh.closed:  # another file of a multi-file OME-TIFF: tifffile closes it after reading its pages
                    _check_still_a_file(fh.path)
                    fh.open()  # closed with the handle (TiffFile.close closes every file of the series)
                if fh is not self.fh:
                    self._check_other(fh)
                fh.seek(offset)
                data = fh.read(bytecount)
        if len(data) != bytecount:
            msg = f"TIFF file {self.path!r}: read {len(data)} of {bytecount} bytes at offset {offset} (truncated?)"
            raise SourceReadError(msg)
        return data

    def check_extent(self) -> None:
        """Raise SourceReadError when any segment of the series lies beyond the end of the file."""
        with self.lock:
            if self.released:
                raise _HandleClosedError(self.path)
            pages = list(self.series.pages)
        for page in pages:
            if page is None:
                continue
            size = page.parent.filehandle.size
            for offset, count in zip(page.dataoffsets, page.databytecounts, strict=False):
                if offset and count and offset + count > size:
                    msg = (
                        f"TIFF file {self.path!r} is truncated: a segment of its image data spans bytes {offset} "
                        f"to {offset + count}, the file has {size} bytes"
                    )
                    raise SourceReadError(msg)

    def read_all(self, shape: tuple[int, ...], dtype: np.dtype[Any]) -> np.ndarray:
        """Read the whole series with tifffile (one sequential pass over the file)."""
        self.check_unchanged()
        self.check_others_unchanged()
        self.check_extent()
        try:
            with self.lock:
                if self.released:
                    raise _HandleClosedError(self.path)
                data = self.series.asarray(maxworkers=1)
        except _HandleClosedError:
            raise
        except Exception as exc:
            msg = f"cannot read image data of TIFF file {self.path!r}: {_why(exc)}"
            raise SourceReadError(msg) from exc
        return np.asarray(data, dtype=dtype).reshape(shape)


# -- the chunk reader ------------------------------------------------------------------------------
class TiffReader(Reader):
    """Chunk reader over one image series of a TIFF file (see the module docs).

    It fulfils the reader contract of [`lazystack.io.reader`][lazystack.io.reader].

    Made by [`open_tiff()`][open_tiff]; pickles as its recipe and re-opens lazily.

    Parameters
    ----------
    path : str
        The TIFF file.
    series : int
        Index of the image series.
    shape : tuple of int
        Shape of the series' level (as ``tifffile.imread(path, series=series, level=level)``).
    dtype : str
        Dtype of the data (native byte order).
    chunks : tuple of tuple of int
        dask chunks.
    native_chunks : tuple of int
        Shape of one tile / strip / page (memory map: the page).
    memmap : tuple or None
        ``(offset, file dtype)`` of a memory-mappable series, else None.
    token : str
        Name of the data (path, mtime, size, series, chunking).
    stamp : tuple of int, optional
        ``(st_ino, st_size, st_mtime_ns)`` of the file when the stack was
        opened; a handle opened later on another file raises
        [`SourceReadError`][lazystack.SourceReadError] (None: not checked).
    level : int, optional
        Resolution level of the series (tifffile's ``series.levels[level]``; 0 = full resolution).
    others : tuple of (str, tuple of int), optional
        The other files of a multi-file OME-TIFF (real path, stamp when the
        stack was opened): a read from one of them that has changed raises
        [`SourceReadError`][lazystack.SourceReadError] as for ``path`` itself.
    """

    shape: tuple[int, ...]
    dtype: np.dtype[Any]
    chunks: tuple[tuple[int, ...], ...]
    token: str
    capabilities: ReaderCapabilities

    def __init__(
        self,
        path: str,
        series: int,
        *,
        shape: tuple[int, ...],
        dtype: str,
        chunks: tuple[tuple[int, ...], ...],
        native_chunks: tuple[int, ...],
        memmap: tuple[int, str] | None,
        token: str,
        stamp: tuple[int, int, int] | None = None,
        level: int = 0,
        others: tuple[tuple[str, tuple[int, int, int]], ...] = (),
    ) -> None:
        self.path = path
        self.series = series
        self.level = int(level)
        self.shape = tuple(shape)
        self.dtype = np.dtype(dtype)
        self.chunks = chunks
        self.native_chunks = tuple(native_chunks)
        self.memmap = memmap
        self.token = token
        self.stamp = None if stamp is None else tuple(int(v) for v in stamp)
        self.others = tuple((str(p), tuple(int(v) for v in st)) for p, st in others)
        self.capabilities = ReaderCapabilities(memory_mapped=memmap is not None, compressed=memmap is None)
        self._pid = current_pid()
        self._manager = (
            FileManager(_TiffHandle, path, series, self.stamp, self.level, self.others)
            if memmap is None
            else FileManager(_MemmapHandle, path, *memmap, self.shape, self.stamp)
        )
        self._chunked: FunctionChunkedReader | None = None
        self._mm_handle: _MemmapHandle | None = None
        self._last_handle: _TiffHandle | None = None

    # pickling: the recipe only, a fresh manager on the other side
    def __reduce__(self) -> tuple[Any, ...]:
        names = ("shape", "chunks", "native_chunks", "memmap", "token", "stamp", "level", "others")
        recipe = {k: getattr(self, k) for k in names}
        return (partial(TiffReader, self.path, self.series, dtype=self.dtype.str, **recipe), ())

    @property
    def is_memmapped(self) -> bool:
        """Whether the series is read through a memory map."""
        return self.memmap is not None

    def close(self) -> None:
        """Close this process's handle (re-opened when read again)."""
        self._manager.close()

    def as_chunked(self) -> FunctionChunkedReader | None:
        """The chunk reader over the decoded segments (tiles, strips, pages), through the chunk cache.

        Decoded segments are kept in the per-process chunk cache
        ([`lazystack.get_chunk_cache()`][lazystack.get_chunk_cache], ``LAZYSTACK_CHUNK_CACHE_BYTES``;
        0 disables it) under this reader's token (path, mtime, size, series),
        so repeated patches over the same tiles decode them once. None for a
        memory-mapped series (slicing the map is already the fastest read).

        Returns
        -------
        lazystack.io.chunked.FunctionChunkedReader or None
        """
        if self.memmap is not None:
            return None
        chunked = self._chunked
        if chunked is None:
            chunked = FunctionChunkedReader(
                self.shape,
                self.dtype,
                self.native_chunks,
                self.token,
                fetch_one=self._fetch_segment,
                fetch_many=self._fetch_segments,
            )
            self._chunked = chunked
        return chunked

    def _fetch_segments(self, indices: Sequence[tuple[int, ...]]) -> dict[tuple[int, ...], np.ndarray]:
        """Decode whole segments (full size; a missing one is the fill value), several in the shared pool."""

        def run(handle: _TiffHandle) -> dict[tuple[int, ...], np.ndarray]:
            handle.check_unchanged()
            return fetch_concurrently(indices, lambda index: self._segment(handle, index))

        return self._with_handle(run)

    def _fetch_segment(self, index: tuple[int, ...]) -> np.ndarray:
        """Decode one whole segment (the read of most patches: no pool, no dict)."""

        def run(handle: _TiffHandle) -> np.ndarray:
            handle.check_unchanged()
            return self._segment(handle, index)

        return self._with_handle(run)

    def _segment(self, handle: _TiffHandle, index: tuple[int, ...]) -> np.ndarray:
        if self.native_chunks == self.shape:  # one segment grid cell: the whole series, read by tifffile
            return handle.read_all(self.shape, self.dtype)
        chunk = handle.read_chunk(index, self.dtype)
        return np.full(self.native_chunks, handle.fillvalue, dtype=self.dtype) if chunk is None else chunk

    def __repr__(self) -> str:
        how = "memmap" if self.memmap is not None else f"segments {self.native_chunks}"
        where = f"series={self.series}" + (f", level={self.level}" if self.level else "")
        return f"TiffReader({self.path!r}, {where}, shape={self.shape}, dtype={self.dtype}, {how})"

    @contextmanager
    def _acquire(self) -> Iterator[Any]:
        if self._pid != current_pid():  # forked: forget the parent's handles (the manager opens this process's own)
            self._last_handle = self._mm_handle = None
            self._pid = current_pid()
        try:
            with self._manager.acquire_context() as handle:
                yield handle
        except FileNotFoundError as exc:
            if isinstance(exc, SourceNotFoundError):
                raise
            msg = f"TIFF file {self.path!r} no longer exists: {exc}"
            raise SourceNotFoundError(msg) from exc
        except SourceReadError:
            raise
        except OSError as exc:
            msg = f"cannot read TIFF file {self.path!r}: {exc}"
            raise SourceReadError(msg) from exc

    def _with_handle(self, func: Callable[[Any], _T]) -> _T:
        """``func(handle)`` on this process's handle; again on a fresh one if another thread closed it."""
        last = self._last_handle
        if last is not None and self._pid == current_pid() and last.enter():
            # Fast path: the handle of the previous read, still open (close() or the LRU's eviction
            # closes it, and enter() then fails): no manager lock and context managers per read.
            try:
                return func(last)
            except _HandleClosedError:
                pass
            finally:
                last.exit()
        for _ in range(_REOPEN_ATTEMPTS):
            try:
                with self._acquire() as handle:
                    enter = getattr(handle, "enter", None)
                    if enter is None:
                        return func(handle)
                    if not enter():
                        continue
                    self._last_handle = handle
                    try:
                        return func(handle)
                    finally:
                        handle.exit()
            except _HandleClosedError:
                continue
        msg = (
            f"TIFF file {self.path!r}: another thread closed the file {_REOPEN_ATTEMPTS} times during one read; "
            "read again"
        )
        raise SourceReadError(msg)

    def _normalise(self, key: Any) -> tuple[tuple[slice, ...], tuple[int, ...]]:
        """Key -> (step-1 slices within bounds, axes to drop); a bad key's error names the file."""
        try:
            return normalize_key(key, self.shape)
        except (IndexError, TypeError) as exc:
            raise type(exc)(f"{exc} (TiffReader of {self.path!r}, shape {self.shape})") from None

    def __getitem__(self, key: Any) -> np.ndarray:
        """Read a region (ints and step-1 slices) as a numpy array."""
        slices, drop = self._normalise(key)
        out_shape = tuple(s.stop - s.start for s in slices)
        if 0 in out_shape:
            out = np.zeros(out_shape, dtype=self.dtype)
        elif self.memmap is not None:
            out = self._read_memmap(slices)
        else:
            out = self._read_segments(slices, out_shape)
        return out.reshape(tuple(n for i, n in enumerate(out_shape) if i not in drop)) if drop else out

    def read_region(self, region: tuple[slice, ...]) -> np.ndarray:
        """Read step-1 slices inside the bounds, one per axis, for immediate use.

        No key normalisation; the result may be a read-only view of a cached
        segment or of the memory map (cast or copy it at once).
        """
        if self.memmap is not None:
            return self._read_memmap(region, copy=False)
        return self._read_segments(region, tuple(s.stop - s.start for s in region))

    def read_cached(self, region: tuple[slice, ...]) -> np.ndarray | None:
        """``region`` from the chunk cache alone, or None (see
        [`lazystack.io.chunked.ChunkedReader.read_cached()`][lazystack.io.chunked.ChunkedReader.read_cached]).

        Reads nothing: always None for a memory-mapped series, whose reads skip the cache.
        """
        chunked = self._chunked
        if chunked is None or self.memmap is not None:
            return None
        return chunked.read_cached(region)

    def _read_memmap(self, slices: tuple[slice, ...], *, copy: bool = True) -> np.ndarray:
        # Fast path: the map this reader used last, while it is open (close() and the LRU's eviction close
        # it, then the manager gives a fresh one); saves the manager's lock and context managers per patch.
        handle = self._mm_handle
        if handle is not None and self._pid == current_pid():
            try:
                return handle.read(slices, self.dtype, copy=copy)
            except _HandleClosedError:
                pass

        def run(handle: _MemmapHandle) -> np.ndarray:
            self._mm_handle = handle
            return handle.read(slices, self.dtype, copy=copy)

        return self._with_handle(run)

    def _read_segments(self, slices: tuple[slice, ...], out_shape: tuple[int, ...]) -> np.ndarray:
        if out_shape == self.shape and len(self.chunks) and all(len(c) == 1 for c in self.chunks):
            # one dask chunk (load_iter_tiff): tifffile reads the series in one sequential pass
            return self._with_handle(lambda handle: handle.read_all(self.shape, self.dtype))
        chunked = self.as_chunked()
        assert chunked is not None
        # a region in one segment is a (read-only when cached) view of it; several are assembled into a new array
        return chunked.read(slices)


class _Layout(NamedTuple):
    """Where the segments (tiles / strips) of a series lie: see [`_segment_layout()`][_segment_layout]."""

    #: one segment's shape in the series' axes
    chunks: tuple[int, ...]
    #: per axis: how one step along it moves the page number and the segment number
    steps: tuple[tuple[int, int], ...]
    #: per axis: its dimension of tifffile's normalised page shape, None for an axis of pages or of length 1
    page_axes: tuple[int | None, ...]


def _page_split(series: Any) -> int | None:
    """Where the series shape splits into the grid of its pages and one page's shape (None if it does not).

    The shortest trailing run of axes holding one page's values (as
    tifffile's own zarr view splits it); the axes before it number the pages.
    """
    shape = tuple(int(n) for n in series.shape)
    size = math.prod(int(n) for n in series.keyframe.shaped)
    return next((k for k in range(len(shape), -1, -1) if math.prod(shape[k:]) == size), None)


def _segment_layout(series: Any, raw: bool = False) -> _Layout | None:
    """Where the segments of a series lie, from tifffile's public page attributes; None if it cannot tell.

    A page's normalised shape ``keyframe.shaped`` is (separate samples,
    depth, length, width, contiguous samples); its segments tile that shape
    in row-major order, TIFF's order and the order ``keyframe.decode``
    numbers them by. The series shape is the grid of pages followed by the
    page's normalised shape without (some of) its dimensions of length 1.
    So the page number and the segment number of a chunk are dot products
    of its index with per-axis steps. None (the series is read whole) for
    a shape this does not explain.

    With ``raw`` ([`_raw_recipe()`][_raw_recipe]: one uncompressed block of values,
    where a truncated file may list only its first page) a chunk is a page.
    """
    keyframe = series.keyframe
    shape = tuple(int(n) for n in series.shape)
    shaped = tuple(int(n) for n in keyframe.shaped)
    split = _page_split(series)
    if split is None:
        return None
    page_steps = [(math.prod(shape[k + 1 : split]), 0) for k in range(split)]
    if raw:
        return _Layout((1,) * split + shape[split:], tuple(page_steps + [(0, 0)] * (len(shape) - split)), ())
    if math.prod(shape[:split]) != len(series):
        return None
    tiled = keyframe.is_tiled
    segment = (
        1,
        keyframe.tiledepth if tiled else 1,
        keyframe.tilelength if tiled else keyframe.rowsperstrip,
        keyframe.tilewidth if tiled else keyframe.imagewidth,
        shaped[4],
    )
    if min(segment) < 1:
        return None
    segment = tuple(min(s, n) for s, n in zip(segment, shaped, strict=True))
    grid = [-(-n // s) for n, s in zip(shaped, segment, strict=True)]
    page_axes: list[int | None] = [None] * len(shape)
    j = len(shaped) - 1
    for k in range(len(shape) - 1, split - 1, -1):
        if shape[k] == 1:
            continue
        while j >= 0 and shaped[j] == 1:
            j -= 1
        if j < 0 or shaped[j] != shape[k]:
            return None
        page_axes[k] = j
        j -= 1
    steps = page_steps + [(0, 0 if j is None else math.prod(grid[j + 1 :])) for j in page_axes[split:]]
    chunks = tuple(1 if j is None else segment[j] for j in page_axes)
    return _Layout(chunks, tuple(steps), tuple(page_axes))


# -- opening -----------------------------------------------------------------------------------
def _split_series(path: str) -> tuple[str, int | None, int | None]:
    """``"file.tif@2"`` -> ``("file.tif", 2, None)``, ``"file.tif@2#level=1"`` -> ``("file.tif", 2, 1)``."""
    base, series, level = split_source(path)
    return (path, None, None) if series is None else (base, series, level)


def _check_file(path: str) -> os.stat_result:
    """The file's status; a missing file, a directory, a FIFO or device, an empty file raise."""
    # a FIFO named x.tif would block the open for ever, /dev/zero read without end
    st = check_regular_file(path, "TIFF file", "a TIFF file (.tif, .tiff, .ome.tif ...)", selector="series")
    if st.st_size == 0:
        msg = f"TIFF file {path!r} is empty (0 bytes)"
        raise SourceFormatError(msg)
    return st


def _stored_bytes(st: os.stat_result) -> int:
    """The bytes a file stores (``st_blocks``, where the system has it): a sparse file's hole holds no plane."""
    return min(st.st_size, getattr(st, "st_blocks", st.st_size) * 512)


def source_files(source: str | os.PathLike[str]) -> list[str]:
    """The local files a TIFF source reads: the file itself, then the other files its OME-XML lists.

    A multi-file OME-TIFF's master file lists (``UUID FileName``) the files
    that store its planes, beside it (beside the file a symbolic link names);
    tifffile reads their planes too. Every
    listed file that exists as a regular file is returned once (a file that
    lists itself, or is listed twice, is not repeated), whatever series
    stores planes in it. What writes refuse to replace
    ([`lazystack.write_ome_zarr()`][lazystack.write_ome_zarr]) and what a
    manifest's source identity covers
    ([`lazystack.sampling.manifest.source_identity()`][lazystack.sampling.manifest.source_identity]).

    Parameters
    ----------
    source : str or os.PathLike
        A TIFF file, optionally with a series / level selector (``"file.tif@1#level=2"``).

    Returns
    -------
    list of str
        ``[file, *other files]``; ``[file]`` alone for a file that is not a
        regular file, not a readable TIFF, or has no OME-XML listing other files.
    """
    file_path = _split_series(os.fspath(source))[0]
    files = [file_path]
    try:
        st = os.stat(file_path)
    except OSError:
        return files
    if not stat.S_ISREG(st.st_mode):  # a FIFO would block the open; a folder lists nothing
        return files
    listed = _ome_listed_names(file_path, file_stamp(st))
    if listed is None:
        return files
    folder, names = listed
    seen = [st]
    for name in names:
        other_file = os.path.join(folder, name)
        try:
            st = os.stat(other_file)
        except OSError:  # missing (tifffile fills its planes)
            continue
        if not stat.S_ISREG(st.st_mode):  # a folder, a FIFO: opening the master is refused anyway
            continue
        if not any(os.path.samestat(st, other) for other in seen):
            seen.append(st)
            files.append(other_file)
    return files


def _other_stamps(tif: Any, file_path: str, st: os.stat_result) -> tuple[tuple[str, tuple[int, int, int]], ...]:
    """``(real path, stamp)`` of each other file a multi-file OME-TIFF lists that exists (tifffile reads its planes).

    Keyed as tifffile names the files it opens (``FileHandle.path``: the
    real path), so a read knows which stamp the file it reads had when the
    stack was opened. Read from ``tif``, the open file (no second open of
    it); the master itself, which most OME-XML lists too (Bio-Formats lists
    every file of the set), is not another file.
    """
    text = tif.ome_metadata if tif.is_ome else None
    if not text or "FileName" not in text:
        return ()
    listed = _listed_names(text, tif.filehandle.dirname)
    if listed is None:
        return ()
    folder, names = listed
    master = os.path.realpath(file_path)
    stamps = []
    for name in names:
        other = os.path.realpath(os.path.join(folder, name))
        if other == master:  # tifffile reads those planes through the master's own handle
            continue
        try:
            other_st = os.stat(other)
        except OSError:  # missing: tifffile fills its planes
            continue
        if stat.S_ISREG(other_st.st_mode):  # the master under another name too: tifffile opens it as another
            stamps.append((other, file_stamp(other_st)))
    return tuple(stamps)


@lru_cache(maxsize=64)
def _ome_listed_names(file_path: str, stamp: tuple[int, int, int]) -> tuple[str, tuple[str, ...]] | None:
    """``(folder, sorted FileNames)`` the OME-XML of a TIFF file lists, None without any (cached per file version)."""
    import tifffile

    try:
        with tifffile.TiffFile(file_path, mode="r") as tif:
            text = tif.ome_metadata if tif.is_ome else None
            folder = tif.filehandle.dirname  # the folder of the file a symlink names: where tifffile looks
    except Exception:  # not a TIFF: the file alone
        return None
    return _listed_names(text, folder) if text else None


def _listed_names(text: str, folder: str) -> tuple[str, tuple[str, ...]] | None:
    """``(folder, sorted FileNames)`` of OME-XML ``text``, None without any (or for OME-XML tifffile ignores too)."""
    import xml.etree.ElementTree as ET

    try:
        root = ET.fromstring(text)
    except Exception:
        return None
    names = {str(e.get("FileName")) for e in root.iter() if e.tag.rsplit("}", 1)[-1] == "UUID" and e.get("FileName")}
    return (str(folder), tuple(sorted(names))) if names else None


def _check_ome_planes(tif: Any, path: str, file_size: int) -> None:
    """Refuse OME-XML that declares absurdly many planes before tifffile builds a list entry for each.

    tifffile's OME series has one entry per plane the XML declares
    (``SizeZ x SizeC x SizeT``, or all its ``Size*`` over the first page's
    pixels when ``SizeX`` / ``SizeY`` disagree with the pages, and
    ``NumPlanes`` / ``PlaneCount`` of each ``TiffData``), whatever the file
    holds. At most ``max(2**20, file size / 8)`` are accepted: every plane a
    TIFF file stores costs it more than 8 bytes (an IFD entry); ``file_size``
    is the bytes the file stores (see [`_stored_bytes()`][_stored_bytes]). The other
    files a multi-file OME-TIFF lists (``UUID FileName``) are stat-ed (tifffile
    opens them, and a FIFO would block that open) and the bytes those that are
    regular files store count in ``file size``: their planes are stored there
    (not a sparse file's apparent size: tifffile still makes an entry per
    plane of a listed file it cannot read).
    """
    if not tif.is_ome:
        return
    text = tif.ome_metadata
    if not text:
        return
    import xml.etree.ElementTree as ET

    try:
        root = ET.fromstring(text)
    except ET.ParseError:
        return  # tifffile falls back to the pages themselves
    page_size = max(1, int(tif.pages.first.size))
    # planes in other files, which tifffile opens: each stat-ed once, its size counted once (a file lists itself too)
    names = {str(e.get("FileName")) for e in root.iter() if e.tag.rsplit("}", 1)[-1] == "UUID" and e.get("FileName")}
    seen = [_fstat(tif.filehandle, path)]
    for name in sorted(names):
        listed = os.path.join(tif.filehandle.dirname, name)
        if not os.path.exists(listed) or os.path.isdir(listed):  # tifffile fills missing (unreadable) files' planes
            continue
        st = check_regular_file(listed, "TIFF file", f"a TIFF file (listed in the OME-XML of {path!r})")
        if not any(os.path.samestat(st, other) for other in seen):
            seen.append(st)
    total = file_size + sum(_stored_bytes(st) for st in seen[1:])
    most = max(_OME_PLANES_FREE, total // 8)
    for element in root.iter():
        tag = element.tag.rsplit("}", 1)[-1]
        if tag == "Pixels":
            try:
                sizes = {ax: int(element.get(f"Size{ax}", 1)) for ax in "XYZCT"}
            except ValueError:
                continue  # tifffile reports it
            if min(sizes.values()) < 1:
                continue
            planes = max(sizes["Z"] * sizes["C"] * sizes["T"], math.prod(sizes.values()) // page_size)
            field = ", ".join(f"Size{ax}={n}" for ax, n in sizes.items())
        elif tag == "TiffData":
            try:
                planes = max(int(element.get(name, 0)) for name in ("NumPlanes", "PlaneCount"))
            except ValueError:
                continue
            field = ", ".join(f"{n}={element.get(n)}" for n in ("NumPlanes", "PlaneCount") if element.get(n))
        else:
            continue
        if planes > most:
            more = f"it and the {len(seen) - 1} other file(s) it lists store" if len(seen) > 1 else ""
            msg = (
                f"TIFF file {path!r} declares {planes} image planes in its OME-XML ({tag}: {field}) but "
                f"{more or 'has'} {total} bytes; accepted: at most {most} planes (2**20, or "
                f"{'their' if more else 'the file'} size / 8): the metadata is corrupt"
            )
            raise SourceFormatError(msg)


def _check_segment_size(where: str, keyframe: Any) -> None:
    """Refuse tiles (strips) that decode to far more bytes than the image they cover."""
    itemsize = keyframe.dtype.itemsize
    segment = math.prod(int(n) for n in keyframe.chunks) * itemsize
    page = math.prod(int(n) for n in keyframe.shaped) * itemsize
    if segment > max(_SEGMENT_BYTES_FREE, _SEGMENT_OVERSIZE * page):
        what = "TileWidth / TileLength" if keyframe.is_tiled else "RowsPerStrip"
        msg = (
            f"{where}: its tiles / strips of shape {keyframe.chunks} ({what}) decode to {segment} bytes each, "
            f"for an image of {page} bytes ({keyframe.imagelength} x {keyframe.imagewidth}); accepted: a tile of at "
            f"most {_SEGMENT_OVERSIZE} times its image or {_SEGMENT_BYTES_FREE >> 20} MiB: the tags are corrupt"
        )
        raise SourceFormatError(msg)


def _check_codec(path: str, keyframe: Any) -> None:
    from tifffile import COMPRESSION, TIFF

    code = int(keyframe.compression)
    if code in TIFF.DECOMPRESSORS:
        return
    try:
        name = COMPRESSION(code).name
    except ValueError:
        msg = (
            f"TIFF file {path!r} uses compression {code}, which tifffile does not know; "
            "accepted: the codecs of tifffile / imagecodecs (none, deflate, LZW, zstd, JPEG, LZMA, PackBits ...)"
        )
        raise SourceFormatError(msg) from None
    msg = (
        f"TIFF file {path!r} is compressed with {name} ({code}), but no decoder for it is available: "
        "install or update imagecodecs (pip install imagecodecs)"
    )
    raise MissingDependencyError(msg)


def _check_layout(where: str, shape: tuple[int, ...], keyframe: Any) -> None:
    """Reject empty series and pages whose tags declare more segments than they store."""
    if 0 in shape:
        msg = f"{where}: image series has an empty dimension, shape {shape} (ImageWidth / ImageLength 0?)"
        raise SourceFormatError(msg)
    try:  # tifffile raises its own error for a RowsPerStrip of 0
        grid = keyframe.chunked
    except Exception as exc:
        msg = f"{where}: the first page's tiles / strips cannot be laid out ({_why(exc)}): the tags are corrupt"
        raise SourceFormatError(msg) from exc
    _check_segment_size(where, keyframe)
    expected = math.prod(int(n) for n in grid)
    stored = len(keyframe.dataoffsets)
    if stored != expected or len(keyframe.databytecounts) != stored:
        msg = (
            f"{where}: the first page declares {expected} segment(s) (image {keyframe.imagelength} x "
            f"{keyframe.imagewidth}, segments {keyframe.chunks}) but stores {stored} offset(s) and "
            f"{len(keyframe.databytecounts)} byte count(s): the tags are inconsistent"
        )
        raise SourceFormatError(msg)


def _token(path: str, series: int, mode: str, st: os.stat_result, level: int = 0, others: tuple[Any, ...] = ()) -> str:
    text = f"{os.path.realpath(path)}|{st.st_mtime_ns}|{st.st_size}|{series}|{mode}"
    text += f"|level{level}" if level else ""
    text += f"|{others}" if others else ""  # another file of a multi-file OME-TIFF rewritten: other pixels
    return f"tiff-{hashlib.sha1(os.fsencode(text)).hexdigest()[:20]}"


def _dask_chunks(
    shape: tuple[int, ...], native: tuple[int, ...], itemsize: int, memmapped: bool, yaxis: int | None
) -> tuple[tuple[int, ...], ...]:
    """dask chunks: whole native segments (tiles, pages; runs of strips merged, huge mapped pages split)."""
    from dask.array.core import normalize_chunks

    chunk = list(native)
    nbytes = math.prod(chunk) * itemsize
    if yaxis is not None and 0 <= yaxis < len(shape) - 1:
        xaxis = yaxis + 1
        if memmapped and nbytes > _MEMMAP_CHUNK_BYTES:
            chunk[yaxis] = max(1, (_MEMMAP_CHUNK_BYTES * chunk[yaxis]) // nbytes)
        elif not memmapped and chunk[xaxis] == shape[xaxis] and chunk[yaxis] < shape[yaxis] and nbytes:
            # strips (full width): merge runs of whole strips up to about 1 MiB; tiles keep their shape
            factor = max(1, _STRIP_CHUNK_BYTES // nbytes)
            chunk[yaxis] = min(shape[yaxis], chunk[yaxis] * factor)
    return normalize_chunks(tuple(chunk), shape=shape)


def _yaxis(shape: tuple[int, ...], keyframe: Any) -> int | None:
    """Position of the image rows in the series shape (None when squeezed away)."""
    contig_samples = keyframe.samplesperpixel > 1 and keyframe.planarconfig == 1
    yaxis = len(shape) - (3 if contig_samples else 2)
    if yaxis < 0 or shape[yaxis] != keyframe.imagelength:
        return None
    return yaxis


def _raw_recipe(series: Any, byteorder: str) -> tuple[int, str] | None:
    """``(offset, file dtype)`` of a series stored as one uncompressed block of whole values, else None."""
    keyframe = series.keyframe
    if series.dataoffset is None or series.transform is not None:
        return None
    try:
        if int(keyframe.compression) != 1 or not keyframe.is_memmappable or keyframe.fillorder != 1:
            return None
    except Exception:
        return None
    if keyframe.dtype is None or keyframe.bitspersample != keyframe.dtype.itemsize * 8:
        return None
    return int(series.dataoffset), np.dtype(byteorder + series.dtype.char).str


def _metadata(tif: Any, series_index: int, series: Any, axes: str, shape: tuple[int, ...]) -> tuple[dict, dict]:
    """Coordinates (channel names) and attrs (pixel sizes ...) the file declares."""
    coords: dict[str, Any] = {}
    attrs: dict[str, Any] = {"series": series_index, "file_axes": str(series.axes)}
    if series.name:
        attrs["series_name"] = str(series.name)
    sizes: dict[str, float] = {}
    file_axes = str(series.axes)
    channel_names: list[str] | None = None
    if tif.is_ome and tif.ome_metadata:
        try:
            channel_names, sizes, units = _ome_metadata(tif.ome_metadata, series_index)
            if units:
                attrs["physical_pixel_units"] = units
                # the NGFF names of the units (what OME-Zarr stacks carry): xarray coordinates' "units"
                attrs["units"] = {a: n for a, u in units.items() if (n := unit_name(u)) is not None}
        except Exception:
            channel_names, sizes = None, {}
    elif tif.is_imagej and tif.imagej_metadata is not None:
        sizes = _imagej_sizes(tif, series)
        unit = unit_name(tif.imagej_metadata.get("unit"))
        if sizes and unit is not None:
            attrs["units"] = dict.fromkeys(sizes, unit)
        labels = tif.imagej_metadata.get("Labels")
        if isinstance(labels, list) and "C" in file_axes and len(labels) == shape[file_axes.index("C")]:
            channel_names = [str(x) for x in labels]
    odd = {a: v for a, v in sizes.items() if not (math.isfinite(v) and v > 0)}
    shown = {a: v for a, v in odd.items() if a in file_axes}  # a 2-D image's PhysicalSizeZ="0" is no matter
    if shown:  # OME's PhysicalSize is a PositiveFloat; a 0 would put every pixel at one position
        field = "OME PhysicalSize" if tif.is_ome else "ImageJ spacing / resolution"
        msg = (
            f"TIFF file {tif.filehandle.path!r} (series {series_index}) declares pixel size(s) {shown} ({field}): "
            "not positive, left out"
        )
        warnings.warn(msg, MetadataWarning, stacklevel=3)
    if odd:
        sizes = {a: v for a, v in sizes.items() if a not in odd}
        for key in ("units", "physical_pixel_units"):
            if key in attrs:
                attrs[key] = {a: u for a, u in attrs[key].items() if a not in odd}
    if channel_names and "C" in file_axes and len(file_axes) == len(axes):
        pos = file_axes.index("C")
        if axes[pos] == "C" and len(channel_names) == shape[pos]:
            coords["C"] = channel_names
    if sizes:
        attrs["physical_pixel_sizes"] = sizes
    return coords, attrs


def _ome_metadata(xml: str, series_index: int) -> tuple[list[str] | None, dict[str, float], dict[str, str]]:
    from tifffile import xml2dict

    ome = xml2dict(xml).get("OME", {})
    images = ome.get("Image", [])
    if isinstance(images, dict):
        images = [images]
    if series_index >= len(images):
        return None, {}, {}
    pixels = images[series_index].get("Pixels", {})
    sizes: dict[str, float] = {}
    units: dict[str, str] = {}
    for ax in "XYZ":
        value = pixels.get(f"PhysicalSize{ax}")
        if value is not None:
            sizes[ax] = float(value)
            units[ax] = str(pixels.get(f"PhysicalSize{ax}Unit", "µm"))
    channels = pixels.get("Channel", [])
    if isinstance(channels, dict):
        channels = [channels]
    names = [str(c.get("Name", "")) for c in channels]
    return (names if names and all(names) else None), sizes, units


def _imagej_sizes(tif: Any, series: Any) -> dict[str, float]:
    sizes: dict[str, float] = {}
    meta = tif.imagej_metadata or {}
    if meta.get("spacing") is not None:
        sizes["Z"] = float(meta["spacing"])
    try:
        xres, yres = series.keyframe.get_resolution()
    except Exception:
        return sizes
    if xres and yres and (xres, yres) != (1.0, 1.0):
        sizes["X"] = 1.0 / float(xres)
        sizes["Y"] = 1.0 / float(yres)
    return sizes


@contextmanager
def _tiff_file(file_path: str, wanted: int | None) -> Iterator[tuple[Any, os.stat_result, list[Any]]]:
    """The open ``TiffFile``, its status and its image series (series ``wanted`` must be one of them).

    What [`open_tiff()`][open_tiff] and [`propose_axes()`][propose_axes] share: an ``OSError``
    (the file cannot be read) is a [`SourceReadError`][lazystack.SourceReadError], anything else
    tifffile raises (the bytes are not a TIFF it can read) a [`SourceFormatError`][lazystack.SourceFormatError].
    """
    import tifffile

    _check_file(file_path)
    try:
        tif = tifffile.TiffFile(file_path, mode="r")
    except OSError as exc:
        msg = f"cannot open TIFF file {file_path!r}: {exc}"
        raise SourceReadError(msg) from exc
    except Exception as exc:
        msg = f"{file_path!r} is not a readable TIFF file: {_why(exc)}"
        raise SourceFormatError(msg) from exc
    with tif:
        st = _fstat(tif.filehandle, file_path)
        try:
            _check_ome_planes(tif, file_path, _stored_bytes(st))
            all_series = list(tif.series)
        except LazyStackError:
            raise
        except OSError as exc:
            msg = f"cannot read the image series of TIFF file {file_path!r}: {exc}"
            raise SourceReadError(msg) from exc
        except Exception as exc:
            msg = f"cannot read the image series of TIFF file {file_path!r}: {_why(exc)}"
            raise SourceFormatError(msg) from exc
        if not all_series:
            msg = f"TIFF file {file_path!r} contains no image series"
            raise SourceFormatError(msg)
        if wanted is not None and wanted >= len(all_series):
            msg = (
                f"TIFF file {file_path!r} has no image series {wanted}: "
                f"it has {len(all_series)} series, accepted '@0' to '@{len(all_series) - 1}'"
            )
            raise SourceNotFoundError(msg)
        yield tif, st, all_series


def open_tiff(
    path: str, axes: str, whole_file_chunks: bool = False, levels: tuple[int, ...] | None = None
) -> list[OpenedSource]:
    """Open the image series of a TIFF file as chunk readers (metadata only).

    Parameters
    ----------
    path : str
        A TIFF file, ``"file.tif@i"`` for series ``i`` alone, or
        ``"file.tif@i#level=k"`` for resolution level ``k`` of series ``i``
        alone (whatever ``levels`` says).
    axes : str
        Validated axes of every series (as tifffile returns the array; RGB
        samples are ``C``).
    whole_file_chunks : bool, optional
        One dask chunk per series ([`lazystack.load_iter_tiff()`][lazystack.load_iter_tiff]).
    levels : tuple of int, optional
        Resolution levels to open of every pyramidal series (sorted, as
        [`lazystack.core.levels.parse_levels()`][lazystack.core.levels.parse_levels] returns them); None for all.
        A series without a pyramid is level 0.

    Returns
    -------
    list of OpenedSource
        Per series (a single one for ``"file.tif@i"``), one per selected
        level, level 0 first (see the module documentation, *Pyramids*).

    Raises
    ------
    SourceNotFoundError
        If the file, the requested series or a requested level does not
        exist (the message lists the series' levels).
    SourceFormatError
        For a directory, an empty file, a file that is not a TIFF, or an
        unknown compression.
    SourceReadError
        If the file cannot be read (an ``OSError``: permission denied, I/O error).
    MissingDependencyError
        If the compression's decoder is not installed.
    ShapeMismatchError
        If ``axes`` does not have the rank of a series.
    """
    file_path, wanted, wanted_level = _split_series(os.fspath(path))
    with _tiff_file(file_path, wanted) as (tif, st, all_series):
        indices = [wanted] if wanted is not None else list(range(len(all_series)))
        opened = []
        for i in indices:
            pyramid = list(all_series[i].levels)
            where = f"TIFF file {file_path!r}" + (f" series {i}" if len(all_series) > 1 else "")
            asked = (wanted_level,) if wanted_level is not None else levels
            if asked is not None and asked[-1] >= len(pyramid):
                given = f"the source {os.fspath(path)!r}" if wanted_level is not None else f"levels={list(asked)}"
                msg = (
                    f"{where} has {len(pyramid)} resolution level(s) (0 to {len(pyramid) - 1}), "
                    f"not level {asked[-1]} asked for by {given}"
                )
                raise SourceNotFoundError(msg)
            for level in range(len(pyramid)) if asked is None else asked:
                opened.append(
                    _open_series(tif, file_path, i, level, pyramid, axes, whole_file_chunks, st, whole=wanted is None)
                )
    return opened


def _open_series(
    tif: Any,
    file_path: str,
    i: int,
    level: int,
    pyramid: list[Any],
    axes: str,
    whole_file_chunks: bool,
    st: os.stat_result,
    *,
    whole: bool,
) -> OpenedSource:
    """One resolution level of series ``i`` (``pyramid``: the series' levels) as an OpenedSource."""
    from ..core.axes import check_rank

    series = pyramid[level]
    n_series = len(tif.series)
    shape = tuple(int(n) for n in series.shape)
    where = f"TIFF file {file_path!r}" + (f" series {i}" if n_series > 1 else "")
    if len(pyramid) > 1:
        where += f" level {level}"
    declared = str(series.axes) if series.kind in {"ome", "imagej"} else None
    check_rank(axes, shape, where, declared)
    if series.keyframe.dtype is None or series.dtype is None:
        msg = f"{where}: unsupported pixel type (tifffile cannot map it to a numpy dtype)"
        raise SourceFormatError(msg)
    _check_codec(file_path, series.keyframe)
    _check_layout(where, shape, series.keyframe)
    raw = _raw_recipe(series, tif.byteorder)
    # a truncated raw series is read page by page, so that the intact part stays readable
    memmap = raw if raw is not None and raw[0] + series.size * series.dtype.itemsize <= tif.filehandle.size else None
    if memmap is not None:  # one page per chunk
        split = _page_split(series)
        native = shape if split is None else (1,) * split + shape[split:]
    else:  # one segment (page of a raw series) per chunk; a layout it cannot explain: one chunk
        layout = _segment_layout(series, raw=raw is not None)
        native = shape if layout is None else layout.chunks
    dtype = np.dtype(series.dtype).newbyteorder("=")
    others = _other_stamps(tif, file_path, st) if memmap is None else ()
    if whole_file_chunks:
        chunks: tuple[tuple[int, ...], ...] = tuple((n,) for n in shape)
        mode = "whole"
    else:
        chunks = _dask_chunks(shape, native, dtype.itemsize, memmap is not None, _yaxis(shape, series.keyframe))
        mode = "memmap" if memmap is not None else "segments"
    reader = TiffReader(
        # absolute, as the system resolves it (the source keeps the user's spelling): a dask worker or an
        # unpickled stack in another working folder reads the same file, not a missing or another one
        system_path(file_path),  # joined to the current folder only when relative (getcwd() raises in a removed one)
        i,
        shape=shape,
        dtype=dtype.str,
        chunks=chunks,
        native_chunks=native,
        memmap=memmap,
        token=_token(file_path, i, mode, st, level, others),
        stamp=file_stamp(st),
        level=level,
        others=others,
    )
    coords, attrs = _metadata(tif, i, series, axes, shape)
    # series 0 of a whole file is the path itself; "file@i" re-opens exactly series i, "file@i#level=k" its level k
    source = f"{file_path}@{i}" + (f"#level={level}" if level else "")
    if whole and i == 0 and not level:
        source = file_path
    if len(pyramid) > 1:
        attrs.update(_level_attrs(pyramid, level, f"{file_path}@{i}", attrs.get("physical_pixel_sizes")))
    return OpenedSource(reader=reader, source=source, format=FORMAT, axes=axes, coords=coords, attrs=attrs)


def _level_attrs(pyramid: list[Any], level: int, image_uri: str, sizes: dict[str, float] | None) -> dict[str, Any]:
    """``level``, ``image_uri``, ``downsample`` and the scaled pixel sizes of one level of a pyramid.

    The downsample factor of an axis (``Z``, ``Y``, ``X`` of the file's axes)
    is the integer ``f`` nearest the full-resolution size over the level's
    size when the level's size is that size divided by ``f``, rounded up
    or down (65 -> 33 pixels: 2, as ``data[::2]`` gives); else the ratio of
    the sizes itself. The OME-XML declares the pixel size of level 0 only.
    """
    full, this = pyramid[0], pyramid[level]
    downsample: dict[str, float] = {}
    if str(full.axes) == str(this.axes) and len(full.shape) == len(this.shape):
        for letter, n0, n in zip(str(full.axes), full.shape, this.shape, strict=True):
            if letter in "ZYX" and n > 0:
                downsample[letter] = _factor(int(n0), int(n))
    attrs: dict[str, Any] = {"level": level, "image_uri": image_uri, "downsample": downsample}

    if sizes:
        attrs["physical_pixel_sizes"] = {a: v * downsample.get(a, 1.0) for a, v in sizes.items()}
    return attrs


def _factor(full: int, size: int) -> float:
    """Downsample factor of an axis of ``full`` pixels shown in ``size`` (see [`_level_attrs()`][_level_attrs])."""
    f = max(1, round(full / size))
    if size in (full // f, -(-full // f)):
        return float(f)
    return full / size


# -- axes the file declares ---------------------------------------------------------------------
def propose_axes(path: str | os.PathLike[str]) -> str | None:
    """The axes a TIFF declares for a series, as a lazystack axes string, or None.

    The axes tifffile reads from OME-XML, ImageJ or other metadata for the
    series (``path@N``: series ``N``, else series 0), translated by
    [`tiff_axes_to_lazystack()`][tiff_axes_to_lazystack].

    Parameters
    ----------
    path : str or os.PathLike
        A TIFF file, or ``"file.tif@i"`` for series ``i``.

    Returns
    -------
    str or None

    Raises
    ------
    SourceFormatError
        When the file is read but is not a TIFF tifffile can read.
    SourceReadError
        When the file cannot be read (an ``OSError``: permission denied, I/O error).
    SourceNotFoundError
        When the file or series ``i`` does not exist.
    """
    file_path, series, _ = _split_series(os.fspath(path))
    with _tiff_file(file_path, series) as (_, _, all_series):
        declared = all_series[series or 0].axes
    return tiff_axes_to_lazystack(declared)


def tiff_axes_to_lazystack(declared: str) -> str | None:
    """Translate tifffile's axes codes to lazystack's, None if impossible.

    Parameters
    ----------
    declared : str
        Axes as tifffile's ``TiffPageSeries.axes`` gives them.

    Returns
    -------
    str or None

    Examples
    --------
    >>> tiff_axes_to_lazystack("TZCYX"), tiff_axes_to_lazystack("YXS"), tiff_axes_to_lazystack("QYX")
    ('TZCYX', 'YXC', None)
    """
    declared = declared.upper()
    if "S" in declared and "C" in declared:
        return None
    return axes_or_none(declared.replace("S", "C"))
