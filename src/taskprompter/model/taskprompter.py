"""TaskPrompter (Fig. 1): the prompted encoder (Sec. 3.1-3.2), dense prompt decoding (3.3) and the task heads,
assembled into ``model(images) -> {task: logits}``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import partial

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from ..tasks import ordered_tasks
from .decoder import HierarchicalPromptDecoder
from .encoder import PromptViT, hp_levels
from .fidelity import resolve_fidelity
from .heads import HEAD_SCALE, TaskHead, upsampled_logits
from .io import PretrainedMixin
from .layers import init_vit_weights
from .prompt_block import Affinity, window_grid
from .recompute import KEEP_OPS, RECOMPUTE_MODES, checkpoint_contexts, selective_recompute_wanted
from .upsample_conv import shifted_interpolation


class TaskPrompter(PretrainedMixin, nn.Module):
    """Multi-task dense prediction from one prompted ViT: ``model(images) -> {task: (B, C_t, H, W) logits}``.

    ``tasks`` maps task name to output channels (e.g. ``{"semseg": 21, "normals": 3}``); prompts follow the released
    task order (semseg, depth, human_parts, sal, normals, edge), outputs the order given. ``decode_blocks`` are
    1-based block counts (``(3, 6, 9, 12)`` for ViT-B: Hierarchical Prompting). ``fidelity`` picks the defaults of
    the options in ``fidelity.FIDELITY_OPTIONS``; each may be overridden by name. ``final_dim`` (the fused width
    f) defaults to the released ViT-B's 1024 in official fidelity and to C in paper fidelity, where Eq. 8 halves
    the concatenated 2C to C. Turning off ``spatial_prompts`` and ``channel_prompts`` gives the paper's multi-task
    baseline (ViT + task heads, no prompts).
    """

    def __init__(
        self, *, tasks: Mapping[str, int], img_size: tuple[int, int] = (512, 512), patch_size: int = 16,
        embed_dim: int = 768, depth: int = 12, num_heads: int = 12, mlp_ratio: float = 4.0,
        channel_heads: int = 16, decoder_dim: int = 780, final_dim: int | None = None,
        decode_blocks: Sequence[int] | None = None, cross_task_reweighting: bool = True,
        spatial_prompts: bool = True, channel_prompts: bool = True, fidelity: str = "official",
        attention_impl: str = "efficient", grad_checkpointing: bool = False, selective_recompute: str = "auto",
        drop_path_rate: float = 0.15,
        head_act: str = "gelu", channel_mlp_layers: int | None = None, channel_qkv: bool | None = None,
        prompt_update: str | None = None, decode_affinity: str | None = None, affinity_residual: bool | None = None,
        prompting_proj: bool | None = None, fusion: str | None = None, reweighting_mlp: str | None = None,
        decoded_tokens: str | None = None,
    ) -> None:
        super().__init__()
        self.init_kwargs = {k: (list(v) if isinstance(v, tuple) else v) for k, v in locals().items()
                            if k not in ("self", "__class__")}
        self.init_kwargs["tasks"] = dict(tasks)
        if not tasks:
            raise ValueError("tasks is empty: give at least one task, e.g. {'semseg': 21}")
        self.task_names = ordered_tasks(tasks)  # prompt order
        self.output_order = list(tasks)
        if head_act not in ("gelu", "relu"):
            raise ValueError(f"head_act must be 'gelu' or 'relu', got {head_act!r}")
        if attention_impl not in ("efficient", "naive"):
            raise ValueError(f"attention_impl must be 'efficient' or 'naive', got {attention_impl!r}")
        if selective_recompute not in RECOMPUTE_MODES:
            raise ValueError(f"selective_recompute must be one of {RECOMPUTE_MODES}, got {selective_recompute!r}")
        self.selective_recompute = selective_recompute
        H, W = self.img_size = tuple(img_size)
        if H % patch_size or W % patch_size:
            raise ValueError(f"img_size {H}x{W} is not a multiple of patch_size {patch_size}")
        self.grid = (H // patch_size, W // patch_size)
        decode_blocks = tuple(decode_blocks) if decode_blocks else hp_levels(depth, min(4, depth))  # default: HP
        if sorted(set(decode_blocks)) != list(decode_blocks) or not all(1 <= b <= depth for b in decode_blocks):
            raise ValueError(f"decode_blocks must be increasing block counts in 1..{depth}, got {decode_blocks}")
        self.decode_blocks = decode_blocks
        opts = resolve_fidelity(fidelity, dict(
            channel_mlp_layers=channel_mlp_layers, channel_qkv=channel_qkv, prompt_update=prompt_update,
            decode_affinity=decode_affinity, affinity_residual=affinity_residual, prompting_proj=prompting_proj,
            fusion=fusion, reweighting_mlp=reweighting_mlp, decoded_tokens=decoded_tokens))
        self.options = opts
        if final_dim is None:
            final_dim = embed_dim if fidelity == "paper" else 1024  # Eq. 8: [F^s; F^c] (2C) -> C
        if channel_prompts:
            window_grid(self.grid, channel_heads)  # clear error for a bad K before building anything
        if cross_task_reweighting and not spatial_prompts:
            raise ValueError("cross_task_reweighting needs spatial_prompts (its weights come from A^s)")
        use_prompts = spatial_prompts or channel_prompts
        self.attention_impl = attention_impl
        # the heads' 3x3 conv before the x4 upsampling (exact, ~1/8 of its MACs); the naive path upsamples first
        self.low_res_head_conv = attention_impl == "efficient"
        # its shifted interpolation matrices for this grid: non-persistent buffers (they follow .to(); ONNX constants)
        self.register_buffer("head_interp_y", shifted_interpolation(self.grid[0], HEAD_SCALE), persistent=False)
        self.register_buffer("head_interp_x", shifted_interpolation(self.grid[1], HEAD_SCALE), persistent=False)
        self.backbone = PromptViT(
            num_tasks=len(self.task_names), grid=self.grid, patch_size=patch_size, embed_dim=embed_dim, depth=depth,
            num_heads=num_heads, mlp_ratio=mlp_ratio, drop_path_rate=drop_path_rate, use_prompts=use_prompts,
            grad_checkpointing=grad_checkpointing, channel_heads=channel_heads, spatial_prompts=spatial_prompts,
            channel_prompts=channel_prompts, channel_mlp_layers=opts["channel_mlp_layers"],
            channel_qkv=opts["channel_qkv"], prompt_update=opts["prompt_update"],
            decode_affinity=opts["decode_affinity"], decoded_tokens=opts["decoded_tokens"],
            attention_impl=attention_impl)
        self.decoder = HierarchicalPromptDecoder(
            num_levels=len(decode_blocks), tasks=self.task_names, dim=embed_dim, num_heads=num_heads,
            decoder_dim=decoder_dim, final_dim=final_dim, spatial=spatial_prompts, channel=channel_prompts,
            prompting_proj=opts["prompting_proj"], affinity_residual=opts["affinity_residual"],
            fusion=opts["fusion"], reweighting=cross_task_reweighting, reweighting_mlp=opts["reweighting_mlp"],
            attention_impl=attention_impl)
        feat_dim = final_dim if use_prompts else embed_dim
        self.heads = nn.ModuleDict({t: TaskHead(in_dim=feat_dim, mid_dim=final_dim, out_channels=tasks[t],
                                                act=head_act) for t in self.task_names})
        self._init_weights()

    def _init_weights(self) -> None:
        """Released init: Linear trunc_normal(0.02) / zero bias, norms 1/0, convs PyTorch default (heads' 3x3 conv
        trunc_normal(0.02), set in TaskHead), position table trunc_normal(0.02), prompts N(1, 1) cut to [-2, 2]."""
        for m in self.modules():
            init_vit_weights(m)
        nn.init.trunc_normal_(self.backbone.pos_embed, std=0.02)
        if self.backbone.num_tasks:
            nn.init.trunc_normal_(self.backbone.prompts, mean=1.0, std=1.0, a=-2.0, b=2.0)

    def _recompute(self, features: Tensor, nbytes: int) -> bool:
        """Selective recomputation (efficient path, training with gradients): decoder levels store their
        convolutions' outputs and recompute gating, concatenation, BN and GELU in the backward pass; heads store only
        their logits (the 3x3 conv, now ~1/8 of its released cost, is recomputed with BN and GELU). ``nbytes``: the
        size of the features the decoder level or head works on, for ``"auto"``; ``"auto"`` does not recompute under
        autocast on ``features``' device: the activations it would drop are half as large there, storing them
        costs what fp32 with recomputation does (config A: 0.71x against 0.70x the naive peak), and recomputing
        them would take 15 % of the bf16 step (docs/performance.md)."""
        if self.attention_impl != "efficient" or not (self.training and torch.is_grad_enabled()):
            return False
        if self.selective_recompute == "auto" and torch.is_autocast_enabled(features.device.type):
            return False
        return selective_recompute_wanted(self.selective_recompute, nbytes)

    def forward(self, images: Tensor, *, return_affinities: bool = False
                ) -> dict[str, Tensor] | tuple[dict[str, Tensor], list[Affinity | None]]:
        """images (B, 3, H, W) at ``img_size`` -> {task: logits (B, C_t, H, W)}; with ``return_affinities`` also the
        Affinity of every decoding level (for Figs. 4 and 8)."""
        if images.ndim != 4 or images.shape[1] != 3 or tuple(images.shape[2:]) != self.img_size:
            raise ValueError(f"expected images of shape (B, 3, {self.img_size[0]}, {self.img_size[1]}), got "
                             f"{tuple(images.shape)}; resize/pad first (taskprompter.Predictor does it for any size)")
        levels = self.backbone(images, self.decode_blocks)
        ckpt = self.backbone.grad_checkpointing and self.training
        T = len(self.task_names)
        tokens = levels[0][0]  # (B, N, C)
        recompute = self._recompute(tokens, tokens.numel() * T * tokens.element_size())
        feats = self.decoder(levels, self.grid, checkpointed=ckpt, keep=KEEP_OPS if recompute else ())
        outputs = {}
        predict = partial(upsampled_logits, size=self.img_size, low_res_conv=self.low_res_head_conv,
                          matrices=(self.head_interp_y, self.head_interp_x))
        # unbind rather than feats[:, i]: indexing in a loop makes the backward zero-fill a whole gradient per task
        for (task, head), f in zip(self.heads.items(), feats.unbind(1)):
            if ckpt:  # keep only the 1/16-resolution features; the 1/4-resolution activations are recomputed
                outputs[task] = checkpoint(predict, head, f, use_reentrant=False,
                                           context_fn=partial(checkpoint_contexts, head))
            elif self._recompute(f, f.numel() * HEAD_SCALE**2 * f.element_size()):
                # keep the logits only: the low-resolution 3x3 conv products, BN and GELU are recomputed
                outputs[task] = checkpoint(predict, head, f, use_reentrant=False,
                                           context_fn=partial(checkpoint_contexts, head, keep=KEEP_OPS))
            else:
                outputs[task] = predict(head, f)
        outputs = {t: outputs[t] for t in self.output_order}
        if return_affinities:
            return outputs, [affinity for _, affinity in levels]
        return outputs


