"""Figures: prediction panels with legends, colour bars and keys, spatial / channel task-prompt affinity (paper Figs.
4 and 8), training curves (one small plot per metric, with its direction), and the files `predict` writes per image.

Every figure is made by a ``make_*`` function that returns a matplotlib ``Figure`` (object API, Agg canvas,
constrained layout: titles, legends, colour bars and keys are laid out inside the canvas, never cut) and written by
``save_figure``; the ``save_*`` / ``plot_*`` functions do both. Continuous maps use perceptual colour maps with a
colour bar (depth ``magma_r``, affinities ``magma``, channel affinity ``viridis``).
"""


from __future__ import annotations

import io
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure  # the object API renders with Agg and never touches pyplot's global state
from matplotlib.patches import Patch

from ..metrics import write_cityscapes3d_predictions
from ..tasks import TASKS, higher_is_better
from . import colors
from .boxes3d import boxes3d_figure


def new_figure(width: float, height: float) -> Figure:
    """A Figure with constrained layout on an Agg canvas (``fig.canvas.draw()`` works; no pyplot)."""
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig: Figure, path: str | os.PathLike | io.BytesIO, *, dpi: int = colors.DPI) -> None:
    """Write ``fig`` as a PNG. The constrained layout keeps every text inside the canvas; the tight bounding box
    makes sure of it (and trims the margins)."""
    fig.savefig(path, format="png", dpi=dpi, bbox_inches="tight", pad_inches=0.05)


def figure_to_array(fig: Figure, *, dpi: int = colors.DPI) -> np.ndarray:
    """(H, W, 3) uint8: ``fig`` as `save_figure` writes it (for TensorBoard)."""
    from PIL import Image

    buffer = io.BytesIO()
    save_figure(fig, buffer, dpi=dpi)
    buffer.seek(0)
    with Image.open(buffer) as im:
        return np.asarray(im.convert("RGB"))


def ignored_key() -> Patch:
    """The legend entry for ignored ground truth (the stripes of `ignore_stripes`)."""
    dark, light = colors.IGNORE_STRIPES / 255.0
    return Patch(facecolor=light, edgecolor=dark, hatch="////", label="ignored (not labelled)")


def _legend_handles(task: str, num_classes: int, present: np.ndarray | None) -> list[Patch]:
    """One entry per class present (all classes if None), the largest areas first, at most LEGEND_ENTRIES."""
    names, swatches = colors.class_names(task, num_classes), colors.palette(task, num_classes)
    if present is None:
        ids = list(range(num_classes))
    else:
        counts = np.bincount(np.asarray(present).astype(np.int64).ravel(), minlength=num_classes)[:num_classes]
        ids = [int(i) for i in np.argsort(-counts, kind="stable") if counts[i] > 0]
    shown = sorted(ids[:colors.LEGEND_ENTRIES])
    handles = [Patch(color=swatches[i] / 255.0, label=names[i]) for i in shown]
    if len(ids) > len(shown):
        handles.append(Patch(color="none", label=f"+{len(ids) - len(shown)} smaller classes"))
    return handles


def _pretty(task: str) -> str:
    return TASKS[task].pretty if task in TASKS else task


