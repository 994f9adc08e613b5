"""How stacks show themselves: summaries, text tables and notebook HTML.

[`stack_summary()`][stack_summary] gathers what a user asks first about a stack (the row
of ``lazystack info``); [`StackList`][StackList] is the list a loader returns, with
a compact one-row-per-stack table as its repr in a terminal and in a
notebook.
"""

from __future__ import annotations

import html
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, SupportsIndex, overload

from ..core.errors import UnsupportedSourceError
from ..core.units import format_sizes
from ..io.handles import local_path, split_source

if TYPE_CHECKING:
    from ..stack import LazyImageStack

__all__ = [
    "StackList",
    "format_bytes",
    "format_table",
    "plate_map",
    "source_disk_bytes",
    "stack_summary",
    "summary_row",
]

#: Columns of the compact table (text and HTML), in order.
COLUMNS = (
    "source",
    "format",
    "original",
    "canonical",
    "dtype",
    "chunks",
    "scene/level",
    "pixel size",
    "channels",
    "memory",
    "disk",
)


def format_bytes(n: int | None) -> str:
    """Human-readable size ([`dask.utils.format_bytes()`][dask.utils.format_bytes]), ``"-"`` for None.

    Examples
    --------
    >>> format_bytes(0), format_bytes(1536), format_bytes(3 * 2**30), format_bytes(None)
    ('0 B', '1.50 kiB', '3.00 GiB', '-')
    """
    from dask.utils import format_bytes as dask_format_bytes

    return "-" if n is None else dask_format_bytes(int(n))


def source_disk_bytes(source: str | os.PathLike[str]) -> int | None:
    """Bytes a local file or directory (a Zarr store) takes on disk, None for remote sources.

    A ``path@N`` (scene / series) and a ``#level=k`` (pyramid level) suffix
    are ignored: the size is the file's. The path is read as the loaders read
    it (`lazystack.io.handles.local_path()`): ``~`` expanded,
    a ``file:`` URL decoded; None for a URL naming no local path.
    """
    try:  # a path (``~`` expanded) or a file: URL as every loader reads it, a stack's own source included
        text = local_path(source, who="source_disk_bytes", selector=True, reading=True)
    except UnsupportedSourceError:  # another host, a query ...: not a local path
        return None
    if text is None:  # a remote URL
        return None
    path = Path(split_source(text)[0])
    if path.is_file():
        return path.stat().st_size
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return None


def stack_summary(stack: LazyImageStack, *, disk_bytes: int | None = None) -> dict[str, Any]:
    """The facts a user asks first about a stack, JSON-able.

    Reads metadata only (and builds no dask array).

    Parameters
    ----------
    stack : LazyImageStack
        The stack.
    disk_bytes : int, optional
        Size of the stack's file or store on disk (see [`source_disk_bytes()`][source_disk_bytes]).

    Returns
    -------
    dict
        ``source``, ``format``, ``original_axes``, ``original_shape``,
        ``canonical_axes``, ``canonical_shape``, ``dtype``, ``chunks``
        (first chunk's shape, canonical order), ``scene``, ``scene_name``,
        ``series``, ``level``, ``well`` and ``field`` (HCS plates), ``physical_pixel_sizes``, ``units`` (axis to
        unit name, for the axes whose unit the source declares), ``channel_names``,
        ``memory_bytes`` and ``disk_bytes``.
    """
    return {
        "source": str(stack.source),
        "format": stack.format,
        "original_axes": stack.original_axes,
        "original_shape": list(stack.original_data_shape),
        "canonical_axes": stack.canonical_axes,
        "canonical_shape": list(stack.data_shape),
        "dtype": str(stack.data_dtype),
        "chunks": list(stack.chunk_shape),  # worked out without building a dask array
        "scene": stack.scene,
        "scene_name": stack.scene_name,
        "series": stack.series,
        "level": stack.level,
        "plate": stack.attrs.get("plate"),
        "well": stack.attrs.get("well"),
        "field": stack.attrs.get("field"),
        "physical_pixel_sizes": {a: float(v) for a, v in stack.physical_pixel_sizes.items()},
        "units": {a: str(u) for a, u in (stack.attrs.get("units") or {}).items() if a in stack.physical_pixel_sizes},
        "channel_names": stack.channel_names,
        "memory_bytes": int(stack.nbytes),
        "disk_bytes": disk_bytes,
    }


def _shape_text(axes: str, shape: Sequence[int]) -> str:
    return f"{axes} {tuple(int(n) for n in shape)}"


