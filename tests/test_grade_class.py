"""Grading a whole class the way an instructor does: ``python -m bnlab.grade lab01 FOLDER
--report DIR --hidden-seed N`` on a folder holding a correct submission and one notebook per
way a submission can go wrong (crashes, resource abuse, wrong outputs, tampering, unreadable
files), graded in ONE batch, in parallel.

Each failure gets a verdict with a message on exactly the cases it breaks; the correct
submission's report is the same as when it is graded alone; every notebook has its reports;
nothing is left running.
"""

import csv
import json
import os
import subprocess
import sys

import nbformat
import pytest

import submissions

from bnlab.grade import grader, lab01

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOLUTION = os.path.join(ROOT, "solutions", "lab01_batchnorm.ipynb")
ALTERNATIVE = os.path.join(ROOT, "tests", "fixtures", "lab01_alternative_submission.ipynb")
HIDDEN_SEED = 4242  # an instructor's own secret
CASES = lab01.cases(hidden_seed=HIDDEN_SEED)
ALL = {c.name for c in CASES}
BACKWARD = {c.name for c in CASES if lab01.BACKWARD in c.functions}
EVAL = {c.name for c in CASES if any(s.get("kwargs", {}).get("training") is False for s in c.plan["steps"])}
GRADES_Y = {c.name for c in CASES if any(k.endswith("_y") for k in c.graded)}
FLOAT32_Y = {c.name for c in CASES if c.name in GRADES_Y and c.inputs["x"].dtype.name == "float32"}
GRADES_DX = {c.name for c in CASES if any(k.endswith("_dx") for k in c.graded)}
GRADES_DGAMMA = {c.name for c in CASES if any(k.endswith("_dgamma") for k in c.graded) and "gamma" in c.inputs}
RUNNING_ONLY = {c.name for c in CASES if all("running" in k for k in c.graded)}
# as root, each child runs as a user of its own: a write outside its folder raises there
ISOLATED = ALL if os.geteuid() == 0 else set()
MARKERS = ("987.125", "987.25", "987.5")  # `sleep` arguments of the processes submissions leave

BACKWARD_FIRST_LINE = '    x_hat, rstd, gamma = cache["x_hat"], cache["rstd"], cache["gamma"]'
FORWARD_RETURN = "    return y, cache"
EVAL_LINE = "        mu, var = running_mean, running_var"
RSTD = "rstd = 1.0 / np.sqrt(var + eps)"


