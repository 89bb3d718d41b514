"""Synthetic Cityscapes-3D: ray-cast street scenes written as the released Cityscapes tree (docs/data.md).

    leftImg8bit/<split>/synthcity/synthcity_<index>_000019_leftImg8bit.png    RGB
    gtFine/<split>/synthcity/..._gtFine_labelIds.png                         uint8 labelIds
    gtFine/<split>/synthcity/..._gtFine_instanceIds.png                      uint16: labelId * 1000 + k on vehicles
    disparity/<split>/synthcity/..._disparity.png                            uint16: 256 * B * fx / z_S + 1, 0 = sky
    gtBbox3d/<split>/synthcity/..._gtBbox3d.json                             the official 3-D box format

Every label comes from one ray cast of the scene (`street.py`): the nearest hit per pixel gives the labelId, the
instance and z_S (the camera depth, so the disparity is exact up to its 1/256 quantisation); the 3-D boxes are the
vehicles' cuboids, their amodal 2-D boxes the geometry module's projection, their modal boxes the bounds of their
visible pixels. Sample i is a function of (seed, i) alone.
"""

from __future__ import annotations

import json
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ...errors import ConfigError
from ..geometry import (
    CORNER_SIGNS,
    KMUL,
    NEAR_PLANE,
    Camera,
    amodal_boxes,
    sensor_corners,
    vehicle_to_sensor,
    xyxy_to_xywh,
)
from .raycast import Solid, intersect, surface
from .street import RAIL_TRACK, ROAD, SIDEWALK, SKY, StreetScene, Vehicle, sample_street
from .write import split_ids

CITY = "synthcity"
FRAME = "000019"
EMPTY_EVERY = 10  # training sample i has no vehicles when i % EMPTY_EVERY == 1 (exercises `drop_empty`)
DEFAULT_SIZE = (256, 512)
STREAM = 3  # the scenes draw from np.random.default_rng([seed, index, STREAM]), apart from the indoor scenes'
SKY_TOP, SKY_HORIZON = np.array([0.32, 0.5, 0.8]), np.array([0.78, 0.85, 0.92])


def stem(index: int) -> str:
    """File stem of sample ``index``: `synthcity_<index:06d>_000019_` (the id without the trailing underscore)."""
    return f"{CITY}_{index:06d}_{FRAME}_"


