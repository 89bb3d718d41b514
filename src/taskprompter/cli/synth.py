"""`taskprompter synth`: write the synthetic multi-task dataset as a released-format tree."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from ..data.synthetic import FORMATS, generate


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--format", required=True, choices=FORMATS, help="tree layout to write")
    parser.add_argument("--out", required=True, type=Path, help="dataset root to create")
    parser.add_argument("--num", type=int, default=200, help="number of samples (default 200)")
    parser.add_argument("--size", type=int, nargs=2, default=None, metavar=("H", "W"),
                        help="image height and width (default 128 160; cityscapes3d: 256 512)")
    parser.add_argument("--seed", type=int, default=0, help="dataset seed; sample i is a function of (seed, i)")
    parser.add_argument("--split-ratio", type=float, default=0.8, help="fraction of samples in train (rest val)")
    parser.add_argument("--workers", type=int, default=1, help="processes (the output does not depend on it)")
    parser.add_argument("--partial-labels", choices=("one", "random"), default=None,
                        help="also write labelled_tasks.json for the train split: each image labelled for one task "
                        "(balanced) or for a random non-empty subset (MTPSL's settings); all label files are "
                        "written, so data.labelled_tasks=all trains fully labelled")
    parser.add_argument("--partial-seed", type=int, default=None, help="seed of the partial labels (default --seed)")


def run(args: argparse.Namespace) -> int:
    if args.size is None:
        args.size = (256, 512) if args.format == "cityscapes3d" else (128, 160)
    start = time.perf_counter()
    root = generate(args.out, format=args.format, num=args.num, size=tuple(args.size), seed=args.seed,
                    split_ratio=args.split_ratio, workers=args.workers, progress=args.num >= 500,
                    partial_labels=args.partial_labels, partial_seed=args.partial_seed)
    seconds = time.perf_counter() - start
    print(f"synth: wrote {args.num} {args.format} samples of {args.size[0]}x{args.size[1]} to {root} "
          f"in {seconds:.1f} s ({args.num / max(seconds, 1e-9) * 60:.0f}/min)")
    if args.partial_labels:
        print(f"synth: train split partially labelled ({args.partial_labels}): {root / 'labelled_tasks.json'}")
    return 0
