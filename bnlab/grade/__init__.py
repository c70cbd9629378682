"""The autograder: ``python -m bnlab.grade LAB NOTEBOOK [NOTEBOOK ...] [--report DIR]``.

Each notebook's definitions run in a sandboxed child process (``bnlab.grade.sandbox``) that
returns raw outputs only; this process computes the expected values from ``bnlab.numpy`` and
judges (``bnlab.grade.core``). See ``bnlab.grade.lab01`` for lab 1's questions and points.

This package's ``__init__`` imports nothing heavy: the child imports ``bnlab.grade.driver``.
"""

LABS = ("lab01",)


def lab_module(lab):
    """The module that defines ``lab``'s questions (``questions()``, ``mistakes()``, ...)."""
    if lab == "lab01":
        from bnlab.grade import lab01
        return lab01
    raise ValueError(f"unknown lab {lab!r}; expected one of {', '.join(LABS)}")


def grade_notebooks(lab, paths, **kwargs):
    """Grade each notebook; returns a list of ``bnlab.grade.grader.Report``."""
    from bnlab.grade.grader import grade_notebooks as _grade
    return _grade(lab, paths, **kwargs)
