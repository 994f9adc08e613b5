"""Session 12 fixes of the TIFF / CZI sources: one file check, one error class per cause, the multi-file plane bound."""

from __future__ import annotations

import errno
import os
import re
import uuid
from pathlib import Path

import numpy as np
import pytest
import tifffile

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
        assert str(folder) in text and "is a directory" in text and accepted in text, (name, text)


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
        assert f"{path}@-1" in text and "selects nothing" in text and f"'@N' for {word} N" in text, (name, text)


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

    for module in (tiff_source, czi_source):
        source = inspect.getsource(module._check_file)
        assert "check_regular_file(" in source
        assert "os.path.exists" not in source and "os.path.isdir" not in source, module.__name__
