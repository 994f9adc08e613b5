"""Review of the hostile-input hardening of the TIFF source: no false refusals, no regressions, no hot-path cost.

References are tifffile's own reader (``tifffile.imread`` / ``series.asarray``)
and numpy slicing. Cases that could block (a FIFO) run in a child
interpreter with a time bound and an address-space cap (``test_hostile11.run_child``).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import tifffile
from ome_files import write_multifile_ome
from test_hostile11 import assert_clear, run_child

import lazystack
from lazystack import SourceFormatError, load_iter_tiff, load_tiffs

pytestmark = pytest.mark.timeout(180)


def _multifile_ome(folder: Path, files: int = 2) -> np.ndarray:
    return write_multifile_ome(folder, files)


# -- multi-file OME-TIFF -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("loader", [load_tiffs, load_iter_tiff])
def test_multifile_ome_reads_the_planes_of_the_other_files(tmp_path: Path, loader: object) -> None:
    """The planes a master file lists in other files read as tifffile reads them (tifffile closes those files)."""
    data = _multifile_ome(tmp_path, files=3)
    master = tmp_path / "m_0.ome.tif"
    with tifffile.TiffFile(master) as tif:
        reference = tif.series[0].asarray()
    np.testing.assert_array_equal(reference, data)  # tifffile itself follows the other files
    (stack,) = loader([master], "ZYX")  # type: ignore[operator]
    assert stack.data_shape == (1, 1, 6, 32, 48)
    for z in range(6):
        patch = stack.extract_patch(0, None, (z, 3, 5), (1, 8, 9))
        np.testing.assert_array_equal(patch[0], reference[z : z + 1, 3:11, 5:14])


def test_multifile_ome_listing_a_fifo_is_refused_not_a_blocked_open(tmp_path: Path) -> None:
    """A master file whose OME-XML lists a FIFO: tifffile would open it (and wait for a writer for ever)."""
    _multifile_ome(tmp_path)
    fifo = tmp_path / "m_1.ome.tif"
    fifo.unlink()
    os.mkfifo(fifo)
    master = str(tmp_path / "m_0.ome.tif")
    (result,) = run_child(f"report(lambda: lazystack.load_tiffs([{master!r}], 'ZYX'))")
    assert_clear(result, "SourceFormatError", str(fifo), "FIFO")


# -- valid files the new limits must not refuse ------------------------------------------------------------------
def _write(path: Path, data: np.ndarray, **kwargs: object) -> Path:
    tifffile.imwrite(path, data, metadata=None, **kwargs)  # type: ignore[arg-type]
    return path


@pytest.mark.parametrize(
    ("name", "shape", "dtype", "kwargs"),
    [
        ("one-strip-6000.tif", (6000, 6000), np.uint16, {"rowsperstrip": 6000}),  # a 72 MB strip: its own image
        ("one-strip-zlib.tif", (6000, 6000), np.uint16, {"rowsperstrip": 6000, "compression": "zlib"}),
        ("tall.tif", (20000, 1), np.uint8, {}),
        ("wide.tif", (1, 20000), np.uint8, {}),
        ("one-pixel-tile16.tif", (1, 1), np.uint8, {"tile": (16, 16)}),
        ("tiny-tile256.tif", (5, 3), np.uint16, {"tile": (256, 256), "compression": "zlib"}),
        ("tiny-tile4096-f4.tif", (5, 3), np.float32, {"tile": (4096, 4096), "compression": "zlib"}),  # 64 MiB
        ("bigtiff.tif", (300, 200), np.uint16, {"bigtiff": True}),
        ("tiled-lzw.tif", (300, 400), np.uint8, {"tile": (64, 64), "compression": "lzw"}),
        ("tiled-zstd.tif", (300, 400), np.uint8, {"tile": (64, 64), "compression": "zstd"}),
    ],
)
def test_valid_files_are_not_refused(
    tmp_path: Path, name: str, shape: tuple[int, int], dtype: type, kwargs: dict
) -> None:
    """Big single strips, tiles overhanging tiny images, BigTIFF, codecs: open and read like tifffile."""
    rng = np.random.default_rng(7)
    data = (rng.random(shape) * 250).astype(dtype)
    path = _write(tmp_path / name, data, **kwargs)
    reference = tifffile.imread(path)
    (stack,) = load_tiffs([path], "YX")
    size = tuple(min(8, n) for n in shape)
    start = tuple(n - m for n, m in zip(shape, size, strict=True))
    patch = stack.extract_patch(0, None, start, size)
    np.testing.assert_array_equal(patch[0], reference[start[0] : start[0] + size[0], start[1] : start[1] + size[1]])


def test_symlink_on_a_unicode_path_with_spaces_opens_and_reads(tmp_path: Path) -> None:
    """The stat before opening follows symbolic links; the path may hold spaces and non-ASCII characters."""
    folder = tmp_path / "dossier ü ñ"
    folder.mkdir()
    data = np.arange(40 * 30, dtype=np.uint16).reshape(40, 30)
    target = _write(folder / "échantillon 1.tif", data, tile=(16, 16), compression="zlib")
    link = folder / "lien vers.tif"
    link.symlink_to(target)
    for loader in (load_tiffs, load_iter_tiff):
        (stack,) = loader([link], "YX")
        np.testing.assert_array_equal(stack.extract_patch(0, None, (30, 20), (10, 10))[0], data[30:40, 20:30])
    assert lazystack.load(str(link))[0].data_shape == (1, 1, 40, 30)


def test_ome_with_more_than_2_20_planes_of_real_ifds_is_not_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The plane bound is ``max(2**20, file size / 8)``: a file storing its planes (an IFD each) stays under it."""
    from lazystack.sources import tiff as tiff_source

    data = np.zeros((3000, 1, 1), np.uint8)
    path = tmp_path / "many.ome.tif"
    tifffile.imwrite(path, data, ome=True, metadata={"axes": "TYX"})
    with tifffile.TiffFile(path) as tif:  # every stored plane costs the file far more than 8 bytes
        assert os.path.getsize(path) // 8 > len(tif.pages)
        tiff_source._check_ome_planes(tif, str(path), 3000 * 8 + 1)  # 3000 planes, under 2**20: accepted
        monkeypatch.setattr(tiff_source, "_OME_PLANES_FREE", 2999)  # the bound itself still refuses
        with pytest.raises(SourceFormatError, match="3000 image planes"):
            tiff_source._check_ome_planes(tif, str(path), 100)
        monkeypatch.undo()
    (stack,) = load_tiffs([path], "TYX")
    assert stack.data_shape == (3000, 1, 1, 1)


