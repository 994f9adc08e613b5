"""Review of the session-12 Zarr changes (zarrfix, 5387d91): each test pins a defect found, failing without its fix.

References are independent of the code under test: zarr-python's own reads, the chunk files on disk, a child
process bounded in time (a read that blocks for ever is a hang, not an answer).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import zarr
from test_hostile11 import assert_clear, run_child


def _sharded(path: Path, index_location: str) -> Path:
    codec = zarr.codecs.ShardingCodec(chunk_shape=(2, 2), index_location=index_location)
    a = zarr.create_array(str(path), shape=(8, 8), dtype="u2", chunks=(4, 4), serializer=codec, compressors=None)
    a[:] = np.arange(64, dtype="u2").reshape(8, 8)
    return path / "c" / "0" / "0"


@pytest.mark.parametrize("engine", ["direct", "zarr"])
@pytest.mark.parametrize("index_location", ["end", "start"])
def test_a_shard_replaced_by_a_fifo_is_refused_not_a_blocked_read(
    tmp_path: Path, index_location: str, engine: str
) -> None:
    """The shard index read (the direct engine's, also the zarr engine's index check) opened a FIFO and waited
    for a writer for ever; the other shards still read as zarr reads them."""
    store = tmp_path / "s.zarr"
    shard = _sharded(store, index_location)
    expected = zarr.open_array(str(store), mode="r")[4:8, 4:8]
    shard.unlink()
    os.mkfifo(shard)
    code = f"""
        from lazystack.sources.zarr.engines import set_zarr_engine
        set_zarr_engine({engine!r})
        (stack,) = lazystack.load({str(store)!r}, "YX")
        report_unblocking(lambda: stack.extract_patch(0, None, (0, 0), (4, 4)))
        report(lambda: stack.extract_patch(0, None, (4, 4), (4, 4)).tolist())
    """
    bad, good = run_child(code)
    assert_clear(bad, "SourceReadError", str(shard))
    assert good["returned"] == repr(expected.astype(np.float32)[None].tolist()), good


@pytest.mark.parametrize("engine", ["direct", "zarr"])
@pytest.mark.parametrize("compressors", [None, "auto"], ids=["raw", "zstd"])
def test_an_unsharded_chunk_replaced_by_a_fifo_is_refused(tmp_path: Path, engine: str, compressors: str | None) -> None:
    store = tmp_path / "p.zarr"
    a = zarr.create_array(str(store), shape=(8, 8), dtype="u2", chunks=(4, 4), compressors=compressors)
    a[:] = 7
    chunk = store / "c" / "0" / "0"
    chunk.unlink()
    os.mkfifo(chunk)
    code = f"""
        from lazystack.sources.zarr.engines import set_zarr_engine
        set_zarr_engine({engine!r})
        (stack,) = lazystack.load({str(store)!r}, "YX")
        report_unblocking(lambda: stack.extract_patch(0, None, (0, 0), (4, 4)))
    """
    (bad,) = run_child(code)
    assert_clear(bad, "SourceReadError", "c/0/0")


# -- 5387d91: NGFF axes that give lazystack the same letter twice -------------------------------------------------
@pytest.mark.parametrize(
    "axes",
    [
        [{"name": "c", "type": "channel"}, {"name": "y", "type": "space"}, {"name": "Y", "type": "space"}],
        [{"name": "c", "type": "channel"}, {"name": "ch", "type": "channel"}, {"name": "x", "type": "space"}],
    ],
    ids=["y-and-Y", "c-and-a-channel-typed-axis"],
)
def test_ngff_axes_with_one_letter_twice_are_a_format_error_not_an_invalid_advice(
    tmp_path: Path, axes: list[dict[str, str]]
) -> None:
    """Unique NGFF names ('y', 'Y') can still be one lazystack letter twice: no axes string reads such an image,
    so the advice ``pass axes='CYY'`` (a ShapeMismatchError) could not be followed; 5387d91 refused only equal names."""
    from test_hostile12 import _edit_ome, _image

    import lazystack

    image = _image(tmp_path / "img.zarr")
    _edit_ome(image, lambda ome: ome["multiscales"][0].__setitem__("axes", axes))
    with pytest.raises(lazystack.SourceFormatError) as info:
        lazystack.load(image, "CYX")
    message = str(info.value)
    assert str(image) in message
    for axis in axes[:2] if axes[1]["type"] == "channel" else axes[1:]:
        assert repr(axis["name"]) in message, message


@pytest.mark.parametrize("engine", ["direct", "zarr"])
@pytest.mark.parametrize("shards", [None, (8, 8)], ids=["chunks", "shards"])
def test_a_folder_in_a_chunks_place_still_reads_as_zarr_reads_it(
    tmp_path: Path, shards: tuple[int, int] | None, engine: str
) -> None:
    """The FIFO refusal keeps a folder where a chunk or shard file would be read as zarr reads it (not stored)."""
    import lazystack
    from lazystack.sources.zarr.engines import get_zarr_engine, set_zarr_engine

    store = tmp_path / "a.zarr"
    a = zarr.create_array(str(store), shape=(8, 8), dtype="u2", chunks=(4, 4), shards=shards, fill_value=3)
    a[:] = 7
    key = store / "c" / "0" / "0"
    key.unlink()
    key.mkdir()
    expected = zarr.open_array(str(store), mode="r")[:]
    before = get_zarr_engine()
    set_zarr_engine(engine)
    try:
        (stack,) = lazystack.load(store, "YX")
        np.testing.assert_array_equal(stack.extract_patch(0, None, (0, 0), (8, 8))[0], expected)
    finally:
        set_zarr_engine(before)


# -- zarrfix 1294c61: the reopen after an unpickling checks the metadata document first --------------------------
@pytest.mark.parametrize("zarr_format", [2, 3])
def test_an_unpickled_remote_reader_reopens_with_zarrs_own_requests_only(tmp_path: Path, zarr_format: int) -> None:
    """The store check of a reopen is for local stores: over HTTP a worker's reopen sends the requests zarr's own
    open sends (the reference), nothing more, then reads the chunk."""
    import pickle

    from zarr_helpers import serve_directory

    import lazystack

    group = zarr.open_group(str(tmp_path / "g.zarr"), mode="w", zarr_format=zarr_format)
    array = group.create_array("sub/arr", shape=(16, 16), chunks=(8, 8), dtype="u2")
    array[:] = np.arange(256, dtype="u2").reshape(16, 16)
    with serve_directory(tmp_path) as (url, state):
        n = len(state.requests)
        zarr.open_array(f"{url}/g.zarr/sub/arr", mode="r")
        reference = sorted(state.requests[n:])
        (stack,) = lazystack.load(f"{url}/g.zarr/sub/arr", "YX")
        blob = pickle.dumps(stack)
        n = len(state.requests)
        patch = pickle.loads(blob).extract_patch(0, None, (0, 0), (4, 4))
        sent = state.requests[n:]
    np.testing.assert_array_equal(patch[0], array[:4, :4])
    chunk = "/g.zarr/sub/arr/" + ("0.0" if zarr_format == 2 else "c/0/0")
    assert sorted(r for r in sent if r[1] != chunk) == reference, sent
    assert [r for r in sent if r[1] == chunk] == [("GET", chunk)], sent


# -- 5387d91: the version and unit warnings stay quiet on what real writers write ----------------------------------
@pytest.mark.parametrize("fmt", ["FormatV04", "FormatV05"])  # it writes no 0.1 - 0.3 any more
def test_images_written_by_ome_zarr_py_read_without_a_metadata_warning(tmp_path: Path, fmt: str) -> None:
    """ome-zarr-py's own writer (the NGFF versions it still writes, with units 'micrometer' and 'second') is the
    reference of a valid image: no MetadataWarning, and its pixels read back."""
    import warnings

    import ome_zarr.format
    from ome_zarr.io import parse_url
    from ome_zarr.writer import write_image

    import lazystack

    version = getattr(ome_zarr.format, fmt)()
    data = np.arange(2 * 3 * 16 * 16, dtype=np.uint16).reshape(2, 3, 1, 16, 16)
    axes = [
        {"name": "t", "type": "time", "unit": "second"},
        {"name": "c", "type": "channel"},
        *({"name": n, "type": "space", "unit": "micrometer"} for n in "zyx"),
    ]
    store = parse_url(str(tmp_path / "img.zarr"), mode="w", fmt=version).store
    root = zarr.group(store=store, zarr_format=3 if fmt == "FormatV05" else 2)
    write_image(data, root, axes=axes, fmt=version)
    with warnings.catch_warnings():
        warnings.simplefilter("error", lazystack.MetadataWarning)
        stacks = lazystack.load(tmp_path / "img.zarr", "TCZYX")
        stack = stacks[0]  # level 0 (ome-zarr-py writes a pyramid below it)
        patch = stack.extract_patch(1, None, (0, 0, 0), (1, 16, 16))
    assert stack.attrs["level"] == 0
    np.testing.assert_array_equal(patch, data[1, :, 0:1].astype(np.float32))


@pytest.mark.parametrize("cache", ["on", "off"])
@pytest.mark.parametrize("engine", ["auto", "tensorstore"])
def test_a_chunk_replaced_by_a_fifo_is_refused_where_tensorstore_reads(tmp_path: Path, engine: str, cache: str) -> None:
    """Large compressed chunks, several at once: ``auto`` gives the read to tensorstore (``fetch`` with the cache
    on, a region read with it off), and tensorstore opened the FIFO and waited for a writer for ever."""
    pytest.importorskip("tensorstore")
    store = tmp_path / "big.zarr"
    a = zarr.create_array(str(store), shape=(1, 1024, 512), dtype="u2", chunks=(1, 512, 512))
    a[:] = np.arange(1024 * 512, dtype="u2").reshape(1, 1024, 512)
    chunk = store / "c" / "0" / "0" / "0"
    chunk.unlink()
    os.mkfifo(chunk)
    code = f"""
        from lazystack.io.cache import set_chunk_cache_size
        from lazystack.sources.zarr.engines import set_zarr_engine
        set_zarr_engine({engine!r})
        set_chunk_cache_size({0 if cache == "off" else 64 * 2**20})
        (stack,) = lazystack.load({str(store)!r}, "TYX")
        report_unblocking(lambda: stack.extract_patch(0, None, (256, 0), (512, 64)))
    """
    (bad,) = run_child(code)
    assert_clear(bad, "SourceReadError", str(chunk))
