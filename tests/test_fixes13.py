"""Session 13 fixes: ``..`` through a symlink, bytes paths, file:// URLs, all-NaN channels, multi-file OME-TIFF
and selector / zip sources in manifests.

References are independent: numpy arrays written with tifffile / zarr, ``os.path.realpath`` (the system's own
resolution of a path), file sizes from ``os.stat``.
"""

from __future__ import annotations

import os
import warnings
import zipfile
from pathlib import Path

import dask
import numpy as np
import pytest
import tifffile
from ome_files import write_multifile_ome

from lazystack import (
    UnsupportedSourceError,
    load,
    load_arrays,
    load_custom_file,
    load_czis,
    load_iter_tiff,
    load_tiffs,
    load_zarrs,
    write_ome_zarr,
)
from lazystack.ops.normalize import normalization_parameters
from lazystack.ops.stats import ChannelStatistics, channel_statistics
from lazystack.sampling import RandomSampler
from lazystack.sampling.manifest import ManifestMismatchError, read_manifest, source_identity, write_manifest
from lazystack.sources import tiff as tiff_source


def _array_stack(value: int = 0, shape: tuple[int, int] = (16, 16)):  # type: ignore[no-untyped-def]
    data = (np.arange(shape[0] * shape[1]) % 251 + value).astype(np.uint8).reshape(shape)
    (stack,) = load_arrays([data], "YX")
    return stack, data


def _linked(tmp_path: Path) -> tuple[Path, Path]:
    """``tmp/a/real`` and ``tmp/link -> a/real``: ``tmp/link/..`` is ``tmp/a`` for the system, ``tmp`` as text."""
    real = tmp_path / "a" / "real"
    real.mkdir(parents=True)
    link = tmp_path / "link"
    link.symlink_to(real, target_is_directory=True)
    assert os.path.realpath(link / "..") == str(tmp_path / "a")
    return real, link


# -- 1. ``..`` after a symbolic link -----------------------------------------------------------------------------------
def test_write_through_link_dotdot_onto_a_source_is_refused(tmp_path: Path) -> None:
    _, link = _linked(tmp_path)
    image, _ = _array_stack()
    write_ome_zarr(image, tmp_path / "a" / "src.zarr", levels=1)
    (source,) = load_zarrs(tmp_path / "a" / "src.zarr", "YX")
    before = sorted(p.name for p in (tmp_path / "a" / "src.zarr").rglob("*"))
    with pytest.raises(UnsupportedSourceError, match="source"):
        write_ome_zarr(source, f"{link}/../src.zarr", levels=1, overwrite=True)
    assert not (tmp_path / "src.zarr").exists()  # not written where the text pointed either
    assert sorted(p.name for p in (tmp_path / "a" / "src.zarr").rglob("*")) == before


def test_write_through_link_dotdot_lands_where_the_system_says(tmp_path: Path) -> None:
    _, link = _linked(tmp_path)
    image, data = _array_stack(3)
    target = f"{link}/../new.zarr"
    written = write_ome_zarr(image, target, levels=1)
    assert written == os.path.realpath(target) == str(tmp_path / "a" / "new.zarr")
    assert not (tmp_path / "new.zarr").exists()
    (back,) = load_zarrs(written, "YX")
    np.testing.assert_array_equal(back.extract_patch(0, None, (0, 0), data.shape)[0], data)


def test_manifest_through_link_dotdot_onto_a_source_is_refused(tmp_path: Path) -> None:
    _, link = _linked(tmp_path)
    data = np.arange(16 * 16, dtype=np.uint16).reshape(16, 16)
    tifffile.imwrite(tmp_path / "a" / "x.tif", data)
    stacks = load_tiffs(tmp_path / "a" / "x.tif", "YX")
    before = (tmp_path / "a" / "x.tif").read_bytes()
    with pytest.raises(UnsupportedSourceError, match="source"):
        write_manifest(f"{link}/../x.tif", RandomSampler(stacks, 8, 4, seed=1), stacks)
    assert (tmp_path / "a" / "x.tif").read_bytes() == before


