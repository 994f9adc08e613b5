"""``show()``: scale bars from physical pixel sizes, channel composites and RGB(A) in true colour.

References are computed independently with numpy (percentiles, clipping, the colours' RGB values)
and with tifffile / pylibCZIrw for the real files; reads are counted on the reader.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from lazystack import LazyImageStack, SelectionError, load, load_arrays
from lazystack.frontends.plot import composite, is_rgb, scale_bar_length, show

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from mpl_toolkits.axes_grid1.anchored_artists import AnchoredSizeBar  # noqa: E402

MAGENTA, LIME, CYAN = (1.0, 0.0, 1.0), (0.0, 1.0, 0.0), (0.0, 1.0, 1.0)


@pytest.fixture(autouse=True)
def _close_figures() -> Any:
    yield
    plt.close("all")


def _physical(shape: tuple[int, ...] = (2, 96, 384), axes: str = "CYX", size: float = 0.65, **attrs: Any) -> Any:
    data = np.random.default_rng(1).integers(0, 4000, shape).astype(np.uint16)
    units = {"Y": "micrometer", "X": "micrometer"}
    merged = {"physical_pixel_sizes": {"Y": size, "X": size}, "units": units, **attrs}
    return LazyImageStack(data, axes, attrs=merged), data


def _bars(ax: Any) -> list[AnchoredSizeBar]:
    return [a for a in ax.artists if isinstance(a, AnchoredSizeBar)]


def _bar_facts(bar: AnchoredSizeBar) -> tuple[str, float]:
    (rectangle,) = bar.size_bar.get_children()
    return bar.txt_label.get_text(), rectangle.get_width()


def _reference_length(pixel_size: float, width: int) -> float:
    """The largest of 1, 2, 5 x 10^k (any k) not above a quarter of the width, by enumeration."""
    candidates = [m * 10.0**k for k in range(-15, 15) for m in (1, 2, 5)]
    return max(c for c in candidates if c <= 0.25 * width * pixel_size * (1 + 1e-12))


# -- scale bar length --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "unit", "width", "label"),
    [
        (0.65, "micrometer", 384, "50 µm"),
        (0.09057667415221031, "micrometer", 240, "5 µm"),
        (0.005, "micrometer", 200, "200 nm"),  # under 1 µm: nanometres
        (10.0, "micrometer", 1000, "2 mm"),  # 2000 µm: millimetres
        (2.0, "nanometer", 1000, "500 nm"),
        (0.4, "µm", 100, "10 µm"),  # a symbol as OME-XML writes it
        (1.0833333333333333, "micron", 924, "200 µm"),  # ImageJ's name
        (2.5, "millimeter", 100, "50 mm"),
        (1.0, "pixel", 100, "20 pixel"),  # not a length unit: kept as given
    ],
)
def test_scale_bar_length_is_nice_and_in_the_best_unit(size: float, unit: str, width: int, label: str) -> None:
    length, text = scale_bar_length(size, unit, width)
    assert text == label
    assert length * size == pytest.approx(_reference_length(size, width), rel=1e-12)
    assert 0.1 * width < length <= 0.25 * width


def test_scale_bar_length_rejects_bad_numbers() -> None:
    for bad in (0, -1.0, math.nan, math.inf, True):
        with pytest.raises(SelectionError, match="pixel_size"):
            scale_bar_length(bad, "micrometer", 100)  # type: ignore[arg-type]
    with pytest.raises(SelectionError, match="width"):
        scale_bar_length(1.0, "micrometer", 0)


# -- scale bar in show() ---------------------------------------------------------------------------


def test_show_draws_a_scale_bar_of_the_right_length() -> None:
    stack, _ = _physical()
    ax = show(stack, channel=0)
    (bar,) = _bars(ax)
    label, width = _bar_facts(bar)
    assert label == "50 µm"
    assert width == pytest.approx(50 / 0.65)  # data coordinates: full-resolution pixels
    assert bar.loc == 4  # matplotlib's code of "lower right"
    ax.figure.canvas.draw()
    box, axes_box = bar.get_window_extent(), ax.get_window_extent()
    assert box.x0 > (axes_box.x0 + axes_box.x1) / 2
    assert box.y1 < (axes_box.y0 + axes_box.y1) / 2


def test_show_scale_bar_elsewhere_and_off() -> None:
    stack, _ = _physical()
    ax = show(stack, scalebar="upper left")
    ax.figure.canvas.draw()
    (bar,) = _bars(ax)
    box, axes_box = bar.get_window_extent(), ax.get_window_extent()
    assert box.x1 < (axes_box.x0 + axes_box.x1) / 2
    assert box.y0 > (axes_box.y0 + axes_box.y1) / 2
    assert _bars(show(stack, scalebar=False)) == []
    with pytest.raises(SelectionError, match=r"'bottom'.*lower right"):
        show(stack, scalebar="bottom")


def test_no_scale_bar_without_physical_sizes_or_units() -> None:
    (plain,) = load_arrays([np.zeros((3, 40, 50), np.uint16)], "CYX")
    assert _bars(show(plain)) == []
    sizes_only = LazyImageStack(np.zeros((40, 50)), "YX", attrs={"physical_pixel_sizes": {"Y": 0.5, "X": 0.5}})
    assert _bars(show(sizes_only)) == []  # no unit: a bar could not be labelled


def test_scale_bar_of_a_strided_view_and_a_strided_read() -> None:
    stack, _ = _physical()
    view = stack.isel(X=slice(0, 384, 2))  # 192 pixels of 1.3 µm
    label, width = _bar_facts(_bars(show(view))[0])
    assert (label, width) == ("50 µm", pytest.approx(50 / 1.3))
    ax = show(stack, max_size=48)  # read at 1/8 resolution: the bar is still in full-resolution pixels
    label, width = _bar_facts(_bars(ax)[0])
    assert (label, width) == ("50 µm", pytest.approx(50 / 0.65))


def test_physical_ticks() -> None:
    stack = LazyImageStack(
        np.zeros((40, 80), np.uint8),
        "YX",
        attrs={
            "physical_pixel_sizes": {"Y": 0.5, "X": 0.25},
            "units": {"Y": "micrometer", "X": "micrometer"},
            "translation": {"Y": 10.0, "X": -2.0},
        },
    )
    ax = show(stack, ticks="physical")
    (image,) = ax.get_images()
    # pixel centres on the coordinates (-2 + 0.25 i, 10 + 0.5 j): edges half a pixel out
    assert image.get_extent() == pytest.approx([-2.125, -2.125 + 80 * 0.25, 9.75 + 40 * 0.5, 9.75])
    reference = stack.xarray.plot.imshow(ax=plt.subplots()[1])  # xarray draws pixels centred on its coordinates
    assert image.get_extent() == pytest.approx(list(reference.get_extent()))
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("X (µm)", "Y (µm)")
    label, width = _bar_facts(_bars(ax)[0])
    assert (label, width) == ("5 µm", pytest.approx(5.0))  # 20 µm wide: a 5 µm bar, in µm
    with pytest.raises(SelectionError, match="ticks='physical' needs physical pixel sizes"):
        show(LazyImageStack(np.zeros((4, 4)), "YX"), ticks="physical")
    with pytest.raises(SelectionError, match="'mm'"):
        show(stack, ticks="mm")


# -- composites ------------------------------------------------------------------------------------


def _stretch(plane: np.ndarray, lo: float, hi: float) -> np.ndarray:
    return np.clip((plane.astype(np.float64) - lo) / (hi - lo), 0, 1)


def test_composite_is_the_documented_additive_blend() -> None:
    data = np.random.default_rng(2).normal(1000, 300, (3, 60, 50)).astype(np.float32)
    data[1, :5, :5] = np.nan
    stack = LazyImageStack(data, "CYX", coords={"C": ["DAPI", "GFP", "Cy5"]})
    ax = show(stack, channel=[2, 0, 1])
    (image,) = ax.get_images()
    expected = np.zeros((60, 50, 3))
    for plane, colour in zip(data[[2, 0, 1]], (MAGENTA, LIME, CYAN), strict=True):
        finite = plane[np.isfinite(plane)]
        lo, hi = np.percentile(finite, 2), np.percentile(finite, 98)
        expected += np.nan_to_num(_stretch(plane, lo, hi))[..., None] * np.array(colour)
    np.testing.assert_allclose(image.get_array(), np.clip(expected, 0, 1), atol=1e-6)  # matplotlib keeps float32
    assert "2 (Cy5) + 0 (DAPI) + 1 (GFP)" in ax.get_title()
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend == ["2 (Cy5)", "0 (DAPI)", "1 (GFP)"]


def test_composite_by_name_all_colours_and_limits() -> None:
    data = np.random.default_rng(3).integers(0, 255, (2, 30, 40)).astype(np.uint16)
    stack = LazyImageStack(data, "CYX", coords={"C": ["DAPI", "GFP"]})
    by_name = show(stack, channel=["GFP", "DAPI"], colors=["red", "#0000ff"], vmin=[10, 0], vmax=200, robust=False)
    expected = _stretch(data[1], 10, 200)[..., None] * [1, 0, 0] + _stretch(data[0], 0, 200)[..., None] * [0, 0, 1]
    np.testing.assert_allclose(by_name.get_images()[0].get_array(), np.clip(expected, 0, 1))
    every = show(stack, channel="all", robust=False, colorbar=False)
    lo, hi = data.min(axis=(1, 2)), data.max(axis=(1, 2))
    expected = _stretch(data[0], lo[0], hi[0])[..., None] * MAGENTA + _stretch(data[1], lo[1], hi[1])[..., None] * LIME
    np.testing.assert_allclose(every.get_images()[0].get_array(), np.clip(expected, 0, 1))
    assert every.get_legend() is None


def test_composite_function_checks_its_input() -> None:
    with pytest.raises(SelectionError, match="not a matplotlib colour"):
        composite(np.zeros((1, 2, 2)), ["nocolour"], [(0, 1)])
    with pytest.raises(SelectionError, match="2 colour"):
        composite(np.zeros((1, 2, 2)), ["red", "blue"], [(0, 1)])
    with pytest.raises(SelectionError, match="increase"):
        composite(np.zeros((1, 2, 2)), ["red"], [(1, 1)])


def test_bad_channel_lists_name_the_value() -> None:
    stack = LazyImageStack(np.zeros((3, 8, 8), np.uint16), "CYX", coords={"C": ["DAPI", "GFP", "Cy5"]})
    with pytest.raises(SelectionError, match=r"channel=5 is out of range.*0 to 2"):
        show(stack, channel=[0, 5])
    with pytest.raises(SelectionError, match=r"'RFP' is not a channel.*\['DAPI', 'GFP', 'Cy5'\]"):
        show(stack, channel=["DAPI", "RFP"])
    with pytest.raises(SelectionError, match=r"channel=\[\] selects no channel"):
        show(stack, channel=[])
    with pytest.raises(SelectionError, match=r"repeats channel\(s\) \[0\]"):
        show(stack, channel=[0, "DAPI"])
    with pytest.raises(SelectionError, match=r"must be an integer.*1.5"):
        show(stack, channel=[0, 1.5])
    with pytest.raises(SelectionError, match="one colour per shown channel"):
        show(stack, channel="all", colors=["red"])
    with pytest.raises(SelectionError, match="one per shown channel"):
        show(stack, channel="all", vmin=[0, 1])
    with pytest.raises(SelectionError, match=r"rgb=True needs 3 \(RGB\) or 4 \(RGBA\)"):
        show(stack, channel=[0, 1], rgb=True)


# -- RGB ---------------------------------------------------------------------------------------


def test_rgb_uint8_is_shown_as_stored() -> None:
    data = np.random.default_rng(4).integers(0, 256, (50, 70, 3), dtype=np.uint8)
    (stack,) = load_arrays([data], "YXC")
    assert is_rgb(stack)
    ax = show(stack)  # default: every channel of an RGB stack
    (image,) = ax.get_images()
    assert image.get_array().dtype == np.uint8
    np.testing.assert_array_equal(image.get_array(), data)
    assert "RGB (channels 0, 1, 2)" in ax.get_title()
    assert ax.get_legend() is None
    strided = show(stack, max_size=35).get_images()[0].get_array()
    np.testing.assert_array_equal(strided, data[::2, ::2])
    single = show(stack, rgb=False).get_images()[0].get_array()  # rgb=False: channel 0 alone
    forced = LazyImageStack(data.transpose(2, 0, 1).astype(np.uint16) * 257, "CYX", coords={"C": ["a", "b", "c"]})
    assert not is_rgb(forced)
    np.testing.assert_allclose(show(forced, rgb=True).get_images()[0].get_array(), data / 255)
    np.testing.assert_array_equal(single, data[..., 0])
    rgba = np.random.default_rng(5).integers(0, 256, (20, 20, 4), dtype=np.uint8)
    (four,) = load_arrays([rgba], "YXC")
    np.testing.assert_array_equal(show(four).get_images()[0].get_array(), rgba)


def test_rgb_tiff_uint16_divided_by_its_maximum(tmp_path: Path) -> None:
    import tifffile

    data = np.random.default_rng(6).integers(0, 65536, (40, 30, 3), dtype=np.uint16)
    path = tmp_path / "rgb16.tif"
    tifffile.imwrite(path, data, photometric="rgb", resolution=(1 / 0.5, 1 / 0.5), metadata={"axes": "YXS"})
    (stack,) = load(path)
    assert stack.attrs["file_axes"] == "YXS"
    assert is_rgb(stack)
    (image,) = show(stack).get_images()
    np.testing.assert_allclose(image.get_array(), tifffile.imread(path) / 65535)


def test_is_rgb_from_names() -> None:
    rgb_named = LazyImageStack(np.zeros((3, 4, 4), np.uint16), "CYX", coords={"C": ["TL:R", "TL:G", "TL:B"]})
    assert is_rgb(rgb_named)
    three = LazyImageStack(np.zeros((3, 4, 4), np.uint8), "CYX", coords={"C": ["DAPI", "GFP", "Cy5"]})
    assert not is_rgb(three)  # uint8, but named fluorescence channels: a composite
    six = LazyImageStack(np.zeros((6, 4, 4), np.uint8), "CYX", coords={"C": [f"{a}:{s}" for a in "ab" for s in "RGB"]})
    assert not is_rgb(six)
    assert is_rgb(six, [3, 4, 5])
    ax = show(six, channel=[0, 1, 2], rgb=False, robust=False, vmin=0, vmax=1)
    assert [p.get_facecolor()[:3] for p in ax.get_legend().get_patches()] == [(1, 0, 0), (0, 1, 0), (0, 0, 1)]


def test_real_rgb_czi_matches_pylibczirw(shared_czi_dir: Path) -> None:
    pyczi = pytest.importorskip("pylibCZIrw.czi")
    path = shared_czi_dir / "RGB-8bit.czi"
    (stack,) = load(path)
    ax = show(stack, max_size=1024)
    (image,) = ax.get_images()
    with pyczi.open_czi(str(path)) as czi:
        bgr = czi.read(plane={"C": 0, "Z": 0, "T": 0})
    np.testing.assert_array_equal(image.get_array(), bgr[..., ::-1])
    label, width = _bar_facts(_bars(ax)[0])
    size = stack.physical_pixel_sizes["X"]
    assert (label, width) == ("200 µm", pytest.approx(200 / size))


def test_real_czi_composite_and_scale_bar(shared_czi_dir: Path) -> None:
    pyczi = pytest.importorskip("pylibCZIrw.czi")
    path = shared_czi_dir / "CellDivision_T3_Z5_CH2_X240_Y170.czi"
    (stack,) = load(path)
    ax = show(stack, sample=1, channel="all", z=2)
    with pyczi.open_czi(str(path)) as czi:
        planes = np.stack([czi.read(plane={"C": c, "Z": 2, "T": 1})[..., 0] for c in (0, 1)])
    limits = [tuple(np.percentile(p, [2, 98])) for p in planes]
    np.testing.assert_allclose(ax.get_images()[0].get_array(), composite(planes, ["magenta", "lime"], limits))
    assert _bar_facts(_bars(ax)[0]) == ("5 µm", pytest.approx(5 / 0.09057667415221031))


# -- bounded reads -------------------------------------------------------------------------------


class CountingReader:
    """An array-like that records every key it is asked for and the elements it returns."""

    def __init__(self, data: np.ndarray) -> None:
        self._data = data
        self.shape = data.shape
        self.dtype = data.dtype
        self.chunks = (1, 1, 1, 32, 32)
        self.keys: list[tuple[Any, ...]] = []
        self.elements = 0

    def __getitem__(self, key: tuple[Any, ...]) -> np.ndarray:
        self.keys.append(key)
        out = self._data[key]
        self.elements += out.size
        return out


def test_composite_reads_only_the_shown_planes() -> None:
    data = np.random.default_rng(7).integers(0, 1000, (2, 4, 5, 96, 64)).astype(np.uint16)
    reader = CountingReader(data)
    stack = LazyImageStack(reader, "TCZYX")
    ax = show(stack, sample=1, channel=[3, 1], z=2, max_size=32, colorbar=False)
    for key in reader.keys:
        t, c, z = (k.start if isinstance(k, slice) else k for k in key[:3])
        assert (t, z) == (1, 2), key
        assert c in (1, 3), key
    assert reader.elements <= 2 * 96 * 64  # at most the two planes (strided: fewer)
    planes = data[1, [3, 1], 2, ::3, ::3]
    limits = [tuple(np.percentile(p, [2, 98])) for p in planes]
    np.testing.assert_allclose(ax.get_images()[0].get_array(), composite(planes, ["magenta", "lime"], limits))


def test_ome_zarr_scale_bar_and_composite_from_a_coarser_level(tmp_path: Path) -> None:
    import zarr

    from lazystack import load_zarrs, write_ome_zarr
    from lazystack.frontends.plot import thumbnail

    stack, data = _physical((2, 256, 320), size=0.2)
    path = write_ome_zarr(stack, tmp_path / "img.ome.zarr", levels=3)
    levels = load_zarrs(path, "CYX")
    assert levels[0].attrs["units"]["X"] == "micrometer"
    level2 = zarr.open_array(f"{path}/2", mode="r")[:]
    planes, step = thumbnail(levels[0], channel=[1, 0], max_size=80)  # level 2 (80 pixels wide)
    assert step == 4
    np.testing.assert_array_equal(planes, level2[[1, 0]])
    ax = show(levels[0], channel=[1, 0], max_size=80, robust=False)
    limits = [(float(p.min()), float(p.max())) for p in level2[[1, 0]]]
    np.testing.assert_allclose(ax.get_images()[0].get_array(), composite(level2[[1, 0]], ["magenta", "lime"], limits))
    label, width = _bar_facts(_bars(ax)[0])
    assert (label, width) == ("10 µm", pytest.approx(10 / 0.2))  # 64 µm wide; full-resolution pixels
    np.testing.assert_array_equal(thumbnail(levels[0], channel=[0], use_levels=False)[0], data[[0]])
    with pytest.raises(SelectionError, match="non-empty sequence"):
        thumbnail(levels[0], channel=[])


# -- review regressions -------------------------------------------------------------------------


@pytest.mark.parametrize(("top", "divisor"), [(4095, 4095), (1000, 1023), (16000, 16383), (40000, 65535)])
def test_rgb_uint16_of_a_camera_bit_depth_is_not_black(top: int, divisor: int) -> None:
    """12-bit (10-, 14-bit) RGB stored as uint16 is divided by its bit depth's maximum, not by 65535."""
    data = np.random.default_rng(8).integers(0, top, (3, 20, 30), dtype=np.uint16)
    data[0, 0, 0] = top
    stack = LazyImageStack(data, "CYX", coords={"C": ["R", "G", "B"]})
    (image,) = show(stack).get_images()
    np.testing.assert_allclose(image.get_array(), np.moveaxis(data, 0, -1) / divisor)


