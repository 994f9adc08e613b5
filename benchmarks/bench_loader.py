"""Benchmark: patches/s through a real ``torch.utils.data.DataLoader``, lazystack vs tensorstore vs zarr-python.

One zstd-compressed Zarr v3 array (``TYX`` uint16, 256x256 chunks), random
64x64 patches from :class:`lazystack.RandomSampler` (the same specs for every
reader), batch 32, three map-style datasets that differ only in the reader:

* ``lazystack``: :class:`lazystack.torch.PatchDataset` (``__getitems__``:
  one :func:`lazystack.extract_patches` call per batch; chunk cache at its default);
* ``tensorstore``: the batch's regions read with one tensorstore future each,
  all started before the first is awaited (no cache pool);
* ``zarr``: zarr-python slicing, one region per patch.

Each configuration (0 workers; 2 workers, spawned by default) runs ``--rounds`` times, the
readers interleaved within a round. A round times ``--batches`` batches from
the first batch's arrival (worker start-up excluded; it is reported apart as
time to the first batch). Printed: patches/s (median over rounds), p50 and
p99 batch interval, and lazystack's patches/s as a ratio of each reference.
The first batch of every reader is checked against numpy slicing.

Run ``python -m benchmarks.bench_loader`` (``--mib 2048`` for the issue's 2 GiB
array; the default is small for a loaded machine).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

PATCH = 64
CHUNK = 256
BATCH = 32


def write_store(path: Path, mib: int) -> tuple[int, int, int]:
    """Write a TYX uint16 zstd Zarr v3 array of about ``mib`` MiB (smooth data plus noise)."""
    import zarr
    from zarr.codecs import ZstdCodec

    side = 2048
    t = max(1, mib * 2**20 // (side * side * 2))
    shape = (t, side, side)
    arr = zarr.create_array(
        str(path), shape=shape, dtype="uint16", chunks=(1, CHUNK, CHUNK), compressors=ZstdCodec(level=3)
    )
    yy, xx = np.mgrid[0:side, 0:side]
    base = ((yy // 3 + xx // 5) % 4096).astype(np.uint16)
    rng = np.random.default_rng(0)
    for i in range(t):
        arr[i] = base + rng.integers(0, 64, (side, side), dtype=np.uint16) + np.uint16(i)
    return shape


class _SpecDataset:
    """Shared by the reference datasets: the sampler's specs, a lazily opened array per process."""

    def __init__(self, path: str, sampler: Any) -> None:
        self.path = path
        self.sampler = sampler
        self._array: Any = None

    def __len__(self) -> int:
        return len(self.sampler)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_array": None}

    def _specs(self, indices: list[Any]) -> list[Any]:
        return [self.sampler.spec(i, e) for e, i in indices]

    def __getitem__(self, index: Any) -> dict[str, Any]:
        return self.__getitems__([index])[0]


class TensorstoreDataset(_SpecDataset):
    """Each batch's regions read with tensorstore, all futures started first."""

    def __getitems__(self, indices: list[Any]) -> list[dict[str, Any]]:
        import tensorstore as ts
        import torch

        if self._array is None:
            spec = {"driver": "zarr3", "kvstore": {"driver": "file", "path": self.path}}
            self._array = ts.open(spec, read=True).result()
        futures = []
        for s in self._specs(indices):
            (y, x), (h, w) = s.coords, s.patch_size
            futures.append(self._array[s.sample, y : y + h, x : x + w].read())
        return [{"input": torch.from_numpy(f.result().astype(np.float32)[None])} for f in futures]


class ZarrDataset(_SpecDataset):
    """zarr-python slicing, one region per patch."""

    def __getitems__(self, indices: list[Any]) -> list[dict[str, Any]]:
        import torch
        import zarr

        if self._array is None:
            self._array = zarr.open_array(self.path, mode="r")
        out = []
        for s in self._specs(indices):
            (y, x), (h, w) = s.coords, s.patch_size
            out.append(
                {"input": torch.from_numpy(self._array[s.sample, y : y + h, x : x + w].astype(np.float32)[None])}
            )
        return out


