"""`taskprompter export`: a model directory to ONNX, optionally checked against eager in onnxruntime."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..engine.rundir import check_writable
from ..errors import CheckpointError, ConfigError
from ..export import FORMATS, check_onnx, export_onnx, load_for_export, output_tasks


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="run directory, checkpoint directory, or a converted "
                        "model directory (model.safetensors + config.yaml)")
    parser.add_argument("--format", default="onnx", choices=FORMATS)
    parser.add_argument("--out", required=True, help="output file, e.g. model.onnx")
    parser.add_argument("--opset", type=int, default=17, help="ONNX opset (>= 14 for scaled_dot_product_attention)")
    parser.add_argument("--check", action="store_true", help="compare onnxruntime with eager on batches 1 and 3")
    parser.add_argument("--atol", type=float, default=1e-4, help="largest difference --check accepts")


def run(args: argparse.Namespace) -> int:
    if args.opset < 14:
        raise ConfigError(f"--opset {args.opset}: the attention needs opset 14 or later")
    check_writable(Path(args.out).parent)  # an output folder that cannot be written fails before the export
    try:
        model = load_for_export(args.checkpoint)
    except FileNotFoundError as err:
        raise CheckpointError(f"checkpoint not found: {args.checkpoint}") from err
    path = export_onnx(model, args.out, opset=args.opset)
    tasks = output_tasks(model)
    H, W = model.img_size
    print(f"wrote {path} ({path.stat().st_size / 2 ** 20:.1f} MiB): input images (batch, 3, {H}, {W}); outputs "
          + ", ".join(tasks))
    if args.check:
        diffs = check_onnx(path, model)
        worst = max(v for d in diffs.values() for v in d.values())
        for b, d in diffs.items():
            print(f"onnxruntime vs eager, batch {b}: " + ", ".join(f"{t} {v:.2e}" for t, v in d.items()))
        if worst > args.atol:
            print(f"export: onnxruntime differs from eager by {worst:.3g} > {args.atol:g}")
            return 1
    return 0
