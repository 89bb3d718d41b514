"""The Meter protocol every task's metric follows, and the primary metrics (a view of `taskprompter.tasks`).

A meter accumulates sums over a dataset, never per-image means, so that:
  * splitting the data into batches (or processes) in any way gives the same numbers, and
  * merging processes is one `torch.distributed.all_reduce(SUM)` per state tensor (`Meter.all_reduce`).

    meter = build_meter("semseg", num_classes=21)
    for batch in loader:
        meter.update(model(batch["image"])["semseg"], batch["semseg"])   # logits (B, C, H, W), labels (B, H, W)
    meter.all_reduce()          # no-op unless torch.distributed is initialised
    meter.compute()             # {"mIoU": ..., "pixel_acc": ..., "iou_background": ...}

`update(output, target)`: `output` is the model's logits for one task at the label resolution, (B, C, H, W);
`target` is that task's labels exactly as the readers and `collate` give them ((B, H, W) int64 with 255 =
ignore for semseg / human_parts / sal / edge; (B, 1, H, W) metres with 0 = invalid for depth; (B, 3, H, W)
with all-zero = invalid for normals). State tensors are float64 on the CPU.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..tasks import TASKS, higher_is_better


@dataclass(frozen=True)
class MetricSpec:
    """The metric that ranks checkpoints and enters Delta_m, and its direction."""

    task: str
    primary: str
    higher_is_better: bool


class Meter:
    """Base class: subclasses keep their state as float64 tensors listed in `state_tensors()`."""

    task: str = ""

    @property
    def primary(self) -> str:
        """The task's primary metric (from the task table)."""
        return TASKS[self.task].primary

    @property
    def higher_is_better(self) -> bool:
        return higher_is_better(self.primary)

    def update(self, output: Tensor, target: Tensor) -> None:
        raise NotImplementedError

    def compute(self) -> dict[str, float]:
        raise NotImplementedError

    def state_tensors(self) -> list[Tensor]:
        raise NotImplementedError

    @property
    def state(self) -> list[Tensor]:
        return self.state_tensors()

    def reset(self) -> None:
        for t in self.state_tensors():
            t.zero_()

    def all_reduce(self) -> None:
        """Sum the state over all processes (in place); nothing happens when torch.distributed is not set up."""
        if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            return
        device = torch.device("cpu")
        if torch.distributed.get_backend() == "nccl":
            device = torch.device("cuda", torch.cuda.current_device())
        for t in self.state_tensors():
            merged = t.to(device)
            torch.distributed.all_reduce(merged, op=torch.distributed.ReduceOp.SUM)
            t.copy_(merged.cpu())

    def merge(self, other: Meter) -> None:
        """Add another meter's state into this one (what all_reduce does across processes)."""
        for mine, theirs in zip(self.state_tensors(), other.state_tensors(), strict=True):
            mine += theirs


def as_labels(target: Tensor, name: str) -> Tensor:
    """(B, H, W) integer labels from (B, H, W) or (B, 1, H, W)."""
    if target.dim() == 4 and target.shape[1] == 1:
        target = target[:, 0]
    if target.dim() != 3:
        raise ValueError(f"{name} labels must be (B, H, W), got shape {tuple(target.shape)}")
    return target.long()


def check_spatial(output: Tensor, target: Tensor, name: str) -> None:
    if output.dim() != 4 or output.shape[0] != target.shape[0] or output.shape[-2:] != target.shape[-2:]:
        raise ValueError(
            f"{name}: output {tuple(output.shape)} must be (B, C, H, W) at the label resolution "
            f"of target {tuple(target.shape)}"
        )


# The metric of each task that ranks checkpoints and enters Delta_m (the paper's table columns), from the task table.
METRIC_SPECS: dict[str, MetricSpec] = {
    task: MetricSpec(task, spec.primary, spec.higher_is_better) for task, spec in TASKS.items()
}
