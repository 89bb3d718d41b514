"""Task-specific prediction heads (Sec. 3.3): a 3x3 conv block with BN and an activation, then a linear projection."""

from __future__ import annotations

from torch import Tensor, nn


class TaskHead(nn.Module):
    """Conv3x3(in -> mid) -> BN -> GELU (ReLU for the paper's baseline) -> Conv1x1(mid -> classes), at 1/4 resolution.

    Names follow the released code (``mt_proj.{0,1}``, ``linear_pred``) so released checkpoints map one to one.
    """

    def __init__(self, *, in_dim: int, mid_dim: int, out_channels: int, act: str = "gelu") -> None:
        super().__init__()
        self.mt_proj = nn.Sequential(nn.Conv2d(in_dim, mid_dim, 3, padding=1), nn.BatchNorm2d(mid_dim),
                                     nn.GELU() if act == "gelu" else nn.ReLU())
        self.linear_pred = nn.Conv2d(mid_dim, out_channels, 1)
        nn.init.trunc_normal_(self.mt_proj[0].weight, std=0.02)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear_pred(self.mt_proj(x))  # (B, classes, H/4, W/4)
