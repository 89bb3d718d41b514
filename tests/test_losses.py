from __future__ import annotations

import math

import pytest
import torch

from taskprompter.errors import ConfigError, DataError
from taskprompter.losses import LOSSES, MultiTaskLoss, edge_loss, normals_loss, saliency_loss


def _ce(logits: list[float], label: int) -> float:
    return -logits[label] + math.log(sum(math.exp(v) for v in logits))


def test_cross_entropy_pooled_over_valid_pixels_of_the_batch():
    logits = torch.tensor([[[[2.0, 0.0]], [[0.0, 1.0]]], [[[0.5, 0.0]], [[0.0, 0.0]]]])  # (B=2, C=2, 1, 2)
    target = torch.tensor([[[0, 1]], [[1, 255]]])
    expected = (_ce([2.0, 0.0], 0) + _ce([0.0, 1.0], 1) + _ce([0.5, 0.0], 1)) / 3  # not a mean of image means
    assert LOSSES["semseg"](logits, target).item() == pytest.approx(expected, rel=1e-6)


def test_saliency_class_weights_from_the_batch():
    logits = torch.tensor([[[[1.0, -1.0, 0.0, 3.0]], [[0.0, 2.0, 1.0, 0.0]]]])  # (1, 2, 1, 4)
    target = torch.tensor([[[1, 0, 0, 255]]])
    w = 2 / 3  # negatives / valid: positives weigh 2/3, negatives 1/3
    expected = (w * _ce([1.0, 0.0], 1) + (1 - w) * _ce([-1.0, 2.0], 0) + (1 - w) * _ce([0.0, 1.0], 0)) / 3
    assert saliency_loss(logits, target).item() == pytest.approx(expected, rel=1e-6)


def test_edge_loss_weights_positive_095_negative_005():
    logits = torch.tensor([[[[0.0, 0.0, 2.0, 5.0]]]])  # (1, 1, 1, 4)
    target = torch.tensor([[[1, 0, 1, 255]]])
    expected = (0.95 * math.log(2) + 0.05 * math.log(2) + 0.95 * math.log(1 + math.exp(-2))) / 3
    assert edge_loss(logits, target).item() == pytest.approx(expected, rel=1e-6)


def test_normals_loss_normalises_prediction_and_skips_zero_normals():
    pred = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0], [5.0, 5.0, 5.0]]).T.reshape(1, 3, 1, 3)
    target = torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]]).T.reshape(1, 3, 1, 3)
    assert normals_loss(pred, target).item() == pytest.approx((0.0 + 2.0) / 2)


def test_depth_loss_l1_over_valid():
    pred = torch.tensor([[[[1.0, 2.0, 7.0]]]])
    target = torch.tensor([[[[1.5, 4.0, 0.0]]]])
    assert LOSSES["depth"](pred, target).item() == pytest.approx((0.5 + 2.0) / 2)


def test_logits_at_lower_resolution_are_resized_to_the_labels():
    logits = torch.randn(1, 3, 4, 4)
    target = torch.randint(0, 3, (1, 8, 8))
    up = torch.nn.functional.interpolate(logits, size=(8, 8), mode="bilinear", align_corners=False)
    assert LOSSES["semseg"](logits, target).item() == pytest.approx(LOSSES["semseg"](up, target).item())


def _batch(b: int, h: int, w: int, *, all_ignore: bool) -> tuple[dict, dict]:
    ign = torch.full((b, h, w), 255)
    outputs = {t: torch.randn(b, c, h, w, requires_grad=True) for t, c in
               {"semseg": 21, "depth": 1, "human_parts": 7, "sal": 2, "normals": 3, "edge": 1}.items()}  # fmt: skip
    if all_ignore:
        batch = {"semseg": ign, "human_parts": ign, "sal": ign, "edge": ign,
                 "depth": torch.zeros(b, 1, h, w), "normals": torch.zeros(b, 3, h, w)}  # fmt: skip
    else:
        batch = {"semseg": torch.randint(0, 21, (b, h, w)), "human_parts": torch.randint(0, 7, (b, h, w)),
                 "sal": torch.randint(0, 2, (b, h, w)), "edge": torch.randint(0, 2, (b, h, w)),
                 "depth": torch.rand(b, 1, h, w) + 0.1, "normals": torch.randn(b, 3, h, w)}  # fmt: skip
    return outputs, batch


def test_all_ignore_batch_gives_zero_loss_and_zero_gradient():
    outputs, batch = _batch(2, 5, 6, all_ignore=True)
    losses = MultiTaskLoss(list(outputs))(outputs, batch)
    assert all(v.item() == 0.0 for v in losses.values())
    losses["total"].backward()
    for t, o in outputs.items():
        assert o.grad is not None and torch.all(o.grad == 0), t


def test_all_ignore_image_contributes_nothing():
    outputs, batch = _batch(1, 5, 6, all_ignore=False)
    _, ignored = _batch(1, 5, 6, all_ignore=True)
    both_out = {t: torch.cat([o, torch.randn_like(o)]) for t, o in outputs.items()}
    both_batch = {t: torch.cat([batch[t], ignored[t]]) for t in batch}
    crit = MultiTaskLoss(list(outputs))
    one, two = crit(outputs, batch), crit(both_out, both_batch)
    for key in one:
        assert two[key].item() == pytest.approx(one[key].item(), rel=1e-5), key


