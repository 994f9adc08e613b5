"""lazystack's loaders inside CAREamics' own dataset: every patch equals CAREamics' own loaders'.

Each case builds two ``CareamicsDataset`` with CAREamics' factory
(``careamics.dataset.factory.create_dataset``) from one config: one with
CAREamics' own loader for the data type, one with the matching lazystack
loader plugged in the way CAREamics documents for custom loaders
(``data_type="custom"`` and ``ImageStackLoading``). Both are read through a
torch ``DataLoader`` with 2 worker processes, with tiled patching (predicting)
and random patching (training, fixed seed, no augmentation, no
normalisation), and every patch and its region (data index, sample, coords)
must be equal.

Needs ``careamics`` (0.3.5 tested; ``pip install --no-deps careamics`` plus
its listed dependencies, see ``.ci/careamics-requirements.txt``): the module is
skipped with the reason otherwise, or fails when the environment variable
``LAZYSTACK_REQUIRE_CAREAMICS`` is set (``.ci/run``'s CAREamics step).
CAREamics imports ``torchvision`` when the package is imported, for its LVAE
models only; where torchvision cannot be installed (its pin does not match the
installed torch), an empty stand-in module is registered so that CAREamics
imports, and any use of it raises (the dataset path does not use it).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import SHARED_DATA


def _torchvision_stand_in() -> None:
    """Register an empty ``torchvision`` whose attributes raise (see the module docstring)."""

    class _Absent(types.ModuleType):
        def __getattr__(self, name: str) -> Any:
            if name.startswith("__"):
                raise AttributeError(name)
            msg = f"torchvision is not installed (a test stand-in): {self.__name__}.{name} was used"
            raise AttributeError(msg)

    # lightning and torchmetrics probe for torchvision when imported: let them find none first
    importlib.import_module("torchmetrics")
    importlib.import_module("lightning.pytorch")
    names = ["torchvision", "torchvision.transforms", "torchvision.transforms.functional"]
    modules = {n: _Absent(n) for n in names}
    for n, module in modules.items():
        sys.modules[n] = module
    modules["torchvision"].__version__ = "0+absent"
    modules["torchvision"].transforms = modules["torchvision.transforms"]
    modules["torchvision.transforms"].functional = modules["torchvision.transforms.functional"]


def _import_careamics() -> str | None:
    """Import CAREamics' dataset factory; the reason it cannot be, else None."""
    if importlib.util.find_spec("careamics") is None:
        return "careamics is not installed (pip install torch, then careamics and its dependencies)"
    if importlib.util.find_spec("torchvision") is None:
        try:
            _torchvision_stand_in()
        except ImportError as exc:
            return f"careamics' dependencies are not installed: {exc}"
    try:
        importlib.import_module("careamics.dataset.factory")
    except ImportError as exc:
        return f"careamics is installed but cannot be imported: {exc!r}"
    return None


_REASON = _import_careamics()
if _REASON is not None:
    if os.environ.get("LAZYSTACK_REQUIRE_CAREAMICS"):  # .ci/run's CAREamics step: a skip would hide a broken install
        raise RuntimeError(_REASON)
    pytest.skip(_REASON, allow_module_level=True)

import torch  # noqa: E402
from careamics.config.data.data_config import DataConfig  # noqa: E402
from careamics.dataset.factory import create_dataset, factory  # noqa: E402
from careamics.dataset.factory.factory import ImageStackLoading, ReadFuncLoading  # noqa: E402
from careamics.lightning.prediction import decollate_image_region_data  # noqa: E402

import lazystack  # noqa: E402

CZI = SHARED_DATA / "czi"


def read_npy(path: Path) -> np.ndarray:
    """A CAREamics ``ReadFunc`` (module level: picklable for workers); it needs a Path."""
    assert path.suffix == ".npy", path
    return np.load(path)


