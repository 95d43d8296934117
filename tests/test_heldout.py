"""The held-out gradient (jaxcryo.heldout) against automatic differentiation of the whole composition."""

import jax
import jax.numpy as jnp
import numpy as np

from jaxcryo import evaluate, geometry, heldout, inversion, losses, steps
from jaxcryo.io.table import CTF_FIELDS
from jaxcryo.slicing import insert_slices
from tests.test_inversion import _projections


def _reference_gradient(source, rots, shifts, contrast, labels, mask):
    """dH/d omega by jax.grad of the held-out loss written out in full: every image inserted into its
    half's sums (``slicing.insert_slices``, differentiable in the rotations), each half's Wiener map, and
    each image's loss under the other half's map. The filter's regulariser is held fixed, as the stage
    holds it within a step."""
    box, px, n = source.image_size, source.pixel_size_angstrom, len(rots)
    fields = {k: jnp.asarray(getattr(source.table, k), jnp.float32) for k in CTF_FIELDS}
    images = jnp.asarray(source.images)
    data = inversion.insertion_data(images, fields, jnp.asarray(shifts), jnp.asarray(contrast), px, box)
    target, ctf, disc = steps.batch_targets(dict(images=images, **fields), px, 1.0)
    ctf = ctf * jnp.asarray(contrast)[:, None, None]
    num, w = inversion.accumulate(source, rots, shifts, labels, 16, contrast)
    ssnr = inversion.ssnr_from_fsc(inversion.wiener_maps(num, w, box, full_map=False)["fsc_half"])
    floor = inversion.weight_floor(w)
    terms = [inversion.wiener_terms(w[h], ssnr, floor, box) for h in range(2)]

    def total(omega):
        r = geometry.so3_exp(omega) @ jnp.asarray(rots)
        maps = []
        for h in range(2):
            sel = jnp.asarray(labels == h + 1, jnp.float32)[:, None, None, None]
            sums = insert_slices(jnp.zeros((box,) * 3 + (2,)), r, data * sel)
            maps.append(heldout.wiener_hartley(sums[..., 0], sums[..., 1], jnp.asarray(terms[h][0], jnp.float32),
                                               jnp.asarray(terms[h][1]), box, mask))
        other = jnp.where(jnp.asarray(labels == 1)[:, None, None, None], 1.0, 0.0)
        per_image = (other[:, 0, 0, 0] * losses.loss_at(maps[1], r, ctf, target, disc, "gaussian", jnp.asarray(shifts))
                     + (1 - other[:, 0, 0, 0]) * losses.loss_at(maps[0], r, ctf, target, disc, "gaussian", jnp.asarray(shifts)))
        return jnp.sum(per_image)

    return np.asarray(jax.grad(total)(jnp.zeros((n, 3)))), float(total(jnp.zeros((n, 3)))) / n


def test_the_held_out_gradient_matches_autodiff_of_the_whole_composition():
    """Noisy shifted projections at poses ~3 deg off their truth, contrasts spread, a volume mask: the
    stage's gradient (direct term + the term through each image's own half map, by the hand-built
    pullback and the adjoint of insertion) must equal jax.grad of H written out directly. A missing
    term, a wrong sign or a wrong half would each miss by far more than float32 rounding."""
    truth, source, rots, shifts = _projections(n=40, size=16, pixel=12.0, noise=1.0, shifts=True, seed=3)
    rng = np.random.default_rng(4)
    off = rng.normal(0, np.radians(3.0), (len(rots), 3)).astype(np.float32)
    rots = np.asarray(geometry.so3_exp(jnp.asarray(off)) @ jnp.asarray(rots), np.float32)
    contrast = rng.uniform(0.85, 1.15, len(rots)).astype(np.float32)
    labels = heldout.fresh_split(len(rots), 0, 2)
    mask = jnp.asarray(evaluate.soft_sphere_mask(16), jnp.float32)
    mesh = steps.make_mesh()
    shardings = (jax.NamedSharding(mesh, jax.sharding.PartitionSpec(steps.AXIS)),
                 jax.NamedSharding(mesh, jax.sharding.PartitionSpec()))
    passes = heldout.make_passes(source.pixel_size_angstrom, mesh)
    got, held = heldout.heldout_gradient(passes, source, rots, shifts, contrast, labels, 16, shardings, mask)
    want, want_held = _reference_gradient(source, rots, shifts, contrast, labels, mask)
    assert abs(held - want_held) < 1e-5 * abs(want_held)
    cos = np.sum(got * want) / (np.linalg.norm(got) * np.linalg.norm(want))
    assert cos > 0.9999, cos
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-3 * np.abs(want).max())
    # the term through the maps is a real part of it: the direct term alone is far from the whole
    direct_only, _ = heldout.heldout_gradient((passes[0], lambda *a: jnp.zeros((a[2].shape[0], 3))), source, rots,
                                              shifts, contrast, labels, 16, shardings, mask)
    assert np.linalg.norm(direct_only - want) > 0.3 * np.linalg.norm(want)  # measured: half of it


def test_fresh_splits_are_even_and_differ_between_steps():
    a, b = heldout.fresh_split(1001, 0, 0), heldout.fresh_split(1001, 0, 1)
    assert set(np.unique(a)) == {1, 2} and abs(int(np.sum(a == 1)) - int(np.sum(a == 2))) <= 1
    assert 0.4 < np.mean(a == b) < 0.6
    np.testing.assert_array_equal(a, heldout.fresh_split(1001, 0, 0))


def test_step_rates_fall_linearly_to_the_final_fraction():
    np.testing.assert_allclose(heldout.step_rates(0.02, 5, 0.1), [0.02, 0.0155, 0.011, 0.0065, 0.002])
    np.testing.assert_allclose(heldout.step_rates(0.02, 1, 0.1), [0.02])
