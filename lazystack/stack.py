"""The image-stack protocol and lazystack's one concrete lazy stack class.

[`LazyImageStack`][LazyImageStack] wraps one *reader* (the contract of
`lazystack.io.reader`) over the source's original axes. It knows the
axes model and nothing about formats: every loader returns it. Every read
takes one path: a cache-only read (``read_cached``), else a region read in
the stored dtype (``read_region``); the ``float32`` patch is made here.
"""

from __future__ import annotations

import html
import math
import operator
from collections.abc import Callable, Mapping, Sequence
from functools import cached_property
from typing import TYPE_CHECKING, Any, NamedTuple, ParamSpec, Protocol, TypeVar, runtime_checkable

import numpy as np
from numpy.typing import DTypeLike, NDArray

from .core.axes import AxesModel
from .core.errors import (
    ChannelIndexError,
    SelectionError,
    ShapeMismatchError,
    SourceFormatError,
    UnsupportedSourceError,
)
from .core.extensions import provided
from .core.patch import MAX_PATCH_BYTES, patch_geometry
from .core.units import format_sizes
from .io.reader import Reader, as_reader, dask_chunks, read_numpy, reader_token

if TYPE_CHECKING:
    import dask.array
    import xarray

__all__ = ["GenericImageStack", "ImageStack", "ImageStackLoader", "LazyImageStack", "PatchPlan"]


@runtime_checkable
class ImageStack(Protocol):
    """An image stack as CAREamics' patching code sees it (structural type).

    Shapes are in the canonical order ``SC(Z)YX`` unless named *original*.
    """

    @property
    def source(self) -> Any:
        """What wholly determines the data: a path, a URI, ``"array"`` ..."""

    @property
    def data_shape(self) -> Sequence[int]:
        """Shape in canonical ``SC(Z)YX`` order."""

    @property
    def data_dtype(self) -> DTypeLike:
        """Dtype of the stored data."""

    @property
    def original_axes(self) -> str:
        """Axes of the source as the user described them."""

    @property
    def original_data_shape(self) -> Sequence[int]:
        """Shape of the source in [`original_axes`][original_axes] order."""

    def extract_patch(
        self,
        sample_idx: int,
        channels: Sequence[int] | None,
        coords: Sequence[int],
        patch_size: Sequence[int],
    ) -> NDArray[Any]:
        """Return a ``float32`` patch in ``C(Z)YX`` order, zero outside the image."""


GenericImageStack = TypeVar("GenericImageStack", bound=ImageStack, covariant=True)
"""Type variable for the stack type a loader returns."""

P = ParamSpec("P")


class ImageStackLoader(Protocol[P, GenericImageStack]):
    """A callable turning a source and an axes string into image stacks.

    Extra arguments decide *how* data is loaded, never *what*: the same
    arguments serve an input source and a target source.
    """

    def __call__(self, source: Any, axes: str, *args: P.args, **kwargs: P.kwargs) -> Sequence[GenericImageStack]:
        """Load ``source`` described by ``axes`` into a sequence of stacks."""


Selection = tuple[int | range, ...]


#: Containers of ``coords`` / ``patch_size`` the fast patch path takes (others go the general path).
_SEQUENCES = (tuple, list, np.ndarray)


class _FastPlan(NamedTuple):
    """Precomputed per view for [`LazyImageStack._extract_inside()`][LazyImageStack._extract_inside]."""

    template: list[slice]  # a key over the root axes, every channel selected
    s_pos: int | None  # positions of S, T and the spatial axes in that key
    t_pos: int | None
    spatial_pos: tuple[int, ...]
    spatial_shape: tuple[int, ...]
    n_t: int
    n_samples: int
    perm: tuple[int, ...] | None  # root axes -> STC(Z)YX, None when already in that order
    n_channels: int
    read_region: Callable[[tuple[slice, ...]], np.ndarray]  # the reader's methods (io/reader.py), bound once
    read_cached: Callable[[tuple[slice, ...]], np.ndarray | None]
    read_float32: Callable[[tuple[slice, ...]], np.ndarray | None]


class PatchPlan(NamedTuple):
    """What one patch request reads ([`LazyImageStack.plan_patch()`][LazyImageStack.plan_patch]).

    Attributes
    ----------
    region : tuple of slice or None
        Step-1 slices in the reader's (root) axes, inside the bounds; None
        when the patch lies wholly outside the image (it is all zeros).
    size : list of int or None
        The patch's spatial size when the patch is exactly ``region`` cast
        to ``float32`` (every channel, wholly inside an identity view):
        [`LazyImageStack.patch_from_region()`][LazyImageStack.patch_from_region] makes it. None otherwise.
    """

    region: tuple[slice, ...] | None
    size: list[int] | None


