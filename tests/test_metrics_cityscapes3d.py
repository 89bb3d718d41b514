"""The Cityscapes-3D detection score (mDS): hand-made scenes whose scores follow from the definition (perfect
predictions, one distance bin, a 2 m shift, a 180 degree yaw, ignore regions, the working confidence, a hand-computed
PR curve, classes without GT, modal vs amodal), the writer -> reader round trip, `taskprompter eval-3d`, and parity
with cityscapesScripts when it is importable."""

from __future__ import annotations

import copy
import json
import sys

import numpy as np
import pytest

from taskprompter.cli import main
from taskprompter.data import geometry as g
from taskprompter.data.cityscapes3d import parse_annotation, record_camera
from taskprompter.data.synthetic import generate
from taskprompter.errors import DataError
from taskprompter.label_sets import CITYSCAPES3D_DET_CLASSES
from taskprompter.metrics import evaluate_cityscapes3d
from taskprompter.metrics.cityscapes3d import (
    evaluate_cityscapes3d_records,
    parse_predictions,
    read_predictions,
    write_cityscapes3d_predictions,
)
from taskprompter.metrics.cityscapes3d_matching import (
    average_precision,
    box_iou,
    box_overlap,
    confidence_thresholds,
    greedy_match,
    yaw_pitch_roll,
)

SIZE = (1024, 2048)  # (H, W): the Cityscapes size, which the official evaluator assumes when it clamps amodal boxes
CAR = (4.2, 1.8, 1.5)  # L W H
DIMS = {"car": CAR, "truck": (7.0, 2.5, 3.2), "bus": (11.0, 2.6, 3.2), "train": (20.0, 3.0, 3.8),
        "motorcycle": (2.1, 0.8, 1.4), "bicycle": (1.8, 0.6, 1.5)}


def _camera(pitch: float = 0.03, position=(1.7, 0.1, 1.22)) -> g.Camera:
    """A Cityscapes-like camera: the real intrinsics, mounted at ``position`` (V) and pitched down by ``pitch``."""
    c, s = np.cos(pitch), np.sin(pitch)
    r = np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])  # V -> C, about the y (left) axis
    t = np.concatenate([r, -r @ np.asarray(position)[:, None]], 1)
    return g.Camera(fx=2262.52, fy=2265.30, u0=1096.98, v0=513.137, baseline=0.209313, sensor_T_ISO_8855=t)


CAMERA = _camera()


def _object(x: float, y: float, name: str = "car", *, yaw: float = 0.0, score: float = 1.0, dims=None,
            modal=None, z: float | None = None) -> dict:
    """An object of the official JSON layout; its amodal box is the 3-D box's projection, its modal box the
    amodal one unless given (xyxy)."""
    dims = DIMS[name] if dims is None else dims
    center = np.array([x, y, dims[2] / 2 if z is None else z])
    q = g.yaw_quaternion(np.array([yaw]))[0]
    amodal = g.amodal_boxes(g.sensor_corners(center[None], np.array([dims]), q[None], CAMERA), CAMERA, SIZE)[0]
    modal = amodal if modal is None else np.asarray(modal, dtype=np.float64)
    return {"2d": {"modal": g.xyxy_to_xywh(modal).tolist(), "amodal": g.xyxy_to_xywh(amodal).tolist()},
            "3d": {"center": center.tolist(), "dimensions": list(dims), "rotation": q.tolist(), "type": name,
                   "format": "CRS_ISO8855"},
            "label": name, "score": score, "instanceId": 26000}


def _gt(objects, ignore=()) -> dict:
    return {"imgWidth": SIZE[1], "imgHeight": SIZE[0], "sensor": CAMERA.to_json(), "objects": objects,
            "ignore": [{"2d": g.xyxy_to_xywh(np.asarray(b, dtype=np.float64)).tolist(), "label": "rider"}
                       for b in ignore]}


