"""The detection loss of the released Swin TaskPrompter (swin-cityscapes3d.md section 3.3; ``DetModel.loss`` with
the losses of ``detection_toolbox/det_losses.py``). With P points of the kept images, N+ of them positive:

    cls         5 x sum over all points and K classes of the sigmoid focal loss (gamma 2, alpha 0.25) / (N+ + images)
    offset      sum over positives of w . SmoothL1_beta(pred, target) over the 2 offsets / N+     (beta 1/9)
    depth       the same on the exp output vs z_S in metres, weight 0.2
    size        the same on L, W, H
    rotation    the same on sin(p) cos(t) vs cos(p) sin(t) per angle (sin(p - t) split in two), weight 5 each
    ltrb        the same on (l, t, r, b) / stride
    dir         sum over the 3 angles of the mean softmax cross-entropy of the 2 direction bins (positives)
    centerness  mean binary cross-entropy of the centerness logit vs its target (positives)

The weights w are the released ``code_weight`` [1, 1, 0.2, 1, 1, 1, 5, 5, 5, 1, 1, 1, 1]. Images without objects are
removed first; their outputs enter the total multiplied by 0, so that every parameter stays in the graph. With no
positive point at all, the positive terms are sums over empty tensors (0), as released.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .outputs import DetectionOutputs
from .targets import all_points, direction_bins, image_scale, image_targets

TERMS: tuple[str, ...] = ("cls", "offset", "depth", "size", "rotation", "ltrb", "dir", "centerness")
REG_SLICES: dict[str, slice] = {"offset": slice(0, 2), "depth": slice(2, 3), "size": slice(3, 6),
                                "rotation": slice(6, 9), "ltrb": slice(9, 13)}


def sigmoid_focal_loss(logits: Tensor, labels: Tensor, *, gamma: float = 2.0, alpha: float = 0.25) -> Tensor:
    """Element-wise focal loss (N, K) of class logits (N, K) for labels (N,) in [0, K] (K = background: all
    negatives): BCE(x, t) (alpha t + (1 - alpha)(1 - t)) p_t^gamma with p_t = 1 - p for t = 1, p for t = 0."""
    K = logits.shape[1]
    t = F.one_hot(labels, K + 1)[:, :K].to(logits.dtype)
    p = logits.sigmoid()
    pt = (1 - p) * t + p * (1 - t)
    weight = (alpha * t + (1 - alpha) * (1 - t)) * pt.pow(gamma)
    return F.binary_cross_entropy_with_logits(logits, t, reduction="none") * weight


def smooth_l1(pred: Tensor, target: Tensor, beta: float) -> Tensor:
    """Element-wise SmoothL1: 0.5 d^2 / beta where d = |pred - target| < beta, else d - 0.5 beta."""
    d = (pred - target).abs()
    return torch.where(d < beta, 0.5 * d * d / beta, d - 0.5 * beta)


def flatten_levels(maps: Sequence[Tensor]) -> Tensor:
    """L x (B, C, h_l, w_l) -> (B, P, C), points row-major within a level, levels in order."""
    return torch.cat([m.flatten(2).transpose(1, 2) for m in maps], dim=1)


def detection_loss(outputs: DetectionOutputs, records: Sequence[Mapping]) -> dict[str, Tensor]:
    """{term: loss} for the terms in ``TERMS`` and their plain sum as "total" (the released det loss).

    ``records``: one 3ddet record per image (data/cityscapes3d.py; NumPy arrays or tensors, on any device)."""
    cfg = outputs.config
    B = outputs.cls_score[0].shape[0]
    if len(records) != B:
        raise ValueError(f"{len(records)} 3ddet records for a batch of {B} images")
    maps = [outputs.cls_score, outputs.bbox_pred, outputs.dir_cls, outputs.centerness]
    keep = [i for i, r in enumerate(records) if len(r["label"]) > 0]
    dropped = [i for i in range(B) if i not in keep]
    zero = sum(m[i].float().sum() * 0 for group in maps for m in group for i in dropped)  # in the graph, value 0
    zero = zero if torch.is_tensor(zero) else outputs.cls_score[0].float().sum() * 0
    if not keep:
        return {**{t: zero for t in TERMS}, "total": zero}
    idx = torch.tensor(keep, device=outputs.cls_score[0].device)
    cls, bbox, dirs, ctr = (flatten_levels([m.index_select(0, idx) for m in group]).float() for group in maps)
    sizes = outputs.level_sizes
    labels, targets, ctr_t = [], [], []
    for i in keep:
        scale = image_scale(records[i], cfg)
        points, stride, level = all_points(sizes, [s * scale for s in cfg.strides], device=cls.device,
                                           dtype=torch.float32)
        t = image_targets(points, stride, level, records[i], cfg)
        labels.append(t.labels), targets.append(t.bbox), ctr_t.append(t.centerness)
    labels, targets, ctr_t = torch.cat(labels), torch.cat(targets), torch.cat(ctr_t)  # (N,), (N, 13), (N,)
    cls, bbox, dirs, ctr = cls.flatten(0, 1), bbox.flatten(0, 1), dirs.flatten(0, 1), ctr.flatten(0, 1)[:, 0]
    pos = labels < cfg.num_classes
    num_pos = int(pos.sum())
    losses = {"cls": cfg.cls_weight * sigmoid_focal_loss(cls, labels, gamma=cfg.focal_gamma, alpha=cfg.focal_alpha
                                                         ).sum() / (num_pos + len(keep))}
    p_bbox, p_dir, p_ctr = bbox[pos], dirs[pos], ctr[pos]
    if num_pos > 0:
        t_bbox, t_ctr = targets[pos], ctr_t[pos]
        bins = direction_bins(t_bbox[:, 6:9])  # (N+, 3) from the angles themselves
        p_enc, t_enc = p_bbox.clone(), t_bbox.clone()
        p_enc[:, 6:9] = torch.sin(p_bbox[:, 6:9]) * torch.cos(t_bbox[:, 6:9])  # sin(p - t) = sin p cos t - cos p sin t
        t_enc[:, 6:9] = torch.cos(p_bbox[:, 6:9]) * torch.sin(t_bbox[:, 6:9])
        weighted = smooth_l1(p_enc, t_enc, cfg.smooth_l1_beta) * p_bbox.new_tensor(cfg.code_weights)  # (N+, 13)
        losses.update({name: weighted[:, cols].sum() / num_pos for name, cols in REG_SLICES.items()})
        losses["dir"] = cfg.dir_weight * sum(F.cross_entropy(p_dir[:, 2 * a: 2 * a + 2], bins[:, a], reduction="sum")
                                             for a in range(3)) / num_pos
        losses["centerness"] = cfg.centerness_weight * F.binary_cross_entropy_with_logits(p_ctr, t_ctr)
    else:  # sums over no positives: 0, with a gradient path (released)
        losses.update({name: p_bbox[:, cols].sum() for name, cols in REG_SLICES.items()})
        losses["dir"], losses["centerness"] = p_dir.sum(), p_ctr.sum()
    losses = {t: losses[t] for t in TERMS}
    losses["total"] = sum(losses.values()) + zero
    return losses
