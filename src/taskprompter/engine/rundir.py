"""The run directory: a previous run is never replaced by accident, and one training process works in it at a time.

    taskprompter train ... --out runs/x               refused when runs/x holds a previous run
    taskprompter train ... --out runs/x --resume      continues it (from last/ or best/, whichever is newer)
    taskprompter train ... --out runs/x --overwrite   replaces it, once every check before step 1 has passed

A previous run is any of ``RUN_MARKERS``; an empty folder, or one holding only other files, is not one.
``<run>/.lock`` carries an advisory lock that the training process (rank 0 under torchrun; the other ranks are the same
run) holds for its whole life: the kernel releases it when the process ends, however it ends (``kill -9`` included),
so a stale lock never blocks a restart. The file stays, naming its last holder. It is a POSIX record lock
(``fcntl.lockf``) rather than a ``flock``: forked DataLoader workers do not inherit it, so a killed trainer's workers,
which linger for a few seconds, cannot keep its run locked.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
import socket
from pathlib import Path

import torch
import yaml

from ..errors import CheckpointError, ConfigError, TaskPrompterError
from . import checkpoint as ck

RUN_MARKERS = ("config.yaml", "metrics.jsonl", "last", "best", "last.old", "best.old")
RUN_FILES = (*RUN_MARKERS, "git_sha.txt", "train.log", "tb")  # what --overwrite removes (and nothing else)
LOCK = ".lock"


class RunDirError(TaskPrompterError):
    """The run directory holds another run, is in use by another process, or cannot take the run's files."""


def resume_command(out_dir: Path) -> str:
    return f"taskprompter train --config {out_dir / 'config.yaml'} --resume"


def previous_run(out_dir: Path) -> list[str]:
    """The files and folders of a previous run in ``out_dir`` (``RUN_MARKERS`` that exist)."""
    return [name for name in RUN_MARKERS if (out_dir / name).exists()]


def describe_run(out_dir: Path) -> str:
    """`config.yaml, metrics.jsonl, last/ (step 200)`: what a previous run left, for messages."""
    parts = []
    for name in previous_run(out_dir):
        text = f"{name}/" if (out_dir / name).is_dir() else name
        try:
            step = yaml.safe_load((out_dir / name / "checkpoint.yaml").read_text())["step"]
            text += f" (step {step})"
        except (OSError, yaml.YAMLError, TypeError, KeyError):
            pass
        parts.append(text)
    return ", ".join(parts)


def _inside(path: Path, folder: Path) -> bool:
    return folder.resolve() in (path.resolve(), *path.resolve().parents)


def check_reuse(out_dir: Path, *, resume: bool | str, overwrite: bool) -> None:
    """Refuse a run directory that holds a previous run unless ``resume`` continues it or ``overwrite`` replaces it.
    Reads only."""
    own = resume is True or (bool(resume) and _inside(Path(str(resume)), out_dir))
    if overwrite and own:
        raise ConfigError(f"--resume and --overwrite contradict each other: --resume continues the run in {out_dir}, "
                          "--overwrite deletes it; give one of them")
    if overwrite or own or not previous_run(out_dir):
        return
    if resume:
        raise RunDirError(f"{out_dir} holds another run ({describe_run(out_dir)}); to continue {resume} choose an "
                          "empty --out, or replace that run with --overwrite")
    raise RunDirError(f"{out_dir} already holds a run ({describe_run(out_dir)}); continue it with --resume, replace "
                      "it with --overwrite (deletes its checkpoints and logs), or choose another --out")


def clear_previous_run(out_dir: Path) -> list[str]:
    """--overwrite: remove what an earlier training run wrote into ``out_dir`` (``RUN_FILES`` and interrupted
    checkpoint writes); other files stay. Returns the names removed."""
    removed = []
    for path in [out_dir / name for name in RUN_FILES] + sorted(out_dir.glob(".last.tmp*")) + sorted(
            out_dir.glob(".best.tmp*")):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()
        else:
            continue
        removed.append(path.name)
    return removed


def _nearest_existing(path: Path) -> Path:
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_writable(out_dir: Path) -> None:
    """Raise the OSError that the run's first write into ``out_dir`` would meet (a file in the way, a read-only file
    system, no permission), without writing anything."""
    base = _nearest_existing(out_dir)
    if not base.is_dir():
        raise OSError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(base))
    if os.statvfs(base).f_flag & os.ST_RDONLY:
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(base))
    if not os.access(base, os.W_OK | os.X_OK):
        raise OSError(errno.EACCES, os.strerror(errno.EACCES), str(base))


def check_space(out_dir: Path, needed: int) -> None:
    """Raise ENOSPC now, rather than at the first checkpoint hours later, when ``out_dir``'s file system has less
    than ``needed`` bytes free."""
    base = _nearest_existing(out_dir)
    free = shutil.disk_usage(base).free
    if free < needed:
        raise OSError(errno.ENOSPC, f"{os.strerror(errno.ENOSPC)} for this run's checkpoints ({free / 2**20:.1f} MiB "
                      f"free, they need about {needed / 2**20:.1f} MiB)", str(base))


