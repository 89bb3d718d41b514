"""The CLI end to end on a tiny synthetic tree (synth -> train -> resume -> eval -> predict), and user mistakes
reported as one line naming the problem."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from taskprompter.cli import main


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A synthetic PASCAL tree of 56x60 images (smaller than the 64x64 input: evaluation pads) and a short run."""
    base = tmp_path_factory.mktemp("cli")
    root = base / "PASCALContext"
    assert main(["synth", "--format", "pascal_context", "--out", str(root), "--num", "10", "--size", "56", "60"]) == 0
    run = base / "run"
    assert main(["train", "--config", "synthetic_tiny", "--set", f"data.root={root}", "optim.max_iters=4",
                 "train.checkpoint_every=2", "train.progress=false", "--out", str(run)]) == 0
    return root, run


def _one_line_error(capsys, argv, *needles):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    for n in needles:
        assert n in err, err
    return err


def test_train_resume_eval_predict(trained, tmp_path, capsys):
    root, run = trained
    assert {p.name for p in run.iterdir()} >= {"best", "config.yaml", "git_sha.txt", "last", "metrics.jsonl", ".lock"}
    # resume a finished run with more iterations: it continues from step 4
    assert main(["train", "--config", str(run / "config.yaml"), "--set", "optim.max_iters=6", "--resume"]) == 0
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["split"] == "val"] == [4, 6]

    preds = tmp_path / "preds"
    assert main(["eval", "--checkpoint", str(run), "--save-predictions", str(preds), "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "Semseg" in out and "mIoU" in out and "odsF" in out
    result = json.loads((tmp_path / "metrics.json").read_text())
    assert result["step"] == 6 and result["num_samples"] == 2 and result["split"] == "val"
    assert {"mIoU"} <= set(result["metrics"]["semseg"]) and "odsF" in result["metrics"]["edge"]
    assert "maxF" in result["metrics"]["sal"] and "mean" in result["metrics"]["normals"]
    ids = (root / "ImageSets" / "Context" / "val.txt").read_text().split()
    for task in ("semseg", "human_parts", "sal", "normals", "edge"):
        with Image.open(preds / task / f"{ids[0]}.png") as im:
            assert im.size == (60, 56), task  # un-padded to the original size
    edge = np.asarray(Image.open(preds / "edge" / f"{ids[0]}.png"))
    assert edge.dtype == np.uint8

    photo = next((root / "JPEGImages").iterdir())
    assert main(["predict", "--checkpoint", str(run / "last"), "--input", str(photo), "--out",
                 str(tmp_path / "p")]) == 0
    assert np.load(tmp_path / "p" / photo.stem / "semseg.npy").shape == (56, 60)


def test_user_mistakes_are_one_line(trained, tmp_path, capsys):
    root, run = trained
    _one_line_error(capsys, ["train", "--config", str(tmp_path / "missing.yaml")], "config file not found",
                    "missing.yaml")
    _one_line_error(capsys, ["train", "--config", "synthetic_tiny", "--set", "optim.lrr=1"],
                    "unknown config key 'optim.lrr'", "did you mean 'optim.lr'")
    _one_line_error(capsys, ["train", "--config", "synthetic_tiny", "--set", f"data.root={tmp_path}/nope",
                             "train.progress=false", f"train.out_dir={tmp_path}/r"], "nope")
    _one_line_error(capsys, ["eval", "--checkpoint", str(tmp_path / "nothing")], "checkpoint not found")
    # resuming with a model that does not fit the checkpoint names the differing keys and shapes
    _one_line_error(capsys, ["train", "--config", str(run / "config.yaml"), "--set", "model.overrides.final_dim=16",
                             "optim.max_iters=8", f"train.out_dir={run}", "--resume"],
                    "does not match the model", "shape differs", "in file vs")
    _one_line_error(capsys, ["train", "--config", "synthetic_tiny", "--set", f"data.root={root}",
                             "train.batch_size=3", "train.accum_steps=2", f"train.out_dir={tmp_path}/r2"],
                    "train.batch_size=3")
