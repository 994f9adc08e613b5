"""lazystack.torch: an epoch is the same specs and patches for any workers, start method and DDP split.

The reference is the sampler's specs computed in this process and numpy
slicing of the arrays the stacks were written from.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from torch.utils.data import DataLoader  # noqa: E402

from lazystack import ChannelIndexError, LazyImageStack, ShapeMismatchError, load_tiffs, load_zarrs  # noqa: E402
from lazystack.sampling import GridSampler, PatchSpec, RandomSampler, read_manifest, write_manifest  # noqa: E402
from lazystack.torch import ChunkLocalSampler, EpochSampler, PatchDataset  # noqa: E402

N = 18  # patches per epoch
BATCH = 4


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[LazyImageStack], list[np.ndarray]]:
    import tifffile
    import zarr

    root = tmp_path_factory.mktemp("torch")
    rng = np.random.default_rng(3)
    a = rng.integers(0, 4000, (2, 1, 40, 48), dtype=np.uint16)
    b = rng.integers(0, 4000, (1, 1, 33, 50), dtype=np.uint16)
    z = zarr.create_array(str(root / "a.zarr"), shape=a.shape, chunks=(1, 1, 16, 16), dtype=a.dtype)
    z[:] = a
    tifffile.imwrite(root / "b.tif", b[0, 0], tile=(16, 16))
    stacks = load_zarrs(str(root / "a.zarr"), "SCYX") + load_tiffs(str(root / "b.tif"), "YX")
    return stacks, [a, b]


def _reference(arrays: list[np.ndarray], spec: PatchSpec) -> np.ndarray:
    region = tuple(slice(c, c + n) for c, n in zip(spec.coords, spec.patch_size, strict=True))
    return arrays[spec.stack][(spec.sample, slice(None), *region)].astype(np.float32)


def _epoch(dataset: PatchDataset, sampler: EpochSampler, workers: int, context: str | None = None, **kw: object):
    loader = DataLoader(
        dataset,
        batch_size=BATCH,
        sampler=sampler,
        num_workers=workers,
        multiprocessing_context=context if workers else None,
        **kw,
    )
    return loader


def _collect(loader: DataLoader) -> tuple[list[tuple[int, ...]], np.ndarray]:
    specs: list[tuple[int, ...]] = []
    patches = []
    for batch in loader:
        specs += [tuple(int(v) for v in row) for row in batch["spec"]]
        patches.append(batch["input"].numpy())
    return specs, np.concatenate(patches)


def _expected(sampler: RandomSampler, arrays: list[np.ndarray], epoch: int, indices: list[int]):
    specs = [sampler.spec(i, epoch) for i in indices]
    rows = [(s.stack, s.sample, *s.coords, *s.patch_size) for s in specs]
    return rows, np.stack([_reference(arrays, s) for s in specs])


@pytest.mark.filterwarnings("ignore:This DataLoader will create:UserWarning")
@pytest.mark.parametrize(
    ("workers", "context"), [(0, None), (1, "fork"), (2, "fork"), (3, "fork"), (2, "spawn"), (2, "forkserver")]
)
def test_an_epoch_is_identical_for_any_workers_and_start_method(sources, workers: int, context: str | None) -> None:
    stacks, arrays = sources
    sampler = RandomSampler(stacks, 12, N, seed=9)
    dataset = PatchDataset(stacks, sampler, return_spec=True)
    index_sampler = EpochSampler(dataset, epoch=2)
    specs, patches = _collect(_epoch(dataset, index_sampler, workers, context))
    rows, expected = _expected(sampler, arrays, 2, list(range(N)))
    assert specs == rows
    assert patches.tobytes() == expected.tobytes()


def test_two_ddp_ranks_split_the_epoch_without_changing_it(sources) -> None:
    stacks, arrays = sources
    sampler = RandomSampler(stacks, 12, N + 1, seed=9)  # odd: rank 1 is padded
    dataset = PatchDataset(stacks, sampler, return_spec=True)
    seen = {}
    for rank in (0, 1):
        index_sampler = EpochSampler(dataset, rank=rank, world_size=2, shuffle=True, seed=1, epoch=5)
        indices = [i for _, i in index_sampler]
        specs, patches = _collect(_epoch(dataset, index_sampler, 2 if rank else 0, "fork"))
        rows, expected = _expected(sampler, arrays, 5, indices)
        assert specs == rows
        assert patches.tobytes() == expected.tobytes()
        seen[rank] = indices
    assert len(seen[0]) == len(seen[1]) == (N + 2) // 2
    assert set(seen[0]) | set(seen[1]) == set(range(N + 1))


@pytest.mark.parametrize("read_ahead", [0, 2])
def test_persistent_workers_follow_set_epoch(sources, read_ahead: int) -> None:
    stacks, arrays = sources
    n = 24
    sampler = RandomSampler(stacks, 12, n, seed=4)
    dataset = PatchDataset(stacks, sampler, return_spec=True, read_ahead=read_ahead)
    index_sampler = EpochSampler(dataset)
    loader = _epoch(dataset, index_sampler, 2, "fork", persistent_workers=True)
    first = _collect(loader)
    index_sampler.set_epoch(1)
    second = _collect(loader)
    assert first[0] == _expected(sampler, arrays, 0, list(range(n)))[0]
    assert second[0] == _expected(sampler, arrays, 1, list(range(n)))[0]
    assert first[0] != second[0]
    assert second[1].tobytes() == _expected(sampler, arrays, 1, list(range(n)))[1].tobytes()
    # an iterator dropped mid-epoch (its workers' read-ahead still holding batches), then the next epoch
    index_sampler.set_epoch(2)
    it = iter(loader)
    next(it)
    del it
    index_sampler.set_epoch(3)
    third = _collect(loader)
    assert third[0] == _expected(sampler, arrays, 3, list(range(n)))[0]
    assert third[1].tobytes() == _expected(sampler, arrays, 3, list(range(n)))[1].tobytes()


def test_plain_integer_indices_use_the_dataset_epoch(sources) -> None:
    stacks, arrays = sources
    sampler = RandomSampler(stacks, 12, 6, seed=4)
    dataset = PatchDataset(stacks, sampler)
    dataset.set_epoch(3)
    item = dataset[5]
    np.testing.assert_array_equal(item["input"].numpy(), _reference(arrays, sampler.spec(5, 3)))
    assert set(item) == {"input"}


def test_paired_targets_and_masks_come_from_the_same_specs(sources) -> None:
    stacks, arrays = sources
    targets_np = [a * 3 for a in arrays]
    masks_np = [(a > 2000).astype(np.uint8) for a in arrays]
    targets = [LazyImageStack(t, "SCYX") for t in targets_np]
    masks = [LazyImageStack(m, "SCYX") for m in masks_np]
    sampler = RandomSampler(stacks, 10, 9, seed=2)
    dataset = PatchDataset(stacks, sampler, targets=targets, masks=masks)
    batch = next(iter(DataLoader(dataset, batch_size=9, sampler=EpochSampler(dataset))))
    for j in range(9):
        spec = sampler.spec(j, 0)
        np.testing.assert_array_equal(batch["input"][j].numpy(), _reference(arrays, spec))
        np.testing.assert_array_equal(batch["target"][j].numpy(), _reference(targets_np, spec))
        np.testing.assert_array_equal(batch["mask"][j].numpy(), _reference(masks_np, spec))
    with pytest.raises(ShapeMismatchError, match="target stack 1"):
        PatchDataset(stacks, sampler, targets=[targets[0], LazyImageStack(np.zeros((33, 49)), "YX")])


def test_different_channel_counts_fail_before_the_first_batch(sources) -> None:
    stacks, _ = sources
    three = LazyImageStack(np.arange(3 * 30 * 30, dtype=np.float32).reshape(3, 30, 30), "CYX")
    mixed = [stacks[0], three]
    grid = GridSampler([stacks[0]], 16)  # a sampler built without the second stack's channels
    with pytest.raises(ChannelIndexError, match="different channel counts"):
        PatchDataset(mixed, grid)
    sampler = RandomSampler(mixed, 8, 4, channels=[0])
    items = PatchDataset(mixed, sampler).__getitems__(list(range(4)))
    assert all(item["input"].shape == (1, 8, 8) for item in items)
    with pytest.raises(ChannelIndexError, match="channel 1 is out of range for stack 0"):
        PatchDataset(mixed, sampler, channels=[1])


def test_a_manifest_replays_the_same_batches(sources, tmp_path: Path) -> None:
    stacks, _ = sources
    sampler = RandomSampler(stacks, 12, N, seed=6)
    path = write_manifest(tmp_path / "epoch3.csv", sampler, stacks, epochs=[3])
    live = PatchDataset(stacks, sampler, return_spec=True)
    replay = PatchDataset(stacks, read_manifest(path, stacks), return_spec=True)
    a = _collect(_epoch(live, EpochSampler(live, epoch=3), 0))
    b = _collect(_epoch(replay, EpochSampler(replay), 2, "fork"))
    assert a[0] == b[0]
    assert a[1].tobytes() == b[1].tobytes()


def test_epoch_sampler_arguments() -> None:
    with pytest.raises(ValueError, match="rank 2 and world_size 2"):
        EpochSampler(10, rank=2, world_size=2)
    assert len(EpochSampler(5, rank=1, world_size=2, pad=False)) == 2
    assert list(EpochSampler(3, epoch=4)) == [(4, 0), (4, 1), (4, 2)]
    assert len(EpochSampler(np.int64(3))) == 3
    # regression: these raised unnamed TypeErrors, or failed only when the epoch was iterated
    with pytest.raises(TypeError, match=r"length must be an integer, got 2\.5"):
        EpochSampler(2.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="seed must be a non-negative integer, got -1"):
        EpochSampler(10, shuffle=True, seed=-1)
    with pytest.raises(ValueError, match="epoch must be a non-negative integer, got -2"):
        EpochSampler(10).set_epoch(-2)
    with pytest.raises(TypeError, match=r"world_size must be an integer, got 2\.0"):
        EpochSampler(10, world_size=2.0)  # type: ignore[arg-type]


def test_patch_dataset_arguments(sources) -> None:
    stacks, _ = sources
    sampler = RandomSampler(stacks, 12, N, seed=6)
    # regression: a float read_ahead raised an unnamed TypeError, True passed, a negative epoch failed at a batch
    with pytest.raises(TypeError, match=r"read_ahead must be an integer, got 1\.5"):
        PatchDataset(stacks, sampler, read_ahead=1.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="read_ahead must be a number of batches >= 0, got True"):
        PatchDataset(stacks, sampler, read_ahead=True)
    with pytest.raises(ValueError, match="epoch must be a non-negative integer, got -1"):
        PatchDataset(stacks, sampler, epoch=-1)
    with pytest.raises(ValueError, match="epoch must be a non-negative integer, got -1"):
        PatchDataset(stacks, sampler).set_epoch(-1)


# -- read-ahead ---------------------------------------------------------------------------------------
@pytest.mark.filterwarnings("ignore:This DataLoader will create:UserWarning")
@pytest.mark.parametrize(("workers", "context"), [(0, None), (2, "fork"), (2, "spawn")])
def test_read_ahead_gives_the_same_epoch(sources, workers: int, context: str | None) -> None:
    stacks, arrays = sources
    sampler = RandomSampler(stacks, 12, N, seed=9)
    dataset = PatchDataset(stacks, sampler, return_spec=True, read_ahead=2)
    if workers:
        dataset[0]  # the read-ahead thread runs in this process before the workers fork (or spawn)
    specs, patches = _collect(_epoch(dataset, EpochSampler(dataset, epoch=2), workers, context))
    rows, expected = _expected(sampler, arrays, 2, list(range(N)))
    assert specs == rows
    assert patches.tobytes() == expected.tobytes()
    if not workers:
        stats = dataset.read_ahead_stats()
        assert stats is not None
        # 5 batches (the last of 2): the first read when asked for, the others read ahead and taken
        assert (stats.misses, stats.hits, stats.dropped, stats.nbytes) == (1, 4, 0, 0)
    plain = PatchDataset(stacks, sampler, return_spec=True)
    assert _collect(_epoch(plain, EpochSampler(plain, epoch=2), 0))[0] == rows


def _wait_for(condition, attempts: int = 12_000) -> None:
    """Poll ``condition`` until true (a bounded number of times, about 60 s: a loaded machine; no time is asserted)."""
    import time

    for _ in range(attempts):
        if condition():
            return
        time.sleep(0.005)


def test_read_ahead_holds_at_most_its_byte_budget(sources) -> None:
    stacks, arrays = sources
    sampler = RandomSampler(stacks, 12, 64, seed=3)
    batch_bytes = BATCH * 12 * 12 * 4  # float32, one channel
    dataset = PatchDataset(stacks, sampler, read_ahead=10, read_ahead_bytes=int(2.5 * batch_bytes))
    held = []
    for b in range(0, 64, BATCH):
        items = dataset.__getitems__(list(range(b, b + BATCH)))
        if b == BATCH:  # batches are read one after the other: let the thread fill the budget once
            _wait_for(lambda: dataset.read_ahead_stats().nbytes >= 2 * batch_bytes)
        stats = dataset.read_ahead_stats()
        assert stats is not None
        held.append(stats.nbytes)
        for j, item in enumerate(items):
            np.testing.assert_array_equal(item["input"].numpy(), _reference(arrays, sampler.spec(b + j, 0)))
    stats = dataset.read_ahead_stats()
    assert stats is not None
    assert stats.max_bytes == int(2.5 * batch_bytes)
    assert stats.peak_bytes <= stats.max_bytes  # two batches ahead at most, not ten
    assert max(held) == 2 * batch_bytes
    assert stats.hits == 64 // BATCH - 1


def test_read_ahead_drops_wrong_predictions_and_stays_correct(sources) -> None:
    stacks, arrays = sources
    sampler = RandomSampler(stacks, 12, 40, seed=5)
    dataset = PatchDataset(stacks, sampler, read_ahead=3)
    order = EpochSampler(40, shuffle=True, seed=2, epoch=1).order()
    for b in range(0, 40, BATCH):  # the first batches step evenly, the rest are shuffled
        idx = list(range(b, b + BATCH)) if b < 12 else order[b : b + BATCH]
        for i, item in zip(idx, dataset.__getitems__(idx), strict=True):
            np.testing.assert_array_equal(item["input"].numpy(), _reference(arrays, sampler.spec(i, 0)))
    stats = dataset.read_ahead_stats()
    assert stats is not None
    assert stats.hits == 2
    assert stats.dropped >= 1
    with pytest.raises(ValueError, match="read_ahead must be"):
        PatchDataset(stacks, sampler, read_ahead=-1)
    with pytest.raises(ValueError, match="read_ahead_bytes"):
        PatchDataset(stacks, sampler, read_ahead_bytes="lots")


# -- chunk-local sampling -----------------------------------------------------------------------------
def test_chunk_local_patches_are_correct_and_share_chunks(tmp_path: Path) -> None:
    import zarr

    data = np.random.default_rng(1).integers(0, 60000, (4, 512, 512), dtype=np.uint16)
    z = zarr.create_array(str(tmp_path / "c.zarr"), shape=data.shape, chunks=(1, 128, 128), dtype=data.dtype)
    z[:] = data
    stacks = load_zarrs(str(tmp_path / "c.zarr"), "TYX")
    base = RandomSampler(stacks, 32, 640, seed=1)
    local = ChunkLocalSampler(base, stacks, per_chunk=8, seed=2)
    assert local.windows == [(128, 128)]
    dataset = PatchDataset(stacks, local, return_spec=True)

    def chunks_of(spec: PatchSpec) -> set[tuple[int, int, int]]:
        (y, x), (h, w) = spec.coords, spec.patch_size
        return {
            (spec.sample, a, b)
            for a in range(y // 128, (y + h - 1) // 128 + 1)
            for b in range(x // 128, (x + w - 1) // 128 + 1)
        }

    per_batch = {"random": [], "local": []}
    for name, sampler in (("random", base), ("local", local)):
        for b in range(0, 640, 32):
            specs = [sampler.spec(i, 0) for i in range(b, b + 32)]
            per_batch[name].append(len(set().union(*map(chunks_of, specs))))
    # each group of 8 touches its anchor's chunks: at most 4 groups x 4 chunks a batch, as many as 4 patches
    assert max(per_batch["local"]) <= 16
    # expected about 6 distinct chunks a batch against about 34 (4 groups of ~1.5 chunks; 32 patches of ~1.5 of 64)
    assert np.mean(per_batch["local"]) * 4 < np.mean(per_batch["random"])
    for g in range(0, 640, 8):
        anchor = local.spec(g)
        assert anchor == base.spec(g)
        assert all(chunks_of(local.spec(i)) == chunks_of(anchor) for i in range(g, g + 8))  # its cell's chunks
    items = dataset.__getitems__([(0, i) for i in range(64)])
    for item in items:
        _, t, y, x, h, w = (int(v) for v in item["spec"])
        np.testing.assert_array_equal(item["input"].numpy()[0], data[t, y : y + h, x : x + w].astype(np.float32))


def test_chunk_local_positions_still_cover_the_image_uniformly() -> None:
    stack = LazyImageStack(np.zeros((1, 1024, 1024), np.uint8), "SYX")
    n = 24_000
    base = RandomSampler([stack], 64, n, seed=7)
    local = ChunkLocalSampler(base, [stack], per_chunk=8, window=256)
    counts = {}
    for name, sampler in (("random", base), ("local", local)):
        corners = np.array([sampler.spec(i, 0).coords for i in range(n)])  # uniform over [0, 961) for random
        hist, _, _ = np.histogram2d(corners[:, 0], corners[:, 1], bins=4, range=[[0, 961], [0, 961]])
        counts[name] = hist / hist.mean()
    # every 240x240 cell of corners gets its share (1,500 expected; groups of 8 spread wider than single
    # draws, sd about 7 % against 2.6 %); a design favouring chunk borders measured 0.56-1.33 over 8x8 cells
    assert np.abs(counts["random"] - 1).max() < 0.1
    assert np.abs(counts["local"] - 1).max() < 0.25
    with pytest.raises(ValueError, match="per_chunk must be"):
        ChunkLocalSampler(base, [stack], per_chunk=0, window=256)
    with pytest.raises(ValueError, match="give ChunkLocalSampler a window"):
        ChunkLocalSampler(base, [stack])


def test_read_ahead_serves_nothing_read_with_a_replaced_sampler(sources) -> None:
    # regression: a batch read ahead with the old sampler was served after dataset.sampler was replaced
    stacks, arrays = sources
    old, new = RandomSampler(stacks, 8, 40, seed=1), RandomSampler(stacks, 12, 40, seed=2)
    dataset = PatchDataset(stacks, old, read_ahead=2)
    dataset.__getitems__([0, 1, 2, 3])
    dataset.__getitems__([4, 5, 6, 7])
    _wait_for(lambda: dataset.read_ahead_stats().nbytes == 2 * 4 * 8 * 8 * 4)  # two batches held
    dataset.sampler = new
    for b in (8, 12):
        for i, item in zip(range(b, b + 4), dataset.__getitems__(list(range(b, b + 4))), strict=True):
            np.testing.assert_array_equal(item["input"].numpy(), _reference(arrays, new.spec(i, 0)))
    stats = dataset.read_ahead_stats()
    assert stats is not None
    assert stats.dropped >= 2


def test_read_ahead_keeps_its_budget_when_batches_grow(sources) -> None:
    # regression: a batch read ahead was reserved the last batch's bytes and kept whatever it took
    # (a budget of 768 bytes held 49,152)
    from lazystack.sampling import Sampler

    stacks, arrays = sources

    class Growing(Sampler):
        def __len__(self) -> int:
            return 24

        def spec(self, index: int, epoch: int = 0) -> PatchSpec:
            p = 4 if index < 4 else 16
            return PatchSpec(0, index % 2, None, (index, index), (p, p))

    small = 4 * 4 * 4 * 4
    dataset = PatchDataset(stacks, Growing(), read_ahead=4, read_ahead_bytes=3 * small)
    dataset.__getitems__([0, 1, 2, 3])
    _wait_for(lambda: dataset.read_ahead_stats().dropped > 0 or dataset.read_ahead_stats().nbytes > 3 * small)
    stats = dataset.read_ahead_stats()
    assert stats is not None
    assert stats.nbytes <= stats.max_bytes
    assert stats.peak_bytes <= stats.max_bytes
    for b in range(4, 24, 4):
        for i, item in zip(range(b, b + 4), dataset.__getitems__(list(range(b, b + 4))), strict=True):
            np.testing.assert_array_equal(item["input"].numpy(), _reference(arrays, Growing().spec(i)))
        stats = dataset.read_ahead_stats()
        assert stats is not None
        assert stats.peak_bytes <= stats.max_bytes


def test_a_failed_read_ahead_is_read_again_by_the_caller(sources) -> None:
    # regression: an error raised only in the read-ahead thread failed the batch; now it is read again here,
    # and an error of the source itself still surfaces, from the caller's read
    import threading

    from lazystack.sampling import Sampler

    stacks, arrays = sources
    base = RandomSampler(stacks, 8, 40, seed=4)

    class ThreadShy(Sampler):
        def __init__(self, broken: bool) -> None:
            self.broken = broken

        def __len__(self) -> int:
            return 40

        def spec(self, index: int, epoch: int = 0) -> PatchSpec:
            if index >= 8 and (self.broken or threading.current_thread() is not threading.main_thread()):
                raise RuntimeError(f"spec {index} cannot be made here")
            return base.spec(index, epoch)

    dataset = PatchDataset(stacks, ThreadShy(broken=False), read_ahead=2)
    for b in range(0, 40, 4):
        for i, item in zip(range(b, b + 4), dataset.__getitems__(list(range(b, b + 4))), strict=True):
            np.testing.assert_array_equal(item["input"].numpy(), _reference(arrays, base.spec(i, 0)))
    broken = PatchDataset(stacks, ThreadShy(broken=True), read_ahead=2)
    broken.__getitems__([0, 1, 2, 3])
    broken.__getitems__([4, 5, 6, 7])
    with pytest.raises(RuntimeError, match="spec 8 cannot be made here"):
        broken.__getitems__([8, 9, 10, 11])


def test_interpreter_exit_waits_for_one_read_ahead_batch_at_most(tmp_path: Path) -> None:
    # regression: the read-ahead queued all its predicted batches on the executor, and interpreter exit
    # (which joins the executor's thread) read every one of them
    import os
    import subprocess
    import sys

    log = tmp_path / "reads.log"
    script = f"""
