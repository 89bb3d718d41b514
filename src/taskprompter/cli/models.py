"""`taskprompter models`: the presets, with their tasks, input size and parameter count."""

from __future__ import annotations

import argparse

from ..model.build import PRESETS, list_models
from ..model.profile import count_parameters


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--names", action="store_true", help="print the preset names only, one per line")


def run(args: argparse.Namespace) -> int:
    names = list_models()
    if args.names:
        print("\n".join(names))
        return 0
    width = max(map(len, names))
    print(f"{'preset':{width}s}  {'input':>9s}  {'params':>8s}  tasks (output channels)")
    for name in names:
        kwargs = PRESETS[name]
        H, W = kwargs["img_size"]
        tasks = ", ".join(f"{t} {c}" for t, c in kwargs["tasks"].items())
        print(f"{name:{width}s}  {f'{H}x{W}':>9s}  {count_parameters(name) / 1e6:7.1f}M  {tasks}")
    return 0
