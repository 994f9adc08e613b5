"""Remote reads awaited on the calling thread's own event loop (lazystack.sources.zarr.thread_loop).

Stacks here read through it as they do for stores lazystack.sources.zarr.plain_http does
not serve (its ``endpoint`` is patched to serve none).

Compared with zarr's own ``FsspecStore.get`` (through zarr's loop thread) on a
real HTTP server on 127.0.0.1; the fall-back inside a running event loop,
threads with a loop each, and the clean-up when a thread ends.
"""

from __future__ import annotations

import asyncio
import gc
import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr
from zarr.abc.store import RangeByteRequest, SuffixByteRequest
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync
from zarr.storage import FsspecStore
from zarr_helpers import ServerState, serve_directory, write_plain_store

from lazystack import load_zarrs
from lazystack.io.cache import get_chunk_cache, set_chunk_cache_size
from lazystack.sources.zarr import plain_http, thread_loop

# What is tested here is the direct engine's way to the server (the zarr engine reads through zarr's store).
pytestmark = pytest.mark.usefixtures("direct_zarr_engine")


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, ServerState, Path]]:
    root = tmp_path_factory.mktemp("thread-loop")
    write_plain_store(root / "v3.zarr", 3)
    with serve_directory(root) as (url, state):
        yield url, state, root


@pytest.fixture(autouse=True)
def through_aiohttp(monkeypatch: pytest.MonkeyPatch) -> None:
    """Stacks read through the thread loop, as for a store lazystack.sources.zarr.plain_http does not serve."""
    monkeypatch.setattr(plain_http, "endpoint", lambda store: None)


@pytest.fixture
def cold() -> Iterator[None]:
    previous = set_chunk_cache_size(0)
    get_chunk_cache().clear()
    yield
    set_chunk_cache_size(previous)


def _store(url: str) -> FsspecStore:
    return FsspecStore.from_url(f"{url}/v3.zarr", read_only=True)


def _zarr_get(store: FsspecStore, key: str, byte_range: Any = None) -> bytes | None:
    buf = sync(store.get(key, prototype=default_buffer_prototype(), byte_range=byte_range))
    return None if buf is None else buf.to_bytes()


def test_reads_what_zarrs_store_reads(served: tuple[str, ServerState, Path]) -> None:
    url, _, _ = served
    store = _store(url)
    assert thread_loop.serves(store)
    key = "a/zarr.json"
    got = thread_loop.cat_ranges(
        store, [(key, None, None), (key, (3, 17), None), (key, None, 9), ("a/nope", None, None)]
    )
    assert got == [
        _zarr_get(store, key),
        _zarr_get(store, key, RangeByteRequest(3, 17)),
        _zarr_get(store, key, SuffixByteRequest(9)),
        None,  # a key the store does not hold, as zarr reads it
    ]


