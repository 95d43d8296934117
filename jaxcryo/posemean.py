"""Each particle's posterior-mean rotation around its most likely one (``train.posterior_mean_poses``).

At SNR ~0.1 a small particle's likelihood is rough on the scale of a few degrees: under a map made from
the same 5,000 images, the most likely pose and the pose nearest the truth are different local maxima
of about equal likelihood. The posterior mean averages over them and lies nearer the truth than any one
(the estimate that minimises the expected squared error; RELION and cryoSPARC report the maximum).

For each image, ``n`` rotations R_k = Exp(omega_k) R are drawn around its pose R (omega_k ~ N(0, sigma^2)
per axis; omega_0 = 0 keeps R itself) and scored under the map of the half set the image is not in, so
its own noise does not pull the weights towards R. With L_k the Gaussian loss (half the mean squared
residual over the loss disc, ``losses.per_image_loss``) the log-likelihood is -n_pix L_k / s^2, the
per-coefficient noise variance s^2 estimated as the best sample's mean squared residual (2 min L_k), so no
noise level is assumed. Importance weights divide the likelihood by the proposal density:
log w_k = -n_pix (L_k - min L) / (2 min L) + |omega_k|^2 / (2 sigma^2).
The weighted mean of the rotation matrices is projected back onto SO(3) (the chordal L2 mean: the
nearest rotation by SVD). Shifts stay as they are.

Measured offline on seven finished runs (5,000 x 64 px, SNR 0.1; docs/measurements.md, part 2): with 64
draws the median pose error fell on all seven (e.g. 4.62 -> 4.41 deg on the outside simulator's seed 11,
the map at the mean poses 7.28 -> 7.06 A against the truth, reference 6.97 A); 32 draws, the default,
4.46 deg and 7.06 A there, 16 draws 4.58 deg: fewer draws estimate the mean more noisily. With 32 draws
the jitted pass takes ~33 s per 5,000 images of 64 px on a 2-core CPU (~80 s with 64).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from jaxcryo import geometry, losses, models
from jaxcryo.steps import AXIS, batch_targets

SLICES_PER_CALL = 4096  # images per call x draws: bounds the pass's memory (~0.3 GB of slices at 64 px)


def perturbations(key: jax.Array, batch: int, n: int, sigma_rad: float, dtype=jnp.float32) -> jax.Array:
    """(batch, n, 3) axis-angle draws with standard deviation ``sigma_rad`` per axis; draw 0 is zero."""
    omega = jax.random.normal(key, (batch, n, 3), dtype) * sigma_rad
    return omega.at[:, 0].set(0.0)


def importance_log_weights(sample_losses: jax.Array, omega: jax.Array, n_pixels, sigma_rad: float) -> jax.Array:
    """(B, n) Gaussian losses at the draws, (B, n, 3) draws -> (B, n) unnormalised log weights (see the
    module docstring); the noise variance per coefficient is each image's best mean squared residual."""
    best = jnp.min(sample_losses, axis=1, keepdims=True)
    log_lik = -n_pixels * (sample_losses - best) / (2.0 * jnp.maximum(best, 1e-12))
    return log_lik + jnp.sum(omega**2, axis=-1) / (2.0 * sigma_rad**2)


def chordal_mean(weights: jax.Array, rotations: jax.Array) -> jax.Array:
    """(B, n) weights summing to 1, (B, n, 3, 3) rotations -> (B, 3, 3): the rotation nearest (Frobenius)
    to the weighted mean of the matrices."""
    m = jnp.einsum("bn,bnij->bij", weights, rotations)
    u, _, vt = jnp.linalg.svd(m)
    flip = jnp.sign(jnp.linalg.det(u @ vt))  # a reflection would be the nearest orthogonal matrix: undo it
    u = u.at[:, :, -1].multiply(flip[:, None])
    return u @ vt


def make_posterior_mean(pixel_size_angstrom: float, mesh, n_samples: int, sigma_deg: float, n_keep: int = 1):
    """(vol_params, batch, key, rotations (B, 3, 3), shifts (B, 2)) -> posterior-mean rotations (B, 3, 3),
    each image's effective number of draws (B,) (1 / sum w^2: ~1 when one draw holds all the weight,
    which means the posterior is narrower than ``sigma_deg`` and the mean is the most likely draw), and
    its ``n_keep`` heaviest draws as axis-angle offsets (B, n_keep, 3) from its rotation with their
    weights renormalised to sum to 1 (B, n_keep): what ``jaxcryo.inversion`` inserts for the
    posterior-weighted map."""
    sigma = float(np.radians(sigma_deg))
    n_keep = max(1, min(int(n_keep), n_samples))

    def core(vol_params, batch, key, rot, shift):
        target, ctf, mask = batch_targets(batch, pixel_size_angstrom, 1.0)
        vol_h = models.volume_hartley(vol_params)
        key = jax.random.fold_in(key, jax.lax.axis_index(AXIS))
        omega = perturbations(key, rot.shape[0], n_samples, sigma, rot.dtype)
        draws = geometry.so3_exp(omega) @ rot[:, None]
        shifts = jnp.broadcast_to(shift[:, None], draws.shape[:2] + (2,))
        sample_losses = losses.loss_at(vol_h, draws, ctf, target, mask, "gaussian", shifts)
        weights = jax.nn.softmax(importance_log_weights(sample_losses, omega, jnp.sum(mask), sigma), axis=1)
        top_w, top = jax.lax.top_k(weights, n_keep)
        top_omega = jnp.take_along_axis(omega, top[..., None], axis=1)
        return (chordal_mean(weights.astype(rot.dtype), draws), 1.0 / jnp.sum(weights**2, axis=1), top_omega,
                top_w / jnp.sum(top_w, axis=1, keepdims=True))

    return jax.jit(jax.shard_map(core, mesh=mesh, in_specs=(P(), P(AXIS), P(), P(AXIS), P(AXIS)),
                                 out_specs=(P(AXIS),) * 4, check_vma=False))
