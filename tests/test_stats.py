"""channel_statistics against numpy on the same data, on the threaded and process schedulers."""

from __future__ import annotations

import json
import pickle

import dask
import dask.array as da
import numpy as np
import pytest
from conftest import raise_if_dask_computes

from lazystack import LazyImageStack, ShapeMismatchError, SourceFormatError, UnsupportedSourceError, load_arrays
from lazystack.ops.stats import ChannelStatistics, _reduce, _select_blocks, channel_statistics

LEVELS = (0.1, 1.0, 25.0, 50.0, 99.0, 99.9)


def canonical_values(stacks: list[LazyImageStack]) -> np.ndarray:
    """All values per channel, ``(C, n)`` float64 -- the numpy reference."""
    parts = []
    for s in stacks:
        x = s.compute()  # canonical SC(Z)YX, read without dask
        parts.append(np.moveaxis(x, 1, 0).reshape(x.shape[1], -1))
    return np.concatenate(parts, axis=1).astype(np.float64)


def check_against_numpy(stats: ChannelStatistics, values: np.ndarray, levels: tuple[float, ...] = LEVELS) -> None:
    np.testing.assert_allclose(stats.mean, values.mean(axis=1), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(stats.std, values.std(axis=1), rtol=1e-10, atol=1e-12)
    np.testing.assert_array_equal(stats.min, values.min(axis=1))
    np.testing.assert_array_equal(stats.max, values.max(axis=1))
    np.testing.assert_array_equal(stats.count, np.full(values.shape[0], values.shape[1]))
    for q in levels:
        ref = np.percentile(values, q, axis=1)
        bound = stats.percentile_error + 1e-9 * np.maximum(1.0, np.abs(ref))
        assert np.all(np.abs(stats.percentile(q) - ref) <= bound), (q, stats.percentile(q), ref, bound)


def _stacks(dtype: np.dtype, rng: np.random.Generator) -> list[LazyImageStack]:
    """Three stacks of different shapes and axes (3 channels), chunks that split channels."""
    dtype = np.dtype(dtype)

    def data(shape: tuple[int, ...]) -> np.ndarray:
        if dtype.kind == "b":
            return rng.random(shape) < 0.3
        if dtype.kind in "iu":
            info = np.iinfo(dtype)
            lo, hi = max(info.min, -30000), min(info.max, 40000)
            return rng.integers(lo, hi, size=shape, endpoint=True).astype(dtype)
        return (rng.normal(5.0, 2.0, size=shape) * rng.choice([1, 100], size=shape)).astype(dtype)

    a = load_arrays([da.from_array(data((3, 3, 40, 50)), chunks=(2, 2, 16, 32))], "TCYX")
    b = load_arrays([da.from_array(data((20, 30, 2, 3)), chunks=(7, 30, 2, 1))], "ZYXC")
    c = load_arrays([data((17, 23, 3))], "YXC")
    return [*a, *b, *c]


@pytest.mark.parametrize("dtype", ["uint8", "int8", "uint16", "int16", "int32", "uint32", "float32", "float64", "bool"])
def test_matches_numpy_for_every_dtype(dtype: str) -> None:
    stacks = _stacks(np.dtype(dtype), np.random.default_rng(7))
    stats = channel_statistics(stacks, percentiles=LEVELS)
    check_against_numpy(stats, canonical_values(stacks))
    if np.dtype(dtype).kind in "biu" and np.all(stats.max - stats.min + 1 <= 65536):  # exact integer percentiles
        assert np.all(stats.percentile_error == 0)
    else:  # floats, or integers spanning more values than bins
        assert np.all(stats.percentile_error > 0)
        np.testing.assert_allclose(stats.percentile_error, (stats.max - stats.min) / 65536)


def test_mixed_dtypes_and_views() -> None:
    rng = np.random.default_rng(3)
    u16 = rng.integers(0, 60000, (4, 2, 30, 40)).astype(np.uint16)
    f32 = rng.normal(0, 1, (2, 25, 35)).astype(np.float32)
    (a,) = load_arrays([da.from_array(u16, chunks=(1, 1, 15, 20))], "TCYX")
    (b,) = load_arrays([f32], "CYX")
    view = a.isel(T=slice(1, 4, 2), X=slice(3, 30))
    stacks = [view, b]
    check_against_numpy(channel_statistics(stacks, percentiles=LEVELS), canonical_values(stacks))


def test_32_bit_integers_within_bins_are_exact() -> None:
    rng = np.random.default_rng(8)
    x = rng.integers(10**9, 10**9 + 5000, (3, 2, 30, 30)).astype(np.uint32)
    stacks = load_arrays([da.from_array(x, chunks=(1, 1, 30, 15))], "TCYX")
    stats = channel_statistics(stacks, percentiles=LEVELS)
    assert np.all(stats.percentile_error == 0)
    values = canonical_values(stacks)
    for q in LEVELS:
        np.testing.assert_allclose(stats.percentile(q), np.percentile(values, q, axis=1), rtol=1e-15)


def test_wide_integer_range_is_approximate_within_bound() -> None:
    rng = np.random.default_rng(5)
    x = rng.integers(-(2**40), 2**40, (2, 2, 30, 30), dtype=np.int64)
    stacks = load_arrays([da.from_array(x, chunks=(1, 1, 30, 15))], "TCYX")
    stats = channel_statistics(stacks, percentiles=LEVELS, bins=1000)
    values = canonical_values(stacks)
    np.testing.assert_allclose(stats.percentile_error, (values.max(1) - values.min(1)) / 1000)
    check_against_numpy(stats, values)


@pytest.mark.parametrize("bins", [16, 257, 4096])
def test_float_percentile_bound_holds_for_any_bin_count(bins: int) -> None:
    rng = np.random.default_rng(bins)
    x = rng.lognormal(0, 2, (6, 1, 50, 50)).astype(np.float32)  # skewed: many values per bin
    stacks = load_arrays([da.from_array(x, chunks=(1, 1, 25, 50))], "SCYX")
    stats = channel_statistics(stacks, percentiles=(0, 5, 33.3, 50, 95, 100), bins=bins)
    values = canonical_values(stacks)
    check_against_numpy(stats, values, levels=(0, 5, 33.3, 50, 95, 100))
    # the extremes are exact
    np.testing.assert_array_equal(stats.percentile(0), values.min(1))
    np.testing.assert_array_equal(stats.percentile(100), values.max(1))


def test_mean_and_std_are_numerically_stable() -> None:
    # a large offset and a small spread: a float32 sum of squares would lose every digit
    rng = np.random.default_rng(11)
    x = (1e7 + rng.normal(0, 0.5, (8, 1, 64, 64))).astype(np.float32)
    stacks = load_arrays([da.from_array(x, chunks=(1, 1, 16, 16))], "TCYX")
    stats = channel_statistics(stacks, percentiles=())
    ref = x.astype(np.float64)
    np.testing.assert_allclose(stats.mean, [ref.mean()], rtol=1e-14)
    np.testing.assert_allclose(stats.std, [ref.std()], rtol=1e-9)
    with np.errstate(invalid="ignore"):
        naive = np.sqrt(np.mean(x * x, dtype=np.float32) - np.mean(x, dtype=np.float32) ** 2)
    assert not abs(float(naive) - ref.std()) < 0.1  # the naive formula really is wrong here (even NaN)


def test_nan_and_inf_are_ignored() -> None:
    rng = np.random.default_rng(2)
    x = rng.normal(0, 1, (3, 2, 20, 20))
    x[0, 0, :5] = np.nan
    x[1, 1, 3, 3] = np.inf
    x[2, 0, 4, 4] = -np.inf
    (stack,) = load_arrays([da.from_array(x, chunks=(1, 1, 10, 10))], "TCYX")
    stats = channel_statistics(stack, percentiles=(50,))
    flat = np.moveaxis(x, 1, 0).reshape(2, -1)
    for c in range(2):
        v = flat[c][np.isfinite(flat[c])]
        assert stats.count[c] == v.size
        np.testing.assert_allclose(stats.mean[c], v.mean(), rtol=1e-12)
        np.testing.assert_allclose(stats.std[c], v.std(), rtol=1e-10)
        assert abs(stats.percentile(50)[c] - np.percentile(v, 50)) <= stats.percentile_error[c]


def test_all_nan_channel_gives_nan() -> None:
    x = np.full((2, 2, 4, 4), np.nan, dtype=np.float32)
    x[:, 1] = 3.0
    stats = channel_statistics(load_arrays([x], "TCYX"), percentiles=(50,))
    assert stats.count.tolist() == [0, 32]
    assert np.isnan(stats.mean[0])
    assert np.isnan(stats.percentile(50)[0])
    assert stats.mean[1] == 3.0
    assert stats.std[1] == 0.0
    assert stats.percentile(50)[1] == 3.0


def test_single_stack_and_constant_data() -> None:
    x = np.full((5, 7), 42, dtype=np.int32)
    stats = channel_statistics(load_arrays([x], "YX")[0], percentiles=(1, 99))
    assert stats.n_channels == 1
    assert stats.n_stacks == 1
    assert stats.mean.tolist() == [42.0]
    assert stats.std.tolist() == [0.0]
    assert stats.percentile(1).tolist() == [42.0]
    assert stats.percentile(99).tolist() == [42.0]


def test_sample_fraction_is_reproducible_and_reads_a_subset() -> None:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 1000, (16, 1, 32, 32)).astype(np.uint16)
    (stack,) = load_arrays([da.from_array(x, chunks=(1, 1, 32, 32))], "TCYX")  # 16 chunks of 1024 values
    a = channel_statistics(stack, sample_fraction=0.25, seed=1)
    b = channel_statistics(stack, sample_fraction=0.25, seed=1)
    c = channel_statistics(stack, sample_fraction=0.25, seed=2)
    assert a.count.tolist() == [4 * 1024]
    np.testing.assert_array_equal(a.mean, b.mean)
    assert a.to_dict() == b.to_dict()
    assert a.mean[0] != c.mean[0]
    assert a.sample_fraction == 0.25
    # the estimate is numpy's statistic over exactly the sampled chunks
    picked = np.sort(np.random.default_rng(1).choice(16, size=4, replace=False))
    ref = x[picked].astype(np.float64)
    np.testing.assert_allclose(a.mean, [ref.mean()], rtol=1e-12)
    np.testing.assert_allclose(a.percentile(50), [np.percentile(ref, 50)])
    full = channel_statistics(stack, sample_fraction=1.0)
    np.testing.assert_allclose(full.mean, [x.mean(dtype=np.float64)], rtol=1e-12)


