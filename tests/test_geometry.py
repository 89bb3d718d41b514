"""The Cityscapes-3D camera geometry: hand-computed boxes, exact round trips between the frames, the clipped amodal
box, quaternions, and the two readings of the released Euler angles."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from taskprompter.data import geometry as g
from taskprompter.data.synthetic.street import CITYSCAPES_SENSOR

# A level camera 1.2 m above the ground and 1.7 m ahead of the vehicle origin: C = V shifted, no rotation.
LEVEL = g.Camera(fx=1000.0, fy=1000.0, u0=500.0, v0=250.0, baseline=0.2,
                 sensor_T_ISO_8855=np.array([[1.0, 0, 0, -1.7], [0, 1.0, 0, 0], [0, 0, 1.0, -1.2]]))
REAL = g.Camera.from_json(CITYSCAPES_SENSOR)


def _random_boxes(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    center = np.stack([rng.uniform(3, 80, n), rng.uniform(-15, 15, n), rng.uniform(0, 2, n)], 1)
    dims = rng.uniform(0.5, 12, (n, 3))
    q = rng.normal(size=(n, 4))
    return center, dims, q / np.linalg.norm(q, axis=1, keepdims=True)


def test_box_straight_ahead_has_the_hand_computed_corners_and_projection():
    # 10 m ahead of the camera at its height, 4 x 2 x 1.5 m, yaw 0: the back face is at z_S = 8, the front at 12
    center, dims, q = np.array([[11.7, 0.0, 1.2]]), np.array([[4.0, 2.0, 1.5]]), g.yaw_quaternion(np.zeros(1))
    corners = g.sensor_corners(center, dims, q, LEVEL)[0]
    x, y = 1.0, 0.75  # half width (right = +x_S), half height (down = +y_S)
    expected = np.array([[-x, y, 8], [x, y, 8], [x, y, 12], [-x, y, 12],  # BLB BRB FRB FLB
                         [-x, -y, 8], [x, -y, 8], [x, -y, 12], [-x, -y, 12]])  # BLT BRT FRT FLT
    np.testing.assert_allclose(corners, expected, atol=1e-12)
    uv = g.project(corners, LEVEL)[:, :2]
    np.testing.assert_allclose(uv[:4], [[375, 343.75], [625, 343.75], [500 + 1000 / 12, 312.5],
                                        [500 - 1000 / 12, 312.5]], atol=1e-9)
    np.testing.assert_allclose(g.amodal_boxes(corners[None], LEVEL), [[375, 156.25, 625, 343.75]], atol=1e-9)
    boxes = g.boxes_to_sensor(center, dims, q, LEVEL)
    np.testing.assert_allclose(boxes.center, [[0, 0, 10]], atol=1e-12)
    np.testing.assert_allclose(boxes.center_image, [[500, 250, 10]], atol=1e-12)
    np.testing.assert_allclose(boxes.angles, [[0, 0, 0]], atol=1e-12)
    # the released reading of [w, x, y, z] as [x, y, z, w]: the identity becomes a half turn about x_S
    np.testing.assert_allclose(np.abs(g.sensor_angles(boxes.quaternion, euler="faithful")), [[np.pi, 0, np.pi]],
                               atol=1e-12)


def test_yaw_sits_in_the_third_angle_with_the_fixed_order():
    yaw = np.array([0.3, np.pi / 2, -2.0])
    boxes = g.boxes_to_sensor(np.tile([20.0, 0, 0.8], (3, 1)), np.ones((3, 3)), g.yaw_quaternion(yaw), LEVEL)
    np.testing.assert_allclose(boxes.angles, np.stack([0 * yaw, 0 * yaw, -yaw], 1), atol=1e-12)  # y_S points down
    corners = g.box_corners(np.zeros((1, 3)), np.array([[4.0, 2.0, 1.0]]), g.quaternion_to_matrix(g.yaw_quaternion(
        np.array([np.pi / 2]))))[0]
    np.testing.assert_allclose(corners[g.CORNER_NAMES.index("FLT")], [-1, 2, 0.5], atol=1e-12)  # front faces +y


def test_vehicle_sensor_vehicle_round_trip_is_exact():
    rng = np.random.default_rng(0)
    points = rng.uniform(-50, 50, (100, 3))
    np.testing.assert_allclose(g.sensor_to_vehicle(g.vehicle_to_sensor(points, REAL), REAL), points, atol=1e-12)
    np.testing.assert_allclose(g.vehicle_to_sensor(REAL.position_V, REAL), [0, 0, 0], atol=1e-12)


def test_project_unproject_round_trip_is_exact():
    rng = np.random.default_rng(1)
    points = np.stack([rng.uniform(-20, 20, 100), rng.uniform(-5, 5, 100), rng.uniform(0.5, 90, 100)], 1)
    uvz = g.project(points, REAL)
    np.testing.assert_allclose(g.unproject(uvz, REAL), points, rtol=1e-13, atol=1e-12)
    np.testing.assert_allclose(uvz[:, :2], (points @ REAL.K.T)[:, :2] / points[:, 2:], rtol=1e-13)


@pytest.mark.parametrize("euler", g.EULER_MODES)
def test_boxes_decode_back_to_their_vehicle_pose(euler):
    center, dims, q = _random_boxes(np.random.default_rng(2), 200)
    boxes = g.boxes_to_sensor(center, dims, q, REAL, euler=euler)
    center_V, q_V = g.boxes_to_vehicle(boxes.center_image, boxes.angles, REAL, euler=euler)
    np.testing.assert_allclose(center_V, center, atol=1e-11)
    same = np.abs((q_V * q).sum(1))  # q and -q are one rotation
    np.testing.assert_allclose(same, 1.0, atol=1e-12)


def test_quaternion_matrix_round_trip():
    rng = np.random.default_rng(3)
    q = rng.normal(size=(500, 4))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    q[:4] = [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]  # each branch of Shepperd's method
    r = g.quaternion_to_matrix(q)
    np.testing.assert_allclose(r @ np.swapaxes(r, 1, 2), np.broadcast_to(np.eye(3), r.shape), atol=1e-12)
    np.testing.assert_allclose(np.linalg.det(r), 1.0, atol=1e-12)
    back = g.matrix_to_quaternion(r)
    np.testing.assert_allclose(back, q * np.sign(q[:, :1] + (q[:, :1] == 0)), atol=1e-12)  # w >= 0 form
    np.testing.assert_allclose(r, Rotation.from_quat(q[:, [1, 2, 3, 0]]).as_matrix(), atol=1e-12)


def test_faithful_and_fixed_angles_differ_exactly_by_the_component_reorder():
    rng = np.random.default_rng(4)
    q = rng.normal(size=(300, 4))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    faithful, fixed = g.sensor_angles(q, euler="faithful"), g.sensor_angles(q, euler="fixed")
    assert np.array_equal(faithful, g.sensor_angles(q[:, [3, 0, 1, 2]], euler="fixed"))
    # what the released code computes: scipy reads its quaternion scalar-last
    np.testing.assert_allclose(faithful, Rotation.from_quat(q).as_euler("ZXY"), atol=1e-12)
    np.testing.assert_allclose(fixed, Rotation.from_quat(q[:, [1, 2, 3, 0]]).as_euler("ZXY"), atol=1e-12)
    for euler, angles in (("faithful", faithful), ("fixed", fixed)):
        back = g.quaternion_from_sensor_angles(angles, euler=euler)
        np.testing.assert_allclose(np.abs((back * q).sum(1)), 1.0, atol=1e-12)
    with pytest.raises(ValueError, match="euler"):
        g.sensor_angles(q, euler="xyzw")


def _surface_points(corners: np.ndarray, steps: int = 60) -> np.ndarray:
    """Dense points on the 6 faces of a box given by its 8 corners (CORNER_NAMES order)."""
    faces = [[0, 1, 2, 3], [4, 5, 6, 7], [0, 1, 5, 4], [3, 2, 6, 7], [0, 3, 7, 4], [1, 2, 6, 5]]
    s, t = np.meshgrid(np.linspace(0, 1, steps), np.linspace(0, 1, steps))
    s, t = s.ravel()[:, None], t.ravel()[:, None]
    out = [(1 - s) * ((1 - t) * corners[a] + t * corners[d]) + s * ((1 - t) * corners[b] + t * corners[c])
           for a, b, c, d in faces]
    return np.concatenate(out)


def test_amodal_box_of_a_box_across_the_camera_plane_is_clipped():
    # x_S in [1, 3], y_S in [-0.5, 0.5], z_S in [-2, 2]: only z_S >= 1 cm is projected
    center, dims, q = np.array([[1.7, -2.0, 1.2]]), np.array([[4.0, 2.0, 1.0]]), g.yaw_quaternion(np.zeros(1))
    corners = g.sensor_corners(center, dims, q, LEVEL)
    z = g.NEAR_PLANE
    np.testing.assert_allclose(g.amodal_boxes(corners, LEVEL),
                               [[500 + 1000 * 1 / 2, 250 - 1000 * 0.5 / z, 500 + 1000 * 3 / z, 250 + 1000 * 0.5 / z]],
                               rtol=1e-12)
    np.testing.assert_allclose(g.amodal_boxes(corners, LEVEL, (500, 1000)), [[999, 0, 999, 499]])
    behind = g.sensor_corners(np.array([[-10.0, 0, 1]]), dims, q, LEVEL)
    assert np.array_equal(g.amodal_boxes(behind, LEVEL, (500, 1000)), [[0, 0, 0, 0]])


def test_amodal_box_bounds_the_projection_of_the_clipped_surface():
    rng = np.random.default_rng(5)
    center, dims, q = _random_boxes(rng, 40)
    center[:, 0] = rng.uniform(-2, 8, 40)  # many boxes straddle the camera plane
    corners = g.sensor_corners(center, dims, q, REAL)
    boxes = g.amodal_boxes(corners, REAL)
    fronts = 0
    for k in range(40):
        p = _surface_points(corners[k])
        p = p[p[:, 2] > g.NEAR_PLANE]
        if len(p) == 0:
            assert np.array_equal(boxes[k], [0, 0, 0, 0])
            continue
        uv = g.project(p, REAL)[:, :2]
        brute = np.concatenate([uv.min(0), uv.max(0)])
        assert (boxes[k, :2] <= brute[:2] + 1e-6).all() and (boxes[k, 2:] >= brute[2:] - 1e-6).all()
        if (corners[k, :, 2] > g.NEAR_PLANE).all():  # in front: the bounds are those of the projected corners
            np.testing.assert_allclose(boxes[k], brute, rtol=1e-12, atol=1e-9)
            fronts += 1
    assert fronts >= 5


def test_camera_json_round_trip_scaling_and_errors():
    assert g.Camera.from_json(REAL.to_json()) == REAL
    half = REAL.scaled(0.25, 0.5)
    p = np.array([[2.0, 1.0, 15.0], [-4.0, 0.3, 40.0]])
    uv, uv_half = g.project(p, REAL)[:, :2], g.project(p, half)[:, :2]
    np.testing.assert_allclose(uv_half, (uv + 0.5) * [0.25, 0.5] - 0.5, atol=1e-9)  # half-pixel centres
    sensor = dict(CITYSCAPES_SENSOR)
    del sensor["baseline"]
    with pytest.raises(ValueError, match="baseline"):
        g.Camera.from_json(sensor)
    with pytest.raises(ValueError, match="sensor_T_ISO_8855"):
        g.Camera.from_json({**CITYSCAPES_SENSOR, "sensor_T_ISO_8855": [[1, 0, 0]]})


def test_the_real_camera_sits_where_its_calibration_says():
    x, y, z = REAL.position_V
    assert 1.6 < x < 1.8 and 0.0 < y < 0.2 and 1.15 < z < 1.3  # ahead of the rear axle, 1.2 m up
    forward = REAL.sensor_T_ISO_8855[0, :3]  # the camera's viewing direction in V
    assert -0.06 < np.arcsin(forward[2]) < -0.02  # pitched down about 2 degrees
