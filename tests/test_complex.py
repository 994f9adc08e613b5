"""Complex data: every loader refuses it clearly (no silent cast to the real part)."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile
import zarr

import lazystack
from lazystack import SourceFormatError

DATA = (np.arange(2 * 8 * 8).reshape(2, 8, 8) * (1 + 2j)).astype(np.complex64)
MESSAGE = r"dtype complex64.*accepted: bool, integer and floating-point"


def _tiff(tmp_path: Path) -> str:
    path = tmp_path / "complex.tif"
    tifffile.imwrite(path, DATA, metadata=None, photometric="minisblack")
    assert tifffile.imread(path).dtype == np.complex64  # the file really holds complex data
    return str(path)


def _zarr(tmp_path: Path) -> str:
    path = tmp_path / "complex.zarr"
    zarr.create_array(path, shape=DATA.shape, chunks=(1, 8, 8), dtype=DATA.dtype)[...] = DATA
    return str(path)


def _npy(tmp_path: Path) -> str:
    path = tmp_path / "complex.npy"
    np.save(path, DATA)
    return str(path)


CASES: dict[str, tuple[Any, Any]] = {
    "arrays": (lambda tmp: [DATA], lambda src: lazystack.load_arrays(src, "ZYX")),
    "arrays-dask": (
        lambda tmp: [__import__("dask.array").array.from_array(DATA)],
        lambda src: lazystack.load_arrays(src, "ZYX"),
    ),
    "tiff": (_tiff, lambda src: lazystack.load_tiffs(src, "ZYX")),
    "iter_tiff": (_tiff, lambda src: lazystack.load_iter_tiff(src, "ZYX")),
    "zarr": (_zarr, lambda src: lazystack.load_zarrs(src, "ZYX")),
    "custom-eager": (_npy, lambda src: lazystack.load_custom_file(src, "ZYX", read_func=np.load)),
    "custom-mmap": (
        _npy,
        lambda src: lazystack.load_custom_file(src, "ZYX", read_func=np.load, read_kwargs={"mmap_mode": "r"}),
    ),
}


def _load_and_read(load: Any, source: Any) -> None:
    for stack in load(source):  # a loader that opens lazily must fail at the first read at the latest
        stack.extract_patch(0, None, (0, 0), (4, 4))


@pytest.mark.parametrize("name", list(CASES))
def test_complex_is_refused_clearly(name: str, tmp_path: Path) -> None:
    make, load = CASES[name]
    source = make(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # never numpy's ComplexWarning: an error before any cast
        with pytest.raises(SourceFormatError, match=MESSAGE) as info:
            _load_and_read(load, source)
    if isinstance(source, str):
        assert Path(source).name in str(info.value)


def test_complex_czi_pixel_type_is_refused(tmp_path: Path) -> None:
    pyczi = pytest.importorskip("pylibCZIrw.czi")
    path = tmp_path / "complex.czi"
    with pyczi.create_czi(str(path), exist_ok=True) as w:
        w.write(np.ones((8, 8), np.uint16), plane={"C": 0})
    raw = bytearray(path.read_bytes())
    d = raw.find(b"ZISRAWDIRECTORY")
    entry = d + 32 + 128
    raw[entry + 2 : entry + 6] = (10).to_bytes(4, "little")  # PixelType Gray64ComplexFloat
    path.write_bytes(bytes(raw))
    with pytest.raises(SourceFormatError, match=r"complex\.czi"):
        lazystack.load_czis(str(path), "SCYX")


def test_the_message_offers_an_explicit_conversion() -> None:
    with pytest.raises(SourceFormatError, match=r"np\.abs\(x\).*x\.real, x\.imag"):
        lazystack.load_arrays([DATA], "ZYX")
    (stack,) = lazystack.load_arrays([np.abs(DATA)], "SYX")  # the explicit choice works
    np.testing.assert_allclose(stack.extract_patch(1, None, (0, 0), (8, 8))[0], np.abs(DATA[1]))


@pytest.mark.parametrize("dtype", ["bool", "int8", "uint16", "int64", "float16", "float64"])
def test_image_dtypes_still_load(dtype: str) -> None:
    x = np.ones((2, 4, 4), dtype=dtype)
    (stack,) = lazystack.load_arrays([x], "ZYX")
    assert stack.data_dtype == np.dtype(dtype)
