"""The ``lazystack`` command line.

Exit codes: 0 on success, 2 on usage errors (argparse), 1 on data errors
(a missing file, bad axes, a corrupt source ...), 130 on Ctrl-C and 143 on
SIGTERM (an output being written is removed first). A data error prints one
line on stderr; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

from ..core.errors import LazyStackError, UnsupportedSourceError

__all__ = ["SubParsers", "add_source_arguments", "build_parser", "expand_sources", "main", "resolve_stacks"]

Handler = Callable[[argparse.Namespace], int]

#: Errors a data subcommand reports in one line (exit status 1) instead of a traceback.
DATA_ERRORS = (LazyStackError, OSError, ValueError)


class SubParsers(Protocol):
    """What ``ArgumentParser.add_subparsers()`` returns, as far as the subcommands use it."""

    def add_parser(self, name: str, **kwargs: Any) -> argparse.ArgumentParser:
        """Add a subcommand and return its parser."""
        ...


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import format_table, run_demo

    results = run_demo(
        size=args.size,
        n_patches=args.patches,
        patch=args.patch_size,
        frames=args.frames,
        formats=args.format or None,
        folder=args.keep,
        progress=not args.quiet,
        cache_bytes=args.cache_bytes,
    )
    print(format_table(results))
    return 0


def _positive_int(text: str) -> int:
    """An argparse type: an integer >= 1 (a usage error otherwise, exit status 2)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        msg = f"invalid value {text!r}: give an integer >= 1"
        raise argparse.ArgumentTypeError(msg)
    return value


def _add_demo(sub: SubParsers) -> None:
    from .demo import BUILDERS

    p = sub.add_parser(
        "demo",
        help="generate a dataset in every installed format and extract random patches from it",
        description="Write a synthetic TCYX dataset in every installed format to a temporary folder, "
        "open it lazily, extract random patches and print a table of throughput and bytes read.",
    )
    p.add_argument(
        "--size", type=_positive_int, default=1024, metavar="N", help="height and width of each plane (default 1024)"
    )
    p.add_argument("--patches", type=_positive_int, default=2000, metavar="N", help="patches per format (default 2000)")
    p.add_argument("--patch-size", type=_positive_int, default=64, metavar="N", help="patch edge length (default 64)")
    p.add_argument("--frames", type=_positive_int, default=4, metavar="N", help="time points per stack (default 4)")
    p.add_argument(
        "--format",
        action="append",
        metavar="NAME",
        help=f"run only this format (repeatable; one of: {', '.join(BUILDERS)})",
    )
    p.add_argument("--keep", metavar="DIR", help="write the dataset to DIR and keep it (default: a temporary folder)")
    p.add_argument(
        "--cache-bytes",
        metavar="SIZE",
        help="bound of the chunk cache, e.g. 0 (off) or 512MiB (default LAZYSTACK_CHUNK_CACHE_BYTES, else 256MiB)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars or step lines")
    p.set_defaults(handler=_cmd_demo)


# -- shared source / axes parsing ---------------------------------------------------------


