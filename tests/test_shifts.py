"""In-plane shifts: the shift heads, the cross-correlation shift search, per-image shift refinement in
auto-decoding and the shift-error evaluation. Images come from the simulator's own phase ramp
(``simulate.clean_images``, in Fourier form; ``fourier.shift_angles`` itself is checked against
integer rolls in tests/test_fourier.py), while ``losses.shift_hartley`` works in Hartley form."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxcryo import ctf as ctf_lib
from jaxcryo import evaluate, geometry, losses, models, phantoms, search, simulate, slicing, steps


def _clean_set(n=24, size=32, max_shift=4.0, seed=0):
    vol = phantoms.protein_phantom(size, 6.0)
    vol_h = slicing.volume_to_hartley(jnp.asarray(vol))
    rots = geometry.random_rotations(jax.random.key(seed), (n,), jnp.float32)
    shifts = np.random.default_rng(seed).uniform(-max_shift, max_shift, size=(n, 2)).astype(np.float32)
    defocus = jnp.full((n,), 15_000.0)
    ctf = ctf_lib.ctf_grid(size, 6.0, defocus_u_angstrom=defocus, defocus_v_angstrom=defocus,
                           defocus_angle_deg=jnp.zeros(n), voltage_kv=300.0, spherical_aberration_mm=2.7,
                           amplitude_contrast=0.1).astype(jnp.float32)
    images = simulate.clean_images(vol_h, rots, jnp.asarray(shifts), ctf)
    return vol_h, rots, shifts, ctf, images


def _targets(images):
    """Hartley targets on the scale of losses.predict for _clean_set's volume (images_to_hartley
    divides by L; the simulator's inverse FFT of the same slices does not)."""
    return losses.images_to_hartley(images) * images.shape[-1]


def test_shift_heads_start_centred_and_are_bounded():
    enc = models.PoseEncoder(n_heads=3, width=1 / 16, estimate_shifts=True)
    x = jax.random.normal(jax.random.key(0), (4, 32, 32))
    variables = jax.jit(enc.init)(jax.random.key(1), x)  # eagerly every layer's ops compile one by one
    out = jax.jit(enc.apply)(variables, x)
    assert out.shape == (4, 3, 8)
    rots, shifts = models.decode_poses(out, 0.15)
    np.testing.assert_array_equal(np.asarray(shifts), 0.0)  # zero-initialised outputs: centred at the start
    np.testing.assert_allclose(np.asarray(rots @ jnp.swapaxes(rots, -1, -2)), np.broadcast_to(np.eye(3), (4, 3, 3, 3)),
                               atol=1e-5)
    _, far = models.decode_poses(jnp.full((1, 1, 8), 50.0), 0.15)
    np.testing.assert_allclose(np.asarray(far), 0.15, rtol=1e-6)  # tanh bound
    assert models.decode_poses(out[..., :6], 0.15)[1] is None


def test_shift_hartley_matches_the_simulators_phase_ramp():
    vol_h, rots, shifts, ctf, images = _clean_set(n=4)
    moved = losses.shift_hartley(losses.predict(vol_h, rots, ctf), jnp.asarray(shifts))
    expected = _targets(images)
    # exact away from the Nyquist row and column (index 0), where a fractional shift's phase has no
    # Hermitian partner on an even grid and the simulator's real part differs
    np.testing.assert_allclose(np.asarray(moved)[:, 1:, 1:], np.asarray(expected)[:, 1:, 1:], atol=3e-4)


def test_an_odd_box_moves_the_target_or_the_slice_alike_on_the_whole_disc():
    # auto-decoding refines the poses of an odd box with the target moved (steps.make_autodecoding_step):
    # on an odd grid every frequency has its partner, so the two forms agree up to Nyquist
    vol_h, rots, shifts, ctf, images = _clean_set(n=6, size=33)
    clean = _targets(images)
    noisy = clean + 0.5 * float(jnp.std(clean)) * jax.random.normal(jax.random.key(3), clean.shape)
    mask = slicing.frequency_mask(33)
    turned = geometry.so3_exp(jnp.full((6, 3), 0.03, jnp.float32)) @ rots
    got = losses.loss_at(vol_h, turned, ctf, noisy, mask, shifts_px=jnp.asarray(shifts) + 0.3)
    expected = losses.per_image_loss(losses.predict(vol_h, turned, ctf, jnp.asarray(shifts) + 0.3), noisy, mask)
    np.testing.assert_allclose(np.asarray(got), np.asarray(expected), rtol=2e-5)
    exact = np.asarray(losses.loss_at(vol_h, rots, ctf, clean, mask, shifts_px=jnp.asarray(shifts)))
    power = np.asarray(losses.per_image_loss(jnp.zeros_like(clean), clean, mask))
    assert np.max(exact / power) < 1e-6, exact / power


