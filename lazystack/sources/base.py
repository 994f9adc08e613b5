"""What every format back end shares: the chunk-reader contract and file handles.

The contract a back end fulfils is small (the pattern of xarray's backend
arrays): ``shape``, ``dtype`` and ``__getitem__`` taking a tuple with one
``int`` or step-1 ``slice`` per axis, inside the bounds, returning a numpy
array. Optional members the stack uses when present:

``chunks``
    dask-style chunks (tuple of tuples) or a regular chunk shape (tuple of
    int); the stack's dask array follows them.
``token``
    a string identifying the data (source, modification time ...), used to
    name the dask array without hashing pixel data.
``close()``
    release open handles (the reader must reopen transparently when used
    again).
``read_region(region)``
    read a tuple of step-1 slices, one per axis, already inside the bounds
    (no ints, no normalisation): the patch fast path calls it instead of
    ``__getitem__`` to skip key checks. It may return a read-only view.
``read_cached(region)``
    the same region when it can be served from memory alone (every chunk it
    touches is in the chunk cache), else None; it must never read the
    source. The patch fast path tries it before ``read_region``: a warm
    patch is one cache look-up.
``read_float32(region)``
    the same region as a *new* ``float32`` array (values exactly those of
    a cast), when the reader produces it more cheaply than ``read_region``
    plus a cast (tensorstore converts while it decodes), else None. The
    patch fast path tries it after ``read_cached`` and returns the array as
    the patch, without another copy when the source's axes are already in
    ``C(Z)YX`` order (else one transposing copy).
"""

from __future__ import annotations

import math
import mmap
import os
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np
from dask.array.core import normalize_chunks
from xarray.backends import file_manager as _file_manager
from xarray.backends.file_manager import CachingFileManager

from ..errors import SourceReadError

__all__ = [
    "ChunkReader",
    "check_mapped_size",
    "dask_chunks",
    "OpenedSource",
    "ProcessLocalFileManager",
    "is_array_like",
    "read_numpy",
    "reader_chunks",
    "reader_token",
]


@runtime_checkable
class ChunkReader(Protocol):
    """An array-like over the original axes of a source (see the module docs)."""

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of the source in its own axes."""
        ...

    @property
    def dtype(self) -> np.dtype[Any]:
        """Dtype of the stored data."""
        ...

    def __getitem__(self, key: tuple[int | slice, ...]) -> Any:
        """Read the region ``key`` (ints and step-1 slices, within bounds)."""
        ...


def is_array_like(obj: object) -> bool:
    """Return whether ``obj`` has ``shape``, ``dtype`` and ``__getitem__``."""
    return all(hasattr(obj, a) for a in ("shape", "dtype", "__getitem__")) and hasattr(obj.shape, "__len__")  # type: ignore[attr-defined]


def _is_dask_array(x: object) -> bool:
    return type(x).__module__.startswith("dask.") and hasattr(x, "dask")


def read_numpy(reader: Any, key: tuple[int | slice, ...]) -> np.ndarray:
    """Read ``reader[key]`` as a numpy array (computing a dask result in place).

    Parameters
    ----------
    reader : array-like
        Chunk reader or any array-like.
    key : tuple of int or slice
        Region in the reader's axes.

    Returns
    -------
    numpy.ndarray
    """
    out = reader[key]
    if _is_dask_array(out):
        out = out.compute(scheduler="sync")
    return np.asarray(out)


def reader_chunks(reader: Any) -> tuple[tuple[int, ...], ...]:
    """dask-style chunks of a reader: its own, else dask's ``"auto"`` choice.

    Parameters
    ----------
    reader : array-like
        A chunk reader, numpy / dask / zarr array, h5py dataset ...

    Returns
    -------
    tuple of tuple of int
    """
    shape = tuple(int(n) for n in reader.shape)
    chunks = getattr(reader, "chunks", None)
    if chunks is None or callable(chunks):
        chunks = "auto"
    return normalize_chunks(chunks, shape=shape, dtype=np.dtype(reader.dtype))


#: Most chunks a stack's dask array gets: past it, chunks grow beyond the target size so that
#: a graph stays small enough to build (a slice of a big chunk still reads only the slice).
MAX_DASK_CHUNKS = 100_000


def _storage_grid(reader: Any, shape: tuple[int, ...]) -> list[int | tuple[int, ...]] | None:
    """Per axis: the reader's regular chunk size (int) or its chunk sizes (tuple); None without chunks."""
    chunks = getattr(reader, "chunks", None)
    if chunks is None or callable(chunks) or isinstance(chunks, (str, int)) or len(chunks) != len(shape):
        return None
    grid: list[int | tuple[int, ...]] = []
    for n, c in zip(shape, chunks, strict=True):
        if isinstance(c, (int, np.integer)):
            grid.append(max(1, min(int(c), n)))
        else:
            sizes = tuple(int(v) for v in c)
            if sum(sizes) != n:
                return None
            grid.append(sizes)
    return grid


