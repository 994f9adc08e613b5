"""Remote batches in rounds, two in flight: any patch set equals numpy slicing, within twice the byte bound.

A reader over numpy data that says it is remote takes the pipelined path of
``extract_patches`` without a server; hypothesis draws the patch sets (shared
chunks, channel lists, rounds of one chunk up to one round), the bound and the
cache on or off. The reference is numpy slicing of the data.
"""

from __future__ import annotations

import pickle
import threading
import weakref
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lazystack import LazyImageStack
from lazystack.core.errors import SourceReadError
from lazystack.io.cache import chunk_cache_size, get_chunk_cache
from lazystack.io.chunked import ChunkedReader, ChunkIndex
from lazystack.io.reader import ReaderCapabilities
from lazystack.ops.batch import extract_patches

_DATA = np.random.default_rng(5).integers(0, 2**16, (2, 3, 40, 50), dtype=np.uint16)  # SCYX
_CHUNKS = (1, 2, 8, 16)
_CHUNK_BYTES = int(np.prod(_CHUNKS)) * _DATA.itemsize


class _RemoteReader(ChunkedReader):
    """A chunked reader over ``_DATA`` that says it is remote, counting its fetches and the chunks alive."""

    def __init__(self) -> None:
        super().__init__(
            _DATA.shape,
            _DATA.dtype,
            _CHUNKS,
            token=f"review-remote-{id(self)}",
            capabilities=ReaderCapabilities(remote=True),
        )
        self.lock = threading.Lock()
        self.alive = self.peak = 0
        self.fetches: list[list[ChunkIndex]] = []

    def _released(self) -> None:
        with self.lock:
            self.alive -= 1

    def fetch_chunks(self, indices: Sequence[ChunkIndex]) -> Mapping[ChunkIndex, np.ndarray]:
        out = {}
        with self.lock:
            self.fetches.append(list(indices))
        for idx in indices:
            chunk = _DATA[self.chunk_grid.chunk_region(idx)].copy()
            with self.lock:
                self.alive += 1
                self.peak = max(self.peak, self.alive)
            weakref.finalize(chunk, self._released)
            out[idx] = chunk
        return out


_request = st.tuples(
    st.integers(0, 1),  # sample
    st.one_of(st.none(), st.lists(st.integers(0, 2), min_size=1, max_size=3, unique=True)),  # channels
    st.integers(0, 39),
    st.integers(0, 49),
    st.integers(1, 20),
    st.integers(1, 30),
)


@settings(max_examples=60, deadline=None)
@given(
    requests=st.lists(_request, min_size=1, max_size=12),
    bound_chunks=st.integers(1, 40),
    cache=st.booleans(),
)
def test_remote_rounds_equal_numpy_slicing_within_twice_the_bound(
    requests: list[tuple[int, list[int] | None, int, int, int, int]], bound_chunks: int, cache: bool
) -> None:
    reqs: list[tuple[int, list[int] | None, tuple[int, int], tuple[int, int]]] = []
    for sample, channels, y, x, h, w in requests:
        h, w = min(h, 40 - y), min(w, 50 - x)  # inside the image
        reqs.append((sample, channels, (y, x), (h, w)))
    with chunk_cache_size(2**24 if cache else 0):
        reader = _RemoteReader()
        stack = LazyImageStack(reader, "SCYX")
        got = extract_patches([(stack, *r) for r in reqs], max_batch_bytes=bound_chunks * _CHUNK_BYTES)
        for (sample, channels, (y, x), (h, w)), patch in zip(reqs, got, strict=True):
            expected = _DATA[sample, channels if channels is not None else slice(None), y : y + h, x : x + w]
            np.testing.assert_array_equal(patch, expected.astype(np.float32))
        if not cache:  # the chunks held: at most two rounds' (a request's own chunks are held together)
            grid = reader.chunk_grid
            largest = max(
                len(grid.touched((slice(s, s + 1), slice(0, 3), slice(y, y + h), slice(x, x + w))))
                for s, _, (y, x), (h, w) in reqs
            )
            assert reader.peak <= 2 * max(bound_chunks, largest)
        del got
    assert reader.alive == 0  # nothing left once the patches and the cache let go


def test_a_remote_batch_in_many_rounds_fetches_a_chunk_once_per_run_of_rounds_needing_it() -> None:
    """Neighbouring requests over one row of chunks, one request a round: each chunk fetched once (cache off)."""
    reader = _RemoteReader()
    stack = LazyImageStack(reader, "SCYX")
    reqs: list[Any] = [(0, [0], (0, x), (8, 20)) for x in range(0, 30, 4)]  # each overlaps the next's chunks
    with chunk_cache_size(0):
        got = extract_patches([(stack, *r) for r in reqs], max_batch_bytes=_CHUNK_BYTES)  # one request a round
    for (_, _, (y, x), (h, w)), patch in zip(reqs, got, strict=True):
        np.testing.assert_array_equal(patch[0], _DATA[0, 0, y : y + h, x : x + w].astype(np.float32))
    fetched = [c for f in reader.fetches for c in f]
    assert sorted(fetched) == [(0, 0, 0, x) for x in range(3)]  # each once: shared by successive rounds, handed over