def test_load_zarrs_through_link_dotdot_reads_the_store_the_system_opens(tmp_path: Path) -> None:
    _, link = _linked(tmp_path)
    there, there_data = _array_stack(1)
    beside, _ = _array_stack(100)
    write_ome_zarr(there, tmp_path / "a" / "img.zarr", levels=1)
    write_ome_zarr(beside, tmp_path / "img.zarr", levels=1)  # where the text ``link/../img.zarr`` points
    for source in (f"{link}/../img.zarr", f"file://{link}/../img.zarr"):
        (stack,) = load_zarrs(source, "YX")
        np.testing.assert_array_equal(stack.extract_patch(0, None, (0, 0), (16, 16))[0], there_data)
        (stack,) = load(source, "YX")
        np.testing.assert_array_equal(stack.extract_patch(0, None, (0, 0), (16, 16))[0], there_data)


def test_load_without_axes_through_link_dotdot_proposes_the_axes_of_the_store_the_system_opens(tmp_path: Path) -> None:
    _, link = _linked(tmp_path)
    data = np.arange(3 * 8 * 8, dtype=np.uint8).reshape(3, 8, 8)
    write_ome_zarr(load_arrays([data], "CYX")[0], tmp_path / "a" / "img.zarr", levels=1)
    write_ome_zarr(load_arrays([data], "ZYX")[0], tmp_path / "img.zarr", levels=1)  # where the text points
    (stack,) = load(f"{link}/../img.zarr")
    assert stack.original_axes == "CYX"
    np.testing.assert_array_equal(stack.extract_patch(0, None, (0, 0), (8, 8)), data)  # C Y X


def test_tiffs_through_link_dotdot_and_beside_do_not_share_dask_keys(tmp_path: Path) -> None:
    """Two files with the same size and time, one reached through ``link/..``: two names, each its own data."""
    _, link = _linked(tmp_path)
    a = np.full((16, 16), 7, np.uint8)
    b = np.full((16, 16), 9, np.uint8)
    tifffile.imwrite(tmp_path / "a" / "x.tif", a)
    tifffile.imwrite(tmp_path / "x.tif", b)
    stamp = os.stat(tmp_path / "x.tif").st_mtime_ns
    os.utime(tmp_path / "a" / "x.tif", ns=(stamp, stamp))
    (through,) = load_tiffs(f"{link}/../x.tif", "YX")
    (here,) = load_tiffs(tmp_path / "x.tif", "YX")
    assert through.reader.token != here.reader.token
    got_through, got_here = dask.compute(through.xarray.data, here.xarray.data, scheduler="sync")
    np.testing.assert_array_equal(np.asarray(got_through).reshape(16, 16), a)
    np.testing.assert_array_equal(np.asarray(got_here).reshape(16, 16), b)


# -- 2. bytes paths ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("call", "value"),
    [
        (lambda v: load_tiffs(v, "YX"), b"/x.tif"),
        (lambda v: load_tiffs([v], "YX"), b"/x.tif"),
        (lambda v: load_iter_tiff(v, "YX"), b"/x.tif"),
        (lambda v: load_czis(v, "SCYX"), b"/x.czi"),
        (lambda v: load_custom_file(v, "YX", read_func=np.load), b"/x.npy"),
        (lambda v: load_zarrs(v, "YX"), b"/x.zarr"),
        (lambda v: load_zarrs([v], "YX"), b"/x.zarr"),
        (lambda v: load(v, "YX"), b"/x.tif"),
        (lambda v: load([v], "YX"), b"/x.tif"),
    ],
)
def test_bytes_paths_are_refused_by_the_loaders_naming_the_value(call, value: bytes) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(UnsupportedSourceError, match=r"os\.fsdecode") as info:
        call(value)
    assert repr(value) in str(info.value)
    assert "str or os.PathLike" in str(info.value)


