"""Review of the session-12 TIFF / CZI changes: behaviour compared with the code before them (6642561)."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np
import pytest
import tifffile

import lazystack
from lazystack import SourceFormatError, SourceNotFoundError, load_tiffs
from lazystack.sources import tiff as tiff_source


def _file_calls(fmt: str) -> dict[str, object]:
    if fmt == "tiff":
        return {"load_tiffs": lambda p: load_tiffs([p], "YX"), "tiff.propose_axes": tiff_source.propose_axes}
    pytest.importorskip("pylibCZIrw")
    from lazystack.sources import czi as czi_source
    from lazystack.sources import czi_check

    return {
        "load_czis": lambda p: lazystack.load_czis([p], "SCYX"),
        "czi.propose_axes": czi_source.propose_axes,
        "check_czi_structure": czi_check.check_czi_structure,
    }


@pytest.mark.parametrize("fmt", ["tiff", "czi"])
@pytest.mark.parametrize("how", ["through-a-file", "through-a-looping-link", "name-too-long"])
def test_a_path_that_cannot_name_a_file_is_not_found(tmp_path: Path, fmt: str, how: str) -> None:
    """``x.tif/y.tif`` (ENOTDIR), ``loop/y.tif`` (ELOOP on a folder) or a name over NAME_MAX (ENAMETOOLONG)
    does not exist: SourceNotFoundError naming the path, as before the checks moved to check_regular_file
    (which made them SourceReadErrors)."""
    ext = "tif" if fmt == "tiff" else "czi"
    (tmp_path / f"x.{ext}").write_bytes(b"not read")
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    path = (
        tmp_path
        / {
            "through-a-file": f"x.{ext}/y.{ext}",
            "through-a-looping-link": f"loop/y.{ext}",
            "name-too-long": "y" * 300 + f".{ext}",
        }[how]
    )
    for name, call in _file_calls(fmt).items():
        with pytest.raises(SourceNotFoundError) as info:
            call(str(path))  # type: ignore[operator]
        assert str(path) in str(info.value), (name, info.value)
        assert "not found" in str(info.value), (name, info.value)


def test_check_czi_structure_refuses_a_fifo_or_folder_before_opening_it(tmp_path: Path) -> None:
    """check_czi_structure (public, and run by open_czi / check_czi_decodes) opened the path itself: a FIFO
    blocked for ever, a folder was a SourceReadError. Both are SourceFormatErrors naming the path and
    what is accepted, as at load_czis."""
    from lazystack.sources import czi_check

    folder = tmp_path / "folder.czi"
    folder.mkdir()
    with pytest.raises(SourceFormatError, match="is a directory") as info:
        czi_check.check_czi_structure(folder)
    assert str(folder) in str(info.value)
    assert "a .czi file" in str(info.value)

    fifo = tmp_path / "pipe.czi"
    os.mkfifo(fifo)
    outcome: list[BaseException | None] = []

    def check() -> None:
        try:
            czi_check.check_czi_structure(fifo)
            outcome.append(None)
        except BaseException as exc:  # handed to the test thread
            outcome.append(exc)

    worker = threading.Thread(target=check, daemon=True)
    worker.start()
    worker.join(timeout=30)
    if worker.is_alive():  # blocked in open(): a writer's open releases it, then fail
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        worker.join(timeout=30)
        pytest.fail("check_czi_structure blocked on a FIFO")
    assert isinstance(outcome[0], SourceFormatError), outcome
    assert "FIFO" in str(outcome[0])
    assert str(fifo) in str(outcome[0])


def _lying_master(folder: Path, listed: str, planes: int) -> Path:
    """A one-plane OME-TIFF declaring ``planes`` planes stored in the file ``listed``."""
    xml = (
        '<?xml version="1.0" encoding="UTF-8"?>'
        '<OME xmlns="http://www.openmicroscopy.org/Schemas/OME/2016-06" UUID="urn:uuid:0">'
        '<Image ID="Image:0"><Pixels ID="Pixels:0" DimensionOrder="XYZCT" Type="uint8" '
        f'SizeX="8" SizeY="8" SizeZ="{planes}" SizeC="1" SizeT="1"><Channel ID="Channel:0:0" SamplesPerPixel="1"/>'
        f'<TiffData IFD="0" PlaneCount="{planes}"><UUID FileName="{listed}">urn:uuid:1</UUID></TiffData>'
        "</Pixels></Image></OME>"
    )
    master = folder / "master.ome.tif"
    tifffile.imwrite(master, np.zeros((8, 8), np.uint8), description=xml, metadata=None)
    return master


def test_a_sparse_listed_file_does_not_raise_the_plane_bound(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The bound is about memory per declared plane (tifffile makes a list entry per plane, also for a
    listed file it cannot read): a listed file counts the bytes it stores, not a sparse file's (or
    /proc/kcore's) apparent size, else any master can list one to declare any number of planes."""
    planes = 100_000
    sparse = tmp_path / "sparse.ome.tif"
    with open(sparse, "wb") as f:
        f.truncate(1 << 30)  # 1 GiB apparent, no block stored
    if sparse.stat().st_blocks * 512 >= 1 << 20:
        pytest.skip("this file system stores the sparse file's blocks")
    master = _lying_master(tmp_path, sparse.name, planes)
    monkeypatch.setattr(tiff_source, "_OME_PLANES_FREE", 1)
    with pytest.raises(SourceFormatError, match=f"{planes} image planes") as info:
        load_tiffs([master], "ZYX")
    assert str(master) in str(info.value)


