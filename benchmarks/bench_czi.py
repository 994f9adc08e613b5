"""Benchmark: CZI region reads and open time, against bioio-czi measured in the same run.

Writes, with pylibCZIrw's writer, into a temporary folder:

- ``planes.czi``: 2 channels of 4096 x 4096 uint16 planes (``--quick``:
  2048 x 2048), each written as 512 x 512 tiles as a microscope writes a
  tiled acquisition (``--compressed`` writes zstd tiles);
- ``scenes.czi``: ``--scenes`` scenes (default 24) of 3 x 2 planes of
  256 x 256, to time opening a multi-scene file.

and measures:

- ``lazystack``: ``stack.extract_patch`` of a 64 x 64 patch at random
  positions (:func:`lazystack.load_czis`, a region read);
- ``bioio plane``: the reference, reading the whole plane through bioio
  (``BioImage.get_image_dask_data("YX", C=c).compute()``, bioio-czi's
  default reader; ``get_image_data`` would cache the whole image after the
  first call) and cutting the patch out;
- ``bioio dask``: the same patch sliced from ``BioImage.dask_data`` (for
  this tiled file bioio-czi's chunks are the 512 x 512 tiles, so this reads
  only the tiles the patch overlaps);
- ``lazystack revisit`` / ``lazystack no cache``: the same patches again (their tiles
  now in the decoded-chunk cache), and with the cache disabled (every patch
  read as its exact rectangle);
- ``pylibCZIrw roi``: the floor, ``CziReader.read(roi=...)`` on an open
  document;
- open time: ``load_czis`` of the multi-scene file (every scene's stack and
  shape) against ``bioio.BioImage`` listing the scenes and each scene's dims.

Every approach must return the same patches (checked). Prints ratios and
returns the results as a JSON-able dict.

Run: ``python -m benchmarks.bench_czi [--quick] [--compressed] [--patches N]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["main", "write_planes", "write_scenes"]

PATCH = 64
TILE = 512


def write_planes(path: Path, size: int, compressed: bool = False) -> np.ndarray:
    """Write two ``size`` x ``size`` uint16 channels as 512 x 512 tiles; return the data (CYX)."""
    from pylibCZIrw import czi as pyczi

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size]
    base = (1000 + 800 * np.sin(yy / 97.0) * np.cos(xx / 61.0)).astype(np.uint16)
    data = np.stack([base + rng.integers(0, 50, base.shape, dtype=np.uint16) for _ in range(2)])
    options = "zstd1:ExplicitLevel=1;PreProcess=HiLoByteUnpack" if compressed else None
    with pyczi.create_czi(str(path), exist_ok=True, compression_options=options) as writer:
        for c in range(2):
            for y in range(0, size, TILE):
                for x in range(0, size, TILE):
                    writer.write(
                        np.ascontiguousarray(data[c, y : y + TILE, x : x + TILE]), plane={"C": c}, location=(x, y)
                    )
        writer.write_metadata(channel_names={0: "a", 1: "b"})
    return data


def write_scenes(path: Path, n_scenes: int, size: int = 256) -> None:
    """Write ``n_scenes`` scenes of T=3, C=2 planes of ``size`` x ``size``, with scene names."""
    from pylibCZIrw import czi as pyczi

    from lazystack.frontends.samples import add_scene_metadata

    rng = np.random.default_rng(1)
    with pyczi.create_czi(str(path), exist_ok=True) as writer:
        for s in range(n_scenes):
            for t in range(3):
                for c in range(2):
                    plane = rng.integers(0, 4000, (size, size), dtype=np.uint16)
                    writer.write(plane, plane={"T": t, "C": c}, scene=s, location=(s * (size + 100), 0))
        writer.write_metadata()
    add_scene_metadata(path, {s: f"well-{s}" for s in range(n_scenes)})


def _time(fn: Callable[[], Any], repeat: int) -> tuple[list[float], list[Any]]:
    times, outs = [], []
    for _ in range(repeat):
        t0 = time.perf_counter()
        outs.append(fn())
        times.append(time.perf_counter() - t0)
    return times, outs


def _patches(path: Path, size: int, n: int, n_bioio: int) -> dict[str, Any]:
    import bioio
    from pylibCZIrw import czi as pyczi

    from lazystack import load_czis
    from lazystack.io.cache import set_chunk_cache_size

    rng = np.random.default_rng(2)
    positions = [
        (int(rng.integers(2)), int(rng.integers(0, size - PATCH)), int(rng.integers(0, size - PATCH))) for _ in range(n)
    ]
    out: dict[str, Any] = {}

    t0 = time.perf_counter()
    (stack,) = load_czis(path, "SCYX")
    out["lazystack_open_s"] = time.perf_counter() - t0
    it = iter(positions)

    def lazy() -> np.ndarray:
        c, y, x = next(it)
        return stack.extract_patch(0, [c], (y, x), (PATCH, PATCH))[0]

    times, lazy_out = _time(lazy, n)
    out["lazystack"] = times
    # the same patches again: the tiles they overlap are in the decoded-chunk cache
    it = iter(positions)
    times, warm_out = _time(lazy, n)
    out["lazystack revisit"] = times
    # the chunk cache disabled: every patch asks pylibCZIrw for its exact rectangle
    previous = set_chunk_cache_size(0)
    try:
        (uncached,) = load_czis(path, "SCYX")
        it = iter(positions)

        def exact() -> np.ndarray:
            c, y, x = next(it)
            return uncached.extract_patch(0, [c], (y, x), (PATCH, PATCH))[0]

        times, exact_out = _time(exact, n)
        out["lazystack no cache"] = times
    finally:
        set_chunk_cache_size(previous)

    doc = pyczi.CziReader(str(path))
    x0, y0 = doc.total_bounding_rectangle.x, doc.total_bounding_rectangle.y
    it = iter(positions)

    def floor() -> np.ndarray:
        c, y, x = next(it)
        return doc.read(plane={"C": c}, roi=(x0 + x, y0 + y, PATCH, PATCH))[..., 0]

    times, floor_out = _time(floor, n)
    out["pylibCZIrw roi"] = times
    doc.close()

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        image = bioio.BioImage(str(path))
        image.dims  # noqa: B018 - metadata read outside the timings
        it = iter(positions[:n_bioio])

        def plane() -> np.ndarray:
            c, y, x = next(it)
            # get_image_data would read the whole image once and serve later calls from memory:
            # compute the plane's dask array instead, a fresh read of the whole plane every time
            return np.asarray(image.get_image_dask_data("YX", C=c).compute(scheduler="sync"))[
                y : y + PATCH, x : x + PATCH
            ]

        times, plane_out = _time(plane, n_bioio)
        out["bioio plane"] = times
        dask_data = image.dask_data
        it = iter(positions[:n_bioio])

        def dask_patch() -> np.ndarray:
            c, y, x = next(it)
            return np.asarray(dask_data[0, c, 0, y : y + PATCH, x : x + PATCH].compute(scheduler="sync"))

        times, dask_out = _time(dask_patch, n_bioio)
        out["bioio dask"] = times

    for name, got in (
        ("lazystack revisit", warm_out),
        ("lazystack no cache", exact_out),
        ("pylibCZIrw roi", floor_out),
        ("bioio plane", plane_out),
        ("bioio dask", dask_out),
    ):
        for a, b in zip(lazy_out, got, strict=False):
            if not np.array_equal(a, b):
                msg = f"{name} returned a different patch than lazystack"
                raise RuntimeError(msg)
    return out


def _open_times(path: Path, repeat: int) -> dict[str, Any]:
    import bioio

    from lazystack import load_czis

    def lazy() -> int:
        stacks = load_czis(path, "SCTYX")
        return sum(int(np.prod(s.data_shape)) for s in stacks)

    def reference() -> int:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            image = bioio.BioImage(str(path))
            total = 0
            for scene in image.scenes:
                image.set_scene(scene)
                total += int(np.prod(image.dims.shape))
            return total

    lazy_t, lazy_n = _time(lazy, repeat)
    ref_t, ref_n = _time(reference, repeat)
    if lazy_n[0] != ref_n[0]:
        msg = f"load_czis and bioio disagree on the size of {path}: {lazy_n[0]} != {ref_n[0]}"
        raise RuntimeError(msg)
    return {"lazystack": lazy_t, "bioio": ref_t}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark; return the results (JSON-able)."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_czi", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="2048 x 2048 planes, fewer patches and repeats")
    parser.add_argument("--compressed", action="store_true", help="write zstd-compressed tiles")
    parser.add_argument("--patches", type=int, default=None, help="random patches for lazystack (default 500)")
    parser.add_argument("--scenes", type=int, default=24, help="scenes of the multi-scene file (default 24)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON as well")
    args = parser.parse_args(argv)

    size = 2048 if args.quick else 4096
    n = args.patches or (100 if args.quick else 500)
    n_bioio = 5 if args.quick else 15
    repeat = 3 if args.quick else 5
    results: dict[str, Any] = {
        "plane": [size, size],
        "tile": TILE,
        "patch": [PATCH, PATCH],
        "compressed": bool(args.compressed),
        "n_patches": n,
        "n_bioio_reads": n_bioio,
        "n_scenes": args.scenes,
    }
    with tempfile.TemporaryDirectory(prefix="bench_czi_") as tmp:
        planes = Path(tmp) / "planes.czi"
        write_planes(planes, size, compressed=args.compressed)
        results["file_mib"] = planes.stat().st_size / 2**20
        times = _patches(planes, size, n, n_bioio)
        scenes = Path(tmp) / "scenes.czi"
        write_scenes(scenes, args.scenes)
        opens = _open_times(scenes, repeat)
    med = {k: statistics.median(v) for k, v in times.items() if isinstance(v, list)}
    results["median_ms"] = {k: 1e3 * v for k, v in med.items()}
    results["mean_ms"] = {k: 1e3 * statistics.fmean(v) for k, v in times.items() if isinstance(v, list)}
    results["speedup_vs_bioio_plane"] = med["bioio plane"] / med["lazystack"]
    results["speedup_vs_bioio_dask"] = med["bioio dask"] / med["lazystack"]
    results["overhead_vs_pylibczirw_roi"] = med["lazystack"] / med["pylibCZIrw roi"]
    results["revisit_speedup"] = med["lazystack"] / med["lazystack revisit"]
    results["cache_off_vs_first_pass"] = med["lazystack no cache"] / med["lazystack"]
    results["open_ms"] = {k: 1e3 * statistics.median(v) for k, v in opens.items()}
    results["open_speedup_vs_bioio"] = statistics.median(opens["bioio"]) / statistics.median(opens["lazystack"])
    results["lazystack_open_ms_one_file"] = 1e3 * times["lazystack_open_s"]
    _print_table(results)
    if args.json:
        print(json.dumps(results, indent=2))
    return results


def _print_table(r: dict[str, Any]) -> None:
    kind = "zstd tiles" if r["compressed"] else "uncompressed tiles"
    print(f"\nCZI benchmark: 2 x {r['plane'][0]}x{r['plane'][1]} uint16 planes ({kind} of {r['tile']}), ")
    print(f"{r['patch'][0]}x{r['patch'][1]} patches at random positions, file {r['file_mib']:.0f} MiB\n")
    head = f"{'approach':<34}{'median per patch':>18}{'lazystack speed-up':>20}"
    print(head)
    print("-" * len(head))
    ms = r["median_ms"]
    rows = [
        ("lazystack extract_patch", ms["lazystack"], 1.0),
        ("bioio whole plane, then crop", ms["bioio plane"], r["speedup_vs_bioio_plane"]),
        ("bioio dask_data slice", ms["bioio dask"], r["speedup_vs_bioio_dask"]),
        ("pylibCZIrw read(roi) (floor)", ms["pylibCZIrw roi"], 1 / r["overhead_vs_pylibczirw_roi"]),
    ]
    for name, t, ratio in rows:
        print(f"{name:<34}{t:>15.3f} ms{ratio:>19.1f}x")
    mean = r["mean_ms"]
    print("\ndecoded-chunk cache (tiles of one plane, LAZYSTACK_CHUNK_CACHE_BYTES):")
    print(
        f"  mean per patch: first pass {mean['lazystack']:.3f} ms (cold tiles included), "
        f"again {mean['lazystack revisit']:.3f} ms, cache disabled {mean['lazystack no cache']:.3f} ms"
    )
    print(
        f"  same patches again (warm cache) {ms['lazystack revisit']:.3f} ms"
        f" -> {r['revisit_speedup']:.1f}x faster than the first pass"
    )
    print(
        f"  cache disabled (exact rectangle per patch) {ms['lazystack no cache']:.3f} ms"
        f" = {r['cache_off_vs_first_pass']:.2f}x the first pass"
    )
    print(f"\nopen a {r['n_scenes']}-scene CZI (all scenes' shapes):")
    print(f"  lazystack load_czis {r['open_ms']['lazystack']:.1f} ms, bioio BioImage {r['open_ms']['bioio']:.1f} ms")
    print(f"  -> lazystack opens {r['open_speedup_vs_bioio']:.1f}x faster")
    print("\ntarget: extract_patch >= 10x faster than reading the whole plane through bioio")


if __name__ == "__main__":
    main()
