"""torch.compile: the compiled model's outputs and gradients equal eager ones (with selective recomputation and with
gradient checkpointing), and training and the Predictor take it as an option. A 2-block model keeps compilation
short."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from taskprompter.inference import Predictor
from taskprompter.model.build import build_model

TASKS = {"semseg": 21, "normals": 3, "edge": 1}


def _model(**kw):
    torch.manual_seed(0)
    return build_model("taskprompter_tiny", tasks=TASKS, depth=2, decode_blocks=(1, 2), **kw).train()


def _loss(out):
    return sum(o.float().square().mean() for o in out.values())


@pytest.mark.parametrize("kw", [{"selective_recompute": "on"}, {"grad_checkpointing": True}])
def test_compiled_training_step_equals_eager(kw):
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    eager, compiled = _model(**kw), _model(**kw)
    ref = eager(x)
    _loss(ref).backward()
    # aot_eager: dynamo's graph capture and AOTAutograd's joint graph with the checkpoint policies, as the default
    # inductor backend sees them, without its C++ code generation (minutes on 2 cores; the Predictor test below
    # runs inductor)
    out = torch.compile(compiled, backend="aot_eager")(x)
    _loss(out).backward()
    for task in TASKS:
        torch.testing.assert_close(out[task], ref[task], rtol=1e-4, atol=1e-5)
    buffers = dict(eager.named_buffers())  # BatchNorm statistics updated once per step, as eager does
    for name, b in compiled.named_buffers():
        torch.testing.assert_close(b, buffers[name], rtol=1e-4, atol=1e-6, msg=name)
    grads = {n: p.grad for n, p in eager.named_parameters()}
    for name, p in compiled.named_parameters():
        assert (p.grad is None) == (grads[name] is None), name
        if p.grad is not None:
            torch.testing.assert_close(p.grad, grads[name], rtol=1e-3, atol=1e-6, msg=name)


def test_predictor_compile_equals_eager():
    model = _model().eval()
    image = np.random.default_rng(0).uniform(0, 1, (50, 70, 3)).astype(np.float32)
    eager = Predictor(model, amp="off").predict(image, return_logits=True)
    compiled = Predictor(model, amp="off", compile=True)
    assert compiled.forward_fn is not compiled.model
    fast = compiled.predict(image, return_logits=True)
    for task in TASKS:
        torch.testing.assert_close(fast.logits[task], eager.logits[task], rtol=1e-4, atol=1e-5)
