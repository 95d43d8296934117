"""Direct Fourier inversion (jaxcryo.inversion) against known maps."""

import jax
import jax.numpy as jnp
import numpy as np

from jaxcryo import ctf as ctf_lib
from jaxcryo import evaluate, geometry, inversion, phantoms, simulate, slicing
from jaxcryo.io.loader import Batch
from jaxcryo.io.table import CTF_FIELDS


class _ArraySource:
    """The two things inversion.accumulate reads from an ImageSource: batch(rows) and the CTF table."""

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


def _projections(n=600, size=32, pixel=6.0, noise=0.0, shifts=False, seed=0):
    truth = phantoms.protein_phantom(size, pixel)
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
