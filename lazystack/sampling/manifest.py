"""Manifests: the exact specs of an epoch in a CSV file, with each source's identity.

One row per patch: ``epoch, index, stack, sample, channels, coords,
patch_size`` (tuples as ``;``-separated integers, empty channels for all)
and the identity of the patch's source: ``source`` (path or URI),
``source_bytes`` and ``source_mtime_ns`` for a local file or folder (the
total size and latest modification of its files: the file a selector names,
``x.czi@2``; the ``.zip`` of a zipped store; every file of a multi-file
OME-TIFF), ``source_sha256`` of the data for a source that is not a file (an
in-memory array), and the stack's ``data_shape``. ``pandas.read_csv`` reads
it as it is. A manifest of an earlier version, which identified a selector
or zip source by a hash of its data and a multi-file OME-TIFF by its master
file alone, still replays while those are unchanged.

[`read_manifest()`][read_manifest] gives the specs back as a [`FixedSampler`][FixedSampler] after
checking that the stacks it is given are the ones recorded: a source whose
size, modification time, content or shape changed is an error that names it.
"""

from __future__ import annotations

import array
import csv
import hashlib
import operator
import os
import stat
import uuid
from collections.abc import Mapping, Sequence, Set
from pathlib import Path
from typing import Any

import numpy as np

from ..core.errors import LazyStackError, SourceFormatError, SourceNotFoundError, UnsupportedSourceError
from ..io.handles import split_source
from .samplers import FixedSampler, PatchSpec, Sampler, StackGeometry, geometry

__all__ = ["ManifestMismatchError", "read_manifest", "source_identity", "write_manifest"]

COLUMNS = (
    "epoch",
    "index",
    "stack",
    "sample",
    "channels",
    "coords",
    "patch_size",
    "source",
    "data_shape",
    "source_bytes",
    "source_mtime_ns",
    "source_sha256",
)

#: Sources that are not files are hashed when their data is at most this large.
MAX_HASH_BYTES = 256 * 2**20


class ManifestMismatchError(LazyStackError, ValueError):
    """The stacks given to replay a manifest are not the ones it recorded."""


def _local_paths(stack: Any) -> list[Path]:
    """The local files or folders a stack reads (empty for a remote or in-memory source).

    A chained URL (a zipped store: ``zip://0::file:///a.zip``) is its outer
    file, a selector (``file.czi@2#level=1``, ``a.tif@1``) is removed, and a
    multi-file OME-TIFF adds the other files its master lists.
    """
    source = getattr(stack, "source", "")
    if not isinstance(source, (str, os.PathLike)) or not isinstance(text := os.fspath(source), str):
        return []
    if getattr(stack, "format", None) == "array" and text == "array":  # in memory, whatever the folder holds
        return []
    if "://" in text and "::" in text:  # the outer file of a chained URL
        text = text.rsplit("::", 1)[-1]
    if text.startswith("file://"):
        text = text[len("file://") :]
    elif "://" in text:
        return []
    text = split_source(text)[0]
    path = Path(text)
    if not text or not path.exists():
        return []
    if getattr(stack, "format", None) in ("tiff", "bioio") and path.is_file():  # bioio reads OME-TIFF by tifffile
        from ..sources.tiff import source_files

        return [Path(f) for f in source_files(text)]
    return [path]


def _hash_stack(stack: Any) -> str:
    shape = tuple(stack.data_shape)
    digest = hashlib.sha256()
    for s in range(shape[0]):
        patch = stack.extract_patch(s, None, (0,) * (len(shape) - 2), shape[2:])
        digest.update(patch.tobytes())
    return digest.hexdigest()


def source_identity(stack: Any) -> dict[str, str]:
    """What identifies a stack's data: source, shape, and file size and time or a content hash.

    Parameters
    ----------
    stack : ImageStack
        A stack with ``source`` and ``data_shape``.

    Returns
    -------
    dict of str
        ``source``, ``data_shape``, ``source_bytes``, ``source_mtime_ns``
        (the local files and folders the stack reads, see the module
        documentation) and ``source_sha256`` (other sources up to 256 MiB);
        fields that do not apply are empty.
    """
    return _identity(stack, _local_paths(stack))


