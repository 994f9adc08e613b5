"""``lazystack demo``: the main job on an embedded, generated dataset.

The demo writes a synthetic multi-dimensional dataset in every format whose
back end is installed (numpy memmap, TIFF, Zarr, OME-Zarr, CZI) to a
temporary folder, opens it lazily, extracts random patches from every stack
and prints one row per format: stacks, shapes, patch shape, patches per
second, chunk-cache hits and bytes read against the dataset's size. Every
phase prints a step line on stderr (writing, extracting with a progress bar)
unless ``progress=False``.

"Bytes read" is what the process read through ``read()``-like system calls
while extracting (Linux ``/proc/self/io``, ``rchar``): file reads of the
chunks, tiles and planes that were not in the chunk cache. A memory-mapped
file (the numpy row) is read by page faults, which that counter does not
see: that row says so instead of showing a misleading 0.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..loading.stacklist import format_table as format_rows
from ..loading.stacklist import source_disk_bytes
from ..stack import LazyImageStack

__all__ = ["DemoResult", "run_demo"]


@dataclass
class DemoResult:
    """One row of the demo's table.

    Attributes
    ----------
    format : str
        Format name.
    n_stacks : int
        Stacks opened.
    shapes : str
        Canonical shapes of the stacks (``SxCxYxX``).
    n_patches : int
        Patches extracted.
    seconds : float
        Time spent extracting.
    bytes_read : int or None
        Bytes the process read through system calls while extracting (from
        ``/proc/self/io``); None where the OS does not tell or where the data
        is memory-mapped (see ``memory_mapped``).
    dataset_bytes : int
        Size of the dataset on disk.
    note : str
        Why a format was skipped, if it was.
    patch_shape : tuple of int
        Shape of each patch, ``C(Z)YX`` (every channel is extracted).
    write_seconds : float
        Time spent writing the format's dataset.
    cache_hits, cache_misses : int
        Chunk-cache look-ups during extraction that found / did not find
        their chunk.
    memory_mapped : bool
        The format is read through a memory map (its reads are page faults,
        not counted in ``bytes_read``).
    cache_max_bytes : int
        Bound of the chunk cache during extraction (0: disabled).
    first_patch_seconds : float
        Time of a first small patch from every stack, before the timed
        extraction: the back end's lazy imports and opening the files.
    """

    format: str
    n_stacks: int = 0
    shapes: str = ""
    n_patches: int = 0
    seconds: float = 0.0
    bytes_read: int | None = None
    dataset_bytes: int = 0
    note: str = ""
    patch_shape: tuple[int, ...] = ()
    write_seconds: float = 0.0
    cache_hits: int = 0
    cache_misses: int = 0
    memory_mapped: bool = False
    cache_max_bytes: int = 0
    first_patch_seconds: float = 0.0

    @property
    def patches_per_second(self) -> float:
        """Extraction throughput."""
        return self.n_patches / self.seconds if self.seconds > 0 else float("nan")


def _synthetic(shape: tuple[int, ...], seed: int) -> np.ndarray:
    """Smooth blobs plus noise, uint16: compresses like real fluorescence data."""
    rng = np.random.default_rng(seed)
    y, x = np.ogrid[tuple(slice(0, n) for n in shape[-2:])]
    img = np.zeros(shape[-2:], np.float32)
    for _ in range(12):
        cy, cx = rng.uniform(0, shape[-2]), rng.uniform(0, shape[-1])
        r = rng.uniform(4, max(shape[-1] / 8, 5))
        img += 1000 * np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / (2 * r * r))
    lead = int(np.prod(shape[:-2], dtype=np.int64))
    out = np.empty((lead, *shape[-2:]), np.uint16)
    for i in range(lead):
        out[i] = np.clip(np.roll(img, 3 * i, axis=-1) + rng.normal(100, 10, shape[-2:]), 0, 65535)
    return out.reshape(shape)


def _read_bytes() -> int | None:
    try:
        with open("/proc/self/io") as f:
            for line in f:
                if line.startswith("rchar:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


# -- one builder per format: write the data, return (paths, stacks) --------------------
Builder = Callable[[Path, tuple[int, ...]], tuple[list[Path], list[LazyImageStack]]]


def _build_npy(folder: Path, shape: tuple[int, ...]) -> tuple[list[Path], list[LazyImageStack]]:
    from ..loading.loaders import load_arrays

    paths = [folder / f"stack{i}.npy" for i in range(2)]
    for i, p in enumerate(paths):
        np.save(p, _synthetic(shape, i))
    return paths, load_arrays([np.load(p, mmap_mode="r") for p in paths], "TCYX")


def _build_tiff(folder: Path, shape: tuple[int, ...]) -> tuple[list[Path], list[LazyImageStack]]:
    import tifffile

    from ..loading.loaders import load_tiffs

    paths = [folder / f"stack{i}.tif" for i in range(2)]
    for i, (p, compression) in enumerate(zip(paths, [None, "zlib"], strict=True)):
        tifffile.imwrite(p, _synthetic(shape, i), tile=(128, 128), compression=compression, metadata={"axes": "TCYX"})
    return paths, load_tiffs(paths, "TCYX")


def _build_zarr(folder: Path, shape: tuple[int, ...]) -> tuple[list[Path], list[LazyImageStack]]:
    import zarr

    from ..loading.loaders import load_zarrs

    p = folder / "data.zarr"
    group = zarr.open_group(p, mode="w")
    for i in range(2):
        arr = group.create_array(f"stack{i}", shape=shape, chunks=(1, 1, 128, 128), dtype="uint16")
        arr[...] = _synthetic(shape, i)
    return [p], load_zarrs([p], "TCYX")


def _build_ome_zarr(folder: Path, shape: tuple[int, ...]) -> tuple[list[Path], list[LazyImageStack]]:
    from ..loading.loaders import load_arrays, load_zarrs
    from ..ops.writing import write_ome_zarr

    p = folder / "image.ome.zarr"
    (base,) = load_arrays([_synthetic(shape, 7)], "TCYX")
    write_ome_zarr(base, p, chunks=128, levels=2, overwrite=True)  # a second demo in the same --keep folder
    return [p], load_zarrs([p], "TCYX")


def _build_czi(folder: Path, shape: tuple[int, ...]) -> tuple[list[Path], list[LazyImageStack]]:
    from ..loading.loaders import load_czis
    from .samples import write_demo_czi

    p = folder / "scenes.czi"
    write_demo_czi(p, _synthetic(shape, 3))
    return [p], load_czis([p], "SCYX")


BUILDERS: dict[str, Builder] = {
    "numpy memmap": _build_npy,
    "tiff": _build_tiff,
    "zarr": _build_zarr,
    "ome-zarr": _build_ome_zarr,
    "czi": _build_czi,
}


#: Formats whose stacks read a memory-mapped file (page faults, not ``read()`` calls).
MEMORY_MAPPED = frozenset({"numpy memmap"})


def _extract(
    stacks: list[LazyImageStack], n_patches: int, patch: int, rng: np.random.Generator, progress: Any
) -> tuple[int, tuple[int, ...]]:
    shape: tuple[int, ...] = ()
    for k in range(n_patches):
        stack = stacks[k % len(stacks)]
        spatial = stack.data_shape[2:]
        size = [min(patch, n) for n in spatial]
        coords = [int(rng.integers(-size[i] // 4, n - size[i] // 2)) for i, n in enumerate(spatial)]
        shape = stack.extract_patch(int(rng.integers(stack.n_samples)), None, coords, size).shape
        progress.update(1)
    return n_patches, shape


def _check_demo_folder(folder: Path) -> None:
    """Refuse a ``folder`` the demo would write into someone else's data (it replaces ``data.zarr``, ``stack0.tif``
    ... in its sub-folders): it must be new, empty, or hold only the sub-folders of an earlier demo."""
    if not folder.exists():
        return
    if not folder.is_dir():
        msg = f"demo folder {str(folder)!r} exists and is not a folder: give a new or empty folder"
        raise FileExistsError(msg)
    own = {name.replace(" ", "_") for name in BUILDERS}
    others = sorted(entry.name for entry in folder.iterdir() if entry.name not in own or not entry.is_dir())
    if others:
        msg = (
            f"demo folder {str(folder)!r} holds {others[:5]}{' ...' if len(others) > 5 else ''}, which the demo did "
            "not write: it replaces its datasets in that folder; give a new or empty folder (or one an earlier demo "
            "wrote)"
        )
        raise FileExistsError(msg)


def run_demo(
    *,
    size: int = 1024,
    n_patches: int = 2000,
    patch: int = 64,
    frames: int = 4,
    formats: list[str] | None = None,
    folder: str | os.PathLike[str] | None = None,
    progress: bool = True,
    seed: int = 0,
    cache_bytes: int | str | None = None,
) -> list[DemoResult]:
    """Generate a dataset, open it lazily and extract random patches.

    Parameters
    ----------
    size : int
        Height and width of each image plane.
    n_patches : int
        Patches to extract per format.
    patch : int
        Patch edge length.
    frames : int
        Time points per stack (axes ``TCYX`` with 2 channels).
    formats : list of str, optional
        Formats to run (default: every installed one, see ``BUILDERS``).
    folder : path, optional
        Where to write the dataset (default: a temporary folder, removed
        afterwards).
    progress : bool
        Print a step line per phase and a progress bar while extracting, on
        stderr.
    seed : int
        Seed of the patch positions.
    cache_bytes : int or str, optional
        Bound of the chunk cache during the demo (``0`` disables it; default:
        the process's setting, see [`lazystack.chunk_cache_size()`][lazystack.chunk_cache_size]).

    Raises
    ------
    ValueError
        For an unknown format, or a ``size``, ``n_patches``, ``patch`` or ``frames`` below 1.
    FileExistsError
        If ``folder`` is a file, or holds anything but the folders an earlier
        demo wrote there (the demo replaces its datasets: ``data.zarr`` ...).
    """
    from contextlib import nullcontext

    from tqdm import tqdm

    from ..io.cache import chunk_cache_size, get_chunk_cache

    names = formats or list(BUILDERS)
    unknown = [n for n in names if n not in BUILDERS]
    if unknown:
        msg = f"unknown demo format(s) {unknown}; accepted: {list(BUILDERS)}"
        raise ValueError(msg)
    for name, value in (("size", size), ("n_patches", n_patches), ("patch", patch), ("frames", frames)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            msg = f"run_demo: {name} must be an integer >= 1, got {value!r}"
            raise ValueError(msg)
    shape = (frames, 2, size, size)
    if folder is not None:
        _check_demo_folder(Path(folder))
    tmp = Path(tempfile.mkdtemp(prefix="lazystack-demo-")) if folder is None else Path(folder)
    tmp.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)

    def step(index: int, name: str, text: str) -> None:
        """A step line on stderr (``[2/5] tiff: ...``), kept clear of the progress bar."""
        if progress:
            tqdm.write((f"[{index}/{len(names)}] {name}: " if index else "") + text, file=sys.stderr)
            sys.stderr.flush()

    results = []
    cache_scope = nullcontext() if cache_bytes is None else chunk_cache_size(cache_bytes)
    try:
        with cache_scope:
            cache = get_chunk_cache()
            step(0, "", f"lazystack demo: TCYX {shape} uint16 stacks in {len(names)} formats, in {tmp}")
            for index, name in enumerate(names, 1):
                result = DemoResult(name, memory_mapped=name in MEMORY_MAPPED, cache_max_bytes=cache.max_bytes)
                sub = tmp / name.replace(" ", "_")
                sub.mkdir(exist_ok=True)
                step(index, name, "writing the dataset ...")
                t0 = time.perf_counter()
                try:
                    paths, stacks = BUILDERS[name](sub, shape)
                except ImportError as exc:
                    result.note = f"skipped: {exc}"
                    step(index, name, result.note)
                    results.append(result)
                    continue
                result.write_seconds = time.perf_counter() - t0
                result.n_stacks = len(stacks)
                result.shapes = ", ".join(sorted({"x".join(map(str, s.data_shape)) for s in stacks}))
                result.dataset_bytes = sum(source_disk_bytes(p) or 0 for p in paths)
                step(
                    index,
                    name,
                    f"wrote {result.n_stacks} stack(s), {result.dataset_bytes / 2**20:,.1f} MiB, "
                    f"in {result.write_seconds:.1f} s; "
                    f"opening it and extracting {n_patches} patches of {patch} x {patch}",
                )
                t0 = time.perf_counter()
                for stack in stacks:  # first patch: the back end's lazy imports and opening the files
                    stack.extract_patch(0, None, [0] * (len(stack.data_shape) - 2), [min(patch, 8)] * 2)
                result.first_patch_seconds = time.perf_counter() - t0
                before, hits, misses = _read_bytes(), cache.hits, cache.misses
                with tqdm(
                    total=n_patches, desc=f"{name:>12}", disable=not progress, file=sys.stderr, leave=False
                ) as bar:
                    t0 = time.perf_counter()
                    result.n_patches, result.patch_shape = _extract(stacks, n_patches, patch, rng, bar)
                    result.seconds = time.perf_counter() - t0
                after = _read_bytes()
                result.cache_hits, result.cache_misses = cache.hits - hits, cache.misses - misses
                if before is not None and after is not None and not result.memory_mapped:
                    result.bytes_read = after - before
                step(index, name, f"{result.patches_per_second:,.0f} patches/s ({result.seconds:.1f} s)")
                for s in stacks:
                    s.close()
                results.append(result)
    finally:
        if folder is None:
            shutil.rmtree(tmp, ignore_errors=True)
    return results


def format_table(results: list[DemoResult]) -> str:
    """Render demo results as a plain-text table with a title and notes.

    The title states the patch shape and the chunk-cache setting; the notes
    say what the ``read`` column counts.
    """

    def mib(n: int | None) -> str:
        return "n/a" if n is None else f"{n / 2**20:,.1f} MiB"

    def read(r: DemoResult) -> str:
        return "n/a (mmap)" if r.memory_mapped else mib(r.bytes_read)

    def hit_rate(r: DemoResult) -> str:
        looked = r.cache_hits + r.cache_misses
        return f"{100 * r.cache_hits / looked:.0f}%" if looked else "-"

    head: tuple[str, ...] = ("format", "stacks", "canonical shapes", "open", "patch", "patches", "patches/s")
    head += ("cache hits", "read", "dataset")

    def cells(r: DemoResult) -> tuple[str, ...]:
        if r.note:
            return (r.format, "-", r.note, *["-"] * 7)
        shape = "x".join(map(str, r.patch_shape)) or "-"
        opened = (r.format, str(r.n_stacks), r.shapes, f"{r.first_patch_seconds:.2f} s", shape)
        return (*opened, str(r.n_patches), f"{r.patches_per_second:,.0f}", hit_rate(r), read(r), mib(r.dataset_bytes))

    lines = [format_rows([dict(zip(head, cells(r), strict=True)) for r in results], head)]
    done = [r for r in results if not r.note]
    cache = done[0].cache_max_bytes if done else None
    cache_text = "off" if cache == 0 else "?" if cache is None else f"{mib(cache)} per process"
    title = [
        "patch: CxYxX float32, every channel, at a random position of a random sample",
        f"chunk cache: {cache_text} (LAZYSTACK_CHUNK_CACHE_BYTES; --cache-bytes 0 turns it off)",
        "",
    ]
    notes = [
        "",
        "open: a first patch from every stack, not timed in patches/s (lazy imports, opening files)",
        "cache hits: chunk look-ups served by the cache of decoded chunks",
        "read: bytes read from files by read() calls while extracting (Linux /proc/self/io rchar),",
        "      i.e. the chunks, tiles and planes not yet cached; dataset: size on disk",
    ]
    if any(r.memory_mapped for r in done):
        notes.append("n/a (mmap): a memory-mapped file is read by page faults, which that counter does not see")
    return "\n".join(title + lines + notes)
