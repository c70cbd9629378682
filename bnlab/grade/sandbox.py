"""Run a submission's functions in a child process and collect their raw outputs.

The child (``bnlab/grade/child.py``) runs in a fresh interpreter (``python -I``) in a
temporary directory, in its own session (process group), with resource limits that it sets on
itself before anything of the submission runs (not in a ``preexec_fn``, which is unsafe when
several notebooks are graded from threads):

* ``RLIMIT_AS`` (address space, default 4 GiB): a huge allocation fails with MemoryError;
* ``RLIMIT_CPU``: a safety net behind the wall-clock limits below;
* ``RLIMIT_FSIZE`` (default 64 MiB per file): stdout, stderr and outputs cannot fill the disk;
* ``RLIMIT_CORE`` 0: no core dumps.
``RLIMIT_NPROC`` is not set: it counts every process and thread of the user, not of the child,
so a value low enough to matter would break NumPy's threads or the user's other work. BLAS
thread pools are pinned to one thread instead.

Wall-clock limits: ``load_timeout`` for starting and loading the definitions,
``question_timeout`` per question. When a question times out or the child dies (segfault,
``os._exit``, killed), the whole process group is killed, that question gets the verdict, and
a new child carries on with the remaining questions. Outputs come back as ``.npz`` files read
with ``allow_pickle=False``.
"""

from dataclasses import dataclass, field
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np

from bnlab.grade.driver import StepError

CHILD = os.path.join(os.path.dirname(os.path.abspath(__file__)), "child.py")
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MAX_REPLY_BYTES = 64 << 20


@dataclass
class Limits:
    load_timeout: float = 60.0
    question_timeout: float = 20.0
    memory_bytes: int = 4 << 30
    file_bytes: int = 64 << 20
    output_tail: int = 2000  # characters of stdout/stderr quoted in a verdict


@dataclass
class ChildResult:
    """Per question: ``(outputs, kinds, error)`` where error is None, a StepError or a verdict string."""
    runs: dict = field(default_factory=dict)
    missing: list = field(default_factory=list)   # graded functions the notebook does not define
    load_errors: list = field(default_factory=list)


def _kill_group(proc):
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()


def _tail(path, n):
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - n))
            return f.read().decode("utf-8", "replace").strip()
    except OSError:
        return ""


def _read_reply(path):
    """``(arrays, meta)`` from a child's .npz, or raise ValueError when it is not a valid reply."""
    if os.path.getsize(path) > MAX_REPLY_BYTES:
        raise ValueError("reply too large")
    try:  # the file came from the child, which ran student code: anything can be in it
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except Exception as exc:  # BadZipFile, EOFError, pickled objects refused, ...
        raise ValueError(f"not a valid .npz reply ({type(exc).__name__}: {exc})") from exc
    meta = arrays.pop("__meta__", None)
    if meta is None or meta.dtype.kind != "U" or meta.shape != ():
        raise ValueError("reply without metadata")
    meta = json.loads(str(meta))
    if not isinstance(meta, dict):
        raise ValueError("metadata is not an object")
    return arrays, meta


def _death(rc, timed_out, limits, what, workdir):
    """A verdict for a child that stopped without finishing ``what``."""
    if timed_out:
        msg = f"{what} did not finish within {timed_out:g} s (an infinite loop?)"
    elif rc < 0:
        sig = -rc
        name = signal.Signals(sig).name if sig in signal.valid_signals() else str(sig)
        reason = {signal.SIGSEGV: "crashed (segmentation fault)",
                  signal.SIGXCPU: "used too much CPU time",
                  signal.SIGXFSZ: f"wrote a file larger than {limits.file_bytes >> 20} MiB",
                  signal.SIGKILL: "was killed (out of memory or CPU time?)",
                  signal.SIGABRT: "aborted"}.get(sig, "was killed")
        msg = f"the process running {what} {reason} (signal {name})"
    else:
        msg = (f"the process running {what} exited with status {rc} before returning "
               f"(os._exit or sys.exit outside a function call?)")
    err = _tail(os.path.join(workdir, "stderr.txt"), limits.output_tail)
    if err:
        msg += f"; its last stderr lines: {err[-500:]}"
    return msg


