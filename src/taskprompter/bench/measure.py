"""What `taskprompter bench` measures, one configuration at a time: the configuration (``BenchConfig``) and its model,
forward MACs, a runner for one training step or inference (fp32 or bf16 autocast, eager or ``torch.compile``, the
optimiser step after the backward or fused into it), the parity gate between the efficient and the naive path, the
parity of each precision / compile variant against the fp32 eager efficient path and of the step in the backward
against the ordinary step, interleaved timing (compilation in the warm-up, reported apart), peak memory (CUDA
allocator, or a fresh subprocess's resident set on the CPU) and its breakdown (runtime, weights, optimiser state,
gradients, activations), the dense fp32 and bf16 matmul rates the achieved rate is compared with, the device's bf16
capability record, and the machine's and device's names. The groups of a run are in
``suite.py``, the CSV rows in ``results.py``; arguments and printing in ``taskprompter.cli.bench``.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch

from ..engine import precision
from ..engine.optim import StepInBackward
from ..errors import ConfigError
from ..model.build import preset_kwargs
from ..model.profile import profile_model
from ..model.taskprompter import TaskPrompter

PARITY_TOL = 1e-3  # max |efficient - naive| / max |naive|, per output and per gradient tensor
GRAD_FLOOR = 1e-2
# A precision / compile variant against the fp32 eager efficient path (outputs, gradients): fp32 (compiled) as the
# gate; bf16 (8 significant bits, unit roundoff 3.9e-3) a few roundoffs through the network -- measured on the tiny
# model and config C: outputs 0.6-1.4e-2, gradients <= 4e-2 (docs/performance.md)
VARIANT_TOL = {"off": {"outputs": PARITY_TOL, "gradients": PARITY_TOL}, "bf16": {"outputs": 5e-2, "gradients": 0.15}}
AMPS = ("off", "bf16")
# torch.compile's backend for the compiled variants; tests pass "aot_eager" (graph capture and AOTAutograd without
# inductor's C++ code generation)
COMPILE_BACKEND = "inductor"
RECOMPILE_LIMIT = 64  # dynamo's per-function cache (train / eval, fp32 / bf16, parity models): never fall back to eager


def canonical_bench_amp(value: str) -> str:
    """off | bf16 ("none", the earlier name of off, is read as off)."""
    amp = {"none": "off", "fp32": "off"}.get(value, value)
    if amp not in AMPS:
        raise ConfigError(f"--amp {value!r}: the bench times {' and '.join(AMPS)} (fp16 is not benchmarked)")
    return amp


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
    amp: str = "off"  # off | bf16: bf16 autocast on the CPU or CUDA ("none" is read as off)
    compile: bool = False  # the model through torch.compile (compiled in the warm-up, timed apart)
    step_in_backward: bool = False  # training: Adam stepped per parameter inside the backward (optim.step_in_backward)
    weighting: str = "fixed"  # training: the loss weighting (train.loss_weighting) whose backward the step runs

    def __post_init__(self) -> None:
        object.__setattr__(self, "amp", canonical_bench_amp(self.amp))

    @property
    def variant(self) -> str:
        return variant_name(self.impl, self.grad_checkpointing, self.recompute, self.amp, self.compile,
                            self.step_in_backward, self.weighting)

    @property
    def label(self) -> str:
        return f"{self.variant}/{self.mode}"


def variant_name(impl: str, grad_ckpt: bool, recompute: str, amp: str = "off", compile: bool = False,
                 step_in_backward: bool = False, weighting: str = "fixed") -> str:
    """efficient, efficient+ckpt, efficient+rc-off, naive, efficient+bf16, efficient+compile, efficient+bf16+compile,
    efficient+ckpt+bf16, efficient+ckpt+step-in-bwd, efficient+ckpt+step-in-bwd+bf16, efficient+w-upgrad, ..."""
    return (impl + ("+ckpt" if grad_ckpt else "") + (f"+w-{weighting}" if weighting != "fixed" else "")
            + (f"+rc-{recompute}" if impl == "efficient" and recompute not in ("auto", "-") else "")
            + ("+step-in-bwd" if step_in_backward else "")
            + ("+bf16" if canonical_bench_amp(amp) == "bf16" else "") + ("+compile" if compile else ""))


def default_amps(device: str) -> list[str]:
    """off, plus bf16 where the device multiplies bf16 natively (what ``train.amp=auto`` chooses there)."""
    chosen = precision.choose_precision("auto", device, option="--amp")
    return ["off"] + (["bf16"] if chosen.dtype == torch.bfloat16 else [])


def capability_record(device: str) -> dict[str, str]:
    """The device's bf16 capability (``engine/precision.py``) as the header's fields: its name, native bf16 and the
    evidence; on the CPU the bf16 flags of /proc/cpuinfo, on CUDA torch's bf16 support."""
    caps = precision.device_capabilities(device)
    record = {"device_model": caps.name, "native_bf16": "yes" if caps.native_bf16 else "no",
              "bf16_evidence": caps.evidence,
              "amp_auto": precision.choose_precision("auto", device, option="--amp").name}
    if caps.device == "cpu":
        flags = precision.cpuinfo_flags()
        record["cpu_bf16_flags"] = ("unknown" if flags is None else
                                    " ".join(f for f in precision.CPU_BF16_FLAGS if f in flags) or "none")
    elif caps.device == "cuda":
        record["cuda_bf16"] = "yes" if torch.cuda.is_bf16_supported() else "no"
    return record


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
    """The sum of the outputs' means, in fp32 (as the library's losses cast the logits)."""
    return sum(o.float().mean() for o in outputs.values())


