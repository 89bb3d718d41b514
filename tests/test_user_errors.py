"""Every user mistake of issue 12 (item 4) is one line on stderr that says what to do, with exit code 2, and leaves
the disk as it was: zero or negative values in --set, typos (with the closest key, last component first), an
unreadable dataset folder, an output folder that cannot be written (train, predict, export), a full disk, a CUDA
device on a machine without one. --debug or TASKPROMPTER_DEBUG=1 shows the traceback instead."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch

from taskprompter.cli import main, one_line
from taskprompter.data.synthetic import generate
from taskprompter.engine import checkpoint as ck
from taskprompter.errors import ConfigError


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("errors") / "PASCALContext", format="pascal_context", num=6,
                    size=(64, 64), seed=4, split_ratio=4 / 6)


def _train(data, out, *extra):
    return ["train", "--config", "synthetic_tiny", "--set", f"data.root={data}", "optim.max_iters=2",
            "train.progress=false", "data.max_val_samples=1", *extra, "--out", str(out)]


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory):
    run = tmp_path_factory.mktemp("trained") / "run"
    assert main(_train(data, run)) == 0
    return run


def _one_line_error(capsys, argv, *needles, verb="train"):
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith(f"taskprompter {verb}: error: "), err
    for needle in needles:
        assert needle in err, err
    return err


# ------------------------------------------------------------------------------------------------- config values


@pytest.mark.parametrize("override, allowed", [
    ("train.checkpoint_every=0", "must be a positive integer, got 0"),
    ("train.log_every=0", "must be a positive integer, got 0"),
    ("train.accum_steps=0", "must be a positive integer, got 0"),
    ("train.batch_size=0", "must be a positive integer, got 0"),
    ("optim.lr=-1", "must be a finite number > 0, got -1.0"),
    ("data.size=[0,0]", "must be two positive integers [H, W], multiples of the model's patch size, got [0, 0]"),
    ("optim.max_iters=-5", "must be a positive integer, got -5"),
    ("train.eval_every=-1", "must be an integer >= 0, got -1"),
    ("data.scale_range=[2.0,0.5]", "must be [min, max] with 0 < min <= max"),
    ("train.device=gpu", "must be auto, cpu, cuda or cuda:N, got 'gpu'"),
])
def test_a_value_out_of_range_is_one_line_naming_key_value_and_range(data, tmp_path, capsys, disk_state, override,
                                                                      allowed):
    before = disk_state(tmp_path)
    key = override.split("=")[0]
    _one_line_error(capsys, _train(data, tmp_path / "run", override), f"config key '{key}' in --set {override} "
                    f"{allowed}")
    assert disk_state(tmp_path) == before


@pytest.mark.parametrize("override, words", [
    ("optim.learning_rate=1e-4", "unknown config key 'optim.learning_rate' in --set optim.learning_rate=1e-4; did "
                                 "you mean 'optim.lr'?"),
    ("train.lr=1e-4", "did you mean 'optim.lr'?"),
    ("model.overrides.channel_head=4", "unknown model.overrides key 'channel_head' (TaskPrompter has no such "
                                       "argument); did you mean 'model.overrides.channel_heads'?"),
    ("model.overrides.img_size=[32,32]", "model.overrides.img_size is set by the run: use data.size instead"),
    ("model.overrides.head_act=foo", "head_act must be 'gelu' or 'relu', got 'foo'"),
    ("data.size=[60,60]", "data.size [60, 60] must be multiples of the patch size 16 of taskprompter_tiny, e.g. "
                          "data.size=[64, 64]"),
])
def test_a_typo_or_misfit_is_one_line_with_the_closest_key(data, tmp_path, capsys, disk_state, override, words):
    before = disk_state(tmp_path)
    _one_line_error(capsys, _train(data, tmp_path / "run", override), words)
    assert disk_state(tmp_path) == before


# ------------------------------------------------------------------------------------------------- the file system


@pytest.fixture(scope="module")
def shared(data, trained):
    """A folder every user may read, holding copies of the data and the run, for commands run as an unprivileged
    user (root ignores permissions; the tests then run the command as nobody through setpriv)."""
    base = Path(tempfile.mkdtemp(prefix="taskprompter-perm-"))
    shutil.copytree(data, base / "data")
    shutil.copytree(trained, base / "run")
    (base / "home").mkdir()
    for path in [base, *base.rglob("*")]:
        path.chmod(0o777 if path.is_dir() else 0o666)
    yield base
    for path in [base, *base.rglob("*")]:
        path.chmod(stat.S_IRWXU)
    shutil.rmtree(base)


def _as_user(base, argv):
    """``taskprompter argv`` as a user that permissions apply to (nobody when the tests run as root)."""
    cmd = [sys.executable, "-m", "taskprompter", *argv]
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("running as root without setpriv: permissions cannot be tested")
        cmd = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *cmd]
    env = dict(os.environ, HOME=str(base / "home"), MPLCONFIGDIR=str(base / "home"), OMP_NUM_THREADS="1")
    env.pop("RANK", None)
    probe = subprocess.run(cmd[:-len(argv) - 2] + ["-c", "import taskprompter.cli"], env=env, capture_output=True,
                           text=True, cwd=base)
    if probe.returncode != 0:
        pytest.skip(f"the unprivileged user cannot import the package here: {probe.stderr[-300:]}")
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=base)


def _assert_one_line(proc, verb, *needles):
    err = proc.stderr.strip()
    assert proc.returncode == 2, err
    assert len(err.splitlines()) == 1, err
    assert err.startswith(f"taskprompter {verb}: error: "), err
    for needle in needles:
        assert needle in err, err


def test_an_unreadable_dataset_folder_is_one_line(shared, disk_state):
    locked = shared / "locked"
    shutil.copytree(shared / "data", locked)
    locked.chmod(0o000)
    try:
        before = disk_state(shared / "out")
        proc = _as_user(shared, _train(locked, shared / "out" / "run"))
    finally:
        locked.chmod(0o777)
    _assert_one_line(proc, "train", "Permission denied: ", str(locked), "check its permissions")
    assert disk_state(shared / "out") == before == {}


@pytest.mark.parametrize("verb", ["train", "predict", "export"])
def test_an_output_folder_that_cannot_be_written_is_one_line(shared, disk_state, verb):
    readonly = shared / f"readonly-{verb}"
    readonly.mkdir()
    readonly.chmod(0o555)
    argv = {
        "train": _train(shared / "data", readonly / "run"),
        "predict": ["predict", "--checkpoint", str(shared / "run"), "--input", str(shared / "data" / "JPEGImages"),
                    "--out", str(readonly / "preds")],
        "export": ["export", "--checkpoint", str(shared / "run"), "--out", str(readonly / "model.onnx")],
    }[verb]
    before = disk_state(readonly)
    proc = _as_user(shared, argv)
    _assert_one_line(proc, verb, f"Permission denied: {readonly} (check its permissions, or use another path (for "
                                 "outputs: another --out))")
    assert disk_state(readonly) == before


@pytest.fixture
def tmpfs(tmp_path):
    """A function mounting a tmpfs of a given size (root only): a real, small disk to fill."""
    mounted = []

    def mount(size: str) -> Path:
        where = tmp_path / f"fs{len(mounted)}"
        where.mkdir()
        if os.geteuid() != 0 or shutil.which("mount") is None:
            pytest.skip("mounting a small file system needs root")
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True,
                              text=True)
        if proc.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")
        mounted.append(where)
        return where

    yield mount
    for where in mounted:
        subprocess.run(["umount", "-l", str(where)], check=False)


def test_too_little_space_for_the_checkpoints_is_refused_before_step_1(data, tmpfs, capsys):
    disk = tmpfs("8m")
    _one_line_error(capsys, _train(data, disk / "run"), "No space left on device for this run's checkpoints (",
                    "MiB free, they need about ", f"): {disk} (free space there or write somewhere else")
    assert list(disk.iterdir()) == []  # not even the run directory


def test_a_disk_that_fills_during_training_is_one_line_and_keeps_the_checkpoint(data, tmpfs, capsys, disk_state,
                                                                                 monkeypatch):
    disk = tmpfs("48m")
    run = disk / "run"
    real, seen = ck.save_checkpoint, {}

    def fill_before_the_second_save(path, **kwargs):
        seen["calls"] = seen.get("calls", 0) + 1
        if seen["calls"] == 2:  # another program takes the rest of the disk
            seen["before"] = disk_state(run)
            with open(disk / "filler", "wb") as fh:
                with pytest.raises(OSError):
                    while True:
                        fh.write(b"\0" * 2**20)
                        fh.flush()
        return real(path, **kwargs)

    monkeypatch.setattr(ck, "save_checkpoint", fill_before_the_second_save)
    capsys.readouterr()
    assert main(_train(data, run, "train.checkpoint_every=1", "train.log_every=100", "optim.max_iters=3")) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == (f"taskprompter train: error: No space left on device: {run / 'last'} (free space there or write "
                   f"somewhere else (e.g. another --out)); training stopped, the last good checkpoint is "
                   f"{run / 'last'} (step 1); resume with: taskprompter train --config {run / 'config.yaml'} "
                   "--resume"), err
    after, before = disk_state(run), seen["before"]
    assert after.pop(".")[1] >= before.pop(".")[1]  # (the run folder's mtime: a temporary folder came and went)
    assert after == before  # the failed write left nothing behind, and `last` is as it was
    assert ck.read_step(run / "last") == 1


# ------------------------------------------------------------------------------------------------- devices, --debug


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("verb", ["predict", "eval"])
def test_a_cuda_device_without_cuda_is_one_line(trained, data, tmp_path, capsys, disk_state, verb):
    argv = {"predict": ["predict", "--checkpoint", str(trained), "--input", str(data / "JPEGImages"), "--out",
                        str(tmp_path / "preds"), "--device", "cuda"],
            "eval": ["eval", "--checkpoint", str(trained), "--out", str(tmp_path / "eval"), "--device", "cuda"]}[verb]
    before = disk_state(tmp_path)
    _one_line_error(capsys, argv, "device 'cuda' requested but CUDA is not available on this machine (use --device "
                    "cpu)", verb=verb)
    assert disk_state(tmp_path) == before


def test_debug_shows_the_traceback(data, tmp_path, monkeypatch):
    argv = _train(data, tmp_path / "run", "optim.lr=-1")
    with pytest.raises(ConfigError, match="optim.lr"):
        main(["--debug", *argv])
    with pytest.raises(ConfigError, match="optim.lr"):
        main([*argv, "--debug"])
    monkeypatch.setenv("TASKPROMPTER_DEBUG", "1")
    with pytest.raises(ConfigError, match="optim.lr"):
        main(argv)


def test_an_error_from_a_dataloader_worker_keeps_its_own_message():
    wrapped = ("Caught DataError in DataLoader worker process 0.\nOriginal Traceback (most recent call last):\n"
               '  File "x.py", line 1, in f\n    raise DataError(msg)\n'
               "taskprompter.errors.DataError: unreadable image: /d/1.jpg (OSError: image file is truncated)\n")
    assert one_line(wrapped) == "unreadable image: /d/1.jpg (OSError: image file is truncated)"
    assert one_line("first\nsecond") == "first second"
