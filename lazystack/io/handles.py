"""What file back ends share: local paths of sources, the stamp of an opened file and a guard for memory maps.

[`local_path()`][local_path] is the one place a path or a ``file:`` URL
becomes the local path every loader and the writer open (``~`` expanded,
``file:/``, ``file:///``, ``file://localhost/`` and percent-encoding as the
standard library reads them; a host, a query or a fragment refused).

Per-process file handles are [`FileManager`][lazystack.io.process.FileManager]s.

The reader contract itself (shape, dtype, chunk grid, region reads,
capabilities as data) is [`lazystack.io.reader.Reader`][lazystack.io.reader.Reader].
"""

from __future__ import annotations

import errno
import mmap
import os
import re
import stat
import sys
from typing import Any
from urllib.parse import unquote, urlsplit
from urllib.request import url2pathname

import numpy as np

from ..core.errors import SourceFormatError, SourceNotFoundError, SourceReadError, UnsupportedSourceError

__all__ = [
    "check_mapped_size",
    "check_regular_file",
    "check_stamp",
    "file_stamp",
    "is_file_url",
    "local_path",
    "mapping_of",
    "selector_hint",
    "split_source",
    "system_path",
]

#: a URL of another scheme than ``file`` (``s3://``, ``zip://...::file:///a.zip``): not a local path
_REMOTE = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*://")
#: a fragment that is a pyramid level selector (``file:///a.czi@1#level=2``)
_LEVEL = re.compile(r"^level=\d+$")
#: what every refusal of a file: URL says is accepted
_ACCEPTED = (
    "accepted: a local path ('~' expanded) or a file: URL of an absolute path on this machine, percent-encoded "
    "('file:///data/a%20b.tif', 'file://localhost/data/x.zarr', 'file:/data/x.zarr')"
)
_SUFFIX = re.compile(r"^(?P<path>.+?)(?:@(?P<index>\d+))?(?:#level=(?P<level>\d+))?$")


def check_mapped_size(raw: mmap.mmap, end: int, what: str) -> None:
    """Raise SourceReadError when the file under a memory map is now shorter than ``end`` bytes.

    Reading a mapped page past the end of a file truncated after it was
    mapped kills the process with SIGBUS; ``mmap.size()`` is an ``fstat`` of
    the mapping's own descriptor (about a microsecond).

    Parameters
    ----------
    raw : mmap.mmap
        The mapping (``mapping_of()`` of a ``np.memmap``).
    end : int
        Offset in the file just past the mapped data.
    what : str
        Names the file in the message.
    """
    try:
        size = raw.size()
    except (OSError, ValueError):  # closed mapping: numpy raises its own error on access
        return
    if size < end:
        msg = (
            f"{what} was truncated since it was opened: its mapped data need {end} bytes, the file now has {size} bytes"
        )
        raise SourceReadError(msg)


