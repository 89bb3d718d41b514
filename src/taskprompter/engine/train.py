"""`taskprompter train`: the training loop, one readable function.

    taskprompter train --config pascal_context_vit_b [--set optim.max_iters=200 ...] [--resume]
    torchrun --nproc_per_node 4 -m taskprompter train --config ...        # DDP, switched on by torchrun's env

Determinism: the data order and every sample's augmentation come from (seed, global position), and torch's RNG
(drop-path) is re-seeded from (seed, step, rank) at each step, so ``--resume`` continues exactly where a killed run
stopped -- on the CPU the final weights equal an uninterrupted run's, bit for bit.

Work is never lost by accident: a run directory that holds a previous run needs ``--resume`` or ``--overwrite``, and a
lock keeps a second process out (`rundir.py`); nothing is written before every check has passed (the config against
the model, every sample's file headers, the whole checkpoint to resume, room on disk); a checkpoint is written before
each evaluation, and only with finite weights; Ctrl-C or SIGTERM finishes the step, writes ``last`` and names the
command that resumes.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from ..config import Config, to_dict
from ..data import build_dataset, collate
from ..data.check import header_problems
from ..data.sampling import SeededSamples, StepBatches, micro_batch_size, micro_batches, mix_seed
from ..errors import ConfigError, DataError, TaskPrompterError, one_line, os_error_message
from ..losses import MultiTaskLoss
from ..model.io import load_state_exactly
from ..weighting import (
    LossWeighting,
    begin_accumulated_step,
    build_weighting,
    needs_statistics_first,
    shared_features_for,
    weighted_backward,
)
from . import checkpoint as ck
from . import distributed as dist_utils
from . import rundir
from .distributed import Dist, init_distributed, summed_over_processes, unwrap, wrap_model
from .evaluate import (
    best_metric_spec,
    build_eval_dataset,
    dataset_transform,
    evaluate,
    format_table,
    reader_options,
    task_channels,
    zero_depth_valid,
)
from .logging import EarlyNotes, RunLog, flatten_config, get_logger
from .optim import build_optimizer, check_step_in_backward, load_optimizer_state, lr_at, set_lr
from .setup import amp_settings, build_model, check_model_config, load_pretrained, loss_weights
from .stop import StopRequest, ignore_sigint
from .weighting_steps import check_weighting, load_weighting_state

# what to change before resuming after a non-finite loss or weight
SAME_AGAIN = " after lowering optim.lr (the same data and seed would reach the same values again)"


class NonFiniteError(TaskPrompterError):
    """A loss or a weight became NaN or infinite; training stops and the last good checkpoint is kept."""


class NonFiniteLossError(NonFiniteError):
    """A loss became NaN or infinite (checked before its backward pass)."""


class NonFiniteWeightsError(NonFiniteError):
    """An optimiser step left a weight or buffer NaN or infinite (checked before every checkpoint)."""


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


def train(cfg: Config, *, resume: bool | str = False, overwrite: bool = False) -> dict[str, Any]:
    """Train ``cfg``; returns {"step", "metrics" (last evaluation), "out_dir", "best", "is_main"}.

    ``resume``: True continues the run in ``train.out_dir`` from the newer of its ``last`` and ``best`` (a run without
    a checkpoint starts at step 0; a damaged one is an error), a path continues that checkpoint. ``overwrite`` replaces
    a previous run in ``train.out_dir``; with neither, a previous run there is an error. Nothing is written before
    every check has passed: the run directory (writable, not held by another process, room for the checkpoints), the
    model against the config, every training and validation sample's file headers, the whole checkpoint to resume."""
    d = init_distributed(cfg.train.device)
    if cfg.train.cpu_threads > 0:
        torch.set_num_threads(cfg.train.cpu_threads)
    out_dir = Path(cfg.train.out_dir)
    log = EarlyNotes()  # until the run starts: a refused run prints its one-line error and nothing else
    lock, stop, run = rundir.RunLock(out_dir), StopRequest(), None
    try:
        # -- checks: nothing is written until all of them have passed
        rundir.check_reuse(out_dir, resume=resume, overwrite=overwrite)
        _on_main(d, partial(rundir.probe, out_dir, lock))
        check_model_config(cfg)
        amp_dtype, use_scaler = amp_settings(cfg, d.device, log)  # e.g. fp16 on the CPU: refused before the data
        tasks = task_channels(cfg.data.format, cfg.data.tasks, cfg.data.root, cfg.data.train_split)
        try:
            criterion = MultiTaskLoss(tasks=list(tasks), weights=loss_weights(cfg),
                                      zero_depth_valid=zero_depth_valid(cfg.data.format))
        except ValueError as err:
            raise ConfigError(f"data.tasks: {err}") from err
        train_ds = build_dataset(cfg.data.format, cfg.data.root, cfg.data.train_split, list(tasks),
                                 dataset_transform(cfg, list(tasks), train=True), options=reader_options(cfg))
        val_ds = build_eval_dataset(cfg, cfg.data.val_split, list(tasks))
        micro_batch_size(cfg.train.batch_size, d.world_size, cfg.train.accum_steps)  # fail before any output
        weighting = build_weighting(cfg.train.loss_weighting, tasks=criterion.tasks, base_weights=criterion.weights,
                                    options=cfg.train.loss_weighting_options,
                                    steps_per_epoch=len(train_ds) // cfg.train.batch_size)
        check_weighting(weighting, cfg)
        check_step_in_backward(cfg, world_size=d.world_size, scaler=use_scaler, weighting=weighting)
        spec = best_metric_spec(cfg.train.best_metric, list(tasks))
        if cfg.data.check_files:
            _check_files([train_ds, val_ds], cfg, d, log)
        point = rundir.find_resume(resume, out_dir, log)
        torch.manual_seed(cfg.seed)  # the same initial weights on every rank
        model = build_model(cfg, tasks).to(d.device)  # on its device before the (fused) optimiser sees it
        optimizer = build_optimizer(model, cfg.optim)
        heads = task_heads(model, criterion.tasks)  # a task's own parameters: no gradient in a step without its labels
        partial_labels = getattr(train_ds, "labelled", None) is not None
        if cfg.optim.step_in_backward and partial_labels:
            raise ConfigError("optim.step_in_backward updates every parameter inside the backward, before the step "
                              "knows which tasks its batch has no labels for (their heads must not move): use "
                              "optim.step_in_backward=false with partially labelled data")
        weighting.to(d.device)
        if (group := weighting.param_group()) is not None:  # uw: its log-variances, without weight decay
            optimizer.add_param_group(group)
        scaler = torch.amp.GradScaler("cuda", enabled=use_scaler)
        start_step, best, metrics, evaluated, saved = 0, None, {}, None, None
        if point is not None:
            load_state_exactly(model, point.weights, source=str(point.checkpoint.path))
            load_weighting_state(weighting, point.state, point.checkpoint.path)
            load_optimizer_state(optimizer, point.state["optimizer"], cfg.optim)
            if point.state.get("scaler"):
                scaler.load_state_dict(point.state["scaler"])
            meta = point.checkpoint.meta
            start_step, best = point.step, meta.get("best", point.state.get("best"))
            metrics, evaluated = meta.get("metrics") or {}, meta.get("metrics_step")
            saved = start_step if point.checkpoint.path.name.split(".")[0] == "last" else None
            if start_step > cfg.optim.max_iters:
                raise ConfigError(f"optim.max_iters={cfg.optim.max_iters} is below the step {start_step} of "
                                  f"{point.checkpoint.path}: raise it to continue training")
            _warn_config_changes(point.checkpoint, cfg, log)
        elif cfg.model.pretrained:
            load_pretrained(model, cfg.model.pretrained, log)
        # -- the run starts: lock its directory, clear an overwritten run, write the run's files
        _on_main(d, partial(rundir.start, out_dir, lock, resume=resume, overwrite=overwrite,
                            checkpoint_bytes=rundir.checkpoint_bytes(model), log=log))
        run = RunLog(out_dir, cfg, is_main=d.is_main, resume_step=start_step if point else None)
        notes, log = log, get_logger(is_main=d.is_main, log_file=out_dir / "train.log" if d.is_main else None)
        log.info(f"{f'resuming at step {start_step} from {point.checkpoint.path}' if point else 'training'}: "
                 f"{cfg.model.name}, tasks {list(tasks)}, {d.world_size} process(es) on {d.device}, out_dir {out_dir}")
        notes.replay(log)
        net = wrap_model(model, d, sync_bn=cfg.train.sync_bn)
        features = shared_features_for(weighting, model)  # the encoder's outputs, where the method needs them
        if cfg.train.compile:  # compiled lazily by the first step; outputs and gradients as eager (tests)
            net = torch.compile(net)
        # autocast's weight cache keeps a low-precision copy of every weight to the end of the forward; checkpointed
        # segments store nothing and recast in the backward, so there it only holds memory (same values, same time)
        amp_cache = not any(getattr(m, "grad_checkpointing", False) for m in model.modules())
        # global: every micro-batch's loss is its share of the whole step's loss (the valid pixels of all
        # processes' micro-batches), scaled by W because DDP averages gradients -- so the gradient is the global
        # batch's, for any process or micro-batch count; local: each micro-batch's own mean (released code)
        if cfg.train.loss_normalization not in ("global", "local"):
            raise ConfigError(f"train.loss_normalization '{cfg.train.loss_normalization}' is not one of: global, local")
        global_norm = cfg.train.loss_normalization == "global"
        loss_scale = float(d.world_size) if global_norm else 1.0 / cfg.train.accum_steps
        share = 1.0 / (loss_scale * cfg.train.accum_steps)  # of a once-per-step term (UW's regulariser), per backward
        # famo, gradnorm_scale, the gradient-level methods: a first pass over the micro-batches for the step's weights
        two_pass = cfg.train.accum_steps > 1 and needs_statistics_first(weighting)
        forward = partial(micro_batch_losses, criterion=criterion, device=d.device, amp_dtype=amp_dtype,
                          amp_cache=amp_cache)

        steps = StepBatches(len(train_ds), seed=cfg.seed, batch_size=cfg.train.batch_size, rank=d.rank,
                            world_size=d.world_size, accum_steps=cfg.train.accum_steps, start_step=start_step)
        loader = DataLoader(SeededSamples(train_ds), batch_sampler=micro_batches(steps), collate_fn=collate,
                            num_workers=cfg.data.num_workers, pin_memory=d.device.type == "cuda",
                            worker_init_fn=ignore_sigint if cfg.data.num_workers > 0 else None)
        batches = iter(loader)
        bar = _progress(cfg, d, start_step)
        t0, sums, count, untimed = time.time(), {}, 0, 0  # untimed: steps left out of sec_per_iter (compilation)
        stop.install(log)
        net.train()
        for step in range(start_step, cfg.optim.max_iters):
            torch.manual_seed(mix_seed(cfg.seed, step, d.rank))  # drop-path etc.: a function of (seed, step, rank)
            lr = lr_at(step, cfg.optim)
            set_lr(optimizer, lr)
            optimizer.zero_grad(set_to_none=True)
            micro = [next(batches) for _ in range(cfg.train.accum_steps)]  # this process's part of the step
            stats = global_loss_stats(criterion, micro, d) if global_norm else None
            mine = torch.zeros(len(criterion.tasks), dtype=torch.float64)  # this process's part of the step's losses
            losses_of = partial(forward, stats=stats)
            if two_pass:  # one more forward per micro-batch; the loop below repeats the same forwards
                begin_accumulated_step(weighting, micro, losses_of, step=step, net=net, model=model, features=features,
                                       d=d, loss_scale=loss_scale, scaler=scaler)
            for k, batch in enumerate(micro):
                last_micro = k == cfg.train.accum_steps - 1
                sync = contextlib.nullcontext() if last_micro or not d.enabled else net.no_sync()
                with sync:  # gradients are all-reduced on the last micro-batch only
                    losses = losses_of(net, batch)  # {task: loss, "total": weighted sum}
                    _check_finite(losses, step, d, out_dir)
                    # instead of loss.backward(): fixed backpropagates the sum above, unchanged
                    losses["total"] = weighted_backward(weighting, losses, step=step, first=k == 0 and not two_pass,
                                                        features=features, d=d, loss_scale=loss_scale, share=share,
                                                        scaler=scaler)
                values = {name: value.detach().float().item() * loss_scale for name, value in losses.items()}
                for name, value in values.items():
                    sums[name] = sums.get(name, 0.0) + value
                mine += torch.tensor([values[t] for t in criterion.tasks], dtype=torch.float64)
            for task, w in weighting.weights().items():
                sums[f"weight/{task}"] = sums.get(f"weight/{task}", 0.0) + w
            for task in tasks_without_labels(micro, criterion.tasks, d) if partial_labels else ():
                for p in heads[task]:  # its head does not move (not even by weight decay or Adam's momentum)
                    p.grad = None
            weighting.average_gradients(d.world_size)  # its parameters are outside DDP
            scaler.unscale_(optimizer)
            grad_norm = (torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
                         if cfg.optim.grad_clip > 0 else torch.tensor(float("nan")))
            scaler.step(optimizer)
            scaler.update()
            if weighting.needs_step_losses:  # the step's global per-task losses (the logged ones)
                weighting.update(summed_over_processes(mine, d) / d.world_size, step)
            count += 1
            done = step + 1
            if cfg.train.compile and step == start_step:  # compilation: reported apart from the step time
                log.info(f"first step with torch.compile: {time.time() - t0:.1f} s (compilation included)")
                t0, untimed = time.time(), 1
            if done % cfg.train.log_every == 0 or done == cfg.optim.max_iters:
                record = _reduce_means(sums, count, d)
                timed = count - untimed
                record.update(lr=lr, grad_norm=float(grad_norm),
                              sec_per_iter=(time.time() - t0) / timed if timed else float("nan"))
                run.log(done, "train", {k if k.startswith("weight/") else f"loss/{k}": v for k, v in record.items()
                                        if k in sums} | {k: v for k, v in record.items() if k not in sums})
                if bar is not None:
                    bar.set_postfix(loss=f"{record['total']:.4g}", lr=f"{lr:.2e}", refresh=False)
                t0, sums, count, untimed = time.time(), {}, 0, 0
            if bar is not None:
                bar.update(1)
            is_last = done == cfg.optim.max_iters
            if done % cfg.train.checkpoint_every == 0 or is_last:  # before the evaluation, which may fail
                _save(out_dir / "last", model, optimizer, scaler, cfg, tasks, done, best, metrics, evaluated, d,
                      weighting)
                saved = done
            if (cfg.train.eval_every > 0 and done % cfg.train.eval_every == 0) or is_last:
                metrics, best = _evaluate_step(done, model, val_ds, tasks, cfg, d, amp_dtype, spec, best, saved,
                                               optimizer, scaler, run, log, weighting)
                evaluated = done
                net.train()
            if stop.requested(d):
                if saved != done:
                    _save(out_dir / "last", model, optimizer, scaler, cfg, tasks, done, best, metrics, evaluated, d,
                          weighting)
                raise KeyboardInterrupt(f"stopped by {stop.name} after step {done}; {rundir.kept(out_dir)}")
        if evaluated != cfg.optim.max_iters:  # resumed after a kill between the final checkpoint and its evaluation
            metrics, best = _evaluate_step(cfg.optim.max_iters, model, val_ds, tasks, cfg, d, amp_dtype, spec, best,
                                           saved, optimizer, scaler, run, log, weighting)
        elif start_step == cfg.optim.max_iters:
            log.info(f"nothing to do: the run is complete at step {start_step} (raise optim.max_iters to go on)")
        if bar is not None:
            bar.close()
        run.close()
        return {"step": cfg.optim.max_iters, "metrics": metrics, "out_dir": str(out_dir), "best": best,
                "is_main": d.is_main}
    except KeyboardInterrupt as err:  # Ctrl-C a second time: stopped at once, mid-step
        if run is None or str(err):
            raise
        raise KeyboardInterrupt(f"stopped at once; {rundir.kept(out_dir)}") from None
    except OSError as err:  # a full disk, a file system gone read-only ...
        if run is None:
            raise
        raise rundir.RunDirError(f"{os_error_message(err)}; training stopped, {rundir.kept(out_dir)}") from err
    except DataError as err:  # a file that passed the header check but not the full read
        if run is None:
            raise
        raise DataError(f"{one_line(str(err))}; training stopped, {rundir.kept(out_dir)}") from err
    finally:
        stop.restore()
        if run is not None:
            run.close()
        lock.release()
        dist_utils.cleanup_distributed()


# ------------------------------------------------------------------------------------------------- helpers


def _on_main(d: Dist, action: Callable[[], Any]) -> None:
    """Run ``action`` on rank 0 and raise a user's error from it on every process, so that no process waits for one
    that stopped."""
    error: BaseException | None = None
    if d.is_main:
        try:
            action()
        except (TaskPrompterError, OSError) as err:
            error = err
    if d.enabled:
        error = dist_utils.broadcast_object(error)
    if error is not None:
        raise error


def _check_files(datasets: list[Any], cfg: Config, d: Dist, log) -> None:
    """Every training and validation sample's file headers, before step 1 (shared out over the processes): a missing,
    unreadable or truncated file stops the run now, named, rather than at an evaluation after hours."""
    t0 = time.time()
    found = [header_problems(ds, shard=(d.rank, d.world_size)) for ds in datasets]
    parts = dist_utils.gather_objects([sum(n for n, _ in found), [p for _, problems in found for p in problems]])
    checked = sum(n for n, _ in parts)
    problems = [p for _, part in parts for p in part]
    if problems:
        more = f" (and {len(problems) - 1} more problem(s))" if len(problems) > 1 else ""
        raise DataError(f"{problems[0]}{more}; fix or remove the file (`taskprompter check-data --format "
                        f"{cfg.data.format} --root {cfg.data.root}` lists every problem)")
    log.info(f"checked the files of {checked} samples in {time.time() - t0:.1f} s")


def _warn_config_changes(ckpt: ck.Checkpoint, cfg: Config, log) -> None:
    before, after = flatten_config(ckpt.config or {}), flatten_config(to_dict(cfg))
    changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
    if changed:
        log.warning(f"resuming with a config that differs from the checkpoint's in: {', '.join(changed)}")


def micro_batch_losses(module: torch.nn.Module, batch: dict[str, Any], *, criterion: MultiTaskLoss,
                       stats: dict[str, torch.Tensor] | None, device: torch.device, amp_dtype: torch.dtype | None,
                       amp_cache: bool) -> dict[str, torch.Tensor]:
    """One micro-batch's {task: loss, "total": weighted sum}: ``module``'s forward under the run's autocast, the
    losses normalised by the step's ``stats`` (global normalisation) or by the micro-batch's own (None)."""
    batch = to_device(batch, device)
    with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None,
                        cache_enabled=amp_cache):
        return criterion(module(batch["image"]), batch, stats)


