"""The training loop's side of loss weighting (`taskprompter.weighting`): what a method needs of the run and its
state in a checkpoint (the backward itself is `taskprompter.weighting.weighted_backward`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..config import Config
from ..errors import ConfigError
from ..weighting import LossWeighting


def check_weighting(weighting: LossWeighting, cfg: Config) -> None:
    """What the method needs of the run: the encoder's outputs are captured in eager mode only. (A method that weighs
    by the step's global statistics takes a first pass over the micro-batches under ``train.accum_steps`` > 1:
    `taskprompter.weighting.begin_accumulated_step`.)"""
    name = cfg.train.loss_weighting
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
