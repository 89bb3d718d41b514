"""Processes: torchrun's environment switches DDP on; the same command runs as one plain process without it.

Process handling only: joining the group, wrapping the model (DDP, synchronised BatchNorm), barriers and sums
over processes. Which samples each process sees is `data/sampling.py`'s.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from ..errors import ConfigError


@dataclass(frozen=True)
class Dist:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def default_device(name: str = "auto", *, option: str = "train.device=") -> torch.device:
    """The device ``name`` means (auto: CUDA when there is one); a CUDA device this machine lacks is a ConfigError
    that says how to choose another (``option``: how the caller's user spells the choice, e.g. "--device ")."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"device '{name}' is not a device name; use {option}cpu, {option}cuda or "
                          f"{option}cuda:N") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ConfigError(f"device '{name}' requested but CUDA is not available on this machine (use "
                              f"{option}cpu)")
        if device.index is not None and device.index >= count:
            raise ConfigError(f"device '{name}' requested but this machine has {count} CUDA device(s) (use "
                              f"{option}cuda:0 .. cuda:{count - 1})")
    return device


def gather_objects(obj: object) -> list[object]:
    """``obj`` of every process, in rank order (``[obj]`` in one process)."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        out: list[object] = [None] * dist.get_world_size()
        dist.all_gather_object(out, obj)
        return out
    return [obj]


def init_distributed(device: str = "auto") -> Dist:
    """Join torchrun's process group when ``RANK`` is set (nccl on CUDA, gloo on CPU); else one process."""
    world = int(os.environ.get("WORLD_SIZE", 1))
    if "RANK" not in os.environ or world == 1:
        return Dist(rank=0, world_size=1, local_rank=0, device=default_device(device))
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    dev = default_device(device)
    if dev.type == "cuda":
        dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo", rank=rank, world_size=world)
    return Dist(rank=rank, world_size=world, local_rank=local_rank, device=dev)


def cleanup_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def all_reduce_sum_(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over processes in place (no-op in one process)."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def summed_over_processes(t: torch.Tensor, d: Dist) -> torch.Tensor:
    """A CPU copy of ``t`` summed over all processes (``t`` itself in one process); every process must call it."""
    if not d.enabled:
        return t
    return all_reduce_sum_(t.to(d.device)).cpu()


def broadcast_object(obj: object, src: int = 0) -> object:
    if dist.is_initialized() and dist.get_world_size() > 1:
        box = [obj]
        dist.broadcast_object_list(box, src=src)
        return box[0]
    return obj


class CPUSyncBatchNorm(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics are summed over all processes -- on the CPU too (torch's
    SyncBatchNorm refuses CPU tensors). Sums of x and x^2 and the count travel in one differentiable all-reduce."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        from torch.distributed.nn.functional import all_reduce

        C = x.shape[1]
        local = torch.cat([x.sum(dim=(0, 2, 3)), (x * x).sum(dim=(0, 2, 3)),
                           x.new_full((1,), x.numel() / C)])  # (2C + 1,)
        total = all_reduce(local)  # summed over processes; gradients flow back to every process
        count = total[-1]
        mean = total[:C] / count  # (C,)
        var = (total[C:2 * C] / count - mean * mean).clamp_min(0.0)  # biased variance, (C,)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked += 1
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                self.running_var.mul_(1 - m).add_(var.detach() * count / (count - 1).clamp_min(1.0), alpha=m)
        y = (x - mean[None, :, None, None]) * torch.rsqrt(var + self.eps)[None, :, None, None]
        if self.affine:
            y = y * self.weight[None, :, None, None] + self.bias[None, :, None, None]
        return y


def convert_cpu_sync_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every BatchNorm2d by CPUSyncBatchNorm sharing its parameters and statistics."""
    if isinstance(module, nn.BatchNorm2d) and not isinstance(module, CPUSyncBatchNorm):
        new = CPUSyncBatchNorm(module.num_features, eps=module.eps, momentum=module.momentum, affine=module.affine,
                               track_running_stats=module.track_running_stats)
        if module.affine:  # the same Parameter objects, so an optimiser built earlier keeps working
            new.weight, new.bias = module.weight, module.bias
        if module.track_running_stats:
            new.running_mean, new.running_var = module.running_mean, module.running_var
            new.num_batches_tracked = module.num_batches_tracked
        new.train(module.training)
        return new
    for name, child in module.named_children():
        setattr(module, name, convert_cpu_sync_batchnorm(child))
    return module


def wrap_model(model: nn.Module, d: Dist, *, sync_bn: bool = True) -> nn.Module:
    """SyncBatchNorm + DistributedDataParallel under torchrun; the model itself otherwise.

    BatchNorm modules are replaced in place (parameter names do not change, so checkpoints stay loadable)."""
    model = model.to(d.device)
    if not d.enabled:
        return model
    if sync_bn:
        if d.device.type == "cuda":
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        else:
            model = convert_cpu_sync_batchnorm(model)
    ids = [d.device.index] if d.device.type == "cuda" else None
    unused = parameters_without_gradient(model, d.device)
    return nn.parallel.DistributedDataParallel(model, device_ids=ids, find_unused_parameters=bool(unused))


def parameters_without_gradient(model: nn.Module, device: torch.device) -> list[str]:
    """Names of parameters that one forward/backward leaves without a gradient (an ablation's dead branch).

    DDP must be told about them; the probe runs one image in eval mode (no BatchNorm statistics change)."""
    img_size = getattr(model, "img_size", None)
    if img_size is None:
        return []
    was_training = model.training
    model.eval()
    out = model(torch.zeros(1, 3, *img_size, device=device))
    leaves = torch.utils._pytree.tree_leaves(dict(out))  # 2-D logits and the detector's maps (DetectionOutputs)
    sum(t.float().sum() for t in leaves if torch.is_tensor(t)).backward()
    unused = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    model.zero_grad(set_to_none=True)
    model.train(was_training)
    return unused


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model

