"""Run a submission's functions in a child process and collect their raw outputs.

The child (``bnlab/grade/child.py``) runs in a fresh interpreter (``python -I``), in its own
session (process group), in a fresh home folder, with resource limits that it sets on itself
before anything of the submission runs (not in a ``preexec_fn``, which is unsafe when several
notebooks are graded from threads):

* ``RLIMIT_AS`` (address space, default 4 GiB): a huge allocation fails with MemoryError;
* ``RLIMIT_CPU``: a safety net behind the wall-clock limits below;
* ``RLIMIT_FSIZE`` (default 64 MiB per file): stdout, stderr and outputs cannot fill the disk;
* ``RLIMIT_CORE`` 0: no core dumps;
* ``RLIMIT_NPROC`` (``Limits.processes``, default 64), only when the child has a user of its own
  (below): the limit counts every process and thread of a uid, so it means something only for
  a uid that is the child's alone; then a fork bomb gets BlockingIOError instead of the machine.
  BLAS thread pools are pinned to one thread.

A user of its own. When the grader runs as root (CI does) and ``Limits.isolate_uid`` is set, a
submission's children run as a numeric uid and gid that nothing else uses, with no
/etc/passwd entry (``_sandbox_user``). The child imports what it needs as root, then drops its
groups, gid and uid, and with ``PR_SET_NO_NEW_PRIVS`` any way back through a setuid program,
before the first line of the notebook runs. It keeps one capability of root,
CAP_DAC_READ_SEARCH (read any file, enter any folder: the interpreter, the virtual environment
and the repository may sit where only root can enter, and imports happen during the calls
too). The submission then cannot write the grader's files, the other submissions' notebooks,
the report folder or another child's home; cannot signal or trace the grader or another
child; cannot start more than ``Limits.processes`` processes and threads. It can read any
file (the repository, ``bnlab/numpy``'s source and ``solutions/`` included, the notebooks
and inputs of submissions graded at the same time: never expected values, which only the
grader's process holds), write in ``/tmp`` (files that outlive the child), and use the
network: there are no namespaces. Not root, or ``isolate_uid=False``, or a user namespace
without these uids (a rootless container): children run as the grader's user, which protects
none of the above (the limits, the kill of what is left and the checks on replies still hold).

Nothing left running. When a child is done (finished, timed out or crashed) its process group
is killed, then every process of its uid at once (``kill(-1)`` sent as that uid: none can fork
meanwhile), then /proc is read until no live process of the uid is left; so a fork, a
``subprocess.Popen``, a daemon that double-forked into a new session, a fork bomb all die with
it. Without a uid of its own, the processes killed are those whose environment carries the
child's random ``BNLAB_GRADE_SANDBOX`` token (``/proc/<pid>/environ``), pass after pass until
two in a row find none: best effort, since a process that leaves the session (``setsid``) and runs
a program with a cleared environment escapes, and so can one that forks and exits faster than
the passes. Such a process is signalled through a pidfd after a second look, so a reused pid
never hits an unrelated process; the grader itself is never signalled.

Wall-clock limits: ``load_timeout`` for starting and loading the definitions,
``question_timeout`` per question. When a question times out or the child dies (segfault,
``os._exit``, killed), that question gets the verdict and a new child carries on with the
remaining questions. Outputs come back as ``.npz`` files read with ``allow_pickle=False``,
through the out folder opened before the child started and without following a link, so a
reply cannot be another child's reply, a FIFO or a device. Each reply's metadata is checked
like its arrays: per-question seconds, the graded functions' signatures and the refused
imports of the reference become ``ChildResult`` fields only once validated.

Folders, per submission: ``WORKDIR`` (mode 0711: a child reaches its home, cannot list),
``WORKDIR/setup`` (0700, the grader's: cells, plan, inputs, the child's stdout and stderr) and
``WORKDIR/home<N>`` (0700, owned by child N's uid: its working folder and HOME; replies in
``out/``).
"""

from contextlib import contextmanager
from dataclasses import dataclass, field
import io
import json
import math
import os
import re
import secrets
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

from bnlab.grade.driver import StepError
from bnlab.grade.notebook import REFERENCE_MODULES

CHILD = os.path.join(os.path.dirname(os.path.abspath(__file__)), "child.py")
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MAX_REPLY_BYTES = 64 << 20
MAX_SIGNATURE = 300
MAX_INTEGRITY = 10
MARK = "BNLAB_GRADE_SANDBOX"  # environment variable carrying a child's token (no uid of its own)

