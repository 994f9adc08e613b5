"""lazystack: lazy, Dask-backed access to microscopy image stacks.

A loader turns a source (arrays, TIFF, Zarr / OME-Zarr, CZI, custom files)
and an axes string into a list of :class:`LazyImageStack`. A stack is a view:
``extract_patch`` reads only the region asked for, ``stack.data`` is a dask
array in canonical ``SC(Z)YX`` order and ``stack.xarray`` a labelled one.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from .axes import VALID_AXES, AxesModel, validate_axes
from .errors import (
    AxesError,
    ChannelIndexError,
    LazyStackError,
    MissingDependencyError,
    PatchError,
    SampleIndexError,
    SelectionError,
    ShapeMismatchError,
    SourceFormatError,
    SourceNotFoundError,
    SourceReadError,
    UnsupportedSourceError,
)
from .loaders import (
    load_arrays,
    load_bioio,
    load_custom_file,
    load_czis,
    load_iter_tiff,
    load_tiffs,
    load_zarrs,
)
from .stack import GenericImageStack, ImageStack, ImageStackLoader, LazyImageStack

try:
    __version__ = version("lazystack")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0+unknown"

__all__ = [
    "VALID_AXES",
    "AxesError",
    "AxesModel",
    "ChannelIndexError",
    "GenericImageStack",
    "ImageStack",
    "ImageStackLoader",
    "LazyImageStack",
    "LazyStackError",
    "MissingDependencyError",
    "PatchError",
    "SampleIndexError",
    "SelectionError",
    "ShapeMismatchError",
    "SourceFormatError",
    "SourceNotFoundError",
    "SourceReadError",
    "UnsupportedSourceError",
    "__version__",
    "load_arrays",
    "load_bioio",
    "load_custom_file",
    "load_czis",
    "load_iter_tiff",
    "load_tiffs",
    "load_zarrs",
    "validate_axes",
]
