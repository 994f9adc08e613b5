"""load_zarrs over HTTP: a real server on 127.0.0.1 that counts requests and can misbehave.

Values are compared with zarr-python's read of the same store on disk; the
request log proves that opening reads metadata only and that a patch fetches
exactly the chunks (shards) it overlaps.
"""

from __future__ import annotations

import contextlib
import itertools
import multiprocessing as mp
import operator
import pickle
import time
import warnings
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
import zarr
from conftest import raise_if_dask_computes
from reference import canonical_reference, patch_reference
from zarr_helpers import ServerState, serve_directory, store_file_count, write_plain_store

from lazystack import load_zarrs
from lazystack.core.errors import SourceNotFoundError, SourceReadError
from lazystack.io.cache import get_chunk_cache
from lazystack.sources.zarr import DEFAULT_HTTP_TIMEOUT, effective_storage_options, parse_zarr_source

KINDS = {"v2": (2, False), "v3": (3, False), "v3-sharded": (3, True)}


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, ServerState, Path]]:
    root = tmp_path_factory.mktemp("http")
    for kind, (fmt, shards) in KINDS.items():
        write_plain_store(root / f"{kind}.zarr", fmt, shards=shards)
    from test_ome_zarr import write_bioio, write_ome_zarr_py

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        write_ome_zarr_py(root / "omezarrpy.ome.zarr", "0.4")
        with contextlib.suppress(ImportError):  # a bioio-ome-zarr without OMEZarrWriter (zarr 3.0 resolves to one)
            write_bioio(root / "bioio.ome.zarr", "0.5")
    with serve_directory(root) as (url, state):
        yield url, state, root


@pytest.fixture
def server(served: tuple[str, ServerState, Path]) -> Iterator[tuple[str, ServerState, Path]]:
    """The server, reset (chunks read through zarr's FsspecStore, i.e. fsspec's HTTP client on aiohttp)."""
    url, state, root = served
    state.mode = "ok"
    state.trickle_interval = 0.2
    state.latency = 0.0
    state.clear()
    get_chunk_cache().clear()  # every test starts cold: request counts and corrupt-mode reads see the server
    yield url, state, root
    state.mode = "ok"


def _needs(store: Path) -> None:
    if not store.exists():
        pytest.skip(f"{store.name} was not written (its writer is not installed)")


def _local(root: Path, kind: str, name: str) -> np.ndarray:
    return zarr.open_array(str(root / f"{kind}.zarr"), path=name, mode="r")[...]


@pytest.mark.parametrize("kind", KINDS)
def test_group_over_http_equals_zarr(server: Any, kind: str) -> None:
    url, _, root = server
    stacks = load_zarrs([f"{url}/{kind}.zarr"], "SYX")
    assert [s.source for s in stacks] == [f"{url}/{kind}.zarr/a", f"{url}/{kind}.zarr/b"]
    rng = np.random.default_rng(5)
    for stack, name in zip(stacks, "ab", strict=True):
        full = _local(root, kind, name)
        canon = canonical_reference(full, "SYX")
        np.testing.assert_array_equal(stack.compute(), canon)
        np.testing.assert_array_equal(stack.data.compute(), canon)
        for _ in range(8):
            sample = int(rng.integers(stack.n_samples))
            coords = [int(rng.integers(-5, n)) for n in full.shape[1:]]
            size = [int(rng.integers(1, 30)) for _ in full.shape[1:]]
            got = stack.extract_patch(sample, None, coords, size)
            np.testing.assert_array_equal(got, patch_reference(canon, sample, None, coords, size))
        view = stack.isel(Y=slice(2, 33, 3))
        np.testing.assert_array_equal(view.compute(), canonical_reference(full[:, 2:33:3], "SYX"))
        (again,) = load_zarrs([stack.source], "SYX")
        np.testing.assert_array_equal(
            again.extract_patch(1, None, (4, 4), (9, 9)), stack.extract_patch(1, None, (4, 4), (9, 9))
        )


