"""``Detector3D``: the 3-D detection task of the Swin TaskPrompter -- FPN neck + FCOS3D head (head.py), with the
released targets and loss (targets.py, losses.py) and decoding with rotated BEV NMS (decode.py, nms.py).

    decoded maps S x (B, f, h_l, w_l) --forward--> DetectionOutputs (5 levels)
    DetectionOutputs + 3ddet records  --loss-->    {cls, offset, depth, size, rotation, ltrb, dir, centerness, total}
    DetectionOutputs + cameras        --decode-->  per image {label, score, center_V, dimensions, rotation, ...}

Its parameters sit where the released ``FCOS3DHead`` has them (``neck.*``, ``cls_convs.*``, ...), so the model's
``heads.3ddet.*`` are the released checkpoint's keys.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from torch import Tensor

from ....data.geometry import Camera
from .decode import decode_detections, record_cameras
from .head import FCOS3DHead
from .losses import detection_loss
from .outputs import DetectionConfig, DetectionOutputs

HEAD_OPTIONS = ("channels", "stacked_convs", "norm_groups", "deformable")  # the rest are DetectionConfig fields
CONFIG_OPTIONS = tuple(f.name for f in dataclasses.fields(DetectionConfig) if f.name not in ("num_classes",
                                                                                                "strides",
                                                                                                "input_size"))


def check_options(options: Mapping[str, Any] | None) -> dict[str, Any]:
    """``options`` as plain Python values (tuples -> lists), refusing unknown names."""
    options = dict(options or {})
    unknown = sorted(set(options) - set(HEAD_OPTIONS) - set(CONFIG_OPTIONS))
    if unknown:
        raise ValueError(f"unknown detection option(s) {unknown}; known: {sorted(HEAD_OPTIONS + CONFIG_OPTIONS)}")

    def plain(v: Any) -> Any:
        return [plain(x) for x in v] if isinstance(v, (tuple, list)) else v
    return {k: plain(v) for k, v in options.items()}


class Detector3D(FCOS3DHead):
    """FCOS3D detection from S decoded maps of ``in_channels`` (swin-cityscapes3d.md section 3).

    ``strides``: the L = S + 1 levels' strides in pixels of the model's input (released [8, 16, 32, 32, 64] / 0.75);
    ``input_size``: the model's input (H, W). Head options: ``channels`` (256), ``stacked_convs`` (3),
    ``norm_groups`` (32), ``deformable`` (True: DCNv2 as released; False: plain convs). Every other keyword is a
    `DetectionConfig` field (``euler``, ``score_threshold``, ``regress_ranges``, loss weights, ...)."""

    def __init__(self, *, in_channels: int, num_classes: int = 6, num_inputs: int = 4,
                 strides: Sequence[float] | None = None, input_size: tuple[int, int] | None = None,
                 **options: Any) -> None:
        options = check_options(options)
        head = {k: options.pop(k) for k in HEAD_OPTIONS if k in options}
        num_levels = num_inputs + 1
        config = DetectionConfig(num_classes=num_classes, input_size=input_size, **options,
                                 **({"strides": tuple(strides)} if strides is not None else {}))
        if len(config.strides) != num_levels:
            raise ValueError(f"{len(config.strides)} strides for {num_levels} levels ({num_inputs} inputs + 1)")
        super().__init__(in_channels=in_channels, num_classes=num_classes, num_inputs=num_inputs,
                         num_levels=num_levels, **head)
        self.config = config
        self.deformable = head.get("deformable", True)

    def configure(self, **changes: Any) -> None:
        """Change settings without parameters (``DetectionConfig`` fields, e.g. ``euler``, ``score_threshold``)."""
        changes = check_options(changes)
        fixed = sorted(set(changes) & set(HEAD_OPTIONS))
        if fixed:
            raise ValueError(f"{fixed} shape the parameters: build a new detector to change them")
        self.config = dataclasses.replace(self.config, **changes)

    def forward(self, features: Sequence[Tensor]) -> DetectionOutputs:
        """S maps (B, f, h_l, w_l) -> DetectionOutputs (5 levels)."""
        return DetectionOutputs(*self.forward_head(features), config=self.config)

    def loss(self, outputs: DetectionOutputs, records: Sequence[Mapping]) -> dict[str, Tensor]:
        """The released detection loss: {term: loss, ..., "total": their sum} (losses.py)."""
        return detection_loss(outputs, records)

    def decode(self, outputs: DetectionOutputs, cameras: Sequence[Camera] | None = None, *,
               image_sizes: Sequence[tuple[int, int]] | None = None,
               records: Sequence[Mapping] | None = None) -> list[dict[str, np.ndarray]]:
        """Boxes per image (decode.py): from ``cameras`` (and the original ``image_sizes``) or from the 3ddet
        ``records`` (their camera and image size)."""
        if records is not None:
            cameras, image_sizes = record_cameras(records)
        if cameras is None:
            raise ValueError("give the cameras (or the 3ddet records) of the images")
        return decode_detections(outputs, cameras, image_sizes)
