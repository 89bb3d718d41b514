"""`taskprompter bench`: the efficient path against the naive reference path (the released structure), measured in
the same run, interleaved, with warm-up and repeats.

    taskprompter bench --preset taskprompter_bench_c --batch 8                 # config C of docs/performance.md
    taskprompter bench --preset taskprompter_bench_a --batch 2 --grad-ckpt     # config A, + activation checkpointing
    taskprompter bench --preset taskprompter_bench_c --sweep tasks             # cost vs number of tasks (Table 8)
    taskprompter bench --preset taskprompter_bench_c --sweep tokens --sizes 64 128 192 256
    taskprompter bench --preset taskprompter_vit_b_pascal --device cuda --amp bf16 --batch 4

Per configuration (path x mode x tasks x size): median seconds per step over the repeats and their spread,
images/s, latency (one batch), peak memory, MACs per image (``profile_model``) and the achieved multiply-accumulate
rate as a share of the dense fp32 matmul rate measured in the same process. A training step is forward + loss (sum of
the outputs' means) + backward + Adam (fused, as the trainer's default); its MACs are counted as 3x the forward's.
Peak memory on the CPU is measured
in a fresh subprocess per configuration: the resident set's high-water mark during one steady-state step (the kernel's
VmHWM, reset through /proc/self/clear_refs, with glibc returning large blocks to the system) -- reported as the whole
process's peak and as the increase over the state held between steps (weights, Adam moments). On CUDA:
``torch.cuda.max_memory_allocated``. Before timing, both paths get the same weights and must agree (outputs, and the
gradients of one training step); otherwise the verb exits with status 3.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch

from .errors import ConfigError

PARITY_TOL = 1e-3  # max |efficient - naive| / max |naive|, per output and per gradient tensor
GRAD_FLOOR = 1e-2
# Paper Table 8 (ViT-L, PASCAL-Context, 512x512): parameters (M) and "FLOPs" (= MACs, G) for 1..5 tasks.
PAPER_TABLE8 = {1: (364, 389), 2: (373, 416), 3: (383, 443), 4: (392, 470), 5: (401, 497)}


@dataclass(frozen=True)
class BenchConfig:
    preset: str
    impl: str = "efficient"  # efficient | naive
    mode: str = "train"  # train | infer
    batch: int = 2
    img_size: tuple[int, int] | None = None  # None: the preset's
    tasks: int | None = None  # the preset's first N tasks (released order); None: all
    grad_checkpointing: bool = False
    recompute: str = "auto"  # the efficient path's selective_recompute: auto | on | off
    device: str = "cpu"
    amp: str = "none"  # none | bf16 (CUDA; applied to the efficient path only: naive stays the fp32 reference)

    @property
    def label(self) -> str:
        return f"{variant_name(self.impl, self.grad_checkpointing, self.recompute)}/{self.mode}"


def variant_name(impl: str, grad_ckpt: bool, recompute: str) -> str:
    """efficient, efficient+ckpt, efficient+rc-off, naive, ..."""
    return impl + ("+ckpt" if grad_ckpt else "") + (f"+rc-{recompute}" if impl == "efficient" and
                                                    recompute != "auto" else "")


def model_kwargs(cfg: BenchConfig) -> dict[str, Any]:
    """The TaskPrompter keyword arguments of a configuration."""
    from .model.build import preset_kwargs

    kwargs = preset_kwargs(cfg.preset, img_size=cfg.img_size, attention_impl=cfg.impl,
                           grad_checkpointing=cfg.grad_checkpointing, selective_recompute=cfg.recompute)
    if cfg.tasks is not None:
        names = list(kwargs["tasks"])
        if not 1 <= cfg.tasks <= len(names):
            raise ConfigError(f"--tasks {cfg.tasks}: preset {cfg.preset} has {len(names)} tasks ({names})")
        kwargs["tasks"] = {t: kwargs["tasks"][t] for t in names[:cfg.tasks]}
    return kwargs


def build(cfg: BenchConfig, seed: int = 0) -> torch.nn.Module:
    from .model.taskprompter import TaskPrompter

    torch.manual_seed(seed)
    try:
        return TaskPrompter(**model_kwargs(cfg)).to(cfg.device)
    except ValueError as err:  # e.g. an image size the channel heads cannot split
        raise ConfigError(f"{cfg.preset} at {cfg.img_size}: {err}") from err


def macs_per_image(cfg: BenchConfig) -> tuple[int, int]:
    """(forward MACs per image, parameters) of the released structure, counted on the meta device."""
    from .model.profile import profile_model
    from .model.taskprompter import TaskPrompter

    kwargs = model_kwargs(replace(cfg, impl="naive", grad_checkpointing=False))
    result = profile_model(lambda: TaskPrompter(**kwargs))
    return result["macs"], result["params"]


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def matmul_rate(device: str = "cpu", dtype: torch.dtype = torch.float32, n: int = 2048, repeats: int = 5) -> float:
    """The dense matmul rate (multiply-accumulates per second) of one (n x n) @ (n x n) torch.mm: best of repeats."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(2):
        a @ b
    best = math.inf
    for _ in range(repeats):
        synchronize(device)
        t0 = time.perf_counter()
        a @ b
        synchronize(device)
        best = min(best, time.perf_counter() - t0)
    return n ** 3 / best


