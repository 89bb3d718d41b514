"""Readers on the synthetic released-format trees: they return exactly the generated arrays, read the PASCAL-Part
and Context .mat files the released way, never write into the dataset, and batch with `collate`."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
import scipy.io
import torch
from PIL import Image
from skimage.morphology import thin as skimage_thin

from taskprompter.data import DATASET_TASKS, NYUD, PascalContext, build_dataset, collate
from taskprompter.data.check import check_dataset
from taskprompter.data.classes import NYU40_CLASSES, VOC_CLASSES, context_class_names, context_normals_valid_ids
from taskprompter.data.synthetic import CLASSES, render_scene
from taskprompter.data.transforms import eval_transform

SIZE = (64, 80)
# synthetic class -> the real datasets' class names (written independently of the generator's id tables)
VOC_NAME = {"floor": "background", "wall": "background", "ceiling": "background", "box": "tvmonitor",
            "sphere": "pottedplant", "cylinder": "bottle", "person": "person"}
NYU_NAME = {"floor": "floor", "wall": "wall", "ceiling": "ceiling", "box": "box", "sphere": "otherprop",
            "cylinder": "otherfurniture", "person": "person"}
CONTEXT_NAME = {"floor": "floor", "wall": "wall", "ceiling": "ceiling", "box": "box", "sphere": "ball",
                "cylinder": "barrel", "person": "person"}


def _map(semseg: np.ndarray, names: dict[str, str], table: list[str]) -> np.ndarray:
    lut = np.array([table.index(names[c]) for c in CLASSES])
    return lut[semseg]


def _quantised(normals: np.ndarray) -> np.ndarray:
    return np.rint((normals.astype(np.float64) + 1) * 127.5) * (2 / 255) - 1


def _all_ids(root_ds_cls, root, tasks):
    for split in ("train", "val"):
        ds = root_ds_cls(root, split, tasks)
        for i, sample_id in enumerate(ds.ids):
            yield ds, i, sample_id


def test_nyud_reader_returns_exactly_the_generated_arrays(synthetic_nyud_root):
    count = 0
    for ds, i, sample_id in _all_ids(NYUD, synthetic_nyud_root, ["semseg", "depth", "normals", "edge"]):
        raw, scene = ds.load_raw(i), render_scene(0, int(sample_id), SIZE)
        assert np.array_equal(raw["image"], scene["image"].astype(np.float32))
        assert np.array_equal(raw["semseg"], _map(scene["semseg"], NYU_NAME, list(NYU40_CLASSES)))
        assert np.array_equal(raw["depth"], scene["depth"])
        np.testing.assert_allclose(raw["normals"], _quantised(scene["normals"]), atol=1e-6)
        assert np.abs(raw["normals"] - scene["normals"]).max() <= 1 / 255 + 1e-6
        assert np.array_equal(raw["edge"], scene["edge"])
        assert raw["meta"] == {"id": sample_id, "size": SIZE, "pad": (0, 0, 0, 0)}
        count += 1
    assert count == 6


def _reference_context_edges(label_map: np.ndarray) -> np.ndarray:
    """Naive 4-neighbour Laplacian with reflected borders, then scikit-image's thinning."""
    h, w = label_map.shape
    lab = label_map.astype(np.int64)
    refl = lambda i, n: -i if i < 0 else (2 * (n - 1) - i if i >= n else i)  # noqa: E731
    out = np.zeros((h, w), dtype=bool)
    for r in range(h):
        for c in range(w):
            s = sum(lab[refl(r + dr, h), refl(c + dc, w)] for dr, dc in ((-1, 0), (1, 0), (0, -1), (0, 1)))
            out[r, c] = s - 4 * lab[r, c] != 0
    return skimage_thin(out).astype(np.int64)


def test_pascal_reader_returns_exactly_the_generated_arrays(synthetic_pascal_root):
    root = synthetic_pascal_root
    with_parts = 0
    for ds, i, sample_id in _all_ids(PascalContext, root, list(DATASET_TASKS["pascal_context"])):
        raw, scene = ds.load_raw(i), render_scene(0, int(sample_id), SIZE)
        jpeg = np.asarray(Image.open(root / "JPEGImages" / f"{sample_id}.jpg").convert("RGB"))
        assert np.array_equal(raw["image"], jpeg.astype(np.float32))
        assert np.abs(raw["image"] - scene["image"]).mean() < 4  # JPEG quality 95 of the rendered image
        assert np.array_equal(raw["semseg"], _map(scene["semseg"], VOC_NAME, list(VOC_CLASSES)))
        if (scene["parts"] > 0).any():
            with_parts += 1
            assert np.array_equal(raw["human_parts"], scene["parts"])
        else:
            assert (raw["human_parts"] == 255).all()  # no person parts: ignored for parsing
        assert np.array_equal(raw["sal"], scene["sal"])
        np.testing.assert_allclose(raw["normals"], _quantised(scene["normals"]), atol=1e-6)  # all classes valid
        context = _map(scene["semseg"], CONTEXT_NAME, [context_class_names().get(k, "") for k in range(460)])
        assert np.array_equal(raw["edge"], _reference_context_edges(context))
    assert with_parts >= 1


