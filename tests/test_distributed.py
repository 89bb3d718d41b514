"""torchrun with 2 gloo processes on the CPU equals one process on the same global batch, and `eval` under torchrun
counts every sample once (its metrics equal the single-process ones)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
from safetensors.torch import load_file

from taskprompter.data.synthetic import generate


@pytest.fixture(scope="module")
def nyud_root(tmp_path_factory):
    # NYUD-format synthetic scenes label every pixel, so per-process loss normalisation equals the global one;
    # 15 scenes = 12 train + 3 val
    return generate(tmp_path_factory.mktemp("nyud") / "NYUDv2", format="nyud", num=15, size=(64, 64), seed=3)


def _env():
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONHASHSEED="0")
    env.pop("RANK", None)
    return env


def _common(root, out):
    return ["--config", "synthetic_tiny", "--set", "data.format=nyud", f"data.root={root}",
            "data.tasks=[semseg, depth, normals, edge]", "data.scale_range=[1.0, 1.0]", "optim.max_iters=3",
            "train.batch_size=4", "train.checkpoint_every=3", "train.log_every=1", "train.progress=false",
            "data.max_val_samples=3", f"train.out_dir={out}",
            "optim.eps=1e-3"]  # conv biases before BatchNorm have zero true gradient; a larger Adam eps keeps their
    #                           rounding-noise gradients from being normalised into +-lr steps that differ per run


def _torchrun(*args):
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
            "-m", "taskprompter", *args]


def _run(cmd):
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_two_gloo_processes_equal_one_process(nyud_root, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    _run([sys.executable, "-m", "taskprompter", "train", *_common(nyud_root, one)])
    _run(_torchrun("train", *_common(nyud_root, two)))

    def records(run):
        return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]

    train1 = [r for r in records(one) if r["split"] == "train"]
    train2 = [r for r in records(two) if r["split"] == "train"]
    assert [r["step"] for r in train1] == [r["step"] for r in train2] == [1, 2, 3]
    # step 1 runs on identical weights: the loss over the same 4 samples must match
    for key in ("loss/total", "loss/semseg", "loss/depth", "loss/normals", "loss/edge"):
        assert train2[0][key] == pytest.approx(train1[0][key], rel=1e-5, abs=1e-6), key
    w1, w2 = load_file(str(one / "last" / "model.safetensors")), load_file(str(two / "last" / "model.safetensors"))
    assert w1.keys() == w2.keys()
    worst = max((w1[k].double() - w2[k].double()).abs().max().item() for k in w1 if w1[k].is_floating_point())
    assert worst < 1e-5, worst  # 3 Adam steps of lr 1e-3: float summation order only (BatchNorm stats included)

    # evaluation of one checkpoint: 1 process vs 2 processes (3 samples -> shards of 2 and 1)
    _run([sys.executable, "-m", "taskprompter", "eval", "--checkpoint", str(one / "last"), "--out",
          str(tmp_path / "e1"), "--set", "data.max_val_samples=3"])
    _run(_torchrun("eval", "--checkpoint", str(one / "last"), "--out", str(tmp_path / "e2"), "--set",
                   "data.max_val_samples=3"))
    m1 = json.loads((tmp_path / "e1" / "metrics.json").read_text())
    m2 = json.loads((tmp_path / "e2" / "metrics.json").read_text())
    assert m1["num_samples"] == m2["num_samples"] == 3
    for task, values in m1["metrics"].items():
        for k, v in values.items():
            assert m2["metrics"][task][k] == pytest.approx(v, rel=1e-6, abs=1e-6), (task, k)  # summation order


def test_probe_finds_parameters_without_gradient():
    """DDP needs find_unused_parameters exactly when a branch is dead (e.g. an ablation switch)."""
    import torch
    from torch import nn

    from taskprompter.engine.distributed import parameters_without_gradient

    class Dead(nn.Module):
        img_size = (4, 4)

        def __init__(self) -> None:
            super().__init__()
            self.used, self.dead, self.bn = nn.Conv2d(3, 2, 1), nn.Conv2d(3, 2, 1), nn.BatchNorm2d(2)

        def forward(self, x):
            self.dead(x)  # computed, never consumed
            return {"semseg": self.bn(self.used(x))}

    model = Dead().train()
    before = model.bn.running_mean.clone()
    assert parameters_without_gradient(model, torch.device("cpu")) == ["dead.weight", "dead.bias"]
    assert model.training and torch.equal(model.bn.running_mean, before)  # eval-mode probe: statistics untouched
    assert all(p.grad is None for p in model.parameters())


# conv biases right before a BatchNorm have a true gradient of 0: Adam turns their rounding noise into +-lr steps
# that BatchNorm cancels exactly (and that shift the running means it keeps); they are compared through the
# outputs and losses, everything else weight by weight
CANCELLED_BY_BN = re.compile(r"(fuse\.1\.bias|mt_proj\.0\.bias|fuse\.2\.running_mean|mt_proj\.1\.running_mean)$")


@pytest.fixture(scope="module")
def pascal_root(tmp_path_factory):
    """PASCAL-format scenes: images without people are all-ignore for human parts, so valid-pixel counts differ
    between processes and micro-batches -- the case where per-process normalisation goes wrong."""
    return generate(tmp_path_factory.mktemp("pascal") / "PASCALContext", format="pascal_context", num=20,
                    size=(64, 64), seed=1)


def _shipped(root, out, *sets):
    """The shipped config with its default augmentation and optimiser; only the run's length and logging set."""
    return ["--config", "synthetic_tiny", "--set", f"data.root={root}", "optim.max_iters=3", "train.log_every=1",
            "train.checkpoint_every=3", "train.progress=false", "data.max_val_samples=2", f"train.out_dir={out}",
            *sets]


