"""Loss weighting: each method's weights equal a reference written from its paper's formula; `fixed` trains exactly as
before; the state resumes bit for bit; 2 gloo processes weigh as 1 process on the same global batch, and so do
accumulated micro-batches (the two-pass step); bf16 on the CPU."""

from __future__ import annotations

import contextlib
import json
import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from taskprompter.config import LOSS_WEIGHTINGS, load_config
from taskprompter.engine import train as train_module
from taskprompter.engine.stop import StopRequest
from taskprompter.engine.train import train
from taskprompter.errors import ConfigError
from taskprompter.losses import MultiTaskLoss
from taskprompter.model.build import build_model, build_variant
from taskprompter.weighting import (
    FAMO,
    WEIGHTINGS,
    DynamicWeightAverage,
    GradNormScale,
    SharedFeatures,
    UncertaintyWeighting,
    begin_accumulated_step,
    build_weighting,
    feature_grad_sq,
    shared_features_for,
    weighted_backward,
)
from taskprompter.weighting import backward as weighting_backward

FIVE = ["semseg", "human_parts", "sal", "normals", "edge"]


def _batch(b: int = 2, h: int = 4, w: int = 4) -> tuple[dict, dict]:
    g = torch.Generator().manual_seed(0)
    channels = {"semseg": 21, "human_parts": 7, "sal": 2, "normals": 3, "edge": 1}
    outputs = {t: torch.randn(b, c, h, w, generator=g, requires_grad=True) for t, c in channels.items()}
    batch = {t: torch.randint(0, max(c, 2), (b, h, w), generator=g) for t, c in channels.items() if t != "normals"}
    batch["normals"] = torch.randn(b, 3, h, w, generator=g)
    return outputs, batch


# ------------------------------------------------------------------------------------------------- the formulas


def test_the_registry_is_the_config_choices():
    assert tuple(WEIGHTINGS) == LOSS_WEIGHTINGS
    assert all(cls.name == name for name, cls in WEIGHTINGS.items())


def test_fixed_gives_exactly_todays_total_and_keeps_no_state():
    outputs, batch = _batch()
    criterion = MultiTaskLoss(FIVE, weights={"edge": 20.0})
    losses = criterion(outputs, batch)
    fixed = build_weighting("fixed", tasks=criterion.tasks, base_weights=criterion.weights)
    fixed.begin_step(0)
    total = fixed.combine(losses)
    assert torch.equal(total, losses["total"])  # the same sum, bit for bit
    assert fixed.weights() == {"semseg": 1.0, "human_parts": 2.0, "sal": 5.0, "normals": 10.0, "edge": 20.0}
    assert dict(fixed.state_dict()) == {}  # train.loss_weights changed on resume still take effect
    assert fixed.param_group() is None


@pytest.mark.parametrize("variant", ["simple", "kendall"])
def test_uncertainty_weighting_is_kendalls_formula(variant):
    tasks = ["semseg", "depth", "normals", "edge"]
    L = torch.tensor([1.5, 0.3, 0.8, 0.05])
    s = torch.tensor([0.2, -0.5, 1.0, 0.0])
    uw = UncertaintyWeighting(tasks=tasks, base_weights={}, variant=variant)
    with torch.no_grad():
        uw.log_vars.copy_(s)
    share = 0.25  # e.g. 2 processes x 2 micro-batches: the regulariser counted once per step
    total = uw.combine(dict(zip(tasks, L)), share=share)
    total.backward()
    if variant == "simple":  # sum_t exp(-s_t) L_t + s_t
        a, r = torch.ones(4), torch.ones(4)
    else:  # Eq. 10 with s = log sigma^2: regression 1/(2 sigma^2) L + log sigma, classification 1/sigma^2 L + log sigma
        a, r = torch.tensor([1.0, 0.5, 0.5, 1.0]), torch.full((4,), 0.5)
    expected = sum(a[i] * math.exp(-s[i]) * L[i] + share * r[i] * s[i] for i in range(4))
    assert total.item() == pytest.approx(float(expected), rel=1e-6)
    grad = [-a[i] * math.exp(-s[i]) * L[i] + share * r[i] for i in range(4)]  # d total / d s_t
    assert uw.log_vars.grad.tolist() == pytest.approx([float(g) for g in grad], rel=1e-6)
    uw.begin_step(0)
    assert list(uw.weights().values()) == pytest.approx([float(a[i] * math.exp(-s[i])) for i in range(4)], rel=1e-6)
    group = uw.param_group()
    assert group["params"] == [uw.log_vars] and group["weight_decay"] == 0.0


