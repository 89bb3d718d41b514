"""`taskprompter bench`: the efficient path against the naive reference path (the released structure), in fp32
eager, bf16 autocast and torch.compile, side by side, measured in the same run, interleaved, with warm-up and repeats.

    taskprompter bench --preset taskprompter_bench_c --batch 8                 # config C of docs/performance.md
    taskprompter bench --preset taskprompter_bench_a --batch 2 --grad-ckpt     # config A, + activation checkpointing
    taskprompter bench --preset taskprompter_bench_a --batch 2 --modes train --grad-ckpt --step-in-backward \
        --amp off,bf16                                                         # A's training memory, broken down
    taskprompter bench --preset taskprompter_bench_c --batch 8 --amp off,bf16 --compile  # + bf16, compiled
    taskprompter bench --preset taskprompter_bench_c --sweep tasks             # cost vs number of tasks (Table 8)
    taskprompter bench --preset taskprompter_bench_c --sweep tokens --sizes 64 128 192 256
    taskprompter bench --preset taskprompter_vit_b_pascal --device cuda --batch 4

Every group times the naive path in fp32 eager (the released structure's stand-in: every ratio is against it, in
the same run) and the efficient path in fp32 eager, then the efficient path in each further precision of ``--amp``
(default: off, plus bf16 where the device multiplies bf16 natively -- what ``train.amp=auto`` chooses) and, with
``--compile``, the efficient path through ``torch.compile`` in each precision (compiled during the warm-up; the
compilation's time is the ``compile_s`` column, never part of the timed rounds).

Per configuration (path x precision x compile x mode x tasks x size): median seconds per step over the repeats and
their spread, images/s, latency (one batch), peak memory, MACs per image (``profile_model``) and the achieved
multiply-accumulate rate as a share of the dense matmul rate of the row's precision (fp32 or bf16), both measured in
the same process before and after the runs. A training step is forward + loss (sum of the outputs' means, in fp32) +
backward + Adam (fused, as the trainer's default); its MACs are counted as 3x the forward's. Peak memory on the CPU is
measured in a fresh subprocess per configuration: the resident set's high-water mark during one steady-state step
(the kernel's VmHWM, reset through /proc/self/clear_refs, with glibc returning large blocks to the system) --
reported as the whole process's peak and as the increase over the state held between steps (weights, Adam moments).
On CUDA: ``torch.cuda.max_memory_allocated``. Each peak is broken down (columns, and a table after the rows):
the runtime (the process before the model was built; 0 on CUDA), weights, optimiser state and gradients (sizes of the
tensors; with the step in the backward, one parameter's gradient at a time), what the process held between steps
beyond them (other), and the activations (the step's increase beyond its gradients). Before timing, both fp32 eager
paths get the same weights and must agree (outputs, and the gradients of one training step); otherwise the verb exits
with status 3. Each bf16 / compiled variant is compared with the fp32 eager efficient path after the timing
(``VARIANT_TOL``: 1e-3 in fp32, bf16's own tolerances): its errors are columns of its rows, and a variant beyond its
tolerance makes the verb exit with status 3 after writing the rows.

``--step-in-backward`` adds the training step with Adam fused into the backward (``optim.step_in_backward``: each
parameter updated as soon as its gradient is complete, and the gradient freed), for the efficient path and, with
``--grad-ckpt``, for grad_checkpointing, in each precision. After the timing, its weights after two steps are compared
with the ordinary step's (``parity_weights``): anything but 0 (bit for bit) counts as beyond tolerance.

The run's header -- machine, device, torch, threads, the device's bf16 capability record (``engine/precision.py``:
the CPU's amx_bf16 / avx512_bf16 flags, or the GPU's name and bf16 support) and the fp32 and bf16 matmul rates -- is
printed first and repeated in every CSV row.
"""

from __future__ import annotations

import argparse
import datetime
import math
import sys
from pathlib import Path
from typing import Any

import torch

