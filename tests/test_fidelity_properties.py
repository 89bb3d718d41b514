"""Properties of the published protocol that no other test pins: metrics pooled over the dataset (not means of
per-image values), and the no-spatial-prompt ablation whose patch tokens never see the prompts."""

from __future__ import annotations

import math

import pytest
import torch

from taskprompter.metrics import build_meter
from taskprompter.model.build import build_model


def logits_for(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(B, H, W) predicted ids -> (B, C, H, W) logits whose argmax they are."""
    return torch.nn.functional.one_hot(labels, num_classes).permute(0, 3, 1, 2).float()


def test_miou_is_pooled_over_the_dataset():
    # image 1: one valid pixel, predicted wrongly; image 2: four valid pixels, all right
    target = torch.tensor([[[0, 255, 255, 255]], [[0, 0, 1, 1]]])  # (2, 1, 4)
    pred = torch.tensor([[[1, 0, 0, 0]], [[0, 0, 1, 1]]])
    # pooled: class 0 TP 2, FN 1 -> 2/3; class 1 TP 2, FP 1 -> 2/3.  Per-image means: (0 + 100) / 2 = 50
    for split in (False, True):  # one batch, or one image per update: the same sums
        meter = build_meter("semseg", num_classes=2)
        if split:
            for i in range(2):
                meter.update(logits_for(pred[i:i + 1], 2), target[i:i + 1])
        else:
            meter.update(logits_for(pred, 2), target)
        assert meter.compute()["mIoU"] == pytest.approx(100 * 2 / 3)


def test_depth_rmse_is_pooled_over_the_dataset():
    # image 1: one valid pixel, error 3; image 2: three valid pixels, error 1 each (0 = invalid)
    target = torch.tensor([[[[1.0, 0.0, 0.0, 0.0]]], [[[2.0, 2.0, 2.0, 0.0]]]])  # (2, 1, 1, 4)
    pred = torch.tensor([[[[4.0, 9.0, 9.0, 9.0]]], [[[3.0, 1.0, 3.0, 5.0]]]])
    # pooled: sqrt((9 + 1 + 1 + 1) / 4) = sqrt(3); per-image RMSE mean (3 + 1) / 2 = 2; mean MSE sqrt(5)
    for split in (False, True):
        meter = build_meter("depth")
        if split:
            for i in range(2):
                meter.update(pred[i:i + 1], target[i:i + 1])
        else:
            meter.update(pred, target)
        assert meter.compute()["rmse"] == pytest.approx(math.sqrt(3))


def block_tokens(model, images: torch.Tensor, prompts: torch.Tensor) -> list[torch.Tensor]:
    """The patch tokens after every block, with the given prompts (B, T+N, C) -> [(B, N, C)] per block."""
    bb = model.backbone
    x = bb.patch_embed(images) + bb.pos_embed[:, 1:]
    T = prompts.shape[0]
    z = torch.cat([prompts.expand(x.shape[0], -1, -1), x], dim=1)
    out = []
    for block in bb.blocks:
        z = block(z)[0]
        out.append(z[:, T:])
    return out


@pytest.mark.parametrize("fidelity", ["official", "paper"])
@pytest.mark.parametrize("spatial", [False, True])
def test_without_spatial_prompts_tokens_ignore_the_prompts(fidelity, spatial):
    torch.manual_seed(0)
    model = build_model("taskprompter_tiny", fidelity=fidelity, spatial_prompts=spatial,
                        cross_task_reweighting=spatial).eval()
    images = torch.randn(2, 3, 64, 64)
    prompts = model.backbone.prompts.detach()
    with torch.no_grad():
        base = block_tokens(model, images, prompts)
        moved = block_tokens(model, images, prompts + 3.0 * torch.randn_like(prompts))
    same = [torch.equal(a, b) for a, b in zip(base, moved, strict=True)]
    if spatial:
        assert not any(same)  # spatial prompts take part in the attention: every block's tokens see them
    else:
        assert all(same)  # channel prompting updates only the prompts; tokens never read them


def test_eval_refuses_to_report_metrics_of_non_finite_outputs(tmp_path, capsys, synthetic_pascal_root):
    from taskprompter.cli import main
    from taskprompter.config import load_config, to_dict
    from taskprompter.data import build_dataset
    from taskprompter.engine.checkpoint import save_checkpoint

    cfg = load_config("synthetic_tiny", [f"data.root={synthetic_pascal_root}", "data.size=[64, 96]"])
    model = build_model("taskprompter_tiny", img_size=(64, 96))
    with torch.no_grad():
        model.heads["normals"].linear_pred.bias.fill_(float("nan"))  # a diverged run's normals head
    save_checkpoint(tmp_path / "run" / "last", model=model, meta={"step": 1, "config": to_dict(cfg)})
    assert main(["eval", "--checkpoint", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()  # the progress bar, then one line
    first = build_dataset("pascal_context", synthetic_pascal_root, "val", ["normals"]).ids[0]
    last = err.splitlines()[-1]
    assert "Traceback" not in err and f"normals on sample {first}" in last and "not reported" in last, err
    assert not list((tmp_path / "run").glob("eval-*/metrics.json"))  # nothing plausible-looking written
