"""Tiled prediction: a grid of overlapping tiles and a stitcher that assembles their predictions.

[`GridSampler`][GridSampler] covers every pixel of every sample of every stack with
tiles of one size, overlapping by at least ``overlap``; the last tile of a
row is moved back so that it ends at the image's edge (tiles never leave an
image at least as large as a tile). Each tile keeps, for stitching, only the
part of it closest to its own centre: neighbours meet in the middle of their
overlap, so the kept parts partition the image.

[`Stitcher`][Stitcher] writes each tile's kept part of a prediction into output
arrays (numpy by default, or any array accepting slice assignment: a Zarr
array, e.g. one written then as OME-Zarr) as tiles arrive, in any order.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

from ..core.errors import PatchError, ShapeMismatchError
from .samplers import (
    PatchSpec,
    Sampler,
    StackGeometry,
    _as_int,
    _int_tuple,
    _left_out,
    geometry,
    resolve_channels,
    sampled_stacks,
)

__all__ = ["GridSampler", "Stitcher", "Tile", "tile_starts"]


class Tile(NamedTuple):
    """A grid tile and what stitching needs of it.

    Attributes
    ----------
    spec : PatchSpec
        The patch to read.
    image_region : tuple of slice
        Region of the image (spatial dims) this tile's prediction fills.
    patch_region : tuple of slice
        The same region in the tile's own coordinates.
    """

    spec: PatchSpec
    image_region: tuple[slice, ...]
    patch_region: tuple[slice, ...]


def tile_starts(extent: int, size: int, overlap: int) -> list[tuple[int, int, int]]:
    """Tiles along one dim: ``(start, keep_start, keep_stop)`` each, in image coordinates.

    Parameters
    ----------
    extent : int
        Length of the dim.
    size : int
        Tile length.
    overlap : int
        Minimum overlap of neighbouring tiles, ``0 <= overlap < size``.

    Returns
    -------
    list of tuple of int
        The kept ranges partition ``range(extent)``.

    Raises
    ------
    PatchError
        Unless ``extent >= 0`` and ``0 <= overlap < size`` (integers).
    """
    extent, size, overlap = (_index(n, v) for n, v in (("extent", extent), ("size", size), ("overlap", overlap)))
    if extent < 0 or not 0 <= overlap < size:
        msg = (
            f"tile_starts(extent={extent}, size={size}, overlap={overlap}): need extent >= 0 and "
            "0 <= overlap < size (a negative overlap leaves gaps, overlap >= size never advances)"
        )
        raise PatchError(msg)
    if size >= extent:
        return [(0, 0, extent)]
    step = size - overlap
    starts = [*range(0, extent - size, step), extent - size]  # range stops below extent - size: no repeat
    bounds = [0] + [(starts[j + 1] + starts[j] + size) // 2 for j in range(len(starts) - 1)] + [extent]
    return [(s, bounds[j], bounds[j + 1]) for j, s in enumerate(starts)]


def _index(name: str, value: Any) -> int:
    """An integer (a tile index, a length): not a boolean, which ``operator.index`` takes for 0 or 1.

    Also not a 0-d boolean array or tensor (the items of a boolean mask).
    """
    if isinstance(value, (bool, np.bool_)) or str(getattr(value, "dtype", "")) in ("bool", "torch.bool"):
        msg = f"{name} must be an integer, got {value!r} (a boolean)"
        raise TypeError(msg)
    return _as_int(name, value)


#: ``casting=`` values of [`Stitcher`][Stitcher]: NumPy's (``np.can_cast``, ``np.copyto``).
_CASTINGS = ("no", "equiv", "safe", "same_kind", "unsafe")


def _numpy_dtype(out: Any) -> np.dtype[Any] | None:
    """An output's dtype as NumPy's (a tensorstore dtype through ``numpy_dtype``); None when NumPy cannot tell it."""
    dtype = getattr(out, "dtype", None)
    if dtype is None:
        return None
    try:
        return np.dtype(getattr(dtype, "numpy_dtype", dtype))
    except TypeError:
        return None


def _is_tensor(value: Any) -> bool:
    """A torch tensor, or one of a subclass (MONAI's ``MetaTensor``, a ``Parameter``): told without importing torch."""
    return any(c.__module__.split(".")[0] == "torch" and c.__name__ == "Tensor" for c in type(value).__mro__)


def _overlapping(view: np.ndarray[Any, Any]) -> bool:
    """Whether two elements of ``view`` may share memory (a stride 0 of ``expand()``; strides too small to nest)."""
    reach = view.itemsize  # bytes spanned by the dimensions of smaller strides
    for stride, size in sorted((abs(st), n) for n, st in zip(view.shape, view.strides, strict=True) if n > 1):
        if stride < reach:
            return True
        reach += (size - 1) * stride
    return False


def _tensor_target(i: int, out: Any) -> np.ndarray[Any, Any]:
    """A NumPy view of the memory of ``out[i]``, a CPU torch tensor: writing into it writes into the tensor in place.

    Refused (before any tile is written) for a tensor that NumPy cannot view: not on the CPU, not strided (sparse),
    of a dtype NumPy has no equal for (``bfloat16``, ``float8``, ``complex32``), with its conjugate or negative
    bit set, or whose elements share memory (``expand()``).
    """
    device = getattr(out, "device", None)
    what = f"out[{i}] is a torch tensor of dtype {out.dtype} on {device}"
    accepted = (
        "accepted are CPU tensors of a dtype NumPy has (written in place, with the numpy outputs' casting rule) and "
        "numpy arrays: pass e.g. torch.empty(..., dtype=torch.float32) and convert the result once stitched "
        "(.to(device), .to(dtype))"
    )
    if getattr(device, "type", None) != "cpu":
        msg = f"{what}: the Stitcher writes tiles into memory of this process; {accepted}"
        raise TypeError(msg)
    reason = ""
    if str(getattr(out, "layout", "")) != "torch.strided":
        reason = f"its layout {out.layout} has no NumPy view"
    elif out.is_conj() or out.is_neg():
        reason = "its conjugate / negative bit is set (a lazy view NumPy cannot write through)"
    else:
        try:
            view = out.detach().numpy()
        except (TypeError, RuntimeError) as err:
            reason = f"NumPy cannot view it ({err})"
        else:
            if not view.flags.writeable:  # pragma: no cover - torch's views are writable
                reason = "its NumPy view is read-only"
            elif _overlapping(view):
                reason = (
                    f"its elements share memory (strides {tuple(out.stride())}: an expand()ed or as_strided tensor), "
                    "so one tile would overwrite another's values"
                )
    if reason:
        msg = f"{what}: {reason}; {accepted}"
        raise TypeError(msg)
    return view


def _cast_reason(src: np.dtype[Any], dst: np.dtype[Any]) -> str:
    """Why a cast of ``src`` values into ``dst`` can change them (for a refusal's message)."""
    if dst.kind == "b":
        return f"a {src} into a boolean keeps only zero / non-zero"
    if src.kind == "f" and dst.kind in "iu":
        return "a float into an integer would be truncated"
    if src.kind == "i" and dst.kind == "u":
        return "a signed integer into an unsigned one would wrap negative values"
    return f"{dst} cannot hold every value of {src}: it would lose precision or range"


class GridSampler(Sampler):
    """Overlapping tiles covering every pixel of every sample of every stack, in order.

    Parameters
    ----------
    stacks : sequence of ImageStack
        The stacks to tile.
    patch_size : int or sequence of int
        Tile size in the spatial dims. Along a dim shorter than the tile, one
        tile starts at 0 and its overhang reads as zeros.
    overlap : int or sequence of int
        Minimum overlap of neighbouring tiles (``0 <= overlap < patch_size``).
    channels : int or sequence of int, optional
        Channels to read.
    levels : "finest", "all", int or sequence of int
        Resolution levels to tile: by default the finest level given of each
        image (full resolution); the others (in ``levels_left_out``) get no
        tile (see [`Sampler`][lazystack.Sampler]).

    Examples
    --------
    >>> import numpy as np
    >>> from lazystack import LazyImageStack
    >>> grid = GridSampler([LazyImageStack(np.zeros((10, 10), np.uint8), "YX")], 6, overlap=2)
    >>> len(grid), grid.spec(3).coords
    (4, (4, 4))
    """

    def __init__(
        self,
        stacks: Sequence[Any],
        patch_size: int | Sequence[int],
        *,
        overlap: int | Sequence[int] = 0,
        channels: int | Sequence[int] | None = None,
        levels: Any = "finest",
    ) -> None:
        if not stacks:
            msg = "GridSampler needs at least one stack, got an empty sequence"
            raise ValueError(msg)
        self.geometries: list[StackGeometry] = [geometry(s) for s in stacks]
        self.levels_left_out = _left_out(len(stacks), sampled_stacks(stacks, levels, who="GridSampler"))
        ndim = len(self.geometries[0].spatial_shape)
        self.patch_size = _int_tuple("patch_size", patch_size, ndim)
        self.overlap = _int_tuple("overlap", overlap, ndim)
        if any(p <= 0 or not 0 <= o < p for p, o in zip(self.patch_size, self.overlap, strict=True)):
            msg = f"overlap {self.overlap} must be >= 0 and smaller than the positive patch_size {self.patch_size}"
            raise PatchError(msg)
        self.channels = resolve_channels(channels, self.geometries, stacks)
        self._axes: list[list[list[tuple[int, int, int]]]] = []
        counts = []
        for i, g in enumerate(self.geometries):
            if len(g.spatial_shape) != ndim:
                msg = f"stack {i} has {len(g.spatial_shape)} spatial dims; the grid has {ndim}"
                raise PatchError(msg)
            per_dim = [
                tile_starts(n, p, o) for n, p, o in zip(g.spatial_shape, self.patch_size, self.overlap, strict=True)
            ]
            self._axes.append(per_dim)
            counts.append(0 if i in self.levels_left_out else g.n_samples * math.prod(len(t) for t in per_dim))
        self._offsets = np.cumsum([0, *counts])

    def __len__(self) -> int:
        return int(self._offsets[-1])

    def tile(self, index: int) -> Tile:
        """The tile of ``index``: its spec and the region it fills when stitched.

        Parameters
        ----------
        index : int
            In ``range(len(self))``.

        Returns
        -------
        Tile
        """
        i = self._check_index(index)
        k = int(np.searchsorted(self._offsets, i, side="right")) - 1
        per_dim = self._axes[k]
        sample, *where = np.unravel_index(i - int(self._offsets[k]), (self.geometries[k].n_samples, *map(len, per_dim)))
        picks = [tiles[j] for tiles, j in zip(per_dim, where, strict=True)]  # last dim fastest
        coords = tuple(s for s, _, _ in picks)
        image = tuple(slice(a, b) for _, a, b in picks)
        patch = tuple(slice(a - s, b - s) for s, a, b in picks)
        return Tile(PatchSpec(k, int(sample), self.channels, coords, self.patch_size), image, patch)

    def spec(self, index: int, epoch: int = 0) -> PatchSpec:
        """The spec of tile ``index`` (every epoch alike)."""
        return self.tile(index).spec


class Stitcher:
    """Assemble per-tile predictions of a [`GridSampler`][GridSampler] into whole images.

    Parameters
    ----------
    grid : GridSampler
        The grid the tiles come from.
    n_channels : int
        Channels of a prediction (``C(Z)YX`` per tile).
    out : sequence of array-like, optional
        One output per stack, of shape ``(n_samples, n_channels, *spatial)``
        and accepting slice assignment (numpy, Zarr ...), or a CPU torch
        tensor, written in place through a NumPy view of its memory (same
        casting rule as a numpy output). Default: new ``float32`` numpy arrays. A stack the grid leaves out (its
        ``levels_left_out``) gets no output: None in
        ``outputs`` (anything given there is ignored).
    dtype : numpy dtype
        Dtype of the default outputs.
    casting : {"same_kind", "safe", "equiv", "no", "unsafe"}
        Which casts of a prediction into an output's dtype are accepted,
        as NumPy's ``np.copyto`` (``np.can_cast``) decides them. The
        default, ``"same_kind"``, writes float predictions into float
        outputs of any precision and refuses them into an integer output
        (which would truncate them without a word): round and cast the
        predictions first, or pass ``"unsafe"`` to cast them as
        ``np.copyto`` does (truncation, wrap-around). The prediction is cast
        to the output's dtype before it is written, so a tensorstore output
        (whose assignment casts only safely) gets the same. As in NumPy, it also
        refuses signed integer predictions into an unsigned output (labels
        from torch's ``argmax``, ``int64``, into a ``uint8`` image): cast them
        to the output's dtype first. Complex predictions
        into a real output are refused whatever ``casting`` says. An
        output whose dtype NumPy cannot tell casts as it does.

    Raises
    ------
    ValueError
        If ``n_channels`` is not a positive integer, or ``casting`` is not one of NumPy's.
    ShapeMismatchError
        If ``out`` does not hold one array of the right shape per stack.
    TypeError
        If an output is a torch tensor NumPy cannot write through: not on the
        CPU, sparse, of a dtype NumPy has none for (``bfloat16``), or whose
        elements share memory (an ``expand()``-ed tensor).

    Examples
    --------
    >>> import numpy as np
    >>> from lazystack import LazyImageStack
    >>> image = np.arange(100, dtype=np.float32).reshape(10, 10)
    >>> stack = LazyImageStack(image, "YX")
    >>> grid = GridSampler([stack], 6, overlap=2)
    >>> stitcher = Stitcher(grid, n_channels=1)
    >>> for i in range(len(grid)):
    ...     stitcher.add(i, stack.extract_patch(*grid.spec(i)[1:]))
    >>> bool(np.array_equal(stitcher.outputs[0][0, 0], image)), stitcher.complete
    (True, True)
    """

    def __init__(
        self,
        grid: GridSampler,
        n_channels: int,
        *,
        out: Sequence[Any] | None = None,
        dtype: Any = np.float32,
        casting: str = "same_kind",
    ) -> None:
        if not isinstance(casting, str) or casting not in _CASTINGS:
            msg = f"casting={casting!r} is not one of NumPy's casting rules; accepted: {', '.join(_CASTINGS)}"
            raise ValueError(msg)
        #: NumPy's casting rule for predictions into the outputs (see the class documentation).
        self.casting = casting
        self.grid = grid
        self.n_channels = _as_int("n_channels", n_channels)
        if self.n_channels < 1 or isinstance(n_channels, bool):
            msg = f"n_channels must be a positive integer (channels of a prediction), got {n_channels!r}"
            raise ValueError(msg)
        left_out = set(grid.levels_left_out)
        shapes = [
            None if i in left_out else (g.n_samples, self.n_channels, *g.spatial_shape)
            for i, g in enumerate(grid.geometries)
        ]
        #: One output per stack of the grid (None for a stack it leaves out).
        self.outputs: list[Any]
        if out is None:
            self.outputs = [None if s is None else np.zeros(s, dtype=dtype) for s in shapes]
        else:
            self.outputs = list(out)
            if len(self.outputs) != len(shapes):
                msg = f"out has {len(self.outputs)} array(s); the grid covers {len(shapes)} stack(s)"
                raise ShapeMismatchError(msg)
            for i, (o, s) in enumerate(zip(self.outputs, shapes, strict=True)):
                if s is None:
                    self.outputs[i] = None
                elif not hasattr(o, "shape"):
                    msg = f"out[{i}] is {type(o).__name__}, not an array: stack {i}'s predictions need one of shape {s}"
                    raise ShapeMismatchError(msg)
                elif tuple(o.shape) != s:
                    msg = f"out[{i}] has shape {tuple(o.shape)}; stack {i}'s predictions need {s}"
                    raise ShapeMismatchError(msg)
        #: Where each output is written: the output itself, or a NumPy view of a CPU torch tensor's memory.
        self._targets: list[Any] = [
            o if o is None or not _is_tensor(o) else _tensor_target(i, o) for i, o in enumerate(self.outputs)
        ]
        self._added: set[int] = set()

    def add(self, index: int, prediction: Any) -> None:
        """Write the kept part of tile ``index``'s prediction.

        Parameters
        ----------
        index : int
            Tile index in the grid.
        prediction : array-like
            ``C(Z)YX`` of the tile's size (a torch tensor is converted with
            ``numpy()``; a ``bfloat16`` or ``float8`` one, which NumPy has no
            dtype for, to ``float32`` first, a ``complex32`` one to
            ``complex64``).

        Raises
        ------
        ShapeMismatchError
            If the prediction's shape is not ``(n_channels, *patch_size)``.
        TypeError
            If the prediction is not numbers (strings, objects), complex for a
            real output, or of a dtype that ``casting`` refuses to cast to the
            output's (float into integer, by default).
        """
        tile = self.grid.tile(_index("index", index))
        if hasattr(prediction, "detach"):
            prediction = prediction.detach().cpu()
            if str(prediction.dtype) == "torch.bfloat16" or "float8" in str(prediction.dtype):
                prediction = prediction.float()  # no NumPy dtype (mixed precision): float32 holds every value
            elif str(prediction.dtype) == "torch.complex32":  # no NumPy dtype either: complex64 holds every value
                prediction = prediction.cfloat()
            prediction = prediction.resolve_conj().resolve_neg().numpy()
        pred = np.asarray(prediction)
        expected = (self.n_channels, *tile.spec.patch_size)
        if pred.shape != expected:
            msg = f"prediction of tile {index} has shape {pred.shape}; expected {expected} (C(Z)YX)"
            raise ShapeMismatchError(msg)
        out = self._targets[tile.spec.stack]
        out_dtype = _numpy_dtype(out)
        complex_ok = out_dtype is None or out_dtype.kind == "c"  # NumPy cannot tell: the output judges
        if pred.dtype.kind not in "biuf" + ("c" if complex_ok else ""):
            msg = (
                f"prediction of tile {index} has dtype {pred.dtype}: accepted are bool, integer and float "
                f"predictions{' (and complex)' if complex_ok else ''}, written into an output of dtype "
                f"{getattr(out, 'dtype', '?')}; convert it first (e.g. the real part or the magnitude)"
            )
            raise TypeError(msg)
        if out_dtype is not None and not np.can_cast(pred.dtype, out_dtype, casting=self.casting):  # type: ignore[arg-type]
            msg = (
                f"prediction of tile {index} has dtype {pred.dtype} and out[{tile.spec.stack}] has dtype "
                f"{out_dtype}: casting={self.casting!r} refuses that cast (NumPy's np.can_cast rule; "
                f"{_cast_reason(pred.dtype, out_dtype)}); accepted: predictions that cast to {out_dtype} under "
                f"{self.casting!r}. {'Round and cast' if pred.dtype.kind == 'f' else 'Cast'} the predictions "
                f"first (.astype({out_dtype}), or .to() of a tensor), use an output of dtype "
                f"{np.result_type(pred.dtype, out_dtype)}, or pass Stitcher(..., casting='unsafe')"
            )
            raise TypeError(msg)
        part = pred[(slice(None), *tile.patch_region)]
        if out_dtype is not None and part.dtype != out_dtype:  # cast here: tensorstore's assignment casts 'safe'ly only
            part = part.astype(out_dtype, casting=self.casting)  # type: ignore[call-overload]
        out[(tile.spec.sample, slice(None), *tile.image_region)] = part
        self._added.add(int(index))

    def add_batch(self, indices: Sequence[int], predictions: Any) -> None:
        """[`add()`][add] for each index and the matching prediction of a batch (``N C (Z)YX``)."""
        indices = list(indices)
        if not hasattr(predictions, "__len__"):  # a generator of predictions
            predictions = list(predictions)
        if len(indices) != len(predictions):
            msg = f"add_batch got {len(indices)} indices and {len(predictions)} predictions: need one per index"
            raise ShapeMismatchError(msg)
        for i, p in zip(indices, predictions, strict=True):
            self.add(_index("index", i), p)

    @property
    def complete(self) -> bool:
        """True once every tile of the grid has been added."""
        return len(self._added) == len(self.grid)
