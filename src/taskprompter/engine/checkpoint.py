"""Checkpoints: a directory that a kill at any moment leaves either old or new, never half-written.

    <run>/last/                      (and <run>/best/)
      model.safetensors              weights and buffers (BatchNorm statistics included)
      checkpoint.yaml                step, metrics, the model's class and constructor kwargs, the resolved config
      train_state.pt                 optimiser, step, RNG and data-order state -- tensors and plain types only,
                                     read with torch.load(weights_only=True)

A checkpoint is written into a fresh temporary directory, flushed to disk, and then swapped in with two renames
(old -> <name>.old, new -> <name>); a reader that finds only ``<name>.old`` (a kill between the renames) uses it.
Nothing here unpickles arbitrary objects.
"""

from __future__ import annotations

import importlib
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors.torch import load_file, save_file
from torch import nn

from ..errors import CheckpointError

WEIGHTS, META, STATE = "model.safetensors", "checkpoint.yaml", "train_state.pt"
FORMAT = "taskprompter-checkpoint-v1"


@dataclass
class Checkpoint:
    path: Path  # the checkpoint directory
    meta: dict[str, Any]  # checkpoint.yaml: step, metrics, model {class, init_kwargs}, config

    @property
    def step(self) -> int:
        return int(self.meta.get("step", 0))

    @property
    def config(self) -> dict[str, Any] | None:
        return self.meta.get("config")

    def state_dict(self) -> dict[str, torch.Tensor]:
        try:
            return load_file(str(self.path / WEIGHTS))
        except Exception as err:
            raise CheckpointError(f"cannot read weights {self.path / WEIGHTS}: {err}") from err

    def train_state(self) -> dict[str, Any]:
        file = self.path / STATE
        if not file.is_file():
            raise CheckpointError(f"{self.path} has no training state ({STATE}); it cannot be resumed")
        try:
            return torch.load(file, map_location="cpu", weights_only=True)
        except Exception as err:
            raise CheckpointError(f"cannot read training state {file}: {err}") from err


# ------------------------------------------------------------------------------------------------- writing


def _fsync_dir(path: Path) -> None:
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


def _write_bytes_synced(path: Path, write) -> None:
    write(path)
    with open(path, "rb+") as fh:
        os.fsync(fh.fileno())


def plain_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """CPU, contiguous, unshared copies (safetensors refuses tensors that share memory)."""
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}


def save_checkpoint(directory: str | os.PathLike, *, model: nn.Module, meta: Mapping[str, Any],
                    train_state: Mapping[str, Any] | None = None) -> Path:
    """Write ``directory`` atomically (see the module docstring). ``meta`` must be YAML-able plain data."""
    final = Path(directory)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.tmp{os.getpid()}")
    old = final.with_name(f"{final.name}.old")
    for stale in final.parent.glob(f".{final.name}.tmp*"):  # left by a writer killed mid-way
        shutil.rmtree(stale, ignore_errors=True)
    tmp.mkdir()
    _write_bytes_synced(tmp / WEIGHTS, lambda p: save_file(plain_state_dict(model), str(p)))
    meta = {"format": FORMAT, **dict(meta)}
    _write_bytes_synced(tmp / META, lambda p: p.write_text(yaml.safe_dump(meta, sort_keys=False)))
    if train_state is not None:
        _write_bytes_synced(tmp / STATE, lambda p: torch.save(dict(train_state), p))
    _fsync_dir(tmp)
    if final.exists():
        if old.exists():  # left by an earlier kill between the two renames, and `final` is complete
            shutil.rmtree(old)
        os.replace(final, old)
    os.replace(tmp, final)
    _fsync_dir(final.parent)
    if old.exists():
        shutil.rmtree(old)
    return final


# ------------------------------------------------------------------------------------------------- reading


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """A checkpoint directory from: the directory, its ``model.safetensors``, or a run directory (-> ``last``)."""
    p = Path(path)
    if p.is_file() and p.name in (WEIGHTS, META, STATE):
        p = p.parent
    if p.is_dir() and not (p / WEIGHTS).is_file():
        for name in ("last", "best"):
            if (p / name / WEIGHTS).is_file() or (p / f"{name}.old" / WEIGHTS).is_file():
                p = p / name
                break
    if not p.is_dir():
        old = p.with_name(f"{p.name}.old")
        if (old / WEIGHTS).is_file():  # killed between the two renames of a swap
            return old
        raise CheckpointError(f"checkpoint not found: {path}")
    if not (p / WEIGHTS).is_file():
        raise CheckpointError(f"{path} is not a checkpoint: no {WEIGHTS} in {p}")
    return p


def load_checkpoint(path: str | os.PathLike) -> Checkpoint:
    directory = resolve_checkpoint(path)
    meta: dict[str, Any] = {}
    if (directory / META).is_file():
        try:
            meta = yaml.safe_load((directory / META).read_text()) or {}
        except yaml.YAMLError as err:
            raise CheckpointError(f"cannot parse {directory / META}: {err}") from err
    else:  # a weights-only directory (e.g. converted): look for a config.yaml beside the weights
        cfg_file = directory / "config.yaml"
        if cfg_file.is_file():
            meta = yaml.safe_load(cfg_file.read_text()) or {}
    return Checkpoint(path=directory, meta=meta)


def describe_mismatch(model_state: Mapping[str, torch.Tensor], file_state: Mapping[str, torch.Tensor],
                      limit: int = 8) -> str:
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


def load_model_state(model: nn.Module, state: Mapping[str, torch.Tensor], *, source: str = "checkpoint") -> None:
    """Load exactly: any missing / unexpected key or shape difference raises CheckpointError naming them."""
    own = model.state_dict()
    problem = describe_mismatch(own, state)
    if problem:
        raise CheckpointError(f"{source} does not match the model: {problem}")
    model.load_state_dict(state, strict=True)


def model_class_path(model: nn.Module) -> str:
    cls = type(model)
    return f"{cls.__module__}.{cls.__qualname__}"


def build_model_from_meta(meta: Mapping[str, Any], *, source: str = "checkpoint") -> nn.Module:
    """Re-create the model from ``meta['model'] = {class, init_kwargs}`` (only classes inside taskprompter)."""
    spec = meta.get("model") or {}
    class_path, kwargs = spec.get("class"), spec.get("init_kwargs")
    if class_path is None and "tasks" in spec:  # `taskprompter convert` output: config.yaml {preset, model: kwargs}
        class_path, kwargs = "taskprompter.model.taskprompter.TaskPrompter", spec
    if not class_path or kwargs is None:
        raise CheckpointError(f"{source} does not record the model's class and constructor kwargs")
    module_name, _, name = class_path.rpartition(".")
    if not module_name.startswith("taskprompter."):
        raise CheckpointError(f"{source} names model class '{class_path}' outside the taskprompter package")
    try:
        cls = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError) as err:
        raise CheckpointError(f"{source}: model class '{class_path}' not found: {err}") from err
    return cls(**_tuples(kwargs))


def _tuples(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """YAML turns tuples into lists; constructors expect tuples for sizes and level lists."""
    return {k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()}


def load_model(path: str | os.PathLike, *, device: str | torch.device = "cpu") -> tuple[nn.Module, Checkpoint]:
    """Model (eval mode) and its checkpoint, from a checkpoint or run directory."""
    ckpt = load_checkpoint(path)
    model = build_model_from_meta(ckpt.meta, source=str(ckpt.path))
    load_model_state(model, ckpt.state_dict(), source=str(ckpt.path / WEIGHTS))
    return model.to(device).eval(), ckpt
