"""Loss balancing and partial labels on the synthetic scenes (issue 15): every `train.loss_weighting` against `fixed`,
and full vs one-label vs random-labels training, with Delta_m against single-task runs.

    .venv/bin/python benchmarks/weighting_comparison.py --ablation runs/ablation --out runs/weighting --seeds 0 1 2 \\
        --jobs 2 --csv benchmarks/results/weighting-comparison-cpu-2.13.0-<date>.csv
    .venv/bin/python benchmarks/weighting_comparison.py --out /tmp/w --quick      # smoke run of the pipeline

The budget is the component ablation's (`synthetic_ablation.py`: the full TaskPrompter, taskprompter_small at
96x128, 600 iterations x batch 8 on 400 scenes), and its runs are reused: its single-task models (``stl_<task>``)
are the Delta_m references and its full model (``hp``) is the ``fixed`` row, trained with the same data, schedule
and seeds -- so run `synthetic_ablation.py --seeds ...` first (``--ablation``), or pass ``--train-references`` to
train them here. Each method runs with its default options. The partial-label rows train `fixed` with a
labelled-tasks record written for the same training split (`taskprompter.data.partial`): ``one`` (one task per image)
and ``random`` (each task with probability 1/2, at least one). Every finished run leaves
``<out>/seed<S>/<run>/metrics.json`` and is skipped when the script runs again; ``<out>/table.md``,
``<out>/results.json`` and ``<out>/weights_<method>.png`` (the weights' trajectories) hold the results.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import synthetic_ablation as ablation  # noqa: E402  (the budget, the config of a run, the table's conventions)

from taskprompter.metrics import METRIC_SPECS  # noqa: E402

TASKS = ablation.TASKS
METHODS = ("uw", "dwa", "famo", "gradnorm_scale", "pcgrad", "cagrad", "upgrad", "nash_mtl")
PARTIAL = ("one", "random")


def run_list(seeds: list[int], *, references: bool, partial: bool) -> list[tuple[int, str]]:
    """(seed, run name) of every training this script does itself."""
    names = ([f"stl_{t}" for t in TASKS] + ["fixed"] if references else []) + list(METHODS)
    names += [f"labels_{p}" for p in PARTIAL] if partial else []
    return [(s, n) for s in seeds for n in names]


def _config(setting: dict[str, Any], name: str, *, root: Path, out: Path, seed: int, records: Path):
    tasks = (name[4:],) if name.startswith("stl_") else TASKS
    cfg = ablation.run_config(setting, "baseline" if name.startswith("stl_") else "hp", tasks, root=root, out=out,
                              seed=seed)
    train = replace(cfg.train, log_every=max(1, setting["steps"] // 60))  # the weights' trajectories: 60 points
    if name in METHODS:
        train = replace(train, loss_weighting=name)
    data = cfg.data
    if name.startswith("labels_"):
        data = replace(data, labelled_tasks=str(records / f"{name[7:]}.json"))
    return replace(cfg, train=train, data=data)


def _train_one(job: tuple[dict[str, Any], str, str, str, int, str]) -> tuple[int, str, dict, float]:
    setting, name, root, out, seed, records = job
    from taskprompter.engine.train import train

    run_dir = Path(out) / f"seed{seed}" / name
    t0 = time.time()
    cfg = _config(setting, name, root=Path(root), out=run_dir, seed=seed, records=Path(records))
    metrics = train(cfg, overwrite=True)["metrics"]
    seconds = time.time() - t0
    record = {"run": name, "tasks": list(cfg.data.tasks), "seed": seed, "seconds": seconds, "setting": setting,
              "loss_weighting": cfg.train.loss_weighting, "labelled_tasks": cfg.data.labelled_tasks,
              "metrics": metrics}
    (run_dir / "metrics.json").write_text(json.dumps(record, indent=1) + "\n")
    return seed, name, metrics, seconds


def write_records(root: Path, records: Path, seed: int = 0) -> None:
    """The one-label and random-labels records of the training split (the same for every training seed)."""
    from taskprompter.data.partial import one_label, random_labels, write_labelled_tasks

    ids = (root / "ImageSets" / "Context" / "train.txt").read_text().split()
    records.mkdir(parents=True, exist_ok=True)
    for mode in PARTIAL:
        path = records / f"{mode}.json"
        if not path.is_file():
            draw = one_label if mode == "one" else random_labels
            write_labelled_tasks(path, {"train": draw(ids, TASKS, seed=seed)})


def collect(out: Path, ablation_dir: Path | None, seeds: list[int]) -> dict[int, dict[str, dict]]:
    """{seed: {run: metrics}}: this script's runs, and the ablation's STL and hp (= fixed) runs."""
    results: dict[int, dict[str, dict]] = {}
    for seed in seeds:
        results[seed] = {}
        for base, names in ((ablation_dir, {f"stl_{t}": f"stl_{t}" for t in TASKS} | {"hp": "fixed"}),
                            (out, None)):
            if base is None or not (base / f"seed{seed}").is_dir():
                continue
            for run in sorted((base / f"seed{seed}").iterdir()):
                if (run / "metrics.json").is_file() and (names is None or run.name in names):
                    results[seed][(names or {}).get(run.name, run.name)] = json.loads(
                        (run / "metrics.json").read_text())["metrics"]
    return results


def table(results: dict[int, dict[str, dict]], seeds: list[int]) -> tuple[str, list[dict[str, Any]]]:
    """Markdown: each method's mean primary metrics over seeds (± std), Delta_m of the means against the STL means,
    with the spread of the per-seed Delta_m, and the paired difference to ``fixed``: per seed, the run's Delta_m minus
    ``fixed``'s on the same seed (same initialisation and data order), mean ± std over seeds and the values."""
    def primary(seed: int, run: str, task: str) -> float:
        return float(results[seed][run][task][METRIC_SPECS[task].primary])

    def cell(values: list[float]) -> tuple[float, float]:
        return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0

    stl = {t: cell([primary(s, f"stl_{t}", t) for s in seeds])[0] for t in TASKS}
    order = ["fixed", *METHODS, *(f"labels_{p}" for p in PARTIAL)]
    rows = []
    for run in [r for r in order if all(r in results[s] for s in seeds)]:
        cells = {t: cell([primary(s, run, t) for s in seeds]) for t in TASKS}
        per_seed = [ablation.safe_delta_m({t: primary(s, run, t) for t in TASKS},
                                          {t: primary(s, f"stl_{t}", t) for t in TASKS}) for s in seeds]
        rows.append({"run": run, "values": {t: c[0] for t, c in cells.items()},
                     "std": {t: c[1] for t, c in cells.items()},
                     "delta_m": ablation.safe_delta_m({t: c[0] for t, c in cells.items()}, stl),
                     "delta_m_std": statistics.stdev(per_seed) if len(per_seed) > 1 else 0.0,
                     "delta_m_per_seed": per_seed})
    fixed = next((r["delta_m_per_seed"] for r in rows if r["run"] == "fixed"), None)
    for r in rows:
        if fixed is not None and r["run"] != "fixed":
            r["vs_fixed_per_seed"] = [a - b for a, b in zip(r["delta_m_per_seed"], fixed)]
    lines = ["| Run | " + " | ".join(ablation.COLUMNS[t] for t in TASKS) + " | Δm ↑ | Δm per seed | Δm − fixed, "
             "same seed |", "|---" * (len(TASKS) + 4) + "|",
             "| STL | " + " | ".join(f"{stl[t]:.2f}" for t in TASKS) + " | - | - | - |"]
    for r in rows:
        values = " | ".join(f"{r['values'][t]:.2f} ± {r['std'][t]:.2f}" for t in TASKS)
        paired = "-"
        if d := r.get("vs_fixed_per_seed"):
            spread = f" ± {statistics.stdev(d):.2f}" if len(d) > 1 else ""
            paired = f"{statistics.fmean(d):+.2f}{spread} ({', '.join(f'{v:+.2f}' for v in d)})"
        lines.append(f"| {r['run']} | {values} | {r['delta_m']:.2f} ± {r['delta_m_std']:.2f} | "
                     + ", ".join(f"{v:.2f}" for v in r["delta_m_per_seed"]) + f" | {paired} |")
    return "\n".join(lines), rows


