"""OME-Zarr ``labels/``: label images open as stacks linked to their image (written by ome-zarr-py ``write_labels``)."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import zarr

from lazystack import load, load_zarrs
from lazystack.core.errors import SourceNotFoundError

IMAGE = np.random.default_rng(4).integers(0, 4000, (2, 64, 48), dtype=np.uint16)  # C Y X
NUCLEI = (np.arange(64 * 48).reshape(64, 48) // 700).astype(np.uint32)  # Y X
CELLS = (NUCLEI % 3).astype(np.uint8)


@pytest.fixture(scope="module")
def labelled(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from ome_zarr.writer import write_image, write_labels

    path = tmp_path_factory.mktemp("labels") / "img.ome.zarr"
    root = zarr.open_group(str(path), mode="w")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        write_image(IMAGE, root, axes="cyx", scale_factors=(2,), scale={"y": 0.5, "x": 0.5})
        for name, data in (("nuclei", NUCLEI), ("cells", CELLS)):
            write_labels(data, root, name=name, axes="yx", scale_factors=(2,), scale={"y": 0.5, "x": 0.5})
    return path


def _level(path: Path, label: str, level: int) -> np.ndarray:
    group = zarr.open_group(str(path / "labels" / label), mode="r")
    ome = group.attrs.get("ome", group.attrs)
    return np.asarray(group[ome["multiscales"][0]["datasets"][level]["path"]][...])


def test_label_image_is_linked_to_its_image(labelled: Path) -> None:
    stacks = load_zarrs(f"{labelled}/labels/nuclei", "YX")
    group = zarr.open_group(str(labelled / "labels" / "nuclei"), mode="r")
    n_levels = len(group.attrs.get("ome", group.attrs)["multiscales"][0]["datasets"])
    assert [s.level for s in stacks] == list(range(n_levels))
    for stack in stacks:
        assert stack.attrs["label_name"] == "nuclei"
        assert stack.attrs["label_of"] == f"file://{labelled}"
        np.testing.assert_array_equal(stack.xarray.values, _level(labelled, "nuclei", stack.level))
    np.testing.assert_array_equal(stacks[0].xarray.values, NUCLEI)
    (image, *_) = load_zarrs(str(labelled), "CYX", levels=0)
    assert stacks[0].attrs["label_of"] == image.attrs["image_uri"]  # the pair: image and its label
    assert stacks[0].physical_pixel_sizes == image.physical_pixel_sizes
    assert image.data_shape[2:] == stacks[0].data_shape[2:]


def test_labels_group_gives_every_label(labelled: Path) -> None:
    stacks = load(f"{labelled}/labels", levels=0)  # axes declared by the first label's multiscales
    names = zarr.open_group(str(labelled / "labels"), mode="r").attrs.asdict()
    listed = names.get("ome", names)["labels"]
    assert [s.attrs["label_name"] for s in stacks] == listed
    for stack in stacks:
        np.testing.assert_array_equal(stack.xarray.values, NUCLEI if stack.attrs["label_name"] == "nuclei" else CELLS)


def test_the_image_alone_is_not_mixed_with_its_labels(labelled: Path) -> None:
    stacks = load_zarrs(str(labelled), "CYX")
    assert [s.level for s in stacks] == [0, 1]
    assert all("label_name" not in s.attrs for s in stacks)


def test_listed_label_that_is_missing_is_named(labelled: Path, tmp_path: Path) -> None:
    import shutil

    broken = tmp_path / "broken.ome.zarr"
    shutil.copytree(labelled, broken)
    shutil.rmtree(broken / "labels" / "cells")
    with pytest.raises(SourceNotFoundError, match=r"label 'cells' listed by .*broken\.ome\.zarr/labels"):
        load_zarrs(f"{broken}/labels", "YX")
