"""Pretrained ViT weights: timm-named .safetensors/.pth and the big_vision/augreg .npz layout, written by the tests
from known tensors; the position table resized bicubically; every problem reported by key name."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from taskprompter.errors import CheckpointError
from taskprompter.model.build import build_model
from taskprompter.model.pretrained import load_vit_weights

C, NH, DEPTH = 64, 2, 4  # the tiny preset's ViT
D = C // NH


def timm_state(depth=DEPTH, grid=24, seed=0):
    """A timm ViT-style state dict (with the classifier, cls token and a 24 x 24 position grid + cls slot)."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape):
        return torch.randn(*shape, generator=g) * 0.1

    sd = {"cls_token": r(1, 1, C), "pos_embed": r(1, 1 + grid * grid, C), "patch_embed.proj.weight": r(C, 3, 16, 16),
          "patch_embed.proj.bias": r(C), "norm.weight": 1 + r(C), "norm.bias": r(C), "head.weight": r(1000, C),
          "head.bias": r(1000)}
    for i in range(depth):
        b = f"blocks.{i}."
        sd.update({b + "norm1.weight": 1 + r(C), b + "norm1.bias": r(C), b + "attn.qkv.weight": r(3 * C, C),
                   b + "attn.qkv.bias": r(3 * C), b + "attn.proj.weight": r(C, C), b + "attn.proj.bias": r(C),
                   b + "norm2.weight": 1 + r(C), b + "norm2.bias": r(C), b + "mlp.fc1.weight": r(4 * C, C),
                   b + "mlp.fc1.bias": r(4 * C), b + "mlp.fc2.weight": r(C, 4 * C), b + "mlp.fc2.bias": r(C)})
    return sd


def resized_pos_reference(pos, grid):
    """Grid part (1, 576, C) -> (1, C, 24, 24) -> bicubic, align_corners False -> (1, h*w, C); cls slot kept."""
    g0 = int(round((pos.shape[1] - 1) ** 0.5))
    table = pos[:, 1:].reshape(1, g0, g0, C).permute(0, 3, 1, 2)
    table = F.interpolate(table, size=grid, mode="bicubic", align_corners=False)
    return torch.cat([pos[:, :1], table.permute(0, 2, 3, 1).reshape(1, grid[0] * grid[1], C)], dim=1)


def expected_missing(depth=DEPTH):
    return {"prompts"} | {f"blocks.{i}.attn.{n}.{wb}" for i in range(depth) for n in ("channel_in", "channel_out")
                          for wb in ("weight", "bias")}


def check_loaded(backbone, sd, grid):
    own = backbone.state_dict()
    for k, v in sd.items():
        if k.startswith(("head.", "cls_token")):
            continue
        if k == "pos_embed":
            torch.testing.assert_close(own[k], resized_pos_reference(v, grid), atol=1e-6, rtol=1e-6)
        else:
            assert torch.equal(own[k], v), k


