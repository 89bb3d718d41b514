"""Parameters and multiply-accumulates of a TaskPrompterSwin per component, on the meta device (no weights
allocated; ``model/profile.py::profile_model`` dispatches here).

Counted as the released code computes them: every Linear, Conv2d and ConvTranspose2d; the window attention's
QK^T and A.V over the T+M tokens of every window; the channel attention's q.k^T and, where the released code
computes it (every block, the last one's dead result included), attn.v. Nothing elementwise (norms, softmax,
gating, resizing). Components: ``encoder.patch_embed``, ``encoder.task_prompts``, ``encoder.stage{s}`` (blocks and
PatchMerging, without chan_kv), ``encoder.chan_kv`` (every block's Linear(h*w -> 2c), 138 M of the released
model), ``encoder.norm``, ``decoder.level{l}``, ``decoder.multi_scale_fuse``, ``heads.{task}``.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import torch
from torch import nn

from .block import SwinPromptBlock, WindowPromptAttention
from .taskprompter_swin import TaskPrompterSwin


def component(name: str) -> str:
    """The reporting component of a module or parameter name."""
    parts = name.split(".")
    if parts[0] == "backbone":
        if parts[1] == "layers":
            return "encoder.chan_kv" if ".chan_kv" in name else f"encoder.stage{parts[2]}"
        return "encoder." + parts[1]  # patch_embed, task_prompts, norm
    if parts[0] == "decoder":
        return "decoder.multi_scale_fuse" if parts[1] == "multi_scale_fuse" else f"decoder.level{parts[2]}"
    return ".".join(parts[:2])  # heads.{task}


def profile_swin(model: TaskPrompterSwin, batch: int = 1) -> dict[str, Any]:
    """Count ``model``'s parameters and the MACs of one forward of ``batch`` images (``model`` may live on meta)."""
    model.eval()
    params: dict[str, int] = defaultdict(int)
    for name, p in model.named_parameters():
        params[component(name)] += p.numel()
    macs: dict[str, int] = defaultdict(int)
    names = {module: name for name, module in model.named_modules()}

    def count(m: nn.Module, inp: tuple, out) -> None:
        where = component(names[m])
        if isinstance(m, nn.Linear):
            macs[where] += inp[0].numel() // m.in_features * m.in_features * m.out_features
        elif isinstance(m, nn.ConvTranspose2d):  # every input pixel meets every output channel and tap
            macs[where] += inp[0].numel() * m.out_channels * m.kernel_size[0] * m.kernel_size[1] // m.groups
        elif isinstance(m, nn.Conv2d):
            macs[where] += out.numel() * m.kernel_size[0] * m.kernel_size[1] * m.in_channels // m.groups
        elif isinstance(m, WindowPromptAttention):  # x (B*nW, M, C), prompts (B, T, C): QK^T and A.V per window
            windows, M, C = inp[0].shape
            L = M + m.num_tasks
            macs[where] += 2 * windows * L * L * C
        elif isinstance(m, SwinPromptBlock) and m.has_channel:  # channel attention: q.k^T, attn.v (T x C x c)
            B, _, C = inp[0].shape
            need_maps = len(inp) > 2 and bool(inp[2])
            # released: both in every block (the last one's attn.v is dead); maps only (paper): q.k^T where read
            products = 2 if m.chan_kv.out_features == 2 * m.channel_dim else int(need_maps)
            macs[where] += products * B * m.num_tasks * C * m.channel_dim

    counted = (nn.Linear, nn.Conv2d, nn.ConvTranspose2d, WindowPromptAttention, SwinPromptBlock)
    hooks = [module.register_forward_hook(count) for module in model.modules() if isinstance(module, counted)]
    try:
        with torch.no_grad():
            model(torch.empty(batch, 3, *model.img_size, device=next(model.parameters()).device))
    finally:
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
