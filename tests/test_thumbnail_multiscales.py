"""A thumbnail's coarser level comes from the multiscale image the stack belongs to."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lazystack import load_zarrs, thumbnail


def _multiscale(name: str, paths: list[str]) -> dict[str, object]:
    return {
        "version": "0.4",
        "name": name,
        "axes": [{"name": "y", "type": "space"}, {"name": "x", "type": "space"}],
        "datasets": [
            {"path": p, "coordinateTransformations": [{"type": "scale", "scale": [2.0**k, 2.0**k]}]}
            for k, p in enumerate(paths)
        ],
    }


def test_thumbnail_level_of_the_second_multiscale_image(tmp_path: Path) -> None:
    zarr = pytest.importorskip("zarr")
    rng = np.random.default_rng(1)
    a, b = rng.integers(0, 255, (2, 64, 64), dtype=np.uint8)
    group = zarr.open_group(str(tmp_path / "two.zarr"), mode="w", zarr_format=2)
    for prefix, data in (("a", a), ("b", b)):
        for k in range(2):
            level = data[:: 2**k, :: 2**k]
            group.create_array(f"{prefix}{k}", shape=level.shape, chunks=(16, 16), dtype=level.dtype)[:] = level
    group.attrs["multiscales"] = [_multiscale("A", ["a0", "a1"]), _multiscale("B", ["b0", "b1"])]
    (b0,) = load_zarrs(str(tmp_path / "two.zarr" / "b0"), "YX")
    assert b0.level == 0
    np.testing.assert_array_equal(b0.compute().squeeze(), b)
    plane, step = thumbnail(b0, max_size=32)  # level b1 (32 px) is the coarsest with >= 32
    assert step == 2
    np.testing.assert_array_equal(plane, b[::2, ::2])