# Sandbox uids (and gids, the same numbers): UID_BASE + (grader pid mod PID_SPAN) * UID_SLOTS
# + slot. No two live graders share a range (a pid is below PID_SPAN, Linux's largest
# pid_max); threads of one grader take distinct slots.
UID_BASE = 200_000
UID_SLOTS = 256
PID_SPAN = 1 << 22
UID_LAST = UID_BASE + PID_SPAN * UID_SLOTS - 1
_slots_lock = threading.Lock()
_slots_taken = set()

_BLOCKED_NAME = re.compile(r"bnlab\.(numpy|torch|grade)(\.\w+)*")


@dataclass
class Limits:
    load_timeout: float = 60.0
    question_timeout: float = 20.0
    memory_bytes: int = 4 << 30
    file_bytes: int = 64 << 20
    output_tail: int = 2000  # characters of stdout/stderr quoted in a verdict
    isolate_uid: bool = True  # as root: each submission's children run as a uid of their own
    processes: int = 64      # RLIMIT_NPROC (processes and threads), with a uid of its own only


@dataclass
class ChildResult:
    """What the child reported, validated.

    * ``runs``: per question, ``(outputs, kinds, error)`` where error is None, a StepError or a
      verdict string;
    * ``missing``: graded functions the notebook does not define; ``load_errors``: statements
      that raised while loading, or why the notebook could not be loaded;
    * ``seconds``: per question that ran, the wall seconds its calls took (the child's
      ``time.perf_counter``; the parent's own, coarser measure for a question that timed out or
      crashed, or whose reply has no valid one); no entry when the notebook did not load;
    * ``integrity``: at most 10 distinct short messages, one per refused import of the reference
      or the grader and when it happened, e.g. "tried to import bnlab.numpy (the reference
      implementation) while loading the notebook" or "... during question backward_dx";
    * ``signatures``: per graded function, ``str(inspect.signature(f))`` (at most 300
      characters), or "" when it is missing or has no signature to show;
    * ``left_running``: processes the submission left running (forks, subprocesses, daemons)
      that were killed when its children were done.
    """
    runs: dict = field(default_factory=dict)
    missing: list = field(default_factory=list)
    load_errors: list = field(default_factory=list)
    seconds: dict = field(default_factory=dict)
    integrity: list = field(default_factory=list)
    signatures: dict = field(default_factory=dict)
    left_running: int = 0


# --- processes ------------------------------------------------------------------------------

def _pids():
    """Every process id in /proc (none where there is no /proc)."""
    try:
        return [int(name) for name in os.listdir("/proc") if name.isdigit()]
    except OSError:
        return []


def _status(pid):
    """``(state letter, {real, effective, saved, filesystem uid})`` of a process, or None when
    it is gone. Read as bytes: a process can give itself a name that is not UTF-8."""
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            fields = dict(line.split(b":", 1) for line in f if b":" in line)
        return fields[b"State"].split()[0], {int(u) for u in fields[b"Uid"].split()}
    except (OSError, KeyError, ValueError, IndexError):
        return None


def _running_as(uid):
    """The test for "a live process of ``uid``" (a zombie is only waiting to be reaped)."""
    def matches(pid):
        status = _status(pid)
        return status is not None and status[0] not in (b"Z", b"X") and uid in status[1]
    return matches


def _marked(token):
    """The test for "a process whose environment carries ``token``" (see the module docstring)."""
    entry = f"{MARK}={token}".encode()

    def matches(pid):
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                return entry in f.read().split(b"\0")
        except OSError:  # gone, or another user's
            return False
    return matches


