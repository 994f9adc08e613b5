"""The benchmark suite runs and reports what the docs say it reports (a small run; no timing is asserted)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import suite


@pytest.mark.slow
def test_quick_batch_and_http_scenarios_report_their_floors(tmp_path: Path) -> None:
    pytest.importorskip("tensorstore", reason="the suite's tensorstore references need it")
    out = tmp_path / "results.json"
    results = suite.main(["--quick", "--scenario", "batch64", "--scenario", "remote_http", "--json", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(results))
    batch = results["scenarios"]["batch64"]
    assert batch["skipped"] is None
    rows = batch["us_per_patch"]
    for row in ("lazystack extract_patches (per patch)", "lazystack one-by-one cold", "decode only, one core"):
        assert rows[row] > 0
    assert any(row.startswith("decode only, ") and row.endswith(" cores") for row in rows)
    assert any("how decoding scales on these cores" in note for note in batch["notes"])
    assert [t["target"] for t in batch["targets"] if not t.get("informative")] == ["batch <= 0.5x one-by-one cold"]
    http = results["scenarios"]["remote_http"]
    assert http["skipped"] is None
    assert any(note.startswith("dask compute / cold floor:") for note in http["notes"])
    targets = {t["target"] for t in http["targets"]}
    assert targets >= {"cold <= 1.3x touched-chunk floor", "dask / lazystack (>= 10x faster)"}
