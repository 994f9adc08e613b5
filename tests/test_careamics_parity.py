"""Parity with CAREamics' loaders, from CAREamics' documented behaviour (no CAREamics needed).

What CAREamics (>= 0.3.5) documents and lazystack must match:

* ``CziImageStack``: every CZI dimension that is not in the axes (``SCYX``,
  ``SCZYX`` or ``SCTYX``) is merged into ``S``, in the order of pylibCZIrw's
  ``total_bounding_box`` (``T``, ``Z``, ``C`` first, then ``R I H V B`` as
  present; ``C``, the depth, ``Y`` and ``X`` are in the axes), size-1 ones
  included; a sample index unravels over them in C order (``T`` outermost).
  ``original_axes`` / ``original_data_shape`` replace ``S`` by the merged
  dimensions and their sizes.
* ``ReadFunc``: ``read_func(path: Path, *args, **kwargs)`` gets a
  :class:`pathlib.Path`.
* The loaders' sources: ``load_arrays(Sequence[NDArray])``,
  ``load_tiffs / load_iter_tiff / load_custom_file / load_czis(Sequence[Path])``,
  ``load_zarrs(Sequence[str | Path | StorePath])`` (a path ending in
  ``.zarr``, or a ``file://`` URI to a group or an array), a CZI stack's
  ``source`` (``file.czi@scene``) re-creating it.

References are independent of lazystack: the arrays the fixtures write, and
pylibCZIrw's own reads planned from its ``total_bounding_box`` in this module.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pyczi = pytest.importorskip("pylibCZIrw.czi", reason="the czi extra (pylibCZIrw) is not installed")

from conftest import shared_files  # noqa: E402

from lazystack import (  # noqa: E402  # noqa: E402
    SelectionError,
    UnsupportedSourceError,
    load_arrays,
    load_custom_file,
    load_czis,
    load_iter_tiff,
    load_tiffs,
    load_zarrs,
)

REAL = shared_files("czi", "*.czi")
H, W = 20, 30


# -- synthetic CZIs ------------------------------------------------------------------------------
def _rename_dimension(raw: bytearray, old: str, new: str) -> int:
    """Rename dimension ``old`` to ``new`` in every sub-block directory entry of a CZI file.

    pylibCZIrw's writer writes only ``T``, ``Z`` and ``C``; a file with
    another dimension (Airyscan's ``H``) is made by writing it as ``Z`` and
    renaming. Each entry (CZI spec, ``DirectoryEntryDV``): ``"DV"``, a 32-byte
    header whose last int32 is the dimension count, then 20 bytes per
    dimension starting with its 4-byte name. Entries sit in the directory
    segment (after an int32 count and 124 reserved bytes) and, one each, in
    the sub-block segments (after 16 bytes of sizes).
    """
    count = 0

    def fix(pos: int) -> int:
        nonlocal count
        assert raw[pos : pos + 2] == b"DV", f"no directory entry at {pos}"
        n = struct.unpack_from("<i", raw, pos + 28)[0]
        for k in range(n):
            at = pos + 32 + 20 * k
            if raw[at : at + 4] == old.encode().ljust(4, b"\0"):
                raw[at : at + 4] = new.encode().ljust(4, b"\0")
                count += 1
        return pos + 32 + 20 * n

    pos = 0
    while pos + 32 <= len(raw):
        sid = bytes(raw[pos : pos + 16]).rstrip(b"\0")
        allocated = struct.unpack_from("<q", raw, pos + 16)[0]
        data = pos + 32
        if sid == b"ZISRAWDIRECTORY":
            entry = data + 128
            for _ in range(struct.unpack_from("<i", raw, data)[0]):
                entry = fix(entry)
        elif sid == b"ZISRAWSUBBLOCK":
            fix(data + 16)
        pos = data + allocated
    return count


def _write_czi(path: Path, data: np.ndarray, dims: str, rename: dict[str, str] | None = None) -> Path:
    """Write ``data`` (axes ``dims`` + ``YX``, letters of ``TZC``) plane by plane; then rename dimensions."""
    with pyczi.create_czi(str(path), exist_ok=True) as w:
        for index in np.ndindex(*data.shape[:-2]):
            w.write(np.ascontiguousarray(data[index]), plane=dict(zip(dims, index, strict=True)), location=(0, 0))
    if rename:
        raw = bytearray(path.read_bytes())
        n_planes = int(np.prod(data.shape[:-2]))
        for old, new in rename.items():
            # one entry in the directory and one in each sub-block segment, per plane
            assert _rename_dimension(raw, old, new) == 2 * n_planes
        path.write_bytes(bytes(raw))
    return path


#: name -> (dims written, shape, renames, {axes: (original_axes, original_data_shape)})
#: The expected values are read off CAREamics' rule: total_bounding_box always lists T, Z, C
#: (size 1 when absent), then the other dimensions; everything not in the axes replaces S.
SYNTHETIC: dict[str, tuple[str, tuple[int, ...], dict[str, str], dict[str, tuple[str, tuple[int, ...]]]]] = {
    "T": ("TC", (4, 2), {}, {"SCYX": ("TZCYX", (4, 1, 2, H, W)), "SCTYX": ("ZCTYX", (1, 2, 4, H, W))}),
    "Z": ("ZC", (3, 1), {}, {"SCYX": ("TZCYX", (1, 3, 1, H, W)), "SCZYX": ("TCZYX", (1, 1, 3, H, W))}),
    "TZ": (
        "TZC",
        (2, 3, 2),
        {},
        {
            "SCYX": ("TZCYX", (2, 3, 2, H, W)),
            "SCZYX": ("TCZYX", (2, 2, 3, H, W)),
            "SCTYX": ("ZCTYX", (3, 2, 2, H, W)),
        },
    ),
    # Airyscan-like: T and H (written as Z, renamed), no Z
    "TH": (
        "TZC",
        (2, 3, 2),
        {"Z": "H"},
        {"SCYX": ("TZHCYX", (2, 1, 3, 2, H, W)), "SCTYX": ("ZHCTYX", (1, 3, 2, 2, H, W))},
    ),
}


@pytest.fixture(scope="module", params=sorted(SYNTHETIC))
def synthetic(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path, np.ndarray]:
    """(case name, file, the array written in its written dims + YX)."""
    name = request.param
    dims, shape, rename, _ = SYNTHETIC[name]
    data = np.random.default_rng(len(name)).integers(0, 60000, (*shape, H, W), dtype=np.uint16)
    path = _write_czi(tmp_path_factory.mktemp("czi") / f"{name}.czi", data, dims, rename)
    return name, path, data


def _written_dims(name: str) -> str:
    dims, _, rename, _ = SYNTHETIC[name]
    return "".join(rename.get(d, d) for d in dims)


def _expected_samples(data: np.ndarray, dims: str, axes: str) -> np.ndarray:
    """The canonical ``SC(Z)YX`` array CAREamics' rule gives, from the written array (numpy only).

    Merged dims in bounding-box order: ``T``, ``Z``, then the others; ``S``
    is their C-order flattening.
    """
    order = [d for d in "TZRIHVB" if d in dims and d not in axes]
    depth = [axes[2]] if len(axes) == 5 else []
    perm = [dims.index(d) for d in (*order, "C", *depth)] + [len(dims), len(dims) + 1]
    arr = data.transpose(perm)
    n_s = int(np.prod(arr.shape[: len(order)], dtype=np.int64))
    return arr.reshape(n_s, *arr.shape[len(order) :])


def test_synthetic_sample_order_and_original_axes(synthetic: tuple[str, Path, np.ndarray]) -> None:
    name, path, data = synthetic
    dims = _written_dims(name)
    for axes, (original_axes, original_shape) in SYNTHETIC[name][3].items():
        (stack,) = load_czis(path, axes)
        assert (stack.original_axes, stack.original_data_shape) == (original_axes, original_shape), axes
        assert stack.xarray.dims == tuple(original_axes)
        assert stack.xarray.shape == original_shape
        expected = _expected_samples(data, dims, axes)
        assert stack.data_shape == expected.shape
        for s in range(expected.shape[0]):
            patch = stack.extract_patch(s, None, [0] * (len(axes) - 2), list(expected.shape[2:]))
            np.testing.assert_array_equal(patch, expected[s].astype(np.float32), err_msg=f"{axes} sample {s}")
        # the xarray holds the written data under the real dimension names (absent ones of size 1)
        written = dims + "YX"
        present = [a for a in original_axes if a in written]
        xr_ref = data.transpose([written.index(a) for a in present]).reshape(original_shape)
        np.testing.assert_array_equal(stack.xarray.values, xr_ref)


def test_t_outer_z_inner(tmp_path: Path) -> None:
    """CAREamics' worked rule for T and Z merged (``SCYX``): ``sample = t * n_Z + z``."""
    data = np.zeros((3, 5, 1, 4, 4), np.uint16)
    for t in range(3):
        for z in range(5):
            data[t, z] = 10 * t + z
    path = _write_czi(tmp_path / "tz.czi", data, "TZC")
    (stack,) = load_czis(path, "SCYX")
    got = [int(stack.extract_patch(s, None, (0, 0), (1, 1))[0, 0, 0]) for s in range(15)]
    assert got == [10 * t + z for t in range(3) for z in range(5)]


def test_sole_merged_dimension_selects_by_name(tmp_path: Path) -> None:
    data = np.random.default_rng(3).integers(0, 60000, (2, 3, 2, H, W), dtype=np.uint16)
    path = _write_czi(tmp_path / "tz.czi", data, "TZC")
    (s3d,) = load_czis(path, "SCZYX")  # S is T (the only merged dimension)
    view = s3d.isel(T=slice(1, 2))
    assert (view.original_axes, view.original_data_shape) == ("TCZYX", (1, 2, 3, H, W))
    np.testing.assert_array_equal(view.compute(), s3d.compute()[1:2])
    (s2d,) = load_czis(path, "SCYX")  # S is T and Z: a name cannot select a product
    with pytest.raises(SelectionError, match=r"'TZ'.*merged into the sample axis S.*isel\(S=\.\.\.\)"):
        s2d.isel(T=0)
    view = s2d.isel(S=slice(3, 6))  # then S selects samples, and a part of S is shown as S
    assert view.original_axes == "SCYX"
    np.testing.assert_array_equal(view.compute(), s2d.compute()[3:6])
    with pytest.raises(SelectionError, match="the stack has axes 'TCZYX'"):
        s3d.isel(S=0)  # S goes by the name T there


# -- real Zeiss files: the sample order of pylibCZIrw reads planned by CAREamics' rule --------------
def _real_axes(path: Path) -> list[str]:
    with pyczi.open_czi(str(path)) as doc:
        box = doc.total_bounding_box_no_pyramid
    return ["SCYX"] + [f"SC{d}YX" for d in "ZT" if box[d][1] - box[d][0] > 1]


def _planned_reads(path: Path, axes: str) -> list[tuple[str, tuple[int, ...], list[np.ndarray]]]:
    """Per scene: (original axes, original shape, the canonical array), read with pylibCZIrw plane by plane."""
    out = []
    with pyczi.open_czi(str(path)) as doc:
        box = doc.total_bounding_box_no_pyramid
        scenes = doc.scenes_bounding_rectangle_no_pyramid or {None: doc.total_bounding_rectangle_no_pyramid}
        merged = [d for d in box if d not in axes]
        sizes = [box[d][1] - box[d][0] for d in merged]
        depth = axes[2] if len(axes) == 5 else None
        n_depth = box[depth][1] - box[depth][0] if depth else 1
        n_c = box["C"][1] - box["C"][0]
        for scene in sorted(scenes, key=lambda k: -1 if k is None else k):
            rect = scenes[scene]
            samples = []
            for s in range(int(np.prod(sizes, dtype=np.int64))):
                plane = {d: box[d][0] + int(i) for d, i in zip(merged, np.unravel_index(s, sizes), strict=True)}
                channels = []
                for c in range(n_c):
                    stack_z = []
                    for z in range(n_depth):
                        full = dict(plane, C=box["C"][0] + c, **({depth: box[depth][0] + z} if depth else {}))
                        block = doc.read(plane=full, roi=(rect.x, rect.y, rect.w, rect.h), scene=scene)
                        # colour samples: pylibCZIrw gives B, G, R; lazystack presents R, G, B channels
                        stack_z.append(np.moveaxis(block[..., ::-1], -1, 0))
                    channels.append(np.stack(stack_z, axis=1) if depth else stack_z[0])
                samples.append(np.concatenate(channels, axis=0))
            shape = (*sizes, n_c, *((n_depth,) if depth else ()), rect.h, rect.w)
            out.append((axes.replace("S", "".join(merged)), shape, np.stack(samples)))
    return out


@pytest.mark.parametrize("path", REAL, ids=[p.name for p in REAL])
def test_real_files_give_careamics_sample_order(path: Path) -> None:
    for axes in _real_axes(path):
        stacks = load_czis(path, axes)
        planned = _planned_reads(path, axes)
        assert len(stacks) == len(planned)
        for stack, (original_axes, shape, ref) in zip(stacks, planned, strict=True):
            rgb = stack.attrs["pixel_type"].startswith("Bgr")
            c_pos = original_axes.index("C")
            want_shape = shape if not rgb else (*shape[:c_pos], 3 * shape[c_pos], *shape[c_pos + 1 :])
            assert (stack.original_axes, stack.original_data_shape) == (original_axes, want_shape), axes
            assert stack.data_shape == ref.shape
            np.testing.assert_array_equal(stack.compute(), ref, err_msg=f"{path.name} {axes}")


def test_real_files_named_in_the_issue(shared_czi_dir: Path) -> None:
    """The shapes CAREamics 0.3.5 reports for two real files (issue 18)."""
    (dapi,) = load_czis(shared_czi_dir / "DAPI_GFP.czi", "SCYX")
    assert (dapi.original_axes, dapi.original_data_shape) == ("TZCYX", (1, 1, 2, 640, 640))
    (cell,) = load_czis(shared_czi_dir / "CellDivision_T3_Z5_CH2_X240_Y170.czi", "SCYX")
    assert (cell.original_axes, cell.original_data_shape) == ("TZBCYX", (3, 5, 1, 2, 170, 240))
    assert cell.xarray.dims == ("T", "Z", "B", "C", "Y", "X")


# -- read_func gets a Path -----------------------------------------------------------------------
def read_with_suffix(path: Path) -> np.ndarray:
    """Like CAREamics' own read functions: uses ``path.suffix`` (fails on a str)."""
    if path.suffix != ".npy":
        msg = f"not a .npy file: {path}"
        raise ValueError(msg)
    return np.load(path)


def test_read_func_receives_a_path(tmp_path: Path) -> None:
    seen: list[Any] = []

    def spy(path: Any, **kwargs: Any) -> np.ndarray:
        seen.append(path)
        return read_with_suffix(path)

    data = np.arange(2 * 8 * 8, dtype=np.uint16).reshape(2, 8, 8)
    np.save(tmp_path / "a.npy", data)
    for source in (tmp_path / "a.npy", str(tmp_path / "a.npy")):
        (stack,) = load_custom_file([source], "SYX", read_func=spy, read_kwargs={})
        np.testing.assert_array_equal(stack.extract_patch(1, None, (2, 3), (4, 4))[0], data[1, 2:6, 3:7])
    assert seen
    assert all(isinstance(p, Path) for p in seen), [type(p) for p in seen]
    (stack,) = load_custom_file([tmp_path / "a.npy"], "SYX", read_func=read_with_suffix, read_kwargs={})
    assert stack.data_shape == (2, 1, 8, 8)


# -- every source type CAREamics' loaders accept ---------------------------------------------------
def test_load_arrays_takes_a_sequence_of_arrays() -> None:
    arrays = [np.arange(64, dtype=np.uint8).reshape(8, 8), np.ones((8, 8), np.float32)]
    stacks = load_arrays(arrays, "YX")
    for stack, a in zip(stacks, arrays, strict=True):
        np.testing.assert_array_equal(stack.compute()[0, 0], a)


@pytest.mark.parametrize("loader", [load_tiffs, load_iter_tiff])
def test_tiff_loaders_take_paths(tmp_path: Path, loader: Any) -> None:
    tifffile = pytest.importorskip("tifffile")
    data = [np.full((3, 16, 16), i, np.uint16) for i in range(2)]
    paths = [tmp_path / f"{i}.tif" for i in range(2)]
    for p, d in zip(paths, data, strict=True):
        tifffile.imwrite(p, d, photometric="minisblack")
    for source in (paths, [str(p) for p in paths], tuple(paths)):
        stacks = loader(source, "SYX")
        assert [s.compute()[:, 0].tolist() for s in stacks] == [d.tolist() for d in data]


def test_load_zarrs_takes_paths_uris_and_store_paths(tmp_path: Path) -> None:
    zarr = pytest.importorskip("zarr")
    from zarr.storage import FsspecStore, LocalStore, StorePath

    root = tmp_path / "data.zarr"
    group = zarr.open_group(str(root), mode="w")
    arrays = {name: np.full((2, 8, 8), i, np.uint16) for i, name in enumerate(["b", "a"])}
    for name, a in arrays.items():
        group.create_array(name, data=a, chunks=(1, 4, 4))
    want_all = [arrays["a"], arrays["b"]]  # sorted by name, as CAREamics does
    sources: list[tuple[Any, list[np.ndarray]]] = [
        ([str(root)], want_all),
        ([root], want_all),
        ([root.as_uri()], want_all),
        ([root.as_uri() + "/b"], [arrays["b"]]),
        ([StorePath(LocalStore(str(root)), "")], want_all),
        ([StorePath(LocalStore(str(root)), "a")], [arrays["a"]]),
        ([StorePath(FsspecStore.from_url(root.as_uri(), read_only=True), "b")], [arrays["b"]]),
        ([StorePath(LocalStore(str(root)), "b"), str(root / "a")], [arrays["b"], arrays["a"]]),
    ]
    for source, want in sources:
        stacks = load_zarrs(source, "SYX")
        assert len(stacks) == len(want), source
        for stack, a in zip(stacks, want, strict=True):
            np.testing.assert_array_equal(stack.compute()[:, 0], a)
    # a store that cannot be reopened by name in another process: a clear error
    from zarr.storage import MemoryStore

    with pytest.raises(UnsupportedSourceError, match=r"MemoryStore.*LocalStore or an FsspecStore"):
        load_zarrs([StorePath(MemoryStore(), "x")], "YX")


def test_load_czis_takes_paths_and_rebuilds_from_source(tmp_path: Path) -> None:
    data = np.random.default_rng(7).integers(0, 255, (2, 1, H, W), dtype=np.uint8)
    path = tmp_path / "two.czi"
    with pyczi.create_czi(str(path), exist_ok=True) as w:
        for scene in range(2):
            for t in range(2):
                w.write(data[t, 0] + scene, plane={"T": t, "C": 0}, scene=scene, location=(scene * 100, 0))
    for source in ([path], [str(path)], path):
        stacks = load_czis(source, "SCYX")
        assert [s.scene for s in stacks] == [0, 1]
        for stack in stacks:
            np.testing.assert_array_equal(stack.compute()[:, 0], data[:, 0] + stack.scene)
            (again,) = load_czis([Path(stack.source)], "SCYX")  # CAREamics' source form: file.czi@scene
            assert again.scene == stack.scene
            np.testing.assert_array_equal(again.compute(), stack.compute())