def make_panel(image: np.ndarray, pictures: Mapping[str, np.ndarray], *,
               labels: Mapping[str, np.ndarray] | None = None, num_classes: Mapping[str, int] | None = None,
               title: str | None = None, row_titles: Sequence[str] | None = None,
               extra_rows: Sequence[Mapping[str, np.ndarray]] = (),
               depth_range: tuple[float, float] | None = None, ignored: bool = False) -> Figure:
    """Side-by-side panel: the image, then one picture per task; under the last row a legend per class map (its
    classes in ``labels``), a colour bar for depth (given ``depth_range``, the ends its pictures were coloured
    with), the normals colour key, and with ``ignored`` the key of ignored ground truth.

    ``extra_rows`` adds rows of pictures under the same columns (e.g. the ground truth)."""
    rows = [dict(pictures), *[dict(r) for r in extra_rows]]
    cols = ["image", *pictures]
    legends = {t: _legend_handles(t, num_classes[t], labels[t]) for t in cols
               if labels and t in labels and num_classes and t in num_classes}
    legend_lines = max((math.ceil(len(h) / 2) for h in legends.values()), default=0)
    keys = max(0.16 * legend_lines + 0.15 if legend_lines else 0.0,  # room under the last row: legends, keys
               0.9 if "normals" in cols else 0.5 if "depth" in cols and depth_range else 0.0)
    cell = 2.4 * min(max(image.shape[0] / image.shape[1], 0.4), 1.6)  # the height of a 2.4-inch-wide picture
    fig = new_figure(2.5 * len(cols) + (0.3 if row_titles else 0.0),
                     (cell + 0.3) * len(rows) + (0.4 if title else 0.1) + keys + (0.3 if ignored else 0.0))
    axes = fig.subplots(len(rows), len(cols), squeeze=False)
    for r, row in enumerate(rows):
        for c, name in enumerate(cols):
            ax = axes[r][c]
            ax.axis("off")
            ax.set_anchor("N")  # a picture shorter than its cell sits at the top, with its keys right below
            pic = colors.to_uint8_image(image) if name == "image" else row.get(name)
            if pic is None:
                continue
            ax.imshow(pic)
            if r == 0:
                ax.set_title(_pretty(name), fontsize=9)
            if c == 0 and row_titles:
                ax.text(-0.05, 0.5, row_titles[r], transform=ax.transAxes, rotation=90, ha="right", va="center",
                        fontsize=9)
    for ax, name in zip(axes[-1], cols):  # keys under the last row, inside each column
        if name in legends:
            ax.legend(handles=legends[name], loc="upper center", bbox_to_anchor=(0.5, -0.02), fontsize=6, ncol=2,
                      frameon=False, handlelength=1.2, columnspacing=0.8)
        elif name == "depth" and depth_range:
            kind = colors.depth_name(num_classes)
            bar = fig.colorbar(ScalarMappable(Normalize(*depth_range), colors.depth_cmap(kind)),
                               cax=ax.inset_axes((0.1, -0.1, 0.8, 0.07)), orientation="horizontal")
            bar.set_label(colors.DEPTH_UNITS[kind], fontsize=7, labelpad=1)
            bar.ax.tick_params(labelsize=6)
        elif name == "normals":
            key = ax.inset_axes((0.3, -0.42, 0.4, 0.38))
            key.imshow(colors.normals_key(), extent=(-1, 1, 1, -1))
            key.set_xticks([-1, 1], ["x−", "x+"], fontsize=6)
            key.set_yticks([])
            key.tick_params(length=0, pad=1)
            key.set_frame_on(False)
            key.set_xlabel("normal colours: a sphere\n(x right, y down, z forward)", fontsize=6, labelpad=1)
    if ignored:
        fig.legend(handles=[ignored_key()], loc="outside lower center", fontsize=7, frameon=False)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def save_panel(path: str | os.PathLike, image: np.ndarray, pictures: Mapping[str, np.ndarray], **kwargs: Any) -> None:
    """`make_panel` written to ``path``."""
    save_figure(make_panel(image, pictures, **kwargs), path)


