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

import mmap
import uuid
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np
from dask.array.core import normalize_chunks

from ..errors import SourceReadError
from ..process import FileManager

__all__ = [
    "ChunkReader",
    "check_mapped_size",
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


def reader_token(reader: Any) -> str:
    """A name for the reader's data that never hashes pixel data.

    A reader's own ``token`` wins; otherwise a random one (unique per stack,
    kept when the stack is pickled).
    """
    token = getattr(reader, "token", None)
    return str(token) if token else uuid.uuid4().hex


#: The per-process file-handle manager every back end uses (see :class:`lazystack.process.FileManager`).
ProcessLocalFileManager = FileManager


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
