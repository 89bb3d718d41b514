"""The paper's baselines and ablations (Tables 1, 6, 7; Figs. 5, 7) as switches on TaskPrompter, and "w/ TE".

Table 1 stages, each built on the previous one:
  baseline         ViT + task heads Conv3x3-BN-ReLU-Conv1x1 on the last tokens, no prompts
  sprompt          + spatial task prompt learning and spatial prompting
  sprompt_cprompt  + channel task prompt learning and channel prompting
  rw               + cross-task reweighting
  hp               + hierarchical prompting (4 levels): the full TaskPrompter
A single-task model (STL) is the baseline with one task. Fig. 5 varies ``channel_heads``, Fig. 7 ``decode_blocks``
(see ``hp_levels``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

from ..errors import ConfigError
from .encoder import hp_levels
from .io import PretrainedMixin
from .taskprompter import TaskPrompter

__all__ = ["ABLATION_STAGES", "TaskSpecificEncoders", "ablation_kwargs", "hp_levels", "single_task_model"]

ABLATION_STAGES: tuple[str, ...] = ("baseline", "sprompt", "sprompt_cprompt", "rw", "hp")


def ablation_kwargs(stage: str, *, depth: int) -> dict[str, Any]:
    """The TaskPrompter switches of one Table 1 row (``stage`` in ABLATION_STAGES)."""
    if stage not in ABLATION_STAGES:
        raise ConfigError(f"unknown ablation stage {stage!r}; choose from {ABLATION_STAGES}")
    last = (depth,)
    return {
        "baseline": dict(spatial_prompts=False, channel_prompts=False, cross_task_reweighting=False,
                         decode_blocks=last, head_act="relu"),
        "sprompt": dict(spatial_prompts=True, channel_prompts=False, cross_task_reweighting=False, decode_blocks=last),
        "sprompt_cprompt": dict(spatial_prompts=True, channel_prompts=True, cross_task_reweighting=False,
                                decode_blocks=last),
        "rw": dict(spatial_prompts=True, channel_prompts=True, cross_task_reweighting=True, decode_blocks=last),
        "hp": dict(spatial_prompts=True, channel_prompts=True, cross_task_reweighting=True,
                   decode_blocks=hp_levels(depth, 4)),
    }[stage]


def single_task_model(task: str, channels: int, **kwargs: Any) -> TaskPrompter:
    """The STL model of Table 1: the multi-task baseline with one task."""
    kwargs.update(ablation_kwargs("baseline", depth=kwargs.get("depth", 12)))
    return TaskPrompter(tasks={task: channels}, **kwargs)


class TaskSpecificEncoders(PretrainedMixin, nn.Module):
    """"TaskPrompter w/ TE" (Table 6): one encoder per task, each with its single task prompt and its own decoding;
    no task-generic features and no cross-task interaction."""

    def __init__(self, *, tasks: Mapping[str, int], **kwargs: Any) -> None:
        super().__init__()
        kwargs["cross_task_reweighting"] = False  # a single prompt has no other task to reweight with
        self.init_kwargs = {"tasks": dict(tasks), **kwargs}
        self.encoders = nn.ModuleDict({t: TaskPrompter(tasks={t: c}, **kwargs) for t, c in tasks.items()})
        first = next(iter(self.encoders.values()))
        self.task_names, self.img_size, self.grid = list(tasks), first.img_size, first.grid

    def forward(self, images: Tensor, *, return_affinities: bool = False):
        outputs, affinities = {}, {}
        for task, model in self.encoders.items():
            out = model(images, return_affinities=return_affinities)
            if return_affinities:
                out, affinities[task] = out
            outputs.update(out)
        return (outputs, affinities) if return_affinities else outputs
