"""Dense Spatial-Channel Task Prompt Decoding (Sec. 3.3, Eqs. 6-8, Fig. 3) and Hierarchical Prompting.

At every decoding level, for each task t:
  spatial prompting (Eq. 6):  head i of A^s_t (B, nH, h, w) gates channel group i of the tokens X' (B, C, h, w);
  channel prompting (Eq. 7):  A^c_t (B, C, nh, nw) scales each channel of each window of X';
  fusion (Eq. 8):             [F^s_t; F^c_t] -> F_t (B, f, h, w);
  cross-task reweighting:     F_t <- sum_j w_tj F_j, w from the prompt-to-prompt affinity (B, nH, T, T).
The levels' features are summed (Hierarchical Prompting). Gating and reweighting are vectorised over tasks, heads
and windows; ``attention_impl="naive"`` keeps the released code's loops for tests and benchmarks.
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from .prompt_block import Affinity
from .recompute import checkpoint_contexts


def _fusion(kind: str, in_dim: int, out_dim: int) -> nn.Sequential:
    if kind == "released":  # Conv1x1 -> Conv3x3 -> BN -> GELU -> Conv1x1 (indices match the released keys)
        return nn.Sequential(nn.Conv2d(in_dim, out_dim, 1), nn.Conv2d(out_dim, out_dim, 3, padding=1),
                             nn.BatchNorm2d(out_dim), nn.GELU(), nn.Conv2d(out_dim, out_dim, 1))
    return nn.Sequential(nn.Conv2d(in_dim, out_dim, 3, padding=1), nn.BatchNorm2d(out_dim), nn.GELU())  # Eq. 8


def _reweight_mlp(num_heads: int) -> nn.Sequential:
    """The 2-layer MLP over heads that turns prompt affinities into cross-task weights (1x1 convs, as released)."""
    return nn.Sequential(nn.Conv2d(num_heads, num_heads, 1), nn.GELU(), nn.Conv2d(num_heads, 1, 1))


class TaskDecoding(nn.Module):
    """The per-task layers of one decoding level: the prompting projections, the fusion and the reweighting MLP."""

    def __init__(self, *, dim: int, decoder_dim: int, final_dim: int, num_heads: int, spatial: bool, channel: bool,
                 prompting_proj: bool, fusion: str, reweight: bool) -> None:
        super().__init__()
        e = decoder_dim if prompting_proj else dim
        if spatial:
            self.spatial_proj = nn.Conv2d(dim, e, 1) if prompting_proj else nn.Identity()
        if channel:
            self.channel_proj = nn.Conv2d(dim, e, 1) if prompting_proj else nn.Identity()
        if spatial or channel:
            self.fuse = _fusion(fusion, e * (int(spatial) + int(channel)), final_dim)
        if reweight:
            self.reweight = _reweight_mlp(num_heads)


class PromptDecodingLevel(nn.Module):
    """Decoding of all T tasks at one level (one transformer layer's tokens and affinities)."""

    def __init__(self, *, tasks: list[str], dim: int, num_heads: int, decoder_dim: int, final_dim: int,
                 spatial: bool, channel: bool, prompting_proj: bool, affinity_residual: bool, fusion: str,
                 reweighting: bool, reweighting_mlp: str, attention_impl: str) -> None:
        super().__init__()
        self.task_names, self.num_heads = list(tasks), num_heads
        self.spatial, self.channel, self.residual = spatial, channel, affinity_residual
        self.reweighting, self.shared_reweight = reweighting, reweighting_mlp == "shared"
        self.attention_impl = attention_impl
        per_task_rw = reweighting and not self.shared_reweight
        self.tasks = nn.ModuleDict({t: TaskDecoding(
            dim=dim, decoder_dim=decoder_dim, final_dim=final_dim, num_heads=num_heads, spatial=spatial,
            channel=channel, prompting_proj=prompting_proj, fusion=fusion, reweight=per_task_rw) for t in tasks})
        if reweighting and self.shared_reweight:
            self.reweight = _reweight_mlp(num_heads)

    def forward(self, tokens: Tensor, affinity: Affinity | None, grid: tuple[int, int]) -> Tensor:
        """tokens X' (B, N, C) -> prompted task features F (B, T, f, h, w) (or X' itself, (B, T, C, h, w), when the
        level has neither spatial nor channel prompting: the multi-task baseline)."""
        h, w = grid
        x = rearrange(tokens, "b (h w) c -> b c h w", h=h)  # (B, C, h, w)
        T = len(self.task_names)
        if not (self.spatial or self.channel):
            return x.unsqueeze(1).expand(-1, T, -1, -1, -1)
        gate = self._gate_naive if self.attention_impl == "naive" else self._gate
        f_s = gate(x, affinity.spatial, "spatial") if self.spatial else None  # (B, T, C, h, w)
        f_c = gate(x, affinity.channel, "channel") if self.channel else None  # (B, T, C, h, w)
        # unbind rather than f_s[:, i]: indexing in a loop makes the backward zero-fill a whole (B, T, C, h, w)
        # gradient per task
        f_s = f_s.unbind(1) if f_s is not None else [None] * T  # T x (B, C, h, w)
        f_c = f_c.unbind(1) if f_c is not None else [None] * T
        feats = []
        for mod, s, c in zip(self.tasks.values(), f_s, f_c):
            parts = ([mod.spatial_proj(s)] if s is not None else []) + ([mod.channel_proj(c)] if c is not None else [])
            feats.append(mod.fuse(torch.cat(parts, dim=1)))  # F_t (B, f, h, w)   Eq. 8
        if self.attention_impl == "naive":
            feats = torch.stack(feats, dim=1)  # F (B, T, f, h, w)
        else:  # keep channels last: (B, T, h, w, f) in memory
            feats = torch.stack([f.permute(0, 2, 3, 1) for f in feats], dim=1).permute(0, 1, 4, 2, 3)
        if self.reweighting:
            feats = self._reweight(feats, affinity.cross_task)
        return feats

    # ---------------------------------------------------------------------------------------------- prompting
    def _gate(self, x: Tensor, a: Tensor, kind: str) -> Tensor:
        """A_t (.) X' (+ X') for all tasks at once (Eqs. 6, 7) -> (B, T, C, h, w).

        Computed with channels last, (B, T, h, w, C) in memory -- the layout the tokens already have -- so every task's
        (B, C, h, w) slice is a channels-last tensor, which the convolutions and upsampling after it run fastest on.
        """
        xl = x.permute(0, 2, 3, 1)  # (B, h, w, C), a view of the tokens
        if kind == "spatial":  # a: (B, nH, T, N); head g gates channel group g
            g = self.num_heads
            a = rearrange(a, "b g t (h w) -> b t h w g 1", h=x.shape[2])
            xg = rearrange(xl, "b h w (g c) -> b 1 h w g c", g=g)
            out = a * xg + xg if self.residual else a * xg
            out = rearrange(out, "b t h w g c -> b t h w (g c)")
        else:
            nh, nw = a.shape[-2:]  # a: (B, T, C, nh, nw); one scalar per channel and window
            a = rearrange(a, "b t c nh nw -> b t nh 1 nw 1 c")
            xw = rearrange(xl, "b (nh wh) (nw ww) c -> b 1 nh wh nw ww c", nh=nh, nw=nw)
            out = a * xw + xw if self.residual else a * xw
            out = rearrange(out, "b t nh wh nw ww c -> b t (nh wh) (nw ww) c")
        return out.permute(0, 1, 4, 2, 3)  # (B, T, C, h, w) view

    def _gate_naive(self, x: Tensor, a: Tensor, kind: str) -> Tensor:
        """The released code's loops over tasks and heads (spatial) or windows (channel)."""
        B, C, h, w = x.shape
        outs = []
        for t in range(len(self.task_names)):
            out = torch.empty_like(x)
            if kind == "spatial":
                d = C // self.num_heads
                for g in range(self.num_heads):
                    xg = x[:, g * d:(g + 1) * d]
                    ag = a[:, g, t].reshape(B, 1, h, w)
                    out[:, g * d:(g + 1) * d] = ag * xg + xg if self.residual else ag * xg
            else:
                nh, nw = a.shape[-2:]
                wh, ww = h // nh, w // nw
                for i in range(nh):
                    for j in range(nw):
                        xw = x[:, :, i * wh:(i + 1) * wh, j * ww:(j + 1) * ww]
                        aw = a[:, t, :, i, j].reshape(B, C, 1, 1)
                        out[:, :, i * wh:(i + 1) * wh, j * ww:(j + 1) * ww] = aw * xw + xw if self.residual else aw * xw
            outs.append(out)
        return torch.stack(outs, dim=1)

    # ---------------------------------------------------------------------------------------------- reweighting
    def _reweight(self, feats: Tensor, cross: Tensor) -> Tensor:
        """Cross-task reweighting: F_t <- sum_j w_tj F_j, weights unnormalised (self included). cross: (B, nH, T, T)."""
        if self.shared_reweight:
            weights = self.reweight(cross)[:, 0]  # one MLP over heads for all (t, j): (B, T, T)
        elif self.attention_impl == "naive":
            weights = torch.stack([mod.reweight(cross[:, :, t:t + 1])[:, 0, 0]  # (B, T) per target task
                                   for t, mod in enumerate(self.tasks.values())], dim=1)
        else:
            weights = self._per_task_mlp(cross)  # (B, T, T)
        if self.attention_impl == "naive":
            T = feats.shape[1]
            return torch.stack([sum(weights[:, t, j].view(-1, 1, 1, 1) * feats[:, j] for j in range(T))
                                for t in range(T)], dim=1)
        out = torch.einsum("btj,bjhwc->bthwc", weights, feats.permute(0, 1, 3, 4, 2))  # (B, T, h, w, f)
        return out.permute(0, 1, 4, 2, 3)  # (B, T, f, h, w) view, channels last

    def _per_task_mlp(self, cross: Tensor) -> Tensor:
        """All T per-task MLPs (1x1 convs nH->nH, GELU, nH->1) in one batched product over target tasks."""
        convs = [(m.reweight[0], m.reweight[2]) for m in self.tasks.values()]
        w1 = torch.stack([c1.weight[:, :, 0, 0] for c1, _ in convs])  # (T, nH, nH)
        b1 = torch.stack([c1.bias for c1, _ in convs])  # (T, nH)
        w2 = torch.stack([c2.weight[0, :, 0, 0] for _, c2 in convs])  # (T, nH)
        b2 = torch.stack([c2.bias[0] for _, c2 in convs])  # (T,)
        hidden = F.gelu(torch.einsum("toi,bitj->btoj", w1, cross) + b1[None, :, :, None])  # (B, T, nH, T)
        return torch.einsum("to,btoj->btj", w2, hidden) + b2[None, :, None]  # (B, T, T)


class HierarchicalPromptDecoder(nn.Module):
    """Hierarchical Prompting: one PromptDecodingLevel per decoded layer; the levels' features are summed."""

    def __init__(self, *, num_levels: int, **level_kwargs) -> None:
        super().__init__()
        self.levels = nn.ModuleList(PromptDecodingLevel(**level_kwargs) for _ in range(num_levels))

    def forward(self, levels: list[tuple[Tensor, Affinity | None]], grid: tuple[int, int], *,
                checkpointed: bool = False, keep: tuple = ()) -> Tensor:
        """levels: (tokens (B, N, C), Affinity) per decoded layer -> summed task features (B, T, f, h, w).
        ``checkpointed``: keep only each level's inputs and recompute its activations in the backward pass;
        ``keep``: aten ops whose outputs are kept, the rest recomputed (selective recomputation)."""
        feats = None
        for level, (tokens, affinity) in zip(self.levels, levels, strict=True):
            if checkpointed or keep:
                f = checkpoint(level, tokens, affinity, grid, use_reentrant=False,
                               context_fn=partial(checkpoint_contexts, level, keep=() if checkpointed else keep))
            else:
                f = level(tokens, affinity, grid)
            feats = f if feats is None else feats + f
        return feats
