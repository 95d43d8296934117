"""Map and pose evaluation: FSC, resolution crossings, global pose alignment (both hands), pose errors.

Frames: a reconstruction is defined up to a global rotation Q and a mirror. If the map is
V_est(p) = V_true(Q p), its poses are R_est = R_true Q (``jaxcryo.geometry`` convention); a mirrored
map V_est(p) = W(M p), M = diag(1, 1, -1), has poses M R_W M. ``align_poses`` finds Q and the hand by
robust least squares on SO(3); ``frames.align_map`` applies them to the map (in Fourier space, on a 2x
oversampled grid, so high frequencies are not blurred by real-space interpolation).
"""

from __future__ import annotations

import pathlib

import numpy as np
import jax.numpy as jnp

from jaxcryo import align, fourier, geometry
from jaxcryo.frames import MIRROR



def fsc(vol_a: np.ndarray, vol_b: np.ndarray) -> np.ndarray:
    """(D, D, D) x 2 -> (D//2 + 1,) Fourier shell correlation at integer radii 0..Nyquist."""
    fa = np.asarray(fourier.fft_centered(jnp.asarray(vol_a, jnp.float32), 3))
    fb = np.asarray(fourier.fft_centered(jnp.asarray(vol_b, jnp.float32), 3))
    size = vol_a.shape[-1]
    r = np.round(np.asarray(fourier.radial_index_grid(size, 3))).astype(int).ravel()
    n = size // 2 + 1
    keep = r < n
    cross = np.bincount(r[keep], (fa * np.conj(fb)).real.ravel()[keep], minlength=n)
    pa = np.bincount(r[keep], (np.abs(fa) ** 2).ravel()[keep], minlength=n)
    pb = np.bincount(r[keep], (np.abs(fb) ** 2).ravel()[keep], minlength=n)
    return cross / np.sqrt(np.maximum(pa * pb, 1e-30))


def soft_sphere_mask(size: int, radius_fraction: float = 0.42, edge_fraction: float = 0.06) -> np.ndarray:
    """(D, D, D) mask: 1 inside radius_fraction * D, cosine fall-off to 0 over edge_fraction * D."""
    c = np.arange(size) - size // 2
    r = np.sqrt(c[:, None, None] ** 2 + c[None, :, None] ** 2 + c[None, None, :] ** 2) / size
    t = np.clip((r - radius_fraction) / edge_fraction, 0.0, 1.0)
    return (0.5 * (1 + np.cos(np.pi * t))).astype(np.float32)


def fsc_curves(vol_a: np.ndarray, vol_b: np.ndarray) -> dict[str, np.ndarray]:
    """FSC without and with the soft spherical mask: {"unmasked": ..., "masked": ...}."""
    mask = soft_sphere_mask(vol_a.shape[0])
    return {"unmasked": fsc(vol_a, vol_b), "masked": fsc(vol_a * mask, vol_b * mask)}


def write_fsc_csv(path, curves: dict[str, np.ndarray], pixel_size_angstrom: float) -> None:
    """Columns: frequency (1/A), unmasked FSC, masked FSC."""
    n = len(curves["unmasked"])
    freq = np.arange(n) / (2 * (n - 1) * pixel_size_angstrom)
    np.savetxt(path, np.column_stack([freq, curves["unmasked"], curves["masked"]]), delimiter=",",
               header="frequency_inv_angstrom,fsc_unmasked,fsc_masked", comments="")


def resolution_at(curve: np.ndarray, threshold: float, pixel_size_angstrom: float) -> float:
    """Resolution (A) where the FSC first falls below ``threshold``, linearly interpolated between
    shells; a curve that never falls below reports Nyquist (2 x pixel size)."""
    size = 2 * (len(curve) - 1)
    below = np.nonzero(curve[1:] < threshold)[0]
    if len(below) == 0:
        return 2.0 * pixel_size_angstrom
    i = below[0] + 1  # first shell below; shell i-1 is above
    frac = (curve[i - 1] - threshold) / max(curve[i - 1] - curve[i], 1e-12)  # a flat step crosses at once
    radius = (i - 1) + frac
    return float(size * pixel_size_angstrom / max(radius, 1e-9))


def _project_so3(m: np.ndarray) -> np.ndarray:
    u, _, vt = np.linalg.svd(m)
    d = np.sign(np.linalg.det(u @ vt))
    return u @ np.diag([1.0, 1.0, d]) @ vt


