"""Dense Spatial-Channel Task Prompt Decoding (Sec. 3.3; released-code.md section 3) against loop references.

The references follow the released code's structure: loops over tasks, heads (spatial gating of channel group g by
head g) and windows (channel gating of window (i, j) by head (i, j)), the fusion written as explicit convolutions, and
cross-task reweighting as an explicit sum over source tasks.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from taskprompter.model.decoder import HierarchicalPromptDecoder, PromptDecodingLevel
from taskprompter.model.prompt_block import Affinity

TASKS = ["semseg", "human_parts", "sal"]
C, NH, E, FD = 12, 3, 6, 8  # width, heads, decoder width e, final width f
T = len(TASKS)

OFFICIAL = dict(prompting_proj=True, affinity_residual=True, fusion="released", reweighting_mlp="per_task")
PAPER = dict(prompting_proj=False, affinity_residual=False, fusion="paper", reweighting_mlp="shared")


def make_level(*, impl="efficient", spatial=True, channel=True, reweighting=True, seed=0, **opts):
    torch.manual_seed(seed)
    level = PromptDecodingLevel(tasks=TASKS, dim=C, num_heads=NH, decoder_dim=E, final_dim=FD, spatial=spatial,
                                channel=channel, reweighting=reweighting, attention_impl=impl, **opts)
    with torch.no_grad():
        for p in level.parameters():
            p.add_(0.2 * torch.randn_like(p))
        for m in level.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_()
                m.running_var.uniform_(0.5, 2.0)
    return level.eval()


def inputs(grid, K, B=2, seed=1):
    torch.manual_seed(seed)
    h, w = grid
    r = int(K ** 0.5)
    tokens = torch.randn(B, h * w, C)
    aff = Affinity(spatial=torch.randn(B, NH, T, h * w), cross_task=torch.randn(B, NH, T, T),
                   channel=torch.randn(B, T, C, r, r))
    return tokens, aff


def gate_spatial_loop(x, a_t, residual):
    """Head g of A^s_t (B, nH, N) gates channel group g (C/nH channels) of X' (B, C, h, w)."""
    B, _, h, w = x.shape
    d = C // NH
    out = torch.empty_like(x)
    for g in range(NH):
        a = a_t[:, g].reshape(B, 1, h, w)
        seg = x[:, g * d:(g + 1) * d]
        out[:, g * d:(g + 1) * d] = a * seg + seg if residual else a * seg
    return out


def gate_channel_loop(x, a_t, residual):
    """Window (i, j) of X' scaled per channel by A^c_t[:, :, i, j] (B, C)."""
    B, _, h, w = x.shape
    r = a_t.shape[-1]
    out = torch.empty_like(x)
    for i in range(r):
        for j in range(r):
            rows, cols = slice(i * h // r, (i + 1) * h // r), slice(j * w // r, (j + 1) * w // r)
            a, seg = a_t[:, :, i, j][:, :, None, None], x[:, :, rows, cols]
            out[:, :, rows, cols] = a * seg + seg if residual else a * seg
    return out


def bn_eval(x, bn):
    return F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias, training=False, eps=bn.eps)


def fuse_reference(fuse, x, kind):
    if kind == "released":  # Conv1x1(2e -> f) -> Conv3x3(f -> f) -> BN -> GELU -> Conv1x1(f -> f)
        assert [fuse[i].kernel_size for i in (0, 1, 4)] == [(1, 1), (3, 3), (1, 1)]
        y = F.conv2d(x, fuse[0].weight, fuse[0].bias)
        y = F.gelu(bn_eval(F.conv2d(y, fuse[1].weight, fuse[1].bias, padding=1), fuse[2]))
        return F.conv2d(y, fuse[4].weight, fuse[4].bias)
    assert fuse[0].kernel_size == (3, 3)  # Eq. 8: Conv3x3 -> BN -> GELU
    return F.gelu(bn_eval(F.conv2d(x, fuse[0].weight, fuse[0].bias, padding=1), fuse[1]))


def level_reference(level, tokens, aff, grid, opts, *, spatial=True, channel=True, reweighting=True):
    B = tokens.shape[0]
    h, w = grid
    x = tokens.transpose(1, 2).reshape(B, C, h, w)
    feats = []
    for t, mod in enumerate(level.tasks.values()):
        parts = []
        if spatial:
            f_s = gate_spatial_loop(x, aff.spatial[:, :, t], opts["affinity_residual"])
            parts.append(F.conv2d(f_s, mod.spatial_proj.weight, mod.spatial_proj.bias)
                         if opts["prompting_proj"] else f_s)
        if channel:
            f_c = gate_channel_loop(x, aff.channel[:, t], opts["affinity_residual"])
            parts.append(F.conv2d(f_c, mod.channel_proj.weight, mod.channel_proj.bias)
                         if opts["prompting_proj"] else f_c)
        feats.append(fuse_reference(mod.fuse, torch.cat(parts, 1), opts["fusion"]))
    if not reweighting:
        return torch.stack(feats, 1)
    out = []
    for t, mod in enumerate(level.tasks.values()):
        if opts["reweighting_mlp"] == "per_task":  # the prompt-t row (B, nH, 1, T) through task t's own MLP
            mlp, row = mod.reweight, aff.cross_task[:, :, t:t + 1]
        else:  # one MLP over heads of the whole (B, nH, T, T); row t of its (T, T) output
            mlp, row = level.reweight, aff.cross_task
        hidden = F.gelu(F.conv2d(row, mlp[0].weight, mlp[0].bias))
        weights = F.conv2d(hidden, mlp[2].weight, mlp[2].bias)[:, 0]  # (B, 1 or T, T)
        weights = weights[:, 0] if opts["reweighting_mlp"] == "per_task" else weights[:, t]  # (B, T) over sources
        out.append(sum(weights[:, j, None, None, None] * feats[j] for j in range(T)))  # unnormalised, self included
    return torch.stack(out, 1)


