"""The ``lazystack`` command line.

Exit codes: 0 on success, 2 on usage errors (argparse), 1 on data errors
(a missing file, bad axes, a corrupt source ...). A data error prints one
line on stderr; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import sys
from collections.abc import Callable, Sequence
from typing import Any

from ..core.errors import LazyStackError

__all__ = ["add_source_arguments", "build_parser", "main", "resolve_stacks"]

Handler = Callable[[argparse.Namespace], int]


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
    )
    print(format_table(results))
    return 0


def _add_demo(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "demo",
        help="generate a dataset in every installed format and extract random patches from it",
        description="Write a synthetic TCYX dataset in every installed format to a temporary folder, "
        "open it lazily, extract random patches and print a table of throughput and bytes read.",
    )
    p.add_argument("--size", type=int, default=1024, help="height and width of each plane (default 1024)")
    p.add_argument("--patches", type=int, default=2000, help="patches per format (default 2000)")
    p.add_argument("--patch-size", type=int, default=64, help="patch edge length (default 64)")
    p.add_argument("--frames", type=int, default=4, help="time points per stack (default 4)")
    p.add_argument("--format", action="append", help="run only this format (repeatable)")
    p.add_argument("--keep", metavar="DIR", help="write the dataset to DIR and keep it")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(handler=_cmd_demo)


# -- shared source / axes parsing ---------------------------------------------------------


def add_source_arguments(parser: argparse.ArgumentParser, *, many: bool = True) -> None:
    """Add the source and axes arguments every data subcommand shares.

    Adds positional ``SOURCE`` (one or more when ``many``), ``--axes`` and
    ``--storage-option KEY=VALUE`` (repeatable, for remote Zarr stores).
    Read them back with :func:`resolve_stacks`.

    Parameters
    ----------
    parser : argparse.ArgumentParser
        The subcommand's parser.
    many : bool
        Accept several sources.
    """
    parser.add_argument(
        "source",
        nargs="+" if many else None,
        metavar="SOURCE",
        help="a file (.tif/.tiff/.btf, .czi, .npy; 'path@N' for series / scene N), a .zarr store "
        "or an fsspec URI (file://, http(s)://, s3://, gs://, zip://, memory:// ...)",
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
        help="fsspec storage option for remote Zarr stores (repeatable; VALUE parsed as JSON when it can be)",
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


def resolve_stacks(args: argparse.Namespace) -> list[tuple[str, str, bool, list[Any]]]:
    """Open the sources of a subcommand made with :func:`add_source_arguments`.

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
        As :func:`lazystack.load`.
    """
    from ..core.axes import validate_axes
    from ..core.errors import AxesError
    from ..loading.auto import load, propose_axes

    sources = args.source if isinstance(args.source, list) else [args.source]
    axes = validate_axes(args.axes) if args.axes else None
    opts = _storage_options(getattr(args, "storage_option", []) or [])
    load_opts = {"storage_options": opts} if opts else {}
    out = []
    for source in sources:
        used = axes or propose_axes(source, **load_opts)
        if used is None:
            msg = (
                f"{source!r} does not declare its axes: give them with --axes "
                "(letters of STCZYX, e.g. --axes TYX, --axes CZYX)"
            )
            raise AxesError(msg)
        out.append((source, used, axes is None, load(source, used, **load_opts)))
    return out


# -- info ------------------------------------------------------------------------------------


def _cmd_info(args: argparse.Namespace) -> int:
    from ..loading.stacklist import format_table, source_disk_bytes, stack_summary, summary_row

    records = []
    declared_any = False
    for source, _axes, declared, stacks in resolve_stacks(args):
        disk = source_disk_bytes(source)
        declared_any |= declared
        for stack in stacks:
            summary = stack_summary(stack, disk_bytes=disk)
            summary["input"] = source
            summary["axes_from"] = "file" if declared else "--axes"
            records.append(summary)
            stack.close()
    if args.json:
        print(json.dumps(records, indent=2))
        return 0
    print(format_table(summary_row(r) for r in records))
    if declared_any:
        print("\naxes as the files declare them (give --axes to override); disk = size of the whole file or store")
    return 0


def _add_info(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "info",
        help="describe the stacks in files and stores (shapes, axes, dtype, chunks, sizes)",
        description="Open each SOURCE lazily (metadata only) and print one row per stack: source, format, "
        "original axes and shape, canonical SC(Z)YX shape, dtype, chunks, scene / series / level, "
        "physical pixel sizes, channel names, size in memory and on disk.",
    )
    add_source_arguments(p)
    p.add_argument("--json", action="store_true", help="print a JSON list of records, one per stack")
    p.set_defaults(handler=_cmd_info)


def _add_preprocess(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``stats`` and ``convert`` when their module is part of this installation."""
    if importlib.util.find_spec(f"{__package__}.cli_preprocess") is None:
        return
    cli_preprocess = importlib.import_module(f"{__package__}.cli_preprocess")
    for name in ("add_stats_parser", "add_convert_parser"):
        add = getattr(cli_preprocess, name, None)
        if callable(add):
            add(sub)


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser with every subcommand.

    Returns
    -------
    argparse.ArgumentParser
    """
    parser = argparse.ArgumentParser(
        prog="lazystack",
        description="Lazy, Dask-backed access to microscopy image stacks.",
    )
    from ..core.version import __version__

    parser.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    parser.add_argument("--version", action="version", version=f"lazystack {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_info(sub)
    _add_demo(sub)
    _add_preprocess(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line.

    Parameters
    ----------
    argv : sequence of str, optional
        Arguments (default: ``sys.argv[1:]``).

    Returns
    -------
    int
        The exit code.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Handler = args.handler
    try:
        return handler(args)
    except BrokenPipeError:  # output piped into a command that stopped reading (| head)
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (LazyStackError, OSError, ValueError) as exc:
        if args.debug:
            raise
        text = " ".join(str(exc).split()) or type(exc).__name__
        print(f"lazystack {args.command}: error: {text}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
