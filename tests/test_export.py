"""ONNX export: one named output per task, a dynamic batch, and onnxruntime matching eager (atol 1e-4) on batches of
1 and 3, from a converted model directory, a training checkpoint and a run directory."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from taskprompter.cli import main
from taskprompter.engine import checkpoint as ck
from taskprompter.export import check_onnx, export_onnx, load_for_export
from taskprompter.model.build import build_model

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")


def trained_like(model):
    """Move every parameter and BN statistic off its initial value, so a wrong mapping cannot pass by accident."""
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return model.eval()


def onnxruntime_outputs(path, images):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return names, dict(zip(names, session.run(None, {"images": images.numpy()})))


def assert_matches_eager(path, model, batches=(1, 3)):
    for b in batches:
        images = torch.randn(b, 3, *model.img_size, generator=torch.Generator().manual_seed(b))
        with torch.no_grad():
            eager = model(images)
        names, got = onnxruntime_outputs(path, images)
        assert names == list(eager)
        for t in eager:
            assert got[t].shape == tuple(eager[t].shape)
            np.testing.assert_allclose(got[t], eager[t].numpy(), atol=1e-4, rtol=0)


def test_converted_model_directory_exports_and_matches(tmp_path):
    torch.manual_seed(0)
    model = trained_like(build_model("taskprompter_tiny"))
    model.save_pretrained(tmp_path / "model", preset="taskprompter_tiny")
    assert main(["export", "--checkpoint", str(tmp_path / "model"), "--out", str(tmp_path / "m.onnx"),
                 "--check"]) == 0
    graph = onnx.load(str(tmp_path / "m.onnx")).graph
    assert [o.name for o in graph.output] == ["semseg", "human_parts", "sal", "normals", "edge"]
    for value in list(graph.input) + list(graph.output):  # the batch dimension is symbolic everywhere
        dims = value.type.tensor_type.shape.dim
        assert dims[0].dim_param == "batch" and not dims[0].HasField("dim_value")
    assert [d.dim_value for d in graph.input[0].type.tensor_type.shape.dim[1:]] == [3, 64, 64]
    assert_matches_eager(tmp_path / "m.onnx", model)


@pytest.mark.parametrize("use_run_dir", [False, True])
def test_training_checkpoint_exports(tmp_path, use_run_dir):
    """The engine's checkpoint (model.safetensors + checkpoint.yaml with class and init kwargs), given as the
    checkpoint directory or as the run directory that holds ``last``; a task subset in a custom output order, a
    non-square input, and the naive path (the released structure) -- its exported graph matches eager too."""
    torch.manual_seed(0)
    model = trained_like(build_model("taskprompter_tiny", tasks={"normals": 3, "semseg": 21}, img_size=(64, 96),
                                     attention_impl="naive"))
    meta = {"step": 3}
    ck.save_checkpoint(tmp_path / "run" / "last", model=model, meta=meta)
    path = tmp_path / "run" if use_run_dir else tmp_path / "run" / "last"
    loaded = load_for_export(path)
    out = export_onnx(loaded, tmp_path / "m.onnx")
    names, _ = onnxruntime_outputs(out, torch.zeros(1, 3, 64, 96))
    assert names == ["normals", "semseg"]
    assert_matches_eager(out, model)


def test_check_reports_per_batch_and_task(tmp_path):
    torch.manual_seed(0)
    model = trained_like(build_model("taskprompter_tiny", tasks={"sal": 2, "edge": 1}))
    out = export_onnx(model, tmp_path / "m.onnx", opset=18)
    diffs = check_onnx(out, model)
    assert set(diffs) == {1, 3} and all(set(d) == {"sal", "edge"} for d in diffs.values())
    assert max(v for d in diffs.values() for v in d.values()) < 1e-4
    with torch.no_grad():  # and a perturbed model is caught
        model.heads["edge"].linear_pred.bias.add_(1e-2)
    assert max(check_onnx(out, model)[3].values()) == pytest.approx(1e-2, rel=1e-3)


def test_user_errors_are_one_line(tmp_path, capsys):
    assert main(["export", "--checkpoint", str(tmp_path / "nothing"), "--out", str(tmp_path / "m.onnx")]) == 2
    assert "nothing" in capsys.readouterr().err
    torch.manual_seed(0)
    build_model("taskprompter_tiny").save_pretrained(tmp_path / "model")
    assert main(["export", "--checkpoint", str(tmp_path / "model"), "--out", str(tmp_path / "m.onnx"),
                 "--opset", "13"]) == 2
    assert "opset" in capsys.readouterr().err
