"""Shared fixtures. Keep this file small; module-specific fixtures belong in the test modules."""

from __future__ import annotations

import pytest
import torch

SYNTH_SIZE = (64, 80)  # (H, W) of the shared synthetic trees
SYNTH_NUM = 6  # samples 000000..000003 in train, 000004..000005 in val
SYNTH_SEED = 0


@pytest.fixture(scope="session")
def synthetic_pascal_root(tmp_path_factory):
    """A small synthetic PASCAL-Context tree (6 samples of 64x80, seed 0). Treat it as read-only: copy it
    (shutil.copytree) before corrupting anything."""
    from taskprompter.data.synthetic import generate

    return generate(tmp_path_factory.mktemp("synth_pascal"), format="pascal_context", num=SYNTH_NUM,
                    size=SYNTH_SIZE, seed=SYNTH_SEED, split_ratio=4 / 6)


@pytest.fixture(scope="session")
def training_pascal_root(tmp_path_factory):
    """The training tests' synthetic PASCAL-Context tree (12 scenes of 64x64, seed 1). Treat it as read-only."""
    from taskprompter.data.synthetic import generate

    return generate(tmp_path_factory.mktemp("synth") / "PASCALContext", format="pascal_context", num=12,
                    size=(64, 64), seed=1)


@pytest.fixture(scope="session")
def synthetic_nyud_root(tmp_path_factory):
    """A small synthetic NYUD-v2 tree (6 samples of 64x80, seed 0). Treat it as read-only."""
    from taskprompter.data.synthetic import generate

    return generate(tmp_path_factory.mktemp("synth_nyud"), format="nyud", num=SYNTH_NUM, size=SYNTH_SIZE,
                    seed=SYNTH_SEED, split_ratio=4 / 6)


@pytest.fixture(autouse=True, scope="session")
def one_intra_op_thread():
    """The tests run tiny tensors: one intra-op thread is faster than two and immune to CPU contention."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def disk_state():
    """A function: every file and folder under a path (the path itself included), with each file's bytes and each
    entry's mtime -- two equal results mean that nothing on disk changed. A missing path gives {}."""
    import hashlib
    from pathlib import Path

    def state(root) -> dict[str, tuple]:
        root = Path(root)
        if not root.exists():
            return {}
        out = {}
        for path in [root, *sorted(root.rglob("*"))]:
            st = path.lstat()
            digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "dir"
            out[str(path.relative_to(root))] = (digest, st.st_mtime_ns, st.st_size if path.is_file() else 0)
        return out

    return state


@pytest.fixture(scope="session")
def run_cli():
    """``run_cli(*args, processes=1)``: `taskprompter ARGS` in a fresh process -- or under torchrun with ``processes``
    gloo processes -- with one intra-op thread and a fixed hash seed; asserts it succeeded (its stderr otherwise)."""
    import os
    import subprocess
    import sys

    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONHASHSEED="0")
    env.pop("RANK", None)

    def run(*args: str, processes: int = 1, timeout: float = 240) -> subprocess.CompletedProcess:
        launcher = ([sys.executable, "-m", "taskprompter"] if processes == 1 else
                    [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
                     str(processes), "-m", "taskprompter"])
        proc = subprocess.run([*launcher, *map(str, args)], env=env, capture_output=True, text=True, timeout=timeout)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return proc

    return run
