"""The CSV rows of `taskprompter bench`: one row per measured configuration (``summarize``), the ratios against the
fp32 naive row (and the fp32 eager efficient row) of the same configuration (``add_ratios``), and appending them to a
results file, the run's header (machine, device capability, fp32 and bf16 matmul rates) in every row (``write_csv``)."""

from __future__ import annotations

import csv
import datetime
import os
import statistics
from pathlib import Path
from typing import Any

import torch

from .measure import BenchConfig, device_name, model_kwargs


def default_csv_path(device: str, root: str | os.PathLike = "benchmarks/results") -> Path:
    """benchmarks/results/<device>-<torch>-<date>.csv"""
    torch_version = torch.__version__.split("+")[0]
    return Path(root) / f"{device_name(device)}-{torch_version}-{datetime.date.today().isoformat()}.csv"


def summarize(cfg: BenchConfig, times: list[float], macs: int, rate: float, memory: dict[str, float] | None,
              sweep: str) -> dict[str, Any]:
    """One CSV row; ``rate``: the dense matmul rate of the row's precision (fp32, or bf16 for an amp=bf16 row)."""
    med = statistics.median(times)
    mult = 3 if cfg.mode == "train" else 1  # backward ~ 2x forward
    achieved = mult * macs * cfg.batch / med
    H, W = cfg.img_size or model_kwargs(cfg)["img_size"]
    row = {
        "sweep": sweep, "preset": cfg.preset, "variant": cfg.variant, "impl": cfg.impl, "mode": cfg.mode,
        "grad_ckpt": int(cfg.grad_checkpointing), "recompute": cfg.recompute if cfg.impl == "efficient" else "-",
        "amp": cfg.amp, "compile": int(cfg.compile), "step_in_backward": int(cfg.step_in_backward),
        "weighting": cfg.weighting,
        "tasks": len(model_kwargs(cfg)["tasks"]), "img_h": H, "img_w": W, "tokens": (H // 16) * (W // 16),
        "batch": cfg.batch, "repeats": len(times), "sec_per_step": med, "sec_min": min(times), "sec_max": max(times),
        "spread_pct": 100 * (max(times) - min(times)) / med, "img_per_s": cfg.batch / med, "latency_ms": 1e3 * med,
        "gmacs_per_img": macs / 1e9, "achieved_gmac_s": achieved / 1e9, "matmul_gmac_s": rate / 1e9,
        "share_of_matmul_pct": 100 * achieved / rate,
    }
    if memory:
        row.update({k: memory[k] for k in ("peak_mib", "step_mib", *BREAKDOWN) if k in memory})
    return row


def add_ratios(rows: list[dict[str, Any]]) -> None:
    """Ratios against rows of the same configuration (sweep, preset, mode, tasks, size, batch):
    ``speedup_vs_naive_fp32`` (the fp32 naive row's time / this time: the naive path, always fp32 eager, stands in for
    the released structure), ``speedup_vs_efficient_fp32`` (against the fp32 eager efficient row: what bf16 or
    compilation buys alone), the memory ratios against the naive row, and for a memory variant (grad_checkpointing, a
    recompute mode, the optimiser step in the backward) ``time_vs_plain``, against the efficient row of the same
    precision and compilation."""
    key = ("sweep", "preset", "mode", "tasks", "img_h", "img_w", "batch")

    def prec(r: dict[str, Any]) -> tuple:
        return r.get("amp", "off"), int(r.get("compile", 0))

    def memory_variant(r: dict[str, Any]) -> bool:
        return (bool(r.get("grad_ckpt")) or r.get("recompute", "auto") not in ("auto", "-")
                or bool(r.get("step_in_backward")) or r.get("weighting", "fixed") != "fixed")

    naive = {tuple(r[k] for k in key): r for r in rows if r["impl"] == "naive" and prec(r) == ("off", 0)}
    plain = {(tuple(r[k] for k in key), prec(r)): r for r in rows if r["impl"] == "efficient" and not memory_variant(r)}
    for r in rows:
        k = tuple(r[f] for f in key)
        ref = naive.get(k)
        r["speedup_vs_naive_fp32"] = ref["sec_per_step"] / r["sec_per_step"] if ref else float("nan")
        eff = plain.get((k, ("off", 0)))
        if r["impl"] == "efficient":
            r["speedup_vs_efficient_fp32"] = eff["sec_per_step"] / r["sec_per_step"] if eff else float("nan")
        if memory_variant(r) and (k, prec(r)) in plain:  # the price (or gain) of the memory setting
            r["time_vs_plain"] = r["sec_per_step"] / plain[(k, prec(r))]["sec_per_step"]
        for m in ("peak_mib", "step_mib"):
            if ref and m in r and m in ref:
                r[f"{m.split('_')[0]}_ratio"] = r[m] / ref[m]


def write_csv(rows: list[dict[str, Any]], path: str | os.PathLike, meta: dict[str, str]) -> Path:
    """Append rows (with machine / torch / date / threads columns) to ``path``, writing a header for a new file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fields = list(meta) + COLUMNS + sorted({k for r in rows for k in r} - set(COLUMNS))  # one header for all runs
    new = not path.exists()
    if not new:
        with open(path) as fh:
            header = next(csv.reader(fh), [])
        if header != fields:  # a file of another version of this tool: a fresh file beside it
            path = path.with_name(path.stem + f"-{datetime.datetime.now():%H%M%S}" + path.suffix)
            new = True
    with open(path, "a", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        if new:
            writer.writeheader()
        for r in rows:
            writer.writerow({**meta, **{k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()}})
    return path


# the breakdown of a step's peak memory (``measure.memory_breakdown``), in MiB; they add up to peak_mib
BREAKDOWN = ("runtime_mib", "weights_mib", "optim_state_mib", "other_mib", "grads_mib", "activations_mib")
COLUMNS = ["sweep", "preset", "variant", "impl", "mode", "grad_ckpt", "recompute", "amp", "compile", "step_in_backward",
           "weighting", "tasks", "img_h", "img_w", "tokens", "batch", "repeats", "sec_per_step", "sec_min", "sec_max",
           "spread_pct", "img_per_s", "latency_ms", "compile_s", "gmacs_per_img", "achieved_gmac_s", "matmul_gmac_s",
           "share_of_matmul_pct", "speedup_vs_naive_fp32", "speedup_vs_efficient_fp32", "time_vs_plain",
           "parity_outputs", "parity_gradients", "parity_weights", "parity_ok", "peak_mib", "step_mib", "peak_ratio",
           "step_ratio", *BREAKDOWN, "paper_params_m", "paper_gmacs", "vitl_params_m", "vitl_gmacs"]
