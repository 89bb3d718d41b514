"""Spatial-Channel Task Prompt Learning (Sec. 3.2, Eqs. 2-5, Fig. 2) inside a pre-norm ViT layer.

Prompts P (B, T, C) and patch tokens X (B, N, C) travel as one sequence Z = [P; X] (Eq. 1). Per layer:
  * spatial: multi-head self-attention over [P^s; X] with P^s = P (Eq. 3). Patch-token queries go through
    ``F.scaled_dot_product_attention``; only the T prompt rows of the logits, (B, nH, T, T+N), are formed
    explicitly, because the decoder needs them (Eq. 6 and cross-task reweighting).
  * channel: P^c = f_{C->N}(P) (B, T, N) attends over the C channels of X, with the N token positions split into
    a sqrt(K) x sqrt(K) grid of windows, one per channel head (Fig. 6). The logits (B, K, T, C) are kept for Eq. 7.
  * prompt update (Eq. 5): P' = P^s' + f_{N->C}(P^c') (paper) or + f_{N->C}(P^c) (released code).

``attention_impl="naive"`` keeps the released structure for tests and benchmarks: the full (T+N)^2 attention is
materialised, channel heads run in a Python loop over windows, and the code's discarded channel ``attn @ v`` is
computed.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from .layers import DropPath, Mlp


class Affinity(NamedTuple):
    """What one layer hands to the decoder (prompt rows only).

    ``probs`` says what the tensors hold, per ``decode_affinity``: False -- the unscaled q.k^T logits (the released
    code decodes with these) -- or True -- the softmax attention maps (paper mode): the spatial rows softmaxed over
    all T+N keys with ``spatial_scale``, the channel rows over the C channels with ``channel_scale``.
    ``spatial_over_tokens`` and ``channel_over_channels`` give the same maps from either kind (figures, predict).
    """

    spatial: Tensor | None  # (B, nH, T, N)      prompt rows of A^s over patch tokens      (Eq. 6)
    cross_task: Tensor | None  # (B, nH, T, T)   prompt rows of A^s over prompts           (reweighting)
    channel: Tensor | None  # (B, T, C, nh, nw)  A^c, one channel vector per window          (Eq. 7)
    probs: bool = False  # False: logits; True: probabilities
    spatial_scale: float = 1.0  # d^-1/2 of the spatial softmax
    channel_scale: float = 1.0  # (N/K)^-1/2 of the channel softmax

    def spatial_over_tokens(self) -> Tensor:
        """(B, nH, T, N): each head's attention of each task prompt over the N patch tokens -- the softmax of the
        scaled logits, renormalised over the patch tokens (the prompts' own columns left out)."""
        a = self.spatial.float()
        if self.probs:
            return a / a.sum(dim=-1, keepdim=True).clamp_min(torch.finfo(a.dtype).tiny)
        return (a * self.spatial_scale).softmax(dim=-1)

    def channel_over_channels(self) -> Tensor:
        """(B, T, C, nh, nw): each channel prompt's attention over the C channels, per window."""
        a = self.channel.float()
        return a if self.probs else (a * self.channel_scale).softmax(dim=2)


def window_grid(grid: tuple[int, int], channel_heads: int) -> tuple[int, int]:
    """(nh, nw) windows for K channel heads: K must be a perfect square whose root divides both grid sides."""
    root = math.isqrt(max(channel_heads, 0))
    if channel_heads < 1 or root * root != channel_heads:
        raise ValueError(f"channel_heads K={channel_heads} must be a perfect square (1, 4, 9, 16, ...)")
    h, w = grid
    if h % root or w % root:
        raise ValueError(f"channel_heads K={channel_heads}: sqrt(K)={root} must divide the token grid {h}x{w}")
    return root, root


def _mlp(dims: list[int]) -> nn.Module:
    """Linear for two dims; Linear-GELU-Linear for three (the paper's '2-layer MLP')."""
    if len(dims) == 2:
        return nn.Linear(dims[0], dims[1])
    return nn.Sequential(nn.Linear(dims[0], dims[1]), nn.GELU(), nn.Linear(dims[1], dims[2]))


class SpatialChannelPromptAttention(nn.Module):
    """The attention of one TaskPrompter layer: spatial prompt learning + channel prompt learning (Fig. 2)."""

    def __init__(
        self, *, dim: int, num_heads: int, num_tasks: int, grid: tuple[int, int], channel_heads: int = 1,
        spatial_prompts: bool = True, channel_prompts: bool = True, channel_mlp_layers: int = 1,
        channel_qkv: bool = False, prompt_update: str = "pre_attention", decode_affinity: str = "logits",
        attention_impl: str = "efficient",
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embed_dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads, self.num_tasks, self.grid = num_heads, num_tasks, grid
        self.scale = (dim // num_heads) ** -0.5
        self.spatial_prompts = spatial_prompts and num_tasks > 0
        self.channel_prompts = channel_prompts and num_tasks > 0
        self.channel_qkv, self.prompt_update = channel_qkv, prompt_update
        self.decode_affinity, self.attention_impl = decode_affinity, attention_impl
        self.qkv = nn.Linear(dim, 3 * dim)  # W_q^s, W_k^s, W_v^s (Eq. 3)
        self.proj = nn.Linear(dim, dim)
        if self.channel_prompts:
            N = grid[0] * grid[1]
            self.windows = window_grid(grid, channel_heads)
            self.channel_scale = (N // channel_heads) ** -0.5
            # f_{C->N}: released code token_trans; f_{N->C}: token_trans1 (Eqs. 2 and 5)
            self.channel_in = _mlp([dim, N] if channel_mlp_layers == 1 else [dim, N, N])
            self.channel_out = _mlp([N, dim] if channel_mlp_layers == 1 else [N, dim, dim])
            if channel_qkv:  # paper Eq. 4 and the "linear layer" after the channel attention
                self.channel_q = nn.Linear(N, N, bias=False)
                self.channel_kv = nn.Linear(dim, 2 * dim, bias=False)
                self.channel_proj = nn.Linear(N, N)

    def forward(self, z: Tensor, *, need_affinity: bool = False) -> tuple[Tensor, Affinity | None]:
        """z: normed [P; X] (B, T+N, C). Returns the attention output (B, T+N, C) and, if asked, the Affinity."""
        T = self.num_tasks
        qkv = rearrange(self.qkv(z), "b n (three g d) -> three b g n d", three=3, g=self.num_heads)
        q, k, v = qkv.unbind(0)  # (B, nH, T+N, d) each
        if not self.spatial_prompts:  # prompts do not take part in spatial attention (ablation w/o SPrompt)
            q, k, v = q[:, :, T:], k[:, :, T:], v[:, :, T:]
        if self.attention_impl == "naive":
            out, prompt_rows = self._spatial_naive(q, k, v)
        else:
            out, prompt_rows = self._spatial_efficient(q, k, v, need_rows=need_affinity)
        out = self.proj(rearrange(out, "b g n d -> b n (g d)"))  # (B, T+N or N, C)
        if not self.spatial_prompts:  # P^s' = 0
            out = torch.cat([out.new_zeros(out.shape[0], T, out.shape[2]), out], dim=1)

        channel = None
        if self.channel_prompts:
            p_update, channel = self._channel(z[:, :T], z[:, T:], need_logits=need_affinity)  # (B,T,C), (B,K,T,C)
            out = torch.cat([out[:, :T] + p_update, out[:, T:]], dim=1)  # Eq. 5
        if not need_affinity:
            return out, None
        spatial = cross = None
        if self.spatial_prompts:
            spatial, cross = prompt_rows[..., T:], prompt_rows[..., :T]  # (B, nH, T, N), (B, nH, T, T)
        if channel is not None:
            if self.decode_affinity == "probs":
                channel = (channel.float() * self.channel_scale).softmax(dim=-1)  # fp32, also under autocast
            nh, nw = self.windows
            channel = rearrange(channel, "b (nh nw) t c -> b t c nh nw", nh=nh, nw=nw)  # (B, T, C, nh, nw)
        return out, Affinity(spatial, cross, channel, probs=self.decode_affinity == "probs", spatial_scale=self.scale,
                             channel_scale=getattr(self, "channel_scale", 1.0))

    # ------------------------------------------------------------------------------------------------ spatial
    def _prompt_row_affinity(self, logits: Tensor) -> Tensor:
        return logits if self.decode_affinity == "logits" else (logits.float() * self.scale).softmax(dim=-1)

    def _spatial_efficient(self, q: Tensor, k: Tensor, v: Tensor, *, need_rows: bool = True
                           ) -> tuple[Tensor, Tensor | None]:
        """All T+N queries through one fused attention (no (T+N)^2 map kept); the T prompt rows of the logits are
        formed explicitly, (B, nH, T, T+N), only when the decoder reads them."""
        T = self.num_tasks if self.spatial_prompts else 0
        out = F.scaled_dot_product_attention(q, k, v)  # (B, nH, T+N, d)
        if T == 0 or not need_rows:
            return out, None
        logits = q[:, :, :T] @ k.transpose(-2, -1)  # (B, nH, T, T+N) unscaled prompt rows
        return out, self._prompt_row_affinity(logits)

    def _spatial_naive(self, q: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor | None]:
        T = self.num_tasks if self.spatial_prompts else 0
        logits = q @ k.transpose(-2, -1)  # (B, nH, T+N, T+N) materialised, as the released code does
        probs = (logits.float() * self.scale).softmax(dim=-1)  # fp32, also under autocast (the product: low)
        return probs @ v, (self._prompt_row_affinity(logits[:, :, :T]) if T else None)

    # ------------------------------------------------------------------------------------------------ channel
    def _channel(self, p: Tensor, x: Tensor, *, need_logits: bool = True) -> tuple[Tensor, Tensor | None]:
        """Channel Task Prompt Learning (Eq. 4). p: (B, T, C) normed prompts; x: (B, N, C) normed tokens.

        Returns the prompt update f_{N->C}(...) (B, T, C) and the channel logits A^c (B, K, T, C) (None when neither
        the decoder nor the prompt update needs them: official mode in a block that is not decoded).
        """
        nh, nw = self.windows
        h, w = self.grid
        p_c = self.channel_in(p)  # P^c (B, T, N)   Eq. 2
        if self.channel_qkv:
            q_c = self.channel_q(p_c)  # Q^c = P^c W_q^c   (B, T, N)
            k_c, v_c = self.channel_kv(x).chunk(2, dim=-1)  # X W_k^c, X W_v^c (B, N, C) each
        else:
            q_c, k_c, v_c = p_c, x, x  # released code: no projections
        if self.attention_impl == "naive":
            return self._channel_naive(p_c, q_c, k_c, v_c)
        if self.prompt_update == "pre_attention" and not need_logits:
            return self.channel_out(p_c), None
        # N = h*w is row-major; head (i, j) owns window rows i*wh:(i+1)*wh, cols j*ww:(j+1)*ww   (Fig. 6)
        windows = "b c (nh wh nw ww) -> b (nh nw) c (wh ww)"
        q_win = rearrange(q_c, windows, nh=nh, nw=nw, wh=h // nh)  # (B, K, T, N/K)
        k_win = rearrange(k_c.transpose(1, 2), windows, nh=nh, nw=nw, wh=h // nh)  # (B, K, C, N/K)
        logits = q_win @ k_win.transpose(-2, -1)  # A^c (B, K, T, C), unscaled
        if self.prompt_update == "pre_attention":  # released: the attended P^c' is never used, so not computed
            return self.channel_out(p_c), logits
        v_win = rearrange(v_c.transpose(1, 2), windows, nh=nh, nw=nw, wh=h // nh)  # (B, K, C, N/K)
        attended = (logits.float() * self.channel_scale).softmax(dim=-1) @ v_win  # (B, K, T, N/K)
        p_c_new = rearrange(attended, "b (nh nw) t (wh ww) -> b t (nh wh nw ww)", nh=nh, nw=nw, wh=h // nh, ww=w // nw)
        if self.channel_qkv:
            p_c_new = self.channel_proj(p_c_new)  # P^c' (B, T, N)
        return self.channel_out(p_c_new), logits  # f_{N->C}(P^c') (B, T, C)   Eq. 5

    def _channel_naive(self, p_c: Tensor, q_c: Tensor, k_c: Tensor, v_c: Tensor) -> tuple[Tensor, Tensor]:
        """The released structure: one Python loop iteration per window/head, attn @ v always computed."""
        nh, nw = self.windows
        h, w = self.grid
        wh, ww = h // nh, w // nw
        q_map = q_c.reshape(q_c.shape[0], q_c.shape[1], h, w)  # (B, T, h, w)
        k_map = k_c.transpose(1, 2).reshape(k_c.shape[0], -1, h, w)  # (B, C, h, w)
        v_map = v_c.transpose(1, 2).reshape(v_c.shape[0], -1, h, w)
        logits, attended = [], torch.zeros_like(q_map)
        for i in range(nh):
            for j in range(nw):
                rows, cols = slice(i * wh, (i + 1) * wh), slice(j * ww, (j + 1) * ww)
                qw = q_map[:, :, rows, cols].flatten(2)  # (B, T, N/K)
                kw = k_map[:, :, rows, cols].flatten(2)  # (B, C, N/K)
                vw = v_map[:, :, rows, cols].flatten(2)
                a = qw @ kw.transpose(1, 2)  # (B, T, C)
                logits.append(a)
                out = (a.float() * self.channel_scale).softmax(dim=-1) @ vw  # (B, T, N/K), discarded (released)
                attended[:, :, rows, cols] = out.reshape(out.shape[0], out.shape[1], wh, ww)
        logits = torch.stack(logits, dim=1)  # (B, K, T, C)
        if self.prompt_update == "pre_attention":
            return self.channel_out(p_c), logits
        p_c_new = attended.flatten(2)  # (B, T, N)
        if self.channel_qkv:
            p_c_new = self.channel_proj(p_c_new)
        return self.channel_out(p_c_new), logits


class PromptBlock(nn.Module):
    """A pre-norm ViT layer whose attention is Spatial-Channel Task Prompt Learning; prompts share norms and MLP."""

    def __init__(self, *, dim: int, num_heads: int, mlp_ratio: float = 4.0, drop_path: float = 0.0, **attn_kwargs):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = SpatialChannelPromptAttention(dim=dim, num_heads=num_heads, **attn_kwargs)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim=dim, hidden_dim=int(dim * mlp_ratio))

    def forward(self, z: Tensor, need_affinity: bool = False, return_attention: bool = False
                ) -> tuple[Tensor, Affinity | None] | tuple[Tensor, Affinity | None, Tensor]:
        """z: [P; X] (B, T+N, C) -> updated [P'; X'] (B, T+N, C) and the layer's Affinity when asked; with
        ``return_attention`` also the attention's output sequence [P^s'; X'] (B, T+N, C) of Sec. 3.2 (before the
        skip connection and the MLP), for ``decoded_tokens="attention"``."""
        attn, affinity = self.attn(self.norm1(z), need_affinity=need_affinity)
        z = z + self.drop_path(attn)
        z = z + self.drop_path(self.mlp(self.norm2(z)))
        return (z, affinity, attn) if return_attention else (z, affinity)
