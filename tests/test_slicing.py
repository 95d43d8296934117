"""Fourier slice theorem against analytic and real-space projections; gradients vs finite differences."""

import jax
import jax.numpy as jnp
import numpy as np
from scipy import ndimage
from scipy.spatial.transform import Rotation

from jaxcryo import geometry, slicing
from references import analytic_projection, blob_volume

L = 64


def relion_rotations():
    angles = np.array([[0.0, 0.0, 0.0], [30.0, 60.0, -45.0], [120.0, 100.0, 10.0], [-75.0, 150.0, 80.0]])
    return np.asarray(geometry.euler_to_matrix(jnp.asarray(angles)))


def rel_error(a, b):
    return np.linalg.norm(a - b) / np.linalg.norm(b)


def test_slice_matches_analytic_projection_of_gaussians():
    rots = relion_rotations()
    vol_h = slicing.volume_to_hartley(jnp.asarray(blob_volume(L)), oversample=4)
    images = np.asarray(slicing.project(vol_h, jnp.asarray(rots[None]), L))[0]  # (1, M) batch -> (M, L, L)
    for rot, img in zip(rots, images):
        assert rel_error(img, analytic_projection(rot, L)) < 1e-2


def test_slice_without_oversampling_shows_the_known_trilinear_falloff():
    """Plain trilinear slicing (the paper's setting) attenuates off-centre signal by about sinc^2;
    on-grid samples (identity rotation) are exact."""
    rots = relion_rotations()
    vol_h = slicing.volume_to_hartley(jnp.asarray(blob_volume(L)))
    imgs = np.asarray(slicing.project(vol_h, jnp.asarray(rots), L))
    errs = [rel_error(img, analytic_projection(rot, L)) for rot, img in zip(rots, imgs)]
    assert errs[0] < 1e-6
    assert all(0.02 < e < 0.2 for e in errs[1:])


def real_space_projection(vol, rot):
    """Rotate + sum along z, float64, cubic interpolation: P(x, y) = sum_z V(A^T (x, y, z))."""
    size = vol.shape[0]
    c = np.arange(size) - size // 2
    z, y, x = np.meshgrid(c, c, c, indexing="ij")
    img_coords = np.stack([x, y, z], -1).reshape(-1, 3).astype(np.float64)
    mol = img_coords @ rot  # rows: (A^T q)^T = q^T A
    sample = np.stack([mol[:, 2], mol[:, 1], mol[:, 0]]) + size // 2
    values = ndimage.map_coordinates(vol, sample, order=3, mode="constant", cval=0.0).reshape(vol.shape)
    return values.sum(axis=0)


def lumpy_volume(size, seed=0):
    rng = np.random.default_rng(seed)
    noise = ndimage.gaussian_filter(rng.normal(size=(size,) * 3), 2.0)
    c = np.arange(size) - size // 2
    z, y, x = np.meshgrid(c, c, c, indexing="ij")
    r = np.sqrt(x**2 + y**2 + z**2)
    return np.maximum(noise, 0) * (r < size / 4)


def test_slice_matches_real_space_projection_of_lumpy_volume():
    size = 48
    vol = ndimage.gaussian_filter(lumpy_volume(size), 1.0)
    vol_h = slicing.volume_to_hartley(jnp.asarray(vol), oversample=4)
    rots = Rotation.random(3, random_state=1).as_matrix()
    images = np.asarray(slicing.project(vol_h, jnp.asarray(rots), size))
    for rot, img in zip(rots, images):
        assert rel_error(img, real_space_projection(vol, rot)) < 2e-2


def test_slicing_batch_shapes_and_mask():
    vol_h = jnp.ones((16, 16, 16), jnp.float32)
    rots = geometry.random_rotations(jax.random.key(0), (5, 3))
    out = slicing.extract_slices(vol_h, rots, 16)
    assert out.shape == (5, 3, 16, 16) and out.dtype == jnp.float32
    mask = np.asarray(slicing.frequency_mask(16, 0.5))
    assert mask[8, 8] and mask[8, 12] and not mask[8, 13] and not mask[0, 0]
    assert mask.sum() == np.sum((np.arange(16)[:, None] - 8) ** 2 + (np.arange(16)[None] - 8) ** 2 <= 16)


