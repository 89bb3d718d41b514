"""Cityscapes-3D: the synthetic street generator (determinism, labels that agree with the 3-D boxes) and the reader
on its tree (exact round trip, the released quirks as options, drop_empty without writing, errors, check-data)."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from taskprompter.cli import main
from taskprompter.data import Cityscapes3D, build_dataset, collate
from taskprompter.data import geometry as g
from taskprompter.data.cityscapes3d import OBJECT_FIELDS, projected_amodal, record_camera
from taskprompter.data.synthetic import generate
from taskprompter.data.synthetic.cityscapes3d import has_vehicles, render_street, sample_paths
from taskprompter.data.synthetic.street import VEHICLES
from taskprompter.errors import DataError
from taskprompter.label_sets import CITYSCAPES3D_DET_CLASSES, CITYSCAPES_CLASSES, CITYSCAPES_LABEL_IDS

SIZE = (64, 128)
NUM, N_TRAIN = 6, 4  # train 0..3 (1 has no vehicles), val 4..5
STREET_IDS = {"road": 7, "sidewalk": 8, "building": 11, "sky": 23, "car": 26, "truck": 27, "bus": 28, "train": 31,
              "motorcycle": 32, "bicycle": 33}  # the Cityscapes labelIds, written out independently


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """A synthetic Cityscapes-3D tree (6 samples of 64x128, seed 0). Read-only: copy it before corrupting."""
    return generate(tmp_path_factory.mktemp("cs3d"), format="cityscapes3d", num=NUM, size=SIZE, seed=0,
                    split_ratio=N_TRAIN / NUM)


@pytest.fixture
def copy(tree, tmp_path):
    return shutil.copytree(tree, tmp_path / "Cityscapes")


def _split(index: int) -> str:
    return "train" if index < N_TRAIN else "val"


def _json(root, index: int) -> dict:
    return json.loads(sample_paths(root, _split(index), index)["annotation"].read_text())


def _train_ids(label_ids: np.ndarray) -> np.ndarray:
    lut = {lid: CITYSCAPES_CLASSES.index(name) for name, lid in zip(CITYSCAPES_CLASSES, CITYSCAPES_LABEL_IDS)}
    return np.vectorize(lambda v: lut.get(int(v), 255))(label_ids)


# -- the generator --------------------------------------------------------------------------------------------------
def test_same_seed_and_index_give_the_same_bytes(tree, tmp_path):
    a, b = render_street(0, 3, SIZE), render_street(0, 3, SIZE)
    assert all(np.array_equal(a[k], b[k]) for k in ("image", "label_ids", "disparity", "instance_ids"))
    assert a["annotation"] == b["annotation"]
    assert not np.array_equal(render_street(1, 3, SIZE)["image"], a["image"])
    again = generate(tmp_path / "again", format="cityscapes3d", num=4, size=SIZE, seed=0, split_ratio=0.75, workers=2)
    for i in range(3):
        for kind, path in sample_paths(again, "train", i).items():
            assert path.read_bytes() == sample_paths(tree, "train", i)[kind].read_bytes(), path


def test_tree_layout_and_empty_training_images(tree):
    stems = sorted(p.name for p in (tree / "leftImg8bit" / "train" / "synthcity").iterdir())
    assert stems == [f"synthcity_{i:06d}_000019_leftImg8bit.png" for i in range(N_TRAIN)]
    assert sorted(p.name for p in (tree / "gtBbox3d" / "val" / "synthcity").iterdir()) == [
        f"synthcity_{i:06d}_000019_gtBbox3d.json" for i in range(N_TRAIN, NUM)]
    assert not has_vehicles("train", 1) and has_vehicles("val", 1) and has_vehicles("train", 2)
    assert _json(tree, 1)["objects"] == []
    ann = _json(tree, 0)
    assert ann["imgWidth"] == SIZE[1] and ann["imgHeight"] == SIZE[0] and ann["ignore"] == []
    assert set(ann["sensor"]) == {"fx", "fy", "u0", "v0", "baseline", "sensor_T_ISO_8855"}
    disparity = Image.open(sample_paths(tree, "train", 0)["disparity"])
    assert disparity.mode.startswith("I") and np.asarray(disparity).max() > 255  # 16-bit


@pytest.mark.parametrize("index", [0, 2, 3, 4, 5])
def test_rendered_labels_agree_with_the_3d_boxes(tree, index):
    scene = render_street(0, index, SIZE)
    camera, ann = scene["camera"], scene["annotation"]
    assert ann["objects"], "every scene with vehicles shows some"
    disparity = scene["disparity"].astype(np.float64)
    sky = scene["label_ids"] == STREET_IDS["sky"]
    assert (disparity[sky] == 0).all() and (disparity[~sky] > 0).all()
    np.testing.assert_allclose((disparity[~sky] - 1) / 256, camera.baseline * camera.fx / scene["depth"][~sky],
                               atol=0.5 / 256 + 1e-9)
    for obj in ann["objects"]:
        mask = scene["instance_ids"] == obj["instanceId"]
        assert (scene["label_ids"][mask] == STREET_IDS[obj["label"]]).all()
        rows, cols = np.nonzero(mask)
        x, y, w, h = obj["2d"]["modal"]
        assert [x, y, x + w, y + h] == [cols.min(), rows.min(), cols.max(), rows.max()]
        corners = g.sensor_corners(np.array([obj["3d"]["center"]]), np.array([obj["3d"]["dimensions"]]),
                                   np.array([obj["3d"]["rotation"]]), camera)[0]
        z_near, z_far = corners[:, 2].min(), corners[:, 2].max()
        d = (disparity[mask] - 1) / 256
        bf = camera.baseline * camera.fx
        assert (d >= bf / z_far - 1 / 256).all() and (d <= bf / z_near + 1 / 256).all()  # the disparity of its depth
        amodal = g.xywh_to_xyxy(np.array(obj["2d"]["amodal"]))
        assert amodal[0] <= x + 1e-9 and amodal[1] <= y + 1e-9  # modal inside amodal (both clamped to the image)
        assert amodal[2] >= x + w - 1e-9 and amodal[3] >= y + h - 1e-9
        assert 0 <= amodal[0] and amodal[2] <= SIZE[1] - 1 and 0 <= amodal[1] and amodal[3] <= SIZE[0] - 1
        label_id, prior, _ = VEHICLES[obj["label"]]
        assert obj["3d"]["center"][2] == pytest.approx(obj["3d"]["dimensions"][2] / 2)  # standing on the road
        assert np.allclose(obj["3d"]["dimensions"], prior, rtol=0.13)
        assert obj["instanceId"] // 1000 == label_id


def test_vehicles_spread_over_several_distance_bins():
    bins = set()
    for index in range(6):
        for obj in render_street(0, index, SIZE)["annotation"]["objects"]:
            distance = np.hypot(*obj["3d"]["center"][:2])
            assert 7.9 <= distance <= 70.1
            bins.add(int(distance // 5))
    assert len(bins) >= 5


# -- the reader -----------------------------------------------------------------------------------------------------
def test_reader_returns_exactly_what_the_generator_rendered(tree):
    seen = 0
    for split in ("train", "val"):
        ds = Cityscapes3D(tree, split, ["semseg", "depth", "3ddet"], drop_empty=False)
        assert ds.ids == sorted(ds.ids) and ds.ids[0].startswith("synthcity_") and not ds.ids[0].endswith("_")
        for i, sample_id in enumerate(ds.ids):
            index = int(sample_id.split("_")[1])
            scene = render_street(0, index, SIZE, vehicles=has_vehicles(split, index))
            raw = ds.load_raw(i)
            assert np.array_equal(raw["image"], scene["image"].astype(np.float32))
            assert raw["semseg"].dtype == np.int64 and np.array_equal(raw["semseg"], _train_ids(scene["label_ids"]))
            camera = scene["camera"]
            sky, rail = scene["label_ids"] == STREET_IDS["sky"], scene["label_ids"] == 10
            assert raw["depth"].dtype == np.float32 and (raw["depth"][sky] == -1).all()
            assert (raw["depth"][rail] == 0).all()  # rail_track_sky, the released quirk
            valid = ~sky & ~rail
            np.testing.assert_allclose(raw["depth"][valid], camera.baseline * camera.fx / scene["depth"][valid],
                                       atol=1 / 256)
            record, ann = raw["3ddet"], scene["annotation"]
            objects = ann["objects"]
            assert all(record[f].shape[0] == len(objects) for f in OBJECT_FIELDS)
            assert record["label"].tolist() == [CITYSCAPES3D_DET_CLASSES.index(o["label"]) for o in objects]
            assert record["instance_id"].tolist() == [o["instanceId"] for o in objects]
            for field, key in (("center_V", "center"), ("dimensions", "dimensions"), ("rotation", "rotation")):
                assert np.array_equal(record[field], np.array([o["3d"][key] for o in objects]).reshape(-1,
                                      record[field].shape[1]))
            for field, key in (("box_modal", "modal"), ("box_amodal", "amodal")):
                xywh = np.array([o["2d"][key] for o in objects], dtype=np.float64).reshape(-1, 4)
                assert np.array_equal(record[field], np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], 1))
            np.testing.assert_allclose(record["box_amodal"], projected_amodal(record, camera), atol=1e-9)
            boxes = g.boxes_to_sensor(record["center_V"], record["dimensions"], record["rotation"], camera)
            np.testing.assert_allclose(record["center_I"], boxes.center_image, rtol=1e-12)
            np.testing.assert_allclose(record["angles"], boxes.angles, atol=1e-12)
            assert record_camera(record) == camera and raw["meta"]["camera"] == camera.to_json()
            assert raw["meta"]["id"] == sample_id and raw["meta"]["size"] == SIZE
            seen += 1
    assert seen == NUM


def test_record_angles_follow_the_euler_option(tree):
    fixed = Cityscapes3D(tree, "val", ["3ddet"]).load_raw(0)["3ddet"]
    faithful = Cityscapes3D(tree, "val", ["3ddet"], euler="faithful").load_raw(0)["3ddet"]
    q_S = g.boxes_to_sensor(fixed["center_V"], fixed["dimensions"], fixed["rotation"], record_camera(fixed)).quaternion
    assert np.array_equal(faithful["angles"], g.sensor_angles(q_S, euler="faithful"))
    assert not np.allclose(faithful["angles"], fixed["angles"])
    with pytest.raises(ValueError, match="euler"):
        Cityscapes3D(tree, "val", ["3ddet"], euler="wxyz")


def test_rail_track_option(copy):
    path = sample_paths(copy, "val", 4)["label_ids"]
    ids = np.asarray(Image.open(path)).copy()
    ids[40:50, 10:30] = 10  # rail track
    Image.fromarray(ids).save(path)
    stored = np.asarray(Image.open(sample_paths(copy, "val", 4)["disparity"])).astype(np.float64)
    quirk = Cityscapes3D(copy, "val", ["depth"]).load_raw(0)["depth"]
    plain = Cityscapes3D(copy, "val", ["depth"], rail_track_sky=False).load_raw(0)["depth"]
    assert (quirk[40:50, 10:30] == 0).all()
    expected = np.where(stored > 0, (stored - 1) / 256, -1)
    assert np.array_equal(plain, expected.astype(np.float32))
    assert np.array_equal(quirk[ids != 10], plain[ids != 10])


def test_drop_empty_drops_exactly_the_images_without_boxes_and_writes_nothing(copy, tmp_path, monkeypatch,
                                                                             disk_state):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    # an image whose only object is not of the six classes counts as empty
    path = sample_paths(copy, "train", 3)["annotation"]
    data = json.loads(path.read_text())
    data["objects"] = [dict(data["objects"][0], label="person")]
    path.write_text(json.dumps(data))
    before = disk_state(copy)
    everything = [f"synthcity_{i:06d}_000019" for i in range(N_TRAIN)]
    train = build_dataset("cityscapes3d", copy, "train", None)
    assert train.drop_empty and train.ids == [everything[0], everything[2]]
    assert Cityscapes3D(copy, "train", ["semseg"], drop_empty=False).ids == everything
    assert len(build_dataset("cityscapes3d", copy.parent, "val", None)) == 2  # the parent of Cityscapes/ works too
    assert train.load_raw(1)["3ddet"]["label"].size > 0
    assert disk_state(copy) == before and list(cwd.iterdir()) == []
    # the in-memory decision follows the file: give image 3 a car back
    data["objects"][0]["label"] = "car"
    path.write_text(json.dumps(data))
    os.utime(path, ns=(1, 1))  # a different mtime even on a coarse clock
    assert Cityscapes3D(copy, "train", ["semseg"]).ids == [everything[0], everything[2], everything[3]]


def test_empty_object_lists_batch_as_tensors(tree):
    ds = Cityscapes3D(tree, "train", ["semseg", "depth", "3ddet"], drop_empty=False)
    empty, full = ds[1], ds[0]
    assert empty["3ddet"]["center_V"].shape == (0, 3) and empty["3ddet"]["label"].shape == (0,)
    batch = collate([full, empty])
    assert batch["image"].shape == (2, 3, *SIZE) and batch["depth"].shape == (2, 1, *SIZE)
    assert isinstance(batch["3ddet"], list) and len(batch["3ddet"]) == 2
    record = batch["3ddet"][0]
    assert str(record["label"].dtype) == "torch.int64" and str(record["center_I"].dtype) == "torch.float32"
    assert record["K"].shape == (3, 3) and batch["meta"][0]["camera"]["fx"] == pytest.approx(float(record["K"][0, 0]))


# -- errors ---------------------------------------------------------------------------------------------------------
def _error(ds, index: int = 0) -> str:
    with pytest.raises(DataError) as info:
        ds.load_raw(index)
    return str(info.value)


def test_wrong_label_value_names_file_value_and_task(copy):
    path = sample_paths(copy, "val", 4)["label_ids"]
    ids = np.asarray(Image.open(path)).copy()
    ids[0, :2] = 40
    Image.fromarray(ids).save(path)
    msg = _error(Cityscapes3D(copy, "val", ["semseg"]))
    assert str(path) in msg and "40" in msg and "semseg" in msg
    msg = _error(Cityscapes3D(copy, "val", ["depth"]))  # the rail-track mask reads the same file
    assert str(path) in msg and "40" in msg and "depth" in msg


def test_corrupt_png_and_wrong_disparity_name_the_file(copy):
    image = sample_paths(copy, "val", 4)["image"]
    image.write_bytes(image.read_bytes()[:200])
    assert str(image) in _error(Cityscapes3D(copy, "val", ["semseg"]))
    disparity = sample_paths(copy, "val", 5)["disparity"]
    Image.fromarray(np.zeros(SIZE, dtype=np.uint8)).save(disparity)
    msg = _error(Cityscapes3D(copy, "val", ["depth"]), 1)
    assert str(disparity) in msg and "16-bit" in msg


@pytest.mark.parametrize("change, needle", [
    (lambda d: d["objects"][0]["3d"].pop("center"), "center"),
    (lambda d: d["objects"][0]["2d"].__setitem__("modal", [1, 2, 3]), "modal"),
    (lambda d: d["sensor"].pop("fx"), "fx"),
    (lambda d: d.pop("objects"), "objects"),
    (lambda d: d.__setitem__("imgWidth", 99), "99"),
])  # fmt: skip
def test_bad_json_names_the_file_and_the_key(copy, change, needle):
    path = sample_paths(copy, "val", 4)["annotation"]
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))
    msg = _error(Cityscapes3D(copy, "val", ["3ddet"]))
    assert str(path) in msg and needle in msg


def test_missing_and_unparseable_json(copy):
    missing = sample_paths(copy, "val", 4)["annotation"]
    missing.unlink()
    assert str(missing) in _error(Cityscapes3D(copy, "val", ["3ddet"])) and "missing" in _error(
        Cityscapes3D(copy, "val", ["3ddet"]))
    broken = sample_paths(copy, "train", 2)["annotation"]
    broken.write_text("{not json")
    ds = Cityscapes3D(copy, "train", ["3ddet"])  # drop_empty keeps an unreadable JSON, which then fails loudly
    assert str(broken) in _error(ds, ds.ids.index("synthcity_000002_000019"))
    with pytest.raises(DataError, match="available splits"):
        Cityscapes3D(copy, "test", ["semseg"])


def test_check_data_reports_every_problem(copy, capsys):
    label_path = sample_paths(copy, "val", 4)["label_ids"]
    ids = np.asarray(Image.open(label_path)).copy()
    ids[3, 3] = 200
    Image.fromarray(ids).save(label_path)
    json_path = sample_paths(copy, "val", 5)["annotation"]
    data = json.loads(json_path.read_text())
    del data["objects"][0]["3d"]["rotation"]
    json_path.write_text(json.dumps(data))
    code = main(["check-data", "--format", "cityscapes3d", "--root", str(copy), "--split", "val"])
    out = capsys.readouterr().out
    assert code == 1 and str(label_path) in out and "200" in out and str(json_path) in out and "rotation" in out
    ds = Cityscapes3D(copy, "val", ["semseg", "depth", "3ddet"])
    assert ds.check_headers(0) == [] and ds.check_headers(1) == []  # headers only: values are not decoded
    data["imgHeight"] = 7
    json_path.write_text(json.dumps(data))
    assert any(str(json_path) in m and "7x128" in m for m in ds.check_headers(1))


def test_check_data_on_a_clean_tree_and_the_synth_cli(tree, tmp_path, capsys):
    assert main(["check-data", "--format", "cityscapes3d", "--root", str(tree)]) == 0
    assert "OK" in capsys.readouterr().out
    out = tmp_path / "cli"
    assert main(["synth", "--format", "cityscapes3d", "--out", str(out), "--num", "2", "--size", "32", "64"]) == 0
    assert len(Cityscapes3D(out, "val", ["semseg", "depth", "3ddet"])) == 1


def test_cityscapesscripts_reads_our_json_and_gives_the_same_corners(tree, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the package writes eval.log into the working directory on some imports
    annotation = pytest.importorskip("cityscapesscripts.helpers.annotation")
    transform = pytest.importorskip("cityscapesscripts.helpers.box3dImageTransform")
    path = sample_paths(tree, "val", 4)["annotation"]
    cs = annotation.Annotation(objType=annotation.CsObjectType.BBOX3D)
    cs.fromJsonFile(str(path))
    record = Cityscapes3D(tree, "val", ["3ddet"]).load_raw(0)["3ddet"]
    camera = record_camera(record)
    ours = g.sensor_corners(record["center_V"], record["dimensions"], record["rotation"], camera)
    objects = [o for o in cs.objects if isinstance(o, annotation.CsBbox3d)]
    assert len(objects) == len(ours) > 0
    for k, obj in enumerate(objects):
        box = transform.Box3dImageTransform(camera=cs.camera)
        box.initialize_box_from_annotation(obj, coordinate_system=transform.CRS_V)
        theirs = np.array(list(box.get_vertices(coordinate_system=transform.CRS_S).values()))
        np.testing.assert_allclose(ours[k], theirs, atol=1e-9)
        np.testing.assert_allclose(record["box_modal"][k], obj.bbox_2d.bbox_modal)
