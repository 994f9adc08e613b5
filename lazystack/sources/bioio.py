"""Generic bioio back end: any file an installed bioio reader plugin opens.

[`lazystack.load_bioio()`][lazystack.load_bioio] is the escape hatch for microscope formats
without a dedicated loader (ND2, LIF, OME-TIFF through bioio-ome-tiff ...).
It needs ``bioio`` and a plugin for the format (the ``czi`` extra installs
bioio; other plugins are installed separately, e.g. ``bioio-nd2``).

Axes rules
----------
bioio presents every scene as ``TCZYX`` (plus ``S`` for the colour samples
of RGB pixels, which is *not* lazystack's sample axis). The user's axes
apply to those dims, like [`lazystack.load_arrays()`][lazystack.load_arrays] applies them to an
array's dims, with the letters matched by name:

* ``T``, ``C``, ``Z``, ``Y``, ``X`` are the bioio dims of the same name;
* ``C`` takes bioio's colour samples when bioio's ``C`` is a singleton and
  the pixels are RGB (three samples become three channels, in the order
  bioio gives them: **B, G, R for a CZI, R, G, B for a TIFF**);
* ``S`` has no bioio counterpart (scenes are separate stacks): it is a
  singleton axis, accepted so that ``"SCYX"``-style axes keep working;
* every bioio dim the axes do not name must be a singleton; it is dropped.
  A non-singleton dim the axes leave out is a
  [`ShapeMismatchError`][lazystack.ShapeMismatchError] that quotes bioio's dims and
  shape.

One stack per scene, in bioio's scene order; ``stack.source`` is the path
for a single-scene file and ``path@i`` otherwise (``load_bioio("f.lif@2")``
re-creates it). Reads go through the scene's bioio dask array, computed
with the synchronous scheduler: only the chunks a patch overlaps are read,
but a chunk is whatever the plugin makes it (often a whole plane). The
reader pickles as its recipe (path, scene, reader options) and reopens the
file with bioio in the process that unpickles it.
"""

from __future__ import annotations

import hashlib
import math
import os
import threading
from typing import Any

import numpy as np

from ..core.errors import (
    LazyStackError,
    ShapeMismatchError,
    SourceFormatError,
    SourceNotFoundError,
    SourceReadError,
    import_optional,
)
from ..io.chunked import normalize_key
from ..io.handles import check_regular_file, check_stamp, file_stamp, split_source, system_path
from ..io.process import FileManager
from ..io.reader import OpenedSource, Reader
from .czi import rounded_size

__all__ = ["BioioSceneReader", "open_bioio"]

BIOIO_DIMS = "TCZYX"


def _import_bioio() -> Any:
    return import_optional("bioio", "load_bioio", "lazystack[czi] or pip install bioio")


class _SceneHandle:
    """A [`bioio.BioImage`][bioio.BioImage] set to one scene, and its scene's dask array."""

    def __init__(self, path: str, scene: int, options: dict[str, Any]) -> None:
        bioio = _import_bioio()
        try:
            self.image = bioio.BioImage(path, **options)
        except Exception as exc:
            msg = f"bioio cannot reopen {path!r} (changed or removed since it was opened?): {exc}"
            raise SourceFormatError(msg) from exc
        self.image, self.data, _dims = _scene_data(self.image, path, scene)
        self.lock = threading.Lock()

    def close(self) -> None:
        close = getattr(self.image, "close", None)
        if callable(close):
            close()


