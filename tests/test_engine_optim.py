"""Optimiser groups, the learning-rate schedule, and the deterministic step-indexed data order."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from taskprompter.config import OptimConfig
from taskprompter.data.sampling import StepBatches, micro_batch_size, mix_seed, shard_indices
from taskprompter.engine.optim import build_optimizer, is_no_decay, load_optimizer_state, lr_at
from taskprompter.errors import ConfigError


class Prompted(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.prompts = nn.Parameter(torch.ones(3, 4))
        self.pos_embed = nn.Parameter(torch.zeros(1, 5, 4))
        self.fc = nn.Linear(4, 4)
        self.norm = nn.LayerNorm(4)
        self.conv = nn.Conv2d(4, 4, 3)


def test_adamw_excludes_prompts_position_norms_and_biases_from_decay():
    model = Prompted()
    opt = build_optimizer(model, OptimConfig(name="adamw", weight_decay=0.05))
    decay, no_decay = opt.param_groups
    names = {id(p): n for n, p in model.named_parameters()}
    assert sorted(names[id(p)] for p in decay["params"]) == ["conv.weight", "fc.weight"]
    assert sorted(names[id(p)] for p in no_decay["params"]) == [
        "conv.bias", "fc.bias", "norm.bias", "norm.weight", "pos_embed", "prompts"]
    assert (decay["weight_decay"], no_decay["weight_decay"]) == (0.05, 0.0)
    assert is_no_decay("backbone.prompts", torch.zeros(3, 4))


def test_released_adam_decays_every_parameter_coupled():
    model = nn.Linear(1, 1, bias=False)
    nn.init.constant_(model.weight, 2.0)
    opt = build_optimizer(model, OptimConfig(name="adam", lr=0.1, weight_decay=0.5))
    model.weight.grad = torch.zeros_like(model.weight)  # the gradient is only the L2 term: 0.5 * 2 = 1
    opt.step()
    # Adam's first step moves by lr * sign(g) when g is the coupled decay term
    assert torch.allclose(model.weight, torch.tensor([[1.9]]))
    with pytest.raises(ConfigError, match="optim.name 'sgd'"):
        build_optimizer(model, OptimConfig(name="sgd"))


def test_poly_warmup_cosine_values():
    cfg = OptimConfig(lr=2e-5, max_iters=40000, poly_power=0.9)
    assert lr_at(0, cfg) == 2e-5
    assert lr_at(20000, cfg) == pytest.approx(2e-5 * 0.5**0.9, rel=1e-12)
    assert lr_at(40000, cfg) == 0.0
    warm = OptimConfig(lr=1.0, max_iters=100, warmup_iters=4, schedule="constant")
    assert [lr_at(s, warm) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    cos = OptimConfig(lr=1.0, max_iters=10, schedule="cosine")
    assert lr_at(5, cos) == pytest.approx(0.5)


def test_global_stream_is_the_same_for_any_process_split():
    """1 process x 2 accumulation steps and 2 processes x 1 step cover the same samples with the same seeds."""
    one = iter(StepBatches(10, seed=3, batch_size=4, rank=0, world_size=1, accum_steps=2))
    r0 = iter(StepBatches(10, seed=3, batch_size=4, rank=0, world_size=2, accum_steps=1))
    r1 = iter(StepBatches(10, seed=3, batch_size=4, rank=1, world_size=2, accum_steps=1))
    seen = []
    for _ in range(5):  # 20 positions = 2 epochs of 10
        a, b, c = next(one), next(r0), next(r1)
        assert a == [b[0], c[0]]
        seen += [i for micro in a for i, _ in micro]
    assert sorted(seen[:10]) == list(range(10)) and sorted(seen[10:]) == list(range(10))
    assert seen[:10] != seen[10:]  # a new permutation each epoch


def test_resume_continues_the_same_stream():
    full = iter(StepBatches(7, seed=1, batch_size=2, rank=0, world_size=1, accum_steps=1))
    steps = [next(full) for _ in range(9)]
    resumed = iter(StepBatches(7, seed=1, batch_size=2, rank=0, world_size=1, accum_steps=1, start_step=5))
    assert [next(resumed) for _ in range(4)] == steps[5:]
    assert mix_seed(1, 2) == mix_seed(1, 2) != mix_seed(2, 1)


def test_batch_divisibility_and_eval_shards():
    assert micro_batch_size(8, 2, 2) == 2
    with pytest.raises(ConfigError, match="batch_size=6.*processes \\(4\\)"):
        micro_batch_size(6, 4, 1)
    shards = [shard_indices(11, r, 3) for r in range(3)]
    assert sorted(sum(shards, [])) == list(range(11))  # each sample once, no padding duplicates
    assert shards[2] == [2, 5, 8]


def _steps(model: nn.Module, opt: torch.optim.Optimizer, n: int, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    for _ in range(n):
        opt.zero_grad(set_to_none=True)
        for p in model.parameters():
            p.grad = torch.randn(p.shape, generator=gen)
        opt.step()


@pytest.mark.parametrize("name", ["adam", "adamw"])
@pytest.mark.parametrize("saved_fused,resumed_fused", [(False, True), (True, False)])
def test_resume_keeps_the_configured_adam_implementation(name, saved_fused, resumed_fused):
    """The config, not the checkpoint, picks fused or not; either way the update continues as one run would."""
    torch.manual_seed(0)
    reference, resumed = Prompted(), Prompted()
    resumed.load_state_dict(reference.state_dict())
    ref_opt = build_optimizer(reference, OptimConfig(name=name, fused=saved_fused, lr=1e-2))
    _steps(reference, ref_opt, 2, seed=1)
    saved = copy.deepcopy(ref_opt.state_dict())  # as read from disk: no tensors shared with ref_opt
    resumed.load_state_dict(reference.state_dict())
    opt = build_optimizer(resumed, OptimConfig(name=name, fused=resumed_fused, lr=1e-2))
    load_optimizer_state(opt, saved, OptimConfig(name=name, fused=resumed_fused, lr=1e-2))
    assert all(g["fused"] == (True if resumed_fused else None) for g in opt.param_groups)
    assert all(s["step"].item() == 2 for s in opt.state.values())
    _steps(reference, ref_opt, 3, seed=2)
    _steps(resumed, opt, 3, seed=2)
    for a, b in zip(reference.parameters(), resumed.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)  # fused and loop Adam agree to rounding
