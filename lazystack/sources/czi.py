"""Zeiss CZI back end: one lazy stack per scene, read by region with pylibCZIrw.

Needs the ``czi`` extra (``pip install lazystack[czi]``: bioio, bioio-czi and
pylibCZIrw); lazystack imports without it and raises
[`MissingDependencyError`][lazystack.MissingDependencyError] when a CZI is opened.

How a CZI maps onto a stack
---------------------------
The user gives ``"SCYX"``, ``"SCZYX"`` or ``"SCTYX"``; the third letter of a
five-letter form is the *depth* axis, kept as the stack's spatial ``Z``
(a ``T`` depth is exposed in the ``Z`` slot of the stack, its real name is in
``attrs["depth_axis"]``). Of the file's other dimensions:

* ``C`` is the channel axis; RGB pixel types (``Bgr24``, ``Bgr48``,
  ``Bgr96Float``) turn each colour sample into a channel, in **R, G, B**
  order (pylibCZIrw returns B, G, R; lazystack reorders);
* every other dimension (``T`` and ``Z`` unless one is the depth, and the
  rarer ``R``, ``I``, ``H``, ``V``, ``B``) is merged into the sample axis
  ``S``, exactly as CAREamics' ``CziImageStack`` does: in the order of
  pylibCZIrw's ``total_bounding_box`` (``T``, ``Z``, then the others as the
  file has them), size-1 dimensions included, and a sample index unravels
  over them in C order, so ``T`` is outermost: with ``T`` and ``Z`` merged,
  ``sample = t * n_Z + z``;
* mosaic tiles (``M``) are stitched by libCZI into the scene's plane; the
  plane spans the scene's layer-0 bounding box (offsets may be negative),
  and pixels no tile covers are 0.

Pyramids
--------
A CZI may store *pyramid sub-blocks*: minified copies of its tiles (ZEN
writes them for large scans; ``PyramidInfo`` in the metadata). Their zoom
(``SubBlockInfo.get_zoom()``: stored size over covered size, 0.5 for a
layer minified 2 x) gives the scene's levels: level 0 is full resolution,
level ``k`` the ``k``-th coarser downsample factor ``f`` the scene's
sub-blocks store (``round(1 / zoom)``: 2, 4 ... or 3, 9 ...), ordered by
factor. ``levels=`` selects them as for OME-Zarr (every level by default
in [`lazystack.load()`][lazystack.load] and the command line, full resolution in
[`lazystack.load_czis()`][lazystack.load_czis], as CAREamics' ``load_czis``). A level stack has
``stack.level``, ``attrs["image_uri"]`` (the scene's source, grouping its
levels), ``attrs["downsample"]`` (``{"Y": f, "X": f}``) and X / Y pixel
sizes multiplied by ``f``; its plane is ``ceil(h / f) x ceil(w / f)``
pixels, pixel ``(y, x)`` covering the scene's full-resolution pixels
``[f y, f y + f) x [f x, f x + f)``. It is read with pylibCZIrw's
``read(roi=..., zoom=1 / f)`` over rectangles aligned to that grid: libCZI
paints the sub-blocks of the stored layer of that zoom (no resampling when
the layer's minification is exactly ``f``). Only stored layers are offered:
a scene without pyramid sub-blocks is one level (its stack has no
``level``), never a resampled view of full resolution. Level ``k > 0`` has
the source ``"file.czi@s#level=k"`` (``"file.czi#level=k"`` without
scenes), which re-opens it alone.

The stack's [`original_axes`][lazystack.LazyImageStack.original_axes] and
``original_data_shape`` are CAREamics': the given axes with ``S`` replaced
by the merged dimensions and their sizes, e.g. ``"TZBCYX"`` and
``(3, 5, 1, 2, 170, 240)`` for a file with 3 time points, 5 planes and a
size-1 ``B`` read as ``"SCYX"``; ``"ZCTYX"`` for ``"SCTYX"``. The stack's
xarray has these dims. ``attrs["sample_dims"]`` and ``attrs["sample_shape"]``
hold the merged dimensions, outer to inner; ``attrs["czi_dims"]`` and
``attrs["czi_shape"]`` all of the file's own dimensions of the scene in the
bounding box's order (``C`` included, the scene's ``Y`` and ``X`` last).

Reads
-----
The reader asks pylibCZIrw for the rectangle a key covers, one plane (one
``T``/``Z``/``C``/... coordinate) at a time, so ``extract_patch`` reads only
the sub-blocks the patch overlaps. The dask chunks hold at most one plane,
split into blocks of at most [`BLOCK`][BLOCK] x [`BLOCK`][BLOCK] pixels.

Handles live in a [`FileManager`][lazystack.io.process.FileManager]
shared by the scenes of a file: a reader pickles as its recipe and reopens in
the process that uses it. pylibCZIrw holds the GIL while it reads and does not
document its handles as thread-safe, so reads on one handle are serialised
with a lock (processes give the parallelism).
"""

from __future__ import annotations