class BioioSceneReader(Reader):
    """Chunk reader over one scene of a file read by bioio (see [`lazystack.io.process`][lazystack.io.process]).

    Parameters
    ----------
    path : str
        The file.
    scene : int
        bioio scene index.
    options : dict
        Keyword arguments of [`bioio.BioImage`][bioio.BioImage].
    dims : str
        bioio's dims of the scene (``"TCZYX"`` or ``"TCZYXS"``).
    plan : tuple
        Per user axis, the bioio dim it reads (None for a singleton ``S``).
    shape : tuple of int
        Shape in the user's axes.
    dtype : numpy.dtype
        Dtype of the data.
    chunks : tuple of tuple of int
        bioio's chunks, in the user's axes.
    token : str
        Identifies the data.
    stamp : tuple of int, optional
        The file's ``(inode, size, mtime_ns)`` when it was opened (None for a
        folder): every read first checks the file is still that one, since
        bioio's plugins reopen the path (a replaced file was read as new data,
        by the creating process and by dask workers alike).
    """

    shape: tuple[int, ...]
    dtype: np.dtype[Any]
    chunks: Any
    token: str

    def __init__(
        self,
        path: str,
        scene: int,
        options: dict[str, Any],
        dims: str,
        plan: tuple[str | None, ...],
        shape: tuple[int, ...],
        dtype: np.dtype[Any],
        chunks: tuple[tuple[int, ...], ...],
        token: str,
        stamp: tuple[int, int, int] | None = None,
    ) -> None:
        self.path = path
        self.stamp = stamp
        self.scene = scene
        self._dims = dims
        self._plan = plan
        self.shape = tuple(int(n) for n in shape)
        self.dtype = np.dtype(dtype)
        self.chunks = chunks
        self.token = token
        # one handle per process: a forked child never uses its parent's
        self._manager = FileManager(_SceneHandle, path, scene, dict(options))

    def close(self) -> None:
        """Drop this process's open bioio image (it reopens when read again)."""
        self._manager.close()

    def __repr__(self) -> str:
        return f"BioioSceneReader({self.path!r}, scene={self.scene}, shape={self.shape}, dtype={self.dtype})"

    def __getitem__(self, key: Any) -> np.ndarray:
        """Read the region ``key`` (ints and step-1 slices, one per user axis).

        The plugin's read errors become a [`SourceReadError`][lazystack.SourceReadError]
        naming the file and the scene.
        """
        region, drop = normalize_key(key, self.shape)
        if getattr(self, "stamp", None) is not None:  # one stat per read: bioio's own reads cost far more
            what = f"image file {self.path!r} scene {self.scene} (read by bioio)"
            check_stamp(what, self.stamp, check_regular_file(self.path, what, "the file the stack was opened on"))
        bioio_key: list[int | slice] = [0] * len(self._dims)  # bioio dims the axes leave out are singletons
        for r, dim in zip(region, self._plan, strict=True):
            if dim is not None:  # None: the S singleton, no bioio dim
                bioio_key[self._dims.index(dim)] = r
        with self._manager.acquire_context() as handle:
            try:
                block = np.asarray(handle.data[tuple(bioio_key)].compute(scheduler="sync"))
            except LazyStackError:
                raise
            except Exception as exc:  # the plugin's own errors: corrupt data, metadata that lie ...
                msg = (
                    f"bioio cannot read region {tuple(bioio_key)} (dims {self._dims!r}) of {self.path!r} "
                    f"scene {self.scene}: {type(exc).__name__}: {exc}"
                )
                raise SourceReadError(msg) from exc
        kept = [d for d in self._dims if d in self._plan]  # in bioio order
        block = block.transpose([kept.index(d) for d in self._plan if d is not None])
        # the S singleton back in place and the axes given as ints dropped: one reshape (S has size 1)
        return block.reshape([r.stop - r.start for i, r in enumerate(region) if i not in drop])


def _scene_data(image: Any, path: str, scene: int) -> tuple[Any, Any, str]:
    """Set ``image`` to ``scene``; return it, the scene's dask array and its dims.

    A plugin's errors here (metadata that disagree with the pixels, a broken
    scene) become a [`SourceFormatError`][lazystack.SourceFormatError] naming the file and the scene.
    """
    try:
        image.set_scene(scene)
        data = image.dask_data
        dims = "".join(image.dims.order)
        if len(dims) != data.ndim:
            msg = f"dims {dims!r} for an array of {data.ndim} dimensions {tuple(data.shape)}"
            raise ValueError(msg)
    except LazyStackError:
        raise
    except Exception as exc:
        msg = (
            f"bioio cannot present scene {scene} of {path!r} as an array (its metadata may disagree with "
            f"its pixels, e.g. an OME-XML size that does not match the pages): {type(exc).__name__}: {exc}"
        )
        raise SourceFormatError(msg) from exc
    return image, data, dims


def _split_scene(path: str) -> tuple[str, int | None]:
    base, scene, level = split_source(path)
    return (path, None) if scene is None or level is not None else (base, scene)


def _plan(axes: str, dims: str, shape: tuple[int, ...], where: str) -> tuple[str | None, ...]:
    """Which bioio dim each user axis reads (None: the S singleton)."""
    size = dict(zip(dims, shape, strict=True))
    plan: list[str | None] = []
    for a in axes:
        if a == "S":
            plan.append(None)
        elif a == "C" and size.get("S", 1) > 1 and size.get("C", 1) == 1:
            plan.append("S")  # RGB samples become channels
        else:
            plan.append(a)
    used = {d for d in plan if d is not None}
    extra = [d for d in dims if d not in used and size[d] > 1]
    if extra:
        what = ", ".join(f"{d}={size[d]}" for d in extra)
        hint = " (bioio's S is the colour samples of RGB pixels, read them as C)" if "S" in extra else ""
        msg = (
            f"axes {axes!r} do not name {what} of {where}: bioio reads it with dims {dims!r}, shape {shape}{hint}; "
            f"name every non-singleton dim in the axes (letters of {BIOIO_DIMS!r} plus a singleton 'S')"
        )
        raise ShapeMismatchError(msg)
    return tuple(plan)


