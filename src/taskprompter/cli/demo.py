"""`taskprompter demo`: generate synthetic scenes, train a small TaskPrompter on the CPU, evaluate it, and write a
report with figures (README's first command)."""

from __future__ import annotations

import argparse

from ..demo import run_demo


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="runs/demo", help="output directory (report.md goes here)")
    parser.add_argument("--config", default="synthetic_demo", help="training config (default: synthetic_demo)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], nargs="+", metavar="KEY=VALUE",
                        help="config overrides, e.g. --set optim.max_iters=300")
    parser.add_argument("--num-scenes", type=int, default=320, help="synthetic scenes to generate (80%% train)")
    parser.add_argument("--steps", type=int, default=None, help="training iterations (default: the config's)")


def run(args: argparse.Namespace) -> int:
    overrides = [item for group in args.overrides for item in group]
    report = run_demo(args.out, config=args.config, overrides=overrides, num_scenes=args.num_scenes, steps=args.steps)
    print(f"report: {report}")
    return 0
