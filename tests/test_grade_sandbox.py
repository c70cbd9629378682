"""The sandbox (``bnlab.grade.sandbox``) on tiny submissions passed straight to ``run_submission``.

Each test is a notebook of one or two cells and questions that call one function each: what the
submission starts is gone when grading returns (with a uid of its own, as root, and without);
with a uid of its own it cannot write the grader's files nor signal it, and a fork bomb ends
with a verdict; the time of each question, the refused imports of the reference and the graded
functions' signatures come back.
"""

from concurrent.futures import ThreadPoolExecutor
import os
import secrets
import shutil
import tempfile
import time
from types import SimpleNamespace

import numpy as np
import pytest

from bnlab.grade import sandbox
from bnlab.grade.driver import StepError
from bnlab.grade.sandbox import Limits, run_submission

LIMITS = Limits(load_timeout=30, question_timeout=2)
ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not ROOT, reason="a uid of its own needs root")
MODES = [pytest.param(True, id="own_uid", marks=needs_root), pytest.param(False, id="same_uid")]


def case(name, function=None):
    """A question calling ``function(x)`` once (``x`` three zeros); returns "y"."""
    plan = {"steps": [{"call": function or name, "args": [{"input": "x"}], "returns": "y"}]}
    return SimpleNamespace(name=name, plan=plan, inputs={"x": np.zeros(3)})


def run(source, names, limits=LIMITS):
    """Grade a one-cell notebook on one question per function name."""
    return run_submission([(1, source)], names, [case(n) for n in names], limits)


