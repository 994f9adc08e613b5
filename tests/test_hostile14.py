"""Hostile use, fourth audit (session 14): dask clusters, views and dtypes, the CAREamics protocol, custom sources.

What a demanding user does on a dask cluster and in a notebook: stacks computed by worker processes
(``LocalCluster(processes=True)``), sources changed or deleted between building a graph and computing it, a
worker killed mid-compute, xarray-level views of views, unusual dtypes, CAREamics' ``extract_patch`` with odd
arguments, user read functions that misbehave. Cluster cases run in a capped child (``run_child`` of
``test_hostile11``) with every wait bounded. The first part holds the findings (each test failed before its fix);
the second, table-driven, checks the documented errors and what held up.
"""

from __future__ import annotations

import os
import pickle
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from test_hostile11 import run_child

import lazystack
from lazystack import LazyImageStack, SourceReadError, UnsupportedSourceError
from lazystack.sources import custom as custom_source

pytestmark = pytest.mark.timeout(240)


def read_npy(path: Path, **kwargs: Any) -> np.ndarray:
    """A whole-file reader (module level: picklable)."""
    return np.load(path)


def read_npy_mmap(path: Path, **kwargs: Any) -> np.ndarray:
    """A lazy reader (a memory map)."""
    return np.load(path, mmap_mode="r")


def _rewrite(path: Path, data: np.ndarray) -> None:
    """Rewrite ``path`` with ``data`` and a modification time that surely differs."""
    before = path.stat().st_mtime_ns
    np.save(path, data)
    os.utime(path, ns=(before + 10**9, before + 10**9))


# == findings ========================================================================================================
# -- write_ome_zarr and file:// URLs ---------------------------------------------------------------------------------
def test_write_ome_zarr_decodes_a_percent_encoded_file_url(tmp_path: Path) -> None:
    """``write_ome_zarr(stack, "file:///.../a%20b.zarr")`` wrote a folder literally named ``a%20b.zarr``.

    The loaders read that URL as ``a b.zarr`` (RFC 8089: a URL's path is percent-encoded), so the store written
    could not be read back by its own URL.
    """
    data = np.arange(64, dtype=np.uint8).reshape(8, 8)
    stack = lazystack.load_arrays(data, "YX")[0]
    written = lazystack.write_ome_zarr(stack, f"file://{tmp_path}/a%20b.zarr", levels=1)
    assert Path(written) == tmp_path / "a b.zarr"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a b.zarr"]
    back = lazystack.load_zarrs(f"file://{tmp_path}/a%20b.zarr", "YX")[0]
    np.testing.assert_array_equal(np.asarray(back.data.compute())[0, 0], data)
    # file://localhost/ is the local host too
    written = lazystack.write_ome_zarr(stack, f"file://localhost{tmp_path}/c%2Bd.zarr", levels=1)
    assert Path(written) == tmp_path / "c+d.zarr"


def test_write_ome_zarr_refuses_a_file_url_naming_a_host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``file://out.zarr`` (the host ``out.zarr``, no path) wrote ``./out.zarr`` relative to the working folder."""
    monkeypatch.chdir(tmp_path)
    stack = lazystack.load_arrays(np.zeros((8, 8), np.uint8), "YX")[0]
    with pytest.raises(UnsupportedSourceError, match=r"naming a host: got 'file://out.zarr'.*file:///"):
        lazystack.write_ome_zarr(stack, "file://out.zarr", levels=1)
    assert list(tmp_path.iterdir()) == []


# -- custom sources: a file rewritten after the stack was created ----------------------------------------------------
@pytest.mark.parametrize("reader", [read_npy, read_npy_mmap], ids=["whole-file", "memmap"])
def test_custom_file_rewritten_after_opening_is_not_read_as_the_same_file(tmp_path: Path, reader: Any) -> None:
    """A ``.npy`` rewritten (same shape, other values) after ``load_custom_file``: the creating process kept
    serving the old values from its whole-file cache while a dask worker (a process that unpickled the stack)
    read the new ones -- one stack, two answers, silently. TIFF and CZI readers already refuse a changed file.
    """
    path = tmp_path / "a.npy"
    data = np.arange(2 * 8 * 8, dtype=np.uint16).reshape(2, 8, 8)
    np.save(path, data)
    stack = lazystack.load_custom_file([path], "SYX", read_func=reader)[0]
    shipped = pickle.dumps(stack)  # what a dask graph carries to a worker
    _rewrite(path, data + 1)
    custom_source.clear_cache()  # a worker process: nothing cached
    worker_stack = pickle.loads(shipped)
    with pytest.raises(SourceReadError, match=r"a\.npy.*changed since the stack was opened") as info:
        worker_stack.extract_patch(0, None, (0, 0), (2, 2))
    assert "read_npy" in str(info.value)


