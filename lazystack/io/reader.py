"""The reader contract: the one object every source hands the stack.

A source (a format back end, or [`as_reader()`][as_reader] for a plain array) gives
[`LazyImageStack`][lazystack.LazyImageStack] one [`Reader`][Reader] over the source's own
axes. The stack uses nothing else, and probes nothing: every member of
[`Reader`][Reader] exists on every reader, with the default the base class gives
when a reader does not override it (docs/api.md, "The reader contract",
tabulates them). Readers must pickle as a recipe (no open handle, no pixel
data for files). Plain array-likes (numpy, dask, zarr and h5py arrays,
``np.memmap``) are adapted once, by [`as_reader()`][as_reader] where a stack is
built, into an [`ArrayReader`][ArrayReader].
"""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from ..core.errors import SourceReadError, UnsupportedSourceError

if TYPE_CHECKING:
    from collections.abc import Callable

    import dask.array

__all__ = [
    "ArrayReader",
    "OpenedSource",
    "Reader",
    "ReaderCapabilities",
    "as_reader",
    "check_region",
    "dask_chunks",
    "float32_is_exact",
    "is_array_like",
    "read_numpy",
    "reader_chunks",
    "reader_token",
]


@dataclass(frozen=True, slots=True)
class ReaderCapabilities:
    """What a reader is, declared as data (see the module docs).

    Attributes
    ----------
    remote : bool
        Fetching a chunk waits on a network: batches fetch all of a batch's
        chunks in concurrent rounds, so the round trips overlap.
    memory_mapped : bool
        Reads slice a memory map (no decode, no chunk cache).
    compressed : bool
        Decoding a chunk is real CPU work (False for raw bytes: a memory
        copy, which sharing over the cores only slows down).
    fetches_in_groups : bool
        The back end decodes chunks only several at once (its own
        concurrency or round trips): no chunk-by-chunk streaming, batches
        fetch in rounds.
    """

    remote: bool = False
    memory_mapped: bool = False
    compressed: bool = True
    fetches_in_groups: bool = False


_DEFAULT_CAPABILITIES = ReaderCapabilities()


class Reader:
    """Base class of the reader contract: every member, with its default.

    A subclass sets ``shape`` and ``dtype`` (attributes or properties) and
    implements ``__getitem__``; everything else has a default it may
    override. ``chunks`` is the chunk grid (dask-style chunks or a regular
    chunk shape; None: dask picks one), ``token`` a string naming the data
    without hashing pixels (None: a random name), ``capabilities`` a frozen
    [`ReaderCapabilities`][ReaderCapabilities] (default: all False but ``compressed``).
    """

    if TYPE_CHECKING:  # read-only for users; a subclass sets them as attributes or properties

        @property
        def shape(self) -> tuple[int, ...]:
            """Shape in the source's own axes."""

        @property
        def dtype(self) -> np.dtype[Any]:
            """Dtype of the stored data."""

        @property
        def chunks(self) -> Any:
            """dask-style chunks or a regular chunk shape; None: no grid of its own."""

        @property
        def token(self) -> str | None:
            """Names the data (None: a random name per stack)."""

        @property
        def capabilities(self) -> ReaderCapabilities:
            """What the reader is ([`ReaderCapabilities`][ReaderCapabilities])."""

    else:  # the defaults
        chunks = None
        token = None
        capabilities = _DEFAULT_CAPABILITIES

    @property
    def ndim(self) -> int:
        """Number of axes (``len(shape)``)."""
        return len(self.shape)

    def __getitem__(self, key: Any) -> Any:
        """Read ``key`` (one int or step-1 slice per axis, within bounds) in the stored dtype."""
        raise NotImplementedError

    def read_region(self, region: tuple[slice, ...]) -> np.ndarray:
        """Read step-1 slices inside the bounds, one per axis, in the stored dtype (default: ``self[region]``).

        The one read the stack's patch and view paths make; it may return a
        read-only view (of a cached chunk, of a memory map).
        """
        return read_numpy(self, region)

    def read_cached(self, region: tuple[slice, ...]) -> np.ndarray | None:
        """``region`` when every chunk it touches is in memory, else None (default); never reads the source.

        The stack tries it before ``read_region``: a warm patch is one cache look-up.
        """
        return None

    def read_float32(self, region: tuple[slice, ...]) -> np.ndarray | None:
        """``region`` as a *new* ``float32`` array when the reader converts more cheaply, else None (default).

        Values are exactly those of a cast (tensorstore converts while it
        decodes). A reader converts only dtypes that [`float32_is_exact()`][float32_is_exact]
        accepts (the contract's one ``float32`` policy); every other ``float32``
        conversion of a patch happens in the stack.
        """
        return None

    def as_chunked(self) -> Reader | None:
        """The [`ChunkedReader`][lazystack.io.chunked.ChunkedReader] serving this reader's chunks, or None (default).

        Same axes, shape and dtype, for batched extraction; with None a batch reads patch by patch.
        """
        return None

    def as_dask(self) -> dask.array.Array | None:
        """A dask array the stack uses as is, or None (default: the stack wraps the reader)."""
        return None

    def close(self) -> None:
        """Release open handles; the reader reopens when used again (default: none held)."""

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        out = np.array(self.read_region(tuple(slice(0, int(n)) for n in self.shape)), copy=True)
        return out if dtype is None else out.astype(dtype)


