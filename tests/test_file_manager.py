"""lazystack.io.process: the file-handle manager (lazy, bounded, picklable, per process) and the at-fork registry."""

from __future__ import annotations

import gc
import os
import pickle
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any

import pytest

from lazystack.io import process
from lazystack.io.process import FileManager, at_fork, current_pid, max_open_files, set_max_open_files

needs_fork = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")


class _Handle:
    """A file handle that records its opening and closing."""

    opened: list[str] = []  # noqa: RUF012 - a shared log, reset by the fixture
    closed: list[str] = []  # noqa: RUF012

    def __init__(self, name: str) -> None:
        self.name = name
        self.is_closed = False
        _Handle.opened.append(name)

    def close(self) -> None:
        self.is_closed = True
        _Handle.closed.append(self.name)


def _open_binary(path: str, mode: str = "rb") -> object:
    return open(path, mode)


@pytest.fixture
def log() -> Any:
    _Handle.opened, _Handle.closed = [], []
    return _Handle


@pytest.fixture
def bound() -> Any:
    """Restore the handle bound after a test changes it."""
    previous = set_max_open_files(None)
    yield set_max_open_files
    set_max_open_files(previous)


@pytest.fixture
def path(tmp_path: Path) -> str:
    p = tmp_path / "f.bin"
    p.write_bytes(bytes(range(256)))
    return str(p)


def test_opens_lazily_once_and_reopens_after_close(log: Any) -> None:
    manager = FileManager(_Handle, "a")
    assert log.opened == []  # nothing opened by creating the manager
    first = manager.acquire()
    with manager.acquire_context() as again:
        assert again is first
    assert log.opened == ["a"]
    manager.close()
    assert first.is_closed
    manager.close()  # closing twice is harmless
    assert manager.acquire() is not first
    assert log.opened == ["a", "a"]
    manager.close()


def test_lru_keeps_at_most_the_bound_and_closes_the_least_recently_used(log: Any, bound: Any) -> None:
    bound(4)
    managers = [FileManager(_Handle, f"f{i}") for i in range(6)]
    handles = [m.acquire() for m in managers[:4]]
    managers[0].acquire()  # f0 is now the most recently used
    managers[4].acquire()  # evicts f1, the least recently used
    assert log.closed == ["f1"]
    assert handles[1].is_closed
    assert not handles[0].is_closed
    managers[5].acquire()
    assert log.closed == ["f1", "f2"]
    assert process.open_file_count() <= 4
    assert managers[1].acquire() is not handles[1]  # an evicted handle is reopened on use
    bound(2)  # lowering the bound closes the surplus at once
    assert process.open_file_count() == 2
    for m in managers:
        m.close()
    assert process.open_file_count() == 0


def test_a_collected_manager_closes_its_handle(log: Any) -> None:
    manager = FileManager(_Handle, "gone")
    handle = manager.acquire()
    del manager
    gc.collect()
    assert handle.is_closed


def test_seed_hands_over_a_handle_opened_elsewhere(log: Any) -> None:
    manager = FileManager(_Handle, "seeded")
    opened = _Handle("seeded")
    manager.seed(opened)
    assert manager.acquire() is opened
    assert log.opened == ["seeded"]  # the manager did not open a second one
    manager.close()
    assert opened.is_closed


def test_threads_open_a_file_once(log: Any) -> None:
    manager = FileManager(_Handle, "shared")
    barrier = threading.Barrier(8)
    got: list[Any] = []

    def work() -> None:
        barrier.wait()
        got.append(manager.acquire())

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(got) == 8
    assert all(h is got[0] for h in got)
    assert log.opened == ["shared"]
    manager.close()


@pytest.mark.parametrize("value", [0, -1, 2.5, "8", True])
def test_bad_bound_is_refused_naming_the_value(value: Any) -> None:
    with pytest.raises(ValueError, match=repr(value).replace(".", r"\.")):
        set_max_open_files(value)


