"""The cheap half of the reader contract: what the stack and the loaders need (no xarray, no dask).

The contract itself is described in :mod:`lazystack.io.handles`, which
re-exports these names beside the per-process file manager.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["OpenedSource", "is_array_like", "read_numpy", "reader_chunks", "reader_token"]


def is_array_like(obj: object) -> bool:
    """Return whether ``obj`` has ``shape``, ``dtype`` and ``__getitem__``."""
    return all(hasattr(obj, a) for a in ("shape", "dtype", "__getitem__")) and hasattr(obj.shape, "__len__")  # type: ignore[attr-defined]


def _is_dask_array(x: object) -> bool:
    return type(x).__module__.startswith("dask.") and hasattr(x, "dask")


def read_numpy(reader: Any, key: tuple[int | slice, ...]) -> np.ndarray:
    """Read ``reader[key]`` as a numpy array (computing a dask result in place).

    Parameters
    ----------
    reader : array-like
        Chunk reader or any array-like.
    key : tuple of int or slice
        Region in the reader's axes.

    Returns
    -------
    numpy.ndarray
    """
    out = reader[key]
    if _is_dask_array(out):
        out = out.compute(scheduler="sync")
    return np.asarray(out)


def reader_chunks(reader: Any) -> tuple[tuple[int, ...], ...]:
    """dask-style chunks of a reader: its own, else dask's ``"auto"`` choice.

    Parameters
    ----------
    reader : array-like
        A chunk reader, numpy / dask / zarr array, h5py dataset ...

    Returns
    -------
    tuple of tuple of int
    """
    from dask.array.core import normalize_chunks  # dask.array loads on first use, not with the stack

    shape = tuple(int(n) for n in reader.shape)
    chunks = getattr(reader, "chunks", None)
    if chunks is None or callable(chunks):
        chunks = "auto"
    return normalize_chunks(chunks, shape=shape, dtype=np.dtype(reader.dtype))


def reader_token(reader: Any) -> str:
    """A name for the reader's data that never hashes pixel data.

    A reader's own ``token`` wins; otherwise a random one (unique per stack,
    kept when the stack is pickled).
    """
    token = getattr(reader, "token", None)
    return str(token) if token else uuid.uuid4().hex


@dataclass
class OpenedSource:
    """What a format back end hands the loader for one stack.

    Attributes
    ----------
    reader : array-like
        Chunk reader over the source's own axes (see the module docs).
    source : str
        Path or URI that re-creates exactly this stack (``path@series``,
        ``file.czi@2``, ``file://store.zarr/0`` ...).
    format : str
        Format name shown to users.
    axes : str
        Axes of ``reader`` (normally the user's axes, checked against the
        file's own).
    coords : dict
        Coordinates per axis letter (channel names ...).
    attrs : dict
        ``physical_pixel_sizes``, ``scene``, ``scene_name``, ``series``,
        ``level`` ... as the source declares them.
    """

    reader: Any
    source: str
    format: str
    axes: str
    coords: dict[str, Any] = field(default_factory=dict)
    attrs: dict[str, Any] = field(default_factory=dict)
