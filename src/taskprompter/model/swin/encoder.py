"""The prompted Swin encoder (swin-cityscapes3d.md section 1.1): patch embedding (conv + LN), T task prompts, four
stages of prompted Swin blocks with PatchMerging between them, and the final norm; it hands the decoder one level
per stage (Hierarchical Prompting, section 1.5).

Parameter names are the released code's -- ``task_prompts``, ``patch_embed.{proj,norm}``,
``layers.{s}.blocks.{j}.{norm1,attn.qkv,attn.proj,attn.relative_position_bias_table,norm2,mlp.fc1,mlp.fc2}``,
``layers.{s}.downsample.{norm,reduction}``, ``norm`` -- which are also Microsoft's Swin names, so ImageNet Swin
weights load directly (``weights.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from .block import LN_EPS, SwinMaps, SwinPromptBlock
from .merging import PromptPatchMerging
from .windows import stage_window


class StageSpec(NamedTuple):
    """One stage's geometry: token grid (h, w), width C, heads nH, blocks, window W_s and shift (odd blocks)."""

    grid: tuple[int, int]
    dim: int
    num_heads: int
    depth: int
    window: int
    shift: int


def stage_specs(*, grid: tuple[int, int], embed_dim: int, depths: Sequence[int], num_heads: Sequence[int],
                window_size: int) -> list[StageSpec]:
    """The stages of a Swin whose first token grid is ``grid``; a ValueError names the stage whose grid does not
    split into windows (the released code would pad there, with no mask for the prompts) or cannot be merged."""
    if len(depths) != len(num_heads) or not depths:
        raise ValueError(f"depths {tuple(depths)} and num_heads {tuple(num_heads)} must be non-empty and equally long")
    specs = []
    h, w = grid
    for s, (depth, heads) in enumerate(zip(depths, num_heads)):
        dim = embed_dim * 2 ** s
        if dim % heads:
            raise ValueError(f"stage {s}: width {dim} is not divisible by its {heads} heads")
        window, shift = stage_window((h, w), window_size)
        if h % window or w % window:
            raise ValueError(f"stage {s}: token grid {h}x{w} does not divide into {window}x{window} windows "
                             f"(window_size {window_size}); choose img_size, resize_ratio, patch_size and window_size "
                             "so that every stage grid is a multiple of its window")
        specs.append(StageSpec((h, w), dim, heads, depth, window, shift))
        if s < len(depths) - 1:
            if h % 2 or w % 2:
                raise ValueError(f"stage {s}: token grid {h}x{w} has an odd side; PatchMerging needs even sides")
            h, w = h // 2, w // 2
    return specs


class Level(NamedTuple):
    """What one hierarchical level hands the decoder (swin-cityscapes3d.md section 1.5)."""

    tokens: Tensor  # (B, C_l, h_l, w_l)    the stage's merged tokens (levels 0..S-2) or norm(x) (last level)
    spatial: Tensor  # (B, nH, T, h_l, w_l) the spatial map the decoder gates with (after spa_attn_ds, or raw)
    channel: Tensor  # (B, T, C_l, nh, nw)  the channel map the decoder scales with (after process_chan_attn, or raw)
    block_maps: SwinMaps  # the stage's last block's own maps, before PatchMerging (for figures)


class SwinPatchEmbed(nn.Module):
    """Image to tokens: a p x p stride-p conv, then LayerNorm (Swin's patch_norm)."""

    def __init__(self, *, patch_size: int, embed_dim: int, in_chans: int = 3) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(embed_dim, eps=LN_EPS)

    def forward(self, images: Tensor) -> Tensor:
        return self.norm(self.proj(images).flatten(2).transpose(1, 2))  # (B, N, C)


