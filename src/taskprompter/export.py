"""`taskprompter export`: a checkpoint to ONNX, one named output per task and a dynamic batch dimension.

    taskprompter export --checkpoint runs/demo/train/last --format onnx --out model.onnx [--opset 17] [--check]

The checkpoint is a model directory (``model.safetensors`` + ``config.yaml``: ``save_pretrained``, `taskprompter
convert`, every training checkpoint) or a training run directory (its ``last``). The graph takes ``images``
(batch, 3, H, W) -- ImageNet-normalised, at the model's fixed input size (the channel prompts' Linear(C -> N) fixes
N) -- and returns one logits tensor per task, named after the task, (batch, C_t, H, W), in the model's output order.
``--check`` runs the file in onnxruntime on batches of 1 and 3 and compares with the eager model.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch
from torch import Tensor, nn

from .errors import ConfigError
from .model.build import load_model

FORMATS = ("onnx",)


class TupleOutputs(nn.Module):
    """``model(images) -> {task: logits}`` as a tuple in ``tasks`` order (exporters name tuple elements)."""

    def __init__(self, model: nn.Module, tasks: list[str]) -> None:
        super().__init__()
        self.model, self.tasks = model, list(tasks)

    def forward(self, images: Tensor) -> tuple[Tensor, ...]:
        outputs = self.model(images)
        return tuple(outputs[t] for t in self.tasks)


def output_tasks(model: nn.Module) -> list[str]:
    """The task names in the order ``model(images)`` returns them."""
    return list(getattr(model, "output_order", None) or model.task_names)


def load_for_export(checkpoint: str | os.PathLike) -> nn.Module:
    """The model of a model / checkpoint / run directory, in eval mode on the CPU."""
    return load_model(checkpoint, device="cpu")


def export_onnx(model: nn.Module, out: str | os.PathLike, *, opset: int = 17, batch: int = 1) -> Path:
    """Write ``model`` as ONNX with input ``images`` and one output per task, the batch dimension dynamic."""
    tasks = output_tasks(model)
    H, W = model.img_size
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    example = torch.randn(batch, 3, H, W)
    dynamic = {"images": {0: "batch"}} | {t: {0: "batch"} for t in tasks}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)  # the input-shape check traces as a constant
        warnings.simplefilter("ignore", DeprecationWarning)  # dynamo=False is deliberate: it handles SDPA at opset 14+
        torch.onnx.export(TupleOutputs(model.eval(), tasks), (example,), str(out), input_names=["images"],
                          output_names=tasks, dynamic_axes=dynamic, opset_version=opset, dynamo=False)
    return out


def check_onnx(path: str | os.PathLike, model: nn.Module, *, batches: tuple[int, ...] = (1, 3),
               seed: int = 0) -> dict[int, dict[str, float]]:
    """Run the file in onnxruntime and the model in eager mode on the same random batches: {batch: {task: max abs
    difference}}."""
    try:
        import onnxruntime as ort
    except ImportError as err:  # optional extra
        raise ConfigError("--check needs onnxruntime (pip install 'taskprompter[onnx]')") from err
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    H, W = model.img_size
    gen = torch.Generator().manual_seed(seed)
    diffs = {}
    for b in batches:
        images = torch.randn(b, 3, H, W, generator=gen)
        with torch.no_grad():
            eager = model.eval()(images)
        got = dict(zip(names, session.run(None, {"images": images.numpy()})))
        diffs[b] = {t: float((torch.from_numpy(got[t]) - eager[t]).abs().max()) for t in eager}
    return diffs
