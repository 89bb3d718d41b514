"""Pretrained ViT weights from local files: timm state dicts (``.safetensors``, ``.pth``) and Google augreg ``.npz``.

Nothing is downloaded: the user points at a file. Names are timm's (``layers.py``), the position table is resized to
the model's token grid, and every key and shape is checked before anything is loaded.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import numpy as np
import torch
from torch import Tensor, nn

from ..errors import CheckpointError
from .layers import resize_pos_embed

# Keys of a timm ViT that TaskPrompter has no use for: the classifier, cls token, and pooling norms.
_DROPPED_PREFIXES = ("head.", "head_drop", "cls_token", "fc_norm.", "pre_logits", "reg_token", "dist_token")


def _npz_to_timm(npz: Mapping[str, np.ndarray]) -> dict[str, Tensor]:
    """Convert the big_vision / augreg ``.npz`` layout (Flax names, HWIO kernels) to timm-named tensors."""

    def t(key: str) -> Tensor:
        if key not in npz:
            raise CheckpointError(f"npz weights lack '{key}'")
        return torch.from_numpy(np.asarray(npz[key], dtype=np.float32))

    out: dict[str, Tensor] = {}
    out["patch_embed.proj.weight"] = t("embedding/kernel").permute(3, 2, 0, 1)  # HWIO -> OIHW
    out["patch_embed.proj.bias"] = t("embedding/bias")
    out["pos_embed"] = t("Transformer/posembed_input/pos_embedding")
    if "cls" in npz:
        out["cls_token"] = t("cls")
    out["norm.weight"] = t("Transformer/encoder_norm/scale")
    out["norm.bias"] = t("Transformer/encoder_norm/bias")
    i = 0
    while f"Transformer/encoderblock_{i}/LayerNorm_0/scale" in npz:
        p, b = f"Transformer/encoderblock_{i}/", f"blocks.{i}."
        mha = p + "MultiHeadDotProductAttention_1/"
        out[b + "norm1.weight"], out[b + "norm1.bias"] = t(p + "LayerNorm_0/scale"), t(p + "LayerNorm_0/bias")
        out[b + "norm2.weight"], out[b + "norm2.bias"] = t(p + "LayerNorm_2/scale"), t(p + "LayerNorm_2/bias")
        # query/key/value kernels are (C, nH, d) -> timm's fused qkv weight (3C, C)
        out[b + "attn.qkv.weight"] = torch.cat([t(mha + f"{n}/kernel").flatten(1).T for n in ("query", "key", "value")])
        out[b + "attn.qkv.bias"] = torch.cat([t(mha + f"{n}/bias").flatten() for n in ("query", "key", "value")])
        out[b + "attn.proj.weight"] = t(mha + "out/kernel").flatten(0, 1).T  # (nH, d, C) -> (C, C)
        out[b + "attn.proj.bias"] = t(mha + "out/bias")
        mlp = p + "MlpBlock_3/" if p + "MlpBlock_3/Dense_0/kernel" in npz else p + "MlpBlock_1/"
        for j in (0, 1):
            out[b + f"mlp.fc{j + 1}.weight"] = t(mlp + f"Dense_{j}/kernel").T
            out[b + f"mlp.fc{j + 1}.bias"] = t(mlp + f"Dense_{j}/bias")
        i += 1
    if i == 0:
        raise CheckpointError("npz weights hold no 'Transformer/encoderblock_*' entries: not a ViT checkpoint")
    return out


def read_state_dict(path: str | os.PathLike, *, what: str = "weights file") -> dict[str, Tensor]:
    """Read a state dict from a local ``.safetensors``, ``.pth``/``.pt``/``.bin``/``.pth.tar`` or augreg ``.npz``.

    ``.pth`` files are read with ``weights_only=True`` (never unpickling arbitrary objects); a ``{'model': ...}`` or
    ``{'state_dict': ...}`` wrapper and a DDP ``module.`` prefix are accepted; ``.npz`` files are converted to timm
    names. Problems raise ``CheckpointError`` naming the file (``what`` says what it was meant to be).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"{what} not found: {path}")
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            state = load_file(path)
        elif path.endswith(".npz"):
            with np.load(path) as npz:
                state = _npz_to_timm(dict(npz))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except CheckpointError:
        raise
    except Exception as err:  # corrupt or truncated file, or pickled objects that weights_only refuses
        raise CheckpointError(f"cannot read {what} {path} (corrupt, truncated, or holding non-tensor objects that "
                              f"weights_only loading refuses): {err}") from err
    if not isinstance(state, Mapping):
        raise CheckpointError(f"{what} {path} holds a {type(state).__name__}, not a state dict")
    return _unwrap(state)