class LazyImageStack:
    """A lazy view of an image source, in original and canonical ``SC(Z)YX`` axes.

    Creating a stack reads nothing but metadata. ``extract_patch`` reads
    only the region a patch overlaps, straight from the chunk reader (never
    through the dask scheduler); [`data`][data] and [`xarray`][xarray] are dask-backed
    views whose chunks are whole numbers of the source's own chunks, merged
    to about dask's ``array.chunk-size`` (so the number of tasks depends on
    the data's size, not on how finely the source is chunked).

    Stacks are normally made by a loader ([`lazystack.load_arrays()`][lazystack.load_arrays],
    [`lazystack.load_tiffs()`][lazystack.load_tiffs] ...), not directly.

    Parameters
    ----------
    reader : Reader or array-like
        Reader over the source's original axes (`lazystack.io.reader`),
        or anything with ``shape``, ``dtype`` and ``__getitem__`` (numpy,
        dask, zarr, h5py arrays, ``np.memmap``), adapted here once into an
        `ArrayReader`.
    axes : str
        Axes of ``reader`` (letters of ``STCZYX``, ``Y`` and ``X`` required).
    source : str, optional
        What wholly determines the data (path, URI, ``"array"``).
    format : str, optional
        Name of the format (``"array"``, ``"tiff"``, ``"zarr"`` ...).
    coords : mapping, optional
        Coordinates per original axis letter (1-D, one value per index),
        e.g. channel names for ``"C"``.
    attrs : mapping, optional
        Metadata: ``physical_pixel_sizes`` (dict axis -> size), ``scene``,
        ``scene_name``, ``level``, ``series`` ... Three keys name the
        source's real dimensions in [`original_axes`][original_axes] (a CZI's, as
        CAREamics does): ``sample_dims`` (a string) and ``sample_shape`` (their
        sizes, whose product is the size of ``S``) replace a whole ``S`` axis
        by the dimensions merged into it, outer to inner; ``depth_axis``
        names the dimension in the ``Z`` slot.

    Raises
    ------
    UnsupportedSourceError
        If ``reader`` is not array-like.
    SourceFormatError
        If ``reader.dtype`` is not bool, integer or floating point (complex
        data included: patches are ``float32``, and a silent cast would drop
        the imaginary part).
    AxesError, ShapeMismatchError
        If ``axes`` is invalid or does not match ``reader.shape``, or a
        coordinate does not have one value per index of its axis.
    """

    def __init__(
        self,
        reader: Any,
        axes: str,
        *,
        source: Any = "array",
        format: str = "array",  # noqa: A002 - the natural name for users
        coords: Mapping[str, Any] | None = None,
        attrs: Mapping[str, Any] | None = None,
    ) -> None:
        adapted = as_reader(reader)
        if adapted is None:
            msg = (
                f"cannot make a stack from {type(reader).__name__!r} (source {source!r}): "
                "expected an array-like with shape, dtype and __getitem__ "
                "(numpy, dask, zarr, h5py arrays, np.memmap ...)"
            )
            raise UnsupportedSourceError(msg)
        reader = adapted
        check_image_dtype(reader.dtype, source, format)
        root = AxesModel(axes, tuple(reader.shape))
        self._reader: Reader = reader
        self._root = root
        self._source = source
        self._format = format
        self._attrs: dict[str, Any] = dict(attrs or {})
        self._coords = {a.upper(): np.asarray(v) for a, v in (coords or {}).items() if a.upper() in root.axes}
        for a, values in self._coords.items():
            if values.shape != (root.size(a),):
                msg = (
                    f"coords[{a!r}] of stack {source!r} has shape {values.shape}; axis {a!r} of axes {root.axes!r} "
                    f"has {root.size(a)} entries: give one value per index (shape ({root.size(a)},))"
                )
                raise ShapeMismatchError(msg)
        self._token = reader_token(reader)
        self._selection: Selection = tuple(range(n) for n in root.shape)
        self._set_view()

    # -- construction helpers ------------------------------------------------
    def _set_view(self) -> None:
        view_axes = "".join(a for a, s in zip(self._root.axes, self._selection, strict=True) if isinstance(s, range))
        view_shape = tuple(len(s) for s in self._selection if isinstance(s, range))
        model = AxesModel(view_axes, view_shape)
        self._model = model
        self._identity = all(isinstance(s, range) and s.step == 1 for s in self._selection) and (
            view_shape == self._root.shape
        )
        self._memory: np.ndarray | None = None
        # precomputed once per view: extract_patch runs tens of thousands of times
        self._key_plan: tuple[str | int, ...] = tuple(
            a if a in "STC" else model.spatial_axes.index(a) for a in view_axes
        )
        remaining = "".join(a for a in view_axes if a not in "ST")
        perm = model.patch_permutation(remaining)
        self._patch_perm: tuple[int, ...] | None = None if perm == tuple(range(len(perm))) else perm
        self._patch_has_c = "C" in remaining
        self._all_channels = list(range(model.n_channels))
        self._fast = self._fast_plan()

    def _fast_plan(self) -> _FastPlan | None:
        """What the fast path of [`extract_patch()`][extract_patch] needs, for an identity view (else None)."""
        if not self._identity:
            return None
        model = self._model
        if math.prod(model.spatial_shape) * 4 > MAX_PATCH_BYTES:  # a patch inside it may not fit: checked path only
            return None
        axes = model.axes
        order = [axes.index(a) for a in "STCZYX" if a in axes]
        reader = self._reader
        return _FastPlan(
            template=[slice(0, model.n_channels) if a == "C" else slice(None) for a in axes],
            s_pos=axes.index("S") if "S" in axes else None,
            t_pos=axes.index("T") if "T" in axes else None,
            spatial_pos=tuple(axes.index(a) for a in model.spatial_axes),
            spatial_shape=model.spatial_shape,
            n_t=model.size("T"),
            n_samples=model.n_samples,
            perm=None if order == list(range(len(axes))) else tuple(order),
            n_channels=model.n_channels,
            read_region=reader.read_region,
            read_cached=reader.read_cached,
            read_float32=reader.read_float32,
        )

    def _extract_inside(self, sample_idx: Any, coords: Any, patch_size: Any) -> NDArray[np.float32] | None:
        """[`extract_patch()`][extract_patch] with every channel for a patch wholly inside the image, else None.

        The common request of a training loop, served with the least work:
        one key, one read, one cast. Anything unusual (a view, a channel
        list, a patch that leaves the image, a bad argument) returns None and
        takes the general path, which validates and reports errors.
        """
        plan = self._inside_region(sample_idx, coords, patch_size)
        if plan is None:
            return None
        region, size = plan
        fast = self._fast
        assert fast is not None
        # the one read path (see _read_region), inlined: a call saved on every patch
        block = fast.read_cached(region)
        if block is None:  # not all in memory: read it
            as_f32 = fast.read_float32(region)
            if as_f32 is not None:  # a new float32 array: the patch itself, no copy
                return self._finish_inside(as_f32, size, fresh=True)
            block = fast.read_region(region)
        return self._finish_inside(block, size)

    def _read_region(self, region: tuple[slice, ...]) -> np.ndarray:
        """Read a region of the reader (step-1 slices inside the bounds): from the cache alone, else from the source."""
        reader = self._reader
        block = reader.read_cached(region)
        return reader.read_region(region) if block is None else block

    def _inside_region(
        self, sample_idx: Any, coords: Any, patch_size: Any
    ) -> tuple[tuple[slice, ...], list[int]] | None:
        """The reader region and patch size of a fast-path request (see [`_extract_inside()`][_extract_inside]),
        else None."""
        fast = self._fast
        if fast is None or self._memory is not None:
            return None
        if type(sample_idx) is not int:
            if not isinstance(sample_idx, np.integer):
                return None
            sample_idx = int(sample_idx)
        if type(coords) not in _SEQUENCES or type(patch_size) not in _SEQUENCES:
            return None
        template, s_pos, t_pos, spatial_pos, shape, n_t, n_samples = fast[:7]
        if not 0 <= sample_idx < n_samples or len(coords) != len(shape) or len(patch_size) != len(shape):
            return None
        key = list(template)
        size = []
        for pos, c, n, extent in zip(spatial_pos, coords, patch_size, shape, strict=True):
            if type(c) is not int:
                if not isinstance(c, np.integer):
                    return None
                c = int(c)
            if type(n) is not int:
                if not isinstance(n, np.integer):
                    return None
                n = int(n)
            if c < 0 or n <= 0 or c + n > extent:
                return None
            key[pos] = slice(c, c + n)
            size.append(n)
        s, t = divmod(sample_idx, n_t)
        if s_pos is not None:
            key[s_pos] = slice(s, s + 1)
        if t_pos is not None:
            key[t_pos] = slice(t, t + 1)
        return tuple(key), size

    def _finish_inside(self, block: np.ndarray, size: list[int], *, fresh: bool = False) -> NDArray[np.float32] | None:
        """The ``float32`` ``C(Z)YX`` patch from the block read for [`_inside_region()`][_inside_region] (None:
        wrong shape).

        ``fresh``: ``block`` is a new array nobody else holds, returned as the
        patch itself when it is already ``float32`` in the right layout (else
        it may be a view of a source or a cached chunk, and is always copied).
        """
        fast = self._fast
        assert fast is not None
        if fast.perm is not None:
            block = block.transpose(fast.perm)
        n_c = fast.n_channels
        if block.size != n_c * math.prod(size):
            return None  # a reader that returned the wrong shape: the general path reports it
        return block.reshape((n_c, *size)).astype(np.float32, order="C", copy=not fresh)

    def _derive(self, selection: Selection, reader: Reader | None = None) -> LazyImageStack:
        new = object.__new__(LazyImageStack)
        new.__dict__.update(self.__dict__)
        new._selection = selection
        if reader is not None:
            new._reader = reader
            new.__dict__.pop("_root_dask", None)
        new._set_view()
        return new

    # -- pickling: the recipe, never an open handle or cached data -------------
    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_memory"] = None
        state.pop("_root_dask", None)
        state["_fast"] = None  # holds a method of the reader: rebuilt on arrival
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._fast = self._fast_plan()

    # -- the protocol ----------------------------------------------------------
    @property
    def source(self) -> Any:
        """What wholly determines the data (path, URI, ``"array"``)."""
        return self._source

    @property
    def format(self) -> str:
        """Name of the source format (``"array"``, ``"tiff"``, ``"zarr"`` ...)."""
        return self._format

    @property
    def data_shape(self) -> tuple[int, ...]:
        """Shape in canonical ``SC(Z)YX`` order."""
        return self._model.canonical_shape

    @property
    def data_dtype(self) -> np.dtype[Any]:
        """Dtype of the stored data (patches are float32)."""
        return np.dtype(self._reader.dtype)

    @property
    def original_axes(self) -> str:
        """Axes of this stack (of the view, for a view) in the source's order.

        These are the letters of [`axes_model`][axes_model] unless the source names
        its real dimensions (a CZI: ``S`` replaced by the dimensions merged
        into it, the ``Z`` slot named by the depth axis, as CAREamics
        reports them; see `lazystack.sources.czi`). A view that keeps
        part of ``S`` shows it as ``S``.
        """
        return self._named()[0]

    @property
    def original_data_shape(self) -> tuple[int, ...]:
        """Shape in [`original_axes`][original_axes] order."""
        return self._named()[1]

    def _merged(self) -> tuple[str, tuple[int, ...]] | None:
        """The source dimensions merged into the root's ``S`` and their sizes (``attrs``), else None."""
        dims, shape = self._attrs.get("sample_dims"), self._attrs.get("sample_shape")
        if not dims or shape is None or "S" not in self._root.axes or len(dims) != len(shape):
            return None
        shape = tuple(int(n) for n in shape)
        return (dims, shape) if math.prod(shape) == self._root.size("S") else None

    def _named(self) -> tuple[str, tuple[int, ...]]:
        """[`original_axes`][original_axes] and [`original_data_shape`][original_data_shape]: the model's, with the
        source's dimension names.

        ``S`` is replaced by the merged dimensions when the view keeps all of
        it, or when at most one of them has a size above 1 (``S`` then is
        that dimension, and a view's part of it is a part of that dimension).
        """
        model = self._model
        merged, depth = self._merged(), self._attrs.get("depth_axis")
        if merged is None and not depth:
            return model.axes, model.shape
        axes: list[str] = []
        shape: list[int] = []
        for a, n in zip(model.axes, model.shape, strict=True):
            if a == "S" and merged is not None:
                dims, sizes = merged
                big = [i for i, k in enumerate(sizes) if k > 1]
                if self._selection[self._root.axes.index("S")] == range(self._root.size("S")):
                    axes.extend(dims)
                    shape.extend(sizes)
                    continue
                if len(big) == 1:
                    axes.extend(dims)
                    shape.extend(n if i == big[0] else 1 for i in range(len(dims)))
                    continue
            axes.append(depth if a == "Z" and depth else a)
            shape.append(n)
        return "".join(axes), tuple(shape)

    def _model_axis(self, name: str) -> str:
        """The letter of [`axes_model`][axes_model] that [`isel()`][isel] selects for an
        [`original_axes`][original_axes] name.

        Of the dimensions merged into ``S``, the one above size 1 (the first
        when all have size 1) stands for ``S``; when several are above size 1
        only ``S`` itself selects samples.
        """
        merged, depth = self._merged(), self._attrs.get("depth_axis")
        if depth and name == depth:
            return "Z"
        if merged is not None:
            dims, sizes = merged
            big = [d for d, k in zip(dims, sizes, strict=True) if k > 1]
            stands_for_s = big[0] if len(big) == 1 else (dims[0] if not big else None)
            if name == stands_for_s:
                return "S"
            if name in dims:
                how = "isel(S=...)" if stands_for_s is None else f"isel({stands_for_s}=...)"
                msg = (
                    f"cannot select on {name!r} alone: the dimensions {dims!r} (sizes {sizes}) are merged into the "
                    f"sample axis S (a sample index is the C-order index over them, {dims[0]} outermost); "
                    f"select samples with {how}"
                )
                raise SelectionError(msg)
            if name == "S" and stands_for_s is not None and "S" not in self.original_axes:
                return "?"  # S goes by the name of the dimension that stands for it
        if name == "Z" and depth and depth != "Z":
            return "?"  # the Z slot is named by the depth: Z itself is not an axis of this stack
        return name

    @property
    def axes_model(self) -> AxesModel:
        """The [`AxesModel`][lazystack.AxesModel] of this stack (view)."""
        return self._model

    @property
    def canonical_axes(self) -> str:
        """``"SCZYX"`` or ``"SCYX"``."""
        return self._model.canonical_axes

    @property
    def n_samples(self) -> int:
        """Number of samples (``S`` times ``T``)."""
        return self._model.n_samples

    @property
    def n_channels(self) -> int:
        """Number of channels."""
        return self._model.n_channels

    @property
    def attrs(self) -> dict[str, Any]:
        """Metadata from the source (a copy)."""
        return dict(self._attrs)

    @property
    def physical_pixel_sizes(self) -> dict[str, float]:
        """Physical size of a pixel per spatial axis the source declares (may be empty).

        A strided view (``isel(X=slice(0, None, 2))``) has pixels ``step`` times
        as far apart: its sizes are the source's times the step, as its
        [`coords`][lazystack.LazyImageStack.coords] are. An axis a view keeps
        one pixel of has no spacing: its size is the source's, whatever the
        step that selected it.
        """
        sizes = self._attrs.get("physical_pixel_sizes") or {}
        steps = {a: s.step for a, s in zip(self._root.axes, self._selection, strict=True) if isinstance(s, range)}
        return {a: float(v) * steps.get(a, 1) for a, v in sizes.items() if a in self._model.axes}

    @property
    def spatial_selection(self) -> dict[str, tuple[int, int]]:
        """Where the view's pixels lie in the source: ``(start, step)`` per spatial axis (``Z``, ``Y``, ``X``).

        Pixel ``i`` of the view along an axis is pixel ``start + i * step`` of
        the source; a stack that is no view has ``(0, 1)`` on every axis. The
        keys are those of [`physical_pixel_sizes`][lazystack.LazyImageStack.physical_pixel_sizes].

        Examples
        --------
        >>> import numpy as np
        >>> from lazystack import LazyImageStack
        >>> stack = LazyImageStack(np.zeros((64, 48), np.uint8), "YX")
        >>> stack.isel(Y=slice(10, None, 4), X=slice(5, 20)).spatial_selection
        {'Y': (10, 4), 'X': (5, 1)}
        """
        return {
            a: (s.start, s.step)
            for a, s in zip(self._root.axes, self._selection, strict=True)
            if a in "ZYX" and isinstance(s, range)
        }

    @property
    def channel_names(self) -> list[str] | None:
        """Channel names, when the source declares them."""
        names = self.coords.get("C")
        return None if names is None else [str(c) for c in names]

    @property
    def scene(self) -> int | None:
        """Scene index (CZI) or None."""
        return self._attrs.get("scene")

    @property
    def scene_name(self) -> str | None:
        """Scene name as the file gives it, or None."""
        return self._attrs.get("scene_name")

    @property
    def level(self) -> int | None:
        """Multiscale level (OME-Zarr) or None."""
        return self._attrs.get("level")

    @property
    def series(self) -> int | None:
        """Image series (TIFF) or None."""
        return self._attrs.get("series")

    @property
    def reader(self) -> Reader:
        """The reader over the source's original (unviewed) axes (see `lazystack.io.reader`)."""
        return self._reader

    @property
    def nbytes(self) -> int:
        """Size of this stack's data in memory, in bytes."""
        return int(np.prod(self._model.shape, dtype=np.int64)) * self.data_dtype.itemsize

    # -- patches ----------------------------------------------------------------
    def _channel_list(self, channels: Sequence[int] | int | None) -> list[int]:
        n = self._model.n_channels
        if channels is None:
            return list(range(n))
        if isinstance(channels, (int, np.integer)) and not isinstance(channels, bool):
            channels = [int(channels)]
        try:
            chans = [operator.index(c) for c in channels]  # type: ignore[union-attr]
        except TypeError:
            msg = f"channels must be None or a sequence of integers in range({n}), got {channels!r}"
            raise ChannelIndexError(msg) from None
        if any(isinstance(c, (bool, np.bool_)) for c in channels):  # type: ignore[union-attr]
            # operator.index(True) is 1: a mask [True, False, True] would read channels 1, 0, 1 (CAREamics'
            # numpy indexing reads 0 and 2), so a boolean is refused rather than read as either
            msg = (
                f"channels must be channel indices in range({n}), got {list(channels)!r} (booleans): "  # type: ignore[arg-type]
                "for a mask, pass numpy.flatnonzero(mask)"
            )
            raise ChannelIndexError(msg)
        if not chans:
            msg = f"channels must not be empty: give None for all {n} channel(s) or indices in range({n})"
            raise ChannelIndexError(msg)
        bad = [c for c in chans if not 0 <= c < n]
        if bad:
            msg = (
                f"channel index {bad[0]} is out of range: the stack {self._source!r} has {n} channel(s); "
                f"accepted indices are 0 to {n - 1}"
            )
            raise ChannelIndexError(msg)
        return chans

    def extract_patch(
        self,
        sample_idx: int,
        channels: Sequence[int] | None,
        coords: Sequence[int],
        patch_size: Sequence[int],
    ) -> NDArray[np.float32]:
        """Read one patch as ``float32`` in ``C(Z)YX`` order.

        Only the region the patch overlaps is read, straight from the source.
        Where the patch leaves the image (negative ``coords``, overhang, or
        entirely outside) it is zero.

        Parameters
        ----------
        sample_idx : int
            Canonical sample index, in ``range(n_samples)``.
        channels : sequence of int or None
            Channels to read, in the order wanted; None means all. Booleans
            are refused (pass ``numpy.flatnonzero(mask)`` for a mask).
        coords : sequence of int
            Top-left corner of the patch in the spatial dims (``(Z)YX``).
        patch_size : sequence of int
            Size of the patch in the spatial dims, all positive.

        Returns
        -------
        numpy.ndarray
            ``float32`` array of shape ``(n_channels_requested, *patch_size)``:
            the stored values cast by numpy, so integers above ``2**24`` (``uint32``,
            ``int64``) lose precision and ``float64`` values beyond ``float32``'s
            range become ``inf``, as in CAREamics.

        Raises
        ------
        SampleIndexError
            If ``sample_idx`` is out of range.
        ChannelIndexError
            If a channel index is out of range, or a boolean.
        PatchError
            If ``coords`` / ``patch_size`` do not match the spatial dims or a
            size is not positive.
        """
        if channels is None:
            fast = self._extract_inside(sample_idx, coords, patch_size)
            if fast is not None:
                return fast
        model = self._model
        geometry = patch_geometry(coords, patch_size, model.spatial_shape, model.spatial_axes)
        chans = self._all_channels if channels is None else self._channel_list(channels)
        s, t = model.sample_to_st(sample_idx)  # validates before anything is allocated
        if geometry.empty:
            return np.zeros((len(chans), *geometry.patch_size), dtype=np.float32)
        lo, hi = min(chans), max(chans) + 1
        by_role: dict[str, int | slice] = {"S": s, "T": t, "C": slice(lo, hi)}
        block = self._read(tuple(by_role[k] if isinstance(k, str) else geometry.source[k] for k in self._key_plan))
        if self._patch_perm is not None:
            block = block.transpose(self._patch_perm)
        if not self._patch_has_c:
            block = block[np.newaxis]
        if not (hi - lo == len(chans) and chans[0] == lo and (len(chans) < 3 or chans == list(range(lo, hi)))):
            block = block[[c - lo for c in chans]]
        if block.shape[1:] == geometry.patch_size:  # inside the image: one cast, no zero fill
            return block.astype(np.float32, order="C")
        out = np.zeros((len(chans), *geometry.patch_size), dtype=np.float32)
        out[(slice(None), *geometry.target)] = block
        return out

    def read(self, key: tuple[int | slice, ...]) -> np.ndarray:
        """Read a region of this stack (view) in [`axes_model`][axes_model] order, in the stored dtype.

        From memory after [`load()`][load], else from the reader.

        Parameters
        ----------
        key : tuple of int or slice
            One ``int`` or ``slice`` per axis of [`axes_model`][axes_model], as
            numpy's basic indexing takes them (negative ints count from the
            end, slice bounds may be omitted or outside the axis, steps may be
            given); an int drops its axis.

        Returns
        -------
        numpy.ndarray
            May be a read-only view of cached data: copy it before writing.

        Raises
        ------
        SelectionError
            A key of another length than the axes, an int outside its axis, a
            step of zero or below, or an index that is neither int nor slice.
        """
        key = self._normalised_key(key)
        if all(not isinstance(k, slice) or k.step is None for k in key):
            return self._read(key)
        # a strided slice: read its span with step 1, then take every step-th element
        span = tuple(
            k
            if not isinstance(k, slice) or k.step is None
            else slice(
                k.start,
                k.start + 1 + (len(range(k.start, k.stop, k.step)) - 1) * k.step if k.stop > k.start else k.start,
            )
            for k in key
        )
        return self._read(span)[tuple(slice(None, None, k.step) for k in key if isinstance(k, slice))]

    def _normalised_key(self, key: tuple[int | slice, ...]) -> tuple[int | slice, ...]:
        """``key`` with every int inside its axis and every slice of explicit bounds (numpy's rules)."""
        shape = self._model.shape
        if not isinstance(key, tuple) or len(key) != len(shape):
            raise SelectionError(
                f"read key {key!r}: expected a tuple of {len(shape)} ints or slices, one per axis of "
                f"{self._model.axes!r} (shape {tuple(shape)})"
            )
        out: list[int | slice] = []
        for axis, k, n in zip(self._model.axes, key, shape, strict=True):
            if isinstance(k, slice):
                if k.step is not None and (isinstance(k.step, bool) or operator.index(k.step) <= 0):
                    raise SelectionError(f"read key {key!r}: axis {axis!r} has step {k.step!r}; steps must be >= 1")
                start, stop, step = k.indices(n)
                out.append(slice(start, max(start, stop), step if step != 1 else None))
            elif isinstance(k, (int, np.integer)) and not isinstance(k, (bool, np.bool_)):
                i = int(k)
                if not -n <= i < n:
                    raise SelectionError(f"read key {key!r}: index {i} is outside axis {axis!r} of size {n}")
                out.append(i % n)
            else:
                raise SelectionError(f"read key {key!r}: axis {axis!r} takes an int or a slice, not {k!r}")
        return tuple(out)

    def _read(self, key: tuple[int | slice, ...]) -> np.ndarray:
        """[`read()`][read] of a key already inside the bounds (step-1 or strided slices of explicit bounds)."""
        if self._memory is not None:
            return self._memory[key]
        root_key, stride = (key, None) if self._identity else self._compose(key)
        region = tuple(k if isinstance(k, slice) else slice(k, k + 1) for k in root_key)
        out = self._read_region(region)
        if len(region) != sum(isinstance(k, slice) for k in root_key):  # drop the axes given as ints
            out = out.reshape(tuple(n for n, k in zip(out.shape, root_key, strict=True) if isinstance(k, slice)))
        return out[stride] if stride is not None else out

    @staticmethod
    def _as_slice(r: range) -> slice:
        return slice(r.start, r.start + len(r) * r.step, r.step)

    def _compose(self, key: tuple[int | slice, ...]) -> tuple[tuple[int | slice, ...], tuple[slice, ...] | None]:
        """Map a key in view axes to a step-1 key in root axes plus a stride to apply after reading."""
        root_key: list[int | slice] = []
        stride: list[slice] = []
        strided = False
        it = iter(key)
        for sel in self._selection:
            if isinstance(sel, int):
                root_key.append(sel)
                continue
            k = next(it)
            if isinstance(k, slice):
                r = sel[k]
                if r.step != 1 and len(r) > 1:
                    strided = True
                    root_key.append(slice(r.start, r[-1] + 1))
                    stride.append(slice(None, None, r.step))
                else:
                    root_key.append(slice(r.start, r.start + len(r)))
                    stride.append(slice(None))
            else:
                root_key.append(sel[k])
        return tuple(root_key), (tuple(stride) if strided else None)

    # -- the public surface batched extraction (lazystack.ops.batch) works through ----------
    def plan_patch(
        self,
        sample_idx: int,
        channels: Sequence[int] | None,
        coords: Sequence[int],
        patch_size: Sequence[int],
    ) -> PatchPlan:
        """The reader region one [`extract_patch()`][extract_patch] request reads, validated as it validates it.

        Parameters
        ----------
        sample_idx, channels, coords, patch_size
            As for [`extract_patch()`][extract_patch].

        Returns
        -------
        PatchPlan
            The region in the reader's (root) axes, and the patch size when
            the patch is exactly that region as ``float32``.

        Raises
        ------
        SampleIndexError, ChannelIndexError, PatchError
            As [`extract_patch()`][extract_patch] raises them.
        """
        if channels is None:
            inside = self._inside_region(sample_idx, coords, patch_size)
            if inside is not None:
                return PatchPlan(*inside)
        model = self._model
        geometry = patch_geometry(coords, patch_size, model.spatial_shape, model.spatial_axes)
        chans = self._channel_list(channels)
        model.sample_to_st(sample_idx)
        if geometry.empty:
            return PatchPlan(None, None)
        key = model.original_key(sample_idx, slice(min(chans), max(chans) + 1), geometry.source)
        root_key = key if self._identity else self._compose(key)[0]
        return PatchPlan(tuple(k if isinstance(k, slice) else slice(k, k + 1) for k in root_key), None)

    def patch_from_region(self, block: np.ndarray, size: Sequence[int]) -> NDArray[np.float32] | None:
        """The patch of a `PatchPlan` with a ``size``, from its region's data (None: wrong size).

        Parameters
        ----------
        block : numpy.ndarray
            The plan's region as read (a *new* array: a ``float32`` one in
            ``C(Z)YX`` order is returned as the patch itself).
        size : sequence of int
            The plan's ``size``.

        Returns
        -------
        numpy.ndarray or None
            The ``float32`` ``C(Z)YX`` patch, as [`extract_patch()`][extract_patch]
            returns it.
        """
        return self._finish_inside(block, list(size), fresh=True)

    def with_reader(self, reader: Reader) -> LazyImageStack:
        """The same stack (view) reading through another reader of the same data.

        Batched extraction serves a batch's patches through readers holding
        chunks it already fetched.

        Parameters
        ----------
        reader : Reader
            Over the same (root) axes, shape and dtype as `reader`.

        Returns
        -------
        LazyImageStack

        Raises
        ------
        ShapeMismatchError
            If ``reader``'s shape differs from `reader`'s.
        """
        if tuple(reader.shape) != self._root.shape:
            msg = f"with_reader: the reader's shape {tuple(reader.shape)} is not the stack's {self._root.shape}"
            raise ShapeMismatchError(msg)
        return self._derive(self._selection, reader)

    def extract_patches(
        self, requests: Sequence[tuple[int, Sequence[int] | None, Sequence[int], Sequence[int]]]
    ) -> list[NDArray[np.float32]]:
        """Extract a batch of patches, reading each touched chunk once.

        Parameters
        ----------
        requests : sequence of tuple
            ``(sample_idx, channels, coords, patch_size)`` per patch, as for
            [`extract_patch()`][extract_patch].

        Returns
        -------
        list of numpy.ndarray
            The same arrays as one [`extract_patch()`][extract_patch] call per request.

        Notes
        -----
        [`lazystack.extract_patches()`][lazystack.extract_patches] (the operations layer) does the
        work, for patches of several stacks too; see
        `lazystack.core.extensions` for how the method reaches it.
        """
        return provided("extract_patches")([(self, *r) for r in requests])

    def normalized(self, stats: Any, **options: Any) -> LazyImageStack:
        """A lazy view whose patches and dask array are normalised per channel.

        Parameters
        ----------
        stats : ChannelStatistics
            From [`lazystack.channel_statistics()`][lazystack.channel_statistics].
        **options
            Passed to [`lazystack.normalized()`][lazystack.normalized] (``method=`` ...).

        Returns
        -------
        LazyImageStack
            A float32 stack; nothing is computed until read.

        Notes
        -----
        The same as ``lazystack.normalized(stack, stats, **options)`` (the
        operations layer; see `lazystack.core.extensions`).
        """
        return provided("normalized")(self, stats, **options)

    def show(
        self,
        sample: int = 0,
        channel: int | str | Sequence[int | str] | None = None,
        z: int | None = None,
        *,
        max_size: int = 512,
        use_levels: bool = True,
        ax: Any = None,
        cmap: str = "gray",
        robust: bool = True,
        colorbar: bool = True,
        rgb: bool | None = None,
        colors: Sequence[Any] | None = None,
        scalebar: bool | str = True,
        ticks: str = "pixels",
        **imshow_kwargs: Any,
    ) -> Any:
        """Draw one plane with matplotlib (the ``plot`` extra): [`lazystack.show()`][lazystack.show] of this stack.

        Only that plane is read, for the channels shown, at most ``max_size``
        pixels a side. One channel is drawn with ``cmap``; several (a list or
        ``"all"``) are blended additively in ``colors``; RGB(A) pixels are
        shown in true colour. A scale bar is drawn when the stack has a
        physical pixel size along X with a unit.

        Parameters
        ----------
        sample : int
            Canonical sample index.
        channel : int, str, sequence or "all", optional
            A channel index or name; a list of them, or ``"all"``, for a
            composite. Default: every channel of an RGB(A) stack, else channel 0.
        z : int, optional
            Z plane (default: the middle one) for stacks with ``Z``.
        max_size : int
            Largest number of pixels read along Y or X.
        use_levels : bool
            Read a coarser level of an OME-Zarr pyramid when there is one.
        ax : matplotlib.axes.Axes, optional
            Where to draw (default: a new figure).
        cmap : str
            Colour map of one channel.
        robust : bool
            Stretch each channel's contrast between its 2nd and 98th
            percentiles instead of its minimum and maximum (unless ``vmin`` /
            ``vmax`` are given).
        colorbar : bool
            Add a colour bar (one channel) or a legend of the channels' colours (a composite).
        rgb : bool, optional
            Show 3 or 4 channels as RGB(A) samples (True) or as a composite
            (False); default: when they are RGB(A) (names ending in R, G, B
            (A), colour samples declared by the source, or unnamed ``uint8``).
        colors : sequence, optional
            A matplotlib colour per channel of a composite; default: red,
            lime, blue for channels named R, G, B, else magenta, lime, cyan,
            yellow, red, blue in turn.
        scalebar : bool or str
            Draw a scale bar (``True``: lower right), none (``False``), or at
            a matplotlib location name (``"upper left"`` ...).
        ticks : {"pixels", "physical"}
            Axis ticks in pixels of the full-resolution plane, or at the
            stack's physical positions (needs pixel sizes along Y and X).
        **imshow_kwargs
            Passed to `matplotlib.axes.Axes.imshow()`; for a composite,
            ``vmin`` / ``vmax`` may be one number or one per channel.

        Returns
        -------
        matplotlib.axes.Axes
            The axes drawn on (its figure is ``ax.figure``).

        Notes
        -----
        The same as ``lazystack.show(stack, ...)`` (the front-end layer; see
        `lazystack.core.extensions`), which documents the colour and scale-bar rules in full.
        """
        return provided("show")(
            self,
            sample,
            channel,
            z,
            max_size=max_size,
            use_levels=use_levels,
            ax=ax,
            cmap=cmap,
            robust=robust,
            colorbar=colorbar,
            rgb=rgb,
            colors=colors,
            scalebar=scalebar,
            ticks=ticks,
            **imshow_kwargs,
        )

    # -- views --------------------------------------------------------------------
    def isel(self, **indexers: int | slice) -> LazyImageStack:
        """Select a view by original axis name (no data is read).

        Parameters
        ----------
        **indexers : int or slice
            One keyword per axis of [`original_axes`][original_axes] (either case). An
            int drops the axis; a slice (positive step) keeps it. Of the
            dimensions a CZI merges into ``S``, the one above size 1 selects
            samples by its name; when several are above size 1, ``S`` does.

        Returns
        -------
        LazyImageStack
            A view; views compose, and a view's ``original_axes``,
            ``original_data_shape`` and ``data_shape`` describe the view.

        Raises
        ------
        SelectionError
            For an axis the stack does not have, an index out of range, an
            empty or reversed slice, or an int on ``Y`` / ``X``.

        Examples
        --------
        >>> import numpy as np
        >>> from lazystack import load_arrays
        >>> (stack,) = load_arrays([np.zeros((4, 3, 32, 32))], "TCYX")
        >>> stack.isel(T=slice(1, 3), C=0).original_axes
        'TYX'
        """
        axes = self._model.axes
        names = [self._model_axis(name.upper()) for name in indexers]
        dup = next((a for a in names if names.count(a) > 1), None)
        if dup is not None:
            msg = f"isel got axis {dup!r} more than once ({list(indexers)}); give each axis once"
            raise SelectionError(msg)
        view_pos = [i for i, s in enumerate(self._selection) if isinstance(s, range)]
        selection = list(self._selection)
        for (name, idx), axis in zip(indexers.items(), names, strict=True):
            if axis not in axes:
                shown = self.original_axes
                msg = f"cannot select on axis {name!r}: the stack has axes {shown!r} (select with one of {list(shown)})"
                raise SelectionError(msg)
            pos = view_pos[axes.index(axis)]
            current = selection[pos]
            assert isinstance(current, range)  # invariant: view axes hold ranges
            n = len(current)
            if isinstance(idx, slice):
                if idx.step is not None and operator.index(idx.step) <= 0:
                    msg = f"isel({axis}={idx!r}): only positive slice steps are supported"
                    raise SelectionError(msg)
                new = current[idx]
                if len(new) == 0:
                    msg = f"isel({axis}={idx!r}) selects nothing from an axis of size {n}"
                    raise SelectionError(msg)
                if len(new) == 1:  # one pixel has no spacing: the source's pixel size, coords and scale
                    new = range(new.start, new.start + 1)
                selection[pos] = new
            elif isinstance(idx, (int, np.integer)) and not isinstance(idx, bool):
                if axis in "YX":
                    msg = f"isel({axis}={idx}): cannot drop spatial axis {axis!r}; a stack needs Y and X, use a slice"
                    raise SelectionError(msg)
                if not -n <= int(idx) < n:
                    msg = f"isel({axis}={idx}) is out of range for axis {axis!r} of size {n}; accepted: {-n} to {n - 1}"
                    raise SelectionError(msg)
                selection[pos] = current[int(idx)]
            else:
                msg = f"isel({axis}={idx!r}): expected an int or a slice"
                raise SelectionError(msg)
        return self._derive(tuple(selection))

    # -- dask / xarray / numpy ------------------------------------------------------
    @cached_property
    def _root_chunks(self) -> tuple[tuple[int, ...], ...]:
        """dask chunks over the root axes: the reader's chunks merged to dask's ``array.chunk-size``.

        Worked out from the chunk sizes alone (no dask array is built), once
        per stack. ``S`` is never merged when ``T`` is present: the canonical
        view reshapes ``(S, T)`` into one axis, which needs ``S`` in chunks of 1.
        """
        own = self._reader.as_dask()
        if own is not None:  # a dask array keeps its own graph, and so its own chunks
            return tuple(tuple(int(n) for n in c) for c in own.chunks)
        axes = self._root.axes
        return dask_chunks(self._reader, unit_axes=(axes.index("S"),) if "S" in axes and "T" in axes else ())

    @cached_property
    def _root_dask(self) -> dask.array.Array:
        """The dask array over the root axes (the reader's own, else one chunk read per merged chunk)."""
        import dask.array as da

        own = self._reader.as_dask()
        if own is not None:
            return own
        # fancy=True lets dask fuse a slice of the array into the chunk read (it does not for
        # fancy=False), so a small slice of a big merged chunk reads only the slice
        return da.from_array(
            _SlicingReader(self._reader),
            chunks=self._root_chunks,
            name=f"lazystack-{self._token}",
            meta=np.empty((0,) * len(self._root.shape), dtype=self.data_dtype),
            asarray=True,
            fancy=True,
            lock=False,
        )

    def _view_dask(self) -> dask.array.Array:
        if self._memory is not None:
            import dask.array as da

            return da.from_array(self._memory, chunks=self.original_chunks, name=False)
        x = self._root_dask
        if self._identity:
            return x
        return x[tuple(s if isinstance(s, int) else self._as_slice(s) for s in self._selection)]

    @property
    def original_chunks(self) -> tuple[tuple[int, ...], ...]:
        """dask chunks of this stack (view) in the order of [`axes_model`][lazystack.LazyImageStack.axes_model].

        Worked out without building a dask array, the same as dask's own
        slicing of the root array: per root chunk, the number of selected
        indices in it (chunks left empty are dropped).
        """
        out = []
        for sizes, sel in zip(self._root_chunks, self._selection, strict=True):
            if isinstance(sel, int):
                continue
            if sel.step == 1 and sel.start == 0 and len(sel) == sum(sizes):
                out.append(sizes)
                continue
            bounds = np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)])
            lo = np.maximum(bounds[:-1], sel.start)
            hi = np.minimum(bounds[1:], sel.start + len(sel) * sel.step)
            # indices start + k*step in [lo, hi): ceil((hi - start)/step) - ceil((lo - start)/step)
            counts = -((sel.start - hi) // sel.step) - (-((sel.start - lo) // sel.step))
            counts = np.where(hi > lo, counts, 0)
            picked = tuple(int(c) for c in counts if c > 0)
            out.append(picked or (0,))
        return tuple(out)

    @property
    def chunk_shape(self) -> tuple[int, ...]:
        """Shape of the first dask chunk of [`data`][data] (canonical order), without building it.

        What ``repr``, `lazystack.loading.stacklist.stack_summary()` and
        ``lazystack info`` show: a chunk is a whole number of the source's
        own chunks (pages, tiles) of about dask's ``array.chunk-size``.
        """
        return tuple(c[0] if c else 0 for c in self.chunks)

    @property
    def chunks(self) -> tuple[tuple[int, ...], ...]:
        """dask chunks of [`data`][data] (canonical order), worked out without building it."""
        by_axis = dict(zip(self._model.axes, self.original_chunks, strict=True))
        if "T" in by_axis:  # S and T merge into one axis: T's chunks once per S index
            by_axis["S"] = by_axis.pop("T") * self._model.size("S")
        return tuple(by_axis.get(a, (1,)) for a in self._model.canonical_axes)

    @property
    def data(self) -> dask.array.Array:
        """dask array in canonical ``SC(Z)YX`` order.

        Its chunks group the source's own chunks (pages, tiles, zarr chunks)
        up to dask's ``array.chunk-size`` (``dask.config.set({"array.chunk-size": "32 MiB"})``
        before the array is first built); see `lazystack.io.reader.dask_chunks()`.
        """
        import dask.array as da
        from dask.base import tokenize

        # one read per chunk straight in canonical order (no transpose / reshape layers), so dask
        # fuses a slice of the array into the read: a small slice reads only itself
        return da.from_array(
            _SlicingReader(_CanonicalRegions(self)),
            chunks=self.chunks,
            name=f"lazystack-canonical-{tokenize(self._token, self._selection, self._memory is not None)}",
            meta=np.empty((0,) * len(self._model.canonical_axes), dtype=self.data_dtype),
            asarray=True,
            fancy=True,
            lock=False,
        )

    @property
    def token(self) -> str:
        """Names this stack's (view's) data without hashing it: the reader's token and the view's selection."""
        return f"{self._token}:{self._selection!r}"

    @property
    def coords(self) -> dict[str, np.ndarray]:
        """Coordinates of the view per original axis (channel names, physical positions).

        A spatial axis with a physical pixel size gets positions ``index * size + translation``
        (the OME-Zarr ``scale`` and ``translation``), in the unit of ``attrs["units"]`` when declared.
        """
        coords: dict[str, np.ndarray] = {}
        sizes = self._attrs.get("physical_pixel_sizes") or {}
        offsets = self._attrs.get("translation") or {}
        for axis, sel in zip(self._root.axes, self._selection, strict=True):
            if isinstance(sel, int):
                continue
            if axis in self._coords:
                coords[axis] = self._coords[axis][self._as_slice(sel)]
            elif axis in sizes and axis in "ZYX":
                position = np.arange(sel.start, sel.stop, sel.step, dtype=np.float64) * float(sizes[axis])
                coords[axis] = position + float(offsets.get(axis, 0.0))
        return coords

    @property
    def xarray(self) -> xarray.DataArray:
        """dask-backed `xarray.DataArray` with dims = [`original_axes`][original_axes]."""
        import xarray as xr

        attrs = {
            "source": str(self._source),
            "format": self._format,
            **{k: v for k, v in self._attrs.items() if v is not None},
        }
        if attrs.get("physical_pixel_sizes"):  # a strided view's, as its coords below
            attrs["physical_pixel_sizes"] = self.physical_pixel_sizes
        axes, shape = self._named()
        depth = self._attrs.get("depth_axis") or "Z"
        units = self._attrs.get("units") or {}
        sizes = self._attrs.get("physical_pixel_sizes") or {}
        coords: dict[str, Any] = {}
        for a, v in self.coords.items():
            if a == "S" and "S" not in axes:
                continue
            name = depth if a == "Z" else a
            # physical positions carry their unit (CF / pint convention: a "units" attribute)
            physical = a in units and a in sizes and a not in self._coords
            coords[name] = ((name,), v, {"units": str(units[a])}) if physical else v
        data = self._view_dask()
        return xr.DataArray(
            data if shape == data.shape else data.reshape(shape),
            dims=tuple(axes),
            coords=coords,
            attrs=attrs,
            name=short_name(self._source),
        )

    def compute(self) -> np.ndarray:
        """Read the whole stack (view) into a numpy array in canonical order."""
        data = self._memory if self._memory is not None else self._read_all()
        out = np.asarray(self._model.to_canonical(data))
        # never hand out a view of cached chunks or of the loaded copy
        return out.copy() if (not out.flags.writeable or data is self._memory) else out

    def _read_all(self) -> np.ndarray:
        key = tuple(slice(0, n) for n in self._model.shape)
        return self._read(key)

    # -- memory and handles ----------------------------------------------------------
    def load(self) -> LazyImageStack:
        """Read this stack's data into memory and keep it until [`close()`][close].

        Returns
        -------
        LazyImageStack
            ``self``, for chaining.
        """
        if self._memory is None:
            data = self._read_all()
            # a read-only result is a view of a cached chunk or a memory map: hold a copy of its own
            self._memory = data if data.flags.writeable else data.copy()
        return self

    @property
    def is_loaded(self) -> bool:
        """Whether the data is held in memory (after [`load()`][load])."""
        return self._memory is not None

    def close(self) -> None:
        """Drop data held in memory and close the source's open handles.

        The stack stays usable: it reopens its source lazily when read again.
        """
        self._memory = None
        self.__dict__.pop("_root_dask", None)
        self._reader.close()

    def __enter__(self) -> LazyImageStack:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- display ------------------------------------------------------------------------
    def _facts(self) -> list[tuple[str, str]]:
        m = self._model
        facts = [
            ("source", str(self._source)),
            ("format", self._format),
            ("original", f"{self.original_axes} {self.original_data_shape}"),
            ("canonical", f"{m.canonical_axes} {m.canonical_shape}"),
            ("dtype", str(self.data_dtype)),
            ("chunks", str(tuple(c[0] if c else 0 for c in self.original_chunks))),
        ]
        if not self._identity:
            facts.append(("view of", f"{self._root.axes} {self._root.shape}"))
        for key in ("scene", "scene_name", "series", "level"):
            if self._attrs.get(key) is not None:
                facts.append((key, str(self._attrs[key])))
        if self.physical_pixel_sizes:
            facts.append(("pixel size", format_sizes(self.physical_pixel_sizes, self._attrs.get("units"))))
        if self.channel_names:
            facts.append(("channels", ", ".join(self.channel_names)))
        if self.is_loaded:
            facts.append(("loaded", "in memory"))
        return facts

    def __repr__(self) -> str:
        body = "\n".join(f"  {k + ':':<12}{v}" for k, v in self._facts())
        return f"<LazyImageStack\n{body}>"

    def _repr_html_(self) -> str:
        cell = "style='text-align:left'"
        rows = "".join(
            f"<tr><th {cell}>{html.escape(k)}</th><td {cell}>{html.escape(v)}</td></tr>" for k, v in self._facts()
        )
        try:
            body = self.xarray._repr_html_()
        except Exception:  # pragma: no cover - the table alone still informs
            body = ""
        return f"<div class='lazystack'><b>LazyImageStack</b><table>{rows}</table>{body}</div>"


class _CanonicalRegions:
    """A stack (view) read in canonical ``SC(Z)YX`` order: ints and step-1 slices per canonical axis."""

    def __init__(self, stack: LazyImageStack) -> None:
        self.stack = stack
        model = stack.axes_model
        self.shape = model.canonical_shape
        self.dtype = stack.data_dtype
        self.ndim = len(self.shape)

    def __getitem__(self, key: tuple[int | slice, ...]) -> np.ndarray:
        stack = self.stack
        model = stack.axes_model
        axes = model.axes
        n_t = model.size("T")
        spans = [range(k, k + 1) if isinstance(k, int) else range(k.start, k.stop) for k in key]
        s_span, c_span, *spatial = spans
        parts = []
        # the canonical sample axis is S x T: read each S index's run of T at once
        s_runs: list[tuple[int, range]] = []
        for i in s_span:
            s, t = divmod(i, n_t)
            if s_runs and s_runs[-1][0] == s and s_runs[-1][1].stop == t:
                s_runs[-1] = (s, range(s_runs[-1][1].start, t + 1))
            else:
                s_runs.append((s, range(t, t + 1)))
        by_role = {"C": c_span, **dict(zip(model.spatial_axes, spatial, strict=True))}
        order = [axes.index(a) for a in "STCZYX" if a in axes]
        for s, t_run in s_runs:
            spans_view = {**by_role, "S": range(s, s + 1), "T": t_run}
            view_key = tuple(slice(spans_view[a].start, spans_view[a].stop) for a in axes)
            block = np.asarray(stack.read(view_key)).transpose(order)
            parts.append(block.reshape((len(t_run), len(c_span), *(len(r) for r in spatial))))
        out = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=0)
        drop = tuple(0 if isinstance(k, int) else slice(None) for k in key)
        return out[drop]


