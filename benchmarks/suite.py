"""The lazystack patch-reading benchmark suite: ``python -m benchmarks`` (or ``tox -e bench``).

Builds its own data in a temporary folder and prints one table per scenario:
microseconds per patch (median) of lazystack and of the references measured
in the same run, and lazystack's time as a ratio of each reference
(``lazystack / reference``: below 1 is faster). Results are also written as
JSON (``--json``, default ``benchmarks/results/latest.json``).

References
    ``zarr-python`` (``arr[region]``), ``tensorstore`` (a region read, no
    cache), ``dask`` (``x[region].compute()``), the *cold floor* (reading the
    touched chunk files or tiles and decoding them, plain Python + numcodecs /
    imagecodecs, no bookkeeping), the *warm floor* (numpy slice of the data in
    memory, cast to float32 as a patch is), ``tifffile.memmap`` slicing and
    reading a TIFF whole (*full load*).
lazystack
    ``extract_patch`` on a stack. Cold = chunk cache disabled (every call
    reads and decodes); warm = the same positions again with the cache
    holding every touched chunk. Zarr stacks come from
    :func:`lazystack.load_zarrs` once its reader is a
    :class:`~lazystack.io.chunked.ChunkedReader`; until then from
    :class:`lazystack.sources.zarr.engines.ZarrArrayReader` directly (the table header
    says which), and the current ``load_zarrs`` stack is timed as an extra
    row. Choose the zarr engine with ``--engine`` (or ``LAZYSTACK_ZARR_ENGINE``).

Options: ``--quick`` (small data, fewer patches; < 2 minutes), ``--scenario
NAME`` (repeatable), ``--json PATH``, ``--engine NAME``, ``--list``.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.http_range import LocalHTTPServer, RangeHandler

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_JSON = ROOT / "benchmarks" / "results" / "latest.json"
SEED = 1234


# -- configuration --------------------------------------------------------------------------------
@dataclass
class Config:
    """Sizes of a run."""

    quick: bool
    engine: str | None
    n: int  # patches per method
    n_slow: int  # patches for the slow references (dask, zarr over http)
    side2d: int  # 2D image side
    shape3d: tuple[int, int, int]
    ltc_shape: tuple[int, int, int]  # larger-than-cache dataset
    ltc_cache: int
    ltc_patches: int
    tmp: Path = field(default_factory=lambda: Path("."))

    @classmethod
    def make(cls, quick: bool, engine: str | None, tmp: Path) -> Config:
        if quick:
            return cls(True, engine, 150, 25, 4096, (32, 1024, 1024), (4, 4096, 4096), 32 * 2**20, 1000, tmp)
        return cls(False, engine, 1000, 100, 8192, (64, 2048, 2048), (52, 8192, 8192), 256 * 2**20, 5000, tmp)


# -- timing helpers ---------------------------------------------------------------------------------
def _median_us(fn: Callable[..., Any], args: Sequence[tuple[Any, ...]], warmup: int = 3) -> float:
    for a in args[:warmup]:
        fn(*a)
    times = np.empty(len(args))
    for i, a in enumerate(args):
        t = time.perf_counter()
        fn(*a)
        times[i] = time.perf_counter() - t
    return float(np.median(times) * 1e6)


def _paired_us(
    fns: dict[str, Callable[..., Any]],
    args: Sequence[tuple[Any, ...]],
    rounds: int = 10,
    warmup: int = 3,
    samples: dict[str, list[float]] | None = None,
) -> dict[str, float]:
    """Median µs per call of each of ``fns`` over ``args``, measured in interleaved rounds.

    The args are cut into ``rounds`` blocks (at most as many as args);
    every method runs each block, in turn, in an order that reverses from
    one block to the next (ABBA...). The methods a target compares thus
    share the same stretches of time, so a slow spell of the shared machine
    weighs on both instead of on whichever happened to run then (ten blocks:
    a spell of a few seconds falls on both sides of more of them than with
    four). ``samples``, if given, receives every call's seconds per method,
    in the order of ``args``.
    """
    rounds = max(1, min(rounds, len(args)))
    for fn in fns.values():
        for a in args[:warmup]:
            fn(*a)
    times: dict[str, list[float]] = {name: [] for name in fns}
    names = list(fns)
    n = len(args)
    for k in range(rounds):
        block = args[k * n // rounds : (k + 1) * n // rounds]
        for name in names if k % 2 == 0 else names[::-1]:
            fn = fns[name]
            for a in block:
                t = time.perf_counter()
                fn(*a)
                times[name].append(time.perf_counter() - t)
    if samples is not None:
        samples.update(times)
    return {name: float(np.median(ts) * 1e6) for name, ts in times.items()}


def _cold_vs_floor(
    table: Table, lazy: Callable[..., Any], floor_name: str, floor: Callable[..., Any], args: Sequence[tuple[Any, ...]]
) -> float:
    """``lazystack cold`` (a row) and the floor measured interleaved; a note on their same-patch ratio.

    Returns the floor's median µs, for the caller to list among the references.

    The targets compare medians. When patches fall into groups of very
    different cost (2D patches in one chunk, or in two to four) the median of
    each side lands near the boundary between the groups, and the ratio of
    medians swings between runs; the note gives the median, over patches, of
    each patch's lazystack time over the floor's time for the same patch.
    """
    times: dict[str, list[float]] = {}
    got = _paired_us({"lazystack cold": lazy, floor_name: floor}, args, samples=times)
    table.rows["lazystack cold"] = got["lazystack cold"]
    per_patch = np.asarray(times["lazystack cold"]) / np.asarray(times[floor_name])
    p10, p50, p90 = np.percentile(per_patch, [10, 50, 90])
    table.notes.append(
        f"same patch, lazystack cold / {floor_name.split(' (')[0]}: median {p50:.2f} (10th-90th percentile "
        f"{p10:.2f}-{p90:.2f}) over {len(per_patch)} patches"
    )
    return got[floor_name]


def _positions(shape: Sequence[int], patch: Sequence[int], n: int, seed: int = SEED) -> list[tuple[int, ...]]:
    rng = np.random.default_rng(seed)
    cols = [rng.integers(0, s - p + 1, n) for s, p in zip(shape, patch, strict=True)]
    return [tuple(int(c[i]) for c in cols) for i in range(n)]


def _region(pos: Sequence[int], patch: Sequence[int]) -> tuple[slice, ...]:
    return tuple(slice(p, p + s) for p, s in zip(pos, patch, strict=True))


def _cache_size(nbytes: int) -> contextlib.AbstractContextManager[Any]:
    from lazystack.io.cache import chunk_cache_size

    return chunk_cache_size(nbytes)


def _rng_image(shape: Sequence[int], seed: int = SEED) -> np.ndarray:
    """Smooth-ish uint16 data with noise (compresses like microscopy, about 2-3x)."""
    rng = np.random.default_rng(seed)
    base = np.linspace(500, 3000, shape[-1], dtype=np.float32)
    return (base + rng.normal(0, 40, size=tuple(shape)).astype(np.float32)).clip(0, 65535).astype(np.uint16)


# -- data -----------------------------------------------------------------------------------------
def write_zarr(
    path: Path,
    data: np.ndarray,
    chunks: Sequence[int],
    *,
    compressed: bool,
    shards: Sequence[int] | None = None,
) -> Any:
    """Write ``data`` as a zarr v3 array (zstd or uncompressed) and reopen it read-only."""
    import zarr
    from zarr.codecs import ZstdCodec

    z = zarr.create_array(
        path,
        shape=data.shape,
        chunks=tuple(chunks),
        shards=tuple(shards) if shards else None,
        dtype=data.dtype,
        compressors=ZstdCodec(level=1) if compressed else None,
        overwrite=True,
    )
    z[...] = data
    return zarr.open_array(path, mode="r")


def _lazystack_zarr_stack(path_or_url: str, axes: str, engine: str | None) -> tuple[Any, str, Any]:
    """The stack lazystack users get, plus how it was made, plus the current load_zarrs stack (or None)."""
    import zarr

    from lazystack import LazyImageStack
    from lazystack.io.chunked import as_chunked_reader
    from lazystack.sources.zarr.engines import ZarrArrayReader

    loader_stack = None
    try:
        from lazystack import load_zarrs

        (loader_stack,) = load_zarrs(path_or_url, axes)
    except Exception:
        loader_stack = None
    if loader_stack is not None and as_chunked_reader(loader_stack.reader) is not None:
        return loader_stack, "load_zarrs", None
    z = zarr.open_array(path_or_url, mode="r")
    reader = ZarrArrayReader(z, engine=engine)
    return LazyImageStack(reader, axes), f"ZarrArrayReader(engine={reader.engine_name!r})", loader_stack


def _tensorstore_open(kvstore: dict[str, Any], driver: str = "zarr3") -> Any:
    try:
        import tensorstore as ts
    except ImportError:
        return None
    ctx = ts.Context({"cache_pool": {"total_bytes_limit": 0}})
    return ts.open({"driver": driver, "kvstore": kvstore}, read=True, context=ctx).result()


class ZarrFloor:
    """The cold floor for a local zarr v3 array: read each touched chunk file (or inner chunk) and decode it."""

    def __init__(self, z: Any, path: Path) -> None:
        import numcodecs

        from lazystack.sources.zarr.engines import DirectEngine

        self.z = z
        self.path = path
        self.dtype = np.dtype(z.dtype)
        self.codec = numcodecs.Zstd() if z.metadata.codecs[-1].__class__.__name__ == "ZstdCodec" else None
        self.sharded = z.shards is not None
        self.chunks = tuple(z.chunks)
        self.shape = tuple(z.shape)
        if self.sharded:
            inner = z.metadata.codecs[0].codecs
            self.codec = numcodecs.Zstd() if any(type(c).__name__ == "ZstdCodec" for c in inner) else None
            engine = DirectEngine(z)  # only to read every shard index before timing
            self.cps = tuple(s // c for s, c in zip(z.shards, z.chunks, strict=True))  # inner chunks per shard
            grid = [-(-s // c) for s, c in zip(self.shape, z.shards, strict=True)]
            # one inner chunk of every shard (its first) names the shard
            first_chunks = [tuple(i * c for i, c in zip(s, self.cps, strict=True)) for s in np.ndindex(*grid)]
            idx = engine.shard_indexes(first_chunks)
            self.index = {k: v for k, v in idx.items() if v is not None}

    def _decode(self, raw: bytes) -> np.ndarray:
        if self.codec is not None:
            raw = self.codec.decode(raw)
        return np.frombuffer(raw, self.dtype).reshape(self.chunks)

    def _chunk(self, idx: tuple[int, ...]) -> np.ndarray:
        if self.sharded:
            shard = tuple(i // c for i, c in zip(idx, self.cps, strict=True))
            local = tuple(i % c for i, c in zip(idx, self.cps, strict=True))
            start, length = (int(v) for v in self.index[shard][local])
            fd = os.open(self.path / ("c/" + "/".join(map(str, shard))), os.O_RDONLY)
            try:
                raw = os.pread(fd, length, start)
            finally:
                os.close(fd)
            return self._decode(raw)
        with open(self.path / ("c/" + "/".join(map(str, idx))), "rb") as f:
            return self._decode(f.read())

    def _touched(self, region: tuple[slice, ...]) -> Iterator[tuple[int, ...]]:
        ranges = [range(s.start // c, (s.stop - 1) // c + 1) for s, c in zip(region, self.chunks, strict=True)]
        return itertools.product(*ranges)

    def _copy(self, out: np.ndarray, region: tuple[slice, ...], cidx: tuple[int, ...], chunk: np.ndarray) -> None:
        """Copy the part of chunk ``cidx`` inside ``region`` into ``out`` (the region's patch)."""
        src, dst = [], []
        for s, i, c in zip(region, cidx, self.chunks, strict=True):
            lo, hi = max(s.start, i * c), min(s.stop, (i + 1) * c)
            src.append(slice(lo - i * c, hi - i * c))
            dst.append(slice(lo - s.start, hi - s.start))
        out[tuple(dst)] = chunk[tuple(src)]

    def read(self, region: tuple[slice, ...]) -> np.ndarray:
        out = np.empty(tuple(s.stop - s.start for s in region), np.float32)  # the patch a caller wants
        for cidx in self._touched(region):
            self._copy(out, region, cidx, self._chunk(cidx))
        return out

    def raw_batch(self, regions: Sequence[tuple[slice, ...]]) -> dict[tuple[int, ...], bytes]:
        """The stored bytes of every distinct chunk a batch of regions touches (read ahead for decode_batch)."""
        assert not self.sharded, "a batch floor over whole chunk files"
        raws: dict[tuple[int, ...], bytes] = {}
        for region in regions:
            for idx in self._touched(region):
                if idx not in raws:
                    with open(self.path / ("c/" + "/".join(map(str, idx))), "rb") as f:
                        raws[idx] = f.read()
        return raws

    def decode_batch(
        self, regions: Sequence[tuple[slice, ...]], raws: dict[tuple[int, ...], bytes], pool: ThreadPoolExecutor | None
    ) -> list[np.ndarray]:
        """A batch's patches from its chunks' bytes already in memory: each chunk decoded once, then copied.

        The bound of what decoding costs a batch, with no file reads,
        planning or bookkeeping: with ``pool``, the chunks are dealt in grid
        order, one contiguous share per worker plus the calling thread.
        """
        outs = [np.empty(tuple(s.stop - s.start for s in r), np.float32) for r in regions]
        uses: dict[tuple[int, ...], list[int]] = {}
        for k, region in enumerate(regions):
            for idx in self._touched(region):
                uses.setdefault(idx, []).append(k)

        def run(share: list[tuple[int, ...]]) -> None:
            for cidx in share:
                chunk = self._decode(raws[cidx])
                for k in uses[cidx]:
                    self._copy(outs[k], regions[k], cidx, chunk)

        order = sorted(uses)
        n, w = len(order), 1 if pool is None else pool._max_workers + 1
        shares = [order[j * n // w : (j + 1) * n // w] for j in range(w)]
        futures = [pool.submit(run, share) for share in shares[1:]] if pool is not None else []
        run(shares[0])
        for f in futures:
            f.result()
        return outs


# -- result tables --------------------------------------------------------------------------------
@dataclass
class Table:
    """One scenario's measurements."""

    name: str
    title: str
    lazystack_path: str = ""
    rows: dict[str, float] = field(default_factory=dict)  # method -> us/patch
    main: str = "lazystack cold"  # the row the ratios are computed for
    checks: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    skipped: str | None = None

    def check(
        self, label: str, num: str, den: str, limit: float, *, at_most: bool = True, informative: bool = False
    ) -> None:
        """Record ``rows[num] / rows[den]`` against ``limit``; ``informative`` ones are no target of the issue."""
        if num not in self.rows or den not in self.rows:
            return
        ratio = self.rows[num] / self.rows[den]
        ok = ratio <= limit if at_most else ratio >= limit
        op = "<=" if at_most else ">="
        check = {"target": label, "ratio": round(ratio, 3), "op": op, "limit": limit, "pass": bool(ok)}
        if informative:
            check["informative"] = True
        self.checks.append(check)

    def as_dict(self) -> dict[str, Any]:
        main = self.rows.get(self.main)
        ratios = {k: round(main / v, 4) for k, v in self.rows.items() if main and v and k != self.main}
        return {
            "title": self.title,
            "lazystack_path": self.lazystack_path,
            "us_per_patch": {k: round(v, 2) for k, v in self.rows.items()},
            "ratio_of": self.main,
            "ratios": ratios,
            "targets": self.checks,
            "notes": self.notes,
            "skipped": self.skipped,
        }

    def render(self) -> str:
        lines = [f"== {self.name}: {self.title}"]
        if self.skipped:
            lines.append(f"   skipped: {self.skipped}")
            return "\n".join(lines)
        if self.lazystack_path:
            lines.append(f"   lazystack via {self.lazystack_path}")
        main = self.rows.get(self.main)
        width = max(len(k) for k in self.rows) + 2
        lines.append(f"   {'method':<{width}}{'us/patch':>12}{f'  {self.main} / method':>30}")
        for k, v in self.rows.items():
            ratio = "" if k == self.main or not main else f"{main / v:.2f}x"
            lines.append(f"   {k:<{width}}{v:>12.1f}{ratio:>30}")
        for c in self.checks:
            mark = ("PASS" if c["pass"] else "MISS") + (" (informative, not a target)" if c.get("informative") else "")
            op = c.get("op", "<=")
            lines.append(f"   target {c['target']}: {c['ratio']:.2f} ({op} {c['limit']}) {mark}")
        lines.extend(f"   note: {n}" for n in self.notes)
        return "\n".join(lines)


WARM_NUMPY = "warm floor: numpy slice -> float32"
WARM_STACK = "warm floor: in-memory stack (load_arrays)"
ZARR_FLOOR = "cold floor (touched chunks read+decode)"
TILE_FLOOR = "cold floor (touched tiles read+decode)"
HTTP_FLOOR = "cold floor (sequential GETs + decode)"


def _warm_floors(
    table: Table,
    data: np.ndarray,
    axes: str,
    regions: Sequence[tuple[tuple[slice, ...]]],
    patch: Sequence[int],
    warm: Callable[..., Any],
) -> None:
    """The two warm floors, a bare numpy slice cast to float32 and extract_patch on an in-memory numpy stack,
    measured interleaved with ``warm`` (lazystack with every chunk cached; call with the cache filled)."""
    from lazystack import LazyImageStack

    mem = LazyImageStack(data, axes)
    n_lead = len(axes) - len(patch)

    def in_memory(r: tuple[slice, ...]) -> Any:
        sample = r[0] if n_lead else 0
        return mem.extract_patch(sample, None, tuple(s.start for s in r[n_lead:]), patch)

    got = _paired_us(
        {"lazystack warm": warm, WARM_NUMPY: lambda r: np.array(data[r], dtype=np.float32), WARM_STACK: in_memory},
        regions,
        warmup=0,
    )
    table.rows.update(got)
    table.check("warm <= 3x in-memory stack", "lazystack warm", WARM_STACK, 3.0)
    table.check("warm <= 3x bare numpy slice", "lazystack warm", WARM_NUMPY, 3.0)


def _dask_row(table: Table, fn: Callable[..., Any], args: Sequence[tuple[Any, ...]]) -> None:
    table.rows["dask compute"] = _median_us(fn, args, warmup=1)


def _speedup_over_dask(table: Table, floor: str | None = None) -> None:
    """The ``>= 10x faster than dask`` target; with ``floor``, a note on how much faster the floor itself is."""
    if "dask compute" in table.rows and floor in table.rows:
        table.notes.append(
            f"dask compute / {floor.split(' (')[0]}: {table.rows['dask compute'] / table.rows[floor]:.2f} "
            "(how much faster than dask a reader at the floor is)"
        )
    if "dask compute" in table.rows and table.main in table.rows:
        ratio = table.rows["dask compute"] / table.rows[table.main]
        table.checks.append(
            {
                "target": "dask / lazystack (>= 10x faster)",
                "ratio": round(ratio, 2),
                "op": ">=",
                "limit": 10,
                "pass": ratio >= 10,
            }
        )


# -- zarr scenarios -------------------------------------------------------------------------------
def _zarr_random(cfg: Config, name: str, *, ndim: int, compressed: bool, sharded: bool = False) -> Table:
    import dask.array as da

    from lazystack.io.cache import get_chunk_cache

    if ndim == 2:
        shape: tuple[int, ...] = (cfg.side2d, cfg.side2d)
        chunks: tuple[int, ...] = (256, 256)
        patch: tuple[int, ...] = (64, 64)
        axes = "YX"
    else:
        shape, chunks, patch, axes = cfg.shape3d, (8, 128, 128), (16, 64, 64), "ZYX"
    shards = tuple(8 * c for c in chunks) if sharded else None
    kind = "zstd" if compressed else "uncompressed"
    title = (
        f"{ndim}D random {'x'.join(map(str, patch))} patches, uint16 {'x'.join(map(str, shape))}, {kind}, "
        f"chunks {'x'.join(map(str, chunks))}" + (f", shards {'x'.join(map(str, shards))}" if shards else "")
    )
    table = Table(name, title)
    data = _rng_image(shape)
    path = cfg.tmp / f"{name}.zarr"
    z = write_zarr(path, data, chunks, compressed=compressed, shards=shards)
    pos = _positions(shape, patch, cfg.n)
    regions = [(_region(p, patch),) for p in pos]
    stack, how, loader_stack = _lazystack_zarr_stack(str(path), axes, cfg.engine)
    table.lazystack_path = how
    zeros = (0,) * ndim

    def lazy(region: tuple[slice, ...]) -> Any:
        return stack.extract_patch(0, None, tuple(s.start for s in region), patch)

    check = lazy(regions[0][0])
    np.testing.assert_array_equal(check[0], data[regions[0][0]])
    floor = ZarrFloor(z, path)
    np.testing.assert_array_equal(floor.read(regions[0][0]), data[regions[0][0]])
    with _cache_size(0):
        floor_us = _cold_vs_floor(table, lazy, ZARR_FLOOR, floor.read, regions)
    with _cache_size(2**31):
        cache = get_chunk_cache()
        table.rows["lazystack first touch (cache on)"] = _median_us(lambda r: (cache.clear(), lazy(r)), regions)
        for r in regions:
            lazy(*r)
        _warm_floors(table, data, axes, regions, patch, lazy)
    if loader_stack is not None:
        with _cache_size(0):
            table.rows["load_zarrs (current back end)"] = _median_us(
                lambda r: loader_stack.extract_patch(0, None, tuple(s.start for s in r), patch), regions[: cfg.n_slow]
            )
    table.rows["zarr-python arr[...]"] = _median_us(lambda r: z[r], regions)
    ts = _tensorstore_open({"driver": "file", "path": str(path) + "/"})
    if ts is not None:
        table.rows["tensorstore"] = _median_us(lambda r: ts[r].read().result(), regions)
    x = da.from_zarr(z)
    _dask_row(table, lambda r: x[r].compute(), regions[: cfg.n_slow])
    table.rows[ZARR_FLOOR] = floor_us
    del zeros
    # The cold target is for compressed zarr; for raw chunks the floor is a bare file read.
    table.check(
        "cold <= 1.3x touched-chunk floor",
        "lazystack cold",
        ZARR_FLOOR,
        1.3,
        informative=not compressed,
    )
    _speedup_over_dask(table, ZARR_FLOOR)
    return table


def scenario_zarr2d_zstd(cfg: Config) -> Table:
    """2D random 64x64 patches from a zstd zarr v3 array with 256x256 chunks."""
    return _zarr_random(cfg, "zarr2d_zstd", ndim=2, compressed=True)


def scenario_zarr2d_raw(cfg: Config) -> Table:
    """2D random 64x64 patches from an uncompressed zarr v3 array."""
    return _zarr_random(cfg, "zarr2d_raw", ndim=2, compressed=False)


def scenario_zarr3d_zstd(cfg: Config) -> Table:
    """3D random 16x64x64 patches from a zstd zarr v3 array."""
    return _zarr_random(cfg, "zarr3d_zstd", ndim=3, compressed=True)


def scenario_zarr3d_raw(cfg: Config) -> Table:
    """3D random 16x64x64 patches from an uncompressed zarr v3 array."""
    return _zarr_random(cfg, "zarr3d_raw", ndim=3, compressed=False)


def scenario_zarr_sharded(cfg: Config) -> Table:
    """2D random 64x64 patches from a sharded zstd zarr v3 array (256x256 inner chunks, 2048x2048 shards)."""
    return _zarr_random(cfg, "zarr_sharded", ndim=2, compressed=True, sharded=True)


def scenario_batch64(cfg: Config) -> Table:
    """A batch of 64 random 64x64 patches (extract_patches) against 64 one-by-one calls, cold."""
    from lazystack.ops.batch import extract_patches

    shape, chunks, patch = (cfg.side2d, cfg.side2d), (256, 256), (64, 64)
    table = Table("batch64", f"batch of 64 random 64x64 patches, uint16 {shape[0]}x{shape[1]} zstd, 256x256 chunks")
    table.main = "lazystack extract_patches (per patch)"
    data = _rng_image(shape)
    path = cfg.tmp / "batch64.zarr"
    z = write_zarr(path, data, chunks, compressed=True)
    stack, how, _ = _lazystack_zarr_stack(str(path), "YX", cfg.engine)
    table.lazystack_path = how
    n_batches = max(3, cfg.n // 16)  # medians over ~60 batches: over 15 they moved by 20 % between runs
    batches = [_positions(shape, patch, 64, seed=SEED + b) for b in range(n_batches)]

    def batch(pos: list[tuple[int, ...]]) -> Any:
        return extract_patches([(stack, 0, None, p, patch) for p in pos])

    def one_by_one(pos: list[tuple[int, ...]]) -> Any:
        return [stack.extract_patch(0, None, p, patch) for p in pos]

    got = batch(batches[0])
    for g, p in zip(got, batches[0], strict=True):
        np.testing.assert_array_equal(g[0], data[_region(p, patch)])
    with _cache_size(0):
        got = _paired_us(
            {table.main: batch, "lazystack one-by-one cold": one_by_one}, [(b,) for b in batches], warmup=1
        )
        table.rows.update({name: us / 64 for name, us in got.items()})
    from lazystack.io.cache import get_chunk_cache

    def emptied(fn: Callable[[Any], Any]) -> Callable[[Any], Any]:
        def run(pos: Any) -> Any:
            get_chunk_cache().clear()
            return fn(pos)

        return run

    with _cache_size(256 * 2**20):  # the cache on, emptied before every batch
        on_batch, on_single = "cache on, emptied: extract_patches", "cache on, emptied: one-by-one"
        table.rows[on_batch] = _median_us(emptied(batch), [(b,) for b in batches], warmup=1) / 64
        table.rows[on_single] = _median_us(emptied(one_by_one), [(b,) for b in batches], warmup=1) / 64
    table.rows["zarr-python one-by-one"] = (
        _median_us(lambda pos: [z[_region(p, patch)] for p in pos], [(b,) for b in batches[:2]], warmup=0) / 64
    )
    ts = _tensorstore_open({"driver": "file", "path": str(path) + "/"})
    if ts is not None:

        def ts_batch(pos: list[tuple[int, ...]]) -> Any:
            futures = [ts[_region(p, patch)].read() for p in pos]
            return [f.result() for f in futures]

        table.rows["tensorstore 64 concurrent reads"] = _median_us(ts_batch, [(b,) for b in batches], warmup=1) / 64
    floor = ZarrFloor(z, path)
    table.rows["cold floor one-by-one"] = (
        _median_us(lambda pos: [floor.read(_region(p, patch)) for p in pos], [(b,) for b in batches], warmup=0) / 64
    )
    # What the cores allow: the batch's chunks, their bytes already in memory, decoded on one core and on all.
    from lazystack.io.chunked import CPU_WORKERS

    raws = {id(b): floor.raw_batch([_region(p, patch) for p in b]) for b in batches}
    on_one, on_all = "decode only, one core", f"decode only, {CPU_WORKERS} cores"
    with ThreadPoolExecutor(max(1, CPU_WORKERS - 1)) as pool:
        for g, p in zip(
            floor.decode_batch([_region(p, patch) for p in batches[0]], raws[id(batches[0])], pool),
            batches[0],
            strict=True,
        ):
            np.testing.assert_array_equal(g, data[_region(p, patch)])
        with _cache_size(0):
            got = _paired_us(
                {
                    "batch": batch,
                    "one": one_by_one,
                    on_one: lambda pos: floor.decode_batch([_region(p, patch) for p in pos], raws[id(pos)], None),
                    on_all: lambda pos: floor.decode_batch([_region(p, patch) for p in pos], raws[id(pos)], pool),
                },
                [(b,) for b in batches],
                warmup=1,
            )
    table.rows[on_one] = got[on_one] / 64
    table.rows[on_all] = got[on_all] / 64
    table.notes.append(
        f"measured interleaved: {on_all} / {on_one} {got[on_all] / got[on_one]:.2f} (how decoding scales on "
        f"these cores: the most a batch gains); extract_patches / one-by-one {got['batch'] / got['one']:.2f}; "
        f"extract_patches / {on_all} {got['batch'] / got[on_all]:.2f}"
    )
    table.check("batch <= 0.5x one-by-one cold", table.main, "lazystack one-by-one cold", 0.5)
    table.check("batch <= 0.5x one-by-one, cache on and emptied", on_batch, on_single, 0.5, informative=True)
    return table


# -- TIFF scenarios ----------------------------------------------------------------------------------
def _tiff_loader() -> Callable[..., Any] | None:
    try:
        from lazystack import load_tiffs
        from lazystack.sources import tiff  # noqa: F401
    except ImportError:
        return None
    return load_tiffs


def _tiff(cfg: Config, name: str, *, compressed: bool) -> Table:
    import dask.array as da
    import tifffile

    side = cfg.side2d
    shape, patch = (4, side, side), (64, 64)
    kind = "tiled 256x256 zstd" if compressed else "uncompressed contiguous"
    table = Table(name, f"2D random 64x64 patches, {kind} TIFF, 4 pages of uint16 {side}x{side}")
    load_tiffs = _tiff_loader()
    if load_tiffs is None:
        table.skipped = "lazystack.sources.tiff is not there yet (load_tiffs cannot run)"
        return table
    data = _rng_image(shape)
    path = cfg.tmp / f"{name}.tif"
    kwargs: dict[str, Any] = {"photometric": "minisblack"}
    if compressed:
        kwargs.update(tile=(256, 256), compression="zstd", compressionargs={"level": 1})
    tifffile.imwrite(path, data, **kwargs)
    (stack,) = load_tiffs(str(path), "TYX")
    table.lazystack_path = f"load_tiffs ({type(stack.reader).__name__})"
    pos = _positions(shape, (1, *patch), cfg.n)
    args = [(p[0], p[1:]) for p in pos]

    def lazy(t: int, yx: tuple[int, ...]) -> Any:
        return stack.extract_patch(t, None, yx, patch)

    np.testing.assert_array_equal(lazy(*args[0])[0], data[args[0][0]][_region(args[0][1], patch)])
    mm = None if compressed else tifffile.memmap(path, mode="r")
    # the reference the cold target compares with, measured interleaved with lazystack
    reference, reference_fn = (
        (TILE_FLOOR, _tile_floor(path, patch))
        if mm is None
        else ("tifffile.memmap", lambda t, yx: np.array(mm[(t, *_region(yx, patch))], dtype=np.float32))
    )
    with _cache_size(0):
        reference_us = _cold_vs_floor(table, lazy, reference, reference_fn, args)
    t0 = time.perf_counter()
    full = tifffile.imread(path)
    load_us = (time.perf_counter() - t0) * 1e6
    with _cache_size(2**31):
        for a in args:
            lazy(*a)
        _warm_floors(
            table,
            full,
            "TYX",
            [((t, *_region(yx, patch)),) for t, yx in args],
            patch,
            lambda r: lazy(r[0], tuple(s.start for s in r[1:])),
        )
    table.rows[reference] = reference_us
    if mm is not None:
        from lazystack import LazyImageStack

        mm_stack = LazyImageStack(mm, "TYX")
        table.rows["tifffile.memmap in a stack (load_arrays)"] = _median_us(
            lambda t, yx: mm_stack.extract_patch(t, None, yx, patch), args
        )
    table.rows["full load: imread once, amortised"] = load_us / len(args) + _median_us(
        lambda t, yx: np.array(full[(t, *_region(yx, patch))], dtype=np.float32), args
    )
    table.notes.append(f"full load reads the whole file once in {load_us / 1e3:.0f} ms (amortised over {len(args)})")
    try:
        import zarr

        zstore = tifffile.imread(path, aszarr=True)
        zview = zarr.open_array(zstore, mode="r") if not hasattr(zstore, "keys") else zarr.open(zstore, mode="r")
        table.rows["zarr view of the TIFF (tifffile aszarr)"] = _median_us(
            lambda t, yx: zview[(t, *_region(yx, patch))], args[: cfg.n_slow]
        )
    except Exception as e:  # the reference is optional
        table.notes.append(f"tifffile aszarr view not measured: {type(e).__name__}: {e}")
    x = stack.data
    _dask_row(table, lambda t, yx: x[(t, 0, *_region(yx, patch))].compute(), args[: cfg.n_slow])
    if compressed:
        table.check("cold <= 1.3x touched-tile floor", "lazystack cold", TILE_FLOOR, 1.3)
    else:
        table.check("cold <= 2x tifffile.memmap", "lazystack cold", "tifffile.memmap", 2.0)
        table.check(
            "cold <= 2x tifffile.memmap in a stack",
            "lazystack cold",
            "tifffile.memmap in a stack (load_arrays)",
            2.0,
            informative=True,
        )
    _speedup_over_dask(table, TILE_FLOOR if compressed else "tifffile.memmap")
    del da
    return table


def _tile_floor(path: Path, patch: tuple[int, int]) -> Callable[[int, tuple[int, ...]], np.ndarray]:
    import imagecodecs
    import tifffile

    with tifffile.TiffFile(path) as tif:
        pages = tif.pages
        tl, tw = pages[0].tilelength, pages[0].tilewidth
        width = pages[0].imagewidth
        offsets = [p.dataoffsets for p in pages]
        counts = [p.databytecounts for p in pages]
    ntx = -(-width // tw)
    fd = os.open(path, os.O_RDONLY)
    py, px = patch

    def read(t: int, yx: tuple[int, ...]) -> np.ndarray:
        y, x = yx
        out = np.empty((py, px), np.float32)
        for ty in range(y // tl, (y + py - 1) // tl + 1):
            for tx in range(x // tw, (x + px - 1) // tw + 1):
                i = ty * ntx + tx
                raw = os.pread(fd, counts[t][i], offsets[t][i])
                tile = np.frombuffer(imagecodecs.zstd_decode(raw), np.uint16).reshape(tl, tw)
                y0, y1 = max(y, ty * tl), min(y + py, (ty + 1) * tl)
                x0, x1 = max(x, tx * tw), min(x + px, (tx + 1) * tw)
                out[y0 - y : y1 - y, x0 - x : x1 - x] = tile[y0 - ty * tl : y1 - ty * tl, x0 - tx * tw : x1 - tx * tw]
        return out

    return read


def scenario_tiff_tiled(cfg: Config) -> Table:
    """Random 64x64 patches from a tiled (256x256) zstd TIFF."""
    return _tiff(cfg, "tiff_tiled", compressed=True)


def scenario_tiff_raw(cfg: Config) -> Table:
    """Random 64x64 patches from an uncompressed TIFF (memory-mapped by lazystack)."""
    return _tiff(cfg, "tiff_raw", compressed=False)


# -- remote zarr over a local HTTP server ---------------------------------------------------------------
def serve(directory: str) -> None:
    """Serve ``directory`` on 127.0.0.1 (a free port, printed on stdout) until stdin closes."""
    from functools import partial

    server = LocalHTTPServer(("127.0.0.1", 0), partial(RangeHandler, directory=directory))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    print(server.server_address[1], flush=True)
    sys.stdin.read()
    server.shutdown()


def scenario_remote_http(cfg: Config) -> Table:
    """Random 64x64 patches from a zstd zarr v3 array served over HTTP on the loopback interface."""
    import http.client

    import dask.array as da
    import numcodecs
    import zarr

    shape, chunks, patch = (cfg.side2d // 2, cfg.side2d // 2), (256, 256), (64, 64)
    table = Table("remote_http", f"2D random 64x64 patches over HTTP (127.0.0.1), uint16 {shape[0]}x{shape[1]} zstd")
    data = _rng_image(shape)
    write_zarr(cfg.tmp / "remote.zarr", data, chunks, compressed=True)
    proc = subprocess.Popen(
        [sys.executable, "-c", f"import benchmarks.suite as s; s.serve({str(cfg.tmp)!r})"],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline())
        url = f"http://127.0.0.1:{port}/remote.zarr"
        stack, how, _ = _lazystack_zarr_stack(url, "YX", cfg.engine)
        table.lazystack_path = how
        n = max(cfg.n_slow, cfg.n // 3)
        regions = [(_region(p, patch),) for p in _positions(shape, patch, n)]

        def lazy(r: tuple[slice, ...]) -> Any:
            return stack.extract_patch(0, None, tuple(s.start for s in r), patch)

        np.testing.assert_array_equal(lazy(regions[0][0])[0], data[regions[0][0]])
        # The floor: one kept-alive stdlib connection, no per-request work beyond HTTP itself.
        # (requests.Session measured 0.5-0.7 ms more per 100 KB GET than this on the 2-core VM.)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        codec = numcodecs.Zstd()

        def get(path: str) -> bytes:
            conn.request("GET", path)
            response = conn.getresponse()
            body = response.read()
            if response.status != 200:
                raise RuntimeError(f"GET {path}: HTTP {response.status}")
            return body

        def floor(r: tuple[slice, ...]) -> np.ndarray:
            out = np.empty(patch, np.uint16)
            for cy in range(r[0].start // 256, (r[0].stop - 1) // 256 + 1):
                for cx in range(r[1].start // 256, (r[1].stop - 1) // 256 + 1):
                    raw = get(f"/remote.zarr/c/{cy}/{cx}")
                    chunk = np.frombuffer(codec.decode(raw), np.uint16).reshape(256, 256)
                    y0, y1 = max(r[0].start, cy * 256), min(r[0].stop, (cy + 1) * 256)
                    x0, x1 = max(r[1].start, cx * 256), min(r[1].stop, (cx + 1) * 256)
                    out[y0 - r[0].start : y1 - r[0].start, x0 - r[1].start : x1 - r[1].start] = chunk[
                        y0 - cy * 256 : y1 - cy * 256, x0 - cx * 256 : x1 - cx * 256
                    ]
            return out

        np.testing.assert_array_equal(floor(regions[0][0]), data[regions[0][0]])
        with _cache_size(0):
            floor_us = _cold_vs_floor(table, lazy, HTTP_FLOOR, floor, regions)
        conn.close()
        with _cache_size(2**31):
            for r in regions:
                lazy(*r)
            _warm_floors(table, data, "YX", regions, patch, lazy)
        z = zarr.open_array(url, mode="r")
        from lazystack.sources.zarr.engines import close_http_session_at_exit

        close_http_session_at_exit(z.store.fs)  # zarr's own store: its aiohttp session closes with it
        table.rows["zarr-python arr[...]"] = _median_us(lambda r: z[r], regions[: cfg.n_slow * 2])
        ts = _tensorstore_open({"driver": "http", "base_url": url})
        if ts is not None:
            table.rows["tensorstore"] = _median_us(lambda r: ts[r].read().result(), regions)
        x = da.from_zarr(z)
        _dask_row(table, lambda r: x[r].compute(), regions[: cfg.n_slow])
        table.rows[HTTP_FLOOR] = floor_us
        table.check("cold <= 1.3x touched-chunk floor", "lazystack cold", HTTP_FLOOR, 1.3)
        _speedup_over_dask(table, HTTP_FLOOR)
    finally:
        if proc.stdin is not None:
            proc.stdin.close()
        proc.wait(timeout=30)
        if proc.stdout is not None:
            proc.stdout.close()
    return table


# -- larger than the cache -----------------------------------------------------------------------------
def _status_mib(key: str) -> float | None:
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def ltc_worker(path: str, n: int, cache_bytes: int, engine: str | None) -> None:
    """Child process of the larger-than-cache scenario: print a JSON line with latency and peak RSS."""
    import resource

    import psutil

    os.environ["LAZYSTACK_CHUNK_CACHE_BYTES"] = str(cache_bytes)
    from lazystack.io.cache import get_chunk_cache, set_chunk_cache_size

    set_chunk_cache_size(cache_bytes)
    stack, how, _ = _lazystack_zarr_stack(path, "SYX", engine)
    with contextlib.suppress(OSError), open("/proc/self/clear_refs", "w", encoding="ascii") as f:
        f.write("5")  # reset the peak to the current RSS (Linux >= 4.0)
    base = psutil.Process().memory_info().rss / 2**20
    shape = stack.original_data_shape
    rng = np.random.default_rng(SEED)
    s = rng.integers(0, shape[0], n)
    y = rng.integers(0, shape[1] - 64, n)
    x = rng.integers(0, shape[2] - 64, n)
    times = np.empty(n)
    for i in range(n):
        t = time.perf_counter()
        stack.extract_patch(int(s[i]), None, (int(y[i]), int(x[i])), (64, 64))
        times[i] = time.perf_counter() - t
    peak = _status_mib("VmHWM") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    cache = get_chunk_cache().stats()
    print(
        json.dumps(
            {
                "us": float(np.median(times) * 1e6),
                "peak_rss_mib": peak,
                "rss_after_imports_mib": base,
                "rss_end_mib": psutil.Process().memory_info().rss / 2**20,
                "cache_nbytes": cache.nbytes,
                "cache_hits": cache.hits,
                "cache_misses": cache.misses,
                "how": how,
            }
        )
    )


def scenario_larger_than_cache(cfg: Config) -> Table:
    """Random patches from a compressed zarr many times larger than the chunk cache; peak RSS in a subprocess."""
    import zarr
    from zarr.codecs import ZstdCodec

    shape = cfg.ltc_shape
    raw_gib = np.prod(shape) * 2 / 2**30
    table = Table(
        "larger_than_cache",
        f"{cfg.ltc_patches} random 64x64 patches, zstd zarr uint16 {'x'.join(map(str, shape))} "
        f"({raw_gib:.2f} GiB decoded), cache {cfg.ltc_cache // 2**20} MiB",
    )
    path = cfg.tmp / "ltc.zarr"
    z = zarr.create_array(
        path, shape=shape, chunks=(1, 256, 256), dtype="uint16", compressors=ZstdCodec(level=1), overwrite=True
    )
    for i in range(shape[0]):
        z[i] = _rng_image(shape[1:], seed=SEED + i)
    stored = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    table.notes.append(f"stored (compressed) size {stored / 2**30:.2f} GiB")
    cmd = [
        sys.executable,
        "-c",
        f"import benchmarks.suite as s; s.ltc_worker({str(path)!r}, {cfg.ltc_patches}, {cfg.ltc_cache}, "
        f"{cfg.engine!r})",
    ]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=True, timeout=1800)
    res = json.loads(out.stdout.strip().splitlines()[-1])
    table.lazystack_path = res["how"]
    table.rows["lazystack (cache bounded)"] = res["us"]
    table.main = "lazystack (cache bounded)"
    limit = 600
    peak = res["peak_rss_mib"]
    table.checks.append(
        {"target": f"peak RSS MiB < {limit}", "ratio": round(peak, 1), "op": "<", "limit": limit, "pass": peak < limit}
    )
    table.notes.append(
        f"peak RSS {peak:.0f} MiB (after imports {res['rss_after_imports_mib']:.0f} MiB, end {res['rss_end_mib']:.0f} "
        f"MiB); cache holds {res['cache_nbytes'] / 2**20:.0f} MiB, {res['cache_hits']} hits / "
        f"{res['cache_misses']} misses"
    )
    table.extra = res  # type: ignore[attr-defined]
    return table


SCENARIOS: dict[str, Callable[[Config], Table]] = {
    "zarr2d_zstd": scenario_zarr2d_zstd,
    "zarr2d_raw": scenario_zarr2d_raw,
    "zarr3d_zstd": scenario_zarr3d_zstd,
    "zarr3d_raw": scenario_zarr3d_raw,
    "zarr_sharded": scenario_zarr_sharded,
    "tiff_tiled": scenario_tiff_tiled,
    "tiff_raw": scenario_tiff_raw,
    "batch64": scenario_batch64,
    "remote_http": scenario_remote_http,
    "larger_than_cache": scenario_larger_than_cache,
}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the suite; print one table per scenario; write and return the results (JSON-able).

    Parameters
    ----------
    argv : list of str, optional
        Command-line arguments (default ``sys.argv[1:]``).

    Returns
    -------
    dict
        ``{"machine": ..., "config": ..., "scenarios": {name: table}}``.
    """
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small data and fewer patches (< 2 minutes)")
    parser.add_argument("--scenario", action="append", choices=list(SCENARIOS), help="run only these (repeatable)")
    parser.add_argument(
        "--json", default=str(DEFAULT_JSON), help=f"where to write the results (default {DEFAULT_JSON})"
    )
    parser.add_argument("--engine", default=None, help="zarr engine: auto, direct, tensorstore, zarr")
    parser.add_argument("--list", action="store_true", help="list the scenarios and exit")
    args = parser.parse_args(argv)
    if args.list:
        for name, fn in SCENARIOS.items():
            print(f"{name:<20}{(fn.__doc__ or '').strip()}")
        return {}
    if args.engine is not None:
        from lazystack.sources.zarr.engines import set_zarr_engine

        set_zarr_engine(args.engine)
    names = args.scenario or list(SCENARIOS)
    results: dict[str, Any] = {
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform()},
        "config": {"quick": args.quick, "engine": args.engine or os.environ.get("LAZYSTACK_ZARR_ENGINE", "auto")},
        "scenarios": {},
    }
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="lazystack-bench-") as tmp:
        cfg = Config.make(args.quick, args.engine, Path(tmp))
        for name in names:
            t0 = time.perf_counter()
            try:
                table = SCENARIOS[name](cfg)
            except Exception as e:  # one broken scenario must not hide the others
                table = Table(name, (SCENARIOS[name].__doc__ or "").strip())
                table.skipped = f"failed: {type(e).__name__}: {e}"
            d = table.as_dict()
            d["seconds"] = round(time.perf_counter() - t0, 1)
            if hasattr(table, "extra"):
                d["details"] = table.extra
            results["scenarios"][name] = d
            print(table.render(), flush=True)
            print(flush=True)
    results["seconds"] = round(time.perf_counter() - t_start, 1)
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"total {results['seconds']} s; results written to {out}")
    print(_summary(results))
    return results


def _summary(results: dict[str, Any]) -> str:
    """One line per missed target, after the count of targets met (informative checks left out)."""
    targets = [
        (name, c) for name, d in results["scenarios"].items() for c in d.get("targets", []) if not c.get("informative")
    ]
    missed = [(name, c) for name, c in targets if not c["pass"]]
    lines = [f"targets met: {len(targets) - len(missed)} of {len(targets)}"]
    lines += [f"  missed: {name}: {c['target']}: {c['ratio']} ({c['op']} {c['limit']})" for name, c in missed]
    return "\n".join(lines)


if __name__ == "__main__":  # pragma: no cover
    main()