def test_uw_with_fixed_weights_weighs_the_weighted_losses():
    uw = UncertaintyWeighting(tasks=["semseg", "edge"], base_weights={"semseg": 1.0, "edge": 50.0}, fixed_weights=True)
    uw.begin_step(0)
    assert uw.weights() == {"semseg": 1.0, "edge": 50.0}


def test_dwa_is_eq_7_over_the_last_two_periods():
    tasks = ["semseg", "normals", "edge"]
    g = torch.Generator().manual_seed(1)
    steps = torch.rand(8, 3, generator=g, dtype=torch.float64) + 0.1  # (steps, T) global losses
    dwa = DynamicWeightAverage(tasks=tasks, base_weights={}, period=2, temperature=2.0)
    for step in range(8):
        dwa.begin_step(step)
        periods = step // 2  # completed before this step
        if periods < 2:
            expected = [1.0, 1.0, 1.0]
        else:
            last, before = steps[2 * periods - 2:2 * periods].mean(0), steps[2 * periods - 4:2 * periods - 2].mean(0)
            e = [math.exp(float(last[k] / before[k]) / 2.0) for k in range(3)]
            expected = [3 * x / sum(e) for x in e]
        assert list(dwa.weights().values()) == pytest.approx(expected, rel=1e-12), step
        dwa.update(steps[step], step)
    with_fixed = DynamicWeightAverage(tasks=tasks, base_weights={"edge": 50.0}, period=2, fixed_weights=True)
    with_fixed.load_state_dict(dwa.state_dict())
    with_fixed.begin_step(8)
    dwa.begin_step(8)
    assert with_fixed.weights()["edge"] == pytest.approx(50 * dwa.weights()["edge"], rel=1e-12)


class ReleasedFAMO:
    """The released FAMO (Cranial-XIX/FAMO, famo.py), its update fed the next step's losses."""

    def __init__(self, n: int) -> None:
        self.w = torch.zeros(n, dtype=torch.float64, requires_grad=True)
        self.opt = torch.optim.Adam([self.w], lr=0.025, weight_decay=0.01)
        self.prev = None

    def weights(self, losses: torch.Tensor) -> torch.Tensor:
        """d/dL of sum_t (z_t / c) log(L_t + 1e-8), c = sum_t z_t / (L_t + 1e-8) detached."""
        losses = losses.clone().requires_grad_(True)
        z = F.softmax(self.w, -1).detach()
        D = losses + 1e-8
        c = (z / D).sum().detach()
        (grad,) = torch.autograd.grad((D.log() * z / c).sum(), losses)
        self.prev = losses.detach()
        return grad

    def update(self, curr: torch.Tensor) -> None:
        delta = (self.prev + 1e-8).log() - (curr + 1e-8).log()
        (d,) = torch.autograd.grad(F.softmax(self.w, -1), self.w, grad_outputs=delta)
        self.opt.zero_grad()
        self.w.grad = d
        self.opt.step()


def test_famo_is_the_released_update_with_the_next_steps_losses():
    tasks = ["semseg", "normals", "edge", "sal"]
    g = torch.Generator().manual_seed(2)
    ref, famo = ReleasedFAMO(4), FAMO(tasks=tasks, base_weights={})
    for step in range(12):
        losses = torch.rand(4, generator=g, dtype=torch.float64) * 2 ** -step + 0.05  # decreasing at different rates
        if step > 0:
            ref.update(losses)  # xi learns from (previous step's losses, this step's) before this step is weighed
        famo.begin_step(step, losses=losses)
        w = famo.current
        assert w.tolist() == pytest.approx(ref.weights(losses).tolist(), rel=1e-9, abs=1e-15), step
        assert w.sum().item() == pytest.approx(1.0, rel=1e-12)
    assert famo.logits.tolist() == pytest.approx(ref.w.detach().tolist(), rel=1e-9, abs=1e-12)
    assert not torch.allclose(famo.current, torch.full((4,), 0.25, dtype=torch.float64))  # it moved


def test_famo_leaves_out_a_task_without_labels():
    famo = FAMO(tasks=["semseg", "human_parts", "edge"], base_weights={})
    famo.begin_step(0, losses=torch.tensor([2.0, 0.5, 0.1]))
    famo.begin_step(1, losses=torch.tensor([1.8, 0.0, 0.09]))  # no person in the step's images
    w = famo.weights()
    assert w["human_parts"] == 0.0 and w["semseg"] + w["edge"] == pytest.approx(1.0)
    assert torch.isfinite(famo.logits).all() and famo.logits.abs().max() < 0.1  # no log(1e-8) jump
    famo.begin_step(2, losses=torch.tensor([1.7, 0.4, 0.08]))
    assert famo.weights()["human_parts"] > 0


