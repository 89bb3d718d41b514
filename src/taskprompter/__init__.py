"""taskprompter: TaskPrompter (Ye & Xu, ICLR 2023) for multi-task dense scene understanding.

    import taskprompter
    model = taskprompter.build_model("taskprompter_vit_b_pascal")        # a preset (taskprompter.list_models())
    model.save_pretrained("models/mine")                                  # model.safetensors + config.yaml
    model = taskprompter.TaskPrompter.from_pretrained("models/mine")
    pred = taskprompter.Predictor.from_pretrained("runs/x").predict("photo.jpg")
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# public name -> the module that defines it; imported on first use so that `import taskprompter` (and the CLI's
# --help) stays fast
_PUBLIC: dict[str, str] = {
    "TaskPrompter": "taskprompter.model.taskprompter",
    "TaskSpecificEncoders": "taskprompter.model.variants",
    "TaskPrompterSwin": "taskprompter.model.swin.taskprompter_swin",
    "build_model": "taskprompter.model.build",
    "list_models": "taskprompter.model.build",
    "load_model": "taskprompter.model.build",
    "load_official_checkpoint": "taskprompter.model.released",
    "Predictor": "taskprompter.inference",
    "load_config": "taskprompter.config",
}

__all__ = [*_PUBLIC, "__version__"]


def __getattr__(name: str):
    if name in _PUBLIC:
        return getattr(importlib.import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'taskprompter' has no attribute {name!r}")
