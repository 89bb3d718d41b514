"""Pictures as arrays: palettes and class names (from the dataset table), class maps, depth, normals (and their colour
key), overlays for saliency, boundaries and affinities, and ignored ground truth drawn as grey stripes.

Every ``colorize_*`` returns an (H, W, 3) uint8 array. Prediction maps, as ``taskprompter.Predictor`` returns them:
semseg / human_parts (H, W) class ids; sal and edge (H, W) probabilities in [0, 1]; normals (H, W, 3) unit vectors;
depth (H, W) metres.
"""


from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib
import numpy as np

from ..label_sets import label_colormap
from ..tasks import IGNORE_INDEX, TASKS, dataset_of, dataset_with_classes

CLASS_MAP_TASKS = ("semseg", "human_parts")
UNKNOWN_COLOR = np.array([255, 255, 255], dtype=np.uint8)  # ids outside the palette
IGNORE_STRIPES = np.array([[110, 110, 110], [215, 215, 215]], dtype=np.uint8)  # dark / light diagonal stripes
DEPTH_CMAP, AFFINITY_CMAP, CHANNEL_CMAP = "magma_r", "magma", "viridis"  # perceptual, readable in grey
DISPARITY_CMAP = "magma"  # disparity grows as depth shrinks: near is bright in both pictures
DEPTH_UNITS = {"depth": "depth (m)", "disparity": "disparity (px)"}


def depth_name(num_classes: Mapping[str, int] | None) -> str:
    """"disparity" when the outputs are those of a dataset whose depth task holds disparity (Cityscapes-3D), else
    "depth" (`tasks.dataset_of`)."""
    spec = dataset_of(num_classes) if num_classes else None
    return spec.depth_name if spec is not None else "depth"


def depth_cmap(name: str) -> str:
    return DISPARITY_CMAP if name == "disparity" else DEPTH_CMAP
LEGEND_ENTRIES = 16  # class legends list at most this many classes (the largest areas first)
DPI = 110


def class_names(task: str, num_classes: int) -> tuple[str, ...]:
    """The names of the dataset in the table whose `task` has this many classes (VOC 21, NYU-40, PASCAL-Part 7),
    else "class i"."""
    spec = dataset_with_classes(task, num_classes)
    return spec.class_names[task] if spec else tuple(f"class {i}" for i in range(num_classes))


def palette(task: str, num_classes: int) -> np.ndarray:
    """(num_classes, 3) uint8: the palette of the dataset in the table whose `task` has this many classes, else
    the VOC colour map."""
    spec = dataset_with_classes(task, num_classes)
    return spec.palettes[task] if spec else label_colormap(num_classes)


