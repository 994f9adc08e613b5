"""Physical coordinates of OME-Zarr stacks: scale + translation, NGFF units on xarray coordinates and in reprs.

The reference for every level's positions is ngff-zarr's own reader (``from_ngff_zarr``: per-level
``scale`` and ``translation``), on images written by ngff-zarr and ome-zarr-py.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr

from lazystack import load_arrays, load_zarrs, write_ome_zarr
from lazystack.core.units import format_sizes, unit_symbol
from lazystack.loading.stacklist import stack_summary

SIZE = 0.09057667415221031
DATA = np.random.default_rng(9).integers(0, 4000, (2, 5, 64, 48), dtype=np.uint16)  # C Z Y X


def _ngff_zarr(path: Path) -> None:
    import ngff_zarr as nz

    image = nz.to_ngff_image(
        DATA,
        dims=["c", "z", "y", "x"],
        scale={"z": 0.5, "y": SIZE, "x": SIZE},
        translation={"z": 3.0, "y": -12.5, "x": 100.25},
        axes_units={"z": "micrometer", "y": "micrometer", "x": "micrometer"},
    )
    nz.to_ngff_zarr(str(path), nz.to_multiscales(image, scale_factors=[2], chunks=32), version="0.5")


def _ome_zarr_py(path: Path) -> None:
    from ome_zarr.writer import write_image

    root = zarr.open_group(str(path), mode="w")
    write_image(
        DATA,
        root,
        axes="czyx",
        axes_units={"z": "micrometer", "y": "micrometer", "x": "micrometer"},
        scale_factors=(2,),
        scale={"z": 0.5, "y": SIZE, "x": SIZE},  # ome-zarr-py writes its own translations
    )


@pytest.fixture(scope="module", params=["ngff-zarr", "ome-zarr-py"])
def image(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("phys") / f"{request.param}.ome.zarr"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        (_ngff_zarr if request.param == "ngff-zarr" else _ome_zarr_py)(path)
    return path


def _reference(path: Path) -> list[Any]:
    import ngff_zarr as nz

    return list(nz.from_ngff_zarr(str(path)).images)


def test_coordinates_are_scale_times_index_plus_translation(image: Path) -> None:
    stacks = load_zarrs(str(image), "CZYX")
    reference = _reference(image)
    assert len(stacks) == len(reference) == 2
    for stack, ref in zip(stacks, reference, strict=True):
        x = stack.xarray
        for axis in "ZYX":
            name = axis.lower()
            n = x.sizes[axis]
            expected = np.arange(n) * ref.scale[name] + ref.translation[name]
            np.testing.assert_allclose(x.coords[axis].values, expected, rtol=1e-12, atol=1e-12)
            assert x.coords[axis].attrs["units"] == ref.axes_units[name] == "micrometer"
        assert "units" not in x.coords["C"].attrs if "C" in x.coords else True


def test_view_keeps_physical_positions(image: Path) -> None:
    stack = load_zarrs(str(image), "CZYX")[0]
    view = stack.isel(Y=slice(10, 40, 3), Z=2)
    np.testing.assert_allclose(view.xarray.coords["Y"].values, stack.xarray.coords["Y"].values[10:40:3])
    assert view.xarray.coords["Y"].attrs["units"] == "micrometer"


def test_reprs_show_units(image: Path) -> None:
    stacks = load_zarrs(str(image), "CZYX")
    assert "pixel size: Z 0.5 µm, Y 0.09058 µm, X 0.09058 µm" in repr(stacks[0])
    assert "Z=0.5 µm, Y=0.09058 µm, X=0.09058 µm" in repr(stacks)
    assert "0.1812 µm" in repr(stacks)  # level 1
    summary = stack_summary(stacks[0])
    assert summary["units"] == {"Z": "micrometer", "Y": "micrometer", "X": "micrometer"}
    json.dumps(summary)


def test_units_without_declared_unit_show_plain_numbers() -> None:
    (stack,) = load_arrays([np.zeros((4, 4), np.uint8)], "YX")
    assert format_sizes({"Y": 0.25, "X": 0.5}) == "Y 0.25, X 0.5"
    assert unit_symbol("nanometer") == "nm"
    assert "units" not in stack_summary(stack) or stack_summary(stack)["units"] == {}


def test_written_image_keeps_translation_and_units(image: Path, tmp_path: Path) -> None:
    from ome_zarr_models.v05.image import Image

    stack = load_zarrs(str(image), "CZYX", levels=0)[0]
    view = stack.isel(Y=slice(8, 56), X=slice(4, 44))
    out = write_ome_zarr(view, tmp_path / "copy.ome.zarr", levels=2)
    Image.from_zarr(zarr.open_group(out, mode="r"))
    back = load_zarrs(out, "CZYX")
    for axis in "ZYX":
        np.testing.assert_allclose(back[0].xarray.coords[axis].values, view.xarray.coords[axis].values, rtol=1e-12)
        assert back[0].xarray.coords[axis].attrs["units"] == "micrometer"
    reference = _reference(Path(out))
    first_y = float(view.xarray.coords["Y"].values[0])  # the source's translation + 8 pixels
    assert first_y == pytest.approx(float(stack.xarray.coords["Y"].values[0]) + 8 * SIZE)
    assert reference[0].translation["y"] == pytest.approx(first_y)
    assert reference[1].translation["y"] == pytest.approx(first_y + SIZE / 2)
    np.testing.assert_array_equal(back[0].xarray.values, DATA[:, :, 8:56, 4:44])


def test_nanometer_units_are_written_as_given(tmp_path: Path) -> None:
    import ngff_zarr as nz

    path = tmp_path / "nm.ome.zarr"
    image = nz.to_ngff_image(
        DATA[0, 0], dims=["y", "x"], scale={"y": 65.0, "x": 65.0}, axes_units={"y": "nanometer", "x": "nanometer"}
    )
    nz.to_ngff_zarr(str(path), nz.to_multiscales(image, scale_factors=[]), version="0.5")
    (stack,) = load_zarrs(str(path), "YX")
    assert "Y 65 nm, X 65 nm" in repr(stack)
    out = write_ome_zarr(stack, tmp_path / "nm-copy.ome.zarr", levels=1)
    axes = zarr.open_group(out, mode="r").attrs["ome"]["multiscales"][0]["axes"]
    assert [a.get("unit") for a in axes] == ["nanometer", "nanometer"]


def test_ome_tiff_units_become_ngff_names(tmp_path: Path) -> None:
    import tifffile

    path = tmp_path / "nm.ome.tif"
    metadata = {"axes": "CYX", "PhysicalSizeX": 65.0, "PhysicalSizeXUnit": "nm", "PhysicalSizeY": 65.0}
    tifffile.imwrite(path, DATA[:, 0], ome=True, metadata=metadata)
    (stack,) = load_arrays([DATA[:, 0]], "CYX")  # a stack without metadata has no units
    assert "units" not in stack.attrs
    from lazystack import load_tiffs

    (tif,) = load_tiffs(str(path), "CYX")
    assert tif.physical_pixel_sizes == {"X": 65.0, "Y": 65.0}
    # OME's default unit is µm; tifffile writes the units it was given
    with tifffile.TiffFile(path) as f:
        declared = f.ome_metadata
    assert 'PhysicalSizeXUnit="nm"' in declared
    assert tif.attrs["units"]["X"] == "nanometer"
    assert tif.xarray.coords["X"].attrs["units"] == "nanometer"
    np.testing.assert_allclose(tif.xarray.coords["X"].values, np.arange(48) * 65.0)
    assert "X 65 nm" in repr(tif)


def test_imagej_unit_becomes_ngff_name(tmp_path: Path) -> None:
    import tifffile

    path = tmp_path / "ij.tif"
    tifffile.imwrite(
        path,
        DATA[0],
        imagej=True,
        resolution=(1 / 0.25, 1 / 0.25),
        metadata={"unit": "micron", "spacing": 2.0, "axes": "ZYX"},
    )
    from lazystack import load_tiffs

    (tif,) = load_tiffs(str(path), "ZYX")
    with tifffile.TiffFile(path) as f:
        assert f.imagej_metadata["unit"] == "micron"
    assert tif.physical_pixel_sizes == pytest.approx({"Z": 2.0, "Y": 0.25, "X": 0.25})
    assert tif.attrs["units"] == {"Z": "micrometer", "Y": "micrometer", "X": "micrometer"}
    assert tif.xarray.coords["Z"].attrs["units"] == "micrometer"


def test_czi_coordinates_are_in_micrometres(shared_czi_dir: Path) -> None:
    from pylibCZIrw import czi as pyczi

    from lazystack import load_czis

    path = shared_czi_dir / "100x100.czi"
    stack = load_czis(str(path), "SCYX")[0]
    with pyczi.open_czi(str(path)) as doc:
        items = doc.metadata["ImageDocument"]["Metadata"]["Scaling"]["Items"]["Distance"]
    metres = {d["@Id"]: float(d["Value"]) for d in (items if isinstance(items, list) else [items])}
    scaling = metres["X"] * 1e6  # the file's scaling is in metres per pixel
    assert stack.physical_pixel_sizes["X"] == pytest.approx(scaling)
    assert stack.xarray.coords["X"].attrs["units"] == "micrometer"
    assert f"X {scaling:.4g} µm" in repr(stack)
