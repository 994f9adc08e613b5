"""Chunk GETs on kept-alive standard-library connections (lazystack.sources.zarr.plain_http).

Compared with zarr's own ``FsspecStore.get`` (fsspec and aiohttp) and with the
files on disk, on a real HTTP server on 127.0.0.1 that can misbehave: a
server ignoring ``Range``, a wrong ``Content-Range``, redirects, gzip, errors,
silence, and kept-alive connections it closes. The load_zarrs suite over HTTP
(tests/test_zarr_http.py) also runs through this client.
"""

from __future__ import annotations

import base64
import contextlib
import gc
import multiprocessing as mp
import os
import shutil
import socket
import ssl
import subprocess
import threading
import time
import warnings
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
import zarr
from zarr.abc.store import RangeByteRequest, SuffixByteRequest
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync
from zarr.storage import FsspecStore
from zarr_helpers import ServerState, serve_directory, write_plain_store

from lazystack import load_zarrs
from lazystack.core.errors import SourceReadError
from lazystack.io.cache import get_chunk_cache, set_chunk_cache_size
from lazystack.sources.zarr import plain_http, thread_loop

# What is tested here is the direct engine's way to the server (the zarr engine reads through zarr's store).
pytestmark = pytest.mark.usefixtures("direct_zarr_engine")

CHUNK = "b/c/0/0/0"  # a shard of the sharded array: ranges and suffixes are real reads of it


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, ServerState, Path]]:
    root = tmp_path_factory.mktemp("plain-http")
    write_plain_store(root / "v3.zarr", 3, shards=True)
    with serve_directory(root) as (url, state):
        yield url, state, root


@pytest.fixture
def server(served: tuple[str, ServerState, Path]) -> Iterator[tuple[str, ServerState, Path]]:
    url, state, root = served
    state.mode = "ok"
    state.clear()
    previous = set_chunk_cache_size(0)  # every read goes to the server
    get_chunk_cache().clear()
    yield url, state, root
    state.mode = "ok"
    set_chunk_cache_size(previous)


def _basic_auth(user: str, password: str) -> aiohttp.BasicAuth:
    with warnings.catch_warnings():  # deprecated in aiohttp 3.14, still what fsspec users pass
        warnings.simplefilter("ignore", DeprecationWarning)
        return aiohttp.BasicAuth(user, password)


def _store(url: str, **options: Any) -> FsspecStore:
    return FsspecStore.from_url(f"{url}/v3.zarr", read_only=True, storage_options=options or None)


def _endpoint(url: str, **options: Any) -> plain_http.Endpoint:
    found = plain_http.endpoint(_store(url, **options))
    assert found is not None
    return found


def _zarr_get(store: FsspecStore, key: str, byte_range: Any = None) -> bytes | None:
    buf = sync(store.get(key, prototype=default_buffer_prototype(), byte_range=byte_range))
    return None if buf is None else buf.to_bytes()


def _reference(root: Path) -> np.ndarray:
    return zarr.open_array(str(root / "v3.zarr"), path="b", mode="r")[...]


@pytest.mark.parametrize(
    ("options", "served_"),
    [
        ({}, True),
        ({"headers": {"X-A": "1"}, "client_kwargs": {"timeout": aiohttp.ClientTimeout(total=5)}}, True),
        ({"client_kwargs": {"auth": _basic_auth("u", "p"), "headers": {"X-B": "2"}}}, True),
        ({"encoded": True}, True),
        ({"client_kwargs": {"trust_env": True}}, False),  # proxies from the environment: aiohttp's
        ({"client_kwargs": {"cookies": {"a": "b"}}}, False),
        ({"client_kwargs": {"timeout": 5}}, False),  # not an aiohttp.ClientTimeout
        ({"ssl": False}, False),  # a request option it does not honour
        ({"params": {"sig": "x"}}, False),
        ({"headers": {"X-A": 1}}, False),  # a header that is not text
        ({"headers": {"authorization": "Bearer T"}, "client_kwargs": {"auth": _basic_auth("u", "p")}}, False),
    ],
)
def test_serves_plain_stores_whose_every_option_it_honours(
    served: tuple[str, ServerState, Path], options: dict[str, Any], served_: bool
) -> None:
    url, _, _ = served
    assert (plain_http.endpoint(_store(url, **options)) is not None) is served_