def global_loss_stats(criterion: MultiTaskLoss, micro: list[dict[str, Any]], d: Dist) -> dict[str, torch.Tensor]:
    """{task: loss statistics summed over this step's micro-batches and all processes}: what every process's losses
    are normalised by under ``train.loss_normalization: global``."""
    per_batch = [criterion.batch_stats(b) for b in micro]
    names = list(per_batch[0])
    sizes = [len(per_batch[0][t]) for t in names]
    flat = torch.cat([sum(s[t] for s in per_batch) for t in names]).to(torch.float64)  # counts: exact in float64
    flat = summed_over_processes(flat, d)
    return {t: v.long().to(d.device) for t, v in zip(names, flat.split(sizes))}


def task_heads(model: torch.nn.Module, tasks: list[str]) -> dict[str, list[torch.nn.Parameter]]:
    """{task: the parameters of its head} (``model.heads[task]``): what only that task's loss trains."""
    heads = getattr(unwrap(model), "heads", None)
    return {t: list(heads[t].parameters()) if heads is not None and t in heads else [] for t in tasks}


def tasks_without_labels(micro: list[dict[str, Any]], tasks: list[str], d: Dist) -> list[str]:
    """The tasks that no sample of the step's global batch (every micro-batch, every process) is labelled for
    (``batch["labelled"]``, partially labelled data); one all-reduce of T numbers."""
    counts = torch.tensor([sum(int(b["labelled"][t].sum()) if t in b.get("labelled", {}) else len(b["image"])
                               for b in micro) for t in tasks], dtype=torch.float64)
    counts = summed_over_processes(counts, d)
    return [t for t, n in zip(tasks, counts.tolist()) if n == 0]


