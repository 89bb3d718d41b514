"""Multi-task gain Delta_m (Maninis et al., 2019), the paper's "MTL Gain" column.

    Delta_m = (1 / T) * sum_t (-1)^{l_t} (M_mt,t - M_st,t) / M_st,t * 100

over the tasks t of the multi-task model, with M the task's primary metric and l_t = 1 when lower is better (depth
rmse, normals mean error), 0 otherwise (mIoU, maxF, odsF), both from the task table (`taskprompter.tasks.TASKS`).
Positive = better than single-task.
"""

from __future__ import annotations

from collections.abc import Mapping

from ..tasks import TASKS

# Single-task ViT-B references on PASCAL-Context (paper, Table 1, "STL Model"): they reproduce its Delta_m column.
PAPER_STL_VITB_PASCAL: dict[str, float] = {
    "semseg": 78.42,
    "human_parts": 68.36,
    "sal": 85.34,
    "normals": 13.87,
    "edge": 73.90,
}


def _primary(values: Mapping[str, float | Mapping[str, float]], task: str, what: str) -> float:
    value = values[task]
    if isinstance(value, Mapping):
        key = TASKS[task].primary
        if key not in value:
            raise KeyError(f"{what} for task {task!r} has no {key!r} (its primary metric); keys: {sorted(value)}")
        return float(value[key])
    return float(value)


def delta_m(
    results: Mapping[str, float | Mapping[str, float]],
    references: Mapping[str, float | Mapping[str, float]] = PAPER_STL_VITB_PASCAL,
    *,
    higher_is_better: Mapping[str, bool] | None = None,
) -> float:
    """Delta_m in percent over the tasks in `results`.

    results / references: {task: primary value} or {task: {metric: value}} (a meter's compute() output).
    higher_is_better: per-task direction overrides (default: the task table).
    """
    tasks = [t for t in results if t in TASKS or (higher_is_better and t in higher_is_better)]
    if not tasks:
        raise ValueError(f"no known task in results {sorted(results)}")
    missing = [t for t in tasks if t not in references]
    if missing:
        raise KeyError(f"no single-task reference for task(s) {missing}; references have {sorted(references)}")
    total = 0.0
    for task in tasks:
        up = (higher_is_better or {}).get(task, TASKS[task].higher_is_better if task in TASKS else True)
        mt, st = _primary(results, task, "results"), _primary(references, task, "references")
        total += (1 if up else -1) * (mt - st) / st * 100
    return total / len(tasks)
