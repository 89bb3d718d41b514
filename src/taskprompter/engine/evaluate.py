"""`taskprompter eval` and the evaluation used during training: every task's meter over a split.

    taskprompter eval --checkpoint runs/x/last [--config ...] [--split val] [--save-predictions DIR]
    torchrun --nproc_per_node 4 -m taskprompter eval --checkpoint ...

Under torchrun each process takes samples r, r+W, r+2W, ... (each counted exactly once, no padding duplicates) and
the meters' sums are all-reduced. Saved predictions are un-padded to the original image size, like the published
evaluation: boundaries as PNG uint8(sigmoid * 255) (SEISM reads those), class maps as PNG ids, saliency as PNG
uint8(p * 255), normals as PNG RGB, depth as .npy metres.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Subset

from ..config import Config, apply_overrides, from_dict, load_config
from ..data import build_dataset, collate
from ..data.cityscapes3d import record_camera
from ..data.sampling import shard_indices
from ..data.transforms import eval_transform, fixed_size_transform, train_transform
from ..errors import CheckpointError, ConfigError, TaskPrompterError
from ..inference import logits_to_map
from ..metrics import (
    CLASS_TASKS,
    MetricSpec,
    build_meter,
    build_meters,
    evaluate_cityscapes3d_records,
    write_cityscapes3d_predictions,
)
from ..tasks import DATASET_SPECS, TASKS, higher_is_better, ordered_tasks
from .checkpoint import load_model
from .distributed import Dist, cleanup_distributed, gather_objects, init_distributed, summed_over_processes, unwrap
from .precision import choose_precision


class NonFiniteOutputError(TaskPrompterError):
    """The model produced NaN or Inf during evaluation; no metrics are reported."""


def task_channels(dataset_format: str, tasks: list[str] | tuple[str, ...], root: str | None = None,
                  split: str = "train") -> dict[str, int]:
    """{task: output channels} of the dataset's label sets (`tasks.DATASET_SPECS`), in the released task order (a
    ``custom`` dataset is opened at ``root`` to read its channels)."""
    if dataset_format in DATASET_SPECS:
        provided = DATASET_SPECS[dataset_format].tasks
    else:
        provided = build_dataset(dataset_format, root, split, list(tasks)).task_channels
    missing = [t for t in tasks if t not in provided]
    if missing:
        raise ConfigError(f"data.tasks {missing} are not labelled in {dataset_format} (it has {list(provided)})")
    return {t: int(provided[t]) for t in ordered_tasks(tasks)}


def zero_depth_valid(dataset_format: str) -> bool:
    """The dataset's depth task holds disparity with -1 = invalid, so 0 is a valid target (Cityscapes-3D)."""
    spec = DATASET_SPECS.get(dataset_format)
    return spec is not None and spec.depth_name == "disparity"


def label_size(cfg: Config) -> tuple[int, int]:
    """The size of the label maps (and of the model's outputs) for ``data.size``: the dataset's ``label_scale``."""
    scale = DATASET_SPECS[cfg.data.format].label_scale if cfg.data.format in DATASET_SPECS else 1.0
    return (round(cfg.data.size[0] * scale), round(cfg.data.size[1] * scale))


def dataset_transform(cfg: Config, tasks: list[str], *, train: bool):
    """The input pipeline of the dataset's protocol (``DatasetSpec.pipeline``): "crop" -- the released PASCAL/NYUD
    augmentation for training, centred padding for evaluation -- or "resize" -- the released Cityscapes-3D pipeline,
    image resized to ``data.size`` and labels to the label size, no geometric augmentation (``data.flip`` and
    ``data.scale_range`` must be off)."""
    spec = DATASET_SPECS.get(cfg.data.format)
    if spec is not None and spec.pipeline == "resize":
        if train and (cfg.data.flip or tuple(cfg.data.scale_range) != (1.0, 1.0)):
            raise ConfigError(f"{cfg.data.format} trains without geometric augmentation (released; its 3-D boxes "
                              "and camera are not transformed): set data.flip=false and data.scale_range=[1, 1]")
        return fixed_size_transform(tuple(cfg.data.size), label_size(cfg), photometric=train and cfg.data.photometric)
    if train:
        return train_transform(tuple(cfg.data.size), tasks, scale=tuple(cfg.data.scale_range),
                               flip_p=0.5 if cfg.data.flip else 0.0, photometric=cfg.data.photometric)
    return eval_transform(tuple(cfg.data.size))


