"""Plain ViT pieces with timm's parameter names: patch embedding, MLP, stochastic depth, position-table resizing.

timm itself cannot be installed beside the CPU torch wheel on our machines (it imports torchvision), so the few
ViT layers are written here with timm's names -- ``patch_embed.proj``, ``pos_embed``, ``blocks.{i}.norm1``,
``.attn.qkv``, ``.attn.proj``, ``.norm2``, ``.mlp.fc1``, ``.mlp.fc2``, ``norm`` -- so that timm state dicts and the
Google augreg ``.npz`` files load directly (``pretrained.py``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import CheckpointError


class PatchEmbed(nn.Module):
    """Image to patch tokens: a ``patch_size`` x ``patch_size`` stride-``patch_size`` conv (with bias)."""

    def __init__(self, *, patch_size: int = 16, in_chans: int = 3, embed_dim: int = 768) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, images: Tensor) -> Tensor:
        x = self.proj(images)  # (B, C, h, w)
        return x.flatten(2).transpose(1, 2)  # (B, N, C)


class Mlp(nn.Module):
    """ViT feed-forward: Linear(C, rC) -> exact (erf) GELU -> Linear(rC, C)."""

    def __init__(self, *, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class DropPath(nn.Module):
    """Stochastic depth: drop the whole residual branch per sample with probability ``p`` (training only)."""

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"p={self.p}"


def resize_pos_embed(pos_embed: Tensor, grid: tuple[int, int], *, num_prefix: int = 1) -> Tensor:
    """Resize a (1, prefix + g0*g1, C) position table to ``grid`` bicubically (align_corners False).

    The prefix (the unused cls slot) is kept as it is; a square source grid is assumed, as in every released ViT.
    """
    prefix, table = pos_embed[:, :num_prefix], pos_embed[:, num_prefix:]
    n0 = table.shape[1]
    g0 = int(math.isqrt(n0))
    if g0 * g0 != n0:
        raise CheckpointError(f"pos_embed grid of {n0} tokens is not square; cannot resize it")
    if (g0, g0) == tuple(grid):
        return pos_embed
    C = table.shape[-1]
    table = table.reshape(1, g0, g0, C).permute(0, 3, 1, 2)  # (1, C, g0, g0)
    table = F.interpolate(table.float(), size=grid, mode="bicubic", align_corners=False).to(pos_embed.dtype)
    table = table.permute(0, 2, 3, 1).reshape(1, grid[0] * grid[1], C)  # (1, h*w, C)
    return torch.cat([prefix, table], dim=1)


def init_vit_weights(module: nn.Module) -> None:
    """The released init of one module (timm's ``_init_vit_weights``): Linear trunc_normal(0.02) with a zero bias,
    LayerNorm 1 / 0; other modules keep PyTorch's default."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
