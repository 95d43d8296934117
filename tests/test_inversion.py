"""Direct Fourier inversion (jaxcryo.inversion) against known maps."""

import jax
import jax.numpy as jnp
import numpy as np

from jaxcryo import ctf as ctf_lib
from jaxcryo import evaluate, geometry, inversion, phantoms, simulate, slicing
from jaxcryo.io.loader import Batch
from jaxcryo.io.table import CTF_FIELDS


class _ArraySource:
    """What inversion.accumulate reads from an ImageSource: batch(rows), the CTF table, the reading threads."""

    threads = 1

    def __init__(self, images, table, pixel):
        self.images, self.table, self.pixel_size_angstrom = images, table, pixel
        self.image_size = images.shape[-1]

    def batch(self, rows):
        return Batch(rows, self.images[rows])


class _Table:
    def __init__(self, n, defocus):
        for key in CTF_FIELDS:
            setattr(self, key, np.zeros(n, np.float32))
        self.defocus_u_angstrom = self.defocus_v_angstrom = defocus
        self.voltage_kv = np.full(n, 300.0)
        self.spherical_aberration_mm = np.full(n, 2.7)
        self.amplitude_contrast = np.full(n, 0.1)


def _projections(n=600, size=32, pixel=6.0, noise=0.0, shifts=False, seed=0, two_fold=False):
    truth = phantoms.protein_phantom(size, pixel)
    if two_fold:  # symmetric under a half turn about z through the box centre: (x, y) -> (-x, -y)
        truth = truth + np.roll(truth[:, ::-1, ::-1], 1, axis=(1, 2))
    vol_h = slicing.volume_to_hartley(jnp.asarray(truth), oversample=2)
    rots = np.asarray(geometry.random_rotations(jax.random.key(seed), (n,), jnp.float32))
    rng = np.random.default_rng(seed)
    t = rng.uniform(-3, 3, (n, 2)).astype(np.float32) if shifts else np.zeros((n, 2), np.float32)
    defocus = rng.uniform(8_000, 25_000, n).astype(np.float32)
    table = _Table(n, defocus)
    ctf = ctf_lib.ctf_grid(size, pixel, **{k: jnp.asarray(getattr(table, k), jnp.float32) for k in CTF_FIELDS})
    images = np.asarray(simulate.clean_images(vol_h, jnp.asarray(rots), jnp.asarray(t), ctf.astype(jnp.float32)))
    images = images + noise * images.std() * rng.normal(size=images.shape).astype(np.float32)
    return truth, _ArraySource(images, table, pixel), rots, t


def test_noise_free_projections_invert_to_the_map():
    truth, source, rots, shifts = _projections(shifts=True)
    labels = np.where(np.arange(len(rots)) % 2 == 0, 1, 2)
    out = inversion.reconstruct(source, rots, shifts, labels)
    curve = evaluate.fsc(out["map"], truth)
    # the phantom is rendered at 2.5 px resolution; every shell it holds signal in must come back
    assert np.all(curve[1:12] > 0.95), curve
    assert out["fsc_half"][1:12].min() > 0.9
    # the map is in image units: projecting it reproduces the images (up to the CTF's zeros)
    assert 0.8 < float(np.sum(out["map"] * truth) / np.sum(truth * truth)) < 1.2


def test_wrong_poses_or_shifts_do_not_invert_to_the_map():
    truth, source, rots, shifts = _projections(shifts=True)
    labels = np.where(np.arange(len(rots)) % 2 == 0, 1, 2)
    random = np.asarray(geometry.random_rotations(jax.random.key(99), (len(rots),), jnp.float32))
    for bad_rots, bad_shifts in ((random, shifts), (rots, np.zeros_like(shifts))):
        curve = evaluate.fsc(inversion.reconstruct(source, bad_rots, bad_shifts, labels)["map"], truth)
        assert evaluate.resolution_at(curve, 0.5, 6.0) > 2 * evaluate.resolution_at(
            evaluate.fsc(inversion.reconstruct(source, rots, shifts, labels)["map"], truth), 0.5, 6.0)


def test_wiener_filter_follows_the_half_set_agreement():
    truth, source, rots, shifts = _projections(noise=3.0)
    labels = np.where(np.arange(len(rots)) % 2 == 0, 1, 2)
    out = inversion.reconstruct(source, rots, shifts, labels)
    fsc_full = 2 * out["fsc_half"] / (1 + np.maximum(out["fsc_half"], 0))
    np.testing.assert_allclose(out["ssnr"], np.clip(fsc_full, 1e-4, 0.9999) / (1 - np.clip(fsc_full, 1e-4, 0.9999)))
    # with noise the filtered map is closer to the truth than either half
    full, half = evaluate.fsc(out["map"], truth), evaluate.fsc(out["half1"], truth)
    assert evaluate.resolution_at(full, 0.5, 6.0) < evaluate.resolution_at(half, 0.5, 6.0)


