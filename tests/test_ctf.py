"""CTF against a float64 re-derivation in RELION's own form (ctf.h: K1..K5, -sin), and analytic facts."""

import jax.numpy as jnp
import numpy as np
import pytest

from jaxcryo import ctf, fourier
from references import relion_form_ctf


PARAMS = dict(
    defocus_u_angstrom=21000.0,
    defocus_v_angstrom=18500.0,
    defocus_angle_deg=33.0,
    voltage_kv=300.0,
    spherical_aberration_mm=2.7,
    amplitude_contrast=0.1,
)


def test_wavelength_300kv():
    assert np.isclose(float(ctf.electron_wavelength_angstrom(300.0)), 0.019687, atol=2e-6)


def test_matches_relion_form_on_fft_grid():
    ours = np.asarray(ctf.ctf_grid(96, 1.3, phase_shift_deg=20.0, b_factor_angstrom2=50.0, **PARAMS))
    ref = relion_form_ctf(96, 1.3, 21000.0, 18500.0, 33.0, 300.0, 2.7, 0.1, phase=20.0, bfac=50.0)
    np.testing.assert_allclose(ours, ref, atol=1e-9)


def test_ctf_at_origin_is_plus_amplitude_contrast():
    grid = np.asarray(ctf.ctf_grid(64, 1.0, **PARAMS))
    assert np.isclose(grid[32, 32], 0.1, atol=1e-12)


def test_first_zero_at_analytic_radius():
    kv, cs_mm, df, w = 300.0, 2.7, 15000.0, 0.07
    lam = float(ctf.electron_wavelength_angstrom(kv))
    cs = cs_mm * 1e7
    # sqrt(1-w^2) sin chi + w cos chi = sin(chi + asin w) = 0  <=>  chi = pi - asin w  (first zero)
    a, b, c = 0.5 * np.pi * cs * lam**3, -np.pi * lam * df, np.pi - np.arcsin(w)
    s_zero = np.sqrt((-b - np.sqrt(b * b - 4 * a * c)) / (2 * a))
    s = np.linspace(0.0, 2 * s_zero, 200001)
    freqs = jnp.asarray(np.stack([s * np.cos(0.7), s * np.sin(0.7)], -1))
    values = np.asarray(ctf.compute_ctf(freqs, df, df, 12.0, kv, cs_mm, w))
    first = np.argmax(np.sign(values[1:]) != np.sign(values[:-1]))
    s_found = s[first] - values[first] * (s[first + 1] - s[first]) / (values[first + 1] - values[first])
    assert abs(s_found - s_zero) < 1e-8
    # units sanity: with Cs ignored the first zero is at 1/s = sqrt(lambda df) = 17.2 A
    assert 1 / s_zero == pytest.approx(np.sqrt(lam * df), rel=0.02)


def test_astigmatism_rotates_with_angle():
    rng = np.random.default_rng(0)
    k = rng.uniform(-0.2, 0.2, size=(500, 2))
    alpha = np.radians(40.0)
    rot = np.array([[np.cos(alpha), -np.sin(alpha)], [np.sin(alpha), np.cos(alpha)]])
    base = dict(PARAMS, defocus_angle_deg=10.0)
    turned = dict(PARAMS, defocus_angle_deg=50.0)
    v0 = np.asarray(ctf.compute_ctf(jnp.asarray(k), **base))
    v1 = np.asarray(ctf.compute_ctf(jnp.asarray(k @ rot.T), **turned))
    np.testing.assert_allclose(v1, v0, atol=1e-9)
    # along the astigmatism axis the defocus is dfU, perpendicular to it dfV
    s = 0.05
    along = np.array([[s * np.cos(np.radians(10.0)), s * np.sin(np.radians(10.0))]])
    iso_u = ctf.compute_ctf(jnp.asarray(along), **dict(base, defocus_v_angstrom=21000.0))
    assert np.isclose(float(ctf.compute_ctf(jnp.asarray(along), **base)[0]), float(iso_u[0]), atol=1e-12)


def test_batched_parameters_broadcast():
    df = jnp.asarray([10000.0, 20000.0, 30000.0])
    params = dict(PARAMS, defocus_u_angstrom=df, defocus_v_angstrom=df)
    grid = ctf.ctf_grid(32, 2.0, **params)
    assert grid.shape == (3, 32, 32)
    single = ctf.ctf_grid(32, 2.0, **dict(PARAMS, defocus_u_angstrom=20000.0, defocus_v_angstrom=20000.0))
    np.testing.assert_allclose(np.asarray(grid[1]), np.asarray(single), atol=1e-12)
    per_pixel = ctf.ctf_grid(32, jnp.asarray([2.0, 2.0, 2.0]), **params)
    np.testing.assert_allclose(np.asarray(per_pixel), np.asarray(grid), atol=1e-12)


def test_parameters_from_relion31_star(shared_formats):
    import starfile

    blocks = starfile.read(shared_formats / "relion31.star")
    optics, particles = blocks["optics"].iloc[0], blocks["particles"].iloc[2]
    size, pixel = int(optics["rlnImageSize"]), float(optics["rlnImagePixelSize"])
    params = dict(
        defocus_u_angstrom=float(particles["rlnDefocusU"]),
        defocus_v_angstrom=float(particles["rlnDefocusV"]),
        defocus_angle_deg=float(particles["rlnDefocusAngle"]),
        voltage_kv=float(optics["rlnVoltage"]),
        spherical_aberration_mm=float(optics["rlnSphericalAberration"]),
        amplitude_contrast=float(optics["rlnAmplitudeContrast"]),
        phase_shift_deg=float(particles["rlnPhaseShift"]),
    )
    ours = np.asarray(ctf.ctf_grid(size, pixel, **params))
    ref = relion_form_ctf(size, pixel, params["defocus_u_angstrom"], params["defocus_v_angstrom"],
                          params["defocus_angle_deg"], params["voltage_kv"], params["spherical_aberration_mm"],
                          params["amplitude_contrast"], phase=params["phase_shift_deg"])
    assert ours.shape == (256, 256)
    np.testing.assert_allclose(ours, ref, atol=1e-9)
    freqs = np.asarray(fourier.frequency_grid_2d(size, pixel))
    assert np.isclose(np.abs(freqs).max(), 1 / (2 * pixel))