def test_gradnorm_scale_equalises_hand_made_feature_gradients():
    F1 = torch.randn(3, 5, requires_grad=True)  # two shared feature tensors, e.g. two decoding levels
    F2 = torch.randn(2, 4, requires_grad=True)
    A, B, C = torch.randn(3, 5), torch.randn(3, 5), torch.randn(2, 4)
    losses = {"semseg": (A * F1).sum(),  # dL/dF = (A, 0)
              "normals": 3.0 * (B * F1).sum() + (C * F2).sum(),  # dL/dF = (3B, C)
              "edge": 0.0 * F1.sum()}  # a task with no valid label: a zero gradient
    tasks = list(losses)
    grad_sq = feature_grad_sq(losses, [F1, F2], tasks)
    expected = [A.pow(2).sum().item(), (9 * B.pow(2).sum() + C.pow(2).sum()).item(), 0.0]
    assert grad_sq.tolist() == pytest.approx(expected, rel=1e-6)
    scaled = feature_grad_sq(losses, [F1, F2], tasks, scale=2.0**16)  # fp16's loss scale: unscaled before the norm
    assert scaled.tolist() == pytest.approx(expected, rel=1e-6)
    gn = GradNormScale(tasks=tasks, base_weights={})
    gn.begin_step(0, grad_sq=grad_sq)
    w = gn.weights()
    inv = [1 / math.sqrt(x) for x in expected[:2]]
    assert [w["semseg"], w["normals"]] == pytest.approx([2 * v / sum(inv) for v in inv], rel=1e-6)
    assert w["edge"] == 0.0 and sum(w.values()) == pytest.approx(2.0)
    # the property: every weighted task gradient has the same norm at the shared features
    assert w["semseg"] * math.sqrt(expected[0]) == pytest.approx(w["normals"] * math.sqrt(expected[1]), rel=1e-6)


def test_shared_features_are_the_prompted_encoders_outputs():
    torch.manual_seed(0)
    model = build_model("taskprompter_tiny", tasks={"semseg": 5, "normals": 3}, img_size=(32, 32)).train()
    features = SharedFeatures(model)
    out = model(torch.randn(2, 3, 32, 32))
    captured = features.pop()
    assert captured and features.pop() == []  # handed over once
    tokens = [t for t in captured if t.dim() == 3 and t.shape[-1] == model.init_kwargs["embed_dim"]]
    assert len(tokens) == len(model.decode_blocks)  # (B, N, C) of every decoding level, and the affinities
    losses = {"semseg": out["semseg"].square().mean(), "normals": out["normals"].abs().mean()}
    grad_sq = feature_grad_sq(losses, captured, list(losses))
    gn = GradNormScale(tasks=list(losses), base_weights={})
    gn.begin_step(0, grad_sq=grad_sq)
    norms = [w * math.sqrt(g) for w, g in zip(gn.current.tolist(), grad_sq.tolist())]
    assert norms[0] == pytest.approx(norms[1], rel=1e-9)
    sum(gn.current[i].item() * losses[t] for i, t in enumerate(losses)).backward()  # the graph was kept
    assert all(p.grad is not None for p in model.backbone.parameters() if p.requires_grad)
    features.remove()
    with torch.no_grad():
        model(torch.randn(1, 3, 32, 32))
    assert features.pop() == []
    separate = build_variant("task_specific_encoders", "taskprompter_tiny", tasks={"semseg": 5, "normals": 3},
                             img_size=(32, 32))
    with pytest.raises(ConfigError, match="no shared encoder"):
        SharedFeatures(separate)


@pytest.mark.parametrize("name", list(WEIGHTINGS))
def test_the_state_round_trips_bit_for_bit(name):
    tasks = ["semseg", "normals", "edge"]
    g = torch.Generator().manual_seed(3)
    stream = [(torch.rand(3, generator=g, dtype=torch.float64) + 0.1, torch.rand(3, generator=g, dtype=torch.float64),
               torch.randn(3, 5, generator=g, dtype=torch.float64)) for _ in range(7)]

    def run(w, steps):
        for step in steps:
            losses, grad_sq, J = stream[step]
            w.begin_step(step, losses=losses, grad_sq=grad_sq, gram=J @ J.T)
            if w.param_group() is not None:
                with torch.no_grad():
                    w.log_vars.add_(0.01 * step)  # what its optimiser would do
            w.update(losses, step)
        return w.current.clone()

    options = {"period": 2} if name == "dwa" else {}
    whole = build_weighting(name, tasks=tasks, base_weights={"edge": 50.0}, options=options)
    first = build_weighting(name, tasks=tasks, base_weights={"edge": 50.0}, options=options)
    expected = run(whole, range(7))
    run(first, range(3))
    state = torch.load(_saved(first.state_dict()), weights_only=True)  # as the checkpoint stores it
    second = build_weighting(name, tasks=tasks, base_weights={"edge": 50.0}, options=options)
    second.load_state_dict(state)
    assert torch.equal(run(second, range(3, 7)), expected)


