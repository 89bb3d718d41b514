"""Datasets: the released PASCAL-Context and NYUD-v2 trees, your own folder format, and a synthetic generator.

    from taskprompter.data import build_dataset, collate, seeded
    from taskprompter.data.transforms import train_transform, eval_transform

    train = seeded(build_dataset("nyud", root, "train", ["semseg", "depth"], transform=train_transform((448, 576),
                                 ["semseg", "depth"])), seed=0)
    batch = collate([train[0], train[1]])   # {"image": (2, 3, H, W), "semseg": (2, H, W), ..., "meta": [...]}

Readers never write into the dataset folder and raise `DataError` naming the file for every problem;
`taskprompter check-data` reports all problems of a split at once. Formats: docs/data.md.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..tasks import DATASET_SPECS
from .base import TaskDataset, Transform
from .cityscapes3d import Cityscapes3D
from .custom import CustomDataset
from .nyud import NYUD
from .pascal_context import PascalContext
from .sample import collate, to_tensors
from .sampling import SeededDataset, epoch_order, seeded

# Output channels per task of each released format, a view of the table `tasks.DATASET_SPECS` (custom datasets:
# `CustomDataset(...).task_channels`).
DATASET_TASKS: dict[str, dict[str, int]] = {name: dict(spec.tasks) for name, spec in DATASET_SPECS.items()}


def build_dataset(format: str, root: str | Path, split: str, tasks: Sequence[str] | None,
                  transform: Transform | None = None, *, edge_protocol: str = "train",
                  options: Mapping[str, Any] | None = None) -> TaskDataset:
    """The reader of `format` for `root` / `split` with the enabled `tasks` (None: every task of the format).
    ``edge_protocol="seism"`` gives the boundary ground truth of the published evaluation as the edge target
    instead of the training labels (``boundaries.py``). ``options``: the reader's own keyword options (config
    ``data.reader_options``, e.g. Cityscapes-3D's ``euler``); one it does not take is a ConfigError naming it.
    Every reader takes ``labelled_tasks`` (config ``data.labelled_tasks``, default "auto"): which tasks each sample
    is labelled for (`partial.py`)."""
    if format not in DATASETS:
        raise ConfigError(f"unknown dataset format {format!r}; choose one of {list(DATASETS)}")
    if tasks is None and format in DATASET_SPECS:
        tasks = list(DATASET_SPECS[format].tasks)
    reader = DATASETS[format]
    options = dict(options or {})
    if options:
        known = [n for n, p in inspect.signature(reader).parameters.items() if p.kind is p.KEYWORD_ONLY]
        unknown = sorted(set(options) - set(known))
        if unknown:
            own = [n for n in known if n != "labelled_tasks"]  # set by data.labelled_tasks
            raise ConfigError(f"data.reader_options {unknown} are not options of the {format} reader; it takes "
                              f"{own or 'none'}")
    return reader(root, split, tasks, transform=transform, edge_protocol=edge_protocol, **options)


DATASETS: dict[str, Callable[..., TaskDataset]] = {
    "pascal_context": PascalContext,
    "nyud": NYUD,
    "custom": CustomDataset,
    "cityscapes3d": Cityscapes3D,
}

__all__ = [
    "DATASETS", "DATASET_TASKS", "NYUD", "Cityscapes3D", "CustomDataset", "PascalContext", "SeededDataset",
    "TaskDataset", "build_dataset", "collate", "epoch_order", "seeded", "to_tensors",
]  # fmt: skip