def test_sample_fraction_is_taken_over_all_chunks_of_all_stacks() -> None:
    stacks = load_arrays([np.full((4, 4), v, dtype=np.uint8) for v in range(10)], "YX")  # one chunk each
    stats = channel_statistics(stacks, sample_fraction=0.3, seed=5)
    assert stats.count.tolist() == [3 * 16]
    picked = np.sort(np.random.default_rng(5).choice(10, size=3, replace=False))
    assert stats.mean.tolist() == [picked.mean()]
    tiny = channel_statistics(stacks, sample_fraction=0.001)
    assert tiny.count.tolist() == [16]  # at least one chunk


def test_channel_count_mismatch_is_a_clear_error() -> None:
    a = load_arrays([np.zeros((2, 8, 8))], "CYX")
    b = load_arrays([np.zeros((3, 8, 8))], "CYX")
    with pytest.raises(ShapeMismatchError, match=r"same number of channels.*\[2, 3\]"):
        channel_statistics(a + b)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"percentiles": (50, 101)}, "between 0 and 100"),
        ({"percentiles": "abc"}, "between 0 and 100"),
        ({"sample_fraction": 0.0}, r"sample_fraction must be in \(0, 1\]"),
        ({"sample_fraction": 1.5}, r"sample_fraction must be in \(0, 1\]"),
        ({"bins": 1}, "bins must be"),
    ],
)
def test_bad_options_are_rejected(kwargs: dict, match: str) -> None:
    stacks = load_arrays([np.zeros((8, 8))], "YX")
    with pytest.raises(ValueError, match=match):
        channel_statistics(stacks, **kwargs)


