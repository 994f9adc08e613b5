"""What every format back end shares: per-process file handles and a guard for memory maps.

The reader contract itself (shape, dtype, chunk grid, region reads,
capabilities as data) is [`lazystack.io.reader.Reader`][lazystack.io.reader.Reader].
"""

from __future__ import annotations

import mmap

from ..core.errors import SourceReadError
from .process import FileManager

__all__ = ["ProcessLocalFileManager", "check_mapped_size"]

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