def test_default_bound_follows_the_open_file_limit() -> None:
    resource = pytest.importorskip("resource")
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if "LAZYSTACK_MAX_OPEN_FILES" in os.environ:
        pytest.skip("LAZYSTACK_MAX_OPEN_FILES is set")
    assert max_open_files() == max(4, min(128, soft // 4))


@needs_fork
@pytest.mark.timeout(60)
def test_forked_child_reopens_instead_of_sharing_the_offset(path: str) -> None:
    manager = FileManager(open, path, kwargs={"mode": "rb"})
    parent = manager.acquire()
    parent.seek(10)
    pid = os.fork()
    if pid == 0:  # child: must get its own handle, at offset 0, and move it freely
        child = manager.acquire()
        ok = child is not parent and child.tell() == 0 and child.read(5) == bytes(range(5))
        manager.close()  # closes the child's handle only
        ok = ok and child.closed and not parent.closed and current_pid() == os.getpid()
        os._exit(0 if ok else 3)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert manager.acquire() is parent
    assert parent.tell() == 10  # the child's reads did not move the parent's offset
    assert parent.read(2) == bytes([10, 11])
    manager.close()


@needs_fork
@pytest.mark.timeout(60)
def test_forked_child_never_waits_on_a_lock_held_in_the_parent(log: Any) -> None:
    """A handle another parent thread was using at the fork is left alone in the child: no deadlock."""
    manager = FileManager(_Handle, "busy")
    manager.acquire()
    with process._STATE.lock:  # another thread of the parent in the middle of an acquire
        pid = os.fork()
        if pid == 0:
            handle = manager.acquire()  # a fresh table and lock in the child
            manager.close()
            os._exit(0 if handle.is_closed else 3)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert log.closed == []  # the parent's handle was not closed by the child
    manager.close()


def test_pickles_without_the_handle_and_keeps_an_omitted_mode(path: str) -> None:
    manager = FileManager(_open_binary, path)
    manager.acquire().read(1)
    blob = pickle.dumps(manager)
    assert len(blob) < 500  # the recipe, not the file
    manager.close()
    clone = pickle.loads(blob)
    assert clone.acquire().read(3) == bytes(range(3))  # reopened, opener called without a bogus mode=
    clone.close()
    with_mode = pickle.loads(pickle.dumps(FileManager(_open_binary, path, mode="rb")))
    assert with_mode.acquire().read(2) == bytes(range(2))
    with_mode.close()


# -- the at-fork registry --------------------------------------------------------------------------------------
@needs_fork
@pytest.mark.timeout(60)
def test_at_fork_runs_every_hook_in_order_even_after_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []

    def failing() -> None:
        calls.append("child-error")
        raise RuntimeError("hook failed")

    monkeypatch.setattr(process, "_BEFORE", [])
    monkeypatch.setattr(process, "_AFTER_IN_PARENT", [])
    monkeypatch.setattr(process, "_AFTER_IN_CHILD", [])
    at_fork(before=lambda: calls.append("before-1"), after_in_child=failing)
    at_fork(
        before=lambda: calls.append("before-2"),
        after_in_parent=lambda: calls.append("parent"),
        after_in_child=lambda: calls.append("child-2"),
    )
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        os.write(write, ",".join(calls).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as f:
        in_child = f.read()
    os.waitpid(pid, 0)
    # before: reverse order of registration; after: registration order; an error does not stop the others
    assert in_child == "before-2,before-1,child-error,child-2"
    assert calls == ["before-2", "before-1", "parent"]


def test_no_other_module_registers_its_own_fork_hook() -> None:
    root = Path(process.__file__).parent
    offenders = [
        str(p.relative_to(root))
        for p in root.rglob("*.py")
        if p.name != "process.py" and "register_at_fork" in p.read_text(encoding="utf-8")
    ]
    assert offenders == []


# -- the bound follows RLIMIT_NOFILE ------------------------------------------------------------------------
_MANY_FILES = textwrap.dedent(
    """
    import os, resource, sys
    import numpy as np
    import tifffile
    import lazystack
    from lazystack.io.process import max_open_files, open_file_count

    folder, n = sys.argv[1], int(sys.argv[2])
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (64, hard))
    assert max_open_files() == 16, max_open_files()
    paths = [os.path.join(folder, f"f{i:03d}.tif") for i in range(n)]
    stacks = lazystack.load_tiffs(paths, "YX")
    peak = 0
    for rnd in range(2):
        for i, stack in enumerate(stacks):
            want = tifffile.imread(paths[i])[5:13, 7:15].astype(np.float32)
            got = stack.extract_patch(0, None, (5, 7), (8, 8))[0]
            assert np.array_equal(got, want), (paths[i], rnd)
            peak = max(peak, open_file_count(), len(os.listdir("/proc/self/fd")))
    assert open_file_count() <= 16
    print("ok", peak)
    """
)


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc/self/fd (Linux)")
@pytest.mark.timeout(240)
def test_three_hundred_tiffs_under_an_open_file_limit_of_64(tmp_path: Path) -> None:
    """``ulimit -n 64``: 300 TIFFs (memory-mapped and tiled deflate) read twice each, no EMFILE."""
    np = pytest.importorskip("numpy")
    tifffile = pytest.importorskip("tifffile")
    for i in range(300):
        data = (np.arange(32 * 32, dtype=np.uint16).reshape(32, 32) + i).astype(np.uint16)
        kwargs: dict[str, Any] = {"compression": "zlib", "tile": (16, 16)} if i % 2 else {}
        tifffile.imwrite(tmp_path / f"f{i:03d}.tif", data, **kwargs)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(process.__file__).parents[1]), *sys.path])}
    env.pop("LAZYSTACK_MAX_OPEN_FILES", None)
    done = subprocess.run(
        [sys.executable, "-c", _MANY_FILES, str(tmp_path), "300"],
        capture_output=True,
        text=True,
        env=env,
        timeout=200,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.startswith("ok"), done.stdout
    assert "Too many open files" not in done.stderr


def test_an_opener_error_reaches_the_caller_and_the_next_use_tries_again(tmp_path: Path) -> None:
    missing = tmp_path / "later.bin"
    manager = FileManager(_open_binary, str(missing))
    with pytest.raises(FileNotFoundError, match=r"later\.bin"):
        manager.acquire()
    assert process.open_file_count() == 0 or manager._key not in process._STATE.handles
    missing.write_bytes(b"xyz")
    assert manager.acquire().read() == b"xyz"
    manager.close()


def test_the_environment_variable_sets_the_bound_and_a_bad_value_is_named(
    monkeypatch: pytest.MonkeyPatch, bound: Any
) -> None:
    monkeypatch.setenv("LAZYSTACK_MAX_OPEN_FILES", "7")
    assert max_open_files() == 7
    bound(3)  # the function wins over the variable
    assert max_open_files() == 3
    bound(None)
    monkeypatch.setenv("LAZYSTACK_MAX_OPEN_FILES", "many")
    with pytest.raises(ValueError, match=r"LAZYSTACK_MAX_OPEN_FILES='many'.*positive integer"):
        max_open_files()
    monkeypatch.delenv("LAZYSTACK_MAX_OPEN_FILES")  # before the bound fixture restores (and applies) the bound


class _FirstOpenFails:
    """An opener whose first call fails once a second thread waits for it; the second call (the waiting thread's
    retry) stays open until a third thread enters the opener or 2 s pass; it records the calls inside at once."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.calls = 0
        self.inside = self.most_inside = 0
        self.first_inside = threading.Event()
        self.retrying = threading.Event()
        self.third_inside = threading.Event()

    def __call__(self) -> object:
        with self.lock:
            n = self.calls
            self.calls += 1
            self.inside += 1
            self.most_inside = max(self.most_inside, self.inside)
        try:
            if n == 0:
                self.first_inside.set()
                threading.Event().wait(0.3)  # the second thread comes to wait on this open meanwhile
                raise OSError("the first open fails")
            if n == 1:
                self.retrying.set()
                self.third_inside.wait(2)  # a bound: a third thread entering now would be a second open at once
            else:
                self.third_inside.set()
            return object()
        finally:
            with self.lock:
                self.inside -= 1


def test_after_a_failed_open_the_threads_that_come_later_wait_for_the_retry() -> None:
    """The failed open dropped its opening lock while another thread still waited on it: a third thread then made
    a new lock and opened the file at the same time as the second (two handles, one of them never closed)."""
    opener = _FirstOpenFails()
    manager = FileManager(opener)
    got: dict[str, object] = {}

    def acquire(name: str) -> None:
        try:
            got[name] = manager.acquire()
        except OSError as exc:
            got[name] = exc

    first = threading.Thread(target=acquire, args=("first",))
    first.start()
    assert opener.first_inside.wait(60)  # the first thread's open is the first call (a sleep here was not enough
    # on a loaded machine: the second thread could get there first, its open failed and the first one's succeeded)
    second = threading.Thread(target=acquire, args=("second",))
    second.start()
    first.join(60)
    assert opener.retrying.wait(60)  # the second thread opens again
    third = threading.Thread(target=acquire, args=("third",))
    third.start()
    for t in (second, third):
        t.join(60)
    manager.close()
    assert isinstance(got["first"], OSError)
    assert opener.most_inside == 1  # one open at a time
    assert got["second"] is got["third"]  # one handle
