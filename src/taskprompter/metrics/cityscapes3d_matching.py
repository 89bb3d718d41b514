"""The Cityscapes-3D detection score (mDS) on arrays: 2-D matching, AP over score thresholds, the working confidence
and the distance-binned true-positive similarities (swin-cityscapes3d.md section 4).

This follows cityscapesScripts' `evaluation/evalObjectDetection3d.py` (2.2.4 and 2.3.0) step by step; the comments
name the step. Reading and writing the JSON files is `cityscapes3d.py`'s business: here every image is two dicts of
NumPy arrays that already hold the boxes to match.

    gt:   label (g,) int, box (g, 4) xyxy to match, center_V (g, 3), dimensions (g, 3), rotation (g, 4) wxyz,
          ignore (r, 4) xyxy
    pred: label (p,) int, score (p,), box (p, 4) xyxy to match, box_modal (p, 4) xyxy (for the ignore test),
          center_V (p, 3), dimensions (p, 3), rotation (p, 4) wxyz

Predictions keep their file order: matching ties go to the first GT row, then the first prediction column, as in the
official code.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

TP_METRICS = ("Center_Dist", "Size_Similarity", "OS_Yaw", "OS_Pitch_Roll")


def confidence_thresholds(num_conf: int = 50) -> np.ndarray:
    """The score thresholds s (num_conf + 1,): arange(0, 1.01, 1 / num_conf), the official floats (0.06 is
    0.06000000000000001), so that `score >= s` decides exactly as there."""
    return np.arange(0.0, 1.01, 1.0 / num_conf)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU (m, n) of xyxy boxes a (m, 4) and b (n, 4) with the +1-pixel convention (a box [x1, x2] spans
    x2 - x1 + 1 pixels), plus 1e-10 in the denominator, as `calcIouMatrix`."""
    inter = _intersection(a, b)  # (m, n)
    area_a = (a[:, 2] - a[:, 0] + 1) * (a[:, 3] - a[:, 1] + 1)
    area_b = (b[:, 2] - b[:, 0] + 1) * (b[:, 3] - b[:, 1] + 1)
    return inter / (area_a[:, None] + area_b[None, :] - inter + 1e-10)


