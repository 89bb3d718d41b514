"""Optimiser and learning-rate schedule.

The released recipe is Adam with *coupled* L2 weight decay 1e-6 on every parameter, lr 2e-5, and a polynomial
decay lr * (1 - it / max_iters)^0.9 applied every iteration, without warm-up. ``adamw`` is the modern alternative:
decoupled decay, and none on the task prompts, the position table, norms and biases.
The schedule is a plain function of the step (no scheduler object), so resuming needs only the step.

``optim.step_in_backward`` fuses the step into the backward pass (``StepInBackward``): each parameter is updated as
soon as its gradient exists and the gradient freed at once, so a step never holds all gradients together.
"""

from __future__ import annotations

import inspect
import math
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..config import Config, OptimConfig
from ..errors import ConfigError

if TYPE_CHECKING:
    from ..weighting import LossWeighting

NO_DECAY_NAMES = ("prompts", "pos_embed", "cls_token")  # parameters that must not shrink towards zero


def is_no_decay(name: str, param: torch.Tensor) -> bool:
    """Biases, norm weights (1-D) and the prompt / position tables."""
    leaf = name.rsplit(".", 1)[-1]
    return param.ndim <= 1 or leaf in NO_DECAY_NAMES or name.endswith(NO_DECAY_NAMES)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if is_no_decay(name, p) else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer | StepInBackward:
    """The configured Adam / AdamW over ``model``'s trainable parameters; with ``cfg.step_in_backward`` wrapped in a
    ``StepInBackward`` that steps it inside the backward pass (the run's other checks: ``check_step_in_backward``)."""
    if cfg.name == "adam":  # released: torch Adam's weight_decay is the coupled L2 term, on all parameters
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.Adam(params, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps,
                                     weight_decay=cfg.weight_decay, fused=cfg.fused or None)
    elif cfg.name == "adamw":
        optimizer = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=cfg.betas,
                                      eps=cfg.eps, fused=cfg.fused or None)
    else:
        raise ConfigError(f"optim.name '{cfg.name}' is not one of: adam, adamw")
    return StepInBackward(optimizer) if cfg.step_in_backward else optimizer


class StepInBackward:
    """The optimiser step fused into the backward pass (PyTorch's "optimizer step in backward" recipe): one optimiser
    per parameter, stepped by ``Tensor.register_post_accumulate_grad_hook`` as soon as the parameter's gradient is
    complete, which then frees that gradient. Every parameter sees the same update as from ``optimizer.step()`` after
    the backward (Adam's update is elementwise, per parameter), but the step never holds all gradients at once.

    To the training loop it is the wrapped optimiser: ``param_groups`` (``set_lr`` sets the learning rate there; each
    update reads its group's hyperparameters), ``state``, ``state_dict`` / ``load_state_dict`` in the wrapped
    optimiser's format (a checkpoint of either kind resumes the other), ``zero_grad``, and ``step``, which has
    nothing left to do. The wrapped optimiser holds the groups and the moments and is never stepped itself; the
    per-parameter optimisers share its ``state``.

    Only where every gradient is final when it is accumulated: no clipping by the global norm, no accumulation over
    micro-batches, one process (DDP averages after the backward), no loss scaling (``check_step_in_backward``).
    """

    def __init__(self, optimizer: torch.optim.Optimizer) -> None:
        self.optimizer = optimizer
        cls = type(optimizer)
        takes = inspect.signature(cls).parameters
        kwargs = {k: v for k, v in optimizer.defaults.items() if k in takes}
        self._group_index: dict[nn.Parameter, int] = {}
        self._single: dict[nn.Parameter, torch.optim.Optimizer] = {}
        for i, group in enumerate(optimizer.param_groups):
            for p in group["params"]:
                self._group_index[p] = i
                self._single[p] = cls([{**_hyperparameters(group), "params": [p]}], **kwargs)
        self._share_state()
        self._handles = [p.register_post_accumulate_grad_hook(self._update) for p in self._single]

    def _share_state(self) -> None:
        for single in self._single.values():
            single.state = self.optimizer.state

    def _update(self, param: nn.Parameter) -> None:
        """The hook: ``param``'s gradient is complete; update it with its group's current hyperparameters, free it."""
        single = self._single[param]
        single.param_groups[0].update(_hyperparameters(self.optimizer.param_groups[self._group_index[param]]))
        single.step()
        param.grad = None

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return self.optimizer.param_groups

    @property
    def state(self) -> dict:
        return self.optimizer.state

    def state_dict(self) -> dict[str, Any]:
        state = self.optimizer.state_dict()
        state["state"] = dict(sorted(state["state"].items()))  # parameter order, as an ordinary step leaves it
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state_dict)
        self._share_state()  # load_state_dict gives the wrapped optimiser a new state mapping

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none=set_to_none)  # nothing left: each gradient was freed after its update

    def step(self, closure: None = None) -> None:
        """Nothing to do: every parameter was updated during the backward."""

    def add_param_group(self, group: dict[str, Any]) -> None:
        raise ConfigError("optim.step_in_backward steps the model's parameters only; a loss weighting with learned "
                          "parameters (train.loss_weighting=uw) needs optim.step_in_backward=false")

    def remove(self) -> None:
        """Remove the hooks: the parameters' gradients are kept again, for an ordinary optimiser."""
        for handle in self._handles:
            handle.remove()
        self._handles = []


