"""The map's own pseudo-symmetry, and each particle's pose against its symmetry mates.

A pseudo-symmetric particle (a homodimer or homotrimer with one small distinguishing feature) has a
pose posterior with n nearly equal modes: R and R S_j^T for the n - 1 rotations S_j of its cyclic
pseudo-symmetry. Local refinement cannot cross from one to another (they lie 360/n deg apart), and a
global search ranked at low frequency hardly tells them apart, because the feature that does is small.
So the map's own pseudo-symmetry is found (``pseudo_symmetry``: the rotation about an axis through the
map's centre of mass under which the low-passed map best matches itself) and every image's pose is
compared with its mates (``mate_poses``) at full resolution (``jaxcryo.research``). There is no
threshold: at 15 A nearly every particle is close to some symmetry (an ellipsoid has three two-folds),
and a mate that does not explain an image as well as its pose is simply not taken.

A flat particle has a second kind of mate: a mirror plane. A map that is its own mirror image G (a
thin disc or ring is, at low resolution, whatever its hand) projects at pose R as it does at
M R G^T, M = diag(1, 1, -1), because M flips only the projection direction. For a view at angle a to
the plane's normal the two poses lie 2a apart, so every tilted view has two modes, one per hand, that
the map tells apart only by its thickness, at high resolution. A map made while the images' hands are
mixed is itself nearly mirror-symmetric and keeps them mixed: realistic ring:1001 ended with 47 % of
its images > 20 deg off, 78 % of those at the mirror mate of their pose (docs/results.md). So the best mirror
plane through the centre of mass is found too and its mate tested with the rotations'.

Conventions: an operator S (a rotation, or a mirror: det -1) acts on map coordinates,
f(S (x - c) + c) ~ f(x), with x and the centre c in voxels as (x, y, z) about the box centre. With the
slice convention of ``jaxcryo.slicing`` (image frequency k samples the volume at R^T k) the mate of pose
R is R S^T, or M R S^T for a mirror (a proper rotation again; M leaves the slice plane k_z = 0 as it is);
since the operator's centre c is not the box centre, the mate's in-plane shift moves by
(R c - mate c)[:2] pixels.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxcryo import fourier, geometry, slicing

ORDERS = (2, 3, 4, 5, 6)
RESOLUTION_ANGSTROM = 15.0  # pseudo-symmetry is a low-resolution property: the feature that breaks it is small


def hemisphere_axes(n: int) -> np.ndarray:
    """(n, 3) unit axes spread evenly over the upper hemisphere (a Fibonacci lattice; an axis and its
    opposite give the same cyclic group)."""
    i = np.arange(n) + 0.5
    z = 1.0 - i / n
    phi = np.pi * (1.0 + 5**0.5) * i
    r = np.sqrt(1.0 - z**2)
    return np.stack([r * np.cos(phi), r * np.sin(phi), z], axis=1)


def rotations_about(axes: np.ndarray, angles_rad: np.ndarray) -> jax.Array:
    """(..., 3) unit axes, (...) angles -> (..., 3, 3) rotations (right-handed)."""
    return geometry.so3_exp(jnp.asarray(axes * np.asarray(angles_rad)[..., None], jnp.float32))


def low_passed_map(volume_h: jax.Array, pixel_size_angstrom: float, resolution_angstrom: float) -> np.ndarray:
    """The real-space map of a (D, D, D) Hartley volume, Fourier-cropped to Nyquist = ``resolution_angstrom``
    (at least 24 voxels, to place the axis to a degree): (D', D', D') and its voxel size in A."""
    d = volume_h.shape[0]
    small = min(d, max(24, 2 * int(np.ceil(d * pixel_size_angstrom / (2 * resolution_angstrom)))))
    cropped = fourier.crop_center(volume_h, small, ndim=3)
    return np.asarray(slicing.hartley_to_volume(cropped)), pixel_size_angstrom * d / small


def centre_of_mass(volume: np.ndarray) -> np.ndarray:
    """(3,) centre of the positive density as (x, y, z) voxels about the box centre."""
    d = volume.shape[0]
    w = np.clip(volume, 0.0, None)
    grid = np.arange(d) - d // 2
    total = max(float(w.sum()), 1e-30)
    return np.array([(w.sum(axis=(0, 1)) * grid).sum(), (w.sum(axis=(0, 2)) * grid).sum(),
                     (w.sum(axis=(1, 2)) * grid).sum()]) / total


@jax.jit
def self_correlation(volume: jax.Array, operators: jax.Array, centre: jax.Array) -> jax.Array:
    """Pearson correlation of a (D, D, D) map with itself under each (K, 3, 3) rotation about ``centre``
    ((x, y, z) voxels about the box centre), over the sphere of radius D/2 around it: (K,)."""
    d = volume.shape[0]
    grid = jnp.arange(d, dtype=jnp.float32) - d // 2
    z, y, x = jnp.meshgrid(grid, grid, grid, indexing="ij")
    xyz = jnp.stack([x, y, z], axis=-1).reshape(-1, 3) - centre
    inside = jnp.sum(xyz**2, axis=-1) <= (d / 2) ** 2
    values = volume.reshape(-1)
    a = jnp.where(inside, values - jnp.sum(values * inside) / jnp.sum(inside), 0.0)  # the same for every S
    a_power = jnp.sum(a * a)

    def one(s):
        moved = xyz @ s.T + centre + d // 2  # S (x - c) + c, as array indices (x, y, z)
        sampled = jax.scipy.ndimage.map_coordinates(volume, [moved[:, 2], moved[:, 1], moved[:, 0]], order=1,
                                                    mode="constant", cval=0.0)
        b = jnp.where(inside, sampled - jnp.sum(sampled * inside) / jnp.sum(inside), 0.0)
        return jnp.sum(a * b) / jnp.sqrt(a_power * jnp.sum(b * b) + 1e-30)

    return jax.lax.map(one, operators, batch_size=64)


@jax.jit
def _refine_correlations(volume, operators, centres):
    """``self_correlation`` of (K, 3, 3) operators, each about its own (K, 3) centre."""
    return jax.vmap(lambda s, c: self_correlation(volume, s[None], c)[0])(operators, centres)


def mirrors(normals: np.ndarray) -> jax.Array:
    """(..., 3) unit plane normals -> (..., 3, 3) reflections I - 2 n n^T."""
    n = jnp.asarray(normals, jnp.float32)
    return jnp.eye(3, dtype=jnp.float32) - 2.0 * n[..., :, None] * n[..., None, :]


def _refine(volume: jax.Array, make: Callable[[np.ndarray], jax.Array], axis: np.ndarray, centre: np.ndarray,
            best_corr: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, float]:
    """An operator's axis (or plane normal) and centre refined together: rounds of 64 random perturbations,
    each keeping the best so far (the centre of mass is only near the axis: ringing, a distinguishing
    feature). ``make`` turns (K, 3) axes into (K, 3, 3) operators."""
    for sigma_deg, sigma_voxel in ((4.0, 0.4), (2.0, 0.2), (1.0, 0.1), (0.5, 0.05)):
        trial = axis + np.radians(sigma_deg) * rng.standard_normal((64, 3))
        trial /= np.linalg.norm(trial, axis=1, keepdims=True)
        centres = centre + sigma_voxel * rng.standard_normal((64, 3))
        c = np.asarray(_refine_correlations(volume, make(trial), jnp.asarray(centres, jnp.float32)))
        if c.max() > best_corr:
            axis, centre, best_corr = trial[int(np.argmax(c))], centres[int(np.argmax(c))], float(c.max())
    return axis, centre, best_corr


def pseudo_symmetry(volume_h: jax.Array, pixel_size_angstrom: float, resolution_angstrom: float = RESOLUTION_ANGSTROM,
                    n_axes: int = 600, seed: int = 0) -> dict:
    """The map's best cyclic pseudo-symmetry and its best mirror plane: the order n in ``ORDERS`` and axis
    whose rotation by 360/n deg about the centre of mass matches the ``resolution_angstrom`` map best,
    and the plane through it whose reflection does (``n_axes`` axes per order and as many plane normals,
    then the best of each refined with its centre, ``_refine``).

    Returns {"order", "axis" (3,), "correlation", "centre_px" (3,) the axis's centre in voxels of the
    full box as (x, y, z), "mirror_normal" (3,), "mirror_correlation", and the mates' "operators"
    (n, 3, 3) — S, S^2, ..., S^(n-1), then the mirror — with their "centres_px" (n, 3)}."""
    low, voxel = low_passed_map(volume_h, pixel_size_angstrom, resolution_angstrom)
    com = centre_of_mass(low)
    volume = jnp.asarray(low, jnp.float32)  # once, for the scan and both refinements
    axes = hemisphere_axes(n_axes)
    angles = np.concatenate([np.full(n_axes, 2 * np.pi / n) for n in ORDERS])
    all_axes = np.tile(axes, (len(ORDERS), 1))
    operators = jnp.concatenate([rotations_about(all_axes, angles), mirrors(axes)])
    corr = np.asarray(self_correlation(volume, operators, jnp.asarray(com, jnp.float32)))
    rng = np.random.default_rng(seed)
    best = int(np.argmax(corr[: len(all_axes)]))
    order = ORDERS[best // n_axes]
    axis, centre, best_corr = _refine(volume, lambda a: rotations_about(a, np.full(len(a), 2 * np.pi / order)),
                                      all_axes[best], com, float(corr[best]), rng)
    plane = int(np.argmax(corr[len(all_axes):]))
    normal, plane_centre, mirror_corr = _refine(volume, mirrors, axes[plane], com, float(corr[len(all_axes) + plane]), rng)
    powers = np.arange(1, order) * 2 * np.pi / order
    ops = np.concatenate([np.asarray(rotations_about(np.tile(axis, (order - 1, 1)), powers)),
                          np.asarray(mirrors(normal))[None]])
    scale = voxel / pixel_size_angstrom
    return {"order": order, "axis": axis, "correlation": best_corr, "centre_px": centre * scale,
            "mirror_normal": normal, "mirror_correlation": mirror_corr, "operators": ops,
            "centres_px": np.concatenate([np.tile(centre * scale, (order - 1, 1)), plane_centre[None] * scale])}


def _angle_deg(a, b) -> float:
    """The angle between two lines (an axis and its opposite are one), degrees."""
    cosine = abs(float(np.dot(np.asarray(a, float), np.asarray(b, float))))
    return float(np.degrees(np.arccos(min(cosine, 1.0))))


def same_symmetry(previous: dict | None, found: dict, axis_tolerance_deg: float = 5.0) -> bool:
    """Whether ``found`` (``pseudo_symmetry``'s output) is the symmetry ``previous`` ({"order", "axis"},
    with "mirror_normal" when it had one; or None) described: the same order, axes and mirror planes'
    normals within ``axis_tolerance_deg``. A mate under an axis off by d deg lies within ~2 d deg of the
    true mate, which the mate test's local refinement reaches."""
    if previous is None or int(previous["order"]) != int(found["order"]):
        return False
    if ("mirror_normal" in previous) != ("mirror_normal" in found):
        return False
    if "mirror_normal" in found and _angle_deg(previous["mirror_normal"], found["mirror_normal"]) > axis_tolerance_deg:
        return False
    return _angle_deg(previous["axis"], found["axis"]) <= axis_tolerance_deg


def mate_poses(rotations: jax.Array, shifts_px: jax.Array, operators: jax.Array, centres_px: jax.Array):
    """Each pose's symmetry mates: (B, 3, 3) rotations, (B, 2) shifts, (K, 3, 3) operators (rotations or
    mirrors), their centres (K, 3) (or one (3,) for all) -> rotations R S_k^T, or M R S_k^T for a mirror
    (B, K, 3, 3), and shifts (B, K, 2) that put the mate's centre where the pose's is."""
    flip = jnp.sign(jnp.linalg.det(operators))  # +1 rotation, -1 mirror: M = diag(1, 1, -1) makes it proper
    m = jnp.ones((operators.shape[0], 3), rotations.dtype).at[:, 2].set(flip)
    mates = m[None, :, :, None] * (rotations[:, None] @ jnp.swapaxes(operators, -1, -2)[None])
    centres = jnp.broadcast_to(centres_px, (operators.shape[0], 3))
    moved = jnp.einsum("bij,kj->bki", rotations, centres) - jnp.einsum("bkij,kj->bki", mates, centres)
    return mates, shifts_px[:, None] + moved[..., :2]
