"""Presets and the model registry.

Presets are plain data: the released configurations, their paper-fidelity counterparts, ViT-S (Table 6) and small
CPU models. ``build_model(name, tasks=None, img_size=None, **overrides)`` builds one; ``MODELS`` maps each name to its
builder. ``MODEL_CLASSES`` is the registry of the project's model classes that a model directory's ``class`` may name,
and ``load_model(path)`` rebuilds whichever of them a directory holds (``io.py``).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any

import torch
from torch import nn

from ..errors import CheckpointError, ConfigError
from ..tasks import CITYSCAPES3D_TASKS, NYUD_TASKS, PASCAL_CONTEXT_TASKS
from .encoder import hp_levels
from .io import read_model_config, resolve_model_dir
from .swin.taskprompter_swin import TaskPrompterSwin
from .taskprompter import TaskPrompter
from .variants import TaskSpecificEncoders

# ViT sizes: (embed_dim C, depth, num_heads nH)
VIT_TINY = dict(embed_dim=64, depth=4, num_heads=2)
VIT_S = dict(embed_dim=384, depth=12, num_heads=6)
VIT_B = dict(embed_dim=768, depth=12, num_heads=12)
VIT_L = dict(embed_dim=1024, depth=24, num_heads=16)

PASCAL = dict(tasks=PASCAL_CONTEXT_TASKS, img_size=(512, 512))
NYUD = dict(tasks=NYUD_TASKS, img_size=(448, 576))


def _paper(**kwargs: Any) -> dict[str, Any]:
    """Paper-fidelity counterpart: Section 3 literally. Without the 1x1 prompting projections the prompted features
    keep C channels and Eq. 8 halves the concatenated 2C to C, so the fused width is C; K = 16 channel heads (Fig. 5)
    and cross-task reweighting (Sec. 3.3) as the paper describes its model, where the released ViT-L PASCAL config
    uses K = 1 and the ViT-L NYUD config turns reweighting off (docs/fidelity.md)."""
    return {**kwargs, "fidelity": "paper", "final_dim": kwargs["embed_dim"], "channel_heads": 16,
            "cross_task_reweighting": True}


PRESETS: dict[str, dict[str, Any]] = {
    # released configurations (released-code.md section 3)
    "taskprompter_vit_l_pascal": dict(**VIT_L, **PASCAL, channel_heads=1, decoder_dim=300, final_dim=350,
                                      cross_task_reweighting=True, decode_blocks=hp_levels(24, 4)),
    "taskprompter_vit_b_pascal": dict(**VIT_B, **PASCAL, channel_heads=16, decoder_dim=780, final_dim=1024,
                                      cross_task_reweighting=True, decode_blocks=hp_levels(12, 4)),
    "taskprompter_vit_l_nyud": dict(**VIT_L, **NYUD, channel_heads=16, decoder_dim=768, final_dim=768,
                                    cross_task_reweighting=False, decode_blocks=hp_levels(24, 4)),
    # not released: ViT-B on NYUD with the PASCAL ViT-B decoder widths and the NYUD switches (our choice)
    "taskprompter_vit_b_nyud": dict(**VIT_B, **NYUD, channel_heads=16, decoder_dim=780, final_dim=1024,
                                    cross_task_reweighting=False, decode_blocks=hp_levels(12, 4)),
    # ViT-S of Table 6. Its widths are not published, and no (e, f) reproduces both of Table 6's sizes (132 M,
    # 205 G) with the released structure; e = f = C = 384 (79.4 M, 183.2 G) is our choice (docs/fidelity.md).
    "taskprompter_vit_s_pascal": dict(**VIT_S, **PASCAL, channel_heads=16, decoder_dim=384, final_dim=384,
                                      cross_task_reweighting=True, decode_blocks=hp_levels(12, 4)),
    # CPU models: tests (tiny) and the demo (small)
    "taskprompter_tiny": dict(**VIT_TINY, tasks=PASCAL_CONTEXT_TASKS, img_size=(64, 64), channel_heads=4,
                              decoder_dim=32, final_dim=32, cross_task_reweighting=True,
                              decode_blocks=hp_levels(4, 4),
                              drop_path_rate=0.0),
    "taskprompter_small": dict(embed_dim=128, depth=6, num_heads=4, tasks=PASCAL_CONTEXT_TASKS, img_size=(128, 160),
                               channel_heads=4, decoder_dim=64, final_dim=64, cross_task_reweighting=True,
                               decode_blocks=(2, 4, 6), drop_path_rate=0.05),
    # the benchmark configurations of docs/performance.md (A: ViT-S at 384, C: a small CPU model)
    "taskprompter_bench_a": dict(**VIT_S, tasks=PASCAL_CONTEXT_TASKS, img_size=(384, 384), channel_heads=16,
                                 decoder_dim=192, final_dim=256, cross_task_reweighting=True,
                                 decode_blocks=hp_levels(12, 4)),
    "taskprompter_bench_c": dict(embed_dim=192, depth=12, num_heads=3, tasks=PASCAL_CONTEXT_TASKS,
                                 img_size=(128, 128), channel_heads=4, decoder_dim=64, final_dim=64,
                                 cross_task_reweighting=True, decode_blocks=hp_levels(12, 4)),
}


def _swin(**kwargs: Any) -> dict[str, Any]:
    """A TaskPrompterSwin preset: ``"class"`` names the model class a preset builds (TaskPrompter when absent)."""
    return {"class": "TaskPrompterSwin", "patch_size": 4, **kwargs}


# The Swin TaskPrompter (swin-cityscapes3d.md section 1): the released Swin-B on Cityscapes-3D; a tiny one for tests;
# a small one for CPU training on synthetic street scenes (128x256 inputs). The small sizes keep resize_ratio 1:
# with 0.75 no window of 4 divides every stage grid of a small input.
PRESETS.update({
    "taskprompter_swin_b_cityscapes3d": _swin(
        embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32), window_size=12, tasks=CITYSCAPES3D_TASKS,
        img_size=(1024, 2048), resize_ratio=0.75, decoder_dim=256, final_dim=450, channel_dim=256, channel_heads=1,
        drop_path_rate=0.15, output_scale=0.5),
    "taskprompter_swin_tiny": _swin(
        embed_dim=32, depths=(2, 2, 2, 2), num_heads=(1, 2, 4, 8), window_size=4, tasks={"semseg": 19, "depth": 1},
        img_size=(128, 256), resize_ratio=1.0, decoder_dim=32, final_dim=32, channel_dim=16, drop_path_rate=0.0),
    "taskprompter_swin_small": _swin(
        embed_dim=48, depths=(2, 2, 4, 2), num_heads=(2, 4, 8, 16), window_size=4, tasks={"semseg": 19, "depth": 1},
        img_size=(128, 256), resize_ratio=1.0, decoder_dim=48, final_dim=64, channel_dim=64, drop_path_rate=0.05),
})
for _name in ("taskprompter_vit_l_pascal", "taskprompter_vit_b_pascal", "taskprompter_vit_l_nyud",
              "taskprompter_vit_s_pascal"):
    PRESETS[_name + "_paper"] = _paper(**PRESETS[_name])


def _known_preset(name: str) -> None:
    if name not in PRESETS:
        import difflib

        close = difflib.get_close_matches(name, PRESETS, n=3)
        hint = f"; did you mean {close}?" if close else f"; known presets: {sorted(PRESETS)}"
        raise ConfigError(f"unknown model preset {name!r}{hint}")


def preset_class(name: str) -> type[nn.Module]:
    """The model class a preset builds: its ``"class"`` entry (a MODEL_CLASSES name), TaskPrompter by default."""
    _known_preset(name)
    return MODEL_CLASSES[PRESETS[name].get("class", "TaskPrompter")]


def preset_kwargs(name: str, **overrides: Any) -> dict[str, Any]:
    """The constructor keyword arguments of a preset (its class: ``preset_class``), with overrides applied (None
    values ignored)."""
    _known_preset(name)
    kwargs = {k: v for k, v in PRESETS[name].items() if k != "class"}
    kwargs.update({k: v for k, v in overrides.items() if v is not None})
    return kwargs


def build_model(name: str, tasks: Mapping[str, int] | None = None, img_size: tuple[int, int] | None = None,
                **overrides: Any) -> nn.Module:
    """Build a preset by name (a TaskPrompter, or the class its ``"class"`` entry names); ``tasks``, ``img_size``
    and any constructor keyword override the preset's."""
    model = preset_class(name)(**preset_kwargs(name, tasks=tasks, img_size=img_size, **overrides))
    model.preset = name  # recorded by save_pretrained
    return model


