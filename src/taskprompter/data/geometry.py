"""Cityscapes-3D camera geometry in NumPy: the frames V -> C -> S -> I, 3-D boxes, projection, amodal 2-D boxes.

Frames (cityscapesScripts' `box3dImageTransform`, swin-cityscapes3d.md section 2):

    V  vehicle, ISO 8855: x forward, y left, z up; origin on the ground below the rear axle. Boxes are stored here.
    C  camera centre with V's axes:       p_C = T p_V   (T = sensor_T_ISO_8855, 3x4, from the JSON `sensor` block)
    S  camera centre, x right, y down, z forward (optical axis):  p_S = KMUL p_C
    I  pixels: (u, v) = (fx x_S / z_S + u0, fy y_S / z_S + v0); pixel (i, j) of the image sits at u = i, v = j.

A box is (centre, dimensions L x W x H, rotation); its own axes are length (forward), width (left), height (up), so
in S its rotation is R_S = KMUL R_T R_V KMUL^T. Everything takes n boxes at once (leading dimension n) and runs in
float64; the round trips V -> S -> V and S -> I -> S are exact to float precision.

The three angles that the released detector regresses are the intrinsic 'ZXY' Euler angles of the S-frame
rotation (about z_S, then x_S, then y_S). The released code read cityscapesScripts' scalar-first quaternion
[w, x, y, z] as scalar-last [x, y, z, w] (swin-cityscapes3d.md sections 0.8 and 6): ``euler="faithful"`` reproduces
that (only needed to load the released checkpoint), ``euler="fixed"`` reads it correctly, so that a car's yaw sits
in the third angle (the default for new training).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

KMUL = np.array([[0.0, -1.0, 0.0], [0.0, 0.0, -1.0], [1.0, 0.0, 0.0]])  # C (ISO axes) -> S (x right, y down, z fwd)
CORNER_NAMES: tuple[str, ...] = ("BLB", "BRB", "FRB", "FLB", "BLT", "BRT", "FRT", "FLT")  # back/front, left/right,
# bottom/top: the official order; the signs below are of (L, W, H) / 2 along the box's forward, left, up axes
CORNER_SIGNS = np.array([[-1, 1, -1], [-1, -1, -1], [1, -1, -1], [1, 1, -1],
                         [-1, 1, 1], [-1, -1, 1], [1, -1, 1], [1, 1, 1]], dtype=np.float64)  # (8, 3)
BOX_EDGES = np.array([[0, 1], [1, 2], [2, 3], [3, 0], [4, 5], [5, 6], [6, 7], [7, 4],
                      [0, 4], [1, 5], [2, 6], [3, 7]])  # (12, 2) corner pairs: bottom ring, top ring, pillars
NEAR_PLANE = 0.01  # metres: box faces are clipped at z_S > 1 cm before projection (the official amodal box)
EULER_MODES = ("fixed", "faithful")
# The sensor block of a released Cityscapes-3D annotation (2048 x 1024): camera 1.70 m ahead of the rear axle,
# 0.10 m left, 1.22 m above the ground, pitched down by 2.2 degrees. `Predictor` assumes it (scaled to the image)
# for images that come without a camera; the synthetic street scenes are rendered with it.
CITYSCAPES_SENSOR = {
    "fx": 2262.52, "fy": 2265.3017905988554, "u0": 1096.98, "v0": 513.137, "baseline": 0.209313,
    "sensor_T_ISO_8855": [
        [0.9990881051503779, -0.01948468779721943, -0.03799085532693703, -1.6501524664770573],
        [0.019498764210995674, 0.9998098810245096, 0.0, -0.1331288872611436],
        [0.03798363254444427, -0.0007407747301939942, 0.9992780868764849, -1.2836173638418473],
    ],
}  # fmt: skip
SENSOR_KEYS = ("fx", "fy", "u0", "v0", "baseline", "sensor_T_ISO_8855")


@dataclass(frozen=True)
class Camera:
    """One image's camera, as the JSON `sensor` block stores it: intrinsics in pixels of that image, the stereo
    baseline in metres, and ``sensor_T_ISO_8855`` (3, 4), the rigid transform from V to C."""

    fx: float
    fy: float
    u0: float
    v0: float
    baseline: float
    sensor_T_ISO_8855: np.ndarray = field(repr=False)  # (3, 4) float64

    @property
    def K(self) -> np.ndarray:  # (3, 3)
        return np.array([[self.fx, 0.0, self.u0], [0.0, self.fy, self.v0], [0.0, 0.0, 1.0]])

    @property
    def T(self) -> np.ndarray:  # (4, 4) homogeneous V -> C
        out = np.eye(4)
        out[:3] = self.sensor_T_ISO_8855
        return out

    @property
    def rotation(self) -> np.ndarray:
        """The rotation part of V -> C as the nearest proper rotation (cityscapesScripts converts it to a
        quaternion, which does the same)."""
        return quaternion_to_matrix(matrix_to_quaternion(self.sensor_T_ISO_8855[:, :3]))

    @property
    def position_V(self) -> np.ndarray:
        """The camera centre in V (3,)."""
        return np.linalg.solve(self.sensor_T_ISO_8855[:, :3], -self.sensor_T_ISO_8855[:, 3])

    @classmethod
    def from_json(cls, sensor: Mapping[str, Any]) -> Camera:
        """From a gtBbox3d ``sensor`` block. Raises ValueError naming the missing or malformed key."""
        if not isinstance(sensor, Mapping):
            raise ValueError(f"'sensor' must be an object with keys {list(SENSOR_KEYS)}, got {type(sensor).__name__}")
        values: dict[str, Any] = {}
        for key in SENSOR_KEYS:
            if key not in sensor:
                raise ValueError(f"'sensor' has no key {key!r}")
            try:
                value = np.asarray(sensor[key], dtype=np.float64)
            except (TypeError, ValueError) as err:
                raise ValueError(f"'sensor.{key}' is not numeric: {sensor[key]!r}") from err
            want = (3, 4) if key == "sensor_T_ISO_8855" else ()
            if value.shape != want or not np.isfinite(value).all():
                raise ValueError(f"'sensor.{key}' must be {'a 3x4 matrix' if want else 'a finite number'}, "
                                 f"got {sensor[key]!r}")
            values[key] = value if want else float(value)
        if values["fx"] <= 0 or values["fy"] <= 0:
            raise ValueError(f"'sensor.fx' and 'sensor.fy' must be positive, got {values['fx']}, {values['fy']}")
        return cls(**values)

    def to_json(self) -> dict[str, Any]:
        """The ``sensor`` block (plain Python numbers: JSON-ready and exact)."""
        return {"fx": self.fx, "fy": self.fy, "u0": self.u0, "v0": self.v0, "baseline": self.baseline,
                "sensor_T_ISO_8855": np.asarray(self.sensor_T_ISO_8855, dtype=np.float64).tolist()}

    def scaled(self, sx: float, sy: float) -> Camera:
        """The same camera for the image resized by (sx, sy) with half-pixel centres, as `transforms.resize` does:
        pixel i of the new image covers (i + 0.5) / s - 0.5 of the old one, so u0' = (u0 + 0.5) sx - 0.5."""
        return Camera(fx=self.fx * sx, fy=self.fy * sy, u0=(self.u0 + 0.5) * sx - 0.5, v0=(self.v0 + 0.5) * sy - 0.5,
                      baseline=self.baseline, sensor_T_ISO_8855=np.array(self.sensor_T_ISO_8855, dtype=np.float64))

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, Camera) and (self.fx, self.fy, self.u0, self.v0, self.baseline)
                == (other.fx, other.fy, other.u0, other.v0, other.baseline)
                and np.array_equal(self.sensor_T_ISO_8855, other.sensor_T_ISO_8855))

    __hash__ = None  # type: ignore[assignment]  # mutable array inside