def test_custom_file_not_rewritten_still_reads_in_a_fresh_process_state(tmp_path: Path) -> None:
    """The check only refuses a changed file: an unchanged one reads in a "worker" (cache empty) as before."""
    path = tmp_path / "a.npy"
    data = np.arange(2 * 8 * 8, dtype=np.uint16).reshape(2, 8, 8)
    np.save(path, data)
    stack = lazystack.load_custom_file([path], "SYX", read_func=read_npy)[0]
    custom_source.clear_cache()
    got = pickle.loads(pickle.dumps(stack)).extract_patch(1, None, (2, 3), (4, 4))
    np.testing.assert_array_equal(got[0], data[1, 2:6, 3:7].astype(np.float32))
    # a folder read by read_func (a custom format stored as a folder) carries no stamp: its mtime changes with
    # every file added beside the data
    folder = tmp_path / "fmt"
    folder.mkdir()
    np.save(folder / "x.npy", data)
    fstack = lazystack.load_custom_file([folder], "SYX", read_func=_read_folder)[0]
    (folder / "other.txt").write_text("x")
    time.sleep(0.01)
    custom_source.clear_cache()
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(fstack)).extract_patch(0, None, (0, 0), (8, 8))[0], data[0])


def _read_folder(path: Path, **kwargs: Any) -> np.ndarray:
    return np.load(path / "x.npy")


_CALLS: dict[str, int] = {}


def read_growing(path: Path, **kwargs: Any) -> np.ndarray:
    """A reader that returns another shape on each call (the file itself unchanged)."""
    n = _CALLS[str(path)] = _CALLS.get(str(path), 0) + 1
    return np.zeros((8, 8 + n), np.uint8)


def test_reader_returning_another_shape_on_an_unchanged_file_is_refused(tmp_path: Path) -> None:
    """The shape/dtype check still guards a read_func that is not deterministic (the file's stamp is unchanged)."""
    path = tmp_path / "a.bin"
    path.write_bytes(b"x")
    stack = lazystack.load_custom_file([path], "YX", read_func=read_growing)[0]
    custom_source.clear_cache()
    with pytest.raises(SourceReadError, match=r"returned shape \(8, 10\).*\(8, 9\)"):
        stack.extract_patch(0, None, (0, 0), (2, 2))


# -- custom sources: a lazy array-like whose __getitem__ lies ----------------------------------------------------------
class _WrongRegionShape:
    """Declares (8, 8) uint8; returns a 3 x 3 block whatever is asked."""

    shape = (8, 8)
    dtype = np.dtype(np.uint8)

    def __getitem__(self, key: Any) -> np.ndarray:
        return np.zeros((3, 3), np.uint8)


class _WrongRegionDtype:
    """Declares uint8; returns float64 values that uint8 cannot hold."""

    shape = (8, 8)
    dtype = np.dtype(np.uint8)

    def __getitem__(self, key: Any) -> np.ndarray:
        return np.full((8, 8), 300.7)[key]


class _NarrowerRegionDtype:
    """Declares uint16; returns uint8 (held exactly by uint16)."""

    shape = (8, 8)
    dtype = np.dtype(np.uint16)

    def __getitem__(self, key: Any) -> np.ndarray:
        return np.arange(64, dtype=np.uint8).reshape(8, 8)[key]


def read_wrong_shape(path: Path, **kwargs: Any) -> Any:
    return _WrongRegionShape()


def read_wrong_dtype(path: Path, **kwargs: Any) -> Any:
    return _WrongRegionDtype()


def read_narrower_dtype(path: Path, **kwargs: Any) -> Any:
    return _NarrowerRegionDtype()