def failure_modes(klass, reports):
    """name: (edits for submissions.make_submission, the cases that must fail, the words each
    failing case's feedback must contain). ``klass`` is the class folder, ``reports`` the
    report folder (paths a tampering submission aims at)."""
    solution_copy = os.path.join(klass, "solution.ipynb")
    return {
        "syntax_error": ([("def batch_norm_backward(dy, cache):", "def batch_norm_backward(dy, cache)")],
                         BACKWARD, "batch_norm_backward is not defined"),
        "misnamed_function": ([("def batch_norm_forward(x, gamma", "def batchnorm_forward(x, gamma")],
                              ALL, "batch_norm_forward is not defined"),
        "wrong_signature": ([("training=True, momentum=0.1, eps=1e-5):", "training=True, momentum=0.1):"),
                             ("np.sqrt(var + eps)", "np.sqrt(var + 1e-5)")],
                            ALL, "the lab's is batch_norm_forward(x, gamma, beta, *, running_mean=None"),
        "exception": ([(BACKWARD_FIRST_LINE, '    raise KeyError("oops")')], BACKWARD, "raised KeyError"),
        "infinite_loop": ([(EVAL_LINE, "        while True:\n            pass")], EVAL, "did not finish within 2 s"),
        "sys_exit": ([(BACKWARD_FIRST_LINE, "    import sys\n    sys.exit(3)")], BACKWARD, "sys.exit was called"),
        "os_exit": ([(BACKWARD_FIRST_LINE, "    import os\n    os._exit(0)")], BACKWARD, "exited with status 0"),
        "segfault": ([(BACKWARD_FIRST_LINE, "    import ctypes\n    ctypes.string_at(0)")], BACKWARD,
                     "segmentation fault"),
        "allocation_50gb": ([(EVAL_LINE, "        big = np.ones(50 * 2**30, dtype=np.uint8)\n" + EVAL_LINE)],
                            EVAL, "MemoryError"),
        "output_100mb": ([(EVAL_LINE, "        print('x' * (100 << 20))\n" + EVAL_LINE)], EVAL, "File too large"),
        # processes left running: the outputs are right, so nothing fails; the report notes the kill
        "subprocess_left_running": ([(FORWARD_RETURN, "    import subprocess\n"
                                      f"    subprocess.Popen(['sleep', '{MARKERS[0]}'])\n" + FORWARD_RETURN)],
                                    set(), ""),
        "fork_left_running": ([(FORWARD_RETURN, "    import os\n    if os.fork() == 0:\n"
                                f"        os.execvp('sleep', ['sleep', '{MARKERS[1]}'])\n" + FORWARD_RETURN)],
                              set(), ""),
        "daemon_left_running": ([(FORWARD_RETURN, "    import os\n    if os.fork() == 0:\n        os.setsid()\n"
                                  "        if os.fork() == 0:\n"
                                  f"            os.execvp('sleep', ['sleep', '{MARKERS[2]}'])\n"
                                  "        os._exit(0)\n" + FORWARD_RETURN)],
                                set(), ""),
        "load_crash": (["def helper(x=__import__('os')._exit(1)):\n    pass"], ALL, "could not be loaded"),
        "not_a_tuple": ([(FORWARD_RETURN, "    return y")], ALL, "batch_norm_forward returned an array of dtype float"),
        "list_returned": ([("    return dx, dgamma, dbeta", "    return dx.tolist(), dgamma, dbeta")],
                          GRADES_DX, "dx is an object of type list"),
        "dgamma_not_none": ([("dgamma = (dy * x_hat).sum(axis=axes) if gamma is not None else None",
                              "dgamma = (dy * x_hat).sum(axis=axes)")], {"backward_no_affine"}, "dgamma should be None"),
        "nan": ([(RSTD, "rstd = 1.0 / np.sqrt(var - 100)")], ALL - RUNNING_ONLY, "non-finite"),
        "inf": ([(FORWARD_RETURN, "    return y / 0.0, cache")], GRADES_Y, "non-finite"),
        "wrong_dtype": ([(FORWARD_RETURN, "    return y.astype(np.float64), cache")], FLOAT32_Y,
                        "has dtype float64, expected float32"),
        "broadcasting_shape": ([("dgamma = (dy * x_hat).sum(axis=axes)",
                                 "dgamma = (dy * x_hat).sum(axis=axes, keepdims=True)")],
                               GRADES_DGAMMA, "dgamma has shape (1, "),
        "patched_numpy": ([(FORWARD_RETURN, "    np.allclose = np.array_equal = lambda *a, **k: True\n"
                            "    np.testing.assert_allclose = lambda *a, **k: None\n    return y + 1, cache")],
                          GRADES_Y, "y is wrong"),
        "patched_bnlab": ([(FORWARD_RETURN, "    import bnlab.tolerances, bnlab.check\n"
                            "    bnlab.tolerances.tolerance = lambda *a, **k: dict(rtol=1e9, atol=1e9)\n"
                            "    bnlab.check.run_checks = lambda *a, **k: True\n    return y + 1, cache")],
                          GRADES_Y, "y is wrong"),
        "permissive_eq": ([(FORWARD_RETURN, '    return type("Anything", (), {"__eq__": lambda s, o: True})(), cache')],
                          GRADES_Y, "an object of type Anything"),
        "writes_report_folder": ([(FORWARD_RETURN,
                                   f"    open({os.path.join(reports, 'solution.json')!r}, 'w').write('{{\"score\": 0}}')\n"
                                   f"    open({os.path.join(reports, 'summary.csv')!r}, 'w').write('forged')\n"
                                   f"    open({os.path.join(reports, 'planted.txt')!r}, 'w').write('forged')\n"
                                   + FORWARD_RETURN)],
                                 ISOLATED, "PermissionError"),
        "writes_other_submission": ([(FORWARD_RETURN, f"    open({solution_copy!r}, 'w').write('forged')\n"
                                      + FORWARD_RETURN)], ISOLATED, "PermissionError"),
        "forged_reply": ([(BACKWARD_FIRST_LINE, "    import os\n    np.savez('out/backward_dx.npz', "
                           "__meta__=np.array([{}], dtype=object), s1_dx=np.array([None], dtype=object))\n"
                           "    os._exit(0)")], BACKWARD, ""),
        "corrupt_reply": ([(BACKWARD_FIRST_LINE, "    import os\n"
                            "    open('out/backward_dx.npz', 'wb').write(b'PK\\x03\\x04 truncated zip')\n"
                            "    os._exit(0)")], BACKWARD, ""),
        "reference_import": ([("def batch_norm_forward(x, gamma", "def old_forward(x, gamma"),
                              ("def batch_norm_backward(dy, cache):", "def old_backward(dy, cache):"),
                              "from bnlab.numpy import batch_norm_forward, batch_norm_backward"],
                             ALL, "is not defined"),
    }


