"""Session 12 fixes of the TIFF / CZI sources: one file check, one error class per cause, the multi-file plane bound."""

from __future__ import annotations

import errno
import os
import re
from pathlib import Path

import numpy as np
import pytest
import tifffile
from ome_files import write_multifile_ome

import lazystack
from lazystack import SourceFormatError, SourceNotFoundError, SourceReadError, load_tiffs
from lazystack.sources import tiff as tiff_source


# -- one file check for TIFF and CZI (io.handles.check_regular_file) ---------------------------------------------
def _tiff_calls() -> dict[str, object]:
    return {
        "load_tiffs": lambda p: load_tiffs([p], "YX"),
        "propose_axes": lambda p: lazystack.propose_axes(p),
        "tiff.propose_axes": tiff_source.propose_axes,
    }


def _czi_calls() -> dict[str, object]:
    pytest.importorskip("pylibCZIrw")
    from lazystack.sources import czi as czi_source

    return {"load_czis": lambda p: lazystack.load_czis([p], "SCYX"), "czi.propose_axes": czi_source.propose_axes}


@pytest.mark.parametrize("fmt", ["tiff", "czi"])
def test_a_folder_is_refused_naming_the_path_and_what_is_accepted(tmp_path: Path, fmt: str) -> None:
    folder = tmp_path / f"folder.{'tif' if fmt == 'tiff' else 'czi'}"
    folder.mkdir()
    accepted = "a TIFF file" if fmt == "tiff" else "a .czi file"
    calls = _tiff_calls() if fmt == "tiff" else _czi_calls()
    for name, call in calls.items():
        if name == "czi.propose_axes":
            continue  # pylibCZIrw is asked only after the not-a-FIFO check: same class, its own wording
        with pytest.raises(SourceFormatError) as info:
            call(str(folder))  # type: ignore[operator]
        text = str(info.value)
        for part in (str(folder), "is a directory", accepted):
            assert part in text, (name, text)


@pytest.mark.parametrize("fmt", ["tiff", "czi"])
def test_a_bad_selector_names_the_existing_file_and_the_accepted_form(tmp_path: Path, fmt: str) -> None:
    if fmt == "tiff":
        path = tmp_path / "x.tif"
        tifffile.imwrite(path, np.zeros((8, 8), np.uint8))
        calls = {"load_tiffs": lambda p: load_tiffs([p], "YX")}
        word = "series"
    else:
        path = tmp_path / "x.czi"
        path.write_bytes(b"ZISRAWFILE" + bytes(200))
        calls = {k: v for k, v in _czi_calls().items() if k == "load_czis"}
        word = "scene"
    for name, call in calls.items():
        with pytest.raises(SourceNotFoundError) as info:
            call(f"{path}@-1")  # type: ignore[operator]
        text = str(info.value)
        for part in (f"{path}@-1", "selects nothing", f"'@N' for {word} N"):
            assert part in text, (name, text)


def test_a_looping_symlink_is_not_found_and_says_why(tmp_path: Path) -> None:
    link = tmp_path / "loop.tif"
    link.symlink_to(link)
    for name, call in _tiff_calls().items():
        if name == "propose_axes":
            continue  # lazystack.propose_axes (loading/auto.py) checks that the path exists first
        with pytest.raises(SourceNotFoundError, match=re.escape(str(link))) as info:
            call(str(link))  # type: ignore[operator]
        assert "symbolic link" in str(info.value), (name, info.value)


def test_tiff_and_czi_file_checks_go_through_check_regular_file() -> None:
    """Each format keeps only its own checks (empty file, magic bytes) beside the shared one."""
    import inspect

    pytest.importorskip("pylibCZIrw")
    from lazystack.sources import czi as czi_source

    for function in (tiff_source._check_file, czi_source.open_czi):
        source = inspect.getsource(function)
        assert "check_regular_file(" in source
        assert "os.path.exists" not in source, function
        assert "os.path.isdir" not in source, function


# -- one error class per cause at every TIFF entry point -----------------------------------------------------------
def _entry_points() -> dict[str, object]:
    from lazystack.frontends.cli import main

    def cli_info(path: str) -> None:
        main(["info", path, "--debug"])  # --debug re-raises the error instead of printing it

    return {**_tiff_calls(), "load": lambda p: lazystack.load(p), "lazystack info": cli_info}


def _fail_with(exc: OSError):  # type: ignore[no-untyped-def]
    def fail(*args: object, **kwargs: object) -> None:
        raise exc

    return fail


