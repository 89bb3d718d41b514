"""Released TaskPrompter checkpoints: key names exactly as released-code.md section 4 lists them, round trip through
the DDP-wrapped file layout, clear refusals, and the ``convert`` verb."""

from __future__ import annotations

import pytest
import torch
import yaml

from taskprompter.cli import main
from taskprompter.errors import CheckpointError
from taskprompter.model.build import build_model
from taskprompter.model.released import load_official_checkpoint, to_released_state_dict
from taskprompter.model.taskprompter import TaskPrompter

PASCAL_ORDER = ["semseg", "human_parts", "sal", "normals", "edge"]
BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
WB = ("weight", "bias")


def expected_released_keys(tasks, depth, levels, reweighting=True):
    """The state-dict keys of the released model (after 'module.'), spelled out from released-code.md section 4."""
    keys = {"backbone.pos_embed", "backbone.task_prompts"}
    keys |= {f"backbone.{m}.{p}" for m in ("patch_embed.proj", "norm") for p in WB}
    keys |= {f"backbone.blocks.{i}.{m}.{p}" for i in range(depth) for p in WB
             for m in ("norm1", "norm2", "mlp.fc1", "mlp.fc2", "attn.qkv", "attn.proj", "attn.token_trans",
                       "attn.token_trans1")}
    for lv in range(levels):
        for t in tasks:
            keys |= {f"backbone.fea_decode_spa.{lv}.{t}.0.{p}" for p in WB}
            keys |= {f"backbone.fea_decode_chan.{lv}.{t}.0.{p}" for p in WB}
            keys |= {f"backbone.fea_fuse.{lv}.{t}.{i}.{p}" for i in (0, 1, 4) for p in WB}
            keys |= {f"backbone.fea_fuse.{lv}.{t}.2.{p}" for p in BN}
            if reweighting:
                keys |= {f"backbone.ctr_attn_conv.{lv}.{t}.{i}.{p}" for i in (0, 2) for p in WB}
    for t in tasks:
        keys |= {f"heads.{t}.mt_proj.0.{p}" for p in WB} | {f"heads.{t}.mt_proj.1.{p}" for p in BN}
        keys |= {f"heads.{t}.linear_pred.{p}" for p in WB}
    return keys


def tiny(seed=0, **kw):
    torch.manual_seed(seed)
    model = build_model("taskprompter_tiny", **kw)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_()
                m.running_var.uniform_(0.5, 2)
                m.num_batches_tracked.fill_(seed + 7)
    return model


def save_released(model, path, prompts_shape=None):
    state = to_released_state_dict(model)
    if prompts_shape is not None:
        state["backbone.task_prompts"] = state["backbone.task_prompts"].reshape(prompts_shape)
    torch.save({"model": {"module." + k: v for k, v in state.items()}, "optimizer": {}, "iter_count": 3}, path)
    return path


def test_released_key_names_are_exactly_the_documented_ones():
    model = tiny()
    assert set(to_released_state_dict(model)) == expected_released_keys(PASCAL_ORDER, depth=4, levels=4)
    nyud = tiny(tasks={"semseg": 40, "depth": 1, "normals": 3, "edge": 1}, cross_task_reweighting=False)
    assert set(to_released_state_dict(nyud)) == expected_released_keys(["semseg", "depth", "normals", "edge"],
                                                                        depth=4, levels=4, reweighting=False)


def test_released_vit_l_pascal_keys_and_shapes():
    with torch.device("meta"):
        model = build_model("taskprompter_vit_l_pascal")
    state = to_released_state_dict(model)
    assert set(state) == expected_released_keys(PASCAL_ORDER, depth=24, levels=4)
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    assert shapes["backbone.task_prompts"] == (5, 1024)
    assert shapes["backbone.pos_embed"] == (1, 1 + 32 * 32, 1024)
    assert shapes["backbone.blocks.0.attn.token_trans.weight"] == (1024, 1024)  # Linear(C -> N), N = 32*32
    assert shapes["backbone.blocks.0.attn.token_trans1.weight"] == (1024, 1024)  # Linear(N -> C)
    assert shapes["backbone.blocks.23.attn.qkv.weight"] == (3 * 1024, 1024)
    assert shapes["backbone.fea_decode_spa.3.edge.0.weight"] == (300, 1024, 1, 1)  # Conv1x1(C -> e)
    assert shapes["backbone.fea_decode_chan.0.sal.0.weight"] == (300, 1024, 1, 1)
    assert shapes["backbone.fea_fuse.0.semseg.0.weight"] == (350, 600, 1, 1)  # Conv1x1(2e -> f)
    assert shapes["backbone.fea_fuse.0.semseg.1.weight"] == (350, 350, 3, 3)
    assert shapes["backbone.fea_fuse.0.semseg.2.running_var"] == (350,)
    assert shapes["backbone.fea_fuse.0.semseg.4.weight"] == (350, 350, 1, 1)
    assert shapes["backbone.ctr_attn_conv.2.normals.0.weight"] == (16, 16, 1, 1)
    assert shapes["backbone.ctr_attn_conv.2.normals.2.weight"] == (1, 16, 1, 1)
    assert shapes["heads.semseg.mt_proj.0.weight"] == (350, 350, 3, 3)
    assert shapes["heads.human_parts.linear_pred.weight"] == (7, 350, 1, 1)


