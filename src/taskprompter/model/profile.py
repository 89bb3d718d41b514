"""Parameters and multiply-accumulates (MACs) per component, counted on the meta device (no weights allocated).

The count is the one that reproduces the paper's Table 8 ("FLOPs" there are MACs): every Linear and Conv (patch
embedding; qkv, proj and MLP over all T+N tokens; the per-block prompt Linears; the decoder convs at every level and
task; the heads at 1/4 resolution), plus the attention matrix products -- QK^T and A.V over the T+N tokens, and the
channel QK^T and A.V (the A.V that the released code computes and discards included) -- and nothing elementwise
(norms, softmax, activations, gating, upsampling, the tiny reweighting convs). The position table's unused cls slot is
counted in the parameters, as the paper does. Verb: ``taskprompter profile --preset NAME [--tasks a,b] [--json]``.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError
from .build import build_variant, preset_class, preset_kwargs
from .prompt_block import SpatialChannelPromptAttention
from .swin.profile import profile_swin
from .swin.taskprompter_swin import TaskPrompterSwin
from .taskprompter import TaskPrompter


def _component(name: str) -> str:
    """Group a module/parameter name into a reporting component."""
    if name.startswith("backbone.blocks."):
        if ".attn.channel_" in name:
            return "encoder.channel_prompt_learning"
        if ".attn." in name:
            return "encoder.spatial_attention"
        if ".mlp." in name:
            return "encoder.mlp"
        return "encoder.norms"
    if name.startswith("backbone.patch_embed"):
        return "encoder.patch_embed"
    if name.startswith("backbone."):
        return "encoder." + name.split(".")[1]  # pos_embed, prompts, norm
    if name.startswith("decoder.levels."):
        return "decoder.level" + name.split(".")[2]
    return name.split(".")[0]


def profile_model(model_factory, batch: int = 1) -> dict[str, Any]:
    """Count parameters and MACs of ``model_factory()`` built on the meta device, for one forward of ``batch``."""
    with torch.device("meta"):
        model: TaskPrompter = model_factory()
    if isinstance(model, TaskPrompterSwin):  # its own components and attention (swin/profile.py)
        return profile_swin(model, batch)
    model.eval()
    model.low_res_head_conv = False  # count the heads' conv where the released structure runs it, at 1/4 resolution
    params: dict[str, int] = defaultdict(int)
    for name, p in model.named_parameters():
        params[_component(name)] += p.numel()
    macs: dict[str, int] = defaultdict(int)
    components = {module: _component(name + ".") for name, module in model.named_modules()}

    def count(m: nn.Module, inp: tuple, out) -> None:
        if isinstance(m, nn.Linear):
            macs[components[m]] += inp[0].numel() // m.in_features * m.in_features * m.out_features
        elif isinstance(m, nn.Conv2d):
            macs[components[m]] += out.numel() * m.kernel_size[0] * m.kernel_size[1] * m.in_channels // m.groups
        else:  # SpatialChannelPromptAttention: the attention matrix products
            B, L, C = inp[0].shape  # z (B, T+N, C)
            n_spatial = L if m.spatial_prompts else L - m.num_tasks
            macs[components[m]] += 2 * B * n_spatial * n_spatial * C  # QK^T and A.V
            if m.channel_prompts:  # channel QK^T and A.V (T x C x N each)
                macs["encoder.channel_prompt_learning"] += 2 * B * m.num_tasks * C * (L - m.num_tasks)

    counted = (nn.Linear, nn.Conv2d, SpatialChannelPromptAttention)
    hooks = [module.register_forward_hook(count) for name, module in model.named_modules()
             if isinstance(module, counted) and ".reweight" not in name]  # reweighting convs are not counted
    with torch.no_grad():
        model(torch.empty(batch, 3, *model.img_size, device="meta"))
    for h in hooks:
        h.remove()
    return {
        "params": int(sum(params.values())),
        "macs": int(sum(macs.values())),
        "params_by_component": dict(sorted(params.items())),
        "macs_by_component": dict(sorted(macs.items())),
        "img_size": list(model.img_size),
        "tasks": list(model.task_names),
    }


def profile_preset(preset: str, *, tasks: Sequence[str] | None = None,
                   img_size: tuple[int, int] | None = None) -> dict[str, Any]:
    """``profile_model`` of a preset, optionally on a subset of its tasks (in the order given) or another input
    size; the result also names the preset."""
    kwargs = preset_kwargs(preset, img_size=img_size)
    if tasks:
        unknown = [t for t in tasks if t not in kwargs["tasks"]]
        if unknown:
            raise ConfigError(f"tasks {unknown} are not in preset {preset} (it has {list(kwargs['tasks'])})")
        kwargs["tasks"] = {t: kwargs["tasks"][t] for t in tasks}
    cls = preset_class(preset)
    return {**profile_model(lambda: cls(**kwargs)), "preset": preset}


def count_parameters(preset: str) -> int:
    """Parameters of a preset, counted on the meta device (nothing allocated)."""
    with torch.device("meta"):
        model = build_variant("taskprompter", preset)
    return sum(p.numel() for p in model.parameters())
