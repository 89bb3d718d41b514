"""Baselines and ablations (Tables 1, 6, 7; Figs. 5, 7): each stage has exactly the modules its row describes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from taskprompter.errors import ConfigError
from taskprompter.model.build import build_model, preset_kwargs
from taskprompter.model.taskprompter import TaskPrompter
from taskprompter.model.variants import (
    ABLATION_STAGES,
    TaskSpecificEncoders,
    ablation_kwargs,
    hp_levels,
    single_task_model,
)

TASKS = {"semseg": 21, "human_parts": 7, "sal": 2}


def stage_model(stage, seed=0, **kw):
    torch.manual_seed(seed)
    return TaskPrompter(**preset_kwargs("taskprompter_tiny", tasks=TASKS, **kw, **ablation_kwargs(stage, depth=4)))


def names(model):
    return {n for n, _ in model.named_parameters()}


def has(model, fragment):
    return any(fragment in n for n in names(model))


def test_stage_modules():
    m = {s: stage_model(s) for s in ABLATION_STAGES}
    # baseline: a plain ViT + heads
    base = m["baseline"]
    assert not has(base, "prompts") and not has(base, "channel_") and not has(base, "decoder")
    assert isinstance(m["baseline"].heads["semseg"].mt_proj[2], torch.nn.ReLU)
    assert m["baseline"].heads["semseg"].mt_proj[0].in_channels == 64  # ViT width, no decoder in between
    # + spatial prompts
    assert m["sprompt"].backbone.prompts.shape == (3, 64)
    assert not has(m["sprompt"], "channel_in") and not has(m["sprompt"], "channel_proj")
    assert has(m["sprompt"], "spatial_proj") and not has(m["sprompt"], "reweight")
    # + channel prompts
    assert has(m["sprompt_cprompt"], "attn.channel_in") and has(m["sprompt_cprompt"], "attn.channel_out")
    assert has(m["sprompt_cprompt"], "channel_proj") and not has(m["sprompt_cprompt"], "reweight")
    # + reweighting, one level
    assert has(m["rw"], "reweight") and len(m["rw"].decoder.levels) == 1 and m["rw"].decode_blocks == (4,)
    # + hierarchical prompting: 4 levels
    assert len(m["hp"].decoder.levels) == 4 and m["hp"].decode_blocks == (1, 2, 3, 4)
    for stage in ABLATION_STAGES[1:]:
        assert isinstance(m[stage].heads["semseg"].mt_proj[2], torch.nn.GELU)
    # each row adds to the previous one
    for prev, cur in zip(ABLATION_STAGES, ABLATION_STAGES[1:]):
        assert names(m[prev]) < names(m[cur]), (prev, cur)


@pytest.mark.parametrize("stage", ABLATION_STAGES)
def test_every_stage_runs_and_trains(stage):
    model = stage_model(stage).train()
    out = model(torch.randn(2, 3, 64, 64))
    assert {t: o.shape for t, o in out.items()} == {t: (2, c, 64, 64) for t, c in TASKS.items()}
    sum(o.mean() for o in out.values()).backward()
    last = "backbone.blocks.3.attn.channel_out."
    no_grad = {n for n, p in model.named_parameters() if p.grad is None or not p.grad.any()}
    assert no_grad == ({last + "weight", last + "bias"} if has(model, "channel_out") else set())


def test_baseline_is_vit_plus_conv_bn_relu_heads():
    """Baseline logits = head(upsample x4(norm(ViT tokens))) with Conv3x3-BN-ReLU-Conv1x1 heads."""
    model = stage_model("baseline").eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_()
                m.running_var.uniform_(0.5, 2)
        x = torch.randn(2, 3, 64, 64)
        out = model(x)
        bb = model.backbone
        z = bb.patch_embed(x) + bb.pos_embed[:, 1:]
        for blk in bb.blocks:
            z = blk(z)[0]
        feat = bb.norm(z).transpose(1, 2).reshape(2, 64, 4, 4)
        feat = F.interpolate(feat, scale_factor=4, mode="bilinear", align_corners=False)
        for t, head in model.heads.items():
            conv, bn, lin = head.mt_proj[0], head.mt_proj[1], head.linear_pred
            y = F.relu(F.batch_norm(F.conv2d(feat, conv.weight, conv.bias, padding=1), bn.running_mean,
                                    bn.running_var, bn.weight, bn.bias, eps=bn.eps))
            y = F.interpolate(F.conv2d(y, lin.weight, lin.bias), size=(64, 64), mode="bilinear", align_corners=False)
            torch.testing.assert_close(out[t], y, atol=1e-5, rtol=1e-5)


def test_single_task_model_is_the_baseline_with_one_task():
    model = single_task_model("normals", 3, **{k: v for k, v in preset_kwargs("taskprompter_tiny").items()
                                                if k != "tasks"})
    assert model.task_names == ["normals"] and not has(model, "prompts") and len(model.decoder.levels) == 1
    out = model(torch.randn(1, 3, 64, 64))
    assert list(out) == ["normals"] and out["normals"].shape == (1, 3, 64, 64)


@pytest.mark.parametrize("depth,levels,expected", [(12, 4, (3, 6, 9, 12)), (24, 4, (6, 12, 18, 24)), (12, 1, (12,)),
                                                   (12, 2, (6, 12)), (12, 3, (4, 8, 12)), (4, 4, (1, 2, 3, 4))])
def test_hp_levels(depth, levels, expected):
    assert hp_levels(depth, levels) == expected


@pytest.mark.parametrize("depth,levels", [(12, 0), (4, 5)])
def test_hp_levels_out_of_range(depth, levels):
    with pytest.raises(ConfigError, match=str(levels)):
        hp_levels(depth, levels)


def test_unknown_stage_is_named():
    with pytest.raises(ConfigError, match="'full'"):
        ablation_kwargs("full", depth=12)


@pytest.mark.parametrize("K", [1, 4, 16])
def test_channel_heads_sweep(K):
    """Fig. 5: K = 1, 4, 16 on a 4 x 4 grid (16 windows of one token each at K = 16)."""
    model = build_model("taskprompter_tiny", channel_heads=K).eval()
    with torch.no_grad():
        _, affs = model(torch.randn(1, 3, 64, 64), return_affinities=True)
    r = int(K ** 0.5)
    assert all(a.channel.shape == (1, 5, 64, r, r) for a in affs)


def test_task_specific_encoders_have_one_prompt_each():
    torch.manual_seed(0)
    kw = {k: v for k, v in preset_kwargs("taskprompter_tiny").items() if k not in ("tasks", "cross_task_reweighting")}
    te = TaskSpecificEncoders(tasks={"sal": 2, "semseg": 21}, **kw).eval()
    assert list(te.encoders) == ["sal", "semseg"]
    for task, enc in te.encoders.items():
        assert enc.task_names == [task] and enc.backbone.prompts.shape == (1, 64)
        assert not has(enc, "reweight")
    single = build_model("taskprompter_tiny", tasks={"sal": 2}, cross_task_reweighting=False)
    assert sum(p.numel() for p in te.encoders["sal"].parameters()) == sum(p.numel() for p in single.parameters())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        out = te(x)
        alone = te.encoders["semseg"](x)
    assert list(out) == ["sal", "semseg"] and out["sal"].shape == (2, 2, 64, 64)
    assert torch.equal(out["semseg"], alone["semseg"])