from .. import bench
from ..errors import ConfigError

DTYPES = {"off": torch.float32, "bf16": torch.bfloat16}


def format_row(r: dict[str, Any]) -> str:
    mem = f"  peak {r['peak_mib']:7.0f} MiB (step +{r['step_mib']:6.0f}, x{r.get('step_ratio', float('nan')):.2f})" \
        if "peak_mib" in r else ""
    parity = ""
    if "parity_outputs" in r:
        parity = f"  err {r['parity_outputs']:.1e}" + (f"/{r['parity_gradients']:.1e}" if "parity_gradients" in r
                                                       else "")
    if "parity_weights" in r:
        parity += f"  weights vs ordinary step {r['parity_weights']:.1e}"
    if "parity_ok" in r and not r["parity_ok"]:
        parity += " (beyond tolerance)"
    return (f"{r['sweep']:>6s} T={r['tasks']} {r['img_h']}x{r['img_w']} B={r['batch']} {r['variant']:31s} "
            f"{r['mode']:5s} {r['img_per_s']:8.2f} img/s  {r['latency_ms']:9.1f} ms (±{r['spread_pct'] / 2:4.1f}%)  "
            f"{r['share_of_matmul_pct']:5.1f}% of mm  x{r['speedup_vs_naive_fp32']:.2f} vs naive fp32{mem}"
            + (f"  time x{r['time_vs_plain']:.2f} of plain" if "time_vs_plain" in r else "")
            + (f"  compile {r['compile_s']:.1f} s" if "compile_s" in r else "")
            + (f"  {r['recompiles_timed']} recompiles while timed" if r.get("recompiles_timed") else "") + parity)


BREAKDOWN_NAMES = {"runtime_mib": "runtime", "weights_mib": "weights", "optim_state_mib": "optim state",
                   "other_mib": "other", "grads_mib": "gradients", "activations_mib": "activations"}


def format_breakdown(rows: list[dict[str, Any]]) -> str:
    """The peak memory of each measured row, broken down (MiB; ``bench.memory_breakdown``)."""
    head = f"{'memory breakdown (MiB)':44s} " + " ".join(f"{n:>11s}" for n in BREAKDOWN_NAMES.values()) + \
        f" {'peak':>8s} {'x naive':>8s}"
    lines = [head]
    for r in rows:
        if "activations_mib" in r:
            lines.append(f"{r['variant'] + '/' + r['mode'] + ' ' + str(r['img_h']):44s} "
                         + " ".join(f"{r[k]:11.0f}" for k in BREAKDOWN_NAMES)
                         + f" {r['peak_mib']:8.0f} {r.get('peak_ratio', float('nan')):8.2f}")
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", required=True, help="model preset, e.g. taskprompter_bench_a")
    parser.add_argument("--img-size", type=int, nargs=2, metavar=("H", "W"), help="input size (default: preset's)")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    parser.add_argument("--amp", help="comma-separated precisions of the efficient path: off, bf16 (bf16 autocast on "
                        "the CPU or CUDA); default: off, plus bf16 where the device multiplies bf16 natively (as "
                        "train.amp=auto). The fp32 eager naive and efficient paths are always timed")
    parser.add_argument("--compile", action="store_true", help="also the efficient path through torch.compile, in "
                        "each precision (compiled in the warm-up; compile time in the compile_s column)")
    parser.add_argument("--compile-backend", help=f"torch.compile backend (default: {bench.measure.COMPILE_BACKEND})")
    parser.add_argument("--tasks", type=int, help="use the preset's first N tasks")
    parser.add_argument("--modes", default="train,infer", help="comma-separated: train, infer")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved rounds (median and spread over them)")
    parser.add_argument("--warmup", type=int, default=2, help="warm-up steps per configuration (a compiled one: at "
                        f"least {bench.measure.COMPILED_WARMUP})")
    parser.add_argument("--min-time", type=float, default=1.0, help="seconds per configuration per round")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    parser.add_argument("--matmul-size", type=int, default=2048, help="n of the n x n matmul timed for the rates")
    parser.add_argument("--grad-ckpt", action="store_true", help="also the efficient path with grad_checkpointing "
                        "(in each precision)")
    parser.add_argument("--step-in-backward", action="store_true", help="also the training step with the optimiser "
                        "step fused into the backward (optim.step_in_backward), for the efficient path and, with "
                        "--grad-ckpt, grad_checkpointing, in each precision")
    parser.add_argument("--loss-weighting", default="", help="comma-separated train.loss_weighting methods (e.g. "
                        "uw,dwa,famo,gradnorm_scale,pcgrad,cagrad,upgrad,nash_mtl, or all): also the efficient path's "
                        "training step with each method's backward (fp32 eager; time_vs_plain is its cost against "
                        "fixed)")
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