def _saved(obj):
    import io

    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return buf


def test_typos_and_impossible_combinations_are_config_errors(root, tmp_path):
    with pytest.raises(ConfigError, match=r"train\.loss_weighting.*one of fixed, uw, dwa, famo, gradnorm_scale, "
                                          r"pcgrad, cagrad, upgrad, nash_mtl \(did you mean 'dwa'\?\), got 'dwaa'"):
        load_config(None, ["train.loss_weighting=dwaa"])
    with pytest.raises(ConfigError, match=r"'temprature' for dwa; did you mean "
                                          r"'train\.loss_weighting_options\.temperature'"):
        build_weighting("dwa", tasks=FIVE, base_weights={}, options={"temprature": 1.0})
    with pytest.raises(ConfigError, match="fixed takes no options"):
        build_weighting("fixed", tasks=FIVE, base_weights={}, options={"period": 3})
    with pytest.raises(ConfigError, match="variant 'kendal' is not one of"):
        build_weighting("uw", tasks=FIVE, base_weights={}, options={"variant": "kendal"})
    cfg = load_config("synthetic_tiny", [f"data.root={root}", f"train.out_dir={tmp_path / 'run'}",
                                         "train.loss_weighting=upgrad", "train.compile=true"])
    with pytest.raises(ConfigError, match="use train.compile=false"):
        train(cfg)
    assert not (tmp_path / "run").exists()  # refused before anything was written


# ------------------------------------------------------------------------------------------------- in the loop


@pytest.fixture(scope="module")
def root(training_pascal_root):
    return training_pascal_root  # conftest: 12 scenes of 64x64, seed 1, shared by the training tests


def _cfg(root, out, *extra):
    return load_config("synthetic_tiny", [f"data.root={root}", f"train.out_dir={out}", "train.progress=false",
                                          "data.max_val_samples=1", "train.log_every=1", "optim.schedule=constant",
                                          "train.checkpoint_every=100", *extra])


def _records(run):
    return [r for r in (json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines())
            if r["split"] == "train"]


@pytest.mark.parametrize("name, options", [("famo", []), ("dwa", ["train.loss_weighting_options.period=2"]),
                                           ("uw", ["train.loss_weighting_options.lr_scale=10"]), ("pcgrad", [])])
def test_resume_mid_run_equals_an_uninterrupted_run(root, tmp_path, monkeypatch, name, options):
    steps = 6
    sets = [f"optim.max_iters={steps}", f"train.loss_weighting={name}", *options]
    full, stopped = tmp_path / "full", tmp_path / "stopped"
    train(_cfg(root, full, *sets))
    calls = {"n": 0}

    def stop_after_step_3(self, d):  # a SIGTERM during step 3, in the middle of a DWA period
        calls["n"] += 1
        return calls["n"] == 3

    with monkeypatch.context() as m:
        m.setattr(StopRequest, "requested", stop_after_step_3)
        with pytest.raises(KeyboardInterrupt, match="after step 3"):
            train(_cfg(root, stopped, *sets))
    train(_cfg(root, stopped, *sets), resume=True)

    a, b = load_file(str(full / "last" / "model.safetensors")), load_file(str(stopped / "last" / "model.safetensors"))
    assert [k for k in a if not torch.equal(a[k], b[k])] == []
    sa = torch.load(full / "last" / "train_state.pt", weights_only=True)
    sb = torch.load(stopped / "last" / "train_state.pt", weights_only=True)
    assert sa["weighting"]["name"] == sb["weighting"]["name"] == name
    state_a, state_b = sa["weighting"]["state"], sb["weighting"]["state"]
    assert state_a.keys() == state_b.keys() and (state_a or name == "pcgrad")  # pcgrad: the order from (seed, step)
    assert all(torch.equal(state_a[k], state_b[k]) for k in state_a)
    for i, s in sa["optimizer"]["state"].items():  # uw: its log-variances' Adam moments too
        assert torch.equal(s["exp_avg_sq"], sb["optimizer"]["state"][i]["exp_avg_sq"])
    logged_a, logged_b = _records(full), _records(stopped)
    assert [r["step"] for r in logged_b] == list(range(1, steps + 1))
    for x, y in zip(logged_a, logged_b):
        weights = [k for k in x if k.startswith("weight/")]
        assert len(weights) == 5 and all(x[k] == y[k] for k in weights), x["step"]
    assert len({logged_a[-1][k] for k in logged_a[-1] if k.startswith("weight/")}) > 1  # the weights moved


