"""Every metric of the paper, as the published numbers were computed, with state that all-reduces.

    meters = build_meters(["semseg", "normals", "edge"], dataset="pascal_context")
    meters["semseg"].update(logits, labels)   # see base.py for the Meter protocol
    meters["semseg"].compute()                # {"mIoU": ..., ...}
    delta_m({t: m.compute() for t, m in meters.items()}, PAPER_STL_VITB_PASCAL)

docs/metrics.md gives each metric's definition and where the published and exact variants differ.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from functools import partial

from ..data.boundaries import seism_ground_truth
from ..errors import ConfigError
from ..tasks import DATASET_SPECS, DatasetSpec, check_task_names
from .base import METRIC_SPECS, Meter, MetricSpec
from .boundary import BoundaryMeter, evaluate_boundaries
from .cityscapes3d import evaluate_cityscapes3d, evaluate_cityscapes3d_records, write_cityscapes3d_predictions
from .multitask import PAPER_STL_VITB_PASCAL, delta_m
from .regression import DepthMeter, NormalsMeter
from .saliency import SaliencyMeter
from .segmentation import SegmentationMeter, metric_names

__all__ = [
    "Meter", "MetricSpec", "METRIC_SPECS", "METERS", "build_meter", "build_meters", "delta_m", "PAPER_STL_VITB_PASCAL",
    "evaluate_boundaries", "seism_ground_truth", "SegmentationMeter", "DepthMeter", "NormalsMeter", "SaliencyMeter",
    "BoundaryMeter", "evaluate_cityscapes3d", "evaluate_cityscapes3d_records", "write_cityscapes3d_predictions",
]  # fmt: skip

CLASS_TASKS = ("semseg", "human_parts")  # tasks whose meters count classes (num_classes, class_names)


def _segmentation(task: str, **options) -> Meter:
    """A segmentation meter; without num_classes, PASCAL-Context's class count for the task. Human-parts classes
    are named whenever there are PASCAL-Part's 7 (the parts are the same wherever they are labelled); semantic
    classes are named by build_meters, which knows the dataset."""
    names = metric_names(DATASET_SPECS["pascal_context"].class_names[task])
    options.setdefault("num_classes", len(names))
    if task == "human_parts" and options["num_classes"] == len(names):
        options.setdefault("class_names", names)
    return SegmentationMeter(task=task, **options)


def build_meter(task: str, **options) -> Meter:
    """The meter of one task; options go to its constructor (e.g. num_classes=40, max_dist=0.011)."""
    check_task_names([task])
    try:
        return METERS[task](**options)
    except TypeError as err:
        raise ConfigError(f"invalid option for the {task!r} meter: {err}") from err


def build_meters(tasks: Iterable[str], *, dataset: str = "pascal_context") -> dict[str, Meter]:
    """Meters for the tasks with the dataset's conventions from the table `tasks.DATASET_SPECS` (class count and
    names, boundary max_dist)."""
    if dataset not in DATASET_SPECS:
        raise ConfigError(f"unknown dataset {dataset!r} for metrics; known: {sorted(DATASET_SPECS)} "
                          "(use build_meter with explicit options for others)")  # fmt: skip
    tasks = list(tasks)
    check_task_names(tasks)
    return {task: build_meter(task, **dataset_options(task, DATASET_SPECS[dataset])) for task in tasks}


def dataset_options(task: str, spec: DatasetSpec) -> dict:
    """The options of `task`'s meter that follow the dataset (none for a task the dataset does not label)."""
    if task == "edge":
        return {"max_dist": spec.boundary_max_dist}
    if task not in CLASS_TASKS or task not in spec.tasks:
        return {}
    names = spec.class_names.get(task)
    return {"num_classes": spec.tasks[task], **({"class_names": metric_names(names)} if names else {})}


METERS: dict[str, Callable[..., Meter]] = {
    "semseg": partial(_segmentation, "semseg"),
    "depth": DepthMeter,
    "human_parts": partial(_segmentation, "human_parts"),
    "sal": SaliencyMeter,
    "normals": NormalsMeter,
    "edge": BoundaryMeter,
}
