"""Per-process file handles: xarray's caching file manager, reopened after a fork.

The reader contract (:mod:`lazystack.io.reader`) is re-exported here for the
modules that still import it from this one.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from xarray.backends import file_manager as _file_manager
from xarray.backends.file_manager import CachingFileManager

from .reader import (
    ChunkReader,
    OpenedSource,
    check_mapped_size,
    is_array_like,
    read_numpy,
    reader_chunks,
    reader_token,
)

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
