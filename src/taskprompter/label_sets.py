"""Class names and colour palettes of the released label sets: VOC (21), PASCAL-Part human parts (7), NYU-40.

These are the values the dataset table (`tasks.DATASET_SPECS`) points at; they live apart from the readers so that
`tasks.py` can hold them without importing `taskprompter.data`. Reader details (the 459 PASCAL-Context classes, the
person-part ids) stay in `data/classes.py`, which also re-exports these names.
"""

from __future__ import annotations

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

# Cityscapes' 19 evaluation classes (train ids 0..18) and their standard colours (cityscapesScripts' labels.py);
# CITYSCAPES_LABEL_IDS[i] is the labelId of train id i (every other labelId is ignored).
CITYSCAPES_CLASSES: tuple[str, ...] = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation", "terrain",
    "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle",
)  # fmt: skip
CITYSCAPES_LABEL_IDS: tuple[int, ...] = (7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33)
CITYSCAPES_PALETTE: np.ndarray = np.array([
    (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153), (153, 153, 153), (250, 170, 30),
    (220, 220, 0), (107, 142, 35), (152, 251, 152), (70, 130, 180), (220, 20, 60), (255, 0, 0), (0, 0, 142),
    (0, 0, 70), (0, 60, 100), (0, 80, 100), (0, 0, 230), (119, 11, 32),
], dtype=np.uint8)  # fmt: skip
# The six Cityscapes-3D detection classes, in the released class-id order (0..5).
CITYSCAPES3D_DET_CLASSES: tuple[str, ...] = ("car", "truck", "bus", "train", "motorcycle", "bicycle")
