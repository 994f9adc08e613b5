"""write_ome_zarr: round trips read back by independent readers (zarr-python, ome-zarr-py, ngff-zarr)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import dask
import dask.array as da
import numpy as np
import pytest
import zarr

from lazystack import LazyImageStack, UnsupportedSourceError, load_arrays
from lazystack.ops.writing import ome_axes, write_ome_zarr

ROOT = Path(__file__).resolve().parents[1]


def block_mean(x: np.ndarray, axes: str, factor: int, dtype: np.dtype) -> np.ndarray:
    """numpy reference of one pyramid step: block mean over Y and X, excess trimmed, ints rounded."""
    y, xa = axes.index("Y"), axes.index("X")
    ny, nx = x.shape[y] // factor, x.shape[xa] // factor
    x = np.take(np.take(x, range(ny * factor), axis=y), range(nx * factor), axis=xa).astype(np.float64)
    shape = list(x.shape)
    shape[xa : xa + 1] = [nx, factor]
    x = x.reshape(shape).mean(axis=xa + 1)
    shape = list(x.shape)
    shape[y : y + 1] = [ny, factor]
    x = x.reshape(shape).mean(axis=y + 1)
    return (np.rint(x) if np.dtype(dtype).kind in "biu" else x).astype(dtype)


def written(stack_data: np.ndarray, axes: str) -> np.ndarray:
    return stack_data.transpose([axes.index(a) for a in ome_axes(axes)])


def test_round_trip_with_pyramid_read_by_zarr_and_ome_zarr(tmp_path: Path) -> None:
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    rng = np.random.default_rng(0)
    data = rng.integers(0, 60000, (3, 2, 70, 90)).astype(np.uint16)
    (stack,) = load_arrays([da.from_array(data, chunks=(1, 1, 35, 45))], "TCYX")
    path = write_ome_zarr(stack, tmp_path / "img.zarr", chunks=32)
    assert path == str(tmp_path / "img.zarr")

    group = zarr.open_group(path, mode="r")
    assert group.metadata.zarr_format == 3
    ome = group.attrs["ome"]
    assert ome["version"] == "0.5"
    (ms,) = ome["multiscales"]
    assert [a["name"] for a in ms["axes"]] == ["t", "c", "y", "x"]
    assert [a["type"] for a in ms["axes"]] == ["time", "channel", "space", "space"]
    assert [d["path"] for d in ms["datasets"]] == ["0", "1", "2"]
    assert ms["datasets"][2]["coordinateTransformations"][0] == {"type": "scale", "scale": [1.0, 1.0, 4.0, 4.0]}
    assert ms["datasets"][1]["coordinateTransformations"][1] == {
        "type": "translation",
        "translation": [0.0, 0.0, 0.5, 0.5],
    }
    level0 = group["0"]
    assert level0.chunks == (1, 1, 32, 32)
    assert level0.metadata.dimension_names == ("t", "c", "y", "x")
    np.testing.assert_array_equal(level0[:], data)
    expected = data
    for level in (1, 2):
        expected = block_mean(expected, "TCYX", 2, data.dtype)
        np.testing.assert_array_equal(group[str(level)][:], expected)
    assert [group[str(i)].shape for i in range(3)] == [(3, 2, 70, 90), (3, 2, 35, 45), (3, 2, 17, 22)]

    nodes = list(Reader(parse_url(path))())
    assert [tuple(d.shape) for d in nodes[0].data] == [(3, 2, 70, 90), (3, 2, 35, 45), (3, 2, 17, 22)]
    np.testing.assert_array_equal(np.asarray(nodes[0].data[0]), data)


def test_read_by_ngff_zarr(tmp_path: Path) -> None:
    ngff_zarr = pytest.importorskip("ngff_zarr")
    rng = np.random.default_rng(1)
    data = rng.normal(size=(5, 40, 48)).astype(np.float32)
    stack = LazyImageStack(data, "ZYX", attrs={"physical_pixel_sizes": {"Z": 2.0, "Y": 0.5, "X": 0.25}})
    write_ome_zarr(stack, tmp_path / "z.zarr", levels=2)
    multiscales = ngff_zarr.from_ngff_zarr(str(tmp_path / "z.zarr"))
    image = multiscales.images[0]
    assert tuple(image.dims) == ("z", "y", "x")
    assert image.scale == {"z": 2.0, "y": 0.5, "x": 0.25}
    np.testing.assert_array_equal(np.asarray(image.data), data)
    low = multiscales.images[1]
    assert low.scale == {"z": 2.0, "y": 1.0, "x": 0.5}
    np.testing.assert_allclose(np.asarray(low.data), block_mean(data, "ZYX", 2, np.float32), rtol=1e-6)
    axes = zarr.open_group(str(tmp_path / "z.zarr"), mode="r").attrs["ome"]["multiscales"][0]["axes"]
    assert all(a["unit"] == "micrometer" for a in axes)


@pytest.mark.parametrize(
    ("axes", "shape", "expected"),
    [
        ("XYC", (40, 30, 3), "CYX"),
        ("YX", (33, 17), "YX"),
        ("CYXT", (2, 16, 20, 3), "TCYX"),
        ("ZCYXT", (4, 2, 24, 24, 3), "TCZYX"),
    ],
)
def test_axes_are_written_in_ngff_order(tmp_path: Path, axes: str, shape: tuple[int, ...], expected: str) -> None:
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    data = np.arange(np.prod(shape), dtype=np.int32).reshape(shape)
    (stack,) = load_arrays([data], axes)
    path = write_ome_zarr(stack, tmp_path / "a.zarr", levels=2)
    assert ome_axes(axes) == expected
    group = zarr.open_group(path, mode="r")
    names = [a["name"] for a in group.attrs["ome"]["multiscales"][0]["axes"]]
    assert "".join(names).upper() == expected
    np.testing.assert_array_equal(group["0"][:], written(data, axes))
    np.testing.assert_array_equal(group["1"][:], block_mean(written(data, axes), expected, 2, np.int32))
    nodes = list(Reader(parse_url(path))())  # ome-zarr-py validates the axes
    np.testing.assert_array_equal(np.asarray(nodes[0].data[0]), written(data, axes))


def test_view_and_channel_names(tmp_path: Path) -> None:
    data = np.random.default_rng(2).integers(0, 255, (4, 3, 32, 32)).astype(np.uint8)
    stack = LazyImageStack(data, "TCYX", coords={"C": ["dapi", "gfp", "rfp"]})
    view = stack.isel(T=slice(1, 4, 2), C=slice(1, 3), X=slice(3, 30))
    path = write_ome_zarr(view, tmp_path / "v.zarr", levels=1)
    group = zarr.open_group(path, mode="r")
    np.testing.assert_array_equal(group["0"][:], data[1:4:2, 1:3, :, 3:30])
    assert list(group.array_keys()) == ["0"]
    assert [c["label"] for c in group.attrs["ome"]["omero"]["channels"]] == ["gfp", "rfp"]


def test_levels_stop_before_an_axis_vanishes(tmp_path: Path) -> None:
    (stack,) = load_arrays([np.ones((5, 9), np.uint16)], "YX")
    group = zarr.open_group(write_ome_zarr(stack, tmp_path / "s.zarr", levels=10), mode="r")
    assert [group[k].shape for k in sorted(group.array_keys())] == [(5, 9), (2, 4), (1, 2)]
    assert len(group.attrs["ome"]["multiscales"][0]["datasets"]) == 3


@pytest.mark.parametrize(
    ("chunks", "expected"),
    [
        (None, (1, 1, 20, 64, 64)),
        (16, (1, 1, 20, 16, 16)),
        ({"z": 5, "Y": -1}, (1, 1, 5, 64, 8)),
        ((2, 2, 4, 8, 8), (2, 2, 4, 8, 8)),
    ],
)
def test_chunks_option(tmp_path: Path, chunks: object, expected: tuple[int, ...]) -> None:
    if isinstance(chunks, dict):
        chunks = {**chunks, "X": 8}
    (stack,) = load_arrays([np.zeros((2, 3, 20, 64, 64), np.uint8)], "TCZYX")
    group = zarr.open_group(write_ome_zarr(stack, tmp_path / "c.zarr", chunks=chunks, levels=1), mode="r")
    assert group["0"].chunks == expected


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"chunks": {"Q": 3}}, "does not have"),
        ({"chunks": (1, 2, 3)}, "chunks must be"),
        ({"chunks": {"Y": 0}}, "positive int"),
        ({"levels": 0}, "levels must be"),
        ({"downscale": 1}, "downscale must be"),
    ],
)
def test_bad_options(tmp_path: Path, kwargs: dict, match: str) -> None:
    (stack,) = load_arrays([np.zeros((8, 8), np.uint8)], "YX")
    with pytest.raises(ValueError, match=match):
        write_ome_zarr(stack, tmp_path / "bad.zarr", **kwargs)
    assert not (tmp_path / "bad.zarr").exists()
    assert os.listdir(tmp_path) == []


def test_remote_uri_and_non_stack_are_rejected(tmp_path: Path) -> None:
    (stack,) = load_arrays([np.zeros((8, 8), np.uint8)], "YX")
    with pytest.raises(UnsupportedSourceError, match="local paths only"):
        write_ome_zarr(stack, "s3://bucket/x.zarr")
    with pytest.raises(UnsupportedSourceError, match="expects lazystack stacks"):
        write_ome_zarr([np.zeros((8, 8))], tmp_path / "x.zarr")
    with pytest.raises(ValueError, match="no stacks"):
        write_ome_zarr([], tmp_path / "x.zarr")


def test_list_of_stacks_is_one_group(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    a = rng.integers(0, 100, (2, 30, 40)).astype(np.uint16)
    b = rng.integers(0, 100, (2, 16, 24)).astype(np.uint16)
    stacks = load_arrays([a, b], "CYX")
    path = write_ome_zarr(stacks, tmp_path / "many.zarr", levels=2)
    root = zarr.open_group(path, mode="r")
    assert root.attrs["ome"] == {"version": "0.5", "bioformats2raw.layout": 3}
    assert sorted(root.group_keys()) == ["0", "1"]
    for key, data in (("0", a), ("1", b)):
        image = root[key]
        assert image.attrs["ome"]["multiscales"][0]["datasets"][1]["path"] == "1"
        np.testing.assert_array_equal(image["0"][:], data)
        np.testing.assert_array_equal(image["1"][:], block_mean(data, "CYX", 2, np.uint16))


def test_existing_path_needs_overwrite(tmp_path: Path) -> None:
    (one,) = load_arrays([np.ones((8, 8), np.uint8)], "YX")
    (two,) = load_arrays([np.full((8, 8), 2, np.uint8)], "YX")
    path = write_ome_zarr(one, tmp_path / "o.zarr", levels=1)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        write_ome_zarr(two, path)
    assert zarr.open_group(path, mode="r")["0"][0, 0] == 1
    write_ome_zarr(two, path, overwrite=True, levels=1)
    assert zarr.open_group(path, mode="r")["0"][0, 0] == 2
    assert sorted(os.listdir(tmp_path)) == ["o.zarr"]  # no partial or old folder left behind


class FailingReader:
    """Reads ones, but fails on any read that covers row ``fail_at``."""

    def __init__(self, shape: tuple[int, ...], fail_at: int) -> None:
        self.shape, self.dtype, self.fail_at = shape, np.dtype(np.uint16), fail_at
        self.chunks = (8, shape[1])

    def __getitem__(self, key: tuple[slice, ...]) -> np.ndarray:
        if key[0].start <= self.fail_at < key[0].stop:
            msg = "disk on fire"
            raise OSError(msg)
        return np.ones(tuple(k.stop - k.start for k in key), self.dtype)


def test_a_failed_write_leaves_nothing_that_looks_complete(tmp_path: Path) -> None:
    stack = LazyImageStack(FailingReader((64, 32), fail_at=40), "YX")
    with pytest.raises(OSError, match="disk on fire"):
        write_ome_zarr(stack, tmp_path / "f.zarr", chunks=8)
    assert os.listdir(tmp_path) == []

    (good,) = load_arrays([np.full((8, 8), 7, np.uint16)], "YX")
    path = write_ome_zarr(good, tmp_path / "f.zarr", levels=1)
    with pytest.raises(OSError, match="disk on fire"):
        write_ome_zarr(stack, path, overwrite=True)
    np.testing.assert_array_equal(zarr.open_group(path, mode="r")["0"][:], np.full((8, 8), 7))  # old one intact
    assert sorted(os.listdir(tmp_path)) == ["f.zarr"]


def test_a_failed_write_waits_for_the_writes_still_running(tmp_path: Path) -> None:
    # regression: dask's threaded scheduler raised on the first failed task while other threads were
    # still writing; their late writes recreated the partial folder the failed write had removed
    from dask import delayed

    from lazystack.ops.writing import _compute_and_wait

    started = threading.Barrier(4)

    def write(i: int) -> None:
        started.wait(timeout=60)  # all four tasks are running (a bound on a hang only)
        if i == 0:
            raise OSError("disk on fire")
        time.sleep(0.3)
        (tmp_path / f"chunk{i}").write_bytes(b"x")

    tasks = [delayed(write)(i) for i in range(4)]
    with dask.config.set(scheduler="threads", num_workers=4), pytest.raises(OSError, match="disk on fire"):
        _compute_and_wait(tasks, progress=False)
    assert sorted(os.listdir(tmp_path)) == ["chunk1", "chunk2", "chunk3"]  # finished before the error surfaced


def test_a_killed_writer_leaves_no_store_at_path(tmp_path: Path) -> None:
    data = np.random.default_rng(4).integers(0, 1000, (16, 64, 64)).astype(np.uint16)
    np.save(tmp_path / "src.npy", data)
    out = tmp_path / "out" / "k.zarr"
    script = textwrap.dedent(
        f"""
        import dask
        from benchmarks.bench_stats import NpyChunkReader
        from lazystack import LazyImageStack
        from lazystack.ops.writing import write_ome_zarr
        reader = NpyChunkReader({str(tmp_path / "src.npy")!r}, chunks=(1, 64, 64), delay=0.2)
        with dask.config.set(scheduler="threads", num_workers=1):
            write_ome_zarr(LazyImageStack(reader, "TYX"), {str(out)!r}, chunks=(1, 64, 64))
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT)
    try:
        deadline = time.monotonic() + 60
        chunk_files: list[Path] = []
        while time.monotonic() < deadline and len(chunk_files) < 3:  # wait until some chunks are written
            assert proc.poll() is None, "the writer finished before it could be killed"
            chunk_files = [p for p in out.parent.glob(".k.zarr.partial-*/0/c/**/*") if p.is_file()]
            time.sleep(0.05)
        assert len(chunk_files) >= 3
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    assert not out.exists()
    with pytest.raises(FileNotFoundError):
        zarr.open_group(str(out), mode="r")
    pytest.importorskip("lazystack.sources.zarr")
    from lazystack import load_zarrs

    with pytest.raises(FileNotFoundError):
        load_zarrs([out], "TYX")


