"""Review of session 13's fix13 (``..`` through a symlink, file:// URLs, all-NaN channels, multi-file OME-TIFF).

Each test is an input the fix13 tests did not try. References are independent: numpy arrays written with
tifffile / zarr / pylibCZIrw, ``os.path.realpath`` (where the system opens a path), file sizes from ``os.stat``.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from urllib.parse import quote

import dask
import numpy as np
import pytest
import tifffile
from test_fixes13 import _linked, _multifile_ome

from lazystack import (
    UnsupportedSourceError,
    channel_statistics,
    load,
    load_arrays,
    load_bioio,
    load_czis,
    load_zarrs,
    normalized,
    propose_axes,
    write_ome_zarr,
)
from lazystack.loading.auto import source_kind
from lazystack.sampling import RandomSampler
from lazystack.sampling.manifest import ManifestMismatchError, read_manifest, source_identity, write_manifest


def _same_stamp(a: Path, b: Path) -> None:
    """Give ``a`` the modification time of ``b`` (the files have the same size): only their place tells them apart."""
    assert a.stat().st_size == b.stat().st_size
    st = b.stat()
    os.utime(a, ns=(st.st_mtime_ns, st.st_mtime_ns))


# -- ``..`` after a symlink: the loaders fix13 did not touch (fixed by 00609a6) ----------------------------------------
def test_czi_through_link_dotdot_and_beside_read_their_own_data(tmp_path: Path) -> None:
    pyczi = pytest.importorskip("pylibCZIrw.czi")
    _, link = _linked(tmp_path)
    for path, value in ((tmp_path / "a" / "x.czi", 7), (tmp_path / "x.czi", 9)):
        with pyczi.create_czi(str(path), exist_ok=True) as w:
            w.write(data=np.full((16, 16), value, np.uint8), plane={"C": 0, "T": 0, "Z": 0})
    _same_stamp(tmp_path / "a" / "x.czi", tmp_path / "x.czi")
    (through,) = load_czis(f"{link}/../x.czi", "SCYX")
    (here,) = load_czis(tmp_path / "x.czi", "SCYX")
    got_through = through.extract_patch(0, None, (0, 0), (16, 16))
    got_here = here.extract_patch(0, None, (0, 0), (16, 16))
    np.testing.assert_array_equal(got_through, np.full((1, 16, 16), 7, np.float32))
    np.testing.assert_array_equal(got_here, np.full((1, 16, 16), 9, np.float32))


def test_bioio_through_link_dotdot_and_beside_do_not_share_dask_keys(tmp_path: Path) -> None:
    pytest.importorskip("bioio_ome_tiff")
    _, link = _linked(tmp_path)
    a = np.full((16, 16), 7, np.uint8)
    b = np.full((16, 16), 9, np.uint8)
    tifffile.imwrite(tmp_path / "a" / "x.ome.tif", a, ome=True)
    tifffile.imwrite(tmp_path / "x.ome.tif", b, ome=True)
    _same_stamp(tmp_path / "a" / "x.ome.tif", tmp_path / "x.ome.tif")
    (through,) = load_bioio(f"{link}/../x.ome.tif", "YX")
    (here,) = load_bioio(tmp_path / "x.ome.tif", "YX")
    got_through, got_here = dask.compute(through.xarray.data, here.xarray.data, scheduler="sync")
    np.testing.assert_array_equal(np.asarray(got_through).reshape(16, 16), a)
    np.testing.assert_array_equal(np.asarray(got_here).reshape(16, 16), b)


# -- bytes paths: the entry points fix13 did not try --------------------------------------------------------------
@pytest.mark.parametrize("call", [propose_axes, source_kind], ids=["propose_axes", "source_kind"])
@pytest.mark.parametrize("value", [b"/x.tif", bytearray(b"/x.tif")], ids=["bytes", "bytearray"])
def test_bytes_paths_are_refused_by_propose_axes_and_source_kind_naming_the_value(call, value) -> None:  # type: ignore[no-untyped-def]
    """Not ``TypeError: cannot use a string pattern on a bytes-like object`` from a regular expression."""
    with pytest.raises(UnsupportedSourceError, match=r"x\.tif.*os\.fsdecode"):
        call(value)


# -- percent-encoded file:// URLs ------------------------------------------------------------------------------------
def test_load_zarrs_of_a_percent_encoded_file_url_through_link_dotdot_reads_where_the_system_opens(
    tmp_path: Path,
) -> None:
    """``file:///sp%20ace/link/../img.zarr``: the decoded path's ``link/..`` is the parent of the link's target."""
    base = tmp_path / "sp ace"
    base.mkdir()
    _, link = _linked(base)
    there = np.full((8, 8), 7, np.uint8)
    write_ome_zarr(load_arrays([there], "YX")[0], base / "a" / "img.zarr", levels=1)
    write_ome_zarr(load_arrays([np.full((8, 8), 9, np.uint8)], "YX")[0], base / "img.zarr", levels=1)
    url = "file://" + quote(f"{link}/../img.zarr")
    assert "%20" in url
    for stacks in (load_zarrs(url, "YX"), load(url)):
        np.testing.assert_array_equal(stacks[0].extract_patch(0, None, (0, 0), (8, 8))[0], there)


