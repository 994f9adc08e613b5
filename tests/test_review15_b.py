"""Review of hostile15 (session 15): what its fixes missed, and what held up.

Findings first (each test failed before its fix); then the checks of hostile15's changes that held up: OME 0.3
axes lists, the level-order refusal and propose_axes over HTTP, the SIGTERM handler of ``main()`` called from code.
"""

from __future__ import annotations

import json
import signal
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile
from test_hostile15 import _ome  # an OME-Zarr 0.5 image of 2 levels (scales 1 then 2), its ``ome`` changed

import lazystack
from lazystack import load, load_arrays
from lazystack.core.errors import SourceFormatError
from lazystack.frontends.cli import main

pytestmark = pytest.mark.timeout(240)


@pytest.fixture
def tif(tmp_path: Path) -> tuple[Path, np.ndarray]:
    data = np.arange(2 * 16 * 16, dtype=np.uint16).reshape(2, 16, 16)
    path = tmp_path / "a.tif"
    tifffile.imwrite(path, data)
    return path, data


# -- findings ------------------------------------------------------------------------------------------------------


def test_demo_keep_twice_in_the_same_folder_with_every_format(tmp_path: Path) -> None:
    """hostile15 accepts "a folder an earlier demo wrote", but the second run failed on the OME-Zarr format
    ("'.../ome-zarr/image.ome.zarr' already exists; pass overwrite=True") and stopped the whole demo (hostile15's test
    ran the second demo with the tiff format only)."""
    from lazystack.frontends.demo import run_demo

    folder = tmp_path / "demo"
    kwargs: dict[str, Any] = {"size": 32, "n_patches": 2, "patch": 8, "frames": 1, "progress": False}
    first = run_demo(folder=folder, **kwargs)
    second = run_demo(folder=folder, **kwargs)
    assert [(r.format, r.note) for r in second] == [(r.format, r.note) for r in first]
    assert [r.n_patches for r in second] == [r.n_patches for r in first]
    (stack,) = load(str(folder / "ome-zarr" / "image.ome.zarr"), levels=0)
    assert stack.data_shape[-2:] == (32, 32)


