"""Session 14, helper fast14: the batch path's per-patch cost (bit-identical fast paths) and bool spec indices."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from lazystack import (
    FixedSampler,
    LazyImageStack,
    RandomSampler,
    StratifiedSampler,
    WholeSampleSampler,
)
from lazystack.sampling.samplers import PatchSpec


def _samplers() -> list[Any]:
    stack = LazyImageStack(np.zeros((2, 64, 64), np.uint8), "SYX")
    random = RandomSampler([stack], 16, 10, seed=3)
    out = [
        random,
        FixedSampler([PatchSpec(0, 0, None, (0, 0), (16, 16))] * 3),
        WholeSampleSampler([stack]),
        StratifiedSampler([stack], [(0, 0, (0, 0), (32, 64)), (0, 1, (0, 0), (64, 64))], 16, 8, seed=1),
    ]
    try:
        from lazystack.torch import ChunkLocalSampler
    except ImportError:  # torch missing
        return out
    return [*out, ChunkLocalSampler(random, [stack], per_chunk=4, window=32)]


@pytest.mark.parametrize("sampler", _samplers(), ids=lambda s: type(s).__name__)
@pytest.mark.parametrize("index", [True, False, np.bool_(True)])
def test_spec_refuses_a_bool_index(sampler: Any, index: Any) -> None:
    # operator.index(True) is 1: before the fix spec(True) silently returned index 1's spec
    with pytest.raises(TypeError, match=rf"{index!r}.*bool.*accepted integers 0 to {len(sampler) - 1}"):
        sampler.spec(index)
    with pytest.raises(TypeError, match=rf"{index!r}.*bool"):
        sampler.epoch_specs(0, [index])
    with pytest.raises(TypeError, match="bool"):
        sampler.epoch_specs(0, np.array([True, False]))
    assert sampler.spec(1) == sampler.epoch_specs(0, [1])[0]  # an int still works