def test_limits_default_to_aiohttps_and_other_allowed_exceptions_are_refused(
    served: tuple[str, ServerState, Path],
) -> None:
    url, _, _ = served
    store = _store(url)
    assert _endpoint(url)._total == aiohttp.client.DEFAULT_TIMEOUT.total  # no timeout given: aiohttp's default
    wider = FsspecStore(store.fs, read_only=True, path=store.path, allowed_exceptions=(FileNotFoundError, OSError))
    assert plain_http.endpoint(wider) is None  # zarr would read any OSError as a missing key: left to zarr


def test_serves_only_plain_http_urls_and_fsspec_stores(served: tuple[str, ServerState, Path], tmp_path: Path) -> None:
    url, _, _ = served

    class Mine(FsspecStore):
        pass

    assert plain_http.endpoint(Mine.from_url(f"{url}/v3.zarr", read_only=True)) is None
    assert plain_http.endpoint(FsspecStore.from_url(f"{url}/v3.zarr?sig=1", read_only=True)) is None
    assert plain_http.endpoint(FsspecStore.from_url("memory://x.zarr", read_only=True)) is None
    assert plain_http.endpoint(zarr.storage.LocalStore(tmp_path)) is None


def test_reads_what_zarrs_store_reads(server: tuple[str, ServerState, Path]) -> None:
    url, _, _ = server
    store = _store(url)
    requests: list[plain_http.Request] = [
        (CHUNK, None, None),
        (CHUNK, (3, 17), None),
        (CHUNK, (5, 5), None),  # an empty range: no request, as fsspec
        (CHUNK, None, 9),
        (CHUNK, None, 0),  # fsspec asks for bytes=0-: the whole value
        ("b/c/9/9/9", None, None),  # a key the store does not hold
        ("b/zarr.json", None, None),
    ]
    expected = [
        _zarr_get(store, CHUNK),
        _zarr_get(store, CHUNK, RangeByteRequest(3, 17)),
        _zarr_get(store, CHUNK, RangeByteRequest(5, 5)),
        _zarr_get(store, CHUNK, SuffixByteRequest(9)),
        _zarr_get(store, CHUNK, SuffixByteRequest(0)),
        None,
        _zarr_get(store, "b/zarr.json"),
    ]
    assert _endpoint(url).cat_ranges(requests) == expected


def test_more_keys_than_connections_come_in_waves(server: tuple[str, ServerState, Path]) -> None:
    url, _, root = server
    folder = root / "v3.zarr"
    keys = sorted(str(p.relative_to(folder)) for p in (folder / "a" / "c").rglob("*") if p.is_file())
    keys = (keys * 3)[: plain_http.MAX_CONNECTIONS * 2 + 5]
    endpoint = _endpoint(url)
    got = endpoint.cat_ranges([(k, None, None) for k in keys])
    assert got == [(folder / k).read_bytes() for k in keys]
    assert len(plain_http._POOL.servers[endpoint._server].items) == plain_http.MAX_CONNECTIONS