@pytest.mark.parametrize("how", ["patch", "compute"])
def test_custom_lazy_region_of_the_wrong_shape_names_the_reader(tmp_path: Path, how: str) -> None:
    """A lazy result whose ``__getitem__`` returns another shape than asked: numpy's bare "could not broadcast
    input array from shape (1,3,3) into shape (1,4,4)" (a patch) or dask's "cannot reshape array of size 9"
    (``compute``), naming neither the file nor the reader."""
    path = tmp_path / "a.bin"
    path.write_bytes(b"x")
    stack = lazystack.load_custom_file([path], "YX", read_func=read_wrong_shape)[0]
    read = (lambda: stack.extract_patch(0, None, (0, 0), (4, 4))) if how == "patch" else stack.data.compute
    with pytest.raises(SourceReadError, match=r"read_wrong_shape.*a\.bin.*returned shape \(3, 3\).*not \(") as info:
        read()
    assert "_WrongRegionShape" in str(info.value)


def test_custom_lazy_region_of_another_dtype_is_refused_or_cast_exactly(tmp_path: Path) -> None:
    """Declared uint8, returned float64 300.7: ``stack.data.dtype`` said uint8 while ``compute()`` returned
    float64 300.7 and patches 300.7 (values uint8 cannot hold) -- the statistics' exact uint8 histogram path then
    saw values outside uint8. A dtype the declared one holds exactly is cast, as the reader contract asks."""
    path = tmp_path / "a.bin"
    path.write_bytes(b"x")
    stack = lazystack.load_custom_file([path], "YX", read_func=read_wrong_dtype)[0]
    with pytest.raises(SourceReadError, match=r"returned dtype float64 .*declares dtype uint8"):
        stack.data.compute()
    with pytest.raises(SourceReadError, match=r"returned dtype float64 .*declares dtype uint8"):
        stack.extract_patch(0, None, (0, 0), (2, 2))
    narrow = lazystack.load_custom_file([path], "YX", read_func=read_narrower_dtype)[0]
    got = np.asarray(narrow.data.compute())
    assert got.dtype == np.uint16
    np.testing.assert_array_equal(got.reshape(8, 8), np.arange(64).reshape(8, 8))
    np.testing.assert_array_equal(narrow.extract_patch(0, None, (1, 1), (2, 2))[0], [[9, 10], [17, 18]])


def test_array_like_region_of_the_wrong_shape_names_the_array(tmp_path: Path) -> None:
    """``load_arrays(obj)`` with the same lying ``__getitem__``: a bare numpy ValueError ("could not broadcast")."""
    stack = lazystack.load_arrays(_WrongRegionShape(), "YX")[0]
    with pytest.raises(lazystack.LazyStackError, match=r"returned shape \(3, 3\)"):
        stack.extract_patch(0, None, (0, 0), (4, 4))


# -- the CAREamics protocol ------------------------------------------------------------------------------------------
def test_channels_given_as_a_boolean_mask_are_refused() -> None:
    """``channels=[True, False, True, False]`` read channels [1, 0, 1, 0] (``operator.index(True) == 1``).

    CAREamics' ``InMemoryImageStack`` indexes numpy with the list, so a mask there means channels 0 and 2:
    the same call silently gave other channels. ``np.array([True, ...])`` and ``sample_idx=True`` are refused.
    """
    data = np.arange(4 * 4 * 4, dtype=np.uint16).reshape(1, 4, 4, 4)
    stack = lazystack.load_arrays(data, "SCYX")[0]
    with pytest.raises(lazystack.ChannelIndexError, match=r"True"):
        stack.extract_patch(0, [True, False, True, False], (0, 0), (2, 2))


# -- zero-size dimensions and extreme values in the operations ------------------------------------------------------
@pytest.mark.parametrize(("shape", "axes"), [((0, 5, 5), "SYX"), ((2, 0, 5), "SYX"), ((0, 5, 5), "CYX")])
def test_write_ome_zarr_refuses_a_stack_without_pixels(tmp_path: Path, shape: tuple[int, ...], axes: str) -> None:
    """A stack with a zero-size axis: zarr's bare "axes don't match array" (no sample), "Empty tuples are not
    allowed in chunks" (no channel), or an image of height 0 written for a 0-row stack."""
    stack = lazystack.load_arrays(np.zeros(shape, np.uint8), axes)[0]
    with pytest.raises(
        lazystack.ShapeMismatchError,
        match=rf"no pixels .*{axes!r}, shape {shape!r}".replace("(", r"\(").replace(")", r"\)"),
    ):
        lazystack.write_ome_zarr(stack, tmp_path / "o.zarr", levels=1)
    assert not (tmp_path / "o.zarr").exists()


