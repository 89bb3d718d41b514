"""Exact rotated-rectangle IoU in bird's-eye view and greedy rotated NMS in PyTorch (CPU and CUDA), replacing the
released CUDA extension ``iou3d_cuda`` (OpenPCDet's ``iou3d_kernel.cu``; swin-cityscapes3d.md sections 3.4, 3.5).

A box is [x1, y1, x2, y2, theta]: the axis-aligned rectangle, turned about its centre as the kernel turns it --
corner offsets (dx, dy) -> (dx cos theta + dy sin theta, -dx sin theta + dy cos theta). The intersection of two
boxes is a convex polygon whose vertices are the crossings of their edges and the corners of each inside the other;
they are sorted by angle about their mean and summed by the shoelace formula, for all pairs at once (only pairs whose
circumscribed circles meet are computed; the others have IoU 0 exactly). As in the kernel, edges cross only
strictly and a corner counts as inside within 1e-5, so touching and collinear edges are handled by the corners.
"""

from __future__ import annotations

import torch
from torch import Tensor

MARGIN = 1e-5  # the kernel's tolerance of the corner-inside test
EPS = 1e-8  # the kernel's floor of the union
PAIR_CHUNK = 1 << 16  # pairs per vectorised step (24 candidate vertices each)


def _cross(a: Tensor, b: Tensor) -> Tensor:
    return a[..., 0] * b[..., 1] - a[..., 1] * b[..., 0]


def bev_corners(boxes: Tensor) -> Tensor:
    """(..., 5) boxes -> (..., 4, 2) corners: (x1, y1), (x2, y1), (x2, y2), (x1, y2) turned as the kernel turns them."""
    x1, y1, x2, y2, theta = boxes.unbind(-1)
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    dx = torch.stack([x1, x2, x2, x1], dim=-1) - cx[..., None]  # (..., 4)
    dy = torch.stack([y1, y1, y2, y2], dim=-1) - cy[..., None]
    c, s = theta.cos()[..., None], theta.sin()[..., None]
    return torch.stack([dx * c + dy * s + cx[..., None], -dx * s + dy * c + cy[..., None]], dim=-1)


def _inside(points: Tensor, boxes: Tensor) -> Tensor:
    """Whether points (P, k, 2) lie in boxes (P, 5) (within MARGIN): turned back by -theta about the centre, then
    compared with the axis-aligned rectangle."""
    x1, y1, x2, y2, theta = (v[:, None] for v in boxes.unbind(-1))
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    dx, dy = points[..., 0] - cx, points[..., 1] - cy
    c, s = theta.cos(), theta.sin()
    rx, ry = dx * c - dy * s + cx, dx * s + dy * c + cy
    return (rx > x1 - MARGIN) & (rx < x2 + MARGIN) & (ry > y1 - MARGIN) & (ry < y2 + MARGIN)


def intersection_area(a: Tensor, b: Tensor) -> Tensor:
    """Areas (P,) of the overlap of the aligned pairs of boxes a (P, 5) and b (P, 5)."""
    ca, cb = bev_corners(a), bev_corners(b)  # (P, 4, 2)
    p0, q0 = ca[:, :, None], cb[:, None]  # (P, 4, 1, 2) edges of a, (P, 1, 4, 2) edges of b
    r, s = ca.roll(-1, dims=1)[:, :, None] - p0, cb.roll(-1, dims=1)[:, None] - q0  # edge vectors
    qp = q0 - p0  # (P, 4, 4, 2)
    d1, d2 = _cross(r, qp), _cross(r, qp + s)  # sides of b's edge ends w.r.t. a's edge
    d3, d4 = _cross(s, -qp), _cross(s, r - qp)  # sides of a's edge ends w.r.t. b's edge
    crossing = (d1 * d2 < 0) & (d3 * d4 < 0)  # strict: proper crossings only (then r x s != 0)
    denom = torch.where(crossing, _cross(r, s), torch.ones_like(d1))
    t = torch.where(crossing, _cross(qp, s) / denom, torch.zeros_like(d1))
    cuts = (p0 + t[..., None] * r).flatten(1, 2)  # (P, 16, 2)
    points = torch.cat([cuts, cb, ca], dim=1)  # (P, 24, 2)
    valid = torch.cat([crossing.flatten(1), _inside(cb, a), _inside(ca, b)], dim=1)  # (P, 24)
    count = valid.sum(1, keepdim=True)  # (P, 1)
    w = valid[..., None].to(points.dtype)
    centre = (points * w).sum(1) / count.clamp(min=1)  # (P, 2)
    rel = points - centre[:, None]
    angle = torch.atan2(rel[..., 1], rel[..., 0]).masked_fill(~valid, 10.0)  # invalid ones sort last
    order = angle.argsort(dim=1)
    pts = points.gather(1, order[..., None].expand(-1, -1, 2))  # (P, 24, 2) valid first, by angle
    ok = valid.gather(1, order)
    fan = pts - pts[:, :1]  # from the first vertex
    tri = _cross(fan[:, :-1], fan[:, 1:]) * (ok[:, :-1] & ok[:, 1:])  # (P, 23)
    return tri.sum(1).abs() / 2


