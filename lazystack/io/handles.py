"""What every format back end shares: per-process file handles.

The reader contract itself (shape, dtype, chunk grid, region reads,
capabilities as data) is :class:`lazystack.io.reader.Reader`, described in
:mod:`lazystack.io.reader`; its helpers are re-exported here. ``ChunkReader``
is the structural minimum (``shape``, ``dtype``, ``__getitem__``) that
:func:`lazystack.io.reader.as_reader` adapts.
"""

from __future__ import annotations

import mmap
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Protocol, runtime_checkable

import numpy as np
from xarray.backends import file_manager as _file_manager
from xarray.backends.file_manager import CachingFileManager

from ..core.errors import SourceReadError
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
