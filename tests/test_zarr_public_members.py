"""Public members of the Zarr reader and engines (``lazystack.sources.zarr.__all__``) stay available."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zarr

from lazystack import load
from lazystack.core.errors import AxesError, SourceFormatError
from lazystack.sources.zarr import ZarrArrayReader, open_zarr
from lazystack.sources.zarr.engines import available_engines, make_engine


def _write(tmp_path: Path, *, shards: tuple[int, int] | None = None) -> tuple[str, np.ndarray]:
    data = np.arange(12 * 16, dtype=np.uint16).reshape(12, 16)
    path = str(tmp_path / "a.zarr")
    arr = zarr.create_array(path, shape=data.shape, chunks=(4, 8), shards=shards, dtype=data.dtype)
    arr[:] = data
    return path, data


@pytest.mark.parametrize("shards", [None, (8, 16)])
def test_zarr_reader_location_and_chunk_keys(tmp_path: Path, shards: tuple[int, int] | None) -> None:
    path, _ = _write(tmp_path, shards=shards)
    (opened,) = open_zarr(path, "YX")
    reader = opened.reader
    assert isinstance(reader, ZarrArrayReader)
    assert reader.location.store_uri.rstrip("/").endswith("a.zarr")
    assert reader.location.path == ""
    keys = reader.chunk_keys((slice(0, 12), slice(0, 16)))
    grid = (8, 16) if shards else (4, 8)  # a sharded array's keys name its shards
    expected = [f"c/{i}/{j}" for i in range(-(-12 // grid[0])) for j in range(-(-16 // grid[1]))]
    assert keys == expected
    assert all((Path(path) / k).is_file() for k in keys)  # the store's own files
    assert reader.chunk_keys((slice(4, 5), slice(9, 10))) == (["c/0/0"] if shards else ["c/1/1"])


def test_every_engine_reads_a_region(tmp_path: Path) -> None:
    path, data = _write(tmp_path)
    array = zarr.open_array(path, mode="r")
    region = (slice(3, 11), slice(5, 14))
    names = available_engines(array)
    assert "zarr" in names
    for name in names:
        out = make_engine(array, name).read_region(region)
        np.testing.assert_array_equal(out, data[region], err_msg=name)


def _group_with(tmp_path: Path, attrs: dict[str, object]) -> str:
    path = str(tmp_path / "g.zarr")
    group = zarr.open_group(path, mode="w", zarr_format=3)
    group.attrs.update(attrs)
    group.create_array("a", shape=(4, 4), dtype="u1")[:] = 1
    return path


@pytest.mark.parametrize("attrs", [{"ome": {"version": "0.5", "multiscales": None}}, {"multiscales": None}])
def test_null_multiscales_declare_no_axes(tmp_path: Path, attrs: dict[str, object]) -> None:
    path = _group_with(tmp_path, attrs)
    with pytest.raises(AxesError, match="declares no axes"):  # as for a group without multiscales
        load(path)


@pytest.mark.parametrize("attrs", [{"ome": {"version": "0.5", "multiscales": 5}}, {"multiscales": 5}])
def test_multiscales_not_a_list_is_refused_by_name(tmp_path: Path, attrs: dict[str, object]) -> None:
    path = _group_with(tmp_path, attrs)
    with pytest.raises(SourceFormatError, match=r"'multiscales'.*must be a list.*got a int: 5"):
        load(path, "YX")
    with pytest.raises(AxesError, match="declares no axes"):
        load(path)
