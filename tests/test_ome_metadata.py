"""Invalid OME-Zarr (NGFF) metadata: clear errors or warnings that name the file and the field.

Each case starts from a valid image written by ome-zarr-py and breaks one field of its metadata.
"""

from __future__ import annotations

import copy
import json
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr

from lazystack import MetadataWarning, load, load_zarrs
from lazystack.core.errors import SourceFormatError


@pytest.fixture
def image(tmp_path: Path) -> Path:
    from ome_zarr.writer import write_image

    path = tmp_path / "img.ome.zarr"
    root = zarr.open_group(str(path), mode="w")
    data = np.arange(2 * 32 * 48, dtype=np.uint16).reshape(2, 32, 48)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        write_image(data, root, axes="cyx", scale_factors=(2,), scale={"y": 0.5, "x": 0.25})
    return path


def _edit(path: Path, change: Any) -> None:
    """Rewrite the image's ``zarr.json`` attributes with ``change(ome)`` (the ``ome`` dict, edited in place)."""
    meta_file = path / "zarr.json"
    meta = json.loads(meta_file.read_text())
    ome = copy.deepcopy(meta["attributes"]["ome"])
    change(ome)
    meta["attributes"]["ome"] = ome
    meta_file.write_text(json.dumps(meta))


def _datasets(ome: dict[str, Any]) -> list[dict[str, Any]]:
    return ome["multiscales"][0]["datasets"]


def _set_scale(value: Any, level: int = 0) -> Any:
    def change(ome: dict[str, Any]) -> None:
        _datasets(ome)[level]["coordinateTransformations"][0]["scale"] = value

    return change


def test_valid_image_reads_scale(image: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        stacks = load_zarrs(str(image), "CYX")
    assert stacks[0].physical_pixel_sizes == {"Y": 0.5, "X": 0.25}
    assert stacks[1].physical_pixel_sizes == {"Y": 1.0, "X": 0.5}


@pytest.mark.parametrize(
    ("change", "field", "problem"),
    [
        (
            _set_scale([1.0, 0.5]),
            "multiscales[0].datasets[0].coordinateTransformations[0].scale",
            "has 2 values for the 3 axes ['c', 'y', 'x']",
        ),
        (
            _set_scale([1.0, 0.5, 0.25, 1.0], level=1),
            "multiscales[0].datasets[1].coordinateTransformations[0].scale",
            "has 4 values",
        ),
        (
            _set_scale([1.0, "a", 0.25]),
            "multiscales[0].datasets[0].coordinateTransformations[0].scale",
            "holds 'a', which is not a number",
        ),
        (
            _set_scale("0.5"),
            "multiscales[0].datasets[0].coordinateTransformations[0].scale",
            "must be a list of 3 numbers",
        ),
        (lambda ome: _datasets(ome).clear(), "multiscales[0].datasets", "is empty"),
        (lambda ome: ome["multiscales"][0].pop("datasets"), "multiscales[0].datasets", "must be a list"),
        (
            lambda ome: ome.update(multiscales=ome["multiscales"][0]),
            "'multiscales'",
            "must be a list of multiscale objects, got a dict",
        ),
        (lambda ome: ome.update(multiscales=["datasets"]), "multiscales[0]", "must be an object, got 'datasets'"),
    ],
)
def test_invalid_metadata_names_file_and_field(image: Path, change: Any, field: str, problem: str) -> None:
    _edit(image, change)
    with pytest.raises(SourceFormatError) as info:
        load_zarrs(str(image), "CYX")
    text = str(info.value)
    assert f"invalid OME-Zarr metadata in 'file://{image}'" in text
    assert field in text
    assert problem in text
    assert "got 'datasets', got" not in text


def test_invalid_metadata_also_fails_a_level_path(image: Path) -> None:
    _edit(image, _set_scale([1.0, 0.5]))
    with pytest.raises(SourceFormatError, match=re.escape("datasets[0].coordinateTransformations[0].scale")):
        load(f"{image}/s1", "CYX")


@pytest.mark.parametrize("bad", [0.0, -0.5])
def test_non_positive_scale_warns_and_is_left_out(image: Path, bad: float) -> None:
    _edit(image, _set_scale([1.0, bad, 0.25]))
    with pytest.warns(
        MetadataWarning, match=r"datasets\[0\]\.coordinateTransformations\[0\]\.scale .* along 'y'"
    ) as rec:
        stacks = load_zarrs(str(image), "CYX")
    assert str(image) in str(rec[0].message)
    assert stacks[0].physical_pixel_sizes == {"X": 0.25}  # the odd Y size is not used
    assert stacks[1].physical_pixel_sizes == {"Y": 1.0, "X": 0.5}
    np.testing.assert_array_equal(stacks[0].xarray.values, zarr.open_array(str(image / "s0"), mode="r")[...])


def test_non_finite_translation_is_an_error(image: Path) -> None:
    def change(ome: dict[str, Any]) -> None:
        _datasets(ome)[1]["coordinateTransformations"].append(
            {"type": "translation", "translation": [0, float("nan"), 0]}
        )

    _edit(image, change)
    with pytest.raises(
        SourceFormatError, match=r"datasets\[1\]\.coordinateTransformations\[\d\]\.translation .* not finite along 'y'"
    ):
        load_zarrs(str(image), "CYX")
