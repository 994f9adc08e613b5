"""Decoding threads inside DataLoader workers: each worker's budget is the cores divided by the workers.

The budget is read back from inside the workers (a transform adds it to
every item), the patches are compared with numpy slicing of the arrays the
Zarr stores were written from, and the threads a worker starts are counted
(no wall-clock assertion anywhere).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from torch.utils.data import DataLoader  # noqa: E402

import lazystack.io.chunked as chunked  # noqa: E402
from lazystack import LazyImageStack, RandomSampler, load_zarrs  # noqa: E402
from lazystack.io.chunked import decode_threads, set_decode_threads  # noqa: E402
from lazystack.torch import EpochSampler, PatchDataset  # noqa: E402

N = 48  # patches per epoch
BATCH = 16  # 16 patches of 24x24 over 16x16 chunks: dozens of chunks a batch, enough for the parallel paths

pytestmark = pytest.mark.filterwarnings("ignore:This DataLoader will create:UserWarning")


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[LazyImageStack], np.ndarray]:
    import zarr

    root = tmp_path_factory.mktemp("workers")
    data = np.random.default_rng(5).integers(0, 60000, (3, 96, 112), dtype=np.uint16)
    z = zarr.create_array(str(root / "a.zarr"), shape=data.shape, chunks=(1, 16, 16), dtype=data.dtype)
    z[:] = data
    return load_zarrs(str(root / "a.zarr"), "SYX"), data


@pytest.fixture(autouse=True)
def _no_budget() -> Iterator[None]:
    """Every test starts and ends without a budget in this process."""
    previous = set_decode_threads(None)
    yield
    set_decode_threads(previous)


def with_threads(item: dict[str, Any]) -> dict[str, Any]:
    """The transform: adds the process's budget and its count of shared-pool threads (``lazystack-io``)."""
    item["threads"] = torch.tensor(decode_threads())
    pool = [t for t in threading.enumerate() if t.name.startswith("lazystack-io")]
    item["pool_threads"] = torch.tensor(len(pool))
    return item


def _run(stacks: list[LazyImageStack], workers: int, context: str | None, **kw: Any) -> dict[str, np.ndarray]:
    """One epoch through a DataLoader; every item's spec, patch, budget and pool-thread count."""
    sampler = RandomSampler(stacks, 24, N, seed=7)
    dataset = PatchDataset(stacks, sampler, transform=with_threads, return_spec=True, **kw)
    loader = DataLoader(
        dataset,
        batch_size=BATCH,
        sampler=EpochSampler(dataset),
        num_workers=workers,
        multiprocessing_context=context if workers else None,
    )
    batches = list(loader)
    return {k: np.concatenate([b[k].numpy() for b in batches]) for k in ("spec", "input", "threads", "pool_threads")}


def _check_patches(out: dict[str, np.ndarray], data: np.ndarray) -> None:
    assert len(out["spec"]) == N
    for (_, sample, y, x, h, w), patch in zip(out["spec"], out["input"], strict=True):
        np.testing.assert_array_equal(patch[0], data[sample, y : y + h, x : x + w].astype(np.float32))