def test_channel_statistics_of_a_stack_without_channels_says_so() -> None:
    """``CYX`` with ``C == 0``: numpy's "cannot reshape array of size 0 into shape (0,newaxis)"."""
    stack = lazystack.load_arrays(np.zeros((0, 5, 5), np.uint8), "CYX")[0]
    with pytest.raises(lazystack.ShapeMismatchError, match=r"0 channels .*'array', shape \(1, 0, 5, 5\)"):
        lazystack.channel_statistics(stack)


@pytest.mark.parametrize(
    "values", [[1e300, 1e300, 1e300, 1e300], [np.nan, np.inf, -np.inf, 1e300], [1e200, 1e200, 1e200, 1e200]]
)
def test_channel_statistics_std_of_large_float64_values(values: list[float]) -> None:
    """float64 values above 1e154: the first merge squared the mean's distance to an empty partial's (inf) and
    multiplied it by the empty count, ``inf * 0``: std NaN for constant 1e300 values (numpy: 0)."""
    data = np.array(values, np.float64).reshape(2, 2)
    stats = lazystack.channel_statistics(lazystack.load_arrays(data, "YX")[0])
    finite = data[np.isfinite(data)]
    np.testing.assert_allclose(stats.mean, [finite.mean()], rtol=1e-12)
    np.testing.assert_allclose(stats.std, [finite.std()], rtol=1e-9)


# -- relative paths: a dask worker (or any process) in another working folder ----------------------------------------
def _relative_stack(kind: str, tmp_path: Path) -> tuple[Any, np.ndarray]:
    data = np.arange(2 * 6 * 8, dtype=np.uint16).reshape(2, 6, 8)
    if kind == "custom":
        np.save(tmp_path / "a.npy", data)
        return lazystack.load_custom_file("a.npy", "SYX", read_func=read_npy)[0], data
    if kind == "tiff":
        import tifffile

        tifffile.imwrite(tmp_path / "a.tif", data)
        return lazystack.load_tiffs("a.tif", "SYX")[0], data
    if kind == "bioio":
        import tifffile

        pytest.importorskip("bioio", reason="the bioio extra is not installed")
        tifffile.imwrite(tmp_path / "a.ome.tif", data[:, None, None], metadata={"axes": "TCZYX"})
        return lazystack.load_bioio("a.ome.tif", "TYX")[0], data
    pyczi = pytest.importorskip("pylibCZIrw.czi", reason="the czi extra (pylibCZIrw) is not installed")
    with pyczi.create_czi(str(tmp_path / "a.czi"), exist_ok=True) as writer:
        for t in range(2):
            writer.write(np.ascontiguousarray(data[t]), plane={"T": t, "Z": 0, "C": 0})
    return lazystack.load_czis("a.czi", "SCYX")[0], data


@pytest.mark.parametrize(
    "kind",
    [
        "custom",
        "czi",
        "bioio",
        "tiff",
    ],
)
def test_stack_opened_by_a_relative_path_reads_in_another_working_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    """``load_czis("a.czi")`` / ``load_custom_file("a.npy")`` then computed by a dask worker started in another
    folder (``dask worker`` on a cluster; here: unpickled after ``chdir``): the reader's recipe held the relative
    path, so the worker found no file ("cannot be read any more", SourceNotFoundError) or read another file of
    the same name. The ``source`` keeps the user's spelling."""
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path)
    stack, data = _relative_stack(kind, tmp_path)
    assert str(stack.source).split("@")[0] in ("a.npy", "a.tif", "a.czi", "a.ome.tif")
    shipped = pickle.dumps(stack)
    monkeypatch.chdir(tmp_path / "work")
    custom_source.clear_cache()
    worker_stack = pickle.loads(shipped)
    np.testing.assert_array_equal(worker_stack.extract_patch(1, None, (1, 2), (3, 4))[0], data[1, 1:4, 2:6])
    np.testing.assert_array_equal(np.asarray(worker_stack.data.compute())[:, 0], data)


