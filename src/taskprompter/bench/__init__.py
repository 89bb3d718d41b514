"""What `taskprompter bench` measures (the verb's arguments and printing are in ``taskprompter.cli.bench``).

``measure.py``  one configuration: its model, MACs, a training-step / inference runner, the efficient-vs-naive parity
                gate, interleaved timing, peak memory, the dense matmul rate, machine and device names
``suite.py``    the groups of a run (paths x modes, task and token sweeps), their timing and memory, Table 8 beside
``results.py``  one CSV row per configuration, ratios against the naive row, appending to a results file

Not imported by the rest of the library; ``benchmarks/`` drives it for docs/performance.md.
"""

from __future__ import annotations

from .measure import (
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
from .results import COLUMNS, add_ratios, default_csv_path, summarize, write_csv
from .suite import PAPER_TABLE8, bench_group, plan_groups, profile_step, table8_columns

__all__ = [
    "COLUMNS", "GRAD_FLOOR", "PAPER_TABLE8", "PARITY_TOL", "BenchConfig", "Runner", "add_ratios", "bench_group",
    "bench_loss", "build", "check_parity", "default_csv_path", "device_name", "machine_name", "macs_per_image",
    "matmul_rate", "measure_memory", "memory_child", "model_kwargs", "plan_groups", "profile_step", "relative_error",
    "summarize", "synchronize", "table8_columns", "time_interleaved", "variant_name", "write_csv",
]  # fmt: skip