def test_normalized_stack_is_written_as_float32(tmp_path: Path) -> None:
    from lazystack.ops.normalize import normalized
    from lazystack.ops.stats import channel_statistics

    data = np.random.default_rng(5).integers(0, 4000, (2, 24, 24)).astype(np.uint16)
    (stack,) = load_arrays([data], "CYX")
    norm = normalized(stack, channel_statistics(stack))
    group = zarr.open_group(write_ome_zarr(norm, tmp_path / "n.zarr", levels=1), mode="r")
    assert group["0"].dtype == np.float32
    np.testing.assert_allclose(group["0"][:], norm.compute()[0], rtol=1e-6)


def test_reopens_with_load_zarrs(tmp_path: Path) -> None:
    pytest.importorskip("lazystack.sources.zarr")
    from lazystack import load_zarrs

    data = np.random.default_rng(6).integers(0, 4000, (3, 2, 40, 36)).astype(np.uint16)
    stack = LazyImageStack(data, "TCYX", attrs={"physical_pixel_sizes": {"Y": 0.3, "X": 0.3}})
    path = write_ome_zarr(stack, tmp_path / "r.zarr", levels=2)
    stacks = load_zarrs([path], ome_axes(stack.original_axes))
    assert len(stacks) >= 1
    back = stacks[0]
    assert back.original_axes == "TCYX"
    np.testing.assert_array_equal(back.compute(), stack.compute())
    assert back.physical_pixel_sizes == {"Y": 0.3, "X": 0.3}
    if len(stacks) > 1:  # one stack per level
        np.testing.assert_array_equal(
            stacks[1].compute(), block_mean(data, "TCYX", 2, np.uint16).reshape(stacks[1].data_shape)
        )


