"""Per-particle contrast scales: the closed-form estimate (losses.contrast_scale), its fit in
auto-decoding (steps.make_autodecoding_step) and the contrast-weighted direct inversion."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxcryo import evaluate, inversion, losses, slicing, steps
from test_inversion import _projections
from test_shifts import _clean_set

PRIOR_STD = 0.3


def _posterior(a, pred, target, mask):
    """The negative log posterior the estimate should minimise: unit noise, a ~ N(1, PRIOR_STD^2)."""
    m = np.asarray(mask, np.float64)
    p, y = np.asarray(pred, np.float64), np.asarray(target, np.float64)
    return 0.5 * np.sum(m * (a[:, None, None] * p - y) ** 2, axis=(1, 2)) + 0.5 * (a - 1) ** 2 / PRIOR_STD**2


def test_contrast_scale_is_the_posterior_minimum():
    vol_h, rots, shifts, ctf, images = _clean_set(n=8)
    pred = losses.predict(vol_h, rots, ctf, jnp.asarray(shifts))
    rng = np.random.default_rng(0)
    true = rng.uniform(0.6, 1.4, 8).astype(np.float32)
    mask = slicing.frequency_mask(32, 1.0)
    # strong signal: the scale itself comes back (the prior weighs ~1e-3 of the data)
    clean = pred * true[:, None, None]
    np.testing.assert_allclose(np.asarray(losses.contrast_scale(pred, clean, mask, PRIOR_STD)), true, rtol=1e-3)
    # weak signal in noise: the estimate is the minimum of the posterior, between the data and the prior
    weak = pred * 0.01
    target = weak * true[:, None, None] + jnp.asarray(rng.normal(size=pred.shape), jnp.float32)
    a = np.asarray(losses.contrast_scale(weak, target, mask, PRIOR_STD), np.float64)
    for step in (-1e-2, 1e-2):
        assert np.all(_posterior(a, weak, target, mask) < _posterior(a + step, weak, target, mask))
    # no signal at all: the prior's value
    assert np.all(np.asarray(losses.contrast_scale(pred * 0, target, mask, PRIOR_STD)) == 1.0)


def test_autodecoding_fits_each_particles_contrast():
    n = 32
    vol_h, rots, shifts, ctf, images = _clean_set(n=n, max_shift=0.0)
    rng = np.random.default_rng(1)
    true = rng.uniform(0.6, 1.4, n).astype(np.float32)
    noisy = images * true[:, None, None] + 0.5 * float(images.std()) * rng.normal(size=images.shape).astype(np.float32)
    mesh = steps.make_mesh()
    # the volume in images_to_hartley's units (1 / L); the CTF fields of _clean_set in the batch layout
    fields = {"defocus_u_angstrom": 15_000.0, "defocus_v_angstrom": 15_000.0, "defocus_angle_deg": 0.0,
              "voltage_kv": 300.0, "spherical_aberration_mm": 2.7, "amplitude_contrast": 0.1, "phase_shift_deg": 0.0,
              "b_factor_angstrom2": 0.0, "phase_flipped": 0.0}
    batch = {"images": jnp.asarray(noisy), "index": jnp.arange(n, dtype=jnp.int32),
             **{k: jnp.full((n,), v, jnp.float32) for k, v in fields.items()}}
    batch = jax.device_put(batch, jax.NamedSharding(mesh, jax.sharding.PartitionSpec(steps.AXIS)))
    frozen = optax.set_to_zero()
    results = {}
    for prior in (0.0, PRIOR_STD):
        vol_params = {"mantissa": vol_h / 32, "exponent": jnp.zeros_like(vol_h)}  # fresh: the step donates its state
        state = {"vol_params": vol_params, "vol_opt": frozen.init(vol_params),
                 **steps.init_pose_tables(np.asarray(rots), np.zeros((n, 2), np.float32))}
        step = steps.make_autodecoding_step(frozen, 6.0, "gaussian", pose_iters=2, vol_iters=1, pose_lr=1e-3,
                                            mesh=mesh, contrast_prior_std=prior)
        state, out = step(state, batch, 1.0)
        results[prior] = (np.asarray(state["contrast"]), float(out["loss"]))
    assert np.all(results[0.0][0] == 1.0)  # off: every particle keeps 1
    fitted, loss = results[PRIOR_STD]
    assert np.corrcoef(fitted, true)[0, 1] > 0.95, (fitted, true)
    assert np.median(np.abs(fitted - true)) < 0.05
    assert loss < results[0.0][1]  # the volume step sees the fitted scales


def test_contrast_weighted_inversion_undoes_the_scales():
    truth, source, rots, shifts = _projections(n=400)
    rng = np.random.default_rng(2)
    scale = rng.uniform(0.2, 1.8, len(rots)).astype(np.float32)
    clean = source.images.copy()
    source.images = clean * scale[:, None, None] + clean.std() * rng.normal(size=clean.shape).astype(np.float32)
    labels = np.where(np.arange(len(rots)) % 2 == 0, 1, 2)
    plain = inversion.reconstruct(source, rots, shifts, labels)
    weighted = inversion.reconstruct(source, rots, shifts, labels, contrast=scale)
    # least squares with the scales: more signal per shell, same amplitude as the unscaled map
    gain = weighted["ssnr"][1:12] / plain["ssnr"][1:12]
    assert np.median(gain) > 1.1, gain
    curve_w, curve_p = evaluate.fsc(weighted["map"], truth), evaluate.fsc(plain["map"], truth)
    assert evaluate.resolution_at(curve_w, 0.5, 6.0) <= evaluate.resolution_at(curve_p, 0.5, 6.0)
