"""Synthetic sample files for the demo, the documentation and the tests.

They are written with the formats' own writers (here pylibCZIrw) and live
outside ``sources/``, which only reads.
"""

from __future__ import annotations

import itertools
import os
import xml.etree.ElementTree as ET

import numpy as np

from ..core.errors import ShapeMismatchError, SourceFormatError
from ..sources.czi import _import_pyczi

__all__ = ["add_scene_metadata", "write_demo_czi"]


def add_scene_metadata(path: str | os.PathLike[str], names: dict[int, str]) -> None:
    """Record scene names in a CZI written by pylibCZIrw (whose writer leaves them out).

    Parameters
    ----------
    path : path
        A CZI file written by pylibCZIrw.
    names : dict
        CZI scene index -> scene name.
    """
    pyczi = _import_pyczi()
    with pyczi.edit_czi(os.fspath(path)) as editor:
        root = ET.fromstring(editor.read_metadata_xml())
        image = root.find("./Metadata/Information/Image")
        if image is None:
            msg = f"{os.fspath(path)!r} has no Metadata/Information/Image element to record scenes in"
            raise SourceFormatError(msg)
        scenes = _child(_child(_child(image, "Dimensions"), "S"), "Scenes")
        for index, name in sorted(names.items()):
            ET.SubElement(scenes, "Scene", {"Index": str(index), "Name": name})
        _child(image, "SizeS").text = str(len(names))
        with editor.edit_session() as builder:
            builder.set_xml(ET.tostring(root, encoding="unicode"))


def _child(parent: ET.Element, tag: str) -> ET.Element:
    """``parent``'s first ``tag`` element, added when it has none."""
    found = parent.find(tag)
    return ET.SubElement(parent, tag) if found is None else found


def write_demo_czi(path: str | os.PathLike[str], data: np.ndarray) -> None:
    """Write a small two-scene CZI from a ``TCYX`` array (for ``lazystack demo`` and tests).

    Scene 0 holds ``data``; scene 1 holds ``data`` flipped left-right, placed
    to the right of scene 0 in the file's pixel coordinates. Each plane is
    written as tiles of at most 512 x 512 pixels, as microscopes do.

    Parameters
    ----------
    path : path
        The file to create (overwritten if it exists).
    data : numpy.ndarray
        ``TCYX`` array of ``uint8``, ``uint16`` or ``float32``.
    """
    pyczi = _import_pyczi()
    data = np.asarray(data)
    if data.ndim != 4:
        msg = f"write_demo_czi expects a TCYX array (4 dims), got shape {data.shape}"
        raise ShapeMismatchError(msg)
    n_t, n_c, h, w = data.shape
    tile = 512
    with pyczi.create_czi(os.fspath(path), exist_ok=True) as writer:
        for scene, image in enumerate([data, data[..., ::-1]]):
            x_offset = scene * (w + 64)
            for t, c in itertools.product(range(n_t), range(n_c)):
                for y, x in itertools.product(range(0, h, tile), range(0, w, tile)):
                    block = np.ascontiguousarray(image[t, c, y : y + tile, x : x + tile])
                    writer.write(block, plane={"T": t, "C": c}, scene=scene, location=(x_offset + x, y))
        writer.write_metadata(document_name="lazystack demo", channel_names={c: f"ch{c}" for c in range(n_c)})
    add_scene_metadata(path, {0: "left", 1: "right-flipped"})
