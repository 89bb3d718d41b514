"""`taskprompter eval-3d`: the Cityscapes-3D detection score (mDS) of a folder of prediction JSONs, printed as JSON.

    taskprompter eval-3d --gt data/Cityscapes/gtBbox3d/val --pred runs/x/predBbox3d [--matching modal|amodal]

GT files are every `<stem>gtBbox3d.json` under --gt, predictions every `*.json` under --pred, paired by the name up
to the last "_" (`<stem>leftImg8bit.json`, as the official evaluator expects). A GT file without a prediction file
counts as an image without detections, and is named on stderr. NaN (no class has GT) prints as null.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from ..metrics.cityscapes3d import MATCHINGS, evaluate_cityscapes3d


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--gt", required=True, type=Path, help="folder searched for *gtBbox3d.json (recursively)")
    parser.add_argument("--pred", required=True, type=Path,
                        help="folder searched for prediction *.json files (recursively); <stem>leftImg8bit.json "
                             "pairs with <stem>gtBbox3d.json")
    parser.add_argument("--matching", choices=MATCHINGS, default="modal",
                        help="2-D boxes matched at IoU > 0.7: modal (visible; TaskPrompter's evaluation, the default) "
                             "or amodal (the official command line's default; predictions' amodal boxes are "
                             "recomputed from their 3-D boxes)")


def _finite(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def run(args: argparse.Namespace) -> int:
    result = evaluate_cityscapes3d(args.gt, args.pred, matching=args.matching)
    missing = result["missing_predictions"]
    if missing:
        shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
        print(f"eval-3d: {len(missing)} of {result['num_images']} GT file(s) have no prediction file and count as "
              f"images without detections: {shown}", file=sys.stderr)
    print(json.dumps(_finite(result), indent=2))
    return 0
