"""TaskPrompter end to end: outputs, an independent forward of the released architecture, efficient == naive,
gradients, determinism, prompt initialisation and clear errors (tiny preset and small custom sizes)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from scipy import stats

from taskprompter.errors import ConfigError
from taskprompter.model.build import build_model
from taskprompter.model.released import to_released_state_dict

PASCAL = {"semseg": 21, "human_parts": 7, "sal": 2, "normals": 3, "edge": 1}
NYUD = {"semseg": 40, "depth": 1, "normals": 3, "edge": 1}


def tiny(seed=0, **kw):
    torch.manual_seed(seed)
    return build_model("taskprompter_tiny", **kw)


def randomise(model, seed=0):
    """Perturb every parameter and the BN statistics so that no parameter keeps a neutral init (1, 0)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(0.2 * torch.randn(m.running_mean.shape, generator=g))
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
    return model


def images(size=(64, 64), B=2, seed=1):
    torch.manual_seed(seed)
    return torch.randn(B, 3, *size)


# ------------------------------------------------------------------------------------------------ outputs


@pytest.mark.parametrize("fidelity", ["official", "paper"])
@pytest.mark.parametrize("size", [(64, 64), (64, 96), (96, 64)])
def test_output_keys_shapes_and_order(fidelity, size):
    given = {"edge": 1, "sal": 2, "semseg": 21, "normals": 3}  # not the canonical order
    model = tiny(tasks=given, img_size=size, fidelity=fidelity).eval()
    with torch.no_grad():
        out = model(images(size))
    assert list(out) == list(given)  # outputs in the order given
    assert model.task_names == ["semseg", "sal", "normals", "edge"]  # prompts in the released order
    for task, ch in given.items():
        assert out[task].shape == (2, ch, *size) and out[task].dtype == torch.float32
        assert torch.isfinite(out[task]).all()


def test_nyud_tasks_and_affinities_shapes():
    model = tiny(tasks=NYUD, img_size=(64, 96)).eval()
    with torch.no_grad():
        out, affs = model(images((64, 96)), return_affinities=True)
    assert {t: o.shape[1] for t, o in out.items()} == NYUD
    assert len(affs) == 4  # tiny: decode_blocks (1, 2, 3, 4)
    for a in affs:  # T=4 tasks, nH=2, C=64, grid 4x6, K=4
        assert a.spatial.shape == (2, 2, 4, 24) and a.cross_task.shape == (2, 2, 4, 4)
        assert a.channel.shape == (2, 4, 64, 2, 2)


# ------------------------------------------------------------------------------------------------ reference


