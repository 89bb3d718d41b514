"""NYUD-v2 as released for multi-task learning (`NYUDv2/`), read without modification.

    images/<id>.png            RGB
    gt_sets/{train,val}.txt    795 / 654 ids
    segmentation/<id>.png      stored NYU-40 id (1..40), 0 = unlabelled -> read as id - 1, unlabelled -> 255
    depth/<id>.npy             float32 metres, 0 = invalid
    normals/<id>.png           RGB, n = 2 v / 255 - 1 (camera frame)
    edge/<id>.png              gray, boundary where v / 255 > 0.5
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..tasks import DATASET_SPECS, IGNORE_INDEX
from .base import TaskDataset, Transform, resolve_root
from .boundaries import seism_ground_truth
from .fileio import list_splits, read_depth_npy, read_image, read_label_png, read_normals_png, read_split
from .partial import LabelledSetting
from .sample import check_labels

_FILES = {"semseg": ("segmentation", ".png"), "depth": ("depth", ".npy"), "normals": ("normals", ".png"),
          "edge": ("edge", ".png")}


class NYUD(TaskDataset):
    """NYUD-v2 multi-task reader: semseg (40), depth, normals, edge."""

    format = "nyud"
    task_channels = dict(DATASET_SPECS[format].tasks)

    def __init__(self, root: str | Path, split: str, tasks: Sequence[str], transform: Transform | None = None,
                 edge_protocol: str = "train", *, labelled_tasks: LabelledSetting = "auto") -> None:
        root = resolve_root(root, marker="gt_sets", subdir="NYUDv2")
        ids = read_split(root / "gt_sets" / f"{split}.txt", available=list_splits(root / "gt_sets"))
        super().__init__(root, split, tasks, ids, transform, edge_protocol, labelled_tasks=labelled_tasks)

    def image_path(self, sample_id: str) -> Path:
        return self.root / "images" / f"{sample_id}.png"

    def task_path(self, task: str, sample_id: str) -> Path:
        folder, ext = _FILES[task]
        return self.root / folder / f"{sample_id}{ext}"

    def load_image(self, sample_id: str) -> np.ndarray:
        return read_image(self.image_path(sample_id), mode="RGB").astype(np.float32)

    def load_semseg(self, sample_id: str) -> np.ndarray:
        path = self.task_path("semseg", sample_id)
        stored = read_label_png(path, what="semseg")
        check_labels(stored, task="semseg (stored NYU-40 id, 0 = unlabelled)",
                     num_classes=self.task_channels["semseg"] + 1, path=path)  # ids 1..40 and 0
        labels = stored - 1
        labels[stored == 0] = IGNORE_INDEX
        labels[stored == IGNORE_INDEX] = IGNORE_INDEX
        return labels

    def load_depth(self, sample_id: str) -> np.ndarray:
        return read_depth_npy(self.task_path("depth", sample_id))

    def load_normals(self, sample_id: str) -> np.ndarray:
        return read_normals_png(self.task_path("normals", sample_id))

    def load_edge(self, sample_id: str) -> np.ndarray:
        stored = read_label_png(self.task_path("edge", sample_id), what="edge")
        return (stored > 127).astype(np.int64)

    def load_edge_seism(self, sample_id: str) -> np.ndarray:
        """SEISM reads the edge PNG as a segmentation: the boundaries of its edge regions, thinned."""
        return seism_ground_truth(self.load_edge(sample_id)).astype(np.int64)
