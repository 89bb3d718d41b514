"""`--resume` after a real `kill -9` of a training process ends with the same weights, bit for bit, as an
uninterrupted run (CPU, tiny model, augmentation and data order derived from (seed, step))."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml
from safetensors.torch import load_file

from taskprompter.data.synthetic import generate

STEPS = 40


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("synth") / "PASCALContext", format="pascal_context", num=12,
                    size=(64, 64), seed=5)


def _cmd(root, out, *extra):
    return [sys.executable, "-m", "taskprompter", "train", "--config", "synthetic_tiny", "--set",
            f"data.root={root}", f"train.out_dir={out}", f"optim.max_iters={STEPS}", "train.checkpoint_every=4",
            "train.log_every=2", "train.eval_every=0", "data.max_val_samples=1", "train.progress=false",
            "model.overrides.drop_path_rate=0.1",  # exercise the per-step re-seeded torch RNG too
            *extra]


def _env():
    env = dict(os.environ, OMP_NUM_THREADS="1")  # same thread count in every run: same float reductions
    env.pop("RANK", None)
    return env


def _step(out):
    try:
        return yaml.safe_load((out / "last" / "checkpoint.yaml").read_text())["step"]
    except (OSError, TypeError, KeyError, yaml.YAMLError):
        return 0


def test_kill_9_then_resume_is_bit_exact(root, tmp_path):
    full, killed = tmp_path / "full", tmp_path / "killed"
    ref = subprocess.run(_cmd(root, full), env=_env(), capture_output=True, text=True, timeout=300)
    assert ref.returncode == 0, ref.stderr[-2000:]

    proc = subprocess.Popen(_cmd(root, killed), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while _step(killed) < 8 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    time.sleep(0.03)  # land somewhere inside a later step (or a checkpoint write)
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, "the run finished before it could be killed"
    stopped_at = _step(killed)
    assert 8 <= stopped_at < STEPS

    resumed = subprocess.run(_cmd(root, killed, "--resume"), env=_env(), capture_output=True, text=True,
                             timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"resuming at step {stopped_at}" in resumed.stderr

    a, b = load_file(str(full / "last" / "model.safetensors")), load_file(str(killed / "last" / "model.safetensors"))
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, different[:5]
    sa = torch.load(full / "last" / "train_state.pt", weights_only=True)
    sb = torch.load(killed / "last" / "train_state.pt", weights_only=True)
    assert sa["step"] == sb["step"] == STEPS
    for i, state in sa["optimizer"]["state"].items():
        assert torch.equal(state["exp_avg_sq"], sb["optimizer"]["state"][i]["exp_avg_sq"])
    # the metrics log of the resumed run holds each step once, like the uninterrupted one
    steps = [line.split(",")[0] for line in (killed / "metrics.jsonl").read_text().splitlines()]
    assert steps == [line.split(",")[0] for line in (full / "metrics.jsonl").read_text().splitlines()]
