"""The Swin TaskPrompter on synthetic Cityscapes-3D scenes through the same train / eval / predict paths as the ViT:
the released pipeline (labels at half the input size, disparity with -1 invalid, semseg weight 100), both losses
fall, and the metrics and predictions come out at the right sizes."""

from __future__ import annotations

import json

import numpy as np
import pytest

from taskprompter.config import load_config
from taskprompter.data import build_dataset
from taskprompter.data.sampling import StepBatches
from taskprompter.data.synthetic import generate
from taskprompter.engine.evaluate import dataset_transform, evaluate_checkpoint, label_size
from taskprompter.engine.setup import loss_weights
from taskprompter.engine.train import train
from taskprompter.errors import ConfigError
from taskprompter.inference import Predictor

SIZE = (128, 256)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("cs3d") / "Cityscapes", format="cityscapes3d", num=8, size=SIZE, seed=3)


def _cfg(root, out, *extra):
    return load_config("synthetic_cityscapes3d", [
        f"data.root={root}", f"train.out_dir={out}", "train.progress=false", "model.name=taskprompter_swin_tiny",
        f"data.size={list(SIZE)}", "data.max_val_samples=2", "train.eval_batch_size=2", *extra])


def test_the_released_pipeline_and_loss_weights(root, tmp_path):
    cfg = _cfg(root, tmp_path / "run")
    assert label_size(cfg) == (64, 128)  # labels at half the input, as the released model predicts them
    assert loss_weights(cfg) == {"semseg": 100.0, "depth": 1.0, "3ddet": 1.0}  # 100 x CE + L1 (+ det)
    ds = build_dataset("cityscapes3d", root, "train", ["semseg", "depth"], dataset_transform(cfg, ["semseg", "depth"],
                                                                                             train=True))
    sample = ds[0]
    assert tuple(sample["image"].shape) == (3, *SIZE)
    assert tuple(sample["semseg"].shape) == (64, 128) and tuple(sample["depth"].shape) == (1, 64, 128)
    depth = sample["depth"].numpy()
    assert ((depth == -1) | (depth >= 0)).all() and (depth > 0).any()  # disparity pixels, -1 = invalid
    flipped = load_config("synthetic_cityscapes3d", ["data.flip=true"])
    with pytest.raises(ConfigError, match="data.flip=false"):
        dataset_transform(flipped, ["semseg"], train=True)


def test_training_lowers_both_losses_and_eval_and_predict_work(root, tmp_path, monkeypatch):
    cfg = _cfg(root, tmp_path / "run", "data.tasks=[semseg, depth]", "optim.max_iters=40", "train.log_every=1",
               "train.checkpoint_every=100",
               "optim.schedule=constant", "optim.warmup_iters=0", "train.batch_size=2", "optim.lr=2e-3")
    monkeypatch.setattr(StepBatches, "_index", lambda self, position: position % 2)  # samples 0-1 every step
    result = train(cfg)
    records = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    train_recs = [r for r in records if r["split"] == "train"]
    # disparity L1 falls slowly at first: the head's output starts near 0 and Adam moves its bias by ~lr per step
    for task, fraction in (("semseg", 0.75), ("depth", 0.95)):
        losses = [r[f"loss/{task}"] for r in train_recs]
        assert np.mean(losses[-3:]) < fraction * np.mean(losses[:3]), (task, losses)
    assert set(result["metrics"]) == {"semseg", "depth"}
    assert {"mIoU", "pixel_acc"} <= set(result["metrics"]["semseg"])
    assert {"rmse", "log_rmse", "abs_rel", "sq_rel"} <= set(result["metrics"]["depth"])

    record = evaluate_checkpoint(tmp_path / "run" / "last", out=tmp_path / "eval", progress=False)
    assert record["metrics"] == result["metrics"]  # the same checkpoint, the same split and protocol

    predictor = Predictor.from_pretrained(tmp_path / "run" / "last", device="cpu")
    raw = build_dataset("cityscapes3d", root, "val", ["semseg"]).load_raw(0)
    pred = predictor.predict(raw["image"][:100, :180] / 255.0)  # any size: resized, padded, restored
    assert pred.maps["semseg"].shape == (100, 180) and pred.maps["depth"].shape == (100, 180)
    assert pred.maps["semseg"].max() < 19


def test_disparity_is_drawn_near_bright_with_its_own_colour_bar():
    from taskprompter.tasks import DATASET_SPECS, dataset_of
    from taskprompter.visualize import colors

    assert dataset_of({"semseg": 19, "depth": 1}) is DATASET_SPECS["cityscapes3d"]
    assert dataset_of({"semseg": 40, "depth": 1}) is DATASET_SPECS["nyud"]
    assert colors.depth_name({"semseg": 19, "depth": 1}) == "disparity"
    assert colors.depth_name({"depth": 1}) == "depth"  # no class task: nothing says it is disparity
    ramp = np.linspace(1.0, 50.0, 64)[None].repeat(4, 0)  # left far, right near for disparity
    metres = colors.colorize("depth", ramp)
    disparity = colors.colorize("depth", ramp, depth_name="disparity")
    brightness = lambda rgb: rgb.astype(float).sum(-1).mean(0)  # noqa: E731
    assert brightness(metres)[0] > brightness(metres)[-1]  # small depth = near = bright
    assert brightness(disparity)[-1] > brightness(disparity)[0]  # large disparity = near = bright


