"""PatchMerging with prompts and maps (swin-cityscapes3d.md section 1.4): at the end of every stage but the last,
the tokens are merged 2x2 -> 1 (C -> 2C), the prompts widened to 2C, and the stage's last spatial and channel maps
brought to the next grid and width by learned projections -- these are the maps the decoder reads at that level."""

from __future__ import annotations

from einops import rearrange
from torch import Tensor, nn

from .block import LN_EPS


class PromptPatchMerging(nn.Module):
    """Tokens: the 4 sub-grids x0 = [0::2, 0::2], x1 = [1::2, 0::2], x2 = [0::2, 1::2], x3 = [1::2, 1::2]
    concatenated in that order -> LN(4C) -> ``reduction`` Linear(4C -> 2C, no bias) (standard Swin).
    Prompts: ``task_prompts_up`` Linear(C -> 2C, no bias). Spatial map (B, nH, T, h, w): channels ordered
    head*T + t -> ``spa_attn_ds`` Conv2d(nH*T -> nH*T, 3x3, stride 2, pad 1). Channel map (B, T, C, nh, nw):
    ``process_chan_attn`` Linear(C -> 2C, no bias) on the C axis."""

    def __init__(self, *, dim: int, num_heads: int, num_tasks: int, grid: tuple[int, int]) -> None:
        super().__init__()
        self.grid = grid
        self.norm = nn.LayerNorm(4 * dim, eps=LN_EPS)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)
        self.task_prompts_up = nn.Linear(dim, 2 * dim, bias=False)
        self.process_chan_attn = nn.Linear(dim, 2 * dim, bias=False)
        self.spa_attn_ds = nn.Conv2d(num_heads * num_tasks, num_heads * num_tasks, kernel_size=3, stride=2, padding=1)

    def merge_tokens(self, x: Tensor) -> Tensor:
        """(B, h*w, C) -> (B, h/2*w/2, 2C)."""
        h, w = self.grid
        # sub-grid index j*2 + i for row offset i, column offset j: x0, x1, x2, x3 as in Swin
        x = rearrange(x, "b (h2 i w2 j) c -> b (h2 w2) (j i c)", h2=h // 2, w2=w // 2, i=2, j=2)  # (B, N/4, 4C)
        return self.reduction(self.norm(x))  # (B, N/4, 2C)

    def merge_spatial(self, spatial: Tensor) -> Tensor:
        """(B, nH, T, h, w) -> (B, nH, T, h/2, w/2)."""
        g = spatial.shape[1]
        s = self.spa_attn_ds(rearrange(spatial, "b g t h w -> b (g t) h w"))  # (B, nH*T, h/2, w/2)
        return rearrange(s, "b (g t) h w -> b g t h w", g=g)

    def merge_channel(self, channel: Tensor) -> Tensor:
        """(B, T, C, nh, nw) -> (B, T, 2C, nh, nw)."""
        c = self.process_chan_attn(rearrange(channel, "b t c nh nw -> b t nh nw c"))  # (B, T, nh, nw, 2C)
        return rearrange(c, "b t nh nw c -> b t c nh nw")

    def forward(self, x: Tensor, prompts: Tensor, spatial: Tensor, channel: Tensor
                ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """-> tokens (B, N/4, 2C), prompts (B, T, 2C), spatial (B, nH, T, h/2, w/2), channel (B, T, 2C, nh, nw)."""
        return (self.merge_tokens(x), self.task_prompts_up(prompts), self.merge_spatial(spatial),
                self.merge_channel(channel))