def parse_amps(value: str | None, device: str) -> tuple[list[str], str]:
    """The precisions of ``--amp`` (off first, always) and why: given, or the device's default."""
    if value is None or value.strip() in ("", "auto"):
        amps = bench.default_amps(device)
        return amps, "default: " + ("the device multiplies bf16 natively" if "bf16" in amps else
                                    "the device has no native bf16 (give --amp off,bf16 to time it anyway)")
    amps = ["off"]
    for item in (x.strip() for x in value.split(",") if x.strip()):
        for amp in bench.default_amps(device) if item == "auto" else [bench.canonical_bench_amp(item)]:
            if amp not in amps:
                amps.append(amp)
    return amps, f"--amp {value}"


def run_header(device: str, matmul_size: int) -> dict[str, str]:
    """The run's header: machine, device, torch, threads, the bf16 capability record and the fp32 / bf16 matmul
    rates (measured now; the CSV holds the higher of before and after)."""
    header = {"machine": bench.machine_name(), "device": bench.device_name(device), "torch": torch.__version__,
              "date": datetime.date.today().isoformat(), "threads": str(torch.get_num_threads())}
    header.update(bench.capability_record(device))
    return header


def measure_rates(device: str, n: int) -> dict[str, float]:
    return {amp: bench.matmul_rate(device, dtype, n=n) for amp, dtype in DTYPES.items()}


