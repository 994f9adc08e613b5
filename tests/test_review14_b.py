"""Review of fix14 (reviewer revB): each test failed on the merge of fix14 (509ce3a) before its fix.

References are independent of lazystack (NumPy's own casting rule, hand-written expectations).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from lazystack import GridSampler, LazyImageStack, RandomSampler, Stitcher
from lazystack.sampling.tiling import tile_starts


def _grid() -> GridSampler:
    return GridSampler([LazyImageStack(np.zeros((1, 1, 20, 20), np.float32), "SCYX")], 12, overlap=4)


# -- Stitcher: a 0-d boolean tensor is not a tile index ---------------------------------------------------------------
def test_stitcher_refuses_a_0d_boolean_tensor_as_a_tile_index_or_size() -> None:
    """c4cd5bd refused Python / NumPy booleans only: ``add(torch.tensor(True))`` wrote tile 1 (a bool mask's items)."""
    torch = pytest.importorskip("torch")
    tile = np.ones((1, 12, 12), np.float32)
    stitcher = Stitcher(_grid(), 1)
    with pytest.raises(TypeError, match=r"index must be an integer, got tensor\(True\) \(a boolean\)"):
        stitcher.add(torch.tensor(True), tile)
    with pytest.raises(TypeError, match=r"index must be an integer, got tensor\(True\) \(a boolean\)"):
        stitcher.add_batch(torch.tensor([True, False]), torch.ones(2, 1, 12, 12))  # a mask taken for indices
    with pytest.raises(TypeError, match=r"index must be an integer, got array\(True\) \(a boolean\)"):
        stitcher.add(np.array(True), tile)
    assert not stitcher.outputs[0].any()  # nothing written
    with pytest.raises(TypeError, match=r"overlap must be an integer, got tensor\(False\) \(a boolean\)"):
        tile_starts(20, 12, torch.tensor(False))
    assert stitcher.add(torch.tensor(1), tile) is None  # a 0-d integer tensor still is an index
    assert stitcher.outputs[0].any()


# -- Stitcher: the refusal names the reason of the cast it refuses ----------------------------------------------------
@pytest.mark.parametrize(
    ("pred", "out", "casting", "reason"),
    [
        ("int64", "uint8", "same_kind", r"signed integer.*unsigned"),  # torch's argmax into a label image
        ("float32", "uint16", "same_kind", r"float.*integer.*truncated"),
        ("float64", "float32", "safe", r"precision or range"),
        ("uint8", "bool", "same_kind", r"boolean"),
    ],
)
def test_stitcher_refusal_names_the_reason_of_the_cast(pred: str, out: str, casting: str, reason: str) -> None:
    """aea35ce's message said 'a float into an integer would be truncated' and 'Round ...' for every refusal:
    int64 labels (``argmax``) into a uint8 output were refused with a float's reason."""
    assert not np.can_cast(np.dtype(pred), np.dtype(out), casting=casting)  # NumPy refuses it too
    target = np.zeros((1, 1, 20, 20), out)
    stitcher = Stitcher(_grid(), 1, out=[target], casting=casting)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=rf"{pred}.*{out}.*{reason}") as info:
        stitcher.add(0, np.ones((1, 12, 12), pred))
    message = str(info.value)
    assert f".astype({out})" in message  # what to do, in the output's dtype
    if np.dtype(pred).kind != "f":
        assert "float" not in message
        assert "Round" not in message
    assert not target.any()


# -- torch.py: read_ahead / per_chunk refuse 0-d boolean tensors as they refuse True ----------------------------------
def test_read_ahead_and_per_chunk_refuse_a_0d_boolean_tensor_as_they_refuse_true() -> None:
    """0842c80 refused 0-d bool tensors as seeds / epochs / ranks / indices, but read_ahead=torch.tensor(True)
    read one batch ahead and per_chunk=torch.tensor(True) made groups of one (True itself is refused)."""
    torch = pytest.importorskip("torch")
    from lazystack.torch import ChunkLocalSampler, PatchDataset

    stacks = [LazyImageStack(np.zeros((2, 24, 32), np.float32), "SYX")]
    base = RandomSampler(stacks, 8, 4)
    for flag in (True, np.True_, torch.tensor(True)):
        with pytest.raises((ValueError, TypeError), match=r"read_ahead .*True"):
            PatchDataset(stacks, base, read_ahead=flag)  # type: ignore[arg-type]
        with pytest.raises((ValueError, TypeError), match=r"per_chunk .*True"):
            ChunkLocalSampler(base, stacks, per_chunk=flag, window=8)  # type: ignore[arg-type]
    assert PatchDataset(stacks, base, read_ahead=torch.tensor(2)).read_ahead == 2
    assert ChunkLocalSampler(base, stacks, per_chunk=np.int64(3), window=8).per_chunk == 3