@dataclass
class Case:
    """One comparison: CAREamics' data type and sources, and the lazystack loader for them."""

    name: str
    data_type: str
    axes: str
    make: Callable[[Path], tuple[Any, Any]]  # tmp -> (CAREamics' sources, lazystack's sources)
    loader: Callable[..., Any]
    loader_kwargs: dict[str, Any] = field(default_factory=dict)
    patch: tuple[int, ...] = (32, 32)
    in_memory: bool | None = None  # CAREamics' default for the data type when None
    careamics_loading: Any = None
    needs: Path | None = None  # a real file
    #: "custom": CAREamics' documented route for a custom loader (data_type="custom", ImageStackLoading);
    #: "in place": CAREamics' own data type with its loader replaced by lazystack's (for what
    #: CAREamics' config accepts only under its own data type, e.g. the T depth of "SCTYX")
    route: str = "custom"


def _arrays(tmp: Path) -> tuple[Any, Any]:
    rng = np.random.default_rng(0)
    arrays = [rng.integers(0, 4000, (3, 70, 90), dtype=np.uint16), rng.random((2, 64, 64), dtype=np.float32)]
    return arrays, arrays


def _tiffs(tmp: Path) -> tuple[Any, Any]:
    import tifffile

    rng = np.random.default_rng(1)
    paths = []
    for i, shape in enumerate([(3, 70, 90), (2, 64, 100)]):
        path = tmp / f"img{i}.tif"
        tifffile.imwrite(path, rng.integers(0, 4000, shape, dtype=np.uint16), photometric="minisblack")
        paths.append(path)
    return paths, paths


def _npys(tmp: Path) -> tuple[Any, Any]:
    rng = np.random.default_rng(2)
    paths = []
    for i, shape in enumerate([(2, 64, 80), (3, 50, 70)]):
        path = tmp / f"img{i}.npy"
        np.save(path, rng.integers(0, 255, shape, dtype=np.uint8))
        paths.append(path)
    return paths, paths


def _zarr_group(tmp: Path, shape: tuple[int, ...] = (3, 70, 90), chunks: tuple[int, ...] = (1, 32, 32)) -> Path:
    import zarr

    rng = np.random.default_rng(3)
    root = tmp / "data.zarr"
    group = zarr.open_group(str(root), mode="w")
    for name in ("b", "a"):
        group.create_array(name, data=rng.integers(0, 4000, shape, dtype=np.uint16), chunks=chunks)
    return root


def _zarr_path(tmp: Path) -> tuple[Any, Any]:
    root = _zarr_group(tmp)
    return [str(root)], [str(root)]


def _zarr_uri(tmp: Path) -> tuple[Any, Any]:
    root = _zarr_group(tmp)
    uris = [root.as_uri() + "/a", root.as_uri() + "/b"]
    return uris, uris


def _zarr_3d(tmp: Path) -> tuple[Any, Any]:
    root = _zarr_group(tmp, (2, 12, 48, 40), (1, 4, 16, 16))
    return [str(root)], [str(root)]


def _zarr_store_path(tmp: Path) -> tuple[Any, Any]:
    from zarr.storage import LocalStore, StorePath

    root = _zarr_group(tmp)
    sources = [StorePath(LocalStore(str(root)), "a"), StorePath(LocalStore(str(root)), "b")]
    return sources, sources


def _real(name: str) -> Callable[[Path], tuple[Any, Any]]:
    def make(tmp: Path) -> tuple[Any, Any]:
        return [CZI / name], [CZI / name]

    return make


def _airyscan_like(tmp: Path) -> tuple[Any, Any]:
    from test_careamics_parity import _write_czi

    data = np.random.default_rng(4).integers(0, 60000, (2, 3, 1, 64, 80), dtype=np.uint16)
    path = _write_czi(tmp / "th.czi", data, "TZC", {"Z": "H"})
    return [path], [path]