def build_variant(variant: str, preset: str, **overrides: Any) -> nn.Module:
    """A preset built as one of ``VARIANTS`` (config ``model.variant``): the TaskPrompter itself, or "w/ TE"."""
    if variant not in VARIANTS:
        raise ConfigError(f"model.variant '{variant}' is not one of {sorted(VARIANTS)}")
    kwargs = preset_kwargs(preset, **overrides)
    cls = VARIANTS[variant]
    if preset_class(preset) is not TaskPrompter:  # e.g. a Swin preset: "taskprompter" means the preset's own class
        if variant != "taskprompter":
            raise ConfigError(f"model.variant '{variant}' needs a TaskPrompter preset; {preset} builds a "
                              f"{preset_class(preset).__name__} (use model.variant=taskprompter)")
        cls = preset_class(preset)
    try:
        model = cls(**kwargs)
    except TypeError as err:  # an override that is not a constructor argument
        raise ConfigError(f"model.overrides: {err}") from err
    model.preset = preset
    return model


def list_models() -> list[str]:
    """The preset names, sorted."""
    return sorted(PRESETS)


def load_model(path: str | os.PathLike, *, device: str | torch.device = "cpu", **overrides: Any) -> nn.Module:
    """The model saved at ``path`` (model directory, file in it, or run directory -> ``last``), whichever registered
    class it holds, in eval mode. A class name outside ``MODEL_CLASSES`` is refused before anything is called."""
    directory = resolve_model_dir(path)
    name = read_model_config(directory)["class"]
    if name not in MODEL_CLASSES:
        raise CheckpointError(f"{directory} names model class {name!r}, which is not one of the registered model "
                              f"classes {sorted(MODEL_CLASSES)}; refusing to build it")
    return MODEL_CLASSES[name].from_pretrained(directory, device=device, **overrides)


MODELS: dict[str, Callable[..., nn.Module]] = {name: partial(build_model, name) for name in PRESETS}

VARIANTS: dict[str, type[nn.Module]] = {"taskprompter": TaskPrompter, "task_specific_encoders": TaskSpecificEncoders}

# the classes a model directory's config.yaml may name (io.py); add every model class the project defines
MODEL_CLASSES: dict[str, type[nn.Module]] = {
    "TaskPrompter": TaskPrompter,
    "TaskSpecificEncoders": TaskSpecificEncoders,
    "TaskPrompterSwin": TaskPrompterSwin,
}
