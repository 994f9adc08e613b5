"""Session 13, integrator: CZI and bioio dask names through ``link/..`` (left alone by fix13).

``link/../x.czi`` opens the ``x.czi`` beside the symlink's *target*; a dask name built from the textual
``abspath`` named the ``x.czi`` beside the link instead, so two different files with the same size and time
shared one name (and a dask graph holding both could return one file's chunks for the other).
"""

from __future__ import annotations

import os
from pathlib import Path

import dask
import numpy as np
import pytest

from lazystack import load_bioio, load_czis

pytest.importorskip("pylibCZIrw", reason="the CZI extra (pylibCZIrw) is not installed")
from lazystack.frontends.samples import write_demo_czi


def _two_czis_same_size_and_time(tmp_path: Path) -> tuple[str, Path, np.ndarray, np.ndarray]:
    """``tmp/a/x.czi`` (7s) reached as ``tmp/link/../x.czi``, and ``tmp/x.czi`` (9s) with its size and time."""
    real = tmp_path / "a" / "real"
    real.mkdir(parents=True)
    link = tmp_path / "link"
    link.symlink_to(real, target_is_directory=True)
    a = np.full((1, 1, 16, 16), 7, np.uint8)
    b = np.full((1, 1, 16, 16), 9, np.uint8)
    write_demo_czi(tmp_path / "a" / "x.czi", a)
    write_demo_czi(tmp_path / "x.czi", b)
    if os.path.getsize(tmp_path / "a" / "x.czi") != os.path.getsize(tmp_path / "x.czi"):
        pytest.skip("pylibCZIrw wrote the two files with different sizes: the names differ anyway")
    stamp = os.stat(tmp_path / "x.czi").st_mtime_ns
    os.utime(tmp_path / "a" / "x.czi", ns=(stamp, stamp))
    return f"{link}/../x.czi", tmp_path / "x.czi", a, b


def test_czis_through_link_dotdot_and_beside_do_not_share_dask_names(tmp_path: Path) -> None:
    through_path, here_path, a, b = _two_czis_same_size_and_time(tmp_path)
    through, here = load_czis(through_path, "SCYX")[0], load_czis(here_path, "SCYX")[0]
    assert through.data.name != here.data.name
    got_through, got_here = dask.compute(through.data, here.data, scheduler="sync")
    np.testing.assert_array_equal(np.asarray(got_through)[0, 0], a[0, 0])
    np.testing.assert_array_equal(np.asarray(got_here)[0, 0], b[0, 0])


def test_bioio_stacks_through_link_dotdot_and_beside_do_not_share_dask_names(tmp_path: Path) -> None:
    pytest.importorskip("bioio_czi", reason="bioio-czi is not installed")
    through_path, here_path, a, b = _two_czis_same_size_and_time(tmp_path)
    through, here = load_bioio(through_path, "TCZYX")[0], load_bioio(here_path, "TCZYX")[0]
    assert through.data.name != here.data.name
    got_through, got_here = dask.compute(through.data, here.data, scheduler="sync")
    assert np.all(np.asarray(got_through) == a[0, 0, 0, 0])
    assert np.all(np.asarray(got_here) == b[0, 0, 0, 0])
