"""Zipped OME-Zarr stores opened by their local path (``x.ome.zarr.zip``, ``x.zip/inner/path``).

They are read through fsspec's zip file system; pixels are compared with zarr's read of the unzipped folder.
"""

from __future__ import annotations

import os
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
import zarr

from lazystack import load, load_zarrs
from lazystack.core.errors import SourceNotFoundError

DATA = np.random.default_rng(6).integers(0, 4000, (2, 64, 48), dtype=np.uint16)


def _zip(folder: Path, archive: Path, prefix: str = "") -> None:
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as zf:
        for dirpath, _, files in os.walk(folder):
            for name in files:
                full = Path(dirpath) / name
                zf.write(full, prefix + str(full.relative_to(folder)))


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    from ome_zarr.writer import write_image

    base = tmp_path_factory.mktemp("zip")
    folder = base / "img.ome.zarr"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        write_image(DATA, zarr.open_group(str(folder), mode="w"), axes="cyx", scale_factors=(2,))
    _zip(folder, base / "img.ome.zarr.zip")  # the store at the archive's root
    _zip(folder, base / "nested.zip", prefix="img.ome.zarr/")  # the store as a folder in the archive
    return folder, base / "img.ome.zarr.zip", base / "nested.zip"


def test_zipped_store_by_path_equals_the_folder(stores: tuple[Path, Path, Path]) -> None:
    folder, archive, _ = stores
    expected = load_zarrs(str(folder), "CYX")
    got = load(str(archive))  # axes declared by the store inside the archive
    assert [s.level for s in got] == [s.level for s in expected] == [0, 1]
    for a, b in zip(got, expected, strict=True):
        assert a.source.startswith("zip://")
        assert a.source.endswith(f"::file://{archive}")
        np.testing.assert_array_equal(
            a.xarray.values, np.asarray(zarr.open_array(str(folder / b.source.rsplit("/", 1)[-1]), mode="r")[...])
        )
        assert a.physical_pixel_sizes == b.physical_pixel_sizes
    np.testing.assert_array_equal(got[0].xarray.values, DATA)


def test_level_and_nested_store_inside_an_archive(stores: tuple[Path, Path, Path]) -> None:
    folder, archive, nested = stores
    (level1,) = load(f"{archive}/s1", "CYX")
    assert level1.level == 1
    np.testing.assert_array_equal(level1.xarray.values, zarr.open_array(str(folder / "s1"), mode="r")[...])
    stacks = load_zarrs(f"{nested}/img.ome.zarr", "CYX", levels=0)
    np.testing.assert_array_equal(stacks[0].xarray.values, DATA)


def test_missing_node_in_archive_is_named(stores: tuple[Path, Path, Path]) -> None:
    _, archive, _ = stores
    with pytest.raises(SourceNotFoundError, match="s9"):
        load_zarrs(f"{archive}/s9", "CYX")
