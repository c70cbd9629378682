"""The catalog of classic mistakes (``tests/catalog.py``) in the instructor's run.

Every entry of labs 1 and 2 is graded with the hidden cases added (the lab's default hidden
seed), in one batch per lab with the master solution, which must keep full marks. Each entry
must lose points, fail exactly its ``breaks`` and ``hidden_breaks``, and be named in the
feedback of its ``where`` cases. The catch rate (entries that lose points, entries named,
and how many the public cases alone catch) is kept in ``CATCH_RATE`` and printed at the end
of the session by ``tests/conftest.py``.
"""

import pytest

import catalog

from bnlab.grade import grader, lab01, lab02
from bnlab.grade.sandbox import Limits

LIMITS = Limits(load_timeout=30, question_timeout=5, file_bytes=1 << 20)
LABS = {"lab01": (lab01.HIDDEN_SEED, 24), "lab02": (lab02.HIDDEN_SEED, 32)}  # hidden seed, full marks
ENTRIES = {e.name: e for e in catalog.CATALOG}
CATCH_RATE = {}  # filled by ``graded``: the counts, and the ``line`` tests/conftest.py prints


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    """``{name: report}`` for every entry, and ``{lab: report}`` for each lab's solution."""
    reports = {}
    for lab, (seed, _) in LABS.items():
        tmp = tmp_path_factory.mktemp(lab)
        entries = [e for e in catalog.CATALOG if e.lab == lab]
        paths = [e.submission(tmp) for e in entries] + [catalog.SOLUTIONS[lab]]
        got = grader.grade_notebooks(lab, paths, LIMITS, jobs=2, hidden_seed=seed)
        reports.update(zip([e.name for e in entries] + [lab], got))
    CATCH_RATE.update(catch_rate(reports))
    return reports


def catch_rate(reports):
    """Entries caught (they lose points in the instructor's run), named (every ``where`` case
    says ``names``) and caught by the public cases alone, with the summary line."""
    entries = catalog.CATALOG
    caught = [e.name for e in entries if reports[e.name].score < reports[e.name].max_score]
    named = [e.name for e in entries if e.name in caught and e.where <= catalog.named_in(e, reports[e.name])]
    public = [e.name for e in entries if any(not c.passed for c in reports[e.name].cases if not c.hidden)]
    n = len(entries)
    line = (f"mistake catalog (labs 1-2, instructor run): {len(caught)}/{n} caught ({100 * len(caught) / n:.0f}%), "
            f"{len(named)}/{n} named; public cases alone catch {len(public)}/{n}")
    return dict(entries=n, caught=caught, named=named, public=public, line=line)


@pytest.mark.parametrize("lab", sorted(LABS))
def test_solution_keeps_full_marks(graded, lab):
    report = graded[lab]
    assert report.status == "graded" and not report.public_only, report.notes
    assert report.score == report.max_score == LABS[lab][1], grader.format_table(report)


@pytest.mark.parametrize("name", list(ENTRIES))
def test_entry_loses_points_and_is_named(graded, name):
    entry, report = ENTRIES[name], graded[name]
    assert not report.public_only
    assert report.score < report.max_score, grader.format_table(report)
    assert entry.where and entry.breaks | entry.hidden_breaks, name
    catalog.check(entry, report)


def test_catch_rate(graded):
    """Every entry is caught and named; the catalog covers both labs with at least 20 entries."""
    labs = {e.lab for e in catalog.CATALOG}
    assert labs == set(LABS) and len(catalog.CATALOG) >= 20
    assert CATCH_RATE["caught"] == CATCH_RATE["named"] == [e.name for e in catalog.CATALOG], CATCH_RATE["line"]
