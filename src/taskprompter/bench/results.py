"""The CSV rows of `taskprompter bench`: one row per measured configuration (``summarize``), the ratios against the
naive row of the same configuration (``add_ratios``), and appending them to a results file (``write_csv``)."""

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
    """One CSV row."""
    med = statistics.median(times)
    mult = 3 if cfg.mode == "train" else 1  # backward ~ 2x forward
    achieved = mult * macs * cfg.batch / med
    H, W = cfg.img_size or model_kwargs(cfg)["img_size"]
    row = {
        "sweep": sweep, "preset": cfg.preset, "impl": cfg.impl, "mode": cfg.mode,
        "grad_ckpt": int(cfg.grad_checkpointing), "recompute": cfg.recompute if cfg.impl == "efficient" else "-",
        "amp": cfg.amp if cfg.impl == "efficient" else "none",
        "tasks": len(model_kwargs(cfg)["tasks"]), "img_h": H, "img_w": W, "tokens": (H // 16) * (W // 16),
        "batch": cfg.batch, "repeats": len(times), "sec_per_step": med, "sec_min": min(times), "sec_max": max(times),
        "spread_pct": 100 * (max(times) - min(times)) / med, "img_per_s": cfg.batch / med, "latency_ms": 1e3 * med,
        "gmacs_per_img": macs / 1e9, "achieved_gmac_s": achieved / 1e9, "matmul_gmac_s": rate / 1e9,
        "share_of_matmul_pct": 100 * achieved / rate,
    }
    if memory:
        row.update(peak_mib=memory["peak_mib"], step_mib=memory["step_mib"])
    return row


def add_ratios(rows: list[dict[str, Any]]) -> None:
    """speedup (naive time / this time) and memory ratios against the naive row of the same configuration."""
    key = ("sweep", "preset", "mode", "tasks", "img_h", "img_w", "batch")
    naive = {tuple(r[k] for k in key): r for r in rows if r["impl"] == "naive"}
    plain = {tuple(r[k] for k in key): r for r in rows
             if r["impl"] == "efficient" and not r.get("grad_ckpt") and r.get("recompute", "auto") == "auto"}
    for r in rows:
        ref = naive.get(tuple(r[k] for k in key))
        r["speedup_vs_naive"] = ref["sec_per_step"] / r["sec_per_step"] if ref else float("nan")
        variant = r.get("grad_ckpt") or r.get("recompute", "auto") not in ("auto", "-")
        if variant and tuple(r[k] for k in key) in plain:  # the price (or gain) of the memory setting
            r["time_vs_plain"] = r["sec_per_step"] / plain[tuple(r[k] for k in key)]["sec_per_step"]
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


COLUMNS = ["sweep", "preset", "impl", "mode", "grad_ckpt", "recompute", "amp", "tasks", "img_h", "img_w", "tokens",
            "batch",
            "repeats", "sec_per_step", "sec_min", "sec_max", "spread_pct", "img_per_s", "latency_ms", "gmacs_per_img",
            "achieved_gmac_s", "matmul_gmac_s", "share_of_matmul_pct", "speedup_vs_naive", "time_vs_plain", "peak_mib",
            "step_mib", "peak_ratio", "step_ratio", "paper_params_m", "paper_gmacs", "vitl_params_m", "vitl_gmacs"]