CASES = [
    Case("arrays SYX", "array", "SYX", _arrays, lazystack.load_arrays),
    Case("TIFF SYX", "tiff", "SYX", _tiffs, lazystack.load_tiffs, in_memory=True),
    Case("iter-TIFF SYX", "tiff", "SYX", _tiffs, lazystack.load_iter_tiff, in_memory=False),
    Case(
        "custom .npy SYX",
        "custom",
        "SYX",
        _npys,
        lazystack.load_custom_file,
        {"read_func": read_npy, "read_kwargs": {}},
        careamics_loading=ReadFuncLoading(read_npy),
    ),
    Case("Zarr group path", "zarr", "SYX", _zarr_path, lazystack.load_zarrs),
    Case("Zarr file:// URIs", "zarr", "SYX", _zarr_uri, lazystack.load_zarrs),
    Case("Zarr StorePaths", "zarr", "SYX", _zarr_store_path, lazystack.load_zarrs),
    Case("Zarr 3-D SZYX", "zarr", "SZYX", _zarr_3d, lazystack.load_zarrs, patch=(8, 16, 16)),
    Case(
        "CZI T+Z SCYX",
        "czi",
        "SCYX",
        _real("CellDivision_T3_Z5_CH2_X240_Y170.czi"),
        lazystack.load_czis,
        needs=CZI / "CellDivision_T3_Z5_CH2_X240_Y170.czi",
    ),
    Case(
        "CZI T+Z SCZYX",
        "czi",
        "SCZYX",
        _real("CellDivision_T3_Z5_CH2_X240_Y170.czi"),
        lazystack.load_czis,
        patch=(4, 32, 32),
        needs=CZI / "CellDivision_T3_Z5_CH2_X240_Y170.czi",
    ),
    Case(
        "CZI T+Z SCTYX (zstd)",
        "czi",
        "SCTYX",
        _real("CellDivision_T3_Z5_CH2_X240_Y170_comp1.czi"),
        lazystack.load_czis,
        patch=(2, 32, 32),
        needs=CZI / "CellDivision_T3_Z5_CH2_X240_Y170_comp1.czi",
        route="in place",
    ),
    Case("CZI 2 channels SCYX", "czi", "SCYX", _real("DAPI_GFP.czi"), lazystack.load_czis, needs=CZI / "DAPI_GFP.czi"),
    Case(
        "CZI multi-scene SCYX",
        "czi",
        "SCYX",
        _real("WellD6-7_S2.czi"),
        lazystack.load_czis,
        patch=(64, 64),
        needs=CZI / "WellD6-7_S2.czi",
    ),
    Case(
        "CZI mosaic SCYX",
        "czi",
        "SCYX",
        _real("mosaic_test.czi"),
        lazystack.load_czis,
        patch=(128, 128),
        needs=CZI / "mosaic_test.czi",
    ),
    Case(
        "CZI tiles, negative offsets SCZYX",
        "czi",
        "SCZYX",
        _real("tiles_z.czi"),
        lazystack.load_czis,
        patch=(2, 64, 64),
        needs=CZI / "tiles_z.czi",
    ),
    Case("CZI T+H (Airyscan-like) SCYX", "czi", "SCYX", _airyscan_like, lazystack.load_czis),
]

