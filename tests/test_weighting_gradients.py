"""The gradient-level loss weightings (pcgrad, cagrad, upgrad, nash_mtl): on hand-made per-task gradient vectors each
method's coefficients or combined gradient equal a reference written here from the paper's formula (on the vectors,
independent of torchjd, quadprog and the code under test); ``begin_step`` leaves out tasks without a gradient and
applies the fixed weights; ``weighted_backward`` on a tiny TaskPrompter trains the encoder with sum_t c_t dL_t and
the decoders and heads with sum_t s_t dL_t (features and parameters mode, fp16's scaler, bf16 autocast on the CPU)."""

from __future__ import annotations

import ast
import copy
import itertools
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from taskprompter.data.sampling import mix_seed
from taskprompter.engine.distributed import Dist
from taskprompter.errors import ConfigError
from taskprompter.losses import MultiTaskLoss
from taskprompter.model.build import build_model
from taskprompter.weighting import (
    CAGrad,
    NashMTL,
    PCGrad,
    SharedFeatures,
    UPGrad,
    build_weighting,
    cagrad_coefficients,
    gram_matrix,
    nash_mtl_coefficients,
    shared_features_for,
    weighted_backward,
)

METHODS = ["pcgrad", "cagrad", "upgrad", "nash_mtl"]


def _conflicting(T: int, D: int = 7, seed: int = 0) -> torch.Tensor:
    """(T, D) float64 gradients where several pairs conflict (negative inner products)."""
    g = torch.Generator().manual_seed(seed)
    J = torch.randn(T, D, generator=g, dtype=torch.float64)
    for i in range(1, T):  # each pulls against the one before it
        J[i] -= 1.3 * (J[i] @ J[i - 1]) / (J[i - 1] @ J[i - 1]) * J[i - 1] + 0.6 * J[i - 1]
    K = J @ J.T
    assert int((K < 0).sum()) >= 2 * (T - 1)  # at least T - 1 conflicting pairs
    return J


# ------------------------------------------------------------------------------------------------- references


def pcgrad_reference(J: torch.Tensor, seed: int, step: int) -> torch.Tensor:
    """Yu et al. 2020, Alg. 1, on the vectors: each g_i projected, in a random order of the other tasks, onto the
    normal plane of every g_j it conflicts with; the sum of the projected gradients. The orders are the code's
    documented draw: one ``torch.randperm(m)`` per task i after ``torch.manual_seed(mix_seed(seed, step))``."""
    m = J.shape[0]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(mix_seed(seed, step))
        orders = [torch.randperm(m).tolist() for _ in range(m)]
    total = torch.zeros_like(J[0])
    for i in range(m):
        g = J[i].clone()
        for j in orders[i]:
            if j == i:
                continue
            dot = g @ J[j]
            if dot < 0:
                g = g - dot / (J[j] @ J[j]) * J[j]
        total += g
    return total


def _dual_cone_qp(Kp: np.ndarray, u: np.ndarray) -> np.ndarray:
    """argmin_{v >= u} v^T Kp v exactly, by enumerating the active sets (KKT: (Kp v)_free = 0, v_free >= u_free,
    multipliers 2 (Kp v)_active >= 0); the feasible point of least objective."""
    m = len(u)
    best, best_value = None, math.inf
    for active in itertools.product([False, True], repeat=m):
        act = np.array(active)
        free = ~act
        v = u.astype(np.float64).copy()
        if free.any():
            rhs = -Kp[np.ix_(free, act)] @ u[act]
            v[free] = np.linalg.solve(Kp[np.ix_(free, free)], rhs)
        if (v[free] < u[free] - 1e-12).any() or ((Kp @ v)[act] < -1e-12).any():
            continue
        value = float(v @ Kp @ v)
        if value < best_value:
            best, best_value = v, value
    assert best is not None
    return best


def upgrad_reference(J: torch.Tensor, reg_eps: float) -> np.ndarray:
    """Quinton and Rey 2024: d = (1/m) sum_i J^T v_i, v_i = argmin_{v >= e_i} v^T K' v, K' = K / trace(K) + reg_eps I
    (K built from the explicit vectors); returns the coefficients (1/m) sum_i v_i."""
    Jn = J.numpy()
    K = Jn @ Jn.T
    m = len(K)
    Kp = K / np.trace(K) + reg_eps * np.eye(m)
    return sum(_dual_cone_qp(Kp, np.eye(m)[i]) for i in range(m)) / m


