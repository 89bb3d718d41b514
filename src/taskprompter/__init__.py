"""taskprompter: TaskPrompter (Ye & Xu, ICLR 2023) for multi-task dense scene understanding."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["TaskPrompter", "build_model", "load_official_checkpoint", "Predictor", "load_config", "__version__"]


def __getattr__(name: str):
    # Lazy so that `import taskprompter` (and the CLI's --help) stays fast.
    if name in ("TaskPrompter",):
        from .model.taskprompter import TaskPrompter

        return TaskPrompter
    if name == "build_model":
        from .model.build import build_model

        return build_model
    if name == "load_official_checkpoint":
        from .model.checkpoints import load_official_checkpoint

        return load_official_checkpoint
    if name == "Predictor":
        from .inference import Predictor

        return Predictor
    if name == "load_config":
        from .config import load_config

        return load_config
    raise AttributeError(f"module 'taskprompter' has no attribute {name!r}")