def test_loss_at_moves_the_target_as_predict_moves_the_slice():
    vol_h, rots, shifts, ctf, images = _clean_set(n=6)
    clean = _targets(images)
    noisy = clean + 0.5 * float(jnp.std(clean)) * jax.random.normal(jax.random.key(3), clean.shape)
    turn = geometry.so3_exp(jnp.asarray([[0.0, 0.0, 0.0], [0.05, 0.0, 0.0], [0.0, -0.1, 0.02]], jnp.float32))
    poses = turn[None] @ rots[:, None]  # (6, 3, 3, 3): the truth and two turned poses per image
    moved = jnp.stack([shifts, shifts + 0.7, -shifts], axis=1)  # (6, 3, 2) pixels
    mask = slicing.frequency_mask(32, 0.95)  # the two self-paired Nyquist points left out (losses.loss_at)
    for kind in ("gaussian", "l1_fourier"):
        got = losses.loss_at(vol_h, poses, ctf, noisy, mask, kind, moved)
        expected = losses.per_image_loss(losses.predict(vol_h, poses, ctf, moved), noisy, mask, kind)
        np.testing.assert_allclose(np.asarray(got), np.asarray(expected), rtol=2e-5)
    # against the simulator's own phase ramp: at the true pose and shift nothing is left, and a
    # shift of the wrong sign is far off
    exact = np.asarray(losses.loss_at(vol_h, rots, ctf, clean, mask, shifts_px=jnp.asarray(shifts)))
    wrong = np.asarray(losses.loss_at(vol_h, rots, ctf, clean, mask, shifts_px=-jnp.asarray(shifts)))
    power = np.asarray(losses.per_image_loss(jnp.zeros_like(clean), clean, mask))
    assert np.max(exact / power) < 1e-6 and np.min(wrong / power) > 0.05, (exact / power, wrong / power)
    # the weighted sum behind every loss is the plain masked sum
    x = np.asarray(noisy)
    np.testing.assert_allclose(np.asarray(losses.weighted_sum(noisy, mask)), (x * np.asarray(mask)).sum(axis=(-2, -1)),
                               rtol=1e-4, atol=1e-3)


def test_best_shifts_finds_the_simulated_displacement():
    vol_h, rots, shifts, ctf, images = _clean_set()
    target = _targets(images)
    mask = slicing.frequency_mask(32, 1.0)
    found = losses.best_shifts(losses.predict(vol_h, rots, ctf), target, mask, max_shift_px=5.0)
    err = np.linalg.norm(np.asarray(found) - shifts, axis=1)
    assert np.max(err) < 0.25, err
    # the bound is respected: a box of +-2 px clips the estimate to it
    clipped = np.asarray(losses.best_shifts(losses.predict(vol_h, rots, ctf), target, mask, max_shift_px=2.0))
    assert np.all(np.abs(clipped) <= 2.5)


def test_autodecoding_refines_shifts_with_the_volume_frozen():
    vol_h, rots, shifts, ctf, images = _clean_set(n=32)
    n = 32
    mesh = steps.make_mesh()
    vol_params = {"mantissa": vol_h / 32, "exponent": jnp.zeros_like(vol_h)}  # the 1/L scale of the images
    start = shifts + np.random.default_rng(1).uniform(-1.5, 1.5, size=shifts.shape).astype(np.float32)
    frozen = optax.set_to_zero()
    state = {"vol_params": vol_params, "vol_opt": frozen.init(vol_params), **steps.init_pose_tables(rots, start)}
    step = steps.make_autodecoding_step(frozen, 6.0, "gaussian", pose_iters=5, vol_iters=1, pose_lr=1e-3, mesh=mesh,
                                        shift_lr=0.1)
    # the simulator's CTF fields, in the batch layout of jaxcryo.steps
    fields = {"defocus_u_angstrom": 15_000.0, "defocus_v_angstrom": 15_000.0, "defocus_angle_deg": 0.0,
              "voltage_kv": 300.0, "spherical_aberration_mm": 2.7, "amplitude_contrast": 0.1, "phase_shift_deg": 0.0,
              "b_factor_angstrom2": 0.0, "phase_flipped": 0.0}  # the CTF of _clean_set, in the batch layout of jaxcryo.steps
    batch = {"images": images, "index": jnp.arange(n, dtype=jnp.int32),
             **{k: jnp.full((n,), v, jnp.float32) for k, v in fields.items()}}
    batch = jax.device_put(batch, jax.NamedSharding(mesh, jax.sharding.PartitionSpec(steps.AXIS)))
    before = np.linalg.norm(start - shifts, axis=1)
    for _ in range(8):
        state, _ = step(state, batch, 1.0)
    after = np.linalg.norm(np.asarray(state["shifts"]) - shifts, axis=1)
    assert np.median(before) > 0.8
    assert np.median(after) < 0.1, after
    assert np.all(np.asarray(state["pose_count"]) == 40)


