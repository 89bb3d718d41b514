"""ImageNet Swin weights from a local file, in either layout (swin-cityscapes3d.md section 1.6).

* Microsoft's release (``swin_base_patch4_window12_384_22kto1k.pth``, what the released code loads): PatchMerging
  at the END of stage i (``layers.{i}.downsample.*``), the buffers ``relative_position_index`` / ``attn_mask``, and
  the classifier ``head.*``. These are our names.
* timm's current layout (``swin_base_patch4_window12_384.ms_in22k_ft_in1k``): PatchMerging at the START of stage
  i+1 (timm ``layers.{i+1}.downsample`` = Microsoft ``layers.{i}.downsample``), the classifier ``head.fc.*``, and
  possibly ``layers_{i}`` spellings.

Classifier and buffers are dropped, every shape checked, and problems listed by key name. Relative-position tables
of another window size are resized bicubically (align_corners False) over their (2W-1) x (2W-1) grid, as timm
does. Nothing is downloaded.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping

import torch.nn.functional as F
from torch import Tensor, nn

from ...errors import CheckpointError
from ..pretrained import read_state_dict
from .encoder import PromptSwin

DROPPED = re.compile(r"^head\.|(^|\.)relative_position_index$|(^|\.)attn_mask$")
# backbone parameters no ImageNet Swin has: the prompts and the channel/map layers of the blocks and mergings
PROMPT_PARTS = re.compile(r"^task_prompts$|\.(chan_q|chan_kv|token_trans|token_trans1|chan_proj|process_chan_attn|"
                          r"task_prompts_up|spa_attn_ds)\.")


def _limit(keys: list[str], n: int = 10) -> str:
    return ", ".join(keys[:n]) + (f" (+{len(keys) - n} more)" if len(keys) > n else "")


def resize_relative_position_table(table: Tensor, window: int) -> Tensor:
    """((2W0-1)^2, nH) -> ((2W-1)^2, nH), bicubic over the square offset grid."""
    side0 = math.isqrt(table.shape[0])
    side = 2 * window - 1
    if side0 * side0 != table.shape[0]:
        raise CheckpointError(f"relative-position table of {table.shape[0]} rows is not a square grid")
    if side0 == side:
        return table
    grid = table.T.reshape(1, -1, side0, side0).float()  # (1, nH, 2W0-1, 2W0-1)
    grid = F.interpolate(grid, size=(side, side), mode="bicubic", align_corners=False)
    return grid.reshape(-1, side * side).T.to(table.dtype)  # ((2W-1)^2, nH)


def to_microsoft_layout(state: Mapping[str, Tensor], num_stages: int) -> dict[str, Tensor]:
    """A Swin state dict in Microsoft's layout: ``layers_{i}`` spellings normalised, timm's downsample shifted
    back from stage i+1 to stage i. The layout is read from which stages hold a downsample."""
    state = {re.sub(r"^layers_(\d+)\.", r"layers.\1.", k): v for k, v in state.items()}
    stages = sorted({int(m.group(1)) for k in state if (m := re.match(r"layers\.(\d+)\.downsample\.", k))})
    if stages == list(range(num_stages - 1)):
        return state
    if stages == list(range(1, num_stages)):  # timm: shift back by one stage
        return {re.sub(r"^layers\.(\d+)\.downsample\.", lambda m: f"layers.{int(m.group(1)) - 1}.downsample.", k): v
                for k, v in state.items()}
    raise CheckpointError(f"Swin weights have PatchMerging (downsample) layers in stages {stages}; a "
                          f"{num_stages}-stage Swin has them in stages {list(range(num_stages - 1))} (Microsoft) or "
                          f"{list(range(1, num_stages))} (timm)")


def load_swin_weights(model_or_backbone: nn.Module, path_or_state: str | os.PathLike | Mapping[str, Tensor]
                      ) -> list[str]:
    """Load ImageNet Swin weights into a TaskPrompterSwin (or its ``backbone``); return the backbone keys left at
    their initialisation (the prompts and the channel/map layers, which no ImageNet Swin has).

    Every Swin key of the backbone must be provided with its shape; unknown keys, wrong shapes and missing Swin keys
    raise CheckpointError naming them, and nothing is loaded then.
    """
    backbone = getattr(model_or_backbone, "backbone", model_or_backbone)
    if not isinstance(backbone, PromptSwin):
        raise CheckpointError(f"load_swin_weights needs a TaskPrompterSwin or its backbone, not a "
                              f"{type(model_or_backbone).__name__}")
    if isinstance(path_or_state, Mapping):
        state = path_or_state["model"] if isinstance(path_or_state.get("model"), Mapping) else path_or_state
        state = {k.removeprefix("module."): v for k, v in state.items()}
    else:
        state = read_state_dict(path_or_state, what="Swin weights file")
    state = {k: v for k, v in state.items() if not DROPPED.search(k)}
    state = to_microsoft_layout(state, len(backbone.specs))
    own = backbone.state_dict()
    for key in [k for k in state if k.endswith("relative_position_bias_table") and k in own]:
        stage = int(key.split(".")[1])
        state[key] = resize_relative_position_table(state[key], backbone.specs[stage].window)
    unexpected = sorted(set(state) - set(own))
    if unexpected:
        raise CheckpointError(f"Swin weights have keys the backbone lacks: {_limit(unexpected)}")
    shapes = [f"{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}" for k, v in state.items()
              if v.shape != own[k].shape]
    if shapes:
        raise CheckpointError(f"Swin weights have the wrong shapes: {_limit(shapes)}")
    missing = sorted(set(own) - set(state))
    swin_missing = [k for k in missing if not PROMPT_PARTS.search(k)]
    if swin_missing:
        raise CheckpointError(f"Swin weights lack backbone keys: {_limit(swin_missing)}")
    backbone.load_state_dict(state, strict=False)
    return missing
