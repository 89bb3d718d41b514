"""`taskprompter convert`: a released checkpoint to a model directory (model.safetensors + config.yaml)."""

from __future__ import annotations

import argparse

from ..model.io import CONFIG, WEIGHTS
from ..model.released import from_released


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="released checkpoint (.pth / .pth.tar)")
    parser.add_argument("--preset", required=True, help="its preset, e.g. taskprompter_vit_l_pascal")
    parser.add_argument("--out", required=True, help=f"output model directory ({WEIGHTS} + {CONFIG})")


def run(args: argparse.Namespace) -> int:
    out = from_released(args.checkpoint, args.preset).save_pretrained(args.out, preset=args.preset)
    print(f"wrote {out / WEIGHTS} and {out / CONFIG}")
    return 0
