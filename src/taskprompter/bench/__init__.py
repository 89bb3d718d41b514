"""What `taskprompter bench` measures (the verb's arguments and printing are in ``taskprompter.cli.bench``).

``measure.py``  one configuration: its model, MACs, a training-step / inference runner (fp32 or bf16 autocast, eager
                or torch.compile, the optimiser step after the backward or inside it), the efficient-vs-naive parity
                gate, the variants' parity against fp32 eager and the step in the backward's against the ordinary
                step, interleaved timing (compilation in the warm-up, apart), peak memory and its breakdown (runtime,
                weights, optimiser state, gradients, activations), the dense fp32 / bf16 matmul rates, the device's
                bf16 capability record, machine and device names
``suite.py``    the groups of a run (paths x precisions x compile x modes, task and token sweeps), their timing,
                parity and memory, Table 8 beside
``results.py``  one CSV row per configuration, ratios against the fp32 naive row, appending to a results file

Not imported by the rest of the library; ``benchmarks/`` drives it for docs/performance.md.
"""

from __future__ import annotations

from .measure import (
    AMPS,
    GRAD_FLOOR,
    PARITY_TOL,
    VARIANT_TOL,
    BenchConfig,
    Runner,
    bench_loss,
    build,
    canonical_bench_amp,
    capability_record,
    check_parity,
    check_step_in_backward_parity,
    check_variant_parity,
    default_amps,
    device_name,
    gradient_error,
    machine_name,
    macs_per_image,
    matmul_rate,
    measure_memory,
    memory_breakdown,
    memory_child,
    model_kwargs,
    relative_error,
    synchronize,
    tensor_bytes,
    time_interleaved,
    variant_name,
)
from .results import BREAKDOWN, COLUMNS, add_ratios, default_csv_path, summarize, write_csv
from .suite import PAPER_TABLE8, bench_group, is_variant, parity_row, plan_groups, profile_step, table8_columns

__all__ = [
    "AMPS", "BREAKDOWN", "COLUMNS", "GRAD_FLOOR", "PAPER_TABLE8", "PARITY_TOL", "VARIANT_TOL", "BenchConfig",
    "Runner", "add_ratios", "bench_group", "bench_loss", "build", "canonical_bench_amp", "capability_record",
    "check_parity", "check_step_in_backward_parity", "check_variant_parity", "default_amps", "default_csv_path",
    "device_name", "gradient_error", "is_variant", "machine_name", "macs_per_image", "matmul_rate", "measure_memory",
    "memory_breakdown", "memory_child", "model_kwargs", "parity_row", "plan_groups", "profile_step", "relative_error",
    "summarize", "synchronize", "table8_columns", "tensor_bytes", "time_interleaved", "variant_name", "write_csv",
]  # fmt: skip
