"""Notebook experience: StackList and stack HTML reprs, summaries, thumbnails and plots."""

from __future__ import annotations

import json
import sys
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import raise_if_dask_computes

from lazystack import LazyImageStack, MissingDependencyError, SelectionError, load_arrays
from lazystack.frontends.plot import show, thumbnail
from lazystack.loading.stacklist import (
    StackList,
    format_bytes,
    source_disk_bytes,
    stack_summary,
    summary_row,
)


class TableParser(HTMLParser):
    """Collect the text of every table cell, row by row, and the classes seen."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: list[list[list[str]]] = []
        self.classes: set[str] = set()
        self._cell: list[str] | None = None
        self._depth = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name == "class" and value:
                self.classes.update(value.split())
        if tag == "table":
            self.tables.append([])
        elif tag == "tr" and self.tables:
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None and self.tables and self.tables[-1]:
            self.tables[-1][-1].append("".join(self._cell).strip())
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def parse(markup: str) -> TableParser:
    parser = TableParser()
    parser.feed(markup)
    parser.close()
    return parser


def _stack(shape: tuple[int, ...] = (3, 2, 40, 30), axes: str = "TCYX", **kwargs: Any) -> LazyImageStack:
    data = np.arange(int(np.prod(shape)), dtype=np.uint16).reshape(shape)
    return LazyImageStack(data, axes, **kwargs)


def _named_stack() -> LazyImageStack:
    return _stack(
        source="/data/cells.tif",
        format="tiff",
        coords={"C": ["DAPI", "GFP"]},
        attrs={"physical_pixel_sizes": {"Y": 0.25, "X": 0.5}, "series": 0},
    )


# -- summaries ---------------------------------------------------------------------------------


def test_stack_summary_facts_and_json() -> None:
    with raise_if_dask_computes():
        summary = stack_summary(_named_stack(), disk_bytes=1234)
    assert summary["source"] == "/data/cells.tif"
    assert summary["format"] == "tiff"
    assert (summary["original_axes"], summary["original_shape"]) == ("TCYX", [3, 2, 40, 30])
    assert (summary["canonical_axes"], summary["canonical_shape"]) == ("SCYX", [3, 2, 40, 30])
    assert summary["dtype"] == "uint16"
    assert summary["channel_names"] == ["DAPI", "GFP"]
    assert summary["physical_pixel_sizes"] == {"Y": 0.25, "X": 0.5}
    assert summary["series"] == 0
    assert summary["memory_bytes"] == 3 * 2 * 40 * 30 * 2
    assert summary["disk_bytes"] == 1234
    assert json.loads(json.dumps(summary)) == summary


def test_summary_row_text() -> None:
    row = summary_row(stack_summary(_named_stack()))
    assert row["original"] == "TCYX (3, 2, 40, 30)"
    assert row["canonical"] == "SCYX (3, 2, 40, 30)"
    assert row["channels"] == "DAPI, GFP"
    assert row["pixel size"] == "Y=0.25, X=0.5"  # Z, Y, X order
    assert row["scene/level"] == "series 0"
    assert row["disk"] == "-"


def test_format_bytes_and_disk_size(tmp_path: Path) -> None:
    assert format_bytes(2**20) == "1.00 MiB"
    (tmp_path / "f.bin").write_bytes(b"x" * 100)
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a").write_bytes(b"x" * 10)
    (tmp_path / "d" / "b").write_bytes(b"x" * 5)
    assert source_disk_bytes(tmp_path / "f.bin") == 100
    assert source_disk_bytes(f"{tmp_path / 'f.bin'}@2") == 100
    assert source_disk_bytes(f"file://{tmp_path / 'd'}") == 15
    assert source_disk_bytes("s3://bucket/x.zarr") is None
    assert source_disk_bytes(tmp_path / "missing") is None


# -- StackList -------------------------------------------------------------------------------------


def test_stacklist_is_a_list() -> None:
    stacks = StackList(load_arrays([np.zeros((2, 8, 8)), np.zeros((3, 8, 8))], "ZYX"))
    _first, second = stacks
    assert isinstance(stacks, list)
    assert len(stacks) == 2
    assert stacks[1] is second


def test_stacklist_text_repr() -> None:
    stacks = StackList([_named_stack(), _stack((4, 16, 16), "ZYX")])
    text = repr(stacks)
    lines = text.splitlines()
    assert lines[0] == "StackList of 2 stacks"
    assert len(lines) == 5  # title, header, rule, one row per stack
    assert "source" in lines[1]
    assert "/data/cells.tif" in text
    assert "SCZYX (1, 1, 4, 16, 16)" in text
    assert "DAPI, GFP" in text
    assert repr(StackList()) == "StackList of 0 stacks"


def test_stacklist_html_table_has_one_row_per_stack() -> None:
    stacks = StackList([_named_stack(), _stack((4, 16, 16), "ZYX", source="array")])
    with raise_if_dask_computes():
        markup = stacks._repr_html_()
    parsed = parse(markup)
    assert len(parsed.tables) == 1
    header, *rows = parsed.tables[0]
    assert len(rows) == 2
    cells = [dict(zip(header, row, strict=True)) for row in rows]
    assert cells[0]["source"] == "/data/cells.tif"
    assert cells[0]["canonical"] == "SCYX (3, 2, 40, 30)"
    assert cells[0]["channels"] == "DAPI, GFP"
    assert cells[0]["dtype"] == "uint16"
    assert cells[1]["original"] == "ZYX (4, 16, 16)"
    assert cells[1]["channels"] == "-"


def test_stacklist_html_escapes_and_cuts() -> None:
    stacks = StackList([_stack((8, 8), "YX", source="<script>x</script>") for _ in range(3)])
    stacks.max_rows = 2
    markup = stacks._repr_html_()
    assert "<script>" not in markup
    _header, *rows = parse(markup).tables[0]
    assert len(rows) == 2
    assert "and 1 more" in markup
    assert "and 1 more" in repr(stacks)


# -- one stack's HTML -----------------------------------------------------------------------------


def test_stack_repr_html_builds_on_xarray_repr() -> None:
    stack = _named_stack()
    with raise_if_dask_computes():
        markup = stack._repr_html_()
    parsed = parse(markup)
    assert "xr-wrap" in parsed.classes  # xarray's own repr is embedded
    facts = {row[0]: row[1] for row in parsed.tables[0] if len(row) == 2}
    assert facts["source"] == "/data/cells.tif"
    assert facts["canonical"] == "SCYX (3, 2, 40, 30)"
    assert facts["channels"] == "DAPI, GFP"
    assert "DAPI" in markup  # the channel coordinate in xarray's repr


def test_stack_own_repr_html_parses() -> None:
    stack = _named_stack()
    markup = stack._repr_html_()
    parsed = parse(markup)
    text = " ".join(cell for table in parsed.tables for row in table for cell in row)
    assert "/data/cells.tif" in text
    assert "uint16" in text


def test_xarray_has_channel_names_and_physical_coords() -> None:
    da = _named_stack().xarray
    assert da.dims == ("T", "C", "Y", "X")
    assert list(da.coords["C"].values) == ["DAPI", "GFP"]
    np.testing.assert_allclose(da.coords["X"].values, np.arange(30) * 0.5)
    np.testing.assert_allclose(da.coords["Y"].values, np.arange(40) * 0.25)


# -- thumbnail / show ----------------------------------------------------------------------------------


class CountingReader:
    """An array-like that records every key it is asked for."""

    def __init__(self, data: np.ndarray) -> None:
        self._data = data
        self.shape = data.shape
        self.dtype = data.dtype
        self.chunks = (1, 1, 1, 32, 32)
        self.keys: list[tuple[Any, ...]] = []

    def __getitem__(self, key: tuple[Any, ...]) -> np.ndarray:
        self.keys.append(key)
        return self._data[key]


def test_thumbnail_matches_numpy_and_reads_only_the_plane() -> None:
    data = np.random.default_rng(0).integers(0, 1000, (2, 3, 5, 100, 70)).astype(np.uint16)
    reader = CountingReader(data)
    stack = LazyImageStack(reader, "TCZYX")
    plane, step = thumbnail(stack, sample=1, channel=2, z=3, max_size=40)
    assert step == 3
    np.testing.assert_array_equal(plane, data[1, 2, 3, ::3, ::3])
    assert reader.keys
    for key in reader.keys:
        assert key[:3] in ((slice(1, 2), slice(2, 3), slice(3, 4)), (1, 2, 3)), key


def test_thumbnail_defaults_and_errors() -> None:
    stack = _stack((2, 6, 10, 10), "CZYX")
    plane, step = thumbnail(stack)
    assert step == 1
    np.testing.assert_array_equal(plane, np.asarray(stack.reader)[0, 3])  # middle z
    with pytest.raises(SelectionError, match="channel=2"):
        thumbnail(stack, channel=2)
    with pytest.raises(SelectionError, match="sample=1"):
        thumbnail(stack, sample=1)
    with pytest.raises(SelectionError, match="z=6"):
        thumbnail(stack, z=6)
    with pytest.raises(SelectionError, match="max_size"):
        thumbnail(stack, max_size=0)


def test_show_renders_with_agg() -> None:
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stack = _named_stack()
    ax = show(stack, sample=2, channel=1, max_size=16)
    try:
        (image,) = ax.get_images()
        np.testing.assert_array_equal(image.get_array(), np.asarray(stack.reader)[2, 1, ::3, ::3])
        assert "GFP" in ax.get_title()
        assert "cells.tif" in ax.get_title()
        assert image.get_extent() == [0, 30, 40, 0]  # ticks in full-resolution pixels
        ax.figure.canvas.draw()
        assert np.asarray(ax.figure.canvas.buffer_rgba()).shape[2] == 4
    finally:
        plt.close(ax.figure)


def test_show_draws_on_given_axes_and_stack_method() -> None:
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, given = plt.subplots()
    try:
        stack = _stack((4, 20, 20), "ZYX")
        assert show(stack, ax=given, colorbar=False, vmin=0, vmax=10) is given
        assert given.get_images()[0].get_clim() == (0, 10)
        assert "z 2" in given.get_title()
        if hasattr(LazyImageStack, "show"):
            ax = stack.show(z=1)
            np.testing.assert_array_equal(ax.get_images()[0].get_array(), np.asarray(stack.reader)[1])
            plt.close(ax.figure)
    finally:
        plt.close(fig)


def test_show_without_matplotlib_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    with pytest.raises(MissingDependencyError, match=r"lazystack\[plot\]"):
        show(_stack((8, 8), "YX"))


def test_thumbnail_reads_a_coarser_ome_zarr_level(tmp_path: Path) -> None:
    pytest.importorskip("lazystack.sources.zarr")
    writing = pytest.importorskip("lazystack.ops.writing")
    import zarr

    from lazystack import load_zarrs

    data = np.random.default_rng(0).integers(0, 255, (2, 512, 512), dtype=np.uint8)
    (source,) = load_arrays([data], "CYX")
    path = tmp_path / "pyramid.ome.zarr"
    writing.write_ome_zarr(source, path, levels=3)
    levels = load_zarrs(path, "CYX")
    assert [s.data_shape[-1] for s in levels] == [512, 256, 128]
    level1 = zarr.open_array(path / "1", mode="r")[1]
    level2 = zarr.open_array(path / "2", mode="r")[1]

    plane, step = thumbnail(levels[0], channel=1, max_size=256)  # level 1 (256) is the coarsest with >= 256
    assert step == 2
    np.testing.assert_array_equal(plane, level1)
    plane, step = thumbnail(levels[0], channel=1, max_size=200)  # level 1, strided to fit
    assert step == 4
    np.testing.assert_array_equal(plane, level1[::2, ::2])
    plane, step = thumbnail(levels[0], channel=1, max_size=128)
    assert step == 4
    np.testing.assert_array_equal(plane, level2)
    plane, _ = thumbnail(levels[0], channel=1, max_size=128, use_levels=False)  # plain striding
    np.testing.assert_array_equal(plane, data[1, ::4, ::4])
    view = levels[0].isel(Y=slice(0, 256))  # a view: no level change
    plane, _ = thumbnail(view, channel=1, max_size=128)
    np.testing.assert_array_equal(plane, data[1, :256:4, ::4])