def test_bytes_paths_are_refused_by_the_writers_naming_the_value(tmp_path: Path) -> None:
    image, _ = _array_stack()
    out = os.fsencode(tmp_path / "out.zarr")
    with pytest.raises(TypeError, match=r"os\.fsdecode") as info:
        write_ome_zarr(image, out)
    assert repr(out) in str(info.value)
    assert not (tmp_path / "out.zarr").exists()
    csv = os.fsencode(tmp_path / "m.csv")
    stacks = [image]
    with pytest.raises(TypeError, match=r"os\.fsdecode"):
        write_manifest(csv, RandomSampler(stacks, 8, 2, seed=0), stacks)
    with pytest.raises(TypeError, match=r"os\.fsdecode"):
        read_manifest(csv, stacks)


# -- 3. file:// URLs for the file loaders ------------------------------------------------------------------------------
def _tif(tmp_path: Path, name: str = "x.tif") -> tuple[Path, np.ndarray]:
    data = np.arange(2 * 16 * 16, dtype=np.uint16).reshape(2, 16, 16)
    path = tmp_path / name
    tifffile.imwrite(path, data)
    return path, data


@pytest.mark.parametrize("loader", [load_tiffs, load_iter_tiff])
def test_tiff_loaders_read_a_file_url_as_its_path(tmp_path: Path, loader) -> None:  # type: ignore[no-untyped-def]
    path, data = _tif(tmp_path, "a b.tif")
    for url in (f"file://{path}", f"file://localhost{path}", "file://" + str(path).replace(" ", "%20")):
        (stack,) = loader(url, "ZYX")
        assert stack.source == str(path)
        np.testing.assert_array_equal(stack.extract_patch(0, None, (0, 0, 0), (2, 16, 16))[0], data)


def test_load_tiffs_reads_a_file_url_with_a_series_selector(tmp_path: Path) -> None:
    path = tmp_path / "two.tif"
    a = np.zeros((8, 8), np.uint8)
    b = np.full((4, 4), 5, np.uint8)
    with tifffile.TiffWriter(path) as tw:
        tw.write(a)
        tw.write(b)
    (stack,) = load_tiffs(f"file://{path}@1", "YX")
    assert stack.source == f"{path}@1"
    np.testing.assert_array_equal(stack.extract_patch(0, None, (0, 0), (4, 4))[0], b)


def test_load_custom_file_reads_a_file_url_as_its_path(tmp_path: Path) -> None:
    data = np.arange(64, dtype=np.float32).reshape(8, 8)
    np.save(tmp_path / "x.npy", data)
    (stack,) = load_custom_file(f"file://{tmp_path}/x.npy", "YX", read_func=np.load)
    assert stack.source == str(tmp_path / "x.npy")
    np.testing.assert_array_equal(stack.extract_patch(0, None, (0, 0), (8, 8))[0], data)


def test_load_czis_reads_a_file_url_as_its_path(shared_czi_dir: Path) -> None:
    pytest.importorskip("pylibCZIrw")
    path = shared_czi_dir / "WellD6-7_S2.czi"
    by_path = load_czis(path, "SCYX")
    by_url = load_czis(f"file://{path}", "SCYX")
    assert [s.source for s in by_url] == [s.source for s in by_path]
    assert [s.data_shape for s in by_url] == [s.data_shape for s in by_path]


