from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from taskprompter.metrics import METRIC_SPECS, PAPER_STL_VITB_PASCAL, build_meter, delta_m

PAPER = Path("/work/shared/paper/taskprompter-iclr2023.md")
COLUMNS = ("semseg", "human_parts", "sal", "normals", "edge")
# Table 1 rows (Semseg, Parsing, Saliency, Normal, Boundary) and its Delta_m column.
TABLE1 = [
    ((75.04, 64.82, 84.59, 14.17, 68.00), -4.11),
    ((75.95, 65.60, 84.91, 13.97, 70.50), -2.59),
    ((76.46, 66.25, 85.00, 13.97, 71.10), -2.11),
    ((76.83, 66.31, 85.00, 13.94, 71.30), -1.90),
    ((79.00, 67.00, 85.05, 13.47, 73.50), 0.15),
]


@pytest.mark.parametrize(("row", "expected"), TABLE1)
def test_delta_m_reproduces_table1(row, expected):
    # The table prints metrics rounded to 0.01; its Delta_m came from unrounded ones. Rounding moves Delta_m by
    # up to sum_t 0.005 / M_st,t * 100 / 5 = 0.0125 (mostly the normals' 13.87), so 0.01 is not attainable for
    # every row from the printed numbers: we ask for 0.015 and, exactly, that the paper's value lies in the
    # range of Delta_m over all unrounded metrics consistent with the row (Delta_m is monotone in each one).
    got = delta_m(dict(zip(COLUMNS, row)), PAPER_STL_VITB_PASCAL)
    assert got == pytest.approx(expected, abs=0.015)
    up = {t: METRIC_SPECS[t].higher_is_better for t in COLUMNS}
    best = delta_m({t: v + (0.005 if up[t] else -0.005) for t, v in zip(COLUMNS, row)}, PAPER_STL_VITB_PASCAL)
    worst = delta_m({t: v - (0.005 if up[t] else -0.005) for t, v in zip(COLUMNS, row)}, PAPER_STL_VITB_PASCAL)
    assert worst - 0.005 <= expected <= best + 0.005


@pytest.mark.skipif(not PAPER.exists(), reason="paper text not available")
def test_table1_rows_above_are_the_papers():
    text = PAPER.read_text()
    for row, expected in TABLE1:
        numbers = " .* ".join(f"{v:.2f}" for v in row)
        assert re.search(numbers + r".*" + re.escape(f"{expected:.2f}"), text), row
    assert "| STL Model | 78.42 | 68.36 | 85.34 | 13.87 | 73.90 |" in text


def test_directions_and_nested_results():
    ref = {"depth": 0.5, "semseg": 50.0}
    # depth error up 10% (worse), semseg up 10% (better): they cancel
    assert delta_m({"depth": {"rmse": 0.55, "abs_rel": 9.0}, "semseg": {"mIoU": 55.0}}, ref) == pytest.approx(0.0)
    assert delta_m({"depth": 0.45}, ref) == pytest.approx(10.0)
    assert METRIC_SPECS["normals"].higher_is_better is False and METRIC_SPECS["sal"].primary == "maxF"
    with pytest.raises(KeyError, match="edge"):
        delta_m({"edge": 70.0}, ref)


def test_all_reduce_is_a_noop_without_distributed_and_sums_with_it(tmp_path):
    meter = build_meter("semseg", num_classes=3)
    meter.update(torch.randn(1, 3, 2, 2), torch.tensor([[[0, 1], [2, 1]]]))
    before = [t.clone() for t in meter.state_tensors()]
    meter.all_reduce()
    assert all(torch.equal(a, b) for a, b in zip(before, meter.state_tensors()))
    torch.distributed.init_process_group("gloo", init_method=f"file://{tmp_path}/store", rank=0, world_size=1)
    try:
        meter.all_reduce()  # world size 1: the sum over one process is itself
        assert all(torch.equal(a, b) for a, b in zip(before, meter.state_tensors()))
    finally:
        torch.distributed.destroy_process_group()
    meter.reset()
    assert all(t.sum() == 0 for t in meter.state_tensors())
