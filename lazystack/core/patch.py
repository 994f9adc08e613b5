"""Patch geometry: clipping a requested patch to the image and placing it in the output.

``extract_patch`` returns a patch of exactly ``patch_size``; the part of the
request that falls outside the image is zero. This module computes, for one
request, which region of the image to read and where it goes in the output.
"""

from __future__ import annotations

import math
import operator
import os
import sys
from collections.abc import Sequence
from typing import NamedTuple

from .errors import PatchError

__all__ = ["PatchGeometry", "patch_geometry"]


def _physical_memory() -> int:
    """Bytes of physical memory (the address space where the system does not say)."""
    try:
        return min(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), sys.maxsize)
    except (AttributeError, ValueError, OSError):  # no sysconf (Windows) or no such name
        return sys.maxsize


#: the largest float32 patch (one channel) a request may ask for, in bytes (physical memory): a larger one could
#: never be allocated
MAX_PATCH_BYTES = _physical_memory()


class PatchGeometry(NamedTuple):
    """Where a patch request meets the image.

    Attributes
    ----------
    patch_size : tuple of int
        Size of the output patch (spatial dims).
    source : tuple of slice
        Region of the image to read (clipped to the image, step 1).
    target : tuple of slice
        Where that region goes in the output patch.
    empty : bool
        True when the patch does not overlap the image at all.
    """

    patch_size: tuple[int, ...]
    source: tuple[slice, ...]
    target: tuple[slice, ...]
    empty: bool


def _as_int_tuple(name: str, values: Sequence[int]) -> tuple[int, ...]:
    try:
        return tuple(map(operator.index, values))
    except TypeError:
        msg = f"{name} must be a sequence of integers, got {values!r}"
        raise PatchError(msg) from None


def patch_geometry(
    coords: Sequence[int], patch_size: Sequence[int], image_shape: Sequence[int], spatial_axes: str = ""
) -> PatchGeometry:
    """Clip a patch request to an image.

    Parameters
    ----------
    coords : sequence of int
        Top-left corner of the patch in the spatial dims; may be negative or
        beyond the image.
    patch_size : sequence of int
        Size of the patch; every entry must be positive.
    image_shape : sequence of int
        Spatial shape of the image.
    spatial_axes : str, optional
        Names of the spatial dims, used in error messages.

    Raises
    ------
    PatchError
        If the lengths differ from the number of spatial dims, a size is not
        positive, or the patch could never be allocated.
    """
    coords_t = _as_int_tuple("coords", coords)
    size_t = _as_int_tuple("patch_size", patch_size)
    ndim = len(image_shape)
    dims = f" ({spatial_axes})" if spatial_axes else ""
    if len(coords_t) != ndim or len(size_t) != ndim:
        msg = (
            f"coords {coords_t} and patch_size {size_t} must each have {ndim} entries, "
            f"one per spatial dim{dims} of an image of spatial shape {tuple(image_shape)}"
        )
        raise PatchError(msg)
    if any(n <= 0 for n in size_t):
        msg = f"patch_size {size_t} must be positive in every dim{dims}"
        raise PatchError(msg)
    if math.prod(size_t) * 4 > MAX_PATCH_BYTES:  # numpy's MemoryError / "array is too big", or an OOM kill, later
        msg = (
            f"patch_size {size_t}{dims} is too large: a float32 patch of {math.prod(size_t)} pixels per channel "
            f"exceeds this machine's memory ({MAX_PATCH_BYTES} bytes)"
        )
        raise PatchError(msg)
    source: list[slice] = []
    target: list[slice] = []
    for c, n, extent in zip(coords_t, size_t, image_shape, strict=True):
        lo = c if c > 0 else 0
        hi = c + n if c + n < extent else extent
        if hi <= lo:
            empty = tuple(slice(0, 0) for _ in range(ndim))
            return PatchGeometry(size_t, empty, empty, True)
        source.append(slice(lo, hi))
        target.append(slice(lo - c, hi - c))
    return PatchGeometry(size_t, tuple(source), tuple(target), False)
