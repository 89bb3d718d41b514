"""Weights for TaskPrompterSwin: ImageNet Swin state dicts in Microsoft's and timm's layouts (synthesised here from a
plain Swin state dict), and released Swin-B Cityscapes-3D checkpoints (names written by hand from the released code,
and the full key map through to_released_state_dict), `taskprompter convert` included."""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from taskprompter.cli import main
from taskprompter.errors import CheckpointError
from taskprompter.model.build import build_model, load_model
from taskprompter.model.io import read_model_config
from taskprompter.model.released import load_official_checkpoint, to_released_state_dict
from taskprompter.model.swin.weights import load_swin_weights

PROMPT_PARTS = re.compile(r"task_prompts|chan_q|chan_kv|token_trans|chan_proj|process_chan_attn|spa_attn_ds")
TASKS3 = {"semseg": 19, "depth": 1, "3ddet": 6}


def tiny(**kw):
    torch.manual_seed(kw.pop("seed", 0))
    return build_model("taskprompter_swin_tiny", **kw)


def plain_swin_state(model, seed=0) -> dict[str, torch.Tensor]:
    """A plain Swin's state dict (Microsoft names, no buffers, no classifier): the backbone's Swin keys, random."""
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(v.shape, generator=g) for k, v in model.backbone.state_dict().items()
            if not PROMPT_PARTS.search(k)}


def microsoft_layout(plain, model):
    """+ the buffers Microsoft's checkpoints carry, the 1000-class head and the {'model': ...} wrapper."""
    state = dict(plain)
    for name, buf in model.backbone.named_buffers():  # relative_position_index, attn_mask of shifted blocks
        state[name] = buf.clone()
    state["head.weight"], state["head.bias"] = torch.randn(1000, 256), torch.randn(1000)
    return {"model": state}


def timm_layout(plain, *, underscores=False):
    """timm >= 0.9: PatchMerging at the start of the next stage, head.fc; optionally layers_{i} spellings."""
    out = {}
    for k, v in plain.items():
        k = re.sub(r"^layers\.(\d+)\.downsample\.", lambda m: f"layers.{int(m.group(1)) + 1}.downsample.", k)
        out[re.sub(r"^layers\.(\d+)\.", r"layers_\1.", k) if underscores else k] = v
    out["head.fc.weight"], out["head.fc.bias"] = torch.randn(1000, 256), torch.randn(1000)
    return out


# ------------------------------------------------------------------------------------------------ ImageNet Swin


def test_microsoft_and_timm_layouts_load_identical_weights(tmp_path):
    src = tiny()
    plain = plain_swin_state(src)
    assert "layers.0.downsample.reduction.weight" in plain and "layers.3.downsample.norm.weight" not in plain
    torch.save(microsoft_layout(plain, src), tmp_path / "ms.pth")
    save_file(timm_layout(plain), str(tmp_path / "timm.safetensors"))
    loaded = []
    for source in (tmp_path / "ms.pth", tmp_path / "timm.safetensors", timm_layout(plain, underscores=True)):
        model = tiny(seed=1)
        before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
        missing = load_swin_weights(model, source)
        state = model.backbone.state_dict()
        assert all(torch.equal(state[k], v) for k, v in plain.items())
        assert missing == sorted(set(state) - set(plain)) and "task_prompts" in missing
        assert all(torch.equal(state[k], before[k]) for k in missing)  # prompts and channel layers untouched
        loaded.append(state)
    assert all(torch.equal(loaded[0][k], other[k]) for other in loaded[1:] for k in loaded[0])


def test_swin_weight_problems_are_named(tmp_path):
    model = tiny()
    plain = plain_swin_state(model)
    missing = {k: v for k, v in plain.items() if k != "layers.1.blocks.0.mlp.fc1.weight"}
    with pytest.raises(CheckpointError, match=r"lack backbone keys: layers\.1\.blocks\.0\.mlp\.fc1\.weight"):
        load_swin_weights(model, missing)
    with pytest.raises(CheckpointError, match=r"keys the backbone lacks: layers\.9\.extra"):
        load_swin_weights(model, {**plain, "layers.9.extra": torch.zeros(1)})
    wrong = {**plain, "norm.weight": torch.zeros(7)}
    with pytest.raises(CheckpointError, match=r"norm\.weight: file \(7,\) vs model \(256,\)"):
        load_swin_weights(model.backbone, wrong)
    odd = {re.sub(r"^layers\.1\.downsample", "layers.3.downsample", k): v for k, v in plain.items()}
    with pytest.raises(CheckpointError, match=r"downsample\) layers in stages \[0, 2, 3\]"):
        load_swin_weights(model, odd)
    with pytest.raises(CheckpointError, match="not found"):
        load_swin_weights(model, tmp_path / "none.pth")


def test_relative_position_tables_of_another_window_are_resized_bicubically():
    model = tiny()  # window 4: 7 x 7 tables
    plain = plain_swin_state(model)
    key = "layers.0.blocks.0.attn.relative_position_bias_table"
    table7 = torch.randn(13 * 13, 1)  # a window-7 table, one head
    load_swin_weights(model, {**plain, key: table7})
    expected = F.interpolate(table7.T.reshape(1, 1, 13, 13), size=(7, 7), mode="bicubic", align_corners=False)
    torch.testing.assert_close(model.backbone.state_dict()[key], expected.reshape(1, 49).T)


# ------------------------------------------------------------------------------------------------ released


