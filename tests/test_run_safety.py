"""Runs never lose work (issue 12, items 1-3): a previous run needs --resume or --overwrite, a second process is
locked out, a damaged checkpoint is an error and never a restart, Ctrl-C writes the checkpoint and names the resume
command, every sample's file headers are read before step 1, the final checkpoint comes before the final evaluation,
and a checkpoint is only kept with finite weights. Each refusal is one line on stderr, exit code 2, and leaves the disk
as it was."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
import yaml

from taskprompter.cli import main
from taskprompter.data import build_dataset, fileio
from taskprompter.data.synthetic import generate
from taskprompter.engine import checkpoint as ck
from taskprompter.engine import train as train_module
from taskprompter.engine.rundir import RunLock
from taskprompter.errors import DataError

STEPS = 2


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A synthetic PASCAL tree of 8 scenes (train 6, val 2); read-only: copy it before damaging a file."""
    return generate(tmp_path_factory.mktemp("safety") / "PASCALContext", format="pascal_context", num=8,
                    size=(64, 64), seed=3, split_ratio=0.75)


def _train(data, out, *extra):
    return ["train", "--config", "synthetic_tiny", "--set", f"data.root={data}", f"optim.max_iters={STEPS}",
            "train.checkpoint_every=1", "train.progress=false", "data.max_val_samples=1", *extra, "--out", str(out)]


@pytest.fixture(scope="module")
def finished(data, tmp_path_factory):
    """A finished 2-step run (last/ and best/ at step 2); copy it before changing anything."""
    run = tmp_path_factory.mktemp("finished") / "run"
    assert main(_train(data, run)) == 0
    return run


def _one_line_error(capsys, argv, *needles, code=2, alone=True):
    """The error line of a refused command: all of stderr (``alone``), or the last line after the run's own log."""
    capsys.readouterr()
    assert main(argv) == code
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 or not alone, lines
    err = lines[-1]
    assert err.startswith("taskprompter train: error: "), lines
    for needle in needles:
        assert needle in err, err
    return err


def _copy(src, dst):
    shutil.copytree(src, dst)  # copy2: contents and mtimes
    return dst


# ------------------------------------------------------------------------------------------------- item 1


def test_an_existing_run_needs_resume_or_overwrite(finished, data, tmp_path, capsys, disk_state):
    run = _copy(finished, tmp_path / "run")
    before = disk_state(run)
    _one_line_error(capsys, _train(data, run), f"{run} already holds a run (config.yaml, metrics.jsonl, last/ (step 2)",
                    "continue it with --resume, replace it with --overwrite")
    _one_line_error(capsys, _train(data, run, "--resume", "--overwrite"), "--resume and --overwrite contradict")
    assert disk_state(run) == before
    # an empty folder is no run
    (tmp_path / "empty").mkdir()
    assert main(_train(data, tmp_path / "empty", "train.checkpoint_every=5")) == 0