PATCHINGS = {
    "tiled": lambda patch: {
        "mode": "predicting",
        "patching": {"name": "tiled", "patch_size": list(patch), "overlaps": [p // 4 * 2 for p in patch]},
    },
    "random": lambda patch: {
        "mode": "training",
        "patching": {"name": "random", "patch_size": list(patch), "seed": 42},
        "augmentations": [],
    },
}


def _config(case: Case, data_type: str, patching: str, in_memory: bool | None) -> Any:
    options = {
        "data_type": data_type,
        "axes": case.axes,
        "normalization": {"name": "none"},
        "seed": 7,
        **PATCHINGS[patching](case.patch),
    }
    if in_memory is not None:
        options["in_memory"] = in_memory
    return DataConfig(**options)


def _patches(dataset: Any) -> list[tuple[np.ndarray, dict[str, Any], tuple[int, ...]]]:
    """(patch, region spec, data shape) of every item, read through a DataLoader with 2 worker processes."""
    loader = torch.utils.data.DataLoader(dataset, batch_size=8, num_workers=2, shuffle=False)
    return [
        (item.data.numpy(), dict(item.region_spec), tuple(item.data_shape))
        for (batch,) in loader
        for item in decollate_image_region_data(batch)
    ]


@pytest.mark.parametrize("patching", list(PATCHINGS))
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_same_patches_as_careamics_loaders(
    case: Case, patching: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if case.needs is not None and not case.needs.exists():
        pytest.skip(f"real file {case.needs} is absent")
    c_sources, l_sources = case.make(tmp_path)
    own = create_dataset(
        _config(case, case.data_type, patching, case.in_memory), c_sources, None, loading=case.careamics_loading
    )
    if case.route == "in place":
        monkeypatch.setattr(factory, case.loader.__name__, case.loader)  # what select_image_stack_loader returns
        ours = create_dataset(
            _config(case, case.data_type, patching, case.in_memory), l_sources, None, loading=case.careamics_loading
        )
    else:
        # CAREamics' patch extractor for the data type: file by file for not-in-memory TIFF, else all stacks
        in_memory = case.in_memory if case.in_memory is not None else case.data_type != "tiff"
        ours = create_dataset(
            _config(case, "custom", patching, in_memory),
            l_sources,
            None,
            loading=ImageStackLoading(case.loader, case.loader_kwargs or None),
        )
    stacks = ours.patch_constructor.input_extractor.image_stacks
    assert all(isinstance(s, lazystack.LazyImageStack) for s in stacks)
    theirs = own.patch_constructor.input_extractor.image_stacks
    assert [tuple(s.data_shape) for s in stacks] == [tuple(s.data_shape) for s in theirs]
    if case.data_type == "czi":  # CAREamics' original axes and shape (RGB aside, none here)
        assert [(s.original_axes, tuple(s.original_data_shape)) for s in stacks] == [
            (s.original_axes, tuple(s.original_data_shape)) for s in theirs
        ]
    assert len(ours) == len(own) > 0
    got, want = _patches(ours), _patches(own)
    assert len(got) == len(want) == len(own)
    equal = sum(
        g_meta == w_meta and g.shape == w.shape and np.array_equal(g, w)
        for (g, *g_meta), (w, *w_meta) in zip(got, want, strict=True)
    )
    print(f"\n| {case.name} | {case.route} | {patching} | {len(want)} | {equal} |")
    assert equal == len(want), f"{case.name}, {patching}: {equal} of {len(want)} patches equal"


REAL_CZI = sorted(CZI.glob("*.czi")) if CZI.is_dir() else []


@pytest.mark.parametrize("path", REAL_CZI, ids=[p.name for p in REAL_CZI])
def test_every_real_czi_axes_form_matches_careamics(path: Path) -> None:
    """Every real file, every axes form CAREamics accepts for it: same stacks, axes, shapes and samples."""
    from careamics.dataset.image_stack_loader import load_czis as careamics_load_czis

    for axes in ("SCYX", "SCZYX", "SCTYX"):
        try:
            theirs = careamics_load_czis([path], axes)
        except RuntimeError:  # no such depth in this file: lazystack refuses it too
            with pytest.raises(lazystack.ShapeMismatchError):
                lazystack.load_czis([path], axes)
            continue
        ours = lazystack.load_czis([path], axes)
        assert [str(s.source) for s in ours] == [str(s.source) for s in theirs]
        for mine, own in zip(ours, theirs, strict=True):
            assert (mine.original_axes, mine.data_shape[0]) == (own.original_axes, own.data_shape[0])
            if mine.attrs["pixel_type"].startswith("Bgr"):  # CAREamics refuses RGB pixels (see the docs' table)
                with pytest.raises(ValueError, match="RGB"):
                    own.extract_patch(0, None, [0] * (len(axes) - 2), [8] * (len(axes) - 2))
                continue
            assert (tuple(mine.original_data_shape), tuple(mine.data_shape)) == (
                tuple(own.original_data_shape),
                tuple(own.data_shape),
            )
            spatial = list(mine.data_shape[2:])
            for s in range(mine.data_shape[0]):
                np.testing.assert_array_equal(
                    mine.extract_patch(s, None, [0] * len(spatial), spatial),
                    own.extract_patch(s, None, [0] * len(spatial), spatial),
                    err_msg=f"{path.name} {axes} sample {s}",
                )
