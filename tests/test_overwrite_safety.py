"""write_ome_zarr(overwrite=True) interrupted at each step: the user's data is never lost, no junk stays.

A writer SIGKILLed at each step of the swap (a child process patched to kill itself there), and
exceptions injected at each step in-process: afterwards the previous store is at ``path`` or named
in the error, and the next write to ``path`` leaves no hidden folder.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import zarr

import lazystack
from lazystack.core.errors import SourceFormatError, SourceNotFoundError
from lazystack.ops import writing
from lazystack.ops.writing import OLD_STORE, PartialOutputWarning, stale_partial_outputs, write_ome_zarr

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL")

OLD, NEW, LATER = 3, 7, 9

_KILLED_OVERWRITE = """
import os, pathlib, shutil, signal, sys
import numpy as np
import lazystack
from lazystack.ops.writing import write_ome_zarr

target, step, value = pathlib.Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
real_rename, real_rmtree = pathlib.Path.rename, shutil.rmtree

def die():
    os.kill(os.getpid(), signal.SIGKILL)

def rename(self, dst):
    dst = pathlib.Path(dst)
    if step == "before-aside" and dst.name == "store":
        die()
    out = real_rename(self, dst)
    if (step == "between" and dst.name == "store") or (step == "after-install" and dst == target):
        die()
    return out

def rmtree(path, *args, **kwargs):
    real_rmtree(path, *args, **kwargs)
    if step == "removing" and pathlib.Path(path).name == "store":
        die()

pathlib.Path.rename = rename
shutil.rmtree = rmtree
(stack,) = lazystack.load_arrays([np.full((2, 16, 16), value, np.uint16)], "ZYX")
write_ome_zarr(stack, target, levels=1, overwrite=True)
"""


def _stack(value: int) -> lazystack.LazyImageStack:
    (stack,) = lazystack.load_arrays([np.full((2, 16, 16), value, np.uint16)], "ZYX")
    return stack


def _value(store: Path) -> int:
    """The one value of a written image (all pixels equal), read with zarr."""
    data = zarr.open_array(store / "0", mode="r")[...]
    assert data.shape == (2, 16, 16)
    (value,) = np.unique(data)
    return int(value)


def _hidden(tmp_path: Path) -> list[str]:
    return sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("."))


def _env() -> dict[str, str]:
    root = str(Path(lazystack.__file__).resolve().parents[1])
    return dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])))


@pytest.mark.parametrize(
    ("step", "installed"),
    [("before-aside", OLD), ("between", OLD), ("after-install", NEW), ("removing", NEW)],
)
def test_overwrite_killed_at_each_step_loses_nothing_and_is_cleaned(tmp_path: Path, step: str, installed: int) -> None:
    target = tmp_path / "out.zarr"
    write_ome_zarr(_stack(OLD), target, levels=1)
    proc = subprocess.run(
        [sys.executable, "-c", _KILLED_OVERWRITE, str(target), step, str(NEW)], env=_env(), timeout=300
    )
    assert proc.returncode == -signal.SIGKILL

    # right after the kill: the previous image is at the target or in the folder an overwrite moves it to
    hidden = _hidden(tmp_path)
    assert hidden, "the kill left nothing to clean up: the step was not reached"
    if target.exists():
        assert _value(target) in (OLD, NEW)
    else:
        (aside,) = tmp_path.glob(".out.zarr.old-*")
        assert _value(aside / OLD_STORE) == OLD
    found = stale_partial_outputs(target)
    assert sorted(f.path.name for f in found) == hidden  # every hidden folder is listed ...
    assert all(f.abandoned for f in found), found  # ... and known to be abandoned (its writer is gone)

    # the next write cleans up first: the previous image is back (or the new one was installed), no junk
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        with pytest.raises(FileExistsError, match="overwrite=True"):
            write_ome_zarr(_stack(LATER), target, levels=1)
    moved_back = [w for w in record if "moved back" in str(w.message)]
    assert len(moved_back) == (step == "between")
    assert _hidden(tmp_path) == []
    assert _value(target) == installed
    write_ome_zarr(_stack(LATER), target, levels=1, overwrite=True)
    assert _value(target) == LATER
    assert _hidden(tmp_path) == []


def _fail_rename(monkeypatch: pytest.MonkeyPatch, when: str) -> None:
    """Make ``Path.rename`` raise OSError for the renames of the swap named by ``when``."""
    real = pathlib.Path.rename

    def rename(self: Path, dst: str | os.PathLike[str]) -> Path:
        dst = Path(dst)
        aside, install = dst.name == OLD_STORE, dst.name == "out.zarr" and ".partial-" in self.name
        restore = dst.name == "out.zarr" and self.name == OLD_STORE
        if (when == "aside" and aside) or (when in ("install", "both") and install) or (when == "both" and restore):
            raise OSError(f"injected failure: {self} -> {dst}")
        return real(self, dst)

    monkeypatch.setattr(pathlib.Path, "rename", rename)


@pytest.mark.parametrize("when", ["aside", "install"])
def test_a_failed_rename_keeps_the_previous_store_and_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, when: str
) -> None:
    target = tmp_path / "out.zarr"
    write_ome_zarr(_stack(OLD), target, levels=1)
    _fail_rename(monkeypatch, when)
    with pytest.raises(OSError, match="injected failure"):
        write_ome_zarr(_stack(NEW), target, levels=1, overwrite=True)
    assert _value(target) == OLD
    assert _hidden(tmp_path) == []


def test_a_failed_rollback_names_where_the_previous_store_is(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "out.zarr"
    write_ome_zarr(_stack(OLD), target, levels=1)
    _fail_rename(monkeypatch, "both")
    with pytest.raises(OSError, match="injected failure") as info:
        write_ome_zarr(_stack(NEW), target, levels=1, overwrite=True)
    (aside,) = tmp_path.glob(".out.zarr.old-*")
    notes = " ".join(getattr(info.value, "__notes__", []))
    assert str(aside / OLD_STORE) in notes
    assert "move it back by hand" in notes
    assert not target.exists()
    assert _value(aside / OLD_STORE) == OLD  # nothing lost
    assert _hidden(tmp_path) == [aside.name]  # the failed write's partial folder is gone
    monkeypatch.undo()
    # this process (the writer) is alive: the next write leaves the folder in place and says so
    left = rf"previous store.*{re.escape(aside.name)}.*is the previous out.zarr"
    with pytest.warns(PartialOutputWarning, match=left):
        write_ome_zarr(_stack(LATER), target, levels=1)
    assert _value(aside / OLD_STORE) == OLD


def test_a_failed_removal_of_the_previous_store_is_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "out.zarr"
    write_ome_zarr(_stack(OLD), target, levels=1)
    monkeypatch.setattr(shutil, "rmtree", lambda *args, **kwargs: None)  # e.g. a permission error, ignored
    with pytest.warns(PartialOutputWarning, match=r"could not remove .*\.out\.zarr\.old-"):
        write_ome_zarr(_stack(NEW), target, levels=1, overwrite=True)
    assert _value(target) == NEW
    (aside,) = tmp_path.glob(".out.zarr.old-*")
    assert (aside / writing.MARKER).exists()  # kept: the next write in another process removes the rest
    (found,) = stale_partial_outputs(target)
    assert (found.path, found.kind) == (aside, "old")


# -- opening a target whose overwrite was cut short ----------------------------------------------------
def test_opening_a_target_whose_overwrite_was_killed_names_where_the_previous_data_is(tmp_path: Path) -> None:
    target = tmp_path / "out.zarr"
    write_ome_zarr(_stack(OLD), target, levels=1)
    proc = subprocess.run(
        [sys.executable, "-c", _KILLED_OVERWRITE, str(target), "between", str(NEW)], env=_env(), timeout=300
    )
    assert proc.returncode == -signal.SIGKILL
    assert not target.exists()
    (aside,) = tmp_path.glob(".out.zarr.old-*")
    store = aside / OLD_STORE
    for source, opener in [
        (target, lazystack.load_zarrs),
        (target / "0", lazystack.load_zarrs),  # a node inside the missing store
        (target, lazystack.load),
        (target / "0", lazystack.load),
    ]:
        with pytest.raises(SourceNotFoundError) as info:
            opener(source, "ZYX")
        message = str(info.value)
        assert f"'{store}'" in message, message  # where the previous data is
        assert "interrupted" in message
        assert "write_ome_zarr" in message
        assert f"rename '{store}' to '{target}'" in message  # how to restore it by hand
    store.rename(target)  # what the message says
    (stack,) = lazystack.load_zarrs(target, "ZYX")
    np.testing.assert_array_equal(stack.compute()[0, 0], np.full((2, 16, 16), OLD))


def _leftover(tmp_path: Path, *, marker: bool, store: bool) -> tuple[Path, Path]:
    """The state an overwrite killed between its renames leaves, built directly: no target, a ``.old-*`` folder."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    target = tmp_path / "out.zarr"
    write_ome_zarr(_stack(OLD), target, levels=1)
    aside = tmp_path / ".out.zarr.old-0123abcd"
    aside.mkdir()
    if marker:
        (aside / writing.MARKER).write_text(json.dumps({"host": "elsewhere", "pid": 1}), encoding="utf-8")
    if store:
        target.rename(aside / OLD_STORE)
    else:
        shutil.rmtree(target)
    return target, aside


