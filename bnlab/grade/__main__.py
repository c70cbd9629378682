"""``python -m bnlab.grade LAB NOTEBOOK [NOTEBOOK ...] [--report DIR]``

Prints a per-question table for each notebook; with ``--report DIR`` also writes one JSON per
notebook (top-level ``score`` and ``max_score``, per-question ``tests``) and ``summary.csv``.
Exit status: 0 when grading finished, whatever the scores; 1 for a usage error; 2 when the
grader itself failed on some notebook (a bug to report; that notebook's status is
``grader_error``).
"""

import argparse
import sys

from bnlab.grade import LABS
from bnlab.grade.grader import format_table, grade_notebooks, write_reports
from bnlab.grade.sandbox import Limits


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m bnlab.grade", description=__doc__.split("\n\n")[1])
    parser.add_argument("lab", choices=LABS, help="lab id, e.g. lab01")
    parser.add_argument("notebooks", nargs="+", metavar="NOTEBOOK", help="submitted .ipynb files")
    parser.add_argument("--report", metavar="DIR", help="write <notebook>.json and summary.csv here")
    parser.add_argument("--timeout", type=float, default=Limits.question_timeout,
                        help="wall-clock seconds per question (default %(default)s)")
    parser.add_argument("--load-timeout", type=float, default=Limits.load_timeout,
                        help="wall-clock seconds to load a notebook's definitions (default %(default)s)")
    parser.add_argument("--memory-mb", type=int, default=Limits.memory_bytes >> 20,
                        help="address-space limit of the child process in MiB (default %(default)s)")
    parser.add_argument("--jobs", type=int, default=1,
                        help="notebooks graded at the same time (default %(default)s)")
    args = parser.parse_args(argv)
    limits = Limits(load_timeout=args.load_timeout, question_timeout=args.timeout,
                    memory_bytes=args.memory_mb << 20)
    reports = grade_notebooks(args.lab, args.notebooks, limits, jobs=args.jobs)
    for report in reports:
        print(format_table(report))
    if args.report:
        for path in write_reports(reports, args.report):
            print(f"wrote {path}")
    return 2 if any(r.status == "grader_error" for r in reports) else 0


if __name__ == "__main__":
    sys.exit(main())
