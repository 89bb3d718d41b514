"""Random street scenes for the synthetic Cityscapes-3D data: a road with sidewalks, building rows, vehicles.

Everything is in the vehicle frame V (ISO 8855: x forward, y left, z up, ground at z = 0) and drawn from one
`numpy.random.Generator`, so (seed, index) fixes the scene. The camera is the real Cityscapes one (the `sensor` block
of a released gtBbox3d file) with a little pitch jitter, scaled to the image size.
"""

from __future__ import annotations

import colorsys
from dataclasses import dataclass, field

import numpy as np

from ..geometry import CITYSCAPES_SENSOR, Camera, quaternion_to_matrix, yaw_quaternion
from .raycast import Solid

CITYSCAPES_SIZE = (1024, 2048)  # the camera below is that of CITYSCAPES_SIZE images

# Cityscapes labelIds the scenes use.
ROAD, SIDEWALK, RAIL_TRACK, BUILDING, SKY = 7, 8, 10, 11, 23
# The six detection classes: labelId, size prior L, W, H (metres), relative frequency.
VEHICLES: dict[str, tuple[int, tuple[float, float, float], float]] = {
    "car": (26, (4.2, 1.8, 1.5), 0.5),
    "truck": (27, (7.0, 2.5, 3.0), 0.12),
    "bus": (28, (11.0, 2.6, 3.2), 0.1),
    "train": (31, (20.0, 3.0, 3.8), 0.06),
    "motorcycle": (32, (2.0, 0.8, 1.5), 0.11),
    "bicycle": (33, (1.8, 0.6, 1.6), 0.11),
}
VEHICLE_HUE = {"car": None, "truck": 0.08, "bus": 0.58, "train": 0.33, "motorcycle": 0.0, "bicycle": 0.83}
DISTANCE_RANGE = (8.0, 70.0)  # metres from the V origin to the vehicle centre in the ground plane


@dataclass
class Vehicle:
    label: str
    label_id: int
    instance_id: int  # labelId * 1000 + k, as gtFine_instanceIds and the JSON store it
    center: np.ndarray  # (3,) V
    dimensions: np.ndarray  # (3,) L, W, H
    yaw: float
    colour: np.ndarray  # (3,) body albedo
    window: np.ndarray  # (3,) albedo of the window band

    @property
    def quaternion(self) -> np.ndarray:  # [w, x, y, z] in V
        return yaw_quaternion(np.array([self.yaw]))[0]

    def solid(self) -> Solid:
        axes = quaternion_to_matrix(self.quaternion)  # columns: forward, left, up
        return Solid("box", self.center, self.dimensions / 2, axes, label=self.label_id, instance=self.instance_id)


@dataclass
class StreetScene:
    camera: Camera  # in the pixels of the rendered image
    road: tuple[float, float]  # (centre y, half width) of the road
    rail: tuple[float, float] | None  # (centre y, half width) of a tram track in the road, or None
    sidewalk: float  # sidewalk width beyond the road edge
    back: float  # x of the facade closing the street
    road_albedo: float
    sidewalk_albedo: np.ndarray
    buildings: list[Solid] = field(default_factory=list)  # texture dict holds colour and window pattern
    curbs: list[Solid] = field(default_factory=list)  # the two raised sidewalks
    vehicles: list[Vehicle] = field(default_factory=list)
    sun: np.ndarray = field(default_factory=lambda: np.array([0.3, 0.4, 0.87]))  # unit vector towards the sun (V)
    ambient: float = 0.45
    noise: float = 2.0

    @property
    def solids(self) -> list[Solid]:
        return self.curbs + self.buildings + [v.solid() for v in self.vehicles]


def scene_camera(rng: np.random.Generator, size: tuple[int, int]) -> Camera:
    """The released camera, pitched by up to +-0.015 rad about its own left axis and scaled to (H, W)."""
    base = Camera.from_json(CITYSCAPES_SENSOR)
    position = base.position_V
    jitter = rng.uniform(-0.015, 0.015)
    c, s = np.cos(jitter), np.sin(jitter)
    pitch = np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])  # about C's y axis (left): nose up or down
    rotation = pitch @ base.sensor_T_ISO_8855[:, :3]
    transform = np.concatenate([rotation, (-rotation @ position)[:, None]], 1)
    camera = Camera(base.fx, base.fy, base.u0, base.v0, base.baseline, transform)
    return camera.scaled(size[1] / CITYSCAPES_SIZE[1], size[0] / CITYSCAPES_SIZE[0])


def _colour(rng: np.random.Generator, hue: float | None, sat: tuple[float, float],
            val: tuple[float, float]) -> np.ndarray:
    hue = rng.random() if hue is None or rng.random() < 0.2 else (hue + rng.normal(0, 0.03)) % 1.0
    return np.array(colorsys.hsv_to_rgb(hue, rng.uniform(*sat), rng.uniform(*val)))


def _footprint(center: np.ndarray, dims: np.ndarray, yaw: float, margin: float) -> np.ndarray:
    """The 4 ground-plane corners (4, 2) of a box grown by ``margin``."""
    c, s = np.cos(yaw), np.sin(yaw)
    half = np.array([[1, 1], [1, -1], [-1, -1], [-1, 1]]) * (dims[:2] / 2 + margin)
    return center[:2] + half @ np.array([[c, s], [-s, c]])


