"""Partially labelled data: which tasks each image of a split is labelled for.

Real multi-task datasets are rarely labelled for every task. MTPSL (Li, Liu & Bilen, "Learning Multiple Dense
Prediction Tasks from Partially Annotated Data", CVPR 2022) and DiffusionMTL (Ye & Xu, CVPR 2024) train NYUD-v2 and
PASCAL-Context with each training image labelled for one task ("one-label") or a random non-empty subset of the
tasks ("random-labels"). Which tasks an image is labelled for is a small JSON record in the dataset folder:

    <root>/labelled_tasks.json
    {"format": "taskprompter.labelled_tasks", "version": 1,
     "splits": {"train": {"<sample id>": ["semseg", "normals"], ...}}}

A split the record does not list is fully labelled. A listed split names every id of the split, each with the
(possibly empty) list of tasks it is labelled for; a task left out is not labelled for that image, its file is never
opened, and the reader fills its target with the task's "no label" value (`TaskDataset.no_label`). 3-D detection
cannot be partially labelled (an empty box list would train "no objects here").

Which record a reader uses (config ``data.labelled_tasks``, reader keyword ``labelled_tasks``): ``"auto"`` -- the
dataset folder's ``labelled_tasks.json`` if it exists, else every task labelled; ``"all"`` -- ignore any record;
a path -- that record file; or a mapping {sample id: tasks} for the reader's split (in memory).

`import_mtpsl` converts the split files of MTPSL and the DiffusionMTL line of code (see its docstring for what was
and was not verified about their format); `one_label` / `random_labels` draw the two settings for synthetic data.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError
from ..tasks import TASK_ORDER

RECORD_NAME = "labelled_tasks.json"
RECORD_FORMAT = "taskprompter.labelled_tasks"
RECORD_VERSION = 1
SETTINGS = ("auto", "all")  # the two words data.labelled_tasks takes besides a path
UNSPLITTABLE = ("3ddet",)  # tasks that cannot be partially labelled (an empty record is a label: "no objects")

SplitRecord = dict[str, frozenset[str]]  # sample id -> the tasks it is labelled for
LabelledSetting = str | os.PathLike | Mapping[str, Iterable[str]] | None  # "auto" | "all" | path | mapping


# ------------------------------------------------------------------------------------------------- the record file


def _shown(ids: Sequence[str], limit: int = 5) -> str:
    return ", ".join(repr(i) for i in ids[:limit]) + (f" ... ({len(ids)} in all)" if len(ids) > limit else "")


def _task_set(value: Any, *, where: str, known: Sequence[str]) -> frozenset[str]:
    if not isinstance(value, (list, tuple)) or not all(isinstance(t, str) for t in value):
        raise DataError(f"{where}: must be a list of task names, got {value!r}")
    unknown = [t for t in value if t not in known]
    if unknown:
        raise DataError(f"{where}: unknown task {unknown[0]!r} (value {list(value)!r}); known tasks: {list(known)}")
    return frozenset(value)


def read_labelled_tasks(path: str | os.PathLike, *, tasks: Iterable[str] | None = None
                        ) -> dict[str, SplitRecord]:
    """{split: {sample id: tasks labelled}} of a record file, checked: its format and version, and every task a
    name of ``tasks`` (default: every task name). Every problem is a DataError naming the file (and the split, id
    and value). Which ids a split holds is checked by the reader (`check_split_record`)."""
    path = Path(path)
    known = list(TASK_ORDER if tasks is None else tasks)
    if not path.is_file():
        raise DataError(f"missing labelled-tasks record: {path} does not exist")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise DataError(f"unreadable labelled-tasks record: {path} ({type(err).__name__}: {err})") from err
    if not isinstance(data, dict) or data.get("format") != RECORD_FORMAT:
        found = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise DataError(f"{path}: not a labelled-tasks record (\"format\" must be {RECORD_FORMAT!r}, got {found!r}; "
                        "see docs/data.md, 'Partially labelled data')")
    if data.get("version") != RECORD_VERSION:
        raise DataError(f"{path}: labelled-tasks record version {data.get('version')!r}; this taskprompter reads "
                        f"version {RECORD_VERSION}")
    extra = sorted(set(data) - {"format", "version", "splits"})
    if extra:
        raise DataError(f"{path}: unknown key(s) {extra}; a record holds format, version and splits")
    splits = data.get("splits")
    if not isinstance(splits, dict):
        raise DataError(f"{path}: \"splits\" must map split names to {{sample id: [tasks]}}, got {splits!r}")
    out: dict[str, SplitRecord] = {}
    for split, samples in splits.items():
        if not isinstance(samples, dict):
            raise DataError(f"{path}: split {split!r} must map sample ids to lists of tasks, got "
                            f"{type(samples).__name__}")
        out[split] = {str(sid): _task_set(value, where=f"{path}: split {split!r}, id {sid!r}", known=known)
                      for sid, value in samples.items()}
    return out


def write_labelled_tasks(path: str | os.PathLike, splits: Mapping[str, Mapping[str, Iterable[str]]]) -> Path:
    """Write a record (atomically: a temporary file, then a rename), tasks in the canonical order, ids as given."""
    path = Path(path)
    blocks = []
    for split, samples in splits.items():
        rows = []
        for sid, value in samples.items():
            tasks = list(value)
            _task_set(tasks, where=f"split {split!r}, id {sid!r}", known=TASK_ORDER)
            rows.append(f"  {json.dumps(str(sid))}: {json.dumps([t for t in TASK_ORDER if t in tasks])}")
        blocks.append(f" {json.dumps(str(split))}: " + ("{\n" + ",\n".join(rows) + "\n }" if rows else "{}"))
    head = f'{{"format": {json.dumps(RECORD_FORMAT)}, "version": {RECORD_VERSION}, "splits": {{'
    text = head + ("\n" + ",\n".join(blocks) + "\n}}" if blocks else "}}")  # one line per image
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def check_split_record(record: Mapping[str, frozenset[str]], ids: Sequence[str], *, split: str,
                       source: str) -> None:
    """A listed split must name every id of the split, and only those: a DataError naming ``source`` (the file)
    and the first ids missing or unknown."""
    listed = set(ids)
    missing = [i for i in ids if i not in record]
    if missing:
        raise DataError(f"{source}: split {split!r} lists {len(record)} of its {len(ids)} ids; missing "
                        f"{_shown(missing)} (a listed split names every id, with [] for an image without labels)")
    unknown = [i for i in record if i not in listed]
    if unknown:
        raise DataError(f"{source}: split {split!r} has no id {unknown[0]!r} (record ids not in the split: "
                        f"{_shown(unknown)})")


def record_path(root: str | os.PathLike) -> Path:
    """Where the record of a dataset folder lives (``auto`` looks here)."""
    return Path(root) / RECORD_NAME


def split_record(setting: LabelledSetting, *, root: Path, split: str, ids: Sequence[str],
                 tasks: Iterable[str]) -> SplitRecord | None:
    """The record of ``split`` for a reader (None: every task labelled) from the setting ``"auto"``, ``"all"``, a
    record path or an in-memory mapping {id: tasks}; checked against the split's ``ids`` and the reader's
    ``tasks`` (the names it knows)."""
    known = list(tasks)
    if setting is None or (isinstance(setting, str) and setting == "all"):
        return None
    if isinstance(setting, Mapping):
        record = {str(k): _task_set(list(v), where=f"labelled tasks of id {k!r}", known=known)
                  for k, v in setting.items()}
        check_split_record(record, ids, split=split, source="the labelled-tasks mapping")
        return record
    if isinstance(setting, str) and setting == "auto":
        path = record_path(root)
        if not path.is_file():
            return None
    else:
        path = Path(setting).expanduser()
    splits = read_labelled_tasks(path, tasks=known)
    if split not in splits:
        return None
    check_split_record(splits[split], ids, split=split, source=str(path))
    return splits[split]


def labelled_counts(record: Mapping[str, frozenset[str]], tasks: Iterable[str]) -> dict[str, int]:
    """{task: how many samples of the record are labelled for it}."""
    return {t: sum(t in labelled for labelled in record.values()) for t in tasks}


def summary_lines(splits: Mapping[str, Mapping[str, frozenset[str]]], tasks: Iterable[str]) -> list[str]:
    """One line per split of a record: its size and the labelled count of every task."""
    tasks = list(tasks)
    lines = []
    for split, record in splits.items():
        counts = labelled_counts(record, tasks)
        per_image = np.array([len(v & set(tasks)) for v in record.values()] or [0])
        cells = ", ".join(f"{t} {n}" for t, n in counts.items())
        lines.append(f"{split}: {len(record)} images, labelled per task: {cells}; tasks per image "
                     f"{int(per_image.min())}..{int(per_image.max())} (mean {per_image.mean():.2f})")
    return lines


# ------------------------------------------------------------------------------------------------- the two settings


def one_label(ids: Sequence[str], tasks: Sequence[str], *, seed: int) -> SplitRecord:
    """MTPSL's "one-label" setting: every image labelled for exactly one task, the tasks balanced (counts differ
    by at most 1) -- a round-robin over ``tasks`` put in a seeded random order."""
    if not tasks:
        raise ValueError("one_label needs at least one task")
    cycle = [tasks[i % len(tasks)] for i in range(len(ids))]
    order = np.random.default_rng([int(seed), 0x0AE1]).permutation(len(ids))
    return {sid: frozenset([cycle[k]]) for sid, k in zip(ids, order.tolist())}


def random_labels(ids: Sequence[str], tasks: Sequence[str], *, seed: int, p: float = 0.5) -> SplitRecord:
    """MTPSL's "random-labels" setting: every task labelled independently with probability ``p``, an image's draw
    repeated until it has at least one task."""
    if not tasks:
        raise ValueError("random_labels needs at least one task")
    rng = np.random.default_rng([int(seed), 0x0AE2])
    out: SplitRecord = {}
    for sid in ids:
        draw = rng.random(len(tasks)) < p
        while not draw.any():
            draw = rng.random(len(tasks)) < p
        out[sid] = frozenset(t for t, d in zip(tasks, draw.tolist()) if d)
    return out


PARTIAL_SETTINGS = {"one": one_label, "random": random_labels}


# ------------------------------------------------------------------------------------------------- MTPSL importer

# The task order of the columns of the MTPSL / DiffusionMTL files: NYUv2 `tasks = ['semantic', 'depth', 'normal']`
# (MTPSL nyu_*.py); PASCAL-Context the released TaskPrompter order filtered to its five tasks.
MTPSL_COLUMNS: dict[str, tuple[str, ...]] = {
    "nyud": ("semseg", "depth", "normals"),
    "pascal_context": ("semseg", "human_parts", "sal", "normals", "edge"),
}
TASK_ALIASES = {"semantic": "semseg", "normal": "normals"}  # MTPSL's names


def load_mtpsl_file(path: str | os.PathLike, *, allow_pickle: bool = False) -> Any:
    """The object stored in an MTPSL / DiffusionMTL split file: ``.pth`` / ``.pt`` (torch.load, tensors only unless
    ``allow_pickle``), ``.npy`` (NumPy; a pickled dict needs ``allow_pickle``) or ``.json`` (the same structures
    written as JSON)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"missing MTPSL split file: {path} does not exist")
    suffix = path.suffix.lower()
    hint = (f"{path}: this file can only be read with Python's pickle, which can run code: pass --allow-pickle "
            "(allow_pickle=True) if you trust its source")
    if suffix in (".pth", ".pt", ".tar"):
        import pickle

        import torch

        try:
            return torch.load(path, map_location="cpu", weights_only=not allow_pickle)
        except pickle.UnpicklingError as err:
            if allow_pickle:
                raise DataError(f"unreadable MTPSL split file: {path} ({err})") from err
            raise DataError(hint) from err
        except Exception as err:  # torch raises RuntimeError, EOFError, zipfile errors ... for bad files
            raise DataError(f"unreadable MTPSL split file: {path} ({type(err).__name__}: {err})") from err
    if suffix == ".npy":
        try:
            value = np.load(path, allow_pickle=allow_pickle)
        except ValueError as err:
            if "allow_pickle" in str(err):
                raise DataError(hint) from err
            raise DataError(f"unreadable MTPSL split file: {path} ({err})") from err
        except Exception as err:
            raise DataError(f"unreadable MTPSL split file: {path} ({type(err).__name__}: {err})") from err
        return value.item() if value.dtype == object and value.ndim == 0 else value
    if suffix == ".json":
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as err:
            raise DataError(f"unreadable MTPSL split file: {path} ({type(err).__name__}: {err})") from err
    raise DataError(f"{path}: unknown MTPSL split file type {suffix!r}; expected .pth, .pt, .npy or .json")