def test_overwrite_replaces_the_run_only_once_the_checks_pass(finished, data, tmp_path, capsys, disk_state):
    run = _copy(finished, tmp_path / "run")
    bad = _copy(data, tmp_path / "bad")
    val_id = (bad / "ImageSets" / "Context" / "val.txt").read_text().split()[0]
    (bad / "JPEGImages" / f"{val_id}.jpg").write_bytes(b"not a jpeg at all")
    before = disk_state(run)
    _one_line_error(capsys, _train(bad, run, "--overwrite"), f"[val] {val_id}: unreadable image:",
                    str(bad / "JPEGImages" / f"{val_id}.jpg"))
    assert disk_state(run) == before  # the old run is intact: the new one failed before writing anything

    assert main(_train(data, run, "optim.max_iters=3", "train.log_every=1", "--overwrite")) == 0
    records = [yaml.safe_load(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["split"] == "train"] == [1, 2, 3]  # the old run's lines are gone
    assert ck.read_step(run / "last") == 3


@pytest.mark.parametrize("damage, file", [
    ("unparsable", "checkpoint.yaml"),
    ("no step", "checkpoint.yaml"),
    ("truncated", "model.safetensors"),
    ("missing", "train_state.pt"),
    ("truncated", "train_state.pt"),
])
def test_a_damaged_checkpoint_is_an_error_never_a_restart(finished, data, tmp_path, capsys, disk_state, damage,
                                                          file):
    run = _copy(finished, tmp_path / "run")
    target = run / "last" / file
    if damage == "unparsable":
        target.write_text("step: [2\nformat: {")
    elif damage == "no step":
        target.write_text("format: taskprompter-checkpoint-v1\n")
    elif damage == "truncated":
        target.write_bytes(target.read_bytes()[: target.stat().st_size // 2])
    else:
        target.unlink()
    before = disk_state(run)
    _one_line_error(capsys, _train(data, run, "optim.max_iters=4", "--resume"), f"cannot resume from {run / 'last'}",
                    file, "resume from another checkpoint with --resume PATH")
    assert disk_state(run) == before


def _spawn_training(data, out, *extra):
    cmd = [sys.executable, "-m", "taskprompter", *_train(data, out, *extra)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("RANK", None)
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _wait_for(condition, proc, seconds=120):
    deadline = time.time() + seconds
    while not condition():
        assert proc.poll() is None, proc.stderr.read()[-2000:]
        assert time.time() < deadline, "timed out"
        time.sleep(0.05)


def test_a_second_process_is_locked_out_until_the_first_dies(data, tmp_path, capsys, disk_state):
    run = tmp_path / "run"
    # a long run that writes nothing while it trains (no logging, evaluation or checkpoint for 10^6 steps)
    proc = _spawn_training(data, run, "optim.max_iters=1000000", "train.checkpoint_every=1000000",
                           "train.log_every=1000000", "train.eval_every=0")
    try:
        lock = run / ".lock"
        _wait_for(lambda: (run / "train.log").is_file() and "checked the files" in (run / "train.log").read_text(),
                  proc)  # its last line before step 1
        assert f"pid {proc.pid}" in lock.read_text()

        def state():  # TensorBoard's writer flushes on its own schedule
            return {k: v for k, v in disk_state(run).items() if not k.startswith("tb")}

        before = state()
        for flag in ("--resume", "--overwrite"):
            _one_line_error(capsys, _train(data, run, flag), f"{run} is in use by another training process "
                            f"(pid {proc.pid}", "wait for it to end or stop it")
        assert state() == before
    finally:
        proc.kill()
        proc.wait()
    # the kernel released the lock with the process: a new process may take it
    other = RunLock(run)
    other.acquire(create=False)
    assert other.fd is not None
    other.release()


def test_sigint_finishes_the_step_writes_last_and_names_the_resume_command(data, tmp_path):
    run = tmp_path / "run"
    proc = _spawn_training(data, run, "optim.max_iters=1000000", "train.checkpoint_every=1000000",
                           "train.log_every=1", "train.eval_every=0")
    try:
        _wait_for(lambda: (run / "metrics.jsonl").is_file()
                  and len((run / "metrics.jsonl").read_text().splitlines()) >= 3, proc)
        proc.send_signal(signal.SIGINT)
        err = proc.communicate(timeout=120)[1]
    finally:
        proc.kill()
    assert proc.returncode == 130, err[-2000:]
    step = ck.read_step(run / "last")
    last = err.strip().splitlines()[-1]
    assert last == (f"taskprompter train: interrupted: stopped by SIGINT after step {step}; the last good checkpoint "
                    f"is {run / 'last'} (step {step}); resume with: taskprompter train --config "
                    f"{run / 'config.yaml'} --resume"), last
    logged = [yaml.safe_load(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert step == logged[-1] >= 3  # the step that was running finished and is the checkpoint's


# ------------------------------------------------------------------------------------------------- item 2


def _damage(root, split, kind):
    ds = build_dataset("pascal_context", root, split, None)
    sample = ds.ids[0]  # (the run evaluates on the first validation sample only)
    path = ds.image_path(sample) if kind == "image" else ds.task_path(kind, sample)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])  # a copy cut short
    return sample, path


@pytest.mark.parametrize("split, kind, words", [
    ("val", "image", "truncated image"),
    ("train", "image", "truncated image"),
    ("val", "semseg", "unreadable semseg"),
    ("train", "human_parts", "truncated human_parts"),
])
def test_every_sample_header_is_read_before_step_1(data, tmp_path, capsys, disk_state, split, kind, words):
    root = _copy(data, tmp_path / "data")
    sample, path = _damage(root, split, kind)
    before = disk_state(tmp_path)
    _one_line_error(capsys, _train(root, tmp_path / "run"), f"[{split}] {sample}: {words}", str(path),
                    "`taskprompter check-data --format pascal_context")
    assert disk_state(tmp_path) == before  # no run directory, nothing else


def test_the_header_check_decodes_no_pixel(data, synthetic_nyud_root, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a full read during the header check")

    for name in ("read_image", "read_npy", "read_mat"):
        monkeypatch.setattr(fileio, name, refuse)
    for fmt, root in (("pascal_context", data), ("nyud", synthetic_nyud_root)):
        for split in ("train", "val"):
            ds = build_dataset(fmt, root, split, None)
            assert all(ds.check_headers(i) == [] for i in range(len(ds)))


def test_header_check_reads_npy_headers(synthetic_nyud_root, tmp_path):
    root = _copy(synthetic_nyud_root, tmp_path / "nyud")
    ds = build_dataset("nyud", root, "train", ["depth"])
    depth = ds.task_path("depth", ds.ids[0])
    depth.write_bytes(depth.read_bytes()[:-100])
    np.save(ds.task_path("depth", ds.ids[1]), np.zeros((3, 5), np.float32))
    assert "its header promises" in ds.check_headers(0)[0] and str(depth) in ds.check_headers(0)[0]
    assert "depth is 3x5 but its image is 64x80" in ds.check_headers(1)[0]


def test_the_final_checkpoint_is_written_before_the_final_evaluation(data, tmp_path, capsys, monkeypatch):
    run = tmp_path / "run"

    def fails(*args, **kwargs):
        raise DataError("unreadable image: val/x.jpg (simulated)")

    monkeypatch.setattr(train_module, "evaluate", fails)
    _one_line_error(capsys, _train(data, run, "train.checkpoint_every=100"), "unreadable image: val/x.jpg",
                    f"the last good checkpoint is {run / 'last'} (step {STEPS}); resume with: taskprompter train "
                    f"--config {run / 'config.yaml'} --resume", alone=False)
    assert ck.read_step(run / "last") == STEPS
    monkeypatch.undo()
    # --resume runs the missing final evaluation and nothing else
    assert main(["train", "--config", str(run / "config.yaml"), "--resume"]) == 0
    records = [yaml.safe_load(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["split"]) for r in records] == [(STEPS, "train"), (STEPS, "val")]
    assert yaml.safe_load((run / "last" / "checkpoint.yaml").read_text())["metrics_step"] == STEPS


# ------------------------------------------------------------------------------------------------- item 3


def test_a_checkpoint_with_non_finite_weights_is_never_kept(finished, data, tmp_path, capsys, disk_state):
    run = _copy(finished, tmp_path / "run")
    kept = {name: disk_state(run / name) for name in ("last", "best")}
    # an lr of 1e39 sends every Adam update past float32's largest value: the loss of step 3 is still finite,
    # the weights after it are not
    err = _one_line_error(capsys, ["train", "--config", str(run / "config.yaml"), "--set", "optim.lr=1e39",
                                   "optim.max_iters=4", "optim.schedule=constant", "--resume"],
                          "non-finite weights after step 3", f"{run / 'last'} not written",
                          f"the last good checkpoint is {run / 'last'} (step 2); resume with: taskprompter train "
                          f"--config {run / 'config.yaml'} --resume after lowering optim.lr", alone=False)
    assert "non-finite loss" not in err
    assert {name: disk_state(run / name) for name in ("last", "best")} == kept
    weights = ck.load_checkpoint(run / "last").state_dict()
    assert all(torch.isfinite(t).all() for t in weights.values() if t.is_floating_point())
