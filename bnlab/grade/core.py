"""Lab-independent grading logic: test cases, named mistakes, and the checks on raw outputs.

A lab has a few questions (lab 1: forward, running statistics, eval mode, backward); each
question is tested by several ``Case``s. A ``Case`` is a plan of calls, each naming the graded
function it calls (see ``bnlab.grade.driver``), its inputs, the outputs that are graded and
its points; every lab's cases are of this one type. A case is *public* (students run it
before they submit, ``python -m bnlab.grade LAB NB --public``, and ``bnlab.check`` runs the
same plans) or *hidden* (only the instructor's run adds it, with inputs drawn from the
instructor's secret seed). A ``Mistake`` is a named set of wrong functions; it can explain
the cases that call only functions it replaces.

``evaluate`` compares the raw outputs of the student's functions against the reference's
(both produced by the same driver) in this order: an exception, a non-array, dtype, exact
shape (no broadcasting), finiteness, values within ``bnlab.tolerances``; a value mismatch is
then explained by the first named ``Mistake`` whose outputs the student's match, or else by a
max-error report plus property hints (``property_hints``, from the case's ``Stats``) and the
case's own ``hint``. ``relate`` adds a note to a failed
backward case whose forward cases (``requires``) fail too.

Used by the out-of-process grader (``bnlab.grade``) and the in-notebook self-checks
(``bnlab.check``), so both give the same messages.
"""

from dataclasses import dataclass, field
import re

import numpy as np

from bnlab.grade import driver
from bnlab.tolerances import tolerance


@dataclass
class Stats:
    """Where a case's statistics come from, for the property hints on a wrong output:
    ``x`` reshaped to ``view`` reduces ``axes``; gamma and beta broadcast as ``affine``;
    ``per`` names one statistic ("channel", "sample", "sample and group")."""
    view: tuple
    axes: tuple
    affine: tuple
    per: str


@dataclass
class Case:
    name: str
    title: str
    points: float
    plan: dict             # the calls, named per step (see bnlab.grade.driver)
    inputs: dict
    graded: tuple          # output names, e.g. ("s1_dx",)
    reduction_len: int     # m: values reduced into each statistic (sets the tolerance)
    kind: str = ""         # "forward", "backward", ...: lets a lab and bnlab.check select cases
    requires: tuple = ()   # cases whose failure explains this one's (see ``relate``)
    stats: Stats = None    # for the property hints (see ``property_hints``)
    item: int = None       # grade only entry [item] of each graded output (after the shape
                           # check): one returned array of answers makes several cases
    secret: bool = False   # an answer key: a wrong value's feedback never shows the expected one
    question: str = ""     # the lab question this case tests (a key of the lab's QUESTIONS)
    hidden: bool = False   # added by the instructor's run only (see the module docstring)
    tolerance_scale: float = 1.0  # inputs with |mean| >> std lose digits in any implementation
                                  # (bnlab.tolerances): the tolerance is multiplied by this
    hint: str = ""         # added to the feedback of a wrong value that no named mistake explains

    @property
    def functions(self):
        """The graded functions this question calls."""
        return driver.functions_called(self.plan)


def public_and_hidden(public_cases, hidden_cases, seed, hidden_seed, question=None):
    """A lab's cases: ``public_cases(seed)``, then, when ``hidden_seed`` is given,
    ``hidden_cases(hidden_seed)``; each case's question is ``question(case)``, by default its
    kind (the lab's QUESTIONS)."""
    qs = public_cases(seed) + ([] if hidden_seed is None else hidden_cases(hidden_seed))
    for q in qs:
        q.question = q.kind if question is None else question(q)
    return qs


@dataclass
class Mistake:
    name: str
    message: str
    functions: dict        # {"batch_norm_forward": f, "batch_norm_backward": g}: the graded
                           # functions it replaces; it explains only questions calling no others

    def covers(self, question):
        return set(question.functions) <= set(self.functions)


@dataclass
class Run:
    """What one set of functions produced on a question (``driver.run_plan``'s result)."""
    outputs: dict
    kinds: dict
    error: object = None   # driver.StepError, or a string for a sandbox verdict (timeout, crash, ...)


@dataclass
class CaseResult:
    name: str
    title: str
    score: float
    max_score: float
    feedback: list = field(default_factory=list)
    mistakes: list = field(default_factory=list)  # names of the Mistakes recognised
    crashed: bool = False  # the sandbox's verdict (timeout, crash, load failure), not a wrong value
    question: str = ""
    hidden: bool = False
    seconds: float = None  # wall time of the student's calls (None: not run)

    @property
    def passed(self):
        return self.score == self.max_score


def run(case, functions, *, catch=True):
    return Run(*driver.run_plan(case.plan, case.inputs, functions, catch=catch))


_KEY = re.compile(r"s(\d+)_(\w+)")


def label(case, key):
    """``s1_dx`` -> ``dx``; ``s2_running_var`` -> ``running_var after call 3`` when several of
    the plan's calls record that buffer."""
    step, what = _KEY.fullmatch(key).groups()
    recorded = sum(what in driver.buffer_outputs(s) for s in case.plan["steps"])
    if recorded > 1:
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


