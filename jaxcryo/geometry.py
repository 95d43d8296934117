"""Rotations: 6D parameterisation, so(3) exp/log, Haar sampling, RELION Euler angles.

Conventions (stated once, here, and pinned by tests/test_geometry.py)
--------------------------------------------------------------------
* A rotation is a 3x3 matrix ``A`` acting on column vectors of coordinates ``p = (x, y, z)``.
  ``A`` maps the molecule's frame to the image frame: an atom at ``p`` appears in the projection
  image at ``(A @ p)[:2]`` (RELION's and cryoDRGN's convention; see ``jaxcryo.slicing``).
* Euler angles are RELION's ZYZ triple ``(rlnAngleRot, rlnAngleTilt, rlnAnglePsi)`` in degrees, and
  ``euler_to_matrix`` reproduces RELION's ``Euler_angles2matrix`` element by element, so
  ``A = Rz(psi) @ Ry(tilt) @ Rz(rot)`` with RELION's (passive) sign: ``Rz(a) = [[c, s, 0], [-s, c, 0],
  [0, 0, 1]]`` and ``Ry(b) = [[c, 0, -s], [0, 1, 0], [s, 0, c]]``.
* The 6D representation ``(a1, a2)`` (two 3-vectors, shape (..., 6) = concat(a1, a2)) maps to a
  rotation by the paper's S2S2 construction (CryoSPIN, Supp. C): ``v1 = a1/|a1|``, ``v3 = (v1 x a2)
  normalised``, ``v2 = v3 x v1`` and ``R = [v1, v2, v3]`` *as columns*. The official code stacks them as
  rows, i.e. returns ``R^T``; since the encoder learns whatever the map needs, both are valid, but we
  follow the paper so that the formula in the paper is the formula in the code.
* Axis-angle vectors ``omega`` (shape (..., 3)) have angle ``|omega|`` in radians about
  ``omega/|omega|`` (right hand). ``so3_exp`` is Rodrigues' formula; ``so3_log`` its inverse with
  ``|omega| <= pi``.

All functions are pure, jit/vmap-able, keep batch dimensions leading, and keep the input dtype.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

# Below this angle (radians) the Taylor series replaces the closed forms. The series used keep
# terms to theta^4, so their truncation error (~theta^6 / 5040) is far below float64 resolution here.
_SMALL_ANGLE = 1e-2


def hat(omega: jax.Array) -> jax.Array:
    """(..., 3) axis-angle -> (..., 3, 3) skew-symmetric matrix K with K @ v = omega x v."""
    x, y, z = omega[..., 0], omega[..., 1], omega[..., 2]
    zero = jnp.zeros_like(x)
    return jnp.stack(
        [
            jnp.stack([zero, -z, y], axis=-1),
            jnp.stack([z, zero, -x], axis=-1),
            jnp.stack([-y, x, zero], axis=-1),
        ],
        axis=-2,
    )


def vee(skew: jax.Array) -> jax.Array:
    """(..., 3, 3) -> (..., 3): inverse of ``hat`` applied to the antisymmetric part."""
    return 0.5 * jnp.stack(
        [
            skew[..., 2, 1] - skew[..., 1, 2],
            skew[..., 0, 2] - skew[..., 2, 0],
            skew[..., 1, 0] - skew[..., 0, 1],
        ],
        axis=-1,
    )


def _normalize(v: jax.Array, eps: float = 1e-12) -> jax.Array:
    return v / jnp.sqrt(jnp.maximum(jnp.sum(v * v, axis=-1, keepdims=True), eps))


def rotation_from_6d(six_d: jax.Array) -> jax.Array:
    """(..., 6) -> (..., 3, 3) rotation by the paper's S2S2 map; columns are [v1, v3 x v1, v3]."""
    a1, a2 = six_d[..., :3], six_d[..., 3:]
    v1 = _normalize(a1)
    v3 = _normalize(jnp.cross(v1, a2))
    v2 = jnp.cross(v3, v1)
    return jnp.stack([v1, v2, v3], axis=-1)


