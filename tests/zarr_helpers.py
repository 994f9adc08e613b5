"""Test helpers for the Zarr back end: a real HTTP server that counts requests, store writers."""

from __future__ import annotations

import contextlib
import gzip
import http.server
import os
import re
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.http_range import LocalHTTPServer

METADATA_NAMES = ("zarr.json", ".zarray", ".zgroup", ".zattrs", ".zmetadata")


@contextmanager
def dated_now(root: Path | str) -> Iterator[None]:
    """Files under ``root`` that the block creates or changes get ``time.time_ns()`` as modification time.

    A file's modification time comes from the kernel's coarse clock, which can lag ``time.time_ns()`` (what a zarr
    stack records as its opening time) by a clock tick or more on a loaded machine: a chunk rewritten a few
    milliseconds after the opening could carry an older date than the opening and not be seen as modified. The
    fine clock's now is after the opening and not in the future of a later check.
    """
    root = Path(root)

    def stamps() -> dict[Path, tuple[int, int, int, bytes]]:  # the bytes too: a rewrite in place can keep the rest
        return {
            p: (s.st_ino, s.st_size, s.st_mtime_ns, p.read_bytes())
            for p in root.rglob("*")
            if p.is_file()
            for s in [p.stat()]
        }

    before = stamps()
    yield
    now = time.time_ns()
    for path, stamp in stamps().items():
        if before.get(path) != stamp:
            os.utime(path, ns=(now, now))


def is_metadata_request(path: str) -> bool:
    """Whether an HTTP request path asks for Zarr metadata or a directory listing (not a chunk)."""
    path = path.split("?", 1)[0]
    return path.endswith("/") or path.rsplit("/", 1)[-1] in METADATA_NAMES


