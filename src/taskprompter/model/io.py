"""One model directory format, read and written the way timm and Hugging Face users expect.

    model.save_pretrained("models/mine")                 # model.safetensors + config.yaml
    model = TaskPrompter.from_pretrained("models/mine")  # eval mode, every key and shape checked
    model = taskprompter.load_model("runs/x")            # whichever registered class the directory holds

A model directory holds

    model.safetensors   weights and buffers (BatchNorm statistics included)
    config.yaml         {format: taskprompter-model-v1, class: TaskPrompter, preset: NAME or null,
                         model: {the constructor's keyword arguments}}

`taskprompter convert` writes one, every training checkpoint (``<run>/last``, ``<run>/best``) is one (with its
training state beside it, ``engine/checkpoint.py``), and `eval`, `predict`, `export` and `Predictor` read one.

Security: ``class`` is a *name*, looked up in a registry of the project's ``nn.Module`` classes (``MODEL_CLASSES`` in
``build.py``; ``Class.from_pretrained`` accepts only its own name). Nothing is imported by name and nothing in a file
can make the library call an arbitrary function; weights are safetensors, never pickles.

Directories written before this format still load: a training checkpoint whose ``checkpoint.yaml`` holds
``model: {class: taskprompter.model.taskprompter.TaskPrompter, init_kwargs}``, and a `convert` output whose
``config.yaml`` lacks ``class``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import Tensor, nn

from ..errors import CheckpointError

WEIGHTS, CONFIG = "model.safetensors", "config.yaml"
FORMAT = "taskprompter-model-v1"
LEGACY_META = "checkpoint.yaml"  # training checkpoints written before this format kept the model spec here
DEFAULT_CLASS = "TaskPrompter"  # what a directory without a class name holds (the first `convert` format)


# ------------------------------------------------------------------------------------------------- writing


def fsync_file(path: Path) -> None:
    with open(path, "rb+") as fh:
        os.fsync(fh.fileno())


def fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def plain_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """CPU, contiguous, unshared copies (safetensors refuses tensors that share memory)."""
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}


def model_config(model: nn.Module, *, preset: str | None = None) -> dict[str, Any]:
    """The config.yaml of ``model``: its class name and constructor arguments (``model.init_kwargs``)."""
    kwargs = getattr(model, "init_kwargs", None)
    return {"format": FORMAT, "class": type(model).__name__, "preset": preset or getattr(model, "preset", None),
            "model": _plain(kwargs) if kwargs is not None else None}


def write_model_dir(model: nn.Module, directory: str | os.PathLike, *, preset: str | None = None) -> Path:
    """Write ``model.safetensors`` and ``config.yaml`` into ``directory``; each file is written beside its final
    name, flushed, and renamed over it, so a reader never sees half a file."""
    from safetensors.torch import save_file

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    for name, write in (
        (WEIGHTS, lambda p: save_file(plain_state_dict(model), str(p), metadata={"format": "pt",
                                                                                 "library": "taskprompter"})),
        (CONFIG, lambda p: p.write_text(yaml.safe_dump(model_config(model, preset=preset), sort_keys=False))),
    ):
        tmp = out / f".{name}.tmp{os.getpid()}"
        write(tmp)
        fsync_file(tmp)
        os.replace(tmp, out / name)
    fsync_dir(out)
    return out


def _plain(value: Any) -> Any:
    """YAML-safe plain data: tuples become lists, mappings plain dicts."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


# ------------------------------------------------------------------------------------------------- reading


def resolve_model_dir(path: str | os.PathLike) -> Path:
    """The model directory meant by ``path``: the directory itself, a file inside it, or a training run directory
    (its ``last``, else ``best``). A directory found only as ``<name>.old`` -- a training process killed between
    the two renames of a checkpoint swap -- is used as it is."""
    p = Path(path)
    if p.is_file() and p.name in (WEIGHTS, CONFIG, LEGACY_META):
        p = p.parent
    if p.is_dir() and not (p / WEIGHTS).is_file():
        for name in ("last", "best"):
            if (p / name / WEIGHTS).is_file() or (p / f"{name}.old" / WEIGHTS).is_file():
                p = p / name
                break
    if not p.is_dir():
        old = p.with_name(f"{p.name}.old")
        if (old / WEIGHTS).is_file():
            return old
        raise CheckpointError(f"checkpoint not found: {path}")
    if not (p / WEIGHTS).is_file():
        raise CheckpointError(f"{path} is not a checkpoint: no {WEIGHTS} in {p}")
    return p


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        raise CheckpointError(f"cannot read {path}: {err}") from err
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} holds a {type(data).__name__}, not a mapping")
    return data


