"""``weighted_backward``: what a training loop calls instead of ``loss.backward()`` (issue 15).

    weighting = build_weighting("upgrad", tasks=criterion.tasks, base_weights=criterion.weights)
    features = shared_features_for(weighting, model)        # None for the methods that need no gradients at F
    for step, batch in enumerate(loader):
        optimizer.zero_grad()
        losses = criterion(model(batch["image"]), batch)    # {task: L_t, ...}
        weighted_backward(weighting, losses, step=step, features=features)
        optimizer.step()
        weighting.update(...)                                # dwa: the step's losses (see LossWeighting)

Everything a method learns from is the step's *global* statistics -- the losses, the squared gradient norms or the
Gram matrix of the per-task gradients summed over processes (``d``), so N processes weigh exactly as one process
on the same global batch. ``loss_scale`` is the trainer's factor of every backward (the number of processes under
global loss normalisation, 1 / micro-batches under local), ``scaler`` fp16's gradient scaler: per-task gradients
are taken of scaled losses and unscaled before any geometry, and the scaler sees the combined backward.

The gradient-level methods (``needs_gram``) run, per step:
  1. one ``autograd.grad`` per task from L_t to the leaves F the decoders saw (`SharedFeatures(detach=True)`): the
     decoders' graph only, kept for the next pass;
  2. K_ij = g_i . g_j, summed over processes (``grads: parameters``: the gradients carried on to the encoder's
     parameters, summed over processes, then K) -> the method's coefficients c, taken from process 0 (solvers
     need not be bit-reproducible across processes);
  3. the backward of sum_t s_t L_t: the decoders and heads, stopping at F;
  4. the encoder's backward from F with sum_t c_t g_t.
Under DDP the gradients of steps 3 and 4 are all-reduced by DDP as usual (each parameter receives its gradient in
exactly one of them).

A step of several micro-batches (``train.accum_steps`` > 1) knows its global statistics only after its last forward, so
the methods that weigh by them (`needs_statistics_first`) take two passes: ``begin_accumulated_step`` runs every
micro-batch's forward once for its share of the statistics (summed, like processes' shares: the micro-batches hold
different samples), frees its graph, and calls ``begin_step`` once; then the loop's ordinary forward and
``weighted_backward(..., first=False)`` of every micro-batch use the step's fixed weights or coefficients. The
gradient-level methods recompute each micro-batch's per-task gradients at F in the second pass (T decoder backward
passes again) rather than keep them from the first: the memory of a step stays that of one micro-batch, which is what
accumulation is for. The second pass repeats the first's forwards exactly: torch's RNG (drop path) and every buffer of
the model (BatchNorm's running statistics, so they are updated once per micro-batch) are put back after the first.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ..engine.distributed import Dist, all_reduce_sum_, summed_over_processes
from .base import LossWeighting, SharedFeatures, feature_grad_sq


def shared_features_for(weighting: LossWeighting, model: nn.Module) -> SharedFeatures | None:
    """The capture of the encoder's outputs a method needs (cut from the encoder's graph for the gradient-level
    methods), or None."""
    if weighting.needs_gram:
        return SharedFeatures(model, detach=True)
    if weighting.needs_feature_grads:
        return SharedFeatures(model)
    return None


def needs_statistics_first(weighting: LossWeighting) -> bool:
    """Whether the method weighs a step by the step's global statistics, needed before its first backward (the losses,
    the feature-gradient norms or the Gram matrix): a step of several micro-batches then takes two passes
    (``begin_accumulated_step``)."""
    return weighting.needs_current_losses or weighting.needs_feature_grads or weighting.needs_gram


def weighted_backward(weighting: LossWeighting, losses: Mapping[str, Tensor], *, step: int, first: bool = True,
                      features: SharedFeatures | None = None, d: Dist | None = None, loss_scale: float = 1.0,
                      share: float = 1.0, scaler: torch.amp.GradScaler | None = None) -> Tensor:
    """Backpropagate one micro-batch's ``losses`` ({task: L_t}) as the method combines them; returns the combined
    loss (detached, for the log). ``first``: the step's first micro-batch, where the step's weights are set (False on
    every micro-batch after ``begin_accumulated_step``); ``share``: the fraction of the step's once-per-step terms
    this micro-batch carries (UW's regulariser)."""
    d = d or Dist(rank=0, world_size=1, local_rank=0, device=next(iter(losses.values())).device)  # one process
    scale = _loss_scale(scaler)
    if weighting.needs_gram:
        return _gradient_level_backward(weighting, losses, step=step, first=first, features=features, d=d,
                                        loss_scale=loss_scale, scale=scale, scaler=scaler)
    if first:
        mine = _local_statistics(weighting, losses, features=features, scale=scale, loss_scale=loss_scale)
        _begin_step(weighting, step, mine, d=d, loss_scale=loss_scale)
    elif features is not None:
        features.pop()  # the step's weights are set: forget this forward's F
    total = weighting.combine(losses, share=share)
    _scaled(total * loss_scale, scaler).backward()
    return total.detach()


def begin_accumulated_step(weighting: LossWeighting, micro: Sequence[Any],
                           losses_of: Callable[[nn.Module, Any], Mapping[str, Tensor]], *, step: int,
                           net: nn.Module, model: nn.Module, features: SharedFeatures | None = None,
                           d: Dist | None = None, loss_scale: float = 1.0,
                           scaler: torch.amp.GradScaler | None = None) -> None:
    """The first pass of a step of several micro-batches (``micro``) for a method that `needs_statistics_first`:
    each micro-batch's share of the step's global statistics, its graph freed before the next forward, then
    ``begin_step`` once. The loop then runs its ordinary pass with ``weighted_backward(..., first=False)``; its
    forwards repeat these exactly (torch's RNG and the model's buffers are put back, `replayable_forwards`).

    ``losses_of(module, batch)``: one micro-batch's {task: L_t} as the loop computes them (device, autocast, the
    global loss normalisation), from a forward of ``module``. The losses alone (famo) come from a no-grad forward of
    ``net``, the loop's model (DDP expects no backward after it; under ``train.compile`` the same compiled function as
    the second pass); the gradients at F from a forward of ``model``, the module DDP wraps, so that DDP's reducer is
    never involved (``autograd.grad`` to F or to the encoder's parameters fills no ``.grad``). Every process runs the
    same forwards, so SyncBatchNorm's all-reduces pair up."""
    d = d or Dist(rank=0, world_size=1, local_rank=0, device=next(model.parameters()).device)
    scale = _loss_scale(scaler)
    gradients = weighting.needs_feature_grads or weighting.needs_gram
    mine: dict[str, Tensor] = {}
    with replayable_forwards(model, d.device):
        for batch in micro:
            part = _micro_batch_statistics(weighting, losses_of, batch, module=model if gradients else net,
                                           gradients=gradients, features=features, scale=scale, loss_scale=loss_scale)
            for key, value in part.items():  # summed over micro-batches, as over processes below
                mine[key] = value if key not in mine else mine[key].add_(value)
    _begin_step(weighting, step, mine, d=d, loss_scale=loss_scale)


@contextlib.contextmanager
def replayable_forwards(model: nn.Module, device: torch.device) -> Iterator[None]:
    """Put back, after the block, torch's RNG (the CPU's and ``device``'s CUDA generator) and every buffer of
    ``model`` as they were before it: the forwards that follow draw what the block's drew (drop path) and BatchNorm's
    running statistics are updated by them alone, as if the block had not run."""
    cpu = torch.get_rng_state()
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    buffers = [(b, b.detach().clone()) for b in model.buffers()]
    try:
        yield
    finally:
        torch.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state(cuda, device)
        with torch.no_grad():
            for b, saved in buffers:
                b.copy_(saved)


def _micro_batch_statistics(weighting, losses_of, batch, *, module, gradients, features, scale,
                            loss_scale) -> dict[str, Tensor]:
    """One micro-batch's share of the step's statistics; its graph is freed on return."""
    with contextlib.nullcontext() if gradients else torch.no_grad():
        losses = losses_of(module, batch)
    return _local_statistics(weighting, losses, features=features, scale=scale, loss_scale=loss_scale)


def _local_statistics(weighting, losses, *, features, scale, loss_scale, outputs=None,
                      grads=None) -> dict[str, Tensor]:
    """This process's share of the statistics the method needs, from one micro-batch's ``losses`` (the graph kept):
    ``losses`` (T,) as logged; ``grad_sq`` (T,) |dL_t/dF|^2; ``gram`` (T, T) of the gradients at F, or
    ``gradients`` (T, P) at the encoder's parameters (``grads: parameters``: summed before the Gram is taken).
    ``outputs``, ``grads``: the gradient-level methods' encoder outputs and per-task gradients at F when the caller
    has them already."""
    out = {}
    if weighting.needs_current_losses:  # the global batch's losses, as logged
        out["losses"] = torch.tensor([losses[t].detach().float().item() * loss_scale for t in weighting.tasks],
                                     dtype=torch.float64)
    if weighting.needs_feature_grads:  # fp16: unscaled before the norm
        out["grad_sq"] = feature_grad_sq(losses, _required(features).pop(), weighting.tasks, scale=scale)
    if weighting.needs_gram:
        if grads is None:
            outputs, leaves = _leaves(features)
            grads = task_gradients(losses, leaves, weighting.tasks, scale=scale)  # [t][k] of this micro-batch's L_t
        if weighting.grads == "parameters":
            params = [p for p in features.backbone.parameters() if p.requires_grad]
            out["gradients"] = parameter_gradients(outputs, grads, params, scale=scale)  # (T, P)
        else:
            out["gram"] = gram_matrix(grads)
    return out


def _begin_step(weighting, step, mine, *, d, loss_scale) -> None:
    """``begin_step`` with the statistics summed over processes; the gradient-level methods then use process 0's
    coefficients everywhere (a QP solver need not agree to the last bit)."""
    stats = {}
    if "losses" in mine:
        stats["losses"] = summed_over_processes(mine["losses"], d) / d.world_size
    if "grad_sq" in mine:
        stats["grad_sq"] = summed_over_processes(mine["grad_sq"], d)
    factor = loss_scale / d.world_size  # d(global L_t) = factor x d(each share's L_t), summed over the shares
    if "gradients" in mine:
        flat = mine.pop("gradients")  # held by nothing else: freed before the backward passes that follow
        if d.enabled:
            all_reduce_sum_(flat)
        flat = flat.double() * factor
        stats["gram"] = (flat @ flat.T).cpu()
        del flat
    if "gram" in mine:
        stats["gram"] = summed_over_processes(mine["gram"].to(d.device), d).cpu() * factor**2
    weighting.begin_step(step, **stats)
    if weighting.needs_gram and d.enabled:
        main = weighting.current.detach().cpu() * (1.0 if d.is_main else 0.0)
        weighting.current.copy_(summed_over_processes(main, d))


def _gradient_level_backward(weighting, losses, *, step, first, features, d, loss_scale, scale, scaler) -> Tensor:
    outputs, leaves = _leaves(features)
    grads = task_gradients(losses, leaves, weighting.tasks, scale=scale)  # [t][k] of this process's loss share
    if first:
        mine = _local_statistics(weighting, losses, features=features, scale=scale, loss_scale=loss_scale,
                                 outputs=outputs, grads=grads)
        _begin_step(weighting, step, mine, d=d, loss_scale=loss_scale)
    coefficients = weighting.current.tolist()
    _scaled(weighting.combine(losses) * loss_scale, scaler).backward()  # decoders and heads, stopping at F
    combined = []
    for k, out in enumerate(outputs):  # sum_t c_t g_t at each feature tensor
        acc = torch.zeros_like(out, dtype=torch.float32)
        for t, c in enumerate(coefficients):
            if c != 0 and grads[t][k] is not None:
                acc.add_(grads[t][k], alpha=c)
        combined.append((acc * (scale * loss_scale)).to(out.dtype))
    torch.autograd.backward(outputs, grad_tensors=combined)  # the encoder, once
    return sum(c * losses[t].detach() for t, c in zip(weighting.tasks, coefficients))


def task_gradients(losses: Mapping[str, Tensor], leaves: Sequence[Tensor], tasks: Sequence[str], *,
                   scale: float = 1.0) -> list[list[Tensor | None]]:
    """[t][k]: dL_t / d leaves[k] in fp32 (None where L_t does not depend on it), one ``autograd.grad`` per task that
    keeps the graph; fp16: each loss scaled by ``scale`` before and its gradient unscaled after."""
    out = []
    for t in tasks:
        if not losses[t].requires_grad:
            out.append([None] * len(leaves))
            continue
        found = torch.autograd.grad(losses[t] * scale, leaves, retain_graph=True, allow_unused=True)
        out.append([None if g is None else g.float() / scale for g in found])
    return out


def gram_matrix(grads: Sequence[Sequence[Tensor | None]]) -> Tensor:
    """(T, T) float64: K_ij = sum_k <g_i[k], g_j[k]>, accumulated tensor by tensor in float64."""
    T = len(grads)
    device = next((g.device for row in grads for g in row if g is not None), torch.device("cpu"))
    gram = torch.zeros(T, T, dtype=torch.float64, device=device)
    for k in range(len(grads[0]) if T else 0):
        rows = [i for i in range(T) if grads[i][k] is not None]
        if rows:
            G = torch.stack([grads[i][k].reshape(-1) for i in rows]).double()  # (m, D_k)
            idx = torch.tensor(rows, device=device)
            gram[idx[:, None], idx[None, :]] += G @ G.T
    return gram


def parameter_gradients(outputs: Sequence[Tensor], grads: Sequence[Sequence[Tensor | None]],
                        params: Sequence[Tensor], *, scale: float = 1.0) -> Tensor:
    """(T, P) fp32: each task's gradient carried from F back to the encoder's parameters (one encoder backward per
    task, keeping its graph for the combined backward that follows)."""
    rows = []
    for row in grads:
        pairs = [(o, g * scale) for o, g in zip(outputs, row) if g is not None]
        flat = torch.zeros(sum(p.numel() for p in params), dtype=torch.float32, device=params[0].device)
        if pairs:
            found = torch.autograd.grad([o for o, _ in pairs], params, grad_outputs=[g.to(o.dtype) for o, g in pairs],
                                        retain_graph=True, allow_unused=True)
            at = 0
            for p, g in zip(params, found):
                if g is not None:
                    flat[at:at + p.numel()] = g.reshape(-1).float() / scale
                at += p.numel()
        rows.append(flat)
    return torch.stack(rows)


def _leaves(features: SharedFeatures | None) -> tuple[list[Tensor], list[Tensor]]:
    outputs, leaves = _required(features).pop_pairs()
    if not leaves:
        raise RuntimeError("no shared features were captured in this forward pass (is the model's backbone used?)")
    return outputs, leaves


def _loss_scale(scaler: torch.amp.GradScaler | None) -> float:
    return scaler.get_scale() if scaler is not None and scaler.is_enabled() else 1.0


def _required(features: SharedFeatures | None) -> SharedFeatures:
    if features is None:
        raise ValueError("this method needs the shared features: pass features=shared_features_for(weighting, model)")
    return features


def _scaled(loss: Tensor, scaler: torch.amp.GradScaler | None) -> Tensor:
    return scaler.scale(loss) if scaler is not None and scaler.is_enabled() else loss
