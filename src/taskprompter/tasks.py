"""The six dense tasks: one table that every part of the library reads (model, losses, meters, data).

Tasks are always ordered as the released code orders them -- semseg, depth, human_parts, sal, normals,
edge -- filtered to the enabled ones; prompt t belongs to the t-th task in that order.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from .errors import ConfigError

IGNORE_INDEX = 255


@dataclass(frozen=True)
class TaskSpec:
    name: str
    kind: str  # "classify" (per-pixel classes), "regress" (continuous values), "binary" (one logit)
    loss_weight: float  # released multi-task loss weight
    pretty: str  # name used in tables (the paper's column headers)


TASKS: dict[str, TaskSpec] = {
    "semseg": TaskSpec("semseg", "classify", 1.0, "Semseg"),
    "depth": TaskSpec("depth", "regress", 1.0, "Depth"),
    "human_parts": TaskSpec("human_parts", "classify", 2.0, "Parsing"),
    "sal": TaskSpec("sal", "classify", 5.0, "Saliency"),
    "normals": TaskSpec("normals", "regress", 10.0, "Normal"),
    "edge": TaskSpec("edge", "binary", 50.0, "Boundary"),
}
TASK_ORDER: tuple[str, ...] = tuple(TASKS)

# Output channels per task on the two released datasets (released-code.md section 1).
PASCAL_CONTEXT_TASKS: dict[str, int] = {"semseg": 21, "human_parts": 7, "sal": 2, "normals": 3, "edge": 1}
NYUD_TASKS: dict[str, int] = {"semseg": 40, "depth": 1, "normals": 3, "edge": 1}


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
