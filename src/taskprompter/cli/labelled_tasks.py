"""`taskprompter labelled-tasks`: import or show the record of partially labelled data (`<root>/labelled_tasks.json`).

    taskprompter labelled-tasks import --from mtpsl onelabel.pth --root data/NYUDv2 --format nyud [--split train]
    taskprompter labelled-tasks show --root data/NYUDv2 [--format nyud]

`import` converts an MTPSL / DiffusionMTL split file (docs/data.md, "Partially labelled data") into the record of
``--split`` and writes it into the dataset folder (other splits of an existing record are kept; replacing the same
split needs ``--force``). `show` prints, per split of the record, how many images are labelled for each task.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..data import build_dataset
from ..data.check import FORMATS
from ..data.partial import (
    MTPSL_COLUMNS,
    TASK_ALIASES,
    check_split_record,
    import_mtpsl,
    load_mtpsl_file,
    read_labelled_tasks,
    record_path,
    summary_lines,
    write_labelled_tasks,
)
from ..errors import ConfigError, DataError
from ..tasks import TASK_ORDER

SOURCES = ("mtpsl",)  # MTPSL and the DiffusionMTL line of code share the format


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", metavar="ACTION")
    actions.required = True
    imp = actions.add_parser("import", help="convert a split file of another code base into labelled_tasks.json")
    imp.add_argument("--from", dest="source", required=True, choices=SOURCES, help="the code base the file is from")
    imp.add_argument("file", type=Path, help="the split file (.pth, .npy or .json)")
    imp.add_argument("--root", required=True, type=Path, help="dataset folder (the record is written there)")
    imp.add_argument("--format", required=True, choices=FORMATS, help="dataset layout")
    imp.add_argument("--split", default="train", help="the split the file describes (default train)")
    imp.add_argument("--tasks", nargs="+", default=None,
                     help="the file's task columns in order (default: nyud semseg depth normals; pascal_context "
                          "semseg human_parts sal normals edge)")
    imp.add_argument("--allow-pickle", action="store_true",
                     help="allow files that only Python's pickle reads (it can run code: trusted files only)")
    imp.add_argument("--force", action="store_true", help="replace the split if the record already has it")
    show = actions.add_parser("show", help="per split of the record: images labelled for each task")
    show.add_argument("--root", required=True, type=Path, help="dataset folder")
    show.add_argument("--format", choices=FORMATS, default=None,
                      help="dataset layout: also checks the record against the splits' ids")


def _columns(args: argparse.Namespace) -> list[str]:
    if args.tasks is None:
        if args.format not in MTPSL_COLUMNS:
            raise ConfigError(f"--tasks: name the file's task columns in order ({args.format} has no MTPSL default)")
        return list(MTPSL_COLUMNS[args.format])
    columns = [TASK_ALIASES.get(t, t) for t in args.tasks]
    unknown = [t for t in columns if t not in TASK_ORDER]
    if unknown:
        raise ConfigError(f"--tasks: unknown task(s) {unknown}; known tasks are {list(TASK_ORDER)}")
    return columns


def run_import(args: argparse.Namespace) -> int:
    ds = build_dataset(args.format, args.root, args.split, None, options={"labelled_tasks": "all"})
    columns = _columns(args)
    missing = [t for t in columns if t not in ds.task_channels]
    if missing:
        raise ConfigError(f"--tasks: {args.format} at {ds.root} has no task(s) {missing}; it has "
                          f"{list(ds.task_channels)}")
    record = import_mtpsl(load_mtpsl_file(args.file, allow_pickle=args.allow_pickle), ids=ds.ids, columns=columns,
                          source=str(args.file))
    check_split_record(record, ds.ids, split=args.split, source=str(args.file))
    stray = sorted({t for v in record.values() for t in v} - set(ds.task_channels))
    if stray:
        raise DataError(f"{args.file}: task(s) {stray} are not tasks of {args.format} ({list(ds.task_channels)})")
    target = record_path(ds.root)
    splits = read_labelled_tasks(target, tasks=ds.task_channels) if target.is_file() else {}
    if args.split in splits and not args.force:
        raise DataError(f"{target} already has split {args.split!r}; pass --force to replace it")
    splits[args.split] = record
    write_labelled_tasks(target, splits)
    print(f"labelled-tasks: wrote split {args.split!r} ({len(record)} images) from {args.file} to {target}")
    for line in summary_lines({args.split: record}, ds.task_channels):
        print(f"  {line}")
    return 0


def run_show(args: argparse.Namespace) -> int:
    if args.format is None:
        path = record_path(args.root)
        splits = read_labelled_tasks(path)
        tasks = [t for t in TASK_ORDER if any(t in v for record in splits.values() for v in record.values())]
    else:  # through the readers: the record is found where they look and checked against every split's ids
        probe = build_dataset(args.format, args.root, _any_split(args), None, options={"labelled_tasks": "all"})
        path = record_path(probe.root)
        splits = {split: build_dataset(args.format, args.root, split, None,
                                       options={"labelled_tasks": path}).labelled or {}
                  for split in read_labelled_tasks(path, tasks=probe.task_channels)}
        tasks = list(probe.task_channels)
    print(f"labelled-tasks: {path}")
    for line in summary_lines(splits, tasks):
        print(f"  {line}")
    if not splits:
        print("  no split listed: every split is fully labelled")
    return 0


def _any_split(args: argparse.Namespace) -> str:
    from ..data.check import find_splits

    found = find_splits(args.format, args.root.expanduser())
    if not found:
        raise DataError(f"{args.root}: no split of a {args.format} tree found")
    return found[0]


def run(args: argparse.Namespace) -> int:
    return run_import(args) if args.action == "import" else run_show(args)
