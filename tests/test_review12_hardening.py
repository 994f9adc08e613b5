"""Review of the session-12 hardening (writes that refuse their sources, manifests, exact histograms, the CZI plane
bound, the patch memory bound): false refusals, false acceptances and replays, each against an independent reference
(the bytes on disk, numpy, the previous release's behaviour)."""

from __future__ import annotations

import argparse
import hashlib
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile

import lazystack
from lazystack import UnsupportedSourceError
from lazystack.frontends.cli_preprocess import add_stats_parser
from lazystack.sampling import RandomSampler, write_manifest


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _stats(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="lazystack")
    add_stats_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.handler(args))


# -- a source named with a selector (``file@series``, ``file@scene#level=1``) is still a source ---------------------
def _series_tiff(tmp_path: Path) -> tuple[Path, list[Any]]:
    path = tmp_path / "ser.tif"
    with tifffile.TiffWriter(path) as w:
        w.write(np.arange(16 * 16, dtype=np.uint8).reshape(16, 16))
        w.write(np.arange(2 * 12 * 12, dtype=np.uint8).reshape(2, 12, 12))
    return path, list(lazystack.load_tiffs([f"{path}@1"], "SYX"))


def _czi_scenes(tmp_path: Path) -> tuple[Path, list[Any]]:
    pytest.importorskip("pylibCZIrw.czi", reason="the czi extra (pylibCZIrw) is not installed")
    from lazystack.frontends import samples

    path = tmp_path / "demo.czi"
    samples.write_demo_czi(path, np.random.default_rng(0).integers(0, 600, (2, 1, 64, 48), dtype=np.uint16))
    stacks = list(lazystack.load_czis(path, "SCYX"))
    assert all("@" in str(s.source) for s in stacks)  # each scene names its file with a selector
    return path, stacks


@pytest.mark.parametrize("make", [_series_tiff, _czi_scenes], ids=["tiff-series", "czi-scenes"])
def test_write_manifest_refuses_a_source_named_with_a_selector(tmp_path: Path, make: Any) -> None:
    """``_source_paths`` took ``ser.tif@1`` / ``demo.czi@0`` as paths that do not exist: the manifest replaced the
    file the stacks read."""
    path, stacks = make(tmp_path)
    before = _digest(path)
    with pytest.raises(UnsupportedSourceError, match=path.name):
        write_manifest(path, RandomSampler(stacks, 8, 4, seed=0), stacks)
    assert _digest(path) == before


def test_stats_output_refuses_a_source_named_with_a_selector(tmp_path: Path) -> None:
    path, _ = _series_tiff(tmp_path)
    before = _digest(path)
    with pytest.raises(UnsupportedSourceError, match=path.name):
        _stats(["stats", f"{path}@1", "--axes", "SYX", "--quiet", "--output", str(path)])
    assert _digest(path) == before


# -- manifests: every patch extract_patch reads is a row that replays -------------------------------------------------
def test_a_manifest_of_overhanging_patches_replays_them(tmp_path: Path) -> None:
    """Patches centred on objects near the border start at negative coords (``extract_patch`` pads them with
    zeros); the previous release wrote and replayed them, the hardened ``read_manifest`` refused every such row."""
    from lazystack.sampling import FixedSampler, read_manifest

    image = np.arange(2 * 20 * 18, dtype=np.uint16).reshape(2, 20, 18)
    tifffile.imwrite(tmp_path / "a.tif", image)
    stacks = list(lazystack.load_tiffs([tmp_path / "a.tif"], "SYX"))
    specs = [(0, 0, None, (-3, -2), (8, 8)), (0, 1, None, (-7, 15), (8, 8)), (0, 1, None, (16, -7), (8, 8))]
    path = write_manifest(tmp_path / "m.csv", FixedSampler(specs), stacks)
    replayed = read_manifest(path, stacks)
    padded = np.pad(image, ((0, 0), (8, 8), (8, 8)))  # the reference: numpy slicing of the zero-padded image
    assert len(replayed) == len(specs)
    for i, (_, sample, _, (y, x), (h, w)) in enumerate(specs):
        spec = replayed.spec(i)
        assert tuple(spec.coords) == (y, x)
        got = stacks[0].extract_patch(spec.sample, None, spec.coords, spec.patch_size)[0]
        np.testing.assert_array_equal(got, padded[sample, y + 8 : y + 8 + h, x + 8 : x + 8 + w])


