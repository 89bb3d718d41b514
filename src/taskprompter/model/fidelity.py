"""Where the paper (Section 3) and the released code differ: one named option per difference.

``fidelity="official"`` computes what the released code computes (so released checkpoints load and reproduce the
published numbers); ``fidelity="paper"`` follows Section 3 literally. Each option can also be set on its own, which
overrides the fidelity's value. ``docs/fidelity.md`` explains each row.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from ..errors import CheckpointError, ConfigError


class Choice(NamedTuple):
    paper: Any
    official: Any
    allowed: tuple[Any, ...]
    summary: str


FIDELITY_OPTIONS: dict[str, Choice] = {
    "channel_mlp_layers": Choice(
        2, 1, (1, 2), "f_{C->N} and f_{N->C} (Eq. 2, 5): 2-layer MLPs in the paper, one Linear each in the code"),
    "channel_qkv": Choice(
        True, False, (True, False),
        "W_q^c, W_k^c, W_v^c and the output linear of channel attention (Eq. 4): the code has none"),
    "prompt_update": Choice(
        "attended", "pre_attention", ("attended", "pre_attention"),
        "Eq. 5 adds f_{N->C}(P^c') of the attended P^c'; the code adds f_{N->C}(P^c) of P^c before attention"),
    "decode_affinity": Choice(
        "logits", "logits", ("probs", "logits"),
        "affinities used for decoding: A^s = Q^s K^s^T and A^c = Q^c K^c^T as Sec. 3.2 defines them, before they "
        "are 'scaled and normalized' (paper, code); 'probs': the softmaxed attention maps"),
    "affinity_residual": Choice(
        False, True, (True, False), "Eq. 6/7 gate A*X; the code adds the residual, A*X + X"),
    "prompting_proj": Choice(
        False, True, (True, False),
        "the code projects each prompted feature with a 1x1 conv C->e; the paper keeps C channels"),
    "fusion": Choice(
        "paper", "released", ("paper", "released"),
        "Eq. 8 fusion: Conv3x3-BN-GELU (paper); Conv1x1-Conv3x3-BN-GELU-Conv1x1 (code)"),
    "decoded_tokens": Choice(
        "block", "block", ("block", "attention"),
        "the X' a level decodes: the layer's output (Sec. 3.3 'produced from a transformer layer'; code) or the "
        "attention's output sequence of Sec. 3.2 ('attention')"),
    "reweighting_mlp": Choice(
        "shared", "per_task", ("shared", "per_task"),
        "cross-task reweighting: one 2-layer MLP over heads of the (nH, T, T) affinity (paper); one MLP per "
        "target task on its prompt row (code); both unnormalised"),
}


def resolve_fidelity(fidelity: str, overrides: dict[str, Any], options: dict[str, Any] | None = None
                     ) -> dict[str, Any]:
    """The value of every fidelity option of ``options`` (default: the ViT model's ``FIDELITY_OPTIONS``): the
    fidelity's default unless overridden (``None`` = not overridden)."""
    options = FIDELITY_OPTIONS if options is None else options
    if fidelity not in ("official", "paper"):
        raise ConfigError(f"fidelity must be 'official' or 'paper', got {fidelity!r}")
    resolved = {}
    for name, choice in options.items():
        value = overrides.get(name)
        if value is None:
            value = getattr(choice, fidelity)
        elif not any(value == a and type(value) is type(a) for a in choice.allowed):  # True is not 1
            raise ConfigError(f"{name} must be one of {choice.allowed}, got {value!r}")
        resolved[name] = value
    unknown = set(overrides) - set(options)
    if unknown:
        raise ConfigError(f"unknown fidelity option(s) {sorted(unknown)}")
    return resolved


def require_official(options: dict[str, Any], table: dict[str, Any] | None = None) -> None:
    """Released checkpoints load into official-fidelity models only: a CheckpointError naming the options that
    differ from ``table``'s official values (default: the ViT model's ``FIDELITY_OPTIONS``)."""
    table = FIDELITY_OPTIONS if table is None else table
    wrong = {k: v for k, v in options.items() if v != table[k].official}
    if wrong:
        raise CheckpointError(f"released checkpoints need an official-fidelity model; this model sets {wrong}")
