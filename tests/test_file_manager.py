"""ProcessLocalFileManager: bounded, picklable, and per process after fork."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest

from lazystack.io.handles import ProcessLocalFileManager


def _open_binary(path: str, mode: str = "rb") -> object:
    return open(path, mode)


@pytest.fixture
def path(tmp_path: Path) -> str:
    p = tmp_path / "f.bin"
    p.write_bytes(bytes(range(256)))
    return str(p)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
@pytest.mark.timeout(60)
def test_forked_child_reopens_instead_of_sharing_the_offset(path: str) -> None:
    manager = ProcessLocalFileManager(open, path, kwargs={"mode": "rb"})
    parent = manager.acquire()
    parent.seek(10)
    pid = os.fork()
    if pid == 0:  # child: must get its own handle, at offset 0, and move it freely
        child = manager.acquire()
        ok = child is not parent and child.tell() == 0 and child.read(5) == bytes(range(5))
        manager.close()
        os._exit(0 if ok else 3)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert manager.acquire() is parent
    assert parent.tell() == 10  # the child's reads did not move the parent's offset
    manager.close()


def test_pickles_without_the_handle_and_keeps_an_omitted_mode(path: str) -> None:
    manager = ProcessLocalFileManager(_open_binary, path)
    manager.acquire().read(1)
    blob = pickle.dumps(manager)
    manager.close()
    clone = pickle.loads(blob)
    assert clone.acquire().read(3) == bytes(range(3))  # reopened, opener called without a bogus mode=
    clone.close()
