"""Turn a submitted notebook into the module the sandboxed child runs.

Only what defines things is kept: imports, function and class definitions, and assignments
of literal constants (``EPS = 1e-5``). Experiments, plots, self-checks and prints are dropped,
so grading does not re-run the student's training loop. IPython magics (``%time``, ``!pip``,
``%%capture`` cells) are removed before parsing. A cell that still does not parse is reported
and skipped; the rest of the notebook is graded.

This runs in the parent and only parses (``ast.parse``); nothing of the student's executes here.
"""

import ast
import json
import re
import threading
from typing import NamedTuple

# The reference implementations and the grader: a submission that imports them is flagged
# (``reference_imports`` here, the sandboxed child's record of what it refused to import).
REFERENCE_MODULES = {"bnlab.numpy": "the reference implementation",
                     "bnlab.torch": "the torch reference implementation",
                     "bnlab.grade": "the grader"}
_REFERENCE_TEXT = re.compile(r"\bbnlab\.(numpy|torch|grade)\b")

# CPython 3.11's ast.parse is not thread-safe: two threads building AST objects at once can
# fail with "SystemError: AST constructor recursion depth mismatch" (seen when grading with
# --jobs 2). The grader grades notebooks in threads, so parsing takes this lock.
_AST_LOCK = threading.Lock()


class NotebookError(Exception):
    """The file is not a notebook the grader can read."""


def _strip_magics(source):
    """Drop IPython-only lines (magics, shell escapes, help queries); keep line numbers."""
    lines = source.splitlines()
    if lines and lines[0].lstrip().startswith("%%"):
        return ""  # a cell magic: the whole cell is not Python
    kept = []
    for line in lines:
        stripped = line.lstrip()
        if stripped.startswith(("%", "!")) or (stripped.endswith("?") and not stripped.startswith("#")):
            kept.append("")
        else:
            kept.append(line)
    return "\n".join(kept)


def _is_literal(node):
    try:
        ast.literal_eval(node)
        return True
    except (ValueError, TypeError, SyntaxError, RecursionError, MemoryError):
        return False


def _keep(node):
    if isinstance(node, (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return True
    if isinstance(node, ast.Assign) and all(isinstance(t, ast.Name) for t in node.targets):
        return _is_literal(node.value)
    if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value is not None:
        return _is_literal(node.value)
    return False


def code_cells(path):
    """The code cells' sources of the notebook at ``path`` (a list of strings)."""
    try:
        with open(path, encoding="utf-8") as f:
            nb = json.load(f)
        cells = nb["cells"]
        sources = []
        for cell in cells:
            if cell.get("cell_type") != "code":
                continue
            src = cell.get("source", "")
            sources.append("".join(src) if isinstance(src, list) else str(src))
        return sources
    except FileNotFoundError:
        raise NotebookError(f"{path}: no such file")
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise NotebookError(f"{path} is not a readable Jupyter notebook ({type(exc).__name__}: {exc})")


def kept_statements(tree):
    """The top-level statements of a parsed cell that define things (see the module docstring)."""
    return [node for node in tree.body if _keep(node)]


def _is_reference(name):
    return any(name == m or name.startswith(m + ".") for m in REFERENCE_MODULES)


def reference_imports(tree, index):
    """Where a parsed code cell imports the reference implementation or the grader: ``import
    bnlab.numpy``, ``from bnlab import torch``, or the module's name in a string (for
    ``importlib.import_module``/``__import__``). Anywhere in the cell, not only in what the
    grader runs: the instructor decides what a flag means."""
    found = []
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            names = [m.group(0) for m in _REFERENCE_TEXT.finditer(node.value)]
        for name in dict.fromkeys(n for n in names if _is_reference(n)):
            module = ".".join(name.split(".")[:2])
            found.append(f"code cell {index}, line {node.lineno}: imports {module} "
                         f"({REFERENCE_MODULES[module]})")
            break
    return found


class Submission(NamedTuple):
    """What the grader reads from a notebook, once, before any student code runs."""
    cells: list      # (index, source) of the code cells the child runs (see ``extract``)
    notes: list      # cells skipped for a syntax error
    integrity: list  # imports of the reference (``reference_imports``)


def extract(path):
    """Return a ``Submission``: ``cells`` lists ``(index, source)`` of the code cells that
    parse (magics removed; ``index`` counts code cells from 1) and define something; ``notes``
    lists the cells skipped for a syntax error; ``integrity`` the imports of the reference. The
    child re-parses each cell and runs only ``kept_statements``, compiled under the name
    ``<notebook cell N>`` so that tracebacks point into the student's own cells.
    """
    cells, notes, integrity = [], [], []
    for index, cell in enumerate(code_cells(path), start=1):
        text = _strip_magics(cell)
        try:
            with _AST_LOCK:
                tree = ast.parse(text)
        except (SyntaxError, ValueError, RecursionError, MemoryError) as exc:
            where = f" (line {exc.lineno})" if getattr(exc, "lineno", None) else ""
            notes.append(f"code cell {index} was skipped: it has a syntax error{where}: "
                         f"{getattr(exc, 'msg', exc)}")
            continue
        integrity += reference_imports(tree, index)
        if kept_statements(tree):
            cells.append((index, text))
    return Submission(cells, notes, integrity)
