"""TaskPrompterSwin (swin-cityscapes3d.md section 1): shapes per stage and level, the stitched spatial prompt map
against the global q.k map, window-averaged prompts against an explicit loop over windows, efficient == naive,
gradients, PatchMerging against hand-written ops, the released size (on the meta device), fidelity options, the
model directory round trip and clear errors -- on the tiny preset and smaller custom sizes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import taskprompter
from taskprompter.errors import ConfigError
from taskprompter.model.build import build_model, build_variant, load_model
from taskprompter.model.heads import TaskHead
from taskprompter.model.profile import profile_preset
from taskprompter.model.swin.block import SwinPromptBlock
from taskprompter.model.swin.detection import DetectionOutputs
from taskprompter.model.swin.heads import DEConvHead
from taskprompter.model.swin.taskprompter_swin import TaskPrompterSwin
from taskprompter.model.swin.windows import window_merge, window_partition

TASKS3 = {"semseg": 19, "depth": 1, "3ddet": 6}
H, W = 128, 256  # the tiny preset's input


def tiny(**kw) -> TaskPrompterSwin:
    torch.manual_seed(kw.pop("seed", 0))
    return build_model("taskprompter_swin_tiny", **kw)


def all_outputs_loss(out: dict) -> torch.Tensor:
    """A loss that reaches every output: 2-D logits and every map of the detector's outputs (or of a list of maps)."""
    def maps(v):
        if isinstance(v, DetectionOutputs):
            return [m for group in v[:4] for m in group]
        return list(v) if isinstance(v, list) else [v]
    return sum(m.float().square().mean() for v in out.values() for m in maps(v))


