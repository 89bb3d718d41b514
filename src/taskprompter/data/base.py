"""What the three readers share: split ids, per-task loaders, shape checks, transforms, RNG, problem reports.

A reader defines `load_image(id)` and one `load_<task>(id, image_hw)` per supported task; each returns a raw
NumPy array (see `sample.py`) or raises a DataError naming the file. Only the enabled tasks' files are read.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import DataError
from ..tasks import ordered_tasks
from .fileio import header_size
from .sample import Sample, check_shape, new_meta, to_tensors

Transform = Callable[[Sample, np.random.Generator], Sample]
# edge targets: "train" = the labels the released code trains on; "seism" = the evaluation's ground truth
EDGE_PROTOCOLS = ("train", "seism")


def resolve_root(root: str | Path, *, marker: str, subdir: str) -> Path:
    """The dataset folder: `root` itself when it holds `marker`, else `root/subdir` when that does
    (so both `.../PASCALContext` and its parent work)."""
    root = Path(root).expanduser()
    if (root / marker).exists():
        return root
    if (root / subdir / marker).exists():
        return root / subdir
    if not root.exists():
        raise DataError(f"dataset root {root} does not exist")
    raise DataError(f"{root} does not look like a {subdir} tree: neither {root / marker} nor "
                    f"{root / subdir / marker} exists")


def torch_derived_rng() -> np.random.Generator:
    """The fallback augmentation generator of `TaskDataset.get` when no `rng` is given: NumPy seeded from torch's
    global generator, which DataLoader workers seed per worker from the loader's generator.

    It stands outside the one seeding system of `sampling.py` on purpose -- a plain `ds[i]` or an unwrapped
    DataLoader should still augment randomly -- so it is reproducible under `torch.manual_seed(s)` only for a fixed
    number of workers. Training (`SeededSamples`) and `seeded()` always pass a generator derived with
    `sampling.mix_seed` from (seed, stream position), which is independent of workers and order."""
    return np.random.default_rng(int(torch.randint(0, 2**62, (1,)).item()))


class TaskDataset(Dataset):
    """Base of the readers: `ds[i]` -> torch sample; `ds.load_raw(i)` -> NumPy sample before transforms."""

    format: str = ""
    task_channels: dict[str, int] = {}

    def __init__(self, root: Path, split: str, tasks: Sequence[str], ids: list[str],
                 transform: Transform | None = None, edge_protocol: str = "train") -> None:
        if edge_protocol not in EDGE_PROTOCOLS:
            raise ValueError(f"edge_protocol must be one of {EDGE_PROTOCOLS}, got {edge_protocol!r}")
        unsupported = [t for t in tasks if t not in self.task_channels]
        if unsupported:
            raise DataError(f"{self.format} at {root} has no labels for task(s) {unsupported}; "
                            f"it provides {list(self.task_channels)}")
        self.root = root
        self.split = split
        self.tasks = ordered_tasks(tasks)
        self.ids = ids
        self.transform = transform
        self.edge_protocol = edge_protocol

    def __len__(self) -> int:
        return len(self.ids)

    def __repr__(self) -> str:
        name = type(self).__name__
        return f"{name}(root={str(self.root)!r}, split={self.split!r}, tasks={self.tasks}, n={len(self)})"

    # -- per-file loaders (subclasses) --------------------------------------------------------------------
    def load_image(self, sample_id: str) -> np.ndarray:  # (H, W, 3) float32 in [0, 255]
        raise NotImplementedError

    def image_path(self, sample_id: str) -> Path:
        raise NotImplementedError

    def load_task(self, task: str, sample_id: str) -> np.ndarray:
        if task == "edge" and self.edge_protocol == "seism":
            return self.load_edge_seism(sample_id)
        return getattr(self, f"load_{task}")(sample_id)

    def load_edge_seism(self, sample_id: str) -> np.ndarray:
        """The boundary ground truth the published evaluation scores against (``boundaries.seism_ground_truth``);
        readers whose released format defines it override this. Default: the edge labels as stored."""
        return self.load_edge(sample_id)

    # -- samples ------------------------------------------------------------------------------------------
    def load_raw(self, index: int) -> Sample:
        """Read sample `index` from disk (no transform). Raises DataError on the first problem."""
        sample_id = self.ids[index]
        image = self.load_image(sample_id)
        raw: Sample = {"image": image}
        for task in self.tasks:
            value = self.load_task(task, sample_id)
            self.check_value(task, value, image.shape[:2], sample_id)
            raw[task] = value
        raw["meta"] = new_meta(sample_id, image.shape[:2])
        return raw

    def check_value(self, task: str, value: Any, image_hw: tuple[int, int], sample_id: str) -> None:
        """Raise a DataError naming the file if a loaded label does not fit its image (default: a map of the image's
        size; readers with other kinds of labels, e.g. 3-D boxes, override this)."""
        check_shape(value, image_hw=image_hw, task=task, path=self.task_path(task, sample_id))

    def task_path(self, task: str, sample_id: str) -> Path:
        """The file a task's label comes from (for messages)."""
        raise NotImplementedError

    def get(self, index: int, rng: np.random.Generator | None = None) -> Sample:
        """Sample `index` after the transform, as tensors; `rng` drives the random augmentation."""
        raw = self.load_raw(index)
        if self.transform is not None:
            raw = self.transform(raw, rng if rng is not None else torch_derived_rng())
        return to_tensors(raw)

    def __getitem__(self, index: int) -> Sample:
        return self.get(index)

    def problems(self, index: int) -> list[str]:
        """Every problem of sample `index` (all tasks are tried, not only the first failure)."""
        sample_id = self.ids[index]
        found: list[str] = []
        image_hw = None
        try:
            image_hw = self.load_image(sample_id).shape[:2]
        except DataError as err:
            found.append(str(err))
        for task in self.tasks:
            try:
                value = self.load_task(task, sample_id)
                if image_hw is not None:
                    self.check_value(task, value, image_hw, sample_id)
            except DataError as err:
                found.append(str(err))
        return found

    def header_files(self, sample_id: str) -> list[tuple[str, Path]]:
        """(what, path) of every file sample `sample_id` reads for the enabled tasks, the image first."""
        return [("image", self.image_path(sample_id))] + [(t, self.task_path(t, sample_id)) for t in self.tasks]

    def check_headers(self, index: int) -> list[str]:
        """What the files' headers alone show wrong with sample `index` -- a missing, unidentifiable or truncated
        file, a label map of another size than its image -- without decoding a pixel (`train` runs this over every
        sample before step 1; `problems` decodes everything)."""
        found: list[str] = []
        image_hw = None
        seen: set[Path] = set()
        for what, path in self.header_files(self.ids[index]):
            if path in seen:  # one file serving two tasks (PASCAL-Context's LabelMap: edge and the normals mask)
                continue
            seen.add(path)
            try:
                hw = header_size(path, what=what)
            except DataError as err:
                found.append(str(err))
                continue
            if what == "image":
                image_hw = hw
            elif hw is not None and image_hw is not None and hw != image_hw:
                found.append(f"{path}: {what} is {hw[0]}x{hw[1]} but its image is {image_hw[0]}x{image_hw[1]} "
                             "(wrong shape)")
        return found

    def describe(self) -> dict[str, Any]:
        return {"format": self.format, "root": str(self.root), "split": self.split, "tasks": self.tasks,
                "num_samples": len(self)}
