"""Stopping training on request: Ctrl-C (SIGINT) or a scheduler's SIGTERM finishes the step, writes ``last`` and
stops with the command that resumes; a second request a second or more later stops at once."""

from __future__ import annotations

import signal
import threading
import time
from typing import Any

import torch

from .distributed import Dist, summed_over_processes


class StopRequest:
    """SIGINT (Ctrl-C) or SIGTERM (a scheduler's preemption) during training: the first one lets the step finish,
    writes ``last`` and stops with the command that resumes; another one a second or more later stops at once (the
    last checkpoint is kept). A repeat within a second is the same request (torchrun forwards the terminal's signal
    to processes that already got it)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.signum: int | None = None
        self._at = 0.0
        self._previous: dict[int, Any] = {}
        self._log = None

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum is not None else "request"

    def install(self, log) -> None:
        self._log = log
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}

    def restore(self) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is None:
            self.signum, self._at = signum, time.monotonic()
            if self._log is not None:
                self._log.warning(f"{self.name}: finishing this step and writing the checkpoint (again to stop at "
                                  "once)")
        elif time.monotonic() - self._at > 1.0:
            raise KeyboardInterrupt

    def requested(self, d: Dist) -> bool:
        """Whether any process was asked to stop: one all-reduce under torchrun, so that all stop after one step."""
        return bool(summed_over_processes(torch.tensor([0.0 if self.signum is None else 1.0]), d).item() > 0)


def ignore_sigint(worker_id: int) -> None:
    """DataLoader workers leave Ctrl-C to the trainer, which finishes its step before stopping."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