def box_overlap(regions: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """The fraction (m, n) of each box (n, 4) inside each region (m, 4) (+1-pixel areas, `calcOverlapMatrix`)."""
    area = (boxes[:, 2] - boxes[:, 0] + 1) * (boxes[:, 3] - boxes[:, 1] + 1)
    return _intersection(regions, boxes) / (area[None, :] + 1e-10)


def _intersection(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    lo = np.maximum(a[:, None, :2], b[None, :, :2])  # (m, n, 2)
    hi = np.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = np.maximum(hi - lo + 1, 0)
    return wh[..., 0] * wh[..., 1]


def greedy_match(iou: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Greedy one-to-one matching (`_getMatches`): take the largest IoU while it is > threshold (strict), then drop
    its row and column. Ties go to the first in row-major order. Returns matched (rows, cols), in match order."""
    iou = np.array(iou, dtype=np.float64)  # a copy: rows and columns are zeroed as they are used
    rows, cols = [], []
    while iou.size and iou.max() > threshold:
        r, c = np.unravel_index(int(np.argmax(iou)), iou.shape)
        rows.append(r)
        cols.append(c)
        iou[r, :] = 0.0
        iou[:, c] = 0.0
    return np.asarray(rows, dtype=np.int64), np.asarray(cols, dtype=np.int64)


def average_precision(recall: np.ndarray, precision: np.ndarray) -> float:
    """AP of (recall, precision) points, one per score threshold (`_calculateAp`): sort by recall, pad with
    (0, 0) in front and (1, 0) behind, make precision non-increasing from the right, sum Δr · p over the first
    point of every distinct recall."""
    order = np.argsort(recall, kind="stable")
    r = np.concatenate([[0.0], np.asarray(recall, dtype=np.float64)[order], [1.0]])
    p = np.concatenate([[0.0], np.asarray(precision, dtype=np.float64)[order], [0.0]])
    p = np.maximum.accumulate(p[::-1])[::-1]  # p(r) = max over r' >= r
    step = np.flatnonzero(r[1:] != r[:-1]) + 1
    return float(np.sum((r[step] - r[step - 1]) * p[step]))


def yaw_pitch_roll(q: np.ndarray) -> np.ndarray:
    """The (yaw, pitch, roll) (n, 3) of quaternions [w, x, y, z] (n, 4) exactly as pyquaternion's
    ``Quaternion.yaw_pitch_roll`` defines them (its formulas, after normalising), which the official scores use:

        yaw   = atan2(2 (w z - x y), 1 - 2 (y^2 + z^2))
        pitch = asin(2 (w y + x z))            (clipped to [-1, 1]; pyquaternion would give NaN past it)
        roll  = atan2(2 (w x - y z), 1 - 2 (x^2 + y^2))
    """
    q = np.asarray(q, dtype=np.float64).reshape(-1, 4)
    norm = np.linalg.norm(q, axis=1, keepdims=True)
    w, x, y, z = (q / np.where(norm > 0, norm, 1.0)).T
    yaw = np.arctan2(2 * (w * z - x * y), 1 - 2 * (y * y + z * z))
    pitch = np.arcsin(np.clip(2 * (w * y + z * x), -1.0, 1.0))
    roll = np.arctan2(2 * (w * x - y * z), 1 - 2 * (x * x + y * y))
    return np.stack([yaw, pitch, roll], -1)


def tp_similarities(gt: Mapping[str, np.ndarray], pred: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Size_Similarity, OS_Yaw and OS_Pitch_Roll (k,) of k matched pairs (rows of gt and pred aligned), each in
    [0, 1] (Center_Dist needs max_depth: `_tp_terms` computes it)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.asarray(gt["dimensions"]) / np.asarray(pred["dimensions"])  # (k, 3)
        size = np.prod(np.minimum(ratio, 1.0 / ratio), axis=1)
    a, b = yaw_pitch_roll(gt["rotation"]), yaw_pitch_roll(pred["rotation"])
    return {"Size_Similarity": size,
            "OS_Yaw": (1.0 + np.cos(a[:, 0] - b[:, 0])) / 2.0,
            "OS_Pitch_Roll": 0.5 + (np.cos(a[:, 1] - b[:, 1]) + np.cos(a[:, 2] - b[:, 2])) / 4.0}


@dataclass
class ClassMatches:
    """One image, one class, every threshold t: the matched GT and prediction indices (into the image's arrays) and
    the false positives left after the ignore regions."""

    gt: list[np.ndarray]  # T x (k_t,)
    pred: list[np.ndarray]  # T x (k_t,)
    num_fp: np.ndarray  # (T,) int


def match_class(gt: Mapping[str, np.ndarray], pred: Mapping[str, np.ndarray], class_id: int, thresholds: np.ndarray,
                iou_threshold: float) -> ClassMatches:
    """`_addImageEvaluation` for one class at every threshold: predictions with score >= s are matched greedily to
    the class's GT by IoU > iou_threshold; an unmatched one whose modal box lies more than iou_threshold inside any
    ignore region is dropped, the others are false positives."""
    g = np.flatnonzero(np.asarray(gt["label"]) == class_id)
    p = np.flatnonzero(np.asarray(pred["label"]) == class_id)  # file order
    scores = np.asarray(pred["score"], dtype=np.float64)[p]
    iou = box_iou(_boxes(gt["box"])[g], _boxes(pred["box"])[p])  # (G, P)
    ignore = _boxes(gt.get("ignore", np.zeros((0, 4))))
    # an ignore region may take any number of predictions, so the official greedy pass over the overlap matrix
    # drops exactly the predictions whose largest overlap exceeds the threshold
    covered = (box_overlap(ignore, _boxes(pred["box_modal"])[p]).max(0) > iou_threshold if len(ignore)
               else np.zeros(len(p), dtype=bool))  # (P,)
    out = ClassMatches(gt=[], pred=[], num_fp=np.zeros(len(thresholds), dtype=np.int64))
    done: dict[int, tuple[np.ndarray, np.ndarray, int]] = {}  # number kept -> result (the kept sets are nested)
    for t, s in enumerate(thresholds):
        keep = np.flatnonzero(scores >= s)
        if len(keep) not in done:
            rows, cols = greedy_match(iou[:, keep], iou_threshold)
            unmatched = np.setdiff1d(keep, keep[cols])
            done[len(keep)] = (g[rows], p[keep[cols]], int((~covered[unmatched]).sum()))
        gt_idx, pred_idx, num_fp = done[len(keep)]
        out.gt.append(gt_idx)
        out.pred.append(pred_idx)
        out.num_fp[t] = num_fp
    return out


def _boxes(b) -> np.ndarray:
    return np.asarray(b, dtype=np.float64).reshape(-1, 4)


def binned_score(values: np.ndarray, bins: np.ndarray) -> float:
    """A TP metric's score (`_calculateAUC`): the mean over distance bins of the per-bin means, and 0 unless at
    least two bins hold a value."""
    present = np.unique(bins)
    if len(present) < 2:
        return 0.0
    return float(np.mean([values[bins == b].mean() for b in present]))


def detection_score(images: Sequence[tuple[Mapping[str, np.ndarray], Mapping[str, np.ndarray]]], *,
                    classes: Mapping[str, int], iou_threshold: float = 0.7, max_depth: int = 100, step_size: int = 5,
                    num_conf: int = 50) -> dict:
    """mDS, mAP and the per-class terms of (gt, pred) image pairs; ``classes`` maps each evaluated class name to
    its label id. Classes without GT get their (zero) terms but are left out of mDS and mAP (NaN if none has GT)."""
    if not images:
        raise ValueError("no images to evaluate")
    thresholds = confidence_thresholds(num_conf)
    per_class: dict[str, dict] = {}
    for name, class_id in classes.items():
        num_gt = sum(int(np.sum(np.asarray(gt["label"]) == class_id)) for gt, _ in images)
        matches = [match_class(gt, pred, class_id, thresholds, iou_threshold) for gt, pred in images]
        # AP: one (recall, precision) point per threshold from the dataset's TP / FP / FN sums
        tp = np.sum([[len(idx) for idx in m.gt] for m in matches], axis=0)  # (T,)
        fp = np.sum([m.num_fp for m in matches], axis=0)  # (T,)
        found = tp > 0  # no TP: precision and recall are 0 (not undefined)
        precision = np.where(found, tp / np.where(found, tp + fp, 1), 0.0)
        recall = np.where(found, tp / max(num_gt, 1), 0.0)
        ap = average_precision(recall, precision)
        # the working confidence: the first threshold of largest precision x recall (0 when that is 0)
        f = precision * recall
        cw = int(np.argmax(f)) if f.max() > 0 else 0
        terms = _tp_terms(images, matches, cw, max_depth=max_depth, step_size=step_size)
        per_class[name] = {"AP": ap, "DS": ap * sum(terms.values()) / 4.0, **terms,
                           "working_confidence": float(thresholds[cw]), "num_gt": num_gt}
    scored = [c for c in per_class.values() if c["num_gt"] > 0]
    return {"mDS": float(np.mean([c["DS"] for c in scored])) if scored else float("nan"),
            "mAP": float(np.mean([c["AP"] for c in scored])) if scored else float("nan"),
            "per_class": per_class}


def _tp_terms(images, matches: list[ClassMatches], cw: int, *, max_depth: int, step_size: int) -> dict[str, float]:
    """The four TP metrics of one class at the working confidence, binned by the GT's bird's-eye distance."""
    pairs = [(gt, pred, m.gt[cw], m.pred[cw]) for (gt, pred), m in zip(images, matches) if len(m.gt[cw])]
    if not pairs:
        return dict.fromkeys(TP_METRICS, 0.0)
    fields = ("center_V", "dimensions", "rotation")
    g = {k: np.concatenate([np.asarray(gt[k], dtype=np.float64)[i] for gt, _, i, _ in pairs]) for k in fields}
    p = {k: np.concatenate([np.asarray(pred[k], dtype=np.float64)[j] for _, pred, _, j in pairs]) for k in fields}
    # the GT's distance ||(x_V, y_V)||, truncated to whole metres; TPs at >= max_depth are skipped
    dist = np.sqrt(g["center_V"][:, 0] ** 2 + g["center_V"][:, 1] ** 2).astype(np.int64)  # (k,)
    near = dist < max_depth
    bins = dist[near] // step_size * step_size
    shift = np.sqrt(np.sum((g["center_V"][:, :2] - p["center_V"][:, :2]) ** 2, axis=1))
    values = {"Center_Dist": 1.0 - np.minimum(shift / float(max_depth), 1.0), **tp_similarities(g, p)}
    return {k: binned_score(values[k][near], bins) for k in TP_METRICS}
