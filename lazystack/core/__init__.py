"""Core: errors, the axes model and patch geometry (no I/O, imports nothing else of lazystack)."""