# == what held up =====================================================================================================
# -- a dask.distributed cluster of worker processes ------------------------------------------------------------------
_CLUSTER = r"""
import pickle, shutil, signal, tempfile, threading, time
import numpy as np, tifffile, zarr
from dask.distributed import Client, LocalCluster

def read_npy(path, **kwargs):
    return np.load(path)

def slow_npy(path, **kwargs):
    time.sleep(0.2)
    return np.load(path)

d = sys.argv[1]
data = np.arange(2 * 40 * 50, dtype=np.uint16).reshape(2, 40, 50)
for name, fmt, extra in (("v2", 2, {}), ("v3", 3, {}), ("sh", 3, {"shards": (1, 16, 16)})):
    z = zarr.create_array(f"{d}/{name}.zarr", shape=data.shape, chunks=(1, 8, 8) if extra else (1, 16, 16),
                          dtype=data.dtype, zarr_format=fmt, **extra)
    z[:] = data
tifffile.imwrite(f"{d}/a.tif", data, tile=(16, 16))
np.save(f"{d}/a.npy", data)
for name in ("gone.zarr", "changed.zarr"):
    shutil.copytree(f"{d}/v3.zarr", f"{d}/{name}")
np.save(f"{d}/changed.npy", data)
tifffile.imwrite(f"{d}/gone.tif", data)
stacks = {
    "zarr v2": lazystack.load_zarrs(f"{d}/v2.zarr", "SYX")[0],
    "zarr v3": lazystack.load_zarrs(f"{d}/v3.zarr", "SYX")[0],
    "zarr sharded": lazystack.load_zarrs(f"{d}/sh.zarr", "SYX")[0],
    "tiff": lazystack.load_tiffs(f"{d}/a.tif", "SYX")[0],
    "custom": lazystack.load_custom_file(f"{d}/a.npy", "SYX", read_func=read_npy)[0],
    "numpy": lazystack.load_arrays(data, "SYX")[0],
}
try:
    from pylibCZIrw import czi as pyczi
    with pyczi.create_czi(f"{d}/a.czi", exist_ok=True) as w:
        for t in range(2):
            w.write(np.ascontiguousarray(data[t]), plane={"T": t, "Z": 0, "C": 0})
    stacks["czi"] = lazystack.load_czis(f"{d}/a.czi", "SCYX")[0]
except ImportError:
    pass
cluster = LocalCluster(processes=True, n_workers=2, threads_per_worker=1, host="127.0.0.1", dashboard_address=None)
client = Client(cluster)
try:
    finite = data.astype(np.float64)
    for name, stack in stacks.items():
        got = np.asarray(stack.data[:, :, 3:30, 5:44].compute())
        stats = lazystack.channel_statistics(stack)
        out = lazystack.write_ome_zarr(stack, f"{d}/out-{name.replace(' ', '-')}.zarr", levels=2)
        back = np.stack([np.asarray(s.data.compute()) for s in lazystack.load(out, levels=0)])
        corner = lambda s, i: s.extract_patch(i, None, (-3, 40), (8, 16))
        patches = client.gather(client.map(corner, [stack] * 2, [0, 1]))
        ref = np.zeros((2, 8, 16), np.float32)
        ref[:, 3:, :10] = data[:, :5, 40:]
        report(lambda: {
            "name": name,
            "data": bool(np.array_equal(got[:, 0], data[:, 3:30, 5:44])),
            "stats": bool(np.allclose(stats.mean, finite.mean()) and np.allclose(stats.std, finite.std())
                          and np.allclose(stats.percentiles[50.0], np.median(finite))),
            "write": bool(np.array_equal(back.reshape(data.shape), data)),
            "patches": bool(all(np.array_equal(p[0], r) for p, r in zip(patches, ref))),
        })
    # sources deleted or rewritten between building a graph and computing it: an error on the client
    graphs = {
        "gone zarr": lazystack.load_zarrs(f"{d}/gone.zarr", "SYX")[0].data.sum(),
        "gone tiff": lazystack.load_tiffs(f"{d}/gone.tif", "SYX")[0].data.sum(),
        "changed zarr": lazystack.load_zarrs(f"{d}/changed.zarr", "SYX")[0].data.sum(),
        "changed custom": lazystack.load_custom_file(f"{d}/changed.npy", "SYX", read_func=read_npy)[0].data.sum(),
    }
    shutil.rmtree(f"{d}/gone.zarr")
    os.remove(f"{d}/gone.tif")
    z = zarr.create_array(f"{d}/changed.zarr", shape=(2, 20, 25), chunks=(1, 16, 16), dtype=np.uint16, overwrite=True)
    z[:] = 7
    time.sleep(0.01)
    np.save(f"{d}/changed.npy", data + 1)
    for name, graph in graphs.items():
        report(lambda: (name, graph.compute()))
    # a worker killed mid-compute: the lost tasks run again elsewhere, the result is right
    for i in range(8):
        np.save(f"{d}/f{i}.npy", np.full((16, 16), i, np.uint16))
    slow = lazystack.load_custom_file([f"{d}/f{i}.npy" for i in range(8)], "YX", read_func=slow_npy)
    import dask.array as da
    future = client.compute(da.stack([s.data for s in slow]).sum())
    time.sleep(0.5)
    os.kill(next(iter(cluster.workers.values())).process.pid, signal.SIGKILL)
    report(lambda: ("killed", int(future.result(timeout=60))))
finally:  # cleanup, not what is tested: a close that is slow on a loaded machine (the lowest distributed) is said
    for close in (client.close, cluster.close):
        try:
            close(timeout=90)
        except Exception as exc:
            print(f"cleanup: {close.__qualname__}: {exc!r}", file=sys.stderr)
"""


