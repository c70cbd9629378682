"""The lab generator (``python -m bnlab.labs``) and the shipped student notebooks."""

import os
import subprocess
import sys

import nbformat
import pytest
from nbclient import NotebookClient

from bnlab import labs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAIRS = labs.pairs(ROOT)


def test_there_are_labs():
    assert [os.path.basename(m) for m, _ in PAIRS] == ["lab01_batchnorm.ipynb", "lab02_normalization_family.ipynb",
                                                   "lab03_batch_size.ipynb", "lab04_sync_and_folding.ipynb"]


@pytest.mark.parametrize("master,lab", PAIRS, ids=[os.path.basename(m) for m, _ in PAIRS])
def test_lab_defines_each_graded_function_once_and_the_grader_knows_it(master, lab):
    """The grader has a module for every lab, and the lab gives the student each graded
    function's signature (a stub) exactly once."""
    from bnlab.grade import LABS, lab_module
    lab_id = os.path.basename(lab).split("_")[0]
    assert lab_id in LABS
    nb = nbformat.read(lab, as_version=4)
    code = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    for name in lab_module(lab_id).FUNCTIONS:
        assert code.count(f"\ndef {name}(") + code.startswith(f"def {name}(") == 1, name


@pytest.mark.parametrize("master,lab", PAIRS, ids=[os.path.basename(m) for m, _ in PAIRS])
def test_committed_lab_equals_generator_output(master, lab):
    with open(lab, encoding="utf-8") as f:
        assert f.read() == labs.lab_text(master), "drifted: run python -m bnlab.labs"


def test_check_command_reports_drift(tmp_path):
    for sub in ("solutions", "labs"):
        (tmp_path / sub).mkdir()
    master, lab = PAIRS[0]
    (tmp_path / "solutions" / os.path.basename(master)).write_bytes(open(master, "rb").read())
    run = lambda *a: subprocess.run([sys.executable, "-m", "bnlab.labs", "--root", str(tmp_path), *a],
                                    capture_output=True, text=True)
    first = run("--check")
    assert first.returncode == 1 and "drifted: labs/lab01_batchnorm.ipynb" in first.stdout
    assert run().returncode == 0
    assert run("--check").returncode == 0
    generated = tmp_path / "labs" / os.path.basename(lab)
    generated.write_text(generated.read_text().replace("NotImplementedError", "NotImplementedErr0r", 1))
    assert run("--check").returncode == 1


@pytest.mark.parametrize("master,lab", PAIRS, ids=[os.path.basename(m) for m, _ in PAIRS])
def test_masters_are_stored_without_outputs_and_have_solutions(master, lab):
    nb = nbformat.read(master, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.outputs == [] and c.execution_count is None for c in code)
    assert any(labs.BEGIN in c.source for c in code)
    assert any(labs.NEEDS_SOLUTION in c.metadata.get("tags", []) for c in code)


@pytest.mark.parametrize("master,lab", PAIRS, ids=[os.path.basename(m) for m, _ in PAIRS])
def test_shipped_lab_runs_and_only_tagged_cells_raise_not_implemented(master, lab):
    """Every cell tagged raises-exception must fail with NotImplementedError (nbval only
    *allows* an exception there; it does not require one), every other cell must run."""
    nb = nbformat.read(lab, as_version=4)
    assert "BEGIN SOLUTION" not in nbformat.writes(nb)
    NotebookClient(nb, timeout=300, kernel_name="python3", allow_errors=False,
                   resources={"metadata": {"path": os.path.dirname(lab)}}).execute()
    tagged = 0
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        errors = [o for o in cell.outputs if o.output_type == "error"]
        if labs.RAISES in cell.metadata.get("tags", []):
            tagged += 1
            assert [e.ename for e in errors] == ["NotImplementedError"], (cell.id, errors)
        else:
            assert errors == [], (cell.id, errors)
    assert tagged >= 5


# --- the generator on small sources


def test_stub_keeps_indentation_and_surrounding_code():
    source = ("def f(x):\n"
              "    y = 1\n"
              "    if x:\n"
              "        # BEGIN SOLUTION\n"
              "        y = x * 2\n"
              "        y += 1\n"
              "        # END SOLUTION\n"
              "    return y")
    out, regions = labs.strip_solutions(source)
    assert regions == 1
    assert out == ("def f(x):\n"
                   "    y = 1\n"
                   "    if x:\n"
                   f"        {labs.STUB}\n"
                   "    return y")
    namespace = {}
    exec(out, namespace)
    assert namespace["f"](0) == 1
    with pytest.raises(NotImplementedError):
        namespace["f"](3)


def test_multiple_regions_and_top_level_region():
    source = "# BEGIN SOLUTION\na = 1\n# END SOLUTION\nb = 2\ndef g():\n  # BEGIN SOLUTION\n  return 3\n  # END SOLUTION"
    out, regions = labs.strip_solutions(source)
    assert regions == 2
    assert out.splitlines() == [labs.STUB, "b = 2", "def g():", "  " + labs.STUB]


@pytest.mark.parametrize("source,words", [
    ("x = 1\n# BEGIN SOLUTION\ny = 2\n", "line 2: '# BEGIN SOLUTION' is never closed"),
    ("x = 1\n# END SOLUTION\n", "line 2: '# END SOLUTION' without"),
    ("# BEGIN SOLUTION\n# BEGIN SOLUTION\n# END SOLUTION", "inside the region opened at line 1"),
])
def test_bad_markers_give_a_clear_error(source, words):
    with pytest.raises(labs.SolutionMarkerError, match=words.replace("(", r"\(")):
        labs.strip_solutions(source, "cell 3")


def test_make_lab_tags_clears_outputs_and_checks_syntax():
    nb = nbformat.v4.new_notebook()
    solution = nbformat.v4.new_code_cell("def f():\n    # BEGIN SOLUTION\n    return 1\n    # END SOLUTION")
    solution.outputs = [nbformat.v4.new_output("stream", text="hi")]
    solution.execution_count = 3
    uses = nbformat.v4.new_code_cell("f()")
    uses.metadata["tags"] = [labs.NEEDS_SOLUTION, "other"]
    nb.cells = [solution, uses]
    lab = labs.make_lab(nb)
    assert lab.cells[0].outputs == [] and lab.cells[0].execution_count is None
    assert lab.cells[1].metadata["tags"] == ["other", labs.RAISES]
    assert solution.outputs and labs.NEEDS_SOLUTION in uses.metadata["tags"]  # the master is untouched
    # a region that cuts a statement in half leaves code that does not parse: refuse it
    nb.cells = [nbformat.v4.new_code_cell("x = (1 +\n# BEGIN SOLUTION\n2)\n# END SOLUTION")]
    with pytest.raises(labs.SolutionMarkerError, match="does not parse"):
        labs.make_lab(nb)


def test_generation_is_deterministic():
    master, _ = PAIRS[0]
    assert labs.lab_text(master) == labs.lab_text(master)
