"""Session 15, helper torch15: the training pipeline's left-alone list of session 14, then a review as an ML user.

Each test failed on main (1500435) before its fix. References are NumPy slicing and NumPy's own casting.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lazystack import GridSampler, LazyImageStack, LazyStackError, RandomSampler, Stitcher

torch = pytest.importorskip("torch")

from torch.utils.data import DataLoader  # noqa: E402

from lazystack.torch import EpochSampler, PatchDataset  # noqa: E402

IMAGE = np.arange(2 * 24 * 32, dtype=np.float32).reshape(2, 24, 32)


def _patches(sampler: RandomSampler, epoch: int = 0) -> np.ndarray:
    """The sampler's patches by NumPy slicing (the reference)."""
    specs = sampler.epoch_specs(epoch)
    return np.stack([IMAGE[s.sample, s.coords[0] : s.coords[0] + 8, s.coords[1] : s.coords[1] + 8] for s in specs])


# -- 1. a replaced sampler and the indices of an EpochSampler ---------------------------------------------------------
def test_indices_drawn_for_a_replaced_sampler_are_refused_and_a_new_loader_serves_the_new_one() -> None:
    """Persistent workers served the old sampler's patches for the new sampler's epoch; the workers now refuse the
    indices (naming what to do), and a new DataLoader, as the message says, serves the new sampler's patches."""
    stacks = [LazyImageStack(IMAGE, "SYX")]
    dataset = PatchDataset(stacks, RandomSampler(stacks, 8, 6, seed=1))
    kwargs = {"batch_size": 3, "num_workers": 2, "persistent_workers": True}
    loader = DataLoader(dataset, sampler=EpochSampler(dataset), **kwargs)  # type: ignore[arg-type]
    np.testing.assert_array_equal(torch.cat([b["input"] for b in loader]).numpy()[:, 0], _patches(dataset.sampler))
    new = dataset.sampler = RandomSampler(stacks, 8, 6, seed=2)
    with pytest.raises(LazyStackError, match=r"(?s)persistent DataLoader workers .*Make a new DataLoader"):
        next(iter(loader))
    loader = DataLoader(dataset, sampler=EpochSampler(dataset), **kwargs)  # type: ignore[arg-type]
    np.testing.assert_array_equal(torch.cat([b["input"] for b in loader]).numpy()[:, 0], _patches(new))


def test_a_replaced_sampler_is_refused_mid_epoch_and_served_from_the_next_epoch_in_process() -> None:
    """In one process the dataset is the sampler's: replacing its sampler between epochs just works; an epoch's
    remaining indices after a replacement (its order is the old sampler's) are refused, not read with another.
    (A transform assigned mid-epoch applies at once: tests/test_review15_c.py.)"""
    stacks = [LazyImageStack(IMAGE, "SYX")]
    sampler = RandomSampler(stacks, 8, 6, seed=1)
    dataset = PatchDataset(stacks, sampler)
    epochs = EpochSampler(dataset)
    keys = iter(epochs)
    first = next(keys)
    assert first == (0, 0)  # still the documented (epoch, index) pair
    assert tuple(first) == (0, 0)
    new = dataset.sampler = RandomSampler(stacks, 8, 6, seed=2)
    with pytest.raises(
        LazyStackError, match=r"before this PatchDataset's sampler .* was replaced .*start the next epoch"
    ):
        dataset[[next(keys)]]
    got = torch.stack([dataset[k]["input"] for k in epochs]).numpy()[:, 0]
    np.testing.assert_array_equal(got, _patches(new))


def test_indices_of_another_dataset_plain_ints_and_a_subset_still_read() -> None:
    """The check is between copies of one dataset: an EpochSampler built over another dataset of the same length,
    plain integer indices (of the dataset's epoch) and torch's Subset read as before."""
    stacks = [LazyImageStack(IMAGE, "SYX")]
    sampler = RandomSampler(stacks, 8, 6, seed=1)
    dataset = PatchDataset(stacks, sampler)
    other = PatchDataset(stacks, RandomSampler(stacks, 8, 6, seed=5))
    other.sampler = other.sampler  # another generation than dataset's
    got = torch.stack([dataset[k]["input"] for k in EpochSampler(other)]).numpy()[:, 0]
    np.testing.assert_array_equal(got, _patches(sampler))
    subset = torch.utils.data.Subset(dataset, [4, 1])
    got = torch.stack([item["input"] for item in subset.__getitems__([0, 1])]).numpy()[:, 0]
    np.testing.assert_array_equal(got, _patches(sampler)[[4, 1]])


