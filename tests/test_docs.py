"""The documentation: every ```python block runs, and ``mkdocs build --strict`` passes.

Each page's Python blocks are joined, in order, into one script that runs in a
fresh interpreter inside a temporary working directory (so examples that use
worker processes work with any start method). A block preceded by
``<!-- no-test -->`` is skipped; a page holding ``<!-- requires: mod1 mod2 -->``
is skipped (with the reason) when one of those modules cannot be imported.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = sorted(DOCS.rglob("*.md"))

FENCE = re.compile(r"^```python[^\n]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
NO_TEST = re.compile(r"<!--\s*no-test\s*-->\s*$")
REQUIRES = re.compile(r"<!--\s*requires:\s*([^>]*?)\s*-->")


def python_blocks(text: str) -> list[tuple[int, str]]:
    """``(line number, code)`` of every ```python block not marked ``<!-- no-test -->``."""
    blocks = []
    for m in FENCE.finditer(text):
        before = text[: m.start()].rstrip("\n")
        if NO_TEST.search(before.rsplit("\n", 1)[-1]):
            continue
        blocks.append((text.count("\n", 0, m.start()) + 2, m.group(1)))
    return blocks


def requirements(text: str) -> list[str]:
    return [name for m in REQUIRES.finditer(text) for name in m.group(1).split()]


def test_block_extraction() -> None:
    text = "a\n```python\nx = 1\n```\n<!-- no-test -->\n```python\nraise SystemExit\n```\n```bash\nls\n```\n"
    assert python_blocks(text) == [(3, "x = 1\n")]
    assert requirements("<!-- requires: a.b c -->") == ["a.b", "c"]


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
    assert (tmp_path / "site" / "index.html").is_file()
    api = (tmp_path / "site" / "api" / "index.html").read_text(encoding="utf-8")
    assert "extract_patch" in api  # generated from the docstrings
