"""Run configuration: typed dataclasses merged as defaults -> YAML file -> ``--set a.b=c`` overrides.

Only the CLI and the engine read these objects; models, datasets, losses and meters take plain keyword arguments
(the builder translates). The resolved config is written to the run directory as ``config.yaml`` and stored in every
checkpoint as a plain dict, so a run can be repeated from its own directory.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import math
import os
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError


@dataclass(frozen=True)
class ModelConfig:
    name: str = "taskprompter_tiny"  # a preset of taskprompter.model.build.MODELS
    variant: str = "taskprompter"  # taskprompter | task_specific_encoders ("w/ TE", paper Table 6)
    pretrained: str | None = None  # local ViT weights (timm .pth/.safetensors or augreg .npz) for the encoder
    overrides: dict[str, Any] = field(default_factory=dict)  # extra constructor kwargs, e.g. {channel_heads: 4}


@dataclass(frozen=True)
class DataConfig:
    format: str = "pascal_context"  # reader: pascal_context | nyud (the synthetic generator writes both)
    root: str = "data/PASCALContext"
    tasks: tuple[str, ...] = ("semseg", "human_parts", "sal", "normals", "edge")
    train_split: str = "train"
    val_split: str = "val"
    size: tuple[int, int] = (512, 512)  # (H, W): training crop, evaluation padding, and the model's img_size
    num_workers: int = 2
    scale_range: tuple[float, float] = (0.5, 2.0)  # training augmentation (released): random scale, crop, flip,
    flip: bool = True  #                             photometric distortion
    photometric: bool = True
    max_val_samples: int = 0  # evaluate on the first N validation samples only (0 = all)
    check_files: bool = True  # train: read every training and validation sample's file headers before step 1
    reader_options: dict[str, Any] = field(default_factory=dict)  # the reader's own options, e.g. cityscapes3d
    #                                  {euler: faithful, rail_track_sky: false, drop_empty: false} (docs/data.md)
    labelled_tasks: str = "auto"  # partial labels: auto (<root>/labelled_tasks.json if it exists, else all) | all
    #                               (ignore any record: fully labelled) | a record file (docs/data.md)


@dataclass(frozen=True)
class OptimConfig:
    name: str = "adam"  # adam: coupled L2 decay on every parameter (released) | adamw: decoupled, no decay on
    #                     prompts, position table, norms and biases
    lr: float = 2e-5
    weight_decay: float = 1e-6
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    schedule: str = "poly"  # poly | cosine | constant, stepped every iteration
    poly_power: float = 0.9
    warmup_iters: int = 0  # linear warm-up from 0
    max_iters: int = 40000
    grad_clip: float = 10.0  # max global grad norm (0 = off)
    fused: bool = True  # torch's fused Adam/AdamW kernel (one pass per parameter; ~3x faster steps on CPU than the
    #                     default per-tensor loop); false: torch's default implementation
    step_in_backward: bool = False  # update each parameter inside the backward, as soon as its gradient is complete,
    #                                 and free that gradient (the same weights; a step never holds all gradients):
    #                                 needs grad_clip=0, train.accum_steps=1, one process, no fp16 loss scaling


@dataclass(frozen=True)
class TrainConfig:
    batch_size: int = 4  # global batch per optimiser step: processes x accum_steps x per-step micro-batch
    accum_steps: int = 1  # gradient accumulation, to reach the global batch on fewer devices
    eval_batch_size: int = 4  # per process
    eval_every: int = 5000  # iterations between evaluations (0 = only at the end)
    checkpoint_every: int = 1000  # iterations between `last` checkpoints (always at the end too)
    log_every: int = 20
    amp: str = "auto"  # auto: bf16 autocast where the device multiplies bf16 natively (CUDA GPUs with bf16, CPUs with
    #                    AMX or AVX512-BF16), else fp32 | bf16 (CPU and CUDA) | fp16 (CUDA) | off (fp32; "none" = off)
    compile: bool = False  # torch.compile the training model (its first step, compilation included, is logged apart;
    #                        evaluation runs eagerly)
    device: str = "auto"  # auto | cpu | cuda
    cpu_threads: int = 0  # torch intra-op threads (0 = torch's default); with data.num_workers, sizes CPU runs
    out_dir: str = "runs/run"
    loss_weights: dict[str, float] = field(default_factory=dict)  # per-task overrides of the released weights
    loss_weighting: str = "fixed"  # fixed (the weights above) | uw | dwa | famo | gradnorm_scale | pcgrad | cagrad |
    #                                upgrad | nash_mtl (docs/training.md)
    loss_weighting_options: dict[str, Any] = field(default_factory=dict)  # the method's options, e.g. dwa
    #                                                                       {temperature: 2, period: 100}
    loss_normalization: str = "global"  # global: each loss over the valid pixels of the whole step's batch (any
    #                                     process / micro-batch count trains alike); local: per micro-batch and
    #                                     process, as the released code (docs/fidelity.md)
    best_metric: str = "auto"  # "task.metric" for the best checkpoint; auto = the first task's primary metric
    sync_bn: bool = True  # SyncBatchNorm under torchrun
    progress: bool = True  # tqdm bar (rank 0)


@dataclass(frozen=True)
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    seed: int = 0


SECTIONS: dict[str, type] = {"model": ModelConfig, "data": DataConfig, "optim": OptimConfig, "train": TrainConfig}
CONFIG_DIR = Path(__file__).parent / "configs"  # the YAML files shipped with the package


# ------------------------------------------------------------------------------------------------- conversion


def _all_keys() -> list[str]:
    keys = ["seed"]
    for section, cls in SECTIONS.items():
        keys += [f"{section}.{f.name}" for f in dataclasses.fields(cls)]
    return keys


def _similarity(typed: str, known: str) -> float:
    """How alike two key components are: difflib's ratio, or 0.9 when one abbreviates the other by the initials of
    its words (`learning_rate` -> `lr`, `wd` -> `weight_decay`)."""
    if typed == known:
        return 1.0
    initials = ["".join(w[0] for w in name.split("_") if w) for name in (typed, known)]
    abbreviates = (len(known) > 1 and initials[0] == known) or (len(typed) > 1 and initials[1] == typed)
    return max(difflib.SequenceMatcher(None, typed, known).ratio(), 0.9 if abbreviates else 0.0)


def closest_key(key: str, known: list[str], cutoff: float = 0.6) -> str | None:
    """The known dotted key closest to ``key``, the last component weighed first (`optim.learning_rate` ->
    `optim.lr`, `train.lr` -> `optim.lr`, `batch_size` -> `train.batch_size`), the leading ones breaking ties."""
    *head, last = key.split(".")
    best, best_score = None, (cutoff, 0.0)
    for candidate in known:
        *c_head, c_last = candidate.split(".")
        score = (_similarity(last, c_last), _similarity(".".join(head), ".".join(c_head)))
        if score > best_score:
            best, best_score = candidate, score
    if best is None:  # a misspelt section with a correct field: compare the whole key
        close = difflib.get_close_matches(key, known, n=1, cutoff=cutoff)
        best = close[0] if close else None
    return best


def _unknown(key: str, where: str) -> ConfigError:
    close = closest_key(key, [*SECTIONS, *_all_keys()])
    hint = f"; did you mean '{close}'?" if close else ""
    return ConfigError(f"unknown config key '{key}' in {where}{hint}")


# YAML 1.1 reads an unquoted off / no / false as the boolean false: for these keys it is the word "off"
BOOLEAN_OFF = {"train.amp"}


def _coerce(value: Any, annotation: Any, key: str, where: str) -> Any:
    """Check ``value`` against a field's annotation and convert lists to tuples and ints to floats."""
    if value is False and key in BOOLEAN_OFF:
        value = "off"
    tp = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if tp in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arg, key, where)
            except ConfigError as err:
                errors.append(err)
        raise errors[0]
    bad = ConfigError(f"config key '{key}' in {where} expects {_pretty(annotation)}, got {value!r}")
    if tp is tuple:
        if not isinstance(value, (list, tuple)):
            raise bad
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], key, where) for v in value)
        if len(value) != len(args):
            raise bad
        return tuple(_coerce(v, a, key, where) for v, a in zip(value, args))
    if tp is dict:
        if not isinstance(value, dict):
            raise bad
        return {str(k): (_coerce(v, args[1], key, where) if args[1] is not Any else v) for k, v in value.items()}
    if annotation is Any:
        return value
    if annotation is float:
        if isinstance(value, str):  # YAML 1.1 reads 3e-4 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                raise bad from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad
        return float(value)
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad
        return value
    if annotation is bool:
        if not isinstance(value, bool):
            raise bad
        return value
    if annotation is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise bad
        return str(value)
    raise bad