import hashlib
import itertools
import math
import os
import threading
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..core.errors import (
    AxesError,
    ShapeMismatchError,
    SourceFormatError,
    SourceNotFoundError,
    SourceReadError,
    import_optional,
)
from ..io.cache import get_chunk_cache
from ..io.chunked import FunctionChunkedReader, normalize_key
from ..io.handles import check_regular_file, check_stamp, file_stamp, split_source, system_path
from ..io.process import FileManager
from ..io.reader import OpenedSource, Reader
from .czi_check import check_czi_structure

__all__ = ["BLOCK", "CZI_AXES", "SIZE_DIGITS", "CziSceneReader", "open_czi", "propose_axes", "rounded_size"]

CZI_AXES = ("SCYX", "SCZYX", "SCTYX")
"""The accepted axes of [`lazystack.load_czis()`][lazystack.load_czis]."""

BLOCK = 2048
"""Largest height and width of a dask chunk; larger planes are split into blocks."""

CACHE_BLOCK = 512
"""Height and width of the unit kept in the decoded-chunk cache when the file's tile size is unusual."""

#: Tile sizes (h and w) used as the cache unit: the most common sub-block size, when within this range.
_CACHE_TILE_RANGE = (64, 1024)

#: pixel type -> (numpy dtype, samples per pixel)
PIXEL_TYPES: dict[str, tuple[str, int]] = {
    "Gray8": ("uint8", 1),
    "Gray16": ("uint16", 1),
    "Gray32Float": ("float32", 1),
    "Bgr24": ("uint8", 3),
    "Bgr48": ("uint16", 3),
    "Bgr96Float": ("float32", 3),
}


def _import_pyczi() -> Any:
    return import_optional("pylibCZIrw.czi", "reading CZI files", "lazystack[czi] (pip install 'lazystack[czi]')")


# -- the handle: a pylibCZIrw reader plus a lock ---------------------------------------------
class _CziHandle:
    """An open pylibCZIrw ``CziReader`` and the lock that serialises its reads.

    [`close()`][close] takes the lock, so it waits for an in-flight read, and marks
    the handle closed: a reader that then gets the lock finds [`closed`][closed]
    and asks the file manager for a fresh handle instead of using a closed one.
    """

    def __init__(self, path: str) -> None:
        pyczi = _import_pyczi()
        try:
            self.doc = pyczi.CziReader(path)
        except (RuntimeError, MemoryError, ValueError) as exc:
            msg = f"cannot open {path!r} as a CZI file (corrupt or truncated?): {exc}"
            raise SourceFormatError(msg) from exc
        self.lock = threading.Lock()
        self.closed = False

    def close(self) -> None:
        """Close the file once the read in flight (if any) is done."""
        with self.lock:
            if not self.closed:
                self.closed = True
                self.doc.close()


#: How many times a read asks for a fresh handle when another thread keeps closing the one it got.
_REOPEN_TRIES = 20


@contextmanager
def _live_handle(manager: FileManager, where: str) -> Iterator[_CziHandle]:
    """This process's open handle of the file, with its lock held.

    A handle closed by another thread (``close()``, or the manager's LRU evicting
    it) between the manager handing it out and the lock being taken is
    dropped and the manager asked again (it reopens the file).
    """
    for _ in range(_REOPEN_TRIES):
        with manager.acquire_context() as handle, handle.lock:
            if not handle.closed:
                yield handle
                return
    msg = f"the handle of CZI {where!r} was closed by another thread {_REOPEN_TRIES} times in a row during a read"
    raise SourceReadError(msg)


# -- metadata, read once per file ------------------------------------------------------------
@dataclass(frozen=True)
class _FileInfo:
    """What lazystack needs of a CZI file, read once when it is opened."""

    dims: dict[str, tuple[int, int]]  # letter -> (start, size), every plane dimension the sub-blocks use
    scenes: dict[int, tuple[int, int, int, int]]  # CZI scene index -> layer-0 (x, y, w, h); empty: no scenes
    total_rect: tuple[int, int, int, int]
    pixel_types: tuple[str, ...]  # per channel
    scene_names: dict[int, str]
    channel_names: tuple[str, ...] | None
    pixel_sizes: dict[str, float]  # micrometres
    tile: tuple[int, int] | None = None  # most common (h, w) of the layer-0 sub-blocks (the tile size)
    # (letter, size) of every non-spatial dimension in the order of pylibCZIrw's total_bounding_box
    # (T, Z, C always, size 1 when absent; then R, I, H, V, B as present): the order CAREamics merges them in
    order: tuple[tuple[str, int], ...] = ()
    # CZI scene index (None without scenes) -> downsample factors its sub-blocks store, 1 (layer 0) first
    pyramid: dict[int | None, tuple[int, ...]] = field(default_factory=dict)