# -- a stale chunk on the batch path, across a process boundary ---------------------------------------------
def _rewritten_stack(root: Path) -> Any:
    """A Zarr stack read once, then every chunk rewritten (a later modification time than the opening)."""

    import zarr
    from zarr_helpers import dated_now

    from lazystack import load_zarrs

    array = zarr.create_array(root / "a.zarr", shape=(2, 64, 64), chunks=(1, 32, 32), dtype="uint16")
    array[...] = 1
    (stack,) = load_zarrs(root / "a.zarr", "SYX")
    stack.extract_patch(0, None, (0, 0), (8, 8))
    with dated_now(root / "a.zarr"):  # a later modification time than the opening, whatever the clock
        zarr.open_array(root / "a.zarr", mode="r+")[...] = 2
    get_chunk_cache().clear()
    return stack


def test_a_stale_chunk_error_of_a_batch_survives_pickling(tmp_path: Path) -> None:
    stack = _rewritten_stack(tmp_path)
    with pytest.raises(SourceReadError) as info:
        extract_patches([(stack, 1, None, (0, 0), (8, 8)), (stack, 1, None, (0, 0), (40, 40))])
    error = info.value
    assert "reopen" in str(error)
    again = pickle.loads(pickle.dumps(error))  # multiprocessing, dask distributed
    assert isinstance(again, SourceReadError)
    assert str(again) == str(error)


@pytest.mark.filterwarnings("ignore:This DataLoader will create:UserWarning")
def test_a_stale_chunk_in_a_dataloader_worker_is_a_source_read_error_in_the_main_process(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    from lazystack.sampling import RandomSampler
    from lazystack.torch import EpochSampler, PatchDataset

    stack = _rewritten_stack(tmp_path)
    dataset = PatchDataset([stack], RandomSampler([stack], (40, 40), 8, seed=1))
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=4, sampler=EpochSampler(dataset), num_workers=2, multiprocessing_context="fork"
    )
    with pytest.raises(SourceReadError, match="reopen"):  # what a training loop catches, not a RuntimeError
        next(iter(loader))


@pytest.mark.parametrize("change", ["deleted", "rewritten"])
def test_a_changed_store_error_of_a_batch_keeps_its_message_when_pickled(tmp_path: Path, change: str) -> None:
    import os

    import zarr

    from lazystack import load_zarrs

    array = zarr.create_array(tmp_path / "a.zarr", shape=(2, 64, 64), chunks=(1, 32, 32), dtype="uint16")
    array[...] = 1
    (stack,) = load_zarrs(tmp_path / "a.zarr", "SYX")
    metadata = tmp_path / "a.zarr" / "zarr.json"
    if change == "deleted":
        metadata.unlink()
    else:
        metadata.write_text(metadata.read_text(encoding="utf-8") + "\n", encoding="utf-8")
        os.utime(metadata, ns=(metadata.stat().st_atime_ns, metadata.stat().st_mtime_ns + 10**9))
    get_chunk_cache().clear()
    with pytest.raises((SourceReadError, FileNotFoundError)) as info:
        extract_patches([(stack, 1, None, (0, 0), (8, 8)), (stack, 1, None, (0, 0), (40, 40))])
    error = info.value
    assert str(metadata) in str(error)
    again = pickle.loads(pickle.dumps(error))
    assert type(again) is type(error)
    assert str(again) == str(error)


# -- forked DataLoader workers over HTTP, the parent's round pool started (and busy) before the fork -----------
@pytest.mark.filterwarnings("ignore:This DataLoader will create:UserWarning")
def test_forked_dataloader_workers_fetch_remote_rounds_after_the_parent_did(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    torch = pytest.importorskip("torch")
    import zarr
    from test_remote_rounds import _CHUNK_BYTES, _DATA, _server

    import lazystack.torch as lazystack_torch
    from lazystack import load_zarrs
    from lazystack.sampling import RandomSampler
    from lazystack.torch import EpochSampler, PatchDataset

    zarr.create_array(tmp_path / "v.zarr", shape=_DATA.shape, chunks=(8, 64, 64), dtype="uint16")[...] = _DATA
    with _server(tmp_path) as (url, _), chunk_cache_size(0):
        (stack,) = load_zarrs(f"{url}/v.zarr", "ZYX")
        assert stack.reader.as_chunked().capabilities.remote

        def small_rounds(requests: Any) -> list[np.ndarray]:  # several rounds a batch, in the parent and the workers
            return extract_patches(requests, max_batch_bytes=4 * _CHUNK_BYTES)

        monkeypatch.setattr(lazystack_torch, "extract_patches", small_rounds)
        sampler = RandomSampler([stack], (16, 96, 96), 24, seed=5)
        dataset = PatchDataset([stack], sampler, return_spec=True)
        dataset.__getitems__([(0, i) for i in range(8)])  # the parent's round pool has threads when the workers fork
        loader = torch.utils.data.DataLoader(
            dataset,
            batch_size=8,
            sampler=EpochSampler(dataset),
            num_workers=2,
            multiprocessing_context="fork",
            timeout=120,  # a hung worker fails the test instead of hanging it
        )
        seen = 0
        for batch in loader:
            for row, patch in zip(batch["spec"].tolist(), batch["input"].numpy(), strict=True):
                (z, y, x), (d, h, w) = row[2:5], row[5:8]
                np.testing.assert_array_equal(patch[0], _DATA[z : z + d, y : y + h, x : x + w].astype(np.float32))
                seen += 1
        assert seen == 24
