"""Session 15 (url15): one parser for file paths and ``file:`` URLs, used by every loader and the writer.

Each form of a path (a plain path, an ``os.PathLike``, ``~``, ``file:/abs``, ``file:///abs``,
``file://localhost/abs``, percent-encoded or not, with spaces, unicode, ``%`` and ``..``) is opened by every
loader and written by ``write_ome_zarr``; the file each one reads (or writes) is compared with the path the
standard library gives (``url2pathname(urlsplit(u).path)``, ``os.path.expanduser`` for a plain path), and the
data with the format library's own reader. Then the refusals: a host, a query, a fragment, no path.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit
from urllib.request import url2pathname

import numpy as np
import pytest
import tifffile

import lazystack
from lazystack.core.errors import SourceFormatError, SourceNotFoundError, UnsupportedSourceError
from lazystack.io.handles import local_path, split_source
from lazystack.loading.auto import source_kind

zarr = pytest.importorskip("zarr")

#: file names with what a URL must encode (a space, unicode, a literal '%')
NAMES = ["a b", "ü-é", "p%20q"]


def _expected(form: str) -> str:
    """The local path the standard library reads ``form`` as (an absolute path, ``..`` kept)."""
    if form.lower().startswith("file:"):
        return url2pathname(urlsplit(form).path)
    return os.path.expanduser(form)


def _forms(path: Path, home: Path) -> list[Any]:
    """Every way of writing ``path`` (absolute): plain, PathLike, ``~``, ``..`` and the file: URL forms."""
    text = str(path)
    dotted = str(path.parent / "sub" / ".." / path.name)
    forms: list[Any] = [
        text,
        path,
        "~/" + os.path.relpath(text, home),
        dotted,
        "file://" + quote(text),
        "file://localhost" + quote(text),
        "FILE://LOCALHOST" + quote(text),
        "file:" + quote(text),
        "file://" + quote(dotted),
    ]
    if "%" not in text:  # unencoded spaces / unicode are read as written (a literal '%' must be '%25')
        forms += ["file://" + text, "file:" + text]
    return forms


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "sub").mkdir()
    return tmp_path


def _same_file(a: str, b: str) -> bool:
    return os.path.realpath(a) == os.path.realpath(b)


def test_local_path_matches_the_standard_library(home: Path) -> None:
    for name in NAMES:
        for form in _forms(home / f"{name}.tif", home):
            got = local_path(form)
            assert got == _expected(os.fspath(form)), form
    assert local_path("s3://bucket/x.zarr") is None
    assert local_path("zip://a/0::file:///x.zip") is None
    assert local_path("a%20b.tif") == "a%20b.tif"  # a plain path is literal
    assert local_path("file:x.tif") == "file:x.tif"  # no '/': a relative file name, not a URL
    assert local_path("file:///a.czi@1#level=2", selector=True) == "/a.czi@1#level=2"
    assert local_path("file:///~/x") == "/~/x"  # no '~' expansion inside a URL


# -- every loader reads one string as one file ------------------------------------------------------------------------
def _tiff(path: Path) -> np.ndarray:
    data = np.arange(2 * 8 * 8, dtype=np.uint16).reshape(2, 8, 8)
    tifffile.imwrite(path, data)
    return tifffile.imread(path)


def _read_all(stack: lazystack.LazyImageStack) -> np.ndarray:
    return np.squeeze(np.asarray(stack.data.compute()))


def _tiff_loaders() -> list[tuple[str, Callable[[Any], list[Any]]]]:
    return [
        ("load_tiffs", lambda s: lazystack.load_tiffs(s, "ZYX")),
        ("load_iter_tiff", lambda s: lazystack.load_iter_tiff(s, "ZYX")),
        ("load", lambda s: lazystack.load(s, "ZYX")),
        ("load_custom_file", lambda s: lazystack.load_custom_file(s, "ZYX", read_func=tifffile.imread)),
    ]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize(("loader", "call"), _tiff_loaders(), ids=[n for n, _ in _tiff_loaders()])
def test_tiff_loaders_read_every_form_as_the_standard_library_path(home: Path, name: str, loader: str, call) -> None:  # type: ignore[no-untyped-def]
    path = home / f"{name}.tif"
    reference = _tiff(path)
    for form in _forms(path, home):
        (stack,) = call(form)
        assert _same_file(split_source(stack.source)[0], _expected(os.fspath(form))), (loader, form, stack.source)
        np.testing.assert_array_equal(_read_all(stack), reference)
    assert lazystack.propose_axes("file://" + quote(str(path))) == lazystack.propose_axes(path)


@pytest.mark.parametrize("name", NAMES)
def test_load_bioio_reads_every_form_as_the_standard_library_path(home: Path, name: str) -> None:
    pytest.importorskip("bioio")
    pytest.importorskip("bioio_ome_tiff")
    path = home / f"{name}.ome.tif"
    data = np.arange(8 * 8, dtype=np.uint16).reshape(8, 8)
    tifffile.imwrite(path, data, ome=True)
    for form in _forms(path, home)[:6]:  # bioio is slow to open: the main forms
        (stack,) = lazystack.load_bioio(form, "YX")
        assert _same_file(split_source(stack.source)[0], _expected(os.fspath(form))), (form, stack.source)
        np.testing.assert_array_equal(_read_all(stack), tifffile.imread(path))


@pytest.mark.parametrize("name", NAMES)
def test_npy_through_load_reads_every_form(home: Path, name: str) -> None:
    path = home / f"{name}.npy"
    np.save(path, np.arange(64, dtype=np.float32).reshape(8, 8))
    for form in _forms(path, home):
        (stack,) = lazystack.load(form, "YX")
        assert _same_file(stack.source, _expected(os.fspath(form))), (form, stack.source)
        np.testing.assert_array_equal(_read_all(stack), np.load(path))


@pytest.mark.parametrize("name", NAMES)
def test_czi_loaders_read_every_form_as_the_standard_library_path(home: Path, name: str, shared_czi_dir: Path) -> None:
    pytest.importorskip("pylibCZIrw")
    real = shared_czi_dir / "100x100.czi"
    path = home / f"{name}.czi"
    path.symlink_to(real)  # never a copy of the shared data
    (reference,) = lazystack.load_czis(real, "SCYX")
    for form in _forms(path, home):
        for stacks in (lazystack.load_czis(form, "SCYX"), lazystack.load(form, "SCYX")):
            (stack,) = stacks
            assert _same_file(split_source(stack.source)[0], _expected(os.fspath(form))), (form, stack.source)
            np.testing.assert_array_equal(_read_all(stack), _read_all(reference))
    # a URL's '@N' scene and '#level=K' selector (the fragment) are kept
    (stack,) = lazystack.load_czis("file://" + quote(str(path)) + "@0#level=0", "SCYX")
    assert split_source(stack.source)[1] == 0


def _zarr(path: Path) -> np.ndarray:
    data = np.arange(3 * 8 * 8, dtype=np.uint8).reshape(3, 8, 8)
    zarr.create_array(str(path), data=data, chunks=(1, 8, 8))
    return np.asarray(zarr.open_array(str(path), mode="r")[...])


@pytest.mark.parametrize("name", NAMES)
def test_zarr_loaders_read_every_form_as_the_standard_library_path(home: Path, name: str) -> None:
    path = home / f"{name}.zarr"
    reference = _zarr(path)
    for form in _forms(path, home):
        for stacks in (lazystack.load_zarrs(form, "TYX"), lazystack.load(form, "TYX")):
            (stack,) = stacks
            assert stack.source.startswith("file://")
            assert _same_file(stack.source[len("file://") :], _expected(os.fspath(form))), (form, stack.source)
            np.testing.assert_array_equal(_read_all(stack), reference)


@pytest.mark.parametrize("name", NAMES)
def test_write_ome_zarr_writes_every_form_where_the_loaders_read_it(home: Path, name: str) -> None:
    data = np.arange(8 * 8, dtype=np.uint8).reshape(8, 8)
    stack = lazystack.load_arrays(data, "YX")[0]
    path = home / f"{name}.ome.zarr"
    for form in _forms(path, home):
        written = lazystack.write_ome_zarr(stack, form, levels=1, overwrite=True)
        assert _same_file(written, _expected(os.fspath(form))), (form, written)
        assert os.path.realpath(written) == os.path.realpath(path)
        (back,) = lazystack.load_zarrs(form, "YX", levels=0)  # the same string reads it back
        np.testing.assert_array_equal(_read_all(back), data)
    assert sorted(p.name for p in home.iterdir()) == sorted(["sub", path.name])


# -- what main got wrong -------------------------------------------------------------------------------------------
def test_tiff_loaders_expand_a_tilde(home: Path) -> None:
    """``~/x.tif`` was a SourceNotFoundError for the TIFF loaders (the Zarr source and the writer expanded it)."""
    reference = _tiff(home / "x.tif")
    for _, call in _tiff_loaders():
        (stack,) = call("~/x.tif")
        assert stack.source == str(home / "x.tif")
        np.testing.assert_array_equal(_read_all(stack), reference)


def test_file_loaders_take_the_short_file_url_form(home: Path) -> None:
    """``file:/abs`` (RFC 8089) was read by the writer only: the loaders looked for a relative ``file:`` folder."""
    reference = _tiff(home / "x.tif")
    for _, call in _tiff_loaders():
        (stack,) = call(f"file:{home}/x.tif")
        np.testing.assert_array_equal(_read_all(stack), reference)
    assert source_kind(f"file:{home}/x.tif") == "tiff"


def test_a_percent_escape_is_decoded_even_when_the_literal_name_exists(home: Path) -> None:
    """``file:///d/a%20b.tif`` is ``/d/a b.tif`` (RFC 8089); main read the file literally named ``a%20b.tif``
    when one existed, and ``a b.tif`` otherwise: one URL, two files."""
    spaced = _tiff(home / "a b.tif")
    tifffile.imwrite(home / "a%20b.tif", np.zeros((2, 8, 8), np.uint16))
    (stack,) = lazystack.load_tiffs(f"file://{home}/a%20b.tif", "ZYX")
    assert stack.source == str(home / "a b.tif")
    np.testing.assert_array_equal(_read_all(stack), spaced)


def test_a_plain_zarr_path_is_not_percent_decoded(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A plain path is literal: main's Zarr source read ``a%20b.zarr`` (missing) as the store ``a b.zarr``."""
    monkeypatch.chdir(home)
    _zarr(home / "a b.zarr")
    with pytest.raises(SourceNotFoundError, match=r"a%20b\.zarr"):
        lazystack.load_zarrs("a%20b.zarr", "TYX")
    _tiff(home / "a b.tif")
    with pytest.raises(SourceNotFoundError, match=r"a%20b\.tif"):
        lazystack.load_tiffs("a%20b.tif", "ZYX")