def write_notebook(path, text=None, cells=()):
    if text is not None:
        with open(path, "w") as f:
            f.write(text)
        return
    nb = nbformat.v4.new_notebook()
    nb.cells = list(cells)
    nbformat.write(nb, path)


@pytest.fixture(scope="module")
def klass(tmp_path_factory):
    """The class folder, graded once with the CLI; returns (modes, reports folder, CLI result)."""
    tmp = tmp_path_factory.mktemp("class")
    folder, reports = tmp / "submissions", tmp / "reports"
    folder.mkdir()
    reports.mkdir()  # an instructor's existing report folder, which a submission aims at
    modes = failure_modes(str(folder), str(reports))
    for name, (edits, *_) in modes.items():
        submissions.make_submission(SOLUTION, folder, name, edits)
    write_notebook(str(folder / "solution.ipynb"), text=open(SOLUTION).read())
    write_notebook(str(folder / "alternative.ipynb"), text=open(ALTERNATIVE).read())
    no_backward = nbformat.read(SOLUTION, as_version=4)
    no_backward.cells = [c for c in no_backward.cells if c.get("id") != "backward"]
    nbformat.write(no_backward, str(folder / "missing_function.ipynb"))
    write_notebook(str(folder / "corrupt_notebook.ipynb"), text='{"cells": [ this is not json')
    write_notebook(str(folder / "zero_bytes.ipynb"), text="")
    write_notebook(str(folder / "empty_notebook.ipynb"))
    nested = folder / "late" / ".ipynb_checkpoints"  # folders are searched; checkpoints skipped
    nested.mkdir(parents=True)
    write_notebook(str(nested / "solution-checkpoint.ipynb"), text="{}")
    proc = subprocess.run([sys.executable, "-m", "bnlab.grade", "lab01", str(folder), "--report", str(reports),
                           "--hidden-seed", str(HIDDEN_SEED), "--timeout", "2", "--load-timeout", "30",
                           "--jobs", "2"], capture_output=True, text=True, timeout=600, cwd=tmp)
    return modes, reports, proc


def report(reports, name):
    with open(reports / f"{name}.json") as f:
        return json.load(f)


def cases_of(rep):
    return {c["name"]: c for q in rep["questions"] for c in q["cases"]}


def failing(rep):
    return {name for name, c in cases_of(rep).items() if c["status"] != "passed"}


def test_grading_finished_with_a_progress_bar(klass):
    _, _, proc = klass
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "grading lab01: 100%" in proc.stderr
    assert "0 grader errors" in proc.stdout


def test_correct_submission_keeps_full_marks_and_its_report(klass, tmp_path):
    """Its report in the batch is the one it gets when graded alone (times aside)."""
    _, reports, _ = klass
    rep = report(reports, "solution")
    assert (rep["status"], rep["score"], rep["max_score"]) == ("graded", 24, 24)
    assert rep["integrity"] == [] and rep["notes"] == [] and failing(rep) == set()
    alone = grader.grade_notebook("lab01", SOLUTION, expected=grader.Expected("lab01", HIDDEN_SEED))
    solo = alone.to_json()
    strip = lambda r: [{k: v for k, v in c.items() if k != "seconds"} for c in cases_of(r).values()]  # noqa: E731
    assert strip(rep) == strip(solo)
    assert report(reports, "alternative")["score"] == 24


@pytest.mark.parametrize("name", sorted(failure_modes("K", "R")))
def test_failure_gets_a_verdict_on_exactly_its_cases(klass, name):
    modes, reports, _ = klass
    _, broken, words = modes[name]
    rep = report(reports, name)
    assert rep["status"] == "graded"
    assert failing(rep) == broken, json.dumps(rep, indent=1)[:4000]
    cases = cases_of(rep)
    assert rep["score"] == sum(c["max_score"] for n, c in cases.items() if n not in broken)
    for n in broken:
        assert cases[n]["feedback"], (n, cases[n])
        assert any(words in f for f in cases[n]["feedback"]), (n, cases[n]["feedback"])


