"""`taskprompter eval`: evaluate a checkpoint on a split with every metric (torchrun for several processes).

    taskprompter eval --checkpoint runs/x/last [--config ...] [--split val] [--save-predictions DIR]
    torchrun --nproc_per_node 4 -m taskprompter eval --checkpoint ...
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..engine.distributed import default_device
from ..engine.evaluate import evaluate_checkpoint, format_table
from ..engine.rundir import check_writable


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="checkpoint directory (or run directory -> last)")
    parser.add_argument("--config", default=None, help="config (default: the one stored in the checkpoint)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], nargs="+", metavar="KEY=VALUE",
                        help="override config values, e.g. --set data.root=/data/PASCALContext")
    parser.add_argument("--split", default=None, help="split to evaluate (default: data.val_split)")
    parser.add_argument("--save-predictions", default=None, metavar="DIR",
                        help="write per-task predictions at the original image size (boundary PNGs for SEISM)")
    parser.add_argument("--out", default=None,
                        help="where metrics.json goes (default: <run>/eval-<checkpoint>-<split>)")
    parser.add_argument("--batch-size", type=int, default=None, help="per-process batch (default: config)")
    parser.add_argument("--device", default=None, help="cpu | cuda (default: config)")
    parser.add_argument("--amp", default=None, choices=["auto", "bf16", "fp16", "off"],
                        help="precision (default: the config's train.amp): auto = bf16 autocast where the device "
                             "multiplies bf16 natively, else fp32; off = fp32; fp16 on CUDA only")


def run(args: argparse.Namespace) -> int:
    if args.device:
        default_device(args.device, option="--device ")  # a CUDA device this machine lacks: one line
    for folder in (args.out, args.save_predictions):
        if folder:
            check_writable(Path(folder))  # before the evaluation, not after it
    record = evaluate_checkpoint(args.checkpoint, config=args.config,
                                 overrides=[item for group in args.overrides for item in group], split=args.split,
                                 save_predictions=args.save_predictions, out=args.out, batch_size=args.batch_size,
                                 device=args.device, amp=args.amp)
    if record["path"] is not None:  # the first process
        print(f"{record['checkpoint']} (step {record['step']}) on {record['dataset']}:{record['split']}, "
              f"{record['num_samples']} images, {record['precision']}")
        print(format_table(record["metrics"]))
        print(f"wrote {record['path']}")
    return 0
