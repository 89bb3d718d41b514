"""Render one synthetic scene into every task's label: ray-cast rooms with objects and jointed figures.

Every label comes from the same 3-D scene (see docs/data.md and `scene.py`): depth is the camera z of the nearest
hit, normals the unit surface normal in the camera frame (x right, y down, z forward; facing the camera), semseg
the solid's class, human_parts the figure's body part, sal objects and figures, edge the one-pixel boundaries of
instance changes. The class tables below map the synthetic classes into the real datasets' id spaces, which
`write.py` uses to store them as released-format trees.
"""

from __future__ import annotations

import numpy as np

from ..boundaries import instance_edges
from .raycast import ROOM_NORMALS, intersect, room_hit, surface
from .scene import BOX, CEILING, CYLINDER, FLOOR, PERSON, SPHERE, WALL, Scene, sample_scene

CLASSES: tuple[str, ...] = ("floor", "wall", "ceiling", "box", "sphere", "cylinder", "person")
PALETTE: np.ndarray = np.array(
    [[150, 110, 70], [200, 200, 180], [240, 240, 240], [40, 90, 220], [220, 40, 40], [40, 170, 60], [250, 170, 30]],
    dtype=np.uint8,
)  # (7, 3) colour of each synthetic class

# The same classes in the real datasets' id spaces (so the same readers and metrics serve both).
VOC_IDS = np.array([0, 0, 0, 20, 16, 5, 15])  # background x3, tvmonitor, pottedplant, bottle, person
NYU40_STORED = np.array([2, 1, 22, 29, 40, 39, 31])  # floor, wall, ceiling, box, otherprop, otherfurniture, person
CONTEXT_IDS = np.array([158, 440, 68, 37, 10, 13, 284])  # floor, wall, ceiling, box, ball, barrel, person

FIGURE_PARTS: tuple[str, ...] = (
    "head", "torso", "luarm", "ruarm", "llarm", "rlarm", "luleg", "ruleg", "llleg", "rlleg",
)
PART_OF = {"head": 1, "torso": 2, "luarm": 3, "ruarm": 3, "llarm": 4, "rlarm": 4, "luleg": 5, "ruleg": 5,
           "llleg": 6, "rlleg": 6}  # PASCAL-Part name -> human_parts id
FACE_LABEL = np.array([WALL, WALL, FLOOR, CEILING, WALL, WALL])  # raycast.ROOM_FACES order

assert [BOX, SPHERE, CYLINDER, PERSON] == [3, 4, 5, 6]


def camera_rays(size: tuple[int, int], focal: float) -> np.ndarray:
    """Camera-frame ray directions with z = 1 through pixel centres (u + 0.5, v + 0.5). (H*W, 3)."""
    h, w = size
    v, u = np.mgrid[0:h, 0:w].astype(np.float64)
    d = np.stack([(u + 0.5 - w / 2) / focal, (v + 0.5 - h / 2) / focal, np.ones_like(u)], -1)  # (H, W, 3)
    return d.reshape(-1, 3)


def apply_texture(tex: dict, coords: np.ndarray) -> np.ndarray:
    """Albedo (M, 3) of a procedural texture at texture coordinates (M, 3)."""
    kind = tex["kind"]
    if kind == "solid":
        return np.broadcast_to(tex["c1"], coords.shape)
    if kind == "checker":
        mix = (np.floor(coords / tex["scale"]).sum(-1) % 2)[:, None]
    elif kind == "stripes":
        mix = (np.floor(coords @ tex["axis"] / tex["scale"]) % 2)[:, None]
    else:  # smooth noise: three random plane waves
        mix = (np.sin(coords @ tex["waves"].T + tex["phase"]).mean(-1) * 0.5 + 0.5)[:, None]
    return tex["c1"] * (1 - mix) + tex["c2"] * mix