# -- rotations ------------------------------------------------------------------------------------------------------
def quaternion_to_matrix(q: np.ndarray) -> np.ndarray:
    """Scalar-first quaternions [w, x, y, z] (..., 4) -> rotation matrices (..., 3, 3); q need not be unit."""
    q = np.asarray(q, dtype=np.float64)
    w, x, y, z = np.moveaxis(q / np.linalg.norm(q, axis=-1, keepdims=True), -1, 0)
    return np.stack([
        np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)], -1),
        np.stack([2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)], -1),
        np.stack([2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], -1),
    ], -2)  # fmt: skip


def matrix_to_quaternion(m: np.ndarray) -> np.ndarray:
    """Rotation matrices (..., 3, 3) -> unit quaternions [w, x, y, z] (..., 4) with w >= 0 (Shepperd's method:
    the largest of the four diagonal combinations picks a well-conditioned formula)."""
    m = np.asarray(m, dtype=np.float64)
    m00, m01, m02 = m[..., 0, 0], m[..., 0, 1], m[..., 0, 2]
    m10, m11, m12 = m[..., 1, 0], m[..., 1, 1], m[..., 1, 2]
    m20, m21, m22 = m[..., 2, 0], m[..., 2, 1], m[..., 2, 2]
    candidates = np.stack([  # each row: 4 * (w, x, y, z) * (the component that row divides by)
        np.stack([1 + m00 + m11 + m22, m21 - m12, m02 - m20, m10 - m01], -1),
        np.stack([m21 - m12, 1 + m00 - m11 - m22, m01 + m10, m02 + m20], -1),
        np.stack([m02 - m20, m01 + m10, 1 - m00 + m11 - m22, m12 + m21], -1),
        np.stack([m10 - m01, m02 + m20, m12 + m21, 1 - m00 - m11 + m22], -1),
    ], -2)  # (..., 4, 4)
    best = np.argmax(np.stack([1 + m00 + m11 + m22, 1 + m00 - m11 - m22, 1 - m00 + m11 - m22,
                               1 - m00 - m11 + m22], -1), axis=-1)
    q = np.take_along_axis(candidates, best[..., None, None], axis=-2)[..., 0, :]
    q = q / np.linalg.norm(q, axis=-1, keepdims=True)
    return np.where(q[..., :1] < 0, -q, q)


