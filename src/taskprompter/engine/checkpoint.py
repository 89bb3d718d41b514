"""Checkpoints: a directory that a kill at any moment leaves either old or new, never half-written.

    <run>/last/                      (and <run>/best/): a model directory (model/io.py) plus the training state
      model.safetensors              weights and buffers (BatchNorm statistics included)
      config.yaml                    the model's class and constructor arguments (TaskPrompter.from_pretrained)
      checkpoint.yaml                step, metrics, best, the resolved training config
      train_state.pt                 optimiser, step, RNG and data-order state -- tensors and plain types only,
                                     read with torch.load(weights_only=True)

A checkpoint is written into a fresh temporary directory, flushed to disk, and then swapped in with two renames
(old -> <name>.old, new -> <name>); a reader that finds only ``<name>.old`` (a kill between the renames) uses it.
Nothing here unpickles arbitrary objects.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from ..errors import CheckpointError
from ..model.build import load_model as load_registered
from ..model.io import fsync_dir, fsync_file, read_weights, resolve_model_dir, write_model_dir

META, STATE = "checkpoint.yaml", "train_state.pt"
FORMAT = "taskprompter-checkpoint-v1"


@dataclass
class Checkpoint:
    path: Path  # the checkpoint directory
    meta: dict[str, Any]  # checkpoint.yaml: step, metrics, best, config

    @property
    def step(self) -> int:
        return int(self.meta.get("step", 0))

    @property
    def config(self) -> dict[str, Any] | None:
        return self.meta.get("config")

    def state_dict(self) -> dict[str, torch.Tensor]:
        return read_weights(self.path)

    def train_state(self) -> dict[str, Any]:
        file = self.path / STATE
        if not file.is_file():
            raise CheckpointError(f"{self.path} has no training state ({STATE}); it cannot be resumed")
        try:
            return torch.load(file, map_location="cpu", weights_only=True)
        except Exception as err:
            raise CheckpointError(f"cannot read training state {file}: {err}") from err


# ------------------------------------------------------------------------------------------------- writing


def _write_synced(path: Path, write) -> None:
    write(path)
    fsync_file(path)


def save_checkpoint(directory: str | os.PathLike, *, model: nn.Module, meta: Mapping[str, Any],
                    train_state: Mapping[str, Any] | None = None, preset: str | None = None) -> Path:
    """Write ``directory`` atomically (see the module docstring). ``meta`` must be YAML-able plain data."""
    final = Path(directory)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.tmp{os.getpid()}")
    old = final.with_name(f"{final.name}.old")
    for stale in final.parent.glob(f".{final.name}.tmp*"):  # left by a writer killed mid-way
        shutil.rmtree(stale, ignore_errors=True)
    tmp.mkdir()
    write_model_dir(model, tmp, preset=preset)
    meta = {"format": FORMAT, **dict(meta)}
    _write_synced(tmp / META, lambda p: p.write_text(yaml.safe_dump(meta, sort_keys=False)))
    if train_state is not None:
        _write_synced(tmp / STATE, lambda p: torch.save(dict(train_state), p))
    fsync_dir(tmp)
    if final.exists():
        if old.exists():  # left by an earlier kill between the two renames, and `final` is complete
            shutil.rmtree(old)
        os.replace(final, old)
    os.replace(tmp, final)
    fsync_dir(final.parent)
    if old.exists():
        shutil.rmtree(old)
    return final


# ------------------------------------------------------------------------------------------------- reading


def load_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """The checkpoint at ``path``: its directory, a file in it, or a run directory (-> ``last``). A model directory
    without training metadata (e.g. from `taskprompter convert`) loads with empty ``meta``."""
    directory = resolve_model_dir(path)
    meta: dict[str, Any] = {}
    if (directory / META).is_file():
        try:
            meta = yaml.safe_load((directory / META).read_text()) or {}
        except yaml.YAMLError as err:
            raise CheckpointError(f"cannot parse {directory / META}: {err}") from err
    return Checkpoint(path=directory, meta=meta)


def load_model(path: str | os.PathLike, *, device: str | torch.device = "cpu") -> tuple[nn.Module, Checkpoint]:
    """Model (eval mode, any registered class) and its checkpoint, from a checkpoint, model or run directory."""
    ckpt = load_checkpoint(path)
    return load_registered(ckpt.path, device=device), ckpt
