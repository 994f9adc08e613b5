"""The benchmark suite runs and reports what the docs say it reports (a small run; no timing is asserted)."""

from __future__ import annotations

import json
import os
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


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_bench_loader_reports_every_reader_config_and_target(tmp_path: Path) -> None:
    """Tiny bench_loader runs: every reader x configuration row, the targets, the JSON (no timing asserted)."""
    pytest.importorskip("torch", reason="bench_loader runs torch DataLoaders")
    pytest.importorskip("tensorstore", reason="the Zarr reference is tensorstore")
    from benchmarks import bench_loader

    common = ["--quick", "--batches", "2", "--import-rounds", "1", "--data-dir", str(tmp_path / "data")]
    out = tmp_path / "loader.json"
    configs = ["--configs", "0", "1:fork", "1:spawn"]
    results = bench_loader.main([*common, "--cells", "tiff3d", *configs, "--json", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(results))
    checkout = Path(__file__).resolve().parents[1]  # --baseline: this checkout again, through the baseline's path
    zarr_args = ["--cells", "zarr2d", "--configs", "1:fork", "--baseline", str(checkout), "--json", ""]
    zarr_results = bench_loader.main([*common, *zarr_args])
    assert zarr_results["baseline_files"] == {"zarr2d": str(checkout / "lazystack" / "__init__.py")}
    results["cells"].update(zarr_results["cells"])
    results["targets"] += zarr_results["targets"]
    small = f"lazystack cache={results['small_cache_mib']} MiB"
    readers = {
        "zarr2d": (
            {"lazystack", small, "lazystack chunk-local", "lazystack@baseline", "tensorstore", "zarr-python", "floor"},
            {"1 workers fork"},
        ),
        "tiff3d": (
            {"lazystack", small, "lazystack chunk-local", "tifffile+zarr"},
            {"0 workers", "1 workers fork", "1 workers spawn"},
        ),
    }
    assert set(results["cells"]) == set(readers)
    for cell, (names, labels) in readers.items():
        res = results["cells"][cell]
        assert res["patch"] == list(bench_loader.CELLS[cell][4])
        local, plain = res["diversity"]["lazystack chunk-local"], res["diversity"]["RandomSampler"]
        assert local["places_per_batch"] < plain["places_per_batch"]  # groups of 8 patches share a place
        assert 0 < local["chunks_per_batch"] < plain["chunks_per_batch"]
        assert set(res["configs"]) == labels
        for label, rows in res["configs"].items():
            assert set(rows) == names
            for name, row in rows.items():
                assert len(row["patches_per_s_rounds"]) == 1
                assert row["patches_per_s"] > 0
                assert row["first_batch_s"] > 0
                assert 0 < row["p50_ms"] <= row["p99_ms"]
                expected_bound = results["small_cache_mib"] if name == small else results["default_cache_mib"]
                assert row["cache_bound_mib"] == (expected_bound if name.startswith("lazystack") else None)
                assert row["patches_per_s"] > 0  # every reader's first batch matched numpy slicing (else main raises)
                if label == "0 workers":
                    assert row["workers_rss_mib"] == {}
                else:
                    (worker,) = row["workers_rss_mib"].values()
                    assert 0 < worker["start_mib"] <= worker["peak_mib"]
    targets = [t["target"] for t in results["targets"]]
    for name in ("lazystack", small):
        assert f"zarr2d 1 workers fork {name} / tensorstore patches/s" in targets
        assert f"zarr2d 1 workers fork {name} worker 0 peak RSS MiB" in targets
        assert f"tiff3d 0 workers {name} / tifffile+zarr patches/s" in targets
        assert f"tiff3d 1 workers spawn {name} p99 / p50 batch time" in targets
        assert f"tiff3d {name} first batch spawn / fork" in targets
    assert "import lazystack / import zarr, tifffile" in targets
    assert not any("@baseline" in t for t in targets)  # the baseline gets ratios, no targets
    assert not any("chunk-local" in t for t in targets)  # another sampling: a labelled ratio, no targets
    assert all(t["pass"] in (True, False) for t in results["targets"])
    assert results["import"]["rounds"] == 1


def test_bench_loader_reuses_matching_data_and_rewrites_changed(tmp_path: Path) -> None:
    """The data is written once; a cache entry whose parameters differ is written again."""
    import numpy as np
    import tifffile

    from benchmarks import bench_loader

    path, shape = bench_loader.ensure_data("tiff2d", 8, tmp_path)
    assert shape == (1, 2048, 2048)
    full = tifffile.imread(path).reshape(2048, 2048)
    with tifffile.TiffFile(path) as tif:
        page = tif.pages.first
        assert page.is_tiled
        assert (page.tilelength, page.tilewidth) == (256, 256)
        assert page.compression == tifffile.COMPRESSION.ZSTD
    stamp = path.stat().st_mtime_ns
    assert bench_loader.ensure_data("tiff2d", 8, tmp_path) == (path, shape)
    assert path.stat().st_mtime_ns == stamp
    stamp -= 10**9  # dated a second earlier: a rewrite within the file system's clock tick would keep its date
    os.utime(path, ns=(stamp, stamp))
    meta = path.parent / "meta.json"
    meta.write_text(meta.read_text().replace('"zstd"', '"zlib"'))
    assert bench_loader.ensure_data("tiff2d", 8, tmp_path) == (path, shape)
    assert path.stat().st_mtime_ns != stamp
    assert json.loads(meta.read_text())["codec"] == "zstd"
    specs = [(0, (100, 200), (64, 64)), (0, (1984, 0), (64, 64))]
    expected = bench_loader.expected_batch("tiff2d", path, specs)
    assert np.array_equal(expected[:, 0], np.stack([full[100:164, 200:264], full[1984:2048, 0:64]]).astype(np.float32))


def test_bench_loader_warms_exactly_the_tiles_a_tiff_spec_touches(tmp_path: Path) -> None:
    """TIFF rounds are warmed like Zarr ones: the bytes of the touched tiles, each once (tifffile's offsets)."""
    import tifffile

    from benchmarks import bench_loader

    path, _ = bench_loader.ensure_data("tiff2d", 8, tmp_path)
    with tifffile.TiffFile(path) as tif:
        counts = tif.pages.first.databytecounts  # 8 x 8 tiles of 256 x 256, row by row
    spec = (0, (250, 250), (64, 64))  # straddles tiles (0, 0), (0, 1), (1, 0), (1, 1)
    expected = sum(counts[i] for i in (0, 1, 8, 9))
    assert bench_loader.warm_tiff_tiles(str(path), "TYX", [spec, spec]) == expected
    assert bench_loader.warm_tiff_tiles(str(path), "TYX", [(0, (0, 0), (64, 64))]) == counts[0]
    path3, shape3 = bench_loader.ensure_data("tiff3d", 8, tmp_path)
    with tifffile.TiffFile(path3) as tif:
        planes = tif.series[0].shape[1]
        pages = [tif.pages[planes * (shape3[0] - 1) + z] for z in (2, 3)]  # the last sample, planes 2 and 3
        expected3 = sum(int(p.databytecounts[0]) for p in pages)
    assert bench_loader.warm_tiff_tiles(str(path3), "TZYX", [(shape3[0] - 1, (2, 0, 0), (2, 64, 64))]) == expected3


def test_the_zarr_floor_reads_a_sharded_array_as_zarr_does(tmp_path: Path) -> None:
    """The floor of the ``zarr_sharded`` scenario reads every shard index through the direct engine's public
    ``shard_indexes`` (it called a private method the engine no longer has)."""
    import numpy as np

    from benchmarks.suite import ZarrFloor, write_zarr

    data = np.arange(64 * 64, dtype=np.uint16).reshape(64, 64)
    path = tmp_path / "s.zarr"
    floor = ZarrFloor(write_zarr(path, data, (8, 8), compressed=True, shards=(32, 32)), path)
    assert len(floor.index) == 4
    np.testing.assert_array_equal(floor.read((slice(5, 40), slice(30, 61))), data[5:40, 30:61])