# -- cost: the stat is per open, never per patch -----------------------------------------------------------------
@pytest.mark.parametrize("kwargs", [{}, {"tile": (64, 64), "compression": "zlib"}], ids=["memmap", "decoded"])
def test_no_stat_per_patch_once_open(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kwargs: dict) -> None:
    """``os.stat`` (the not-a-FIFO check) runs when a handle opens, not on the extract_patch hot path."""
    data = np.arange(2 * 256 * 256, dtype=np.uint16).reshape(2, 256, 256)
    path = _write(tmp_path / "stack.tif", data, **kwargs)
    (stack,) = load_tiffs([path], "ZYX")
    stack.extract_patch(0, None, (0, 0, 0), (1, 8, 8))  # opens this process's handle
    calls = []
    real_stat = os.stat

    def counting_stat(*args: object, **kw: object) -> os.stat_result:
        calls.append(args)
        return real_stat(*args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "stat", counting_stat)
    for i in range(100):
        z, y, x = i % 2, (i * 7) % 240, (i * 13) % 240
        patch = stack.extract_patch(0, None, (z, y, x), (1, 16, 16))
        np.testing.assert_array_equal(patch[0], data[z : z + 1, y : y + 16, x : x + 16])
    monkeypatch.undo()
    assert calls == []


def test_multifile_ome_fifo_renamed_over_a_listed_file_fails_the_reopen_not_blocks(tmp_path: Path) -> None:
    """A handle reopening the master (a DataLoader worker, after close()) stats the listed files before tifffile."""
    _multifile_ome(tmp_path)
    code = f"""
        (stack,) = lazystack.load_tiffs([{str(tmp_path / "m_0.ome.tif")!r}], "ZYX")
        stack.extract_patch(0, None, (0, 0, 0), (1, 4, 4))
        stack.close()
        os.remove({str(tmp_path / "m_1.ome.tif")!r})
        os.mkfifo({str(tmp_path / "m_1.ome.tif")!r})
        report(lambda: stack.extract_patch(0, None, (1, 20, 20), (1, 4, 4)))  # not cached: a new handle reads it
        """
    (result,) = run_child(code)
    assert_clear(result, "SourceReadError", "m_1.ome.tif", "FIFO")


# -- the stat before bioio (6358569) -----------------------------------------------------------------------------
def test_load_bioio_still_reads_an_ome_zarr_folder(tmp_path: Path) -> None:
    """bioio plugins read folders (bioio-ome-zarr): the not-a-FIFO check must not refuse a directory."""
    pytest.importorskip("bioio_ome_zarr")
    from lazystack.ops.writing import write_ome_zarr

    data = np.arange(2 * 32 * 40, dtype=np.uint16).reshape(2, 32, 40)
    path = tmp_path / "image.ome.zarr"
    (source,) = lazystack.load(data, "ZYX")
    write_ome_zarr(source, path)  # one image (a list would be a bioformats2raw store, which bioio refuses)
    import bioio

    try:  # the reference: bioio's own read of the folder
        bioio.BioImage(str(path))
    except Exception as exc:  # bioio-ome-zarr 3.0.0 (the lowest allowed) does not find local folders
        pytest.skip(f"this bioio / bioio-ome-zarr cannot read an OME-Zarr folder itself: {type(exc).__name__}")
    (stack,) = lazystack.load_bioio(path, "ZYX")
    np.testing.assert_array_equal(stack.extract_patch(0, None, (1, 2, 3), (1, 4, 4))[0], data[1:2, 2:6, 3:7])