class _SlicingReader:
    """What dask reads a stack's chunks through: any numpy basic/outer key over a chunk reader.

    dask fuses a slice of a chunk into the chunk's read, so keys may carry
    steps, negative indices or integer lists; the reader is asked for the
    bounding step-1 region only (its contract) and the rest is applied to
    the result in numpy.
    """

    def __init__(self, reader: Any) -> None:
        self.reader = reader
        self.shape = tuple(int(n) for n in reader.shape)
        self.dtype = np.dtype(reader.dtype)
        self.ndim = len(self.shape)

    def __getitem__(self, key: Any) -> np.ndarray:
        if not isinstance(key, tuple):
            key = (key,)
        key = (*key, *(slice(None),) * (self.ndim - len(key)))
        region: list[int | slice] = []
        after: list[Any] = []  # per kept axis: what to apply to the step-1 region read
        out_shape: list[int] = []
        for k, n in zip(key, self.shape, strict=True):
            if isinstance(k, (int, np.integer)):
                region.append(operator.index(k) % n)
                continue
            if isinstance(k, slice):
                r = range(*k.indices(n))
                lo = min(r[0], r[-1]) if len(r) else 0
                region.append(slice(lo, lo + (abs(r[-1] - r[0]) + 1 if len(r) else 0)))
                after.append(slice(None) if r.step == 1 else slice(r[0] - lo if len(r) else 0, None, r.step))
                out_shape.append(len(r))
            else:  # an integer list / array: outer indexing, one axis at a time
                idx = np.asarray(k, dtype=np.int64).reshape(-1) % max(n, 1)
                lo = int(idx.min()) if idx.size else 0
                region.append(slice(lo, int(idx.max()) + 1 if idx.size else 0))
                after.append(idx - lo)
                out_shape.append(int(idx.size))
        if 0 in out_shape:
            return np.empty(out_shape, dtype=self.dtype)
        out = read_numpy(self.reader, tuple(region))
        strided = False
        for axis, sel in enumerate(after):
            if not (isinstance(sel, slice) and sel == slice(None)):
                out = out[(slice(None),) * axis + (sel,)]
                strided |= isinstance(sel, slice)
        # a strided view would keep the whole region read alive until dask concatenates the chunks:
        # a thumbnail of a big stack would hold every region it read at once
        return out.copy() if strided else out


