"""Posterior-mean rotations (jaxcryo.posemean): the estimator against an analytic Gaussian posterior, the
chordal mean against exact cases, and the whole pass on noisy projections of a known map."""

import jax
import jax.numpy as jnp
import numpy as np

from jaxcryo import ctf as ctf_lib
from jaxcryo import geometry, phantoms, posemean, simulate, slicing, steps
from jaxcryo.io.table import CTF_FIELDS


def test_chordal_mean_of_one_rotation_and_of_a_symmetric_pair():
    rots = geometry.random_rotations(jax.random.key(0), (4,), jnp.float32)
    draws = geometry.so3_exp(jnp.deg2rad(5.0) * jax.random.normal(jax.random.key(1), (4, 3, 3))) @ rots[:, None]
    one_hot = jnp.eye(3)[jnp.array([2, 0, 1, 2])]
    picked = posemean.chordal_mean(one_hot, draws)
    expected = draws[jnp.arange(4), jnp.array([2, 0, 1, 2])]
    assert float(jnp.max(geometry.geodesic_distance_deg(picked, expected))) < 1e-2
    omega = jnp.deg2rad(7.0) * jnp.array([0.3, -0.8, 0.5])
    pair = jnp.stack([geometry.so3_exp(omega) @ rots, geometry.so3_exp(-omega) @ rots], axis=1)
    mean = posemean.chordal_mean(jnp.full((4, 2), 0.5), pair)
    assert float(jnp.max(geometry.geodesic_distance_deg(mean, rots))) < 1e-2
    assert np.allclose(np.asarray(jnp.linalg.det(mean)), 1.0, atol=1e-5)


def test_importance_weights_recover_the_mean_of_a_gaussian_posterior():
    """Losses built so that the likelihood is a Gaussian in axis-angle around mu (width tau); the
    proposal is centred on 0. The weighted mean must land on mu; without dividing by the proposal it
    would be pulled towards 0 (to mu * sigma^2 / (sigma^2 + tau^2), 0.54 deg short here)."""
    sigma, tau = np.radians(3.0), np.radians(1.5)
    mu = np.radians(np.array([2.0, -1.0, 1.5]))
    omega = posemean.perturbations(jax.random.key(3), 1, 20_000, sigma)
    a = 1e-4  # losses 1 + a |omega - mu|^2: the best loss is 1 to 1e-6, so n_pix = 1 / (a tau^2) gives width tau
    sample_losses = 1.0 + a * jnp.sum((omega - jnp.asarray(mu, jnp.float32)) ** 2, axis=-1)
    log_w = posemean.importance_log_weights(sample_losses, omega, 1.0 / (a * tau**2), sigma)
    weights = jax.nn.softmax(log_w, axis=1)
    mean = posemean.chordal_mean(weights, geometry.so3_exp(omega))
    target = geometry.so3_exp(jnp.asarray(mu, jnp.float32)[None])
    assert float(geometry.geodesic_distance_deg(mean, target)[0]) < 0.15
    plain = posemean.chordal_mean(jax.nn.softmax(log_w - jnp.sum(omega**2, -1) / (2 * sigma**2), axis=1),
                                  geometry.so3_exp(omega))
    assert float(geometry.geodesic_distance_deg(plain, target)[0]) > 0.35  # the check can tell the two apart


def _noisy_batch(n=64, size=32, pixel=6.0, noise_std=1.0, seed=0):
    vol_h = slicing.volume_to_hartley(jnp.asarray(phantoms.protein_phantom(size, pixel)))
    rots = geometry.random_rotations(jax.random.key(seed), (n,), jnp.float32)
    fields = dict(defocus_u_angstrom=np.full(n, 15_000.0, np.float32), defocus_v_angstrom=np.full(n, 14_000.0, np.float32),
                  defocus_angle_deg=np.zeros(n, np.float32), voltage_kv=np.full(n, 300.0, np.float32),
                  spherical_aberration_mm=np.full(n, 2.7, np.float32), amplitude_contrast=np.full(n, 0.1, np.float32),
                  phase_shift_deg=np.zeros(n, np.float32), b_factor_angstrom2=np.zeros(n, np.float32),
                  phase_flipped=np.zeros(n, np.float32))
    fields = {k: fields[k] for k in CTF_FIELDS}
    ctf = ctf_lib.ctf_grid(size, pixel, **fields).astype(jnp.float32)
    clean = simulate.clean_images(vol_h, rots, jnp.zeros((n, 2)), ctf)
    scale = noise_std / float(jnp.std(clean))  # per-pixel SNR 1 / noise_std^2
    images = clean * scale + jax.random.normal(jax.random.key(seed + 1), clean.shape, jnp.float32)
    # the volume in the units of batch_targets' Hartley images (test_search: images_to_hartley(images) * size = slices)
    return vol_h * scale / size, rots, dict(images=images, **{k: jnp.asarray(v) for k, v in fields.items()})


def test_posterior_means_lie_nearer_the_true_poses_than_perturbed_starts():
    """Noisy projections (per-pixel SNR 0.25) of a known map; each pose starts 4 deg off its truth. The
    posterior mean under the true map must move most of them towards the truth: a wrong sign in the
    weights would move them away, ignoring the data would leave them where they are."""
    vol_h, truth, batch = _noisy_batch(noise_std=2.0)
    start = (geometry.so3_exp(jnp.deg2rad(4.0) * geometry.random_rotations(jax.random.key(5), (64,))[:, 0]) @ truth).astype(jnp.float32)
    mesh = steps.make_mesh()
    fn = posemean.make_posterior_mean(6.0, mesh, n_samples=256, sigma_deg=4.0, n_keep=16)
    rows = jax.NamedSharding(mesh, jax.sharding.PartitionSpec(steps.AXIS))
    params = {"mantissa": vol_h, "exponent": jnp.zeros_like(vol_h)}  # models.volume_hartley: H = mantissa * exp(exponent)
    means, effective, omega, weights = fn(params, jax.device_put(batch, rows),
                          jax.random.key(7), jax.device_put(start, rows), jax.device_put(jnp.zeros((64, 2)), rows))
    before = np.asarray(geometry.geodesic_distance_deg(start, truth))
    after = np.asarray(geometry.geodesic_distance_deg(jnp.asarray(np.asarray(means)), truth))
    assert np.median(before) > 3.9 and np.median(after) < 0.6 * np.median(before), (np.median(before), np.median(after))
    assert np.mean(after < before) > 0.8
    assert np.all(np.asarray(effective) >= 1.0) and float(np.median(effective)) < 256
    # the kept draws (the final map's): the heaviest, renormalised, and their own mean near the full mean
    weights = np.asarray(weights)
    np.testing.assert_allclose(weights.sum(1), 1.0, rtol=1e-5)
    assert np.all(np.diff(weights, axis=1) <= 0)
    kept = geometry.so3_exp(jnp.asarray(np.asarray(omega))) @ start[:, None]
    kept_mean = posemean.chordal_mean(jnp.asarray(weights), kept)
    assert float(np.median(np.asarray(geometry.geodesic_distance_deg(kept_mean, jnp.asarray(np.asarray(means)))))) < 0.5