def test_bad_inputs_are_rejected() -> None:
    with pytest.raises(ValueError, match="no stacks"):
        channel_statistics([])
    with pytest.raises(UnsupportedSourceError, match="expects lazystack stacks"):
        channel_statistics([np.zeros((4, 4))])
    with pytest.raises(SourceFormatError, match="complex"):  # refused where every stack is built
        load_arrays([np.zeros((4, 4), dtype=np.complex64)], "YX")


def test_to_dict_is_json_and_round_trips() -> None:
    rng = np.random.default_rng(1)
    stacks = load_arrays([rng.normal(size=(2, 9, 9)).astype(np.float32)], "CYX")
    stats = channel_statistics(stacks)
    text = stats.to_json()
    back = ChannelStatistics.from_dict(json.loads(text))
    for name in ("mean", "std", "min", "max", "count", "percentile_error"):
        np.testing.assert_array_equal(getattr(back, name), getattr(stats, name))
    assert back.percentile_levels == stats.percentile_levels == (0.1, 1.0, 50.0, 99.0, 99.9)
    np.testing.assert_array_equal(back.percentile(99.9), stats.percentile(99.9))
    with pytest.raises(KeyError, match="available levels"):
        stats.percentile(42)
    assert "ChannelStatistics C=2" in repr(stats)


