"""Frames of a reconstruction: it is defined up to a global rotation Q and a mirror (the hand).

If the map is V_est(p) = V_true(Q p), its poses are R_est = R_true Q (``jaxcryo.geometry`` convention);
a mirrored map V_est(p) = W(M p), M = diag(1, 1, -1) = ``MIRROR``, has poses M R_W M. These helpers are
shared by pose evaluation (``jaxcryo.evaluate``) and map alignment (``jaxcryo.align``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxcryo import fourier, slicing

MIRROR = np.diag([1.0, 1.0, -1.0])


def mirror(volume):
    """W(p) = V(M p): flip z about the centre index (works on numpy and jax arrays)."""
    size = volume.shape[0]
    return jnp.roll(jnp.flip(jnp.asarray(volume), axis=0), 2 * (size // 2) - (size - 1), axis=0)


def align_map(volume: np.ndarray, q: np.ndarray, mirrored: bool) -> np.ndarray:
    """Bring a map with poses R_est into the true frame: undo the mirror, then V(p) <- V(Q^T p)."""
    vol = jnp.asarray(volume, jnp.float32)
    if mirrored:
        vol = mirror(vol)
    size = vol.shape[-1]
    big = slicing.volume_to_hartley(vol, oversample=2)
    c = (jnp.arange(size) - size // 2).astype(jnp.float32)
    kz, ky, kx = jnp.meshgrid(c, c, c, indexing="ij")
    k = jnp.stack([kx, ky, kz], -1).reshape(-1, 3)
    src = k @ jnp.asarray(q, jnp.float32)  # rows (Q^T k)^T = k^T Q
    coords = src[:, ::-1].T * 2 + size  # (z, y, x) indices on the 2x grid (origin at size)
    h = jax.scipy.ndimage.map_coordinates(big, list(coords), order=1, mode="constant").reshape(size, size, size)
    # the 2x grid's transform is of the padded map: its values at even indices equal the D grid's
    return np.asarray(fourier.iht(h, 3))
