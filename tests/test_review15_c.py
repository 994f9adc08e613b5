"""Session 15, reviewer revC: an independent review of torch15 (EpochSampler generations, Stitcher tensor outputs).

Each test failed on the merge of torch15 before its fix (or is a strict xfail naming why it is left).
References are NumPy slicing.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

import numpy as np
import pytest

from lazystack import LazyImageStack, LazyStackError, RandomSampler

torch = pytest.importorskip("torch")

from torch.utils.data import DataLoader  # noqa: E402

from lazystack.torch import EpochSampler, PatchDataset  # noqa: E402

IMAGE = np.arange(2 * 24 * 32, dtype=np.float32).reshape(2, 24, 32)


def _patches(sampler: RandomSampler, epoch: int = 0) -> np.ndarray:
    """The sampler's patches by NumPy slicing (the reference)."""
    specs = sampler.epoch_specs(epoch)
    return np.stack([IMAGE[s.sample, s.coords[0] : s.coords[0] + 8, s.coords[1] : s.coords[1] + 8] for s in specs])


def _double(item: dict) -> dict:
    return {"input": item["input"] * 2}


def test_a_transform_assigned_mid_epoch_without_workers_applies_at_once() -> None:
    """num_workers=0 and a transform changed in the middle of an epoch (an augmentation schedule stepped by a
    callback, a hook run after the loader fetched its first batch): the next batches were refused with a
    LazyStackError although they index the same patches and the new transform is seen at once (it always was)."""
    stacks = [LazyImageStack(IMAGE, "SYX")]
    sampler = RandomSampler(stacks, 8, 6, seed=1)
    dataset = PatchDataset(stacks, sampler)
    loader = DataLoader(dataset, sampler=EpochSampler(dataset), batch_size=2)  # type: ignore[arg-type]
    batches = iter(loader)
    first = next(batches)["input"].numpy()[:, 0]
    dataset.transform = _double
    rest = torch.cat([b["input"] for b in batches]).numpy()[:, 0]
    expected = _patches(sampler)
    np.testing.assert_array_equal(first, expected[:2])
    np.testing.assert_array_equal(rest, expected[2:] * 2)


def test_a_copy_with_another_transform_reads_a_shared_epoch_samplers_pairs() -> None:
    """Test-time augmentation: a copy of the dataset with another transform, read in the same order as the dataset
    through one EpochSampler. The copy keeps the dataset's identity, so its pairs were refused as 'drawn before the
    sampler was replaced'."""
    stacks = [LazyImageStack(IMAGE, "SYX")]
    sampler = RandomSampler(stacks, 8, 6, seed=1)
    dataset = PatchDataset(stacks, sampler)
    flipped = copy.copy(dataset)
    flipped.transform = _double
    order = EpochSampler(dataset)
    got = torch.stack([flipped[k]["input"] for k in order]).numpy()[:, 0]
    np.testing.assert_array_equal(got, _patches(sampler) * 2)


def test_a_sampler_replaced_mid_epoch_is_still_refused_in_process() -> None:
    """The refusal the fix above keeps: the rest of an epoch drawn from the old sampler's order is not read from a
    new sampler (its length and patches are others), and the next epoch reads the new one."""
    stacks = [LazyImageStack(IMAGE, "SYX")]
    dataset = PatchDataset(stacks, RandomSampler(stacks, 8, 6, seed=1))
    order = EpochSampler(dataset)
    keys = iter(order)
    dataset[[next(keys)]]
    new = dataset.sampler = RandomSampler(stacks, 8, 6, seed=2)
    dataset.transform = _double  # a later transform does not hide the earlier replacement
    with pytest.raises(LazyStackError, match=r"before this PatchDataset's sampler \(or stacks, targets, masks\)"):
        dataset[[next(keys)]]
    got = torch.stack([dataset[k]["input"] for k in order]).numpy()[:, 0]
    np.testing.assert_array_equal(got, _patches(new) * 2)


def _stitch_into(out: object) -> object:
    """Stitch IMAGE's grid tiles (torch predictions) into ``out``; the Stitcher's output."""
    from lazystack import GridSampler, Stitcher

    stack = LazyImageStack(IMAGE, "SYX")
    grid = GridSampler([stack], 8, overlap=2)
    stitcher = Stitcher(grid, n_channels=1, out=[out])
    for i in range(len(grid)):
        stitcher.add(i, torch.from_numpy(stack.extract_patch(*grid.spec(i)[1:])))
    return stitcher.outputs[0]