def yaw_quaternion(yaw: np.ndarray) -> np.ndarray:
    """Rotations about V's z axis (up) by ``yaw`` (n,) radians as [w, x, y, z] (n, 4): 0 faces forward (+x),
    pi / 2 faces left (+y)."""
    yaw = np.asarray(yaw, dtype=np.float64)
    zero = np.zeros_like(yaw)
    return np.stack([np.cos(yaw / 2), zero, zero, np.sin(yaw / 2)], -1)


def _axis_rotation(axis: int, angle: np.ndarray) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    one, zero = np.ones_like(angle), np.zeros_like(angle)
    if axis == 0:
        rows = [[one, zero, zero], [zero, c, -s], [zero, s, c]]
    elif axis == 1:
        rows = [[c, zero, s], [zero, one, zero], [-s, zero, c]]
    else:
        rows = [[c, -s, zero], [s, c, zero], [zero, zero, one]]
    return np.stack([np.stack(r, -1) for r in rows], -2)


def _check_euler(euler: str) -> None:
    if euler not in EULER_MODES:
        raise ValueError(f"euler must be one of {EULER_MODES}, got {euler!r}")


def sensor_angles(q_S: np.ndarray, *, euler: str = "fixed") -> np.ndarray:
    """The released detector's three rotation targets of S-frame rotations [w, x, y, z] (n, 4) -> (n, 3).

    They are the intrinsic 'ZXY' Euler angles (a, b, c) with R = Rz(a) Rx(b) Ry(c), a and c in [-pi, pi], b in
    [-pi/2, pi/2] (scipy's ``Rotation.as_euler('ZXY')``). ``euler="faithful"`` first reorders the quaternion to
    [z, w, x, y], which is what reading [w, x, y, z] as scalar-last does: then a car with yaw psi gets about
    [+-pi, 0, pi - psi] instead of [0, 0, -psi]."""
    _check_euler(euler)
    q = np.asarray(q_S, dtype=np.float64)
    if euler == "faithful":
        q = q[..., [3, 0, 1, 2]]
    r = quaternion_to_matrix(q)
    b = np.arcsin(np.clip(r[..., 2, 1], -1.0, 1.0))
    a = np.arctan2(-r[..., 0, 1], r[..., 1, 1])
    c = np.arctan2(-r[..., 2, 0], r[..., 2, 2])
    locked = np.abs(r[..., 2, 1]) > 1 - 1e-12  # gimbal lock: like scipy, put everything into a, set c = 0
    a = np.where(locked, np.arctan2(r[..., 1, 0], r[..., 0, 0]), a)
    c = np.where(locked, 0.0, c)
    return np.stack([a, b, c], -1)


def quaternion_from_sensor_angles(angles: np.ndarray, *, euler: str = "fixed") -> np.ndarray:
    """Inverse of `sensor_angles`: (n, 3) -> S-frame rotations [w, x, y, z] (n, 4) (up to the sign of q)."""
    _check_euler(euler)
    a = np.asarray(angles, dtype=np.float64)
    r = _axis_rotation(2, a[..., 0]) @ _axis_rotation(0, a[..., 1]) @ _axis_rotation(1, a[..., 2])
    q = matrix_to_quaternion(r)
    return q[..., [1, 2, 3, 0]] if euler == "faithful" else q