# -- 2. a torch tensor as the Stitcher's output -----------------------------------------------------------------------
def _stitch(out: object, predictions: np.ndarray, **kwargs: object) -> Stitcher:
    grid = GridSampler([LazyImageStack(predictions, "SCYX")], 12, overlap=4)
    stitcher = Stitcher(grid, 1, out=[out], **kwargs)  # type: ignore[arg-type]
    for tile in range(len(grid)):
        s = grid.epoch_specs(0, [tile])[0]
        y, x = s.coords
        stitcher.add(tile, torch.from_numpy(predictions[s.sample, :, y : y + 12, x : x + 12]))
    assert stitcher.complete
    return stitcher


@pytest.mark.parametrize(
    ("pred", "out", "casting"),
    [("float32", "float32", "same_kind"), ("float64", "float16", "same_kind"), ("float32", "int16", "unsafe")],
)
def test_stitcher_writes_into_a_cpu_tensor_in_place_as_into_a_numpy_output(pred: str, out: str, casting: str) -> None:
    """Stitcher(out=[torch.empty(...)]) failed at the first tile with torch's 'can't assign a numpy.ndarray to a
    torch.FloatTensor'. A CPU tensor is written in place, with the numpy outputs' casting rule."""
    image = (np.random.default_rng(3).random((2, 1, 20, 20)) * 300 - 20).astype(pred)
    target = torch.zeros((2, 1, 20, 20), dtype=getattr(torch, out))
    stitcher = _stitch(target, image, casting=casting)
    assert stitcher.outputs[0] is target
    expected = np.zeros((2, 1, 20, 20), out)
    np.copyto(expected, image, casting=casting)  # type: ignore[arg-type]
    np.testing.assert_array_equal(target.numpy(), expected)


def test_stitcher_refuses_tensor_outputs_it_cannot_write_before_any_tile() -> None:
    """A tensor NumPy cannot write through (another device, bfloat16) is refused when the Stitcher is made, naming
    the output and what is accepted; a cast the casting rule refuses is refused as for a numpy output."""
    grid = GridSampler([LazyImageStack(np.zeros((1, 1, 20, 20), np.float32), "SCYX")], 12, overlap=4)
    for out, match in (
        (torch.empty((1, 1, 20, 20), device="meta"), r"out\[0\] is a torch tensor of dtype torch.float32 on meta"),
        (torch.zeros((1, 1, 20, 20), dtype=torch.bfloat16), r"out\[0\] .*bfloat16.*NumPy cannot view it"),
    ):
        with pytest.raises(TypeError, match=match) as info:
            Stitcher(grid, 1, out=[out])
        assert "accepted are CPU tensors" in str(info.value)
    target = torch.zeros((1, 1, 20, 20), dtype=torch.int16)
    stitcher = Stitcher(grid, 1, out=[target])
    with pytest.raises(TypeError, match=r"float32 and out\[0\] has dtype int16: casting='same_kind' refuses"):
        stitcher.add(0, torch.ones((1, 12, 12)))
    assert not target.any()


# -- 3. complex32 predictions -----------------------------------------------------------------------------------------
@pytest.mark.filterwarnings("ignore:ComplexHalf support is experimental")
def test_stitcher_takes_complex32_predictions_as_complex64() -> None:
    """torch.complex32 predictions failed inside torch's .numpy() ('Got unsupported ScalarType ComplexHalf'). They
    are converted to complex64 (which holds every value) as bfloat16 is to float32; a real output refuses them."""
    grid = GridSampler([LazyImageStack(np.zeros((1, 1, 20, 20), np.float32), "SCYX")], 12, overlap=4)
    values = (np.arange(144).reshape(1, 12, 12) + 1j * np.arange(144)[::-1].reshape(1, 12, 12)).astype(np.complex64)
    prediction = torch.from_numpy(values).to(torch.complex32)
    stitcher = Stitcher(grid, 1, dtype=np.complex64)
    stitcher.add(0, prediction)
    expected = values.astype(np.complex64)[:, :10, :10]  # tile 0 keeps its first 10 x 10 pixels
    assert (np.abs(expected) < 2048).all()  # exact in half precision
    np.testing.assert_array_equal(stitcher.outputs[0][0, :, :10, :10], expected)
    with pytest.raises(TypeError, match=r"dtype complex64: accepted are bool, integer and float predictions"):
        Stitcher(grid, 1).add(0, prediction)


