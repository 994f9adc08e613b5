"""Conformance harness: one factory per format, shared checks every loader runs through.

The pattern of zarr's ``StoreTests`` and bioio's ``run_image_container_checks``:
a :class:`FormatCase` knows how to *make* a small source of its format in a
temporary folder and which loader opens it; the checks (here and in
``test_conformance.py``) know nothing about formats. Adding a format means
adding a :class:`FormatCase` to :data:`CASES`, not writing tests.

Every case returns, beside the source, an independent **reference**: the
array as the format library's own reader returns it (``tifffile``,
``zarr``, ``pylibCZIrw``, ``numpy``), in the stack's original axes. The
canonical ``SC(Z)YX`` reference is then built with xarray
(:func:`reference.canonical_reference`), never with lazystack's code.

Module-level functions here (:func:`extract_many`, :func:`read_source`, the
loaders of each case) are picklable, so they run in fork / spawn pools and
on dask workers.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from reference import canonical_reference, patch_reference

import lazystack
from lazystack.core import errors

__all__ = [
    "CASES",
    "CASE_IDS",
    "FILE_CASES",
    "FormatCase",
    "Made",
    "Request",
    "canonical_of",
    "extract_many",
    "file_hashes",
    "make_ndarray",
    "open_fds_to",
    "mapped_files",
    "random_requests",
    "read_only",
    "reference_patches",
]

Request = tuple[int, list[int] | None, tuple[int, ...], tuple[int, ...]]


# -- what a factory makes ---------------------------------------------------------------------------
@dataclass
class Made:
    """One generated source of a format, ready to load.

    Attributes
    ----------
    sources : list
        What the loader takes (paths, URIs or array-likes).
    axes : str
        The axes string given to the loader.
    reference : numpy.ndarray
        The data as the format library reads it, in ``original_axes`` order.
    original_axes : str
        The axes of the stack the loader returns (a CZI reader has its own).
    load : callable
        ``load(sources, axes) -> list[LazyImageStack]`` (module level: picklable).
    files : list of Path
        Files / store folders that back the stack (empty for in-memory arrays).
    """

    sources: list[Any]
    axes: str
    reference: np.ndarray
    original_axes: str
    load: Callable[[Any, str], list[lazystack.LazyImageStack]]
    files: list[Path] = field(default_factory=list)

    def __repr__(self) -> str:
        return f"Made(axes={self.axes!r}, shape={self.reference.shape}, files={[p.name for p in self.files]})"

    def open(self) -> lazystack.LazyImageStack:
        """Load the sources and return the one stack they make."""
        stacks = self.load(self.sources, self.axes)
        assert len(stacks) == 1, stacks
        return stacks[0]

    @property
    def canonical(self) -> np.ndarray:
        """Canonical ``SC(Z)YX`` reference (built with xarray)."""
        return canonical_reference(self.reference, self.original_axes)


@dataclass(frozen=True)
class FormatCase:
    """A format (or a flavour of one) the conformance suite runs through.

    Attributes
    ----------
    name : str
        Test id.
    make : callable
        ``make(tmp_path) -> Made``.
    file_backed : bool
        Whether the stack reads files (pickles small, holds no data).
    slow : bool
        Slow per patch (a native reader serialised on one handle, zarr-python's per-read overhead, a dask
        graph per read): fewer patches in the stress tests.
    """

    name: str
    make: Callable[[Path], Made]
    file_backed: bool = True
    slow: bool = False


# -- data ----------------------------------------------------------------------------------------
def make_ndarray(shape: Sequence[int], dtype: str = "uint16", seed: int = 0) -> np.ndarray:
    """Random test data (integers well inside the dtype's range, floats in [0, 1))."""
    rng = np.random.default_rng(seed)
    dt = np.dtype(dtype)
    if dt.kind == "f":
        return rng.random(tuple(shape)).astype(dt)
    hi = min(np.iinfo(dt).max, 60000)
    return rng.integers(0, hi, tuple(shape), dtype=dt)


# -- loaders (module level, so that the Made objects pickle) ---------------------------------------
def _load_arrays(sources: Any, axes: str) -> list[lazystack.LazyImageStack]:
    return lazystack.load_arrays(sources, axes)


def _load_tiffs(sources: Any, axes: str) -> list[lazystack.LazyImageStack]:
    return lazystack.load_tiffs(sources, axes)


def _load_iter_tiff(sources: Any, axes: str) -> list[lazystack.LazyImageStack]:
    return lazystack.load_iter_tiff(sources, axes)


def _load_custom_eager(sources: Any, axes: str) -> list[lazystack.LazyImageStack]:
    return lazystack.load_custom_file(sources, axes, read_func=np.load)


def _load_custom_mmap(sources: Any, axes: str) -> list[lazystack.LazyImageStack]:
    return lazystack.load_custom_file(sources, axes, read_func=np.load, read_kwargs={"mmap_mode": "r"})


def _load_zarrs(sources: Any, axes: str) -> list[lazystack.LazyImageStack]:
    return lazystack.load_zarrs(sources, axes)


def _load_czis(sources: Any, axes: str) -> list[lazystack.LazyImageStack]:
    return lazystack.load_czis(sources, axes)


def _load_bioio(sources: Any, axes: str) -> list[lazystack.LazyImageStack]:
    return lazystack.load_bioio(sources, axes)


# -- factories: one per format ------------------------------------------------------------------------
def _make_numpy(tmp: Path) -> Made:
    data = make_ndarray((3, 2, 37, 41), "uint16", 1)
    return Made([data], "TCYX", data.copy(), "TCYX", _load_arrays)


def _make_memmap(tmp: Path) -> Made:
    data = make_ndarray((4, 45, 39), "float32", 2)
    path = tmp / "data.npy"
    np.save(path, data)
    mm = np.load(path, mmap_mode="r")
    return Made([mm], "ZYX", np.load(path), "ZYX", _load_arrays, [path])


def _make_dask(tmp: Path) -> Made:
    import dask.array as da

    data = make_ndarray((40, 33, 3), "uint8", 3)
    return Made([da.from_array(data, chunks=(16, 16, 3))], "YXC", data.copy(), "YXC", _load_arrays)


def _make_zarr_array(tmp: Path) -> Made:
    import zarr

    data = make_ndarray((2, 50, 45), "int16", 4)
    path = tmp / "arr.zarr"
    z = zarr.create_array(str(path), shape=data.shape, dtype=data.dtype, chunks=(1, 16, 16))
    z[...] = data
    opened = zarr.open_array(str(path), mode="r")
    return Made([opened], "SYX", np.asarray(opened[...]), "SYX", _load_arrays, [path])


def _make_tiff_plain(tmp: Path) -> Made:
    import tifffile

    data = make_ndarray((5, 43, 37), "uint16", 5)
    path = tmp / "plain.tif"
    tifffile.imwrite(path, data, metadata=None)
    return Made([str(path)], "ZYX", tifffile.imread(path), "ZYX", _load_tiffs, [path])


def _make_tiff_tiled(tmp: Path) -> Made:
    import tifffile

    data = make_ndarray((2, 70, 53), "uint16", 6)
    path = tmp / "tiled.tif"
    tifffile.imwrite(path, data, tile=(32, 16), compression="zlib", metadata=None, photometric="minisblack")
    return Made([str(path)], "CYX", tifffile.imread(path), "CYX", _load_tiffs, [path])


def _make_tiff_strips(tmp: Path) -> Made:
    import tifffile

    data = make_ndarray((6, 40, 30), "float32", 7)
    path = tmp / "strips.tif"
    tifffile.imwrite(path, data, rowsperstrip=7, compression="zlib", predictor=True, metadata=None)
    return Made([str(path)], "TYX", tifffile.imread(path), "TYX", _load_tiffs, [path])


def _make_iter_tiff(tmp: Path) -> Made:
    import tifffile

    data = make_ndarray((3, 40, 44), "uint8", 8)
    path = tmp / "iter.tif"
    tifffile.imwrite(path, data, compression="zlib", metadata=None, photometric="minisblack")
    return Made([str(path)], "SYX", tifffile.imread(path), "SYX", _load_iter_tiff, [path])


def _make_custom_eager(tmp: Path) -> Made:
    data = make_ndarray((2, 3, 30, 36), "uint16", 9)
    path = tmp / "eager.npy"
    np.save(path, data)
    return Made([str(path)], "SCYX", np.load(path), "SCYX", _load_custom_eager, [path])


def _make_custom_mmap(tmp: Path) -> Made:
    data = make_ndarray((3, 36, 30), "float64", 10)
    path = tmp / "lazy.npy"
    np.save(path, data)
    return Made([str(path)], "ZYX", np.load(path), "ZYX", _load_custom_mmap, [path])


def _make_zarr_v2(tmp: Path) -> Made:
    import zarr

    data = make_ndarray((3, 70, 90), "uint16", 11)
    path = tmp / "v2.zarr"
    root = zarr.open_group(str(path), mode="w", zarr_format=2)
    root.create_array("img", shape=data.shape, dtype=data.dtype, chunks=(1, 16, 16))[...] = data
    ref = np.asarray(zarr.open_array(str(path / "img"), mode="r")[...])
    return Made([str(path / "img")], "TYX", ref, "TYX", _load_zarrs, [path])


def _make_zarr_v3_sharded(tmp: Path) -> Made:
    import zarr

    data = make_ndarray((2, 3, 50, 45), "float32", 12)
    path = tmp / "v3.zarr"
    root = zarr.open_group(str(path), mode="w", zarr_format=3)
    root.create_array("img", shape=data.shape, dtype=data.dtype, chunks=(1, 1, 16, 16), shards=(1, 1, 32, 32))[...] = (
        data
    )
    ref = np.asarray(zarr.open_array(str(path / "img"), mode="r")[...])
    return Made([f"file://{path}/img"], "CZYX", ref, "CZYX", _load_zarrs, [path])


def _make_ome_zarr(tmp: Path) -> Made:
    import zarr
    from ome_zarr.format import FormatV05
    from ome_zarr.writer import write_image

    data = make_ndarray((2, 3, 64, 48), "uint16", 13)
    path = tmp / "image.ome.zarr"
    root = zarr.open_group(str(path), mode="w", zarr_format=3)
    write_image(
        data,
        root,
        axes="czyx",
        fmt=FormatV05(),
        scale_factors=(2,),
        storage_options={"chunks": (1, 1, 32, 32)},
    )
    ref = np.asarray(zarr.open_array(str(path / "s0"), mode="r")[...])
    return Made([str(path / "s0")], "CZYX", ref, "CZYX", _load_zarrs, [path])


def _make_czi(tmp: Path) -> Made:
    from pylibCZIrw import czi as pyczi

    tzcyx = make_ndarray((2, 3, 2, 40, 50), "uint16", 14)
    path = tmp / "image.czi"
    with pyczi.create_czi(str(path), exist_ok=True) as w:
        for t in range(2):
            for z in range(3):
                for c in range(2):
                    plane = {"T": t, "Z": z, "C": c}
                    # two tiles per plane: a small mosaic, at a negative offset
                    w.write(np.ascontiguousarray(tzcyx[t, z, c, :, :25]), plane=plane, location=(-30, -5))
                    w.write(np.ascontiguousarray(tzcyx[t, z, c, :, 25:]), plane=plane, location=(-5, -5))
    # reference: read back with pylibCZIrw itself
    ref = np.empty_like(tzcyx)
    with pyczi.open_czi(str(path)) as r:
        box = r.total_bounding_rectangle
        for t in range(2):
            for z in range(3):
                for c in range(2):
                    ref[t, z, c] = r.read(plane={"T": t, "Z": z, "C": c}, roi=box)[..., 0]
    np.testing.assert_array_equal(ref, tzcyx)
    # the stack's original axes are CAREamics': S replaced by the file's T (the one dimension merged into it)
    return Made([str(path)], "SCZYX", ref.transpose(0, 2, 1, 3, 4), "TCZYX", _load_czis, [path])


def _make_bioio_ome_tiff(tmp: Path) -> Made:
    import tifffile

    data = make_ndarray((2, 3, 40, 50), "uint16", 15)
    path = tmp / "image.ome.tif"
    tifffile.imwrite(path, data, ome=True, metadata={"axes": "TZYX"}, tile=(16, 16), compression="zlib")
    return Made([str(path)], "TZYX", tifffile.imread(path), "TZYX", _load_bioio, [path])


CASES: list[FormatCase] = [
    FormatCase("numpy", _make_numpy, file_backed=False),
    FormatCase("memmap", _make_memmap),
    FormatCase("dask", _make_dask, file_backed=False, slow=True),
    FormatCase("zarr-array", _make_zarr_array, file_backed=False, slow=True),
    FormatCase("tiff-plain", _make_tiff_plain),
    FormatCase("tiff-tiled-zlib", _make_tiff_tiled),
    FormatCase("tiff-strips-zlib", _make_tiff_strips),
    FormatCase("iter-tiff", _make_iter_tiff),
    FormatCase("custom-eager", _make_custom_eager),
    FormatCase("custom-mmap", _make_custom_mmap),
    FormatCase("zarr-v2", _make_zarr_v2, slow=True),
    FormatCase("zarr-v3-sharded", _make_zarr_v3_sharded, slow=True),
    FormatCase("ome-zarr", _make_ome_zarr, slow=True),
    FormatCase("czi", _make_czi, slow=True),
    FormatCase("bioio-ome-tiff", _make_bioio_ome_tiff, slow=True),
]
CASE_IDS = [c.name for c in CASES]
#: Cases whose stacks read files by path (pickle as a recipe).
FILE_CASES = [c for c in CASES if c.file_backed]


# -- shared helpers of the checks -----------------------------------------------------------------
def canonical_of(arr: np.ndarray, axes: str) -> np.ndarray:
    """Canonical ``SC(Z)YX`` array of ``arr`` (xarray, independent of lazystack)."""
    return canonical_reference(arr, axes)


def random_requests(canonical_shape: Sequence[int], n: int, seed: int, max_size: int = 24) -> list[Request]:
    """Random patch requests over a canonical shape: inside, across edges, wholly outside.

    Parameters
    ----------
    canonical_shape : sequence of int
        ``SC(Z)YX`` shape.
    n : int
        Number of requests.
    seed : int
        Random seed.
    max_size : int
        Largest patch size along Y and X.

    Returns
    -------
    list of tuple
        ``(sample, channels, coords, patch_size)``.
    """
    rng = np.random.default_rng(seed)
    n_s, n_c, *spatial = (int(v) for v in canonical_shape)
    out: list[Request] = []
    for k in range(n):
        size = tuple(
            int(rng.integers(1, min(4, ext) + 1)) if i < len(spatial) - 2 else int(rng.integers(1, max_size + 1))
            for i, ext in enumerate(spatial)
        )
        mode = k % 5
        if mode == 0:  # across the far edge
            coords = tuple(int(ext - p // 2 - 1) for ext, p in zip(spatial, size, strict=True))
        elif mode == 1:  # across the near edge
            coords = tuple(-int(rng.integers(0, p + 1)) for p in size)
        elif mode == 2 and k % 10 == 2:  # wholly outside
            coords = tuple(int(ext + rng.integers(0, 5)) for ext in spatial)
        else:
            coords = tuple(int(rng.integers(0, max(ext - p, 0) + 1)) for ext, p in zip(spatial, size, strict=True))
        if k % 3 == 0:
            chans: list[int] | None = None
        else:
            chans = [int(c) for c in rng.choice(n_c, size=int(rng.integers(1, n_c + 1)), replace=False)]
        out.append((int(rng.integers(n_s)), chans, coords, size))
    return out


def reference_patches(canonical: np.ndarray, requests: Sequence[Request]) -> list[np.ndarray]:
    """Reference patches (numpy padding of the canonical reference)."""
    return [patch_reference(canonical, s, c, xy, p) for s, c, xy, p in requests]


def extract_many(stack: lazystack.LazyImageStack, requests: Sequence[Request]) -> list[np.ndarray]:
    """Extract every request from ``stack`` (a picklable task for pools and dask workers)."""
    return [stack.extract_patch(s, c, xy, p) for s, c, xy, p in requests]


def extract_after_pickle_check(stack: lazystack.LazyImageStack, requests: Sequence[Request]) -> tuple[int, list]:
    """Task for a pool: the worker's pid and the patches."""
    return os.getpid(), extract_many(stack, requests)


def _all_files(paths: Sequence[Path]) -> list[Path]:
    out: list[Path] = []
    for p in paths:
        if p.is_dir():
            out.extend(sorted(q for q in p.rglob("*") if q.is_file()))
        elif p.exists():
            out.append(p)
    return out


def file_hashes(paths: Sequence[Path]) -> dict[str, tuple[str, int, int]]:
    """``{file: (sha256, size, mtime_ns)}`` of every file under ``paths`` (folders walked)."""
    out = {}
    for f in _all_files(paths):
        st = f.stat()
        out[str(f)] = (hashlib.sha256(f.read_bytes()).hexdigest(), st.st_size, st.st_mtime_ns)
    return out


class read_only:  # noqa: N801 - used like a function
    """Context manager: make files 0o444 and folders 0o555, restore on exit.

    Running as root the kernel ignores these bits, so the checks also compare
    hashes and modification times before and after.
    """

    def __init__(self, paths: Sequence[Path]) -> None:
        self.paths = list(paths)
        self.saved: list[tuple[Path, int]] = []

    def __enter__(self) -> read_only:
        for p in self.paths:
            items = [p, *sorted(p.rglob("*"))] if p.is_dir() else [p]
            for q in items:
                self.saved.append((q, stat.S_IMODE(q.stat().st_mode)))
        for q, _ in reversed(self.saved):  # children before their folder
            q.chmod(0o555 if q.is_dir() else 0o444)
        return self

    def __exit__(self, *exc: object) -> None:
        for q, mode in self.saved:
            q.chmod(mode)


def _under(target: str, roots: Sequence[Path]) -> bool:
    for r in roots:
        r_s = str(r.resolve())
        if target == r_s or target.startswith(r_s + os.sep):
            return True
    return False


def open_fds_to(roots: Sequence[Path]) -> list[str]:
    """Targets of this process's open file descriptors that lie under ``roots``."""
    out = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if _under(target, roots):
            out.append(target)
    return out


def mapped_files(roots: Sequence[Path]) -> list[str]:
    """Files under ``roots`` this process has memory-mapped (``/proc/self/maps``)."""
    out = []
    with open("/proc/self/maps") as f:
        for line in f:
            parts = line.split(maxsplit=5)
            if len(parts) == 6 and _under(parts[5].strip(), roots):
                out.append(parts[5].strip())
    return out


def is_clear_error(exc: BaseException, names: Sequence[str]) -> bool:
    """Whether ``exc`` is a lazystack error whose message names one of ``names``."""
    return isinstance(exc, errors.LazyStackError) and any(n in str(exc) for n in names)


def truncate_then_read(stack: lazystack.LazyImageStack, path: str, read_first: bool) -> str:
    """Cut the file under an open memory-mapped ``stack`` to half, then read a patch past the cut.

    Run it in a forked child: a read of a mapped page past the end of the
    file is a SIGBUS. Returns ``"SourceReadError: <message>"`` or ``"no error"``.
    """
    if read_first:
        stack.extract_patch(0, None, (0, 0, 0), (1, 4, 4))
    os.truncate(path, os.path.getsize(path) // 2)
    try:
        stack.extract_patch(0, None, (3, 0, 0), (1, 64, 64))
    except errors.SourceReadError as exc:
        return f"SourceReadError: {exc}"
    return "no error"
