"""mkdocs hook: run the gallery page's examples at build time and put their output in the site.

``docs/gallery.md`` is ordinary Markdown whose ```python blocks are the
examples (``tests/test_docs.py`` runs them like every page's). While the site
builds, this hook runs those blocks in order, in one namespace, inside a
temporary folder, and replaces each output marker that follows a block:

- ``<!-- gallery-figure: NAME -->`` saves matplotlib's current figure as
  ``gallery/NAME.png`` (a file generated into the site, nothing is committed)
  and shows it;
- ``<!-- gallery-html: EXPRESSION -->`` evaluates ``EXPRESSION`` and inserts
  its ``_repr_html_()``, the HTML a notebook shows.

An example that fails stops the build with the page's line number.
"""

from __future__ import annotations

import io
import os
import re
import tempfile
from pathlib import Path
from typing import Any

PAGE = "gallery.md"
FENCE = re.compile(r"^```python[^\n]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
MARKER = re.compile(r"^<!--\s*gallery-(figure|html):\s*(.*?)\s*-->[ \t]*$", re.MULTILINE)

_html: dict[str, str] = {}


def _run(text: str) -> tuple[dict[str, bytes], dict[str, str]]:
    """Execute the page's blocks; return the figures (name -> PNG) and the HTML (token -> HTML)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figures: dict[str, bytes] = {}
    html: dict[str, str] = {}
    namespace: dict[str, Any] = {"__name__": "__gallery__"}
    code_blocks = [(m.start(), "code", m) for m in FENCE.finditer(text)]
    markers = [(m.start(), "marker", m) for m in MARKER.finditer(text)]
    items = sorted(code_blocks + markers, key=lambda item: item[0])
    cwd = os.getcwd()
    with tempfile.TemporaryDirectory(prefix="lazystack-gallery-") as tmp:
        os.chdir(tmp)
        try:
            for start, kind, m in items:
                line = text.count("\n", 0, start) + 1
                if kind == "code":
                    code = compile(m.group(1), f"docs/{PAGE}, block at line {line}", "exec")
                    exec(code, namespace)  # the documentation's own examples
                elif m.group(1) == "figure":
                    buffer = io.BytesIO()
                    plt.gcf().savefig(buffer, format="png", dpi=96, bbox_inches="tight")
                    plt.close("all")
                    figures[m.group(2)] = buffer.getvalue()
                else:
                    value = eval(m.group(2), namespace)  # the documentation's own expression
                    html[f"GALLERYHTML{len(html)}"] = value._repr_html_()
        finally:
            os.chdir(cwd)
    return figures, html


def on_files(files: Any, config: Any) -> Any:
    """Run the gallery's examples and add their figures to the site's files."""
    from mkdocs.structure.files import File

    page = Path(config["docs_dir"]) / PAGE
    if not page.is_file():
        return files
    figures, html = _run(page.read_text(encoding="utf-8"))
    _html.clear()
    _html.update(html)
    for name, png in figures.items():
        files.append(File.generated(config, f"gallery/{name}.png", content=png))
    return files


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    """Replace the gallery's output markers by the pictures and placeholders for the HTML."""
    if page.file.src_uri != PAGE:
        return markdown
    tokens = iter(_html)

    def replace(m: re.Match[str]) -> str:
        if m.group(1) == "figure":
            return f"![{m.group(2)}](gallery/{m.group(2)}.png){{ .gallery-figure }}"
        return f"\n{next(tokens)}\n"

    return MARKER.sub(replace, markdown)


def on_page_content(html: str, page: Any, config: Any, files: Any) -> str:
    """Put the HTML reprs in place of their placeholders (after Markdown, which would mangle them)."""
    if page.file.src_uri != PAGE:
        return html
    for token, body in _html.items():
        html = html.replace(f"<p>{token}</p>", f'<div class="gallery-repr">{body}</div>')
    return html
