"""The autograder (``python -m bnlab.grade``) and the self-checks (``bnlab.check``) on lab 1.

Submissions are the master solution with precise source substitutions (each asserted to
exist, so a test cannot silently grade an unchanged solution): every classic mistake must
lose exactly the points of the questions it breaks, keep the others, and be named in the
feedback; every way of crashing gets a verdict while a correct notebook graded in the same
batch keeps full marks.
"""

import csv
import json
import os
import subprocess
import sys

import nbformat
import numpy as np
import pytest

import submissions

from bnlab.grade import core, grader, lab01
from bnlab.grade.sandbox import Limits

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOLUTION = os.path.join(ROOT, "solutions", "lab01_batchnorm.ipynb")
LAB = os.path.join(ROOT, "labs", "lab01_batchnorm.ipynb")
ALTERNATIVE = os.path.join(ROOT, "tests", "fixtures", "lab01_alternative_submission.ipynb")
LIMITS = Limits(load_timeout=30, question_timeout=2, file_bytes=1 << 20)
ALL = {q.name for q in lab01.questions()}
FORWARD_TRAINING = {"forward_2d", "forward_4d", "forward_no_affine", "forward_5d_float32"}
BACKWARD = {"backward_dx", "backward_params", "backward_no_affine", "backward_eval"}

RUNNING_UPDATE = """            running_mean *= 1 - momentum
            running_mean += momentum * mu
            running_var *= 1 - momentum
            running_var += momentum * var * (m / (m - 1))"""
MEAN_TERM = "dx_hat - dx_hat.mean(axis=axes, keepdims=True)"
VAR_TERM = "\n                                    - x_hat * (dx_hat * x_hat).mean(axis=axes, keepdims=True))"

# name: (substitutions, questions that must fail, mistake that must be named, where)
MISTAKES = {
    "biased_running_var": (
        [("running_var += momentum * var * (m / (m - 1))", "running_var += momentum * var")],
        {"running_var"}, "biased_running_var", "running_var"),
    "momentum_reversed": (
        [(RUNNING_UPDATE, RUNNING_UPDATE.replace("*= 1 - momentum", "*= momentum")
          .replace("+= momentum *", "+= (1 - momentum) *"))],
        {"running_mean", "running_var"}, "momentum_reversed", "running_mean"),
    "rebind_running": (
        [(RUNNING_UPDATE, "            running_mean = (1 - momentum) * running_mean + momentum * mu\n"
                          "            running_var = (1 - momentum) * running_var + momentum * var * (m / (m - 1))")],
        {"running_mean", "running_var"}, "rebind_running", "running_var"),
    "eps_outside": (
        [("rstd = 1.0 / np.sqrt(var + eps)", "rstd = 1.0 / (np.sqrt(var) + eps)")],
        # float32: the 2e-6 relative change is inside float32's tolerance, so that question keeps its points
        ALL - {"forward_5d_float32", "running_mean", "running_var"}, "eps_outside", "forward_4d"),
    "unbiased_norm": (
        [("var = x.var(axis=axes)", "var = x.var(axis=axes, ddof=1)")],
        FORWARD_TRAINING | {"running_var", "backward_dx", "backward_params", "backward_no_affine"},
        "unbiased_norm", "forward_2d"),
    "axes_all": (
        [("axes = (0,) + tuple(range(2, x.ndim))", "axes = tuple(range(x.ndim))")],
        FORWARD_TRAINING | {"running_mean", "running_var", "backward_dx", "backward_params",
                            "backward_no_affine"}, "axes_all", "forward_4d"),
    "axes_batch": (
        [("axes = (0,) + tuple(range(2, x.ndim))", "axes = (0,)"),
         ("x_hat = (x - mu.reshape(shape)) * rstd.reshape(shape)", "x_hat = (x - mu) * rstd")],
        # rank 2 is unaffected; the broken broadcasting makes rank > 2 raise in the other questions
        ALL - {"forward_2d", "backward_no_affine"}, "axes_batch", "forward_4d"),
    "eval_batch_stats": (
        [("mu, var = running_mean, running_var", "mu, var = x.mean(axis=axes), x.var(axis=axes)")],
        {"eval_mode", "backward_eval"}, "eval_batch_stats", "eval_mode"),
    "eval_updates_running": (
        [("mu, var = running_mean, running_var",
          "mu, var = running_mean.copy(), running_var.copy()\n" + RUNNING_UPDATE.replace(
              "momentum * mu", "momentum * x.mean(axis=axes)").replace("momentum * var", "momentum * x.var(axis=axes)")
          .replace("            ", "        "))],
        {"eval_mode"}, "eval_updates_running", "eval_mode"),
    "backward_no_mean_path": (
        [(MEAN_TERM, "dx_hat")], {"backward_dx", "backward_no_affine"}, "backward_no_mean_path", "backward_dx"),
    "backward_no_var_path": (
        [(VAR_TERM, ")")], {"backward_dx", "backward_no_affine"}, "backward_no_var_path", "backward_dx"),
    "backward_constant_stats": (
        [('if cache["training"]:', "if False:")], {"backward_dx", "backward_no_affine"},
        "backward_constant_stats", "backward_dx"),
    "backward_eval_as_training": (
        [('if cache["training"]:', "if True:")], {"backward_eval"}, "backward_eval_as_training", "backward_eval"),
    "dgamma_from_x": (
        [("cache = dict(x_hat=x_hat,", "cache = dict(x=x, x_hat=x_hat,"),
         ("dgamma = (dy * x_hat).sum(axis=axes)", 'dgamma = (dy * cache["x"]).sum(axis=axes)')],
        {"backward_params"}, "dgamma_from_x", "backward_params"),
    "param_grads_mean": (
        [('dbeta = dy.sum(axis=axes) if', 'dbeta = dy.mean(axis=axes) if'),
         ("dgamma = (dy * x_hat).sum(axis=axes)", "dgamma = (dy * x_hat).mean(axis=axes)")],
        {"backward_params"}, "param_grads_mean", "backward_params"),
}