# -- 4. write_manifest's epochs / indices: no mapping, no set ---------------------------------------------------------
@pytest.mark.parametrize("value", [{0: 1}, {2, 0}, frozenset({1}), {3: 0}.keys()])
def test_write_manifest_refuses_a_mapping_or_a_set(tmp_path: Path, value: object) -> None:
    """write_manifest(epochs={0: 1}) recorded the dict's keys (epoch 0, not epoch 1); a set's order is arbitrary."""
    from lazystack.sampling.manifest import write_manifest

    stacks = [LazyImageStack(IMAGE, "SYX")]
    sampler = RandomSampler(stacks, 8, 6, seed=2)
    for name in ("epochs", "indices"):
        with pytest.raises(TypeError, match=rf"{name} must be a sequence of non-negative integers, got .*: accepted"):
            write_manifest(tmp_path / "m.csv", sampler, stacks, **{name: value})  # type: ignore[arg-type]
        assert not (tmp_path / "m.csv").exists()
    write_manifest(tmp_path / "m.csv", sampler, stacks, epochs={0: 1}.values())  # ordered: accepted


# -- 5. review: a split of the dataset (Subset, random_split, ConcatDataset) with EpochSampler ------------------------
def test_epoch_sampler_refuses_torch_subsets_and_concat_datasets_naming_what_to_do() -> None:
    """EpochSampler(Subset) / (ConcatDataset) failed only at the first batch, inside torch ('list indices must be
    integers or slices, not tuple', "'<' not supported between instances of 'tuple' and 'int'")."""
    stacks = [LazyImageStack(IMAGE, "SYX")]
    dataset = PatchDataset(stacks, RandomSampler(stacks, 8, 6, seed=1))
    part, _ = torch.utils.data.random_split(dataset, [4, 2], generator=torch.Generator().manual_seed(0))
    with pytest.raises(TypeError, match=r"Subset .*EpochSampler\(dataset, indices=subset.indices\)"):
        EpochSampler(part)
    with pytest.raises(TypeError, match=r"ConcatDataset of 2 datasets.*one PatchDataset over all the stacks"):
        EpochSampler(torch.utils.data.ConcatDataset([dataset, dataset]))
    for bad, error in (({1, 2}, TypeError), ({0: 1}, TypeError), ([1, 6], IndexError), ([True, 1], TypeError)):
        with pytest.raises(error, match=r"indices|index"):
            EpochSampler(dataset, indices=bad)  # type: ignore[arg-type]


def test_a_random_split_reaches_persistent_workers_epoch_after_epoch_and_over_ranks() -> None:
    """A training split (random_split's indices) read by persistent workers: each epoch's patches are the sampler's
    of that epoch at the split's indices (a Subset with plain indices gave epoch 0's every epoch: the workers' copies
    never see dataset.set_epoch), and two DDP ranks' shares make up the split."""
    stacks = [LazyImageStack(IMAGE, "SYX")]
    sampler = RandomSampler(stacks, 8, 6, seed=1)
    dataset = PatchDataset(stacks, sampler)
    part, _ = torch.utils.data.random_split(dataset, [4, 2], generator=torch.Generator().manual_seed(0))
    chosen = list(part.indices)
    epochs = EpochSampler(dataset, indices=chosen)
    loader = DataLoader(dataset, batch_size=2, sampler=epochs, num_workers=2, persistent_workers=True)
    for epoch in (0, 3):  # resumed at epoch 3: the same batches as an uninterrupted run's
        epochs.set_epoch(epoch)
        got = torch.cat([b["input"] for b in loader]).numpy()[:, 0]
        specs = sampler.epoch_specs(epoch, chosen)
        expected = [IMAGE[s.sample, s.coords[0] : s.coords[0] + 8, s.coords[1] : s.coords[1] + 8] for s in specs]
        np.testing.assert_array_equal(got, np.stack(expected))
    shares = [list(EpochSampler(dataset, indices=chosen, rank=r, world_size=2, shuffle=True)) for r in (0, 1)]
    assert sorted(i for share in shares for _, i in share) == sorted(chosen)
    assert len(shares[0]) == len(shares[1]) == 2


