"""Pictures of predictions: palettes with legends, depth colour map, normals as RGB, saliency and boundary overlays,
spatial / channel task-prompt affinity maps (paper Figs. 4 and 8), and training curves.

Every ``colorize_*`` returns an (H, W, 3) uint8 array; the ``plot_*`` / ``save_*`` functions write PNG files with
matplotlib's object API (Agg; no display needed).

Prediction maps, as ``taskprompter.Predictor`` returns them: semseg / human_parts (H, W) int class ids; sal and edge
(H, W) probabilities in [0, 1]; normals (H, W, 3) unit vectors; depth (H, W) metres.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
from matplotlib.figure import Figure  # the object API renders with Agg and never touches pyplot's global state
from matplotlib.patches import Patch

from .label_sets import label_colormap
from .tasks import IGNORE_INDEX, TASKS, dataset_with_classes

IGNORE_COLOR = np.array([255, 255, 255], dtype=np.uint8)


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


def colorize_labels(labels: np.ndarray, colors: np.ndarray) -> np.ndarray:
    """(H, W) class ids -> (H, W, 3) uint8; the ignore label (255) and out-of-palette ids are white."""
    labels = np.asarray(labels).astype(np.int64)
    table = np.tile(IGNORE_COLOR, (256, 1))
    table[: len(colors)] = colors
    return table[np.clip(labels, 0, 255)]


def colorize_depth(depth: np.ndarray, *, vmin: float | None = None, vmax: float | None = None,
                   cmap: str = "magma_r") -> np.ndarray:
    """(H, W) metres -> colour map (near = bright); invalid (<= 0 or non-finite) pixels are black."""
    depth = np.asarray(depth, dtype=np.float64)
    valid = np.isfinite(depth) & (depth > 0)
    if not valid.any():
        return np.zeros(depth.shape + (3,), dtype=np.uint8)
    lo = float(np.percentile(depth[valid], 1)) if vmin is None else vmin
    hi = float(np.percentile(depth[valid], 99)) if vmax is None else vmax
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


def heatmap_overlay(image: np.ndarray, values: np.ndarray, *, cmap: str = "jet", alpha: float = 0.5) -> np.ndarray:
    """Min-max normalised ``values`` (H, W) in a colour map, blended over the image (Fig. 4 / Fig. 8 style)."""
    v = np.asarray(values, dtype=np.float64)
    span = v.max() - v.min()
    t = (v - v.min()) / span if span > 0 else np.zeros_like(v)
    heat = matplotlib.colormaps[cmap](t)[..., :3] * 255.0
    out = to_uint8_image(image).astype(np.float64) * (1.0 - alpha) + heat * alpha
    return np.round(out).astype(np.uint8)


def colorize(task: str, prediction: np.ndarray, *, image: np.ndarray | None = None,
             num_classes: int | None = None) -> np.ndarray:
    """The standard picture of one task's prediction map (see the module docstring for the map conventions)."""
    kind = TASKS[task].kind if task in TASKS else "classify"
    if task in ("semseg", "human_parts") or (kind == "classify" and task != "sal"):
        n = num_classes or int(np.max(np.where(prediction == IGNORE_INDEX, 0, prediction))) + 1
        return colorize_labels(prediction, palette(task, n))
    if task == "depth":
        return colorize_depth(prediction)
    if task == "normals":
        return colorize_normals(prediction)
    if image is not None:  # sal (probability) and edge (probability) over the photo
        return overlay(image, prediction, (255, 40, 40) if task == "edge" else (40, 220, 40), alpha=0.85)
    return (np.clip(prediction, 0, 1) * 255).round().astype(np.uint8)[..., None].repeat(3, axis=-1)


# ------------------------------------------------------------------------------------------------- figures


def _legend_handles(task: str, num_classes: int, present: np.ndarray | None) -> list[Patch]:
    names, colors = class_names(task, num_classes), palette(task, num_classes)
    ids = range(num_classes) if present is None else sorted(int(i) for i in np.unique(present) if i < num_classes)
    return [Patch(color=colors[i] / 255.0, label=names[i]) for i in ids]


