"""The boundary ground truth of the published evaluation (SEISM): region boundaries of a label map, thinned --
for PASCAL-Context from the Context LabelMap, for NYUD from the edge PNG read as a segmentation; the evaluation
datasets and so the boundary meter use it, training keeps the released edge labels."""

from __future__ import annotations

import numpy as np
import pytest
from skimage.morphology import thin as skimage_thin

from taskprompter.config import load_config
from taskprompter.data import build_dataset
from taskprompter.data.boundaries import context_edges, region_boundaries
from taskprompter.engine.evaluate import build_eval_dataset
from taskprompter.metrics import seism_ground_truth

LABELS = np.array([
    [0, 0, 0, 5, 5],
    [0, 0, 0, 5, 5],
    [7, 7, 0, 5, 5],
    [7, 7, 7, 7, 7],
])
# worked out by hand: a pixel is a boundary where its label differs from its east, south or south-east neighbour;
# the last row looks east only, the last column south only
BOUNDARY = np.array([
    [0, 0, 1, 0, 0],  # (0,2): east is 5
    [1, 1, 1, 0, 0],  # (1,0), (1,1): south is 7; (1,2): east is 5
    [0, 1, 1, 1, 1],  # (2,1): east 0; (2,2): east 5; (2,3): south 7; (2,4) last column: south 7
    [0, 0, 0, 0, 0],  # last row: east neighbours all 7
], dtype=bool)


def test_region_boundaries_of_a_hand_made_label_map():
    assert np.array_equal(region_boundaries(LABELS), BOUNDARY)


def test_seism_ground_truth_is_the_thinned_region_boundary():
    gt = seism_ground_truth(LABELS)
    assert gt.dtype == bool and gt.shape == LABELS.shape
    assert np.array_equal(gt, skimage_thin(BOUNDARY))  # scikit-image's bwmorph-'thin' as the reference
    assert not np.array_equal(gt, BOUNDARY)  # the 2x2 block at (1..2, 1..2) really is thinned
    assert not np.array_equal(gt, context_edges(LABELS).astype(bool))  # not the released training edges


def test_the_two_rules_disagree_on_random_maps():
    labels = np.random.default_rng(0).integers(0, 4, (40, 40))
    seism, train = seism_ground_truth(labels), context_edges(labels).astype(bool)
    agree = (seism & train).sum() / max(seism.sum(), 1)
    assert 0.2 < agree < 0.9, agree


@pytest.mark.parametrize("fmt", ["pascal_context", "nyud"])
def test_the_evaluation_scores_against_seism_and_training_keeps_the_released_edges(
        fmt, synthetic_pascal_root, synthetic_nyud_root):
    root = synthetic_pascal_root if fmt == "pascal_context" else synthetic_nyud_root
    train = build_dataset(fmt, root, "val", ["edge"])
    seism = build_dataset(fmt, root, "val", ["edge"], edge_protocol="seism")
    sample_id = train.ids[0]
    if fmt == "pascal_context":
        source = train.load_label_map(sample_id)  # the Context LabelMap
        assert np.array_equal(train.load_raw(0)["edge"], context_edges(source))
    else:
        source = train.load_edge(sample_id)  # the edge PNG, read as a segmentation
        assert np.array_equal(train.load_raw(0)["edge"], source)
    assert np.array_equal(seism.load_raw(0)["edge"], seism_ground_truth(source).astype(np.int64))
    # the evaluation dataset of a run (what `eval` and the trainer's evaluation feed the boundary meter)
    cfg = load_config("synthetic_tiny", [f"data.format={fmt}", f"data.root={root}", "data.size=[64, 80]",
                                         "data.tasks=[semseg, edge]"])
    ds = build_eval_dataset(cfg, "val", ["semseg", "edge"])
    edge = ds[0]["edge"].numpy()  # padded to the input size with 255 (ignored by the meter)
    H, W = source.shape
    assert np.array_equal(edge[:H, :W], seism_ground_truth(source).astype(np.int64))
