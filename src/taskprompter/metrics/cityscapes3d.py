"""The Cityscapes-3D detection score (mDS) as cityscapesScripts' `evalObjectDetection3d.py` computes it, on folders of
JSON files or on records in memory, and the writer of predictions in the official format.

    evaluate_cityscapes3d("Cityscapes/gtBbox3d/val", "preds", matching="modal")
    # {"mDS": ..., "mAP": ..., "per_class": {"car": {"AP", "DS", "Center_Dist", "Size_Similarity", "OS_Yaw",
    #  "OS_Pitch_Roll", "working_confidence", "num_gt"}, ...}, "matching": "modal", "num_images": ...,
    #  "missing_predictions": [...]}

Files are paired as the official tool pairs them: by the file name up to its last "_" (`<stem>gtBbox3d.json` and
`<stem>leftImg8bit.json` both give `<city>_<seq>_<frame>`). A GT file without a prediction file counts as an image
without predictions (its objects are false negatives), as the official tool does after logging it; its key is listed
under ``missing_predictions``. The metric itself is `cityscapes3d_matching.py`; docs/metrics.md says what is
faithful and what differs.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..data.cityscapes3d import DET_CLASS, parse_annotation, record_camera
from ..data.geometry import Camera, amodal_boxes, sensor_corners, xywh_to_xyxy, xyxy_to_xywh
from ..errors import DataError
from ..label_sets import CITYSCAPES3D_DET_CLASSES
from .cityscapes3d_matching import detection_score

MATCHINGS = ("modal", "amodal")
GT_SUFFIX = "gtBbox3d.json"
PRED_SUFFIX = "leftImg8bit.json"
PRED_FIELDS = ("label", "score", "center_V", "dimensions", "rotation", "box_modal")  # + box_amodal when read


def evaluate_cityscapes3d(gt_dir: str | Path, pred_dir: str | Path, *, matching: str = "modal",
                          iou_threshold: float = 0.7, max_depth: int = 100, step_size: int = 5, num_conf: int = 50,
                          labels: Sequence[str] = CITYSCAPES3D_DET_CLASSES) -> dict[str, Any]:
    """mDS of the predictions in ``pred_dir`` (any ``*.json``, searched recursively) against every
    ``*gtBbox3d.json`` under ``gt_dir``.

    ``matching``: "modal" (the default: TaskPrompter's evaluation) matches visible boxes; "amodal" (the official
    command line's default) matches GT amodal boxes with each prediction's amodal box recomputed from its 3-D box
    and the GT file's camera. Raises DataError for a missing folder, no GT file, or an unreadable file (named)."""
    gt_files = _find(gt_dir, f"*{GT_SUFFIX}", "ground-truth")
    if not gt_files:
        raise DataError(f"no *{GT_SUFFIX} files under {gt_dir}")
    pred_files = _find(pred_dir, "*.json", "prediction")
    keys = sorted(gt_files)
    ground_truth = [read_ground_truth(gt_files[k]) for k in keys]
    predictions = [read_predictions(pred_files[k]) if k in pred_files else None for k in keys]
    result = evaluate_cityscapes3d_records(ground_truth, predictions, matching=matching, iou_threshold=iou_threshold,
                                           max_depth=max_depth, step_size=step_size, num_conf=num_conf, labels=labels)
    result["missing_predictions"] = [k for k in keys if k not in pred_files]
    return result


def evaluate_cityscapes3d_records(ground_truth: Sequence[Mapping[str, Any]],
                                  predictions: Sequence[Mapping[str, Any] | None], *, matching: str = "modal",
                                  iou_threshold: float = 0.7, max_depth: int = 100, step_size: int = 5,
                                  num_conf: int = 50, labels: Sequence[str] = CITYSCAPES3D_DET_CLASSES
                                  ) -> dict[str, Any]:
    """mDS of records in memory, paired by position: GT records as `data.cityscapes3d.parse_annotation` returns them
    (label, center_V, dimensions, rotation, box_modal, box_amodal, ignore; the camera fields and image_size for
    amodal matching), predictions as dicts of arrays label (n,) class ids, score (n,), center_V (n, 3),
    dimensions (n, 3), rotation (n, 4) wxyz, box_modal (n, 4) xyxy (the detections `write_cityscapes3d_predictions`
    takes), or None for an image without a prediction file."""
    if matching not in MATCHINGS:
        raise ValueError(f"matching must be one of {MATCHINGS}, got {matching!r}")
    unknown = [name for name in labels if name not in DET_CLASS]
    if unknown or not labels:
        raise ValueError(f"labels must be some of {list(CITYSCAPES3D_DET_CLASSES)}, got {list(labels)}")
    if len(ground_truth) != len(predictions):
        raise ValueError(f"{len(ground_truth)} ground-truth records but {len(predictions)} prediction records")
    if not ground_truth:
        raise ValueError("no ground-truth records to evaluate")
    if max_depth <= 0 or step_size <= 0 or num_conf < 1:
        raise ValueError(f"max_depth and step_size must be positive and num_conf >= 1, got {max_depth}, "
                         f"{step_size}, {num_conf}")
    images = [_image(gt, pred, matching) for gt, pred in zip(ground_truth, predictions)]
    result = detection_score(images, classes={name: DET_CLASS[name] for name in labels}, iou_threshold=iou_threshold,
                             max_depth=max_depth, step_size=step_size, num_conf=num_conf)
    return {**result, "matching": matching, "num_images": len(images)}


def _image(gt: Mapping[str, Any], pred: Mapping[str, Any] | None, matching: str) -> tuple[dict, dict]:
    """One (gt, pred) pair as `detection_score` takes it: the boxes to match chosen by ``matching``."""
    g = {k: np.asarray(gt[k]) for k in ("label", "center_V", "dimensions", "rotation")}
    g["box"] = np.asarray(gt["box_modal" if matching == "modal" else "box_amodal"], dtype=np.float64)
    g["ignore"] = np.asarray(gt.get("ignore", np.zeros((0, 4))), dtype=np.float64).reshape(-1, 4)
    p = _empty_predictions() if pred is None else {k: np.asarray(pred[k]) for k in PRED_FIELDS}
    p["box_modal"] = np.asarray(p["box_modal"], dtype=np.float64).reshape(-1, 4)
    p["box"] = p["box_modal"]
    if matching == "amodal" and len(p["label"]):
        # the official evaluator always recomputes a prediction's amodal box from its 3-D box with the GT's camera;
        # its xyxy -> xywh -> xyxy round trip is kept (it can move the last bit)
        camera = record_camera(gt)
        corners = sensor_corners(p["center_V"], p["dimensions"], p["rotation"], camera)
        p["box"] = xywh_to_xyxy(xyxy_to_xywh(amodal_boxes(corners, camera, tuple(int(x) for x in gt["image_size"]))))
    return g, p


def _empty_predictions() -> dict[str, np.ndarray]:
    shapes = {"center_V": 3, "dimensions": 3, "rotation": 4, "box_modal": 4, "box_amodal": 4}
    return {"label": np.zeros(0, dtype=np.int64), "score": np.zeros(0),
            **{k: np.zeros((0, c)) for k, c in shapes.items()}}


# -- files --------------------------------------------------------------------------------------------------------
def image_key(path: str | Path) -> str:
    """The official pairing key: the file name up to its last "_" (`aachen_000000_000019`)."""
    name = Path(path).name
    return name[: name.rfind("_")]


def _find(folder: str | Path, pattern: str, what: str) -> dict[str, Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{what} folder {folder} does not exist (or is not a folder)")
    found: dict[str, Path] = {}
    for path in sorted(folder.rglob(pattern)):
        key = image_key(path)
        if key in found:  # the official tool silently keeps the last one; refuse to guess
            raise DataError(f"two {what} files for image {key}: {found[key]} and {path}")
        found[key] = path
    return found


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError) as err:
        raise DataError(f"unreadable {what} JSON: {path} ({type(err).__name__}: {err})") from err


def read_ground_truth(path: str | Path) -> dict[str, Any]:
    """A gtBbox3d JSON -> its record (`parse_annotation`), errors naming the file."""
    path = Path(path)
    try:
        return parse_annotation(_read_json(path, "ground-truth"))
    except ValueError as err:
        raise DataError(f"{path}: {err}") from err


def read_predictions(path: str | Path) -> dict[str, np.ndarray]:
    """A prediction JSON -> its record (`parse_predictions`), errors naming the file."""
    path = Path(path)
    try:
        return parse_predictions(_read_json(path, "prediction"))
    except ValueError as err:
        raise DataError(f"{path}: {err}") from err


def parse_predictions(data: Any) -> dict[str, np.ndarray]:
    """A prediction JSON (parsed) -> arrays label (n,) class ids, score (n,), center_V, dimensions, rotation,
    box_modal and box_amodal (xyxy) of its objects of the six classes (others are skipped, as officially). A missing
    modal box falls back to the amodal one, as officially. A malformed object raises ValueError naming it (the
    official tool logs it and skips it)."""
    if not isinstance(data, dict) or not isinstance(data.get("objects"), list):
        raise ValueError("a prediction file must hold a JSON object with an 'objects' list")
    rows: dict[str, list] = {k: [] for k in (*PRED_FIELDS, "box_amodal")}
    for i, obj in enumerate(data["objects"]):
        if not isinstance(obj, dict) or obj.get("label") not in DET_CLASS:
            continue
        where = f"objects[{i}] ({obj['label']})"
        try:
            box2d, box3d = obj["2d"], obj["3d"]
            amodal = box2d["amodal"]
            values = {"score": obj["score"], "center_V": box3d["center"], "dimensions": box3d["dimensions"],
                      "rotation": box3d["rotation"], "box_modal": box2d.get("modal", amodal), "box_amodal": amodal}
        except (KeyError, TypeError, AttributeError) as err:
            raise ValueError(f"{where} has no key {err}") from err
        sizes = {"score": 1, "center_V": 3, "dimensions": 3, "rotation": 4, "box_modal": 4, "box_amodal": 4}
        for key, size in sizes.items():
            try:
                value = np.asarray(values[key], dtype=np.float64).reshape(-1)
            except (TypeError, ValueError) as err:
                raise ValueError(f"{where}: {key} must be {size} number(s), got {values[key]!r}") from err
            if value.shape != (size,) or not np.isfinite(value).all():
                raise ValueError(f"{where}: {key} must be {size} finite number(s), got {values[key]!r}")
            rows[key].append(value)
        if not np.linalg.norm(rows["rotation"][-1]) > 0:
            raise ValueError(f"{where}: 3d.rotation is the zero quaternion")
        rows["label"].append(DET_CLASS[obj["label"]])
    n = len(rows["label"])
    record = {"label": np.asarray(rows["label"], dtype=np.int64),
              "score": np.asarray(rows["score"], dtype=np.float64).reshape(n)}
    for key, size in (("center_V", 3), ("dimensions", 3), ("rotation", 4)):
        record[key] = np.asarray(rows[key], dtype=np.float64).reshape(n, size)
    for key in ("box_modal", "box_amodal"):
        record[key] = xywh_to_xyxy(np.asarray(rows[key], dtype=np.float64).reshape(n, 4))
    return record


def write_cityscapes3d_predictions(path_or_dir: str | Path, stem: str, detections: Mapping[str, Any],
                                   camera: Camera | Mapping[str, Any], *, image_size: tuple[int, int]) -> Path:
    """Write one image's detections as the official evaluator reads them and return the file's path.

    ``path_or_dir``: a ``.json`` path, or a folder that gets ``<stem>leftImg8bit.json`` (``stem`` may be the stem
    ``<city>_<seq>_<frame>_`` or the sample id without the trailing "_"). ``detections``: arrays label (n,) class
    ids 0..5, score (n,), center_V (n, 3) m, dimensions (n, 3) L W H, rotation (n, 4) wxyz in V, box_modal (n, 4)
    xyxy pixels (already clipped to the image; written as given). ``camera``: a `Camera` or a JSON ``sensor`` block.
    The amodal box is the 3-D box's projection clamped to ``image_size`` (H, W), as the released exporter writes."""
    if not isinstance(camera, Camera):
        camera = Camera.from_json(camera)
    n = len(np.asarray(detections["label"]).reshape(-1))
    shapes = {"label": (n,), "score": (n,), "center_V": (n, 3), "dimensions": (n, 3), "rotation": (n, 4),
              "box_modal": (n, 4)}
    det = {}
    for key, shape in shapes.items():
        value = np.asarray(detections[key], dtype=np.float64)
        if value.shape != shape:
            raise ValueError(f"detections[{key!r}] must have shape {shape}, got {value.shape}")
        det[key] = value
    label = det["label"].astype(np.int64)
    if not np.array_equal(label, det["label"]) or ((label < 0) | (label >= len(CITYSCAPES3D_DET_CLASSES))).any():
        raise ValueError(f"detections['label'] must be class ids 0..{len(CITYSCAPES3D_DET_CLASSES) - 1}")
    corners = sensor_corners(det["center_V"], det["dimensions"], det["rotation"], camera)  # (n, 8, 3)
    amodal = xyxy_to_xywh(amodal_boxes(corners, camera, tuple(image_size)))
    modal = xyxy_to_xywh(det["box_modal"])
    objects = []
    for i in range(n):
        name = CITYSCAPES3D_DET_CLASSES[label[i]]
        objects.append({
            "2d": {"modal": modal[i].tolist(), "amodal": amodal[i].tolist()},
            "3d": {"center": det["center_V"][i].tolist(), "dimensions": det["dimensions"][i].tolist(),
                   "rotation": det["rotation"][i].tolist(), "type": name, "format": "CRS_ISO8855"},
            "label": name, "score": float(det["score"][i]),
        })  # fmt: skip
    path = Path(path_or_dir)
    if path.suffix != ".json":
        stem = stem if stem.endswith("_") else stem + "_"
        path = path / f"{stem}{PRED_SUFFIX}"
    path.parent.mkdir(parents=True, exist_ok=True)
    h, w = (int(x) for x in image_size)
    path.write_text(json.dumps({"imgWidth": w, "imgHeight": h, "objects": objects}, indent=1) + "\n")
    return path