def _legacy_paths(stack: Any) -> list[Path]:
    """What earlier versions identified: the source as a path, if it exists as given (no selector, zip, other files)."""
    source = getattr(stack, "source", "")
    if not isinstance(source, (str, os.PathLike)) or not isinstance(text := os.fspath(source), str):
        return []
    if text.startswith("file://"):
        text = text[len("file://") :]
    elif "://" in text:
        return []
    return [Path(text)] if Path(text).exists() else []


def _identity(stack: Any, paths: list[Path]) -> dict[str, str]:
    """[`source_identity()`][source_identity] of ``stack`` with ``paths`` the local files or folders it reads."""
    source = getattr(stack, "source", "")
    ident = dict.fromkeys(COLUMNS[7:], "") | {"source": str(source), "data_shape": _fmt(stack.data_shape)}
    if paths:
        size, mtime = 0, 0
        for path in paths:
            if path.is_dir():
                mtime = max(mtime, path.stat().st_mtime_ns)
                for root, _dirs, files in os.walk(path):
                    for name in files:
                        st = os.stat(os.path.join(root, name))
                        size += st.st_size
                        mtime = max(mtime, st.st_mtime_ns)
            else:
                st = path.stat()
                size, mtime = size + st.st_size, max(mtime, st.st_mtime_ns)
        ident["source_bytes"], ident["source_mtime_ns"] = str(size), str(mtime)
    elif int(getattr(stack, "nbytes", MAX_HASH_BYTES + 1)) <= MAX_HASH_BYTES:
        ident["source_sha256"] = _hash_stack(stack)
    return ident


def _manifest_path(path: Any, who: str) -> Path:
    """``Path(path)``, refusing what is not a str or os.PathLike of str (bytes: decode them with os.fsdecode())."""
    if not isinstance(path, (str, os.PathLike)) or not isinstance(os.fspath(path), str):
        hint = " (decode bytes with os.fsdecode())" if isinstance(path, (bytes, bytearray, os.PathLike)) else ""
        msg = (
            f"{who} expects the manifest path as str or os.PathLike (of str), got {type(path).__name__}: {path!r}{hint}"
        )
        raise TypeError(msg)
    return Path(path)


def _legacy_matches(recorded: dict[str, str], stack: Any) -> bool:
    """Whether ``recorded`` is ``stack``'s identity as earlier versions recorded it (path as given, or a hash)."""
    legacy = _legacy_paths(stack)
    if legacy == _local_paths(stack) or not (legacy or recorded["source_sha256"]):
        return False  # the same identity, or one with neither size nor hash recorded to compare
    try:
        return not _changed(recorded, _identity(stack, legacy))
    except (LazyStackError, OSError):  # the data cannot be read (a changed file): not the recorded source
        return False


def _changed(recorded: dict[str, str], now: dict[str, str]) -> list[str]:
    """The identity fields that differ (a field the manifest left empty is not compared, but the source is)."""
    return [
        c for c in COLUMNS[7:] if (recorded[c] and now[c] != recorded[c]) or (c == "source" and now[c] != recorded[c])
    ]


def _check_writable(out: Path, stacks: Sequence[Any]) -> None:
    """Refuse to write a manifest over or into a source of ``stacks``, or onto something not a regular file."""
    from ..ops.writing import _check_not_a_source

    _check_not_a_source(out.absolute(), stacks, who="write_manifest")  # ``..`` resolved as the system does
    if out.exists() and not out.is_file():
        msg = f"manifest path {str(out)!r} exists and is not a regular file: give a path for a new CSV file"
        raise UnsupportedSourceError(msg)


def _fmt(values: Sequence[int] | None) -> str:
    return "" if values is None else ";".join(str(int(v)) for v in values)


def _int(text: str | None, column: str, where: str, accepted: str) -> int:
    try:
        return int(text)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        msg = f"{where}: {column} {text!r} is not an integer (accepted: {accepted})"
        raise SourceFormatError(msg) from None


def _field(row: dict[str, str], column: str, where: str) -> int:
    """One non-negative integer column of a manifest row."""
    value = _int(row[column], column, where, "a non-negative integer")
    if value < 0:
        msg = f"{where}: {column} {value} is negative (accepted: a non-negative integer)"
        raise SourceFormatError(msg)
    return value


