"""What a training run builds before step 1 from its config: the model (the preset's class with the run's tasks
and input size, ``model.overrides`` checked against its constructor), its ImageNet weights, the precision, and the
per-task loss weights. Only the engine reads config objects; everything here hands plain arguments on."""

from __future__ import annotations

import inspect
from pathlib import Path

import torch

from ..config import Config, closest_key
from ..errors import ConfigError
from ..model.build import PRESETS, VARIANTS, build_variant, preset_class, preset_kwargs
from ..model.pretrained import load_vit_weights
from ..model.swin.taskprompter_swin import TaskPrompterSwin
from ..model.swin.weights import load_swin_weights
from ..tasks import DATASET_SPECS
from .precision import choose_precision


def constructor_arguments(variant: str, preset: str | None = None) -> dict[str, inspect.Parameter]:
    """The keyword arguments ``model.overrides`` may set for a ``model.variant`` of ``preset`` (a variant that forwards
    ``**kwargs`` takes the TaskPrompter's; "taskprompter" of a Swin preset is the TaskPrompterSwin)."""
    cls = preset_class(preset) if variant == "taskprompter" and preset in PRESETS else VARIANTS[variant]
    params = dict(inspect.signature(cls).parameters)
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        params |= inspect.signature(VARIANTS["taskprompter"]).parameters
    return {n: p for n, p in params.items() if p.kind is not inspect.Parameter.VAR_KEYWORD}


def check_model_config(cfg: Config) -> None:
    """``model.overrides`` names constructor arguments and ``data.size`` fits the patch grid: ConfigErrors that name
    the key and the closest valid one, before anything is built."""
    if cfg.model.variant not in VARIANTS:
        raise ConfigError(f"model.variant '{cfg.model.variant}' is not one of {sorted(VARIANTS)}")
    allowed = constructor_arguments(cfg.model.variant, cfg.model.name)
    run_keys = {"tasks": "data.tasks", "img_size": "data.size"}
    for name in cfg.model.overrides:
        if name in run_keys:
            raise ConfigError(f"model.overrides.{name} is set by the run: use {run_keys[name]} instead")
        if name not in allowed:
            close = closest_key(name, sorted(set(allowed) - set(run_keys)))
            hint = f"did you mean 'model.overrides.{close}'?" if close else f"the arguments are {sorted(allowed)}"
            raise ConfigError(f"unknown model.overrides key '{name}' ({VARIANTS[cfg.model.variant].__name__} has "
                              f"no such argument); {hint}")
    patch = preset_kwargs(cfg.model.name, **cfg.model.overrides).get("patch_size", allowed["patch_size"].default)
    if any(side % patch for side in cfg.data.size):
        fit = [max(patch, round(side / patch) * patch) for side in cfg.data.size]
        raise ConfigError(f"data.size {list(cfg.data.size)} must be multiples of the patch size {patch} of "
                          f"{cfg.model.name}, e.g. data.size={fit}")


def build_model(cfg: Config, tasks: dict[str, int]) -> torch.nn.Module:
    """The configured preset with this run's tasks and input size (``model.overrides`` on top); a value the model
    refuses is a ConfigError."""
    check_model_config(cfg)
    try:
        return build_variant(cfg.model.variant, cfg.model.name, tasks=tasks, img_size=tuple(cfg.data.size),
                             **cfg.model.overrides)
    except (ValueError, AssertionError) as err:
        raise ConfigError(f"{cfg.model.name} with data.size={list(cfg.data.size)} and model.overrides="
                          f"{dict(cfg.model.overrides)}: {err}") from err


def load_pretrained(model: torch.nn.Module, path: str, log) -> None:
    kind = "Swin" if isinstance(model, TaskPrompterSwin) else "ViT"
    if not Path(path).is_file():
        raise ConfigError(f"model.pretrained: {kind} weights not found: {path} (download them once, or train from "
                          "scratch with --set model.pretrained=null)")
    encoders = list(model.encoders.values()) if hasattr(model, "encoders") else [model]
    for m in encoders:
        load = load_swin_weights if isinstance(m, TaskPrompterSwin) else load_vit_weights  # Swin: MS or timm layout
        missing = load(m.backbone, path)
    log.info(f"loaded {kind} weights from {path} into {len(encoders)} encoder(s); {len(missing)} prompt and "
             "channel-prompt tensors per encoder keep their initialisation")


def amp_settings(cfg: Config, device: torch.device, log) -> tuple[torch.dtype | None, bool]:
    """(autocast dtype or None for fp32, use a GradScaler) of ``train.amp`` on ``device`` (`precision.py`: auto = bf16
    where the device multiplies it natively); logs the choice and its reason in one line."""
    precision = choose_precision(cfg.train.amp, device)
    log.info(precision.describe())
    return precision.dtype, precision.scaler


def loss_weights(cfg: Config) -> dict[str, float]:
    """Per-task loss weights: the task table's, the dataset's released ones (Cityscapes-3D: semseg 100), then
    ``train.loss_weights``."""
    spec = DATASET_SPECS.get(cfg.data.format)
    return {**(dict(spec.loss_weights) if spec is not None else {}), **cfg.train.loss_weights}
