"""What the detector returns and the settings its targets, loss and decoding read (swin-cityscapes3d.md section 3).

The regression vector of a point, ``bbox_pred`` (13 channels; ``REG_GROUPS``), after the head's activations:

    0-1   offset (du, dv) = (point - projected 3-D centre) / stride       s * raw
    2     depth z_S of the centre, metres                                 exp(s * raw)
    3-5   size L, W, H, metres                                            exp(s * raw) + 1e-6
    6-8   the three rotation angles (`geometry.sensor_angles`)            raw
    9-12  (l, t, r, b) from the point to the modal 2-D box, / stride       ReLU(s * raw)

``dir_cls`` (6 channels) holds two direction-bin logits per angle, angle-major ([a0 b0, a0 b1, a1 b0, ...]).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from torch import Tensor

from ....data.geometry import EULER_MODES

REG_GROUPS: tuple[int, ...] = (2, 1, 3, 3, 4)  # offset, depth, size, angles, ltrb: the five regression branches
BASE_STRIDES: tuple[int, ...] = (8, 16, 32, 32, 64)  # the five levels' strides in the resized input
RELEASED_RESIZE = 0.75
REGRESS_RANGES: tuple[tuple[float, float], ...] = ((-1.0, 96.0), (96.0, 192.0), (192.0, 384.0), (384.0, 768.0),
                                                   (768.0, 1e8))  # on max(l, t, r, b), original-image pixels
CODE_WEIGHTS: tuple[float, ...] = (1.0, 1.0, 0.2, 1.0, 1.0, 1.0, 5.0, 5.0, 5.0, 1.0, 1.0, 1.0, 1.0)


@dataclass(frozen=True)
class DetectionConfig:
    """Target, loss, decoding and geometry settings; the defaults are the released ones
    (``configs/cityscapes3d/det_head_params.py``).

    ``strides`` are in pixels of the model's input (released [8, 16, 32, 32, 64] / 0.75); the records' boxes are in
    pixels of the original image (``image_size`` of each record), so the strides are scaled by original / input
    (``input_size``: the model's input (H, W); None = the records' own size). ``euler``: "fixed" (the quaternion read
    correctly; default for new training) or "faithful" (the released order, needed for released weights)."""

    num_classes: int = 6
    strides: tuple[float, ...] = tuple(s / RELEASED_RESIZE for s in BASE_STRIDES)
    input_size: tuple[int, int] | None = None
    regress_ranges: tuple[tuple[float, float], ...] = REGRESS_RANGES
    center_radius: float = 1.5  # positives within +-radius * stride of the projected centre (a square)
    centerness_alpha: float = 2.5
    focal_gamma: float = 2.0
    focal_alpha: float = 0.25
    cls_weight: float = 5.0
    smooth_l1_beta: float = 1.0 / 9.0
    code_weights: tuple[float, ...] = CODE_WEIGHTS
    dir_weight: float = 1.0
    centerness_weight: float = 1.0
    nms_pre: int = 1000  # top points per level before NMS
    score_threshold: float = 0.05  # kept: cls x centerness > threshold (strict, as released)
    nms_threshold: float = 0.3  # suppressed: BEV IoU > threshold (strict)
    max_per_image: int = 200
    euler: str = "fixed"

    def __post_init__(self) -> None:
        # lists (from a YAML config) -> tuples of floats: frozen, hashable and comparable
        object.__setattr__(self, "strides", tuple(float(s) for s in self.strides))
        object.__setattr__(self, "regress_ranges", tuple((float(a), float(b)) for a, b in self.regress_ranges))
        object.__setattr__(self, "code_weights", tuple(float(w) for w in self.code_weights))
        if self.input_size is not None:
            object.__setattr__(self, "input_size", (int(self.input_size[0]), int(self.input_size[1])))
        if self.euler not in EULER_MODES:
            raise ValueError(f"euler must be one of {EULER_MODES}, got {self.euler!r}")
        if len(self.regress_ranges) != len(self.strides):
            raise ValueError(f"{len(self.regress_ranges)} regress_ranges for {len(self.strides)} levels")
        if len(self.code_weights) != sum(REG_GROUPS):
            raise ValueError(f"code_weights needs {sum(REG_GROUPS)} values, got {len(self.code_weights)}")
        if self.num_classes < 1:
            raise ValueError(f"num_classes must be positive, got {self.num_classes}")


class DetectionOutputs(NamedTuple):
    """The detector's raw outputs: one entry per FPN level l (L = 5), activations applied as released."""

    cls_score: list[Tensor]  # L x (B, K, h_l, w_l)  class logits (sigmoid)
    bbox_pred: list[Tensor]  # L x (B, 13, h_l, w_l) the regression vector above, fp32
    dir_cls: list[Tensor]  # L x (B, 6, h_l, w_l)    direction-bin logits, angle-major
    centerness: list[Tensor]  # L x (B, 1, h_l, w_l) centerness logits (sigmoid)
    config: DetectionConfig

    @property
    def level_sizes(self) -> list[tuple[int, int]]:
        return [tuple(x.shape[-2:]) for x in self.cls_score]
