"""The built-in synthetic multi-task dataset: ray-cast rooms with objects and jointed figures (docs/data.md).

Imports flow one way: `write` (released-format trees, `generate`) -> `render` (one scene into every task's
arrays, the class tables) -> `scene` (random scene descriptions) -> `raycast` (analytic ray intersections).

    from taskprompter.data.synthetic import generate, render_scene
    root = generate("data/synth", format="nyud", num=200, size=(128, 160), seed=0)
    arrays = render_scene(seed=0, index=3, size=(128, 160))   # {"image": (H, W, 3), "depth": (H, W), ...}
"""

from __future__ import annotations

from .render import CLASSES, CONTEXT_IDS, FIGURE_PARTS, NYU40_STORED, PALETTE, VOC_IDS, render_scene
from .write import FORMATS, generate

__all__ = [
    "CLASSES", "CONTEXT_IDS", "FIGURE_PARTS", "FORMATS", "NYU40_STORED", "PALETTE", "VOC_IDS", "generate",
    "render_scene",
]  # fmt: skip