import threading, time
import numpy as np
from lazystack import LazyImageStack
from lazystack.sampling import PatchSpec, Sampler
from lazystack.torch import PatchDataset

class Slow(Sampler):
    def __len__(self):
        return 64

    def spec(self, index, epoch=0):
        if threading.current_thread() is not threading.main_thread() and index % 4 == 0:
            with open({str(log)!r}, "a") as f:
                f.write(f"{{index}}\\n")
            time.sleep(0.3)
        return PatchSpec(0, 0, None, (0, 0), (4, 4))

dataset = PatchDataset([LazyImageStack(np.zeros((1, 8, 8), np.uint8), "SYX")], Slow(), read_ahead=5)
dataset.__getitems__([0, 1, 2, 3])
"""
    path = os.pathsep.join([str(Path(__file__).parents[1]), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "PYTHONPATH": path}
    subprocess.run([sys.executable, "-c", script], check=True, env=env, timeout=120)
    started = log.read_text().split() if log.exists() else []
    assert len(started) <= 1, started  # the batch being read when the interpreter exits, nothing queued after it


def test_chunk_local_sampler_on_mixed_chunk_shapes_small_stacks_and_3d(tmp_path: Path) -> None:
    import zarr

    rng = np.random.default_rng(8)
    arrays, stacks = [], []
    for name, shape, chunks in (
        ("a", (2, 64, 48), (1, 16, 16)),
        ("b", (1, 40, 64), (1, 32, 8)),
        ("c", (3, 20, 12), (1, 32, 32)),  # smaller than one chunk
    ):
        data = rng.integers(0, 1000, shape, dtype=np.uint16)
        z = zarr.create_array(str(tmp_path / f"{name}.zarr"), shape=shape, chunks=chunks, dtype=data.dtype)
        z[:] = data
        arrays.append(data)
        stacks += load_zarrs(str(tmp_path / f"{name}.zarr"), "SYX")
    base = RandomSampler(stacks, (10, 6), 96, seed=3)
    local = ChunkLocalSampler(base, stacks, per_chunk=4, seed=5)
    assert local.windows == [(16, 16), (32, 8), (32, 32)]
    assert ChunkLocalSampler(base, stacks, per_chunk=1).epoch_specs(2) == base.epoch_specs(2)
    for epoch in (0, 1):
        for i in range(96):
            spec, anchor = local.spec(i, epoch), base.spec(i - i % 4, epoch)
            shape = arrays[spec.stack].shape[1:]
            assert (spec.stack, spec.sample, spec.patch_size) == (anchor.stack, anchor.sample, anchor.patch_size)
            assert all(0 <= c <= n - p for c, n, p in zip(spec.coords, shape, spec.patch_size, strict=True))
            for c, a, p, w in zip(spec.coords, anchor.coords, spec.patch_size, local.windows[spec.stack], strict=True):
                # the same windows as the anchor at both ends: the group's patches touch the anchor's chunks
                assert (c // w, (c + p - 1) // w) == (a // w, (a + p - 1) // w)
    dataset = PatchDataset(stacks, local, return_spec=True, read_ahead=1)
    for b in range(0, 96, 8):
        for item in dataset.__getitems__([(1, i) for i in range(b, b + 8)]):
            k, t, y, x, h, w = (int(v) for v in item["spec"])
            np.testing.assert_array_equal(item["input"].numpy()[0], arrays[k][t, y : y + h, x : x + w])

    # 3-D: a window per spatial dim
    vol = LazyImageStack(rng.integers(0, 9, (1, 12, 40, 40), dtype=np.uint8), "SZYX")
    base3 = RandomSampler([vol], (4, 8, 8), 64, seed=1)
    local3 = ChunkLocalSampler(base3, [vol], per_chunk=8, window=np.array([6, 16, 16]))
    for i in range(64):
        spec, anchor = local3.spec(i), base3.spec(i - i % 8)
        for c, a, p, w in zip(spec.coords, anchor.coords, spec.patch_size, (6, 16, 16), strict=True):
            assert (c // w, (c + p - 1) // w) == (a // w, (a + p - 1) // w)


def test_chunk_local_sampler_arguments_are_checked() -> None:
    # regression: numpy or float windows raised a bare TypeError ("object is not iterable"), a negative seed
    # failed at the first spec, per_chunk=True passed, and stacks other than the base's failed with an
    # IndexError at some spec
    stack = LazyImageStack(np.zeros((1, 64, 64), np.uint8), "SYX")
    base = RandomSampler([stack], 8, 32, seed=1)
    assert ChunkLocalSampler(base, [stack], window=np.int64(16)).windows == [(16, 16)]
    assert ChunkLocalSampler(base, [stack], window=np.array([16, 8])).windows == [(16, 8)]
    for window in (2.5, "8", (8,), (8, 0), None):
        with pytest.raises(ValueError, match=r"window|give ChunkLocalSampler a window") as info:
            ChunkLocalSampler(base, [stack], window=window)
        assert window is None or repr(window) in str(info.value)
    with pytest.raises(ValueError, match=r"per_chunk must be an integer >= 1 .*True"):
        ChunkLocalSampler(base, [stack], per_chunk=True, window=8)
    with pytest.raises(TypeError, match=r"per_chunk must be an integer, got 2\.0"):
        ChunkLocalSampler(base, [stack], per_chunk=2.0, window=8)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="seed must be a non-negative integer, got -1"):
        ChunkLocalSampler(base, [stack], seed=-1, window=8)
    two = RandomSampler([stack, stack], 8, 32, seed=1)
    with pytest.raises(ValueError, match="base sampler was built over 2"):
        ChunkLocalSampler(two, [stack], window=8)


def test_read_ahead_predicts_a_workers_batches_of_a_ddp_rank(sources, monkeypatch: pytest.MonkeyPatch) -> None:
    # worker 1 of 2, rank 1 of 2: its batches are every other batch of the rank's every-other index
    from types import SimpleNamespace

    import torch.utils.data

    stacks, arrays = sources
    sampler = RandomSampler(stacks, 8, 80, seed=6)
    dataset = PatchDataset(stacks, sampler, read_ahead=2)
    share = list(EpochSampler(80, rank=1, world_size=2, epoch=3))
    batches = [share[b : b + BATCH] for b in range(0, len(share), BATCH)][1::2]
    monkeypatch.setattr(torch.utils.data, "get_worker_info", lambda: SimpleNamespace(num_workers=2, id=1))
    for batch in batches:
        for (epoch, i), item in zip(batch, dataset.__getitems__(batch), strict=True):
            np.testing.assert_array_equal(item["input"].numpy(), _reference(arrays, sampler.spec(i, epoch)))
    stats = dataset.read_ahead_stats()
    assert stats is not None
    assert (stats.misses, stats.hits, stats.dropped) == (1, len(batches) - 1, 0)


@pytest.mark.filterwarnings("ignore:This DataLoader will create:UserWarning")
def test_fork_while_the_parents_read_ahead_is_mid_read(sources) -> None:
    # the parent's read-ahead thread is inside a read (blocked) when the DataLoader forks its workers:
    # each child starts its own read-ahead and never waits on the parent's thread or its lock
    import os
    import threading

    from lazystack.sampling import Sampler

    stacks, arrays = sources
    base = RandomSampler(stacks, 12, N, seed=9)
    parent, release, blocked = os.getpid(), threading.Event(), threading.Event()

    class BlocksInParentThread(Sampler):
        def __len__(self) -> int:
            return N

        def spec(self, index: int, epoch: int = 0) -> PatchSpec:
            if os.getpid() == parent and threading.current_thread() is not threading.main_thread():
                blocked.set()
                release.wait(60)
            return base.spec(index, epoch)

    dataset = PatchDataset(stacks, BlocksInParentThread(), return_spec=True, read_ahead=2)
    dataset.__getitems__([(2, 0), (2, 1)])  # the thread starts reading the predicted next batch, and blocks
    assert blocked.wait(60)
    try:
        specs, patches = _collect(_epoch(dataset, EpochSampler(dataset, epoch=2), 2, "fork"))
    finally:
        release.set()
    rows, expected = _expected(base, arrays, 2, list(range(N)))
    assert specs == rows
    assert patches.tobytes() == expected.tobytes()


@pytest.mark.parametrize(("patch", "window"), [(20, 16), (40, 16), (16, 16), (5, 16)])
def test_chunk_local_groups_touch_the_anchors_chunks_when_patches_exceed_a_chunk(patch: int, window: int) -> None:
    # regression: with a patch larger than the window the whole window was one cell, so a group's patches
    # ended in different chunks (a patch of 20 over windows of 16: up to 3 chunks a dim instead of the anchor's)
    stack = LazyImageStack(np.zeros((1, 200, 200), np.uint8), "SYX")
    base = RandomSampler([stack], patch, 4000, seed=2)
    local = ChunkLocalSampler(base, [stack], per_chunk=8, window=window)
    corners = []
    for i in range(4000):
        spec, anchor = local.spec(i), base.spec(i - i % 8)
        corners.append(spec.coords)
        for c, a in zip(spec.coords, anchor.coords, strict=True):
            assert (c // window, (c + patch - 1) // window) == (a // window, (a + patch - 1) // window)
    # the cells still split the valid corners: every corner reachable, none outside
    assert {c for xy in corners for c in xy} == set(range(200 - patch + 1))


def test_a_read_ahead_failing_after_its_read_still_hands_the_batch_over(
    sources, monkeypatch: pytest.MonkeyPatch
) -> None:
    # regression: an error in the thread after a batch was read (settling its bytes, starting the next)
    # left its future unset, and the caller waiting for the batch hung
    import threading

    import lazystack.torch as lt

    stacks, arrays = sources
    sampler = RandomSampler(stacks, 8, 40, seed=7)
    dataset = PatchDataset(stacks, sampler, read_ahead=1)
    original = lt._ReadAhead._start_next

    def start_next(self: lt._ReadAhead) -> None:
        if threading.current_thread().name.startswith("lazystack-read-ahead"):
            raise ValueError("injected failure in the read-ahead thread")
        original(self)

    monkeypatch.setattr(lt._ReadAhead, "_start_next", start_next)
    out: list[object] = []
    worker = threading.Thread(
        target=lambda: out.extend(dataset.__getitems__(list(range(b, b + 4))) for b in range(0, 16, 4)), daemon=True
    )
    worker.start()
    worker.join(120)  # a bound on a hang, not a speed check
    assert not worker.is_alive(), "a batch read ahead was never handed over"
    for i, item in zip(range(16), [it for batch in out for it in batch], strict=True):
        np.testing.assert_array_equal(item["input"].numpy(), _reference(arrays, sampler.spec(i, 0)))


@pytest.mark.filterwarnings("ignore:This DataLoader will create:UserWarning")
@pytest.mark.parametrize(("workers", "context"), [(0, None), (3, "fork"), (2, "spawn")])
def test_chunk_local_epochs_are_the_same_in_any_worker(sources, workers: int, context: str | None) -> None:
    stacks, arrays = sources
    base = RandomSampler(stacks, 12, N, seed=9)
    local = ChunkLocalSampler(base, stacks, per_chunk=3, seed=4, window=16)
    local.spec(5, 1)  # a memo of some group in this process, pickled along for spawn
    dataset = PatchDataset(stacks, local, return_spec=True, read_ahead=1)
    specs, patches = _collect(_epoch(dataset, EpochSampler(dataset, epoch=1), workers, context))
    rows, expected = _expected(local, arrays, 1, list(range(N)))
    assert specs == rows
    assert patches.tobytes() == expected.tobytes()
