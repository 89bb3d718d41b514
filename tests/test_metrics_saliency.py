from __future__ import annotations

import pytest
import torch

from taskprompter.metrics import build_meter


def _two_class_logits(prob: torch.Tensor) -> torch.Tensor:
    """Logits (B, 2, H, W) whose softmax[1] is prob."""
    return torch.stack([torch.zeros_like(prob), torch.log(prob / (1 - prob))], dim=1)


def _naive_max_f(score: torch.Tensor, gt: torch.Tensor, thresholds) -> float:
    best = 0.0
    for t in thresholds:
        pos = score >= t
        tp, pp, ap = (pos & gt).sum().item(), pos.sum().item(), gt.sum().item()
        if tp == 0:
            continue  # precision 0 or NaN -> F 0
        p, r = tp / pp, tp / ap
        best = max(best, 1.3 * p * r / (0.3 * p + r))
    return 100 * best


def test_published_max_f_quirk_extra_sigmoid_cannot_separate_small_probabilities():
    # positives p = 0.02, negatives p = 0.01: thresholds on p separate them perfectly (maxF_exact = 100), but
    # sigmoid(p) is 0.505 / 0.5025, both between the published thresholds 0.50 and 0.55 -> predict all positive.
    prob = torch.tensor([[[0.02, 0.02, 0.01, 0.01, 0.01]]], dtype=torch.float64)
    gt = torch.tensor([[[1, 1, 0, 0, 255]]])
    meter = build_meter("sal")
    meter.update(_two_class_logits(prob), gt)
    out = meter.compute()
    p, r = 2 / 4, 1.0  # all 4 valid pixels predicted positive at t = 0.5
    assert out["maxF"] == pytest.approx(100 * 1.3 * p * r / (0.3 * p + r), rel=1e-6)
    assert out["maxF_exact"] == pytest.approx(100.0)


def test_both_variants_match_a_naive_loop_and_are_split_invariant():
    torch.manual_seed(3)
    logits = torch.randn(3, 2, 7, 8) * 3
    gt = torch.randint(0, 2, (3, 7, 8))
    gt[2, :2] = 255
    whole, a, b = build_meter("sal"), build_meter("sal"), build_meter("sal")
    whole.update(logits, gt)
    a.update(logits[:2], gt[:2])
    b.update(logits[2:], gt[2:])
    a.merge(b)
    out = whole.compute()
    assert a.compute() == pytest.approx(out)
    valid = gt != 255
    prob = torch.softmax(logits, 1)[:, 1][valid]
    g = gt[valid] == 1
    published = _naive_max_f(torch.sigmoid(prob), g, torch.arange(0.05, 1, 0.05).tolist())
    exact = _naive_max_f(prob.double(), g, [k / 255 for k in range(1, 256)])
    assert out["maxF"] == pytest.approx(published, rel=1e-6)
    assert out["maxF_exact"] == pytest.approx(exact, rel=1e-6)


def test_no_positive_prediction_gives_zero_not_nan():
    meter = build_meter("sal")
    meter.update(_two_class_logits(torch.full((1, 2, 2), 1e-4, dtype=torch.float64)), torch.zeros(1, 2, 2).long())
    out = meter.compute()
    assert out["maxF"] == 0.0 and out["maxF_exact"] == 0.0
