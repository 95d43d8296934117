"""The final poses moved down the held-out likelihood's gradient, taken through the half maps' inversion
(``train.heldout_steps``).

Auto-decoding fits every pose and the map to the same images, and at high SNR the two settle together
into a solution whose errors neighbouring poses share (a warp: e.g. 3.52 deg against a floor of 1.82 deg
at SNR 0.5) that neither a per-image step against a fixed map nor a new map at fixed poses can leave,
although images the map has not seen prefer the truth. This stage descends that held-out fit instead.
For a random split of the images into halves A and B, with M_A the Wiener-filtered direct inversion of
A's images (``jaxcryo.inversion``; its per-shell SNR from the two halves' FSC, held fixed within a step):

    H(R) = sum_{i in B} loss_i(M_A(R_A); R_i) + sum_{i in A} loss_i(M_B(R_B); R_i)

(``losses.loss_at``, Gaussian, the full disc). dH/dR_k for k in A has a direct term (image k under
the other half's map, what a per-image step against M_B sees) and one through k's own half map: the
back-projection G of B's residual gradients dH/dM_A, pulled back through M = N / (W + reg) to the
inserted sums (dN = G / (W + reg), dW = -G M / (W + reg), by ``jax.vjp``), then, because insertion is
linear in the data and the adjoint of slicing, sliced at R_k and met with k's own inserted data:
d/dR_k sum_c <slice(dS_c, R_k), data_k,c>. The second term is the collective move: how a pose should
change so that its half's map explains the other half better. Each step draws a fresh split; with one
fixed split the halves' poses learn to fit each other's noise within ~12 steps (measured: the error
stops falling while H still does). Poses move by per-image Adam (``steps.pose_adam``) on axis-angle
perturbations, R <- Exp(omega) R; shifts and contrasts stay as they are.

Measured in the run (15 steps, 0.02 -> 0.002 rad, resumed from finished runs of the main config on
5,000 x 64 px; docs/options.md): outside seed 227 at SNR 0.5, 3.52 -> 2.95 deg; jaxcryo's phantom at
SNR 0.5, 1.05 -> 0.83 deg; 128 px at 1.5 A/px, 2.47 -> 2.16 deg; seven white SNR 0.1 sets 2-7 % lower
medians (e.g. the quickstart 1.73 -> 1.61 deg); a realistic set (coloured noise, contrasts, offsets)
6.75 -> 6.84 deg. A step costs two inversions and two slice-and-gradient passes over the images: ~12 s
per 5,000 images of 64 px on 2 cores, ~57 s at 128 px.
"""

from __future__ import annotations

import logging

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from jaxcryo import distributed, fourier, geometry, inversion, losses, models, slicing, steps
from jaxcryo.dataset import on_devices
from jaxcryo.io.loader import chunks_read_ahead
from jaxcryo.io.table import CTF_FIELDS
from jaxcryo.steps import AXIS, batch_targets


def fresh_split(n: int, seed: int, step: int) -> np.ndarray:
    """(n,) half labels in {1, 2}, an even random split drawn anew for each step."""
    order = np.random.default_rng([seed, 7919, step]).permutation(n)
    labels = np.empty(n, np.int64)
    labels[order] = 1 + np.arange(n) % 2
    return labels


def wiener_hartley(numerator, weight, reg, valid, box: int, volume_mask=None):
    """(P, P, P) inserted sums -> the (box,)^3 Hartley volume ``losses.loss_at`` takes: the Wiener map
    numerator / (weight + reg) where ``valid`` (``inversion.wiener_terms``), in real space, times the
    ``volume_mask`` (box,)^3 when one is given (as the run's own maps are masked). Differentiable in the sums."""
    h = jnp.where(valid, numerator / (weight + reg), 0.0)
    real = fourier.crop_center(fourier.iht(h, 3), box, 3)
    if volume_mask is not None:
        real = real * volume_mask
    return models.hartley_from_map(real)


