"""Depth and surface-normal meters, pooled over every valid pixel of the dataset (not per-image means).

Depth (metres): valid where 0 < gt < max_depth (80); predictions <= 0 are replaced by 1e-9 (as published):
  rmse = sqrt(sum (gt - p)^2 / n), log_rmse = sqrt(sum (ln gt - ln p)^2 / n), abs_rel = sum |gt - p| / gt / n,
  sq_rel = sum (gt - p)^2 / gt / n, delta{i} = 100 * #(max(p/gt, gt/p) < 1.25^i) / n.
Normals (degrees): valid where gt is not all zero (and not the released 255 fill); both vectors L2-normalised;
  err = 2 atan2(|p - g|, |p + g|) (accurate at small and large angles, unlike acos of a dot product);
  mean, rmse = sqrt(mean err^2), within_X = 100 * #(err < X) / n for X = 11.25, 22.5, 30, and median from
  a fixed 18000-bin histogram over [0, 180] (0.01 degree bins; a middle rank is read as its bin's centre):
  within 0.005 degree of the exact median, with a fixed-size state that one all_reduce merges.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from ..tasks import IGNORE_INDEX
from .base import Meter, check_spatial

NORMALS_HIST_BINS = 18000  # 0.01 degree bins over [0, 180]


def _as_map(target: Tensor, channels: int, name: str) -> Tensor:
    if target.dim() == 3 and channels == 1:
        target = target[:, None]
    if target.dim() != 4 or target.shape[1] != channels:
        raise ValueError(f"{name} target must be (B, {channels}, H, W), got {tuple(target.shape)}")
    return target.float()


class DepthMeter(Meter):
    task = "depth"

    def __init__(self, *, max_depth: float = 80.0, min_pred: float = 1e-9) -> None:
        self.max_depth = max_depth
        self.min_pred = min_pred
        # [n, sum sq, sum sq log, sum abs rel, sum sq rel, n delta1, n delta2, n delta3]
        self.sums = torch.zeros(8, dtype=torch.float64)

    def state_tensors(self) -> list[Tensor]:
        return [self.sums]

    @torch.no_grad()
    def update(self, output: Tensor, target: Tensor) -> None:
        target = _as_map(target, 1, "depth")
        check_spatial(output, target, "depth")
        valid = (target > 0) & (target < self.max_depth) & torch.isfinite(target)
        gt = target[valid].double()
        pred = output.float()[:, :1][valid].double()
        pred = torch.where(pred > 0, pred, torch.full_like(pred, self.min_pred))
        diff = gt - pred
        ratio = torch.maximum(pred / gt, gt / pred)
        self.sums += torch.stack([
            torch.tensor(float(gt.numel()), dtype=torch.float64, device=gt.device),
            (diff**2).sum(), ((gt.log() - pred.log()) ** 2).sum(), (diff.abs() / gt).sum(), (diff**2 / gt).sum(),
            (ratio < 1.25).sum(), (ratio < 1.25**2).sum(), (ratio < 1.25**3).sum(),
        ]).double().cpu()  # fmt: skip

    def compute(self) -> dict[str, float]:
        n, sq, sq_log, abs_rel, sq_rel, d1, d2, d3 = self.sums.tolist()
        if n == 0:
            return dict.fromkeys(("rmse", "log_rmse", "abs_rel", "sq_rel", "delta1", "delta2", "delta3"), float("nan"))
        return {
            "rmse": math.sqrt(sq / n), "log_rmse": math.sqrt(sq_log / n), "abs_rel": abs_rel / n, "sq_rel": sq_rel / n,
            "delta1": 100 * d1 / n, "delta2": 100 * d2 / n, "delta3": 100 * d3 / n,
        }  # fmt: skip


def angular_error(pred: Tensor, target: Tensor) -> Tensor:
    """Angle in degrees between (N, 3) vectors after L2 normalisation: 2 atan2(|p - g|, |p + g|)."""
    p = F.normalize(pred.double(), dim=1)
    g = F.normalize(target.double(), dim=1)
    return torch.rad2deg(2 * torch.atan2((p - g).norm(dim=1), (p + g).norm(dim=1)))


class NormalsMeter(Meter):
    task = "normals"

    def __init__(self) -> None:
        self.sums = torch.zeros(6, dtype=torch.float64)  # [n, sum err, sum err^2, n < 11.25, n < 22.5, n < 30]
        self.histogram = torch.zeros(NORMALS_HIST_BINS, dtype=torch.float64)

    def state_tensors(self) -> list[Tensor]:
        return [self.sums, self.histogram]

    @torch.no_grad()
    def update(self, output: Tensor, target: Tensor) -> None:
        target = _as_map(target, 3, "normals")
        check_spatial(output, target, "normals")
        valid = (target != 0).any(1) & ~(target == IGNORE_INDEX).all(1) & torch.isfinite(target).all(1)  # (B, H, W)
        pred = output.float().permute(0, 2, 3, 1)[valid]  # (N, 3)
        gt = target.permute(0, 2, 3, 1)[valid]
        err = angular_error(pred, gt)
        bins = torch.clamp((err * (NORMALS_HIST_BINS / 180.0)).long(), 0, NORMALS_HIST_BINS - 1)
        self.histogram += torch.bincount(bins, minlength=NORMALS_HIST_BINS).double().cpu()
        self.sums += torch.stack([
            torch.tensor(float(err.numel()), dtype=torch.float64, device=err.device),
            err.sum(), (err**2).sum(), (err < 11.25).sum(), (err < 22.5).sum(), (err < 30).sum(),
        ]).double().cpu()  # fmt: skip

    def median(self) -> float:
        """Median from the histogram: the centre of the bin holding each middle rank (averaged for even n)."""
        n = int(self.sums[0].item())
        cum = self.histogram.cumsum(0)
        ranks = torch.tensor([(n + 1) // 2, n // 2 + 1], dtype=torch.float64)  # 1-based middle ranks
        bins = torch.searchsorted(cum, ranks)  # first bin whose cumulative count reaches the rank
        width = 180.0 / NORMALS_HIST_BINS
        return ((bins.double() + 0.5) * width).mean().item() if n % 2 == 0 else (bins[0].item() + 0.5) * width

    def compute(self) -> dict[str, float]:
        n, total, total_sq, w11, w22, w30 = self.sums.tolist()
        if n == 0:
            keys = ("mean", "median", "rmse", "within_11.25", "within_22.5", "within_30")
            return dict.fromkeys(keys, float("nan"))
        return {
            "mean": total / n, "median": self.median(), "rmse": math.sqrt(total_sq / n),
            "within_11.25": 100 * w11 / n, "within_22.5": 100 * w22 / n, "within_30": 100 * w30 / n,
        }  # fmt: skip
