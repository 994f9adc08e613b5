"""What an interrupted overwrite by ``write_ome_zarr`` leaves beside its target, for the readers' messages.

An overwrite moves the previous store into a hidden ``.name.old-<id>`` folder
beside the target (the store as ``store``, with a writer marker), renames the
new store in, and only then removes the folder. A writer killed between the
two renames leaves no target: opening it must say where the previous data is,
not only that it is missing. The names live here, below both the writer (ops)
and the readers (sources), which must not import the writer.
"""

from __future__ import annotations

import glob
import os
from pathlib import Path

from .handles import system_path

__all__ = ["OLD_STORE", "WRITER_MARKER", "interrupted_overwrite", "interrupted_overwrite_note"]

#: Marker file inside a writer's hidden folder: who is writing it (host, process id, start time).
WRITER_MARKER = ".lazystack-writer.json"

#: Name of the previous store inside a ``.name.old-<id>`` folder.
OLD_STORE = "store"


def interrupted_overwrite(path: str | os.PathLike[str]) -> tuple[Path, Path] | None:
    """The target and the previous store an interrupted overwrite left aside, for ``path`` or a missing ancestor.

    Parameters
    ----------
    path : str or os.PathLike
        A local path that could not be opened (a store, or a node inside one).
        A ``..`` is resolved as the system resolves it
        ([`system_path()`][lazystack.io.handles.system_path]).

    Returns
    -------
    tuple of Path or None
        ``(target, previous store)``: ``target`` is ``path`` or the missing
        ancestor an overwrite was writing, and the previous store is the
        ``store`` folder of a ``.target.old-<id>`` folder with a writer
        marker beside it. None when there is no such folder.
    """
    try:
        here = Path(system_path(os.fspath(path)))  # `link/..` is the parent of the link's target, as opened
    except (TypeError, ValueError):
        return None
    for target in (here, *here.parents):
        if target != here and target.exists():  # an existing store: any folder beside it is a removal cut short
            return None
        if not target.name or not target.parent.is_dir():
            continue
        for folder in sorted(target.parent.glob(f".{glob.escape(target.name)}.old-*")):
            if (folder / WRITER_MARKER).is_file() and (folder / OLD_STORE).is_dir():
                return target, folder / OLD_STORE
    return None


def interrupted_overwrite_note(path: str | os.PathLike[str]) -> str:
    """A sentence to add to a not-found or format error of ``path``: where an interrupted overwrite left the data.

    Parameters
    ----------
    path : str or os.PathLike
        The local path that could not be opened.

    Returns
    -------
    str
        ``""`` when no interrupted overwrite of ``path`` (or of a missing
        ancestor) is found, else a sentence starting with ``"; "``.
    """
    found = interrupted_overwrite(path)
    if found is None:
        return ""
    target, store = found
    return (
        f"; an overwrite of {str(target)!r} by write_ome_zarr was interrupted and left the previous data in "
        f"{str(store)!r}: the next write_ome_zarr to {str(target)!r} moves it back first (once it can tell the "
        f"interrupted writer is gone), or move it back by hand (rename {str(store)!r} to {str(target)!r})"
    )