def test_gradnorm_scale_trains_and_a_changed_method_is_refused_on_resume(root, tmp_path):
    out = tmp_path / "run"
    train(_cfg(root, out, "optim.max_iters=2", "train.loss_weighting=gradnorm_scale"))
    records = _records(out)
    for r in records:
        w = {k: v for k, v in r.items() if k.startswith("weight/")}
        present = [v for v in w.values() if v > 0]  # human parts weighs 0 in a batch without people
        assert len(w) == 5 and sum(w.values()) == pytest.approx(len(present), rel=1e-9)
        assert math.isfinite(r["loss/total"])
    with pytest.raises(ConfigError, match="trained with train.loss_weighting=gradnorm_scale"):
        train(_cfg(root, out, "optim.max_iters=3", "train.loss_weighting=uw"), resume=True)


def test_uw_under_bf16_autocast_on_the_cpu_keeps_losses_and_weights_fp32(root, tmp_path):
    torch.manual_seed(0)
    model = build_model("taskprompter_tiny", tasks={"semseg": 21, "normals": 3}, img_size=(32, 32)).train()
    uw = UncertaintyWeighting(tasks=["semseg", "normals"], base_weights={})
    criterion = MultiTaskLoss(["semseg", "normals"])
    batch = {"semseg": torch.randint(0, 21, (2, 32, 32)), "normals": F.normalize(torch.randn(2, 3, 32, 32), dim=1)}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        outputs = model(torch.randn(2, 3, 32, 32))
        losses = criterion(outputs, batch)
        uw.begin_step(0)
        total = uw.combine(losses)
    assert outputs["semseg"].dtype == torch.bfloat16  # autocast was on
    assert all(v.dtype == torch.float32 for v in losses.values()) and total.dtype == torch.float32
    total.backward()
    assert uw.log_vars.grad.dtype == torch.float32 and torch.isfinite(uw.log_vars.grad).all()
    # and one step of the training loop with train.amp=bf16
    out = tmp_path / "bf16"
    train(_cfg(root, out, "optim.max_iters=1", "train.amp=bf16", "train.loss_weighting=uw"))
    (record,) = _records(out)
    assert all(math.isfinite(v) for k, v in record.items() if k.startswith(("loss/", "weight/")))


# ------------------------------------------------------------------------------------------------- processes




def _common(root, out, *sets):
    return ["train", "--config", "synthetic_tiny", "--set", f"data.root={root}", "optim.max_iters=3",
            "train.log_every=1", "train.checkpoint_every=3", "train.progress=false", "data.max_val_samples=1",
            f"train.out_dir={out}", *sets]


def _one_and_two_processes(run_cli, root, tmp_path, *sets):
    """The same run in one process and in 2 gloo processes: (records of one, records of two, their run dirs)."""
    one, two = tmp_path / "one", tmp_path / "two"
    run_cli(*_common(root, one, *sets))
    run_cli(*_common(root, two, *sets), processes=2)
    return _records(one), _records(two), one, two


def test_two_gloo_processes_weigh_like_one_process(run_cli, root, tmp_path):
    """uw: the log-variances' gradients are averaged over processes like DDP's, and the regulariser counted once per
    step; their values, the weights and the model equal one process's on the same global batch."""
    sets = ["train.loss_weighting=uw", "train.loss_weighting_options.lr_scale=20"]
    r1, r2, one, two = _one_and_two_processes(run_cli, root, tmp_path, *sets)
    assert [r["step"] for r in r1] == [r["step"] for r in r2] == [1, 2, 3]
    for x, y in zip(r1, r2):
        for key in [k for k in x if k.startswith(("loss/", "weight/"))]:
            assert y[key] == pytest.approx(x[key], rel=1e-5, abs=1e-6), (x["step"], key)
    assert r1[-1]["weight/semseg"] != 1.0  # the log-variances moved
    s1 = torch.load(one / "last" / "train_state.pt", weights_only=True)["weighting"]["state"]["log_vars"]
    s2 = torch.load(two / "last" / "train_state.pt", weights_only=True)["weighting"]["state"]["log_vars"]
    assert torch.allclose(s1, s2, rtol=0, atol=1e-5), (s1, s2)


