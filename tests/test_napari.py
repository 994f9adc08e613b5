"""The napari reader plugin (lazystack/napari.yaml, lazystack.frontends.napari) through npe2, and in a real viewer.

References are independent of lazystack: the arrays the fixtures write with
tifffile, ome-zarr-py, zarr and pylibCZIrw, read back with zarr / tifffile where
the writer changed them. What opening reads is counted twice: the dask chunk
tasks that run (engine-independent) and, for Zarr, the files the process opens
(Python's ``open`` audit event).

The viewer tests need napari with a Qt binding and a display with OpenGL
(``xvfb-run -a`` on Linux; ``QT_QPA_PLATFORM=offscreen`` has no OpenGL). They
skip with the reason otherwise, unless ``LAZYSTACK_REQUIRE_NAPARI_VIEWER=1``
(``.ci/run`` sets it under Xvfb), where a missing piece is a failure.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import threading
import tomllib
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import pytest
import tifffile
import zarr

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)  # npe2's pydantic-v1-style fields, at import
    npe2 = pytest.importorskip(
        "npe2", reason="the napari extra (npe2) is not installed: pip install 'lazystack[napari]'"
    )

from conftest import shared_files

import lazystack
from lazystack import LazyStackError
from lazystack.frontends import napari as plugin

ROOT = Path(__file__).resolve().parents[1]
MANIFEST = ROOT / "lazystack" / "napari.yaml"
REAL_CZI = shared_files("czi", "*.czi")
SCREENSHOT_DIR = os.environ.get("LAZYSTACK_NAPARI_SCREENSHOT_DIR")


# -- npe2 with the shipped manifest -----------------------------------------------------------
@pytest.fixture(scope="module")
def manifest() -> Any:
    """The manifest, registered with npe2's global plugin manager (as the installed entry point does)."""
    mf = npe2.PluginManifest.from_file(MANIFEST)
    pm = npe2.PluginManager.instance()
    try:
        pm.get_manifest(mf.name)
    except KeyError:  # lazystack installed without its entry point (or not installed): register by hand
        pm.register(mf)
    return mf


def read(path: Path | str, manifest: Any) -> list[tuple[Any, dict[str, Any], str]]:
    """Layers through npe2 (``npe2.read``), lazystack's reader only."""
    return npe2.read([os.fspath(path)], stack=False, plugin_name=manifest.name)


def _levels(data: Any) -> list[Any]:
    return list(data) if isinstance(data, list) else [data]


def test_manifest_names_the_reader(manifest: Any) -> None:
    assert manifest.name == "lazystack"
    (reader,) = manifest.contributions.readers
    assert reader.accepts_directories
    assert {"*.czi", "*.tif", "*.tiff", "*.zarr"} <= set(reader.filename_patterns)
    (command,) = [c for c in manifest.contributions.commands if c.id == reader.command]
    module, _, attr = command.python_name.partition(":")
    assert getattr(importlib.import_module(module), attr) is plugin.get_reader
    manifest.validate_imports()  # what `npe2 validate --imports` checks: every python_name resolves


def test_entry_point_ships_the_manifest() -> None:
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["entry-points"]["napari.manifest"]
    assert declared == {"lazystack": "lazystack:napari.yaml"}
    from importlib.metadata import entry_points

    installed = [ep for ep in entry_points(group="napari.manifest") if ep.name == "lazystack"]
    if not installed:
        pytest.skip("lazystack is installed without the napari.manifest entry point (reinstall with pip install -e .)")
    assert installed[0].value == "lazystack:napari.yaml"
    package, _, resource = installed[0].value.partition(":")
    spec = importlib.util.find_spec(package)
    assert spec is not None
    assert spec.origin is not None
    assert (Path(spec.origin).parent / resource).is_file()


