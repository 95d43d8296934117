"""Geometry kernels against independent references (analytic, finite differences, scipy, RELION)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from jaxcryo import geometry

GENERATORS = np.array(
    [
        [[0, 0, 0], [0, 0, -1], [0, 1, 0]],
        [[0, 0, 1], [0, 0, 0], [-1, 0, 0]],
        [[0, -1, 0], [1, 0, 0], [0, 0, 0]],
    ],
    dtype=np.float64,
)


def relion_euler_reference(rot, tilt, psi):
    """RELION's Euler_angles2matrix written as the product of its elementary (passive) rotations."""
    def rz(a):
        c, s = np.cos(np.radians(a)), np.sin(np.radians(a))
        return np.array([[c, s, 0], [-s, c, 0], [0, 0, 1]])

    def ry(b):
        c, s = np.cos(np.radians(b)), np.sin(np.radians(b))
        return np.array([[c, 0, -s], [0, 1, 0], [s, 0, c]])

    return rz(psi) @ ry(tilt) @ rz(rot)


def test_rotation_from_6d_is_paper_s2s2_with_columns():
    rng = np.random.default_rng(0)
    six = rng.normal(size=(50, 6))
    rot = np.asarray(geometry.rotation_from_6d(jnp.asarray(six, dtype=jnp.float64)))
    a1, a2 = six[:, :3], six[:, 3:]
    v1 = a1 / np.linalg.norm(a1, axis=1, keepdims=True)
    v3 = np.cross(v1, a2)
    v3 /= np.linalg.norm(v3, axis=1, keepdims=True)
    np.testing.assert_allclose(rot[:, :, 0], v1, atol=1e-12)
    np.testing.assert_allclose(rot[:, :, 2], v3, atol=1e-12)
    np.testing.assert_allclose(rot @ np.swapaxes(rot, 1, 2), np.broadcast_to(np.eye(3), rot.shape), atol=1e-12)
    np.testing.assert_allclose(np.linalg.det(rot), 1.0, atol=1e-12)
    # a2 lies in the plane of the first two columns, on the positive side of v2.
    assert np.all(np.einsum("ni,ni->n", rot[:, :, 1], a2) > 0)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_so3_exp_matches_scipy(dtype):
    rng = np.random.default_rng(1)
    omega = rng.normal(size=(100, 3)) * rng.uniform(0, 3.1, size=(100, 1))
    rot = np.asarray(geometry.so3_exp(jnp.asarray(omega, dtype=dtype)))
    tol = 2e-6 if dtype == jnp.float32 else 1e-12
    np.testing.assert_allclose(rot, Rotation.from_rotvec(omega).as_matrix(), atol=tol)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
@pytest.mark.parametrize("magnitude", [0.0, 1e-12, 1e-8, 1e-5, 1e-3])
def test_so3_exp_and_log_tiny_angles_are_finite_and_exact(dtype, magnitude):
    direction = np.array([0.3, -0.5, 0.81])
    omega = jnp.asarray(direction / np.linalg.norm(direction) * magnitude, dtype=dtype)
    rot = geometry.so3_exp(omega)
    expected = Rotation.from_rotvec(np.array(omega, dtype=np.float64)).as_matrix()
    tol = 1e-7 if dtype == jnp.float32 else 1e-15
    np.testing.assert_allclose(np.asarray(rot), expected, atol=tol)
    back = geometry.so3_log(rot)
    np.testing.assert_allclose(np.asarray(back), np.asarray(omega), atol=tol, rtol=1e-4 if dtype == jnp.float32 else 1e-9)
    jac_exp = jax.jacfwd(geometry.so3_exp)(omega)  # (3, 3, 3): d R_ij / d omega_k
    jac_log = jax.jacfwd(geometry.so3_log)(rot)
    assert np.all(np.isfinite(np.asarray(jac_exp))) and np.all(np.isfinite(np.asarray(jac_log)))
    grad = jax.grad(lambda w: jnp.sum(geometry.so3_exp(w) * jnp.arange(9.0, dtype=dtype).reshape(3, 3)))(omega)
    assert np.all(np.isfinite(np.asarray(grad)))


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_so3_exp_jacobian_at_zero_is_generators(dtype):
    jac = np.asarray(jax.jacfwd(geometry.so3_exp)(jnp.zeros(3, dtype=dtype)))
    np.testing.assert_allclose(np.moveaxis(jac, -1, 0), GENERATORS, atol=1e-7)
    # and the log's Jacobian at I inverts it: d log(exp(w)) / dw = identity
    jac_round = np.asarray(jax.jacfwd(lambda w: geometry.so3_log(geometry.so3_exp(w)))(jnp.zeros(3, dtype=dtype)))
    np.testing.assert_allclose(jac_round, np.eye(3), atol=1e-6)


