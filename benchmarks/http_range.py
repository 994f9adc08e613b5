"""A static-file HTTP handler with ``Range: bytes=`` support, as object stores serve files.

Python's ``SimpleHTTPRequestHandler`` ignores ``Range``; zarr's sharded reads
need it. Used by the remote-Zarr benchmark and by the engine tests, with
:class:`LocalHTTPServer`.
"""

from __future__ import annotations

import re
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

__all__ = ["LocalHTTPServer", "RangeHandler"]


class LocalHTTPServer(ThreadingHTTPServer):
    """A threaded HTTP server whose listen backlog takes a client's burst of parallel connections.

    socketserver's default backlog of 5 drops connection attempts when aiohttp
    opens dozens at once (zarr's concurrent chunk reads), and the client then
    waits for its read timeout.
    """

    request_queue_size = 128
    daemon_threads = True


class RangeHandler(SimpleHTTPRequestHandler):
    """Static files with ``Range: bytes=`` support (as object stores serve them)."""

    protocol_version = "HTTP/1.1"
    # Headers and body go out in separate writes. With Nagle's algorithm on, the
    # body's last segment waits for the client's delayed ACK of the headers (40 ms
    # on Linux) on a kept-alive connection; object stores do not stall like that.
    disable_nagle_algorithm = True

    def log_message(self, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        rng = self.headers.get("Range")
        path = Path(self.translate_path(self.path))
        if rng is None or not path.is_file():
            super().do_GET()
            return
        data = path.read_bytes()
        m = re.fullmatch(r"bytes=(\d*)-(\d*)", rng.strip())
        if m is None:
            self.send_error(416)
            return
        a, b = m.groups()
        start, stop = (max(0, len(data) - int(b)), len(data)) if a == "" else (int(a), int(b) + 1 if b else len(data))
        body = data[start:stop]
        self.send_response(206)
        self.send_header("Content-Range", f"bytes {start}-{start + len(body) - 1}/{len(data)}")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
