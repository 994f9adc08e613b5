"""What every format back end shares: per-process file handles.

The reader contract itself (shape, dtype, chunk grid, region reads,
capabilities as data) is [`lazystack.io.reader.Reader`][lazystack.io.reader.Reader], described in
[`lazystack.io.reader`][lazystack.io.reader]; its helpers are re-exported here. ``ChunkReader``
is the structural minimum (``shape``, ``dtype``, ``__getitem__``) that
[`lazystack.io.reader.as_reader()`][lazystack.io.reader.as_reader] adapts.
"""

from __future__ import annotations

import mmap
from typing import Any, Protocol, runtime_checkable

import numpy as np

from ..core.errors import SourceReadError
from .process import FileManager
from .reader import OpenedSource, is_array_like, read_numpy, reader_chunks, reader_token

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


#: The per-process file-handle manager every back end uses (see [`FileManager`][lazystack.io.process.FileManager]).
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