@pytest.mark.parametrize(
    ("call", "url"),
    [
        (lambda u: load_tiffs(u, "YX"), "http://example.invalid/x.tif"),
        (lambda u: load_iter_tiff(u, "YX"), "s3://bucket/x.tif"),
        (lambda u: load_czis(u, "SCYX"), "https://example.invalid/x.czi"),
        (lambda u: load_custom_file(u, "YX", read_func=np.load), "http://example.invalid/x.npy"),
        (lambda u: load_tiffs(u, "YX"), "file://server/share/x.tif"),
    ],
)
def test_other_urls_are_refused_by_the_file_loaders_naming_the_url(call, url: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(UnsupportedSourceError, match="local") as info:
        call(url)
    assert repr(url) in str(info.value)
    assert "file:///" in str(info.value)  # what is accepted


# -- 4. a channel without statistics -----------------------------------------------------------------------------------
def test_normalization_parameters_warns_for_an_all_nan_channel() -> None:
    data = np.random.default_rng(0).normal(5, 2, (2, 16, 16)).astype(np.float32)
    data[1] = np.nan
    (stack,) = load_arrays([data], "CYX")
    stats = channel_statistics(stack)
    assert stats.count.tolist() == [256, 0]
    for method in ("zscore", "minmax"):
        with pytest.warns(UserWarning, match=r"channel\(s\) \[1\] have no statistics") as record:
            offset, scale = normalization_parameters(stats, method)
        assert "NOT normalised" in str(record[0].message)
        assert offset[1] == 0.0
        assert scale[1] == 1.0
        expected = (data[0].mean(), 1 / data[0].std()) if method == "zscore" else (data[0].min(), None)
        np.testing.assert_allclose(offset[0], expected[0], rtol=1e-5)
        if expected[1] is not None:
            np.testing.assert_allclose(scale[0], expected[1], rtol=1e-4)


def test_normalization_parameters_warns_for_an_empty_channel_of_a_dict() -> None:
    stats = ChannelStatistics.from_dict(
        {"mean": [1.0, None], "std": [2.0, None], "min": [0.0, None], "max": [4.0, None], "count": [10, 0]}
    )
    with pytest.warns(UserWarning, match=r"\[1\].*value count \[0\]"):
        normalization_parameters(stats)


def test_normalization_parameters_of_finite_statistics_does_not_warn() -> None:
    (stack,) = load_arrays([np.arange(2 * 64, dtype=np.float32).reshape(2, 8, 8)], "CYX")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        normalization_parameters(channel_statistics(stack))


# -- 5. multi-file OME-TIFF --------------------------------------------------------------------------------------------
def _multifile_ome(folder: Path, names: list[str]) -> np.ndarray:
    return write_multifile_ome(folder, names, shape=(16, 24))


def test_source_files_lists_the_other_files_of_a_multifile_ome_tiff(tmp_path: Path) -> None:
    data = _multifile_ome(tmp_path, ["m_0.ome.tif", "m_1.ome.tif", "m_2.ome.tif"])
    (stack,) = load_tiffs(tmp_path / "m_0.ome.tif", "ZYX")
    np.testing.assert_array_equal(stack.extract_patch(0, None, (0, 0, 0), data.shape)[0], data)  # all three files
    expected = [str(tmp_path / f"m_{k}.ome.tif") for k in range(3)]
    assert tiff_source.source_files(tmp_path / "m_0.ome.tif") == expected
    assert tiff_source.source_files(f"{tmp_path / 'm_0.ome.tif'}@0") == expected
    tifffile.imwrite(tmp_path / "plain.tif", data[:2])
    assert tiff_source.source_files(tmp_path / "plain.tif") == [str(tmp_path / "plain.tif")]


def test_source_files_of_a_link_to_a_master_file_are_beside_its_target(tmp_path: Path) -> None:
    """tifffile looks for the other files beside the file a symbolic link names (it opens the real path)."""
    _multifile_ome(tmp_path / "sub", ["m_0.ome.tif", "m_1.ome.tif"])
    link = tmp_path / "link.ome.tif"
    link.symlink_to(tmp_path / "sub" / "m_0.ome.tif")
    assert tiff_source.source_files(link) == [str(link), str(tmp_path / "sub" / "m_1.ome.tif")]
    stacks = load_tiffs(link, "ZYX")
    with pytest.raises(UnsupportedSourceError, match=r"m_1\.ome\.tif"):
        write_manifest(tmp_path / "sub" / "m_1.ome.tif", RandomSampler(stacks, (2, 8, 8), 4, seed=1), stacks)


def test_manifest_onto_another_file_of_a_multifile_ome_tiff_is_refused(tmp_path: Path) -> None:
    _multifile_ome(tmp_path, ["m_0.ome.tif", "m_1.ome.tif"])
    stacks = load_tiffs(tmp_path / "m_0.ome.tif", "ZYX")
    before = (tmp_path / "m_1.ome.tif").read_bytes()
    with pytest.raises(UnsupportedSourceError, match=r"m_1\.ome\.tif"):
        write_manifest(tmp_path / "m_1.ome.tif", RandomSampler(stacks, (2, 8, 8), 4, seed=1), stacks)
    assert (tmp_path / "m_1.ome.tif").read_bytes() == before


def test_write_ome_zarr_over_a_store_holding_another_file_of_a_multifile_ome_tiff_is_refused(tmp_path: Path) -> None:
    store = tmp_path / "store.zarr"
    image, _ = _array_stack()
    write_ome_zarr(image, store, levels=1)  # a Zarr store an overwrite could replace ...
    _multifile_ome(tmp_path, ["m_0.ome.tif", "store.zarr/m_1.ome.tif"])  # ... holding the other file
    (stack,) = load_tiffs(tmp_path / "m_0.ome.tif", "ZYX")
    with pytest.raises(UnsupportedSourceError, match="holds"):
        write_ome_zarr(stack, store, levels=1, overwrite=True)
    assert (store / "m_1.ome.tif").is_file()


def test_manifest_detects_a_changed_other_file_of_a_multifile_ome_tiff(tmp_path: Path) -> None:
    _multifile_ome(tmp_path, ["m_0.ome.tif", "m_1.ome.tif"])
    stacks = load_tiffs(tmp_path / "m_0.ome.tif", "ZYX")
    sizes = sum(os.stat(tmp_path / f"m_{k}.ome.tif").st_size for k in range(2))
    assert source_identity(stacks[0])["source_bytes"] == str(sizes)
    manifest = write_manifest(tmp_path / "m.csv", RandomSampler(stacks, (2, 8, 8), 4, seed=1), stacks)
    read_manifest(manifest, stacks)  # unchanged: replays
    other = tmp_path / "m_1.ome.tif"
    st = other.stat()
    with tifffile.TiffFile(other) as tif:
        xml = tif.pages.first.description
        planes = np.stack([page.asarray() for page in tif.pages])  # its own planes only
    tifffile.imwrite(other, planes[::-1].copy(), description=xml, metadata=None)  # same size, other planes
    assert other.stat().st_size == st.st_size
    os.utime(other, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    with pytest.raises(ManifestMismatchError, match=r"m_0\.ome\.tif"):
        read_manifest(manifest, load_tiffs(tmp_path / "m_0.ome.tif", "ZYX"))


# -- 6. selector and zip sources in manifests --------------------------------------------------------------------------
def test_manifest_identity_of_a_tiff_series_selector_is_the_file(tmp_path: Path) -> None:
    path = tmp_path / "two.tif"
    with tifffile.TiffWriter(path) as tw:
        tw.write(np.zeros((8, 8), np.uint8))
        tw.write(np.ones((16, 16), np.uint8))
    stacks = load_tiffs(f"{path}@1", "YX")
    ident = source_identity(stacks[0])
    st = path.stat()
    assert (ident["source_bytes"], ident["source_mtime_ns"], ident["source_sha256"]) == (
        str(st.st_size),
        str(st.st_mtime_ns),
        "",
    )
    manifest = write_manifest(tmp_path / "m.csv", RandomSampler(stacks, 8, 4, seed=1), stacks)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # the file touched
    with pytest.raises(ManifestMismatchError, match="source_mtime_ns"):
        read_manifest(manifest, stacks)


def test_manifest_identity_of_a_czi_scene_is_the_file(shared_czi_dir: Path) -> None:
    pytest.importorskip("pylibCZIrw")
    path = shared_czi_dir / "WellD6-7_S2.czi"
    stacks = load_czis(f"{path}@1", "SCYX")
    assert stacks[0].source.endswith("@1")
    ident = source_identity(stacks[0])
    assert (ident["source_bytes"], ident["source_mtime_ns"]) == (str(path.stat().st_size), str(path.stat().st_mtime_ns))


def test_manifest_identity_of_a_zipped_store_is_the_zip_file(tmp_path: Path) -> None:
    image, _ = _array_stack()
    write_ome_zarr([image, image], tmp_path / "c.zarr", levels=1)
    archive = tmp_path / "c.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as zf:
        for f in sorted((tmp_path / "c.zarr").rglob("*")):
            if f.is_file():
                zf.write(f, f.relative_to(tmp_path / "c.zarr").as_posix())
    stacks = load_zarrs(archive, "YX")
    assert stacks[0].source.startswith("zip://")
    st = archive.stat()
    ident = source_identity(stacks[0])
    assert (ident["source_bytes"], ident["source_mtime_ns"]) == (str(st.st_size), str(st.st_mtime_ns))
    manifest = write_manifest(tmp_path / "m.csv", RandomSampler(stacks, 8, 4, seed=1), stacks)
    read_manifest(manifest, stacks)
    os.utime(archive, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    with pytest.raises(ManifestMismatchError, match="source_mtime_ns"):
        read_manifest(manifest, stacks)


def test_manifest_identity_of_an_array_inside_a_store_is_that_array(tmp_path: Path) -> None:
    """Already right before session 13: ``x.zarr/1/0`` exists as a folder, its files are counted."""
    image, _ = _array_stack()
    write_ome_zarr([image, image], tmp_path / "c.zarr", levels=1)
    (stack,) = load_zarrs(tmp_path / "c.zarr" / "1" / "0", "YX")
    files = [f for f in (tmp_path / "c.zarr" / "1" / "0").rglob("*") if f.is_file()]
    assert source_identity(stack)["source_bytes"] == str(sum(f.stat().st_size for f in files))
    manifest = write_manifest(tmp_path / "m.csv", RandomSampler([stack], 8, 4, seed=1), [stack])
    chunk = max(files, key=lambda f: f.stat().st_mtime_ns)
    st = chunk.stat()
    os.utime(chunk, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    with pytest.raises(ManifestMismatchError):
        read_manifest(manifest, [stack])


def test_manifest_of_an_earlier_version_for_a_selector_source_still_replays(tmp_path: Path) -> None:
    """Earlier manifests identified ``file@1`` by a hash of its data: they still replay while the data is the same."""
    path = tmp_path / "two.tif"
    with tifffile.TiffWriter(path) as tw:
        tw.write(np.zeros((8, 8), np.uint8))
        tw.write(np.arange(256, dtype=np.uint8).reshape(16, 16))
    stacks = load_tiffs(f"{path}@1", "YX")
    manifest = write_manifest(tmp_path / "m.csv", RandomSampler(stacks, 8, 4, seed=1), stacks)
    lines = manifest.read_text().splitlines()
    header = lines[0].split(",")
    from lazystack.sampling.manifest import _hash_stack

    old = []
    for line in lines[1:]:  # as an earlier version wrote it: no size / time, the hash of the data
        row = dict(zip(header, line.split(","), strict=True))
        row.update(source_bytes="", source_mtime_ns="", source_sha256=_hash_stack(stacks[0]))
        old.append(",".join(row[c] for c in header))
    manifest.write_text("\n".join([lines[0], *old]) + "\n")
    assert len(read_manifest(manifest, stacks)) == 4
