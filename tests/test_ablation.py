"""benchmarks/synthetic_ablation.py --quick: the whole Table 1 pipeline (synthetic scenes -> 10 trainings -> every
metric -> the table) on the tiny model. The table must have every row with finite metrics, and its Delta_m must be
``delta_m`` of its own rows against its own STL row."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest

from taskprompter.metrics import METRIC_SPECS, delta_m

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "synthetic_ablation.py"
TASKS = ["semseg", "human_parts", "sal", "normals", "edge"]
ROWS = ["STL Model", "TaskPrompter Baseline", "+SPrompt", "+SPrompt + CPrompt", "+SPrompt + CPrompt + RW",
        "+SPrompt + CPrompt + RW + HP"]


def load_script():
    spec = importlib.util.spec_from_file_location("synthetic_ablation", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def parse_table(text: str) -> dict[str, list[str]]:
    """{row name: [cell, ...]} of the printed markdown table."""
    rows = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| ") and cells[0] in ROWS:
            rows[cells[0]] = cells[1:]
    return rows


def number(cell: str) -> float:
    """The value of a cell such as "76.46 (↑ 1.41)" or "12.3 ± 0.4"."""
    return float(cell.split()[0])


@pytest.mark.slow
def test_quick_ablation_prints_table1_with_consistent_delta_m(tmp_path, capsys):
    ablation = load_script()
    assert ablation.main(["--out", str(tmp_path), "--quick"]) == 0
    printed = capsys.readouterr().out
    result = json.loads((tmp_path / "results.json").read_text())

    # every run was trained and evaluated with every metric of its tasks
    run_dirs = sorted(p.parent.name for p in (tmp_path / "seed0").glob("*/metrics.json"))
    assert run_dirs == sorted([f"stl_{t}" for t in TASKS] + ["baseline", "sprompt", "sprompt_cprompt", "rw", "hp"])
    hp = json.loads((tmp_path / "seed0" / "hp" / "metrics.json").read_text())["metrics"]
    assert set(hp) == set(TASKS)
    assert {"mIoU", "maxF", "mean", "odsF"} <= {k for m in hp.values() for k in m}

    rows = result["rows"]
    assert [r["name"] for r in rows] == ROWS
    for r in rows:
        assert all(math.isfinite(r["values"][t]) for t in TASKS), r
    stl = rows[0]["values"]
    for r in rows[1:]:  # Delta_m against our own STL row, exactly
        assert r["delta_m"] == pytest.approx(delta_m(r["values"], stl), abs=1e-9)
    assert rows[0]["delta_m"] is None
    # the STL row holds each task's single-task run
    runs = result["runs"]["0"]
    assert stl == {t: runs[f"stl_{t}"][t][METRIC_SPECS[t].primary] for t in TASKS}
    assert rows[-1]["values"] == {t: runs["hp"][t][METRIC_SPECS[t].primary] for t in TASKS}

    # the printed table shows those numbers (2 decimals), in the paper's layout
    table = parse_table(printed)
    assert list(table) == ROWS
    for r in rows:
        cells = table[r["name"]]
        assert [number(c) for c in cells[:5]] == [round(r["values"][t], 2) for t in TASKS]
        if r["delta_m"] is None:
            assert cells[5] == "-"
        else:
            assert number(cells[5]) == round(r["delta_m"], 2)
    assert (tmp_path / "table.md").read_text().strip() in printed

    # a second run resumes from the finished runs and gives the same table
    assert ablation.main(["--out", str(tmp_path), "--quick"]) == 0
    assert json.loads((tmp_path / "results.json").read_text())["rows"] == rows


def _row(row: str, values: list[float], std: list[float], dm: float | None, dm_std: float | None) -> dict:
    return {"row": row, "name": row, "values": dict(zip(TASKS, values)), "std": dict(zip(TASKS, std)),
            "delta_m": dm, "delta_m_std": dm_std}


def test_against_table_counts_cells_within_the_other_runs_seed_spread():
    ablation = load_script()
    mine = [_row("stl", [10, 20, 30, 40, 50], [0] * 5, None, None),
            _row("hp", [11, 20, 30, 40, 50], [0] * 5, 2.0, 0.0)]
    other = [_row("stl", [10.5, 20, 29, 40, 47], [1, 1, 0.4, 1, 1], None, None),
             _row("hp", [10, 20.5, 30, 40, 50], [0.5, 1, 1, 0, 1], 1.0, 0.4)]
    text = ablation.format_against(mine, other, label="bf16", other_label="fp32")
    lines = {line.split(" | ")[0][2:]: line for line in text.splitlines() if line.startswith("| ")}
    # stl: |diff|/sigma = 0.5, 0, 2.5, 0, 3 -> 3 within 1 sigma, 3 within 2 sigma, of 5 cells (no Delta_m)
    assert "30.00 − 29.00 = +1.00 (2.5σ)" in lines["stl"]
    assert lines["stl"].endswith("| 3 / 3 of 5 |")
    # hp: 2.0, 0.5, 0, 0 (no difference, no spread), 0, Delta_m 2.5 -> 4 within 1 sigma, 5 within 2, of 6
    assert "11.00 − 10.00 = +1.00 (2.0σ)" in lines["hp"]
    assert "2.00 − 1.00 = +1.00 (2.5σ)" in lines["hp"]
    assert lines["hp"].endswith("| 4 / 5 of 6 |")
    # a difference where the other side has no spread is infinitely many sigmas away
    other[1]["std"]["normals"] = 0.0
    mine[1]["values"]["normals"] = 41.0
    text = ablation.format_against(mine, other, label="bf16", other_label="fp32")
    assert "41.00 − 40.00 = +1.00 (infσ)" in text


def test_a_directory_holds_one_precision(tmp_path):
    ablation = load_script()
    run = tmp_path / "seed0" / "stl_semseg"
    run.mkdir(parents=True)
    (tmp_path / "data" / "PASCALContext" / "ImageSets").mkdir(parents=True)
    (run / "metrics.json").write_text(json.dumps({"metrics": {}, "amp": "off"}))
    with pytest.raises(SystemExit, match="train.amp=off, not bf16"):
        ablation.train_all(ablation.SETTINGS["quick"], tmp_path, [0], amp="bf16")


def load_comparison():
    path = SCRIPT.parent / "weighting_comparison.py"
    spec = importlib.util.spec_from_file_location("weighting_comparison", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_comparison_table_pairs_each_method_with_fixed_on_the_same_seed():
    """benchmarks/weighting_comparison.py's table on hand-made metrics: Delta_m of the means, the per-seed Delta_m,
    and the paired difference to ``fixed`` (a seed's Delta_m minus fixed's on that seed)."""
    comparison = load_comparison()
    stl = {"semseg": 10.0, "human_parts": 20.0, "sal": 50.0, "normals": 40.0, "edge": 30.0}

    def metrics(scale: float) -> dict:  # every higher-is-better metric times scale, normals error divided by it
        return {t: {METRIC_SPECS[t].primary: v / scale if t == "normals" else v * scale} for t, v in stl.items()}

    results = {seed: {**{f"stl_{t}": metrics(1.0) for t in TASKS}, "fixed": metrics(1.1 + 0.1 * seed),
                      "famo": metrics(1.2 + 0.2 * seed)} for seed in (0, 1)}
    text, rows = comparison.table(results, [0, 1])
    by_run = {r["run"]: r for r in rows}
    assert list(by_run) == ["fixed", "famo"]  # methods without runs are left out
    ref = {s: {run: delta_m({t: m[METRIC_SPECS[t].primary] for t, m in results[s][run].items()}, stl)
               for run in ("fixed", "famo")} for s in (0, 1)}
    assert by_run["famo"]["delta_m_per_seed"] == pytest.approx([ref[0]["famo"], ref[1]["famo"]])
    paired = [ref[s]["famo"] - ref[s]["fixed"] for s in (0, 1)]
    assert by_run["famo"]["vs_fixed_per_seed"] == pytest.approx(paired)
    assert paired[1] > paired[0] > 0
    famo_line = next(line for line in text.splitlines() if line.startswith("| famo |"))
    mean, spread = (paired[0] + paired[1]) / 2, abs(paired[1] - paired[0]) / math.sqrt(2)
    assert famo_line.endswith(f"| {mean:+.2f} ± {spread:.2f} ({paired[0]:+.2f}, {paired[1]:+.2f}) |")
    assert next(line for line in text.splitlines() if line.startswith("| fixed |")).endswith("| - |")
