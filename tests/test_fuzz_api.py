"""Property-based fuzzing of the public API, over every format case of the harness.

Hypothesis draws axes strings, sample indices, channel lists, coords, patch
sizes and view selections -- valid and invalid. Every call must either give
the right answer (checked against numpy) or raise a lazystack error of the
documented kind; anything else (a bare ``IndexError``, ``TypeError``,
``OverflowError``, a wrong value) fails.
"""

from __future__ import annotations

import operator
import os
from typing import Any

import numpy as np
import pytest
from harness import CASE_IDS, CASES, FormatCase, Made, canonical_of
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import lazystack
from lazystack.core import errors

pytestmark = pytest.mark.timeout(180)

#: More examples (and random seeds) with LAZYSTACK_FUZZ_EXAMPLES=500 for a long hunt; CI runs 30, derandomised.
_EXAMPLES = int(os.environ.get("LAZYSTACK_FUZZ_EXAMPLES", "30"))
FUZZ = settings(
    max_examples=_EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    derandomize=_EXAMPLES <= 30,
)
AXES_LETTERS = "STCZYX"


class _Quiet(tuple):
    """``(case, made, stack)`` with a short repr (hypothesis prints the fixture in failure reports)."""

    def __repr__(self) -> str:
        return f"<case {self[0].name}>"

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:
        p.text(repr(self))


@pytest.fixture(scope="module", params=CASES, ids=CASE_IDS)
def case(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[FormatCase, Made, Any]:
    fc: FormatCase = request.param
    made = fc.make(tmp_path_factory.mktemp(fc.name))
    return _Quiet((fc, made, made.open()))


def _call(fn: Any, *args: Any, **kwargs: Any) -> tuple[Any, errors.LazyStackError | None]:
    """``(fn(*args, **kwargs), None)`` or ``(None, the lazystack error)``; any other exception propagates."""
    try:
        return fn(*args, **kwargs), None
    except errors.LazyStackError as exc:
        return None, exc


def _ref_patch(canonical: np.ndarray, s: int, chans: list[int], coords: list[int], size: list[int]) -> np.ndarray:
    """Zero-padded patch by intersecting the patch box with the image (safe for huge coords)."""
    img = canonical[s][chans].astype(np.float32)
    out = np.zeros((len(chans), *size), dtype=np.float32)
    src, dst = [], []
    for c, n, ext in zip(coords, size, img.shape[1:], strict=True):
        lo, hi = max(c, 0), min(c + n, ext)
        if lo >= hi:
            return out
        src.append(slice(lo, hi))
        dst.append(slice(lo - c, hi - c))
    out[(slice(None), *dst)] = img[(slice(None), *src)]
    return out


# -- extract_patch ------------------------------------------------------------------------------------
ints: st.SearchStrategy[Any] = st.one_of(
    st.integers(-5, 80), st.integers(-(2**62), 2**62), st.sampled_from([np.int64(3), np.int32(-1)])
)
channel_arg: st.SearchStrategy[Any] = st.one_of(
    st.none(),
    st.integers(-2, 5),
    st.lists(st.integers(-2, 5), max_size=4),
    st.just([]),
    st.sampled_from(["0", [0.5], [None], (0, 1), np.array([0])]),
)


@given(data=st.data())
@FUZZ
def test_extract_patch_arguments(case: Any, data: st.DataObject) -> None:
    _fc, made, stack = case
    canonical = made.canonical
    n_s, n_c, *spatial = canonical.shape
    nd = len(spatial)
    sample = data.draw(st.one_of(st.integers(-3, n_s + 2), ints), label="sample")
    channels = data.draw(channel_arg, label="channels")
    coord_len = data.draw(st.sampled_from([nd, nd, nd, nd - 1, nd + 1]), label="len(coords)")
    coords = data.draw(
        st.lists(st.one_of(st.integers(-40, 90), ints), min_size=coord_len, max_size=coord_len), label="coords"
    )
    size_len = data.draw(st.sampled_from([nd, nd, nd, nd + 1]), label="len(size)")
    size = data.draw(st.lists(st.integers(-2, 40), min_size=size_len, max_size=size_len), label="size")

    # what the documentation accepts
    try:
        chans = list(range(n_c)) if channels is None else [operator.index(c) for c in np.atleast_1d(channels).tolist()]
        chans_ok = bool(chans) and all(0 <= c < n_c for c in chans) and not isinstance(channels, str)
    except TypeError:
        chans_ok = False
    valid = 0 <= int(sample) < n_s and chans_ok and len(coords) == nd and len(size) == nd and all(n > 0 for n in size)
    got, exc = _call(stack.extract_patch, sample, channels, coords, size)
    if exc is not None:
        assert not valid, f"valid request refused: {exc!r}"
        assert isinstance(exc, (errors.PatchError, errors.SampleIndexError, errors.ChannelIndexError)), repr(exc)
        return
    assert valid, f"invalid request accepted: sample={sample!r} channels={channels!r} coords={coords} size={size}"
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, _ref_patch(canonical, int(sample), chans, [int(c) for c in coords], size))


