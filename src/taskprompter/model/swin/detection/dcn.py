"""Modulated deformable convolution (DCNv2, Zhu et al. 2019) in pure PyTorch with ``grid_sample``
(swin-cityscapes3d.md section 3.5), a drop-in for mmcv's ``ModulatedDeformConv2dPack`` that the released FCOS3D head
uses as the last conv of each tower.

For output pixel p and kernel tap k (row-major over the kh x kw taps), the input is sampled bilinearly at
p * stride - padding + k * dilation + (dy_k, dx_k) -- zero outside the image, as mmcv and torchvision sample -- and
multiplied by the mask m_k; the weight then mixes channels and taps like a plain conv. The ``conv_offset`` conv
(zero-initialised: at init every offset is 0 and every mask sigmoid(0) = 0.5) predicts 3 x kh x kw channels:
the first 2 kh kw are the offsets as (dy, dx) per tap (torchvision's and mmcv's layout), the last kh kw the mask
logits.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.utils import _pair


def _taps(n: int, dilation: int, device, dtype) -> Tensor:
    return torch.arange(n, device=device, dtype=dtype) * dilation


def modulated_deform_conv2d(x: Tensor, offset: Tensor, mask: Tensor, weight: Tensor, bias: Tensor | None = None, *,
                            stride: int | tuple[int, int] = 1, padding: int | tuple[int, int] = 0,
                            dilation: int | tuple[int, int] = 1) -> Tensor:
    """x (B, C, H, W), offset (B, 2K, Ho, Wo) as (dy, dx) per tap, mask (B, K, Ho, Wo) in [0, 1], weight
    (Cout, C, kh, kw), K = kh kw -> (B, Cout, Ho, Wo). One group and one offset group (what the head uses)."""
    B, C, H, W = x.shape
    Cout, Cin, kh, kw = weight.shape
    if Cin != C:
        raise ValueError(f"weight expects {Cin} input channels, x has {C} (groups are not supported)")
    (sh, sw), (ph, pw), (dh, dw) = _pair(stride), _pair(padding), _pair(dilation)
    Ho = (H + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    Wo = (W + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    K = kh * kw
    if offset.shape != (B, 2 * K, Ho, Wo) or mask.shape != (B, K, Ho, Wo):
        raise ValueError(f"offset {tuple(offset.shape)} / mask {tuple(mask.shape)} do not fit an output of "
                         f"{Ho}x{Wo} with {K} taps: expected ({B}, {2 * K}, {Ho}, {Wo}) / ({B}, {K}, {Ho}, {Wo})")
    dtype = torch.promote_types(torch.promote_types(offset.dtype, x.dtype), torch.float32)  # sampling in >= fp32
    off = offset.to(dtype).view(B, K, 2, Ho, Wo)
    rows = torch.arange(Ho, device=x.device, dtype=dtype) * sh - ph  # (Ho,)
    cols = torch.arange(Wo, device=x.device, dtype=dtype) * sw - pw  # (Wo,)
    ky = _taps(kh, dh, x.device, dtype).repeat_interleave(kw)  # (K,) row offset of tap k = (i, j) -> i * kw + j
    kx = _taps(kw, dw, x.device, dtype).repeat(kh)  # (K,)
    py = rows[None, None, :, None] + ky[None, :, None, None] + off[:, :, 0]  # (B, K, Ho, Wo) pixel-index rows
    px = cols[None, None, None, :] + kx[None, :, None, None] + off[:, :, 1]  # (B, K, Ho, Wo) pixel-index columns
    # pixel index -> grid_sample's [-1, 1] with align_corners=False: g = (2 p + 1) / n - 1 maps back to p exactly
    # (also for a size-1 side); bilinear with zero padding is mmcv's zero-outside sampling
    grid = torch.stack([(2 * px + 1) / W - 1, (2 * py + 1) / H - 1], dim=-1)  # (B, K, Ho, Wo, 2)
    grid = grid.view(B, K * Ho, Wo, 2)  # fp32 even under autocast: bf16 cannot hold pixel positions
    sampled = F.grid_sample(x.to(dtype), grid, mode="bilinear", padding_mode="zeros",
                            align_corners=False)  # (B, C, K*Ho, Wo)
    sampled = sampled.view(B, C, K, Ho, Wo) * mask.to(dtype)[:, None]  # (B, C, K, Ho, Wo)
    out = torch.einsum("bckhw,ock->bohw", sampled, weight.reshape(Cout, C, K).to(dtype))  # (B, Cout, Ho, Wo)
    out = out if bias is None else out + bias.to(out.dtype)[None, :, None, None]
    return out.to(x.dtype)


class ModulatedDeformConv2d(nn.Conv2d):
    """DCNv2 with its own offset/mask conv, parameter names as mmcv's ``ModulatedDeformConv2dPack`` (``weight``,
    ``bias``, ``conv_offset.weight``, ``conv_offset.bias``), so released state dicts load. A subclass of
    ``nn.Conv2d`` so that parameter and MAC counters see its main conv.

    Init as mmcv: weight uniform(+-1/sqrt(C kh kw)), bias 0, ``conv_offset`` all zeros (at init: 0.5 x the conv)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, *, stride: int = 1,
                 padding: int = 1, dilation: int = 1, bias: bool = True) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=padding, dilation=dilation,
                         bias=bias)
        kh, kw = self.kernel_size
        self.conv_offset = nn.Conv2d(in_channels, 3 * kh * kw, kernel_size, stride=stride, padding=padding,
                                     dilation=dilation, bias=True)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        n = self.in_channels * self.kernel_size[0] * self.kernel_size[1]
        bound = 1.0 / math.sqrt(n)
        nn.init.uniform_(self.weight, -bound, bound)
        if self.bias is not None:
            nn.init.zeros_(self.bias)
        if hasattr(self, "conv_offset"):  # nn.Conv2d.__init__ calls this before conv_offset exists
            nn.init.zeros_(self.conv_offset.weight)
            nn.init.zeros_(self.conv_offset.bias)

    def forward(self, x: Tensor) -> Tensor:
        K = self.kernel_size[0] * self.kernel_size[1]
        out = self.conv_offset(x)  # (B, 3K, Ho, Wo)
        offset, mask_logits = out[:, : 2 * K], out[:, 2 * K:]  # mmcv: cat(o1, o2) = the first 2K channels
        return modulated_deform_conv2d(x, offset, mask_logits.sigmoid(), self.weight, self.bias, stride=self.stride,
                                       padding=self.padding, dilation=self.dilation)
