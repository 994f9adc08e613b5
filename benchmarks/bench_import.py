"""``import lazystack`` against ``import zarr, tifffile``: fresh interpreters, interleaved.

Each round starts one fresh interpreter per statement, in alternating order,
with ``-X importtime``; a statement's cost is the cumulative import time of
its own top-level modules (``lazystack``; ``zarr`` plus ``tifffile``), so the
interpreter's start-up is left out. The wall-clock time of the whole
``python -c STATEMENT`` run is reported too, as measured. Targets (issue 20):
``import lazystack`` <= 1.5x ``import zarr, tifffile``, and no dask.array,
xarray, pandas, zarr or tifffile after ``import lazystack``.

Run: ``python -m benchmarks.bench_import [--rounds N] [--json FILE]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from typing import Any

STATEMENTS = {"lazystack": "import lazystack", "zarr, tifffile": "import zarr, tifffile"}
HEAVY = ("dask.array", "xarray", "pandas", "zarr", "tifffile")


def _run(statement: str) -> tuple[float, float]:
    """(cumulative import time of the statement's top-level modules in ms, wall-clock ms)."""
    names = [n.strip() for n in statement.removeprefix("import ").split(",")]
    start = time.perf_counter()
    run = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", statement], capture_output=True, text=True, check=True
    )
    wall = (time.perf_counter() - start) * 1e3
    total = 0
    for line in run.stderr.splitlines():
        if not line.startswith("import time:") or "|" not in line:
            continue
        _, cumulative, name = (part.strip() for part in line.removeprefix("import time:").split("|"))
        if name in names:  # top-level entries carry no indentation
            total += int(cumulative)
    return total / 1e3, wall


def heavy_after_import() -> list[str]:
    """The heavy modules a fresh ``import lazystack`` loads (should be none)."""
    code = f"import json, sys, lazystack; print(json.dumps([m for m in {list(HEAVY)!r} if m in sys.modules]))"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return list(json.loads(run.stdout))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the comparison and print a table.

    Parameters
    ----------
    argv : list of str, optional
        Command-line arguments (``--rounds``, ``--json``).

    Returns
    -------
    dict
        Medians per statement, their ratio and the heavy modules found.
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15, help="fresh interpreters per statement (default 15)")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args(argv)
    samples: dict[str, list[tuple[float, float]]] = {k: [] for k in STATEMENTS}
    for i in range(args.rounds):
        order = list(STATEMENTS) if i % 2 == 0 else list(reversed(STATEMENTS))
        for key in order:
            samples[key].append(_run(STATEMENTS[key]))
    medians = {
        key: {
            "importtime_ms": statistics.median(s[0] for s in values),
            "wall_ms": statistics.median(s[1] for s in values),
        }
        for key, values in samples.items()
    }
    ratio = medians["lazystack"]["importtime_ms"] / medians["zarr, tifffile"]["importtime_ms"]
    wall_ratio = medians["lazystack"]["wall_ms"] / medians["zarr, tifffile"]["wall_ms"]
    results = {
        "rounds": args.rounds,
        "medians": medians,
        "ratio_importtime": ratio,
        "ratio_wall": wall_ratio,
        "heavy_modules_after_import_lazystack": heavy_after_import(),
    }
    print(f"{'statement':<24}{'import time, ms':>16}{'wall clock, ms':>16}   (medians of {args.rounds}, interleaved)")
    for key, m in medians.items():
        print(f"{STATEMENTS[key]:<24}{m['importtime_ms']:>16.1f}{m['wall_ms']:>16.1f}")
    print(f"ratio lazystack / (zarr, tifffile): import time {ratio:.2f}, wall clock {wall_ratio:.2f} (target <= 1.5)")
    print(f"heavy modules after import lazystack: {results['heavy_modules_after_import_lazystack'] or 'none'}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return results


if __name__ == "__main__":
    main()
