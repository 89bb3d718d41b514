"""Your own data: images, one folder per task, split files, and a small `dataset.yaml` declaring the tasks.

    my_data/
      dataset.yaml
      images/<id>.png|.jpg|.jpeg
      semseg/<id>.png          (folder name = task name unless `dir:` says otherwise)
      depth/<id>.npy | <id>.png
      splits/train.txt, splits/val.txt   (one id per line)

    # dataset.yaml
    name: my-data
    tasks:
      semseg: {classes: [background, road, car]}          # PNG value = class index, 255 = ignore
      human_parts: {classes: [bg, head, body], encoding: index_plus_one}  # value = class + 1, 0 = ignore
      depth: {encoding: png_scaled, scale: 1000}         # uint16 PNG / 1000 = metres ; default npy_metres
      normals: {}                                        # RGB PNG n = 2 v / 255 - 1, (0, 0, 0) = invalid
      sal: {}                                            # gray PNG, > 127 salient
      edge: {}                                           # gray PNG, > 127 boundary

Any subset of the six tasks may be declared; `tasks=None` reads all of them. See docs/data.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import yaml

from ..errors import ConfigError, DataError
from ..tasks import IGNORE_INDEX, TASK_ORDER, TASKS
from .base import TaskDataset, Transform
from .fileio import list_splits, read_depth_npy, read_image, read_label_png, read_normals_png, read_split
from .partial import LabelledSetting
from .sample import check_labels

CONFIG_NAME = "dataset.yaml"
TOP_KEYS = {"name", "tasks", "image_dir", "split_dir", "description"}
TASK_KEYS = {"classes", "encoding", "dir", "scale", "palette"}
ENCODINGS = {
    "semseg": ("index", "index_plus_one"),
    "human_parts": ("index", "index_plus_one"),
    "depth": ("npy_metres", "png_scaled"),
    "normals": ("png",),
    "sal": ("png",),
    "edge": ("png",),
}
IMAGE_EXTS = (".png", ".jpg", ".jpeg")


def load_config(root: Path) -> dict:
    """Read and validate `dataset.yaml`; every mistake is a ConfigError naming the file and key."""
    path = root / CONFIG_NAME
    if not path.is_file():
        raise DataError(f"missing {path}: a custom dataset needs a {CONFIG_NAME} declaring its tasks "
                        "(see docs/data.md)")
    try:
        cfg = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({err})") from err
    if not isinstance(cfg, dict) or not isinstance(cfg.get("tasks"), dict) or not cfg["tasks"]:
        raise ConfigError(f"{path}: needs a 'tasks:' mapping with at least one of {list(TASK_ORDER)}")
    unknown = set(cfg) - TOP_KEYS
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {sorted(unknown)}; allowed: {sorted(TOP_KEYS)}")
    for task, spec in cfg["tasks"].items():
        if task not in ENCODINGS:
            raise ConfigError(f"{path}: unknown task {task!r}; known tasks are {list(TASK_ORDER)}")
        spec = {} if spec is None else spec
        if not isinstance(spec, dict):
            raise ConfigError(f"{path}: tasks.{task} must be a mapping, got {spec!r}")
        bad = set(spec) - TASK_KEYS
        if bad:
            raise ConfigError(f"{path}: unknown key(s) {sorted(bad)} in tasks.{task}; allowed: {sorted(TASK_KEYS)}")
        spec.setdefault("encoding", ENCODINGS[task][0])
        if spec["encoding"] not in ENCODINGS[task]:
            raise ConfigError(f"{path}: tasks.{task}.encoding {spec['encoding']!r} unknown; "
                              f"choose one of {list(ENCODINGS[task])}")
        if task in ("semseg", "human_parts"):
            classes = spec.get("classes")
            if not isinstance(classes, list) or len(classes) < 2:
                raise ConfigError(f"{path}: tasks.{task}.classes must list at least two class names")
        if spec["encoding"] == "png_scaled" and not float(spec.get("scale", 0)) > 0:
            raise ConfigError(f"{path}: tasks.depth.scale must be > 0 with encoding png_scaled (e.g. 1000 for mm)")
        cfg["tasks"][task] = spec
    return cfg


class CustomDataset(TaskDataset):
    """Reader for the documented custom folder format (`dataset.yaml` + images + per-task folders + splits)."""

    format = "custom"

    def __init__(self, root: str | Path, split: str, tasks: Sequence[str] | None = None,
                 transform: Transform | None = None, edge_protocol: str = "train", *,
                 labelled_tasks: LabelledSetting = "auto") -> None:
        root = Path(root).expanduser()
        self.config = load_config(root)
        self.specs: dict[str, dict] = self.config["tasks"]
        self.task_channels = {t: (len(s["classes"]) if "classes" in s else TASKS[t].channels)
                              for t, s in self.specs.items()}
        self.classes = {t: list(s["classes"]) for t, s in self.specs.items() if "classes" in s}
        split_dir = root / self.config.get("split_dir", "splits")
        ids = read_split(split_dir / f"{split}.txt", available=list_splits(split_dir))
        super().__init__(root, split, list(self.specs) if tasks is None else tasks, ids, transform, edge_protocol,
                         labelled_tasks=labelled_tasks)
        self.image_dir = root / self.config.get("image_dir", "images")

    def image_path(self, sample_id: str) -> Path:
        for ext in IMAGE_EXTS:
            path = self.image_dir / f"{sample_id}{ext}"
            if path.is_file():
                return path
        return self.image_dir / f"{sample_id}.png"

    def task_path(self, task: str, sample_id: str) -> Path:
        spec = self.specs[task]
        ext = ".npy" if spec["encoding"] == "npy_metres" else ".png"
        return self.root / spec.get("dir", task) / f"{sample_id}{ext}"

    def load_image(self, sample_id: str) -> np.ndarray:
        path = self.image_path(sample_id)
        if not path.is_file():
            raise DataError(f"missing image: no {self.image_dir / sample_id}{{{','.join(IMAGE_EXTS)}}}")
        return read_image(path, mode="RGB").astype(np.float32)

    def _classes(self, task: str, sample_id: str) -> np.ndarray:
        path = self.task_path(task, sample_id)
        stored = read_label_png(path, what=task)
        if self.specs[task]["encoding"] == "index_plus_one":
            labels = np.where(stored == 0, IGNORE_INDEX, stored - 1)
            labels[stored == IGNORE_INDEX] = IGNORE_INDEX
        else:
            labels = stored
        check_labels(labels, task=task, num_classes=self.task_channels[task], path=path)
        return labels

    def load_semseg(self, sample_id: str) -> np.ndarray:
        return self._classes("semseg", sample_id)

    def load_human_parts(self, sample_id: str) -> np.ndarray:
        return self._classes("human_parts", sample_id)

    def load_depth(self, sample_id: str) -> np.ndarray:
        path = self.task_path("depth", sample_id)
        if self.specs["depth"]["encoding"] == "npy_metres":
            return read_depth_npy(path)
        stored = read_image(path, what="depth")
        if stored.ndim != 2:
            raise DataError(f"{path}: a png_scaled depth must be single-channel (16-bit gray), got {stored.shape}")
        return (stored.astype(np.float32) / np.float32(self.specs["depth"]["scale"])).astype(np.float32)

    def load_normals(self, sample_id: str) -> np.ndarray:
        path = self.task_path("normals", sample_id)
        normals = read_normals_png(path)
        invalid = (normals == -1.0).all(-1)  # stored (0, 0, 0)
        normals[invalid] = 0.0
        return normals

    def load_sal(self, sample_id: str) -> np.ndarray:
        return (read_label_png(self.task_path("sal", sample_id), what="sal") > 127).astype(np.int64)

    def load_edge(self, sample_id: str) -> np.ndarray:
        return (read_label_png(self.task_path("edge", sample_id), what="edge") > 127).astype(np.int64)
