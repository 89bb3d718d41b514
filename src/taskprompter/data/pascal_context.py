"""PASCAL-Context as released for multi-task learning (`PASCALContext/`), read without modification.

    JPEGImages/<id>.jpg                   RGB
    ImageSets/Context/{train,val}.txt     4998 / 5105 ids (val is the test set)
    semseg/pascal-context/<id>.png        21 VOC classes 0..20, 255 ignore (semseg/VOC12/<id>.png if absent)
    human_parts/<id>.mat                  PASCAL-Part struct: anno.objects(k).{class, class_ind, mask,
                                                                      parts(j).{part_name, mask}}
    pascal-context/trainval/<id>.mat      'LabelMap', 459 Context classes: boundaries and the normals mask
    normals_distill/<id>.png              RGB, n = 2 v / 255 - 1, kept only on Context classes shared with NYU
    sal_distill/<id>.png                  gray, salient where v / 255 > 0.5

Parsing: persons (class_ind 15) have named parts mapped to head 1, torso 2, upper arm 3, lower arm 4, upper leg 5,
lower leg 6; an image without any person part is ignored for parsing (all 255), as in the released code.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..errors import DataError
from ..tasks import DATASET_SPECS, IGNORE_INDEX
from .base import TaskDataset, Transform, resolve_root
from .boundaries import context_edges, seism_ground_truth
from .classes import NUM_CONTEXT_CLASSES, PERSON_PART_IDS, VOC_PERSON, context_normals_valid_ids
from .fileio import list_splits, read_image, read_label_png, read_mat, read_normals_png, read_split
from .partial import LabelledSetting
from .sample import check_labels

SEMSEG_DIRS = ("semseg/pascal-context", "semseg/VOC12")


def _scalar(value: object) -> object:
    """First element of a loadmat field (MATLAB wraps scalars and strings in arrays)."""
    arr = np.asarray(value)
    return arr.ravel()[0] if arr.size else None


def parse_part_annotation(mat: dict, *, path: Path, shape: tuple[int, int]) -> np.ndarray:
    """PASCAL-Part `anno` struct -> 6-part map int64 (H, W); all 255 when no person has a part."""
    if "anno" not in mat:
        raise DataError(f"{path}: no 'anno' struct (expected a PASCAL-Part annotation .mat)")
    try:
        anno = mat["anno"][0, 0]
        objects = anno["objects"]
    except (IndexError, ValueError, KeyError) as err:
        raise DataError(f"{path}: 'anno' has no 'objects' field ({err})") from err
    parts_map = np.zeros(shape, dtype=np.int64)
    any_part = False
    for obj in np.asarray(objects).ravel():
        if obj is None or not isinstance(obj, np.void) or "class_ind" not in (obj.dtype.names or ()):
            continue
        if int(_scalar(obj["class_ind"])) != VOC_PERSON:
            continue
        parts = obj["parts"] if "parts" in obj.dtype.names else np.zeros(0)
        for part in np.asarray(parts).ravel():
            if not isinstance(part, np.void):
                continue
            name = str(_scalar(part["part_name"]))
            if name not in PERSON_PART_IDS:
                raise DataError(f"{path}: unknown person part name {name!r}; known: {sorted(PERSON_PART_IDS)}")
            mask = np.asarray(part["mask"])
            if mask.shape != tuple(shape):
                raise DataError(f"{path}: part {name!r} mask is {mask.shape[0]}x{mask.shape[1]} but the image is "
                                f"{shape[0]}x{shape[1]} (wrong shape)")
            parts_map[mask > 0] = PERSON_PART_IDS[name]
            any_part = True
    if not any_part:
        parts_map[:] = IGNORE_INDEX
    return parts_map


class PascalContext(TaskDataset):
    """PASCAL-Context multi-task reader: semseg (21), human_parts (7), sal (2), normals (3), edge (1)."""

    format = "pascal_context"
    task_channels = dict(DATASET_SPECS[format].tasks)

    def __init__(self, root: str | Path, split: str, tasks: Sequence[str], transform: Transform | None = None,
                 edge_protocol: str = "train", *, labelled_tasks: LabelledSetting = "auto") -> None:
        root = resolve_root(root, marker="ImageSets", subdir="PASCALContext")
        splits = root / "ImageSets" / "Context"
        ids = read_split(splits / f"{split}.txt", available=list_splits(splits))
        super().__init__(root, split, tasks, ids, transform, edge_protocol, labelled_tasks=labelled_tasks)
        self._shapes: dict[str, tuple[int, int]] = {}

    # -- paths --------------------------------------------------------------------------------------------
    def image_path(self, sample_id: str) -> Path:
        return self.root / "JPEGImages" / f"{sample_id}.jpg"

    def context_path(self, sample_id: str) -> Path:
        return self.root / "pascal-context" / "trainval" / f"{sample_id}.mat"

    def task_path(self, task: str, sample_id: str) -> Path:
        if task == "semseg":
            candidates = [self.root / d / f"{sample_id}.png" for d in SEMSEG_DIRS]
            return next((p for p in candidates if p.is_file()), candidates[0])
        return {
            "human_parts": self.root / "human_parts" / f"{sample_id}.mat",
            "sal": self.root / "sal_distill" / f"{sample_id}.png",
            "normals": self.root / "normals_distill" / f"{sample_id}.png",
            "edge": self.context_path(sample_id),
        }[task]

    def header_files(self, sample_id: str) -> list[tuple[str, Path]]:
        labelled = self.labelled_tasks_of(sample_id)
        extra = [("normals mask (LabelMap)", self.context_path(sample_id))] if "normals" in labelled else []
        return super().header_files(sample_id) + extra

    # -- loaders ------------------------------------------------------------------------------------------
    def load_image(self, sample_id: str) -> np.ndarray:
        image = read_image(self.image_path(sample_id), mode="RGB")
        self._shapes[sample_id] = image.shape[:2]
        return image.astype(np.float32)

    def _image_hw(self, sample_id: str) -> tuple[int, int]:
        if sample_id not in self._shapes:
            self.load_image(sample_id)
        return self._shapes[sample_id]

    def load_label_map(self, sample_id: str) -> np.ndarray:
        """The 459-class Context LabelMap, int64 (H, W) (0 = unlabelled)."""
        path = self.context_path(sample_id)
        mat = read_mat(path, what="PASCAL-Context LabelMap")
        if "LabelMap" not in mat:
            found = sorted(k for k in mat if not k.startswith("__"))
            raise DataError(f"{path}: no 'LabelMap' variable (found {found})")
        labels = np.asarray(mat["LabelMap"]).astype(np.int64)
        if labels.ndim != 2:
            raise DataError(f"{path}: LabelMap must be 2-D, got shape {labels.shape} (wrong shape)")
        bad = (labels < 0) | (labels > NUM_CONTEXT_CLASSES)
        if bad.any():
            raise DataError(f"{path}: LabelMap value(s) {np.unique(labels[bad])[:8].tolist()} outside the Context "
                            f"ids 0..{NUM_CONTEXT_CLASSES} (task edge/normals)")
        return labels

    def load_semseg(self, sample_id: str) -> np.ndarray:
        path = self.task_path("semseg", sample_id)
        if not path.is_file():
            tried = ", ".join(str(self.root / d / f"{sample_id}.png") for d in SEMSEG_DIRS)
            raise DataError(f"missing semseg: none of {tried} exists")
        labels = read_label_png(path, what="semseg")
        check_labels(labels, task="semseg", num_classes=self.task_channels["semseg"], path=path)
        return labels

    def load_human_parts(self, sample_id: str) -> np.ndarray:
        path = self.task_path("human_parts", sample_id)
        mat = read_mat(path, what="human_parts (PASCAL-Part annotation)")
        return parse_part_annotation(mat, path=path, shape=self._image_hw(sample_id))

    def load_sal(self, sample_id: str) -> np.ndarray:
        stored = read_image(self.task_path("sal", sample_id), mode="L", what="sal")
        return (stored.astype(np.float32) / 255.0 > 0.5).astype(np.int64)

    def load_normals(self, sample_id: str) -> np.ndarray:
        normals = read_normals_png(self.task_path("normals", sample_id))
        labels = self.load_label_map(sample_id)
        if labels.shape != normals.shape[:2]:
            raise DataError(f"{self.context_path(sample_id)}: LabelMap is {labels.shape[0]}x{labels.shape[1]} but "
                            f"the normals are {normals.shape[0]}x{normals.shape[1]} (wrong shape)")
        valid = np.isin(labels, np.fromiter(context_normals_valid_ids(), dtype=np.int64))
        return normals * valid[..., None].astype(np.float32)  # other classes: all-zero = invalid

    def load_edge(self, sample_id: str) -> np.ndarray:
        return context_edges(self.load_label_map(sample_id))

    def load_edge_seism(self, sample_id: str) -> np.ndarray:
        return seism_ground_truth(self.load_label_map(sample_id)).astype(np.int64)
