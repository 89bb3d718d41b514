"""Boundaries from label maps: the released PASCAL-Context edge ground truth and one-pixel instance edges.

PASCAL edges are computed the way the released code does: the 4-neighbour Laplacian of the Context `LabelMap`
(borders reflected) is non-zero, then the mask is thinned to one pixel with the thinning of MATLAB's
``bwmorph(..., 'thin', Inf)`` (`thinning.py`, the same one the boundary metric thins predictions with).
"""

from __future__ import annotations

import numpy as np

from .thinning import thin


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