def amp_context(cfg: BenchConfig) -> contextlib.AbstractContextManager:
    """bf16 autocast on the configuration's device type for amp=bf16; a disabled autocast for off. As the trainer,
    without autocast's weight cache under grad_checkpointing: the cache would keep a bf16 copy of every weight to the
    end of the forward (at config A 70 MiB of the step's peak), though the checkpointed segments store nothing and
    recast in the backward (the same values, bit for bit; the same step time)."""
    return torch.autocast(cfg.device.split(":")[0], dtype=torch.bfloat16, enabled=cfg.amp == "bf16",
                          cache_enabled=not cfg.grad_checkpointing)


def compile_model(model: torch.nn.Module, backend: str | None = None) -> Callable:
    """``torch.compile(model)`` with the bench's backend (``COMPILE_BACKEND`` unless given); compiled lazily by the
    first call."""
    return torch.compile(model, backend=backend or COMPILE_BACKEND)


class Runner:
    """One model, its optimiser and a fixed input batch; ``step()`` runs one training step or one inference, under
    bf16 autocast for amp=bf16 (the loss in fp32) and through ``torch.compile`` for compile=True (the wrapper is made
    here; dynamo and the backend compile in the first steps, which ``time_interleaved`` counts as ``compile_s``).
    With step_in_backward the optimiser is the trainer's ``StepInBackward``: it updates each parameter inside the
    backward (hooks on the model's parameters: a model is not shared with another runner's optimiser then)."""

    def __init__(self, cfg: BenchConfig, model: torch.nn.Module | None = None, seed: int = 0,
                 backend: str | None = None) -> None:
        self.cfg = cfg
        self.model = model if model is not None else build(cfg, seed)
        gen = torch.Generator().manual_seed(seed + 1)
        self.images = torch.randn(cfg.batch, 3, *self.model.img_size, generator=gen).to(cfg.device)
        # tiny lr: weights stay sane; fused, as the trainer's default (the same optimiser for both paths)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=1e-6, fused=True)
        if cfg.step_in_backward and cfg.mode == "train":
            self.optimizer = StepInBackward(self.optimizer)
        self.autocast = cfg.amp == "bf16"
        self.weighting = self.features = None
        if cfg.weighting != "fixed" and cfg.mode == "train":  # the trainer's backward of that method
            from ..tasks import TASKS
            from ..weighting import build_weighting, shared_features_for

            tasks = list(self.model.heads)
            self.weighting = build_weighting(cfg.weighting, tasks=tasks,
                                             base_weights={t: TASKS[t].loss_weight for t in tasks}).to(cfg.device)
            if (group := self.weighting.param_group()) is not None:
                self.optimizer.add_param_group({"params": group["params"]})
            self.features = shared_features_for(self.weighting, self.model)
            self.steps = 0
        self.compiled = compile_model(self.model, backend) if cfg.compile else None
        self.compile_s: float | None = None  # set by time_interleaved for a compiled runner
        self.recompiles_timed: int | None = None  # graphs compiled during the timed rounds (time_interleaved)

    def step(self) -> torch.Tensor | None:
        """One training step (returns the detached fp32 loss) or one inference (returns None)."""
        model = self.model
        forward = self.compiled if self.compiled is not None else model
        if self.cfg.mode == "train":
            model.train()
            self.optimizer.zero_grad(set_to_none=True)
            with amp_context(self.cfg):
                outputs = forward(self.images)
                loss = bench_loss(outputs)
            if self.weighting is None:
                loss.backward()
            else:  # per-task losses: each output's mean, as bench_loss sums them
                from ..weighting import weighted_backward

                losses = {t: o.float().mean() for t, o in outputs.items()}
                weighted_backward(self.weighting, losses, step=self.steps, features=self.features)
                if self.weighting.needs_step_losses:
                    self.weighting.update(torch.stack([v.detach().double() for v in losses.values()]), self.steps)
                self.steps += 1
            self.optimizer.step()
            return loss.detach()
        model.eval()
        with torch.inference_mode(), amp_context(self.cfg):
            forward(self.images)
        return None


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
    eff = build(replace(cfg, impl="efficient", grad_checkpointing=False, amp="off", compile=False), seed)
    naive = build(replace(cfg, impl="naive", grad_checkpointing=False, amp="off", compile=False), seed)
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
    errors["gradients"] = gradient_error(eff, naive)
    return errors


