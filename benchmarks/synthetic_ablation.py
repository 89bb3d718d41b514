"""The paper's Table 1 (component ablation) reproduced on synthetic PASCAL-format scenes, on the CPU.

    .venv/bin/python benchmarks/synthetic_ablation.py --out runs/ablation                # the budget of docs/results.md
    .venv/bin/python benchmarks/synthetic_ablation.py --out runs/ablation --seeds 0 1 2  # with the spread over seeds
    .venv/bin/python benchmarks/synthetic_ablation.py --out /tmp/abl --quick             # smoke run, seconds
    # the same in bf16 autocast, two trainings at a time, compared cell by cell with the fp32 runs
    .venv/bin/python benchmarks/synthetic_ablation.py --out runs/ablation_bf16 --seeds 0 1 2 --amp bf16 --jobs 2 \
        --against runs/ablation

Trains, with one fixed budget each (same data, schedule, optimiser and seed): the five single-task models (STL: the
baseline structure with one task), the multi-task baseline (ViT + Conv3x3-BN-ReLU-Conv1x1 heads, no prompts), and
+SPrompt, +SPrompt+CPrompt, +RW, +HP (``taskprompter.model.variants.ABLATION_STAGES``); evaluates every run with every
metric on the held-out scenes; prints Table 1 with Delta_m against our own STL runs. Every finished run leaves
``<out>/seed<S>/<run>/metrics.json`` and is skipped when the script runs again (so a stopped run resumes);
``<out>/results.json`` and ``<out>/table.md`` hold the table. ``--amp`` is the runs' ``train.amp`` (``off``, fp32,
by default, as the demo); a directory holds runs of one precision only. ``--against DIR`` compares each cell with
the same cell of another output directory (e.g. bf16 against fp32): both means, the difference, and the other
directory's spread over seeds (``<out>/against.md``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from functools import partial
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from taskprompter.config import load_config
from taskprompter.engine.train import train
from taskprompter.metrics import METRIC_SPECS, delta_m
from taskprompter.model.build import PRESETS
from taskprompter.model.variants import ABLATION_STAGES, ablation_kwargs

TASKS = ("semseg", "human_parts", "sal", "normals", "edge")  # PASCAL-Context, the paper's Table 1 columns
ROW_NAMES = {"stl": "STL Model", "baseline": "TaskPrompter Baseline", "sprompt": "+SPrompt",
             "sprompt_cprompt": "+SPrompt + CPrompt", "rw": "+SPrompt + CPrompt + RW",
             "hp": "+SPrompt + CPrompt + RW + HP"}
COLUMNS = {"semseg": "Semseg mIoU ↑", "human_parts": "Parsing mIoU ↑", "sal": "Saliency maxF ↑",
           "normals": "Normal mErr ↓", "edge": "Boundary odsF ↑"}
# Paper Table 1 (ViT-B, PASCAL-Context), for docs/results.md
PAPER = {"stl": [78.42, 68.36, 85.34, 13.87, 73.90, None], "baseline": [75.04, 64.82, 84.59, 14.17, 68.00, -4.11],
         "sprompt": [75.95, 65.60, 84.91, 13.97, 70.50, -2.59], "sprompt_cprompt": [76.46, 66.25, 85.00, 13.97, 71.10,
                                                                                    -2.11],
         "rw": [76.83, 66.31, 85.00, 13.94, 71.30, -1.90], "hp": [79.00, 67.00, 85.05, 13.47, 73.50, 0.15]}

PRECISION = {"off": "fp32"}  # train.amp -> the name of the precision in --against's table

# The budgets. full: ~14 min per seed on one CPU core (10 trainings); quick: a smoke run of the whole pipeline.
SETTINGS = {
    "full": dict(preset="taskprompter_small", size=(96, 128), num_scenes=400, steps=600, batch=8, warmup=30,
                 lr=1e-3, max_val=0),
    "quick": dict(preset="taskprompter_tiny", size=(64, 64), num_scenes=20, steps=6, batch=4, warmup=0, lr=2e-3,
                  max_val=0),
}


def runs() -> list[tuple[str, str, tuple[str, ...]]]:
    """(run name, ablation stage, tasks) of every model of the table."""
    stl = [(f"stl_{t}", "baseline", (t,)) for t in TASKS]
    return stl + [(stage, stage, TASKS) for stage in ABLATION_STAGES]


def run_config(setting: dict[str, Any], stage: str, tasks: tuple[str, ...], *, root: Path, out: Path, seed: int,
               amp: str = "off"):
    """The training config of one run: the synthetic_demo recipe with this run's budget, model switches, tasks and
    precision (``train.amp``)."""
    depth = PRESETS[setting["preset"]]["depth"]
    cfg = load_config("synthetic_demo", [
        f"model.name={setting['preset']}", f"data.root={root}", f"data.size=[{setting['size'][0]}, "
        f"{setting['size'][1]}]", f"optim.max_iters={setting['steps']}", f"optim.warmup_iters={setting['warmup']}",
        f"optim.lr={setting['lr']}", f"train.batch_size={setting['batch']}",
        f"train.eval_batch_size={setting['batch']}",
        "train.eval_every=0", f"train.checkpoint_every={setting['steps']}", "train.progress=false",
        f"train.log_every={max(1, setting['steps'] // 10)}", f"train.out_dir={out}", f"seed={seed}",
        f"data.max_val_samples={setting['max_val']}", f"train.amp={amp}"])
    overrides = {k: list(v) if isinstance(v, tuple) else v for k, v in ablation_kwargs(stage, depth=depth).items()}
    return replace(cfg, model=replace(cfg.model, overrides=overrides), data=replace(cfg.data, tasks=tasks))


def _train_one(job: tuple[dict[str, Any], str, str, tuple[str, ...], str, str, int, str]) -> dict[str, Any]:
    """Train and evaluate one run of the table; its record (also written to ``<run>/metrics.json``)."""
    setting, name, stage, tasks, root, run_dir, seed, amp = job
    t0 = time.time()
    cfg = run_config(setting, stage, tasks, root=Path(root), out=Path(run_dir), seed=seed, amp=amp)
    metrics = train(cfg, overwrite=True)["metrics"]  # a run without metrics.json is retrained
    record = {"run": name, "stage": stage, "tasks": list(tasks), "seed": seed, "seconds": time.time() - t0,
              "setting": setting, "amp": amp, "metrics": metrics}
    (Path(run_dir) / "metrics.json").write_text(json.dumps(record, indent=1) + "\n")
    return record


def _in_one_thread(fn: Callable[[Any], Any], job: Any) -> Any:
    """``fn(job)`` in a pool worker with one CPU thread, so that parallel trainings share the cores."""
    import torch

    torch.set_num_threads(1)
    return fn(job)


def map_trainings(fn: Callable[[Any], Any], todo: list, jobs: int) -> Iterator[Any]:
    """``fn`` over ``todo`` in order: here when ``jobs`` is 1, else in ``jobs`` spawned one-thread processes (``fn``
    must be a module-level function, as pickling needs)."""
    if jobs > 1 and len(todo) > 1:
        with ProcessPoolExecutor(max_workers=jobs, mp_context=get_context("spawn")) as pool:
            yield from pool.map(partial(_in_one_thread, fn), todo)
    else:
        yield from map(fn, todo)


def train_all(setting: dict[str, Any], out: Path, seeds: list[int], *, force: bool = False, amp: str = "off",
              jobs: int = 1) -> dict[int, dict]:
    """{seed: {run: {task: {metric: value}}}}, training what is not already in ``out`` (``jobs`` at a time)."""
    from taskprompter.data.synthetic import generate

    root = out / "data" / "PASCALContext"
    if not (root / "ImageSets").is_dir():
        print(f"ablation: writing {setting['num_scenes']} synthetic scenes of {setting['size']} to {root}", flush=True)
        generate(root, format="pascal_context", num=setting["num_scenes"], size=tuple(setting["size"]), seed=1234)
    results: dict[int, dict] = {seed: {} for seed in seeds}
    todo = []
    for seed in seeds:
        for name, stage, tasks in runs():
            done = out / f"seed{seed}" / name / "metrics.json"
            if done.is_file() and not force:
                record = json.loads(done.read_text())
                if record.get("amp", "off") != amp:  # records before --amp existed are fp32
                    raise SystemExit(f"{done} was trained with train.amp={record.get('amp', 'off')}, not {amp}: "
                                     f"use another --out for another precision")
                results[seed][name] = record["metrics"]
                continue
            todo.append((setting, name, stage, tasks, str(root), str(out / f"seed{seed}" / name), seed, amp))

    def report(record: dict[str, Any]) -> None:
        results[record["seed"]][record["run"]] = metrics = record["metrics"]
        print(f"ablation: seed {record['seed']} {record['run']:16s} {record['seconds']:6.0f} s  " + "  ".join(
            f"{t} {metrics[t][METRIC_SPECS[t].primary]:.2f}" for t in record["tasks"]), flush=True)

    for record in map_trainings(_train_one, todo, jobs):
        report(record)
    return {seed: {name: results[seed][name] for name, _, _ in runs()} for seed in seeds}


def safe_delta_m(values: dict[str, float], references: dict[str, float]) -> float:
    """delta_m, or NaN when a single-task reference is 0 (possible only in a smoke run)."""
    return float("nan") if any(references[t] == 0 for t in values) else delta_m(values, references)


def table_rows(results: dict[int, dict]) -> list[dict[str, Any]]:
    """Rows of Table 1: each cell the mean over seeds (and its standard deviation); Delta_m of a row is delta_m of
    its mean values against the STL row's mean values, with the per-seed Delta_m spread beside it."""
    seeds = sorted(results)

    def primary(seed: int, run: str, task: str) -> float:
        return float(results[seed][run][task][METRIC_SPECS[task].primary])

    def cell(values: list[float]) -> tuple[float, float]:
        return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)

    stl = {t: cell([primary(s, f"stl_{t}", t) for s in seeds]) for t in TASKS}
    rows = [{"row": "stl", "name": ROW_NAMES["stl"], "values": {t: stl[t][0] for t in TASKS},
             "std": {t: stl[t][1] for t in TASKS}, "delta_m": None, "delta_m_std": None}]
    for stage in ABLATION_STAGES:
        cells = {t: cell([primary(s, stage, t) for s in seeds]) for t in TASKS}
        values = {t: cells[t][0] for t in TASKS}
        per_seed = [safe_delta_m({t: primary(s, stage, t) for t in TASKS},
                                 {t: primary(s, f"stl_{t}", t) for t in TASKS}) for s in seeds]
        rows.append({"row": stage, "name": ROW_NAMES[stage], "values": values, "std": {t: cells[t][1] for t in TASKS},
                     "delta_m": safe_delta_m(values, rows[0]["values"]),
                     "delta_m_std": statistics.stdev(per_seed) if len(per_seed) > 1 else 0.0,
                     "delta_m_per_seed": per_seed})
    return rows


