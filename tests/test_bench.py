"""The benchmark verb: parity gate, derived columns, memory measurement, CSV; the bf16 and torch.compile variants
(planning, the runner's step, compile time apart from the timed rounds, the variants' parity, the header's matmul rates
and capability record); and the exactness of the memory options it measures (grad_checkpointing, the efficient path's
selective recomputation)."""

from __future__ import annotations

import argparse
import csv
import datetime
import math
from dataclasses import replace

import pytest
import torch

from taskprompter import bench
from taskprompter.bench import BenchConfig, add_ratios, check_parity, relative_error, summarize
from taskprompter.cli import bench as bench_verb
from taskprompter.errors import ConfigError
from taskprompter.model.build import build_model
from taskprompter.model.profile import profile_model
from taskprompter.model.taskprompter import TaskPrompter


def bench_args(tmp_path, **kw) -> argparse.Namespace:
    """The verb's arguments on the tiny model; fp32 only unless ``amp`` is given (the default depends on the CPU)."""
    parser = argparse.ArgumentParser()
    bench_verb.add_arguments(parser)
    kw.setdefault("amp", "off")
    argv = ["--preset", "taskprompter_tiny", "--batch", "2", "--repeats", "2", "--warmup", "1", "--min-time", "0",
            "--no-memory", "--matmul-size", "256", "--csv", str(tmp_path / "out.csv")]
    for k, v in kw.items():
        argv += [f"--{k.replace('_', '-')}"] + ([] if v is True else str(v).split())
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
    assert rows[0]["speedup_vs_naive_fp32"] == pytest.approx(1.5)
    assert rows[0]["peak_ratio"] == pytest.approx(0.75) and rows[0]["step_ratio"] == pytest.approx(0.75)
    assert rows[1]["speedup_vs_naive_fp32"] == 1.0
    assert math.isnan(rows[2]["speedup_vs_naive_fp32"])  # no naive infer row


def test_ratios_of_the_precision_and_compile_variants():
    """Every variant against the fp32 naive row and the fp32 eager efficient row; a memory variant's time against
    the efficient row of its own precision."""
    base = dict(sweep="main", preset="p", mode="train", tasks=5, img_h=64, img_w=64, batch=2, grad_ckpt=0,
                recompute="auto")
    rows = [dict(base, impl="efficient", amp="off", compile=0, sec_per_step=2.0),
            dict(base, impl="naive", amp="off", compile=0, recompute="-", sec_per_step=3.0),
            dict(base, impl="efficient", amp="bf16", compile=0, sec_per_step=1.0),
            dict(base, impl="efficient", amp="bf16", compile=1, sec_per_step=0.5),
            dict(base, impl="efficient", amp="bf16", compile=0, grad_ckpt=1, sec_per_step=1.5)]
    add_ratios(rows)
    assert [r["speedup_vs_naive_fp32"] for r in rows] == pytest.approx([1.5, 1.0, 3.0, 6.0, 2.0])
    assert [rows[i]["speedup_vs_efficient_fp32"] for i in (0, 2, 3, 4)] == pytest.approx([1.0, 2.0, 4.0, 4 / 3])
    assert "speedup_vs_efficient_fp32" not in rows[1]
    assert rows[4]["time_vs_plain"] == pytest.approx(1.5)  # against efficient+bf16, not fp32
    assert not any("time_vs_plain" in r for r in rows[:4])


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
    assert bench_verb.run(bench_args(tmp_path, tasks=2, grad_ckpt=True)) == 0  # fp32 only
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
    assert float(rows[1]["speedup_vs_naive_fp32"]) == 1.0
    assert float(rows[4]["time_vs_plain"]) == pytest.approx(
        float(rows[4]["sec_per_step"]) / float(rows[0]["sec_per_step"]), rel=1e-4)
    assert rows[0]["time_vs_plain"] == ""
    assert float(rows[0]["speedup_vs_naive_fp32"]) == pytest.approx(
        float(rows[1]["sec_per_step"]) / float(rows[0]["sec_per_step"]), rel=1e-4)
    assert "parity efficient vs naive" in capsys.readouterr().out


def fake_rates(monkeypatch, rates: dict[torch.dtype, list[float]]) -> None:
    """bench.matmul_rate answering, per dtype, the next of ``rates[dtype]`` (before, after)."""
    queues = {dtype: iter(values) for dtype, values in rates.items()}
    monkeypatch.setattr(bench, "matmul_rate", lambda device="cpu", dtype=torch.float32, **k: next(queues[dtype]))


