"""Replay a question's calls against a pair of functions and collect the raw outputs.

One mechanism serves three callers, so they cannot drift apart:

* the sandboxed child (``bnlab.grade.child``) runs the student's functions;
* the parent runs ``bnlab.numpy``'s reference and the named wrong variants through the same
  steps to get the expected outputs and the "this is what mistake X would give" outputs;
* ``bnlab.check`` runs the student's functions in the notebook's own process.

This module imports nothing but NumPy: the child imports it before the student's code runs.

A question's *plan* is JSON-able::

    {"buffers": {"rm": "rm0", "rv": "rv0"},           # live arrays, copied from the inputs
     "steps": [{"op": "forward", "x": "x", "gamma": "gamma", "beta": None,
                "running_mean": "rm", "running_var": "rv",
                "training": True, "momentum": 0.1, "eps": 1e-5},
               {"op": "backward", "dy": "dy"}]}

Outputs are named ``s<step>_<what>``: ``s0_y``, ``s0_running_mean`` (the buffer's contents
after the call), ``s1_dx``, ``s1_dgamma``, ``s1_dbeta``. Each output is either a plain
``numpy.ndarray`` or, in ``kinds``, a short description of what came instead ("None", "an
object of type list", ...). Nothing here judges the outputs.
"""

import traceback

import numpy as np

FORWARD = "batch_norm_forward"
BACKWARD = "batch_norm_backward"


class StepError(Exception):
    """The function under test raised (or returned something the next step cannot use)."""

    def __init__(self, step, function, exc_type, message, trace=""):
        super().__init__(f"{function} raised {exc_type}: {message}")
        self.step, self.function = step, function
        self.exc_type, self.message, self.trace = exc_type, message, trace


def describe(value):
    """A short, safe description of a value that is not a plain numeric array."""
    if value is None:
        return "None"
    cls = type(value)  # type(), not value.__class__, which a class can fake
    if issubclass(cls, np.ndarray):
        return f"an array of dtype {value.dtype}"
    return f"an object of type {cls.__name__}"


def as_output(value):
    """Return ``(array, None)`` for a numeric ndarray (copied to a plain ndarray), else ``(None, description)``."""
    if issubclass(type(value), np.ndarray) and value.dtype.kind in "biufc":
        return np.array(value, copy=True, subok=False), None
    return None, describe(value)


def run_plan(plan, inputs, functions, *, catch=True):
    """Run ``plan`` with ``functions = {"batch_norm_forward": f, "batch_norm_backward": g}``.

    Returns ``(outputs, kinds, error)``: ``outputs`` maps names to arrays, ``kinds`` maps names
    to descriptions of non-array results, ``error`` is a ``StepError`` or None. With
    ``catch=False`` an exception raised by the function under test propagates unchanged
    (``bnlab.check`` wants the student to see their own traceback).
    """
    outputs, kinds = {}, {}
    buffers = {name: np.array(inputs[key], copy=True) for name, key in plan.get("buffers", {}).items()}
    cache = None

    def arg(key):
        return None if key is None else np.array(inputs[key], copy=True)

    for i, step in enumerate(plan["steps"]):
        name = FORWARD if step["op"] == "forward" else BACKWARD
        try:
            if step["op"] == "forward":
                result = functions[FORWARD](
                    arg(step["x"]), arg(step.get("gamma")), arg(step.get("beta")),
                    running_mean=buffers.get(step.get("running_mean")),
                    running_var=buffers.get(step.get("running_var")),
                    training=step["training"], momentum=step["momentum"], eps=step["eps"])
                names = ("y", "cache")
            else:
                result = functions[BACKWARD](arg(step["dy"]), cache)
                names = ("dx", "dgamma", "dbeta")
        except BaseException as exc:  # SystemExit included: a verdict, not the end of grading
            if not catch:
                raise
            trace = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)[-4:])
            return outputs, kinds, StepError(i, name, type(exc).__name__, str(exc)[:2000], trace[-4000:])
        if not (type(result) in (tuple, list) and len(result) == len(names)):
            error = StepError(i, name, "WrongReturn",
                              f"returned {describe(result)}; expected a tuple ({', '.join(names)})")
            if not catch:
                raise AssertionError(f"{name} {error.message}")
            return outputs, kinds, error
        for what, value in zip(names, result):
            if what == "cache":
                cache = value
                continue
            array, kind = as_output(value)
            if array is not None:
                outputs[f"s{i}_{what}"] = array
            else:
                kinds[f"s{i}_{what}"] = kind
        for what in ("running_mean", "running_var"):
            if step.get(what) is not None:
                outputs[f"s{i}_{what}"] = np.array(buffers[step[what]], copy=True)
    return outputs, kinds, None