def test_rgb_signed_samples_are_clipped_to_zero() -> None:
    data = np.arange(-300, 300, dtype=np.int16).reshape(3, 10, 20)
    stack = LazyImageStack(data, "CYX", coords={"C": ["R", "G", "B"]})
    shown = show(stack).get_images()[0].get_array()
    np.testing.assert_allclose(shown, np.clip(np.moveaxis(data, 0, -1) / 1023, 0, 1))


def test_all_channels_of_a_one_channel_stack_is_that_channel() -> None:
    data = np.random.default_rng(9).integers(0, 4000, (1, 30, 40)).astype(np.uint16)
    stack = LazyImageStack(data, "CYX")
    ax = show(stack, channel="all", cmap="magma")
    (image,) = ax.get_images()
    np.testing.assert_array_equal(image.get_array(), data[0])  # one channel, drawn with the colour map
    assert image.get_cmap().name == "magma"
    assert len(ax.figure.axes) == 2  # ... and a colour bar, not a legend
    assert ax.get_legend() is None
    assert "channel 0" in ax.get_title()


@pytest.mark.parametrize("channel", [0, "all", [0, 1]])
def test_reversed_vmin_vmax_name_the_values(channel: Any) -> None:
    stack, _ = _physical()
    with pytest.raises(SelectionError, match=r"vmin must be below vmax, got vmin=50, vmax=10"):
        show(stack, channel=channel, vmin=50, vmax=10)
    rgb = LazyImageStack(np.zeros((3, 8, 8), np.uint16), "CYX", coords={"C": ["R", "G", "B"]})
    with pytest.raises(SelectionError, match=r"vmin must be below vmax for RGB samples, got vmin=50.0, vmax=10.0"):
        show(rgb, vmin=50, vmax=10)


def test_thumbnail_step_ignores_the_channel_count() -> None:
    from lazystack.frontends.plot import thumbnail

    data = np.zeros((40, 30, 30), np.uint16)
    stack = LazyImageStack(data, "CYX")
    plane, step = thumbnail(stack, channel=list(range(40)), max_size=15)
    assert plane.shape == (40, 15, 15)
    assert step == 2
