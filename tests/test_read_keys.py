"""``LazyImageStack.read`` takes numpy's basic int / slice keys on every kind of stack, and names a bad key.

Reference: numpy's own basic indexing of the array the stack was written from. Before, a slice without bounds read
whole from an in-memory stack but raised a bare TypeError on a Zarr stack (tests/test_hostile15.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile
import zarr

from lazystack import load_arrays, load_tiffs, load_zarrs
from lazystack.core.errors import SelectionError

DATA = np.arange(3 * 2 * 20 * 24, dtype=np.uint16).reshape(3, 2, 20, 24)  # S C Y X

KEYS: list[tuple[Any, ...]] = [
    (slice(None),) * 4,
    (0, slice(None), slice(None), slice(None)),
    (-1, -2, slice(-5, None), slice(None, -3)),
    (slice(1, None), 1, slice(3, 100), slice(-100, 7)),
    (slice(None), slice(None), slice(None, None, 3), slice(1, 20, 5)),
    (2, 0, slice(18, 4, 1), slice(0, 24)),  # empty
    (np.int64(1), slice(None), 4, slice(2, 3)),
]


def _stacks(tmp_path: Path) -> dict[str, Any]:
    tif = tmp_path / "s.tif"
    tifffile.imwrite(tif, DATA, tile=(16, 16), photometric="minisblack", planarconfig="separate")
    z = tmp_path / "s.zarr"
    zarr.create_array(str(z), data=DATA, chunks=(1, 1, 8, 8))
    return {
        "array": load_arrays(DATA, "SCYX")[0],
        "tiff": load_tiffs(tif, "SCYX")[0],
        "zarr": load_zarrs(z, "SCYX")[0],
    }


@pytest.mark.parametrize("kind", ["array", "tiff", "zarr", "zarr-loaded", "zarr-view"])
def test_read_takes_numpy_basic_keys(tmp_path: Path, kind: str) -> None:
    stacks = _stacks(tmp_path)
    stack = stacks[kind.split("-")[0]]
    reference = DATA
    if kind.endswith("loaded"):
        stack = stack.load()
    if kind.endswith("view"):  # a strided view: keys compose with its selection
        stack = stack.isel(Y=slice(1, None, 2))
        reference = DATA[:, :, 1::2]
    for key in KEYS:
        want = reference[key]
        got = np.asarray(stack.read(key))
        assert got.shape == want.shape, (kind, key)
        np.testing.assert_array_equal(got, want, err_msg=f"{kind} {key}")


@pytest.mark.parametrize("kind", ["array", "zarr"])
@pytest.mark.parametrize(
    ("key", "words"),
    [
        ((0, 0, 0), "expected a tuple of 4"),
        ([0, 0, 0, 0], "expected a tuple of 4"),
        ((3, 0, 0, 0), "outside axis 'S' of size 3"),
        ((0, -3, 0, 0), "outside axis 'C' of size 2"),
        ((0, 0, slice(None, None, -1), 0), "steps must be >= 1"),
        ((0, 0, slice(None, None, 0), 0), "steps must be >= 1"),
        ((True, 0, 0, 0), "takes an int or a slice"),
        ((0, 0, [1, 2], 0), "takes an int or a slice"),
        ((0, 0, 1.0, 0), "takes an int or a slice"),
    ],
)
def test_a_bad_read_key_is_a_selection_error_naming_it(tmp_path: Path, kind: str, key: Any, words: str) -> None:
    stack = _stacks(tmp_path)[kind]
    with pytest.raises(SelectionError, match=words) as info:
        stack.read(key)
    assert repr(key)[:10] in str(info.value)