def test_building_the_graph_computes_nothing() -> None:
    stacks = load_arrays([da.from_array(np.zeros((4, 2, 16, 16)), chunks=(1, 1, 8, 8))], "TCYX")
    with raise_if_dask_computes():
        blocks = _select_blocks(stacks, None, 0)
        graph = _reduce(blocks, lambda *a: {}, 2, split_every=8)
    assert len(blocks[0]) == 4 * 2 * 2 * 2
    assert graph is not None


def _file_stacks(tmp_path, n: int, shape=(2, 3, 64, 64), chunks=(1, 1, 32, 64)) -> list[LazyImageStack]:
    from benchmarks.bench_stats import NpyChunkReader

    rng = np.random.default_rng(0)
    stacks = []
    for i in range(n):
        path = tmp_path / f"s{i}.npy"
        np.save(path, rng.integers(0, 4096, shape).astype(np.uint16))
        stacks.append(LazyImageStack(NpyChunkReader(str(path), chunks=chunks), "TCYX", source=str(path)))
    return stacks


def test_graph_over_100_file_backed_stacks_carries_no_pixel_data(tmp_path) -> None:
    import cloudpickle

    stacks = _file_stacks(tmp_path, 100)
    pixel_bytes = sum(s.nbytes for s in stacks)
    with raise_if_dask_computes(), dask.config.set({"array.chunk-size": "1B"}):  # one task per storage chunk
        graph = _reduce(_select_blocks(stacks, None, 0), lambda *a: {}, 3, split_every=8)
        tasks = dict(graph.__dask_graph__())
    size = len(cloudpickle.dumps(tasks))
    n_chunks = 100 * 2 * 3 * 2
    assert n_chunks <= len(tasks) < 1.3 * n_chunks  # one task per chunk, plus the merge tree and the 100 stacks
    assert size < 1_000_000, size
    assert size < pixel_bytes / 5

    # the memmap-backed stacks of load_arrays pickle small too (no pixel data)
    path = tmp_path / "m.npy"
    np.save(path, np.zeros((4, 256, 256), np.uint16))
    (mm,) = load_arrays([np.load(path, mmap_mode="r")], "TYX")
    assert len(pickle.dumps(mm)) < 10_000


def test_file_backed_stacks_match_numpy(tmp_path) -> None:
    stacks = _file_stacks(tmp_path, 4)
    check_against_numpy(channel_statistics(stacks, percentiles=LEVELS), canonical_values(stacks))


@pytest.mark.parametrize("scheduler", ["threads", "processes", "synchronous"])
def test_every_local_scheduler_gives_the_same_result(tmp_path, scheduler: str) -> None:
    stacks = _file_stacks(tmp_path, 3)
    rng = np.random.default_rng(4)
    floats = load_arrays([da.from_array(rng.normal(size=(2, 3, 20, 20)), chunks=(1, 2, 10, 20))], "TCYX")
    with dask.config.set(scheduler=scheduler):
        ints = channel_statistics(stacks, percentiles=LEVELS)
        fl = channel_statistics(floats, percentiles=LEVELS)
    check_against_numpy(ints, canonical_values(stacks))
    check_against_numpy(fl, canonical_values(floats))


def test_progress_bar_is_off_by_default_and_on_when_asked(capsys) -> None:
    stacks = load_arrays([np.zeros((2, 8, 8), np.uint8)], "TYX")
    channel_statistics(stacks)
    assert "Completed" not in capsys.readouterr().err
    channel_statistics(stacks, progress=True)
    assert "100% Completed" in capsys.readouterr().err


# -- stacks from the file-format back ends (run once the back ends are present) -------------


