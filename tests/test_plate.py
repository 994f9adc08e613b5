"""HCS plates (NGFF ``plate`` / ``well`` metadata): one stack per field (and level), named by plate/row/column/field.

The plate is written by ome-zarr-py (``write_plate_metadata``, ``write_well_metadata``, ``write_image``):
2 rows x 3 columns of wells, 2 fields each; every field's pixels are compared with zarr's own read.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import zarr

from lazystack import load, load_zarrs
from lazystack.core.errors import SourceFormatError, SourceNotFoundError

ROWS, COLUMNS, FIELDS = ["A", "B"], ["1", "2", "3"], 2


def _field_data(r: int, c: int, f: int) -> np.ndarray:
    return np.random.default_rng(100 * r + 10 * c + f).integers(0, 4000, (2, 32, 48), dtype=np.uint16)


@pytest.fixture(scope="module")
def plate(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from ome_zarr.writer import write_image, write_plate_metadata, write_well_metadata

    path = tmp_path_factory.mktemp("hcs") / "plate.ome.zarr"
    root = zarr.open_group(str(path), mode="w")
    wells = [f"{r}/{c}" for r in ROWS for c in COLUMNS]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        write_plate_metadata(root, ROWS, COLUMNS, wells, name="screen-1", field_count=FIELDS)
        for ri, r in enumerate(ROWS):
            for ci, c in enumerate(COLUMNS):
                well = root.require_group(r).require_group(c)
                write_well_metadata(well, [{"path": str(f)} for f in range(FIELDS)])
                for f in range(FIELDS):
                    image = well.require_group(str(f))
                    write_image(
                        _field_data(ri, ci, f), image, axes="cyx", scale_factors=(2,), scale={"y": 0.5, "x": 0.5}
                    )
    return path


def test_one_stack_per_field_and_level(plate: Path) -> None:
    stacks = load_zarrs(str(plate), "CYX")
    assert len(stacks) == len(ROWS) * len(COLUMNS) * FIELDS * 2
    full = stacks.at_level(0)
    assert len(full) == 12
    for stack in full:
        ri, ci = ROWS.index(stack.attrs["row"]), COLUMNS.index(stack.attrs["column"])
        f = stack.attrs["field"]
        assert stack.attrs["plate"] == "screen-1"
        assert stack.attrs["well"] == f"{stack.attrs['row']}/{stack.attrs['column']}"
        assert stack.source == f"file://{plate}/{stack.attrs['row']}/{stack.attrs['column']}/{f}/s0"
        np.testing.assert_array_equal(stack.xarray.values, _field_data(ri, ci, f))
        assert stack.physical_pixel_sizes == {"Y": 0.5, "X": 0.5}
    assert [(s.attrs["well"], s.attrs["field"]) for s in full[:3]] == [("A/1", 0), ("A/1", 1), ("A/2", 0)]
    # the levels of one field are grouped in the list, which names well and field
    assert [[s.level for s in g] for g in stacks.images()] == [[0, 1]] * 12
    assert "well B/3 field 1, level 0" in repr(stacks)


def test_plate_levels_and_declared_axes(plate: Path) -> None:
    stacks = load(str(plate), levels=1)  # axes from the first field's multiscales
    assert len(stacks) == 12
    assert {s.level for s in stacks} == {1}
    assert stacks[0].original_axes == "CYX"


def test_a_field_by_path(plate: Path) -> None:
    (stack,) = load_zarrs(f"{plate}/B/3/1", "CYX", levels=0)
    np.testing.assert_array_equal(stack.xarray.values, _field_data(1, 2, 1))


def test_missing_well_is_named(plate: Path, tmp_path: Path) -> None:
    import shutil

    broken = tmp_path / "broken.ome.zarr"
    shutil.copytree(plate, broken)
    shutil.rmtree(broken / "B" / "2")
    with pytest.raises(SourceNotFoundError, match=r"well 'B/2' listed in the plate metadata of .*broken\.ome\.zarr"):
        load_zarrs(str(broken), "CYX")


def test_plate_without_wells_is_invalid(tmp_path: Path) -> None:
    root = zarr.open_group(str(tmp_path / "empty.ome.zarr"), mode="w")
    root.attrs["ome"] = {"version": "0.5", "plate": {"rows": [], "columns": [], "wells": []}}
    with pytest.raises(SourceFormatError, match=r"plate\.wells must be a non-empty list"):
        load_zarrs(str(tmp_path / "empty.ome.zarr"), "CYX")


def test_info_draws_the_wells(plate: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import shutil

    from lazystack.frontends.cli import main

    partial = tmp_path / "partial.ome.zarr"
    shutil.copytree(plate, partial)
    # drop well B/2 from the plate (and its folder): the map shows it empty
    meta = zarr.open_group(str(partial), mode="r+")
    ome = meta.attrs.asdict()["ome"]
    ome["plate"]["wells"] = [w for w in ome["plate"]["wells"] if w["path"] != "B/2"]
    meta.attrs["ome"] = ome
    shutil.rmtree(partial / "B" / "2")
    assert main(["info", str(partial), "--levels", "0"]) == 0
    out = capsys.readouterr().out
    assert "plate screen-1: 5 wells, fields per well\n   1  2  3\nA  2  2  2\nB  2  .  2\n" in out