def _fit_global(r_true: np.ndarray, r_est: np.ndarray, iters: int = 5, n_seeds: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Q minimising sum ||R_true Q - R_est||^2 over the best half of particles (re-selected each pass).

    Seeded from single particles (each R_true^T R_est is a candidate Q; the one whose errors have the
    lowest 40 % quantile wins): when the poses split between modes (e.g. a near-symmetric map's two
    hands of a two-fold), the mean of all candidates lies between the modes and matches neither.
    """
    rel = np.swapaxes(r_true, 1, 2) @ r_est  # each ~ Q
    seeds = np.random.default_rng(0).choice(len(rel), size=min(n_seeds, len(rel)), replace=False)

    def errors(q):
        return np.asarray(geometry.geodesic_distance_deg(jnp.asarray(r_true @ q), jnp.asarray(r_est)))

    candidates = [_project_so3(rel.mean(axis=0))] + [rel[i] for i in seeds]
    q = min(candidates, key=lambda c: np.quantile(errors(c), 0.4))
    err = errors(q)
    for _ in range(iters):
        keep = err <= np.quantile(err, 0.5)
        q = _project_so3(rel[keep].mean(axis=0))
        err = errors(q)
    return q, err


def align_poses(r_est: np.ndarray, r_true: np.ndarray) -> dict:
    """Best global rotation and hand relating estimated to true poses, and the pose errors after it."""
    best = None
    for mirrored in (False, True):
        est = MIRROR @ r_est @ MIRROR if mirrored else r_est
        q, err = _fit_global(r_true, est)
        # the hand whose best 40 % of particles fit better (the median could fall in a second mode)
        if best is None or np.quantile(err, 0.4) < np.quantile(best["rotation_error_deg"], 0.4):
            view_true = (r_true @ q)[:, 2, :]
            view_est = est[:, 2, :]
            view_err = np.degrees(np.arccos(np.clip(np.sum(view_true * view_est, axis=1), -1, 1)))
            best = {"q": q, "mirrored": mirrored, "rotation_error_deg": err, "view_error_deg": view_err}
    return best


def error_vectors_deg(r_est: np.ndarray, r_true: np.ndarray, q: np.ndarray, mirrored: bool) -> np.ndarray:
    """(N, 3) each image's pose error as a rotation vector (axis x sin(angle), in degrees; the angle for
    small errors) in the truth's frame, after ``align_poses``' global rotation ``q`` and hand: R_est =
    R_true Q E, E = Exp(e) with e in Q's frame, reported as Q e."""
    err = np.swapaxes(r_true, 1, 2) @ in_truth_frame(r_est, q, mirrored)  # Q E Q^T, whose vector is Q e
    return np.degrees(np.asarray(geometry.vee(jnp.asarray(err)), np.float64))


def in_truth_frame(r_est: np.ndarray, q: np.ndarray, mirrored: bool) -> np.ndarray:
    """(N, 3, 3) estimated poses -> the same poses in the truth's frame and hand (``align_poses``' ``q`` and
    ``mirrored``: R_est = R_true Q, so R_est Q^T sits beside R_true), for judging them under the true map."""
    est = MIRROR @ r_est @ MIRROR if mirrored else r_est
    return est @ np.swapaxes(q, -1, -2)


def neighbour_error_share(r_true: np.ndarray, error_vectors: np.ndarray, n_neighbours: int = 10,
                          n_samples: int = 400, seed: int = 0) -> float:
    """How much of an image's pose error its neighbours share: for sampled images, the mean projection
    of the error vectors of the ``n_neighbours`` images nearest in pose (geodesic, true poses) onto the
    image's own, over its squared length; the median over the sample.

    ~0 when errors are independent (noise); near 1 when they form a smooth field over SO(3): a map and
    poses warped together, a self-consistent solution that per-image refinement cannot leave."""
    rng = np.random.default_rng(seed)
    n = len(r_true)
    shares = []
    for i in rng.choice(n, min(n_samples, n), replace=False):
        cos = (np.einsum("ij,nij->n", r_true[i], r_true) - 1) / 2  # cos of the geodesic distance
        cos[i] = -np.inf
        near = np.argpartition(-cos, n_neighbours)[:n_neighbours]
        own = error_vectors[i] @ error_vectors[i]
        if own > 1e-12:
            shares.append(np.mean(error_vectors[near] @ error_vectors[i]) / own)
    return float(np.median(shares)) if shares else float("nan")


