"""Regressions an independent review of the session-11 "fixes" change found, each pinned by a test that failed
before its fix. References: zarr-python's own read of the same bytes, numpy slicing, the plate's own metadata.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr
from zarr.codecs import BloscCodec, BytesCodec, ShardingCodec

import lazystack
from lazystack.io.cache import get_chunk_cache
from lazystack.sources.zarr.engines import set_zarr_engine


@pytest.fixture(params=["zarr", "direct", "tensorstore"])
def zarr_engine(request: pytest.FixtureRequest) -> Any:
    if request.param == "tensorstore":
        pytest.importorskip("tensorstore")
    previous = set_zarr_engine(request.param)
    get_chunk_cache().clear()
    try:
        yield request.param
    finally:
        set_zarr_engine(previous)
        get_chunk_cache().clear()


# -- is_read_failure: a damaged shard index is a read failure, whatever Python error zarr's decoding raises ----------
def test_a_shard_index_with_an_offset_past_any_file_is_a_read_error(tmp_path: Path, zarr_engine: str) -> None:
    path = tmp_path / "a.zarr"
    sharding = ShardingCodec(chunk_shape=(32, 32), codecs=[BytesCodec(), BloscCodec()], index_codecs=[BytesCodec()])
    array = zarr.create_array(
        path, shape=(64, 64), dtype="uint16", chunks=(64, 64), serializer=sharding, compressors=None
    )
    array[...] = np.arange(64 * 64, dtype="uint16").reshape(64, 64)
    shard = path / "c" / "0" / "0"
    stat = os.stat(shard)
    raw = bytearray(shard.read_bytes())
    struct.pack_into("<Q", raw, len(raw) - 4 * 16, 2**64 - 5)  # the first inner chunk's offset: 2**64 - 5
    shard.write_bytes(bytes(raw))
    os.utime(shard, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # damaged bytes, not a rewrite after the opening
    with pytest.raises(Exception) as reference:  # noqa: PT011 - zarr's own read fails on these bytes
        zarr.open_array(path, mode="r")[:32, :32]
    assert not isinstance(reference.value, lazystack.LazyStackError)
    (stack,) = lazystack.load_zarrs([path], "YX")
    with pytest.raises(lazystack.SourceReadError, match=r"a\.zarr"):
        stack.extract_patch(0, None, (0, 0), (32, 32))


# -- a well group opened by its path: named as its plate names it, also when no folder of the path ends in .zarr ------
def _write_plate(path: Path) -> None:
    pytest.importorskip("ome_zarr", reason="ome-zarr-py (test extra) is not installed")
    import warnings

    root = zarr.open_group(str(path), mode="w")
    rng = np.random.default_rng(5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ome-zarr-py's deprecations, from its import on
        from ome_zarr.writer import write_image, write_plate_metadata, write_well_metadata

        write_plate_metadata(root, ["A"], ["1", "2"], ["A/1", "A/2"], name="screen-9", field_count=2)
        for column in ("1", "2"):
            well = root.require_group("A").require_group(column)
            write_well_metadata(well, [{"path": "0"}, {"path": "1"}])
            for f, shape in enumerate([(2, 32, 48), (2, 16, 40)]):  # fields of different shapes
                data = rng.integers(0, 4000, shape, dtype=np.uint16)
                write_image(data, well.require_group(str(f)), axes="cyx", scale_factors=(2,))


_NAMING = ("plate", "well", "row", "column", "field", "level")


@pytest.mark.parametrize("name", ["plate.ome.zarr", "screen"])
def test_a_well_opened_by_its_path_is_named_as_through_its_plate(tmp_path: Path, name: str) -> None:
    plate = tmp_path / name  # "screen": the store is the whole path given (no folder ends in .zarr)
    _write_plate(plate)
    well = lazystack.load(plate / "A" / "2")
    of_plate = [s for s in lazystack.load(plate) if s.attrs["well"] == "A/2"]
    assert [s.source for s in well] == [s.source for s in of_plate]
    assert [{k: s.attrs.get(k) for k in _NAMING} for s in well] == [
        {k: s.attrs.get(k) for k in _NAMING} for s in of_plate
    ]
    assert {s.attrs["plate"] for s in well} == {"screen-9"}  # the plate's own metadata name
    for stack in well:
        reference = zarr.open_array(stack.source[len("file://") :], mode="r")[...]
        np.testing.assert_array_equal(stack.compute().reshape(reference.shape), reference)


# -- napari: a normalized view overlays its stack as the view does (translate = the view's first coordinate) ----------
def test_a_napari_layer_of_a_normalized_view_sits_where_the_view_does() -> None:
    from lazystack.frontends.napari import layer_data

    data = np.arange(2 * 30 * 40, dtype=np.uint16).reshape(2, 30, 40)
    attrs = {"physical_pixel_sizes": {"Y": 0.5, "X": 0.25}, "translation": {"Y": 10.0, "X": -2.0}}
    stack = lazystack.LazyImageStack(data, "CYX", attrs=attrs)
    view = stack.isel(Y=slice(6, None, 2), X=slice(4, 20))
    normalized = view.normalized(lazystack.channel_statistics([stack], progress=False))
    # view pixel (i, j) is source pixel (6 + 2 i, 4 + j), at translation + source index * pixel size
    size_y, size_x, origin_y, origin_x = 0.5, 0.25, 10.0, -2.0
    expected = ([2 * size_y, size_x], [origin_y + 6 * size_y, origin_x + 4 * size_x])
    for shown in (view, normalized):
        _, kwargs, _ = layer_data([shown])[0]
        np.testing.assert_allclose(kwargs["scale"], expected[0])
        np.testing.assert_allclose(kwargs["translate"], expected[1])


# -- is_read_failure: a cloud store's own connection error (botocore's, raised as it is by s3fs) is a read error -------
def _store_failing_on_chunks(tmp_path: Path, protocol: str, error: Callable[[], Exception]) -> str:
    """A 64 x 64 Zarr array in an fsspec memory file system ``protocol://``: metadata reads; chunk reads raise."""
    import fsspec
    from fsspec.implementations.memory import MemoryFileSystem

    class Failing(MemoryFileSystem):
        store: dict[str, Any] = {}  # noqa: RUF012 - fsspec's MemoryFileSystem keeps its files in a class attribute
        pseudo_dirs = [""]  # noqa: RUF012

        @classmethod
        def _strip_protocol(cls, path: str) -> str:
            return MemoryFileSystem._strip_protocol(path.removeprefix(f"{protocol}://"))

        def cat_file(self, path: str, start: int | None = None, end: int | None = None, **kwargs: Any) -> bytes:
            if "/c/" in path:
                raise error()
            return super().cat_file(path, start=start, end=end, **kwargs)

        def _open(self, path: str, mode: str = "rb", **kwargs: Any) -> Any:
            if "/c/" in path and "r" in mode:
                raise error()
            return super()._open(path, mode, **kwargs)

    Failing.protocol = (protocol,)
    fsspec.register_implementation(protocol, Failing, clobber=True)
    local = tmp_path / "a.zarr"
    zarr.create_array(local, shape=(64, 64), chunks=(32, 32), dtype="uint16")[...] = 3
    fs = Failing()
    for file in local.rglob("*"):
        if file.is_file():
            fs.pipe_file(f"/bucket/a.zarr/{file.relative_to(local).as_posix()}", file.read_bytes())
    return f"{protocol}://bucket/a.zarr"


