"""`taskprompter train`: the training loop, one readable function.

    taskprompter train --config pascal_context_vit_b [--set optim.max_iters=200 ...] [--resume]
    torchrun --nproc_per_node 4 -m taskprompter train --config ...        # DDP, switched on by torchrun's env

Determinism: the data order and every sample's augmentation come from (seed, global position), and torch's RNG
(drop-path) is re-seeded from (seed, step, rank) at each step, so ``--resume`` continues exactly where a killed run
stopped -- on the CPU the final weights equal an uninterrupted run's, bit for bit.
"""

from __future__ import annotations

import contextlib
import math
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from ..config import Config, to_dict
from ..data import build_dataset, collate
from ..data.sampling import SeededSamples, StepBatches, micro_batch_size, micro_batches, mix_seed
from ..data.transforms import train_transform
from ..errors import CheckpointError, ConfigError, TaskPrompterError
from ..losses import MultiTaskLoss
from ..model.build import build_variant
from ..model.io import load_state_exactly
from ..model.pretrained import load_vit_weights
from . import checkpoint as ck
from . import distributed as dist_utils
from .distributed import Dist, init_distributed, unwrap, wrap_model
from .evaluate import best_metric_spec, build_eval_dataset, evaluate, format_table, task_channels
from .logging import RunLog, get_logger
from .optim import build_optimizer, load_optimizer_state, lr_at, set_lr


class NonFiniteLossError(TaskPrompterError):
    """A loss became NaN or infinite; training stops and the last good checkpoint is kept."""


def build_model(cfg: Config, tasks: dict[str, int]) -> torch.nn.Module:
    """The configured preset with this run's tasks and input size (``model.overrides`` on top)."""
    return build_variant(cfg.model.variant, cfg.model.name, tasks=tasks, img_size=tuple(cfg.data.size),
                         **cfg.model.overrides)


def load_pretrained(model: torch.nn.Module, path: str, log) -> None:
    if not Path(path).is_file():
        raise ConfigError(f"model.pretrained: ViT weights not found: {path} (download them once, or train from "
                          "scratch with --set model.pretrained=null)")
    encoders = list(model.encoders.values()) if hasattr(model, "encoders") else [model]
    for m in encoders:
        missing = load_vit_weights(m.backbone, path)
    log.info(f"loaded ViT weights from {path} into {len(encoders)} encoder(s); {len(missing)} prompt tensors per "
             "encoder keep their initialisation")


def amp_settings(cfg: Config, device: torch.device, log) -> tuple[torch.dtype | None, bool]:
    """(autocast dtype or None, use a GradScaler): bf16/fp16 on CUDA only; the CPU always runs fp32."""
    if cfg.train.amp not in ("none", "bf16", "fp16"):
        raise ConfigError(f"train.amp '{cfg.train.amp}' is not one of: none, bf16, fp16")
    if cfg.train.amp == "none":
        return None, False
    if device.type != "cuda":
        log.warning(f"train.amp={cfg.train.amp} ignored on {device.type}: running fp32")
        return None, False
    return (torch.bfloat16, False) if cfg.train.amp == "bf16" else (torch.float16, True)


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