def _tuple(
    row: dict[str, str], column: str, where: str, shared: dict[str, tuple[int, ...]] | None = None
) -> tuple[int, ...]:
    """A ``;``-separated integer column of a manifest row (empty: ``()``)."""
    text = row[column] or ""
    if shared is not None and text in shared:
        return shared[text]
    accepted = "integers separated by ';', e.g. '0;12;40'"
    value = tuple(_int(v, column, where, accepted) for v in text.split(";")) if text else ()
    if shared is not None:
        shared[text] = value
    return value


def _check_spec(spec: PatchSpec, geometries: Sequence[StackGeometry], stacks: Sequence[Any], where: str) -> None:
    """A recorded spec must be one a sampler over ``stacks`` could give: its stack, sample, channels and place."""
    if spec.stack >= len(stacks):
        n = len(stacks)
        msg = f"{where}: stack {spec.stack} is out of range: {n} stack(s) were given (accepted 0 to {n - 1})"
        raise ManifestMismatchError(msg)
    g = geometries[spec.stack]
    source = getattr(stacks[spec.stack], "source", "?")
    if spec.sample >= g.n_samples:
        msg = (
            f"{where}: sample {spec.sample} is out of range for stack {spec.stack} ({source!r}, "
            f"{g.n_samples} sample(s); accepted 0 to {g.n_samples - 1})"
        )
        raise ManifestMismatchError(msg)
    bad = [c for c in spec.channels or () if not 0 <= c < g.n_channels]
    if bad:
        msg = (
            f"{where}: channel {bad[0]} is out of range for stack {spec.stack} ({source!r}, {g.n_channels} channel(s); "
            f"accepted 0 to {g.n_channels - 1})"
        )
        raise ManifestMismatchError(msg)
    ndim = len(g.spatial_shape)
    # a patch overhanging the image (negative coords: centred near the border) is one extract_patch pads; one that
    # misses the image would replay zeros only
    outside = len(spec.coords) != ndim or any(
        not -p < c < n for c, p, n in zip(spec.coords, spec.patch_size, g.spatial_shape, strict=False)
    )
    if outside or len(spec.patch_size) != ndim or any(n <= 0 for n in spec.patch_size):
        msg = (
            f"{where}: coords {spec.coords} and patch_size {spec.patch_size} do not place a patch in stack "
            f"{spec.stack} ({source!r}, spatial shape {g.spatial_shape}): accepted {ndim} positive sizes and "
            f"{ndim} coords placing the patch over the image (-size < coord < extent, so inside the image for a "
            "non-negative coord)"
        )
        raise ManifestMismatchError(msg)


def _number(name: str, value: Any) -> int:
    """A non-negative integer (epoch, index) to record: not a boolean, which a CSV would hold as ``True``."""
    try:
        if isinstance(value, (bool, np.bool_)) or str(getattr(value, "dtype", "")) in ("bool", "torch.bool"):
            raise TypeError  # a 0-d boolean array or tensor too: operator.index takes some for 0 / 1
        number = operator.index(value)
    except TypeError:
        msg = f"{name} must be a non-negative integer, got {value!r} ({type(value).__name__})"
        raise TypeError(msg) from None
    if number < 0:
        msg = f"{name} must be a non-negative integer, got {value!r}"
        raise ValueError(msg)
    return number


def _numbers(name: str, values: Any) -> list[int]:
    """A sequence of [`_number()`][_number] values (a single number or a string is refused, naming it)."""
    if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__") or getattr(values, "ndim", None) == 0:
        msg = f"{name} must be a sequence of non-negative integers, got {values!r} ({type(values).__name__})"
        raise TypeError(msg)
    if isinstance(values, (Mapping, Set)):  # iterating takes a dict's keys, a set's order is arbitrary
        kind = "a mapping (iterating it takes its keys)" if isinstance(values, Mapping) else "an unordered set"
        msg = (
            f"{name} must be a sequence of non-negative integers, got {values!r} ({type(values).__name__}, {kind}): "
            f"accepted are a list, tuple, range, array or tensor of integers (e.g. sorted({name}) or list(...))"
        )
        raise TypeError(msg)
    return [_number(f"{name} item", v) for v in values]