def test_share_is_of_the_higher_of_the_two_matmul_rates_of_the_rows_precision(tmp_path, monkeypatch):
    # before, after: a busy moment lowered one of them
    fake_rates(monkeypatch, {torch.float32: [1e10, 2e10], torch.bfloat16: [8e10, 5e10]})
    assert bench_verb.run(bench_args(tmp_path, modes="infer", tasks=1, amp="off,bf16")) == 0
    with open(tmp_path / "out.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["variant"] for r in rows] == ["efficient", "naive", "efficient+bf16"]
    for r in rows:
        expected = 80.0 if r["amp"] == "bf16" else 20.0
        assert float(r["matmul_gmac_s"]) == expected
        assert float(r["share_of_matmul_pct"]) == pytest.approx(100 * float(r["achieved_gmac_s"]) / expected, rel=1e-4)
        assert (float(r["mm_fp32_gmac_s"]), float(r["mm_bf16_gmac_s"])) == (20.0, 80.0)


def test_tasks_sweep_puts_table8_beside(tmp_path):  # fp32 only (bench_args)
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


# ------------------------------------------------------------------------------------------- bf16 and torch.compile


def _labels(groups):
    return [[c.label for c in cfgs] for _, cfgs in groups]


def test_plan_groups_yields_the_precision_and_compile_variants():
    base = BenchConfig(preset="taskprompter_tiny", batch=2)
    fp32 = bench.plan_groups(base, modes=["train", "infer"], grad_ckpt=True, recompute=["off"])
    assert _labels(fp32) == [["efficient/train", "naive/train", "efficient/infer", "naive/infer",
                              "efficient+ckpt/train", "efficient+rc-off/train"]]
    both = bench.plan_groups(base, modes=["train", "infer"], grad_ckpt=True, amps=["off", "bf16"], compile=True)
    assert _labels(both) == [[
        "efficient/train", "naive/train", "efficient+bf16/train", "efficient+compile/train",
        "efficient+bf16+compile/train",
        "efficient/infer", "naive/infer", "efficient+bf16/infer", "efficient+compile/infer",
        "efficient+bf16+compile/infer",
        "efficient+ckpt/train", "efficient+ckpt+bf16/train"]]
    cfgs = both[0][1]
    naive = [c for c in cfgs if c.impl == "naive"]
    assert len(naive) == 2 and all(c.amp == "off" and not c.compile for c in naive)  # the fp32 reference, always
    assert all(c.impl == "efficient" for c in cfgs if c.amp == "bf16" or c.compile)
    # bf16 alone ("none" read as off, "off" always timed), in a sweep: every group has its fp32 naive row
    sweep = bench.plan_groups(replace(base, amp="none"), modes=["infer"], sweep="tasks", amps=["bf16"])
    assert _labels(sweep) == [["efficient/infer", "naive/infer", "efficient+bf16/infer"]] * 5
    assert [c.tasks for _, cfgs in sweep for c in cfgs][::3] == [1, 2, 3, 4, 5]
    with pytest.raises(ConfigError, match="fp16"):
        bench.plan_groups(base, modes=["infer"], amps=["fp16"])


@pytest.mark.parametrize("native", [True, False])
def test_default_precisions_follow_the_capability_record(monkeypatch, native):
    from taskprompter.engine import precision

    caps = precision.Capabilities("cpu", "a test CPU", native, "a test")
    monkeypatch.setattr(precision, "device_capabilities", lambda device: caps)
    expected = ["off", "bf16"] if native else ["off"]
    assert bench.default_amps("cpu") == expected
    assert bench_verb.parse_amps(None, "cpu")[0] == expected
    assert bench_verb.parse_amps("auto", "cpu")[0] == expected
    assert bench_verb.parse_amps("bf16", "cpu")[0] == ["off", "bf16"]  # asked for: timed whatever the CPU
    assert bench_verb.parse_amps("off", "cpu")[0] == ["off"]
    record = bench.capability_record("cpu")
    assert record["native_bf16"] == ("yes" if native else "no") and record["device_model"] == "a test CPU"
    assert record["amp_auto"] == ("bf16" if native else "fp32")


def _small_model():
    torch.manual_seed(0)
    return build_model("taskprompter_tiny", tasks={"semseg": 21, "edge": 1}, depth=2, decode_blocks=(1, 2),
                       img_size=(32, 32))


@pytest.mark.parametrize("mode", ["train", "infer"])
@pytest.mark.parametrize(("amp", "out_dtype"), [("bf16", torch.bfloat16), ("off", torch.float32)])
def test_runner_step_under_bf16_autocast(mode, amp, out_dtype):
    """amp=bf16: the model's outputs are bf16 (autocast), the training loss fp32; amp=off: all fp32."""
    cfg = BenchConfig(preset="taskprompter_tiny", tasks=2, img_size=(32, 32), mode=mode, amp=amp)
    runner = bench.Runner(cfg, model=_small_model())
    seen = {}
    runner.model.register_forward_hook(lambda m, i, out: seen.update({t: o.dtype for t, o in out.items()}))
    loss = runner.step()
    assert set(seen.values()) == {out_dtype}
    assert runner.compiled is None
    if mode == "train":
        assert loss.dtype == torch.float32
        assert all(p.dtype == torch.float32 for p in runner.model.parameters())  # weights stay fp32
    else:
        assert loss is None


def test_runner_compiles_with_the_module_backend(monkeypatch):
    """compile=True: the step goes through torch.compile with measure.COMPILE_BACKEND (aot_eager here: no C++
    compilation); a compiled bf16 training step's loss is fp32 and equals the eager bf16 step's; the compilation
    lands in compile_s, not in the timed rounds."""
    from taskprompter.bench import measure

    assert measure.COMPILE_BACKEND == "inductor"  # the default for real runs
    monkeypatch.setattr(measure, "COMPILE_BACKEND", "aot_eager")
    backends = []
    real_compile = torch.compile
    monkeypatch.setattr(torch, "compile", lambda model, **kw: backends.append(kw.get("backend")) or
                        real_compile(model, **kw))
    cfg = BenchConfig(preset="taskprompter_tiny", tasks=2, img_size=(32, 32), mode="train", amp="bf16", compile=True)
    compiled = bench.Runner(cfg, model=_small_model())
    eager = bench.Runner(replace(cfg, compile=False), model=_small_model())
    assert backends == ["aot_eager"] and compiled.compiled._orig_mod is compiled.model
    loss_c, loss_e = compiled.step(), eager.step()
    assert loss_c.dtype == torch.float32
    torch.testing.assert_close(loss_c, loss_e, rtol=1e-3, atol=1e-5)
    times = bench.time_interleaved([compiled, eager], repeats=1, warmup=1, min_time=0)
    assert compiled.compile_s is not None and compiled.compile_s >= 0 and eager.compile_s is None
    assert compiled.recompiles_timed == 0  # no graph compiled inside the timed round
    assert all(len(t) == 1 for t in times)


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class FakeRunner:
    """A runner whose first step takes ``first`` seconds of a fake clock (compilation), every later one ``step_s``."""

    def __init__(self, clock: FakeClock, compile: bool, first: float, step_s: float) -> None:
        self.cfg = BenchConfig(preset="taskprompter_tiny", compile=compile)
        self.clock, self.first, self.step_s, self.steps = clock, first, step_s, 0
        self.compile_s = self.recompiles_timed = None

    def step(self) -> None:
        self.clock.now += self.first if self.steps == 0 else self.step_s
        self.steps += 1


def test_compile_time_lands_in_compile_s_never_in_the_timed_rounds():
    clock = FakeClock()
    compiled = FakeRunner(clock, compile=True, first=30.0, step_s=0.5)
    eager = FakeRunner(clock, compile=False, first=0.7, step_s=0.5)
    times = bench.time_interleaved([compiled, eager], repeats=3, warmup=1, min_time=1.0, clock=clock)
    assert times == [pytest.approx([0.5] * 3), pytest.approx([0.5] * 3)]
    assert compiled.compile_s == pytest.approx(29.5) and eager.compile_s is None
    from taskprompter.bench.measure import COMPILED_WARMUP

    # warm-up: COMPILED_WARMUP steps for the compiled runner, 1 for the eager one; each round ~min_time (2 steps)
    assert compiled.steps == COMPILED_WARMUP + 3 * 2 and eager.steps == 1 + 3 * 2


def test_bench_group_puts_compile_time_and_parity_in_the_rows(monkeypatch):
    """The plumbing of a compiled variant, with a stand-in compiler whose first call takes 1.5 s: compile_s holds
    it, the timed seconds do not; the variant's parity against fp32 eager fills its row."""
    import time

    from taskprompter.bench import measure

    def slow_first_call(model, backend=None):
        calls = []

        def forward(x):
            if not calls:
                time.sleep(1.5)
            calls.append(1)
            return model(x)

        return forward

    monkeypatch.setattr(measure, "compile_model", slow_first_call)
    base = BenchConfig(preset="taskprompter_tiny", tasks=1, img_size=(32, 32), mode="infer")
    cfgs = [base, replace(base, impl="naive"), replace(base, compile=True), replace(base, amp="bf16")]
    rows = bench.bench_group(cfgs, repeats=2, warmup=1, min_time=0, memory=False, rate={"off": 1e10, "bf16": 5e10},
                             sweep="main")
    assert [r["variant"] for r in rows] == ["efficient", "naive", "efficient+compile", "efficient+bf16"]
    assert rows[2]["compile_s"] >= 1.4 and rows[2]["sec_max"] < 1.0
    assert "compile_s" not in rows[0] and "compile_s" not in rows[3]
    assert rows[2]["parity_outputs"] < bench.PARITY_TOL and rows[2]["parity_ok"] == 1  # an fp32 variant
    assert bench.PARITY_TOL < rows[3]["parity_outputs"] < bench.VARIANT_TOL["bf16"]["outputs"]  # bf16 reported
    assert rows[3]["parity_ok"] == 1 and rows[3]["matmul_gmac_s"] == 50.0
    assert "parity_outputs" not in rows[0] and "parity_outputs" not in rows[1]


def test_variant_parity_of_bf16_is_honest():
    """bf16 against fp32 eager: errors of bf16's size (above the fp32 gate, which must not refuse them), within the
    bf16 tolerances; gradients compared too."""
    cfg = BenchConfig(preset="taskprompter_tiny", tasks=2, img_size=(32, 32), amp="bf16")
    errors = bench.check_variant_parity(cfg)
    assert set(errors) == {"eval_outputs", "train_outputs", "gradients"}
    assert bench.PARITY_TOL < errors["eval_outputs"] < bench.VARIANT_TOL["bf16"]["outputs"]
    assert bench.PARITY_TOL < errors["train_outputs"] < bench.VARIANT_TOL["bf16"]["outputs"]
    assert errors["gradients"] < bench.VARIANT_TOL["bf16"]["gradients"]
    same = bench.check_variant_parity(replace(cfg, amp="off", grad_checkpointing=True), modes=("train",))
    assert set(same) == {"train_outputs", "gradients"} and max(same.values()) < 1e-5


def test_bench_header_holds_both_matmul_rates_and_the_capability_record(tmp_path, monkeypatch, capsys):
    from taskprompter.engine.precision import device_capabilities

    fake_rates(monkeypatch, {torch.float32: [3e10, 4e10], torch.bfloat16: [2.5e11, 2e11]})
    assert bench_verb.run(bench_args(tmp_path, modes="infer", tasks=1, amp="off,bf16")) == 0
    out = capsys.readouterr().out
    caps = device_capabilities("cpu")
    assert "fp32 30.0 GMAC/s, bf16 250.0 GMAC/s" in out  # printed before the runs
    assert f"native bf16 {'yes' if caps.native_bf16 else 'no'} ({caps.evidence})" in out
    with open(tmp_path / "out.csv") as fh:
        rows = list(csv.DictReader(fh))
    for r in rows:  # the header in every row
        assert (float(r["mm_fp32_gmac_s"]), float(r["mm_bf16_gmac_s"]), r["matmul_n"]) == (40.0, 250.0, "256")
        assert r["native_bf16"] == ("yes" if caps.native_bf16 else "no") and r["bf16_evidence"] == caps.evidence
        assert r["device_model"] == caps.name and r["cpu_bf16_flags"]
        assert r["amp_auto"] in ("bf16", "fp32")


def test_bench_csv_has_the_side_by_side_columns(tmp_path):
    assert bench_verb.run(bench_args(tmp_path, tasks=1, amp="off,bf16", img_size="32 32")) == 0
    with open(tmp_path / "out.csv") as fh:
        reader = csv.DictReader(fh)
        rows = list(reader)
    for column in ("variant", "amp", "compile", "compile_s", "speedup_vs_naive_fp32", "speedup_vs_efficient_fp32",
                   "parity_outputs", "parity_gradients", "parity_ok", "mm_fp32_gmac_s", "mm_bf16_gmac_s"):
        assert column in reader.fieldnames, column
    assert [(r["variant"], r["mode"]) for r in rows] == [
        ("efficient", "train"), ("naive", "train"), ("efficient+bf16", "train"),
        ("efficient", "infer"), ("naive", "infer"), ("efficient+bf16", "infer")]
    for r in rows:
        naive = next(n for n in rows if n["impl"] == "naive" and n["mode"] == r["mode"])
        assert float(r["speedup_vs_naive_fp32"]) == pytest.approx(
            float(naive["sec_per_step"]) / float(r["sec_per_step"]), rel=1e-4)
        assert r["compile"] == "0" and r["compile_s"] == ""
    bf16 = [r for r in rows if r["amp"] == "bf16"]
    assert all(r["parity_ok"] == "1" and float(r["parity_outputs"]) > 0 for r in bf16)
    assert bf16[0]["parity_gradients"] != "" and bf16[1]["parity_gradients"] == ""  # train / infer


def test_bench_reports_a_variant_beyond_its_tolerance_after_writing_it(tmp_path, monkeypatch, capsys):
    """The variants are never refused before timing: their rows are written with parity_ok 0, then status 3."""
    monkeypatch.setitem(bench.VARIANT_TOL, "bf16", {"outputs": 1e-6, "gradients": 1e-6})
    assert bench_verb.run(bench_args(tmp_path, tasks=1, amp="bf16", modes="infer", img_size="32 32")) == 3
    assert "efficient+bf16/infer" in capsys.readouterr().err
    with open(tmp_path / "out.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["variant"], r["parity_ok"]) for r in rows] == [("efficient", ""), ("naive", ""),
                                                               ("efficient+bf16", "0")]


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
    """"auto" recomputes features from RECOMPUTE_MIN_BYTES up, only in training with gradients on the efficient path,
    and not under autocast on the features' device (bf16 halves what it would save); "on" always, "off" never."""
    from taskprompter.model.recompute import RECOMPUTE_MIN_BYTES

    x = torch.zeros(1)  # the features: their device type is the autocast that matters
    model = build_model("taskprompter_tiny").train()
    assert model._recompute(x, RECOMPUTE_MIN_BYTES) and not model._recompute(x, RECOMPUTE_MIN_BYTES - 1)
    with torch.no_grad():
        assert not model._recompute(x, RECOMPUTE_MIN_BYTES)  # nothing to store without gradients
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not model._recompute(x, RECOMPUTE_MIN_BYTES)
        assert build_model("taskprompter_tiny", selective_recompute="on").train()._recompute(x, 1)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=False):
        assert model._recompute(x, RECOMPUTE_MIN_BYTES)
    assert not model.eval()._recompute(x, RECOMPUTE_MIN_BYTES)
    assert not build_model("taskprompter_tiny", attention_impl="naive").train()._recompute(x, RECOMPUTE_MIN_BYTES)
    assert build_model("taskprompter_tiny", selective_recompute="on").train()._recompute(x, 1)
    assert not build_model("taskprompter_tiny", selective_recompute="off").train()._recompute(x, RECOMPUTE_MIN_BYTES)
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


