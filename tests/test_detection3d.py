"""Monocular 3-D detection of the Swin TaskPrompter (model/swin/detection; swin-cityscapes3d.md section 3): the
released neck/head size and parameter names, DCNv2 with grid_sample, targets by hand, the loss terms against hand
formulas, images without objects, gradients everywhere, exact rotated BEV IoU against a polygon-clipping reference,
greedy NMS against brute force, oracle outputs decoding back to the ground truth, the released checkpoint, and the
Swin model training the three tasks."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from taskprompter.data.cityscapes3d import Cityscapes3D, parse_annotation
from taskprompter.data.geometry import Camera, quaternion_to_matrix, sensor_to_vehicle, unproject, yaw_quaternion
from taskprompter.data.synthetic import generate
from taskprompter.errors import CheckpointError
from taskprompter.label_sets import CITYSCAPES3D_DET_CLASSES
from taskprompter.losses import MultiTaskLoss
from taskprompter.model.build import build_model
from taskprompter.model.swin.detection import DetectionConfig, DetectionOutputs, Detector3D
from taskprompter.model.swin.detection.dcn import ModulatedDeformConv2d, modulated_deform_conv2d
from taskprompter.model.swin.detection.head import activate
from taskprompter.model.swin.detection.losses import detection_loss, sigmoid_focal_loss, smooth_l1
from taskprompter.model.swin.detection.nms import bev_corners, bev_iou, multiclass_nms, nms_rotated
from taskprompter.model.swin.detection.targets import all_points, direction_bins, image_targets, level_points
from taskprompter.model.swin.released import load_official_checkpoint, to_released_state_dict

SIZE = (128, 256)  # the model input of the tests
STRIDES = [8.0, 16.0, 32.0, 32.0, 64.0]  # resize_ratio 1
LEVELS = [(16, 32), (8, 16), (4, 8), (4, 8), (2, 4)]  # the five levels' maps for a 128 x 256 input
TASKS3 = {"semseg": 19, "depth": 1, "3ddet": 6}


def small_detector(**options) -> Detector3D:
    torch.manual_seed(options.pop("seed", 0))
    return Detector3D(in_channels=8, channels=32, strides=STRIDES, input_size=SIZE, **options)


def features(batch: int = 1, seed: int = 0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, 8, h, w, generator=gen) for h, w in LEVELS[:4]]


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("cs3d") / "Cityscapes", format="cityscapes3d", num=4, size=SIZE, seed=3)


def street_camera() -> Camera:
    """A Cityscapes-like camera for 1024 x 2048 images, pitched down by 2 degrees."""
    p = math.radians(2.0)
    rot = np.array([[math.cos(p), 0.0, math.sin(p)], [0.0, 1.0, 0.0], [-math.sin(p), 0.0, math.cos(p)]])
    return Camera(fx=2262.5, fy=2265.3, u0=1097.0, v0=513.1, baseline=0.209,
                  sensor_T_ISO_8855=np.concatenate([rot, [[-1.7], [0.1], [1.2]]], axis=1))


def hand_record(euler: str = "fixed") -> dict:
    """Five objects on a 1024 x 2048 image (8 x the model input: strides 64 ... 512) whose modal boxes are sized
    so that every level gets positives: (projected centre u, v, depth, half size of the modal box, yaw)."""
    cam = street_camera()
    objects = []
    for i, (u, v, z, half, yaw) in enumerate([(300, 300, 12.0, 40, 0.3), (1000, 300, 20.0, 120, 2.0),
                                              (1700, 300, 28.0, 250, -1.0), (600, 700, 36.0, 500, -2.8),
                                              (1500, 800, 44.0, 900, 1.2)]):
        center_V = sensor_to_vehicle(unproject(np.array([u, v, z], dtype=float), cam), cam)
        modal = [u - half, v - half, 2 * half, 2 * half]  # xywh, may leave the image: only numbers here
        objects.append({"label": CITYSCAPES3D_DET_CLASSES[i], "2d": {"modal": modal, "amodal": modal},
                        "3d": {"center": center_V.tolist(), "dimensions": [4.0 + i, 1.8, 1.5 + 0.1 * i],
                               "rotation": yaw_quaternion(np.array([yaw]))[0].tolist()}})
    data = {"imgWidth": 2048, "imgHeight": 1024, "sensor": cam.to_json(), "objects": objects, "ignore": []}
    return parse_annotation(data, euler=euler)


def empty_record() -> dict:
    rec = hand_record()
    return {k: (v[:0] if k in ("label", "box_modal", "center_I", "size_S", "angles") else v) for k, v in rec.items()}


# ------------------------------------------------------------------------------------------------ size and names


def released_head_keys() -> set[str]:
    """The ``heads.3ddet.*`` names of a released checkpoint, written from ``det_head.py`` / ``fpn.py`` with
    ``det_head_params.py``: mmcv ConvModule = conv (+ gn), conv_bias=True, the towers' last conv DCNv2
    (``conv_offset``), one conv per branch except cls (two), four Scales per level."""
    keys: set[str] = set()

    def module(prefix: str, gn: bool = True, dcn: bool = False) -> None:
        keys.update({f"{prefix}.conv.weight", f"{prefix}.conv.bias"})
        if gn:
            keys.update({f"{prefix}.gn.weight", f"{prefix}.gn.bias"})
        if dcn:
            keys.update({f"{prefix}.conv.conv_offset.weight", f"{prefix}.conv.conv_offset.bias"})

    for i in range(4):
        module(f"neck.lateral_convs.{i}", gn=False)
    for i in range(5):
        module(f"neck.fpn_convs.{i}", gn=False)
    for tower in ("cls_convs", "reg_convs"):
        for i in range(3):
            module(f"{tower}.{i}", dcn=i == 2)
    for i in range(2):
        module(f"conv_cls_prev.{i}")
    for g in range(5):
        module(f"conv_reg_prevs.{g}.0")
        keys.update({f"conv_regs.{g}.weight", f"conv_regs.{g}.bias"})
    for name in ("dir_cls", "centerness"):
        module(f"conv_{name}_prev.0")
        keys.update({f"conv_{name}.weight", f"conv_{name}.bias"})
    keys.update({"conv_cls.weight", "conv_cls.bias"})
    keys.update(f"scales.{level}.{k}.scale" for level in range(5) for k in range(4))
    return keys


def test_released_neck_and_head_sizes_and_names_on_the_meta_device():
    """swin-cityscapes3d.md 1.6: FPN 3.41 M + FCOS3D head with the DCN offsets 8.69 M at f = 450."""
    with torch.device("meta"):
        det = Detector3D(in_channels=450)
    neck = sum(p.numel() for n, p in det.named_parameters() if n.startswith("neck."))
    head = sum(p.numel() for n, p in det.named_parameters() if not n.startswith("neck."))
    assert neck == 4 * (450 * 256 + 256) + 5 * (256 * 256 * 9 + 256) == 3_412_224
    assert head == 8_693_988
    state = det.state_dict()
    assert set(state) == released_head_keys()
    assert state["scales.4.3.scale"].shape == () and state["conv_dir_cls.weight"].shape == (6, 256, 1, 1)
    assert state["cls_convs.2.conv.conv_offset.weight"].shape == (27, 256, 3, 3)
    assert state["conv_cls_prev.1.conv.weight"].shape == (128, 256, 3, 3)
    plain = set(small_detector(deformable=False).state_dict())
    assert not any("conv_offset" in k for k in plain)


def test_initialisation_is_the_released_one():
    det = small_detector()
    prior = -math.log(99)
    assert torch.allclose(det.conv_cls.bias, torch.full((6,), prior))
    assert torch.allclose(det.conv_dir_cls.bias, torch.full((6,), prior))
    assert det.conv_centerness.bias.abs().max() == 0 and det.conv_regs[2].bias.abs().max() == 0
    assert abs(det.conv_reg_prevs[0][0].conv.weight.std().item() - 0.01) < 0.002  # normal(0, 0.01)
    dcn = det.reg_convs[2].conv
    assert dcn.conv_offset.weight.abs().max() == 0 and dcn.conv_offset.bias.abs().max() == 0
    bound = 1 / math.sqrt(32 * 9)
    assert dcn.weight.abs().max() <= bound and dcn.weight.std() > 0.3 * bound  # mmcv's uniform(+-1/sqrt(n))
    fpn = det.neck.fpn_convs[0].conv.weight  # Kaiming normal, fan_out
    assert abs(fpn.std().item() - math.sqrt(2 / (32 * 9))) < 0.02 and det.neck.fpn_convs[0].conv.bias.abs().max() == 0
    assert all(s.scale.item() == 1.0 for level in det.scales for s in level)


# ------------------------------------------------------------------------------------------------ DCNv2


@pytest.mark.parametrize("stride", [1, 2])
def test_dcn_at_init_is_half_the_plain_conv(stride):
    torch.manual_seed(0)
    dcn = ModulatedDeformConv2d(4, 5, 3, stride=stride, padding=1)
    with torch.no_grad():
        dcn.bias.normal_()
    x = torch.randn(2, 4, 7, 9)
    expected = 0.5 * F.conv2d(x, dcn.weight, None, stride=stride, padding=1) + dcn.bias[:, None, None]
    torch.testing.assert_close(dcn(x), expected, atol=1e-5, rtol=1e-5)  # offsets 0, masks sigmoid(0) = 0.5


def test_dcn_with_integer_offsets_is_a_shifted_conv():
    torch.manual_seed(0)
    x, w = torch.randn(1, 3, 6, 8), torch.randn(4, 3, 3, 3)
    dy, dx = 2, -1
    offset = torch.tensor([float(dy), float(dx)]).repeat(9)[None, :, None, None].expand(1, 18, 6, 8)
    ones = torch.ones(1, 9, 6, 8)
    padded = F.pad(x, (4, 4, 4, 4))  # x'(i, j) = x(i + dy, j + dx) on rows -1..6 and columns -1..8, zero outside x
    shifted = padded[..., 3 + dy: 3 + dy + 8, 3 + dx: 3 + dx + 10]
    out = modulated_deform_conv2d(x, offset, ones, w, padding=1)
    torch.testing.assert_close(out, F.conv2d(shifted, w), atol=1e-5, rtol=1e-5)
    moved = torch.zeros(1, 18, 6, 8)
    moved[:, 0:2] = 1.0  # tap 0 (top-left) moved by (+1, +1): it reads the centre pixel
    w2 = w.clone()
    w2[..., 1, 1] += w[..., 0, 0]
    w2[..., 0, 0] = 0
    out = modulated_deform_conv2d(x, moved, ones, w, padding=1)
    torch.testing.assert_close(out, F.conv2d(x, w2, padding=1), atol=1e-5, rtol=1e-5)


def test_dcn_gradients_are_correct_at_fractional_offsets():
    torch.manual_seed(0)
    x = torch.randn(1, 2, 4, 5, dtype=torch.float64, requires_grad=True)
    offset = (torch.rand(1, 18, 4, 5, dtype=torch.float64) * 3 - 1.5).requires_grad_()
    mask = torch.rand(1, 9, 4, 5, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda *a: modulated_deform_conv2d(*a, padding=1), (x, offset, mask, w))


def test_dcn_equals_torchvision_on_random_offsets():
    ops = pytest.importorskip("torchvision.ops")
    torch.manual_seed(0)
    x, w, b = torch.randn(2, 4, 7, 9), torch.randn(5, 4, 3, 3), torch.randn(5)
    offset, mask = torch.randn(2, 18, 7, 9) * 2, torch.rand(2, 9, 7, 9)
    ours = modulated_deform_conv2d(x, offset, mask, w, b, padding=1)
    torch.testing.assert_close(ours, ops.deform_conv2d(x, offset, w, b, padding=1, mask=mask), atol=1e-4, rtol=1e-4)


# ------------------------------------------------------------------------------------------------ targets


def test_points_use_the_float_strides_and_floor_division():
    p = level_points((2, 3), 32 / 3)
    assert torch.allclose(p[:, 0], torch.tensor([0, 1, 2, 0, 1, 2]) * (32 / 3) + 5.0)  # 10.67 // 2 = 5
    assert torch.allclose(p[:, 1], torch.tensor([0, 0, 0, 1, 1, 1]) * (32 / 3) + 5.0)
    assert level_points((1, 1), 64 / 0.75)[0, 0] == 42.0


def test_targets_by_hand():
    """One level of stride 10, points at x, y in {5, 15, 25}; radius 1.5 -> a square of +-15 (strict). A (class 0)
    at u = 10 reaches x = 5, 15; B (class 3) at u = 20 reaches x = 15, 25; x = 15 is a tie -> A (first). C (class
    5) is nearer there but its modal box is out of the regress range."""
    cfg = DetectionConfig(num_classes=6, strides=(10.0,), regress_ranges=((-1.0, 100.0),))
    points, stride, level = all_points([(3, 3)], cfg.strides)
    rec = {"label": torch.tensor([0, 3, 5]), "center_I": torch.tensor([[10.0, 15, 5], [20, 15, 7], [15, 15, 9]]),
           "box_modal": torch.tensor([[0.0, 0, 30, 30], [0, 0, 30, 30], [-500, 0, 500, 30]]),
           "size_S": torch.tensor([[4.0, 2, 1.5], [5, 2.5, 2], [6, 3, 3]]),
           "angles": torch.tensor([[0.1, -0.2, 3.0], [0.0, 0.3, -1.0], [0, 0, 0]])}
    t = image_targets(points, stride, level, rec, cfg)
    assert t.labels.tolist() == [0, 0, 3] * 3
    k = 5  # point (25, 15) -> B
    torch.testing.assert_close(t.bbox[k], torch.tensor([0.5, 0, 7, 5, 2.5, 2, 0, 0.3, -1, 2.5, 1.5, 0.5, 1.5]))
    torch.testing.assert_close(t.centerness[k], torch.tensor(math.exp(-2.5 * 5 / (1.414 * 15))))
    k = 0  # point (5, 5) -> A: offset (-0.5, -1), ltrb (5, 5, 25, 25) / 10
    torch.testing.assert_close(t.bbox[k], torch.tensor([-0.5, -1, 5, 4, 2, 1.5, 0.1, -0.2, 3.0, 0.5, 0.5, 2.5, 2.5]))
    torch.testing.assert_close(t.centerness[k], torch.tensor(math.exp(-2.5 * math.sqrt(125) / (1.414 * 15))))
    alone = image_targets(points, stride, level, {k: v[:1] for k, v in rec.items()}, cfg)
    assert alone.labels.tolist() == [0, 0, 6] * 3  # x = 25 lies exactly on A's square: outside (strict)
    narrow = DetectionConfig(num_classes=6, strides=(10.0,), regress_ranges=((-1.0, 20.0),))
    t = image_targets(points, stride, level, rec, narrow)  # max(l, t, r, b) <= 20 only at x, y = 15
    assert t.labels.tolist() == [6, 6, 6, 6, 0, 6, 6, 6, 6]


def test_direction_bins():
    angles = torch.tensor([[0.1, -0.1, math.pi + 0.1], [-math.pi + 0.1, 3.0, -3.0]])
    assert direction_bins(angles).tolist() == [[0, 1, 1], [1, 0, 1]]


# ------------------------------------------------------------------------------------------------ losses


def test_focal_and_smooth_l1_equal_hand_formulas():
    x = torch.tensor([[2.0, -1.0, 0.5], [0.3, -0.2, 1.5]])
    got = sigmoid_focal_loss(x, torch.tensor([1, 3]), gamma=2.0, alpha=0.25)  # row 2: background (K = 3)

    def fl(v: float, positive: bool) -> float:
        p = 1 / (1 + math.exp(-v))
        return -0.25 * (1 - p) ** 2 * math.log(p) if positive else -0.75 * p ** 2 * math.log(1 - p)
    want = [[fl(2.0, False), fl(-1.0, True), fl(0.5, False)], [fl(0.3, False), fl(-0.2, False), fl(1.5, False)]]
    torch.testing.assert_close(got, torch.tensor(want))
    got = smooth_l1(torch.tensor([0.05, 0.5, -2.0]), torch.zeros(3), 1 / 9)
    torch.testing.assert_close(got, torch.tensor([0.5 * 0.05 ** 2 * 9, 0.5 - 1 / 18, 2.0 - 1 / 18]))


def test_loss_terms_equal_hand_formulas_and_an_empty_image_adds_nothing():
    """2 x 2 points of stride 10 around one object at (10, 10): all four are positives of class 1 with offsets
    (+-0.5, +-0.5); a second image without objects is removed (normaliser 4 + 1) but stays in the graph."""
    cfg = DetectionConfig(num_classes=3, strides=(10.0,), regress_ranges=((-1.0, 1e8),))
    gen = torch.Generator().manual_seed(0)
    cls, dirs, ctr = (torch.randn(2, c, 2, 2, generator=gen, requires_grad=True) for c in (3, 6, 1))
    bbox = (torch.rand(2, 13, 2, 2, generator=gen) * 3).requires_grad_()
    rec = {"label": torch.tensor([1]), "center_I": torch.tensor([[10.0, 10.0, 8.0]]),
           "box_modal": torch.tensor([[0.0, 0.0, 20.0, 20.0]]), "size_S": torch.tensor([[4.0, 2.0, 1.5]]),
           "angles": torch.tensor([[0.3, -2.0, 2.5]])}
    empty = {k: v[:0] for k, v in rec.items()}
    losses = detection_loss(DetectionOutputs([cls], [bbox], [dirs], [ctr], cfg), [rec, empty])

    def sl1(d: float) -> float:
        return 0.5 * d * d * 9 if abs(d) < 1 / 9 else abs(d) - 1 / 18

    def sig(v: float) -> float:
        return 1 / (1 + math.exp(-v))

    pts = [(5, 5), (15, 5), (5, 15), (15, 15)]  # row-major
    want = dict.fromkeys(("cls", "offset", "depth", "size", "rotation", "ltrb", "dir", "centerness"), 0.0)
    angles, bins = [0.3, -2.0, 2.5], [0, 1, 0]  # -2.0 -> 2 pi - 2.0 > pi
    for k, (px, py) in enumerate(pts):
        i, j = divmod(k, 2)
        p = [bbox[0, c, i, j].item() for c in range(13)]
        t = [(px - 10) / 10, (py - 10) / 10, 8.0, 4.0, 2.0, 1.5, *angles, px / 10, py / 10, (20 - px) / 10,
             (20 - py) / 10]
        for c in range(3):
            v = cls[0, c, i, j].item()
            q = sig(v)
            want["cls"] += -0.25 * (1 - q) ** 2 * math.log(q) if c == 1 else -0.75 * q ** 2 * math.log(1 - q)
        want["offset"] += sl1(p[0] - t[0]) + sl1(p[1] - t[1])
        want["depth"] += 0.2 * sl1(p[2] - t[2])
        want["size"] += sum(sl1(p[c] - t[c]) for c in range(3, 6))
        want["rotation"] += sum(5 * sl1(math.sin(p[c]) * math.cos(t[c]) - math.cos(p[c]) * math.sin(t[c]))
                                for c in range(6, 9))
        want["ltrb"] += sum(sl1(p[c] - t[c]) for c in range(9, 13))
        for a in range(3):
            z = [dirs[0, 2 * a, i, j].item(), dirs[0, 2 * a + 1, i, j].item()]
            want["dir"] += -z[bins[a]] + math.log(math.exp(z[0]) + math.exp(z[1]))
        tc = math.exp(-2.5 * math.sqrt(50) / (1.414 * 15))
        q = sig(ctr[0, 0, i, j].item())
        want["centerness"] += -(tc * math.log(q) + (1 - tc) * math.log(1 - q))
    want = {k: v / 4 for k, v in want.items()}
    want["cls"] = 5 * want["cls"] * 4 / (4 + 1)
    for name, value in want.items():
        assert losses[name].item() == pytest.approx(value, rel=1e-5), name
    assert losses["total"].item() == pytest.approx(sum(want.values()), rel=1e-5)
    losses["total"].backward()
    for t in (cls, bbox, dirs, ctr):  # the empty image: in the graph, gradient exactly 0
        assert t.grad is not None and t.grad[1].abs().max() == 0 and t.grad[0].abs().max() > 0
    nothing = detection_loss(DetectionOutputs([cls], [bbox], [dirs], [ctr], cfg), [empty, empty])
    assert nothing["total"].item() == 0 and nothing["total"].requires_grad


def test_every_detection_parameter_gets_a_gradient_and_an_empty_image_is_harmless():
    det = small_detector()
    rec = {k: torch.as_tensor(v) for k, v in hand_record().items()}
    cfg = det.config
    points, stride, level = all_points(LEVELS, [s * 8 for s in cfg.strides])
    t = image_targets(points, stride, level, rec, cfg)
    assert [int((t.labels[level == lv] < 6).sum()) > 0 for lv in range(5)] == [True] * 5  # positives everywhere
    out = det(features(2))
    losses = det.loss(out, [rec, empty_record()])
    assert all(torch.isfinite(v) for v in losses.values())
    losses["total"].backward()
    dead = [n for n, p in det.named_parameters() if p.grad is None or p.grad.abs().max() == 0]
    assert not dead, dead
    alone = det.loss(det([f[:1] for f in features(2)]), [rec])  # GroupNorm is per image
    for name in losses:
        assert losses[name].item() == pytest.approx(alone[name].item(), rel=1e-5, abs=1e-7), name


# ------------------------------------------------------------------------------------------------ rotated IoU / NMS


def ref_corners(box: np.ndarray) -> np.ndarray:
    """The kernel's corners, written out separately: (x1,y1), (x2,y1), (x2,y2), (x1,y2) turned about the centre by
    (dx, dy) -> (dx cos t + dy sin t, -dx sin t + dy cos t)."""
    x1, y1, x2, y2, t = box
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    c, s = math.cos(t), math.sin(t)
    return np.array([[(x - cx) * c + (y - cy) * s + cx, -(x - cx) * s + (y - cy) * c + cy]
                     for x, y in ((x1, y1), (x2, y1), (x2, y2), (x1, y2))])


def polygon_area(poly) -> float:
    if len(poly) < 3:
        return 0.0
    p = np.asarray(poly)
    return 0.5 * float(np.dot(p[:, 0], np.roll(p[:, 1], -1)) - np.dot(p[:, 1], np.roll(p[:, 0], -1)))


def clip_polygon(subject, clipper) -> list:
    """Sutherland-Hodgman: ``subject`` clipped by the convex, counter-clockwise ``clipper``."""
    def side(a, b, p):
        return (b[0] - a[0]) * (p[1] - a[1]) - (b[1] - a[1]) * (p[0] - a[0])

    def cut(p, q, a, b):
        sp, sq = side(a, b, p), side(a, b, q)
        return p + (q - p) * (sp / (sp - sq))

    out = [np.asarray(p, dtype=float) for p in subject]
    for k in range(len(clipper)):
        a, b = clipper[k], clipper[(k + 1) % len(clipper)]
        pts, out = out, []
        for i, q in enumerate(pts):
            p = pts[i - 1]
            if side(a, b, q) >= 0:
                if side(a, b, p) < 0:
                    out.append(cut(p, q, a, b))
                out.append(q)
            elif side(a, b, p) >= 0:
                out.append(cut(p, q, a, b))
        if not out:
            break
    return out


def ref_iou(a: np.ndarray, b: np.ndarray) -> float:
    pa, pb = ref_corners(a), ref_corners(b)
    pa = pa if polygon_area(pa) > 0 else pa[::-1]
    pb = pb if polygon_area(pb) > 0 else pb[::-1]
    inter = abs(polygon_area(clip_polygon(pa, pb)))
    return inter / (polygon_area(pa) + polygon_area(pb) - inter)


def random_boxes(n: int, seed: int, spread: float = 6.0) -> torch.Tensor:
    gen = np.random.default_rng(seed)
    c, size = gen.uniform(0, spread, (n, 2)), gen.uniform(0.5, 4.0, (n, 2))
    theta = gen.uniform(-math.pi, math.pi, (n, 1))
    return torch.tensor(np.concatenate([c - size / 2, c + size / 2, theta], 1))


def test_corner_convention_of_the_kernel():
    got = bev_corners(torch.tensor([[-1.0, -0.5, 1.0, 0.5, math.pi / 2]]))[0]
    torch.testing.assert_close(got, torch.tensor([[-0.5, 1.0], [-0.5, -1.0], [0.5, -1.0], [0.5, 1.0]]),
                               atol=1e-6, rtol=0)


def test_rotated_iou_by_hand():
    boxes = torch.tensor([[0.0, 0, 2, 2, 0], [1, 1, 3, 3, 0], [0, 0, 4, 4, 0], [1, 1, 2, 2, 0], [10, 10, 11, 11, 0.3],
                          [0, 0, 2, 1, math.pi / 2], [0.5, -0.5, 1.5, 1.5, 0], [-1, -1, 1, 1, 0],
                          [-1, -1, 1, 1, math.pi / 4]], dtype=torch.float64)
    iou = bev_iou(boxes, boxes)
    assert iou[0, 1].item() == pytest.approx(1 / 7)
    assert iou[2, 3].item() == pytest.approx(1 / 16)  # contained
    assert iou[0, 4].item() == 0.0  # far apart
    assert iou[5, 6].item() == pytest.approx(1.0)  # a 2 x 1 box turned by 90 degrees is the 1 x 2 one
    assert iou[7, 8].item() == pytest.approx(1 / math.sqrt(2))  # a square and itself at 45 degrees: an octagon
    torch.testing.assert_close(iou.diagonal(), torch.ones(9, dtype=torch.float64))
    torch.testing.assert_close(iou, iou.T)


def test_rotated_iou_equals_polygon_clipping_on_random_boxes():
    a, b = random_boxes(40, 0), random_boxes(30, 1)
    got = bev_iou(a, b).numpy()
    want = np.array([[ref_iou(x, y) for y in b.numpy()] for x in a.numpy()])
    assert (want > 0.05).sum() > 50  # many real overlaps
    np.testing.assert_allclose(got, want, atol=1e-6)
    torch.testing.assert_close(bev_iou(a.float(), b.float()), torch.tensor(want, dtype=torch.float32), atol=2e-5,
                               rtol=0)


def test_greedy_nms_equals_a_brute_force_loop():
    boxes = random_boxes(120, 2, spread=8.0)
    scores = torch.tensor(np.random.default_rng(3).uniform(0, 1, 120))
    iou = bev_iou(boxes, boxes)
    order = sorted(range(120), key=lambda i: -scores[i].item())
    want = []
    for i in order:  # keep a box unless a kept (higher-scoring) box overlaps it by more than the threshold
        if all(iou[i, k] <= 0.3 for k in want):
            want.append(i)
    for block in (4, 256):
        assert nms_rotated(boxes, scores, 0.3, block=block).tolist() == want
    assert 10 < len(want) < 100
    pair = torch.tensor([[0.0, 0, 2, 1, 0], [0, 0, 1, 1, 0]])  # IoU exactly 0.5: suppression is strict
    assert nms_rotated(pair, torch.tensor([0.9, 0.8]), 0.5).tolist() == [0, 1]
    assert nms_rotated(pair, torch.tensor([0.9, 0.8]), 0.49).tolist() == [0]


def test_multiclass_nms_is_per_class_with_a_score_threshold_and_a_cap():
    box = torch.tensor([[0.0, 0, 2, 1, 0]])
    boxes = box.repeat(4, 1)
    scores = torch.tensor([[0.9, 0.0], [0.8, 0.7], [0.04, 0.06], [0.05, 0.0]])
    index, labels, kept = multiclass_nms(boxes, scores, score_threshold=0.05, iou_threshold=0.3, max_num=200)
    assert index.tolist() == [0, 1] and labels.tolist() == [0, 1]  # 0.05 is not > 0.05
    torch.testing.assert_close(kept, torch.tensor([0.9, 0.7]))
    index, labels, kept = multiclass_nms(boxes, scores, score_threshold=0.05, iou_threshold=0.3, max_num=1)
    assert index.tolist() == [0] and labels.tolist() == [0]


# ------------------------------------------------------------------------------------------------ oracle decoding


def oracle_outputs(det: Detector3D, records: list[dict], scale: float) -> DetectionOutputs:
    """Outputs that reproduce the ground truth: class +30 / -30, centerness logit(target), direction bins from the
    targets, and the regression convs' values inverted through the level's Scales (``activate`` is the head's).
    Positives outside their modal box cannot be represented by ReLU(ltrb) and are given class -30."""
    cfg = det.config
    points, stride, level = all_points(LEVELS, [s * scale for s in cfg.strides], dtype=torch.float64)
    maps: list[list[list[torch.Tensor]]] = [[[] for _ in LEVELS] for _ in range(4)]
    for rec in records:
        t = image_targets(points, stride, level, {k: torch.as_tensor(v) for k, v in rec.items()}, cfg)
        usable = (t.labels < cfg.num_classes) & (t.bbox[:, 9:13] >= 0).all(1)
        cls = torch.full((len(points), cfg.num_classes), -30.0, dtype=torch.float64)
        cls[usable, t.labels[usable]] = 30.0
        ctr = torch.logit(t.centerness.clamp(1e-6, 1 - 1e-6))[:, None]
        dirs = (F.one_hot(direction_bins(t.bbox[:, 6:9]), 2).to(torch.float64) * 20 - 10).flatten(1)  # (P, 6)
        for lv, (h, w) in enumerate(LEVELS):
            sel = level == lv
            tb = t.bbox[sel]
            s0, s1, s2, s3 = (sc.scale.double().detach() for sc in det.scales[lv])
            raw = torch.cat([tb[:, :2] / s0, tb[:, 2:3].clamp_min(1e-3).log() / s1,
                             (tb[:, 3:6] - 1e-6).clamp_min(1e-3).log() / s2, tb[:, 6:9], tb[:, 9:13] / s3], 1)
            bbox = activate(raw.T.reshape(1, 13, h, w), det.scales[lv]).detach()
            for k, m in enumerate((cls[sel], bbox, dirs[sel], ctr[sel])):
                maps[k][lv].append(m if k == 1 else m.T.reshape(1, -1, h, w))
    cls, bbox, dirs, ctr = ([torch.cat(per_image) for per_image in group] for group in maps)
    return DetectionOutputs(cls, bbox, dirs, ctr, cfg)


def owned_objects(det: Detector3D, rec: dict, scale: float) -> list[int]:
    """The objects that own a usable positive point (the ones the oracle can reproduce)."""
    points, stride, level = all_points(LEVELS, [s * scale for s in det.config.strides], dtype=torch.float64)
    t = image_targets(points, stride, level, {k: torch.as_tensor(v) for k, v in rec.items()}, det.config)
    usable = (t.labels < 6) & (t.bbox[:, 9:13] >= 0).all(1)
    depth = torch.as_tensor(rec["center_I"])[:, 2]
    return sorted({int((depth - d).abs().argmin()) for d in t.bbox[usable, 2]})


@pytest.mark.parametrize("euler", ["fixed", "faithful"])
def test_oracle_outputs_decode_back_to_the_ground_truth(scenes, euler):
    """A synthetic street scene (level 0 only) and the hand-made scene at 8 x the input (every level, more points
    than nms_pre on level 0): every object that owns a positive point comes back once, within 1e-4."""
    det = small_detector(euler=euler, nms_pre=100)
    with torch.no_grad():
        for level in det.scales:
            for s in level:
                s.scale.uniform_(0.5, 1.5)
    street = [Cityscapes3D(scenes, split, ["3ddet"], euler=euler).load_raw(0)["3ddet"] for split in ("train", "val")]
    checked = 0
    for records, scale in ((street, 1.0), ([hand_record(euler)], 8.0)):
        decoded = det.decode(oracle_outputs(det, records, scale), records=records)
        for rec, got in zip(records, decoded):
            owned = owned_objects(det, rec, scale)
            assert len(got["label"]) == len(owned) > 0
            for k in range(len(got["label"])):
                j = int(np.linalg.norm(rec["center_V"] - got["center_V"][k], axis=1).argmin())
                assert j in owned and got["label"][k] == rec["label"][j]
                np.testing.assert_allclose(got["center_V"][k], rec["center_V"][j], atol=1e-4)
                np.testing.assert_allclose(got["dimensions"][k], rec["dimensions"][j], atol=1e-4)
                np.testing.assert_allclose(quaternion_to_matrix(got["rotation"][k]),
                                           quaternion_to_matrix(rec["rotation"][j]), atol=1e-4)
                np.testing.assert_allclose(got["box_modal"][k], rec["box_modal"][j].clip(0, [2048, 1024] * 2)
                                           if scale == 8.0 else rec["box_modal"][j], atol=1e-4)
                np.testing.assert_allclose(got["center_I"][k], rec["center_I"][j], atol=1e-4)
                checked += 1
            assert got["score"].min() > 0.05 and got["rotation"].shape == (len(owned), 4)
    assert checked >= 8


# ------------------------------------------------------------------------------------------------ the model


def test_a_released_checkpoint_with_the_detection_head_loads(recwarn):
    torch.manual_seed(0)
    src = build_model("taskprompter_swin_tiny", tasks=TASKS3, detection={"channels": 32})
    with torch.no_grad():
        for v in src.heads["3ddet"].state_dict().values():
            v.add_(torch.randn(v.shape) * 0.1)
    state = {"model": {f"module.{k}": v.clone() for k, v in to_released_state_dict(src).items()}, "epoch": 3}
    det_keys = {k.removeprefix("module.heads.3ddet.") for k in state["model"] if k.startswith("module.heads.3ddet.")}
    assert det_keys == released_head_keys()
    torch.manual_seed(1)
    dst = build_model("taskprompter_swin_tiny", tasks=TASKS3, detection={"channels": 32})
    with pytest.warns(UserWarning, match="euler='faithful'"):
        assert load_official_checkpoint(dst, state) == []
    assert all(torch.equal(v, dst.state_dict()[k]) for k, v in src.state_dict().items())
    assert dst.heads["3ddet"].config.euler == "faithful" and dst.init_kwargs["detection"]["euler"] == "faithful"
    plain = build_model("taskprompter_swin_tiny", tasks=TASKS3, detection={"channels": 32, "deformable": False})
    with pytest.raises(CheckpointError, match="conv_offset"):
        load_official_checkpoint(plain, state)


def test_the_swin_model_returns_the_detector_outputs_and_the_multitask_loss_takes_them(scenes):
    from taskprompter.data.sample import collate, to_tensors

    torch.manual_seed(0)
    model = build_model("taskprompter_swin_tiny", tasks=TASKS3, detection={"channels": 32, "score_threshold": 0.0,
                                                                              "nms_pre": 20})
    assert isinstance(model.heads["3ddet"], Detector3D) and model.heads["3ddet"].config.strides == tuple(STRIDES)
    assert model.init_kwargs["detection"] == {"channels": 32, "score_threshold": 0.0, "nms_pre": 20}
    with pytest.raises(ValueError, match="unknown detection option"):
        build_model("taskprompter_swin_tiny", tasks=TASKS3, detection={"chanels": 32})
    ds = Cityscapes3D(scenes, "train", ["semseg", "depth", "3ddet"])
    raws = [ds.load_raw(i) for i in range(2)]
    batch = collate([to_tensors({k: v for k, v in r.items()}) for r in raws])
    batch["semseg"] = batch["semseg"][:, ::2, ::2]  # labels at half the input, as the released pipeline has them
    batch["depth"] = batch["depth"][:, :, ::2, ::2]
    out, feats = model(batch["image"] / 255.0, return_features=True)
    assert isinstance(out["3ddet"], DetectionOutputs) and out["3ddet"].level_sizes == LEVELS
    assert [tuple(m.shape) for m in feats["3ddet"]] == [(2, 32, h, w) for h, w in LEVELS[:4]]
    criterion = MultiTaskLoss(list(TASKS3), {"semseg": 100.0}, zero_depth_valid=True)
    losses = criterion(out, batch)
    assert torch.isfinite(losses["3ddet"]) and losses["3ddet"] > 0
    stats = criterion.batch_stats(batch)
    assert stats["3ddet"].tolist() == [2]
    double = {**stats, "3ddet": stats["3ddet"] * 2}  # this batch holds half of a larger batch's images
    assert criterion(out, batch, double)["3ddet"].item() == pytest.approx(losses["3ddet"].item() / 2, rel=1e-6)
    losses["total"].backward()
    assert all(p.grad is not None for p in model.heads["3ddet"].parameters())
    decoded = model.heads["3ddet"].decode(out["3ddet"], records=batch["3ddet"])
    assert len(decoded) == 2 and decoded[0]["center_V"].shape[1] == 3 and len(decoded[0]["label"]) > 0
    with pytest.raises(TypeError, match="DetectionOutputs"):
        criterion({**out, "3ddet": feats["3ddet"]}, batch)


def test_train_runs_the_three_tasks_on_synthetic_scenes(scenes, tmp_path):
    import json

    from taskprompter.config import load_config
    from taskprompter.engine.train import train

    cfg = load_config("synthetic_cityscapes3d", [
        f"data.root={scenes}", f"train.out_dir={tmp_path / 'run'}", "train.progress=false",
        "model.name=taskprompter_swin_tiny", f"data.size={list(SIZE)}", "data.tasks=[semseg, depth, 3ddet]",
        "model.overrides.detection.channels=32", "optim.max_iters=2", "train.batch_size=2", "train.log_every=1",
        "data.max_val_samples=1", "train.eval_batch_size=1", "optim.warmup_iters=0"])
    result = train(cfg)
    logged = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    det = [r["loss/3ddet"] for r in logged if r["split"] == "train"]
    assert len(det) == 2 and all(math.isfinite(v) and v > 0 for v in det)
    assert set(result["metrics"]) >= {"semseg", "depth"}
