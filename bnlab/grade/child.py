"""The sandboxed child: load a submission's definitions, call them, save the raw outputs.

Run by ``bnlab.grade.sandbox`` as ``python -I child.py SETUP REPO_ROOT`` in a fresh
interpreter, in its own session, with a fresh home folder as working directory. It reads
``SETUP/plan.json`` (questions to run, limits, its out folder, the uid to become or null),
``SETUP/cells.json`` (the notebook's code cells) and ``SETUP/inputs/<question>.npz``; sets its
resource limits; imports what it needs; and only then, given a uid, becomes that user for good
(``_become``), before any of the submission runs. It writes in its out folder

* ``loaded.npz`` once the definitions are loaded (which names are missing, which statements
  raised, the graded functions' signatures, refused imports);
* ``<question>.start`` before a question and ``<question>.npz`` after it: the raw outputs of
  the student's functions plus a JSON ``__meta__`` string (non-array results, the exception
  raised, the seconds the calls took, refused imports).

It never sees expected values and returns no verdict: the parent judges everything. The
reference implementations (``bnlab.numpy``, ``bnlab.torch``) and the grader's own modules
cannot be imported by the submission here, and each attempt is reported (``_BlockReference``).
That is a record of what a submission tried, not a wall: code that executes the reference's
source file itself gets around it.
"""

import ast
import importlib.abc
import json
import linecache
import os
import signal
import sys
import time

SETUP_FAILED = 70  # exit status when the sandbox cannot be set up (before any student code)
MAX_SIGNATURE = 300
PR_SET_KEEPCAPS, PR_SET_NO_NEW_PRIVS = 8, 38  # <linux/prctl.h>
CAP_DAC_READ_SEARCH = 2  # <linux/capability.h>
_LINUX_CAPABILITY_VERSION_3 = 0x20080522


def _imported_by_notebook():
    """Whether the import under way comes from the notebook's own code (a ``<notebook cell N>``
    frame, see ``main``), past the import machinery's frames (``importlib.import_module``
    included), rather than from a module the notebook imported."""
    frame = sys._getframe(2)
    while frame is not None:
        name = frame.f_code.co_filename
        if not (name.startswith("<frozen importlib") or name == importlib.__file__):
            return name.startswith("<notebook cell")
        frame = frame.f_back
    return False


class _BlockReference(importlib.abc.MetaPathFinder):
    """Refuse the reference implementations and the grader's modules; note each attempt.

    A finder sees only imports of modules that are not in ``sys.modules`` yet, so ``install``
    first drops from it the grader's modules this child imported for itself (it keeps its own
    references), and their attributes on the parent package: ``import bnlab; bnlab.grade``
    must not reach them either. ``bnlab.numpy`` and ``bnlab.torch`` are never imported here.
    ``take`` returns the attempts since its last call: the child reports them with the reply
    of the phase they happened in (loading, or one question), which tells the parent when.
    """
    BLOCKED = ()  # notebook.REFERENCE_MODULES, set in ``main`` once bnlab is importable

    def __init__(self):
        self.attempts = []
        self.noticed = set()

    @classmethod
    def blocks(cls, name):
        return isinstance(name, str) and any(name == b or name.startswith(b + ".")
                                             for b in cls.BLOCKED)

    def find_spec(self, fullname, path=None, target=None):
        if self.blocks(fullname):
            if _imported_by_notebook():  # not e.g. bnlab.experiments importing bnlab.torch
                self.attempts.append(fullname)
            raise ImportError(f"{fullname} cannot be imported by a graded submission: "
                              "write the lab's functions yourself")
        return None

    def install(self):
        for name in [n for n in sys.modules if self.blocks(n)]:
            del sys.modules[name]
            package, _, attribute = name.rpartition(".")
            if package in sys.modules:
                vars(sys.modules[package]).pop(attribute, None)
        sys.meta_path.insert(0, self)

    def take(self):
        """The blocked modules tried since the last call, each once, and any found imported all
        the same (a submission can take this finder out of ``sys.meta_path``)."""
        found = [name for name in list(sys.modules)
                 if self.blocks(name) and name not in self.noticed]
        self.noticed.update(found)
        found = [name for name in found if name.rpartition(".")[0] not in found]  # outermost only
        attempts, self.attempts = self.attempts + found, []
        return list(dict.fromkeys(attempts))[:20]


def _fail(message):
    """Stop before any student code runs: the sandbox itself could not be set up."""
    sys.stderr.write(f"bnlab sandbox: {message}\n")
    sys.stderr.flush()
    os._exit(SETUP_FAILED)


def _limit_self(limits):
    """Resource limits for this process and its children (see ``bnlab.grade.sandbox``)."""
    import resource
    wanted = [(resource.RLIMIT_AS, limits["memory_bytes"]),
              (resource.RLIMIT_FSIZE, limits["file_bytes"]),
              (resource.RLIMIT_CORE, 0),
              (resource.RLIMIT_CPU, limits["cpu_seconds"])]
    if limits["processes"] is not None:  # only with a uid of its own: it counts the whole uid
        wanted.append((resource.RLIMIT_NPROC, limits["processes"]))
    for which, value in wanted:
        hard = resource.getrlimit(which)[1]
        if hard != resource.RLIM_INFINITY:  # never ask for more than we already have
            value = min(value, hard)
        resource.setrlimit(which, (value, value))


