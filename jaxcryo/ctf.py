"""The contrast transfer function, with RELION's formula, units and sign.

Convention (pinned by tests/test_ctf.py)
----------------------------------------
    CTF(s) = sqrt(1 - w^2) sin(chi) + w cos(chi),
    chi    = pi lambda df(theta) s^2 - (pi / 2) Cs lambda^3 s^4 + phi,
    df     = (dfU + dfV) / 2 + (dfU - dfV) / 2 cos(2 (theta - theta_ast)),
multiplied by exp(-B s^2 / 4) when a B-factor is given, and taken as |CTF| for phase-flipped images
(RELION's rlnCtfDataArePhaseFlipped: each image's transform was multiplied by sign(CTF), so it holds
|CTF| x projection plus noise that is still white). ``s`` is the spatial frequency in 1/A and
``theta`` its angle from the image x axis (counter-clockwise towards +y, i.e. atan2(k_y, k_x)); defocus
in A (positive = underfocus), Cs in mm, voltage in kV, angles in degrees, lambda relativistic in A.

Sign: CTF(0) = +w, as RELION's ``CTF::getCTF``. With this sign, protein density (positive in the map)
is white in the images, so images are modelled as CTF * projection with no inversion anywhere.
(cryoDRGN's ``compute_ctf`` returns the negative and flips the data to compensate.)

The CTF is evaluated on the exact centred FFT grid of ``jaxcryo.fourier``; it is real and even in k, so
it multiplies Hartley and Fourier coefficients alike.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxcryo import fourier


def electron_wavelength_angstrom(voltage_kv: jax.Array) -> jax.Array:
    """Relativistic electron wavelength: 12.2643247 / sqrt(V (1 + 0.978466e-6 V)), V in volts."""
    volts = jnp.asarray(voltage_kv) * 1e3
    return 12.2643247 / jnp.sqrt(volts * (1.0 + 0.978466e-6 * volts))


@jax.jit  # called eagerly on the host side too (simulation, evaluation): one program per shape
def compute_ctf(
    freqs: jax.Array,
    defocus_u_angstrom: jax.Array,
    defocus_v_angstrom: jax.Array,
    defocus_angle_deg: jax.Array,
    voltage_kv: jax.Array,
    spherical_aberration_mm: jax.Array,
    amplitude_contrast: jax.Array,
    phase_shift_deg: jax.Array = 0.0,
    b_factor_angstrom2: jax.Array = 0.0,
    phase_flipped: jax.Array = 0.0,
) -> jax.Array:
    """CTF at frequencies ``freqs`` (..., 2) as (k_x, k_y) in 1/A.

    ``freqs`` is an image grid (L, L, 2) or a batch of them (B, L, L, 2). Parameters are scalars or
    (B,) arrays; (L, L, 2) frequencies with (B,) parameters give (B, L, L).
    """
    k_x, k_y = freqs[..., 0], freqs[..., 1]

    def per_image(p):  # (B,) -> (B, 1, 1) so it broadcasts over an image's (L, L) grid
        p = jnp.asarray(p, dtype=freqs.dtype)
        return p if p.ndim == 0 else p.reshape(p.shape + (1, 1))

    dfu, dfv = per_image(defocus_u_angstrom), per_image(defocus_v_angstrom)
    angle_ast = jnp.radians(per_image(defocus_angle_deg))
    lam = electron_wavelength_angstrom(per_image(voltage_kv))
    cs_angstrom = per_image(spherical_aberration_mm) * 1e7
    w = per_image(amplitude_contrast)
    phase = jnp.radians(per_image(phase_shift_deg))
    b_factor = per_image(b_factor_angstrom2)
    flipped = per_image(phase_flipped) > 0.5

    s2 = k_x**2 + k_y**2
    theta = jnp.arctan2(k_y, k_x)
    defocus = 0.5 * (dfu + dfv) + 0.5 * (dfu - dfv) * jnp.cos(2.0 * (theta - angle_ast))
    chi = jnp.pi * lam * defocus * s2 - 0.5 * jnp.pi * cs_angstrom * lam**3 * s2**2 + phase
    ctf = jnp.sqrt(1.0 - w**2) * jnp.sin(chi) + w * jnp.cos(chi)
    return jnp.where(flipped, jnp.abs(ctf), ctf) * jnp.exp(-0.25 * b_factor * s2)


def ctf_grid(image_size: int, pixel_size_angstrom: jax.Array, **params) -> jax.Array:
    """CTF on the (L, L) centred FFT grid; with (B,) parameters (incl. pixel size) -> (B, L, L)."""
    pixel = jnp.asarray(pixel_size_angstrom, dtype=jnp.result_type(float))
    unit = fourier.frequency_grid_2d(image_size, 1.0).astype(pixel.dtype)  # cycles per pixel
    freqs = unit / pixel.reshape(pixel.shape + (1, 1, 1))
    return compute_ctf(freqs, **params)