def _change(diff: float) -> str:
    """The paper's bracket: the direction of the change against the baseline (not whether it is better)."""
    return f" ({'↑' if diff >= 0 else '↓'} {abs(diff):.2f})"


def format_table(rows: list[dict[str, Any]]) -> str:
    """Markdown in the paper's layout: gains against the baseline in brackets, +-std when there are several seeds."""
    base = next(r for r in rows if r["row"] == "baseline")
    lines = ["| Model | " + " | ".join(COLUMNS[t] for t in TASKS) + " | MTL Gain Δm ↑ |",
             "|---" * (len(TASKS) + 2) + "|"]
    for r in rows:
        cells = []
        for t in TASKS:
            text = f"{r['values'][t]:.2f}"
            if r["std"][t]:
                text += f" ± {r['std'][t]:.2f}"
            if r["row"] not in ("stl", "baseline"):
                text += _change(r["values"][t] - base["values"][t])
            cells.append(text)
        dm = "-"
        if r["delta_m"] is not None:
            dm = f"{r['delta_m']:.2f}" + (f" ± {r['delta_m_std']:.2f}" if r["delta_m_std"] else "")
            if r["row"] != "baseline":
                dm += _change(r["delta_m"] - base["delta_m"])
        lines.append(f"| {r['name']} | " + " | ".join(cells) + f" | {dm} |")
    return "\n".join(lines)


