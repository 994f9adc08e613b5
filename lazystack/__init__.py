"""lazystack: lazy, Dask-backed access to microscopy image stacks.

A loader turns a source (arrays, TIFF, Zarr / OME-Zarr, CZI, custom files)
and an axes string into a list of [`LazyImageStack`][LazyImageStack]. A stack is a view:
``extract_patch`` reads only the region asked for, ``stack.data`` is a dask
array in canonical ``SC(Z)YX`` order and ``stack.xarray`` a labelled one.

The names in ``__all__`` are the public API; the subpackages (``core``,
``io``, ``sources``, ``loading``, ``ops``, ``frontends``) are internal and may
change. ``import lazystack`` is cheap: each name is imported on first use
(Scientific Python's SPEC 1), so dask.array, xarray, pandas, zarr and
tifffile load only when something needs them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .core.errors import (
    AxesError,
    ChannelIndexError,
    LazyStackError,
    MetadataWarning,
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

if TYPE_CHECKING:  # what type checkers (and the import graph) see; at run time, __getattr__ below
    from .core.axes import VALID_AXES, AxesModel, validate_axes
    from .core.version import __version__
    from .frontends.plot import show, thumbnail
    from .io.cache import chunk_cache_size, get_chunk_cache, set_chunk_cache_size
    from .io.process import set_max_open_files
    from .io.reader import Reader, ReaderCapabilities
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
    from .ops.writing import PartialOutputWarning, stale_partial_outputs, write_ome_zarr
    from .sampling import (
        CoarseForegroundSampler,
        FixedSampler,
        ForegroundSampler,
        GridSampler,
        MaskWeightedSampler,
        PatchSpec,
        RandomSampler,
        Sampler,
        Stitcher,
        StratifiedSampler,
        WholeSampleSampler,
        otsu_threshold,
        read_manifest,
        write_manifest,
    )
    from .sources.custom import ReadFunc
    from .sources.czi_check import check_czi_decodes
    from .sources.zarr.engines import set_zarr_engine
    from .stack import GenericImageStack, ImageStack, ImageStackLoader, LazyImageStack

#: Public name -> the internal module that defines it (imported on first use).
_MODULES = {
    "core.version": ("__version__",),
    "core.axes": ("VALID_AXES", "AxesModel", "validate_axes"),
    "frontends.plot": ("show", "thumbnail"),
    "io.cache": ("chunk_cache_size", "get_chunk_cache", "set_chunk_cache_size"),
    "io.process": ("set_max_open_files",),
    "io.reader": ("Reader", "ReaderCapabilities"),
    "loading.auto": ("load", "propose_axes"),
    "loading.loaders": (
        "load_arrays",
        "load_bioio",
        "load_custom_file",
        "load_czis",
        "load_iter_tiff",
        "load_tiffs",
        "load_zarrs",
    ),
    "loading.stacklist": ("StackList",),
    "ops.batch": ("extract_patches",),
    "ops.normalize": ("normalized",),
    "ops.stats": ("ChannelStatistics", "channel_statistics"),
    "ops.writing": ("write_ome_zarr", "PartialOutputWarning", "stale_partial_outputs"),
    "sources.czi_check": ("check_czi_decodes",),
    "sampling": (
        "CoarseForegroundSampler",
        "FixedSampler",
        "ForegroundSampler",
        "GridSampler",
        "MaskWeightedSampler",
        "PatchSpec",
        "RandomSampler",
        "Sampler",
        "Stitcher",
        "StratifiedSampler",
        "WholeSampleSampler",
        "otsu_threshold",
        "read_manifest",
        "write_manifest",
    ),
    "sources.custom": ("ReadFunc",),
    "sources.zarr.engines": ("set_zarr_engine",),
    "stack": ("GenericImageStack", "ImageStack", "ImageStackLoader", "LazyImageStack"),
}
_LAZY = {name: module for module, names in _MODULES.items() for name in names}

#: Internal subpackages, importable as attributes (``lazystack.sources`` ...).
_SUBMODULES = frozenset({"core", "frontends", "io", "loading", "ops", "sampling", "sources", "stack", "torch"})


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is not None:
        value = getattr(importlib.import_module(f".{module}", __name__), name)
        globals()[name] = value  # later look-ups skip this function
        return value
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    msg = f"module {__name__!r} has no attribute {name!r}"
    raise AttributeError(msg)


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY, *_SUBMODULES})


# The stack's convenience methods are functions of the layers above it: the
# stack (which imports no operation) looks them up in core.extensions, where
# they are registered here, importing their modules only when first called.
for _method in ("extract_patches", "normalized", "show"):
    _provide(_method, lambda *args, _name=_method, **kwargs: __getattr__(_name)(*args, **kwargs))
del _method

__all__ = [
    "VALID_AXES",
    "AxesError",
    "AxesModel",
    "ChannelIndexError",
    "ChannelStatistics",
    "CoarseForegroundSampler",
    "FixedSampler",
    "ForegroundSampler",
    "GenericImageStack",
    "GridSampler",
    "ImageStack",
    "ImageStackLoader",
    "LazyImageStack",
    "LazyStackError",
    "MaskWeightedSampler",
    "MetadataWarning",
    "MissingDependencyError",
    "PatchError",
    "PatchSpec",
    "RandomSampler",
    "ReadFunc",
    "PartialOutputWarning",
    "Reader",
    "ReaderCapabilities",
    "SampleIndexError",
    "Sampler",
    "SelectionError",
    "ShapeMismatchError",
    "SourceFormatError",
    "SourceNotFoundError",
    "SourceReadError",
    "StackList",
    "Stitcher",
    "StratifiedSampler",
    "UnsupportedSourceError",
    "WholeSampleSampler",
    "__version__",
    "channel_statistics",
    "check_czi_decodes",
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
    "otsu_threshold",
    "propose_axes",
    "read_manifest",
    "set_chunk_cache_size",
    "set_max_open_files",
    "set_zarr_engine",
    "show",
    "stale_partial_outputs",
    "thumbnail",
    "validate_axes",
    "write_manifest",
    "write_ome_zarr",
]
