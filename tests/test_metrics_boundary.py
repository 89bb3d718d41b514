from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from scipy import ndimage

from taskprompter.data.thinning import thin
from taskprompter.metrics import build_meter
from taskprompter.metrics.boundary import (
    evaluate_boundaries,
    image_counts,
    make_thresholds,
    recall_precision,
    summarize,
)
from taskprompter.metrics.boundary_nms import nms_boundaries
from taskprompter.metrics.matching import count_matches


def _square_outline(h: int = 60, w: int = 80) -> np.ndarray:
    """Thinned region boundary of a square, away from the image border (the NMS fades a 5-pixel border)."""
    labels = np.zeros((h, w), dtype=np.int64)
    labels[15:45, 20:60] = 1
    b = np.zeros((h, w), dtype=bool)
    b[:, :-1] |= labels[:, :-1] != labels[:, 1:]
    b[:-1, :] |= labels[:-1, :] != labels[1:, :]
    b[:-1, :-1] |= labels[:-1, :-1] != labels[1:, 1:]
    return thin(b)


def _vertical_line(col: int, h: int = 60, w: int = 80) -> np.ndarray:
    m = np.zeros((h, w), dtype=bool)
    m[10:50, col] = True
    return m


def test_perfect_prediction_scores_one():
    gt = _square_outline()
    assert np.array_equal(thin(gt), gt)  # a one-pixel GT is its own thinning
    scores = evaluate_boundaries([gt.astype(np.float32)], [gt])
    assert scores["odsF"] == pytest.approx(1.0) and scores["oisF"] == pytest.approx(1.0)


def test_shift_within_tolerance_matches_and_beyond_does_not():
    gt = _vertical_line(30)
    diag = np.hypot(*gt.shape)  # 100 pixels
    within = evaluate_boundaries([_vertical_line(33).astype(np.float32)], [gt], max_dist=4 / diag)
    beyond = evaluate_boundaries([_vertical_line(35).astype(np.float32)], [gt], max_dist=4 / diag)
    assert within["odsF"] == pytest.approx(1.0)
    assert beyond["odsF"] == 0.0 and beyond["oisF"] == 0.0


def test_nms_thins_a_blurred_ridge_to_one_pixel():
    ridge = ndimage.gaussian_filter(_vertical_line(40).astype(np.float32), 2.0)
    ridge /= ridge.max()
    assert ((ridge > 0.05).sum(1) >= 5).any()  # the input is several pixels wide
    out = nms_boundaries(ridge)
    rows = range(15, 45)  # away from the line ends and the faded border
    for r in rows:
        assert np.flatnonzero(out[r] > 0).tolist() == [40], r


def test_nms_fades_the_five_pixel_border():
    edges = np.ones((20, 30), dtype=np.float32)
    out = nms_boundaries(edges)
    assert np.all(out[0] == 0) and np.all(out[:, -1] == 0)
    assert out[2, 15] == pytest.approx(2 / 5) and out[10, 15] == pytest.approx(1.0)


def test_thinning_matches_skimage():
    skimage_thin = pytest.importorskip("skimage.morphology").thin
    rng = np.random.default_rng(4)
    for _ in range(40):
        mask = rng.random(tuple(rng.integers(3, 25, 2))) < rng.uniform(0.2, 0.9)
        assert np.array_equal(thin(mask), skimage_thin(mask))


def _exhaustive_matches(pred: np.ndarray, gt: np.ndarray, radius: float) -> int:
    ps, gs = np.argwhere(pred), np.argwhere(gt)
    near = [[j for j, g in enumerate(gs) if np.hypot(*(p - g)) <= radius] for p in ps]
    best = 0
    for choice in itertools.product(*[[None, *n] for n in near]):  # every partial assignment
        used = [c for c in choice if c is not None]
        if len(used) == len(set(used)):
            best = max(best, len(used))
    return best


def test_maximum_matching_equals_exhaustive_search_on_tiny_images():
    rng = np.random.default_rng(5)
    for _ in range(60):
        shape = tuple(rng.integers(3, 7, 2))
        pred, gt = rng.random(shape) < 0.3, rng.random(shape) < 0.3
        if pred.sum() > 7:
            continue
        radius = float(rng.uniform(0.9, 2.5))
        assert count_matches(pred, gt, radius) == _exhaustive_matches(pred, gt, radius)