RELEASED_NAMES = [  # written from the released taskprompter_swin.py and swin-cityscapes3d.md section 1
    "backbone.task_prompts", "backbone.patch_embed.proj.weight", "backbone.patch_embed.norm.bias",
    "backbone.layers.0.blocks.1.norm1.weight", "backbone.layers.0.blocks.1.attn.qkv.weight",
    "backbone.layers.0.blocks.1.attn.proj.bias", "backbone.layers.0.blocks.1.attn.relative_position_bias_table",
    "backbone.layers.0.blocks.1.attn.relative_position_index", "backbone.layers.0.blocks.1.attn_mask",
    "backbone.layers.2.blocks.0.mlp.fc1.weight", "backbone.layers.2.blocks.0.norm2.bias",
    "backbone.layers.1.blocks.0.chan_q.weight", "backbone.layers.1.blocks.0.chan_kv.weight",
    "backbone.layers.1.blocks.0.token_trans.weight", "backbone.layers.1.blocks.0.chan_proj.weight",
    "backbone.layers.1.blocks.0.token_trans1.bias", "backbone.layers.3.blocks.1.chan_kv.bias",
    "backbone.layers.0.downsample.reduction.weight", "backbone.layers.0.downsample.norm.weight",
    "backbone.layers.2.downsample.process_chan_attn.weight", "backbone.layers.1.downsample.task_prompts_up.weight",
    "backbone.layers.2.downsample.spa_attn_ds.bias", "backbone.norm.weight",
    "backbone.fea_decode_spa.0.semseg.0.weight", "backbone.fea_decode_chan.3.3ddet.0.bias",
    "backbone.fea_fuse.1.depth.0.weight", "backbone.fea_fuse.2.semseg.2.running_var",
    "backbone.fea_fuse.3.3ddet.4.weight", "backbone.multi_scale_fuse.semseg.weight",
    "heads.depth.linear_pred.weight", "heads.semseg.mt_proj.0.weight",
]
NOT_RELEASED = [  # the very last block has no prompt update; no merging after the last stage; no 3ddet 2-D parts
    "backbone.layers.3.blocks.1.chan_proj.weight", "backbone.layers.3.blocks.1.token_trans1.weight",
    "backbone.layers.3.downsample.reduction.weight", "backbone.layers.0.blocks.0.attn_mask",
    "backbone.multi_scale_fuse.3ddet.weight", "heads.3ddet.linear_pred.weight",
]


def released_checkpoint(model):
    """The released file's layout: {'model': DDP state dict}, the detection head's keys included (3ddet)."""
    state = {f"module.{k}": v.clone() for k, v in to_released_state_dict(model).items()}
    return {"model": state, "epoch": 3}


def test_released_names_and_a_released_checkpoint_loads_exactly():
    src = tiny(tasks=TASKS3)
    with torch.no_grad():
        for v in src.state_dict().values():
            if v.is_floating_point():
                v.add_(torch.randn(v.shape) * 0.1)
    names = set(to_released_state_dict(src))
    assert set(RELEASED_NAMES) <= names, sorted(set(RELEASED_NAMES) - names)
    assert not names & set(NOT_RELEASED), sorted(names & set(NOT_RELEASED))
    dst = tiny(tasks=TASKS3, seed=1)
    with pytest.warns(UserWarning, match="euler='faithful'"):  # the detector takes the released angle order
        unused = load_official_checkpoint(dst, released_checkpoint(src))
    assert unused == []
    assert all(torch.equal(v, dst.state_dict()[k]) for k, v in src.state_dict().items())


def test_released_checkpoint_problems_are_named():
    src = tiny(tasks=TASKS3)
    ckpt = released_checkpoint(src)
    with pytest.raises(CheckpointError, match=r"chan_q\.weight \(16, 16\) in file vs \(32, 32\) in model"):
        load_official_checkpoint(tiny(tasks=TASKS3, channel_dim=32), ckpt)
    with pytest.raises(CheckpointError, match=r"missing in checkpoint: backbone\.fea_decode_chan\.0\.3ddet|"
                                              r"unexpected in checkpoint: .*3ddet"):
        with pytest.warns(UserWarning):
            load_official_checkpoint(tiny(), ckpt)  # a model without the detection task
    extra = {"model": {**ckpt["model"], "module.backbone.extra.weight": torch.zeros(1)}}
    with pytest.raises(CheckpointError, match=r"unexpected in checkpoint: backbone\.extra\.weight"):
        load_official_checkpoint(tiny(tasks=TASKS3), extra)
    tampered = dict(ckpt["model"])
    tampered["module.backbone.layers.1.blocks.1.attn_mask"] = torch.zeros_like(
        tampered["module.backbone.layers.1.blocks.1.attn_mask"])
    with pytest.raises(CheckpointError, match=r"another window size.*layers\.1\.blocks\.1\.attn_mask"):
        load_official_checkpoint(tiny(tasks=TASKS3), {"model": tampered})
    with pytest.raises(CheckpointError, match="official-fidelity"):
        load_official_checkpoint(tiny(tasks=TASKS3, fidelity="paper"), ckpt)


def test_convert_a_released_checkpoint_to_a_model_directory(tmp_path, capsys):
    src = tiny()
    torch.save({"model": {f"module.{k}": v for k, v in to_released_state_dict(src).items()}}, tmp_path / "r.pth")
    assert main(["convert", str(tmp_path / "r.pth"), "--preset", "taskprompter_swin_tiny",
                 "--out", str(tmp_path / "m")]) == 0
    loaded = load_model(tmp_path / "m")
    assert type(loaded).__name__ == "TaskPrompterSwin" and not loaded.training
    assert read_model_config(tmp_path / "m")["preset"] == "taskprompter_swin_tiny"
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in src.state_dict().items())