@pytest.mark.parametrize("magnitude", [1e-8, 1e-6, 1e-4, 1e-2, 0.3, 1.0, 2.0, 3.1])
def test_so3_exp_log_gradients_match_central_differences(magnitude):
    rng = np.random.default_rng(int(magnitude * 1e9) % 1000)
    direction = rng.normal(size=3)
    omega = direction / np.linalg.norm(direction) * magnitude
    weights = rng.normal(size=(3, 3))
    f = lambda w: jnp.sum(geometry.so3_exp(w) * weights)  # noqa: E731
    g = lambda w: jnp.sum(geometry.so3_log(geometry.so3_exp(w)) * weights[0])  # noqa: E731
    h = 1e-6  # the maps are analytic through 0, so a fixed step is valid at every magnitude
    for fn in (f, g):
        analytic = np.asarray(jax.grad(fn)(jnp.asarray(omega)))
        numeric = np.array(
            [(fn(jnp.asarray(omega + h * e)) - fn(jnp.asarray(omega - h * e))) / (2 * h) for e in np.eye(3)]
        )
        np.testing.assert_allclose(analytic, numeric, rtol=1e-6, atol=1e-8)


def test_so3_log_inverts_exp_up_to_pi():
    rng = np.random.default_rng(2)
    axis = rng.normal(size=(200, 3))
    axis /= np.linalg.norm(axis, axis=1, keepdims=True)
    angle = np.concatenate([rng.uniform(0, np.pi, 195), [np.pi - 1e-6, np.pi - 1e-3, 1e-7, 0.0, 3.0]])
    omega = axis * angle[:, None]
    rot = Rotation.from_rotvec(omega).as_matrix()
    back = np.asarray(geometry.so3_log(jnp.asarray(rot, dtype=jnp.float32)))
    recovered = Rotation.from_rotvec(back).as_matrix()
    np.testing.assert_allclose(recovered, rot, atol=2e-5)
    np.testing.assert_allclose(np.linalg.norm(back, axis=1), angle, atol=1e-3)


def test_random_rotations_are_haar_uniform():
    rot = np.asarray(geometry.random_rotations(jax.random.key(0), (20000,)))
    np.testing.assert_allclose(rot @ np.swapaxes(rot, 1, 2), np.broadcast_to(np.eye(3), rot.shape), atol=1e-5)
    np.testing.assert_allclose(np.linalg.det(rot), 1.0, atol=1e-5)
    # Haar measure: E[R] = 0 (each entry has variance 1/3, so the mean's sd is 0.004).
    assert np.abs(rot.mean(axis=0)).max() < 0.02
    # view directions uniform on the sphere: z uniform in [-1, 1], azimuth uniform.
    view = np.asarray(geometry.view_directions(jnp.asarray(rot)))
    z_hist, _ = np.histogram(view[:, 2], bins=10, range=(-1, 1))
    az_hist, _ = np.histogram(np.arctan2(view[:, 1], view[:, 0]), bins=10, range=(-np.pi, np.pi))
    for hist in (z_hist, az_hist):
        assert np.abs(hist / 2000.0 - 1).max() < 0.1
    # rotation angle distribution of Haar: density (1 - cos t) / pi on [0, pi]; mean = pi/2 + 2/pi.
    angles = np.radians(np.asarray(geometry.geodesic_distance_deg(jnp.eye(3), jnp.asarray(rot))))
    assert abs(angles.mean() - (np.pi / 2 + 2 / np.pi)) < 0.02


