"""Task-specific prediction heads (Sec. 3.3): a 3x3 conv block with BN and an activation, then a linear projection."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from .upsample_conv import conv3x3_upsampled

HEAD_SCALE = 4  # the heads run at 1/4 resolution: features at 1/16 are upsampled x4


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

    def forward_upsampled(self, feats: Tensor, *, scale: int = HEAD_SCALE,
                          matrices: tuple[Tensor, Tensor] | None = None) -> Tensor:
        """``forward(F.interpolate(feats, scale_factor=scale, mode="bilinear"))`` with the 3x3 convolution computed
        at the features' resolution (``upsample_conv``): same result, ~1/8 of the head's MACs at x4.
        feats (B, f, h, w) -> (B, classes, s*h, s*w)."""
        conv, norm, act = self.mt_proj
        x = conv3x3_upsampled(feats, conv.weight, conv.bias, scale=scale, matrices=matrices)  # (B, mid, s*h, s*w)
        return self.linear_pred(act(norm(x)))


def upsampled_logits(head: TaskHead, feats: Tensor, size: tuple[int, int], *, low_res_conv: bool,
                     matrices: tuple[Tensor, Tensor] | None = None) -> Tensor:
    """One task's features (B, f, h, w) -> x4 bilinear -> head at 1/4 resolution -> logits (B, C_t, H, W).
    ``matrices``: the ``shifted_interpolation`` pair for the features' (h, w) at x4, when the caller keeps them.
    ``low_res_conv``: compute the head's 3x3 convolution before the upsampling (exact; the efficient path)."""
    if low_res_conv:
        x = head.forward_upsampled(feats, matrices=matrices)  # (B, C_t, 4h, 4w)
    else:
        up = F.interpolate(feats, scale_factor=HEAD_SCALE, mode="bilinear", align_corners=False)  # (B, f, 4h, 4w)
        x = head(up)  # (B, C_t, 4h, 4w)
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)  # (B, C_t, H, W)
