"""Where the paper and the released Swin-B TaskPrompter differ: one named option per difference (docs/fidelity.md,
"Swin-B TaskPrompter (Cityscapes-3D)"). ``fidelity="official"`` is the released code; ``"paper"`` the paper's words;
each option can be overridden by keyword."""

from __future__ import annotations

from typing import Any

from ..fidelity import Choice, resolve_fidelity

SWIN_FIDELITY_OPTIONS: dict[str, Choice] = {
    "decode_affinity": Choice(
        "probs", "logits", ("probs", "logits"),
        "maps the decoder reads: raw q.k^T logits (code) or the softmax attention probabilities (paper's 'attention "
        "maps'); spatial probabilities are normalised over each window's T+M keys, channel ones over C"),
    "head": Choice(
        "conv", "deconv", ("conv", "deconv"),
        "task head: DEConvHead ConvT(f->f/2, x2)-BN-GELU-Conv3x3-BN-GELU-Conv1x1 (code); 'a 3x3 Conv-BN-ReLU + "
        "linear' at the features' resolution (paper)"),
    "channel_update": Choice(
        False, True, (True, False),
        "the attended channel result updates the prompts through chan_proj and token_trans1 (code); channel prompting "
        "'as in ViT', whose released code discards it: channel maps only (paper)"),
}


def resolve_swin_fidelity(fidelity: str, overrides: dict[str, Any]) -> dict[str, Any]:
    """Every option's value: the fidelity's default unless overridden (``None`` = not overridden)."""
    return resolve_fidelity(fidelity, overrides, SWIN_FIDELITY_OPTIONS)
