"""Defects reviewers noticed and left alone (session 11), each pinned by a test that fails without its fix.

References are independent of lazystack: the message an error was raised with, zarr-python's own reads,
numpy slicing, napari's own layer transforms, the decimal values the CZI files store.
"""

from __future__ import annotations

import pickle
import time
from pathlib import Path
from typing import Any

import numcodecs
import numpy as np
import pytest
import zarr
from numcodecs.abc import Codec
from zarr_helpers import dated_now

import lazystack
import lazystack.sampling.manifest
import lazystack.sources.zarr
from lazystack.core import errors
from lazystack.core.levels import parse_levels
from lazystack.io.cache import get_chunk_cache
from lazystack.sources.zarr import _StoreDeletedError, _StoreRewrittenError
from lazystack.sources.zarr.engines import ZarrPythonEngine, _StaleChunkError, set_zarr_engine


# -- 1. an error re-raised from its message alone (a DataLoader worker's) is not wrapped twice ---------------------
def _error_classes() -> list[type[BaseException]]:
    """Every exception class of core/errors.py, and every LazyStackError subclass of the package (private ones too)."""
    found = [v for v in vars(errors).values() if isinstance(v, type) and issubclass(v, BaseException)]
    todo: list[type[BaseException]] = [errors.LazyStackError]
    while todo:
        cls = todo.pop()
        found.append(cls)
        todo.extend(cls.__subclasses__())
    return sorted(set(found), key=lambda c: f"{c.__module__}.{c.__qualname__}")


@pytest.mark.parametrize("cls", _error_classes(), ids=lambda c: c.__qualname__)
def test_every_error_class_is_built_from_its_own_message(cls: type[BaseException]) -> None:
    message = "reading 'x.zarr' failed: chunk 'c/0/0' is truncated"
    error = cls(message)
    assert str(error) == message
    again = type(error)(str(error))  # what torch's ExceptionWrapper.reraise does
    assert type(again) is cls
    assert str(again) == message
    unpickled = pickle.loads(pickle.dumps(error))
    assert type(unpickled) is cls
    assert str(unpickled) == message