def write_manifest(
    path: str | os.PathLike[str],
    sampler: Sampler,
    stacks: Sequence[Any],
    *,
    epochs: Sequence[int] = (0,),
    indices: Sequence[int] | None = None,
) -> Path:
    """Write the specs of one or more epochs, with their sources' identity, to a CSV file.

    Parameters
    ----------
    path : str or os.PathLike
        File to write (replaced if it exists, once the new one is complete:
        it is written beside as a hidden ``.name.partial-<id>`` file, then
        renamed, keeping the replaced file's permissions; through a symlink,
        the file it names is replaced and the link kept).
    sampler : Sampler
        The sampler.
    stacks : sequence of ImageStack
        The stacks the sampler was built over.
    epochs : sequence of int
        Epochs to record (default: epoch 0).
    indices : sequence of int, optional
        Indices to record (default: the whole epoch).

    Returns
    -------
    pathlib.Path
        The file written.

    Raises
    ------
    UnsupportedSourceError
        If ``path`` is or lies inside a local source of ``stacks`` (symlinks
        resolved; a Zarr store as a whole), or exists and is not a regular
        file (a folder, a FIFO): a manifest never replaces a source.
    TypeError
        If ``path`` is not a str or os.PathLike of str (a ``bytes`` path:
        decode it with ``os.fsdecode()``), or ``epochs`` or ``indices`` is
        not a sequence of integers (a boolean is not one; a mapping, whose
        iteration gives its keys, and a set, whose order is arbitrary, are
        not sequences).
    ValueError
        If an epoch or index is negative.
    """
    epochs = _numbers("epochs", epochs)
    indices = None if indices is None else _numbers("indices", indices)
    out = _manifest_path(path, "write_manifest")
    _check_writable(out, stacks)
    identities = [source_identity(s) for s in stacks]
    # written beside, then renamed over ``out``: an interrupted write leaves the previous file (or none), never a
    # manifest cut at a row boundary that reads back as a shorter epoch
    # beside the file a symlink names (the link stays a link, as when the file was opened for writing), with the
    # replaced file's permissions
    real = Path(os.path.realpath(out))
    partial = real.with_name(f".{real.name}.partial-{uuid.uuid4().hex[:12]}")
    try:
        with partial.open("w", newline="") as f:
            if real.is_file():
                os.chmod(f.fileno(), stat.S_IMODE(real.stat().st_mode))
            writer = csv.writer(f)
            writer.writerow(COLUMNS)
            for epoch in epochs:
                idx = range(len(sampler)) if indices is None else indices
                for i in idx:
                    spec = sampler.spec(i, epoch)  # channels, coords and patch_size as ;-separated integers
                    identity = [identities[spec.stack][c] for c in COLUMNS[7:]]
                    writer.writerow([epoch, i, spec.stack, spec.sample, *map(_fmt, spec[2:]), *identity])
        partial.replace(real)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return out