@pytest.mark.parametrize("suffix", ["safetensors", "pth", "wrapped.pth"])
@pytest.mark.parametrize("size", [(64, 64), (64, 96)])
def test_timm_weights_round_trip(tmp_path, suffix, size):
    sd = timm_state()
    path = tmp_path / f"vit.{suffix}"
    if suffix == "safetensors":
        save_file(sd, str(path))
    elif suffix == "pth":
        torch.save(sd, path)
    else:  # {'model': ...} wrapper with a DDP prefix
        torch.save({"model": {"module." + k: v for k, v in sd.items()}, "epoch": 3}, path)
    torch.manual_seed(0)
    model = build_model("taskprompter_tiny", img_size=size)
    prompts = model.backbone.prompts.detach().clone()
    channel_in = model.backbone.blocks[2].attn.channel_in.weight.detach().clone()
    missing = load_vit_weights(model.backbone, path)
    assert set(missing) == expected_missing()
    check_loaded(model.backbone, sd, (size[0] // 16, size[1] // 16))
    assert torch.equal(model.backbone.prompts, prompts)  # prompts and channel layers untouched
    assert torch.equal(model.backbone.blocks[2].attn.channel_in.weight, channel_in)


def test_pos_embed_at_the_model_grid_is_not_resampled():
    sd = timm_state(grid=4)
    model = build_model("taskprompter_tiny")
    load_vit_weights(model.backbone, sd)
    assert torch.equal(model.backbone.pos_embed, sd["pos_embed"])


@pytest.mark.parametrize("change,key", [
    (lambda sd: sd.__setitem__("blocks.1.mlp.fc1.weight", torch.zeros(5, C)), "blocks.1.mlp.fc1.weight"),
    (lambda sd: sd.__setitem__("blocks.0.attn.q_norm.weight", torch.zeros(D)), "blocks.0.attn.q_norm.weight"),
    (lambda sd: sd.pop("blocks.2.norm2.bias"), "blocks.2.norm2.bias"),
    (lambda sd: sd.__setitem__("patch_embed.proj.weight", torch.zeros(C, 3, 14, 14)), "patch_embed.proj.weight"),
    (lambda sd: sd.__setitem__("blocks.4.norm1.weight", torch.zeros(C)), "blocks.4.norm1.weight"),
], ids=["wrong-shape", "extra-key", "missing-key", "patch-size", "deeper-vit"])
def test_mismatched_weights_raise_naming_the_key(tmp_path, change, key):
    sd = timm_state()
    change(sd)
    path = tmp_path / "vit.safetensors"
    save_file(sd, str(path))
    model = build_model("taskprompter_tiny")
    before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    with pytest.raises(CheckpointError, match=key.replace(".", r"\.")):
        load_vit_weights(model.backbone, path)
    assert all(torch.equal(before[k], v) for k, v in model.backbone.state_dict().items())  # nothing half-loaded


def test_unreadable_weight_files_raise_checkpoint_error(tmp_path):
    with pytest.raises(CheckpointError, match="nope.pth"):
        load_vit_weights(build_model("taskprompter_tiny").backbone, tmp_path / "nope.pth")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00not a safetensors file")
    with pytest.raises(CheckpointError, match="bad.safetensors"):
        load_vit_weights(build_model("taskprompter_tiny").backbone, bad)


class _Evil:
    def __reduce__(self):
        return (print, ("unpickled!",))


def test_pth_with_arbitrary_objects_is_refused(tmp_path, capsys):
    path = tmp_path / "evil.pth"
    torch.save({"model": timm_state(), "extra": _Evil()}, path)
    with pytest.raises(CheckpointError):
        load_vit_weights(build_model("taskprompter_tiny").backbone, path)
    assert "unpickled!" not in capsys.readouterr().out


# ------------------------------------------------------------------------------------------------ augreg .npz


def to_big_vision(sd, depth):
    """timm tensors -> the big_vision layout (the inverse of timm's _load_weights): HWIO patch kernel, per-head
    (C, nH, d) query/key/value kernels, (nH, d, C) out kernel, (in, out) Dense kernels, LayerNorm scale/bias."""
    t = {"embedding/kernel": sd["patch_embed.proj.weight"].permute(2, 3, 1, 0),  # (O, I, kh, kw) -> (kh, kw, I, O)
         "embedding/bias": sd["patch_embed.proj.bias"], "cls": sd["cls_token"],
         "Transformer/posembed_input/pos_embedding": sd["pos_embed"],
         "Transformer/encoder_norm/scale": sd["norm.weight"], "Transformer/encoder_norm/bias": sd["norm.bias"],
         "head/kernel": sd["head.weight"].T, "head/bias": sd["head.bias"]}
    for i in range(depth):
        b, p = f"blocks.{i}.", f"Transformer/encoderblock_{i}/"
        mha = p + "MultiHeadDotProductAttention_1/"
        ws, bs = sd[b + "attn.qkv.weight"].chunk(3), sd[b + "attn.qkv.bias"].chunk(3)
        for n, w_, b_ in zip(("query", "key", "value"), ws, bs):
            t[mha + n + "/kernel"] = w_.T.reshape(C, NH, D)  # kernel[c_in, head, j] = W[head * d + j, c_in]
            t[mha + n + "/bias"] = b_.reshape(NH, D)
        t[mha + "out/kernel"] = sd[b + "attn.proj.weight"].T.reshape(NH, D, C)  # kernel[head, j, c_out]
        t[mha + "out/bias"] = sd[b + "attn.proj.bias"]
        for ln, name in (("LayerNorm_0", "norm1"), ("LayerNorm_2", "norm2")):
            t[p + ln + "/scale"], t[p + ln + "/bias"] = sd[b + name + ".weight"], sd[b + name + ".bias"]
        for j, fc in ((0, "fc1"), (1, "fc2")):
            t[p + f"MlpBlock_3/Dense_{j}/kernel"] = sd[b + f"mlp.{fc}.weight"].T
            t[p + f"MlpBlock_3/Dense_{j}/bias"] = sd[b + f"mlp.{fc}.bias"]
    return {k: v.numpy().astype(np.float32) for k, v in t.items()}


def test_augreg_npz_loads_as_timm_would_convert_it(tmp_path):
    sd = timm_state()
    path = tmp_path / "augreg.npz"
    np.savez(path, **to_big_vision(sd, DEPTH))
    model = build_model("taskprompter_tiny", img_size=(64, 96))
    missing = load_vit_weights(model.backbone, path)
    assert set(missing) == expected_missing()
    check_loaded(model.backbone, sd, (4, 6))


def test_npz_lacking_an_entry_names_it(tmp_path):
    arrays = to_big_vision(timm_state(), DEPTH)
    del arrays["Transformer/encoderblock_1/LayerNorm_2/scale"]
    np.savez(tmp_path / "broken.npz", **arrays)
    with pytest.raises(CheckpointError, match="encoderblock_1/LayerNorm_2/scale"):
        load_vit_weights(build_model("taskprompter_tiny").backbone, tmp_path / "broken.npz")


def _ln(x, scale, bias):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + 1e-6) * scale + bias


def test_plain_vit_forward_with_npz_weights_matches_a_hand_computed_one(tmp_path):
    """One ViT block computed in NumPy directly in the big_vision layout (einsums over the per-head kernels)."""
    arrays = to_big_vision(timm_state(depth=1, grid=4), 1)
    np.savez(tmp_path / "vit1.npz", **arrays)
    model = build_model("taskprompter_tiny", depth=1, decode_blocks=(1,), spatial_prompts=False,
                        channel_prompts=False, cross_task_reweighting=False).eval()
    assert model.backbone.num_tasks == 0  # a plain ViT
    load_vit_weights(model.backbone, tmp_path / "vit1.npz")
    torch.manual_seed(0)
    img = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        (tokens, _), = model.backbone(img, (1,))  # final-normed tokens after block 1, (B, N, C)

    a = arrays
    x = img.numpy().astype(np.float64)
    patches = x.reshape(2, 3, 4, 16, 4, 16).transpose(0, 2, 4, 3, 5, 1).reshape(2, 16, 16, 16, 3)  # (B, N, kh, kw, I)
    z = np.einsum("bnijc,ijco->bno", patches, a["embedding/kernel"]) + a["embedding/bias"]
    z = z + a["Transformer/posembed_input/pos_embedding"][:, 1:]
    p = "Transformer/encoderblock_0/"
    mha = p + "MultiHeadDotProductAttention_1/"
    y = _ln(z, a[p + "LayerNorm_0/scale"], a[p + "LayerNorm_0/bias"])
    q, k, v = (np.einsum("bnc,chd->bhnd", y, a[mha + n + "/kernel"]) + a[mha + n + "/bias"][None, :, None]
               for n in ("query", "key", "value"))
    logits = np.einsum("bhnd,bhmd->bhnm", q, k) / np.sqrt(D)
    attn = np.exp(logits - logits.max(-1, keepdims=True))
    attn /= attn.sum(-1, keepdims=True)
    o = np.einsum("bhnm,bhmd->bhnd", attn, v)
    z = z + np.einsum("bhnd,hdc->bnc", o, a[mha + "out/kernel"]) + a[mha + "out/bias"]
    y = _ln(z, a[p + "LayerNorm_2/scale"], a[p + "LayerNorm_2/bias"])
    hdn = y @ a[p + "MlpBlock_3/Dense_0/kernel"] + a[p + "MlpBlock_3/Dense_0/bias"]
    hdn = torch.nn.functional.gelu(torch.from_numpy(hdn)).numpy()  # exact (erf) GELU
    z = z + hdn @ a[p + "MlpBlock_3/Dense_1/kernel"] + a[p + "MlpBlock_3/Dense_1/bias"]
    z = _ln(z, a["Transformer/encoder_norm/scale"], a["Transformer/encoder_norm/bias"])
    np.testing.assert_allclose(tokens.numpy(), z, atol=1e-4, rtol=1e-4)
