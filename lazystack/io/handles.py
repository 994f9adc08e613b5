"""What file back ends share: the stamp of an opened file and a guard for memory maps.

Per-process file handles are [`FileManager`][lazystack.io.process.FileManager]s.

The reader contract itself (shape, dtype, chunk grid, region reads,
capabilities as data) is [`lazystack.io.reader.Reader`][lazystack.io.reader.Reader].
"""

from __future__ import annotations

import mmap
import os

from ..core.errors import SourceReadError

__all__ = ["check_mapped_size", "file_stamp"]


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


def file_stamp(st: os.stat_result) -> tuple[int, int, int]:
    """``(st_ino, st_size, st_mtime_ns)``: what identifies the file a stack was opened on."""
    return int(st.st_ino), int(st.st_size), int(st.st_mtime_ns)
