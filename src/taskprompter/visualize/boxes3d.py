"""Pictures of 3-D boxes (Cityscapes-3D): the boxes projected into the image and a bird's-eye view.

Boxes are given as the detection writer and the reader hold them -- ``label`` (n,) class ids, ``center_V`` (n, 3)
metres, ``dimensions`` (n, 3) L, W, H, ``rotation`` (n, 4) quaternion [w, x, y, z] in the vehicle frame, optionally
``score`` (n,) -- with the image's camera (`taskprompter.data.geometry.Camera`). Predictions are solid, ground truth
dashed; colours are the classes' Cityscapes colours.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from ..data.geometry import BOX_EDGES, NEAR_PLANE, Camera, project, sensor_corners
from ..label_sets import CITYSCAPES3D_DET_CLASSES
from ..tasks import DATASET_SPECS
from . import colors

BEV_RANGE = (-25.0, 25.0, 0.0, 80.0)  # x_S (right) from -25 to 25 m, z_S (forward) from 0 to 80 m


def _palette() -> np.ndarray:
    return DATASET_SPECS["cityscapes3d"].palettes["3ddet"] / 255.0  # (6, 3) in [0, 1]


def box_corners_S(boxes: Mapping[str, np.ndarray], camera: Camera) -> np.ndarray:
    """(n, 8, 3) corners in the camera frame S of ``boxes`` (see the module docstring)."""
    n = len(np.asarray(boxes["label"]).reshape(-1))
    if n == 0:
        return np.zeros((0, 8, 3))
    return sensor_corners(np.asarray(boxes["center_V"]), np.asarray(boxes["dimensions"]),
                          np.asarray(boxes["rotation"]), camera)


def draw_boxes_image(ax, boxes: Mapping[str, np.ndarray], camera: Camera, *, dashed: bool = False,
                     min_score: float = 0.0) -> None:
    """The 12 edges of every box in front of the camera, projected with ``camera`` onto ``ax`` (image pixels);
    predictions get their score written at the top-left corner."""
    corners = box_corners_S(boxes, camera)  # (n, 8, 3)
    labels = np.asarray(boxes["label"]).reshape(-1).astype(int)
    scores = np.asarray(boxes.get("score", np.ones(len(labels)))).reshape(-1)
    palette = _palette()
    for c, label, score in zip(corners, labels, scores):
        if score < min_score or (c[:, 2] <= NEAR_PLANE).any():  # a box reaching behind the camera is not drawn
            continue
        uv = project(c, camera)[:, :2]  # (8, 2)
        for i, j in BOX_EDGES:
            ax.plot(uv[[i, j], 0], uv[[i, j], 1], color=palette[label], lw=1.0, ls="--" if dashed else "-")
        if not dashed and "score" in boxes:
            top = uv[np.argmin(uv[:, 1])]
            ax.text(top[0], top[1] - 2, f"{score:.2f}", color=palette[label], fontsize=6, ha="center", va="bottom")


def draw_boxes_bev(ax, boxes: Mapping[str, np.ndarray], camera: Camera, *, dashed: bool = False,
                   min_score: float = 0.0) -> None:
    """Footprints (the four bottom corners) of the boxes seen from above: x_S right, z_S forward, metres."""
    corners = box_corners_S(boxes, camera)
    labels = np.asarray(boxes["label"]).reshape(-1).astype(int)
    scores = np.asarray(boxes.get("score", np.ones(len(labels)))).reshape(-1)
    palette = _palette()
    for c, label, score in zip(corners, labels, scores):
        if score < min_score:
            continue
        foot = c[[0, 1, 2, 3, 0]][:, [0, 2]]  # BLB, BRB, FRB, FLB: (x_S, z_S)
        ax.plot(foot[:, 0], foot[:, 1], color=palette[label], lw=1.0, ls="--" if dashed else "-")
        front = c[[2, 3]][:, [0, 2]]  # the front edge, thicker: the heading
        ax.plot(front[:, 0], front[:, 1], color=palette[label], lw=2.2, ls="--" if dashed else "-")


def boxes3d_figure(image: np.ndarray, predictions: Mapping[str, np.ndarray] | None, camera: Camera, *,
                   ground_truth: Mapping[str, np.ndarray] | None = None, min_score: float = 0.3,
                   title: str | None = None, class_names: Sequence[str] = CITYSCAPES3D_DET_CLASSES) -> Figure:
    """The image with the boxes projected into it (predictions solid with their scores, ground truth dashed) beside
    a bird's-eye view of both. ``camera`` is the camera of ``image``'s pixels (``Camera.scaled`` for a resized
    image); predictions below ``min_score`` are left out."""
    h, w = image.shape[:2]
    fig = Figure(figsize=(2.6 * 2 * w / max(h, 1) * 0.55 + 3.0, 3.2), layout="constrained")
    FigureCanvasAgg(fig)
    ax_img, ax_bev = fig.subplots(1, 2, width_ratios=[2 * w / max(h, 1) * 0.55, 1.0])
    ax_img.imshow(colors.to_uint8_image(image))
    ax_img.set_xlim(0, w)
    ax_img.set_ylim(h, 0)
    ax_img.axis("off")
    for boxes, dashed in ((ground_truth, True), (predictions, False)):
        if boxes is not None:
            draw_boxes_image(ax_img, boxes, camera, dashed=dashed, min_score=0.0 if dashed else min_score)
            draw_boxes_bev(ax_bev, boxes, camera, dashed=dashed, min_score=0.0 if dashed else min_score)
    x0, x1, z0, z1 = BEV_RANGE
    ax_bev.set_xlim(x0, x1)
    ax_bev.set_ylim(z0, z1)
    ax_bev.set_aspect("equal")
    ax_bev.plot([0], [0], marker="^", color="k", ms=5)  # the camera
    ax_bev.set_xlabel("x right (m)", fontsize=7)
    ax_bev.set_ylabel("z forward (m)", fontsize=7)
    ax_bev.tick_params(labelsize=6)
    ax_bev.grid(alpha=0.3)
    palette = _palette()
    present = sorted({int(v) for b in (predictions, ground_truth) if b is not None for v in np.asarray(b["label"])})
    handles = [Line2D([], [], color=palette[i], lw=1.5, label=class_names[i]) for i in present]
    handles += [Line2D([], [], color="k", lw=1.0, label="prediction"),
                Line2D([], [], color="k", lw=1.0, ls="--", label="ground truth")]
    ax_bev.legend(handles=handles, fontsize=6, loc="upper right", frameon=True)
    if title:
        fig.suptitle(title, fontsize=9)
    return fig
