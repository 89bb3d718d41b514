"""The benchmark suite of docs/performance.md: configs A and C, the task and token sweeps, one CSV.

    .venv/bin/python benchmarks/bench_model.py [--threads 1] [--only A C tasks tokens] [--csv PATH]
    .venv/bin/python benchmarks/bench_model.py --device cuda --amp bf16 --only gpu      # ViT-B / ViT-L at 512

Each entry is one ``taskprompter bench`` invocation (the verb: src/taskprompter/cli/bench.py; what it measures: the
package src/taskprompter/bench/); all rows go to the same CSV under benchmarks/results/. On a shared machine, give
each run the cores to itself: the interleaving evens out slow drifts, not another process taking a core for seconds
at a time.
"""

from __future__ import annotations

import argparse
import sys

from taskprompter.cli import main as cli

SUITE: dict[str, list[str]] = {
    # A: ViT-S (384/12/6) at 384x384, K=16, e=192, f=256, batch 2 -- the heads' 3x3 convs are half of the MACs
    "A": ["--preset", "taskprompter_bench_a", "--batch", "2", "--repeats", "5", "--warmup", "1", "--grad-ckpt",
          "--recompute", "on", "off"],
    # C: 192/12/3 at 128x128, K=4, e=64, f=64, batch 8 -- small operations
    "C": ["--preset", "taskprompter_bench_c", "--batch", "8", "--repeats", "7", "--grad-ckpt", "--recompute", "on"],
    # cost against the number of tasks (paper Table 8 beside), at C
    "tasks": ["--preset", "taskprompter_bench_c", "--batch", "8", "--repeats", "5", "--sweep", "tasks",
              "--no-memory"],
    # cost against the number of tokens (N = 16, 64, 144, 256, 576), at C's widths
    "tokens": ["--preset", "taskprompter_bench_c", "--batch", "4", "--repeats", "5", "--sweep", "tokens",
               "--sizes", "64", "128", "192", "256", "384", "--no-memory"],
    # GPU: ViT-B and ViT-L at 512x512 (bf16 autocast for the efficient path; the naive path stays fp32)
    "gpu": ["--preset", "taskprompter_vit_b_pascal", "--batch", "4", "--repeats", "10", "--grad-ckpt"],
    "gpu_l": ["--preset", "taskprompter_vit_l_pascal", "--batch", "2", "--repeats", "10", "--grad-ckpt"],
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="+", choices=sorted(SUITE), default=["A", "C", "tasks", "tokens"])
    parser.add_argument("--threads", type=int, help="torch threads for every run")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--amp", help="the verb's --amp, e.g. off,bf16 (default: off, plus bf16 where the device "
                        "multiplies bf16 natively)")
    parser.add_argument("--compile", action="store_true", help="also the efficient path through torch.compile")
    parser.add_argument("--csv", help="CSV for all rows (default: benchmarks/results/<device>-<torch>-<date>.csv)")
    args = parser.parse_args(argv)
    common = ["--device", args.device] + (["--amp", args.amp] if args.amp else []) + \
        (["--compile"] if args.compile else [])
    if args.threads:
        common += ["--threads", str(args.threads)]
    if args.csv:
        common += ["--csv", args.csv]
    status = 0
    for name in args.only:
        print(f"== {name}: taskprompter bench {' '.join(SUITE[name] + common)}", flush=True)
        status = max(status, cli(["bench", *SUITE[name], *common]))
    return status


if __name__ == "__main__":
    sys.exit(main())
