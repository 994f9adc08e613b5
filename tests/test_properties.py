"""Property tests: random axes, shapes, views, coords and channels against an independent reference.

The reference is built with xarray (``isel`` for views, ``stack`` for the
S/T merge) and numpy padding — none of lazystack's own code.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import xarray as xr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reference import canonical_reference, patch_reference
from test_stack import CountingReader

from lazystack import load_arrays

SIZES = {"S": (1, 3), "T": (1, 3), "C": (1, 3), "Z": (1, 4), "Y": (1, 12), "X": (1, 12)}


@st.composite
def stacks_and_views(draw: st.DrawFn) -> tuple[np.ndarray, str, dict[str, Any]]:
    letters = [a for a in "STCZ" if draw(st.booleans())] + ["Y", "X"]
    axes = "".join(draw(st.permutations(letters)))
    shape = tuple(draw(st.integers(*SIZES[a])) for a in axes)
    arr = np.arange(int(np.prod(shape)), dtype=np.int32).reshape(shape) * 7 % 1013
    indexers: dict[str, Any] = {}
    for a, n in zip(axes, shape, strict=True):
        choice = draw(st.sampled_from(["keep", "int", "slice"]))
        if choice == "int" and a not in "YX":
            indexers[a] = draw(st.integers(-n, n - 1))
        elif choice == "slice":
            start = draw(st.integers(0, n - 1))
            stop = draw(st.integers(start + 1, n))
            step = draw(st.integers(1, 3))
            indexers[a] = slice(start, stop, step)
    return arr, axes, indexers


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=stacks_and_views(), data=st.data())
def test_extract_patch_and_views_match_reference(
    case: tuple[np.ndarray, str, dict[str, Any]], data: st.DataObject
) -> None:
    arr, axes, indexers = case
    reader = CountingReader(arr)  # asserts the reader contract: step-1, in-bounds keys
    (stack,) = load_arrays([reader], axes.lower())
    view = stack.isel(**indexers) if indexers else stack

    ref_view = xr.DataArray(arr, dims=list(axes)).isel(**indexers)
    view_axes = "".join(str(d) for d in ref_view.dims)
    ref = canonical_reference(ref_view.values, view_axes)

    assert view.original_axes == view_axes
    assert view.original_data_shape == ref_view.shape
    assert view.data_shape == ref.shape
    np.testing.assert_array_equal(view.compute(), ref)
    np.testing.assert_array_equal(view.data.compute(), ref)
    np.testing.assert_array_equal(view.xarray.values, ref_view.values)
    assert view.xarray.dims == tuple(view_axes)

    n_samples, n_channels, *spatial = ref.shape
    for _ in range(3):
        sample = data.draw(st.integers(0, n_samples - 1))
        channels = data.draw(
            st.none() | st.lists(st.integers(0, n_channels - 1), min_size=1, max_size=4),
        )
        coords = [data.draw(st.integers(-n - 2, n + 2)) for n in spatial]
        size = [data.draw(st.integers(1, n + 4)) for n in spatial]
        patch = view.extract_patch(sample, channels, coords, size)
        assert patch.dtype == np.float32
        np.testing.assert_array_equal(patch, patch_reference(ref, sample, channels, coords, size))