def _read_info(path: str, handle: _CziHandle) -> _FileInfo:
    # the caller holds the handle's lock
    doc = handle.doc
    lo: dict[str, int] = {}
    hi: dict[str, int] = {}
    tiles: Counter[tuple[int, int]] = Counter()
    factors: dict[int | None, set[int]] = {}
    count = 0

    def visit(_index: int, info: Any) -> bool:
        nonlocal count
        count += 1
        rect, size = info.logicalRect, info.physicalSize
        coordinate = info.coordinate.to_dict()
        if rect.w == size.w and rect.h == size.h:  # layer 0 (not a pyramid level)
            tiles[(int(rect.h), int(rect.w))] += 1
        else:  # a pyramid sub-block: libCZI's zoom (stored over covered size, along its longer side)
            zoom = float(info.get_zoom())
            if 0 < zoom < 1:
                scene = int(coordinate["S"]) if "S" in coordinate else None
                factors.setdefault(scene, set()).add(max(2, round(1 / zoom)))
        for dim, value in coordinate.items():
            if dim in ("S", "M"):
                continue
            v = int(value)
            lo[dim], hi[dim] = min(lo.get(dim, v), v), max(hi.get(dim, v), v)
        return True

    try:
        doc.enumerate_subblocks(visit)
        scenes = {int(k): (r.x, r.y, r.w, r.h) for k, r in doc.scenes_bounding_rectangle_no_pyramid.items()}
        t = doc.total_bounding_rectangle_no_pyramid
        bbox = doc.total_bounding_box_no_pyramid
        raw_xml = doc.raw_metadata
        dims = {d: (lo[d], hi[d] - lo[d] + 1) for d in lo}
        _check_plane_count(path, dims, scenes, count)  # before anything loops or allocates per declared plane
        c_start, n_c = dims.get("C", (0, 1))
        pixel_types = tuple(doc.get_channel_pixel_type(c_start + i) for i in range(n_c))
    except (RuntimeError, MemoryError, ValueError) as exc:
        if isinstance(exc, SourceFormatError):
            raise
        msg = f"cannot read the structure of CZI file {path!r} (corrupt or truncated?): {exc}"
        raise SourceFormatError(msg) from exc
    if count == 0 or t.w <= 0 or t.h <= 0:
        msg = f"CZI file {path!r} holds no image data (no sub-blocks)"
        raise SourceFormatError(msg)
    valid = [p for p in pixel_types if p != "Invalid"]
    if not valid:
        msg = (
            f"CZI file {path!r} declares no valid pixel type for its channels (pylibCZIrw reports "
            f"{list(pixel_types) or 'none'}: unknown pixel type code in the sub-blocks, corrupt file?); "
            f"lazystack reads the pixel types {list(PIXEL_TYPES)}"
        )
        raise SourceFormatError(msg)
    # a channel without sub-blocks reports "Invalid": it is read with the type of the others
    pixel_types = tuple(p if p != "Invalid" else valid[0] for p in pixel_types)
    for p in pixel_types:
        if p not in PIXEL_TYPES:
            msg = f"CZI file {path!r} has pixel type {p!r}, which lazystack cannot read; supported: {list(PIXEL_TYPES)}"
            raise SourceFormatError(msg)
    root = _parse_xml(raw_xml)
    return _FileInfo(
        dims=dims,
        scenes=scenes,
        total_rect=(t.x, t.y, t.w, t.h),
        pixel_types=pixel_types,
        scene_names=_scene_names(root),
        channel_names=_channel_names(root, dims.get("C", (0, 1))[1]),
        pixel_sizes=_pixel_sizes(root),
        tile=tiles.most_common(1)[0][0] if tiles else None,
        order=_dims_order(bbox, dims),
        pyramid={scene: (1, *sorted(found)) for scene, found in factors.items()},
    )


#: the most planes (the product of the non-spatial dimensions' ranges) a CZI may declare beyond 256 per sub-block:
#: a sub-block coordinate such as a channel Start of 2**31 - 1 (a flipped bit) would make lazystack loop or allocate
#: per declared plane; a real file has a sub-block for most of its planes
MAX_SPARSE_PLANES = 2**20


def _check_plane_count(
    path: str, dims: dict[str, tuple[int, int]], scenes: dict[int, tuple[int, int, int, int]], count: int
) -> None:
    """Refuse declared dimensions no real file has: more planes than ``max(MAX_SPARSE_PLANES, 256 * sub-blocks)``,
    a negative scene index, or a scene with no area (``SourceFormatError`` naming the file and the dimension)."""
    planes = math.prod(size for _, size in dims.values())
    if planes > max(MAX_SPARSE_PLANES, 256 * count):
        ranges = ", ".join(f"{d} {start}..{start + size - 1}" for d, (start, size) in dims.items())
        msg = (
            f"CZI file {path!r} is corrupt: its {count} sub-block(s) span {planes} planes ({ranges}); lazystack "
            f"accepts at most max({MAX_SPARSE_PLANES}, 256 per sub-block) (a damaged sub-block coordinate?)"
        )
        raise SourceFormatError(msg)
    for scene, (_, _, w, h) in scenes.items():
        if scene < 0 or w <= 0 or h <= 0:
            msg = (
                f"CZI file {path!r} is corrupt: scene {scene} has a {w} x {h} bounding rectangle; a scene has an "
                "index >= 0 and a positive width and height"
            )
            raise SourceFormatError(msg)