def _hyperparameters(group: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in group.items() if k != "params"}


def check_step_in_backward(cfg: Config, *, world_size: int, scaler: bool, weighting: LossWeighting) -> None:
    """``optim.step_in_backward`` updates each parameter when its gradient is accumulated, so every gradient must be
    final then: refuse what needs all gradients first, or more than one backward per step (ConfigErrors that say
    what to change). ``scaler``: the run uses a GradScaler (fp16); ``weighting``: the run's ``LossWeighting``."""
    if not cfg.optim.step_in_backward:
        return
    off = "or optim.step_in_backward=false"
    if cfg.optim.grad_clip > 0:
        raise ConfigError(f"optim.step_in_backward updates each parameter as soon as its gradient exists, but "
                          f"optim.grad_clip={cfg.optim.grad_clip:g} scales every gradient by the norm of all of them, "
                          f"known only after the backward: set optim.grad_clip=0 {off}")
    if cfg.train.accum_steps > 1:
        raise ConfigError(f"optim.step_in_backward updates the weights in every backward, but train.accum_steps="
                          f"{cfg.train.accum_steps} sums the gradients of {cfg.train.accum_steps} backwards per step: "
                          f"use train.accum_steps=1 (the whole train.batch_size in one micro-batch) {off}")
    if world_size > 1:
        raise ConfigError(f"optim.step_in_backward updates each parameter inside the backward, before DDP averages its "
                          f"gradient over the {world_size} processes: train in one process {off}")
    if scaler:
        raise ConfigError(f"optim.step_in_backward updates each parameter inside the backward, but train.amp="
                          f"{cfg.train.amp} scales the loss and skips a step whose gradients overflow, known only "
                          f"after the backward: use train.amp=bf16 (no loss scaling) or off, {off}")
    name = cfg.train.loss_weighting
    if weighting.param_group() is not None:
        raise ConfigError(f"optim.step_in_backward steps the model's parameters only, but train.loss_weighting={name} "
                          f"learns parameters of its own with the model's optimiser after the backward: use "
                          f"train.loss_weighting=fixed, dwa or famo {off}")
    if getattr(weighting, "needs_feature_grads", False) or getattr(weighting, "needs_gram", False):
        raise ConfigError(f"optim.step_in_backward updates each parameter when its gradient is accumulated, but "
                          f"train.loss_weighting={name} needs each task's gradient apart (one backward per task) "
                          f"before the weights may change: use train.loss_weighting=fixed, dwa or famo {off}")


def load_optimizer_state(optimizer: torch.optim.Optimizer | StepInBackward, state: dict, cfg: OptimConfig) -> None:
    """Resume the optimiser's moments and step counts, keeping the implementation the config asks for.

    ``load_state_dict`` would also restore the saved run's ``fused`` flag; the config decides instead (the update is
    the same either way). The fused kernel wants its step counts on the parameters' device.
    """
    optimizer.load_state_dict(state)
    for group in optimizer.param_groups:
        group["fused"] = cfg.fused or None
        if cfg.fused:
            group["foreach"] = None
    if cfg.fused:
        for param, param_state in optimizer.state.items():
            if torch.is_tensor(param_state.get("step")):
                param_state["step"] = param_state["step"].to(param.device, torch.float32)


def lr_at(step: int, cfg: OptimConfig) -> float:
    """Learning rate for iteration ``step`` (0-based): linear warm-up, then poly / cosine / constant."""
    if cfg.warmup_iters > 0 and step < cfg.warmup_iters:
        return cfg.lr * (step + 1) / cfg.warmup_iters
    if cfg.schedule == "constant":
        return cfg.lr
    progress = min(max(step, 0) / max(cfg.max_iters, 1), 1.0)  # the released poly uses it / max_iters
    if cfg.schedule == "poly":
        return cfg.lr * (1.0 - progress) ** cfg.poly_power
    if cfg.schedule == "cosine":
        return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * progress))
    raise ConfigError(f"optim.schedule '{cfg.schedule}' is not one of: poly, cosine, constant")


def set_lr(optimizer: torch.optim.Optimizer | StepInBackward, lr: float) -> None:
    """``lr`` for every group, times the group's ``lr_scale`` where it has one (a loss weighting's parameters)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
