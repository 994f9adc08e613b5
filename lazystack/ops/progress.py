"""Progress bars for long dask computations (statistics, writing).

The library is quiet by default; the command line turns progress on. Two
kinds of bar, chosen by the scheduler dask would use right now:

- a local scheduler (threads, processes, synchronous): dask's
  [`dask.diagnostics.ProgressBar`][dask.diagnostics.ProgressBar];
- a [`distributed.Client`][distributed.Client] (the default client, or the scheduler set with
  ``dask.config.set(scheduler=client)``): the computation is submitted to the
  client and [`distributed.progress()`][distributed.progress] follows the futures.

``dask.distributed`` is an optional dependency: it is imported only when a
client is active, which implies it is installed.
"""

from __future__ import annotations

import contextvars
import sys
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stdout
from typing import Any

import dask

__all__ = ["active_client", "compute", "progress_bar"]

_ENABLED: contextvars.ContextVar[bool] = contextvars.ContextVar("lazystack_progress", default=False)


def active_client() -> Any | None:
    """Return the [`distributed.Client`][distributed.Client] dask would compute on now, or None.

    Returns
    -------
    distributed.Client or None
        The client behind the active scheduler; None for a local scheduler
        (threads, processes, synchronous) or when ``distributed`` is not
        installed.
    """
    from dask.base import get_scheduler

    scheduler = get_scheduler()
    owner = getattr(scheduler, "__self__", None)
    if owner is None or "distributed" not in sys.modules:
        return None
    from distributed import Client

    return owner if isinstance(owner, Client) else None


@contextmanager
def progress_bar(enabled: bool = True) -> Iterator[None]:
    """Show a progress bar for the computations run inside the block.

    With a local scheduler, dask's [`ProgressBar`][dask.diagnostics.ProgressBar] is
    registered for the block (it reports every ``dask.compute`` inside). With a
    distributed client, [`compute()`][compute] (used by every lazystack computation)
    shows [`distributed.progress()`][distributed.progress] for its futures.

    Parameters
    ----------
    enabled : bool
        False makes the block a no-op (the library's default is quiet).
    """
    if not enabled:
        yield
        return
    token = _ENABLED.set(True)
    try:
        if active_client() is None:
            from dask.diagnostics import ProgressBar

            with ProgressBar(out=sys.stderr):
                yield
        else:
            yield
    finally:
        _ENABLED.reset(token)


def compute(*collections: Any, progress: bool = False) -> tuple[Any, ...]:
    """``dask.compute`` on the active scheduler, with a progress bar if asked.

    Parameters
    ----------
    *collections : dask collections
        What to compute (arrays, delayed objects ...).
    progress : bool
        Show a bar (also shown when called inside [`progress_bar()`][progress_bar]).

    Returns
    -------
    tuple
        The computed values, in the order given.
    """
    client = active_client() if progress or _ENABLED.get() else None
    if client is None:  # a local scheduler's bar is registered by progress_bar (a no-op when off or already on)
        with progress_bar(progress and not _ENABLED.get()):
            return tuple(dask.compute(*collections))
    from distributed import progress as distributed_progress

    futures = client.compute(list(collections))
    try:
        with redirect_stdout(sys.stderr):  # keep stdout clean for results (JSON ...)
            distributed_progress(futures, notebook=False, multi=False)
            print()
        return tuple(client.gather(futures))
    finally:
        for future in futures:
            future.release()
