"""What training stores for the backward pass and what it recomputes: ``grad_checkpointing`` and
``selective_recompute`` (docs/architecture.md, "Training memory").

* ``grad_checkpointing=True``: blocks, decoder levels and heads keep only their inputs; everything is recomputed.
* ``selective_recompute="auto"|"on"|"off"`` (efficient path): decoder levels and heads keep their convolutions'
  outputs and recompute the cheap ops (gating, concatenation, BN, GELU, upsampling); ``"auto"`` does so only where
  the features exceed ``RECOMPUTE_MIN_BYTES`` -- below it the machinery's per-operation cost outweighs the memory.

BatchNorm layers recomputed in the backward pass must not update their running statistics a second time:
``checkpoint_contexts`` takes care of that, so a recomputing model trains bit for bit like one that stores all.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn
from torch.utils.checkpoint import CheckpointPolicy, create_selective_checkpoint_contexts

KEEP_OPS = (torch.ops.aten.convolution.default,)  # selective recomputation keeps these outputs
RECOMPUTE_MIN_BYTES = 4 * 2**20
RECOMPUTE_MODES = ("auto", "on", "off")


def selective_recompute_wanted(mode: str, nbytes: int) -> bool:
    """Whether features of ``nbytes`` are recomputed rather than stored under ``selective_recompute=mode`` (the
    caller has already checked that the efficient path trains with gradients)."""
    return mode == "on" or (mode == "auto" and nbytes >= RECOMPUTE_MIN_BYTES)


def checkpoint_contexts(module: nn.Module, keep: tuple = ()) -> tuple[contextlib.AbstractContextManager, ...]:
    """``context_fn`` for ``torch.utils.checkpoint`` of a module with BatchNorm.

    The forward updates the running statistics once; the recomputation in the backward pass runs with momentum 0
    (statistics kept) and restores the batch counters, so a checkpointed model trains exactly as one without.
    ``keep``: aten ops whose outputs are saved rather than recomputed (selective checkpointing): with the
    convolutions kept, only the cheap elementwise ops, norms and upsampling are run again.
    """
    def policy(ctx, op, *args, **kwargs) -> CheckpointPolicy:
        return CheckpointPolicy.MUST_SAVE if op in keep else CheckpointPolicy.PREFER_RECOMPUTE

    if torch.compiler.is_compiling():
        # torch.compile traces the region once and replays no buffer update in the recomputation (the graph is
        # functional), so the BatchNorm guard below is not needed -- and compile accepts only dispatch modes here
        return create_selective_checkpoint_contexts(policy)
    forward, inner = contextlib.nullcontext(), contextlib.nullcontext()
    if keep:
        forward, inner = create_selective_checkpoint_contexts(policy)

    return forward, _Recompute(module, inner)


class _Recompute:
    """The recomputation's context: BatchNorm momentum 0 and the batch counters restored. Re-enterable -- a graph
    kept for several backward passes (``retain_graph``: the loss weightings' per-task gradients) recomputes a plain
    checkpointed region once per pass; a selectively checkpointed one (``keep``) can be backpropagated once only
    (torch refuses a second pass), so `taskprompter.weighting.SharedFeatures` turns selective recomputation off."""

    def __init__(self, module: nn.Module, inner: contextlib.AbstractContextManager) -> None:
        self.module, self.inner, self.saved = module, inner, []

    def __enter__(self) -> None:
        norms = [m for m in self.module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        self.saved.append([(m, m.momentum, None if m.num_batches_tracked is None else m.num_batches_tracked.clone())
                           for m in norms])
        for m in norms:
            m.momentum = 0.0
        self.inner.__enter__()

    def __exit__(self, *exc) -> None:
        try:
            self.inner.__exit__(*exc)
        finally:
            for m, momentum, count in self.saved.pop():
                m.momentum = momentum
                if count is not None:
                    m.num_batches_tracked.copy_(count)