@pytest.mark.parametrize(
    "where",
    ["open", "read"],
    ids=["permission-denied-on-open", "io-error-while-reading-the-header"],
)
def test_an_unreadable_tiff_is_a_read_error_at_every_entry_point(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    """An ``OSError`` from the file system is a SourceReadError (load_tiffs, propose_axes, load, ``lazystack info``)."""
    path = tmp_path / "x.ome.tif"
    tifffile.imwrite(path, np.zeros((2, 8, 8), np.uint8), ome=True, metadata={"axes": "ZYX"})
    if where == "open":
        exc = PermissionError(errno.EACCES, "Permission denied", str(path))
    else:
        exc = OSError(errno.EIO, "Input/output error")
    monkeypatch.setattr(tifffile.FileHandle, where, _fail_with(exc))
    for name, call in _entry_points().items():
        with pytest.raises(SourceReadError) as info:
            call(str(path))  # type: ignore[operator]
        assert str(path) in str(info.value), (name, info.value)
        assert str(exc.strerror) in str(info.value), (name, info.value)
        assert not isinstance(info.value, SourceFormatError), name


@pytest.mark.parametrize("content", [b"this is no tiff", b"II*\x00\x08\x00\x00\x00\xff\xff"], ids=["text", "bad-ifd"])
def test_a_file_read_but_not_a_tiff_is_a_format_error_at_every_entry_point(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "x.tif"
    path.write_bytes(content)
    for name, call in _entry_points().items():
        with pytest.raises(SourceFormatError) as info:
            call(str(path))  # type: ignore[operator]
        assert str(path) in str(info.value), (name, info.value)
        assert "TIFF" in str(info.value), (name, info.value)
        assert not isinstance(info.value, SourceReadError), name


def test_a_missing_series_is_the_same_error_for_load_tiffs_and_propose_axes(tmp_path: Path) -> None:
    path = tmp_path / "two.tif"
    with tifffile.TiffWriter(path) as tw:
        tw.write(np.zeros((8, 8), np.uint8), metadata={"axes": "YX"})
        tw.write(np.zeros((2, 4, 4), np.uint8), photometric="minisblack", metadata={"axes": "ZYX"})
    messages = []
    for call in (lambda p: load_tiffs([p], "YX"), tiff_source.propose_axes):
        with pytest.raises(SourceNotFoundError) as info:
            call(f"{path}@5")
        messages.append(str(info.value))
    assert messages[0] == messages[1]
    assert "series 5" in messages[0]
    assert "'@0' to '@1'" in messages[0]


# -- the OME plane bound counts the files a multi-file OME-TIFF lists -------------------------------------------------
_multifile_ome = write_multifile_ome


def test_the_plane_bound_counts_the_listed_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """6 planes declared: refused for a 40-byte master alone, accepted with the two other files it lists."""
    _multifile_ome(tmp_path)
    master = tmp_path / "m_0.ome.tif"
    others = sum(os.path.getsize(tmp_path / f"m_{k}.ome.tif") for k in (1, 2))
    assert others // 8 >= 6
    monkeypatch.setattr(tiff_source, "_OME_PLANES_FREE", 1)
    with tifffile.TiffFile(master) as tif:
        tiff_source._check_ome_planes(tif, str(master), 40)  # 40 // 8 = 5 < 6 planes, but the files hold more
        os.remove(tmp_path / "m_1.ome.tif")  # a listed file that is missing counts nothing
        os.remove(tmp_path / "m_2.ome.tif")
        (tmp_path / "m_2.ome.tif").mkdir()  # nor does a folder
        with pytest.raises(SourceFormatError, match="6 image planes") as info:
            tiff_source._check_ome_planes(tif, str(master), 40)
    assert str(master) in str(info.value)


def test_the_master_listing_itself_is_counted_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every file lists itself too: its size is counted once (the size the caller gives)."""
    _multifile_ome(tmp_path, files=1, planes=2)
    master = tmp_path / "m_0.ome.tif"
    monkeypatch.setattr(tiff_source, "_OME_PLANES_FREE", 1)
    with tifffile.TiffFile(master) as tif:
        tiff_source._check_ome_planes(tif, str(master), 16)  # 2 planes, 16 // 8 = 2: accepted
        with pytest.raises(SourceFormatError, match="2 image planes"):
            tiff_source._check_ome_planes(tif, str(master), 8)  # not 8 + the master's real size


def test_a_multifile_ome_reads_under_a_low_plane_bound(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = _multifile_ome(tmp_path)
    monkeypatch.setattr(tiff_source, "_OME_PLANES_FREE", 1)
    (stack,) = load_tiffs([tmp_path / "m_0.ome.tif"], "ZYX")
    assert lazystack.propose_axes(tmp_path / "m_0.ome.tif") == "ZYX"
    for z in range(6):
        patch = stack.extract_patch(0, None, (z, 3, 5), (1, 8, 9))
        np.testing.assert_array_equal(patch[0], data[z : z + 1, 3:11, 5:14])


def test_an_io_error_while_listing_the_series_is_a_read_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "x.ome.tif"
    tifffile.imwrite(path, np.zeros((2, 8, 8), np.uint8), ome=True, metadata={"axes": "ZYX"})
    monkeypatch.setattr(tiff_source, "_check_ome_planes", _fail_with(OSError(errno.EIO, "Input/output error")))
    for name, call in _entry_points().items():
        with pytest.raises(SourceReadError, match="Input/output error") as info:
            call(str(path))  # type: ignore[operator]
        assert "image series" in str(info.value), name


def test_a_czi_that_cannot_be_read_is_a_read_error_naming_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The CZI structure check reads the file itself: an I/O error there (permission denied on a non-root
    machine, EIO) is a SourceReadError naming the file, not a raw OSError; a missing file is not found."""
    from lazystack.sources import czi_check

    path = tmp_path / "x.czi"
    path.write_bytes(b"ZISRAWFILE" + bytes(200))

    def failing_pread(fd: int, n: int, offset: int) -> bytes:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(czi_check.os, "pread", failing_pread)
    with pytest.raises(SourceReadError) as info:
        czi_check.check_czi_structure(path)
    assert str(path) in str(info.value)
    assert "Input/output error" in str(info.value)
    monkeypatch.undo()
    with pytest.raises(SourceNotFoundError, match="not found"):
        czi_check.check_czi_structure(tmp_path / "missing.czi")
    with pytest.raises(SourceFormatError, match="is corrupt"):  # a malformed file is still a format error
        czi_check.check_czi_structure(path)