def bench_loss(outputs: dict[str, torch.Tensor]) -> torch.Tensor:
    return sum(o.float().mean() for o in outputs.values())


class Runner:
    """One model, its optimiser and a fixed input batch; ``step()`` runs one training step or one inference."""

    def __init__(self, cfg: BenchConfig, model: torch.nn.Module | None = None, seed: int = 0) -> None:
        self.cfg = cfg
        self.model = model if model is not None else build(cfg, seed)
        gen = torch.Generator().manual_seed(seed + 1)
        self.images = torch.randn(cfg.batch, 3, *self.model.img_size, generator=gen).to(cfg.device)
        # tiny lr: weights stay sane; fused, as the trainer's default (the same optimiser for both paths)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=1e-6, fused=True)
        self.autocast = cfg.amp == "bf16" and cfg.impl == "efficient"

    def step(self) -> None:
        model = self.model
        amp = torch.autocast(self.cfg.device.split(":")[0], dtype=torch.bfloat16, enabled=self.autocast)
        if self.cfg.mode == "train":
            model.train()
            self.optimizer.zero_grad(set_to_none=True)
            with amp:
                loss = bench_loss(model(self.images))
            loss.backward()
            self.optimizer.step()
        else:
            model.eval()
            with torch.inference_mode(), amp:
                model(self.images)


