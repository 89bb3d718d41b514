"""Config: defaults -> file -> --set, typed values, unknown keys with a suggestion, shipped files valid."""

from __future__ import annotations

import filecmp
from pathlib import Path

import pytest
import yaml

from taskprompter.config import (
    CHECKS,
    CONFIG_DIR,
    Config,
    _all_keys,
    apply_overrides,
    closest_key,
    from_dict,
    load_config,
    to_dict,
    write_config,
)
from taskprompter.errors import ConfigError

REPO_CONFIGS = Path(__file__).resolve().parents[1] / "configs"
SHIPPED = ["pascal_context_vit_b", "pascal_context_vit_l", "nyud_vit_b", "nyud_vit_l", "synthetic_tiny",
           "synthetic_demo"]


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_configs_load_and_package_copy_is_identical(name):
    cfg = load_config(REPO_CONFIGS / f"{name}.yaml")
    assert isinstance(cfg, Config)
    assert filecmp.cmp(REPO_CONFIGS / f"{name}.yaml", CONFIG_DIR / f"{name}.yaml", shallow=False)


def test_released_recipe_values():
    b = load_config("pascal_context_vit_b")  # found by name among the shipped configs
    assert (b.optim.name, b.optim.lr, b.optim.weight_decay, b.optim.poly_power) == ("adam", 2e-5, 1e-6, 0.9)
    assert (b.optim.max_iters, b.optim.grad_clip, b.train.batch_size, b.data.size) == (40000, 10.0, 4, (512, 512))
    n = load_config("nyud_vit_l")
    assert (n.optim.lr, n.data.size, n.data.tasks) == (1e-5, (448, 576), ("semseg", "depth", "normals", "edge"))


def test_overrides_are_yaml_typed():
    cfg = load_config(REPO_CONFIGS / "synthetic_tiny.yaml",
                      ["optim.lr=3e-4", "data.size=[32, 48]", "train.amp=bf16", "model.pretrained=null",
                       "model.overrides.channel_heads=1", "train.loss_weights.edge=20", "seed=7",
                       "data.tasks=[semseg, edge]"])
    assert cfg.optim.lr == 3e-4 and isinstance(cfg.optim.lr, float)
    assert cfg.data.size == (32, 48)
    assert cfg.train.amp == "bf16" and cfg.model.pretrained is None and cfg.seed == 7
    assert cfg.model.overrides == {"channel_heads": 1}
    assert cfg.train.loss_weights == {"edge": 20.0}
    assert cfg.data.tasks == ("semseg", "edge")


def test_int_literal_for_float_is_accepted_but_strings_are_not():
    assert load_config(None, ["optim.lr=1"]).optim.lr == 1.0
    with pytest.raises(ConfigError, match=r"optim\.lr.*expects float.*'abc'"):
        load_config(None, ["optim.lr=abc"])
    with pytest.raises(ConfigError, match="train.batch_size"):
        load_config(None, ["train.batch_size=2.5"])
    with pytest.raises(ConfigError, match="data.size"):
        load_config(None, ["data.size=[1, 2, 3]"])


def test_unknown_keys_suggest_the_closest():
    with pytest.raises(ConfigError, match=r"'optim\.learning_rat'.*did you mean 'optim\.lr'|did you mean"):
        load_config(None, ["optim.learning_rat=1"])
    with pytest.raises(ConfigError, match=r"unknown config key 'optim\.max_iter'.*did you mean 'optim\.max_iters'"):
        load_config(None, ["optim.max_iter=5"])
    with pytest.raises(ConfigError, match=r"did you mean 'train\.batch_size'"):
        from_dict({"train": {"batch_sise": 2}}, "x.yaml")
    with pytest.raises(ConfigError, match=r"'optm'.*did you mean 'optim"):
        from_dict({"optm": {"lr": 1.0}}, "x.yaml")
    with pytest.raises(ConfigError, match="key=value"):
        apply_overrides({}, ["optim.lr"])


def test_file_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim:\n  lrr: 0.1\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml.*optim\.lr"):
        load_config(bad)
    with pytest.raises(ConfigError, match="not found.*nope.yaml.*shipped configs"):
        load_config(tmp_path / "nope.yaml")


def test_round_trip_through_yaml(tmp_path):
    cfg = load_config(REPO_CONFIGS / "pascal_context_vit_b.yaml", ["model.overrides.grad_checkpointing=true"])
    write_config(cfg, tmp_path / "config.yaml")
    raw = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert raw == to_dict(cfg)
    assert load_config(tmp_path / "config.yaml") == cfg


@pytest.mark.parametrize("typed, meant", [
    ("optim.learning_rate", "optim.lr"),  # the docs' example: initials of the last component
    ("optim.wd", "optim.weight_decay"),
    ("train.lr", "optim.lr"),  # the last component outweighs the section
    ("batch_size", "train.batch_size"),
    ("train.checkpoint_evry", "train.checkpoint_every"),
    ("optm", "optim"),
])
def test_suggestions_weigh_the_last_key_component_first(typed, meant):
    assert closest_key(typed, ["model", "data", "optim", "train", *_all_keys()]) == meant
    with pytest.raises(ConfigError, match=f"did you mean '{meant}'"):
        load_config(None, [f"{typed}=1"])


def test_every_range_rule_names_a_key_and_holds_for_the_defaults_and_shipped_configs():
    assert set(CHECKS) <= set(_all_keys())
    defaults = to_dict(Config())
    for key, (ok, _) in CHECKS.items():
        value = defaults["seed"] if key == "seed" else defaults[key.split(".")[0]][key.split(".")[1]]
        assert ok(tuple(value) if isinstance(value, list) else value), key
    for name in SHIPPED:  # each file's values pass the same checks
        load_config(REPO_CONFIGS / f"{name}.yaml")


def test_a_range_mistake_in_a_file_names_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  log_every: 0\n")
    with pytest.raises(ConfigError, match=r"'train\.log_every' in .*bad\.yaml must be a positive integer, got 0"):
        load_config(bad)
