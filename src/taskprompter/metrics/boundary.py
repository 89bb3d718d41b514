"""Boundary detection F-measure (odsF, oisF, AP) computed the way the published numbers were (SEISM), in Python.

Per image (released-code.md section 7):
  1. E = the soft boundary map in [0, 1] (the meter quantises sigmoid(logit) to uint8 / 255 first, as the
     published PNG round trip did);
  2. non-maximum suppression of E along the orientation of convTri(E, 4) (`boundary_nms`);
  3. for each of the 101 thresholds 0.001, 0.01, 0.02, ..., 0.99, 0.999: B = thin(E_nms > t) (strict `>`,
     `data.thinning.thin` == bwmorph 'thin' Inf);
  4. matched = maximum one-to-one correspondence between B and the GT boundary pixels within
     max_dist * image diagonal (`matching`); counts [cntR, sumR, cntP, sumP] = [matched, #GT, matched, #B].
Over the dataset, with R = cntR / sumR (1 when sumR = 0) and P = cntP / sumP (1 when sumP = 0), F = 2PR/(P+R):
  ODS = max over thresholds of F from counts summed over images (no interpolation between thresholds);
  OIS = F from the sum over images of each image's counts at its own first best threshold;
  AP  = precision linearly interpolated at recall 0, 0.01, ..., 1 over the distinct recall values (for a
        recall reached at several thresholds, the lowest threshold's precision), NaN outside the recalled
        range, sum of the non-NaN values / 100.
Speed: the NMS runs once per image; the tolerance graph is built once for every pixel any threshold can
predict, and each threshold only thins its own pixels and matches its own rows (see benchmarks/bench_boundary.py).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from ..data.thinning import thin
from ..tasks import DATASET_SPECS, IGNORE_INDEX
from .base import Meter, as_labels, check_spatial
from .boundary_nms import nms_boundaries
from .matching import CandidateGraph

# The published 101 thresholds: 0.001, 0.01, 0.02, ..., 0.99, 0.999.
SEISM_THRESHOLDS = np.array([0.001] + [k / 100 for k in range(1, 100)] + [0.999])
# Tolerance when no dataset is named (evaluate_boundaries, custom datasets): PASCAL-Context's. Per dataset: the table.
DEFAULT_MAX_DIST: float = DATASET_SPECS["pascal_context"].boundary_max_dist


def make_thresholds(thresholds: int | Sequence[float] | np.ndarray = 101) -> np.ndarray:
    """101 -> the published list; another int n -> BSDS's linspace(1/(n+1), 1 - 1/(n+1), n); a list -> itself."""
    if isinstance(thresholds, int):
        if thresholds == 101:
            return SEISM_THRESHOLDS.copy()
        return np.linspace(1 / (thresholds + 1), 1 - 1 / (thresholds + 1), thresholds)
    out = np.sort(np.asarray(thresholds, dtype=np.float64))
    if out.ndim != 1 or out.size == 0:
        raise ValueError(f"thresholds must be a non-empty 1-D list, got {thresholds!r}")
    return out


def image_counts(
    pred: np.ndarray, gt: np.ndarray, *, max_dist: float, thresholds: np.ndarray, nms: bool = True
) -> np.ndarray:
    """(T, 4) counts [cntR, sumR, cntP, sumP] of one image at every threshold (ascending)."""
    if pred.shape != gt.shape or pred.ndim != 2:
        raise ValueError(f"pred {pred.shape} and gt {gt.shape} must be the same 2-D shape")
    edges = np.asarray(pred, dtype=np.float32)
    if nms:
        edges = nms_boundaries(edges)
    gt = np.asarray(gt) > 0
    h, w = gt.shape
    graph = CandidateGraph(edges > thresholds.min(), gt, max_dist * float(np.hypot(h, w)))
    counts = np.zeros((thresholds.size, 4), dtype=np.float64)
    counts[:, 1] = gt.sum()
    last_size, last_row = -1, None
    for k in np.argsort(-thresholds, kind="stable"):  # descending: growing sets warm-start the matching
        t = thresholds[k]
        binary = edges > t
        size = int(binary.sum())
        if size == last_size:  # nested sets of equal size are equal: same thinning, same matching
            counts[k] = last_row
            continue
        predicted = thin(binary)
        matched = graph.count_matches(predicted)
        counts[k] = (matched, gt.sum(), matched, predicted.sum())
        last_size, last_row = size, counts[k].copy()
    return counts


