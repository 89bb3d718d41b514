"""The training loop's side of loss weighting (`taskprompter.weighting`): what a method needs of the run, its state
in a checkpoint, and the global statistics each step's weights come from."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..config import Config
from ..errors import ConfigError
from ..weighting import LossWeighting, SharedFeatures, feature_grad_sq
from .distributed import Dist, summed_over_processes


def check_weighting(weighting: LossWeighting, cfg: Config) -> None:
    """What the method needs of the run: the step's global losses or feature gradients before the backward exist
    only when the step has one micro-batch; the encoder's outputs are captured in eager mode only."""
    name = cfg.train.loss_weighting
    if (weighting.needs_current_losses or weighting.needs_feature_grads) and cfg.train.accum_steps > 1:
        what = "global losses" if weighting.needs_current_losses else "global feature-gradient norms"
        raise ConfigError(f"train.loss_weighting={name} weighs each step by its {what}, known only after the last "
                          f"micro-batch: use train.accum_steps=1 (more processes reach the same global batch)")
    if weighting.needs_feature_grads and cfg.train.compile:
        raise ConfigError(f"train.loss_weighting={name} takes gradients at the encoder's outputs, which a compiled "
                          "model does not expose: use train.compile=false")


def load_weighting_state(weighting: LossWeighting, state: dict[str, Any], path: Path) -> None:
    """The checkpoint's loss-weighting state (a checkpoint from before loss weighting trained with ``fixed``)."""
    saved = state.get("weighting") or {"name": "fixed", "state": {}}
    if saved["name"] != weighting.name:
        raise ConfigError(f"{path} was trained with train.loss_weighting={saved['name']}: resume with --set "
                          f"train.loss_weighting={saved['name']}, or start a new run to use {weighting.name}")
    weighting.load_state_dict(saved["state"])


def begin_weighting_step(weighting: LossWeighting, step: int, losses: dict[str, torch.Tensor],
                         features: SharedFeatures | None, d: Dist, loss_scale: float, scaler) -> None:
    """The weights of ``step``, from the global statistics of its (first) micro-batch that the method needs."""
    current = {}
    if weighting.needs_current_losses:  # the global batch's losses, as logged
        mine = torch.tensor([losses[t].detach().float().item() * loss_scale for t in weighting.tasks],
                            dtype=torch.float64)
        current["losses"] = summed_over_processes(mine, d) / d.world_size
    if weighting.needs_feature_grads:  # |dL_t/dF|^2 summed over processes (fp16: unscaled before the norm)
        scale = scaler.get_scale() if scaler.is_enabled() else 1.0
        mine = feature_grad_sq(losses, features.pop(), weighting.tasks, scale=scale)
        current["grad_sq"] = summed_over_processes(mine, d)
    weighting.begin_step(step, **current)