# -- points and boxes between frames -------------------------------------------------------------------------------
def vehicle_to_sensor(points_V: np.ndarray, camera: Camera) -> np.ndarray:
    """Points (..., 3) in V -> S (camera: x right, y down, z forward)."""
    p = np.asarray(points_V, dtype=np.float64)
    t = camera.sensor_T_ISO_8855
    return (p @ t[:, :3].T + t[:, 3]) @ KMUL.T


def sensor_to_vehicle(points_S: np.ndarray, camera: Camera) -> np.ndarray:
    """Points (..., 3) in S -> V (the inverse of the full 4x4 transform, as cityscapesScripts inverts it)."""
    p_C = np.asarray(points_S, dtype=np.float64) @ KMUL  # KMUL^T p, row vectors
    t_inv = np.linalg.inv(camera.T)
    return p_C @ t_inv[:3, :3].T + t_inv[:3, 3]


def sensor_to_image(points_S: np.ndarray) -> np.ndarray:
    """Points (..., 3) in S -> (..., 3) = (x / z, y / z, z): normalised coordinates and depth (use `project`)."""
    p = np.asarray(points_S, dtype=np.float64)
    return np.concatenate([p[..., :2] / p[..., 2:3], p[..., 2:3]], -1)


def project(points_S: np.ndarray, camera: Camera) -> np.ndarray:
    """Points (..., 3) in S -> (..., 3) = (u, v, z_S): pixel coordinates and the depth along the optical axis."""
    n = sensor_to_image(points_S)
    return np.stack([camera.fx * n[..., 0] + camera.u0, camera.fy * n[..., 1] + camera.v0, n[..., 2]], -1)


def unproject(uvz: np.ndarray, camera: Camera) -> np.ndarray:
    """(u, v, z_S) (..., 3) -> points (..., 3) in S: the inverse of `project` (the decoder's K^-1 (u, v, depth))."""
    uvz = np.asarray(uvz, dtype=np.float64)
    z = uvz[..., 2]
    return np.stack([(uvz[..., 0] - camera.u0) / camera.fx * z, (uvz[..., 1] - camera.v0) / camera.fy * z, z], -1)


def rotation_to_sensor(rotation_V: np.ndarray, camera: Camera) -> np.ndarray:
    """Box rotations (n, 3, 3) in V -> S: R_S = KMUL R_T R_V KMUL^T."""
    return KMUL @ camera.rotation @ np.asarray(rotation_V, dtype=np.float64) @ KMUL.T


def rotation_to_vehicle(rotation_S: np.ndarray, camera: Camera) -> np.ndarray:
    """Box rotations (n, 3, 3) in S -> V: R_V = R_T^T KMUL^T R_S KMUL."""
    return camera.rotation.T @ KMUL.T @ np.asarray(rotation_S, dtype=np.float64) @ KMUL


def box_corners(center: np.ndarray, dimensions: np.ndarray, rotation: np.ndarray) -> np.ndarray:
    """The 8 corners (n, 8, 3) of boxes in V (centre (n, 3), dimensions L, W, H (n, 3), rotation (n, 3, 3)), in the
    official order BLB, BRB, FRB, FLB, BLT, BRT, FRT, FLT (`CORNER_NAMES`)."""
    offsets = CORNER_SIGNS * (np.asarray(dimensions, dtype=np.float64)[:, None, :] / 2)  # (n, 8, 3) box axes
    return np.einsum("nij,nkj->nki", np.asarray(rotation, dtype=np.float64), offsets) + np.asarray(center)[:, None]


def amodal_boxes(corners_S: np.ndarray, camera: Camera, image_size: tuple[int, int] | None = None) -> np.ndarray:
    """Amodal 2-D boxes (n, 4) xyxy of boxes given by their corners in S (n, 8, 3): the box is clipped to
    z_S > 1 cm (`NEAR_PLANE`), projected, and bounded; with ``image_size`` (H, W) clamped to [0, W-1] x [0, H-1].
    A box entirely behind the plane gives [0, 0, 0, 0], as cityscapesScripts 2.3 returns.

    cityscapesScripts clips each face polygon; the union of the clipped faces is the corners in front plus the
    points where the 12 edges cross the plane, which is what is projected here."""
    c = np.asarray(corners_S, dtype=np.float64)
    z = c[..., 2]
    front = z > NEAR_PLANE  # (n, 8)
    a, b = c[:, BOX_EDGES[:, 0]], c[:, BOX_EDGES[:, 1]]  # (n, 12, 3)
    za, zb = a[..., 2], b[..., 2]
    crosses = front[:, BOX_EDGES[:, 0]] != front[:, BOX_EDGES[:, 1]]
    with np.errstate(divide="ignore", invalid="ignore"):
        s = np.where(crosses, (NEAR_PLANE - za) / (zb - za), 0.0)
    cut = a + s[..., None] * (b - a)
    cut[..., 2] = NEAR_PLANE  # exactly on the plane
    points = np.concatenate([c, cut], 1)  # (n, 20, 3)
    keep = np.concatenate([front, crosses], 1)
    points = np.where(keep[..., None], points, 1.0)  # dummy in front of the camera, masked below
    uv = project(points, camera)[..., :2]
    lo = np.where(keep[..., None], uv, np.inf).min(1)
    hi = np.where(keep[..., None], uv, -np.inf).max(1)
    boxes = np.concatenate([lo, hi], -1)  # (n, 4)
    boxes[~keep.any(1)] = 0.0
    if image_size is not None:
        h, w = image_size
        boxes[:, [0, 2]] = np.clip(boxes[:, [0, 2]], 0, w - 1)
        boxes[:, [1, 3]] = np.clip(boxes[:, [1, 3]], 0, h - 1)
    return boxes


