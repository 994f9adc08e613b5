"""What a spawned DataLoader worker pays before its first batch: this code against another checkout, interleaved.

A worker started with ``spawn`` (the default on macOS and Windows) imports
torch, unpickles the dataset and reads its first batch. This benchmark pickles a
[`lazystack.torch.PatchDataset`] (32 random 64 x 64 patches a batch) over a Zarr
array with the code of this checkout and with the code of ``--baseline``, then
runs ``--rounds`` fresh interpreters of each, in alternating order. Each one
imports torch (not timed: every reader pays it), unpickles the dataset and reads
one batch (timed), and reports whether tensorstore and zarr-python were imported
and its peak RSS. Reported: the median time of each, their ratio, tensorstore and
zarr imported or not, and the median peak RSS. For reference, each round also
times a *forked* worker's first batch (the main process opens the stacks and
builds the dataset, then forks; the child reads one batch): reported as each
checkout's spawn / fork ratio (issue 20 asks for at most 3).

Run: ``python -m benchmarks.bench_worker_start --baseline PATH [--zarr STORE] [--rounds N]``
(default store: a 64 MiB ``TYX`` uint16 zstd array written into a temporary folder).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

_PICKLE = """
import pickle, sys, lazystack
from lazystack.torch import PatchDataset
stacks = lazystack.load_zarrs([sys.argv[1]], "TYX")
sampler = lazystack.RandomSampler(stacks, (64, 64), length=64, seed=1)
open(sys.argv[2], "wb").write(pickle.dumps(PatchDataset(stacks, sampler)))
"""

_FORKED = """
import os, sys, time
import torch, lazystack
from lazystack.torch import PatchDataset
stacks = lazystack.load_zarrs([sys.argv[1]], "TYX")  # the main process opens the stacks, builds the dataset
dataset = PatchDataset(stacks, lazystack.RandomSampler(stacks, (64, 64), length=64, seed=1))
read, write = os.pipe()
pid = os.fork()
if pid == 0:
    start = time.perf_counter()
    dataset.__getitems__(list(range(32)))
    os.write(write, str(time.perf_counter() - start).encode())
    os._exit(0)
os.close(write)
os.waitpid(pid, 0)
print(os.read(read, 64).decode())
"""

_WORKER = """
import pickle, resource, sys, time
import torch  # a DataLoader worker has imported it before it unpickles the dataset
start = time.perf_counter()
dataset = pickle.loads(open(sys.argv[1], "rb").read())
dataset.__getitems__(list(range(32)))
seconds = time.perf_counter() - start
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(seconds, "tensorstore" in sys.modules, "zarr" in sys.modules, rss)
"""


def _python(code: str, checkout: Path, *args: str) -> str:
    """Run ``code`` with ``checkout``'s lazystack (from a neutral folder: ``-c`` puts the current one first)."""
    env = {**os.environ, "PYTHONPATH": str(checkout)}
    run = subprocess.run(
        [sys.executable, "-c", code, *args], env=env, cwd=tempfile.gettempdir(), capture_output=True, text=True
    )
    if run.returncode:
        raise RuntimeError(f"{checkout}: {run.stderr[-2000:]}")
    return run.stdout


def _write_store(folder: Path) -> str:
    import numpy as np
    import zarr

    path = str(folder / "data.zarr")
    z = zarr.create_array(path, shape=(8, 2048, 2048), chunks=(1, 256, 256), dtype="uint16")
    rng = np.random.default_rng(0)
    for t in range(8):
        z[t] = rng.integers(0, 4096, (2048, 2048), dtype=np.uint16)
    return path


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark and print its table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--baseline", type=Path, required=True, help="another lazystack checkout")
    parser.add_argument("--zarr", help="a Zarr array of TYX images (default: one written for the run)")
    parser.add_argument("--rounds", type=int, default=7, help="fresh interpreters per checkout")
    args = parser.parse_args(argv)
    here = Path(__file__).resolve().parents[1]
    with tempfile.TemporaryDirectory() as tmp:
        store = os.path.abspath(args.zarr) if args.zarr else _write_store(Path(tmp))
        checkouts = {"this checkout": here, "baseline": args.baseline.resolve()}
        pickles = {name: str(Path(tmp) / f"{i}.pkl") for i, name in enumerate(checkouts)}
        for name, checkout in checkouts.items():
            _python(_PICKLE, checkout, store, pickles[name])
            where = _python("import lazystack; print(lazystack.__file__)", checkout).strip()
            print(f"{name}: {where}")
        results: dict[str, list[tuple[float, bool, bool, float]]] = {name: [] for name in checkouts}
        forked: dict[str, list[float]] = {name: [] for name in checkouts}
        for r in range(args.rounds):
            for name in list(checkouts)[:: 1 if r % 2 == 0 else -1]:
                seconds, tensorstore, zarr, rss = _python(_WORKER, checkouts[name], pickles[name]).split()
                results[name].append((float(seconds), tensorstore == "True", zarr == "True", float(rss)))
                forked[name].append(float(_python(_FORKED, checkouts[name], store)))
    print(f"spawned worker, unpickle + first batch of 32 patches ({args.rounds} fresh interpreters each, interleaved)")
    print(f"{'code':<15} {'median s':>9} {'tensorstore imported':>21} {'zarr imported':>14} {'peak RSS MiB':>13}")
    medians = {}
    for name, rows in results.items():
        medians[name] = statistics.median(s for s, _, _, _ in rows)
        tensorstore = "/".join(sorted({str(t) for _, t, _, _ in rows}))
        zarr = "/".join(sorted({str(z) for _, _, z, _ in rows}))
        rss = statistics.median(m for _, _, _, m in rows)
        print(f"{name:<15} {medians[name]:>9.3f} {tensorstore:>21} {zarr:>14} {rss:>13.0f}")
    print(f"this checkout / baseline: {medians['this checkout'] / medians['baseline']:.2f}")
    print("forked worker, first batch of 32 patches (the same rounds)")
    for name, seconds in forked.items():
        fork = statistics.median(seconds)
        print(f"{name + ' (fork)':<22} {fork:>9.3f} s   spawn / fork: {medians[name] / fork:.2f}")


if __name__ == "__main__":
    main()
