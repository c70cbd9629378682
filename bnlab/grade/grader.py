"""Grade notebooks: sandboxed runs, comparison against the reference, and the reports.

``grade_notebooks`` reads every submission first (so that no student's code, running while
others are graded, can change another's notebook), then grades them in parallel: each is a
sandboxed child process (``bnlab.grade.sandbox``) that returns raw outputs, judged here
against the reference (``bnlab.grade.core``). ``write_reports`` writes, once grading is over,
one JSON report, one feedback text per submission and the class's ``summary.csv``.

A report has the lab's questions, each with its test cases (``core.CaseResult``): status,
points, feedback, time. Public cases are what students run before they submit; the
instructor's run adds the hidden cases, drawn from the instructor's ``hidden_seed``.
"""

import csv
from dataclasses import dataclass, field
import io
import json
import os
import shutil
import tempfile
import traceback

from bnlab.grade import core, lab_module
from bnlab.grade.notebook import NotebookError, extract
from bnlab.grade.sandbox import Limits, run_submission


@dataclass
class Report:
    lab: str
    notebook: str
    score: float
    max_score: float
    status: str                      # "graded", "unreadable" (not a notebook) or "grader_error"
    cases: list = field(default_factory=list)      # core.CaseResult, in the lab's order
    notes: list = field(default_factory=list)      # about the notebook as a whole
    integrity: list = field(default_factory=list)  # flags for the instructor (reference imports)
    questions: dict = field(default_factory=dict)  # the lab's QUESTIONS: {id: title}
    public_only: bool = False        # a student's run: the hidden cases were not graded

    def by_question(self):
        """``[(id, title, [CaseResult, ...]), ...]`` in the lab's order of questions."""
        return [(q, title, [c for c in self.cases if c.question == q]) for q, title in self.questions.items()]

    def to_json(self):
        """Per question and per case: status, points, feedback, time. Also Gradescope's
        results.json fields: top-level ``score``/``max_score`` and one ``tests`` entry per
        case (hidden cases ``visibility: after_published``)."""
        cases = [dict(name=c.name, question=c.question, title=c.title, hidden=c.hidden,
                      status=case_status(c), score=c.score, max_score=c.max_score, seconds=c.seconds,
                      mistakes=c.mistakes, feedback=c.feedback) for c in self.cases]
        questions = []
        for q, title, results in self.by_question():
            score, max_score = sum(c.score for c in results), sum(c.max_score for c in results)
            questions.append(dict(
                name=q, title=title, score=score, max_score=max_score,
                status="passed" if score == max_score else "failed" if score == 0 else "partial",
                seconds=sum(c.seconds or 0.0 for c in results),
                feedback=[f"{c.name}: {f}" for c in results for f in c.feedback],
                cases=[c for c in cases if c["question"] == q]))
        return {
            "lab": self.lab, "notebook": self.notebook, "status": self.status,
            "score": self.score, "max_score": self.max_score, "public_only": self.public_only,
            "integrity": self.integrity, "notes": self.notes, "questions": questions,
            "tests": [dict(name=c["name"], score=c["score"], max_score=c["max_score"],
                           status=c["status"], visibility="after_published" if c["hidden"] else "visible",
                           output="\n".join(c["feedback"]) or "correct") for c in cases],
        }


def case_status(result):
    """"passed", "failed" (a wrong or missing output) or "error" (the sandbox's verdict: a
    timeout, a crash, a notebook that could not be loaded)."""
    return "passed" if result.passed else "error" if result.crashed else "failed"


class Expected:
    """The lab's cases, with the reference's and the named mistakes' runs of each, computed
    once per grading run. ``hidden_seed=None``: the public cases only (a student's run)."""

    def __init__(self, lab, hidden_seed=None):
        self.lab = lab
        self.module = lab_module(lab)
        self.public_only = hidden_seed is None
        self.cases = self.module.cases(hidden_seed=hidden_seed)
        reference = self.module.reference()
        self.reference = {q.name: core.run(q, reference, catch=False) for q in self.cases}
        self.signatures = {name: _signature(f) for name, f in reference.items()}
        mistakes = self.module.mistakes()
        self.mistakes = {q.name: [(m, core.run(q, m.functions)) for m in mistakes if m.covers(q)]
                         for q in self.cases}

    @property
    def max_score(self):
        return float(sum(q.points for q in self.cases))

    def report(self, path, status, results, notes=(), integrity=()):
        return Report(self.lab, str(path), float(sum(r.score for r in results)), self.max_score, status,
                      results, list(notes), list(integrity), dict(self.module.QUESTIONS), self.public_only)

    def zero(self, feedback=(), crashed=False):
        """A result of 0 points per case, with the same ``feedback`` for each."""
        return [core.CaseResult(q.name, q.title, 0.0, q.points, list(feedback), crashed=crashed,
                                question=q.question, hidden=q.hidden) for q in self.cases]


