"""Session 14's fixes of session 13's left-alone list (helper fix14).

Each test fails without its fix; every reference is independent of lazystack's
readers (numpy slicing, tifffile's own reader).
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile
import zarr
from ome_files import write_multifile_ome

from lazystack import (
    GridSampler,
    LazyImageStack,
    SourceReadError,
    Stitcher,
    chunk_cache_size,
    load_tiffs,
    write_ome_zarr,
)


# -- 1. a multi-file OME-TIFF whose other file changes while a stack is open ----------------------------------------
def _rewrite_in_place(path: Path, data: np.ndarray) -> None:
    """Overwrite the pixel bytes of an uncompressed single-strip-per-plane TIFF in place (same inode, same size)."""
    with tifffile.TiffFile(path) as tif:
        offsets = [(int(p.dataoffsets[0]), int(p.databytecounts[0])) for p in tif.pages]
    with open(path, "r+b") as fh:
        for (offset, count), plane in zip(offsets, data, strict=True):
            raw = np.ascontiguousarray(plane, dtype="<u2").tobytes()
            assert len(raw) == count
            fh.seek(offset)
            fh.write(raw)
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # a coarse clock could keep the old mtime


def _own_planes(path: Path) -> np.ndarray:
    """The planes stored in ``path`` itself (``tifffile.imread`` would read the whole multi-file series)."""
    with tifffile.TiffFile(path) as tif:
        return np.stack([page.asarray() for page in tif.pages])


def test_multifile_ome_other_file_rewritten_in_place_while_open_is_detected(tmp_path: Path) -> None:
    data = write_multifile_ome(tmp_path, 3, planes=2, shape=(16, 24))
    (stack,) = load_tiffs([tmp_path / "m_0.ome.tif"], "ZYX")
    with chunk_cache_size(0):
        first = stack.extract_patch(0, None, (2, 0, 0), (1, 16, 24))  # plane 2: in m_1
        np.testing.assert_array_equal(first[0, 0], data[2])
        _rewrite_in_place(tmp_path / "m_1.ome.tif", data[2:4] + 1)
        with pytest.raises(SourceReadError, match=r"m_1\.ome\.tif.*changed since the stack was opened"):
            stack.extract_patch(0, None, (2, 0, 0), (1, 16, 24))
        # the master's planes and the third file are unchanged and still read
        np.testing.assert_array_equal(stack.extract_patch(0, None, (5, 0, 0), (1, 16, 24))[0, 0], data[5])


def test_multifile_ome_other_file_replaced_before_its_first_read_is_detected(tmp_path: Path) -> None:
    data = write_multifile_ome(tmp_path, 3, planes=2, shape=(16, 24))
    (stack,) = load_tiffs([tmp_path / "m_0.ome.tif"], "ZYX")
    replacement = tmp_path / "new.ome.tif"
    write_multifile_ome(tmp_path / "other", 3, planes=2, shape=(16, 24))
    os.replace(tmp_path / "other" / "m_2.ome.tif", replacement)
    os.replace(replacement, tmp_path / "m_2.ome.tif")  # renamed over: a new inode
    changed = r"m_2\.ome\.tif.*changed since the stack was opened"
    with chunk_cache_size(0), pytest.raises(SourceReadError, match=changed):
        stack.extract_patch(0, None, (4, 0, 0), (1, 16, 24))
    del data


def test_multifile_ome_other_file_changed_before_a_pickled_stack_is_read_is_detected(tmp_path: Path) -> None:
    write_multifile_ome(tmp_path, 2, planes=2, shape=(16, 24))
    (stack,) = load_tiffs([tmp_path / "m_0.ome.tif"], "ZYX")
    blob = pickle.dumps(stack)
    other = _own_planes(tmp_path / "m_1.ome.tif")
    _rewrite_in_place(tmp_path / "m_1.ome.tif", other + 7)
    again = pickle.loads(blob)
    changed = r"m_1\.ome\.tif.*changed since the stack was opened"
    with chunk_cache_size(0), pytest.raises(SourceReadError, match=changed):
        again.extract_patch(0, None, (3, 0, 0), (1, 16, 24))


def test_multifile_ome_reloaded_after_another_file_changed_reads_the_new_pixels_through_the_cache(
    tmp_path: Path,
) -> None:
    data = write_multifile_ome(tmp_path, 2, planes=2, shape=(16, 24))
    (stack,) = load_tiffs([tmp_path / "m_0.ome.tif"], "ZYX")
    np.testing.assert_array_equal(stack.extract_patch(0, None, (2, 0, 0), (1, 16, 24))[0, 0], data[2])  # cached
    _rewrite_in_place(tmp_path / "m_1.ome.tif", data[2:4] + 3)
    (fresh,) = load_tiffs([tmp_path / "m_0.ome.tif"], "ZYX")
    expected = _own_planes(tmp_path / "m_1.ome.tif")[0]
    np.testing.assert_array_equal(expected, data[2] + 3)
    np.testing.assert_array_equal(fresh.extract_patch(0, None, (2, 0, 0), (1, 16, 24))[0, 0], expected)
    assert fresh.data.name != stack.data.name  # no dask key shared with the old pixels either


def test_multifile_ome_unchanged_reads_equal_tifffile(tmp_path: Path) -> None:
    write_multifile_ome(tmp_path, 3, planes=2, shape=(16, 24))
    (stack,) = load_tiffs([tmp_path / "m_0.ome.tif"], "ZYX")
    expected = tifffile.imread(tmp_path / "m_0.ome.tif")
    with chunk_cache_size(0):
        got = stack.extract_patch(0, None, (0, 0, 0), (6, 16, 24))[0]
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(stack.data.compute()[0, 0], expected)
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(stack)).data.compute()[0, 0], expected)


# -- 2. the Stitcher follows NumPy's casting rule ----------------------------------------------------------------------
def _grid_and_predictions(dtype: Any, samples: int = 2) -> tuple[GridSampler, list[np.ndarray], np.ndarray]:
    image = (np.random.default_rng(3).random((samples, 1, 20, 20)) * 300 - 20).astype(dtype)  # SCYX
    grid = GridSampler([LazyImageStack(image, "SCYX")], 12, overlap=4)
    predictions = [image[s.sample, :, s.coords[0] : s.coords[0] + 12, s.coords[1] : s.coords[1] + 12] for s in grid]
    return grid, predictions, image


@pytest.mark.parametrize("target", ["numpy", "zarr", "ome-zarr"])
def test_stitcher_refuses_float_predictions_into_an_integer_output_naming_both_dtypes(
    tmp_path: Path, target: str
) -> None:
    grid, predictions, _ = _grid_and_predictions(np.float32, samples=1)
    shape = (1, 1, 20, 20)
    if target == "numpy":
        out: Any = np.zeros(shape, np.uint16)
    elif target == "zarr":
        out = zarr.create_array(store={}, shape=shape, chunks=(1, 1, 8, 8), dtype="uint16")
    else:  # the full-resolution array of an OME-Zarr image (TCYX) lazystack wrote, opened for writing
        path = write_ome_zarr(LazyImageStack(np.zeros(shape, np.uint16), "TCYX"), tmp_path / "p.ome.zarr", levels=1)
        out = zarr.open_array(f"{path}/0", mode="r+")
        assert out.shape == shape
    stitcher = Stitcher(grid, 1, out=[out])
    with pytest.raises(TypeError, match=r"float32.*uint16.*casting='same_kind'.*casting='unsafe'"):
        stitcher.add(0, predictions[0])
    assert not np.asarray(out[:]).any()  # nothing written, nothing truncated
    assert not stitcher.complete


def test_stitcher_casting_unsafe_writes_what_numpy_copyto_writes() -> None:
    grid, predictions, image = _grid_and_predictions(np.float32)
    out = np.zeros((2, 1, 20, 20), np.int16)
    stitcher = Stitcher(grid, 1, out=[out], casting="unsafe")
    stitcher.add_batch(range(len(grid)), predictions)
    expected = np.zeros_like(out)
    np.copyto(expected, image, casting="unsafe")
    np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize(
    ("pred", "out", "casting"),
    [
        ("float64", "float32", "same_kind"),
        ("int64", "float32", "same_kind"),
        ("uint8", "uint16", "safe"),
        ("bool", "uint8", "same_kind"),
        ("float32", "float32", "no"),
    ],
)
def test_stitcher_writes_the_casts_numpy_accepts(pred: str, out: str, casting: str) -> None:
    grid, predictions, image = _grid_and_predictions(np.dtype(pred))
    target = np.zeros((2, 1, 20, 20), out)
    Stitcher(grid, 1, out=[target], casting=casting).add_batch(range(len(grid)), predictions)
    np.testing.assert_array_equal(target, image.astype(out))


def test_stitcher_refuses_an_unknown_casting_naming_it() -> None:
    grid, _, _ = _grid_and_predictions(np.float32)
    for wrong in ("samekind", None, 1):
        with pytest.raises(ValueError, match=rf"casting={wrong!r}.*same_kind, unsafe"):
            Stitcher(grid, 1, casting=wrong)  # type: ignore[arg-type]
