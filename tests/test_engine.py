"""The training loop in-process: a few steps lower the loss; a non-finite loss stops with step and task named and
keeps the last good checkpoint; train.amp is honoured on the CPU and checked."""

from __future__ import annotations

import json
import logging
from dataclasses import replace

import pytest
import torch
import yaml

from taskprompter.config import load_config
from taskprompter.data.sampling import StepBatches
from taskprompter.engine.setup import amp_settings
from taskprompter.engine.train import NonFiniteLossError, train


@pytest.fixture(scope="module")
def root(training_pascal_root):
    return training_pascal_root  # conftest: 12 scenes of 64x64, seed 1, shared by the training tests



def _cfg(root, out, *extra):
    return load_config("synthetic_tiny", [f"data.root={root}", f"train.out_dir={out}", "train.progress=false",
                                          "data.max_val_samples=2", *extra])


def test_a_few_steps_lower_the_loss(root, tmp_path, monkeypatch):
    # one fixed batch, no augmentation: the loss of the same 4 images must fall
    cfg = _cfg(root, tmp_path / "run", "optim.max_iters=25", "train.log_every=1", "train.checkpoint_every=100",
               "data.scale_range=[1.0, 1.0]", "data.flip=false", "data.photometric=false", "optim.schedule=constant",
               "train.batch_size=4")
    monkeypatch.setattr(StepBatches, "_index", lambda self, position: position % 4)  # samples 0-3 every step
    result = train(cfg)
    records = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss/total"] for r in records if r["split"] == "train"]
    assert len(losses) == 25
    assert sum(losses[-3:]) / 3 < 0.7 * sum(losses[:3]) / 3, losses
    assert result["step"] == 25 and set(result["metrics"]) == set(cfg.data.tasks)
    assert (tmp_path / "run" / "config.yaml").is_file() and (tmp_path / "run" / "git_sha.txt").is_file()
    assert load_config(tmp_path / "run" / "config.yaml") == cfg  # the resolved config reproduces the run
    assert yaml.safe_load((tmp_path / "run" / "last" / "checkpoint.yaml").read_text())["step"] == 25
    assert (tmp_path / "run" / "best" / "model.safetensors").is_file()


def test_non_finite_loss_names_step_and_task_and_keeps_the_checkpoint(root, tmp_path):
    cfg = _cfg(root, tmp_path / "run", "optim.max_iters=10", "optim.lr=1e30", "optim.grad_clip=0",
               "train.checkpoint_every=1", "optim.schedule=constant")
    with pytest.raises(NonFiniteLossError) as err:
        train(cfg)
    msg = str(err.value)
    assert "non-finite loss at step 2 in task(s) " in msg
    assert (f"training stopped, the last good checkpoint is {tmp_path / 'run' / 'last'} (step 1); resume with: "
            f"taskprompter train --config {tmp_path / 'run' / 'config.yaml'} --resume after lowering optim.lr") in msg
    assert any(t in msg.split("task(s) ")[1].split(" (")[0] for t in cfg.data.tasks)
    meta = yaml.safe_load((tmp_path / "run" / "last" / "checkpoint.yaml").read_text())
    assert meta["step"] == 1


def test_amp_is_honoured_on_cpu_and_checked():
    cfg = load_config("synthetic_tiny", ["train.amp=bf16"])  # bf16 autocast on the CPU too (tests/test_precision.py)
    assert amp_settings(cfg, torch.device("cpu"), logging.getLogger("t")) == (torch.bfloat16, False)
    assert amp_settings(load_config("synthetic_tiny"), torch.device("cpu"), logging.getLogger("t")) == (None, False)
    assert amp_settings(load_config("synthetic_tiny", ["train.amp=fp16"]), torch.device("cuda"),
                        logging.getLogger("t")) == (torch.float16, True)
    from taskprompter.errors import ConfigError

    with pytest.raises(ConfigError, match="'train.amp' in --set train.amp=fp8 must be one of auto, bf16, fp16, off"):
        load_config("synthetic_tiny", ["train.amp=fp8"])
    cfg = load_config("synthetic_tiny")
    with pytest.raises(ConfigError, match="train.amp 'fp8'"):  # a Config built in Python is checked where it is read
        amp_settings(replace(cfg, train=replace(cfg.train, amp="fp8")), torch.device("cpu"), logging.getLogger("t"))


def test_pretrained_vit_weights_load_into_the_encoder(tmp_path):
    """model.pretrained: a timm-named ViT file initialises every encoder weight except the prompts."""
    from safetensors.torch import save_file

    from taskprompter.engine.setup import build_model, load_pretrained
    from taskprompter.errors import ConfigError

    cfg = load_config("synthetic_tiny")
    tasks = {"semseg": 21, "edge": 1}
    torch.manual_seed(1)
    donor = build_model(cfg, tasks).backbone.state_dict()
    vit = {k: v for k, v in donor.items() if k != "prompts" and ".attn.channel_" not in k}
    save_file(vit, str(tmp_path / "vit.safetensors"))
    torch.manual_seed(2)
    model = build_model(cfg, tasks)
    load_pretrained(model, str(tmp_path / "vit.safetensors"), logging.getLogger("t"))
    own = model.backbone.state_dict()
    assert all(torch.equal(own[k], v) for k, v in vit.items())
    assert not torch.equal(own["prompts"], donor["prompts"])  # prompts keep their own initialisation
    with pytest.raises(ConfigError, match="ViT weights not found: .*missing.safetensors.*model.pretrained=null"):
        load_pretrained(model, str(tmp_path / "missing.safetensors"), logging.getLogger("t"))
