"""The autograder: ``python -m bnlab.grade LAB NOTEBOOK [NOTEBOOK ...] [--report DIR]``.

Each notebook's definitions run in a sandboxed child process (``bnlab.grade.sandbox``) that
returns raw outputs only; this process computes the expected values from ``bnlab.numpy`` and
judges (``bnlab.grade.core``). Each lab is a module (``bnlab.grade.lab01`` to ``lab04``) that lists
its graded functions (``FUNCTIONS``), its questions (``QUESTIONS``), their test cases
(``cases(seed, hidden_seed)``: plans of calls, run by ``bnlab.grade.driver``; the hidden ones
only with the instructor's ``hidden_seed``), the reference (``reference()``) and its named
mistakes (``mistakes()``).

This package's ``__init__`` imports nothing heavy: the child imports ``bnlab.grade.driver``.
"""

import importlib

LABS = ("lab01", "lab02", "lab03", "lab04")


def lab_module(lab):
    """The module that defines ``lab``'s questions (``QUESTIONS``, ``cases()``, ``mistakes()``, ...)."""
    if lab not in LABS:
        raise ValueError(f"unknown lab {lab!r}; expected one of {', '.join(LABS)}")
    return importlib.import_module(f"bnlab.grade.{lab}")


def grade_notebooks(lab, paths, **kwargs):
    """Grade each notebook; returns a list of ``bnlab.grade.grader.Report``."""
    from bnlab.grade.grader import grade_notebooks as _grade
    return _grade(lab, paths, **kwargs)
