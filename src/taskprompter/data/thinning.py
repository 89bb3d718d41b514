"""Morphological thinning to one-pixel strokes, as MATLAB `bwmorph(BW, 'thin', Inf)`.

The algorithm is the two-subiteration parallel thinning of Guo & Hall (1989) in the form of Lam, Lee & Suen
(1992, p. 879), which MATLAB and `skimage.morphology.thin` both use. Neighbours of p are numbered
x1 = east, x2 = north-east, ..., x8 = south-east (counter-clockwise). A pixel is deleted in a subiteration when
  G1: the crossing number X_H(p) = 1,
  G2: 2 <= min(n1(p), n2(p)) <= 3,
  G3: (x2 | x3 | ~x8) & x1 == 0   (first subiteration)   or   (x6 | x7 | ~x4) & x5 == 0   (second),
all pixels of a subiteration decided on the image as it was before it; repeated until nothing changes.

Speed: only set pixels are visited (a flat-index list, not the whole image), and after the first pass only
pixels next to a deletion are re-examined, because a pixel whose 8-neighbourhood is unchanged keeps its verdict.

The one thinning of the package: the PASCAL-Context edge ground truth (`boundaries.context_edges`) and the boundary
metric (`metrics/boundary.py`) both use it. It imports only NumPy, so either side can import it without a cycle.
"""

from __future__ import annotations

import numpy as np

# (row, col) offsets of x1..x8
NEIGHBOURS: tuple[tuple[int, int], ...] = ((0, 1), (-1, 1), (-1, 0), (-1, -1), (0, -1), (1, -1), (1, 0), (1, 1))


def _deletion_tables() -> tuple[np.ndarray, np.ndarray]:
    """Two 256-entry tables: code (bit k-1 = x_k) -> delete in subiteration 1 / 2."""
    codes = np.arange(256)
    x = [None] + [(codes >> k) & 1 for k in range(8)] + [(codes >> 0) & 1]  # x[1..8], x[9] = x[1]
    crossing = sum(((1 - x[2 * i - 1]) & (x[2 * i] | x[2 * i + 1])) for i in range(1, 5))
    n1 = sum(x[2 * k - 1] | x[2 * k] for k in range(1, 5))
    n2 = sum(x[2 * k] | x[2 * k + 1] for k in range(1, 5))
    g12 = (crossing == 1) & (np.minimum(n1, n2) >= 2) & (np.minimum(n1, n2) <= 3)
    g3 = ((x[2] | x[3] | (1 - x[8])) & x[1]) == 0
    g3_prime = ((x[6] | x[7] | (1 - x[4])) & x[5]) == 0
    return (g12 & g3).astype(bool), (g12 & g3_prime).astype(bool)


DELETE_FIRST, DELETE_SECOND = _deletion_tables()


def thin(mask: np.ndarray) -> np.ndarray:
    """bwmorph(mask, 'thin', Inf): a boolean (H, W) mask thinned to 1-pixel-wide 8-connected strokes."""
    h, w = mask.shape
    width = w + 2
    padded = np.zeros((h + 2, width), dtype=np.uint8)  # a zero frame: border pixels see 0 outside the image
    padded[1:-1, 1:-1] = np.asarray(mask, dtype=bool)
    flat = padded.reshape(-1)
    offsets = np.array([dr * width + dc for dr, dc in NEIGHBOURS], dtype=np.int64)
    pending = [np.flatnonzero(flat)] * 2  # pixels whose verdict under table 1 / 2 may have changed
    tables = (DELETE_FIRST, DELETE_SECOND)
    sub = 0
    while pending[0].size or pending[1].size:
        idx = pending[sub]
        idx = idx[flat[idx] == 1]
        code = np.zeros(idx.size, dtype=np.uint8)
        for bit, off in enumerate(offsets):
            code |= flat[idx + off] << bit
        deleted = np.unique(idx[tables[sub][code]])  # idx may repeat a pixel (touched twice); deletions may not
        flat[deleted] = 0  # all deletions of a subiteration at once (parallel thinning)
        touched = (deleted[:, None] + offsets[None, :]).reshape(-1)  # at most 8 copies of a pixel: harmless
        pending[sub] = touched
        pending[1 - sub] = np.concatenate([pending[1 - sub], touched])
        sub = 1 - sub
    return padded[1:-1, 1:-1].astype(bool)