def summary_row(summary: Mapping[str, Any]) -> dict[str, str]:
    """Render a [`stack_summary()`][stack_summary] as text cells, one per column of the compact table.

    Returns
    -------
    dict of str to str
        Keys are the column names (``source``, ``format``, ``original`` ...).
    """
    place = []
    if summary.get("scene") is not None:
        name = summary.get("scene_name")
        place.append(f"scene {summary['scene']}" + (f" ({name})" if name else ""))
    if summary.get("series") is not None:
        place.append(f"series {summary['series']}")
    if summary.get("well") is not None:
        place.append(f"well {summary['well']} field {summary.get('field')}")
    if summary.get("level") is not None:
        place.append(f"level {summary['level']}")
    sizes = summary.get("physical_pixel_sizes") or {}
    names = summary.get("channel_names")
    return {
        "source": str(summary["source"]),
        "format": str(summary["format"]),
        "original": _shape_text(summary["original_axes"], summary["original_shape"]),
        "canonical": _shape_text(summary["canonical_axes"], summary["canonical_shape"]),
        "dtype": str(summary["dtype"]),
        "chunks": str(tuple(int(n) for n in summary["chunks"])),
        "scene/level": ", ".join(place) or "-",
        "pixel size": format_sizes(sizes, summary.get("units"), sep="=") or "-",
        "channels": ", ".join(str(n) for n in names) if names else "-",
        "memory": format_bytes(summary.get("memory_bytes")),
        "disk": format_bytes(summary.get("disk_bytes")),
    }


def format_table(rows: Iterable[Mapping[str, str]], columns: Sequence[str] = COLUMNS) -> str:
    """Plain-text table with aligned columns (columns empty in every row are dropped).

    Parameters
    ----------
    rows : iterable of mapping
        One mapping of column name to text per row (see [`summary_row()`][summary_row]).
    columns : sequence of str
        Columns to show, in order.
    """
    rows = list(rows)
    shown = [c for c in columns if any(r.get(c, "-") != "-" for r in rows)] or list(columns)
    table = [list(shown)] + [[str(r.get(c, "-")) for c in shown] for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(shown))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def plate_map(summaries: Iterable[Mapping[str, Any]]) -> str:
    """A text map of the wells of every HCS plate among the summaries: fields per well, ``.`` for none.

    Parameters
    ----------
    summaries : iterable of mapping
        [`stack_summary()`][stack_summary] records (those without ``well`` are ignored).

    Returns
    -------
    str
        One map per plate, or ``""`` when no record is a plate field.

    Examples
    --------
    >>> records = [{"plate": "p", "well": w, "field": f} for w in ("A/1", "A/2", "B/2") for f in (0, 1)]
    >>> print(plate_map(records))
    plate p: 3 wells, fields per well
       1  2
    A  2  2
    B  .  2
    """
    plates: dict[str, dict[tuple[str, str], set[Any]]] = {}
    for r in summaries:
        well = r.get("well")
        if well is None:
            continue
        row, _, column = str(well).partition("/")
        plates.setdefault(str(r.get("plate") or "-"), {}).setdefault((row, column), set()).add(r.get("field"))
    blocks = []
    for name, wells in plates.items():
        rows = sorted({w[0] for w in wells}, key=lambda t: (len(t), t))
        columns = sorted({w[1] for w in wells}, key=lambda t: (not t.isdigit(), int(t) if t.isdigit() else 0, t))
        width = max(len(c) for c in columns + [str(len(f)) for f in wells.values()])
        label = max(len(r) for r in rows)
        lines = [f"plate {name}: {len(wells)} well{'s' if len(wells) != 1 else ''}, fields per well"]
        lines.append(" " * label + "".join("  " + c.rjust(width) for c in columns))
        for row in rows:
            cells = [str(len(wells[(row, c)])) if (row, c) in wells else "." for c in columns]
            lines.append(row.ljust(label) + "".join("  " + v.rjust(width) for v in cells))
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def _html_table(rows: Sequence[Mapping[str, str]], columns: Sequence[str]) -> str:
    left = "style='text-align:left'"
    shown = [c for c in columns if any(r.get(c, "-") != "-" for r in rows)] or list(columns)
    head = "<th>#</th>" + "".join(f"<th {left}>{html.escape(c)}</th>" for c in shown)
    body = "".join(
        f"<tr><td>{i}</td>" + "".join(f"<td {left}>{html.escape(str(r.get(c, '-')))}</td>" for c in shown) + "</tr>"
        for i, r in enumerate(rows)
    )
    return f"<table class='lazystack-table'><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


