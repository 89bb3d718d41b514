"""A 3x3 convolution of bilinearly upsampled features, computed at the features' own resolution.

The heads (Sec. 3.3) upsample each task's features x4 and apply a 3x3 convolution at 1/4 resolution: the most
expensive layer of the model (half of all MACs at the bench's config A). Both steps are linear, and the channel
mixing of each kernel tap commutes with the (per-channel) upsampling, so

    conv3x3(up(x))[Y, X] = sum_{ky, kx} W[ky, kx] . up(x)[Y + ky - 1, X + kx - 1]
                         = sum_{ky, kx} up(W[ky, kx] . x)[Y + ky - 1, X + kx - 1].

Mixing channels first, at low resolution (one GEMM C -> 9f, 1/s^2 of the MACs), leaves a fixed linear map per axis:
bilinear upsampling is separable, and the shift by kx - 1 (with the convolution's zero padding) is a shifted copy of
the 1-D interpolation matrix. Two small GEMMs with those matrices finish the job. At x4 this needs ~1/8 of the
MACs of the convolution and runs ~3-4x faster forward + backward on CPU; the result equals the convolution up to
float rounding (the tests compare with ``F.conv2d(F.interpolate(...))``).

Written here because no library offers it: it is the algebra of this model's head, not a general operator.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def interpolation_matrix(n: int, scale: int, *, device: torch.device | None = None,
                         dtype: torch.dtype = torch.float32) -> Tensor:
    """The (n, s*n) matrix U with up(v) = v @ U for a length-n signal v: PyTorch's own bilinear
    (``align_corners=False``, edge clamping) applied to the n unit vectors, so the two cannot disagree."""
    eye = torch.eye(n, device=device, dtype=dtype).view(n, 1, 1, n)  # n one-hot signals
    return F.interpolate(eye, size=(1, n * scale), mode="bilinear", align_corners=False).view(n, n * scale)


def shifted_interpolation(n: int, scale: int, *, device: torch.device | None = None,
                          dtype: torch.dtype = torch.float32) -> Tensor:
    """(s*n, 3*n): row X, column (k, j) holds U[j, X + k - 1] -- upsampling followed by the tap-k shift of a 3-tap,
    zero-padded convolution (0 where X + k - 1 falls outside the upsampled signal)."""
    u = interpolation_matrix(n, scale, device=device, dtype=dtype)  # (n, S)
    taps = torch.zeros(3, n, n * scale, device=device, dtype=dtype)  # (k, j, X)
    taps[0, :, 1:] = u[:, :-1]  # k = 0 reads X - 1
    taps[1] = u
    taps[2, :, :-1] = u[:, 1:]  # k = 2 reads X + 1
    return taps.permute(2, 0, 1).reshape(n * scale, 3 * n)  # (S, 3n)


def conv3x3_upsampled(x: Tensor, weight: Tensor, bias: Tensor | None, *, scale: int,
                      matrices: tuple[Tensor, Tensor] | None = None) -> Tensor:
    """``F.conv2d(F.interpolate(x, scale_factor=scale, mode="bilinear"), weight, bias, padding=1)`` without
    building the upsampled input. x (B, C, h, w), weight (f, C, 3, 3) -> (B, f, s*h, s*w), channels-last in memory.
    ``matrices``: ``shifted_interpolation`` for (h, scale) and (w, scale), when the caller keeps them (built here
    otherwise)."""
    if weight.shape[-2:] != (3, 3):
        raise ValueError(f"conv3x3_upsampled needs a 3x3 kernel, got {tuple(weight.shape)}")
    B, C, h, w = x.shape
    f = weight.shape[0]
    if matrices is None:
        matrices = (shifted_interpolation(h, scale, device=x.device, dtype=x.dtype),
                    shifted_interpolation(w, scale, device=x.device, dtype=x.dtype))
    my, mx = matrices  # (sh, 3h), (sw, 3w)
    if my.shape != (scale * h, 3 * h) or mx.shape != (scale * w, 3 * w):
        raise ValueError(f"interpolation matrices {tuple(my.shape)}, {tuple(mx.shape)} do not fit a {h}x{w} input "
                         f"at x{scale}")
    taps = weight.permute(2, 3, 0, 1).reshape(9 * f, C)  # (ky kx f, C)
    # the bias rides on the centre tap: its interpolation weights sum to 1 along each axis, so it arrives unchanged
    # (and under autocast in the product's dtype, with no extra pass over the full-resolution output)
    tap_bias = None
    if bias is not None:
        pad = bias.new_zeros(4 * f)
        tap_bias = torch.cat([pad, bias, pad])  # (9f,), zero but for tap (1, 1)
    # every tap's channel mixing, at low resolution, as one 2-D GEMM: a task's slice of the decoder's output is
    # channels-last per image but strided across the batch, and a batched F.linear on it would fall back to a bmm
    # against a weight copied once per row block (in bf16 autocast, 4x the whole head's time at config A)
    z = F.linear(x.permute(0, 2, 3, 1).reshape(B * h * w, C), taps, tap_bias)  # (B h w, 9f)
    z = z.view(B, h, w, 3, 3, f).permute(0, 1, 3, 4, 2, 5).reshape(B, h, 3, 3 * w, f)  # (B, h, ky, (kx w), f)
    rows = torch.matmul(mx, z)  # (B, h, ky, sw, f): upsampled and shifted along x, taps kx summed
    rows = rows.transpose(1, 2).reshape(B, 3 * h, scale * w * f)  # (B, (ky h), (sw f))
    out = torch.matmul(my, rows).view(B, scale * h, scale * w, f)  # (B, sh, sw, f): along y, taps ky summed
    return out.permute(0, 3, 1, 2)  # (B, f, sh, sw), channels last