class SwinStage(nn.Module):
    """The blocks of one stage (shift on odd blocks) and, except for the last stage, its PatchMerging."""

    def __init__(self, *, spec: StageSpec, num_tasks: int, mlp_ratio: float, drop_paths: Sequence[float],
                 last_stage: bool, grad_checkpointing: bool, **block_kwargs) -> None:
        super().__init__()
        self.spec, self.grad_checkpointing = spec, grad_checkpointing
        self.blocks = nn.ModuleList(SwinPromptBlock(
            dim=spec.dim, num_heads=spec.num_heads, grid=spec.grid, window=spec.window,
            shift=spec.shift if j % 2 else 0, num_tasks=num_tasks, mlp_ratio=mlp_ratio, drop_path=drop_paths[j],
            last=last_stage and j == spec.depth - 1, maps_read=j == spec.depth - 1, **block_kwargs)
            for j in range(spec.depth))
        self.downsample = None if last_stage else PromptPatchMerging(
            dim=spec.dim, num_heads=spec.num_heads, num_tasks=num_tasks, grid=spec.grid)

    def forward(self, x: Tensor, prompts: Tensor) -> tuple[Tensor, Tensor, SwinMaps, tuple[Tensor, Tensor] | None]:
        """x (B, N, C), P (B, T, C) -> x, P (merged when the stage merges), the last block's maps, and the merged
        (spatial, channel) maps (None for the last stage)."""
        maps = None
        for j, block in enumerate(self.blocks):
            need = j == len(self.blocks) - 1  # only the stage's last maps are read
            if self.grad_checkpointing and self.training:
                x, prompts, maps = checkpoint(block, x, prompts, need, use_reentrant=False)
            else:
                x, prompts, maps = block(x, prompts, need)
        if self.downsample is None:
            return x, prompts, maps, None
        x, prompts, spatial, channel = self.downsample(x, prompts, maps.spatial, maps.channel)
        return x, prompts, maps, (spatial, channel)


class PromptSwin(nn.Module):
    """Swin with T task prompts: images (B, 3, H', W') -> one Level per stage."""

    def __init__(self, *, num_tasks: int, specs: Sequence[StageSpec], patch_size: int, embed_dim: int,
                 mlp_ratio: float, drop_path_rate: float, grad_checkpointing: bool, **block_kwargs) -> None:
        super().__init__()
        self.specs, self.num_tasks = list(specs), num_tasks
        self.task_prompts = nn.Parameter(torch.empty(num_tasks, embed_dim))  # P (T, C)
        self.patch_embed = SwinPatchEmbed(patch_size=patch_size, embed_dim=embed_dim)
        total = sum(s.depth for s in specs)
        rates = [drop_path_rate * i / max(total - 1, 1) for i in range(total)]  # stochastic depth 0 -> rate
        self.layers = nn.ModuleList()
        start = 0
        for s, spec in enumerate(specs):
            self.layers.append(SwinStage(spec=spec, num_tasks=num_tasks, mlp_ratio=mlp_ratio,
                                         drop_paths=rates[start:start + spec.depth], last_stage=s == len(specs) - 1,
                                         grad_checkpointing=grad_checkpointing, **block_kwargs))
            start += spec.depth
        self.norm = nn.LayerNorm(specs[-1].dim, eps=LN_EPS)

    @property
    def level_grids(self) -> list[tuple[int, int]]:
        """(h_l, w_l) of each level: the next stage's grid for merged levels, the last stage's for the last."""
        return [spec.grid for spec in self.specs[1:]] + [self.specs[-1].grid]

    def forward(self, images: Tensor) -> list[Level]:
        x = self.patch_embed(images)  # (B, N, C)
        prompts = self.task_prompts.unsqueeze(0).expand(x.shape[0], -1, -1)  # (B, T, C)
        levels = []
        for stage, grid in zip(self.layers, self.level_grids):
            x, prompts, maps, merged = stage(x, prompts)
            if merged is None:  # the last stage: the final norm, its last block's own maps
                x, merged = self.norm(x), (maps.spatial, maps.channel)
            tokens = x.transpose(1, 2).reshape(x.shape[0], x.shape[2], *grid)  # (B, C_l, h_l, w_l)
            levels.append(Level(tokens, merged[0], merged[1], maps))
        return levels
