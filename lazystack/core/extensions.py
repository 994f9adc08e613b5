"""Stack methods provided by the layers above the stack.

``LazyImageStack.extract_patches``, ``.normalized`` and ``.show`` are
conveniences over functions of the operations and front-end layers
([`lazystack.extract_patches()`][lazystack.extract_patches], [`lazystack.normalized()`][lazystack.normalized] and
[`lazystack.show()`][lazystack.show]). The stack sits below those layers and imports none
of them: the package's ``__init__`` (the top of the import graph) registers
the implementations here with [`provide()`][provide], and the stack's methods look
them up with [`provided()`][provided] when called. Every ``import lazystack...``
runs the package's ``__init__`` first, so the registrations are always there
(also in dask workers and DataLoader processes that unpickle a stack).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["provide", "provided"]

_PROVIDED: dict[str, Callable[..., Any]] = {}


def provide(name: str, func: Callable[..., Any]) -> None:
    """Register ``func`` as the implementation of the stack method ``name``.

    Parameters
    ----------
    name : str
        Method name (``"extract_patches"``, ``"normalized"``, ``"show"``).
    func : callable
        Called as ``func(stack, *args, **kwargs)``.
    """
    _PROVIDED[name] = func


def provided(name: str) -> Callable[..., Any]:
    """Return the implementation registered for the stack method ``name``.

    Raises
    ------
    NotImplementedError
        When nothing registered ``name`` (the ``lazystack`` package always does).
    """
    try:
        return _PROVIDED[name]
    except KeyError:
        msg = f"no implementation of the stack method {name!r} is registered (registered: {sorted(_PROVIDED)})"
        raise NotImplementedError(msg) from None
