"""Resolution levels of OME-Zarr pyramids: ``levels=`` on the loaders and the CLI, grouping, full-resolution stats.

Images are written by ome-zarr-py and ngff-zarr (3 levels each) and by lazystack itself; every
selected level is compared with zarr-python's own read of the level's array.
"""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr

from lazystack import load, load_arrays, load_zarrs, write_ome_zarr
from lazystack.core.errors import SelectionError, SourceNotFoundError
from lazystack.core.levels import finest_levels, parse_levels
from lazystack.frontends.cli_preprocess import add_convert_parser, add_stats_parser
from lazystack.ops.stats import channel_statistics

SHAPE = (3, 2, 64, 96)  # T C Y X
PATHS = {"ome-zarr-py": ["s0", "s1", "s2"], "ngff-zarr": ["scale0/image", "scale1/image", "scale2/image"]}


def _data() -> np.ndarray:
    return np.random.default_rng(3).integers(0, 4000, SHAPE, dtype=np.uint16)


def _write(writer: str, path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if writer == "ome-zarr-py":
            from ome_zarr.writer import write_image

            root = zarr.open_group(str(path), mode="w")
            write_image(_data(), root, axes="tcyx", scale_factors=(2, 4), scale={"y": 0.5, "x": 0.5})
        else:
            import ngff_zarr as nz

            image = nz.to_ngff_image(_data(), dims=["t", "c", "y", "x"], scale={"y": 0.5, "x": 0.5})
            nz.to_ngff_zarr(str(path), nz.to_multiscales(image, scale_factors=[2, 4], chunks=32), version="0.5")


@pytest.fixture(scope="module", params=sorted(PATHS))
def pyramid(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    path = tmp_path_factory.mktemp("levels") / f"{request.param}.ome.zarr"
    _write(request.param, path)
    return path, request.param


def _level_array(path: Path, writer: str, level: int) -> np.ndarray:
    return np.asarray(zarr.open_array(str(path / PATHS[writer][level]), mode="r")[...])


@pytest.mark.parametrize(
    ("levels", "expected"), [(None, [0, 1, 2]), ("all", [0, 1, 2]), (0, [0]), ([2, 0], [0, 2]), ("1,2", [1, 2])]
)
def test_load_zarrs_selects_levels(pyramid: Any, levels: Any, expected: list[int]) -> None:
    path, writer = pyramid
    stacks = load_zarrs(str(path), "TCYX", levels=levels)
    assert [s.level for s in stacks] == expected
    for stack in stacks:
        assert stack.source.endswith(PATHS[writer][stack.level])
        np.testing.assert_array_equal(stack.xarray.values, _level_array(path, writer, stack.level))


def test_load_selects_levels_and_keeps_non_pyramids_as_level_0(pyramid: Any, tmp_path: Path) -> None:
    path, _ = pyramid
    npy = tmp_path / "plain.npy"
    np.save(npy, _data())
    assert [s.level for s in load([str(path), str(npy)], "TCYX", levels=0)] == [0, None]
    assert [s.level for s in load([str(path), str(npy)], "TCYX", levels=[1])] == [1]  # the .npy has no level 1
    assert [s.level for s in load(str(path), levels="all")] == [0, 1, 2]  # axes declared by the file


def test_level_path_is_kept_whatever_levels_says(pyramid: Any) -> None:
    path, writer = pyramid
    (stack,) = load_zarrs(f"{path}/{PATHS[writer][1]}", "TCYX", levels=0)
    assert stack.level == 1
    assert stack.attrs["image_uri"] == f"file://{path}"


@pytest.mark.parametrize("bad", [-1, "x", "0,a", [], True, 1.5])
def test_invalid_levels_are_rejected(pyramid: Any, bad: Any) -> None:
    path, _ = pyramid
    with pytest.raises(SelectionError, match="levels"):
        load_zarrs(str(path), "TCYX", levels=bad)


def test_missing_level_names_the_image_and_its_levels(pyramid: Any) -> None:
    path, _ = pyramid
    with pytest.raises(SourceNotFoundError, match=r"has 3 resolution level\(s\) \(0 to 2\), not level 5"):
        load_zarrs(str(path), "TCYX", levels=[0, 5])


def test_parse_levels() -> None:
    assert parse_levels(None) is None
    assert parse_levels(" ALL ") is None
    assert parse_levels(np.int64(2)) == (2,)
    assert parse_levels((3, 1, 3)) == (1, 3)


def test_stacklist_groups_levels_of_one_image(tmp_path: Path) -> None:
    stacks = [*load_arrays([np.zeros((64, 64), np.uint8), np.ones((32, 32), np.uint8)], "YX")]
    path = write_ome_zarr(stacks, tmp_path / "two.ome.zarr", levels=3)
    loaded = load_zarrs(path, "YX")
    assert [(s.attrs["image"], s.level) for s in loaded] == [("0", 0), ("0", 1), ("0", 2), ("1", 0), ("1", 1), ("1", 2)]
    groups = loaded.images()
    assert [[s.level for s in g] for g in groups] == [[0, 1, 2], [0, 1, 2]]
    assert [g[0].attrs["image"] for g in groups] == ["0", "1"]
    assert [s.level for s in loaded.at_level(1)] == [1, 1]
    text = repr(loaded)
    assert text.startswith("StackList of 6 stacks (2 images, levels of one image grouped)")
    lines = text.splitlines()[3:]
    assert [line.startswith("  └ ") for line in lines] == [False, True, True, False, True, True]
    assert lines[1].split()[1] == "1"  # level 1 of image 0 shown under it by its path in the image
    assert "level 1" in lines[1]
    # the HTML repr shows the same rows
    assert loaded._repr_html_().count("└") == 4


def test_channel_statistics_default_to_full_resolution(pyramid: Any) -> None:
    path, writer = pyramid
    stacks = load_zarrs(str(path), "TCYX")
    full = _level_array(path, writer, 0)
    stats = channel_statistics(stacks, percentiles=(50,))
    assert stats.n_stacks == 1
    assert stats.levels_left_out == 2
    assert stats.count.tolist() == [full[:, c].size for c in range(2)]
    np.testing.assert_allclose(stats.mean, full.mean(axis=(0, 2, 3)), rtol=1e-12)
    every = channel_statistics(stacks, percentiles=(), levels="all")
    sizes = sum(_level_array(path, writer, lvl)[:, 0].size for lvl in range(3))
    assert every.count.tolist() == [sizes, sizes]
    assert every.levels_left_out == 0
    coarse = channel_statistics(stacks, percentiles=(), levels=2)
    assert coarse.count.tolist() == [_level_array(path, writer, 2)[:, 0].size] * 2
    assert coarse.levels_left_out == 2
    # a coarser level given alone is that image's finest: kept
    alone = channel_statistics(stacks[1:], percentiles=())
    assert alone.n_stacks == 1
    assert alone.count[0] == _level_array(path, writer, 1)[:, 0].size


def test_finest_levels_keeps_each_image_separately(tmp_path: Path) -> None:
    stacks = [*load_arrays([np.zeros((64, 64), np.uint8), np.ones((32, 32), np.uint8)], "YX")]
    loaded = load_zarrs(write_ome_zarr(stacks, tmp_path / "two.ome.zarr", levels=2), "YX")
    kept, dropped = finest_levels(loaded)
    assert [(s.attrs["image"], s.level) for s in kept] == [("0", 0), ("1", 0)]
    assert [(s.attrs["image"], s.level) for s in dropped] == [("0", 1), ("1", 1)]


def _run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="lazystack")
    sub = parser.add_subparsers(dest="command", required=True)
    add_stats_parser(sub)
    add_convert_parser(sub)
    args = parser.parse_args(argv)
    return int(args.handler(args))


def test_cli_stats_counts_full_resolution_and_says_so(pyramid: Any, capsys: Any) -> None:
    path, writer = pyramid
    full = _level_array(path, writer, 0)
    assert _run(["stats", str(path), "--quiet", "--percentiles", "50"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("1 stack(s), 2 channel(s)")
    assert f"  {full[:, 0].size}  " in out
    assert "full resolution only: 2 stack(s) of coarser pyramid levels left out (--levels all" in out
    assert _run(["stats", str(path), "--quiet", "--json", "--levels", "all"]) == 0
    captured = capsys.readouterr()
    total = sum(_level_array(path, writer, lvl)[:, 0].size for lvl in range(3))
    assert json.loads(captured.out)["count"] == [total, total]
    assert "left out" not in captured.err
    assert _run(["stats", str(path), "--quiet", "--json", "--levels", "1"]) == 0
    assert json.loads(capsys.readouterr().out)["count"] == [_level_array(path, writer, 1)[:, 0].size] * 2


def test_cli_convert_writes_the_full_resolution(pyramid: Any, tmp_path: Path, capsys: Any) -> None:
    path, writer = pyramid
    out = tmp_path / "out.ome.zarr"
    assert _run(["convert", str(path), "--out", str(out), "--quiet", "--levels", "2"]) == 0
    assert "2 stack(s) of coarser pyramid levels left out (--input-levels all" in capsys.readouterr().out
    written = load_zarrs(str(out), "TCYX")
    assert [s.level for s in written] == [0, 1]
    np.testing.assert_array_equal(written[0].xarray.values, _level_array(path, writer, 0))
    out2 = tmp_path / "out2.ome.zarr"
    assert _run(["convert", str(path), "--out", str(out2), "--quiet", "--levels", "1", "--input-levels", "2"]) == 0
    (only,) = load_zarrs(str(out2), "TCYX")
    np.testing.assert_array_equal(only.xarray.values, _level_array(path, writer, 2))
