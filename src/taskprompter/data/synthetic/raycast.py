"""Analytic, vectorised ray intersections for the synthetic scenes (one ray per pixel, all rays at once).

World frame: x right, y up, z into the room; the room is the box [-w/2, w/2] x [0, h] x [0, d].
Rays are `o + t d`; a primitive returns t per ray (inf on a miss), and, from hit points, the world normal
and the coordinates used to texture it. Camera rays have d_z = 1 in the camera frame, so t is the depth z.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

EPS = 1e-4


@dataclass
class Solid:
    """A scene solid and the labels its pixels get."""

    kind: str  # "sphere" | "box" (oriented box) | "cylinder" (vertical, standing on the floor)
    center: np.ndarray  # (3,) sphere/box centre; cylinder: (x, 0, z) of its base
    size: np.ndarray  # sphere (r,); box half extents (3,) along its axes; cylinder (r, height)
    axes: np.ndarray = field(default_factory=lambda: np.eye(3))  # (3, 3) box axes as columns (world)
    label: int = 0  # synthetic class index
    instance: int = 0
    part: str = ""  # PASCAL-Part name on figures ("head", "luarm", ...)
    texture: dict = field(default_factory=dict)


def intersect(s: Solid, o: np.ndarray, d: np.ndarray) -> np.ndarray:
    """Nearest t > EPS of rays o + t d with solid s; inf where missed. o (3,) or (N, 3), d (N, 3) -> (N,)."""
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        if s.kind == "sphere":
            oc = o - s.center
            a = np.einsum("ij,ij->i", d, d)
            b = (oc * d).sum(-1)
            c = (oc * oc).sum(-1) - s.size[0] ** 2
            disc = b * b - a * c
            root = np.sqrt(np.maximum(disc, 0.0))
            t1, t2 = (-b - root) / a, (-b + root) / a
            t = np.where(t1 > EPS, t1, np.where(t2 > EPS, t2, np.inf))
            return np.where(disc >= 0, t, np.inf)
        if s.kind == "box":
            ol = (o - s.center) @ s.axes  # (N, 3) in box coordinates
            dl = d @ s.axes
            dl = np.where(dl == 0, 1e-12, dl)
            t1, t2 = (-s.size - ol) / dl, (s.size - ol) / dl
            tn = np.minimum(t1, t2).max(-1)
            tf = np.maximum(t1, t2).min(-1)
            hit = tf >= np.maximum(tn, EPS)
            return np.where(hit, np.where(tn > EPS, tn, tf), np.inf)
        if s.kind == "cylinder":
            r, height = s.size
            ox, oy, oz = np.moveaxis(np.broadcast_to(o - s.center, d.shape), -1, 0)
            dx, dy, dz = d[:, 0], d[:, 1], d[:, 2]
            a = dx * dx + dz * dz
            b = ox * dx + oz * dz
            c = ox * ox + oz * oz - r * r
            disc = b * b - a * c
            ts = (-b - np.sqrt(np.maximum(disc, 0.0))) / a
            ys = oy + ts * dy
            side = (disc >= 0) & (ts > EPS) & (ys >= 0) & (ys <= height)
            tc = (height - oy) / dy
            cap = (tc > EPS) & ((ox + tc * dx) ** 2 + (oz + tc * dz) ** 2 <= r * r)
            return np.minimum(np.where(side, ts, np.inf), np.where(cap, tc, np.inf))
    raise ValueError(f"unknown solid kind {s.kind!r}")


def surface(s: Solid, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Outward unit normal (world) and texture coordinates (solid-local) at hit points p (M, 3)."""
    if s.kind == "sphere":
        local = p - s.center
        return local / s.size[0], local
    if s.kind == "box":
        local = (p - s.center) @ s.axes  # (M, 3)
        face = np.abs(local / s.size).argmax(-1)  # the slab the point lies on
        n_local = np.zeros_like(local)
        n_local[np.arange(len(p)), face] = np.sign(local[np.arange(len(p)), face])
        return n_local @ s.axes.T, local
    r, height = s.size
    local = p - s.center
    on_cap = local[:, 1] >= height - 1e-5
    n = np.stack([local[:, 0] / r, np.zeros(len(p)), local[:, 2] / r], -1)
    n[on_cap] = (0.0, 1.0, 0.0)
    return n, local


# Room faces in the order of `room_hit`'s face index, with their inward normals.
ROOM_FACES = ("left", "right", "floor", "ceiling", "front", "back")
ROOM_NORMALS = np.array([[1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1]], dtype=np.float64)


def room_hit(o: np.ndarray, d: np.ndarray, room: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rays from inside the room box (w, h, depth) -> exit t (N,) and face index (N,) into ROOM_FACES."""
    lo = np.array([-room[0] / 2, 0.0, 0.0])
    hi = np.array([room[0] / 2, room[1], room[2]])
    with np.errstate(divide="ignore", invalid="ignore"):
        bound = np.where(d > 0, hi, lo)
        t_axis = np.where(d != 0, (bound - o) / d, np.inf)  # (N, 3)
    axis = t_axis.argmin(-1)
    t = t_axis[np.arange(len(d)), axis]
    comp = d[np.arange(len(d)), axis] > 0  # moving towards the upper bound of that axis
    face = 2 * axis + comp  # left/right, floor/ceiling, front/back
    return t, face
