from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from taskprompter.metrics import build_meter
from taskprompter.metrics.regression import angular_error


def test_depth_hand_computed_with_invalid_pixels_and_nonpositive_prediction():
    gt = torch.tensor([[[[2.0, 4.0, 0.0, 90.0, 1.0]]]])  # 0 and >= 80 are invalid
    pred = torch.tensor([[[[1.0, 5.0, 3.0, 3.0, -2.0]]]])  # -2 -> 1e-9
    meter = build_meter("depth")
    meter.update(pred, gt)
    out = meter.compute()
    p = [1.0, 5.0, 1e-9]
    g = [2.0, 4.0, 1.0]
    n = 3
    assert out["rmse"] == pytest.approx(math.sqrt(sum((a - b) ** 2 for a, b in zip(g, p)) / n))
    assert out["log_rmse"] == pytest.approx(math.sqrt(sum((math.log(a) - math.log(b)) ** 2 for a, b in zip(g, p)) / n))
    assert out["abs_rel"] == pytest.approx(sum(abs(a - b) / a for a, b in zip(g, p)) / n)
    assert out["sq_rel"] == pytest.approx(sum((a - b) ** 2 / a for a, b in zip(g, p)) / n)
    # ratios 2, 1.25, 1e9: < 1.25 none; < 1.5625: one; < 1.953: one
    assert (out["delta1"], out["delta2"], out["delta3"]) == pytest.approx((0.0, 100 / 3, 100 / 3))


def test_depth_split_batch_invariance():
    torch.manual_seed(1)
    pred, gt = torch.rand(3, 1, 5, 6) * 10, torch.rand(3, 1, 5, 6) * 10
    gt[1] = 0  # an image with no valid pixel
    whole, a, b = build_meter("depth"), build_meter("depth"), build_meter("depth")
    whole.update(pred, gt)
    a.update(pred[:2], gt[:2])
    b.update(pred[2:], gt[2:])
    a.merge(b)
    assert a.compute() == pytest.approx(whole.compute())


def test_normals_hand_computed_angles_and_invalid_pixels():
    # pixels: same direction (0 deg), 90 deg, 180 deg, invalid (all-zero gt); prediction not normalised
    pred = torch.tensor([[3.0, 0, 0], [0, 2.0, 0], [-1.0, 0, 0], [1.0, 0, 0]]).T.reshape(1, 3, 1, 4)
    gt = torch.tensor([[1.0, 0, 0], [1.0, 0, 0], [1.0, 0, 0], [0.0, 0, 0]]).T.reshape(1, 3, 1, 4)
    meter = build_meter("normals")
    meter.update(pred, gt)
    out = meter.compute()
    assert out["mean"] == pytest.approx(90.0)
    assert out["rmse"] == pytest.approx(math.sqrt((0 + 90**2 + 180**2) / 3))
    assert out["median"] == pytest.approx(90.0, abs=0.01)
    assert out["within_11.25"] == pytest.approx(100 / 3) and out["within_30"] == pytest.approx(100 / 3)


def test_angular_error_is_accurate_for_tiny_angles():
    theta = 1e-6  # radians; acos(dot) loses this entirely in float32
    p = torch.tensor([[math.cos(theta), math.sin(theta), 0.0]])
    g = torch.tensor([[1.0, 0.0, 0.0]])
    assert angular_error(p, g).item() == pytest.approx(math.degrees(theta), rel=1e-6)


def test_normals_median_within_histogram_resolution_and_split_invariance():
    torch.manual_seed(2)
    pred, gt = torch.randn(4, 3, 8, 9), torch.randn(4, 3, 8, 9)
    gt[0, :, :2] = 0
    whole, a, b = build_meter("normals"), build_meter("normals"), build_meter("normals")
    whole.update(pred, gt)
    a.update(pred[:1], gt[:1])
    b.update(pred[1:], gt[1:])
    a.merge(b)
    assert a.compute() == pytest.approx(whole.compute())
    valid = (gt != 0).any(1)
    errors = angular_error(pred.permute(0, 2, 3, 1)[valid], gt.permute(0, 2, 3, 1)[valid]).numpy()
    out = whole.compute()
    assert out["median"] == pytest.approx(float(np.median(errors)), abs=0.005)
    assert out["mean"] == pytest.approx(float(errors.mean()))
    assert out["within_22.5"] == pytest.approx(100 * float((errors < 22.5).mean()))