def cagrad_primal(J: torch.Tensor, c: float) -> tuple[np.ndarray, float]:
    """(x*, t*): max_x min_i g_i . x over the ball |x - g0| <= r = c |g0| (Liu et al. 2021, Eq. 2), exactly, on the
    vectors, by enumerating the active sets S of its KKT conditions: x = g0 + r J_S^T mu (|J_S^T mu| = 1, mu >= 0)
    with g_i . x = t on S, i.e. mu = K_SS^-1 (t 1 - b_S) / r, b = J g0, t a root of
    (t 1 - b_S)^T K_SS^-1 (t 1 - b_S) = r^2; feasible when mu >= 0 and g_i . x >= t off S. The largest feasible t."""
    Jn = J.numpy()
    g0 = Jn.mean(0)
    r = c * np.linalg.norm(g0)
    b = Jn @ g0
    best, best_t = None, -math.inf
    for size in range(1, len(Jn) + 1):
        for S in itertools.combinations(range(len(Jn)), size):
            S = list(S)
            Kinv = np.linalg.inv(Jn[S] @ Jn[S].T)
            one = np.ones(size)
            a, beta, gamma = one @ Kinv @ one, one @ Kinv @ b[S], b[S] @ Kinv @ b[S]
            disc = beta**2 - a * (gamma - r**2)
            if disc < 0:
                continue
            for t in ((beta + math.sqrt(disc)) / a, (beta - math.sqrt(disc)) / a):
                mu = Kinv @ (t * one - b[S]) / r
                x = g0 + r * Jn[S].T @ mu
                if (mu >= -1e-12).all() and (Jn @ x >= t - 1e-12).all() and t > best_t:
                    best, best_t = x, t
    assert best is not None
    return best, best_t


def nash_reference(K: np.ndarray, ridge: float = 1e-8) -> np.ndarray:
    """Navon et al. 2022, Eq. 4: alpha > 0 with K^ alpha = 1 / alpha, K^ = K / |K|_F + ridge I, by scipy's fsolve
    from the equal-weights solution (a different start from the code's)."""
    from scipy.optimize import fsolve

    Kh = K / np.linalg.norm(K) + ridge * np.eye(len(K))
    start = np.full(len(K), 1.0 / math.sqrt(Kh.sum() / len(K)))  # exact when all alpha are equal
    alpha = fsolve(lambda a: Kh @ a - 1.0 / a, start, fprime=lambda a: Kh + np.diag(1.0 / a**2), xtol=1e-13)
    assert (alpha > 0).all() and np.abs(Kh @ alpha - 1.0 / alpha).max() < 1e-10
    return alpha


def _coefficients(w, K: torch.Tensor, step: int = 0) -> torch.Tensor:
    w.begin_step(step, gram=K)
    return w.current.clone()


# ------------------------------------------------------------------------------------------------- PCGrad


@pytest.mark.parametrize("T", [3, 4])
def test_pcgrad_is_algorithm_1_on_the_vectors_with_the_drawn_orders(T):
    J = _conflicting(T, seed=T)
    K = J @ J.T
    pc = PCGrad(tasks=[f"t{i}" for i in range(T)], base_weights={}, seed=7)
    combined = []
    for step in range(8):
        d = J.T @ _coefficients(pc, K, step)
        ref = pcgrad_reference(J, 7, step)
        assert torch.allclose(d, ref, rtol=0, atol=1e-12), (step, d, ref)
        combined.append(tuple(round(x, 9) for x in d.tolist()))
    assert len(set(combined)) > 1  # the order matters for these gradients, and it changes with the step
    assert not torch.allclose(J.sum(0), J.T @ pc.current)  # projections happened


