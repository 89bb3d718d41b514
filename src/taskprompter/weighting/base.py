"""The interface of a loss weighting method, and the shared features F the gradient-based methods look at."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from ..engine.distributed import all_reduce_sum_
from ..errors import ConfigError


class LossWeighting(nn.Module):
    """The interface: ``begin_step`` sets the step's weights, ``combine`` weighs a micro-batch's losses, ``update``
    learns from the finished step. ``tasks`` fixes the order of every (T,) vector; ``base_weights`` are the fixed
    (released) weights, used by ``fixed`` and, with ``fixed_weights: true``, as factors by ``uw`` and ``dwa``."""

    name: ClassVar[str] = ""
    needs_current_losses: ClassVar[bool] = False
    needs_feature_grads: ClassVar[bool] = False
    needs_step_losses: ClassVar[bool] = False
    needs_gram: ClassVar[bool] = False  # gradient-level: the Gram matrix of the per-task gradients (gradient_level.py)

    def __init__(self, *, tasks: Sequence[str], base_weights: Mapping[str, float]) -> None:
        super().__init__()
        self.tasks = list(tasks)
        self.base_weights = {t: float(base_weights.get(t, 1.0)) for t in self.tasks}
        # the multipliers of the step's losses, set by begin_step (derived from the state, so not saved)
        self.register_buffer("current", torch.ones(len(self.tasks), dtype=torch.float64), persistent=False)

    def begin_step(self, step: int, *, losses: Tensor | None = None, grad_sq: Tensor | None = None,
                   gram: Tensor | None = None) -> None:
        """Set ``current`` for optimiser step ``step`` (0-based), before its first backward."""

    def combine(self, losses: Mapping[str, Tensor], *, share: float = 1.0) -> Tensor:
        """sum_t w_t L_t of one micro-batch's losses. ``share``: the fraction of once-per-step terms this call carries
        (1 / (micro-batches x processes) under global loss normalisation)."""
        return sum(w * losses[t] for t, w in zip(self.tasks, self.current.tolist()))

    def update(self, losses: Tensor, step: int) -> None:
        """Learn from the finished step ``step``: ``losses`` (T,) its global per-task losses."""

    def weights(self) -> dict[str, float]:
        """{task: the multiplier of its loss in this step}."""
        return dict(zip(self.tasks, self.current.tolist()))

    def param_group(self) -> dict[str, Any] | None:
        """The optimiser parameter group of the method's learned parameters (None: it has none)."""
        return None

    def average_gradients(self, world_size: int) -> None:
        """Average the learned parameters' gradients over processes, as DDP does for the model's (they live outside
        the DDP-wrapped model); no-op in one process."""
        for p in self.parameters():
            if p.grad is not None and world_size > 1:
                all_reduce_sum_(p.grad).div_(world_size)

    def _vector(self, values: Tensor) -> Tensor:
        return values.detach().to(self.current.device, torch.float64)


# ------------------------------------------------------------------------------------------------- shared features


class SharedFeatures:
    """Keeps the tensors the shared encoder (``model.backbone``) outputs in each training forward pass -- every
    decoding level's tokens and affinities -- for the per-task gradients at F. ``pop()`` hands them over and forgets
    them (no activation outlives its step).

    ``detach=True`` (the gradient-level methods): the decoder receives F cut from the encoder's graph (leaf copies
    that require grad), so the per-task gradients at F traverse the decoders only, the decoders' backward stops at F,
    and the encoder's backward is started from F with the combined gradient; ``pop_pairs()`` hands over (encoder
    outputs, the leaves the decoder saw)."""

    def __init__(self, model: nn.Module, *, detach: bool = False) -> None:
        backbone = getattr(model, "backbone", None)
        if not isinstance(backbone, nn.Module):
            raise ConfigError(f"{type(model).__name__} has no shared encoder (`backbone`) whose outputs gradnorm_scale "
                              "could weigh at (task-specific encoders share nothing); use another "
                              "train.loss_weighting")
        self.backbone, self.detach = backbone, detach
        self._tensors: list[Tensor] = []
        self._leaves: list[Tensor] = []
        self._handle = backbone.register_forward_hook(self._keep)
        # the per-task gradients traverse the decoders and heads once per task before the step's backward, and torch
        # backpropagates a selectively checkpointed region once only: selective recomputation is off while the
        # capture is installed (plain grad_checkpointing recomputes once per pass and stays)
        self.model, self._recompute = model, getattr(model, "selective_recompute", None)
        if self._recompute not in (None, "off"):
            model.selective_recompute = "off"

    def _keep(self, module: nn.Module, args: Any, output: Any) -> Any:
        tree = torch.utils._pytree
        leaves = tree.tree_leaves(output)  # tuples, lists and Affinity (a NamedTuple) of tensors
        self._tensors = [t for t in leaves if torch.is_tensor(t) and t.requires_grad]
        if not self.detach or not self._tensors:
            self._leaves = []
            return None  # the output unchanged
        cut = {id(t): t.detach().requires_grad_() for t in self._tensors}
        self._leaves = [cut[id(t)] for t in self._tensors]
        return tree.tree_map(lambda t: cut.get(id(t), t) if torch.is_tensor(t) else t, output)

    def pop(self) -> list[Tensor]:
        tensors, self._tensors, self._leaves = self._tensors, [], []
        return tensors

    def pop_pairs(self) -> tuple[list[Tensor], list[Tensor]]:
        """(the encoder's outputs, the leaves the decoders saw in their place); ``detach=True`` only."""
        if not self.detach:
            raise RuntimeError("SharedFeatures(detach=False) does not cut the graph at F")
        pairs = (self._tensors, self._leaves)
        self._tensors, self._leaves = [], []
        return pairs

    def remove(self) -> None:
        self._handle.remove()
        self._tensors, self._leaves = [], []
        if self._recompute not in (None, "off"):
            self.model.selective_recompute = self._recompute


def feature_grad_sq(losses: Mapping[str, Tensor], features: Sequence[Tensor], tasks: Sequence[str], *,
                    scale: float = 1.0) -> Tensor:
    """(T,) float64: sum over the feature tensors of |dL_t/dF|^2 for each task, one ``autograd.grad`` per task that
    keeps the graph for the backward that follows. ``scale``: the loss scale of fp16 training -- each task's loss is
    scaled before its backward and its gradient unscaled before the norm."""
    if not features:
        raise RuntimeError("no shared features were captured in this forward pass (is the model's backbone used?)")
    out = []
    for t in tasks:
        total = torch.zeros((), dtype=torch.float64, device=features[0].device)
        if losses[t].requires_grad:
            grads = torch.autograd.grad(losses[t] * scale, features, retain_graph=True, allow_unused=True)
            for g in grads:
                if g is not None:
                    total = total + (g.double() / scale).pow(2).sum()
        out.append(total)
    return torch.stack(out)