def bev_iou(a: Tensor, b: Tensor) -> Tensor:
    """IoU (N, M) of boxes a (N, 5) and b (M, 5); areas are (x2 - x1)(y2 - y1), the union floored at 1e-8."""
    N, M = len(a), len(b)
    iou = a.new_zeros(N, M)
    if N == 0 or M == 0:
        return iou
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    centre_a, centre_b = (a[:, :2] + a[:, 2:4]) / 2, (b[:, :2] + b[:, 2:4]) / 2
    radius_a = (a[:, 2:4] - a[:, :2]).norm(dim=1) / 2  # circumscribed circles
    radius_b = (b[:, 2:4] - b[:, :2]).norm(dim=1) / 2
    near = torch.cdist(centre_a, centre_b) <= (radius_a[:, None] + radius_b[None]) * (1 + 1e-6) + 1e-9
    pairs = near.nonzero()  # (Q, 2)
    for chunk in pairs.split(PAIR_CHUNK):
        i, j = chunk[:, 0], chunk[:, 1]
        inter = intersection_area(a[i], b[j])
        iou[i, j] = inter / (area_a[i] + area_b[j] - inter).clamp(min=EPS)
    return iou


def nms_rotated(boxes: Tensor, scores: Tensor, threshold: float, *, block: int = 256) -> Tensor:
    """Greedy NMS: indices (into ``boxes``) of the kept boxes, by descending score; a box is suppressed by a kept,
    higher-scoring one when their BEV IoU > ``threshold`` (strictly). IoUs are computed a block of candidate rows at
    a time against the boxes not yet suppressed."""
    n = len(boxes)
    if n == 0:
        return torch.zeros(0, dtype=torch.long, device=boxes.device)
    order = torch.argsort(scores, descending=True, stable=True)
    ranked = boxes[order]
    removed = torch.zeros(n, dtype=torch.bool)
    keep: list[int] = []
    for start in range(0, n, block):
        rows = torch.arange(start, min(start + block, n))
        rows = rows[~removed[rows]]
        if len(rows) == 0:
            continue
        cols = torch.arange(start, n)
        cols = cols[~removed[cols]]
        over = (bev_iou(ranked[rows.to(boxes.device)], ranked[cols.to(boxes.device)]) > threshold).cpu()
        for k, i in enumerate(rows.tolist()):
            if removed[i]:
                continue
            keep.append(i)
            removed[cols[over[k] & (cols > i)]] = True
    return order[torch.tensor(keep, device=boxes.device)]


def multiclass_nms(boxes: Tensor, scores: Tensor, *, score_threshold: float, iou_threshold: float,
                   max_num: int) -> tuple[Tensor, Tensor, Tensor]:
    """Per-class NMS of boxes (n, 5) with class scores (n, K): for each class the boxes scoring > score_threshold,
    greedy rotated NMS; then at most ``max_num`` by score. -> (box index (m,), label (m,), score (m,)), class by
    class unless cut to ``max_num`` (then by descending score), as released ``box3d_multiclass_nms``."""
    index, labels, kept = [], [], []
    for c in range(scores.shape[1]):
        sel = (scores[:, c] > score_threshold).nonzero()[:, 0]
        if len(sel) == 0:
            continue
        keep = sel[nms_rotated(boxes[sel], scores[sel, c], iou_threshold)]
        index.append(keep), labels.append(torch.full_like(keep, c)), kept.append(scores[keep, c])
    if not index:
        empty = torch.zeros(0, dtype=torch.long, device=boxes.device)
        return empty, empty, scores.new_zeros(0)
    index, labels, kept = torch.cat(index), torch.cat(labels), torch.cat(kept)
    if len(index) > max_num:
        top = torch.argsort(kept, descending=True, stable=True)[:max_num]
        index, labels, kept = index[top], labels[top], kept[top]
    return index, labels, kept