# name: (substitutions, questions that must fail, words the feedback must contain)
SHAPE_DTYPE = {
    "float64_out": ([("    return y, cache", "    return y.astype(np.float64), cache")],
                    {"forward_5d_float32"}, "dtype float64, expected float32"),
    "dgamma_keepdims": ([("dgamma = (dy * x_hat).sum(axis=axes)", "dgamma = (dy * x_hat).sum(axis=axes, keepdims=True)")],
                        {"backward_params"}, "shape (1, 4, 1, 1), expected (4,)"),
    "list_returned": ([("    return dx, dgamma, dbeta", "    return dx.tolist(), dgamma, dbeta")],
                      BACKWARD - {"backward_params"}, "an object of type list"),
    "nan": ([("rstd = 1.0 / np.sqrt(var + eps)", "rstd = 1.0 / np.sqrt(var - 100)")],
            ALL - {"running_mean", "running_var"}, "non-finite"),
    "dgamma_not_none": ([("dgamma = (dy * x_hat).sum(axis=axes) if gamma is not None else None",
                          "dgamma = (dy * x_hat).sum(axis=axes)")],
                        {"backward_no_affine"}, "dgamma should be None"),
    "permissive_eq": ([("    return y, cache", '    return type("Anything", (), {"__eq__": lambda s, o: True})(), cache')],
                      FORWARD_TRAINING | {"eval_mode"}, "an object of type Anything"),
    "not_a_tuple": ([("    return y, cache", "    return y")], ALL,
                    "batch_norm_forward returned an array of dtype float"),
    "patched_numpy": ([("    return y, cache", "    np.allclose = np.array_equal = lambda *a, **k: True\n    return y + 1, cache")],
                      FORWARD_TRAINING | {"eval_mode"}, "is wrong"),
}

BACKWARD_FIRST_LINE = '    x_hat, rstd, gamma = cache["x_hat"], cache["rstd"], cache["gamma"]'
EVAL_LINE = "        mu, var = running_mean, running_var"
# name: (substitutions or extra cells, questions that must fail, words in their feedback)
CRASHES = {
    "syntax_error": ([("def batch_norm_backward(dy, cache):", "def batch_norm_backward(dy, cache)")],
                     BACKWARD, "batch_norm_backward is not defined"),
    "missing_function": ([("def batch_norm_forward(x, gamma", "def batchnorm_forward(x, gamma")],
                         ALL, "batch_norm_forward is not defined"),
    "exception": ([(BACKWARD_FIRST_LINE, '    raise KeyError("oops")')], BACKWARD, "raised KeyError"),
    "sys_exit": ([(BACKWARD_FIRST_LINE, "    import sys\n    sys.exit(3)")], BACKWARD, "sys.exit was called"),
    "os_exit": ([(BACKWARD_FIRST_LINE, "    import os\n    os._exit(0)")], BACKWARD, "exited with status 0"),
    "segfault": ([(BACKWARD_FIRST_LINE, "    import ctypes\n    ctypes.string_at(0)")], BACKWARD, "segmentation fault"),
    "infinite_loop": ([(EVAL_LINE, "        while True:\n            pass")], {"eval_mode", "backward_eval"},
                      "did not finish within 2 s"),
    "huge_allocation": ([(EVAL_LINE, "        big = np.ones(1 << 40)")], {"eval_mode", "backward_eval"}, "MemoryError"),
    "huge_output": ([(EVAL_LINE, "        while True:\n            print('x' * 100000)")], {"eval_mode", "backward_eval"},
                    "File too large"),
    "load_crash": (["def helper(x=__import__('os')._exit(1)):\n    pass"], ALL, "could not be loaded"),
    "reference_import": ([("def batch_norm_forward(x, gamma", "def old_forward(x, gamma"),
                          ("def batch_norm_backward(dy, cache):", "def old_backward(dy, cache):")]
                         + ["from bnlab.numpy import batch_norm_forward, batch_norm_backward"],
                         ALL, "is not defined"),
}