def test_pcgrads_order_is_a_function_of_seed_and_step_only():
    J = _conflicting(4, seed=4)
    K = J @ J.T
    tasks = ["a", "b", "c", "d"]
    pc = PCGrad(tasks=tasks, base_weights={}, seed=3)
    torch.manual_seed(11)
    state = torch.get_rng_state()
    first = _coefficients(pc, K, 5)
    assert torch.equal(torch.get_rng_state(), state)  # the training RNG stream is untouched
    torch.manual_seed(999)  # another global state: the same draw
    assert torch.equal(_coefficients(PCGrad(tasks=tasks, base_weights={}, seed=3), K, 5), first)
    assert torch.equal(_coefficients(pc, K, 5), first)
    others = [_coefficients(pc, K, s) for s in range(6, 14)]
    assert any(not torch.allclose(o, first) for o in others)  # a different step, a different order
    assert torch.allclose(J.T @ first, pcgrad_reference(J, 3, 5), rtol=0, atol=1e-12)
    # another process (another hash seed) draws the same
    code = ("import torch; from taskprompter.weighting import PCGrad; "
            f"K = torch.tensor({K.tolist()!r}, dtype=torch.float64); "
            "w = PCGrad(tasks=list('abcd'), base_weights={}, seed=3); w.begin_step(5, gram=K); "
            "print([x.hex() for x in w.current.tolist()])")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={"PYTHONHASHSEED": "123", "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert [float.fromhex(x) for x in ast.literal_eval(proc.stdout.strip())] == first.tolist()


# ------------------------------------------------------------------------------------------------- UPGrad


@pytest.mark.parametrize("T", [2, 3, 4])
@pytest.mark.parametrize("reg_eps", [0.0, 1e-4])
def test_upgrad_is_the_mean_of_the_dual_cone_projections(T, reg_eps):
    J = _conflicting(T, seed=10 + T)
    K = J @ J.T
    up = UPGrad(tasks=[f"t{i}" for i in range(T)], base_weights={}, reg_eps=reg_eps)
    c = _coefficients(up, K)
    ref = upgrad_reference(J, reg_eps)
    assert c.tolist() == pytest.approx(ref.tolist(), rel=1e-9, abs=1e-12)
    assert not np.allclose(ref, 1.0 / T)  # the conflicts moved it off the mean
    if reg_eps == 0:  # the update conflicts with no task
        d = J.T @ c
        assert min((J @ d).tolist()) >= -1e-10


def test_upgrad_without_conflicts_is_the_mean_gradient():
    g = torch.Generator().manual_seed(5)
    J = torch.rand(4, 7, generator=g, dtype=torch.float64)  # non-negative entries: no pair conflicts
    assert bool(((J @ J.T) >= 0).all())
    c = _coefficients(UPGrad(tasks=list("abcd"), base_weights={}, reg_eps=0.0), J @ J.T)
    assert torch.allclose(J.T @ c, J.mean(0), rtol=0, atol=1e-12)
    assert c.tolist() == pytest.approx([0.25] * 4, abs=1e-12)


def test_upgrad_is_invariant_to_a_common_scale_of_small_gradients():
    """torchjd's projector zeroes a K whose trace is below an absolute 1e-4 (UPGrad would become the mean): K is
    normalised by its trace before it reaches the projector."""
    J = _conflicting(3, seed=13)
    K = J @ J.T
    for reg_eps in (1e-4, 0.0):
        up = UPGrad(tasks=list("abc"), base_weights={}, reg_eps=reg_eps)
        expected = _coefficients(up, K)
        assert max(abs(v - 1 / 3) for v in expected.tolist()) > 0.05  # not the mean: the gradients conflict
        assert _coefficients(up, K * 1e-6).tolist() == pytest.approx(expected.tolist(), rel=1e-9)


# ------------------------------------------------------------------------------------------------- CAGrad


@pytest.mark.parametrize("T, c", [(2, 0.4), (3, 0.4), (4, 0.4), (3, 0.8), (4, 0.8)])
def test_cagrad_maximises_the_worst_improvement_within_the_ball(T, c):
    J = _conflicting(T, seed=20 + T)
    K = J @ J.T
    coef = cagrad_coefficients(K, c=c, rescale=1)
    x = (J.T @ coef * (1 + c**2)).numpy()  # the update before rescaling
    Jn = J.numpy()
    g0 = Jn.mean(0)
    r = c * np.linalg.norm(g0)
    assert np.linalg.norm(x - g0) == pytest.approx(r, rel=1e-6)  # on the sphere |x - g0| = c |g0| (measured 1e-7)
    worst = float((Jn @ x).min())
    gen = np.random.default_rng(0)
    n, D = 20000, Jn.shape[1]
    dirs = gen.standard_normal((n, D))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    radii = r * np.concatenate([gen.random(n // 2) ** (1.0 / D), np.ones(n - n // 2)])  # inside and on the sphere
    points = g0 + radii[:, None] * dirs
    slack = 1e-6 * np.abs(Jn).max() * (np.linalg.norm(g0) + r)
    assert float((points @ Jn.T).min(1).max()) <= worst + slack  # no point of the ball does better
    best, t = cagrad_primal(J, c)
    assert float((Jn @ best).min()) == pytest.approx(t, rel=1e-12)
    assert float((points @ Jn.T).min(1).max()) <= t  # the exact reference is the ball's best
    # the simplex problem is solved to SLSQP's default 1e-6 (as released): its value min_w g_w . g0 + r |g_w| -- by
    # duality the max-min t -- within 1e-6 (measured <= 2.5e-7); the max-min itself within 2e-3 (measured <= 5.1e-4,
    # the square root of the dual's error) and the point within 5e-3 r (measured <= 1.3e-3)
    w = coef.numpy() * (1 + c**2) - 1.0 / T  # = (c |g0| / |g_w|) w
    w = w / w.sum()
    assert (w >= -1e-9).all()
    gw = Jn.T @ w
    assert float(gw @ g0 + r * np.linalg.norm(gw)) == pytest.approx(t, rel=1e-6)
    assert worst == pytest.approx(t, rel=2e-3) and worst <= t * (1 + 1e-6)  # (x is on the sphere to 1e-7)
    assert np.linalg.norm(x - best) <= 5e-3 * r


def test_cagrad_rescale_c_zero_and_a_single_task():
    J = _conflicting(3, seed=23)
    K = J @ J.T
    tasks = ["a", "b", "c"]
    plain = _coefficients(CAGrad(tasks=tasks, base_weights={}, c=0.5, rescale=0), K)
    assert _coefficients(CAGrad(tasks=tasks, base_weights={}, c=0.5, rescale=1), K).tolist() == pytest.approx(
        (plain / 1.25).tolist(), rel=1e-12)
    assert _coefficients(CAGrad(tasks=tasks, base_weights={}, c=0.5, rescale=2), K).tolist() == pytest.approx(
        (plain / 1.5).tolist(), rel=1e-12)
    # c = 0: the mean gradient (up to the released code's 1e-8 terms)
    assert cagrad_coefficients(K, c=0.0).tolist() == pytest.approx([1 / 3] * 3, rel=1e-7)
    # one task: d = g + c g, divided by 1 + c^2
    one = cagrad_coefficients(torch.tensor([[2.5]], dtype=torch.float64), c=0.4)
    assert one.tolist() == pytest.approx([1.4 / 1.16], rel=1e-7)
    # scale-free: tiny gradients, as dense per-pixel losses give, weigh as large ones
    assert cagrad_coefficients(K * 1e-4, c=0.4).tolist() == pytest.approx(cagrad_coefficients(K, c=0.4).tolist(),
                                                                          rel=1e-6)
    assert cagrad_coefficients(K * 1e-10, c=0.4).tolist() == pytest.approx(cagrad_coefficients(K, c=0.4).tolist(),
                                                                           rel=1e-6)


# ------------------------------------------------------------------------------------------------- Nash-MTL


@pytest.mark.parametrize("T", [2, 3, 4])
def test_nash_mtl_solves_k_alpha_equals_one_over_alpha(T):
    J = _conflicting(T, seed=30 + T)
    K = J @ J.T
    alpha = _coefficients(NashMTL(tasks=[f"t{i}" for i in range(T)], base_weights={}), K)
    ref = nash_reference(K.numpy())
    assert alpha.tolist() == pytest.approx(ref.tolist(), rel=1e-8)
    assert bool((alpha > 0).all())
    assert nash_mtl_coefficients(K * 100).tolist() == pytest.approx(alpha.tolist(), rel=1e-10)  # scale invariant


def test_nash_mtl_of_orthogonal_gradients():
    J = torch.diag(torch.tensor([0.5, 2.0, 3.0], dtype=torch.float64))  # orthogonal rows
    K = J @ J.T
    Kh = K / torch.linalg.matrix_norm(K) + 1e-8 * torch.eye(3, dtype=torch.float64)
    alpha = nash_mtl_coefficients(K)
    assert alpha.tolist() == pytest.approx((1 / Kh.diagonal().sqrt()).tolist(), rel=1e-12)
    assert (Kh @ alpha * alpha).tolist() == pytest.approx([1.0] * 3, rel=1e-12)  # each task's share is 1


# ------------------------------------------------------------------------------------------------- begin_step


def _direct(name: str, J: torch.Tensor, step: int) -> torch.Tensor:
    """The method's coefficients from the references and helpers above (the defaults' options)."""
    K = J @ J.T
    if name == "pcgrad":  # d = J^T c: solve for c (J has full row rank)
        d = pcgrad_reference(J, 0, step)
        return torch.linalg.lstsq(J.T, d.unsqueeze(1)).solution.squeeze(1)
    if name == "upgrad":
        return torch.from_numpy(upgrad_reference(J, 1e-4))
    if name == "cagrad":
        return cagrad_coefficients(K, c=0.4, rescale=1)
    return nash_mtl_coefficients(K)


@pytest.mark.parametrize("name", METHODS)
def test_a_task_without_gradient_is_left_out(name):
    J3 = _conflicting(3, seed=40)
    J4 = torch.cat([J3[:1], torch.zeros(1, 7, dtype=torch.float64), J3[1:]])  # task "b": no label in the batch
    w4 = build_weighting(name, tasks=["a", "b", "c", "d"], base_weights={})
    w3 = build_weighting(name, tasks=["a", "c", "d"], base_weights={})
    c4, c3 = _coefficients(w4, J4 @ J4.T, 3), _coefficients(w3, J3 @ J3.T, 3)
    assert c4[1].item() == 0.0
    assert torch.equal(c4[[0, 2, 3]], c3)
    assert c3.tolist() == pytest.approx(_direct(name, J3, 3).tolist(), rel=1e-7)
    nothing = _coefficients(w4, torch.zeros(4, 4, dtype=torch.float64), 4)
    assert nothing.tolist() == [0.0] * 4  # no task has a gradient: no update


@pytest.mark.parametrize("name", METHODS)
def test_fixed_weights_weigh_the_gradients_and_the_losses(name):
    tasks, b = ["a", "b", "c"], torch.tensor([1.0, 2.0, 50.0], dtype=torch.float64)
    J = _conflicting(3, seed=41)
    K = J @ J.T
    w = build_weighting(name, tasks=tasks, base_weights=dict(zip(tasks, b.tolist())), options={"fixed_weights": True})
    c = _coefficients(w, K, 2)
    expected = _direct(name, J * b[:, None], 2) * b  # the method on the gradients of b_t L_t, logged as c_t b_t
    assert c.tolist() == pytest.approx(expected.tolist(), rel=1e-7)
    assert list(w.weights().values()) == c.tolist()
    unweighted = _coefficients(build_weighting(name, tasks=tasks, base_weights=dict(zip(tasks, b.tolist()))), K, 2)
    assert not torch.allclose(c, unweighted)  # the base weights are ignored without fixed_weights
    losses = {t: torch.tensor(v) for t, v in zip(tasks, [0.7, 1.3, 0.02])}
    assert w.combine(losses).item() == pytest.approx(0.7 + 2 * 1.3 + 50 * 0.02, rel=1e-6)  # sum_t s_t L_t, not c
    plain = build_weighting(name, tasks=tasks, base_weights=dict(zip(tasks, b.tolist())))
    plain.begin_step(0, gram=K)
    assert plain.combine(losses).item() == pytest.approx(0.7 + 1.3 + 0.02, rel=1e-6)
    bad = K.clone()
    bad[0, 1] = bad[1, 0] = float("inf")  # an fp16 overflow
    assert _coefficients(w, bad, 3).tolist() == b.tolist()
    assert _coefficients(plain, bad.fill_(float("nan")), 3).tolist() == [1.0, 1.0, 1.0]
    with pytest.raises(ValueError, match="gram"):
        w.begin_step(4)


def test_gram_matrix_sums_over_tensors_and_skips_missing_ones():
    g = torch.Generator().manual_seed(6)
    a1, a2, b2 = torch.randn(3, 4, generator=g), torch.randn(3, 4, generator=g), torch.randn(5, generator=g)
    c1 = torch.randn(5, generator=g)
    K = gram_matrix([[a1, c1], [a2, b2], [None, None]])
    flat = torch.stack([torch.cat([a1.flatten(), c1]), torch.cat([a2.flatten(), b2]), torch.zeros(17)]).double()
    assert torch.allclose(K, flat @ flat.T, rtol=1e-12, atol=1e-12) and K.dtype == torch.float64


# ------------------------------------------------------------------------------------------------- the backward


TASKS = {"semseg": 5, "normals": 3, "edge": 1}
ONE = Dist(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))  # one process
BASE = {"semseg": 1.0, "normals": 10.0, "edge": 50.0}


def _setup():
    torch.manual_seed(0)
    model = build_model("taskprompter_tiny", tasks=TASKS, img_size=(32, 32)).train()  # drop_path_rate 0 in the preset
    assert model.init_kwargs["drop_path_rate"] == 0.0
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, 32, 32, generator=g)
    batch = {"semseg": torch.randint(0, 5, (2, 32, 32), generator=g),
             "normals": F.normalize(torch.randn(2, 3, 32, 32, generator=g), dim=1),
             "edge": torch.randint(0, 2, (2, 32, 32), generator=g)}
    return model, x, batch


def _run(model, x, batch, name, options, tasks=tuple(TASKS), absent=(), scaler=None, autocast=None):
    """One weighted_backward of the method on the model; returns (weighting, the Gram it saw)."""
    w = build_weighting(name, tasks=list(tasks), base_weights=BASE, options=options)
    seen = {}
    begin = w.begin_step

    def spy(step, **kw):
        seen.update(kw)
        begin(step, **kw)

    w.begin_step = spy
    features = shared_features_for(w, model)
    assert isinstance(features, SharedFeatures) and features.detach
    if autocast is not None:
        with torch.autocast("cpu", dtype=autocast):
            out = model(x)
            losses = MultiTaskLoss(list(tasks))(out, batch)
    else:
        out = model(x)
        losses = MultiTaskLoss(list(tasks))(out, batch)
    for t in absent:
        losses[t] = 0.0 * out[t].sum()
    weighted_backward(w, losses, step=3, features=features, scaler=scaler, d=ONE)
    features.remove()
    return w, seen["gram"]


def _per_task_grads(model, x, batch, autocast=None):
    """{task: [dL_t/dp for every parameter]} from separate autograd.grad calls, no hook."""
    with torch.autocast("cpu", dtype=autocast or torch.float32, enabled=autocast is not None):
        losses = MultiTaskLoss(list(TASKS))(model(x), batch)
    params = list(model.parameters())
    return {t: [torch.zeros_like(p) if g is None else g
                for p, g in zip(params, torch.autograd.grad(losses[t], params, retain_graph=True, allow_unused=True))]
            for t in TASKS}


def _close(a: torch.Tensor, b: torch.Tensor, rel: float, floor: float = 1e-12) -> bool:
    """|a - b| <= rel |b| + floor (floor: for gradients that are 0 up to rounding, e.g. a bias before a BatchNorm)."""
    return float((a.double() - b.double()).norm()) <= rel * float(b.double().norm()) + floor


def _expected_grads(ref, x, batch, c, s, autocast=None):
    """Encoder parameters: sum_t c_t dL_t/dp; every other parameter: sum_t s_t dL_t/dp."""
    per_task = _per_task_grads(ref, x, batch, autocast)
    encoder = {id(p) for p in ref.backbone.parameters()}
    expected = []
    for k, p in enumerate(ref.parameters()):
        weights = c if id(p) in encoder else s
        expected.append(sum(float(weights[i]) * per_task[t][k] for i, t in enumerate(TASKS)))
    return expected, per_task


@pytest.mark.parametrize("name", METHODS)
@pytest.mark.parametrize("grads", ["features", "parameters"])
def test_the_encoder_gets_the_combination_and_the_decoders_the_sum(name, grads):
    fixed = name in ("upgrad", "nash_mtl")
    model, x, batch = _setup()
    ref = copy.deepcopy(model)
    w, gram = _run(model, x, batch, name, {"grads": grads, "fixed_weights": fixed})
    c = w.current.clone()
    s = [BASE[t] if fixed else 1.0 for t in TASKS]
    assert bool((c != 0).all()) and not torch.allclose(c, torch.tensor(s, dtype=torch.float64))
    expected, per_task = _expected_grads(ref, x, batch, c, s)
    floor = 1e-6 * max(float(e.norm()) for e in expected)
    for (n, p), e in zip(model.named_parameters(), expected):
        assert p.grad is not None and p.grad.dtype == torch.float32, n
        assert _close(p.grad, e, 1e-5, floor), (n, float((p.grad - e).norm()), float(e.norm()))
    # the Gram the method saw is that of the per-task gradients, at F or at the encoder's parameters
    if grads == "parameters":
        encoder = {id(p) for p in ref.backbone.parameters()}
        flat = torch.stack([torch.cat([g.flatten() for p, g in zip(ref.parameters(), per_task[t]) if id(p) in encoder])
                            for t in TASKS]).double()
    else:
        capture = SharedFeatures(ref)  # not cut: the gradients at the encoder's outputs, naively
        losses = MultiTaskLoss(list(TASKS))(ref(x), batch)
        at_f = capture.pop()
        capture.remove()
        flat = torch.stack([torch.cat([g.flatten() for g in torch.autograd.grad(losses[t], at_f, retain_graph=True)])
                            for t in TASKS]).double()
    naive = flat @ flat.T
    assert torch.allclose(gram, naive, rtol=1e-7, atol=0)  # measured: within 1e-9
    again = build_weighting(name, tasks=list(TASKS), base_weights=BASE,
                            options={"grads": grads, "fixed_weights": fixed})
    assert _coefficients(again, naive, 3).tolist() == pytest.approx(c.tolist(), rel=1e-6)  # measured: equal


@pytest.mark.parametrize("grads", ["features", "parameters"])
def test_fp16s_scaler_unscales_before_the_geometry(grads):
    model, x, batch = _setup()
    scaled = copy.deepcopy(model)
    w, gram = _run(model, x, batch, "cagrad", {"grads": grads})
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    assert scaler.is_enabled() and scaler.get_scale() == 1024.0
    w2, gram2 = _run(scaled, x, batch, "cagrad", {"grads": grads}, scaler=scaler)
    assert torch.allclose(gram2, gram, rtol=1e-6, atol=0)  # the per-task gradients unscaled
    assert w2.current.tolist() == pytest.approx(w.current.tolist(), rel=1e-6)
    params, scaled_params = list(model.parameters()), list(scaled.parameters())
    assert all(_close(q.grad, 1024 * p.grad, 1e-5) for p, q in zip(params, scaled_params))  # the scaled backward
    scaler.unscale_(torch.optim.SGD(scaled_params, lr=0.1))
    for (n, p), q in zip(model.named_parameters(), scaled_params):
        assert _close(q.grad, p.grad, 1e-5), n


def test_bf16_autocast_on_the_cpu():
    model, x, batch = _setup()
    low, ref = copy.deepcopy(model), copy.deepcopy(model)
    w, _ = _run(model, x, batch, "upgrad", {})
    w16, gram16 = _run(low, x, batch, "upgrad", {}, autocast=torch.bfloat16)
    assert gram16.dtype == torch.float64 and bool(torch.isfinite(gram16).all())
    for n, q in low.named_parameters():
        assert q.grad is not None and q.grad.dtype == torch.float32 and bool(torch.isfinite(q.grad).all()), n
    # consistent with its own bf16 forward: the Gram of the per-task gradients at F, and the combination
    capture = SharedFeatures(ref)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = MultiTaskLoss(list(TASKS))(ref(x), batch)
    at_f = capture.pop()
    capture.remove()
    assert torch.bfloat16 in {f.dtype for f in at_f}  # autocast was on
    flat = torch.stack([torch.cat([g.flatten() for g in torch.autograd.grad(losses[t], at_f, retain_graph=True)])
                        for t in TASKS]).double()
    assert torch.allclose(gram16, flat @ flat.T, rtol=1e-6, atol=0)
    expected, _ = _expected_grads(ref, x, batch, w16.current, [1.0] * 3, autocast=torch.bfloat16)
    # the backward's rounding differs from the reference's (one combined pass vs one per task, bf16 in between):
    # measured, every encoder parameter within 0.6 %, all gradients together within 0.37 %, and biases before a
    # BatchNorm (0 up to rounding) off by up to 4.4e-4 x the largest gradient norm
    floor = 1e-3 * max(float(e.norm()) for e in expected)
    for (n, q), e in zip(low.named_parameters(), expected):
        assert _close(q.grad, e, 2e-2, floor), (n, float((q.grad - e).norm()), float(e.norm()))
    encoder = {id(p) for p in low.backbone.parameters()}
    for part in (True, False):
        got = torch.cat([q.grad.flatten() for q in low.parameters() if (id(q) in encoder) == part])
        want = torch.cat([e.flatten() for q, e in zip(low.parameters(), expected) if (id(q) in encoder) == part])
        assert _close(got, want, 1e-2), part
    # against fp32: bf16 changes this tiny untrained model's per-task gradients themselves (outputs ~1 % off, and the
    # normals loss divides by |pred|, ~0.03 at some pixels): measured, the Gram's normals entry +34 %, the coefficients
    # up to 17 % off, the cosine similarity of the encoder's gradients 0.984 -- and that of the decoders' (the plain
    # sum of the losses, no weighting involved) 0.982
    assert w16.current.tolist() == pytest.approx(w.current.tolist(), rel=0.25)
    enc32 = torch.cat([p.grad.flatten() for p in model.backbone.parameters()])
    enc16 = torch.cat([p.grad.flatten() for p in low.backbone.parameters()])
    assert float(F.cosine_similarity(enc32, enc16, dim=0)) > 0.97


@pytest.mark.parametrize("name", METHODS)
def test_a_task_absent_from_the_batch(name):
    model, x, batch = _setup()
    two = copy.deepcopy(model)
    w, gram = _run(model, x, batch, name, {}, absent=("edge",))
    w2, _ = _run(two, x, batch, name, {}, tasks=("semseg", "normals"))
    assert gram[2].tolist() == [0.0] * 3
    assert w.weights()["edge"] == 0.0
    assert w.current[:2].tolist() == pytest.approx(w2.current.tolist(), rel=1e-9)
    assert all(float(p.grad.abs().max()) == 0.0 for p in model.heads["edge"].parameters())
    for (n, p), q in zip(model.backbone.named_parameters(), two.backbone.parameters()):
        assert _close(p.grad, q.grad, 1e-5), n  # the encoder trained as without the task


def test_weighted_backward_defaults_to_one_process():
    model, x, batch = _setup()
    w = build_weighting("pcgrad", tasks=list(TASKS), base_weights={})
    features = shared_features_for(w, model)
    weighted_backward(w, MultiTaskLoss(list(TASKS))(model(x), batch), step=0, features=features)
    assert all(p.grad is not None for p in model.backbone.parameters())


# ------------------------------------------------------------------------------------------------- config errors


@pytest.mark.parametrize("options, message", [({"rescale": 3}, r"loss_weighting_options\.rescale"),
                                              ({"grads": "params"}, r"loss_weighting_options\.grads 'params'"),
                                              ({"c": -1}, r"loss_weighting_options\.c must")])
def test_cagrad_option_errors_name_the_option(options, message):
    with pytest.raises(ConfigError, match=message):
        build_weighting("cagrad", tasks=["semseg", "edge"], base_weights={}, options=options)


@pytest.mark.parametrize("name, grads", [("upgrad", "features"), ("upgrad", "parameters"),
                                         ("gradnorm_scale", "features")])
def test_recomputing_models_give_the_same_gradients(name, grads):
    """The per-task gradients backpropagate the decoders (and, for grads: parameters, the encoder) once per task
    before the step's backward: plain grad_checkpointing recomputes once per pass (its BatchNorm guard is
    re-entered), and selective recomputation -- which torch backpropagates once only -- is off while the capture is
    installed, then restored. Gradients and coefficients equal those of a model that stores everything."""
    torch.manual_seed(0)
    plain = build_model("taskprompter_tiny", tasks={"semseg": 5, "normals": 3, "edge": 1}, img_size=(32, 32)).train()
    recomputing = copy.deepcopy(plain)
    recomputing.backbone.grad_checkpointing = True
    recomputing.selective_recompute = "on"
    x = torch.randn(2, 3, 32, 32)
    batch = {"semseg": torch.randint(0, 5, (2, 32, 32)), "edge": torch.randint(0, 2, (2, 32, 32)),
             "normals": F.normalize(torch.randn(2, 3, 32, 32), dim=1)}
    found = []
    for model in (plain, recomputing):
        w = build_weighting(name, tasks=["semseg", "normals", "edge"], base_weights={},
                            options={} if name == "gradnorm_scale" else {"grads": grads})
        features = shared_features_for(w, model)
        assert model.selective_recompute == "off"
        weighted_backward(w, MultiTaskLoss(["semseg", "normals", "edge"])(model(x), batch), step=0, features=features,
                          d=ONE)
        features.remove()
        found.append((w.current.clone(), {n: p.grad for n, p in model.named_parameters()}))
    assert recomputing.selective_recompute == "on" and plain.selective_recompute == "auto"  # restored
    (c1, g1), (c2, g2) = found
    assert torch.allclose(c1, c2, rtol=1e-6, atol=0)
    assert all(torch.allclose(g1[n], g2[n], rtol=1e-5, atol=1e-9) for n in g1)
