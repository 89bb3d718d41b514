"""The benchmark verb: parity gate, derived columns, memory measurement, CSV; and the exactness of the memory options
it measures (grad_checkpointing, the efficient path's selective recomputation)."""

from __future__ import annotations

import argparse
import csv
import datetime
import math

import pytest
import torch

from taskprompter import bench
from taskprompter.bench import BenchConfig, add_ratios, check_parity, relative_error, summarize
from taskprompter.cli import bench as bench_verb
from taskprompter.model.build import build_model
from taskprompter.model.profile import profile_model
from taskprompter.model.taskprompter import TaskPrompter


def bench_args(tmp_path, **kw) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    bench_verb.add_arguments(parser)
    argv = ["--preset", "taskprompter_tiny", "--batch", "2", "--repeats", "2", "--warmup", "1", "--min-time", "0",
            "--no-memory", "--matmul-size", "256", "--csv", str(tmp_path / "out.csv")]
    for k, v in kw.items():
        argv += [f"--{k.replace('_', '-')}"] + ([] if v is True else [str(v)])
    return parser.parse_args(argv)


def test_relative_error_hand_values():
    b = torch.tensor([2.0, -4.0])
    assert relative_error(torch.tensor([2.5, -4.0]), b) == pytest.approx(0.5 / 4)
    assert relative_error(b, b) == 0.0
    assert relative_error(torch.zeros(2), torch.zeros(2)) == 0.0


def test_summarize_derives_rates_from_the_median():
    cfg = BenchConfig(preset="taskprompter_tiny", mode="train", batch=2)
    row = summarize(cfg, [1.0, 3.0, 2.0], macs=10**9, rate=1e10, memory={"peak_mib": 5.0, "step_mib": 2.0},
                    sweep="main")
    assert row["sec_per_step"] == 2.0 and row["sec_min"] == 1.0 and row["sec_max"] == 3.0
    assert row["img_per_s"] == pytest.approx(1.0)
    assert row["spread_pct"] == pytest.approx(100.0)
    assert row["achieved_gmac_s"] == pytest.approx(3.0)  # 3 x forward MACs x 2 images / 2 s
    assert row["share_of_matmul_pct"] == pytest.approx(30.0)
    assert (row["img_h"], row["img_w"], row["tokens"], row["tasks"]) == (64, 64, 16, 5)
    infer = summarize(BenchConfig(preset="taskprompter_tiny", mode="infer", batch=2), [2.0], 10**9, 1e10, None, "x")
    assert infer["achieved_gmac_s"] == pytest.approx(1.0) and "peak_mib" not in infer


def test_ratios_are_against_the_naive_row_of_the_same_configuration():
    base = dict(sweep="main", preset="p", mode="train", tasks=5, img_h=64, img_w=64, batch=2)
    rows = [dict(base, impl="efficient", sec_per_step=1.0, peak_mib=60.0, step_mib=30.0),
            dict(base, impl="naive", sec_per_step=1.5, peak_mib=80.0, step_mib=40.0),
            dict(base, impl="efficient", mode="infer", sec_per_step=1.0, peak_mib=1.0, step_mib=1.0)]
    add_ratios(rows)
    assert rows[0]["speedup_vs_naive"] == pytest.approx(1.5)
    assert rows[0]["peak_ratio"] == pytest.approx(0.75) and rows[0]["step_ratio"] == pytest.approx(0.75)
    assert rows[1]["speedup_vs_naive"] == 1.0
    assert math.isnan(rows[2]["speedup_vs_naive"])  # no naive infer row


def test_macs_per_image_is_the_profile_of_the_task_subset():
    macs, params = bench.macs_per_image(BenchConfig(preset="taskprompter_tiny", tasks=2, img_size=(64, 96)))
    ref = profile_model(lambda: build_model("taskprompter_tiny", tasks={"semseg": 21, "human_parts": 7},
                                            img_size=(64, 96)))
    assert (macs, params) == (ref["macs"], ref["params"])
    full, _ = bench.macs_per_image(BenchConfig(preset="taskprompter_tiny"))
    assert full > macs


def test_parity_of_the_two_paths_on_the_tiny_model():
    errors = check_parity(BenchConfig(preset="taskprompter_tiny", batch=2))
    assert set(errors) == {"eval_outputs", "train_outputs", "gradients"}
    assert max(errors.values()) < bench.PARITY_TOL


def test_bench_exits_3_when_the_paths_disagree(tmp_path, monkeypatch, capsys):
    from taskprompter.model.prompt_block import SpatialChannelPromptAttention

    original = SpatialChannelPromptAttention._spatial_naive

    def wrong(self, q, k, v):
        out, rows = original(self, q, k, v)
        return out * 1.01, rows

    monkeypatch.setattr(SpatialChannelPromptAttention, "_spatial_naive", wrong)
    assert bench_verb.run(bench_args(tmp_path)) == 3
    assert "disagree" in capsys.readouterr().err
    assert not (tmp_path / "out.csv").exists()