@pytest.mark.parametrize("scheduler", ["threads", "processes"])
def test_tiff_stacks_match_numpy(tmp_path, scheduler: str) -> None:
    pytest.importorskip("lazystack.sources.tiff")
    import tifffile

    from lazystack import load_tiffs

    rng = np.random.default_rng(0)
    a = rng.integers(0, 60000, (3, 2, 96, 80)).astype(np.uint16)
    b = rng.normal(0, 10, (2, 64, 64)).astype(np.float32)
    tifffile.imwrite(tmp_path / "a.tif", a, tile=(32, 32), photometric="minisblack")
    tifffile.imwrite(tmp_path / "b.tif", b)
    sa = load_tiffs([tmp_path / "a.tif"], "TCYX")
    sb = load_tiffs([tmp_path / "b.tif"], "CYX")
    ref_a = np.moveaxis(tifffile.imread(tmp_path / "a.tif"), 1, 0).reshape(2, -1).astype(np.float64)
    ref_b = tifffile.imread(tmp_path / "b.tif").reshape(2, -1).astype(np.float64)
    with dask.config.set(scheduler=scheduler):
        stats_a, stats_b = channel_statistics(sa), channel_statistics(sb)
    check_against_numpy(stats_a, ref_a, levels=(0.1, 1, 50, 99, 99.9))
    check_against_numpy(stats_b, ref_b, levels=(0.1, 1, 50, 99, 99.9))


@pytest.mark.parametrize("scheduler", ["threads", "processes"])
def test_zarr_stacks_match_numpy(tmp_path, scheduler: str) -> None:
    pytest.importorskip("lazystack.sources.zarr")
    import zarr

    from lazystack import load_zarrs

    rng = np.random.default_rng(0)
    data = rng.integers(-1000, 1000, (4, 2, 50, 60)).astype(np.int16)
    arr = zarr.create_array(str(tmp_path / "x.zarr"), shape=data.shape, chunks=(1, 1, 25, 30), dtype=data.dtype)
    arr[:] = data
    stacks = load_zarrs([tmp_path / "x.zarr"], "TCYX")
    ref = np.moveaxis(zarr.open_array(str(tmp_path / "x.zarr"), mode="r")[:], 1, 0).reshape(2, -1).astype(float)
    with dask.config.set(scheduler=scheduler):
        stats = channel_statistics(stacks)
    check_against_numpy(stats, ref, levels=(0.1, 1, 50, 99, 99.9))


CZI_FILES = ["DAPI_GFP.czi", "CellDivision_T3_Z5_CH2_X240_Y170_comp1.czi", "mosaic_test.czi", "WellD6-7_S2.czi"]


@pytest.mark.parametrize(
    ("name", "scheduler"), [(n, "threads") for n in CZI_FILES] + [("CellDivision_T3_Z5_CH2_X240_Y170.czi", "processes")]
)
def test_czi_stacks_match_numpy(shared_czi_dir, name: str, scheduler: str) -> None:
    pytest.importorskip("lazystack.sources.czi")
    from lazystack import load_czis

    path = shared_czi_dir / name
    if not path.exists():
        pytest.skip(f"{path} is absent")
    stacks = load_czis([path], "SCYX")  # every scene
    with dask.config.set(scheduler=scheduler):
        stats = channel_statistics(stacks, percentiles=(0.1, 1, 50, 99, 99.9))
    check_against_numpy(stats, canonical_values(stacks), levels=(0.1, 1, 50, 99, 99.9))
    assert np.all(stats.percentile_error == 0)  # 8/16-bit data: exact


# -- normalised views ---------------------------------------------------------------------------


def test_normalized_zscore_patches_and_dask_match_numpy() -> None:
    from lazystack.ops.normalize import normalized

    rng = np.random.default_rng(9)
    x = rng.integers(0, 4000, (3, 2, 40, 30)).astype(np.uint16)
    (stack,) = load_arrays([da.from_array(x, chunks=(1, 1, 20, 30))], "TCYX")
    stats = channel_statistics(stack)
    with raise_if_dask_computes(), dask.config.set({"array.chunk-size": "1B"}):  # no merging of chunks
        norm = normalized(stack, stats)
        assert norm.data.chunks == stack.data.chunks
    mean, std = x.mean(axis=(0, 2, 3)), x.std(axis=(0, 2, 3))
    expected = ((x - mean[None, :, None, None]) / std[None, :, None, None]).astype(np.float32)
    assert norm.data_dtype == np.float32
    np.testing.assert_allclose(norm.data.compute(), expected, rtol=1e-5, atol=1e-6)
    patch = norm.extract_patch(2, [1], (-3, 10), (8, 8))
    ref = np.zeros((1, 8, 8), np.float32)
    ref[0, 3:] = expected[2, 1, 0:5, 10:18]
    np.testing.assert_allclose(patch, ref, rtol=1e-5, atol=1e-6)
    assert norm.attrs["normalization"]["method"] == "zscore"
    assert norm.source == stack.source
    assert norm.original_axes == "TCYX"


