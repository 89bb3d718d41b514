"""The loss-level methods: each step's loss is sum_t w_t L_t with weights from the losses' history (dwa, famo), learned
parameters (uw), the per-task gradient norms at the shared features (gradnorm_scale) or constants (fixed)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from ..tasks import TASKS
from .base import LossWeighting


class Fixed(LossWeighting):
    """Constant weights b_t: the task table's released values, the dataset's, then ``train.loss_weights`` -- the same
    sum, in the same order, as `MultiTaskLoss` (training is bit-identical to training without a weighting)."""

    name = "fixed"

    def __init__(self, *, tasks: Sequence[str], base_weights: Mapping[str, float]) -> None:
        super().__init__(tasks=tasks, base_weights=base_weights)
        self.current.copy_(torch.tensor([self.base_weights[t] for t in self.tasks], dtype=torch.float64))


class UncertaintyWeighting(LossWeighting):
    """Uncertainty weighting (Kendall, Gal and Cipolla, CVPR 2018) with learned log-variances s_t = log sigma_t^2.

    ``variant: simple`` (default): L = sum_t exp(-s_t) L_t + s_t, the form most re-implementations train.
    ``variant: kendall``: the paper's Eq. 10 per task kind: 1/(2 sigma^2) L_t + log sigma = 1/2 exp(-s_t) L_t + 1/2 s_t
    for regression tasks (depth, normals), exp(-s_t) L_t + 1/2 s_t for classification ones (Eq. 10's 1/sigma^2 L_t
    + log sigma). The s_t start at ``init`` (0: every weight 1) and are trained by the model's optimiser in a group of
    their own, without weight decay, at ``lr_scale`` x the model's learning rate. ``fixed_weights: true`` weighs b_t
    L_t instead of L_t. The weights logged are exp(-s_t) x the factors, the multipliers of L_t.
    """

    name = "uw"

    def __init__(self, *, tasks: Sequence[str], base_weights: Mapping[str, float], variant: str = "simple",
                 init: float = 0.0, lr_scale: float = 1.0, fixed_weights: bool = False) -> None:
        super().__init__(tasks=tasks, base_weights=base_weights)
        if variant not in ("simple", "kendall"):
            raise ConfigError(f"train.loss_weighting_options.variant '{variant}' is not one of: simple, kendall")
        if not (math.isfinite(lr_scale) and lr_scale >= 0):
            raise ConfigError(f"train.loss_weighting_options.lr_scale must be a finite number >= 0, got {lr_scale}")
        half = [0.5 if variant == "kendall" and TASKS[t].kind == "regress" else 1.0 for t in self.tasks]
        base = [self.base_weights[t] if fixed_weights else 1.0 for t in self.tasks]
        self.lr_scale = float(lr_scale)
        self.log_vars = nn.Parameter(torch.full((len(self.tasks),), float(init)))  # (T,) s_t
        self.register_buffer("scale", torch.tensor([h * b for h, b in zip(half, base)]), persistent=False)  # (T,)
        self.register_buffer("regularizer", torch.full((len(self.tasks),), 0.5 if variant == "kendall" else 1.0),
                             persistent=False)  # (T,)

    def begin_step(self, step: int, *, losses: Tensor | None = None, grad_sq: Tensor | None = None,
                   gram: Tensor | None = None) -> None:
        self.current.copy_(self._vector(self.scale * torch.exp(-self.log_vars)))

    def combine(self, losses: Mapping[str, Tensor], *, share: float = 1.0) -> Tensor:
        L = torch.stack([losses[t].float() for t in self.tasks])  # (T,) fp32, also under autocast
        s = self.log_vars.float()
        return (self.scale * torch.exp(-s) * L).sum() + share * (self.regularizer * s).sum()

    def param_group(self) -> dict[str, Any]:
        return {"params": [self.log_vars], "weight_decay": 0.0, "lr_scale": self.lr_scale}


class DynamicWeightAverage(LossWeighting):
    """Dynamic Weight Average (Liu, Johns and Davison, CVPR 2019, Eq. 7): w_t = T exp(r_t / temperature) /
    sum_i exp(r_i / temperature), r_t = Lbar_t(k-1) / Lbar_t(k-2), the ratio of task t's average loss over the last
    two completed periods; w_t = 1 until two periods are complete.

    The paper's period is an epoch; here it is ``period`` optimiser steps (default: one pass over the training set,
    len(train) // batch_size steps), and Lbar the mean of the steps' global losses (the logged ``loss/<task>``).
    ``temperature`` 2 as in the paper. ``fixed_weights: true`` multiplies w_t by the fixed weights b_t.
    """

    name = "dwa"
    needs_step_losses = True

    def __init__(self, *, tasks: Sequence[str], base_weights: Mapping[str, float], period: int,
                 temperature: float = 2.0, fixed_weights: bool = False) -> None:
        super().__init__(tasks=tasks, base_weights=base_weights)
        if isinstance(period, bool) or not isinstance(period, int) or period < 1:
            raise ConfigError(f"train.loss_weighting_options.period must be a positive integer, got {period!r}")
        if not (math.isfinite(temperature) and temperature > 0):
            raise ConfigError(f"train.loss_weighting_options.temperature must be a finite number > 0, got "
                              f"{temperature}")
        T = len(self.tasks)
        self.period, self.temperature = period, float(temperature)
        self.register_buffer("base", torch.tensor([self.base_weights[t] if fixed_weights else 1.0
                                                   for t in self.tasks], dtype=torch.float64), persistent=False)
        self.register_buffer("window_sum", torch.zeros(T, dtype=torch.float64))  # this period's summed losses
        self.register_buffer("window_steps", torch.zeros((), dtype=torch.long))
        self.register_buffer("averages", torch.zeros(2, T, dtype=torch.float64))  # Lbar(k-2), Lbar(k-1)
        self.register_buffer("periods", torch.zeros((), dtype=torch.long))  # completed periods

    def begin_step(self, step: int, *, losses: Tensor | None = None, grad_sq: Tensor | None = None,
                   gram: Tensor | None = None) -> None:
        if int(self.periods) < 2:
            w = torch.ones_like(self.current)
        else:
            before, last = self.averages
            ratio = torch.where(before > 0, last / before.clamp(min=torch.finfo(torch.float64).tiny), 1.0)  # r_t
            w = len(self.tasks) * torch.softmax(ratio / self.temperature, dim=0)
        self.current.copy_(w * self.base)

    def update(self, losses: Tensor, step: int) -> None:
        self.window_sum += self._vector(losses)
        self.window_steps += 1
        if int(self.window_steps) == self.period:
            self.averages.copy_(torch.stack([self.averages[1], self.window_sum / self.period]))
            self.periods += 1
            self.window_sum.zero_()
            self.window_steps.zero_()


class FAMO(LossWeighting):
    """Fast Adaptive Multitask Optimization (Liu, Liu, Jin, Stone and Liu, NeurIPS 2023, Alg. 1).

    The step follows sum_t c z_t / (L_t - L*_t) grad L_t with z = softmax(xi), c = 1 / sum_t z_t / (L_t - L*_t): the
    gradient of the released code's sum_t (z_t / c) log(L_t - L*_t + eps), so the weights w_t = z_t / (c (L_t - L*_t
    + eps)) (they sum to 1) multiply the raw losses. The logits xi learn from the decrease of the log-losses,
    delta_t = log(L_t(prev) - L*_t + eps) - log(L_t(now) - L*_t + eps): xi <- Adam(xi, grad = J_softmax(xi)^T delta),
    with the released code's defaults: Adam lr ``lr`` = 0.025, coupled L2 decay ``gamma`` = 0.01 on xi, eps 1e-8,
    L*_t = ``min_losses`` (default 0).

    The loss after a step: the released trainers evaluate the same batch again after the optimiser step (one more
    forward pass per step). Here, without that pass, the "after" losses are the next step's global losses, on the
    next batch: at each step's start, xi learns from (previous step's losses, this step's losses), then this step
    is weighed with the updated z -- the same order as Alg. 1, with the batch change in delta. The weights divide
    by this step's global losses (with ``train.accum_steps`` > 1: from a first, no-grad pass over the micro-batches).
    A task without a valid label in the step (its loss exactly L*_t = 0, e.g. human parts in a batch without people)
    weighs 0 and adds nothing to delta -- the paper assumes losses > L*, where 1 / (L_t - L*_t + eps) would put all the
    weight on it. The released code's clipping of the shared gradient norm at 1 is ``optim.grad_clip`` here.
    """

    name = "famo"
    needs_current_losses = True

    def __init__(self, *, tasks: Sequence[str], base_weights: Mapping[str, float], lr: float = 0.025,
                 gamma: float = 0.01, min_losses: Mapping[str, float] | None = None, eps: float = 1e-8) -> None:
        super().__init__(tasks=tasks, base_weights=base_weights)
        for key, value, low in (("lr", lr, 0.0), ("gamma", gamma, 0.0), ("eps", eps, 0.0)):
            if not (math.isfinite(value) and value >= low) or (key != "gamma" and value == 0):
                raise ConfigError(f"train.loss_weighting_options.{key} must be a finite number "
                                  f"{'>= 0' if key == 'gamma' else '> 0'}, got {value}")
        unknown = sorted(set(min_losses or {}) - set(self.tasks))
        if unknown:
            raise ConfigError(f"train.loss_weighting_options.min_losses names task(s) {unknown} not trained here "
                              f"({self.tasks})")
        T = len(self.tasks)
        self.lr, self.gamma, self.eps = float(lr), float(gamma), float(eps)
        self.betas, self.adam_eps = (0.9, 0.999), 1e-8  # torch.optim.Adam's defaults, as the released code
        self.register_buffer("min_losses", torch.tensor([float((min_losses or {}).get(t, 0.0)) for t in self.tasks],
                                                        dtype=torch.float64), persistent=False)  # L*_t
        self.register_buffer("logits", torch.zeros(T, dtype=torch.float64))  # xi
        self.register_buffer("exp_avg", torch.zeros(T, dtype=torch.float64))  # Adam's moments of xi
        self.register_buffer("exp_avg_sq", torch.zeros(T, dtype=torch.float64))
        self.register_buffer("adam_steps", torch.zeros((), dtype=torch.long))
        self.register_buffer("previous", torch.zeros(T, dtype=torch.float64))  # last step's global losses
        self.register_buffer("has_previous", torch.zeros((), dtype=torch.bool))

    def _gap(self, losses: Tensor) -> Tensor:
        return losses - self.min_losses + self.eps  # (T,) L_t - L*_t + eps

    def begin_step(self, step: int, *, losses: Tensor | None = None, grad_sq: Tensor | None = None,
                   gram: Tensor | None = None) -> None:
        if losses is None:
            raise ValueError("famo weighs by the step's global losses: pass begin_step(step, losses=...)")
        losses = self._vector(losses)
        present = losses > self.min_losses  # (T,) False: no valid label in the step's global batch (L_t = 0)
        if bool(self.has_previous):
            both = present & (self.previous > self.min_losses)
            delta = torch.where(both, self._gap(self.previous).log() - self._gap(losses).log(), 0.0)  # (T,)
            z = torch.softmax(self.logits, dim=0)
            self._adam(z * (delta - (z * delta).sum()))  # J^T delta, J = diag(z) - z z^T
        self.previous.copy_(losses)
        self.has_previous.fill_(True)
        z, gap = torch.softmax(self.logits, dim=0), self._gap(losses)
        ratio = torch.where(present, z / gap, 0.0)  # (T,) z_t / (L_t - L*_t + eps)
        self.current.copy_(ratio / ratio.sum() if bool(present.any()) else ratio)  # / c

    def _adam(self, grad: Tensor) -> None:
        """One step of torch.optim.Adam (coupled weight decay ``gamma``) on the logits."""
        (b1, b2), lr = self.betas, self.lr
        grad = grad + self.gamma * self.logits
        self.adam_steps += 1
        k = int(self.adam_steps)
        self.exp_avg.lerp_(grad, 1 - b1)
        self.exp_avg_sq.mul_(b2).addcmul_(grad, grad, value=1 - b2)
        denom = (self.exp_avg_sq.sqrt() / math.sqrt(1 - b2**k)).add_(self.adam_eps)
        self.logits.addcdiv_(self.exp_avg, denom, value=-lr / (1 - b1**k))


class GradNormScale(LossWeighting):
    """Each task scaled by the inverse norm of its gradient at the shared features F (the prompted encoder's outputs):
    w_t = n / |dL_t/dF| / sum_i (1 / |dL_i/dF|), so every weighted task gradient has the same norm at F and the weights
    sum to n, the number of tasks with a non-zero gradient (a task without one -- no valid label in the batch -- gets
    0).

    The closed-form, per-step normalisation that the gradient-norm studies compare with grid-searched weights: Chen et
    al.'s GradNorm (ICML 2018) with its asymmetry alpha = 0 solved exactly each step instead of learned by a second
    optimiser, at the shared features rather than the last shared layer's weights, with no target from loss ratios.
    The norms are those of the global batch: the squared norms are summed over processes before the weights are
    taken (and SyncBatchNorm's all-reduce carries the other processes' share into each feature gradient). The
    weights are constants of the backward. Cost: T partial backward passes (decoder and heads) per step.
    """

    name = "gradnorm_scale"
    needs_feature_grads = True

    def begin_step(self, step: int, *, losses: Tensor | None = None, grad_sq: Tensor | None = None,
                   gram: Tensor | None = None) -> None:
        if grad_sq is None:
            raise ValueError("gradnorm_scale weighs by the feature-gradient norms: pass begin_step(step, grad_sq=...)")
        norms = self._vector(grad_sq).clamp(min=0).sqrt()  # (T,) |dL_t/dF|
        if not bool(torch.isfinite(norms).all()):  # an fp16 overflow: the scaler skips this step anyway
            self.current.fill_(1.0)
            return
        inverse = torch.where(norms > 0, 1.0 / norms.clamp(min=torch.finfo(torch.float64).tiny), 0.0)
        n = int((norms > 0).sum())
        self.current.copy_(n * inverse / inverse.sum() if n else torch.ones_like(inverse))