def test_zarr_source_refuses_a_file_url_naming_a_host(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``file://otherhost/a.zarr`` was read as the relative ``./otherhost/a.zarr``: another store, silently."""
    monkeypatch.chdir(home)
    _zarr(home / "otherhost" / "a.zarr")
    for call in (lambda u: lazystack.load_zarrs(u, "TYX"), lambda u: lazystack.load(u, "TYX")):
        with pytest.raises(UnsupportedSourceError, match=r"naming a host: got 'file://otherhost/a\.zarr'"):
            call("file://otherhost/a.zarr")


def test_write_ome_zarr_refuses_a_query_and_writes_nothing(home: Path) -> None:
    """``file:///x.zarr?q=1`` wrote a folder named ``x.zarr?q=1``."""
    stack = lazystack.load_arrays(np.zeros((8, 8), np.uint8), "YX")[0]
    url = f"file://{home}/x.zarr?q=1"
    with pytest.raises(UnsupportedSourceError, match=r"has a query \('\?q=1'\)") as info:
        lazystack.write_ome_zarr(stack, url, levels=1)
    assert repr(url) in str(info.value)
    assert sorted(p.name for p in home.iterdir()) == ["sub"]


# -- refusals: the same for every caller ------------------------------------------------------------------------------
def _zeros() -> lazystack.LazyImageStack:
    return lazystack.load_arrays(np.zeros((8, 8), np.uint8), "YX")[0]


def _callers() -> list[tuple[str, Callable[[str], Any]]]:
    return [
        ("load_tiffs", lambda s: lazystack.load_tiffs(s, "YX")),
        ("load_iter_tiff", lambda s: lazystack.load_iter_tiff(s, "YX")),
        ("load_czis", lambda s: lazystack.load_czis(s, "SCYX")),
        ("load_bioio", lambda s: lazystack.load_bioio(s, "YX")),
        ("load_custom_file", lambda s: lazystack.load_custom_file(s, "YX", read_func=np.load)),
        ("load_zarrs", lambda s: lazystack.load_zarrs(s, "YX")),
        ("load", lambda s: lazystack.load(s, "YX")),
        ("source_kind", source_kind),
        ("propose_axes", lazystack.propose_axes),
        ("write_ome_zarr", lambda s: lazystack.write_ome_zarr(_zeros(), s, levels=1)),
    ]


REFUSED = [
    ("file://otherhost/d/a.tif", "naming a host"),
    ("file://user@localhost/d/a.tif", "naming a host"),
    ("file:///d/a.tif?q=1", r"has a query \('\?q=1'\)"),
    ("file:///d/a.zarr?", r"has a query \('\?'\)"),
    ("file:///d/a.tif#frag", r"has a fragment \('#frag'\)"),
    ("file://", "names no path"),
    ("file://localhost", "names no path"),
    ("file:///d/a\tb.tif", "cannot hold"),
    ("file:///d/a%00b.tif", "NUL character"),
    ("", "empty path"),
]


@pytest.mark.parametrize(("value", "why"), REFUSED, ids=[repr(v) for v, _ in REFUSED])
@pytest.mark.parametrize(("caller", "call"), _callers(), ids=[n for n, _ in _callers()])
def test_every_caller_refuses_the_same_bad_values(  # type: ignore[no-untyped-def]
    home: Path, monkeypatch: pytest.MonkeyPatch, caller: str, call, value: str, why: str
) -> None:
    monkeypatch.chdir(home)
    # inside home, so that "nothing written" sees a write (main's writer made /d/a.tif?q=1 ... at the root),
    # and so that a folder left at /d by such a run cannot be read as a Zarr stack's own unencoded source
    value = value.replace("file:///d/", f"file://{home}/")
    with pytest.raises(UnsupportedSourceError, match=why) as info:
        call(value)
    message = str(info.value)
    if value:
        assert repr(value) in message  # names the value
    assert "file:///data/" in message  # and what is accepted
    assert "'~' expanded" in message
    assert sorted(p.name for p in home.iterdir()) == ["sub"]  # nothing written


def test_a_level_selector_fragment_is_refused_where_no_selector_is_taken(home: Path) -> None:
    stack = lazystack.load_arrays(np.zeros((8, 8), np.uint8), "YX")[0]
    with pytest.raises(UnsupportedSourceError, match="has a fragment"):
        lazystack.write_ome_zarr(stack, f"file://{home}/x.zarr#level=1", levels=1)
    _zarr(home / "y.zarr")
    with pytest.raises(UnsupportedSourceError, match="has a fragment"):
        lazystack.load_zarrs(f"file://{home}/y.zarr#level=1", "TYX")


# -- load() on odd local inputs: a clear error or the right answer ----------------------------------------------------
def test_load_names_what_a_folder_of_sources_holds(tmp_path: Path) -> None:
    """A folder of TIFF files and Zarr stores (not itself a store) said only "(directory)"."""
    folder = tmp_path / "mixed"
    folder.mkdir()
    for name in ("a.tif", "b.tif"):
        _tiff(folder / name)
    _zarr(folder / "c.zarr")
    with pytest.raises(
        UnsupportedSourceError, match=r"holding 2 \.tif and 1 \.zarr: load its sources as a list"
    ) as info:
        lazystack.load(folder, "ZYX")
    assert repr(str(folder)) in str(info.value)
    hint = f"sorted(glob.glob({str(folder / '*.tif')!r}))"
    assert hint in str(info.value)
    assert len(lazystack.load(sorted(folder.glob("*.tif")), "ZYX")) == 2  # what the hint says works
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UnsupportedSourceError, match=r"a directory that is not a Zarr store\); accepted"):
        lazystack.load(empty, "YX")