def test_write_manifest_through_a_symlink_keeps_the_link_and_the_files_mode(tmp_path: Path) -> None:
    """The previous release opened the path for writing: a link (``latest.csv -> runs/3.csv``) stayed a link and its
    file got the rows, a file kept its mode. The write-beside-then-rename replaced the link by a file (the file it
    named kept its stale rows) and reset the mode to the umask's."""
    import os
    import stat

    from lazystack.sampling import read_manifest

    tifffile.imwrite(tmp_path / "a.tif", np.zeros((2, 32, 32), np.uint8))
    stacks = list(lazystack.load_tiffs([tmp_path / "a.tif"], "SYX"))
    (tmp_path / "runs").mkdir()
    real, link = tmp_path / "runs" / "3.csv", tmp_path / "latest.csv"
    real.write_text("stale")
    real.chmod(0o640)
    link.symlink_to(real)
    assert write_manifest(link, RandomSampler(stacks, 8, 4, seed=0), stacks) == link
    assert link.is_symlink()
    assert os.readlink(link) == str(real)
    assert len(read_manifest(real, stacks)) == 4
    assert stat.S_IMODE(real.stat().st_mode) == 0o640
    assert [p.name for p in tmp_path.rglob(".*")] == []  # no partial file left beside either


# -- channel_statistics: a narrow range at a large magnitude ----------------------------------------------------------
@pytest.mark.parametrize(
    "values",
    [
        np.arange(2**53 - 25, 2**53 + 25, dtype=np.int64),  # exact before the 2**53 bound, a ValueError after it
        np.arange(2**60, 2**60 + 50 * 256, 256, dtype=np.int64),
        np.arange(2**64 - 50, 2**64, dtype=np.uint64),
        1e16 + 2.0 * np.arange(50),  # float64 values a few ulps apart
    ],
    ids=["int64-2**53", "int64-2**60", "uint64-max", "float64-1e16"],
)
def test_statistics_of_a_narrow_range_far_from_zero(values: np.ndarray) -> None:
    """``np.histogram`` refuses more bins than float64 tells apart between the min and the max ("Too many bins for
    data range"): 64-bit integers past 2**53 (exact, one bin per value, before the hardening) and float64 data a few
    ulps apart raised ValueError. The reference is numpy's percentiles, within the reported error."""
    from lazystack.ops.stats import channel_statistics

    image = np.resize(values, (2, 1, 10, 10))
    q = (0, 1, 50, 99, 100)
    stats = channel_statistics(lazystack.load_arrays([image], "SCYX"), percentiles=q)
    assert stats.min[0] == float(values.min())
    assert stats.max[0] == float(values.max())
    ref = np.percentile(image.astype(np.float64).ravel(), q)
    got = np.array([stats.percentile(p)[0] for p in q])
    assert np.all(np.isfinite(got))
    np.testing.assert_allclose(got, ref, rtol=1e-12, atol=float(stats.percentile_error[0]))


# -- the patch memory bound ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("how", ["extract_patch", "extract_patches"])
def test_a_patch_inside_an_image_larger_than_memory_is_a_patch_error(how: str) -> None:
    """A lazy image larger than memory (a 2**17 x 2**17 Zarr of fill values: 64 GiB as float32 here) and a patch
    covering it: with channels [0] (or overhanging by one pixel) PatchError names patch_size; with channels None the
    patch goes the fast path and raises numpy's MemoryError (an OOM kill without the child's address-space cap)."""
    from test_hostile11 import assert_clear, run_child

    code = f"""
    import math, zarr
    from lazystack.ops.batch import extract_patches
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    n = 1 << math.ceil(math.log2(math.isqrt(memory // 4) + 1))
    z = zarr.create_array(store={{}}, shape=(n, n), chunks=(4096, 4096), dtype="uint8", fill_value=0)
    (stack,) = lazystack.load_arrays([z], "YX")
    report(lambda: stack.extract_patch(0, [0], (0, 0), (n, n)).shape)  # the checked path: the reference
    if {how!r} == "extract_patch":
        report(lambda: stack.extract_patch(0, None, (0, 0), (n, n)).shape)
    else:
        report(lambda: len(extract_patches([(stack, 0, None, (0, 0), (n, n))])))
    """
    checked, fast = run_child(code)
    assert_clear(checked, "PatchError", "patch_size", "memory")
    assert_clear(fast, "PatchError", "patch_size", "memory")


