"""`taskprompter eval` and the evaluation used during training: every task's meter over a split.

    taskprompter eval --checkpoint runs/x/last [--config ...] [--split val] [--save-predictions DIR]
    torchrun --nproc_per_node 4 -m taskprompter eval --checkpoint ...

Under torchrun each process takes samples r, r+W, r+2W, ... (each counted exactly once, no padding duplicates) and
the meters' sums are all-reduced. Saved predictions are un-padded to the original image size, like the published
evaluation: boundaries as PNG uint8(sigmoid * 255) (SEISM reads those), class maps as PNG ids, saliency as PNG
uint8(p * 255), normals as PNG RGB, depth as .npy metres.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Subset

from ..config import Config, apply_overrides, from_dict, load_config
from ..errors import CheckpointError, ConfigError
from ..tasks import TASKS, ordered_tasks
from .distributed import Dist, init_distributed, shard_indices


def task_channels(dataset_format: str, tasks: list[str] | tuple[str, ...], root: str | None = None,
                  split: str = "train") -> dict[str, int]:
    """{task: output channels} of the dataset's label sets, in the released task order (a ``custom`` dataset is
    opened at ``root`` to read its channels)."""
    from ..data import DATASET_TASKS, build_dataset

    if dataset_format in DATASET_TASKS:
        provided = DATASET_TASKS[dataset_format]
    else:
        provided = build_dataset(dataset_format, root, split, list(tasks)).task_channels
    missing = [t for t in tasks if t not in provided]
    if missing:
        raise ConfigError(f"data.tasks {missing} are not labelled in {dataset_format} (it has {list(provided)})")
    return {t: int(provided[t]) for t in ordered_tasks(tasks)}


def build_eval_dataset(cfg: Config, split: str, tasks: list[str]):
    from ..data import build_dataset
    from ..data.transforms import eval_transform

    ds = build_dataset(cfg.data.format, cfg.data.root, split, tasks, eval_transform(tuple(cfg.data.size)))
    if cfg.data.max_val_samples and len(ds) > cfg.data.max_val_samples:
        ds = Subset(ds, list(range(cfg.data.max_val_samples)))
    return ds


def build_task_meters(tasks: Mapping[str, int], dataset_format: str) -> dict[str, Any]:
    """Meters with the dataset's conventions; for other formats (custom) the class counts come from ``tasks``."""
    from ..metrics import build_meter, build_meters

    if dataset_format in ("pascal_context", "nyud"):
        return build_meters(list(tasks), dataset=dataset_format)
    return {t: build_meter(t, num_classes=c) if t in ("semseg", "human_parts") else build_meter(t)
            for t, c in tasks.items()}


class _Spec:
    def __init__(self, task: str, primary: str, higher_is_better: bool) -> None:
        self.task, self.primary, self.higher_is_better = task, primary, higher_is_better


def best_metric_spec(name: str, tasks: list[str]) -> _Spec:
    """The metric that picks the best checkpoint: "task.metric", or auto = the first task's primary metric."""
    from ..metrics import METRIC_SPECS

    task, _, metric = (tasks[0], "", "") if name == "auto" else name.partition(".")
    if task not in tasks:
        raise ConfigError(f"train.best_metric '{name}': task '{task}' is not trained (tasks: {tasks})")
    spec = METRIC_SPECS[task]
    if name == "auto" or metric == spec.primary:
        return _Spec(task, spec.primary, spec.higher_is_better)
    lower = metric in ("rmse", "log_rmse", "abs_rel", "sq_rel", "mean", "median")  # errors: lower is better
    return _Spec(task, metric, not lower)


def _unpad(logits: torch.Tensor, meta: dict[str, Any]) -> torch.Tensor:
    """(C, Hp, Wp) padded logits -> (C, H0, W0) at the original image size."""
    top, bottom, left, right = meta.get("pad", (0, 0, 0, 0))
    Hp, Wp = logits.shape[-2:]
    x = logits[:, top:Hp - bottom, left:Wp - right]  # (C, H, W) the un-padded region
    size = tuple(meta.get("size", x.shape[-2:]))
    if tuple(x.shape[-2:]) != size:
        x = F.interpolate(x[None].float(), size=size, mode="bilinear", align_corners=False)[0]
    return x


def save_predictions(out_dir: Path, outputs: dict[str, torch.Tensor], metas: list[dict[str, Any]]) -> None:
    from PIL import Image

    from ..inference import logits_to_map

    for task, logits in outputs.items():
        (out_dir / task).mkdir(parents=True, exist_ok=True)
        for b, meta in enumerate(metas):
            m = logits_to_map(task, _unpad(logits[b].float().cpu(), meta))
            stem = out_dir / task / str(meta["id"])
            if task == "depth":
                np.save(f"{stem}.npy", m.astype(np.float32))
                continue
            if task in ("sal", "edge"):
                img = (m * 255.0).astype(np.uint8)  # truncated, as the published boundary evaluation wrote them
            elif task == "normals":
                img = ((m + 1.0) / 2.0 * 255.0).round().clip(0, 255).astype(np.uint8)
            else:
                img = m.astype(np.uint8)
            Image.fromarray(img).save(f"{stem}.png")


