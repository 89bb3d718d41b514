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
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

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


def weighted_backward(weighting: LossWeighting, losses: Mapping[str, Tensor], *, step: int, first: bool = True,
                      features: SharedFeatures | None = None, d: Dist | None = None, loss_scale: float = 1.0,
                      share: float = 1.0, scaler: torch.amp.GradScaler | None = None) -> Tensor:
    """Backpropagate one micro-batch's ``losses`` ({task: L_t}) as the method combines them; returns the combined
    loss (detached, for the log). ``first``: the step's first micro-batch, where the step's weights are set;
    ``share``: the fraction of the step's once-per-step terms this micro-batch carries (UW's regulariser)."""
    d = d or Dist(rank=0, world_size=1, local_rank=0, device=next(iter(losses.values())).device)  # one process
    scale = scaler.get_scale() if scaler is not None and scaler.is_enabled() else 1.0
    if weighting.needs_gram:
        return _gradient_level_backward(weighting, losses, step=step, features=features, d=d, loss_scale=loss_scale,
                                        scale=scale, scaler=scaler)
    if first:
        stats = {}
        if weighting.needs_current_losses:  # the global batch's losses, as logged
            mine = torch.tensor([losses[t].detach().float().item() * loss_scale for t in weighting.tasks],
                                dtype=torch.float64)
            stats["losses"] = summed_over_processes(mine, d) / d.world_size
        if weighting.needs_feature_grads:  # |dL_t/dF|^2 summed over processes (fp16: unscaled before the norm)
            mine = feature_grad_sq(losses, _required(features).pop(), weighting.tasks, scale=scale)
            stats["grad_sq"] = summed_over_processes(mine, d)
        weighting.begin_step(step, **stats)
    total = weighting.combine(losses, share=share)
    _scaled(total * loss_scale, scaler).backward()
    return total.detach()


def _gradient_level_backward(weighting, losses, *, step, features, d, loss_scale, scale, scaler) -> Tensor:
    outputs, leaves = _required(features).pop_pairs()
    if not leaves:
        raise RuntimeError("no shared features were captured in this forward pass (is the model's backbone used?)")
    grads = task_gradients(losses, leaves, weighting.tasks, scale=scale)  # [t][k] of this process's loss share
    factor = loss_scale / d.world_size  # d(global L_t) = factor x d(this process's L_t), summed over processes
    if weighting.grads == "parameters":
        params = [p for p in features.backbone.parameters() if p.requires_grad]
        flat = parameter_gradients(outputs, grads, params, scale=scale)  # (T, P)
        if d.enabled:
            all_reduce_sum_(flat)
        flat = flat.double() * factor
        gram = (flat @ flat.T).cpu()
        del flat
    else:
        gram = summed_over_processes(gram_matrix(grads).to(d.device), d).cpu() * factor**2
    weighting.begin_step(step, gram=gram)
    if d.enabled:  # process 0's coefficients everywhere (a QP solver need not agree to the last bit)
        mine = weighting.current.detach().cpu() * (1.0 if d.is_main else 0.0)
        weighting.current.copy_(summed_over_processes(mine, d))
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


def _required(features: SharedFeatures | None) -> SharedFeatures:
    if features is None:
        raise ValueError("this method needs the shared features: pass features=shared_features_for(weighting, model)")
    return features


def _scaled(loss: Tensor, scaler: torch.amp.GradScaler | None) -> Tensor:
    return scaler.scale(loss) if scaler is not None and scaler.is_enabled() else loss
