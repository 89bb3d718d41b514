"""`taskprompter bench`: the efficient path against the naive reference path (the released structure), measured in
the same run, interleaved, with warm-up and repeats.

    taskprompter bench --preset taskprompter_bench_c --batch 8                 # config C of docs/performance.md
    taskprompter bench --preset taskprompter_bench_a --batch 2 --grad-ckpt     # config A, + activation checkpointing
    taskprompter bench --preset taskprompter_bench_c --sweep tasks             # cost vs number of tasks (Table 8)
    taskprompter bench --preset taskprompter_bench_c --sweep tokens --sizes 64 128 192 256
    taskprompter bench --preset taskprompter_vit_b_pascal --device cuda --amp bf16 --batch 4

Per configuration (path x mode x tasks x size): median seconds per step over the repeats and their spread,
images/s, latency (one batch), peak memory, MACs per image (``profile_model``) and the achieved multiply-accumulate
rate as a share of the dense fp32 matmul rate measured in the same process. A training step is forward + loss (sum of
the outputs' means) + backward + Adam (fused, as the trainer's default); its MACs are counted as 3x the forward's.
Peak memory on the CPU is measured in a fresh subprocess per configuration: the resident set's high-water mark
during one steady-state step (the kernel's VmHWM, reset through /proc/self/clear_refs, with glibc returning large
blocks to the system) -- reported as the whole process's peak and as the increase over the state held between steps
(weights, Adam moments). On CUDA: ``torch.cuda.max_memory_allocated``. Before timing, both paths get the same
weights and must agree (outputs, and the gradients of one training step); otherwise the verb exits with status 3.
"""

from __future__ import annotations

import argparse
import datetime
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from .bench_csv import _COLUMNS, add_ratios, default_csv_path, summarize, write_csv
from .bench_measure import (
    GRAD_FLOOR,
    PARITY_TOL,
    BenchConfig,
    Runner,
    bench_loss,
    build,
    check_parity,
    device_name,
    machine_name,
    macs_per_image,
    matmul_rate,
    measure_memory,
    memory_child,
    model_kwargs,
    relative_error,
    synchronize,
    time_interleaved,
    variant_name,
)
from .errors import ConfigError

# the measurement and CSV names stay importable from here (tests and scripts use ``bench.X``)
__all__ = [
    "GRAD_FLOOR", "PAPER_TABLE8", "PARITY_TOL", "_COLUMNS", "BenchConfig", "Runner", "add_arguments", "add_ratios",
    "bench_group", "bench_loss", "build", "check_parity", "default_csv_path", "device_name", "format_row",
    "machine_name", "macs_per_image", "matmul_rate", "measure_memory", "memory_child", "model_kwargs",
    "profile_step", "relative_error", "run", "summarize", "synchronize", "table8_columns", "time_interleaved",
    "variant_name", "write_csv",
]

# Paper Table 8 (ViT-L, PASCAL-Context, 512x512): parameters (M) and "FLOPs" (= MACs, G) for 1..5 tasks.
PAPER_TABLE8 = {1: (364, 389), 2: (373, 416), 3: (383, 443), 4: (392, 470), 5: (401, 497)}


def format_row(r: dict[str, Any]) -> str:
    mem = f"  peak {r['peak_mib']:7.0f} MiB (step +{r['step_mib']:6.0f}, x{r.get('step_ratio', float('nan')):.2f})" \
        if "peak_mib" in r else ""
    name = variant_name(r["impl"], r["grad_ckpt"], r.get("recompute", "auto")) + \
        (f"+{r['amp']}" if r["amp"] != "none" else "")
    return (f"{r['sweep']:>6s} T={r['tasks']} {r['img_h']}x{r['img_w']} B={r['batch']} {name:16s} {r['mode']:5s} "
            f"{r['img_per_s']:8.2f} img/s  {r['latency_ms']:9.1f} ms (±{r['spread_pct'] / 2:4.1f}%)  "
            f"{r['share_of_matmul_pct']:5.1f}% of mm  x{r['speedup_vs_naive']:.2f} vs naive{mem}"
            + (f"  time x{r['time_vs_plain']:.2f} of plain" if "time_vs_plain" in r else ""))


