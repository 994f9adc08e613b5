"""lazystack: lazy, Dask-backed access to microscopy image stacks.

A loader turns a source (arrays, TIFF, Zarr / OME-Zarr, CZI, custom files)
and an axes string into a list of :class:`LazyImageStack`. A stack is a view:
``extract_patch`` reads only the region asked for, ``stack.data`` is a dask
array in canonical ``SC(Z)YX`` order and ``stack.xarray`` a labelled one.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from .core.axes import VALID_AXES, AxesModel, validate_axes
from .core.errors import (
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
from .core.extensions import provide as _provide
from .frontends.plot import show, thumbnail
from .io.cache import chunk_cache_size, get_chunk_cache, set_chunk_cache_size
from .loading.auto import load, propose_axes
from .loading.loaders import (
    load_arrays,
    load_bioio,
    load_custom_file,
    load_czis,
    load_iter_tiff,
    load_tiffs,
    load_zarrs,
)
from .loading.stacklist import StackList
from .ops.batch import extract_patches
from .ops.normalize import normalized
from .ops.stats import ChannelStatistics, channel_statistics
from .ops.writing import write_ome_zarr
from .sources.custom import ReadFunc
from .sources.zarr.engines import set_zarr_engine
from .stack import GenericImageStack, ImageStack, ImageStackLoader, LazyImageStack

# The stack's convenience methods (extract_patches, normalized, show) are
# functions of the layers above it: registered here, looked up by the stack.
_provide("extract_patches", extract_patches)
_provide("normalized", normalized)
_provide("show", show)

try:
    __version__ = version("lazystack")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0+unknown"

__all__ = [
    "VALID_AXES",
    "AxesError",
    "AxesModel",
    "ChannelStatistics",
    "ChannelIndexError",
    "GenericImageStack",
    "ImageStack",
    "ImageStackLoader",
    "LazyImageStack",
    "LazyStackError",
    "MissingDependencyError",
    "PatchError",
    "ReadFunc",
    "SampleIndexError",
    "SelectionError",
    "ShapeMismatchError",
    "SourceFormatError",
    "SourceNotFoundError",
    "SourceReadError",
    "StackList",
    "UnsupportedSourceError",
    "__version__",
    "channel_statistics",
    "chunk_cache_size",
    "extract_patches",
    "get_chunk_cache",
    "load",
    "load_arrays",
    "load_bioio",
    "load_custom_file",
    "load_czis",
    "load_iter_tiff",
    "load_tiffs",
    "load_zarrs",
    "normalized",
    "propose_axes",
    "set_chunk_cache_size",
    "set_zarr_engine",
    "show",
    "thumbnail",
    "validate_axes",
    "write_ome_zarr",
]
