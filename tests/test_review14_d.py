"""Review of hostile14 (session 14, reviewer D): the cases its tests did not try.

Each test failed on the merged ``hostile14`` before its fix here (or is an ``xfail(strict=True)`` naming the
fix it needs elsewhere); the last part keeps the variants that held up.
"""

from __future__ import annotations

import importlib.util
import json
import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import lazystack
from lazystack import SourceReadError
from lazystack.ops.normalize import normalization_parameters
from lazystack.sources import custom as custom_source


# -- custom readers: the dtype cast rule ---------------------------------------------------------------------------
class _Int64AsFloat64:
    """Declares float64; returns int64 values above 2**53, which float64 does not hold exactly."""

    shape = (2, 2)
    dtype = np.dtype(np.float64)

    def __getitem__(self, key: Any) -> np.ndarray:
        return np.array([[2**53 + 1, 2**60 + 1], [3, 2**62 + 3]], np.int64)[key]


class _Uint64AsFloat64(_Int64AsFloat64):
    def __getitem__(self, key: Any) -> np.ndarray:
        return np.array([[2**53 + 1, 2**64 - 1], [3, 2**63 + 3]], np.uint64)[key]


class _Int32AsFloat64(_Int64AsFloat64):
    """int32 in float64: every value held exactly (cast, as before)."""

    def __getitem__(self, key: Any) -> np.ndarray:
        return np.array([[-(2**31), 2**31 - 1], [3, -7]], np.int32)[key]


def read_int64_as_float64(path: Path, **kwargs: Any) -> Any:
    return _Int64AsFloat64()


def read_uint64_as_float64(path: Path, **kwargs: Any) -> Any:
    return _Uint64AsFloat64()


def read_int32_as_float64(path: Path, **kwargs: Any) -> Any:
    return _Int32AsFloat64()


@pytest.mark.parametrize("read_func", [read_int64_as_float64, read_uint64_as_float64])
def test_custom_region_of_64_bit_ints_for_a_declared_float64_is_refused(tmp_path: Path, read_func: Any) -> None:
    """hostile14 casts "a dtype the declared one holds exactly" with ``np.can_cast(..., 'safe')``; numpy calls
    int64 -> float64 safe, but 2**53 + 1 becomes 2**53: the stack silently returned other values than the reader."""
    path = tmp_path / "a.bin"
    path.write_bytes(b"x")
    stack = lazystack.load_custom_file([path], "YX", read_func=read_func)[0]
    custom_source.clear_cache()
    with pytest.raises(SourceReadError, match=r"returned dtype u?int64 .*declares dtype float64"):
        stack.data.compute()


def test_custom_region_of_int32_for_a_declared_float64_is_cast(tmp_path: Path) -> None:
    """Held exactly: still cast (the rule's legitimate case)."""
    path = tmp_path / "a.bin"
    path.write_bytes(b"x")
    stack = lazystack.load_custom_file([path], "YX", read_func=read_int32_as_float64)[0]
    got = stack.data.compute()
    assert got.dtype == np.float64
    np.testing.assert_array_equal(got[0, 0], np.array([[-(2**31), 2**31 - 1], [3, -7]], np.float64))


class _Exact:
    """A lazy array-like of the declared shape and dtype: the region check must accept every key form."""

    def __init__(self, data: np.ndarray) -> None:
        self._data = data
        self.shape = data.shape
        self.dtype = data.dtype

    def __getitem__(self, key: Any) -> np.ndarray:
        return self._data[key]


_EXACT = np.arange(3 * 10 * 12, dtype=np.uint16).reshape(3, 10, 12)


def read_exact(path: Path, **kwargs: Any) -> Any:
    return _Exact(_EXACT)


def test_custom_lazy_regions_of_every_form_are_read(tmp_path: Path) -> None:
    """The region shape check (made cheaper here: no broadcast view per read) agrees with numpy for the
    views and patches a user reads, integer or slice, clipped at the edge or not."""
    path = tmp_path / "a.bin"
    path.write_bytes(b"x")
    stack = lazystack.load_custom_file([path], "ZYX", read_func=read_exact)[0]
    np.testing.assert_array_equal(stack.data.compute()[0, 0], _EXACT)
    np.testing.assert_array_equal(stack.data[0, 0, 1, 2:9, 11].compute(), _EXACT[1, 2:9, 11])
    np.testing.assert_array_equal(stack.data[0, 0, :, -3:, ::-2].compute(), _EXACT[:, -3:, ::-2])
    patch = stack.extract_patch(0, None, (1, 7, 9), (2, 5, 5))
    ref = np.zeros((2, 5, 5), np.float32)
    ref[:, :3, :3] = _EXACT[1:3, 7:10, 9:12]
    np.testing.assert_array_equal(patch[0], ref)
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(stack)).data[0, 0, 2, 4:6].compute(), _EXACT[2, 4:6])