class ArrayReader(Reader):
    """A plain array-like (numpy, dask, zarr or h5py array, ``np.memmap`` ...) adapted to the reader contract.

    Made by [`as_reader()`][as_reader] where a stack is built; the wrapped object's
    ``chunks`` and ``token`` are looked up once, here.

    Parameters
    ----------
    array : array-like
        The wrapped object (``shape``, ``dtype``, ``__getitem__``).
    dtype : numpy dtype, optional
        Its numpy dtype, when ``array.dtype`` is not one (a torch or tensorstore dtype).
    """

    shape: tuple[int, ...]
    dtype: np.dtype[Any]
    chunks: Any
    token: str | None
    capabilities: ReaderCapabilities

    def __init__(self, array: Any, dtype: Any = None) -> None:
        self._array = array
        self._is_numpy = isinstance(array, np.ndarray)
        self._is_dask = _is_dask_array(array)
        self.shape = tuple(int(n) for n in array.shape)
        self.dtype = np.dtype(array.dtype if dtype is None else dtype)  # given: numpy's for a foreign dtype
        chunks = getattr(array, "chunks", None)
        self.chunks = None if chunks is None or callable(chunks) else chunks
        token = getattr(array, "token", None)
        self.token = str(token) if token else None
        # a numpy array or a CPU torch tensor is raw memory: reading a region is a copy, no decoding
        raw = self._is_numpy or (type(array).__module__ == "torch" and str(getattr(array, "device", "")) == "cpu")
        self.capabilities = ReaderCapabilities(memory_mapped=isinstance(array, np.memmap), compressed=not raw)

    @property
    def array(self) -> Any:
        """The wrapped array-like."""
        return self._array

    def __getitem__(self, key: Any) -> np.ndarray:
        """``array[key]`` as a numpy array (a dask result computed in place).

        Raises
        ------
        SourceReadError
            If an array-like other than numpy or dask returns another shape
            than the region asked for, or a dtype its declared one does not
            hold exactly (see [`check_region`][check_region]).
        """
        out = read_numpy(self._array, key)
        if self._is_numpy or self._is_dask:
            return out
        return check_region(out, key, self.shape, self.dtype, self._what)

    def read_region(self, region: tuple[slice, ...]) -> np.ndarray:
        """``array[region]`` as a numpy array (a view for numpy arrays)."""
        if self._is_numpy:
            return self._array[region]
        return self[region]

    def _what(self) -> str:
        return f"the {type(self._array).__name__} given as a source"

    def as_dask(self) -> dask.array.Array | None:
        """The wrapped dask array (None for other arrays)."""
        return self._array if self._is_dask else None

    def close(self) -> None:
        """Close the wrapped array when it has a ``close()`` (an h5py file ...)."""
        close = getattr(self._array, "close", None)
        if callable(close):
            close()

    def __repr__(self) -> str:
        return f"ArrayReader({type(self._array).__name__}, shape={self.shape}, dtype={self.dtype})"