def train(cfg: Config, *, resume: bool | str = False) -> dict[str, Any]:
    """Train ``cfg``; returns {"step", "metrics" (last evaluation), "out_dir"}."""
    d = init_distributed(cfg.train.device)
    if cfg.train.cpu_threads > 0:
        torch.set_num_threads(cfg.train.cpu_threads)
    out_dir = Path(cfg.train.out_dir)
    log = get_logger(is_main=d.is_main)
    try:
        tasks = task_channels(cfg.data.format, cfg.data.tasks, cfg.data.root, cfg.data.train_split)
        train_ds = build_dataset(cfg.data.format, cfg.data.root, cfg.data.train_split, list(tasks),
                                 train_transform(tuple(cfg.data.size), list(tasks), scale=tuple(cfg.data.scale_range),
                                                 flip_p=0.5 if cfg.data.flip else 0.0,
                                                 photometric=cfg.data.photometric))
        val_ds = build_eval_dataset(cfg, cfg.data.val_split, list(tasks))
        micro_batch_size(cfg.train.batch_size, d.world_size, cfg.train.accum_steps)  # fail before any output
        ckpt = _find_resume(resume, out_dir, log)
        torch.manual_seed(cfg.seed)  # the same initial weights on every rank
        model = build_model(cfg, tasks).to(d.device)  # on its device before the (fused) optimiser sees it
        optimizer = build_optimizer(model, cfg.optim)
        amp_dtype, use_scaler = amp_settings(cfg, d.device, log)
        scaler = torch.amp.GradScaler("cuda", enabled=use_scaler)
        start_step, best = 0, None
        if ckpt is not None:
            state = ckpt.train_state()
            load_state_exactly(model, ckpt.state_dict(), source=str(ckpt.path))
            load_optimizer_state(optimizer, state["optimizer"], cfg.optim)
            if state.get("scaler"):
                scaler.load_state_dict(state["scaler"])
            start_step, best = int(state["step"]), state.get("best")
            _warn_config_changes(ckpt, cfg, log)
        elif cfg.model.pretrained:
            load_pretrained(model, cfg.model.pretrained, log)
        run = RunLog(out_dir, cfg, is_main=d.is_main, resume_step=start_step if ckpt else None)
        log = get_logger(is_main=d.is_main, log_file=out_dir / "train.log" if d.is_main else None)
        log.info(f"{'resuming at step ' + str(start_step) if ckpt else 'training'}: {cfg.model.name}, tasks "
                 f"{list(tasks)}, {d.world_size} process(es) on {d.device}, out_dir {out_dir}")
        net = wrap_model(model, d, sync_bn=cfg.train.sync_bn)
        criterion = MultiTaskLoss(tasks=list(tasks), weights=cfg.train.loss_weights or None)

        steps = StepBatches(len(train_ds), seed=cfg.seed, batch_size=cfg.train.batch_size, rank=d.rank,
                            world_size=d.world_size, accum_steps=cfg.train.accum_steps, start_step=start_step)
        loader = DataLoader(SeededSamples(train_ds), batch_sampler=micro_batches(steps), collate_fn=collate,
                            num_workers=cfg.data.num_workers, pin_memory=d.device.type == "cuda")
        batches = iter(loader)
        spec = best_metric_spec(cfg.train.best_metric, list(tasks))
        metrics: dict[str, Any] = {}
        bar = _progress(cfg, d, start_step)
        t0, sums, count = time.time(), {}, 0
        net.train()
        for step in range(start_step, cfg.optim.max_iters):
            torch.manual_seed(mix_seed(cfg.seed, step, d.rank))  # drop-path etc.: a function of (seed, step, rank)
            lr = lr_at(step, cfg.optim)
            set_lr(optimizer, lr)
            optimizer.zero_grad(set_to_none=True)
            for k in range(cfg.train.accum_steps):
                batch = to_device(next(batches), d.device)
                last_micro = k == cfg.train.accum_steps - 1
                sync = contextlib.nullcontext() if last_micro or not d.enabled else net.no_sync()
                with sync:  # gradients are all-reduced on the last micro-batch only
                    with torch.autocast(d.device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                        losses = criterion(net(batch["image"]), batch)  # {task: loss, "total": weighted sum}
                    _check_finite(losses, step, d, out_dir)
                    scaler.scale(losses["total"] / cfg.train.accum_steps).backward()
                for name, value in losses.items():
                    sums[name] = sums.get(name, 0.0) + value.detach().float().item() / cfg.train.accum_steps
            scaler.unscale_(optimizer)
            grad_norm = (torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
                         if cfg.optim.grad_clip > 0 else torch.tensor(float("nan")))
            scaler.step(optimizer)
            scaler.update()
            count += 1
            done = step + 1
            if done % cfg.train.log_every == 0 or done == cfg.optim.max_iters:
                record = _reduce_means(sums, count, d)
                record.update(lr=lr, grad_norm=float(grad_norm), sec_per_iter=(time.time() - t0) / count)
                run.log(done, "train", {f"loss/{k}": v for k, v in record.items() if k in sums} |
                        {k: v for k, v in record.items() if k not in sums})
                if bar is not None:
                    bar.set_postfix(loss=f"{record['total']:.4g}", lr=f"{lr:.2e}", refresh=False)
                t0, sums, count = time.time(), {}, 0
            if bar is not None:
                bar.update(1)
            is_last = done == cfg.optim.max_iters
            if (cfg.train.eval_every > 0 and done % cfg.train.eval_every == 0) or is_last:
                metrics = evaluate(model, val_ds, tasks=tasks, dataset_format=cfg.data.format, dist=d,
                                   batch_size=cfg.train.eval_batch_size, num_workers=cfg.data.num_workers,
                                   amp_dtype=amp_dtype)
                run.log(done, "val", metrics)
                log.info(f"step {done} evaluation\n" + format_table(metrics))
                value = metrics.get(spec.task, {}).get(spec.primary)
                if value is not None and _improves(value, best, spec.higher_is_better):
                    best = {"metric": f"{spec.task}.{spec.primary}", "value": float(value), "step": done}
                    _save(out_dir / "best", model, optimizer, scaler, cfg, tasks, done, best, metrics, d)
                net.train()
            if done % cfg.train.checkpoint_every == 0 or is_last:
                _save(out_dir / "last", model, optimizer, scaler, cfg, tasks, done, best, metrics, d)
        if bar is not None:
            bar.close()
        run.close()
        return {"step": cfg.optim.max_iters, "metrics": metrics, "out_dir": str(out_dir), "best": best,
                "is_main": d.is_main}
    finally:
        dist_utils.cleanup_distributed()


# ------------------------------------------------------------------------------------------------- helpers


def _find_resume(resume: bool | str, out_dir: Path, log) -> ck.Checkpoint | None:
    if not resume:
        return None
    target = out_dir / "last" if resume is True else Path(resume)
    try:
        return ck.load_checkpoint(target)
    except CheckpointError:
        if resume is True:
            log.info(f"--resume: no checkpoint at {target}; starting from step 0")
            return None
        raise


def _warn_config_changes(ckpt: ck.Checkpoint, cfg: Config, log) -> None:
    before, after = _flat(ckpt.config or {}), _flat(to_dict(cfg))
    changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
    if changed:
        log.warning(f"resuming with a config that differs from the checkpoint's in: {', '.join(changed)}")


def _flat(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in tree.items():
        if isinstance(v, dict) and v:
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _check_finite(losses: dict[str, torch.Tensor], step: int, d: Dist, out_dir: Path) -> None:
    """Stop every process together when any loss is NaN/inf, naming the step and the task(s)."""
    names = [k for k in losses if k != "total"] + ["total"]
    bad = torch.tensor([0.0 if torch.isfinite(losses[k].detach()).all() else 1.0 for k in names])
    if d.enabled:  # every rank must stop, or the others would wait forever in the next all-reduce
        bad = dist_utils.all_reduce_sum_(bad.to(d.device)).cpu()
    if bad.sum() > 0:
        which = [n for n, b in zip(names, bad.tolist()) if b > 0 and n != "total"] or ["total"]
        values = ", ".join(f"{n}={losses[n].detach().float().item():.4g}" for n in which)
        last = out_dir / "last"
        kept = f"the last good checkpoint {last} is kept" if last.exists() else "no checkpoint had been written yet"
        raise NonFiniteLossError(f"non-finite loss at step {step + 1} in task(s) {', '.join(which)} ({values}); "
                                 f"training stopped, {kept}")


def _reduce_means(sums: dict[str, float], count: int, d: Dist) -> dict[str, float]:
    keys = sorted(sums)
    t = torch.tensor([sums[k] / max(count, 1) for k in keys], dtype=torch.float64)
    if d.enabled:
        dev = t.to(d.device) if d.device.type == "cuda" else t
        dist_utils.all_reduce_sum_(dev)
        t = dev.cpu() / d.world_size
    return {k: float(v) for k, v in zip(keys, t.tolist())}


def _improves(value: float, best: dict | None, higher: bool) -> bool:
    if not math.isfinite(value):
        return False
    if best is None:
        return True
    return value > best["value"] if higher else value < best["value"]


def _save(path: Path, model, optimizer, scaler, cfg: Config, tasks: dict[str, int], step: int, best, metrics,
          d: Dist) -> None:
    if d.is_main:
        meta = {"step": step, "tasks": dict(tasks), "best": best, "metrics": _plain(metrics), "config": to_dict(cfg)}
        rng = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        state = {"step": step, "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict() or None,
                 "rng": rng, "best": best,
                 "data": {"seed": cfg.seed, "batch_size": cfg.train.batch_size, "world_size": d.world_size,
                          "accum_steps": cfg.train.accum_steps, "next_step": step}}
        ck.save_checkpoint(path, model=unwrap(model), meta=meta, train_state=state, preset=cfg.model.name)
    dist_utils.barrier()


def _plain(tree: Any) -> Any:
    if isinstance(tree, dict):
        return {str(k): _plain(v) for k, v in tree.items()}
    if isinstance(tree, float) and not math.isfinite(tree):
        return None
    return tree


def _progress(cfg: Config, d: Dist, start: int):
    if not (d.is_main and cfg.train.progress):
        return None
    from tqdm import tqdm

    return tqdm(total=cfg.optim.max_iters, initial=start, desc="train", dynamic_ncols=True, mininterval=1.0)