def test_stacks_on_a_dask_cluster_of_processes(tmp_path: Path) -> None:
    """Zarr v2/v3/sharded, TIFF, custom, numpy and CZI stacks computed by a two-process ``LocalCluster``: data,
    statistics, ``write_ome_zarr`` and ``extract_patch`` in workers equal numpy; a source deleted or rewritten after
    the graph was built raises a lazystack error on the client (no zeros, no other data); a worker killed
    mid-compute is replaced and the result is right."""
    pytest.importorskip("distributed", reason="dask.distributed is not installed")
    results = run_child(_CLUSTER.replace("sys.argv[1]", repr(str(tmp_path))), timeout=400)
    rows = [r["returned"] for r in results if "returned" in r and r["returned"].startswith("{")]
    assert len(rows) >= 6, results
    for row in rows:
        assert "False" not in row, row
    errors = [r for r in results if "raised" in r]
    assert [e["lazystack"] for e in errors] == [True] * 4, errors
    assert "gone.zarr" in errors[0]["message"], errors
    assert "not found: " in errors[1]["message"], errors
    assert "changed after the stack was opened" in errors[2]["message"], errors
    assert "changed.npy" in errors[3]["message"], errors
    assert "changed since" in errors[3]["message"], errors
    assert results[-1] == {"returned": "('killed', 7168)"}, results


# -- normalisation and statistics options ------------------------------------------------------------------------------
def _two_channels() -> LazyImageStack:
    return lazystack.load_arrays(np.arange(2 * 8 * 8, dtype=np.uint16).reshape(2, 8, 8), "CYX")[0]


def test_normalized_takes_a_mapping_of_the_keys_its_method_reads() -> None:
    """``normalized(stack, {"mean": [...], "std": [...]})`` (what a CAREamics config holds as image_means /
    image_stds) raised a bare ``KeyError: 'min'``: the mapping had to be a whole ``to_dict()``."""
    stack = _two_channels()
    data = np.arange(2 * 8 * 8, dtype=np.float64).reshape(2, 8, 8)
    norm = lazystack.normalized(stack, {"mean": [1.0, 2.0], "std": [2.0, 4.0]})
    ref = (data - np.array([1.0, 2.0])[:, None, None]) / np.array([2.0, 4.0])[:, None, None]
    np.testing.assert_allclose(norm.extract_patch(0, None, (0, 0), (8, 8)), ref.astype(np.float32))
    norm = lazystack.normalized(stack, {"min": [0, 64], "max": [63, 127]}, method="minmax")
    np.testing.assert_allclose(norm.extract_patch(0, [1], (7, 7), (1, 1)), [[[1.0]]])
    full = lazystack.channel_statistics(stack).to_dict()  # the whole dict still works
    np.testing.assert_allclose(
        lazystack.normalized(stack, full).extract_patch(0, None, (0, 0), (2, 2)),
        lazystack.normalized(stack, lazystack.channel_statistics(stack)).extract_patch(0, None, (0, 0), (2, 2)),
    )
    with pytest.raises(ValueError, match=r"reads \['mean', 'std'\].*no \['std'\].*keys: \['mean'\]"):
        lazystack.normalized(stack, {"mean": [1.0, 2.0]})
    with pytest.raises(ValueError, match=r"statistics\['mean'\] must be numbers.*'a'"):
        lazystack.normalized(stack, {"mean": ["a", 2.0], "std": [1.0, 1.0]})