def reader_options(cfg: Config) -> dict[str, Any]:
    """``data.reader_options``, with the Euler convention of the boxes' angles taken from the detector's
    (``model.overrides.detection.euler``, default "fixed") when 3ddet is trained: the reader writes the targets in
    the convention the detector decodes them with, so the two may not differ; and ``labelled_tasks`` from
    ``data.labelled_tasks`` (partial labels: auto | all | a record file), for the training and evaluation readers
    alike."""
    options = dict(cfg.data.reader_options)
    if "labelled_tasks" in options:
        raise ConfigError("data.reader_options.labelled_tasks: set data.labelled_tasks instead (auto, all or a record "
                          "file)")
    options["labelled_tasks"] = cfg.data.labelled_tasks
    if "3ddet" in cfg.data.tasks:
        euler = dict(cfg.model.overrides.get("detection") or {}).get("euler", "fixed")
        if options.setdefault("euler", euler) != euler:
            raise ConfigError(f"data.reader_options.euler={options['euler']!r} differs from the detector's "
                              f"model.overrides.detection.euler={euler!r}: set both alike")
    return options


def build_eval_dataset(cfg: Config, split: str, tasks: list[str]):
    ds = build_dataset(cfg.data.format, cfg.data.root, split, tasks, dataset_transform(cfg, tasks, train=False),
                       edge_protocol="seism",  # boundaries are scored against SEISM's ground truth
                       options=reader_options(cfg))
    if cfg.data.max_val_samples and len(ds) > cfg.data.max_val_samples:
        ds = Subset(ds, list(range(cfg.data.max_val_samples)))
    return ds


def build_task_meters(tasks: Mapping[str, int], dataset_format: str) -> dict[str, Any]:
    """Meters with the dataset's conventions (`tasks.DATASET_SPECS`); for other formats (custom) the class counts
    come from ``tasks`` and the rest is generic. Detection tasks have no pixel meter (mDS: the detection issue)."""
    tasks = {t: c for t, c in dict(tasks).items() if TASKS[t].kind != "detect"}
    if dataset_format in DATASET_SPECS:
        return build_meters(list(tasks), dataset=dataset_format)
    return {t: build_meter(t, num_classes=c) if t in CLASS_TASKS else build_meter(t) for t, c in tasks.items()}