def test_gradients_wrt_volume_and_rotation_match_finite_differences():
    rng = np.random.default_rng(3)
    size = 12
    vol_h = jnp.asarray(rng.normal(size=(size,) * 3))
    target = jnp.asarray(rng.normal(size=(size, size)))
    base = jnp.asarray(Rotation.random(random_state=2).as_matrix())

    def loss(v, omega):
        rot = geometry.so3_exp(omega) @ base
        return jnp.sum((slicing.extract_slices(v, rot, size) - target) ** 2)

    omega = jnp.asarray([0.01, -0.02, 0.015])
    g_vol, g_omega = jax.grad(loss, argnums=(0, 1))(vol_h, omega)
    assert np.all(np.isfinite(np.asarray(g_vol))) and np.all(np.isfinite(np.asarray(g_omega)))
    h = 1e-6
    for e in np.eye(3):
        fd = (loss(vol_h, omega + h * e) - loss(vol_h, omega - h * e)) / (2 * h)
        np.testing.assert_allclose(float(g_omega @ e), float(fd), rtol=1e-5)
    # the loss is quadratic in the volume: check a few voxels that the slice touches
    flat_idx = np.argsort(-np.abs(np.asarray(g_vol)).ravel())[:4]
    for i in flat_idx:
        dv = np.zeros(size**3)
        dv[i] = 1.0
        dv = jnp.asarray(dv.reshape((size,) * 3))
        fd = (loss(vol_h + h * dv, omega) - loss(vol_h - h * dv, omega)) / (2 * h)
        np.testing.assert_allclose(float(np.asarray(g_vol).ravel()[i]), float(fd), rtol=1e-6)


def test_insert_slices_is_the_adjoint_of_extraction_for_every_channel():
    """<extract(V), Y> = <V, insert(Y)> for each channel, with the volume larger than the images
    (oversampled) and rotations that put some slice corners outside the grid; and insert equals
    jax.vjp of extract_slices channel by channel."""
    rng = np.random.default_rng(5)
    size, vol_size, batch = 10, 14, 6
    rots = jnp.asarray(Rotation.random(batch, random_state=4).as_matrix())
    values = jnp.asarray(rng.normal(size=(batch, size, size, 2)))
    inserted = slicing.insert_slices(jnp.zeros((vol_size,) * 3 + (2,), values.dtype), rots, values)
    for c in range(2):
        vol = jnp.asarray(rng.normal(size=(vol_size,) * 3))
        lhs = float(jnp.sum(slicing.extract_slices(vol, rots, size) * values[..., c]))
        np.testing.assert_allclose(float(jnp.sum(vol * inserted[..., c])), lhs, rtol=1e-10)
        _, adjoint = jax.vjp(lambda v: slicing.extract_slices(v, rots, size), vol)
        np.testing.assert_allclose(np.asarray(inserted[..., c]), np.asarray(adjoint(values[..., c])[0]), atol=1e-10)
    again = slicing.insert_slices(inserted, rots, values)  # accumulates
    np.testing.assert_allclose(np.asarray(again), 2 * np.asarray(inserted), atol=1e-10)


def test_insert_slices_keeps_the_accumulators_dtype(recwarn):
    """float64 values (x64 on, as a user's numpy inputs arrive) added to a float32 accumulator give a
    float32 accumulator holding the float32-rounded sum, without the scatter down-cast that JAX
    deprecates (a FutureWarning today, an error in a later release)."""
    rng = np.random.default_rng(6)
    rots = jnp.asarray(Rotation.random(4, random_state=7).as_matrix())
    values = jnp.asarray(rng.normal(size=(4, 8, 8, 2)))  # float64
    acc = slicing.insert_slices(jnp.zeros((10,) * 3 + (2,), jnp.float32), rots, values)
    assert acc.dtype == jnp.float32
    assert not [w for w in recwarn if issubclass(w.category, FutureWarning)]
    exact = slicing.insert_slices(jnp.zeros((10,) * 3 + (2,), jnp.float64), rots, values)
    np.testing.assert_allclose(np.asarray(acc), np.asarray(exact), rtol=1e-5, atol=1e-5)
