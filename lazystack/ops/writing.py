"""Write stacks as OME-Zarr 0.5 (Zarr v3) images with a multiscale pyramid, through dask.

[`write_ome_zarr()`][write_ome_zarr] streams a stack chunk by chunk into a Zarr v3 store:
nothing but one chunk per task is ever in memory, and the computation runs on
the active dask scheduler (threads, processes or a distributed cluster).

Layout
------
One stack becomes one OME-Zarr image::

    out.zarr/zarr.json          group, attributes["ome"] = {"version": "0.5", "multiscales": [...]}
    out.zarr/0, 1, 2 ...        one array per resolution level

A list of stacks, and a stack whose ``S`` axis has more than one sample
(several positions, scenes, tiles ...), become a *collection*: a group of
images in the ``bioformats2raw.layout`` of the NGFF specification
(``out.zarr/0``, ``out.zarr/1`` ... each an image as above; the root's
``attributes["ome"]`` holds ``"bioformats2raw.layout": 3``), one image per
sample of every stack, in order (stack 0's samples first). Each image's
multiscale ``metadata`` names where it comes from (``"source"``, and
``"sample"`` for a sample of a stack with an ``S`` axis). lazystack, ome-zarr-py,
bioio-ome-zarr and ngff-zarr open each image by its path ``out.zarr/N``;
[`lazystack.load_zarrs()`][lazystack.load_zarrs] on ``out.zarr`` gives the levels of every image
(``attrs["image"]`` is ``"N"``).

Axes
----
The image keeps the stack's axes except ``S``, reordered as NGFF requires:
``T`` first, then ``C``, then the space axes ``Z``, ``Y``, ``X`` (e.g. a
``"XYC"`` stack is written ``"CYX"``; `ome_axes()` gives the order). ``S``
is not an NGFF axis type and NGFF allows at most five axes: samples become
separate images (see above), so every written image has at most the five axes
``TCZYX`` and validates against NGFF 0.5. Open the result with
``load_zarrs(path, ome_axes(stack.axes_model.axes))``.

Pyramid
-------
Level ``l`` halves (``downscale``) ``Y`` and ``X`` ``l`` times by a block
mean (``dask.array.coarsen``; trailing rows/columns that do not fill a block
are dropped; integer data is rounded back to its dtype); ``Z`` and the other
axes are kept. ``scale`` metadata is the stack's physical pixel size (1 when
unknown) times the factor, with the matching half-pixel ``translation`` added
to the position of the stack's first pixel (its OME-Zarr ``translation`` and
the offset of a view), so that the written image lies where the stack's
xarray coordinates say. Units are the source's NGFF unit names when it declares
them, else ``micrometer``.

Crash safety
------------
Everything is written to a hidden sibling folder (``.out.zarr.partial-<id>``),
pixel data first and the ``ome`` metadata last; only a complete image is
renamed to ``path``. An interrupted write leaves no ``path`` (or the previous
one, untouched, with ``overwrite=True``), so a store at ``path`` is always
complete. A failed write removes its partial folder. A process killed
outright (``SIGKILL``, power loss) cannot: its partial folder holds a marker
file (``.lazystack-writer.json``: host, process id and the process's start
time), and the next [`write_ome_zarr()`][write_ome_zarr] to the same ``path`` removes every
partial folder of that path whose writer provably is gone (same host, no
live process with that id and start time). Partial folders it cannot prove
stale (another host, a live writer, no marker) are left alone and reported
with a [`PartialOutputWarning`][PartialOutputWarning] (``lazystack convert`` prints it);
[`stale_partial_outputs()`][stale_partial_outputs] lists them.

With ``overwrite=True`` the previous store is first moved aside into a
hidden ``.out.zarr.old-<id>`` folder (it holds the store, as ``store``, and
a writer marker), the new one is renamed to ``path``, and only then is the
folder removed (its store first, its marker last). A writer killed between
the two renames leaves no ``path``: the next write to ``path`` (or
[`stale_partial_outputs()`][stale_partial_outputs]'s caller, by hand) finds the folder, and once its
writer provably is gone moves the previous store back to ``path`` (so a
later ``overwrite=False`` write refuses, as before the interrupted one) and
removes the new, never-installed partial folder. A folder whose store
already was replaced (killed while removing it) is removed. A rename that
fails with an exception is rolled back at once; an error that leaves the
previous store aside names the folder it is in.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import socket
import uuid
import warnings
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from ..core.errors import ShapeMismatchError, UnsupportedSourceError
from ..core.units import UNIT_SYMBOLS
from ..io.handles import local_path, split_source, system_path
from ..io.overwrite import OLD_STORE, WRITER_MARKER
from ..stack import short_name
from .progress import compute

if TYPE_CHECKING:
    import dask.array

    from ..stack import LazyImageStack

__all__ = [
    "NGFF_ORDER",
    "PartialOutput",
    "PartialOutputWarning",
    "ome_axes",
    "stale_partial_outputs",
    "write_ome_zarr",
]

T = TypeVar("T")

#: Order of axes in a written image (NGFF: time, then channel, then space; samples become separate images).
NGFF_ORDER = "TCZYX"
_TYPES = {"T": "time", "S": "sample", "C": "channel", "Z": "space", "Y": "space", "X": "space"}
_DEFAULT_CHUNKS = {"T": 1, "S": 1, "C": 1, "Z": 32, "Y": 512, "X": 512}


def ome_axes(axes: str) -> str:
    """The axes string of the image [`write_ome_zarr()`][write_ome_zarr] writes for a stack with ``axes``.

    Parameters
    ----------
    axes : str
        A stack's ``axes_model.axes`` (its ``original_axes`` but for a CZI).

    Returns
    -------
    str
        The same letters in NGFF order (``T``, ``C``, ``Z``, ``Y``, ``X``),
        without ``S`` (each sample is an image of its own).

    Examples
    --------
    >>> ome_axes("XYCT"), ome_axes("STCZYX")
    ('TCYX', 'TCZYX')
    """
    upper = axes.upper()
    return "".join(a for a in NGFF_ORDER if a in upper)


def _local_path(path: str | os.PathLike[str], write: bool = False) -> Path:
    if not isinstance(path, (str, os.PathLike)) or not isinstance(text := os.fspath(path), str):
        msg = (
            f"write_ome_zarr expects the output path as str or os.PathLike (of str), got {type(path).__name__}: "
            f"{path!r}" + (" (decode bytes with os.fsdecode())" if isinstance(path, (bytes, os.PathLike)) else "")
        )
        raise TypeError(msg)
    local = local_path(text, who="write_ome_zarr")  # a file: URL's path, ``~`` expanded; a bad one refused
    if local is None:
        msg = (
            f"write_ome_zarr writes to local paths only (renaming a finished store is what keeps it crash-safe); "
            f"got {text!r}: write locally, then copy"
        )
        raise UnsupportedSourceError(msg)
    text = local
    if write and text.lower().endswith(".zip"):  # only a write: what an earlier write there left stays listable
        msg = (
            f"write_ome_zarr writes a folder store, not a zip file; got {text!r}: write to a folder "
            f"(e.g. {text[:-4]!r}), then zip its contents uncompressed at the archive's root "
            f"(cd {text[:-4]} && zip -r -0 ../{Path(text).name} .), which load() reads"
        )
        raise UnsupportedSourceError(msg)
    # ``..`` resolved as the system does (``link/..`` is the parent of the link's target), and collapsed:
    # ``a.zarr/../a.zarr`` is ``a.zarr`` (its parent must not be reached through itself)
    return Path(system_path(text))


def _source_paths(stacks: Sequence[LazyImageStack]) -> list[tuple[str, Path]]:
    """The local paths the stacks read from (symlinks resolved), with the source as the stack names it."""
    out = []
    for stack in stacks:
        text = str(getattr(stack, "source", ""))
        if stack.format == "array" and text == "array":  # in memory: "array" names no file, whatever the folder holds
            continue
        if "://" in text:  # a chained URL (a zip store: ``zip://0::file:///a.zip``): its outer file
            text = text.rsplit("::", 1)[-1]
        if text.startswith("file://"):
            text = text[len("file://") :]
        elif "://" in text:
            continue
        text, _, _ = split_source(text)  # ``x.czi@1#level=1``, ``a.tif@2``: the file itself
        path = Path(text).expanduser()
        if text and path.exists():
            path = Path(os.path.realpath(path))
            while _is_zarr_node(path.parent):  # a node of a Zarr store: the whole store is the source
                path = path.parent
            out.append((str(stack.source), path))
            if stack.format in ("tiff", "bioio"):  # the other files of a multi-file OME-TIFF (bioio: by tifffile)
                from ..sources.tiff import source_files

                out += [(str(stack.source), Path(os.path.realpath(f))) for f in source_files(str(path))[1:]]
    return out


def _is_zarr_node(path: Path) -> bool:
    return any((path / name).is_file() for name in ("zarr.json", ".zgroup", ".zarray", ".zattrs"))


def _stat_or_none(path: Path) -> os.stat_result | None:
    try:
        return path.stat()
    except OSError:
        return None


def _check_not_a_source(final: Path, stacks: Sequence[LazyImageStack], who: str = "write_ome_zarr") -> None:
    """Refuse a target that is, holds or lies inside a source of ``stacks``: a write never touches its sources.

    Also used by ``lazystack stats --output`` and ``write_manifest`` (``who`` names the writer in the message).
    """
    target = Path(os.path.realpath(final))
    target_stat = _stat_or_none(target)
    for source, path in _source_paths(stacks):
        path_stat = _stat_or_none(path)
        # the same file, or a hard link to it (writing through it would change the source)
        same = target_stat is not None and path_stat is not None and os.path.samestat(target_stat, path_stat)
        if target == path or same:
            how = "is"
        elif target in path.parents:
            how = "holds"
        elif path in target.parents:
            how = "lies inside"
        else:
            continue
        where = "" if str(path) in source else f" (in {str(path)!r})"
        msg = (
            f"the output path {str(final)!r} {how} the source {source!r}{where} of a stack being written: "
            f"{who} never writes to (or replaces) its sources; choose a path outside every source"
        )
        raise UnsupportedSourceError(msg)


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _target_chunks(written: str, shape: tuple[int, ...], chunks: Any) -> tuple[int, ...]:
    if chunks is None:
        sizes = dict(_DEFAULT_CHUNKS)
    elif isinstance(chunks, (int, np.integer)) and not isinstance(chunks, (bool, np.bool_)):
        sizes = dict(_DEFAULT_CHUNKS, Y=int(chunks), X=int(chunks))
    elif isinstance(chunks, Mapping):
        bad = [k for k in chunks if str(k).upper() not in written + "S"]  # S: one image per sample
        if bad:
            msg = f"chunks names axis {bad[0]!r}, which the written image (axes {written!r}) does not have"
            raise ValueError(msg)
        sizes = dict(_DEFAULT_CHUNKS, **{str(k).upper(): v for k, v in chunks.items()})
    elif isinstance(chunks, Sequence) and not isinstance(chunks, (str, bytes)) and len(chunks) == len(written):
        sizes = dict(zip(written, chunks, strict=True))
    else:
        msg = (
            f"chunks must be None, an int (Y and X), a dict {{axis: size}} or a tuple of {len(written)} "
            f"sizes in the written order {written!r}; got {chunks!r}"
        )
        raise ValueError(msg)
    out = []
    for axis, n in zip(written, shape, strict=True):
        size = sizes[axis]
        if not (isinstance(size, (int, np.integer)) and not isinstance(size, bool)) or (size < 1 and size != -1):
            msg = f"chunk size for axis {axis!r} must be a positive int (or -1 for the whole axis), got {size!r}"
            raise ValueError(msg)
        out.append(n if size == -1 else max(1, min(int(size), n)))
    return tuple(out)


def _downsample(x: dask.array.Array, factors: dict[int, int], dtype: np.dtype[Any]) -> dask.array.Array:
    import dask.array as da

    out = da.coarsen(np.mean, x, factors, trim_excess=True, dtype=np.float64)
    if dtype.kind in "biu":
        out = da.rint(out)
    return out.astype(dtype)


def _pyramid(x: dask.array.Array, written: str, levels: int, downscale: int) -> list[dask.array.Array]:
    spatial = [written.index(a) for a in "YX"]
    out = [x]
    for _ in range(1, levels):
        prev = out[-1]
        if any(prev.shape[i] // downscale < 1 for i in spatial):
            break
        out.append(_downsample(prev, dict.fromkeys(spatial, downscale), x.dtype))
    return out


def _axes_metadata(
    written: str, sizes: Mapping[str, float], units: Mapping[str, str] | None = None
) -> list[dict[str, Any]]:
    axes = []
    for a in written:
        entry: dict[str, Any] = {"name": a.lower(), "type": _TYPES[a]}
        if a in "ZYX" and a in sizes:
            # the source's own NGFF unit name when it declares one, else micrometres (TIFF, CZI)
            unit = str((units or {}).get(a, "")).lower()
            entry["unit"] = unit if unit in UNIT_SYMBOLS and unit != "micron" else "micrometer"
        axes.append(entry)
    return axes


def _dataset_metadata(
    written: str, sizes: Mapping[str, float], level: int, downscale: int, origin: Mapping[str, float]
) -> dict[str, Any]:
    scale, translation = [], []
    for a in written:
        base = float(sizes.get(a, 1.0)) if a in "ZYX" else 1.0
        factor = downscale**level if a in "YX" else 1
        scale.append(base * factor)
        translation.append(float(origin.get(a, 0.0)) + base * (factor - 1) / 2)
    transforms: list[dict[str, Any]] = [{"type": "scale", "scale": scale}]
    if level > 0 or any(translation):
        transforms.append({"type": "translation", "translation": translation})
    return {"path": str(level), "coordinateTransformations": transforms}


def _image_metadata(
    stack: LazyImageStack, written: str, n_levels: int, downscale: int, sample: int | None = None
) -> dict[str, Any]:
    sizes = stack.physical_pixel_sizes
    # physical position of the first pixel (the source's translation, plus the offset of a view)
    coords = stack.coords
    first = {a: float(coords[a][0]) for a in "ZYX" if a in sizes and a in coords and len(coords[a])}
    origin: dict[str, Any] = {"source": str(stack.source)}
    if sample is not None:
        origin["sample"] = sample
    multiscale: dict[str, Any] = {
        "name": short_name(stack.source) + ("" if sample is None else f" sample {sample}"),
        "axes": _axes_metadata(written, sizes, stack.attrs.get("units")),
        "datasets": [_dataset_metadata(written, sizes, level, downscale, first) for level in range(n_levels)],
        "type": "mean",
        "metadata": {
            "description": f"block mean over Y and X by a factor {downscale} per level (dask.array.coarsen)",
            "method": "lazystack.write_ome_zarr",
            **origin,
        },
    }
    ome: dict[str, Any] = {"version": "0.5", "multiscales": [multiscale]}
    names = stack.channel_names
    if names and "C" in written:
        ome["omero"] = {"channels": [{"label": str(n), "active": True} for n in names]}
    return ome


def _images(stacks: Sequence[LazyImageStack]) -> list[tuple[LazyImageStack, int | None]]:
    """The images to write: (stack, sample index) per sample of a stack with ``S``, (stack, None) otherwise."""
    out: list[tuple[LazyImageStack, int | None]] = []
    for stack in stacks:
        if 0 in tuple(stack.axes_model.shape):  # zarr's or numpy's bare "axes don't match array" otherwise
            msg = (
                f"write_ome_zarr cannot write the stack {stack.source!r}: it has no pixels (axes "
                f"{stack.axes_model.axes!r}, shape {tuple(stack.axes_model.shape)}); accepted stacks with at least "
                "one element along every axis"
            )
            raise ShapeMismatchError(msg)
        axes = stack.axes_model.axes
        n = int(stack.axes_model.shape[axes.index("S")]) if "S" in axes else 0
        out += [(stack, s) for s in range(n)] if n > 1 else [(stack, 0 if n == 1 else None)]
    return out


class _ViewReader:
    """A stack (view) read in its axes model's order: what the writer's tasks read from."""

    def __init__(self, stack: LazyImageStack) -> None:
        self.stack = stack
        self.shape = tuple(stack.axes_model.shape)
        self.dtype = np.dtype(stack.data_dtype)
        self.ndim = len(self.shape)

    def __getitem__(self, key: tuple[int | slice, ...]) -> np.ndarray:
        return np.asarray(self.stack.read(key))


def _plan_image(
    group: Any,
    stack: LazyImageStack,
    *,
    chunks: Any,
    levels: int,
    downscale: int,
    compressors: Any,
    sample: int | None = None,
) -> tuple[list[Any], list[Any], dict[str, Any]]:
    """Create one image's arrays in ``group``; return (dask sources, zarr targets, ome metadata).

    ``sample``: the index along ``S`` of the image, for a stack with an ``S`` axis.
    """
    import dask.array as da
    import zarr

    axes = stack.axes_model.axes  # the reader's letters (a CZI's original_axes name file dims OME has no axis for)
    written = ome_axes(axes)
    shape = tuple(stack.axes_model.shape)
    target_chunks = _target_chunks(written, tuple(shape[axes.index(a)] for a in written), chunks)
    # one task reads exactly one written chunk straight from the stack (not the stack's own
    # dask chunks, which group many source chunks): reads stay the size of a written chunk
    x = da.from_array(
        _ViewReader(stack),
        chunks=tuple(1 if a == "S" else target_chunks[written.index(a)] for a in axes),
        name=f"lazystack-write-{uuid.uuid4().hex}",
        meta=np.empty((0,) * len(axes), dtype=stack.data_dtype),
        asarray=True,
        fancy=False,
        lock=False,
    )
    if "S" in axes:  # one image per sample: NGFF images have no sample axis
        x = x[tuple(sample if a == "S" else slice(None) for a in axes)]
        axes = axes.replace("S", "")
    x = x.transpose([axes.index(a) for a in written])
    sources, targets = [], []
    for level, data in enumerate(_pyramid(x, written, levels, downscale)):
        level_chunks = tuple(min(c, n) for c, n in zip(target_chunks, data.shape, strict=True))
        try:
            array = zarr.create_array(
                group.store,
                name=f"{group.path}/{level}" if group.path else str(level),
                shape=data.shape,
                chunks=level_chunks,
                dtype=data.dtype,
                compressors=compressors,
                fill_value=0,
                dimension_names=[a.lower() for a in written],
                zarr_format=3,
            )
        except (TypeError, ValueError) as exc:
            if compressors is None or (isinstance(compressors, str) and compressors == "auto"):
                raise
            # zarr's own words ("Expected a BytesBytesCodec. Got <class 'str'>", "'int' object is not iterable")
            msg = (
                f"write_ome_zarr: zarr refused compressors={compressors!r} ({type(exc).__name__}: {exc}); accepted "
                "'auto', None, or a Zarr v3 bytes-to-bytes codec or a sequence of them "
                "(e.g. zarr.codecs.BloscCodec(), zarr.codecs.ZstdCodec(level=3))"
            )
            raise ValueError(msg) from exc
        sources.append(data.rechunk(level_chunks))
        targets.append(array)
    many_samples = sample is not None and int(stack.axes_model.shape[stack.axes_model.axes.index("S")]) > 1
    meta = _image_metadata(stack, written, len(sources), downscale, sample if many_samples else None)
    return sources, targets, meta


def write_ome_zarr(
    stacks: LazyImageStack | Sequence[LazyImageStack],
    path: str | os.PathLike[str],
    *,
    chunks: Any = None,
    levels: int = 3,
    downscale: int = 2,
    overwrite: bool = False,
    progress: bool = False,
    compressors: Any = "auto",
) -> str:
    """Write a stack (or a list of stacks) as an OME-Zarr 0.5 image (Zarr v3) with a pyramid.

    Parameters
    ----------
    stacks : LazyImageStack or sequence of LazyImageStack
        One stack gives one image at ``path``; a sequence gives a group with
        one image per stack (``path/0``, ``path/1`` ...), even for one item.
        A stack with several samples (``S`` axis) gives one image per sample
        (a group, as for a sequence): NGFF images have at most five axes.
    path : str or os.PathLike
        Local folder to create (``.zarr`` by convention). A ``file:`` URL of an
        absolute path is accepted, percent-decoded (``file:///data/a%20b.zarr``,
        ``file://localhost/data/x.zarr``, ``file:/data/x.zarr``); one naming
        another host, a query or a fragment is refused, and ``~`` is expanded
        in a plain path (as every loader reads it: `lazystack.io.handles.local_path()`).
        A ``..`` is resolved as the system resolves it (``link/..`` is the
        parent of the folder the symbolic link ``link`` names). A ``bytes``
        path is refused: decode it with ``os.fsdecode()``.
    chunks : None, int, dict or tuple
        Zarr chunk shape: None for 1 along ``T``/``S``/``C``, 32 along ``Z``
        and 512 along ``Y``/``X``; an int for ``Y`` and ``X``; a dict
        ``{axis: size}`` (``-1`` for a whole axis); or a tuple in the written
        order (`ome_axes()`). Sizes are capped at the image's shape.
    levels : int
        Number of resolution levels, full resolution included (fewer when
        ``Y`` or ``X`` would shrink below one pixel).
    downscale : int
        Factor between levels along ``Y`` and ``X``.
    overwrite : bool
        Replace an existing Zarr store at ``path`` (only once the new image
        is complete). A file, or a folder that is not a Zarr store, is never
        replaced.
    progress : bool
        Show a progress bar.
    compressors : optional
        Passed to `zarr.create_array()` (``"auto"``: zarr's default, Zstandard).

    Returns
    -------
    str
        The absolute path written.

    Raises
    ------
    FileExistsError
        If ``path`` exists and ``overwrite`` is False, or ``path`` is a file
        or a folder that is not a Zarr store.
    UnsupportedSourceError
        For a remote URI (write locally, then copy), a ``file:`` URL naming a
        host or holding a query or a fragment, an empty path, a ``.zip`` path (write a
        folder, then zip it), an item that is not a stack, or a ``path`` that
        is, holds or lies inside a local source of the stacks (symlinks
        resolved): a write never touches its sources.
    ValueError
        For invalid ``chunks``, ``levels`` or ``downscale``.
    TypeError
        If ``path`` is not a str or os.PathLike of str (``bytes``).

    Warns
    -----
    PartialOutputWarning
        For a hidden partial folder of an earlier write to ``path`` that is
        not provably abandoned (left in place; abandoned ones are removed,
        see the module documentation).

    Notes
    -----
    The pixels go through dask (``dask.array.store``) on the active
    scheduler: each task reads one source chunk region and writes whole Zarr
    chunks, so a worker lost mid-way is simply replaced and its chunks are
    rewritten with the same bytes. See the module documentation for the
    layout, the axes order and crash safety.
    """
    import dask.array as da
    import zarr

    many = isinstance(stacks, Sequence) and not isinstance(stacks, (str, bytes))
    items: list[LazyImageStack] = list(stacks) if many else [stacks]  # type: ignore[arg-type,list-item]
    if not items:
        msg = "write_ome_zarr got no stacks: pass a stack or a non-empty sequence of stacks"
        raise ValueError(msg)
    bad = [s for s in items if not hasattr(s, "original_axes")]
    if bad:
        msg = f"write_ome_zarr expects lazystack stacks, got {type(bad[0]).__name__}"
        raise UnsupportedSourceError(msg)
    if not (_is_int(levels) and levels >= 1):  # numpy ints too; True is no level count
        msg = f"levels must be an int >= 1 (1 = full resolution only), got {levels!r}"
        raise ValueError(msg)
    if not (_is_int(downscale) and downscale >= 2):
        msg = f"downscale must be an int >= 2, got {downscale!r}"
        raise ValueError(msg)
    levels, downscale = int(levels), int(downscale)

    final = _local_path(path, write=True)
    _clean_partials(final)  # first: it may move back a store an interrupted overwrite had moved aside
    if final.exists() and not overwrite:
        msg = f"{str(final)!r} already exists; pass overwrite=True to replace it"
        raise FileExistsError(msg)
    if final.exists() and not _is_zarr_store(final):  # never replace a source file or a folder of other data
        what = "a file" if not final.is_dir() else "a folder without Zarr metadata (zarr.json, .zgroup, .zarray)"
        msg = (
            f"{str(final)!r} exists and is {what}: an overwrite replaces a Zarr store only; "
            f"choose another path, or remove it yourself"
        )
        raise FileExistsError(msg)
    _check_not_a_source(final, items)  # a store that is, holds or lies in a source: never replaced or written into
    final.parent.mkdir(parents=True, exist_ok=True)
    partial = final.parent / f".{final.name}.partial-{uuid.uuid4().hex[:12]}"

    images = _images(items)
    many = many or len(images) > 1

    def plan() -> tuple[Any, list[Any], list[Any], list[tuple[Any, dict[str, Any]]]]:
        root = zarr.open_group(str(partial), mode="w-", zarr_format=3)
        (partial / MARKER).write_text(json.dumps(_writer_marker()), encoding="utf-8")
        sources: list[Any] = []
        targets: list[Any] = []
        metadata: list[tuple[Any, dict[str, Any]]] = []
        for i, (stack, sample) in enumerate(images):
            group = root.create_group(str(i)) if many else root
            src, tgt, meta = _plan_image(
                group,
                stack,
                chunks=chunks,
                levels=levels,
                downscale=downscale,
                compressors=compressors,
                sample=sample,
            )
            sources += src
            targets += tgt
            metadata.append((group, meta))
        return root, sources, targets, metadata

    def describe() -> None:  # metadata last: only now does the store describe an image
        for group, meta in metadata:
            group.attrs.update({"ome": meta})
        if many:
            root.attrs.update({"ome": {"version": "0.5", "bioformats2raw.layout": 3}})
        (partial / MARKER).unlink()

    try:
        root, sources, targets, metadata = _to_the_end(plan)
        stored = da.store(sources, targets, lock=False, compute=False)
        _compute_and_wait(stored, progress)
        _to_the_end(describe)
        _replace(partial, final, overwrite)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return str(final)


#: Marker file inside a partial folder: who is writing it (the readers name an interrupted overwrite by it).
MARKER = WRITER_MARKER


class PartialOutputWarning(UserWarning):
    """A hidden partial output of an earlier write is left in place (not provably abandoned)."""


@dataclass(frozen=True)
class PartialOutput:
    """A hidden partial folder of a write to some ``path``.

    Attributes
    ----------
    path : Path
        The folder (``.name.zarr.partial-<id>`` or, for the previous store
        an overwrite moved aside, ``.name.zarr.old-<id>``, beside the target).
    abandoned : bool
        True when its writer provably is gone: the marker names this host and
        no live process has its id and start time. Only these are cleaned
        up (an ``old`` folder's store is moved back to the target when the
        target is missing, see the module documentation).
    reason : str
        Why it is (or is not) considered abandoned.
    kind : str
        ``"partial"`` (a new store being written) or ``"old"`` (the previous
        store, moved aside by an overwrite).
    """

    path: Path
    abandoned: bool
    reason: str
    kind: str = "partial"


def _start_time(pid: int) -> str | None:
    """The start time of process ``pid`` in clock ticks since boot (Linux ``/proc``), else None."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            text = f.read()
    except OSError:
        return None
    return text.rsplit(")", 1)[-1].split()[19]  # field 22 of proc(5), after the command name


def _alive(pid: int, started: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        pass
    now = _start_time(pid)
    return not (started is not None and now is not None and now != started)  # a reused id is another process


def _writer_marker() -> dict[str, Any]:
    pid = os.getpid()
    return {"host": socket.gethostname(), "pid": pid, "start_time": _start_time(pid)}


def _marker_status(folder: Path) -> tuple[bool, str]:
    """Whether the writer named by ``folder``'s marker provably is gone, and why (or why not)."""
    try:
        marker = json.loads((folder / MARKER).read_text(encoding="utf-8"))
        host, pid, started = str(marker["host"]), int(marker["pid"]), marker.get("start_time")
    except (OSError, ValueError, KeyError, TypeError):
        return False, "no readable writer marker (not written by this version?)"
    if host != socket.gethostname():
        return False, f"written from host {host!r}, cannot check its process"
    if _alive(pid, started):
        return False, f"its writer (process {pid}) is still running"
    return True, f"its writer (process {pid} on this host) is gone"


def _token(folder: Path) -> str:
    """The ``<id>`` of a ``.name.partial-<id>`` / ``.name.old-<id>`` folder (shared by one write's two folders)."""
    return folder.name.rsplit("-", 1)[-1]


def stale_partial_outputs(path: str | os.PathLike[str]) -> list[PartialOutput]:
    """Hidden folders left beside ``path`` by earlier [`write_ome_zarr()`][write_ome_zarr] calls.

    Parameters
    ----------
    path : str or os.PathLike
        The target of the writes (a local folder; need not exist).

    Returns
    -------
    list of PartialOutput
        One per ``.name.partial-*`` folder (a new store being written) and
        per ``.name.old-*`` folder (the previous store, moved aside by an
        overwrite), with whether its writer provably is gone.
    """
    final = _local_path(path)
    if not final.parent.is_dir():
        return []
    found = []
    dead_overwrites = set()
    name = glob.escape(final.name)  # a target "x[1].zarr" must not match another target's ".x1.zarr.partial-*"
    for folder in sorted(final.parent.glob(f".{name}.old-*")):
        if not folder.is_dir():
            continue
        abandoned, reason = _marker_status(folder)
        if abandoned:
            dead_overwrites.add(_token(folder))
            if not (folder / OLD_STORE).is_dir():
                reason += "; it holds no previous store"
            elif final.exists():
                reason += f"; {final.name} was replaced already, this is what is left of the previous one"
            else:
                reason += f"; it holds the previous {final.name}, interrupted before the new one was renamed in"
        found.append(PartialOutput(folder, abandoned, reason, kind="old"))
    for folder in sorted(final.parent.glob(f".{name}.partial-*")):
        if not folder.is_dir():
            continue
        abandoned, reason = _marker_status(folder)
        if not abandoned and _token(folder) in dead_overwrites and not (folder / MARKER).exists():
            abandoned, reason = True, "the new store of an overwrite whose writer is gone (never renamed in)"
        found.append(PartialOutput(folder, abandoned, reason))
    return found


def _to_the_end(work: Callable[[], T]) -> T:
    """Run ``work`` (zarr metadata writes) in a thread; an interrupt of the caller waits for it before it leaves.

    zarr's synchronous calls wait for a coroutine on zarr's I/O thread: a
    Ctrl-C or SIGTERM in the waiting thread leaves, but the coroutine goes on
    and recreated ``zarr.json`` files after the interrupted write removed its
    partial folder. Signals reach the main thread only, so ``work`` runs to
    its end (a few small files) and the cleanup comes after it.
    """
    with ThreadPoolExecutor(1, thread_name_prefix="lazystack-write") as pool:
        future = pool.submit(work)
        try:
            return future.result()
        except BaseException:
            wait([future])  # an interrupt: let the writes in flight end before the partial folder is removed
            raise


def _compute_and_wait(stored: Any, progress: bool) -> None:
    """Compute the chunk writes; on the local threaded scheduler, wait for every started write.

    dask's threaded scheduler raises on the first failed task while other
    threads are still writing: without waiting, a late chunk write would
    recreate the partial folder after the failed write removed it.
    """
    import dask
    import dask.threaded
    from dask.base import get_scheduler
    from dask.system import CPU_COUNT

    collections = list(stored) if isinstance(stored, (list, tuple)) else [stored]
    if get_scheduler(collections=collections) is not dask.threaded.get:
        compute(stored, progress=progress)
        return
    pool = ThreadPoolExecutor(dask.config.get("num_workers", None) or CPU_COUNT)
    try:
        with dask.config.set(pool=pool):  # dask's documented way to give the threaded scheduler a pool
            compute(stored, progress=progress)
    finally:
        pool.shutdown(wait=True)


def _clean_partials(final: Path) -> None:
    """Clean up the abandoned hidden folders of ``final`` (moving a previous store back); warn about the others."""
    for leftover in stale_partial_outputs(final):
        if not leftover.abandoned:
            if leftover.kind == "old":
                what, action = "previous store", f"its {OLD_STORE!r} folder, if any, is the previous {final.name}"
            else:
                what, action = "partial output", "delete it once no write is running"
            msg = (
                f"left in place a hidden {what} of an earlier write to {str(final)!r}: "
                f"{str(leftover.path)!r} ({leftover.reason}); {action}"
            )
            warnings.warn(msg, PartialOutputWarning, stacklevel=3)
            continue
        if leftover.kind == "old" and (leftover.path / OLD_STORE).is_dir() and not final.exists():
            (leftover.path / OLD_STORE).rename(final)  # an error here leaves the folder as it was: nothing lost
            msg = (
                f"moved back the previous {str(final)!r} from {str(leftover.path)!r}: "
                f"an overwrite of it was interrupted ({leftover.reason})"
            )
            warnings.warn(msg, PartialOutputWarning, stacklevel=3)
        _remove_folder(leftover.path)


def _remove_folder(folder: Path) -> None:
    """Remove a hidden folder, its marker last (a removal cut short is still recognised); warn if it stays."""
    for entry in list(folder.iterdir()) if folder.is_dir() else []:
        if entry.name != MARKER:
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    entry.unlink()
    if folder.is_dir() and {e.name for e in folder.iterdir()} <= {MARKER}:
        with contextlib.suppress(OSError):
            (folder / MARKER).unlink()
        with contextlib.suppress(OSError):
            folder.rmdir()
    if folder.exists():
        msg = f"could not remove {str(folder)!r} (a hidden folder of write_ome_zarr); delete it by hand"
        warnings.warn(msg, PartialOutputWarning, stacklevel=4)


def _is_zarr_store(path: Path) -> bool:
    return path.is_dir() and any((path / name).is_file() for name in ("zarr.json", ".zgroup", ".zarray"))


def _replace(partial: Path, final: Path, overwrite: bool) -> None:
    """Move the finished store into place (the old one, if any, is moved aside first and removed only afterwards)."""
    if not final.exists():
        partial.rename(final)
        return
    if not overwrite:  # created meanwhile by someone else
        msg = f"{str(final)!r} appeared during the write; pass overwrite=True to replace it"
        raise FileExistsError(msg)
    aside = final.parent / f".{final.name}.old-{_token(partial)}"
    aside.mkdir()
    try:
        (aside / MARKER).write_text(json.dumps(_writer_marker()), encoding="utf-8")
        final.rename(aside / OLD_STORE)
    except BaseException:
        shutil.rmtree(aside, ignore_errors=True)  # holds no store: the previous one is still at ``final``
        raise
    try:
        partial.rename(final)
    except BaseException as exc:
        try:
            (aside / OLD_STORE).rename(final)
        except BaseException as again:
            note = f"the previous {str(final)!r} is kept in {str(aside / OLD_STORE)!r}: move it back by hand"
            exc.add_note(f"{note} (moving it back failed: {again!r})")
            raise exc from None
        _remove_folder(aside)
        raise
    _remove_folder(aside)