def test_the_previous_data_is_named_only_for_an_overwrite_folder_with_its_marker_and_store(tmp_path: Path) -> None:
    target, aside = _leftover(tmp_path / "a", marker=True, store=True)
    with pytest.raises(SourceNotFoundError, match=re.escape(f"'{aside / OLD_STORE}'")):
        lazystack.load_zarrs(target / "0", "ZYX")
    target.mkdir()  # an empty folder at the target: not a store, the previous data still aside
    with pytest.raises(SourceFormatError, match=re.escape(f"'{aside / OLD_STORE}'")):
        lazystack.load_zarrs(target, "ZYX")
    for marker, store in [(False, True), (True, False)]:  # not the writer's folder, or nothing left in it
        target, aside = _leftover(tmp_path / f"{marker}-{store}", marker=marker, store=store)
        with pytest.raises(SourceNotFoundError) as info:
            lazystack.load_zarrs(target, "ZYX")
        assert ".old-" not in str(info.value)
        assert "interrupted" not in str(info.value)
    (tmp_path / "ok").mkdir()
    target = tmp_path / "ok" / "out.zarr"
    write_ome_zarr(_stack(NEW), target, levels=1)
    (tmp_path / "ok" / ".out.zarr.old-0123abcd" / OLD_STORE).mkdir(parents=True)  # a removal cut short
    (stack,) = lazystack.load_zarrs(target, "ZYX")  # the target is there: opened as usual
    np.testing.assert_array_equal(stack.compute()[0, 0], np.full((2, 16, 16), NEW))