def _kill(pid, matches):
    """SIGKILL ``pid`` if it still matches: the second look goes through a pidfd, so a pid that
    was reused since the scan is never hit."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    except OSError:  # no pidfd (Linux before 5.3): plain kill, with the small race it avoids
        if matches(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return
    try:
        if matches(pid):
            signal.pidfd_send_signal(fd, signal.SIGKILL)
    except ProcessLookupError:
        pass
    finally:
        os.close(fd)


def _kill_all(matches, patience=10.0):
    """SIGKILL every process for which ``matches(pid)`` holds, pass after pass until two passes
    in a row find none, or ``patience`` seconds passed (a process stuck in the kernel cannot be
    waited for forever). Two, because one pass can miss a daemon: its parent forks it after the
    pass listed /proc and exits before the pass looks at the parent. Never the grader itself."""
    me, end, empty = os.getpid(), time.monotonic() + patience, 0
    while empty < 2 and time.monotonic() < end:
        found = [pid for pid in _pids() if pid != me and matches(pid)]
        empty = 0 if found else empty + 1
        for pid in found:
            _kill(pid, matches)
        time.sleep(0.01)


def _kill_uid(uid):
    """SIGKILL every process of ``uid`` at once: ``kill(-1)`` sent by a process of that uid is
    one step in the kernel, during which none can fork, whereas a daemon that forks and exits
    can slip between two reads of /proc. The sender is ``/bin/sh``'s builtin ``kill``, not
    Python: the interpreter may live where the uid cannot enter."""
    try:
        subprocess.run(["/bin/sh", "-c", "kill -9 -1"], user=uid, group=uid, extra_groups=[],
                       env={}, cwd="/", stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, timeout=10)
    except (OSError, subprocess.SubprocessError):  # ``_kill_all`` still makes passes
        pass


def _exited(proc):
    """Whether the child has ended, without reaping it: until ``proc.wait()`` its pid, which is
    also its process group's id, cannot go to another process (see ``_stop``)."""
    if not hasattr(os, "waitid"):  # macOS before Python 3.13: poll() reaps
        return proc.poll() is not None
    return os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None


def _stop(proc, uid, members):
    """Kill the child, its process group, every process of ``uid`` (when it has one) and every
    other process ``members`` matches (the uid's: until they are gone); reap it. Returns how
    many processes besides the child were still alive (forks and subprocesses left running)."""
    me = os.getpid()
    left = sum(1 for pid in _pids() if pid not in (me, proc.pid) and members(pid))
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    if uid is not None:
        _kill_uid(uid)
    _kill_all(members)
    proc.wait()
    return left


# --- the sandbox user -----------------------------------------------------------------------

def _ids_mapped():
    """Whether this user namespace has every sandbox uid and gid (a rootless container maps a
    few, and setuid to any other fails)."""
    for name in ("uid_map", "gid_map"):
        try:
            with open(f"/proc/self/{name}") as f:
                extents = [[int(v) for v in line.split()] for line in f if line.strip()]
        except (OSError, ValueError):
            return False
        if not any(first <= UID_BASE and UID_LAST < first + count for first, _, count in extents):
            return False
    return True


def _uids_in_use():
    """Every uid that some process (a zombie too: it still counts for RLIMIT_NPROC) runs as."""
    return {uid for pid in _pids() for uid in (_status(pid) or (b"", ()))[1]}


@contextmanager
def _sandbox_user(limits):
    """The uid (and gid) one submission's children run as, reserved while it is graded, or
    None: not root, ``isolate_uid`` off, or no such uids here. Its children run one after the
    other and each is killed with all it started before the next starts, so they share it. A
    slot whose uid some process still has (an unrelated user, unreaped zombies) is skipped."""
    if not (limits.isolate_uid and os.geteuid() == 0 and _ids_mapped()):
        yield None
        return
    base = UID_BASE + (os.getpid() % PID_SPAN) * UID_SLOTS
    busy = _uids_in_use()
    with _slots_lock:
        slot = next((s for s in range(UID_SLOTS) if s not in _slots_taken and base + s not in busy),
                    None)
        if slot is None:
            raise RuntimeError(f"no free sandbox uid: more than {UID_SLOTS} submissions graded "
                               "at once by one process, or their uids are still in use")
        _slots_taken.add(slot)
    try:
        yield base + slot
    finally:
        with _slots_lock:
            _slots_taken.discard(slot)


def _new_home(workdir, index, uid):
    """A fresh working folder and HOME for child ``index``, with ``out/`` for its replies; mode
    0700, owned by ``uid`` when it has one (no other child can enter)."""
    home = os.path.join(workdir, f"home{index}")
    for path in (home, os.path.join(home, "out")):
        os.mkdir(path, 0o700)
        if uid is not None:
            os.chown(path, uid, uid)
    return home


# --- replies --------------------------------------------------------------------------------

def _tail(path, n):
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - n))
            return f.read().decode("utf-8", "replace").strip()
    except OSError:
        return ""


def _present(out_fd, name):
    """Whether the child has put something named ``name`` in its out folder."""
    try:
        os.stat(name, dir_fd=out_fd, follow_symlinks=False)
        return True
    except OSError:
        return False


