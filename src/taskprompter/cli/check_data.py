"""`taskprompter check-data`: read every listed sample of a dataset and report *all* problems, each naming its file.

Exit status 0 with a one-line summary when clean; 1 after listing every problem otherwise. Nothing is written.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..data.check import FORMATS, check_dataset, labelled_summary
from ..tasks import TASK_ORDER


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--format", required=True, choices=FORMATS, help="dataset layout")
    parser.add_argument("--root", required=True, type=Path, help="dataset folder")
    parser.add_argument("--split", action="append", default=None,
                        help="split to check (repeatable); default: every split file found")
    parser.add_argument("--tasks", nargs="+", choices=TASK_ORDER, default=None,
                        help="tasks to check; default: every task of the format")
    parser.add_argument("--max-print", type=int, default=200, help="print at most this many problems (all counted)")


def run(args: argparse.Namespace) -> int:
    checked, problems = check_dataset(args.format, args.root, args.split, args.tasks)
    for line in labelled_summary(args.format, args.root, args.split, args.tasks):
        print(line)
    for line in problems[: args.max_print]:
        print(line)
    if len(problems) > args.max_print:
        print(f"... and {len(problems) - args.max_print} more")
    if problems:
        print(f"check-data: {len(problems)} problem(s) in {args.root} ({checked} sample(s) read)", file=sys.stderr)
        return 1
    print(f"check-data: {checked} sample(s) of {args.format} at {args.root} OK")
    return 0
