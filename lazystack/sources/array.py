"""Array sources: numpy memory maps pickled as their file, not their data.

Every other array-like (numpy, dask, zarr, h5py ...) is used as it is; an
in-memory numpy array pickles with its data, which is expected. A top-level
``np.memmap`` (as returned by ``np.memmap(...)`` or ``np.load(path,
mmap_mode="r")``) is wrapped so that a stack pickles as ``(filename, dtype,
offset, shape, order)`` and re-maps the file read-only in the process that
unpickles it. The file's ``(inode, size, mtime)`` when the stack was made is
part of that recipe: mapping again a file replaced or rewritten since (in a
dask worker, or after ``close()``) raises
[`SourceReadError`][lazystack.SourceReadError] instead of reading other data
than the creating process, whose mapping still shows the old file. A
writable memory map (``mode="r+"`` or ``"w+"``) is written through by its
owner, whose writes every process mapping the file sees: only a file replaced
(new inode) or resized is refused there.
"""

from __future__ import annotations

import mmap
import os
from typing import Any, Literal

import numpy as np

from ..io.handles import check_mapped_size, check_regular_file, check_stamp, file_stamp, mapping_of
from ..io.reader import Reader, ReaderCapabilities

__all__ = ["MemmapReader", "as_reader", "propose_axes"]


class MemmapReader(Reader):
    """Read-only view of a memory-mapped file that pickles as its recipe (a reader, see
    [`lazystack.io.reader`][lazystack.io.reader]).
    """

    shape: tuple[int, ...]
    dtype: np.dtype[Any]
    token: str
    capabilities: ReaderCapabilities

    def __init__(
        self, filename: str, dtype: Any, shape: tuple[int, ...], offset: int, order: Literal["C", "F"]
    ) -> None:
        self.filename = filename
        self.dtype = np.dtype(dtype)
        self.shape = tuple(shape)
        self.offset = int(offset)
        self.order = order
        self._array: np.memmap[Any, Any] | None = None
        self._end = self.offset + self.dtype.itemsize * int(np.prod(self.shape, dtype=np.int64))
        stat = os.stat(filename)
        #: The file when the stack was made: a process mapping it again (a dask worker, after ``close()``)
        #: refuses a file replaced or rewritten since, as the creating process still reads the old one.
        self.stamp = file_stamp(stat)
        #: True for a user's writable memory map (see from_memmap): its mtime is not part of the check.
        self.written_through = False
        self.token = f"memmap-{filename}-{stat.st_mtime_ns}-{stat.st_size}-{offset}-{self.dtype.str}-{shape}"
        self.capabilities = ReaderCapabilities(memory_mapped=True, compressed=False)

    @classmethod
    def from_memmap(cls, arr: np.memmap[Any, Any]) -> MemmapReader:
        """Wrap a top-level ``np.memmap``, reusing its mapping in this process."""
        order: Literal["C", "F"] = "F" if arr.flags.f_contiguous and not arr.flags.c_contiguous else "C"
        reader = cls(str(arr.filename), arr.dtype, arr.shape, arr.offset, order)
        reader._array = arr
        # a writable shared mapping ("r+", "w+"): its owner's writes change the file's mtime, and a process mapping
        # it again sees them as this one does, so only a file replaced (inode) or resized is refused there
        reader.written_through = getattr(arr, "mode", "r") in ("r+", "w+")
        return reader

    @property
    def array(self) -> np.memmap[Any, Any]:
        """The mapping (opened read-only on first use in each process)."""
        array = self._array  # one read: close() in another thread may reset the attribute at any time
        if array is None:
            what = f"memory-mapped file {self.filename!r}"
            st = check_regular_file(self.filename, what, "the .npy / raw file the stack was made from")
            stamp = getattr(self, "stamp", None)
            if stamp is not None and getattr(self, "written_through", False):
                stamp = (stamp[0], stamp[1], int(st.st_mtime_ns))
            check_stamp(what, stamp, st)
            array = np.memmap(
                self.filename, dtype=self.dtype, mode="r", offset=self.offset, shape=self.shape, order=self.order
            )
            self._array = array
        return array

    def __getitem__(self, key: Any) -> np.ndarray:
        """Read a region (a copy, so the mapping can be closed safely).

        Raises
        ------
        SourceNotFoundError
            If the file is gone when it is mapped again (another process).
        SourceReadError
            If the file was replaced or rewritten since the stack was made and
            is mapped again, or was truncated since it was mapped (reading the lost
            pages would kill the interpreter with SIGBUS).
        """
        array = self.array
        mapping = mapping_of(array)
        if mapping is not None:
            check_mapped_size(mapping, self._end, f"memory-mapped file {self.filename!r}")
        return np.array(array[key])

    def close(self) -> None:
        """Drop the mapping (it is re-created on next use)."""
        self._array = None

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_array"] = None
        return state


def as_reader(arr: Any) -> Any:
    """Return the chunk reader for an array-like given to ``load_arrays``.

    A top-level ``np.memmap`` becomes a [`MemmapReader`][MemmapReader]; anything else
    is returned unchanged.
    """
    if isinstance(arr, np.memmap) and isinstance(arr.base, mmap.mmap) and arr.filename:
        return MemmapReader.from_memmap(arr)
    return arr


def propose_axes(path: str | os.PathLike[str]) -> str | None:
    """``YX`` for a 2-D ``.npy`` file, else None (a ``.npy`` declares no axes)."""
    check_regular_file(os.fspath(path), ".npy file", "a .npy file")  # np.load would block on a FIFO
    try:
        array = np.load(os.fspath(path), mmap_mode="r", allow_pickle=False)
    except ValueError:
        return None
    return "YX" if array.ndim == 2 else None