def format_against(rows: list[dict[str, Any]], other: list[dict[str, Any]], *, label: str, other_label: str) -> str:
    """Each cell of ``rows`` beside the same cell of ``other`` (e.g. bf16 beside fp32): both means over seeds, the
    difference, and that difference in units of ``other``'s standard deviation over seeds (its seed spread); the
    last column counts the cells within one and two such deviations."""
    header = ["Model"] + [COLUMNS[t] for t in TASKS] + ["MTL Gain Δm ↑", "within 1σ / 2σ"]
    lines = [f"Each cell: {label} − {other_label} = difference (the difference in standard deviations of "
             f"{other_label} over seeds).", "", "| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    by_row = {r["row"]: r for r in other}
    for r in rows:
        o = by_row[r["row"]]
        pairs = [(r["values"][t], o["values"][t], o["std"][t]) for t in TASKS]
        if r["delta_m"] is not None:
            pairs.append((r["delta_m"], o["delta_m"], o["delta_m_std"]))
        cells, within = [], [0, 0]
        for mine, theirs, sd in pairs:
            diff = mine - theirs
            sigmas = abs(diff) / sd if sd else (0.0 if diff == 0 else float("inf"))
            within[0] += sigmas <= 1
            within[1] += sigmas <= 2
            cells.append(f"{mine:.2f} − {theirs:.2f} = {diff:+.2f} ({sigmas:.1f}σ)")
        if r["delta_m"] is None:
            cells.append("-")
        lines.append(f"| {r['name']} | " + " | ".join(cells) + f" | {within[0]} / {within[1]} of {len(pairs)} |")
    return "\n".join(lines)


def metric_columns(metrics: dict[str, dict[str, Any]]) -> dict[str, float]:
    """{"<task>.<metric>": value} of every scalar metric of a run."""
    return {f"{task}.{k}": v for task, values in metrics.items() for k, v in values.items()
            if isinstance(v, (int, float))}


def write_rows_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    """``rows`` as a CSV whose columns are every key of any row, in first-seen order."""
    import csv

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(dict.fromkeys(k for r in rows for k in r)))
        writer.writeheader()
        writer.writerows(rows)


