"""Benchmark: lazy TIFF patches (load_tiffs) against reading the file whole and against floors.

For an uncompressed (memory-mapped) and a zstd-compressed tiled TIFF larger than
1 GiB (``--size-gib``), each approach runs in its own subprocess (so resident
memory does not leak from one to the next) and reports:

* time to first patch, from opening the file (imports excluded);
* peak resident memory (``ru_maxrss``) and its rise above the interpreter's
  baseline after imports;
* latency of 2,000 random patches.

Approaches: ``lazystack`` (``load_tiffs`` + ``extract_patch``), ``full-load``
(``tifffile.imread`` of the whole file, then slicing) and the floor of each
file: ``tifffile.memmap`` slicing (uncompressed) or reading and decoding only
the touched tiles with ``os.pread`` + ``imagecodecs`` and no bookkeeping
(compressed). Ratios are printed against the references of the same run.

Targets: first patch at least 100x sooner than full load; peak RSS at most 1/5
of the file size. The files are freshly written, so they are in the page cache:
the full load is timed from memory, not disk (the ratio would only grow from a
cold disk).

Run ``python -m benchmarks.bench_tiff`` (``--quick`` for a small run).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

PATCH = 256
N_PATCHES = 2000
SEED = 42


def _status_mib(field: str) -> float | None:
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


def _start_rss() -> float:
    """Resident memory now (after imports); resets the peak counter where Linux allows it."""
    try:  # clear_refs "5" resets VmHWM to the current RSS (Linux >= 4.0)
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
    except OSError:
        pass
    rss = _status_mib("VmRSS")
    return rss if rss is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _rss_mib() -> float:
    """Peak resident memory of this process (VmHWM; ru_maxrss survives exec, so it is a fallback only)."""
    hwm = _status_mib("VmHWM")
    return hwm if hwm is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _patch_plan(shape: tuple[int, int, int], n: int) -> list[tuple[int, int, int]]:
    rng = np.random.default_rng(SEED)
    t = rng.integers(0, shape[0], n)
    y = rng.integers(0, shape[1] - PATCH + 1, n)
    x = rng.integers(0, shape[2] - PATCH + 1, n)
    return [(int(a), int(b), int(c)) for a, b, c in zip(t, y, x, strict=True)]


def write_file(path: Path, shape: tuple[int, int, int], compressed: bool) -> None:
    """Write a TYX uint16 TIFF page by page (smooth data plus noise, so zstd has work to do)."""
    import tifffile

    yy, xx = np.mgrid[0 : shape[1], 0 : shape[2]]
    base = ((yy // 3 + xx // 5) % 4096).astype(np.uint16)
    rng = np.random.default_rng(0)

    def pages() -> Any:
        for t in range(shape[0]):
            page = base + rng.integers(0, 4096 if compressed else 64, shape[1:], dtype=np.uint16) + np.uint16(t)
            if not compressed:
                yield page
                continue
            for y in range(0, shape[1], 256):  # tiles in file order (the sizes are multiples of 256)
                for x in range(0, shape[2], 256):
                    yield page[y : y + 256, x : x + 256]

    kwargs: dict[str, Any] = {"shape": shape, "dtype": "uint16", "photometric": "minisblack", "bigtiff": True}
    if compressed:
        kwargs.update(tile=(256, 256), compression="zstd", compressionargs={"level": 1}, maxworkers=2)
    tifffile.imwrite(path, pages(), **kwargs)


# -- workers (each in its own subprocess) -------------------------------------------------------------
def _worker_lazystack(path: str, n: int) -> dict[str, Any]:
    import dask.array  # noqa: F401 - one-off imports are not part of opening a file
    import tifffile  # noqa: F401
    import xarray  # noqa: F401

    from lazystack import load_tiffs
    from lazystack.sources import tiff  # noqa: F401

    baseline = _start_rss()
    t0 = time.perf_counter()
    (stack,) = load_tiffs(path, "TYX")
    plan = _patch_plan(stack.original_data_shape, n)
    t, y, x = plan[0]
    first = stack.extract_patch(t, None, (y, x), (PATCH, PATCH))
    t_first = time.perf_counter() - t0
    times = []
    checksum = float(first.sum())
    for t, y, x in plan:
        s = time.perf_counter()
        p = stack.extract_patch(t, None, (y, x), (PATCH, PATCH))
        times.append(time.perf_counter() - s)
        checksum += float(p[0, 0, 0])
    return {"first_s": t_first, "lat_s": times, "rss_mib": _rss_mib(), "base_mib": baseline, "checksum": checksum}


def _worker_full(path: str, n: int) -> dict[str, Any]:
    import tifffile

    baseline = _start_rss()
    t0 = time.perf_counter()
    data = tifffile.imread(path, maxworkers=1)
    plan = _patch_plan(data.shape, n)
    t, y, x = plan[0]
    first = data[t, y : y + PATCH, x : x + PATCH].astype(np.float32)[np.newaxis]
    t_first = time.perf_counter() - t0
    times = []
    checksum = float(first.sum())
    for t, y, x in plan:
        s = time.perf_counter()
        p = data[t, y : y + PATCH, x : x + PATCH].astype(np.float32)[np.newaxis]
        times.append(time.perf_counter() - s)
        checksum += float(p[0, 0, 0])
    return {"first_s": t_first, "lat_s": times, "rss_mib": _rss_mib(), "base_mib": baseline, "checksum": checksum}


def _worker_floor_memmap(path: str, n: int) -> dict[str, Any]:
    import tifffile

    baseline = _start_rss()
    t0 = time.perf_counter()
    mm = tifffile.memmap(path, mode="r")
    plan = _patch_plan(mm.shape, n)
    t, y, x = plan[0]
    first = np.asarray(mm[t, y : y + PATCH, x : x + PATCH], dtype=np.float32)[np.newaxis]
    t_first = time.perf_counter() - t0
    times = []
    checksum = float(first.sum())
    for t, y, x in plan:
        s = time.perf_counter()
        p = np.asarray(mm[t, y : y + PATCH, x : x + PATCH], dtype=np.float32)[np.newaxis]
        times.append(time.perf_counter() - s)
        checksum += float(p[0, 0, 0])
    return {"first_s": t_first, "lat_s": times, "rss_mib": _rss_mib(), "base_mib": baseline, "checksum": checksum}


def _worker_floor_tiles(path: str, n: int) -> dict[str, Any]:
    import imagecodecs
    import tifffile

    baseline = _start_rss()
    t0 = time.perf_counter()
    with tifffile.TiffFile(path) as tif:
        series = tif.series[0]
        shape = series.shape
        tl, tw = series.keyframe.tilelength, series.keyframe.tilewidth
        offsets = [p.dataoffsets for p in series.pages]
        counts = [p.databytecounts for p in series.pages]
    ntx = -(-shape[2] // tw)
    fd = os.open(path, os.O_RDONLY)

    def patch(t: int, y: int, x: int) -> np.ndarray:
        out = np.empty((PATCH, PATCH), np.float32)
        for ty in range(y // tl, (y + PATCH - 1) // tl + 1):
            for tx in range(x // tw, (x + PATCH - 1) // tw + 1):
                i = ty * ntx + tx
                raw = os.pread(fd, counts[t][i], offsets[t][i])
                tile = np.frombuffer(imagecodecs.zstd_decode(raw), np.uint16).reshape(tl, tw)
                y0, y1 = max(y, ty * tl), min(y + PATCH, (ty + 1) * tl)
                x0, x1 = max(x, tx * tw), min(x + PATCH, (tx + 1) * tw)
                out[y0 - y : y1 - y, x0 - x : x1 - x] = tile[y0 - ty * tl : y1 - ty * tl, x0 - tx * tw : x1 - tx * tw]
        return out[np.newaxis]

    plan = _patch_plan(shape, n)
    first = patch(*plan[0])
    t_first = time.perf_counter() - t0
    times = []
    checksum = float(first.sum())
    for t, y, x in plan:
        s = time.perf_counter()
        p = patch(t, y, x)
        times.append(time.perf_counter() - s)
        checksum += float(p[0, 0, 0])
    os.close(fd)
    return {"first_s": t_first, "lat_s": times, "rss_mib": _rss_mib(), "base_mib": baseline, "checksum": checksum}


WORKERS = {
    "lazystack": _worker_lazystack,
    "full-load": _worker_full,
    "floor-memmap": _worker_floor_memmap,
    "floor-tiles": _worker_floor_tiles,
}


def _run_worker(name: str, path: Path, n: int) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "benchmarks.bench_tiff", "--worker", name, "--path", str(path), "--n", str(n)]
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=root, env=env)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    lat = np.asarray(result.pop("lat_s"))
    result["lat_median_ms"] = float(np.median(lat) * 1e3)
    result["lat_p95_ms"] = float(np.percentile(lat, 95) * 1e3)
    result["first_ms"] = result.pop("first_s") * 1e3
    return result


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark; return the results (JSON-able)."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_tiff", description=__doc__.split("\n")[0])
    parser.add_argument("--size-gib", type=float, default=1.1, help="size of each generated TIFF (default 1.1)")
    parser.add_argument("--quick", action="store_true", help="small run: 0.05 GiB files, 200 patches")
    parser.add_argument("--patches", type=int, default=None, help=f"number of random patches (default {N_PATCHES})")
    parser.add_argument("--keep", type=Path, default=None, help="write the files here (reused when present)")
    parser.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    parser.add_argument("--path", help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        res = WORKERS[args.worker](args.path, args.n)
        print(json.dumps(res))
        return res

    size_gib = 0.05 if args.quick else args.size_gib
    n = args.patches or (200 if args.quick else N_PATCHES)
    page = (4096, 8192) if size_gib >= 0.5 else (2048, 2048)
    n_pages = max(1, int(np.ceil(size_gib * 2**30 / (page[0] * page[1] * 2))))
    shape = (n_pages, *page)
    # 12 bits of noise compress to about 80 %: more pages keep the compressed file above the size too
    shape_z = (max(1, int(np.ceil(n_pages / 0.78))), *page)

    results: dict[str, Any] = {"patch": [PATCH, PATCH], "n_patches": n, "files": {}}
    with tempfile.TemporaryDirectory(prefix="bench_tiff_") as tmp:
        folder = args.keep or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        for kind, floor, fshape in (("uncompressed", "floor-memmap", shape), ("zstd-tiled", "floor-tiles", shape_z)):
            path = folder / f"bench-{kind}-{'x'.join(map(str, fshape))}.tif"
            t0 = time.perf_counter()
            if not path.exists():
                write_file(path, fshape, compressed=kind != "uncompressed")
            write_s = time.perf_counter() - t0
            size_mib = path.stat().st_size / 2**20
            data_mib = np.prod(fshape) * 2 / 2**20
            runs = {name: _run_worker(name, path, n) for name in ("lazystack", "full-load", floor)}
            lazy, full, ref = runs["lazystack"], runs["full-load"], runs[floor]
            if not (lazy["checksum"] == full["checksum"] == ref["checksum"]):
                msg = f"patches differ between approaches on {path}: {[r['checksum'] for r in runs.values()]}"
                raise RuntimeError(msg)
            results["files"][kind] = {
                "shape": list(fshape),
                "file_mib": size_mib,
                "data_mib": float(data_mib),
                "write_s": write_s,
                "runs": runs,
                "first_patch_speedup_vs_full": full["first_ms"] / lazy["first_ms"],
                "peak_rss_over_file": lazy["rss_mib"] / size_mib,
                "peak_rss_rise_over_file": (lazy["rss_mib"] - lazy["base_mib"]) / size_mib,
                "full_peak_rss_over_file": full["rss_mib"] / size_mib,
                "latency_vs_floor": lazy["lat_median_ms"] / ref["lat_median_ms"],
                "latency_p95_vs_floor": lazy["lat_p95_ms"] / ref["lat_p95_ms"],
                "floor": floor,
            }
    _print_table(results)
    return results


def _print_table(results: dict[str, Any]) -> None:
    n = results["n_patches"]
    shapes = ", ".join(f"{k} {tuple(r['shape'])}" for k, r in results["files"].items())
    print(f"\nTIFF benchmark: TYX uint16 ({shapes}), {n} random {PATCH}x{PATCH} patches\n")
    head = f"{'file':<14}{'approach':<14}{'first patch':>13}{'median':>10}{'p95':>10}{'peak RSS':>11}{'RSS rise':>11}"
    print(head)
    print("-" * len(head))
    for kind, r in results["files"].items():
        for name, run in r["runs"].items():
            print(
                f"{kind:<14}{name:<14}{run['first_ms']:>10.1f} ms{run['lat_median_ms']:>7.3f} ms"
                f"{run['lat_p95_ms']:>7.3f} ms{run['rss_mib']:>7.0f} MiB{run['rss_mib'] - run['base_mib']:>7.0f} MiB"
            )
    print()
    print(
        f"{'file':<14}{'file size':>11}{'1st patch vs full':>19}{'peak RSS/file':>15}{'rise/file':>11}"
        f"{'latency/floor':>15}  floor"
    )
    for kind, r in results["files"].items():
        print(
            f"{kind:<14}{r['file_mib']:>7.0f} MiB{r['first_patch_speedup_vs_full']:>17.0f}x"
            f"{r['peak_rss_over_file']:>15.3f}{r['peak_rss_rise_over_file']:>11.3f}"
            f"{r['latency_vs_floor']:>14.2f}x  {r['floor']}"
        )
    print("\ntargets: first patch >= 100x sooner than full load; peak RSS <= 0.2 x file size")


if __name__ == "__main__":
    main()