def as_reader(obj: Any) -> Reader | None:
    """``obj`` under the reader contract: a [`Reader`][Reader] as is, an array-like adapted, else None.

    An array-like whose ``dtype`` numpy does not know (a ``torch.Tensor``, a
    ``tensorstore.TensorStore``) keeps being read region by region (each
    region through ``numpy.asarray``); its numpy dtype is the ``dtype``'s
    ``numpy_dtype``, else that of an empty region.

    Raises
    ------
    UnsupportedSourceError
        If the array-like's sizes are not known (a dask array with unknown
        chunk sizes), or numpy cannot read a region of it.
    """
    if isinstance(obj, Reader):
        return obj
    if not is_array_like(obj):
        return None
    kind = f"{type(obj).__module__.split('.')[0]}.{type(obj).__name__}"
    if not all(isinstance(n, (int, np.integer)) for n in obj.shape):
        msg = (
            f"a {kind} of shape {tuple(obj.shape)} has unknown sizes: a stack needs them "
            "(for a dask array, call .compute_chunk_sizes() first)"
        )
        raise UnsupportedSourceError(msg)
    try:
        np.dtype(obj.dtype)
    except TypeError:  # a dtype numpy does not know: found below
        pass
    else:
        return ArrayReader(obj)
    try:
        numpy_dtype = getattr(obj.dtype, "numpy_dtype", None)
        if numpy_dtype is None:  # read nothing: an empty region says what numpy makes of the data
            numpy_dtype = np.asarray(obj[(slice(0, 0),) * len(obj.shape)]).dtype
        return ArrayReader(obj, dtype=np.dtype(numpy_dtype))
    except Exception as exc:  # a tensor on a GPU, or one that requires grad ...
        msg = (
            f"cannot read a {kind} of dtype {obj.dtype} as an array: numpy.asarray of a region failed "
            f"({type(exc).__name__}: {exc}); accepted: array-likes numpy can read (convert a tensor with "
            ".detach().cpu())"
        )
        raise UnsupportedSourceError(msg) from exc


def check_region(
    out: np.ndarray, key: Any, shape: tuple[int, ...], dtype: np.dtype[Any], what: Callable[[], str]
) -> np.ndarray:
    """A region an array-like returned, checked against the shape and dtype it declares.

    An object whose ``__getitem__`` returns another shape than asked failed
    deep inside numpy or dask ("could not broadcast", "cannot reshape"); one
    returning another dtype than its ``dtype`` made ``stack.data.compute()``
    disagree with ``stack.data.dtype``. A dtype the declared one holds exactly
    (``uint8`` in ``uint16``, ``int32`` in ``float64``; not ``int64`` in
    ``float64``, which numpy's ``safe`` casting allows and which rounds
    ``2**53 + 1``) is cast.

    Parameters
    ----------
    out : numpy.ndarray
        What ``__getitem__`` returned, as a numpy array.
    key : tuple
        The region asked for.
    shape : tuple of int
        The declared shape of the whole array.
    dtype : numpy.dtype
        The declared dtype.
    what : callable
        Names the array-like in a message (called only when a check fails: this runs on every read).

    Returns
    -------
    numpy.ndarray
        ``out``, cast to ``dtype`` where it held another dtype exactly.

    Raises
    ------
    SourceReadError
        If ``out`` has another shape than ``key`` selects, or a dtype that
        ``dtype`` does not hold exactly.
    """
    key = key if isinstance(key, tuple) else (key,)
    want = _region_shape(key, shape)
    if out.shape != want:
        msg = (
            f"{what()} returned shape {out.shape} for the region {key!r}, not {want}: its __getitem__ must return "
            f"the region asked for (it declares shape {shape})"
        )
        raise SourceReadError(msg)
    if out.dtype != dtype:
        if not _holds_exactly(dtype, out.dtype):
            msg = (
                f"{what()} returned dtype {out.dtype} for the region {key!r}, but declares dtype {dtype}: "
                "accepted a region of the declared dtype (or one it holds exactly)"
            )
            raise SourceReadError(msg)
        out = out.astype(dtype)
    return out


