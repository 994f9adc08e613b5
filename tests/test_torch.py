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
from lazystack.torch import EpochSampler, PatchDataset  # noqa: E402

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


def test_persistent_workers_follow_set_epoch(sources) -> None:
    stacks, arrays = sources
    sampler = RandomSampler(stacks, 12, 8, seed=4)
    dataset = PatchDataset(stacks, sampler, return_spec=True)
    index_sampler = EpochSampler(dataset)
    loader = _epoch(dataset, index_sampler, 2, "fork", persistent_workers=True)
    first = _collect(loader)
    index_sampler.set_epoch(1)
    second = _collect(loader)
    assert first[0] == _expected(sampler, arrays, 0, list(range(8)))[0]
    assert second[0] == _expected(sampler, arrays, 1, list(range(8)))[0]
    assert first[0] != second[0]
    assert second[1].tobytes() == _expected(sampler, arrays, 1, list(range(8)))[1].tobytes()


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
