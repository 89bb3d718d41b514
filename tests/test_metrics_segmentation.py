from __future__ import annotations

import pytest
import torch

from taskprompter.errors import DataError
from taskprompter.metrics import build_meter, build_meters


def _onehot_logits(pred: torch.Tensor, num_classes: int) -> torch.Tensor:
    return torch.nn.functional.one_hot(pred, num_classes).permute(0, 3, 1, 2).float()  # (B, C, H, W)


def test_miou_hand_computed_with_absent_class_counted_as_zero():
    # 3 classes; class 2 appears nowhere (IoU 0, still in the mean); one pixel ignored.
    gt = torch.tensor([[[0, 0], [1, 255]]])
    pred = torch.tensor([[[0, 1], [1, 1]]])
    meter = build_meter("semseg", num_classes=3)
    meter.update(_onehot_logits(pred, 3), gt)
    out = meter.compute()
    # class 0: TP 1, FN 1 -> 1/2; class 1: TP 1, FP 1 -> 1/2; class 2: 0
    assert out["mIoU"] == pytest.approx(100 * (0.5 + 0.5 + 0) / 3)
    assert out["pixel_acc"] == pytest.approx(100 * 2 / 3)
    assert out["iou_0"] == pytest.approx(50.0) and out["iou_2"] == 0.0


def test_split_batches_give_the_same_numbers_and_merge_adds_state():
    torch.manual_seed(0)
    logits = torch.randn(4, 7, 9, 11)
    gt = torch.randint(0, 7, (4, 9, 11))
    gt[0, :3] = 255
    whole = build_meter("human_parts")
    whole.update(logits, gt)
    parts = [build_meter("human_parts") for _ in range(3)]
    parts[0].update(logits[:1], gt[:1])
    parts[1].update(logits[1:3], gt[1:3])
    parts[2].update(logits[3:], gt[3:])
    parts[0].merge(parts[1])
    parts[0].merge(parts[2])
    assert parts[0].compute() == pytest.approx(whole.compute())
    assert "iou_head" in whole.compute()


def test_out_of_range_label_is_a_data_error():
    meter = build_meter("semseg", num_classes=3)
    with pytest.raises(DataError, match="semseg"):
        meter.update(torch.randn(1, 3, 2, 2), torch.tensor([[[0, 5], [1, 255]]]))


def test_build_meters_follow_the_dataset():
    pascal = build_meters(["semseg", "human_parts", "sal", "normals", "edge"], dataset="pascal_context")
    nyud = build_meters(["semseg", "depth", "normals", "edge"], dataset="nyud")
    assert pascal["semseg"].num_classes == 21 and nyud["semseg"].num_classes == 40
    assert pascal["edge"].max_dist == 0.0075 and nyud["edge"].max_dist == 0.011
    assert "iou_wall" in nyud["semseg"].compute() and "iou_aeroplane" in pascal["semseg"].compute()
    assert {m.primary for m in pascal.values()} == {"mIoU", "maxF", "mean", "odsF"}
    assert nyud["depth"].higher_is_better is False and pascal["edge"].higher_is_better is True