def shift_errors(rotations: np.ndarray, shifts_est: np.ndarray, shifts_true: np.ndarray, iters: int = 4) -> dict:
    """Per-image shift errors (N,) after removing the map's own translation; shifts (N, 2), any unit.

    A map translated by d (its own frame) shows in image i as an extra shift (R_i d)_xy (the slice at
    A = R_i has frequencies A^T k, so exp(-2 pi i (A^T k).d) = exp(-2 pi i k.(A d))). d is fitted by
    least squares over the better half of the images, re-selected each pass, then removed.
    """
    a = np.asarray(rotations, np.float64)[:, :2, :]  # (N, 2, 3)
    diff = np.asarray(shifts_est, np.float64) - np.asarray(shifts_true, np.float64)
    keep = np.ones(len(diff), bool)
    for _ in range(iters):
        d = np.linalg.lstsq(a[keep].reshape(-1, 3), diff[keep].reshape(-1), rcond=None)[0]
        err = np.linalg.norm(diff - a @ d, axis=1)
        keep = err <= np.quantile(err, 0.5)
    return {"shift_error": err, "map_translation": d}


def pose_errors(rotations: np.ndarray, ground_truth_poses: str, shifts_angstrom: np.ndarray | None = None,
                pixel_size_angstrom: float | None = None) -> tuple[dict, dict]:
    """Align (N, 3, 3) estimated poses to a star of true poses: (alignment, summary figures).

    With estimated shifts (N, 2) in A (the particle's displacement, i.e. minus RELION's origin) also
    the shift errors (``shift_errors``), in A and in pixels of ``pixel_size_angstrom``."""
    from jaxcryo.io import read_particles

    truth = read_particles(ground_truth_poses)
    r_true = truth.rotations()
    a = align_poses(np.asarray(rotations, np.float32), r_true)
    err, view = a["rotation_error_deg"], a["view_error_deg"]
    out = {"pose_error_median_deg": float(np.median(err)), "pose_error_mean_deg": float(np.mean(err)),
           "view_error_median_deg": float(np.median(view)), "view_error_mean_deg": float(np.mean(view)),
           "mirrored": bool(a["mirrored"])}
    if shifts_angstrom is not None:
        true_shifts = np.zeros((len(truth), 2)) if truth.origin_angstrom is None else truth.displacements_angstrom()
        s = shift_errors(rotations, shifts_angstrom, true_shifts)
        out.update(shift_error_median_angstrom=float(np.median(s["shift_error"])),
                   shift_error_mean_angstrom=float(np.mean(s["shift_error"])),
                   map_translation_angstrom=[float(x) for x in s["map_translation"]])
        if pixel_size_angstrom:
            out["shift_error_median_px"] = out["shift_error_median_angstrom"] / pixel_size_angstrom
    return a, out


def summarize(volume: np.ndarray, rotations: np.ndarray, pixel_size_angstrom: float,
              ground_truth: str | None, ground_truth_poses: str | None, shifts_angstrom: np.ndarray | None = None,
              shift_pixel_angstrom: float | None = None) -> dict:
    """Pose (and shift) errors and FSC resolution against the ground truth, when one is given. The map
    is brought into the truth's frame by the poses' rotation and hand, then the FFT peak's translation
    (a map is only defined up to a shift, which the images' shifts absorb)."""
    if not ground_truth_poses:
        return {}
    from jaxcryo.io import read_volume

    a, out = pose_errors(rotations, ground_truth_poses, shifts_angstrom, shift_pixel_angstrom)
    if ground_truth:
        gt, _ = read_volume(ground_truth)
        if gt.shape[0] > volume.shape[0]:  # a coarser map (amortized stage): compare at its sampling
            gt = np.asarray(fourier.fourier_crop(jnp.asarray(gt), volume.shape[0], 3))
        if gt.shape == volume.shape:
            curve = fsc(align.align_known_rotation(volume, gt, a["q"], a["mirrored"]), gt)
            out["fsc05_angstrom"] = resolution_at(curve, 0.5, pixel_size_angstrom)
            out["fsc0143_angstrom"] = resolution_at(curve, 0.143, pixel_size_angstrom)
    return out


def contrast_correlation(contrast: np.ndarray | None, ground_truth_poses: str | None) -> dict:
    """{"contrast_correlation": r} between the fitted per-particle contrasts (N,) and the simulated ones
    (``ground_truth_contrast.npy`` beside the true poses, as ``jaxcryo.simulate`` writes it), else {}:
    no truth, or contrasts all equal (never fitted: no auto-decoding epoch ran), whose correlation is NaN."""
    if contrast is None or not ground_truth_poses or np.ptp(contrast) == 0:
        return {}
    truth = pathlib.Path(ground_truth_poses).with_name("ground_truth_contrast.npy")
    if not truth.exists():
        return {}
    return {"contrast_correlation": float(np.corrcoef(contrast, np.load(truth))[0, 1])}