def save_panel(path: str | os.PathLike, image: np.ndarray, pictures: Mapping[str, np.ndarray], *,
               labels: Mapping[str, np.ndarray] | None = None, num_classes: Mapping[str, int] | None = None,
               title: str | None = None, row_titles: Sequence[str] | None = None,
               extra_rows: Sequence[Mapping[str, np.ndarray]] = ()) -> None:
    """Side-by-side panel: the image, then one picture per task (legends for class maps, from ``labels``).

    ``extra_rows`` adds rows of pictures under the same columns (e.g. the ground truth)."""
    rows = [dict(pictures), *[dict(r) for r in extra_rows]]
    cols = ["image", *pictures]
    fig = Figure(figsize=(2.6 * len(cols), 2.4 * len(rows) + 0.4))
    axes = fig.subplots(len(rows), len(cols), squeeze=False)
    for r, row in enumerate(rows):
        for c, name in enumerate(cols):
            ax = axes[r][c]
            ax.axis("off")
            pic = to_uint8_image(image) if name == "image" else row.get(name)
            if pic is None:
                continue
            ax.imshow(pic)
            if r == 0:
                ax.set_title(TASKS[name].pretty if name in TASKS else name, fontsize=9)
            if c == 0 and row_titles:
                ax.text(-0.05, 0.5, row_titles[r], transform=ax.transAxes, rotation=90, ha="right", va="center",
                        fontsize=9)
            if r == len(rows) - 1 and labels and name in labels and num_classes and name in num_classes:
                handles = _legend_handles(name, num_classes[name], labels[name])
                ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.02), fontsize=6,
                          ncol=2, frameon=False)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def save_affinity_grid(path: str | os.PathLike, image: np.ndarray, maps: Mapping[str, Sequence[np.ndarray]], *,
                       title: str | None = None) -> None:
    """Spatial task-prompt affinity (Fig. 4 / 8): rows = tasks, columns = decoding levels; ``maps[task][level]`` is
    an (H, W) map already resized to the image."""
    tasks = list(maps)
    levels = max(len(v) for v in maps.values())
    fig = Figure(figsize=(2.2 * (levels + 1), 2.0 * len(tasks) + 0.4))
    axes = fig.subplots(len(tasks), levels + 1, squeeze=False)
    for r, task in enumerate(tasks):
        axes[r][0].imshow(to_uint8_image(image))
        axes[r][0].set_ylabel(TASKS[task].pretty if task in TASKS else task, fontsize=9)
        for c in range(levels + 1):
            axes[r][c].set_xticks([])
            axes[r][c].set_yticks([])
        for lvl, m in enumerate(maps[task]):
            axes[r][lvl + 1].imshow(heatmap_overlay(image, m))
            if r == 0:
                axes[r][lvl + 1].set_title(f"level {lvl + 1}", fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def plot_channel_affinity(path: str | os.PathLike, affinity: np.ndarray, task_names: Sequence[str], *,
                          num_channels: int = 60, seed: int = 0, title: str | None = None) -> np.ndarray:
    """Channel task-prompt affinity (Fig. 4, right): (T, C) averaged affinities, ``num_channels`` channels picked at
    random (fixed seed), each row min-max normalised. Returns the channel indices shown."""
    a = np.asarray(affinity, dtype=np.float64)
    C = a.shape[1]
    idx = np.sort(np.random.default_rng(seed).choice(C, size=min(num_channels, C), replace=False))
    shown = a[:, idx]
    lo, hi = shown.min(axis=1, keepdims=True), shown.max(axis=1, keepdims=True)
    shown = (shown - lo) / np.maximum(hi - lo, 1e-12)
    fig = Figure(figsize=(max(4.0, 0.12 * len(idx) + 1.5), 0.45 * len(task_names) + 1.0))
    ax = fig.subplots()
    ax.imshow(shown, aspect="auto", cmap="viridis", interpolation="nearest")
    ax.set_yticks(range(len(task_names)), [TASKS[t].pretty if t in TASKS else t for t in task_names], fontsize=8)
    ax.set_xlabel(f"channel ({len(idx)} of {C})", fontsize=8)
    ax.set_xticks([])
    ax.set_title(title or "channel task-prompt affinity", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return idx


def plot_training_curves(path: str | os.PathLike, records: Sequence[Mapping[str, Any]]) -> list[str]:
    """Loss curves (train records: ``loss/<task>`` and ``loss/total``) and validation metrics over steps, from the
    records of metrics.jsonl. Returns the plotted keys."""
    train = [r for r in records if r.get("split") == "train"]
    val = [r for r in records if r.get("split") == "val"]
    loss_keys = sorted({k for r in train for k in r if k.startswith("loss/")})
    val_keys = sorted({k for r in val for k in r if k not in ("step", "split") and "/" in k
                       and not k.split("/")[-1].startswith(("iou_", "class_"))})
    primary = [k for k in val_keys if k.split("/")[0] in TASKS
               and k.split("/")[-1] == TASKS[k.split("/")[0]].primary] or val_keys
    two = bool(primary and val)
    fig = Figure(figsize=(11 if two else 6, 4))
    axes = fig.subplots(1, 2 if two else 1, squeeze=False)
    ax = axes[0][0]
    for k in loss_keys:
        pts = [(r["step"], r[k]) for r in train if r.get(k) is not None]
        if pts:
            xs, ys = zip(*pts)
            ax.plot(xs, ys, label=k.split("/", 1)[1], lw=2.0 if k == "loss/total" else 1.0)
    ax.set_yscale("log")
    ax.set_xlabel("iteration")
    ax.set_title("training losses (weighted total and per task)", fontsize=9)
    ax.legend(fontsize=7)
    if two:
        ax2 = axes[0][1]
        for k in primary:
            pts = [(r["step"], r[k]) for r in val if r.get(k) is not None]
            if pts:
                xs, ys = zip(*pts)
                ax2.plot(xs, ys, marker="o", label=k)
        ax2.set_xlabel("iteration")
        ax2.set_title("validation metrics", fontsize=9)
        ax2.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return loss_keys + primary


def write_prediction(out_dir: str | os.PathLike, image: np.ndarray, maps: Mapping[str, np.ndarray], *,
                     num_classes: Mapping[str, int], spatial_affinity: Mapping[str, Sequence[np.ndarray]] | None = None,
                     channel_affinity: Sequence[np.ndarray | None] = (), task_names: Sequence[str] = ()) -> None:
    """One image's outputs: per task ``<task>.png`` (coloured) and ``<task>.npy`` (raw map), ``panel.png``; with
    affinities ``affinity/spatial.png`` (tasks x levels), ``affinity/<task>_level<k>.png`` and
    ``affinity/channel_level<k>.png``."""
    from PIL import Image

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    pictures = {}
    for task, m in maps.items():
        np.save(out / f"{task}.npy", m)
        pictures[task] = colorize(task, m, image=image, num_classes=num_classes.get(task))
        Image.fromarray(pictures[task]).save(out / f"{task}.png")
    class_maps = {t: m for t, m in maps.items() if t in ("semseg", "human_parts")}
    save_panel(out / "panel.png", image, pictures, labels=class_maps, num_classes=num_classes)
    if spatial_affinity:
        aff = out / "affinity"
        aff.mkdir(exist_ok=True)
        save_affinity_grid(aff / "spatial.png", image, spatial_affinity,
                           title="spatial task-prompt affinity (rows: tasks, columns: decoding levels)")
        for task, levels in spatial_affinity.items():
            for k, m in enumerate(levels):
                Image.fromarray(heatmap_overlay(image, m)).save(aff / f"{task}_level{k + 1}.png")
        for k, ch in enumerate(channel_affinity):
            if ch is not None:
                plot_channel_affinity(aff / f"channel_level{k + 1}.png", ch, list(task_names),
                                      title=f"channel task-prompt affinity, level {k + 1}")
