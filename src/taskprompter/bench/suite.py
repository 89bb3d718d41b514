"""The groups of one `taskprompter bench` run: which configurations are timed together (``plan_groups``), timing
them interleaved with their memory measured after (``bench_group``), an operator profile per configuration, and
the paper's Table 8 beside the task sweep."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from ..model.build import PRESETS
from ..model.profile import profile_model
from ..model.taskprompter import TaskPrompter
from .measure import BenchConfig, Runner, macs_per_image, measure_memory, model_kwargs, synchronize, time_interleaved
from .results import summarize

# Paper Table 8 (ViT-L, PASCAL-Context, 512x512): parameters (M) and "FLOPs" (= MACs, G) for 1..5 tasks.
PAPER_TABLE8 = {1: (364, 389), 2: (373, 416), 3: (383, 443), 4: (392, 470), 5: (401, 497)}


def plan_groups(base: BenchConfig, *, modes: list[str], sweep: str = "none", sizes: list[int] = (),
                grad_ckpt: bool = False, recompute: list[str] = ()) -> list[tuple[str, list[BenchConfig]]]:
    """(sweep name, configurations) per group: both paths in every mode, plus the checkpointed and recompute
    variants of the efficient training step; one group per task count or input size for a sweep."""
    if sweep == "tasks":
        total = len(model_kwargs(base)["tasks"]) if base.tasks is None else base.tasks
        variants = [("tasks", replace(base, tasks=n)) for n in range(1, total + 1)]
    elif sweep == "tokens":
        variants = [("tokens", replace(base, img_size=(s, s))) for s in sizes]
    else:
        variants = [("main", base)]
    groups = []
    for name, cfg in variants:
        cfgs = [replace(cfg, impl=impl, mode=mode) for mode in modes for impl in ("efficient", "naive")]
        if grad_ckpt and "train" in modes:
            cfgs.append(replace(cfg, impl="efficient", mode="train", grad_checkpointing=True))
        if "train" in modes:
            cfgs += [replace(cfg, impl="efficient", mode="train", recompute=m) for m in recompute]
        groups.append((name, cfgs))
    return groups


def bench_group(cfgs: list[BenchConfig], *, repeats: int, warmup: int, min_time: float, memory: bool, rate: float,
                sweep: str, profile_dir: Path | None = None) -> list[dict[str, Any]]:
    """Time ``cfgs`` interleaved (train and infer of one path share the model), then measure each one's memory."""
    models: dict[tuple, torch.nn.Module] = {}
    runners = []
    for c in cfgs:
        key = (c.impl, c.grad_checkpointing, c.recompute, c.tasks, c.img_size)
        runners.append(Runner(c, model=models.get(key)))
        if key not in models:
            models[key] = runners[-1].model
            if c.impl == "naive":  # the same weights as the efficient model, when it exists
                twin = models.get(("efficient", False, "auto", c.tasks, c.img_size))
                if twin is not None:
                    runners[-1].model.load_state_dict(twin.state_dict())
    times = time_interleaved(runners, repeats=repeats, warmup=warmup, min_time=min_time)
    if profile_dir is not None:
        for r in runners:
            profile_step(r, profile_dir)
    del runners, models
    rows = []
    for c, t in zip(cfgs, times):
        macs, _ = macs_per_image(c)
        rows.append(summarize(c, t, macs, rate, measure_memory(c) if memory else None, sweep))
    return rows


def profile_step(runner: Runner, out_dir: Path, steps: int = 1) -> Path:
    """torch.profiler over ``steps`` steps: the operator table (by self time) into ``out_dir/<label>.txt``."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if runner.cfg.device.startswith("cuda") else [])
    runner.step()
    with profile(activities=activities) as prof:
        for _ in range(steps):
            runner.step()
        synchronize(runner.cfg.device)
    sort = "self_cuda_time_total" if runner.cfg.device.startswith("cuda") else "self_cpu_time_total"
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{runner.cfg.preset}-{runner.cfg.label.replace('/', '-')}.txt"
    path.write_text(prof.key_averages().table(sort_by=sort, row_limit=40))
    return path


def table8_columns(preset: str, n: int, img_size: tuple[int, int] | None) -> dict[str, Any]:
    """Paper Table 8 (ViT-L, 512x512) for ``n`` tasks beside our count of the same model."""
    kwargs = dict(PRESETS["taskprompter_vit_l_pascal"])
    kwargs["tasks"] = {t: c for t, c in list(kwargs["tasks"].items())[:n]}
    ours = profile_model(lambda: TaskPrompter(**kwargs))
    paper = PAPER_TABLE8.get(n, (float("nan"), float("nan")))
    return {"paper_params_m": paper[0], "paper_gmacs": paper[1], "vitl_params_m": ours["params"] / 1e6,
            "vitl_gmacs": ours["macs"] / 1e9}
