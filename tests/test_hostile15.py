"""Hostile use, fifth audit (session 15): the command line, hand-edited OME-Zarr metadata, statistics, napari, pickle.

What a user does from the shell or with a file edited by hand: wrong, empty or conflicting arguments, an output
path that cannot be written, Ctrl-C while a store is written, a ``zarr.json`` whose ``multiscales`` / ``plate`` /
``well`` fields are out of order, of the wrong type or point nowhere, statistics of values near the float64
maximum, a constant channel opened in napari, stacks and views deep-copied and pickled. The first part holds the
findings (each test failed before its fix, or is a strict xfail naming the file to fix); the second checks what held
up.
"""

from __future__ import annotations

import copy
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile

import lazystack
from lazystack import load, load_arrays
from lazystack.core.errors import LazyStackError, SourceFormatError, SourceNotFoundError, UnsupportedSourceError
from lazystack.frontends.cli import main
from lazystack.ops.stats import channel_statistics

pytestmark = pytest.mark.timeout(240)


@pytest.fixture
def tif(tmp_path: Path) -> tuple[Path, np.ndarray]:
    data = np.arange(2 * 32 * 32, dtype=np.uint16).reshape(2, 32, 32)
    path = tmp_path / "a.tif"
    tifffile.imwrite(path, data)
    return path, data


def _ome(tmp_path: Path, mutate: Any, name: str = "img.zarr") -> Path:
    """An OME-Zarr 0.5 image of 2 levels written by lazystack, its ``ome`` attributes changed by ``mutate``."""
    (stack,) = load_arrays([np.arange(2 * 3 * 16 * 16, dtype=np.uint16).reshape(2, 3, 16, 16)], "CZYX")
    path = tmp_path / name
    lazystack.write_ome_zarr(stack, path, levels=2, progress=False)
    doc = json.loads((path / "zarr.json").read_text())
    mutate(doc["attributes"]["ome"])
    (path / "zarr.json").write_text(json.dumps(doc))
    return path


