"""Per-task losses as the released code trains with them, and their weighted sum (released-code.md section 6).

Every loss is a sum over valid pixels of the whole batch divided by the number of valid pixels (pooled, not a
mean of per-image means), computed at the label resolution (logits of another size are bilinearly resized
first). A batch whose labels are all ignore gives exactly 0 (with a gradient of 0), never NaN.

  semseg, human_parts: cross-entropy, ignore 255.
  sal:     two-class cross-entropy with per-batch class weights [1 - w, w], w = #negative / #valid (the rarer
           class weighs more), summed and divided by #valid.
  edge:    binary cross-entropy on the logit, 0.95 x positive terms + 0.05 x negative terms, divided by #valid.
  normals: the prediction L2-normalised over channels; L1 summed over the 3 components, divided by #valid
           (valid: ground truth not all zero).
  depth:   L1 on the raw output over valid pixels (0 < gt, finite).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .errors import DataError
from .tasks import IGNORE_INDEX, TASKS, check_task_names

EDGE_POS_WEIGHT = 0.95  # the negative terms get 1 - 0.95


def _at_label_size(logits: Tensor, size: torch.Size) -> Tensor:
    if logits.shape[-2:] != size:
        logits = F.interpolate(logits, size=tuple(size), mode="bilinear", align_corners=False)
    return logits


def _labels(target: Tensor) -> Tensor:
    return (target[:, 0] if target.dim() == 4 else target).long()  # (B, H, W)


def _pooled(total: Tensor, count: Tensor) -> Tensor:
    """total / count, 0 (not NaN) when nothing is valid."""
    return total / count.clamp(min=1)


def cross_entropy_loss(logits: Tensor, target: Tensor) -> Tensor:
    """Semseg / human parts: CE over valid pixels (label != 255)."""
    target = _labels(target)
    logits = _at_label_size(logits, target.shape[-2:])
    total = F.cross_entropy(logits.float(), target, ignore_index=IGNORE_INDEX, reduction="sum")
    return _pooled(total, (target != IGNORE_INDEX).sum())


def saliency_loss(logits: Tensor, target: Tensor) -> Tensor:
    """Balanced two-class CE: class weights [1 - w, w] with w = #negative / #valid in this batch."""
    target = _labels(target)
    logits = _at_label_size(logits, target.shape[-2:]).float()
    valid = target != IGNORE_INDEX
    num_valid = valid.sum()
    w = ((target == 0) & valid).sum().float() / num_valid.clamp(min=1)
    weight = torch.stack([1 - w, w]).to(logits.dtype)
    total = F.cross_entropy(logits, target, weight=weight, ignore_index=IGNORE_INDEX, reduction="none").sum()
    return _pooled(total, num_valid)


def edge_loss(logits: Tensor, target: Tensor) -> Tensor:
    """0.95 x BCE on boundary pixels + 0.05 x BCE on the others, divided by #valid."""
    target = _labels(target)
    logits = _at_label_size(logits, target.shape[-2:])[:, 0].float()  # (B, H, W)
    valid = target != IGNORE_INDEX
    positive = (target == 1) & valid
    weight = torch.where(positive, EDGE_POS_WEIGHT, 1 - EDGE_POS_WEIGHT) * valid
    bce = F.binary_cross_entropy_with_logits(logits, positive.to(logits.dtype), reduction="none")
    return _pooled((weight * bce).sum(), valid.sum())


def normals_loss(pred: Tensor, target: Tensor) -> Tensor:
    """L1 between the L2-normalised prediction and the ground truth normal, over valid pixels."""
    pred = F.normalize(_at_label_size(pred, target.shape[-2:]).float(), dim=1)
    valid = (target != 0).any(1, keepdim=True) & ~(target == IGNORE_INDEX).all(1, keepdim=True)  # (B, 1, H, W)
    total = ((pred - target.float()).abs() * valid).sum()
    return _pooled(total, valid.sum())


def depth_loss(pred: Tensor, target: Tensor) -> Tensor:
    """L1 on the raw prediction over valid pixels (gt > 0)."""
    target = target[:, None] if target.dim() == 3 else target
    pred = _at_label_size(pred, target.shape[-2:]).float()
    valid = (target > 0) & torch.isfinite(target)
    total = torch.where(valid, (pred - target.float()).abs(), torch.zeros_like(pred)).sum()
    return _pooled(total, valid.sum())


class MultiTaskLoss(nn.Module):
    """Sum over tasks of weight x loss; forward returns {task: loss, ..., "total": weighted sum}.

    weights: per-task overrides of the released defaults (semseg 1, depth 1, human_parts 2, sal 5,
    normals 10, edge 50).
    """

    def __init__(self, tasks: Sequence[str], weights: Mapping[str, float] | None = None) -> None:
        super().__init__()
        tasks = list(tasks)
        check_task_names(tasks)
        check_task_names(weights or {})
        self.tasks = tasks
        self.weights = {t: float((weights or {}).get(t, TASKS[t].loss_weight)) for t in tasks}

    def forward(self, outputs: Mapping[str, Tensor], batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        losses: dict[str, Tensor] = {}
        for task in self.tasks:
            if task not in outputs:
                raise KeyError(f"model outputs have no {task!r}; outputs: {sorted(outputs)}")
            if task not in batch:
                raise DataError(f"the batch has no {task!r} labels; keys: {sorted(batch)}")
            losses[task] = LOSSES[task](outputs[task], batch[task])
        losses["total"] = sum(self.weights[t] * losses[t] for t in self.tasks)
        return losses


LOSSES: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "semseg": cross_entropy_loss,
    "depth": depth_loss,
    "human_parts": cross_entropy_loss,
    "sal": saliency_loss,
    "normals": normals_loss,
    "edge": edge_loss,
}