@pytest.mark.parametrize(
    ("stats", "options", "match"),
    [
        ({"mean": [0.0, 0.0], "std": [-1.0, 1.0]}, {}, r"channel\(s\) \[0\] have a negative spread \(std = \[-1.0\]\)"),
        ({"min": [5.0, 0.0], "max": [1.0, 1.0]}, {"method": "minmax"}, r"negative spread \(max - min = \[-4.0\]\)"),
        (None, {"method": "percentile", "lower": 99.0, "upper": 1.0}, r"lower=99.0 must be below upper=1.0"),
    ],
)
def test_normalisation_that_would_flip_a_channel_is_refused(
    stats: dict[str, Any] | None, options: dict[str, Any], match: str
) -> None:
    """``lower=99, upper=1`` (or a negative std, or max below min) gave a negative scale: every value of the channel
    came out with its sign flipped, silently."""
    stack = _two_channels()
    with pytest.raises(ValueError, match=match):
        lazystack.normalized(stack, stats if stats is not None else lazystack.channel_statistics(stack), **options)


@pytest.mark.parametrize("bins", [2**40, 2.5, True])
def test_channel_statistics_bins_out_of_range_are_refused(bins: Any) -> None:
    """``bins=2**40`` tried to allocate an 8 TiB histogram (MemoryError, or swapping where memory overcommits);
    ``bins=2.5`` ran with 2 bins."""
    stack = lazystack.load_arrays(np.linspace(0, 1, 64).reshape(1, 8, 8), "CYX")[0]
    with pytest.raises(ValueError, match=rf"bins must be an integer from 2 to 16777216 .*got {bins!r}"):
        lazystack.channel_statistics(stack, bins=bins)


def test_custom_file_through_link_dotdot_reads_what_the_system_opens(tmp_path: Path) -> None:
    """The absolute path kept for workers resolves ``link/..`` as the system does (the parent of the link's
    target), not textually as ``os.path.abspath`` would (the folder beside the link): another file."""
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "link").symlink_to(tmp_path / "a" / "b")
    np.save(tmp_path / "a" / "x.npy", np.full((4, 4), 7, np.uint8))
    np.save(tmp_path / "x.npy", np.full((4, 4), 9, np.uint8))
    stack = lazystack.load_custom_file(f"{tmp_path}/link/../x.npy", "YX", read_func=read_npy)[0]
    custom_source.clear_cache()
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(stack)).extract_patch(0, None, (0, 0), (2, 2)), 7)


@pytest.mark.parametrize(("source", "named"), [(None, "NoneType: None"), ({"a": 1}, "dict: {'a': 1}"), ("abc", "str")])
def test_load_arrays_names_a_source_that_is_no_array_nor_sequence(source: Any, named: str) -> None:
    """``load_arrays(None, "YX")``: a bare "'NoneType' object is not iterable"; a dict was iterated as its keys
    ("item 0 is a str")."""
    with pytest.raises(UnsupportedSourceError, match=rf"load_arrays expects an array-like .*got {named}.*accepted"):
        lazystack.load_arrays(source, "YX")


# -- write_ome_zarr options --------------------------------------------------------------------------------------------
def _czyx() -> tuple[LazyImageStack, np.ndarray]:
    data = np.arange(2 * 3 * 20 * 30, dtype=np.uint16).reshape(2, 3, 20, 30)
    return lazystack.load_arrays(data, "CZYX")[0], data


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"chunks": "auto"}, r"chunks must be None, an int .*got 'auto'"),  # was "axis 'C' ... got 'a'"
        ({"levels": True}, r"levels must be an int >= 1 .*got True"),  # was one level, silently
        ({"compressors": "gzipx"}, r"compressors='gzipx' \(TypeError: .*accepted 'auto', None"),
        ({"compressors": 5}, r"compressors=5 \(TypeError: 'int' object is not iterable\).*accepted"),
    ],
)
def test_write_ome_zarr_options_are_named_when_wrong(tmp_path: Path, options: dict[str, Any], match: str) -> None:
    """``chunks="auto"`` was read as the tuple ``('a', 'u', 't', 'o')`` ("chunk size for axis 'C' ... got 'a'");
    a compressor zarr refuses surfaced as zarr's bare TypeError ("Expected a BytesBytesCodec")."""
    stack, _ = _czyx()
    with pytest.raises(ValueError, match=match):
        lazystack.write_ome_zarr(stack, tmp_path / "o.zarr", **options)
    assert [p.name for p in tmp_path.iterdir()] == []  # no partial store left


