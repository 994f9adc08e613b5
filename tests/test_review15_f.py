"""Second review of revA's concurrency fixes (session 15, reviewer F): extract_patches' batch-wide stop."""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import pytest


def test_f_the_failed_shares_error_keeps_its_cause_when_another_share_was_looked_at_first() -> None:
    """revA's stop raises the failed share's error when the share looked at first was only stopped by it, but with
    ``raise error from None``: the error's own ``__cause__`` (the OSError behind a corrupt-chunk error, say) was
    wiped and its context hidden, so the traceback lost why the source failed."""
    from test_batch import CountingReader

    from lazystack import LazyImageStack
    from lazystack.io import chunked
    from lazystack.io.cache import chunk_cache_size
    from lazystack.ops import batch as batch_mod
    from lazystack.ops.batch import extract_patches

    b_reading, stopped = threading.Event(), threading.Event()
    serve_share = batch_mod._Batch.serve_share

    def watched(self: Any, reader: Any, indices: list[int]) -> None:
        try:
            serve_share(self, reader, indices)
        finally:
            if self.stop.is_set():
                stopped.set()

    class Failing(CountingReader):
        def _one(self, idx: Any) -> Any:
            assert b_reading.wait(60)  # the other source is reading
            try:
                raise OSError("disk gone")
            except OSError as exc:
                raise ValueError("source A is corrupt") from exc

    class Held(CountingReader):
        def _one(self, idx: Any) -> Any:
            b_reading.set()
            assert stopped.wait(60)  # A's failure has set the stop: B's next chunk stops
            return super()._one(idx)

    a = LazyImageStack(Failing(np.zeros((1, 8, 8), np.uint16), (1, 8, 8)), "SYX")
    b = LazyImageStack(Held(np.zeros((1, 100, 100), np.uint16), (1, 20, 20)), "SYX")
    reqs = [(b, 0, None, (y, x), (20, 20)) for y in range(0, 100, 20) for x in range(0, 100, 20)]
    with pytest.MonkeyPatch.context() as mp, chunk_cache_size(0):
        mp.setattr(chunked, "CPU_WORKERS", 2)
        mp.setattr(batch_mod._Batch, "serve_share", watched)
        with pytest.raises(ValueError, match="source A is corrupt") as info:
            extract_patches([*reqs, (a, 0, None, (0, 0), (8, 8))])  # B's share is looked at first
    assert isinstance(info.value.__cause__, OSError), "the failed share's error lost its cause"
    assert "disk gone" in str(info.value.__cause__)


class _Handle:
    closed = False

    def close(self) -> None:
        self.closed = True


def test_f_an_interrupt_between_the_waiter_count_and_its_try_leaves_no_opening_lock_behind() -> None:
    """revA's ``acquire`` counts itself in the file's opening lock entry under the table's lock, then enters the
    ``try`` whose ``finally`` counts it out: a KeyboardInterrupt in between (a signal lands at any bytecode) left
    the count one up for good, so the entry was never dropped, not even once the manager was collected (revA
    took the clean-up out of ``_forget``). The count stays a lower bound (harmless: the lock is free); a collected
    manager now drops its entry."""
    import gc
    import inspect
    import sys

    from lazystack.io import process
    from lazystack.io.process import FileManager

    code = FileManager.acquire.__code__
    lines, first = inspect.getsourcelines(FileManager.acquire)
    try_line = first + next(k for k, text in enumerate(lines) if text.strip() == "try:")

    def local(frame: Any, event: str, arg: Any) -> Any:
        if event == "line" and frame.f_lineno == try_line:
            raise KeyboardInterrupt
        return local

    def tracer(frame: Any, event: str, arg: Any) -> Any:
        return local if frame.f_code is code else None

    manager = FileManager(_Handle)
    key = manager._key
    old = sys.gettrace()
    sys.settrace(tracer)
    try:
        with pytest.raises(KeyboardInterrupt):
            manager.acquire()
    finally:
        sys.settrace(old)
    table = process._STATE
    assert key in table.opening, "the interrupt did not land between the count and the try (test out of date)"
    handle = manager.acquire()  # the entry left behind still works: its lock is free
    assert not handle.closed
    del manager
    gc.collect()
    assert handle.closed
    assert key not in table.opening, "a collected manager's opening lock entry stays in the table for good"


def test_f_a_failed_batch_leaves_no_stop_behind_for_the_next_batch_on_the_same_stacks() -> None:
    """Held up: the stop is the batch's own (one per ``extract_patches`` call), so after a batch over two sources
    failed, the next batch over the same stacks, and a single-source batch, give every patch (numpy reference)."""
    from test_batch import CountingReader

    from lazystack import LazyImageStack
    from lazystack.io.cache import chunk_cache_size
    from lazystack.ops.batch import extract_patches

    fail = [True]

    class FailingOnce(CountingReader):
        def _one(self, idx: Any) -> Any:
            if fail[0]:
                raise ValueError("source A is corrupt")
            return super()._one(idx)

    rng = np.random.default_rng(15)
    da = rng.integers(0, 60000, (1, 40, 40), dtype=np.uint16)
    db = rng.integers(0, 60000, (1, 100, 100), dtype=np.uint16)
    a = LazyImageStack(FailingOnce(da, (1, 8, 8)), "SYX")
    b = LazyImageStack(CountingReader(db, (1, 20, 20)), "SYX")
    reqs = [(b, 0, None, (y, x), (20, 20)) for y in range(0, 100, 20) for x in range(0, 100, 20)]
    reqs.append((a, 0, None, (3, 5), (16, 16)))
    with chunk_cache_size(0):
        with pytest.raises(ValueError, match="source A is corrupt"):
            extract_patches(reqs)
        fail[0] = False
        got = extract_patches(reqs)
        single = extract_patches(reqs[:-1])
    for (stack, _, _, (y, x), (h, w)), patch in zip(reqs, got, strict=True):
        data = da if stack is a else db
        np.testing.assert_array_equal(patch, data[:, y : y + h, x : x + w].astype(np.float32))
    for want, patch in zip(got[:-1], single, strict=True):
        np.testing.assert_array_equal(patch, want)
