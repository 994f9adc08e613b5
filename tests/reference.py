"""Independent references for tests: built with xarray and numpy, not with lazystack's code."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import xarray as xr


def canonical_reference(arr: np.ndarray, axes: str) -> np.ndarray:
    """Canonical ``SC(Z)YX`` array of ``arr`` (axes ``axes``), via xarray's ``stack``."""
    axes = axes.upper()
    x = xr.DataArray(np.asarray(arr), dims=list(axes))
    for a in "STC":
        if a not in axes:
            x = x.expand_dims(a)
    spatial = ["Z", "Y", "X"] if "Z" in axes else ["Y", "X"]
    x = x.transpose("S", "T", "C", *spatial)
    x = x.stack(sample=("S", "T"))  # S outer, T inner; new dim goes last
    return x.transpose("sample", "C", *spatial).values


def patch_reference(
    canonical: np.ndarray,
    sample: int,
    channels: Sequence[int] | None,
    coords: Sequence[int],
    size: Sequence[int],
) -> np.ndarray:
    """Zero-padded float32 patch cut from a canonical array by padding the whole image."""
    img = canonical[sample]
    if channels is not None:
        img = img[list(channels)]
    pad = [(0, 0)] + [(max(0, -c) + n, max(0, c + n) + n) for c, n in zip(coords, size, strict=True)]
    padded = np.pad(img.astype(np.float32), pad)
    key = tuple(
        slice(c + pad[i + 1][0], c + pad[i + 1][0] + n) for i, (c, n) in enumerate(zip(coords, size, strict=True))
    )
    return padded[(slice(None), *key)]