def best_metric_spec(name: str, tasks: list[str]) -> MetricSpec:
    """The metric that picks the best checkpoint: "task.metric", or auto = the first task's primary metric; its
    direction comes from the task table (`tasks.higher_is_better`)."""
    task, _, metric = (tasks[0], "", TASKS[tasks[0]].primary) if name == "auto" else name.partition(".")
    if task not in tasks:
        raise ConfigError(f"train.best_metric '{name}': task '{task}' is not trained (tasks: {tasks})")
    return MetricSpec(task, metric, higher_is_better(metric))


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
    ``tasks`` maps each evaluated task to its output channels. Each dense task's meter sees only the samples
    labelled for it (``batch["labelled"]``, partially labelled data) and its dict adds ``num_samples``, how many
    it was evaluated on; a task without any labelled sample has every metric NaN and ``num_samples`` 0 (and a
    warning says so). The 3-D detection task is scored by mDS
    (`metrics.evaluate_cityscapes3d_records`, modal matching as TaskPrompter reports it): every image's boxes are
    decoded, gathered from all processes and scored once; ``save_dir`` also gets them as the official evaluator's
    JSON files (``<save_dir>/3ddet/<stem>leftImg8bit.json``)."""
    detect = [t for t in tasks if TASKS[t].kind == "detect"]
    tasks = {t: c for t, c in tasks.items() if TASKS[t].kind != "detect"}
    meters = build_task_meters(tasks, dataset_format)
    counts = torch.zeros(len(tasks), dtype=torch.float64)  # samples each task's meter saw (exact in float64)
    boxes: list[tuple[Any, Any]] = []  # (ground-truth record, decoded detections) per image of this process
    shard = Subset(dataset, shard_indices(len(dataset), dist.rank, dist.world_size))
    loader = DataLoader(shard, batch_size=batch_size, shuffle=False, collate_fn=collate, num_workers=num_workers)
    was_training = model.training
    model.eval()
    if progress and dist.is_main:
        from tqdm import tqdm

        loader = tqdm(loader, desc="eval", dynamic_ncols=True)
    broken = ""  # the first non-finite output of this process: "task on sample id"
    for batch in loader:
        images = batch["image"].to(dist.device, non_blocking=True)
        with torch.autocast(dist.device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            raw_outputs = model(images)  # {task: (B, C_t, H, W)} at the (padded) label resolution
        outputs = {t: raw_outputs[t].float().cpu() for t in tasks}
        broken = first_non_finite(outputs, batch["meta"])
        if broken:  # metrics of NaN/Inf outputs would look plausible (argmax of NaN is 0): stop instead
            break
        for k, task in enumerate(tasks):
            labelled = batch.get("labelled", {}).get(task)
            if labelled is None or bool(labelled.all()):
                meters[task].update(outputs[task], batch[task])
                counts[k] += len(batch["meta"])
            elif bool(labelled.any()):  # only the samples labelled for the task
                meters[task].update(outputs[task][labelled], batch[task][labelled])
                counts[k] += int(labelled.sum())
        if save_dir is not None:
            save_predictions(Path(save_dir), outputs, batch["meta"])
        if detect:
            boxes += decoded_boxes(model, raw_outputs, batch, save_dir)
    model.train(was_training)
    _raise_if_non_finite(broken, dist)
    results = {}
    counts = summed_over_processes(counts, dist)
    for k, task in enumerate(tasks):
        meters[task].all_reduce()
        results[task] = meters[task].compute()
        if counts[k] == 0 and len(dataset) > 0:
            warnings.warn(f"evaluation: no sample of the split is labelled for {task}; its metrics are NaN "
                          "(labelled_tasks.json, docs/data.md)", stacklevel=2)
            results[task] = {name: float("nan") for name in results[task]}
        results[task]["num_samples"] = int(counts[k])
    if detect:
        results["3ddet"] = detection_scores(boxes)
    return results


def decoded_boxes(model: torch.nn.Module, outputs: Mapping[str, Any], batch: Mapping[str, Any],
                  save_dir: str | Path | None) -> list[tuple[Any, Any]]:
    """(ground-truth record, detections) of every image of a batch; the detections are decoded with the image's own
    camera (`Detector3D.decode`) and, with ``save_dir``, written as the official evaluator reads them."""
    records = batch.get("3ddet")
    if records is None:
        raise TaskPrompterError("the evaluation batch has no 3ddet records: evaluate 3-D detection on Cityscapes-3D "
                                "with 3ddet among data.tasks")
    detections = unwrap(model).heads["3ddet"].decode(outputs["3ddet"], records=records)
    if save_dir is not None:
        for meta, record, det in zip(batch["meta"], records, detections):
            write_cityscapes3d_predictions(Path(save_dir) / "3ddet", f"{meta['id']}_", det, record_camera(record),
                                           image_size=tuple(int(v) for v in record["image_size"]))
    gt = [{k: v.numpy() if torch.is_tensor(v) else v for k, v in r.items()} for r in records]
    return list(zip(gt, detections))


def detection_scores(boxes: list[tuple[Any, Any]]) -> dict[str, float]:
    """mDS, mAP and the per-class terms over the images of every process (gathered; each process computes the
    same numbers)."""
    everything = [pair for part in gather_objects(boxes) for pair in part]
    if not everything:
        return {"mDS": float("nan"), "mAP": float("nan")}
    result = evaluate_cityscapes3d_records([g for g, _ in everything], [p for _, p in everything])
    flat = {"mDS": float(result["mDS"]), "mAP": float(result["mAP"])}
    for name, values in result["per_class"].items():
        for key in ("AP", "DS"):
            flat[f"{key}_{name}"] = float(values[key])
    return flat


def first_non_finite(outputs: Mapping[str, torch.Tensor], metas: list[dict[str, Any]]) -> str:
    """"task on sample ID" for the first output holding NaN or Inf, or "" when all are finite."""
    for task, logits in outputs.items():
        bad = ~torch.isfinite(logits).flatten(1).all(1)  # (B,)
        if bad.any():
            return f"{task} on sample {metas[int(bad.nonzero()[0])]['id']}"
    return ""


def _raise_if_non_finite(broken: str, dist: Dist) -> None:
    """Every process stops together (the meters' all-reduce would otherwise wait for the one that stopped)."""
    if summed_over_processes(torch.tensor([1.0 if broken else 0.0]), dist).item() > 0:
        where = broken or "a sample of another process"
        raise NonFiniteOutputError(f"the model's outputs are NaN or infinite for {where}: metrics not reported "
                                   "(check the checkpoint's weights, e.g. after a diverged run, and the input)")


def format_table(results: dict[str, dict[str, float]]) -> str:
    """Aligned text table: one row per task, the primary metric first, then the other scalar metrics."""
    lines = []
    counts = {t: v["num_samples"] for t, v in results.items() if isinstance(v.get("num_samples"), int)}
    for task, values in results.items():
        primary = TASKS[task].primary if task in TASKS else next(iter(values), "")
        keys = [primary] + [k for k in values if k != primary and not k.startswith(("iou_", "class_"))
                            and k != "num_samples"]
        cells = "  ".join(f"{k} {values[k]:.4f}" if k == primary and task == "depth" else f"{k} {values[k]:.2f}"
                          for k in keys if k in values and isinstance(values[k], (int, float)))
        name = TASKS[task].pretty if task in TASKS else task
        if counts.get(task) == 0:
            cells = "no labelled sample (metrics NaN)"
        elif len(set(counts.values())) > 1:  # partially labelled data: say how many samples each task had
            cells += f"  (n {counts[task]})"
        lines.append(f"  {name:<9} {cells}")
    return "\n".join(lines)


def evaluate_checkpoint(checkpoint: str | Path, *, config: str | None = None,
                        overrides: list[str] | tuple[str, ...] = (), split: str | None = None,
                        save_predictions: str | Path | None = None,
                        out: str | Path | None = None, batch_size: int | None = None, device: str | None = None,
                        amp: str | None = None, progress: bool = True) -> dict[str, Any]:
    """Evaluate a checkpoint with every metric (under torchrun: sharded, meters all-reduced) and write
    ``metrics.json`` into ``out`` (default ``<run>/eval-<checkpoint>-<split>``). The config is the one stored in the
    checkpoint unless ``config`` is given; ``overrides`` are ``key=value`` strings on top. ``amp``: auto | bf16 |
    fp16 | off (default: the config's ``train.amp``, chosen as in training: `precision.py`). Returns the record
    written, with ``"path"`` (None on processes other than the first) and ``"precision"`` (fp32 | bf16 | fp16)."""
    overrides = list(overrides) + ([f"train.device={device}"] if device else []) + ([f"train.amp={amp}"] if amp else [])
    d = init_distributed("auto" if device is None else device)
    try:
        model, ckpt = load_model(checkpoint, device=d.device)
        if config is not None:
            cfg = load_config(config, overrides)
        elif ckpt.config:
            cfg = from_dict(apply_overrides(ckpt.config, overrides), f"{ckpt.path}/checkpoint.yaml")
        else:
            raise CheckpointError(f"{ckpt.path} stores no training config; pass --config (e.g. pascal_context_vit_b)")
        tasks = {t: int(model.init_kwargs["tasks"][t]) for t in model.task_names}
        if tuple(cfg.data.size) != tuple(model.img_size):  # evaluation pads to the model's input size
            cfg = replace(cfg, data=replace(cfg.data, size=tuple(model.img_size)))
        split = split or cfg.data.val_split
        precision = choose_precision(cfg.train.amp, d.device, option="--amp" if amp else "train.amp")
        ds = build_eval_dataset(cfg, split, list(tasks))
        results = evaluate(model, ds, tasks=tasks, dataset_format=cfg.data.format, dist=d,
                           batch_size=batch_size or cfg.train.eval_batch_size, num_workers=cfg.data.num_workers,
                           amp_dtype=precision.dtype, save_dir=save_predictions, progress=progress)
        record = {"checkpoint": str(ckpt.path), "step": ckpt.step, "dataset": cfg.data.format, "split": split,
                  "num_samples": len(ds), "precision": precision.name, "metrics": results, "path": None}
        if d.is_main:
            target = Path(out) if out else ckpt.path.parent / f"eval-{ckpt.path.name}-{split}"
            target.mkdir(parents=True, exist_ok=True)
            (target / "metrics.json").write_text(json.dumps({k: v for k, v in record.items() if k != "path"},
                                                            indent=2) + "\n")
            record["path"] = str(target / "metrics.json")
        return record
    finally:
        cleanup_distributed()
