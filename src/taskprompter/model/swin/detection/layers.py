"""The two small layers of the detection neck and head, named as mmcv names them so released weights load.

``ConvNormAct`` is mmcv's ``ConvModule``: ``conv`` (a plain or deformable conv), optional GroupNorm ``gn``, optional
ReLU. ``Scale`` is the learnable per-level scalar of FCOS (a 0-dimensional parameter, as mmcv stores it).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .dcn import ModulatedDeformConv2d


class Scale(nn.Module):
    """x * s with a learnable scalar s (shape (), initial ``value``)."""

    def __init__(self, value: float = 1.0) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(float(value)))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.scale


def group_count(channels: int, groups: int) -> int:
    """The GroupNorm groups for ``channels``: ``groups`` (released 32) when it divides them, else their gcd (narrow
    test heads)."""
    return math.gcd(channels, groups)


class ConvNormAct(nn.Module):
    """conv (k x k, 'same' padding) -> GroupNorm (``norm_groups``; None: none) -> ReLU (``act``).

    ``deformable``: the conv is DCNv2 (`ModulatedDeformConv2d`) rather than ``nn.Conv2d``; the parameter names are
    then ``conv.weight``, ``conv.bias``, ``conv.conv_offset.*`` as in mmcv."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, *, stride: int = 1,
                 norm_groups: int | None = 32, act: bool = True, deformable: bool = False, bias: bool = True) -> None:
        super().__init__()
        padding = kernel_size // 2
        if deformable:
            self.conv: nn.Conv2d = ModulatedDeformConv2d(in_channels, out_channels, kernel_size, stride=stride,
                                                         padding=padding, bias=bias)
        else:
            self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=bias)
        self.gn = nn.GroupNorm(group_count(out_channels, norm_groups), out_channels) if norm_groups else None
        self.act = nn.ReLU() if act else None

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv(x)
        if self.gn is not None:
            x = self.gn(x)
        return self.act(x) if self.act is not None else x
