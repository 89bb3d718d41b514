"""The groups of one `taskprompter bench` run: which configurations are timed together (``plan_groups``: fp32 naive
and efficient, bf16, compiled, the memory variants, the optimiser step in the backward), timing them interleaved with
the variants' parity and their memory measured after (``bench_group``), an operator profile per configuration, and the
paper's Table 8 beside the task sweep."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from ..model.build import PRESETS
from ..model.profile import profile_model
from ..model.taskprompter import TaskPrompter
from .measure import (
    RECOMPILE_LIMIT,
    VARIANT_TOL,
    BenchConfig,
    Runner,
    canonical_bench_amp,
    check_step_in_backward_parity,
    check_variant_parity,
    macs_per_image,
    measure_memory,
    model_kwargs,
    synchronize,
    time_interleaved,
)
from .results import summarize

# Paper Table 8 (ViT-L, PASCAL-Context, 512x512): parameters (M) and "FLOPs" (= MACs, G) for 1..5 tasks.
PAPER_TABLE8 = {1: (364, 389), 2: (373, 416), 3: (383, 443), 4: (392, 470), 5: (401, 497)}


def plan_groups(base: BenchConfig, *, modes: list[str], sweep: str = "none", sizes: list[int] = (),
                grad_ckpt: bool = False, recompute: list[str] = (), amps: list[str] = ("off",),
                compile: bool = False, step_in_backward: bool = False,
                weightings: list[str] = ()) -> list[tuple[str, list[BenchConfig]]]:
    """(sweep name, configurations) per group; one group per task count or input size for a sweep. In every mode:
    the efficient and the naive path in fp32 eager (the naive one is the released structure's stand-in every ratio
    is taken against), the efficient path in each further precision of ``amps`` (bf16), and with ``compile`` the
    efficient path compiled in each precision; then the training step's memory variants: grad_checkpointing (in each
    precision), the selective-recompute modes (fp32) and, with ``step_in_backward``, the optimiser step inside the
    backward for the efficient path and for grad_checkpointing, in each precision (eager); and the training step of
    the efficient path (fp32, eager) with each loss weighting of ``weightings`` (its cost against ``fixed``)."""
    precisions = ["off"] + [a for a in dict.fromkeys(canonical_bench_amp(a) for a in amps) if a != "off"]
    if sweep == "tasks":
        total = len(model_kwargs(base)["tasks"]) if base.tasks is None else base.tasks
        variants = [("tasks", replace(base, tasks=n)) for n in range(1, total + 1)]
    elif sweep == "tokens":
        variants = [("tokens", replace(base, img_size=(s, s))) for s in sizes]
    else:
        variants = [("main", base)]
    groups = []
    for name, cfg in variants:
        cfg = replace(cfg, impl="efficient", amp="off", compile=False, grad_checkpointing=False, recompute="auto")
        cfgs = []
        for mode in modes:
            cfgs += [replace(cfg, mode=mode), replace(cfg, impl="naive", mode=mode)]
            cfgs += [replace(cfg, mode=mode, amp=a) for a in precisions[1:]]
            if compile:
                cfgs += [replace(cfg, mode=mode, amp=a, compile=True) for a in precisions]
        if grad_ckpt and "train" in modes:
            cfgs += [replace(cfg, mode="train", grad_checkpointing=True, amp=a) for a in precisions]
        if "train" in modes:
            cfgs += [replace(cfg, mode="train", recompute=m) for m in recompute]
        if step_in_backward and "train" in modes:
            cfgs += [replace(cfg, mode="train", grad_checkpointing=ckpt, amp=a, step_in_backward=True)
                     for ckpt in ([False, True] if grad_ckpt else [False]) for a in precisions]
        if "train" in modes:
            cfgs += [replace(cfg, mode="train", weighting=w) for w in weightings if w != "fixed"]
        groups.append((name, cfgs))
    return groups


def is_variant(cfg: BenchConfig) -> bool:
    """A precision or compile variant: checked against the fp32 eager efficient path (``check_variant_parity``; the
    step in the backward, against the ordinary step: ``check_step_in_backward_parity``)."""
    return cfg.amp != "off" or cfg.compile


@contextlib.contextmanager
def dynamo_cache(enabled: bool) -> Iterator[None]:
    """A fresh dynamo cache for a group with compiled configurations, with room for all of its graphs (train / eval,
    fp32 / bf16, the parity models): a group never runs a compiled variant eagerly because the cache was full."""
    if not enabled:
        yield
        return
    torch._dynamo.reset()
    name = "recompile_limit" if hasattr(torch._dynamo.config, "recompile_limit") else "cache_size_limit"
    with torch._dynamo.config.patch(**{name: max(getattr(torch._dynamo.config, name), RECOMPILE_LIMIT)}):
        yield


def bench_group(cfgs: list[BenchConfig], *, repeats: int, warmup: int, min_time: float, memory: bool,
                rate: float | dict[str, float], sweep: str, profile_dir: Path | None = None,
                backend: str | None = None, parity: bool = True) -> list[dict[str, Any]]:
    """Time ``cfgs`` interleaved (train and infer of one path, and its precision / compile variants, share the model;
    compiled ones compile in their warm-up, reported as ``compile_s``; a runner with the step in the backward has a
    model of its own, whose parameters carry its hooks), then check each precision / compile variant against the fp32
    eager efficient path (after the timing, so that the timed compilation is a first one) and each step in the
    backward against the ordinary step, then measure each one's memory and its breakdown. ``rate``: the dense matmul
    rate of each precision ({"off": fp32, "bf16": bf16}; one number: the same for all), the row's share of the
    matmul rate is of its precision's."""
    rates = rate if isinstance(rate, dict) else {"off": rate, "bf16": rate}
    models: dict[tuple, torch.nn.Module] = {}
    runners = []
    any_compiled = any(c.compile for c in cfgs)
    rows = []
    with dynamo_cache(any_compiled):
        for c in cfgs:
            key = (c.impl, c.grad_checkpointing, c.recompute, c.tasks, c.img_size, c.step_in_backward and c.amp,
                   c.weighting)  # a weighting's model: its hook on the encoder is its own
            runners.append(Runner(c, model=models.get(key), backend=backend))
            if key not in models:
                models[key] = runners[-1].model
                if c.impl == "naive":  # the same weights as the efficient model, when it exists
                    twin = models.get(("efficient", False, "auto", c.tasks, c.img_size, False, "fixed"))
                    if twin is not None:
                        runners[-1].model.load_state_dict(twin.state_dict())
        times = time_interleaved(runners, repeats=repeats, warmup=warmup, min_time=min_time)
        if profile_dir is not None:
            for r in runners:
                profile_step(r, profile_dir)
        compiled = [(r.compile_s, r.recompiles_timed) for r in runners]
        del runners, models
        checks: dict[BenchConfig, dict[str, float]] = {}
        if parity:
            modes = tuple(dict.fromkeys(c.mode for c in cfgs))
            for c in cfgs:
                key = replace(c, mode="train", step_in_backward=False)
                if is_variant(c) and key not in checks:
                    checks[key] = check_variant_parity(c, backend=backend, modes=modes)
                if c.step_in_backward and replace(c, mode="train") not in checks:
                    checks[replace(c, mode="train")] = check_step_in_backward_parity(c)
        for c, t, (compile_s, recompiles) in zip(cfgs, times, compiled):
            macs, _ = macs_per_image(c)
            row = summarize(c, t, macs, rates[c.amp], measure_memory(c, backend) if memory else None, sweep)
            if c.compile:
                row["compile_s"] = compile_s
                if recompiles:
                    row["recompiles_timed"] = recompiles
            errors = {**checks.get(replace(c, mode="train", step_in_backward=False), {}),
                      **checks.get(replace(c, mode="train"), {})}
            if errors:
                row.update(parity_row(c, errors))
            rows.append(row)
    return rows


def parity_row(cfg: BenchConfig, errors: dict[str, float]) -> dict[str, Any]:
    """A variant row's parity columns: its mode's output error (and, training, the gradients' error) against the fp32
    eager efficient path, and whether they are within ``VARIANT_TOL`` of its precision; for the step in the backward
    the weights' difference from the ordinary step's (``parity_weights``), which must be 0."""
    tol = VARIANT_TOL[cfg.amp]
    out, ok = {}, True
    if "train_outputs" in errors and cfg.mode == "train":
        out = {"parity_outputs": errors["train_outputs"], "parity_gradients": errors["gradients"]}
        ok = out["parity_outputs"] <= tol["outputs"] and out["parity_gradients"] <= tol["gradients"]
    elif "eval_outputs" in errors:
        out = {"parity_outputs": errors["eval_outputs"]}
        ok = out["parity_outputs"] <= tol["outputs"]
    if "weights" in errors:
        out["parity_weights"] = errors["weights"]
        ok = ok and errors["weights"] == 0.0
    out["parity_ok"] = int(ok)
    return out


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