def check_output(case, key, student, reference, tol):
    """Problems with one output, as ``(messages, value_mismatch)``; ``([], False)`` when right."""
    name = label(case, key)
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
    integers = got.dtype.kind in "iu" and expected.dtype.kind in "iu"  # compared by value
    if got.dtype != expected.dtype and not integers:
        why = " (the output keeps the input's floating dtype)" if expected.dtype.kind == "f" else ""
        return [f"{name} has dtype {got.dtype}, expected {expected.dtype}{why}"], False
    if got.shape != expected.shape:
        return [f"{name} has shape {got.shape}, expected {expected.shape}"], False
    bad = ~np.isfinite(got)
    if bad.any():
        return [f"{name} contains {int(bad.sum())} non-finite values (NaN or inf) out of {got.size}"], False
    if case.item is not None:
        name, got, expected = f"{name}[{case.item}]", got[case.item], expected[case.item]
    if _close(got, expected, tol):
        return [], False
    if case.secret:
        return [f"{name} is not the right answer"], True
    err = np.abs(got.astype(np.float64) - expected)
    where = np.unravel_index(int(np.argmax(err)), err.shape)
    return [f"{name} is wrong: max abs error {err.max():.3g} at index {tuple(int(i) for i in where)} "
            f"(expected {expected[where]:.6g}, got {got[where]:.6g})"], True


def evaluate(case, student, reference, mistakes, hints=None):
    """Grade one case. ``mistakes`` is a list of ``(Mistake, Run)``; ``hints(case, key,
    got)`` may add explanations for a value mismatch no mistake explains (by default
    ``property_hints``)."""
    hints = property_hints if hints is None else hints
    result = CaseResult(case.name, case.title, 0.0, case.points,
                        question=case.question, hidden=case.hidden)
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
    dtype = next(iter(reference.outputs.values())).dtype
    tol = tolerance(dtype, case.reduction_len) if dtype.kind == "f" else dict(rtol=0.0, atol=0.0)
    tol = {k: v * case.tolerance_scale for k, v in tol.items()}
    named = {}  # mistake name -> (Mistake, labels of the outputs it explains)
    for key in case.graded:
        messages, mismatch = check_output(case, key, student, reference, tol)
        if mismatch:
            got = student.outputs[key]
            matches = [m for m, r in mistakes
                       if key in r.outputs and not _close(r.outputs[key], reference.outputs[key], tol)
                       and _close(got, r.outputs[key], tol)]
            if matches:
                named.setdefault(matches[0].name, (matches[0], []))[1].append(label(case, key))
                continue
            messages += hints(case, key, got)
            if case.hint and case.hint not in result.feedback + messages:
                messages.append(case.hint)
        result.feedback += messages
    for mistake, labels in named.values():  # one line per mistake, however many outputs show it
        result.feedback.insert(0, f"{_join(labels)} {'is' if len(labels) == 1 else 'are'} wrong: {mistake.message}")
        result.mistakes.append(mistake.name)
    if not result.feedback:
        result.score = case.points
    return result


def property_hints(case, key, got):
    """Property checks that explain a wrong output no named mistake explains, from
    ``case.stats``: a forward output, un-scaled, has mean 0 and variance 1 per statistic;
    in training dx sums to 0 over each statistic (the path through the mean)."""
    st = case.stats
    what = key.split("_", 1)[1]
    if st is None or got.size != int(np.prod(st.view)):
        return []
    out = []
    if case.kind == "forward" and what == "y":
        x_hat = got.astype(np.float64)
        step = case.plan["steps"][int(key[1:].split("_")[0])]
        names = [a.get("input") if isinstance(a, dict) else None for a in step.get("args", [])]
        if "gamma" in names and "beta" in names:
            x_hat = ((x_hat - case.inputs["beta"].reshape(st.affine))  # params -> affine shape
                     / case.inputs["gamma"].reshape(st.affine))
        x_hat = x_hat.reshape(st.view)  # x's shape -> the statistics' view
        mean, var = x_hat.mean(axis=st.axes).ravel(), x_hat.var(axis=st.axes).ravel()
        if np.abs(mean).max() > 1e-3:
            out.append(f"per {st.per}, (y - beta) / gamma should have mean 0; got means {np.round(mean, 4)}")
        if np.abs(var - 1).max() > 1e-3:
            out.append(f"per {st.per}, (y - beta) / gamma should have variance 1 (biased); got {np.round(var, 4)}")
    if case.kind == "backward" and what == "dx":
        sums = got.reshape(st.view).sum(axis=st.axes).ravel()  # x's shape -> the statistics' view
        if np.abs(sums).max() > 1e-6:
            out.append(f"in training, dx should sum to 0 over each {st.per} (the mean path); got {sums}")
    return out


def relate(cases, results):
    """A case that calls the student's backward on their own forward's cache fails when
    that forward fails: say so on each failed case whose ``requires`` fail too (unless
    the forward raised right there, which the feedback already says)."""
    by_name = {q.name: q for q in cases}
    failed = {r.name for r in results if not r.passed}
    for q, r in zip(cases, results):
        causes = [n for n in q.requires if n in failed]
        if r.passed or r.crashed or not causes:
            continue
        before = {f for n in causes for f in by_name[n].functions}
        if not any(f.startswith(f"{name} raised") for f in r.feedback for name in before):
            r.feedback.append(f"note: the forward pass fails too ({', '.join(causes)}); "
                              "the backward pass uses its cache, so fix the forward first")