def _train_records(run):
    return [r for r in (json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines())
            if r["split"] == "train"]


def _assert_same_training(a, b, *, running_stats: bool = True):
    ra, rb = _train_records(a), _train_records(b)
    assert [r["step"] for r in ra] == [r["step"] for r in rb] == [1, 2, 3]
    for x, y in zip(ra, rb, strict=True):  # every step, every task: the same loss over the same global batch
        for key in [k for k in x if k.startswith("loss/")]:
            assert y[key] == pytest.approx(x[key], rel=1e-5, abs=1e-6), (x["step"], key)
    wa, wb = load_file(str(a / "last" / "model.safetensors")), load_file(str(b / "last" / "model.safetensors"))
    assert wa.keys() == wb.keys()
    compared = [k for k in wa if wa[k].is_floating_point() and not CANCELLED_BY_BN.search(k)
                and (running_stats or "running_" not in k)]
    worst = max((wa[k].double() - wb[k].double()).abs().max().item() for k in compared)
    assert worst < 5e-4, worst  # 3 AdamW steps of lr 1e-3 from equal gradients (rounding only; was 4e-3 apart)


def test_two_processes_train_like_one_with_the_shipped_config(pascal_root, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    _run([sys.executable, "-m", "taskprompter", "train", *_shipped(pascal_root, one)])
    _run(_torchrun("train", *_shipped(pascal_root, two)))
    _assert_same_training(one, two)


def test_accumulated_micro_batches_train_like_processes(pascal_root, tmp_path):
    """1 process x 2 micro-batches = 2 processes x 1 micro-batch (without sync BN, so that both normalise
    activations per micro-batch -- BatchNorm cannot see across accumulated micro-batches)."""
    acc, two = tmp_path / "acc", tmp_path / "two"
    _run([sys.executable, "-m", "taskprompter", "train", *_shipped(pascal_root, acc, "train.accum_steps=2")])
    _run(_torchrun("train", *_shipped(pascal_root, two, "train.sync_bn=false")))
    _assert_same_training(acc, two, running_stats=False)  # each process keeps its own running statistics


def test_released_local_normalisation_differs_between_process_counts(pascal_root, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    _run([sys.executable, "-m", "taskprompter", "train", *_shipped(pascal_root, one, "train.loss_normalization=local",
                                                                   "optim.max_iters=1")])
    _run(_torchrun("train", *_shipped(pascal_root, two, "train.loss_normalization=local", "optim.max_iters=1")))
    parts = [_train_records(r)[0]["loss/human_parts"] for r in (one, two)]
    assert abs(parts[0] - parts[1]) > 1e-2 * parts[0], parts
