"""Central slices of a Hartley-space volume (the Fourier slice theorem), trilinear and jitted.

Convention (RELION's, also cryoDRGN's; pinned by tests/test_slicing.py)
-----------------------------------------------------------------------
For a rotation ``A`` (see ``jaxcryo.geometry``) the projection image is
``P(x, y) = integral V(A^T (x, y, z)) dz``: an atom at ``p`` appears at ``(A p)_xy``. Its 2D transform
is the volume's 3D transform sampled on the plane ``k3 = A^T (k_x, k_y, 0)``, i.e.
``k3 = k_x * A[0, :] + k_y * A[1, :]``. Both the image and the volume use the centred grids of
``jaxcryo.fourier`` (origin at index L//2, arrays indexed (y, x) / (z, y, x)).

The volume grid may be finer than the image's frequency grid (``oversample``): a volume of box ``D``
sliced into ``L``-pixel images (same pixel size, the volume zero-padded in real space) samples at
``k3 * D / L`` voxels. Trilinear interpolation in Fourier space attenuates signal at real-space
radius r by up to about sinc^2(r / D): at r = L/6 that is ~8 % for D = L and ~0.5 % for D = 4L
(tests/test_slicing.py measures both). A sinc^2 "gridding correction" does not fix this for slices,
whose sample positions fall on and between grid points alike, so we offer oversampling instead. The
learned volumes of the method use ``oversample=1``, as the paper does: the volume is fitted through
this very operator, so the fall-off is absorbed by the fit; the simulator oversamples.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jaxcryo import fourier


def slice_coordinates(rotations: jax.Array, image_size: int, volume_size: int) -> jax.Array:
    """(..., 3, 3) rotations -> (..., L, L, 3) volume indices (z, y, x) of each image frequency."""
    k = (jnp.arange(image_size) - image_size // 2).astype(rotations.dtype) * (volume_size / image_size)
    ky, kx = jnp.meshgrid(k, k, indexing="ij")  # (L, L) at image index (y, x)
    row_x = rotations[..., 0, :][..., None, None, :]  # (..., 1, 1, 3) as (x, y, z)
    row_y = rotations[..., 1, :][..., None, None, :]
    k3 = kx[..., None] * row_x + ky[..., None] * row_y  # (..., L, L, 3) as (x, y, z)
    return k3[..., ::-1] + volume_size // 2  # to (z, y, x) voxel indices


@functools.partial(jax.jit, static_argnames=("image_size",))
def extract_slices(volume_hartley: jax.Array, rotations: jax.Array, image_size: int) -> jax.Array:
    """Trilinear central slices.

    Args:
      volume_hartley: (D, D, D) Hartley transform of the volume on the centred grid.
      rotations: (..., 3, 3), e.g. (B, M, 3, 3) for B images and M candidate poses.
      image_size: L, the image box (D / L is the oversampling factor).
    Returns:
      (..., L, L) Hartley transforms of the projections; zero where the plane leaves the grid.
    """
    volume_size = volume_hartley.shape[-1]
    coords = slice_coordinates(rotations, image_size, volume_size)
    flat = coords.reshape(-1, 3)
    values = jax.scipy.ndimage.map_coordinates(
        volume_hartley, [flat[:, 0], flat[:, 1], flat[:, 2]], order=1, mode="constant", cval=0.0
    )
    return values.reshape(coords.shape[:-1])


@jax.jit
def insert_slices(accumulator: jax.Array, rotations: jax.Array, values: jax.Array) -> jax.Array:
    """The adjoint of ``extract_slices`` for several channels at once: ``accumulator`` plus each
    image frequency's values spread onto its 8 neighbouring voxels with the trilinear weights.

    Args:
      accumulator: (D, D, D, C) Hartley-space sums on the centred grid.
      rotations: (B, 3, 3).
      values: (B, L, L, C), e.g. C = 2 for a Wiener inversion's CTF * image and CTF^2.
    Returns:
      (D, D, D, C). Channel c equals ``jax.vjp`` of ``extract_slices`` applied to ``values[..., c]``
      (tests/test_slicing.py), but the weights and indices are computed once for all channels and
      each corner is one scatter: a direct inversion inserts 5x faster than through two ``jax.vjp``
      calls on a 2-core CPU.
    """
    size, channels = accumulator.shape[0], accumulator.shape[-1]
    coords = slice_coordinates(rotations, values.shape[1], size).reshape(-1, 3)
    vals = values.reshape(-1, channels)
    base = jnp.floor(coords)
    frac = coords - base
    base = base.astype(jnp.int32)
    flat = accumulator.reshape(-1, channels)
    for corner in range(8):
        offset = jnp.array([(corner >> 2) & 1, (corner >> 1) & 1, corner & 1], jnp.int32)  # (z, y, x)
        idx = base + offset
        weight = jnp.prod(jnp.where(offset == 1, frac, 1.0 - frac), axis=-1)
        inside = jnp.all((idx >= 0) & (idx < size), axis=-1)  # outside corners hold the constant 0
        target = jnp.where(inside, (idx[:, 0] * size + idx[:, 1]) * size + idx[:, 2], size**3)
        # in the accumulator's dtype: float64 values (x64 on) must not be cast down silently by scatter,
        # which JAX is deprecating into an error
        flat = flat.at[target].add((vals * weight[:, None].astype(vals.dtype)).astype(flat.dtype), mode="drop")
    return flat.reshape(accumulator.shape)


def frequency_mask(image_size: int, radius_fraction: float = 1.0) -> jnp.ndarray:
    """(L, L) bool: frequencies within radius_fraction * Nyquist (Nyquist = L/2 pixels)."""
    return fourier.radial_index_grid(image_size, ndim=2) <= radius_fraction * (image_size / 2)


def volume_to_hartley(volume: jax.Array, oversample: int = 1) -> jax.Array:
    """(D, D, D) real-space volume -> (oD, oD, oD) Hartley transform for ``extract_slices``.

    ``oversample`` zero-pads in real space, refining the frequency grid that slices interpolate.
    """
    padded = fourier.pad_center(volume, volume.shape[-1] * oversample, ndim=3)
    return fourier.ht(padded, ndim=3)


def hartley_to_volume(volume_hartley: jax.Array, box_size: int | None = None) -> jax.Array:
    """(D, D, D) Hartley transform -> real-space volume, cropped to ``box_size`` if given."""
    real = fourier.iht(volume_hartley, ndim=3)
    return real if box_size is None else fourier.crop_center(real, box_size, ndim=3)


def project(volume_hartley: jax.Array, rotations: jax.Array, image_size: int) -> jax.Array:
    """(..., 3, 3) -> (..., L, L) real-space projections (slice, then inverse Hartley)."""
    return fourier.iht(extract_slices(volume_hartley, rotations, image_size), ndim=2)
