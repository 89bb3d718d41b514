"""The sample dictionary every reader produces and every transform, loss and meter consumes.

On disk -> *raw sample* (NumPy, channels last, what transforms see):
    image float32 (H, W, 3) in [0, 255] (ImageNet-normalised once `Normalize` ran);
    semseg, human_parts, sal, edge int64 (H, W), 255 = ignore; depth float32 (H, W), 0 = invalid;
    normals float32 (H, W, 3), all-zero = invalid; meta {"id", "size": (H0, W0), "pad": (top, bottom, left, right)};
    3ddet (Cityscapes-3D) a dict of per-object arrays (cityscapes3d.py), meta then also holds "camera";
    labelled {task: bool}: whether the sample is labelled for each enabled task (all True without a record of
    partial labels, `partial.py`); a task it is not labelled for holds the task's `NO_LABEL` value everywhere.
-> `to_tensors` -> *sample* (torch, channels first): image (3, H, W), depth (1, H, W), normals (3, H, W),
   label maps (H, W) int64, 3ddet a dict of tensors (float32; int64 for integer fields), labelled {task: bool
   tensor ()}, meta unchanged.
   `collate` stacks samples into a batch with a leading B; meta and 3ddet become lists (one entry per sample),
   labelled a dict of stacked masks: batch["labelled"][task] is a BoolTensor (B,).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ..errors import DataError
from ..tasks import IGNORE_INDEX

LABEL_TASKS: tuple[str, ...] = ("semseg", "human_parts", "sal", "edge")  # integer maps with 255 = ignore
KEY_ORDER: tuple[str, ...] = ("image", "semseg", "depth", "human_parts", "sal", "normals", "edge")
# The "no label" value a target holds where it is invalid: the value of every pixel of a task a sample is not
# labelled for (readers may differ: Cityscapes-3D's disparity uses -1, `TaskDataset.no_label_value`).
NO_LABEL: dict[str, float] = {"semseg": IGNORE_INDEX, "human_parts": IGNORE_INDEX, "sal": IGNORE_INDEX,
                              "edge": IGNORE_INDEX, "depth": 0.0, "normals": 0.0}

Sample = dict[str, Any]


def new_meta(sample_id: str, size: tuple[int, int]) -> dict[str, Any]:
    """Meta of a freshly read sample: nothing padded yet."""
    return {"id": sample_id, "size": (int(size[0]), int(size[1])), "pad": (0, 0, 0, 0)}


def to_tensors(raw: Sample) -> Sample:
    """Raw NumPy sample (channels last) -> torch sample (channels first) with the project's dtypes."""
    out: Sample = {}
    for key, value in raw.items():
        if key == "meta":
            out[key] = value
        elif key == "labelled":  # {task: bool}
            out[key] = {task: torch.tensor(bool(flag)) for task, flag in value.items()}
        elif key == "3ddet":  # per-object arrays, n >= 0 objects
            out[key] = {k: torch.tensor(np.asarray(v), dtype=torch.int64 if np.asarray(v).dtype.kind in "iub"
                                        else torch.float32) for k, v in value.items()}
        elif key in ("image", "normals"):
            out[key] = torch.from_numpy(np.ascontiguousarray(value.transpose(2, 0, 1), dtype=np.float32))  # (3, H, W)
        elif key == "depth":
            out[key] = torch.from_numpy(np.ascontiguousarray(value[None], dtype=np.float32))  # (1, H, W)
        else:
            out[key] = torch.from_numpy(np.ascontiguousarray(value, dtype=np.int64))  # (H, W)
    return out


def collate(samples: Sequence[Sample]) -> Sample:
    """Stack a list of samples into a batch: tensors get a leading B, `meta` becomes a list of dicts.

    All samples must have the same keys and shapes (pad to a common size with the transforms first)."""
    if not samples:
        raise ValueError("collate needs at least one sample")
    keys = list(samples[0])
    batch: Sample = {}
    for key in keys:
        values = [s[key] for s in samples]
        if key in ("meta", "3ddet"):  # per-sample records: a list
            batch[key] = values
            continue
        if isinstance(values[0], dict):  # labelled: {task: ()} per sample -> {task: (B,)}
            batch[key] = {k: torch.stack([torch.as_tensor(v[k]) for v in values]) for k in values[0]}
            continue
        shapes = {tuple(v.shape) for v in values}
        if len(shapes) > 1:
            ids = [s.get("meta", {}).get("id") for s in samples]
            raise DataError(f"cannot batch '{key}' of samples {ids}: shapes differ {sorted(shapes)}; "
                            "pad them to one size (transforms.eval_transform(size)) or use batch size 1")
        batch[key] = torch.stack([torch.as_tensor(v) for v in values])  # (B, ...)
    return batch


def check_labels(values: np.ndarray, *, task: str, num_classes: int, path: object) -> None:
    """Raise a DataError naming the file, the task and the offending values if any label is outside
    [0, num_classes) and not the ignore value."""
    bad = (values < 0) | ((values >= num_classes) & (values != IGNORE_INDEX))
    if bad.any():
        found = np.unique(values[bad])
        shown = ", ".join(str(int(v)) for v in found[:8]) + (" ..." if found.size > 8 else "")
        raise DataError(f"{path}: {task} label value(s) {shown} outside 0..{num_classes - 1} "
                        f"(and {IGNORE_INDEX} = ignore) in {int(bad.sum())} pixel(s)")


def check_shape(array: np.ndarray, *, image_hw: tuple[int, int], task: str, path: object) -> None:
    """Labels must cover the image pixel for pixel."""
    if tuple(array.shape[:2]) != tuple(image_hw):
        raise DataError(f"{path}: {task} is {array.shape[0]}x{array.shape[1]} but its image is "
                        f"{image_hw[0]}x{image_hw[1]} (wrong shape)")
