"""Centred Fourier and Hartley transforms, frequency grids, Fourier cropping and padding.

Conventions (stated once, here, and pinned by tests/test_fourier.py)
--------------------------------------------------------------------
* Arrays are indexed (..., y, x) for images and (..., z, y, x) for volumes (numpy/MRC order).
* The origin of real and reciprocal space is at index ``L // 2`` of every transformed axis (for even
  ``L`` the Nyquist frequency -L/2 sits at index 0). ``fft_centered(x) = fftshift(fftn(ifftshift(x)))``
  with numpy's sign (exp(-2 pi i k.x)) and no normalisation; ``ifft_centered`` divides by N.
* The Hartley transform is ``H = Re F - Im F`` of the centred FFT ``F``: a real array with the same
  grid. It is its own inverse up to N (the number of transformed elements): ``ht(ht(x)) = N x``.
  Because the CTF is real and even, multiplying H by the CTF equals multiplying F by it, and squared
  errors summed over a full grid are the same in both representations (Parseval).
* Frequencies in 1/Angstrom: index ``i`` of an axis of length ``L`` with pixel size ``a`` is
  ``(i - L//2) / (L a)``. Grids carry the last axis as vector components (x, y[, z]).
* Fourier cropping keeps the central frequencies and rescales so that real-space pixel values (not
  sums) are preserved, i.e. a downsampled image has the same mean and the same units per pixel.
"""

from __future__ import annotations

from typing import Sequence

import jax.numpy as jnp
import jax


def _axes(ndim: int) -> tuple[int, ...]:
    if ndim not in (1, 2, 3):
        raise ValueError(f"ndim must be 1, 2 or 3, got {ndim}")
    return tuple(range(-ndim, 0))


def fft_centered(x: jax.Array, ndim: int = 2) -> jax.Array:
    """Centred forward FFT over the last ``ndim`` axes; (..., L[, L[, L]]) complex."""
    axes = _axes(ndim)
    return jnp.fft.fftshift(jnp.fft.fftn(jnp.fft.ifftshift(x, axes=axes), axes=axes), axes=axes)


def ifft_centered(f: jax.Array, ndim: int = 2) -> jax.Array:
    """Centred inverse FFT over the last ``ndim`` axes (complex result; take .real for real data)."""
    axes = _axes(ndim)
    return jnp.fft.fftshift(jnp.fft.ifftn(jnp.fft.ifftshift(f, axes=axes), axes=axes), axes=axes)


def ht(x: jax.Array, ndim: int = 2) -> jax.Array:
    """Hartley transform over the last ``ndim`` axes of a real array: Re F - Im F."""
    f = fft_centered(x, ndim)
    return f.real - f.imag


def iht(h: jax.Array, ndim: int = 2) -> jax.Array:
    """Inverse Hartley transform: ht(h) / N."""
    n = 1
    for size in h.shape[-ndim:]:
        n *= size
    return ht(h, ndim) / n