def _check_finite(losses: dict[str, torch.Tensor], step: int, d: Dist, out_dir: Path) -> None:
    """Stop every process together when any loss is NaN/inf, naming the step and the task(s)."""
    names = [k for k in losses if k != "total"] + ["total"]
    bad = torch.tensor([0.0 if torch.isfinite(losses[k].detach()).all() else 1.0 for k in names])
    bad = summed_over_processes(bad, d)  # every rank must stop, or the others would wait in the next all-reduce
    if bad.sum() > 0:
        which = [n for n, b in zip(names, bad.tolist()) if b > 0 and n != "total"] or ["total"]
        values = ", ".join(f"{n}={losses[n].detach().float().item():.4g}" for n in which)
        raise NonFiniteLossError(f"non-finite loss at step {step + 1} in task(s) {', '.join(which)} ({values}); "
                                 f"training stopped, {rundir.kept(out_dir, SAME_AGAIN)}")


def _reduce_means(sums: dict[str, float], count: int, d: Dist) -> dict[str, float]:
    keys = sorted(sums)
    t = torch.tensor([sums[k] / max(count, 1) for k in keys], dtype=torch.float64)
    t = summed_over_processes(t, d) / d.world_size
    return {k: float(v) for k, v in zip(keys, t.tolist())}