class RunLock:
    """``<run>/.lock``: an advisory lock held by one training process for its whole life.

    Network file systems: on NFS (v3 with lockd, v4) the server keeps POSIX locks, so the lock holds across machines;
    on a file system without lock support the run starts unlocked (``unsupported`` says why) and the caller warns.
    The process must not open and close ``.lock`` otherwise while it holds the lock: POSIX locks drop at the first
    close of any descriptor of the file."""

    def __init__(self, out_dir: Path) -> None:
        self.path = out_dir / LOCK
        self.fd: int | None = None
        self.unsupported: str | None = None  # why the file system refused to lock, when it did
        self.announced = False  # this process's pid is in the file

    def acquire(self, *, create: bool = True) -> None:
        """Take the lock (without ``create``, only when the lock file exists already: nothing is written). Raises
        RunDirError naming the holder when another process has it."""
        if self.fd is None:
            if not create and not self.path.is_file():
                return
            fd = os.open(self.path, os.O_RDWR | (os.O_CREAT if create else 0), 0o644)
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as err:
                if err.errno in (errno.EACCES, errno.EAGAIN):  # held by another process
                    holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
                    os.close(fd)
                    raise RunDirError(f"{self.path.parent} is in use by another training process ({holder}, holding "
                                      f"{self.path}); wait for it to end or stop it, or choose another --out") from None
                self.unsupported = err.strerror  # ENOLCK, EOPNOTSUPP: a file system without locks
            self.fd = fd
        if create and not self.announced:  # name the holder for a process that finds the lock taken
            os.ftruncate(self.fd, 0)
            os.pwrite(self.fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
            self.announced = True

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the descriptor releases the lock
            self.fd, self.announced = None, False


# ------------------------------------------------------------------------------------------------- a run's life


def probe(out_dir: Path, lock: RunLock) -> None:
    """Before the (long) checks: refuse a run directory held by another process or that cannot be written."""
    lock.acquire(create=False)  # the lock of an earlier run: taken now, nothing written
    check_writable(out_dir)


def start(out_dir: Path, lock: RunLock, *, resume: bool | str, overwrite: bool, checkpoint_bytes: int,
               log) -> None:
    """Room for the checkpoints, the directory and its lock, the reuse check again under the lock, --overwrite."""
    absent = sum(not (out_dir / name).exists() for name in ("last", "best"))
    check_space(out_dir, checkpoint_bytes * (1 + absent) + 2**20)  # + the temporary copy of a swap
    out_dir.mkdir(parents=True, exist_ok=True)
    lock.acquire()
    if lock.unsupported:
        log.warning(f"{lock.path}: this file system cannot lock ({lock.unsupported}); nothing keeps a second "
                    f"training process out of {out_dir}")
    check_reuse(out_dir, resume=resume, overwrite=overwrite)  # a process that started meanwhile
    if overwrite:
        removed = clear_previous_run(out_dir)
        if removed:
            log.warning(f"--overwrite: removed {', '.join(removed)} of the previous run in {out_dir}")


def checkpoint_bytes(model: torch.nn.Module) -> int:
    """Size of one checkpoint: the weights and buffers, and the optimiser's two moments per parameter."""
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    return sum(t.numel() * t.element_size() for t in model.state_dict().values()) + 2 * params


def find_resume(resume: bool | str, out_dir: Path, log) -> ck.ResumePoint | None:
    """The checkpoint ``--resume`` continues, read whole: a given path, else the newer of the run's ``last`` and
    ``best`` (``best`` is newer when evaluations come more often than checkpoints). A run without any checkpoint
    starts at step 0; a damaged checkpoint is an error naming the file, never a restart."""
    if not resume:
        return None
    if resume is not True:
        return ck.load_for_resume(resume)
    found = ck.run_checkpoints(out_dir)
    if not found:
        log.info(f"--resume: {out_dir} has no checkpoint yet; starting from step 0")
        return None
    steps = {path: ck.read_step(path) for path in found}
    return ck.load_for_resume(max(found, key=lambda path: steps[path]))  # `last` on a tie


def kept(out_dir: Path, advice: str = "") -> str:
    """Which checkpoint a stopped run continues from, and the command that does it (then ``advice``)."""
    steps = {}
    for path in ck.run_checkpoints(out_dir):
        with contextlib.suppress(CheckpointError):
            steps[path] = ck.read_step(path)
    if not steps:
        return "no checkpoint had been written yet"
    path = max(steps, key=lambda p: steps[p])
    return (f"the last good checkpoint is {path} (step {steps[path]}); resume with: "
            f"{resume_command(out_dir)}{advice}")
