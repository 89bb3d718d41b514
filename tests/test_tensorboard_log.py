"""TensorBoard gets more than scalars: the prediction panels of fixed validation images at every evaluation, and the
run's resolved config as hyper-parameters."""

from __future__ import annotations

import numpy as np
import pytest

from taskprompter.config import load_config
from taskprompter.engine.logging import PANEL_IMAGES
from taskprompter.engine.train import train

event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
plugin_data_pb2 = pytest.importorskip("tensorboard.plugins.hparams.plugin_data_pb2")


def test_tensorboard_gets_panels_every_evaluation_and_the_hyper_parameters(synthetic_pascal_root, tmp_path):
    """Was: TensorBoard got scalars only (no images, no hyper-parameters)."""
    out = tmp_path / "run"
    cfg = load_config("synthetic_tiny", [f"data.root={synthetic_pascal_root}", f"train.out_dir={out}",
                                         "train.progress=false", "optim.max_iters=4", "train.eval_every=2",
                                         "train.log_every=2", "train.checkpoint_every=100", "data.size=[64, 96]"])
    train(cfg)
    events = event_accumulator.EventAccumulator(str(out / "tb"), size_guidance={"images": 0, "tensors": 0})
    events.Reload()
    panels = sorted(events.Tags()["images"])
    assert panels == [f"val/panel/{i:06d}" for i in (4, 5)][:PANEL_IMAGES]  # the split's first images, fixed
    for tag in panels:
        images = events.Images(tag)
        assert [im.step for im in images] == [2, 4]  # every evaluation
        assert images[-1].width > 600 and images[-1].height > 200  # a panel: image, tasks, ground truth
    assert "val/semseg/mIoU" in events.Tags()["scalars"]

    content = events.PluginTagToContent("hparams")
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    session = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    hparams = session.session_start_info.hparams
    assert hparams["optim.lr"].number_value == pytest.approx(cfg.optim.lr)
    assert hparams["model.name"].string_value == "taskprompter_tiny"
    assert hparams["data.tasks"].string_value == '["semseg", "human_parts", "sal", "normals", "edge"]'
    assert {"optim.max_iters", "train.batch_size", "seed"} <= {h.name for h in experiment.hparam_infos}
    metrics = {m.name.tag for m in experiment.metric_infos}
    assert {"val/semseg/mIoU", "val/human_parts/mIoU", "val/sal/maxF", "val/normals/mean", "val/edge/odsF"} == metrics
    assert np.isfinite(events.Scalars("val/semseg/mIoU")[-1].value)
