"""Per-process state in one place: the at-fork registry and the file-handle manager.

Threads, locks held by other threads and open file offsets do not survive
``fork()`` in a usable state. Everything in lazystack that must be renewed in
a forked child (thread pools, caches, open handles, event loops) registers
with [`at_fork()`][at_fork] here, which installs one ``os.register_at_fork`` hook for
the package, and asks [`current_pid()`][current_pid] (kept up to date by that hook, no
system call) when it needs to know whether an object was made in this
process.

[`FileManager`][FileManager] opens files lazily from an opener and its arguments and
keeps the open handles in one least-recently-used table per process. Its
bound follows the process's open-file limit (``RLIMIT_NOFILE``, see
`max_open_files()`), a forked child opens its own handles (it never
shares a file offset with its parent, and never closes or locks the handles
it inherited: another thread of the parent may have been using them at the
moment of the fork), and a pickled manager carries its recipe only.
"""

from __future__ import annotations

import itertools
import os
import threading
import weakref
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from typing import Any

__all__ = [
    "FileManager",
    "at_fork",
    "current_pid",
    "max_open_files",
    "open_file_count",
    "set_max_open_files",
]

# -- the at-fork registry -------------------------------------------------------------------------
_BEFORE: list[Callable[[], None]] = []
_AFTER_IN_PARENT: list[Callable[[], None]] = []
_AFTER_IN_CHILD: list[Callable[[], None]] = []
_PID = os.getpid()


def at_fork(
    *,
    before: Callable[[], None] | None = None,
    after_in_parent: Callable[[], None] | None = None,
    after_in_child: Callable[[], None] | None = None,
) -> None:
    """Register functions to run around ``fork()``, as [`os.register_at_fork()`][os.register_at_fork] does.

    lazystack's one ``os.register_at_fork`` hook calls them: ``before``
    functions in reverse order of registration, ``after_*`` functions in
    order of registration (the standard library's order). A function that
    raises does not stop the others; the first error is re-raised after all
    have run (Python then reports it as an unraisable exception).

    Parameters
    ----------
    before : callable, optional
        Called in the parent just before the fork.
    after_in_parent : callable, optional
        Called in the parent after the fork.
    after_in_child : callable, optional
        Called in the child after the fork, after [`current_pid()`][current_pid] was
        updated and this module's handle table renewed.
    """
    if before is not None:
        _BEFORE.append(before)
    if after_in_parent is not None:
        _AFTER_IN_PARENT.append(after_in_parent)
    if after_in_child is not None:
        _AFTER_IN_CHILD.append(after_in_child)


def _run(funcs: list[Callable[[], None]]) -> None:
    error: BaseException | None = None
    for func in funcs:
        try:
            func()
        except Exception as exc:  # run the others; the first error is raised at the end
            error = error or exc
    if error is not None:
        raise error


def _after_fork_in_child() -> None:
    global _PID
    _PID = os.getpid()
    _renew_handles()
    _run(list(_AFTER_IN_CHILD))


def current_pid() -> int:
    """This process's id, without a system call (renewed in a forked child).

    Returns
    -------
    int
        Equal to [`os.getpid()`][os.getpid] in every process lazystack runs in
        (children forked with [`os.fork()`][os.fork], ``multiprocessing`` or a
        torch ``DataLoader`` run the at-fork hook).

    Examples
    --------
    >>> import os
    >>> current_pid() == os.getpid()
    True
    """
    return _PID


# -- the open-file bound --------------------------------------------------------------------------
#: Handles kept open at most by default, however high the limit (a handle keeps a parsed header in
#: memory; xarray's file cache has the same default). ``set_max_open_files`` raises it.
_CEILING = 128
#: Fewest handles the table keeps (below this every read of a few files would reopen one).
_FLOOR = 4
_MAX_OPEN: int | None = None


