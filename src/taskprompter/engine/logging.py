"""The run directory, written by rank 0 only: config.yaml, git_sha.txt, train.log, metrics.jsonl, TensorBoard.

    <out_dir>/config.yaml     the resolved config (defaults -> file -> --set)
    <out_dir>/git_sha.txt     the commit of the code that ran (and whether the tree was dirty)
    <out_dir>/metrics.jsonl   one JSON object per line: {"step", "split": "train"|"val", ...numbers}
    <out_dir>/train.log       the log lines printed to the console
    <out_dir>/tb/             TensorBoard events, when tensorboard is installed: every logged number (scalars), the
                              run's resolved config (HPARAMS tab, with each task's primary metric) and, at every
                              evaluation, the prediction panels of the first validation images (IMAGES tab)
"""

from __future__ import annotations

import json
import logging
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from ..config import Config, to_dict, write_config
from ..inference import Predictor
from ..tasks import TASKS
from ..visualize import figure_to_array, prediction_panel

PANEL_IMAGES = 2  # validation images whose prediction panels TensorBoard shows at every evaluation


def git_sha() -> str:
    here = Path(__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        if sha.returncode != 0:
            return "unknown (not a git checkout)"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return sha.stdout.strip() + (" (dirty)" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown (git not available)"


class _ConsoleHandler(logging.Handler):
    """Writes through tqdm so that log lines do not tear the progress bar."""

    _taskprompter_console = True

    def emit(self, record: logging.LogRecord) -> None:
        try:
            from tqdm import tqdm

            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:
            self.handleError(record)


def get_logger(name: str = "taskprompter", *, is_main: bool = True, log_file: str | os.PathLike | None = None
               ) -> logging.Logger:
    """Console (and file) logger; ranks other than 0 log warnings only."""
    logger = logging.getLogger(name)
    logger.setLevel(logging.INFO if is_main else logging.WARNING)
    logger.propagate = False
    fmt = logging.Formatter("%(asctime)s %(message)s", datefmt="%H:%M:%S")
    if not any(getattr(h, "_taskprompter_console", False) for h in logger.handlers):
        console = _ConsoleHandler()
        console.setFormatter(fmt)
        logger.addHandler(console)
    for h in [h for h in logger.handlers if isinstance(h, logging.FileHandler)]:
        logger.removeHandler(h)
        h.close()
    if log_file is not None and is_main:
        fh = logging.FileHandler(log_file)
        fh.setFormatter(fmt)
        logger.addHandler(fh)
    return logger


def _finite(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None if math.isnan(v) else (1e308 if v > 0 else -1e308)
    return v


def flatten_metrics(results: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """{"semseg": {"mIoU": 70.1}} -> {"semseg/mIoU": 70.1} (numbers only)."""
    flat: dict[str, float] = {}
    for k, v in results.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            flat.update(flatten_metrics(v, f"{key}/"))
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            flat[key] = float(v)
    return flat


class RunLog:
    """Files of one run. On a non-main rank every method is a no-op."""

    def __init__(self, out_dir: str | os.PathLike, cfg: Config, *, is_main: bool, resume_step: int | None = None,
                 tensorboard: bool = True) -> None:
        self.dir, self.is_main, self.tb = Path(out_dir), is_main, None
        if not is_main:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        write_config(cfg, self.dir / "config.yaml")
        (self.dir / "git_sha.txt").write_text(git_sha() + "\n")
        self.metrics_file = self.dir / "metrics.jsonl"
        if resume_step is None:
            self.metrics_file.write_text("")
        else:  # drop what an interrupted run logged after its last checkpoint
            self._truncate_after(resume_step)
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(self.dir / "tb"), purge_step=resume_step)
            except Exception:  # tensorboard not installed: the JSONL file is the record
                self.tb = None
        if self.tb is not None:
            self._log_hparams(cfg)

    def _log_hparams(self, cfg: Config) -> None:
        """The resolved config as TensorBoard hyper-parameters (dotted keys; lists and None as text), with each
        trained task's primary validation metric, in this run's own event file."""
        from torch.utils.tensorboard.summary import hparams

        values = {k: v if isinstance(v, (bool, int, float, str)) else json.dumps(v)
                  for k, v in flatten_config(to_dict(cfg)).items()}
        metrics = {f"val/{t}/{TASKS[t].primary}": 0.0 for t in cfg.data.tasks if t in TASKS}
        for summary in hparams(values, metrics):  # experiment, session start, session end
            self.tb.file_writer.add_summary(summary)

    def _truncate_after(self, step: int) -> None:
        if not self.metrics_file.is_file():
            return
        keep = []
        for line in self.metrics_file.read_text().splitlines():
            try:
                if json.loads(line).get("step", 0) <= step:
                    keep.append(line)
            except json.JSONDecodeError:  # a line cut by a kill
                continue
        self.metrics_file.write_text("".join(f"{line}\n" for line in keep))

    def log(self, step: int, split: str, values: dict[str, Any]) -> None:
        if not self.is_main:
            return
        flat = flatten_metrics(values)
        record = {"step": step, "split": split, **{k: _finite(v) for k, v in flat.items()}}
        with open(self.metrics_file, "a") as fh:
            fh.write(json.dumps(record) + "\n")
        if self.tb is not None:
            for k, v in flat.items():
                if math.isfinite(v):
                    self.tb.add_scalar(f"{split}/{k}", v, step)

    def log_panels(self, step: int, model: Any, dataset: Any, *, count: int = PANEL_IMAGES, amp: str = "auto") -> None:
        """TensorBoard images ``val/panel/<id>``: the prediction panel (prediction above ground truth) of the first
        ``count`` samples of ``dataset`` (a reader or a Subset of one), by the model as it is at ``step``. Leaves the
        model in eval mode."""
        if self.tb is None:
            return
        reader, indices = getattr(dataset, "dataset", dataset), list(getattr(dataset, "indices", range(len(dataset))))
        predictor = Predictor(model, device=next(model.parameters()).device, amp=amp)  # the run's precision
        for index in indices[:count]:
            raw = reader.load_raw(index)
            image = raw["image"] / 255.0  # (H, W, 3) in [0, 1]
            maps = predictor.predict(image).maps
            fig = prediction_panel(image, maps, num_classes=predictor.num_classes, ground_truth=raw,
                                   title=f"validation image {raw['meta']['id']}, step {step}")
            self.tb.add_image(f"val/panel/{raw['meta']['id']}", figure_to_array(fig), step, dataformats="HWC")
        self.tb.flush()

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
            self.tb = None


def flatten_config(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"optim": {"lr": 1e-4}} -> {"optim.lr": 1e-4}; empty sections stay as {} values."""
    flat: dict[str, Any] = {}
    for k, v in tree.items():
        if isinstance(v, dict) and v:
            flat.update(flatten_config(v, f"{prefix}{k}."))
        else:
            flat[f"{prefix}{k}"] = v
    return flat


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    """All records of a metrics.jsonl file (a run directory or the file itself)."""
    p = Path(path)
    if p.is_dir():
        p = p / "metrics.jsonl"
    out = []
    for line in p.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


class EarlyNotes:
    """The log lines of the checks before step 1, kept until the run starts and then logged: a run refused by a
    check prints its one-line error alone."""

    def __init__(self) -> None:
        self.lines: list[tuple[int, str]] = []

    def info(self, message: str) -> None:
        self.lines.append((logging.INFO, message))

    def warning(self, message: str) -> None:
        self.lines.append((logging.WARNING, message))

    def replay(self, log: logging.Logger) -> None:
        for level, message in self.lines:
            log.log(level, message)