def test_a_listed_file_that_is_stored_still_counts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same master listing a file that stores its bytes is accepted by the bound (the multi-file case)."""
    stored = tmp_path / "stored.ome.tif"
    stored.write_bytes(os.urandom(8 * 2000))
    master = _lying_master(tmp_path, stored.name, 1000)
    monkeypatch.setattr(tiff_source, "_OME_PLANES_FREE", 1)
    with tifffile.TiffFile(master) as tif:
        tiff_source._check_ome_planes(tif, str(master), master.stat().st_size)


def test_a_sparse_master_does_not_raise_the_plane_bound(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same for the master itself: zeros appended as a hole (1 GiB apparent) store no IFD."""
    planes = 100_000
    master = _lying_master(tmp_path, "missing.ome.tif", planes)
    with open(master, "r+b") as f:
        f.truncate(1 << 30)
    if master.stat().st_blocks * 512 >= 1 << 20:
        pytest.skip("this file system stores the sparse file's blocks")
    monkeypatch.setattr(tiff_source, "_OME_PLANES_FREE", 1)
    for name, call in {"load_tiffs": lambda p: load_tiffs([p], "ZYX"), "propose_axes": lazystack.propose_axes}.items():
        with pytest.raises(SourceFormatError, match=f"{planes} image planes") as info:
            call(master)
        assert str(master) in str(info.value), name


def test_load_and_propose_axes_name_a_path_the_system_refuses_to_stat(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``lazystack.load`` / ``propose_axes`` look at a local path before choosing the loader: a stat the system
    refuses (permission denied on a folder: monkeypatched, tests run as root) is a SourceReadError naming the path,
    not a raw PermissionError; a name too long for the file system too."""
    import errno
    import pathlib

    target = tmp_path / "locked" / "x.tif"
    real_stat = pathlib.Path.stat

    def refusing_stat(self: pathlib.Path, *args: object, **kwargs: object) -> object:
        if str(self).startswith(str(tmp_path / "locked")):
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return real_stat(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(pathlib.Path, "stat", refusing_stat)
    for call in (lambda: lazystack.load(str(target), "YX"), lambda: lazystack.propose_axes(str(target))):
        with pytest.raises(lazystack.SourceReadError) as info:
            call()
        assert str(target) in str(info.value)
        assert "Permission denied" in str(info.value)
    monkeypatch.undo()
    long_name = str(tmp_path / ("x" * 300 + ".tif"))
    with pytest.raises((lazystack.SourceReadError, lazystack.SourceNotFoundError)) as info:
        lazystack.load(long_name, "YX")
    assert long_name in str(info.value)
