"""Confusion-matrix meter for semantic segmentation and human parsing: mIoU, pixel accuracy, per-class IoU.

Pooled over every valid pixel of the dataset, as published: IoU_c = TP_c / max(TP_c + FP_c + FN_c, 1e-8), so a
class absent from both prediction and ground truth counts as IoU 0 and still enters the mean.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ..errors import DataError
from ..tasks import IGNORE_INDEX
from .base import Meter, as_labels, check_spatial


def metric_names(class_names: Sequence[str]) -> tuple[str, ...]:
    """The dataset table's class names as metric keys: iou_floor_mat, iou_upper_arm."""
    return tuple(name.replace(" ", "_") for name in class_names)


class SegmentationMeter(Meter):
    """mIoU x 100, pixel_acc x 100 and iou_<class> x 100 from a (C, C) confusion matrix (rows: ground truth)."""

    def __init__(
        self, *, num_classes: int, task: str = "semseg", class_names: Sequence[str] | None = None,
        ignore_index: int = IGNORE_INDEX,
    ) -> None:  # fmt: skip
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"{task}: {len(class_names)} class names for {num_classes} classes")
        self.task = task
        self.num_classes = num_classes
        self.class_names = tuple(class_names) if class_names is not None else tuple(str(c) for c in range(num_classes))
        self.ignore_index = ignore_index
        self.confusion = torch.zeros(num_classes, num_classes, dtype=torch.float64)

    def state_tensors(self) -> list[Tensor]:
        return [self.confusion]

    @torch.no_grad()
    def update(self, output: Tensor, target: Tensor) -> None:
        target = as_labels(target, self.task)
        check_spatial(output, target, self.task)
        if output.shape[1] != self.num_classes:
            raise ValueError(f"{self.task}: output has {output.shape[1]} channels, expected {self.num_classes}")
        pred = output.argmax(1)  # (B, H, W)
        valid = target != self.ignore_index
        gt, pred = target[valid], pred[valid]
        if gt.numel() and (gt.min() < 0 or gt.max() >= self.num_classes):
            raise DataError(
                f"{self.task}: label values must be in [0, {self.num_classes}) or {self.ignore_index}, "
                f"found {sorted(set(gt.unique().tolist()) - set(range(self.num_classes)))}"
            )
        index = (gt * self.num_classes + pred).cpu()
        self.confusion += torch.bincount(index, minlength=self.num_classes**2).reshape(self.confusion.shape)

    def compute(self) -> dict[str, float]:
        tp = self.confusion.diag()
        fp = self.confusion.sum(0) - tp
        fn = self.confusion.sum(1) - tp
        iou = tp / torch.clamp(tp + fp + fn, min=1e-8)
        total = self.confusion.sum()
        out = {
            "mIoU": 100 * iou.mean().item(),
            "pixel_acc": 100 * (tp.sum() / total).item() if total > 0 else float("nan"),
        }
        out.update({f"iou_{name}": 100 * v for name, v in zip(self.class_names, iou.tolist())})
        return out
