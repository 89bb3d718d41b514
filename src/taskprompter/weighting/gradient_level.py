"""The gradient-level methods: PCGrad, CAGrad, UPGrad and Nash-MTL combine the per-task gradients of the shared part.

Each method turns the per-task gradients g_t of the shared encoder's outputs F (or, with ``grads: parameters``, of the
encoder's parameters) into coefficients c (T,): the encoder is trained by sum_t c_t g_t, the task-specific part after
F (decoders, heads) by the plain sum_t s_t dL_t (s_t = 1, or the fixed weights b_t with ``fixed_weights: true``), as
LibMTL's ``rep_grad`` mode and torchjd's ``mtl_backward`` do. All four need the g_t only through their Gram matrix
K_ij = g_i . g_j (T x T): that is what the processes agree on (``backward.py`` sums it over processes), and every
combination they return is a linear one, so the encoder's gradient is one backward from F with sum_t c_t g_t
(the backward is in ``backward.py``).

The coefficients are those of the step's global gradients: of s_t L_t, the T tasks with a non-zero gradient (a task
without a label in the global batch gets c_t = 0 and the method runs on the others). All four are invariant to a
common scale of the gradients (UPGrad and Nash-MTL normalise K, CAGrad's solve is done on K / mean(diag K)), so the
loss normalisation's constant factors do not change them. Logged ``weight/<task>`` = c_t s_t, the multiplier of
task t's gradient at F.

Where a well-kept library fits, it is used: torchjd's ``PCGradWeighting`` and ``UPGradWeighting`` (with its quadprog
projector) take a Gram matrix and return exactly these coefficients. CAGrad and Nash-MTL are written here: torchjd's
versions solve with cvxpy (CLARABEL / ECOS, a large optional dependency), and its CAGrad normalises K differently
from the released code, whose SLSQP solve (scipy) is reproduced here; Nash-MTL's equation K alpha = 1 / alpha has
a closed convex form solved exactly by Newton's method (see `nash_mtl_coefficients`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

from ..data.sampling import mix_seed
from ..errors import ConfigError
from .base import LossWeighting

GRADIENT_SPACES = ("features", "parameters")


class GradientWeighting(LossWeighting):
    """Base of the gradient-level methods: ``begin_step(step, gram=K)`` sets ``current`` = c_t s_t from the global
    Gram matrix K of the unweighted per-task gradients; ``combine`` is sum_t s_t L_t, the loss of the task-specific
    part. ``grads``: where the gradients are taken -- ``features`` (default: the prompted encoder's outputs, one
    decoder backward per task) or ``parameters`` (the encoder's parameters: one encoder backward per task more, and
    under DDP an all-reduce of T x #parameters numbers per step)."""

    needs_gram = True

    def __init__(self, *, tasks: Sequence[str], base_weights: Mapping[str, float], grads: str = "features",
                 fixed_weights: bool = False) -> None:
        super().__init__(tasks=tasks, base_weights=base_weights)
        if grads not in GRADIENT_SPACES:
            raise ConfigError(f"train.loss_weighting_options.grads '{grads}' is not one of: "
                              f"{', '.join(GRADIENT_SPACES)}")
        self.grads = grads
        self.register_buffer("factors", torch.tensor([self.base_weights[t] if fixed_weights else 1.0
                                                      for t in self.tasks], dtype=torch.float64),
                             persistent=False)  # (T,) s_t

    def coefficients(self, gram: Tensor, step: int) -> Tensor:
        """(m,) c for the (m, m) float64 Gram matrix of m non-zero gradients (the method)."""
        raise NotImplementedError

    def begin_step(self, step: int, *, losses: Tensor | None = None, grad_sq: Tensor | None = None,
                   gram: Tensor | None = None) -> None:
        if gram is None:
            raise ValueError(f"{self.name} combines the per-task gradients: pass begin_step(step, gram=...)")
        s = self.factors.cpu()
        K = gram.detach().to("cpu", torch.float64) * torch.outer(s, s)  # (T, T) of the gradients of s_t L_t
        if not bool(torch.isfinite(K).all()):  # an fp16 overflow: the scaler skips this step anyway
            self.current.copy_(s)
            return
        present = (K.diagonal() > 0).nonzero().squeeze(1)  # the tasks with a gradient
        c = torch.zeros(len(self.tasks), dtype=torch.float64)
        if len(present):
            c[present] = self.coefficients(K[present][:, present], step).to(torch.float64)
        self.current.copy_(c * s)

    def combine(self, losses: Mapping[str, Tensor], *, share: float = 1.0) -> Tensor:
        """sum_t s_t L_t: the loss of the task-specific part (decoders and heads), which is trained by it directly."""
        return sum(f * losses[t] for t, f in zip(self.tasks, self.factors.tolist()))


class PCGrad(GradientWeighting):
    """PCGrad (Yu et al., NeurIPS 2020, Alg. 1): each g_i is projected, in a random order of the other tasks, onto the
    normal plane of every g_j it conflicts with (g_i^PC . g_j < 0), and the projected gradients are summed. The order
    is drawn from (``seed``, step), so every process and a resumed run draw the same; torchjd's ``PCGradWeighting``
    does the projections on K."""

    name = "pcgrad"

    def __init__(self, *, tasks: Sequence[str], base_weights: Mapping[str, float], grads: str = "features",
                 fixed_weights: bool = False, seed: int = 0) -> None:
        super().__init__(tasks=tasks, base_weights=base_weights, grads=grads, fixed_weights=fixed_weights)
        self.seed = int(seed)

    def coefficients(self, gram: Tensor, step: int) -> Tensor:
        from torchjd.aggregation import PCGradWeighting

        with torch.random.fork_rng(devices=[]):  # the training RNG stream is left as it was
            torch.manual_seed(mix_seed(self.seed, step))
            return PCGradWeighting()(gram)


class UPGrad(GradientWeighting):
    """UPGrad (Quinton and Rey, "Jacobian Descent for Multi-Objective Optimization", 2024): each g_i is projected onto
    the dual cone of all the gradients (the directions that conflict with none) and the projections are averaged;
    the projection of g_i is J^T v with v = argmin_{v >= e_i} v^T K v (their Prop. 1). torchjd's ``UPGradWeighting``
    with its quadprog projector, on K / trace(K) + ``reg_eps`` I. The trace normalisation is done here: torchjd's
    projector also normalises, but first zeroes any K whose trace is below an absolute 1e-4 -- which the per-task
    gradients of dense per-pixel losses at F often are (8e-4 to 1e-4 on the tiny model at 64-128 px), where UPGrad
    would silently become the mean."""

    name = "upgrad"

    def __init__(self, *, tasks: Sequence[str], base_weights: Mapping[str, float], grads: str = "features",
                 fixed_weights: bool = False, reg_eps: float = 1e-4) -> None:
        super().__init__(tasks=tasks, base_weights=base_weights, grads=grads, fixed_weights=fixed_weights)
        if not (math.isfinite(reg_eps) and reg_eps >= 0):
            raise ConfigError(f"train.loss_weighting_options.reg_eps must be a finite number >= 0, got {reg_eps}")
        self.reg_eps = float(reg_eps)

    def coefficients(self, gram: Tensor, step: int) -> Tensor:
        from torchjd.aggregation import UPGradWeighting
        from torchjd.linalg import QuadprogProjector

        projector = QuadprogProjector(norm_eps=0.0, reg_eps=self.reg_eps)
        return UPGradWeighting(projector=projector)(gram / gram.diagonal().sum())


class CAGrad(GradientWeighting):
    """CAGrad (Liu et al., NeurIPS 2021, Alg. 1, the released ``cagrad``): with g_0 the mean gradient, the update
    d = g_0 + (c |g_0| / |g_w|) g_w maximises the worst task's improvement min_i g_i . d within the ball
    |d - g_0| <= c |g_0|, where w minimises g_w . g_0 + c |g_0| |g_w| over the simplex (g_w = sum_i w_i g_i); the
    released code then divides d by 1 + c^2 (``rescale: 1``; 0: no division, 2: by 1 + c). ``c`` = 0.4, the
    paper's value for NYUv2 and Cityscapes. The simplex problem is solved as released, with scipy's SLSQP from the
    uniform w, on K / mean(diag K): the released code's 1e-8 terms assume gradients of order 1, and dense
    per-pixel losses give far smaller ones."""

    name = "cagrad"

    def __init__(self, *, tasks: Sequence[str], base_weights: Mapping[str, float], grads: str = "features",
                 fixed_weights: bool = False, c: float = 0.4, rescale: int = 1) -> None:
        super().__init__(tasks=tasks, base_weights=base_weights, grads=grads, fixed_weights=fixed_weights)
        if not (math.isfinite(c) and c >= 0):
            raise ConfigError(f"train.loss_weighting_options.c must be a finite number >= 0, got {c}")
        if rescale not in (0, 1, 2):
            raise ConfigError(f"train.loss_weighting_options.rescale must be 0, 1 or 2, got {rescale!r}")
        self.c, self.rescale = float(c), int(rescale)

    def coefficients(self, gram: Tensor, step: int) -> Tensor:
        return cagrad_coefficients(gram, c=self.c, rescale=self.rescale)


def cagrad_coefficients(gram: Tensor, *, c: float, rescale: int = 1) -> Tensor:
    """(m,) the coefficients of CAGrad's d = sum_i coef_i g_i from the Gram matrix (see `CAGrad`)."""
    from scipy.optimize import minimize

    m = gram.shape[0]
    A = (gram / gram.diagonal().mean()).numpy().astype(np.float64)  # scale-free
    x0 = np.full(m, 1.0 / m)
    radius = c * math.sqrt(max(A.mean(), 0.0) + 1e-8) + 1e-8  # c |g_0|, |g_0|^2 = mean(K)

    def objective(x: np.ndarray) -> float:  # g_w . g_0 + c |g_0| |g_w|
        return float(x @ A @ x0 + radius * math.sqrt(max(x @ A @ x, 0.0) + 1e-8))

    w = minimize(objective, x0, bounds=[(0.0, 1.0)] * m,
                 constraints=({"type": "eq", "fun": lambda x: 1.0 - x.sum()},)).x
    scale = radius / (math.sqrt(max(w @ A @ w, 0.0) + 1e-8) + 1e-8)  # c |g_0| / |g_w|
    coef = x0 + scale * w
    coef = coef / {0: 1.0, 1: 1.0 + c**2, 2: 1.0 + c}[rescale]
    return torch.from_numpy(coef)


class NashMTL(GradientWeighting):
    """Nash-MTL (Navon et al., ICML 2022): the update d = sum_i alpha_i g_i is the Nash bargaining solution, the
    alpha > 0 with K alpha = 1 / alpha (their Eq. 4; K normalised by its Frobenius norm, as the released code does
    before the solve, so the update scales with the gradients).

    The released code approximates alpha with up to 20 steps of a sequence of convex problems (cvxpy) warm-started
    from the previous step's alpha, recomputed every ``update_weights_every`` steps. Here the equation is solved
    exactly, every step: K alpha = 1 / alpha is the stationarity condition of the strictly convex
    f(alpha) = 1/2 alpha^T K alpha - sum_i log alpha_i, minimised by Newton's method (`nash_mtl_coefficients`).
    ``ridge`` (1e-8) is added to K's diagonal so that f stays bounded when non-negative combinations of the
    gradients cancel exactly (the paper assumes independent gradients). The released ``max_norm`` (1) clipping of
    the shared gradient is ``optim.grad_clip`` here."""

    name = "nash_mtl"

    def __init__(self, *, tasks: Sequence[str], base_weights: Mapping[str, float], grads: str = "features",
                 fixed_weights: bool = False, ridge: float = 1e-8) -> None:
        super().__init__(tasks=tasks, base_weights=base_weights, grads=grads, fixed_weights=fixed_weights)
        if not (math.isfinite(ridge) and ridge >= 0):
            raise ConfigError(f"train.loss_weighting_options.ridge must be a finite number >= 0, got {ridge}")
        self.ridge = float(ridge)

    def coefficients(self, gram: Tensor, step: int) -> Tensor:
        return nash_mtl_coefficients(gram, ridge=self.ridge)


def nash_mtl_coefficients(gram: Tensor, *, ridge: float = 1e-8, tol: float = 1e-12, max_iter: int = 100) -> Tensor:
    """(m,) alpha > 0 with K alpha = 1 / alpha, K = gram / |gram|_F + ridge I: damped Newton on
    f(alpha) = 1/2 alpha^T K alpha - sum log alpha, with backtracking that keeps alpha > 0 (quadratic convergence;
    ~6-10 iterations for m <= 6)."""
    K = gram.to(torch.float64)
    K = K / torch.linalg.matrix_norm(K) + ridge * torch.eye(len(K), dtype=torch.float64)

    def f(a: Tensor) -> float:
        return float(0.5 * a @ K @ a - torch.log(a).sum())

    a = 1.0 / K.diagonal().sqrt()  # exact when the gradients are orthogonal
    for _ in range(max_iter):
        grad = K @ a - 1.0 / a
        if float(grad.abs().max()) < tol:
            break
        step = torch.linalg.solve(K + torch.diag(1.0 / a**2), grad)
        t, value, slope = 1.0, f(a), float(grad @ step)
        while bool((a - t * step <= 0).any()) or f(a - t * step) > value - 1e-4 * t * slope:
            t *= 0.5
            if t < 1e-12:
                break
        a = a - t * step
    return a