def test_tiff_source_converts(tmp_path: Path) -> None:
    pytest.importorskip("lazystack.sources.tiff")
    import tifffile

    from lazystack import load_tiffs

    data = np.random.default_rng(7).integers(0, 4000, (3, 50, 60)).astype(np.uint16)
    tifffile.imwrite(tmp_path / "t.tif", data, tile=(16, 16), photometric="minisblack")
    (stack,) = load_tiffs([tmp_path / "t.tif"], "ZYX")
    group = zarr.open_group(write_ome_zarr(stack, tmp_path / "t.zarr", levels=2), mode="r")
    np.testing.assert_array_equal(group["0"][:], tifffile.imread(tmp_path / "t.tif"))


class RecordingReader:
    """A numpy-backed reader recording the size of every region read."""

    def __init__(self, data: np.ndarray, chunks: tuple[int, ...]) -> None:
        self.data, self.shape, self.dtype, self.chunks = data, data.shape, data.dtype, chunks
        self.sizes: list[int] = []

    def __getitem__(self, key: tuple[slice, ...]) -> np.ndarray:
        out = self.data[key]
        self.sizes.append(out.size)
        return out


def test_the_image_is_streamed_chunk_by_chunk(tmp_path: Path) -> None:
    data = np.random.default_rng(8).integers(0, 1000, (6, 128, 128)).astype(np.uint16)
    reader = RecordingReader(data, (1, 64, 64))
    path = write_ome_zarr(LazyImageStack(reader, "TYX"), tmp_path / "s.zarr", chunks=64, levels=3)
    assert max(reader.sizes) <= 64 * 64  # no read larger than one chunk, never the whole image
    assert sum(reader.sizes) == data.size  # and every pixel read once for all levels
    np.testing.assert_array_equal(zarr.open_group(path, mode="r")["0"][:], data)


