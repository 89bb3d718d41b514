"""``optim.step_in_backward``: the optimiser step fused into the backward gives the ordinary step's weights bit for bit
(Adam and AdamW, fused kernel or not, the learning rate changing between steps, a parameter used twice, one without a
gradient, activation checkpointing), holds no gradient after the backward, saves and resumes its state in the
ordinary optimiser's format (either resumes the other), in the trainer too; what it cannot serve is refused with what
to change. Under grad_checkpointing the trainer's bf16 autocast runs without its weight cache, which changes no value.
And the bench's memory breakdown: sizes from the tensors, adding up to the peak."""

from __future__ import annotations

import copy
import io
import json
from dataclasses import replace

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from taskprompter import bench
from taskprompter.bench import BenchConfig, memory_breakdown
from taskprompter.config import Config, OptimConfig, TrainConfig, load_config
from taskprompter.data.synthetic import generate
from taskprompter.engine.optim import (
    StepInBackward,
    build_optimizer,
    check_step_in_backward,
    load_optimizer_state,
    lr_at,
    set_lr,
)
from taskprompter.engine.train import train
from taskprompter.errors import ConfigError
from taskprompter.model.build import build_model
from taskprompter.weighting import build_weighting


class Net(nn.Module):
    """Prompts, a Linear used twice (its gradient sums two uses), norms, and a parameter that never gets a gradient."""

    def __init__(self) -> None:
        super().__init__()
        self.prompts = nn.Parameter(0.1 * torch.randn(3, 4))
        self.fc = nn.Linear(4, 4)
        self.norm = nn.LayerNorm(4)
        self.head = nn.Linear(4, 2)
        self.unused = nn.Parameter(torch.ones(2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, N, 4)
        z = torch.cat([self.prompts.expand(x.shape[0], -1, -1), x], dim=1)  # (B, 3+N, 4)
        z = self.fc(self.norm(self.fc(z)).relu())
        return self.head(z).square().mean()


def _run(model: nn.Module, opt, cfg: OptimConfig, steps: range, loss_fn) -> None:
    """Training steps ``steps`` (their lr from the schedule; inputs drawn from the step index)."""
    for step in steps:
        set_lr(opt, lr_at(step, cfg))
        opt.zero_grad(set_to_none=True)
        loss_fn(model, step).backward()
        opt.step()


def _net_loss(model: nn.Module, step: int) -> torch.Tensor:
    return model(torch.randn(2, 5, 4, generator=torch.Generator().manual_seed(step)))


def _assert_same_state(a: dict, b: dict) -> None:
    """Two optimiser state dicts: the same groups, the same parameters in the same order, equal tensors."""
    assert a["param_groups"] == b["param_groups"]
    assert list(a["state"]) == list(b["state"])
    for i, state in a["state"].items():
        assert state.keys() == b["state"][i].keys()
        assert all(torch.equal(v, b["state"][i][k]) for k, v in state.items())


def _twins(name: str, fused: bool, **extra) -> tuple[OptimConfig, OptimConfig, Net, Net]:
    cfg = OptimConfig(name=name, lr=1e-2, weight_decay=0.1, fused=fused, warmup_iters=2, max_iters=6, **extra)
    torch.manual_seed(0)
    ordinary = Net()
    fused_model = copy.deepcopy(ordinary)
    return cfg, replace(cfg, step_in_backward=True), ordinary, fused_model


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("name", ["adam", "adamw"])
def test_same_weights_as_the_ordinary_step(name, fused):
    cfg, sib_cfg, ordinary, model = _twins(name, fused)
    opt, sib = build_optimizer(ordinary, cfg), build_optimizer(model, sib_cfg)
    assert isinstance(sib, StepInBackward) and not isinstance(opt, StepInBackward)
    before = copy.deepcopy(model.state_dict())
    _run(ordinary, opt, cfg, range(5), _net_loss)  # lr 5e-3, 1e-2, then the poly decay: a new lr every step
    _run(model, sib, sib_cfg, range(5), _net_loss)
    for (n, a), b in zip(ordinary.named_parameters(), model.parameters()):
        assert torch.equal(a, b), n
    assert all(p.grad is None for p in model.parameters())  # each gradient freed after its update
    assert torch.equal(model.unused, before["unused"])  # no gradient, no update: as the ordinary step
    assert not torch.equal(model.fc.weight, before["fc.weight"])
    _assert_same_state(opt.state_dict(), sib.state_dict())


def test_same_weights_with_activation_checkpointing_and_recomputation():
    """The tiny TaskPrompter with grad_checkpointing and selective recomputation, drop-path on: each parameter is
    updated only after the last recomputation that reads it, so the weights equal the ordinary step's."""
    cfg = OptimConfig(name="adamw", lr=1e-2, weight_decay=1e-2, warmup_iters=2, max_iters=4)
    models = []
    for step_in_backward in (False, True):
        torch.manual_seed(0)
        model = build_model("taskprompter_tiny", tasks={"semseg": 21, "edge": 1, "normals": 3}, depth=2,
                            decode_blocks=(1, 2), img_size=(64, 64), grad_checkpointing=True,
                            selective_recompute="on", drop_path_rate=0.1).train()
        c = replace(cfg, step_in_backward=step_in_backward)

        def loss(model: nn.Module, step: int) -> torch.Tensor:
            images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(step))
            torch.manual_seed(100 + step)  # drop-path masks alike
            return sum(o.square().mean() for o in model(images).values())

        _run(model, build_optimizer(model, c), c, range(3), loss)
        models.append(model)
    for (n, a), b in zip(models[0].named_parameters(), models[1].parameters()):
        assert torch.equal(a, b), n
    assert all(torch.equal(a, b) for a, b in zip(models[0].buffers(), models[1].buffers()))  # BN statistics