def gradient_error(model: torch.nn.Module, reference: torch.nn.Module) -> float:
    """The largest per-tensor max |g - g_ref| / max |g_ref| over the parameters, each tensor compared at least at
    GRAD_FLOOR x the largest reference gradient (gradients that are zero in exact arithmetic -- a conv bias before
    BatchNorm -- hold only rounding noise); inf when one model has a gradient the other lacks."""
    grads_r = dict(reference.named_parameters())
    pairs = [(p.grad, grads_r[n].grad) for n, p in model.named_parameters()
             if p.grad is not None and grads_r[n].grad is not None]
    if any((p.grad is None) != (grads_r[n].grad is None) for n, p in model.named_parameters()) or not pairs:
        return math.inf
    floor = GRAD_FLOOR * max(b.abs().max().item() for _, b in pairs)
    return max((a.float() - b.float()).abs().max().item() / max(b.abs().max().item(), floor, 1e-30)
               for a, b in pairs)


def check_variant_parity(cfg: BenchConfig, seed: int = 0, backend: str | None = None,
                         modes: tuple[str, ...] = ("train", "infer")) -> dict[str, float]:
    """A precision / compile variant (``cfg``: its amp, compile, grad_checkpointing, recompute) against the fp32 eager
    efficient path with the same weights on the same images (``cfg.batch`` of them: a compiled variant runs the
    shapes it was timed with): the largest relative error over the eval outputs (inference mode; "infer" in
    ``modes``), the train-mode outputs and the gradients of ``bench_loss`` ("train" in ``modes``). Drop-path is off in
    both (a compiled graph draws its own random numbers), so the errors are the arithmetic's alone."""
    ref_cfg = replace(cfg, impl="efficient", grad_checkpointing=False, recompute="auto", amp="off", compile=False)
    torch.manual_seed(seed)
    reference = TaskPrompter(**{**model_kwargs(ref_cfg), "drop_path_rate": 0.0}).to(cfg.device)
    variant = TaskPrompter(**{**model_kwargs(cfg), "drop_path_rate": 0.0}).to(cfg.device)
    variant.load_state_dict(reference.state_dict())
    forward = compile_model(variant, backend) if cfg.compile else variant
    gen = torch.Generator().manual_seed(seed + 2)
    images = torch.randn(cfg.batch, 3, *reference.img_size, generator=gen).to(cfg.device)
    errors = {}
    if "infer" in modes:
        variant.eval()
        with torch.inference_mode():
            a = reference.eval()(images)
            with amp_context(cfg):
                b = forward(images)
        errors["eval_outputs"] = max(relative_error(b[t], a[t]) for t in a)
    if "train" in modes:
        ref_out = reference.train()(images)
        bench_loss(ref_out).backward()
        variant.train()
        with amp_context(cfg):
            out = forward(images)
            loss = bench_loss(out)
        loss.backward()
        errors["train_outputs"] = max(relative_error(out[t], ref_out[t]) for t in ref_out)
        errors["gradients"] = gradient_error(variant, reference)
    return errors


