"""load_zarrs on OME-Zarr images written by the real writers: ome-zarr-py, ngff-zarr, bioio-ome-zarr.

NGFF 0.4 on Zarr v2 and 0.5 on Zarr v3; every level is compared with zarr-python's own read.
"""

from __future__ import annotations

import pickle
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr
from reference import canonical_reference, patch_reference

from lazystack import load_zarrs
from lazystack.core.errors import ShapeMismatchError, SourceFormatError, SourceNotFoundError

SHAPE = (2, 3, 64, 48)  # C Z Y X
SCALE = {"c": 1.0, "z": 2.0, "y": 0.5, "x": 0.25}
CHANNELS = ["DAPI", "GFP"]
WINDOW = {"min": 0, "max": 4000, "start": 0, "end": 4000}


def _data() -> np.ndarray:
    return np.random.default_rng(7).integers(0, 4000, SHAPE, dtype=np.uint16)


def write_ome_zarr_py(path: Path, version: str) -> None:
    """ome-zarr-py ``write_image`` (levels ``s0``, ``s1``), with omero channel labels."""
    from ome_zarr.format import FormatV04, FormatV05
    from ome_zarr.writer import write_image

    fmt = FormatV04() if version == "0.4" else FormatV05()
    root = zarr.open_group(str(path), mode="w", zarr_format=2 if version == "0.4" else 3)
    write_image(
        _data(),
        root,
        axes="czyx",
        fmt=fmt,
        scale_factors=(2,),
        scale={k: v for k, v in SCALE.items() if k != "c"},
        storage_options={"chunks": (1, 1, 32, 32)},
        omero={"channels": [{"label": c, "color": "FFFFFF", "window": WINDOW} for c in CHANNELS]},
    )


def write_ngff_zarr(path: Path, version: str) -> None:
    """ngff-zarr ``to_ngff_zarr`` (levels ``scale0/image``, ``scale1/image``)."""
    import ngff_zarr as nz

    image = nz.to_ngff_image(_data(), dims=["c", "z", "y", "x"], scale=SCALE)
    multiscales = nz.to_multiscales(image, scale_factors=[2], chunks=32)
    nz.to_ngff_zarr(str(path), multiscales, version=version)