def test_load_says_a_path_is_a_symbolic_link_loop_or_dangling(tmp_path: Path) -> None:
    loop = tmp_path / "loop.tif"
    loop.symlink_to(loop)
    with pytest.raises(SourceNotFoundError, match=r"loop\.tif' \(Too many levels of symbolic links\)"):
        lazystack.load(loop, "YX")
    with pytest.raises(SourceNotFoundError, match=r"Too many levels of symbolic links"):
        lazystack.load(tmp_path / "loop.tif" / "x.zarr" / "0", "YX")
    dangling = tmp_path / "gone.tif"
    dangling.symlink_to(tmp_path / "nowhere.tif")
    with pytest.raises(SourceNotFoundError, match=r"a symbolic link to '.*nowhere\.tif', which does not exist"):
        lazystack.load(dangling, "YX")


def test_load_refuses_a_node_inside_a_zarr_that_is_a_file(tmp_path: Path) -> None:
    """``f.zarr/0`` with ``f.zarr`` a file said "no such array or group ... in Zarr store 'f.zarr'"."""
    (tmp_path / "f.zarr").write_bytes(b"not a store")
    for source in (tmp_path / "f.zarr", tmp_path / "f.zarr" / "0"):
        with pytest.raises(SourceFormatError, match=r"f\.zarr' is a file, not a Zarr store"):
            lazystack.load(source, "YX")