def test_get_reader_declines_what_lazystack_does_not_open(tmp_path: Path, ome_zarr: Any) -> None:
    png = tmp_path / "image.png"
    png.write_bytes(b"\x89PNG")
    folder = tmp_path / "plain folder"
    folder.mkdir()
    path, _ = ome_zarr
    chunk = next(p for p in (path / "s0").rglob("*") if p.is_file() and p.name != "zarr.json")
    assert plugin.get_reader(str(png)) is None
    assert plugin.get_reader(str(folder)) is None
    assert plugin.get_reader(str(chunk)) is None  # a chunk file inside a store
    assert plugin.get_reader(str(tmp_path / "missing.czi")) is None
    assert plugin.get_reader(str(path)) is plugin.read
    assert plugin.get_reader([str(path), str(png)]) is None  # every path must be ours


def test_unreadable_file_names_the_path(tmp_path: Path, manifest: Any) -> None:
    bad = tmp_path / "broken.tif"
    bad.write_bytes(b"II*\x00 not really a tiff")
    with pytest.raises(LazyStackError, match=r"broken\.tif"):
        plugin.read(str(bad))


# -- OME-Zarr: levels as one multiscale layer ----------------------------------------------------
OME_SCALE = {"z": 2.0, "y": 0.5, "x": 0.25}
OME_CHANNELS = ["DAPI", "GFP"]


def _write_ome_zarr(path: Path, data: np.ndarray, chunks: tuple[int, ...], factors: tuple[int, ...]) -> None:
    from ome_zarr.format import FormatV05
    from ome_zarr.writer import write_image

    root = zarr.open_group(str(path), mode="w", zarr_format=3)
    window = {"min": 0, "max": 4000, "start": 0, "end": 4000}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ome-zarr-py's own deprecation warnings
        write_image(
            data,
            root,
            axes="czyx",
            fmt=FormatV05(),
            scale_factors=factors,
            scale=OME_SCALE,
            storage_options={"chunks": chunks},
            omero={"channels": [{"label": c, "color": "FFFFFF", "window": window} for c in OME_CHANNELS]},
        )