def _improves(value: float, best: dict | None, higher: bool) -> bool:
    if not math.isfinite(value):
        return False
    if best is None:
        return True
    return value > best["value"] if higher else value < best["value"]


def _evaluate_step(done: int, model, val_ds, tasks: dict[str, int], cfg: Config, d: Dist, amp_dtype, spec, best,
                   saved: int | None, optimizer, scaler, run: RunLog, log,
                   weighting: LossWeighting) -> tuple[dict[str, Any], dict | None]:
    """Evaluate at step ``done``: write ``best`` when the metric improves, add the metrics to ``last`` when it was
    written at this step (just before), log them. Returns (metrics, best)."""
    out_dir = Path(cfg.train.out_dir)
    metrics = evaluate(model, val_ds, tasks=tasks, dataset_format=cfg.data.format, dist=d,
                       batch_size=cfg.train.eval_batch_size, num_workers=cfg.data.num_workers, amp_dtype=amp_dtype)
    value = metrics.get(spec.task, {}).get(spec.primary)
    if value is not None and _improves(value, best, spec.higher_is_better):
        best = {"metric": f"{spec.task}.{spec.primary}", "value": float(value), "step": done}
        _save(out_dir / "best", model, optimizer, scaler, cfg, tasks, done, best, metrics, done, d, weighting)
    if saved == done:
        _on_main(d, partial(ck.update_meta, out_dir / "last", metrics=_plain(metrics), metrics_step=done, best=best))
    run.log(done, "val", metrics)
    run.log_panels(done, model, val_ds, amp=cfg.train.amp)  # TensorBoard: prediction panels of fixed images
    log.info(f"step {done} evaluation\n" + format_table(metrics))
    return metrics, best


