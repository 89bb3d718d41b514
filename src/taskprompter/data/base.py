"""What the three readers share: split ids, per-task loaders, shape checks, transforms, RNG, problem reports.

A reader defines `load_image(id)` and one `load_<task>(id, image_hw)` per supported task; each returns a raw
NumPy array (see `sample.py`) or raises a DataError naming the file. Only the enabled tasks' files are read, and of
those only the ones a sample is labelled for (partially labelled data, `partial.py`): a task a sample is not
labelled for is filled with `no_label(task, image_hw)` and its file is never opened.
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
from .partial import UNSPLITTABLE, LabelledSetting, SplitRecord, split_record
from .sample import NO_LABEL, Sample, check_shape, new_meta, to_tensors

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
    """Base of the readers: `ds[i]` -> torch sample; `ds.load_raw(i)` -> NumPy sample before transforms.

    ``labelled_tasks``: which tasks each sample is labelled for -- "auto" (the dataset folder's
    ``labelled_tasks.json`` if there is one), "all", a record path, or {id: tasks} of this split (`partial.py`);
    ``listed_ids``: the split's ids before a reader's own filtering (Cityscapes-3D's ``drop_empty``), which the
    record must name. ``self.labelled`` is the split's record, None when every sample is labelled for every task."""

    format: str = ""
    task_channels: dict[str, int] = {}

    def __init__(self, root: Path, split: str, tasks: Sequence[str], ids: list[str],
                 transform: Transform | None = None, edge_protocol: str = "train", *,
                 labelled_tasks: LabelledSetting = "auto", listed_ids: Sequence[str] | None = None) -> None:
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
        self.labelled: SplitRecord | None = split_record(labelled_tasks, root=root, split=split,
                                                         ids=list(ids if listed_ids is None else listed_ids),
                                                         tasks=self.task_channels)
        for task in (t for t in UNSPLITTABLE if t in self.tasks and self.labelled is not None):
            missing = [i for i in ids if task not in self.labelled[i]]
            if missing:
                raise DataError(f"{task} cannot be partially labelled: the labelled-tasks record of split {split!r} "
                                f"at {root} leaves it out for {len(missing)} image(s) (e.g. {missing[0]!r}), and an "
                                f"empty {task} record would train \"no objects here\"; label {task} for every "
                                "image of the split, or train without it")

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

    # -- partial labels -----------------------------------------------------------------------------------
    def labelled_flags(self, sample_id: str) -> dict[str, bool]:
        """{enabled task: whether sample `sample_id` is labelled for it} (all True without a record)."""
        if self.labelled is None:
            return dict.fromkeys(self.tasks, True)
        return {t: t in self.labelled[sample_id] for t in self.tasks}

    def labelled_tasks_of(self, sample_id: str) -> list[str]:
        """The enabled tasks sample `sample_id` is labelled for: the only ones whose files it reads."""
        return [t for t, flag in self.labelled_flags(sample_id).items() if flag]

    def no_label_value(self, task: str) -> float:
        """The value every pixel of a target holds where it is invalid (`sample.NO_LABEL`; readers whose task
        encodes invalid pixels otherwise override this)."""
        if task not in NO_LABEL:
            raise DataError(f"{task} has no 'no label' value: it cannot be partially labelled")
        return NO_LABEL[task]

    def no_label(self, task: str, image_hw: tuple[int, int]) -> np.ndarray:
        """The raw target of a task a sample is not labelled for: a map of `no_label_value` (normals (H, W, 3)
        float32, depth (H, W) float32, class / edge / saliency maps (H, W) int64)."""
        value = self.no_label_value(task)
        if task == "normals":
            return np.full((*image_hw, 3), value, dtype=np.float32)
        if task == "depth":
            return np.full(image_hw, value, dtype=np.float32)
        return np.full(image_hw, value, dtype=np.int64)

    # -- samples ------------------------------------------------------------------------------------------
    def load_raw(self, index: int) -> Sample:
        """Read sample `index` from disk (no transform). Raises DataError on the first problem. Tasks the sample is
        not labelled for are not read: they hold `no_label`, and ``raw["labelled"]`` says which."""
        sample_id = self.ids[index]
        image = self.load_image(sample_id)
        raw: Sample = {"image": image}
        labelled = self.labelled_flags(sample_id)
        for task in self.tasks:
            if not labelled[task]:
                raw[task] = self.no_label(task, image.shape[:2])
                continue
            value = self.load_task(task, sample_id)
            self.check_value(task, value, image.shape[:2], sample_id)
            raw[task] = value
        raw["meta"] = new_meta(sample_id, image.shape[:2])
        raw["labelled"] = labelled
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
        for task in self.labelled_tasks_of(sample_id):
            try:
                value = self.load_task(task, sample_id)
                if image_hw is not None:
                    self.check_value(task, value, image_hw, sample_id)
            except DataError as err:
                found.append(str(err))
        return found

    def header_files(self, sample_id: str) -> list[tuple[str, Path]]:
        """(what, path) of every file sample `sample_id` reads for the enabled tasks it is labelled for, the image
        first."""
        return [("image", self.image_path(sample_id))] + [(t, self.task_path(t, sample_id))
                                                          for t in self.labelled_tasks_of(sample_id)]

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
        out = {"format": self.format, "root": str(self.root), "split": self.split, "tasks": self.tasks,
               "num_samples": len(self)}
        if self.labelled is not None:
            out["labelled"] = {t: sum(t in self.labelled[i] for i in self.ids) for t in self.tasks}
        return out
