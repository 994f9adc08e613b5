"""The main job: ``lazystack demo`` covers every installed format."""

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
        assert r.dataset_bytes > 0
    table = format_table(results)
    for r in results:
        assert r.format in table


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
