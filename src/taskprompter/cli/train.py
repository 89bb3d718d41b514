"""`taskprompter train`: train a model from a config.

    taskprompter train --config pascal_context_vit_b [--set optim.max_iters=200 ...] [--resume | --overwrite]
    torchrun --nproc_per_node 4 -m taskprompter train --config ...        # DDP, switched on by torchrun's env

A run directory that holds a previous run needs --resume (continue it) or --overwrite (replace it).
"""

from __future__ import annotations

import argparse

from ..config import load_config, resolve_config_path
from ..engine.rundir import previous_run
from ..engine.train import train


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="YAML config (a path, or a shipped name such as "
                        "pascal_context_vit_b)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", nargs="+",
                        help="override config values, e.g. --set optim.max_iters=200 data.root=data/synth")
    parser.add_argument("--resume", nargs="?", const=True, default=False, metavar="CHECKPOINT",
                        help="continue the run in the run directory (its newer of last/ and best/; a run without "
                        "a checkpoint starts at step 0), or the given checkpoint, exactly where it stopped")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace a previous run in the run directory (its checkpoints and logs are deleted once "
                        "every check before step 1 has passed)")
    parser.add_argument("--out", default=None, help="run directory (shortcut for --set train.out_dir=...)")


def run(args: argparse.Namespace) -> int:
    overrides = [item for group in args.overrides for item in group]
    if args.out:
        overrides.append(f"train.out_dir={args.out}")
    elif args.resume is True and not any(o.strip().startswith("train.out_dir=") for o in overrides):
        overrides += own_run_dir(args.config)
    result = train(load_config(args.config, overrides), resume=args.resume, overwrite=args.overwrite)
    if result["is_main"]:
        print(f"done: {result['step']} iterations, checkpoints in {result['out_dir']}")
    return 0


def own_run_dir(config: str) -> list[str]:
    """``--resume`` with a run directory's own config.yaml continues that run where it lies now, even when the
    directory was moved after the run wrote its ``train.out_dir``."""
    path = resolve_config_path(config)
    return [f"train.out_dir={path.parent}"] if path.name == "config.yaml" and previous_run(path.parent) else []
