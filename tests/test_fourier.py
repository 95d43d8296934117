"""Fourier/Hartley kernels against numpy and analytic references."""

import jax.numpy as jnp
import numpy as np
import pytest

from jaxcryo import fourier


@pytest.mark.parametrize("size", [16, 17])
def test_centred_fft_origin_and_dft_definition(size):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(size, size))
    f = np.asarray(fourier.fft_centered(jnp.asarray(x)))
    c = size // 2
    idx = np.arange(size) - c
    # direct DFT with the origin of both spaces at index L//2
    phase = np.exp(-2j * np.pi * np.outer(idx, idx) / size)
    np.testing.assert_allclose(f, phase @ x @ phase.T, atol=1e-9)
    assert np.isclose(f[c, c], x.sum())
    np.testing.assert_allclose(np.asarray(fourier.ifft_centered(jnp.asarray(f))).real, x, atol=1e-12)


def test_parseval_2d_and_3d():
    rng = np.random.default_rng(1)
    for ndim, shape in ((2, (24, 24)), (3, (12, 12, 12))):
        x = jnp.asarray(rng.normal(size=shape))
        f = fourier.fft_centered(x, ndim)
        h = fourier.ht(x, ndim)
        n = np.prod(shape)
        assert np.isclose(float(jnp.sum(jnp.abs(f) ** 2)) / n, float(jnp.sum(x**2)))
        assert np.isclose(float(jnp.sum(h**2)) / n, float(jnp.sum(x**2)))


@pytest.mark.parametrize("size", [16, 15])
def test_hartley_definitions(size):
    rng = np.random.default_rng(2)
    x = rng.normal(size=(3, size, size))
    f = np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(x, axes=(-2, -1))), axes=(-2, -1))
    h = np.asarray(fourier.ht(jnp.asarray(x)))
    np.testing.assert_allclose(h, f.real - f.imag, atol=1e-10)
    np.testing.assert_allclose(np.asarray(fourier.ht(jnp.asarray(h))), size * size * x, atol=1e-9)
    np.testing.assert_allclose(np.asarray(fourier.iht(jnp.asarray(h))), x, atol=1e-12)
    np.testing.assert_allclose(np.asarray(fourier.hartley_to_fourier(jnp.asarray(h))), f, atol=1e-10)
    np.testing.assert_allclose(np.asarray(fourier.fourier_to_hartley(jnp.asarray(f))), h, atol=1e-10)


def test_hartley_3d_cas_kernel():
    rng = np.random.default_rng(3)
    size = 6
    x = rng.normal(size=(size,) * 3)
    idx = np.arange(size) - size // 2
    grid = np.stack(np.meshgrid(idx, idx, idx, indexing="ij"), -1).reshape(-1, 3)
    arg = 2 * np.pi * grid @ grid.T / size
    expected = ((np.cos(arg) + np.sin(arg)) @ x.reshape(-1)).reshape(x.shape)
    np.testing.assert_allclose(np.asarray(fourier.ht(jnp.asarray(x), ndim=3)), expected, atol=1e-9)


def test_frequency_grids_in_inverse_angstrom():
    g = np.asarray(fourier.frequency_grid_2d(8, 2.0))
    assert g.shape == (8, 8, 2)
    np.testing.assert_allclose(g[4, 4], [0, 0])
    np.testing.assert_allclose(g[4, 5], [1 / 16, 0])  # x varies along the last axis
    np.testing.assert_allclose(g[0, 4], [0, -0.25])  # Nyquist = 1 / (2 * 2 A)
    g3 = np.asarray(fourier.frequency_grid_3d(4, 1.0))
    np.testing.assert_allclose(g3[2, 2, 3], [0.25, 0, 0])
    np.testing.assert_allclose(g3[3, 2, 2], [0, 0, 0.25])


def _band_limited(size, pixel, freqs_cycles_per_angstrom, y, x):
    img = np.zeros_like(x, dtype=np.float64)
    for (fx, fy, amp, ph) in freqs_cycles_per_angstrom:
        img += amp * np.cos(2 * np.pi * (fx * x + fy * y) * pixel + ph)
    return img


def test_fourier_crop_of_band_limited_image_is_the_coarse_sampling():
    """A sum of cosines below the new Nyquist, cropped from 64 to 32 px, equals its direct sampling."""
    big, small = 64, 32
    pixel_big = 1.0
    pixel_small = pixel_big * big / small
    comps = [(3 / (big * pixel_big), -5 / (big * pixel_big), 1.0, 0.3), (11 / (big * pixel_big), 7 / (big * pixel_big), 0.5, 1.2), (0, 0, 2.0, 0)]

    def sample(size, pixel):
        c = np.arange(size) - size // 2
        y, x = np.meshgrid(c, c, indexing="ij")
        return _band_limited(size, pixel, comps, y, x)

    cropped = np.asarray(fourier.fourier_crop(jnp.asarray(sample(big, pixel_big)), small))
    np.testing.assert_allclose(cropped, sample(small, pixel_small), atol=1e-10)
    padded = np.asarray(fourier.fourier_pad(jnp.asarray(sample(small, pixel_small)), big))
    np.testing.assert_allclose(padded, sample(big, pixel_big), atol=1e-10)


def test_fourier_crop_3d_keeps_constant():
    vol = jnp.full((16, 16, 16), 2.5)
    np.testing.assert_allclose(np.asarray(fourier.fourier_crop(vol, 8, ndim=3)), 2.5, atol=1e-12)


def test_real_space_pad_and_crop_keep_origin():
    x = jnp.arange(25.0).reshape(5, 5)
    p = fourier.pad_center(x, 8)
    assert p.shape == (8, 8) and float(p[4, 4]) == float(x[2, 2])
    np.testing.assert_array_equal(np.asarray(fourier.crop_center(p, 5)), np.asarray(x))


@pytest.mark.parametrize("ndim, shift", [(2, (3.0, -2.0)), (3, (-1.0, 4.0, 2.0))])
def test_shift_angles_move_by_integer_rolls(ndim, shift):
    """An integer translation by the phase ramp equals np.roll (outside reference): f(x - t)."""
    x = np.random.default_rng(0).normal(size=(16,) * ndim).astype(np.float32)
    angles = fourier.shift_angles(16, jnp.asarray(shift, jnp.float32), ndim)
    moved = np.asarray(fourier.ifft_centered(fourier.fft_centered(jnp.asarray(x), ndim) * jnp.exp(-1j * angles), ndim).real)
    rolled = np.roll(x, [int(s) for s in shift[::-1]], axis=tuple(range(ndim)))  # axes are (z,) y, x
    np.testing.assert_allclose(moved, rolled, atol=1e-4)


@pytest.mark.parametrize("big, small", [(128, 96), (64, 32), (65, 48), (96, 78)])
def test_the_loader_s_crop_is_the_device_crop(big, small):
    """``io.loader.fourier_crop_numpy`` (half plane, single precision) against ``fourier.fourier_crop``
    (full complex transform): equal to float32 rounding on white noise, whose every frequency, the new
    Nyquist row and corner among them, is as strong as any."""
    from jaxcryo.io.loader import fourier_crop_numpy

    images = np.random.default_rng(big + small).standard_normal((3, big, big)).astype(np.float32)
    device = np.asarray(fourier.fourier_crop(jnp.asarray(images, jnp.float32), small))
    np.testing.assert_allclose(fourier_crop_numpy(images, small), device, atol=2e-5 * np.abs(device).max())
