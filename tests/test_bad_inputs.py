"""Bad-input corpus: every generated broken input ends in a clear lazystack error (or a correct read).

The corpus (``tests/corpus.py``) is generated once per session; each format's
cases run in one subprocess (a native crash is caught, a hang bounded by a
timeout). ``python tests/corpus.py`` prints the same results as a table.

Each case must end ``clear`` (a :class:`~lazystack.LazyStackError` naming the
file), ``ok`` (a valid extreme input read correctly) or ``tolerated`` (damaged
metadata the reader ignores, values equal to the format library's own read),
and must leave every file of the source unchanged. Known loader bugs are
strict xfails whose reason says what is wrong; the lead removes the mark
when the loader is fixed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import corpus
import pytest

pytestmark = pytest.mark.timeout(300)

#: (format group, case) -> what is wrong today. Each is a strict xfail: fixing the loader makes it pass.
KNOWN_BUGS: dict[tuple[str, str], str] = {}


@pytest.fixture(scope="session")
def corpus_results(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[corpus.BadCase], dict[tuple[str, str], Any]]:
    root = tmp_path_factory.mktemp("corpus")
    cases = corpus.generate(root)
    rows = corpus.run_corpus(root, cases)
    print("\n" + corpus.table(rows))
    return cases, {(r["fmt"], r["name"]): r for r in rows}


def test_every_case_ran(corpus_results: Any) -> None:
    cases, rows = corpus_results
    assert {(c.fmt, c.name) for c in cases} == set(rows)
    counts: dict[str, int] = {}
    for c in cases:
        counts[c.fmt] = counts.get(c.fmt, 0) + 1
    # the corpus covers every format, with a meaningful number of cases each
    generated = {"tiff", "iter_tiff", "czi", "zarr", "ome-zarr", "custom_eager", "custom_mmap", "bioio"}
    assert generated <= set(counts) <= generated | {"czi-real", "tiff-real"}
    assert min(counts[f] for f in generated) >= 10, counts


def test_no_crash_no_hang_no_modified_file(corpus_results: Any) -> None:
    _, rows = corpus_results
    bad = [r for r in rows.values() if r["outcome"] in ("crash", "hang") or r["modified"]]
    assert not bad, bad


@pytest.mark.parametrize(
    "fmt",
    ["bioio", "czi", "czi-real", "custom_eager", "custom_mmap", "iter_tiff", "ome-zarr", "tiff", "tiff-real", "zarr"],
)
def test_every_case_clear_or_correct(corpus_results: Any, fmt: str) -> None:
    """Every case except the known bugs (tested one by one below) ends clear, ok or tolerated."""
    _, rows = corpus_results
    if not any(f == fmt for f, _ in rows):
        pytest.skip(f"no {fmt} cases: the real data folder {corpus.SHARED_DATA} is absent")
    bad = [
        f"{r['name']}: {r['outcome']}: {r['detail']}"
        for (f, name), r in rows.items()
        if f == fmt and (f, name) not in KNOWN_BUGS and r["outcome"] not in ("clear", "ok", "tolerated")
    ]
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize(
    "key",
    [
        pytest.param(k, marks=pytest.mark.xfail(strict=True, reason=reason), id="/".join(k))
        for k, reason in KNOWN_BUGS.items()
    ],
)
def test_known_bug(corpus_results: Any, key: tuple[str, str]) -> None:
    _, rows = corpus_results
    row = rows[key]
    assert row["outcome"] in ("clear", "ok", "tolerated"), f"{row['outcome']}: {row['detail']}"


def test_runner_reports_crash_and_hang(tmp_path: Path) -> None:
    """The runner itself can fail: a dying interpreter is a crash, a stuck case a hang, the rest still run."""
    cases = [
        corpus.BadCase("selftest", "segfault", "x", "selftest-crash", "YX"),
        corpus.BadCase("selftest", "sleeps", "x", "selftest-hang", "YX"),
        corpus.BadCase("selftest", "missing", "missing.tif", "tiff", "YX", names=["missing.tif"]),
    ]
    corpus.save_cases(tmp_path, cases)
    rows = {r["name"]: r for r in corpus.run_corpus(tmp_path, cases, format_timeout=20, case_timeout=8)}
    assert rows["segfault"]["outcome"] == "crash"
    assert rows["sleeps"]["outcome"] == "hang"
    assert rows["missing"]["outcome"] == "clear"
