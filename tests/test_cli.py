"""The ``lazystack`` command line: every subcommand, help, exit codes, one-line errors."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from conftest import shared_files

from lazystack.frontends.cli import build_parser, main

HAS_PREPROCESS = importlib.util.find_spec("lazystack.frontends.cli_preprocess") is not None
SUBCOMMANDS = ["info", "demo"] + (["stats", "convert"] if HAS_PREPROCESS else [])


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """Run the command line in-process: (exit code, stdout, stderr)."""
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse: --help, usage errors
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(err: str, *needles: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


@pytest.fixture
def npy(tmp_path: Path) -> Path:
    path = tmp_path / "frames.npy"
    np.save(path, np.arange(3 * 2 * 16 * 12, dtype=np.uint16).reshape(3, 2, 16, 12))
    return path


# -- help and usage errors (exit 2) ----------------------------------------------------------------


def test_help_of_main_and_every_subcommand(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["--help"], capsys)
    assert code == 0
    for name in ("info", "demo"):
        assert name in out
    for name in SUBCOMMANDS:
        code, out, _ = run([name, "--help"], capsys)
        assert code == 0, name
        assert f"usage: lazystack {name}" in out


def test_parser_lists_expected_subcommands() -> None:
    listed = build_parser().format_help()
    for name in SUBCOMMANDS:
        assert f"    {name} " in listed, name


def test_help_texts_are_consistent(capsys: pytest.CaptureFixture[str]) -> None:
    """Every subcommand: a one-line lower-case summary without a final period, a description that is a
    sentence, the same SOURCE / --axes help wherever they appear, and every default stated as "(default ...)"."""
    main_help = build_parser().format_help()
    summaries = {}
    for line in main_help.splitlines():
        parts = line.split(maxsplit=1)
        if len(parts) == 2 and parts[0] in SUBCOMMANDS and line.startswith("    "):
            summaries[parts[0]] = parts[1]
    assert set(summaries) == set(SUBCOMMANDS)
    for name, summary in summaries.items():
        assert summary[0].islower(), (name, summary)
        assert not summary.endswith("."), (name, summary)
    source_help = set()
    for name in SUBCOMMANDS:
        code, out, _ = run([name, "--help"], capsys)
        assert code == 0
        text = " ".join(out.split())
        assert "default:" not in text.replace("default: the axes", "").replace("default: a temporary", ""), name
        if "SOURCE [SOURCE ...]" in out:
            start = text.index("SOURCE a file")
            source_help.add(text[start : text.index(" options:", start)])
            assert "folder" in text[start:], name
    assert len(source_help) == 1, source_help  # info, stats and convert describe SOURCE the same way


def test_no_private_argparse_names() -> None:
    import lazystack.frontends.cli as cli

    for module in ("cli", "cli_preprocess"):
        source = (Path(cli.__file__).parent / f"{module}.py").read_text(encoding="utf-8")
        assert "argparse._" not in source, module


@pytest.mark.parametrize(
    "argv",
    [[], ["frobnicate"], ["info"], ["info", "x.tif", "--bogus"], ["demo", "--size", "big"], ["info", "--json"]],
)
def test_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(argv, capsys)
    assert code == 2
    assert "usage:" in err
    assert "Traceback" not in err


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    import lazystack

    code, out, _ = run(["--version"], capsys)
    assert code == 0
    assert out.strip() == f"lazystack {lazystack.__version__}"


# -- info ---------------------------------------------------------------------------------------------


def test_info_table(npy: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(["info", str(npy), "--axes", "TCYX"], capsys)
    assert code == 0, err
    header, rule, row = out.strip().splitlines()
    assert header.split()[:4] == ["source", "format", "original", "canonical"]
    assert set(rule.replace(" ", "")) == {"-"}
    assert str(npy) in row
    assert "TCYX (3, 2, 16, 12)" in row
    assert "SCYX (3, 2, 16, 12)" in row
    assert "uint16" in row


def test_info_json(npy: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["info", str(npy), str(npy), "--axes", "tcyx", "--json"], capsys)
    assert code == 0
    records = json.loads(out)
    assert len(records) == 2
    rec = records[0]
    assert rec["source"] == str(npy)
    assert rec["format"] == "npy"
    assert rec["original_axes"] == "TCYX"
    assert rec["original_shape"] == [3, 2, 16, 12]
    assert rec["canonical_shape"] == [3, 2, 16, 12]
    assert rec["dtype"] == "uint16"
    assert rec["memory_bytes"] == 3 * 2 * 16 * 12 * 2
    assert rec["disk_bytes"] == npy.stat().st_size
    assert rec["axes_from"] == "--axes"


def test_info_missing_file_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(["info", str(tmp_path / "missing.tif"), "--axes", "YX"], capsys)
    assert code == 1
    assert out == ""
    assert_one_line_error(err, "lazystack info: error:", "missing.tif")


def test_info_reports_every_good_file_and_names_each_failure(
    npy: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = tmp_path / "broken.czi"
    broken.write_bytes(b"not a czi file")
    missing = tmp_path / "missing.tif"
    argv = ["info", str(missing), str(npy), str(broken), str(npy), "--axes", "TCYX"]
    code, out, err = run(argv, capsys)
    assert code == 1  # some sources failed
    rows = out.strip().splitlines()[2:]
    assert len(rows) == 2
    assert all(str(npy) in r and "TCYX (3, 2, 16, 12)" in r for r in rows)
    lines = err.strip().splitlines()
    assert "Traceback" not in err
    assert len(lines) == 3, err
    assert lines[0].startswith("lazystack info: error:")
    assert str(missing) in lines[0]
    assert lines[1].startswith("lazystack info: error:")
    assert str(broken) in lines[1]
    assert lines[2] == "lazystack info: 2 of 4 sources failed"

    code, out, err = run([*argv, "--json"], capsys)
    assert code == 1
    records = json.loads(out)  # stdout stays valid JSON: the records of the good sources
    assert [r["input"] for r in records] == [str(npy), str(npy)]
    assert str(missing) in err
    assert str(broken) in err


def test_info_failure_names_source_when_message_does_not(
    npy: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(["info", str(npy), str(tmp_path / "x.npy"), "--axes", "TCYX", "--json"], capsys)
    assert code == 1
    assert all(("x.npy" in line) or "1 of 2" in line for line in err.strip().splitlines()), err


def _tiff(path: Path, data: np.ndarray, axes: str) -> None:
    import tifffile

    path.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(path, data, photometric="minisblack", metadata={"axes": axes})


@pytest.fixture
def folder(tmp_path: Path) -> tuple[Path, dict[str, np.ndarray]]:
    """A folder as a microscope leaves it: TIFFs, a nested folder, a Zarr store, unrelated files."""
    pytest.importorskip("lazystack.sources.tiff")
    import zarr

    root = tmp_path / "experiment"
    rng = np.random.default_rng(3)
    data = {
        "b.tif": rng.integers(0, 500, (2, 16, 16), dtype=np.uint16),
        "a.tif": rng.integers(0, 500, (3, 16, 16), dtype=np.uint16),
        "day2/c.tif": rng.integers(0, 500, (1, 16, 16), dtype=np.uint16),
        "day2/d.zarr": rng.integers(0, 500, (2, 16, 16), dtype=np.uint16),
    }
    for name, arr in data.items():
        if name.endswith(".zarr"):
            z = zarr.create_array(root / name, shape=arr.shape, chunks=(1, 8, 8), dtype=arr.dtype)
            z[...] = arr
        else:
            _tiff(root / name, arr, "TYX")
    (root / "notes.txt").write_text("not an image")
    (root / ".hidden.tif").write_bytes(b"ignored")
    return root, data


def test_info_accepts_folders(folder: tuple[Path, dict[str, np.ndarray]], capsys: pytest.CaptureFixture[str]) -> None:
    root, data = folder
    code, out, err = run(["info", str(root), "--axes", "TYX", "--json"], capsys)
    assert code == 0, err
    records = json.loads(out)
    expected = sorted(data)  # sorted by path; the Zarr store is one source, not searched inside
    assert [Path(r["input"]).relative_to(root).as_posix() for r in records] == expected
    for rec in records:
        name = Path(rec["input"]).relative_to(root).as_posix()
        assert rec["original_shape"] == list(data[name].shape)


def test_folder_with_a_link_loop_is_searched_once(tmp_path: Path) -> None:
    from lazystack.frontends.cli import expand_sources

    root = tmp_path / "data"
    (root / "sub").mkdir(parents=True)
    np.save(root / "sub" / "x.npy", np.zeros((4, 4), np.uint8))
    (root / "sub" / "up").symlink_to(root, target_is_directory=True)  # data/sub/up -> data
    assert expand_sources([str(root)]) == [str(root / "sub" / "x.npy")]


def test_info_empty_folder_is_named(tmp_path: Path, npy: Path, capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("x")
    code, out, err = run(["info", str(empty), str(npy), "--axes", "TCYX"], capsys)
    assert code == 1
    assert str(npy) in out
    assert "holds no source" in err
    assert str(empty) in err
    assert ".czi" in err


def test_expand_sources_keeps_files_stores_and_uris(folder: tuple[Path, dict[str, np.ndarray]]) -> None:
    from lazystack.frontends.cli import expand_sources

    root, _ = folder
    store = str(root / "day2" / "d.zarr")
    assert expand_sources([store, "s3://bucket/x.zarr", str(root / "a.tif")]) == [
        store,
        "s3://bucket/x.zarr",
        str(root / "a.tif"),
    ]
    assert expand_sources([str(root / "day2")]) == [str(root / "day2" / "c.tif"), store]


def test_info_bad_axes_exits_1(npy: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(["info", str(npy), "--axes", "QCYX"], capsys)
    assert code == 1
    assert_one_line_error(err, "'Q'", "STCZYX")
    code, _, err = run(["info", str(npy), "--axes", "CYX"], capsys)  # valid letters, wrong rank
    assert code == 1
    assert_one_line_error(err, "CYX")


def test_info_unknown_format_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    code, _, err = run(["info", str(tmp_path / "notes.txt"), "--axes", "YX"], capsys)
    assert code == 1
    assert_one_line_error(err, "notes.txt", ".tif", ".czi", ".zarr")


def test_info_without_declared_axes_asks_for_them(npy: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(["info", str(npy)], capsys)
    assert code == 1
    assert_one_line_error(err, "--axes", "frames.npy")


def test_info_corrupt_file_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "broken.tif").write_bytes(b"II*\x00garbage")
    code, _, err = run(["info", str(tmp_path / "broken.tif")], capsys)
    assert code == 1
    assert_one_line_error(err, "broken.tif")


def test_debug_shows_the_exception(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        main(["--debug", "info", str(tmp_path / "missing.npy"), "--axes", "YX"])


def test_bad_storage_option_exits_1(npy: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(["info", str(npy), "--axes", "TCYX", "--storage-option", "novalue"], capsys)
    assert code == 1
    assert_one_line_error(err, "KEY=VALUE")


def test_real_process_exit_codes(npy: Path, tmp_path: Path) -> None:
    """The installed entry point behaves the same in a fresh process."""
    cmd = [sys.executable, "-m", "lazystack.frontends.cli"]
    ok = subprocess.run([*cmd, "info", str(npy), "--axes", "TCYX", "--json"], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)[0]["canonical_shape"] == [3, 2, 16, 12]
    bad = subprocess.run([*cmd, "info", str(tmp_path / "nope.czi")], capture_output=True, text=True)
    assert bad.returncode == 1
    assert_one_line_error(bad.stderr, "nope.czi")
    usage = subprocess.run([*cmd, "info"], capture_output=True, text=True)
    assert usage.returncode == 2


# -- info on generated files of every format ---------------------------------------------------------------


def test_info_tiff_declared_axes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("lazystack.sources.tiff")
    import tifffile

    path = tmp_path / "hyper.tif"
    tifffile.imwrite(path, np.zeros((3, 4, 2, 16, 16), np.uint16), imagej=True, metadata={"axes": "TZCYX"})
    code, out, err = run(["info", str(path), "--json"], capsys)
    assert code == 0, err
    (rec,) = json.loads(out)
    assert rec["original_axes"] == "TZCYX"
    assert rec["canonical_axes"] == "SCZYX"
    assert rec["canonical_shape"] == [3, 2, 4, 16, 16]
    assert rec["axes_from"] == "file"
    code, out, _ = run(["info", str(path)], capsys)
    assert code == 0
    assert "declare" in out


def test_info_zarr_group(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("lazystack.sources.zarr")
    import zarr

    group = zarr.open_group(tmp_path / "data.zarr", mode="w")
    for name in ("b", "a"):
        group.create_array(name, shape=(2, 32, 16), chunks=(1, 16, 16), dtype="float32")
    code, out, err = run(["info", str(tmp_path / "data.zarr"), "--axes", "ZYX", "--json"], capsys)
    assert code == 0, err
    records = json.loads(out)
    assert len(records) == 2
    assert [r["original_shape"] for r in records] == [[2, 32, 16]] * 2
    assert all(r["dtype"] == "float32" for r in records)
    # the store's (1, 16, 16) chunks grouped up to dask's array.chunk-size: this small array is one chunk
    assert records[0]["chunks"] == [1, 1, 2, 32, 16]


def test_info_ome_zarr_levels(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("lazystack.sources.zarr")
    writer = pytest.importorskip("ome_zarr.writer")
    import zarr

    path = tmp_path / "image.ome.zarr"
    group = zarr.open_group(path, mode="w")
    writer.write_image(np.zeros((2, 64, 64), np.uint8), group, axes="cyx")
    code, out, err = run(["info", str(path), "--json"], capsys)  # axes from the NGFF metadata
    assert code == 0, err
    records = json.loads(out)
    assert records[0]["original_axes"] == "CYX"
    assert records[0]["original_shape"] == [2, 64, 64]
    assert all(r["axes_from"] == "file" for r in records)


# -- info on the real files in ../shared/data -------------------------------------------------------------------


def _ome_pixel_sizes(xml: str | None) -> dict[str, float]:
    if not xml:
        return {}
    root = ET.fromstring(xml)
    pixels = next((el for el in root.iter() if el.tag.endswith("Pixels")), None)
    if pixels is None:
        return {}
    return {a: float(pixels.attrib[f"PhysicalSize{a}"]) for a in "ZYX" if f"PhysicalSize{a}" in pixels.attrib}


@pytest.mark.parametrize("path", shared_files("tiff", "*.tif*"), ids=lambda p: p.name)
def test_info_real_tiff_matches_tifffile(path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("lazystack.sources.tiff")
    import tifffile

    code, out, err = run(["info", str(path), "--json"], capsys)
    assert code == 0, err
    records = json.loads(out)
    with tifffile.TiffFile(path) as tif:
        series = list(tif.series)
        ome = _ome_pixel_sizes(tif.ome_metadata) if tif.is_ome else {}
    assert len(records) == len(series)
    for rec, s in zip(records, series, strict=True):
        assert rec["original_axes"] == s.axes.replace("S", "C")
        assert rec["original_shape"] == list(s.shape)
        assert rec["dtype"] == str(s.dtype)
        assert rec["memory_bytes"] == s.size * s.dtype.itemsize
        assert rec["disk_bytes"] == path.stat().st_size
        for axis, size in ome.items():
            if axis in rec["original_axes"]:
                assert rec["physical_pixel_sizes"][axis] == pytest.approx(size)


_CZI_DTYPES = {"Gray8": "uint8", "Gray16": "uint16", "Gray32Float": "float32", "Bgr24": "uint8", "Bgr48": "uint16"}


@pytest.mark.parametrize("path", shared_files("czi", "*.czi"), ids=lambda p: p.name)
def test_info_real_czi_matches_pylibczirw(path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("lazystack.sources.czi")
    pyczi = pytest.importorskip("pylibCZIrw.czi")

    code, out, err = run(["info", str(path), "--json", "--levels", "0"], capsys)  # full resolution: one per scene
    assert code == 0, err
    records = json.loads(out)
    with pyczi.open_czi(str(path)) as doc:
        box = doc.total_bounding_box
        scenes = doc.scenes_bounding_rectangle
        pixel_types = set(doc.pixel_types.values())

    def size(dim: str) -> int:
        lo, hi = box.get(dim, (0, 1))
        return hi - lo

    assert len(records) == max(1, len(scenes))
    spp = 3 if any(t.startswith("Bgr") for t in pixel_types) else 1
    depth = "Z" if size("Z") > 1 else None
    n_samples = int(np.prod([hi - lo for d, (lo, hi) in box.items() if d not in ("C", "X", "Y", depth)]))
    for rec in records:
        assert rec["canonical_axes"] == ("SCZYX" if depth else "SCYX")
        assert rec["dtype"] in {_CZI_DTYPES[t] for t in pixel_types}
        assert rec["canonical_shape"][:2] == [n_samples, size("C") * spp]
        if depth:
            assert rec["canonical_shape"][2] == size("Z")
        assert rec["disk_bytes"] == path.stat().st_size
    if scenes:
        got = sorted((r["original_shape"][-2], r["original_shape"][-1]) for r in records)
        assert got == sorted((rect.h, rect.w) for rect in scenes.values())
    else:
        (rec,) = records
        assert rec["original_shape"][-2:] == [size("Y"), size("X")]


# -- demo ------------------------------------------------------------------------------------------------------


def test_demo_small_run_covers_every_format(capsys: pytest.CaptureFixture[str]) -> None:
    from lazystack.frontends.demo import BUILDERS

    code, out, err = run(
        ["demo", "--size", "64", "--patches", "12", "--patch-size", "16", "--frames", "2", "--quiet"], capsys
    )
    assert code == 0, err
    lines = out.strip().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("format "))
    rows = {line.split("  ")[0].strip(): line for line in lines[start + 2 : start + 2 + len(BUILDERS)]}
    assert set(rows) == set(BUILDERS)
    assert "12" in rows["numpy memmap"].split()  # patches extracted
    assert "2x16x16" in rows["numpy memmap"]  # the patch shape


def test_demo_unknown_format_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(["demo", "--format", "bmp", "--quiet"], capsys)
    assert code == 1
    assert_one_line_error(err, "bmp", "numpy memmap")


# -- stats / convert (from lazystack.frontends.cli_preprocess when present) --------------------------------------


needs_preprocess = pytest.mark.skipif(
    not HAS_PREPROCESS, reason="lazystack.frontends.cli_preprocess (stats / convert) is not part of this tree"
)


@needs_preprocess
@pytest.mark.parametrize("command", ["stats", "convert"])
def test_preprocess_missing_file_exits_1(command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    extra = ["--out", str(tmp_path / "out.zarr")] if command == "convert" else []
    code, _, err = run([command, str(tmp_path / "missing.tif"), "--axes", "YX", "--quiet", *extra], capsys)
    assert code == 1, err
    assert_one_line_error(err, f"lazystack {command}: error:", "missing.tif")


@needs_preprocess
@pytest.mark.parametrize("command", ["stats", "convert"])
def test_preprocess_bad_axes_and_format_exit_1(
    command: str, npy: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    extra = ["--out", str(tmp_path / "out.zarr")] if command == "convert" else []
    code, _, err = run([command, str(npy), "--axes", "TCYXQ", "--quiet", *extra], capsys)
    assert code == 1, err
    assert_one_line_error(err, "'Q'")
    (tmp_path / "notes.txt").write_text("x")
    code, _, err = run([command, str(tmp_path / "notes.txt"), "--axes", "YX", "--quiet", *extra], capsys)
    assert code == 1, err
    assert_one_line_error(err, "notes.txt")


@needs_preprocess
def test_stats_json_matches_numpy(npy: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(["stats", str(npy), "--axes", "TCYX", "--json", "--quiet", "--percentiles", "50"], capsys)
    assert code == 0, err
    result = json.loads(out)
    data = np.load(npy).astype(np.float64)
    np.testing.assert_allclose(result["mean"], data.mean(axis=(0, 2, 3)))
    np.testing.assert_allclose(result["max"], data.max(axis=(0, 2, 3)))


@needs_preprocess
def test_stats_and_convert_accept_folders(
    folder: tuple[Path, dict[str, np.ndarray]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("lazystack.sources.zarr")
    from lazystack import load_zarrs

    root, data = folder
    code, out, err = run(["stats", str(root), "--axes", "TYX", "--json", "--quiet"], capsys)
    assert code == 0, err
    every = np.concatenate([data[k].ravel() for k in sorted(data)]).astype(np.float64)
    result = json.loads(out)
    np.testing.assert_allclose(result["mean"], [every.mean()])
    assert result["max"] == [every.max()]

    out_path = tmp_path / "all.ome.zarr"
    code, out, err = run(["convert", str(root), "--axes", "TYX", "--out", str(out_path), "--quiet"], capsys)
    assert code == 0, err
    assert "4 images" in out
    for i, name in enumerate(sorted(data)):
        level0 = load_zarrs(out_path / str(i), "TYX")[0]
        np.testing.assert_array_equal(level0.compute()[:, 0], data[name])  # canonical SCYX, one channel


@needs_preprocess
def test_convert_round_trip(npy: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("lazystack.sources.zarr")
    from lazystack import load_zarrs

    out_path = tmp_path / "frames.ome.zarr"
    code, out, err = run(["convert", str(npy), "--axes", "TCYX", "--out", str(out_path), "--quiet"], capsys)
    assert code == 0, err
    assert str(out_path) in out
    levels = load_zarrs(out_path, "TCYX")
    np.testing.assert_array_equal(levels[0].compute(), np.load(npy))
    code, _, err = run(["convert", str(npy), "--axes", "TCYX", "--out", str(out_path), "--quiet"], capsys)
    assert code == 1  # exists, no --overwrite
    assert_one_line_error(err, "exists")


@pytest.mark.parametrize("path", shared_files("czi", "*.czi"), ids=lambda p: p.name)
def test_info_real_czi_metadata_matches_bioio(path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Channel names and pixel sizes agree with bioio-czi wherever bioio-czi reads them."""
    pytest.importorskip("lazystack.sources.czi")
    bioio = pytest.importorskip("bioio")
    pytest.importorskip("bioio_czi")
    code, out, err = run(["info", str(path), "--json"], capsys)
    assert code == 0, err
    rec = json.loads(out)[0]
    image = bioio.BioImage(path)
    try:
        names = [str(n) for n in image.channel_names]
        sizes = image.physical_pixel_sizes
    except Exception as exc:  # bioio-czi cannot read this file's metadata: nothing to compare against
        pytest.skip(f"bioio-czi cannot read the metadata of {path.name}: {type(exc).__name__}")
    checked = 0
    if all(names) and rec["channel_names"] and len(names) == rec["canonical_shape"][1]:
        assert rec["channel_names"] == names
        checked += 1
    for axis in "YX":
        value = getattr(sizes, axis)
        if value:
            assert rec["physical_pixel_sizes"][axis] == pytest.approx(value, rel=1e-6)
            checked += 1
    if not checked:
        pytest.skip(f"bioio-czi declares no channel names or pixel sizes for {path.name}")
