"""Class tables and colour palettes of the two released datasets (names, ids, colours for visualisation).

- VOC (PASCAL-Context semseg, 21 classes, person = 15), PASCAL-Part human parts (7, background included),
  NYUD-v2 40 classes (stored in the PNGs as id + 1, read as id; see `nyud.py`).
- The 459-class PASCAL-Context `LabelMap` names and the ids on which distilled normals are valid are embedded
  as JSON in `taskprompter/resources/` and loaded lazily.
"""

from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources

import numpy as np

VOC_CLASSES: tuple[str, ...] = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip

PART_NAMES: tuple[str, ...] = ("background", "head", "torso", "upper arm", "lower arm", "upper leg", "lower leg")

# NYU-Depth v2 40-class set (Gupta et al. 2013), in id order; index i is label i (stored as i + 1).
NYU40_CLASSES: tuple[str, ...] = (
    "wall", "floor", "cabinet", "bed", "chair", "sofa", "table", "door", "window", "bookshelf", "picture",
    "counter", "blinds", "desk", "shelves", "curtain", "dresser", "pillow", "mirror", "floor mat", "clothes",
    "ceiling", "books", "refrigerator", "television", "paper", "towel", "shower curtain", "box", "whiteboard",
    "person", "night stand", "toilet", "sink", "lamp", "bathtub", "bag", "otherstructure", "otherfurniture",
    "otherprop",
)  # fmt: skip

# PASCAL-Part person part names -> the 6 parsing classes used by the released code (everything else 0).
PERSON_PART_IDS: dict[str, int] = {
    **dict.fromkeys(("head", "hair", "leye", "reye", "lear", "rear", "lebrow", "rebrow", "nose", "mouth"), 1),
    **dict.fromkeys(("torso", "neck"), 2),
    **dict.fromkeys(("luarm", "ruarm"), 3),
    **dict.fromkeys(("llarm", "rlarm", "lhand", "rhand"), 4),
    **dict.fromkeys(("luleg", "ruleg"), 5),
    **dict.fromkeys(("llleg", "rlleg", "lfoot", "rfoot"), 6),
}
VOC_PERSON = 15


def label_colormap(n: int) -> np.ndarray:
    """The PASCAL VOC colour map: colour of id i spreads i's bits over the high bits of R, G, B. (n, 3) uint8."""
    ids = np.arange(n)
    cmap = np.zeros((n, 3), dtype=np.int64)
    for shift in range(8):
        for channel in range(3):
            bit = (ids >> (3 * shift + channel)) & 1
            cmap[:, channel] |= bit << (7 - shift)
    return cmap.astype(np.uint8)


VOC_PALETTE: np.ndarray = label_colormap(256)[: len(VOC_CLASSES)]  # (21, 3) uint8, the standard VOC colours
PART_PALETTE: np.ndarray = label_colormap(len(PART_NAMES))  # (7, 3) uint8
NYU40_PALETTE: np.ndarray = label_colormap(len(NYU40_CLASSES) + 1)[1:]  # (40, 3); label i uses VOC colour i + 1


def _resource(name: str) -> dict:
    return json.loads(resources.files("taskprompter.resources").joinpath(name).read_text(encoding="utf-8"))


@lru_cache(maxsize=1)
def context_class_names() -> dict[int, str]:
    """The 459 PASCAL-Context LabelMap classes, {id: name} (ids 1..459; 0 = unlabelled)."""
    return {int(k): v for k, v in _resource("pascal_context_459_class_names.json").items()}


@lru_cache(maxsize=1)
def context_normals_valid_ids() -> frozenset[int]:
    """Context ids whose class also exists among the NYU classes (plus tvmonitor): distilled normals are kept
    only on these pixels, as in the released code."""
    return frozenset(int(i) for i in _resource("pascal_context_normals_valid_classes.json")["valid_ids"])


def context_id(name: str) -> int:
    """The Context LabelMap id of a class name (raises KeyError naming the class if unknown)."""
    for k, v in context_class_names().items():
        if v == name:
            return k
    raise KeyError(f"no PASCAL-Context class named {name!r}")


NUM_CONTEXT_CLASSES = 459