def check_step_in_backward_parity(cfg: BenchConfig, seed: int = 0, steps: int = 2) -> dict[str, float]:
    """The optimiser step fused into the backward (``cfg``, step_in_backward) against the ordinary step after it: two
    runners with the same weights and images, ``steps`` training steps each (drop-path seeded alike), then the
    largest relative difference of any parameter, {"weights": ...}; 0 when they agree bit for bit, as they must."""
    eager = replace(cfg, mode="train", compile=False)
    ordinary, fused = Runner(replace(eager, step_in_backward=False), seed=seed), Runner(eager, seed=seed)
    for step in range(steps):
        for runner in (ordinary, fused):
            torch.manual_seed(seed + 3 + step)
            runner.step()
    return {"weights": max(relative_error(b, a) for a, b in zip(ordinary.model.parameters(),
                                                                 fused.model.parameters()))}


# ------------------------------------------------------------------------------------------------- timing


COMPILED_WARMUP = 3  # warm-up steps of a compiled runner at least: compilation, a possible recompile, a steady step


def graphs_compiled() -> int:
    """How many graphs dynamo has compiled in this process (its counters; 0 where this torch lacks them)."""
    try:
        from torch._dynamo.utils import counters

        return int(counters["stats"]["unique_graphs"])
    except Exception:  # a private counter that moved: no recompile detection
        return 0


def time_interleaved(runners: list[Runner], *, repeats: int, warmup: int, min_time: float,
                     clock: Callable[[], float] = time.perf_counter) -> list[list[float]]:
    """Seconds per step of every runner, ``repeats`` rounds; in each round every runner runs in turn (so slow drifts
    of the machine hit all alike). Iterations per round are chosen from the warm-up so a round lasts ~min_time.

    A compiled runner (``cfg.compile``) compiles in its warm-up (at least ``COMPILED_WARMUP`` steps): its
    ``compile_s`` is the warm-up's time beyond that many steady steps (the fastest warm-up step), i.e. dynamo's
    tracing and the backend's compilation of the forward (and, training, the backward); the timed rounds start after
    it. Graphs compiled during the timed rounds (a recompile) are counted into each compiled runner's
    ``recompiles_timed`` (expected 0)."""
    iters = []
    for r in runners:
        compiled = bool(getattr(r.cfg, "compile", False))
        dts = []
        for _ in range(max(warmup, COMPILED_WARMUP if compiled else 1)):
            synchronize(r.cfg.device)
            t0 = clock()
            r.step()
            synchronize(r.cfg.device)
            dts.append(clock() - t0)
        if compiled:
            r.compile_s = sum(dts) - len(dts) * min(dts)
        iters.append(max(1, math.ceil(min_time / max(min(dts) if compiled else dts[-1], 1e-6))))
    graphs = graphs_compiled()
    times: list[list[float]] = [[] for _ in runners]
    for _ in range(repeats):
        for i, r in enumerate(runners):
            synchronize(r.cfg.device)
            t0 = clock()
            for _ in range(iters[i]):
                r.step()
            synchronize(r.cfg.device)
            times[i].append((clock() - t0) / iters[i])
    recompiled = graphs_compiled() - graphs
    for r in runners:
        if getattr(r.cfg, "compile", False):
            r.recompiles_timed = recompiled
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


MIB = 2 ** 20