# -- manifests: 0-d boolean tensors and 0-d arrays ---------------------------------------------------------------------
def test_manifest_refuses_0d_boolean_tensors_and_0d_arrays_naming_them(tmp_path: Path) -> None:
    """7c618f4 refused True / np.True_ but recorded epochs=[torch.tensor(True)] as epoch 1 and read_manifest(
    epoch=torch.tensor(True)) selected epoch 1; a 0-d array as epochs failed with NumPy's 'iteration over a 0-d
    array', naming neither the parameter nor the value."""
    torch = pytest.importorskip("torch")
    from lazystack.sampling.manifest import read_manifest, write_manifest

    stacks = [LazyImageStack(np.zeros((2, 24, 32), np.float32), "SYX")]
    sampler = RandomSampler(stacks, 8, 6, seed=2)
    out = tmp_path / "m.csv"
    for kwargs, match in (
        ({"epochs": [torch.tensor(True)]}, r"epochs item must be a non-negative integer, got tensor\(True\)"),
        ({"indices": [0, torch.tensor(True)]}, r"indices item must be a non-negative integer, got tensor\(True\)"),
        ({"epochs": np.array(3)}, r"epochs must be a sequence of non-negative integers, got array\(3\)"),
        ({"indices": torch.tensor(2)}, r"indices must be a sequence of non-negative integers, got tensor\(2\)"),
    ):
        with pytest.raises(TypeError, match=match):
            write_manifest(out, sampler, stacks, **kwargs)
        assert not out.exists()
    write_manifest(out, sampler, stacks, epochs=torch.tensor([0, 1]), indices=np.array([4, 1]))
    assert read_manifest(out, stacks, epoch=torch.tensor(1)).epoch_specs(0) == sampler.epoch_specs(1, [4, 1])
    with pytest.raises(TypeError, match=r"epoch must be a non-negative integer, got tensor\(True\)"):
        read_manifest(out, stacks, epoch=torch.tensor(True))


# -- TIFF: the other files' stamps are read from the open file --------------------------------------------------------
def _compressed_ome(folder: Path, names: list[str], planes: int = 2) -> np.ndarray:
    """A zlib-compressed OME-TIFF set (Bio-Formats style: every file's OME-XML lists every file, itself too)."""
    import uuid

    import tifffile

    shape = (16, 24)
    data = np.arange(len(names) * planes * shape[0] * shape[1], dtype=np.uint16).reshape(-1, *shape)
    ids = [f"urn:uuid:{uuid.uuid4()}" for _ in names]
    tiffdata = "".join(
        f'<TiffData FirstZ="{k * planes}" IFD="0" PlaneCount="{planes}"><UUID FileName="{n}">{ids[k]}</UUID></TiffData>'
        for k, n in enumerate(names)
    )
    folder.mkdir(parents=True, exist_ok=True)
    for k, name in enumerate(names):
        xml = (
            f'<?xml version="1.0" encoding="UTF-8"?><OME xmlns="http://www.openmicroscopy.org/Schemas/OME/2016-06" '
            f'UUID="{ids[k]}"><Image ID="Image:0"><Pixels ID="Pixels:0" DimensionOrder="XYZCT" Type="uint16" '
            f'SizeX="{shape[1]}" SizeY="{shape[0]}" SizeZ="{planes * len(names)}" SizeC="1" SizeT="1">'
            f'<Channel ID="Channel:0:0" SamplesPerPixel="1"/>{tiffdata}</Pixels></Image></OME>'
        )
        with tifffile.TiffWriter(folder / name) as writer:
            for j in range(planes):
                plane = data[k * planes + j]
                writer.write(plane, description=xml if j == 0 else None, metadata=None, compression="zlib")
    return data


