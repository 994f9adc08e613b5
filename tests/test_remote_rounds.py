"""Remote batches fetched in rounds: two rounds in flight, so a two-round batch waits for one round trip.

A real HTTP server on 127.0.0.1 with an injected round trip counts what the
client does: the chunk requests, the most requests in flight at once, and the
busy periods (a request arriving while none is in flight starts one: each is a
round trip the batch waits for in turn). The chunks a batch holds are counted
through the reader's fetch. Patches are compared with numpy slicing of the data
written.
"""

from __future__ import annotations

import gc
import itertools
import threading
import weakref
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from http.server import SimpleHTTPRequestHandler
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr
from zarr_helpers import is_metadata_request

from benchmarks.http_range import LocalHTTPServer, RangeHandler
from lazystack import load_zarrs
from lazystack.core.errors import SourceReadError
from lazystack.io.cache import get_chunk_cache, set_chunk_cache_size
from lazystack.io.chunked import ChunkIndex
from lazystack.ops.batch import extract_patches
from lazystack.sources.zarr.engines import set_zarr_engine

LATENCY = 0.15  # seconds per request: requests sent together overlap at the server whatever the load


class _Counts:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.in_flight = self.max_in_flight = self.busy_periods = 0
        self.chunks: list[str] = []
        self.fail_suffixes: tuple[str, ...] = ()

    def clear(self) -> None:
        with self.lock:
            self.max_in_flight = self.busy_periods = 0
            self.chunks.clear()


@contextmanager
def _server(root: Path) -> Iterator[tuple[str, _Counts]]:
    counts = _Counts()

    class Handler(RangeHandler):
        latency = LATENCY

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, directory=str(root), **kwargs)

        def setup(self) -> None:  # no wait on a new connection: every request waits the same round trip
            SimpleHTTPRequestHandler.setup(self)

        def do_GET(self) -> None:  # noqa: N802 - the standard library's name
            chunk = not is_metadata_request(self.path)
            with counts.lock:
                if chunk:
                    counts.chunks.append(self.path)
                    if counts.in_flight == 0:
                        counts.busy_periods += 1
                    counts.in_flight += 1
                    counts.max_in_flight = max(counts.max_in_flight, counts.in_flight)
            try:
                if chunk and self.path.endswith(counts.fail_suffixes):
                    self.send_error(500, "test server error")
                else:
                    super().do_GET()
            finally:
                if chunk:
                    with counts.lock:
                        counts.in_flight -= 1

    server = LocalHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", counts
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


class _Held:
    """Counts the fetch calls (rounds) of a reader and the decoded chunk bytes alive at once."""

    def __init__(self, reader: Any) -> None:
        self.lock = threading.Lock()
        self.rounds: list[list[ChunkIndex]] = []
        self.alive = self.peak = 0
        self._fetch = reader.fetch_chunks

    def _release(self, n: int) -> None:
        with self.lock:
            self.alive -= n

    def fetch_chunks(self, indices: Sequence[ChunkIndex]) -> Mapping[ChunkIndex, np.ndarray]:
        with self.lock:
            self.rounds.append(list(indices))
        out = dict(self._fetch(indices))
        for idx, chunk in out.items():
            owned = np.array(chunk)  # a chunk of its own, released when the batch lets it go
            out[idx] = owned
            with self.lock:
                self.alive += owned.nbytes
                self.peak = max(self.peak, self.alive)
            weakref.finalize(owned, self._release, owned.nbytes)
        return out


_DATA = np.random.default_rng(11).integers(0, 2**16, (32, 256, 256), dtype=np.uint16)
_CHUNK_BYTES = 8 * 64 * 64 * 2  # 64 KiB


@pytest.fixture(scope="module")
def remote(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, _Counts]]:
    root = tmp_path_factory.mktemp("rounds")
    z = zarr.create_array(str(root / "v.zarr"), shape=_DATA.shape, chunks=(8, 64, 64), dtype="uint16")
    z[...] = _DATA
    with _server(root) as served:
        yield served