@pytest.mark.parametrize("name", ["famo", "upgrad"])
def test_famo_and_upgrad_with_defaults_weigh_in_two_processes_as_in_one(run_cli, root, tmp_path, name):
    """famo (the global losses before the backward, its Adam state) and upgrad (the Gram matrix of the per-task
    gradients at the encoder's outputs, summed over processes; the decoders' and the encoder's backward passes under
    DDP) with default options: the losses, the weights of every step and the trained model equal one process's."""
    sets = [f"train.loss_weighting={name}", "optim.eps=1e-3"]  # as test_distributed: rounding-noise gradients of
    #                                                                   conv biases before BatchNorm stay below eps
    r1, r2, one, two = _one_and_two_processes(run_cli, root, tmp_path, *sets)
    assert [r["step"] for r in r1] == [r["step"] for r in r2] == [1, 2, 3]
    for x, y in zip(r1, r2):
        keys = [k for k in x if k.startswith(("loss/", "weight/"))]
        assert len(keys) == 11
        for key in keys:
            assert y[key] == pytest.approx(x[key], rel=1e-4, abs=1e-6), (x["step"], key)
    assert len({round(r1[-1][k], 6) for k in r1[-1] if k.startswith("weight/")}) > 1  # not all equal
    a, b = load_file(str(one / "last" / "model.safetensors")), load_file(str(two / "last" / "model.safetensors"))
    worst = max((a[k].double() - b[k].double()).abs().max().item() for k in a if a[k].is_floating_point())
    assert worst < 1e-5, worst  # 3 Adam steps of lr 1e-3: float summation order only


def test_gradnorm_scale_takes_the_global_batchs_feature_gradient_norms(run_cli, root, tmp_path):
    """The squared norms summed over processes (SyncBatchNorm's backward carries the other process's share into each
    feature gradient): the weights of step 1, on equal models, are the one-process ones."""
    sets = ["train.loss_weighting=gradnorm_scale", "optim.max_iters=1", "train.checkpoint_every=1"]
    (x,), (y,), _, _ = _one_and_two_processes(run_cli, root, tmp_path, *sets)
    weights = [k for k in x if k.startswith("weight/")]
    assert len(weights) == 5 and len({x[k] for k in weights}) == 5
    for key in weights + ["loss/total"]:
        assert y[key] == pytest.approx(x[key], rel=1e-5, abs=1e-7), key


# ------------------------------------------------------------------------------------------------- accumulation

TWO_PASS = [pytest.param(["train.loss_weighting=famo"], id="famo"),
            pytest.param(["train.loss_weighting=gradnorm_scale"], id="gradnorm_scale"),
            pytest.param(["train.loss_weighting=upgrad"], id="upgrad"),
            pytest.param(["train.loss_weighting=upgrad", "train.loss_weighting_options.grads=parameters"],
                         id="upgrad-parameters")]


def _assert_same_training(a, b, *, rel=1e-5, atol=1e-5):
    """The losses and weights of every step (``rel``) and the trained model (``atol``) of runs ``a`` and ``b``; not
    BatchNorm's running statistics, which each process keeps for its own micro-batches without sync BN."""
    ra, rb = _records(a), _records(b)
    assert [r["step"] for r in ra] == [r["step"] for r in rb] == [1, 2, 3]
    for x, y in zip(ra, rb):
        keys = [k for k in x if k.startswith(("loss/", "weight/"))]
        assert len(keys) == 11
        for key in keys:
            assert y[key] == pytest.approx(x[key], rel=rel, abs=1e-7), (x["step"], key)
    assert len({round(ra[-1][k], 6) for k in ra[-1] if k.startswith("weight/")}) > 1  # the weights are not all equal
    wa, wb = load_file(str(a / "last" / "model.safetensors")), load_file(str(b / "last" / "model.safetensors"))
    compared = [k for k in wa if wa[k].is_floating_point() and "running_" not in k]
    worst = max((wa[k].double() - wb[k].double()).abs().max().item() for k in compared)
    assert worst < atol, worst


@pytest.mark.parametrize("name, options", [("famo", {}), ("gradnorm_scale", {}), ("upgrad", {}),
                                           ("upgrad", {"grads": "parameters"})])