def test_bench_writes_one_row_per_configuration(tmp_path, capsys):
    assert bench_verb.run(bench_args(tmp_path, tasks=2, grad_ckpt=True)) == 0
    with open(tmp_path / "out.csv") as fh:
        rows = list(csv.DictReader(fh))
    labels = [(r["impl"], r["mode"], r["grad_ckpt"]) for r in rows]
    assert labels == [("efficient", "train", "0"), ("naive", "train", "0"), ("efficient", "infer", "0"),
                      ("naive", "infer", "0"), ("efficient", "train", "1")]
    assert {r["tasks"] for r in rows} == {"2"}
    assert rows[0]["torch"] == torch.__version__ and rows[0]["date"] == datetime.date.today().isoformat()
    assert rows[0]["machine"] and rows[0]["threads"] == str(torch.get_num_threads())
    for r in rows:
        assert float(r["sec_min"]) <= float(r["sec_per_step"]) <= float(r["sec_max"])
        assert float(r["img_per_s"]) == pytest.approx(2 / float(r["sec_per_step"]), rel=1e-4)
    assert float(rows[1]["speedup_vs_naive"]) == 1.0
    assert float(rows[4]["time_vs_plain"]) == pytest.approx(
        float(rows[4]["sec_per_step"]) / float(rows[0]["sec_per_step"]), rel=1e-4)
    assert rows[0]["time_vs_plain"] == ""
    assert float(rows[0]["speedup_vs_naive"]) == pytest.approx(
        float(rows[1]["sec_per_step"]) / float(rows[0]["sec_per_step"]), rel=1e-4)
    assert "parity efficient vs naive" in capsys.readouterr().out


def test_share_is_of_the_higher_of_the_two_matmul_rates(tmp_path, monkeypatch):
    rates = iter([1e10, 2e10])  # before, after: a busy moment lowered the first
    monkeypatch.setattr(bench, "matmul_rate", lambda *a, **k: next(rates))
    assert bench_verb.run(bench_args(tmp_path, modes="infer")) == 0
    with open(tmp_path / "out.csv") as fh:
        rows = list(csv.DictReader(fh))
    for r in rows:
        assert float(r["matmul_gmac_s"]) == 20.0
        assert float(r["share_of_matmul_pct"]) == pytest.approx(100 * float(r["achieved_gmac_s"]) / 20.0, rel=1e-4)