@pytest.fixture
def cold(remote: tuple[str, _Counts]) -> Iterator[tuple[Any, _Held, _Counts]]:
    """A remote stack on the direct engine, the chunk cache off, its reader's fetches counted."""
    url, counts = remote
    previous_engine = set_zarr_engine("direct")
    previous = set_chunk_cache_size(0)
    try:
        (stack,) = load_zarrs(f"{url}/v.zarr", "ZYX")
        chunked = stack.reader.as_chunked()
        assert chunked.capabilities.remote
        held = _Held(chunked)
        chunked.fetch_chunks = held.fetch_chunks  # every round's fetch goes through the counter
        counts.clear()
        yield stack, held, counts
    finally:
        counts.fail_suffixes = ()
        set_chunk_cache_size(previous)
        set_zarr_engine(previous_engine)
        get_chunk_cache().clear()


def _reqs(n: int, size: tuple[int, int, int], seed: int) -> list[tuple[int, None, tuple[int, ...], tuple[int, ...]]]:
    rng = np.random.default_rng(seed)
    return [
        (0, None, tuple(int(rng.integers(0, _DATA.shape[a] - size[a] + 1)) for a in range(3)), size) for _ in range(n)
    ]


def _check(reqs: list[Any], got: list[np.ndarray]) -> None:
    for (_, _, c, s), patch in zip(reqs, got, strict=True):
        np.testing.assert_array_equal(patch[0], _DATA[c[0] : c[0] + s[0], c[1] : c[1] + s[1], c[2] : c[2] + s[2]])


def _touched(stack: Any, reqs: list[Any]) -> list[set[ChunkIndex]]:
    grid = stack.reader.as_chunked().chunk_grid
    return [set(grid.touched(stack.plan_patch(*r)[0])) for r in reqs]


def test_a_two_round_batch_waits_for_one_round_trip(cold: tuple[Any, _Held, _Counts]) -> None:
    stack, held, counts = cold
    reqs = [(0, None, (0, 0, 0), (16, 128, 64)), (0, None, (16, 128, 128), (16, 128, 64))]  # 4 + 4 chunks
    bound = 4 * _CHUNK_BYTES  # one request a round
    got = extract_patches([(stack, *r) for r in reqs], max_batch_bytes=bound)
    _check(reqs, got)
    assert len(held.rounds) == 2
    assert len(counts.chunks) == 8
    assert counts.busy_periods == 1  # both rounds in flight together: one round trip, not two
    assert counts.max_in_flight > 4  # more than one round's requests at once
    assert 0 < held.peak <= 2 * bound  # at most two rounds alive at once, as documented
    del got
    gc.collect()
    assert held.alive == 0


def test_many_rounds_hold_at_most_two_and_fetch_each_chunk_once(cold: tuple[Any, _Held, _Counts]) -> None:
    """A 3-D batch over many rounds, neighbours sharing chunks: successive rounds never fetch a chunk twice.

    (A chunk needed by two rounds further apart is fetched again, the cache off, as documented.)
    """
    stack, held, counts = cold
    reqs = _reqs(24, (16, 48, 48), 3)
    reqs += [(0, None, (c[0], c[1] + 8, c[2] + 8), s) for _, _, c, s in reqs[:6]]  # neighbours sharing chunks
    touched = _touched(stack, reqs)
    distinct = set().union(*touched)
    bound = 16 * _CHUNK_BYTES
    got = extract_patches([(stack, *r) for r in reqs], max_batch_bytes=bound)
    _check(reqs, got)
    n_rounds = len(held.rounds)
    assert n_rounds >= 4
    assert {c for r in held.rounds for c in r} == distinct
    # a chunk two successive rounds need is fetched once. Fetches are recorded as they start: rounds 0 and 1
    # start together (either may be recorded first), round k + 2 only once round k is served.
    rounds = [set(r) for r in held.rounds]
    assert not rounds[0] & rounds[1]
    assert not (rounds[2] & rounds[0] and rounds[2] & rounds[1])  # round 2 follows whichever of them is round 1
    for first, second in itertools.pairwise(rounds[2:]):
        assert not first & second
    assert len(counts.chunks) == sum(len(r) for r in held.rounds)
    # each round trip covers two rounds (one period of slack for a loaded machine; one by one: n_rounds)
    assert counts.busy_periods <= (n_rounds + 1) // 2 + 1 < n_rounds
    largest = max(len(t) for t in touched) * _CHUNK_BYTES
    assert held.peak <= 2 * max(bound, largest)
    del got
    gc.collect()
    assert held.alive == 0