# -- views ------------------------------------------------------------------------------------------------
def _slice_or_int(n: int) -> st.SearchStrategy[Any]:
    bound = st.one_of(st.none(), st.integers(-n - 3, n + 3))
    return st.one_of(
        st.integers(-n - 2, n + 1),
        st.builds(slice, bound, bound, st.one_of(st.none(), st.integers(-2, 4))),
        st.sampled_from(["0", 1.0, None]),
    )


@given(data=st.data())
@FUZZ
def test_isel_selections(case: Any, data: st.DataObject) -> None:
    _fc, made, stack = case
    axes = stack.original_axes
    ref = made.reference
    # one keyword per axis (the same axis twice in two cases is test_isel_same_axis_twice)
    names = data.draw(
        st.lists(
            st.sampled_from([*axes, *axes.lower(), "Q", "s" if "S" not in axes else "q"]),
            max_size=3,
            unique_by=str.upper,
        )
    )
    indexers = {
        name: data.draw(_slice_or_int(ref.shape[axes.index(name.upper())] if name.upper() in axes else 4), label=name)
        for name in names
    }
    upper = [n.upper() for n in names]

    # predict validity and the expected view from the documentation
    valid = len(set(upper)) == len(upper)
    key: list[Any] = [slice(None)] * len(axes)
    for name, idx in indexers.items():
        a = name.upper()
        if a not in axes:
            valid = False
            continue
        n = ref.shape[axes.index(a)]
        if isinstance(idx, slice):
            step = 1 if idx.step is None else idx.step
            if step <= 0 or len(range(n)[idx]) == 0:
                valid = False
        elif isinstance(idx, int) and not isinstance(idx, bool):
            if a in "YX" or not -n <= idx < n:
                valid = False
        else:
            valid = False
        key[axes.index(a)] = idx
    view, exc = _call(stack.isel, **indexers)
    if exc is not None:
        assert not valid, f"valid selection refused: {indexers} -> {exc!r}"
        assert isinstance(exc, errors.SelectionError), repr(exc)
        return
    assert valid, f"invalid selection accepted: {indexers}"
    view_ref = ref[tuple(key)]
    view_axes = "".join(a for a, k in zip(axes, key, strict=True) if not isinstance(k, int))
    assert view.original_axes == view_axes
    assert view.original_data_shape == view_ref.shape
    canonical = canonical_of(view_ref, view_axes)
    np.testing.assert_array_equal(view.compute(), canonical)
    # a patch of the view at a random place
    n_s, n_c, *spatial = canonical.shape
    s = data.draw(st.integers(0, n_s - 1), label="view sample")
    coords = [data.draw(st.integers(-4, ext), label="view coord") for ext in spatial]
    size = [data.draw(st.integers(1, 12), label="view size") for _ in spatial]
    np.testing.assert_array_equal(
        view.extract_patch(s, None, coords, size), _ref_patch(canonical, s, list(range(n_c)), coords, size)
    )


# -- axes strings at load time -------------------------------------------------------------------------------
axes_strings = st.one_of(
    st.text(alphabet=AXES_LETTERS + AXES_LETTERS.lower() + "QW1 _", min_size=0, max_size=7),
    st.permutations(list("SCZYX")).map("".join),
    st.sampled_from(["", "YX", "XY", "yx", "SYX", "CYX", "ZYX", "TCYX", "SCYX", "SCZYX", "SCTYX", "YYX", "TZYX"]),
    st.sampled_from([None, 3, b"YX", ["Y", "X"]]),
)


@given(axes=axes_strings)
@FUZZ
def test_axes_argument(case: Any, axes: Any) -> None:
    fc, made, _ = case
    letters = axes.upper() if isinstance(axes, str) else None
    well_formed = (
        letters is not None
        and set(letters) <= set(AXES_LETTERS)
        and len(set(letters)) == len(letters)
        and {"Y", "X"} <= set(letters)
    )
    stacks, exc = _call(made.load, made.sources, axes)
    if exc is not None:
        # an ill-formed string is an AxesError; a well-formed one that does not fit the data a shape error
        assert isinstance(exc, (errors.AxesError, errors.ShapeMismatchError)) or not well_formed, repr(exc)
        if not well_formed:
            assert isinstance(exc, errors.AxesError), f"{axes!r}: {exc!r}"
        return
    assert well_formed, f"ill-formed axes {axes!r} accepted by {fc.name}"
    for stack in stacks:
        assert isinstance(stack, lazystack.LazyImageStack)
        n_s, n_c, *spatial = stack.data_shape
        if stack.original_data_shape == made.reference.shape and fc.name not in ("czi", "bioio-ome-tiff"):
            # axes only relabel the dims: the values of the source are unchanged
            np.testing.assert_array_equal(stack.xarray.values, made.reference)
        out = stack.extract_patch(n_s - 1, None, [0] * len(spatial), [3] * len(spatial))
        assert out.shape == (n_c, *([3] * len(spatial)))


def test_isel_same_axis_twice() -> None:
    (stack,) = lazystack.load_arrays(np.zeros((4, 3, 8, 8)), "TCYX")
    for indexers in ({"t": 0, "T": 1}, {"t": slice(1, 3), "T": slice(0, 1)}):
        with pytest.raises(errors.SelectionError, match="T"):
            stack.isel(**indexers)
