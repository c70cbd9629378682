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
