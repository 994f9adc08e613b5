"""lazystack.load and propose_axes: dispatch on extension / scheme, declared axes."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
from conftest import shared_files

from lazystack import AxesError, SourceNotFoundError, UnsupportedSourceError
from lazystack.loading.auto import load, propose_axes, source_kind
from lazystack.sources.tiff import tiff_axes_to_lazystack


def _data(shape: tuple[int, ...], dtype: str = "uint16") -> np.ndarray:
    return np.arange(int(np.prod(shape)), dtype=np.int64).reshape(shape).astype(dtype)


# -- source_kind ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("a.tif", "tiff"),
        ("a.TIFF", "tiff"),
        ("a.ome.tiff", "tiff"),
        ("a.btf", "tiff"),
        ("a.czi", "czi"),
        ("a.npy", "npy"),
    ],
)
def test_source_kind_by_extension(tmp_path: Path, name: str, kind: str) -> None:
    (tmp_path / name).write_bytes(b"")
    assert source_kind(tmp_path / name) == kind
    assert source_kind(f"{tmp_path / name}@3") == kind  # scene / series suffix


@pytest.mark.parametrize(
    "uri",
    ["s3://bucket/x.zarr", "gs://b/img", "https://host/data.ome.zarr/0", "http://h/x", "memory://store", "zip://a.zip"],
)
def test_source_kind_uri_schemes_go_to_zarr(uri: str) -> None:
    assert source_kind(uri) == "zarr"


def test_source_kind_file_uri(tmp_path: Path) -> None:
    (tmp_path / "a.tif").write_bytes(b"")
    assert source_kind(f"file://{tmp_path / 'a.tif'}") == "tiff"
    assert source_kind(f"file://{tmp_path / 'store.zarr'}") == "zarr"


def test_source_kind_zarr_paths(tmp_path: Path) -> None:
    zarr = pytest.importorskip("zarr")
    group = zarr.open_group(tmp_path / "data.zarr", mode="w")
    group.create_array("img", shape=(4, 4), dtype="uint8")
    zarr.open_group(tmp_path / "plain", mode="w")
    assert source_kind(tmp_path / "data.zarr") == "zarr"
    assert source_kind(tmp_path / "data.zarr" / "img") == "zarr"
    assert source_kind(tmp_path / "plain") == "zarr"  # a directory holding zarr metadata
    with pytest.raises(SourceNotFoundError, match="no such array or group"):
        source_kind(tmp_path / "data.zarr" / "nope")
    with pytest.raises(SourceNotFoundError, match="no such Zarr store"):
        source_kind(tmp_path / "missing.zarr")


def test_source_kind_errors(tmp_path: Path) -> None:
    with pytest.raises(SourceNotFoundError, match=r"missing\.tif"):
        source_kind(tmp_path / "missing.tif")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(UnsupportedSourceError, match=r"'\.txt'.*accepted: files ending in \.tif"):
        source_kind(tmp_path / "notes.txt")
    (tmp_path / "folder").mkdir()
    with pytest.raises(UnsupportedSourceError, match="directory"):
        source_kind(tmp_path / "folder")
    with pytest.raises(UnsupportedSourceError, match="ftp"):
        source_kind("ftp://host/x.zarr")


# -- .npy and arrays -------------------------------------------------------------------------


def test_load_npy_is_memory_mapped_and_correct(tmp_path: Path) -> None:
    data = _data((3, 2, 16, 12))
    np.save(tmp_path / "x.npy", data)
    (stack,) = load(tmp_path / "x.npy", "TCYX")
    assert isinstance(stack.reader.array, np.memmap)
    assert len(pickle.dumps(stack)) < 4096  # pickles as its file, not its data
    assert stack.source == str(tmp_path / "x.npy")
    assert stack.format == "npy"
    assert stack.data_shape == (3, 2, 16, 12)
    np.testing.assert_array_equal(stack.compute(), data)
    patch = stack.extract_patch(1, [1], (2, 3), (4, 5))
    np.testing.assert_array_equal(patch, data[1, 1:2, 2:6, 3:8].astype(np.float32))


def test_load_npy_never_writes(tmp_path: Path) -> None:
    np.save(tmp_path / "x.npy", _data((8, 8)))
    (stack,) = load(tmp_path / "x.npy", "YX")
    with pytest.raises(ValueError, match="read-only"):
        stack.reader.array[0, 0] = 1  # mapped read-only
    with pytest.raises(TypeError):
        stack.reader[0, 0] = 1  # the reader has no way to write at all


def test_load_npy_without_axes(tmp_path: Path) -> None:
    np.save(tmp_path / "plane.npy", _data((8, 9)))
    np.save(tmp_path / "cube.npy", _data((2, 8, 9)))
    (stack,) = load(tmp_path / "plane.npy")
    assert stack.original_axes == "YX"
    with pytest.raises(AxesError, match=r"declares no axes.*axes="):
        load(tmp_path / "cube.npy")


def test_load_arrays_and_mixed_sources(tmp_path: Path) -> None:
    np.save(tmp_path / "x.npy", _data((2, 8, 8)))
    stacks = load([np.zeros((2, 8, 8)), tmp_path / "x.npy"], "ZYX")
    assert [s.format for s in stacks] == ["array", "npy"]
    with pytest.raises(AxesError, match="axes are required"):
        load(np.zeros((4, 4)))


def test_load_rejects_bad_input(tmp_path: Path) -> None:
    with pytest.raises(AxesError, match="'Q'"):
        load(np.zeros((4, 4)), "QX")
    with pytest.raises(SourceNotFoundError):
        load(tmp_path / "nope.npy", "YX")
    with pytest.raises(UnsupportedSourceError, match="int"):
        load(42, "YX")
    with pytest.raises(UnsupportedSourceError, match="dict"):
        load([{}], "YX")
    (tmp_path / "bad.npy").write_bytes(b"not numpy")
    with pytest.raises(ValueError, match=r"bad\.npy"):
        load(tmp_path / "bad.npy", "YX")


# -- TIFF ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("declared", "expected"),
    [("TZCYX", "TZCYX"), ("YXS", "YXC"), ("CYXS", None), ("QYX", None), ("IYX", None), ("YX", "YX"), ("TYXS", "TYXC")],
)
def test_tiff_axes_translation(declared: str, expected: str | None) -> None:
    assert tiff_axes_to_lazystack(declared) == expected


def _write_tiffs(folder: Path) -> dict[str, Path]:
    tifffile = pytest.importorskip("tifffile")
    paths = {
        "imagej": folder / "hyper.tif",
        "ome": folder / "image.ome.tif",
        "rgb": folder / "rgb.tif",
        "plain": folder / "pages.tif",
    }
    tifffile.imwrite(paths["imagej"], _data((3, 4, 2, 16, 16)), imagej=True, metadata={"axes": "TZCYX"})
    tifffile.imwrite(paths["ome"], _data((2, 3, 16, 16)), ome=True, metadata={"axes": "TCYX"})
    tifffile.imwrite(paths["rgb"], _data((16, 16, 3), "uint8"), photometric="rgb")
    tifffile.imwrite(paths["plain"], _data((5, 16, 16)), metadata=None)
    return paths


def test_propose_axes_tiff_matches_tifffile(tmp_path: Path) -> None:
    import tifffile

    paths = _write_tiffs(tmp_path)
    for path in paths.values():
        with tifffile.TiffFile(path) as tif:
            declared = tif.series[0].axes
        assert propose_axes(path) == tiff_axes_to_lazystack(declared), path
    assert propose_axes(paths["imagej"]) == "TZCYX"
    assert propose_axes(paths["ome"]) == "TCYX"
    assert propose_axes(paths["rgb"]) == "YXC"
    assert propose_axes(paths["plain"]) is None


def test_propose_axes_tiff_series_and_errors(tmp_path: Path) -> None:
    tifffile = pytest.importorskip("tifffile")
    path = tmp_path / "two.tif"
    with tifffile.TiffWriter(path) as tw:
        tw.write(_data((16, 16)), metadata={"axes": "YX"})
        tw.write(_data((3, 8, 8)), photometric="minisblack", metadata={"axes": "ZYX"})
    assert propose_axes(f"{path}@1") == "ZYX"
    with pytest.raises(SourceNotFoundError, match="series 5"):
        propose_axes(f"{path}@5")
    (tmp_path / "bad.tif").write_bytes(b"this is no tiff")
    with pytest.raises(ValueError, match=r"bad\.tif"):
        propose_axes(tmp_path / "bad.tif")


def test_load_tiff_without_axes_matches_tifffile(tmp_path: Path) -> None:
    pytest.importorskip("lazystack.sources.tiff")
    import tifffile

    paths = _write_tiffs(tmp_path)
    (stack,) = load(paths["imagej"])
    assert stack.original_axes == "TZCYX"
    expected = tifffile.imread(paths["imagej"])  # T Z C Y X
    np.testing.assert_array_equal(stack.compute(), expected.transpose(0, 2, 1, 3, 4))
    (rgb,) = load(paths["rgb"])
    assert rgb.data_shape == (1, 3, 16, 16)
    np.testing.assert_array_equal(rgb.compute()[0], tifffile.imread(paths["rgb"]).transpose(2, 0, 1))
    with pytest.raises(AxesError, match="declares no axes"):
        load(paths["plain"])
    (plain,) = load(paths["plain"], "ZYX")
    np.testing.assert_array_equal(plain.compute()[0, 0], tifffile.imread(paths["plain"]))


# -- Zarr / OME-Zarr -------------------------------------------------------------------------------


def test_propose_axes_ome_zarr(tmp_path: Path) -> None:
    zarr = pytest.importorskip("zarr")
    writer = pytest.importorskip("ome_zarr.writer")
    path = tmp_path / "image.ome.zarr"
    group = zarr.open_group(path, mode="w")
    writer.write_image(_data((2, 3, 32, 32)), group, axes="tcyx", scaler=None)
    assert propose_axes(path) == "TCYX"
    first = sorted(name for name, _ in group.arrays())[0]
    assert propose_axes(path / first) == "TCYX"  # an array inside: its image's axes


def test_propose_axes_zarr_dimension_names(tmp_path: Path) -> None:
    zarr = pytest.importorskip("zarr")
    group = zarr.open_group(tmp_path / "g.zarr", mode="w")
    group.create_array("a", shape=(2, 8, 8), dtype="uint8", dimension_names=["z", "y", "x"])
    group.create_array("b", shape=(2, 8, 8), dtype="uint8", dimension_names=["z", "y", "x"])
    assert propose_axes(tmp_path / "g.zarr") == "ZYX"
    assert propose_axes(tmp_path / "g.zarr" / "a") == "ZYX"
    group.create_array("c", shape=(8, 8), dtype="uint8")
    assert propose_axes(tmp_path / "g.zarr") is None  # arrays disagree
    assert propose_axes(tmp_path / "g.zarr" / "c") is None


def test_load_zarr_dispatch(tmp_path: Path) -> None:
    pytest.importorskip("lazystack.sources.zarr")
    zarr = pytest.importorskip("zarr")
    data = _data((3, 16, 16))
    arr = zarr.create_array(tmp_path / "x.zarr", shape=data.shape, chunks=(1, 8, 8), dtype=data.dtype)
    arr[...] = data
    (stack,) = load(tmp_path / "x.zarr", "TYX")
    assert stack.format.lower().startswith("zarr") or "zarr" in stack.format.lower()
    np.testing.assert_array_equal(stack.compute()[:, 0], data)
    (uri_stack,) = load(f"file://{tmp_path / 'x.zarr'}", "TYX")
    np.testing.assert_array_equal(uri_stack.compute()[:, 0], data)


# -- CZI (real files) ------------------------------------------------------------------------------


@pytest.mark.parametrize("path", shared_files("czi", "*.czi"), ids=lambda p: p.name)
def test_propose_axes_czi_matches_bioio(path: Path) -> None:
    bioio = pytest.importorskip("bioio")
    pytest.importorskip("bioio_czi")
    image = bioio.BioImage(path)
    dims = image.dims
    z = dims.Z if "Z" in dims.order else 1
    expected = "SCZYX" if z > 1 else "SCYX"
    assert propose_axes(path) == expected


def test_shared_czi_folder_has_files(shared_czi_dir: Path) -> None:
    assert shared_files("czi", "*.czi"), f"no .czi files in {shared_czi_dir}"


def test_load_returns_a_stacklist(tmp_path: Path) -> None:
    from lazystack.loading.stacklist import StackList

    np.save(tmp_path / "x.npy", _data((8, 8)))
    stacks = load([tmp_path / "x.npy", tmp_path / "x.npy"])
    assert isinstance(stacks, StackList)
    assert "StackList of 2 stacks" in repr(stacks)


def test_load_memory_uri(tmp_path: Path) -> None:
    pytest.importorskip("lazystack.sources.zarr")
    fsspec = pytest.importorskip("fsspec")
    zarr = pytest.importorskip("zarr")
    data = _data((2, 16, 16))
    arr = zarr.create_array("memory://lazystack-test-api/x.zarr", shape=data.shape, chunks=(1, 8, 8), dtype=data.dtype)
    arr[...] = data
    try:
        (stack,) = load("memory://lazystack-test-api/x.zarr", "ZYX")
        np.testing.assert_array_equal(stack.compute()[0, 0], data)
    finally:
        fsspec.filesystem("memory").rm("/lazystack-test-api", recursive=True)