# ------------------------------------------------------------------------------------------------- driver


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
    from .model.build import PRESETS
    from .model.profile import profile_model
    from .model.taskprompter import TaskPrompter

    kwargs = dict(PRESETS["taskprompter_vit_l_pascal"])
    kwargs["tasks"] = {t: c for t, c in list(kwargs["tasks"].items())[:n]}
    ours = profile_model(lambda: TaskPrompter(**kwargs))
    paper = PAPER_TABLE8.get(n, (float("nan"), float("nan")))
    return {"paper_params_m": paper[0], "paper_gmacs": paper[1], "vitl_params_m": ours["params"] / 1e6,
            "vitl_gmacs": ours["macs"] / 1e9}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", required=True, help="model preset, e.g. taskprompter_bench_a")
    parser.add_argument("--img-size", type=int, nargs=2, metavar=("H", "W"), help="input size (default: preset's)")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    parser.add_argument("--amp", default="none", choices=["none", "bf16"], help="bf16 autocast for the efficient "
                        "path (CUDA); the naive path stays the fp32 reference")
    parser.add_argument("--tasks", type=int, help="use the preset's first N tasks")
    parser.add_argument("--modes", default="train,infer", help="comma-separated: train, infer")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved rounds (median and spread over them)")
    parser.add_argument("--warmup", type=int, default=2, help="warm-up steps per configuration")
    parser.add_argument("--min-time", type=float, default=1.0, help="seconds per configuration per round")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    parser.add_argument("--matmul-size", type=int, default=2048, help="n of the n x n matmul timed for the rate")
    parser.add_argument("--grad-ckpt", action="store_true", help="also the efficient path with grad_checkpointing")
    parser.add_argument("--recompute", nargs="+", default=[], choices=["on", "off"], help="also the efficient "
                        "path's training step with selective_recompute=MODE (the default is auto)")
    parser.add_argument("--sweep", choices=["none", "tasks", "tokens"], default="none",
                        help="tasks: 1..T tasks (paper Table 8 beside); tokens: the sizes of --sizes")
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128, 192, 256], help="square sizes for "
                        "--sweep tokens")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurements")
    parser.add_argument("--profile", metavar="DIR", help="write a torch.profiler operator table per configuration")
    parser.add_argument("--csv", help="CSV to append to (default: benchmarks/results/<device>-<torch>-<date>.csv)")
    parser.add_argument("--no-csv", action="store_true")


def run(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {args.device}: CUDA is not available in this torch ({torch.__version__})")
    if args.amp != "none" and not args.device.startswith("cuda"):
        raise ConfigError("--amp bf16 is for CUDA; the CPU benchmark runs fp32")
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not modes or any(m not in ("train", "infer") for m in modes):
        raise ConfigError(f"--modes {args.modes!r}: use train and/or infer")
    started = datetime.datetime.now().strftime("%H:%M:%S")  # groups the rows of one invocation in the CSV
    base = BenchConfig(preset=args.preset, batch=args.batch, device=args.device, amp=args.amp, tasks=args.tasks,
                       img_size=tuple(args.img_size) if args.img_size else None)
    errors = check_parity(base)
    worst = max(errors.values())
    print("parity efficient vs naive (max relative error): " + ", ".join(f"{k} {v:.2e}" for k, v in errors.items()))
    if not worst <= PARITY_TOL:
        print(f"bench: efficient and naive paths disagree (worst {worst:.3g} > {PARITY_TOL:g}); not timing",
              file=sys.stderr)
        return 3
    dtype = torch.bfloat16 if args.amp == "bf16" else torch.float32
    rate = matmul_rate(args.device, dtype, n=args.matmul_size)
    groups: list[tuple[str, list[BenchConfig]]] = []
    if args.sweep == "tasks":
        total = len(model_kwargs(base)["tasks"]) if args.tasks is None else args.tasks
        variants = [("tasks", replace(base, tasks=n)) for n in range(1, total + 1)]
    elif args.sweep == "tokens":
        variants = [("tokens", replace(base, img_size=(s, s))) for s in args.sizes]
    else:
        variants = [("main", base)]
    for sweep, cfg in variants:
        cfgs = [replace(cfg, impl=impl, mode=mode) for mode in modes for impl in ("efficient", "naive")]
        if args.grad_ckpt and "train" in modes:
            cfgs.append(replace(cfg, impl="efficient", mode="train", grad_checkpointing=True))
        if "train" in modes:
            cfgs += [replace(cfg, impl="efficient", mode="train", recompute=m) for m in args.recompute]
        groups.append((sweep, cfgs))
    rows: list[dict[str, Any]] = []
    for sweep, cfgs in groups:
        group_rows = bench_group(cfgs, repeats=args.repeats, warmup=args.warmup, min_time=args.min_time,
                                 memory=not args.no_memory, rate=rate, sweep=sweep,
                                 profile_dir=Path(args.profile) if args.profile else None)
        if sweep == "tasks":
            for r in group_rows:
                r.update(table8_columns(args.preset, r["tasks"], base.img_size))
        add_ratios(group_rows)
        for r in group_rows:
            print(format_row(r), flush=True)
        rows += group_rows
    rate_after = matmul_rate(args.device, dtype, n=args.matmul_size)
    best = max(rate, rate_after)  # the machine's rate: a busy moment only lowers a measurement
    for r in rows:
        r["matmul_gmac_s"] = best / 1e9
        r["share_of_matmul_pct"] = 100 * r["achieved_gmac_s"] / r["matmul_gmac_s"]
    print(f"\ndense matmul rate: {rate / 1e9:.1f} GMAC/s before, {rate_after / 1e9:.1f} after (shares use the "
          f"higher); {torch.get_num_threads()} threads; {machine_name()}")
    for r in rows:
        print(format_row(r))
    if not args.no_csv:
        meta = {"machine": machine_name(), "device": device_name(args.device), "torch": torch.__version__,
                "date": datetime.date.today().isoformat(), "started": started, "threads": str(torch.get_num_threads())}
        path = write_csv(rows, args.csv or default_csv_path(args.device), meta)
        print(f"wrote {len(rows)} rows to {path}")
    return 0