def _region_shape(key: tuple[Any, ...], shape: tuple[int, ...]) -> tuple[int, ...]:
    """The shape numpy gives ``array[key]`` for an array of ``shape`` (computed, not read: this runs per read)."""
    sizes: list[int] = []
    for k, n in zip(key, shape, strict=False):
        if type(k) is slice:
            sizes.append(len(range(*k.indices(n))))
        elif not isinstance(k, (int, np.integer)) or isinstance(k, bool):  # numpy: a boolean key adds an axis
            break
    else:
        if len(key) <= len(shape):
            return (*sizes, *shape[len(key) :])
    return np.broadcast_to(np.empty((), np.uint8), shape)[key].shape  # other keys: numpy's rule (a zero-stride view)


def _holds_exactly(declared: np.dtype[Any], got: np.dtype[Any]) -> bool:
    """Whether every value of ``got`` is a value of ``declared`` (numpy's ``safe`` casting allows int64 -> float64,
    which rounds 2**53 + 1)."""
    if not np.can_cast(got, declared, casting="safe"):
        return False
    if got.kind in "iu" and declared.kind in "fc":
        mantissa = np.finfo(declared).nmant + 1
        return np.iinfo(got).bits - (got.kind == "i") <= mantissa
    return True


def is_array_like(obj: object) -> bool:
    """Return whether ``obj`` has ``shape``, ``dtype`` and ``__getitem__``."""
    return all(hasattr(obj, a) for a in ("shape", "dtype", "__getitem__")) and hasattr(obj.shape, "__len__")  # type: ignore[attr-defined]


def float32_is_exact(dtype: Any) -> bool:
    """Whether every value of ``dtype`` is a ``float32`` (8- and 16-bit integers, float16, float32).

    The reader contract's ``float32`` policy: a reader or an engine may hand
    back a region already converted to ``float32`` (``read_float32``, a
    batch's region reads) only for these dtypes, where any correct
    conversion gives exactly numpy's cast.

    Parameters
    ----------
    dtype : numpy.dtype or dtype-like
        The stored dtype.

    Returns
    -------
    bool
    """
    dt = np.dtype(dtype)
    return (dt.kind in "iu" and dt.itemsize <= 2) or (dt.kind == "f" and dt.itemsize <= 4)


def _is_dask_array(x: object) -> bool:
    return type(x).__module__.startswith("dask.") and hasattr(x, "dask")


def read_numpy(reader: Any, key: tuple[int | slice, ...]) -> np.ndarray:
    """Read ``reader[key]`` as a numpy array (computing a dask result in place)."""
    out = reader[key]
    if _is_dask_array(out):
        out = out.compute(scheduler="sync")
    return np.asarray(out)


def reader_chunks(reader: Any) -> tuple[tuple[int, ...], ...]:
    """dask-style chunks of a reader: its own, else dask's ``"auto"`` choice."""
    from dask.array.core import normalize_chunks  # dask.array loads on first use, not with the stack

    shape = tuple(int(n) for n in reader.shape)
    chunks = reader.chunks if isinstance(reader, Reader) else getattr(reader, "chunks", None)
    if chunks is None or callable(chunks):
        chunks = "auto"
    return normalize_chunks(chunks, shape=shape, dtype=np.dtype(reader.dtype))


#: Most chunks a stack's dask array gets: past it, chunks grow beyond the target size so that
#: a graph stays small enough to build (a slice of a big chunk still reads only the slice).
MAX_DASK_CHUNKS = 100_000


def _storage_grid(reader: Any, shape: tuple[int, ...]) -> list[int | tuple[int, ...]] | None:
    """Per axis: the reader's regular chunk size (int) or its chunk sizes (tuple); None without chunks."""
    chunks = getattr(reader, "chunks", None)
    if chunks is None or callable(chunks) or isinstance(chunks, (str, int)) or len(chunks) != len(shape):
        return None
    grid: list[int | tuple[int, ...]] = []
    for n, c in zip(shape, chunks, strict=True):
        if isinstance(c, (int, np.integer)):
            grid.append(max(1, min(int(c), n)))
        else:
            sizes = tuple(int(v) for v in c)
            if sum(sizes) != n:
                return None
            grid.append(sizes)
    return grid