def _evaluate(gts, preds, **options) -> dict:
    """Evaluate JSON dicts in memory (through the parsers the file path uses)."""
    return evaluate_cityscapes3d_records([parse_annotation(x) for x in gts],
                                         [None if p is None else parse_predictions({"objects": p}) for p in preds],
                                         **options)


def _scored(objects, score: float = 0.9) -> list[dict]:
    out = copy.deepcopy(objects)
    for o in out:
        o["score"] = score
    return out


SPREAD = [_object(10, -4), _object(30, 0), _object(50, 4)]  # distances 10.8, 30, 50.2 m: bins 10, 30, 50
ONE_BIN = [_object(21, -4), _object(22, 0), _object(23, 4)]  # 21.4, 22, 23.3 m: all in bin 20


# -- the checked cases of swin-cityscapes3d.md section 4 ------------------------------------------------------------
def test_perfect_predictions_over_several_bins_score_one():
    result = _evaluate([_gt(SPREAD)], [_scored(SPREAD)])
    car = result["per_class"]["car"]
    assert result["mDS"] == pytest.approx(1.0) and result["mAP"] == pytest.approx(1.0)
    assert all(car[k] == pytest.approx(1.0) for k in ("AP", "DS", "Center_Dist", "Size_Similarity", "OS_Yaw",
                                                      "OS_Pitch_Roll"))
    assert car["num_gt"] == 3 and car["working_confidence"] == 0.0


def test_true_positives_in_one_bin_give_ds_zero_but_ap_one():
    car = _evaluate([_gt(ONE_BIN)], [_scored(ONE_BIN)])["per_class"]["car"]
    assert car["AP"] == pytest.approx(1.0)
    assert car["DS"] == 0.0 and car["Center_Dist"] == 0.0 and car["OS_Yaw"] == 0.0


def test_a_two_metre_centre_shift_costs_0_02_of_center_dist():
    shifted = _scored(SPREAD)
    for o in shifted:
        o["3d"]["center"][1] += 2.0  # sideways; the 2-D boxes stay, so the matching does not change
    car = _evaluate([_gt(SPREAD)], [shifted])["per_class"]["car"]
    assert car["Center_Dist"] == pytest.approx(0.98)
    assert car["DS"] == pytest.approx(0.995) and car["Size_Similarity"] == pytest.approx(1.0)


def test_a_180_degree_yaw_gives_os_yaw_zero():
    turned = _scored(SPREAD)
    for o in turned:
        o["3d"]["rotation"] = g.yaw_quaternion(np.array([np.pi]))[0].tolist()
    car = _evaluate([_gt(SPREAD)], [turned])["per_class"]["car"]
    assert car["OS_Yaw"] == pytest.approx(0.0, abs=1e-12) and car["OS_Pitch_Roll"] == pytest.approx(1.0)
    assert car["DS"] == pytest.approx(0.75)


def test_size_similarity_is_the_product_of_ratios():
    bigger = _scored(SPREAD)
    for o in bigger:
        o["3d"]["dimensions"] = [CAR[0] * 2, CAR[1], CAR[2] / 2]
    assert _evaluate([_gt(SPREAD)], [bigger])["per_class"]["car"]["Size_Similarity"] == pytest.approx(0.25)


# -- matching, ignore regions, AP, working confidence ---------------------------------------------------------------
def test_iou_and_overlap_use_the_plus_one_pixel_convention():
    a = np.array([[0.0, 0.0, 9.0, 9.0]])  # 10 x 10 pixels
    b = np.array([[0.0, 0.0, 4.0, 9.0], [20.0, 20.0, 30.0, 30.0]])  # 5 x 10, and apart
    np.testing.assert_allclose(box_iou(a, b), [[0.5, 0.0]], atol=1e-9)
    np.testing.assert_allclose(box_overlap(a, b), [[1.0, 0.0]], atol=1e-9)  # b[0] lies wholly inside a