def read_manifest(
    path: str | os.PathLike[str], stacks: Sequence[Any], *, epoch: int | None = None, check: bool = True
) -> FixedSampler:
    """Read a manifest back as a [`FixedSampler`][FixedSampler], checking the stacks are the recorded ones.

    Parameters
    ----------
    path : str or os.PathLike
        A file written by [`write_manifest()`][write_manifest].
    stacks : sequence of ImageStack
        The stacks to replay it over, in the recorded order.
    epoch : int, optional
        The epoch to replay when the file holds several (default: all rows, in order).
    check : bool
        Compare each recorded source's identity with the stack's now (default True).

    Returns
    -------
    FixedSampler
        The recorded specs, in the file's order.

    Raises
    ------
    ManifestMismatchError
        If a stack is missing or its source, shape, size, modification time
        or content differs from the record (the message names the source),
        or a row's sample, channels or patch do not fit its stack (with
        ``check=False`` too), or ``epoch`` is given and the file records
        other epochs but not that one (the message lists them).
    SourceFormatError
        If the file is not a manifest (not a regular UTF-8 CSV file with the
        columns, or a field that is not a non-negative integer).
    SourceNotFoundError
        If the file does not exist.
    TypeError
        If ``path`` is not a str or os.PathLike of str (a ``bytes`` path:
        decode it with ``os.fsdecode()``), or ``epoch`` is not an integer.
    """
    epoch = None if epoch is None else _number("epoch", epoch)
    p = _manifest_path(path, "read_manifest")
    try:
        mode = p.stat().st_mode
    except FileNotFoundError:
        msg = f"manifest {str(p)!r} does not exist"
        raise SourceNotFoundError(msg) from None
    if not stat.S_ISREG(mode):  # a FIFO or a device would block or never end
        msg = f"manifest {str(p)!r} is not a regular file: expected a CSV file written by write_manifest"
        raise SourceFormatError(msg)
    geometries = [geometry(s) for s in stacks]
    specs: list[PatchSpec] = []
    lines = array.array("q")  # each spec's line, for the messages
    recorded: dict[int, dict[str, str]] = {}
    shared: dict[str, tuple[int, ...]] = {}  # the few distinct channels / patch sizes: one tuple each
    other_epochs: set[int] = set()  # the epochs recorded but not asked for (to name them when none is)
    try:
        with p.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            missing = [c for c in COLUMNS if c not in (reader.fieldnames or ())]
            if missing:
                msg = (
                    f"{str(p)!r} is not a lazystack manifest: columns {missing} are missing (expected {list(COLUMNS)})"
                )
                raise SourceFormatError(msg)
            for r in reader:  # one row at a time: only the specs are kept
                where = f"manifest {str(p)!r}, line {reader.line_num}"
                if epoch is not None:
                    row_epoch = _field(r, "epoch", where)
                    if row_epoch != epoch:
                        other_epochs.add(row_epoch)
                        continue
                k = _field(r, "stack", where)
                spec = PatchSpec(
                    k,
                    _field(r, "sample", where),
                    _tuple(r, "channels", where, shared) or None,
                    _tuple(r, "coords", where),
                    _tuple(r, "patch_size", where, shared),
                )
                specs.append(spec)
                lines.append(reader.line_num)
                if k not in recorded:
                    recorded[k] = {c: r[c] or "" for c in COLUMNS[7:]}
    except UnicodeDecodeError as exc:
        msg = f"{str(p)!r} is not a lazystack manifest: not UTF-8 text ({exc.reason} at byte {exc.start})"
        raise SourceFormatError(msg) from None
    except csv.Error as exc:
        msg = f"{str(p)!r} is not a lazystack manifest: not CSV ({exc})"
        raise SourceFormatError(msg) from None
    if epoch is not None and not specs and other_epochs:  # an empty sampler would train on nothing, silently
        listed = sorted(other_epochs)
        shown = ", ".join(map(str, listed[:20])) + (f" ... ({len(listed)} epochs)" if len(listed) > 20 else "")
        msg = (
            f"manifest {str(p)!r} records no row of epoch {epoch}: it records epoch(s) {shown}. Pass one of those, "
            "or epoch=None for all rows (write_manifest(..., epochs=[...]) records the epochs to replay)"
        )
        raise ManifestMismatchError(msg)
    if check:
        for k, rec in sorted(recorded.items()):
            if k >= len(stacks):
                msg = (
                    f"manifest {str(p)!r} uses stack {k} ({rec['source']!r}) but only {len(stacks)} stack(s) were given"
                )
                raise ManifestMismatchError(msg)
            now = source_identity(stacks[k])
            changed = _changed(rec, now)
            if changed and _legacy_matches(rec, stacks[k]):
                changed = []  # recorded by an earlier lazystack, which identified the source by its path as given
            if changed:
                detail = ", ".join(f"{c} {rec[c]!r} -> {now[c]!r}" for c in changed)
                msg = (
                    f"stack {k}'s source {rec['source']!r} changed since manifest {str(p)!r} was written ({detail}): "
                    "replaying it would not give the recorded patches"
                )
                raise ManifestMismatchError(msg)
    for spec, line in zip(specs, lines, strict=True):
        _check_spec(spec, geometries, stacks, f"manifest {str(p)!r}, line {line}")
    return FixedSampler(specs)