def recall_precision(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """R, P from [..., 4] counts: R = 1 without GT pixels, P = 1 without predicted pixels."""
    cnt_r, sum_r, cnt_p, sum_p = np.moveaxis(counts, -1, 0)
    recall = np.where(sum_r > 0, cnt_r / np.maximum(sum_r, 1), 1.0)
    precision = np.where(sum_p > 0, cnt_p / np.maximum(sum_p, 1), 1.0)
    return recall, precision


def f_measure(recall: np.ndarray, precision: np.ndarray) -> np.ndarray:
    total = precision + recall
    return np.where(total > 0, 2 * precision * recall / np.where(total > 0, total, 1), 0.0)


def best_image_counts(counts: np.ndarray) -> np.ndarray:
    """The (4,) counts of an image at its first best threshold (for OIS)."""
    return counts[int(np.argmax(f_measure(*recall_precision(counts))))]


def summarize(threshold_counts: np.ndarray, ois_counts: np.ndarray) -> dict[str, float]:
    """{"odsF", "oisF", "ap"} in [0, 1] from counts summed over images."""
    recall, precision = recall_precision(threshold_counts)
    ods = float(f_measure(recall, precision).max())
    ois = float(f_measure(*recall_precision(ois_counts)))
    distinct, first = np.unique(recall, return_index=True)  # ascending recall, first (lowest) threshold
    sampled = np.interp(np.linspace(0, 1, 101), distinct, precision[first], left=np.nan, right=np.nan)
    ap = float(np.nansum(sampled) / 100)
    return {"odsF": ods, "oisF": ois, "ap": ap}


def evaluate_boundaries(
    preds: Sequence[np.ndarray],
    gts: Sequence[np.ndarray],
    max_dist: float = DEFAULT_MAX_DIST,
    thresholds: int | Sequence[float] = 101,
    nms: bool = True,
) -> dict[str, float]:
    """SEISM-style odsF / oisF / AP (fractions in [0, 1]) for soft maps in [0, 1] and binary GT, one pair per image."""
    if len(preds) != len(gts):
        raise ValueError(f"got {len(preds)} predictions and {len(gts)} ground truths")
    ts = make_thresholds(thresholds)
    total = np.zeros((ts.size, 4))
    ois = np.zeros(4)
    for pred, gt in zip(preds, gts):
        counts = image_counts(np.asarray(pred), np.asarray(gt), max_dist=max_dist, thresholds=ts, nms=nms)
        total += counts
        ois += best_image_counts(counts)
    return summarize(total, ois)


def quantize(prob: Tensor) -> Tensor:
    """What the published PNG round trip does: uint8(prob * 255) (truncation), read back as v / 255."""
    return (prob * 255).to(torch.uint8).float() / 255


class BoundaryMeter(Meter):
    """odsF / oisF / AP x 100 for edge logits (B, 1, H, W) against edge labels (B, H, W) (1 boundary, 255 ignore).

    Each image is cropped to the bounding box of its non-ignore labels (the padding), like the published
    predictions that were un-padded before evaluation; ignore pixels left inside that box count as
    non-boundary. Images without any non-ignore pixel are skipped.
    """

    task = "edge"

    def __init__(
        self,
        *,
        max_dist: float = DEFAULT_MAX_DIST,
        thresholds: int | Sequence[float] = 101,
        nms: bool = True,
        quantize: bool = True,
        ignore_index: int = IGNORE_INDEX,
    ) -> None:
        self.max_dist = max_dist
        self.thresholds = make_thresholds(thresholds)
        self.nms = nms
        self.quantize = quantize
        self.ignore_index = ignore_index
        self.counts = torch.zeros(self.thresholds.size, 4, dtype=torch.float64)  # summed [cntR, sumR, cntP, sumP]
        self.ois_counts = torch.zeros(4, dtype=torch.float64)
        self.images = torch.zeros(1, dtype=torch.float64)

    def state_tensors(self) -> list[Tensor]:
        return [self.counts, self.ois_counts, self.images]

    @torch.no_grad()
    def update(self, output: Tensor, target: Tensor) -> None:
        target = as_labels(target, "edge")
        check_spatial(output, target, "edge")
        prob = torch.sigmoid(output[:, 0].float())  # (B, H, W)
        if self.quantize:
            prob = quantize(prob)
        prob, target = prob.cpu().numpy(), target.cpu().numpy()
        for p, t in zip(prob, target):
            valid = t != self.ignore_index
            if not valid.any():
                continue
            rows, cols = np.flatnonzero(valid.any(1)), np.flatnonzero(valid.any(0))
            box = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
            counts = image_counts(p[box], t[box] == 1, max_dist=self.max_dist, thresholds=self.thresholds, nms=self.nms)
            self.counts += torch.from_numpy(counts)
            self.ois_counts += torch.from_numpy(best_image_counts(counts))
            self.images += 1

    def compute(self) -> dict[str, float]:
        if self.images.item() == 0:
            return {"odsF": float("nan"), "oisF": float("nan"), "ap": float("nan")}
        scores = summarize(self.counts.numpy(), self.ois_counts.numpy())
        return {k: 100 * v for k, v in scores.items()}