def dask_chunks(
    reader: Any, *, limit: int | str | None = None, unit_axes: tuple[int, ...] = ()
) -> tuple[tuple[int, ...], ...]:
    """dask chunks of a stack: the reader's own chunks merged up to a target size.

    Consecutive storage chunks (zarr chunks, TIFF pages or tiles, CZI blocks)
    are grouped along each axis, so every dask chunk is a whole number of
    storage chunks of about ``limit`` bytes (dask's ``array.chunk-size``
    setting, 128 MiB by default): the number of tasks depends on the data's
    size, not on how finely it is stored. A storage chunk larger than the
    target is kept whole (never split). Past :data:`MAX_DASK_CHUNKS` chunks
    the groups grow beyond the target, so that the graph of an astronomically
    large declared shape stays buildable. Works on the chunk sizes alone,
    without expanding a regular grid into per-chunk tuples.

    Parameters
    ----------
    reader : array-like
        A chunk reader; ``chunks`` as dask-style tuples or a regular chunk
        shape. Without ``chunks``, dask's ``"auto"`` choice.
    limit : int or str, optional
        Target bytes per chunk (``"64 MiB"``, ``2**26`` ...); default
        ``dask.config.get("array.chunk-size")``.
    unit_axes : tuple of int
        Axes whose storage chunks are never grouped.

    Returns
    -------
    tuple of tuple of int
    """
    import dask
    from dask.utils import parse_bytes

    shape = tuple(int(n) for n in reader.shape)
    dtype = np.dtype(reader.dtype)
    target = parse_bytes(limit if limit is not None else dask.config.get("array.chunk-size"))
    grid = _storage_grid(reader, shape)
    if grid is None or 0 in shape:
        return reader_chunks(reader)
    n_chunks = [-(-n // g) if isinstance(g, int) else len(g) for n, g in zip(shape, grid, strict=True)]
    typical = [g if isinstance(g, int) else max(g) for g in grid]
    groups = [1] * len(shape)

    def extent(axis: int) -> int:
        return min(typical[axis] * groups[axis], shape[axis])

    def nbytes() -> int:
        return math.prod(extent(a) for a in range(len(shape))) * dtype.itemsize

    growable = [a for a in range(len(shape)) if a not in unit_axes]
    while True:  # double the group of the smallest growable axis while the chunk stays under the target
        for axis in sorted(growable, key=lambda a: (extent(a), -a)):
            if groups[axis] >= n_chunks[axis]:
                continue
            before = groups[axis]
            groups[axis] = min(2 * before, n_chunks[axis])
            if nbytes() <= target:
                break
            groups[axis] = before
        else:
            break
    while math.prod(-(-k // g) for k, g in zip(n_chunks, groups, strict=True)) > MAX_DASK_CHUNKS:
        axis = max(range(len(shape)), key=lambda a: -(-n_chunks[a] // groups[a]))
        groups[axis] *= 2
    out = []
    for n, g, k in zip(shape, grid, groups, strict=True):
        if isinstance(g, int):
            size = g * k
            full, rest = divmod(n, size)
            out.append((size,) * full + ((rest,) if rest else ()))
        else:
            sums = np.add.reduceat(np.asarray(g, dtype=np.int64), np.arange(0, len(g), k))
            out.append(tuple(int(v) for v in sums))
    return tuple(out)


def reader_token(reader: Any) -> str:
    """A name for the reader's data that never hashes pixel data.

    A reader's own ``token`` wins; otherwise a random one (unique per stack,
    kept when the stack is pickled).
    """
    token = getattr(reader, "token", None)
    return str(token) if token else uuid.uuid4().hex


class ProcessLocalFileManager(CachingFileManager):  # type: ignore[type-arg,unused-ignore]
    """xarray's :class:`~xarray.backends.CachingFileManager`, one handle per process.

    The manager holds an opener and its arguments, opens lazily, keeps open
    handles in xarray's bounded LRU (``xarray.set_options(file_cache_maxsize=...)``,
    128 by default) and pickles without the handle. lazystack adds the
    process id to the cache key and re-checks it on every use, so that a
    process forked after a handle was opened reopens the file instead of
    sharing its parent's file offset (the parent's lock is not inherited
    either). An omitted ``mode`` survives pickling.

    It takes the same arguments as ``CachingFileManager``: ``opener``, the
    opener's positional arguments and ``kwargs=`` its keyword arguments.
    """

    _pid: int

    def _make_key(self) -> Any:
        key = super()._make_key()
        self._pid = os.getpid()
        return type(key)((*key, self._pid))

    def _check_pid(self) -> None:
        if self._pid != os.getpid():  # forked: never touch the parent's handle or lock
            if self._use_default_lock:
                self._lock = threading.Lock()
            self._key = self._make_key()
            self._ref_counter.increment(self._key)

    def acquire(self, needs_lock: bool = True) -> Any:
        """Open (or reuse) this process's handle."""
        self._check_pid()
        return super().acquire(needs_lock)

    @contextmanager
    def acquire_context(self, needs_lock: bool = True) -> Iterator[Any]:
        """Context manager around this process's handle."""
        self._check_pid()
        with super().acquire_context(needs_lock) as f:
            yield f

    def close(self, needs_lock: bool = True) -> None:
        """Close this process's handle, if open."""
        self._check_pid()
        super().close(needs_lock)

    def __setstate__(self, state: Any) -> None:
        opener, args, mode, kwargs, lock, manager_id = state
        if repr(mode) == repr(_file_manager._OMIT_MODE):  # the sentinel is copied by pickle
            mode = _file_manager._OMIT_MODE
        super().__setstate__((opener, args, mode, kwargs, lock, manager_id))


def check_mapped_size(raw: mmap.mmap, end: int, what: str) -> None:
    """Raise SourceReadError when the file under a memory map is now shorter than ``end`` bytes.

    Reading a mapped page past the end of a file truncated after it was
    mapped kills the process with SIGBUS; ``mmap.size()`` is an ``fstat`` of
    the mapping's own descriptor (about a microsecond).

    Parameters
    ----------
    raw : mmap.mmap
        The mapping (``np.memmap._mmap``).
    end : int
        Offset in the file just past the mapped data.
    what : str
        Names the file in the message.
    """
    try:
        size = raw.size()
    except (OSError, ValueError):  # closed mapping: numpy raises its own error on access
        return
    if size < end:
        msg = (
            f"{what} was truncated since it was opened: its mapped data need {end} bytes, the file now has {size} bytes"
        )
        raise SourceReadError(msg)


@dataclass
class OpenedSource:
    """What a format back end hands the loader for one stack.

    Attributes
    ----------
    reader : array-like
        Chunk reader over the source's own axes (see the module docs).
    source : str
        Path or URI that re-creates exactly this stack (``path@series``,
        ``file.czi@2``, ``file://store.zarr/0`` ...).
    format : str
        Format name shown to users.
    axes : str
        Axes of ``reader`` (normally the user's axes, checked against the
        file's own).
    coords : dict
        Coordinates per axis letter (channel names ...).
    attrs : dict
        ``physical_pixel_sizes``, ``scene``, ``scene_name``, ``series``,
        ``level`` ... as the source declares them.
    """

    reader: Any
    source: str
    format: str
    axes: str
    coords: dict[str, Any] = field(default_factory=dict)
    attrs: dict[str, Any] = field(default_factory=dict)