class StackList(list):  # type: ignore[type-arg,unused-ignore]
    """A list of stacks that shows itself as a compact table, one row per stack.

    It is a plain `list` in every other way (indexing, unpacking,
    ``len`` ...), and its slices, sums and copies are stack lists too:
    loaders return it so that a notebook cell ending in ``load_tiffs(...)``
    (or ``stacks[:3]``) shows a readable table.

    Examples
    --------
    >>> import numpy as np
    >>> from lazystack import load_arrays
    >>> stacks = StackList(load_arrays([np.zeros((2, 8, 8), np.uint8)], "ZYX"))
    >>> print(stacks)
    StackList of 1 stack
    source  format  original       canonical              dtype  chunks           memory
    ------  ------  -------------  ---------------------  -----  ---------------  ------
    array   array   ZYX (2, 8, 8)  SCZYX (1, 1, 2, 8, 8)  uint8  (1, 1, 2, 8, 8)  128 B
    """

    #: Rows shown before the table is cut (the rest is summarised in one line).
    max_rows = 50

    @overload
    def __getitem__(self, index: SupportsIndex) -> Any: ...
    @overload
    def __getitem__(self, index: slice) -> StackList: ...
    def __getitem__(self, index: SupportsIndex | slice) -> Any:
        # a slice stays a StackList (its table and images()), as do the sums and copies below
        got = super().__getitem__(index)
        return StackList(got) if isinstance(index, slice) else got

    def __add__(self, other: Iterable[Any]) -> StackList:
        return StackList([*self, *other])

    def __radd__(self, other: Iterable[Any]) -> StackList:
        return StackList([*other, *self])

    def copy(self) -> StackList:
        """A shallow copy, still a `StackList`.

        Returns
        -------
        StackList
        """
        return StackList(self)

    def images(self) -> list[StackList]:
        """The stacks grouped by image: the levels of one pyramid together, finest first.

        A stack that is not one level of a multiscale image (``level`` None)
        is an image of its own.

        Returns
        -------
        list of StackList
            One list per image, in the order the images first appear.

        Examples
        --------
        >>> import os, tempfile
        >>> import numpy as np
        >>> from lazystack import load_arrays, load_zarrs, write_ome_zarr
        >>> (image,) = load_arrays([np.zeros((64, 64), np.uint8)], "YX")
        >>> path = write_ome_zarr(image, os.path.join(tempfile.mkdtemp(), "x.ome.zarr"), levels=3)
        >>> [[s.level for s in group] for group in load_zarrs(path, "YX").images()]
        [[0, 1, 2]]
        """
        from ..core.levels import group_levels

        return [StackList(group) for group in group_levels(self)]

    def at_level(self, levels: Any = 0) -> StackList:
        """The stacks at the given resolution level(s) (stacks without a pyramid count as level 0).

        Parameters
        ----------
        levels : None, "all", int, sequence of int or str
            As ``levels=`` of [`lazystack.load()`][lazystack.load] (default: full resolution).

        Returns
        -------
        StackList
        """
        from ..core.levels import select_levels

        return StackList(select_levels(self, levels))

    def _rows(self) -> list[dict[str, str]]:
        from ..core.levels import image_key

        disk: dict[str, int | None] = {}
        rows = []
        previous: str | None = None
        for stack in self[: self.max_rows]:
            if not hasattr(stack, "data_shape") or not hasattr(stack, "axes_model"):
                rows.append({"source": repr(stack)})
                previous = None
                continue
            key = str(stack.source)
            if key not in disk:
                disk[key] = source_disk_bytes(key)
            row = summary_row(stack_summary(stack, disk_bytes=disk[key]))
            image = image_key(stack) if stack.level is not None else None
            if image is not None and image == previous:
                # a further level of the image of the row above: shown under it
                row["source"] = "  └ " + (key[len(image) :].lstrip("/") if key.startswith(image) else key)
            rows.append(row)
            previous = image
        return rows

    def _title(self) -> str:
        n = len(self)
        title = f"StackList of {n} stack{'s' if n != 1 else ''}"
        if any(getattr(s, "level", None) is not None for s in self):
            groups = self.images()
            pyramids = sum(1 for g in groups if len(g) > 1)
            if pyramids:
                title += f" ({len(groups)} image{'s' if len(groups) != 1 else ''}, levels of one image grouped)"
        return title

    def __repr__(self) -> str:
        if not self:
            return "StackList of 0 stacks"
        more = len(self) - self.max_rows
        tail = f"\n... and {more} more" if more > 0 else ""
        return f"{self._title()}\n{format_table(self._rows())}{tail}"

    __str__ = __repr__

    def _repr_html_(self) -> str:
        more = len(self) - self.max_rows
        tail = f"<p>... and {more} more</p>" if more > 0 else ""
        table = _html_table(self._rows(), COLUMNS) if self else ""
        return f"<div class='lazystack-list'><b>{html.escape(self._title())}</b>{table}{tail}</div>"
