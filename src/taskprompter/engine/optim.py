"""Optimiser and learning-rate schedule.

The released recipe is Adam with *coupled* L2 weight decay 1e-6 on every parameter, lr 2e-5, and a polynomial
decay lr * (1 - it / max_iters)^0.9 applied every iteration, without warm-up. ``adamw`` is the modern alternative:
decoupled decay, and none on the task prompts, the position table, norms and biases.
The schedule is a plain function of the step (no scheduler object), so resuming needs only the step.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..config import OptimConfig
from ..errors import ConfigError

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


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    if cfg.name == "adam":  # released: torch Adam's weight_decay is the coupled L2 term, on all parameters
        params = [p for p in model.parameters() if p.requires_grad]
        return torch.optim.Adam(params, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps,
                                weight_decay=cfg.weight_decay, fused=cfg.fused or None)
    if cfg.name == "adamw":
        return torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=cfg.betas, eps=cfg.eps,
                                 fused=cfg.fused or None)
    raise ConfigError(f"optim.name '{cfg.name}' is not one of: adam, adamw")


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict, cfg: OptimConfig) -> None:
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


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """``lr`` for every group, times the group's ``lr_scale`` where it has one (a loss weighting's parameters)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
