"""From the detector's outputs to 3-D boxes (swin-cityscapes3d.md section 3.4; released
``DetModel.get_bboxes`` -> ``_get_bboxes_single`` -> ``box3d_multiclass_nms``), per image:

1. per level: sigmoid class scores and centerness, argmax of each angle's two direction bins; where the level has
   more than ``nms_pre`` (1000) points, the top ones by max over classes of cls x centerness; the projected centre
   (u, v) = point - offset x stride, the modal 2-D box = point -+ (l, t, r, b) x stride clipped to the image;
2. each angle = limit_period(theta, 0, pi) + pi x bin; the centre in S = K^-1 (u, v, 1) z;
3. per class, the points with cls x centerness > 0.05, greedy rotated BEV NMS on (x_S, z_S, W, L, third angle) at
   IoU > 0.3, then at most 200 per image (nms.py);
4. the kept boxes in V: centre, L W H, rotation [w, x, y, z] (`geometry.boxes_to_vehicle` with the ``euler`` option).

The result is what `metrics.cityscapes3d.write_cityscapes3d_predictions` writes (label, score, center_V, dimensions,
rotation, box_modal), plus center_I (u, v, z_S), center_S and the three angles.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

from ....data.cityscapes3d import record_camera
from ....data.geometry import Camera, boxes_to_vehicle
from .nms import multiclass_nms
from .outputs import DetectionOutputs
from .targets import image_scale, level_points, limit_period

FIELDS: tuple[str, ...] = ("label", "score", "center_V", "dimensions", "rotation", "box_modal", "center_I",
                           "center_S", "angles")


def _rows(x: Tensor) -> Tensor:
    """(C, h, w) -> (h w, C) in at least fp32."""
    return x.flatten(1).T.to(torch.promote_types(x.dtype, torch.float32))


def empty_detections() -> dict[str, np.ndarray]:
    widths = {"center_V": 3, "dimensions": 3, "rotation": 4, "box_modal": 4, "center_I": 3, "center_S": 3,
              "angles": 3}
    out = {k: np.zeros((0, c)) for k, c in widths.items()}
    return {"label": np.zeros(0, dtype=np.int64), "score": np.zeros(0), **out}


@torch.no_grad()
def decode_image(outputs: DetectionOutputs, b: int, camera: Camera, image_size: tuple[int, int]
                 ) -> dict[str, np.ndarray]:
    """The boxes of image ``b`` of the batch (``image_size``: (H, W) of the original image, in whose pixels
    ``camera`` is)."""
    cfg = outputs.config
    scale = image_scale({"image_size": image_size}, cfg)
    H, W = image_size
    cols: dict[str, list[Tensor]] = {k: [] for k in ("uv", "bbox", "bins", "scores", "ctr", "box2d")}
    for l, size in enumerate(outputs.level_sizes):
        s = cfg.strides[l] * scale
        scores = _rows(outputs.cls_score[l][b]).sigmoid()  # (hw, K)
        ctr = _rows(outputs.centerness[l][b])[:, 0].sigmoid()  # (hw,)
        bbox = _rows(outputs.bbox_pred[l][b])  # (hw, 13)
        bins = _rows(outputs.dir_cls[l][b]).reshape(-1, 3, 2).argmax(-1)  # (hw, 3)
        points = level_points(size, s, device=bbox.device, dtype=bbox.dtype)  # (hw, 2)
        if 0 < cfg.nms_pre < len(points):
            top = (scores * ctr[:, None]).max(dim=1).values.topk(cfg.nms_pre).indices
            scores, ctr, bbox, bins, points = scores[top], ctr[top], bbox[top], bins[top], points[top]
        ltrb = bbox[:, 9:13] * s
        box2d = torch.cat([points - ltrb[:, :2], points + ltrb[:, 2:]], dim=1)  # (n, 4) xyxy
        box2d[:, 0::2] = box2d[:, 0::2].clamp(0, W)
        box2d[:, 1::2] = box2d[:, 1::2].clamp(0, H)
        for k, v in (("uv", points - bbox[:, :2] * s), ("bbox", bbox), ("bins", bins), ("scores", scores),
                     ("ctr", ctr), ("box2d", box2d)):
            cols[k].append(v)
    uv, bbox, bins, scores, ctr, box2d = (torch.cat(cols[k]) for k in ("uv", "bbox", "bins", "scores", "ctr",
                                                                          "box2d"))
    if len(uv) == 0:
        return empty_detections()
    depth, size = bbox[:, 2], bbox[:, 3:6]
    angles = limit_period(bbox[:, 6:9], 0.0, math.pi) + math.pi * bins.to(bbox.dtype)  # (n, 3)
    x_S = (uv[:, 0] - camera.u0) / camera.fx * depth
    half_w, half_l = size[:, 1] / 2, size[:, 0] / 2
    bev = torch.stack([x_S - half_w, depth - half_l, x_S + half_w, depth + half_l, angles[:, 2]], dim=1)
    index, labels, kept = multiclass_nms(bev, scores * ctr[:, None], score_threshold=cfg.score_threshold,
                                         iou_threshold=cfg.nms_threshold, max_num=cfg.max_per_image)
    if len(index) == 0:
        return empty_detections()

    def as64(t: Tensor) -> np.ndarray:
        return t[index].double().cpu().numpy()

    center_I = np.concatenate([as64(uv), as64(depth)[:, None]], axis=1)
    angles64 = as64(angles)
    center_V, rotation = boxes_to_vehicle(center_I, angles64, camera, euler=cfg.euler)
    u0, v0, fx, fy = camera.u0, camera.v0, camera.fx, camera.fy
    z = center_I[:, 2]
    center_S = np.stack([(center_I[:, 0] - u0) / fx * z, (center_I[:, 1] - v0) / fy * z, z], axis=1)
    return {"label": labels.cpu().numpy().astype(np.int64), "score": kept.double().cpu().numpy(),
            "center_V": center_V, "dimensions": as64(size), "rotation": rotation, "box_modal": as64(box2d),
            "center_I": center_I, "center_S": center_S, "angles": angles64}


def decode_detections(outputs: DetectionOutputs, cameras: Sequence[Camera],
                      image_sizes: Sequence[tuple[int, int]] | None = None) -> list[dict[str, np.ndarray]]:
    """One dict of NumPy arrays per image (``FIELDS``). ``image_sizes``: each original image's (H, W) (default: the
    model's input size, i.e. records at the input's resolution)."""
    B = outputs.cls_score[0].shape[0]
    if len(cameras) != B:
        raise ValueError(f"{len(cameras)} cameras for a batch of {B} images")
    if image_sizes is None:
        if outputs.config.input_size is None:
            raise ValueError("give image_sizes: the detector does not know its input size")
        image_sizes = [outputs.config.input_size] * B
    return [decode_image(outputs, b, cam, (int(hw[0]), int(hw[1]))) for b, (cam, hw) in
            enumerate(zip(cameras, image_sizes))]


def record_cameras(records: Sequence[Mapping]) -> tuple[list[Camera], list[tuple[int, int]]]:
    """The cameras and original image sizes of 3ddet records (data/cityscapes3d.py)."""
    return ([record_camera(r) for r in records],
            [tuple(int(v) for v in np.asarray(r["image_size"]).reshape(2)) for r in records])
