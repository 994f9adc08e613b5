"""Review of the user-audit fixes: each test pins a regression or a gap found in them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest


# -- convert: only an existing output is reported as existing (fix 4) -------------------------------------
@pytest.mark.parametrize("overwrite", [False, True])
def test_convert_below_a_file_does_not_claim_the_output_exists(tmp_path: Path, capsys: Any, overwrite: bool) -> None:
    from lazystack.frontends.cli import main

    np.save(tmp_path / "frames.npy", np.zeros((2, 8, 8), np.uint8))
    (tmp_path / "afile").write_text("not a folder")
    out = tmp_path / "afile" / "out.ome.zarr"  # its parent is a file: mkdir raises FileExistsError
    argv = ["convert", str(tmp_path / "frames.npy"), "--axes", "TYX", "--out", str(out), "--quiet"]
    assert main(argv + (["--overwrite"] if overwrite else [])) == 1
    err = capsys.readouterr().err
    assert not out.exists()
    assert "already exists; pass --overwrite" not in err  # it does not exist, and --overwrite cannot help
    assert "afile" in err
    assert (tmp_path / "afile").read_text() == "not a folder"


# -- a stack derived from a strided view keeps the view's pixel sizes (fix 1) ----------------------------------
def test_normalized_strided_view_keeps_its_pixel_sizes(tmp_path: Path) -> None:
    from lazystack import LazyImageStack, load, write_ome_zarr
    from lazystack.ops.normalize import normalized
    from lazystack.ops.stats import channel_statistics

    data = np.arange(4 * 20 * 30, dtype=np.uint16).reshape(4, 20, 30)
    stack = LazyImageStack(data, "ZYX", attrs={"physical_pixel_sizes": {"Z": 2.0, "Y": 0.5, "X": 0.25}})
    view = stack.isel(Y=slice(3, None, 3), X=slice(1, None, 2))
    norm = normalized(view, channel_statistics(view), method="minmax")
    assert norm.physical_pixel_sizes == view.physical_pixel_sizes
    for axis in "YX":  # the reference: the derived stack's own positions
        assert norm.physical_pixel_sizes[axis] == pytest.approx(float(np.diff(norm.coords[axis])[0]))
    (back,) = load(write_ome_zarr(norm, tmp_path / "norm.ome.zarr", levels=1))
    for axis in "ZYX":
        np.testing.assert_allclose(back.coords[axis], view.coords[axis])


# -- '.zip' refusal is write_ome_zarr's: what an earlier write to 'x.zip' left is still listed (integrator's fix) ----
def test_stale_partial_outputs_of_a_zip_named_target_are_listed(tmp_path: Path) -> None:
    from lazystack import stale_partial_outputs

    target = tmp_path / "old.zip"  # earlier versions wrote a folder store there
    folder = tmp_path / f".{target.name}.partial-0123456789ab"
    folder.mkdir()
    (folder / "zarr.json").write_text("{}")  # no marker: not provably abandoned, but listed
    (found,) = stale_partial_outputs(target)
    assert Path(found.path) == folder
    assert not found.abandoned


def test_strided_view_xarray_attrs_carry_the_views_pixel_sizes() -> None:
    from lazystack import LazyImageStack

    data = np.arange(4 * 20 * 30, dtype=np.uint16).reshape(4, 20, 30)
    stack = LazyImageStack(data, "ZYX", attrs={"physical_pixel_sizes": {"Z": 2.0, "Y": 0.5, "X": 0.25}})
    view = stack.isel(Y=slice(3, None, 3), X=slice(1, None, 2))
    da = view.xarray
    for axis in "YX":  # the reference: the DataArray's own coordinates
        spacing = float(np.diff(da.coords[axis].values)[0])
        assert da.attrs["physical_pixel_sizes"][axis] == pytest.approx(spacing)
    assert stack.xarray.attrs["physical_pixel_sizes"] == {"Z": 2.0, "Y": 0.5, "X": 0.25}


# -- TIFF: a non-positive size of an axis the file does not have is no warning (fix 8) -------------------------
def test_tiff_zero_size_of_an_absent_axis_does_not_warn(tmp_path: Path) -> None:
    import warnings

    import tifffile

    from lazystack import load

    path = tmp_path / "plane.ome.tif"
    meta = {"axes": "YX", "PhysicalSizeX": 0.5, "PhysicalSizeY": 0.25, "PhysicalSizeZ": 0.0}
    tifffile.imwrite(path, np.zeros((16, 16), np.uint8), ome=True, metadata=meta)
    assert 'PhysicalSizeZ="0.0"' in tifffile.TiffFile(path).ome_metadata  # the file declares it (a 2-D image)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        (stack,) = load(str(path))
    assert stack.physical_pixel_sizes == {"X": 0.5, "Y": 0.25}


def test_convert_onto_an_existing_store_given_with_a_tilde_names_the_option(
    tmp_path: Path, capsys: Any, monkeypatch: Any
) -> None:
    from lazystack.frontends.cli import main

    monkeypatch.setenv("HOME", str(tmp_path))  # '--out=~/x' is not expanded by the shell
    np.save(tmp_path / "frames.npy", np.zeros((2, 8, 8), np.uint8))
    argv = ["convert", str(tmp_path / "frames.npy"), "--axes", "TYX", "--out=~/out.ome.zarr", "--quiet"]
    assert main(argv) == 0
    assert (tmp_path / "out.ome.zarr").is_dir()
    capsys.readouterr()
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "pass --overwrite" in err
    assert "overwrite=True" not in err
