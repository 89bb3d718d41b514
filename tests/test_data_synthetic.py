"""The synthetic scene generator: determinism, geometric consistency of depth/normals/edges, label agreement."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import time

import numpy as np
import pytest

from taskprompter.data.synthetic import CLASSES, PALETTE, generate, render_scene

SIZE = (64, 80)


def _digest(scene: dict) -> str:
    h = hashlib.sha256()
    for key in sorted(scene):
        h.update(key.encode())
        h.update(np.ascontiguousarray(scene[key]).tobytes())
    return h.hexdigest()


def test_same_seed_and_index_give_the_same_bytes_in_another_process():
    here = _digest(render_scene(3, 7, SIZE))
    code = ("import hashlib, numpy as np; from taskprompter.data.synthetic import render_scene; "
            "render_scene(3, 2, (64, 80)); s = render_scene(3, 7, (64, 80)); h = hashlib.sha256()\n"
            "for k in sorted(s): h.update(k.encode()); h.update(np.ascontiguousarray(s[k]).tobytes())\n"
            "print(h.hexdigest())")
    there = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert here == there
    assert _digest(render_scene(3, 8, SIZE)) != here
    assert _digest(render_scene(4, 7, SIZE)) != here


def _backproject(depth: np.ndarray, intrinsics: np.ndarray) -> np.ndarray:
    f, cx, cy = intrinsics
    h, w = depth.shape
    v, u = np.mgrid[0:h, 0:w].astype(np.float64)
    z = depth.astype(np.float64)
    return np.stack([(u + 0.5 - cx) / f * z, (v + 0.5 - cy) / f * z, z], -1)  # (H, W, 3)


@pytest.mark.parametrize("index", range(6))
def test_normals_agree_with_finite_differences_of_backprojected_depth(index):
    scene = render_scene(0, index, (96, 120))
    p = _backproject(scene["depth"], scene["intrinsics"])
    du = p[1:-1, 2:] - p[1:-1, :-2]  # central differences (chords of the surface)
    dv = p[2:, 1:-1] - p[:-2, 1:-1]
    n_fd = -np.cross(du, dv)  # x right, y down: du x dv points away from the camera
    n_fd /= np.linalg.norm(n_fd, axis=-1, keepdims=True)
    n = scene["normals"][1:-1, 1:-1].astype(np.float64)
    angle = np.degrees(np.arccos(np.clip((n * n_fd).sum(-1), -1, 1)))
    # a 3x3 neighbourhood on one plane: every neighbour has the centre's normal (room faces, box faces)
    normals, inst = scene["normals"], scene["instance"]
    h, w = inst.shape
    same = np.ones(angle.shape, dtype=bool)
    inst_same = np.ones(angle.shape, dtype=bool)
    for dr in (-1, 0, 1):
        for dc in (-1, 0, 1):
            nb = normals[1 + dr : h - 1 + dr, 1 + dc : w - 1 + dc]
            same &= np.abs(nb - normals[1:-1, 1:-1]).max(-1) < 1e-6
            inst_same &= inst[1 + dr : h - 1 + dr, 1 + dc : w - 1 + dc] == inst[1:-1, 1:-1]
    planar = same & inst_same
    assert planar.mean() > 0.5
    assert angle[planar].max() < 0.5  # degrees
    assert np.median(angle[inst_same]) < 2.0  # curved surfaces (spheres, cylinders) agree too


def test_labels_agree_with_each_other():
    for index in range(8):
        s = render_scene(1, index, SIZE)
        assert s["image"].dtype == np.uint8 and s["image"].shape == (*SIZE, 3)
        assert np.isfinite(s["depth"]).all() and (s["depth"] > 0).all()
        np.testing.assert_allclose(np.linalg.norm(s["normals"], axis=-1), 1.0, atol=1e-5)
        f, cx, cy = s["intrinsics"]
        rays = np.stack(np.meshgrid((np.arange(SIZE[1]) + 0.5 - cx) / f, (np.arange(SIZE[0]) + 0.5 - cy) / f), -1)
        facing = (s["normals"][..., :2] * rays).sum(-1) + s["normals"][..., 2]
        assert (facing <= 1e-6).all()  # normals face the camera
        person = s["semseg"] == CLASSES.index("person")
        assert np.array_equal(s["parts"] > 0, person)  # body parts exactly on figures
        assert np.array_equal(s["sal"] == 1, s["semseg"] >= CLASSES.index("box"))  # objects and figures salient
        # every instance has one class
        for inst in np.unique(s["instance"]):
            assert len(np.unique(s["semseg"][s["instance"] == inst])) == 1


def test_edges_are_exactly_the_instance_changes_to_east_south_southeast():
    s = render_scene(0, 2, SIZE)
    inst, edge = s["instance"], s["edge"]
    h, w = inst.shape
    expected = np.zeros((h, w), dtype=np.uint8)
    for r in range(h):
        for c in range(w):
            nbs = [(r, c + 1), (r + 1, c), (r + 1, c + 1)]
            expected[r, c] = any(rr < h and cc < w and inst[rr, cc] != inst[r, c] for rr, cc in nbs)
    assert np.array_equal(edge, expected)
    assert 0 < edge.mean() < 0.2


def test_scenes_are_learnable_big_objects_few_classes_and_figures_in_some():
    scenes = [render_scene(0, i, SIZE) for i in range(24)]
    salient = np.array([s["sal"].mean() for s in scenes])
    assert np.median(salient) > 0.08  # objects are big
    with_people = sum((s["parts"] > 0).any() for s in scenes)
    assert 4 <= with_people <= 20  # about half of the scenes have figures
    seen = set(np.concatenate([np.unique(s["semseg"]) for s in scenes]).tolist())
    assert seen == set(range(len(CLASSES)))
    assert PALETTE.shape == (len(CLASSES), 3)
    assert min(s["image"].astype(float).std() for s in scenes) > 10  # textured, shaded, not flat


def test_any_size():
    s = render_scene(0, 0, (33, 47))
    assert all(v.shape[:2] == (33, 47) for k, v in s.items() if k != "intrinsics")


def test_speed_at_least_200_samples_per_minute_written(tmp_path):
    start = time.perf_counter()
    generate(tmp_path / "p", format="pascal_context", num=10, size=(128, 160), seed=0)
    per_sample = (time.perf_counter() - start) / 10
    assert per_sample < 60 / 200  # measured ~0.03 s on one core


def test_generate_rejects_bad_arguments(tmp_path):
    from taskprompter.errors import ConfigError

    with pytest.raises(ConfigError, match="format"):
        generate(tmp_path, format="cityscapes", num=2)
    with pytest.raises(ConfigError, match="num"):
        generate(tmp_path, format="nyud", num=0)


def test_tree_bytes_do_not_depend_on_workers(tmp_path):
    one = generate(tmp_path / "one", format="nyud", num=4, size=(32, 40), seed=1, workers=1)
    two = generate(tmp_path / "two", format="nyud", num=4, size=(32, 40), seed=1, workers=2)
    files = sorted(p.relative_to(one) for p in one.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(two) for p in two.rglob("*") if p.is_file())
    assert all((one / f).read_bytes() == (two / f).read_bytes() for f in files)
