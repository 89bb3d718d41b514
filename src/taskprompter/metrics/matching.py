"""Correspondence between predicted and ground-truth boundary pixels within a distance tolerance.

The BSDS benchmark (`correspondPixels`, used by SEISM) solves a minimum-cost assignment on the graph of
(predicted, ground-truth) pixel pairs closer than the tolerance, with expensive "outlier" edges so that the
number of matched pairs is maximised first and the total distance second; it wires a few random outlier edges,
so repeated runs can differ slightly (about 0.001 F). Only the *number* of matches enters the F-measure, and the
largest possible number of matches is exactly the size of a maximum bipartite matching of that graph, which we
compute exactly and deterministically (unit-capacity max flow, Dinic, `scipy.sparse.csgraph.maximum_flow`).
Our counts can differ from BSDS's only where its heuristic graph misses the true maximum; *which* pixels are
matched may differ (we do not minimise distance), the count does not.

(`scipy.sparse.csgraph.maximum_bipartite_matching` gives the same counts but took seconds on some boundary
graphs; the max flow, warm-started from the previous threshold's matching, takes milliseconds.)

Pairs are connected when their Euclidean distance is <= radius (radius = max_dist * image diagonal).
"""

from __future__ import annotations

import numpy as np
from scipy import sparse
from scipy.sparse.csgraph import maximum_flow


def disc_offsets(radius: float) -> tuple[np.ndarray, np.ndarray]:
    """Integer (dy, dx) with dy^2 + dx^2 <= radius^2."""
    r = int(np.floor(radius))
    dy, dx = np.mgrid[-r : r + 1, -r : r + 1]
    keep = dy**2 + dx**2 <= radius**2
    return dy[keep], dx[keep]


class CandidateGraph:
    """Pairs within the tolerance between a fixed set of candidate predicted pixels and the GT pixels.

    Built once per image for every pixel that any threshold can predict; each threshold then matches only
    the rows of its own predicted pixels (a CSR row selection), so the tolerance search is not repeated.
    """

    def __init__(self, candidates: np.ndarray, gt: np.ndarray, radius: float) -> None:
        h, w = gt.shape
        gt_flat = np.flatnonzero(gt)
        gt_id = np.full(h * w, -1, dtype=np.int64)
        gt_id[gt_flat] = np.arange(gt_flat.size)
        self.num_gt = int(gt_flat.size)
        self.row_of = np.full(h * w, -1, dtype=np.int64)  # pixel -> graph row (-1: no GT within reach)
        cand = np.flatnonzero(candidates)
        rows_list, cols_list = [], []
        if cand.size and gt_flat.size:
            cy, cx = np.divmod(cand, w)
            dys, dxs = disc_offsets(radius)
            for dy, dx in zip(dys.tolist(), dxs.tolist()):
                y, x = cy + dy, cx + dx
                inside = (y >= 0) & (y < h) & (x >= 0) & (x < w)
                hit = np.full(cand.size, -1, dtype=np.int64)
                hit[inside] = gt_id[y[inside] * w + x[inside]]
                found = np.flatnonzero(hit >= 0)
                rows_list.append(found)
                cols_list.append(hit[found])
        pair_rows = np.concatenate(rows_list) if rows_list else np.zeros(0, np.int64)
        pair_cols = np.concatenate(cols_list) if cols_list else np.zeros(0, np.int64)
        reach = np.unique(pair_rows)  # candidate positions (into cand) with at least one GT neighbour
        self.row_of[cand[reach]] = np.arange(reach.size)
        compact = np.searchsorted(reach, pair_rows)
        data = np.ones(pair_rows.size, dtype=np.int8)
        self.graph = sparse.csr_matrix((data, (compact, pair_cols)), shape=(reach.size, self.num_gt))
        self.match = np.full(reach.size, -1, dtype=np.int64)  # row -> GT column of the last matching

    def count_matches(self, predicted: np.ndarray) -> int:
        """Size of a maximum matching between the predicted pixels (boolean mask) and the GT pixels.

        Warm-started: the previous call's matching, restricted to the rows still predicted, is a valid
        matching; only augmenting paths from it are searched (max flow on its residual graph). Calling with
        growing predicted sets (thresholds in descending order) makes each call cheap.
        """
        rows = self.row_of[np.flatnonzero(predicted)]
        rows = np.sort(rows[rows >= 0])
        previous = self.match[rows]
        self.match[:] = -1
        if rows.size == 0:
            return 0
        sub = self.graph[rows]  # (n_r, n_g) pairs within the tolerance
        n_r, n_g = sub.shape
        reachable = np.zeros(n_g, dtype=bool)
        reachable[sub.indices] = True
        matched = previous >= 0
        if matched.sum() < min(n_r, int(reachable.sum())):  # not provably maximum yet: augment
            previous = _augment(sub, previous, reachable)
        self.match[rows] = previous
        return int((previous >= 0).sum())


def _augment(sub: sparse.csr_matrix, partner: np.ndarray, reachable: np.ndarray) -> np.ndarray:
    """A maximum matching grown from `partner` (row -> column or -1) by max flow on the residual network.

    Nodes: 0 source, 1..n_r rows, n_r+1..n_r+n_g columns, n_r+n_g+1 sink. Residual edges: source -> free row,
    row -> column for unmatched pairs, column -> row for matched pairs, free reachable column -> sink.
    """
    n_r, n_g = sub.shape
    sink = n_r + n_g + 1
    pair_r = np.repeat(np.arange(n_r), np.diff(sub.indptr))
    pair_c = sub.indices
    is_matched = partner[pair_r] == pair_c
    free_r = np.flatnonzero(partner < 0)
    taken = np.zeros(n_g, dtype=bool)
    taken[partner[partner >= 0]] = True
    free_c = np.flatnonzero(reachable & ~taken)
    m_r = np.flatnonzero(partner >= 0)
    src = np.concatenate(
        [np.zeros(free_r.size, np.int64), 1 + pair_r[~is_matched], 1 + n_r + partner[m_r], 1 + n_r + free_c]
    )
    dst = np.concatenate([1 + free_r, 1 + n_r + pair_c[~is_matched], 1 + m_r, np.full(free_c.size, sink)])
    residual = sparse.csr_matrix((np.ones(src.size, np.int32), (src, dst)), shape=(sink + 1, sink + 1))
    result = maximum_flow(residual, 0, sink, method="dinic")
    if result.flow_value == 0:
        return partner
    flow = result.flow.tocsr()[1 : n_r + 1].tocoo()  # net flow out of row nodes (antisymmetric)
    to_col = flow.col > n_r
    undone = flow.row[to_col & (flow.data < 0)]
    partner = partner.copy()
    partner[undone] = -1
    new = to_col & (flow.data > 0)
    partner[flow.row[new]] = flow.col[new] - n_r - 1
    return partner


def count_matches(pred: np.ndarray, gt: np.ndarray, radius: float) -> int:
    """Maximum number of one-to-one (pred, gt) pixel pairs closer than radius, for two boolean masks."""
    return CandidateGraph(pred, gt, radius).count_matches(pred)
