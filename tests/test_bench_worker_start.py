"""benchmarks/bench_worker_start.py runs end to end (one round, this checkout against itself)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import zarr

from benchmarks import bench_worker_start


def test_the_worker_start_benchmark_reports_both_checkouts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("torch")
    store = str(tmp_path / "small.zarr")
    z = zarr.create_array(store, shape=(2, 256, 256), chunks=(1, 128, 128), dtype="uint16")
    z[...] = np.arange(z.size, dtype=np.uint16).reshape(z.shape)
    here = Path(__file__).resolve().parents[1]
    bench_worker_start.main(["--baseline", str(here), "--zarr", store, "--rounds", "1"])
    out = capsys.readouterr().out
    assert f"this checkout: {here / 'lazystack' / '__init__.py'}" in out
    rows = re.findall(r"^(this checkout|baseline) +[\d.]+ +(\S+) +(\S+) +\d+$", out, flags=re.MULTILINE)
    # a batch with the chunk cache on never needs tensorstore, nor zarr-python (the array's layout was pickled):
    # a spawned worker imports neither
    assert sorted(rows) == [("baseline", "False", "False"), ("this checkout", "False", "False")]
    assert "this checkout / baseline:" in out
    forked = re.findall(r"^(this checkout|baseline) \(fork\) +[\d.]+ s +spawn / fork: [\d.]+$", out, re.MULTILINE)
    assert sorted(forked) == ["baseline", "this checkout"]
