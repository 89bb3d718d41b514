"""The table of dataset conventions (`taskprompter.tasks`): its entries agree with themselves and with the released
protocol, every consumer reads it (meters, channels, pictures, best checkpoint), and a new entry is enough."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from taskprompter import visualize as vis
from taskprompter.engine.evaluate import best_metric_spec, build_task_meters, task_channels
from taskprompter.errors import ConfigError
from taskprompter.metrics import build_meter, build_meters
from taskprompter.tasks import (
    DATASET_SPECS,
    DENSE_TASKS,
    LOWER_IS_BETTER,
    TASKS,
    DatasetSpec,
    higher_is_better,
    ordered_tasks,
)


@pytest.mark.parametrize("name", list(DATASET_SPECS))
def test_every_dataset_entry_is_consistent(name):
    spec = DATASET_SPECS[name]
    assert spec.name == name
    assert list(spec.tasks) == ordered_tasks(spec.tasks)  # known tasks, released order
    assert all(isinstance(c, int) and c >= 1 for c in spec.tasks.values())
    assert set(spec.class_names) == set(spec.palettes) <= set(spec.tasks)
    for task, names in spec.class_names.items():
        assert len(names) == spec.tasks[task] == len(set(names))
        assert spec.palettes[task].shape == (spec.tasks[task], 3) and spec.palettes[task].dtype == np.uint8


def test_the_released_protocol():
    pascal, nyud = DATASET_SPECS["pascal_context"], DATASET_SPECS["nyud"]
    assert pascal.tasks == {"semseg": 21, "human_parts": 7, "sal": 2, "normals": 3, "edge": 1}
    assert nyud.tasks == {"semseg": 40, "depth": 1, "normals": 3, "edge": 1}
    assert pascal.boundary_max_dist == 0.0075 and nyud.boundary_max_dist == 0.011
    assert pascal.class_names["semseg"][15] == "person" and nyud.class_names["semseg"][0] == "wall"


@pytest.mark.parametrize("name", list(DATASET_SPECS))
def test_meters_report_the_tables_conventions(name):
    spec = DATASET_SPECS[name]
    dense = [t for t in spec.tasks if TASKS[t].kind != "detect"]  # 3-D detection is scored by mDS (issue 14)
    for meters in (build_meters(dense, dataset=name), build_task_meters(spec.tasks, name)):
        assert list(meters) == dense
        if "edge" in meters:
            assert meters["edge"].max_dist == spec.boundary_max_dist
        for task, names in spec.class_names.items():
            if task not in dense:
                continue
            assert meters[task].num_classes == spec.tasks[task]
            assert meters[task].class_names == tuple(n.replace(" ", "_") for n in names)
    assert task_channels(name, list(reversed(spec.tasks))) == spec.tasks


def test_tasks_does_not_import_the_data_package():
    # the readers import the table: the table must not import them back
    code = "import sys, taskprompter.tasks; assert 'taskprompter.data' not in sys.modules, sorted(sys.modules)"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_an_inconsistent_entry_is_refused():
    with pytest.raises(ConfigError, match="order"):
        DatasetSpec(name="x", tasks={"edge": 1, "semseg": 2}, class_names={}, palettes={}, boundary_max_dist=0.01)
    with pytest.raises(ConfigError, match="3 class names"):
        DatasetSpec(name="x", tasks={"semseg": 2}, class_names={"semseg": ("a", "b", "c")},
                    palettes={"semseg": np.zeros((2, 3), np.uint8)}, boundary_max_dist=0.01)
    with pytest.raises(ConfigError, match="palettes"):
        DatasetSpec(name="x", tasks={"semseg": 2}, class_names={"semseg": ("a", "b")}, palettes={},
                    boundary_max_dist=0.01)
    with pytest.raises(ConfigError, match="normals"):  # the task fixes its own output channels
        DatasetSpec(name="x", tasks={"normals": 1}, class_names={}, palettes={}, boundary_max_dist=0.01)


def test_tasks_with_their_own_channels_agree_with_every_dataset():
    fixed = {t: spec.channels for t, spec in TASKS.items() if spec.channels is not None}
    assert fixed == {"depth": 1, "sal": 2, "normals": 3, "edge": 1}
    for spec in DATASET_SPECS.values():
        assert all(spec.tasks[t] == c for t, c in fixed.items() if t in spec.tasks), spec.name


def test_a_new_entry_is_all_it_takes(monkeypatch):
    colours = np.array([[1, 2, 3], [4, 5, 6], [7, 8, 9]], dtype=np.uint8)
    toy = DatasetSpec(name="toy", tasks={"semseg": 3, "depth": 1, "edge": 1},
                      class_names={"semseg": ("sky", "road", "car wash")}, palettes={"semseg": colours},
                      boundary_max_dist=0.02)
    monkeypatch.setitem(DATASET_SPECS, "toy", toy)
    for meters in (build_meters(["semseg", "edge"], dataset="toy"), build_task_meters({"semseg": 3, "edge": 1}, "toy")):
        assert meters["semseg"].num_classes == 3 and meters["edge"].max_dist == 0.02
        assert "iou_car_wash" in meters["semseg"].compute()
    assert task_channels("toy", ["edge", "semseg"]) == {"semseg": 3, "edge": 1}
    assert vis.class_names("semseg", 3) == ("sky", "road", "car wash")
    assert np.array_equal(vis.palette("semseg", 3), colours)
    with pytest.raises(ConfigError, match="not labelled"):
        task_channels("toy", ["normals"])


def test_custom_datasets_keep_generic_conventions():
    meters = build_task_meters({"semseg": 5, "human_parts": 7, "edge": 1}, "custom")
    assert meters["semseg"].class_names == tuple(str(c) for c in range(5))
    assert meters["human_parts"].class_names[1] == "head"  # PASCAL-Part's parts wherever there are 7
    assert meters["edge"].max_dist == DATASET_SPECS["pascal_context"].boundary_max_dist
    assert vis.class_names("semseg", 5) == tuple(f"class {i}" for i in range(5))
    assert vis.palette("semseg", 5).shape == (5, 3)


def _perfect_and_noisy(task: str, num_classes: int | None, g: torch.Generator):
    """(target, perfect output, noisy output) of a small batch, as the readers and the model give them."""
    B, H, W = 2, 24, 24
    if task in ("semseg", "human_parts", "sal"):
        target = torch.randint(0, num_classes or 2, (B, H, W), generator=g)
        perfect = 10.0 * F.one_hot(target, num_classes or 2).permute(0, 3, 1, 2).float()
        return target, perfect, torch.randn(perfect.shape, generator=g)
    if task == "depth":
        target = 0.5 + 4 * torch.rand(B, 1, H, W, generator=g)
        return target, target.clone(), target * (0.5 + torch.rand(B, 1, H, W, generator=g))
    if task == "normals":
        target = F.normalize(torch.randn(B, 3, H, W, generator=g), dim=1)
        return target, target.clone(), torch.randn(B, 3, H, W, generator=g)
    target = torch.zeros(B, H, W, dtype=torch.long)
    target[:, 6, 4:20] = target[:, 4:20, 12] = 1  # edge: a cross of boundary pixels
    return target, 20.0 * target[:, None].float() - 10.0, torch.randn(B, 1, H, W, generator=g)


@pytest.mark.parametrize("task", list(DENSE_TASKS))
def test_every_metric_direction_agrees_with_a_perfect_prediction(task):
    # a perfect prediction is at least as good as a noisy one on every metric the meter reports, in the direction
    # the table gives (a metric missing from LOWER_IS_BETTER, or wrongly in it, fails here)
    g = torch.Generator().manual_seed(0)
    num_classes = DATASET_SPECS["pascal_context"].tasks.get(task)
    target, perfect, noisy = _perfect_and_noisy(task, num_classes, g)
    scores = []
    for output in (perfect, noisy):
        meter = build_meter(task)
        meter.update(output, target)
        scores.append(meter.compute())
    best, worse = scores
    assert TASKS[task].primary in best and meter.primary == TASKS[task].primary
    for key, value in best.items():
        assert value >= worse[key] if higher_is_better(key) else value <= worse[key], key
    primary = TASKS[task].primary
    assert best[primary] != worse[primary]
    assert meter.higher_is_better == (primary not in LOWER_IS_BETTER)


def test_the_best_checkpoint_metric_reads_the_table():
    auto = best_metric_spec("auto", ["normals", "edge"])
    assert (auto.task, auto.primary, auto.higher_is_better) == ("normals", "mean", False)
    assert best_metric_spec("depth.abs_rel", ["depth"]).higher_is_better is False
    assert best_metric_spec("depth.delta1", ["depth"]).higher_is_better is True
    assert best_metric_spec("edge.odsF", ["semseg", "edge"]).higher_is_better is True
    with pytest.raises(ConfigError, match="not trained"):
        best_metric_spec("depth.rmse", ["semseg"])
