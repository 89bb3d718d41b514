"""Loss weighting: how the per-task losses L_t become the one loss whose gradient trains the model (issue 15).

    weighting = build_weighting("dwa", tasks=["semseg", "depth"], base_weights={"semseg": 1, "depth": 1},
                                options={"temperature": 2.0}, steps_per_epoch=1250)

Every method is an ``nn.Module`` whose state (DWA's loss history, UW's log-variances, FAMO's logits and their Adam
moments) is in its ``state_dict`` and goes into the training checkpoint. A training loop calls
``weighted_backward(weighting, losses, ...)`` instead of ``loss.backward()`` (`backward.py`), which does, per
optimiser step:

    weighting.begin_step(step, losses=..., grad_sq=..., gram=...)   # once, before the step's first backward
    total = weighting.combine(losses, share=...)                     # per micro-batch: the loss to backpropagate
and the loop, after the optimiser step:
    weighting.update(step_losses, step)                              # dwa: learn from the finished step

The package: ``base.py`` (the interface, the shared features F), ``loss_level.py`` (fixed, uw, dwa, famo,
gradnorm_scale), ``gradient_level.py`` (pcgrad, cagrad, upgrad, nash_mtl), ``backward.py`` (the backward passes and
the global statistics).

Everything a method learns from is the step's *global* statistics -- summed over processes and micro-batches -- so N
processes, or accumulated micro-batches, weigh exactly as one process on the same global batch:

  ``losses`` (``needs_current_losses``): this step's per-task losses of the global batch, before the backward (FAMO
    divides by them).
  ``grad_sq`` (``needs_feature_grads``): |dL_t/dF|^2 per task, F the shared features (every tensor the prompted
    encoder ``model.backbone`` outputs), summed over processes and micro-batches; one ``autograd.grad`` per task.
  ``gram`` (``needs_gram``): the Gram matrix of the per-task gradients at F (or at the encoder's parameters), summed
    over processes and micro-batches: the gradient-level methods (`gradient_level.py`).
  These three are known before the backward from the step's one forward when it has one micro-batch; a step of
  several (``train.accum_steps`` > 1) first runs ``begin_accumulated_step``, one more forward per micro-batch.
  ``step_losses`` (``needs_step_losses``): the step's per-task losses averaged over micro-batches and processes (the
    values logged as ``loss/<task>``), after the optimiser step (DWA's history).

``combine`` returns sum_t w_t L_t with the weights w_t (``current``, logged as ``weight/<task>``) fixed for the step,
plus terms of the method's own (UW's regulariser, a ``share`` of it per micro-batch and process so that the step
counts it once). The weights are constants of the backward except UW's, whose log-variances the model's optimiser
trains (``param_group``). The gradient-level methods train the encoder with their combination of the per-task
gradients and the decoders and heads with the plain sum of the losses (`gradient_level.py`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ..errors import ConfigError
from .backward import (
    begin_accumulated_step,
    gram_matrix,
    needs_statistics_first,
    parameter_gradients,
    replayable_forwards,
    shared_features_for,
    task_gradients,
    weighted_backward,
)
from .base import LossWeighting, SharedFeatures, feature_grad_sq
from .gradient_level import (
    CAGrad,
    GradientWeighting,
    NashMTL,
    PCGrad,
    UPGrad,
    cagrad_coefficients,
    nash_mtl_coefficients,
)
from .loss_level import FAMO, DynamicWeightAverage, Fixed, GradNormScale, UncertaintyWeighting

__all__ = ["CAGrad", "DynamicWeightAverage", "FAMO", "Fixed", "GradNormScale", "GradientWeighting", "LossWeighting",
           "NashMTL", "PCGrad", "SharedFeatures", "UPGrad", "UncertaintyWeighting", "WEIGHTINGS",
           "begin_accumulated_step", "build_weighting", "cagrad_coefficients", "feature_grad_sq", "gram_matrix",
           "nash_mtl_coefficients", "needs_statistics_first", "parameter_gradients", "replayable_forwards",
           "shared_features_for", "task_gradients", "weighted_backward"]


def build_weighting(name: str, *, tasks: Sequence[str], base_weights: Mapping[str, float],
                    options: Mapping[str, Any] | None = None, steps_per_epoch: int = 1) -> LossWeighting:
    """``WEIGHTINGS[name]`` with ``options`` (``train.loss_weighting_options``); an unknown method or option is a
    ConfigError naming the closest one. ``steps_per_epoch``: DWA's default period."""
    import inspect

    from ..config import closest_key

    if name not in WEIGHTINGS:
        close = closest_key(name, sorted(WEIGHTINGS))
        hint = f"did you mean '{close}'?" if close else f"the methods are {', '.join(WEIGHTINGS)}"
        raise ConfigError(f"train.loss_weighting '{name}' is not a loss weighting method; {hint}")
    cls = WEIGHTINGS[name]
    allowed = [p for p in inspect.signature(cls).parameters if p not in ("tasks", "base_weights")]
    options = dict(options or {})
    for key in options:
        if key not in allowed:
            close = closest_key(key, allowed) if allowed else None
            hint = (f"did you mean 'train.loss_weighting_options.{close}'?" if close else
                    f"{name} takes {', '.join(allowed)}" if allowed else f"{name} takes no options")
            raise ConfigError(f"unknown train.loss_weighting_options key '{key}' for {name}; {hint}")
    if cls is DynamicWeightAverage:
        options.setdefault("period", max(1, int(steps_per_epoch)))
    try:
        return cls(tasks=tasks, base_weights=base_weights, **options)
    except (TypeError, ValueError) as err:  # an option of the wrong type
        raise ConfigError(f"train.loss_weighting_options for {name}: {err}") from err


WEIGHTINGS: dict[str, type[LossWeighting]] = {
    "fixed": Fixed,
    "uw": UncertaintyWeighting,
    "dwa": DynamicWeightAverage,
    "famo": FAMO,
    "gradnorm_scale": GradNormScale,
    "pcgrad": PCGrad,
    "cagrad": CAGrad,
    "upgrad": UPGrad,
    "nash_mtl": NashMTL,
}