def test_group_members_reopen_with_load_zarrs(tmp_path: Path) -> None:
    pytest.importorskip("lazystack.sources.zarr")
    from lazystack import load_zarrs

    rng = np.random.default_rng(9)
    arrays = [rng.integers(0, 99, (2, 20, 30)).astype(np.uint8), rng.integers(0, 99, (2, 12, 16)).astype(np.uint8)]
    path = write_ome_zarr(load_arrays(arrays, "CYX"), tmp_path / "g.zarr", levels=2)
    for i, data in enumerate(arrays):
        stacks = load_zarrs([f"{path}/{i}"], "CYX")
        np.testing.assert_array_equal(stacks[0].compute()[0], data)


def test_write_on_the_process_scheduler(tmp_path: Path) -> None:
    import dask

    data = np.random.default_rng(10).integers(0, 1000, (2, 3, 40, 40)).astype(np.uint16)
    np.save(tmp_path / "src.npy", data)
    (stack,) = load_arrays([np.load(tmp_path / "src.npy", mmap_mode="r")], "TCYX")
    with dask.config.set(scheduler="processes", num_workers=2):
        path = write_ome_zarr(stack, tmp_path / "p.zarr", chunks=16, levels=2)
    group = zarr.open_group(path, mode="r")
    np.testing.assert_array_equal(group["0"][:], data)
    np.testing.assert_array_equal(group["1"][:], block_mean(data, "TCYX", 2, np.uint16))