def _array(value: Any) -> np.ndarray | None:
    """A tensor / array / nested list as a NumPy array, or None when it is not array-like."""
    if hasattr(value, "detach"):  # a torch tensor
        return value.detach().cpu().numpy()
    if isinstance(value, np.ndarray):
        return value
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, (int, float, bool, np.number)) or
                                                          _array(v) is not None for v in value):
        try:
            return np.asarray(value, dtype=np.float64)
        except (TypeError, ValueError):
            return None
    return None


def _flags(value: Any, *, where: str, columns: Sequence[str]) -> frozenset[str]:
    """A 0/1 vector over ``columns`` -> the tasks whose entry is 1."""
    arr = _array(value)
    if arr is None or arr.ndim != 1:
        raise DataError(f"{where}: expected a vector of {len(columns)} 0/1 task flags, got {value!r}")
    if arr.shape[0] != len(columns):
        raise DataError(f"{where}: {arr.shape[0]} task flags, but the columns are {len(columns)} tasks "
                        f"{list(columns)} (give --tasks in the file's column order)")
    if not np.isin(arr, (0, 1)).all():
        raise DataError(f"{where}: task flags must be 0 or 1, got {arr.tolist()}")
    return frozenset(t for t, f in zip(columns, arr.tolist()) if f == 1)


