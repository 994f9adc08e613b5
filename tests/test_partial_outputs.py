"""write_ome_zarr: partial outputs of a SIGKILLed writer are removed by the next write; others are reported."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import zarr

import lazystack
from lazystack.ops.writing import MARKER, PartialOutputWarning, stale_partial_outputs, write_ome_zarr

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL")

_SLOW_WRITER = """
import sys, time
import numpy as np
import lazystack
from lazystack.ops.writing import write_ome_zarr

class Slow:
    shape, dtype = (4, 64, 64), np.dtype("uint16")
    def __getitem__(self, key):
        time.sleep(0.5)  # long enough to be killed mid-write
        return np.ones(self.shape, self.dtype)[key]

(stack,) = lazystack.load_arrays([Slow()], "ZYX")
write_ome_zarr(stack, sys.argv[1], chunks=16, levels=1)
"""


def _env() -> dict[str, str]:
    root = str(Path(lazystack.__file__).resolve().parents[1])
    return dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])))


def _killed_write(target: Path) -> Path:
    """Start a slow write in a child, SIGKILL it once its partial folder has a marker; return the folder."""
    proc = subprocess.Popen([sys.executable, "-c", _SLOW_WRITER, str(target)], env=_env())
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            markers = list(target.parent.glob(f".{target.name}.partial-*/{MARKER}"))
            if markers:
                break
            assert proc.poll() is None, "the writer ended before it could be killed"
            time.sleep(0.05)
        else:
            pytest.fail("no partial folder appeared")
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
    assert json.loads(markers[0].read_text())["pid"] == proc.pid
    return markers[0].parent


def test_next_write_removes_a_killed_writers_partial_output(tmp_path: Path) -> None:
    target = tmp_path / "out.zarr"
    leftover = _killed_write(target)
    assert leftover.is_dir()
    assert not target.exists()
    (found,) = stale_partial_outputs(target)
    assert found.path == leftover
    assert found.abandoned
    data = np.arange(2 * 32 * 32, dtype=np.uint16).reshape(2, 32, 32)
    (stack,) = lazystack.load_arrays([data], "ZYX")
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        write_ome_zarr(stack, target, levels=1)
    assert not [w for w in record if issubclass(w.category, PartialOutputWarning)]
    assert not leftover.exists()
    assert list(tmp_path.iterdir()) == [target]  # nothing hidden left, no marker in the result
    assert not (target / MARKER).exists()
    np.testing.assert_array_equal(zarr.open_array(target / "0", mode="r")[...], data)


def _partial(target: Path, marker: dict | None) -> Path:
    folder = target.parent / f".{target.name}.partial-0123456789ab"
    folder.mkdir()
    (folder / "zarr.json").write_text("{}")
    if marker is not None:
        (folder / MARKER).write_text(json.dumps(marker))
    return folder


@pytest.mark.parametrize(
    "case",
    ["live-writer", "other-host", "no-marker"],
)
def test_partials_not_provably_abandoned_are_kept_and_reported(tmp_path: Path, case: str) -> None:
    import socket

    target = tmp_path / "out.zarr"
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        marker = {
            "live-writer": {"host": socket.gethostname(), "pid": sleeper.pid, "start_time": None},
            "other-host": {"host": "not-" + socket.gethostname(), "pid": 1, "start_time": None},
            "no-marker": None,
        }[case]
        folder = _partial(target, marker)
        (stack,) = lazystack.load_arrays([np.zeros((1, 8, 8), np.uint8)], "ZYX")
        with pytest.warns(PartialOutputWarning, match=rf"{folder.name}"):
            write_ome_zarr(stack, target, levels=1)
        assert folder.is_dir()
        assert (folder / "zarr.json").exists()
        assert target.is_dir()
    finally:
        sleeper.kill()
        sleeper.wait()


def test_a_reused_pid_is_not_the_writer(tmp_path: Path) -> None:
    import socket

    target = tmp_path / "out.zarr"
    # this process is alive, but it started at another time than the marker says: the writer is gone
    _partial(target, {"host": socket.gethostname(), "pid": os.getpid(), "start_time": "1"})
    (found,) = stale_partial_outputs(target)
    assert found.abandoned == Path("/proc/self/stat").exists()


def test_convert_reports_what_it_leaves(tmp_path: Path) -> None:
    target = tmp_path / "out.zarr"
    folder = _partial(target, None)
    import tifffile

    tifffile.imwrite(tmp_path / "in.tif", np.zeros((2, 8, 8), np.uint8), metadata=None)
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from lazystack.frontends.cli import main; sys.exit(main(sys.argv[1:]))",
            "convert",
            str(tmp_path / "in.tif"),
            "--axes",
            "ZYX",
            "--out",
            str(target),
            "--quiet",
        ],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert folder.name in proc.stderr
    assert "PartialOutputWarning" in proc.stderr


def test_a_target_with_glob_characters_finds_only_its_own_partials(tmp_path: Path) -> None:
    """``x[1].zarr``'s leftovers are its own ``.x[1].zarr.*`` folders, never ``.x1.zarr.*`` (another target's)."""
    import socket

    gone = {"host": socket.gethostname(), "pid": os.getpid(), "start_time": "1"}  # a writer that is gone
    other = _partial(tmp_path / "x1.zarr", gone)
    own = _partial(tmp_path / "x[1].zarr", gone)
    assert [p.path for p in stale_partial_outputs(tmp_path / "x[1].zarr")] == [own]
    assert [p.path for p in stale_partial_outputs(tmp_path / "x1.zarr")] == [other]
    (stack,) = lazystack.load_arrays([np.zeros((1, 8, 8), np.uint8)], "ZYX")
    write_ome_zarr(stack, tmp_path / "x[1].zarr", levels=1)  # cleans up its own leftovers only
    assert other.is_dir()
    np.testing.assert_array_equal(zarr.open_array(str(tmp_path / "x[1].zarr" / "0"))[:], 0)
