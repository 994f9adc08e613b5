"""The documentation: every ```python block runs, and ``mkdocs build --strict`` passes.

Each page's Python blocks are joined, in order, into one script that runs in a
fresh interpreter inside a temporary working directory (so examples that use
worker processes work with any start method). A block preceded by
``<!-- no-test -->`` is skipped. ``<!-- requires: mod1 mod2 -->`` on the line
just before a block (blank lines between allowed) makes that block run only
when those modules can be imported; anywhere else on a page it makes the
whole page skip (with the reason) when one cannot.

Also here: every ``lazystack`` name a page or the README uses exists where
it says, and the built site renders cross-references as links.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = sorted(DOCS.rglob("*.md"))

FENCE = re.compile(r"^```python[^\n]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
NO_TEST = re.compile(r"<!--\s*no-test\s*-->\s*$")
REQUIRES = re.compile(r"<!--\s*requires:\s*([^>]*?)\s*-->")


def _block_requirements(text: str, start: int) -> list[str] | None:
    """Modules named by a ``requires`` comment on the line just before the block at ``start``."""
    previous = text[:start].rstrip("\n").rsplit("\n", 1)[-1]
    m = REQUIRES.fullmatch(previous.strip())
    return m.group(1).split() if m else None


def python_blocks(text: str) -> list[tuple[int, str]]:
    """``(line number, code)`` of every ```python block to run here.

    Skipped: blocks marked ``<!-- no-test -->`` and blocks whose own ``requires``
    comment names a module that cannot be imported.
    """
    blocks = []
    for m in FENCE.finditer(text):
        before = text[: m.start()].rstrip("\n")
        if NO_TEST.search(before.rsplit("\n", 1)[-1]):
            continue
        needs = _block_requirements(text, m.start())
        if needs and any(importlib.util.find_spec(name) is None for name in needs):
            continue
        blocks.append((text.count("\n", 0, m.start()) + 2, m.group(1)))
    return blocks


def requirements(text: str) -> list[str]:
    """Modules a page needs as a whole: ``requires`` comments not attached to a block."""
    attached = {text[: m.start()].rstrip("\n").rsplit("\n", 1)[-1].strip() for m in FENCE.finditer(text)}
    return [name for m in REQUIRES.finditer(text) if m.group(0) not in attached for name in m.group(1).split()]


def test_block_extraction() -> None:
    text = "a\n```python\nx = 1\n```\n<!-- no-test -->\n```python\nraise SystemExit\n```\n```bash\nls\n```\n"
    assert python_blocks(text) == [(3, "x = 1\n")]
    assert requirements("<!-- requires: a.b c -->") == ["a.b", "c"]
    attached = "<!-- requires: numpy -->\n\n```python\ny = 2\n```\n<!-- requires: no_such_mod -->\n```python\nz\n```\n"
    assert python_blocks(attached) == [(4, "y = 2\n")]  # the second block's module is missing: skipped
    assert requirements(attached) == []  # both comments belong to a block, not to the page


def test_docs_pages_exist() -> None:
    names = {p.relative_to(DOCS).as_posix() for p in PAGES}
    expected = {
        "index.md",
        "axes.md",
        "loaders/arrays.md",
        "loaders/tiff.md",
        "loaders/zarr.md",
        "loaders/czi.md",
        "loaders/custom.md",
        "views-and-patches.md",
        "dataloader.md",
        "distributed.md",
        "benchmarks.md",
        "api.md",
    }
    assert expected <= names, expected - names


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(DOCS).as_posix())
def test_docs_examples_run(page: Path, tmp_path: Path) -> None:
    text = page.read_text(encoding="utf-8")
    missing = [name for name in requirements(text) if importlib.util.find_spec(name) is None]
    if missing:
        pytest.skip(f"{page.name} needs {', '.join(missing)} (not installed / not in this tree)")
    blocks = python_blocks(text)
    if not blocks:
        pytest.skip(f"{page.name} has no Python example")
    rel = page.relative_to(ROOT).as_posix()
    script = "".join(f"# --- {rel}, block at line {line} ---\n{code}\n" for line, code in blocks)
    (tmp_path / "docs_example.py").write_text(script, encoding="utf-8")
    env = {
        **os.environ,
        "MPLBACKEND": "Agg",
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    proc = subprocess.run(
        [sys.executable, "docs_example.py"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, f"{rel}: examples failed\n--- script ---\n{script}\n--- stderr ---\n{proc.stderr}"


def test_mkdocs_build_strict(tmp_path: Path) -> None:
    pytest.importorskip("mkdocs")
    pytest.importorskip("mkdocstrings")
    pytest.importorskip("material")
    exe = shutil.which("mkdocs", path=str(Path(sys.executable).parent)) or shutil.which("mkdocs")
    cmd = [exe] if exe else [sys.executable, "-m", "mkdocs"]
    proc = subprocess.run(
        [*cmd, "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    site = tmp_path / "site"
    assert (site / "index.html").is_file()
    api = (site / "api" / "index.html").read_text(encoding="utf-8")
    assert "extract_patch" in api  # generated from the docstrings
    # docstring cross-references in mkdocstrings' syntax render as links to their objects' anchors
    assert api.count('class="autorefs autorefs-internal"') >= 20
    assert 'href="#lazystack.load"' in api
    # long code lines wrap instead of being clipped
    css = (site / "stylesheets" / "extra.css").read_text(encoding="utf-8")
    assert "pre-wrap" in css
    assert "stylesheets/extra.css" in api
    assert not (site / "hooks").exists()  # the build's hook is not published

    # the gallery: pictures and HTML reprs made by the build, not committed
    gallery = (site / "gallery" / "index.html").read_text(encoding="utf-8")
    pngs = sorted(p.name for p in (site / "gallery").glob("*.png"))
    assert pngs == [
        "ome-zarr-levels.png",
        "plate-positions.png",
        "show-composite.png",
        "show-one-channel.png",
        "show-rgb.png",
    ]
    for name in pngs:
        data = (site / "gallery" / name).read_bytes()
        assert data.startswith(b"\x89PNG")
        assert len(data) > 10_000  # a drawn figure, not an empty canvas
        assert f'src="{name}"' in gallery
    assert not list(DOCS.rglob("*.png"))
    assert "GALLERYHTML" not in gallery  # every placeholder was replaced
    assert gallery.count('class="gallery-repr"') == 3
    assert "StackList of 6 stacks" in gallery  # the list's HTML repr
    assert "xr-wrap" in gallery  # xarray's own HTML repr inside the stack's
    assert "well B2" in gallery or "plate.ome.tif@4" in gallery


def _sections(text: str) -> list[tuple[str, str]]:
    """``(heading, body)`` of every ``## `` section (the part before the first is named "")."""
    parts = re.split(r"^## (.*)$", text, flags=re.MULTILINE)
    return [("", parts[0]), *zip(parts[1::2], parts[2::2], strict=True)]


def test_readme_code_lines_fit_without_scrolling() -> None:
    """GitHub shows the README without the site's CSS: its code blocks wrap at 79 columns.

    The "Quick start" section's one-line install commands are left to their own section's owner.
    """
    long = []
    for heading, body in _sections(README.read_text(encoding="utf-8")):
        if heading.lower().startswith("quick start"):
            continue
        for block in re.findall(r"^```[^\n]*\n(.*?)^```", body, flags=re.MULTILINE | re.DOTALL):
            long += [line for line in block.splitlines() if len(line) > 79]
    assert not long, long


# -- every name a page uses exists where the page says ---------------------------------------------------------

README = ROOT / "README.md"
TEXTS = [README, *PAGES]
FROM_IMPORT = re.compile(r"^\s*from\s+(lazystack(?:\.\w+)*)\s+import\s+(\([^)]*\)|[^\n#]+)", re.MULTILINE)
IMPORT = re.compile(r"^\s*import\s+(lazystack(?:\.\w+)+)", re.MULTILINE)
DOTTED = re.compile(r"(?<![\w./-])lazystack(?:\.[A-Za-z_]\w*)+")


def _resolve(dotted: str) -> tuple[Any, str]:
    """Import the longest module prefix of ``dotted`` and follow the rest as attributes.

    Returns the object and the module it was found in; raises LookupError naming what is missing.
    """
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        name = ".".join(parts[:cut])
        try:
            obj: Any = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name is not None and not name.startswith(exc.name) and exc.name != name:
                raise  # the module exists but one of its own imports is missing
            continue
        module = name
        for attr in parts[cut:]:
            if not hasattr(obj, attr):
                msg = f"{dotted}: {module} has no attribute {attr!r}"
                raise LookupError(msg)
            obj = getattr(obj, attr)
        return obj, module
    msg = f"{dotted}: no such module"
    raise LookupError(msg)


def names_used(text: str) -> list[tuple[int, str, str]]:
    """``(line, name, how)`` of every lazystack name in ``text``: imports and dotted references."""
    found = []
    for m in FROM_IMPORT.finditer(text):
        line = text.count("\n", 0, m.start()) + 1
        for item in m.group(2).strip("() \n").split(","):
            name = item.split(" as ")[0].strip()
            if name and name != "*":
                found.append((line, f"{m.group(1)}.{name}", "from-import"))
    for m in IMPORT.finditer(text):
        found.append((text.count("\n", 0, m.start()) + 1, m.group(1), "import"))
    for m in DOTTED.finditer(text):
        line_text = text[text.rfind("\n", 0, m.start()) + 1 : text.find("\n", m.end())]
        if line_text.lstrip().startswith(("from lazystack", "import lazystack")):
            continue  # handled above
        found.append((text.count("\n", 0, m.start()) + 1, m.group(0).rstrip("."), "dotted"))
    return found


def test_names_used_are_found() -> None:
    text = (
        "from lazystack import load, x as y\n```\nfrom lazystack.cli import (\n  main,\n)\n```\n"
        "see `lazystack.api.load`.\n"
    )
    assert [(n, how) for _, n, how in names_used(text)] == [
        ("lazystack.load", "from-import"),
        ("lazystack.x", "from-import"),
        ("lazystack.cli.main", "from-import"),
        ("lazystack.api.load", "dotted"),
    ]
    assert names_used("see lazystack/sources/base.py and pip install lazystack[czi]") == []


@pytest.mark.parametrize("text_file", TEXTS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_lazystack_name_exists_where_the_page_says(text_file: Path) -> None:
    """``from lazystack.x import Y``, ``import lazystack.x`` and ``lazystack.x.Y`` all resolve.

    A page other than the API reference must also use the top-level name of anything
    ``lazystack`` itself exports (``lazystack.load``, not ``lazystack.api.load``), so that
    it stays true when modules move.
    """
    import lazystack

    text = text_file.read_text(encoding="utf-8")
    problems = []
    for line, name, _how in names_used(text):
        if not all(part.isidentifier() for part in name.split(".")):
            problems.append(f"line {line}: cannot parse the import {name!r}")
            continue
        try:
            obj, module = _resolve(name)
        except LookupError as exc:
            problems.append(f"line {line}: {exc}")
            continue
        short = name.rsplit(".", 1)[-1]
        top_level = short in lazystack.__all__ and getattr(lazystack, short) is obj
        if top_level and module != "lazystack" and text_file.name != "api.md":
            problems.append(f"line {line}: {name} is exported by lazystack itself: say lazystack.{short}")
    assert not problems, f"{text_file.relative_to(ROOT)}:\n" + "\n".join(problems)