@pytest.mark.parametrize("name", ["omezarrpy.ome.zarr", "bioio.ome.zarr"])
def test_ome_zarr_levels_over_http(server: Any, name: str) -> None:
    url, _, root = server
    _needs(root / name)
    stacks = load_zarrs([f"{url}/{name}"], "CZYX")
    assert [s.level for s in stacks] == [0, 1]
    assert stacks[0].physical_pixel_sizes == {"Z": 2.0, "Y": 0.5, "X": 0.25}
    assert stacks[0].channel_names == ["DAPI", "GFP"]
    for stack in stacks:
        level_path = stack.source.removeprefix(f"{url}/{name}/")
        full = zarr.open_array(str(root / name), path=level_path, mode="r")[...]
        np.testing.assert_array_equal(stack.compute(), canonical_reference(full, "CZYX"))
        (alone,) = load_zarrs([stack.source], "CZYX")
        assert alone.level == stack.level
        assert alone.attrs == stack.attrs
        np.testing.assert_array_equal(alone.extract_patch(0, [1], (1, 3, 2), (2, 10, 10))[0], full[1, 1:3, 3:13, 2:12])


def _expected_chunk_paths(kind: str, sample: int, coords: tuple[int, int], size: tuple[int, int]) -> set[str]:
    grid = 32 if kind == "v3-sharded" else 16
    rows = range(coords[0] // grid, (coords[0] + size[0] - 1) // grid + 1)
    cols = range(coords[1] // grid, (coords[1] + size[1] - 1) // grid + 1)
    if kind == "v2":
        return {f"/{kind}.zarr/b/{sample}.{i}.{j}" for i, j in itertools.product(rows, cols)}
    return {f"/{kind}.zarr/b/c/{sample}/{i}/{j}" for i, j in itertools.product(rows, cols)}


@pytest.mark.parametrize("kind", KINDS)
def test_open_reads_metadata_only_and_patch_reads_only_its_chunks(server: Any, kind: str) -> None:
    url, state, root = server
    with raise_if_dask_computes():
        (stack,) = load_zarrs([f"{url}/{kind}.zarr/b"], "SYX")
        _ = stack.data, stack.xarray
    assert state.paths(None), "opening must read the array's metadata"
    assert state.chunk_paths() == [], "opening must not fetch any chunk"
    full = _local(root, kind, "b")
    for sample, coords, size in [(1, (20, 40), (30, 9)), (2, (0, 0), (5, 5)), (0, (60, 70), (10, 20))]:
        state.clear()
        got = stack.extract_patch(sample, None, coords, size)
        np.testing.assert_array_equal(
            got[0], full[sample, coords[0] : coords[0] + size[0], coords[1] : coords[1] + size[1]]
        )
        requested = state.chunk_paths()
        assert set(requested) == _expected_chunk_paths(kind, sample, coords, size)
        assert [p for p in state.paths(None) if p not in requested] == [], "a patch reads no metadata again"
        if kind != "v3-sharded":  # a sharded read fetches the shard index, then the inner chunks (byte ranges)
            assert len(requested) == len(set(requested)), "each chunk is fetched once"
        if get_chunk_cache().enabled:
            state.clear()
            again = stack.extract_patch(sample, None, coords, size)
            np.testing.assert_array_equal(again, got)
            assert state.chunk_paths() == [], "a repeated patch is served by the chunk cache"


def test_missing_chunk_over_http_reads_fill_value(server: Any, tmp_path: Path) -> None:
    url, state, root = server
    folder = root / "holes.zarr"
    z = zarr.create_array(str(folder), shape=(32, 32), chunks=(16, 16), dtype="i2", fill_value=-9, overwrite=True)
    z[...] = np.ones((32, 32), dtype="i2")
    (folder / "c" / "0" / "1").unlink()
    (stack,) = load_zarrs([f"{url}/holes.zarr"], "YX")
    got = stack.compute()[0, 0]
    np.testing.assert_array_equal(got, zarr.open_array(str(folder), mode="r")[...])
    assert (got[:16, 16:] == -9).all()
    assert "/holes.zarr/c/0/1" in state.chunk_paths()


def test_missing_array_over_http_lists_members(server: Any) -> None:
    url, _, _ = server
    with pytest.raises(SourceNotFoundError) as info:
        load_zarrs([f"{url}/v3.zarr/zzz"], "SYX")
    assert "'a' (array" in str(info.value)
    assert f"{url}/v3.zarr" in str(info.value)
    with pytest.raises(SourceNotFoundError, match="no Zarr store"):
        load_zarrs([f"{url}/absent.zarr"], "SYX")


def test_server_error_500_is_a_read_error(server: Any) -> None:
    url, state, _ = server
    (stack,) = load_zarrs([f"{url}/v3.zarr/b"], "SYX")
    state.mode = "500"
    with pytest.raises(SourceReadError) as info:
        stack.extract_patch(0, None, (0, 20), (8, 8))
    assert "failing chunk(s) 'b/c/0/0/1'" in str(info.value)
    assert f"store '{url}/v3.zarr'" in str(info.value)
    assert "500" in str(info.value)
    state.mode = "ok"
    np.testing.assert_array_equal(
        stack.extract_patch(0, None, (0, 20), (8, 8))[0], _local(server[2], "v3", "b")[0, :8, 20:28]
    )


@pytest.mark.timeout(60)
def test_silent_server_times_out(server: Any) -> None:
    url, state, _ = server
    opts = {"client_kwargs": {"timeout": aiohttp.ClientTimeout(total=1.0)}}
    (stack,) = load_zarrs([f"{url}/v2.zarr/b"], "SYX", storage_options=opts)
    state.mode = "hang"
    with pytest.raises(SourceReadError, match="did not answer in time") as info:
        stack.extract_patch(0, None, (0, 0), (8, 8))
    assert "chunk(s) 'b/0.0.0'" in str(info.value)


@pytest.mark.timeout(60)
def test_silent_server_at_open_times_out(server: Any) -> None:
    url, state, _ = server
    state.mode = "hang-all"
    opts = {"client_kwargs": {"timeout": aiohttp.ClientTimeout(total=1.0)}}
    with pytest.raises(SourceReadError, match="did not answer in time") as info:
        load_zarrs([f"{url}/v3.zarr/a"], "SYX", storage_options=opts)
    assert f"{url}/v3.zarr/a" in str(info.value)


@pytest.mark.timeout(60)
def test_connection_dropped_mid_read(server: Any) -> None:
    url, state, _ = server
    (stack,) = load_zarrs([f"{url}/v3.zarr/a"], "SYX")
    state.mode = "drop"
    with pytest.raises(SourceReadError, match=r"v3\.zarr/a"):
        stack.extract_patch(1, None, (0, 0), (20, 20))


@pytest.mark.timeout(60)
def test_server_gone(tmp_path: Path) -> None:
    write_plain_store(tmp_path / "gone.zarr", 3)
    with serve_directory(tmp_path) as (url, _):
        (stack,) = load_zarrs([f"{url}/gone.zarr/b"], "SYX")
    with pytest.raises(SourceReadError, match=r"gone\.zarr/b"):
        stack.extract_patch(0, None, (0, 0), (8, 8))
    with pytest.raises((SourceReadError, SourceNotFoundError)):
        load_zarrs([f"{url}/gone.zarr/a"], "SYX")


def test_default_timeout_is_bounded_and_user_timeout_wins() -> None:
    loc = parse_zarr_source("http://127.0.0.1:1/x.zarr/a")
    timeout = effective_storage_options(loc)["client_kwargs"]["timeout"]
    assert isinstance(timeout, aiohttp.ClientTimeout)
    assert timeout.total == DEFAULT_HTTP_TIMEOUT["total"]
    assert timeout.sock_read == DEFAULT_HTTP_TIMEOUT["sock_read"]
    mine = aiohttp.ClientTimeout(total=3)
    loc = parse_zarr_source("https://h/x.zarr", {"client_kwargs": {"timeout": mine, "trust_env": True}})
    assert effective_storage_options(loc)["client_kwargs"] == {"timeout": mine, "trust_env": True}
    assert "client_kwargs" not in effective_storage_options(parse_zarr_source("memory://x.zarr"))


def test_storage_options_reach_the_server(server: Any) -> None:
    url, state, root = server
    (stack,) = load_zarrs([f"{url}/v2.zarr/a"], "SYX", storage_options={"headers": {"X-Lazystack-Test": "42"}})
    stack.extract_patch(0, None, (0, 0), (4, 4))
    assert state.headers_seen("X-Lazystack-Test") == {"42"}
    state.clear()
    again = pickle.loads(pickle.dumps(stack))  # the recipe keeps the options
    np.testing.assert_array_equal(again.compute()[:, 0], _local(root, "v2", "a"))
    with state.lock:
        assert state.headers
        assert all(h.get("X-Lazystack-Test") == "42" for h in state.headers)


def _patch_in_child(stack: Any, queue: Any) -> None:
    import gc

    # zarr and fsspec drop their event loops in a forked child; collecting them here (a loop sits in
    # reference cycles, so only the cyclic collector frees it) must not unregister the parent's sockets
    # and self-pipe from the epoll instance the two processes share
    gc.collect()
    queue.put(stack.extract_patch(2, None, (10, 11), (12, 13)))


@pytest.mark.timeout(120)
def test_fork_after_http_use(server: Any) -> None:
    url, _, root = server
    (stack,) = load_zarrs([f"{url}/v3-sharded.zarr/b"], "SYX")
    stack.extract_patch(0, None, (0, 0), (8, 8))  # the parent's aiohttp session and event loop are live
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    proc = ctx.Process(target=_patch_in_child, args=(stack, queue))
    proc.start()
    got = queue.get(timeout=60)
    proc.join(30)
    assert proc.exitcode == 0
    np.testing.assert_array_equal(got[0], _local(root, "v3-sharded", "b")[2, 10:22, 11:24])
    stack.extract_patch(1, None, (0, 0), (8, 8))  # the parent still reads


@pytest.mark.timeout(120)
@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_worker_pool_over_http(server: Any, method: str) -> None:
    url, _, root = server
    stacks = load_zarrs([f"{url}/v2.zarr"], "SYX")
    with mp.get_context(method).Pool(2) as pool:
        results = pool.map(operator.methodcaller("extract_patch", 1, None, (3, 4), (16, 16)), stacks)
    np.testing.assert_array_equal(results[0][0], _local(root, "v2", "a")[1, 3:19, 4:20])
    np.testing.assert_array_equal(results[1][0], _local(root, "v2", "b")[1, 3:19, 4:20])


@pytest.mark.timeout(120)
def test_dask_distributed_over_http(server: Any) -> None:
    distributed = pytest.importorskip("distributed")
    url, _, root = server
    _needs(root / "bioio.ome.zarr")
    (stack,) = load_zarrs([f"{url}/bioio.ome.zarr/1"], "CZYX")
    with (
        distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=True, dashboard_address=":0") as cluster,
        distributed.Client(cluster) as client,
    ):
        total = client.compute(stack.data.sum(dtype=np.int64)).result()
    assert total == zarr.open_array(str(root / "bioio.ome.zarr"), path="1", mode="r")[...].sum(dtype=np.int64)


def test_http_sources_are_never_written(server: Any) -> None:
    url, state, root = server
    before = store_file_count(root / "v3.zarr")
    for stack in load_zarrs([f"{url}/v3.zarr"], "SYX"):
        stack.compute()
    assert {m for m, _ in state.requests} <= {"GET", "HEAD"}
    assert store_file_count(root / "v3.zarr") == before


# -- bounded waits and retries (issue 22, item 6) ---------------------------------------------------
def _timed_failure(stack: Any, state: ServerState) -> tuple[SourceReadError, float]:
    """The error of a patch read and the seconds it took (the server released afterwards)."""
    start = time.monotonic()
    try:
        with pytest.raises(SourceReadError) as info:
            stack.extract_patch(0, None, (0, 0), (8, 8))
    finally:
        state.release.set()
    elapsed = time.monotonic() - start
    state.release.clear()
    return info.value, elapsed


@pytest.mark.timeout(120)
def test_trickling_server_ends_in_a_clear_error_within_the_configured_bound(server: Any) -> None:
    """A server sending one byte every 2 s: the configured total bound ends the read (not 2 s x 100 bytes)."""
    url, state, _ = server
    opts = {"client_kwargs": {"timeout": aiohttp.ClientTimeout(total=3.0, sock_read=10.0)}}
    (stack,) = load_zarrs([f"{url}/v3.zarr/b"], "SYX", storage_options=opts)
    state.trickle_interval = 2.0
    state.mode = "trickle"
    error, elapsed = _timed_failure(stack, state)
    assert "did not answer in time" in str(error)
    assert f"{url}/v3.zarr/b/c/0/0/0" in str(error)  # the URL of the chunk
    assert len(state.chunk_paths()) == 1  # a timeout is not retried: its bound is the bound
    # a hang guard, not a speed claim: the trickle alone would last 200 s
    assert elapsed < 60, elapsed


@pytest.mark.timeout(120)
def test_server_that_never_sends_headers_ends_in_a_clear_error(server: Any) -> None:
    """No status line at all: the socket-read bound ends the read, and the error names the URL."""
    url, state, _ = server
    opts = {"client_kwargs": {"timeout": aiohttp.ClientTimeout(total=None, sock_read=1.5)}}
    (stack,) = load_zarrs([f"{url}/v2.zarr/b"], "SYX", storage_options=opts)
    state.mode = "hang"
    error, elapsed = _timed_failure(stack, state)
    assert "did not answer in time" in str(error)
    assert f"{url}/v2.zarr/b/0.0.0" in str(error)
    assert elapsed < 60, elapsed  # hang guard (the server holds the request 30 s)


def test_default_timeouts_bound_every_wait() -> None:
    """Connect, socket-read and total bounds by default (a trickle is bounded by total, silence by sock_read)."""
    timeout = effective_storage_options(parse_zarr_source("https://h/x.zarr"))["client_kwargs"]["timeout"]
    for name in ("total", "sock_connect", "sock_read"):
        value = getattr(timeout, name)
        assert value is not None, name
        assert 0 < value <= 60, (name, value)


@pytest.mark.parametrize("mode", ["503-once", "drop-once"])
def test_a_single_503_or_reset_connection_is_retried(server: Any, mode: str) -> None:
    url, state, root = server
    (stack,) = load_zarrs([f"{url}/v3.zarr/b"], "SYX", storage_options={"retry_backoff": 0.01})
    state.mode = mode
    got = stack.extract_patch(0, None, (0, 20), (8, 8))[0]
    np.testing.assert_array_equal(got, _local(root, "v3", "b")[0, :8, 20:28])
    assert state.chunk_paths() == ["/v3.zarr/b/c/0/0/1"] * 2  # the failed request, then its retry


def test_retries_are_bounded_and_configurable(server: Any) -> None:
    url, state, _ = server
    (stack,) = load_zarrs([f"{url}/v3.zarr/b"], "SYX", storage_options={"retries": 2, "retry_backoff": 0.01})
    state.mode = "500:c/0/0/1"
    with pytest.raises(SourceReadError) as info:
        stack.extract_patch(0, None, (0, 20), (8, 8))
    assert f"{url}/v3.zarr/b/c/0/0/1" in str(info.value)
    assert "after 3 attempts" in str(info.value)
    # three attempts of the fast reader, then one probe through zarr to name the failing chunk
    assert state.chunk_paths().count("/v3.zarr/b/c/0/0/1") == 4
    state.mode = "503-once"
    state.clear()
    (stack,) = load_zarrs([f"{url}/v3.zarr/b"], "SYX", storage_options={"retries": 0})
    with pytest.raises(SourceReadError, match="503"):
        stack.extract_patch(0, None, (0, 20), (8, 8))


@pytest.mark.parametrize("bad", [{"retries": -1}, {"retries": "3"}, {"retry_backoff": -0.5}])
def test_bad_retry_options_are_refused_at_open(server: Any, bad: dict[str, Any]) -> None:
    url, _, _ = server
    key, value = next(iter(bad.items()))
    with pytest.raises(ValueError, match=rf"{key if key == 'retries' else 'backoff'}.*{value!r}"):
        load_zarrs([f"{url}/v3.zarr/b"], "SYX", storage_options=bad)


_EXIT_SCRIPT = """
import gc, sys
from lazystack import load_zarrs
(stack,) = load_zarrs([sys.argv[1]], "SYX")
stack.extract_patch(0, None, (0, 0), (8, 8))
print("read", flush=True)
if sys.argv[2] == "collected":  # the stack, its store and fsspec's cached file system collected before exit
    from fsspec.implementations.http import HTTPFileSystem

    del stack
    HTTPFileSystem.clear_instance_cache()
    gc.collect()
"""


@pytest.mark.timeout(120)
@pytest.mark.parametrize("when", ["at-exit", "collected"])
def test_http_sessions_are_closed(server: Any, when: str) -> None:
    """A process that read over HTTP ends without aiohttp's "Unclosed client session" / "Unclosed connector",
    whether its stores live until exit or are collected before."""
    import os
    import subprocess
    import sys

    url, state, _ = server
    repo = str(Path(__file__).resolve().parents[1])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([repo, os.environ.get("PYTHONPATH", "")]))
    got = subprocess.run(
        [sys.executable, "-c", _EXIT_SCRIPT, f"{url}/v3.zarr/a", when],
        capture_output=True,
        text=True,
        timeout=100,
        env=env,
    )
    assert got.returncode == 0, got.stderr
    assert got.stdout.split() == ["read"]
    assert any(p.startswith("/v3.zarr/a/") for p in state.chunk_paths())  # it did read chunks over HTTP
    assert "Unclosed" not in got.stderr, got.stderr