def test_two_micro_batches_weigh_like_one_batch_of_both(name, options):
    """One step of 2 micro-batches (the two-pass step) = one step of the batch they make: the statistics ``begin_step``
    receives -- the global losses, the squared feature-gradient norms, the Gram matrix at F, or at the encoder's
    parameters the Gram of the *summed* per-micro-batch gradients (not the sum of their Grams) -- the weights, and
    every parameter's gradient. BatchNorm runs on its running statistics here, so that the samples do not see each
    other: in training it normalises each micro-batch by its own statistics, which no accumulation can undo."""
    tasks = {"semseg": 5, "normals": 3, "edge": 1}
    torch.manual_seed(0)
    model = build_model("taskprompter_tiny", tasks=tasks, img_size=(32, 32)).train()
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.eval()
    g = torch.Generator().manual_seed(1)
    batch = {"image": torch.randn(4, 3, 32, 32, generator=g), "semseg": torch.randint(0, 5, (4, 32, 32), generator=g),
             "normals": F.normalize(torch.randn(4, 3, 32, 32, generator=g), dim=1),
             "edge": torch.randint(0, 2, (4, 32, 32), generator=g)}
    halves = [{k: v[:2] for k, v in batch.items()}, {k: v[2:] for k, v in batch.items()}]
    criterion = MultiTaskLoss(list(tasks))
    stats = criterion.batch_stats(batch)  # global normalisation: the micro-batches' losses add up to the batch's

    def losses_of(module, b):
        return criterion(module(b["image"]), b, stats)

    def step(micro):
        w = build_weighting(name, tasks=list(tasks), base_weights={}, options=options)
        seen, begin = {}, w.begin_step
        w.begin_step = lambda step, **kw: (seen.update(kw), begin(step, **kw))
        features = shared_features_for(w, model)
        model.zero_grad(set_to_none=True)
        if len(micro) > 1:
            begin_accumulated_step(w, micro, losses_of, step=0, net=model, model=model, features=features)
        for b in micro:
            weighted_backward(w, losses_of(model, b), step=0, first=len(micro) == 1, features=features)
        if features is not None:
            features.remove()
        return seen, w.current.clone(), [p.grad.clone() for p in model.parameters()]

    (one, w1, g1), (two, w2, g2) = step([batch]), step(halves)
    assert one.keys() == two.keys() and len(one) == 1
    for key in one:
        assert torch.allclose(two[key], one[key], rtol=1e-5, atol=1e-6 * float(one[key].abs().max())), key
    assert torch.allclose(w2, w1, rtol=1e-5, atol=1e-8)
    assert len(set(w1.tolist())) == 3 or name == "upgrad"  # upgrad: the mean where no gradients conflict
    for (n, _), a, b in zip(model.named_parameters(), g1, g2):
        assert float((a - b).norm()) <= 1e-5 * float(a.norm()) + 1e-9, n


@pytest.mark.parametrize("sets", TWO_PASS[1:3])  # famo and upgrad's parameters mode: with DDP below (suite time)
def test_accumulated_micro_batches_weigh_like_processes(run_cli, root, tmp_path, sets):
    """1 process x 2 micro-batches = 2 gloo processes x 1 micro-batch on the same global batch, for the methods whose
    weights need the step's global statistics before its backward (the first pass sums the micro-batches' shares --
    losses, squared feature-gradient norms, Gram matrices, or per-task parameter gradients before their Gram -- as the
    processes' shares are summed). Without sync BN, so that both normalise activations per micro-batch: BatchNorm
    cannot see across accumulated micro-batches, which is also why accumulation cannot equal 1 x 1 exactly."""
    sets = [*sets, "optim.eps=1e-3", "train.batch_size=4"]  # eps: as test_distributed (rounding-noise gradients of
    #                                                          conv biases before BatchNorm stay below it)
    acc, two = tmp_path / "acc", tmp_path / "two"
    train(load_config("synthetic_tiny", _common(root, acc, *sets, "train.accum_steps=2")[4:]))
    run_cli(*_common(root, two, *sets, "train.sync_bn=false"), processes=2)
    _assert_same_training(acc, two)


@pytest.mark.parametrize("sets", [TWO_PASS[0], TWO_PASS[3]])
def test_two_processes_accumulating_weigh_like_one_process_accumulating_more(run_cli, root, tmp_path, sets):
    """DDP and accumulation together: 2 gloo processes x 2 micro-batches = 1 process x 4 micro-batches (one image each;
    without sync BN, as above). famo's first pass is a no-grad forward of the DDP-wrapped model; UPGrad's on the
    encoder's parameters runs through the module DDP wraps, its per-task parameter gradients summed over micro-batches
    and then over processes before the Gram matrix is taken."""
    sets = [*sets, "optim.eps=1e-3", "train.batch_size=4"]
    one, two = tmp_path / "one", tmp_path / "two"
    train(load_config("synthetic_tiny", _common(root, one, *sets, "train.accum_steps=4")[4:]))
    run_cli(*_common(root, two, *sets, "train.accum_steps=2", "train.sync_bn=false"), processes=2)
    _assert_same_training(one, two)