def test_greedy_matching_takes_the_largest_iou_first_not_the_best_assignment():
    rows, cols = greedy_match(np.array([[0.9, 0.8], [0.85, 0.1]]), 0.7)
    assert rows.tolist() == [0] and cols.tolist() == [0]  # an optimal assignment would match both rows
    rows, cols = greedy_match(np.array([[0.7, 0.71]]), 0.7)  # strictly above the threshold
    assert rows.tolist() == [0] and cols.tolist() == [1]


def test_a_prediction_inside_an_ignore_region_is_not_a_false_positive():
    region = [100.0, 100.0, 300.0, 300.0]
    extra = _object(40, 8, score=0.9, modal=[120.0, 120.0, 280.0, 280.0])  # its modal box is inside the region
    preds = [_scored(SPREAD) + [extra]]
    assert _evaluate([_gt(SPREAD, ignore=[region])], preds)["per_class"]["car"]["AP"] == pytest.approx(1.0)
    assert _evaluate([_gt(SPREAD)], preds)["per_class"]["car"]["AP"] == pytest.approx(0.75)  # 3 / 4 at recall 1
    half_in = [extra | {"2d": {"modal": [200.0, 100.0, 200.0, 200.0], "amodal": extra["2d"]["amodal"]}}]
    assert _evaluate([_gt(SPREAD, ignore=[region])], [_scored(SPREAD) + half_in])["per_class"]["car"]["AP"] \
        == pytest.approx(0.75)  # about half inside: not ignored


def test_a_low_score_false_positive_moves_the_working_confidence_above_it():
    clean = _evaluate([_gt(SPREAD)], [_scored(SPREAD)])["per_class"]["car"]
    fp = _object(45, -9, score=0.3)
    noisy = _evaluate([_gt(SPREAD)], [_scored(SPREAD) + [fp]])["per_class"]["car"]
    assert clean["working_confidence"] == 0.0
    assert noisy["working_confidence"] == pytest.approx(0.32)  # the first threshold above 0.3: P = R = 1 there
    assert noisy["AP"] == pytest.approx(1.0) and noisy["DS"] == pytest.approx(1.0)


def test_average_precision_of_hand_computed_curves():
    assert average_precision(np.array([0.5, 1.0]), np.array([1.0, 0.5])) == pytest.approx(0.75)
    assert average_precision(np.array([0.5, 0.5, 0.0]), np.array([0.2, 0.6, 0.0])) == pytest.approx(0.3)
    assert average_precision(np.zeros(51), np.zeros(51)) == 0.0
    # end to end: 4 GT cars; TPs at 0.9, 0.7, 0.5, a FP at 0.8, one car missed. The points (recall, precision):
    # (0.25, 1) above 0.8, (0.25, 0.5) above 0.7, (0.5, 2/3) above 0.5, (0.75, 0.75) below; the precision made
    # non-increasing is 1, 0.75, 0.75 at recalls 0.25, 0.5, 0.75, so AP = 0.25 (1 + 0.75 + 0.75) = 0.625
    four = SPREAD + [_object(70, 0)]
    preds = _scored(four[:3])
    for o, s in zip(preds, (0.9, 0.7, 0.5)):
        o["score"] = s
    result = _evaluate([_gt(four)], [preds + [_object(45, -9, score=0.8)]])["per_class"]["car"]
    assert result["AP"] == pytest.approx(0.625)
    assert result["working_confidence"] == 0.0  # P x R is largest (0.5625) at the lowest thresholds
    assert result["DS"] == pytest.approx(0.625)  # three TPs in three bins, all exact


def test_thresholds_are_the_official_51():
    s = confidence_thresholds(50)
    assert len(s) == 51 and s[0] == 0.0 and s[-1] == pytest.approx(1.0) and s[3] == np.arange(0, 1.01, 0.02)[3]