@pytest.mark.parametrize("size", [32, 33])  # an odd box refines with the target moved, an even one the slice
def test_autodecoding_walks_turned_poses_back_at_fixed_shifts(size):
    vol_h, rots, shifts, ctf, images = _clean_set(n=16, size=size)
    mesh = steps.make_mesh()
    vol_params = {"mantissa": vol_h / size, "exponent": jnp.zeros_like(vol_h)}  # the 1/L scale of the images
    turn = np.random.default_rng(2).normal(size=(16, 3)).astype(np.float32)
    turn *= np.radians(2.0) / np.linalg.norm(turn, axis=1, keepdims=True)
    start = geometry.so3_exp(jnp.asarray(turn)) @ rots
    frozen = optax.set_to_zero()
    state = {"vol_params": vol_params, "vol_opt": frozen.init(vol_params), **steps.init_pose_tables(start, shifts)}
    step = steps.make_autodecoding_step(frozen, 6.0, "gaussian", pose_iters=5, vol_iters=1, pose_lr=3e-3, mesh=mesh)
    batch = {"images": images, "index": jnp.arange(16, dtype=jnp.int32), "ctf": ctf}
    batch = jax.device_put(batch, jax.NamedSharding(mesh, jax.sharding.PartitionSpec(steps.AXIS)))
    for _ in range(8):
        state, _ = step(state, batch, 1.0)
    after = np.asarray(geometry.geodesic_distance_deg(jnp.asarray(np.asarray(state["rotations"])), rots))
    np.testing.assert_array_equal(np.asarray(state["shifts"]), shifts)  # fixed: never refined
    assert np.median(after) < 0.3, after


def test_shift_errors_remove_the_maps_translation():
    rng = np.random.default_rng(0)
    rots = np.asarray(geometry.random_rotations(jax.random.key(3), (500,), jnp.float32))
    true = rng.uniform(-6, 6, size=(500, 2))
    d = np.array([1.5, -2.0, 0.7])
    est = true + (rots @ d)[:, :2] + rng.normal(0, 0.1, size=(500, 2))
    est[:50] += 20.0  # a tenth of the images badly off: the fit must not follow them
    out = evaluate.shift_errors(rots, est, true)
    np.testing.assert_allclose(out["map_translation"], d, atol=0.05)
    assert abs(np.median(out["shift_error"]) - 0.1 * np.sqrt(2 * np.log(2))) < 0.02  # Rayleigh median, sigma 0.1


def test_search_losses_match_direct_losses_with_shifted_copies():
    vol_h, rots, shifts, ctf, images = _clean_set(n=6)
    target = _targets(images)
    mask = slicing.frequency_mask(32, 0.8)
    grid = geometry.random_rotations(jax.random.key(5), (10,), jnp.float32)
    copies = losses.shift_hartley(target[:, None], -jnp.asarray(shifts)[:, None] + search.shift_offsets(1)[None])
    fast = losses.search_losses(vol_h, grid, ctf, copies, mask)  # (B, S, G)
    assert fast.shape == (6, 9, 10)
    for s in (0, 4, 8):
        expected = losses.per_image_loss(losses.predict(vol_h, jnp.broadcast_to(grid, (6, 10, 3, 3)), ctf),
                                         copies[:, s], mask)
        np.testing.assert_allclose(np.asarray(fast[:, s]), np.asarray(expected), rtol=1e-4, atol=1e-6)