def write_runs_csv(path: Path, out: Path, seeds: list[int]) -> None:
    """One row per (seed, run): its budget, time and every scalar metric of every task it was trained on."""
    rows = []
    for seed in seeds:
        for name, stage, tasks in runs():
            record = json.loads((out / f"seed{seed}" / name / "metrics.json").read_text())
            rows.append({"seed": seed, "run": name, "stage": stage, "tasks": "+".join(tasks),
                         "amp": record.get("amp", "off"), "seconds": round(record["seconds"], 1),
                         **{f"setting_{k}": v for k, v in record["setting"].items()},
                         **metric_columns(record["metrics"])})
    write_rows_csv(path, rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="runs/ablation", help="output directory (data, runs, table)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="training seeds (data fixed)")
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny model, 2 steps per run")
    parser.add_argument("--steps", type=int, help="override the iterations per run")
    parser.add_argument("--force", action="store_true", help="retrain runs that already have metrics.json")
    parser.add_argument("--csv", help="also write every run's metrics to this CSV (e.g. benchmarks/results/...)")
    parser.add_argument("--amp", default="off", choices=("off", "bf16", "fp16", "auto"),
                        help="train.amp of every run (default off: fp32, as the demo)")
    parser.add_argument("--jobs", type=int, default=1, help="trainings in parallel (one CPU thread each)")
    parser.add_argument("--against", help="another output directory (same seeds) to compare every cell with")
    args = parser.parse_args(argv)
    setting = dict(SETTINGS["quick" if args.quick else "full"])
    if args.steps:
        setting["steps"] = args.steps
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    results = train_all(setting, out, args.seeds, force=args.force, amp=args.amp, jobs=args.jobs)
    rows = table_rows(results)
    table = format_table(rows)
    print(f"\nTable 1 on synthetic scenes ({setting['preset']}, {setting['size'][0]}x{setting['size'][1]}, "
          f"{setting['steps']} iterations x batch {setting['batch']}, seeds {args.seeds}, train.amp={args.amp}):"
          f"\n\n{table}")
    (out / "table.md").write_text(table + "\n")
    (out / "results.json").write_text(json.dumps({"setting": setting, "seeds": args.seeds, "amp": args.amp,
                                                  "rows": rows,
                                                  "runs": {str(s): r for s, r in results.items()},
                                                  "seconds": time.time() - t0}, indent=1) + "\n")
    if args.csv:
        write_runs_csv(Path(args.csv), out, args.seeds)
    if args.against:
        other = Path(args.against)
        records = {}
        for seed in args.seeds:
            for name, _, _ in runs():
                path = other / f"seed{seed}" / name / "metrics.json"
                if not path.is_file():
                    raise SystemExit(f"--against {other}: {path} is missing (train it there first)")
                records.setdefault(seed, {})[name] = json.loads(path.read_text())
        other_amp = {r.get("amp", "off") for runs_ in records.values() for r in runs_.values()}
        other_rows = table_rows({s: {n: r["metrics"] for n, r in runs_.items()} for s, runs_ in records.items()})
        text = format_against(rows, other_rows, label=PRECISION.get(args.amp, args.amp),
                              other_label="/".join(PRECISION.get(a, a) for a in sorted(other_amp)))
        print(f"\nagainst {other}:\n\n{text}")
        (out / "against.md").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
