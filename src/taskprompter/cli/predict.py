"""`taskprompter predict`: run a model on your own images of any size; maps, figures and affinities per image."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from ..inference import Predictor, find_images, read_image
from ..visualize import plot_channel_affinity, write_prediction


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="checkpoint directory (or run directory -> last)")
    parser.add_argument("--input", required=True, nargs="+", help="image file(s), directory or glob pattern")
    parser.add_argument("--out", required=True, help="output directory (one folder per image)")
    parser.add_argument("--affinity", action="store_true",
                        help="also write spatial task-prompt affinity maps per task and level, and the channel "
                             "affinity plot (paper Figs. 4, 8)")
    parser.add_argument("--sliding-window", action="store_true",
                        help="run model-sized windows over the image at its own resolution (large images)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")


def run(args: argparse.Namespace) -> int:
    predictor = Predictor.from_pretrained(args.checkpoint, device=args.device)
    out = Path(args.out)
    images = find_images(args.input)
    channel: list[list[np.ndarray | None]] = []
    used: set[str] = set()
    for path in images:
        name = path.stem if path.stem not in used else f"{path.stem}_{len(used)}"
        used.add(name)
        image = read_image(path)
        pred = predictor.predict(image, sliding_window=args.sliding_window, affinity=args.affinity)
        write_prediction(out / name, image, pred.maps, num_classes=predictor.num_classes,
                         spatial_affinity=pred.spatial_affinity, channel_affinity=pred.channel_affinity,
                         task_names=predictor.tasks)
        channel.append(pred.channel_affinity)
        print(f"{path} ({image.shape[1]}x{image.shape[0]}) -> {out / name}")
    for k in range(len(channel[0]) if channel else 0):  # the paper averages channel affinity over all images
        per_image = [c[k] for c in channel if c[k] is not None]
        if per_image:
            plot_channel_affinity(out / f"channel_affinity_level{k + 1}.png", np.mean(per_image, axis=0),
                                  predictor.tasks, title=f"channel task-prompt affinity, level {k + 1}, "
                                  f"mean over {len(per_image)} image(s)")
    return 0
