"""A demanding user's audit: each test pins a bug found by using the public API as the docs show it."""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lazystack import (
    LazyImageStack,
    PatchError,
    RandomSampler,
    StratifiedSampler,
    load,
    write_ome_zarr,
)

DOCS = Path(__file__).resolve().parents[1] / "docs"
README = Path(__file__).resolve().parents[1] / "README.md"


def _zyx_stack() -> tuple[np.ndarray, LazyImageStack]:
    data = np.arange(4 * 20 * 30, dtype=np.uint16).reshape(4, 20, 30)
    attrs = {"physical_pixel_sizes": {"Z": 2.0, "Y": 0.5, "X": 0.25}}
    return data, LazyImageStack(data, "ZYX", attrs=attrs)


# -- physical pixel sizes of a strided view ------------------------------------------------------------
def test_strided_view_pixel_sizes_match_its_coords() -> None:
    _, stack = _zyx_stack()
    view = stack.isel(Z=slice(1, None, 2), Y=slice(3, None, 3), X=slice(0, None, 2))
    coords = view.coords
    for axis in "ZYX":
        spacing = float(np.diff(coords[axis])[0])  # the reference: the view's own positions
        assert view.physical_pixel_sizes[axis] == pytest.approx(spacing)
    assert stack.physical_pixel_sizes == {"Z": 2.0, "Y": 0.5, "X": 0.25}  # the source itself is unchanged


def test_write_ome_zarr_of_a_strided_view_keeps_its_positions(tmp_path: Path) -> None:
    data, stack = _zyx_stack()
    view = stack.isel(Y=slice(3, None, 3), X=slice(1, None, 2))
    (back,) = load(write_ome_zarr(view, tmp_path / "strided.ome.zarr", levels=1))
    np.testing.assert_array_equal(back.compute()[0, 0], data[:, 3::3, 1::2])
    for axis in "ZYX":
        np.testing.assert_allclose(back.coords[axis], view.coords[axis])


# -- samplers: a patch size must be positive --------------------------------------------------------------
@pytest.mark.parametrize("patch_size", [0, -3, (0, 5), (5, -1)])
def test_random_sampler_refuses_non_positive_patch_size(patch_size: Any) -> None:
    stack = LazyImageStack(np.zeros((2, 3, 50, 60), np.uint8), "SCYX")
    with pytest.raises(PatchError, match=re.escape("must be positive")):
        RandomSampler([stack], patch_size, 4)
    with pytest.raises(PatchError, match=re.escape("must be positive")):
        StratifiedSampler([stack], [(0, 0, (0, 0), (50, 60))], patch_size, 4)


def test_random_sampler_names_a_spatial_dims_mismatch() -> None:
    flat = LazyImageStack(np.zeros((2, 3, 50, 60), np.uint8), "SCYX")
    volume = LazyImageStack(np.zeros((2, 3, 50, 60), np.uint8), "ZCYX")
    with pytest.raises(PatchError, match=r"has 3 spatial dims .* has 2 spatial dims"):
        RandomSampler([flat, volume], 4, 10)


# -- every command line the docs show parses ------------------------------------------------------------
def _doc_command_lines() -> list[tuple[str, str]]:
    lines = []
    for page in [README, *sorted(DOCS.rglob("*.md"))]:
        in_shell = False
        for line in page.read_text(encoding="utf-8").splitlines():
            if line.startswith("```"):
                in_shell = line.strip() in ("```bash", "```sh", "```console", "```shell")
                continue
            text = line.split(" #", 1)[0].strip()
            if in_shell and text.startswith("lazystack "):
                lines.append((page.name, text))
    return lines


@pytest.mark.parametrize(("page", "line"), _doc_command_lines())
def test_documented_command_lines_parse(page: str, line: str) -> None:
    from lazystack.frontends.cli import build_parser

    argv = shlex.split(line)[1:]
    code: Any = 0
    try:
        build_parser().parse_args(argv)
    except SystemExit as exc:  # argparse's usage error (2), or --version / --help (0)
        code = exc.code
    assert code == 0, f"{page}: {line!r} is not a valid command line"