def randomised(model: nn.Module, seed: int = 0) -> nn.Module:
    """Every float parameter and BatchNorm statistic away from its initial value (positive variances)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for k, v in model.state_dict().items():
            if v.is_floating_point():
                v.copy_(torch.rand(v.shape, generator=gen) + 0.5 if k.endswith("running_var")
                        else torch.randn(v.shape, generator=gen) * 0.1 + (1.0 if v.ndim == 1 else 0.0))
    return model.eval()


# ------------------------------------------------------------------------------------------------ shapes


def test_outputs_levels_and_affinities_have_the_documented_shapes():
    model = tiny(tasks={"depth": 1, "3ddet": 6, "semseg": 19}).eval()
    assert model.task_names == ["semseg", "depth", "3ddet"]  # prompt order: the released task order
    stages = [(s.grid, s.dim, s.num_heads, s.window, s.shift) for s in model.backbone.specs]
    assert stages == [((32, 64), 32, 1, 4, 2), ((16, 32), 64, 2, 4, 2), ((8, 16), 128, 4, 4, 2),
                      ((4, 8), 256, 8, 4, 0)]  # the last grid's short side is the window: no shift
    with torch.no_grad():
        out, feats, affs = model(torch.randn(2, 3, H, W), return_features=True, return_affinities=True)
    assert list(out) == ["depth", "3ddet", "semseg"]  # outputs in the order given
    assert out["semseg"].shape == (2, 19, 64, 128) and out["depth"].shape == (2, 1, 64, 128)  # img * 0.5
    level_sizes = [(16, 32), (8, 16), (4, 8), (4, 8)]  # post-merge grids, then the last stage's
    assert [tuple(m.shape) for m in feats["3ddet"]] == [(2, 32, *s) for s in level_sizes]
    assert [tuple(m.shape) for m in feats["semseg"]] == [(2, 32, 2 * h, 2 * w) for h, w in level_sizes]  # x2: 2-D
    assert out["3ddet"].level_sizes == [*level_sizes, (2, 4)]  # the detector's five levels from the four maps
    heads, dims = [1, 2, 4, 8], [32, 64, 128, 256]
    for lv, (a, (h, w)) in enumerate(zip(affs, level_sizes)):
        grid = model.backbone.specs[lv].grid
        assert a.spatial.shape == (2, heads[lv], 3, *grid) and a.channel.shape == (2, 3, dims[lv], 1, 1)
        merged_dim = 2 * dims[lv] if lv < 3 else dims[lv]
        assert a.decoded_spatial.shape == (2, heads[lv], 3, h, w)
        assert a.decoded_channel.shape == (2, 3, merged_dim, 1, 1)
    assert torch.equal(affs[3].spatial, affs[3].decoded_spatial)  # the last level decodes the raw maps


def test_the_internal_resize_equals_resizing_first():
    """resize_ratio 0.75 (released) == a model built for the resized size fed the bilinearly resized image."""
    kw = dict(tasks={"semseg": 3, "depth": 1}, window_size=3, embed_dim=16, depths=(2, 2, 2, 2),
              num_heads=(1, 1, 2, 2), decoder_dim=8, final_dim=8, channel_dim=8, drop_path_rate=0.0)
    a = TaskPrompterSwin(img_size=(128, 256), resize_ratio=0.75, output_scale=0.5, **kw).eval()
    b = TaskPrompterSwin(img_size=(96, 192), resize_ratio=1.0, output_scale=2 / 3, **kw).eval()
    b.load_state_dict(a.state_dict())
    x = torch.randn(1, 3, 128, 256)
    with torch.no_grad():
        oa, ob = a(x), b(F.interpolate(x, scale_factor=0.75, mode="bilinear", align_corners=False))
    assert oa["semseg"].shape == ob["semseg"].shape == (1, 3, 64, 128)
    assert all(torch.equal(oa[t], ob[t]) for t in oa)


# ------------------------------------------------------------------------------------------------ spatial prompts


@pytest.mark.parametrize("stage,block", [(0, 1), (1, 0), (1, 1), (3, 1)])
def test_stitched_spatial_map_equals_the_global_prompt_token_logits(stage, block):
    """q_t . k_p of every token p computed on the un-windowed grid: a wrong window order or roll breaks it."""
    model = tiny()
    blk: SwinPromptBlock = model.backbone.layers[stage].blocks[block]
    assert blk.shift == (2 if (stage, block) in ((0, 1), (1, 1)) else 0)
    B, T, (h, w) = 2, 2, blk.grid
    C = blk.norm1.normalized_shape[0]
    g = torch.Generator().manual_seed(stage * 10 + block)
    x, prompts = torch.randn(B, h * w, C, generator=g), torch.randn(B, T, C, generator=g)
    with torch.no_grad():
        _, _, maps = blk(x, prompts, True)
        nH = blk.attn.num_heads
        wq, wk = blk.attn.qkv.weight[:C], blk.attn.qkv.weight[C:2 * C]
        bq, bk = blk.attn.qkv.bias[:C], blk.attn.qkv.bias[C:2 * C]
        q = (blk.norm1(prompts) @ wq.T + bq).view(B, T, nH, -1).transpose(1, 2)  # (B, nH, T, d)
        k = (blk.norm1(x) @ wk.T + bk).view(B, h * w, nH, -1).transpose(1, 2)  # (B, nH, N, d)
        expected = (q @ k.transpose(-2, -1)).view(B, nH, T, h, w)
    torch.testing.assert_close(maps.spatial, expected, atol=1e-5, rtol=1e-5)


def reference_window_attention(blk: SwinPromptBlock, x: torch.Tensor, p: torch.Tensor):
    """Explicit loops over images and windows (test only): normed tokens (B, h, w, C) and normed prompts (B, T, C)
    -> token outputs (B, h, w, C) on the un-rolled grid and prompt outputs averaged over windows (B, T, C)."""
    att, Wn, s = blk.attn, blk.window, blk.shift
    B, h, w, C = x.shape
    T, nH = p.shape[1], att.num_heads
    rolled = torch.roll(x, (-s, -s), (1, 2)) if s else x
    wrapped_r = torch.arange(h) >= h - s if s else torch.zeros(h, dtype=torch.bool)  # rows rolled over the border
    wrapped_c = torch.arange(w) >= w - s if s else torch.zeros(w, dtype=torch.bool)
    ys, xs = torch.arange(Wn).repeat_interleave(Wn), torch.arange(Wn).repeat(Wn)  # row-major positions in a window
    rel = (ys[:, None] - ys[None, :] + Wn - 1) * (2 * Wn - 1) + (xs[:, None] - xs[None, :] + Wn - 1)
    rel_bias = att.relative_position_bias_table[rel].permute(2, 0, 1)  # (nH, M, M)
    tokens_out = torch.zeros_like(rolled)
    prompts_out = torch.zeros(B, T, C)
    n_windows = (h // Wn) * (w // Wn)
    for b in range(B):
        for i in range(h // Wn):
            for j in range(w // Wn):
                rows, cols = slice(i * Wn, (i + 1) * Wn), slice(j * Wn, (j + 1) * Wn)
                z = torch.cat([p[b], rolled[b, rows, cols].reshape(Wn * Wn, C)])  # (L, C)
                q, k, v = (z @ att.qkv.weight.T + att.qkv.bias).view(-1, 3, nH, C // nH).permute(1, 2, 0, 3)
                logits = q @ k.transpose(-2, -1) * (C // nH) ** -0.5  # (nH, L, L)
                wr = wrapped_r[rows].repeat_interleave(Wn)
                wc = wrapped_c[cols].repeat(Wn)
                cross = (wr[:, None] != wr[None, :]) | (wc[:, None] != wc[None, :])
                bias = rel_bias - 100.0 * cross
                logits = torch.cat([logits[:, :T], torch.cat([logits[:, T:, :T], logits[:, T:, T:] + bias], 2)], 1)
                o = (logits.softmax(-1) @ v).transpose(0, 1).reshape(-1, C) @ att.proj.weight.T + att.proj.bias
                prompts_out[b] += o[:T] / n_windows
                tokens_out[b, rows, cols] = o[T:].view(Wn, Wn, C)
    return (torch.roll(tokens_out, (s, s), (1, 2)) if s else tokens_out), prompts_out


@pytest.mark.parametrize("impl", ["efficient", "naive"])
@pytest.mark.parametrize("stage,block", [(1, 0), (1, 1)])
def test_window_attention_and_prompt_mean_equal_an_explicit_window_loop(impl, stage, block):
    model = tiny(attention_impl=impl)
    blk: SwinPromptBlock = model.backbone.layers[stage].blocks[block]
    h, w = blk.grid
    C = blk.norm1.normalized_shape[0]
    g = torch.Generator().manual_seed(block)
    x, p = torch.randn(2, h, w, C, generator=g), torch.randn(2, 2, C, generator=g)
    with torch.no_grad():
        blk.attn.relative_position_bias_table.normal_(0, 1.0)  # make the bias matter
        s = blk.shift
        windows = window_partition(torch.roll(x, (-s, -s), (1, 2)) if s else x, blk.window)
        out, p_spa, _ = blk.attn(windows, p, blk.attn_mask, need_rows=False)
        tokens = window_merge(out, blk.window, blk.grid)
        tokens = torch.roll(tokens, (s, s), (1, 2)) if s else tokens
        ref_tokens, ref_prompts = reference_window_attention(blk, x, p)
    torch.testing.assert_close(p_spa, ref_prompts, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(tokens, ref_tokens, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("stage,block", [(1, 1), (3, 1)])
def test_block_channel_prompts_and_prompt_update_follow_section_1_3(stage, block):
    """Channel q from the UN-normed prompts, k/v from the attention output seen as (B, C, h*w), raw q.k^T as the
    map, softmax(raw * c^-1/2) @ v updating P_spa; the very last block (3, 1) returns P_spa unchanged."""
    model = tiny()
    blk: SwinPromptBlock = model.backbone.layers[stage].blocks[block]
    h, w = blk.grid
    C, c = blk.norm1.normalized_shape[0], 16
    g = torch.Generator().manual_seed(1)
    x, p = torch.randn(2, h * w, C, generator=g), torch.randn(2, 2, C, generator=g)
    with torch.no_grad():
        for lin in (blk.token_trans, blk.chan_q, blk.chan_kv):  # logits of order 1-10: the softmax scale matters
            lin.weight.normal_(0, 0.3, generator=g)
        x_out, p_out, maps = blk(x, p, True)
        a, p_spa = reference_window_attention(blk, blk.norm1(x).view(2, h, w, C), blk.norm1(p))
        a = a.reshape(2, h * w, C)  # attention output, before the residual
        q = blk.chan_q(blk.token_trans(p))  # (B, T, c)
        kv = a.transpose(1, 2) @ blk.chan_kv.weight.T + blk.chan_kv.bias  # (B, C, 2c)
        k, v = kv[..., :c], kv[..., c:]
        raw = q @ k.transpose(1, 2)  # (B, T, C)
        x_ref = x + a
        x_ref = x_ref + blk.mlp(blk.norm2(x_ref))
        if blk.last:
            p_ref = p_spa
        else:
            chan_x = (raw * c ** -0.5).softmax(dim=-1) @ v  # (B, T, c)
            p_ref = p + p_spa + blk.token_trans1(blk.chan_proj(chan_x))
            p_ref = p_ref + blk.mlp(blk.norm2(p_ref))
    assert blk.last == ((stage, block) == (3, 1))
    torch.testing.assert_close(maps.channel, raw[..., None, None], atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(x_out, x_ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(p_out, p_ref, atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------------------------------------ efficient path


@pytest.mark.parametrize("fidelity", ["official", "paper"])
def test_efficient_equals_naive_outputs_maps_and_gradients(fidelity):
    eff = tiny(tasks=TASKS3, fidelity=fidelity).eval()
    naive = tiny(tasks=TASKS3, fidelity=fidelity, attention_impl="naive").eval()
    naive.load_state_dict(eff.state_dict())
    x = torch.randn(2, 3, H, W)
    oa, fa, aa = eff(x, return_features=True, return_affinities=True)
    ob, fb, ab = naive(x, return_features=True, return_affinities=True)
    for t in ("semseg", "depth"):
        torch.testing.assert_close(oa[t], ob[t], atol=1e-5, rtol=1e-4)
    for ma, mb in zip(fa["3ddet"], fb["3ddet"]):
        torch.testing.assert_close(ma, mb, atol=1e-5, rtol=1e-4)
    for a, b in zip(aa, ab):
        for field in ("spatial", "channel", "decoded_spatial", "decoded_channel"):
            torch.testing.assert_close(getattr(a, field), getattr(b, field), atol=1e-5, rtol=1e-4)
    # the detection task through its decoded maps: the detector's ReLUs would turn 1e-6 differences into kinks
    all_outputs_loss({**oa, "3ddet": fa["3ddet"]}).backward()
    all_outputs_loss({**ob, "3ddet": fb["3ddet"]}).backward()
    for (name, pa), pb in zip(eff.named_parameters(), naive.parameters()):
        if name.startswith("heads.3ddet."):
            continue
        scale = pa.grad.abs().max().clamp_min(1e-8)
        torch.testing.assert_close(pa.grad / scale, pb.grad / scale, atol=2e-5, rtol=0, msg=name)


@pytest.mark.parametrize("fidelity", ["official", "paper"])
def test_every_parameter_gets_a_gradient(fidelity):
    """No dead parameters: the last block's channel maps are decoded (level 3), its chan_x is never formed, and it
    has no chan_proj/token_trans1 (docs/fidelity.md). Eval mode: BatchNorm with running statistics, so the conv
    biases before it matter too."""
    model = tiny(tasks=TASKS3, fidelity=fidelity).eval()
    last = model.backbone.layers[3].blocks[1]
    assert not hasattr(last, "chan_proj") and not hasattr(last, "token_trans1")
    all_outputs_loss(model(torch.randn(1, 3, H, W))).backward()
    assert [n for n, p in model.named_parameters() if p.grad is None or not p.grad.any()] == []


def test_grad_checkpointing_gives_the_same_outputs_and_gradients():
    ref, ckpt = tiny(), tiny(grad_checkpointing=True)
    ckpt.load_state_dict(ref.state_dict())
    x = torch.randn(1, 3, H, W)
    for m in (ref, ckpt):
        all_outputs_loss(m.train()(x)).backward()
    for (n, a), b in zip(ref.named_parameters(), ckpt.parameters()):
        torch.testing.assert_close(a.grad, b.grad, atol=1e-7, rtol=1e-5, msg=n)


# ------------------------------------------------------------------------------------------------ PatchMerging


def test_patch_merging_matches_hand_written_ops():
    model = tiny()
    merge = model.backbone.layers[2].downsample  # C = 128, nH = 4, T = 2, grid 8 x 16
    B, T, nH, C, (h, w) = 2, 2, 4, 128, merge.grid
    g = torch.Generator().manual_seed(0)
    x, p = torch.randn(B, h * w, C, generator=g), torch.randn(B, T, C, generator=g)
    spatial, channel = torch.randn(B, nH, T, h, w, generator=g), torch.randn(B, T, C, 2, 2, generator=g)
    with torch.no_grad():
        tokens, prompts, s_out, c_out = merge(x, p, spatial, channel)
        xi = x.view(B, h, w, C)
        cat = torch.cat([xi[:, 0::2, 0::2], xi[:, 1::2, 0::2], xi[:, 0::2, 1::2], xi[:, 1::2, 1::2]], -1)
        ref_tokens = F.layer_norm(cat.view(B, -1, 4 * C), (4 * C,), merge.norm.weight, merge.norm.bias, 1e-5)
        ref_tokens = ref_tokens @ merge.reduction.weight.T
        stacked = torch.stack([spatial[:, head, t] for head in range(nH) for t in range(T)], dim=1)  # head*T + t
        conv = F.conv2d(stacked, merge.spa_attn_ds.weight, merge.spa_attn_ds.bias, stride=2, padding=1)
        ref_chan = torch.einsum("btcij,oc->btoij", channel, merge.process_chan_attn.weight)
    torch.testing.assert_close(tokens, ref_tokens, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(prompts, p @ merge.task_prompts_up.weight.T, atol=1e-6, rtol=1e-5)
    assert s_out.shape == (B, nH, T, h // 2, w // 2) and c_out.shape == (B, T, 2 * C, 2, 2)
    for head in range(nH):
        for t in range(T):
            torch.testing.assert_close(s_out[:, head, t], conv[:, head * T + t], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(c_out, ref_chan, atol=1e-5, rtol=1e-5)
    assert merge.reduction.bias is None and merge.task_prompts_up.bias is None and merge.process_chan_attn.bias is None


# ------------------------------------------------------------------------------------------------ released size


def test_released_swin_b_size_on_the_meta_device():
    """swin-cityscapes3d.md section 1.6: 289.83 M backbone + decoders (chan_kv 138.03 M), DEConvHeads 0.87 + 0.86 M;
    about 1.61 TMAC + 0.33 TMAC per 1024x2048 image (FlopCounter)."""
    r = profile_preset("taskprompter_swin_b_cityscapes3d")
    p = r["params_by_component"]
    heads = {t: p[f"heads.{t}"] for t in ("semseg", "depth")}
    assert round(p["heads.3ddet"] / 1e6, 2) == 12.11  # FPN 3.41 M + FCOS3D head 8.69 M (test_detection3d.py)
    assert round((r["params"] - sum(heads.values()) - p["heads.3ddet"]) / 1e6, 2) == 289.83
    assert round(p["encoder.chan_kv"] / 1e6, 2) == 138.03
    assert (round(heads["semseg"] / 1e6, 2), round(heads["depth"] / 1e6, 2)) == (0.87, 0.86)
    m = r["macs_by_component"]
    head_macs = m["heads.semseg"] + m["heads.depth"]
    assert abs(head_macs / 1e12 - 0.33) < 0.005 and abs(m["heads.3ddet"] / 1e12 - 0.24) < 0.005  # + the detector
    assert abs((r["macs"] - head_macs - m["heads.3ddet"]) / 1e12 - 1.61) < 0.01
    assert r["tasks"] == ["semseg", "depth", "3ddet"] and r["img_size"] == [1024, 2048]


def test_presets_build_their_class():
    with torch.device("meta"):
        model = build_model("taskprompter_swin_b_cityscapes3d")
        variant = build_variant("taskprompter", "taskprompter_swin_tiny")
    assert type(model) is TaskPrompterSwin and type(variant) is TaskPrompterSwin
    assert model.resized_size == (768, 1536) and model.output_size == (512, 1024) and model.grid == (192, 384)
    assert [s.window for s in model.backbone.specs] == [12] * 4 and model.preset == "taskprompter_swin_b_cityscapes3d"
    assert taskprompter.TaskPrompterSwin is TaskPrompterSwin
    with pytest.raises(ConfigError, match="needs a TaskPrompter preset"):
        build_variant("task_specific_encoders", "taskprompter_swin_tiny")


# ------------------------------------------------------------------------------------------------ fidelity


def test_paper_fidelity_changes_heads_prompt_update_and_maps():
    official, paper = tiny(), tiny(fidelity="paper")
    assert isinstance(official.heads["semseg"], DEConvHead) and isinstance(paper.heads["semseg"], TaskHead)
    names = [n for n, _ in paper.named_parameters()]
    assert not any(".chan_proj." in n or ".token_trans1." in n for n in names)  # maps only: no prompt update
    kv = {n: p.shape for n, p in paper.named_parameters() if n.endswith("chan_kv.weight")}
    assert sorted(kv) == [f"backbone.layers.{s}.blocks.1.chan_kv.weight" for s in range(4)]  # read maps only
    assert all(shape[0] == 16 for shape in kv.values())  # keys only
    assert official.backbone.layers[0].blocks[0].chan_kv.out_features == 32  # keys and values
    mixed = tiny(fidelity="official", head="conv")
    assert isinstance(mixed.heads["depth"], TaskHead) and mixed.options["channel_update"] is True
    with pytest.raises(ConfigError, match="head must be one of"):
        tiny(head="mlp")


def test_decode_affinity_probs_are_the_softmax_of_the_logits():
    logits_model = tiny().eval()
    probs_model = tiny(decode_affinity="probs").eval()
    probs_model.load_state_dict(logits_model.state_dict())
    x = torch.randn(1, 3, H, W)
    with torch.no_grad():
        _, la = logits_model(x, return_affinities=True)
        _, pa = probs_model(x, return_affinities=True)
    c = 16  # channel_dim
    for a, b in zip(la, pa):  # the backbone is the same; only what the maps hold differs
        torch.testing.assert_close(b.channel, (a.channel * c ** -0.5).softmax(dim=2), atol=1e-6, rtol=1e-5)
        assert b.probs and not a.probs
    # the spatial maps: softmax over each window's T+M keys, so log p - scale * logit is constant in a window
    blk = logits_model.backbone.layers[3].blocks[1]  # no shift, two 4x4 windows
    diff = pa[3].spatial.log() - la[3].spatial * blk.attn.scale  # (1, nH, T, 4, 8)
    per_window = diff.unflatten(-1, (2, 4))  # (1, nH, T, 4, 2, 4)
    spread = per_window.amax(dim=(3, 5)) - per_window.amin(dim=(3, 5))
    assert spread.abs().max() < 1e-4
    assert (pa[3].spatial.unflatten(-1, (2, 4)).sum(dim=(3, 5)) < 1).all()  # the prompt columns take the rest
    for a, b in zip(la, pa):  # the figures' maps (predict --affinity) are the same from either kind
        torch.testing.assert_close(a.channel_over_channels(), b.channel_over_channels())
        torch.testing.assert_close(a.spatial_over_tokens().sum(-1), torch.ones(a.spatial.shape[:3]))


# ------------------------------------------------------------------------------------------------ model directory


def test_save_then_load_is_bit_identical(tmp_path):
    model = randomised(tiny(tasks=TASKS3))
    path = model.save_pretrained(tmp_path / "m")
    loaded = load_model(path)
    assert type(loaded) is TaskPrompterSwin and not loaded.training
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in model.state_dict().items())
    x = torch.randn(1, 3, H, W)
    with torch.no_grad():
        a, b = model(x), loaded(x)
    assert torch.equal(a["semseg"], b["semseg"]) and all(torch.equal(u, v) for f in range(4)
                                                         for u, v in zip(a["3ddet"][f], b["3ddet"][f]))
    naive = TaskPrompterSwin.from_pretrained(path, attention_impl="naive")
    with torch.no_grad():
        d = naive(x)["depth"]
    assert (d - a["depth"]).abs().max() <= 1e-5 * a["depth"].abs().max()  # fp32 rounding of another summation order


# ------------------------------------------------------------------------------------------------ errors


def test_clear_errors_for_bad_sizes():
    with pytest.raises(ValueError, match=r"stage 2: token grid 6x16 does not divide into 4x4 windows"):
        tiny(img_size=(96, 256))
    with pytest.raises(ValueError, match="not a whole number of pixels"):
        tiny(img_size=(130, 256), resize_ratio=0.75)
    with pytest.raises(ValueError, match="channel_heads K=3"):
        tiny(channel_heads=3)
    with pytest.raises(ValueError, match=r"expected images of shape \(B, 3, 128, 256\)"):
        tiny()(torch.randn(1, 3, 64, 128))