def test_search_losses_are_exact_for_counts_the_loop_must_pad():
    # search_losses makes the slices and the weighted images in two loop steps; 5 images and 7
    # rotations do not split in two, so a padded row must be dropped and no row counted twice
    vol_h, rots, shifts, ctf, images = _clean_set(n=5)
    target = _targets(images)
    mask = slicing.frequency_mask(32, 0.8)
    grid = geometry.random_rotations(jax.random.key(6), (7,), jnp.float32)
    direct = losses.per_image_loss(losses.predict(vol_h, jnp.broadcast_to(grid, (5, 7, 3, 3)), ctf), target, mask)
    plain = losses.search_losses(vol_h, grid, ctf, target, mask)  # (B, G)
    assert plain.shape == (5, 7)
    np.testing.assert_allclose(np.asarray(plain), np.asarray(direct), rtol=1e-4, atol=1e-6)
    copies = losses.shift_hartley(target[:, None], -jnp.asarray(shifts)[:, None] + search.shift_offsets(1)[None])
    fast = losses.search_losses(vol_h, grid, ctf, copies, mask)  # (B, S, G)
    assert fast.shape == (5, 9, 7)
    expected = losses.per_image_loss(losses.predict(vol_h, jnp.broadcast_to(grid, (5, 7, 3, 3)), ctf), copies[:, 8], mask)
    np.testing.assert_allclose(np.asarray(fast[:, 8]), np.asarray(expected), rtol=1e-4, atol=1e-6)

def test_search_with_offsets_recovers_rotation_and_shift():
    vol_h, rots, shifts, ctf, images = _clean_set(n=8)
    target = _targets(images)
    mask = slicing.frequency_mask(32, 1.0)
    decoys = geometry.random_rotations(jax.random.key(9), (40,), jnp.float32)
    grid = jnp.concatenate([decoys, rots])  # the true rotations are among the candidates
    guess = jnp.asarray(shifts) + jnp.array([1.0, -1.0])  # every image's shift is a pixel off in x and y
    best_rot, _, best_shift = search.global_search(vol_h, grid, ctf, target, mask, guess, search.shift_offsets(1))
    np.testing.assert_allclose(np.asarray(best_shift[:, 0]), shifts, atol=1e-5)
    assert np.max(np.asarray(geometry.geodesic_distance_deg(best_rot[:, 0], rots))) < 1e-3
    # without offsets the guessed shift is kept
    _, _, kept = search.global_search(vol_h, grid, ctf, target, mask, guess)
    np.testing.assert_allclose(np.asarray(kept[:, 0]), np.asarray(guess))


def test_a_known_displacement_is_taken_out_of_the_image():
    # data.origins_as_shifts: an image whose particle sits at t (pixels), given t in A, becomes the
    # image of the centred particle: the centred prediction fits it, the uncentred image does not
    vol_h, rots, shifts, ctf, images = _clean_set(n=8)
    pixel = 6.0
    batch = {"images": images, "defocus_u_angstrom": jnp.full((8,), 15_000.0), "defocus_v_angstrom": jnp.full((8,), 15_000.0),
             "defocus_angle_deg": jnp.zeros(8), "voltage_kv": jnp.full((8,), 300.0),
             "spherical_aberration_mm": jnp.full((8,), 2.7), "amplitude_contrast": jnp.full((8,), 0.1),
             "phase_shift_deg": jnp.zeros(8), "b_factor_angstrom2": jnp.zeros(8), "phase_flipped": jnp.zeros(8)}
    centred_pred = losses.predict(vol_h, rots, ctf)[:, 1:, 1:] / 32  # the 1/L scale of images_to_hartley
    as_is, _, _ = steps.batch_targets(batch, pixel, 1.0)
    moved, _, _ = steps.batch_targets(dict(batch, pre_shift_angstrom=jnp.asarray(shifts) * pixel), pixel, 1.0)
    scale = float(jnp.max(jnp.abs(centred_pred)))
    # away from the Nyquist row and column (see test_shift_hartley_matches_the_simulators_phase_ramp)
    assert float(jnp.max(jnp.abs(moved[:, 1:, 1:] - centred_pred))) < 1e-3 * scale
    assert float(jnp.max(jnp.abs(as_is[:, 1:, 1:] - centred_pred))) > 0.3 * scale