def test_convert_onto_an_existing_store_names_the_option(tmp_path: Path, capsys: Any) -> None:
    from lazystack.frontends.cli import main

    np.save(tmp_path / "frames.npy", np.zeros((2, 8, 8), np.uint8))
    out = str(tmp_path / "out.ome.zarr")
    argv = ["convert", str(tmp_path / "frames.npy"), "--axes", "TYX", "--out", out, "--quiet"]
    assert main(argv) == 0
    capsys.readouterr()
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "--overwrite" in err
    assert out in err
    assert "overwrite=True" not in err  # a Python keyword means nothing on the command line


# -- Zarr: a path below an array ------------------------------------------------------------------------
def test_zarr_path_below_an_array_names_the_array(tmp_path: Path) -> None:
    import zarr

    from lazystack import SourceNotFoundError, load_zarrs

    zarr.create_array(tmp_path / "plain.zarr", shape=(4, 16, 16), chunks=(1, 8, 8), dtype="uint16")
    group = zarr.open_group(tmp_path / "group.zarr", mode="w")
    group.create_array("image", shape=(16, 16), dtype="uint8")
    for source, array in [(tmp_path / "plain.zarr" / "foo", "plain.zarr"), (tmp_path / "group.zarr/image/0", "image")]:
        with pytest.raises(SourceNotFoundError) as info:
            load_zarrs(str(source), "YX")
        text = str(info.value)
        assert "is not a Zarr store" not in text  # it is one: the store holds an array there
        assert f"{array}' (source" in text or f"{array}'" in text
        assert "array" in text
        assert source.name in text


# -- show() of a boolean stack (a mask) ---------------------------------------------------------------------
@pytest.mark.parametrize("channel", [0, "all"])
def test_show_draws_a_boolean_mask(channel: Any) -> None:
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    from lazystack import load_arrays, show

    mask = np.zeros((2, 6, 7), bool)
    mask[0, 1:3, 2:5] = True
    mask[1, 4, :] = True
    (stack,) = load_arrays([mask], "CYX")
    ax = show(stack, channel=channel)
    image = ax.images[0]
    assert image.get_clim() == (0.0, 1.0)
    drawn = np.asarray(image.get_array(), dtype=np.float64)
    if channel == 0:
        np.testing.assert_array_equal(drawn, mask[0])
    else:  # every channel lights up the pixels it holds, nothing else
        np.testing.assert_array_equal(drawn.max(axis=-1) > 0, mask.any(axis=0))
    matplotlib.pyplot.close(ax.figure)


# -- load_bioio: an absent scaling is no pixel size ---------------------------------------------------------
def test_bioio_absent_scaling_is_not_a_zero_pixel_size(tmp_path: Path) -> None:
    pytest.importorskip("bioio_czi")
    pyczi = pytest.importorskip("pylibCZIrw.czi")
    from lazystack import load_bioio

    data = np.arange(20 * 30, dtype=np.uint16).reshape(20, 30)
    with pyczi.create_czi(str(tmp_path / "plain.czi"), exist_ok=True) as writer:
        writer.write(data, plane={"C": 0})  # no scaling metadata
    (stack,) = load_bioio(tmp_path / "plain.czi", "TCZYX")
    np.testing.assert_array_equal(stack.compute()[0, 0, 0], data)
    assert stack.physical_pixel_sizes == {}
    np.testing.assert_array_equal(stack.xarray.coords["X"], np.arange(30))  # pixel indices, not 30 zeros
    (back,) = load(write_ome_zarr(stack, tmp_path / "plain.ome.zarr", levels=1))
    assert back.physical_pixel_sizes == {"Z": 1.0, "Y": 1.0, "X": 1.0}  # NGFF's unit scale, never 0


