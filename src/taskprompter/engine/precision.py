"""The precision a run computes in: bf16 autocast where the device multiplies bf16 natively, fp32 elsewhere.

One choice for training (``train.amp``), evaluation (``taskprompter eval --amp``, the evaluation inside training) and
prediction (``Predictor(amp=...)``, ``taskprompter predict --amp``):

    auto  bf16 on a CUDA GPU with native bf16 (``torch.cuda.is_bf16_supported``) and on a CPU with AMX-BF16 or
          AVX512-BF16 (the ``amx_bf16`` / ``avx512_bf16`` flags of /proc/cpuinfo); fp32 elsewhere -- on a CPU without
          them bf16 is emulated, ~6x slower than fp32 (measured on an AMD EPYC, docs/performance.md)
    bf16  bf16 autocast on the CPU and on CUDA, whatever the device
    fp16  fp16 autocast with a GradScaler, CUDA only
    off   fp32, no autocast ("none", the earlier name, is read as off: older configs and checkpoints load)

Under autocast the matrix products and convolutions run in the low precision; the losses (logits cast to fp32), the
meters (outputs cast to fp32), the BatchNorm statistics (fp32 buffers, fp32 accumulation), the residual stream and its
LayerNorms (fp32: the stream adds fp32 parameters) and the model's attention softmaxes (``prompt_block``) stay fp32.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import ConfigError

AMP_MODES = ("auto", "bf16", "fp16", "off")
AMP_ALIASES = {"none": "off"}  # the name of "off" before bf16 on the CPU existed
CPU_BF16_FLAGS = ("amx_bf16", "avx512_bf16")  # /proc/cpuinfo flags of native bf16 multiplication
CPUINFO = Path("/proc/cpuinfo")


@dataclass(frozen=True)
class Capabilities:
    """What a device offers for bf16: ``native_bf16`` and the evidence it was read from."""

    device: str  # "cpu" | "cuda" | another torch device type
    name: str  # the CPU model or the GPU's name
    native_bf16: bool
    evidence: str  # e.g. "/proc/cpuinfo flags amx_bf16, avx512_bf16"


@dataclass(frozen=True)
class Precision:
    """The chosen precision: the autocast ``dtype`` (None: fp32, no autocast), whether a GradScaler is needed, the
    requested ``amp`` mode (canonical) and, in one line, why."""

    device: str  # the device type autocast runs on
    amp: str  # auto | bf16 | fp16 | off
    dtype: torch.dtype | None
    scaler: bool
    reason: str
    capabilities: Capabilities | None = None  # read for auto only

    @property
    def name(self) -> str:
        return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.dtype]

    def autocast(self) -> contextlib.AbstractContextManager:
        """The autocast context of this precision (explicitly disabled for fp32, also inside an outer autocast)."""
        if self.dtype is None:
            return torch.autocast(self.device, enabled=False)
        return torch.autocast(self.device, dtype=self.dtype)

    def describe(self) -> str:
        """One log line: what was chosen and why."""
        return f"precision: {self.name}{' autocast' if self.dtype is not None else ''} ({self.reason})"


def canonical_amp(value: str, *, option: str = "train.amp") -> str:
    """auto | bf16 | fp16 | off, with the old "none" read as off; anything else is a ConfigError naming ``option``."""
    amp = AMP_ALIASES.get(value, value)
    if amp not in AMP_MODES:
        raise ConfigError(f"{option} '{value}' is not one of: {', '.join(AMP_MODES)}")
    return amp


def cpuinfo_flags(text: str | None = None) -> set[str] | None:
    """The CPU feature flags of /proc/cpuinfo (or of ``text``); None where there is no x86 ``flags`` line (no such
    file, another OS, an Arm CPU)."""
    if text is None:
        try:
            text = CPUINFO.read_text(errors="replace")
        except OSError:
            return None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":  # the first processor's; all cores of a machine share them
            return set(value.split())
    return None


def _cpu_name(text: str | None) -> str:
    for line in (text or "").splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name":
            return value.strip()
    import platform

    return platform.processor() or platform.machine() or "cpu"


def cpu_capabilities() -> Capabilities:
    """Native bf16 on this CPU: the /proc/cpuinfo flags, else what torch detects (its AMX / AVX512-BF16 probes where
    this torch has them, else ``torch.backends.cpu.get_cpu_capability()``)."""
    try:
        text = CPUINFO.read_text(errors="replace")
    except OSError:
        text = None
    flags = cpuinfo_flags(text) if text is not None else None
    name = _cpu_name(text)
    if flags is not None:
        found = [f for f in CPU_BF16_FLAGS if f in flags]
        evidence = f"/proc/cpuinfo flags {', '.join(found)}" if found else \
            f"/proc/cpuinfo has neither {' nor '.join(CPU_BF16_FLAGS)}"
        return Capabilities("cpu", name, bool(found), evidence)
    probes = {"amx_bf16": getattr(torch.cpu, "_is_amx_tile_supported", None),
              "avx512_bf16": getattr(torch.cpu, "_is_avx512_bf16_supported", None)}
    found = []
    for flag, probe in probes.items():
        try:
            if probe is not None and probe():
                found.append(flag)
        except Exception:  # a private probe that changed: fall through to the capability string
            pass
    if found:
        return Capabilities("cpu", name, True, f"torch detects {', '.join(found)}")
    capability = torch.backends.cpu.get_cpu_capability()
    native = any(s in capability.upper() for s in ("AMX", "BF16"))
    return Capabilities("cpu", name, native, f"torch CPU capability {capability}")


def cuda_capabilities(device: torch.device) -> Capabilities:
    """Native bf16 on a CUDA GPU (compute capability 8.0 or newer: ``torch.cuda.is_bf16_supported`` without
    emulation)."""
    index = device.index if device.index is not None else torch.cuda.current_device()
    with torch.cuda.device(index):
        try:
            native = torch.cuda.is_bf16_supported(including_emulation=False)
        except TypeError:  # an older torch without the argument
            native = torch.cuda.is_bf16_supported()
    major, minor = torch.cuda.get_device_capability(index)
    return Capabilities("cuda", torch.cuda.get_device_name(index), bool(native),
                        f"torch.cuda.is_bf16_supported() is {bool(native)}, compute capability {major}.{minor}")


def device_capabilities(device: torch.device | str) -> Capabilities:
    device = torch.device(device)
    if device.type == "cpu":
        return cpu_capabilities()
    if device.type == "cuda":
        return cuda_capabilities(device)
    return Capabilities(device.type, device.type, False, f"no bf16 detection for {device.type}")


def choose_precision(amp: str, device: torch.device | str, *, option: str = "train.amp") -> Precision:
    """The precision ``amp`` (auto | bf16 | fp16 | off | none) means on ``device``; ``option``: how the user spells
    the setting, for the messages (``train.amp``, ``--amp``)."""
    device = torch.device(device)
    mode = canonical_amp(amp, option=option)
    where = f"{option}={amp}"
    if mode == "off":
        return Precision(device.type, mode, None, False, f"{where}")
    if mode == "fp16":
        if device.type != "cuda":
            raise ConfigError(f"{where} needs a CUDA device (fp16 trains with a gradient scaler, on CUDA only); on "
                              f"{device.type} use {option}=bf16, {option}=auto or {option}=off")
        return Precision(device.type, mode, torch.float16, True, f"{where}, with a gradient scaler")
    if mode == "bf16":
        return Precision(device.type, mode, torch.bfloat16, False, f"{where}")
    caps = device_capabilities(device)
    if caps.native_bf16:
        return Precision(device.type, mode, torch.bfloat16, False,
                         f"{where}: {caps.name} multiplies bf16 natively, {caps.evidence}", caps)
    return Precision(device.type, mode, None, False,
                     f"{where}: {caps.name} has no native bf16, {caps.evidence}", caps)