def test_the_loss_weighting_rows_run_the_trainers_backward_of_each_method():
    """--loss-weighting: one training row per method (fixed is the plain efficient row), named efficient+w-<method>;
    the row's step is weighted_backward's: a gradient-level method trains the encoder with its combination, so its
    encoder gradients differ from the plain sum's while the heads' (trained by the plain sum) are the same."""
    base = BenchConfig(preset="taskprompter_tiny", batch=2)
    groups = bench.plan_groups(base, modes=["train", "infer"], weightings=["fixed", "famo", "upgrad"])
    assert _labels(groups) == [["efficient/train", "naive/train", "efficient/infer", "naive/infer",
                                "efficient+w-famo/train", "efficient+w-upgrad/train"]]
    assert bench_verb._weightings("all")[-4:] == ["pcgrad", "cagrad", "upgrad", "nash_mtl"]
    with pytest.raises(SystemExit, match="upgard"):
        bench_verb._weightings("fixed,upgard")
    plain = bench.Runner(replace(base, mode="train"), seed=0)
    upgrad = bench.Runner(replace(base, mode="train", weighting="upgrad"), seed=0)
    upgrad.model.load_state_dict(plain.model.state_dict())
    for r in (plain, upgrad):  # no update: compare the gradients of one step
        r.optimizer = torch.optim.SGD(r.model.parameters(), lr=0.0)
        r.step()
    c = upgrad.weighting.current
    assert c.shape == (5,) and bool((c > 0).all()) and float(c.sum()) < 5  # UPGrad averages: not the plain sum
    grads = {n: p.grad for n, p in upgrad.model.named_parameters()}
    for n, p in plain.model.named_parameters():
        if n.startswith("heads."):
            assert torch.allclose(grads[n], p.grad, rtol=1e-5, atol=1e-8), n
    encoder = [n for n, _ in plain.model.backbone.named_parameters()]
    assert any(not torch.allclose(grads[f"backbone.{n}"], dict(plain.model.named_parameters())[f"backbone.{n}"].grad)
               for n in encoder)
