"""A static-file HTTP handler with ``Range: bytes=`` support, as object stores serve files.

Python's ``SimpleHTTPRequestHandler`` ignores ``Range``; zarr's sharded reads
need it. Used by the remote-Zarr benchmark and by the engine tests, with
:class:`LocalHTTPServer`.

Run as a module it compares cold remote patches of two or more checkouts of
lazystack over a server with an injected round trip, where concurrency
decides and per-GET overhead does not::

    python -m benchmarks.http_range --rtt-ms 5 --code /path/to/old --code /path/to/new

Each checkout reads in its own subprocess (its ``lazystack`` first on
``sys.path``), blocks alternating between the checkouts; the medians of
every block are printed and the median of the blocks per checkout.

``--batches`` times cold ``extract_patches`` batches instead (the chunk cache
emptied before each): 32 3-D patches of 16x64x64 over 8x128x128 chunks and 64
2-D patches of 64x64 over 256x256 chunks, uint16 zstd, where the number of
sequential network round trips a batch waits for decides::

    python -m benchmarks.http_range --batches --rtt-ms 5 --code /path/to/old --code /path/to/new
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

__all__ = ["LocalHTTPServer", "RangeHandler", "compare", "compare_batches", "serve"]


class LocalHTTPServer(ThreadingHTTPServer):
    """A threaded HTTP server whose listen backlog takes a client's burst of parallel connections.

    socketserver's default backlog of 5 drops connection attempts when aiohttp
    opens dozens at once (zarr's concurrent chunk reads), and the client then
    waits for its read timeout.
    """

    request_queue_size = 128
    daemon_threads = True


class RangeHandler(SimpleHTTPRequestHandler):
    """Static files with ``Range: bytes=`` support (as object stores serve them).

    ``latency`` (seconds, class attribute, default 0) is waited before each
    answer and once when a connection opens (a TCP handshake's round trip):
    an injected network round trip.
    """

    protocol_version = "HTTP/1.1"
    # Headers and body go out in separate writes. With Nagle's algorithm on, the
    # body's last segment waits for the client's delayed ACK of the headers (40 ms
    # on Linux) on a kept-alive connection; object stores do not stall like that.
    disable_nagle_algorithm = True
    latency = 0.0

    def log_message(self, *args: Any) -> None:
        pass

    def setup(self) -> None:
        super().setup()
        if self.latency:
            time.sleep(self.latency)

    def do_GET(self) -> None:
        if self.latency:
            time.sleep(self.latency)
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


def serve(root: str, latency: float = 0.0) -> None:
    """Serve ``root`` on 127.0.0.1 (print the port, stop when stdin closes)."""
    handler = type("Handler", (RangeHandler,), {"latency": latency})
    os.chdir(root)
    server = LocalHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    print(server.server_address[1], flush=True)
    sys.stdin.read()
    server.shutdown()


_CLIENT = r"""
import json, sys, time
import numpy as np
from lazystack import load_zarrs, set_chunk_cache_size
url, n, seed, side = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
set_chunk_cache_size(0)
(stack,) = load_zarrs(url, "YX")
rng = np.random.default_rng(seed)
pos = [(int(y), int(x)) for y, x in rng.integers(0, side - 64, (n + 5, 2))]
for p in pos[:5]:
    stack.extract_patch(0, None, p, (64, 64))
times = []
for p in pos[5:]:
    t = time.perf_counter()
    stack.extract_patch(0, None, p, (64, 64))
    times.append(time.perf_counter() - t)
print(json.dumps({"median_us": float(np.median(times) * 1e6), "mean_us": float(np.mean(times) * 1e6)}))
"""


@contextlib.contextmanager
def _server(root: str, rtt_ms: float) -> Iterator[str]:
    """``serve(root, rtt)`` in a child process; yields its base URL, stops it on exit."""
    here = str(Path(__file__).resolve().parent.parent)
    server = subprocess.Popen(
        [sys.executable, "-c", f"import benchmarks.http_range as h; h.serve({root!r}, {rtt_ms / 1000!r})"],
        cwd=here,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        yield f"http://127.0.0.1:{int(server.stdout.readline())}"
    finally:
        if server.stdin is not None:
            server.stdin.close()
        server.wait(timeout=30)


def compare(codes: list[str], rtt_ms: float, n: int = 100, blocks: int = 6, side: int = 2048) -> dict[str, Any]:
    """Median cold 64x64 patch time of each checkout in ``codes`` over a server with ``rtt_ms`` round trips.

    Returns
    -------
    dict
        ``{"blocks": {code: [median us per block]}, "median_us": {code: median of the blocks},
        "mean_us": {code: mean of the blocks' mean patch times}}``.
    """
    import numpy as np
    import zarr
    from zarr.codecs import ZstdCodec

    with tempfile.TemporaryDirectory(prefix="http_rtt_") as tmp:
        data = np.random.default_rng(0).integers(0, 4000, (side, side), dtype=np.uint16)
        z = zarr.create_array(
            f"{tmp}/r.zarr", shape=data.shape, chunks=(256, 256), dtype="uint16", compressors=ZstdCodec(level=1)
        )
        z[...] = data
        with _server(tmp, rtt_ms) as base:
            url = f"{base}/r.zarr"
            out: dict[str, list[float]] = {c: [] for c in codes}
            means: dict[str, list[float]] = {c: [] for c in codes}
            for b in range(blocks):
                order = codes if b % 2 == 0 else codes[::-1]
                for code in order:
                    env = dict(os.environ, PYTHONPATH=code)
                    got = subprocess.run(
                        [sys.executable, "-c", _CLIENT, url, str(n), str(b), str(side)],
                        env=env,
                        cwd=code,
                        capture_output=True,
                        text=True,
                        check=True,
                    )
                    stats = json.loads(got.stdout.strip().splitlines()[-1])
                    out[code].append(stats["median_us"])
                    means[code].append(stats["mean_us"])
    return {
        "blocks": out,
        "median_us": {c: statistics.median(v) for c, v in out.items()},
        "mean_us": {c: statistics.mean(v) for c, v in means.items()},
    }


_BATCH_CLIENT = r"""
import json, sys, time
import numpy as np
from lazystack import load_zarrs
from lazystack.io.cache import get_chunk_cache
from lazystack.ops.batch import extract_patches
base, n, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rng = np.random.default_rng(seed)
out = {}
for name, axes, size, count in (("3d", "ZYX", (16, 64, 64), 32), ("2d", "YX", (64, 64), 64)):
    (stack,) = load_zarrs(f"{base}/{name}.zarr", axes)
    shape = stack.data_shape[2:]
    times = []
    for b in range(n + 2):
        reqs = [(stack, 0, None, tuple(int(rng.integers(0, d - s + 1)) for d, s in zip(shape, size)), size)
                for _ in range(count)]
        get_chunk_cache().clear()
        t = time.perf_counter()
        extract_patches(reqs)
        if b >= 2:  # the first two open connections and warm the engine
            times.append(time.perf_counter() - t)
    out[name] = float(np.median(times) * 1e3)
print(json.dumps(out))
"""


def compare_batches(codes: list[str], rtt_ms: float, n: int = 10, blocks: int = 6) -> dict[str, Any]:
    """Median cold batch time (ms) of each checkout in ``codes``, 3-D and 2-D, over a server with ``rtt_ms`` trips.

    Returns
    -------
    dict
        ``{"blocks": {kind: {code: [median ms per block]}}, "median_ms": {kind: {code: median of the blocks}}}``
        with ``kind`` ``"3d"`` or ``"2d"``.
    """
    import numpy as np
    import zarr
    from zarr.codecs import ZstdCodec

    kinds = ("3d", "2d")
    with tempfile.TemporaryDirectory(prefix="http_batches_") as tmp:
        rng = np.random.default_rng(0)
        for name, shape, chunks in (("3d", (64, 512, 512), (8, 128, 128)), ("2d", (4096, 4096), (256, 256))):
            z = zarr.create_array(
                f"{tmp}/{name}.zarr", shape=shape, chunks=chunks, dtype="uint16", compressors=ZstdCodec(level=1)
            )
            z[...] = rng.integers(0, 4000, shape, dtype=np.uint16)
        with _server(tmp, rtt_ms) as base:
            out: dict[str, dict[str, list[float]]] = {k: {c: [] for c in codes} for k in kinds}
            for b in range(blocks):
                for code in codes if b % 2 == 0 else codes[::-1]:
                    got = subprocess.run(
                        [sys.executable, "-c", _BATCH_CLIENT, base, str(n), str(b)],
                        env=dict(os.environ, PYTHONPATH=code),
                        cwd=code,
                        capture_output=True,
                        text=True,
                        check=True,
                    )
                    stats = json.loads(got.stdout.strip().splitlines()[-1])
                    for k in kinds:
                        out[k][code].append(stats[k])
    return {
        "blocks": out,
        "median_ms": {k: {c: statistics.median(v) for c, v in out[k].items()} for k in kinds},
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Command line of :func:`compare` (prints a table)."""
    parser = argparse.ArgumentParser(description="cold HTTP patches of several lazystack checkouts")
    parser.add_argument("--code", action="append", required=True, help="a lazystack checkout (repeat)")
    parser.add_argument("--rtt-ms", type=float, default=5.0, help="injected round trip per request (ms)")
    parser.add_argument("--patches", type=int, default=100)
    parser.add_argument("--blocks", type=int, default=6)
    parser.add_argument("--batches", action="store_true", help="time cold extract_patches batches (3-D and 2-D)")
    args = parser.parse_args(argv)
    if args.batches:
        batches = compare_batches(args.code, args.rtt_ms, blocks=args.blocks)
        print(f"cold extract_patches batches over HTTP, injected round trip {args.rtt_ms} ms, median ms per block")
        for kind, by_code in batches["blocks"].items():
            for code, values in by_code.items():
                cells = " ".join(f"{v:7.1f}" for v in values)
                print(f"{kind} {code:<28} {cells}   median {batches['median_ms'][kind][code]:7.1f}")
        return batches
    result = compare(args.code, args.rtt_ms, args.patches, args.blocks)
    print(f"cold 64x64 uint16 zstd patches over HTTP, injected round trip {args.rtt_ms} ms, median us per block")
    for code, values in result["blocks"].items():
        cells = " ".join(f"{v:8.0f}" for v in values)
        print(f"{code:<28} {cells}   median {result['median_us'][code]:8.0f}   mean {result['mean_us'][code]:8.0f}")
    return result


if __name__ == "__main__":
    main()
