"""Checkpoints: exact round trip, weights_only state, atomic directory swap (simulated and with a real kill -9),
clear errors for a checkpoint that does not fit the model."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch
from torch import nn

from taskprompter.engine import checkpoint as ck
from taskprompter.errors import CheckpointError
from taskprompter.model.io import load_state_exactly


class StandIn(nn.Module):
    def __init__(self, *, width: int = 4) -> None:
        super().__init__()
        self.init_kwargs = {"width": width}
        self.lin = nn.Linear(width, 3)
        self.bn = nn.BatchNorm1d(3)


def _meta(step: int) -> dict:
    return {"step": step, "model": {"class": "tests.stand_in", "init_kwargs": {}}}


def test_round_trip_is_exact_and_state_is_weights_only(tmp_path):
    torch.manual_seed(0)
    model = StandIn()
    model.bn.running_mean.normal_()
    opt = torch.optim.Adam(model.parameters(), lr=0.1)
    model.lin(torch.randn(2, 4)).sum().backward()
    opt.step()
    rng = torch.get_rng_state()
    ck.save_checkpoint(tmp_path / "last", model=model, meta=_meta(5),
                       train_state={"step": 5, "optimizer": opt.state_dict(), "rng": {"torch": rng}})
    loaded = ck.load_checkpoint(tmp_path)  # a run directory resolves to its `last`
    assert loaded.path == tmp_path / "last" and loaded.step == 5
    state = loaded.state_dict()
    for k, v in model.state_dict().items():
        assert torch.equal(state[k], v), k
    ts = torch.load(tmp_path / "last" / ck.STATE, weights_only=True)  # no arbitrary unpickling needed
    opt2 = torch.optim.Adam(StandIn().parameters(), lr=0.1)
    opt2.load_state_dict(ts["optimizer"])
    assert torch.equal(opt2.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])
    assert torch.equal(ts["rng"]["torch"], rng)


def test_mismatch_names_missing_unexpected_and_shapes():
    model = StandIn(width=4)
    state = StandIn(width=5).state_dict()
    state["extra.weight"] = torch.zeros(1)
    del state["bn.bias"]
    with pytest.raises(CheckpointError) as err:
        load_state_exactly(model, state, source="ckpt/model.safetensors")
    msg = str(err.value)
    assert "ckpt/model.safetensors" in msg
    assert "missing in checkpoint: bn.bias" in msg
    assert "unexpected in checkpoint: extra.weight" in msg
    assert "lin.weight (3, 5) in file vs (3, 4) in model" in msg


def test_missing_checkpoint_is_a_checkpoint_error(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        ck.load_checkpoint(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="not a checkpoint"):
        ck.load_checkpoint(tmp_path / "empty")


@pytest.mark.parametrize("fail_at", [1, 2])
def test_failure_at_any_rename_leaves_a_complete_checkpoint(tmp_path, monkeypatch, fail_at):
    """Interrupt the swap at its first or second os.replace : a reader finds step 1 or 2, never a mix."""
    model = StandIn()
    nn.init.constant_(model.lin.weight, 1.0)
    ck.save_checkpoint(tmp_path / "last", model=model, meta=_meta(1))
    nn.init.constant_(model.lin.weight, 2.0)
    calls = {"n": 0}
    real_replace = os.replace

    def flaky(src, dst):
        calls["n"] += 1
        if calls["n"] == fail_at:
            raise KeyboardInterrupt("killed")
        return real_replace(src, dst)

    monkeypatch.setattr(ck.os, "replace", flaky)
    try:
        ck.save_checkpoint(tmp_path / "last", model=model, meta=_meta(2))
    except KeyboardInterrupt:
        pass
    monkeypatch.setattr(ck.os, "replace", real_replace)
    loaded = ck.load_checkpoint(tmp_path / "last")
    w = loaded.state_dict()["lin.weight"]
    assert torch.all(w == float(loaded.step)), (loaded.path, loaded.step)
    # and the next save recovers the normal layout
    ck.save_checkpoint(tmp_path / "last", model=model, meta=_meta(3))
    assert ck.load_checkpoint(tmp_path / "last").step == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last"]


WRITER = textwrap.dedent("""
    import sys, torch
    from torch import nn
    from taskprompter.engine.checkpoint import save_checkpoint
    model = nn.Linear(256, 256)
    out = sys.argv[1]
    step = 0
    while True:
        step += 1
        nn.init.constant_(model.weight, float(step))
        nn.init.constant_(model.bias, float(step))
        save_checkpoint(out, model=model, meta={"step": step}, train_state={"step": step})
        if step == 1:
            print("ready", flush=True)
""")


def test_kill_9_during_repeated_saves_never_corrupts(tmp_path):
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    target = tmp_path / "run" / "last"
    for delay in (0.05, 0.13, 0.31):
        proc = subprocess.Popen([sys.executable, str(script), str(target)], stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(delay)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        loaded = ck.load_checkpoint(target)
        state = loaded.state_dict()
        assert loaded.step >= 1
        assert torch.all(state["weight"] == float(loaded.step)) and torch.all(state["bias"] == float(loaded.step))
        assert loaded.train_state()["step"] == loaded.step


def test_converted_model_directory_loads(tmp_path):
    """`taskprompter convert` writes model.safetensors + config.yaml {preset, model: kwargs}: eval/predict read it."""
    from taskprompter.model.build import build_model

    model = build_model("taskprompter_tiny", tasks={"semseg": 21, "edge": 1})
    model.save_pretrained(tmp_path / "converted", preset="taskprompter_tiny")
    loaded, _ = ck.load_model(tmp_path / "converted")
    assert loaded.task_names == ["semseg", "edge"]
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