def test_counts_and_scores_on_hand_made_counts():
    # two thresholds; [cntR, sumR, cntP, sumP]
    counts = np.array([[8.0, 10, 8, 16], [5, 10, 5, 5]])
    r, p = np.array([0.8, 0.5]), np.array([0.5, 1.0])
    f = 2 * p * r / (p + r)
    recall_grid = np.linspace(0, 1, 101)
    ap = np.interp(recall_grid[(recall_grid >= 0.5 - 1e-12) & (recall_grid <= 0.8 + 1e-12)], [0.5, 0.8], [1.0, 0.5])
    scores = summarize(counts, counts[1])
    assert scores["odsF"] == pytest.approx(f.max())
    assert scores["oisF"] == pytest.approx(f[1])
    assert scores["ap"] == pytest.approx(ap.sum() / 100)


def test_empty_prediction_and_empty_gt_conventions():
    ts = make_thresholds(101)
    no_gt = image_counts(np.full((20, 20), 0.5, np.float32), np.zeros((20, 20), bool), max_dist=0.1,
                         thresholds=ts, nms=False)  # fmt: skip
    r, p = recall_precision(no_gt)
    low = ts < 0.5  # something predicted, no GT: R = 1, P = 0
    assert np.all(r == 1) and np.all(p[low] == 0) and np.all(p[~low] == 1)  # nothing at all: R = P = 1
    nothing = image_counts(np.zeros((20, 20), np.float32), _vertical_line(5, 20, 20), max_dist=0.1, thresholds=ts)
    assert np.all(nothing[:, 3] == 0) and summarize(nothing, nothing[0])["odsF"] == 0.0  # R = 0, P = 1


def test_meter_crops_padding_and_is_split_invariant():
    gt = _square_outline()
    rng = np.random.default_rng(6)
    soft = np.clip(ndimage.gaussian_filter(gt.astype(np.float32), 1.0) * 3 + rng.random(gt.shape) * 0.1, 0, 1)
    logit = torch.logit(torch.from_numpy(soft).clamp(1e-4, 1 - 1e-4))
    padded_logits = torch.full((1, 1, 70, 96), -5.0)
    padded_logits[0, 0, 5:65, 8:88] = logit
    padded_gt = torch.full((1, 70, 96), 255)
    padded_gt[0, 5:65, 8:88] = torch.from_numpy(gt.astype(np.int64))
    padded = build_meter("edge", max_dist=0.02)
    padded.update(padded_logits, padded_gt)
    plain = build_meter("edge", max_dist=0.02)
    plain.update(logit[None, None], torch.from_numpy(gt.astype(np.int64))[None])
    assert padded.compute() == pytest.approx(plain.compute())
    # quantised like the published PNGs: the same as evaluating uint8(p * 255) / 255 directly
    quantised = np.floor(torch.sigmoid(logit).numpy() * 255).astype(np.uint8) / np.float32(255)
    direct = evaluate_boundaries([quantised], [gt], max_dist=0.02)
    assert plain.compute() == pytest.approx({k: 100 * v for k, v in direct.items()})
    both = build_meter("edge", max_dist=0.02)
    both.update(torch.cat([padded_logits, padded_logits]), torch.cat([padded_gt, padded_gt]))
    twice = build_meter("edge", max_dist=0.02)
    twice.merge(padded)
    twice.merge(padded)
    assert torch.equal(both.counts, twice.counts) and both.images.item() == 2


def test_warm_started_counts_equal_independent_per_threshold_evaluation():
    # image_counts shares one tolerance graph and warm-starts the matching across thresholds; check every
    # threshold against thin + a fresh maximum matching, on a noisy map with many near-ties.
    rng = np.random.default_rng(8)
    gt = _square_outline()
    soft = ndimage.shift(ndimage.gaussian_filter(gt.astype(np.float32), 1.2) * 3, (1.5, -1.0))
    soft = np.clip(soft + rng.random(gt.shape).astype(np.float32) * 0.3, 0, 1)
    ts = make_thresholds(101)
    counts = image_counts(soft, gt, max_dist=0.03, thresholds=ts)
    edges = nms_boundaries(soft)
    radius = 0.03 * np.hypot(*gt.shape)
    for k, t in enumerate(ts):
        predicted = thin(edges > t)
        matched = count_matches(predicted, gt, radius)
        assert counts[k].tolist() == [matched, gt.sum(), matched, predicted.sum()], t


def test_thinning_a_large_solid_blob_stays_linear():
    # An untrained network's flat map survives NMS almost everywhere; thinning it takes ~60 iterations and must
    # neither blow up the re-examination lists nor differ from bwmorph/skimage.
    skimage_thin = pytest.importorskip("skimage.morphology").thin
    blob = np.zeros((130, 140), dtype=bool)
    blob[5:125, 10:130] = True
    blob[40:60, 50:70] = False  # a hole keeps a ring
    assert np.array_equal(thin(blob), skimage_thin(blob))