def _pretty(annotation: Any) -> str:
    return getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")


# ------------------------------------------------------------------------------------------------- ranges


def _count(low: int) -> tuple[Callable[[Any], bool], str]:
    return (lambda v: v >= low), ("a positive integer" if low == 1 else f"an integer >= {low}")


def _number(low: float, *, strict: bool) -> tuple[Callable[[Any], bool], str]:
    return ((lambda v: math.isfinite(v) and (v > low if strict else v >= low)),
            f"a finite number {'>' if strict else '>='} {low:g}")


def _one_of(*choices: str) -> tuple[Callable[[Any], bool], str]:
    return (lambda v: v in choices), f"one of {', '.join(choices)}"


DEVICES = ("auto", "cpu", "cuda")
# taskprompter.weighting.WEIGHTINGS
LOSS_WEIGHTINGS = ("fixed", "uw", "dwa", "famo", "gradnorm_scale", "pcgrad", "cagrad", "upgrad", "nash_mtl")


def _one_of_suggesting(*choices: str) -> tuple[Callable[[Any], bool], Callable[[Any], str]]:
    def what(v: Any) -> str:
        close = difflib.get_close_matches(str(v), choices, n=1, cutoff=0.5)
        return f"one of {', '.join(choices)}" + (f" (did you mean '{close[0]}'?)" if close else "")

    return (lambda v: v in choices), what