# -- 5. review: resuming from a manifest at an epoch it does not record -----------------------------------------------
def test_read_manifest_of_an_epoch_not_recorded_names_the_recorded_ones(tmp_path: Path) -> None:
    """read_manifest(epoch=3) of a file recording epochs 0 and 1 gave an empty FixedSampler: a resumed run trained on
    nothing (a DataLoader of 0 batches), without a word."""
    from lazystack.sampling.manifest import ManifestMismatchError, read_manifest, write_manifest

    stacks = [LazyImageStack(IMAGE, "SYX")]
    sampler = RandomSampler(stacks, 8, 6, seed=2)
    path = write_manifest(tmp_path / "m.csv", sampler, stacks, epochs=[0, 1])
    with pytest.raises(ManifestMismatchError, match=r"records no row of epoch 3: it records epoch\(s\) 0, 1"):
        read_manifest(path, stacks, epoch=3)
    assert read_manifest(path, stacks, epoch=1).epoch_specs(0) == sampler.epoch_specs(1)
    empty = write_manifest(tmp_path / "e.csv", sampler, stacks, indices=[])
    assert len(read_manifest(empty, stacks, epoch=0)) == 0  # a file of no rows: nothing recorded, nothing refused


# -- 5. review: the lazystack sampler or EpochSampler in the wrong DataLoader argument --------------------------------
def test_samplers_in_the_wrong_dataloader_argument_are_named() -> None:
    """DataLoader(dataset, batch_sampler=EpochSampler(dataset)) read each (epoch, index) pair as a batch of two
    indices of the dataset's epoch (index `epoch` and index `index`): a batch of two wrong patches, without a word.
    A lazystack sampler as the DataLoader's sampler= was refused without saying where it goes."""
    stacks = [LazyImageStack(IMAGE, "SYX")]
    sampler = RandomSampler(stacks, 8, 6, seed=1)
    dataset = PatchDataset(stacks, sampler)
    with pytest.raises(TypeError, match=r"one \(epoch, index\) pair \(0, 0\) as a batch.*not its batch_sampler="):
        next(iter(DataLoader(dataset, batch_sampler=EpochSampler(dataset))))
    with pytest.raises(TypeError, match=r"PatchSpec is what a lazystack sampler yields.*sampler=EpochSampler"):
        next(iter(DataLoader(dataset, sampler=sampler)))  # type: ignore[arg-type]
    got = next(iter(DataLoader(dataset, sampler=EpochSampler(dataset), batch_size=None)))["input"].numpy()[0]
    np.testing.assert_array_equal(got, _patches(sampler)[0])  # batch_size=None: one item a pair, as before


def _double_in_worker(worker_id: int) -> None:
    """A worker_init_fn that sets up its worker's copy of the dataset (a transform of its own)."""
    info = torch.utils.data.get_worker_info()
    info.dataset.transform = lambda item: {"input": item["input"] * 2}


def test_a_worker_init_fn_may_assign_to_its_workers_copy() -> None:
    """The generation counts the assignments made outside DataLoader workers: a worker_init_fn that gives its
    worker's copy a transform of its own is not taken for a replaced sampler (the indices are served, transformed)."""
    stacks = [LazyImageStack(IMAGE, "SYX")]
    sampler = RandomSampler(stacks, 8, 6, seed=1)
    dataset = PatchDataset(stacks, sampler)
    epochs = EpochSampler(dataset)
    loader = DataLoader(
        dataset, batch_size=3, sampler=epochs, num_workers=2, persistent_workers=True, worker_init_fn=_double_in_worker
    )
    for epoch in (0, 1):
        epochs.set_epoch(epoch)
        got = torch.cat([b["input"] for b in loader]).numpy()[:, 0]
        np.testing.assert_array_equal(got, _patches(sampler, epoch) * 2)