def live(pid):
    """Whether ``pid`` is a process that still runs (a zombie only waits to be reaped)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] not in (b"Z", b"X")
    except OSError:
        return False


def running_with(marker):
    """The live processes whose command line contains ``marker``."""
    found = []
    for name in os.listdir("/proc"):
        try:
            with open(f"/proc/{name}/cmdline", "rb") as f:
                if marker.encode() in f.read() and live(int(name)):
                    found.append(int(name))
        except (OSError, ValueError):
            pass
    return found


def running_as(uid):
    return [int(p) for p in os.listdir("/proc")
            if p.isdigit() and live(int(p)) and sandbox._running_as(uid)(int(p))]


LEFTOVERS = '''
import os, subprocess, time
import numpy as np

def daemon(marker):
    """Double fork into a new session, as a daemon does."""
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            os.execvp("sleep", ["sleep", marker])
        os._exit(0)

def spawn(x):
    pid = os.fork()
    if pid == 0:  # a copy of the child itself
        time.sleep(1000)
        os._exit(0)
    subprocess.Popen(["sleep", "{m}1"])
    daemon("{m}2")
    return np.array([pid])

def spawn_hang(x):
    subprocess.Popen(["sleep", "{m}3"])
    daemon("{m}4")
    while True:
        pass

def spawn_crash(x):
    subprocess.Popen(["sleep", "{m}5"])
    daemon("{m}6")
    os._exit(3)
'''


@pytest.mark.parametrize("own_uid", MODES)
def test_nothing_left_running(own_uid):
    marker = f"987.{secrets.randbelow(10**6):06d}"
    started = time.monotonic()
    result = run(LEFTOVERS.replace("{m}", marker), ["spawn", "spawn_hang", "spawn_crash"],
                 Limits(load_timeout=30, question_timeout=2, isolate_uid=own_uid))
    assert time.monotonic() - started < 20
    outputs, _, error = result.runs["spawn"]
    assert error is None
    assert "did not finish within 2 s" in result.runs["spawn_hang"][2]
    assert "exited with status 3" in result.runs["spawn_crash"][2]
    assert not live(int(outputs["s0_y"][0]))
    assert running_with(marker) == []


WHO = '''
import os, signal, sys
import numpy as np

def who(x):
    try:
        os.kill(os.getppid(), 0)  # signal 0: only asks whether a signal would be allowed
        may_signal = 1
    except PermissionError:
        may_signal = 0
    try:
        open(os.path.join(sys.argv[1], "cells.json")).close()  # the grader's copy of the cells
        reads_setup = 1
    except PermissionError:
        reads_setup = 0
    with open(os.path.join(GRADER, "grader.txt")) as f:
        reads_public = int(f.read() == "grader")
    return np.array([os.getuid(), os.getgid(), may_signal, reads_setup, reads_public])

def write(x):
    with open(os.path.join(GRADER, "grader.txt"), "a") as f:
        f.write("student")
    return x

def create(x):
    open(os.path.join(GRADER, "new.txt"), "w").close()
    return x
'''


@needs_root
def test_own_uid_cannot_write_the_graders_files_nor_signal_it():
    folder = tempfile.mkdtemp()  # 0700: only root may enter; the child reads (CAP_DAC_READ_SEARCH)
    try:
        with open(os.path.join(folder, "grader.txt"), "w") as f:
            f.write("grader")
        source = f"GRADER = {folder!r}\n" + WHO
        result = run(source, ["who", "write", "create"])
        outputs, _, error = result.runs["who"]
        assert error is None, error
        uid, gid, may_signal, reads_setup, reads_public = outputs["s0_y"]
        assert uid >= sandbox.UID_BASE and gid == uid
        assert (may_signal, reads_setup, reads_public) == (0, 1, 1)  # reads all (CAP_DAC_READ_SEARCH)
        for name in ("write", "create"):
            error = result.runs[name][2]
            assert isinstance(error, StepError) and error.exc_type == "PermissionError", error
        assert os.listdir(folder) == ["grader.txt"]
        with open(os.path.join(folder, "grader.txt")) as f:
            assert f.read() == "grader"
    finally:
        shutil.rmtree(folder)


@needs_root
def test_concurrent_submissions_get_distinct_uids():
    source = ("import os, time\nimport numpy as np\n"
              "def f(x):\n    time.sleep(0.5)\n    return np.array([os.getuid()])\n")
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda _: run(source, ["f"]), range(2)))
    uids = {int(r.runs["f"][0]["s0_y"][0]) for r in results}
    assert len(uids) == 2 and min(uids) >= sandbox.UID_BASE


BOMB = '''
import os
import numpy as np

def uid(x):
    return np.array([os.getuid()])

def bomb(x):
    while True:
        try:
            os.fork()
        except OSError:
            pass

def after(x):
    return x + 1
'''


@needs_root  # without a uid of its own, RLIMIT_NPROC is not set: the bomb would be real
def test_fork_bomb_ends_with_a_verdict_and_nothing_left():
    result = run(BOMB, ["uid", "bomb", "after"])
    uid = int(result.runs["uid"][0]["s0_y"][0])
    assert "did not finish within 2 s" in result.runs["bomb"][2]
    assert result.runs["after"][2] is None  # a new child carries on
    assert running_as(uid) == []


TIMED = '''
import time
import numpy as np

def slow(x):
    time.sleep(0.3)
    return x

def fast(x):
    return x
'''


def test_seconds_per_question():
    result = run(TIMED, ["slow", "fast"])
    assert 0.3 <= result.seconds["slow"] < 2
    assert 0 <= result.seconds["fast"] < 0.3


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -1.0, "0.5", True, None])
def test_seconds_in_a_reply_that_are_not_a_duration_are_replaced(value):
    assert sandbox._seconds({"seconds": value}, 1.5) == 1.5
    assert sandbox._seconds({"seconds": 0.25}, 1.5) == 0.25


REFERENCE = '''
import importlib
import sys
import numpy as np
import bnlab.numpy

def via_importlib(x):
    try:
        importlib.import_module("bnlab.numpy")
    except ImportError:
        pass
    return x

def via_from(x):
    from bnlab import numpy as reference  # noqa
    return x

def via_attribute(x):
    import bnlab
    reached = [hasattr(bnlab, "numpy"), hasattr(bnlab, "grade"),
               any(m.startswith(("bnlab.numpy", "bnlab.grade")) for m in sys.modules)]
    return np.array(reached)

def grader(x):
    try:
        from bnlab.grade import lab01  # noqa
    except ImportError:
        pass
    return x

def around_the_blocker(x):
    sys.meta_path[:] = [f for f in sys.meta_path if type(f).__name__ != "_BlockReference"]
    import bnlab.numpy  # noqa
    return x
'''


def test_integrity_records_imports_of_the_reference():
    names = ["via_importlib", "via_from", "via_attribute", "grader", "around_the_blocker"]
    result = run(REFERENCE, names)
    assert any("bnlab.numpy cannot be imported" in e for e in result.load_errors), result.load_errors
    error = result.runs["via_from"][2]
    assert isinstance(error, StepError) and error.exc_type == "ImportError", error
    assert result.runs["via_attribute"][0]["s0_y"].tolist() == [False, False, False]
    reference = "tried to import bnlab.numpy (the reference implementation)"
    assert result.integrity == [
        f"{reference} while loading the notebook",
        f"{reference} during question via_importlib",
        f"{reference} during question via_from",
        "tried to import bnlab.grade (the grader) during question grader",
        f"{reference} during question around_the_blocker"]


def test_integrity_keeps_only_blocked_names_once_each():
    result = sandbox.ChildResult()
    forged = ["os", "bnlab.numpy; rm -rf /", 3, "bnlab.numpyx"] + [f"bnlab.grade.m{i}" for i in range(30)]
    sandbox._note_imports(result, {"blocked_imports": forged + forged}, "during question q")
    assert len(result.integrity) == sandbox.MAX_INTEGRITY
    assert result.integrity[0] == "tried to import bnlab.grade.m0 (the grader) during question q"
    sandbox._note_imports(result, {"blocked_imports": "bnlab.numpy"}, "while loading the notebook")
    assert len(result.integrity) == sandbox.MAX_INTEGRITY


SIGNATURES = '''
import numpy as np

def plain(x, eps=1e-5):
    return x

class RaisesMeta(type):
    @property
    def __signature__(cls):
        raise RuntimeError("no")

class HangsMeta(type):
    @property
    def __signature__(cls):
        while True:
            pass

class raises(metaclass=RaisesMeta):
    def __init__(self, x):
        pass

class hangs(metaclass=HangsMeta):
    def __init__(self, x):
        pass

def long(%s):
    return x
''' % ", ".join(["x"] + [f"argument_with_a_long_name_{i}=None" for i in range(20)])


def test_signatures():
    names = ["plain", "raises", "hangs", "long", "absent"]
    result = run_submission([(1, SIGNATURES)], names, [case("plain")], LIMITS)
    assert result.missing == ["absent"]
    assert result.runs["plain"][2] is None
    assert result.signatures["plain"] == "(x, eps=1e-05)"
    assert result.signatures["raises"] == result.signatures["hangs"] == result.signatures["absent"] == ""
    assert len(result.signatures["long"]) == sandbox.MAX_SIGNATURE
    assert result.signatures["long"].startswith("(x, argument_with_a_long_name_0=None")


FORGED = '''
import os
import numpy as np

def link(x):
    os.symlink("/etc/passwd", "out/link.npz")
    os._exit(0)

def fifo(x):
    os.mkfifo("out/fifo.npz")
    os._exit(0)
'''


@pytest.mark.parametrize("name", ["link", "fifo"])
def test_reply_that_is_not_a_file_is_a_verdict(name):
    """A link could point at another child's reply; opening a FIFO would never return."""
    result = run(FORGED, [name])
    assert "could not be read back" in result.runs[name][2]