# The allowed values of every key that has a range: checked when a file or --set gives the key.
CHECKS: dict[str, tuple[Callable[[Any], bool], str | Callable[[Any], str]]] = {
    "seed": _count(0),
    "model.name": ((lambda v: bool(v)), "a preset name (`taskprompter models` lists them)"),
    "data.tasks": ((lambda v: len(v) > 0 and len(set(v)) == len(v)), "a non-empty list of distinct task names"),
    "data.size": ((lambda v: min(v) > 0), "two positive integers [H, W], multiples of the model's patch size"),
    "data.num_workers": _count(0),
    "data.scale_range": ((lambda v: all(map(math.isfinite, v)) and 0 < v[0] <= v[1]),
                         "[min, max] with 0 < min <= max"),
    "data.max_val_samples": _count(0),
    "data.labelled_tasks": ((lambda v: bool(v.strip())), "auto, all or the path of a labelled-tasks record"),
    "optim.name": _one_of("adam", "adamw"),
    "optim.lr": _number(0, strict=True),
    "optim.weight_decay": _number(0, strict=False),
    "optim.betas": ((lambda v: all(0 <= b < 1 for b in v)), "two numbers in [0, 1)"),
    "optim.eps": _number(0, strict=True),
    "optim.schedule": _one_of("poly", "cosine", "constant"),
    "optim.poly_power": _number(0, strict=True),
    "optim.warmup_iters": _count(0),
    "optim.max_iters": _count(1),
    "optim.grad_clip": _number(0, strict=False),
    "train.batch_size": _count(1),
    "train.accum_steps": _count(1),
    "train.eval_batch_size": _count(1),
    "train.eval_every": _count(0),
    "train.checkpoint_every": _count(1),
    "train.log_every": _count(1),
    "train.amp": ((lambda v: v in ("auto", "bf16", "fp16", "off", "none")), "one of auto, bf16, fp16, off"),
    "train.device": ((lambda v: v in DEVICES or (v.startswith("cuda:") and v[5:].isdigit())),
                     "auto, cpu, cuda or cuda:N"),
    "train.cpu_threads": _count(0),
    "train.out_dir": ((lambda v: bool(v.strip())), "a directory path"),
    "train.loss_weights": ((lambda v: all(math.isfinite(w) and w >= 0 for w in v.values())),
                           "finite weights >= 0 per task"),
    "train.loss_weighting": _one_of_suggesting(*LOSS_WEIGHTINGS),
}


def _check(key: str, value: Any, where: str) -> None:
    rule = CHECKS.get(key)
    if rule is not None and not rule[0](value):
        shown = list(value) if isinstance(value, tuple) else value
        what = rule[1](value) if callable(rule[1]) else rule[1]
        raise ConfigError(f"config key '{key}' in {where} must be {what}, got {shown!r}")


def _build(section: str, cls: type, values: dict[str, Any], where: str) -> Any:
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in values.items():
        if key not in hints:
            raise _unknown(f"{section}.{key}", where)
        kwargs[key] = _coerce(value, hints[key], f"{section}.{key}", where)
        _check(f"{section}.{key}", kwargs[key], where)
    return cls(**kwargs)