@pytest.mark.parametrize("cores", [2, 4])
def test_forked_workers_decode_on_their_share_of_the_cores(
    sources, monkeypatch: pytest.MonkeyPatch, cores: int
) -> None:
    stacks, data = sources
    monkeypatch.setattr(chunked, "CPU_WORKERS", cores)  # the cores a forked worker inherits
    out = _run(stacks, 2, "fork")
    assert set(out["threads"].tolist()) == {cores // 2}
    _check_patches(out, data)
    assert decode_threads() == cores  # the main process keeps all its cores


def test_spawned_workers_decode_on_their_share_of_the_cores(sources) -> None:
    stacks, data = sources
    out = _run(stacks, 2, "spawn")
    # a spawned worker counts its cores afresh: the same affinity and environment as this process
    assert set(out["threads"].tolist()) == {max(1, chunked.CPU_WORKERS // 2)}
    _check_patches(out, data)


@pytest.mark.parametrize(("context", "threads"), [("fork", 3), ("fork", 1), ("spawn", 1)])
def test_decode_threads_overrides_the_share(
    sources, monkeypatch: pytest.MonkeyPatch, context: str, threads: int
) -> None:
    stacks, data = sources
    monkeypatch.setattr(chunked, "CPU_WORKERS", 4)  # forked workers only; spawned ones count their own
    out = _run(stacks, 2, context, decode_threads=threads)
    assert set(out["threads"].tolist()) == {threads}
    _check_patches(out, data)


def test_a_worker_with_one_decoding_thread_starts_no_pool_thread(sources, monkeypatch: pytest.MonkeyPatch) -> None:
    # Two cores, two workers: each worker decodes in its own thread alone. Before the budget, each worker
    # shared every batch's chunks over both cores, starting a pool thread: four decoding threads on two cores.
    stacks, data = sources
    monkeypatch.setattr(chunked, "CPU_WORKERS", 2)
    out = _run(stacks, 2, "fork")
    assert set(out["threads"].tolist()) == {1}
    assert set(out["pool_threads"].tolist()) == {0}
    _check_patches(out, data)
    # the same with two threads asked for: the batch's chunks are shared with a pool thread (the count can fail)
    out = _run(stacks, 2, "fork", decode_threads=2)
    assert set(out["threads"].tolist()) == {2}
    assert min(out["pool_threads"].tolist()) >= 1
    _check_patches(out, data)


def test_without_workers_the_main_process_keeps_its_cores_unless_told(sources, monkeypatch: pytest.MonkeyPatch) -> None:
    stacks, data = sources
    monkeypatch.setattr(chunked, "CPU_WORKERS", 2)
    out = _run(stacks, 0, None)
    assert set(out["threads"].tolist()) == {2}
    _check_patches(out, data)
    out = _run(stacks, 0, None, decode_threads=1)
    assert set(out["threads"].tolist()) == {1}
    assert decode_threads() == 1  # set in this process (the autouse fixture puts it back)
    _check_patches(out, data)


def test_the_budget_is_capped_by_the_cores_and_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(chunked, "CPU_WORKERS", 2)
    assert set_decode_threads(8) is None
    assert decode_threads() == 2
    assert set_decode_threads(1) == 8
    assert decode_threads() == 1
    for bad, error in ((0, ValueError), (-1, ValueError), (1.5, TypeError), (True, TypeError), ("2", TypeError)):
        with pytest.raises(error, match="decode threads must be an int >= 1 or None"):
            set_decode_threads(bad)  # type: ignore[arg-type]
    assert decode_threads() == 1  # a refused value changes nothing


def test_patch_dataset_checks_decode_threads(sources) -> None:
    stacks, _ = sources
    sampler = RandomSampler(stacks, 24, N, seed=7)
    for bad in (0, -2, True):
        with pytest.raises(ValueError, match="decode_threads must be an integer >= 1"):
            PatchDataset(stacks, sampler, decode_threads=bad)
    with pytest.raises(TypeError, match="decode_threads"):
        PatchDataset(stacks, sampler, decode_threads=2.5)  # type: ignore[arg-type]


def test_fetches_use_the_budget_not_the_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(chunked, "CPU_WORKERS", 2)
    names: set[str] = set()
    barrier = threading.Barrier(2, timeout=10)

    def both(i: int) -> int:  # the first index of each of two threads waits for the other's: both must run
        names.add(threading.current_thread().name)
        if i < 2:
            barrier.wait()
        return i

    assert chunked.fetch_concurrently(list(range(2)), both, parallel=True) == {0: 0, 1: 1}
    assert len(names) == 2
    names.clear()
    set_decode_threads(1)
    assert chunked.fetch_concurrently(list(range(16)), lambda i: names.add(threading.current_thread().name) or i) == {
        i: i for i in range(16)
    }
    assert names == {threading.current_thread().name}  # the caller alone


class _CountingCasts(np.ndarray):
    """A chunk that counts its ``astype`` calls (the batch casts a chunk not in the reader's dtype)."""

    casts = 0

    def astype(self, *args: Any, **kwargs: Any) -> Any:
        type(self).casts += 1
        return np.asarray(self).astype(*args, **kwargs)


def test_the_rounds_path_casts_each_chunk_once_not_once_per_piece() -> None:
    from lazystack.io.cache import chunk_cache_size
    from lazystack.io.chunked import FunctionChunkedReader
    from lazystack.ops.batch import extract_patches

    data = np.random.default_rng(2).integers(0, 30000, (64, 64)).astype(np.int32)
    fetched: list[tuple[int, ...]] = []

    def fetch_many(indices: Any) -> dict[tuple[int, ...], np.ndarray]:
        fetched.extend(indices)
        # stored as int32, declared int16 (values fit): each chunk must be cast to int16 before float32
        return {i: data[16 * i[0] : 16 * i[0] + 16, 16 * i[1] : 16 * i[1] + 16].view(_CountingCasts) for i in indices}

    reader = FunctionChunkedReader(data.shape, np.int16, (16, 16), "casts", fetch_many=fetch_many)
    stack = LazyImageStack(reader, "YX")
    # overlapping patches over chunk borders: 20 patches, most cut into 4 pieces, sharing 16 chunks
    corners = [(y, x) for y in (4, 12, 20, 36, 44) for x in (6, 14, 30, 40)]
    _CountingCasts.casts = 0
    with chunk_cache_size(0):
        got = extract_patches([(stack, 0, None, c, (20, 20)) for c in corners])
    for (y, x), patch in zip(corners, got, strict=True):
        np.testing.assert_array_equal(patch[0], data[y : y + 20, x : x + 20].astype(np.int16).astype(np.float32))
    pieces = sum(len(reader.chunk_grid.pieces((slice(y, y + 20), slice(x, x + 20)))) for y, x in corners)
    assert pieces > len(set(fetched))  # the test means something: more pieces than chunks
    assert _CountingCasts.casts == len(set(fetched)) == len(fetched)  # one cast per chunk of the round