def test_processes_left_running_are_killed_and_noted(klass):
    _, reports, _ = klass
    for name in ("subprocess_left_running", "fork_left_running", "daemon_left_running"):
        assert any("process(es) running" in n for n in report(reports, name)["notes"]), report(reports, name)["notes"]
    alive = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().decode(errors="replace")
        except OSError:
            continue
        if any(m in cmd for m in MARKERS):
            alive.append(cmd)
    assert alive == []


def test_tampering_changes_no_other_report(klass):
    """The forged solution.json and summary.csv were replaced by the grader's; a file that a
    submission managed to plant is reported."""
    _, reports, proc = klass
    assert report(reports, "solution")["score"] == 24
    with open(reports / "summary.csv") as f:
        assert f.readline().startswith("notebook,status,forward,running,eval,backward,score")
    if os.geteuid() == 0:  # the children ran as other users: the write itself failed
        assert not (reports / "planted.txt").exists()
    else:
        assert "planted.txt" in proc.stderr


def test_reference_import_is_an_integrity_violation(klass):
    _, reports, proc = klass
    flags = report(reports, "reference_import")["integrity"]
    assert any("bnlab.numpy" in f and "reference" in f for f in flags), flags
    notes = " ".join(report(reports, "reference_import")["notes"])
    assert "bnlab.numpy cannot be imported by a graded submission" in notes
    assert "INTEGRITY" in proc.stdout and "1 flagged for integrity" in proc.stdout
    with open(reports / "summary.csv", newline="") as f:
        rows = {os.path.basename(r["notebook"]): r for r in csv.DictReader(f)}
    assert "bnlab.numpy" in rows["reference_import.ipynb"]["integrity"]
    assert rows["solution.ipynb"]["integrity"] == ""


@pytest.mark.parametrize("name, status, words", [
    ("corrupt_notebook", "unreadable", "not a readable Jupyter notebook"),
    ("zero_bytes", "unreadable", "not a readable Jupyter notebook"),
    ("empty_notebook", "graded", "defines nothing"),
    ("missing_function", "graded", "batch_norm_backward is not defined"),
])
def test_unusable_notebooks_get_a_verdict(klass, name, status, words):
    _, reports, _ = klass
    rep = report(reports, name)
    assert rep["status"] == status and rep["score"] == (24 - 9 if name == "missing_function" else 0)
    assert any(words in f for c in cases_of(rep).values() for f in c["feedback"])


def test_nothing_is_lost(klass):
    """A JSON report, a feedback text and a CSV row for every notebook in the folder (and
    none for Jupyter's checkpoints)."""
    modes, reports, _ = klass
    names = set(modes) | {"solution", "alternative", "missing_function", "corrupt_notebook", "zero_bytes",
                          "empty_notebook"}
    assert {p.stem for p in reports.glob("*.json")} == names
    assert {p.stem for p in reports.glob("*.txt")} == names
    with open(reports / "summary.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert sorted(os.path.splitext(os.path.basename(r["notebook"]))[0] for r in rows) == sorted(names)
    for r in rows:
        assert float(r["score"]) == sum(float(r[q]) for q in lab01.QUESTIONS)


def test_report_has_questions_cases_points_feedback_and_time(klass):
    _, reports, _ = klass
    rep = report(reports, "nan")
    assert [q["name"] for q in rep["questions"]] == list(lab01.QUESTIONS)
    for q in rep["questions"]:
        assert {"title", "status", "score", "max_score", "seconds", "feedback", "cases"} <= set(q)
        assert q["score"] == sum(c["score"] for c in q["cases"])
        for c in q["cases"]:
            assert {"status", "score", "max_score", "feedback", "seconds", "hidden"} <= set(c)
            assert c["seconds"] is not None and c["seconds"] >= 0
    assert sum(c["hidden"] for c in cases_of(rep).values()) == 6
    assert {t["visibility"] for t in rep["tests"]} == {"visible", "after_published"}
    text = (reports / "nan.txt").read_text()
    assert "Question forward: Forward pass in training" in text and "non-finite" in text
    assert "[hidden]" in text


def test_students_run_the_public_cases_only(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "bnlab.grade", "lab01", SOLUTION, "--public", "--no-progress"],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "Score: 18 / 18 points (100%, public cases only" in proc.stdout
    assert "hidden" not in proc.stdout.replace("adds hidden cases", "")
    assert proc.stderr == ""
