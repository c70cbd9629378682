"""Throughput of the autograder on a class: ``python tests/class_throughput.py [N]`` (``make
grade-bench``) writes N lab-1 submissions to a temporary folder (the master solution and the
catalog's classic mistakes, in turn: ``tests/catalog.py``), grades the folder with the real
command an instructor runs, ``python -m bnlab.grade lab01 FOLDER --report DIR --hidden-seed S``,
on every core, and prints the wall time. A measurement, not a test: nothing asserts a time.
"""

import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import catalog  # noqa: E402  (tests/ is not a package)


def build_class(folder, n):
    """N notebooks: the solution, then each lab-1 catalog entry, round and round."""
    entries = [None] + list(catalog.of("lab01").values())
    for i in range(n):
        entry = entries[i % len(entries)]
        name = f"student{i:03d}"
        if entry is None:
            shutil.copy(catalog.SOLUTIONS["lab01"], os.path.join(folder, name + ".ipynb"))
        else:
            path = entry.submission(pathlib.Path(folder))
            os.replace(path, os.path.join(folder, name + ".ipynb"))


def main(n=100):
    tmp = tempfile.mkdtemp(prefix="bnlab-class-")
    try:
        folder, reports = os.path.join(tmp, "submissions"), os.path.join(tmp, "reports")
        os.mkdir(folder)
        build_class(folder, n)
        cores = len(os.sched_getaffinity(0))
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "bnlab.grade", "lab01", folder, "--report", reports,
                               "--hidden-seed", "31337", "--no-progress"], capture_output=True, text=True)
        wall = time.perf_counter() - start
        print(proc.stdout.splitlines()[-1] if proc.stdout else proc.stderr[-2000:])
        print(f"graded {n} lab-1 submissions in {wall:.1f} s wall on {cores} cores "
              f"({wall / n:.2f} s per submission); exit status {proc.returncode}")
        return proc.returncode
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main(int(sys.argv[1]) if len(sys.argv) > 1 else 100))