def prediction_panel(image: np.ndarray, maps: Mapping[str, np.ndarray], *, num_classes: Mapping[str, int],
                     ground_truth: Mapping[str, Any] | None = None, title: str | None = None,
                     pictures: Mapping[str, np.ndarray] | None = None) -> Figure:
    """The panel of one image's prediction ``maps`` and, given a raw sample ``ground_truth`` (its labels at the
    image's size), the ground truth beneath it, coloured alike (one depth range, legends of both rows' classes,
    ignored pixels striped). ``pictures`` reuses already coloured predictions."""
    limits = colors.depth_limits(maps["depth"]) if "depth" in maps else None
    kind = colors.depth_name(num_classes)  # metres, or disparity (Cityscapes-3D)
    if pictures is None:
        pictures = {t: colors.colorize(t, m, image=image, num_classes=num_classes.get(t), depth_range=limits,
                                       depth_name=kind) for t, m in maps.items()}
    labels = {t: maps[t] for t in colors.CLASS_MAP_TASKS if t in maps}
    if ground_truth is None:
        return make_panel(image, pictures, labels=labels, num_classes=num_classes, title=title, depth_range=limits)
    tasks = {t: num_classes[t] for t in maps if ground_truth.get(t) is not None}
    truth = colors.ground_truth_pictures(ground_truth, tasks, depth_range=limits, depth_name=kind)
    labels = {t: np.concatenate([m.ravel(), np.asarray(ground_truth[t]).ravel()]) for t, m in labels.items()
              if t in truth}
    ignored = any(colors.ignored_mask(t, ground_truth[t]).any() for t in truth)
    return make_panel(image, pictures, labels=labels, num_classes=num_classes, title=title, depth_range=limits,
                      extra_rows=[truth], row_titles=["prediction", "ground truth"], ignored=ignored)


