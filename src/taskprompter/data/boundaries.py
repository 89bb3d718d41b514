"""Boundaries from label maps: the released PASCAL-Context edge ground truth and one-pixel instance edges.

PASCAL edges are computed the way the released code does: the 4-neighbour Laplacian of the Context `LabelMap`
(borders reflected) is non-zero, then the mask is thinned to one pixel with the thinning of MATLAB's
``bwmorph(..., 'thin', Inf)`` (Lam, Lee & Suen 1992), implemented here with a 256-entry lookup table.
"""

from __future__ import annotations

import numpy as np


def _neighbours(mask: np.ndarray) -> list[np.ndarray]:
    """x1..x8 of every pixel: east, north-east, north, north-west, west, south-west, south, south-east
    (counter-clockwise from east; north = previous row). Outside the image counts as 0."""
    p = np.pad(mask, 1)
    h, w = mask.shape
    at = lambda dr, dc: p[1 + dr : 1 + dr + h, 1 + dc : 1 + dc + w]  # noqa: E731
    return [at(0, 1), at(-1, 1), at(-1, 0), at(-1, -1), at(0, -1), at(1, -1), at(1, 0), at(1, 1)]


def _thin_tables() -> tuple[np.ndarray, np.ndarray]:
    """For each 8-neighbourhood code (bit i-1 = x_i) whether the centre is deleted in sub-iteration 1 / 2."""
    codes = np.arange(256)
    x = [None] + [(codes >> i) & 1 for i in range(8)] + [None]  # x[1..8]
    x[9] = x[1]  # x9 = x1 (cyclic)
    # G1: crossing number X_H = 1
    xh = sum(((1 - x[2 * i - 1]) & (x[2 * i] | x[2 * i + 1])) for i in range(1, 5))
    # G2: 2 <= min(n1, n2) <= 3
    n1 = sum((x[2 * k - 1] | x[2 * k]) for k in range(1, 5))
    n2 = sum((x[2 * k] | x[2 * k + 1]) for k in range(1, 5))
    m = np.minimum(n1, n2)
    g12 = (xh == 1) & (m >= 2) & (m <= 3)
    g3 = ((x[2] | x[3] | (1 - x[8])) & x[1]) == 0
    g3p = ((x[6] | x[7] | (1 - x[4])) & x[5]) == 0
    return g12 & g3, g12 & g3p


_DELETE1, _DELETE2 = _thin_tables()


def thin(mask: np.ndarray, max_iter: int | None = None) -> np.ndarray:
    """Thin a binary mask to one-pixel-wide lines (bwmorph 'thin' to convergence). Returns bool (H, W)."""
    out = np.asarray(mask, dtype=bool).copy()
    it = 0
    while max_iter is None or it < max_iter:
        changed = False
        for table in (_DELETE1, _DELETE2):
            code = np.zeros(out.shape, dtype=np.int64)
            for i, nb in enumerate(_neighbours(out)):
                code |= nb.astype(np.int64) << i
            delete = out & table[code]
            if delete.any():
                out &= ~delete
                changed = True
        it += 1
        if not changed:
            break
    return out


def laplacian_nonzero(labels: np.ndarray) -> np.ndarray:
    """Where the 4-neighbour Laplacian [[0,1,0],[1,-4,1],[0,1,0]] of a label map is non-zero (reflected border,
    like OpenCV's default). bool (H, W)."""
    p = np.pad(labels.astype(np.float64), 1, mode="reflect")
    lap = p[:-2, 1:-1] + p[2:, 1:-1] + p[1:-1, :-2] + p[1:-1, 2:] - 4.0 * p[1:-1, 1:-1]
    return lap != 0


def context_edges(label_map: np.ndarray) -> np.ndarray:
    """Released PASCAL-Context boundary ground truth from the LabelMap: thin(Laplacian != 0). int64 (H, W) 0/1."""
    return thin(laplacian_nonzero(label_map)).astype(np.int64)


def instance_edges(instances: np.ndarray) -> np.ndarray:
    """One-pixel boundaries: a pixel is on a boundary where its id differs from its east, south or south-east
    neighbour (last row: east only; last column: south only). int64 (H, W) 0/1."""
    e = np.zeros(instances.shape, dtype=bool)
    e[:, :-1] |= instances[:, :-1] != instances[:, 1:]
    e[:-1, :] |= instances[:-1, :] != instances[1:, :]
    e[:-1, :-1] |= instances[:-1, :-1] != instances[1:, 1:]
    return e.astype(np.int64)