def add_source_arguments(parser: argparse.ArgumentParser, *, many: bool = True, level_option: str = "--levels") -> None:
    """Add the source and axes arguments every data subcommand shares.

    Adds positional ``SOURCE`` (one or more when ``many``), ``--axes``,
    ``--storage-option KEY=VALUE`` (repeatable, for remote Zarr stores) and
    the resolution-level selection (``--levels``, stored as ``source_levels``).
    Read them back with [`resolve_stacks()`][resolve_stacks].

    Parameters
    ----------
    parser : argparse.ArgumentParser
        The subcommand's parser.
    many : bool
        Accept several sources.
    level_option : str
        Name of the level-selection option (``convert`` uses ``--input-levels``,
        its ``--levels`` being the number of levels it writes).
    """
    parser.add_argument(
        "source",
        nargs="+" if many else None,
        metavar="SOURCE",
        help="a file (.tif/.tiff/.btf/.tf8, .czi, .npy; 'path@N' for series / scene N), a Zarr store, "
        "an fsspec URI (file://, http(s)://, s3://, gs://, zip://, memory:// ...) or a folder "
        "(every such file and Zarr store in it, recursively)",
    )
    parser.add_argument(
        "--axes",
        help="axes of the source(s), letters of STCZYX (e.g. TCZYX, SCYX, YX); "
        "default: the axes the file declares (OME, ImageJ, NGFF, CZI)",
    )
    parser.add_argument(
        "--storage-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="fsspec storage option for remote Zarr stores (repeatable; VALUE parsed as JSON when it can be; "
        "other sources ignore it)",
    )
    parser.add_argument(
        level_option,
        dest="source_levels",
        metavar="LEVELS",
        help="resolution levels of multiscale images (OME-Zarr, OME-TIFF and CZI pyramids) to open: 'all', a level "
        "(0 = full resolution) or a list like 0,2 (default all; stats and convert: the full resolution of each image)",
    )


def _storage_options(items: Sequence[str]) -> dict[str, Any]:
    options: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            msg = f"--storage-option expects KEY=VALUE, got {item!r}"
            raise ValueError(msg)
        try:
            options[key] = json.loads(value)
        except json.JSONDecodeError:
            options[key] = value
    return options


def _is_zarr_store(path: Path) -> bool:
    from ..loading.auto import _is_zarr_dir

    return path.suffix.lower() == ".zarr" or _is_zarr_dir(path)


def _readable_in(folder: Path, seen: set[Path] | None = None) -> Iterator[str]:
    """Readable sources under ``folder``, sorted: files by extension, Zarr stores whole.

    A folder reached twice (a symbolic link back up the tree) is searched once.
    """
    from ..loading.auto import ACCEPTED_EXTENSIONS

    seen = set() if seen is None else seen
    real = folder.resolve()
    if real in seen:
        return
    seen.add(real)
    files = {suffix for suffix, kind in ACCEPTED_EXTENSIONS.items() if kind != "zarr"}
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.is_dir():
            if _is_zarr_store(entry):
                yield str(entry)
            else:
                yield from _readable_in(entry, seen)
        elif entry.suffix.lower() in files:
            yield str(entry)


def expand_sources(sources: Sequence[str]) -> list[str]:
    """Replace every local folder that is not a Zarr store by the sources inside it.

    A folder is searched recursively (hidden entries skipped, sorted by
    name) for the files [`lazystack.load()`][lazystack.load] reads (``.tif``, ``.tiff``,
    ``.btf``, ``.tf8``, ``.czi``, ``.npy``) and for Zarr stores, which are
    taken whole. Files, Zarr stores and URIs are kept as given.

    Parameters
    ----------
    sources : sequence of str
        Paths and URIs from the command line.

    Returns
    -------
    list of str
        The sources with every folder expanded, in order.

    Raises
    ------
    UnsupportedSourceError
        If a folder holds no source lazystack reads.
    """
    from ..loading.auto import ACCEPTED_EXTENSIONS

    out: list[str] = []
    for source in sources:
        path = Path(source)
        if "://" in source or not path.is_dir() or _is_zarr_store(path):
            out.append(source)
            continue
        found = list(_readable_in(path))
        if not found:
            accepted = ", ".join(ACCEPTED_EXTENSIONS)
            msg = (
                f"folder {source!r} holds no source lazystack reads: "
                f"accepted files ending in {accepted} and Zarr stores (folders with zarr metadata)"
            )
            raise UnsupportedSourceError(msg)
        out.extend(found)
    return out


def _open_one(source: str, axes: str | None, load_opts: dict[str, Any]) -> tuple[str, bool, list[Any]]:
    from ..core.errors import AxesError
    from ..loading.auto import load, propose_axes, source_kind

    if "storage_options" in load_opts and source_kind(source) != "zarr":
        # --storage-option is for Zarr stores (fsspec); TIFF / CZI / .npy loaders take no such argument (a TypeError)
        load_opts = {k: v for k, v in load_opts.items() if k != "storage_options"}
    used = axes or propose_axes(source, **load_opts)
    if used is None:
        msg = (
            f"{source!r} does not declare its axes: give them with --axes "
            "(letters of STCZYX, e.g. --axes TYX, --axes CZYX)"
        )
        raise AxesError(msg)
    return used, axes is None, load(source, used, **load_opts)


def resolve_stacks(args: argparse.Namespace) -> list[tuple[str, str, bool, list[Any]]]:
    """Open the sources of a subcommand made with [`add_source_arguments()`][add_source_arguments].

    Folders are expanded first (see [`expand_sources`][lazystack.frontends.cli.expand_sources]).

    Parameters
    ----------
    args : argparse.Namespace
        Parsed arguments with ``source``, ``axes`` and ``storage_option``.

    Returns
    -------
    list of (source, axes, declared, stacks)
        Per source: the axes used, whether they came from the file's own
        metadata (no ``--axes``), and its stacks.

    Raises
    ------
    AxesError
        If ``--axes`` is invalid, or missing for a source that declares none.
    SourceNotFoundError, UnsupportedSourceError, SourceFormatError ...
        As [`lazystack.load`][lazystack.loading.auto.load].
    """
    axes, load_opts = _axes_and_options(args)
    sources = args.source if isinstance(args.source, list) else [args.source]
    return [(source, *_open_one(source, axes, load_opts)) for source in expand_sources(sources)]


def _axes_and_options(args: argparse.Namespace) -> tuple[str | None, dict[str, Any]]:
    from ..core.axes import validate_axes

    axes = validate_axes(args.axes) if args.axes else None
    opts = _storage_options(getattr(args, "storage_option", []) or [])
    load_opts: dict[str, Any] = {"storage_options": opts} if opts else {}
    levels = getattr(args, "source_levels", None)
    if levels is not None:
        from ..core.levels import parse_levels

        option = "--input-levels" if getattr(args, "command", None) == "convert" else "--levels"
        load_opts["levels"] = parse_levels(levels, option)
    return axes, load_opts


def _error_text(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


# -- info ------------------------------------------------------------------------------------


def _info_records(source: str, axes: str | None, load_opts: dict[str, Any]) -> tuple[list[dict[str, Any]], bool]:
    from ..loading.stacklist import source_disk_bytes, stack_summary

    _used, declared, stacks = _open_one(source, axes, load_opts)
    disk = source_disk_bytes(source)
    origin = {"input": source, "axes_from": "file" if declared else "--axes"}
    try:
        records = [stack_summary(stack, disk_bytes=disk) | origin for stack in stacks]
    finally:
        for stack in stacks:
            stack.close()
    return records, declared


def _cmd_info(args: argparse.Namespace) -> int:
    """Describe every source it can; name each one that fails (exit 1 if any did)."""
    from ..loading.stacklist import format_table, plate_map, summary_row

    axes, load_opts = _axes_and_options(args)  # a bad --axes or option fails every source: stop here
    records: list[dict[str, Any]] = []
    failures: list[tuple[str, BaseException]] = []
    declared_any = False
    opened = 0

    def attempt(source: str, func: Callable[..., Any], *func_args: Any) -> Any:
        try:
            return func(*func_args)
        except DATA_ERRORS as exc:
            if args.debug:
                raise
            failures.append((source, exc))
            return None

    for given in args.source:
        for source in attempt(given, expand_sources, [given]) or []:
            found = attempt(source, _info_records, source, axes, load_opts)
            if found is not None:
                opened += 1
                records += found[0]
                declared_any |= found[1]
    if args.json:
        print(json.dumps(records, indent=2))
    elif records:
        print(format_table(summary_row(r) for r in records))
        plates = plate_map(records)
        if plates:
            print("\n" + plates)
        if declared_any:
            print("\naxes as the files declare them (give --axes to override); disk = size of the whole file or store")
    for source, error in failures:
        text = _error_text(error)
        named = text if os.fspath(source) in text else f"{source}: {text}"
        print(f"lazystack info: error: {named}", file=sys.stderr)
    if failures and opened:
        print(f"lazystack info: {len(failures)} of {len(failures) + opened} sources failed", file=sys.stderr)
    return 1 if failures else 0


def _add_info(sub: SubParsers) -> None:
    p = sub.add_parser(
        "info",
        help="describe the stacks in files, stores and folders (shapes, axes, dtype, chunks, sizes)",
        description="Open each SOURCE lazily (metadata only) and print one row per stack: source, format, "
        "original axes and shape, canonical SC(Z)YX shape, dtype, chunks, scene / series / level, "
        "physical pixel sizes, channel names, size in memory and on disk. A source that cannot be opened "
        "is named on stderr and the others are still described; the exit status is then 1.",
    )
    add_source_arguments(p)
    p.add_argument("--json", action="store_true", help="print a JSON list of records, one per stack")
    p.set_defaults(handler=_cmd_info)


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser with every subcommand."""
    parser = argparse.ArgumentParser(
        prog="lazystack",
        description="Lazy, Dask-backed access to microscopy image stacks.",
        epilog="Run 'lazystack COMMAND --help' for the options of a command. Exit status: 0 on success, "
        "1 on data errors (one line on stderr per error), 2 on usage errors, 130 / 143 when interrupted / terminated.",
    )
    from ..core.version import __version__

    parser.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    parser.add_argument("--version", action="version", version=f"lazystack {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_info(sub)
    _add_demo(sub)
    preprocess = importlib.import_module(f"{__package__}.cli_preprocess")  # by name: it imports this module
    preprocess.add_stats_parser(sub)
    preprocess.add_convert_parser(sub)
    for command in sub.choices.values():  # also after the command: "lazystack info x.tif --debug"
        command.add_argument(
            "--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks of errors"
        )
    return parser


class _Terminated(KeyboardInterrupt):
    """SIGTERM, raised where Ctrl-C's KeyboardInterrupt is: what an interrupted write cleans up, it cleans up."""


@contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """While the block runs, SIGTERM (``kill``, a batch system's time limit) raises `_Terminated`.

    Python's default for SIGTERM ends the process at once: ``convert`` left its hidden partial store behind
    (Ctrl-C removed it). In the main thread only; the previous handler is restored. A SIGTERM ignored by whoever
    started the process (``trap '' TERM``, a supervisor) stays ignored, as Python leaves an ignored SIGINT.
    """
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGTERM) == signal.SIG_IGN:
        yield
        return

    def terminate(signum: int, frame: Any) -> None:
        raise _Terminated

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line on ``argv`` (default: ``sys.argv[1:]``) and return the exit code.

    Ctrl-C (SIGINT) returns 130, SIGTERM 143, after an output being written is removed.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Handler = args.handler
    try:
        with _terminate_as_interrupt():
            return handler(args)
    except BrokenPipeError:  # output piped into a command that stopped reading (| head)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except DATA_ERRORS as exc:
        if args.debug:
            raise
        print(f"lazystack {args.command}: error: {_error_text(exc)}", file=sys.stderr)
        return 1
    except _Terminated:
        print("terminated", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
