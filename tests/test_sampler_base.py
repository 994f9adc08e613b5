"""The Sampler base class's length contract and the shared positive-size check of the samplers."""

from __future__ import annotations

import numpy as np
import pytest

from lazystack import LazyImageStack
from lazystack.core.errors import PatchError
from lazystack.sampling import CoarseForegroundSampler, MaskWeightedSampler, PatchSpec, Sampler


class _Bare(Sampler):
    def spec(self, index: int, epoch: int = 0) -> PatchSpec:
        return PatchSpec(0, index, None, (0, 0), (1, 1))


def test_len_of_a_subclass_without_length_is_not_implemented() -> None:
    with pytest.raises(NotImplementedError):
        len(_Bare())


def test_len_is_a_subclass_length_and_drives_iteration() -> None:
    sampler = _Bare()
    sampler.length = 3  # type: ignore[attr-defined]
    assert len(sampler) == 3
    assert [s.sample for s in sampler] == [0, 1, 2]


def test_non_positive_cell_and_factor_are_named() -> None:
    image = np.zeros((32, 32), np.uint8)
    image[8:16, 8:16] = 1
    (stack,), (mask,) = [LazyImageStack(image, "YX")], [LazyImageStack(image, "YX")]
    with pytest.raises(PatchError, match=r"cell \(4, 0\) must be positive"):
        MaskWeightedSampler([stack], [mask], 4, 10, cell=(4, 0))
    with pytest.raises(PatchError, match=r"factor \(-2, -2\) must be positive"):
        CoarseForegroundSampler([stack], 4, 10, factor=-2)