def _become(uid, gid):
    """Become the sandbox user for good: no supplementary groups, real, effective and saved ids
    all ``uid``/``gid``, and no new privileges (a setuid program cannot bring root back).

    One capability of root is kept, CAP_DAC_READ_SEARCH: reading and searching any folder
    and file. The interpreter, the virtual environment and the repository may live where only
    root can enter (``/root/.pyenv``, a clone in a 0700 folder), and modules are imported
    lazily, during the calls too. Writing, signalling and tracing stay those of ``uid``; the
    capability does not survive an ``exec`` (a program the submission starts has none).
    """
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)

    def prctl(option, value):
        return libc.prctl(ctypes.c_int(option), ctypes.c_ulong(value), ctypes.c_ulong(0),
                          ctypes.c_ulong(0), ctypes.c_ulong(0))

    # capset(2): a header (version 3, this process) and two {effective, permitted, inheritable}
    header = (ctypes.c_uint32 * 2)(_LINUX_CAPABILITY_VERSION_3, 0)
    read_search = 1 << CAP_DAC_READ_SEARCH
    caps = (ctypes.c_uint32 * 6)(read_search, read_search, 0, 0, 0, 0)
    try:
        if prctl(PR_SET_KEEPCAPS, 1) != 0:  # keep the permitted set across setuid
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_KEEPCAPS) failed")
        os.setgroups([])
        os.setgid(gid)
        os.setuid(uid)
        if libc.capset(header, caps) != 0:  # permitted and effective: CAP_DAC_READ_SEARCH only
            raise OSError(ctypes.get_errno(), "capset failed")
        prctl(PR_SET_KEEPCAPS, 0)
        no_new_privs = prctl(PR_SET_NO_NEW_PRIVS, 1)
    except OSError as exc:
        _fail(f"could not become uid {uid}: {exc}")
    if (os.getresuid() != (uid, uid, uid) or os.getresgid() != (gid, gid, gid) or os.getgroups()
            or no_new_privs != 0):
        _fail(f"still uids {os.getresuid()}, gids {os.getresgid()}, groups {os.getgroups()} "
              f"(no_new_privs {no_new_privs}) after switching to uid {uid}")


def _signature(f, inspect):
    """``str(inspect.signature(f))``, capped; "" when ``f`` has none or a hostile one (one
    that raises, or takes more than a second: ``__signature__`` can be a student's property)."""
    def too_long(signum, frame):
        raise TimeoutError

    previous = signal.signal(signal.SIGALRM, too_long)
    signal.setitimer(signal.ITIMER_REAL, 1.0)
    try:
        return str(inspect.signature(f))[:MAX_SIGNATURE]
    except BaseException:
        return ""
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def main(setup, repo_root):
    with open(os.path.join(setup, "plan.json")) as f:
        plan = json.load(f)
    _limit_self(plan["limits"])
    sys.path.insert(0, repo_root)
    import inspect

    import numpy as np

    from bnlab.grade import driver, notebook
    importlib.import_module("bnlab.check")  # the notebook imports it; it holds no reference code

    # kept before student code runs, which may replace them
    savez, replace, dumps, clock = np.savez, os.replace, json.dumps, time.perf_counter
    out = plan["out"]
    with open(os.path.join(setup, "cells.json")) as f:
        cells = json.load(f)
    inputs = {}
    for q in plan["questions"]:
        with np.load(os.path.join(setup, "inputs", q["name"] + ".npz"), allow_pickle=False) as data:
            inputs[q["name"]] = {k: data[k] for k in data.files}

    def save(name, arrays, meta):
        tmp = os.path.join(out, name + ".tmp.npz")
        savez(tmp, __meta__=np.array(dumps(meta)), **arrays)
        replace(tmp, os.path.join(out, name + ".npz"))

    if plan["user"] is not None:
        _become(*plan["user"])
    _BlockReference.BLOCKED = tuple(notebook.REFERENCE_MODULES)
    blocker = _BlockReference()
    blocker.install()
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
    defined = {name: namespace.get(name) for name in plan["functions"]}
    save("loaded", {}, {"missing": [name for name, f in defined.items() if not callable(f)],
                        "errors": errors[:20],
                        "signatures": {name: _signature(f, inspect) for name, f in defined.items()
                                       if callable(f)},
                        "blocked_imports": blocker.take()})

    for q in plan["questions"]:
        open(os.path.join(out, q["name"] + ".start"), "w").close()
        functions = {name: namespace.get(name) for name in plan["functions"]}
        begin = clock()
        outputs, kinds, error = driver.run_plan(q["plan"], inputs[q["name"]], functions)
        seconds = clock() - begin
        if error is not None:
            error = dict(step=error.step, function=error.function, exc_type=error.exc_type,
                         message=error.message, trace=error.trace)
        save(q["name"], outputs, {"kinds": kinds, "error": error, "seconds": seconds,
                                  "blocked_imports": blocker.take()})
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # do not wait for threads the submission may have started


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