# -- TIFF: a zero pixel size is odd metadata, not a size -----------------------------------------------------
def test_tiff_zero_pixel_size_warns_and_is_left_out(tmp_path: Path) -> None:
    import tifffile

    from lazystack import MetadataWarning

    data = np.arange(3 * 16 * 16, dtype=np.uint16).reshape(3, 16, 16)
    meta = {"axes": "ZYX", "PhysicalSizeX": 0.0, "PhysicalSizeY": 0.5, "PhysicalSizeZ": 2.0}
    path = tmp_path / "zero.ome.tif"
    tifffile.imwrite(path, data, ome=True, metadata=meta)
    with pytest.warns(MetadataWarning, match=r"zero\.ome\.tif.*'X': 0\.0.*PhysicalSize"):
        (stack,) = load(path)
    assert stack.physical_pixel_sizes == {"Y": 0.5, "Z": 2.0}
    assert "X" not in (stack.attrs.get("units") or {})
    np.testing.assert_array_equal(stack.xarray.coords["X"], np.arange(16))  # indices, not 16 zeros
    np.testing.assert_array_equal(stack.compute()[0, 0], data)


# -- ForegroundSampler: foreground is mask > 0, as documented (and as MaskWeightedSampler has it) ------------
def test_foreground_sampler_counts_only_positive_mask_values() -> None:
    from lazystack import ForegroundSampler, PatchSpec

    image = LazyImageStack(np.zeros((1, 40, 40), np.uint8), "SYX")
    labels = np.full((1, 40, 40), -1, np.float32)  # -1: "ignore", a common background label
    labels[0, 30:, 30:] = 1
    labels[0, 0, :5] = np.nan
    mask = LazyImageStack(labels, "SYX")
    sampler = ForegroundSampler([image], [mask], 10, 50, min_foreground=0.5, max_attempts=20, seed=0)
    assert sampler.foreground(PatchSpec(0, 0, None, (0, 0), (10, 10))) == 0.0
    assert sampler.foreground(PatchSpec(0, 0, None, (30, 30), (10, 10))) == 1.0
    accepted = 0
    for i in range(len(sampler)):
        spec, attempts, fraction = sampler.draw(i)
        y, x = spec.coords
        assert fraction == (labels[0, y : y + 10, x : x + 10] > 0).mean()  # the reference: numpy on the mask
        if attempts < sampler.max_attempts:
            accepted += 1
            assert fraction >= 0.5
    assert accepted > 0


# -- LazyImageStack(coords=...): one value per index -------------------------------------------------------
@pytest.mark.parametrize("names", [["DAPI", "GFP"], ["a", "b", "c", "d"], [["a", "b", "c"]]])
def test_stack_refuses_coords_of_the_wrong_length(names: Any) -> None:
    from lazystack import ShapeMismatchError

    data = np.zeros((2, 3, 8, 8), np.uint8)
    with pytest.raises(ShapeMismatchError, match=r"coords\['C'\].*3 entries"):
        LazyImageStack(data, "TCYX", coords={"C": names})