def _save(path: Path, model, optimizer, scaler, cfg: Config, tasks: dict[str, int], step: int, best, metrics,
          metrics_step: int | None, d: Dist, weighting: LossWeighting) -> None:
    """Write a checkpoint (rank 0), of finite weights only: a NaN or inf in any weight or buffer stops training
    with the last good checkpoint kept (its outputs would be NaN)."""
    bad = [name for name, t in unwrap(model).state_dict().items()
           if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if bad:
        raise NonFiniteWeightsError(f"non-finite weights after step {step} ({', '.join(bad[:3])}"
                                    f"{' ...' if len(bad) > 3 else ''}); {path} not written, training stopped, "
                                    f"{rundir.kept(path.parent, SAME_AGAIN)}")
    meta = {"step": step, "tasks": dict(tasks), "best": best, "metrics": _plain(metrics),
            "metrics_step": metrics_step, "config": to_dict(cfg)}
    rng = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    state = {"step": step, "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict() or None,
             "rng": rng, "best": best, "weighting": {"name": weighting.name, "state": weighting.state_dict()},
             "data": {"seed": cfg.seed, "batch_size": cfg.train.batch_size, "world_size": d.world_size,
                      "accum_steps": cfg.train.accum_steps, "next_step": step}}
    _on_main(d, partial(ck.save_checkpoint, path, model=unwrap(model), meta=meta, train_state=state,
                        preset=cfg.model.name))


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