def write_bioio(path: Path, version: str) -> None:
    """bioio-ome-zarr ``OMEZarrWriter`` (levels ``0``, ``1``)."""
    from bioio_ome_zarr.writers import Channel, OMEZarrWriter

    c, z, y, x = SHAPE
    writer = OMEZarrWriter(
        str(path),
        level_shapes=[SHAPE, (c, z, y // 2, x // 2)],
        dtype="uint16",
        zarr_format=2 if version == "0.4" else 3,
        axes_names=["c", "z", "y", "x"],
        axes_types=["channel", "space", "space", "space"],
        physical_pixel_size=[SCALE[a] for a in "czyx"],
        chunk_shape=(1, 1, 32, 32),
        channels=[Channel(label=name, color="FFFFFF") for name in CHANNELS],
    )
    writer.write_full_volume(_data())


WRITERS = {"ome-zarr-py": write_ome_zarr_py, "ngff-zarr": write_ngff_zarr, "bioio": write_bioio}
LEVEL_PATHS = {"ome-zarr-py": ["s0", "s1"], "ngff-zarr": ["scale0/image", "scale1/image"], "bioio": ["0", "1"]}


IMAGES = [(w, v) for w in WRITERS for v in ("0.4", "0.5")]


@pytest.fixture(scope="module", params=IMAGES, ids=lambda p: f"{p[0]}-{p[1]}")
def image(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, str]:
    writer, version = request.param
    path = tmp_path_factory.mktemp("ome") / f"{writer}-{version}.ome.zarr"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the writers' own deprecation / performance warnings
        WRITERS[writer](path, version)
    return path, writer, version


def test_one_stack_per_level(image: Any) -> None:
    path, writer, version = image
    stacks = load_zarrs([path], "CZYX")
    assert [s.level for s in stacks] == [0, 1]
    assert [s.source for s in stacks] == [f"file://{path}/{p}" for p in LEVEL_PATHS[writer]]
    assert all(s.format == "ome-zarr" for s in stacks)
    assert stacks[0].original_data_shape == SHAPE
    assert stacks[1].original_data_shape[2:] == (32, 24)
    for s in stacks:
        assert s.attrs["ngff_axes"] == "CZYX"
        assert s.attrs["ngff_version"] == version
        assert s.attrs["zarr_format"] == (2 if version == "0.4" else 3)


def test_levels_equal_zarr_read(image: Any) -> None:
    path, writer, _ = image
    for stack, level_path in zip(load_zarrs([path], "czyx"), LEVEL_PATHS[writer], strict=True):
        ref = zarr.open_array(str(path), path=level_path, mode="r")
        full = ref[...]
        canon = canonical_reference(full, "CZYX")
        np.testing.assert_array_equal(stack.compute(), canon)
        np.testing.assert_array_equal(stack.data.compute(), canon)
        assert stack.reader.chunks == ref.chunks
        for coords, size in [((0, 5, 7), (2, 20, 9)), ((-1, 30, -3), (3, 8, 40))]:
            got = stack.extract_patch(0, [1], coords, size)
            np.testing.assert_array_equal(got, patch_reference(canon, 0, [1], coords, size))
        view = stack.isel(C=0, Z=slice(0, 2), X=slice(1, None, 2))
        np.testing.assert_array_equal(view.compute()[0, 0], full[0, 0:2, :, 1::2])
    np.testing.assert_array_equal(load_zarrs([path], "CZYX")[0].compute()[0], _data())


def test_physical_pixel_sizes_and_coords(image: Any) -> None:
    path, _, _ = image
    level0, level1 = load_zarrs([path], "CZYX")
    assert level0.physical_pixel_sizes == {"Z": 2.0, "Y": 0.5, "X": 0.25}
    y1, x1 = level1.physical_pixel_sizes["Y"], level1.physical_pixel_sizes["X"]
    assert (y1, x1) == (1.0, 0.5)
    xr0 = level0.xarray
    np.testing.assert_allclose(xr0.coords["Y"].values, np.arange(64) * 0.5)
    np.testing.assert_allclose(xr0.coords["X"].values, np.arange(48) * 0.25)
    # level 1 lies where its OME translation puts it (writers centre it on level 0's pixels: 0.125, or 0)
    offset = level1.attrs.get("translation", {}).get("X", 0.0)
    assert offset in (0.0, 0.125)
    np.testing.assert_allclose(level1.xarray.coords["X"].values, np.arange(24) * 0.5 + offset)


def test_channel_names(image: Any) -> None:
    path, writer, _ = image
    stacks = load_zarrs([path], "CZYX")
    if writer == "ngff-zarr":  # ngff-zarr writes no omero metadata unless asked
        return
    for s in stacks:
        assert s.channel_names == CHANNELS
        assert list(s.xarray.coords["C"].values) == CHANNELS
    assert stacks[0].isel(C=slice(1, 2)).channel_names == ["GFP"]


def test_level_uri_gives_that_level_alone(image: Any) -> None:
    path, _, _ = image
    levels = load_zarrs([path], "CZYX")
    for stack in levels:
        (again,) = load_zarrs([stack.source], "CZYX")
        assert again.source == stack.source
        assert again.level == stack.level
        assert again.attrs == stack.attrs
        assert again.physical_pixel_sizes == stack.physical_pixel_sizes
        assert again.channel_names == stack.channel_names
        np.testing.assert_array_equal(again.compute(), stack.compute())


def test_axes_disagreement_quotes_both(image: Any) -> None:
    path, _, _ = image
    with pytest.raises(ShapeMismatchError) as info:
        load_zarrs([path], "ZCYX")
    assert "'ZCYX'" in str(info.value)
    assert "'CZYX'" in str(info.value)
    with pytest.raises(ValueError, match="'CZYX'"):
        load_zarrs([f"{path}/{load_zarrs([path], 'CZYX')[1].source.split('.ome.zarr/')[1]}"], "TZYX")


def test_level_stacks_pickle(image: Any) -> None:
    path, _, _ = image
    stack = load_zarrs([path], "CZYX")[1]
    again = pickle.loads(pickle.dumps(stack))
    assert again.level == 1
    assert again.physical_pixel_sizes == stack.physical_pixel_sizes
    np.testing.assert_array_equal(again.compute(), stack.compute())


def test_missing_level_lists_levels(tmp_path: Path) -> None:
    path = tmp_path / "img.ome.zarr"
    write_bioio(path, "0.5")
    with pytest.raises(SourceNotFoundError) as info:
        load_zarrs([f"file://{path}/7"], "CZYX")
    assert "'0' (array" in str(info.value)
    assert "'1' (array" in str(info.value)


def test_global_scale_multiplies(tmp_path: Path) -> None:
    """A multiscale-level coordinateTransformations scale multiplies the dataset's (NGFF 0.4)."""
    path = tmp_path / "g.ome.zarr"
    root = zarr.open_group(str(path), mode="w", zarr_format=2)
    root.create_array("0", shape=(8, 8), dtype="f4")[...] = 1.5
    root.attrs["multiscales"] = [
        {
            "version": "0.4",
            "axes": [{"name": "y", "type": "space", "unit": "micrometer"}, {"name": "x", "type": "space"}],
            "datasets": [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [2.0, 3.0]}]}],
            "coordinateTransformations": [{"type": "scale", "scale": [0.5, 10.0]}],
        }
    ]
    (stack,) = load_zarrs([path], "YX")
    assert stack.physical_pixel_sizes == {"Y": 1.0, "X": 30.0}
    assert stack.attrs["units"] == {"Y": "micrometer"}
    np.testing.assert_array_equal(stack.compute()[0, 0], np.full((8, 8), 1.5, dtype=np.float32))


