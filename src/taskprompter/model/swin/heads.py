"""Task heads of the Swin TaskPrompter (swin-cityscapes3d.md section 1.5).

Released: ``DEConvHead(f, n)`` = ConvTranspose2d(f -> f/2, 2x2, stride 2) -> BN -> GELU -> Conv3x3(f/2 -> f/2) ->
BN -> GELU -> Conv1x1(f/2 -> n): twice the resolution of the fused features. The paper describes "3x3 Conv-BN-ReLU
+ linear" (``head="conv"``: the ViT model's ``TaskHead`` with ReLU, at the features' resolution).
"""

from __future__ import annotations

from torch import Tensor, nn

from ..heads import TaskHead


class DEConvHead(nn.Module):
    """(B, f, h, w) -> (B, n, 2h, 2w). Weights of the three convs trunc_normal(0.02), biases 0.

    Parameter names ``mt_proj.{0,1,3,4}`` and ``linear_pred`` mirror the released ConvHead's; the released
    DEConvHead's own names are unverified (``released.DECONV_HEAD_KEYS`` is the one table that maps them).
    """

    def __init__(self, *, in_dim: int, out_channels: int) -> None:
        super().__init__()
        mid = in_dim // 2
        self.mt_proj = nn.Sequential(
            nn.ConvTranspose2d(in_dim, mid, kernel_size=2, stride=2), nn.BatchNorm2d(mid), nn.GELU(),
            nn.Conv2d(mid, mid, 3, padding=1), nn.BatchNorm2d(mid), nn.GELU())
        self.linear_pred = nn.Conv2d(mid, out_channels, 1)
        for conv in (self.mt_proj[0], self.mt_proj[3], self.linear_pred):
            nn.init.trunc_normal_(conv.weight, std=0.02)
            nn.init.zeros_(conv.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear_pred(self.mt_proj(x))  # (B, n, 2h, 2w)


def build_head(kind: str, *, in_dim: int, out_channels: int) -> nn.Module:
    """``"deconv"`` (released) or ``"conv"`` (paper: Conv3x3-BN-ReLU + Conv1x1 at the features' resolution)."""
    if kind == "deconv":
        return DEConvHead(in_dim=in_dim, out_channels=out_channels)
    return TaskHead(in_dim=in_dim, mid_dim=in_dim, out_channels=out_channels, act="relu")
