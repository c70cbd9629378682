"""Submissions for the grader tests: a master solution with precise source edits."""

import nbformat


def make_submission(solution, tmp_path, name, edits):
    """The ``solution`` notebook with ``edits``: (old, new) substitutions, each of which must
    match exactly once (so a test cannot silently grade an unchanged solution), or strings
    appended as new code cells. Written to ``tmp_path / name.ipynb``; returns its path."""
    nb = nbformat.read(solution, as_version=4)
    for edit in edits:
        if isinstance(edit, str):
            nb.cells.append(nbformat.v4.new_code_cell(edit))
            continue
        old, new = edit
        hits = [c for c in nb.cells if c.cell_type == "code" and old in c.source]
        assert len(hits) == 1 and hits[0].source.count(old) == 1, f"{name}: {old!r} must occur once"
        hits[0].source = hits[0].source.replace(old, new)
    path = tmp_path / f"{name}.ipynb"
    nbformat.write(nb, str(path))
    return str(path)


def solution_functions(solution, cell_ids):
    """Execute the ``solution`` notebook's cells with these ids (in notebook order, with
    numpy as np) and return the namespace they define."""
    import numpy as np

    namespace = {"np": np}
    for cell in nbformat.read(solution, as_version=4).cells:
        if cell.get("id") in cell_ids:
            exec(cell.source, namespace)
    return namespace


def assert_self_check_names(capsys, lab, mistake_name, check, function_name, match):
    """bnlab.check's ``check`` fails the lab's catalogued mistake ``mistake_name`` (its
    ``function_name`` passed in), with an AssertionError matching ``match``, and prints FAIL
    and the mistake's feedback message (output captured before the call is read too)."""
    import pytest

    wrong = next(m for m in lab.mistakes() if m.name == mistake_name)
    with pytest.raises(AssertionError, match=match):
        check(wrong.functions[function_name])
    out = capsys.readouterr().out
    assert "FAIL" in out and wrong.message in out


# --- what every lab's grader must give the solution and the untouched lab -----------------

def failing(report):
    """The names of the report's questions that did not pass."""
    return {q.name for q in report.cases if not q.passed}


def assert_full_marks(report, max_score, questions=None):
    """The solution: graded without notes or integrity findings, every question passed,
    ``max_score`` points; the questions in the order of ``questions`` when given."""
    from bnlab.grade import grader

    table = grader.format_table(report)
    assert report.status == "graded" and report.notes == [] and report.integrity == [], table
    assert report.score == report.max_score == max_score and failing(report) == set(), table
    if questions is not None:
        assert [q.name for q in report.cases] == [q.name for q in questions]


def assert_untouched_lab_scores_zero(report, max_score):
    """The lab as handed out: graded (no grader error), zero of ``max_score`` points, and
    every question's feedback says its function is not implemented yet."""
    from bnlab.grade import grader

    assert report.status == "graded" and report.notes == [], grader.format_table(report)
    assert report.score == 0 and report.max_score == max_score
    for q in report.cases:
        assert any("NotImplementedError" in f and "not implemented yet" in f
                   for f in q.feedback), q


def assert_named_mistakes(report, max_score, broken, messages, where=None):
    """A classic mistake's notebook: graded without notes; exactly the ``broken`` questions
    fail, each losing all its points. ``messages``, {mistake name: message}: every question
    of ``where`` (default: every broken one) names some of these mistakes, each once and with
    its message, and together they name all of them; a question that passes names none."""
    from bnlab.grade import grader

    table = grader.format_table(report)
    assert report.status == "graded" and report.notes == [], table
    assert failing(report) == broken, table
    assert report.score == max_score - sum(q.max_score for q in report.cases if q.name in broken)
    seen = set()
    for q in report.cases:
        if q.name not in broken:
            assert q.mistakes == [], table
        elif q.name in (broken if where is None else where):
            assert q.mistakes and len(set(q.mistakes)) == len(q.mistakes), table
            assert set(q.mistakes) <= set(messages), table
            for m in q.mistakes:
                assert any(messages[m] in f for f in q.feedback), table
            seen.update(q.mistakes)
    assert seen == set(messages), table


def assert_fails_with_words(report, broken, words):
    """Exactly the ``broken`` questions fail, and each one's feedback contains ``words``."""
    from bnlab.grade import grader

    table = grader.format_table(report)
    assert report.status == "graded" and failing(report) == broken, table
    for q in report.cases:
        if q.name in broken:
            assert any(words in f for f in q.feedback), table
