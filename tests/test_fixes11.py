"""Defects reviewers noticed and left alone (session 11), each pinned by a test that fails without its fix.

References are independent of lazystack: the message an error was raised with, zarr-python's own reads,
numpy slicing, napari's own layer transforms, the decimal values the CZI files store.
"""

from __future__ import annotations

import os
import pickle
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr

import lazystack
import lazystack.sampling.manifest
import lazystack.sources.zarr
from lazystack.core import errors
from lazystack.sources.zarr import _StoreDeletedError, _StoreRewrittenError
from lazystack.sources.zarr.engines import _StaleChunkError


# -- 1. an error re-raised from its message alone (a DataLoader worker's) is not wrapped twice ---------------------
def _error_classes() -> list[type[BaseException]]:
    """Every exception class of core/errors.py, and every LazyStackError subclass of the package (private ones too)."""
    found = [v for v in vars(errors).values() if isinstance(v, type) and issubclass(v, BaseException)]
    todo: list[type[BaseException]] = [errors.LazyStackError]
    while todo:
        cls = todo.pop()
        found.append(cls)
        todo.extend(cls.__subclasses__())
    return sorted(set(found), key=lambda c: f"{c.__module__}.{c.__qualname__}")


@pytest.mark.parametrize("cls", _error_classes(), ids=lambda c: c.__qualname__)
def test_every_error_class_is_built_from_its_own_message(cls: type[BaseException]) -> None:
    message = "reading 'x.zarr' failed: chunk 'c/0/0' is truncated"
    error = cls(message)
    assert str(error) == message
    again = type(error)(str(error))  # what torch's ExceptionWrapper.reraise does
    assert type(again) is cls
    assert str(again) == message
    unpickled = pickle.loads(pickle.dumps(error))
    assert type(unpickled) is cls
    assert str(unpickled) == message


@pytest.mark.parametrize(
    "error",
    [
        _StoreDeletedError.of("/data/a.zarr/zarr.json"),
        _StoreRewrittenError.of("/data/a.zarr/zarr.json"),
        _StaleChunkError.of("/data/a.zarr/c/0/0", "c/0/0", "file:///data/a.zarr"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_errors_written_for_a_path_keep_their_message_and_fields(error: Exception) -> None:
    message = str(error)
    assert "/data/a.zarr" in message
    assert str(type(error)(message)) == message
    unpickled = pickle.loads(pickle.dumps(error))
    assert str(unpickled) == message
    assert unpickled.path == error.path  # type: ignore[attr-defined]


def _rewrite_metadata(path: Path) -> None:
    document = path / "zarr.json"
    document.write_text(document.read_text() + " ")  # same metadata, a new modification time and size


def _rewrite_chunks(path: Path) -> None:
    zarr.open_array(path, mode="r+")[...] = 3


@pytest.mark.filterwarnings("ignore:This DataLoader will create:UserWarning")
@pytest.mark.parametrize(
    ("change", "original"),
    [
        (_rewrite_metadata, "the Zarr metadata document"),
        (_rewrite_chunks, "changed after it was opened: its chunk file"),
    ],
    ids=["metadata-rewritten", "chunk-rewritten"],
)
def test_a_changed_store_error_from_a_dataloader_worker_is_said_once(
    tmp_path: Path, change: Any, original: str
) -> None:
    torch = pytest.importorskip("torch")
    from torch.utils.data import DataLoader

    from lazystack.sampling import RandomSampler
    from lazystack.torch import PatchDataset

    path = tmp_path / "a.zarr"
    array = zarr.create_array(path, shape=(2, 64, 64), chunks=(1, 32, 32), dtype="uint16")
    array[...] = 1
    (stack,) = lazystack.load_zarrs([path], "SYX")
    stack.extract_patch(0, None, (0, 0), (8, 8))  # opened, one chunk cached
    time.sleep(0.01)  # a later modification time, whatever the file system's resolution
    change(path)
    dataset = PatchDataset([stack], RandomSampler([stack], 16, 8, seed=1))
    loader = DataLoader(dataset, batch_size=4, num_workers=1, multiprocessing_context="fork")
    with pytest.raises(lazystack.SourceReadError) as info:
        next(iter(loader))
    message = str(info.value)
    assert "in DataLoader worker process 0" in message, message  # it did come from the worker
    assert torch.utils.data.get_worker_info() is None
    assert message.count(original) == 1, message
    assert not message.startswith(original), message  # torch's prefix first, the worker's message once after it
    assert str(path) in message
