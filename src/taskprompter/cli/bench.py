"""`taskprompter bench`: the efficient path against the naive reference path (the released structure), measured in
the same run, interleaved, with warm-up and repeats.
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
from pathlib import Path
from typing import Any

import torch

from .. import bench
from ..errors import ConfigError


def format_row(r: dict[str, Any]) -> str:
    mem = f"  peak {r['peak_mib']:7.0f} MiB (step +{r['step_mib']:6.0f}, x{r.get('step_ratio', float('nan')):.2f})" \
        if "peak_mib" in r else ""
    name = bench.variant_name(r["impl"], r["grad_ckpt"], r.get("recompute", "auto")) + \
        (f"+{r['amp']}" if r["amp"] != "none" else "")
    return (f"{r['sweep']:>6s} T={r['tasks']} {r['img_h']}x{r['img_w']} B={r['batch']} {name:16s} {r['mode']:5s} "
            f"{r['img_per_s']:8.2f} img/s  {r['latency_ms']:9.1f} ms (±{r['spread_pct'] / 2:4.1f}%)  "
            f"{r['share_of_matmul_pct']:5.1f}% of mm  x{r['speedup_vs_naive']:.2f} vs naive{mem}"
            + (f"  time x{r['time_vs_plain']:.2f} of plain" if "time_vs_plain" in r else ""))


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
    base = bench.BenchConfig(preset=args.preset, batch=args.batch, device=args.device, amp=args.amp, tasks=args.tasks,
                             img_size=tuple(args.img_size) if args.img_size else None)
    errors = bench.check_parity(base)
    worst = max(errors.values())
    print("parity efficient vs naive (max relative error): " + ", ".join(f"{k} {v:.2e}" for k, v in errors.items()))
    if not worst <= bench.PARITY_TOL:
        print(f"bench: efficient and naive paths disagree (worst {worst:.3g} > {bench.PARITY_TOL:g}); not timing",
              file=sys.stderr)
        return 3
    dtype = torch.bfloat16 if args.amp == "bf16" else torch.float32
    rate = bench.matmul_rate(args.device, dtype, n=args.matmul_size)
    groups = bench.plan_groups(base, modes=modes, sweep=args.sweep, sizes=args.sizes, grad_ckpt=args.grad_ckpt,
                               recompute=args.recompute)
    rows: list[dict[str, Any]] = []
    for sweep, cfgs in groups:
        group_rows = bench.bench_group(cfgs, repeats=args.repeats, warmup=args.warmup, min_time=args.min_time,
                                       memory=not args.no_memory, rate=rate, sweep=sweep,
                                       profile_dir=Path(args.profile) if args.profile else None)
        if sweep == "tasks":
            for r in group_rows:
                r.update(bench.table8_columns(args.preset, r["tasks"], base.img_size))
        bench.add_ratios(group_rows)
        for r in group_rows:
            print(format_row(r), flush=True)
        rows += group_rows
    rate_after = bench.matmul_rate(args.device, dtype, n=args.matmul_size)
    best = max(rate, rate_after)  # the machine's rate: a busy moment only lowers a measurement
    for r in rows:
        r["matmul_gmac_s"] = best / 1e9
        r["share_of_matmul_pct"] = 100 * r["achieved_gmac_s"] / r["matmul_gmac_s"]
    print(f"\ndense matmul rate: {rate / 1e9:.1f} GMAC/s before, {rate_after / 1e9:.1f} after (shares use the "
          f"higher); {torch.get_num_threads()} threads; {bench.machine_name()}")
    for r in rows:
        print(format_row(r))
    if not args.no_csv:
        meta = {"machine": bench.machine_name(), "device": bench.device_name(args.device), "torch": torch.__version__,
                "date": datetime.date.today().isoformat(), "started": started, "threads": str(torch.get_num_threads())}
        path = bench.write_csv(rows, args.csv or bench.default_csv_path(args.device), meta)
        print(f"wrote {len(rows)} rows to {path}")
    return 0