def test_tasks_sweep_puts_table8_beside(tmp_path):
    assert bench_verb.run(bench_args(tmp_path, modes="infer")) == 0  # a run with other columns first: same file
    assert bench_verb.run(bench_args(tmp_path, sweep="tasks", tasks=2, modes="infer")) == 0
    assert [p.name for p in tmp_path.iterdir()] == ["out.csv"]
    with open(tmp_path / "out.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["sweep"] for r in rows[:2]] == ["main", "main"] and rows[0]["paper_gmacs"] == ""
    rows = rows[2:]
    assert [(r["tasks"], r["impl"]) for r in rows] == [("1", "efficient"), ("1", "naive"), ("2", "efficient"),
                                                        ("2", "naive")]
    assert [float(rows[i]["paper_gmacs"]) for i in (0, 2)] == [389, 416]
    assert [round(float(rows[i]["vitl_gmacs"])) for i in (0, 2)] == [389, 416]  # our count reproduces Table 8


def test_default_csv_name():
    path = bench.default_csv_path("cpu", root="r")
    assert path.parent.name == "r"
    assert path.name == f"cpu-{torch.__version__.split('+')[0]}-{datetime.date.today().isoformat()}.csv"


def test_memory_child_sees_activation_checkpointing():
    """Peak memory of a training step, measured in fresh processes: checkpointing keeps less (C-sized model)."""
    cfg = BenchConfig(preset="taskprompter_bench_c", batch=4, img_size=(128, 128))
    plain = bench.measure_memory(cfg)
    ckpt = bench.measure_memory(BenchConfig(**{**cfg.__dict__, "grad_checkpointing": True}))
    assert plain["peak_mib"] > plain["base_mib"] > 0
    assert plain["step_mib"] == pytest.approx(plain["peak_mib"] - plain["base_mib"])
    assert ckpt["step_mib"] < 0.7 * plain["step_mib"]


def _train_step(model: TaskPrompter, images: torch.Tensor, seed: int = 5) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    out = model.train()(images)
    sum(o.square().mean() for o in out.values()).backward()
    return out


def _assert_trains_identically(reference_kwargs: dict, other_kwargs: dict) -> dict[str, torch.Tensor]:
    """One training step (drop-path on) of two tiny models with the same weights: outputs, gradients and the whole
    state (BatchNorm statistics included) equal bit for bit. Returns the second model's state."""
    torch.manual_seed(0)
    reference = build_model("taskprompter_tiny", drop_path_rate=0.2, **reference_kwargs)
    other = build_model("taskprompter_tiny", drop_path_rate=0.2, **other_kwargs)
    other.load_state_dict(reference.state_dict())
    images = torch.randn(2, 3, 64, 64)
    a, b = _train_step(reference, images), _train_step(other, images)
    assert all(torch.equal(a[t], b[t]) for t in a)
    grads = dict(other.named_parameters())
    assert all(torch.equal(p.grad, grads[n].grad) for n, p in reference.named_parameters() if p.grad is not None)
    state = other.state_dict()
    assert all(torch.equal(v, state[k]) for k, v in reference.state_dict().items())
    return state


@pytest.mark.parametrize("impl", ["efficient", "naive"])
def test_grad_checkpointing_is_exact(impl):
    """Same outputs, gradients and BatchNorm statistics (bit for bit), drop-path on: recomputation must neither
    change the values nor update the running statistics twice."""
    state = _assert_trains_identically(dict(attention_impl=impl), dict(attention_impl=impl, grad_checkpointing=True))
    assert state["heads.semseg.mt_proj.1.num_batches_tracked"].item() == 1


def test_selective_recompute_is_exact():
    """Recomputing the decoder's and heads' cheap ops ("on") gives the same outputs, gradients and BatchNorm
    statistics, bit for bit, as storing everything ("off")."""
    _assert_trains_identically(dict(selective_recompute="off"), dict(selective_recompute="on"))


def test_selective_recompute_checkpoints_every_level_and_head(monkeypatch):
    """"on" routes each decoder level and each head through torch.utils.checkpoint with a keep-list; "off" none."""
    import taskprompter.model.decoder as decoder_mod
    import taskprompter.model.taskprompter as model_mod

    calls = []

    def counting(fn, *args, **kwargs):
        calls.append(type(fn if isinstance(fn, torch.nn.Module) else args[0]).__name__)  # level(...) / predict(head)
        return checkpoint(fn, *args, **kwargs)

    from torch.utils.checkpoint import checkpoint

    monkeypatch.setattr(decoder_mod, "checkpoint", counting)
    monkeypatch.setattr(model_mod, "checkpoint", counting)
    images = torch.randn(2, 3, 64, 64)
    for mode, expected in (("on", True), ("off", False)):
        calls.clear()
        model = build_model("taskprompter_tiny", selective_recompute=mode)
        _train_step(model, images)
        n_levels, n_tasks = len(model.decoder.levels), len(model.task_names)
        assert calls == ((["PromptDecodingLevel"] * n_levels + ["TaskHead"] * n_tasks) if expected else [])


def test_selective_recompute_auto_threshold():
    from taskprompter.model.recompute import RECOMPUTE_MIN_BYTES

    model = build_model("taskprompter_tiny").train()
    assert model._recompute(RECOMPUTE_MIN_BYTES) and not model._recompute(RECOMPUTE_MIN_BYTES - 1)
    with torch.no_grad():
        assert not model._recompute(RECOMPUTE_MIN_BYTES)  # nothing to store without gradients
    assert not model.eval()._recompute(RECOMPUTE_MIN_BYTES)
    assert not build_model("taskprompter_tiny", attention_impl="naive").train()._recompute(RECOMPUTE_MIN_BYTES)
    assert build_model("taskprompter_tiny", selective_recompute="on").train()._recompute(1)
    assert not build_model("taskprompter_tiny", selective_recompute="off").train()._recompute(RECOMPUTE_MIN_BYTES)
    with pytest.raises(ValueError, match="selective_recompute"):
        build_model("taskprompter_tiny", selective_recompute="always")


def test_efficient_training_updates_batchnorm_statistics_once():
    """The efficient path recomputes the heads' BN in backward; its running statistics must match the naive path's
    (which stores everything) after a training step."""
    torch.manual_seed(0)
    eff = build_model("taskprompter_tiny", selective_recompute="on")
    naive = build_model("taskprompter_tiny", attention_impl="naive")
    naive.load_state_dict(eff.state_dict())
    images = torch.randn(2, 3, 64, 64)
    _train_step(eff, images)
    _train_step(naive, images)
    ref = naive.state_dict()
    for k, v in eff.state_dict().items():
        if "running" in k or "num_batches" in k:
            torch.testing.assert_close(v, ref[k], rtol=1e-5, atol=1e-6)
    assert ref["heads.semseg.mt_proj.1.num_batches_tracked"].item() == 1
    before = naive.heads["semseg"].mt_proj[1].running_mean
    assert not torch.equal(before, torch.zeros_like(before))  # the statistics did move