def test_stack_keeps_coords_of_the_right_length() -> None:
    data = np.zeros((2, 3, 8, 8), np.uint8)
    stack = LazyImageStack(data, "TCYX", coords={"c": ["a", "b", "c"]})
    assert stack.channel_names == ["a", "b", "c"]
    assert stack.isel(C=slice(1, 3)).channel_names == ["b", "c"]
    assert list(stack.xarray.coords["C"].values) == ["a", "b", "c"]


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_view_pixel_sizes_and_coords_agree(data: st.DataObject) -> None:
    """A view's physical_pixel_sizes is the spacing of its coords, which are the source's sliced."""
    axes = data.draw(st.sampled_from(["YX", "ZYX", "TZYX", "ZCYX"]))
    shape = tuple(data.draw(st.integers(1, 9)) for _ in axes)
    sizes = {a: data.draw(st.floats(0.1, 10.0)) for a in axes if a in "ZYX"}
    stack = LazyImageStack(np.zeros(shape, np.uint8), axes, attrs={"physical_pixel_sizes": sizes})
    indexers = {}
    for a, n in zip(axes, shape, strict=True):
        if data.draw(st.booleans()):
            start = data.draw(st.integers(0, n - 1))
            indexers[a] = slice(start, data.draw(st.integers(start + 1, n)), data.draw(st.integers(1, 4)))
    view = stack.isel(**indexers)
    for a, size in sizes.items():
        sel = indexers.get(a, slice(None))
        reference = (np.arange(shape[axes.index(a)]) * size)[sel]  # numpy: the source's positions, sliced
        np.testing.assert_allclose(view.coords[a], reference)
        step = (sel.step or 1) if len(reference) > 1 else 1  # one pixel has no spacing: the source's size
        assert view.physical_pixel_sizes[a] == pytest.approx(size * step)


