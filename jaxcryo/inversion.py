"""A map from images and known poses: regularised direct Fourier inversion (a Wiener filter).

The estimate at each 3D frequency k is
    V(k) = sum_i CTF_i X_i(k) / (sum_i CTF_i(k)^2 + 1 / SNR(|k|) / <1 / sum_i CTF_i^2>_shell)
where X_i is image i's transform placed on its central slice (trilinear insertion,
``jaxcryo.slicing.insert_slices``: the adjoint of ``extract_slices``, tested against its ``jax.vjp``)
and SNR(|k|) comes from the FSC of the two half-set reconstructions, FSC_full = 2 FSC / (1 + FSC),
SNR = FSC_full / (1 - FSC_full): where the halves agree the data decide, where they do not the map is
shrunk to zero. This is how RELION regularises its reconstruction (tau^2 from the FSC). The noise
variance cancels in the ratio, so the images need no noise estimate.

With weighted pose draws per image (``insert``'s ``draws``: the heaviest draws of ``jaxcryo.posemean``)
both sums hold sum_t w_t CTF_i X_i and sum_t w_t CTF_i^2 on each draw's slice: the map marginalised over
each image's pose posterior, as RELION's expectation step builds it. Measured offline on two finished
runs (5,000 x 64 px, SNR 0.1): 8 draws per image took the map from 7.08 A (one insertion at the
posterior means) to 6.75 A against the truth (outside simulator seed 11; 7.28 A at the most likely
poses; plain inversion at the true poses 6.97 A, marginalised around them 6.56 A) and from 7.52 to
7.01 A (seed 5, a pseudo-two-fold dimer; plain at the true poses 7.41 A).

``PAD`` > 1 zero-pads the images before the transform so inserted samples are denser (RELION's padding
factor 2). Measured on a 5,000 x 64 px simulated set at the true poses: padding 1 gave FSC 0.5 against
the truth 7.03 A in 16 s, padding 2 gave 7.48 A in 75 s, so the default is 1. Map values are in image
units: projecting the map reproduces the (CTF-free) images.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from jaxcryo import ctf as ctf_lib
from jaxcryo import distributed, evaluate, fourier, geometry, losses, noise, slicing
from jaxcryo.io.loader import chunks_read_ahead
from jaxcryo.io.table import CTF_FIELDS

PAD = 1


def insertion_data(images, ctf_fields: dict, shifts_px, weight, pixel_size_angstrom, size: int,
                   noise_radial=None):
    """(B, P, P, 2): each image's [CTF * X, CTF^2] on the P-grid, as ``insert`` spreads them.

    images (B, L, L) real; ctf_fields the CTF_FIELDS, (B,) each; shifts_px (B, 2); weight (B,): 0 for
    padding rows, else 1 or the image's contrast scale; noise_radial (B, R) whitening profiles or None.
    """
    h = fourier.ht(fourier.pad_center(images, size))
    h = losses.shift_hartley(h, -shifts_px)  # re-centre each particle
    ctf = ctf_lib.ctf_grid(size, pixel_size_angstrom, **ctf_fields).astype(h.dtype) * weight[:, None, None]
    if noise_radial is not None:  # the same frequency on the padded grid: radius scaled by L / P
        box = images.shape[-1]
        ctf = ctf * noise_radial[:, np.round(noise.radius_grid(size) * box / size).astype(np.int32)].astype(ctf.dtype)
    return jnp.stack([h * ctf, ctf**2], -1)


@functools.partial(jax.jit, donate_argnums=(0,))
def insert(sums, images, ctf_fields: dict, rotations, shifts_px, keep, pixel_size_angstrom, noise_radial=None,
           contrast=None, draws=None):
    """Add a batch to the accumulator.

    Args:
      sums: (P, P, P, 2) Hartley-space sums of CTF * X and of CTF^2 (P = PAD * L).
      images: (B, L, L) real images; ctf_fields: the CTF_FIELDS of each image, (B,) each.
      rotations: (B, 3, 3); shifts_px: (B, 2) particle displacements (x, y) in pixels.
      keep: (B,) 1 for real rows, 0 for the rows that pad the last batch to a static shape.
      noise_radial: (B, R) whitening profiles of whitened images (``jaxcryo.noise``), or None.
      contrast: (B,) per-image contrast scales a (image = a * CTF * slice + noise), or None for 1:
        the sums become those of a CTF X and of a^2 CTF^2, the least-squares volume under that model.
      draws: None, or (omega (B, T, 3), weights (B, T) summing to 1 per image): each image is inserted
        at the T rotations Exp(omega_t) R with both sums weighted by w_t (RELION's expectation step:
        the map marginalised over each image's pose posterior, ``jaxcryo.posemean``).
    """
    weight = keep if contrast is None else keep * contrast
    data = insertion_data(images.astype(sums.dtype), ctf_fields, shifts_px, weight, pixel_size_angstrom,
                          sums.shape[0], noise_radial)
    if draws is not None:
        omega, weights = draws
        rotations = (geometry.so3_exp(omega) @ rotations[:, None]).reshape(-1, 3, 3)
        data = (data[:, None] * weights[:, :, None, None, None].astype(data.dtype)).reshape((-1,) + data.shape[1:])
    return slicing.insert_slices(sums, rotations, data)


def accumulate(source, rotations: np.ndarray, shifts_px: np.ndarray, labels: np.ndarray,
               batch_size: int = 64, contrast: np.ndarray | None = None,
               draws: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Sums of both half sets: (2, P, P, P) numerators and weights.

    ``source``: an ImageSource (``source.read(rows)``, ``source.table``); ``rotations`` (N, 3, 3),
    ``shifts_px`` (N, 2) in pixels of the source's box, ``labels`` (N,) half-set labels in {1, 2},
    ``contrast`` (N,) per-particle contrast scales or None (all 1), ``draws`` None or (omega (N, T, 3),
    weights (N, T)): each image inserted at T weighted rotations around its own (``insert``).
    With several processes each inserts its own block of rows and the sums are added over processes.
    """
    size = PAD * source.image_size
    halves = []
    fields = {k: np.asarray(getattr(source.table, k), np.float32) for k in CTF_FIELDS}
    for half in (1, 2):
        rows = distributed.process_share(np.nonzero(labels == half)[0])
        sums = jnp.zeros((size,) * 3 + (2,), jnp.float32)
        for _, idx, padded, batch in chunks_read_ahead(source, rows, batch_size, own_share=False):
            keep = (np.arange(batch_size) < len(idx)).astype(np.float32)
            sums = insert(sums, jnp.asarray(batch.images), {k: v[padded] for k, v in fields.items()},
                          jnp.asarray(rotations[padded], jnp.float32), jnp.asarray(shifts_px[padded], jnp.float32),
                          jnp.asarray(keep), float(source.pixel_size_angstrom), batch.noise_radial,
                          None if contrast is None else jnp.asarray(contrast[padded], jnp.float32),
                          None if draws is None else tuple(jnp.asarray(d[padded], jnp.float32) for d in draws))
        halves.append(np.asarray(sums))
    total = distributed.sum_over_processes(np.moveaxis(np.stack(halves), -1, 0))  # one all-gather
    return total[0], total[1]


def _to_real(h: np.ndarray, box: int) -> np.ndarray:
    return np.asarray(fourier.crop_center(fourier.iht(jnp.asarray(h), 3), box, 3), np.float32)


def _shell_index(size: int, box: int) -> np.ndarray:
    """Each voxel of the P-grid -> the integer radius on the box's frequency grid (P = PAD * box)."""
    return np.round(np.asarray(fourier.radial_index_grid(size, 3)) * box / size).astype(int)


def wiener_terms(weight: np.ndarray, ssnr: np.ndarray, floor: float, box: int) -> tuple[np.ndarray, np.ndarray]:
    """The filter's (P, P, P) regulariser 1 / (SSNR x <1 / weight>_shell) and the voxels that hold a
    value (weight above ``floor``, within the box's Nyquist sphere: beyond it no image has data)."""
    size = weight.shape[-1]
    shell_all = _shell_index(size, box)
    shell = np.minimum(shell_all, len(ssnr) - 1)
    hit = weight > floor
    inv_w = np.bincount(shell[hit], 1.0 / weight[hit], minlength=len(ssnr)) / np.maximum(
        np.bincount(shell[hit], minlength=len(ssnr)), 1)
    reg = 1.0 / (ssnr * np.maximum(inv_w, 1e-30))
    return reg[shell], hit & (shell_all <= box // 2)


def _wiener(numerator: np.ndarray, weight: np.ndarray, ssnr: np.ndarray, floor: float, box: int) -> np.ndarray:
    """numerator / (weight + 1 / (SSNR x <1 / weight>_shell)) on the (P,)^3 grid -> (box,)^3 real space."""
    reg, valid = wiener_terms(weight, ssnr, floor, box)
    return _to_real(np.where(valid, numerator / (weight + reg), 0.0), box)


def ssnr_from_fsc(fsc: np.ndarray) -> np.ndarray:
    """Per-shell SNR FSC / (1 - FSC) of the map whose halves' FSC (or full-map FSC) is ``fsc``."""
    fsc = np.clip(fsc, 1e-4, 0.9999)
    return fsc / (1 - fsc)


def weight_floor(weights: np.ndarray) -> float:
    """The weight below which a voxel counts as empty: 1e-3 x the mean of the non-empty ones."""
    return 1e-3 * float(np.mean(weights[weights > 0])) if np.any(weights > 0) else 1.0


def wiener_maps(numerators: np.ndarray, weights: np.ndarray, box: int, filtered_halves: bool = False,
                full_map: bool = True, full_sums: tuple[np.ndarray, np.ndarray] | None = None) -> dict:
    """Half maps, the FSC between them, and the Wiener-filtered full map, all (box,)^3 real space.

    Returns {"map", "half1", "half2", "fsc_half" and "fsc_half_masked" (box//2 + 1,) (the latter inside
    ``evaluate.soft_sphere_mask``), "ssnr" (box//2 + 1,)}; with ``filtered_halves`` also
    "half1_filtered" and "half2_filtered": each half set's own Wiener-filtered map (its SSNR is the
    half-set FSC's), a map that has not seen the other half's images; without ``full_map`` no "map"
    (the filter is the costly part: ~2 s at a 64 px box on 2 cores). ``full_sums`` (numerator, weight),
    each (P, P, P): filter these into "map" instead of the halves' sums (the posterior-weighted map).
    """
    floor = weight_floor(weights)
    halves = [_to_real(n / (w + floor), box) for n, w in zip(numerators, weights)]
    fsc_half = evaluate.fsc(*halves)
    mask = evaluate.soft_sphere_mask(box)
    fsc_half_masked = evaluate.fsc(halves[0] * mask, halves[1] * mask)
    ssnr = ssnr_from_fsc(2 * fsc_half / (1 + np.maximum(fsc_half, 0)))
    out = {"half1": halves[0], "half2": halves[1], "fsc_half": fsc_half, "fsc_half_masked": fsc_half_masked,
           "ssnr": ssnr}
    if full_map:
        num, weight = (numerators.sum(0), weights.sum(0)) if full_sums is None else full_sums
        out["map"] = _wiener(num, weight, ssnr, floor, box)
    if filtered_halves:
        ssnr_half = ssnr_from_fsc(fsc_half)
        for i in range(2):
            out[f"half{i + 1}_filtered"] = _wiener(numerators[i], weights[i], ssnr_half, floor, box)
    return out


def reconstruct(source, rotations: np.ndarray, shifts_px: np.ndarray, labels: np.ndarray,
                batch_size: int = 64, contrast: np.ndarray | None = None, filtered_halves: bool = False,
                full_map: bool = True, draws: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None) -> dict:
    """Direct inversion of ``source``'s images at the given poses; see ``wiener_maps`` for the result.

    ``draws`` (centres (N, 3, 3), omega (N, T, 3), weights (N, T)): "map" is then the posterior-weighted
    inversion at the draws around the centres (``accumulate``), while the half maps, their FSC and the
    filter's SNR stay those of the inversion at ``rotations``: each image's draws are weighted by the
    other half set's map (``jaxcryo.posemean``), which would make the halves share that map's noise
    and their FSC reach Nyquist (measured: 6.0 A on a set whose map is 6.7 A against the truth)."""
    num, w = accumulate(source, rotations, shifts_px, labels, batch_size, contrast)
    full = None
    if draws is not None and full_map:
        soft_num, soft_w = accumulate(source, draws[0], shifts_px, labels, batch_size, contrast, draws[1:])
        full = (soft_num.sum(0), soft_w.sum(0))
    return wiener_maps(num, w, source.image_size, filtered_halves, full_map, full)


def reconstruct_from_star(particles, poses, seed: int = 0) -> dict:
    """Direct inversion of a particle file at the poses (and origins) of a star with the same rows."""
    from jaxcryo.io import check_stacks, read_particles
    from jaxcryo.io.loader import ImageSource, half_set_labels

    table = read_particles(particles)
    source = ImageSource(table, check_stacks(table))
    source.estimate_normalization(seed=seed)
    known = read_particles(poses)
    return reconstruct(source, known.rotations(), known.displacements_px(source.pixel_size_angstrom),
                       half_set_labels(table, seed))


def compare_with_truth(volume: np.ndarray, ground_truth) -> dict:
    """FSC 0.5 / 0.143 (A) of a map against a ground-truth map in the same frame."""
    from jaxcryo.io import read_volume

    truth, pixel = read_volume(ground_truth)
    curve = evaluate.fsc(volume, truth)
    return {"fsc05_angstrom": evaluate.resolution_at(curve, 0.5, pixel),
            "fsc0143_angstrom": evaluate.resolution_at(curve, 0.143, pixel)}