def test_write_ome_zarr_takes_numpy_integers(tmp_path: Path) -> None:
    """``levels=np.int64(2)`` / ``downscale=np.int64(2)`` / ``chunks=np.int64(8)`` (computed with numpy) were
    refused as "must be an int"."""
    stack, data = _czyx()
    out = lazystack.write_ome_zarr(
        stack, tmp_path / "o.zarr", levels=np.int64(2), downscale=np.int64(2), chunks=np.int64(8)
    )
    levels = lazystack.load(out)
    assert [s.original_data_shape for s in levels] == [(2, 3, 20, 30), (2, 3, 10, 15)]
    np.testing.assert_array_equal(np.asarray(levels[0].data.compute()).reshape(data.shape), data)
    import zarr

    assert zarr.open_array(f"{out}/0", mode="r").chunks == (1, 3, 8, 8)


@pytest.mark.parametrize("how", ["load", "load_arrays"])
def test_memory_mapped_file_replaced_after_opening_is_not_read_as_the_same_file(tmp_path: Path, how: str) -> None:
    """``load("a.npy")`` (or ``load_arrays(np.load(..., mmap_mode="r"))``), then ``a.npy`` replaced by a new file
    (``os.replace``, as writers that save atomically do): the client's mapping kept showing the old values while a
    dask worker (a process unpickling the stack) mapped and read the new file."""
    path = tmp_path / "a.npy"
    np.save(path, np.zeros((4, 4), np.uint16))
    source = path if how == "load" else np.load(path, mmap_mode="r")
    stack = lazystack.load(source, "YX")[0] if how == "load" else lazystack.load_arrays(source, "YX")[0]
    shipped = pickle.dumps(stack)
    np.save(tmp_path / "b.npy", np.ones((4, 4), np.uint16))
    os.replace(tmp_path / "b.npy", path)
    np.testing.assert_array_equal(stack.extract_patch(0, None, (0, 0), (2, 2)), 0)  # the client: the old file
    with pytest.raises(SourceReadError, match=r"memory-mapped file .*a\.npy.*changed since the stack was opened"):
        pickle.loads(shipped).extract_patch(0, None, (0, 0), (2, 2))
    path.unlink()
    with pytest.raises(lazystack.SourceNotFoundError, match=r"memory-mapped file .*a\.npy.* not found"):
        pickle.loads(shipped).extract_patch(0, None, (0, 0), (2, 2))


def test_bioio_file_replaced_after_opening_is_not_read_as_the_same_file(tmp_path: Path) -> None:
    """``load_bioio("a.ome.tif")``, then the file replaced by another of the same shape: bioio's plugin reopens the
    path, so the stack silently read the new file's values (in the creating process and in dask workers)."""
    import tifffile

    pytest.importorskip("bioio_ome_tiff", reason="bioio's OME-TIFF plugin is not installed")
    path = tmp_path / "a.ome.tif"
    tifffile.imwrite(path, np.zeros((4, 4), np.uint8), ome=True)
    stack = lazystack.load_bioio(path, "YX")[0]
    np.testing.assert_array_equal(stack.extract_patch(0, None, (0, 0), (2, 2)), 0)
    shipped = pickle.dumps(stack)
    tifffile.imwrite(tmp_path / "b.ome.tif", np.ones((4, 4), np.uint8), ome=True)
    os.replace(tmp_path / "b.ome.tif", path)
    lazystack.get_chunk_cache().clear()
    for reader in (stack, pickle.loads(shipped)):
        with pytest.raises(SourceReadError, match=r"a\.ome\.tif.*changed since the stack was opened"):
            reader.extract_patch(0, None, (0, 0), (2, 2))
