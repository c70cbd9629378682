"""The sandboxed child: load a submission's definitions, call them, save the raw outputs.

Run by ``bnlab.grade.sandbox`` as ``python -I child.py WORKDIR REPO_ROOT`` in a fresh
interpreter, with WORKDIR (a temporary directory) as its working directory, resource limits
and its own process group. It reads ``WORKDIR/cells.json`` (the notebook's code cells),
``WORKDIR/plan.json`` (questions to run) and ``WORKDIR/inputs/<question>.npz``, and writes

* ``out/loaded.npz`` once the definitions are loaded (which names are missing, which
  statements raised);
* ``out/<question>.start`` before a question and ``out/<question>.npz`` after it: the raw
  outputs of the student's functions plus a JSON ``__meta__`` string (non-array results,
  the exception raised).

It never sees expected values and returns no verdict: the parent judges everything. The
reference implementations (``bnlab.numpy``, ``bnlab.torch``) and the grader's own modules
cannot be imported by the submission here.
"""

import ast
import importlib.abc
import json
import linecache
import os
import sys


class _BlockReference(importlib.abc.MetaPathFinder):
    BLOCKED = ("bnlab.numpy", "bnlab.torch", "bnlab.grade")

    def find_spec(self, fullname, path=None, target=None):
        if any(fullname == b or fullname.startswith(b + ".") for b in self.BLOCKED):
            raise ImportError(f"{fullname} cannot be imported by a graded submission: "
                              "write the lab's functions yourself")
        return None


def _limit_self(limits):
    """Resource limits for this process and its children (see ``bnlab.grade.sandbox``)."""
    import resource
    for which, value in ((resource.RLIMIT_AS, limits["memory_bytes"]),
                         (resource.RLIMIT_FSIZE, limits["file_bytes"]),
                         (resource.RLIMIT_CORE, 0),
                         (resource.RLIMIT_CPU, limits["cpu_seconds"])):
        hard = resource.getrlimit(which)[1]
        if hard != resource.RLIM_INFINITY:  # never ask for more than we already have
            value = min(value, hard)
        resource.setrlimit(which, (value, value))


def main(workdir, repo_root):
    with open(os.path.join(workdir, "plan.json")) as f:
        plan = json.load(f)
    _limit_self(plan["limits"])
    sys.path.insert(0, repo_root)
    import numpy as np

    import bnlab.check  # noqa: F401  (the notebook imports it; it holds no reference code)
    from bnlab.grade import driver, notebook

    savez, replace, dumps = np.savez, os.replace, json.dumps  # kept before student code runs
    out = os.path.join(workdir, "out")
    with open(os.path.join(workdir, "cells.json")) as f:
        cells = json.load(f)
    inputs = {}
    for q in plan["questions"]:
        with np.load(os.path.join(workdir, "inputs", q["name"] + ".npz"), allow_pickle=False) as data:
            inputs[q["name"]] = {k: data[k] for k in data.files}

    def save(name, arrays, meta):
        tmp = os.path.join(out, name + ".tmp.npz")
        savez(tmp, __meta__=np.array(dumps(meta)), **arrays)
        replace(tmp, os.path.join(out, name + ".npz"))

    sys.meta_path.insert(0, _BlockReference())
    namespace = {"__name__": "__notebook__", "__builtins__": __builtins__}
    errors = []
    for index, text in cells:
        filename = f"<notebook cell {index}>"
        linecache.cache[filename] = (len(text), None, text.splitlines(True), filename)
        for node in notebook.kept_statements(ast.parse(text)):
            try:
                exec(compile(ast.Module(body=[node], type_ignores=[]), filename, "exec"), namespace)
            except BaseException as exc:  # SystemExit too: note it, keep loading
                errors.append(f"code cell {index}, line {node.lineno}: {type(exc).__name__}: {str(exc)[:500]}")
    missing = [name for name in plan["functions"] if not callable(namespace.get(name))]
    save("loaded", {}, {"missing": missing, "errors": errors[:20]})

    for q in plan["questions"]:
        open(os.path.join(out, q["name"] + ".start"), "w").close()
        functions = {name: namespace.get(name) for name in plan["functions"]}
        outputs, kinds, error = driver.run_plan(q["plan"], inputs[q["name"]], functions)
        if error is not None:
            error = dict(step=error.step, function=error.function, exc_type=error.exc_type,
                         message=error.message, trace=error.trace)
        save(q["name"], outputs, {"kinds": kinds, "error": error})
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # do not wait for threads the submission may have started


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
