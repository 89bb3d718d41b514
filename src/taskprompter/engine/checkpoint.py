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

import errno
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
    """Write ``directory`` atomically (see the module docstring). ``meta`` must be YAML-able plain data.

    A failed write (a full disk, typically) removes its temporary directory, leaves the previous checkpoint as it was
    and raises an OSError naming ``directory``."""
    final = Path(directory)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.tmp{os.getpid()}")
    old = final.with_name(f"{final.name}.old")
    for stale in final.parent.glob(f".{final.name}.tmp*"):  # left by a writer killed mid-way
        shutil.rmtree(stale, ignore_errors=True)
    try:
        tmp.mkdir()
        write_model_dir(model, tmp, preset=preset)
        meta = {"format": FORMAT, **dict(meta)}
        _write_synced(tmp / META, lambda p: p.write_text(yaml.safe_dump(meta, sort_keys=False)))
        if train_state is not None:
            _write_synced(tmp / STATE, lambda p: torch.save(dict(train_state), p))
        fsync_dir(tmp)
    except Exception as err:
        failure = _write_failure(err, final)
        shutil.rmtree(tmp, ignore_errors=True)
        raise failure from err
    if final.exists():
        if old.exists():  # left by an earlier kill between the two renames, and `final` is complete
            shutil.rmtree(old)
        os.replace(final, old)
    os.replace(tmp, final)
    fsync_dir(final.parent)
    if old.exists():
        shutil.rmtree(old)
    return final


def _write_failure(err: Exception, target: Path) -> Exception:
    """The error to report for a failed checkpoint write. safetensors and torch.save describe a full disk in their
    own words ("os error 28", "unexpected pos 576 vs 534"), so a write that failed on a (nearly) full file system is
    reported as the OSError ENOSPC, with its path."""
    full = getattr(err, "errno", None) == errno.ENOSPC or "os error 28" in str(err) or "No space left" in str(err)
    if not full and not isinstance(err, OSError):
        try:
            full = shutil.disk_usage(target.parent).free < 16 * 2**20
        except OSError:
            pass
    if full:
        return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(target))
    if isinstance(err, OSError) and err.filename is None:
        return OSError(err.errno, err.strerror, str(target))
    return err


def update_meta(directory: str | os.PathLike, **fields: Any) -> None:
    """Rewrite a checkpoint's ``checkpoint.yaml`` with ``fields`` changed (temporary file, then rename): the
    evaluation that follows a checkpoint records its metrics without writing the weights again."""
    path = Path(directory) / META
    meta = {**(yaml.safe_load(path.read_text()) or {}), **fields}
    tmp = path.with_name(f".{META}.tmp{os.getpid()}")
    try:
        _write_synced(tmp, lambda p: p.write_text(yaml.safe_dump(meta, sort_keys=False)))
    except Exception as err:
        tmp.unlink(missing_ok=True)
        raise _write_failure(err, path) from err
    os.replace(tmp, path)


# ------------------------------------------------------------------------------------------------- reading


def load_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """The checkpoint at ``path``: its directory, a file in it, or a run directory (-> ``last``). A model directory
    without training metadata (e.g. from `taskprompter convert`) loads with empty ``meta``."""
    directory = resolve_model_dir(path)
    meta: dict[str, Any] = {}
    if (directory / META).is_file():
        try:
            meta = yaml.safe_load((directory / META).read_text()) or {}
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
            reason = " ".join(str(err).split()[:24])
            raise CheckpointError(f"cannot parse {directory / META}: {reason}") from err
        if not isinstance(meta, dict):
            raise CheckpointError(f"cannot parse {directory / META}: it holds a {type(meta).__name__}, not a "
                                  "mapping")
    return Checkpoint(path=directory, meta=meta)


def load_model(path: str | os.PathLike, *, device: str | torch.device = "cpu") -> tuple[nn.Module, Checkpoint]:
    """Model (eval mode, any registered class) and its checkpoint, from a checkpoint, model or run directory."""
    ckpt = load_checkpoint(path)
    return load_registered(ckpt.path, device=device), ckpt


# ------------------------------------------------------------------------------------------------- resuming


@dataclass
class ResumePoint:
    """A checkpoint read whole for ``--resume``: its metadata, training state and weights."""

    checkpoint: Checkpoint
    state: dict[str, Any]
    weights: dict[str, torch.Tensor]

    @property
    def step(self) -> int:
        return int(self.state["step"])


def run_checkpoints(run_dir: str | os.PathLike) -> list[Path]:
    """The checkpoints a run directory holds: ``last`` and ``best`` (each also as ``<name>.old``, a kill between the
    renames of a swap)."""
    run_dir = Path(run_dir)
    return [run_dir / name for name in ("last", "best")
            if (run_dir / name).exists() or (run_dir / f"{name}.old").exists()]


def _damaged(directory: Path, problem: str) -> CheckpointError:
    first = problem.strip().splitlines()[0] if problem.strip() else problem
    return CheckpointError(f"cannot resume from {directory}: {first}; restore it from a copy, resume from another "
                           "checkpoint with --resume PATH, or start again with --overwrite")


def read_step(directory: str | os.PathLike) -> int:
    """The step recorded in a training checkpoint's metadata; a missing or damaged ``checkpoint.yaml`` is a
    CheckpointError naming the file (never step 0)."""
    try:
        ckpt = load_checkpoint(directory)
    except CheckpointError as err:
        raise _damaged(Path(directory), str(err)) from err
    file = ckpt.path / META
    if not file.is_file():
        raise _damaged(ckpt.path, f"{file} is missing (a model directory, not a training checkpoint)")
    if not isinstance(ckpt.meta, dict) or not isinstance(ckpt.meta.get("step"), int):
        raise _damaged(ckpt.path, f"{file} holds no step")
    return ckpt.step


def load_for_resume(directory: str | os.PathLike) -> ResumePoint:
    """Read a training checkpoint whole -- metadata, training state, weights -- before anything is written; any
    missing or damaged file is a CheckpointError that names it."""
    read_step(directory)
    ckpt = load_checkpoint(directory)
    try:
        state = ckpt.train_state()
        weights = ckpt.state_dict()
    except CheckpointError as err:
        raise _damaged(ckpt.path, str(err)) from err
    if not isinstance(state, dict) or "step" not in state or "optimizer" not in state:
        raise _damaged(ckpt.path, f"{ckpt.path / STATE} lacks the step or the optimiser state")
    if int(state["step"]) != ckpt.step:
        raise _damaged(ckpt.path, f"{ckpt.path / META} says step {ckpt.step} but {ckpt.path / STATE} step "
                       f"{state['step']}")
    return ResumePoint(checkpoint=ckpt, state=state, weights=weights)
