"""Replay a question's calls against a set of functions and collect the raw outputs.

One mechanism serves three callers, so they cannot drift apart:

* the sandboxed child (``bnlab.grade.child``) runs the student's functions;
* the parent runs ``bnlab.numpy``'s reference and the named wrong variants through the same
  steps to get the expected outputs and the "this is what mistake X would give" outputs;
* ``bnlab.check`` runs the student's functions in the notebook's own process.

This module imports nothing but NumPy: the child imports it before the student's code runs.

A question's *plan* is JSON-able. Each step names the graded function it calls, its
arguments and the names of what it returns::

    {"buffers": {"rm": "rm0"},                       # live arrays, copied from the inputs
     "steps": [{"call": "batch_norm_forward",
                "args": [{"input": "x"}, {"input": "gamma"}, None],
                "kwargs": {"running_mean": {"buffer": "rm"}, "training": True, "eps": 1e-5},
                "returns": ["y", "cache"]},
               {"call": "batch_norm_backward",
                "args": [{"input": "dy"}, {"cache": 0}],
                "returns": ["dx", "dgamma", "dbeta"]}]}

An argument is ``{"input": KEY}`` (a fresh copy of ``inputs[KEY]``), ``{"buffer": NAME}`` (a
live array that persists across steps, e.g. running statistics updated in place),
``{"cache": STEP}`` (the ``cache`` returned by an earlier step, passed as it came), or a JSON
literal (a list arrives as a tuple, e.g. LayerNorm's ``normalized_shape``).

``returns`` is a list when the function returns a tuple (one name per item), or a single name
(a string) when it returns one value, e.g. ``"returns": "lr"`` for an array of learning rates.

Outputs are named ``s<step>_<what>``: every returned value except ``cache`` (``s0_y``,
``s1_dx``, ...), and each buffer passed by keyword, as it is after the call
(``s0_running_mean``). Each output is either a plain ``numpy.ndarray`` or, in ``kinds``, a
short description of what came instead ("None", "an object of type list", ...). Nothing here
judges the outputs.
"""

import traceback

import numpy as np

CACHE = "cache"  # the returned value passed on to later steps, never an output


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


def functions_called(plan):
    """The names of the functions ``plan`` calls, in order of first use."""
    return tuple(dict.fromkeys(step["call"] for step in plan["steps"]))


def buffer_outputs(step):
    """``{keyword: buffer name}`` for the buffers a step passes by keyword (recorded after the call)."""
    return {k: v["buffer"] for k, v in step.get("kwargs", {}).items()
            if isinstance(v, dict) and "buffer" in v}


def run_plan(plan, inputs, functions, *, catch=True):
    """Run ``plan`` with ``functions = {name: callable}`` (every name the plan calls).

    Returns ``(outputs, kinds, error)``: ``outputs`` maps names to arrays, ``kinds`` maps names
    to descriptions of non-array results, ``error`` is a ``StepError`` or None. With
    ``catch=False`` an exception raised by the function under test propagates unchanged
    (``bnlab.check`` wants the student to see their own traceback).
    """
    outputs, kinds = {}, {}
    buffers = {name: np.array(inputs[key], copy=True) for name, key in plan.get("buffers", {}).items()}
    caches = {}

    def value(spec):
        if isinstance(spec, dict):
            if "input" in spec:
                return np.array(inputs[spec["input"]], copy=True)
            if "buffer" in spec:
                return buffers[spec["buffer"]]
            if CACHE in spec:
                return caches.get(spec[CACHE])
            raise ValueError(f"unknown argument {spec!r} in a plan")
        if isinstance(spec, list):
            return tuple(spec)
        return spec

    for i, step in enumerate(plan["steps"]):
        name, names = step["call"], step["returns"]
        single = isinstance(names, str)  # the function returns one value, not a tuple
        names = [names] if single else names
        try:
            args = [value(a) for a in step.get("args", [])]
            kwargs = {k: value(v) for k, v in step.get("kwargs", {}).items()}
            result = functions[name](*args, **kwargs)
            result = (result,) if single else result
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
        for what, item in zip(names, result):
            if what == CACHE:
                caches[i] = item
                continue
            array, kind = as_output(item)
            if array is not None:
                outputs[f"s{i}_{what}"] = array
            else:
                kinds[f"s{i}_{what}"] = kind
        for what, buffer in buffer_outputs(step).items():
            outputs[f"s{i}_{what}"] = np.array(buffers[buffer], copy=True)
    return outputs, kinds, None
