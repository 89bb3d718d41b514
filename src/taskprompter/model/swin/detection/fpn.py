"""The detection neck: mmdet's FPN as the released Swin TaskPrompter configures it (swin-cityscapes3d.md section 3.1;
``detection_toolbox/fpn.py`` with ``add_extra_convs='on_output'``, ``num_outs=5``).

    inputs: S maps (B, f, h_l, w_l) (the 3ddet task's decoded maps, strides 8, 16, 32, 32 of the resized input)
    lateral_convs[l]:  Conv1x1(f -> c)
    top-down:          lateral[l-1] += nearest-resize(lateral[l]) to lateral[l-1]'s size, from the top
    fpn_convs[l]:      Conv3x3(c -> c) on each lateral                                     (levels 0..S-1)
    fpn_convs[S]:      Conv3x3 stride 2 on the last output, no ReLU                        (level S, stride 64)
    fpn_convs[S+k]:    stride-2 Conv3x3 on ReLU(previous output) (relu_before_extra_convs; unused with 5 levels)

No norm, no activation; every conv has a bias. Init: mmcv ConvModule's Kaiming normal (fan_out, ReLU gain), bias 0
-- the FPN's Xavier ``init_cfg`` is never applied in the released code (the head's own ``init_weights`` overrides
the BaseModule one).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from .layers import ConvNormAct


class FPN(nn.Module):
    """S input maps of ``in_channels[l]`` channels -> ``num_outs`` maps of ``out_channels`` (S + the extra levels)."""

    def __init__(self, *, in_channels: Sequence[int], out_channels: int = 256, num_outs: int = 5) -> None:
        super().__init__()
        self.num_ins, self.num_outs = len(in_channels), num_outs
        if num_outs < self.num_ins:
            raise ValueError(f"num_outs={num_outs} is fewer than the {self.num_ins} inputs")
        self.lateral_convs = nn.ModuleList(
            ConvNormAct(c, out_channels, 1, norm_groups=None, act=False) for c in in_channels)
        self.fpn_convs = nn.ModuleList(
            ConvNormAct(out_channels, out_channels, 3, norm_groups=None, act=False) for _ in in_channels)
        self.fpn_convs.extend(ConvNormAct(out_channels, out_channels, 3, stride=2, norm_groups=None, act=False)
                              for _ in range(num_outs - self.num_ins))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)

    def forward(self, inputs: Sequence[Tensor]) -> list[Tensor]:
        if len(inputs) != self.num_ins:
            raise ValueError(f"the FPN takes {self.num_ins} maps, got {len(inputs)}")
        laterals = [conv(x) for conv, x in zip(self.lateral_convs, inputs)]  # S x (B, c, h_l, w_l)
        for l in range(self.num_ins - 1, 0, -1):  # top-down, from the coarsest level
            laterals[l - 1] = laterals[l - 1] + F.interpolate(laterals[l], size=laterals[l - 1].shape[-2:],
                                                              mode="nearest")
        outs = [conv(x) for conv, x in zip(self.fpn_convs, laterals)]
        for l in range(self.num_ins, self.num_outs):  # extra levels on the last output
            source = outs[-1] if l == self.num_ins else F.relu(outs[-1])
            outs.append(self.fpn_convs[l](source))  # (B, c, ceil(h/2), ceil(w/2))
        return outs