def test_stitcher_refuses_a_tensor_out_whose_elements_share_memory() -> None:
    """out=torch.empty(1, ...).expand(n, ...) (stride 0): its NumPy view is writable, so each sample's tiles
    overwrote the previous sample's and every sample held the last one: silently wrong. torch itself refuses
    in-place writes into such a tensor; the Stitcher now does, before any tile, naming the strides."""
    shared = torch.zeros(1, 1, 24, 32).expand(2, 1, 24, 32)
    with pytest.raises(TypeError, match=r"out\[0\] is a torch tensor .*share memory \(strides \(0, "):
        _stitch_into(shared)


@pytest.mark.parametrize("kind", ["transposed", "view of a larger tensor", "stepped", "shared memory", "grad"])
def test_stitcher_writes_in_place_into_strided_tensor_outputs(kind: str) -> None:
    """What held up: tensors that are not contiguous or do not own their storage are written in place."""
    base = torch.zeros(4, 1, 32, 24)
    out = {
        "transposed": base[:2].transpose(2, 3),
        "view of a larger tensor": torch.zeros(3, 1, 24, 32)[1:],
        "stepped": torch.zeros(4, 1, 24, 32)[::2],
        "shared memory": torch.zeros(2, 1, 24, 32).share_memory_(),
        "grad": torch.zeros(2, 1, 24, 32, requires_grad=True),
    }[kind]
    got = _stitch_into(out)
    assert got is out
    np.testing.assert_array_equal(out.detach().numpy(), IMAGE[:, None])


_RUN = """
import pickle, sys
import numpy as np
from lazystack import LazyImageStack, RandomSampler
from lazystack.torch import EpochSampler, PatchDataset

image = np.arange(2 * 24 * 32, dtype=np.float32).reshape(2, 24, 32)
stacks = [LazyImageStack(image, "SYX")]
dataset = PatchDataset(stacks, RandomSampler(stacks, 8, 6, seed=1))
import os
print(os.getpid())
if sys.argv[1] == "save":
    dataset.transform = None  # a setting assigned before the checkpoint (a new generation)
    with open(sys.argv[2], "wb") as f:
        pickle.dump(EpochSampler(dataset), f)
else:
    with open(sys.argv[2], "rb") as f:
        order = pickle.load(f)
    got = np.stack([dataset[k]["input"].numpy()[0] for k in order])
    want = np.stack([image[s.sample, s.coords[0]:s.coords[0] + 8, s.coords[1]:s.coords[1] + 8]
                     for s in dataset.sampler.epoch_specs(0)])
    print(bool(np.array_equal(got, want)))
"""


def test_a_restarted_run_with_the_same_pid_reads_a_restored_epoch_sampler(tmp_path: Path) -> None:
    """A job restarted in a container has the same pid (1 here, in a new pid namespace), so its first dataset had
    the identity (pid, 0) of the previous run's: an EpochSampler restored from the checkpoint (pickled with its
    dataset, one generation ahead) passed for the new dataset's and its pairs were refused as 'drawn after this
    PatchDataset's sampler was replaced ... persistent DataLoader workers'. The identity is now random."""
    import shutil
    import subprocess
    import sys

    unshare = shutil.which("unshare")
    if unshare is None:
        pytest.skip("needs unshare (util-linux) to run two processes with the same pid")
    cmd = [unshare, "-Urpf", sys.executable, "-c", _RUN]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    saved = subprocess.run(
        [*cmd, "save", str(tmp_path / "s.pkl")], capture_output=True, text=True, env=env, timeout=900
    )
    if saved.returncode != 0 and "unshare" in saved.stderr:
        pytest.skip(f"no user / pid namespace here ({saved.stderr.strip()})")
    assert saved.returncode == 0, saved.stderr
    loaded = subprocess.run(
        [*cmd, "load", str(tmp_path / "s.pkl")], capture_output=True, text=True, env=env, timeout=900
    )
    assert loaded.returncode == 0, loaded.stderr[-800:]
    assert saved.stdout.split()[0] == loaded.stdout.split()[0] == "1"
    assert loaded.stdout.split()[1] == "True"


class _MetaTensor(torch.Tensor):
    """A tensor subclass from outside torch (as MONAI's MetaTensor, which CAREamics-style pipelines pass around)."""


def test_stitcher_writes_into_a_tensor_subclass_out_in_place() -> None:
    """A torch.Tensor subclass defined outside torch (type(out).__module__ is not torch's) was not taken for a tensor:
    the first tile failed inside torch ('can't assign a numpy.ndarray to a torch.FloatTensor')."""
    out = torch.zeros(2, 1, 24, 32).as_subclass(_MetaTensor)
    got = _stitch_into(out)
    assert got is out
    np.testing.assert_array_equal(out.detach().numpy(), IMAGE[:, None])
