"""Profile: the paper's Table 8 sizes (not numbers copied from our code), an exact hand count on a small model, the
CLI's JSON, and that no real weights are allocated."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch

from taskprompter.cli import main
from taskprompter.model.build import build_model, preset_kwargs
from taskprompter.model.profile import profile_model
from taskprompter.model.taskprompter import TaskPrompter

# Table 8 of the paper: ViT-L, PASCAL-Context 512 x 512, tasks added in this order; "FLOPs" there are MACs.
TABLE8 = [
    (["semseg"], 363.9e6, 388.7e9),
    (["semseg", "human_parts"], 373.2e6, 415.7e9),
    (["semseg", "human_parts", "sal"], 382.5e6, 442.6e9),
    (["semseg", "human_parts", "sal", "normals"], 391.8e6, 469.6e9),
    (["semseg", "human_parts", "sal", "normals", "edge"], 401.1e6, 496.6e9),
]
CLASSES = {"semseg": 21, "human_parts": 7, "sal": 2, "normals": 3, "edge": 1}


def within(value, target, rel=0.005):
    return abs(value - target) <= rel * target


@pytest.mark.parametrize("tasks,params,macs", TABLE8[:4], ids=[f"{len(t)}-tasks" for t, _, _ in TABLE8[:4]])
def test_vit_l_pascal_matches_table_8(tasks, params, macs):
    kwargs = preset_kwargs("taskprompter_vit_l_pascal", tasks={t: CLASSES[t] for t in tasks})
    result = profile_model(lambda: TaskPrompter(**kwargs))
    assert within(result["params"], params), result["params"]
    assert within(result["macs"], macs), result["macs"]
    assert sum(result["params_by_component"].values()) == result["params"]
    assert sum(result["macs_by_component"].values()) == result["macs"]


def test_cli_json_full_preset_matches_table_8(capsys):
    assert main(["profile", "--preset", "taskprompter_vit_l_pascal", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert isinstance(result["params"], int) and isinstance(result["macs"], int)
    _, params, macs = TABLE8[-1]
    assert within(result["params"], params) and within(result["macs"], macs), (result["params"], result["macs"])
    assert result["tasks"] == TABLE8[-1][0]


def test_cli_tasks_option_and_text_output(capsys):
    assert main(["profile", "--preset", "taskprompter_tiny", "--tasks", "edge,semseg"]) == 0
    text = capsys.readouterr().out
    assert "tasks=semseg,edge" in text and "total" in text
    assert main(["profile", "--preset", "taskprompter_tiny", "--tasks", "semseg,depth"]) == 2
    assert "depth" in capsys.readouterr().err


def hand_count_macs(*, C, depth, T, grid, e, f, classes, levels):
    """released-code.md section 3's counting rule written out: Linears and convs, the (T+N)^2 attention products and
    the channel QK^T and A.V; nothing elementwise, no reweighting convs. Batch 1."""
    N = grid[0] * grid[1]
    L = T + N
    macs = N * C * 3 * 16 * 16  # patch embedding
    per_block = L * C * 3 * C + L * C * C + 2 * L * C * 4 * C  # qkv, proj, MLP over all T+N tokens
    per_block += T * C * N + T * N * C  # token_trans (C -> N) and token_trans1 (N -> C) on the T prompts
    per_block += 2 * L * L * C  # spatial QK^T and A.V
    per_block += 2 * T * C * N  # channel QK^T and A.V
    macs += depth * per_block
    per_task_level = 2 * N * C * e + N * 2 * e * f + N * f * f * 9 + N * f * f  # 1x1 projections, fusion
    macs += levels * T * per_task_level
    macs += sum(16 * N * (f * f * 9 + f * c) for c in classes)  # heads at 1/4 resolution
    return macs


@pytest.mark.parametrize("kw", [dict(), dict(img_size=(64, 96), tasks={"semseg": 40, "depth": 1, "edge": 1})])
def test_small_model_macs_equal_a_hand_count(kw):
    model_kw = preset_kwargs("taskprompter_tiny", **kw)
    result = profile_model(lambda: TaskPrompter(**model_kw))
    H, W = model_kw["img_size"]
    expected = hand_count_macs(C=64, depth=4, T=len(model_kw["tasks"]), grid=(H // 16, W // 16), e=32, f=32,
                               classes=list(model_kw["tasks"].values()), levels=4)
    assert result["macs"] == expected
    real = build_model("taskprompter_tiny", **kw)
    assert result["params"] == sum(p.numel() for p in real.parameters())


def test_profile_builds_on_meta():
    built = []

    def factory():
        model = TaskPrompter(**preset_kwargs("taskprompter_vit_b_pascal"))
        built.append(model)
        return model

    result = profile_model(factory)
    assert result["params"] > 80e6
    assert all(p.is_meta for p in built[0].parameters()) and all(b.is_meta for b in built[0].buffers())


def test_profiling_vit_l_allocates_no_real_weights():
    """ViT-L's 401 M fp32 weights would take 1.6 GB; the whole profile must stay far below that."""
    code = textwrap.dedent("""
        import contextlib, io, resource
        import torch
        from taskprompter.cli import main
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        with contextlib.redirect_stdout(io.StringIO()):
            assert main(["profile", "--preset", "taskprompter_vit_l_pascal", "--json"]) == 0
        print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    grew_mb = int(out.stdout.strip().splitlines()[-1])
    assert grew_mb < 300, f"peak RSS grew by {grew_mb} MB while profiling"


def test_profile_does_not_touch_global_default_device():
    profile_model(lambda: TaskPrompter(**preset_kwargs("taskprompter_tiny")))
    assert torch.empty(1).device.type == "cpu"