def state_dict_of(source: str | os.PathLike | Mapping[str, Tensor], *, what: str) -> dict[str, Tensor]:
    """A state dict given as a file (``read_state_dict``) or already in memory (wrapper and ``module.`` prefix
    removed alike)."""
    return _unwrap(source) if isinstance(source, Mapping) else read_state_dict(source, what=what)


def read_vit_state_dict(path: str | os.PathLike) -> dict[str, Tensor]:
    """A pretrained ViT's state dict in timm names (see ``read_state_dict``)."""
    return read_state_dict(path, what="weights file")


def _unwrap(state: Mapping) -> dict[str, Tensor]:
    """Accept a ``{'model': ...}`` / ``{'state_dict': ...}`` wrapper and a DDP ``module.`` prefix."""
    for wrapper in ("model", "state_dict"):
        if isinstance(state, Mapping) and wrapper in state and isinstance(state[wrapper], Mapping):
            state = state[wrapper]
    return {k.removeprefix("module."): v for k, v in state.items()}


def load_vit_weights(backbone: nn.Module, weights: str | os.PathLike | Mapping[str, Tensor]) -> list[str]:
    """Load pretrained ViT weights (timm names) into ``backbone`` and return the backbone keys left untouched.

    The position table is resized to the backbone's grid; classifier, cls token and pooling norms are dropped; every
    other key must exist in the backbone with the same shape, and every ViT key of the backbone must be provided
    (only the task prompts, and the channel-prompt layers that ImageNet weights cannot have, may stay missing).
    Problems raise ``CheckpointError`` listing the keys by name.
    """
    state = read_vit_state_dict(weights) if not isinstance(weights, Mapping) else _unwrap(weights)
    state = {k: v for k, v in state.items() if not k.startswith(_DROPPED_PREFIXES)}
    own = backbone.state_dict()
    if "pos_embed" in state and "pos_embed" in own:
        state["pos_embed"] = resize_pos_embed(state["pos_embed"], backbone.grid)
    unexpected = sorted(set(state) - set(own))
    if unexpected:
        raise CheckpointError(f"ViT weights have keys the backbone lacks: {unexpected[:10]}"
                              + (f" (+{len(unexpected) - 10} more)" if len(unexpected) > 10 else ""))
    mismatched = [f"{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}"
                  for k, v in state.items() if v.shape != own[k].shape]
    if mismatched:
        raise CheckpointError("ViT weights have the wrong shapes: " + "; ".join(mismatched[:10]))
    missing = sorted(set(own) - set(state))
    vit_missing = [k for k in missing if not _is_prompt_key(k)]
    if vit_missing:
        raise CheckpointError(f"ViT weights lack backbone keys: {vit_missing[:10]}"
                              + (f" (+{len(vit_missing) - 10} more)" if len(vit_missing) > 10 else ""))
    backbone.load_state_dict(state, strict=False)
    return missing


def _is_prompt_key(key: str) -> bool:
    """Backbone parameters that no ImageNet ViT has: the task prompts and the channel-prompt layers."""
    return key == "prompts" or ".attn.channel_" in key
