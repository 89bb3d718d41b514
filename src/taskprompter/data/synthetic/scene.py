"""Random scene descriptions for the synthetic dataset: a room, a camera, objects on the floor, jointed figures.

Everything is drawn from one `numpy.random.Generator`, so (seed, index) fixes the scene. Objects are big and
few (learnable by a tiny model in minutes); surface colours lean towards a per-class hue most of the time.
"""

from __future__ import annotations

import colorsys
from dataclasses import dataclass, field

import numpy as np

from .raycast import Solid

# Synthetic class indices (see render.CLASSES).
FLOOR, WALL, CEILING, BOX, SPHERE, CYLINDER, PERSON = range(7)
CLASS_HUE = {FLOOR: 0.08, WALL: 0.12, CEILING: 0.15, BOX: 0.6, SPHERE: 0.0, CYLINDER: 0.33}


@dataclass
class Scene:
    room: np.ndarray  # (3,) width, height, depth in metres
    camera: np.ndarray  # (3,) position (world)
    rotation: np.ndarray  # (3, 3) camera -> world (columns: camera x right, y down, z forward in world)
    focal: float  # pixels
    solids: list[Solid] = field(default_factory=list)
    room_textures: list[dict] = field(default_factory=list)  # one per face of raycast.ROOM_FACES
    lights: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))  # (L, 3) positions
    intensities: np.ndarray = field(default_factory=lambda: np.zeros(0))  # (L,)
    ambient: float = 0.3
    noise: float = 2.0


def rot_y(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def rot_x(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])


def colour(rng: np.random.Generator, label: int | None, *, pale: bool = False) -> np.ndarray:
    """An RGB albedo in [0, 1]; 75 % of the time near the class hue."""
    hue = CLASS_HUE.get(label, None) if label is not None else None
    if hue is None or rng.random() < 0.25:
        hue = rng.random()
    else:
        hue = (hue + rng.normal(0, 0.04)) % 1.0
    sat = rng.uniform(0.05, 0.3) if pale else rng.uniform(0.35, 0.9)
    val = rng.uniform(0.65, 0.95) if pale else rng.uniform(0.45, 0.95)
    return np.array(colorsys.hsv_to_rgb(hue, sat, val))


def texture(rng: np.random.Generator, label: int | None, *, kinds: tuple[str, ...], pale: bool = False) -> dict:
    """A procedural 3-D texture: solid, checker, stripes or smooth noise, two colours, a scale in metres."""
    kind = kinds[rng.integers(len(kinds))]
    c1 = colour(rng, label, pale=pale)
    c2 = np.clip(c1 * rng.uniform(0.55, 0.85) + rng.normal(0, 0.05, 3), 0, 1)
    axis = rng.normal(size=3)
    waves = rng.normal(size=(3, 3))
    scale = rng.uniform(0.15, 0.5)
    return {"kind": kind, "c1": c1, "c2": c2, "scale": scale, "axis": axis / np.linalg.norm(axis),
            "waves": waves * (2 * np.pi / scale), "phase": rng.uniform(0, 2 * np.pi, 3)}


def _place(rng, scene: Scene, yaw: float, half_fov: float, radius: float, taken: list, max_dist: float):
    """A free floor position (x, z) inside the view for a footprint of `radius`, or None."""
    w, _, depth = scene.room
    for _ in range(20):
        dist = rng.uniform(1.8, max(1.9, min(max_dist, depth - scene.camera[2] - radius - 0.1)))
        ang = yaw + rng.uniform(-0.75, 0.75) * half_fov
        x = scene.camera[0] + dist * np.sin(ang)
        z = scene.camera[2] + dist * np.cos(ang)
        inside = abs(x) + radius < w / 2 - 0.05 and radius + 0.05 < z < depth - radius - 0.05
        free = all(np.hypot(x - tx, z - tz) > radius + tr + 0.1 for tx, tz, tr in taken)
        if inside and free:
            taken.append((x, z, radius))
            return x, z
    return None