@pytest.mark.parametrize("impl", ["efficient", "naive"])
@pytest.mark.parametrize("grid,K", [((4, 6), 4), ((4, 4), 1), ((6, 3), 9)])
@pytest.mark.parametrize("opts", [OFFICIAL, PAPER], ids=["official", "paper"])
def test_level_matches_loop_reference(opts, grid, K, impl):
    level = make_level(impl=impl, **opts)
    tokens, aff = inputs(grid, K)
    with torch.no_grad():
        out = level(tokens, aff, grid)
        ref = level_reference(level, tokens, aff, grid, opts)
    assert out.shape == (2, T, FD, *grid)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("impl", ["efficient", "naive"])
@pytest.mark.parametrize("switches", [dict(spatial=True, channel=False, reweighting=False),
                                      dict(spatial=False, channel=True, reweighting=False),
                                      dict(spatial=True, channel=True, reweighting=False)])
def test_level_switches_match_reference(switches, impl):
    level = make_level(impl=impl, **switches, **OFFICIAL)
    tokens, aff = inputs((4, 6), 4)
    with torch.no_grad():
        torch.testing.assert_close(level(tokens, aff, (4, 6)),
                                   level_reference(level, tokens, aff, (4, 6), OFFICIAL, **switches),
                                   atol=1e-5, rtol=1e-5)
    if not switches["channel"]:
        assert not hasattr(level.tasks["semseg"], "channel_proj")
    if not switches["spatial"]:
        assert not hasattr(level.tasks["semseg"], "spatial_proj")


def test_channel_gate_window_ij_touches_only_window_ij():
    """Changing A^c of window (i, j) for task t changes the gated features of task t inside window (i, j) only."""
    level = make_level(**OFFICIAL)
    grid = (4, 6)
    tokens, aff = inputs(grid, 4, B=1)
    x = tokens.transpose(1, 2).reshape(1, C, *grid)
    base = level._gate(x, aff.channel, "channel")  # (B, T, C, h, w)
    for i in range(2):
        for j in range(2):
            a = aff.channel.clone()
            a[:, 1, :, i, j] += 1.0
            changed = (level._gate(x, a, "channel") != base).any(dim=2)[0]  # (T, h, w)
            expected = torch.zeros(T, *grid, dtype=torch.bool)
            expected[1, 2 * i:2 * i + 2, 3 * j:3 * j + 3] = True
            assert torch.equal(changed, expected), (i, j)


def test_spatial_gate_head_g_touches_only_channel_group_g():
    level = make_level(**OFFICIAL)
    grid = (4, 6)
    tokens, aff = inputs(grid, 4, B=1)
    x = tokens.transpose(1, 2).reshape(1, C, *grid)
    base = level._gate(x, aff.spatial, "spatial")
    d = C // NH
    for g in range(NH):
        a = aff.spatial.clone()
        a[:, g, 2, 5] += 1.0  # head g, task 2, token 5 = (row 0, col 5)
        changed = (level._gate(x, a, "spatial") != base)[0]  # (T, C, h, w)
        expected = torch.zeros(T, C, *grid, dtype=torch.bool)
        expected[2, g * d:(g + 1) * d, 0, 5] = True
        assert torch.equal(changed, expected), g


def test_reweighting_is_unnormalised_and_includes_self():
    """With one source task's features zeroed, the others' contributions remain exactly as w_tj F_j."""
    level = make_level(**OFFICIAL)
    tokens, aff = inputs((4, 6), 4)
    feats = torch.randn(2, T, FD, 4, 6)
    out = level._reweight(feats, aff.cross_task)
    mod = level.tasks["sal"]  # target t = 2
    hidden = F.gelu(F.conv2d(aff.cross_task[:, :, 2:3], mod.reweight[0].weight, mod.reweight[0].bias))
    w = F.conv2d(hidden, mod.reweight[2].weight, mod.reweight[2].bias)[:, 0, 0]  # (B, T)
    assert not torch.allclose(w.sum(1), torch.ones(2))  # not a softmax
    torch.testing.assert_close(out[:, 2], torch.einsum("bj,bjchw->bchw", w, feats), atol=1e-5, rtol=1e-5)


def test_hierarchical_decoder_sums_levels():
    torch.manual_seed(0)
    dec = HierarchicalPromptDecoder(num_levels=3, tasks=TASKS, dim=C, num_heads=NH, decoder_dim=E, final_dim=FD,
                                    spatial=True, channel=True, reweighting=True, attention_impl="efficient",
                                    **OFFICIAL).eval()
    levels = [inputs((4, 6), 4, seed=s) for s in range(3)]
    with torch.no_grad():
        out = dec(levels, (4, 6))
        ref = sum(lvl(tok, aff, (4, 6)) for lvl, (tok, aff) in zip(dec.levels, levels))
    torch.testing.assert_close(out, ref, atol=1e-6, rtol=1e-6)
    assert dec.levels[0].tasks["semseg"].fuse is not dec.levels[1].tasks["semseg"].fuse  # own weights per level
    with pytest.raises(ValueError):  # one (tokens, affinity) per level
        dec(levels[:2], (4, 6))


def test_level_without_prompting_passes_tokens_through():
    level = make_level(spatial=False, channel=False, reweighting=False, **OFFICIAL)
    tokens, _ = inputs((4, 6), 4)
    out = level(tokens, None, (4, 6))
    expected = tokens.transpose(1, 2).reshape(2, C, 4, 6)
    assert out.shape == (2, T, C, 4, 6)
    for t in range(T):
        assert torch.equal(out[:, t], expected)
