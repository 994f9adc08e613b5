"""Benchmark: patches/s through a real ``torch.utils.data.DataLoader``, lazystack against its references (issue 20).

Four data cells, each a uint16 array of about ``--mib`` MiB (smooth data plus
noise) written once into ``--data-dir`` and reused while its parameters match:

* ``zarr2d``: Zarr v3 ``TYX`` (T x 2048 x 2048), chunks 1x256x256, zstd; random 64x64 patches;
* ``zarr3d``: Zarr v3 ``TZYX`` (T x 64 x 1024 x 1024), chunks 1x8x128x128, zstd; random 16x64x64 patches;
* ``tiff2d``: tiled TIFF ``TYX`` (T pages of 2048 x 2048), 256x256 zstd tiles; 64x64 patches;
* ``tiff3d``: tiled TIFF ``TZYX`` (T x 64 pages of 1024 x 1024), 256x256 zstd tiles; 16x64x64 patches.

One map-style Dataset protocol (batch 32, ``__getitems__``: one call per
batch, ``float32`` ``C(Z)YX`` items), only the reader swapped:

* ``lazystack``: [`lazystack.torch.PatchDataset`] over ``load_zarrs`` /
  ``load_tiffs`` with [`lazystack.RandomSampler`], chunk cache at its default;
* ``lazystack cache=N MiB``: the same with a chunk cache smaller than the data
  (``--small-cache-mib``; the issue's realistic case);
* ``tensorstore`` (Zarr): the batch's regions read with one tensorstore future
  each, all started before the first is awaited (no cache pool);
* ``tifffile+zarr`` (TIFF): the reference for TIFF is zarr-python over
  ``tifffile.imread(path, aszarr=True)``, because tensorstore's ``tiff`` driver
  is experimental (uint8 only in its documentation) and refuses a multi-page
  file without a page specifier;
* ``zarr-python`` (Zarr): ``zarr.Array`` slicing, one region per patch;
* ``floor`` (Zarr): the decode floor, a reference line rather than a reader
  to beat: for each patch, the files of exactly the chunks it touches are
  read and decoded with zarr's codec (numcodecs ``Zstd``, what zarr's
  ``ZstdCodec`` runs) and the overlaps copied into one ``float32`` patch,
  the patches of a batch spread over a thread pool of ``os.cpu_count()``
  threads; no cache, no chunk re-used, no other copy. It is about the best
  any reader can do on uniform random patches without re-using chunks:
  ``lazystack / floor`` and ``tensorstore / floor`` say how far each is from
  it (a reader can beat it only by re-using chunks: a cache, chunk-local
  sampling);
* ``lazystack chunk-local``: the opt-in chunk-local sampling, a *different*
  (less diverse) sampling, not a faster reader of the same patches:
  [`lazystack.torch.ChunkLocalSampler`] over the same ``RandomSampler``
  (``per_chunk=8``: groups of 8 consecutive indices drawn from the chunks
  their anchor touches), read in order by an ``EpochSampler``, default chunk
  cache. It gets no target lines; its ratio line against the reference is
  labelled as such, and the diversity of its batches is printed beside it:
  distinct chunks touched per batch and distinct places per batch (a place:
  stack, sample and the chunk holding the patch's corner), mean over the
  rounds' batches, against the plain ``RandomSampler``'s. Its first batch is
  checked against numpy like the others (on the specs it reports);
* ``lazystack@baseline`` (``--baseline PATH``): ``lazystack`` imported from
  another checkout (e.g. ``git worktree add --detach ../base main``), run
  interleaved with the current code in the same rounds. It draws its own
  specs with its own ``RandomSampler`` (the same distribution; a different
  draw when the sampler changed between the two), and its first batch is
  checked against the specs it reports.

``--readers`` keeps some of them (``lazystack`` and the format's reference
always run: the targets need them).

Every reader sees the same specs (the parent's ``RandomSampler``, seed 11,
one epoch per round), ``lazystack@baseline`` and ``lazystack chunk-local``
excepted. Before each timed
round, each reader's runner reads the chunk files (Zarr) or tiles (TIFF) its
round touches (``--no-warm`` to skip), so that every reader finds them in the
OS page cache: otherwise the reader that comes first in a round pays the
disk reads for the others (an epoch read twice in a row ran at 490, then
1,265 patches/s), and with three rounds in alternating order ``lazystack``
came first in two of them (until 2026-12-07 TIFF cells were not warmed, and the
first reader of a 0-worker TIFF round read part of its tiles from disk).
Configurations: 0 workers, 2 workers forked, 2 workers
spawned (``--configs``). Each (cell, configuration, reader) runs in its own
spawned runner process that stays alive over the rounds, so a reader never
inherits another reader's threads, caches or memory; within a round the
readers take turns (order alternating between rounds). A round times
``--batches`` batch intervals from the first batch's arrival; the time to the
first batch (DataLoader creation to first batch: worker start-up, imports,
opening) is reported apart.

Reported per reader: patches/s (median over rounds), p50 / p99 of the batch
intervals (pooled over rounds; with workers they include the hand-off to the
main process), the *in-worker* p50 / p99 (the time of each batch's
``__getitems__`` call where it ran, carried back in the batch: the reader's
own time; each process's first batch of a round, which opens the stores, left
out; pooled over rounds), time to the first batch (median), and for
worker runs each worker's RSS at its start and its peak RSS (``VmHWM`` of
``/proc/self/status``, read by the collate function in the worker at every
batch; the value with the last batch is the peak). Then the issue's targets as
``PASS`` / ``MISS`` lines: lazystack >= 1.5x the reference's patches/s; p99 <=
2x p50; spawn's first batch <= 3x fork's; ``import lazystack`` <= 1.5x
``import zarr, tifffile`` (``benchmarks.bench_import``: fresh interpreters,
interleaved, median); peak RSS per worker <= its chunk-cache bound + 200 MiB
(``lazystack@baseline`` gets no target lines, only ratios). Ratio lines
follow each table: every ``lazystack*`` reader over every other reader,
every reference over ``floor``, and ``lazystack`` over ``lazystack@baseline``.
The first batch of every reader in every round is checked against numpy
slicing of zarr-python's full-chunk read (Zarr) or of ``tifffile.imread`` of
the touched pages (TIFF).

Run ``python -m benchmarks.bench_loader`` (``--mib 2048`` for the issue's
2 GiB data, ``--quick`` for a small smoke run). Results go to
``benchmarks/results/loader.json`` (``--json PATH``).
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import multiprocessing
import os
import shutil
import statistics
import sys
import tempfile
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

BATCH = 32
SEED = 11
MIB = 2**20
RSS_SLACK_MIB = 200
FORMAT_VERSION = 1

# cell -> (format, axes, frame shape (without T), chunks (without T), patch)
CELLS: dict[str, tuple[str, str, tuple[int, ...], tuple[int, ...], tuple[int, ...]]] = {
    "zarr2d": ("zarr", "TYX", (2048, 2048), (256, 256), (64, 64)),
    "zarr3d": ("zarr", "TZYX", (64, 1024, 1024), (8, 128, 128), (16, 64, 64)),
    "tiff2d": ("tiff", "TYX", (2048, 2048), (256, 256), (64, 64)),
    "tiff3d": ("tiff", "TZYX", (64, 1024, 1024), (256, 256), (16, 64, 64)),
}
REFERENCE = {"zarr": "tensorstore", "tiff": "tifffile+zarr"}
CHUNK_LOCAL = "lazystack chunk-local"
PER_CHUNK = 8


# -- data ------------------------------------------------------------------------------------------
def _frames(frame: tuple[int, ...], t: int) -> Any:
    """Yield ``t`` frames (smooth data plus noise, so zstd has work to do)."""
    grids = np.ogrid[tuple(slice(0, n) for n in frame)]
    base = np.zeros(frame, np.int64)
    for i, g in enumerate(grids):
        base = base + g // (3 + 2 * i)
    base = (base % 4096).astype(np.uint16)
    rng = np.random.default_rng(0)
    for i in range(t):
        yield base + rng.integers(0, 64, frame, dtype=np.uint16) + np.uint16(i)


def ensure_data(cell: str, mib: int, data_dir: Path) -> tuple[Path, tuple[int, ...]]:
    """Write the cell's file into ``data_dir`` unless a matching one is there; return its path and shape.

    A file is reused when its ``meta.json`` (written last) matches the cell's
    format, shape, chunks and codec.
    """
    fmt, axes, frame, chunks, _ = CELLS[cell]
    t = max(1, mib * MIB // (int(np.prod(frame)) * 2))
    shape = (t, *frame)
    folder = data_dir / f"{cell}-{mib}mib"
    path = folder / ("data.zarr" if fmt == "zarr" else "data.tif")
    meta = {"version": FORMAT_VERSION, "cell": cell, "shape": list(shape), "chunks": list(chunks), "codec": "zstd"}
    meta_path = folder / "meta.json"
    if meta_path.exists() and path.exists():
        try:
            if json.loads(meta_path.read_text()) == meta:
                return path, shape
        except ValueError:
            pass
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    start = time.perf_counter()
    if fmt == "zarr":
        import zarr
        from zarr.codecs import ZstdCodec

        arr = zarr.create_array(
            str(path), shape=shape, dtype="uint16", chunks=(1, *chunks), compressors=ZstdCodec(level=3)
        )
        for i, f in enumerate(_frames(frame, t)):
            arr[i] = f
    else:
        import tifffile

        def tiles() -> Any:
            for f in _frames(frame, t):
                for page in f.reshape(-1, *frame[-2:]):
                    for y in range(0, frame[-2], chunks[0]):
                        for x in range(0, frame[-1], chunks[1]):
                            yield page[y : y + chunks[0], x : x + chunks[1]]

        tifffile.imwrite(
            path,
            tiles(),
            shape=shape,
            dtype="uint16",
            photometric="minisblack",
            bigtiff=True,
            tile=chunks,
            compression="zstd",
            compressionargs={"level": 3},
            metadata={"axes": axes},
        )
    meta_path.write_text(json.dumps(meta))
    print(f"wrote {path} {shape} in {time.perf_counter() - start:.0f} s", flush=True)
    return path, shape


def _specs(cell: str, path: Path, epoch: int, n: int) -> list[tuple[int, tuple[int, ...], tuple[int, ...]]]:
    """``(sample, coords, patch size)`` of the epoch's first ``n`` indices (lazystack's ``RandomSampler``)."""
    from lazystack import RandomSampler

    stacks = _lazystack_stacks(cell, path)
    sampler = RandomSampler(stacks, CELLS[cell][4], n, seed=SEED)
    return [(s.sample, tuple(s.coords), tuple(s.patch_size)) for s in (sampler.spec(i, epoch) for i in range(n))]


def _chunk_local_sampler(cell: str, stacks: Any, length: int) -> Any:
    """The opt-in chunk-local sampler of the ``lazystack chunk-local`` reader (over the plain ``RandomSampler``)."""
    from lazystack import RandomSampler
    from lazystack.torch import ChunkLocalSampler

    base = RandomSampler(stacks, CELLS[cell][4], length, seed=SEED)
    return ChunkLocalSampler(base, stacks, per_chunk=PER_CHUNK, seed=SEED)


def batch_diversity(cell: str, specs: list[Any]) -> dict[str, float]:
    """Mean over the batches of ``specs`` (``(sample, coords, size)``): distinct chunks touched, distinct places.

    A place is the sample and the chunk (tile) that holds the patch's corner; the chunks are the cell's
    storage chunks (one page deep for a TIFF).
    """
    chunks = CELLS[cell][3]
    chunks = (1,) * (len(CELLS[cell][4]) - len(chunks)) + tuple(chunks)
    touched, places = [], []
    for start in range(0, len(specs) - BATCH + 1, BATCH):
        batch = specs[start : start + BATCH]
        seen: set[tuple[int, ...]] = set()
        for sample, coords, size in batch:
            ranges = [range(c // n, (c + p - 1) // n + 1) for c, p, n in zip(coords, size, chunks, strict=True)]
            seen.update((sample, *idx) for idx in itertools.product(*ranges))
        touched.append(len(seen))
        places.append(
            len({(sample, *(c // n for c, n in zip(coords, chunks, strict=True))) for sample, coords, _ in batch})
        )
    return {"chunks_per_batch": statistics.mean(touched), "places_per_batch": statistics.mean(places)}


def _lazystack_stacks(cell: str, path: Path) -> Any:
    from lazystack import load_tiffs, load_zarrs

    fmt, axes = CELLS[cell][:2]
    return load_zarrs(str(path), axes) if fmt == "zarr" else load_tiffs(str(path), axes)


def expected_batch(cell: str, path: Path, specs: list[Any]) -> np.ndarray:
    """The batch the specs should give, by numpy slicing of the format library's own full reads."""
    fmt, _, frame, _, _ = CELLS[cell]
    out = []
    if fmt == "zarr":
        import zarr

        arr = zarr.open_array(str(path), mode="r")
        chunk = arr.chunks[1:]
        for sample, coords, size in specs:
            # the whole chunks the patch touches, read by zarr-python, then sliced in numpy
            lo = [c // n * n for c, n in zip(coords, chunk, strict=True)]
            hi = [-(-(c + s) // n) * n for c, s, n in zip(coords, size, chunk, strict=True)]
            block = np.asarray(arr[(sample, *(slice(a, b) for a, b in zip(lo, hi, strict=True)))])
            out.append(block[tuple(slice(c - a, c - a + s) for c, a, s in zip(coords, lo, size, strict=True))])
    else:
        import tifffile

        pages: dict[int, np.ndarray] = {}
        per_sample = int(np.prod(frame[:-2]))
        for sample, coords, size in specs:
            z0, nz = (coords[0], size[0]) if len(coords) == 3 else (0, 1)
            planes = []
            for z in range(z0, z0 + nz):
                key = sample * per_sample + z
                if key not in pages:
                    pages[key] = tifffile.imread(path, key=key)
                planes.append(pages[key][coords[-2] : coords[-2] + size[-2], coords[-1] : coords[-1] + size[-1]])
            out.append(np.stack(planes) if len(coords) == 3 else planes[0])
    return np.stack(out).astype(np.float32)[:, None]


# -- datasets (built in the runner processes) ----------------------------------------------------------
class RegionDataset:
    """A reference dataset: the parent's specs, an array opened lazily in each process."""

    def __init__(self, kind: str, path: str, specs: list[Any]) -> None:
        self.kind = kind
        self.path = path
        self.specs = specs
        self._array: Any = None

    def __len__(self) -> int:
        return len(self.specs)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_array": None}

    def _open(self) -> Any:
        if self.kind == "floor":
            return _Floor(self.path)
        if self.kind == "tensorstore":
            import tensorstore as ts

            spec = {"driver": "zarr3", "kvstore": {"driver": "file", "path": self.path}}
            return ts.open(spec, read=True).result()
        import zarr

        if self.kind == "tifffile+zarr":
            import tifffile

            return zarr.open_array(tifffile.imread(self.path, aszarr=True), mode="r")
        return zarr.open_array(self.path, mode="r")

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.__getitems__([index])[0]

    def __getitems__(self, indices: list[int]) -> list[dict[str, Any]]:
        import torch

        if self._array is None:
            self._array = self._open()
        regions = []
        for i in indices:
            sample, coords, size = self.specs[i]
            regions.append((sample, *(slice(c, c + s) for c, s in zip(coords, size, strict=True))))
        if self.kind == "floor":
            return [{"input": torch.from_numpy(a)} for a in self._array.read([self.specs[i] for i in indices])]
        if self.kind == "tensorstore":
            futures = [self._array[r].read() for r in regions]
            arrays = [f.result() for f in futures]
        else:
            arrays = [self._array[r] for r in regions]
        return [{"input": torch.from_numpy(a.astype(np.float32)[None])} for a in arrays]


class _Floor:
    """The decode floor of a Zarr v3 array (bytes + zstd codecs): each patch's touched chunks, read and decoded."""

    def __init__(self, path: str) -> None:
        import zarr
        from numcodecs import Zstd

        arr = zarr.open_array(path, mode="r")
        meta = arr.metadata
        names = [type(c).__name__ for c in getattr(meta, "codecs", ())]
        if names != ["BytesCodec", "ZstdCodec"]:
            msg = f"the floor reads Zarr v3 arrays with codecs [BytesCodec, ZstdCodec], {path!r} has {names}"
            raise ValueError(msg)
        self.path = path
        self.meta = meta
        self.chunks = tuple(int(n) for n in arr.chunks)
        self.dtype = np.dtype(arr.dtype).newbyteorder("<")
        self.codec = Zstd()
        self.pool = ThreadPoolExecutor(os.cpu_count() or 1)

    def read(self, specs: list[Any]) -> list[np.ndarray]:
        """The ``float32`` ``1(Z)YX`` patches of ``(sample, coords, size)`` specs, one thread task per patch."""
        return list(self.pool.map(self._patch, specs))

    def _patch(self, spec: Any) -> np.ndarray:
        sample, coords, size = spec
        out = np.empty((1, *size), np.float32)
        spatial = self.chunks[1:]
        ranges = [range(c // n, (c + s - 1) // n + 1) for c, s, n in zip(coords, size, spatial, strict=True)]
        for idx in itertools.product(*ranges):
            key = self.meta.encode_chunk_key((sample // self.chunks[0], *idx))
            with open(os.path.join(self.path, key), "rb") as f:
                raw = f.read()
            chunk = np.frombuffer(self.codec.decode(raw), self.dtype).reshape(self.chunks)[sample % self.chunks[0]]
            dst, src = [], []
            for i, c, s, n in zip(idx, coords, size, spatial, strict=True):
                lo, hi = max(c, i * n), min(c + s, (i + 1) * n)
                dst.append(slice(lo - c, hi - c))
                src.append(slice(lo - i * n, hi - i * n))
            out[(0, *dst)] = chunk[tuple(src)]  # the one copy, converting to float32
        return out


def warm_page_cache(path: str, specs: list[Any]) -> int:
    """Read the files of the chunks a Zarr v3 array's specs touch (into the OS page cache); their bytes.

    Run by each reader's runner before each timed round, for the specs that
    reader will read: a chunk file not read for a while costs a disk read,
    and without this the reader that comes first in a round pays it for the
    readers after it (measured: an epoch read twice in a row ran at 490
    then 1,265 patches/s).
    """
    meta = json.loads((Path(path) / "zarr.json").read_text())
    chunks = meta["chunk_grid"]["configuration"]["chunk_shape"]
    encoding = meta.get("chunk_key_encoding", {"name": "default"})
    sep = encoding.get("configuration", {}).get("separator", "/" if encoding["name"] == "default" else ".")
    prefix = "c" + sep if encoding["name"] == "default" else ""
    done, total = set(), 0
    for sample, coords, size in specs:
        ranges = [range(c // n, (c + k - 1) // n + 1) for c, k, n in zip(coords, size, chunks[1:], strict=True)]
        for idx in itertools.product(*ranges):
            key = prefix + sep.join(str(i) for i in (sample // chunks[0], *idx))
            if key not in done:
                done.add(key)
                with contextlib.suppress(FileNotFoundError), open(os.path.join(path, key), "rb") as f:
                    total += len(f.read())
    return total


def warm_tiff_tiles(path: str, axes: str, specs: list[Any]) -> int:
    """Read the tiles a tiled TIFF's specs touch (into the OS page cache); their bytes.

    The TIFF twin of ``warm_page_cache``: one page per plane in ``T(Z)``
    order, tiles located through tifffile's public page attributes.
    """
    import tifffile

    total = 0
    with tifffile.TiffFile(path) as tif, open(path, "rb") as f:
        planes = tif.series[0].shape[1] if axes == "TZYX" else 1
        done: set[tuple[int, int]] = set()
        for sample, coords, size in specs:
            z0, nz = (coords[0], size[0]) if axes == "TZYX" else (0, 1)
            (y, x), (h, w) = coords[-2:], size[-2:]
            for z in range(z0, z0 + nz):
                page = tif.pages[sample * planes + z]
                across = -(-page.imagewidth // page.tilewidth)
                for ty in range(y // page.tilelength, (y + h - 1) // page.tilelength + 1):
                    for tx in range(x // page.tilewidth, (x + w - 1) // page.tilewidth + 1):
                        key = (page.index, ty * across + tx)
                        if key not in done:
                            done.add(key)
                            f.seek(page.dataoffsets[key[1]])
                            total += len(f.read(page.databytecounts[key[1]]))
    return total


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return -1


_START_RSS_KIB = -1


def worker_init(worker_id: int) -> None:
    """Record the worker's RSS before it reads anything."""
    global _START_RSS_KIB
    _START_RSS_KIB = _status_kib("VmRSS")


_LAST_READ_NS = -1


class TimedDataset:
    """A dataset's ``__getitems__``, timed where it runs (a worker, or the main process with 0 workers).

    The time of the last call is kept in this process (``_LAST_READ_NS``) and
    put into the batch by [`collate_with_rss`][collate_with_rss], which the
    DataLoader calls in the same process right after it: the reader's own
    time per batch, without the hand-off to the main process that the
    batch intervals include.
    """

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: Any) -> Any:
        return self.__getitems__([index])[0]

    def __getitems__(self, indices: list[Any]) -> list[Any]:
        global _LAST_READ_NS
        start = time.perf_counter_ns()
        items: list[Any] = self.dataset.__getitems__(indices)
        _LAST_READ_NS = time.perf_counter_ns() - start
        return items


def collate_with_rss(items: list[dict[str, Any]]) -> dict[str, Any]:
    """``default_collate`` plus the worker's id, start RSS and peak RSS (``VmHWM``, KiB), and the read's time (ns)."""
    import torch
    from torch.utils.data import default_collate, get_worker_info

    batch: dict[str, Any] = default_collate(items)
    info = get_worker_info()
    start = _START_RSS_KIB if info is not None else -1
    batch["rss"] = torch.tensor([-1 if info is None else info.id, start, _status_kib("VmHWM")], dtype=torch.int64)
    batch["read_ns"] = torch.tensor([_LAST_READ_NS], dtype=torch.int64)
    return batch


def _runner(conn: Any, cfg: dict[str, Any]) -> None:
    """A runner process: build one reader's dataset, then time one epoch per request."""
    try:
        if cfg["cache_mib"] is not None:  # before lazystack is imported; spawned workers inherit it
            os.environ["LAZYSTACK_CHUNK_CACHE_BYTES"] = str(cfg["cache_mib"] * MIB)
        import torch
        from torch.utils.data import DataLoader

        torch.set_num_threads(1)
        if cfg.get("lazystack_path"):  # lazystack@baseline: that checkout's package first on sys.path
            _use_lazystack_from(cfg["lazystack_path"])
        bound_mib = None
        lazystack_file = None
        if cfg["reader"].startswith("lazystack"):
            import lazystack
            from lazystack import RandomSampler, get_chunk_cache
            from lazystack.torch import EpochSampler, PatchDataset

            stacks = _lazystack_stacks(cfg["cell"], Path(cfg["path"]))
            if cfg["reader"] == CHUNK_LOCAL:
                sampler: Any = _chunk_local_sampler(cfg["cell"], stacks, cfg["length"])
            else:
                sampler = RandomSampler(stacks, CELLS[cfg["cell"]][4], cfg["length"], seed=SEED)
            dataset: Any = PatchDataset(stacks, sampler)
            bound_mib = get_chunk_cache().max_bytes / MIB
            lazystack_file = os.path.realpath(lazystack.__file__)
        else:
            dataset = RegionDataset(cfg["reader"], cfg["path"], [])
        conn.send(("ready", (bound_mib, lazystack_file)))
        while True:
            msg = conn.recv()
            if msg is None:
                break
            epoch, specs = msg
            if isinstance(dataset, RegionDataset):
                dataset.specs = specs
                index_sampler: Any = None
            else:
                index_sampler = EpochSampler(dataset, epoch=epoch)
            if cfg.get("warm"):
                if isinstance(dataset, RegionDataset):
                    mine = specs
                else:
                    mine = [(s.sample, s.coords, s.patch_size) for s in map(dataset.spec, index_sampler)]
                fmt, axes = CELLS[cfg["cell"]][:2]
                if fmt == "zarr":
                    warm_page_cache(cfg["path"], mine)
                else:
                    warm_tiff_tiles(cfg["path"], axes, mine)
            workers = cfg["workers"]
            start = time.perf_counter()
            loader = DataLoader(
                TimedDataset(dataset),
                batch_size=BATCH,
                sampler=index_sampler,
                num_workers=workers,
                multiprocessing_context=cfg["context"] if workers else None,
                prefetch_factor=2 if workers else None,
                collate_fn=collate_with_rss,
                worker_init_fn=worker_init if workers else None,
            )
            stamps, rss, first, reads = [], {}, None, []
            for batch in loader:
                stamps.append(time.perf_counter())
                if first is None:
                    first = batch["input"].numpy()
                wid, start_kib, peak_kib = (int(v) for v in batch["rss"])
                if wid in rss:  # a process's first read opens the stores: a one-off, left out
                    reads.append(int(batch["read_ns"][0]))
                rss[wid] = (start_kib, peak_kib)
            del loader
            intervals = np.diff(stamps)
            conn.send(
                (
                    "ok",
                    {
                        "first_s": stamps[0] - start,
                        "patches_per_s": BATCH * len(intervals) / (stamps[-1] - stamps[0]),
                        "intervals_ms": (1e3 * intervals).tolist(),
                        "reads_ms": [ns / 1e6 for ns in reads],
                        "rss_kib": rss,
                        "process_peak_kib": _status_kib("VmHWM"),
                        "first": first,
                        "first_specs": None
                        if index_sampler is None
                        else [
                            (s.sample, tuple(s.coords), tuple(s.patch_size))
                            for s in (dataset.spec((epoch, i)) for i in range(BATCH))
                        ],
                    },
                )
            )
    except BaseException:  # reported to the parent, which raises
        conn.send(("error", traceback.format_exc()))


def _use_lazystack_from(checkout: str) -> None:
    """Put ``checkout``'s ``lazystack`` package (only it, not its ``benchmarks``) first on ``sys.path``.

    Spawned DataLoader workers get this process's ``sys.path``; forked ones its modules.
    """
    package = Path(checkout).resolve() / "lazystack"
    if not (package / "__init__.py").is_file():
        msg = f"--baseline {checkout!r}: no lazystack package at {package}"
        raise FileNotFoundError(msg)
    if "lazystack" in sys.modules:
        msg = "lazystack was imported before the baseline could be put first on sys.path"
        raise RuntimeError(msg)
    shim = tempfile.mkdtemp(prefix="lazystack-baseline-")
    os.symlink(package, os.path.join(shim, "lazystack"))
    sys.path.insert(0, shim)


class Runner:
    """A spawned runner process and its pipe."""

    def __init__(self, cfg: dict[str, Any]) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=_runner, args=(child, cfg), name=f"bench-{cfg['reader']}")
        self.process.start()
        child.close()
        self.cfg = cfg
        self.bound_mib: float | None = None
        self.lazystack_file: str | None = None

    def ready(self) -> None:
        """Wait until the dataset is built."""
        self.bound_mib, self.lazystack_file = self._reply()

    def run(self, epoch: int, specs: list[Any]) -> dict[str, Any]:
        """One timed epoch."""
        self.conn.send((epoch, specs))
        result: dict[str, Any] = self._reply()
        return result

    def _reply(self) -> Any:
        status, value = self.conn.recv()
        if status == "error":
            self.close()
            msg = f"runner {self.cfg['reader']} ({self.cfg['cell']}, {self.cfg['label']}) failed:\n{value}"
            raise RuntimeError(msg)
        return value

    def close(self) -> None:
        """Stop the process."""
        with contextlib.suppress(OSError):
            self.conn.send(None)
        self.process.join(timeout=30)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()


# -- the run -----------------------------------------------------------------------------------------
def _parse_config(text: str) -> tuple[str, int, str | None]:
    if text == "0":
        return "0 workers", 0, None
    n, _, context = text.partition(":")
    if not n.isdigit() or context not in ("fork", "spawn", "forkserver"):
        msg = f"--configs entry {text!r}: expected 0 or N:fork, N:spawn, N:forkserver"
        raise argparse.ArgumentTypeError(msg)
    return f"{n} workers {context}", int(n), context


def _target(results: dict[str, Any], name: str, value: float | None, limit: float, op: str, detail: str) -> None:
    if value is None:
        line = f"n/a   {name}: {detail}"
        ok = None
    else:
        ok = value >= limit if op == ">=" else value <= limit
        line = f"{'PASS' if ok else 'MISS'}  {name}: {value:.2f} (target {op} {limit:g}) {detail}".rstrip()
    results["targets"].append({"target": name, "value": value, "limit": limit, "op": op, "pass": ok, "detail": detail})
    print(line)


BASELINE = "lazystack@baseline"


def _readers(
    fmt: str, small_cache_mib: int, baseline: str | None = None, keep: list[str] | None = None
) -> dict[str, int | None]:
    """Reader name -> its chunk cache in MiB (None: the default), those of ``keep`` (plus lazystack, the reference)."""
    readers: dict[str, int | None] = {"lazystack": None, f"lazystack cache={small_cache_mib} MiB": small_cache_mib}
    readers[CHUNK_LOCAL] = None
    if baseline:
        readers[BASELINE] = None
    readers[REFERENCE[fmt]] = None
    if fmt == "zarr":
        readers["zarr-python"] = None
        readers["floor"] = None
    if keep is not None:
        wanted = {"lazystack", REFERENCE[fmt], *keep}
        if "chunk-local" in wanted:
            wanted.add(CHUNK_LOCAL)
        readers = {
            n: v for n, v in readers.items() if n in wanted or (n.startswith("lazystack cache=") and "cache" in wanted)
        }
    return readers


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Build (or reuse) the data, run the interleaved rounds, print the tables and targets.

    Parameters
    ----------
    argv : list of str, optional
        Command-line arguments (see ``--help``).

    Returns
    -------
    dict
        Everything printed, JSON-able (also written to ``--json``).
    """
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n", 1)[0])
    parser.add_argument("--mib", type=int, default=None, help="size of each array in MiB (default 256; issue: 2048)")
    parser.add_argument(
        "--batches", type=int, default=None, help="timed batch intervals per round, 2-D patches (default 40)"
    )
    parser.add_argument(
        "--batches-3d", type=int, default=None, help="timed batch intervals per round, 3-D patches (default 15)"
    )
    parser.add_argument("--rounds", type=int, default=None, help="rounds per configuration (default 3)")
    parser.add_argument("--cells", nargs="+", choices=list(CELLS), default=list(CELLS))
    parser.add_argument(
        "--configs",
        nargs="+",
        type=_parse_config,
        default=None,
        help="DataLoader configurations: 0 and/or N:fork, N:spawn, N:forkserver (default 0 2:fork 2:spawn)",
    )
    parser.add_argument(
        "--small-cache-mib", type=int, default=None, help="the smaller lazystack chunk cache (default mib // 8, <= 64)"
    )
    parser.add_argument("--import-rounds", type=int, default=None, help="fresh interpreters per import statement")
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "lazystack-bench" / "loader",
        help="where the data is written once and reused (default ~/.cache/lazystack-bench/loader)",
    )
    parser.add_argument(
        "--json",
        default=str(Path(__file__).parent / "results" / "loader.json"),
        help="where the results go (default benchmarks/results/loader.json; '' for nowhere)",
    )
    parser.add_argument(
        "--baseline",
        default=None,
        metavar="PATH",
        help=f"a lazystack checkout (e.g. a git worktree of main): adds the reader {BASELINE!r} imported from there",
    )
    parser.add_argument(
        "--readers",
        nargs="+",
        default=None,
        help="readers to run besides lazystack and the format's reference: cache (the small-cache lazystack), "
        f"chunk-local (opt-in chunk-local sampling), {BASELINE}, zarr-python, floor (default: all)",
    )
    parser.add_argument(
        "--no-warm",
        dest="warm",
        action="store_false",
        help="do not read each round's touched chunks or tiles before timing a reader (see warm_page_cache)",
    )
    parser.add_argument("--quick", action="store_true", help="16 MiB arrays, 4 batches, 1 round, 3 import rounds")
    parser.add_argument("--write-only", action="store_true", help="write (or check) the data and stop")
    args = parser.parse_args(argv)
    quick = args.quick
    mib = args.mib if args.mib is not None else (16 if quick else 256)
    batches = args.batches if args.batches is not None else (4 if quick else 40)
    batches_3d = args.batches_3d if args.batches_3d is not None else min(batches, 15)
    rounds = args.rounds if args.rounds is not None else (1 if quick else 3)
    configs = args.configs or [_parse_config(c) for c in ("0", "2:fork", "2:spawn")]
    small = args.small_cache_mib if args.small_cache_mib is not None else max(1, min(64, mib // 8))
    import_rounds = args.import_rounds if args.import_rounds is not None else (3 if quick else 15)
    wall = time.perf_counter()
    if args.write_only:
        for cell in args.cells:
            print(cell, *ensure_data(cell, mib, args.data_dir), flush=True)
        return {}

    import lazystack

    results: dict[str, Any] = {
        "mib": mib,
        "batch": BATCH,
        "batches": {"2d": batches, "3d": batches_3d},
        "rounds": rounds,
        "small_cache_mib": small,
        "default_cache_mib": lazystack.get_chunk_cache().max_bytes / MIB,
        "cpu_count": os.cpu_count(),
        "reference_note": "TIFF reference: zarr-python over tifffile.imread(aszarr=True) "
        "(tensorstore's tiff driver is experimental, uint8 only, no multi-page files)",
        "cells": {},
        "targets": [],
        "baseline": args.baseline,
        "warm_page_cache": args.warm,
        "baseline_files": {},
    }
    print(
        f"bench_loader: batch {BATCH}, {batches} (2-D) / {batches_3d} (3-D) timed batches x {rounds} round(s), "
        f"arrays of ~{mib} MiB, "
        f"lazystack cache default {results['default_cache_mib']:.0f} MiB / small {small} MiB, "
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}",
        flush=True,
    )
    results["lazystack_file"] = lazystack.__file__
    print(f"lazystack from {lazystack.__file__}")
    print(results["reference_note"])
    for cell in args.cells:
        fmt, axes, _, chunks, patch = CELLS[cell]
        path, shape = ensure_data(cell, mib, args.data_dir)
        cell_res: dict[str, Any] = {
            "format": fmt,
            "axes": axes,
            "shape": list(shape),
            "chunks": list(chunks),
            "patch": list(patch),
            "path": str(path),
            "configs": {},
        }
        results["cells"][cell] = cell_res
        length = BATCH * ((batches if len(patch) == 2 else batches_3d) + 1)
        specs_by_round = [_specs(cell, path, r, length) for r in range(rounds)]
        expected = [expected_batch(cell, path, s[:BATCH]) for s in specs_by_round]
        print(f"\n== {cell}: {fmt} {axes} {shape} uint16 zstd, chunks/tiles {chunks}, patch {patch}", flush=True)
        for label, workers, context in configs:
            readers = _readers(fmt, small, args.baseline, args.readers)
            runners = {}
            try:
                for name, cache_mib in readers.items():
                    runners[name] = Runner(
                        {
                            "cell": cell,
                            "path": str(path),
                            "reader": name,
                            "cache_mib": cache_mib,
                            "workers": workers,
                            "context": context,
                            "label": label,
                            "length": length,
                            "lazystack_path": args.baseline if name == BASELINE else None,
                            "warm": args.warm,
                        }
                    )
                for runner in runners.values():
                    runner.ready()
                if BASELINE in runners and cell not in results["baseline_files"]:
                    results["baseline_files"][cell] = runners[BASELINE].lazystack_file
                    print(f"   {BASELINE} from {runners[BASELINE].lazystack_file}")
                per: dict[str, list[dict[str, Any]]] = {n: [] for n in readers}
                for r in range(rounds):
                    order = list(readers) if r % 2 == 0 else list(readers)[::-1]
                    for name in order:
                        res = runners[name].run(r, specs_by_round[r])
                        first = res.pop("first")
                        first_specs = res.pop("first_specs")
                        own = name in (BASELINE, CHUNK_LOCAL)  # its own specs: checked on those it reports
                        want = expected_batch(cell, path, first_specs) if own else expected[r]
                        if not np.array_equal(first, want):
                            msg = f"{cell} {label} {name}: the first batch of round {r} differs from the reference"
                            raise AssertionError(msg)
                        per[name].append(res)
            finally:
                for runner in runners.values():
                    runner.close()
            rows = {}
            for name, rs in per.items():
                intervals = [v for x in rs for v in x["intervals_ms"]]
                reads = [v for x in rs for v in x["reads_ms"]]
                workers_rss: dict[str, dict[str, float]] = {}
                for x in rs:
                    for wid, (start_kib, peak_kib) in x["rss_kib"].items():
                        if wid < 0:
                            continue
                        w = workers_rss.setdefault(str(wid), {"start_mib": 0.0, "peak_mib": 0.0})
                        w["start_mib"] = max(w["start_mib"], start_kib / 1024)
                        w["peak_mib"] = max(w["peak_mib"], peak_kib / 1024)
                rows[name] = {
                    "patches_per_s": statistics.median(x["patches_per_s"] for x in rs),
                    "patches_per_s_rounds": [x["patches_per_s"] for x in rs],
                    "p50_ms": float(np.percentile(intervals, 50)),
                    "p99_ms": float(np.percentile(intervals, 99)),
                    # None: no process read more than its first batch (a run of very few batches)
                    "read_p50_ms": float(np.percentile(reads, 50)) if reads else None,
                    "read_p99_ms": float(np.percentile(reads, 99)) if reads else None,
                    "first_batch_s": statistics.median(x["first_s"] for x in rs),
                    "cache_bound_mib": runners[name].bound_mib,
                    "workers_rss_mib": workers_rss,
                    "main_process_peak_mib": max(x["process_peak_kib"] for x in rs) / 1024,
                }
            cell_res["configs"][label] = rows
            if CHUNK_LOCAL in rows and "diversity" not in cell_res:
                stacks = _lazystack_stacks(cell, path)
                local = _chunk_local_sampler(cell, stacks, length)
                local_specs = [
                    [(x.sample, tuple(x.coords), tuple(x.patch_size)) for x in local.epoch_specs(r)]
                    for r in range(rounds)
                ]
                cell_res["diversity"] = {
                    CHUNK_LOCAL: batch_diversity(cell, [x for sp in local_specs for x in sp]),
                    "RandomSampler": batch_diversity(cell, [x for sp in specs_by_round for x in sp]),
                }
            _print_rows(label, rows, rounds, cell_res.get("diversity"))
    results["import"] = _import_comparison(import_rounds)
    print()
    _targets(results)
    results["wall_s"] = time.perf_counter() - wall
    print(f"\nwall time {results['wall_s']:.0f} s")
    if args.json:
        out = Path(args.json)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=2))
        print(f"results: {args.json}")
    return results


def _read_columns(row: dict[str, Any]) -> str:
    """The in-worker p50, p99 and p99/p50 columns (dashes when no batch was timed)."""
    p50, p99 = row["read_p50_ms"], row["read_p99_ms"]
    if p50 is None:
        return f"{'-':>14}{'-':>7}{'-':>8}"
    return f"{p50:>14.1f}{p99:>7.1f}{p99 / p50:>8.2f}"


def _print_rows(label: str, rows: dict[str, Any], rounds: int, diversity: dict[str, Any] | None = None) -> None:
    print(f"-- {label} (patches/s: median of {rounds} round(s); p50/p99: batch intervals pooled)")
    head = f"   {'reader':<26}{'patches/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'p99/p50':>8}{'first s':>9}"
    head += f"{'in-worker p50':>14}{'p99':>7}{'p99/p50':>8}"
    print(head + "   RSS per worker MiB (start -> peak; cache bound)")
    for name, row in rows.items():
        rss = ", ".join(f"w{w} {v['start_mib']:.0f}->{v['peak_mib']:.0f}" for w, v in row["workers_rss_mib"].items())
        if not rss:
            rss = f"main process peak {row['main_process_peak_mib']:.0f}"
        bound = row["cache_bound_mib"]
        if bound is not None:
            rss += f"; bound {bound:.0f}"
        print(
            f"   {name:<26}{row['patches_per_s']:>10.0f}{row['p50_ms']:>9.1f}{row['p99_ms']:>9.1f}"
            f"{row['p99_ms'] / row['p50_ms']:>8.2f}{row['first_batch_s']:>9.2f}"
            f"{_read_columns(row)}"
            f"   {rss}",
            flush=True,
        )
    for name in rows:
        if name.startswith("lazystack") and name != CHUNK_LOCAL:
            for ref in rows:
                if not ref.startswith("lazystack"):
                    ratio = rows[name]["patches_per_s"] / rows[ref]["patches_per_s"]
                    print(f"   {name} / {ref} patches/s: {ratio:.2f}x")
    if "floor" in rows:
        for ref in rows:
            if not ref.startswith("lazystack") and ref != "floor":
                ratio = rows[ref]["patches_per_s"] / rows["floor"]["patches_per_s"]
                print(f"   {ref} / floor patches/s: {ratio:.2f}x")
    if CHUNK_LOCAL in rows:
        for ref in rows:
            if not ref.startswith("lazystack") and ref != "floor":
                ratio = rows[CHUNK_LOCAL]["patches_per_s"] / rows[ref]["patches_per_s"]
                line = (
                    f"   {CHUNK_LOCAL} (opt-in, a different, less diverse sampling: {PER_CHUNK} patches per chunk "
                    f"group) / {ref} (independent random patches) patches/s: {ratio:.2f}x"
                )
                if diversity is not None:
                    local, plain = diversity[CHUNK_LOCAL], diversity["RandomSampler"]
                    line += (
                        f"; per batch of {BATCH}: distinct chunks touched {local['chunks_per_batch']:.1f} "
                        f"(independent {plain['chunks_per_batch']:.1f}), distinct places "
                        f"{local['places_per_batch']:.1f} (independent {plain['places_per_batch']:.1f})"
                    )
                print(line)
    if BASELINE in rows:
        for name in rows:
            if name.startswith("lazystack") and name not in (BASELINE, CHUNK_LOCAL):
                ratio = rows[name]["patches_per_s"] / rows[BASELINE]["patches_per_s"]
                print(f"   {name} / {BASELINE} patches/s: {ratio:.2f}x")


def _import_comparison(rounds: int) -> dict[str, Any]:
    from benchmarks import bench_import

    print(f"\n== import lazystack against import zarr, tifffile ({rounds} fresh interpreters each, interleaved)")
    return bench_import.main(["--rounds", str(rounds)])


def _targets(results: dict[str, Any]) -> None:
    print("targets (issue 20):")
    for cell, cres in results["cells"].items():
        ref = REFERENCE[cres["format"]]
        firsts: dict[str, dict[str, float]] = {}
        for label, rows in cres["configs"].items():
            for name, row in rows.items():
                if not name.startswith("lazystack") or name in (BASELINE, CHUNK_LOCAL):
                    continue  # the baseline and the chunk-local sampling (other patches) get no target lines
                _target(
                    results,
                    f"{cell} {label} {name} / {ref} patches/s",
                    row["patches_per_s"] / rows[ref]["patches_per_s"],
                    1.5,
                    ">=",
                    f"({row['patches_per_s']:.0f} vs {rows[ref]['patches_per_s']:.0f})",
                )
                _target(
                    results,
                    f"{cell} {label} {name} p99 / p50 batch time",
                    row["p99_ms"] / row["p50_ms"],
                    2.0,
                    "<=",
                    f"({row['p99_ms']:.1f} / {row['p50_ms']:.1f} ms; {ref} "
                    f"{rows[ref]['p99_ms'] / rows[ref]['p50_ms']:.2f} in the same run)",
                )
                bound = row["cache_bound_mib"]
                for wid, w in row["workers_rss_mib"].items():
                    _target(
                        results,
                        f"{cell} {label} {name} worker {wid} peak RSS MiB",
                        w["peak_mib"],
                        bound + RSS_SLACK_MIB,
                        "<=",
                        f"(cache bound {bound:.0f} + {RSS_SLACK_MIB}; RSS at the worker's start "
                        f"{w['start_mib']:.0f}, growth {w['peak_mib'] - w['start_mib']:.0f})",
                    )
                context = label.rsplit(" ", 1)[-1]
                if context in ("fork", "spawn"):
                    firsts.setdefault(name, {})[context] = row["first_batch_s"]
                    firsts.setdefault(ref, {})[context] = rows[ref]["first_batch_s"]
        for name, f in firsts.items():
            if name.startswith("lazystack") and "fork" in f and "spawn" in f:
                r = firsts[ref]
                _target(
                    results,
                    f"{cell} {name} first batch spawn / fork",
                    f["spawn"] / f["fork"],
                    3.0,
                    "<=",
                    f"({f['spawn']:.2f} / {f['fork']:.2f} s; {ref} {r['spawn'] / r['fork']:.2f} "
                    f"= {r['spawn']:.2f} / {r['fork']:.2f} s in the same run)",
                )
    imp = results["import"]
    _target(
        results,
        "import lazystack / import zarr, tifffile",
        imp["ratio_importtime"],
        1.5,
        "<=",
        f"(-X importtime medians; wall clock ratio {imp['ratio_wall']:.2f})",
    )


if __name__ == "__main__":
    # run as the importable module, so that spawned runners and workers unpickle its functions by name
    from benchmarks import bench_loader

    bench_loader.main()