def test_classes_without_gt_are_left_out_of_the_means():
    truck_fp = _object(45, -9, "truck", score=0.5)
    result = _evaluate([_gt(SPREAD)], [_scored(SPREAD) + [truck_fp]])
    assert result["per_class"]["truck"]["num_gt"] == 0 and result["per_class"]["truck"]["AP"] == 0.0
    assert result["mDS"] == pytest.approx(1.0) and result["mAP"] == pytest.approx(1.0)  # car only, not 1/2
    with_truck = _evaluate([_gt(SPREAD + [_object(45, 9, "truck")])], [_scored(SPREAD)])
    assert with_truck["mAP"] == pytest.approx(0.5)  # a truck GT without a prediction: AP 0, now counted
    assert set(result["per_class"]) == set(CITYSCAPES3D_DET_CLASSES)
    only_car = _evaluate([_gt(SPREAD)], [_scored(SPREAD)], labels=["car"])
    assert list(only_car["per_class"]) == ["car"]
    empty = _evaluate([_gt([])], [[]])
    assert np.isnan(empty["mDS"]) and np.isnan(empty["mAP"])  # no class has GT (the official mean of nothing)


def test_modal_and_amodal_matching_differ_on_an_occluded_car():
    """The car is half hidden: its GT modal box is the left half of the amodal one. The prediction has the exact
    3-D box but claims it fully visible, and carries a nonsense amodal box, which the evaluator recomputes."""
    full = _object(15, 0)
    x, y, w, h = full["2d"]["amodal"]
    gt = [_object(15, 0, modal=[x, y, x + w / 2, y + h])]
    pred = _scored([full])
    pred[0]["2d"]["amodal"] = [0.0, 0.0, 1.0, 1.0]
    modal = _evaluate([_gt(gt)], [pred])["per_class"]["car"]
    amodal = _evaluate([_gt(gt)], [pred], matching="amodal")["per_class"]["car"]
    assert modal["AP"] == 0.0  # IoU of the half box with the full one is about 0.5
    assert amodal["AP"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="matching"):
        _evaluate([_gt(gt)], [pred], matching="visible")


def test_yaw_pitch_roll_of_known_rotations():
    qs = np.array([g.yaw_quaternion(np.array([0.4]))[0], [np.cos(0.1), 0.0, np.sin(0.1), 0.0],
                   [np.cos(0.15), np.sin(0.15), 0.0, 0.0], [2.0, 0.0, 0.0, 0.0]])  # yaw, pitch, roll, unnormalised
    np.testing.assert_allclose(yaw_pitch_roll(qs), [[0.4, 0, 0], [0, 0.2, 0], [0, 0, 0.3], [0, 0, 0]], atol=1e-12)
    # pyquaternion's angles invert R = Rx(roll) Ry(pitch) Rz(yaw) (not the aerospace Rz Ry Rx)
    rng = np.random.default_rng(0)
    angles = rng.uniform([-np.pi, -np.pi / 2 + 0.1, -np.pi], [np.pi, np.pi / 2 - 0.1, np.pi], (20, 3))
    c, s = np.cos(angles), np.sin(angles)
    one, zero = np.ones(20), np.zeros(20)
    rz = np.stack([np.stack([c[:, 0], -s[:, 0], zero], -1), np.stack([s[:, 0], c[:, 0], zero], -1),
                   np.stack([zero, zero, one], -1)], -2)
    ry = np.stack([np.stack([c[:, 1], zero, s[:, 1]], -1), np.stack([zero, one, zero], -1),
                   np.stack([-s[:, 1], zero, c[:, 1]], -1)], -2)
    rx = np.stack([np.stack([one, zero, zero], -1), np.stack([zero, c[:, 2], -s[:, 2]], -1),
                   np.stack([zero, s[:, 2], c[:, 2]], -1)], -2)
    np.testing.assert_allclose(yaw_pitch_roll(g.matrix_to_quaternion(rx @ ry @ rz)), angles, atol=1e-9)