def make_passes(pixel_size_angstrom: float, mesh):
    """The stage's two jitted passes, sharded over the mesh's batch axis like ``jaxcryo.posemean``:

    direct(volume_h, batch, rotations (B, 3, 3), shifts_px (B, 2), weight (B,)) -> (losses (B,),
      d loss / d omega (B, 3), d (sum of weight x loss) / d volume_h (D, D, D), summed over the batch);
      ``weight`` is 0 on padding rows, else the image's contrast scale (which multiplies its CTF).
    through_map(d_sums (P, P, P, 2), batch, rotations, shifts_px, weight) -> (B, 3): the gradient of
      sum_c <slice(d_sums_c, Exp(omega) R), the image's inserted data_c> at omega = 0.
    """

    def direct(volume_h, batch, rot, shift, weight):
        target, ctf, mask = batch_targets(batch, pixel_size_angstrom, 1.0)
        ctf = ctf * jnp.where(weight > 0, weight, 1.0)[:, None, None]

        def total(omega, vol):
            per_image = losses.loss_at(vol, geometry.so3_exp(omega) @ rot, ctf, target, mask, "gaussian", shift)
            return jnp.sum(per_image * (weight > 0)), per_image

        (_, per_image), (g_omega, g_vol) = jax.value_and_grad(total, argnums=(0, 1), has_aux=True)(
            jnp.zeros(rot.shape[:1] + (3,), rot.dtype), volume_h)
        return per_image, g_omega, jax.lax.psum(g_vol, AXIS)

    def through_map(d_sums, batch, rot, shift, weight):
        size = d_sums.shape[0]
        data = inversion.insertion_data(batch["images"].astype(d_sums.dtype), {k: batch[k] for k in CTF_FIELDS},
                                        shift, weight, pixel_size_angstrom, size, batch.get("noise_radial"))

        def paired(omega):
            r = geometry.so3_exp(omega) @ rot
            return sum(jnp.sum(slicing.extract_slices(d_sums[..., c], r, size) * data[..., c]) for c in range(2))

        return jax.grad(paired)(jnp.zeros(rot.shape[:1] + (3,), rot.dtype))

    rows = (P(AXIS),) * 4
    return (jax.jit(jax.shard_map(direct, mesh=mesh, in_specs=(P(),) + rows, out_specs=(P(AXIS), P(AXIS), P()),
                                  check_vma=False)),
            jax.jit(jax.shard_map(through_map, mesh=mesh, in_specs=(P(),) + rows, out_specs=P(AXIS), check_vma=False)))


def half_maps_with_pullbacks(numerators: np.ndarray, weights: np.ndarray, box: int, volume_mask=None):
    """(2, P, P, P) sums of the two halves -> [(M_1 Hartley volume, pullback_1), (M_2, pullback_2)], each
    pullback mapping d H / d M_h to (d H / d N_h, d H / d W_h); the filter's SNR from the halves' FSC."""
    ssnr = inversion.ssnr_from_fsc(inversion.wiener_maps(numerators, weights, box, full_map=False)["fsc_half"])
    floor = inversion.weight_floor(weights)
    out = []
    for num, w in zip(numerators, weights):
        reg, valid = inversion.wiener_terms(w, ssnr, floor, box)
        vol, pull = jax.vjp(lambda a, b, reg=reg, valid=valid: wiener_hartley(a, b, jnp.asarray(reg, jnp.float32),
                                                                             jnp.asarray(valid), box, volume_mask),
                            jnp.asarray(num), jnp.asarray(w))
        out.append((vol, pull))
    return out


def _batches(source, rows: np.ndarray, rotations, shifts_px, weights, batch_size: int, sharding):
    """Over ``rows`` in padded chunks: (chunk rows, device batch, (rotations, shifts, weights) on the mesh),
    padding rows weighted 0."""
    for _, idx, padded, host in chunks_read_ahead(source, rows, batch_size):
        keep = (np.arange(batch_size) < len(idx)).astype(np.float32)
        args = distributed.put_rows((rotations[padded].astype(np.float32), shifts_px[padded].astype(np.float32),
                                     (weights[padded] * keep).astype(np.float32)), sharding)
        yield idx, on_devices(source, host, sharding), args