def _reloaded(state: dict) -> dict:
    """As read back from a checkpoint: torch.save / torch.load(weights_only=True)."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


@pytest.mark.parametrize("name", ["adam", "adamw"])
def test_state_saves_in_the_ordinary_format_and_resumes_bit_exactly(name):
    """Two steps, a checkpoint, three more: the same weights as five uninterrupted steps, whichever of the two kinds
    wrote the checkpoint and whichever resumes it."""
    cfg, sib_cfg, ordinary, model = _twins(name, fused=True)
    start = copy.deepcopy(model.state_dict())
    full = Net()
    full.load_state_dict(start)
    full_opt = build_optimizer(full, sib_cfg)
    _run(full, full_opt, sib_cfg, range(5), _net_loss)

    saved = {}
    for kind, c, m in (("ordinary", cfg, ordinary), ("step_in_backward", sib_cfg, model)):
        opt = build_optimizer(m, c)
        _run(m, opt, c, range(2), _net_loss)
        saved[kind] = (copy.deepcopy(m.state_dict()), _reloaded(opt.state_dict()))
    _assert_same_state(saved["ordinary"][1], saved["step_in_backward"][1])  # interchangeable checkpoints

    for writer in saved:
        for c in (cfg, sib_cfg):
            resumed = Net()
            resumed.load_state_dict(saved[writer][0])
            opt = build_optimizer(resumed, c)
            load_optimizer_state(opt, _reloaded(saved[writer][1]), c)  # loading aliases the tensors it reads
            _run(resumed, opt, c, range(2, 5), _net_loss)
            for (n, a), b in zip(full.named_parameters(), resumed.parameters()):
                assert torch.equal(a, b), (writer, c.step_in_backward, n)
            _assert_same_state(full_opt.state_dict(), opt.state_dict())


def test_hooks_can_be_removed():
    torch.manual_seed(0)
    model = Net()
    sib = build_optimizer(model, OptimConfig(step_in_backward=True))
    sib.remove()
    _net_loss(model, 0).backward()
    assert model.fc.weight.grad is not None  # an ordinary backward again
    with pytest.raises(ConfigError, match="train.loss_weighting=uw"):
        sib.add_param_group({"params": [nn.Parameter(torch.zeros(1))]})


# ------------------------------------------------------------------------------------------------- refusals


def _cfg(optim: dict | None = None, **train) -> Config:
    optim = {"step_in_backward": True, "grad_clip": 0.0, **(optim or {})}
    return Config(optim=OptimConfig(**optim), train=TrainConfig(**train))


def _weighting(name: str):
    return build_weighting(name, tasks=["semseg", "edge"], base_weights={"semseg": 1.0, "edge": 1.0})


@pytest.mark.parametrize(("cfg", "kwargs", "match"), [
    (_cfg({"grad_clip": 10.0}), {}, r"optim.grad_clip=10 .*set optim.grad_clip=0"),
    (_cfg(accum_steps=2), {}, r"train.accum_steps=2 .*use train.accum_steps=1"),
    (_cfg(), {"world_size": 2}, r"before DDP averages .* 2 processes: train in one process"),
    (_cfg(amp="fp16"), {"scaler": True}, r"train.amp=fp16 scales the loss .*use train.amp=bf16"),
    (_cfg(loss_weighting="uw"), {"weighting": "uw"}, r"train.loss_weighting=uw learns parameters"),
    (_cfg(loss_weighting="gradnorm_scale"), {"weighting": "gradnorm_scale"},
     r"train.loss_weighting=gradnorm_scale needs each task's gradient apart"),
])
def test_what_needs_every_gradient_first_is_refused(cfg, kwargs, match):
    args = {"world_size": 1, "scaler": False, "weighting": "fixed", **kwargs}
    args["weighting"] = _weighting(args["weighting"])
    with pytest.raises(ConfigError, match=match) as err:
        check_step_in_backward(cfg, **args)
    assert "or optim.step_in_backward=false" in str(err.value)


def test_what_it_serves_is_accepted():
    for name in ("fixed", "dwa", "famo"):
        check_step_in_backward(_cfg(amp="bf16", loss_weighting=name), world_size=1, scaler=False,
                               weighting=_weighting(name))
    check_step_in_backward(_cfg({"step_in_backward": False, "grad_clip": 10.0}, accum_steps=4), world_size=8,
                           scaler=True, weighting=_weighting("uw"))  # off: nothing to check


# ------------------------------------------------------------------------------------------------- the trainer


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("synth") / "PASCALContext", format="pascal_context", num=8,
                    size=(64, 64), seed=3)


def _train_cfg(root, out, *extra):
    # constant after a warm-up: the learning rate changes in the first steps and does not depend on max_iters
    return load_config("synthetic_tiny", [f"data.root={root}", f"train.out_dir={out}", "train.progress=false",
                                          "data.max_val_samples=1", "optim.grad_clip=0", "optim.schedule=constant",
                                          "optim.warmup_iters=3", "train.checkpoint_every=100", *extra])


def _final(out) -> tuple[dict, dict]:
    return (load_file(str(out / "last" / "model.safetensors")),
            torch.load(out / "last" / "train_state.pt", weights_only=True)["optimizer"])


def test_trainer_refuses_before_writing_anything(root, tmp_path):
    with pytest.raises(ConfigError, match="optim.grad_clip=10"):
        train(_train_cfg(root, tmp_path / "run", "optim.step_in_backward=true", "optim.grad_clip=10"))
    assert not (tmp_path / "run").exists()


def test_trainer_step_in_backward_equals_the_ordinary_run_and_resumes_either_checkpoint(root, tmp_path, monkeypatch):
    """4 steps with the ordinary step; 4 with the step in the backward; 2 ordinary ones resumed for 2 more in the
    backward: the same weights and optimiser state, bit for bit."""
    updates = []
    update = StepInBackward._update

    def counted(self, param):
        updates.append(param)
        update(self, param)

    monkeypatch.setattr(StepInBackward, "_update", counted)
    train(_train_cfg(root, tmp_path / "ordinary", "optim.max_iters=4"))
    assert not updates
    train(_train_cfg(root, tmp_path / "sib", "optim.max_iters=4", "optim.step_in_backward=true"))
    n_params = len(updates) // 4
    assert n_params > 0 and len(updates) == 4 * n_params  # every step updated the parameters in the backward
    train(_train_cfg(root, tmp_path / "resumed", "optim.max_iters=2"))
    train(_train_cfg(root, tmp_path / "resumed", "optim.max_iters=4", "optim.step_in_backward=true"), resume=True)
    assert len(updates) == 6 * n_params
    reference, ref_state = _final(tmp_path / "ordinary")
    for run in ("sib", "resumed"):
        weights, state = _final(tmp_path / run)
        assert [k for k in reference if not torch.equal(reference[k], weights[k])] == [], run
        _assert_same_state(ref_state, state)
    log = [json.loads(line) for line in (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if r["split"] == "train"][-1] == 4


@pytest.mark.parametrize("ckpt", [False, True])
def test_trainer_drops_the_autocast_weight_cache_under_checkpointing(root, tmp_path, monkeypatch, ckpt):
    """bf16 with grad_checkpointing: autocast runs without its weight cache (which would hold a bf16 copy of every
    weight to the end of the forward); without checkpointing, with it."""
    import taskprompter.engine.train as train_module

    seen = []
    build = train_module.build_model

    def spied(*args, **kwargs):
        model = build(*args, **kwargs)
        model.register_forward_pre_hook(lambda m, x: seen.append(torch.is_autocast_cache_enabled()))
        return model

    monkeypatch.setattr(train_module, "build_model", spied)
    train(_train_cfg(root, tmp_path / "run", "optim.max_iters=1", "train.amp=bf16",
                     f"model.overrides.grad_checkpointing={str(ckpt).lower()}"))
    assert seen[0] is (not ckpt)


def test_the_autocast_weight_cache_changes_no_value_under_checkpointing():
    """What lets the trainer drop it: bf16 outputs and gradients with and without the cache, equal bit for bit."""
    results = []
    for cache in (True, False):
        torch.manual_seed(0)
        model = build_model("taskprompter_tiny", grad_checkpointing=True, drop_path_rate=0.1).train()
        images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
        torch.manual_seed(5)
        with torch.autocast("cpu", dtype=torch.bfloat16, cache_enabled=cache):
            out = model(images)
            loss = sum(o.float().mean() for o in out.values())
        loss.backward()
        results.append((out, {n: p.grad for n, p in model.named_parameters() if p.grad is not None}))
    (a, grads_a), (b, grads_b) = results
    assert all(torch.equal(a[t], b[t]) for t in a)
    assert grads_a.keys() == grads_b.keys() and all(torch.equal(g, grads_b[n]) for n, g in grads_a.items())


# ------------------------------------------------------------------------------------------------- the bench


def test_memory_breakdown_adds_up_from_the_tensor_sizes():
    """A Linear(4, 3) and a BatchNorm1d(3), by hand: parameters 4*3 + 3 + 3 + 3 = 21 fp32 values (84 bytes),
    buffers 3 + 3 fp32 and one int64 counter (32 bytes); Adam's state two moments per parameter (168 bytes) and a
    4-byte step count for each of the 4 parameter tensors (16 bytes); gradients 84 bytes after an ordinary step, the
    largest parameter's 48 bytes inside the backward."""
    mib = 2 ** 20
    for step_in_backward, grads in ((False, 84), (True, 48)):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))
        opt = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)
        if step_in_backward:
            opt = StepInBackward(opt)
        model(torch.randn(5, 4)).sum().backward()
        opt.step()
        out = memory_breakdown(peak=1000.0, base=900.0, runtime=300.0, model=model, optimizer=opt)
        assert out["weights_mib"] * mib == 84 + 32
        assert out["optim_state_mib"] * mib == 168 + 16
        assert out["grads_mib"] * mib == grads
        assert out["runtime_mib"] == 300.0
        assert out["other_mib"] == pytest.approx(900 - 300 - (116 + 184) / mib)
        assert out["activations_mib"] == pytest.approx(100 - grads / mib)
        assert sum(out.values()) == pytest.approx(1000.0)  # the parts add up to the peak


