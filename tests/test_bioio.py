"""load_bioio: any format a bioio plugin reads, checked against tifffile's own reading."""

from __future__ import annotations

import multiprocessing as mp
import operator
import pickle
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("bioio", reason="bioio is not installed")
pytest.importorskip("bioio_ome_tiff", reason="the bioio-ome-tiff plugin is not installed")
tifffile = pytest.importorskip("tifffile")

from conftest import raise_if_dask_computes  # noqa: E402
from reference import canonical_reference, patch_reference  # noqa: E402

from lazystack import load_bioio  # noqa: E402
from lazystack.core.errors import (  # noqa: E402
    AxesError,
    MissingDependencyError,
    ShapeMismatchError,
    SourceFormatError,
    SourceNotFoundError,
    SourceReadError,
)


@pytest.fixture(scope="module")
def ome(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    """An OME-TIFF with T=3, C=2, Z=4 planes of 70 x 90 uint16."""
    data = np.random.default_rng(0).integers(0, 60000, (3, 2, 4, 70, 90), dtype=np.uint16)
    path = tmp_path_factory.mktemp("bioio") / "stack.ome.tif"
    tifffile.imwrite(path, data, ome=True, metadata={"axes": "TCZYX", "Channel": {"Name": ["dapi", "gfp"]}})
    return path, data


@pytest.fixture(scope="module")
def two_series(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[np.ndarray]]:
    """An OME-TIFF with two images (bioio scenes) of different shapes."""
    rng = np.random.default_rng(1)
    arrays = [rng.integers(0, 255, (2, 40, 50), dtype=np.uint8), rng.integers(0, 255, (2, 30, 20), dtype=np.uint8)]
    path = tmp_path_factory.mktemp("bioio") / "two.ome.tif"
    with tifffile.TiffWriter(path, ome=True) as tw:
        for a in arrays:
            tw.write(a, metadata={"axes": "CYX"})
    return path, arrays


@pytest.fixture(scope="module")
def rgb(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    data = np.random.default_rng(2).integers(0, 255, (36, 52, 3), dtype=np.uint8)
    path = tmp_path_factory.mktemp("bioio") / "rgb.ome.tif"
    tifffile.imwrite(path, data, ome=True, photometric="rgb", metadata={"axes": "YXS"})
    return path, data


def _check_patches(stack: Any, ref: np.ndarray, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    spatial = ref.shape[2:]
    for _ in range(10):
        size = [int(rng.integers(1, n + 8)) for n in spatial]
        coords = [int(rng.integers(-s, n)) for s, n in zip(size, spatial, strict=True)]
        s = int(rng.integers(ref.shape[0]))
        np.testing.assert_array_equal(
            stack.extract_patch(s, None, coords, size), patch_reference(ref, s, None, coords, size)
        )


@pytest.mark.parametrize("axes", ["TCZYX", "tczyx", "STCZYX"])
def test_ome_tiff_matches_tifffile(ome: Any, axes: str) -> None:
    path, _ = ome
    ref_data = tifffile.imread(path)  # tifffile's own reading, independent of bioio
    with raise_if_dask_computes():
        (stack,) = load_bioio(path, axes)
    ref = canonical_reference(ref_data, "TCZYX")
    assert stack.data_shape == ref.shape == (3, 2, 4, 70, 90)
    assert stack.data_dtype == np.uint16
    assert stack.channel_names == ["dapi", "gfp"]
    assert stack.source == str(path)
    assert stack.scene == 0
    np.testing.assert_array_equal(stack.compute(), ref)
    np.testing.assert_array_equal(stack.data.compute(), ref)
    _check_patches(stack, ref)


def test_ome_tiff_matches_load_tiffs(ome: Any) -> None:
    tiff = pytest.importorskip("lazystack.sources.tiff")
    del tiff
    from lazystack import load_tiffs

    path, _ = ome
    (a,) = load_bioio(path, "TCZYX")
    (b,) = load_tiffs(path, "TCZYX")
    np.testing.assert_array_equal(a.compute(), b.compute())
    np.testing.assert_array_equal(
        a.extract_patch(2, [1], (1, 60, -3), (2, 16, 16)), b.extract_patch(2, [1], (1, 60, -3), (2, 16, 16))
    )


def test_real_ome_tiff(shared_tiff_dir: Path) -> None:
    path = shared_tiff_dir / "FOV7_HV110_P0500510000.ome.tiff"
    (stack,) = load_bioio(path, "YX")
    ref = tifffile.imread(path)
    np.testing.assert_array_equal(stack.compute()[0, 0], ref)
    _check_patches(stack, ref[np.newaxis, np.newaxis], seed=1)


def test_axes_subset_drops_singletons_and_keeps_the_user_order(ome: Any) -> None:
    path, data = ome
    (stack,) = load_bioio(f"{path}", "ZTXYC")
    assert stack.original_axes == "ZTXYC"
    assert stack.original_data_shape == (4, 3, 90, 70, 2)
    np.testing.assert_array_equal(stack.compute(), canonical_reference(data, "TCZYX"))
    np.testing.assert_array_equal(stack.reader[1, 2, 5:9, 3:4, 0], data[2, 0, 1, 3:4, 5:9].T)


def test_scenes_are_separate_stacks(two_series: Any) -> None:
    path, arrays = two_series
    stacks = load_bioio(path, "CYX")
    assert [s.source for s in stacks] == [f"{path}@0", f"{path}@1"]
    assert [s.scene for s in stacks] == [0, 1]
    for stack, a in zip(stacks, arrays, strict=True):
        np.testing.assert_array_equal(stack.compute()[0], a)
    (again,) = load_bioio(stacks[1].source, "CYX")
    np.testing.assert_array_equal(again.compute()[0], arrays[1])


def test_rgb_samples_become_channels(rgb: Any) -> None:
    path, data = rgb
    (stack,) = load_bioio(path, "CYX")
    assert stack.data_shape == (1, 3, 36, 52)
    np.testing.assert_array_equal(stack.compute()[0], data.transpose(2, 0, 1))
    with pytest.raises(ShapeMismatchError, match="colour samples"):
        load_bioio(path, "YX")


def test_czi_through_bioio_equals_load_czis(shared_czi_dir: Path) -> None:
    pytest.importorskip("bioio_czi")
    from lazystack import load_czis

    path = shared_czi_dir / "CellDivision_T3_Z5_CH2_X240_Y170.czi"
    (a,) = load_bioio(path, "TCZYX")
    (b,) = load_czis(path, "SCZYX")
    np.testing.assert_array_equal(a.compute(), b.compute())


def test_pickles_as_a_recipe_and_works_in_workers(ome: Any) -> None:
    path, data = ome
    (stack,) = load_bioio(path, "TCZYX")
    stack.extract_patch(0, None, (0, 0, 0), (1, 4, 4))  # opens the file in this process
    blob = pickle.dumps(stack)
    assert len(blob) < 4096
    np.testing.assert_array_equal(pickle.loads(blob).compute(), canonical_reference(data, "TCZYX"))
    call = operator.methodcaller("extract_patch", 2, [1], (1, 5, 6), (2, 8, 8))
    for method in ("fork", "spawn"):
        with mp.get_context(method).Pool(1) as pool:
            (got,) = pool.map(call, [stack])
        np.testing.assert_array_equal(got[0], data[2, 1, 1:3, 5:13, 6:14])


def test_reader_options_are_passed(ome: Any) -> None:
    from bioio_ome_tiff import Reader

    path, data = ome
    (stack,) = load_bioio(path, "TCZYX", reader=Reader)
    assert stack.attrs["bioio_reader"].startswith("bioio_ome_tiff")
    np.testing.assert_array_equal(stack.compute(), canonical_reference(data, "TCZYX"))


# -- bad input ---------------------------------------------------------------------------------
def test_unnamed_dim_is_an_error_quoting_the_dims(ome: Any) -> None:
    path, _ = ome
    with pytest.raises(ShapeMismatchError, match=r"T=3, Z=4.*'TCZYX'.*\(3, 2, 4, 70, 90\)"):
        load_bioio(path, "CYX")


def test_invalid_axes(ome: Any) -> None:
    path, _ = ome
    with pytest.raises(AxesError, match="Q"):
        load_bioio(path, "QYX")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(SourceNotFoundError, match=r"nope\.tif"):
        load_bioio(tmp_path / "nope.tif", "YX")


def test_unsupported_file(tmp_path: Path) -> None:
    (tmp_path / "notes.xyz").write_text("not an image")
    with pytest.raises(SourceFormatError, match=r"notes\.xyz"):
        load_bioio(tmp_path / "notes.xyz", "YX")


def test_scene_that_does_not_exist(two_series: Any) -> None:
    path, _ = two_series
    with pytest.raises(SourceNotFoundError, match=r"no scene 9.*0 \(.*1 \("):
        load_bioio(f"{path}@9", "CYX")


def test_missing_bioio_names_it(ome: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    path, _ = ome
    monkeypatch.setitem(sys.modules, "bioio", None)
    with pytest.raises(MissingDependencyError, match="bioio"):
        load_bioio(path, "TCZYX")


def test_ome_size_that_disagrees_with_the_pages_names_the_file_and_scene(ome: Any, tmp_path: Path) -> None:
    path, _ = ome
    bad = tmp_path / "lies.ome.tif"
    bad.write_bytes(path.read_bytes())
    with tifffile.TiffFile(bad, mode="r+") as tif:
        tag = tif.pages.first.tags["ImageDescription"]
        assert 'SizeX="90"' in tag.value
        tag.overwrite(tag.value.replace('SizeX="90"', 'SizeX="90000"'))
    with pytest.raises(SourceFormatError, match=r"scene 0 of .*lies\.ome\.tif"):
        load_bioio(bad, "TCZYX")


def test_read_error_names_the_file_and_scene(ome: Any, tmp_path: Path) -> None:
    path, data = ome
    copy = tmp_path / "cut.ome.tif"
    raw = path.read_bytes()
    copy.write_bytes(raw)
    (stack,) = load_bioio(copy, "TCZYX")
    np.testing.assert_array_equal(stack.extract_patch(0, None, (0, 0, 0), (4, 70, 90)), data[0, :, :, :, :])
    with open(copy, "r+b") as f:  # the open file loses the pixels of its later planes under the reader
        f.truncate(len(raw) // 3)
    with pytest.raises(SourceReadError, match=r"cut\.ome\.tif' scene 0"):
        stack.compute()
    stack.close()
    # and reading after reopening fails clearly too (the file's stamp: it changed since the stack was opened)
    with pytest.raises((SourceFormatError, SourceReadError), match=r"cut\.ome\.tif"):
        stack.compute()