def plot_weights(out: Path, seed: int) -> Path | None:
    """One figure, a panel per method: the logged weight/<task> (the multiplier of each task's loss, or of its gradient
    at the encoder's outputs for the gradient-level methods) over the steps of seed ``seed``'s run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    logs = {m: out / f"seed{seed}" / m / "metrics.jsonl" for m in METHODS}
    logs = {m: p for m, p in logs.items() if p.is_file()}
    if not logs:
        return None
    cols = 4
    rows = -(-len(logs) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.4 * cols, 2.5 * rows), dpi=110, squeeze=False)
    for ax, (method, log) in zip(axes.flat, logs.items()):
        records = [r for r in (json.loads(x) for x in log.read_text().splitlines()) if r["split"] == "train"]
        for t in TASKS:
            ax.plot([r["step"] for r in records], [r.get(f"weight/{t}", float("nan")) for r in records], label=t,
                    lw=1)
        ax.set_title(method, fontsize=9)
        ax.tick_params(labelsize=7)
        if method in ("nash_mtl", "cagrad", "famo"):
            ax.set_yscale("log")
    for ax in list(axes.flat)[len(logs):]:
        ax.axis("off")
    axes[0][0].legend(fontsize=6, ncol=2)
    fig.supxlabel("step", fontsize=8)
    fig.supylabel("weight (mean over each logged interval)", fontsize=8)
    fig.tight_layout()
    path = out / "weights.png"
    fig.savefig(path)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="runs/weighting")
    parser.add_argument("--ablation", help="a synthetic_ablation.py output directory whose stl_* and hp runs to reuse")
    parser.add_argument("--train-references", action="store_true", help="train the STL and fixed runs here")
    parser.add_argument("--no-partial", action="store_true", help="leave out the partial-label runs")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--jobs", type=int, default=1, help="trainings in parallel (one CPU thread each)")
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny model, 6 steps per run")
    parser.add_argument("--csv", help="also write one row per run (every metric) to this CSV")
    args = parser.parse_args(argv)
    setting = dict(ablation.SETTINGS["quick" if args.quick else "full"])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ablation_dir = Path(args.ablation) if args.ablation else None
    references = args.train_references or ablation_dir is None
    root = (ablation_dir or out) / "data" / "PASCALContext"
    if not (root / "ImageSets").is_dir():
        from taskprompter.data.synthetic import generate

        generate(root, format="pascal_context", num=setting["num_scenes"], size=tuple(setting["size"]), seed=1234)
    if ablation_dir is not None:
        done = json.loads((ablation_dir / "seed0" / "hp" / "metrics.json").read_text())["setting"]
        if done != json.loads(json.dumps(setting)):
            raise SystemExit(f"{ablation_dir} was trained with {done}, not this budget {setting}")
    records = out / "records"
    if not args.no_partial:
        write_records(root, records)
    jobs = [(setting, name, str(root), str(out), seed, str(records))
            for seed, name in run_list(args.seeds, references=references, partial=not args.no_partial)
            if not (out / f"seed{seed}" / name / "metrics.json").is_file()]
    t0 = time.time()
    for seed, name, metrics, seconds in ablation.map_trainings(_train_one, jobs, args.jobs):
        print(f"weighting: seed {seed} {name:16s} {seconds:6.0f} s  " + "  ".join(
            f"{t} {metrics[t][METRIC_SPECS[t].primary]:.2f}" for t in metrics), flush=True)
    results = collect(out, None if references else ablation_dir, args.seeds)
    text, rows = table(results, args.seeds)
    print(f"\nloss weighting on synthetic scenes ({setting['preset']}, {setting['steps']} iterations x batch "
          f"{setting['batch']}, seeds {args.seeds}):\n\n{text}")
    (out / "table.md").write_text(text + "\n")
    (out / "results.json").write_text(json.dumps({"setting": setting, "seeds": args.seeds, "rows": rows,
                                                  "seconds": time.time() - t0}, indent=1) + "\n")
    plot_weights(out, args.seeds[0])
    if args.csv:
        write_csv(Path(args.csv), out, args.seeds)
    return 0


def write_csv(path: Path, out: Path, seeds: list[int]) -> None:
    rows = []
    for seed in seeds:
        for run in sorted((out / f"seed{seed}").iterdir()):
            if not (run / "metrics.json").is_file():
                continue
            record = json.loads((run / "metrics.json").read_text())
            rows.append({"seed": seed, "run": record["run"], "loss_weighting": record["loss_weighting"],
                         "labelled_tasks": record["labelled_tasks"], "seconds": round(record["seconds"], 1),
                         **ablation.metric_columns(record["metrics"])})
    ablation.write_rows_csv(path, rows)


if __name__ == "__main__":
    sys.exit(main())
