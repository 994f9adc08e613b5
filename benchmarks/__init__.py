"""Benchmarks of lazystack: ``python -m benchmarks.bench_<name> [--quick]``."""