def _limit_bound() -> int:
    """A quarter of the soft ``RLIMIT_NOFILE`` (sockets, pipes and libraries need the rest)."""
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (ImportError, OSError, ValueError):  # pragma: no cover - not POSIX
        return 128
    if soft == resource.RLIM_INFINITY or soft <= 0:
        return _CEILING
    return max(_FLOOR, min(_CEILING, soft // 4))


def _env_bound() -> int | None:
    raw = os.environ.get("LAZYSTACK_MAX_OPEN_FILES", "").strip()
    if not raw:
        return None
    try:
        value = int(raw)
    except ValueError:
        value = -1
    if value < 1:
        msg = f"LAZYSTACK_MAX_OPEN_FILES={raw!r}: expected a positive integer number of open files"
        raise ValueError(msg)
    return value


def max_open_files() -> int:
    """How many file handles this process keeps open at most.

    [`set_max_open_files()`][set_max_open_files] or ``LAZYSTACK_MAX_OPEN_FILES`` set it;
    otherwise it is a quarter of the process's soft open-file limit
    (``resource.getrlimit(resource.RLIMIT_NOFILE)``, read on each call so a
    changed limit applies), at least 4 and at most 128. In a forked child
    the handles inherited from the parent (kept open, never used) count
    against it, but the child may always open 4 of its own.
    """
    if _MAX_OPEN is not None:
        return _MAX_OPEN
    env = _env_bound()
    return env if env is not None else _limit_bound()


def set_max_open_files(n: int | None) -> int | None:
    """Bound the handles this process keeps open (``None``: follow the open-file limit again).

    Handles beyond the bound are closed at once, least recently used first.

    Parameters
    ----------
    n : int or None
        A positive number of handles, or None for the default of
        `max_open_files()`.

    Returns
    -------
    int or None
        The previous setting, to restore it.

    Raises
    ------
    ValueError
        If ``n`` is not a positive integer or None.
    """
    global _MAX_OPEN
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
        msg = f"the number of open files must be a positive integer or None, got {n!r}"
        raise ValueError(msg)
    previous, _MAX_OPEN = _MAX_OPEN, n
    _close_all(_STATE.shrink())
    return previous


# -- the per-process handle table -----------------------------------------------------------------
class _Table:
    """One process's open handles: an LRU keyed by manager, and the locks that open them."""

    def __init__(self, inherited: int = 0) -> None:
        self.lock = threading.Lock()
        self.handles: OrderedDict[int, Any] = OrderedDict()  # least recently used first
        self.opening: dict[int, list[Any]] = {}  # [lock, threads holding or waiting]
        self.inherited = inherited

    def bound(self) -> int:
        limit = max_open_files()
        # a forked child counts the handles it inherited, but may always open a few of its own
        return max(min(_FLOOR, limit), limit - self.inherited)

    def shrink(self) -> list[Any]:
        """Drop handles past the bound (under the lock); the caller closes them without it."""
        evicted = []
        with self.lock:
            bound = self.bound()
            while len(self.handles) > bound:
                evicted.append(self.handles.popitem(last=False)[1])
        return evicted


_STATE = _Table()
#: Tables of the parent processes: kept alive and never touched here (their handles and locks were
#: the parent's; closing them could wait forever on a lock another thread of the parent held).
_INHERITED: list[_Table] = []
#: Managers collected while the table's lock was busy: their handles are closed on the next open.
_ORPHANS: deque[int] = deque()
_IDS = itertools.count()


def _renew_handles() -> None:
    global _STATE
    _INHERITED.append(_STATE)
    _ORPHANS.clear()
    _STATE = _Table(sum(len(t.handles) for t in _INHERITED))


def open_file_count() -> int:
    """How many handles this process's managers hold open (not counting inherited ones)."""
    return len(_STATE.handles)


def _close(handle: Any) -> None:
    close = getattr(handle, "close", None)
    if close is not None:
        close()


def _close_all(handles: list[Any]) -> None:
    for handle in handles:
        _close(handle)


def _forget(key: int) -> None:
    """A manager was collected: close its handle now if the table is free, else on the next open."""
    table = _STATE
    if not table.lock.acquire(blocking=False):  # maybe this very thread, inside the table's lock
        _ORPHANS.append(key)
        return
    try:
        handle = table.handles.pop(key, None)
        # no thread is in a collected manager's acquire(): an opening lock entry left (its count one up after
        # an interrupt between the count and its try/finally) goes with it
        table.opening.pop(key, None)
    finally:
        table.lock.release()
    if handle is not None:
        _close(handle)


_OMIT = object()


class FileManager:
    """Opens a file lazily and keeps this process's handle in a bounded LRU table.

    The file is opened by ``opener(*args, **kwargs)`` (plus ``mode=mode`` when
    a mode is given) on first use, in each process separately: a process
    forked after the parent opened it opens its own handle (a file offset is
    never shared between processes). Open handles of all managers live in one
    per-process least-recently-used table bounded by `max_open_files()`;
    an evicted handle is closed and reopened on next use. A pickled manager
    carries the opener and its arguments only.

    Parameters
    ----------
    opener : callable
        Opens the file; must be picklable for the manager to be.
    *args
        Its positional arguments.
    mode : str, optional
        Passed as ``mode=`` when given.
    kwargs : dict, optional
        Its keyword arguments.

    Examples
    --------
    >>> import os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "f.bin")
    >>> with open(path, "wb") as f:
    ...     _ = f.write(b"abc")
    >>> manager = FileManager(open, path, mode="rb")
    >>> with manager.acquire_context() as f:
    ...     f.read()
    b'abc'
    >>> manager.close()
    """

    def __init__(
        self,
        opener: Callable[..., Any],
        *args: Any,
        mode: Any = _OMIT,
        kwargs: dict[str, Any] | None = None,
    ) -> None:
        self._opener = opener
        self._args = args
        self._mode = mode
        self._kwargs = dict(kwargs or {})
        self._key = next(_IDS)
        finalizer = weakref.finalize(self, _forget, self._key)
        finalizer.atexit = False  # at exit the process closes everything anyway

    def __repr__(self) -> str:
        name = getattr(self._opener, "__qualname__", repr(self._opener))
        return f"FileManager({name}, {', '.join(map(repr, self._args))})"

    def __reduce__(self) -> tuple[Any, ...]:
        mode = {} if self._mode is _OMIT else {"mode": self._mode}
        return (partial(FileManager, self._opener, *self._args, **mode, kwargs=self._kwargs), ())

    def _open(self) -> Any:
        kwargs = self._kwargs if self._mode is _OMIT else {**self._kwargs, "mode": self._mode}
        return self._opener(*self._args, **kwargs)

    def acquire(self) -> Any:
        """This process's open handle, i.e. what the opener returned (opened now if it is not)."""
        table = _STATE
        key = self._key
        orphans: list[Any] = []
        with table.lock:
            handle = table.handles.get(key, _OMIT)
            if handle is not _OMIT:
                table.handles.move_to_end(key)
                return handle
            # one opening lock per file while a thread opens it or waits to: dropped by the last of them (dropped
            # earlier, by a failed or a successful open, a thread coming later made a new lock and opened the file
            # beside a waiting thread: two opens at once, one handle overwritten and never closed)
            entry = table.opening.get(key)
            if entry is None:
                entry = table.opening[key] = [threading.Lock(), 0]
            entry[1] += 1
        try:
            with entry[0]:  # one thread opens; the others wait for its handle
                with table.lock:
                    handle = table.handles.get(key, _OMIT)
                    if handle is not _OMIT:
                        table.handles.move_to_end(key)
                        return handle
                handle = self._open()  # outside the table's lock: other files open meanwhile
                with table.lock:
                    stored = table.handles.get(key, _OMIT)
                    if stored is _OMIT:
                        table.handles[key] = handle
                    else:  # seeded meanwhile: that one is kept (not overwritten, never closed), ours closed
                        orphans.append(handle)
                        handle = stored
                        table.handles.move_to_end(key)
                    while _ORPHANS:
                        gone = _ORPHANS.popleft()
                        table.opening.pop(gone, None)  # as _forget() does
                        orphan = table.handles.pop(gone, None)
                        if orphan is not None:
                            orphans.append(orphan)
        finally:
            with table.lock:
                entry[1] -= 1
                if not entry[1] and table.opening.get(key) is entry:
                    del table.opening[key]
        _close_all(orphans + table.shrink())  # closed without the lock: a closing handle may wait for a read
        return handle

    @contextmanager
    def acquire_context(self) -> Iterator[Any]:
        """Context manager giving this process's open handle (see [`acquire()`][acquire])."""
        yield self.acquire()

    def close(self) -> None:
        """Close this process's handle, if open (the next use reopens it)."""
        table = _STATE
        with table.lock:
            handle = table.handles.pop(self._key, _OMIT)
        if handle is not _OMIT:
            _close(handle)

    def seed(self, handle: Any) -> None:
        """Use ``handle`` as this process's open handle (e.g. one opened to read metadata).

        Parameters
        ----------
        handle : object
            What the opener would return; the manager closes it like its own.
        """
        table = _STATE
        with table.lock:
            old = table.handles.pop(self._key, _OMIT)
            table.handles[self._key] = handle
        if old is not _OMIT and old is not handle:
            _close(old)
        _close_all(table.shrink())


if hasattr(os, "register_at_fork"):  # pragma: no branch - POSIX
    os.register_at_fork(
        before=lambda: _run(_BEFORE[::-1]),
        after_in_parent=lambda: _run(list(_AFTER_IN_PARENT)),
        after_in_child=_after_fork_in_child,
    )
