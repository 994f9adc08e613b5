"""Unit tests of the axes model (pure, no I/O)."""

from __future__ import annotations

import itertools

import dask.array as da
import numpy as np
import pytest

from lazystack import AxesError, AxesModel, SampleIndexError, ShapeMismatchError, validate_axes


@pytest.mark.parametrize(
    ("axes", "expected"),
    [("yx", "YX"), ("XYS", "XYS"), ("tczyx", "TCZYX"), ("XCSYT", "XCSYT"), ("sCyX", "SCYX")],
)
def test_validate_axes_accepts_and_upper_cases(axes: str, expected: str) -> None:
    assert validate_axes(axes) == expected


@pytest.mark.parametrize(
    ("axes", "fragment"),
    [
        ("YXQ", "unknown letter(s) 'Q'"),
        ("YYX", "'Y' repeated"),
        ("ZX", "missing 'Y'"),
        ("ZY", "missing 'X'"),
        ("", "must not be empty"),
        ("Y X", "unknown letter(s) ' '"),
        ("YXAB", "'AB'"),
    ],
)
def test_validate_axes_rejects_with_a_message_naming_the_problem(axes: str, fragment: str) -> None:
    with pytest.raises(AxesError, match=r"STCZYX|empty") as info:
        validate_axes(axes)
    assert fragment in str(info.value)
    assert isinstance(info.value, ValueError)


def test_validate_axes_rejects_non_strings() -> None:
    with pytest.raises(AxesError, match="must be a string"):
        validate_axes(["Y", "X"])  # type: ignore[arg-type]


def test_shape_must_match_axes() -> None:
    with pytest.raises(ShapeMismatchError, match=r"'SYX' have 3 letter\(s\) but the data has 2 dimension\(s\)"):
        AxesModel("SYX", (64, 64))


@pytest.mark.parametrize(
    ("axes", "shape", "canonical_axes", "canonical_shape"),
    [
        ("YX", (5, 6), "SCYX", (1, 1, 5, 6)),
        ("XY", (6, 5), "SCYX", (1, 1, 5, 6)),
        ("SYX", (3, 5, 6), "SCYX", (3, 1, 5, 6)),
        ("TCZYX", (4, 2, 7, 5, 6), "SCZYX", (4, 2, 7, 5, 6)),
        ("XCSYT", (6, 2, 3, 5, 4), "SCYX", (12, 2, 5, 6)),
        ("ZYXS", (7, 5, 6, 2), "SCZYX", (2, 1, 7, 5, 6)),
    ],
)
def test_canonical_shape(
    axes: str, shape: tuple[int, ...], canonical_axes: str, canonical_shape: tuple[int, ...]
) -> None:
    m = AxesModel(axes, shape)
    assert m.canonical_axes == canonical_axes
    assert m.canonical_shape == canonical_shape


def test_sample_index_round_trip_s_outer_t_inner() -> None:
    m = AxesModel("TSYX", (4, 3, 2, 2))
    samples = [m.st_to_sample(s, t) for s in range(3) for t in range(4)]
    assert samples == list(range(12))
    for i in range(12):
        s, t = m.sample_to_st(i)
        assert (s, t) == divmod(i, 4)
        assert m.st_to_sample(s, t) == i


@pytest.mark.parametrize("bad", [-1, 12, 100, 1.5, "0", True])
def test_sample_index_out_of_range(bad: object) -> None:
    m = AxesModel("TSYX", (4, 3, 2, 2))
    with pytest.raises(SampleIndexError, match=r"range\(12\)|0 to 11"):
        m.sample_to_st(bad)  # type: ignore[arg-type]


def test_st_to_sample_out_of_range() -> None:
    with pytest.raises(SampleIndexError):
        AxesModel("SYX", (2, 3, 3)).st_to_sample(2, 0)


def test_original_key_in_original_order() -> None:
    m = AxesModel("XCSYT", (6, 2, 3, 5, 4))
    key = m.original_key(7, slice(0, 2), (slice(1, 3), slice(2, 5)))
    s, t = divmod(7, 4)
    assert key == (slice(2, 5), slice(0, 2), s, slice(1, 3), t)


def test_original_key_requires_one_slice_per_spatial_axis() -> None:
    with pytest.raises(ValueError, match="spatial slice"):
        AxesModel("ZYX", (2, 3, 4)).original_key(0, slice(0, 1), (slice(0, 1), slice(0, 1)))


@pytest.mark.parametrize("axes", ["".join(p) for p in itertools.permutations("STCYX")][::7])
def test_to_canonical_numpy_and_dask_agree_with_reference(axes: str) -> None:
    sizes = {"S": 2, "T": 3, "C": 2, "Z": 4, "Y": 5, "X": 6}
    shape = tuple(sizes[a] for a in axes)
    x = np.arange(np.prod(shape)).reshape(shape)
    m = AxesModel(axes, shape)
    # independent reference: loop over every canonical index
    ref = np.empty(m.canonical_shape, x.dtype)
    for s in range(sizes["S"]):
        for t in range(sizes["T"]):
            for c in range(sizes["C"]):
                idx = {"S": s, "T": t, "C": c}
                key = tuple(idx.get(a, slice(None)) for a in axes)
                plane = x[key]  # remaining axes are Y, X in original order
                if axes.index("Y") > axes.index("X"):
                    plane = plane.T
                ref[s * sizes["T"] + t, c] = plane
    np.testing.assert_array_equal(m.to_canonical(x), ref)
    chunks = tuple(1 if a in "ST" else 3 for a in axes)
    d = m.to_canonical(da.from_array(x, chunks=chunks))
    np.testing.assert_array_equal(d.compute(), ref)


def test_to_canonical_dask_keeps_source_chunks_along_t() -> None:
    m = AxesModel("STYX", (3, 8, 10, 10))
    x = da.zeros(m.shape, chunks=(1, 2, 5, 5))
    d = m.to_canonical(x)
    assert d.chunks[0] == (2,) * 12
    assert d.chunks[2:] == ((5, 5), (5, 5))


def test_patch_permutation() -> None:
    assert AxesModel.patch_permutation("XCY") == (1, 2, 0)
    assert AxesModel.patch_permutation("YZX") == (1, 0, 2)
