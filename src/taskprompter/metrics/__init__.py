"""Every metric of the paper, as the published numbers were computed, with state that all-reduces.

    meters = build_meters(["semseg", "normals", "edge"], dataset="pascal_context")
    meters["semseg"].update(logits, labels)   # see base.py for the Meter protocol
    meters["semseg"].compute()                # {"mIoU": ..., ...}
    delta_m({t: m.compute() for t, m in meters.items()}, PAPER_STL_VITB_PASCAL)

docs/metrics.md gives each metric's definition and where the published and exact variants differ.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from ..errors import ConfigError
from ..tasks import NYUD_TASKS, PASCAL_CONTEXT_TASKS, check_task_names
from .base import METRIC_SPECS, Meter, MetricSpec
from .boundary import MAX_DIST, BoundaryMeter, evaluate_boundaries
from .multitask import PAPER_STL_VITB_PASCAL, delta_m
from .regression import DepthMeter, NormalsMeter
from .saliency import SaliencyMeter
from .segmentation import HUMAN_PARTS_CLASSES, NYU40_CLASSES, VOC_CLASSES, SegmentationMeter

__all__ = [
    "Meter", "MetricSpec", "METRIC_SPECS", "METERS", "build_meter", "build_meters", "delta_m", "PAPER_STL_VITB_PASCAL",
    "evaluate_boundaries", "SegmentationMeter", "DepthMeter", "NormalsMeter", "SaliencyMeter", "BoundaryMeter",
]  # fmt: skip

DATASET_CLASSES = {"pascal_context": PASCAL_CONTEXT_TASKS, "nyud": NYUD_TASKS}
CLASS_NAMES = {("pascal_context", "semseg"): VOC_CLASSES, ("nyud", "semseg"): NYU40_CLASSES}


def _semseg(**options) -> Meter:
    options.setdefault("num_classes", 21)
    return SegmentationMeter(task="semseg", **options)


def _human_parts(**options) -> Meter:
    options.setdefault("num_classes", len(HUMAN_PARTS_CLASSES))
    if options["num_classes"] == len(HUMAN_PARTS_CLASSES):
        options.setdefault("class_names", HUMAN_PARTS_CLASSES)
    return SegmentationMeter(task="human_parts", **options)


def build_meter(task: str, **options) -> Meter:
    """The meter of one task; options go to its constructor (e.g. num_classes=40, max_dist=0.011)."""
    check_task_names([task])
    try:
        return METERS[task](**options)
    except TypeError as err:
        raise ConfigError(f"invalid option for the {task!r} meter: {err}") from err


def build_meters(tasks: Iterable[str], *, dataset: str = "pascal_context") -> dict[str, Meter]:
    """Meters for the tasks with the dataset's conventions (class count and names, boundary max_dist)."""
    if dataset not in DATASET_CLASSES:
        raise ConfigError(f"unknown dataset {dataset!r} for metrics; known: {sorted(DATASET_CLASSES)} "
                          "(use build_meter with explicit options for others)")  # fmt: skip
    tasks = list(tasks)
    check_task_names(tasks)
    meters: dict[str, Meter] = {}
    for task in tasks:
        options: dict = {}
        if task in ("semseg", "human_parts"):
            options["num_classes"] = DATASET_CLASSES[dataset].get(task, 21 if task == "semseg" else 7)
            names = CLASS_NAMES.get((dataset, task))
            if names is not None and len(names) == options["num_classes"]:
                options["class_names"] = names
        if task == "edge":
            options["max_dist"] = MAX_DIST[dataset]
        meters[task] = build_meter(task, **options)
    return meters


METERS: dict[str, Callable[..., Meter]] = {
    "semseg": _semseg,
    "depth": DepthMeter,
    "human_parts": _human_parts,
    "sal": SaliencyMeter,
    "normals": NormalsMeter,
    "edge": BoundaryMeter,
}