def test_write_manifest_refuses_a_zipped_zarr_source(tmp_path: Path) -> None:
    """A zipped OME-Zarr's stacks name it ``zip://0::file:///.../a.zip``: ``_source_paths`` took the ``://`` for a
    remote source and skipped it, so ``write_manifest(a.zip, ...)`` (and ``stats --output a.zip``) replaced the zip."""
    import zipfile

    (stack,) = lazystack.load_arrays([np.arange(256, dtype=np.uint8).reshape(16, 16)], "YX")
    store = tmp_path / "a.zarr"
    lazystack.write_ome_zarr(stack, store, levels=1)
    archive = tmp_path / "a.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as z:
        for file in sorted(p for p in store.rglob("*") if p.is_file()):
            z.write(file, file.relative_to(store).as_posix())
    loaded = lazystack.load(str(archive))
    stacks = loaded if isinstance(loaded, list) else [loaded]
    assert "::" in str(stacks[0].source)
    before = _digest(archive)
    with pytest.raises(UnsupportedSourceError, match=r"a\.zip"):
        write_manifest(archive, RandomSampler(stacks, 4, 2, seed=0), stacks)
    with pytest.raises(UnsupportedSourceError, match=r"a\.zip"):
        _stats(["stats", str(archive), "--quiet", "--output", str(archive)])
    assert _digest(archive) == before


def test_a_stack_of_a_memory_mapped_file_names_its_source(tmp_path: Path) -> None:
    """``LazyImageStack(np.memmap(path), axes, source=path)`` keeps the default format "array": 5a1cc44 skipped every
    stack of that format, so ``write_manifest(path, ...)`` replaced the raw file the stack maps. Only the in-memory
    placeholder source "array" names no file."""
    raw = tmp_path / "x.raw"
    np.arange(2 * 16 * 16, dtype=np.uint16).tofile(raw)
    stack = lazystack.LazyImageStack(np.memmap(raw, np.uint16, "r", shape=(2, 16, 16)), "SYX", source=str(raw))
    before = _digest(raw)
    with pytest.raises(UnsupportedSourceError, match=r"x\.raw"):
        write_manifest(raw, RandomSampler([stack], 4, 2, seed=0), [stack])
    assert _digest(raw) == before


@pytest.mark.parametrize("writer", ["write_manifest", "stats --output"])
def test_a_source_reached_through_a_symlink_and_dotdot_is_refused(tmp_path: Path, writer: str) -> None:
    """``link/../a.tif`` with ``link -> real/sub`` is ``real/a.tif`` for the system: the check collapsed ``..``
    lexically (``./a.tif``, no source), then the write went through the system's path and replaced the source."""
    (tmp_path / "real" / "sub").mkdir(parents=True)
    (tmp_path / "cwd").mkdir()
    (tmp_path / "cwd" / "link").symlink_to(tmp_path / "real" / "sub")
    tif = tmp_path / "real" / "a.tif"
    tifffile.imwrite(tif, np.arange(2 * 16 * 16, dtype=np.uint16).reshape(2, 16, 16))
    stacks = list(lazystack.load_tiffs([tif], "SYX"))
    target = tmp_path / "cwd" / "link" / ".." / "a.tif"
    before = _digest(tif)
    write = {
        "write_manifest": lambda: write_manifest(target, RandomSampler(stacks, 4, 2, seed=0), stacks),
        "stats --output": lambda: _stats(["stats", str(tif), "--axes", "SYX", "--quiet", "--output", str(target)]),
    }[writer]
    with pytest.raises(UnsupportedSourceError, match=r"a\.tif"):
        write()
    assert _digest(tif) == before


def test_stats_output_writes_the_path_it_checked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``--output '~/s.json'`` (quoted: no shell expansion) was checked as ``$HOME/s.json`` and then opened as
    ``./~/s.json`` (FileNotFoundError after the statistics were computed)."""
    import json

    tif = tmp_path / "a.tif"
    tifffile.imwrite(tif, np.arange(2 * 16 * 16, dtype=np.uint16).reshape(2, 16, 16))
    (tmp_path / "home").mkdir()
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    assert _stats(["stats", str(tif), "--axes", "SYX", "--quiet", "--output", "~/s.json"]) == 0
    written = json.loads((tmp_path / "home" / "s.json").read_text())
    assert written["max"] == [511.0]


@pytest.mark.parametrize("writer", ["write_manifest", "stats --output"])
def test_a_hard_link_to_a_source_is_the_source(tmp_path: Path, writer: str) -> None:
    """A hard link to a source TIFF names the same file: writing there would truncate the source through it."""
    source = tmp_path / "a.tif"
    tifffile.imwrite(source, np.arange(64, dtype=np.uint16).reshape(8, 8))
    link = tmp_path / "link.tif"
    os.link(source, link)
    before = _digest(source)
    stacks = list(lazystack.load_tiffs([source], "YX"))

    def write() -> None:
        if writer == "write_manifest":
            write_manifest(link, RandomSampler(stacks, (4, 4), 2, seed=0), stacks)
        else:
            _stats(["stats", str(source), "--axes", "YX", "--quiet", "--output", str(link)])

    with pytest.raises(UnsupportedSourceError, match=r"link\.tif"):
        write()
    assert _digest(source) == before