def _exp_coefficients(theta_sq: jax.Array) -> tuple[jax.Array, jax.Array]:
    """sin(t)/t and (1 - cos t)/t^2 as functions of t^2, finite with finite gradients at t = 0.

    The double ``where`` keeps the unused branch's argument away from 0 so its gradient is finite.
    (1 - cos t)/t^2 is evaluated as 0.5 * (sin(t/2) / (t/2))^2, which has no cancellation in float32.
    """
    small = theta_sq < _SMALL_ANGLE**2
    safe_sq = jnp.where(small, jnp.ones_like(theta_sq), theta_sq)
    theta = jnp.sqrt(safe_sq)
    half = 0.5 * theta
    sinc_exact = jnp.sin(theta) / theta
    cosc_exact = 0.5 * (jnp.sin(half) / half) ** 2
    sinc_series = 1.0 - theta_sq / 6.0 + theta_sq**2 / 120.0
    cosc_series = 0.5 - theta_sq / 24.0 + theta_sq**2 / 720.0
    return jnp.where(small, sinc_series, sinc_exact), jnp.where(small, cosc_series, cosc_exact)


@jax.jit  # called eagerly too (tests, floors, mates): one program per shape, not a dozen op compiles
def so3_exp(omega: jax.Array) -> jax.Array:
    """(..., 3) axis-angle -> (..., 3, 3) rotation, R = I + a K + b K^2 (Rodrigues)."""
    theta_sq = jnp.sum(omega * omega, axis=-1)
    a, b = _exp_coefficients(theta_sq)
    k = hat(omega)
    eye = jnp.eye(3, dtype=omega.dtype)
    return eye + a[..., None, None] * k + b[..., None, None] * (k @ k)


def matrix_to_quaternion(rot: jax.Array) -> jax.Array:
    """(..., 3, 3) -> (..., 4) unit quaternion (w, x, y, z) with w >= 0.

    Shepperd's method: of the four algebraically equal formulas, use the one whose divisor is
    largest, so the result is accurate (and differentiable) at every rotation including 180 degrees.
    """
    m = rot
    tr = m[..., 0, 0] + m[..., 1, 1] + m[..., 2, 2]
    candidates_sq = jnp.stack(
        [1.0 + tr, 1.0 + 2 * m[..., 0, 0] - tr, 1.0 + 2 * m[..., 1, 1] - tr, 1.0 + 2 * m[..., 2, 2] - tr],
        axis=-1,
    )
    best = jnp.argmax(candidates_sq, axis=-1)
    # 4 |q_i|^2 = candidates_sq[i]; each formula divides by 4 |q_i|, safe because the best is >= 1.
    s = 2.0 * jnp.sqrt(jnp.maximum(candidates_sq, 0.25))
    d21, d02, d10 = m[..., 2, 1] - m[..., 1, 2], m[..., 0, 2] - m[..., 2, 0], m[..., 1, 0] - m[..., 0, 1]
    s21, s02, s10 = m[..., 2, 1] + m[..., 1, 2], m[..., 0, 2] + m[..., 2, 0], m[..., 1, 0] + m[..., 0, 1]
    q_w = jnp.stack([s[..., 0] / 4, d21 / s[..., 0], d02 / s[..., 0], d10 / s[..., 0]], axis=-1)
    q_x = jnp.stack([d21 / s[..., 1], s[..., 1] / 4, s10 / s[..., 1], s02 / s[..., 1]], axis=-1)
    q_y = jnp.stack([d02 / s[..., 2], s10 / s[..., 2], s[..., 2] / 4, s21 / s[..., 2]], axis=-1)
    q_z = jnp.stack([d10 / s[..., 3], s02 / s[..., 3], s21 / s[..., 3], s[..., 3] / 4], axis=-1)
    all_q = jnp.stack([q_w, q_x, q_y, q_z], axis=-2)
    q = jnp.take_along_axis(all_q, best[..., None, None], axis=-2)[..., 0, :]
    q = q * jnp.where(q[..., :1] < 0, -1.0, 1.0).astype(q.dtype)
    return q / jnp.linalg.norm(q, axis=-1, keepdims=True)


def quaternion_to_matrix(q: jax.Array) -> jax.Array:
    """(..., 4) quaternion (w, x, y, z), any norm > 0 -> (..., 3, 3) rotation."""
    q = q / jnp.linalg.norm(q, axis=-1, keepdims=True)
    w, x, y, z = q[..., 0], q[..., 1], q[..., 2], q[..., 3]
    return jnp.stack(
        [
            jnp.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)], axis=-1),
            jnp.stack([2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)], axis=-1),
            jnp.stack([2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], axis=-1),
        ],
        axis=-2,
    )


