"""Class ids the readers need: PASCAL-Part person parts, the VOC person id, the 459 PASCAL-Context classes.

- The released label sets' names and palettes (VOC 21, person = 15; PASCAL-Part 7, background included; NYU-40,
  stored in the PNGs as id + 1, read as id, see `nyud.py`) live in `taskprompter.label_sets`, which the dataset
  table in `taskprompter.tasks` reads; they are re-exported here.
- The 459-class PASCAL-Context `LabelMap` names and the ids on which distilled normals are valid are embedded
  as JSON in `taskprompter/resources/` and loaded lazily.
"""

from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources

from ..label_sets import (
    NYU40_CLASSES,
    NYU40_PALETTE,
    PART_NAMES,
    PART_PALETTE,
    VOC_CLASSES,
    VOC_PALETTE,
    label_colormap,
)

# PASCAL-Part person part names -> the 6 parsing classes used by the released code (everything else 0).
PERSON_PART_IDS: dict[str, int] = {
    **dict.fromkeys(("head", "hair", "leye", "reye", "lear", "rear", "lebrow", "rebrow", "nose", "mouth"), 1),
    **dict.fromkeys(("torso", "neck"), 2),
    **dict.fromkeys(("luarm", "ruarm"), 3),
    **dict.fromkeys(("llarm", "rlarm", "lhand", "rhand"), 4),
    **dict.fromkeys(("luleg", "ruleg"), 5),
    **dict.fromkeys(("llleg", "rlleg", "lfoot", "rfoot"), 6),
}
VOC_PERSON = 15


def _resource(name: str) -> dict:
    return json.loads(resources.files("taskprompter.resources").joinpath(name).read_text(encoding="utf-8"))


@lru_cache(maxsize=1)
def context_class_names() -> dict[int, str]:
    """The 459 PASCAL-Context LabelMap classes, {id: name} (ids 1..459; 0 = unlabelled)."""
    return {int(k): v for k, v in _resource("pascal_context_459_class_names.json").items()}


@lru_cache(maxsize=1)
def context_normals_valid_ids() -> frozenset[int]:
    """Context ids whose class also exists among the NYU classes (plus tvmonitor): distilled normals are kept
    only on these pixels, as in the released code."""
    return frozenset(int(i) for i in _resource("pascal_context_normals_valid_classes.json")["valid_ids"])


def context_id(name: str) -> int:
    """The Context LabelMap id of a class name (raises KeyError naming the class if unknown)."""
    for k, v in context_class_names().items():
        if v == name:
            return k
    raise KeyError(f"no PASCAL-Context class named {name!r}")


NUM_CONTEXT_CLASSES = 459

__all__ = [  # the label sets are re-exported: the readers' and the synthetic writer's import path
    "NUM_CONTEXT_CLASSES", "NYU40_CLASSES", "NYU40_PALETTE", "PART_NAMES", "PART_PALETTE", "PERSON_PART_IDS",
    "VOC_CLASSES", "VOC_PALETTE", "VOC_PERSON", "context_class_names", "context_id", "context_normals_valid_ids",
    "label_colormap",
]  # fmt: skip
