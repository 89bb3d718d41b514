"""Per-task losses as the released code trains with them, and their weighted sum (released-code.md section 6).

Every loss is a sum over valid pixels of the whole batch divided by the number of valid pixels (pooled, not a
mean of per-image means), computed at the label resolution (logits of another size are bilinearly resized
first). A batch whose labels are all ignore gives exactly 0 (with a gradient of 0), never NaN. "The whole batch" is
the global batch of an optimiser step when the trainer passes its statistics (``train.loss_normalization:
global``, the default: any number of processes and micro-batches train alike), or each process's micro-batch as in
the released code (``local``).

  semseg, human_parts: cross-entropy, ignore 255.
  sal:     two-class cross-entropy with per-batch class weights [1 - w, w], w = #negative / #valid (the rarer
           class weighs more), summed and divided by #valid.
  edge:    binary cross-entropy on the logit, 0.95 x positive terms + 0.05 x negative terms, divided by #valid.
  normals: the prediction L2-normalised over channels; L1 summed over the 3 components, divided by #valid
           (valid: ground truth not all zero).
  depth:   L1 on the raw output over valid pixels (0 < gt, finite); with ``zero_valid`` (disparity, Cityscapes-3D's
           released encoding: -1 = invalid) over 0 <= gt instead, so a disparity of 0 (the far "sky") is learned.
  3ddet:   the released FCOS3D loss (model/swin/detection/losses.py) of the detector's outputs against the batch's
           3ddet records, normalised within the batch; with the global statistics, each batch's loss is weighted
           by its share of the images that have objects.

Partially labelled data (``batch["labelled"][task]``, a BoolTensor (B,), data/partial.py): each task's loss and
statistics see only the samples labelled for it -- the loss of a batch mixing labelled and unlabelled samples is
that of its labelled sub-batch, bit for bit, and a batch without a labelled sample gives exactly 0 -- whatever the
unlabelled samples' targets hold (`labelled_part`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .data.sample import NO_LABEL
from .errors import DataError
from .tasks import IGNORE_INDEX, TASKS, check_task_names

EDGE_POS_WEIGHT = 0.95  # the negative terms get 1 - 0.95


def _at_label_size(logits: Tensor, size: torch.Size) -> Tensor:
    logits = logits.float()  # every loss in fp32, the resizing included, also under autocast (bf16 logits)
    if logits.shape[-2:] != size:
        logits = F.interpolate(logits, size=tuple(size), mode="bilinear", align_corners=False)
    return logits


def _labels(target: Tensor) -> Tensor:
    return (target[:, 0] if target.dim() == 4 else target).long()  # (B, H, W)


def _pooled(total: Tensor, count: Tensor) -> Tensor:
    """total / count, 0 (not NaN) when nothing is valid."""
    return total / count.clamp(min=1)


# Every loss is total(logits, target, stats) / stats[0]. ``stats`` are the batch statistics that the normalisation
# (and the saliency class weights) depend on -- counts, so that the statistics of several micro-batches and
# processes add up (``LOSS_STATS``) -- taken from the loss's own batch when not given (the released, per-process
# normalisation) or from the whole global batch (``loss_normalization="global"``).


def valid_labels(target: Tensor) -> Tensor:
    """[#valid pixels] of a class / edge / saliency target (label != 255)."""
    return (_labels(target) != IGNORE_INDEX).sum().reshape(1)


def saliency_stats(target: Tensor) -> Tensor:
    """[#valid, #negative (background) valid pixels]: the saliency class weights come from these."""
    target = _labels(target)
    return torch.stack([(target != IGNORE_INDEX).sum(), (target == 0).sum()])


def valid_normals(target: Tensor) -> Tensor:
    """[#pixels whose ground-truth normal is given] (not all zero, not ignore)."""
    return (target != 0).any(1).logical_and(~(target == IGNORE_INDEX).all(1)).sum().reshape(1)


def _depth_mask(target: Tensor, zero_valid: bool) -> Tensor:
    return ((target >= 0) if zero_valid else (target > 0)) & torch.isfinite(target)


def valid_depth(target: Tensor, *, zero_valid: bool = False) -> Tensor:
    """[#pixels with a depth] (0 < gt, finite; 0 <= gt with ``zero_valid``)."""
    return _depth_mask(target, zero_valid).sum().reshape(1)


def cross_entropy_loss(logits: Tensor, target: Tensor, stats: Tensor | None = None) -> Tensor:
    """Semseg / human parts: CE over valid pixels (label != 255)."""
    stats = valid_labels(target) if stats is None else stats
    target = _labels(target)
    logits = _at_label_size(logits, target.shape[-2:])
    total = F.cross_entropy(logits.float(), target, ignore_index=IGNORE_INDEX, reduction="sum")
    return _pooled(total, stats[0])


def saliency_loss(logits: Tensor, target: Tensor, stats: Tensor | None = None) -> Tensor:
    """Balanced two-class CE: class weights [1 - w, w] with w = #negative / #valid in the batch."""
    stats = saliency_stats(target) if stats is None else stats
    target = _labels(target)
    logits = _at_label_size(logits, target.shape[-2:]).float()
    w = stats[1].float() / stats[0].clamp(min=1)
    weight = torch.stack([1 - w, w]).to(logits.dtype)
    total = F.cross_entropy(logits, target, weight=weight, ignore_index=IGNORE_INDEX, reduction="none").sum()
    return _pooled(total, stats[0])


def edge_loss(logits: Tensor, target: Tensor, stats: Tensor | None = None) -> Tensor:
    """0.95 x BCE on boundary pixels + 0.05 x BCE on the others, divided by #valid."""
    stats = valid_labels(target) if stats is None else stats
    target = _labels(target)
    logits = _at_label_size(logits, target.shape[-2:])[:, 0].float()  # (B, H, W)
    valid = target != IGNORE_INDEX
    positive = (target == 1) & valid
    weight = torch.where(positive, EDGE_POS_WEIGHT, 1 - EDGE_POS_WEIGHT) * valid
    bce = F.binary_cross_entropy_with_logits(logits, positive.to(logits.dtype), reduction="none")
    return _pooled((weight * bce).sum(), stats[0])


def normals_loss(pred: Tensor, target: Tensor, stats: Tensor | None = None) -> Tensor:
    """L1 between the L2-normalised prediction and the ground truth normal, over valid pixels."""
    stats = valid_normals(target) if stats is None else stats
    pred = F.normalize(_at_label_size(pred, target.shape[-2:]).float(), dim=1)
    valid = (target != 0).any(1, keepdim=True) & ~(target == IGNORE_INDEX).all(1, keepdim=True)  # (B, 1, H, W)
    total = ((pred - target.float()).abs() * valid).sum()
    return _pooled(total, stats[0])


def depth_loss(pred: Tensor, target: Tensor, stats: Tensor | None = None, *, zero_valid: bool = False) -> Tensor:
    """L1 on the raw prediction over valid pixels (gt > 0; gt >= 0 with ``zero_valid``)."""
    target = target[:, None] if target.dim() == 3 else target
    stats = valid_depth(target, zero_valid=zero_valid) if stats is None else stats
    pred = _at_label_size(pred, target.shape[-2:]).float()
    valid = _depth_mask(target, zero_valid)
    total = torch.where(valid, (pred - target.float()).abs(), torch.zeros_like(pred)).sum()
    return _pooled(total, stats[0])


def detection_images(records: Sequence[Mapping]) -> Tensor:
    """[#images with at least one object] of a batch's 3ddet records."""
    return torch.tensor([sum(len(r["label"]) > 0 for r in records)], dtype=torch.long)


def detection_loss(outputs, records: Sequence[Mapping], stats: Tensor | None = None) -> Tensor:
    """3-D detection: the detector's loss ("total" of its terms) for ``outputs`` (`DetectionOutputs`) and the
    batch's per-image 3ddet records (on any device). With ``stats`` (`detection_images` over a larger batch), this
    batch's loss times its share of those images."""
    from .model.swin.detection import DetectionOutputs
    from .model.swin.detection.losses import detection_loss as released_detection_loss

    if not isinstance(outputs, DetectionOutputs):
        raise TypeError(f"the 3ddet output must be the detector's DetectionOutputs, got {type(outputs).__name__}: "
                        "train 3ddet with a TaskPrompterSwin, whose heads['3ddet'] is the detector")
    if not isinstance(records, (list, tuple)):
        raise DataError(f"the batch's 3ddet labels must be a list of per-image records, got {type(records).__name__}")
    total = released_detection_loss(outputs, records)["total"]
    if stats is None:
        return total
    return total * (float(detection_images(records)[0]) / max(float(stats[0]), 1.0))


def labelled_part(output: Tensor, target: Tensor, labelled: Tensor | None, *, no_label: float
                  ) -> tuple[Tensor, Tensor]:
    """(output, target) of the samples labelled for a task: ``labelled`` (B,) bool selects them (on the outputs'
    device), so that a loss over them equals the loss of the labelled sub-batch exactly. None or all True: the
    batch as it is. All False: the whole batch with every target value replaced by ``no_label`` (the task's
    invalid value), whose loss is exactly 0 with a graph through the outputs (DDP sees every parameter used)."""
    if labelled is None:
        return output, target
    labelled = labelled.reshape(-1).bool()
    if labelled.numel() != target.shape[0]:
        raise DataError(f"batch['labelled'] has {labelled.numel()} flags for a batch of {target.shape[0]}")
    if bool(labelled.all()):
        return output, target
    if not bool(labelled.any()):
        return output, torch.full_like(target, no_label)
    index = labelled.nonzero().reshape(-1).to(target.device)  # (B',)
    return output.index_select(0, index.to(output.device)), target.index_select(0, index)


class MultiTaskLoss(nn.Module):
    """Sum over tasks of weight x loss; forward returns {task: loss, ..., "total": weighted sum}.

    weights: per-task overrides of the released defaults (semseg 1, depth 1, human_parts 2, sal 5,
    normals 10, edge 50). ``zero_depth_valid``: the depth task holds disparity with -1 = invalid (Cityscapes-3D), so
    0 is a valid target. ``forward(outputs, batch, stats)``: with ``stats`` ({task: ``LOSS_STATS[task]`` summed
    over a larger batch}) every loss is this batch's share of that batch's loss -- the shares of its parts add up
    to it exactly; without, each loss is normalised by this batch alone. With ``batch["labelled"]`` ({task:
    BoolTensor (B,)}, partially labelled data) every task's loss and statistics count its labelled samples only.
    """

    def __init__(self, tasks: Sequence[str], weights: Mapping[str, float] | None = None, *,
                 zero_depth_valid: bool = False) -> None:
        super().__init__()
        tasks = list(tasks)
        check_task_names(tasks)
        check_task_names(weights or {})
        no_loss = [t for t in tasks if t not in LOSSES]
        if no_loss:
            raise ValueError(f"no training loss for task(s) {no_loss} yet (3-D detection: head, targets and losses "
                             "are the next issue); train the dense tasks, e.g. data.tasks=[semseg, depth]")
        self.tasks = tasks
        self.weights = {t: float((weights or {}).get(t, TASKS[t].loss_weight)) for t in tasks}
        self.losses = {t: partial(depth_loss, zero_valid=True) if t == "depth" and zero_depth_valid else LOSSES[t]
                       for t in tasks}
        self.stats = {t: partial(valid_depth, zero_valid=True) if t == "depth" and zero_depth_valid else LOSS_STATS[t]
                      for t in tasks}
        # the value of an invalid target pixel: what an unlabelled sample's target counts as (disparity: -1)
        self.no_label = {t: -1.0 if t == "depth" and zero_depth_valid else NO_LABEL.get(t, IGNORE_INDEX)
                         for t in tasks}

    def _labelled(self, task: str, output: Tensor, batch: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
        """(output, target) of the samples of ``batch`` labelled for ``task`` (`labelled_part`)."""
        labelled = (batch.get("labelled") or {}).get(task)
        if TASKS[task].kind == "detect":
            if labelled is not None and not bool(torch.as_tensor(labelled).all()):
                raise DataError(f"{task} cannot be partially labelled: batch['labelled'] marks some images "
                                "unlabelled for it (an empty record would train 'no objects here')")
            return output, batch[task]
        return labelled_part(output, batch[task], labelled, no_label=self.no_label[task])

    def forward(self, outputs: Mapping[str, Tensor], batch: Mapping[str, Tensor],
                stats: Mapping[str, Tensor] | None = None) -> dict[str, Tensor]:
        losses: dict[str, Tensor] = {}
        for task in self.tasks:
            if task not in outputs:
                raise KeyError(f"model outputs have no {task!r}; outputs: {sorted(outputs)}")
            if task not in batch:
                raise DataError(f"the batch has no {task!r} labels; keys: {sorted(batch)}")
            output, target = self._labelled(task, outputs[task], batch)
            losses[task] = self.losses[task](output, target, None if stats is None else stats[task])
        losses["total"] = sum(self.weights[t] * losses[t] for t in self.tasks)
        return losses


    def batch_stats(self, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """{task: the statistics its normalisation needs} of one batch (int64 counts: they add over batches), of
        the samples labelled for the task."""
        return {task: self.stats[task](self._labelled(task, batch[task], batch)[1]).long() for task in self.tasks}


LOSSES: dict[str, Callable[..., Tensor]] = {
    "semseg": cross_entropy_loss,
    "depth": depth_loss,
    "human_parts": cross_entropy_loss,
    "sal": saliency_loss,
    "normals": normals_loss,
    "edge": edge_loss,
    "3ddet": detection_loss,
}

LOSS_STATS: dict[str, Callable[[Tensor], Tensor]] = {
    "semseg": valid_labels,
    "depth": valid_depth,
    "human_parts": valid_labels,
    "sal": saliency_stats,
    "normals": valid_normals,
    "edge": valid_labels,
    "3ddet": detection_images,
}