# -- files: writer, reader, pairing, the command line ---------------------------------------------------------------
@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    """A synthetic Cityscapes-3D tree (6 scenes of 128x256) and its GT written back as predictions."""
    base = tmp_path_factory.mktemp("mds")
    root = generate(base / "Cityscapes", format="cityscapes3d", num=6, size=(128, 256), seed=0)
    gt_dir, pred_dir = root / "gtBbox3d", base / "pred"
    for path in sorted(gt_dir.rglob("*gtBbox3d.json")):
        record = parse_annotation(json.loads(path.read_text()))
        detections = {k: record[k] for k in ("label", "center_V", "dimensions", "rotation", "box_modal")}
        detections["score"] = np.linspace(0.95, 0.5, len(record["label"]))
        stem = path.name[: -len("gtBbox3d.json")]
        write_cityscapes3d_predictions(pred_dir / path.parent.name, stem, detections, record_camera(record),
                                       image_size=tuple(record["image_size"]))
    return gt_dir, pred_dir


def test_writer_round_trip_and_official_layout(synthetic, tmp_path):
    gt_dir, pred_dir = synthetic
    gt_path = next(p for p in sorted(gt_dir.rglob("*.json")) if json.loads(p.read_text())["objects"])
    record = parse_annotation(json.loads(gt_path.read_text()))
    written = next(pred_dir.rglob(gt_path.name.replace("gtBbox3d", "leftImg8bit")))
    data = json.loads(written.read_text())
    obj = data["objects"][0]
    assert set(obj) >= {"2d", "3d", "label", "score"} and set(obj["2d"]) == {"modal", "amodal"}
    assert obj["3d"]["format"] == "CRS_ISO8855" and obj["3d"]["type"] == obj["label"]
    back = read_predictions(written)
    for key in ("label", "center_V", "dimensions", "rotation"):
        np.testing.assert_array_equal(back[key], record[key])
    np.testing.assert_allclose(back["box_modal"], record["box_modal"], atol=1e-9)
    np.testing.assert_allclose(back["box_amodal"], record["box_amodal"], atol=1e-6)  # the same projection
    # a sample id without the trailing "_" names the same file; a .json path is used as given
    det = {k: back[k] for k in ("label", "score", "center_V", "dimensions", "rotation", "box_modal")}
    camera = record_camera(record)
    a = write_cityscapes3d_predictions(tmp_path, written.name[: -len("_leftImg8bit.json")], det, camera.to_json(),
                                       image_size=(128, 256))
    assert a.name == written.name and json.loads(a.read_text()) == data
    assert write_cityscapes3d_predictions(tmp_path / "x.json", "ignored", det, camera, image_size=(128, 256)).is_file()
    with pytest.raises(ValueError, match="class ids"):
        write_cityscapes3d_predictions(tmp_path, "a_", det | {"label": det["label"] + 6}, camera, image_size=(1, 1))


def test_files_evaluate_perfectly_in_both_matchings(synthetic):
    gt_dir, pred_dir = synthetic
    for matching in ("modal", "amodal"):
        result = evaluate_cityscapes3d(gt_dir, pred_dir, matching=matching)
        scored = {k: v for k, v in result["per_class"].items() if v["num_gt"]}
        assert all(v["AP"] == pytest.approx(1.0) for v in scored.values()), matching
        assert result["num_images"] == 6 and result["missing_predictions"] == []


def test_a_gt_file_without_predictions_counts_as_an_empty_image(synthetic, tmp_path):
    gt_dir, pred_dir = synthetic
    preds = sorted(pred_dir.rglob("*.json"))
    kept = tmp_path / "pred"
    kept.mkdir()
    dropped = next(p for p in preds if json.loads(p.read_text())["objects"])
    for p in preds:
        if p != dropped:
            (kept / p.name).write_text(p.read_text())
    (kept / "unrelated_file.json").write_text("{}")  # no GT of that name: never read
    result = evaluate_cityscapes3d(gt_dir, kept)
    assert result["missing_predictions"] == [dropped.name[: dropped.name.rfind("_")]]
    assert result["mAP"] < 1.0


