"""Shifted windows (Swin, Liu et al. 2021) as the prompted Swin blocks use them: the window/shift rule of a stage,
partition and merge, the cyclic-shift mask, the relative-position index, and the stitching of the per-window
prompt->token maps into one map over the stage's token grid (swin-cityscapes3d.md section 1.2).

Windows are ordered batch-major, then row-major over the (h/W_s) x (w/W_s) window grid -- the released order -- and
tokens inside a window row-major. A shifted block rolls the token grid by -shift before partitioning and by +shift
after merging; the stitched prompt map is rolled back the same way, so it lines up with the un-rolled tokens.
"""

from __future__ import annotations

import torch
from einops import rearrange
from torch import Tensor

SHIFT_MASK_VALUE = -100.0  # the released (and Microsoft Swin) value between tokens of different rolled regions


def stage_window(grid: tuple[int, int], window_size: int) -> tuple[int, int]:
    """(window W_s, shift) of a stage: a grid whose shorter side is <= ``window_size`` is one window per short side
    (window = that side, no shift); otherwise ``window_size`` with shift ``window_size // 2`` on odd blocks."""
    side = min(grid)
    if side <= window_size:
        return side, 0
    return window_size, window_size // 2


def window_partition(x: Tensor, window: int) -> Tensor:
    """(B, h, w, C) -> (B*nW, M, C) with M = window^2."""
    return rearrange(x, "b (nwh wh) (nww ww) c -> (b nwh nww) (wh ww) c", wh=window, ww=window)


def window_merge(windows: Tensor, window: int, grid: tuple[int, int]) -> Tensor:
    """(B*nW, M, C) -> (B, h, w, C): the inverse of ``window_partition``."""
    h, w = grid
    return rearrange(windows, "(b nwh nww) (wh ww) c -> b (nwh wh) (nww ww) c", nwh=h // window, nww=w // window,
                     wh=window, ww=window)


def relative_position_index(window: int) -> Tensor:
    """(M, M) index into the (2W-1)^2-row relative-position table: (dy + W-1) * (2W-1) + (dx + W-1) for the offset
    (dy, dx) from key token to query token, both row-major in the window."""
    ys, xs = torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")
    coords = torch.stack([ys.flatten(), xs.flatten()])  # (2, M)
    rel = coords[:, :, None] - coords[:, None, :] + (window - 1)  # (2, M, M), each in [0, 2W-2]
    return rel[0] * (2 * window - 1) + rel[1]  # (M, M)


def shift_mask(grid: tuple[int, int], window: int, shift: int) -> Tensor | None:
    """(nW, M, M) additive mask of a shifted block: 0 between tokens that were neighbours before the roll, -100
    between tokens the roll brought together from opposite borders; None without shift."""
    if shift == 0:
        return None
    h, w = grid

    def bands(n: int) -> Tensor:  # the three row (column) bands of the rolled grid: [0, n-W), [n-W, n-s), [n-s, n)
        band = torch.zeros(n, dtype=torch.long)
        band[n - window:] = 1
        band[n - shift:] = 2
        return band

    region = bands(h)[:, None] * 3 + bands(w)[None, :]  # (h, w) region id of each rolled token
    region = rearrange(region, "(nwh wh) (nww ww) -> (nwh nww) (wh ww)", wh=window, ww=window)  # (nW, M)
    differ = region[:, None, :] != region[:, :, None]  # (nW, M, M)
    return torch.zeros(differ.shape).masked_fill(differ, SHIFT_MASK_VALUE)


def stitch_prompt_maps(maps: Tensor, *, batch: int, grid: tuple[int, int], window: int, shift: int) -> Tensor:
    """Per-window prompt->token maps (B*nW, nH, T, M) -> (B, nH, T, h, w) on the stage's token grid, the roll of a
    shifted block undone. For logits this is the global q_t . k_p map: each token sits in exactly one window."""
    h, w = grid
    out = rearrange(maps, "(b nwh nww) g t (wh ww) -> b g t (nwh wh) (nww ww)", b=batch, nwh=h // window,
                    nww=w // window, wh=window, ww=window)  # (B, nH, T, h, w) of the rolled grid
    return torch.roll(out, shifts=(shift, shift), dims=(3, 4)) if shift else out
