"""visualize: exact colours for class maps and normals, depth map ends, overlays, and figure files."""

from __future__ import annotations

import json

import matplotlib
import numpy as np
from PIL import Image

from taskprompter import visualize as vis


def test_class_maps_use_the_voc_palette_and_stripes_for_ignore():
    labels = np.array([[0, 15], [255, 1]])
    rgb = vis.colorize_labels(labels, vis.palette("semseg", 21))
    assert rgb.dtype == np.uint8 and rgb.shape == (2, 2, 3)
    assert rgb[0, 0].tolist() == [0, 0, 0]  # background
    assert rgb[0, 1].tolist() == [192, 128, 128]  # VOC person
    assert rgb[1, 0].tolist() in vis.IGNORE_STRIPES.tolist()  # ignore: the stripes, not white
    assert rgb[1, 1].tolist() == [128, 0, 0]  # aeroplane
    assert vis.colorize_labels(np.array([[30]]), vis.palette("semseg", 21))[0, 0].tolist() == [255, 255, 255]
    assert vis.class_names("human_parts", 7)[1] == "head"
    assert len(vis.class_names("semseg", 40)) == 40 and vis.class_names("semseg", 40)[0] == "wall"
    assert vis.palette("semseg", 5).shape == (5, 3)


def test_normals_rgb_is_half_plus_half_n():
    n = np.zeros((2, 2, 3), dtype=np.float32)
    n[0, 0] = (0, 0, 1)
    n[0, 1] = (-1, 0, 0)
    n[1, 0] = (0, 2, 0)  # not unit: normalised first
    rgb = vis.colorize_normals(n)
    assert rgb[0, 0].tolist() == [128, 128, 255]
    assert rgb[0, 1].tolist() == [0, 128, 128]
    assert rgb[1, 0].tolist() == [128, 255, 128]
    assert rgb[1, 1].tolist() == [0, 0, 0]  # all-zero = invalid
    assert np.array_equal(vis.colorize_normals(n.transpose(2, 0, 1)), rgb)  # (3, H, W) accepted


def test_depth_colormap_ends_and_invalid_black():
    depth = np.array([[1.0, 3.0], [5.0, 0.0]])
    rgb = vis.colorize_depth(depth, vmin=1.0, vmax=5.0, cmap="viridis")
    cmap = matplotlib.colormaps["viridis"]
    assert rgb[0, 0].tolist() == (np.array(cmap(0.0)[:3]) * 255).astype(np.uint8).tolist()
    assert rgb[1, 0].tolist() == (np.array(cmap(1.0)[:3]) * 255).astype(np.uint8).tolist()
    assert rgb[1, 1].tolist() == [0, 0, 0]


def test_image_conversion_and_overlays():
    assert vis.to_uint8_image(np.full((2, 3), 65535, np.uint16)).tolist() == np.full((2, 3, 3), 255).tolist()
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[..., 3] = 9
    assert vis.to_uint8_image(rgba).shape == (2, 2, 3) and vis.to_uint8_image(rgba).max() == 0
    assert vis.to_uint8_image(np.ones((1, 1, 3))).tolist() == [[[255, 255, 255]]]
    img = np.full((2, 2, 3), 100, np.uint8)
    strength = np.array([[0.0, 1.0], [0.5, 0.0]])
    out = vis.overlay(img, strength, (200, 0, 0), alpha=1.0)
    assert out[0, 0].tolist() == [100, 100, 100]
    assert out[0, 1].tolist() == [200, 0, 0]
    assert out[1, 0].tolist() == [150, 50, 50]
    heat = vis.heatmap_overlay(img, np.array([[0.0, 1.0], [1.0, 1.0]]), alpha=1.0, cmap="gray")
    assert heat[0, 0].tolist() == [0, 0, 0] and heat[0, 1].tolist() == [255, 255, 255]
    magma = vis.heatmap_overlay(img, np.array([[0.0, 1.0], [1.0, 1.0]]), alpha=1.0)  # the default: perceptual
    assert magma[0, 0].tolist() == np.round(np.array(matplotlib.colormaps["magma"](0.0)[:3]) * 255).tolist()


def test_colorize_dispatches_per_task():
    img = np.zeros((3, 4, 3), np.uint8)
    assert vis.colorize("semseg", np.zeros((3, 4), np.int64), num_classes=21).shape == (3, 4, 3)
    assert vis.colorize("edge", np.ones((3, 4)), image=img)[0, 0].tolist() == [217, 34, 34]
    assert vis.colorize("sal", np.ones((3, 4)))[0, 0].tolist() == [255, 255, 255]
    assert vis.colorize("normals", np.dstack([np.zeros((3, 4)), np.zeros((3, 4)), np.ones((3, 4))]))[0, 0, 2] == 255


def _png(path):
    with Image.open(path) as im:
        return im.size


def test_figures_are_written(tmp_path):
    img = np.random.default_rng(0).integers(0, 255, (24, 32, 3), dtype=np.uint8)
    labels = np.zeros((24, 32), np.int64)
    labels[5:10, 5:20] = 15
    vis.save_panel(tmp_path / "panel.png", img, {"semseg": vis.colorize("semseg", labels, num_classes=21)},
                   labels={"semseg": labels}, num_classes={"semseg": 21}, title="t")
    w, h = _png(tmp_path / "panel.png")
    assert w > 200 and h > 100
    vis.save_affinity_grid(tmp_path / "aff.png", img, {"semseg": [np.ones((24, 32))] * 3, "edge": [labels] * 3})
    assert _png(tmp_path / "aff.png")[0] > 300
    aff = np.arange(5 * 100, dtype=np.float64).reshape(5, 100)
    idx = vis.plot_channel_affinity(tmp_path / "chan.png", aff, ["semseg", "human_parts", "sal", "normals", "edge"])
    assert len(idx) == 60 and np.all(np.diff(idx) > 0) and idx.max() < 100
    records = [{"step": s, "split": "train", "loss/total": 1.0 / s, "loss/semseg": 0.5 / s} for s in range(1, 6)]
    records.append({"step": 5, "split": "val", "semseg/mIoU": 40.0, "semseg/iou_person": 3.0})
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    keys = vis.plot_training_curves(tmp_path / "curves.png", records)
    assert keys == ["loss/semseg", "loss/total", "semseg/mIoU"]
    assert _png(tmp_path / "curves.png")[0] > 600
