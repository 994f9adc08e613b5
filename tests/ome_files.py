"""Multi-file OME-TIFFs for the tests: one Z stack whose planes are spread over several files."""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
import tifffile


def write_multifile_ome(
    folder: Path, files: int | list[str] = 3, planes: int = 2, shape: tuple[int, int] = (32, 48)
) -> np.ndarray:
    """Write ``files`` (a count: ``m_0.ome.tif`` ...; or names relative to ``folder``) of ``planes`` planes each.

    Every file's OME-XML lists all of them, as Bio-Formats writes them; the first is the master file.
    Returns the ``ZYX`` uint16 data the set holds.
    """
    names = [f"m_{k}.ome.tif" for k in range(files)] if isinstance(files, int) else files
    data = np.arange(len(names) * planes * shape[0] * shape[1], dtype=np.uint16).reshape(-1, *shape)
    uuids = [f"urn:uuid:{uuid.uuid4()}" for _ in names]
    tiffdata = "".join(
        f'<TiffData FirstZ="{k * planes}" IFD="0" PlaneCount="{planes}"><UUID FileName="{name}">{uuids[k]}</UUID>'
        "</TiffData>"
        for k, name in enumerate(names)
    )
    for k, name in enumerate(names):
        xml = (
            '<?xml version="1.0" encoding="UTF-8"?>'
            f'<OME xmlns="http://www.openmicroscopy.org/Schemas/OME/2016-06" UUID="{uuids[k]}">'
            '<Image ID="Image:0"><Pixels ID="Pixels:0" DimensionOrder="XYZCT" Type="uint16" '
            f'SizeX="{shape[1]}" SizeY="{shape[0]}" SizeZ="{planes * len(names)}" SizeC="1" SizeT="1">'
            f'<Channel ID="Channel:0:0" SamplesPerPixel="1"/>{tiffdata}</Pixels></Image></OME>'
        )
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        tifffile.imwrite(folder / name, data[k * planes : (k + 1) * planes], description=xml, metadata=None)
    return data
