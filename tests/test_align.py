"""Map alignment recovers a known rotation + shift + mirror (<= 1 deg, <= 0.5 voxel)."""

import jax.numpy as jnp
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from jaxcryo import align, fourier, frames, geometry, phantoms


def _shift(volume, t):
    """U(p) = V(p + t), t = (x, y, z) voxels, by a Fourier phase ramp."""
    size = volume.shape[0]
    k = (np.arange(size) - size // 2) / size
    kz, ky, kx = np.meshgrid(k, k, k, indexing="ij")
    f = np.asarray(fourier.fft_centered(jnp.asarray(volume), 3)) * np.exp(2j * np.pi * (kx * t[0] + ky * t[1] + kz * t[2]))
    return np.asarray(fourier.ifft_centered(jnp.asarray(f), 3).real)


@pytest.mark.parametrize("mirrored", [False, True])
def test_align_volumes_recovers_rotation_shift_and_hand(mirrored):
    reference = phantoms.protein_phantom(32, 5.0, resolution_angstrom=15.0, seed=1)
    q = Rotation.from_euler("zyz", [123, 57, -40], degrees=True).as_matrix()
    t = np.array([2.3, -1.6, 0.8])
    moving = frames.align_map(_shift(reference, t), q.T, mirrored=False)  # W(r) = V(Q r + t)
    if mirrored:
        moving = np.asarray(frames.mirror(moving))
    result = align.align_volumes(moving, reference, n_rotations=2000, search_size=16, refine_size=32)
    assert result.mirrored == mirrored
    angle = float(geometry.geodesic_distance_deg(jnp.asarray(result.rotation, jnp.float32), jnp.asarray(q, jnp.float32)))
    assert angle <= 1.0
    assert np.abs(result.shift_voxels - t).max() <= 0.5
    aligned = align.apply_alignment(moving, result)
    assert np.corrcoef(aligned.ravel(), reference.ravel())[0, 1] > 0.95
