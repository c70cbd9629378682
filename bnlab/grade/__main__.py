"""``python -m bnlab.grade LAB PATH [PATH ...] [--report DIR] [--public | --hidden-seed N]``

Grades notebooks (PATHs are notebooks or folders of them) in parallel, with a progress bar on
stderr. Prints each notebook's score per question (one notebook: its whole feedback); with
``--report DIR`` writes, per notebook, ``NAME.json`` (per question and per test case: status,
points, feedback, time) and ``NAME.txt`` (the feedback to hand back), and the class's
``summary.csv``.

Students, before they submit: ``--public`` grades the public cases only. Instructors: the
default adds the hidden cases, whose inputs come from ``--hidden-seed`` (or the environment
variable ``BNLAB_HIDDEN_SEED``): pick your own secret number, or students who read bnlab's
source can know the hidden inputs.

Exit status: 0 when grading finished, whatever the scores; 2 for a usage error; 3 when the
grader itself failed on some notebook (a bug to report; that notebook's status is
``grader_error``, the others are graded).
"""

import argparse
import os
import sys

from bnlab.grade import LABS, lab_module
from bnlab.grade.grader import find_notebooks, format_feedback, format_table, grade_notebooks, write_reports
from bnlab.grade.sandbox import Limits


def _parser():
    parser = argparse.ArgumentParser(prog="python -m bnlab.grade", description=__doc__.split("\n\n")[1])
    parser.add_argument("lab", choices=LABS, help="lab id, e.g. lab01")
    parser.add_argument("paths", nargs="+", metavar="PATH", help="submitted .ipynb files or folders of them")
    parser.add_argument("--report", metavar="DIR", help="write NAME.json, NAME.txt and summary.csv here")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--public", action="store_true",
                       help="the public cases only (what students run before they submit)")
    which.add_argument("--hidden-seed", type=int, metavar="N",
                       help="the instructor's secret seed for the hidden cases "
                            "(default: $BNLAB_HIDDEN_SEED, else the lab's published default)")
    parser.add_argument("--jobs", type=int, default=len(os.sched_getaffinity(0)),
                        help="notebooks graded at the same time (default: the cores, %(default)s)")
    parser.add_argument("--timeout", type=float, default=Limits.question_timeout,
                        help="wall-clock seconds per test case (default %(default)s)")
    parser.add_argument("--load-timeout", type=float, default=Limits.load_timeout,
                        help="wall-clock seconds to load a notebook's definitions (default %(default)s)")
    parser.add_argument("--memory-mb", type=int, default=Limits.memory_bytes >> 20,
                        help="address-space limit of the child process in MiB (default %(default)s)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def hidden_seed(args):
    """None for a student's run (--public); else the instructor's seed, or the lab's default."""
    if args.public:
        return None
    if args.hidden_seed is not None:
        return args.hidden_seed
    env = os.environ.get("BNLAB_HIDDEN_SEED", "").strip()
    if env:
        try:
            return int(env)
        except ValueError:
            sys.exit(f"BNLAB_HIDDEN_SEED must be an integer, got {env!r}")
    print(f"note: hidden cases use {args.lab}'s published default seed; for a graded class pass "
          "--hidden-seed N (or set BNLAB_HIDDEN_SEED) with a secret number of yours", file=sys.stderr)
    return lab_module(args.lab).HIDDEN_SEED


def _snapshot(directory):
    """``{name: (size, mtime)}`` of the files in ``directory`` (to see what appears in it)."""
    if not directory or not os.path.isdir(directory):
        return {}
    out = {}
    for entry in os.scandir(directory):
        st = entry.stat(follow_symlinks=False)
        out[entry.name] = (st.st_size, st.st_mtime_ns)
    return out


def main(argv=None):
    args = _parser().parse_args(argv)
    paths = find_notebooks(args.paths)
    if not paths:
        print(f"no notebooks (*.ipynb) found in {', '.join(args.paths)}", file=sys.stderr)
        return 2
    limits = Limits(load_timeout=args.load_timeout, question_timeout=args.timeout,
                    memory_bytes=args.memory_mb << 20)
    seed = hidden_seed(args)
    before = _snapshot(args.report)
    reports = grade_notebooks(args.lab, paths, limits, jobs=args.jobs, hidden_seed=seed,
                              progress=None if args.no_progress else sys.stderr)
    for report in reports:
        print(format_feedback(report) if len(reports) == 1 else format_table(report))
    if args.report:
        changed = sorted(n for n, v in _snapshot(args.report).items() if before.get(n) != v)
        written = write_reports(reports, args.report)
        print(f"wrote {len(written)} files to {args.report} (one .json and one .txt per notebook, summary.csv)")
        ours = {os.path.basename(p) for p in written}
        stray = [n for n in changed if n not in ours]
        if stray:  # written by a submission while it ran: ours replaced any report it forged
            print(f"warning: files appeared in {args.report} during grading that the grader did "
                  f"not write: {', '.join(stray)}", file=sys.stderr)
    errors = sum(r.status == "grader_error" for r in reports)
    flagged = sum(bool(r.integrity) for r in reports)
    print(f"graded {len(reports)} notebook(s): {sum(r.status == 'graded' for r in reports)} graded, "
          f"{sum(r.status == 'unreadable' for r in reports)} unreadable, {errors} grader errors, "
          f"{flagged} flagged for integrity")
    return 3 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
