"""Training on partially labelled data: a task unlabelled in every sample leaves its head exactly at its initial values
while the others train (with fixed, a loss-level and a gradient-level weighting), and 2 gloo processes train a
random-labels dataset as 1 process does on the same global batch."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from taskprompter.config import load_config
from taskprompter.data.partial import random_labels, record_path, write_labelled_tasks
from taskprompter.engine.evaluate import task_channels
from taskprompter.engine.setup import build_model
from taskprompter.engine.train import train

FIVE = ["semseg", "human_parts", "sal", "normals", "edge"]


@pytest.fixture(scope="module")
def root(training_pascal_root):
    return training_pascal_root  # conftest: 12 scenes of 64x64, seed 1, shared by the training tests


def _train_ids(root) -> list[str]:
    return (root / "ImageSets" / "Context" / "train.txt").read_text().split()


def _records(run):
    return [r for r in (json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines())
            if r["split"] == "train"]


@pytest.mark.parametrize("weighting", ["fixed", "famo", "upgrad"])
def test_a_task_labelled_nowhere_leaves_its_head_at_its_initial_values(root, tmp_path, weighting):
    record = tmp_path / "no_edge.json"
    write_labelled_tasks(record, {"train": {i: [t for t in FIVE if t != "edge"] for i in _train_ids(root)}})
    cfg = load_config("synthetic_tiny", [f"data.root={root}", f"train.out_dir={tmp_path / 'run'}",
                                         "train.progress=false", "data.max_val_samples=2", "optim.max_iters=3",
                                         "train.log_every=1", f"data.labelled_tasks={record}",
                                         f"train.loss_weighting={weighting}"])
    result = train(cfg)
    torch.manual_seed(cfg.seed)  # the trainer's initial weights
    model = build_model(cfg, task_channels(cfg.data.format, cfg.data.tasks, cfg.data.root))
    initial = {k: v.detach() for k, v in model.named_parameters()}  # (BatchNorm's running statistics are not
    trained = load_file(str(tmp_path / "run" / "last" / "model.safetensors"))  # trained: they follow the images)
    edge_head = [k for k in initial if k.startswith("heads.edge.")]
    assert len(edge_head) >= 4 and all(torch.equal(trained[k], initial[k]) for k in edge_head)  # bit for bit
    for task in ("semseg", "normals"):  # the labelled tasks' heads trained
        assert any(not torch.equal(trained[k], initial[k]) for k in initial if k.startswith(f"heads.{task}."))
    # the edge task's decoder modules feed the other tasks (cross-task reweighting): they train, so the rule is the
    # head's, not "every parameter named edge"
    assert any(not torch.equal(trained[k], initial[k]) for k in initial if ".tasks.edge." in k)
    logged = _records(tmp_path / "run")
    assert [r["loss/edge"] for r in logged] == [0.0, 0.0, 0.0]
    assert all(r["weight/edge"] == 0.0 for r in logged) or weighting == "fixed"  # no gradient, no weight
    assert result["metrics"]["edge"]["num_samples"] == 2  # the validation split is fully labelled




def test_two_gloo_processes_train_random_labels_as_one_process(run_cli, root, tmp_path):
    """Each process's micro-batch carries its own samples' masks; the losses are normalised by the labelled pixels
    of the global batch and a head whose task has no label in the global batch gets no gradient on either process:
    losses and the trained model equal one process's."""
    ids = _train_ids(root)
    record = tmp_path / "random.json"
    write_labelled_tasks(record, {"train": random_labels(ids, FIVE, seed=3)})
    common = ["train", "--config", "synthetic_tiny", "--set", f"data.root={root}", "optim.max_iters=3",
              "train.log_every=1", "train.checkpoint_every=3", "train.progress=false", "data.max_val_samples=1",
              f"data.labelled_tasks={record}", "optim.eps=1e-3"]
    one, two = tmp_path / "one", tmp_path / "two"
    run_cli(*common, f"train.out_dir={one}")
    run_cli(*common, f"train.out_dir={two}", processes=2)
    r1, r2 = _records(one), _records(two)
    assert [r["step"] for r in r1] == [r["step"] for r in r2] == [1, 2, 3]
    for x, y in zip(r1, r2):
        for key in [k for k in x if k.startswith("loss/")]:
            assert y[key] == pytest.approx(x[key], rel=1e-4, abs=1e-6), (x["step"], key)
    a, b = load_file(str(one / "last" / "model.safetensors")), load_file(str(two / "last" / "model.safetensors"))
    worst = max((a[k].double() - b[k].double()).abs().max().item() for k in a if a[k].is_floating_point())
    assert worst < 1e-5, worst


def test_the_record_in_the_dataset_root_is_used_by_default(root, tmp_path):
    """data.labelled_tasks=auto reads <root>/labelled_tasks.json; =all trains every task on every sample."""
    import shutil

    copy = shutil.copytree(root, tmp_path / "PASCALContext")
    write_labelled_tasks(record_path(copy), {"train": {i: ["semseg"] for i in _train_ids(copy)}})
    base = ["train.progress=false", "data.max_val_samples=1", "optim.max_iters=1", "train.log_every=1",
            f"data.root={copy}"]
    train(load_config("synthetic_tiny", [*base, f"train.out_dir={tmp_path / 'auto'}"]))
    train(load_config("synthetic_tiny", [*base, f"train.out_dir={tmp_path / 'all'}", "data.labelled_tasks=all"]))
    (auto,), (full,) = _records(tmp_path / "auto"), _records(tmp_path / "all")
    assert auto["loss/normals"] == 0.0 and auto["loss/semseg"] > 0
    assert full["loss/normals"] > 0 and full["loss/semseg"] == pytest.approx(auto["loss/semseg"], rel=1e-6)
