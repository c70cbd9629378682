"""The autograder (``python -m bnlab.grade``) and the self-checks (``bnlab.check``) on lab 1.

Submissions are the master solution with precise source substitutions (each asserted to
exist, so a test cannot silently grade an unchanged solution): every classic mistake of the
catalog (``tests/catalog.py``) must lose exactly the points of the public cases it breaks, keep
the others, and be named in the feedback. Every way a submission can crash, abuse resources or
tamper is in ``tests/test_grade_class.py`` (the instructor's run on a class folder).
"""

import csv
import json
import os
import subprocess
import sys

import pytest

import catalog
import submissions

from bnlab.grade import core, grader, lab01
from bnlab.grade.sandbox import Limits

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOLUTION = os.path.join(ROOT, "solutions", "lab01_batchnorm.ipynb")
LAB = os.path.join(ROOT, "labs", "lab01_batchnorm.ipynb")
ALTERNATIVE = os.path.join(ROOT, "tests", "fixtures", "lab01_alternative_submission.ipynb")
LIMITS = Limits(load_timeout=30, question_timeout=2, file_bytes=1 << 20)
ALL = {q.name for q in lab01.cases()}
FORWARD_TRAINING, BACKWARD = catalog.FORWARD_TRAINING, catalog.BACKWARD

# the classic mistakes: tests/catalog.py (graded here in a student's run, public cases only)
MISTAKES = catalog.of("lab01")

def make_submission(tmp_path, name, edits):
    return submissions.make_submission(SOLUTION, tmp_path, name, edits)


@pytest.fixture(scope="module")
def expected():
    return grader.Expected("lab01")


@pytest.fixture(scope="module")
def graded(tmp_path_factory, expected):
    """Every submission above plus the solution, the lab and the fixture, graded in one batch."""
    tmp = tmp_path_factory.mktemp("submissions")
    cases = {k: e.edits for k, e in MISTAKES.items()}
    paths = {name: make_submission(tmp, name, edits) for name, edits in cases.items()}
    paths.update(solution=SOLUTION, lab=LAB, alternative=ALTERNATIVE)
    names = list(paths)
    # the correct notebook last, after all the mistakes
    names.remove("solution")
    names.append("solution")
    reports = grader.grade_notebooks("lab01", [paths[n] for n in names], LIMITS, jobs=2)
    return {n: r for n, r in zip(names, reports)}


def by_question(report):
    return {q.name: q for q in report.cases}


def test_solution_full_marks(graded):
    submissions.assert_full_marks(graded["solution"], 18)


def test_untouched_lab_scores_zero_without_grader_error(graded):
    submissions.assert_untouched_lab_scores_zero(graded["lab"], 18)


def test_any_notebook_with_the_functions_is_graded(graded):
    """Another style of correct code, magics, a cell with a syntax error and top-level code
    that would loop forever or exit: full marks, the syntax error noted."""
    report = graded["alternative"]
    assert report.score == report.max_score, grader.format_table(report)
    assert any("syntax error" in n for n in report.notes)


@pytest.mark.parametrize("name", sorted(MISTAKES))
def test_classic_mistake_loses_its_points_and_is_named(graded, name):
    """Exactly the entry's public ``breaks`` fail and lose their points; its ``where`` cases
    name it (catalog.check)."""
    assert graded[name].public_only
    catalog.check(MISTAKES[name], graded[name])


def test_mistake_variants_without_flags_are_the_reference(expected):
    """The wrong implementations differ from the book by their flag only."""
    correct = lab01._mistake("none", "")
    for q in expected.cases:
        run = core.run(q, correct.functions, catch=False)
        result = core.evaluate(q, run, expected.reference[q.name], [])
        assert result.passed, (q.name, result.feedback)


def test_every_named_mistake_is_detectable(expected):
    """Each mistake changes at least one graded output of some question beyond tolerance."""
    for i, m in enumerate(lab01.mistakes()):
        assert any(not core.evaluate(q, expected.mistakes[q.name][i][1], expected.reference[q.name], []).passed
                   for q in expected.cases), m.name


def test_cli_reports_of_a_students_run(tmp_path):
    """``--public``: the public cases only (the instructor's run is tests/test_grade_class.py)."""
    out = tmp_path / "reports"
    proc = subprocess.run([sys.executable, "-m", "bnlab.grade", "lab01", SOLUTION, LAB, "--public",
                           "--report", str(out), "--timeout", "10"],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "18 / 18" in proc.stdout and "0 / 18" in proc.stdout
    solution = json.loads((out / "solutions__lab01_batchnorm.json").read_text())
    lab = json.loads((out / "labs__lab01_batchnorm.json").read_text())
    assert (solution["score"], solution["max_score"]) == (18, 18)
    assert (lab["score"], lab["max_score"]) == (0, 18)
    for report in (solution, lab):
        assert isinstance(report["score"], (int, float)) and isinstance(report["max_score"], (int, float))
        assert {t["name"] for t in report["tests"]} == ALL
        assert sum(t["max_score"] for t in report["tests"]) == report["max_score"]
        assert all({"score", "max_score", "output", "status", "visibility"} <= set(t) for t in report["tests"])
    with open(out / "summary.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["score"], r["max_score"], r["status"]) for r in rows] == [("18", "18", "graded"), ("0", "18", "graded")]
    assert rows[0]["backward"] == "7" and rows[1]["backward"] == "0"  # the question's cases: 3 + 2 + 1 + 1


def test_cli_unreadable_notebook_and_usage(tmp_path):
    bad = tmp_path / "not_a_notebook.ipynb"
    bad.write_text("{ this is not json")
    proc = subprocess.run([sys.executable, "-m", "bnlab.grade", "lab01", str(bad), str(tmp_path / "missing.ipynb"),
                           "--public"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "not a readable Jupyter notebook" in proc.stdout and "no such file" in proc.stdout
    proc = subprocess.run([sys.executable, "-m", "bnlab.grade", "lab99", str(bad)], capture_output=True, text=True)
    assert proc.returncode != 0


def test_self_check_passes_and_names_mistakes(capsys):
    from bnlab import check
    g = submissions.solution_functions(SOLUTION, ("forward", "backward"))
    assert check.batch_norm_forward(g["batch_norm_forward"])
    assert check.batch_norm_backward(g["batch_norm_forward"], g["batch_norm_backward"])
    assert "FAIL" not in capsys.readouterr().out
    submissions.assert_self_check_names(capsys, lab01, "momentum_reversed",
                                        check.running_statistics, "batch_norm_forward",
                                        "running_mean")


def test_self_check_lets_the_students_exception_through():
    from bnlab import check

    def unfinished(*args, **kwargs):
        raise NotImplementedError("Replace this line with your code")

    with pytest.raises(NotImplementedError):
        check.forward_training(unfinished)
