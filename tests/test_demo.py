"""The main job: ``lazystack demo`` covers every installed format and says what it measures."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from lazystack.frontends.demo import BUILDERS, format_table, run_demo


@pytest.mark.timeout(240)
def test_demo_covers_every_format_and_reads_little(tmp_path: Path) -> None:
    results = run_demo(size=256, n_patches=60, patch=32, frames=2, folder=tmp_path, progress=False)
    assert [r.format for r in results] == list(BUILDERS)
    skipped = {r.format: r.note for r in results if r.note}
    assert not skipped, f"formats skipped although the test extra installs them all: {skipped}"
    for r in results:
        assert r.n_patches == 60
        assert r.n_stacks >= 1
        assert r.seconds > 0
        assert r.write_seconds > 0
        assert r.dataset_bytes > 0
        assert r.patch_shape == (2, 32, 32)  # every channel, the requested edge
        assert r.memory_mapped == (r.format == "numpy memmap")
        if r.memory_mapped:
            assert r.bytes_read is None  # not a misleading 0
        elif sys.platform == "linux":
            assert r.bytes_read is not None
            assert r.bytes_read > 0
    table = format_table(results)
    for r in results:
        assert r.format in table


def test_demo_table_states_patch_cache_and_what_read_counts(tmp_path: Path) -> None:
    from lazystack import chunk_cache_size

    with chunk_cache_size("64MiB"):
        results = run_demo(size=128, n_patches=20, patch=16, frames=1, formats=["numpy memmap", "tiff"], progress=False)
    table = format_table(results)
    lines = table.splitlines()
    assert lines[0].startswith("patch: CxYxX float32")
    assert lines[1].startswith("chunk cache: 64.0 MiB per process")
    header = lines[3].split()
    assert header[:4] == ["format", "stacks", "canonical", "shapes"]
    assert "patch" in header
    assert "read" in header
    rows = {line.split("  ")[0]: line for line in lines[5:7]}
    assert "2x16x16" in rows["numpy memmap"]
    assert "n/a (mmap)" in rows["numpy memmap"]
    assert "rchar" in table
    assert "memory-mapped file is read by page faults" in table
    tiff = results[1]
    assert tiff.cache_hits + tiff.cache_misses > 0

    off = run_demo(size=128, n_patches=20, patch=16, frames=1, formats=["tiff"], progress=False, cache_bytes=0)
    assert off[0].cache_max_bytes == 0
    assert off[0].cache_hits == 0
    assert format_table(off).splitlines()[1].startswith("chunk cache: off")


def test_demo_prints_a_step_line_before_every_phase(capsys: pytest.CaptureFixture[str]) -> None:
    run_demo(size=64, n_patches=5, patch=16, frames=1, progress=True)
    _, err = capsys.readouterr()
    lines = [line.strip() for line in err.replace("\r", "\n").splitlines() if line.strip().startswith("[")]
    n = len(BUILDERS)
    for i, name in enumerate(BUILDERS, 1):
        mine = [line for line in lines if line.startswith(f"[{i}/{n}] {name}: ")]
        assert len(mine) == 3, (name, mine)
        assert mine[0].endswith("writing the dataset ...")  # before writing
        assert "opening it and extracting 5 patches of 16 x 16" in mine[1]  # before opening and extracting
        assert mine[2].endswith(" s)")
        assert "patches/s" in mine[2]


def test_demo_quiet_prints_nothing_on_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    run_demo(size=64, n_patches=5, patch=16, frames=1, formats=["numpy memmap"], progress=False)
    assert capsys.readouterr().err == ""


def test_demo_rejects_unknown_format() -> None:
    with pytest.raises(ValueError, match="unknown demo format"):
        run_demo(formats=["gif"])


@pytest.mark.timeout(240)
def test_demo_command_line() -> None:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "lazystack.frontends.cli",
            "demo",
            "--size",
            "128",
            "--patches",
            "20",
            "--frames",
            "1",
            "--quiet",
        ],
        capture_output=True,
        text=True,
        timeout=200,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert "patches/s" in out.stdout
    assert "numpy memmap" in out.stdout
    assert out.stderr == ""
