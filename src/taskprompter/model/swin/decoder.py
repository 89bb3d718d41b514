"""Hierarchical spatial-channel prompt decoding of the Swin TaskPrompter (swin-cityscapes3d.md section 1.5).

At each of the S levels (one per stage), for each task t, with x (B, C_l, h, w) the level's tokens:
  spatial branch:  head j of the task's spatial map gates channel group j (width C_l/nH), + x;
  channel branch:  the task's channel map scales each channel (per channel-head window), + x;
  each branch:     x2 bilinear upsampling for 2-D tasks only (align_corners False), then Conv1x1(C_l -> e);
  fuse:            cat -> Conv1x1(2e -> f) -> Conv3x3 -> BatchNorm -> GELU -> Conv3x3       (B, f, h', w').
2-D tasks then resize the S levels bilinearly to level 0's size, sum them and apply ``multi_scale_fuse``
(Conv3x3 f -> f); the detection task keeps its S maps (the input of the detection neck).

The efficient path gates all tasks, heads and windows in one einops expression; ``attention_impl="naive"`` loops
over heads and windows as the released code does.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from ...tasks import TASKS
from .encoder import Level


def is_dense(task: str) -> bool:
    """2-D tasks (per-pixel outputs) as opposed to the detection task, which keeps its multi-scale maps."""
    return TASKS[task].kind != "detect"


def upsample2(x: Tensor) -> Tensor:
    return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)


class SwinTaskDecoding(nn.Module):
    """The per-task layers of one level: the two prompting projections and the fusion."""

    def __init__(self, *, dim: int, decoder_dim: int, final_dim: int) -> None:
        super().__init__()
        self.spatial_proj = nn.Conv2d(dim, decoder_dim, 1)  # released fea_decode_spa[l][t][0]
        self.channel_proj = nn.Conv2d(dim, decoder_dim, 1)  # released fea_decode_chan[l][t][0]
        self.fuse = nn.Sequential(  # released fea_fuse[l][t] (indices 0, 1, 2, 4 hold the weights)
            nn.Conv2d(2 * decoder_dim, final_dim, 1), nn.Conv2d(final_dim, final_dim, 3, padding=1),
            nn.BatchNorm2d(final_dim), nn.GELU(), nn.Conv2d(final_dim, final_dim, 3, padding=1))


class SwinDecodingLevel(nn.Module):
    """Decoding of all T tasks at one level."""

    def __init__(self, *, tasks: Sequence[str], dim: int, num_heads: int, decoder_dim: int, final_dim: int,
                 attention_impl: str) -> None:
        super().__init__()
        self.task_names, self.num_heads, self.attention_impl = list(tasks), num_heads, attention_impl
        self.tasks = nn.ModuleDict({t: SwinTaskDecoding(dim=dim, decoder_dim=decoder_dim, final_dim=final_dim)
                                    for t in tasks})

    def forward(self, level: Level) -> dict[str, Tensor]:
        """-> {task: (B, f, 2h, 2w) for 2-D tasks, (B, f, h, w) for detection}."""
        x = level.tokens  # (B, C, h, w)
        gate = self._gate_naive if self.attention_impl == "naive" else self._gate
        f_s, f_c = gate(x, level.spatial, level.channel)  # (B, T, C, h, w) each
        feats = {}
        for (task, mod), s, c in zip(self.tasks.items(), f_s.unbind(1), f_c.unbind(1)):
            if is_dense(task):
                s, c = upsample2(s), upsample2(c)  # (B, C, 2h, 2w)
            fused = torch.cat([mod.spatial_proj(s), mod.channel_proj(c)], dim=1)  # (B, 2e, h', w')
            feats[task] = mod.fuse(fused)  # (B, f, h', w')
        return feats

    def _gate(self, x: Tensor, spatial: Tensor, channel: Tensor) -> tuple[Tensor, Tensor]:
        """All tasks, heads and windows at once. spatial (B, nH, T, h, w); channel (B, T, C, nh, nw)."""
        xg = rearrange(x, "b (g c) h w -> b 1 g c h w", g=self.num_heads)  # (B, 1, nH, C/nH, h, w)
        a = rearrange(spatial, "b g t h w -> b t g 1 h w")
        f_s = rearrange(a * xg + xg, "b t g c h w -> b t (g c) h w")  # (B, T, C, h, w)
        nh, nw = channel.shape[-2:]
        xw = rearrange(x, "b c (nh wh) (nw ww) -> b 1 c nh wh nw ww", nh=nh, nw=nw)
        a = rearrange(channel, "b t c nh nw -> b t c nh 1 nw 1")
        f_c = rearrange(a * xw + xw, "b t c nh wh nw ww -> b t c (nh wh) (nw ww)")  # (B, T, C, h, w)
        return f_s, f_c

    def _gate_naive(self, x: Tensor, spatial: Tensor, channel: Tensor) -> tuple[Tensor, Tensor]:
        """The released loops over tasks, heads and channel windows."""
        C, h, w = x.shape[1:]
        d = C // self.num_heads
        nh, nw = channel.shape[-2:]
        wh, ww = h // nh, w // nw
        f_s, f_c = [], []
        for t in range(len(self.task_names)):
            parts = [spatial[:, g, t].unsqueeze(1) * x[:, g * d:(g + 1) * d] for g in range(self.num_heads)]
            f_s.append(torch.cat(parts, dim=1) + x)
            rows = []
            for i in range(nh):
                row = [channel[:, t, :, i, j][..., None, None] * x[:, :, i * wh:(i + 1) * wh, j * ww:(j + 1) * ww]
                       for j in range(nw)]
                rows.append(torch.cat(row, dim=3))
            f_c.append(torch.cat(rows, dim=2) + x)
        return torch.stack(f_s, dim=1), torch.stack(f_c, dim=1)


class SwinPromptDecoder(nn.Module):
    """One SwinDecodingLevel per stage, and the multi-scale fusion of the 2-D tasks."""

    def __init__(self, *, tasks: Sequence[str], level_dims: Sequence[int], level_heads: Sequence[int],
                 decoder_dim: int, final_dim: int, attention_impl: str) -> None:
        super().__init__()
        self.task_names = list(tasks)
        self.levels = nn.ModuleList(SwinDecodingLevel(tasks=tasks, dim=dim, num_heads=heads, decoder_dim=decoder_dim,
                                                      final_dim=final_dim, attention_impl=attention_impl)
                                    for dim, heads in zip(level_dims, level_heads, strict=True))
        self.multi_scale_fuse = nn.ModuleDict({t: nn.Conv2d(final_dim, final_dim, 3, padding=1)
                                               for t in tasks if is_dense(t)})

    def forward(self, levels: Sequence[Level]) -> dict[str, list[Tensor]]:
        """-> {task: [one (B, f, h_l', w_l') map per level]}."""
        per_level = [mod(level) for mod, level in zip(self.levels, levels, strict=True)]
        return {t: [feats[t] for feats in per_level] for t in self.task_names}

    def fuse_scales(self, features: dict[str, list[Tensor]]) -> dict[str, Tensor]:
        """2-D tasks: levels resized bilinearly to level 0's size and summed -> multi_scale_fuse -> (B, f, H0, W0)."""
        fused = {}
        for task, fuse in self.multi_scale_fuse.items():
            maps = features[task]
            size = maps[0].shape[-2:]
            total = sum(m if m.shape[-2:] == size else F.interpolate(m, size=size, mode="bilinear",
                                                                      align_corners=False) for m in maps)
            fused[task] = fuse(total)  # (B, f, H0, W0)
        return fused
