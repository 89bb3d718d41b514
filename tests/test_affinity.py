"""Affinity says what it holds, and the figures read the same maps from logits and from probabilities."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from taskprompter.inference import Predictor
from taskprompter.model.build import build_model


def twin_models():
    """The same weights decoding logits (released code) and probabilities (paper): the encoder is identical."""
    torch.manual_seed(0)
    logits = build_model("taskprompter_tiny", decode_affinity="logits").eval()
    with torch.no_grad():  # sharper attention than at initialisation, so that a flattened map shows
        for block in logits.backbone.blocks:
            block.attn.qkv.weight.mul_(8.0)
    probs = build_model("taskprompter_tiny", decode_affinity="probs").eval()
    probs.load_state_dict(logits.state_dict())
    return logits, probs


def test_affinity_records_its_kind_and_scales():
    logits, probs = twin_models()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        _, a = logits(x, return_affinities=True)
        _, b = probs(x, return_affinities=True)
    attn = logits.backbone.blocks[0].attn
    for la, pb in zip(a, b, strict=True):
        assert not la.probs and pb.probs
        assert la.spatial_scale == pb.spatial_scale == attn.scale
        assert la.channel_scale == pb.channel_scale == attn.channel_scale
        # the probabilities are the scaled softmax of the logits over all T+N keys
        T = la.cross_task.shape[-1]
        full = torch.cat([la.cross_task, la.spatial], dim=-1) * la.spatial_scale
        torch.testing.assert_close(pb.spatial, full.softmax(-1)[..., T:], atol=1e-6, rtol=0)
        # both kinds give the same figure maps: distributions over patch tokens and over channels
        torch.testing.assert_close(la.spatial_over_tokens(), pb.spatial_over_tokens(), atol=1e-6, rtol=0)
        torch.testing.assert_close(la.channel_over_channels(), pb.channel_over_channels(), atol=1e-6, rtol=0)
        assert torch.allclose(pb.spatial_over_tokens().sum(-1), torch.ones(()))
        assert torch.allclose(la.channel_over_channels().sum(2), torch.ones(()))


@pytest.mark.parametrize("sliding", [False, True])
def test_predict_shows_the_same_affinity_maps_in_both_fidelity_choices(sliding):
    logits, probs = twin_models()
    image = np.random.default_rng(0).random((50, 70, 3)).astype(np.float32)
    a = Predictor(logits).predict(image, affinity=True, sliding_window=sliding)
    b = Predictor(probs).predict(image, affinity=True, sliding_window=sliding)
    assert set(a.spatial_affinity) == set(b.spatial_affinity) == set(logits.task_names)
    for task in a.spatial_affinity:
        for x, y in zip(a.spatial_affinity[task], b.spatial_affinity[task], strict=True):
            assert x.shape == (50, 70)
            np.testing.assert_allclose(x, y, atol=1e-6)
            assert x.max() > 2 * x.min()  # not flattened: a map softmaxed twice is nearly constant
    for x, y in zip(a.channel_affinity, b.channel_affinity, strict=True):
        np.testing.assert_allclose(x, y, atol=1e-6)