def test_the_demo_runs_the_swin_model_on_street_scenes(tmp_path):
    from taskprompter.demo import run_demo

    report = run_demo(tmp_path / "demo", config="synthetic_cityscapes3d", num_scenes=10, steps=3,
                      overrides=["model.name=taskprompter_swin_tiny", "train.progress=false", "train.batch_size=2"])
    text = report.read_text()
    assert "synthetic cityscapes3d scenes" in text and "prompted Swin" in text
    assert "disparity errors in pixels" in text and "--config synthetic_cityscapes3d --num-scenes 10" in text
    panels = sorted((tmp_path / "demo" / "panels").glob("*.png"))
    assert len(panels) >= 1 and all(f"panels/{p.name}" in text for p in panels)


def test_reader_options_reach_the_reader_and_unknown_ones_are_named(root):
    from taskprompter.data.cityscapes3d import Cityscapes3D

    ds = build_dataset("cityscapes3d", root, "train", ["semseg"], options={"drop_empty": False, "euler": "faithful"})
    assert isinstance(ds, Cityscapes3D) and len(ds) > len(build_dataset("cityscapes3d", root, "train", ["semseg"]))
    with pytest.raises(ConfigError, match=r"\['eulr'\] are not options of the cityscapes3d reader.*euler"):
        build_dataset("cityscapes3d", root, "train", ["semseg"], options={"eulr": "fixed"})
    cfg = load_config("synthetic_cityscapes3d", ["data.reader_options.rail_track_sky=false"])
    assert cfg.data.reader_options == {"rail_track_sky": False}


def test_3d_detection_trains_and_is_scored_by_mds_in_eval_and_eval_3d(root, tmp_path):
    from taskprompter.metrics import evaluate_cityscapes3d

    cfg = _cfg(root, tmp_path / "run", "data.tasks=[semseg, depth, 3ddet]", "optim.max_iters=2",
               "train.batch_size=2", "model.overrides.detection.channels=32", "model.overrides.detection.norm_groups=8")
    result = train(cfg)
    det = result["metrics"]["3ddet"]
    assert 0.0 <= det["mDS"] <= 1.0 and 0.0 <= det["mAP"] <= 1.0 and "DS_car" in det
    record = evaluate_checkpoint(tmp_path / "run" / "last", out=tmp_path / "eval", save_predictions=tmp_path / "pred",
                                 progress=False)
    assert record["metrics"]["3ddet"] == det  # the same boxes, decoded the same way
    files = sorted((tmp_path / "pred" / "3ddet").glob("*leftImg8bit.json"))
    assert len(files) == 2  # data.max_val_samples=2, one official-format JSON per image
    assert len(list((root / "gtBbox3d" / "val").rglob("*.json"))) == 2  # the two evaluated images: the whole split
    official = evaluate_cityscapes3d(root / "gtBbox3d" / "val", tmp_path / "pred" / "3ddet")
    assert official["num_images"] == 2 and official["mDS"] == pytest.approx(det["mDS"], nan_ok=True)
    # predict: boxes decoded with the image's camera (scaled to the model's input), modal boxes in the image's pixels
    from taskprompter.cli import main
    from taskprompter.data.cityscapes3d import record_camera

    raw = build_dataset("cityscapes3d", root, "val", ["semseg", "3ddet"]).load_raw(0)
    camera = record_camera(raw["3ddet"])
    big = np.repeat(np.repeat(raw["image"], 2, 0), 2, 1) / 255.0  # the same scene at twice the size
    pred = Predictor.from_pretrained(tmp_path / "run" / "last", device="cpu", amp="off").predict(
        big, camera=camera.scaled(2, 2))
    fields = {"label", "score", "center_V", "dimensions", "rotation", "box_modal"}
    assert fields <= set(pred.boxes3d) and pred.camera == camera.scaled(2, 2)
    n = len(pred.boxes3d["label"])
    assert pred.boxes3d["center_V"].shape == (n, 3) and pred.boxes3d["rotation"].shape == (n, 4)
    if n:
        modal = pred.boxes3d["box_modal"]
        assert (modal >= 0).all() and (modal[:, [0, 2]] <= 2 * SIZE[1] - 1).all() and (modal[:, 2] >= modal[:, 0]).all()
    image_file = tmp_path / "scene.png"
    from PIL import Image

    Image.fromarray(raw["image"].astype(np.uint8)).save(image_file)
    sensor = tmp_path / "camera.json"
    sensor.write_text(json.dumps({"sensor": camera.to_json()}))
    assert main(["predict", "--checkpoint", str(tmp_path / "run" / "last"), "--input", str(image_file), "--out",
                 str(tmp_path / "preds"), "--camera", str(sensor), "--amp", "off"]) == 0
    written = json.loads((tmp_path / "preds" / "scene" / "boxes3d.json").read_text())
    assert isinstance(written["objects"], list) and (tmp_path / "preds" / "scene" / "boxes3d.png").is_file()

    wrong = _cfg(root, tmp_path / "bad", "data.tasks=[semseg, 3ddet]", "data.reader_options.euler=faithful")
    with pytest.raises(ConfigError, match="euler"):
        train(wrong)
