"""TaskPrompterSwin: the paper's second system, TaskPrompter on Swin-B for Cityscapes-3D (Appendix A.6;
swin-cityscapes3d.md section 1), assembled into ``model(images) -> {task: logits}``.

    images (B, 3, H, W) -> x resize_ratio (bilinear) -> PromptSwin: one Level per stage
      -> SwinPromptDecoder: per level and task, spatial + channel prompting, fusion       {task: [S maps]}
      -> 2-D tasks: levels resized to level 0 and summed, multi_scale_fuse, head, resize to H*s x W*s
      -> 3ddet: the S fused maps -> Detector3D (FPN + FCOS3D head, detection/): its raw outputs
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...tasks import ordered_tasks
from ..io import PretrainedMixin
from ..layers import init_vit_weights
from .block import WindowPromptAttention, channel_head_grid
from .decoder import SwinPromptDecoder, is_dense
from .detection import Detector3D
from .detection.detector import check_options
from .encoder import PromptSwin, stage_specs
from .fidelity import resolve_swin_fidelity
from .heads import build_head


class SwinAffinity(NamedTuple):
    """The prompt maps of one level: the stage's last block's own maps and what the decoder read at that level
    (after PatchMerging's ``spa_attn_ds`` / ``process_chan_attn``; the same tensors at the last level). ``probs``:
    softmax probabilities (``decode_affinity="probs"``) rather than raw logits. ``spatial_over_tokens`` and
    ``channel_over_channels`` give the figures' maps from either kind, as ``prompt_block.Affinity`` does."""

    spatial: Tensor  # (B, nH, T, h, w)        prompt->token maps of the stage's last block, stitched over windows
    channel: Tensor  # (B, T, C, nh, nw)       its channel prompt->channel maps (nh = nw = 1 for one channel head)
    decoded_spatial: Tensor  # (B, nH, T, h_l, w_l)
    decoded_channel: Tensor  # (B, T, C_l, nh, nw)
    probs: bool = False
    spatial_scale: float = 1.0  # d^-1/2 of the window attention
    channel_scale: float = 1.0  # c^-1/2 of the channel attention

    @property
    def grid(self) -> tuple[int, int]:
        """(h, w) of the stage the spatial maps cover."""
        return tuple(self.spatial.shape[-2:])

    def spatial_over_tokens(self) -> Tensor:
        """(B, nH, T, h*w): each prompt's softmax of the scaled logits over all tokens of the stage -- within any one
        window proportional to that window's own attention (whose softmax also covers the T prompt keys)."""
        a = self.spatial.float().flatten(-2)
        if self.probs:
            return a / a.sum(dim=-1, keepdim=True).clamp_min(torch.finfo(a.dtype).tiny)
        return (a * self.spatial_scale).softmax(dim=-1)

    def channel_over_channels(self) -> Tensor:
        """(B, T, C, nh, nw): each channel prompt's attention over the C channels."""
        a = self.channel.float()
        return a if self.probs else (a * self.channel_scale).softmax(dim=2)


def _exact(value: float, what: str) -> int:
    if abs(value - round(value)) > 1e-6:
        raise ValueError(f"{what} = {value:g} is not a whole number of pixels")
    return int(round(value))


class TaskPrompterSwin(PretrainedMixin, nn.Module):
    """Multi-task dense prediction (and 3-D detection features) from one prompted Swin.

    ``tasks`` maps task name to output channels, e.g. ``{"semseg": 19, "depth": 1, "3ddet": 6}``; prompts follow the
    released task order (``taskprompter.tasks.ordered_tasks``), outputs the order given. The model takes images of
    exactly ``img_size`` and resizes them by ``resize_ratio`` first (released: 1024x2048 -> 768x1536); 2-D outputs
    come at ``img_size * output_scale`` (released: 512x1024, the label size). ``decoder_dim`` is e, ``final_dim``
    f. ``fidelity`` picks the defaults of ``SWIN_FIDELITY_OPTIONS`` (``decode_affinity``, ``head``,
    ``channel_update``), each overridable by name. Every stage grid must divide into its windows (ValueError
    otherwise): the released padding path has no mask for the prompts. With ``"3ddet"`` in ``tasks``,
    ``heads["3ddet"]`` is a `Detector3D` on the task's S decoded maps; ``detection`` holds its options (``channels``,
    ``deformable``, ``euler``, ``score_threshold``, ...: ``detection/detector.py``).
    """

    def __init__(
        self, *, tasks: Mapping[str, int], img_size: tuple[int, int] = (1024, 2048), resize_ratio: float = 0.75,
        patch_size: int = 4, window_size: int = 12, embed_dim: int = 128, depths: Sequence[int] = (2, 2, 18, 2),
        num_heads: Sequence[int] = (4, 8, 16, 32), mlp_ratio: float = 4.0, decoder_dim: int = 256,
        final_dim: int = 450, channel_dim: int = 256, channel_heads: int = 1, drop_path_rate: float = 0.15,
        output_scale: float = 0.5, fidelity: str = "official", decode_affinity: str | None = None,
        head: str | None = None, channel_update: bool | None = None, attention_impl: str = "efficient",
        grad_checkpointing: bool = False, detection: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.init_kwargs = {k: (list(v) if isinstance(v, tuple) else v) for k, v in locals().items()
                            if k not in ("self", "__class__")}
        self.init_kwargs["tasks"] = dict(tasks)
        self.init_kwargs["detection"] = check_options(detection) if detection else None
        if not tasks:
            raise ValueError("tasks is empty: give at least one task, e.g. {'semseg': 19}")
        self.task_names = ordered_tasks(tasks)  # prompt order
        self.output_order = list(tasks)
        if attention_impl not in ("efficient", "naive"):
            raise ValueError(f"attention_impl must be 'efficient' or 'naive', got {attention_impl!r}")
        self.attention_impl = attention_impl
        self.options = resolve_swin_fidelity(fidelity, dict(decode_affinity=decode_affinity, head=head,
                                                            channel_update=channel_update))
        H, W = self.img_size = tuple(img_size)
        if not resize_ratio > 0:
            raise ValueError(f"resize_ratio must be positive, got {resize_ratio}")
        self.resize_ratio = resize_ratio
        self.resized_size = (_exact(H * resize_ratio, f"img_size[0] x resize_ratio ({H} x {resize_ratio})"),
                             _exact(W * resize_ratio, f"img_size[1] x resize_ratio ({W} x {resize_ratio})"))
        self.output_size = (_exact(H * output_scale, f"img_size[0] x output_scale ({H} x {output_scale})"),
                            _exact(W * output_scale, f"img_size[1] x output_scale ({W} x {output_scale})"))
        h, w = self.resized_size
        if h % patch_size or w % patch_size:
            raise ValueError(f"the resized input {h}x{w} (img_size {H}x{W} x resize_ratio {resize_ratio}) is not a "
                             f"multiple of patch_size {patch_size}")
        self.grid = (h // patch_size, w // patch_size)
        specs = stage_specs(grid=self.grid, embed_dim=embed_dim, depths=depths, num_heads=num_heads,
                            window_size=window_size)
        root = channel_head_grid(channel_dim, channel_heads)
        self.channel_dim = channel_dim
        self.backbone = PromptSwin(
            num_tasks=len(self.task_names), specs=specs, patch_size=patch_size, embed_dim=embed_dim,
            mlp_ratio=mlp_ratio, drop_path_rate=drop_path_rate, grad_checkpointing=grad_checkpointing,
            channel_dim=channel_dim, channel_heads=channel_heads, channel_update=self.options["channel_update"],
            decode_affinity=self.options["decode_affinity"], attention_impl=attention_impl)
        level_grids = self.backbone.level_grids
        bad = [g for g in level_grids if g[0] % root or g[1] % root]
        if bad:
            raise ValueError(f"channel_heads K={channel_heads}: sqrt(K)={root} must divide every level grid, not {bad}")
        level_dims = [s.dim * 2 for s in specs[:-1]] + [specs[-1].dim]
        self.decoder = SwinPromptDecoder(
            tasks=self.task_names, level_dims=level_dims, level_heads=[s.num_heads for s in specs],
            decoder_dim=decoder_dim, final_dim=final_dim, attention_impl=attention_impl)
        self.heads = nn.ModuleDict({t: build_head(self.options["head"], in_dim=final_dim, out_channels=tasks[t])
                                    for t in self.task_names if is_dense(t)})
        if "3ddet" in tasks:  # strides of the S decoded maps and the extra level, in pixels of the model's input
            strides = [self.resized_size[0] / g[0] / resize_ratio for g in level_grids]
            self.heads["3ddet"] = Detector3D(in_channels=final_dim, num_classes=tasks["3ddet"],
                                             num_inputs=len(level_grids), strides=[*strides, 2 * strides[-1]],
                                             input_size=self.img_size, **(detection or {}))
        self._init_weights()

    def _init_weights(self) -> None:
        """Released init (timm ``_init_vit_weights``): Linear trunc_normal(0.02) / zero bias, LayerNorm 1/0, Conv2d
        PyTorch default (the heads' convs set in their constructors), relative-position tables trunc_normal(0.02),
        prompts N(1, 1) cut to [-2, 2]."""
        for m in self.modules():
            init_vit_weights(m)
            if isinstance(m, WindowPromptAttention):
                nn.init.trunc_normal_(m.relative_position_bias_table, std=0.02)
        nn.init.trunc_normal_(self.backbone.task_prompts, mean=1.0, std=1.0, a=-2.0, b=2.0)

    def forward(self, images: Tensor, *, return_features: bool = False, return_affinities: bool = False):
        """images (B, 3, H, W) at ``img_size`` -> {task: logits (B, n_t, H*s, W*s)} for 2-D tasks and, for
        ``"3ddet"``, the detector's `DetectionOutputs` from its S fused maps (B, f, h_l, w_l) (the maps themselves
        are ``features["3ddet"]``). ``return_features`` adds {task: [S level maps]}
        (every task), ``return_affinities`` a SwinAffinity per level; they follow the outputs in that order:
        ``outputs, features, affinities``."""
        if images.ndim != 4 or images.shape[1] != 3 or tuple(images.shape[2:]) != self.img_size:
            raise ValueError(f"expected images of shape (B, 3, {self.img_size[0]}, {self.img_size[1]}), got "
                             f"{tuple(images.shape)}; resize first (this model is tied to one input size)")
        x = images
        if self.resize_ratio != 1:
            x = F.interpolate(x, scale_factor=self.resize_ratio, mode="bilinear", align_corners=False)  # (B, 3, H', W')
        levels = self.backbone(x)
        features = self.decoder(levels)  # {task: [S x (B, f, h_l', w_l')]}
        fused = self.decoder.fuse_scales(features)  # {2-D task: (B, f, H0, W0)}
        outputs: dict[str, Any] = {}  # Tensor for 2-D tasks, DetectionOutputs for 3ddet
        for task in self.output_order:
            if not is_dense(task):  # 3ddet: the detector on the S decoded maps
                outputs[task] = self.heads[task](features[task])
                continue
            logits = self.heads[task](fused[task])  # (B, n, 2 H0, 2 W0) deconv; (B, n, H0, W0) conv
            if tuple(logits.shape[-2:]) != self.output_size:
                logits = F.interpolate(logits, size=self.output_size, mode="bilinear", align_corners=False)
            outputs[task] = logits
        extras: list = []
        if return_features:
            extras.append({t: features[t] for t in self.output_order})
        if return_affinities:
            probs = self.options["decode_affinity"] == "probs"
            scales = [stage.blocks[-1].attn.scale for stage in self.backbone.layers]
            extras.append([SwinAffinity(lv.block_maps.spatial, lv.block_maps.channel, lv.spatial, lv.channel, probs,
                                        scale, self.channel_dim ** -0.5) for lv, scale in zip(levels, scales)])
        return (outputs, *extras) if extras else outputs
