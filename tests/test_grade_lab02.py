"""The autograder (``python -m bnlab.grade lab02``) and the self-checks on lab 2.

As for lab 1 (tests/test_grade.py): submissions are the master solution with precise source
substitutions (each asserted to occur exactly once, so a test cannot silently grade an
unchanged solution); every classic mistake of the catalog (``tests/catalog.py``) must lose
exactly the points of the public cases it breaks, keep the others, and be named in the
feedback; a crashing notebook gets a verdict while the correct one graded in the same batch
keeps full marks.
"""

import csv
import json
import os
import subprocess
import sys

import pytest

import catalog
import submissions

from bnlab.grade import core, grader, lab02
from bnlab.grade.sandbox import Limits

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOLUTION = os.path.join(ROOT, "solutions", "lab02_normalization_family.ipynb")
LAB = os.path.join(ROOT, "labs", "lab02_normalization_family.ipynb")
LIMITS = Limits(load_timeout=30, question_timeout=5, file_bytes=1 << 20)
QUESTIONS = lab02.cases()
ALL = {q.name for q in QUESTIONS}
MAX_SCORE = 26

# the classic mistakes: tests/catalog.py (graded here in a student's run, public cases only)
MISTAKES = catalog.of("lab02")

LN_BACKWARD_FIRST_LINE = '    x_hat, rstd, gamma = cache["x_hat"], cache["rstd"], cache["gamma"]\n    axes, lead'
CRASH = [(LN_BACKWARD_FIRST_LINE, "    import ctypes\n    ctypes.string_at(0)\n" + LN_BACKWARD_FIRST_LINE)]


def make_submission(tmp_path, name, edits):
    return submissions.make_submission(SOLUTION, tmp_path, name, edits)


@pytest.fixture(scope="module")
def expected():
    return grader.Expected("lab02")


@pytest.fixture(scope="module")
def graded(tmp_path_factory, expected):
    """Every submission above, the untouched lab, a crashing notebook, then the solution, in one batch."""
    tmp = tmp_path_factory.mktemp("lab02")
    paths = {name: e.submission(tmp) for name, e in MISTAKES.items()}
    paths.update(lab=LAB, crash=make_submission(tmp, "crash", CRASH), solution=SOLUTION)
    reports = grader.grade_notebooks("lab02", list(paths.values()), LIMITS, jobs=2)
    return dict(zip(paths, reports))


def test_solution_full_marks(graded):
    submissions.assert_full_marks(graded["solution"], MAX_SCORE, QUESTIONS)


def test_untouched_lab_scores_zero_without_grader_error(graded):
    submissions.assert_untouched_lab_scores_zero(graded["lab"], MAX_SCORE)


def test_crash_gets_a_verdict_and_the_rest_is_graded(graded):
    report = graded["crash"]
    assert report.status == "graded"
    assert submissions.failing(report) == {"ln_backward_dx", "ln_backward_params"}, grader.format_table(report)
    assert report.score == MAX_SCORE - 4
    for q in report.cases:
        if not q.passed:
            assert q.crashed and any("segmentation fault" in f for f in q.feedback), grader.format_table(report)


@pytest.mark.parametrize("name", sorted(MISTAKES))
def test_classic_mistake_loses_its_points_and_is_named(graded, name):
    """Exactly the entry's public ``breaks`` fail and lose their points; its ``where`` cases
    name it (the only mistake recognised there), no other case does (catalog.check)."""
    assert graded[name].public_only
    catalog.check(MISTAKES[name], graded[name])


def test_backward_notes_the_failing_forward(graded):
    """A backward question that fails with its forward gets a note pointing at the forward."""
    report = graded["sbn_channels_scrambled"]
    dx = next(q for q in report.cases if q.name == "sbn_backward_dx")
    assert any(f.startswith("note: the forward pass fails too (sbn_forward, sbn_forward_float32)")
               for f in dx.feedback), grader.format_table(report)


def test_mistake_code_without_mistakes_is_the_reference(expected):
    """The wrong implementations differ from the reference by their grouping or flag only."""
    correct = lab02.correct()
    for q in expected.cases:
        run = core.run(q, correct.functions, catch=False)
        result = core.evaluate(q, run, expected.reference[q.name], [])
        assert result.passed, (q.name, result.feedback)


def test_every_named_mistake_is_detectable(expected):
    """Each mistake changes a graded output of some question it covers beyond tolerance, and
    mistakes only explain questions that call the functions they replace."""
    names = [m.name for m in lab02.mistakes()]
    assert len(names) == len(set(names))
    for m in lab02.mistakes():
        runs = [(q, dict((mm.name, r) for mm, r in expected.mistakes[q.name])) for q in expected.cases]
        assert all(m.name in by_name for q, by_name in runs if m.covers(q))
        assert not any(m.name in by_name for q, by_name in runs if not m.covers(q))
        assert any(not core.evaluate(q, by_name[m.name], expected.reference[q.name], []).passed
                   for q, by_name in runs if m.name in by_name), m.name


def test_cli_reports(tmp_path):
    out = tmp_path / "reports"
    proc = subprocess.run([sys.executable, "-m", "bnlab.grade", "lab02", SOLUTION, LAB, "--public", "--report", str(out)],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert f"{MAX_SCORE} / {MAX_SCORE}" in proc.stdout and f"0 / {MAX_SCORE}" in proc.stdout
    solution = json.loads((out / "solutions__lab02_normalization_family.json").read_text())
    assert (solution["score"], solution["max_score"]) == (MAX_SCORE, MAX_SCORE)
    assert {t["name"] for t in solution["tests"]} == ALL
    with open(out / "summary.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["score"], r["status"]) for r in rows] == [(str(MAX_SCORE), "graded"), ("0", "graded")]


def test_self_checks_pass_on_the_solution_and_name_mistakes(capsys):
    from bnlab import check
    g = submissions.solution_functions(SOLUTION, ("spatial", "layer-norm", "group-norm"))
    for layer in ("spatial_batch_norm", "layer_norm", "group_norm"):
        forward, backward = g[f"{layer}_forward"], g[f"{layer}_backward"]
        assert getattr(check, f"{layer}_forward")(forward)
        assert getattr(check, f"{layer}_backward")(forward, backward)
    assert "FAIL" not in capsys.readouterr().out
    submissions.assert_self_check_names(capsys, lab02, "group_norm_interleaved",
                                        check.group_norm_forward, "group_norm_forward",
                                        "gn_forward")