def _dims_order(bbox: dict[str, tuple[int, int]], dims: dict[str, tuple[int, int]]) -> tuple[tuple[str, int], ...]:
    """The file's non-spatial dimensions with their sizes, in pylibCZIrw's ``total_bounding_box`` order.

    Sizes are those of the sub-blocks' coordinates (what is read); a dimension
    the sub-blocks do not use (pylibCZIrw always lists ``T``, ``Z`` and ``C``)
    has size 1. A dimension the sub-blocks use but the bounding box omits
    (none in libCZI's current dimension set) goes last.
    """
    order = [d for d in bbox if d not in ("X", "Y", "S", "M")]
    order += [d for d in dims if d not in order]
    return tuple((d, dims[d][1] if d in dims else 1) for d in order)


def _parse_xml(raw: str) -> ET.Element:
    """The metadata XML's root; an empty element for XML that does not parse (then nothing is declared)."""
    try:
        return ET.fromstring(raw)
    except ET.ParseError:
        return ET.Element("ImageDocument")


def _scene_names(root: ET.Element) -> dict[int, str]:
    names = {}
    for scene in root.findall("./Metadata/Information/Image/Dimensions/S/Scenes/Scene"):
        index, name = scene.get("Index"), scene.get("Name")
        if index is not None and index.isdigit() and name:
            names[int(index)] = name
    return names


def _channel_names(root: ET.Element, n_channels: int) -> tuple[str, ...] | None:
    channels = root.findall("./Metadata/Information/Image/Dimensions/Channels/Channel")
    if len(channels) < n_channels or n_channels == 0:
        return None
    return tuple(ch.get("Name") or ch.get("Id") or f"C{i}" for i, ch in enumerate(channels[:n_channels]))


def _pixel_sizes(root: ET.Element) -> dict[str, float]:
    sizes = {}
    for item in root.findall("./Metadata/Scaling/Items/Distance"):
        axis, value = item.get("Id"), item.findtext("Value")
        try:
            size = float(value) if value is not None else 0.0
        except ValueError:
            continue
        if axis in ("X", "Y", "Z") and size > 0:
            sizes[axis] = rounded_size(size * 1e6)  # metres -> micrometres
    return sizes


#: Significant digits a pixel size keeps after a unit conversion (a double holds 15 to 17).
SIZE_DIGITS = 12


def rounded_size(value: float) -> float:
    """A pixel size converted between units, rounded to [`SIZE_DIGITS`][SIZE_DIGITS] significant digits.

    A CZI stores sizes in metres (``1E-07``); in micrometres ``1e-07 * 1e6`` is
    ``0.09999999999999999`` in binary floating point. Twelve significant digits
    keep every digit a microscope's calibration has and drop the conversion's
    last-bit error: ``0.1``.

    Parameters
    ----------
    value : float
        The converted size.

    Returns
    -------
    float
        ``value`` rounded to twelve significant digits.

    Examples
    --------
    >>> rounded_size(1e-07 * 1e6)
    0.1
    """
    return float(f"{value:.{SIZE_DIGITS}g}")