def so3_log(rot: jax.Array) -> jax.Array:
    """(..., 3, 3) rotation -> (..., 3) axis-angle with angle in [0, pi].

    Through the unit quaternion (w, v), w >= 0: omega = v * 2 atan2(|v|, w) / |v|. For small |v| the
    factor is 2 asin(s)/s = 2 (1 + s^2/6 + 3 s^4/40 + ...), equal on the unit sphere, so value and
    gradient stay finite at R = I.
    """
    q = matrix_to_quaternion(rot)
    w, v = q[..., 0], q[..., 1:]
    s_sq = jnp.sum(v * v, axis=-1)
    small = s_sq < (0.5 * _SMALL_ANGLE) ** 2
    safe_sq = jnp.where(small, jnp.ones_like(s_sq), s_sq)
    s = jnp.sqrt(safe_sq)
    exact = 2.0 * jnp.arctan2(s, w) / s
    series = 2.0 + s_sq / 3.0 + 0.15 * s_sq**2
    return v * jnp.where(small, series, exact)[..., None]


def random_rotations(key: jax.Array, shape: tuple[int, ...] = (), dtype=jnp.float32) -> jax.Array:
    """Haar-uniform rotations of shape shape + (3, 3): normalised 4D Gaussians are uniform on S^3."""
    q = jax.random.normal(key, shape + (4,), dtype=dtype)
    return quaternion_to_matrix(q)


@jax.jit  # called eagerly on host arrays too (evaluation, re-search): one fused program, not ~12 dispatches
def geodesic_distance_deg(rot_a: jax.Array, rot_b: jax.Array) -> jax.Array:
    """Angle (degrees) of rot_a^T rot_b; (..., 3, 3) x (..., 3, 3) -> (...).

    atan2 of the sine and cosine parts keeps small angles exact in float32 (arccos would not).
    """
    rel = jnp.swapaxes(rot_a, -1, -2) @ rot_b
    tr = rel[..., 0, 0] + rel[..., 1, 1] + rel[..., 2, 2]
    two_sin = 2.0 * jnp.linalg.norm(vee(rel), axis=-1)
    return jnp.degrees(jnp.arctan2(two_sin, tr - 1.0))


def euler_to_matrix(euler_deg: jax.Array) -> jax.Array:
    """(..., 3) RELION (rot, tilt, psi) in degrees -> (..., 3, 3), as RELION's Euler_angles2matrix."""
    rad = jnp.radians(euler_deg)
    ca, cb, cg = jnp.cos(rad[..., 0]), jnp.cos(rad[..., 1]), jnp.cos(rad[..., 2])
    sa, sb, sg = jnp.sin(rad[..., 0]), jnp.sin(rad[..., 1]), jnp.sin(rad[..., 2])
    cc, cs, sc, ss = cb * ca, cb * sa, sb * ca, sb * sa
    return jnp.stack(
        [
            jnp.stack([cg * cc - sg * sa, cg * cs + sg * ca, -cg * sb], axis=-1),
            jnp.stack([-sg * cc - cg * sa, -sg * cs + cg * ca, sg * sb], axis=-1),
            jnp.stack([sc, ss, cb], axis=-1),
        ],
        axis=-2,
    )


def matrix_to_euler(rot: jax.Array) -> jax.Array:
    """(..., 3, 3) -> (..., 3) RELION (rot, tilt, psi) in degrees, tilt in [0, 180].

    As RELION's Euler_matrix2angles: at the gimbal poles (tilt 0 or 180) rot is set to 0 and the
    whole in-plane angle goes to psi.
    """
    a = rot
    abs_sb = jnp.sqrt(a[..., 0, 2] ** 2 + a[..., 1, 2] ** 2)
    regular = abs_sb > 16 * jnp.finfo(a.dtype).eps
    gamma = jnp.arctan2(a[..., 1, 2], -a[..., 0, 2])
    alpha = jnp.arctan2(a[..., 2, 1], a[..., 2, 0])
    beta = jnp.arctan2(abs_sb, a[..., 2, 2])
    up = a[..., 2, 2] > 0
    gamma_pole = jnp.where(up, jnp.arctan2(-a[..., 1, 0], a[..., 0, 0]), jnp.arctan2(a[..., 1, 0], -a[..., 0, 0]))
    beta_pole = jnp.where(up, 0.0, jnp.pi).astype(a.dtype)
    out = jnp.stack(
        [
            jnp.where(regular, alpha, 0.0),
            jnp.where(regular, beta, beta_pole),
            jnp.where(regular, gamma, gamma_pole),
        ],
        axis=-1,
    )
    return jnp.degrees(out)


def view_directions(rot: jax.Array) -> jax.Array:
    """(..., 3, 3) -> (..., 3): the molecule-frame direction the beam travels along, A^T e_z."""
    return rot[..., 2, :]
