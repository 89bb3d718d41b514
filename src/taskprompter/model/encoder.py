"""The prompted encoder (Sec. 3.1, Eq. 1): a ViT whose token sequence starts with one learnable prompt per task, and
the Hierarchical Prompting rule that picks the layers whose tokens and affinities are decoded (Sec. 3.3, Fig. 7)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from ..errors import ConfigError
from .layers import PatchEmbed
from .prompt_block import Affinity, PromptBlock


def hp_levels(depth: int, levels: int) -> tuple[int, ...]:
    """Hierarchical Prompting: ``levels`` decoded layers chosen evenly over ``depth`` (1-based block counts; Fig. 7).
    4 levels of ViT-B -> (3, 6, 9, 12); 1 level = the last layer only."""
    if not 1 <= levels <= depth:
        raise ConfigError(f"levels must be in 1..{depth}, got {levels}")
    return tuple(depth * k // levels for k in range(1, levels + 1))


class PromptViT(nn.Module):
    """The encoder: a ViT whose token sequence starts with one learnable prompt per task (Eq. 1).

    Parameter names are timm's (plus ``prompts``), so ImageNet ViT weights load directly. The position table keeps
    the unused cls slot of the pretrained ViTs, (1, 1+N, C); prompts get no position embedding.
    """

    def __init__(self, *, num_tasks: int, grid: tuple[int, int], patch_size: int, embed_dim: int, depth: int,
                 num_heads: int, mlp_ratio: float, drop_path_rate: float, use_prompts: bool,
                 grad_checkpointing: bool, decoded_tokens: str = "block", **attn_kwargs) -> None:
        super().__init__()
        self.grid, self.num_tasks = grid, num_tasks if use_prompts else 0
        self.grad_checkpointing = grad_checkpointing
        self.decoded_tokens = decoded_tokens  # which X' a decoded level gets (fidelity.FIDELITY_OPTIONS)
        N = grid[0] * grid[1]
        self.patch_embed = PatchEmbed(patch_size=patch_size, embed_dim=embed_dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + N, embed_dim))
        if self.num_tasks:
            self.prompts = nn.Parameter(torch.empty(self.num_tasks, embed_dim))  # P (T, C)   Sec. 3.1
        rates = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]  # stochastic depth 0 -> rate
        self.blocks = nn.ModuleList(
            PromptBlock(dim=embed_dim, num_heads=num_heads, mlp_ratio=mlp_ratio, drop_path=rates[i],
                        num_tasks=self.num_tasks, grid=grid, **attn_kwargs) for i in range(depth))
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)

    def forward(self, images: Tensor, decode_blocks: Sequence[int]) -> list[tuple[Tensor, Affinity | None]]:
        """images (B, 3, H, W) -> [(tokens X' (B, N, C), Affinity)] after each block in ``decode_blocks`` (1-based).
        X' is the block's output (``decoded_tokens="block"``; at the last block after the final norm) or its
        attention's output (``"attention"``, Sec. 3.2's X')."""
        x = self.patch_embed(images) + self.pos_embed[:, 1:]  # (B, N, C)
        T = self.num_tasks
        z = torch.cat([self.prompts.expand(x.shape[0], -1, -1), x], dim=1) if T else x  # Z_0 (B, T+N, C)   Eq. 1
        levels = []
        for i, block in enumerate(self.blocks[:max(decode_blocks)], start=1):  # later blocks would feed nothing
            need = i in decode_blocks
            from_attention = need and self.decoded_tokens == "attention"
            if self.grad_checkpointing and self.training:
                z, affinity, *attn = checkpoint(block, z, need, from_attention, use_reentrant=False)
            else:
                z, affinity, *attn = block(z, need, from_attention)
            if from_attention:
                levels.append((attn[0][:, T:], affinity))  # (B, N, C)
            elif need:
                tokens = z[:, T:]  # (B, N, C)
                levels.append((self.norm(tokens) if i == len(self.blocks) else tokens, affinity))
        return levels