def test_patches_go_through_the_thread_loop_not_zarrs_loop_thread(
    served: tuple[str, ServerState, Path], cold: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    url, _, root = served
    import zarr.core.sync

    (stack,) = load_zarrs([f"{url}/v3.zarr/a"], "SYX")  # opening reads metadata through zarr, as always
    real_sync = zarr.core.sync.sync
    calls: list[int] = []
    served_here: list[int] = []
    real_cat = thread_loop.cat_ranges

    def counting_sync(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return real_sync(*args, **kwargs)

    def counting_cat(*args: Any, **kwargs: Any) -> Any:
        out = real_cat(*args, **kwargs)
        served_here.append(out is not None)
        return out

    monkeypatch.setattr(zarr.core.sync, "sync", counting_sync)
    monkeypatch.setattr(thread_loop, "cat_ranges", counting_cat)
    ref = zarr.open_array(str(root / "v3.zarr"), path="a", mode="r")[...]
    got = stack.extract_patch(1, None, (3, 5), (20, 30))
    np.testing.assert_array_equal(got[0], ref[1, 3:23, 5:35])
    assert served_here
    assert all(served_here)
    assert not calls  # no hand-off to zarr's event-loop thread


def test_inside_a_running_event_loop_zarr_serves_the_read(served: tuple[str, ServerState, Path], cold: None) -> None:
    url, _, root = served
    (stack,) = load_zarrs([f"{url}/v3.zarr/a"], "SYX")
    ref = zarr.open_array(str(root / "v3.zarr"), path="a", mode="r")[...]

    async def in_a_coroutine() -> tuple[Any, Any]:
        # as in a notebook cell: this thread runs a loop, which run_until_complete cannot nest in
        return thread_loop.cat_ranges(_store(url), [("a/zarr.json", None, None)]), stack.extract_patch(
            0, None, (0, 0), (16, 16)
        )

    fallback, patch = asyncio.run(in_a_coroutine())
    assert fallback is None
    np.testing.assert_array_equal(patch[0], ref[0, :16, :16])


def test_threads_read_on_loops_of_their_own_closed_when_they_end(
    served: tuple[str, ServerState, Path], cold: None
) -> None:
    url, _, root = served
    (stack,) = load_zarrs([f"{url}/v3.zarr/a"], "SYX")
    ref = zarr.open_array(str(root / "v3.zarr"), path="a", mode="r")[...]
    rng = np.random.default_rng(0)
    shape = ref.shape
    requests = [
        (int(rng.integers(shape[0])), int(rng.integers(shape[1] - 17)), int(rng.integers(shape[2] - 19)))
        for _ in range(48)
    ]
    loops: dict[int, Any] = {}
    lock = threading.Lock()

    def read(r: tuple[int, int, int]) -> np.ndarray:
        out = stack.extract_patch(r[0], None, (r[1], r[2]), (17, 19))
        with lock:
            loops[threading.get_ident()] = thread_loop._STATE.loop
        return out

    before = set(thread_loop._LIVE)
    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(read, requests))
    for (s, y, x), patch in zip(requests, got, strict=True):
        np.testing.assert_array_equal(patch[0], ref[s, y : y + 17, x : x + 19])
    assert len({id(loop) for loop in loops.values()}) == len(loops) > 1  # one loop per thread
    del pool
    gc.collect()
    # the pool's threads have ended: their loops and sessions are closed and forgotten
    assert all(loop.is_closed() for loop in loops.values())
    assert set(thread_loop._LIVE) <= before | {id(thread_loop._STATE.loop)}


def test_a_failed_request_leaves_nothing_pending(served: tuple[str, ServerState, Path]) -> None:
    url, state, _ = served
    store = _store(url)
    state.mode = "500"  # chunks only: metadata documents are still served
    try:
        with pytest.raises(Exception, match="500"):
            thread_loop.cat_ranges(
                store, [("a/c/0/0/0", None, None), ("a/zarr.json", None, None), ("a/c/1/0/0", None, None)]
            )
    finally:
        state.mode = "ok"
    loop = thread_loop._STATE.loop
    assert loop is not None
    assert not asyncio.all_tasks(loop)
    assert thread_loop.cat_ranges(store, [("a/zarr.json", (0, 4), None)]) == [_zarr_get(store, "a/zarr.json")[:4]]


def test_only_plain_http_stores_are_served(served: tuple[str, ServerState, Path]) -> None:
    url, _, _ = served

    class Wrapped(FsspecStore):
        pass

    assert thread_loop.serves(_store(url))
    assert not thread_loop.serves(Wrapped(_store(url).fs, path=_store(url).path, read_only=True))
    own_pool = FsspecStore.from_url(
        f"{url}/v3.zarr", read_only=True, storage_options={"client_kwargs": {"connector": 1}}
    )
    assert not thread_loop.serves(own_pool)  # a connection pool belongs to one event loop
    assert not thread_loop.serves(zarr.storage.MemoryStore())


@pytest.mark.skipif(not hasattr(signal, "setitimer"), reason="needs signal.setitimer (POSIX)")
def test_an_interrupted_read_leaves_nothing_pending(served: tuple[str, ServerState, Path]) -> None:
    url, state, _ = served
    store = _store(url)
    keys = [("a/c/0/0/0", None, None), ("a/c/1/0/0", None, None), ("a/c/0/1/0", None, None)]

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGALRM, interrupt)
    state.release.clear()
    state.mode = "hang"  # the server holds every chunk request
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.5)
        started = time.monotonic()
        with pytest.raises(KeyboardInterrupt):
            thread_loop.cat_ranges(store, keys)
        assert time.monotonic() - started < 20
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        state.mode = "ok"
        state.release.set()
    loop = thread_loop._STATE.loop
    assert loop is not None
    assert not [t for t in asyncio.all_tasks(loop) if not t.done()]  # the requests were cancelled
    want = [_zarr_get(store, key) for key, _, _ in keys]
    assert thread_loop.cat_ranges(store, keys) == want  # and the loop reads on


def test_twins_of_collected_filesystems_are_closed(served: tuple[str, ServerState, Path]) -> None:
    url, _, _ = served
    sessions = []
    for _ in range(3):
        store = FsspecStore.from_url(f"{url}/v3.zarr", read_only=True, storage_options={"skip_instance_cache": True})
        assert thread_loop.cat_ranges(store, [("a/zarr.json", (0, 2), None)]) is not None
        twin = thread_loop._STATE.twins[id(store.fs)][1]
        sessions.append(twin._session)
        del store, twin
        gc.collect()
    kept = [twin._session for _, twin in thread_loop._STATE.twins.values()]
    # a new filesystem's twin drops the twins of those collected before it, their sessions closed
    assert not any(s in kept for s in sessions[:-1])
    assert all(s.closed for s in sessions[:-1])
    assert sessions[-1] in kept  # the last one waits for the next new filesystem (or the thread's end)


def _parent_loops_kept(queue: Any) -> None:
    import zarr.core.sync as zsync

    kept = [obj for held in thread_loop._INHERITED for obj in held]
    loops = [obj for obj in kept if isinstance(obj, asyncio.AbstractEventLoop)]
    queue.put((zsync.loop[0] is None, bool(loops) and not any(loop.is_closed() for loop in loops)))


@pytest.mark.timeout(60)
def test_a_forked_child_keeps_its_parents_loops_untouched(served: tuple[str, ServerState, Path]) -> None:
    import multiprocessing as mp

    url, _, _ = served
    _zarr_get(_store(url), "a/zarr.json")  # zarr's loop thread runs in the parent
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    proc = ctx.Process(target=_parent_loops_kept, args=(queue,))
    proc.start()
    dropped_by_zarr, kept_open = queue.get(timeout=30)
    proc.join(30)
    assert proc.exitcode == 0
    # zarr drops its loop in the child; lazystack keeps a reference, so it is never collected (and
    # closed, which would unregister its wake-up pipe from the epoll it shares with the parent)
    assert dropped_by_zarr
    assert kept_open
    assert not thread_loop._AT_FORK  # the parent holds nothing after the fork
    assert _zarr_get(_store(url), "a/zarr.json")  # and reads on
