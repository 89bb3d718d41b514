"""`taskprompter predict`: run a model on your own images of any size; maps, figures and affinities per image.

Every image gets its own folder under ``--out`` (named by `inference.output_names`: the file's stem, or its path
relative to the inputs' common folder where stems are shared). An image that cannot be read is skipped and the run
goes on; the skipped files are listed at the end, one line each on stderr, and the exit status is 1. A run with no
image at all is a one-line error (exit status 2) that writes nothing.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tqdm import tqdm

from ..data.geometry import Camera
from ..engine.distributed import default_device
from ..engine.rundir import check_writable
from ..errors import DataError, TaskPrompterError
from ..inference import Predictor, find_images, output_names, read_image
from ..visualize import write_prediction


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="checkpoint directory (or run directory -> last)")
    parser.add_argument("--input", required=True, nargs="+",
                        help="image file(s), directory or glob pattern (hidden files and non-images in directories "
                             "and globs are skipped)")
    parser.add_argument("--out", required=True, help="output directory (one folder per image)")
    parser.add_argument("--affinity", action="store_true",
                        help="also write, in each image's folder under affinity/, the spatial task-prompt affinity "
                             "maps per task and level and the channel affinity plot per level (paper Figs. 4, 8)")
    parser.add_argument("--sliding-window", action="store_true",
                        help="run model-sized windows over the image at its own resolution (large images)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--amp", default="auto", choices=["auto", "bf16", "fp16", "off"],
                        help="precision: auto (default) = bf16 autocast where the device multiplies bf16 natively "
                             "(CPUs with AMX or AVX512-BF16, CUDA GPUs with bf16), else fp32; off = fp32; fp16 on "
                             "CUDA only. Maps and logits are returned in fp32 either way")
    parser.add_argument("--camera", default=None, metavar="JSON",
                        help="3-D detection models: the images' camera, a Cityscapes-3D gtBbox3d JSON or its "
                             "'sensor' block, in the pixels of the images (default: Cityscapes' camera scaled to "
                             "each image)")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile the model (pays off over many images of one size; the first image "
                             "includes the compilation)")


def read_camera(path: str):
    """The camera of a Cityscapes-3D JSON (a gtBbox3d file's ``sensor`` block, or the block itself)."""
    try:
        data = json.loads(Path(path).read_text())
        return Camera.from_json(data.get("sensor", data))
    except (OSError, ValueError, AttributeError) as err:
        raise DataError(f"--camera {path}: not a Cityscapes-3D camera ({err})") from err


def run(args: argparse.Namespace) -> int:
    images = find_images(args.input)  # before the model loads: a wrong path fails at once, with nothing written
    names = output_names(images)
    device = default_device(args.device, option="--device ")  # a CUDA device this machine lacks: one line
    check_writable(Path(args.out))  # an output folder that cannot be written fails before the model loads
    camera = read_camera(args.camera) if args.camera else None  # a bad file fails before the model loads
    predictor = Predictor.from_pretrained(args.checkpoint, device=str(device), amp=args.amp, compile=args.compile)
    out = Path(args.out)
    failed: list[str] = []
    bar = tqdm(images, desc="predict", unit="image", file=sys.stderr, dynamic_ncols=True)
    for path in bar:
        bar.set_postfix_str(path.name, refresh=False)
        try:
            image = read_image(path)
            pred = predictor.predict(image, sliding_window=args.sliding_window, affinity=args.affinity,
                                     camera=camera)
        except TaskPrompterError as err:  # an unreadable file: note it, go on with the others
            failed.append(str(err))
            continue
        write_prediction(out / names[path], image, pred.maps, num_classes=predictor.num_classes,
                         spatial_affinity=pred.spatial_affinity, channel_affinity=pred.channel_affinity,
                         task_names=predictor.tasks, boxes3d=pred.boxes3d, camera=pred.camera)
        tqdm.write(f"{path} ({image.shape[1]}x{image.shape[0]}) -> {out / names[path]}", file=sys.stdout)
    bar.close()
    for reason in failed:
        print(f"taskprompter predict: skipped: {reason}", file=sys.stderr)
    if failed:
        done = len(images) - len(failed)
        print(f"taskprompter predict: {len(failed)} of {len(images)} image(s) failed; "
              + (f"the other {done} are in {out}" if done else "nothing was written"), file=sys.stderr)
    return 1 if failed else 0