@dataclass
class SensorBoxes:
    """Boxes in the camera frame S, as the released detector's targets use them (n boxes)."""

    center: np.ndarray  # (n, 3) centre_S, metres
    size: np.ndarray  # (n, 3) L, W, H (the same in every frame)
    rotation: np.ndarray  # (n, 3, 3) R_S
    quaternion: np.ndarray  # (n, 4) R_S as [w, x, y, z]
    center_image: np.ndarray  # (n, 3) (u, v, z_S): the projected centre and its depth
    angles: np.ndarray  # (n, 3) the three regressed angles (`sensor_angles`, per the ``euler`` option)


def boxes_to_sensor(center_V: np.ndarray, dimensions: np.ndarray, rotation_V: np.ndarray, camera: Camera, *,
                    euler: str = "fixed") -> SensorBoxes:
    """Boxes in V (centre (n, 3), L W H (n, 3), rotation [w, x, y, z] (n, 4)) -> `SensorBoxes`."""
    center_S = vehicle_to_sensor(np.asarray(center_V, dtype=np.float64).reshape(-1, 3), camera)
    r_S = rotation_to_sensor(quaternion_to_matrix(np.asarray(rotation_V, dtype=np.float64).reshape(-1, 4)), camera)
    q_S = matrix_to_quaternion(r_S)
    return SensorBoxes(center=center_S, size=np.asarray(dimensions, dtype=np.float64).reshape(-1, 3), rotation=r_S,
                       quaternion=q_S, center_image=project(center_S, camera), angles=sensor_angles(q_S, euler=euler))


def boxes_to_vehicle(center_image: np.ndarray, angles: np.ndarray, camera: Camera, *,
                     euler: str = "fixed") -> tuple[np.ndarray, np.ndarray]:
    """Decode boxes from the image: (u, v, z_S) (n, 3) and the three angles (n, 3) -> centre_V (n, 3) and rotation
    [w, x, y, z] (n, 4) in V with w >= 0 (the size is the same in every frame)."""
    center_S = unproject(np.asarray(center_image, dtype=np.float64).reshape(-1, 3), camera)
    r_S = quaternion_to_matrix(quaternion_from_sensor_angles(np.asarray(angles).reshape(-1, 3), euler=euler))
    return sensor_to_vehicle(center_S, camera), matrix_to_quaternion(rotation_to_vehicle(r_S, camera))


def sensor_corners(center_V: np.ndarray, dimensions: np.ndarray, rotation_V: np.ndarray, camera: Camera) -> np.ndarray:
    """The 8 corners in S (n, 8, 3) of boxes given in V (rotation [w, x, y, z] (n, 4))."""
    r_V = quaternion_to_matrix(np.asarray(rotation_V, dtype=np.float64).reshape(-1, 4))
    return vehicle_to_sensor(box_corners(np.asarray(center_V).reshape(-1, 3), np.asarray(dimensions).reshape(-1, 3),
                                         r_V), camera)


def xywh_to_xyxy(boxes: np.ndarray) -> np.ndarray:
    """[x, y, w, h] (..., 4) as the JSON stores 2-D boxes -> [x1, y1, x2, y2] = [x, y, x + w, y + h]."""
    b = np.asarray(boxes, dtype=np.float64)
    return np.concatenate([b[..., :2], b[..., :2] + b[..., 2:]], -1)


def xyxy_to_xywh(boxes: np.ndarray) -> np.ndarray:
    b = np.asarray(boxes, dtype=np.float64)
    return np.concatenate([b[..., :2], b[..., 2:] - b[..., :2]], -1)
