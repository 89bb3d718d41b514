"""The one-shot GPU check (issue 16, part 4): on one CUDA GPU, in under 8 minutes, one CSV and a printed table.

    .venv/bin/python benchmarks/gpu_check.py [--csv benchmarks/results/gpu_check.csv] [--compile]
    PYTHONPATH=src python3 benchmarks/gpu_check.py ...        # where the package is not installed

In order, each part a set of rows of the CSV:
  tests   the tests marked ``cuda`` (and ``gpu``): pytest's summary line; the whole output beside the CSV (-tests.log)
  matmul  the dense 8192^2 matmul rate in fp32 (torch's default: TF32 off for matmuls) and in bf16
  train   ViT-B and ViT-L at 512x512, the 5 PASCAL tasks, batch 2 and 4, random weights: median step time (forward,
          loss, backward, fused Adam) and peak memory (``torch.cuda.max_memory_allocated`` during one steady step:
          weights, gradients, Adam moments, activations) of fp32 naive (the released structure), bf16 efficient and
          bf16 efficient + grad_checkpointing; with ``--compile`` also both bf16 variants under ``torch.compile``
          (compile time reported apart, in compile_s)
  infer   latency per batch of fp32 naive and bf16 efficient (and compiled, with ``--compile``)
  export  ONNX parity on CUDA where onnxruntime has a CUDA provider (the tiny preset); else a skipped row saying why
Ratios are against the fp32 naive row of the same kind, preset and batch. A variant that fails (out of memory, a
compile error) is a row ``failed: reason`` and the check goes on; what would start after ``--budget-s`` seconds is a
row ``skipped: time budget``. Without CUDA the script prints one line and exits with status 2.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import gc
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CSV = REPO / "benchmarks" / "results" / "gpu_check.csv"
PRESETS = ("taskprompter_vit_b_pascal", "taskprompter_vit_l_pascal")
COLUMNS = ["date", "gpu", "torch", "cuda", "kind", "preset", "img", "batch", "variant", "impl", "precision",
           "grad_ckpt", "compiled", "status", "step_ms", "step_ms_min", "step_ms_max", "img_per_s", "peak_mib",
           "compile_s", "speedup_vs_fp32_naive", "mem_vs_fp32_naive", "gmac_s", "detail"]
EXPORT_TOL = 1e-3  # max |onnx - eager| / max |eager| per output


@dataclass(frozen=True)
class Case:
    """One measured configuration."""

    kind: str  # train | infer
    preset: str
    batch: int
    impl: str  # naive | efficient
    precision: str  # fp32 | bf16
    grad_ckpt: bool = False
    compiled: bool = False

    @property
    def variant(self) -> str:
        return (f"{self.precision} {self.impl}" + (" +ckpt" if self.grad_ckpt else "")
                + (" +compile" if self.compiled else ""))

    def row(self) -> dict[str, Any]:
        return {"kind": self.kind, "preset": self.preset, "batch": self.batch, "variant": self.variant,
                "impl": self.impl, "precision": self.precision, "grad_ckpt": self.grad_ckpt, "compiled": self.compiled}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--csv", type=Path, default=DEFAULT_CSV, help="the CSV to write (replaced)")
    parser.add_argument("--compile", action="store_true", help="also the bf16 variants under torch.compile")
    parser.add_argument("--presets", nargs="+", default=list(PRESETS))
    parser.add_argument("--batches", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--steps", type=int, default=6, help="timed steps per variant (the median is reported)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first (cuDNN autotuning, compiling)")
    parser.add_argument("--budget-s", type=float, default=390.0,
                        help="seconds after which no further variant starts (the rest: skipped rows)")
    parser.add_argument("--tests-timeout-s", type=float, default=150.0)
    parser.add_argument("--skip-tests", action="store_true", help="leave out the tests marked cuda")
    parser.add_argument("--no-export", action="store_true", help="leave out the export parity")
    return parser.parse_args(argv)


def plan(presets: list[str] | tuple[str, ...], batches: list[int], *, compile: bool) -> list[Case]:
    """Every configuration to measure: the eager ones first, so that the compiled ones (minutes of compiling) are
    what a tight budget leaves out."""
    eager, compiled = [], []
    for preset in presets:
        for batch in batches:
            eager += [Case("train", preset, batch, "naive", "fp32"),
                      Case("train", preset, batch, "efficient", "bf16"),
                      Case("train", preset, batch, "efficient", "bf16", grad_ckpt=True),
                      Case("infer", preset, batch, "naive", "fp32"),
                      Case("infer", preset, batch, "efficient", "bf16")]
            if compile:
                compiled += [Case("train", preset, batch, "efficient", "bf16", compiled=True),
                             Case("train", preset, batch, "efficient", "bf16", grad_ckpt=True, compiled=True),
                             Case("infer", preset, batch, "efficient", "bf16", compiled=True)]
    return eager + compiled


# ------------------------------------------------------------------------------------------------- measuring


def one_line(err: BaseException) -> str:
    text = " ".join(str(err).split()) or "(no message)"
    return f"{type(err).__name__}: {text}"[:240]


def run_safely(fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """``fn()``'s measurements with status ok, or status "failed: reason" when it raises (out of memory, a compile
    error, anything): one row, and the check goes on."""
    try:
        return {"status": "ok", **fn()}
    except Exception as err:  # every failure is a row, never the end of the check
        return {"status": f"failed: {one_line(err)}"}
    finally:
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def build_runner(case: Case, device: str):
    """The bench's runner (its model, fused Adam, a fixed random batch, bf16 autocast for the efficient path) for
    ``case``; the model is built on the device directly (ViT-L's initialisation on the CPU takes seconds)."""
    from taskprompter import bench
    from taskprompter.model.taskprompter import TaskPrompter

    cfg = bench.BenchConfig(preset=case.preset, impl=case.impl, mode=case.kind, batch=case.batch,
                            grad_checkpointing=case.grad_ckpt, device=device,
                            amp="bf16" if case.precision == "bf16" else "none")
    torch.manual_seed(0)
    try:
        with torch.device(device):
            model = TaskPrompter(**bench.model_kwargs(cfg))
    except RuntimeError:  # an initialisation that needs the CPU: build there, then move
        torch.manual_seed(0)
        model = TaskPrompter(**bench.model_kwargs(cfg))
    return bench.Runner(cfg, model=model.to(device))


def measure_case(case: Case, *, device: str = "cuda", steps: int = 6, warmup: int = 2) -> dict[str, Any]:
    """Median / min / max step time (ms), images/s, the peak memory of one steady step (CUDA) and, compiled, the
    compile time (the first step's excess over the median)."""
    from taskprompter.bench import synchronize

    runner = build_runner(case, device)
    out: dict[str, Any] = {"img": "x".join(map(str, runner.model.img_size))}
    if case.compiled:
        runner.model = torch.compile(runner.model)  # a failure surfaces at the first step: a "failed" row
    timed: list[float] = []
    for i in range(max(warmup, 1) + steps):
        synchronize(device)
        t0 = time.perf_counter()
        runner.step()
        synchronize(device)
        dt = time.perf_counter() - t0
        if i == 0:
            first = dt
        if i >= max(warmup, 1):
            timed.append(dt)
    median = statistics.median(timed)
    out.update(step_ms=1e3 * median, step_ms_min=1e3 * min(timed), step_ms_max=1e3 * max(timed),
               img_per_s=case.batch / median)
    if case.compiled:
        out["compile_s"] = max(first - median, 0.0)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
        runner.step()
        torch.cuda.synchronize()
        out["peak_mib"] = torch.cuda.max_memory_allocated() / 2 ** 20
    return out


def matmul_rows(device: str = "cuda", n: int = 8192) -> list[dict[str, Any]]:
    from taskprompter.bench import matmul_rate

    rows = []
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        row = {"kind": "matmul", "precision": name, "variant": f"{name} mm {n}x{n}"}
        row |= run_safely(lambda dtype=dtype: {"gmac_s": matmul_rate(device, dtype, n=n) / 1e9})
        if name == "fp32":
            row["detail"] = f"allow_tf32={torch.backends.cuda.matmul.allow_tf32}"
        rows.append(row)
    return rows


def summarize_pytest(returncode: int, output: str) -> str:
    """The tests' status: ok, or "failed: <pytest's summary line>"."""
    lines = [x.strip(" =") for x in output.strip().splitlines() if x.strip(" =")]
    summary = lines[-1] if lines else "(no output)"
    if returncode == 0:
        return "ok"
    if returncode == 5:
        return "failed: no test marked cuda or gpu was collected"
    return f"failed: {summary}"


def run_tests(log: Path, timeout: float) -> dict[str, Any]:
    """The tests marked cuda or gpu, in a subprocess (the package's source on its path); the output goes to ``log``."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in [str(REPO / "src"), os.environ.get("PYTHONPATH")]
                                                       if p)}
    cmd = [sys.executable, "-m", "pytest", "-q", "-m", "cuda or gpu", "-p", "no:cacheprovider",
           "--continue-on-collection-errors", str(REPO / "tests")]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO, env=env)
    except subprocess.TimeoutExpired as err:
        log.write_text(f"{err.stdout or ''}\n{err.stderr or ''}")
        return {"kind": "tests", "status": f"failed: timed out after {timeout:.0f} s", "detail": " ".join(cmd[2:])}
    log.write_text(proc.stdout + "\n" + proc.stderr)
    lines = [x.strip(" =") for x in proc.stdout.strip().splitlines() if x.strip(" =")]
    return {"kind": "tests", "status": summarize_pytest(proc.returncode, proc.stdout),
            "detail": f"{lines[-1] if lines else ''} ({time.perf_counter() - t0:.0f} s; {log.name})"}


def export_parity(device: str = "cuda") -> dict[str, Any]:
    """The tiny preset exported to ONNX and run by onnxruntime's CUDA provider against the eager model on the GPU
    (fp32); a skipped row where onnxruntime has no CUDA provider (``taskprompter export --check`` runs on the CPU)."""
    row: dict[str, Any] = {"kind": "export", "preset": "taskprompter_tiny", "precision": "fp32", "variant": "onnx"}
    try:
        import onnxruntime as ort
    except ImportError:
        return row | {"status": "skipped: onnxruntime is not installed"}
    providers = ort.get_available_providers()
    if "CUDAExecutionProvider" not in providers:
        return row | {"status": f"skipped: onnxruntime has no CUDA provider ({', '.join(providers)}); "
                                "`taskprompter export --check` checks the file on the CPU"}

    def check() -> dict[str, Any]:
        from taskprompter.bench import relative_error
        from taskprompter.export import export_onnx, output_tasks
        from taskprompter.model.build import build_model

        torch.manual_seed(0)
        model = build_model("taskprompter_tiny").eval()
        with tempfile.TemporaryDirectory() as tmp:
            path = export_onnx(model, Path(tmp) / "tiny.onnx")
            session = ort.InferenceSession(str(path), providers=["CUDAExecutionProvider"])
            x = torch.randn(2, 3, *model.img_size, generator=torch.Generator().manual_seed(1))
            outs = session.run(None, {"images": x.numpy()})
        with torch.no_grad():
            ref = model.to(device)(x.to(device))
        err = max(relative_error(torch.from_numpy(o), ref[t].float().cpu()) for o, t in zip(outs, output_tasks(model)))
        if not err <= EXPORT_TOL:
            raise AssertionError(f"ONNX on CUDA differs from eager by {err:.2e} > {EXPORT_TOL:g}")
        return {"detail": f"max relative error {err:.2e} (CUDAExecutionProvider, batch 2)"}

    return row | run_safely(check)


# ------------------------------------------------------------------------------------------------- rows


def add_ratios(rows: list[dict[str, Any]]) -> None:
    """speedup_vs_fp32_naive and mem_vs_fp32_naive against the fp32 naive row of the same kind, preset and batch."""
    base = {(r["kind"], r["preset"], r["batch"]): r for r in rows
            if r.get("impl") == "naive" and r.get("precision") == "fp32" and r.get("status") == "ok"}
    for r in rows:
        b = base.get((r.get("kind"), r.get("preset"), r.get("batch")))
        if b is None or r.get("status") != "ok":
            continue
        r["speedup_vs_fp32_naive"] = b["step_ms"] / r["step_ms"]
        if r.get("peak_mib") and b.get("peak_mib"):
            r["mem_vs_fp32_naive"] = r["peak_mib"] / b["peak_mib"]


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def write_csv(rows: list[dict[str, Any]], path: Path, meta: dict[str, Any]) -> Path:
    """One CSV (replaced): ``COLUMNS``, the machine's ``meta`` on every row."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for r in rows:
            writer.writerow({k: _cell(v) for k, v in ({**meta, **r}).items()})
    return path


def format_table(rows: list[dict[str, Any]]) -> str:
    head = (f"{'kind':6s} {'preset':28s} {'B':>2s} {'variant':26s} {'ms':>9s} {'img/s':>8s} {'peak MiB':>9s} "
            f"{'x naive':>7s} {'mem':>5s}  status / detail")
    lines = [head, "-" * len(head)]
    for r in rows:
        def num(k: str, f: str, r: dict[str, Any] = r) -> str:
            return format(r[k], f) if isinstance(r.get(k), (int, float)) else ""

        note = r.get("status", "")
        extra = [r[k] for k in ("detail",) if r.get(k)]
        if r.get("compile_s") is not None:
            extra.append(f"compile {r['compile_s']:.1f} s")
        if r.get("gmac_s") is not None:
            extra.append(f"{r['gmac_s']:.0f} GMAC/s")
        lines.append(f"{r.get('kind', ''):6s} {r.get('preset', ''):28s} {str(r.get('batch', '')):>2s} "
                     f"{r.get('variant', ''):26s} {num('step_ms', '9.1f'):>9s} {num('img_per_s', '8.2f'):>8s} "
                     f"{num('peak_mib', '9.0f'):>9s} {num('speedup_vs_fp32_naive', '7.2f'):>7s} "
                     f"{num('mem_vs_fp32_naive', '5.2f'):>5s}  {note}" + (f"; {'; '.join(extra)}" if extra else ""))
    return "\n".join(lines)


def machine_meta() -> dict[str, Any]:
    return {"date": datetime.date.today().isoformat(), "gpu": torch.cuda.get_device_name(0), "torch": torch.__version__,
            "cuda": torch.version.cuda}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not torch.cuda.is_available():
        print(f"gpu_check: no CUDA device (torch {torch.__version__}, CUDA build {torch.version.cuda}): run it on a "
              "machine with a CUDA GPU", file=sys.stderr)
        return 2
    try:
        import taskprompter  # noqa: F401
    except ImportError:  # a checkout without an install: the source tree
        sys.path.insert(0, str(REPO / "src"))
    t_start = time.perf_counter()
    meta = machine_meta()
    print(f"gpu_check: {meta['gpu']}, torch {meta['torch']}, CUDA {meta['cuda']}", flush=True)
    rows: list[dict[str, Any]] = []
    args.csv.parent.mkdir(parents=True, exist_ok=True)
    if not args.skip_tests:
        rows.append(run_tests(args.csv.with_name(args.csv.stem + "-tests.log"), args.tests_timeout_s))
        print(format_table(rows[-1:]).splitlines()[-1], flush=True)
    rows += matmul_rows()
    for case in plan(args.presets, args.batches, compile=args.compile):
        row = case.row()
        if time.perf_counter() - t_start > args.budget_s:
            rows.append(row | {"status": f"skipped: time budget ({args.budget_s:.0f} s) spent"})
            continue
        row |= run_safely(lambda case=case: measure_case(case, steps=args.steps, warmup=args.warmup))
        rows.append(row)
        print(format_table([row]).splitlines()[-1], flush=True)
    if not args.no_export:
        rows.append(export_parity())
    add_ratios(rows)
    path = write_csv(rows, args.csv, meta)
    print()
    print(format_table(rows))
    print(f"\nwrote {path} ({len(rows)} rows) in {time.perf_counter() - t_start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