def ignore_stripes(shape: tuple[int, int]) -> np.ndarray:
    """(H, W, 3) diagonal stripes of two greys, about 40 stripes across the longer side, so that they survive the
    downscaling of a figure: the mark of ignored ground truth."""
    H, W = shape
    period = max(4, round(max(H, W) / 40))
    rows, cols = np.ogrid[:H, :W]
    return IGNORE_STRIPES[((rows + cols) // (period // 2 or 1)) % 2]


def mark_ignored(picture: np.ndarray, ignored: np.ndarray) -> np.ndarray:
    """The picture with the ``ignored`` (H, W) pixels drawn as grey stripes."""
    out = np.array(picture, dtype=np.uint8, copy=True)
    if np.any(ignored):
        out[ignored] = ignore_stripes(ignored.shape)[ignored]
    return out


def ignored_mask(task: str, label: np.ndarray) -> np.ndarray:
    """(H, W) bool: the pixels of a ground-truth label that the metrics ignore (the ignore label 255 for class,
    saliency and boundary labels; non-positive or non-finite depth; all-zero normals)."""
    label = np.asarray(label)
    if task == "depth":
        return ~(np.isfinite(label) & (label > 0))
    if task == "normals":
        return ~np.isfinite(label).all(-1) | ~np.any(label != 0, axis=-1)
    return label == IGNORE_INDEX


def colorize_labels(labels: np.ndarray, colors: np.ndarray) -> np.ndarray:
    """(H, W) class ids -> (H, W, 3) uint8; the ignore label (255) is grey stripes, other out-of-palette ids white."""
    labels = np.asarray(labels).astype(np.int64)
    table = np.tile(UNKNOWN_COLOR, (256, 1))
    table[: len(colors)] = colors
    return mark_ignored(table[np.clip(labels, 0, 255)], labels == IGNORE_INDEX)


def depth_limits(depth: np.ndarray) -> tuple[float, float] | None:
    """The 1st and 99th percentiles of the valid (positive, finite) depths: the ends of the colour map; None if
    nothing is valid."""
    depth = np.asarray(depth, dtype=np.float64)
    valid = depth[np.isfinite(depth) & (depth > 0)]
    if valid.size == 0:
        return None
    lo, hi = np.percentile(valid, [1, 99])
    return float(lo), float(max(hi, lo + 1e-6))


def colorize_depth(depth: np.ndarray, *, vmin: float | None = None, vmax: float | None = None,
                   cmap: str = DEPTH_CMAP) -> np.ndarray:
    """(H, W) metres -> colour map (near = bright) between vmin and vmax (default: `depth_limits`); invalid (<= 0 or
    non-finite) pixels are black."""
    depth = np.asarray(depth, dtype=np.float64)
    valid = np.isfinite(depth) & (depth > 0)
    limits = depth_limits(depth)
    if limits is None:
        return np.zeros(depth.shape + (3,), dtype=np.uint8)
    lo = limits[0] if vmin is None else vmin
    hi = limits[1] if vmax is None else vmax
    t = np.clip((depth - lo) / max(hi - lo, 1e-6), 0.0, 1.0)
    rgb = (matplotlib.colormaps[cmap](t)[..., :3] * 255).astype(np.uint8)
    rgb[~valid] = 0
    return rgb


def colorize_normals(normals: np.ndarray) -> np.ndarray:
    """(H, W, 3) or (3, H, W) vectors -> RGB = (n / |n| + 1) / 2 * 255; zero (invalid) vectors are black."""
    n = np.asarray(normals, dtype=np.float64)
    if n.ndim == 3 and n.shape[0] == 3 and n.shape[-1] != 3:
        n = n.transpose(1, 2, 0)  # (3, H, W) -> (H, W, 3)
    norm = np.linalg.norm(n, axis=-1, keepdims=True)
    unit = np.divide(n, norm, out=np.zeros_like(n), where=norm > 0)
    rgb = np.round((unit + 1.0) / 2.0 * 255.0).astype(np.uint8)
    rgb[norm[..., 0] == 0] = 0
    return rgb


def normals_key(size: int = 64) -> np.ndarray:
    """(size, size, 4) RGBA: the colours of the normals of a sphere seen from the camera (camera frame: x right,
    y down, z forward, so the facing hemisphere has z < 0); transparent outside the disc."""
    c = (np.arange(size) + 0.5) / size * 2.0 - 1.0
    x, y = np.meshgrid(c, c)  # x grows to the right, y downwards, as in the image
    inside = x**2 + y**2 <= 1.0
    n = np.stack([x, y, -np.sqrt(np.clip(1.0 - x**2 - y**2, 0.0, 1.0))], axis=-1)  # (size, size, 3)
    rgba = np.zeros((size, size, 4), dtype=np.uint8)
    rgba[..., :3] = colorize_normals(n)
    rgba[..., 3] = np.where(inside, 255, 0)
    return rgba


def to_uint8_image(image: np.ndarray) -> np.ndarray:
    """Any (H, W), (H, W, 3|4) image (uint8, uint16 or float in [0, 1]) -> (H, W, 3) uint8 for display."""
    img = np.asarray(image)
    if img.dtype == np.uint16:
        img = (img.astype(np.float64) / 65535.0 * 255.0).round().astype(np.uint8)
    elif img.dtype.kind == "f":
        img = (np.clip(img, 0.0, 1.0) * 255.0).round().astype(np.uint8)
    img = img.astype(np.uint8)
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=-1)
    return img[..., :3]


def overlay(image: np.ndarray, strength: np.ndarray, color: Sequence[int] = (255, 0, 0), *,
            alpha: float = 0.8) -> np.ndarray:
    """Blend ``color`` into the image in proportion to ``strength`` (H, W) in [0, 1] (saliency, boundaries)."""
    img = to_uint8_image(image).astype(np.float64)
    s = np.clip(np.asarray(strength, dtype=np.float64), 0.0, 1.0)[..., None] * alpha
    out = img * (1.0 - s) + np.asarray(color, dtype=np.float64) * s
    return np.round(out).astype(np.uint8)


def heatmap_overlay(image: np.ndarray, values: np.ndarray, *, cmap: str = AFFINITY_CMAP,
                    alpha: float = 0.5) -> np.ndarray:
    """Min-max normalised ``values`` (H, W) in a colour map, blended over the image (Fig. 4 / Fig. 8 style)."""
    v = np.asarray(values, dtype=np.float64)
    span = v.max() - v.min()
    t = (v - v.min()) / span if span > 0 else np.zeros_like(v)
    heat = matplotlib.colormaps[cmap](t)[..., :3] * 255.0
    out = to_uint8_image(image).astype(np.float64) * (1.0 - alpha) + heat * alpha
    return np.round(out).astype(np.uint8)


def colorize(task: str, prediction: np.ndarray, *, image: np.ndarray | None = None,
             num_classes: int | None = None, depth_range: tuple[float, float] | None = None,
             depth_name: str = "depth") -> np.ndarray:
    """The standard picture of one task's prediction map (see the module docstring for the map conventions);
    ``depth_range`` fixes the ends of the depth colour map (to colour a prediction and its ground truth alike)."""
    kind = TASKS[task].kind if task in TASKS else "classify"
    if task in CLASS_MAP_TASKS or (kind == "classify" and task != "sal"):
        n = num_classes or int(np.max(np.where(prediction == IGNORE_INDEX, 0, prediction))) + 1
        return colorize_labels(prediction, palette(task, n))
    if task == "depth":
        lo, hi = depth_range or (None, None)
        return colorize_depth(prediction, vmin=lo, vmax=hi, cmap=depth_cmap(depth_name))
    if task == "normals":
        return colorize_normals(prediction)
    if image is not None:  # sal (probability) and edge (probability) over the photo
        return overlay(image, prediction, (255, 40, 40) if task == "edge" else (40, 220, 40), alpha=0.85)
    return (np.clip(prediction, 0, 1) * 255).round().astype(np.uint8)[..., None].repeat(3, axis=-1)


def ground_truth_pictures(raw: Mapping[str, Any], num_classes: Mapping[str, int], *,
                          depth_range: tuple[float, float] | None = None, depth_name: str = "depth"
                          ) -> dict[str, np.ndarray]:
    """Pictures of a raw (untransformed) sample's labels, in the style of the predictions, with every ignored pixel
    (`ignored_mask`) drawn as grey stripes. ``raw["image"]`` is (H, W, 3) in [0, 255]."""
    image = np.asarray(raw["image"], dtype=np.float64) / 255.0
    pictures = {}
    for task, n in num_classes.items():
        gt = raw.get(task)
        if gt is None:
            continue
        shown = (gt == 1).astype(np.float64) if task in ("sal", "edge") else gt
        picture = colorize(task, shown, image=image, num_classes=n, depth_range=depth_range, depth_name=depth_name)
        pictures[task] = mark_ignored(picture, ignored_mask(task, gt))
    return pictures
