"""Encoder pieces and losses against independent references (numpy FFT, a differentiable min)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcryo import ctf as ctf_lib
from jaxcryo import fourier, geometry, losses, models, slicing


def test_gaussian_pyramid_kernels_have_the_paper_variances():
    k = models.gaussian_kernels()
    assert k.shape == (11, 11, 1, 5)
    np.testing.assert_allclose(models.PYRAMID_VARIANCES, [0.01, 0.1, 1.0, 10.0, 100.0])
    np.testing.assert_allclose(k.sum(axis=(0, 1, 2)), 1.0, rtol=1e-6)
    r = np.arange(11) - 5
    # sampled on integers: variance 1 is resolved exactly; 0.01 and 0.1 are nearly a delta
    # (centre weight 1/(1 + 4 exp(-1/(2 v))) analytically); 10 and 100 are truncated by the 11 x 11 box.
    assert (k[:, :, 0, 2].sum(axis=0) * r**2).sum() == pytest.approx(1.0, rel=1e-3)
    for c, var in enumerate(models.PYRAMID_VARIANCES[:2]):
        edge = np.exp(-1 / (2 * var))
        assert k[5, 5, 0, c] == pytest.approx(1 / (1 + 4 * edge + 4 * edge**2), rel=1e-4)
    assert (k[:, :, 0, 4].sum(axis=0) * r**2).sum() < 10.0


def test_pyramid_reflect_padding_keeps_constant_images():
    out = models.gaussian_pyramid(jnp.full((2, 20, 20), 3.0))
    assert out.shape == (2, 20, 20, 5)
    np.testing.assert_allclose(np.asarray(out), 3.0, rtol=1e-5)


def test_encoder_heads_are_independent_and_shapes():
    enc = models.PoseEncoder(n_heads=3, width=1 / 16)
    x = jax.random.normal(jax.random.key(0), (4, 32, 32))
    variables = jax.jit(enc.init)(jax.random.key(1), x)
    apply = jax.jit(enc.apply)  # one program for both calls (eagerly, every op compiles on its own)
    out = apply(variables, x)
    assert out.shape == (4, 3, 6)
    params = jax.tree_util.tree_map(lambda a: a, variables["params"])
    heads = dict(params["MultiHead_0"])
    heads["kernel_2"] = heads["kernel_2"].at[1].add(1.0)  # change head 1's last layer only
    changed = apply({**variables, "params": {**params, "MultiHead_0": heads}}, x)
    np.testing.assert_array_equal(np.asarray(changed[:, [0, 2]]), np.asarray(out[:, [0, 2]]))
    assert not np.allclose(np.asarray(changed[:, 1]), np.asarray(out[:, 1]))


def test_paper_width_parameter_count():
    """VGG16 blocks 1-3 + two 3-conv 256 blocks + 7 heads (1024 -> 512 -> 256 -> 6) at 128 px,
    counted by hand: convs (no bias, BN scale+bias) and heads."""
    convs = [(5, 64), (64, 64), (64, 128), (128, 128), (128, 256), (256, 256), (256, 256)] + [(256, 256)] * 6
    conv_params = sum(9 * i * o + 2 * o for i, o in convs)
    head = 1024 * 512 + 512 + 512 * 256 + 256 + 256 * 6 + 6
    v = jax.eval_shape(models.PoseEncoder(7, 1.0).init, jax.random.key(0), jnp.zeros((1, 128, 128)))
    assert models.count_params(v["params"]) == conv_params + 7 * head


def _setup(seed=0, b=3, m=4, size=16):
    rng = np.random.default_rng(seed)
    vol_h = jnp.asarray(rng.normal(size=(size,) * 3), jnp.float32)
    rots = geometry.random_rotations(jax.random.key(seed), (b, m))
    ctf = ctf_lib.ctf_grid(size, 3.0, defocus_u_angstrom=jnp.full(b, 15000.0), defocus_v_angstrom=jnp.full(b, 15000.0),
                           defocus_angle_deg=0.0, voltage_kv=300.0, spherical_aberration_mm=2.7,
                           amplitude_contrast=0.1).astype(jnp.float32)
    target = jnp.asarray(rng.normal(size=(b, size, size)), jnp.float32)
    mask = slicing.frequency_mask(size, 0.8)
    return vol_h, rots, ctf, target, mask


def test_gaussian_loss_is_half_mse_in_fourier_space():
    vol_h, rots, ctf, target, mask = _setup()
    pred = losses.predict(vol_h, rots[:, 0], ctf)
    ours = np.asarray(losses.per_image_loss(pred, target, mask))
    diff_f = np.asarray(fourier.hartley_to_fourier(pred - target))  # Parseval per image over a symmetric disc
    m = np.asarray(mask)
    expected = 0.5 * (np.abs(diff_f) ** 2 * m).sum(axis=(1, 2)) / m.sum()
    np.testing.assert_allclose(ours, expected, rtol=1e-4)
    l1 = np.asarray(losses.per_image_loss(pred, target, mask, "l1_fourier"))
    np.testing.assert_allclose(l1, (np.abs(diff_f) * m).sum(axis=(1, 2)) / m.sum(), rtol=1e-4)
    assert float(losses.per_image_loss(pred, pred[:, :, :], mask).max()) == 0.0


def test_winner_takes_all_gradient_equals_gradient_of_min():
    vol_h, rots, ctf, target, mask = _setup(seed=2)
    six = jax.random.normal(jax.random.key(3), rots.shape[:2] + (6,))

    def wta(six, vol):
        loss, _, _ = losses.winner_takes_all(vol, geometry.rotation_from_6d(six), ctf, target, mask)
        return jnp.mean(loss)

    def plain_min(six, vol):
        pred = losses.predict(vol, geometry.rotation_from_6d(six), ctf)
        return jnp.mean(jnp.min(losses.per_image_loss(pred, target, mask), axis=1))

    grads = [jax.jit(jax.grad(f, argnums=(0, 1)))(six, vol_h) for f in (wta, plain_min)]  # eagerly every op compiles alone
    for a, b in zip(*grads):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-7)
    loss, winner, all_losses = losses.winner_takes_all(vol_h, geometry.rotation_from_6d(six), ctf, target, mask)
    # reference: each head's loss written out in numpy, half the mean squared error over the disc
    pred = np.asarray(losses.predict(vol_h, geometry.rotation_from_6d(six), ctf), np.float64)  # (B, M, L, L)
    m = np.asarray(mask, np.float64)
    per_head = 0.5 * ((pred - np.asarray(target, np.float64)[:, None]) ** 2 * m).sum(axis=(-2, -1)) / m.sum()
    np.testing.assert_allclose(np.asarray(all_losses), per_head, rtol=1e-4)
    np.testing.assert_array_equal(np.asarray(winner), np.argmin(per_head, axis=1))
    np.testing.assert_allclose(np.asarray(loss), per_head.min(axis=1), rtol=1e-4)


def test_relaxed_winner_takes_all_trains_losing_heads_but_not_the_volume_from_them():
    vol_h, rots, ctf, target, mask = _setup(seed=2)
    six = jax.random.normal(jax.random.key(3), rots.shape[:2] + (6,))
    n_heads, relax = rots.shape[1], 0.3

    def wta(six, vol, relax):
        loss, _, _ = losses.winner_takes_all(vol, geometry.rotation_from_6d(six), ctf, target, mask, relax=relax)
        return jnp.mean(loss)

    def by_hand(six, vol):  # the winner with every gradient; each loser's loss for its pose only
        rot = geometry.rotation_from_6d(six)
        per_head = losses.per_image_loss(losses.predict(vol, rot, ctf), target, mask)
        frozen = losses.per_image_loss(losses.predict(jax.lax.stop_gradient(vol), rot, ctf), target, mask)
        winner = jax.nn.one_hot(jnp.argmin(per_head, axis=1), n_heads)
        return jnp.mean(jnp.sum(winner * per_head + (1 - winner) * relax / (n_heads - 1) * frozen, axis=1))

    grad_wta = jax.jit(jax.grad(wta, argnums=(0, 1)), static_argnums=2)  # eagerly every op compiles alone
    g_six, g_vol = grad_wta(six, vol_h, relax)
    ref_six, ref_vol = jax.jit(jax.grad(by_hand, argnums=(0, 1)))(six, vol_h)
    np.testing.assert_allclose(np.asarray(g_six), np.asarray(ref_six), rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(np.asarray(g_vol), np.asarray(ref_vol), rtol=1e-4, atol=1e-7)
    plain_six, plain_vol = grad_wta(six, vol_h, 0.0)
    np.testing.assert_allclose(np.asarray(g_vol), np.asarray(plain_vol), rtol=1e-5, atol=1e-8)
    _, winner, _ = losses.winner_takes_all(vol_h, geometry.rotation_from_6d(six), ctf, target, mask)
    losing = np.arange(n_heads)[None, :] != np.asarray(winner)[:, None]
    assert np.all(np.abs(np.asarray(plain_six)).sum(-1)[losing] == 0.0)  # the paper's WTA: no gradient
    assert np.all(np.abs(np.asarray(g_six)).sum(-1)[losing] > 0.0)  # relaxed: every losing head learns


def test_volume_parameterisation_and_init():
    radial = np.log(np.arange(1, 12, dtype=np.float64))
    p = models.init_volume(16, radial, jax.random.key(0), init_scale=0.0)
    assert float(jnp.abs(models.volume_hartley(p)).max()) == 0.0
    assert float(p["exponent"][8, 8, 8]) == pytest.approx(0.0)  # radius 0 -> log(1)
    assert float(p["exponent"][8, 8, 11]) == pytest.approx(np.log(4))  # radius 3
    p = models.init_volume(16, radial, jax.random.key(0), init_scale=1.0)
    h = models.volume_hartley(p)
    np.testing.assert_allclose(np.asarray(h), np.asarray(p["mantissa"] * jnp.exp(p["exponent"])))