def flip_frequencies(x: jax.Array, ndim: int = 2) -> jax.Array:
    """Map the value at frequency k to -k on the centred grid (index i -> 2 (L//2) - i mod L)."""
    for axis in _axes(ndim):
        size = x.shape[axis]
        shift = 2 * (size // 2) - (size - 1)  # 1 for even L, 0 for odd L
        x = jnp.roll(jnp.flip(x, axis=axis), shift, axis=axis)
    return x


def hartley_to_fourier(h: jax.Array, ndim: int = 2) -> jax.Array:
    """F(k) = [H(k) + H(-k)]/2 - i [H(k) - H(-k)]/2."""
    h_neg = flip_frequencies(h, ndim)
    return jax.lax.complex(0.5 * (h + h_neg), -0.5 * (h - h_neg))


def fourier_to_hartley(f: jax.Array) -> jax.Array:
    """H = Re F - Im F (F must be Hermitian, i.e. the transform of real data)."""
    return f.real - f.imag


def frequencies_1d(size: int, pixel_size_angstrom: float = 1.0) -> jnp.ndarray:
    """(size,) frequencies in 1/Angstrom on the centred grid."""
    return (jnp.arange(size) - size // 2) / (size * pixel_size_angstrom)


def frequency_grid_2d(size: int, pixel_size_angstrom: float = 1.0) -> jnp.ndarray:
    """(size, size, 2) frequencies (k_x, k_y) in 1/Angstrom at image index (y, x)."""
    f = frequencies_1d(size, pixel_size_angstrom)
    ky, kx = jnp.meshgrid(f, f, indexing="ij")
    return jnp.stack([kx, ky], axis=-1)


def frequency_grid_3d(size: int, pixel_size_angstrom: float = 1.0) -> jnp.ndarray:
    """(size, size, size, 3) frequencies (k_x, k_y, k_z) in 1/Angstrom at volume index (z, y, x)."""
    f = frequencies_1d(size, pixel_size_angstrom)
    kz, ky, kx = jnp.meshgrid(f, f, f, indexing="ij")
    return jnp.stack([kx, ky, kz], axis=-1)


def shift_angles(size: int, shifts: jax.Array, ndim: int = 2) -> jax.Array:
    """Phase angles 2 pi k.t / L of a translation by t on the centred grid: f(x - t) <-> F(k) exp(-i angle).

    ``shifts`` (..., ndim) as (x, y[, z]) in pixels/voxels -> (..., L, L[, L]) angles (arrays indexed
    (y, x) / (z, y, x) as everywhere here). The one phase ramp behind every sub-pixel shift of the package.
    """
    k = (jnp.arange(size) - size // 2).astype(shifts.dtype)
    grids = jnp.meshgrid(*([k] * ndim), indexing="ij")[::-1]  # (kx, ky[, kz])
    expand = (slice(None),) * (shifts.ndim - 1) + (None,) * ndim
    return 2 * jnp.pi * sum(g * shifts[(...,) + (i,)][expand] for i, g in enumerate(grids)) / size


def radial_index_grid(size: int, ndim: int = 2) -> jnp.ndarray:
    """(size,)*ndim distance of each index from the origin, in index (pixel) units."""
    c = jnp.arange(size) - size // 2
    grids = jnp.meshgrid(*([c] * ndim), indexing="ij")
    return jnp.sqrt(sum(g.astype(jnp.float32) ** 2 for g in grids))


def _center_slices(old: int, new: int, ndim: int) -> tuple[slice, ...]:
    start = old // 2 - new // 2
    return (Ellipsis,) + (slice(start, start + new),) * ndim


def crop_center(x: jax.Array, new_size: int, ndim: int = 2) -> jax.Array:
    """Crop the last ``ndim`` axes to ``new_size`` keeping index L//2 at new_size//2."""
    old = x.shape[-1]
    if new_size > old:
        raise ValueError(f"cannot crop size {old} to larger size {new_size}")
    return x[_center_slices(old, new_size, ndim)]


def pad_center(x: jax.Array, new_size: int, ndim: int = 2, value: float = 0.0) -> jax.Array:
    """Zero-pad the last ``ndim`` axes to ``new_size`` keeping index L//2 at new_size//2."""
    old = x.shape[-1]
    if new_size < old:
        raise ValueError(f"cannot pad size {old} to smaller size {new_size}")
    before = new_size // 2 - old // 2
    after = new_size - old - before
    pad = [(0, 0)] * (x.ndim - ndim) + [(before, after)] * ndim
    return jnp.pad(x, pad, constant_values=value)


def fourier_crop(x: jax.Array, new_size: int, ndim: int = 2) -> jax.Array:
    """Downsample real data (..., L, L[, L]) to new_size by keeping the central frequencies.

    Pixel values are preserved (a constant image stays the same constant).
    """
    old = x.shape[-1]
    f = crop_center(fft_centered(x, ndim), new_size, ndim)
    return ifft_centered(f, ndim).real * (new_size / old) ** ndim


def fourier_pad(x: jax.Array, new_size: int, ndim: int = 2) -> jax.Array:
    """Upsample real data by zero-padding its centred transform (band-limited interpolation)."""
    old = x.shape[-1]
    f = pad_center(fft_centered(x, ndim), new_size, ndim)
    return ifft_centered(f, ndim).real * (new_size / old) ** ndim


def ensure_sizes(shape: Sequence[int], what: str) -> None:
    """Raise a clear error unless all trailing sizes are equal (square images / cubic volumes)."""
    if len(set(shape)) != 1:
        raise ValueError(f"{what} must be square/cubic, got shape {tuple(shape)}")