def test_pascal_mat_files_have_the_released_structs(synthetic_pascal_root):
    root = synthetic_pascal_root
    part_names = {"head", "torso", "luarm", "ruarm", "llarm", "rlarm", "luleg", "ruleg", "llleg", "rlleg"}
    for sample_id in [f"{i:06d}" for i in range(6)]:
        scene = render_scene(0, int(sample_id), SIZE)
        anno = scipy.io.loadmat(str(root / "human_parts" / f"{sample_id}.mat"))["anno"][0, 0]
        objects = anno["objects"]
        person_union = np.zeros(SIZE, dtype=bool)
        for k in range(objects.shape[1]):
            obj = objects[0, k]
            class_ind = int(obj["class_ind"][0, 0])
            assert VOC_CLASSES[class_ind] == str(obj["class"][0])
            assert obj["mask"].shape == SIZE
            if class_ind == 15:
                union = np.zeros(SIZE, dtype=bool)
                for j in range(obj["parts"].shape[1]):
                    part = obj["parts"][0, j]
                    assert str(part["part_name"][0]) in part_names
                    union |= part["mask"] > 0
                assert np.array_equal(union, obj["mask"] > 0)  # parts tile the person
                person_union |= union
        assert np.array_equal(person_union, scene["parts"] > 0)
        label_map = scipy.io.loadmat(str(root / "pascal-context" / "trainval" / f"{sample_id}.mat"))["LabelMap"]
        names = {context_class_names()[int(v)] for v in np.unique(label_map)}
        assert names <= set(CONTEXT_NAME.values())


def test_pascal_normals_are_kept_only_on_valid_context_classes(synthetic_pascal_root, tmp_path):
    root = shutil.copytree(synthetic_pascal_root, tmp_path / "p")
    sky = next(k for k, v in context_class_names().items() if v == "sky")
    assert sky not in context_normals_valid_ids() and 158 in context_normals_valid_ids()  # floor is valid
    path = root / "pascal-context" / "trainval" / "000000.mat"
    label_map = scipy.io.loadmat(str(path))["LabelMap"]
    label_map[:, : SIZE[1] // 2] = sky
    scipy.io.savemat(str(path), {"LabelMap": label_map})
    normals = PascalContext(root, "train", ["normals"]).load_raw(0)["normals"]
    assert (normals[:, : SIZE[1] // 2] == 0).all()
    assert (np.abs(normals[:, SIZE[1] // 2 :]).sum(-1) > 0.5).all()


def test_readers_never_write_into_the_dataset(synthetic_pascal_root, synthetic_nyud_root, tmp_path):
    for fmt, src in (("pascal_context", synthetic_pascal_root), ("nyud", synthetic_nyud_root)):
        root = shutil.copytree(src, tmp_path / fmt)
        before = {p: p.stat().st_mtime_ns for p in root.rglob("*")}
        for dirpath, _, filenames in os.walk(root):
            for name in filenames:
                os.chmod(os.path.join(dirpath, name), 0o444)
            os.chmod(dirpath, 0o555)
        try:
            for split in ("train", "val"):
                ds = build_dataset(fmt, root, split, None, transform=eval_transform(SIZE))
                assert len([ds[i] for i in range(len(ds))]) == len(ds)
            assert check_dataset(fmt, root)[1] == []
        finally:
            for dirpath, _, filenames in os.walk(root):
                os.chmod(dirpath, 0o755)
                for name in filenames:
                    os.chmod(os.path.join(dirpath, name), 0o644)
        assert {p: p.stat().st_mtime_ns for p in root.rglob("*")} == before


def test_parent_folder_is_accepted_as_root(synthetic_nyud_root, tmp_path):
    shutil.copytree(synthetic_nyud_root, tmp_path / "NYUDv2")
    assert NYUD(tmp_path, "val", ["depth"]).ids == NYUD(synthetic_nyud_root, "val", ["depth"]).ids


def test_tensor_samples_and_collate(synthetic_nyud_root):
    ds = build_dataset("nyud", synthetic_nyud_root, "train", ["semseg", "depth", "normals", "edge"],
                       transform=eval_transform((64, 96)))
    s = ds[0]
    assert s["image"].dtype == torch.float32 and s["image"].shape == (3, 64, 96)
    assert s["depth"].shape == (1, 64, 96) and s["normals"].shape == (3, 64, 96)
    assert s["semseg"].dtype == torch.int64 and s["semseg"].shape == (64, 96)
    assert s["meta"]["pad"] == (0, 0, 8, 8)
    batch = collate([ds[0], ds[1], ds[2]])
    assert batch["image"].shape == (3, 3, 64, 96) and batch["depth"].shape == (3, 1, 64, 96)
    assert [m["id"] for m in batch["meta"]] == ds.ids[:3]
    assert torch.equal(batch["semseg"][1], ds[1]["semseg"])


def test_only_enabled_tasks_are_read(synthetic_nyud_root, tmp_path):
    root = shutil.copytree(synthetic_nyud_root, tmp_path / "n")
    shutil.rmtree(root / "normals")
    raw = NYUD(root, "train", ["depth"]).load_raw(0)
    assert set(raw) == {"image", "depth", "meta", "labelled"} and raw["labelled"] == {"depth": True}


def test_unsupported_task_and_unknown_format_are_clear(synthetic_nyud_root):
    from taskprompter.errors import ConfigError, DataError

    with pytest.raises(DataError, match="human_parts"):
        NYUD(synthetic_nyud_root, "train", ["human_parts"])
    with pytest.raises(ConfigError, match="cityscapes"):
        build_dataset("cityscapes", synthetic_nyud_root, "train", ["semseg"])
    with pytest.raises(DataError, match="available splits: \\['train', 'val'\\]"):
        NYUD(synthetic_nyud_root, "test", ["depth"])
