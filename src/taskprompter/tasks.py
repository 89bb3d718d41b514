"""THE table of task and dataset conventions: every part of the library (model, losses, readers, meters, trainer,
Delta_m, figures) reads these entries instead of keeping its own copy.

- `TASKS`: the six dense tasks -- kind, released loss weight, table name, and the primary metric that ranks
  checkpoints and enters Delta_m.
- `LOWER_IS_BETTER` / `higher_is_better`: the direction of every metric name the meters report.
- `DATASET_SPECS`: per dataset, the tasks with their output channels, class names and palettes, and the boundary
  tolerance. Adding a dataset means adding one entry here (and its reader in `taskprompter.data`).
- `IGNORE_INDEX`: the label value that every reader writes for "not labelled" (class tasks, saliency, edges).

Tasks are always ordered as the released code orders them -- semseg, depth, human_parts, sal, normals, edge,
3ddet -- filtered to the enabled ones; prompt t belongs to the t-th task in that order.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np

from .errors import ConfigError
from .label_sets import (
    CITYSCAPES3D_DET_CLASSES,
    CITYSCAPES_CLASSES,
    CITYSCAPES_PALETTE,
    NYU40_CLASSES,
    NYU40_PALETTE,
    PART_NAMES,
    PART_PALETTE,
    VOC_CLASSES,
    VOC_PALETTE,
)

IGNORE_INDEX = 255

# Metric names (meters' compute() keys) that are errors, so lower is better: depth rmse / log_rmse / abs_rel /
# sq_rel, normals mean / median / rmse (degrees). Every other metric (mIoU, pixel_acc, iou_*, delta*, within_*,
# maxF*, odsF, oisF, ap) is a score.
LOWER_IS_BETTER: frozenset[str] = frozenset({"rmse", "log_rmse", "abs_rel", "sq_rel", "mean", "median"})


def higher_is_better(metric: str) -> bool:
    """The direction of a metric name as the meters report it (used by Delta_m and the best checkpoint)."""
    return metric not in LOWER_IS_BETTER


@dataclass(frozen=True)
class TaskSpec:
    name: str
    kind: str  # "classify" (per-pixel classes), "regress" (continuous values), "binary" (one logit),
    #            "detect" (3-D boxes: the model returns its decoded feature maps; head, loss and mDS: issue 14)
    loss_weight: float  # released multi-task loss weight
    pretty: str  # name used in tables (the paper's column headers)
    primary: str  # the metric that ranks checkpoints and enters Delta_m (the paper's table column)
    channels: int | None = None  # output channels fixed by the task itself; None: the dataset's class count

    @property
    def higher_is_better(self) -> bool:
        return higher_is_better(self.primary)


@dataclass(frozen=True, eq=False)  # compared by identity: its palettes are arrays
class DatasetSpec:
    """One dataset's conventions. Class tasks without an entry in `class_names` and `palettes` (the same keys) get
    generic names ("class i") and the VOC colour map."""

    name: str
    tasks: dict[str, int]  # output channels per task, in the released task order
    class_names: dict[str, tuple[str, ...]]  # per class task, one name per channel (class id order)
    palettes: dict[str, np.ndarray]  # per class task, (channels, 3) uint8 colours
    boundary_max_dist: float  # edge matching tolerance, a fraction of the image diagonal
    depth_name: str = "depth"  # what the depth task holds: "depth" (metres, 0 = invalid) or "disparity" (pixels,
    #                            -1 = invalid, 0 a valid disparity: the released Cityscapes-3D encoding)
    pipeline: str = "crop"  # input pipeline: "crop" (released PASCAL/NYUD: scale, crop, flip, photometric; eval pads)
    #                         or "resize" (released Cityscapes-3D: image resized to data.size, no augmentation)
    label_scale: float = 1.0  # label maps' size / the input size (Cityscapes-3D: 0.5, 512x1024 for 1024x2048)
    loss_weights: Mapping[str, float] = field(default_factory=dict)  # released weights that differ from TASKS'

    def __post_init__(self) -> None:
        """Fail at import on an inconsistent entry, naming it."""
        if list(self.tasks) != ordered_tasks(self.tasks):
            raise ConfigError(f"dataset {self.name!r}: tasks {list(self.tasks)} are not in the order {TASK_ORDER}")
        fixed = {t: c for t, c in self.tasks.items() if TASKS[t].channels not in (None, c)}
        if fixed:
            raise ConfigError(f"dataset {self.name!r}: channels {fixed} differ from the tasks' own "
                              f"{ {t: TASKS[t].channels for t in fixed} }")
        if set(self.class_names) != set(self.palettes):
            raise ConfigError(f"dataset {self.name!r}: class names for {sorted(self.class_names)} but palettes for "
                              f"{sorted(self.palettes)}")
        for what, table in (("class names", self.class_names), ("palette", self.palettes)):
            for task, values in table.items():
                if len(values) != self.tasks.get(task):
                    raise ConfigError(f"dataset {self.name!r}: {len(values)} {what} for {task!r}, which has "
                                      f"{self.tasks.get(task)} channels")


TASKS: dict[str, TaskSpec] = {
    "semseg": TaskSpec("semseg", "classify", 1.0, "Semseg", "mIoU"),
    "depth": TaskSpec("depth", "regress", 1.0, "Depth", "rmse", channels=1),
    "human_parts": TaskSpec("human_parts", "classify", 2.0, "Parsing", "mIoU"),
    "sal": TaskSpec("sal", "classify", 5.0, "Saliency", "maxF", channels=2),  # background / salient
    "normals": TaskSpec("normals", "regress", 10.0, "Normal", "mean", channels=3),
    "edge": TaskSpec("edge", "binary", 50.0, "Boundary", "odsF", channels=1),
    # monocular 3-D detection of Cityscapes-3D (the Swin-B system); channels = detection classes
    "3ddet": TaskSpec("3ddet", "detect", 1.0, "3D Det", "mDS"),
}
DENSE_TASKS: tuple[str, ...] = tuple(t for t, spec in TASKS.items() if spec.kind != "detect")
TASK_ORDER: tuple[str, ...] = tuple(TASKS)


def check_task_names(names: Iterable[str]) -> None:
    """Raise a ConfigError naming every unknown task."""
    unknown = [n for n in names if n not in TASKS]
    if unknown:
        raise ConfigError(f"unknown task(s) {unknown}; known tasks are {list(TASK_ORDER)}")


def ordered_tasks(tasks: Mapping[str, int] | Iterable[str]) -> list[str]:
    """The enabled task names in the canonical (released-code) order."""
    names = list(tasks)
    check_task_names(names)
    return [t for t in TASK_ORDER if t in names]


def dataset_with_classes(task: str, num_classes: int) -> DatasetSpec | None:
    """The first dataset whose `task` has `num_classes` named classes, or None. Pictures of a model's outputs (or
    of a custom dataset) find class names and colours this way, from the class count alone."""
    return next((spec for spec in DATASET_SPECS.values() if len(spec.class_names.get(task, ())) == num_classes), None)


def dataset_of(task_channels: Mapping[str, int]) -> DatasetSpec | None:
    """The dataset whose label sets a model with these outputs was made for: the first entry that has every task
    with the same channels and shares a class task with it (e.g. semseg 19 + depth: Cityscapes-3D, so depth is
    disparity), or None (the figures then use the generic conventions)."""
    for spec in DATASET_SPECS.values():
        same = all(spec.tasks.get(t) == c for t, c in task_channels.items())
        if same and any(spec.class_names.get(t) for t in task_channels):
            return spec
    return None


# Released protocol (released-code.md sections 1 and 7): output channels per task and boundary tolerance.
DATASET_SPECS: dict[str, DatasetSpec] = {
    "pascal_context": DatasetSpec(
        name="pascal_context",
        tasks={"semseg": 21, "human_parts": 7, "sal": 2, "normals": 3, "edge": 1},
        class_names={"semseg": VOC_CLASSES, "human_parts": PART_NAMES},
        palettes={"semseg": VOC_PALETTE, "human_parts": PART_PALETTE},
        boundary_max_dist=0.0075,
    ),
    "nyud": DatasetSpec(
        name="nyud",
        tasks={"semseg": 40, "depth": 1, "normals": 3, "edge": 1},
        class_names={"semseg": NYU40_CLASSES},
        palettes={"semseg": NYU40_PALETTE},
        boundary_max_dist=0.011,
    ),
    # Cityscapes-3D as the released Swin-B TaskPrompter trains on it (swin-cityscapes3d.md section 2): 19 train
    # ids, disparity in full-resolution pixels, six detection classes
    "cityscapes3d": DatasetSpec(
        name="cityscapes3d",
        tasks={"semseg": 19, "depth": 1, "3ddet": 6},
        class_names={"semseg": CITYSCAPES_CLASSES, "3ddet": CITYSCAPES3D_DET_CLASSES},
        palettes={"semseg": CITYSCAPES_PALETTE, "3ddet": CITYSCAPES_PALETTE[[13, 14, 15, 16, 17, 18]]},
        boundary_max_dist=0.0075,  # unused: no boundary task
        depth_name="disparity",
        pipeline="resize",
        label_scale=0.5,
        loss_weights={"semseg": 100.0, "depth": 1.0, "3ddet": 1.0},
    ),
}

# Views of the table under their older names (the model presets read these).
PASCAL_CONTEXT_TASKS: dict[str, int] = DATASET_SPECS["pascal_context"].tasks
NYUD_TASKS: dict[str, int] = DATASET_SPECS["nyud"].tasks
CITYSCAPES3D_TASKS: dict[str, int] = DATASET_SPECS["cityscapes3d"].tasks
