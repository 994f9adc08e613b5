"""Benchmark: per-channel statistics on a LocalCluster (1 vs 2 workers) against one numpy process.

Builds a dataset of ``--size-gib`` GiB (default 2; ``--quick``: 0.25) of
uint16 ``TCYX`` stacks in ``.npy`` files, opens each as a lazy stack over a
file-backed chunk reader (:class:`NpyChunkReader`: the task graph carries
only file names) and measures, in the same run:

- ``numpy``: one process, per file and channel ``mean``/``std`` (float64
  accumulation), ``min``, ``max`` and ``np.percentile`` of the channel's
  values — the plain reference a user would write;
- ``numpy bincount``: one process, the same algorithm as lazystack without
  dask (one ``np.bincount`` per frame and channel, statistics from the
  counts) — the reference for dask's overhead;
- ``cluster-1`` / ``cluster-2``: :func:`lazystack.ops.stats.channel_statistics`
  on a ``distributed.LocalCluster`` with 1 and 2 single-threaded worker
  processes.

It prints ratios (speed-up of 2 workers over 1, lazystack over numpy),
checks that all three agree, and returns the results as a dict.

Run: ``python -m benchmarks.bench_stats [--quick] [--dir DIR] [--keep]``.
The files are written just before the runs, so they are in the page cache:
the figures are compute-bound, not disk-bound.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from typing import Any

import dask
import numpy as np

__all__ = ["NpyChunkReader", "main", "make_dataset"]


class NpyChunkReader:
    """A file-backed chunk reader over a ``.npy`` file that pickles as its path.

    Parameters
    ----------
    path : str
        The ``.npy`` file (opened read-only, memory-mapped, once per process).
    chunks : tuple of int, optional
        Chunk shape for the stack's dask array (default: the whole array).
    delay : float
        Seconds to sleep per read (to make computations long in tests).
    """

    def __init__(self, path: str, chunks: Sequence[int] | None = None, delay: float = 0.0) -> None:
        self.path = os.fspath(path)
        array = np.load(self.path, mmap_mode="r")
        self.shape = tuple(array.shape)
        self.dtype = array.dtype
        self.chunks = tuple(chunks) if chunks is not None else self.shape
        self.delay = float(delay)
        stat = os.stat(self.path)
        self.token = f"npy-{self.path}-{stat.st_mtime_ns}-{stat.st_size}-{self.chunks}"
        self._array: Any = None

    def __getitem__(self, key: Any) -> np.ndarray:
        """Read a region (a copy)."""
        if self._array is None:
            self._array = np.load(self.path, mmap_mode="r")
        if self.delay:
            time.sleep(self.delay)
        return np.array(self._array[key])

    def close(self) -> None:
        """Drop the mapping."""
        self._array = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_array": None}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)


def make_dataset(folder: str, size_gib: float, *, frame: tuple[int, int] = (1024, 2048), seed: int = 0) -> list[str]:
    """Write uint16 ``TCYX`` (C=2) ``.npy`` files totalling about ``size_gib`` GiB.

    Returns
    -------
    list of str
        The file paths.
    """
    rng = np.random.default_rng(seed)
    frame_bytes = 2 * frame[0] * frame[1] * 2
    n_frames = max(2, round(size_gib * 2**30 / frame_bytes))
    per_file = min(32, n_frames)
    paths = []
    i = 0
    while n_frames > 0:
        t = min(per_file, n_frames)
        path = os.path.join(folder, f"stack_{i:03d}.npy")
        out = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint16, shape=(t, 2, *frame))
        for k in range(t):
            # two channels with different levels; a smooth gradient plus noise
            out[k, 0] = rng.integers(100, 1100, size=frame, dtype=np.uint16)
            out[k, 1] = rng.normal(2000 + 10 * k, 300, size=frame).clip(0, 65535).astype(np.uint16)
        out.flush()
        del out
        paths.append(path)
        n_frames -= t
        i += 1
    return paths


def _numpy_reference(paths: Sequence[str], percentiles: Sequence[float]) -> dict[str, Any]:
    """One process: exact per-channel statistics with numpy (float64 accumulation)."""
    n = np.zeros(2)
    s = np.zeros(2)
    mins = np.full(2, np.inf)
    maxs = np.full(2, -np.inf)
    values: list[list[np.ndarray]] = [[], []]
    for path in paths:
        x = np.load(path, mmap_mode="r")
        for c in range(2):
            v = np.asarray(x[:, c])
            n[c] += v.size
            s[c] += v.sum(dtype=np.float64)
            mins[c] = min(mins[c], v.min())
            maxs[c] = max(maxs[c], v.max())
            values[c].append(v.ravel())
    mean = s / n
    m2 = np.zeros(2)
    for path in paths:
        x = np.load(path, mmap_mode="r")
        for c in range(2):
            d = np.asarray(x[:, c], dtype=np.float64) - mean[c]
            m2[c] += float(np.vdot(d, d))
    flat = [np.concatenate(v) for v in values]
    return {
        "mean": mean,
        "std": np.sqrt(m2 / n),
        "min": mins,
        "max": maxs,
        "percentiles": {q: np.array([np.percentile(f, q) for f in flat]) for q in percentiles},
    }


def _numpy_streaming(paths: Sequence[str], percentiles: Sequence[float]) -> dict[str, Any]:
    """One process, the same algorithm without dask: per-channel ``bincount`` per frame, statistics from counts."""
    counts = [np.zeros(65536, dtype=np.int64) for _ in range(2)]
    for path in paths:
        x = np.load(path, mmap_mode="r")
        for t in range(x.shape[0]):
            for c in range(2):
                counts[c] += np.bincount(np.asarray(x[t, c]).ravel(), minlength=65536)
    out: dict[str, Any] = {"mean": [], "std": [], "min": [], "max": [], "percentiles": {q: [] for q in percentiles}}
    values = np.arange(65536, dtype=np.float64)
    for k in counts:
        n = k.sum()
        mean = float(k @ values) / n
        out["mean"].append(mean)
        out["std"].append(np.sqrt(float(k @ (values - mean) ** 2) / n))
        nz = np.flatnonzero(k)
        out["min"].append(float(nz[0]))
        out["max"].append(float(nz[-1]))
        cum = np.cumsum(k)
        for q in percentiles:
            h = (n - 1) * q / 100
            lo = int(np.floor(h))
            a = float(np.searchsorted(cum, lo, side="right"))
            b = float(np.searchsorted(cum, min(lo + 1, n - 1), side="right"))
            out["percentiles"][q].append(a + (h - lo) * (b - a))
    return out


def _best(func: Any, repeat: int) -> tuple[float, Any]:
    best, value = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        value = func()
        best = min(best, time.perf_counter() - t0)
    return best, value


def _cluster_runs(stacks: list[Any], percentiles: Sequence[float], repeat: int) -> dict[int, tuple[float, Any]]:
    """Best-of-``repeat`` time on a 1-worker and a 2-worker LocalCluster, runs interleaved.

    Both clusters stay up and the runs alternate (1, 2, 1, 2 ...), so that a
    busy spell on the machine does not favour one of them.
    """
    from contextlib import ExitStack

    from distributed import Client, LocalCluster

    from lazystack.ops.stats import channel_statistics

    best: dict[int, tuple[float, Any]] = {}
    with ExitStack() as stack:
        clients = {}
        for n in (1, 2):
            cluster = stack.enter_context(
                LocalCluster(
                    n_workers=n,
                    threads_per_worker=1,
                    processes=True,
                    host="127.0.0.1",
                    dashboard_address=":0",
                    memory_limit="4GiB",
                )
            )
            clients[n] = stack.enter_context(Client(cluster, set_as_default=False))
            clients[n].wait_for_workers(n)
        for _ in range(repeat):
            for n, client in clients.items():
                with dask.config.set(scheduler=client.get):
                    if n not in best:  # warm up imports on the workers
                        channel_statistics(stacks[:1], percentiles=percentiles, sample_fraction=0.01)
                    t0 = time.perf_counter()
                    stats = channel_statistics(stacks, percentiles=percentiles)
                    elapsed = time.perf_counter() - t0
                if n not in best or elapsed < best[n][0]:
                    best[n] = (elapsed, stats)
    return best


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the benchmark; print a table of ratios and return the results (JSON-able).

    Parameters
    ----------
    argv : sequence of str, optional
        ``--quick`` (0.25 GiB), ``--size-gib``, ``--dir``, ``--keep``, ``--json``.

    Returns
    -------
    dict
    """
    from lazystack import LazyImageStack

    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_stats", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="0.25 GiB instead of 2 GiB")
    parser.add_argument("--size-gib", type=float, default=None, help="dataset size in GiB (default 2)")
    parser.add_argument("--dir", help="folder for the dataset (default: a temporary folder)")
    parser.add_argument("--keep", action="store_true", help="keep the dataset")
    parser.add_argument("--json", action="store_true", help="print the results as JSON too")
    parser.add_argument("--repeat", type=int, default=3, help="best of N runs per measurement (default 3)")
    args = parser.parse_args(argv)
    size = args.size_gib if args.size_gib is not None else (0.25 if args.quick else 2.0)
    percentiles = (1.0, 50.0, 99.0)

    folder = args.dir or tempfile.mkdtemp(prefix="bench_stats_")
    os.makedirs(folder, exist_ok=True)
    try:
        t0 = time.perf_counter()
        paths = make_dataset(folder, size)
        t_make = time.perf_counter() - t0
        nbytes = sum(os.path.getsize(p) for p in paths)
        stacks = [LazyImageStack(NpyChunkReader(p, chunks=(2, 1, 1024, 2048)), "TCYX", source=p) for p in paths]

        t0 = time.perf_counter()
        ref = _numpy_reference(paths, percentiles)
        t_numpy = time.perf_counter() - t0
        t_stream, stream = _best(lambda: _numpy_streaming(paths, percentiles), args.repeat)
        runs = _cluster_runs(stacks, percentiles, args.repeat)
        (t1, s1), (t2, s2) = runs[1], runs[2]

        agree = all(
            np.allclose(s.mean, ref["mean"], rtol=1e-12)
            and np.allclose(s.std, ref["std"], rtol=1e-9)
            and np.array_equal(s.min, ref["min"])
            and np.array_equal(s.max, ref["max"])
            and all(np.allclose(s.percentile(q), ref["percentiles"][q], rtol=0, atol=1e-9) for q in percentiles)
            for s in (s1, s2)
        ) and all(np.allclose(stream[k], ref[k], rtol=1e-9) for k in ("mean", "std", "min", "max"))
        results = {
            "dataset_gib": nbytes / 2**30,
            "files": len(paths),
            "chunks": sum(s.data.npartitions for s in stacks),
            "cpu_count": os.cpu_count(),
            "seconds": {
                "make_dataset": t_make,
                "numpy_1_process": t_numpy,
                "numpy_streaming_1_process": t_stream,
                "cluster_1_worker": t1,
                "cluster_2_workers": t2,
            },
            "throughput_gib_s": {
                "numpy": nbytes / 2**30 / t_numpy,
                "numpy_streaming": nbytes / 2**30 / t_stream,
                "cluster_1": nbytes / 2**30 / t1,
                "cluster_2": nbytes / 2**30 / t2,
            },
            "ratios": {
                "speedup_2_vs_1_workers": t1 / t2,
                "cluster_1_vs_numpy": t_numpy / t1,
                "cluster_2_vs_numpy": t_numpy / t2,
                "cluster_1_vs_numpy_streaming": t_stream / t1,
                "cluster_2_vs_numpy_streaming": t_stream / t2,
            },
            "load_average_1min": os.getloadavg()[0],
            "results_agree_with_numpy": bool(agree),
        }
    finally:
        if not args.keep and not args.dir:
            shutil.rmtree(folder, ignore_errors=True)

    r = results["ratios"]
    print(f"statistics over {results['dataset_gib']:.2f} GiB ({results['files']} files, {results['chunks']} chunks)")
    print(f"{'measure':<40}{'ratio':>8}")
    print(f"{'speed-up 2 workers vs 1 (ideal 2)':<40}{r['speedup_2_vs_1_workers']:>8.2f}")
    print(f"{'1 worker vs numpy (1 process)':<40}{r['cluster_1_vs_numpy']:>8.2f}")
    print(f"{'2 workers vs numpy (1 process)':<40}{r['cluster_2_vs_numpy']:>8.2f}")
    print(f"{'1 worker vs numpy bincount (1 process)':<40}{r['cluster_1_vs_numpy_streaming']:>8.2f}")
    print(f"{'2 workers vs numpy bincount (1 process)':<40}{r['cluster_2_vs_numpy_streaming']:>8.2f}")
    print(f"(load average during the run: {results['load_average_1min']:.1f} on {results['cpu_count']} CPUs)")
    print(f"results agree with numpy: {results['results_agree_with_numpy']}")
    if args.json:
        print(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