def _signature(function):
    import inspect
    return f"{function.__name__}{inspect.signature(function)}"


def read_submission(path):
    """``notebook.extract(path)``, or the ``NotebookError`` saying why it cannot be read."""
    try:
        return extract(path)
    except NotebookError as exc:
        return exc


def grade_notebook(lab, path, limits=Limits(), expected=None, submission=None):
    """Grade one notebook; never raises for anything the notebook contains."""
    expected = expected or Expected(lab)
    submission = submission if submission is not None else read_submission(path)
    if isinstance(submission, NotebookError):
        return expected.report(path, "unreadable", expected.zero([str(submission)]), [str(submission)])
    if not submission.cells:
        why = "the notebook defines nothing the grader can run (no function definitions)"
        notes = submission.notes + [why]
        return expected.report(path, "graded", expected.zero([why], crashed=True), notes, submission.integrity)
    child = run_submission(submission.cells, expected.module.FUNCTIONS, expected.cases, limits)
    notes = submission.notes + child.load_errors
    if child.left_running:
        notes.append(f"the notebook left {child.left_running} process(es) running (a fork, a subprocess): "
                     "killed when its grading ended; graded code should not start processes")
    integrity = submission.integrity + [f for f in child.integrity if f not in submission.integrity]
    results = []
    for q in expected.cases:
        missing = [f for f in child.missing if f in q.functions]
        if missing:
            results.append(core.CaseResult(q.name, q.title, 0.0, q.points, [
                f"{', '.join(missing)} is not defined in the notebook (a function with this exact "
                "name, defined at the top level of a code cell)"], crashed=True,
                question=q.question, hidden=q.hidden))
            continue
        student = core.Run(*child.runs[q.name])
        result = core.evaluate(q, student, expected.reference[q.name], expected.mistakes[q.name],
                               getattr(expected.module, "hints", None))
        result.seconds = child.seconds.get(q.name)
        _explain_signature(result, student, child.signatures, expected.signatures)
        results.append(result)
    core.relate(expected.cases, results)
    return expected.report(path, "graded", results, notes, integrity)


def _explain_signature(result, student, theirs, ours):
    """After a TypeError about arguments, show the student's signature next to the lab's."""
    error = student.error
    if getattr(error, "exc_type", None) != "TypeError" or "argument" not in error.message:
        return
    name = error.function
    if theirs.get(name) and name in ours:
        result.feedback.append(f"your signature is {name}{theirs[name]}; the lab's is {ours[name]}")


def grade_notebooks(lab, paths, limits=Limits(), jobs=1, hidden_seed=None, progress=False):
    """Grade each notebook, ``jobs`` at a time (each is a child process to wait on). Every
    notebook is read before any is run. The reports come back in the order of ``paths``."""
    from concurrent.futures import ThreadPoolExecutor, as_completed

    expected = Expected(lab, hidden_seed)
    submissions = [read_submission(path) for path in paths]

    def one(path, submission):
        try:
            return grade_notebook(lab, path, limits, expected, submission)
        except Exception as exc:  # a bug of ours: report it for this notebook and go on
            where = traceback.format_exc(limit=-3)  # the last frames, so the bug can be found
            return expected.report(path, "grader_error", expected.zero(),
                                   [f"grader error: {type(exc).__name__}: {exc}", where])

    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        futures = {pool.submit(one, p, s): i for i, (p, s) in enumerate(zip(paths, submissions))}
        done = as_completed(futures)
        if progress:
            from tqdm.auto import tqdm
            done = tqdm(done, total=len(futures), desc=f"grading {lab}", unit="notebook", file=progress)
        reports = [None] * len(futures)
        for future in done:
            reports[futures[future]] = future.result()
    return reports


def find_notebooks(paths):
    """The notebooks to grade: each file as given, each folder's ``*.ipynb`` (recursively,
    sorted, Jupyter's ``.ipynb_checkpoints`` skipped)."""
    found = []
    for path in paths:
        if not os.path.isdir(path):
            found.append(path)
            continue
        for root, dirs, files in os.walk(path):
            dirs[:] = sorted(d for d in dirs if d != ".ipynb_checkpoints" and not d.startswith("."))
            found += [os.path.join(root, f) for f in sorted(files) if f.endswith(".ipynb")]
    return found


