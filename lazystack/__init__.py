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

from .core.extensions import provide as _provide

# What type checkers, the docs and the import graph see (``X as X`` marks a name exported, whatever
# the run-time ``__all__``); at run time, __getattr__ imports each name from _MODULES on first use.
if TYPE_CHECKING:
    from .core.axes import VALID_AXES as VALID_AXES
    from .core.axes import AxesModel as AxesModel
    from .core.axes import validate_axes as validate_axes
    from .core.errors import AxesError as AxesError
    from .core.errors import ChannelIndexError as ChannelIndexError
    from .core.errors import LazyStackError as LazyStackError
    from .core.errors import MetadataWarning as MetadataWarning
    from .core.errors import MissingDependencyError as MissingDependencyError
    from .core.errors import PatchError as PatchError
    from .core.errors import SampleIndexError as SampleIndexError
    from .core.errors import SelectionError as SelectionError
    from .core.errors import ShapeMismatchError as ShapeMismatchError
    from .core.errors import SourceFormatError as SourceFormatError
    from .core.errors import SourceNotFoundError as SourceNotFoundError
    from .core.errors import SourceReadError as SourceReadError
    from .core.errors import UnsupportedSourceError as UnsupportedSourceError
    from .core.version import __version__ as __version__
    from .frontends.plot import show as show
    from .frontends.plot import thumbnail as thumbnail
    from .io.cache import chunk_cache_size as chunk_cache_size
    from .io.cache import get_chunk_cache as get_chunk_cache
    from .io.cache import set_chunk_cache_size as set_chunk_cache_size
    from .io.process import set_max_open_files as set_max_open_files
    from .io.reader import Reader as Reader
    from .io.reader import ReaderCapabilities as ReaderCapabilities
    from .loading.auto import load as load
    from .loading.auto import propose_axes as propose_axes
    from .loading.loaders import load_arrays as load_arrays
    from .loading.loaders import load_bioio as load_bioio
    from .loading.loaders import load_custom_file as load_custom_file
    from .loading.loaders import load_czis as load_czis
    from .loading.loaders import load_iter_tiff as load_iter_tiff
    from .loading.loaders import load_tiffs as load_tiffs
    from .loading.loaders import load_zarrs as load_zarrs
    from .loading.stacklist import StackList as StackList
    from .ops.batch import extract_patches as extract_patches
    from .ops.normalize import normalized as normalized
    from .ops.stats import ChannelStatistics as ChannelStatistics
    from .ops.stats import channel_statistics as channel_statistics
    from .ops.writing import PartialOutputWarning as PartialOutputWarning
    from .ops.writing import stale_partial_outputs as stale_partial_outputs
    from .ops.writing import write_ome_zarr as write_ome_zarr
    from .sampling import CoarseForegroundSampler as CoarseForegroundSampler
    from .sampling import FixedSampler as FixedSampler
    from .sampling import ForegroundSampler as ForegroundSampler
    from .sampling import GridSampler as GridSampler
    from .sampling import MaskWeightedSampler as MaskWeightedSampler
    from .sampling import PatchSpec as PatchSpec
    from .sampling import RandomSampler as RandomSampler
    from .sampling import Sampler as Sampler
    from .sampling import Stitcher as Stitcher
    from .sampling import StratifiedSampler as StratifiedSampler
    from .sampling import WholeSampleSampler as WholeSampleSampler
    from .sampling import otsu_threshold as otsu_threshold
    from .sampling import read_manifest as read_manifest
    from .sampling import write_manifest as write_manifest
    from .sources.custom import ReadFunc as ReadFunc
    from .sources.czi_check import check_czi_decodes as check_czi_decodes
    from .sources.zarr.engines import set_zarr_engine as set_zarr_engine
    from .stack import GenericImageStack as GenericImageStack
    from .stack import ImageStack as ImageStack
    from .stack import ImageStackLoader as ImageStackLoader
    from .stack import LazyImageStack as LazyImageStack

#: Public name -> the internal module that defines it (imported on first use).
_MODULES = {
    "core.errors": (
        "AxesError",
        "ChannelIndexError",
        "LazyStackError",
        "MetadataWarning",
        "MissingDependencyError",
        "PatchError",
        "SampleIndexError",
        "SelectionError",
        "ShapeMismatchError",
        "SourceFormatError",
        "SourceNotFoundError",
        "SourceReadError",
        "UnsupportedSourceError",
    ),
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

__all__ = sorted(_LAZY)