# ------------------------------------------------------------------------------------------------- parity


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b| (0 when both are zero)."""
    a, b = a.detach().double(), b.detach().double()
    scale = b.abs().max().item()
    diff = (a - b).abs().max().item()
    return 0.0 if diff == 0 else diff / max(scale, 1e-30)


def check_parity(cfg: BenchConfig, seed: int = 0) -> dict[str, float]:
    """Both paths with the same weights on the same images: the largest relative error over the eval outputs, over
    the train-mode outputs and over the gradients of ``bench_loss`` (fp32, dropout paths seeded alike)."""
    eff = build(replace(cfg, impl="efficient", grad_checkpointing=False, amp="none"), seed)
    naive = build(replace(cfg, impl="naive", grad_checkpointing=False, amp="none"), seed)
    naive.load_state_dict(eff.state_dict())
    gen = torch.Generator().manual_seed(seed + 2)
    images = torch.randn(min(cfg.batch, 2), 3, *eff.img_size, generator=gen).to(cfg.device)
    errors = {}
    with torch.no_grad():
        a, b = eff.eval()(images), naive.eval()(images)
    errors["eval_outputs"] = max(relative_error(a[t], b[t]) for t in b)
    outs = {}
    for name, model in (("efficient", eff), ("naive", naive)):
        torch.manual_seed(seed + 3)  # drop-path draws the same masks in both
        outs[name] = model.train()(images)
        bench_loss(outs[name]).backward()
    errors["train_outputs"] = max(relative_error(outs["efficient"][t], outs["naive"][t]) for t in outs["naive"])
    grads_n = dict(naive.named_parameters())
    pairs = [(p.grad, grads_n[n].grad) for n, p in eff.named_parameters()
             if p.grad is not None and grads_n[n].grad is not None]
    # gradients that are zero in exact arithmetic (a conv bias before BatchNorm) hold only rounding noise: each
    # tensor is compared at least at GRAD_FLOOR x the largest gradient of the model
    floor = GRAD_FLOOR * max(b.abs().max().item() for _, b in pairs)
    errors["gradients"] = max((a - b).abs().max().item() / max(b.abs().max().item(), floor, 1e-30) for a, b in pairs)
    missing = [n for n, p in eff.named_parameters() if (p.grad is None) != (grads_n[n].grad is None)]
    if missing:
        errors["gradients"] = math.inf
    return errors


# ------------------------------------------------------------------------------------------------- timing


def time_interleaved(runners: list[Runner], *, repeats: int, warmup: int, min_time: float) -> list[list[float]]:
    """Seconds per step of every runner, ``repeats`` rounds; in each round every runner runs in turn (so slow drifts
    of the machine hit all alike). Iterations per round are chosen from the warm-up so a round lasts ~min_time."""
    iters = []
    for r in runners:
        dt = 0.0
        for _ in range(max(warmup, 1)):
            synchronize(r.cfg.device)
            t0 = time.perf_counter()
            r.step()
            synchronize(r.cfg.device)
            dt = time.perf_counter() - t0
        iters.append(max(1, math.ceil(min_time / max(dt, 1e-6))))
    times: list[list[float]] = [[] for _ in runners]
    for _ in range(repeats):
        for i, r in enumerate(runners):
            synchronize(r.cfg.device)
            t0 = time.perf_counter()
            for _ in range(iters[i]):
                r.step()
            synchronize(r.cfg.device)
            times[i].append((time.perf_counter() - t0) / iters[i])
    return times


# ------------------------------------------------------------------------------------------------- memory


def _status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def memory_child(spec: dict[str, Any]) -> None:
    """Run in a fresh process: print the JSON peak memory of one steady-state step of ``spec`` (a BenchConfig)."""
    import gc
    import resource

    torch.set_num_threads(int(spec.pop("threads")))
    cfg = BenchConfig(**{**spec, "img_size": tuple(spec["img_size"]) if spec["img_size"] else None})
    runner = Runner(cfg)
    runner.step()  # allocates the optimiser state; the first step's transients are then returned (mmap threshold)
    runner.optimizer.zero_grad(set_to_none=True)
    gc.collect()
    base = _status_kib("VmRSS")
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")  # reset the high-water mark to the current RSS
        exact = _status_kib("VmHWM") is not None
    except OSError:
        exact = False
    runner.step()
    peak = _status_kib("VmHWM") if exact else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"peak_mib": peak / 1024, "base_mib": (base or 0) / 1024,
                      "step_mib": (peak - (base or 0)) / 1024, "exact": exact}))


def measure_memory(cfg: BenchConfig) -> dict[str, float]:
    """Peak memory of one training step or inference: {peak_mib, base_mib, step_mib} (see the module docstring)."""
    if cfg.device.startswith("cuda"):
        runner = Runner(cfg)
        runner.step()
        runner.optimizer.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        runner.step()
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
        del runner
        torch.cuda.empty_cache()
        return {"peak_mib": peak / 2 ** 20, "base_mib": base / 2 ** 20, "step_mib": (peak - base) / 2 ** 20}
    spec = {**asdict(cfg), "threads": torch.get_num_threads()}
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "65536",
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")])}
    code = "import json, sys; from taskprompter.bench import memory_child; memory_child(json.loads(sys.argv[1]))"
    proc = subprocess.run([sys.executable, "-c", code, json.dumps(spec)], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"memory measurement of {cfg.label} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------------------------- reporting


def machine_name() -> str:
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            name = next((line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")), name)
    except OSError:
        pass
    return f"{name}, {os.cpu_count()} cores"


def device_name(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device)).replace(" ", "_")
    return "cpu"


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
    fields = list(meta) + _COLUMNS + sorted({k for r in rows for k in r} - set(_COLUMNS))  # one header for all runs
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


_COLUMNS = ["sweep", "preset", "impl", "mode", "grad_ckpt", "recompute", "amp", "tasks", "img_h", "img_w", "tokens",
            "batch",
            "repeats", "sec_per_step", "sec_min", "sec_max", "spread_pct", "img_per_s", "latency_ms", "gmacs_per_img",
            "achieved_gmac_s", "matmul_gmac_s", "share_of_matmul_pct", "speedup_vs_naive", "time_vs_plain", "peak_mib",
            "step_mib", "peak_ratio", "step_ratio", "paper_params_m", "paper_gmacs", "vitl_params_m", "vitl_gmacs"]


def format_row(r: dict[str, Any]) -> str:
    mem = f"  peak {r['peak_mib']:7.0f} MiB (step +{r['step_mib']:6.0f}, x{r.get('step_ratio', float('nan')):.2f})" \
        if "peak_mib" in r else ""
    name = variant_name(r["impl"], r["grad_ckpt"], r.get("recompute", "auto")) + \
        (f"+{r['amp']}" if r["amp"] != "none" else "")
    return (f"{r['sweep']:>6s} T={r['tasks']} {r['img_h']}x{r['img_w']} B={r['batch']} {name:16s} {r['mode']:5s} "
            f"{r['img_per_s']:8.2f} img/s  {r['latency_ms']:9.1f} ms (±{r['spread_pct'] / 2:4.1f}%)  "
            f"{r['share_of_matmul_pct']:5.1f}% of mm  x{r['speedup_vs_naive']:.2f} vs naive{mem}"
            + (f"  time x{r['time_vs_plain']:.2f} of plain" if "time_vs_plain" in r else ""))


# ------------------------------------------------------------------------------------------------- driver


def bench_group(cfgs: list[BenchConfig], *, repeats: int, warmup: int, min_time: float, memory: bool, rate: float,
                sweep: str, profile_dir: Path | None = None) -> list[dict[str, Any]]:
    """Time ``cfgs`` interleaved (train and infer of one path share the model), then measure each one's memory."""
    models: dict[tuple, torch.nn.Module] = {}
    runners = []
    for c in cfgs:
        key = (c.impl, c.grad_checkpointing, c.recompute, c.tasks, c.img_size)
        runners.append(Runner(c, model=models.get(key)))
        if key not in models:
            models[key] = runners[-1].model
            if c.impl == "naive":  # the same weights as the efficient model, when it exists
                twin = models.get(("efficient", False, "auto", c.tasks, c.img_size))
                if twin is not None:
                    runners[-1].model.load_state_dict(twin.state_dict())
    times = time_interleaved(runners, repeats=repeats, warmup=warmup, min_time=min_time)
    if profile_dir is not None:
        for r in runners:
            profile_step(r, profile_dir)
    del runners, models
    rows = []
    for c, t in zip(cfgs, times):
        macs, _ = macs_per_image(c)
        rows.append(summarize(c, t, macs, rate, measure_memory(c) if memory else None, sweep))
    return rows