def open_bioio(path: str, axes: str, reader_options: dict[str, Any]) -> list[OpenedSource]:
    """Open a file with bioio, one [`OpenedSource`][OpenedSource] per scene.

    Parameters
    ----------
    path : str
        The file; ``"file@2"`` selects scene 2 alone.
    axes : str
        Validated axes (see the module docs for how they meet bioio's dims).
    reader_options : dict
        Keyword arguments of [`bioio.BioImage`][bioio.BioImage] (``reader=`` ...).

    Raises
    ------
    MissingDependencyError
        If bioio is not installed.
    SourceNotFoundError
        If the file or the selected scene does not exist.
    SourceFormatError
        If no installed bioio plugin reads the file, or a scene cannot be
        presented as an array (e.g. its metadata disagree with its pixels).
    ShapeMismatchError
        If the axes leave out a non-singleton dim.
    """
    bioio = _import_bioio()
    path, wanted = _split_scene(os.fspath(path))
    if not os.path.exists(path):
        msg = f"file not found: {path!r}"
        raise SourceNotFoundError(msg)
    if not os.path.isdir(path):  # a folder is a format too (OME-Zarr through bioio-ome-zarr)
        check_regular_file(path, "image file", "an image file a bioio plugin reads")  # bioio would block on a FIFO
    try:
        image = bioio.BioImage(path, **reader_options)
        scenes = list(image.scenes)
    except Exception as exc:
        msg = f"no installed bioio reader plugin reads {path!r}: {exc}"
        raise SourceFormatError(msg) from exc
    if wanted is not None and not 0 <= wanted < len(scenes):
        listed = ", ".join(f"{i} ({s})" for i, s in enumerate(scenes))
        msg = f"{path!r} has no scene {wanted}; its scenes: {listed}"
        raise SourceNotFoundError(msg)
    indices = [wanted] if wanted is not None else list(range(len(scenes)))
    st = os.stat(path)
    opened = []
    for i in indices:
        image, data, dims = _scene_data(image, path, i)
        shape = tuple(int(n) for n in data.shape)
        where = f"{path!r} scene {i} ({scenes[i]})"
        plan = _plan(axes, dims, shape, where)
        size = dict(zip(dims, shape, strict=True))
        user_shape = tuple(1 if d is None else size[d] for d in plan)
        chunk_of = dict(zip(dims, data.chunks, strict=True))
        chunks = tuple((1,) if d is None else tuple(int(c) for c in chunk_of[d]) for d in plan)
        source = path if len(scenes) == 1 else f"{path}@{i}"
        text = f"{os.path.realpath(path)}|{st.st_size}|{st.st_mtime_ns}|{i}|{axes}|{sorted(reader_options)}"
        token = "bioio-" + hashlib.sha1(os.fsencode(text)).hexdigest()[:20]
        # an absolute path in the reader (the source keeps the user's spelling): a worker elsewhere reads it too
        # ``link/..`` as the system resolves it; os.getcwd() only for a relative path (a removed working folder)
        absolute = system_path(path if os.path.isabs(path) else os.path.join(os.getcwd(), path))
        stamp = None if os.path.isdir(path) else file_stamp(st)
        reader = BioioSceneReader(
            absolute, i, reader_options, dims, plan, user_shape, data.dtype, chunks, token, stamp=stamp
        )
        coords: dict[str, Any] = {}
        try:
            names = image.channel_names
        except Exception:  # metadata some plugins cannot parse
            names = None
        if "C" in axes and plan[axes.index("C")] == "C" and names is not None and len(names) == size.get("C"):
            coords["C"] = [str(n) for n in names]
        try:
            pps = image.physical_pixel_sizes
            sizes = {a: float(v) for a, v in zip("ZYX", pps, strict=True) if v is not None and a in axes}
            # readers report an absent scaling as 0 (bioio-czi): not a size, every pixel would sit at 0;
            # readers convert units (bioio-czi: metres / 1e-6): rounded as lazystack's CZI reader rounds
            sizes = {a: rounded_size(v) for a, v in sizes.items() if math.isfinite(v) and v > 0}
        except Exception:  # metadata some plugins cannot parse
            sizes = {}
        attrs = {
            "scene": i,
            "scene_name": str(scenes[i]),
            "physical_pixel_sizes": sizes,
            "bioio_dims": dims,
            "bioio_shape": shape,
            "bioio_reader": type(image.reader).__module__,
        }
        opened.append(OpenedSource(reader, source, "bioio", axes, coords=coords, attrs=attrs))
    return opened