def _sample_id(key: Any, ids: Sequence[str], id_set: set[str], *, where: str) -> str:
    """An MTPSL key -> a sample id: an id of the split as it is, an integer as the index into the split's ids."""
    if isinstance(key, str) and key in id_set:
        return key
    arr = _array([key]) if not isinstance(key, str) else None
    if arr is not None and arr.size == 1 and float(arr.ravel()[0]).is_integer():
        index = int(arr.ravel()[0])
        if not 0 <= index < len(ids):
            raise DataError(f"{where}: image index {index} outside the split's {len(ids)} images")
        return ids[index]
    raise DataError(f"{where}: {key!r} is neither an id of the split nor an image index")


def import_mtpsl(obj: Any, *, ids: Sequence[str], columns: Sequence[str], source: str) -> SplitRecord:
    """An MTPSL / DiffusionMTL split (the object `load_mtpsl_file` returns) -> {sample id: tasks} for a split whose
    ids, in the split file's order, are ``ids``; ``columns`` names the file's task columns in order
    (`MTPSL_COLUMNS`). Three structures are read:

    1. ``{"labels_weights": (N, T) tensor}`` (or the bare (N, T) array): row i = image index i of the split, column
       j = 1 when the image is labelled for ``columns[j]``. MTPSL's ``data/{nyuv2,cityscapes}_settings/
       {onelabel,randomlabels}.pth`` and the NYUD files of the DiffusionMTL line (``data/ssl_mapping/nyud_low/``).
    2. ``{image name: T flags}``: the PASCAL-Context ``data/ssl_mapping/pascal/new_{onelabel,randomlabels}.pth`` of
       the DiffusionMTL line, looked up by ``meta['img_name']`` (the PASCAL id, e.g. ``2008_000002``).
    3. ``{task: image names or indices}``: the PASCAL-Context ``data/ssl_mapping/pascal/{onelabel,randomlabels}.npy``
       (a pickled dict, ``img_name in save_dict[task]``).

    Verified from stored sources (VICO-UoE/MTPSL ``nyu_mtl_sl.py``, ``cityscapes_mtl_sl.py``,
    ``dataset/nyuv2ssl.py``; a DiffusionMTL-derived ``losses/loss_schemes.py`` and ``data/nyud.py``): the file
    names, ``torch.load(...)['labels_weights']`` indexed by the dataset index (MTAN's preprocessed NYUv2,
    ``{index}.npy``), ``w[t_idx] == 1`` meaning labelled with ``t_idx`` the position in the task list, the PASCAL
    dict keyed by image name, and the npy dict of tasks. Not verified (the binary files themselves could not be
    read): the dtype of the flags (any 0/1 numbers are accepted), whether row i of the NYUv2 matrix is the i-th id
    of NYUD-v2's ``gt_sets/train.txt`` (MTAN's preprocessed order; taken so here), and the PASCAL column order
    (taken as the released task order semseg, human_parts, sal, normals, edge; pass ``columns`` if yours differs).
    """
    id_set = set(ids)
    columns = [TASK_ALIASES.get(c, c) for c in columns]
    if isinstance(obj, Mapping) and "labels_weights" in obj:
        obj = obj["labels_weights"]
    matrix = _array(obj) if not isinstance(obj, Mapping) else None
    record: SplitRecord = {}
    if matrix is not None:
        if matrix.ndim != 2:
            raise DataError(f"{source}: expected an (images x tasks) matrix of 0/1 flags, got shape {matrix.shape}")
        if matrix.shape[0] != len(ids):
            raise DataError(f"{source}: {matrix.shape[0]} rows (images), but the split has {len(ids)} ids (row i is "
                            "the split's i-th id): is it the split file of this dataset and split?")
        for i, row in enumerate(matrix):
            record[ids[i]] = _flags(row, where=f"{source}: row {i} (id {ids[i]!r})", columns=columns)
        return record
    if not isinstance(obj, Mapping):
        raise DataError(f"{source}: expected a dict or an (images x tasks) matrix, got {type(obj).__name__}")
    keys = [TASK_ALIASES.get(k, k) if isinstance(k, str) else k for k in obj]
    if keys and all(isinstance(k, str) and k in TASK_ORDER for k in keys):  # {task: names or indices}
        record = {sid: frozenset() for sid in ids}
        for task, members in zip(keys, obj.values()):
            arr = _array(members)
            items = arr.ravel().tolist() if arr is not None else list(members)
            for item in items:
                sid = _sample_id(item, ids, id_set, where=f"{source}: task {task!r}")
                record[sid] = record[sid] | {task}
        return record
    for key, value in obj.items():  # {image name: flags}
        sid = _sample_id(key, ids, id_set, where=source)
        record[sid] = _flags(value, where=f"{source}: image {key!r}", columns=columns)
    return record
