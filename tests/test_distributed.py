"""Statistics, normalisation and writing on a real distributed.LocalCluster (2 worker processes).

Stacks travel to the workers inside task graphs as recipes (file names), and a
worker killed in the middle of a computation is replaced without changing the
result.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dask
import numpy as np
import pytest
import zarr

from lazystack import LazyImageStack, load_arrays
from lazystack.ops.stats import channel_statistics
from lazystack.ops.writing import write_ome_zarr

distributed = pytest.importorskip("distributed")

LEVELS = (0.1, 1.0, 50.0, 99.0, 99.9)


@pytest.fixture(scope="module")
def cluster() -> Iterator[Any]:
    with distributed.LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        dashboard_address=":0",
        memory_limit="768MiB",
        silence_logs=logging.ERROR,
    ) as cluster:
        yield cluster


@pytest.fixture
def client(cluster: Any) -> Iterator[Any]:
    with distributed.Client(cluster) as client:
        client.wait_for_workers(2, timeout=60)
        yield client


def npy_stacks(folder: Path, n: int, shape: tuple[int, ...], *, delay: float = 0.0, seed: int = 0) -> list[Any]:
    from benchmarks.bench_stats import NpyChunkReader

    rng = np.random.default_rng(seed)
    stacks = []
    for i in range(n):
        path = folder / f"s{seed}_{i}.npy"
        np.save(path, rng.integers(0, 5000, shape).astype(np.uint16))
        reader = NpyChunkReader(str(path), chunks=(1, 1, *shape[2:]), delay=delay)
        stacks.append(LazyImageStack(reader, "TCYX", source=str(path)))
    return stacks


def values_of(stacks: list[Any]) -> np.ndarray:
    parts = [np.moveaxis(s.compute(), 1, 0).reshape(s.data_shape[1], -1) for s in stacks]
    return np.concatenate(parts, axis=1).astype(np.float64)


def check(stats: Any, values: np.ndarray) -> None:
    np.testing.assert_allclose(stats.mean, values.mean(1), rtol=1e-12)
    np.testing.assert_allclose(stats.std, values.std(1), rtol=1e-10)
    np.testing.assert_array_equal(stats.min, values.min(1))
    np.testing.assert_array_equal(stats.max, values.max(1))
    for q in LEVELS:
        ref = np.percentile(values, q, axis=1)
        assert np.all(np.abs(stats.percentile(q) - ref) <= stats.percentile_error + 1e-9 * np.abs(ref)), q


def test_statistics_on_the_cluster_match_numpy(client: Any, tmp_path: Path) -> None:
    stacks = npy_stacks(tmp_path, 3, (2, 2, 48, 40))
    floats = np.random.default_rng(1).normal(3, 2, (3, 2, 30, 30)).astype(np.float32)
    np.save(tmp_path / "f.npy", floats)
    (fstack,) = load_arrays([np.load(tmp_path / "f.npy", mmap_mode="r")], "TCYX")  # memmap: pickled as its file

    # a target below one chunk: one task per stored chunk (they are merged by default)
    with distributed.get_task_stream(client) as stream, dask.config.set({"array.chunk-size": "1B"}):
        stats = channel_statistics(stacks, percentiles=LEVELS)
    check(stats, values_of(stacks))
    fstats = channel_statistics(fstack, percentiles=LEVELS)
    check(fstats, np.moveaxis(floats, 1, 0).reshape(2, -1).astype(np.float64))
    # the chunk tasks really ran on the cluster's workers (one per chunk: 3 stacks x 2 x 2)
    ran = [t for t in stream.data if "_block_partial" in str(t["key"])]
    assert len(ran) == 12
    assert {t["worker"] for t in ran} <= set(client.scheduler_info()["workers"])


def test_statistics_of_format_stacks_on_the_cluster(client: Any, tmp_path: Path) -> None:
    pytest.importorskip("lazystack.sources.tiff")
    pytest.importorskip("lazystack.sources.zarr")
    import tifffile

    from lazystack import load_tiffs, load_zarrs

    rng = np.random.default_rng(2)
    data = rng.integers(0, 3000, (2, 2, 64, 64)).astype(np.uint16)
    tifffile.imwrite(tmp_path / "a.tif", data, tile=(32, 32), photometric="minisblack")
    arr = zarr.create_array(str(tmp_path / "a.zarr"), shape=data.shape, chunks=(1, 1, 32, 32), dtype=data.dtype)
    arr[:] = data
    stacks = load_tiffs([tmp_path / "a.tif"], "TCYX") + load_zarrs([tmp_path / "a.zarr"], "TCYX")
    stats = channel_statistics(stacks, percentiles=LEVELS)
    ref = np.moveaxis(data, 1, 0).reshape(2, -1).astype(np.float64)
    check(stats, np.concatenate([ref, ref], axis=1))


@pytest.mark.parametrize("name", ["DAPI_GFP.czi", "WellD6-7_S2.czi"])
def test_czi_statistics_on_the_cluster(client: Any, shared_czi_dir: Path, name: str) -> None:
    pytest.importorskip("lazystack.sources.czi")
    from lazystack import load_czis

    path = shared_czi_dir / name
    if not path.exists():
        pytest.skip(f"{path} is absent")
    stacks = load_czis([path], "SCYX")
    check(channel_statistics(stacks, percentiles=LEVELS), values_of(stacks))


def test_normalized_and_written_on_the_cluster(client: Any, tmp_path: Path) -> None:
    from lazystack.ops.normalize import normalized

    stacks = npy_stacks(tmp_path, 2, (2, 2, 40, 40))
    stats = channel_statistics(stacks)
    norm = normalized(stacks[0], stats)
    on_cluster = norm.data.compute()
    local = norm.compute()
    np.testing.assert_allclose(on_cluster, local)
    values = stacks[0].compute().astype(np.float64)
    expected = (values - stats.mean[None, :, None, None]) / stats.std[None, :, None, None]
    np.testing.assert_allclose(local, expected, rtol=1e-5, atol=1e-6)

    path = write_ome_zarr(stacks, tmp_path / "out.zarr", chunks=16, levels=2)
    root = zarr.open_group(path, mode="r")
    for i, s in enumerate(stacks):
        np.testing.assert_array_equal(root[f"{i}/0"][:], s.compute())


def _kill_one_worker_during(client: Any, job: Any, *, after_tasks: int) -> tuple[Any, int]:
    """Run ``job()`` in a thread, SIGKILL one worker process once ``after_tasks`` tasks are done.

    (The jobs' chunks are slow enough, seconds in all, that the polling here, starved on a loaded machine, still
    sees the job running: with 0.08 s per chunk the rest of the job after ``after_tasks`` lasted about 1 s.)
    """
    result: dict[str, Any] = {}

    def run() -> None:
        try:
            result["value"] = job()
        except BaseException as exc:
            result["error"] = exc

    pids = client.run(os.getpid)
    thread = threading.Thread(target=run)
    thread.start()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        done = sum(
            1
            for ts in client.run_on_scheduler(lambda dask_scheduler: [t.state for t in dask_scheduler.tasks.values()])
            if ts == "memory"
        )
        if done >= after_tasks:
            break
        time.sleep(0.05)
    assert thread.is_alive(), "the computation finished before a worker could be killed"
    victim = sorted(pids.values())[0]
    os.kill(victim, signal.SIGKILL)
    thread.join(120)
    assert not thread.is_alive()
    if "error" in result:
        raise result["error"]
    client.wait_for_workers(2, timeout=60)
    assert victim not in client.run(os.getpid).values()  # the killed worker was replaced
    return result["value"], victim


def test_statistics_survive_a_killed_worker(client: Any, tmp_path: Path) -> None:
    stacks = npy_stacks(tmp_path, 4, (6, 2, 32, 32), delay=0.25, seed=3)  # 48 slow chunks: 6 s on 2 workers
    with dask.config.set({"array.chunk-size": "1B"}):  # one task per stored chunk, not merged
        stats, _ = _kill_one_worker_during(
            client, lambda: channel_statistics(stacks, percentiles=LEVELS), after_tasks=8
        )
    check(stats, values_of(stacks))


def test_write_survives_a_killed_worker(client: Any, tmp_path: Path) -> None:
    stacks = npy_stacks(tmp_path, 2, (8, 2, 32, 32), delay=0.25, seed=4)  # 32 slow chunks: 4 s on 2 workers
    out = tmp_path / "k.zarr"
    path, _ = _kill_one_worker_during(
        client, lambda: write_ome_zarr(stacks, out, chunks=(1, 1, 32, 32), levels=2), after_tasks=8
    )
    root = zarr.open_group(path, mode="r")
    for i, s in enumerate(stacks):
        data = s.compute()
        np.testing.assert_array_equal(root[f"{i}/0"][:], data)
        low = np.rint(data.reshape(8, 2, 16, 2, 16, 2).mean(axis=(3, 5))).astype(np.uint16)
        np.testing.assert_array_equal(root[f"{i}/1"][:], low)


def test_progress_bar_with_a_client(client: Any, capsys: Any) -> None:
    from lazystack.ops.progress import active_client, progress_bar

    assert active_client() is client
    stacks = load_arrays([np.zeros((2, 16, 16), np.uint8)], "TYX")
    channel_statistics(stacks)
    assert "Completed" not in capsys.readouterr().err + capsys.readouterr().out
    with progress_bar(True):
        stats = channel_statistics(stacks)
    captured = capsys.readouterr()
    assert "100%" in captured.err
    assert captured.out == ""  # stdout stays clean (for --json)
    assert stats.mean.tolist() == [0.0]


def test_cli_stats_on_a_running_scheduler(cluster: Any, tmp_path: Path, capsys: Any) -> None:
    import argparse
    import json

    from lazystack.frontends.cli_preprocess import add_stats_parser

    data = np.random.default_rng(5).integers(0, 100, (3, 2, 16, 16)).astype(np.uint8)
    np.save(tmp_path / "x.npy", data)
    parser = argparse.ArgumentParser()
    add_stats_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(
        ["stats", str(tmp_path / "x.npy"), "--axes", "TCYX", "--json", "--scheduler", cluster.scheduler_address]
    )
    assert args.handler(args) == 0
    out = json.loads(capsys.readouterr().out)
    flat = np.moveaxis(data, 1, 0).reshape(2, -1).astype(np.float64)
    np.testing.assert_allclose(out["mean"], flat.mean(1), rtol=1e-12)
    np.testing.assert_allclose(out["percentiles"]["50.0"], np.percentile(flat, 50, axis=1))