def test_stats_output_through_a_symbolic_link_writes_its_target(
    tif: tuple[Path, np.ndarray], tmp_path: Path, capsys: Any
) -> None:
    """The atomic write (a temporary file renamed over ``--output``) replaced a symbolic link with a file, leaving
    its target stale; ``open(path, "w")`` before hostile15 wrote through the link."""
    target_dir = tmp_path / "shared"
    target_dir.mkdir()
    target = target_dir / "stats.json"
    target.write_text("{}")
    link = tmp_path / "link.json"
    link.symlink_to(target)
    assert main(["stats", str(tif[0]), "--axes", "CYX", "--output", str(link), "--quiet", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert link.is_symlink()
    assert json.loads(target.read_text()) == printed
    assert sorted(p.name for p in target_dir.iterdir()) == ["stats.json"]  # no temporary file left


@pytest.mark.parametrize("clip", [{0, 1}, np.array(5.0)])
def test_normalized_clip_of_two_items_that_cannot_be_indexed(clip: Any) -> None:
    """hostile15's check iterated ``clip`` while the reader indexes it: a set ``{0, 1}`` passed the check, then
    raised TypeError ("'set' object is not subscriptable"); a 0-d array (a bare number) raised TypeError from
    ``len()`` ("len() of unsized object"): neither named clip nor what it accepts."""
    (stack,) = load_arrays([np.arange(32, dtype=np.uint8).reshape(2, 4, 4)], "CYX")
    with pytest.raises(ValueError, match=r"clip must be a \(low, high\) pair of numbers with low <= high, got"):
        stack.normalized({"mean": [1.0, 2.0], "std": [1.0, 1.0]}, clip=clip)
    # a numpy pair and numeric strings, as the reader takes them (float()), still work
    out = stack.normalized({"mean": [1.0, 2.0], "std": [1.0, 1.0]}, clip=np.array([0.0, 3.0])).compute()
    assert float(out.max()) == 3.0


def test_level_order_tolerates_rounding_of_an_axis_not_downsampled(tmp_path: Path) -> None:
    """The coarsest-first refusal compared scales exactly: a z scale of 0.30000000000000004 at level 0 and 0.3 at
    level 1 (a writer computing each level's scale) refused a pyramid in the right order that loaded before."""

    def noisy(ome: dict[str, Any]) -> None:
        datasets = ome["multiscales"][0]["datasets"]
        datasets[0]["coordinateTransformations"][0]["scale"][1] = 0.1 * 3
        datasets[1]["coordinateTransformations"][0]["scale"][1] = 0.3

    path = _ome(tmp_path, noisy)
    (stack,) = load(str(path), levels=0)
    expected = np.arange(2 * 3 * 16 * 16, dtype=np.uint16).reshape(2, 3, 16, 16)
    np.testing.assert_array_equal(stack.compute().reshape(expected.shape), expected)


# -- what held up ---------------------------------------------------------------------------------------------------


def test_ome_03_axes_as_a_list_of_strings_still_load(tmp_path: Path) -> None:
    """The 'axes as a string' refusal must not touch NGFF 0.3, whose axes are a list of strings."""
    import zarr

    data = np.arange(2 * 8 * 8, dtype=np.uint8).reshape(2, 8, 8)
    group = zarr.open_group(str(tmp_path / "v03.zarr"), mode="w", zarr_format=2)
    group.create_array("0", data=data)
    group.create_array("1", data=data[:, ::2, ::2])
    group.attrs["multiscales"] = [
        {"version": "0.3", "axes": ["c", "y", "x"], "datasets": [{"path": "0"}, {"path": "1"}]}
    ]
    assert lazystack.propose_axes(str(tmp_path / "v03.zarr")) == "CYX"
    (stack,) = load(str(tmp_path / "v03.zarr"), levels=0)
    np.testing.assert_array_equal(stack.compute().reshape(data.shape), data)


def test_coarsest_first_refused_and_axes_proposed_over_http(tmp_path: Path) -> None:
    """Over HTTP: a reversed pyramid is refused as on disk; a bioformats2raw layout proposes its image's axes."""
    import zarr
    from zarr_helpers import serve_directory

    def reverse(ome: dict[str, Any]) -> None:
        ome["multiscales"][0]["datasets"].reverse()

    _ome(tmp_path, reverse, "reversed.zarr")
    layout = zarr.open_group(str(tmp_path / "b2r.zarr"), mode="w", zarr_format=3)
    layout.attrs["ome"] = {"version": "0.5", "bioformats2raw.layout": 3}
    image = layout.require_group("0")
    image.create_array("0", data=np.arange(16, dtype=np.uint8).reshape(4, 4))
    axes = [{"name": "y", "type": "space"}, {"name": "x", "type": "space"}]
    image.attrs["ome"] = {"version": "0.5", "multiscales": [{"axes": axes, "datasets": [{"path": "0"}]}]}
    with serve_directory(tmp_path) as (url, _):
        with pytest.raises(SourceFormatError, match=r"not ordered from the highest resolution") as exc:
            load(f"{url}/reversed.zarr")
        assert "reversed.zarr" in str(exc.value)
        assert lazystack.propose_axes(f"{url}/b2r.zarr") == "YX"
        (stack,) = load(f"{url}/b2r.zarr")
        np.testing.assert_array_equal(stack.compute().reshape(4, 4), np.arange(16).reshape(4, 4))


def test_main_called_from_code_restores_the_sigterm_handler(tif: tuple[Path, np.ndarray], capsys: Any) -> None:
    """``main()`` from code (a notebook): the SIGTERM handler in place before is back after it; from another thread
    it runs without touching the handlers (``signal.signal`` would raise there)."""

    def mine(signum: int, frame: Any) -> None:  # pragma: no cover - never called
        pass

    previous = signal.signal(signal.SIGTERM, mine)
    try:
        assert main(["stats", str(tif[0]), "--axes", "CYX", "--quiet", "--json"]) == 0
        assert signal.getsignal(signal.SIGTERM) is mine
        codes: list[int] = []
        thread = threading.Thread(
            target=lambda: codes.append(main(["stats", str(tif[0]), "--axes", "CYX", "--quiet", "--json"]))
        )
        thread.start()
        thread.join(120)
        assert codes == [0]
        assert signal.getsignal(signal.SIGTERM) is mine
    finally:
        signal.signal(signal.SIGTERM, previous)
    capsys.readouterr()


def test_an_ignored_sigterm_stays_ignored(
    tif: tuple[Path, np.ndarray], capsys: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``main()`` replaced an ignored SIGTERM (a parent's ``trap '' TERM``, a supervisor that ignores it for its
    children) with its handler: a SIGTERM meant to be ignored ended the run with exit status 143. Python itself
    leaves an ignored SIGINT ignored."""
    import lazystack.ops.stats as stats_module

    compute = stats_module.channel_statistics

    def terminated_midway(*args: Any, **kwargs: Any) -> Any:
        signal.raise_signal(signal.SIGTERM)  # handlers run before raise_signal returns
        return compute(*args, **kwargs)

    monkeypatch.setattr(stats_module, "channel_statistics", terminated_midway)
    previous = signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        assert main(["stats", str(tif[0]), "--axes", "CYX", "--quiet", "--json"]) == 0
        assert signal.getsignal(signal.SIGTERM) == signal.SIG_IGN
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert capsys.readouterr().err == ""


def test_an_interrupted_write_leaves_no_partial_folder_while_a_write_is_in_flight(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every store write is slowed in zarr's I/O loop, so the interrupt finds one in flight (as under load)."""
    import asyncio
    import os
    import time

    import zarr.storage

    original = zarr.storage.LocalStore.set

    async def slow_set(self: Any, key: str, value: Any) -> None:
        await asyncio.sleep(0.3)
        await original(self, key, value)

    monkeypatch.setattr(zarr.storage.LocalStore, "set", slow_set)
    (stack,) = load_arrays([np.zeros((4, 64, 64), np.uint16)], "ZYX")

    def write_until_interrupted() -> None:
        for _ in range(100):  # bounded: a write that ends before the timer is written again
            lazystack.write_ome_zarr(stack, tmp_path / "out.zarr", chunks=16, overwrite=True, progress=False)

    timer = threading.Timer(1.0, lambda: os.kill(os.getpid(), signal.SIGINT))
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        timer.start()
        with pytest.raises(KeyboardInterrupt):
            write_until_interrupted()
        time.sleep(1.0)  # the write in flight ends
    finally:
        timer.cancel()
        signal.signal(signal.SIGINT, previous)
    assert sorted(p.name for p in tmp_path.iterdir() if ".partial" in p.name) == []
