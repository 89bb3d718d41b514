"""Released TaskPrompter checkpoints: the key map between their names and ours, and import.

A released checkpoint is ``{'model': DDP state dict ('module.' prefix), 'optimizer', 'scheduler', 'epoch',
'iter_count'}`` (released-code.md section 4). It is read with ``torch.load(weights_only=True)`` -- never by unpickling
arbitrary objects -- and its keys are mapped onto an official-fidelity TaskPrompter with every shape checked.
``taskprompter convert CKPT --preset NAME --out DIR`` saves the result as a model directory (``io.py``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from torch import Tensor

from .build import build_model
from .fidelity import require_official
from .io import load_state_exactly
from .keymap import KeyMap
from .pretrained import read_state_dict, state_dict_of
from .swin import released as swin_released
from .swin.taskprompter_swin import TaskPrompterSwin
from .taskprompter import TaskPrompter

# (our name, released name) for the parts named differently; {l} = level, {t} = task, {i} = block, {p} = the rest.
# Everything else (patch_embed, pos_embed, blocks.{i}.norm1/attn.qkv/attn.proj/norm2/mlp, norm, heads.*) is alike.
KEY_MAP: list[tuple[str, str]] = [
    ("backbone.prompts", "backbone.task_prompts"),
    ("backbone.blocks.{i}.attn.channel_in.{p}", "backbone.blocks.{i}.attn.token_trans.{p}"),
    ("backbone.blocks.{i}.attn.channel_out.{p}", "backbone.blocks.{i}.attn.token_trans1.{p}"),
    ("decoder.levels.{l}.tasks.{t}.spatial_proj.{p}", "backbone.fea_decode_spa.{l}.{t}.0.{p}"),
    ("decoder.levels.{l}.tasks.{t}.channel_proj.{p}", "backbone.fea_decode_chan.{l}.{t}.0.{p}"),
    ("decoder.levels.{l}.tasks.{t}.fuse.{p}", "backbone.fea_fuse.{l}.{t}.{p}"),
    ("decoder.levels.{l}.tasks.{t}.reweight.{p}", "backbone.ctr_attn_conv.{l}.{t}.{p}"),
]


_KEYS = KeyMap(KEY_MAP)


def to_released_key(key: str) -> str:
    return _KEYS.to_theirs(key)


def from_released_key(key: str) -> str:
    return _KEYS.to_ours(key)


def to_released_state_dict(model: TaskPrompter | TaskPrompterSwin) -> dict[str, Tensor]:
    """Our state dict under the released code's names (without the 'module.' prefix)."""
    if isinstance(model, TaskPrompterSwin):
        return swin_released.to_released_state_dict(model)
    return {to_released_key(k): v for k, v in model.state_dict().items()}


def read_checkpoint(path: str | os.PathLike) -> dict[str, Tensor]:
    """Read a released checkpoint's model state (``{'model': ...}`` wrapper and ``module.`` prefix accepted)."""
    return read_state_dict(path, what="checkpoint")


def load_official_checkpoint(model: TaskPrompter | TaskPrompterSwin,
                             checkpoint: str | os.PathLike | Mapping[str, Tensor]) -> list[str] | None:
    """Load a released TaskPrompter checkpoint (path or state dict) into an official-fidelity ``model``.

    Raises CheckpointError naming the missing, unexpected and mis-shaped keys (e.g. a ViT-B checkpoint into a ViT-L
    model, or a model built for other tasks or another input size). Settings without parameters -- the channel-head
    count K and which blocks are decoded -- cannot be read from the weights: build the model from the released
    preset (``build_model("taskprompter_vit_b_pascal")``, or ``taskprompter convert --preset``).

    A TaskPrompterSwin takes a released Swin-B Cityscapes-3D checkpoint (``swin/released.py``); it returns the keys
    left unused (the 3-D detection head's).
    """
    if isinstance(model, TaskPrompterSwin):
        return swin_released.load_official_checkpoint(model, checkpoint)
    require_official(model.options)
    state = state_dict_of(checkpoint, what="checkpoint")
    state = {from_released_key(k): v for k, v in state.items()}
    own = model.state_dict()
    prompts = state.get("backbone.prompts")
    if prompts is not None and "backbone.prompts" in own and prompts.numel() == own["backbone.prompts"].numel():
        state["backbone.prompts"] = prompts.reshape(own["backbone.prompts"].shape)  # (1, T, C) or (T, C)
    load_state_exactly(model, state, source="released checkpoint")


def from_released(checkpoint: str | os.PathLike | Mapping[str, Tensor], preset: str) -> TaskPrompter | TaskPrompterSwin:
    """The official-fidelity ``preset`` with a released checkpoint's weights (what `taskprompter convert` saves)."""
    model = build_model(preset, fidelity="official")
    load_official_checkpoint(model, checkpoint)
    return model