def test_a_one_round_batch_is_one_fetch(cold: tuple[Any, _Held, _Counts]) -> None:
    stack, held, counts = cold
    reqs = _reqs(8, (8, 32, 32), 4)
    got = extract_patches([(stack, *r) for r in reqs])
    _check(reqs, got)
    assert len(held.rounds) == 1
    assert counts.busy_periods == 1
    assert len(counts.chunks) == len(set().union(*_touched(stack, reqs)))


@pytest.mark.parametrize("failing_round", [0, 1, 2])
def test_a_failing_round_raises_names_the_chunk_url_and_holds_nothing(
    cold: tuple[Any, _Held, _Counts], failing_round: int
) -> None:
    stack, held, counts = cold
    reqs = [(0, None, (8 * k, 64 * k, 0), (8, 64, 64)) for k in range(4)]  # one chunk each: 4 rounds of 1
    failing = _touched(stack, reqs)[failing_round].pop()
    key = "/".join(str(i) for i in failing)
    counts.fail_suffixes = (f"/c/{key}",)
    with pytest.raises(SourceReadError) as info:
        extract_patches([(stack, *r) for r in reqs], max_batch_bytes=_CHUNK_BYTES)
    assert f"/v.zarr/c/{key}" in str(info.value)
    assert "500" in str(info.value)
    assert len(held.rounds) <= failing_round + 2  # at most the round after the failing one was started
    del info
    gc.collect()
    assert held.alive == 0


class _Interrupted(BaseException):
    """What the test's SIGINT handler raises in the main thread (as KeyboardInterrupt would)."""


def test_an_interrupt_while_waiting_for_the_next_round_waits_for_it(cold: tuple[Any, _Held, _Counts]) -> None:
    """Ctrl-C while the batch waits for round 1: the round's fetch is over when the interrupt propagates.

    The fetch of round 1 is held at a gate; SIGINT reaches the main thread while it waits for that round.
    """
    import os
    import signal
    import time

    stack, held, _ = cold
    chunked = stack.reader.as_chunked()
    counted = chunked.fetch_chunks
    gate, entered = threading.Event(), threading.Event()
    active: list[int] = []

    def gated(indices: Sequence[ChunkIndex]) -> Mapping[ChunkIndex, np.ndarray]:
        active.append(1)
        try:
            if threading.current_thread() is not threading.main_thread():  # round 1, on the round pool
                entered.set()
                gate.wait(60)
            return counted(indices)
        finally:
            active.pop()

    chunked.fetch_chunks = gated
    reqs = [(0, None, (0, 0, 0), (8, 64, 64)), (0, None, (8, 64, 64), (8, 64, 64))]  # one chunk each: 2 rounds

    def interrupt() -> None:
        assert entered.wait(60)
        while len(held.rounds) < 1:  # round 0 fetched in the main thread
            time.sleep(0.01)
        time.sleep(0.5)  # round 0 (one patch) served: the main thread waits for round 1
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.5)
        gate.set()

    def handler(signum: int, frame: Any) -> None:
        raise _Interrupted

    previous = signal.signal(signal.SIGINT, handler)
    thread = threading.Thread(target=interrupt)
    thread.start()
    try:
        with pytest.raises(_Interrupted):
            extract_patches([(stack, *r) for r in reqs], max_batch_bytes=_CHUNK_BYTES)
        still_running = len(active)
    finally:
        gate.set()
        thread.join(60)
        signal.signal(signal.SIGINT, previous)
    assert still_running == 0  # no round left fetching behind the caller's back
