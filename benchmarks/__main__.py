"""``python -m benchmarks``: the lazystack patch-reading suite (see :mod:`benchmarks.suite`)."""

from __future__ import annotations

from .suite import main

if __name__ == "__main__":
    main()
