"""What `taskprompter bench` measures, one configuration at a time: the configuration (``BenchConfig``) and its model,
forward MACs, a runner for one training step or inference, the parity gate between the efficient and the naive path,
interleaved timing, peak memory (CUDA allocator, or a fresh subprocess's resident set on the CPU), the dense matmul
rate the achieved rate is compared with, and the machine's and device's names. The groups of a run are in
``suite.py``, the CSV rows in ``results.py``; arguments and printing in ``taskprompter.cli.bench``.
"""

from __future__ import annotations

import json
import math
import os
import platform
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch

from ..errors import ConfigError
from ..model.build import preset_kwargs
from ..model.profile import profile_model
from ..model.taskprompter import TaskPrompter

PARITY_TOL = 1e-3  # max |efficient - naive| / max |naive|, per output and per gradient tensor
GRAD_FLOOR = 1e-2


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
    kwargs = preset_kwargs(cfg.preset, img_size=cfg.img_size, attention_impl=cfg.impl,
                           grad_checkpointing=cfg.grad_checkpointing, selective_recompute=cfg.recompute)
    if cfg.tasks is not None:
        names = list(kwargs["tasks"])
        if not 1 <= cfg.tasks <= len(names):
            raise ConfigError(f"--tasks {cfg.tasks}: preset {cfg.preset} has {len(names)} tasks ({names})")
        kwargs["tasks"] = {t: kwargs["tasks"][t] for t in names[:cfg.tasks]}
    return kwargs


def build(cfg: BenchConfig, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    try:
        return TaskPrompter(**model_kwargs(cfg)).to(cfg.device)
    except ValueError as err:  # e.g. an image size the channel heads cannot split
        raise ConfigError(f"{cfg.preset} at {cfg.img_size}: {err}") from err


def macs_per_image(cfg: BenchConfig) -> tuple[int, int]:
    """(forward MACs per image, parameters) of the released structure, counted on the meta device."""
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
    """Peak memory of one training step or inference: {peak_mib, base_mib, step_mib} (see the docstring of
    ``taskprompter.bench``)."""
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
    code = ("import json, sys; from taskprompter.bench.measure import memory_child; "
            "memory_child(json.loads(sys.argv[1]))")
    proc = subprocess.run([sys.executable, "-c", code, json.dumps(spec)], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"memory measurement of {cfg.label} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------------------------- machine


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
