"""``lazystack stats`` and ``lazystack convert``: distributed preprocessing from the shell.

``lazystack stats SOURCE... --axes AXES`` prints per-channel statistics of all
stacks of all sources (``--json`` for machine-readable output);
``lazystack convert SOURCE... --axes AXES --out OUT.zarr`` writes them as
OME-Zarr 0.5 (one image, or a group of images for several stacks).

Both run on the scheduler given by ``--scheduler``: ``threads`` (default),
``processes``, ``synchronous``, or the address of a running
``dask.distributed`` scheduler (``tcp://host:8786``). Progress bars are shown
on stderr unless ``--quiet``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..core.errors import MissingDependencyError, UnsupportedSourceError

if TYPE_CHECKING:
    from ..stack import LazyImageStack
    from .cli import SubParsers

__all__ = ["add_convert_parser", "add_stats_parser", "scheduler"]

_LOCAL = ("threads", "processes", "synchronous", "sync")


def _scheduler_arg(text: str) -> str:
    if text in _LOCAL or "://" in text:
        return text
    if ":" in text and text.rsplit(":", 1)[1].isdigit():  # host:port
        return f"tcp://{text}"
    msg = f"invalid scheduler {text!r}: use threads, processes, synchronous or an address like tcp://host:8786"
    raise argparse.ArgumentTypeError(msg)


@contextmanager
def scheduler(spec: str, *, timeout: str = "10s") -> Iterator[Any]:
    """Run the block on the scheduler named by ``spec``.

    Parameters
    ----------
    spec : str
        ``"threads"``, ``"processes"``, ``"synchronous"`` (``"sync"``) or the
        address of a running distributed scheduler (``tcp://host:port``).
    timeout : str
        How long to try to connect to a distributed scheduler.

    Yields
    ------
    distributed.Client or None
        The client connected for an address, else None.

    Raises
    ------
    MissingDependencyError
        For an address when ``distributed`` is not installed.
    OSError
        If the scheduler at the address cannot be reached.
    """
    import dask

    if spec in _LOCAL:
        with dask.config.set(scheduler="synchronous" if spec == "sync" else spec):
            yield None
        return
    try:
        from distributed import Client
    except ImportError as exc:  # pragma: no cover - distributed is installed in the test environment
        msg = f"--scheduler {spec} needs dask.distributed: pip install 'lazystack[distributed]'"
        raise MissingDependencyError(msg) from exc
    try:
        client = Client(spec, timeout=timeout, set_as_default=True)
    except (OSError, TimeoutError) as exc:
        msg = f"cannot connect to the dask scheduler at {spec!r}: {exc}"
        raise OSError(msg) from exc
    with client:
        yield client


def _open_sources(args: argparse.Namespace) -> list[LazyImageStack]:
    """Open every source (folders expanded) as ``lazystack info`` does, with the same errors."""
    from .cli import resolve_stacks

    return [stack for _source, _axes, _declared, stacks in resolve_stacks(args) for stack in stacks]


def _add_common(p: argparse.ArgumentParser, level_option: str = "--levels") -> None:
    from .cli import add_source_arguments

    add_source_arguments(p, level_option=level_option)
    p.add_argument(
        "--scheduler",
        type=_scheduler_arg,
        default="threads",
        metavar="SCHED",
        help="threads (default), processes, synchronous, or a distributed scheduler address (tcp://host:8786)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _percentile_list(text: str) -> tuple[float, ...]:
    try:
        levels = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        msg = f"invalid percentiles {text!r}: give comma-separated numbers between 0 and 100, e.g. 1,50,99"
        raise argparse.ArgumentTypeError(msg) from None
    if any(not 0 <= q <= 100 for q in levels):
        msg = f"percentiles must be between 0 and 100, got {text!r}"
        raise argparse.ArgumentTypeError(msg)
    return levels


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value <= 1:
        msg = f"invalid sample fraction {text!r}: give a number in (0, 1]"
        raise argparse.ArgumentTypeError(msg)
    return value


def _seed(text: str) -> int:
    """An argparse type: an integer >= 0 (numpy's seeds; a usage error otherwise, exit status 2)."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        msg = f"invalid seed {text!r}: give an integer >= 0"
        raise argparse.ArgumentTypeError(msg)
    return value


def _check_output_file(given: str, output: Path) -> None:
    """Fail before any statistic is computed if the JSON file ``output`` cannot be created in its folder."""
    if output.exists() and not output.is_file():
        msg = f"--output {given!r} exists and is not a regular file: give a path for a new JSON file"
        raise UnsupportedSourceError(msg)
    parent = Path(os.path.realpath(output)).parent  # a symbolic link is written through: its target's folder
    if not parent.is_dir():
        what = "does not exist (No such file or directory)" if not parent.exists() else "is not a folder"
        msg = f"--output {given!r}: its folder {str(parent)!r} {what}; give a path in an existing folder"
        raise FileNotFoundError(msg)
    if not os.access(parent, os.W_OK | os.X_OK) or (output.exists() and not os.access(output, os.W_OK)):
        msg = f"--output {given!r}: no permission to write {str(output)!r}; give a path you can write"
        raise PermissionError(msg)


def _write_json(path: Path, data: Any) -> None:
    """Write ``data`` to ``path`` whole or not at all: a temporary file beside it, renamed over it when complete.

    An interrupted write (Ctrl-C, a full disk) leaves ``path`` as it was, never a truncated JSON file. A symbolic
    link is written through (its target replaced), as ``open(path, "w")`` does, not replaced by a file.
    """
    import tempfile

    path = Path(os.path.realpath(path))
    text = json.dumps(data, indent=2)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        if path.exists():  # keep the permissions of the file replaced
            os.chmod(tmp, path.stat().st_mode & 0o7777)
        else:
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def add_stats_parser(sub: SubParsers) -> argparse.ArgumentParser:
    """Add the ``stats`` subcommand to ``sub``.

    Returns
    -------
    argparse.ArgumentParser
        The new subparser (its ``handler`` default runs the command).
    """
    p = sub.add_parser(
        "stats",
        help="compute per-channel statistics (mean, std, min, max, percentiles) over all stacks",
        description="Compute per-channel mean, std, min, max, count and percentiles over every stack of every "
        "source, chunk by chunk with dask.",
    )
    _add_common(p)
    p.add_argument(
        "--percentiles",
        type=_percentile_list,
        default=(0.1, 1.0, 50.0, 99.0, 99.9),
        metavar="Q,Q,...",
        help="percentile levels (default 0.1,1,50,99,99.9)",
    )
    p.add_argument("--sample-fraction", type=_fraction, metavar="F", help="read only this fraction of the chunks")
    p.add_argument(
        "--seed", type=_seed, default=0, metavar="N", help="seed of --sample-fraction, an integer >= 0 (default 0)"
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--output", metavar="FILE", help="also write the statistics as JSON to FILE")
    p.set_defaults(handler=_cmd_stats)
    return p


def add_convert_parser(sub: SubParsers) -> argparse.ArgumentParser:
    """Add the ``convert`` subcommand to ``sub``.

    Returns
    -------
    argparse.ArgumentParser
        The new subparser (its ``handler`` default runs the command).
    """
    p = sub.add_parser(
        "convert",
        help="write the stacks as OME-Zarr 0.5 with a multiscale pyramid",
        description="Write every stack of every source to an OME-Zarr 0.5 (Zarr v3) store with a multiscale "
        "pyramid: one image for one stack, a group of images (OUT/0, OUT/1 ...) for several.",
    )
    _add_common(p, level_option="--input-levels")
    p.add_argument("--out", required=True, metavar="OUT.zarr", help="the OME-Zarr store to write (a folder)")
    p.add_argument(
        "--levels", type=int, default=3, metavar="N", help="resolution levels, full resolution included (default 3)"
    )
    p.add_argument(
        "--downscale", type=int, default=2, metavar="N", help="factor along Y and X between levels (default 2)"
    )
    p.add_argument(
        "--chunks",
        metavar="SPEC",
        help="chunk shape: an int for Y and X, or AXIS=SIZE pairs like Z=16,Y=256,X=256 (default Z=32,Y=X=512)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace OUT once the new store is complete")
    p.set_defaults(handler=_cmd_convert)
    return p


def _parse_chunks(text: str | None) -> Any:
    if text is None:
        return None
    try:
        if "=" not in text:
            return int(text)
        out = {}
        for part in text.split(","):
            axis, size = part.split("=")
            out[axis.strip().upper()] = int(size)
    except ValueError:
        msg = f"invalid --chunks {text!r}: give an int (Y and X) or AXIS=SIZE pairs like Z=16,Y=256,X=256"
        raise ValueError(msg) from None
    return out


def _format_table(stats: Any) -> str:
    columns = ["count", "mean", "std", "min", "max", *[f"p{q:g}" for q in stats.percentiles]]
    rows = []
    for c in range(stats.n_channels):
        values = [stats.count[c], stats.mean[c], stats.std[c], stats.min[c], stats.max[c]]
        values += [v[c] for v in stats.percentiles.values()]
        rows.append([str(c)] + [f"{int(values[0])}"] + [f"{float(v):.6g}" for v in values[1:]])
    header = ["channel", *columns]
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    lines = ["  ".join(h.rjust(w) for h, w in zip(header, widths, strict=True))]
    lines += ["  ".join(v.rjust(w) for v, w in zip(r, widths, strict=True)) for r in rows]
    if stats.sample_fraction is not None:
        lines.append(f"(estimate from a {stats.sample_fraction:g} fraction of the chunks)")
    if any(stats.percentile_error > 0):
        bound = ", ".join(f"{e:.3g}" for e in stats.percentile_error)
        lines.append(f"(percentiles within {bound} of exact, per channel)")
    return "\n".join(lines)


def _level_note(n_left_out: int, option: str) -> str:
    """The line saying that coarser pyramid levels were left out (empty when none were)."""
    if not n_left_out:
        return ""
    return (
        f"full resolution only: {n_left_out} stack(s) of coarser pyramid levels left out ({option} all to include them)"
    )


def _cmd_stats(args: argparse.Namespace) -> int:
    from ..ops.stats import channel_statistics
    from ..ops.writing import _check_not_a_source

    if args.output == "":  # was taken for "no --output": nothing written, exit status 0
        msg = "--output '' is an empty path: give the JSON file to write (e.g. --output stats.json)"
        raise UnsupportedSourceError(msg)
    stacks = _open_sources(args)
    if args.output:  # before the statistics are computed: the output must not be a source
        # ``..`` as the system resolves it (``link/../a.tif`` is beside the link's target): the path written
        output = Path(args.output).expanduser().absolute()
        _check_not_a_source(output, stacks, who="lazystack stats --output")
        _check_output_file(args.output, output)
    with scheduler(args.scheduler):
        stats = channel_statistics(
            stacks,
            percentiles=args.percentiles,
            sample_fraction=args.sample_fraction,
            seed=args.seed,
            progress=not args.quiet,
            # --levels chose what was opened: use all of it; else the full resolution of each image
            levels="finest" if getattr(args, "source_levels", None) is None else "all",
        )
    note = _level_note(stats.levels_left_out, "--levels")
    if args.output:
        _write_json(output, stats.to_dict())  # the path checked (``~`` expanded)
    if args.json:
        print(json.dumps(stats.to_dict(), indent=2))
    else:
        print(f"{stats.n_stacks} stack(s), {stats.n_channels} channel(s)")
        print(_format_table(stats))
    if note:
        print(note, file=sys.stderr if args.json else sys.stdout)
    return 0


def _cmd_convert(args: argparse.Namespace) -> int:
    from ..core.levels import finest_levels
    from ..ops.writing import ome_axes, write_ome_zarr

    chunks = _parse_chunks(args.chunks)
    stacks = _open_sources(args)
    left_out: list[Any] = []
    if getattr(args, "source_levels", None) is None:
        # convert builds its own pyramid: the full resolution of each image is what it needs
        stacks, left_out = finest_levels(stacks)
    target: Any = stacks[0] if len(stacks) == 1 else stacks
    with scheduler(args.scheduler):
        try:
            path = write_ome_zarr(
                target,
                args.out,
                chunks=chunks,
                levels=args.levels,
                downscale=args.downscale,
                overwrite=args.overwrite,
                progress=not args.quiet,
            )
        except FileExistsError as exc:  # its message names the Python keyword, overwrite=True
            if args.overwrite or exc.filename is not None:  # the OS's, not the output's: a parent that is a file ...
                raise
            msg = f"{args.out!r} already exists; pass --overwrite to replace it"
            raise FileExistsError(msg) from exc
    axes = sorted({ome_axes(s.axes_model.axes) for s in stacks})
    # a stack with several samples (S) is written as one image per sample
    n = sum(int(s.axes_model.shape[s.axes_model.axes.index("S")]) if "S" in s.axes_model.axes else 1 for s in stacks)
    what = "1 image" if n == 1 else f"{n} images (groups 0..{n - 1})"
    print(f"wrote {what} to {path} (axes {', '.join(axes)})")
    note = _level_note(len(left_out), "--input-levels")
    if note:
        print(note)
    return 0
