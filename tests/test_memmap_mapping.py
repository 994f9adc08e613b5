"""The memory-map guard finds a memmap's mapping through public numpy (``ndarray.base``), for views too.

Reading a page of a file truncated after it was mapped is a SIGBUS; lazystack checks the mapping's size
first. These tests truncate files under ``load_arrays`` memmaps and under custom readers returning views of
memmaps, in forked children (a SIGBUS kills the child, not the session).
"""

from __future__ import annotations

import mmap
import multiprocessing
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from harness import truncate_then_read

import lazystack
from lazystack.io.handles import mapping_of


def test_mapping_of_is_the_mmap_under_a_memmap_and_its_views(tmp_path: Path) -> None:
    path = tmp_path / "a.npy"
    np.save(path, np.arange(4 * 8 * 8, dtype=np.uint16).reshape(4, 8, 8))
    top = np.load(path, mmap_mode="r")
    raw = mapping_of(top)
    assert isinstance(raw, mmap.mmap)
    # the mapping is the file's bytes (header included): the same data as the array reads
    header = len(raw) - top.nbytes
    np.testing.assert_array_equal(np.frombuffer(raw, np.uint16, offset=header).reshape(4, 8, 8), top)
    for view in (top[1:], top[:, 2:5, ::2], top.T, np.asarray(top)[0], top.view(np.uint8)):
        assert mapping_of(view) is raw
    assert mapping_of(np.array(top)) is None  # a copy
    assert mapping_of(np.zeros(3)) is None
    assert mapping_of([1, 2]) is None


def _truncate_view(path: str, read_first: bool) -> str:
    def read(p: Any) -> Any:
        return np.load(p, mmap_mode="r")[:, :, 1:]  # a view: not itself built on the mmap

    (stack,) = lazystack.load_custom_file(path, "ZYX", read_func=read)
    return truncate_then_read(stack, path, read_first)


def _truncate_memmap(path: str, read_first: bool) -> str:
    (stack,) = lazystack.load_arrays([np.load(path, mmap_mode="r")], "ZYX")
    return truncate_then_read(stack, path, read_first)


@pytest.mark.parametrize("read_first", [True, False], ids=["after-a-read", "before-any-read"])
@pytest.mark.parametrize("opener", [_truncate_view, _truncate_memmap], ids=["custom-view", "load_arrays"])
def test_truncated_memmap_is_an_error_not_sigbus(tmp_path: Path, opener: Any, read_first: bool) -> None:
    path = tmp_path / "mapped.npy"
    np.save(path, np.ones((4, 64, 65), np.uint16))
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(1) as pool:
        outcome = pool.apply_async(opener, (str(path), read_first)).get(timeout=60)
    assert outcome.startswith("SourceReadError"), outcome
    assert "mapped.npy" in outcome
    assert "truncated" in outcome


def test_no_private_numpy_memmap_attribute_is_read() -> None:
    """``np.memmap._mmap`` is numpy's private field (private_names.py cannot see it inside a string)."""
    root = Path(lazystack.__file__).parent
    hits = [
        f"{path.relative_to(root)}:{n}"
        for path in root.rglob("*.py")
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if re.search(r"""["'.]_mmap\b""", line)
    ]
    assert hits == []
