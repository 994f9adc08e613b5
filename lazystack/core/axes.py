"""The axes model: validation and the mapping between original and canonical axes.

A source is described by an *axes string* of distinct letters from ``STCZYX``
that contains ``Y`` and ``X``, in any order (``"YX"``, ``"XYS"``,
``"TCZYX"`` ...). lazystack exposes every source in the *canonical* order
``SC(Z)YX``:

* ``S`` and ``T`` are merged into one sample axis, ``S`` outer and ``T``
  inner: ``sample = s * n_T + t``;
* a missing ``C`` becomes a singleton channel axis;
* ``Z`` is kept only when the source has it.

Everything here is pure: no I/O, no dask computation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from .errors import AxesError, SampleIndexError, ShapeMismatchError

__all__ = ["VALID_AXES", "AxesModel", "axes_or_none", "check_rank", "validate_axes"]

VALID_AXES = "STCZYX"
"""The accepted axis letters, in canonical order."""


def validate_axes(axes: str) -> str:
    """Validate an axes string and return it upper-cased.

    Parameters
    ----------
    axes : str
        Distinct letters from ``STCZYX`` (either case) that include ``Y``
        and ``X``.

    Returns
    -------
    str
        The upper-cased axes.

    Raises
    ------
    AxesError
        If ``axes`` is not a string, is empty, holds letters outside
        ``STCZYX``, repeats a letter, or lacks ``Y`` or ``X``.
    """
    if not isinstance(axes, str):
        msg = f"axes must be a string of letters from {VALID_AXES!r}, got {axes!r}"
        raise AxesError(msg)
    upper = axes.upper()
    if not upper:
        msg = f"axes must not be empty: give distinct letters from {VALID_AXES!r} including 'Y' and 'X'"
        raise AxesError(msg)
    unknown = sorted({c for c in upper if c not in VALID_AXES})
    if unknown:
        msg = (
            f"invalid axes {axes!r}: unknown letter(s) {''.join(unknown)!r}; "
            f"accepted letters are {VALID_AXES!r} (each at most once, 'Y' and 'X' required)"
        )
        raise AxesError(msg)
    repeated = sorted({c for c in upper if upper.count(c) > 1})
    if repeated:
        msg = f"invalid axes {axes!r}: letter(s) {''.join(repeated)!r} repeated; each of {VALID_AXES!r} may appear once"
        raise AxesError(msg)
    missing = [c for c in "YX" if c not in upper]
    if missing:
        msg = (
            f"invalid axes {axes!r}: missing {''.join(missing)!r}; axes must contain both 'Y' and 'X' "
            f"(accepted letters: {VALID_AXES!r})"
        )
        raise AxesError(msg)
    return upper


def axes_or_none(axes: str) -> str | None:
    """Return ``validate_axes(axes)``, or None when ``axes`` is not valid (for axes a file declares).

    Examples
    --------
    >>> axes_or_none("tzyx"), axes_or_none("QYX")
    ('TZYX', None)
    """
    try:
        return validate_axes(axes)
    except AxesError:
        return None


def check_rank(axes: str, shape: Sequence[int], where: str, declared: str | None = None) -> None:
    """Raise a [`ShapeMismatchError`][ShapeMismatchError] when ``axes`` does not fit ``shape``.

    Parameters
    ----------
    axes : str
        The user's axes.
    shape : sequence of int
        The source's shape.
    where : str
        The source (path, URI) named in the message.
    declared : str, optional
        Axes the source itself declares (OME, ImageJ, NGFF), quoted in the message.
    """
    if len(axes) != len(shape):
        own = f"; the file declares axes {declared!r}" if declared else ""
        msg = (
            f"axes {axes!r} ({len(axes)} letters) do not match {where}: its data has "
            f"{len(shape)} dimension(s), shape {tuple(shape)}{own}"
        )
        raise ShapeMismatchError(msg)


@dataclass(frozen=True)
class AxesModel:
    """Axes of a source and their mapping onto the canonical ``SC(Z)YX`` order.

    Parameters
    ----------
    axes : str
        The source's axes (validated with [`validate_axes()`][validate_axes]).
    shape : tuple of int
        The source's shape, one entry per letter of ``axes``.

    Raises
    ------
    AxesError
        If ``axes`` is invalid.
    ShapeMismatchError
        If ``len(shape) != len(axes)``.

    Examples
    --------
    >>> m = AxesModel("TCYXS", (3, 2, 64, 64, 4))
    >>> m.canonical_axes, m.canonical_shape
    ('SCYX', (12, 2, 64, 64))
    >>> m.sample_to_st(5)
    (1, 2)
    """

    axes: str
    shape: tuple[int, ...]
    _index: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        axes = validate_axes(self.axes)
        shape = tuple(int(n) for n in self.shape)
        if len(shape) != len(axes):
            msg = (
                f"axes {axes!r} have {len(axes)} letter(s) but the data has "
                f"{len(shape)} dimension(s) with shape {shape}; give one letter per dimension"
            )
            raise ShapeMismatchError(msg)
        if any(n < 0 for n in shape):
            msg = f"invalid shape {shape}: sizes must be non-negative"
            raise ShapeMismatchError(msg)
        object.__setattr__(self, "axes", axes)
        object.__setattr__(self, "shape", shape)
        object.__setattr__(self, "_index", {a: i for i, a in enumerate(axes)})

    # -- sizes ---------------------------------------------------------------
    def size(self, axis: str) -> int:
        """Return the size of ``axis`` in the source, 1 when the source lacks it."""
        i = self._index.get(axis)
        return 1 if i is None else self.shape[i]

    def has(self, axis: str) -> bool:
        """Return whether the source has ``axis``."""
        return axis in self._index

    @cached_property
    def n_samples(self) -> int:
        """Number of canonical samples, ``n_S * n_T``."""
        return self.size("S") * self.size("T")

    @cached_property
    def n_channels(self) -> int:
        """Number of channels (1 when the source has no ``C``)."""
        return self.size("C")

    @cached_property
    def spatial_axes(self) -> str:
        """``"ZYX"`` when the source has ``Z``, else ``"YX"``."""
        return "ZYX" if self.has("Z") else "YX"

    @cached_property
    def spatial_shape(self) -> tuple[int, ...]:
        """Sizes of [`spatial_axes`][spatial_axes]."""
        return tuple(self.size(a) for a in self.spatial_axes)

    @cached_property
    def canonical_axes(self) -> str:
        """``"SCZYX"`` or ``"SCYX"``."""
        return "SC" + self.spatial_axes

    @cached_property
    def canonical_shape(self) -> tuple[int, ...]:
        """Shape in [`canonical_axes`][canonical_axes] order."""
        return (self.n_samples, self.n_channels, *self.spatial_shape)

    # -- sample index <-> (s, t) --------------------------------------------
    def sample_to_st(self, sample: int) -> tuple[int, int]:
        """Map a canonical sample index to the original ``(s, t)`` indices.

        Raises
        ------
        SampleIndexError
            If ``sample`` is not in ``range(n_samples)``.
        """
        n = self.n_samples
        if isinstance(sample, bool) or not hasattr(sample, "__index__"):
            msg = f"sample_idx must be an integer in range({n}), got {sample!r}"
            raise SampleIndexError(msg)
        i = int(sample)
        if not 0 <= i < n:
            msg = (
                f"sample_idx {i} is out of range for {n} sample(s) "
                f"(axes {self.axes!r}, shape {self.shape}); accepted: 0 to {n - 1}"
            )
            raise SampleIndexError(msg)
        return divmod(i, self.size("T"))

    def st_to_sample(self, s: int, t: int) -> int:
        """Map original ``(s, t)`` indices to the canonical sample index.

        Raises
        ------
        SampleIndexError
            If ``s`` or ``t`` is outside its axis.
        """
        n_s, n_t = self.size("S"), self.size("T")
        if not (0 <= s < n_s and 0 <= t < n_t):
            msg = f"(s, t) = ({s}, {t}) is out of range for n_S={n_s}, n_T={n_t}"
            raise SampleIndexError(msg)
        return s * n_t + t

    # -- canonical request -> original selection ---------------------------
    def original_key(
        self,
        sample: int,
        channels: slice | int,
        spatial: Sequence[slice],
    ) -> tuple[int | slice, ...]:
        """Selection in original axis order for one canonical request.

        Parameters
        ----------
        sample : int
            Canonical sample index.
        channels : slice or int
            Channel selection (ignored when the source has no ``C``).
        spatial : sequence of slice
            One slice per letter of [`spatial_axes`][spatial_axes].

        Returns
        -------
        tuple
            One entry per original axis: ``S`` and ``T`` are ints, ``C`` the
            channel selection, spatial axes their slices.
        """
        if len(spatial) != len(self.spatial_axes):
            msg = f"expected {len(self.spatial_axes)} spatial slice(s) for {self.spatial_axes!r}, got {len(spatial)}"
            raise ValueError(msg)
        s, t = self.sample_to_st(sample)
        by_axis: dict[str, int | slice] = {"S": s, "T": t, "C": channels}
        by_axis.update(zip(self.spatial_axes, spatial, strict=True))
        return tuple(by_axis[a] for a in self.axes)

    @staticmethod
    def patch_permutation(remaining_axes: str) -> tuple[int, ...]:
        """Permutation putting ``remaining_axes`` (a subset of ``CZYX``) in ``C(Z)YX`` order."""
        order = [a for a in "CZYX" if a in remaining_axes]
        return tuple(remaining_axes.index(a) for a in order)

    # -- whole-array canonical transform -------------------------------------
    def to_canonical(self, x: Any) -> Any:
        """Rearrange an array in original order into canonical ``SC(Z)YX``.

        Works on numpy and dask arrays alike (for dask, merging ``S`` and
        ``T`` keeps the source's chunks along ``T``).

        Parameters
        ----------
        x : array-like
            Array of shape `shape` in the order of `axes`.

        Returns
        -------
        array-like
            The same type as ``x``, of shape [`canonical_shape`][canonical_shape].
        """
        present = [a for a in VALID_AXES if a in self._index]
        x = x.transpose([self._index[a] for a in present])
        # insert singleton S, T, C where the source lacks them
        key: list[Any] = []
        for a in "STC" + self.spatial_axes:
            key.append(slice(None) if a in self._index else None)
        x = x[tuple(key)]
        shape = self.canonical_shape
        if _is_dask(x):
            # merge_chunks=False keeps the source's chunks along T (S becomes 1-chunked)
            return x.reshape(shape, merge_chunks=False)
        return x.reshape(shape)


def _is_dask(x: Any) -> bool:
    return type(x).__module__.startswith("dask.")