def _read_reply(out_fd, name):
    """``(arrays, meta)`` from the reply ``name`` in the child's out folder, or raise ValueError
    when it is not a valid reply. The child wrote it: it may be a link (to another child's
    reply), a FIFO (a read that never returns), huge, or anything else."""
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=out_fd)
    except OSError as exc:
        raise ValueError(f"the reply cannot be opened ({exc})") from exc
    with open(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise ValueError("the reply is not a regular file")
        data = f.read(MAX_REPLY_BYTES + 1)
    if len(data) > MAX_REPLY_BYTES:
        raise ValueError("reply too large")
    try:  # anything can be in it
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except Exception as exc:  # BadZipFile, EOFError, pickled objects refused, ...
        raise ValueError(f"not a valid .npz reply ({type(exc).__name__}: {exc})") from exc
    meta = arrays.pop("__meta__", None)
    if meta is None or meta.dtype.kind != "U" or meta.shape != ():
        raise ValueError("reply without metadata")
    meta = json.loads(str(meta))
    if not isinstance(meta, dict):
        raise ValueError("metadata is not an object")
    return arrays, meta


def _seconds(meta, fallback):
    """The child's measure of a question's calls when it is a finite non-negative number, else
    the parent's own (it polls, so it is coarser)."""
    value = meta.get("seconds")
    if type(value) in (int, float) and math.isfinite(value) and value >= 0:
        return float(value)
    return fallback


def _signatures(meta, functions):
    """The signatures in the load report, for the graded functions only, capped."""
    found = meta.get("signatures")
    if not isinstance(found, dict):
        return {}
    return {name: found[name][:MAX_SIGNATURE] for name in functions
            if isinstance(found.get(name), str)}


def _note_imports(result, meta, when):
    """Add to ``result.integrity`` the refused imports a reply reports (names of blocked modules
    only: the reply is the submission's to forge), once each, at most MAX_INTEGRITY."""
    names = meta.get("blocked_imports")
    for name in names[:20] if isinstance(names, list) else ():
        if not (isinstance(name, str) and len(name) <= 100 and _BLOCKED_NAME.fullmatch(name)):
            continue
        what = REFERENCE_MODULES[".".join(name.split(".")[:2])]
        message = f"tried to import {name} ({what}) {when}"
        if message not in result.integrity and len(result.integrity) < MAX_INTEGRITY:
            result.integrity.append(message)


def _death(rc, timed_out, limits, what, setup):
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
    err = _tail(os.path.join(setup, "stderr.txt"), limits.output_tail)
    if err:
        msg += f"; its last stderr lines: {err[-500:]}"
    return msg


# --- running --------------------------------------------------------------------------------

def run_submission(cells, functions, questions, limits=Limits()):
    """Run ``questions`` (objects with ``name``, ``plan`` and ``inputs``, e.g. ``core.Question``)
    on the notebook ``cells`` (``notebook.extract``); ``functions`` are the graded names.

    Returns a ChildResult. Never raises for anything the submission does.
    """
    result = ChildResult(signatures={name: "" for name in functions})
    with _sandbox_user(limits) as uid:
        workdir = tempfile.mkdtemp(prefix="bnlab-grade-")
        try:
            os.chmod(workdir, 0o711)  # a child reaches its home inside; it cannot list the folder
            setup = os.path.join(workdir, "setup")
            os.mkdir(setup, 0o700)
            os.mkdir(os.path.join(setup, "inputs"))
            with open(os.path.join(setup, "cells.json"), "w") as f:
                json.dump(cells, f)
            for q in questions:
                np.savez(os.path.join(setup, "inputs", q.name + ".npz"), **q.inputs)
            remaining, index = list(questions), 0
            while remaining:
                done = _one_child(workdir, index, uid, functions, remaining, limits, result)
                if done is None:  # loading failed: the same would happen again
                    for q in remaining:
                        result.runs[q.name] = ({}, {}, result.load_errors[-1])
                    break
                remaining, index = remaining[done:], index + 1
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
    return result


def _one_child(workdir, index, uid, functions, questions, limits, result):
    """Run one child on ``questions``; return how many got a result (or None if loading failed)."""
    setup = os.path.join(workdir, "setup")
    home = _new_home(workdir, index, uid)
    cpu = int(limits.load_timeout + limits.question_timeout * len(questions)) + 1
    with open(os.path.join(setup, "plan.json"), "w") as f:
        json.dump(dict(functions=list(functions),
                       questions=[dict(name=q.name, plan=q.plan) for q in questions],
                       out=os.path.join(home, "out"),
                       user=None if uid is None else [uid, uid],
                       limits=dict(memory_bytes=limits.memory_bytes, file_bytes=limits.file_bytes,
                                   cpu_seconds=cpu,
                                   processes=None if uid is None else limits.processes)), f)
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": home, "LANG": "C.UTF-8",
           "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "MPLBACKEND": "Agg", "PYTHONHASHSEED": "0", "PYTHONDONTWRITEBYTECODE": "1"}
    if uid is None:
        env[MARK] = secrets.token_hex(16)
    members = _running_as(uid) if uid is not None else _marked(env[MARK])
    out_fd = os.open(os.path.join(home, "out"), os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    measured = {}
    try:
        with open(os.path.join(setup, "stdout.txt"), "wb") as so, \
                open(os.path.join(setup, "stderr.txt"), "wb") as se:
            proc = subprocess.Popen([sys.executable, "-I", CHILD, setup, REPO_ROOT], cwd=home,
                                    env=env, stdin=subprocess.DEVNULL, stdout=so, stderr=se,
                                    start_new_session=True)
        try:
            timed_out = _watch(proc, out_fd, questions, limits, measured)
        finally:
            result.left_running += _stop(proc, uid, members)
        if not _read_loaded(out_fd, proc.returncode, timed_out, functions, limits, result, setup):
            return None
        count = 0
        for q in questions:
            if not _present(out_fd, q.name + ".npz"):
                break
            count += 1
            _read_answer(out_fd, q, measured.get(q.name, 0.0), result)
        if count < len(questions):  # the child died or was killed during questions[count]
            q = questions[count]
            result.runs[q.name] = ({}, {}, _death(proc.returncode, timed_out, limits,
                                                  f"question {q.name}", setup))
            result.seconds[q.name] = measured.get(q.name, 0.0)
            count += 1
        return count
    finally:
        os.close(out_fd)
        shutil.rmtree(home, ignore_errors=True)


def _watch(proc, out_fd, questions, limits, measured):
    """Wait until the child ends, dies, or runs out of time; return 0, or the limit that ran out.

    Notes in ``measured`` the parent's own measure of each question's time: from the previous
    reply (or the load report) to its reply, or to now for the question under way.
    """
    loaded, current, since = False, 0, time.monotonic()
    while not _exited(proc):
        now = time.monotonic()
        if not loaded and _present(out_fd, "loaded.npz"):
            loaded, since = True, now
        if not loaded:
            if now - since > limits.load_timeout:
                return limits.load_timeout
        else:
            while current < len(questions):
                name = questions[current].name
                measured[name] = now - since
                if not _present(out_fd, name + ".npz"):
                    break
                current, since = current + 1, now
            if current == len(questions):  # all answered: the child is exiting
                if now - since > max(1.0, limits.question_timeout):
                    return 0  # it hangs on the way out: ``_stop`` kills it, the answers stand
            elif now - since > limits.question_timeout:
                return limits.question_timeout
        time.sleep(0.02)
    return 0


def _read_loaded(out_fd, rc, timed_out, functions, limits, result, setup):
    """Read the load report into ``result``; False (and a load error) when there is none."""
    if not _present(out_fd, "loaded.npz"):
        verdict = _death(rc, timed_out, limits, "the notebook's definitions (imports, functions)", setup)
        result.load_errors.append("the notebook could not be loaded: " + verdict)
        return False
    try:
        _, meta = _read_reply(out_fd, "loaded.npz")
        result.missing = [str(m) for m in meta.get("missing", [])][:10]
        result.load_errors = [str(e)[:600] for e in meta.get("errors", [])][:20]
        result.signatures.update(_signatures(meta, functions))
        _note_imports(result, meta, "while loading the notebook")
    except (ValueError, OSError, KeyError, TypeError, AttributeError) as exc:
        result.load_errors.append(f"the child's load report could not be read ({exc})")
        return False
    return True


def _read_answer(out_fd, q, measured, result):
    """Read question ``q``'s reply into ``result``; a reply that is not valid becomes its verdict."""
    result.seconds[q.name] = measured
    try:
        arrays, meta = _read_reply(out_fd, q.name + ".npz")
        kinds = {str(k): str(v)[:200] for k, v in dict(meta.get("kinds") or {}).items()}
        error = meta.get("error")
        if error is not None:
            error = StepError(int(error["step"]), str(error["function"])[:100],
                              str(error["exc_type"])[:100], str(error["message"])[:2000],
                              str(error.get("trace", ""))[:4000])
        result.runs[q.name] = (arrays, kinds, error)
        result.seconds[q.name] = _seconds(meta, measured)
        _note_imports(result, meta, f"during question {q.name}")
    except (ValueError, OSError, KeyError, TypeError, AttributeError) as exc:
        result.runs[q.name] = ({}, {}, f"the outputs could not be read back ({type(exc).__name__}: {exc})")