def test_loading_an_ome_tiff_opens_each_file_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """5e805f0 re-opened every compressed OME-TIFF whose OME-XML names files (Bio-Formats names the file itself in a
    single-file set too) to list them: one more tifffile.TiffFile per load, about 1.45x the load time of a folder of
    single-file OME-TIFFs. Each file of a set opens once, as before; reads still equal tifffile's."""
    import tifffile

    from lazystack import chunk_cache_size, load_tiffs

    single = _compressed_ome(tmp_path / "one", ["s.ome.tif"], planes=3)
    multi = _compressed_ome(tmp_path / "set", ["m_0.ome.tif", "m_1.ome.tif", "m_2.ome.tif"])
    opened: list[str] = []
    init = tifffile.TiffFile.__init__

    def counting(self: tifffile.TiffFile, arg: object, *args: object, **kwargs: object) -> None:
        opened.append(os.path.basename(os.fspath(arg)) if isinstance(arg, (str, os.PathLike)) else repr(arg))
        init(self, arg, *args, **kwargs)  # type: ignore[arg-type]

    stacks = []
    for path, expected in ((tmp_path / "one" / "s.ome.tif", 1), (tmp_path / "set" / "m_0.ome.tif", 3)):
        opened.clear()
        monkeypatch.setattr(tifffile.TiffFile, "__init__", counting)
        stacks += load_tiffs([path], "ZYX")
        monkeypatch.undo()
        assert len(opened) == expected, opened
    with chunk_cache_size(0):
        for stack, data in zip(stacks, (single, multi), strict=True):
            np.testing.assert_array_equal(stack.extract_patch(0, None, (0, 0, 0), data.shape)[0], data)
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "set" / "m_0.ome.tif"), multi)  # the reference agrees


# -- persistent workers and a replaced dataset.sampler (left alone in session 14, fixed by torch15) --------------------
def test_persistent_workers_serve_the_replaced_sampler_or_refuse() -> None:
    """Persistent workers keep the dataset (and sampler) they were started with: after dataset.sampler was replaced
    by one of the same length, EpochSampler(dataset) yielded the new epoch's indices and the workers served the OLD
    sampler's patches without a word. The indices now carry the dataset's generation and the workers refuse them."""
    pytest.importorskip("torch")
    from torch.utils.data import DataLoader

    from lazystack import LazyStackError
    from lazystack.torch import EpochSampler, PatchDataset

    image = np.arange(2 * 24 * 32, dtype=np.float32).reshape(2, 24, 32)
    stacks = [LazyImageStack(image, "SYX")]
    dataset = PatchDataset(stacks, RandomSampler(stacks, 8, 6, seed=1))
    loader = DataLoader(dataset, batch_size=3, sampler=EpochSampler(dataset), num_workers=1, persistent_workers=True)
    assert sum(len(b["input"]) for b in loader) == 6
    dataset.sampler = RandomSampler(stacks, 8, 6, seed=2)
    with pytest.raises(LazyStackError, match=r"(?s)persistent DataLoader workers .*Make a new DataLoader"):
        next(iter(loader))  # a clear refusal (serving the new sampler's patches would do too)


# -- Stitcher: casting= holds for a tensorstore output too -------------------------------------------------------------
@pytest.mark.parametrize(
    ("pred", "out", "casting"), [("float64", "float32", "same_kind"), ("float32", "int16", "unsafe")]
)
def test_stitcher_casting_holds_for_a_tensorstore_output(tmp_path: Path, pred: str, out: str, casting: str) -> None:
    """aea35ce checked casting= against a tensorstore output's dtype, then let tensorstore's assignment cast, which
    casts 'safe'ly only: float64 predictions into a float32 output failed with 'Cannot cast ... according to the rule
    safe' (not naming the tile), and casting='unsafe' did nothing. The output gets what np.copyto writes."""
    ts = pytest.importorskip("tensorstore")
    image = (np.random.default_rng(3).random((1, 1, 20, 20)) * 300 - 20).astype(pred)
    grid = GridSampler([LazyImageStack(image, "SCYX")], 12, overlap=4)
    spec = {"driver": "zarr3", "kvstore": {"driver": "file", "path": str(tmp_path / "o")}}
    target = ts.open(spec, create=True, dtype=getattr(ts, out), shape=[1, 1, 20, 20]).result()
    stitcher = Stitcher(grid, 1, out=[target], casting=casting)  # type: ignore[arg-type]
    for tile in range(len(grid)):
        s = grid.epoch_specs(0, [tile])[0]
        stitcher.add(tile, image[s.sample, :, s.coords[0] : s.coords[0] + 12, s.coords[1] : s.coords[1] + 12])
    assert stitcher.complete
    expected = np.zeros((1, 1, 20, 20), out)
    np.copyto(expected, image, casting=casting)  # type: ignore[arg-type]
    np.testing.assert_array_equal(target.read().result(), expected)
