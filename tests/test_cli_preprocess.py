"""The ``stats`` and ``convert`` subcommands, run through a parser built like lazystack.frontends.cli's."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr

from lazystack.frontends.cli_preprocess import add_convert_parser, add_stats_parser


def run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="lazystack")
    sub = parser.add_subparsers(dest="command", required=True)
    add_stats_parser(sub)
    add_convert_parser(sub)
    args = parser.parse_args(argv)
    return int(args.handler(args))


@pytest.fixture
def npy_files(tmp_path: Path) -> tuple[list[str], np.ndarray]:
    rng = np.random.default_rng(0)
    a = rng.integers(0, 3000, (2, 2, 40, 36)).astype(np.uint16)
    b = rng.integers(0, 3000, (3, 2, 20, 24)).astype(np.uint16)
    np.save(tmp_path / "a.npy", a)
    np.save(tmp_path / "b.npy", b)
    values = np.concatenate([np.moveaxis(x, 1, 0).reshape(2, -1) for x in (a, b)], axis=1).astype(np.float64)
    return [str(tmp_path / "a.npy"), str(tmp_path / "b.npy")], values


def test_stats_json_matches_numpy(npy_files: tuple[list[str], np.ndarray], capsys: Any) -> None:
    paths, values = npy_files
    assert run(["stats", *paths, "--axes", "TCYX", "--json", "--quiet", "--percentiles", "1,50,99.5"]) == 0
    captured = capsys.readouterr()
    out = json.loads(captured.out)
    assert captured.err == ""  # --quiet: no progress bar
    assert out["n_stacks"] == 2
    assert out["count"] == [values.shape[1]] * 2
    np.testing.assert_allclose(out["mean"], values.mean(1), rtol=1e-12)
    np.testing.assert_allclose(out["std"], values.std(1), rtol=1e-10)
    assert out["min"] == values.min(1).tolist()
    assert sorted(out["percentiles"]) == ["1.0", "50.0", "99.5"]
    for q in (1.0, 50.0, 99.5):
        np.testing.assert_allclose(out["percentiles"][repr(q)], np.percentile(values, q, axis=1), rtol=1e-12)


def test_stats_table_progress_and_output_file(
    npy_files: tuple[list[str], np.ndarray], tmp_path: Path, capsys: Any
) -> None:
    paths, values = npy_files
    assert run(["stats", *paths, "--axes", "TCYX", "--output", str(tmp_path / "s.json")]) == 0
    captured = capsys.readouterr()
    assert "100% Completed" in captured.err  # progress is on by default on the command line
    lines = captured.out.splitlines()
    assert lines[0] == "2 stack(s), 2 channel(s)"
    assert lines[1].split() == ["channel", "count", "mean", "std", "min", "max", "p0.1", "p1", "p50", "p99", "p99.9"]
    row = lines[2].split()
    assert row[0] == "0"
    assert int(row[1]) == values.shape[1]
    assert float(row[2]) == pytest.approx(values[0].mean(), rel=1e-5)
    saved = json.loads((tmp_path / "s.json").read_text())
    np.testing.assert_allclose(saved["mean"], values.mean(1), rtol=1e-12)


@pytest.mark.parametrize("scheduler", ["processes", "synchronous", "sync"])
def test_stats_on_local_schedulers(npy_files: tuple[list[str], np.ndarray], capsys: Any, scheduler: str) -> None:
    paths, values = npy_files
    assert run(["stats", *paths, "--axes", "TCYX", "--json", "--quiet", "--scheduler", scheduler]) == 0
    np.testing.assert_allclose(json.loads(capsys.readouterr().out)["mean"], values.mean(1), rtol=1e-12)


def test_stats_sample_fraction_is_reproducible(npy_files: tuple[list[str], np.ndarray], capsys: Any) -> None:
    paths, values = npy_files
    paths = paths * 4  # 8 stacks of one chunk each
    outs = []
    for _ in range(2):
        run(["stats", *paths, "--axes", "TCYX", "--json", "--quiet", "--sample-fraction", "0.5", "--seed", "3"])
        outs.append(json.loads(capsys.readouterr().out))
    assert outs[0] == outs[1]
    assert outs[0]["sample_fraction"] == 0.5
    assert outs[0]["n_stacks"] == 8
    assert 0 < outs[0]["count"][0] < 4 * values.shape[1]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--scheduler", "gpu"], "invalid scheduler 'gpu'"),
        (["--percentiles", "50,abc"], "invalid percentiles"),
        (["--percentiles", "150"], "between 0 and 100"),
        (["--sample-fraction", "2"], "invalid sample fraction"),
    ],
)
def test_bad_arguments_are_usage_errors(tmp_path: Path, capsys: Any, argv: list[str], message: str) -> None:
    with pytest.raises(SystemExit) as exc:
        run(["stats", str(tmp_path / "x.npy"), "--axes", "YX", *argv])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_unreachable_scheduler_is_a_clear_error() -> None:
    pytest.importorskip("distributed")
    from lazystack.frontends.cli_preprocess import _scheduler_arg, scheduler

    spec = _scheduler_arg("127.0.0.1:1")
    assert spec == "tcp://127.0.0.1:1"
    with (
        pytest.raises(OSError, match=r"cannot connect to the dask scheduler at 'tcp://127\.0\.0\.1:1'"),
        scheduler(spec, timeout="1s"),
    ):
        pass


def test_convert_one_source_writes_one_image(tmp_path: Path, capsys: Any) -> None:
    data = np.random.default_rng(1).integers(0, 255, (30, 40, 3)).astype(np.uint8)
    np.save(tmp_path / "rgb.npy", data)
    out = tmp_path / "rgb.zarr"
    argv = ["convert", str(tmp_path / "rgb.npy"), "--axes", "YXC", "--out", str(out), "--levels", "2", "--quiet"]
    assert run([*argv, "--chunks", "Y=16,X=8"]) == 0
    assert f"wrote 1 image to {out} (axes CYX)" in capsys.readouterr().out
    group = zarr.open_group(str(out), mode="r")
    np.testing.assert_array_equal(group["0"][:], data.transpose(2, 0, 1))
    assert group["0"].chunks == (1, 16, 8)
    assert group["1"].shape == (3, 15, 20)
    with pytest.raises(FileExistsError):
        run(argv)
    assert run([*argv, "--overwrite", "--levels", "1"]) == 0
    assert sorted(zarr.open_group(str(out), mode="r").array_keys()) == ["0"]


def test_convert_several_sources_writes_a_group(
    npy_files: tuple[list[str], np.ndarray], tmp_path: Path, capsys: Any
) -> None:
    paths, _ = npy_files
    out = tmp_path / "many.zarr"
    assert run(["convert", *paths, "--axes", "TCYX", "--out", str(out), "--chunks", "16"]) == 0
    captured = capsys.readouterr()
    assert "wrote 2 images (groups 0..1)" in captured.out
    assert "Completed" in captured.err
    root = zarr.open_group(str(out), mode="r")
    for i, path in enumerate(paths):
        np.testing.assert_array_equal(root[f"{i}/0"][:], np.load(path))
        assert root[f"{i}/0"].chunks == (1, 1, 16, 16)


def test_convert_bad_chunks(npy_files: tuple[list[str], np.ndarray], tmp_path: Path) -> None:
    paths, _ = npy_files
    with pytest.raises(ValueError, match="invalid --chunks 'Y=a'"):
        run(["convert", *paths, "--axes", "TCYX", "--out", str(tmp_path / "o.zarr"), "--chunks", "Y=a"])
    assert not (tmp_path / "o.zarr").exists()


def test_convert_tiff(tmp_path: Path) -> None:
    pytest.importorskip("lazystack.sources.tiff")
    import tifffile

    data = np.random.default_rng(2).integers(0, 4000, (4, 32, 32)).astype(np.uint16)
    tifffile.imwrite(tmp_path / "t.tif", data, photometric="minisblack")
    out = tmp_path / "t.zarr"
    assert run(["convert", str(tmp_path / "t.tif"), "--axes", "ZYX", "--out", str(out), "--quiet"]) == 0
    np.testing.assert_array_equal(zarr.open_group(str(out), mode="r")["0"][:], tifffile.imread(tmp_path / "t.tif"))