def profile_step(runner: Runner, out_dir: Path, steps: int = 1) -> Path:
    """torch.profiler over ``steps`` steps: the operator table (by self time) into ``out_dir/<label>.txt``."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if runner.cfg.device.startswith("cuda") else [])
    runner.step()
    with profile(activities=activities) as prof:
        for _ in range(steps):
            runner.step()
        synchronize(runner.cfg.device)
    sort = "self_cuda_time_total" if runner.cfg.device.startswith("cuda") else "self_cpu_time_total"
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{runner.cfg.preset}-{runner.cfg.label.replace('/', '-')}.txt"
    path.write_text(prof.key_averages().table(sort_by=sort, row_limit=40))
    return path


def table8_columns(preset: str, n: int, img_size: tuple[int, int] | None) -> dict[str, Any]:
    """Paper Table 8 (ViT-L, 512x512) for ``n`` tasks beside our count of the same model."""
    from .model.build import PRESETS
    from .model.profile import profile_model
    from .model.taskprompter import TaskPrompter

    kwargs = dict(PRESETS["taskprompter_vit_l_pascal"])
    kwargs["tasks"] = {t: c for t, c in list(kwargs["tasks"].items())[:n]}
    ours = profile_model(lambda: TaskPrompter(**kwargs))
    paper = PAPER_TABLE8.get(n, (float("nan"), float("nan")))
    return {"paper_params_m": paper[0], "paper_gmacs": paper[1], "vitl_params_m": ours["params"] / 1e6,
            "vitl_gmacs": ours["macs"] / 1e9}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", required=True, help="model preset, e.g. taskprompter_bench_a")
    parser.add_argument("--img-size", type=int, nargs=2, metavar=("H", "W"), help="input size (default: preset's)")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    parser.add_argument("--amp", default="none", choices=["none", "bf16"], help="bf16 autocast for the efficient "
                        "path (CUDA); the naive path stays the fp32 reference")
    parser.add_argument("--tasks", type=int, help="use the preset's first N tasks")
    parser.add_argument("--modes", default="train,infer", help="comma-separated: train, infer")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved rounds (median and spread over them)")
    parser.add_argument("--warmup", type=int, default=2, help="warm-up steps per configuration")
    parser.add_argument("--min-time", type=float, default=1.0, help="seconds per configuration per round")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    parser.add_argument("--matmul-size", type=int, default=2048, help="n of the n x n matmul timed for the rate")
    parser.add_argument("--grad-ckpt", action="store_true", help="also the efficient path with grad_checkpointing")
    parser.add_argument("--recompute", nargs="+", default=[], choices=["on", "off"], help="also the efficient "
                        "path's training step with selective_recompute=MODE (the default is auto)")
    parser.add_argument("--sweep", choices=["none", "tasks", "tokens"], default="none",
                        help="tasks: 1..T tasks (paper Table 8 beside); tokens: the sizes of --sizes")
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128, 192, 256], help="square sizes for "
                        "--sweep tokens")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurements")
    parser.add_argument("--profile", metavar="DIR", help="write a torch.profiler operator table per configuration")
    parser.add_argument("--csv", help="CSV to append to (default: benchmarks/results/<device>-<torch>-<date>.csv)")
    parser.add_argument("--no-csv", action="store_true")


def run(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {args.device}: CUDA is not available in this torch ({torch.__version__})")
    if args.amp != "none" and not args.device.startswith("cuda"):
        raise ConfigError("--amp bf16 is for CUDA; the CPU benchmark runs fp32")
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not modes or any(m not in ("train", "infer") for m in modes):
        raise ConfigError(f"--modes {args.modes!r}: use train and/or infer")
    started = datetime.datetime.now().strftime("%H:%M:%S")  # groups the rows of one invocation in the CSV
    base = BenchConfig(preset=args.preset, batch=args.batch, device=args.device, amp=args.amp, tasks=args.tasks,
                       img_size=tuple(args.img_size) if args.img_size else None)
    errors = check_parity(base)
    worst = max(errors.values())
    print("parity efficient vs naive (max relative error): " + ", ".join(f"{k} {v:.2e}" for k, v in errors.items()))
    if not worst <= PARITY_TOL:
        print(f"bench: efficient and naive paths disagree (worst {worst:.3g} > {PARITY_TOL:g}); not timing",
              file=sys.stderr)
        return 3
    dtype = torch.bfloat16 if args.amp == "bf16" else torch.float32
    rate = matmul_rate(args.device, dtype, n=args.matmul_size)
    groups: list[tuple[str, list[BenchConfig]]] = []
    if args.sweep == "tasks":
        total = len(model_kwargs(base)["tasks"]) if args.tasks is None else args.tasks
        variants = [("tasks", replace(base, tasks=n)) for n in range(1, total + 1)]
    elif args.sweep == "tokens":
        variants = [("tokens", replace(base, img_size=(s, s))) for s in args.sizes]
    else:
        variants = [("main", base)]
    for sweep, cfg in variants:
        cfgs = [replace(cfg, impl=impl, mode=mode) for mode in modes for impl in ("efficient", "naive")]
        if args.grad_ckpt and "train" in modes:
            cfgs.append(replace(cfg, impl="efficient", mode="train", grad_checkpointing=True))
        if "train" in modes:
            cfgs += [replace(cfg, impl="efficient", mode="train", recompute=m) for m in args.recompute]
        groups.append((sweep, cfgs))
    rows: list[dict[str, Any]] = []
    for sweep, cfgs in groups:
        group_rows = bench_group(cfgs, repeats=args.repeats, warmup=args.warmup, min_time=args.min_time,
                                 memory=not args.no_memory, rate=rate, sweep=sweep,
                                 profile_dir=Path(args.profile) if args.profile else None)
        if sweep == "tasks":
            for r in group_rows:
                r.update(table8_columns(args.preset, r["tasks"], base.img_size))
        add_ratios(group_rows)
        for r in group_rows:
            print(format_row(r), flush=True)
        rows += group_rows
    rate_after = matmul_rate(args.device, dtype, n=args.matmul_size)
    best = max(rate, rate_after)  # the machine's rate: a busy moment only lowers a measurement
    for r in rows:
        r["matmul_gmac_s"] = best / 1e9
        r["share_of_matmul_pct"] = 100 * r["achieved_gmac_s"] / r["matmul_gmac_s"]
    print(f"\ndense matmul rate: {rate / 1e9:.1f} GMAC/s before, {rate_after / 1e9:.1f} after (shares use the "
          f"higher); {torch.get_num_threads()} threads; {machine_name()}")
    for r in rows:
        print(format_row(r))
    if not args.no_csv:
        meta = {"machine": machine_name(), "device": device_name(args.device), "torch": torch.__version__,
                "date": datetime.date.today().isoformat(), "started": started, "threads": str(torch.get_num_threads())}
        path = write_csv(rows, args.csv or default_csv_path(args.device), meta)
        print(f"wrote {len(rows)} rows to {path}")
    return 0