def _kind(mode: int) -> str:
    """What a file that is not a regular file is (for messages)."""
    for test, name in (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO (named pipe)"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return name
    return "not a regular file"


def check_regular_file(path: str, what: str, accepted: str, *, selector: str | None = None) -> os.stat_result:
    """``os.stat(path)``, refusing anything but a regular file before it is opened.

    Opening a FIFO (named pipe) for reading blocks until a writer appears, a
    device such as ``/dev/zero`` reads without end, and a directory cannot be
    read as a file: a file name like ``x.tif`` promises none of this. So a
    source is stat-ed (which never blocks) before any reader opens it.

    Parameters
    ----------
    path : str
        The file (symbolic links are followed).
    what : str
        What the file should be, for the message (``"TIFF file"``).
    accepted : str
        What would have been accepted (``"a .tif / .tiff file"``).
    selector : str, optional
        What a number after ``@`` selects in this format (``"series"``): a
        missing ``"file@N"`` whose ``file`` exists is then explained by
        [`selector_hint()`][selector_hint].

    Returns
    -------
    os.stat_result
        The file's status.

    Raises
    ------
    SourceNotFoundError
        If ``path`` does not exist (or is a dangling or looping symbolic link, or a path
        through a file or a looping link, or a name too long for the file system).
    SourceFormatError
        If ``path`` is a directory, a FIFO, a device or a socket.
    SourceReadError
        If it cannot be stat-ed for another reason (permission denied on a folder of its path).
    """
    try:
        st = os.stat(path)
    except OSError as exc:
        if os.path.islink(path) and not isinstance(exc, FileNotFoundError):
            msg = f"{what} {path!r} is a symbolic link that leads nowhere ({exc.strerror}); expected {accepted}"
            raise SourceNotFoundError(msg) from exc
        # no such file: a missing name, a path through a file (ENOTDIR) or a looping link (ELOOP), a name too long
        if isinstance(exc, FileNotFoundError | NotADirectoryError) or exc.errno in (errno.ELOOP, errno.ENAMETOOLONG):
            why = "" if isinstance(exc, FileNotFoundError) else f" ({exc.strerror})"
            msg = f"{what} not found: {path!r}{why}" + (selector_hint(path, selector) if selector else "")
            raise SourceNotFoundError(msg) from exc
        msg = f"cannot read {what} {path!r}: {exc}"
        raise SourceReadError(msg) from exc
    if not stat.S_ISREG(st.st_mode):
        msg = f"{path!r} is {_kind(st.st_mode)}, not a regular file: expected {accepted}"
        raise SourceFormatError(msg)
    return st


def mapping_of(array: Any) -> mmap.mmap | None:
    """The ``mmap.mmap`` a memory-mapped numpy array (or a view of one) reads from, else None.

    ``np.memmap`` builds its array on the ``mmap.mmap`` object, so the end of
    the chain of ``ndarray.base`` (public) is that mapping; a view's chain
    goes through the arrays it was taken from.

    Parameters
    ----------
    array : Any
        Any object (``np.memmap``, ``np.load(..., mmap_mode="r")`` or a view of one).

    Returns
    -------
    mmap.mmap or None
        The mapping, or None for an array that is not backed by one.
    """
    base = array
    while isinstance(base, np.ndarray):
        base = base.base
    return base if isinstance(base, mmap.mmap) else None


def file_stamp(st: os.stat_result) -> tuple[int, int, int]:
    """``(st_ino, st_size, st_mtime_ns)``: what identifies the file a stack was opened on."""
    return int(st.st_ino), int(st.st_size), int(st.st_mtime_ns)


def check_stamp(what: str, stamp: tuple[int, int, int] | None, st: os.stat_result) -> None:
    """Raise SourceReadError when the file ``st`` describes is not the one a stack was opened on.

    A file replaced (renamed over: new inode) or rewritten (new size or
    modification time) after it was opened would otherwise be read as if it
    were the same file, silently returning other data (or mixing cached
    chunks of the old file with reads of the new one).

    Parameters
    ----------
    what : str
        Names the file in the message (``"TIFF file 'a.tif'"``).
    stamp : tuple of int or None
        [`file_stamp()`][file_stamp] when the stack was opened (None: not checked).
    st : os.stat_result
        The file now.
    """
    if stamp is None:
        return
    now = file_stamp(st)
    if tuple(stamp) != now:
        changed = [n for n, a, b in zip(("inode", "size", "mtime_ns"), stamp, now, strict=True) if a != b]
        msg = (
            f"{what} changed since the stack was opened ({', '.join(changed)}: {tuple(stamp)} -> {now}, "
            "as (inode, size, mtime_ns)); load it again to read the new file"
        )
        raise SourceReadError(msg)


def selector_hint(path: str, what: str) -> str:
    """What to say when ``path`` does not exist but its part before the last ``@`` does (a bad selector).

    Parameters
    ----------
    path : str
        The path asked for, e.g. ``"file.tif@-1"``.
    what : str
        What the number after ``@`` selects (``"series"``, ``"scene"``).

    Returns
    -------
    str
        ``"; '...' exists: ..."`` naming the accepted selectors, or ``""``.
    """
    base, _, suffix = path.rpartition("@")
    if not base or not os.path.isfile(base):
        return ""
    return (
        f"; {base!r} exists, but {'@' + suffix!r} selects nothing: accepted '@N' for {what} N (0, 1 ...), "
        "optionally followed by '#level=K'"
    )


def split_source(path: str) -> tuple[str, int | None, int | None]:
    """``"file@2#level=1"`` -> ``("file", 2, 1)`` (scene / series index and level optional).

    A path that exists as given is returned whole, ``(path, None, None)``.
    """
    m = _SUFFIX.match(path)
    if m is None or os.path.exists(path):
        return path, None, None
    index, level = m["index"], m["level"]
    return m["path"], None if index is None else int(index), None if level is None else int(level)


def system_path(path: str) -> str:
    """The absolute form of a local ``path`` that names what the system opens for it (``..`` after a symlink).

    ``os.path.abspath`` removes ``..`` textually: ``link/../x`` becomes ``x``
    beside ``link``, but the system resolves ``link`` first, so ``link/..``
    is the parent of the link's *target*. Here the part of ``path`` up to its
    last ``..`` is resolved by the system (``os.path.realpath``); the rest is
    kept as written (symbolic links there are not resolved, so a path without
    ``..`` is simply ``os.path.abspath(path)``).

    Parameters
    ----------
    path : str
        A local path (``~`` expanded), relative to the current directory or absolute.

    Returns
    -------
    str
        The absolute path.

    Examples
    --------
    >>> system_path("/data/images/../x.tif")  # no symlink on the way: as abspath
    '/data/x.tif'
    """
    path = os.path.expanduser(path)
    full = path if os.path.isabs(path) else os.path.join(os.getcwd(), path)  # getcwd() raises in a removed folder
    parts = full.split(os.sep)
    if ".." not in parts:
        return os.path.abspath(full)
    last = len(parts) - 1 - parts[::-1].index("..")
    head = os.path.realpath(os.sep.join(parts[: last + 1]) or os.sep)
    return os.path.abspath(os.path.join(head, *parts[last + 1 :]))


def is_file_url(text: str) -> bool:
    """Whether ``text`` is a ``file:`` URL: ``file:`` (any case) followed by ``/``.

    ``file:/abs``, ``file:///abs`` and ``file://host/abs`` are URLs (RFC 8089);
    ``file:x`` (no ``/``) is not one: it is the relative path ``file:x``.

    Parameters
    ----------
    text : str
        A path or a URL.

    Returns
    -------
    bool
        True for a ``file:`` URL.
    """
    return text[: len("file:/")].lower() == "file:/"


def local_path(
    source: str | os.PathLike[str], *, who: str = "lazystack", selector: bool = False, reading: bool = False
) -> str | None:
    """The local path ``source`` names: a path (``~`` expanded) or a ``file:`` URL; None for a remote URL.

    Every loader and [`write_ome_zarr()`][lazystack.write_ome_zarr] read
    their paths here, so one string names one file everywhere:

    * a ``file:`` URL ([`is_file_url()`][is_file_url]) is read as the
      standard library reads it: ``urllib.parse.urlsplit`` then
      ``urllib.request.url2pathname`` of its path, so ``file:/abs``,
      ``file:///abs`` and ``file://localhost/abs`` are ``/abs`` and
      ``%20`` is a space (a ``%`` in a file name is written ``%25``; on
      POSIX an escape that is not UTF-8, ``%FF``, is that byte of the name,
      as Python 3.14's ``url2pathname`` reads it). No
      ``~`` expansion in a URL (``file:///~/x`` is ``/~/x``).
    * a plain path is expanded as ``os.path.expanduser`` does (``~/x.tif``
      is ``$HOME/x.tif``), as fsspec and pandas do; tifffile and
      ``zarr.storage.LocalStore`` do not expand, but lazystack's Zarr source
      and writer always have, so every loader now does. Nothing else of a
      plain path is interpreted (``a%20b.tif`` is that name).
    * a URL of another scheme (``s3://``, ``https://``, a chained
      ``zip://...::file:///a.zip``) gives None: the caller handles it.

    ``..`` is kept as written ([`system_path()`][system_path] resolves it).

    Parameters
    ----------
    source : str or os.PathLike of str
        The path or URL.
    who : str
        The function asking, named in messages (``"load_tiffs"``).
    selector : bool
        Whether the caller takes a ``#level=K`` pyramid level selector: a
        URL's fragment ``level=K`` is then kept at the end of the path
        (``file:///a.czi@1#level=2`` -> ``/a.czi@1#level=2``); any other
        fragment is refused.
    reading : bool
        Whether the caller opens an existing source (every loader; not the
        writer). A local Zarr stack names its source ``"file://"`` + its path
        as it is, not percent-encoded (``file:///d/x#1/s.zarr``,
        ``file:///d/p%41/s.zarr``), and manifests record it: so that a stack's
        own source re-opens that stack, a ``file:///`` URL whose standard
        reading names nothing that exists (or is refused for a ``?``, a ``#``,
        a tab or a NUL) but whose text after ``file://`` names an existing
        file or Zarr store is read as that text. When both readings exist,
        the standard one is taken.

    Returns
    -------
    str or None
        The local path, or None for a URL of another scheme.

    Raises
    ------
    UnsupportedSourceError
        For an empty path, or a ``file:`` URL naming a host other than
        ``localhost``, holding a query (``?q=1``), a fragment (``#x``; a
        ``#level=K`` selector is taken when ``selector``), no path, a tab or
        a newline (which URL parsing drops) or a NUL character (``%00``).
    TypeError
        If ``source`` is not a str or an os.PathLike of str.

    Examples
    --------
    >>> local_path("file:///data/a%20b.zarr"), local_path("file://localhost/data/x.tif")
    ('/data/a b.zarr', '/data/x.tif')
    >>> local_path("s3://bucket/x.zarr") is None
    True
    """
    text = os.fspath(source)
    if not isinstance(text, str):
        msg = f"{who} expects a path as str or os.PathLike of str, got {type(source).__name__}: {source!r}"
        raise TypeError(msg)
    if not text:
        msg = f"{who} got an empty path: give a file or folder; {_ACCEPTED}"
        raise UnsupportedSourceError(msg)
    if not is_file_url(text):
        return None if _REMOTE.match(text) else os.path.expanduser(text)
    literal = text[len("file://") :] if reading and text[: len("file:///")].lower() == "file:///" else ""
    try:
        path = _url_path(text, who, selector)
    except UnsupportedSourceError:
        if literal and _names_something(literal, selector):  # a stack's own source: "file://" + its path as it is
            return literal
        raise
    if literal and literal != path and not _names_something(path, selector) and _names_something(literal, selector):
        return literal
    return path


def _names_something(path: str, selector: bool) -> bool:
    """Whether a local path (a selector removed if the caller takes one) names an existing file, folder or the
    Zarr store it goes into."""
    base = split_source(path)[0] if selector else path
    if os.path.lexists(base):
        return True
    end = base.lower().find(".zarr/")
    return end >= 0 and os.path.isdir(base[: end + len(".zarr")])


def _url_path(text: str, who: str, selector: bool) -> str:
    """[`local_path()`][local_path] of a ``file:`` URL as the standard library reads it (a bad one refused)."""
    bad = sorted({c for c in text if c in "\t\r\n"})
    if bad:  # urlsplit drops them silently: file:///a<TAB>b would be /ab
        msg = (
            f"{who}: the file: URL {text!r} holds {' and '.join(map(repr, bad))}, which a URL cannot hold: "
            f"percent-encode it (%09 tab, %0A newline, %0D carriage return); {_ACCEPTED}"
        )
        raise UnsupportedSourceError(msg)
    parts = urlsplit(text)
    if parts.netloc and parts.netloc.lower() != "localhost":
        msg = (
            f"{who} takes local paths only, not a file: URL naming a host: got {text!r} (host {parts.netloc!r}); "
            f"{_ACCEPTED}; copy a remote file to a local path first"
        )
        raise UnsupportedSourceError(msg)
    if parts.query or "?" in text.partition("#")[0]:
        msg = (
            f"{who}: the file: URL {text!r} has a query ({'?' + parts.query!r}), which names no local path "
            f"(a '?' in a file name is written %3F); {_ACCEPTED}"
        )
        raise UnsupportedSourceError(msg)
    suffix = ""
    if parts.fragment or "#" in text:
        if not (selector and _LEVEL.match(parts.fragment)):
            takes = f" ({who} takes a '#level=K' pyramid level selector there)" if selector else ""
            msg = (
                f"{who}: the file: URL {text!r} has a fragment ({'#' + parts.fragment!r}), which names no local "
                f"path{takes} (a '#' in a file name is written %23); {_ACCEPTED}"
            )
            raise UnsupportedSourceError(msg)
        suffix = "#" + parts.fragment
    if os.name == "nt":
        path = url2pathname(parts.path)
    else:  # url2pathname as Python 3.14 reads it: %FF is the byte 0xFF of a file name (3.11 made it U+FFFD)
        path = unquote(parts.path, encoding=sys.getfilesystemencoding(), errors="surrogateescape")
    if not path:
        msg = f"{who}: the file: URL {text!r} names no path; {_ACCEPTED}"
        raise UnsupportedSourceError(msg)
    if "\0" in path:
        msg = f"{who}: the file: URL {text!r} holds a NUL character (%00), which no path can hold; {_ACCEPTED}"
        raise UnsupportedSourceError(msg)
    return path + suffix