def test_load_of_a_tif_folder_and_of_trailing_slashes(tmp_path: Path) -> None:
    (tmp_path / "t.tif").mkdir()
    with pytest.raises(SourceFormatError, match=r"t\.tif' is a directory, not a regular file"):
        lazystack.load(tmp_path / "t.tif", "YX")
    reference = _tiff(tmp_path / "x.tif")
    with pytest.raises(SourceNotFoundError, match=r"x\.tif/' \(Not a directory\)"):  # POSIX: '/' asks for a folder
        lazystack.load(f"{tmp_path}/x.tif/", "ZYX")
    zdata = _zarr(tmp_path / "s.zarr")
    for source in (f"{tmp_path}/s.zarr/", f"{tmp_path}/s.zarr//", f"file://{tmp_path}/s.zarr/"):
        (stack,) = lazystack.load(source, "TYX")
        assert stack.source == f"file://{tmp_path}/s.zarr"
        np.testing.assert_array_equal(_read_all(stack), zdata)
    np.testing.assert_array_equal(_read_all(lazystack.load(tmp_path / "x.tif", "ZYX")[0]), reference)


def test_source_disk_bytes_expands_a_tilde_as_the_loaders_do(home: Path) -> None:
    """``lazystack info ~/x.tif`` (quoted) read the file but showed its size as unknown."""
    from lazystack.loading.stacklist import source_disk_bytes

    _tiff(home / "x.tif")
    assert source_disk_bytes("~/x.tif") == (home / "x.tif").stat().st_size