def tensor_bytes(tensors: Iterable[torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def memory_breakdown(*, peak: float, base: float, runtime: float, model: torch.nn.Module,
                     optimizer: torch.optim.Optimizer | StepInBackward) -> dict[str, float]:
    """Where a step's peak goes, in MiB (``peak``, ``base``: the step's peak and what is held just before it;
    ``runtime``: the process before the model was built, 0 for a GPU's allocator):

    weights         the parameters and buffers
    optim_state     the tensors of the optimiser's state (Adam: two moments per parameter and its step count)
    grads           the gradients: all of them after an ordinary step's backward; inside the backward
                    (``StepInBackward``) each is freed after its update, so one parameter's at a time (the largest)
    activations     what the step adds beyond the gradients: the stored activations, their recomputation and the
                    backward's temporaries (peak - base - grads)
    other           what the process holds between steps beyond runtime, weights and optimiser state: libraries and
                    caches the first steps loaded, the allocator's retained blocks, the input batch

    runtime + weights + optim_state + other + grads + activations = peak. Where the peak comes before the last
    gradient exists (early in an ordinary backward), ``activations`` is a lower bound."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    if isinstance(optimizer, StepInBackward):
        grads = max((p.numel() * p.element_size() for p in trainable), default=0)
    else:
        grads = tensor_bytes(p.grad for p in trainable if p.grad is not None)
    weights = tensor_bytes([*model.parameters(), *model.buffers()])
    state = tensor_bytes(t for s in optimizer.state.values() for t in s.values() if torch.is_tensor(t))
    out = {"runtime_mib": runtime, "weights_mib": weights / MIB, "optim_state_mib": state / MIB,
           "grads_mib": grads / MIB}
    out["other_mib"] = base - runtime - out["weights_mib"] - out["optim_state_mib"]
    out["activations_mib"] = peak - base - out["grads_mib"]
    return out


def memory_child(spec: dict[str, Any]) -> None:
    """Run in a fresh process: print the JSON peak memory of one steady-state step of ``spec`` (a BenchConfig) and
    its breakdown (``memory_breakdown``)."""
    import gc
    import resource

    torch.set_num_threads(int(spec.pop("threads")))
    backend = spec.pop("backend", None)
    cfg = BenchConfig(**{**spec, "img_size": tuple(spec["img_size"]) if spec["img_size"] else None})
    runtime = _status_kib("VmRSS")  # the process before the model is built: Python, torch, this package
    runner = Runner(cfg, backend=backend)
    runner.step()  # allocates the optimiser state (and compiles); the first step's transients are then returned
    if cfg.compile:
        runner.step()  # a recompile on the second call stays out of the measured step too
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
    result = {"peak_mib": peak / 1024, "base_mib": (base or 0) / 1024, "step_mib": (peak - (base or 0)) / 1024,
              "exact": exact}
    result.update(memory_breakdown(peak=result["peak_mib"], base=result["base_mib"], runtime=(runtime or 0) / 1024,
                                   model=runner.model, optimizer=runner.optimizer))
    print(json.dumps(result))


def measure_memory(cfg: BenchConfig, backend: str | None = None) -> dict[str, float]:
    """Peak memory of one training step or inference: {peak_mib, base_mib, step_mib} (see the docstring of
    ``taskprompter.cli.bench``) and its breakdown (``memory_breakdown``: runtime_mib, weights_mib, optim_state_mib,
    grads_mib, other_mib, activations_mib); a compiled configuration after its compilation."""
    if cfg.device.startswith("cuda"):
        runner = Runner(cfg, backend=backend)
        runner.step()
        if cfg.compile:
            runner.step()
        runner.optimizer.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        runner.step()
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
        result = {"peak_mib": peak / MIB, "base_mib": base / MIB, "step_mib": (peak - base) / MIB}
        result.update(memory_breakdown(peak=result["peak_mib"], base=result["base_mib"], runtime=0.0,
                                       model=runner.model, optimizer=runner.optimizer))
        del runner
        torch.cuda.empty_cache()
        return result
    spec = {**asdict(cfg), "threads": torch.get_num_threads(), "backend": backend or COMPILE_BACKEND}
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