@pytest.mark.parametrize("prompts_shape", [None, (1, 5, 64)], ids=["T-C", "1-T-C"])
def test_round_trip_through_a_released_style_file(tmp_path, prompts_shape):
    src = tiny(seed=0)
    path = save_released(src, tmp_path / "checkpoint.pth.tar", prompts_shape)
    dst = tiny(seed=1)
    load_official_checkpoint(dst, path)
    loaded = dst.state_dict()
    for k, v in src.state_dict().items():
        assert torch.equal(loaded[k], v), k
    dst2 = tiny(seed=2)  # a state dict instead of a path
    load_official_checkpoint(dst2, {"model": {"module." + k: v for k, v in to_released_state_dict(src).items()}})
    loaded = dst2.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in src.state_dict().items())
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        a, b = src.eval()(x), dst.eval()(x)
    assert all(torch.equal(a[t], b[t]) for t in a)


@pytest.mark.parametrize("kw,words", [
    (dict(tasks={"semseg": 21, "human_parts": 7, "sal": 2, "normals": 3}), ["unexpected", "edge"]),
    (dict(tasks={"semseg": 21, "depth": 1, "human_parts": 7, "sal": 2, "normals": 3, "edge": 1}),
     ["missing", "depth"]),
    (dict(img_size=(64, 96)), ["shape differs", "channel_in.weight (16, 64) in file vs (24, 64) in model"]),
    (dict(embed_dim=32), ["shape differs", "qkv.weight (192, 64) in file vs (96, 32) in model"]),
    (dict(cross_task_reweighting=False), ["unexpected", "reweight"]),
    (dict(channel_heads=1, tasks={"semseg": 40, "human_parts": 7, "sal": 2, "normals": 3, "edge": 1}),
     ["shape differs", "linear_pred"]),
], ids=["fewer-tasks", "more-tasks", "input-size", "width", "no-rw", "classes"])
def test_mismatching_checkpoint_is_refused_listing_keys(tmp_path, kw, words):
    path = save_released(tiny(), tmp_path / "ck.pth")
    model = tiny(seed=3, **kw)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointError) as err:
        load_official_checkpoint(model, path)
    for word in words:
        assert word in str(err.value), (word, str(err.value))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("kw", [dict(fidelity="paper"), dict(prompt_update="attended"), dict(fusion="paper"),
                                dict(affinity_residual=False)])
def test_non_official_model_refuses_released_checkpoint(tmp_path, kw):
    path = save_released(tiny(), tmp_path / "ck.pth")
    with pytest.raises(CheckpointError, match="official"):
        load_official_checkpoint(tiny(**kw), path)


def test_unreadable_checkpoints(tmp_path):
    with pytest.raises(CheckpointError, match="missing.pth"):
        load_official_checkpoint(tiny(), tmp_path / "missing.pth")
    (tmp_path / "junk.pth").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="junk.pth"):
        load_official_checkpoint(tiny(), tmp_path / "junk.pth")


def test_convert_verb_writes_a_loadable_model_directory(tmp_path, capsys):
    src = tiny(seed=4)
    ck = save_released(src, tmp_path / "released.pth.tar")
    out = tmp_path / "converted"
    assert main(["convert", str(ck), "--preset", "taskprompter_tiny", "--out", str(out)]) == 0
    assert (out / "model.safetensors").is_file() and (out / "config.yaml").is_file()
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["preset"] == "taskprompter_tiny" and cfg["model"]["fidelity"] == "official"
    model = TaskPrompter.from_pretrained(out)
    loaded = model.state_dict()
    assert set(loaded) == set(src.state_dict())
    assert all(torch.equal(loaded[k], v) for k, v in src.state_dict().items())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        a, b = src.eval()(x), model.eval()(x)
    assert list(a) == list(b) and all(torch.equal(a[t], b[t]) for t in a)


def test_convert_verb_reports_a_mismatch_as_one_line(tmp_path, capsys):
    ck = save_released(tiny(tasks={"semseg": 21, "edge": 1}), tmp_path / "released.pth")
    assert main(["convert", str(ck), "--preset", "taskprompter_tiny", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "convert: error" in err and "missing" in err and "human_parts" in err
    assert not (tmp_path / "o" / "model.safetensors").exists()
