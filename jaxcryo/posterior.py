"""Pose landscapes for figures: per-head errors over view directions, and the approximate log-posterior
of a particle's view direction (the paper's Figs. 4, 5 and 8).

View directions d = A[2, :] (``geometry.view_directions``) are binned on an equal-area grid: uniform in
z = cos(tilt) and in azimuth phi = rot, so every cell covers the same solid angle.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxcryo import ctf as ctf_lib
from jaxcryo import dataset, geometry, inversion, losses, pseudosym, research, slicing
from jaxcryo.steps import batch_targets


def equal_area_cell(views: np.ndarray, n_z: int, n_phi: int) -> tuple[np.ndarray, np.ndarray]:
    """(N, 3) unit view directions -> (z bin, phi bin) indices of the equal-area grid."""
    z_bin = np.clip(((views[:, 2] + 1) / 2 * n_z).astype(int), 0, n_z - 1)
    phi = np.arctan2(views[:, 1], views[:, 0])
    phi_bin = np.clip(((phi + np.pi) / (2 * np.pi) * n_phi).astype(int), 0, n_phi - 1)
    return z_bin, phi_bin


def per_head_error_maps(heads: np.ndarray, r_true: np.ndarray, q: np.ndarray, mirrored: bool,
                        n_z: int = 12, n_phi: int = 24) -> np.ndarray:
    """(S, M, 3, 3) head poses, (S, 3, 3) true poses, global alignment -> (M, n_z, n_phi) mean error (deg)."""
    from jaxcryo.frames import MIRROR

    if mirrored:
        heads = MIRROR @ heads @ MIRROR
    target = r_true @ q
    z_bin, phi_bin = equal_area_cell(r_true[:, 2, :], n_z, n_phi)
    maps = np.full((heads.shape[1], n_z, n_phi), np.nan)
    for m in range(heads.shape[1]):
        err = np.asarray(geometry.geodesic_distance_deg(jnp.asarray(heads[:, m], jnp.float32), jnp.asarray(target, jnp.float32)))
        total = np.zeros((n_z, n_phi))
        count = np.zeros((n_z, n_phi))
        np.add.at(total, (z_bin, phi_bin), err)
        np.add.at(count, (z_bin, phi_bin), 1)
        maps[m] = np.where(count > 0, total / np.maximum(count, 1), np.nan)
    return maps


def view_log_posterior(volume_h, images: np.ndarray, ctf_params: dict, pixel_size_angstrom: float,
                       n_z: int = 16, n_phi: int = 32, n_psi: int = 24, chunk: int = 2048) -> np.ndarray:
    """(B, L, L) normalised images -> (B, n_z, n_phi) log-likelihood of each view direction (max over
    in-plane angle, unit noise variance per Hartley coefficient, uniform prior), minus its maximum."""
    size = images.shape[-1]
    z = -1 + (np.arange(n_z) + 0.5) * 2 / n_z
    phi = -180 + (np.arange(n_phi) + 0.5) * 360 / n_phi
    psi = np.arange(n_psi) * 360 / n_psi
    zz, pp, ss = np.meshgrid(z, phi, psi, indexing="ij")
    euler = np.stack([pp.ravel(), np.degrees(np.arccos(zz.ravel())), ss.ravel()], axis=1)
    rotations = geometry.euler_to_matrix(jnp.asarray(euler, jnp.float32))
    target = losses.images_to_hartley(jnp.asarray(images, jnp.float32))
    ctf = ctf_lib.ctf_grid(size, pixel_size_angstrom, **ctf_params).astype(jnp.float32)
    mask = slicing.frequency_mask(size, 1.0)
    parts = [np.asarray(losses.search_losses(volume_h, rotations[i : i + chunk], ctf, target, mask))
             for i in range(0, rotations.shape[0], chunk)]
    log_lik = -np.concatenate(parts, axis=1) * float(mask.sum())  # the loss is a mean over the mask
    log_lik = log_lik.reshape(len(images), n_z, n_phi, n_psi).max(axis=-1)
    return log_lik - log_lik.max(axis=(1, 2), keepdims=True)


def _truth_problem(volume: np.ndarray, source, true_rotations: np.ndarray, rows: np.ndarray,
                   true_shifts_px: np.ndarray | None):
    """The sampled images' likelihood under the true map: (vol_h scaled to the images by least squares,
    rotations (B, 3, 3), shifts (B, 2) (0 for centred particles), CTF (B, L, L), Hartley targets, mask),
    made as the run's steps make theirs (``jaxcryo.steps.batch_targets``: a whitening source's CTFs whitened
    alike)."""
    arrays = dataset.host_batch(source.batch(rows), source.table)
    target, ctf, mask = batch_targets(jax.tree.map(jnp.asarray, arrays), source.pixel_size_angstrom, 1.0)
    rot = jnp.asarray(true_rotations[rows], jnp.float32)
    shift = (jnp.zeros((len(rows), 2), jnp.float32) if true_shifts_px is None
             else jnp.asarray(true_shifts_px[rows], jnp.float32))
    vol_h = slicing.volume_to_hartley(jnp.asarray(volume, jnp.float32))
    at_truth = losses.predict(vol_h, rot, ctf, shift)
    vol_h = vol_h * jnp.sum(at_truth * target * mask) / jnp.sum(at_truth**2 * mask)
    return vol_h, rot, shift, ctf, target, mask


@functools.partial(jax.jit, static_argnames=("steps", "move_shifts"))
def _nearest_maximum(vol_h, rot, shift, ctf, target, mask, steps: int, move_shifts: bool = False):
    """Each pose (B, 3, 3) with its shift (B, 2) moved by Adam on the Gaussian likelihood to its nearest
    maximum (the shift held unless ``move_shifts``): the rotation vectors omega (B, 3) that took it there
    and the per-image losses (B,) at the end."""
    shift_step_px = 5.0  # Adam moves each parameter ~its rate a step: 0.05 px for the shifts

    def per_image(params):  # params: omega (B, 3), or (omega, shift moves (B, 2)) with move_shifts
        omega, moved = params if move_shifts else (params, 0.0)
        return losses.loss_at(vol_h, geometry.so3_exp(omega) @ rot, ctf, target, mask,
                              shifts_px=shift + shift_step_px * moved if move_shifts else shift)

    opt = optax.adam(0.01)

    def step(_, carry):
        params, state = carry
        updates, state = opt.update(jax.grad(lambda p: jnp.sum(per_image(p)))(params), state)
        return optax.apply_updates(params, updates), state

    omega = jnp.zeros((rot.shape[0], 3), jnp.float32)
    params = (omega, jnp.zeros_like(shift)) if move_shifts else omega
    params, _ = jax.lax.fori_loop(0, steps, step, (params, opt.init(params)))
    return (params[0] if move_shifts else params), per_image(params)


def _sample_rows(source, n_images: int, seed: int) -> np.ndarray:
    n = len(source.table)
    return np.sort(np.random.default_rng(seed).choice(n, min(n_images, n), replace=False))


def pose_error_floor(volume: np.ndarray, source, true_rotations: np.ndarray, n_images: int = 256,
                     steps: int = 200, seed: int = 0, true_shifts_px: np.ndarray | None = None) -> dict:
    """How far each image's most likely pose lies from its true pose when the map is perfect: the
    floor under any method's pose error (a small particle at low SNR has a posterior degrees wide).

    ``volume`` (L, L, L) the true map, ``source`` an ImageSource of the particles, ``true_rotations``
    (N, 3, 3), ``true_shifts_px`` (N, 2) the particles' displacements (None: centred; the floor is
    meaningless for shifted particles without them). For ``n_images`` sampled images the true map is
    scaled to the images by least squares, then each pose is moved by Adam on the Gaussian likelihood
    from the true pose to the nearest maximum. Returns the median / mean / 90th-percentile distance (deg)."""
    problem = _truth_problem(volume, source, true_rotations, _sample_rows(source, n_images, seed), true_shifts_px)
    omega, _ = _nearest_maximum(*problem, steps)
    err = np.degrees(np.linalg.norm(np.asarray(omega), axis=1))
    return {"floor_median_deg": float(np.median(err)), "floor_mean_deg": float(np.mean(err)),
            "floor_p90_deg": float(np.percentile(err, 90))}


def half_map_floor(source, true_rotations: np.ndarray, labels: np.ndarray, n_images: int = 256, steps: int = 200,
                   seed: int = 0, true_shifts_px: np.ndarray | None = None, batch_size: int = 256) -> dict:
    """``pose_error_floor`` with the map the data allow instead of the true one: each sampled image's
    pose is moved from its true pose to its nearest maximum under the Wiener-filtered map of the *other*
    half set (``labels`` (N,) in {1, 2}) made by direct inversion at the true poses
    (``inversion.reconstruct``). No run that makes its map from these images does much better than this,
    where the true map's floor assumes a perfect one; a map of every image would see each image's own
    noise at its true pose, so the figure is for half the images' map (a map of all of them, whose SNR
    is twice as high, would give a little less). Returns {"half_map_floor_median_deg",
    "half_map_floor_mean_deg", "half_map_floor_p90_deg"}."""
    shifts = np.zeros((len(true_rotations), 2), np.float32) if true_shifts_px is None else true_shifts_px
    maps = inversion.reconstruct(source, true_rotations, shifts, labels, batch_size, filtered_halves=True,
                                 full_map=False)
    rows = _sample_rows(source, n_images, seed)
    errors = []
    for half in (1, 2):
        mine = rows[labels[rows] == half]
        problem = _truth_problem(maps[f"half{3 - half}_filtered"], source, true_rotations, mine, true_shifts_px)
        errors.append(np.degrees(np.linalg.norm(np.asarray(_nearest_maximum(*problem, steps)[0]), axis=1)))
    err = np.concatenate(errors)
    return {"half_map_floor_median_deg": float(np.median(err)), "half_map_floor_mean_deg": float(np.mean(err)),
            "half_map_floor_p90_deg": float(np.percentile(err, 90))}


def mate_floor(volume: np.ndarray, source, true_rotations: np.ndarray, n_images: int = 256, steps: int = 200,
               seed: int = 0, true_shifts_px: np.ndarray | None = None) -> dict:
    """How many images are more likely at a pseudo-symmetry mate of their true pose than at the true pose
    itself when the map is perfect: the share of a pseudo-symmetric particle's images that any method
    which takes each image's most likely pose leaves at a mate (``pose_error_floor``'s counterpart for
    the turned images).

    The true map's own pseudo-symmetry (``jaxcryo.pseudosym.pseudo_symmetry``: its cyclic rotations and
    its mirror plane) gives each sampled image's mates of the true pose; the true pose and every mate are
    moved by Adam to their nearest maxima with the same effort, so neither side wins by being polished
    more (the shifts are held: the true ones, and the mates' moved about the symmetry's centre).
    Returns {"mate_floor_fraction": the share whose best mate is more likely, "mate_evidence_median_nats":
    the median log-likelihood ratio of the true pose's maximum over the best mate's
    (``research.evidence_nats``), "mate_order": the symmetry's order}."""
    rows = _sample_rows(source, n_images, seed)
    vol_h, rot, shift, ctf, target, mask = _truth_problem(volume, source, true_rotations, rows, true_shifts_px)
    sym = pseudosym.pseudo_symmetry(vol_h, source.pixel_size_angstrom)
    mates, mate_shifts = pseudosym.mate_poses(rot, shift, jnp.asarray(sym["operators"], jnp.float32),
                                              jnp.asarray(sym["centres_px"], jnp.float32))
    _, at_truth = _nearest_maximum(vol_h, rot, shift, ctf, target, mask, steps)
    at_mates = jnp.stack([_nearest_maximum(vol_h, mates[:, k], mate_shifts[:, k], ctf, target, mask, steps)[1]
                          for k in range(mates.shape[1])], axis=1)
    best_mate = np.asarray(jnp.min(at_mates, axis=1))
    evidence = -research.evidence_nats(np.asarray(at_truth), best_mate, source.image_size, 1.0)
    return {"mate_floor_fraction": float(np.mean(evidence < 0)),
            "mate_evidence_median_nats": float(np.median(evidence)), "mate_order": int(sym["order"])}


def basin_test(volume: np.ndarray, source, true_rotations: np.ndarray, rotations: np.ndarray, rows: np.ndarray,
               steps: int = 200, true_shifts_px: np.ndarray | None = None) -> dict:
    """Whether the poses a run gave images ``rows`` are the data's or the run's: under the true map, each
    given pose (``rotations`` (N, 3, 3), in the truth's frame: ``evaluate.in_truth_frame``) and the true
    pose are moved by the same Adam steps to their nearest maxima, shifts too (from the true ones: a
    mate about an off-centre axis sits off-centre). Where both reach one maximum the given pose lies in
    the truth's basin: a better map would have brought it back. Where they part, the likelihood ratio
    says which the data prefer.
    Returns {"apart_deg": (B,) the distance between the two maxima, "evidence_nats": (B,) the log-likelihood
    ratio of the given pose's maximum over the truth's (``research.evidence_nats``: > 0 where the data
    themselves prefer the given pose)}."""
    vol_h, rot, shift, ctf, target, mask = _truth_problem(volume, source, true_rotations, rows, true_shifts_px)
    given = jnp.asarray(rotations[rows], jnp.float32)
    omega_t, loss_t = _nearest_maximum(vol_h, rot, shift, ctf, target, mask, steps, move_shifts=True)
    omega_g, loss_g = _nearest_maximum(vol_h, given, shift, ctf, target, mask, steps, move_shifts=True)
    apart = geometry.geodesic_distance_deg(geometry.so3_exp(omega_t) @ rot, geometry.so3_exp(omega_g) @ given)
    return {"apart_deg": np.asarray(apart, np.float64),
            "evidence_nats": research.evidence_nats(np.asarray(loss_t), np.asarray(loss_g), source.image_size, 1.0)}