@dataclass
class ServerState:
    """What the test server saw and how it misbehaves.

        ``mode`` is ``"ok"``, ``"500"`` (chunk requests answer 500; ``"500:SUFFIX"``
    only those whose path ends with SUFFIX), ``"hang"``
        (chunk requests never get an answer until the server stops), ``"hang-all"``
        (no request gets an answer), ``"drop"``
        (chunk requests see the connection closed without an answer), and for
        answers an HTTP client must handle: ``"no-range"`` (``Range`` ignored:
        200 with the whole file), ``"wrong-range"`` (206 whose ``Content-Range``
        starts one byte later than asked), ``"redirect"`` (302 to the same path
        with ``?moved=1``, served as usual) and ``"gzip"`` (gzip-encoded chunks and
        ranges, whatever the client accepts); ``"trickle"`` sends a chunk's
        headers, then one byte of its body every ``trickle_interval`` seconds
        (0.2 s). ``"503-once"`` and ``"drop-once"`` answer the next chunk
        request with a 503 / a closed connection, then go back to ``"ok"``.
        ``latency`` seconds are waited before answering any request (an
        injected round trip).
    """

    root: Path
    mode: str = "ok"
    requests: list[tuple[str, str]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    connections: list[Any] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    release: threading.Event = field(default_factory=threading.Event)
    trickle_interval: float = 0.2
    latency: float = 0.0

    def paths(self, method: str | None = "GET") -> list[str]:
        """Paths requested so far (``method=None``: any method)."""
        with self.lock:
            return [p for m, p in self.requests if method is None or m == method]

    def chunk_paths(self) -> list[str]:
        """Requested paths that are chunks (neither metadata nor listings)."""
        return [p for p in self.paths(None) if not is_metadata_request(p)]

    def headers_seen(self, name: str) -> set[str]:
        """Values of the request header ``name`` seen so far (case-insensitive name)."""
        with self.lock:
            return {v for h in self.headers for k, v in h.items() if k.lower() == name.lower()}

    def clear(self) -> None:
        """Forget the requests seen so far."""
        with self.lock:
            self.requests.clear()
            self.headers.clear()


def _handler(state: ServerState) -> type[http.server.SimpleHTTPRequestHandler]:
    class Handler(http.server.SimpleHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as real servers
        disable_nagle_algorithm = True  # no 40 ms delayed-ACK stall between headers and body

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, directory=str(state.root), **kwargs)

        def setup(self) -> None:
            super().setup()
            with state.lock:
                state.connections.append(self.connection)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - silence the server
            pass

        def _misbehave(self) -> bool:
            if state.mode == "ok" or (is_metadata_request(self.path) and state.mode != "hang-all"):
                return False
            if state.mode in ("no-range", "wrong-range", "gzip"):
                return False  # answered by do_GET / _send_range
            if state.mode in ("503-once", "drop-once"):
                with state.lock:
                    mode, state.mode = state.mode, "ok"
                if mode == "503-once":
                    self.send_error(503, "test server busy")
                else:
                    self.close_connection = True
                    self.connection.shutdown(2)
                return True
            if state.mode == "trickle":  # headers at once, then a byte every trickle_interval seconds
                self.send_response(200)
                self.send_header("Content-Length", "100")
                self.end_headers()
                for _ in range(100):
                    if state.release.wait(state.trickle_interval):
                        break
                    try:
                        self.wfile.write(b"x")
                        self.wfile.flush()
                    except OSError:
                        break
                self.close_connection = True
                return True
            if state.mode == "redirect":
                if self.path.endswith("?moved=1"):
                    return False
                self.send_response(302)
                self.send_header("Location", self.path + "?moved=1")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return True
            if state.mode == "500" or (state.mode.startswith("500:") and self.path.endswith(state.mode[4:])):
                self.send_error(500, "test server error")
                return True
            if state.mode.startswith("500:"):
                return False
            if state.mode in ("hang", "hang-all"):
                state.release.wait(30)
                self.close_connection = True
                return True
            if state.mode == "drop":
                self.close_connection = True
                self.connection.shutdown(2)
                return True
            msg = f"unknown server mode {state.mode!r}"
            raise ValueError(msg)

        def do_GET(self) -> None:
            with state.lock:
                state.requests.append(("GET", self.path))
                state.headers.append(dict(self.headers.items()))
            if state.latency:
                time.sleep(state.latency)
            if self._misbehave():
                return
            chunk = not is_metadata_request(self.path)
            if self.headers.get("Range") and not (chunk and state.mode == "no-range") and self._send_range():
                return
            if chunk and state.mode == "gzip":
                self._send_gzip()
                return
            super().do_GET()

        def _send_gzip(self) -> None:
            body = gzip.compress(Path(self.translate_path(self.path)).read_bytes())
            self.send_response(200)
            self.send_header("Content-Encoding", "gzip")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _send_range(self) -> bool:
            """Answer a single ``bytes=`` range with 206 (as real servers do; http.server does not)."""
            match = re.fullmatch(r"bytes=(\d*)-(\d*)", self.headers["Range"].strip())
            path = Path(self.translate_path(self.path))
            if match is None or not path.is_file():
                return False
            blob = path.read_bytes()
            first, last = match.groups()
            if first == "":
                start, stop = max(0, len(blob) - int(last)), len(blob)
            else:
                start, stop = int(first), (int(last) + 1 if last else len(blob))
            stop = min(stop, len(blob))
            if start >= len(blob) or start >= stop:
                self.send_error(416, "range not satisfiable")
                return True
            if state.mode == "wrong-range" and not is_metadata_request(self.path):
                start += 1
            body = blob[start:stop]
            self.send_response(206)
            self.send_header("Content-Type", "application/octet-stream")
            if state.mode == "gzip" and not is_metadata_request(self.path):
                body = gzip.compress(body)
                self.send_header("Content-Encoding", "gzip")
            self.send_header("Content-Range", f"bytes {start}-{stop - 1}/{len(blob)}")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return True

        def do_HEAD(self) -> None:
            with state.lock:
                state.requests.append(("HEAD", self.path))
                state.headers.append(dict(self.headers.items()))
            if not self._misbehave():
                super().do_HEAD()

    return Handler


@contextmanager
def serve_directory(root: Path, tls: ssl.SSLContext | None = None) -> Iterator[tuple[str, ServerState]]:
    """Serve ``root`` over HTTP on 127.0.0.1 (a free port) in a thread.

    ``tls``: a server-side context to serve HTTPS with instead.

    Yields
    ------
    (base_url, state)
        ``base_url`` like ``"http://127.0.0.1:PORT"``; ``state`` counts requests.
    """
    import fsspec.implementations.http as fs_http

    state = ServerState(root=Path(root))
    server = LocalHTTPServer(("127.0.0.1", 0), _handler(state))
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"{'https' if tls else 'http'}://127.0.0.1:{server.server_address[1]}", state
    finally:
        state.release.set()
        server.shutdown()
        server.server_close()
        with state.lock:  # a server that is gone closes its kept-alive connections too
            for conn in state.connections:
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
        thread.join(5)
        fs_http.HTTPFileSystem.clear_instance_cache()


def write_plain_store(path: Path, zarr_format: int, *, shards: bool = False, seed: int = 0) -> dict[str, np.ndarray]:
    """Write a group with two arrays (``"a"`` 3-D, ``"b"`` 3-D) and a subgroup, return the data.

    Parameters
    ----------
    path : Path
        Store directory.
    zarr_format : int
        2 or 3.
    shards : bool
        Shard the arrays (Zarr v3 only).
    seed : int
        Random seed.
    """
    import zarr

    rng = np.random.default_rng(seed)
    data = {
        "b": rng.integers(0, 60000, (3, 70, 90), dtype=np.uint16),
        "a": rng.random((2, 50, 45), dtype=np.float32),
    }
    root = zarr.open_group(str(path), mode="w", zarr_format=zarr_format)  # type: ignore[arg-type]
    for name, arr in data.items():
        kwargs: dict[str, Any] = {"chunks": (1, 16, 16)}
        if shards:
            kwargs["shards"] = (1, 32, 32)
        z = root.create_array(name, shape=arr.shape, dtype=arr.dtype, **kwargs)
        z[...] = arr
    sub = root.create_group("nested")
    sub.create_array("deep", shape=(4, 4), dtype="u1")[...] = 7
    return data


def store_file_count(path: Path) -> int:
    """Number of files in a store directory (to prove nothing was written)."""
    return sum(len(files) for _, _, files in os.walk(path))