def read_model_config(directory: str | os.PathLike) -> dict[str, Any]:
    """``{class, preset, model}`` of a model directory (also of the two formats that came before this one)."""
    directory = Path(directory)
    if (directory / CONFIG).is_file():
        config = _read_yaml(directory / CONFIG)
        source = directory / CONFIG
        config.setdefault("class", DEFAULT_CLASS)
    elif (directory / LEGACY_META).is_file():  # {model: {class: dotted.path.Name, preset, init_kwargs}}
        spec = _read_yaml(directory / LEGACY_META).get("model") or {}
        source = directory / LEGACY_META
        config = {"class": str(spec.get("class") or "").rpartition(".")[2] or None, "preset": spec.get("preset"),
                  "model": spec.get("init_kwargs")}
    else:
        raise CheckpointError(f"model directory {directory} lacks {CONFIG}")
    if not isinstance(config.get("class"), str) or not isinstance(config.get("model"), dict):
        raise CheckpointError(f"{source} does not record the model's class and constructor arguments")
    return config


def read_weights(directory: str | os.PathLike) -> dict[str, Tensor]:
    from safetensors.torch import load_file

    file = Path(directory) / WEIGHTS
    try:
        return load_file(str(file))
    except Exception as err:  # truncated or not safetensors at all
        raise CheckpointError(f"cannot read weights {file}: {err}") from err


def describe_mismatch(model_state: Mapping[str, Tensor], file_state: Mapping[str, Tensor], limit: int = 8) -> str:
    """One line naming the keys missing from the file, unexpected in it, and those whose shapes differ."""
    missing = sorted(set(model_state) - set(file_state))
    unexpected = sorted(set(file_state) - set(model_state))
    shapes = [f"{k} {tuple(file_state[k].shape)} in file vs {tuple(model_state[k].shape)} in model"
              for k in sorted(set(model_state) & set(file_state)) if file_state[k].shape != model_state[k].shape]
    parts = []
    for label, items in (("missing in checkpoint", missing), ("unexpected in checkpoint", unexpected),
                         ("shape differs", shapes)):
        if items:
            more = f" (+{len(items) - limit} more)" if len(items) > limit else ""
            parts.append(f"{label}: {', '.join(items[:limit])}{more}")
    return "; ".join(parts)


def load_state_exactly(model: nn.Module, state: Mapping[str, Tensor], *, source: str = "checkpoint") -> None:
    """Load every key: a missing or unexpected key or a shape difference raises CheckpointError naming them, and
    leaves the model untouched."""
    problem = describe_mismatch(model.state_dict(), state)
    if problem:
        raise CheckpointError(f"{source} does not match the model: {problem}")
    model.load_state_dict(state, strict=True)


def constructor_kwargs(config: Mapping[str, Any]) -> dict[str, Any]:
    """YAML turns tuples into lists; constructors expect tuples for sizes and level lists."""
    return {k: tuple(v) if isinstance(v, list) else v for k, v in config["model"].items()}


def build_from_config(cls: type[nn.Module], config: Mapping[str, Any], *, source: str, **overrides: Any) -> nn.Module:
    """``cls(**kwargs)`` from a model config; a config for another class, or with arguments ``cls`` does not take,
    raises CheckpointError before anything is built."""
    if config["class"] != cls.__name__:
        raise CheckpointError(f"{source} holds a {config['class']}, not a {cls.__name__} "
                              "(taskprompter.load_model reads any registered class)")
    try:
        return cls(**{**constructor_kwargs(config), **overrides})
    except TypeError as err:  # an argument this version of the class does not take
        raise CheckpointError(f"{source}: cannot build {cls.__name__}: {err}") from err


class PretrainedMixin:
    """``from_pretrained`` / ``save_pretrained`` for the project's model classes (the model directory format)."""

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, *, device: str | torch.device = "cpu", **overrides: Any):
        """The model saved at ``path`` (a model directory, a file in it, or a run directory -> ``last``), in eval
        mode on ``device``. ``overrides`` change constructor arguments that hold no weights, e.g.
        ``attention_impl="naive"`` or ``grad_checkpointing=True``."""
        directory = resolve_model_dir(path)
        model = build_from_config(cls, read_model_config(directory), source=str(directory), **overrides)
        load_state_exactly(model, read_weights(directory), source=str(directory / WEIGHTS))
        return model.to(device).eval()

    def save_pretrained(self, directory: str | os.PathLike, *, preset: str | None = None) -> Path:
        """Write this model as a model directory (``model.safetensors`` + ``config.yaml``)."""
        return write_model_dir(self, directory, preset=preset)
