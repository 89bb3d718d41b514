"""Cityscapes-3D as the released Swin-B TaskPrompter reads it (`Cityscapes/`), without modification.

    leftImg8bit/<split>/<city>/<stem>leftImg8bit.png      RGB
    gtFine/<split>/<city>/<stem>gtFine_labelIds.png       labelIds 0..33 -> the 19 train ids, every other id 255
    disparity/<split>/<city>/<stem>disparity.png          uint16: d = (v - 1) / 256 pixels for v > 0, v = 0 -> -1
    gtBbox3d/<split>/<city>/<stem>gtBbox3d.json           camera (`sensor`), 3-D boxes, 2-D ignore regions

stem = `<city>_<seq>_<frame>_`; a sample's id is the stem without the trailing underscore. Ids are sorted (the
released code lists files with an unsorted `os.walk`). Labels stay at the image's own resolution; disparity stays
in the pixels of the stored image (swin-cityscapes3d.md section 2). Two released quirks are options:

- ``rail_track_sky`` (default True, as released): the disparity is set to 0 where the raw labelId is 10. The
  released code meant the sky (train id 10); labelId 10 is rail track. False leaves the disparity as stored.
- ``drop_empty`` (default: True for the train split only, as released): training images without any box of the six
  classes are left out. The released code also writes `CS3D_bad_samples_train.*` into the working directory; this
  reader writes nothing anywhere (the decision is kept in memory, per file state).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError
from ..label_sets import CITYSCAPES3D_DET_CLASSES, CITYSCAPES_LABEL_IDS
from ..tasks import DATASET_SPECS, IGNORE_INDEX
from .base import TaskDataset, Transform, resolve_root
from .fileio import header_size, read_image, read_label_png
from .geometry import EULER_MODES, Camera, amodal_boxes, boxes_to_sensor, sensor_corners, xywh_to_xyxy
from .partial import LabelledSetting
from .sample import Sample, check_shape

NUM_LABEL_IDS = 34  # Cityscapes labelIds 0..33 (license plate, -1, is never stored in a labelIds PNG)
RAIL_TRACK_ID = 10
TRAIN_ID = np.full(NUM_LABEL_IDS, IGNORE_INDEX, dtype=np.int64)  # labelId -> train id
TRAIN_ID[list(CITYSCAPES_LABEL_IDS)] = np.arange(len(CITYSCAPES_LABEL_IDS))
DET_CLASS = {name: i for i, name in enumerate(CITYSCAPES3D_DET_CLASSES)}
INVALID_DISPARITY = -1.0
# the files of a sample: folder, file-name suffix after the stem
FILES = {"image": ("leftImg8bit", "leftImg8bit.png"), "semseg": ("gtFine", "gtFine_labelIds.png"),
         "depth": ("disparity", "disparity.png"), "3ddet": ("gtBbox3d", "gtBbox3d.json")}
# the per-object fields of a 3ddet record (n = objects of the six classes; float64 except label / instance_id)
OBJECT_FIELDS = ("label", "instance_id", "center_V", "dimensions", "rotation", "box_modal", "box_amodal",
                 "center_S", "size_S", "center_I", "angles", "occlusion", "truncation")

_EMPTY_CACHE: dict[str, tuple[int, int, bool]] = {}  # JSON path -> (mtime_ns, size, has a box of the six classes)


def list_splits(root: Path) -> list[str]:
    """The split folders under ``leftImg8bit/`` of a Cityscapes tree (``root`` or ``root/Cityscapes``)."""
    for base in (root, root / "Cityscapes"):
        if (base / "leftImg8bit").is_dir():
            return sorted(p.name for p in (base / "leftImg8bit").iterdir() if p.is_dir())
    return []


def _numbers(value: Any, n: int, what: str) -> np.ndarray:
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{what} must be {n} numbers, got {value!r}") from err
    if arr.shape != (n,) or not np.isfinite(arr).all():
        raise ValueError(f"{what} must be {n} finite numbers, got {value!r}")
    return arr


def parse_annotation(data: Any, *, euler: str = "fixed") -> dict[str, Any]:
    """A gtBbox3d JSON (parsed) -> the 3ddet record: the objects of the six classes as arrays, the ignore regions,
    the camera. Raises ValueError naming the key that is missing or wrong (`load_3ddet` adds the file)."""
    if not isinstance(data, dict):
        raise ValueError(f"the file must hold a JSON object, got {type(data).__name__}")
    for key in ("imgWidth", "imgHeight", "sensor", "objects"):
        if key not in data:
            raise ValueError(f"no key {key!r}")
    try:
        size = (int(data["imgHeight"]), int(data["imgWidth"]))
    except (TypeError, ValueError) as err:
        raise ValueError(f"'imgHeight' / 'imgWidth' must be integers, got {data['imgHeight']!r}, "
                         f"{data['imgWidth']!r}") from err
    camera = Camera.from_json(data["sensor"])
    if not isinstance(data["objects"], list):
        raise ValueError(f"'objects' must be a list, got {type(data['objects']).__name__}")
    rows: dict[str, list] = {k: [] for k in ("label", "instance_id", "center_V", "dimensions", "rotation",
                                             "box_modal", "box_amodal", "occlusion", "truncation")}
    for i, obj in enumerate(data["objects"]):
        where = f"objects[{i}]"
        if not isinstance(obj, dict) or "label" not in obj:
            raise ValueError(f"{where} has no key 'label'")
        if obj["label"] not in DET_CLASS:  # other classes (e.g. person-like labels) are not detected
            continue
        try:
            box2d, box3d = obj["2d"], obj["3d"]
            modal, amodal = box2d["modal"], box2d["amodal"]
            center, dims, rotation = box3d["center"], box3d["dimensions"], box3d["rotation"]
        except (KeyError, TypeError) as err:
            raise ValueError(f"{where} ({obj['label']}) has no key {err}") from err
        rows["label"].append(DET_CLASS[obj["label"]])
        rows["instance_id"].append(int(obj.get("instanceId", -1)))
        rows["center_V"].append(_numbers(center, 3, f"{where}.3d.center"))
        rows["dimensions"].append(_numbers(dims, 3, f"{where}.3d.dimensions"))
        q = _numbers(rotation, 4, f"{where}.3d.rotation")
        if not np.linalg.norm(q) > 0:
            raise ValueError(f"{where}.3d.rotation is the zero quaternion")
        rows["rotation"].append(q)
        rows["box_modal"].append(xywh_to_xyxy(_numbers(modal, 4, f"{where}.2d.modal")))
        rows["box_amodal"].append(xywh_to_xyxy(_numbers(amodal, 4, f"{where}.2d.amodal")))
        rows["occlusion"].append(float(obj.get("occlusion", 0.0)))
        rows["truncation"].append(float(obj.get("truncation", 0.0)))
    ignore = data.get("ignore", [])
    if not isinstance(ignore, list):
        raise ValueError(f"'ignore' must be a list, got {type(ignore).__name__}")
    regions = []
    for i, region in enumerate(ignore):
        if not isinstance(region, dict) or "2d" not in region:
            raise ValueError(f"ignore[{i}] has no key '2d'")
        regions.append(xywh_to_xyxy(_numbers(region["2d"], 4, f"ignore[{i}].2d")))
    n = len(rows["label"])
    shapes = {"center_V": 3, "dimensions": 3, "rotation": 4, "box_modal": 4, "box_amodal": 4}
    record: dict[str, Any] = {
        "label": np.asarray(rows["label"], dtype=np.int64),
        "instance_id": np.asarray(rows["instance_id"], dtype=np.int64),
        **{k: np.asarray(rows[k], dtype=np.float64).reshape(n, c) for k, c in shapes.items()},
        "occlusion": np.asarray(rows["occlusion"], dtype=np.float64),
        "truncation": np.asarray(rows["truncation"], dtype=np.float64),
    }
    boxes = boxes_to_sensor(record["center_V"], record["dimensions"], record["rotation"], camera, euler=euler)
    record.update(center_S=boxes.center, size_S=boxes.size.copy(), center_I=boxes.center_image, angles=boxes.angles)
    record["ignore"] = np.asarray(regions, dtype=np.float64).reshape(-1, 4)
    record["K"] = camera.K
    record["sensor_T_ISO_8855"] = np.array(camera.sensor_T_ISO_8855, dtype=np.float64)
    record["baseline"] = np.array(camera.baseline, dtype=np.float64)
    record["image_size"] = np.array(size, dtype=np.int64)
    return record


def record_camera(record: dict[str, Any]) -> Camera:
    """The camera of a 3ddet record (its K, sensor_T_ISO_8855 and baseline; NumPy arrays or tensors)."""
    k = np.asarray(record["K"], dtype=np.float64)
    return Camera(fx=float(k[0, 0]), fy=float(k[1, 1]), u0=float(k[0, 2]), v0=float(k[1, 2]),
                  baseline=float(np.asarray(record["baseline"])),
                  sensor_T_ISO_8855=np.asarray(record["sensor_T_ISO_8855"], dtype=np.float64))


def projected_amodal(record: dict[str, Any], camera: Camera) -> np.ndarray:
    """The amodal boxes (n, 4) xyxy that the 3-D boxes of a record project to (clamped to its image)."""
    corners = sensor_corners(record["center_V"], record["dimensions"], record["rotation"], camera)
    return amodal_boxes(corners, camera, tuple(int(x) for x in record["image_size"]))


class Cityscapes3D(TaskDataset):
    """Cityscapes-3D multi-task reader: semseg (19 train ids), depth (disparity in pixels, -1 = invalid), 3ddet
    (the boxes of car, truck, bus, train, motorcycle, bicycle).

    ``euler``: which three angles the records carry ("fixed" or "faithful", see `geometry.sensor_angles`).
    ``labelled_tasks``: partial labels (`TaskDataset`); a record names the split's ids before ``drop_empty``, an
    unlabelled disparity is -1 (invalid) everywhere, and 3ddet cannot be partially labelled."""

    format = "cityscapes3d"
    task_channels = dict(DATASET_SPECS[format].tasks)

    def __init__(self, root: str | Path, split: str, tasks: Sequence[str], transform: Transform | None = None,
                 edge_protocol: str = "train", *, rail_track_sky: bool = True, drop_empty: bool | None = None,
                 euler: str = "fixed", labelled_tasks: LabelledSetting = "auto") -> None:
        if euler not in EULER_MODES:
            raise ValueError(f"euler must be one of {EULER_MODES}, got {euler!r}")
        root = resolve_root(root, marker="leftImg8bit", subdir="Cityscapes")
        images = root / "leftImg8bit" / split
        if not images.is_dir():
            raise DataError(f"missing split {split!r}: {images} does not exist; available splits: "
                            f"{list_splits(root)}")
        suffix = "_" + FILES["image"][1]
        self._city = {p.name[: -len(suffix)]: p.parent.name for p in images.glob(f"*/*{suffix}")}
        ids = listed = sorted(self._city)
        if not ids:
            raise DataError(f"no images in {images} (expected <city>/<city>_<seq>_<frame>{suffix})")
        self.rail_track_sky = rail_track_sky
        self.euler = euler
        self.drop_empty = split == "train" if drop_empty is None else bool(drop_empty)
        if self.drop_empty:
            self.root, self.split = root, split  # `_path` needs them before TaskDataset sets them
            ids = [i for i in ids if self._has_boxes(i)]
        super().__init__(root, split, tasks, ids, transform, edge_protocol, labelled_tasks=labelled_tasks,
                         listed_ids=listed)  # a labelled-tasks record names the ids before drop_empty

    # -- paths --------------------------------------------------------------------------------------------
    def _path(self, kind: str, sample_id: str) -> Path:
        folder, suffix = FILES[kind]
        return self.root / folder / self.split / self._city[sample_id] / f"{sample_id}_{suffix}"

    def image_path(self, sample_id: str) -> Path:
        return self._path("image", sample_id)

    def task_path(self, task: str, sample_id: str) -> Path:
        return self._path(task, sample_id)

    def label_ids_path(self, sample_id: str) -> Path:
        return self._path("semseg", sample_id)

    def header_files(self, sample_id: str) -> list[tuple[str, Path]]:
        """The PNGs of a sample (the JSON has no image header: `check_headers` parses it)."""
        labelled = self.labelled_tasks_of(sample_id)
        files = [("image", self.image_path(sample_id))]
        files += [(t, self.task_path(t, sample_id)) for t in labelled if t != "3ddet"]
        if "depth" in labelled and self.rail_track_sky and "semseg" not in labelled:
            files.append(("labelIds (rail track mask of the disparity)", self.label_ids_path(sample_id)))
        return files

    # -- the drop_empty filter ----------------------------------------------------------------------------
    def _has_boxes(self, sample_id: str) -> bool:
        """Whether the sample's JSON holds a box of the six classes. A missing or unreadable JSON keeps the sample
        (reading it then raises the DataError naming the file, and check-data reports it)."""
        path = self._path("3ddet", sample_id)
        try:
            stat = path.stat()
        except OSError:
            return True
        key = str(path.resolve())
        cached = _EMPTY_CACHE.get(key)
        if cached is not None and cached[:2] == (stat.st_mtime_ns, stat.st_size):
            return cached[2]
        try:
            objects = json.loads(path.read_text(encoding="utf-8")).get("objects", [])
            found = any(isinstance(o, dict) and o.get("label") in DET_CLASS for o in objects)
        except (OSError, ValueError, AttributeError, TypeError):
            return True
        _EMPTY_CACHE[key] = (stat.st_mtime_ns, stat.st_size, found)
        return found

    # -- loaders ------------------------------------------------------------------------------------------
    def load_image(self, sample_id: str) -> np.ndarray:
        return read_image(self.image_path(sample_id), mode="RGB").astype(np.float32)

    def load_label_ids(self, sample_id: str, *, task: str = "semseg") -> np.ndarray:
        """The raw labelIds (H, W) int64, checked to lie in 0..33."""
        path = self.label_ids_path(sample_id)
        ids = read_label_png(path, what=f"{task} (gtFine labelIds)")
        bad = (ids < 0) | (ids >= NUM_LABEL_IDS)
        if bad.any():
            found = np.unique(ids[bad])
            shown = ", ".join(str(int(v)) for v in found[:8]) + (" ..." if found.size > 8 else "")
            raise DataError(f"{path}: {task} labelId value(s) {shown} outside the Cityscapes labelIds "
                            f"0..{NUM_LABEL_IDS - 1} in {int(bad.sum())} pixel(s)")
        return ids

    def load_semseg(self, sample_id: str) -> np.ndarray:
        return TRAIN_ID[self.load_label_ids(sample_id)]

    def load_depth(self, sample_id: str) -> np.ndarray:
        """Disparity (H, W) float32 in the stored image's pixels: (v - 1) / 256, -1 where v = 0 (invalid); with
        ``rail_track_sky``, 0 where the labelId is 10 (the released quirk)."""
        path = self.task_path("depth", sample_id)
        stored = read_image(path, what="depth (disparity)")
        if stored.ndim != 2 or stored.dtype not in (np.uint16, np.int32, np.uint8):
            raise DataError(f"{path}: depth (disparity) must be a single-channel 16-bit PNG, got an array of "
                            f"shape {stored.shape} and type {stored.dtype}")
        if stored.dtype == np.uint8:
            raise DataError(f"{path}: depth (disparity) is an 8-bit PNG; Cityscapes stores 16-bit disparity "
                            "(v = 256 d + 1)")
        if (stored < 0).any() or (stored > 65535).any():
            raise DataError(f"{path}: depth (disparity) values outside 0..65535")
        stored = stored.astype(np.float32)
        disparity = np.where(stored > 0, (stored - 1.0) / 256.0, INVALID_DISPARITY).astype(np.float32)
        if self.rail_track_sky:
            ids = self.load_label_ids(sample_id, task="depth (rail track mask)")
            check_shape(ids, image_hw=disparity.shape, task="labelIds (rail track mask of the disparity)",
                        path=self.label_ids_path(sample_id))
            disparity[ids == RAIL_TRACK_ID] = 0.0
        return disparity

    def read_annotation(self, sample_id: str) -> Any:
        path = self.task_path("3ddet", sample_id)
        if not path.is_file():
            raise DataError(f"missing 3ddet (gtBbox3d JSON): {path} does not exist")
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as err:
            raise DataError(f"unreadable 3ddet (gtBbox3d JSON): {path} ({type(err).__name__}: {err})") from err

    def load_3ddet(self, sample_id: str) -> dict[str, Any]:
        """The record of the sample's boxes (see `parse_annotation` and docs/data.md)."""
        data = self.read_annotation(sample_id)
        try:
            return parse_annotation(data, euler=self.euler)
        except ValueError as err:
            raise DataError(f"{self.task_path('3ddet', sample_id)}: 3ddet: {err}") from err

    def no_label_value(self, task: str) -> float:
        """Disparity: -1 is invalid (0 is a valid, far disparity)."""
        return INVALID_DISPARITY if task == "depth" else super().no_label_value(task)

    # -- samples ------------------------------------------------------------------------------------------
    def check_value(self, task: str, value: Any, image_hw: tuple[int, int], sample_id: str) -> None:
        path = self.task_path(task, sample_id)
        if task != "3ddet":
            check_shape(value, image_hw=image_hw, task=task, path=path)
        elif tuple(int(x) for x in value["image_size"]) != tuple(image_hw):
            h, w = value["image_size"]
            raise DataError(f"{path}: 3ddet: imgHeight x imgWidth is {h}x{w} but its image is "
                            f"{image_hw[0]}x{image_hw[1]} (wrong size)")

    def load_raw(self, index: int) -> Sample:
        """Read sample ``index``; with 3ddet enabled, ``meta["camera"]`` holds the JSON's ``sensor`` block."""
        raw = super().load_raw(index)
        if "3ddet" in raw:
            raw["meta"]["camera"] = record_camera(raw["3ddet"]).to_json()
        return raw

    def check_headers(self, index: int) -> list[str]:
        """The PNG headers (`TaskDataset.check_headers`) and, with 3ddet, the JSON: present, parseable, its image
        size that of the image."""
        found = super().check_headers(index)
        if "3ddet" not in self.tasks:
            return found
        sample_id = self.ids[index]
        try:
            data = self.read_annotation(sample_id)
            if not isinstance(data, dict) or "imgHeight" not in data or "imgWidth" not in data:
                raise DataError(f"{self.task_path('3ddet', sample_id)}: 3ddet: no key 'imgHeight' / 'imgWidth'")
            hw = header_size(self.image_path(sample_id), what="image")
            if hw is not None and (data["imgHeight"], data["imgWidth"]) != hw:
                raise DataError(f"{self.task_path('3ddet', sample_id)}: 3ddet: imgHeight x imgWidth is "
                                f"{data['imgHeight']}x{data['imgWidth']} but its image is {hw[0]}x{hw[1]} "
                                "(wrong size)")
        except DataError as err:
            message = str(err)
            if message not in found:
                found.append(message)
        return found