# --- what people read -----------------------------------------------------------------------

def _score_line(report):
    cases = "public cases only; the instructor's run adds hidden cases" if report.public_only \
        else "public and hidden cases"
    pct = 100 * report.score / report.max_score if report.max_score else 0.0
    return f"{report.score:g} / {report.max_score:g} points ({pct:.0f}%, {cases})"


def format_table(report):
    """Stdout, one block per notebook: the score, one line per question, and the flags."""
    lines = [f"== {report.notebook} ({report.lab}): {_score_line(report)}"
             + ("" if report.status == "graded" else f"  [{report.status}]")]
    for q, title, results in report.by_question():
        score, max_score = sum(c.score for c in results), sum(c.max_score for c in results)
        failed = [c.name for c in results if not c.passed]
        lines.append(f"  {score:>4g}/{max_score:<4g} {q:<10} {title}"
                     + (f"  (failed: {', '.join(failed)})" if failed else ""))
    for flag in report.integrity:
        lines.append(f"  INTEGRITY: {flag}")
    if report.status != "graded":
        lines += [f"  note: {note}" for note in report.notes]
    return "\n".join(lines)


def format_feedback(report):
    """The feedback a student reads: every case with its verdict, points, time and messages."""
    lines = [f"bnlab {report.lab}: {report.notebook}", f"Score: {_score_line(report)}"]
    if report.status != "graded":
        lines.append(f"Status: {report.status}")
    for q, title, results in report.by_question():
        score, max_score = sum(c.score for c in results), sum(c.max_score for c in results)
        lines += ["", f"Question {q}: {title}: {score:g} / {max_score:g}"]
        width = max(len(c.name) for c in results)
        for c in results:
            time = "" if c.seconds is None else f"  ({c.seconds:.2f} s)"
            hidden = " [hidden]" if c.hidden else ""
            lines.append(f"  {case_status(c).upper():<6} {c.score:>3g}/{c.max_score:<3g} "
                         f"{c.name:<{width}}  {c.title}{hidden}{time}")
            lines += [f"           - {msg}" for msg in c.feedback]
    if report.integrity:
        lines += ["", "Integrity (for the instructor to review):"] + [f"  - {f}" for f in report.integrity]
    if report.notes:
        lines += ["", "Notes:"] + [f"  - {n}" for n in report.notes]
    return "\n".join(lines) + "\n"


def _report_names(reports):
    """Distinct, deterministic file names: the notebook's stem, prefixed by its folder if needed."""
    stems = [os.path.splitext(os.path.basename(r.notebook))[0] for r in reports]
    names = []
    for r, stem in zip(reports, stems):
        name = stem
        if stems.count(stem) > 1:
            folder = os.path.basename(os.path.dirname(os.path.abspath(r.notebook)))
            name = f"{folder}__{stem}"
        while name in names or name == "summary":
            name += "_"
        names.append(name)
    return names


def _write(path, text):
    """Write ``text`` to ``path`` atomically, replacing whatever is there (a file, a link, a
    folder someone put in the report's place)."""
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp-")
    with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
        f.write(text)
    os.replace(tmp, path)


def summary_csv(reports):
    """The class's table: one row per submission, one column per question, then the total."""
    questions = list(reports[0].questions) if reports else []
    rows = [["notebook", "status"] + questions + ["score", "max_score", "percent", "integrity"]]
    for r in reports:
        per = {q: sum(c.score for c in results) for q, _, results in r.by_question()}
        rows.append([r.notebook, r.status] + [f"{per.get(q, 0):g}" for q in questions]
                    + [f"{r.score:g}", f"{r.max_score:g}",
                       f"{100 * r.score / r.max_score:.1f}" if r.max_score else "0",
                       "; ".join(r.integrity)])
    out = io.StringIO(newline="")
    csv.writer(out).writerows(rows)
    return out.getvalue()


def write_reports(reports, directory):
    """Per notebook ``NAME.json`` and ``NAME.txt`` (the student's feedback), and the class's
    ``summary.csv``; returns the paths written."""
    os.makedirs(directory, exist_ok=True)
    written = []
    for report, name in zip(reports, _report_names(reports)):
        for ext, text in ((".json", json.dumps(report.to_json(), indent=2) + "\n"),
                          (".txt", format_feedback(report))):
            path = os.path.join(directory, name + ext)
            _write(path, text)
            written.append(path)
    path = os.path.join(directory, "summary.csv")
    _write(path, summary_csv(reports))
    written.append(path)
    return written