@pytest.fixture(scope="module")
def ome_zarr(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    """CZYX uint16, three levels (s0, s1, s2) written by ome-zarr-py, 64 x 64 chunks."""
    pytest.importorskip("ome_zarr", reason="ome-zarr-py (test extra) is not installed")
    data = np.random.default_rng(3).integers(0, 4000, (2, 3, 512, 384), dtype=np.uint16)
    path = tmp_path_factory.mktemp("napari") / "cells.ome.zarr"
    _write_ome_zarr(path, data, (1, 1, 64, 64), (2, 4))
    return path, data


def test_ome_zarr_levels_are_one_multiscale_layer_per_channel(ome_zarr: Any, manifest: Any) -> None:
    path, data = ome_zarr
    layers = read(path, manifest)
    assert [kw["name"] for _, kw, _ in layers] == [f"cells.ome.zarr [{c}]" for c in OME_CHANNELS]
    levels = [zarr.open_array(str(path / name), mode="r") for name in ("s0", "s1", "s2")]
    for c, (layer, kwargs, kind) in enumerate(layers):
        assert kind == "image"
        assert kwargs["multiscale"] is True
        got = _levels(layer)
        assert all(isinstance(a, da.Array) for a in got)  # lazy, never numpy
        assert [a.shape for a in got] == [lvl.shape[1:] for lvl in levels]
        assert kwargs["scale"] == [OME_SCALE["z"], OME_SCALE["y"], OME_SCALE["x"]]  # level 0's
        assert kwargs["axis_labels"] == ["Z", "Y", "X"]
        np.testing.assert_array_equal(got[0][1, 100:164, 7:90].compute(), data[c, 1, 100:164, 7:90])
        np.testing.assert_array_equal(got[2].compute(), levels[2][c])
        coarsest = levels[2][c]
        assert kwargs["contrast_limits"] == [float(coarsest.min()), float(coarsest.max())]
        assert kwargs["metadata"]["lazystack_channel"] == OME_CHANNELS[c]
    assert [kw["colormap"] for _, kw, _ in layers] == ["magenta", "green"]
    assert [kw["blending"] for _, kw, _ in layers] == ["translucent_no_depth", "additive"]
    _napari_builds(layers)


@contextmanager
def files_opened(under: Path) -> Iterator[list[str]]:
    """Paths below ``under`` that this process opens inside the block (the ``open`` audit event)."""
    if not _AUDIT_INSTALLED:
        sys.addaudithook(_audit)  # audit hooks cannot be removed: installed once, a no-op outside this block
        _AUDIT_INSTALLED.append(True)
    seen: list[str] = []
    _AUDIT.append((str(under), seen))
    try:
        yield seen
    finally:
        _AUDIT.remove((str(under), seen))


_AUDIT: list[tuple[str, list[str]]] = []
_AUDIT_LOCK = threading.Lock()
_AUDIT_INSTALLED: list[bool] = []


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if event != "open" or not _AUDIT or not isinstance(args[0], (str, bytes, os.PathLike)):
        return
    path = os.fsdecode(args[0])
    with _AUDIT_LOCK:
        for root, seen in _AUDIT:
            if path.startswith(root):
                seen.append(path)


@contextmanager
def reader_calls(monkeypatch: pytest.MonkeyPatch, cls: type) -> Iterator[list[tuple[str, Any]]]:
    """``(repr(reader), key)`` of every region read from a lazystack chunk reader of class ``cls``.

    The layers' dask arrays read each chunk they compute once, through ``read_region`` or
    ``reader[key]`` (dask may fuse a slice of the chunk into the key), so this counts the chunks
    opening reads whatever the engine.
    """
    calls: list[tuple[str, Any]] = []
    lock = threading.Lock()

    def counting(original: Any) -> Any:
        def spy(self: Any, key: Any) -> Any:
            with lock:
                calls.append((repr(self), key))
            return original(self, key)

        return spy

    with monkeypatch.context() as m:
        # the reader contract's two ways in: ``reader[key]`` and ``read_region`` (what the stack's dask array uses)
        for name in ("__getitem__", "read_region"):
            m.setattr(cls, name, counting(getattr(cls, name)))
        yield calls


def _region_size(key: Any, shape: tuple[int, ...]) -> int:
    """Number of elements a reader key (ints, slices) selects from an array of ``shape``."""
    key = key if isinstance(key, tuple) else (key,)
    n = 1
    for k, size in zip(key, shape, strict=False):
        n *= len(range(*k.indices(size))) if isinstance(k, slice) else 1
    for size in shape[len(key) :]:
        n *= size
    return n


MIB = 1 << 20


def test_opening_reads_only_the_coarsest_level(
    tmp_path: Path, manifest: Any, direct_zarr_engine: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Opening an OME-Zarr reads metadata and the chunks of its coarsest level, nothing of the others."""
    pytest.importorskip("ome_zarr", reason="ome-zarr-py (test extra) is not installed")
    data = np.random.default_rng(4).integers(0, 60000, (2, 1, 2048, 1536), dtype=np.uint16)
    path = tmp_path / "big.ome.zarr"
    _write_ome_zarr(path, data, (1, 1, 128, 128), (2, 4, 8))
    reader_class = type(lazystack.load(path)[0].reader)
    with lazystack.chunk_cache_size(0), files_opened(path) as opened, reader_calls(monkeypatch, reader_class) as calls:
        layers = read(path, manifest)
    assert all(len(_levels(d)) == 4 for d, _, _ in layers)
    coarsest = zarr.open_array(str(path / "s3"), mode="r")
    n_chunks = int(np.prod(coarsest.cdata_shape))
    # region reads: the coarsest level's pixels once (dask may group its chunks), nothing of the other levels
    assert {where for where, _ in calls} == {repr(lazystack.load(path / "s3")[0].reader)}
    assert len(calls) == len({str(key) for _, key in calls})
    assert sum(_region_size(key, coarsest.shape) for _, key in calls) == coarsest.size
    # files: metadata and the coarsest level's chunks, each chunk file once; nothing of s0, s1, s2
    metadata = {"zarr.json", ".zarray", ".zattrs", ".zgroup", ".zmetadata"}
    chunk_files = [p for p in opened if Path(p).name not in metadata]
    assert chunk_files, "the coarsest level was read through files the audit hook sees"
    assert all(Path(p).is_relative_to(path / "s3") for p in chunk_files), sorted(set(chunk_files))
    assert len(chunk_files) == len(set(chunk_files)) == n_chunks
    read_bytes = sum(Path(p).stat().st_size for p in chunk_files)
    level0_bytes = sum(p.stat().st_size for p in (path / "s0").rglob("*") if p.is_file())
    assert read_bytes * 32 < level0_bytes  # 1/64 of the pixels of level 0, metadata aside


def test_contrast_of_a_big_single_level_image_reads_a_window(
    tmp_path: Path, manifest: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No levels and more than 4 Mi pixels: the contrast limits come from the middle 1024 x 1024 window."""
    data = np.random.default_rng(5).integers(1, 200, (2560, 2048), dtype=np.uint8)
    data[:512] = 0  # outside the middle window: not part of the limits
    data[-512:] = 255
    data[1200, 1000] = 250  # inside it
    path = tmp_path / "big.tif"
    tifffile.imwrite(path, data, tile=(256, 256), compression="zlib")
    reader_class = type(lazystack.load(path)[0].reader)
    with reader_calls(monkeypatch, reader_class) as calls:
        ((layer, kwargs, _),) = read(path, manifest)
    assert isinstance(layer, da.Array)
    assert layer.shape == data.shape
    window = data[768:1792, 512:1536]
    assert kwargs["contrast_limits"] == [float(window.min()), float(window.max())] == [1.0, 250.0]
    # the window alone is read (once), not the image: its 4 x 4 tiles of 10 x 8
    assert len(calls) == len({str(key) for _, key in calls})
    assert sum(_region_size(key, data.shape) for _, key in calls) == window.size
    assert kwargs["multiscale"] is False


def test_ome_zarr_over_http_reads_only_the_coarsest_level(ome_zarr: Any, manifest: Any) -> None:
    """A URL goes through the plugin too; the chunks requested are the coarsest level's, each once."""
    from zarr_helpers import serve_directory

    path, data = ome_zarr
    with lazystack.chunk_cache_size(0), serve_directory(path.parent) as (url, state):
        target = f"{url}/{path.name}"
        assert plugin.get_reader(target) is plugin.read
        layers = read(target, manifest)
        chunks = state.chunk_paths()
        np.testing.assert_array_equal(_levels(layers[1][0])[0][2, :64, :64].compute(), data[1, 2, :64, :64])
    assert [kw["name"] for _, kw, _ in layers] == [f"cells.ome.zarr [{c}]" for c in OME_CHANNELS]
    s2 = zarr.open_array(str(path / "s2"), mode="r")
    assert chunks, "the coarsest level was requested over HTTP"
    assert all(f"/{path.name}/s2/" in c for c in chunks), chunks
    assert len(chunks) == len(set(chunks)) == int(np.prod(s2.cdata_shape))


def _napari_builds(layers: list[tuple[Any, dict[str, Any], str]]) -> None:
    """napari itself accepts every layer's data and keyword arguments (no viewer, no Qt)."""
    if importlib.util.find_spec("napari") is None:
        return
    from napari.layers import Image

    for data, kwargs, kind in layers:
        assert kind == "image"
        layer = Image(data, **kwargs)
        assert layer.multiscale is kwargs["multiscale"]
        assert list(layer.scale) == pytest.approx(kwargs["scale"])
        assert list(layer.contrast_limits) == pytest.approx(kwargs["contrast_limits"])


# -- CZI: scenes as layers, channels split --------------------------------------------------------
@pytest.fixture(scope="module")
def czi_scenes(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray, np.ndarray]:
    """Two scenes of different sizes (TZCYX uint16, 2 channels), 0.5 µm pixels, written with pylibCZIrw."""
    pyczi = pytest.importorskip("pylibCZIrw.czi", reason="the czi extra (pylibCZIrw) is not installed")
    from lazystack.frontends.samples import add_scene_metadata

    rng = np.random.default_rng(6)
    a = rng.integers(0, 60000, (2, 3, 2, 40, 50), dtype=np.uint16)
    b = rng.integers(0, 60000, (2, 3, 2, 30, 70), dtype=np.uint16)
    path = tmp_path_factory.mktemp("napari") / "scenes.czi"
    with pyczi.create_czi(str(path), exist_ok=True) as w:
        for t in range(2):
            for z in range(3):
                for c in range(2):
                    plane = {"T": t, "Z": z, "C": c}
                    w.write(a[t, z, c], plane=plane, scene=0, location=(-300, -50))
                    w.write(b[t, z, c], plane=plane, scene=1, location=(1000, 2000))
        w.write_metadata(channel_names={0: "dapi", 1: "gfp"}, scale_x=0.5e-6, scale_y=0.5e-6, scale_z=2e-6)
    add_scene_metadata(path, {0: "left", 1: "right"})
    return path, a, b


def test_czi_scenes_and_channels_are_layers(czi_scenes: Any, manifest: Any) -> None:
    path, a, b = czi_scenes
    layers = read(path, manifest)
    names = [kw["name"] for _, kw, _ in layers]
    assert names == [
        "scenes.czi scene 0 (left) [dapi]",
        "scenes.czi scene 0 (left) [gfp]",
        "scenes.czi scene 1 (right) [dapi]",
        "scenes.czi scene 1 (right) [gfp]",
    ]
    for i, (layer, kwargs, _) in enumerate(layers):
        expected = (a, b)[i // 2][:, :, i % 2]  # T Z Y X of one channel
        assert isinstance(layer, da.Array)
        assert layer.shape == expected.shape
        assert kwargs["scale"] == pytest.approx([1.0, 2.0, 0.5, 0.5])  # T, Z (µm), Y, X (µm)
        assert kwargs["units"] == ["pixel", "micrometer", "micrometer", "micrometer"]
        assert kwargs["multiscale"] is False
        np.testing.assert_array_equal(layer[1, 2].compute(), expected[1, 2])
        assert kwargs["contrast_limits"] == [float(expected.min()), float(expected.max())]
    _napari_builds(layers)


@pytest.mark.parametrize("path", REAL_CZI, ids=lambda p: p.name)
def test_real_czi(path: Path, manifest: Any) -> None:
    """Every real CZI: one layer per scene and channel, shapes and scale as lazystack's stacks give them."""
    stacks = lazystack.load(path, levels=0)  # the pyramid levels of a scene (WellD6-7) make one multiscale layer
    layers = read(path, manifest)
    assert len(layers) == sum(s.n_channels for s in stacks)
    it = iter(layers)
    for stack in stacks:
        full = stack.data_shape
        spatial = [n for a, n in zip(stack.canonical_axes, full, strict=True) if a != "C" and (n > 1 or a in "YX")]
        for c in range(stack.n_channels):
            data, kwargs, _ = next(it)
            layer = _levels(data)[0]
            assert isinstance(layer, da.Array)
            assert list(layer.shape) == spatial
            sizes = stack.physical_pixel_sizes
            assert kwargs["scale"][-2:] == [sizes.get("Y", 1.0), sizes.get("X", 1.0)]
            names = stack.channel_names
            if names is not None and stack.n_channels > 1:
                assert kwargs["name"].endswith(f"[{names[c]}]")
            if stack.scene_name:
                assert f"({stack.scene_name})" in kwargs["name"]
    _napari_builds(layers)
    if path.name == "RGB-8bit.czi":
        assert [kw["colormap"] for _, kw, _ in layers] == ["red", "green", "blue"]
    if path.name == "WellD6-7_S2.czi":
        assert [kw["name"] for _, kw, _ in layers] == ["WellD6-7_S2.czi scene 0 (D6)", "WellD6-7_S2.czi scene 1 (D7)"]


# -- TIFF ----------------------------------------------------------------------------------------
def test_imagej_hyperstack(tmp_path: Path, manifest: Any) -> None:
    data = np.random.default_rng(7).integers(0, 4000, (3, 4, 2, 64, 80), dtype=np.uint16)  # TZCYX
    path = tmp_path / "hyper.tif"
    metadata = {"axes": "TZCYX", "spacing": 1.5, "unit": "um", "Labels": ["a", "b"] * 12}
    tifffile.imwrite(path, data, imagej=True, resolution=(1 / 0.25, 1 / 0.25), metadata=metadata)
    layers = read(path, manifest)
    assert len(layers) == 2
    for c, (layer, kwargs, _) in enumerate(layers):
        assert isinstance(layer, da.Array)
        assert layer.shape == (3, 4, 64, 80)
        assert kwargs["axis_labels"] == ["T", "Z", "Y", "X"]
        assert kwargs["scale"] == pytest.approx([1.0, 1.5, 0.25, 0.25])
        np.testing.assert_array_equal(layer.compute(), data[:, :, c])
        assert kwargs["contrast_limits"] == [float(data[:, :, c].min()), float(data[:, :, c].max())]


@pytest.mark.parametrize(("shape", "labels"), [((5, 32, 48), ["S", "Y", "X"]), ((2, 3, 32, 48), ["S", "T", "Y", "X"])])
def test_tiff_without_axes_gets_sample_planes(
    tmp_path: Path, manifest: Any, shape: tuple[int, ...], labels: list[str]
) -> None:
    data = np.random.default_rng(8).integers(0, 255, shape, dtype=np.uint8)
    path = tmp_path / "planes.tif"
    # no metadata: tifffile reads pages (axes IYX); shaped metadata: tifffile's axes are QQYX
    tifffile.imwrite(path, data, metadata=None if len(shape) == 3 else {}, photometric="minisblack")
    assert lazystack.propose_axes(path) is None  # lazystack has no letter for I or Q
    ((layer, kwargs, _),) = read(path, manifest)
    # canonical order merges S and T into one sample axis (S outer, T inner): numpy's reshape
    expected = data.reshape(-1, *shape[-2:]) if len(shape) == 4 else data
    assert layer.shape == expected.shape
    np.testing.assert_array_equal(layer.compute(), expected)
    assert kwargs["scale"] == [1.0] * expected.ndim
    assert kwargs["axis_labels"] == ["S", "Y", "X"]
    assert "units" not in kwargs


def test_real_ome_tiff(shared_tiff_dir: Path, manifest: Any) -> None:
    path = shared_tiff_dir / "FOV7_HV110_P0500510000.ome.tiff"
    (stack,) = lazystack.load(path)
    with tifffile.TiffFile(path) as tif:
        reference = tif.series[0].asarray()
    layers = read(path, manifest)
    assert len(layers) == 1
    ((layer, kwargs, _),) = layers
    np.testing.assert_array_equal(layer.compute(), reference.squeeze())
    sizes = stack.physical_pixel_sizes
    assert kwargs["scale"][-2:] == [sizes.get("Y", 1.0), sizes.get("X", 1.0)]


# -- plain Zarr ------------------------------------------------------------------------------------
def test_zarr_group_gives_a_layer_per_array(tmp_path: Path, manifest: Any) -> None:
    path = tmp_path / "plain.zarr"
    group = zarr.open_group(str(path), mode="w", zarr_format=3)
    arrays = {}
    for name, shape in (("raw", (40, 30)), ("mask", (20, 10))):
        arr = group.create_array(name, shape=shape, chunks=(16, 16), dtype="uint8", dimension_names=["y", "x"])
        arrays[name] = np.random.default_rng(len(name)).integers(0, 255, shape, dtype=np.uint8)
        arr[:] = arrays[name]
    layers = read(path, manifest)
    assert [kw["name"] for _, kw, _ in layers] == ["plain.zarr mask", "plain.zarr raw"]  # lazystack's sorted order
    for (layer, kwargs, _), name in zip(layers, ["mask", "raw"], strict=True):
        assert kwargs["multiscale"] is False
        np.testing.assert_array_equal(layer.compute(), arrays[name])


# -- a real viewer ----------------------------------------------------------------------------------
def _viewer_or_skip() -> Any:
    """napari with a Qt binding and an OpenGL display, else skip (or fail when CI requires it)."""
    required = os.environ.get("LAZYSTACK_REQUIRE_NAPARI_VIEWER") == "1"

    def unavailable(reason: str) -> None:
        if required:
            pytest.fail(f"LAZYSTACK_REQUIRE_NAPARI_VIEWER=1 but {reason}")
        pytest.skip(reason)

    if importlib.util.find_spec("napari") is None:
        unavailable("napari is not installed: pip install 'lazystack[napari]'")
    if importlib.util.find_spec("PyQt5") is None and importlib.util.find_spec("PySide6") is None:
        unavailable("no Qt binding for napari: pip install 'lazystack[napari]' (PyQt5)")
    if os.environ.get("QT_QPA_PLATFORM") == "offscreen":
        unavailable("QT_QPA_PLATFORM=offscreen has no OpenGL for napari's canvas; run under xvfb-run -a instead")
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        unavailable("no display: run the napari viewer tests under xvfb-run -a (apt-get install xvfb libgl1-mesa-dri)")
    import napari

    viewer = napari.Viewer(show=True)  # with show=False napari's canvas renders nothing (a black screenshot)
    viewer.window.resize(1200, 900)
    return viewer


def _settle() -> None:
    """Let Qt process pending events (grid layout, camera) before a screenshot."""
    from qtpy.QtWidgets import QApplication

    for _ in range(10):
        QApplication.processEvents()


def _screenshot(viewer: Any, name: str) -> np.ndarray:
    viewer.scale_bar.visible = True  # in the layers' units (micrometres here)
    _settle()
    viewer.reset_view()
    _settle()
    image = np.asarray(viewer.screenshot(canvas_only=True, flash=False))
    if SCREENSHOT_DIR:  # the whole window (layer list, sliders), for people to look at
        import imageio.v3 as iio

        iio.imwrite(Path(SCREENSHOT_DIR) / name, np.asarray(viewer.screenshot(canvas_only=False, flash=False)))
    return image


def _assert_rendered(image: np.ndarray) -> None:
    rgb = image[..., :3].astype(np.int64)
    assert rgb.ndim == 3
    assert min(rgb.shape[:2]) > 100
    assert len(np.unique(rgb.reshape(-1, 3), axis=0)) > 50, "the canvas shows no image (blank screenshot)"


def _real_cells_ome_zarr(folder: Path) -> tuple[Path, list[str], dict[str, float]] | None:
    """The real CellDivision CZI (TCZYX, 2 channels) written as an OME-Zarr by ome-zarr-py, or None."""
    found = [p for p in REAL_CZI if p.name == "CellDivision_T3_Z5_CH2_X240_Y170.czi"]
    if not found:
        return None
    (stack,) = lazystack.load(found[0])
    tczyx = stack.compute()  # S (= T) C Z Y X: small (3 x 2 x 5 x 170 x 240)
    sizes = stack.physical_pixel_sizes
    scale = {"t": 1.0, "c": 1.0, **{a.lower(): v for a, v in sizes.items()}}
    names = stack.channel_names or ["0", "1"]
    from ome_zarr.format import FormatV04
    from ome_zarr.writer import write_image

    path = folder / "CellDivision.ome.zarr"
    root = zarr.open_group(str(path), mode="w", zarr_format=2)
    window = {"min": 0, "max": 65535, "start": 0, "end": 65535}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        write_image(
            tczyx,
            root,
            axes="tczyx",
            fmt=FormatV04(),
            scale_factors=(2, 4),
            scale=scale,
            storage_options={"chunks": (1, 1, 1, 64, 64)},
            omero={"channels": [{"label": n, "color": "FFFFFF", "window": window} for n in names]},
        )
    multiscales = root.attrs["multiscales"]  # ome-zarr-py writes no units: add NGFF's "unit" to Z, Y, X
    for axis in multiscales[0]["axes"]:
        if axis["name"] in "zyx":
            axis["unit"] = "micrometer"
    root.attrs["multiscales"] = multiscales
    return path, names, sizes


def test_viewer_opens_ome_zarr(ome_zarr: Any, tmp_path: Path, manifest: Any) -> None:
    """An OME-Zarr (real cells when shared/data is there) opens as one multiscale layer per channel."""
    viewer = _viewer_or_skip()
    try:
        real = _real_cells_ome_zarr(tmp_path)
        if real is not None:
            path, channels, sizes = real
            scale = (1.0, sizes["Z"], sizes["Y"], sizes["X"])
            labels = ("T", "Z", "Y", "X")
            units: tuple[str, ...] | None = ("pixel", "micrometer", "micrometer", "micrometer")
        else:
            path, channels = ome_zarr[0], OME_CHANNELS
            scale, labels = (OME_SCALE["z"], OME_SCALE["y"], OME_SCALE["x"]), ("Z", "Y", "X")
            units = None
        layers = viewer.open(str(path), plugin="lazystack")
        assert [layer.name for layer in layers] == [f"{path.name} [{c}]" for c in channels]
        for layer in layers:
            assert layer.multiscale
            assert len(layer.data) == 3
            assert all(isinstance(level, da.Array) for level in layer.data)
            assert tuple(layer.scale) == pytest.approx(scale)
            assert tuple(layer.axis_labels) == labels
            if units is not None:
                assert tuple(str(u) for u in layer.units) == units
        viewer.dims.set_point(0, 1)  # a middle time point
        _assert_rendered(_screenshot(viewer, "napari-ome-zarr.png"))
    finally:
        viewer.close()


def _real_multiscene_czi() -> Path | None:
    found = [p for p in REAL_CZI if p.name == "WellD6-7_S2.czi"]
    return found[0] if found else None


def test_viewer_opens_multiscene_czi(czi_scenes: Any, tmp_path: Path, manifest: Any) -> None:
    viewer = _viewer_or_skip()
    try:
        real = _real_multiscene_czi()
        path = real if real is not None else czi_scenes[0]
        stacks = lazystack.load(path, levels=0)  # one stack per scene
        n_levels = len(lazystack.load(path)) // len(stacks)  # the real file's scenes also store a 2x level
        layers = viewer.open(str(path), plugin="lazystack")
        assert len(stacks) == 2
        assert len(layers) == sum(s.n_channels for s in stacks)
        for layer in layers:
            arrays = list(layer.data) if layer.multiscale else [layer.data]
            assert len(arrays) == n_levels  # a scene's levels are one multiscale layer
            assert all(isinstance(a, da.Array) for a in arrays)
        assert {layer.name.split(" [")[0] for layer in layers} == {
            f"{path.name} scene {s.scene} ({s.scene_name})" for s in stacks
        }
        viewer.canvas.grid.enabled = True  # scenes side by side
        _assert_rendered(_screenshot(viewer, "napari-czi-scenes.png"))
    finally:
        viewer.close()