def _shade(scene: Scene, p: np.ndarray, normal: np.ndarray) -> np.ndarray:
    """Lambertian irradiance (N,): ambient + lights with distance fall-off and cast shadows."""
    shade = np.full(len(p), scene.ambient)
    for light, power in zip(scene.lights, scene.intensities):
        to_light = light - p  # (N, 3)
        dist = np.linalg.norm(to_light, axis=-1)
        lam = np.maximum((normal * to_light).sum(-1) / dist, 0.0)
        lit = np.flatnonzero(lam > 0)
        origins = p[lit] + normal[lit] * 1e-3
        dirs = light - origins  # origin + 1 * dir = light
        blocked = np.zeros(len(lit), dtype=bool)
        for solid in scene.solids:
            blocked |= intersect(solid, origins, dirs) < 1.0
        visible = np.zeros(len(p))
        visible[lit[~blocked]] = 1.0
        shade += power * lam * visible * 1.6 / (1.0 + (dist / 4.0) ** 2)
    return shade


def render_scene(seed: int, index: int, size: tuple[int, int] = (128, 160)) -> dict[str, np.ndarray]:
    """Render scene `index` of dataset `seed`: the same (seed, index, size) always gives the same arrays.

    Returns image uint8 (H, W, 3); depth float32 (H, W) metres; normals float32 (H, W, 3) unit, camera frame;
    semseg uint8 synthetic class (CLASSES); instance int32 (room faces 1..6, then one id per object / figure);
    parts uint8 (0 none, 1 head .. 6 lower leg); part_names uint8 (1 + index into FIGURE_PARTS, 0 none);
    sal uint8 0/1; edge uint8 0/1; intrinsics float64 (f, cx, cy) with pixel centres at (u + 0.5, v + 0.5).
    """
    h, w = int(size[0]), int(size[1])
    rng = np.random.default_rng([int(seed), int(index)])
    scene = sample_scene(rng, (h, w))
    n = h * w
    d_cam = camera_rays((h, w), scene.focal)  # (N, 3)
    d = d_cam @ scene.rotation.T  # world directions
    o = scene.camera
    t_room, face = room_hit(o, d, scene.room)
    t_all = np.stack([t_room] + [intersect(s, o, d) for s in scene.solids])  # (1 + S, N)
    owner = t_all.argmin(0)
    depth = t_all[owner, np.arange(n)]
    p = o + depth[:, None] * d  # (N, 3) hit points
    normal = np.zeros((n, 3))
    albedo = np.zeros((n, 3))
    semseg = np.zeros(n, dtype=np.uint8)
    instance = np.zeros(n, dtype=np.int32)
    part_names = np.zeros(n, dtype=np.uint8)
    on_room = owner == 0
    for f in range(6):
        m = on_room & (face == f)
        normal[m] = ROOM_NORMALS[f]
        albedo[m] = apply_texture(scene.room_textures[f], p[m])
        semseg[m], instance[m] = FACE_LABEL[f], f + 1
    for k, solid in enumerate(scene.solids, start=1):
        m = np.flatnonzero(owner == k)
        if m.size == 0:
            continue
        normal[m], local = surface(solid, p[m])
        albedo[m] = apply_texture(solid.texture, local)
        semseg[m], instance[m] = solid.label, solid.instance
        if solid.part:
            part_names[m] = FIGURE_PARTS.index(solid.part) + 1
    radiance = albedo * _shade(scene, p, normal)[:, None]
    pixels = radiance * 255.0 + rng.normal(0.0, scene.noise, (n, 3))
    image = np.clip(np.rint(pixels), 0, 255).astype(np.uint8)
    n_cam = normal @ scene.rotation  # world -> camera frame
    n_cam *= np.where((n_cam * d_cam).sum(-1, keepdims=True) > 0, -1.0, 1.0)  # facing the camera
    n_cam /= np.linalg.norm(n_cam, axis=-1, keepdims=True)
    parts_lut = np.array([0] + [PART_OF[name] for name in FIGURE_PARTS], dtype=np.uint8)
    inst = instance.reshape(h, w)
    return {
        "image": image.reshape(h, w, 3),
        "depth": depth.reshape(h, w).astype(np.float32),
        "normals": n_cam.reshape(h, w, 3).astype(np.float32),
        "semseg": semseg.reshape(h, w),
        "instance": inst,
        "parts": parts_lut[part_names].reshape(h, w),
        "part_names": part_names.reshape(h, w),
        "sal": (semseg >= BOX).astype(np.uint8).reshape(h, w),
        "edge": instance_edges(inst).astype(np.uint8),
        "intrinsics": np.array([scene.focal, w / 2, h / 2]),
    }