def heldout_gradient(passes, source, rotations: np.ndarray, shifts_px: np.ndarray, weights: np.ndarray,
                     labels: np.ndarray, batch_size: int, shardings, volume_mask=None) -> tuple[np.ndarray, float]:
    """dH / d omega (N, 3) at ``rotations`` for the split ``labels`` (module docstring), and H's mean per
    image. ``weights`` (N,): the images' contrast scales (1 without); ``shifts_px`` (N, 2);
    ``shardings``: (the batch's, the replicated one) on the passes' mesh; ``volume_mask`` (L, L, L) or None."""
    direct, through_map = passes
    sharding, replicated = shardings
    n, box = len(rotations), source.image_size
    num, w = inversion.accumulate(source, rotations, shifts_px, labels, batch_size, weights)
    maps = half_maps_with_pullbacks(num, w, box, volume_mask)
    grad = np.zeros((n, 3), np.float32)
    held, d_vol = 0.0, [0.0, 0.0]
    for half in (1, 2):  # half h's images under the other half's map
        vol = distributed.put_replicated(maps[2 - half][0], replicated)
        for idx, batch, args in _batches(source, np.nonzero(labels == half)[0], rotations, shifts_px, weights,
                                         batch_size, sharding):
            per_image, g_omega, g_vol = direct(vol, batch, *args)
            grad[idx] = distributed.to_host(g_omega)[: len(idx)]
            held += float(np.sum(distributed.to_host(per_image)[: len(idx)]))
            d_vol[2 - half] = d_vol[2 - half] + distributed.to_host(g_vol)  # summed over the mesh already
    for half in (1, 2):  # how each image's own insertion moves its half's fit to the other half
        d_sums = distributed.put_replicated(jnp.stack(maps[half - 1][1](jnp.asarray(d_vol[half - 1], jnp.float32)), -1),
                                            replicated)
        for idx, batch, args in _batches(source, np.nonzero(labels == half)[0], rotations, shifts_px, weights,
                                         batch_size, sharding):
            grad[idx] += distributed.to_host(through_map(d_sums, batch, *args))[: len(idx)]
    return grad, held / n


def step_rates(lr_rad: float, n_steps: int, final_fraction: float) -> np.ndarray:
    """(n_steps,) Adam rates falling linearly from ``lr_rad`` to ``lr_rad x final_fraction``: Adam's steps
    keep a size near the rate while the gradient is noisy, so a constant rate leaves each pose jittering."""
    return lr_rad * np.linspace(1.0, final_fraction, n_steps) if n_steps > 1 else np.full(n_steps, lr_rad)


def refine(passes, source, rotations: np.ndarray, shifts_px: np.ndarray, contrast: np.ndarray | None,
           rates: np.ndarray, seed: int, batch_size: int, shardings, volume_mask=None, report=None) -> np.ndarray:
    """One step of per-image Adam on H per rate in ``rates`` (radians; ``step_rates``), a fresh half split
    each step -> rotations (N, 3, 3). ``report(step, rotations, mean H)``, when given, is called after
    each step (the run's log)."""
    n = len(rotations)
    weights = np.ones(n, np.float32) if contrast is None else np.asarray(contrast, np.float32)
    rot = np.asarray(rotations, np.float32)
    m, v = jnp.zeros((n, 3)), jnp.zeros((n, 3))
    for step, lr_rad in enumerate(rates):
        grad, held = heldout_gradient(passes, source, rot, shifts_px, weights, fresh_split(n, seed, step),
                                      batch_size, shardings, volume_mask)
        update, m, v, _ = steps.pose_adam(jnp.asarray(grad), m, v, jnp.full((n,), step, jnp.int32), float(lr_rad))
        rot = np.asarray(geometry.so3_exp(update) @ jnp.asarray(rot), np.float32)
        if report is not None:
            report(step, rot, held)
    return rot


def log_step(start: np.ndarray, n_steps: int, truth_error=None):
    """A ``report`` for ``refine`` that logs each step: H (the held-out loss before the step), the median
    move from ``start``, and with ``truth_error(rotations) -> degrees`` the median pose error."""

    def report(step, rotations, held):
        moved = float(np.median(np.asarray(geometry.geodesic_distance_deg(jnp.asarray(rotations), jnp.asarray(start)))))
        extra = "" if truth_error is None else f"; pose error {truth_error(rotations):.2f} deg (median)"
        logging.info("held-out step %d/%d: held-out loss %.7f per image, poses moved %.2f deg (median)%s",
                     step + 1, n_steps, held, moved, extra)

    return report
