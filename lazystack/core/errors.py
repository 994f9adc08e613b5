"""Exception hierarchy of lazystack.

Every exception derives from [`LazyStackError`][LazyStackError] *and* from the built-in a
caller would naturally catch (``ValueError``, ``IndexError``,
``FileNotFoundError`` ...), so ``except ValueError`` keeps working for code
that does not know about lazystack. Messages name the offending value, the
path where there is one, and what would have been accepted.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
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
    "import_optional",
]


class LazyStackError(Exception):
    """Base class of every error raised by lazystack."""


class AxesError(LazyStackError, ValueError):
    """An axes string is invalid (unknown, repeated or missing letters)."""


class ShapeMismatchError(LazyStackError, ValueError):
    """The axes do not describe the shape of the source (rank or declared axes)."""


class PatchError(LazyStackError, ValueError):
    """``coords`` / ``patch_size`` are inconsistent with each other or the stack."""


class SampleIndexError(LazyStackError, IndexError):
    """A sample index is outside ``range(n_samples)``."""


class ChannelIndexError(LazyStackError, ValueError, IndexError):
    """A channel index is outside ``range(n_channels)``."""


class SelectionError(LazyStackError, ValueError, IndexError):
    """A view selection (``isel``) names an unknown axis or an invalid index."""


class SourceNotFoundError(LazyStackError, FileNotFoundError):
    """A file, store, array, group, scene or series does not exist."""


class SourceFormatError(LazyStackError, ValueError):
    """A source exists but is not of the expected format, or its metadata is invalid."""


class SourceReadError(LazyStackError, OSError):
    """Reading pixel data failed (truncated file, corrupt chunk, network error)."""


class UnsupportedSourceError(LazyStackError, ValueError):
    """No loader accepts this kind of source (extension, URI scheme, object type)."""


class MissingDependencyError(LazyStackError, ImportError):
    """An optional dependency (an extra of lazystack) is not installed."""


class MetadataWarning(UserWarning):
    """A source's metadata is odd but the pixels are still readable (e.g. a zero or negative pixel size).

    The message names the file and the metadata field; the odd value is left out.
    Turn these into errors with ``warnings.simplefilter("error", lazystack.MetadataWarning)``.
    """


def import_optional(module: str, needed_for: str, install: str) -> Any:
    """Import the optional dependency ``module`` or raise an error that says how to install it.

    Parameters
    ----------
    module : str
        Absolute module name (``"pylibCZIrw.czi"``, ``"bioio"``).
    needed_for : str
        What needs it, the start of the message (``"reading CZI files"``).
    install : str
        What to install (``"lazystack[czi] (pip install 'lazystack[czi]')"``).

    Returns
    -------
    module
        The imported module.

    Raises
    ------
    MissingDependencyError
        When ``module`` cannot be imported; the message names the module, the
        import error and ``install``.
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        msg = f"{needed_for} needs {module}, which cannot be imported ({exc}): install {install}"
        raise MissingDependencyError(msg) from exc