@pytest.fixture(scope="module")
def plate(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 1 x 2 plate (wells A/1, A/2; 2 fields each) written by ome-zarr-py."""
    import warnings

    import zarr

    writer = pytest.importorskip("ome_zarr.writer")
    path = tmp_path_factory.mktemp("h15plate") / "plate.ome.zarr"
    root = zarr.open_group(str(path), mode="w")
    wells = ["A/1", "A/2"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        writer.write_plate_metadata(root, ["A"], ["1", "2"], wells, name="p", field_count=2)
        for w in wells:
            group = root.require_group(w)
            writer.write_well_metadata(group, [{"path": "0"}, {"path": "1"}])
            for f in ("0", "1"):
                writer.write_image(np.full((2, 8, 8), 3, np.uint8), group.require_group(f), axes="cyx")
    return path


def _edit(src: Path, dst: Path, member: str, mutate: Any) -> Path:
    shutil.copytree(src, dst)
    doc_path = dst / member / "zarr.json"
    doc = json.loads(doc_path.read_text())
    mutate(doc["attributes"]["ome"])
    doc_path.write_text(json.dumps(doc))
    return dst


# -- findings: the command line -----------------------------------------------------------------------------------


def test_stats_output_in_a_missing_folder_fails_before_computing(
    tif: tuple[Path, np.ndarray], tmp_path: Path, capsys: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The folder of ``--output`` was only found missing after the statistics were computed (a long run lost)."""
    import lazystack.ops.stats as stats_module

    def never(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("statistics computed before --output was checked")

    monkeypatch.setattr(stats_module, "channel_statistics", never)
    out = tmp_path / "nodir" / "stats.json"
    assert main(["stats", str(tif[0]), "--axes", "CYX", "--output", str(out), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "Traceback" not in err
    assert "its folder" in err
    assert str(out.parent) in err
    assert "does not exist" in err


def test_stats_output_empty_is_an_error(tif: tuple[Path, np.ndarray], capsys: Any) -> None:
    """``--output ''`` was taken for no ``--output``: nothing written and exit status 0."""
    assert main(["stats", str(tif[0]), "--axes", "CYX", "--output", "", "--quiet"]) == 1
    captured = capsys.readouterr()
    assert "--output ''" in captured.err
    assert captured.out == ""


def test_stats_output_is_written_whole_or_not_at_all(
    tif: tuple[Path, np.ndarray], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The output was opened (truncated) before the JSON was made: a failure left half a file (here: none of it)."""
    from lazystack.ops.stats import ChannelStatistics

    class Unencodable:
        pass

    out = tmp_path / "stats.json"
    out.write_text('{"old": true}')
    monkeypatch.setattr(ChannelStatistics, "to_dict", lambda self: {"mean": [1.0], "bad": Unencodable()})
    with pytest.raises(TypeError, match="not JSON serializable"):
        main(["stats", str(tif[0]), "--axes", "CYX", "--output", str(out), "--quiet"])
    assert out.read_text() == '{"old": true}'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.tif", "stats.json"]  # no temporary file left


def test_stats_output_replaces_a_file_atomically(tif: tuple[Path, np.ndarray], tmp_path: Path, capsys: Any) -> None:
    out = tmp_path / "stats.json"
    out.write_text("old")
    out.chmod(0o640)
    assert main(["stats", str(tif[0]), "--axes", "CYX", "--output", str(out), "--quiet", "--json"]) == 0
    assert json.loads(out.read_text()) == json.loads(capsys.readouterr().out)
    assert out.stat().st_mode & 0o777 == 0o640
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.tif", "stats.json"]


def test_negative_seed_is_a_usage_error(tif: tuple[Path, np.ndarray], capsys: Any) -> None:
    """``--seed -1`` failed after opening the sources with numpy's "expected non-negative integer"."""
    with pytest.raises(SystemExit) as exc:
        main(["stats", str(tif[0]), "--axes", "CYX", "--seed", "-1", "--sample-fraction", "0.5"])
    assert exc.value.code == 2
    assert "argument --seed: invalid seed '-1'" in capsys.readouterr().err


def test_storage_option_beside_a_tiff(tif: tuple[Path, np.ndarray], capsys: Any) -> None:
    """``--storage-option`` (for Zarr stores) with a TIFF source: a TypeError traceback from ``load_tiffs``."""
    assert main(["info", str(tif[0]), "--axes", "CYX", "--json"]) == 0
    plain = json.loads(capsys.readouterr().out)
    assert main(["info", str(tif[0]), "--axes", "CYX", "--json", "--storage-option", "anon=true"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out) == plain
    assert captured.err == ""


def test_load_a_tiff_with_storage_options(tif: tuple[Path, np.ndarray], tmp_path: Path) -> None:
    # storage_options is for Zarr stores: a TIFF, an array and a .npy in the same call ignore it
    (stack,) = load(str(tif[0]), "CYX", storage_options={"anon": True})
    np.testing.assert_array_equal(stack.compute()[0], tif[1])
    (arr,) = load(tif[1], "CYX", storage_options={"anon": True})
    np.testing.assert_array_equal(arr.compute()[0], tif[1])
    np.save(tmp_path / "a.npy", tif[1])
    (npy,) = load(str(tmp_path / "a.npy"), "CYX", storage_options={"anon": True})
    np.testing.assert_array_equal(npy.compute()[0], tif[1])
    with pytest.raises(UnsupportedSourceError, match=r"a\.npy.*takes no options: got \['scene'\]"):
        load(str(tmp_path / "a.npy"), "CYX", scene=0)


def test_demo_keep_never_writes_into_someone_elses_folder(tif: tuple[Path, np.ndarray], capsys: Any) -> None:
    """``demo --keep`` into an existing store or folder wrote its datasets beside the data there (and replaced any
    ``zarr/data.zarr``, ``tiff/stack0.tif`` ... of the same names)."""
    folder = tif[0].parent
    before = sorted(p.name for p in folder.iterdir())
    assert main(["demo", "--keep", str(folder), "--size", "32", "--patches", "2", "--patch-size", "8", "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "demo folder" in err
    assert "['a.tif'], which the demo did not write" in err
    assert sorted(p.name for p in folder.iterdir()) == before
    assert main(["demo", "--keep", str(tif[0]), "--size", "32", "--patches", "2", "--quiet"]) == 1
    assert "exists and is not a folder" in capsys.readouterr().err
    # a new folder, then the same folder again (an earlier demo's): accepted
    new = folder / "demo"
    for _ in range(2):
        argv = ["demo", "--keep", str(new), "--size", "32", "--patches", "2", "--patch-size", "8", "--quiet"]
        assert main([*argv, "--format", "tiff"]) == 0
    assert sorted(p.name for p in new.iterdir()) == ["tiff"]


# -- findings: statistics ------------------------------------------------------------------------------------------


def _reference_percentiles(values: np.ndarray, levels: tuple[float, ...]) -> list[float]:
    """numpy's linear percentiles, interpolated as ``a * (1 - f) + b * f`` (no overflowing ``b - a``)."""
    v = np.sort(values.astype(np.float64))
    out = []
    for q in levels:
        h = (v.size - 1) * q / 100
        i = int(np.floor(h))
        f = h - i
        j = min(i + 1, v.size - 1)
        out.append(float(v[i]) if f == 0 else float(v[i] * (1 - f) + v[j] * f))
    return out


def test_stats_of_values_of_both_signs_near_the_float64_maximum() -> None:
    """``max - min`` overflows: ``np.histogram`` over an infinite range raised IndexError (a crash)."""
    values = np.array([1e308, -1e308, 5e307, -2.5e307, 0.0, 1e300])
    (stack,) = load_arrays([values.reshape(1, 1, -1)], "CYX")
    levels = (1.0, 25.0, 50.0, 99.0)
    stats = channel_statistics(stack, percentiles=levels, progress=False)
    assert stats.min[0] == -1e308
    assert stats.max[0] == 1e308
    assert stats.mean[0] == pytest.approx(np.mean(values / 6) * 6, rel=1e-12)
    assert np.isfinite([stats.percentile(q)[0] for q in levels]).all()
    # the percentiles come from a histogram: within its bin width
    for q, ref in zip(levels, _reference_percentiles(values, levels), strict=True):
        assert abs(stats.percentile(q)[0] - ref) <= stats.percentile_error[0] + 1e-12 * 1e308


def test_stats_mean_near_the_float64_maximum() -> None:
    """The sum of a chunk overflowed (mean inf, std inf), as did the difference of two chunks' means (mean NaN)."""
    import dask.array as da

    same = np.full((1, 1, 8), 1e308)
    (stack,) = load_arrays([same], "CYX")
    stats = channel_statistics(stack, percentiles=(50,), progress=False)
    assert stats.mean[0] == 1e308
    assert stats.std[0] == 0.0
    halves = da.from_array(np.concatenate([np.full(4, 1e308), np.full(4, -1e308)]).reshape(1, 1, 8), chunks=(1, 1, 4))
    (stack,) = load_arrays([halves], "CYX")
    stats = channel_statistics(stack, percentiles=(50,), progress=False)
    assert stats.mean[0] == 0.0
    assert stats.percentile(50)[0] == 0.0


@pytest.mark.parametrize("clip", ["ab", 5, (0, "x"), (None, 1), b"ab"])
def test_normalized_clip_that_is_no_pair(clip: Any) -> None:
    """A string or a bare number as ``clip``: TypeError ("must be real number, not str", "object of type 'int' has
    no len()") naming neither the argument nor what it accepts."""
    (stack,) = load_arrays([np.arange(32, dtype=np.uint8).reshape(2, 4, 4)], "CYX")
    with pytest.raises(ValueError, match=r"clip must be a \(low, high\) pair of numbers with low <= high, got"):
        stack.normalized({"mean": [1.0, 2.0], "std": [1.0, 1.0]}, clip=clip)


# -- findings: OME-Zarr metadata ------------------------------------------------------------------------------------


def test_datasets_listed_coarsest_first_are_refused(tmp_path: Path) -> None:
    """NGFF orders datasets from the highest resolution: reversed, the 8x8 level was read as level 0 (the full
    resolution ``stats`` and ``convert`` use)."""

    def reverse(ome: dict[str, Any]) -> None:
        ome["multiscales"][0]["datasets"].reverse()

    path = _ome(tmp_path, reverse)
    with pytest.raises(SourceFormatError, match=r"not ordered from the highest resolution to the lowest") as exc:
        load(str(path))
    assert "level 1 (path '0'" in str(exc.value)
    assert "img.zarr" in str(exc.value)


def test_axes_given_as_a_string_are_refused(tmp_path: Path) -> None:
    """``"axes": "czyx"`` was read letter by letter as NGFF 0.3 axis names."""

    def as_string(ome: dict[str, Any]) -> None:
        ome["multiscales"][0]["axes"] = "czyx"

    path = _ome(tmp_path, as_string)
    with pytest.raises(SourceFormatError, match=r"multiscales\[0\]\.axes must be a list of axes, got 'czyx'"):
        load(str(path), "CZYX")
    with pytest.raises(LazyStackError):  # the axes proposed are none; opening says why
        load(str(path))


def test_well_metadata_that_is_not_an_object(plate: Path, tmp_path: Path) -> None:
    """``"well": "x"``: AttributeError ('str' object has no attribute 'get')."""
    broken = _edit(plate, tmp_path / "p.zarr", "A/1", lambda ome: ome.__setitem__("well", "x"))
    with pytest.raises(SourceFormatError, match=r"well\.images must be a list"):
        load(str(broken), "CYX")


@pytest.mark.parametrize(
    ("member", "mutate", "error", "message"),
    [
        ("A/1", lambda ome: ome["well"].__setitem__("images", []), SourceFormatError, r"well\.images must be a non"),
        ("A/1", lambda ome: ome["well"].pop("images"), SourceFormatError, r"A/1'?: well\.images must be a non-empty"),
        ("A/1", lambda ome: ome.pop("well"), SourceFormatError, r"well\.images must be a non-empty list"),
        ("", lambda ome: ome["plate"]["wells"][0].pop("path"), SourceFormatError, r"plate\.wells must be a non-empty"),
        (
            "A/1",
            lambda ome: ome["well"]["images"][0].__setitem__("path", "9"),
            SourceNotFoundError,
            r"well\.images\[0\]\.path = '9' of the OME-Zarr metadata in .*A/1' is not a group",
        ),
    ],
)
def test_plate_metadata_errors_are_named_without_axes(
    plate: Path, tmp_path: Path, member: str, mutate: Any, error: type[Exception], message: str
) -> None:
    """Without axes, a plate whose first well / field cannot be found made ``load`` ask for axes (AxesError
    "declares no axes"), hiding what is wrong in the metadata."""
    broken = _edit(plate, tmp_path / "p.zarr", member, mutate)
    with pytest.raises(error, match=message):
        load(str(broken))


def test_labels_and_layouts_pointing_nowhere_are_named_without_axes(tmp_path: Path) -> None:
    """A labels group whose first label is missing, a bioformats2raw layout without an image: AxesError
    ("declares no axes") instead of what is wrong."""
    import zarr

    ms = [{"axes": [{"name": "y", "type": "space"}, {"name": "x", "type": "space"}], "datasets": [{"path": "0"}]}]
    image = zarr.open_group(str(tmp_path / "img.zarr"), mode="w", zarr_format=3)
    image.create_array("0", data=np.ones((4, 4), np.uint8))
    image.attrs["ome"] = {"version": "0.5", "multiscales": ms}
    image.require_group("labels").attrs["ome"] = {"version": "0.5", "labels": ["nope"]}
    with pytest.raises(SourceNotFoundError, match=r"label 'nope' listed first by .*labels' is not a group"):
        load(str(tmp_path / "img.zarr" / "labels"))
    layout = zarr.open_group(str(tmp_path / "b2r.zarr"), mode="w", zarr_format=3)
    layout.attrs["ome"] = {"version": "0.5", "bioformats2raw.layout": 3}
    layout.create_array("x", data=np.ones((4, 4), np.uint8))
    with pytest.raises(SourceFormatError, match=r"declares the bioformats2raw\.layout but none of its numbered"):
        load(str(tmp_path / "b2r.zarr"))
    # an image that is not group "0" is found, as the loader finds it
    image = layout.require_group("3")
    image.create_array("0", data=np.arange(16, dtype=np.uint8).reshape(4, 4))
    image.attrs["ome"] = {"version": "0.5", "multiscales": ms}
    (stack,) = load(str(tmp_path / "b2r.zarr"))
    np.testing.assert_array_equal(stack.compute().reshape(4, 4), np.arange(16).reshape(4, 4))


# -- findings: napari ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [np.full((2, 8, 8), 1e20, np.float32), np.full((2, 8, 8), 2**60, np.int64), np.full((1, 4, 4), -1.7e308)],
    ids=["float32-1e20", "int64-2**60", "float64-near-min"],
)
def test_constant_channel_of_large_values_opens_in_napari(data: np.ndarray) -> None:
    """A constant plane got contrast limits ``[lo, lo + 1.0]`` == ``[lo, lo]`` where ``lo + 1 == lo``: napari
    refused the layer ("must be monotonically increasing")."""
    from lazystack.frontends.napari import layer_data

    (stack,) = load_arrays([data], "CYX")
    layers = layer_data([stack])
    for layer in layers:
        lo, hi = layer[1]["contrast_limits"]
        assert lo < hi
        assert np.isfinite([lo, hi]).all()
        if abs(lo) < 1e38:  # also once napari casts them to float32
            assert np.float32(lo) < np.float32(hi)
        assert lo <= float(data.flat[0]) <= hi
    napari_layers = pytest.importorskip("napari.layers")
    for array, kwargs, _kind in layers:
        napari_layers.Image(np.asarray(array), contrast_limits=kwargs["contrast_limits"])


# -- found, not in this helper's files -------------------------------------------------------------------------------


def test_read_with_open_slices_on_a_zarr_stack(tmp_path: Path) -> None:
    path = _ome(tmp_path, lambda ome: None)
    stack = load(str(path), levels=0)[0]
    whole = stack.read((slice(None),) * len(stack.axes_model.axes))
    np.testing.assert_array_equal(whole, np.arange(2 * 3 * 16 * 16, dtype=np.uint16).reshape(2, 3, 16, 16))


# -- what held up ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "code", "message"),
    [
        (["info", "{d}/nope.tif"], 1, "no such file or directory"),
        (["info", "{tif}", "--axes", "QQ"], 1, "invalid axes 'QQ'"),
        (["info", "{tif}", "--axes", "YX"], 1, "do not match"),
        (["info", "{tif}@3"], 1, "has no image series 3"),
        (["stats", "{tif}", "--axes", "CYX", "--output", "{tif}"], 1, "is the source"),
        (["stats", "{tif}", "--axes", "CYX", "--output", "{d}"], 1, "holds the source"),
        (["convert", "{tif}", "--axes", "CYX", "--out", "{tif}"], 1, "already exists; pass --overwrite"),
        (["convert", "{tif}", "--axes", "CYX", "--out", "{d}/o.zarr", "--levels", "0"], 1, "levels must be"),
        (["convert", "{tif}", "--axes", "CYX", "--out", "{d}/o.zarr", "--downscale", "1"], 1, "downscale must be"),
        (["convert", "{tif}", "--axes", "CYX", "--out", "{d}/o.zarr", "--chunks", "Q=3"], 1, "names axis 'Q'"),
        (["convert", "{tif}", "--axes", "CYX", "--out", ""], 1, "empty path"),
        (["stats", "{tif}", "--axes", "CYX", "--percentiles", "1,nan"], 2, "between 0 and 100"),
        (["stats", "{tif}", "--axes", "CYX", "--storage-option", "=x"], 1, "expects KEY=VALUE"),
    ],
)
def test_cli_errors_are_one_line(
    tif: tuple[Path, np.ndarray], tmp_path: Path, capsys: Any, argv: list[str], code: int, message: str
) -> None:
    args = [a.format(d=tmp_path, tif=tif[0]) for a in [*argv, "--quiet"] if not (a == "--quiet" and argv[0] == "info")]
    if code == 2:
        with pytest.raises(SystemExit) as exc:
            main(args)
        assert exc.value.code == 2
    else:
        assert main(args) == code
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.tif"]  # nothing written beside the source


@pytest.mark.parametrize(
    ("signum", "code", "said"), [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")]
)
def test_convert_interrupted_leaves_no_store(tmp_path: Path, signum: int, code: int, said: str) -> None:
    """SIGINT or SIGTERM while ``convert`` writes: exit 130 / 143 and no output, no temporary folder (or, if the write
    won the race, a complete store). SIGTERM ended the process at once and left the hidden partial store."""
    data = np.random.default_rng(0).integers(0, 60000, (8, 1024, 1024), dtype=np.uint16)
    src = tmp_path / "in.tif"
    tifffile.imwrite(src, data)
    out = tmp_path / "out.zarr"
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "lazystack.frontends.cli", "convert", str(src), "--axes", "ZYX", "--out", str(out)]
    proc = subprocess.Popen(
        [*cmd, "--quiet", "--scheduler", "synchronous"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        for _ in range(1200):  # until the temporary store appears (bounded: 120 s)
            if proc.poll() is not None or any(".partial" in p.name for p in tmp_path.iterdir()):
                break
            time.sleep(0.1)
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode in (code, 0), err
    assert err.strip() == (said if proc.returncode == code else "")
    # no temporary folder left; an output there is complete (the signal came after the store was installed)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names in (["in.tif"], ["in.tif", "out.zarr"])
    if proc.returncode == 0 or names == ["in.tif", "out.zarr"]:
        (stack,) = load(str(out), levels=0)
        np.testing.assert_array_equal(stack.compute().reshape(data.shape), data)


@pytest.mark.parametrize(
    ("values", "dtype"),
    [
        ([[1.0, np.nan], [np.inf, 3.0]], np.float32),
        ([[7, 7], [7, 7]], np.uint8),
        ([[2**32 - 1] * 4] * 4, np.uint32),
        ([[2**62, -(2**62)], [2**62, 2**62]], np.int64),
        ([[2**63 - 1, -(2**63)]], np.int64),
        ([[2**64 - 1, 0]], np.uint64),
        ([[5]], np.uint16),
        ([[60000, 60000]], np.float16),
    ],
    ids=["nan-inf", "constant", "uint32-max", "int64-big", "int64-extremes", "uint64-extremes", "one-pixel", "f16"],
)
def test_stats_match_numpy_on_hostile_values(values: Any, dtype: Any) -> None:
    data = np.asarray(values, dtype=dtype)[np.newaxis]
    (stack,) = load_arrays([data], "CYX")
    stats = channel_statistics(stack, percentiles=(0.0, 50.0, 100.0), progress=False)
    finite = data.astype(np.float64)[np.isfinite(data.astype(np.float64))]
    assert stats.count[0] == finite.size
    np.testing.assert_allclose(stats.mean[0], finite.mean(), rtol=1e-12)
    np.testing.assert_allclose(stats.std[0], finite.std(), rtol=1e-9, atol=1e-9 * np.abs(finite).max())
    assert (stats.min[0], stats.max[0]) == (finite.min(), finite.max())
    assert stats.percentile(0)[0] == finite.min()
    assert stats.percentile(100)[0] == finite.max()


def test_stats_of_no_values_and_normalising_a_constant_channel() -> None:
    (empty,) = load_arrays([np.zeros((1, 0, 4), np.float32)], "CYX")
    stats = channel_statistics(empty, progress=False)
    assert stats.count[0] == 0
    assert np.isnan(stats.mean[0])
    (const,) = load_arrays([np.full((2, 3, 3), 7, np.float32)], "CYX")
    stats = channel_statistics(const, progress=False)
    for method in ("zscore", "minmax", "percentile"):
        out = const.normalized(stats, method=method).compute()
        np.testing.assert_array_equal(out, np.zeros_like(out))  # shifted, not divided by a zero spread


def _kinds(tmp_path: Path) -> dict[str, Any]:
    import dask.array as da

    data = np.arange(2 * 3 * 16 * 16, dtype=np.uint16).reshape(2, 3, 16, 16)
    tifffile.imwrite(tmp_path / "a.tif", data, photometric="minisblack")
    np.save(tmp_path / "a.npy", data)
    lazystack.write_ome_zarr(load_arrays([data], "CZYX")[0], tmp_path / "a.zarr", levels=1, progress=False)
    bases = {
        "tif": load(str(tmp_path / "a.tif"), "CZYX")[0],
        "npy": load(str(tmp_path / "a.npy"), "CZYX")[0],
        "zarr": load(str(tmp_path / "a.zarr"))[0],
        "array": load_arrays([data], "CZYX")[0],
        "dask": load_arrays([da.from_array(data, chunks=(1, 1, 8, 8))], "CZYX")[0],
    }
    kinds = dict(bases)
    for name, s in bases.items():
        kinds[f"{name}-isel"] = s.isel(Y=slice(2, 12), C=1)
        kinds[f"{name}-strided"] = s.isel(X=slice(0, 16, 3))
        kinds[f"{name}-normalized"] = s.normalized({"mean": [1.0, 2.0], "std": [3.0, 4.0]})
    return kinds


def test_every_stack_kind_and_view_copies_and_pickles(tmp_path: Path) -> None:
    import cloudpickle

    kinds = _kinds(tmp_path)
    for name, stack in kinds.items():
        ref = stack.compute()
        for how, roundtrip in (
            ("deepcopy", copy.deepcopy),
            ("pickle", lambda s: pickle.loads(pickle.dumps(s))),
            ("cloudpickle", lambda s: cloudpickle.loads(cloudpickle.dumps(s))),
        ):
            np.testing.assert_array_equal(roundtrip(stack).compute(), ref, err_msg=f"{name} {how}")
        graph = cloudpickle.loads(cloudpickle.dumps(stack.data))
        np.testing.assert_array_equal(graph.compute(scheduler="synchronous"), ref, err_msg=f"{name} dask graph")


def test_pickled_stacks_after_their_source_is_deleted(tmp_path: Path) -> None:
    kinds = _kinds(tmp_path)
    refs = {name: s.compute() for name, s in kinds.items()}
    pickled = {name: pickle.dumps(s) for name, s in kinds.items()}
    for s in kinds.values():
        s.close()
    for name in ("a.tif", "a.npy"):
        (tmp_path / name).unlink()
    shutil.rmtree(tmp_path / "a.zarr")
    for name, blob in pickled.items():
        stack = pickle.loads(blob)
        if name.split("-")[0] in ("array", "dask"):  # the data travels with the pickle
            np.testing.assert_array_equal(stack.compute(), refs[name])
        else:
            with pytest.raises(SourceNotFoundError):
                stack.compute()
