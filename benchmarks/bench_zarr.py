"""Benchmark: random 64x64 patches from a zstd-compressed Zarr v3 array (256x256 chunks).

Three ways of reading the same random regions, measured in the same run:

* ``lazystack``: ``load_zarrs`` + ``extract_patch`` (float32 patch, straight
  from the chunk reader);
* ``zarr``: zarr-python slicing ``arr[t, y:y+64, x:x+64]`` of the same array
  (the reference: lazystack's baseline engine is this call plus bookkeeping);
* ``dask``: ``dask.array.from_zarr(arr)[t, y:y+64, x:x+64].compute()``
  (a graph per patch, what a naive dask user does).

Printed as ratios of median latencies: ``lazystack / zarr`` (overhead of the
library, 1.0 is the floor of this engine) and ``dask / lazystack`` (how much
faster than dask). Every lazystack patch is checked against zarr's.

Run ``python -m benchmarks.bench_zarr`` (``--quick`` for a small run, ``--sharded``
to store the chunks inside 1024x1024 shards).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

PATCH = 64
CHUNK = 256
SEED = 7


def write_store(path: Path, shape: tuple[int, int, int], sharded: bool) -> None:
    """Write a TYX uint16 zstd-compressed Zarr v3 array with 256x256 chunks (smooth data plus noise)."""
    import zarr
    from zarr.codecs import ZstdCodec

    kwargs: dict[str, Any] = {"chunks": (1, CHUNK, CHUNK), "compressors": ZstdCodec(level=3)}
    if sharded:
        kwargs["shards"] = (1, 4 * CHUNK, 4 * CHUNK)
    arr = zarr.create_array(str(path), shape=shape, dtype="uint16", **kwargs)
    yy, xx = np.mgrid[0 : shape[1], 0 : shape[2]]
    base = ((yy // 3 + xx // 5) % 4096).astype(np.uint16)
    rng = np.random.default_rng(0)
    for t in range(shape[0]):
        arr[t] = base + rng.integers(0, 64, shape[1:], dtype=np.uint16) + np.uint16(t)


def _plan(shape: tuple[int, ...], n: int) -> list[tuple[int, int, int]]:
    rng = np.random.default_rng(SEED)
    t = rng.integers(0, shape[0], n)
    y = rng.integers(0, shape[1] - PATCH + 1, n)
    x = rng.integers(0, shape[2] - PATCH + 1, n)
    return [(int(a), int(b), int(c)) for a, b, c in zip(t, y, x, strict=True)]


def _time(fn: Any, plan: list[tuple[int, int, int]]) -> list[float]:
    times = []
    for t, y, x in plan:
        s = time.perf_counter()
        fn(t, y, x)
        times.append(time.perf_counter() - s)
    return times


def _summary(times: list[float]) -> dict[str, float]:
    ordered = sorted(times)
    return {
        "median_us": statistics.median(ordered) * 1e6,
        "p95_us": ordered[int(0.95 * (len(ordered) - 1))] * 1e6,
        "n": len(ordered),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark, print a table of ratios and return the results.

    Parameters
    ----------
    argv : list of str, optional
        Command-line arguments (``--quick``, ``--sharded``, ``--patches N``, ``--json PATH``).

    Returns
    -------
    dict
        JSON-able results: per-approach latency summaries and the ratios.
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small array, few patches")
    parser.add_argument("--sharded", action="store_true", help="store the 256x256 chunks in 1024x1024 shards")
    parser.add_argument("--patches", type=int, default=None, help="number of random patches")
    parser.add_argument("--json", type=Path, default=None, help="also write the results to this file")
    args = parser.parse_args(argv)

    import dask.array as da
    import zarr

    from lazystack import load_zarrs

    shape = (2, 1024, 1024) if args.quick else (8, 4096, 4096)
    n = args.patches or (300 if args.quick else 3000)
    n_dask = max(20, n // 10)
    with tempfile.TemporaryDirectory(prefix="bench_zarr_") as tmp:
        path = Path(tmp) / "bench.zarr"
        write_store(path, shape, args.sharded)
        plan = _plan(shape, n)

        (stack,) = load_zarrs([path], "TYX")
        ref = zarr.open_array(str(path), mode="r")
        darr = da.from_zarr(ref)

        # correctness first (also warms every code path)
        for t, y, x in plan[:20]:
            got = stack.extract_patch(t, None, (y, x), (PATCH, PATCH))[0]
            want = ref[t, y : y + PATCH, x : x + PATCH]
            if not np.array_equal(got, want):
                msg = f"lazystack patch at {(t, y, x)} differs from zarr's read"
                raise AssertionError(msg)

        def lazy(t: int, y: int, x: int) -> None:
            stack.extract_patch(t, None, (y, x), (PATCH, PATCH))

        def plain(t: int, y: int, x: int) -> None:
            ref[t, y : y + PATCH, x : x + PATCH]

        def plain_f32(t: int, y: int, x: int) -> None:
            np.asarray(ref[t, y : y + PATCH, x : x + PATCH]).astype(np.float32)

        def dask_compute(t: int, y: int, x: int) -> None:
            darr[t, y : y + PATCH, x : x + PATCH].compute()

        # interleave rounds so that drift (cache, CPU frequency) hits every approach alike
        timings: dict[str, list[float]] = {"lazystack": [], "zarr": [], "zarr+float32": [], "dask": []}
        rounds = 5
        for r in range(rounds):
            part = plan[r::rounds]
            timings["lazystack"] += _time(lazy, part)
            timings["zarr"] += _time(plain, part)
            timings["zarr+float32"] += _time(plain_f32, part)
            timings["dask"] += _time(dask_compute, part[: max(1, n_dask // rounds)])

    summary = {name: _summary(times) for name, times in timings.items()}
    med = {name: s["median_us"] for name, s in summary.items()}
    ratios = {
        "lazystack/zarr": med["lazystack"] / med["zarr"],
        "lazystack/zarr+float32": med["lazystack"] / med["zarr+float32"],
        "dask/lazystack": med["dask"] / med["lazystack"],
    }
    results: dict[str, Any] = {
        "benchmark": "bench_zarr",
        "array": {"shape": list(shape), "chunks": [1, CHUNK, CHUNK], "codec": "zstd", "sharded": args.sharded},
        "patch": [PATCH, PATCH],
        "latency": summary,
        "ratios": ratios,
    }

    print(f"Zarr v3 uint16 {shape}, zstd, chunks 1x{CHUNK}x{CHUNK}{', shards 1x1024x1024' if args.sharded else ''}")
    print(f"{'approach':<16}{'median us':>12}{'p95 us':>12}{'n':>8}")
    for name, s in summary.items():
        print(f"{name:<16}{s['median_us']:>12.1f}{s['p95_us']:>12.1f}{s['n']:>8d}")
    print()
    print(f"{'ratio (median latency)':<28}{'value':>8}")
    for name, value in ratios.items():
        print(f"{name:<28}{value:>8.2f}")
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
