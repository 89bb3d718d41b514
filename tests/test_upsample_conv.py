"""The heads' 3x3 convolution computed before the x4 upsampling equals the convolution of the upsampled features."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from taskprompter.model.heads import TaskHead, upsampled_logits
from taskprompter.model.upsample_conv import conv3x3_upsampled, interpolation_matrix, shifted_interpolation


def reference(x, weight, bias, scale):
    return F.conv2d(F.interpolate(x, scale_factor=scale, mode="bilinear", align_corners=False), weight, bias,
                    padding=1)


@pytest.mark.parametrize("n,scale", [(1, 4), (2, 4), (5, 2), (7, 4), (8, 3)])
def test_interpolation_matrix_is_pytorch_bilinear(n, scale):
    v = torch.randn(3, n, dtype=torch.float64)
    expected = F.interpolate(v.view(3, 1, 1, n), scale_factor=(1, scale), mode="bilinear",
                             align_corners=False).view(3, n * scale)
    torch.testing.assert_close(v @ interpolation_matrix(n, scale, dtype=torch.float64), expected)
    # a partition of unity: bilinear weights of every output sample sum to one
    torch.testing.assert_close(interpolation_matrix(n, scale).sum(0), torch.ones(n * scale))


def test_shifted_interpolation_by_hand():
    # n = 2, scale = 2: up([a, b]) = [a, .75a + .25b, .25a + .75b, b] (edges clamp)
    u = torch.tensor([[1.0, 0.75, 0.25, 0.0], [0.0, 0.25, 0.75, 1.0]])
    m = shifted_interpolation(2, 2)  # (4, 6): columns (k, j)
    assert m.shape == (4, 6)
    torch.testing.assert_close(m[:, 2:4], u.T)  # k = 1: no shift
    torch.testing.assert_close(m[1:, 0:2], u.T[:-1])  # k = 0: output X reads up[X - 1]
    torch.testing.assert_close(m[0, 0:2], torch.zeros(2))  # ... zero padding before the first sample
    torch.testing.assert_close(m[:-1, 4:6], u.T[1:])  # k = 2: output X reads up[X + 1]
    torch.testing.assert_close(m[-1, 4:6], torch.zeros(2))


@pytest.mark.parametrize("shape,scale,with_bias", [((2, 5, 3, 7), 4, True), ((1, 8, 8, 8), 2, False),
                                                   ((3, 4, 1, 1), 4, True), ((2, 16, 6, 4), 3, True)])
def test_conv3x3_upsampled_equals_conv_of_upsampled(shape, scale, with_bias):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(*shape, generator=gen, dtype=torch.float64)
    weight = torch.randn(6, shape[1], 3, 3, generator=gen, dtype=torch.float64)
    bias = torch.randn(6, generator=gen, dtype=torch.float64) if with_bias else None
    out = conv3x3_upsampled(x, weight, bias, scale=scale)
    assert out.shape == (shape[0], 6, shape[2] * scale, shape[3] * scale)
    torch.testing.assert_close(out, reference(x, weight, bias, scale), rtol=1e-10, atol=1e-10)


def test_conv3x3_upsampled_gradients_and_channels_last_input():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, 12, 6, 5, generator=gen).contiguous(memory_format=torch.channels_last)
    w, b = torch.randn(10, 12, 3, 3, generator=gen) * 0.1, torch.randn(10, generator=gen)
    grad_out = torch.randn(2, 10, 24, 20, generator=gen)
    leaves = [t.clone().requires_grad_() for t in (x, w, b)]
    ours = [t.clone().requires_grad_() for t in (x, w, b)]
    torch.testing.assert_close(conv3x3_upsampled(*ours, scale=4), reference(*leaves, 4), rtol=1e-5, atol=1e-5)
    reference(*leaves, 4).backward(grad_out)
    conv3x3_upsampled(*ours, scale=4).backward(grad_out)
    for a, e in zip(ours, leaves):
        torch.testing.assert_close(a.grad, e.grad, rtol=1e-4, atol=1e-4)


def test_conv3x3_upsampled_rejects_other_kernels():
    with pytest.raises(ValueError, match="3x3"):
        conv3x3_upsampled(torch.zeros(1, 2, 4, 4), torch.zeros(3, 2, 1, 1), None, scale=4)


@pytest.mark.parametrize("train", [True, False])
def test_head_forward_upsampled_equals_forward_of_upsampled(train):
    torch.manual_seed(0)
    head = TaskHead(in_dim=16, mid_dim=8, out_channels=5).double()
    twin = TaskHead(in_dim=16, mid_dim=8, out_channels=5).double()
    twin.load_state_dict(head.state_dict())
    with torch.no_grad():  # non-trivial running statistics for eval mode
        head.mt_proj[1].running_mean.uniform_(-1, 1)
        twin.mt_proj[1].running_mean.copy_(head.mt_proj[1].running_mean)
    head.train(train)
    twin.train(train)
    feats = torch.randn(3, 16, 4, 6, dtype=torch.float64)
    ours = upsampled_logits(head, feats, (32, 48), low_res_conv=True)
    expected = upsampled_logits(twin, feats, (32, 48), low_res_conv=False)
    assert ours.shape == (3, 5, 32, 48)
    torch.testing.assert_close(ours, expected, rtol=1e-10, atol=1e-10)
    # BatchNorm saw the same batch statistics in training mode
    torch.testing.assert_close(head.mt_proj[1].running_var, twin.mt_proj[1].running_var)


def test_conv3x3_upsampled_keeps_the_autocast_dtype():
    """Under bf16 autocast the result stays bf16 (as the convolution's would), so the heads' BN and GELU store bf16."""
    gen = torch.Generator().manual_seed(2)
    x, w = torch.randn(2, 8, 4, 5, generator=gen), torch.randn(6, 8, 3, 3, generator=gen)
    b = torch.randn(6, generator=gen)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = conv3x3_upsampled(x, w, b, scale=4)
    assert out.dtype == torch.bfloat16
    expected = reference(x, w, b, 4)
    assert (out.float() - expected).abs().max() <= 2e-2 * expected.abs().max()  # bf16 rounding, not a wrong map
