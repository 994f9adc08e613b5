"""Review of session 14's integrator commits (revE): boolean channel selections, the region check of ArrayReader."""

from __future__ import annotations

import numpy as np
import pytest

from lazystack import ChannelIndexError, load_arrays
from lazystack.io.reader import ArrayReader
from lazystack.sampling import GridSampler, RandomSampler


def _stack():
    data = np.arange(2 * 3 * 16 * 16, dtype=np.uint16).reshape(2, 3, 16, 16)
    (stack,) = load_arrays(data, "SCYX")
    return stack


@pytest.mark.parametrize("channels", [[True, False, True], (True,), np.array([True, False, True]), True])
def test_extract_patch_and_patches_refuse_boolean_channels(channels):
    stack = _stack()
    with pytest.raises(ChannelIndexError, match="channels"):
        stack.extract_patch(0, channels, (0, 0), (8, 8))
    with pytest.raises(ChannelIndexError, match="channels"):
        stack.extract_patches([(0, channels, (0, 0), (8, 8))])


@pytest.mark.parametrize("channels", [[True, False, True], [np.True_, np.False_], True])
@pytest.mark.parametrize(
    "make", [lambda s, c: RandomSampler(s, 8, length=2, channels=c), lambda s, c: GridSampler(s, 8, channels=c)]
)
def test_samplers_refuse_boolean_channels(make, channels):
    # resolve_channels read [True, False, True] as channels (1, 0, 1) and True as channel 1: a mask read as indices
    with pytest.raises(ChannelIndexError, match="channels must"):
        make([_stack()], channels)


class _Plain:
    """A non-numpy array-like following numpy's indexing."""

    def __init__(self, a: np.ndarray) -> None:
        self.a, self.shape, self.dtype = a, a.shape, a.dtype

    def __getitem__(self, key):
        return self.a[key]


@pytest.mark.parametrize(
    "key",
    [
        (slice(1, 3), 2),
        (0, slice(None), slice(5, 1, -2)),
        (Ellipsis, 3),
        (np.int64(1),),
        ([0, 2],),
        (True,),  # numpy adds an axis for a boolean scalar key; it is not the integer 1
        (0, False),
    ],
)
def test_array_reader_region_check_follows_numpy(key):
    a = np.arange(3 * 4 * 6, dtype=np.int16).reshape(3, 4, 6)
    got = ArrayReader(_Plain(a))[key]
    np.testing.assert_array_equal(got, a[key])
    assert got.shape == a[key].shape


def test_tiff_absolute_path_loads_from_a_removed_working_folder(tmp_path, monkeypatch):
    # f3178cd joined os.getcwd() to every path: in a removed working folder an absolute path raised a bare
    # FileNotFoundError from getcwd() (system_path joins the current folder only to a relative path)
    tifffile = pytest.importorskip("tifffile")
    from lazystack import load_tiffs

    data = np.arange(2 * 8 * 8, dtype=np.uint16).reshape(2, 8, 8)
    path = tmp_path / "x.tif"
    tifffile.imwrite(path, data)
    gone = tmp_path / "gone"
    gone.mkdir()
    monkeypatch.chdir(gone)
    gone.rmdir()
    (stack,) = load_tiffs([str(path)], "SYX")
    np.testing.assert_array_equal(stack.extract_patch(1, None, (2, 3), (4, 4)), data[1:2, 2:6, 3:7].astype(np.float32))


@pytest.mark.parametrize("seed", range(4))
def test_chunk_grid_pieces_rebuild_the_region(seed):
    # 55d0a43: a regular grid's multi-chunk region goes through the general loop; the pieces must tile the region
    from lazystack.io.chunked import ChunkGrid

    rng = np.random.default_rng(seed)
    shape = tuple(int(n) for n in rng.integers(1, 30, 3))
    chunks = tuple(int(rng.integers(1, n + 3)) for n in shape)
    a = np.arange(np.prod(shape)).reshape(shape)
    grid = ChunkGrid(shape, chunks)
    for _ in range(50):
        region = []
        for n in shape:
            lo, hi = sorted(int(v) for v in rng.integers(0, n + 1, 2))
            region.append(slice(lo, hi))
        want = a[tuple(region)]
        got = np.full(want.shape, -1)
        for idx, src, dst in grid.pieces(region):
            chunk = a[grid.chunk_region(idx)]
            got[dst] = chunk[src]
        np.testing.assert_array_equal(got, want)