@torch.no_grad()
def evaluate(model: torch.nn.Module, dataset, *, tasks: Mapping[str, int], dataset_format: str, dist: Dist,
             batch_size: int = 4, num_workers: int = 0, amp_dtype: torch.dtype | None = None,
             save_dir: str | Path | None = None, progress: bool = False) -> dict[str, dict[str, float]]:
    """{task: {metric: value}} over ``dataset`` (this process's shard; meters all-reduced across processes).
    ``tasks`` maps each evaluated task to its output channels."""
    from ..data import collate

    meters = build_task_meters(tasks, dataset_format)
    shard = Subset(dataset, shard_indices(len(dataset), dist.rank, dist.world_size))
    loader = DataLoader(shard, batch_size=batch_size, shuffle=False, collate_fn=collate, num_workers=num_workers)
    was_training = model.training
    model.eval()
    if progress and dist.is_main:
        from tqdm import tqdm

        loader = tqdm(loader, desc="eval", dynamic_ncols=True)
    for batch in loader:
        images = batch["image"].to(dist.device, non_blocking=True)
        with torch.autocast(dist.device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            outputs = model(images)  # {task: (B, C_t, H, W)} at the (padded) label resolution
        outputs = {t: outputs[t].float().cpu() for t in tasks}
        for task in tasks:
            meters[task].update(outputs[task], batch[task])
        if save_dir is not None:
            save_predictions(Path(save_dir), outputs, batch["meta"])
    model.train(was_training)
    results = {}
    for task in tasks:
        meters[task].all_reduce()
        results[task] = meters[task].compute()
    return results


def format_table(results: dict[str, dict[str, float]]) -> str:
    """Aligned text table: one row per task, the primary metric first, then the other scalar metrics."""
    from ..metrics import METRIC_SPECS

    lines = []
    for task, values in results.items():
        primary = METRIC_SPECS[task].primary if task in METRIC_SPECS else next(iter(values), "")
        keys = [primary] + [k for k in values if k != primary and not k.startswith(("iou_", "class_"))]
        cells = "  ".join(f"{k} {values[k]:.4f}" if k == primary and task == "depth" else f"{k} {values[k]:.2f}"
                          for k in keys if k in values and isinstance(values[k], (int, float)))
        name = TASKS[task].pretty if task in TASKS else task
        lines.append(f"  {name:<9} {cells}")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------- CLI


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


def run(args: argparse.Namespace) -> int:
    from .checkpoint import load_model

    overrides = [item for group in args.overrides for item in group]
    if args.device:
        overrides.append(f"train.device={args.device}")
    d = init_distributed("auto" if args.device is None else args.device)
    model, ckpt = load_model(args.checkpoint, device=d.device)
    if args.config is not None:
        cfg = load_config(args.config, overrides)
    elif ckpt.config:
        where = f"{ckpt.path}/checkpoint.yaml"
        cfg = from_dict(apply_overrides(ckpt.config, overrides), where)
    else:
        raise CheckpointError(f"{ckpt.path} stores no training config; pass --config (e.g. pascal_context_vit_b)")
    tasks = {t: int(model.init_kwargs["tasks"][t]) for t in model.task_names}
    if tuple(cfg.data.size) != tuple(model.img_size):  # evaluation pads to the model's input size
        cfg = replace(cfg, data=replace(cfg.data, size=tuple(model.img_size)))
    split = args.split or cfg.data.val_split
    ds = build_eval_dataset(cfg, split, list(tasks))
    results = evaluate(model, ds, tasks=tasks, dataset_format=cfg.data.format, dist=d,
                       batch_size=args.batch_size or cfg.train.eval_batch_size, num_workers=cfg.data.num_workers,
                       save_dir=args.save_predictions, progress=True)
    if d.is_main:
        print(f"{ckpt.path} (step {ckpt.step}) on {cfg.data.format}:{split}, {len(ds)} images")
        print(format_table(results))
        out = Path(args.out) if args.out else ckpt.path.parent / f"eval-{ckpt.path.name}-{split}"
        out.mkdir(parents=True, exist_ok=True)
        record = {"checkpoint": str(ckpt.path), "step": ckpt.step, "dataset": cfg.data.format, "split": split,
                  "num_samples": len(ds), "metrics": results}
        (out / "metrics.json").write_text(json.dumps(record, indent=2) + "\n")
        print(f"wrote {out / 'metrics.json'}")
    from .distributed import cleanup_distributed

    cleanup_distributed()
    return 0
