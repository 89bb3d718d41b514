"""`taskprompter profile`: parameters and multiply-accumulates per component of a preset (Tables 5, 6, 8)."""

from __future__ import annotations

import argparse
import json

from ..model.profile import profile_preset


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", required=True, help="model preset, e.g. taskprompter_vit_l_pascal")
    parser.add_argument("--tasks", help="comma-separated subset of the preset's tasks, e.g. semseg,normals")
    parser.add_argument("--img-size", type=int, nargs=2, metavar=("H", "W"), help="input size (default: preset's)")
    parser.add_argument("--json", action="store_true", help="print JSON: {params, macs, ...}")


def run(args: argparse.Namespace) -> int:
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()] if args.tasks else None
    result = profile_preset(args.preset, tasks=tasks, img_size=tuple(args.img_size) if args.img_size else None)
    if args.json:
        print(json.dumps(result, indent=1))
        return 0
    print(f"{args.preset}  tasks={','.join(result['tasks'])}  input={result['img_size'][0]}x{result['img_size'][1]}")
    print(f"{'component':36s} {'params (M)':>12s} {'MACs (G)':>12s}")
    for comp in sorted(set(result["params_by_component"]) | set(result["macs_by_component"])):
        p = result["params_by_component"].get(comp, 0) / 1e6
        m = result["macs_by_component"].get(comp, 0) / 1e9
        print(f"{comp:36s} {p:12.2f} {m:12.2f}")
    print(f"{'total':36s} {result['params'] / 1e6:12.2f} {result['macs'] / 1e9:12.2f}")
    return 0