def _rays(scene: StreetScene, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Origin (3,) and directions (H*W, 3) in V of the rays through pixel centres (u, v) = (column, row), scaled so
    that the ray parameter is z_S."""
    cam = scene.camera
    h, w = size
    v, u = np.mgrid[0:h, 0:w].astype(np.float64)
    d_S = np.stack([(u - cam.u0) / cam.fx, (v - cam.v0) / cam.fy, np.ones_like(u)], -1).reshape(-1, 3)
    d_C = d_S @ KMUL  # KMUL^T d
    return cam.position_V, d_C @ np.linalg.inv(cam.sensor_T_ISO_8855[:, :3]).T


def _cast(solid: Solid, origin: np.ndarray, d: np.ndarray, camera: Camera, size: tuple[int, int], *,
          out: np.ndarray) -> None:
    """Intersect the rays with one box, casting only those whose pixels lie in the box's projected bounds (every
    ray that hits it does): ``out`` (H*W,) gets t there and keeps inf elsewhere."""
    h, w = size
    corners_V = solid.center + (CORNER_SIGNS * solid.size) @ solid.axes.T  # (8, 3)
    corners_S = vehicle_to_sensor(corners_V, camera)
    if (corners_S[:, 2] <= NEAR_PLANE).all():
        return
    x1, y1, x2, y2 = amodal_boxes(corners_S[None], camera, (h, w))[0]
    c1, r1 = max(int(np.floor(x1)) - 1, 0), max(int(np.floor(y1)) - 1, 0)
    c2, r2 = min(int(np.ceil(x2)) + 1, w - 1), min(int(np.ceil(y2)) + 1, h - 1)
    if c2 < c1 or r2 < r1:
        return
    block = (slice(r1, r2 + 1), slice(c1, c2 + 1))
    sub = d.reshape(h, w, 3)[block].reshape(-1, 3)
    out.reshape(h, w)[block] = intersect(solid, origin, sub).reshape(r2 + 1 - r1, c2 + 1 - c1)


def _ground(scene: StreetScene, p: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """labelIds and albedo (M, 3) of ground hits p (M, 3): road with lane markings, a tram track, sidewalk."""
    road_y, half = scene.road
    dy = p[:, 1] - road_y
    label = np.where(np.abs(dy) <= half, ROAD, SIDEWALK).astype(np.uint8)
    grain = 1.0 + 0.06 * np.sin(p[:, 0] * 3.1 + 1.7 * np.sin(p[:, 1] * 2.3))
    albedo = (scene.road_albedo * grain)[:, None] * np.ones(3)
    lanes = np.abs(dy) / 3.4
    dashed = (np.abs(lanes - np.rint(lanes)) * 3.4 < 0.08) & (np.mod(p[:, 0], 9.0) < 3.0) & (np.abs(dy) < half - 0.5)
    edge_line = np.abs(np.abs(dy) - (half - 0.3)) < 0.07
    albedo[(dashed | edge_line) & (label == ROAD)] = 0.85
    if scene.rail is not None:
        rail_y, rail_half = scene.rail
        on_rail = np.abs(p[:, 1] - rail_y) <= rail_half
        label[on_rail] = RAIL_TRACK
        steel = np.abs(np.abs(p[:, 1] - rail_y) - 0.72) < 0.04
        albedo[on_rail] = np.array([0.3, 0.26, 0.22])
        albedo[on_rail & steel] = np.array([0.6, 0.6, 0.62])
    side = label == SIDEWALK
    albedo[side] = scene.sidewalk_albedo * (0.94 + 0.06 * ((np.floor(p[side, 0] / 0.6) + np.floor(p[side, 1] / 0.6))
                                                          % 2))[:, None]
    return label, albedo


def _facade_albedo(tex: dict, p: np.ndarray, top: float) -> np.ndarray:
    along = p[:, 0] + p[:, 1]  # a facade is a plane of constant x or constant y
    window = ((np.mod(along / tex["pitch"], 1.0) > 0.3) & (np.mod(along / tex["pitch"], 1.0) < 0.7)
              & (np.mod(p[:, 2] / tex["storey"], 1.0) > 0.3) & (np.mod(p[:, 2] / tex["storey"], 1.0) < 0.75)
              & (p[:, 2] > 2.0) & (p[:, 2] < top - 0.8))
    return np.where(window[:, None], tex["glass"], tex["wall"])


def _vehicle_albedo(vehicle: Vehicle, local: np.ndarray, normal_local: np.ndarray) -> np.ndarray:
    """Body colour, a dark window band on the sides, dark wheels at the bottom (local: box coordinates)."""
    length, width, height = vehicle.dimensions
    rel = local[:, 2] / height + 0.5  # 0 at the bottom, 1 at the top
    albedo = np.broadcast_to(vehicle.colour, local.shape).copy()
    on_side = np.abs(normal_local[:, 2]) < 0.5
    if vehicle.label in ("car", "bus", "train", "truck"):
        band = {"car": (0.62, 0.92), "bus": (0.5, 0.88), "train": (0.45, 0.85), "truck": (0.6, 0.9)}[vehicle.label]
        windows = on_side & (rel > band[0]) & (rel < band[1])
        if vehicle.label == "truck":  # only the cab has windows
            windows &= local[:, 0] > length / 2 - 2.2
        albedo[windows] = vehicle.window
        albedo[on_side & (rel < 0.2)] = np.array([0.06, 0.06, 0.07])
    else:  # two-wheelers: a dark frame, the rider's colour on top
        albedo[rel < 0.45] = np.array([0.1, 0.1, 0.11])
    return albedo


def render_street(seed: int, index: int, size: tuple[int, int] = DEFAULT_SIZE, *,
                  vehicles: bool = True) -> dict[str, Any]:
    """Render street scene ``index`` of dataset ``seed`` (``vehicles=False``: the same kind of street, empty).

    Returns image uint8 (H, W, 3); label_ids uint8 (H, W) Cityscapes labelIds; instance_ids uint16 (H, W)
    (labelId * 1000 + k on vehicles, the labelId elsewhere); depth float64 (H, W) z_S in metres, inf on the sky;
    disparity uint16 (H, W) the stored PNG values; annotation: the gtBbox3d JSON as a dict; camera: the `Camera`."""
    h, w = int(size[0]), int(size[1])
    rng = np.random.default_rng([int(seed), int(index), STREAM])
    scene = sample_street(rng, (h, w), vehicles=vehicles)
    origin, d = _rays(scene, (h, w))
    n = h * w
    solids = scene.solids
    t_all = np.full((1 + len(solids), n), np.inf)  # (1 + S, N) ray parameter = z_S of each surface, inf: missed
    with np.errstate(divide="ignore"):
        t_all[0] = np.where(d[:, 2] < 0, -origin[2] / d[:, 2], np.inf)
    for k, solid in enumerate(solids, start=1):
        _cast(solid, origin, d, scene.camera, (h, w), out=t_all[k])
    owner = t_all.argmin(0)
    depth = t_all[owner, np.arange(n)]
    sky = ~np.isfinite(depth)
    p = origin + np.where(sky, 0.0, depth)[:, None] * d  # (N, 3) hit points (V)
    label = np.full(n, SKY, dtype=np.uint8)
    instance = np.full(n, SKY, dtype=np.uint16)
    albedo = np.zeros((n, 3))
    normal = np.zeros((n, 3))
    on_ground = np.flatnonzero((owner == 0) & ~sky)
    label[on_ground], albedo[on_ground] = _ground(scene, p[on_ground], rng)
    normal[on_ground] = (0.0, 0.0, 1.0)
    n_static = len(scene.curbs) + len(scene.buildings)
    for k, solid in enumerate(solids, start=1):
        m = np.flatnonzero((owner == k) & ~sky)
        if m.size == 0:
            continue
        normal[m], local = surface(solid, p[m])
        label[m] = solid.label
        if solid.label == SIDEWALK:
            albedo[m] = scene.sidewalk_albedo
        elif k <= n_static:
            albedo[m] = _facade_albedo(solid.texture, p[m], top=2 * solid.size[2])
        else:
            albedo[m] = _vehicle_albedo(scene.vehicles[k - 1 - n_static], local, normal[m] @ solid.axes)
        instance[m] = solid.instance if k > n_static else solid.label
    instance[on_ground] = label[on_ground]
    shade = scene.ambient + (1 - scene.ambient) * np.maximum(normal @ scene.sun, 0.0)
    radiance = albedo * shade[:, None]
    rows = np.repeat(np.arange(h), w) / max(h - 1, 1)
    radiance[sky] = SKY_TOP + (SKY_HORIZON - SKY_TOP) * np.clip(rows[sky] * 2.0, 0, 1)[:, None]
    pixels = radiance * 255.0 + rng.normal(0.0, scene.noise, (n, 3))
    image = np.clip(np.rint(pixels), 0, 255).astype(np.uint8)
    cam = scene.camera
    with np.errstate(divide="ignore"):
        disparity = np.where(sky, 0.0, np.clip(np.rint(256.0 * cam.baseline * cam.fx / depth + 1.0), 1, 65535))
    annotation = _annotation(scene, t_all[1 + n_static:], instance, (h, w))
    return {"image": image.reshape(h, w, 3), "label_ids": label.reshape(h, w),
            "instance_ids": instance.reshape(h, w), "depth": depth.reshape(h, w),
            "disparity": disparity.astype(np.uint16).reshape(h, w), "annotation": annotation, "camera": cam}


def _annotation(scene: StreetScene, t_vehicles: np.ndarray, instance: np.ndarray, size: tuple[int, int]) -> dict:
    """The gtBbox3d JSON: one object per vehicle with at least one visible pixel."""
    h, w = size
    cam = scene.camera
    objects = []
    if scene.vehicles:
        corners = sensor_corners(np.stack([v.center for v in scene.vehicles]),
                                 np.stack([v.dimensions for v in scene.vehicles]),
                                 np.stack([v.quaternion for v in scene.vehicles]), cam)
        amodal = amodal_boxes(corners, cam, (h, w))
        unclipped = amodal_boxes(corners, cam)
    for k, vehicle in enumerate(scene.vehicles):
        visible = np.flatnonzero(instance == vehicle.instance_id)
        if visible.size == 0:  # fully occluded or out of view
            continue
        rows, cols = np.divmod(visible, w)
        modal = [int(cols.min()), int(rows.min()), int(cols.max() - cols.min()), int(rows.max() - rows.min())]
        alone = int(np.isfinite(t_vehicles[k]).sum())
        area = lambda b: max(b[2] - b[0], 0.0) * max(b[3] - b[1], 0.0)  # noqa: E731
        truncation = 1.0 - area(amodal[k]) / area(unclipped[k]) if area(unclipped[k]) > 0 else 0.0
        objects.append({
            "2d": {"modal": modal, "amodal": [float(x) for x in xyxy_to_xywh(amodal[k])]},
            "3d": {"center": [float(x) for x in vehicle.center], "dimensions": [float(x) for x in vehicle.dimensions],
                   "rotation": [float(x) for x in vehicle.quaternion], "type": vehicle.label,
                   "format": "CRS_ISO8855"},
            "occlusion": round(1.0 - visible.size / max(alone, 1), 4), "truncation": round(truncation, 4),
            "instanceId": int(vehicle.instance_id), "label": vehicle.label, "score": 1.0,
        })  # fmt: skip
    return {"imgWidth": w, "imgHeight": h, "sensor": cam.to_json(), "objects": objects, "ignore": []}


# -- the tree -------------------------------------------------------------------------------------------------------
def sample_paths(root: Path, split: str, index: int) -> dict[str, Path]:
    s = stem(index)
    return {"image": root / "leftImg8bit" / split / CITY / f"{s}leftImg8bit.png",
            "label_ids": root / "gtFine" / split / CITY / f"{s}gtFine_labelIds.png",
            "instance_ids": root / "gtFine" / split / CITY / f"{s}gtFine_instanceIds.png",
            "disparity": root / "disparity" / split / CITY / f"{s}disparity.png",
            "annotation": root / "gtBbox3d" / split / CITY / f"{s}gtBbox3d.json"}


def has_vehicles(split: str, index: int) -> bool:
    """Whether sample ``index`` of ``split`` is rendered with vehicles (every training sample but 1 in 10)."""
    return not (split == "train" and index % EMPTY_EVERY == 1)


def write_sample(root: Path, split: str, index: int, seed: int, size: tuple[int, int]) -> None:
    scene = render_street(seed, index, size, vehicles=has_vehicles(split, index))
    paths = sample_paths(root, split, index)
    for path in paths.values():
        path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(scene["image"]).save(paths["image"])
    Image.fromarray(scene["label_ids"]).save(paths["label_ids"])
    Image.fromarray(scene["instance_ids"]).save(paths["instance_ids"])  # uint16 -> 16-bit gray PNG
    Image.fromarray(scene["disparity"]).save(paths["disparity"])
    paths["annotation"].write_text(json.dumps(scene["annotation"], indent=2) + "\n")


def _write_job(job: tuple[str, str, int, int, tuple[int, int]]) -> int:
    root, split, index, seed, size = job
    write_sample(Path(root), split, index, seed, size)
    return index


def generate_cityscapes3d(out_dir: str | Path, *, num: int, size: tuple[int, int] = DEFAULT_SIZE, seed: int = 0,
                          split_ratio: float = 0.8, workers: int = 1, progress: bool = False) -> Path:
    """Write ``num`` synthetic street scenes as a released Cityscapes tree (the first round(num * split_ratio)
    indices in ``train``, the rest in ``val``) plus ``synthetic.json``; return the root."""
    root = Path(out_dir)
    h, w = int(size[0]), int(size[1])
    if num < 1:
        raise ConfigError(f"--num must be at least 1, got {num}")
    if h < 16 or w < 16:
        raise ConfigError(f"synthetic images must be at least 16x16, got {h}x{w}")
    if not 0.0 < split_ratio <= 1.0:
        raise ConfigError(f"split_ratio must be in (0, 1], got {split_ratio}")
    n_train = len(split_ids(num, split_ratio)[0])
    jobs = [(str(root), "train" if i < n_train else "val", i, int(seed), (h, w)) for i in range(num)]
    root.mkdir(parents=True, exist_ok=True)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=num, desc="synth cityscapes3d", unit="img")
    if workers > 1 and num > 1:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            for _ in pool.map(_write_job, jobs, chunksize=4):
                bar and bar.update()
    else:
        for job in jobs:
            _write_job(job)
            bar and bar.update()
    if bar:
        bar.close()
    info = {"generator": "taskprompter.data.synthetic", "format": "cityscapes3d", "num": num, "size": [h, w],
            "seed": seed, "split_ratio": split_ratio, "train": n_train, "val": num - n_train,
            "empty_train": [i for i in range(n_train) if not has_vehicles("train", i)]}
    (root / "synthetic.json").write_text(json.dumps(info, indent=1) + "\n")
    return root
