"""``write_ome_zarr`` / ``lazystack convert`` write NGFF 0.5 that validates: at most five axes, samples as images.

Every written store is validated with ome-zarr-models (the NGFF 0.5 pydantic models) and with the
axis rules of the NGFF 0.5 specification, and read back with ome-zarr-py, bioio-ome-zarr, ngff-zarr
and lazystack; pixels are compared with numpy slicing of the source array.
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from lazystack import load_arrays, load_zarrs, write_ome_zarr
from lazystack.frontends.cli_preprocess import add_convert_parser
from lazystack.ops.writing import ome_axes

DATA = np.random.default_rng(5).integers(0, 255, (3, 2, 2, 4, 32, 40)).astype(np.uint8)  # S T C Z Y X


def _check_ngff_axes(axes: list[dict[str, Any]]) -> None:
    """The axis rules of NGFF 0.5 ("axes" metadata), written out from the specification."""
    types = [a.get("type") for a in axes]
    assert 2 <= len(axes) <= 5, axes
    assert types.count("space") in (2, 3), axes
    assert types.count("time") <= 1, axes
    others = [t for t in types if t not in ("space", "time")]
    assert len(others) <= 1, axes  # one channel axis or one custom axis, not both
    order = {"time": 0, "channel": 1, "space": 2}
    assert [order.get(t, 1) for t in types] == sorted(order.get(t, 1) for t in types), axes


def _validate_image(group: zarr.Group) -> None:
    from ome_zarr_models.v05.image import Image

    Image.from_zarr(group)  # raises a pydantic ValidationError for invalid metadata
    _check_ngff_axes(group.attrs["ome"]["multiscales"][0]["axes"])


def _validate_collection(path: str, n_images: int) -> None:
    from ome_zarr_models.v05.bioformats2raw import BioFormats2Raw

    root = zarr.open_group(path, mode="r")
    BioFormats2Raw.from_zarr(root)  # validates every image 0, 1, ... too
    assert sorted(root.group_keys(), key=int) == [str(i) for i in range(n_images)]
    for i in range(n_images):
        _validate_image(root[str(i)])


def test_stack_with_samples_becomes_one_image_per_sample(tmp_path: Path) -> None:
    (stack,) = load_arrays([DATA], "STCZYX")
    path = write_ome_zarr(stack, tmp_path / "six.zarr", levels=2)
    _validate_collection(path, 3)
    root = zarr.open_group(path, mode="r")
    for s in range(3):
        meta = root[str(s)].attrs["ome"]["multiscales"][0]
        assert [a["name"] for a in meta["axes"]] == ["t", "c", "z", "y", "x"]
        assert meta["metadata"]["sample"] == s
        assert meta["metadata"]["source"] == "array"
        np.testing.assert_array_equal(root[f"{s}/0"][...], DATA[s])
    stacks = load_zarrs(path, ome_axes("STCZYX"))
    assert [(st.attrs["image"], st.level) for st in stacks] == [(str(i), lvl) for i in range(3) for lvl in (0, 1)]
    np.testing.assert_array_equal(stacks[2].xarray.values, DATA[1])


def test_list_of_stacks_with_samples_numbers_images_in_order(tmp_path: Path) -> None:
    a, b = load_arrays([DATA[:2, 0]], "SCZYX"), load_arrays([DATA[2]], "TCZYX")
    path = write_ome_zarr([*a, *b], tmp_path / "list.zarr", levels=1)
    _validate_collection(path, 3)
    root = zarr.open_group(path, mode="r")
    np.testing.assert_array_equal(root["0/0"][...], DATA[0, 0])
    np.testing.assert_array_equal(root["1/0"][...], DATA[1, 0])
    np.testing.assert_array_equal(root["2/0"][...], DATA[2])
    assert "sample" not in root["2"].attrs["ome"]["multiscales"][0]["metadata"]


def test_single_sample_is_one_image_without_s(tmp_path: Path) -> None:
    (stack,) = load_arrays([DATA[:1]], "STCZYX")
    path = write_ome_zarr(stack, tmp_path / "one.zarr", levels=3)
    group = zarr.open_group(path, mode="r")
    _validate_image(group)
    assert group["0"].shape == DATA.shape[1:]
    np.testing.assert_array_equal(group["0"][...], DATA[0])


def test_written_images_read_back_with_the_field_readers(tmp_path: Path) -> None:
    import ngff_zarr as nz
    from bioio import BioImage
    from bioio_ome_zarr import Reader as BioioReader
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    (stack,) = load_arrays([DATA], "STCZYX")
    path = write_ome_zarr(stack, tmp_path / "six.zarr", levels=2)
    for s in range(3):
        image = f"{path}/{s}"
        (node, *_) = list(Reader(parse_url(image))())
        assert [a["name"] for a in node.metadata["axes"]] == ["t", "c", "z", "y", "x"]
        np.testing.assert_array_equal(np.asarray(node.data[0]), DATA[s])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            bio = BioImage(image, reader=BioioReader)
        assert bio.dims.order == "TCZYX"
        assert bio.shape == DATA.shape[1:]  # no axis read as RGB samples
        np.testing.assert_array_equal(bio.data, DATA[s])
        multiscales = nz.from_ngff_zarr(image)
        assert list(multiscales.images[0].dims) == ["t", "c", "z", "y", "x"]
        assert len(multiscales.images) == 2
        np.testing.assert_array_equal(np.asarray(multiscales.images[0].data), DATA[s])


def test_cli_convert_writes_valid_images(tmp_path: Path, capsys: Any) -> None:
    np.save(tmp_path / "six.npy", DATA)
    parser = argparse.ArgumentParser(prog="lazystack")
    add_convert_parser(parser.add_subparsers(dest="command", required=True))
    out = tmp_path / "out.zarr"
    args = parser.parse_args(["convert", str(tmp_path / "six.npy"), "--axes", "STCZYX", "--out", str(out), "--quiet"])
    assert args.handler(args) == 0
    assert "wrote 3 images (groups 0..2)" in capsys.readouterr().out
    _validate_collection(str(out), 3)
    for s in range(3):
        np.testing.assert_array_equal(zarr.open_array(str(out / str(s) / "0"), mode="r")[...], DATA[s])