def _run(dataset: Any, workers: int, epoch: int, batches: int, context: str) -> dict[str, Any]:
    from torch.utils.data import DataLoader

    from lazystack.torch import EpochSampler

    loader = DataLoader(
        dataset,
        batch_size=BATCH,
        sampler=EpochSampler(dataset, epoch=epoch),
        num_workers=workers,
        multiprocessing_context=context if workers else None,
        prefetch_factor=2 if workers else None,
    )
    start = time.perf_counter()
    stamps = []
    first = None
    for batch in loader:
        stamps.append(time.perf_counter())
        if first is None:
            first = batch["input"]
        if len(stamps) > batches:
            break
    intervals = np.diff(stamps)
    return {
        "first_s": stamps[0] - start,
        "patches_per_s": BATCH * len(intervals) / (stamps[-1] - stamps[0]),
        "p50_ms": 1e3 * float(np.percentile(intervals, 50)),
        "p99_ms": 1e3 * float(np.percentile(intervals, 99)),
        "first": first,
    }


def main(argv: list[str] | None = None) -> None:
    """Build the array, run the interleaved rounds and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--mib", type=int, default=256, help="array size in MiB (default 256; the issue uses 2048)")
    parser.add_argument("--batches", type=int, default=20, help="timed batches per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument(
        "--cache-mib", type=int, default=None, help="lazystack chunk cache size (default: the library's, 256 MiB)"
    )
    parser.add_argument(
        "--context",
        default="spawn",
        choices=["spawn", "forkserver", "fork"],
        help="start method of the workers (fork: tensorstore refuses to run in a forked child once its "
        "threads run in the parent, so its row is skipped)",
    )
    args = parser.parse_args(argv)

    import zarr

    from lazystack import RandomSampler, load_zarrs, set_chunk_cache_size
    from lazystack.torch import PatchDataset

    if args.cache_mib is not None:
        os.environ["LAZYSTACK_CHUNK_CACHE_BYTES"] = str(args.cache_mib * 2**20)  # for spawned workers
        set_chunk_cache_size(args.cache_mib * 2**20)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.zarr"
        shape = write_store(path, args.mib)
        stacks = load_zarrs(str(path), "TYX")
        length = BATCH * (args.batches + 1)
        sampler = RandomSampler(stacks, PATCH, length, seed=11)
        datasets = {
            "lazystack": PatchDataset(stacks, sampler),
            "tensorstore": TensorstoreDataset(str(path), sampler),
            "zarr": ZarrDataset(str(path), sampler),
        }
        reference = zarr.open_array(str(path), mode="r")
        print(
            f"array {shape} uint16 zstd, chunks (1, {CHUNK}, {CHUNK}), {args.mib} MiB; batch {BATCH}, {PATCH}x{PATCH}"
        )
        for workers in args.workers:
            results: dict[str, list[dict[str, Any]]] = {name: [] for name in datasets}
            if workers and args.context == "fork":
                del results["tensorstore"]
            for r in range(args.rounds):
                names = [n for n in datasets if not (workers and args.context == "fork" and n == "tensorstore")]
                order = names if r % 2 == 0 else names[::-1]
                for name in order:
                    res = _run(datasets[name], workers, epoch=r, batches=args.batches, context=args.context)
                    expected = [
                        reference[s.sample, s.coords[0] : s.coords[0] + PATCH, s.coords[1] : s.coords[1] + PATCH]
                        for s in (sampler.spec(i, r) for i in range(BATCH))
                    ]
                    assert np.array_equal(res.pop("first").numpy()[:, 0], np.stack(expected).astype(np.float32)), name
                    results[name].append(res)
            how = f" ({args.context})" if workers else ""
            print(f"\n{workers} worker(s){how}, median of {args.rounds} rounds:")
            print(f"{'reader':<12} {'patches/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'first batch s':>14}")
            med = {}
            for name, rs in results.items():
                med[name] = statistics.median(x["patches_per_s"] for x in rs)
                p50 = statistics.median(x["p50_ms"] for x in rs)
                p99 = statistics.median(x["p99_ms"] for x in rs)
                first = statistics.median(x["first_s"] for x in rs)
                print(f"{name:<12} {med[name]:>10.0f} {p50:>8.1f} {p99:>8.1f} {first:>14.2f}")
            for ref in [n for n in ("tensorstore", "zarr") if n in med]:
                print(f"lazystack / {ref} patches/s: {med['lazystack'] / med[ref]:.2f}x")


if __name__ == "__main__":
    main()
