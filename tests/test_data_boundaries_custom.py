"""Boundary helpers against reference implementations, and the custom folder format round trip."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from scipy.ndimage import binary_dilation
from skimage.morphology import thin as skimage_thin

from taskprompter.data import CustomDataset, build_dataset
from taskprompter.data.boundaries import context_edges, instance_edges, thin
from taskprompter.data.check import check_dataset
from taskprompter.data.synthetic import render_scene
from taskprompter.errors import ConfigError, DataError


def test_thinning_equals_scikit_image():
    rng = np.random.default_rng(0)
    for k in range(30):
        mask = binary_dilation(rng.random((30, 41)) < rng.uniform(0.1, 0.7), iterations=k % 3)
        assert np.array_equal(thin(mask), skimage_thin(mask))


def test_two_regions_give_a_one_pixel_boundary():
    labels = np.zeros((10, 12), dtype=np.int64)
    labels[:, 6:] = 440
    edges = context_edges(labels)
    per_row = edges[:, 5:7].sum(1)
    assert (per_row <= 1).all() and (per_row[1:-1] == 1).all()  # one pixel wide (thinning may trim the ends)
    assert edges[:, :5].sum() == 0 and edges[:, 7:].sum() == 0
    inst = instance_edges(labels)
    assert inst[:, 5].tolist() == [1] * 10 and inst.sum() == 10


YAML = """
name: my-data
tasks:
  semseg: {classes: [floor, wall, ceiling, box, sphere, cylinder, person], encoding: index_plus_one}
  depth: {encoding: png_scaled, scale: 1000}
  normals: {}
  sal: {}
"""


@pytest.fixture
def custom_root(tmp_path):
    root = tmp_path / "mine"
    for d in ("images", "semseg", "depth", "normals", "sal", "splits"):
        (root / d).mkdir(parents=True)
    (root / "dataset.yaml").write_text(YAML)
    for i in range(3):
        s = render_scene(5, i, (32, 40))
        Image.fromarray(s["image"]).save(root / "images" / f"im{i}.jpg" if i == 0 else root / "images" / f"im{i}.png")
        Image.fromarray((s["semseg"] + 1).astype(np.uint8)).save(root / "semseg" / f"im{i}.png")
        Image.fromarray(np.rint(s["depth"] * 1000).astype(np.uint16)).save(root / "depth" / f"im{i}.png")
        n = np.rint((s["normals"] + 1) * 127.5).astype(np.uint8)
        n[:2] = 0  # first two rows invalid
        Image.fromarray(n).save(root / "normals" / f"im{i}.png")
        Image.fromarray(s["sal"].astype(np.uint8) * 255).save(root / "sal" / f"im{i}.png")
    (root / "splits" / "train.txt").write_text("im0\nim1\n")
    (root / "splits" / "val.txt").write_text("im2\n")
    return root


def test_custom_dataset_reads_what_was_written(custom_root):
    ds = CustomDataset(custom_root, "train")
    assert ds.tasks == ["semseg", "depth", "sal", "normals"]  # canonical task order
    assert ds.task_channels == {"semseg": 7, "depth": 1, "normals": 3, "sal": 2}
    raw = ds.load_raw(1)
    s = render_scene(5, 1, (32, 40))
    assert np.array_equal(raw["image"], s["image"].astype(np.float32))
    assert np.array_equal(raw["semseg"], s["semseg"])
    np.testing.assert_allclose(raw["depth"], np.rint(s["depth"] * 1000) / 1000, rtol=1e-6)
    assert (raw["normals"][:2] == 0).all() and np.abs(raw["normals"][2:] - s["normals"][2:]).max() < 1 / 255 + 1e-6
    assert np.array_equal(raw["sal"], s["sal"])
    depth_only = build_dataset("custom", custom_root, "val", ["depth"]).load_raw(0)
    assert depth_only.keys() == {"image", "depth", "meta", "labelled"}
    assert check_dataset("custom", custom_root) == (3, [])


def test_custom_yaml_mistakes_are_named(custom_root):
    path = custom_root / "dataset.yaml"
    path.write_text(YAML.replace("normals: {}", "normals: {colour: rgb}"))
    with pytest.raises(ConfigError, match="colour.*tasks.normals"):
        CustomDataset(custom_root, "train")
    path.write_text(YAML.replace("  sal: {}", "  saliency: {}"))
    with pytest.raises(ConfigError, match="saliency"):
        CustomDataset(custom_root, "train")
    path.write_text(YAML.replace("png_scaled, scale: 1000", "png_scaled"))
    with pytest.raises(ConfigError, match="scale"):
        CustomDataset(custom_root, "train")
    path.unlink()
    with pytest.raises(DataError, match="dataset.yaml"):
        CustomDataset(custom_root, "train")


def test_custom_label_out_of_range(custom_root):
    path = custom_root / "semseg" / "im0.png"
    Image.fromarray(np.full((32, 40), 9, dtype=np.uint8)).save(path)  # class 8 with index_plus_one
    with pytest.raises(DataError, match="8"):
        CustomDataset(custom_root, "train", ["semseg"]).load_raw(0)
    assert str(path) in check_dataset("custom", custom_root, ["train"], ["semseg"])[1][0]


def test_class_tables_match_the_published_ones():
    from taskprompter.data.classes import NYU40_CLASSES, PART_NAMES, VOC_CLASSES, VOC_PALETTE, context_id

    assert VOC_CLASSES[15] == "person" and len(VOC_CLASSES) == 21 and len(PART_NAMES) == 7
    assert VOC_PALETTE[15].tolist() == [192, 128, 128] and VOC_PALETTE[1].tolist() == [128, 0, 0]  # VOC colours
    assert len(NYU40_CLASSES) == 40 and NYU40_CLASSES[0] == "wall" and NYU40_CLASSES[30] == "person"
    assert context_id("person") == 284 and context_id("floor") == 158
