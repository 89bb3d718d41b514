"""The one model directory format: save_pretrained -> from_pretrained is exact for every model class and fidelity;
a config can name only registered model classes; directories of the earlier formats still load."""

from __future__ import annotations

import pytest
import torch
import yaml

import taskprompter
from taskprompter.engine.checkpoint import save_checkpoint
from taskprompter.errors import CheckpointError
from taskprompter.model import build
from taskprompter.model.build import MODEL_CLASSES, build_model, load_model
from taskprompter.model.io import CONFIG, WEIGHTS
from taskprompter.model.taskprompter import TaskPrompter
from taskprompter.model.variants import TaskSpecificEncoders


def randomised(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Every parameter and BatchNorm statistic away from its initial value, so a missed key shows."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for v in model.state_dict().values():
            if v.is_floating_point():
                v.copy_(torch.randn(v.shape, generator=gen) * 0.1 + (1.0 if v.ndim == 1 else 0.0))
    return model.eval()


def outputs(model: torch.nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        return model.eval()(x)


@pytest.mark.parametrize("fidelity", ["official", "paper"])
def test_save_then_load_gives_bit_identical_outputs(tmp_path, fidelity):
    model = randomised(build_model("taskprompter_tiny", fidelity=fidelity, tasks={"semseg": 21, "normals": 3}))
    path = model.save_pretrained(tmp_path / "m")
    assert sorted(p.name for p in path.iterdir()) == [CONFIG, WEIGHTS]
    config = yaml.safe_load((path / CONFIG).read_text())
    assert config["class"] == "TaskPrompter" and config["preset"] == "taskprompter_tiny"
    assert config["model"]["fidelity"] == fidelity
    loaded = TaskPrompter.from_pretrained(path)
    assert not loaded.training and loaded.options == model.options
    x = torch.randn(2, 3, 64, 64)
    a, b = outputs(model, x), outputs(loaded, x)
    assert list(a) == list(b) == ["semseg", "normals"]
    assert all(torch.equal(a[t], b[t]) for t in a)
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in model.state_dict().items())


def test_every_registered_class_round_trips(tmp_path):
    te = randomised(TaskSpecificEncoders(tasks={"semseg": 21, "edge": 1}, **{
        k: v for k, v in build.preset_kwargs("taskprompter_tiny").items() if k != "tasks"}))
    te.save_pretrained(tmp_path / "te")
    loaded = load_model(tmp_path / "te")
    assert type(loaded) is TaskSpecificEncoders
    x = torch.randn(1, 3, 64, 64)
    a, b = outputs(te, x), outputs(loaded, x)
    assert all(torch.equal(a[t], b[t]) for t in a)
    assert set(MODEL_CLASSES.values()) >= {TaskPrompter, TaskSpecificEncoders}
    with pytest.raises(CheckpointError, match="holds a TaskSpecificEncoders, not a TaskPrompter"):
        TaskPrompter.from_pretrained(tmp_path / "te")


def test_overrides_without_weights_apply_on_load(tmp_path):
    model = randomised(build_model("taskprompter_tiny"))
    model.save_pretrained(tmp_path / "m")
    naive = taskprompter.load_model(tmp_path / "m", attention_impl="naive")
    assert naive.attention_impl == "naive"
    x = torch.randn(1, 3, 64, 64)
    a, b = outputs(model, x), outputs(naive, x)
    assert all(torch.allclose(a[t], b[t], atol=1e-5 * a[t].abs().max(), rtol=0) for t in a)  # fp32 rounding


@pytest.mark.parametrize("name", ["build_model", "taskprompter.model.build.build_model", "os.system", "Module"])
def test_a_class_outside_the_registry_is_refused_before_anything_is_called(tmp_path, monkeypatch, name):
    build_model("taskprompter_tiny").save_pretrained(tmp_path / "m")
    config = yaml.safe_load((tmp_path / "m" / CONFIG).read_text())
    config["class"] = name
    (tmp_path / "m" / CONFIG).write_text(yaml.safe_dump(config))
    calls = []
    monkeypatch.setattr(build, "build_model", lambda *a, **k: calls.append((a, k)))
    monkeypatch.setattr(build, "preset_kwargs", lambda *a, **k: calls.append((a, k)))
    with pytest.raises(CheckpointError, match="not one of the registered model classes"):
        load_model(tmp_path / "m")
    with pytest.raises(CheckpointError, match="not a TaskPrompter"):
        TaskPrompter.from_pretrained(tmp_path / "m")
    assert calls == []


def test_legacy_training_checkpoint_and_convert_output_load(tmp_path):
    model = randomised(build_model("taskprompter_tiny", tasks={"semseg": 21, "edge": 1}))
    # a training checkpoint written before the one format: the model spec lived in checkpoint.yaml
    save_checkpoint(tmp_path / "run" / "last", model=model, meta={"step": 3})
    (tmp_path / "run" / "last" / CONFIG).unlink()
    meta = yaml.safe_load((tmp_path / "run" / "last" / "checkpoint.yaml").read_text())
    meta["model"] = {"class": "taskprompter.model.taskprompter.TaskPrompter", "preset": "taskprompter_tiny",
                     "init_kwargs": dict(model.init_kwargs)}
    (tmp_path / "run" / "last" / "checkpoint.yaml").write_text(yaml.safe_dump(meta))
    # the first `convert` output: config.yaml {preset, model: kwargs}, no class
    model.save_pretrained(tmp_path / "converted")
    config = yaml.safe_load((tmp_path / "converted" / CONFIG).read_text())
    (tmp_path / "converted" / CONFIG).write_text(yaml.safe_dump({"preset": None, "model": config["model"]}))
    x = torch.randn(1, 3, 64, 64)
    want = outputs(model, x)
    for path in (tmp_path / "run", tmp_path / "converted"):
        got = outputs(load_model(path), x)
        assert all(torch.equal(want[t], got[t]) for t in want), path


def test_unreadable_directories_name_the_file(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_model(tmp_path / "none")
    build_model("taskprompter_tiny").save_pretrained(tmp_path / "m")
    (tmp_path / "m" / CONFIG).write_text("model: [unclosed")
    with pytest.raises(CheckpointError, match=CONFIG):
        load_model(tmp_path / "m")
    build_model("taskprompter_tiny").save_pretrained(tmp_path / "m")
    (tmp_path / "m" / WEIGHTS).write_bytes(b"not safetensors")
    with pytest.raises(CheckpointError, match=WEIGHTS):
        load_model(tmp_path / "m")
    build_model("taskprompter_tiny").save_pretrained(tmp_path / "m")
    config = yaml.safe_load((tmp_path / "m" / CONFIG).read_text())
    config["model"]["no_such_argument"] = 1
    (tmp_path / "m" / CONFIG).write_text(yaml.safe_dump(config))
    with pytest.raises(CheckpointError, match="no_such_argument"):
        load_model(tmp_path / "m")