def reference_forward(model, x):
    """The released architecture (released-code.md sections 2-3) in plain torch from the released state-dict names:
    prompts and tokens as two tensors, full attention, unscaled logits as affinities, per-window channel logits by a
    loop, update from the pre-attention P^c, 4 levels, loops over heads/windows/tasks, per-task reweighting MLPs."""
    sd = to_released_state_dict(model)
    kw = model.init_kwargs
    tasks = model.task_names
    B, _, H, W = x.shape
    h, w, T = H // 16, W // 16, len(tasks)
    N, C, nH = h * w, kw["embed_dim"], kw["num_heads"]
    d, r, depth = C // nH, math.isqrt(kw["channel_heads"]), kw["depth"]
    decode = kw["decode_blocks"] or [depth * k // 4 for k in (1, 2, 3, 4)]

    def lin(t, key):
        return F.linear(t, sd[key + ".weight"], sd[key + ".bias"])

    def ln(t, key):
        return F.layer_norm(t, (C,), sd[key + ".weight"], sd[key + ".bias"], eps=1e-6)

    def conv(t, key, pad=0):
        return F.conv2d(t, sd[key + ".weight"], sd[key + ".bias"], padding=pad)

    def bn(t, key):
        return F.batch_norm(t, sd[key + ".running_mean"], sd[key + ".running_var"], sd[key + ".weight"],
                            sd[key + ".bias"], training=False, eps=1e-5)

    tok = F.conv2d(x, sd["backbone.patch_embed.proj.weight"], sd["backbone.patch_embed.proj.bias"], stride=16)
    tok = tok.flatten(2).transpose(1, 2) + sd["backbone.pos_embed"][:, 1:]
    p = sd["backbone.task_prompts"].reshape(1, T, C).expand(B, -1, -1)
    levels = []
    for i in range(depth):
        b = f"backbone.blocks.{i}."
        pn, xn = ln(p, b + "norm1"), ln(tok, b + "norm1")
        qkv = lin(torch.cat([pn, xn], 1), b + "attn.qkv").reshape(B, T + N, 3, nH, d).permute(2, 0, 3, 1, 4)
        logits = qkv[0] @ qkv[1].transpose(-1, -2)  # (B, nH, T+N, T+N)
        o = ((logits * d ** -0.5).softmax(-1) @ qkv[2]).transpose(1, 2).reshape(B, T + N, C)
        o = lin(o, b + "attn.proj")
        p_c = lin(pn, b + "attn.token_trans")  # (B, T, N)
        chan = torch.zeros(B, T, C, r, r)
        for wi in range(r):
            for wj in range(r):
                idx = [row * w + col for row in range(wi * h // r, (wi + 1) * h // r)
                       for col in range(wj * w // r, (wj + 1) * w // r)]
                chan[..., wi, wj] = p_c[:, :, idx] @ xn[:, idx]
        p = p + o[:, :T] + lin(p_c, b + "attn.token_trans1")
        tok = tok + o[:, T:]

        def mlp(t, b=b):
            return lin(F.gelu(lin(ln(t, b + "norm2"), b + "mlp.fc1")), b + "mlp.fc2")

        p, tok = p + mlp(p), tok + mlp(tok)
        if i + 1 in decode:
            feats = ln(tok, "backbone.norm") if i + 1 == depth else tok
            levels.append((feats, logits[:, :, :T, T:], logits[:, :, :T, :T], chan))
    total = 0
    for lv, (feats, spa, cross, chan) in enumerate(levels):
        X = feats.transpose(1, 2).reshape(B, C, h, w)
        fused = []
        for t, name in enumerate(tasks):
            fs, fc = torch.empty_like(X), torch.empty_like(X)
            for g in range(nH):
                a = spa[:, g, t].reshape(B, 1, h, w)
                fs[:, g * d:(g + 1) * d] = a * X[:, g * d:(g + 1) * d] + X[:, g * d:(g + 1) * d]
            for wi in range(r):
                for wj in range(r):
                    rs, cs = slice(wi * h // r, (wi + 1) * h // r), slice(wj * w // r, (wj + 1) * w // r)
                    a = chan[:, t, :, wi, wj][:, :, None, None]
                    fc[:, :, rs, cs] = a * X[:, :, rs, cs] + X[:, :, rs, cs]
            fs = conv(fs, f"backbone.fea_decode_spa.{lv}.{name}.0")
            fc = conv(fc, f"backbone.fea_decode_chan.{lv}.{name}.0")
            f = conv(torch.cat([fs, fc], 1), f"backbone.fea_fuse.{lv}.{name}.0")
            f = F.gelu(bn(conv(f, f"backbone.fea_fuse.{lv}.{name}.1", pad=1), f"backbone.fea_fuse.{lv}.{name}.2"))
            fused.append(conv(f, f"backbone.fea_fuse.{lv}.{name}.4"))
        if kw["cross_task_reweighting"]:
            new = []
            for t, name in enumerate(tasks):
                row = cross[:, :, t:t + 1]  # (B, nH, 1, T)
                wts = conv(F.gelu(conv(row, f"backbone.ctr_attn_conv.{lv}.{name}.0")),
                           f"backbone.ctr_attn_conv.{lv}.{name}.2")[:, 0, 0]  # (B, T)
                new.append(sum(wts[:, j, None, None, None] * fused[j] for j in range(T)))
            fused = new
        total = total + torch.stack(fused, 1)
    out = {}
    for t, name in enumerate(tasks):
        f = F.interpolate(total[:, t], scale_factor=4, mode="bilinear", align_corners=False)
        f = F.gelu(bn(conv(f, f"heads.{name}.mt_proj.0", pad=1), f"heads.{name}.mt_proj.1"))
        out[name] = F.interpolate(conv(f, f"heads.{name}.linear_pred"), size=(H, W), mode="bilinear",
                                  align_corners=False)
    return out


@pytest.mark.parametrize("kw", [dict(), dict(img_size=(64, 96)), dict(channel_heads=1, img_size=(48, 80)),
                                dict(cross_task_reweighting=False, tasks=NYUD), dict(decode_blocks=(2, 4))],
                         ids=["tiny", "64x96", "K1-48x80", "nyud-norw", "2levels"])
def test_official_model_matches_independent_reference(kw):
    model = randomise(tiny(**kw)).eval()
    x = images(model.img_size)
    with torch.no_grad():
        out = model(x)
        ref = reference_forward(model, x)
    for t in ref:
        torch.testing.assert_close(out[t], ref[t], atol=2e-5, rtol=1e-4)


# ------------------------------------------------------------------------------------------------ efficient == naive

EQUIV = [
    dict(fidelity="official"),
    dict(fidelity="paper"),
    dict(fidelity="official", channel_heads=1),
    dict(fidelity="paper", channel_heads=1),
    dict(fidelity="official", cross_task_reweighting=False),
    dict(fidelity="paper", cross_task_reweighting=False),
    dict(fidelity="official", img_size=(64, 96)),
    dict(fidelity="paper", img_size=(96, 64)),
    dict(fidelity="official", channel_prompts=False),
    dict(fidelity="paper", channel_prompts=False),
    dict(fidelity="official", spatial_prompts=False, cross_task_reweighting=False),
    dict(fidelity="paper", spatial_prompts=False, cross_task_reweighting=False),
    dict(fidelity="official", prompt_update="attended", decode_affinity="probs"),
    dict(fidelity="paper", reweighting_mlp="per_task", affinity_residual=True),
]


@pytest.mark.parametrize("kw", EQUIV, ids=lambda kw: "-".join(f"{k}={v}" for k, v in kw.items()))
def test_efficient_equals_naive(kw):
    eff = randomise(tiny(**kw, attention_impl="efficient")).eval()
    naive = tiny(**kw, attention_impl="naive").eval()
    naive.load_state_dict(eff.state_dict())
    x = images(eff.img_size)
    with torch.no_grad():
        out_e, aff_e = eff(x, return_affinities=True)
        out_n, aff_n = naive(x, return_affinities=True)
    for t in out_e:
        torch.testing.assert_close(out_e[t], out_n[t], atol=1e-5, rtol=0)
    for a, b in zip(aff_e, aff_n, strict=True):
        for field in a._fields:
            va, vb = getattr(a, field), getattr(b, field)
            assert (va is None) == (vb is None), field
            if va is not None:
                torch.testing.assert_close(va, vb, atol=1e-5, rtol=0)


# ------------------------------------------------------------------------------------------------ gradients

# Parameters that legitimately get no gradient (docs/fidelity.md, "Parameters without a gradient"): the prompt update
# of the last decoded block feeds only prompts that nothing reads; blocks after the last decoded block are not run;
# the final norm is used only by a level at the last block.
UNUSED_OFFICIAL = {"backbone.blocks.3.attn.channel_out.weight", "backbone.blocks.3.attn.channel_out.bias"}
UNUSED_PAPER = {f"backbone.blocks.3.attn.{n}" for n in (
    "channel_out.0.weight", "channel_out.0.bias", "channel_out.2.weight", "channel_out.2.bias",
    "channel_proj.weight", "channel_proj.bias")}
_BLOCK_PARAMS = ["norm1", "norm2", "attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2", "attn.channel_in", "attn.channel_out"]
UNUSED_STOP_AT_2 = ({"backbone.blocks.1.attn.channel_out.weight", "backbone.blocks.1.attn.channel_out.bias",
                     "backbone.norm.weight", "backbone.norm.bias"}
                    | {f"backbone.blocks.{i}.{n}.{wb}" for i in (2, 3) for n in _BLOCK_PARAMS
                       for wb in ("weight", "bias")})


@pytest.mark.parametrize("kw,unused", [(dict(), UNUSED_OFFICIAL), (dict(fidelity="paper"), UNUSED_PAPER),
                                       (dict(decode_blocks=(2,)), UNUSED_STOP_AT_2),
                                       (dict(img_size=(64, 96), cross_task_reweighting=False), UNUSED_OFFICIAL)],
                         ids=["official", "paper", "decode-at-2", "64x96-norw"])
def test_every_parameter_gets_a_gradient_except_the_documented_ones(kw, unused):
    model = tiny(**kw).train()
    out = model(images(model.img_size))
    torch.manual_seed(5)
    sum((o * torch.randn_like(o)).sum() for o in out.values()).backward()
    no_grad = {n for n, p in model.named_parameters() if p.grad is None or not p.grad.any()}
    assert no_grad == unused


def test_grad_checkpointing_gives_the_same_gradients():
    ref, ckpt = tiny(), tiny(grad_checkpointing=True)
    ckpt.load_state_dict(ref.state_dict())
    x = images()
    for m in (ref.train(), ckpt.train()):
        sum(o.square().mean() for o in m(x).values()).backward()
    for (n, a), (_, b) in zip(ref.named_parameters(), ckpt.named_parameters()):
        if a.grad is not None:
            torch.testing.assert_close(a.grad, b.grad, atol=1e-6, rtol=1e-5, msg=n)


# ------------------------------------------------------------------------------------------------ determinism


def test_eval_forward_is_deterministic_bit_for_bit():
    model = tiny(drop_path_rate=0.5).eval()
    x = images()
    with torch.no_grad():
        a, b = model(x), model(x)
    assert all(torch.equal(a[t], b[t]) for t in a)


def test_train_mode_drop_path_makes_forwards_differ():
    x = images()
    torch.manual_seed(0)
    no_dp = tiny(drop_path_rate=0.0).train()
    a, b = no_dp(x), no_dp(x)  # BN uses batch statistics in both: without drop path they agree
    assert all(torch.equal(a[t], b[t]) for t in a)
    dp = tiny(drop_path_rate=0.5).train()
    torch.manual_seed(1)
    a = dp(x)
    torch.manual_seed(2)
    b = dp(x)
    assert any(not torch.allclose(a[t], b[t]) for t in a)
    rates = [blk.drop_path.p for blk in dp.backbone.blocks]
    assert rates == pytest.approx([0.0, 0.5 / 3, 1.0 / 3, 0.5])  # linear 0 -> rate over depth


# ------------------------------------------------------------------------------------------------ initialisation


def test_prompts_are_initialised_from_truncated_normal_1_1_on_minus2_2():
    model = tiny(tasks={"semseg": 21, "depth": 1, "human_parts": 7, "sal": 2, "normals": 3, "edge": 1})
    torch.manual_seed(0)
    samples = []
    for _ in range(150):  # 150 x (6 x 64) = 57600 draws
        model._init_weights()
        samples.append(model.backbone.prompts.detach().flatten().clone())
    s = torch.cat(samples).double().numpy()
    assert s.min() >= -2.0 and s.max() <= 2.0
    assert s.min() < -1.5  # the lower tail reaches towards -2 (absolute bounds, not +-2 std around the mean)
    dist = stats.truncnorm(a=-3.0, b=1.0, loc=1.0, scale=1.0)  # standardised bounds: (-2 - 1) / 1, (2 - 1) / 1
    se = dist.std() / math.sqrt(s.size)
    assert abs(s.mean() - dist.mean()) < 5 * se  # 0.7147...; N(1, 1) cut at [-1, 3] would give 1.0
    assert abs(s.std() - dist.std()) < 0.01
    assert stats.kstest(s, dist.cdf).pvalue > 1e-3


def test_released_init_of_new_layers():
    model = tiny()
    blk = model.backbone.blocks[0]
    assert torch.equal(blk.attn.channel_in.bias, torch.zeros_like(blk.attn.channel_in.bias))
    assert 0.015 < blk.attn.channel_in.weight.std().item() < 0.025  # trunc_normal(std 0.02), cut at +-2 absolute
    assert 0.015 < blk.attn.qkv.weight.std().item() < 0.025
    assert torch.equal(blk.norm1.weight, torch.ones(64)) and torch.equal(blk.norm1.bias, torch.zeros(64))
    head = model.heads["semseg"].mt_proj[0].weight
    assert 0.015 < head.std().item() < 0.025
    assert model.backbone.pos_embed.shape == (1, 1 + 16, 64)  # the unused cls slot is kept


# ------------------------------------------------------------------------------------------------ errors


def test_wrong_input_size_names_the_expected_shape():
    model = tiny().eval()
    with pytest.raises(ValueError, match=r"\(B, 3, 64, 64\).*\(1, 3, 64, 80\)"):
        model(torch.zeros(1, 3, 64, 80))
    with pytest.raises(ValueError, match=r"\(2, 1, 64, 64\)"):
        model(torch.zeros(2, 1, 64, 64))


@pytest.mark.parametrize("K,size", [(3, (64, 64)), (8, (64, 64)), (9, (64, 64)), (4, (48, 64)), (16, (64, 96))])
def test_bad_channel_heads_are_refused_naming_K(K, size):
    with pytest.raises(ValueError, match=rf"K={K}\b"):
        tiny(channel_heads=K, img_size=size)


def test_bad_K_is_fine_when_channel_prompts_are_off():
    assert tiny(channel_heads=3, channel_prompts=False).grid == (4, 4)


def test_unknown_task_is_refused_by_name():
    with pytest.raises(ConfigError, match="segmentation"):
        tiny(tasks={"segmentation": 21})


@pytest.mark.parametrize("kw,value", [(dict(fidelity="papr"), "papr"), (dict(fusion="concat"), "concat"),
                                      (dict(prompt_update="after"), "after"), (dict(channel_mlp_layers=3), "3"),
                                      (dict(reweighting_mlp="softmax"), "softmax")])
def test_bad_fidelity_option_values_are_refused_by_name(kw, value):
    with pytest.raises(ConfigError, match=value):
        tiny(**kw)


@pytest.mark.parametrize("kw,pattern", [(dict(attention_impl="flash"), "flash"),
                                        (dict(img_size=(60, 64)), "60x64"),
                                        (dict(decode_blocks=(3, 2)), r"\(3, 2\)"),
                                        (dict(decode_blocks=(0, 4)), r"\(0, 4\)"),
                                        (dict(decode_blocks=(4, 5)), r"\(4, 5\)"),
                                        (dict(tasks={}), "empty"),
                                        (dict(spatial_prompts=False), "spatial_prompts")])
def test_bad_constructor_arguments_are_refused_clearly(kw, pattern):
    with pytest.raises(ValueError, match=pattern):
        tiny(**kw)