# -- OME-Zarr axes named by type ("time", "channel") or outside STCZYX ("angle") ---------------------------
def _ome_zarr(path: Path, axes: list[dict[str, str]], data: np.ndarray) -> Path:
    import zarr

    group = zarr.open_group(path, mode="w", zarr_format=2)
    group.create_array("0", shape=data.shape, dtype=data.dtype, chunks=data.shape)[...] = data
    scale = [1.0] * (data.ndim - 2) + [0.5, 0.25]
    datasets = [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": scale}]}]
    group.attrs["multiscales"] = [{"version": "0.4", "axes": axes, "datasets": datasets}]
    return path


def test_ome_zarr_axes_named_by_type_open_as_proposed(tmp_path: Path) -> None:
    from lazystack import propose_axes

    data = np.arange(2 * 3 * 4 * 5, dtype=np.uint8).reshape(2, 3, 4, 5)
    axes = [
        {"name": "time", "type": "time", "unit": "second"},
        {"name": "channel", "type": "channel"},
        {"name": "y", "type": "space", "unit": "micrometer"},
        {"name": "x", "type": "space", "unit": "micrometer"},
    ]
    path = _ome_zarr(tmp_path / "named.ome.zarr", axes, data)
    assert propose_axes(path) == "TCYX"
    for stack in (load(path)[0], load(path, "TCYX")[0]):  # what propose_axes says is what opens
        assert stack.original_axes == "TCYX"
        np.testing.assert_array_equal(stack.compute(), data)
        assert stack.physical_pixel_sizes == {"Y": 0.5, "X": 0.25}
        assert stack.attrs["units"] == {"T": "second", "Y": "micrometer", "X": "micrometer"}


def test_ome_zarr_axis_without_a_letter_takes_the_callers(tmp_path: Path) -> None:
    from lazystack import ShapeMismatchError

    data = np.arange(2 * 4 * 5, dtype=np.uint8).reshape(2, 4, 5)
    axes = [{"name": "angle", "type": "angle"}, {"name": "y", "type": "space"}, {"name": "x", "type": "space"}]
    path = _ome_zarr(tmp_path / "angle.ome.zarr", axes, data)
    with pytest.raises(ShapeMismatchError) as info:
        load(path, "CXY")
    text = str(info.value)
    assert "pass axes='?YX'" in text  # never a suggestion that is not an axes string ('ANGLEYX')
    assert "'?'" in text
    (stack,) = load(path, "SYX")
    np.testing.assert_array_equal(stack.compute()[:, 0], data)


# -- write_ome_zarr to a ".zip" path refuses it, naming the path and what to do instead ----------------------
def test_write_ome_zarr_to_a_zip_path_refuses_and_writes_nothing(tmp_path: Path) -> None:
    import zipfile

    from lazystack import UnsupportedSourceError, load, load_arrays

    data = np.arange(2 * 8 * 8, dtype=np.uint8).reshape(2, 8, 8)
    (stack,) = load_arrays([data], "CYX")
    target = tmp_path / "image.ome.zarr.zip"
    with pytest.raises(UnsupportedSourceError) as info:
        write_ome_zarr(stack, target, levels=1)
    assert str(target) in str(info.value)
    assert "zip -r -0" in str(info.value)
    assert list(tmp_path.iterdir()) == []  # no folder named .zip, no partial store
    # the advice works: a folder written, then zipped at the archive's root, is what load() reads
    folder = Path(write_ome_zarr(stack, tmp_path / "image.ome.zarr", levels=1))
    with zipfile.ZipFile(target, "w", zipfile.ZIP_STORED) as zf:
        for f in sorted(folder.rglob("*")):
            if f.is_file():
                zf.write(f, f.relative_to(folder).as_posix())
    (back,) = load(str(target))
    np.testing.assert_array_equal(back.compute().reshape(data.shape), data)


# -- a bad "@" selector on an existing file says so -------------------------------------------------------
@pytest.mark.parametrize("selector", ["@-1", "@x", "@1#level=x"])
def test_bad_series_selector_names_the_existing_file(tmp_path: Path, selector: str) -> None:
    import tifffile

    from lazystack import SourceNotFoundError, load_tiffs

    path = tmp_path / "image.tif"
    tifffile.imwrite(path, np.zeros((4, 4), np.uint8))
    with pytest.raises(SourceNotFoundError) as info:
        load_tiffs(f"{path}{selector}", "YX")
    text = str(info.value)
    assert f"{str(path)!r} exists" in text
    assert "accepted '@N'" in text


# -- --debug after the command -------------------------------------------------------------------------------
@pytest.mark.parametrize("where", ["before", "after"])
def test_debug_flag_before_or_after_the_command(tmp_path: Path, where: str) -> None:
    from lazystack import SourceNotFoundError
    from lazystack.frontends.cli import main

    missing = str(tmp_path / "missing.tif")
    argv = (
        ["--debug", "info", missing, "--axes", "YX"]
        if where == "before"
        else ["info", missing, "--axes", "YX", "--debug"]
    )
    with pytest.raises(SourceNotFoundError, match=r"missing\.tif"):  # the traceback, not one line and exit 1
        main(argv)
    assert main(["info", missing, "--axes", "YX"]) == 1


# -- array-likes: a torch tensor, a dask array of unknown sizes -------------------------------------------------
def test_load_arrays_takes_a_cpu_torch_tensor() -> None:
    torch = pytest.importorskip("torch")
    from lazystack import load_arrays

    tensor = torch.arange(2 * 3 * 8 * 9, dtype=torch.float32).reshape(2, 3, 8, 9)
    (stack,) = load_arrays([tensor], "TCYX")
    assert stack.data_shape == (2, 3, 8, 9)
    assert stack.data_dtype == np.float32
    reference = tensor.numpy()
    np.testing.assert_array_equal(
        stack.extract_patch(1, [2, 0], (-2, 3), (5, 4))[:, 2:], reference[1, [2, 0], 0:3, 3:7]
    )
    np.testing.assert_array_equal(stack.compute(), reference)


def test_unusable_array_likes_are_named() -> None:
    torch = pytest.importorskip("torch")
    import dask.array as da

    from lazystack import UnsupportedSourceError, load_arrays

    x = da.arange(20, chunks=5)
    row = x[x > 3]  # a boolean selection: its length is unknown until computed
    unknown = da.stack([row, row])  # shape (2, nan)
    with pytest.raises(UnsupportedSourceError, match=r"dask\.Array of shape \(2, nan\).*compute_chunk_sizes"):
        load_arrays([unknown], "YX")
    with pytest.raises(UnsupportedSourceError, match=r"torch\.Tensor.*requires grad.*detach"):
        load_arrays([torch.zeros(3, 4, requires_grad=True)], "YX")


class _ForeignDtypeArray:
    """An array-like whose dtype numpy does not know (as torch's and tensorstore's), counting what is read."""

    def __init__(self, data: np.ndarray) -> None:
        self.data = data
        self.shape = data.shape
        self.dtype = "a dtype of another library"
        self.read: list[int] = []

    def __getitem__(self, key: Any) -> np.ndarray:
        out = self.data[key]
        self.read.append(out.size)
        return out


def test_foreign_dtype_array_stays_lazy() -> None:
    from lazystack import load_arrays

    data = np.arange(3 * 40 * 50, dtype=np.uint16).reshape(3, 40, 50)
    foreign = _ForeignDtypeArray(data)
    (stack,) = load_arrays([foreign], "ZYX")
    assert stack.data_dtype == np.uint16
    assert sum(foreign.read) == 0  # opening read nothing
    patch = stack.extract_patch(0, None, (1, 5, 7), (1, 6, 4))
    np.testing.assert_array_equal(patch[0, 0], data[1, 5:11, 7:11])
    assert sum(foreign.read) == 6 * 4  # the patch's region only, not the whole array


def test_tensorstore_array_is_read_region_by_region(tmp_path: Path) -> None:
    ts = pytest.importorskip("tensorstore")
    import zarr

    from lazystack import load_arrays

    data = np.arange(2 * 40 * 50, dtype=np.uint16).reshape(2, 40, 50)
    zarr.create_array(tmp_path / "a.zarr", shape=data.shape, chunks=(1, 16, 16), dtype=data.dtype)[...] = data
    store = ts.open({"driver": "zarr3", "kvstore": {"driver": "file", "path": str(tmp_path / "a.zarr")}}).result()
    (stack,) = load_arrays([store], "ZYX")
    assert stack.data_dtype == np.uint16
    patch = stack.extract_patch(0, None, (1, -3, 45), (1, 10, 10))
    np.testing.assert_array_equal(patch[0, 0, 3:, :5], data[1, 0:7, 45:50])


# -- a StackList stays a StackList when sliced, added or copied -------------------------------------------
def test_slices_sums_and_copies_of_a_stack_list_keep_its_table() -> None:
    from lazystack import StackList, load_arrays

    arrays = [np.full((2, 8, 8), k, np.uint8) for k in range(4)]
    stacks = load_arrays(arrays, "ZYX")
    assert isinstance(stacks, StackList)
    for got in (stacks[1:3], stacks[::2], stacks + stacks[:1], list(stacks[:1]) + stacks, stacks.copy()):
        assert type(got) is StackList
        assert repr(got).startswith(f"StackList of {len(got)} stack")
        assert all(g.data_shape == (1, 1, 2, 8, 8) for g in got)
    assert [int(s.compute().max()) for s in stacks[1:3]] == [1, 2]
    assert [int(s.compute().max()) for s in stacks + stacks[:1]] == [0, 1, 2, 3, 0]
    mixed = [stacks[3], *stacks[:1]] + stacks[2:3]  # noqa: RUF005 (a list + a StackList: StackList.__radd__)
    assert [int(s.compute().max()) for s in mixed] == [3, 0, 2]
    assert type(stacks[0]) is not StackList  # an item is a stack
    assert sum(len(g) for g in stacks[1:3].images()) == 2


# -- a patch size no machine can allocate is a PatchError naming it, not numpy's "array is too big" --------
@pytest.mark.parametrize("size", [(10**12, 10**12), (2**62, 4), (10**30, 4)])
def test_an_impossible_patch_size_is_a_patch_error(size: tuple[int, int]) -> None:
    from lazystack import PatchError, load_arrays

    (stack,) = load_arrays([np.zeros((2, 8, 8), np.uint8)], "CYX")
    with pytest.raises(PatchError, match=r"patch_size .* is too large"):
        stack.extract_patch(0, None, (0, 0), size)
    with pytest.raises(PatchError, match=r"patch_size .* is too large"):
        stack.extract_patches([(0, None, (0, 0), size)])


# -- remote sources: a dead server and a remote TIFF are lazystack errors naming the URI --------------------
def test_load_of_a_dead_server_is_a_source_read_error_naming_the_uri() -> None:
    import socket

    from lazystack import SourceReadError, load, propose_axes

    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    uri = f"http://127.0.0.1:{port}/image.ome.zarr"
    for call in (lambda: load(uri), lambda: propose_axes(uri), lambda: load(uri, "YX")):
        with pytest.raises(SourceReadError, match=re.escape(uri)):
            call()


@pytest.mark.parametrize(
    ("uri", "kind"),
    [("http://127.0.0.1:9/a.tif", "TIFF"), ("https://example.org/x/b.czi@1", "CZI"), ("s3://b/c.npy", ".npy")],
)
def test_a_remote_tiff_czi_or_npy_names_what_is_accepted(uri: str, kind: str) -> None:
    from lazystack import UnsupportedSourceError, load
    from lazystack.loading.auto import source_kind

    for call in (lambda: load(uri), lambda: source_kind(uri)):
        with pytest.raises(UnsupportedSourceError, match=re.escape(repr(uri))) as info:
            call()
        assert f"remote {kind} file" in str(info.value)
        assert "Zarr stores only" in str(info.value)


# -- load_arrays: an xarray.DataArray whose dims the axes name in another order ----------------------------
def test_load_arrays_refuses_axes_that_transpose_a_data_arrays_dims() -> None:
    import xarray as xr

    from lazystack import AxesError, load_arrays

    data = np.arange(4 * 6, dtype=np.uint8).reshape(4, 6)
    da = xr.DataArray(data, dims=("y", "x"))
    with pytest.raises(AxesError, match=r"dims \('y', 'x'\).*axes='XY'.*pass axes='YX'"):
        load_arrays([da], "XY")
    (stack,) = load_arrays([da], "YX")
    np.testing.assert_array_equal(stack.compute().reshape(data.shape), data)
    cube = np.arange(2 * 4 * 6, dtype=np.uint8).reshape(2, 4, 6)
    (relabelled,) = load_arrays([xr.DataArray(cube, dims=("z", "y", "x"))], "SYX")  # another letter: a relabelling
    assert relabelled.data_shape == (2, 1, 4, 6)


# -- an overwrite never replaces a file or a folder that is not a Zarr store (the source itself, say) -------
def test_convert_onto_its_own_source_with_overwrite_refuses_and_leaves_it(tmp_path: Path, capsys: Any) -> None:
    import tifffile

    from lazystack.frontends.cli import main

    source = tmp_path / "b.tif"
    tifffile.imwrite(source, np.arange(2 * 8 * 8, dtype=np.uint16).reshape(2, 8, 8))
    before = source.read_bytes()
    argv = ["convert", str(source), "--axes", "ZYX", "--out", str(source), "--overwrite", "--quiet"]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert str(source) in err
    assert "is a file" in err
    assert "replaces a Zarr store only" in err
    assert source.is_file()
    assert source.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.tif"]  # no partial store left beside it


def test_write_ome_zarr_overwrite_replaces_a_store_but_not_a_folder_of_other_data(tmp_path: Path) -> None:
    from lazystack import load, load_arrays

    (stack,) = load_arrays([np.full((8, 8), 7, np.uint8)], "YX")
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="a folder without Zarr metadata"):
        write_ome_zarr(stack, folder, overwrite=True, levels=1)
    assert (folder / "keep.txt").read_text() == "mine"
    store = tmp_path / "x.ome.zarr"
    write_ome_zarr(load_arrays([np.zeros((8, 8), np.uint8)], "YX")[0], store, levels=1)
    write_ome_zarr(stack, store, overwrite=True, levels=1)  # a Zarr store: replaced
    (back,) = load(str(store))
    assert int(back.compute().max()) == 7
