"""`taskprompter demo` end to end at a toy scale: the report has its metrics table and every figure it links."""

from __future__ import annotations

import re

import torch

from taskprompter.cli import main


def test_demo_writes_a_complete_report(tmp_path):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(["demo", "--out", str(tmp_path / "demo"), "--num-scenes", "10", "--steps", "3", "--set",
                     "data.size=[64, 64]", "train.batch_size=2", "train.progress=false"]) == 0
    finally:
        torch.set_num_threads(threads)
    report = (tmp_path / "demo" / "report.md").read_text()
    for heading in ("## Validation metrics", "## Predictions", "## Spatial task-prompt affinity",
                    "## Channel task-prompt affinity", "## Training curves"):
        assert heading in report, heading
    for row in ("| Semseg | mIoU ↑ |", "| Parsing | mIoU ↑ |", "| Saliency | maxF ↑ |", "| Normal | mean ↓ |",
                "| Boundary | odsF ↑ |"):
        assert row in report, row
    figures = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report)
    assert len(figures) >= 2 + 1 + 1 + 1  # 2 panels (2 val scenes), affinity, channel affinity, curves
    for f in figures:
        assert (tmp_path / "demo" / f).is_file(), f