def test_normalized_view_minmax_percentile_and_clip() -> None:
    from lazystack.ops.normalize import normalized

    rng = np.random.default_rng(10)
    x = rng.normal(100, 20, (4, 3, 16, 20)).astype(np.float32)
    stack = LazyImageStack(x, "TCYX", coords={"C": ["a", "b", "c"]})
    view = stack.isel(C=2, T=slice(1, 4))
    stats = channel_statistics(view, percentiles=(1, 99))
    v = x[1:4, 2].astype(np.float64)
    mm = normalized(view, stats, method="minmax")
    np.testing.assert_allclose(mm.compute()[:, 0], (v - v.min()) / (v.max() - v.min()), rtol=1e-5, atol=1e-6)
    pc = normalized(view, stats, method="percentile", lower=1, upper=99, clip=(0.0, 1.0))
    lo, hi = stats.percentile(1)[0], stats.percentile(99)[0]
    np.testing.assert_allclose(pc.compute()[:, 0], np.clip((v - lo) / (hi - lo), 0, 1), rtol=1e-5, atol=1e-6)
    two = normalized(stack.isel(C=slice(1, 3)), channel_statistics(stack.isel(C=slice(1, 3))))
    assert two.channel_names == ["b", "c"]
    np.testing.assert_allclose(two.compute()[:, 1], (x[:, 2] - x[:, 2].mean()) / x[:, 2].std(), rtol=1e-4, atol=1e-5)


def test_normalized_errors_and_degenerate_channels() -> None:
    from lazystack.ops.normalize import normalized

    x = np.zeros((2, 8, 8), np.uint8)
    x[1] = np.arange(64).reshape(8, 8)
    (stack,) = load_arrays([x], "CYX")
    stats = channel_statistics(stack, percentiles=(50,))
    norm = normalized(stack, stats.to_dict())  # a dict (e.g. read from JSON) works too
    np.testing.assert_array_equal(norm.compute()[0, 0], np.zeros((8, 8)))  # zero std: only centred
    with pytest.raises(ShapeMismatchError, match="statistics have 2 channel"):
        normalized(stack.isel(C=0), stats)
    with pytest.raises(ValueError, match="accepted: zscore, minmax, percentile"):
        normalized(stack, stats, method="robust")
    with pytest.raises(KeyError, match="available levels"):
        normalized(stack, stats, method="percentile", lower=1, upper=99)
    with pytest.raises(ValueError, match="clip must be"):
        normalized(stack, stats, clip=(1.0, 0.0))


def test_normalized_stack_pickles_as_a_recipe(tmp_path) -> None:
    from lazystack.ops.normalize import normalized

    (stack,) = _file_stacks(tmp_path, 1, shape=(2, 2, 256, 256))
    norm = normalized(stack, channel_statistics(stack))
    blob = pickle.dumps(norm)
    assert len(blob) < 20_000 < stack.nbytes
    back = pickle.loads(blob)
    np.testing.assert_array_equal(back.compute(), norm.compute())


class DaskOnlyStack:
    """A stack-like with only the protocol members and ``.data`` (no chunk reader)."""

    source = "dask-only"

    def __init__(self, x: da.Array) -> None:
        self.data = x
        self.data_shape = x.shape
        self.data_dtype = x.dtype


def test_stacks_without_a_reader_use_their_dask_array() -> None:
    rng = np.random.default_rng(12)
    x = rng.integers(0, 500, (3, 2, 20, 20)).astype(np.int16)
    other = DaskOnlyStack(da.from_array(x, chunks=(1, 1, 10, 20)))
    (lazy,) = load_arrays([x[:1]], "SCYX")
    stats = channel_statistics([other, lazy], percentiles=(1, 50))
    flat = np.concatenate([np.moveaxis(x, 1, 0).reshape(2, -1), np.moveaxis(x[:1], 1, 0).reshape(2, -1)], axis=1)
    check_against_numpy(stats, flat.astype(np.float64), levels=(1, 50))
