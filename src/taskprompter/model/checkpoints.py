"""Released TaskPrompter checkpoints: key mapping, loading, and conversion to safetensors + config.yaml.

A released checkpoint is ``{'model': DDP state dict ('module.' prefix), 'optimizer', 'scheduler', 'epoch',
'iter_count'}`` (released-code.md section 4). It is read with ``torch.load(weights_only=True)`` -- never by unpickling
arbitrary objects -- and its keys are mapped onto an official-fidelity TaskPrompter with every shape checked.
Verb: ``taskprompter convert CKPT --preset NAME --out DIR`` writes ``model.safetensors`` and ``config.yaml``.
"""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Mapping
from pathlib import Path

from torch import Tensor

from ..errors import CheckpointError
from .backbone import read_state_dict
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


def _compile(template: str) -> re.Pattern:
    rx = re.escape(template)
    for name, part in (("i", r"\d+"), ("l", r"\d+"), ("t", r"\w+"), ("p", r".+")):
        rx = rx.replace(re.escape("{" + name + "}"), f"(?P<{name}>{part})")
    return re.compile(rx + "$")


_OURS_TO_RELEASED = [(_compile(ours), rel) for ours, rel in KEY_MAP]
_RELEASED_TO_OURS = [(_compile(rel), ours) for ours, rel in KEY_MAP]


def _rename(key: str, table: list[tuple[re.Pattern, str]]) -> str:
    for rx, template in table:
        m = rx.match(key)
        if m:
            return template.format(**m.groupdict())
    return key


def to_released_key(key: str) -> str:
    return _rename(key, _OURS_TO_RELEASED)


def from_released_key(key: str) -> str:
    return _rename(key, _RELEASED_TO_OURS)


def to_released_state_dict(model: TaskPrompter) -> dict[str, Tensor]:
    """Our state dict under the released code's names (without the 'module.' prefix)."""
    return {to_released_key(k): v for k, v in model.state_dict().items()}


def read_checkpoint(path: str | os.PathLike) -> dict[str, Tensor]:
    """Read a released checkpoint's model state (``{'model': ...}`` wrapper and ``module.`` prefix accepted)."""
    return read_state_dict(path, what="checkpoint")


def load_official_checkpoint(model: TaskPrompter, checkpoint: str | os.PathLike | Mapping[str, Tensor]) -> None:
    """Load a released TaskPrompter checkpoint (path or state dict) into an official-fidelity ``model``.

    Raises CheckpointError naming the missing, unexpected and mis-shaped keys (e.g. a ViT-B checkpoint into a ViT-L
    model, or a model built for other tasks or another input size). Settings without parameters -- the channel-head
    count K and which blocks are decoded -- cannot be read from the weights: build the model from the released
    preset (``build_model("taskprompter_vit_b_pascal")``, or ``taskprompter convert --preset``).
    """
    from .fidelity import FIDELITY_OPTIONS

    wrong = {k: v for k, v in model.options.items() if v != FIDELITY_OPTIONS[k].official}
    if wrong:
        raise CheckpointError(f"released checkpoints need an official-fidelity model; this model sets {wrong}")
    if isinstance(checkpoint, Mapping):
        state = checkpoint["model"] if isinstance(checkpoint.get("model"), Mapping) else checkpoint
        state = {k.removeprefix("module."): v for k, v in state.items()}
    else:
        state = read_checkpoint(checkpoint)
    state = {from_released_key(k): v for k, v in state.items()}
    own = model.state_dict()
    prompts = state.get("backbone.prompts")
    if prompts is not None and "backbone.prompts" in own and prompts.numel() == own["backbone.prompts"].numel():
        state["backbone.prompts"] = prompts.reshape(own["backbone.prompts"].shape)  # (1, T, C) or (T, C)
    check_state_dict(own, state, what="released checkpoint")
    model.load_state_dict(state)


def check_state_dict(own: Mapping[str, Tensor], state: Mapping[str, Tensor], *, what: str) -> None:
    """Raise CheckpointError naming the keys missing from, unexpected in, or mis-shaped in ``state``."""
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [f"{k}: {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
              for k in sorted(set(own) & set(state)) if tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shapes:
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", shapes)):
            if keys:
                parts.append(f"{label} ({len(keys)}): " + ", ".join(keys[:8]) + (" ..." if len(keys) > 8 else ""))
        raise CheckpointError(f"{what} does not match the model -- " + "; ".join(parts))


def save_model_dir(model: TaskPrompter, out_dir: str | os.PathLike, *, preset: str | None = None) -> Path:
    """Write ``model.safetensors`` and ``config.yaml`` (the model's constructor arguments) into ``out_dir``."""
    import yaml
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    tmp = out / "model.safetensors.tmp"
    save_file(state, str(tmp), metadata={"format": "pt", "library": "taskprompter"})
    os.replace(tmp, out / "model.safetensors")
    kwargs = dict(model.init_kwargs)
    (out / "config.yaml").write_text(yaml.safe_dump({"preset": preset, "model": kwargs}, sort_keys=False))
    return out


def load_model_dir(path: str | os.PathLike, **overrides) -> TaskPrompter:
    """Rebuild a model written by ``save_model_dir`` (``overrides`` change constructor arguments, e.g.
    ``attention_impl``), and load its weights with every key and shape checked."""
    import yaml
    from safetensors.torch import load_file

    path = Path(path)
    cfg_path, weights = path / "config.yaml", path / "model.safetensors"
    for f in (cfg_path, weights):
        if not f.is_file():
            raise CheckpointError(f"model directory {path} lacks {f.name}")
    cfg = yaml.safe_load(cfg_path.read_text()) or {}
    kwargs = {**cfg.get("model", {}), **overrides}
    model = TaskPrompter(**kwargs)
    try:
        state = load_file(str(weights))
    except Exception as err:
        raise CheckpointError(f"cannot read {weights}: {err}") from err
    check_state_dict(model.state_dict(), state, what=str(weights))
    model.load_state_dict(state)
    return model


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="released checkpoint (.pth / .pth.tar)")
    parser.add_argument("--preset", required=True, help="its preset, e.g. taskprompter_vit_l_pascal")
    parser.add_argument("--out", required=True, help="output directory (model.safetensors + config.yaml)")


def run(args: argparse.Namespace) -> int:
    from .build import build_model

    model = build_model(args.preset, fidelity="official")
    load_official_checkpoint(model, args.checkpoint)
    out = save_model_dir(model, args.out, preset=args.preset)
    print(f"wrote {out / 'model.safetensors'} and {out / 'config.yaml'}")
    return 0
