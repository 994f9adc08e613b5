"""Review of flake15 (session 15, reviewer A): FileManager.acquire's opening locks, extract_patches over sources."""

from __future__ import annotations

import gc
import threading
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from lazystack.io import process
from lazystack.io.process import FileManager


class _Closable:
    """A handle that records whether it was closed."""

    def __init__(self) -> None:
        self.closed = False

    def close(self) -> None:
        self.closed = True


class _Gate:
    """An opening lock planted in the table: it numbers the threads entering it and holds the second one (after it
    got the lock: a third one cannot take it first) until told to go on."""

    def __init__(self) -> None:
        self._real = threading.Lock()
        self._count = threading.Lock()
        self.entries = 0
        self.second_waiting = threading.Event()
        self.second_holds = threading.Event()
        self.third_came = threading.Event()
        self.go_second = threading.Event()

    def __enter__(self) -> _Gate:
        with self._count:
            self.entries += 1
            n = self.entries
        if n == 2:
            self.second_waiting.set()
        elif n >= 3:
            self.third_came.set()
        self._real.acquire()
        if n == 2:
            self.second_holds.set()
            assert self.go_second.wait(60)  # a bound on a hang only
        return self

    def __exit__(self, *exc: object) -> None:
        self._real.release()


def test_a_handle_closed_while_a_thread_waits_to_open_gives_one_open_at_a_time_and_no_leaked_handle(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Thread A opens the file while B waits on the opening lock; A's handle is closed (``close()``, or evicted by
    the LRU bound) before B gets the lock; C then comes. A's successful open dropped the opening lock from the table,
    so C made a new one and opened the file at the same time as B: two handles stored under one key, one of them
    overwritten and never closed (the outcome flake15's fix meant to rule out, reached without a failed open)."""
    gate = _Gate()
    lock = threading.Lock()
    opened: list[_Closable] = []
    inside = [0, 0]  # now, most
    a_inside, b_entered = threading.Event(), threading.Event()

    def opener() -> _Closable:
        name = threading.current_thread().name
        with lock:
            inside[0] += 1
            inside[1] = max(inside)
        try:
            if name == "A":
                a_inside.set()
                assert gate.second_waiting.wait(60)  # B waits on the opening lock
            elif name == "B":
                b_entered.set()
            else:  # C, inside the opener: holds on until B opens too (bounded: B never comes once fixed)
                gate.third_came.set()
                b_entered.wait(60)
            handle = _Closable()
            with lock:
                opened.append(handle)
            return handle
        finally:
            with lock:
                inside[0] -= 1

    manager = FileManager(opener)
    made = iter([gate])  # the first opening lock made (A's) is the gate; later ones are plain locks
    monkeypatch.setattr(process, "threading", SimpleNamespace(Lock=lambda: next(made, None) or threading.Lock()))
    got: dict[str, Any] = {}

    def acquire() -> None:
        got[threading.current_thread().name] = manager.acquire()

    threads = {name: threading.Thread(target=acquire, name=name) for name in "ABC"}
    threads["A"].start()
    assert a_inside.wait(60)
    threads["B"].start()
    threads["A"].join(60)
    assert gate.second_holds.wait(60)  # B has the opening lock (else C could take it first and wait for B in vain)
    manager.close()  # A's handle closed before B gets the opening lock
    threads["C"].start()
    assert gate.third_came.wait(60)  # C waits on the opening lock, or is in the opener
    gate.go_second.set()
    for name in "BC":
        threads[name].join(60)
    try:
        assert inside[1] == 1  # one open at a time
        assert got["B"] is got["C"]  # one handle
    finally:
        manager.close()
    assert all(h.closed for h in opened), "a handle was overwritten in the table and never closed"


def _fails() -> object:
    raise OSError("no such file: missing.tif")


def test_a_manager_collected_while_the_table_is_busy_drops_its_failed_opens_lock() -> None:
    """A failed open leaves its opening lock in the table (flake15); a manager collected while the table's lock is
    busy is an orphan, dropped on the next open: its opening lock must go too (else it stays forever)."""
    manager = FileManager(_fails)
    key = manager._key
    with pytest.raises(OSError, match=r"missing\.tif"):
        manager.acquire()
    with process._STATE.lock:  # another thread inside the table when the manager is collected
        del manager
        gc.collect()
    assert key not in process._STATE.handles
    other = FileManager(_Closable)
    other.acquire()  # the next open drops the orphans
    other.close()
    assert key not in process._STATE.opening


def test_a_handle_seeded_while_the_file_opens_is_kept_and_the_new_one_closed() -> None:
    """``seed()`` stores a handle while another thread is in the opener (a custom source seeding the handle its
    metadata read opened): the open then stored its own handle over the seeded one, which was never closed."""
    manager = FileManager(_Closable)
    seeded = _Closable()
    opened: list[_Closable] = []

    def opener() -> _Closable:
        manager.seed(seeded)  # as another thread would, between the open's start and its end
        handle = _Closable()
        opened.append(handle)
        return handle

    manager._opener = opener
    try:
        assert manager.acquire() is seeded
        assert manager.acquire() is seeded
    finally:
        manager.close()
    assert seeded.closed
    assert all(h.closed for h in opened), "the opened handle was neither kept nor closed"


def test_a_failed_source_share_stops_the_other_sources_shares_and_its_error_leaves() -> None:
    """flake15 made a failed share wait for the others, which then read every chunk of their shares (a 400-chunk
    share of another source: the error came out only once all of it was read, seconds or, remote, minutes
    later; an interrupt waited as long). They now leave at their next chunk, request or round, and the failure
    that stopped them is the error raised (not the stop of a share looked at first)."""
    from test_batch import CountingReader

    from lazystack import LazyImageStack
    from lazystack.io import chunked
    from lazystack.io.cache import chunk_cache_size
    from lazystack.ops.batch import extract_patches

    b_reading, a_failed = threading.Event(), threading.Event()
    after: list[Any] = []

    class Failing(CountingReader):
        def _one(self, idx: Any) -> Any:
            assert b_reading.wait(60)  # the other source is reading
            a_failed.set()
            raise ValueError("source A is corrupt")

    class Slow(CountingReader):
        def _one(self, idx: Any) -> Any:
            b_reading.set()
            assert a_failed.wait(60)
            after.append(idx)
            threading.Event().wait(0.02)  # 400 chunks on 2 threads: 4 s of reading left when A fails
            return super()._one(idx)

    a = LazyImageStack(Failing(np.zeros((1, 8, 8), np.uint16), (1, 8, 8)), "SYX")
    b = LazyImageStack(Slow(np.zeros((1, 400, 400), np.uint16), (1, 20, 20)), "SYX")
    reqs = [(b, 0, None, (y, x), (20, 20)) for y in range(0, 400, 20) for x in range(0, 400, 20)]
    with pytest.MonkeyPatch.context() as mp, chunk_cache_size(0):
        mp.setattr(chunked, "CPU_WORKERS", 2)
        with pytest.raises(ValueError, match="source A is corrupt"):
            extract_patches([*reqs, (a, 0, None, (0, 0), (8, 8))])  # B's share is looked at first
    assert len(after) < 400, "the other source's share read all its chunks after the failure"