def test_bench_plans_and_checks_the_step_in_backward():
    base = BenchConfig(preset="taskprompter_tiny", tasks=2, img_size=(32, 32))
    (_, cfgs), = bench.plan_groups(base, modes=["train"], grad_ckpt=True, amps=["off", "bf16"],
                                   step_in_backward=True)
    assert [c.variant for c in cfgs if c.step_in_backward] == [
        "efficient+step-in-bwd", "efficient+step-in-bwd+bf16", "efficient+ckpt+step-in-bwd",
        "efficient+ckpt+step-in-bwd+bf16"]
    assert bench.check_step_in_backward_parity(replace(base, grad_checkpointing=True, step_in_backward=True)) == {
        "weights": 0.0}
    row = bench.parity_row(replace(base, step_in_backward=True), {"weights": 1e-9})
    assert row == {"parity_weights": 1e-9, "parity_ok": 0}  # anything but bit for bit is a failure


def test_memory_child_breaks_the_step_in_backward_down():
    """A fresh process: the parts add up to the peak, and the gradients are one parameter's (the largest)."""
    cfg = BenchConfig(preset="taskprompter_tiny", tasks=2, img_size=(32, 32), step_in_backward=True)
    out = bench.measure_memory(cfg)
    model = bench.build(cfg)
    assert out["grads_mib"] == max(p.numel() for p in model.parameters()) * 4 / 2 ** 20
    assert out["weights_mib"] * 2 ** 20 == bench.tensor_bytes([*model.parameters(), *model.buffers()])
    parts = sum(out[k] for k in bench.BREAKDOWN)
    assert parts == pytest.approx(out["peak_mib"])
