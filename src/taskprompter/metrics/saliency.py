"""Saliency maxF: the published (compatible) value and an exact one, side by side.

Both pool true positives, predicted positives and actual positives over every valid pixel of the dataset at
each threshold, F_beta = (1 + b2) P R / (b2 P + R) with b2 = 0.3, NaN -> 0, and report the max over thresholds
x 100. With p = softmax(logits)[1] (or sigmoid of a single logit):
  maxF       (published) predicts positive where sigmoid(p) >= t for t = 0.05, 0.10, ..., 0.95 (torch.arange
             in float32, as released). The extra sigmoid maps p in [0, 1] to [0.5, 0.73], so only the
             thresholds 0.5 .. 0.7 (5 of 19) separate anything: a coarse and shifted operating-point search.
  maxF_exact predicts positive where p >= k / 255 for k = 1..255: the usual saliency maxF on the probability.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..tasks import IGNORE_INDEX
from .base import Meter, as_labels, check_spatial


def _pooled_counts(score: Tensor, gt: Tensor, thresholds: Tensor) -> Tensor:
    """(K, 3) [TP, predicted positives, actual positives] at every ascending threshold (positive: score >= t)."""
    k = thresholds.numel()
    passed = torch.bucketize(score, thresholds.to(score), right=True)  # number of thresholds <= score, 0..K
    above = torch.bincount(passed, minlength=k + 1).flip(0).cumsum(0).flip(0)[1:]  # [j]: #(passed > j)
    tp = torch.bincount(passed[gt], minlength=k + 1).flip(0).cumsum(0).flip(0)[1:]
    return torch.stack([tp, above, gt.sum().expand_as(tp)], dim=1).double().cpu()


def max_f(counts: Tensor, beta_squared: float = 0.3) -> float:
    tp, pp, ap = counts.unbind(1)
    precision, recall = tp / pp, tp / ap
    f = (1 + beta_squared) * precision * recall / (beta_squared * precision + recall)
    return 100 * torch.nan_to_num(f, nan=0.0).max().item()


class SaliencyMeter(Meter):
    task = "sal"

    def __init__(self, *, beta_squared: float = 0.3, ignore_index: int = IGNORE_INDEX) -> None:
        self.beta_squared = beta_squared
        self.ignore_index = ignore_index
        self.published_thresholds = torch.arange(0.05, 1, 0.05)  # float32, 19 values, as released
        self.exact_thresholds = torch.arange(1, 256, dtype=torch.float64) / 255
        self.published = torch.zeros(len(self.published_thresholds), 3, dtype=torch.float64)
        self.exact = torch.zeros(len(self.exact_thresholds), 3, dtype=torch.float64)

    def state_tensors(self) -> list[Tensor]:
        return [self.published, self.exact]

    @torch.no_grad()
    def update(self, output: Tensor, target: Tensor) -> None:
        target = as_labels(target, "sal")
        check_spatial(output, target, "sal")
        if output.shape[1] == 2:
            prob = torch.softmax(output.float(), dim=1)[:, 1]  # (B, H, W)
        elif output.shape[1] == 1:
            prob = torch.sigmoid(output[:, 0].float())
        else:
            raise ValueError(f"sal: output must have 2 (two-class) or 1 channel, got {output.shape[1]}")
        valid = target != self.ignore_index
        prob, gt = prob[valid], target[valid] > 0
        self.published += _pooled_counts(torch.sigmoid(prob), gt, self.published_thresholds)  # the extra sigmoid
        self.exact += _pooled_counts(prob.double(), gt, self.exact_thresholds)

    def compute(self) -> dict[str, float]:
        return {"maxF": max_f(self.published, self.beta_squared), "maxF_exact": max_f(self.exact, self.beta_squared)}