def test_total_is_weighted_sum_with_released_defaults_and_overrides():
    outputs, batch = _batch(2, 4, 4, all_ignore=False)
    losses = MultiTaskLoss(list(outputs))(outputs, batch)
    defaults = {"semseg": 1, "depth": 1, "human_parts": 2, "sal": 5, "normals": 10, "edge": 50}
    assert set(losses) == set(defaults) | {"total"}
    expected = sum(defaults[t] * losses[t].item() for t in defaults)
    assert losses["total"].item() == pytest.approx(expected, rel=1e-6)
    custom = MultiTaskLoss(["semseg", "edge"], weights={"edge": 3.0})(outputs, batch)
    assert custom["total"].item() == pytest.approx(losses["semseg"].item() + 3 * losses["edge"].item(), rel=1e-6)


def test_user_mistakes_are_named():
    with pytest.raises(ConfigError, match="segm"):
        MultiTaskLoss(["segm"])
    outputs, batch = _batch(1, 4, 4, all_ignore=False)
    del batch["edge"]
    with pytest.raises(DataError, match="edge"):
        MultiTaskLoss(["edge"])(outputs, batch)


def _multitask_batch(gen: torch.Generator, B: int) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Random logits and labels for all six tasks, with ignore regions of random size (unequal valid counts)."""
    H = W = 6
    outputs = {t: torch.randn(B, c, H, W, generator=gen, dtype=torch.float64).requires_grad_()
               for t, c in {"semseg": 5, "depth": 1, "human_parts": 3, "sal": 2, "normals": 3, "edge": 1}.items()}
    ignore = torch.rand(B, H, W, generator=gen) < torch.rand(B, 1, 1, generator=gen)
    batch = {
        "semseg": torch.randint(0, 5, (B, H, W), generator=gen).masked_fill(ignore, 255),
        "human_parts": torch.randint(0, 3, (B, H, W), generator=gen).masked_fill(ignore, 255),
        "sal": torch.randint(0, 2, (B, H, W), generator=gen).masked_fill(ignore, 255),
        "edge": torch.randint(0, 2, (B, H, W), generator=gen).masked_fill(ignore, 255),
        "depth": (torch.rand(B, 1, H, W, generator=gen) + 0.5).masked_fill(ignore[:, None], 0.0),
        "normals": torch.nn.functional.normalize(torch.randn(B, 3, H, W, generator=gen), dim=1).masked_fill(
            ignore[:, None], 0.0),
    }
    return outputs, batch


def test_shares_of_micro_batches_add_up_to_the_whole_batch_loss_and_gradient():
    """Global normalisation: k micro-batches (or processes) normalised by the statistics of the whole batch give
    exactly the loss and the gradient of that batch -- whatever their valid-pixel counts."""
    gen = torch.Generator().manual_seed(0)
    outputs, batch = _multitask_batch(gen, B=5)
    criterion = MultiTaskLoss(list(outputs))
    whole = criterion(outputs, batch)
    grads = torch.autograd.grad(whole["total"], list(outputs.values()))
    parts = [slice(0, 1), slice(1, 3), slice(3, 5)]  # unequal micro-batches
    micro = [({t: v[p] for t, v in outputs.items()}, {t: v[p] for t, v in batch.items()}) for p in parts]
    stats = {t: sum(criterion.batch_stats(b)[t] for _, b in micro) for t in criterion.tasks}
    assert all(torch.equal(stats[t], criterion.batch_stats(batch)[t]) for t in stats)
    shares = [criterion(o, b, stats) for o, b in micro]
    for key in whole:
        assert sum(s[key] for s in shares).item() == pytest.approx(whole[key].item(), rel=1e-6), key  # fp32 losses
    share_grads = torch.autograd.grad(sum(s["total"] for s in shares), list(outputs.values()))
    for g, h in zip(grads, share_grads, strict=True):
        torch.testing.assert_close(g, h, rtol=1e-5, atol=1e-9)
    # the released per-micro-batch normalisation does not add up (the batches' valid counts differ)
    local = [criterion(o, b) for o, b in micro]
    assert abs(sum(s["human_parts"] for s in local).item() / len(parts) - whole["human_parts"].item()) > 1e-3


def test_disparity_loss_counts_zero_and_skips_minus_one():
    # Cityscapes-3D's released encoding: -1 = invalid, 0 = a valid (far) disparity; depth in metres: 0 = invalid
    pred = torch.tensor([[[[1.0, 2.0, 3.0, 4.0]]]])  # (1, 1, 1, 4)
    target = torch.tensor([[[[0.0, 2.5, -1.0, 1.0]]]])
    disparity = MultiTaskLoss(["depth"], zero_depth_valid=True)
    metres = MultiTaskLoss(["depth"])
    assert disparity({"depth": pred}, {"depth": target})["depth"].item() == pytest.approx((1 + 0.5 + 3) / 3)
    assert metres({"depth": pred}, {"depth": target})["depth"].item() == pytest.approx((0.5 + 3) / 2)
    assert disparity.batch_stats({"depth": target})["depth"].tolist() == [3]
    assert metres.batch_stats({"depth": target})["depth"].tolist() == [2]


def test_the_detection_loss_takes_only_the_detectors_outputs():
    loss = MultiTaskLoss(["semseg", "3ddet"])  # every task has a loss now (3ddet: tests/test_detection3d.py)
    batch = {"semseg": torch.zeros(1, 2, 2, dtype=torch.long), "3ddet": [{"label": torch.zeros(0)}]}
    with pytest.raises(TypeError, match="DetectionOutputs"):
        loss({"semseg": torch.zeros(1, 19, 2, 2), "3ddet": [torch.zeros(1, 8, 2, 2)]}, batch)
