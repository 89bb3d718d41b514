"""Read every listed sample of a dataset and collect *all* problems, each naming its file (`taskprompter check-data`).

Nothing is written.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from torch.utils.data import Dataset, Subset

from ..errors import TaskPrompterError
from . import build_dataset
from .cityscapes3d import list_splits as cityscapes3d_splits
from .fileio import list_splits
from .partial import record_path, summary_lines

FORMATS = ("pascal_context", "nyud", "custom", "cityscapes3d")
SPLIT_DIRS = {"pascal_context": ("ImageSets/Context", "PASCALContext/ImageSets/Context"),
              "nyud": ("gt_sets", "NYUDv2/gt_sets"), "custom": ("splits",),
              "cityscapes3d": ("leftImg8bit", "Cityscapes/leftImg8bit")}  # Cityscapes: a folder per split


def find_splits(fmt: str, root: Path) -> list[str]:
    if fmt == "cityscapes3d":
        return cityscapes3d_splits(root)
    for rel in SPLIT_DIRS[fmt]:
        found = list_splits(root / rel)
        if found:
            return found
    return []


def check_dataset(fmt: str, root: Path, splits: Sequence[str] | None = None,
                  tasks: Sequence[str] | None = None) -> tuple[int, list[str]]:
    """Check `splits` (default: all found) of a dataset. Returns (samples checked, problems, each naming a file)."""
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


def labelled_summary(fmt: str, root: Path, splits: Sequence[str] | None = None,
                     tasks: Sequence[str] | None = None) -> list[str]:
    """The record of partial labels the readers use (`partial.py`): its path, then one line per partially labelled
    split (images labelled per task); [] when every split is fully labelled. Splits that cannot be opened are
    left out (`check_dataset` reports them)."""
    lines: list[str] = []
    path = None
    for split in (list(splits) if splits else find_splits(fmt, root)):
        try:
            ds = build_dataset(fmt, root, split, tasks)
        except TaskPrompterError:
            continue
        if ds.labelled is not None:
            path = record_path(ds.root)
            lines += summary_lines({split: ds.labelled}, ds.tasks)
    return [f"partial labels ({path}):", *(f"  {line}" for line in lines)] if lines else []


def header_problems(ds: Dataset, *, shard: tuple[int, int] = (0, 1), threads: int = 8) -> tuple[int, list[str]]:
    """`TaskDataset.check_headers` over every sample of ``ds`` (a reader, or a Subset of one) in ``shard`` (rank,
    world size): (samples checked, problems, each prefixed with split and id). Headers only, so a split of thousands
    takes seconds; the threads overlap file-system latency."""
    base, indices = (ds.dataset, list(ds.indices)) if isinstance(ds, Subset) else (ds, list(range(len(ds))))
    mine = indices[shard[0]::shard[1]]
    with ThreadPoolExecutor(max_workers=threads) as pool:
        found = list(pool.map(base.check_headers, mine))
    return len(mine), [f"[{base.split}] {base.ids[i]}: {m}" for i, problems in zip(mine, found) for m in problems]
