"""`taskprompter check-data`: read every listed sample of a dataset and report *all* problems, each naming its file.

Exit status 0 with a one-line summary when clean; 1 after listing every problem otherwise. Nothing is written.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from ..errors import TaskPrompterError
from ..tasks import TASK_ORDER
from .fileio import list_splits

FORMATS = ("pascal_context", "nyud", "custom")
SPLIT_DIRS = {"pascal_context": ("ImageSets/Context", "PASCALContext/ImageSets/Context"),
              "nyud": ("gt_sets", "NYUDv2/gt_sets"), "custom": ("splits",)}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--format", required=True, choices=FORMATS, help="dataset layout")
    parser.add_argument("--root", required=True, type=Path, help="dataset folder")
    parser.add_argument("--split", action="append", default=None,
                        help="split to check (repeatable); default: every split file found")
    parser.add_argument("--tasks", nargs="+", choices=TASK_ORDER, default=None,
                        help="tasks to check; default: every task of the format")
    parser.add_argument("--max-print", type=int, default=200, help="print at most this many problems (all counted)")


def find_splits(fmt: str, root: Path) -> list[str]:
    for rel in SPLIT_DIRS[fmt]:
        found = list_splits(root / rel)
        if found:
            return found
    return []


def check_dataset(fmt: str, root: Path, splits: Sequence[str] | None = None,
                  tasks: Sequence[str] | None = None) -> tuple[int, list[str]]:
    """Check `splits` (default: all found) of a dataset. Returns (samples checked, problems, each naming a file)."""
    from . import build_dataset

    problems: list[str] = []
    checked = 0
    if not root.is_dir():
        return 0, [f"dataset root {root} does not exist or is not a folder"]
    splits = list(splits) if splits else find_splits(fmt, root)
    if not splits:
        return 0, [f"{root}: no split files found (looked in {', '.join(str(root / d) for d in SPLIT_DIRS[fmt])})"]
    for split in splits:
        try:
            ds = build_dataset(fmt, root, split, tasks)
        except TaskPrompterError as err:
            problems.append(f"[{split}] {err}")
            continue
        seen: dict[str, int] = {}
        for index, sample_id in enumerate(ds.ids):
            if sample_id in seen:
                problems.append(f"[{split}] id {sample_id!r} is listed twice (lines {seen[sample_id] + 1} and "
                                f"{index + 1})")
                continue
            seen[sample_id] = index
            for message in dict.fromkeys(ds.problems(index)):  # de-duplicated, in order
                problems.append(f"[{split}] {sample_id}: {message}")
            checked += 1
    return checked, problems


def run(args: argparse.Namespace) -> int:
    checked, problems = check_dataset(args.format, args.root, args.split, args.tasks)
    for line in problems[: args.max_print]:
        print(line)
    if len(problems) > args.max_print:
        print(f"... and {len(problems) - args.max_print} more")
    if problems:
        print(f"check-data: {len(problems)} problem(s) in {args.root} ({checked} sample(s) read)", file=sys.stderr)
        return 1
    print(f"check-data: {checked} sample(s) of {args.format} at {args.root} OK")
    return 0
