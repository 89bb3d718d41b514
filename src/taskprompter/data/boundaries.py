"""Boundaries from label maps: what the released code trains on, and what the published evaluation scores against.

* Training (``context_edges``): the released PASCAL-Context edge labels -- the 4-neighbour Laplacian of the Context
  `LabelMap` (borders reflected) is non-zero, thinned to one pixel.
* Evaluation (``seism_ground_truth``): SEISM's ground truth -- the region boundaries of a segmentation (a pixel is a
  boundary where its label differs from its east, south or south-east neighbour; last row: east only; last
  column: south only), thinned. PASCAL applies it to the Context `LabelMap`, NYUD to the edge PNG read as a
  segmentation (released-code.md section 7). The two rules disagree on about half the pixels of a random map.

Thinning is MATLAB's ``bwmorph(..., 'thin', Inf)`` (`thinning.py`, the same one the metric thins predictions with).
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


def region_boundaries(labels: np.ndarray) -> np.ndarray:
    """Where a label differs from its east, south or south-east neighbour (last row: east only; last column: south
    only). bool (H, W)."""
    e = np.zeros(labels.shape, dtype=bool)
    e[:, :-1] |= labels[:, :-1] != labels[:, 1:]
    e[:-1, :] |= labels[:-1, :] != labels[1:, :]
    e[:-1, :-1] |= labels[:-1, :-1] != labels[1:, 1:]
    return e


def seism_ground_truth(labels: np.ndarray) -> np.ndarray:
    """The boundary ground truth of the published evaluation (SEISM) for a segmentation: its region boundaries,
    thinned. bool (H, W)."""
    return thin(region_boundaries(np.asarray(labels)))


def instance_edges(instances: np.ndarray) -> np.ndarray:
    """The region boundaries of an instance map as edge labels, int64 (H, W) 0/1 (the synthetic scenes')."""
    return region_boundaries(instances).astype(np.int64)
