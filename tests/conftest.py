"""Fixtures shared by the whole test suite."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import dask
import pytest
from hypothesis import HealthCheck, settings

#: The checkout whose ``lazystack`` the tests import (a child interpreter is given it first on its path).
ROOT = Path(__file__).resolve().parents[1]

# Property tests draw the same examples on every run (a fresh CI clone has no example database, so random draws
# could fail one run in many on an example no other run tries), with no time limit per example and no health
# check on slow data generation (both measure wall-clock time, which a loaded CI machine stretches).
# LAZYSTACK_HYPOTHESIS_PROFILE=explore draws new random examples on every run, for a bug hunt.
settings.register_profile(
    "lazystack", derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow], print_blob=True
)
settings.register_profile("explore", deadline=None, suppress_health_check=[HealthCheck.too_slow], print_blob=True)
settings.load_profile(os.environ.get("LAZYSTACK_HYPOTHESIS_PROFILE", "lazystack"))

#: Real microscope files written by other software, beside the checkout.
SHARED_DATA = Path(os.environ.get("LAZYSTACK_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


def _shared_dir(sub: str) -> Path:
    folder = SHARED_DATA / sub
    if not folder.is_dir():
        pytest.skip(f"real data folder {folder} is absent (set LAZYSTACK_SHARED_DATA to point at shared/data)")
    return folder


@pytest.fixture(scope="session")
def shared_czi_dir() -> Path:
    """``../shared/data/czi`` (skips when absent)."""
    return _shared_dir("czi")


@pytest.fixture(scope="session")
def shared_tiff_dir() -> Path:
    """``../shared/data/tiff`` (skips when absent)."""
    return _shared_dir("tiff")


def shared_files(sub: str, pattern: str) -> list[Path]:
    """Real files for ``pytest.mark.parametrize`` (empty when the folder is absent)."""
    folder = SHARED_DATA / sub
    return sorted(folder.glob(pattern)) if folder.is_dir() else []


class ComputeForbiddenError(AssertionError):
    """Raised by the scheduler of :func:`raise_if_dask_computes`."""


@contextmanager
def raise_if_dask_computes() -> Iterator[None]:
    """Fail on any dask compute inside the block (xarray's test idiom)."""

    def scheduler(dsk, keys, **kwargs):
        msg = "a dask computation ran where nothing should be computed"
        raise ComputeForbiddenError(msg)

    with dask.config.set(scheduler=scheduler):
        yield


@pytest.fixture
def no_dask_compute() -> Iterator[None]:
    """Fixture form of :func:`raise_if_dask_computes`."""
    with raise_if_dask_computes():
        yield


@pytest.fixture
def direct_zarr_engine() -> Iterator[None]:
    """The ``direct`` Zarr engine, whatever ``LAZYSTACK_ZARR_ENGINE`` says: for tests of its own HTTP clients."""
    from lazystack.sources.zarr.engines import set_zarr_engine

    previous = set_zarr_engine("direct")
    try:
        yield
    finally:
        set_zarr_engine(previous)


def run_python(
    code: str, *args: str, extra_path: str | None = None, timeout: float = 120.0
) -> subprocess.CompletedProcess[str]:
    """Run ``code`` (with ``args`` as ``sys.argv[1:]``) in a fresh interpreter that imports this checkout's lazystack.

    ``extra_path`` goes first on the child's ``PYTHONPATH``. A child still running after ``timeout`` seconds fails
    the test naming the hang; the finished process is returned as it ended.
    """
    paths = [p for p in (extra_path, str(ROOT), os.environ.get("PYTHONPATH", "")) if p]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}
    try:
        return subprocess.run(
            [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=timeout, env=env, check=False
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"HANG: the child did not finish within {timeout} s; stderr: {str(exc.stderr)[-800:]}")