# -- write_ome_zarr: file URLs ---------------------------------------------------------------------------------------
def test_write_ome_zarr_to_a_single_slash_file_url_writes_the_absolute_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``file:/abs/out.zarr`` (RFC 8089's short form, what ``Path.as_uri()`` readers and many tools accept) was a
    relative path: the store went to ``./file:/abs/out.zarr`` under the working folder."""
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    stack = lazystack.load_arrays(np.arange(48, dtype=np.uint8).reshape(6, 8), "YX")[0]
    target = tmp_path / "out.zarr"
    lazystack.write_ome_zarr(stack, f"file:{target}", levels=1)
    assert not (work / "file:").exists()
    np.testing.assert_array_equal(lazystack.load(str(target))[0].data.compute()[0, 0], np.arange(48).reshape(6, 8))


def test_zarr_store_written_to_a_localhost_file_url_loads_from_the_same_url(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """write_ome_zarr('file://localhost/abs/o.zarr') writes /abs/o.zarr; load() of the same URL looked for
    ./localhost/abs/o.zarr under the working folder (SourceNotFoundError, or another store if one is there)."""
    monkeypatch.chdir(tmp_path)
    data = np.arange(48, dtype=np.uint8).reshape(6, 8)
    url = f"file://localhost{tmp_path}/o.zarr"
    lazystack.write_ome_zarr(lazystack.load_arrays(data, "YX")[0], url, levels=1)
    np.testing.assert_array_equal(lazystack.load(url)[0].data.compute()[0, 0], data)


# -- absolute paths kept by the readers: a working folder that no longer exists ---------------------------------------
def read_npy(path: Path, **kwargs: Any) -> np.ndarray:
    return np.load(path)


def test_absolute_paths_load_when_the_working_folder_was_removed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, shared_czi_dir: Path
) -> None:
    """hostile14 made CZI, bioio and custom readers keep ``system_path(os.path.join(os.getcwd(), path))``:
    ``os.getcwd()`` raises in a removed working folder (a notebook started in a deleted temporary folder), so an
    *absolute* path that loaded on 2cd0904 failed with a bare ``FileNotFoundError`` naming nothing
    (``write_ome_zarr`` to an absolute path failed the same way before)."""
    data = np.arange(6 * 8, dtype=np.uint16).reshape(6, 8)
    np.save(tmp_path / "a.npy", data)
    czi = sorted(shared_czi_dir.glob("*.czi"))[0]
    ref_czi = lazystack.load(str(czi))[0].data.compute()  # read from an existing working folder
    tifffile = pytest.importorskip("tifffile")
    tifffile.imwrite(tmp_path / "b.ome.tif", data, ome=True)
    gone = tmp_path / "gone"
    gone.mkdir()
    monkeypatch.chdir(gone)
    gone.rmdir()
    stack = lazystack.load_custom_file([tmp_path / "a.npy"], "YX", read_func=read_npy)[0]
    np.testing.assert_array_equal(stack.data.compute()[0, 0], data)
    np.testing.assert_array_equal(lazystack.load(str(czi))[0].data.compute(), ref_czi)
    if importlib.util.find_spec("bioio_ome_tiff") is not None:
        bio = lazystack.load_bioio(str(tmp_path / "b.ome.tif"), "YX")[0]
        np.testing.assert_array_equal(bio.data.compute()[0, 0], tifffile.imread(tmp_path / "b.ome.tif"))
    lazystack.write_ome_zarr(stack, tmp_path / "o.zarr", levels=1)
    np.testing.assert_array_equal(lazystack.load(str(tmp_path / "o.zarr"))[0].data.compute()[0, 0], data)


# -- memory maps: the user's own writable mapping ------------------------------------------------------------------
def test_writable_memmap_written_by_its_owner_reads_the_same_in_another_process(tmp_path: Path) -> None:
    """``load_arrays(np.lib.format.open_memmap(..., mode='w+'))`` filled in place after the stack was made: the
    creating process reads the new values through its shared mapping, and so did a process mapping the file again
    (2cd0904); hostile14's stamp refused it there (the owner's writes changed the mtime). A file replaced (new
    inode) is still refused."""
    path = tmp_path / "w.npy"
    mm = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(6, 8))
    mm[:] = 1
    mm.flush()
    stack = lazystack.load_arrays(mm, "YX")[0]
    st = os.stat(path)
    mm[:] = np.arange(48, dtype=np.float32).reshape(6, 8)
    mm.flush()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # what the kernel does on write, made certain
    np.testing.assert_array_equal(stack.data.compute()[0, 0], np.arange(48).reshape(6, 8))
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(stack)).data.compute()[0, 0], np.arange(48).reshape(6, 8))
    replaced = tmp_path / "new.npy"
    np.save(replaced, np.zeros((6, 8), np.float32))
    os.replace(replaced, path)
    with pytest.raises(SourceReadError, match=r"changed since the stack was opened \(inode"):
        pickle.loads(pickle.dumps(stack)).data.compute()


# -- what held up ------------------------------------------------------------------------------------------------------
def test_constant_channels_still_normalise_from_statistics_and_their_json() -> None:
    """std 0 and min == max (a constant channel) give scale 1 as before, from the statistics object, its to_dict()
    and a JSON round trip; only the keys a method reads are enough."""
    data = np.stack([np.full((8, 8), 5.0, np.float32), np.arange(64, dtype=np.float32).reshape(8, 8)])
    stack = lazystack.load_arrays(data, "CYX")[0]
    stats = lazystack.channel_statistics(stack, percentiles=(1, 99))
    for given in (stats, stats.to_dict(), json.loads(stats.to_json())):
        for method in ("zscore", "minmax", "percentile"):
            offset, scale = normalization_parameters(given, method)
            assert (offset[0], scale[0]) == (5.0, 1.0)
    offset, scale = normalization_parameters({"mean": [5.0], "std": [0.0]}, "zscore")
    assert (offset.tolist(), scale.tolist()) == ([5.0], [1.0])


def test_memmap_and_custom_files_touched_without_change_are_read_in_the_creating_process(tmp_path: Path) -> None:
    """The stamp checks run only when a file is opened again: the creating process keeps serving its mapping / its
    lazy result after ``touch`` (a worker or a fresh process refuses it, as TIFF and CZI already did)."""
    data = np.arange(64, dtype=np.uint16).reshape(8, 8)
    path = tmp_path / "a.npy"
    np.save(path, data)
    mm = lazystack.load_arrays(np.load(path, mmap_mode="r"), "YX")[0]
    lazy = lazystack.load_custom_file([path], "YX", read_func=lambda p, **k: np.load(p, mmap_mode="r"))[0]
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    np.testing.assert_array_equal(mm.data.compute()[0, 0], data)
    np.testing.assert_array_equal(lazy.data.compute()[0, 0], data)
    with pytest.raises(SourceReadError, match=r"changed since the stack was opened \(mtime_ns"):
        pickle.loads(pickle.dumps(mm)).data.compute()


class _Returns:
    """Declares ``declared``; every region is ``values`` cast to ``got``."""

    def __init__(self, declared: str, got: str, values: list[Any]) -> None:
        self.shape = (1, len(values))
        self.dtype = np.dtype(declared)
        self._data = np.array([values]).astype(got)

    def __getitem__(self, key: Any) -> np.ndarray:
        return self._data[key]


def read_returns(path: Path, *, declared: str, got: str, values: list[Any]) -> Any:
    return _Returns(declared, got, values)


@pytest.mark.parametrize(
    ("declared", "got", "values", "cast"),
    [
        ("u2", "u1", [0, 255], True),
        ("i2", "u1", [0, 255], True),
        (">u2", "<u2", [1, 65535], True),
        ("<u2", ">u2", [1, 65535], True),
        ("f4", "?", [True, False], True),
        ("f4", "i2", [-32768, 32767], True),
        ("f8", "u4", [0, 2**32 - 1], True),
        ("f8", "f4", [np.nan, np.inf, 1.5], True),
        ("u1", "i1", [-1, 5], False),
        ("u2", "i8", [1, 2], False),
        ("?", "u1", [0, 1], False),
        ("f4", "f8", [np.nan, 0.1], False),
        ("f4", "i4", [2**24 + 1, 0], False),
        ("u2", "f4", [1.0, 2.0], False),
    ],
)
def test_custom_region_dtype_rule_casts_only_what_the_declared_dtype_holds(
    tmp_path: Path, declared: str, got: str, values: list[Any], cast: bool
) -> None:
    """Signed into unsigned, floats or NaN into ints, bools from ints and 32-bit ints into float32 are refused;
    narrower, byte-swapped and bool-into-float regions are cast, values kept (NaN and inf included)."""
    path = tmp_path / "a.bin"
    path.write_bytes(b"x")
    kwargs = {"declared": declared, "got": got, "values": values}
    stack = lazystack.load_custom_file([path], "YX", read_func=read_returns, read_kwargs=kwargs)[0]
    if cast:
        out = stack.data.compute()[0, 0]
        assert out.dtype == np.dtype(declared)
        np.testing.assert_array_equal(out, np.array([values]).astype(got).astype(declared))
    else:
        with pytest.raises(SourceReadError, match=rf"returned dtype {np.dtype(got)} .*declares dtype"):
            stack.data.compute()