def from_dict(raw: dict[str, Any], where: str = "config") -> Config:
    """Build a Config from a nested plain dict; unknown keys raise ConfigError naming the closest known key."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{where} must hold a mapping of sections (model, data, optim, train, seed)")
    sections = {}
    for name, values in raw.items():
        if name == "seed":
            continue
        if name not in SECTIONS:
            raise _unknown(str(name), where)
        if values is None:
            values = {}
        if not isinstance(values, dict):
            raise ConfigError(f"section '{name}' in {where} must be a mapping, got {values!r}")
        sections[name] = _build(name, SECTIONS[name], values, where)
    seed = _coerce(raw.get("seed", 0), int, "seed", where)
    _check("seed", seed, where)
    return Config(seed=seed, **sections)


def to_dict(cfg: Config) -> dict[str, Any]:
    """Plain nested dict (lists, not tuples) -- YAML- and ``torch.load(weights_only=True)``-safe."""

    def plain(v: Any) -> Any:
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {str(k): plain(x) for k, x in v.items()}
        return v

    return plain(dataclasses.asdict(cfg))


# ------------------------------------------------------------------------------------------------- overrides


def _set_path(tree: dict[str, Any], key: str, value: Any, where: str) -> None:
    parts = key.split(".")
    if parts == ["seed"]:
        tree["seed"] = value
        return
    if len(parts) < 2 or parts[0] not in SECTIONS:
        raise _unknown(key, where)
    section, name, rest = parts[0], parts[1], parts[2:]
    names = {f.name for f in dataclasses.fields(SECTIONS[section])}
    if name not in names:
        raise _unknown(key, where)
    node = tree.setdefault(section, {}) or {}
    tree[section] = node
    if rest:  # dict-valued fields: model.overrides.channel_heads=4, train.loss_weights.edge=50
        sub = node.get(name)
        if sub is None:
            sub = dict(dataclasses.asdict(SECTIONS[section]())[name] or {})
        if not isinstance(sub, dict):
            raise ConfigError(f"config key '{section}.{name}' is not a mapping; cannot set '{key}'")
        node[name] = sub
        for p in rest[:-1]:
            sub = sub.setdefault(p, {})
        sub[rest[-1]] = value
    else:
        node[name] = value


def apply_overrides(raw: dict[str, Any], overrides: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """Apply ``a.b=c`` strings to a nested dict; values are parsed as YAML (``1e-4``, ``[64, 64]``, ``null``)."""
    raw = copy.deepcopy(raw)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' must look like key=value (e.g. optim.lr=1e-4)")
        key, text = item.split("=", 1)
        try:
            value = yaml.safe_load(text) if text.strip() else ""
        except yaml.YAMLError as err:
            raise ConfigError(f"override '{item}': cannot parse value: {err}") from err
        _set_path(raw, key.strip(), value, f"--set {item}")
        _check_field(key.strip(), value, f"--set {item}")
    return raw


def _check_field(key: str, value: Any, where: str) -> None:
    """Type and range of one top-level field, so that an override's mistake names the override itself."""
    section, _, name = key.partition(".")
    if key == "seed":
        _check(key, _coerce(value, int, key, where), where)
    elif section in SECTIONS and name and "." not in name:
        _check(key, _coerce(value, typing.get_type_hints(SECTIONS[section])[name], key, where), where)


# ------------------------------------------------------------------------------------------------- files


def resolve_config_path(path: str | os.PathLike) -> Path:
    """A config path, or the name of a shipped config (``pascal_context_vit_b`` or ``pascal_context_vit_b.yaml``)."""
    p = Path(path)
    if p.is_file():
        return p
    for candidate in (CONFIG_DIR / p.name, CONFIG_DIR / f"{p.name}.yaml"):
        if candidate.is_file() and (p.parent == Path(".") or not p.parent.exists()):
            return candidate
    shipped = sorted(q.stem for q in CONFIG_DIR.glob("*.yaml"))
    raise ConfigError(f"config file not found: {path} (shipped configs: {', '.join(shipped)})")


def read_yaml(path: str | os.PathLike) -> dict[str, Any]:
    try:
        with open(path) as fh:
            raw = yaml.safe_load(fh)
    except yaml.YAMLError as err:
        raise ConfigError(f"cannot parse {path}: {err}") from err
    return raw or {}


def load_config(path: str | os.PathLike | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Defaults, then the YAML file (if given), then ``key=value`` overrides."""
    raw: dict[str, Any] = {}
    where = "defaults"
    if path is not None:
        p = resolve_config_path(path)
        raw, where = read_yaml(p), str(p)
        from_dict(raw, where)  # report bad keys against the file before the overrides are mixed in
    raw = apply_overrides(raw, list(overrides))
    return from_dict(raw, where if not overrides else f"{where} with --set overrides")


def write_config(cfg: Config, path: str | os.PathLike) -> None:
    """Write the resolved config as YAML (atomically: temporary file, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(dump_yaml(to_dict(cfg)))
    os.replace(tmp, path)


def dump_yaml(data: dict[str, Any]) -> str:
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=None)