BN_STATISTICS = ("running_mean", "running_var", "num_batches_tracked")


@pytest.mark.parametrize("sets", TWO_PASS)
def test_the_first_pass_leaves_batchnorms_running_statistics_alone(root, tmp_path, sets):
    """After a step of 2 micro-batches, every BatchNorm's running statistics are those of `fixed`'s step -- updated
    once per micro-batch by the training forwards -- bit for bit: the first pass's updates are put back."""
    runs = {}
    for name, extra in (("fixed", ["train.loss_weighting=fixed"]), ("method", sets)):
        train(_cfg(root, tmp_path / name, "optim.max_iters=1", "train.accum_steps=2", *extra))
        runs[name] = load_file(str(tmp_path / name / "last" / "model.safetensors"))
    keys = [k for k in runs["fixed"] if k.endswith(BN_STATISTICS)]
    assert keys and all(int(runs["method"][k]) == 2 for k in keys if k.endswith("num_batches_tracked"))
    assert [k for k in keys if not torch.equal(runs["fixed"][k], runs["method"][k])] == []


@pytest.mark.parametrize("name", ["famo", "upgrad"])
def test_both_passes_see_the_same_forwards_under_drop_path(root, tmp_path, monkeypatch, name):
    """With drop path, each micro-batch's losses in the training pass equal those the weights were taken from, bit for
    bit (famo: a no-grad forward of the loop's model; upgrad: a forward of the module itself): torch's RNG is put back
    after the first pass. Without that, they differ -- the check is not vacuous."""
    seen, losses_of, replayable = [], train_module.micro_batch_losses, weighting_backward.replayable_forwards

    def spy(module, batch, **kwargs):
        losses = losses_of(module, batch, **kwargs)
        seen.append({t: v.detach().clone() for t, v in losses.items()})
        return losses

    monkeypatch.setattr(train_module, "micro_batch_losses", spy)
    sets = ["optim.max_iters=2", "train.accum_steps=2", f"train.loss_weighting={name}",
            "model.overrides.drop_path_rate=0.5"]

    def passes(out):  # [(first pass, second pass) of each micro-batch of each step]
        seen.clear()
        train(_cfg(root, out, *sets))
        assert len(seen) == 2 * 4  # per step: 2 micro-batches in the first pass, then the same 2 again
        return [(seen[s + k], seen[s + 2 + k]) for s in (0, 4) for k in (0, 1)]

    for first, second in passes(tmp_path / "restored"):
        assert all(torch.equal(first[t], second[t]) for t in first), (first, second)

    @contextlib.contextmanager
    def buffers_only(model, device):  # BatchNorm's statistics put back, torch's RNG left where the first pass left it
        with replayable(model, device):
            yield
            rng = torch.get_rng_state()
        torch.set_rng_state(rng)

    monkeypatch.setattr(weighting_backward, "replayable_forwards", buffers_only)
    differ = [any(not torch.equal(a[t], b[t]) for t in a) for a, b in passes(tmp_path / "not_restored")]
    assert all(differ), differ


@pytest.mark.slow
def test_famo_accumulating_under_compile_trains_as_eager(root, tmp_path, monkeypatch):
    """famo's two-pass step under ``train.compile``: the first pass (no-grad forwards of the compiled model, a graph
    of its own) and the second give the losses, weights and model of the eager run. aot_eager stands in for inductor
    (the same graph capture and joint graph, without minutes of C++ compilation on 2 cores)."""
    sets = ["train.loss_weighting=famo", "train.batch_size=4", "train.accum_steps=2",  # tiny: no drop path
            "optim.eps=1e-3"]  # as above: Adam would blow rounding-noise gradients up to lr-sized steps
    eager, compiled = tmp_path / "eager", tmp_path / "compiled"
    train(load_config("synthetic_tiny", _common(root, eager, *sets)[4:]))
    real_compile, calls = torch.compile, []

    def aot_eager(model, **kw):
        calls.append(model)
        return real_compile(model, backend="aot_eager", **kw)

    monkeypatch.setattr(torch, "compile", aot_eager)
    torch._dynamo.reset()
    train(load_config("synthetic_tiny", _common(root, compiled, *sets, "train.compile=true")[4:]))
    assert len(calls) == 1
    _assert_same_training(eager, compiled, rel=1e-4, atol=1e-4)