def make_submission(tmp_path, name, edits):
    return submissions.make_submission(SOLUTION, tmp_path, name, edits)


@pytest.fixture(scope="module")
def expected():
    return grader.Expected("lab01")


@pytest.fixture(scope="module")
def graded(tmp_path_factory, expected):
    """Every submission above plus the solution, the lab and the fixture, graded in one batch."""
    tmp = tmp_path_factory.mktemp("submissions")
    cases = {**{k: v[0] for k, v in MISTAKES.items()}, **{k: v[0] for k, v in SHAPE_DTYPE.items()},
             **{k: v[0] for k, v in CRASHES.items()}}
    paths = {name: make_submission(tmp, name, edits) for name, edits in cases.items()}
    paths.update(solution=SOLUTION, lab=LAB, alternative=ALTERNATIVE)
    names = list(paths)
    # the correct notebook last, after all the crashes
    names.remove("solution")
    names.append("solution")
    reports = grader.grade_notebooks("lab01", [paths[n] for n in names], LIMITS, jobs=2)
    return {n: r for n, r in zip(names, reports)}


def by_question(report):
    return {q.name: q for q in report.questions}


def failing(report):
    return {q.name for q in report.questions if not q.passed}


def test_solution_full_marks(graded):
    report = graded["solution"]
    assert report.status == "graded" and report.notes == []
    assert report.score == report.max_score == 18
    assert failing(report) == set()


def test_untouched_lab_scores_zero_without_grader_error(graded):
    report = graded["lab"]
    assert report.status == "graded" and report.score == 0
    for q in report.questions:
        assert any("NotImplementedError" in f for f in q.feedback), q


def test_any_notebook_with_the_functions_is_graded(graded):
    """Another style of correct code, magics, a cell with a syntax error and top-level code
    that would loop forever or exit: full marks, the syntax error noted."""
    report = graded["alternative"]
    assert report.score == report.max_score, grader.format_table(report)
    assert any("syntax error" in n for n in report.notes)


@pytest.mark.parametrize("name", sorted(MISTAKES))
def test_classic_mistake_loses_its_points_and_is_named(graded, name):
    _, broken, mistake, where = MISTAKES[name]
    report = graded[name]
    assert failing(report) == broken, grader.format_table(report)
    questions = by_question(report)
    assert report.score == sum(q.max_score for q in report.questions if q.name not in broken)
    if mistake is not None:
        assert mistake in questions[where].mistakes, grader.format_table(report)
        message = next(m for m in lab01.mistakes() if m.name == mistake).message
        assert any(message in f for f in questions[where].feedback)


@pytest.mark.parametrize("name", sorted(SHAPE_DTYPE))
def test_shape_dtype_and_value_problems(graded, name):
    _, broken, words = SHAPE_DTYPE[name]
    report = graded[name]
    assert failing(report) == broken, grader.format_table(report)
    for q in report.questions:
        if q.name in broken:
            assert any(words in f for f in q.feedback), grader.format_table(report)


@pytest.mark.parametrize("name", sorted(CRASHES))
def test_crash_gets_a_verdict_and_grading_goes_on(graded, name):
    _, broken, words = CRASHES[name]
    report = graded[name]
    assert report.status == "graded"
    assert failing(report) == broken, grader.format_table(report)
    for q in report.questions:
        if q.name in broken:
            assert any(words in f for f in q.feedback), grader.format_table(report)