def test_an_s3_connection_error_on_a_chunk_is_a_read_error_naming_the_array(tmp_path: Path, zarr_engine: str) -> None:
    botocore_exceptions = pytest.importorskip("botocore.exceptions")

    def unreachable() -> Exception:  # what s3fs raises when the endpoint cannot be reached: not an OSError
        return botocore_exceptions.EndpointConnectionError(endpoint_url="https://s3.example.invalid/bucket")

    uri = _store_failing_on_chunks(tmp_path, "reviewunreachable", unreachable)
    (stack,) = lazystack.load_zarrs(uri, "YX")
    with pytest.raises(lazystack.SourceReadError, match=r"reviewunreachable://bucket/a\.zarr"):
        stack.extract_patch(0, None, (0, 0), (16, 16))


# -- is_read_failure: a zipped store's damaged member (zipfile's BadZipFile: a CRC mismatch) is a read error ----------
def test_a_damaged_member_of_a_zipped_store_is_a_read_error_naming_the_archive(
    tmp_path: Path, zarr_engine: str
) -> None:
    import zipfile

    folder = tmp_path / "a.zarr"
    zarr.create_array(folder, shape=(64, 64), chunks=(32, 32), dtype="uint16", compressors=None)[...] = 7
    archive = tmp_path / "a.zarr.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as zipped:
        for file in sorted(folder.rglob("*")):
            if file.is_file():
                zipped.write(file, file.relative_to(folder).as_posix())
    with zipfile.ZipFile(archive) as zipped:
        info = zipped.getinfo("c/0/0")
    raw = bytearray(archive.read_bytes())
    raw[info.header_offset + 30 + len(info.filename) + len(info.extra) + 10] ^= 0xFF  # a byte of chunk c/0/0
    archive.write_bytes(bytes(raw))
    with zipfile.ZipFile(archive) as zipped, pytest.raises(zipfile.BadZipFile):  # the reference: zipfile's CRC check
        zipped.read("c/0/0")
    (stack,) = lazystack.load_zarrs(archive, "YX")
    with pytest.raises(lazystack.SourceReadError, match=r"a\.zarr\.zip"):
        stack.extract_patch(0, None, (0, 0), (16, 16))
    np.testing.assert_array_equal(stack.extract_patch(0, None, (32, 32), (16, 16))[0], 7)  # the others read


# -- is_read_failure: any back end's own error class is a read error; only errors of code propagate -----------------
@pytest.mark.parametrize(
    ("error", "wrapped"),
    [
        (type("GcsHttpError", (Exception,), {}), True),  # gcsfs' HttpError, azure's AzureError: plain Exceptions
        (MemoryError, True),  # a shard index entry claiming a TiB
        (KeyError, True),
        (TypeError, False),
        (NotImplementedError, False),
        (AttributeError, False),
    ],
)
def test_a_store_error_of_any_back_end_is_a_read_error_and_a_bug_is_not(
    tmp_path: Path, zarr_engine: str, error: type[Exception], wrapped: bool
) -> None:
    if not wrapped and zarr_engine != "zarr":
        pytest.skip("the direct and tensorstore engines read remote stores themselves: they name any store error")
    protocol = f"reviewfailing{error.__name__.lower()}"
    uri = _store_failing_on_chunks(tmp_path, protocol, lambda: error("chunk store failure"))
    (stack,) = lazystack.load_zarrs(uri, "YX")
    if wrapped:
        with pytest.raises(lazystack.SourceReadError, match=rf"{protocol}://bucket/a\.zarr"):
            stack.extract_patch(0, None, (0, 0), (16, 16))
    else:
        with pytest.raises(error, match="chunk store failure"):
            stack.extract_patch(0, None, (0, 0), (16, 16))
