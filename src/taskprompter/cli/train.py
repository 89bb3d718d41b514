"""`taskprompter train`: train a model from a config.

    taskprompter train --config pascal_context_vit_b [--set optim.max_iters=200 ...] [--resume]
    torchrun --nproc_per_node 4 -m taskprompter train --config ...        # DDP, switched on by torchrun's env
"""

from __future__ import annotations

import argparse

from ..config import load_config
from ..engine.train import train


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="YAML config (a path, or a shipped name such as "
                        "pascal_context_vit_b)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", nargs="+",
                        help="override config values, e.g. --set optim.max_iters=200 data.root=data/synth")
    parser.add_argument("--resume", nargs="?", const=True, default=False, metavar="CHECKPOINT",
                        help="continue from <out_dir>/last (or the given checkpoint) exactly where it stopped")
    parser.add_argument("--out", default=None, help="run directory (shortcut for --set train.out_dir=...)")


def run(args: argparse.Namespace) -> int:
    overrides = [item for group in args.overrides for item in group]
    if args.out:
        overrides.append(f"train.out_dir={args.out}")
    result = train(load_config(args.config, overrides), resume=args.resume)
    if result["is_main"]:
        print(f"done: {result['step']} iterations, checkpoints in {result['out_dir']}")
    return 0