def run_submission(cells, functions, questions, limits=Limits()):
    """Run ``questions`` (``core.Question``) on the notebook ``cells`` (``notebook.extract``).

    Returns a ChildResult. Never raises for anything the submission does.
    """
    result = ChildResult()
    remaining = list(questions)
    workdir = tempfile.mkdtemp(prefix="bnlab-grade-")
    try:
        os.makedirs(os.path.join(workdir, "inputs"))
        with open(os.path.join(workdir, "cells.json"), "w") as f:
            json.dump(cells, f)
        for q in questions:
            np.savez(os.path.join(workdir, "inputs", q.name + ".npz"), **q.inputs)
        while remaining:
            done = _one_child(workdir, functions, remaining, limits, result)
            if done is None:  # loading failed: the same would happen again
                for q in remaining:
                    result.runs[q.name] = ({}, {}, result.load_errors[-1])
                break
            remaining = remaining[done:]
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return result


def _one_child(workdir, functions, questions, limits, result):
    """Run one child on ``questions``; return how many got a result (or None if loading failed)."""
    out = os.path.join(workdir, "out")
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    with open(os.path.join(workdir, "plan.json"), "w") as f:
        cpu = int(limits.load_timeout + limits.question_timeout * len(questions)) + 1
        json.dump(dict(functions=list(functions),
                       questions=[dict(name=q.name, plan=q.plan) for q in questions],
                       limits=dict(memory_bytes=limits.memory_bytes, file_bytes=limits.file_bytes,
                                   cpu_seconds=cpu)), f)
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": workdir, "LANG": "C.UTF-8",
           "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "MPLBACKEND": "Agg", "PYTHONHASHSEED": "0", "PYTHONDONTWRITEBYTECODE": "1"}
    with open(os.path.join(workdir, "stdout.txt"), "wb") as so, \
            open(os.path.join(workdir, "stderr.txt"), "wb") as se:
        proc = subprocess.Popen([sys.executable, "-I", CHILD, workdir, REPO_ROOT], cwd=workdir,
                                env=env, stdin=subprocess.DEVNULL, stdout=so, stderr=se,
                                start_new_session=True)
    try:
        loaded = False
        current, since = None, time.monotonic()
        timed_out = 0
        while True:
            rc = proc.poll()
            if rc is not None:
                break
            now = time.monotonic()
            if not loaded and os.path.exists(os.path.join(out, "loaded.npz")):
                loaded, since = True, now
            if loaded:
                nxt = next((i for i, q in enumerate(questions)
                            if not os.path.exists(os.path.join(out, q.name + ".npz"))), None)
                if nxt is None:  # all done; the child is exiting
                    proc.wait(timeout=max(1.0, limits.question_timeout))
                    rc = proc.returncode
                    break
                if nxt != current:
                    current, since = nxt, now
                if now - since > limits.question_timeout:
                    timed_out = limits.question_timeout
            elif now - since > limits.load_timeout:
                timed_out = limits.load_timeout
            if timed_out:
                break
            time.sleep(0.02)
    except subprocess.TimeoutExpired:
        pass
    finally:
        _kill_group(proc)
        rc = proc.returncode

    loaded_path = os.path.join(out, "loaded.npz")
    if not os.path.exists(loaded_path):
        verdict = _death(rc, timed_out, limits, "the notebook's definitions (imports, functions)", workdir)
        result.load_errors.append("the notebook could not be loaded: " + verdict)
        return None
    try:
        _, meta = _read_reply(loaded_path)
        result.missing = [str(m) for m in meta.get("missing", [])][:10]
        result.load_errors = [str(e)[:600] for e in meta.get("errors", [])][:20]
    except (ValueError, OSError, KeyError) as exc:
        result.load_errors.append(f"the child's load report could not be read ({exc})")
        return None
    count = 0
    for q in questions:
        path = os.path.join(out, q.name + ".npz")
        if not os.path.exists(path):
            break
        count += 1
        try:
            arrays, meta = _read_reply(path)
            kinds = {str(k): str(v)[:200] for k, v in dict(meta.get("kinds") or {}).items()}
            error = meta.get("error")
            if error is not None:
                error = StepError(int(error["step"]), str(error["function"])[:100],
                                  str(error["exc_type"])[:100], str(error["message"])[:2000],
                                  str(error.get("trace", ""))[:4000])
            result.runs[q.name] = (arrays, kinds, error)
        except (ValueError, OSError, KeyError, TypeError, AttributeError) as exc:
            result.runs[q.name] = ({}, {}, f"the outputs could not be read back ({type(exc).__name__}: {exc})")
    if count < len(questions):  # the child died or was killed during questions[count]
        q = questions[count]
        result.runs[q.name] = ({}, {}, _death(rc, timed_out, limits, f"question {q.name}", workdir))
        count += 1
    return count
