"""Monocular 3-D detection of the Swin TaskPrompter in pure PyTorch (swin-cityscapes3d.md sections 3-3.5), one file
per component: dcn (DCNv2 with grid_sample), layers, fpn (neck), head (FCOS3D), outputs (the returned structure and
the settings), targets, losses, nms (rotated BEV IoU and NMS), decode, detector (``Detector3D``)."""

from .detector import Detector3D
from .outputs import DetectionConfig, DetectionOutputs

__all__ = ["DetectionConfig", "DetectionOutputs", "Detector3D"]