@pytest.mark.parametrize(
    "error",
    [
        _StoreDeletedError.of("/data/a.zarr/zarr.json", "file:///data/a.zarr", "file:///data/a.zarr"),
        _StoreRewrittenError.of("/data/a.zarr/zarr.json", "file:///data/a.zarr", "file:///data/a.zarr"),
        _StaleChunkError.of("/data/a.zarr/c/0/0", "c/0/0", "file:///data/a.zarr"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_errors_written_for_a_path_keep_their_message_and_fields(error: Exception) -> None:
    message = str(error)
    assert "/data/a.zarr" in message
    assert str(type(error)(message)) == message
    unpickled = pickle.loads(pickle.dumps(error))
    assert str(unpickled) == message
    assert unpickled.path == error.path  # type: ignore[attr-defined]


def _rewrite_metadata(path: Path) -> None:
    document = path / "zarr.json"
    document.write_text(document.read_text() + " ")  # same metadata, a new modification time and size


def _rewrite_chunks(path: Path) -> None:
    with dated_now(path):  # a later modification time than the opening, whatever the file system's clock
        zarr.open_array(path, mode="r+")[...] = 3


@pytest.mark.filterwarnings("ignore:This DataLoader will create:UserWarning")
@pytest.mark.parametrize(
    ("change", "original"),
    [
        (_rewrite_metadata, "its metadata document"),
        (_rewrite_chunks, "changed after it was opened: its chunk file"),
    ],
    ids=["metadata-rewritten", "chunk-rewritten"],
)
def test_a_changed_store_error_from_a_dataloader_worker_is_said_once(
    tmp_path: Path, change: Any, original: str
) -> None:
    torch = pytest.importorskip("torch")
    from torch.utils.data import DataLoader

    from lazystack.sampling import RandomSampler
    from lazystack.torch import PatchDataset

    path = tmp_path / "a.zarr"
    array = zarr.create_array(path, shape=(2, 64, 64), chunks=(1, 32, 32), dtype="uint16")
    array[...] = 1
    (stack,) = lazystack.load_zarrs([path], "SYX")
    stack.extract_patch(0, None, (0, 0), (8, 8))  # opened, one chunk cached
    time.sleep(0.01)  # a later modification time, whatever the file system's resolution
    change(path)
    dataset = PatchDataset([stack], RandomSampler([stack], 16, 8, seed=1))
    loader = DataLoader(dataset, batch_size=4, num_workers=1, multiprocessing_context="fork")
    with pytest.raises(lazystack.SourceReadError) as info:
        next(iter(loader))
    message = str(info.value)
    assert "in DataLoader worker process 0" in message, message  # it did come from the worker
    assert torch.utils.data.get_worker_info() is None
    assert message.count(original) == 1, message
    assert not message.startswith(original), message  # torch's prefix first, the worker's message once after it
    assert str(path) in message


# -- 2. the zarr engine wraps read failures only; a programming error propagates as it is --------------------------
class _TestCodec(Codec):
    """A numcodecs codec storing raw bytes whose decode fails as told: a bug, a type error, or damaged data."""

    codec_id = "lazystack-test-fixes11"

    def __init__(self, fail: str = "none") -> None:
        self.fail = fail

    def encode(self, buf: Any) -> bytes:
        return bytes(np.ascontiguousarray(buf).view("u1"))

    def decode(self, buf: Any, out: Any = None) -> Any:
        if self.fail == "bug":
            raise NotImplementedError("decoding this layout is not written yet")
        if self.fail == "type":
            raise TypeError("unsupported operand type(s)")
        if self.fail == "corrupt":
            raise RuntimeError("corrupt frame")  # what numcodecs' blosc / zstd / lz4 raise on damaged bytes
        return numcodecs.compat.ndarray_copy(buf, out)

    def get_config(self) -> dict[str, Any]:
        return {"id": self.codec_id, "fail": self.fail}


numcodecs.register_codec(_TestCodec)


def _codec_array(path: Path, fail: str) -> zarr.Array:
    array = zarr.create_array(
        path,
        shape=(2, 64, 64),
        chunks=(1, 32, 32),
        dtype="uint16",
        zarr_format=2,
        compressors=_TestCodec(),
        fill_value=0,
    )
    array[...] = 5
    meta = path / ".zarray"
    meta.write_text(meta.read_text().replace('"fail": "none"', f'"fail": "{fail}"'))
    return zarr.open_array(path, mode="r")


@pytest.fixture
def zarr_python_engine() -> Any:
    previous = set_zarr_engine("zarr")
    get_chunk_cache().clear()
    try:
        yield
    finally:
        set_zarr_engine(previous)
        get_chunk_cache().clear()


@pytest.mark.parametrize(("fail", "error"), [("bug", NotImplementedError), ("type", TypeError)])
def test_a_programming_error_in_a_zarr_read_propagates(
    tmp_path: Path, zarr_python_engine: None, fail: str, error: type[Exception]
) -> None:
    path = tmp_path / "a.zarr"
    array = _codec_array(path, fail)
    with pytest.raises(error) as raw:  # zarr's own read: the reference
        array[0, :8, :8]
    with pytest.raises(error) as engine:
        ZarrPythonEngine(array).fetch([(0, 0, 0)])
    assert str(engine.value) == str(raw.value)
    assert not isinstance(engine.value, lazystack.SourceReadError)
    (stack,) = lazystack.load_zarrs([path], "SYX")
    with pytest.raises(error) as patch:
        stack.extract_patch(0, None, (0, 0), (8, 8))
    assert not isinstance(patch.value, lazystack.SourceReadError)
    assert str(patch.value) == str(raw.value)


def _codec_array_corrupt(path: Path) -> zarr.Array:
    return _codec_array(path, "corrupt")  # every chunk fails to decode


def _truncate_gzip(path: Path) -> zarr.Array:
    from zarr.codecs import GzipCodec

    array = zarr.create_array(path, shape=(2, 64, 64), chunks=(1, 32, 32), dtype="uint16", compressors=GzipCodec())
    array[...] = np.arange(2 * 64 * 64, dtype="uint16").reshape(2, 64, 64)
    chunk = path / "c" / "0" / "0" / "0"
    chunk.write_bytes(chunk.read_bytes()[:40])
    return array


def _zstd_garbage(path: Path) -> zarr.Array:
    from zarr.codecs import ZstdCodec

    array = zarr.create_array(path, shape=(2, 64, 64), chunks=(1, 32, 32), dtype="uint16", compressors=ZstdCodec())
    array[...] = 7
    (path / "c" / "0" / "0" / "0").write_bytes(b"not a chunk" * 8)
    return array


def _short_raw_chunk(path: Path) -> zarr.Array:
    array = zarr.create_array(path, shape=(2, 64, 64), chunks=(1, 32, 32), dtype="uint16", compressors=None)
    array[...] = 7
    (path / "c" / "0" / "0" / "0").write_bytes(b"\0" * 100)
    return array


@pytest.mark.parametrize(
    "damage",
    [_codec_array_corrupt, _truncate_gzip, _zstd_garbage, _short_raw_chunk],
    ids=["codec-runtime-error", "truncated-gzip", "zstd-garbage", "short-raw-chunk"],
)
def test_a_damaged_chunk_read_by_zarr_is_a_read_error_naming_the_array(
    tmp_path: Path, zarr_python_engine: None, damage: Any
) -> None:
    path = tmp_path / "a.zarr"
    damage(path)
    array = zarr.open_array(path, mode="r")
    with pytest.raises(Exception) as raw:  # noqa: PT011 - zarr's own read fails too (its own error): the reference
        array[0, :8, :8]
    assert not isinstance(raw.value, lazystack.LazyStackError)
    with pytest.raises(lazystack.SourceReadError, match=r"a\.zarr") as engine:
        ZarrPythonEngine(array).fetch([(0, 0, 0)])
    assert type(engine.value.__cause__) is type(raw.value)
    (stack,) = lazystack.load_zarrs([path], "SYX")
    with pytest.raises(lazystack.SourceReadError, match=r"a\.zarr"):
        stack.extract_patch(0, None, (0, 0), (8, 8))
    if damage is not _codec_array_corrupt:  # one chunk damaged: the others read as zarr reads them
        np.testing.assert_array_equal(stack.extract_patch(1, None, (0, 0), (8, 8))[0], array[1, :8, :8])


# -- 3. a view of one pixel along an axis has the source's pixel size there, whatever step selected it -------------
def _sized_stack() -> tuple[lazystack.LazyImageStack, np.ndarray]:
    data = np.arange(2 * 30 * 40, dtype=np.uint16).reshape(2, 30, 40)
    attrs = {"physical_pixel_sizes": {"Y": 0.5, "X": 0.25}, "translation": {"Y": 10.0, "X": -2.0}}
    return lazystack.LazyImageStack(data, "CYX", attrs=attrs), data


@pytest.mark.parametrize(
    "select",
    [
        lambda s: s.isel(Y=slice(0, None, 3)).isel(Y=slice(2, 3)),  # row 6 of a view of every third row
        lambda s: s.isel(Y=slice(6, 7, 5)),  # row 6, with a step that selects nothing more
        lambda s: s.isel(Y=slice(6, None, 4)).isel(Y=slice(0, 1)),
    ],
    ids=["strided-then-one", "one-with-a-step", "one-of-a-strided-view"],
)
def test_a_one_pixel_view_has_the_source_pixel_size_coords_and_written_scale(tmp_path: Path, select: Any) -> None:
    stack, data = _sized_stack()
    view = select(stack)
    plain = stack.isel(Y=slice(6, 7))  # the same pixel row, selected without a step
    np.testing.assert_array_equal(view.compute()[0], data[:, 6:7, :])
    assert view.physical_pixel_sizes == plain.physical_pixel_sizes == {"Y": 0.5, "X": 0.25}
    assert view.xarray.attrs["physical_pixel_sizes"] == {"Y": 0.5, "X": 0.25}
    # the position is the row's, as xarray's own slicing of the source's coordinates says
    np.testing.assert_array_equal(view.coords["Y"], stack.xarray.coords["Y"].values[6:7])
    assert view.coords["Y"].tolist() == [6 * 0.5 + 10.0]
    lazystack.write_ome_zarr(view, tmp_path / "row.ome.zarr")
    (back,) = lazystack.load_zarrs(tmp_path / "row.ome.zarr", "CYX")
    assert back.physical_pixel_sizes == {"Y": 0.5, "X": 0.25}
    np.testing.assert_allclose(back.coords["Y"], view.coords["Y"])
    np.testing.assert_allclose(back.coords["X"], stack.coords["X"])
    np.testing.assert_array_equal(back.compute(), view.compute())


def test_a_strided_view_of_several_pixels_keeps_the_step_in_its_pixel_size() -> None:
    stack, _ = _sized_stack()
    view = stack.isel(Y=slice(0, None, 3)).isel(Y=slice(2, 4))  # rows 6 and 9
    assert view.physical_pixel_sizes == {"Y": 1.5, "X": 0.25}
    np.testing.assert_array_equal(view.coords["Y"], stack.xarray.coords["Y"].values[6:10:3])


# -- 4. napari: a view's layer sits where its pixels are in the source, over the whole stack's layer ---------------
@pytest.mark.parametrize("physical", [True, False], ids=["pixel-sizes", "no-pixel-sizes"])
@pytest.mark.parametrize(
    "select",
    [
        {"Y": slice(100, 200)},
        {"Y": slice(100, 200, 3), "X": slice(5, None, 2)},
        {"Z": slice(1, 3), "X": slice(150, 151)},
    ],
    ids=["crop", "strided", "planes-and-one-column"],
)
def test_a_napari_layer_of_a_view_overlays_the_whole_stack(physical: bool, select: dict[str, slice]) -> None:
    layers = pytest.importorskip("napari.layers", reason="napari is not installed: pip install 'lazystack[napari]'")
    from lazystack.frontends.napari import layer_data

    data = np.random.default_rng(4).integers(0, 1000, (4, 300, 200), dtype=np.uint16)  # Z Y X
    attrs = (
        {"physical_pixel_sizes": {"Z": 2.0, "Y": 0.5, "X": 0.25}, "translation": {"Z": 1.0, "Y": 10.0, "X": -2.0}}
        if physical
        else {}
    )
    stack = lazystack.LazyImageStack(data, "ZYX", attrs=attrs)
    view = stack.isel(**select)
    ((full_data, full_kwargs, _),) = layer_data([stack], "full")
    ((view_data, view_kwargs, _),) = layer_data([view], "view")
    whole, part = layers.Image(full_data, **full_kwargs), layers.Image(view_data, **view_kwargs)
    ranges = [range(n)[select.get(a, slice(None))] for a, n in zip("ZYX", data.shape, strict=True)]
    for index in [(0, 0, 0), (1, 2, 3), tuple(len(r) - 1 for r in ranges)]:
        index = tuple(min(i, len(r) - 1) for i, r in zip(index, ranges, strict=True))
        source_index = tuple(r[i] for i, r in zip(index, ranges, strict=True))
        assert part.data[index] == data[source_index]
        np.testing.assert_allclose(part.data_to_world(index), whole.data_to_world(source_index))


# -- 5. levels= on a Zarr array no OME-Zarr image lists: level 0 is all it has, as a TIFF series without a pyramid --
def _plain_zarr(tmp_path: Path) -> tuple[Path, np.ndarray]:
    data = np.arange(2 * 16 * 16, dtype=np.uint16).reshape(2, 16, 16)
    group = zarr.open_group(tmp_path / "plain.zarr", mode="w")
    for name in ("a", "b"):
        group.create_array(name, shape=data.shape, chunks=(1, 8, 8), dtype=data.dtype)[...] = data
    return tmp_path / "plain.zarr", data


@pytest.mark.parametrize("levels", [1, [0, 1], "2"])
def test_a_level_a_plain_zarr_array_does_not_have_raises_like_tiff(tmp_path: Path, levels: Any) -> None:
    import tifffile

    path, data = _plain_zarr(tmp_path)
    tifffile.imwrite(tmp_path / "plain.tif", data)
    with pytest.raises(lazystack.SourceNotFoundError, match=r"resolution level") as tiff:  # the documented reference
        lazystack.load_tiffs(tmp_path / "plain.tif", "SYX", levels=levels)
    asked = max(parse_levels(levels) or (0,))
    assert f"not level {asked}" in str(tiff.value)
    for source in (path / "a", path):  # an array, a group of arrays
        with pytest.raises(lazystack.SourceNotFoundError) as info:
            lazystack.load_zarrs(source, "SYX", levels=levels)
        message = str(info.value)
        assert f"{path / 'a'}'" in message  # the array
        assert f"not level {asked} asked for by levels=" in message  # what was asked
        assert "1 resolution level (level 0)" in message  # what exists
    with pytest.raises(lazystack.SourceNotFoundError):
        lazystack.load(path / "a", "SYX", levels=levels)


@pytest.mark.parametrize("levels", [None, "all", 0, [0]])
def test_level_0_of_a_plain_zarr_array_is_the_array(tmp_path: Path, levels: Any) -> None:
    path, _ = _plain_zarr(tmp_path)
    stacks = lazystack.load_zarrs(path, "SYX", levels=levels)
    assert [s.source.rsplit("/", 1)[-1] for s in stacks] == ["a", "b"]
    for stack in stacks:
        np.testing.assert_array_equal(stack.compute()[:, 0], zarr.open_array(path / "a", mode="r")[...])


# -- 6. an OME-Zarr well group opens as its fields' images, named as the plate names them -------------------------
PLATE_ROWS, PLATE_COLUMNS, PLATE_FIELDS = ["A", "B"], ["1", "2"], 2


@pytest.fixture(scope="module")
def plate(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("ome_zarr", reason="ome-zarr-py (test extra) is not installed")
    import warnings

    path = tmp_path_factory.mktemp("plate") / "plate.ome.zarr"
    root = zarr.open_group(str(path), mode="w")
    rng = np.random.default_rng(11)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ome-zarr-py's deprecations, from its import on
        from ome_zarr.writer import write_image, write_plate_metadata, write_well_metadata

        wells = [f"{r}/{c}" for r in PLATE_ROWS for c in PLATE_COLUMNS]
        write_plate_metadata(root, PLATE_ROWS, PLATE_COLUMNS, wells, name="screen-7", field_count=PLATE_FIELDS)
        for r in PLATE_ROWS:
            for c in PLATE_COLUMNS:
                well = root.require_group(r).require_group(c)
                write_well_metadata(well, [{"path": str(f)} for f in range(PLATE_FIELDS)])
                for f in range(PLATE_FIELDS):
                    data = rng.integers(0, 4000, (2, 32, 48), dtype=np.uint16)
                    write_image(data, well.require_group(str(f)), axes="cyx", scale_factors=(2,))
    return path


_NAMING = ("plate", "well", "row", "column", "field", "level")


@pytest.mark.parametrize("levels", [None, 0, 1])
def test_a_well_group_opens_as_its_fields_images(plate: Path, levels: Any) -> None:
    well = lazystack.load_zarrs(plate / "B" / "2", "CYX", levels=levels)
    of_plate = [s for s in lazystack.load_zarrs(plate, "CYX", levels=levels) if s.attrs["well"] == "B/2"]
    assert [s.source for s in well] == [s.source for s in of_plate]
    assert [{k: s.attrs[k] for k in _NAMING} for s in well] == [{k: s.attrs[k] for k in _NAMING} for s in of_plate]
    expected_levels = [0, 1] if levels is None else [levels]
    expected = [(f, lv) for f in range(PLATE_FIELDS) for lv in expected_levels]
    assert [(s.attrs["field"], s.level) for s in well] == expected
    assert {s.attrs["plate"] for s in well} == {"screen-7"}
    assert {(s.attrs["row"], s.attrs["column"]) for s in well} == {("B", "2")}
    for stack in well:
        # zarr's own read of the array the stack names: <plate>/B/2/<field>/<level path>
        array = zarr.open_array(stack.source[len("file://") :], mode="r")
        assert stack.source.startswith(f"file://{plate}/B/2/{stack.attrs['field']}/")
        np.testing.assert_array_equal(stack.xarray.values, array[...])


def test_a_well_group_opens_through_load_with_its_declared_axes(plate: Path) -> None:
    stacks = lazystack.load(plate / "A" / "1", levels=0)
    assert [(s.attrs["well"], s.attrs["field"]) for s in stacks] == [("A/1", 0), ("A/1", 1)]
    assert stacks[0].original_axes == "CYX"


def test_a_well_without_its_plate_is_named_by_its_path(plate: Path, tmp_path: Path) -> None:
    import shutil

    alone = tmp_path / "copy.zarr" / "C" / "5"
    shutil.copytree(plate / "A" / "1", alone)
    zarr.open_group(tmp_path / "copy.zarr", mode="a")  # a store, with no plate metadata
    stacks = lazystack.load_zarrs(alone, "CYX", levels=0)
    assert [(s.attrs["well"], s.attrs["row"], s.attrs["column"], s.attrs["field"]) for s in stacks] == [
        ("C/5", "C", "5", 0),
        ("C/5", "C", "5", 1),
    ]
    assert all("plate" not in s.attrs for s in stacks)
    for stack, f in zip(stacks, range(PLATE_FIELDS), strict=True):
        assert stack.source.startswith(f"file://{alone}/{f}/")
        reference = zarr.open_array(stack.source[len("file://") :], mode="r")[...]
        np.testing.assert_array_equal(stack.xarray.values, reference)


# -- 7. CZI pixel sizes in micrometres as the file's decimal metres say, without the conversion's last-bit error ---
#: Per real file: its XML's <Distance> values (metres) in micrometres, to 12 significant digits, for the axes it has.
_CZI_SIZES = {
    "100x100.czi": {"X": 0.1, "Y": 0.1},  # 1e-07
    "CellDivision_T3_Z5_CH2_X240_Y170.czi": {"X": 0.0905766741522, "Y": 0.0905766741522, "Z": 0.32},
    "RGB-8bit.czi": {"X": 1.08333333333, "Y": 1.08333333333},  # 1.0833333333333333E-06
    "WellD6-7_S2.czi": {"X": 0.1, "Y": 0.1},  # 1E-07
    "mosaic_test.czi": {"X": 1.08333333333, "Y": 1.08333333333},
    "tiles_z.czi": {"X": 0.830265820964, "Y": 0.830265820964, "Z": 4.0},  # 3.9999999999999998e-006
    "FOV7_HV110_P0500510000.czi": {},  # 0: no scaling
}
#: The files bioio-czi opens with the axes lazystack proposes.
_BIOIO_OPENS = ("100x100.czi", "RGB-8bit.czi", "WellD6-7_S2.czi", "mosaic_test.czi", "tiles_z.czi")


@pytest.mark.parametrize(("name", "expected"), list(_CZI_SIZES.items()), ids=list(_CZI_SIZES))
def test_czi_pixel_sizes_are_the_files_decimal_values(
    shared_czi_dir: Path, name: str, expected: dict[str, float]
) -> None:
    pytest.importorskip("pylibCZIrw", reason="the czi extra is not installed")
    path = shared_czi_dir / name
    axes = lazystack.propose_axes(path)
    stacks = lazystack.load_czis(path, axes)
    for stack in stacks:
        assert stack.physical_pixel_sizes == expected  # exact: 0.1, not 0.09999999999999999
    if name in _BIOIO_OPENS:
        pytest.importorskip("bioio_czi", reason="bioio-czi (czi extra) is not installed")
        (first, *_) = lazystack.load_bioio(path, axes)
        assert first.physical_pixel_sizes == expected


def test_rounded_size_keeps_twelve_significant_digits() -> None:
    from lazystack.sources.czi import rounded_size

    assert rounded_size(1e-07 * 1e6) == 0.1
    assert 1e-07 * 1e6 != 0.1  # the conversion alone
    assert rounded_size(9.0576674152210312e-08 * 1e6) == 0.0905766741522
    assert rounded_size(3.9999999999999998e-06 * 1e6) == 4.0
    assert rounded_size(123456.7890123456) == 123456.789012
    assert rounded_size(0.1 * 3) == 0.3  # a pyramid level's size: the level-0 size times its downsample factor


def test_czi_pyramid_level_pixel_sizes_are_rounded_too(shared_czi_dir: Path) -> None:
    pytest.importorskip("pylibCZIrw", reason="the czi extra is not installed")
    stacks = lazystack.load_czis(shared_czi_dir / "WellD6-7_S2.czi", "SCYX", levels="all")
    assert [s.physical_pixel_sizes for s in stacks] == [{"X": 0.1, "Y": 0.1}, {"X": 0.2, "Y": 0.2}] * 2


# -- 8. torch tensors and foreign array-likes: read region by region, never kept in the decoded-chunk cache --------
def test_patches_of_a_torch_tensor_stack_keep_nothing_in_the_chunk_cache() -> None:
    torch = pytest.importorskip("torch")
    data = np.random.default_rng(8).random((4, 2, 128, 96), dtype=np.float32)
    (stack,) = lazystack.load_arrays([torch.from_numpy(data)], "SCYX")
    requests = [(s % 4, None, (7 * s, 3 * s), (32, 32)) for s in range(12)]
    with lazystack.chunk_cache_size(64 * 2**20):  # on, whatever the environment says
        cache = get_chunk_cache()
        cache.clear()
        assert cache.enabled
        for request in requests:  # one by one, twice: a cache would serve the second round
            for _ in range(2):
                np.testing.assert_array_equal(stack.extract_patch(*request), _numpy_patch(data, *request))
        for got, request in zip(stack.extract_patches(requests), requests, strict=True):
            np.testing.assert_array_equal(got, _numpy_patch(data, *request))
        stats = cache.stats()
    assert (stats.entries, stats.nbytes, stats.hits, stats.misses) == (0, 0, 0, 0)  # no copy of in-memory data kept


def _numpy_patch(data: np.ndarray, sample: int, channels: Any, coords: tuple[int, int], size: tuple[int, int]) -> Any:
    out = np.zeros((data.shape[1], *size), np.float32)
    (y, x), (h, w) = coords, size
    block = data[sample, :, y : y + h, x : x + w]
    out[:, : block.shape[1], : block.shape[2]] = block
    return out


def test_a_torch_tensor_reader_declares_no_decoding() -> None:
    """An in-memory CPU torch tensor is raw bytes (a region read is a memory copy), as a numpy array is."""
    torch = pytest.importorskip("torch")
    (stack,) = lazystack.load_arrays([torch.zeros((2, 32, 32))], "SYX")
    assert stack.reader.as_chunked() is None  # region by region: no chunk grid, no cache
    assert stack.reader.capabilities.compressed is False


def test_only_raw_in_memory_arrays_are_declared_undecoded() -> None:
    """numpy arrays and CPU tensors are raw memory; a dask array's blocks are computed (real work)."""
    import dask.array as da

    torch = pytest.importorskip("torch")
    stacks = lazystack.load_arrays([np.zeros((2, 8, 8)), torch.zeros((2, 8, 8)), da.zeros((2, 8, 8))], "SYX")
    assert [s.reader.capabilities.compressed for s in stacks] == [False, False, True]