def dask_chunks(
    reader: Any, *, limit: int | str | None = None, unit_axes: tuple[int, ...] = ()
) -> tuple[tuple[int, ...], ...]:
    """dask chunks of a stack: the reader's own chunks merged up to a target size.

    Consecutive storage chunks (zarr chunks, TIFF pages or tiles, CZI blocks)
    are grouped along each axis, so every dask chunk is a whole number of
    storage chunks of about ``limit`` bytes (dask's ``array.chunk-size``
    setting, 128 MiB by default): the number of tasks depends on the data's
    size, not on how finely it is stored. A storage chunk larger than the
    target is kept whole (never split). Past [`MAX_DASK_CHUNKS`][MAX_DASK_CHUNKS] chunks
    the groups grow beyond the target, so that the graph of an astronomically
    large declared shape stays buildable. Works on the chunk sizes alone,
    without expanding a regular grid into per-chunk tuples.

    Parameters
    ----------
    reader : array-like
        A chunk reader; ``chunks`` as dask-style tuples or a regular chunk
        shape. Without ``chunks``, dask's ``"auto"`` choice.
    limit : int or str, optional
        Target bytes per chunk (``"64 MiB"``, ``2**26`` ...); default
        ``dask.config.get("array.chunk-size")``.
    unit_axes : tuple of int
        Axes whose storage chunks are never grouped.
    """
    import dask
    from dask.utils import parse_bytes

    shape = tuple(int(n) for n in reader.shape)
    dtype = np.dtype(reader.dtype)
    target = parse_bytes(limit if limit is not None else dask.config.get("array.chunk-size"))
    grid = _storage_grid(reader, shape)
    if grid is None or 0 in shape:
        return reader_chunks(reader)
    n_chunks = [-(-n // g) if isinstance(g, int) else len(g) for n, g in zip(shape, grid, strict=True)]
    typical = [g if isinstance(g, int) else max(g) for g in grid]
    groups = [1] * len(shape)

    def extent(axis: int) -> int:
        return min(typical[axis] * groups[axis], shape[axis])

    def nbytes() -> int:
        return math.prod(extent(a) for a in range(len(shape))) * dtype.itemsize

    growable = [a for a in range(len(shape)) if a not in unit_axes]
    while True:  # double the group of the smallest growable axis while the chunk stays under the target
        for axis in sorted(growable, key=lambda a: (extent(a), -a)):
            if groups[axis] >= n_chunks[axis]:
                continue
            before = groups[axis]
            groups[axis] = min(2 * before, n_chunks[axis])
            if nbytes() <= target:
                break
            groups[axis] = before
        else:
            break
    while math.prod(-(-k // g) for k, g in zip(n_chunks, groups, strict=True)) > MAX_DASK_CHUNKS:
        axis = max(range(len(shape)), key=lambda a: -(-n_chunks[a] // groups[a]))
        groups[axis] *= 2
    out = []
    for n, g, k in zip(shape, grid, groups, strict=True):
        if isinstance(g, int):
            size = g * k
            full, rest = divmod(n, size)
            out.append((size,) * full + ((rest,) if rest else ()))
        else:
            sums = np.add.reduceat(np.asarray(g, dtype=np.int64), np.arange(0, len(g), k))
            out.append(tuple(int(v) for v in sums))
    return tuple(out)


def reader_token(reader: Any) -> str:
    """A name for the reader's data that never hashes pixel data.

    A reader's own ``token`` wins; otherwise a random one (unique per stack,
    kept when the stack is pickled).
    """
    token = reader.token if isinstance(reader, Reader) else getattr(reader, "token", None)
    return str(token) if token else uuid.uuid4().hex


@dataclass
class OpenedSource:
    """What a format back end hands the loader for one stack.

    Attributes
    ----------
    reader : Reader or array-like
        Reader over the source's own axes (see the module docs); a plain
        array-like is adapted by [`as_reader()`][as_reader].
    source : str
        Path or URI that re-creates exactly this stack (``path@series``,
        ``file.czi@2``, ``file://store.zarr/0`` ...).
    format : str
        Format name shown to users.
    axes : str
        Axes of ``reader`` (normally the user's axes, checked against the
        file's own).
    coords : dict
        Coordinates per axis letter (channel names ...).
    attrs : dict
        ``physical_pixel_sizes``, ``scene``, ``scene_name``, ``series``,
        ``level`` ... as the source declares them.
    """

    reader: Any
    source: str
    format: str
    axes: str
    coords: dict[str, Any] = field(default_factory=dict)
    attrs: dict[str, Any] = field(default_factory=dict)
