"""Resolution levels of multiscale images: parse a ``levels=`` selection, group and pick levels of stacks.

An OME-Zarr image (a *pyramid*) gives one stack per resolution level; every
such stack has ``stack.level`` (0 = full resolution) and
``stack.attrs["image_uri"]`` (the image group it belongs to). A stack that is
not part of a pyramid (``level`` None) counts as its own full resolution,
level 0.

``levels=`` (on [`lazystack.load_zarrs()`][lazystack.load_zarrs], [`lazystack.load()`][lazystack.load] and the
command line's ``--levels``) accepts:

* ``None`` or ``"all"``: every level;
* an int ``n``: level ``n`` alone;
* a sequence of ints, or a string ``"0,2"``: those levels.

Operations that aggregate over stacks (channel statistics, ``lazystack stats``,
``lazystack convert``) keep only the finest level given of each image
([`finest_levels()`][finest_levels]) unless told otherwise.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Literal, TypeVar

from .errors import SelectionError

__all__ = ["Levels", "finest_levels", "group_levels", "image_key", "parse_levels", "select_levels"]

#: What ``levels=`` accepts: None / ``"all"``, an int, a sequence of ints or a string like ``"0,2"``.
Levels = int | Sequence[int] | Literal["all"] | str | None

_S = TypeVar("_S")


def parse_levels(levels: Any, what: str = "levels") -> tuple[int, ...] | None:
    """Normalise a ``levels=`` selection.

    Parameters
    ----------
    levels : None, "all", int, sequence of int or str
        The selection (see the module documentation).
    what : str
        Name of the option, for the error message.

    Returns
    -------
    tuple of int or None
        The selected levels, sorted and without repeats; None for every level.

    Raises
    ------
    SelectionError
        For a negative level, a non-integer, an empty selection or an unknown word.

    Examples
    --------
    >>> parse_levels(None), parse_levels("all"), parse_levels(0), parse_levels("2,0"), parse_levels([1, 1])
    (None, None, (0,), (0, 2), (1,))
    """
    if levels is None:
        return None
    accepted = "accepted: 'all', a level number (0 = full resolution), a sequence of them or a string like '0,2'"
    if isinstance(levels, str):
        text = levels.strip().lower()
        if text == "all":
            return None
        try:
            items: list[Any] = [int(part) for part in text.split(",") if part.strip()]
        except ValueError:
            msg = f"invalid {what} {levels!r}; {accepted}"
            raise SelectionError(msg) from None
    elif isinstance(levels, bool):
        msg = f"invalid {what} {levels!r}; {accepted}"
        raise SelectionError(msg)
    elif isinstance(levels, int) or (hasattr(levels, "__index__") and not isinstance(levels, Iterable)):
        items = [levels]
    elif isinstance(levels, Iterable):
        items = list(levels)
    else:
        msg = f"invalid {what} {levels!r} ({type(levels).__name__}); {accepted}"
        raise SelectionError(msg)
    out = set()
    for item in items:
        if isinstance(item, bool) or not hasattr(item, "__index__") or int(item) < 0:
            msg = f"invalid level {item!r} in {what}={levels!r}: levels are ints >= 0; {accepted}"
            raise SelectionError(msg)
        out.add(int(item))
    if not out:
        msg = f"{what}={levels!r} selects no level; {accepted}"
        raise SelectionError(msg)
    return tuple(sorted(out))


def _level(stack: Any) -> int:
    level = getattr(stack, "level", None)
    return 0 if level is None else int(level)


def image_key(stack: Any) -> str:
    """The image a stack belongs to: its pyramid's group URI, else its own source."""
    attrs = getattr(stack, "attrs", None) or {}
    key = attrs.get("image_uri") if getattr(stack, "level", None) is not None else None
    return str(key) if key is not None else str(getattr(stack, "source", id(stack)))


def select_levels(stacks: Iterable[_S], levels: Any) -> list[_S]:
    """The stacks at the selected levels (a stack without a pyramid counts as level 0).

    Returns
    -------
    list of LazyImageStack
        In their order.
    """
    chosen = parse_levels(levels)
    items = list(stacks)
    return items if chosen is None else [s for s in items if _level(s) in chosen]


def group_levels(stacks: Iterable[_S]) -> list[list[_S]]:
    """Group stacks by image (see [`image_key()`][image_key]), each group's levels finest first.

    Returns
    -------
    list of list of LazyImageStack
        One list per image, in the order the images first appear.
    """
    groups: dict[str, list[_S]] = {}
    for stack in stacks:
        groups.setdefault(image_key(stack), []).append(stack)
    return [sorted(group, key=_level) for group in groups.values()]


def finest_levels(stacks: Iterable[_S]) -> tuple[list[_S], list[_S]]:
    """Keep the finest level given of each image: what aggregating operations use by default.

    Returns
    -------
    kept, dropped : list of LazyImageStack
        ``kept``: per image, the stack(s) at its lowest level number present
        (level 0 when the whole pyramid was loaded), in the input order;
        ``dropped``: the coarser levels left out.
    """
    items = list(stacks)
    finest: dict[str, int] = {}
    for stack in items:
        key = image_key(stack)
        finest[key] = min(finest.get(key, _level(stack)), _level(stack))
    kept = [s for s in items if _level(s) == finest[image_key(s)]]
    dropped = [s for s in items if _level(s) != finest[image_key(s)]]
    return kept, dropped