def test_patches_read_without_aiohttp_or_zarrs_loop(
    server: tuple[str, ServerState, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, _, root = server
    (stack,) = load_zarrs([f"{url}/v3.zarr/b"], "SYX")
    calls: list[str] = []
    monkeypatch.setattr(thread_loop, "cat_ranges", lambda *a: calls.append("thread_loop"))
    monkeypatch.setattr(zarr.core.sync, "sync", lambda *a, **k: calls.append("zarr"))
    ref = _reference(root)
    for s, y, x in [(0, 0, 0), (1, 20, 30), (2, 40, 60), (2, 50, 70)]:
        np.testing.assert_array_equal(stack.extract_patch(s, None, (y, x), (20, 20))[0], ref[s, y : y + 20, x : x + 20])
    batch = stack.extract_patches([(0, None, (5, 6), (30, 40)), (1, None, (33, 44), (17, 19))])
    np.testing.assert_array_equal(batch[0][0], ref[0, 5:35, 6:46])
    np.testing.assert_array_equal(batch[1][0], ref[1, 33:50, 44:63])
    assert not calls


def test_headers_and_basic_auth_reach_the_server(server: tuple[str, ServerState, Path]) -> None:
    url, state, _ = server
    options = {
        "headers": {"X-Which": "request"},
        "client_kwargs": {"headers": {"x-which": "session", "X-Only": "session"}, "auth": _basic_auth("u", "p")},
    }
    _endpoint(url, **options).cat_ranges([(CHUNK, (0, 10), None)])
    (seen,) = state.headers
    assert seen["X-Which"] == "request"  # the request's options override the session's, as in aiohttp
    assert seen["X-Only"] == "session"
    assert seen["Authorization"] == "Basic " + base64.b64encode(b"u:p").decode()
    assert seen["Accept-Encoding"] == "identity"
    assert seen["Range"] == "bytes=0-9"
    assert seen["User-Agent"] == aiohttp.http.SERVER_SOFTWARE  # as aiohttp would send


def test_a_server_ignoring_range_still_gives_the_bytes_asked_for(server: tuple[str, ServerState, Path]) -> None:
    url, state, root = server
    blob = (root / "v3.zarr" / CHUNK).read_bytes()
    state.mode = "no-range"
    got = _endpoint(url).cat_ranges([(CHUNK, (3, 17), None), (CHUNK, None, 9), (CHUNK, (7, len(blob) + 50), None)])
    assert got == [blob[3:17], blob[-9:], blob[7:]]
    (stack,) = load_zarrs([f"{url}/v3.zarr/b"], "SYX")  # sharded: the shard index is a suffix read
    got_patch = stack.extract_patch(1, None, (10, 20), (30, 40))[0]
    np.testing.assert_array_equal(got_patch, _reference(root)[1, 10:40, 20:60])


def test_a_range_answered_with_other_bytes_raises(server: tuple[str, ServerState, Path]) -> None:
    url, state, _ = server
    state.mode = "wrong-range"
    with pytest.raises(OSError, match="Content-Range 'bytes 4-16/"):
        _endpoint(url).cat_ranges([(CHUNK, (3, 17), None)])
    (stack,) = load_zarrs([f"{url}/v3.zarr/b"], "SYX")
    with pytest.raises(SourceReadError, match=r"v3\.zarr"):
        stack.extract_patch(0, None, (0, 0), (8, 8))


@pytest.mark.parametrize("mode", ["redirect", "gzip"])
def test_redirects_and_encoded_bodies_are_left_to_aiohttp(
    server: tuple[str, ServerState, Path], mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    url, state, root = server
    state.mode = mode
    assert _endpoint(url).cat_ranges([(CHUNK, None, None)]) is None
    real = plain_http.Endpoint.cat_ranges
    tried: list[Any] = []

    def counting(self: plain_http.Endpoint, requests: Any) -> Any:
        tried.append(real(self, requests))
        return tried[-1]

    monkeypatch.setattr(plain_http.Endpoint, "cat_ranges", counting)
    (stack,) = load_zarrs([f"{url}/v3.zarr/b"], "SYX")
    ref = _reference(root)
    for s in range(3):
        np.testing.assert_array_equal(stack.extract_patch(s, None, (30, 40), (16, 16))[0], ref[s, 30:46, 40:56])
    assert tried == [None]  # tried once: from that answer on, this store's reads go to aiohttp
    assert any("gzip" in v for v in state.headers_seen("Accept-Encoding"))  # aiohttp's own negotiation


def test_error_status_raises_and_names_it(server: tuple[str, ServerState, Path]) -> None:
    url, state, _ = server
    state.mode = "500"
    with pytest.raises(plain_http.HTTPStatusError, match=r"HTTP 500 .* for GET .*/v3\.zarr/b/c/0/0/0") as info:
        _endpoint(url).cat_ranges([(CHUNK, None, None)])
    assert info.value.status == 500
    state.mode = "ok"  # the connections of the failed read were closed: the next read opens new ones
    assert _endpoint(url).cat_ranges([(CHUNK, (0, 4), None)]) == [(server[2] / "v3.zarr" / CHUNK).read_bytes()[:4]]


def test_a_failure_in_a_later_wave_leaves_the_connections_reusable(server: tuple[str, ServerState, Path]) -> None:
    url, state, root = server
    folder = root / "v3.zarr"
    keys = sorted(str(p.relative_to(folder)) for p in (folder / "a" / "c").rglob("*") if p.is_file())
    keys = (keys * 3)[: plain_http.MAX_CONNECTIONS + 2]
    failing = "a/c/9/9/9"  # served 500: a key of the second wave, before its last
    endpoint = _endpoint(url)
    state.mode = "500:" + failing
    with pytest.raises(plain_http.HTTPStatusError, match=failing):
        endpoint.cat_ranges([(k, None, None) for k in [*keys, failing, keys[0]]])
    state.mode = "ok"
    assert endpoint.cat_ranges([(k, None, None) for k in keys]) == [(folder / k).read_bytes() for k in keys]


def test_a_kept_alive_connection_the_server_closed_is_reopened(server: tuple[str, ServerState, Path]) -> None:
    url, state, root = server
    (stack,) = load_zarrs([f"{url}/v3.zarr/b"], "SYX")
    ref = _reference(root)
    np.testing.assert_array_equal(stack.extract_patch(0, None, (0, 0), (40, 40))[0], ref[0, :40, :40])
    with state.lock:  # the server drops every idle connection, as after its keep-alive timeout
        for conn in state.connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
    time.sleep(0.05)
    np.testing.assert_array_equal(stack.extract_patch(1, None, (20, 30), (40, 40))[0], ref[1, 20:60, 30:70])


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "timeout", [aiohttp.ClientTimeout(total=0.5), aiohttp.ClientTimeout(total=None, sock_read=0.5)], ids=str
)
def test_a_silent_server_times_out(server: tuple[str, ServerState, Path], timeout: aiohttp.ClientTimeout) -> None:
    url, state, _ = server
    state.mode = "hang"
    start = time.monotonic()
    with pytest.raises(TimeoutError):
        _endpoint(url, client_kwargs={"timeout": timeout}).cat_ranges([(CHUNK, None, None)] * 3)
    assert time.monotonic() - start < 10


@pytest.mark.timeout(60)
def test_a_trickling_server_cannot_stretch_the_total_limit(server: tuple[str, ServerState, Path]) -> None:
    url, state, _ = server
    state.mode = "trickle"  # a byte every 0.2 s: each read well within sock_read
    start = time.monotonic()
    with pytest.raises(TimeoutError, match=r"GET .*/v3\.zarr/b/c/0/0/0: no complete answer .*total=1\.0"):
        _endpoint(url, client_kwargs={"timeout": aiohttp.ClientTimeout(total=1.0, sock_read=5)}).cat_ranges(
            [(CHUNK, None, None)]
        )
    assert time.monotonic() - start < 4


def test_failures_name_the_url(tmp_path: Path) -> None:
    with serve_directory(tmp_path) as (url, _):
        endpoint = _endpoint(url)
    with pytest.raises(ConnectionError, match=f"GET {url}/v3.zarr/b/c/1/2/3: ConnectionRefusedError"):
        endpoint.cat_ranges([("b/c/1/2/3", None, None)])


def test_connections_idle_too_long_are_replaced(
    server: tuple[str, ServerState, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, state, root = server
    endpoint = _endpoint(url)
    blob = (root / "v3.zarr" / CHUNK).read_bytes()
    assert endpoint.cat_ranges([(CHUNK, None, None)]) == [blob]
    with state.lock:
        before = len(state.connections)
    assert endpoint.cat_ranges([(CHUNK, None, None)]) == [blob]
    with state.lock:
        assert len(state.connections) == before  # kept alive
    monkeypatch.setattr(plain_http, "IDLE_SECONDS", 0.0)
    assert endpoint.cat_ranges([(CHUNK, None, None)]) == [blob]
    with state.lock:
        assert len(state.connections) == before + 1  # idle too long: closed, a new one opened


def test_threads_have_connections_of_their_own_closed_when_they_end(server: tuple[str, ServerState, Path]) -> None:
    url, _, root = server
    (stack,) = load_zarrs([f"{url}/v3.zarr/b"], "SYX")
    ref = _reference(root)
    rng = np.random.default_rng(0)
    requests = [(int(rng.integers(3)), int(rng.integers(50)), int(rng.integers(70))) for _ in range(48)]
    conns: dict[int, list[Any]] = {}
    lock = threading.Lock()

    def read(r: tuple[int, int, int]) -> np.ndarray:
        out = stack.extract_patch(r[0], None, (r[1], r[2]), (20, 20))
        with lock:
            conns[threading.get_ident()] = [c for group in plain_http._POOL.servers.values() for c in group.items]
        return out

    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(read, requests))
    for (s, y, x), patch in zip(requests, got, strict=True):
        np.testing.assert_array_equal(patch[0], ref[s, y : y + 20, x : x + 20])
    mine = [id(c) for group in conns.values() for c in group]
    assert len(conns) > 1
    assert len(set(mine)) == len(mine)  # no connection shared by two threads
    del pool
    gc.collect()
    assert all(c.sock is None for group in conns.values() for c in group)  # closed with their threads


def _read_in_child(stack: Any, queue: Any) -> None:
    pool = plain_http._POOL
    inherited = pool.pid != os.getpid() and bool(pool.servers)
    queue.put((inherited, stack.extract_patch(2, None, (10, 11), (12, 13)), len(pool.servers)))


@pytest.mark.timeout(60)
def test_a_forked_child_opens_connections_of_its_own(server: tuple[str, ServerState, Path]) -> None:
    url, _, root = server
    (stack,) = load_zarrs([f"{url}/v3.zarr/b"], "SYX")
    ref = _reference(root)
    stack.extract_patch(0, None, (0, 0), (8, 8))  # the parent has kept-alive connections
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    proc = ctx.Process(target=_read_in_child, args=(stack, queue))
    proc.start()
    inherited, patch, n_servers = queue.get(timeout=30)
    proc.join(30)
    assert inherited  # the child saw the parent's pool ...
    assert n_servers == 1  # ... and replaced it with its own
    np.testing.assert_array_equal(patch[0], ref[2, 10:22, 11:24])
    np.testing.assert_array_equal(stack.extract_patch(1, None, (5, 5), (9, 9))[0], ref[1, 5:14, 5:14])


# -- https ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def https_served(
    served: tuple[str, ServerState, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, ssl.SSLContext]]:
    """The same files over HTTPS with a self-signed certificate for 127.0.0.1, and a context that trusts it."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("the openssl command is needed to make a test certificate")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    request = ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1"]
    names = ["-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)]
    subprocess.run(
        [openssl, *request, *names],
        check=True,
        capture_output=True,
    )
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(cert, key)
    with serve_directory(served[2], tls=server_context) as (url, _):
        yield url, ssl.create_default_context(cafile=str(cert))


def test_https_reads_verify_the_server(
    https_served: tuple[str, ssl.SSLContext], served: tuple[str, ServerState, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, trusting = https_served
    root = served[2]
    assert url.startswith("https://")
    with pytest.raises(ConnectionError, match=f"GET {url}/v3.zarr/{CHUNK}") as info:
        _endpoint(url).cat_ranges([(CHUNK, None, None)])
    assert isinstance(info.value.__cause__, ssl.SSLCertVerificationError)  # nobody vouches for it: refused
    monkeypatch.setattr(plain_http, "_SSL", [trusting])
    monkeypatch.setattr(plain_http._POOL, "servers", {})  # connections keep the context they were made with
    got = _endpoint(url).cat_ranges([(CHUNK, None, None), (CHUNK, (3, 17), None)])
    blob = (root / "v3.zarr" / CHUNK).read_bytes()
    assert got == [blob, blob[3:17]]


@pytest.mark.parametrize("encoded", [False, True])
def test_odd_paths_are_requested_as_aiohttp_requests_them(server: tuple[str, ServerState, Path], encoded: bool) -> None:
    url, state, root = server
    folder = root / "odd name ü" / "c" / "0 1"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "x%41").write_bytes(b"literal percent")
    (folder / "xA").write_bytes(b"unreserved A")  # what yarl makes of %41
    base = f"{url}/odd%20name%20%C3%BC" if encoded else f"{url}/odd name ü"
    key = "c/0%201/x%41" if encoded else "c/0 1/x%41"
    store = FsspecStore.from_url(base, read_only=True, storage_options={"encoded": encoded})
    endpoint = plain_http.endpoint(store)
    assert endpoint is not None
    state.clear()
    got = endpoint.cat_ranges([(key, None, None)])
    assert got is not None
    assert got[0] is not None
    assert got == thread_loop.cat_ranges(store, [(key, None, None)])  # fsspec's aiohttp reads the same file
    first, second = state.paths()
    assert first == second  # with the same request line