@pytest.mark.parametrize("kind", ["v3", "v3-sharded"])
def test_a_patch_or_a_batch_fetches_its_chunks_in_one_round(
    server: Any, kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every get a patch (or a batch) needs goes out in one round of concurrent requests (one hand-off to
    zarr's event loop); a shard's index is fetched once, in a round of its own, and remembered."""
    import zarr.core.sync

    from lazystack import extract_patches
    from lazystack.io.cache import chunk_cache_size

    url, state, root = server
    rounds: list[int] = []
    original = zarr.core.sync.sync

    def counting(coro: Any, *args: Any, **kwargs: Any) -> Any:
        before = len(state.chunk_paths())
        out = original(coro, *args, **kwargs)
        rounds.append(len(state.chunk_paths()) - before)
        return out

    (stack,) = load_zarrs([f"{url}/{kind}.zarr/b"], "SYX")
    full = _local(root, kind, "b")
    monkeypatch.setattr(zarr.core.sync, "sync", counting)
    with chunk_cache_size(0):
        state.clear()
        got = stack.extract_patch(1, None, (10, 12), (20, 20))  # 3x3 chunks of 16x16, in one 32x32 shard + others
        np.testing.assert_array_equal(got[0], full[1, 10:30, 12:32])
        n_chunks = len(_expected_chunk_paths("v3", 1, (10, 12), (20, 20)))
        if kind == "v3":
            assert rounds == [n_chunks]
            assert len(state.chunk_paths()) == n_chunks
        else:  # the indexes of the shards touched in one round, then every inner chunk in one
            n_shards = len(_expected_chunk_paths(kind, 1, (10, 12), (20, 20)))
            assert rounds == [n_shards, n_chunks]
            rounds.clear()
            state.clear()
            again = stack.extract_patch(1, None, (14, 16), (10, 10))  # the same shards: no index fetched again
            np.testing.assert_array_equal(again[0], full[1, 14:24, 16:26])
            assert rounds == [len(_expected_chunk_paths("v3", 1, (14, 16), (10, 10)))]
        rounds.clear()
        state.clear()
        requests = [(stack, s, None, (y, x), (16, 16)) for s, y, x in [(0, 0, 0), (0, 40, 50), (2, 20, 70), (2, 5, 5)]]
        patches = extract_patches(requests)
        for (_, s, _, (y, x), _), patch in zip(requests, patches, strict=True):
            np.testing.assert_array_equal(patch[0], full[s, y : y + 16, x : x + 16])
        wanted = set().union(*(_expected_chunk_paths("v3", s, (y, x), (16, 16)) for _, s, _, (y, x), _ in requests))
        assert rounds[-1] == len(wanted), "a batch's chunks come in one round"
        assert sum(rounds) == len(state.chunk_paths())


@pytest.mark.timeout(60)
def test_a_chained_url_over_a_silent_server_times_out_by_default(server: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """``zip://a::http://.../x.zip``: the http layer gets lazystack's bounded timeout too.

    fsspec gives the top-level options to the first layer (zip) only; the http layer's are under the key
    ``"http"``, where the default timeout was missing, so a silent server was waited on for aiohttp's own
    default (300 s in total).
    """
    url, state, root = server
    archive = root / "plain.zip"
    if not archive.exists():
        write_plain_store(root / "to-zip.zarr", 3)
        with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as out:
            for path in sorted((root / "to-zip.zarr").rglob("*")):
                out.write(path, path.relative_to(root / "to-zip.zarr").as_posix())
    monkeypatch.setitem(DEFAULT_HTTP_TIMEOUT, "total", 2.0)
    monkeypatch.setitem(DEFAULT_HTTP_TIMEOUT, "sock_read", 1.0)
    state.mode = "hang-all"
    started = time.monotonic()
    with pytest.raises(SourceReadError, match="did not answer in time") as info:
        load_zarrs(f"zip://a::{url}/plain.zip", "SYX")
    assert "plain.zip" in str(info.value)
    assert time.monotonic() - started < 30
    state.mode = "ok"
    (stack,) = load_zarrs(f"zip://a::{url}/plain.zip", "SYX")  # the same URL reads once the server answers
    np.testing.assert_array_equal(stack.compute()[:, 0], zarr.open_array(str(root / "to-zip.zarr"), path="a")[...])