def _limb(a: np.ndarray, b: np.ndarray, width: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Oriented box joining joints a and b: centre, axes (columns), half extents."""
    u = (b - a) / np.linalg.norm(b - a)
    ex = np.array([1.0, 0.0, 0.0]) - u[0] * u
    if np.linalg.norm(ex) < 1e-6:
        ex = np.array([0.0, 0.0, 1.0]) - u[2] * u
    ex /= np.linalg.norm(ex)
    ez = np.cross(ex, u)
    half = np.array([width / 2, np.linalg.norm(b - a) / 2 + width / 4, width / 2])
    return (a + b) / 2, np.stack([ex, u, ez], 1), half


def _direction(abduct: float, flex: float) -> np.ndarray:
    """A limb direction from straight down: swung forward (+z) by `flex`, then sideways (+x) by `abduct`."""
    v = np.array([0.0, -np.cos(flex), np.sin(flex)])
    c, s = np.cos(abduct), np.sin(abduct)
    return np.array([c * v[0] - s * v[1], s * v[0] + c * v[1], v[2]])


def figure(rng: np.random.Generator, x: float, z: float, facing: float, instance: int) -> list[Solid]:
    """A humanoid of simple solids in a random pose, standing at (x, z), facing yaw `facing`."""
    s = rng.uniform(0.9, 1.1)
    shirt = texture(rng, None, kinds=("solid", "stripes", "noise"))
    trousers = texture(rng, None, kinds=("solid", "noise"))
    skin = {"kind": "solid", "c1": np.array(colorsys.hsv_to_rgb(rng.uniform(0.03, 0.1), rng.uniform(0.3, 0.6),
                                                               rng.uniform(0.45, 0.95)))}
    parts: list[tuple[str, str, np.ndarray, np.ndarray, np.ndarray, dict]] = []  # name, kind, centre, axes, size
    torso_c = np.array([0.0, 1.18, 0.0]) * s
    parts.append(("torso", "box", torso_c, np.eye(3), np.array([0.2, 0.29, 0.12]) * s, shirt))
    parts.append(("head", "sphere", np.array([0.0, 1.60, 0.0]) * s, np.eye(3), np.array([0.13 * s]), skin))
    for side, sign in (("l", -1.0), ("r", 1.0)):  # figure's left is local -x
        shoulder = np.array([sign * 0.27, 1.41, 0.0]) * s
        flex, elbow = rng.uniform(-0.6, 1.2), rng.uniform(0.0, 1.6)
        elbow_p = shoulder + 0.31 * s * _direction(sign * rng.uniform(0.1, 1.2), flex)
        hand = elbow_p + 0.29 * s * _direction(sign * rng.uniform(0.0, 0.6), flex + elbow)
        hip = np.array([sign * 0.1, 0.92, 0.0]) * s
        hip_flex, knee = rng.uniform(-0.4, 0.6), rng.uniform(0.0, 0.8)
        knee_p = hip + 0.46 * s * _direction(sign * rng.uniform(0.0, 0.2), hip_flex)
        foot = knee_p + 0.46 * s * _direction(sign * rng.uniform(0.0, 0.15), hip_flex - knee)
        for name, a, b, width, tex in ((f"{side}uarm", shoulder, elbow_p, 0.12, shirt),
                                       (f"{side}larm", elbow_p, hand, 0.10, skin),
                                       (f"{side}uleg", hip, knee_p, 0.15, trousers),
                                       (f"{side}lleg", knee_p, foot, 0.13, trousers)):
            c, ax, half = _limb(a, b, width * s)
            parts.append((name, "box", c, ax, half, tex))
    lowest = min(c[1] - np.abs(ax * h).sum(1)[1] for name, kind, c, ax, h, _ in parts if kind == "box")
    world = rot_y(facing)
    offset = np.array([x, -lowest, z])
    return [Solid(kind=kind, center=world @ c + offset, size=h, axes=world @ ax, label=PERSON,
                  instance=instance, part=name, texture=tex) for name, kind, c, ax, h, tex in parts]


def sample_scene(rng: np.random.Generator, size: tuple[int, int]) -> Scene:
    """Draw a room, a camera inside it, 2-7 objects on the floor and, in half of the scenes, 1-2 figures."""
    height, width = size
    room = np.array([rng.uniform(4.0, 8.0), rng.uniform(2.4, 3.2), rng.uniform(3.0, 9.0)])
    camera = np.array([rng.uniform(-0.25, 0.25) * room[0], rng.uniform(1.2, 1.7), rng.uniform(0.2, 0.6)])
    yaw, pitch = rng.uniform(-0.35, 0.35), rng.uniform(0.08, 0.4)
    # camera axes in world: x right, y down, z forward; pitched down by `pitch`, then turned by `yaw`
    rotation = rot_y(yaw) @ rot_x(pitch) @ np.diag([1.0, -1.0, 1.0])
    half_fov = np.deg2rad(rng.uniform(55.0, 70.0)) / 2
    focal = (width / 2) / np.tan(half_fov)
    scene = Scene(room=room, camera=camera, rotation=rotation, focal=float(focal))
    floor_tex = texture(rng, FLOOR, kinds=("checker", "stripes", "noise"))
    wall_tex = [texture(rng, WALL, kinds=("solid", "noise", "stripes"), pale=True) for _ in range(4)]
    ceiling_tex = texture(rng, CEILING, kinds=("solid",), pale=True)
    scene.room_textures = [wall_tex[0], wall_tex[1], floor_tex, ceiling_tex, wall_tex[2], wall_tex[3]]
    taken: list = []
    instance = 7  # 1..6 are the room faces
    for _ in range(int(rng.integers(2, 8))):
        kind = ("box", "sphere", "cylinder")[rng.integers(3)]
        if kind == "box":
            half = np.array([rng.uniform(0.2, 0.55), rng.uniform(0.2, 0.55), rng.uniform(0.2, 0.55)])
            radius, label = float(np.hypot(half[0], half[2])), BOX
        elif kind == "sphere":
            r = rng.uniform(0.25, 0.5)
            half, radius, label = np.array([r]), r, SPHERE
        else:
            r, h = rng.uniform(0.2, 0.4), rng.uniform(0.5, 1.3)
            half, radius, label = np.array([r, h]), r, CYLINDER
        spot = _place(rng, scene, yaw, half_fov, radius, taken, max_dist=6.5)
        tex = texture(rng, label, kinds=("solid", "checker", "stripes", "noise"))
        if spot is None:
            continue
        x, z = spot
        if kind == "box":
            s = Solid("box", np.array([x, half[1], z]), half, rot_y(rng.uniform(0, np.pi)), label, instance)
        elif kind == "sphere":
            s = Solid("sphere", np.array([x, half[0], z]), half, label=label, instance=instance)
        else:
            s = Solid("cylinder", np.array([x, 0.0, z]), half, label=label, instance=instance)
        s.texture = tex
        scene.solids.append(s)
        instance += 1
    if rng.random() < 0.5:
        for _ in range(int(rng.integers(1, 3))):
            spot = _place(rng, scene, yaw, half_fov, 0.45, taken, max_dist=4.5)
            facing = np.arctan2(camera[0] - (spot or (0, 0))[0], camera[2] - (spot or (0, 0))[1])
            facing += rng.uniform(-1.0, 1.0)
            if spot is None:
                continue
            scene.solids += figure(rng, spot[0], spot[1], facing, instance)
            instance += 1
    n_lights = int(rng.integers(1, 3))
    scene.lights = np.stack([np.array([rng.uniform(-0.4, 0.4) * room[0], room[1] - 0.15,
                                       rng.uniform(0.5, 0.9) * room[2]]) for _ in range(n_lights)])
    scene.intensities = rng.uniform(0.6, 1.0, n_lights) / np.sqrt(n_lights)
    scene.ambient = float(rng.uniform(0.2, 0.35))
    scene.noise = float(rng.uniform(1.0, 3.0))
    return scene
