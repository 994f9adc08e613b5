"""Session 14's fixes of session 13's left-alone list (helper fix14).

Each test fails without its fix; every reference is independent of lazystack's
readers (numpy slicing, tifffile's own reader).
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile
import zarr
from ome_files import write_multifile_ome

from lazystack import (
    GridSampler,
    LazyImageStack,
    SourceReadError,
    Stitcher,
    chunk_cache_size,
    load_tiffs,
    write_ome_zarr,
)


# -- 1. a multi-file OME-TIFF whose other file changes while a stack is open ----------------------------------------
def _rewrite_in_place(path: Path, data: np.ndarray) -> None:
    """Overwrite the pixel bytes of an uncompressed single-strip-per-plane TIFF in place (same inode, same size)."""
    with tifffile.TiffFile(path) as tif:
        offsets = [(int(p.dataoffsets[0]), int(p.databytecounts[0])) for p in tif.pages]
    with open(path, "r+b") as fh:
        for (offset, count), plane in zip(offsets, data, strict=True):
            raw = np.ascontiguousarray(plane, dtype="<u2").tobytes()
            assert len(raw) == count
            fh.seek(offset)
            fh.write(raw)
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # a coarse clock could keep the old mtime


def _own_planes(path: Path) -> np.ndarray:
    """The planes stored in ``path`` itself (``tifffile.imread`` would read the whole multi-file series)."""
    with tifffile.TiffFile(path) as tif:
        return np.stack([page.asarray() for page in tif.pages])


def test_multifile_ome_other_file_rewritten_in_place_while_open_is_detected(tmp_path: Path) -> None:
    data = write_multifile_ome(tmp_path, 3, planes=2, shape=(16, 24))
    (stack,) = load_tiffs([tmp_path / "m_0.ome.tif"], "ZYX")
    with chunk_cache_size(0):
        first = stack.extract_patch(0, None, (2, 0, 0), (1, 16, 24))  # plane 2: in m_1
        np.testing.assert_array_equal(first[0, 0], data[2])
        _rewrite_in_place(tmp_path / "m_1.ome.tif", data[2:4] + 1)
        with pytest.raises(SourceReadError, match=r"m_1\.ome\.tif.*changed since the stack was opened"):
            stack.extract_patch(0, None, (2, 0, 0), (1, 16, 24))
        # the master's planes and the third file are unchanged and still read
        np.testing.assert_array_equal(stack.extract_patch(0, None, (5, 0, 0), (1, 16, 24))[0, 0], data[5])


def test_multifile_ome_other_file_replaced_before_its_first_read_is_detected(tmp_path: Path) -> None:
    data = write_multifile_ome(tmp_path, 3, planes=2, shape=(16, 24))
    (stack,) = load_tiffs([tmp_path / "m_0.ome.tif"], "ZYX")
    replacement = tmp_path / "new.ome.tif"
    write_multifile_ome(tmp_path / "other", 3, planes=2, shape=(16, 24))
    os.replace(tmp_path / "other" / "m_2.ome.tif", replacement)
    os.replace(replacement, tmp_path / "m_2.ome.tif")  # renamed over: a new inode
    changed = r"m_2\.ome\.tif.*changed since the stack was opened"
    with chunk_cache_size(0), pytest.raises(SourceReadError, match=changed):
        stack.extract_patch(0, None, (4, 0, 0), (1, 16, 24))
    del data


def test_multifile_ome_other_file_changed_before_a_pickled_stack_is_read_is_detected(tmp_path: Path) -> None:
    write_multifile_ome(tmp_path, 2, planes=2, shape=(16, 24))
    (stack,) = load_tiffs([tmp_path / "m_0.ome.tif"], "ZYX")
    blob = pickle.dumps(stack)
    other = _own_planes(tmp_path / "m_1.ome.tif")
    _rewrite_in_place(tmp_path / "m_1.ome.tif", other + 7)
    again = pickle.loads(blob)
    changed = r"m_1\.ome\.tif.*changed since the stack was opened"
    with chunk_cache_size(0), pytest.raises(SourceReadError, match=changed):
        again.extract_patch(0, None, (3, 0, 0), (1, 16, 24))


def test_multifile_ome_reloaded_after_another_file_changed_reads_the_new_pixels_through_the_cache(
    tmp_path: Path,
) -> None:
    data = write_multifile_ome(tmp_path, 2, planes=2, shape=(16, 24))
    (stack,) = load_tiffs([tmp_path / "m_0.ome.tif"], "ZYX")
    np.testing.assert_array_equal(stack.extract_patch(0, None, (2, 0, 0), (1, 16, 24))[0, 0], data[2])  # cached
    _rewrite_in_place(tmp_path / "m_1.ome.tif", data[2:4] + 3)
    (fresh,) = load_tiffs([tmp_path / "m_0.ome.tif"], "ZYX")
    expected = _own_planes(tmp_path / "m_1.ome.tif")[0]
    np.testing.assert_array_equal(expected, data[2] + 3)
    np.testing.assert_array_equal(fresh.extract_patch(0, None, (2, 0, 0), (1, 16, 24))[0, 0], expected)
    assert fresh.data.name != stack.data.name  # no dask key shared with the old pixels either


def test_multifile_ome_unchanged_reads_equal_tifffile(tmp_path: Path) -> None:
    write_multifile_ome(tmp_path, 3, planes=2, shape=(16, 24))
    (stack,) = load_tiffs([tmp_path / "m_0.ome.tif"], "ZYX")
    expected = tifffile.imread(tmp_path / "m_0.ome.tif")
    with chunk_cache_size(0):
        got = stack.extract_patch(0, None, (0, 0, 0), (6, 16, 24))[0]
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(stack.data.compute()[0, 0], expected)
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(stack)).data.compute()[0, 0], expected)


# -- 2. the Stitcher follows NumPy's casting rule ----------------------------------------------------------------------
def _grid_and_predictions(dtype: Any, samples: int = 2) -> tuple[GridSampler, list[np.ndarray], np.ndarray]:
    image = (np.random.default_rng(3).random((samples, 1, 20, 20)) * 300 - 20).astype(dtype)  # SCYX
    grid = GridSampler([LazyImageStack(image, "SCYX")], 12, overlap=4)
    predictions = [image[s.sample, :, s.coords[0] : s.coords[0] + 12, s.coords[1] : s.coords[1] + 12] for s in grid]
    return grid, predictions, image


@pytest.mark.parametrize("target", ["numpy", "zarr", "ome-zarr"])
def test_stitcher_refuses_float_predictions_into_an_integer_output_naming_both_dtypes(
    tmp_path: Path, target: str
) -> None:
    grid, predictions, _ = _grid_and_predictions(np.float32, samples=1)
    shape = (1, 1, 20, 20)
    if target == "numpy":
        out: Any = np.zeros(shape, np.uint16)
    elif target == "zarr":
        out = zarr.create_array(store={}, shape=shape, chunks=(1, 1, 8, 8), dtype="uint16")
    else:  # the full-resolution array of an OME-Zarr image (TCYX) lazystack wrote, opened for writing
        path = write_ome_zarr(LazyImageStack(np.zeros(shape, np.uint16), "TCYX"), tmp_path / "p.ome.zarr", levels=1)
        out = zarr.open_array(f"{path}/0", mode="r+")
        assert out.shape == shape
    stitcher = Stitcher(grid, 1, out=[out])
    with pytest.raises(TypeError, match=r"float32.*uint16.*casting='same_kind'.*casting='unsafe'"):
        stitcher.add(0, predictions[0])
    assert not np.asarray(out[:]).any()  # nothing written, nothing truncated
    assert not stitcher.complete


def test_stitcher_casting_unsafe_writes_what_numpy_copyto_writes() -> None:
    grid, predictions, image = _grid_and_predictions(np.float32)
    out = np.zeros((2, 1, 20, 20), np.int16)
    stitcher = Stitcher(grid, 1, out=[out], casting="unsafe")
    stitcher.add_batch(range(len(grid)), predictions)
    expected = np.zeros_like(out)
    np.copyto(expected, image, casting="unsafe")
    np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize(
    ("pred", "out", "casting"),
    [
        ("float64", "float32", "same_kind"),
        ("int64", "float32", "same_kind"),
        ("uint8", "uint16", "safe"),
        ("bool", "uint8", "same_kind"),
        ("float32", "float32", "no"),
    ],
)
def test_stitcher_writes_the_casts_numpy_accepts(pred: str, out: str, casting: str) -> None:
    grid, predictions, image = _grid_and_predictions(np.dtype(pred))
    target = np.zeros((2, 1, 20, 20), out)
    Stitcher(grid, 1, out=[target], casting=casting).add_batch(range(len(grid)), predictions)
    np.testing.assert_array_equal(target, image.astype(out))


def test_stitcher_refuses_an_unknown_casting_naming_it() -> None:
    grid, _, _ = _grid_and_predictions(np.float32)
    for wrong in ("samekind", None, 1):
        with pytest.raises(ValueError, match=rf"casting={wrong!r}.*same_kind, unsafe"):
            Stitcher(grid, 1, casting=wrong)  # type: ignore[arg-type]


# -- 3. WholeSampleSampler over images of different sizes ------------------------------------------------------------
def _two_sizes() -> tuple[list[LazyImageStack], list[np.ndarray]]:
    rng = np.random.default_rng(5)
    arrays = [rng.integers(0, 255, (2, 24, 32), dtype=np.uint8), rng.integers(0, 255, (1, 40, 20), dtype=np.uint8)]
    return [LazyImageStack(a, "SYX") for a in arrays], arrays


def test_whole_sample_batch_mixing_sizes_names_the_shapes_and_what_to_do() -> None:
    pytest.importorskip("torch")
    from torch.utils.data import DataLoader

    from lazystack import ShapeMismatchError, WholeSampleSampler
    from lazystack.torch import EpochSampler, PatchDataset

    stacks, _ = _two_sizes()
    dataset = PatchDataset(stacks, WholeSampleSampler(stacks))
    loader = DataLoader(dataset, batch_size=3, sampler=EpochSampler(dataset))
    with pytest.raises(ShapeMismatchError, match=r"\(24, 32\).*\(40, 20\).*batch_size=1.*batch_size=None"):
        next(iter(loader))
    with pytest.raises(ShapeMismatchError, match=r"patch sizes"):
        dataset.__getitems__([1, 2])


def test_whole_sample_batches_of_one_size_and_batch_size_1_read_every_image() -> None:
    pytest.importorskip("torch")
    from torch.utils.data import DataLoader

    from lazystack import WholeSampleSampler
    from lazystack.torch import EpochSampler, PatchDataset

    stacks, arrays = _two_sizes()
    dataset = PatchDataset(stacks, WholeSampleSampler(stacks))
    expected = [arrays[0][0], arrays[0][1], arrays[1][0]]
    batches = [b["input"].numpy() for b in DataLoader(dataset, batch_size=1, sampler=EpochSampler(dataset))]
    assert len(batches) == 3
    for got, want in zip(batches, expected, strict=True):
        np.testing.assert_array_equal(got[0, 0], want.astype(np.float32))
    items = [dataset[i]["input"].numpy() for i in range(3)]  # batch_size=None reads items one by one
    for got, want in zip(items, expected, strict=True):
        np.testing.assert_array_equal(got[0], want.astype(np.float32))
    pair = dataset.__getitems__([0, 1])  # same size: batched as before
    np.testing.assert_array_equal(np.stack([p["input"].numpy()[0] for p in pair]), arrays[0].astype(np.float32))
    ragged = PatchDataset(stacks, WholeSampleSampler(stacks), ragged=True).__getitems__([1, 2])
    assert [tuple(p["input"].shape) for p in ragged] == [(1, 24, 32), (1, 40, 20)]


# -- 4. EpochSampler follows the dataset's current sampler -----------------------------------------------------------
def test_epoch_sampler_follows_a_replaced_dataset_sampler_in_a_dataloader() -> None:
    pytest.importorskip("torch")
    from torch.utils.data import DataLoader

    from lazystack import RandomSampler
    from lazystack.torch import EpochSampler, PatchDataset

    stacks, arrays = _two_sizes()
    dataset = PatchDataset(stacks[:1], RandomSampler(stacks[:1], 8, 10, seed=1))
    epochs = EpochSampler(dataset)
    loader = DataLoader(dataset, batch_size=4, sampler=epochs)
    assert sum(len(b["input"]) for b in loader) == 10
    dataset.sampler = RandomSampler(stacks[:1], 8, 6, seed=2)  # a shorter epoch
    assert len(epochs) == 6
    assert len(loader) == 2
    got = torch_cat([b["input"] for b in loader])
    specs = dataset.sampler.epoch_specs(0)
    expected = [arrays[0][s.sample, s.coords[0] : s.coords[0] + 8, s.coords[1] : s.coords[1] + 8] for s in specs]
    np.testing.assert_array_equal(got[:, 0], np.stack(expected).astype(np.float32))
    dataset.sampler = RandomSampler(stacks[:1], 8, 13, seed=3)  # a longer one: every index of it
    assert sum(len(b["input"]) for b in loader) == 13
    assert len(EpochSampler(7)) == 7  # a plain length stays what it is
    epochs.length = 5  # set by hand, as before (an attribute): a number from then on
    assert len(epochs) == 5
    assert len(loader) == 2


def torch_cat(tensors: list[Any]) -> np.ndarray:
    return np.concatenate([t.numpy() for t in tensors])


# -- 5. booleans are not seeds, epochs or indices ---------------------------------------------------------------------
def test_torch_module_refuses_booleans_as_integers_naming_the_value() -> None:
    pytest.importorskip("torch")
    import torch

    from lazystack import RandomSampler
    from lazystack.torch import ChunkLocalSampler, EpochSampler, PatchDataset

    stacks, _ = _two_sizes()
    sampler = RandomSampler(stacks[:1], 8, 10, seed=1)
    dataset = PatchDataset(stacks[:1], sampler)
    for value in (True, np.True_, torch.tensor(True)):
        with pytest.raises(TypeError, match=r"seed must be an integer.*True"):
            EpochSampler(10, shuffle=True, seed=value)
        with pytest.raises(TypeError, match=r"seed must be an integer.*True"):
            ChunkLocalSampler(sampler, stacks[:1], seed=value, window=16)
        with pytest.raises(TypeError, match=r"index must be an integer.*True"):
            dataset[value]
        with pytest.raises(TypeError, match=r"index must be an integer.*True"):
            dataset.__getitems__([value])
        with pytest.raises(TypeError, match=r"epoch must be an integer.*True"):
            dataset.__getitems__([(value, 0)])
        with pytest.raises(TypeError, match=r"epoch must be an integer.*True"):
            dataset.set_epoch(value)
        with pytest.raises(TypeError, match=r"epoch must be an integer.*True"):
            EpochSampler(10, epoch=value)
        with pytest.raises(TypeError, match=r"length must be an integer.*True"):
            EpochSampler(value)
        with pytest.raises(TypeError, match=r"rank must be an integer.*True"):
            EpochSampler(10, rank=value, world_size=2)
    with pytest.raises(TypeError, match=r"shuffle must be True or False.*'no'"):
        EpochSampler(10, shuffle="no")  # type: ignore[arg-type]
    # integers of every kind still pass, and a 0-d integer tensor
    assert dataset[np.int64(3)]["input"].shape == (1, 8, 8)
    assert dataset[torch.tensor(3)]["input"].shape == (1, 8, 8)
    assert len(EpochSampler(np.int32(4), seed=np.uint8(2), shuffle=np.True_)) == 4


# -- 6. an interrupted overwrite's hint resolves `..` as the system does ----------------------------------------------
def _leftover(folder: Path, name: str) -> Path:
    """What an overwrite of ``folder/name`` interrupted between its two renames leaves: ``.name.old-<id>/store``."""
    from lazystack.io.overwrite import OLD_STORE, WRITER_MARKER

    aside = folder / f".{name}.old-1234"
    (aside / OLD_STORE).mkdir(parents=True)
    (aside / WRITER_MARKER).write_text("{}")
    return aside / OLD_STORE


def test_interrupted_overwrite_through_link_dotdot_is_found_beside_the_link_target(tmp_path: Path) -> None:
    from lazystack import SourceNotFoundError, load_zarrs
    from lazystack.io.overwrite import interrupted_overwrite

    (tmp_path / "real" / "sub").mkdir(parents=True)
    (tmp_path / "link").symlink_to(tmp_path / "real" / "sub")
    there = _leftover(tmp_path / "real", "x.zarr")  # beside the link's target: where link/../x.zarr is
    decoy = _leftover(tmp_path, "x.zarr")  # beside the link itself: where a textual `..` would look
    found = interrupted_overwrite(tmp_path / "link" / ".." / "x.zarr")
    assert found == (tmp_path / "real" / "x.zarr", there)
    with pytest.raises(SourceNotFoundError) as info:
        load_zarrs(str(tmp_path / "link" / ".." / "x.zarr"), "YX")
    assert str(there) in str(info.value)
    assert str(decoy) not in str(info.value)


def test_multifile_ome_listing_a_hard_link_to_its_master_still_reads(tmp_path: Path) -> None:
    """A listed file that is the master under another name is checked as the master, not taken for a new file."""
    write_multifile_ome(tmp_path, ["a.ome.tif", "b.ome.tif"], planes=2, shape=(16, 24))
    (tmp_path / "b.ome.tif").unlink()
    os.link(tmp_path / "a.ome.tif", tmp_path / "b.ome.tif")
    expected = tifffile.imread(tmp_path / "a.ome.tif")
    (stack,) = load_tiffs([tmp_path / "a.ome.tif"], "ZYX")
    with chunk_cache_size(0):
        np.testing.assert_array_equal(stack.extract_patch(0, None, (0, 0, 0), (4, 16, 24))[0], expected)


def test_a_list_index_is_a_batch_as_torch_subset_asks_not_an_epoch_index_pair() -> None:
    pytest.importorskip("torch")
    from torch.utils.data import Subset

    from lazystack import RandomSampler
    from lazystack.torch import PatchDataset

    stacks, arrays = _two_sizes()
    dataset = PatchDataset(stacks[:1], RandomSampler(stacks[:1], 8, 10, seed=4))
    items = Subset(dataset, [5, 2])[[0, 1]]  # Subset.__getitem__ of a list: dataset[[5, 2]]
    assert isinstance(items, list)
    assert len(items) == 2
    for item, spec in zip(items, dataset.sampler.epoch_specs(0, [5, 2]), strict=True):
        y, x = spec.coords
        np.testing.assert_array_equal(item["input"][0].numpy(), arrays[0][spec.sample, y : y + 8, x : x + 8])
    assert dataset[(5, 2)]["input"].shape == (1, 8, 8)  # a tuple is still an (epoch, index) pair


def test_stitcher_writes_bfloat16_predictions_of_mixed_precision() -> None:
    torch = pytest.importorskip("torch")
    grid, predictions, _ = _grid_and_predictions(np.float32)
    out = np.zeros((2, 1, 20, 20), np.float32)
    halves = [torch.from_numpy(p).to(torch.bfloat16) for p in predictions]
    Stitcher(grid, 1, out=[out]).add_batch(range(len(grid)), halves)
    expected = np.zeros_like(out)
    for tile, half in zip((grid.tile(i) for i in range(len(grid))), halves, strict=True):
        region = (tile.spec.sample, slice(None), *tile.image_region)
        expected[region] = half.float().numpy()[(slice(None), *tile.patch_region)]
    np.testing.assert_array_equal(out, expected)


def test_patch_dataset_refuses_a_sampler_or_transform_it_cannot_use_naming_it() -> None:
    pytest.importorskip("torch")
    import torch

    from lazystack import RandomSampler
    from lazystack.torch import EpochSampler, PatchDataset

    stacks, _ = _two_sizes()
    with pytest.raises(TypeError, match=r"got EpochSampler: an EpochSampler goes to the DataLoader"):
        PatchDataset(stacks, EpochSampler(10))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"lazystack Sampler.*got RandomSampler"):
        PatchDataset(stacks, torch.utils.data.RandomSampler(range(10)))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"transform must be a callable.*'flip'"):
        PatchDataset(stacks[:1], RandomSampler(stacks[:1], 8, 4), transform="flip")  # type: ignore[arg-type]


# -- manifests record integers only -----------------------------------------------------------------------------------
def test_manifest_refuses_booleans_and_bare_numbers_as_epochs_and_indices(tmp_path: Path) -> None:
    from lazystack import RandomSampler
    from lazystack.sampling.manifest import read_manifest, write_manifest

    stacks, _ = _two_sizes()
    sampler = RandomSampler(stacks, 8, 6, seed=2)
    for kwargs, match in (
        ({"epochs": [True]}, r"epochs item must be a non-negative integer, got True"),
        ({"epochs": 3}, r"epochs must be a sequence of non-negative integers, got 3"),
        ({"indices": [0, np.True_]}, r"indices item must be a non-negative integer, got np.True_"),
    ):
        with pytest.raises(TypeError, match=match):
            write_manifest(tmp_path / "m.csv", sampler, stacks, **kwargs)  # type: ignore[arg-type]
        assert not (tmp_path / "m.csv").exists()
    write_manifest(tmp_path / "m.csv", sampler, stacks, epochs=[np.int64(1)], indices=range(3))
    replay = read_manifest(tmp_path / "m.csv", stacks, epoch=1)
    assert replay.epoch_specs(0) == sampler.epoch_specs(1, [0, 1, 2])
    with pytest.raises(TypeError, match=r"epoch must be a non-negative integer, got True"):
        read_manifest(tmp_path / "m.csv", stacks, epoch=True)


def test_whole_sample_batches_of_mixed_sizes_pass_through_a_transform_that_crops_them() -> None:
    pytest.importorskip("torch")
    from torch.utils.data import DataLoader

    from lazystack import WholeSampleSampler
    from lazystack.torch import EpochSampler, PatchDataset

    stacks, arrays = _two_sizes()

    def crop(item: dict[str, Any]) -> dict[str, Any]:
        return {"input": item["input"][..., :16, :16]}

    dataset = PatchDataset(stacks, WholeSampleSampler(stacks), transform=crop)
    (batch,) = list(DataLoader(dataset, batch_size=3, sampler=EpochSampler(dataset)))
    expected = np.stack([a[:16, :16] for a in (arrays[0][0], arrays[0][1], arrays[1][0])])[:, None]
    np.testing.assert_array_equal(batch["input"].numpy(), expected.astype(np.float32))


def test_multifile_ome_read_stats_each_file_it_reads_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The cost model of the master's check: one fstat per read of each file it takes segments from."""
    data = write_multifile_ome(tmp_path, 3, planes=5, shape=(16, 24))  # 3 or 4 planes would be written as RGB(A)
    (stack,) = load_tiffs([tmp_path / "m_0.ome.tif"], "ZYX")
    with chunk_cache_size(0):
        stack.extract_patch(0, None, (5, 0, 0), (1, 16, 24))  # opens m_1 (and the master)
        stats: list[str] = []
        fstat = os.fstat

        def counting(fd: int) -> os.stat_result:
            stats.append(os.path.basename(os.readlink(f"/proc/self/fd/{fd}")))
            return fstat(fd)

        monkeypatch.setattr(os, "fstat", counting)
        patch = stack.extract_patch(0, None, (5, 0, 0), (4, 16, 24))  # 4 planes (segments) of m_1
        monkeypatch.undo()
    np.testing.assert_array_equal(patch[0], data[5:9])
    # as many as the master's (one per read of the chunk reader), none per segment beyond that
    assert set(stats) == {"m_0.ome.tif", "m_1.ome.tif"}, stats
    assert stats.count("m_1.ome.tif") == stats.count("m_0.ome.tif"), stats
    stats.clear()
    monkeypatch.setattr(os, "fstat", counting)
    with chunk_cache_size(0):
        chunks = stack.reader.as_chunked().fetch_chunks([(z, 0, 0) for z in range(5, 9)])  # one read: 4 segments
    monkeypatch.undo()
    np.testing.assert_array_equal(np.concatenate([chunks[(z, 0, 0)] for z in range(5, 9)]), data[5:9])
    assert sorted(stats) == ["m_0.ome.tif", "m_1.ome.tif"], stats


def test_tiling_refuses_booleans_as_tile_indices_and_sizes() -> None:
    from lazystack.sampling.tiling import tile_starts

    grid, predictions, _ = _grid_and_predictions(np.float32)
    stitcher = Stitcher(grid, 1)
    with pytest.raises(TypeError, match=r"index must be an integer, got True"):
        stitcher.add(True, predictions[1])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"index must be an integer, got True"):
        stitcher.add_batch([True], predictions[1:2])  # type: ignore[list-item]
    with pytest.raises(TypeError, match=r"overlap must be an integer, got True"):
        tile_starts(20, 8, True)  # type: ignore[arg-type]
    assert not stitcher.outputs[0].any()