def test_a_map_of_every_image_favours_each_images_own_pose_and_the_other_halfs_map_does_not():
    """Why the re-search and the mate test judge an image with the other half set's map
    (``train.research_half_maps``): under an exact two-fold a pose R and its mate R S^T predict the same
    image, so the data cannot prefer either; a map inverted from every image still does, because it
    holds each image's own noise on the image's slice, while the map of the half set the image is not
    in has no reason to (RELION's gold-standard halves)."""
    from jaxcryo import losses, models

    truth, source, rots, shifts = _projections(n=1000, noise=3.0, two_fold=True)
    labels = np.where(np.arange(len(rots)) % 2 == 0, 1, 2)
    out = inversion.reconstruct(source, rots, shifts, labels, filtered_halves=True)
    mates = rots @ np.diag([-1.0, -1.0, 1.0]).astype(np.float32)  # R S^T, S the half turn about z
    table, size = source.table, source.image_size
    ctf = ctf_lib.ctf_grid(size, source.pixel_size_angstrom,
                           **{k: jnp.asarray(getattr(table, k), jnp.float32) for k in CTF_FIELDS})
    target = losses.images_to_hartley(jnp.asarray(source.images))
    mask = slicing.frequency_mask(size)

    def prefers_own_pose(volume, rows):
        vol_h = models.hartley_from_map(jnp.asarray(volume, jnp.float32))  # the run's units
        at = [losses.per_image_loss(losses.predict(vol_h, jnp.asarray(r[rows]), ctf[rows]), target[rows], mask)
              for r in (rots, mates)]
        return float(np.mean(np.asarray(at[0]) < np.asarray(at[1])))

    one, two = np.nonzero(labels == 1)[0], np.nonzero(labels == 2)[0]
    full = prefers_own_pose(out["map"], np.arange(len(rots)))
    other_half = (prefers_own_pose(out["half2_filtered"], one) * len(one)
                  + prefers_own_pose(out["half1_filtered"], two) * len(two)) / len(rots)
    own_half = prefers_own_pose(out["half1_filtered"], one)
    assert full > 0.9 and own_half > 0.9, (full, own_half)
    assert 0.4 < other_half < 0.6, other_half
    # each half's filtered map is still a map of the particle
    for half in ("half1_filtered", "half2_filtered"):
        assert evaluate.resolution_at(evaluate.fsc(out[half], truth), 0.5, 6.0) < 30.0
    # the re-search asks for the halves alone: the same maps, no full map filtered for nothing
    alone = inversion.reconstruct(source, rots, shifts, labels, filtered_halves=True, full_map=False)
    assert "map" not in alone
    np.testing.assert_array_equal(alone["half1_filtered"], out["half1_filtered"])


def test_weighted_draws_insert_as_the_weighted_sum_of_single_insertions():
    """The posterior-weighted map (``train.posterior_map_draws``): an image inserted at draws
    Exp(omega_t) R with weights w_t must add exactly sum_t w_t x (its single insertion at Exp(omega_t) R)
    to both sums; a wrong composition order or weights applied to one sum only would not."""
    _, source, rots, shifts = _projections(n=16, shifts=True)
    table, size = source.table, source.image_size
    fields = {k: jnp.asarray(getattr(table, k), jnp.float32) for k in CTF_FIELDS}
    omega = jnp.asarray(np.random.default_rng(3).normal(0, 0.2, (16, 3, 3)), jnp.float32)  # ~11 deg per axis
    weights = jnp.asarray([0.2, 0.3, 0.5], jnp.float32) * jnp.ones((16, 1))
    keep = jnp.ones(16)

    def fresh():
        return jnp.zeros((size,) * 3 + (2,), jnp.float32)

    args = (jnp.asarray(source.images), fields)
    soft = inversion.insert(fresh(), *args, jnp.asarray(rots), jnp.asarray(shifts), keep, 6.0, draws=(omega, weights))
    expected = sum(float(weights[0, t]) * inversion.insert(
        fresh(), *args, geometry.so3_exp(omega[:, t]) @ jnp.asarray(rots), jnp.asarray(shifts), keep, 6.0)
        for t in range(3))
    np.testing.assert_allclose(np.asarray(soft), np.asarray(expected), rtol=1e-4, atol=1e-4 * float(jnp.abs(expected).max()))
    swapped = inversion.insert(fresh(), *args, jnp.asarray(rots), jnp.asarray(shifts), keep, 6.0,
                               draws=(omega, weights[:, ::-1]))
    assert float(jnp.abs(swapped - expected).max()) > 0.05 * float(jnp.abs(expected).max())
    # zero offsets: the hard insertion at R, whatever the weights
    hard = inversion.insert(fresh(), *args, jnp.asarray(rots), jnp.asarray(shifts), keep, 6.0)
    zero = inversion.insert(fresh(), *args, jnp.asarray(rots), jnp.asarray(shifts), keep, 6.0,
                            draws=(jnp.zeros_like(omega), weights))
    np.testing.assert_allclose(np.asarray(zero), np.asarray(hard), rtol=1e-4, atol=1e-5 * float(jnp.abs(hard).max()))


def test_a_posterior_weighted_map_keeps_the_half_maps_of_the_poses():
    """With draws, only the full map is marginalised: the half maps (the run's FSC and the filter's SNR)
    stay those of the inversion at the poses, since the draws were weighted with the other half's map."""
    _, source, rots, shifts = _projections(n=64, noise=1.0)
    labels = np.where(np.arange(64) % 2 == 0, 1, 2)
    omega = np.random.default_rng(4).normal(0, 0.05, (64, 4, 3)).astype(np.float32)
    weights = np.full((64, 4), 0.25, np.float32)
    hard = inversion.reconstruct(source, rots, shifts, labels)
    soft = inversion.reconstruct(source, rots, shifts, labels, draws=(rots, omega, weights))
    np.testing.assert_array_equal(soft["fsc_half"], hard["fsc_half"])
    np.testing.assert_array_equal(soft["half1"], hard["half1"])
    assert np.abs(soft["map"] - hard["map"]).max() > 1e-3 * np.abs(hard["map"]).max()