def test_geodesic_distance_small_and_large_angles():
    rng = np.random.default_rng(3)
    base = Rotation.random(50, random_state=4).as_matrix()
    for angle_deg in (1e-3, 0.5, 45.0, 179.0):
        axis = rng.normal(size=(50, 3))
        axis /= np.linalg.norm(axis, axis=1, keepdims=True)
        delta = Rotation.from_rotvec(axis * np.radians(angle_deg)).as_matrix()
        d = np.asarray(geometry.geodesic_distance_deg(jnp.asarray(base, jnp.float32), jnp.asarray(base @ delta, jnp.float32)))
        np.testing.assert_allclose(d, angle_deg, rtol=2e-3, atol=2e-3)


def test_euler_to_matrix_matches_relion_composition():
    rng = np.random.default_rng(5)
    angles = np.column_stack([rng.uniform(-180, 180, 100), rng.uniform(0, 180, 100), rng.uniform(-180, 180, 100)])
    ours = np.asarray(geometry.euler_to_matrix(jnp.asarray(angles, jnp.float64)))
    ref = np.stack([relion_euler_reference(*a) for a in angles])
    np.testing.assert_allclose(ours, ref, atol=1e-12)
    # RELION's ZYZ is scipy's intrinsic "ZYZ" inverted: A = (R_z(rot) R_y(tilt) R_z(psi))^T.
    scipy_ref = Rotation.from_euler("ZYZ", angles, degrees=True).as_matrix().transpose(0, 2, 1)
    np.testing.assert_allclose(ours, scipy_ref, atol=1e-12)


def test_euler_round_trip_including_gimbal_poles():
    rng = np.random.default_rng(6)
    angles = np.column_stack([rng.uniform(-179, 179, 200), rng.uniform(1, 179, 200), rng.uniform(-179, 179, 200)])
    back = np.asarray(geometry.matrix_to_euler(geometry.euler_to_matrix(jnp.asarray(angles, jnp.float64))))
    np.testing.assert_allclose(back, angles, atol=1e-8)
    # Poles: rot and psi are not separable; RELION puts everything into psi (rot = 0).
    for tilt in (0.0, 180.0):
        poles = np.array([[30.0, tilt, 40.0], [-100.0, tilt, 10.0], [0.0, tilt, -170.0]])
        mats = np.asarray(geometry.euler_to_matrix(jnp.asarray(poles, jnp.float64)))
        e = np.asarray(geometry.matrix_to_euler(jnp.asarray(mats)))
        assert np.all(e[:, 0] == 0.0)
        np.testing.assert_allclose(e[:, 1], tilt, atol=1e-8)
        np.testing.assert_allclose(np.asarray(geometry.euler_to_matrix(jnp.asarray(e))), mats, atol=1e-8)


def test_projection_convention_atom_position():
    """An atom on +x, rotated by rot=90 (tilt=psi=0), lands where RELION puts it: A p."""
    a = np.asarray(geometry.euler_to_matrix(jnp.asarray([90.0, 0.0, 0.0], jnp.float64)))
    np.testing.assert_allclose(a @ np.array([1.0, 0, 0]), [0.0, -1.0, 0.0], atol=1e-12)


def test_quaternion_round_trip():
    rot = Rotation.random(100, random_state=7).as_matrix()
    q = geometry.matrix_to_quaternion(jnp.asarray(rot, jnp.float64))
    np.testing.assert_allclose(np.asarray(geometry.quaternion_to_matrix(q)), rot, atol=1e-12)
    scipy_q = Rotation.from_matrix(rot).as_quat(canonical=True)  # (x, y, z, w), w >= 0
    np.testing.assert_allclose(np.asarray(q), np.roll(scipy_q, 1, axis=1), atol=1e-12)
