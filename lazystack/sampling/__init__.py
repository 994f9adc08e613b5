"""Reproducible patch sampling: specs, samplers, tiling and stitching, manifests.

See [`lazystack.sampling.samplers`][lazystack.sampling.samplers] for why an epoch is the same for any
number of workers or ranks.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ..ops.batch import extract_patches
from .coarse import CoarseForegroundSampler, otsu_threshold
from .manifest import ManifestMismatchError, read_manifest, source_identity, write_manifest
from .samplers import (
    FixedSampler,
    ForegroundSampler,
    MaskWeightedSampler,
    PatchSpec,
    RandomSampler,
    Sampler,
    StackGeometry,
    StratifiedSampler,
    WholeSampleSampler,
    check_pairs,
    geometry,
    sampled_stacks,
    spec_rng,
)
from .tiling import GridSampler, Stitcher, Tile, tile_starts

__all__ = [
    "CoarseForegroundSampler",
    "FixedSampler",
    "ForegroundSampler",
    "GridSampler",
    "ManifestMismatchError",
    "MaskWeightedSampler",
    "PatchSpec",
    "RandomSampler",
    "Sampler",
    "StackGeometry",
    "Stitcher",
    "StratifiedSampler",
    "Tile",
    "WholeSampleSampler",
    "check_pairs",
    "geometry",
    "read_manifest",
    "otsu_threshold",
    "read_specs",
    "source_identity",
    "sampled_stacks",
    "spec_rng",
    "tile_starts",
    "write_manifest",
]


def read_specs(
    stacks: Sequence[Any], specs: Sequence[PatchSpec], *, channels: Any = "spec"
) -> list[NDArray[np.float32]]:
    """Read the patches of some specs in one batch ([`lazystack.extract_patches()`][lazystack.extract_patches]).

    Parameters
    ----------
    stacks : sequence of ImageStack
        The stacks the specs index (or stacks paired with them: same samples
        and spatial shapes).
    specs : sequence of PatchSpec
        The patches to read.
    channels : "spec", None or sequence of int
        The channels to read: the spec's (default), all (None), or these.

    Returns
    -------
    list of numpy.ndarray
        One ``float32`` ``C(Z)YX`` patch per spec.
    """
    chosen = specs if isinstance(channels, str) else [s._replace(channels=channels) for s in specs]
    return extract_patches([s.request(stacks) for s in chosen])