def make_affinity_grid(image: np.ndarray, maps: Mapping[str, Sequence[np.ndarray]], *,
                       title: str | None = None) -> Figure:
    """Spatial task-prompt affinity (Fig. 4 / 8): rows = tasks, columns = decoding levels; ``maps[task][level]`` is
    an (H, W) map already resized to the image, drawn min-max normalised in `AFFINITY_CMAP` over the image."""
    tasks = list(maps)
    levels = max(len(v) for v in maps.values())
    cell = 2.2 * min(max(image.shape[0] / image.shape[1], 0.4), 1.6)
    fig = new_figure(2.2 * (levels + 1) + 1.0, (cell + 0.1) * len(tasks) + (0.7 if title else 0.4))
    axes = fig.subplots(len(tasks), levels + 1, squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")  # (no tick machinery to lay out: half the drawing time)
    for r, task in enumerate(tasks):
        axes[r][0].imshow(colors.to_uint8_image(image))
        axes[r][0].text(-0.04, 0.5, _pretty(task), transform=axes[r][0].transAxes, rotation=90, ha="right",
                        va="center", fontsize=9)
        for lvl, m in enumerate(maps[task]):
            axes[r][lvl + 1].imshow(colors.heatmap_overlay(image, m))
            if r == 0:
                axes[r][lvl + 1].set_title(f"level {lvl + 1}", fontsize=9)
    bar = fig.colorbar(ScalarMappable(Normalize(0.0, 1.0), colors.AFFINITY_CMAP), ax=axes, shrink=0.6, aspect=25)
    bar.set_label("affinity (min to max of each map)", fontsize=8)
    bar.ax.tick_params(labelsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def save_affinity_grid(path: str | os.PathLike, image: np.ndarray, maps: Mapping[str, Sequence[np.ndarray]], *,
                       title: str | None = None) -> None:
    """`make_affinity_grid` written to ``path``."""
    save_figure(make_affinity_grid(image, maps, title=title), path)


def pick_channels(num_channels: int, shown: int = 60, *, seed: int = 0) -> np.ndarray:
    """``shown`` of ``num_channels`` channel indices, sorted, picked at random with a fixed seed."""
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(num_channels, size=min(shown, num_channels), replace=False))


def make_channel_affinity(affinity: np.ndarray, task_names: Sequence[str], channels: np.ndarray, *,
                          title: str | None = None) -> Figure:
    """Channel task-prompt affinity (Fig. 4, right): the (T, C) averaged affinities at ``channels``, each task's
    row min-max normalised, with a colour bar."""
    a = np.asarray(affinity, dtype=np.float64)
    shown = a[:, channels]
    lo, hi = shown.min(axis=1, keepdims=True), shown.max(axis=1, keepdims=True)
    shown = (shown - lo) / np.maximum(hi - lo, 1e-12)
    fig = new_figure(max(5.0, 0.12 * len(channels) + 2.5), 0.45 * len(task_names) + 1.4)
    ax = fig.subplots()
    image = ax.imshow(shown, aspect="auto", cmap=colors.CHANNEL_CMAP, interpolation="nearest", vmin=0.0, vmax=1.0)
    ax.set_yticks(range(len(task_names)), [_pretty(t) for t in task_names], fontsize=8)
    ax.set_xlabel(f"channel ({len(channels)} of {a.shape[1]})", fontsize=8)
    ax.set_xticks([])
    ax.set_title(title or "channel task-prompt affinity", fontsize=9)
    bar = fig.colorbar(image, ax=ax, aspect=15)
    bar.set_label("min to max per task", fontsize=7)
    bar.ax.tick_params(labelsize=6)
    return fig


def plot_channel_affinity(path: str | os.PathLike, affinity: np.ndarray, task_names: Sequence[str], *,
                          num_channels: int = 60, seed: int = 0, title: str | None = None) -> np.ndarray:
    """`make_channel_affinity` of ``num_channels`` channels picked at random (fixed seed), written to ``path``.
    Returns the channel indices shown."""
    idx = pick_channels(np.asarray(affinity).shape[1], num_channels, seed=seed)
    save_figure(make_channel_affinity(affinity, task_names, idx, title=title), path)
    return idx


def curve_keys(records: Sequence[Mapping[str, Any]]) -> tuple[list[str], list[str]]:
    """(loss keys of the train records, metric keys of the val records to plot: each task's primary metric, or
    every metric when none is a primary one)."""
    losses = sorted({k for r in records if r.get("split") == "train" for k in r if k.startswith("loss/")})
    metrics = sorted({k for r in records if r.get("split") == "val" for k in r if k not in ("step", "split")
                      and "/" in k and not k.split("/")[-1].startswith(("iou_", "class_"))})
    primary = [k for k in metrics if k.split("/")[0] in TASKS and k.split("/")[-1] == TASKS[k.split("/")[0]].primary]
    return losses, primary or metrics


def metric_title(key: str) -> str:
    """"semseg/mIoU" -> "Semseg mIoU ↑" (the arrow: which way is better, from the task table)."""
    task, _, metric = key.rpartition("/")
    return f"{_pretty(task)} {metric} {'↑' if higher_is_better(metric) else '↓'}".strip()


def _series(records: Sequence[Mapping[str, Any]], key: str) -> tuple[tuple, tuple]:
    pts = [(r["step"], r[key]) for r in records if r.get(key) is not None]
    return tuple(zip(*pts)) if pts else ((), ())


def make_training_curves(records: Sequence[Mapping[str, Any]], *, metrics: Sequence[str] | None = None) -> Figure:
    """Loss curves (``loss/<task>`` and ``loss/total`` of the train records, log scale) and, beside them, one small
    plot per validation metric (default: each task's primary metric), titled with its direction ("Semseg mIoU ↑",
    "Depth rmse ↓"): metrics that improve in opposite directions never share an axis."""
    train = [r for r in records if r.get("split") == "train"]
    val = [r for r in records if r.get("split") == "val"]
    loss_keys, default_metrics = curve_keys(records)
    metric_keys = list(default_metrics if metrics is None else metrics) if val else []
    ncols = min(3, len(metric_keys)) if metric_keys else 0
    nrows = math.ceil(len(metric_keys) / ncols) if ncols else 0
    fig = new_figure(5.5 + 2.4 * ncols, max(3.6, 2.1 * nrows + 0.4))
    if metric_keys:
        left, right = fig.subfigures(1, 2, width_ratios=[5.5, 2.4 * ncols])
    else:
        left, right = fig, None
    ax = left.subplots()
    for k in loss_keys:
        xs, ys = _series(train, k)
        if xs:
            ax.plot(xs, ys, label=k.split("/", 1)[1], lw=2.0 if k == "loss/total" else 1.0)
    ax.set_yscale("log")
    ax.set_xlabel("iteration", fontsize=8)
    ax.set_title("training losses (weighted total and per task)", fontsize=9)
    ax.tick_params(labelsize=7)
    if loss_keys:
        ax.legend(fontsize=7)
    if right is not None:
        grid = right.subplots(nrows, ncols, squeeze=False)
        for i, ax in enumerate(grid.ravel()):
            if i >= len(metric_keys):
                ax.axis("off")
                continue
            xs, ys = _series(val, metric_keys[i])
            ax.plot(xs, ys, marker="o", ms=3)
            ax.set_title(metric_title(metric_keys[i]), fontsize=9)
            ax.set_xlabel("iteration", fontsize=7)
            ax.tick_params(labelsize=7)
        right.suptitle("validation", fontsize=9)
    return fig


def plot_training_curves(path: str | os.PathLike, records: Sequence[Mapping[str, Any]]) -> list[str]:
    """`make_training_curves` of the records of metrics.jsonl, written to ``path``. Returns the plotted keys."""
    save_figure(make_training_curves(records), path)
    losses, metrics = curve_keys(records)
    return losses + (metrics if any(r.get("split") == "val" for r in records) else [])


def write_prediction(out_dir: str | os.PathLike, image: np.ndarray, maps: Mapping[str, np.ndarray], *,
                     num_classes: Mapping[str, int], spatial_affinity: Mapping[str, Sequence[np.ndarray]] | None = None,
                     channel_affinity: Sequence[np.ndarray | None] = (), task_names: Sequence[str] = (),
                     boxes3d: Mapping[str, np.ndarray] | None = None, camera: Any = None) -> None:
    """One image's outputs in ``out_dir``: per task ``<task>.png`` (coloured) and ``<task>.npy`` (the map: class ids
    as given -- `Predictor` gives the smallest unsigned type --, everything else float32), ``panel.png``; with
    affinities ``affinity/spatial.png`` (tasks x levels, colour bar), ``affinity/<task>_level<k>.png`` (the map over
    the image at full size) and ``affinity/channel_level<k>.png``; with 3-D boxes (and their ``camera``)
    ``boxes3d.png`` (projected and bird's-eye view) and ``boxes3d.json`` (the official evaluator's format)."""
    from PIL import Image

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    limits = colors.depth_limits(maps["depth"]) if "depth" in maps else None
    pictures = {}
    for task, m in maps.items():
        np.save(out / f"{task}.npy", m if np.asarray(m).dtype.kind in "ui" else np.asarray(m, dtype=np.float32))
        pictures[task] = colors.colorize(task, m, image=image, num_classes=num_classes.get(task), depth_range=limits,
                                         depth_name=colors.depth_name(num_classes))
        Image.fromarray(pictures[task]).save(out / f"{task}.png")
    save_figure(prediction_panel(image, maps, num_classes=num_classes, pictures=pictures), out / "panel.png")
    if boxes3d is not None:
        save_figure(boxes3d_figure(image, boxes3d, camera, title="3-D boxes (score >= 0.3)"), out / "boxes3d.png")
        write_cityscapes3d_predictions(out / "boxes3d.json", "image_", boxes3d, camera, image_size=image.shape[:2])
    if spatial_affinity:
        aff = out / "affinity"
        aff.mkdir(exist_ok=True)
        save_affinity_grid(aff / "spatial.png", image, spatial_affinity,
                           title="spatial task-prompt affinity (rows: tasks, columns: decoding levels)")
        for task, levels in spatial_affinity.items():
            for k, m in enumerate(levels):
                Image.fromarray(colors.heatmap_overlay(image, m)).save(aff / f"{task}_level{k + 1}.png")
        for k, ch in enumerate(channel_affinity):
            if ch is not None:
                plot_channel_affinity(aff / f"channel_level{k + 1}.png", ch, list(task_names),
                                      title=f"channel task-prompt affinity, level {k + 1}")
