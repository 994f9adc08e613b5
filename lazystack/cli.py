"""The ``lazystack`` command line.

Exit codes: 0 on success, 2 on usage errors (argparse), 1 on data errors
(a missing file, bad axes, a corrupt source ...). A data error prints one
line on stderr; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from .errors import LazyStackError

__all__ = ["main"]

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
    parser.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_demo(sub)
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
    except (LazyStackError, OSError, ValueError) as exc:
        if args.debug:
            raise
        print(f"lazystack {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