def run(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {args.device}: CUDA is not available in this torch ({torch.__version__})")
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not modes or any(m not in ("train", "infer") for m in modes):
        raise ConfigError(f"--modes {args.modes!r}: use train and/or infer")
    amps, why = parse_amps(args.amp, args.device)
    started = datetime.datetime.now().strftime("%H:%M:%S")  # groups the rows of one invocation in the CSV
    header = run_header(args.device, args.matmul_size)
    print(f"machine: {header['machine']}; torch {header['torch']}; {header['threads']} threads")
    print(f"device: {args.device} ({header['device_model']}): native bf16 {header['native_bf16']} "
          f"({header['bf16_evidence']}); train.amp=auto would compute in {header['amp_auto']}")
    base = bench.BenchConfig(preset=args.preset, batch=args.batch, device=args.device, tasks=args.tasks,
                             img_size=tuple(args.img_size) if args.img_size else None)
    errors = bench.check_parity(base)
    worst = max(errors.values())
    print("parity efficient vs naive (max relative error): " + ", ".join(f"{k} {v:.2e}" for k, v in errors.items()))
    if not worst <= bench.PARITY_TOL:
        print(f"bench: efficient and naive paths disagree (worst {worst:.3g} > {bench.PARITY_TOL:g}); not timing",
              file=sys.stderr)
        return 3
    before = measure_rates(args.device, args.matmul_size)
    print(f"dense matmul rate ({args.matmul_size}^2 torch.mm, best of 5): fp32 {before['off'] / 1e9:.1f} GMAC/s, "
          f"bf16 {before['bf16'] / 1e9:.1f} GMAC/s (bf16 x{before['bf16'] / before['off']:.2f} of fp32)")
    weightings = _weightings(args.loss_weighting)
    groups = bench.plan_groups(base, modes=modes, sweep=args.sweep, sizes=args.sizes, grad_ckpt=args.grad_ckpt,
                               recompute=args.recompute, amps=amps, compile=args.compile,
                               step_in_backward=args.step_in_backward, weightings=weightings)
    print(f"precisions: {', '.join('fp32' if a == 'off' else a for a in amps)} ({why}); compile: "
          f"{'yes, backend ' + (args.compile_backend or bench.measure.COMPILE_BACKEND) if args.compile else 'no'}; "
          f"per group: {', '.join(c.label for c in groups[0][1])}", flush=True)
    rows: list[dict[str, Any]] = []
    for sweep, cfgs in groups:
        group_rows = bench.bench_group(cfgs, repeats=args.repeats, warmup=args.warmup, min_time=args.min_time,
                                       memory=not args.no_memory, rate=before, sweep=sweep,
                                       profile_dir=Path(args.profile) if args.profile else None,
                                       backend=args.compile_backend)
        if sweep == "tasks":
            for r in group_rows:
                r.update(bench.table8_columns(args.preset, r["tasks"], base.img_size))
        bench.add_ratios(group_rows)
        for r in group_rows:
            print(format_row(r), flush=True)
        rows += group_rows
    after = measure_rates(args.device, args.matmul_size)
    best = {amp: max(before[amp], after[amp]) for amp in DTYPES}  # a busy moment only lowers a measurement
    for r in rows:
        r["matmul_gmac_s"] = best[r["amp"]] / 1e9
        r["share_of_matmul_pct"] = 100 * r["achieved_gmac_s"] / r["matmul_gmac_s"]
    header.update(matmul_n=str(args.matmul_size), mm_fp32_gmac_s=f"{best['off'] / 1e9:.4g}",
                  mm_bf16_gmac_s=f"{best['bf16'] / 1e9:.4g}")
    print(f"\ndense matmul rate: fp32 {before['off'] / 1e9:.1f} GMAC/s before, {after['off'] / 1e9:.1f} after; bf16 "
          f"{before['bf16'] / 1e9:.1f} before, {after['bf16'] / 1e9:.1f} after (shares use the higher, of the row's "
          f"precision); {torch.get_num_threads()} threads; {header['machine']}")
    for r in rows:
        print(format_row(r))
    if any("activations_mib" in r for r in rows):
        print("\n" + format_breakdown(rows))
    if not args.no_csv:
        meta = {**header, "started": started}
        path = bench.write_csv(rows, args.csv or bench.default_csv_path(args.device), meta)
        print(f"wrote {len(rows)} rows to {path}")
    bad = [r for r in rows if r.get("parity_ok") == 0 or (r.get("parity_outputs") is not None
                                                           and math.isnan(r["parity_outputs"]))]
    if bad:
        tol = ", ".join(f"{'fp32' if a == 'off' else a}: outputs {t['outputs']:g}, gradients {t['gradients']:g}"
                        for a, t in bench.VARIANT_TOL.items())
        print("bench: variants beyond their parity tolerance against fp32 eager (" + tol + "; the step in the "
              "backward: the ordinary step's weights exactly): "
              + ", ".join(sorted({f"{r['variant']}/{r['mode']}" for r in bad})), file=sys.stderr)
        return 3
    return 0


def _weightings(value: str) -> list[str]:
    """The methods of ``--loss-weighting`` ("all": every one of ``taskprompter.weighting.WEIGHTINGS``)."""
    from ..weighting import WEIGHTINGS

    names = [w.strip() for w in value.split(",") if w.strip()]
    if names == ["all"]:
        return list(WEIGHTINGS)
    unknown = [w for w in names if w not in WEIGHTINGS]
    if unknown:
        raise SystemExit(f"bench: --loss-weighting {', '.join(unknown)} not one of {', '.join(WEIGHTINGS)}")
    return names
