"""Points and training targets of the FCOS3D head (swin-cityscapes3d.md section 3.2; released
``detection_toolbox/det_model.py::DetModel.get_targets`` / ``_get_target_single``).

Everything is in pixels of the original image (the records' boxes and camera): a level of stride s (float: released
[8, 16, 32, 32, 64] / 0.75, times original / model-input size) has its points at (j s + s // 2, i s + s // 2) for map
cell (i, j) -- ``s // 2`` floor-divides a float, as released (5, 10, 21, 21, 42). For each point and object:

    positive   |x - u_c| < r s and |y - v_c| < r s (a square of radius r = 1.5 strides around the projected 3-D
               centre (u_c, v_c), not clipped to the box) and lo <= max(l, t, r, b) <= hi (the level's regress
               range, on the distances to the *modal* 2-D box); among the qualifying objects the nearest centre wins
               (the first on exact ties), the rest of the points are background (label K)
    targets    ((x, y) - (u_c, v_c)) / s, z_S, L, W, H, the three angles, (l, t, r, b) / s
    centerness exp(-alpha ||(x, y) - (u_c, v_c)|| / (1.414 r s))
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from .outputs import DetectionConfig

INF = 1e8


class ImageTargets(NamedTuple):
    labels: Tensor  # (P,) int64: class, or K for background
    bbox: Tensor  # (P, 13) the regression vector's targets (outputs.py)
    centerness: Tensor  # (P,)


def level_points(size: tuple[int, int], stride: float, *, device=None, dtype=torch.float32) -> Tensor:
    """(h w, 2) points (x, y) of one level, row-major: (j s + s // 2, i s + s // 2)."""
    h, w = size
    ys, xs = torch.meshgrid(torch.arange(h, device=device, dtype=dtype), torch.arange(w, device=device, dtype=dtype),
                            indexing="ij")
    half = stride // 2  # float floor division, as released
    return torch.stack([xs.reshape(-1) * stride, ys.reshape(-1) * stride], dim=-1) + half


def image_scale(record: Mapping, config: DetectionConfig) -> float:
    """Original-image pixels per model-input pixel for ``record`` (1 without ``config.input_size``)."""
    if config.input_size is None or "image_size" not in record:
        return 1.0
    h, w = (float(v) for v in record["image_size"])
    sy, sx = h / config.input_size[0], w / config.input_size[1]
    if abs(sx - sy) > 1e-6 * sy:
        raise ValueError(f"the image ({int(h)}x{int(w)}) and the model input ({config.input_size[0]}x"
                         f"{config.input_size[1]}) differ in aspect ratio: the detector's strides must scale "
                         "equally in x and y")
    return sy


def all_points(sizes: Sequence[tuple[int, int]], strides: Sequence[float], *, device=None,
               dtype=torch.float32) -> tuple[Tensor, Tensor, Tensor]:
    """Every level's points concatenated: points (P, 2), each point's stride (P,) and level index (P,)."""
    points = [level_points(size, s, device=device, dtype=dtype) for size, s in zip(sizes, strides)]
    counts = [len(p) for p in points]
    stride = torch.cat([torch.full((n,), float(s), device=device, dtype=dtype) for n, s in zip(counts, strides)])
    level = torch.cat([torch.full((n,), i, device=device, dtype=torch.long) for i, n in enumerate(counts)])
    return torch.cat(points), stride, level


def image_targets(points: Tensor, stride: Tensor, level: Tensor, record: Mapping, config: DetectionConfig
                  ) -> ImageTargets:
    """The targets of one image's P points (points, stride, level from `all_points`) for the objects of ``record``
    (tensors: label (n,), box_modal (n, 4) xyxy, center_I (n, 3) = (u, v, z_S), size_S (n, 3), angles (n, 3))."""
    dev, dt = points.device, points.dtype
    K = config.num_classes

    def field(name: str) -> Tensor:
        return torch.as_tensor(record[name]).to(device=dev, dtype=dt)

    labels_gt = torch.as_tensor(record["label"]).to(device=dev, dtype=torch.long)  # (n,)
    P, n = len(points), len(labels_gt)
    if n == 0:
        return ImageTargets(torch.full((P,), K, device=dev, dtype=torch.long), points.new_zeros(P, 13),
                            points.new_zeros(P))
    boxes, center_I = field("box_modal"), field("center_I")  # (n, 4), (n, 3)
    size, angles = field("size_S"), field("angles")  # (n, 3) each
    x, y = points[:, 0, None], points[:, 1, None]  # (P, 1)
    delta = torch.stack([x - center_I[:, 0], y - center_I[:, 1]], dim=-1)  # (P, n, 2) point - centre
    ltrb = torch.stack([x - boxes[:, 0], y - boxes[:, 1], boxes[:, 2] - x, boxes[:, 3] - y], dim=-1)  # (P, n, 4)
    radius = (stride * config.center_radius)[:, None]  # (P, 1)
    square = torch.stack([x - (center_I[:, 0] - radius), y - (center_I[:, 1] - radius),
                          (center_I[:, 0] + radius) - x, (center_I[:, 1] + radius) - y], dim=-1)  # (P, n, 4)
    inside = square.min(dim=-1).values > 0  # strictly inside the square
    ranges = torch.tensor(config.regress_ranges, device=dev, dtype=dt)[level]  # (P, 2)
    reach = ltrb.max(dim=-1).values  # (P, n)
    in_range = (reach >= ranges[:, 0, None]) & (reach <= ranges[:, 1, None])
    dist = delta.norm(dim=-1).masked_fill(~(inside & in_range), INF)  # (P, n)
    best = dist.argmin(dim=1)  # (P,) the nearest qualifying centre; the first one on exact ties
    background = dist.gather(1, best[:, None])[:, 0] == INF
    labels = labels_gt[best].masked_fill(background, K)
    rows = torch.arange(P, device=dev)
    d, s = delta[rows, best], stride[:, None]  # (P, 2), (P, 1)
    bbox = torch.cat([d / s, center_I[best, 2:3], size[best], angles[best], ltrb[rows, best] / s], dim=1)  # (P, 13)
    centerness = torch.exp(-config.centerness_alpha * d.norm(dim=-1) / (1.414 * radius[:, 0]))
    return ImageTargets(labels, bbox, centerness)


def direction_bins(angles: Tensor) -> Tensor:
    """floor(limit_period(theta, 0, 2 pi) / pi) clamped to {0, 1}, per angle: (..., 3) -> (..., 3) int64."""
    return torch.floor(limit_period(angles, 0.0, 2 * math.pi) / math.pi).long().clamp(0, 1)


def limit_period(value: Tensor, offset: float = 0.5, period: float = math.pi) -> Tensor:
    """value - floor(value / period + offset) * period: into [-offset period, (1 - offset) period)."""
    return value - torch.floor(value / period + offset) * period
