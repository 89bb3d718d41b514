"""The FCOS3D-style monocular 3-D detection head of the released Swin TaskPrompter (swin-cityscapes3d.md section
3.1; ``detection_toolbox/det_head.py::FCOS3DHead`` with ``configs/cityscapes3d/det_head_params.py``).

    S decoded maps (B, f, h, w) -> neck (FPN, 5 levels of c = 256 channels)
    per level, shared weights:
      cls tower:  3 x [Conv3x3 + GN(32) + ReLU], the last conv DCNv2          -> conv_cls_prev (c, c/2) -> conv_cls K
      reg tower:  3 x [Conv3x3 + GN(32) + ReLU], the last conv DCNv2
                  -> conv_reg_prevs[g] (c) -> conv_regs[g]: offset 2, depth 1, size 3, angles 3, ltrb 4
                  -> conv_dir_cls_prev (c) -> conv_dir_cls 6 (2 bins x 3 angles)
                  -> conv_centerness_prev (c) -> conv_centerness 1
      activations with the level's four Scales: offset s0 x, depth exp(s1 x), size exp(s2 x) + 1e-6, angles x,
      ltrb ReLU(s3 x)

Every ConvModule conv has a bias (``conv_bias=True``). Parameter names are the released ones (the neck sits inside
the head as ``neck``), so ``heads.3ddet.*`` of a released checkpoint load as they are. Init as the released
``init_weights``: plain convs normal(0, 0.01) with bias 0, the class and direction biases -log(99) (prior 0.01),
GroupNorm 1 / 0, the DCN convs their own init, the FPN Kaiming (fpn.py), scales 1.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .dcn import ModulatedDeformConv2d
from .fpn import FPN
from .layers import ConvNormAct, Scale
from .outputs import REG_GROUPS

PRIOR_BIAS = -math.log((1 - 0.01) / 0.01)  # -log(99): sigmoid = 0.01 at init
NUM_SCALES = 4  # per level: offset, depth, size, ltrb


def activate(raw: Tensor, scales: Sequence[nn.Module]) -> Tensor:
    """The regression branches' raw conv outputs (B, 13, h, w) -> the regression vector (outputs.py), in fp32 (or
    fp64)."""
    offset, depth, size, angles, ltrb = raw.to(torch.promote_types(raw.dtype, torch.float32)).split(REG_GROUPS, dim=1)
    s_offset, s_depth, s_size, s_ltrb = scales
    return torch.cat([s_offset(offset), s_depth(depth).exp(), s_size(size).exp() + 1e-6, angles,
                      F.relu(s_ltrb(ltrb))], dim=1)


class FCOS3DHead(nn.Module):
    """S maps of ``in_channels`` -> per-level class / regression / direction / centerness maps (5 levels).

    ``channels``: the neck's and towers' width c (released 256; the branches use c, the class branch (c, c/2)).
    ``deformable``: the towers' last conv is DCNv2 (released) or a plain conv (then ``conv_offset`` is absent, so
    released weights do not load). ``norm_groups``: GroupNorm groups (reduced to the gcd for narrow layers)."""

    def __init__(self, *, in_channels: int, num_classes: int = 6, num_inputs: int = 4, num_levels: int = 5,
                 channels: int = 256, stacked_convs: int = 3, norm_groups: int = 32, deformable: bool = True) -> None:
        super().__init__()
        c, g = channels, norm_groups
        self.num_classes, self.num_levels = num_classes, num_levels
        self.neck = FPN(in_channels=[in_channels] * num_inputs, out_channels=c, num_outs=num_levels)

        def tower() -> nn.ModuleList:
            return nn.ModuleList(ConvNormAct(c, c, 3, norm_groups=g, deformable=deformable and i == stacked_convs - 1)
                                 for i in range(stacked_convs))

        def branch(*widths: int) -> nn.ModuleList:
            dims = (c, *widths)
            return nn.ModuleList(ConvNormAct(a, b, 3, norm_groups=g) for a, b in zip(dims[:-1], dims[1:]))

        self.cls_convs, self.reg_convs = tower(), tower()
        self.conv_cls_prev = branch(c, c // 2)
        self.conv_cls = nn.Conv2d(c // 2, num_classes, 1)
        self.conv_reg_prevs = nn.ModuleList(branch(c) for _ in REG_GROUPS)
        self.conv_regs = nn.ModuleList(nn.Conv2d(c, d, 1) for d in REG_GROUPS)
        self.conv_dir_cls_prev = branch(c)
        self.conv_dir_cls = nn.Conv2d(c, 2 * 3, 1)  # 2 bins for each of the 3 angles
        self.conv_centerness_prev = branch(c)
        self.conv_centerness = nn.Conv2d(c, 1, 1)
        self.scales = nn.ModuleList(nn.ModuleList(Scale(1.0) for _ in range(NUM_SCALES)) for _ in range(num_levels))
        self._init_weights()

    def _init_weights(self) -> None:
        for name, m in self.named_modules():
            if name.startswith("neck") or isinstance(m, ModulatedDeformConv2d):
                continue  # the FPN's Kaiming init and the DCN's own init stay
            if isinstance(m, nn.Conv2d) and not name.endswith("conv_offset"):
                nn.init.normal_(m.weight, std=0.01)
                nn.init.zeros_(m.bias)
        for conv in (self.conv_cls, self.conv_dir_cls):
            nn.init.constant_(conv.bias, PRIOR_BIAS)

    def forward_level(self, x: Tensor, scales: Sequence[nn.Module]) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """One FPN level (B, c, h, w) -> cls (B, K, h, w), bbox (B, 13, h, w), dir (B, 6, h, w), ctr (B, 1, h, w)."""
        cls_feat, reg_feat = x, x
        for layer in self.cls_convs:
            cls_feat = layer(cls_feat)
        for layer in self.reg_convs:
            reg_feat = layer(reg_feat)
        y = cls_feat
        for layer in self.conv_cls_prev:
            y = layer(y)
        cls_score = self.conv_cls(y)
        raw = []
        for prev, conv in zip(self.conv_reg_prevs, self.conv_regs):
            y = reg_feat
            for layer in prev:
                y = layer(y)
            raw.append(conv(y))
        bbox = activate(torch.cat(raw, dim=1), scales)  # (B, 13, h, w)
        y = reg_feat
        for layer in self.conv_dir_cls_prev:
            y = layer(y)
        dir_cls = self.conv_dir_cls(y)
        y = reg_feat
        for layer in self.conv_centerness_prev:
            y = layer(y)
        return cls_score, bbox, dir_cls, self.conv_centerness(y)

    def forward_head(self, features: Sequence[Tensor]) -> tuple[list[Tensor], list[Tensor], list[Tensor], list[Tensor]]:
        """S decoded maps -> (cls_score, bbox_pred, dir_cls, centerness), each a list over the 5 levels."""
        levels = self.neck(features)  # L x (B, c, h_l, w_l)
        per_level = [self.forward_level(x, scales) for x, scales in zip(levels, self.scales)]
        return tuple(list(t) for t in zip(*per_level))  # type: ignore[return-value]