#: dtype kinds a stack holds: bool, signed and unsigned integers, floating point.
IMAGE_KINDS = "biuf"


def check_image_dtype(dtype: Any, source: Any, format: str) -> None:  # noqa: A002 - the natural name
    """Raise a [`SourceFormatError`][SourceFormatError] unless ``dtype`` is bool, integer or floating point.

    The one check every format goes through (every loader builds a
    [`LazyImageStack`][LazyImageStack]): complex data would otherwise reach the
    ``float32`` patches as its real part only, with nothing but numpy's
    ``ComplexWarning``.
    """
    try:
        dt = np.dtype(dtype)
    except TypeError:
        dt = None
    if dt is not None and dt.kind in IMAGE_KINDS:
        return
    hint = (
        "; complex data has no single float32 value per pixel: convert it explicitly, e.g. "
        "load_arrays([np.abs(x)], axes) for the magnitude or np.stack([x.real, x.imag]) as two channels"
        if dt is not None and dt.kind == "c"
        else ""
    )
    msg = (
        f"{format} source {str(source)!r} has dtype {dtype}, which lazystack cannot read as an image; "
        f"accepted: bool, integer and floating-point data{hint}"
    )
    raise SourceFormatError(msg)


def short_name(source: Any) -> str:
    """The last path component of ``source`` (the source itself when it has none): an image's display name."""
    text = str(source).rstrip("/")
    return text.rsplit("/", 1)[-1] or text