def test_cli_prints_json_and_reports_bad_input_in_one_line(synthetic, tmp_path, capsys):
    gt_dir, pred_dir = synthetic
    assert main(["eval-3d", "--gt", str(gt_dir), "--pred", str(pred_dir), "--matching", "amodal"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["matching"] == "amodal" and 0.0 <= result["mDS"] <= 1.0 and "car" in result["per_class"]

    def one_line_error(argv, *needles):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and all(n in err for n in needles), err

    one_line_error(["eval-3d", "--gt", str(tmp_path / "nope"), "--pred", str(pred_dir)], "nope", "does not exist")
    one_line_error(["eval-3d", "--gt", str(tmp_path), "--pred", str(pred_dir)], "no *gtBbox3d.json")
    broken = tmp_path / "broken"
    broken.mkdir()
    for p in pred_dir.rglob("*.json"):
        (broken / p.name).write_text(p.read_text())
    victim = sorted(broken.iterdir())[0]
    victim.write_text('{"objects": [')
    one_line_error(["eval-3d", "--gt", str(gt_dir), "--pred", str(broken)], victim.name, "JSON")
    victim.write_text(json.dumps({"objects": [{"label": "car", "2d": {"amodal": [0, 0, 1, 1]}}]}))
    one_line_error(["eval-3d", "--gt", str(gt_dir), "--pred", str(broken)], victim.name, "objects[0]")
    with pytest.raises(DataError, match="two prediction files"):
        (broken / "sub").mkdir()
        (broken / "sub" / victim.name).write_text("{}")
        evaluate_cityscapes3d(gt_dir, broken)


# -- parity with the official evaluator -----------------------------------------------------------------------------
def _random_scenes(seed: int, num: int = 12) -> tuple[list[dict], list[list[dict]]]:
    """GT scenes with occlusion, truncation, far objects and ignore regions, and noisy predictions with duplicates,
    wrong classes and false positives (some inside ignore regions)."""
    rng = np.random.default_rng(seed)
    names = list(CITYSCAPES3D_DET_CLASSES)
    gts, preds = [], []
    for _ in range(num):
        objects, guesses = [], []
        for _ in range(rng.integers(0, 9)):
            name = names[rng.choice(6, p=[0.5, 0.1, 0.1, 0.05, 0.1, 0.15])]
            x, y = rng.uniform(6, 115), rng.uniform(-12, 12)
            dims = np.array(DIMS[name]) * rng.uniform(0.85, 1.15, 3)
            obj = _object(x, y, name, yaw=rng.uniform(-np.pi, np.pi), dims=tuple(dims))
            bx, by, bw, bh = obj["2d"]["amodal"]
            if rng.random() < 0.4:  # occluded: a part of the amodal box is visible
                obj["2d"]["modal"] = [bx, by, bw * rng.uniform(0.3, 1.0), bh * rng.uniform(0.5, 1.0)]
            objects.append(obj)
            if rng.random() < 0.8:
                guess = copy.deepcopy(obj)
                noise = rng.normal(0, [0.02 * x, 0.005 * x, 0.05])  # depth errors grow with the distance
                guess["3d"]["center"] = (np.array(obj["3d"]["center"]) + noise).tolist()
                guess["3d"]["dimensions"] = (dims * rng.uniform(0.9, 1.1, 3)).tolist()
                turn = g.quaternion_to_matrix(np.array(obj["3d"]["rotation"])) @ g.quaternion_to_matrix(
                    np.array([1.0, *rng.normal(0, 0.03, 2), rng.normal(0, 0.15)]))
                guess["3d"]["rotation"] = g.matrix_to_quaternion(turn).tolist()
                mx, my, mw, mh = obj["2d"]["modal"]
                guess["2d"]["modal"] = (np.array([mx, my, mw, mh]) + rng.normal(0, 0.06 * max(mw, mh, 1), 4)).tolist()
                guess["score"] = float(rng.uniform(0.05, 1.0))
                if rng.random() < 0.1:
                    guess["label"] = names[rng.integers(6)]
                if rng.random() < 0.1:  # no modal box: the (stale) amodal one stands in for it
                    del guess["2d"]["modal"]
                guesses.append(guess)
                if rng.random() < 0.15:  # a duplicate with a lower score
                    guesses.append(copy.deepcopy(guess) | {"score": guess["score"] * 0.5})
        ignore = []
        for _ in range(rng.integers(0, 3)):
            x0, y0 = rng.uniform(0, 1800), rng.uniform(0, 800)
            ignore.append([x0, y0, x0 + rng.uniform(50, 250), y0 + rng.uniform(50, 200)])
        for _ in range(rng.integers(0, 4)):  # false positives, some of them inside an ignore region
            fp = _object(rng.uniform(8, 80), rng.uniform(-10, 10), names[rng.integers(6)], score=float(rng.random()))
            if ignore and rng.random() < 0.5:
                x0, y0, x1, y1 = ignore[rng.integers(len(ignore))]
                fp["2d"]["modal"] = [x0 + 5, y0 + 5, (x1 - x0) * 0.8, (y1 - y0) * 0.8]
            guesses.append(fp)
        if rng.random() < 0.3:  # a box that straddles the camera plane: its amodal box is clipped at z_S = 1 cm
            guesses.append(_object(rng.uniform(-1, 3), rng.uniform(-3, 3), score=float(rng.random())))
        gts.append(_gt(objects, ignore))
        preds.append(guesses)
    return gts, preds


def _official(tmp_path, gts, preds, matching: str) -> dict:
    """cityscapesScripts' evaluator on the same scenes, as files (imported in a temporary working directory: it
    writes eval.log there on import)."""
    ev = pytest.importorskip("cityscapesscripts.evaluation.evalObjectDetection3d")
    helpers = pytest.importorskip("cityscapesscripts.evaluation.objectDetectionHelpers")
    gt_dir, pred_dir, out = tmp_path / "gt", tmp_path / "pred", tmp_path / "out"
    for d in (gt_dir, pred_dir, out):
        d.mkdir()
    for i, (gt, pred) in enumerate(zip(gts, preds)):
        (gt_dir / f"city_{i:06d}_000019_gtBbox3d.json").write_text(json.dumps(gt))
        (pred_dir / f"city_{i:06d}_000019_leftImg8bit.json").write_text(json.dumps({"objects": pred}))
    method = helpers.MATCHING_MODAL if matching == "modal" else helpers.MATCHING_AMODAL
    params = helpers.EvaluationParameters(list(CITYSCAPES3D_DET_CLASSES), matching_method=method)
    ev.evaluate3dObjectDetection(str(gt_dir), str(pred_dir), str(out), params, plot=False)
    return json.loads((out / "results.json").read_text())


@pytest.mark.parametrize("matching", ["modal", "amodal"])
def test_parity_with_cityscapesscripts(matching, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["pytest"])  # coloredlogs and tqdm look at the command line
    gts, preds = _random_scenes(seed=3)
    theirs = _official(tmp_path, gts, preds, matching)
    ours = _evaluate(gts, preds, matching=matching)
    assert ours["mDS"] == pytest.approx(theirs["mDetection_Score"], abs=1e-9)
    assert ours["mAP"] == pytest.approx(theirs["mAP"], abs=1e-9)
    for name, c in ours["per_class"].items():
        assert c["AP"] == pytest.approx(theirs["AP"][name]["auc"], abs=1e-9), name
        assert c["DS"] == pytest.approx(theirs["Detection_Score"][name], abs=1e-9), name
        assert c["working_confidence"] == theirs["working_confidence"][name], name
        for key in ("Center_Dist", "Size_Similarity", "OS_Yaw", "OS_Pitch_Roll"):
            assert c[key] == pytest.approx(theirs[key][name]["auc"], abs=1e-9), (name, key)
    assert ours["mDS"] > 0.05  # the scenes exercise the TP metrics, not only zeros
