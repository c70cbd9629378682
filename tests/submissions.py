"""Submissions for the grader tests: a master solution with precise source edits."""

import nbformat


def make_submission(solution, tmp_path, name, edits):
    """The ``solution`` notebook with ``edits``: (old, new) substitutions, each of which must
    match exactly once (so a test cannot silently grade an unchanged solution), or strings
    appended as new code cells. Written to ``tmp_path / name.ipynb``; returns its path."""
    nb = nbformat.read(solution, as_version=4)
    for edit in edits:
        if isinstance(edit, str):
            nb.cells.append(nbformat.v4.new_code_cell(edit))
            continue
        old, new = edit
        hits = [c for c in nb.cells if c.cell_type == "code" and old in c.source]
        assert len(hits) == 1 and hits[0].source.count(old) == 1, f"{name}: {old!r} must occur once"
        hits[0].source = hits[0].source.replace(old, new)
    path = tmp_path / f"{name}.ipynb"
    nbformat.write(nb, str(path))
    return str(path)


def solution_functions(solution, cell_ids):
    """Execute the ``solution`` notebook's cells with these ids (in notebook order, with
    numpy as np) and return the namespace they define."""
    import numpy as np

    namespace = {"np": np}
    for cell in nbformat.read(solution, as_version=4).cells:
        if cell.get("id") in cell_ids:
            exec(cell.source, namespace)
    return namespace


def assert_self_check_names(capsys, lab, mistake_name, check, function_name, match):
    """bnlab.check's ``check`` fails the lab's catalogued mistake ``mistake_name`` (its
    ``function_name`` passed in), with an AssertionError matching ``match``, and prints FAIL
    and the mistake's feedback message (output captured before the call is read too)."""
    import pytest

    wrong = next(m for m in lab.mistakes() if m.name == mistake_name)
    with pytest.raises(AssertionError, match=match):
        check(wrong.functions[function_name])
    out = capsys.readouterr().out
    assert "FAIL" in out and wrong.message in out