def test_ngff_02_without_axes_is_tczyx(tmp_path: Path) -> None:
    path = tmp_path / "old.zarr"
    root = zarr.open_group(str(path), mode="w", zarr_format=2)
    root.create_array("0", shape=(1, 2, 1, 8, 8), dtype="u1")[...] = 3
    root.attrs["multiscales"] = [{"version": "0.2", "datasets": [{"path": "0"}]}]
    (stack,) = load_zarrs([path], "TCZYX")
    assert stack.level == 0
    assert stack.physical_pixel_sizes == {}
    with pytest.raises(ShapeMismatchError, match="'TCZYX'"):
        load_zarrs([path], "CZYX")
    root.attrs["multiscales"] = [{"version": "0.4", "datasets": [{"path": "0"}]}]
    with pytest.raises(SourceFormatError, match="needs 'axes'"):
        load_zarrs([path], "TCZYX")


def test_dataset_without_path_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "nopath.ome.zarr"
    root = zarr.open_group(str(path), mode="w", zarr_format=2)
    root.create_array("0", shape=(8, 8), dtype="u1")[...] = 1
    root.create_array("1", shape=(4, 4), dtype="u1")[...] = 2
    axes = [{"name": "y", "type": "space"}, {"name": "x", "type": "space"}]
    scale: Any = [{"type": "scale", "scale": [1.0, 1.0]}]
    root.attrs["multiscales"] = [
        {"version": "0.4", "axes": axes, "datasets": [{"coordinateTransformations": scale}, {"path": "1"}]}
    ]
    with pytest.raises(SourceFormatError, match=r"dataset 0 .* needs a 'path'") as info:
        load_zarrs([path], "YX")
    assert str(path) in str(info.value)


def test_bioformats2raw_layout_gives_every_image_level(tmp_path: Path) -> None:
    from lazystack import load_arrays
    from lazystack.ops.writing import write_ome_zarr

    rng = np.random.default_rng(3)
    images = [rng.integers(0, 1000, (2, 40, 36), dtype=np.uint16), rng.integers(0, 1000, (2, 24, 30), dtype=np.uint16)]
    stacks = [load_arrays(img, "CYX")[0] for img in images]
    path = write_ome_zarr(stacks, tmp_path / "many.ome.zarr", levels=2, chunks=16)
    loaded = load_zarrs([path], "CYX")
    assert [(s.attrs["image"], s.level) for s in loaded] == [("0", 0), ("0", 1), ("1", 0), ("1", 1)]
    for stack in loaded:
        name, level = stack.attrs["image"], stack.level
        full = np.asarray(zarr.open_array(str(Path(path) / name / str(level)), mode="r")[...])
        np.testing.assert_array_equal(stack.compute(), canonical_reference(full, "CYX"))
    np.testing.assert_array_equal(loaded[2].compute(), canonical_reference(images[1], "CYX"))
    (alone,) = load_zarrs([f"{path}/1/1"], "CYX")
    assert alone.level == 1