def test_reference_cannot_be_imported_by_a_submission(graded):
    notes = " ".join(graded["reference_import"].notes)
    assert "bnlab.numpy cannot be imported by a graded submission" in notes


def test_mistake_variants_without_flags_are_the_reference(expected):
    """The wrong implementations differ from the book by their flag only."""
    correct = lab01._mistake("none", "")
    for q in expected.questions:
        run = core.run(q, correct.functions, catch=False)
        result = core.evaluate(q, run, expected.reference[q.name], [])
        assert result.passed, (q.name, result.feedback)


def test_every_named_mistake_is_detectable(expected):
    """Each mistake changes at least one graded output of some question beyond tolerance."""
    for i, m in enumerate(lab01.mistakes()):
        assert any(not core.evaluate(q, expected.mistakes[q.name][i][1], expected.reference[q.name], []).passed
                   for q in expected.questions), m.name


def test_cli_reports(tmp_path):
    out = tmp_path / "reports"
    proc = subprocess.run([sys.executable, "-m", "bnlab.grade", "lab01", SOLUTION, LAB,
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
        assert all({"score", "max_score", "output", "feedback"} <= set(t) for t in report["tests"])
    with open(out / "summary.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["score"], r["max_score"], r["status"]) for r in rows] == [("18", "18", "graded"), ("0", "18", "graded")]
    assert rows[0]["backward_dx"] == "3" and rows[1]["backward_dx"] == "0"


def test_cli_unreadable_notebook_and_usage(tmp_path):
    bad = tmp_path / "not_a_notebook.ipynb"
    bad.write_text("{ this is not json")
    proc = subprocess.run([sys.executable, "-m", "bnlab.grade", "lab01", str(bad), str(tmp_path / "missing.ipynb")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "not a readable Jupyter notebook" in proc.stdout and "no such file" in proc.stdout
    proc = subprocess.run([sys.executable, "-m", "bnlab.grade", "lab99", str(bad)], capture_output=True, text=True)
    assert proc.returncode != 0


def test_self_check_passes_and_names_mistakes(capsys):
    from bnlab import check
    g = {"np": np}
    nb = nbformat.read(SOLUTION, as_version=4)
    for cell in nb.cells:
        if cell.get("id") in ("forward", "backward"):
            exec(cell.source, g)
    assert check.batch_norm_forward(g["batch_norm_forward"])
    assert check.batch_norm_backward(g["batch_norm_forward"], g["batch_norm_backward"])
    assert "FAIL" not in capsys.readouterr().out
    wrong = next(m for m in lab01.mistakes() if m.name == "momentum_reversed")
    with pytest.raises(AssertionError, match="running_mean"):
        check.running_statistics(wrong.functions["batch_norm_forward"])
    out = capsys.readouterr().out
    assert "FAIL" in out and wrong.message in out


def test_self_check_lets_the_students_exception_through():
    from bnlab import check

    def unfinished(*args, **kwargs):
        raise NotImplementedError("Replace this line with your code")

    with pytest.raises(NotImplementedError):
        check.forward_training(unfinished)


def test_forged_reply_is_not_trusted(tmp_path, expected):
    """A submission that writes its own pickled 'reply' and exits gets a verdict, not a score."""
    forge = ("    import os\n"
             "    np.savez('out/backward_dx.npz', __meta__=np.array([{}], dtype=object), s1_dx=np.array([None], dtype=object))\n"
             "    os._exit(0)")
    path = make_submission(tmp_path, "forged", [(BACKWARD_FIRST_LINE, forge)])
    report = grader.grade_notebook("lab01", path, LIMITS, expected)
    assert failing(report) == BACKWARD, grader.format_table(report)
    assert any("could not be read back" in f for f in by_question(report)["backward_dx"].feedback)


def test_corrupt_reply_file_is_not_trusted(tmp_path, expected):
    """A reply that is not even a zip file (written by the student, then exit) gets a verdict."""
    forge = ("    import os\n"
             "    open('out/backward_dx.npz', 'wb').write(b'PK\x03\x04 truncated zip')\n"
             "    os._exit(0)")
    path = make_submission(tmp_path, "corrupt", [(BACKWARD_FIRST_LINE, forge)])
    report = grader.grade_notebook("lab01", path, LIMITS, expected)
    assert report.status == "graded", report.notes
    assert failing(report) == BACKWARD, grader.format_table(report)
    assert any("could not be read back" in f for f in by_question(report)["backward_dx"].feedback)
