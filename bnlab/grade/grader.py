"""Grade notebooks: sandboxed run, comparison against the reference, reports (table, JSON, CSV)."""

import csv
from dataclasses import dataclass, field
import json
import os
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
    questions: list = field(default_factory=list)  # core.QuestionResult
    notes: list = field(default_factory=list)

    def to_json(self):
        """Gradescope-style: top-level score and max_score; one entry of ``tests`` per question."""
        return {
            "lab": self.lab, "notebook": self.notebook, "status": self.status,
            "score": self.score, "max_score": self.max_score, "notes": self.notes,
            "tests": [dict(name=q.name, title=q.title, score=q.score, max_score=q.max_score,
                           status="passed" if q.passed else "failed", mistakes=q.mistakes,
                           feedback=q.feedback, output="\n".join(q.feedback) or "correct")
                      for q in self.questions],
        }


class Expected:
    """The reference's and the named mistakes' runs of each question, computed once per lab."""

    def __init__(self, lab):
        self.module = lab_module(lab)
        self.questions = self.module.questions()
        reference = self.module.reference()
        self.reference = {q.name: core.run(q, reference, catch=False) for q in self.questions}
        mistakes = self.module.mistakes()
        self.mistakes = {q.name: [(m, core.run(q, m.functions)) for m in mistakes if m.covers(q)]
                         for q in self.questions}


def grade_notebook(lab, path, limits=Limits(), expected=None):
    """Grade one notebook; never raises for anything the notebook contains."""
    expected = expected or Expected(lab)
    module = expected.module
    max_score = float(sum(q.points for q in expected.questions))
    try:
        cells, notes = extract(path)
    except NotebookError as exc:
        results = [core.QuestionResult(q.name, q.title, 0.0, q.points, [str(exc)]) for q in expected.questions]
        return Report(lab, str(path), 0.0, max_score, "unreadable", results, [str(exc)])
    child = run_submission(cells, module.FUNCTIONS, expected.questions, limits)
    notes += child.load_errors
    results = []
    for q in expected.questions:
        missing = [f for f in child.missing if f in q.functions]
        if missing:
            results.append(core.QuestionResult(q.name, q.title, 0.0, q.points, [
                f"{', '.join(missing)} is not defined in the notebook (a function with this exact "
                "name, defined at the top level of a code cell)"], crashed=True))
            continue
        student = core.Run(*child.runs[q.name])
        results.append(core.evaluate(q, student, expected.reference[q.name],
                                     expected.mistakes[q.name], getattr(module, "hints", None)))
    core.relate(expected.questions, results)
    score = float(sum(r.score for r in results))
    return Report(lab, str(path), score, max_score, "graded", results, notes)


def grade_notebooks(lab, paths, limits=Limits(), jobs=1):
    """Grade each notebook (``jobs`` at a time: each is a child process to wait on); the reports
    come back in the order of ``paths``."""
    from concurrent.futures import ThreadPoolExecutor

    expected = Expected(lab)

    def one(path):
        try:
            return grade_notebook(lab, path, limits, expected)
        except Exception as exc:  # a bug of ours: report it for this notebook and go on
            results = [core.QuestionResult(q.name, q.title, 0.0, q.points) for q in expected.questions]
            where = traceback.format_exc(limit=-3)  # the last frames, so the bug can be found
            return Report(lab, str(path), 0.0, float(sum(q.points for q in expected.questions)),
                          "grader_error", results,
                          [f"grader error: {type(exc).__name__}: {exc}", where])

    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        return list(pool.map(one, paths))


def format_table(report):
    """The per-question table printed on stdout."""
    lines = [f"== {report.notebook} ({report.lab}): {report.score:g} / {report.max_score:g}"
             + ("" if report.status == "graded" else f"  [{report.status}]")]
    width = max([len(q.name) for q in report.questions] + [8])
    for q in report.questions:
        mark = "ok  " if q.passed else "FAIL"
        lines.append(f"  {mark} {q.name:<{width}} {q.score:>4g}/{q.max_score:<4g} {q.title}")
        for msg in q.feedback:
            lines.append(f"         - {msg}")
    for note in report.notes:
        lines.append(f"  note: {note}")
    return "\n".join(lines)


def _report_names(reports):
    """Distinct, deterministic file names: the notebook's stem, prefixed by its folder if needed."""
    stems = [os.path.splitext(os.path.basename(r.notebook))[0] for r in reports]
    names = []
    for r, stem in zip(reports, stems):
        name = stem
        if stems.count(stem) > 1:
            folder = os.path.basename(os.path.dirname(os.path.abspath(r.notebook)))
            name = f"{folder}__{stem}"
        while name in names:
            name += "_"
        names.append(name)
    return names


def write_reports(reports, directory):
    """One JSON per notebook and ``summary.csv``; returns the paths written."""
    os.makedirs(directory, exist_ok=True)
    written = []
    for report, name in zip(reports, _report_names(reports)):
        path = os.path.join(directory, name + ".json")
        with open(path, "w", encoding="utf-8") as f:
            json.dump(report.to_json(), f, indent=2)
            f.write("\n")
        written.append(path)
    path = os.path.join(directory, "summary.csv")
    names = [q.name for q in reports[0].questions] if reports else []
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["notebook", "status", "score", "max_score", "percent"] + names)
        for r in reports:
            per = {q.name: q.score for q in r.questions}
            w.writerow([r.notebook, r.status, f"{r.score:g}", f"{r.max_score:g}",
                        f"{100 * r.score / r.max_score:.1f}" if r.max_score else "0"]
                       + [f"{per.get(n, 0):g}" for n in names])
    written.append(path)
    return written
