"""The Swin block with task prompts (swin-cityscapes3d.md sections 1.2-1.3): spatial prompts prepended to every
window of (S)W-MSA, channel prompts attending over the C channels of the attention output, and the prompt update.

Per block, with P (B, T, C) the prompts and X (B, N, C) the tokens of an h x w grid:
  * spatial: norm1(P) is cloned into each of the nW windows and prepended: [P; X_win] (B*nW, T+M, C). One qkv
    serves both; the relative-position bias and the shift mask (-100) touch only the token-token block, so a
    prompt sees every token of its window and every token sees the prompts. The prompt outputs are averaged over
    windows (P_spa), and the raw prompt->token logits q_t . k_p of all windows, stitched, give the spatial map
    (B, nH, T, h, w).
  * channel: q = chan_q(token_trans(P)) (B, T, c) from the UN-normed prompts; the attention output (after proj
    and the un-roll, before the residual) seen as (B, C, h*w) gives k, v = chan_kv(.) (B, C, c) each. Raw
    channel logits q.k^T (B, K, T, C) are the channel map; softmax(raw * c^-1/2) over C, then @ v, gives chan_x.
  * update: P_spa += token_trans1(chan_proj(chan_x)); P = P + DropPath(P_spa); P += DropPath(MLP(norm2(P))) with
    the tokens' MLP and norm2. The last block of the last stage returns P_spa as it is (nothing reads it).

``attention_impl="efficient"`` runs the window attention through ``F.scaled_dot_product_attention`` with the bias
as an additive float mask (0 on the prompt rows and columns) and forms only the prompt rows' logits q_P k^T
explicitly; ``"naive"`` materialises the (T+M) x (T+M) logits of every window, as the released code does.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from ..layers import DropPath, Mlp
from .windows import relative_position_index, shift_mask, stitch_prompt_maps, window_merge, window_partition

LN_EPS = 1e-5  # Swin's LayerNorm eps (the ViT uses 1e-6)


class SwinMaps(NamedTuple):
    """The prompt maps of one block (logits, or probabilities when the model decodes those)."""

    spatial: Tensor  # (B, nH, T, h, w)   prompt->token maps, stitched from the windows
    channel: Tensor  # (B, T, C, nh, nw)  channel prompt->channel maps, one per channel head (nh x nw = K)


def channel_head_grid(channel_dim: int, channel_heads: int) -> int:
    """sqrt(K): the released code views the c-d channel embedding as a sqrt(c) x sqrt(c) grid cut into sqrt(K) x
    sqrt(K) chunks, one per channel head; K = 1 needs nothing of c."""
    root = math.isqrt(max(channel_heads, 0))
    if channel_heads < 1 or root * root != channel_heads:
        raise ValueError(f"channel_heads K={channel_heads} must be a perfect square (1, 4, 9, 16, ...)")
    if root > 1:
        side = math.isqrt(channel_dim)
        if side * side != channel_dim or side % root:
            raise ValueError(f"channel_heads K={channel_heads} needs channel_dim ({channel_dim}) to be a square "
                             f"whose side is a multiple of sqrt(K)={root}")
    return root


class WindowPromptAttention(nn.Module):
    """(S)W-MSA over [P; X_window] with one qkv; relative-position bias (and shift mask) on the token block only."""

    def __init__(self, *, dim: int, num_heads: int, window: int, num_tasks: int, decode_affinity: str,
                 attention_impl: str) -> None:
        super().__init__()
        self.num_heads, self.window, self.num_tasks = num_heads, window, num_tasks
        self.scale = (dim // num_heads) ** -0.5
        self.decode_affinity, self.attention_impl = decode_affinity, attention_impl
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window - 1) ** 2, num_heads))
        # derived from the window size; released checkpoints carry it, and their loader compares it with this one
        self.register_buffer("relative_position_index", relative_position_index(window), persistent=False)

    def token_bias(self, mask: Tensor | None) -> Tensor:
        """Additive bias of the token-token block: (1, nH, M, M) relative position, (nW, nH, M, M) with a mask."""
        M = self.window ** 2
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]  # (M*M, nH)
        bias = rearrange(bias, "(i j) g -> 1 g i j", i=M)  # (1, nH, M, M)
        return bias if mask is None else bias + mask.unsqueeze(1)  # (nW, nH, M, M)

    def forward(self, x: Tensor, prompts: Tensor, mask: Tensor | None, *, need_rows: bool
                ) -> tuple[Tensor, Tensor, Tensor | None]:
        """x: normed window tokens (B*nW, M, C); prompts: normed P (B, T, C); mask: (nW, M, M) or None.

        Returns the token outputs (B*nW, M, C), the window-averaged prompt outputs P_spa (B, T, C) and, when
        ``need_rows``, the prompt->token rows (B*nW, nH, T, M): raw logits, or softmax probabilities (over all T+M
        keys of the window) when ``decode_affinity="probs"``.
        """
        B, T = prompts.shape[0], self.num_tasks
        nW = x.shape[0] // B
        p = prompts.unsqueeze(1).expand(-1, nW, -1, -1).reshape(B * nW, T, -1)  # (B*nW, T, C) batch-major
        z = torch.cat([p, x], dim=1)  # (B*nW, L, C), L = T+M
        qkv = rearrange(self.qkv(z), "n l (three g d) -> three n g l d", three=3, g=self.num_heads)
        q, k, v = qkv.unbind(0)  # (B*nW, nH, L, d) each
        bias = F.pad(self.token_bias(mask), (T, 0, T, 0)).to(q.dtype)  # (nW or 1, nH, L, L), 0 on prompt rows/cols
        if self.attention_impl == "naive":
            out, rows = self._naive(q, k, v, bias, batch=B)
        else:
            out, rows = self._efficient(q, k, v, bias, batch=B, need_rows=need_rows)
        out = self.proj(rearrange(out, "n g l d -> n l (g d)"))  # (B*nW, L, C)
        p_spa = rearrange(out[:, :T], "(b w) t c -> b w t c", b=B).mean(dim=1)  # (B, T, C) averaged over windows
        return out[:, T:], p_spa, rows

    def _rows(self, logits: Tensor) -> Tensor:
        """Prompt rows over all L keys (B*nW, nH, T, L) -> their token columns (B*nW, nH, T, M)."""
        T = self.num_tasks
        if self.decode_affinity == "probs":
            return (logits.float() * self.scale).softmax(dim=-1)[..., T:]  # fp32 softmax (also under autocast)
        return logits[..., T:]

    def _efficient(self, q: Tensor, k: Tensor, v: Tensor, bias: Tensor, *, batch: int, need_rows: bool
                   ) -> tuple[Tensor, Tensor | None]:
        if bias.shape[0] == 1:  # one bias for every window: broadcast over the B*nW batch
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias[0], scale=self.scale)  # (B*nW, nH, L, d)
        else:  # per-window bias: windows join the head axis so the (nW*nH, L, L) bias broadcasts over B
            fold = "(b w) g l d -> b (w g) l d"
            q5, k5, v5 = (rearrange(t, fold, b=batch) for t in (q, k, v))  # (B, nW*nH, L, d)
            out = F.scaled_dot_product_attention(q5, k5, v5, attn_mask=bias.flatten(0, 1), scale=self.scale)
            out = rearrange(out, "b (w g) l d -> (b w) g l d", g=self.num_heads)  # (B*nW, nH, L, d)
        if not need_rows:
            return out, None
        T = self.num_tasks
        return out, self._rows(q[:, :, :T] @ k.transpose(-2, -1))  # (B*nW, nH, T, M) from the T prompt rows only

    def _naive(self, q: Tensor, k: Tensor, v: Tensor, bias: Tensor, *, batch: int) -> tuple[Tensor, Tensor]:
        """The released structure: the full (T+M) x (T+M) logits of every window, softmax, @ v."""
        logits = q @ k.transpose(-2, -1)  # (B*nW, nH, L, L) raw q.k^T
        attn = rearrange(logits * self.scale, "(b w) g i j -> b w g i j", b=batch) + bias  # bias (nW or 1, nH, L, L)
        attn = rearrange(attn, "b w g i j -> (b w) g i j").float().softmax(dim=-1).to(v.dtype)  # fp32 softmax
        T = self.num_tasks
        rows = logits[:, :, :T] if self.decode_affinity == "logits" else attn[:, :, :T]
        return attn @ v, rows[..., T:]  # (B*nW, nH, L, d), (B*nW, nH, T, M)


class SwinPromptBlock(nn.Module):
    """One Swin block with spatial and channel task prompts; prompts share norm1, norm2 and the MLP with the tokens.

    ``channel_update``: the attended channel result updates the prompts (released code; chan_proj, token_trans1);
    False keeps the channel maps only (paper, "as in ViT"): chan_kv then computes keys alone, and only blocks whose
    maps are read (``maps_read``: a stage's last block) have channel layers. ``last``: the very last block of the
    network, which returns P_spa unchanged (no chan_proj, token_trans1).
    """

    def __init__(self, *, dim: int, num_heads: int, grid: tuple[int, int], window: int, shift: int, num_tasks: int,
                 mlp_ratio: float, drop_path: float, channel_dim: int, channel_heads: int, channel_update: bool,
                 last: bool, maps_read: bool, decode_affinity: str, attention_impl: str) -> None:
        super().__init__()
        self.grid, self.window, self.shift, self.num_tasks = grid, window, shift, num_tasks
        self.channel_dim, self.channel_root = channel_dim, channel_head_grid(channel_dim, channel_heads)
        self.decode_affinity, self.last = decode_affinity, last
        self.updates_prompts = channel_update and not last
        self.has_channel = channel_update or maps_read
        self.norm1 = nn.LayerNorm(dim, eps=LN_EPS)
        self.attn = WindowPromptAttention(dim=dim, num_heads=num_heads, window=window, num_tasks=num_tasks,
                                          decode_affinity=decode_affinity, attention_impl=attention_impl)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim, eps=LN_EPS)
        self.mlp = Mlp(dim=dim, hidden_dim=int(dim * mlp_ratio))
        self.register_buffer("attn_mask", shift_mask(grid, window, shift), persistent=False)  # (nW, M, M) or None
        N = grid[0] * grid[1]
        if self.has_channel:
            self.token_trans = nn.Linear(dim, channel_dim)
            self.chan_q = nn.Linear(channel_dim, channel_dim)
            self.chan_kv = nn.Linear(N, 2 * channel_dim if channel_update else channel_dim)  # tied to the grid
        if self.updates_prompts:
            self.chan_proj = nn.Linear(channel_dim, channel_dim)
            self.token_trans1 = nn.Linear(channel_dim, dim)

    def forward(self, x: Tensor, prompts: Tensor, need_maps: bool = False
                ) -> tuple[Tensor, Tensor, SwinMaps | None]:
        """x (B, N, C), prompts P (B, T, C) -> x' (B, N, C), P' (B, T, C) and, when ``need_maps``, the maps."""
        if need_maps and not self.has_channel:
            raise RuntimeError("this block has no channel layers: its maps are not read (channel_update=False)")
        B, N, C = x.shape
        h, w = self.grid
        s = self.shift
        xs = self.norm1(x).view(B, h, w, C)  # (B, h, w, C)
        if s:
            xs = torch.roll(xs, shifts=(-s, -s), dims=(1, 2))
        windows = window_partition(xs, self.window)  # (B*nW, M, C)
        out, p_spa, rows = self.attn(windows, self.norm1(prompts), self.attn_mask, need_rows=need_maps)
        xs = window_merge(out, self.window, self.grid)  # (B, h, w, C)
        if s:
            xs = torch.roll(xs, shifts=(s, s), dims=(1, 2))
        a = xs.reshape(B, N, C)  # attention output X^s (B, N, C), before the residual

        raw = None
        if need_maps or self.updates_prompts:
            raw, chan_x = self._channel(prompts, a, attend=self.updates_prompts)  # (B, K, T, C), (B, T, c)
            if self.updates_prompts:
                p_spa = p_spa + self.token_trans1(self.chan_proj(chan_x))  # (B, T, C)

        x = x + self.drop_path(a)
        x = x + self.drop_path(self.mlp(self.norm2(x)))  # (B, N, C)
        if self.last:
            prompts = p_spa  # unused downstream (released: LAST_BLOCK_FLAG)
        else:
            prompts = prompts + self.drop_path(p_spa)
            prompts = prompts + self.drop_path(self.mlp(self.norm2(prompts)))  # (B, T, C)
        if not need_maps:
            return x, prompts, None
        spatial = stitch_prompt_maps(rows, batch=B, grid=self.grid, window=self.window, shift=s)  # (B, nH, T, h, w)
        if self.decode_affinity == "probs":
            raw = (raw.float() * self.channel_dim ** -0.5).softmax(dim=-1)
        r = self.channel_root
        return x, prompts, SwinMaps(spatial, rearrange(raw, "b (nh nw) t c -> b t c nh nw", nh=r, nw=r))

    def _channel(self, prompts: Tensor, a: Tensor, *, attend: bool) -> tuple[Tensor, Tensor | None]:
        """Channel prompt attention: raw logits (B, K, T, C) and, when ``attend``, chan_x (B, T, c)."""
        c, r = self.channel_dim, self.channel_root
        q = self.chan_q(self.token_trans(prompts))  # (B, T, c) from the un-normed prompts
        kv = self.chan_kv(a.transpose(1, 2))  # (B, C, 2c) or (B, C, c): each channel described by its map
        k, v = kv[..., :c], kv[..., c:]  # (B, C, c) each
        if r == 1:
            heads, side = "b t c -> b 1 t c", {}
        else:  # the c-d embedding as a sqrt(c) x sqrt(c) grid, cut into r x r chunks (one per head)
            heads, side = "b t (nh gh nw gw) -> b (nh nw) t (gh gw)", dict(nh=r, nw=r, gh=math.isqrt(c) // r)
        qh, kh = rearrange(q, heads, **side), rearrange(k, heads, **side)  # (B, K, T, c/K), (B, K, C, c/K)
        raw = qh @ kh.transpose(-2, -1)  # (B, K, T, C) raw channel logits
        if not attend:
            return raw, None
        vh = rearrange(v, heads, **side)  # (B, K, C, c/K)
        chan_x = (raw.float() * c ** -0.5).softmax(dim=-1).to(vh.dtype) @ vh  # (B, K, T, c/K), fp32 softmax
        back = "b 1 t c -> b t c" if r == 1 else "b (nh nw) t (gh gw) -> b t (nh gh nw gw)"
        return raw, rearrange(chan_x, back, **side)  # (B, T, c)
