"""The training loop's side of loss weighting (`taskprompter.weighting`): what a method needs of the run and its
state in a checkpoint (the backward itself is `taskprompter.weighting.weighted_backward`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..config import Config
from ..errors import ConfigError
from ..weighting import LossWeighting


def check_weighting(weighting: LossWeighting, cfg: Config) -> None:
    """What the method needs of the run: the step's global losses or feature gradients before the backward exist
    only when the step has one micro-batch; the encoder's outputs are captured in eager mode only."""
    name = cfg.train.loss_weighting
    if (weighting.needs_current_losses or weighting.needs_feature_grads or weighting.needs_gram) \
            and cfg.train.accum_steps > 1:
        what = ("global losses" if weighting.needs_current_losses else "global feature-gradient norms"
                if weighting.needs_feature_grads else "per-task gradients of the global batch")
        raise ConfigError(f"train.loss_weighting={name} weighs each step by its {what}, known only after the last "
                          f"micro-batch: use train.accum_steps=1 (more processes reach the same global batch)")
    if (weighting.needs_feature_grads or weighting.needs_gram) and cfg.train.compile:
        raise ConfigError(f"train.loss_weighting={name} takes gradients at the encoder's outputs, which a compiled "
                          "model does not expose: use train.compile=false")


def load_weighting_state(weighting: LossWeighting, state: dict[str, Any], path: Path) -> None:
    """The checkpoint's loss-weighting state (a checkpoint from before loss weighting trained with ``fixed``)."""
    saved = state.get("weighting") or {"name": "fixed", "state": {}}
    if saved["name"] != weighting.name:
        raise ConfigError(f"{path} was trained with train.loss_weighting={saved['name']}: resume with --set "
                          f"train.loss_weighting={saved['name']}, or start a new run to use {weighting.name}")
    weighting.load_state_dict(saved["state"])
