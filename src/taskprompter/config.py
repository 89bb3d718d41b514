"""Run configuration: typed dataclasses merged as defaults -> YAML file -> ``--set a.b=c`` overrides.

Only the CLI and the engine read these objects; models, datasets, losses and meters take plain keyword arguments
(the builder translates). The resolved config is written to the run directory as ``config.yaml`` and stored in every
checkpoint as a plain dict, so a run can be repeated from its own directory.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import os
import types
import typing
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


@dataclass(frozen=True)
class TrainConfig:
    batch_size: int = 4  # global batch per optimiser step: processes x accum_steps x per-step micro-batch
    accum_steps: int = 1  # gradient accumulation, to reach the global batch on fewer devices
    eval_batch_size: int = 4  # per process
    eval_every: int = 5000  # iterations between evaluations (0 = only at the end)
    checkpoint_every: int = 1000  # iterations between `last` checkpoints (always at the end too)
    log_every: int = 20
    amp: str = "none"  # none | bf16 | fp16 -- CUDA only; CPU always runs fp32
    device: str = "auto"  # auto | cpu | cuda
    cpu_threads: int = 0  # torch intra-op threads (0 = torch's default); with data.num_workers, sizes CPU runs
    out_dir: str = "runs/run"
    loss_weights: dict[str, float] = field(default_factory=dict)  # per-task overrides of the released weights
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


def _unknown(key: str, where: str) -> ConfigError:
    close = difflib.get_close_matches(key, _all_keys(), n=1, cutoff=0.5)
    if not close:  # a misspelt section or a bare field name: compare the last part too
        tail = {k.split(".")[-1]: k for k in _all_keys()}
        close = [tail[m] for m in difflib.get_close_matches(key.split(".")[-1], list(tail), n=1, cutoff=0.6)]
    hint = f"; did you mean '{close[0]}'?" if close else ""
    return ConfigError(f"unknown config key '{key}' in {where}{hint}")


def _coerce(value: Any, annotation: Any, key: str, where: str) -> Any:
    """Check ``value`` against a field's annotation and convert lists to tuples and ints to floats."""
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


def _build(section: str, cls: type, values: dict[str, Any], where: str) -> Any:
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in values.items():
        if key not in hints:
            raise _unknown(f"{section}.{key}", where)
        kwargs[key] = _coerce(value, hints[key], f"{section}.{key}", where)
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
    return raw


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