# -- the chunk reader ------------------------------------------------------------------------
class CziSceneReader(Reader):
    """Chunk reader over one scene of a CZI file (see [`lazystack.io.process`][lazystack.io.process]).

    Its axes are ``SC[Z]YX`` ([`axes`][axes]): ``S`` enumerates the file's
    merged dimensions (C order, ``T`` outermost), ``Z`` is the depth axis
    (the file's Z or T). It pickles as a recipe (path, scene,
    plane mapping) and reopens the file lazily.

    Parameters
    ----------
    manager : FileManager
        Opens the file (shared by the scenes of a file).
    path : str
        The CZI file.
    scene : int or None
        CZI scene index, None for a file without scenes.
    rect : tuple of int
        ``(x, y, w, h)`` of the scene's plane in the file's pixel coordinates.
    axes : str
        The reader's axes.
    plane_dims : dict
        Per non-spatial, non-channel axis letter of ``axes``: the list of
        ``(file dimension, start, size)`` it enumerates (C order).
    channel : tuple
        ``(start, n_file_channels, samples_per_pixel)``.
    pixel_types : tuple of str
        Pixel type per file channel.
    dtype : numpy.dtype
        Dtype of the data.
    token : str
        Identifies the data (path, size, mtime, scene, axes).
    cache_block : tuple of int, optional
        ``(h, w)`` of the spatial blocks of one plane kept in the shared
        decoded-chunk cache ([`lazystack.get_chunk_cache()`][lazystack.get_chunk_cache]): the
        file's most common sub-block size when between 64 and 1024, else
        [`CACHE_BLOCK`][CACHE_BLOCK].
        With the cache disabled (``LAZYSTACK_CHUNK_CACHE_BYTES=0``) a read
        asks pylibCZIrw for exactly the rectangle of the key.
    stamp : tuple of int, optional
        ``(st_ino, st_size, st_mtime_ns)`` of the file when it was opened: a
        cached read first checks the file still has it (cached blocks of a
        file rewritten since must not mix with new reads) and raises
        [`SourceReadError`][lazystack.SourceReadError] when it changed.
    factor : int, optional
        Downsample factor of the pyramid level read (1: full resolution): the
        plane is ``ceil(h / factor) x ceil(w / factor)`` and is read with
        pylibCZIrw's ``zoom=1 / factor`` (see the module documentation, *Pyramids*).
    """

    shape: tuple[int, ...]
    dtype: np.dtype[Any]
    token: str

    def __init__(
        self,
        manager: FileManager,
        path: str,
        scene: int | None,
        rect: tuple[int, int, int, int],
        axes: str,
        plane_dims: dict[str, list[tuple[str, int, int]]],
        channel: tuple[int, int, int],
        pixel_types: tuple[str, ...],
        dtype: np.dtype[Any],
        token: str,
        cache_block: tuple[int, int] = (CACHE_BLOCK, CACHE_BLOCK),
        stamp: tuple[int, int, int] | None = None,
        factor: int = 1,
    ) -> None:
        self._manager = manager
        self.factor = int(factor)
        self._stamp = stamp
        self._cache_block = (int(cache_block[0]), int(cache_block[1]))
        self._chunked: FunctionChunkedReader | None = None
        self.path = path
        self.scene = scene
        self.rect = rect
        self.axes = axes
        self._plane_dims = plane_dims
        self._channel = channel
        self._pixel_types = pixel_types
        self.dtype = np.dtype(dtype)
        self.token = token
        sizes: dict[str, int] = {a: int(np.prod([n for _, _, n in dims])) for a, dims in plane_dims.items()}
        sizes["C"] = channel[1] * channel[2]
        sizes["Y"], sizes["X"] = -(-rect[3] // self.factor), -(-rect[2] // self.factor)
        self.shape = tuple(sizes[a] for a in axes)

    # -- array-like ----------------------------------------------------------------------------
    @property
    def chunks(self) -> tuple[tuple[int, ...], ...]:
        """One plane (one file channel for RGB) per chunk, in blocks of at most [`BLOCK`][BLOCK] pixels."""
        from dask.array.core import normalize_chunks

        step = {"C": self._channel[2], "Y": min(max(self.shape[-2], 1), BLOCK), "X": min(max(self.shape[-1], 1), BLOCK)}
        return normalize_chunks(tuple(step.get(a, 1) for a in self.axes), self.shape)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_chunked"] = None  # per process, rebuilt on use
        return state

    def as_chunked(self) -> FunctionChunkedReader | None:
        """The cached block reader (see [`lazystack.io.chunked`][lazystack.io.chunked]), None when the chunk cache
        is disabled."""
        if not get_chunk_cache().enabled:
            return None
        chunked = self._chunked
        if chunked is None:
            bh, bw = self._cache_block
            cache_chunks = tuple({"Y": bh, "X": bw, "C": self._channel[2]}.get(a, 1) for a in self.axes)
            chunked = FunctionChunkedReader(
                self.shape, self.dtype, cache_chunks, f"{self.token}|blocks-{bh}x{bw}", fetch_one=self._fetch_block
            )
            self._chunked = chunked
        return chunked

    def _check_unchanged(self) -> None:
        """Raise SourceReadError when the file is not the one the stack was opened on (cached blocks are stale)."""
        if self._stamp is None:
            return
        try:
            st = os.stat(self.path)
        except OSError as exc:
            msg = f"CZI file {self._where!r} cannot be read any more ({exc}); load it again if it was moved"
            raise SourceReadError(msg) from exc
        check_stamp(f"CZI file {self._where!r}", self._stamp, st)

    def _fetch_block(self, index: tuple[int, ...]) -> np.ndarray:
        """One cache block: its rectangle of one plane (one file channel), cut at the scene's edge."""
        chunked = self._chunked
        assert chunked is not None  # built before any fetch
        return self._read_exact(list(chunked.chunk_grid.chunk_region(index)))

    def close(self) -> None:
        """Close this file's handle in this process (it reopens when read again)."""
        self._manager.close()

    @property
    def _where(self) -> str:
        where = self.path if self.scene is None else f"{self.path}@{self.scene}"
        return where if self.factor == 1 else f"{where} (pyramid level with downsample factor {self.factor})"

    def __repr__(self) -> str:
        return f"CziSceneReader({self._where!r}, axes={self.axes!r}, shape={self.shape}, dtype={self.dtype})"

    # -- reading -------------------------------------------------------------------------------
    def _normalise(self, key: Any) -> list[int | slice]:
        """Key -> a step-1 slice within bounds per axis, an int where the key drops the axis."""
        try:
            region, drop = normalize_key(key, self.shape)
        except (IndexError, TypeError) as exc:
            raise type(exc)(f"{exc} (CZI scene {self._where!r}, axes {self.axes!r}, shape {self.shape})") from None
        return [r.start if axis in drop else r for axis, r in enumerate(region)]

    def _plane_coords(self, axis: str, index: int) -> dict[str, int]:
        dims = self._plane_dims[axis]
        coords: dict[str, int] = {}
        for dim, start, size in reversed(dims):
            index, i = divmod(index, size)
            coords[dim] = start + i
        return coords

    def __getitem__(self, key: Any) -> np.ndarray:
        """Read the region ``key`` (ints and step-1 slices, one per axis).

        With the chunk cache enabled, through cached blocks (the result may
        be a read-only view of one); else the exact rectangle.
        """
        norm = self._normalise(key)
        self._check_unchanged()  # deleted or replaced: an error, with the chunk cache on or off
        chunked = self.as_chunked()
        if chunked is None:
            return self._read_exact(norm)
        region = tuple(slice(k, k + 1) if isinstance(k, int) else k for k in norm)
        out = chunked.read(region)
        return out[tuple(0 if isinstance(k, int) else slice(None) for k in norm)]

    def _read_exact(self, norm: list[int | slice]) -> np.ndarray:
        """Read a normalised key's exact rectangle from the file, one plane at a time."""
        ranges = [range(k, k + 1) if isinstance(k, int) else range(k.start, k.stop) for k in norm]
        out = np.zeros(tuple(len(r) for r in ranges), dtype=self.dtype)
        squeeze = tuple(0 if isinstance(k, int) else slice(None) for k in norm)
        if out.size == 0:
            return out[squeeze]
        pos = {a: i for i, a in enumerate(self.axes)}
        ys, xs = ranges[pos["Y"]], ranges[pos["X"]]
        x0, y0, f = self.rect[0], self.rect[1], self.factor
        roi = (x0 + xs.start * f, y0 + ys.start * f, len(xs) * f, len(ys) * f)
        c_start, _, spp = self._channel
        c_range = ranges[pos["C"]]
        # file channels needed, and for each: (output index, sample) pairs
        by_channel: dict[int, list[tuple[int, int]]] = {}
        for j, cc in enumerate(c_range):
            by_channel.setdefault(cc // spp, []).append((j, cc % spp))
        loop_axes = [a for a in self.axes if a in self._plane_dims]
        loops = [list(enumerate(ranges[pos[a]])) for a in loop_axes]
        with _live_handle(self._manager, self._where) as handle:
            for combo in itertools.product(*loops):
                plane: dict[str, int] = {}
                where: dict[str, int] = {}
                for a, (j, idx) in zip(loop_axes, combo, strict=True):
                    plane.update(self._plane_coords(a, idx))
                    where[a] = j
                for fc, targets in by_channel.items():
                    plane["C"] = c_start + fc
                    block = self._read(handle, plane, roi, self._pixel_types[fc])
                    for j, sample in targets:
                        where["C"] = j
                        index = tuple(where.get(a, slice(None)) for a in self.axes)
                        # pylibCZIrw returns colour samples as B, G, R: present R, G, B
                        out[index] = block[..., spp - 1 - sample] if spp > 1 else block[..., 0]
        return out[squeeze]

    def _read(self, handle: _CziHandle, plane: dict[str, int], roi: tuple[int, int, int, int], ptype: str) -> Any:
        f = self.factor
        try:
            if f == 1:
                return handle.doc.read(plane=plane, roi=roi, scene=self.scene, pixel_type=ptype)
            block = handle.doc.read(plane=plane, roi=roi, scene=self.scene, pixel_type=ptype, zoom=1.0 / f)
        except (RuntimeError, MemoryError, ValueError) as exc:
            msg = f"cannot read plane {plane} region (x, y, w, h)={roi} of CZI {self._where!r} (corrupt file?): {exc}"
            raise SourceReadError(msg) from exc
        expected = (roi[3] // f, roi[2] // f)
        if tuple(block.shape[:2]) != expected:
            msg = (
                f"pylibCZIrw returned {tuple(block.shape[:2])} pixels for region (x, y, w, h)={roi} of CZI "
                f"{self._where!r} at zoom 1/{f}, expected {expected}"
            )
            raise SourceReadError(msg)
        return block


# -- opening -----------------------------------------------------------------------------------
def _validate_czi_axes(axes: str) -> str:
    if not isinstance(axes, str) or axes.upper() not in CZI_AXES:
        msg = (
            f"invalid axes {axes!r} for a CZI file: accepted are {', '.join(repr(a) for a in CZI_AXES)} "
            "(either case; S and C are always given, possibly singleton; the third letter of a five-letter form "
            "is the depth axis)"
        )
        raise AxesError(msg)
    return axes.upper()


def _token(path: str, scene: int | None, axes: str, factor: int = 1) -> str:
    st = os.stat(path)
    text = f"{os.path.realpath(path)}|{st.st_size}|{st.st_mtime_ns}|{scene}|{axes}" + (
        f"|zoom1/{factor}" if factor != 1 else ""
    )
    return "czi-" + hashlib.sha1(os.fsencode(text)).hexdigest()[:20]


def _cache_block(tile: tuple[int, int] | None) -> tuple[int, int]:
    """The cache unit: the file's (most common) tile size when usual, else [`CACHE_BLOCK`][CACHE_BLOCK] square."""
    lo, hi = _CACHE_TILE_RANGE
    if tile is not None and all(lo <= n <= hi for n in tile):
        return tile
    return (CACHE_BLOCK, CACHE_BLOCK)


def _layout(
    path: str, axes: str, info: _FileInfo
) -> tuple[str, dict[str, list[tuple[str, int, int]]], tuple[tuple[str, int], ...]]:
    """The reader's axes, its plane mapping and the file dimensions merged into ``S`` (with sizes).

    As CAREamics' ``CziImageStack`` does: every dimension of the file's
    bounding box that is not in ``axes`` (``C``, ``Y``, ``X`` and the depth
    are) is merged into ``S``, size-1 ones included, in the bounding box's
    order, and a sample index unravels over them in C order (the first,
    ``T`` when merged, outermost).
    """
    dims = {d: v for d, v in info.dims.items() if v[1] > 1}
    depth = axes[2] if len(axes) == 5 else None
    if depth is not None and depth not in dims:
        size = info.dims.get(depth, (0, 1))[1]
        other = "T" if depth == "Z" else "Z"
        hint = f"; its {other} axis could be the depth: 'SC{other}YX'" if other in dims else ""
        listed = ", ".join(f"{d}={n}" for d, (_, n) in info.dims.items()) or "none"
        msg = (
            f"axes {axes!r} ask for depth axis {depth!r}, but CZI file {path!r} has no {depth} dimension "
            f"(size {size}; its dimensions: {listed}): use 'SCYX' for 2-D planes{hint}"
        )
        raise ShapeMismatchError(msg)
    merged = tuple((d, n) for d, n in info.order if d not in axes)
    # size-1 dimensions add nothing to the unravelling; only dimensions the sub-blocks use are read by coordinate
    plane_dims: dict[str, list[tuple[str, int, int]]] = {"S": [(d, *dims[d]) for d, _ in merged if d in dims]}
    reader_axes = "SC"
    if depth is not None:
        plane_dims["Z"] = [(depth, *dims[depth])]
        reader_axes += "Z"
    return reader_axes + "YX", plane_dims, merged


def open_czi(path: str, axes: str, levels: tuple[int, ...] | None = None) -> list[OpenedSource]:
    """Open a CZI file lazily, one [`OpenedSource`][OpenedSource] per scene and pyramid level.

    Parameters
    ----------
    path : str
        A ``.czi`` file; ``"file.czi@2"`` selects CZI scene 2 alone,
        ``"file.czi@2#level=1"`` (``"file.czi#level=1"`` without scenes) its
        pyramid level 1 alone, whatever ``levels`` says.
    axes : str
        ``"SCYX"``, ``"SCZYX"`` or ``"SCTYX"`` (either case).
    levels : tuple of int, optional
        Pyramid levels to open of every scene (sorted, as
        [`lazystack.core.levels.parse_levels()`][lazystack.core.levels.parse_levels] returns them); None for all.
        A scene without pyramid sub-blocks is level 0.

    Returns
    -------
    list of OpenedSource
        Per scene in scene order (one for a file without scenes), one per
        selected level, level 0 first (see the module documentation,
        *Pyramids*). Only metadata is read, once for the whole file.

    Raises
    ------
    AxesError
        If ``axes`` is not one of [`CZI_AXES`][CZI_AXES].
    MissingDependencyError
        If pylibCZIrw is not installed (the ``czi`` extra).
    SourceNotFoundError
        If the file, the selected scene or a selected level does not exist
        (the message lists the scene's levels).
    SourceFormatError
        If the file is not a CZI, is corrupt or truncated.
    ShapeMismatchError
        If the depth axis the axes ask for is absent from the file.
    """
    axes = _validate_czi_axes(axes)
    _import_pyczi()
    given = os.fspath(path)
    path, wanted, wanted_level = split_source(given)
    check_regular_file(path, "CZI file", "a .czi file", selector="scene")  # a FIFO named x.czi would block the open
    check_czi_structure(path)  # the ZISRAWFILE header, declared sizes and offsets, before libCZI trusts them
    # the reader's path is absolute (the source keeps the user's spelling): a dask worker or a process whose
    # working folder differs reads the same file, not a missing or another one (``link/..`` as the system
    # resolves it, not removed textually as os.path.abspath does)
    absolute = system_path(path if os.path.isabs(path) else os.path.join(os.getcwd(), path))
    manager = FileManager(_CziHandle, absolute)
    with _live_handle(manager, path) as handle:
        info = _read_info(path, handle)
    if wanted is not None and wanted not in info.scenes:
        listed = ", ".join(f"{k} ({info.scene_names.get(k, 'unnamed')})" for k in sorted(info.scenes)) or "none"
        msg = f"CZI file {path!r} has no scene {wanted}; its scenes: {listed}"
        raise SourceNotFoundError(msg)
    reader_axes, plane_dims, merged = _layout(path, axes, info)
    dtypes = {PIXEL_TYPES[p][0] for p in info.pixel_types}
    spps = {PIXEL_TYPES[p][1] for p in info.pixel_types}
    if len(spps) > 1:
        msg = (
            f"CZI file {path!r} mixes grey and colour channels ({list(info.pixel_types)}), which lazystack cannot read"
        )
        raise SourceFormatError(msg)
    dtype = np.result_type(*sorted(dtypes))
    spp = spps.pop()
    c_start, n_c = info.dims.get("C", (0, 1))
    coords: dict[str, Any] = {}
    if info.channel_names is not None:
        names = info.channel_names
        coords["C"] = [f"{n}:{s}" for n in names for s in "RGB"] if spp == 3 else list(names)
    elif spp == 3 and n_c == 1:
        coords["C"] = ["R", "G", "B"]
    depth = axes[2] if len(axes) == 5 else None
    sizes = {a: v for a, v in info.pixel_sizes.items() if a in "XY" or (a == "Z" and depth == "Z")}
    st = os.stat(path)
    stamp = file_stamp(st)
    scenes: list[int | None] = [wanted] if wanted is not None else ([*sorted(info.scenes)] if info.scenes else [None])
    opened = []
    for scene in scenes:
        rect = info.total_rect if scene is None else info.scenes[scene]
        image = path if scene is None else f"{path}@{scene}"
        factors = info.pyramid.get(scene, (1,))
        asked = (wanted_level,) if wanted_level is not None else levels
        if asked is not None and asked[-1] >= len(factors):
            by = f"the source {given!r}" if wanted_level is not None else f"levels={list(asked)}"
            msg = (
                f"CZI file {path!r}" + ("" if scene is None else f" scene {scene}") + f" has {len(factors)} "
                f"pyramid level(s) (0 to {len(factors) - 1}, downsample factors {', '.join(map(str, factors))}), "
                f"not level {asked[-1]} asked for by {by}"
            )
            raise SourceNotFoundError(msg)
        for level in range(len(factors)) if asked is None else asked:
            factor = factors[level]
            reader = CziSceneReader(
                manager,
                absolute,
                scene,
                rect,
                reader_axes,
                plane_dims,
                (c_start, n_c, spp),
                info.pixel_types,
                dtype,
                _token(path, scene, axes, factor),  # the user's axes: SCZYX and SCTYX share reader axes
                cache_block=_cache_block(info.tile),
                stamp=stamp,
                factor=factor,
            )
            attrs: dict[str, Any] = {
                "scene": scene,
                "scene_name": None if scene is None else info.scene_names.get(scene),
                "physical_pixel_sizes": {a: rounded_size(v * (factor if a in "XY" else 1)) for a, v in sizes.items()},
                "units": dict.fromkeys(sizes, "micrometer"),  # lazystack reads CZI scaling in micrometres
                "depth_axis": depth,
                "czi_dims": "".join(d for d, _ in info.order) + "YX",
                "czi_shape": (*(n for _, n in info.order), *reader.shape[-2:]),
                "sample_dims": "".join(d for d, _ in merged),
                "sample_shape": tuple(n for _, n in merged),
                "bounding_box": rect,
                "pixel_type": info.pixel_types[0],
            }
            if len(factors) > 1:
                attrs.update(level=level, image_uri=image, downsample={"Y": float(factor), "X": float(factor)})
            source = image if level == 0 else f"{image}#level={level}"
            opened.append(OpenedSource(reader, source, "czi", reader_axes, coords=dict(coords), attrs=attrs))
    return opened


# -- axes the file declares ---------------------------------------------------------------------
def propose_axes(path: str | os.PathLike[str]) -> str | None:
    """The axes to load a CZI with: ``SCZYX`` with more than one Z plane, else ``SCYX``.

    Time points and other CZI dimensions become samples.

    Parameters
    ----------
    path : str or os.PathLike
        A CZI file (``"file.czi@i"``: the file ``file.czi``).

    Returns
    -------
    str

    Raises
    ------
    MissingDependencyError
        Without pylibCZIrw (the ``czi`` extra).
    SourceFormatError
        When the file is not a readable CZI.
    """
    file_path, _, _ = split_source(os.fspath(path))
    pyczi = _import_pyczi()
    check_regular_file(file_path, "CZI file", "a .czi file")  # pylibCZIrw would block on a FIFO
    check_czi_structure(file_path)  # declared sizes and offsets, before libCZI trusts them (it can segfault)
    try:
        with pyczi.open_czi(str(file_path)) as doc:
            lo, hi = doc.total_bounding_box.get("Z", (0, 1))
    except Exception as exc:  # pylibCZIrw raises plain RuntimeError on a bad file
        msg = f"{file_path!r} is not a readable CZI file: {exc}"
        raise SourceFormatError(msg) from exc
    return "SCZYX" if int(hi) - int(lo) > 1 else "SCYX"
