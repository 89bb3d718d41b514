"""Released Swin-B TaskPrompter (Cityscapes-3D) checkpoints: the key map between their names and ours, and import.

A released checkpoint is ``{'model': DDP state dict ('module.' prefix), ...}`` read with ``torch.load(weights_only=
True)``. The backbone's names are ours (``backbone.task_prompts``, ``backbone.patch_embed.*``,
``backbone.layers.{s}.blocks.{j}.*``, ``backbone.layers.{s}.downsample.*``, ``backbone.norm.*``); the decoder's and
the heads' are translated by ``KEY_MAP``. The derived buffers ``relative_position_index`` and ``attn_mask`` that
the released model saves are compared with the model's (a difference means another window size or grid) and
dropped. The detection head's keys (``heads.3ddet.*``) are the released FCOS3D head's own names (`Detector3D`); a
model without the 3ddet task reports them as unused.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping

import torch
from torch import Tensor

from ...errors import CheckpointError
from ..fidelity import require_official
from ..io import load_state_exactly
from ..keymap import KeyMap
from ..pretrained import state_dict_of
from .fidelity import SWIN_FIDELITY_OPTIONS
from .taskprompter_swin import TaskPrompterSwin

# DEConvHead: our name -> the released name. UNVERIFIED: the released DEConvHead's parameter names are not in the
# snapshot we read; ours mirror the released ConvHead's (mt_proj.{i}, linear_pred). This is the one table to change.
DECONV_HEAD_KEYS: dict[str, str] = {
    "mt_proj.0": "mt_proj.0",  # ConvTranspose2d(f -> f/2, 2x2, stride 2)
    "mt_proj.1": "mt_proj.1",  # BatchNorm2d
    "mt_proj.3": "mt_proj.3",  # Conv3x3
    "mt_proj.4": "mt_proj.4",  # BatchNorm2d
    "linear_pred": "linear_pred",  # Conv1x1 -> classes
}

# (our name, released name) for the parts named differently; {l} = level, {t} = task, {p} = the rest.
KEY_MAP: list[tuple[str, str]] = [
    ("decoder.levels.{l}.tasks.{t}.spatial_proj.{p}", "backbone.fea_decode_spa.{l}.{t}.0.{p}"),
    ("decoder.levels.{l}.tasks.{t}.channel_proj.{p}", "backbone.fea_decode_chan.{l}.{t}.0.{p}"),
    ("decoder.levels.{l}.tasks.{t}.fuse.{p}", "backbone.fea_fuse.{l}.{t}.{p}"),
    ("decoder.multi_scale_fuse.{t}.{p}", "backbone.multi_scale_fuse.{t}.{p}"),
    *((f"heads.{{t}}.{ours}.{{p}}", f"heads.{{t}}.{released}.{{p}}") for ours, released in DECONV_HEAD_KEYS.items()),
]
BUFFERS = ("relative_position_index", "attn_mask")  # derived buffers the released model saves
DETECTION_HEAD = "heads.3ddet."  # the detector's keys: loaded as they are; unused by a model without 3ddet


_KEYS = KeyMap(KEY_MAP)


def to_released_key(key: str) -> str:
    return _KEYS.to_theirs(key)


def from_released_key(key: str) -> str:
    return _KEYS.to_ours(key)


def released_buffers(model: TaskPrompterSwin) -> dict[str, Tensor]:
    """The derived buffers under the names the released model saves them (``attn_mask`` of shifted blocks only)."""
    return {k: v for k, v in model.named_buffers() if k.rpartition(".")[2] in BUFFERS}


def to_released_state_dict(model: TaskPrompterSwin) -> dict[str, Tensor]:
    """Our state dict under the released code's names, with its derived buffers (no 'module.' prefix)."""
    state = {to_released_key(k): v for k, v in model.state_dict().items()}
    return {**state, **released_buffers(model)}


def _checked_buffers(model: TaskPrompterSwin, state: dict[str, Tensor]) -> dict[str, Tensor]:
    """``state`` without its derived buffers, each compared with the model's; a difference raises."""
    own = released_buffers(model)
    problems = []
    for key in [k for k in state if k.rpartition(".")[2] in BUFFERS]:
        value = state.pop(key)
        ours = own.get(key)
        if ours is None:
            problems.append(f"{key} (this model has no such buffer)")
        elif ours.shape != value.shape or not torch.equal(ours.to(value.dtype), value):
            problems.append(f"{key} {tuple(value.shape)} in file vs {tuple(ours.shape)} in model")
    if problems:
        more = f" (+{len(problems) - 8} more)" if len(problems) > 8 else ""
        raise CheckpointError("released checkpoint was built for another window size or input size: its buffers "
                              f"differ from the model's: {'; '.join(problems[:8])}{more}")
    return state


def load_official_checkpoint(model: TaskPrompterSwin, checkpoint: str | os.PathLike | Mapping[str, Tensor]
                             ) -> list[str]:
    """Load a released Swin TaskPrompter checkpoint (path or state dict) into an official-fidelity ``model``; return
    the checkpoint keys left unused (the detection head's when the model has no 3ddet task, with a warning). A
    detector is switched to ``euler="faithful"``: the released weights regress the angles in that order.

    Raises CheckpointError naming the missing, unexpected and mis-shaped keys, and derived buffers that differ.
    """
    require_official(model.options, SWIN_FIDELITY_OPTIONS)
    state = state_dict_of(checkpoint, what="checkpoint")
    unused = [] if "3ddet" in model.heads else sorted(k for k in state if k.startswith(DETECTION_HEAD))
    if unused:
        warnings.warn(f"{len(unused)} keys of the 3-D detection head ({DETECTION_HEAD}*) are not loaded: this "
                      "model has no 3ddet task; every other key was loaded and checked", stacklevel=2)
    state = _checked_buffers(model, {k: v for k, v in state.items() if k not in unused})
    state = {from_released_key(k): v for k, v in state.items()}
    own = model.state_dict()
    prompts = state.get("backbone.task_prompts")
    if prompts is not None and prompts.numel() == own["backbone.task_prompts"].numel():
        state["backbone.task_prompts"] = prompts.reshape(own["backbone.task_prompts"].shape)  # (1, T, C) or (T, C)
    load_state_exactly(model, state, source="released checkpoint")
    detector = model.heads["3ddet"] if "3ddet" in model.heads else None
    if detector is not None and detector.config.euler != "faithful":
        detector.configure(euler="faithful")
        model.init_kwargs["detection"] = {**(model.init_kwargs.get("detection") or {}), "euler": "faithful"}
        warnings.warn("the detector now decodes with euler='faithful' (was 'fixed'): the released weights regress "
                      "the angles of the released quaternion order (docs/fidelity.md)", stacklevel=2)
    return unused