def test_load_reads_a_percent_encoded_file_url_of_a_tiff_as_load_tiffs_does(tmp_path: Path) -> None:
    """docs/loaders/tiff.md: a percent-encoded ``file://`` URL is read as its path, 'as lazystack.load() reads it'."""
    data = np.arange(3 * 8 * 8, dtype=np.uint8).reshape(3, 8, 8)
    path = tmp_path / "sp ace" / "x.tif"
    path.parent.mkdir()
    tifffile.imwrite(path, data)
    url = "file://" + quote(str(path))
    assert "%20" in url
    (stack,) = load(url, "ZYX")
    np.testing.assert_array_equal(stack.extract_patch(0, None, (0, 0, 0), (3, 8, 8))[0], data)
    assert propose_axes(url) == propose_axes(path) is not None
    (stack,) = load(f"{url}@0")  # with a selector, and the axes the file declares
    np.testing.assert_array_equal(np.asarray(stack.xarray).reshape(data.shape), data)


# -- multi-file OME-TIFF read by bioio -------------------------------------------------------------------------------
def test_bioio_multifile_ome_tiff_identity_and_write_protection_cover_the_other_files(tmp_path: Path) -> None:
    """load_bioio reads every file of a multi-file OME-TIFF (through tifffile): they are all its sources."""
    pytest.importorskip("bioio_ome_tiff")
    data = _multifile_ome(tmp_path, ["m_0.ome.tif", "m_1.ome.tif"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # bioio's own metadata warnings
        stacks = load_bioio(tmp_path / "m_0.ome.tif", "ZYX")
    np.testing.assert_array_equal(stacks[0].extract_patch(0, None, (0, 0, 0), data.shape)[0], data)  # both files
    sizes = sum(os.stat(tmp_path / f"m_{k}.ome.tif").st_size for k in range(2))
    assert source_identity(stacks[0])["source_bytes"] == str(sizes)
    before = (tmp_path / "m_1.ome.tif").read_bytes()
    with pytest.raises(UnsupportedSourceError, match=r"m_1\.ome\.tif"):
        write_manifest(tmp_path / "m_1.ome.tif", RandomSampler(stacks, (2, 8, 8), 4, seed=1), stacks)
    assert (tmp_path / "m_1.ome.tif").read_bytes() == before
    manifest = write_manifest(tmp_path / "m.csv", RandomSampler(stacks, (2, 8, 8), 4, seed=1), stacks)
    other = tmp_path / "m_1.ome.tif"
    st = other.stat()
    os.utime(other, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    with pytest.raises(ManifestMismatchError):
        read_manifest(manifest, stacks)


# -- all-NaN channel warning -----------------------------------------------------------------------------------------
def test_normalized_warns_at_the_callers_line_for_a_channel_without_statistics() -> None:
    """The warning names the user's call (a ``-W error::UserWarning:module`` filter and the shown line need it)."""
    data = np.stack([np.full((8, 8), np.nan, np.float32), np.ones((8, 8), np.float32)])
    (stack,) = load_arrays([data], "CYX")
    stats = channel_statistics(stack)
    for call in (lambda: normalized(stack, stats), lambda: stack.normalized(stats)):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            call()
        (w,) = [w for w in caught if "no statistics" in str(w.message)]
        assert w.filename == __file__, w.filename
