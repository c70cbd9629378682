"""Lab-independent grading logic: questions, named mistakes, and the checks on raw outputs.

A ``Question`` is a plan of calls (see ``bnlab.grade.driver``), its inputs, the outputs that
are graded and its points. ``evaluate`` compares the raw outputs of the student's functions
against the reference's (both produced by the same driver) in this order: an exception, a
non-array, dtype, exact shape (no broadcasting), finiteness, values within
``bnlab.tolerances``; a value mismatch is then explained by the first named ``Mistake`` whose
outputs the student's match, or else by a max-error report plus the lab's property hints.

Used by the out-of-process grader (``bnlab.grade``) and the in-notebook self-checks
(``bnlab.check``), so both give the same messages.
"""

from dataclasses import dataclass, field
import re

import numpy as np

from bnlab.grade import driver
from bnlab.tolerances import tolerance


@dataclass
class Question:
    name: str
    title: str
    points: float
    plan: dict
    inputs: dict
    graded: tuple          # output names, e.g. ("s1_dx",)
    reduction_len: int     # m: values reduced into each statistic (sets the tolerance)
    kind: str = ""         # "forward", "backward", ...: lets a lab relate questions


@dataclass
class Mistake:
    name: str
    message: str
    functions: dict        # {"batch_norm_forward": f, "batch_norm_backward": g}


@dataclass
class Run:
    """What one set of functions produced on a question (``driver.run_plan``'s result)."""
    outputs: dict
    kinds: dict
    error: object = None   # driver.StepError, or a string for a sandbox verdict (timeout, crash, ...)


@dataclass
class QuestionResult:
    name: str
    title: str
    score: float
    max_score: float
    feedback: list = field(default_factory=list)
    mistakes: list = field(default_factory=list)  # names of the Mistakes recognised
    crashed: bool = False  # the sandbox's verdict (timeout, crash, load failure), not a wrong value

    @property
    def passed(self):
        return self.score == self.max_score


def run(question, functions, *, catch=True):
    return Run(*driver.run_plan(question.plan, question.inputs, functions, catch=catch))


_KEY = re.compile(r"s(\d+)_(\w+)")


def label(question, key):
    """``s1_dx`` -> ``dx``; ``s2_running_var`` -> ``running_var after call 3`` when the plan has several calls."""
    step, what = _KEY.fullmatch(key).groups()
    forwards = sum(s["op"] == "forward" for s in question.plan["steps"])
    if what.startswith("running") and forwards > 1:
        return f"{what} after call {int(step) + 1}"
    return what


def _close(a, b, tol):
    return a.shape == b.shape and bool(np.allclose(a, b, **tol))


def _join(labels):
    """``running_mean after call 1``, ``... after call 2`` -> ``running_mean after calls 1, 2``."""
    if len(labels) > 1 and all(" after call " in l for l in labels):
        head = labels[0].split(" after call ")[0]
        if all(l.startswith(head + " ") for l in labels):
            return f"{head} after calls {', '.join(l.rsplit(' ', 1)[1] for l in labels)}"
    return ", ".join(labels)


def check_output(question, key, student, reference, tol):
    """Problems with one output, as ``(messages, value_mismatch)``; ``([], False)`` when right."""
    name = label(question, key)
    if key in reference.kinds:  # the reference returned something that is not an array (None)
        got = student.kinds.get(key, "an array" if key in student.outputs else "nothing")
        if got == reference.kinds[key]:
            return [], False
        return [f"{name} should be {reference.kinds[key]}, got {got}"], False
    expected = reference.outputs[key]
    if key in student.kinds:
        return [f"{name} is {student.kinds[key]}; expected a numpy array of shape "
                f"{expected.shape} and dtype {expected.dtype}"], False
    if key not in student.outputs:
        return [f"{name} was not returned"], False
    got = student.outputs[key]
    if got.dtype != expected.dtype:
        return [f"{name} has dtype {got.dtype}, expected {expected.dtype} "
                f"(the output keeps the input's floating dtype)"], False
    if got.shape != expected.shape:
        return [f"{name} has shape {got.shape}, expected {expected.shape}"], False
    bad = ~np.isfinite(got)
    if bad.any():
        return [f"{name} contains {int(bad.sum())} non-finite values (NaN or inf) out of {got.size}"], False
    if _close(got, expected, tol):
        return [], False
    err = np.abs(got.astype(np.float64) - expected)
    where = np.unravel_index(int(np.argmax(err)), err.shape)
    return [f"{name} is wrong: max abs error {err.max():.3g} at index {tuple(int(i) for i in where)} "
            f"(expected {expected[where]:.6g}, got {got[where]:.6g})"], True


def evaluate(question, student, reference, mistakes, hints=None):
    """Grade one question. ``mistakes`` is a list of ``(Mistake, Run)``; ``hints(question, key,
    got)`` may add property-based explanations for a value mismatch no mistake explains."""
    result = QuestionResult(question.name, question.title, 0.0, question.points)
    if student.error is not None:
        error = student.error
        if isinstance(error, driver.StepError):
            msg = f"{error.function} raised {error.exc_type}: {error.message}"
            if error.exc_type == "WrongReturn":
                msg = f"{error.function} {error.message}"
            elif error.exc_type == "NotImplementedError":
                msg += " (not implemented yet)"
            elif error.exc_type == "SystemExit":
                msg += " (sys.exit was called)"
            result.feedback.append(msg)
        else:
            result.feedback.append(str(error))
            result.crashed = True
        return result
    tol = tolerance(next(iter(reference.outputs.values())).dtype, question.reduction_len)
    named = {}  # mistake name -> (Mistake, labels of the outputs it explains)
    for key in question.graded:
        messages, mismatch = check_output(question, key, student, reference, tol)
        if mismatch:
            got = student.outputs[key]
            matches = [m for m, r in mistakes
                       if key in r.outputs and not _close(r.outputs[key], reference.outputs[key], tol)
                       and _close(got, r.outputs[key], tol)]
            if matches:
                named.setdefault(matches[0].name, (matches[0], []))[1].append(label(question, key))
                continue
            if hints is not None:
                messages += hints(question, key, got)
        result.feedback += messages
    for mistake, labels in named.values():  # one line per mistake, however many outputs show it
        result.feedback.insert(0, f"{_join(labels)} {'is' if len(labels) == 1 else 'are'} wrong: {mistake.message}")
        result.mistakes.append(mistake.name)
    if not result.feedback:
        result.score = question.points
    return result
