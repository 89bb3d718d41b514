"""benchmarks/gpu_check.py without a GPU: it refuses in one line, plans every configuration, turns failures into
rows, measures a tiny configuration on the CPU, and writes the CSV and the table."""

from __future__ import annotations

import csv
import importlib.util
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"


@pytest.fixture(scope="module")
def gc_mod():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # its dataclasses resolve their annotations there
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("gpu_check", None)


def test_refuses_without_cuda_in_one_line(gc_mod, monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gc_mod.main(["--csv", str(tmp_path / "out.csv")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no CUDA device" in err and "gpu_check" in err
    assert not (tmp_path / "out.csv").exists()


def test_arguments(gc_mod):
    args = gc_mod.parse_args([])
    assert args.csv == gc_mod.REPO / "benchmarks" / "results" / "gpu_check.csv"
    assert (args.compile, args.presets, args.batches) == (False, list(gc_mod.PRESETS), [2, 4])
    assert gc_mod.PRESETS == ("taskprompter_vit_b_pascal", "taskprompter_vit_l_pascal")
    args = gc_mod.parse_args(["--compile", "--batches", "2", "--csv", "x.csv", "--budget-s", "60"])
    assert (args.compile, args.batches, args.csv, args.budget_s) == (True, [2], Path("x.csv"), 60.0)


def test_plan_covers_every_variant_eager_first(gc_mod):
    eager = gc_mod.plan(gc_mod.PRESETS, [2, 4], compile=False)
    assert len(eager) == len(set(eager)) == 2 * 2 * 5
    train = {c.variant for c in eager if c.kind == "train"}
    assert train == {"fp32 naive", "bf16 efficient", "bf16 efficient +ckpt"}
    assert {c.variant for c in eager if c.kind == "infer"} == {"fp32 naive", "bf16 efficient"}
    assert all((c.precision == "fp32") == (c.impl == "naive") for c in eager)
    both = gc_mod.plan(gc_mod.PRESETS, [2, 4], compile=True)
    assert both[:len(eager)] == eager and len(both) == 2 * 2 * 8
    assert all(c.compiled and c.precision == "bf16" for c in both[len(eager):])


def test_a_failure_is_a_row(gc_mod):
    def oom():
        raise torch.cuda.OutOfMemoryError("CUDA out of memory.\nTried to allocate 2.00 GiB")

    assert gc_mod.run_safely(oom) == {"status": "failed: OutOfMemoryError: CUDA out of memory. Tried to allocate "
                                                "2.00 GiB"}
    assert gc_mod.run_safely(lambda: {"step_ms": 1.0}) == {"status": "ok", "step_ms": 1.0}


def test_measures_a_tiny_case_on_the_cpu_and_reports_a_failed_compile(gc_mod, monkeypatch):
    case = gc_mod.Case("train", "taskprompter_tiny", 1, "efficient", "bf16")
    row = case.row() | gc_mod.run_safely(lambda: gc_mod.measure_case(case, device="cpu", steps=2, warmup=1))
    assert row["status"] == "ok" and row["img"] == "64x64" and row["variant"] == "bf16 efficient"
    assert 0 < row["step_ms_min"] <= row["step_ms"] <= row["step_ms_max"]
    assert row["img_per_s"] == pytest.approx(1e3 / row["step_ms"])

    def no_compiler(model, *args, **kwargs):
        raise RuntimeError("no C++ compiler found")

    monkeypatch.setattr(torch, "compile", no_compiler)
    compiled = gc_mod.Case("infer", "taskprompter_tiny", 1, "efficient", "bf16", compiled=True)
    row = gc_mod.run_safely(lambda: gc_mod.measure_case(compiled, device="cpu", steps=1, warmup=1))
    assert row == {"status": "failed: RuntimeError: no C++ compiler found"}


def test_pytest_summary(gc_mod):
    assert gc_mod.summarize_pytest(0, "..\n3 passed in 2.0s\n") == "ok"
    summary = gc_mod.summarize_pytest(1, "F.\n==== 1 failed, 1 passed in 2.0s ====\n")
    assert summary == "failed: 1 failed, 1 passed in 2.0s"
    assert gc_mod.summarize_pytest(5, "no tests ran") == "failed: no test marked cuda or gpu was collected"


def test_export_is_skipped_with_a_reason_without_a_cuda_provider(gc_mod, monkeypatch):
    ort = pytest.importorskip("onnxruntime")
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    row = gc_mod.export_parity()
    assert row["kind"] == "export" and row["status"].startswith("skipped: onnxruntime has no CUDA provider")


def test_rows_ratios_csv_and_table(gc_mod, tmp_path):
    rows = [{"kind": "tests", "status": "ok", "detail": "4 passed in 9.1s"},
            {"kind": "matmul", "precision": "bf16", "variant": "bf16 mm 8192x8192", "status": "ok", "gmac_s": 3.9e5}]
    for case, ms, mib in ((gc_mod.Case("train", "p", 2, "naive", "fp32"), 400.0, 8000.0),
                          (gc_mod.Case("train", "p", 2, "efficient", "bf16"), 100.0, 2000.0),
                          (gc_mod.Case("train", "p", 4, "efficient", "bf16"), 180.0, 3000.0)):  # no naive at B=4
        rows.append(case.row() | {"status": "ok", "img": "512x512", "step_ms": ms, "img_per_s": 2e3 / ms,
                                  "peak_mib": mib})
    rows.append(gc_mod.Case("train", "p", 4, "naive", "fp32").row() | {"status": "failed: OutOfMemoryError: x"})
    rows.append(gc_mod.Case("infer", "p", 2, "efficient", "bf16", compiled=True).row()
                | {"status": "skipped: time budget (390 s) spent"})
    gc_mod.add_ratios(rows)
    assert rows[3]["speedup_vs_fp32_naive"] == pytest.approx(4.0) and rows[3]["mem_vs_fp32_naive"] == 0.25
    assert rows[2]["speedup_vs_fp32_naive"] == 1.0 and "speedup_vs_fp32_naive" not in rows[4]
    meta = {"date": "2026-12-01", "gpu": "Test GPU", "torch": "2.x", "cuda": "13.0"}
    path = gc_mod.write_csv(rows, tmp_path / "sub" / "gpu.csv", meta)
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        assert reader.fieldnames == gc_mod.COLUMNS
        read = list(reader)
    assert len(read) == len(rows) and all(r["gpu"] == "Test GPU" for r in read)
    assert read[3]["variant"] == "bf16 efficient" and float(read[3]["step_ms"]) == 100.0
    assert read[3]["speedup_vs_fp32_naive"] == "4" and read[5]["status"] == "failed: OutOfMemoryError: x"
    table = gc_mod.format_table(rows)
    assert len(table.splitlines()) == len(rows) + 2
    assert "skipped: time budget" in table and "4.00" in table and "390000 GMAC/s" in table


@pytest.mark.parametrize("budget, measured", [(1e9, True), (0.0, False)])
def test_the_whole_run_with_stubbed_measurements(gc_mod, monkeypatch, tmp_path, capsys, budget, measured):
    """main() on a pretend GPU: every planned row in one CSV, in order; past the budget, skipped rows."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Pretend GPU")
    monkeypatch.setattr(gc_mod.gc, "collect", lambda: 0)  # 0.15 s a call here, 34 calls
    monkeypatch.setattr(gc_mod, "run_tests", lambda log, timeout: {"kind": "tests", "status": "ok"})
    monkeypatch.setattr(gc_mod, "matmul_rows", lambda: [{"kind": "matmul", "status": "ok", "gmac_s": 1.0}])
    monkeypatch.setattr(gc_mod, "export_parity", lambda: {"kind": "export", "status": "skipped: test"})
    monkeypatch.setattr(gc_mod, "measure_case", lambda case, **kw: {
        "img": "512x512", "step_ms": 300.0 if case.impl == "naive" else 100.0, "peak_mib": 10.0})
    assert gc_mod.main(["--csv", str(tmp_path / "g.csv"), "--compile", "--budget-s", str(budget)]) == 0
    with open(tmp_path / "g.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    cases = gc_mod.plan(gc_mod.PRESETS, [2, 4], compile=True)
    assert [r["kind"] for r in rows] == ["tests", "matmul", *[c.kind for c in cases], "export"]
    assert [r["variant"] for r in rows[2:-1]] == [c.variant for c in cases]
    statuses = {r["status"] for r in rows[2:-1]}
    assert statuses == ({"ok"} if measured else {"skipped: time budget (0 s) spent"})
    if measured:
        assert {r["speedup_vs_fp32_naive"] for r in rows[2:-1] if r["impl"] == "efficient"} == {"3"}
    assert f"wrote {tmp_path / 'g.csv'}" in capsys.readouterr().out