def _overlap(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two convex quadrilaterals (4, 2) overlap (separating axis test on their edge normals)."""
    for poly in (a, b):
        edges = np.roll(poly, -1, 0) - poly
        normals = np.stack([-edges[:, 1], edges[:, 0]], 1)
        pa, pb = a @ normals.T, b @ normals.T  # (4, 4) projections
        if ((pa.max(0) < pb.min(0)) | (pb.max(0) < pa.min(0))).any():
            return False
    return True


def _vehicles(rng: np.random.Generator, scene: StreetScene, count: int) -> list[Vehicle]:
    """Up to ``count`` vehicles on the road, one per distance stratum of DISTANCE_RANGE (so their 5 m distance bins
    differ), non-overlapping on the ground."""
    names = list(VEHICLES)
    freq = np.array([VEHICLES[n][2] for n in names])
    edges = np.linspace(*DISTANCE_RANGE, count + 1)
    strata = rng.permutation(count)
    road_y, road_half = scene.road
    taken: list[np.ndarray] = []
    out: list[Vehicle] = []
    for k, stratum in enumerate(strata):
        name = names[rng.choice(len(names), p=freq / freq.sum())]
        label_id, prior, _ = VEHICLES[name]
        dims = np.array(prior) * rng.uniform(0.88, 1.12, 3)
        along = rng.random() < 0.8  # driving along the road, either way; otherwise any heading
        yaw = (np.pi * rng.integers(2) + rng.normal(0, 0.12)) if along else rng.uniform(-np.pi, np.pi)
        yaw = float(np.angle(np.exp(1j * yaw)))
        colour = _colour(rng, VEHICLE_HUE[name], (0.4, 0.9), (0.35, 0.95))
        window = np.clip(colour * 0.25 + np.array([0.08, 0.1, 0.14]), 0, 1)
        for _ in range(25):
            dist = rng.uniform(edges[stratum], edges[stratum + 1])
            reach = road_half - 0.3 - dims[1] / 2
            y = road_y + rng.uniform(-reach, reach) if reach > 0 else road_y
            if abs(y) >= dist:
                continue
            center = np.array([np.sqrt(dist**2 - y**2), y, dims[2] / 2])
            foot = _footprint(center, dims, yaw, margin=0.3)
            if any(_overlap(foot, other) for other in taken):
                continue
            taken.append(foot)
            out.append(Vehicle(name, label_id, label_id * 1000 + k, center, dims, yaw, colour, window))
            break
    return out


def _building_row(rng: np.random.Generator, side: float, line: float, back: float, start: float) -> list[Solid]:
    """Consecutive buildings along one side of the street (``side`` +1 left, -1 right), facade at |y| = line."""
    out: list[Solid] = []
    x = start
    while x < back:
        length = rng.uniform(8.0, 26.0)
        height, depth = rng.uniform(6.0, 20.0), rng.uniform(8.0, 14.0)
        setback = rng.uniform(0.0, 4.0)
        y = side * (line + setback + depth / 2)
        out.append(Solid("box", np.array([x + length / 2, y, height / 2]),
                         np.array([length / 2, depth / 2, height / 2]), label=BUILDING, texture=_facade(rng)))
        x += length
    return out


def _facade(rng: np.random.Generator) -> dict:
    wall = _colour(rng, rng.choice([0.07, 0.1, 0.12, 0.6]), (0.05, 0.35), (0.45, 0.85))
    glass = np.array([0.12, 0.15, 0.2]) + rng.uniform(0, 0.1)
    return {"wall": wall, "glass": glass, "pitch": rng.uniform(2.5, 4.0), "storey": rng.uniform(2.8, 3.6)}


def sample_street(rng: np.random.Generator, size: tuple[int, int], *, vehicles: bool = True) -> StreetScene:
    """Draw a street: the camera, a road 7-14 m wide with 2.5-5 m sidewalks, building rows on both sides and a
    facade closing the street 90-150 m ahead, a tram track in a third of the scenes, and 3-8 vehicles (none when
    ``vehicles`` is False)."""
    camera = scene_camera(rng, size)
    road = (rng.uniform(-1.0, 1.0), rng.uniform(3.5, 7.0))
    rail = None
    if rng.random() < 1 / 3:
        rail = (road[0] + rng.uniform(-0.4, 0.4) * road[1], 0.75)
    scene = StreetScene(camera=camera, road=road, rail=rail, sidewalk=rng.uniform(2.5, 5.0),
                        back=rng.uniform(90.0, 150.0), road_albedo=rng.uniform(0.22, 0.34),
                        sidewalk_albedo=_colour(rng, 0.1, (0.02, 0.2), (0.55, 0.75)))
    curb_h = 0.15
    for side in (1.0, -1.0):
        edge = road[0] + side * road[1]
        y = edge + side * scene.sidewalk / 2
        scene.curbs.append(Solid("box", np.array([scene.back / 2 - 5.0, y, curb_h / 2]),
                                 np.array([scene.back / 2 + 5.0, scene.sidewalk / 2, curb_h / 2]), label=SIDEWALK))
        line = abs(edge + side * scene.sidewalk)
        scene.buildings += _building_row(rng, side, line, scene.back, start=rng.uniform(-12.0, -4.0))
    width = 2 * (road[1] + scene.sidewalk) + 60.0
    height = rng.uniform(8.0, 20.0)
    scene.buildings.append(Solid("box", np.array([scene.back + 5.0, road[0], height / 2]),
                                 np.array([5.0, width / 2, height / 2]), label=BUILDING, texture=_facade(rng)))
    if vehicles:
        scene.vehicles = _vehicles(rng, scene, int(rng.integers(3, 9)))
    azimuth, elevation = rng.uniform(-np.pi, np.pi), rng.uniform(0.4, 1.1)
    scene.sun = np.array([np.cos(elevation) * np.cos(azimuth), np.cos(elevation) * np.sin(azimuth), np.sin(elevation)])
    scene.ambient = float(rng.uniform(0.4, 0.55))
    scene.noise = float(rng.uniform(1.0, 3.0))
    return scene
