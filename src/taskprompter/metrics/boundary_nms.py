"""Edge non-maximum suppression as the published boundary evaluation does it (SEISM / Dollar's toolbox).

The soft boundary map E is smoothed with a triangle filter only to estimate an orientation per pixel from
second derivatives; the suppression itself runs on the **unsmoothed** E: a pixel survives when it is at
least as strong (after a 1.01 multiplier) as its two bilinearly interpolated neighbours at distance 1 across
the edge. Pixels within 5 of the image border are faded out linearly. Everything is float32, as in MATLAB
`single`, and vectorised over the whole image (no Python loop over pixels).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def conv_tri(image: np.ndarray, radius: int) -> np.ndarray:
    """convTri: separable triangle filter [1 .. r+1 .. 1]/(r+1)^2 with symmetric (mirror) padding."""
    if radius == 0:
        return image
    if radius < 1:
        raise ValueError(f"conv_tri supports integer radius >= 1 (or 0), got {radius}")
    f = np.concatenate([np.arange(1, radius + 2), np.arange(radius, 0, -1)]).astype(np.float32) / (radius + 1) ** 2
    out = ndimage.correlate1d(image, f, axis=0, mode="reflect")  # scipy "reflect" == MATLAB "symmetric"
    return ndimage.correlate1d(out, f, axis=1, mode="reflect")


def edge_orientation(edges: np.ndarray, radius: int = 4) -> np.ndarray:
    """Orientation O in [0, pi) from second derivatives of convTri(E, r):

    O = mod(atan(Oyy * sign(-Oxy) / (Oxx + 1e-5)), pi), with MATLAB `gradient` (central differences inside,
    one-sided at the borders), x along columns and y along rows.
    """
    smooth = conv_tri(edges.astype(np.float32), radius)
    oy, ox = np.gradient(smooth)  # d/drow, d/dcol
    oxx = np.gradient(ox, axis=1)
    oxy = np.gradient(oy, axis=1)
    oyy = np.gradient(oy, axis=0)
    o = np.arctan(oyy * np.sign(-oxy) / (oxx + np.float32(1e-5)))
    return np.mod(o, np.float32(np.pi)).astype(np.float32)


def _interp(image: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Bilinear sample of image at (x = column, y = row), clamped to [0, size - 1.001] like edgesNmsMex."""
    h, w = image.shape
    x = np.clip(x, 0, np.float32(w - 1.001))
    y = np.clip(y, 0, np.float32(h - 1.001))
    x0 = x.astype(np.int64)  # x >= 0, so truncation == floor
    y0 = y.astype(np.int64)
    dx0 = x - x0
    dy0 = y - y0
    dx1 = 1 - dx0
    dy1 = 1 - dy0
    return (
        image[y0, x0] * dx1 * dy1
        + image[y0, x0 + 1] * dx0 * dy1
        + image[y0 + 1, x0] * dx1 * dy0
        + image[y0 + 1, x0 + 1] * dx0 * dy0
    )


def edge_nms(
    edges: np.ndarray, orientation: np.ndarray, *, radius: int = 1, border: int = 5, multiplier: float = 1.01
) -> np.ndarray:
    """edgesNmsMex(E, O, r, s, m): suppress pixels weaker than a neighbour along the edge normal.

    A non-zero pixel e is zeroed when e * m < E(p + d * (cos O, sin O)) for some d in [-r, r], d != 0
    (bilinear samples of the input E). Then pixels at distance k < s from the border are scaled by k / s.
    """
    e0 = np.ascontiguousarray(edges, dtype=np.float32)
    h, w = e0.shape
    out = e0.copy()
    candidates = np.flatnonzero(e0)  # only non-zero pixels can be suppressed
    rows, cols = np.divmod(candidates, w)
    theta = orientation.reshape(-1)[candidates].astype(np.float32)
    cos_o = np.cos(theta.astype(np.float64)).astype(np.float32)
    sin_o = np.sin(theta.astype(np.float64)).astype(np.float32)
    strength = e0.reshape(-1)[candidates] * np.float32(multiplier)
    suppressed = np.zeros(candidates.size, dtype=bool)
    for d in range(-radius, radius + 1):
        if d == 0:
            continue
        neighbour = _interp(e0, cols.astype(np.float32) + d * cos_o, rows.astype(np.float32) + d * sin_o)
        suppressed |= strength < neighbour
    out.reshape(-1)[candidates[suppressed]] = 0
    s = min(border, w // 2, h // 2)
    for k in range(s):  # fade the border linearly (columns first, as the mex): the outermost pixels become 0
        out[:, k] *= np.float32(k / s)
        out[:, w - 1 - k] *= np.float32(k / s)
    for k in range(s):
        out[k, :] *= np.float32(k / s)
        out[h - 1 - k, :] *= np.float32(k / s)
    return out


def nms_boundaries(edges: np.ndarray) -> np.ndarray:
    """The published NMS step: orientation from convTri(E, 4), then edge_nms(E, O, 1, 5, 1.01)."""
    return edge_nms(edges, edge_orientation(edges, 4), radius=1, border=5, multiplier=1.01)
