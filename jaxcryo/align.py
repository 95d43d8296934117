"""Map-to-map alignment without external tools: global SO(3) search, local refinement, FFT translation,
both hands. The result maps the moving map into the reference's frame:

    aligned(p) = W(Q^T (p - t)),   W = moving, or moving mirrored through z (W(p) = moving(M p)),

for rotation Q (``jaxcryo.geometry`` convention), translation t (voxels, (x, y, z)) and M = diag(1, 1, -1).

Search: both maps are Fourier-cropped to ``search_size`` and low-passed; for each of ``n_rotations``
Haar-random rotations (and each hand) the score is the peak of the FFT cross-correlation, so the
translation needs no search. The best candidates are refined by Adam on the rotation's axis-angle
at ``refine_size`` (translation re-estimated by the FFT peak, sub-voxel by a parabola).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxcryo import fourier, frames, geometry


@dataclasses.dataclass(frozen=True)
class Alignment:
    rotation: np.ndarray  # (3, 3) Q
    shift_voxels: np.ndarray  # (3,) t as (x, y, z), in voxels of the full map
    mirrored: bool
    score: float  # normalised cross-correlation at refine_size


def _grid(size: int) -> jax.Array:
    c = (jnp.arange(size) - size // 2).astype(jnp.float32)
    z, y, x = jnp.meshgrid(c, c, c, indexing="ij")
    return jnp.stack([x, y, z], -1).reshape(-1, 3)


def rotate(volume: jax.Array, rotation: jax.Array) -> jax.Array:
    """V(Q^T p) on the same grid, trilinear (real space; for scoring and refinement)."""
    size = volume.shape[-1]
    src = _grid(size) @ rotation  # rows (Q^T p)^T
    coords = src[:, ::-1].T + size // 2
    return jax.scipy.ndimage.map_coordinates(volume, list(coords), order=1, mode="constant").reshape(volume.shape)


def _prepare(volume: np.ndarray, size: int, resolution_fraction: float = 0.5) -> jax.Array:
    """Fourier-crop to ``size``, low-pass at a fraction of the new Nyquist, normalise."""
    v = fourier.fourier_crop(jnp.asarray(volume, jnp.float32), size, 3) if volume.shape[0] > size else jnp.asarray(volume, jnp.float32)
    f = fourier.fft_centered(v, 3) * (fourier.radial_index_grid(size, 3) <= resolution_fraction * size / 2)
    v = fourier.ifft_centered(f, 3).real
    return (v - v.mean()) / (v.std() + 1e-12)


def _xcorr_peak(reference_f: jax.Array, moving: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Peak value (normalised) and its index of the circular cross-correlation reference * moving."""
    cc = jnp.fft.ifftn(reference_f * jnp.conj(jnp.fft.fftn(moving))).real / moving.size
    return jnp.max(cc), jnp.argmax(cc)


def _shift_from_index(index: int, size: int) -> np.ndarray:
    """Flat argmax of an (un-shifted) circular correlation -> shift (x, y, z) in [-size/2, size/2)."""
    z, y, x = np.unravel_index(int(index), (size,) * 3)
    return (np.array([x, y, z]) + size // 2) % size - size // 2


def _subvoxel_shift(cc: np.ndarray) -> np.ndarray:
    """Shift (x, y, z) at the correlation peak, refined by a parabola through its neighbours per axis."""
    size = cc.shape[0]
    idx = np.array(np.unravel_index(np.argmax(cc), cc.shape))  # (z, y, x)
    out = []
    for axis in range(3):
        lo, hi = idx.copy(), idx.copy()
        lo[axis], hi[axis] = (idx[axis] - 1) % size, (idx[axis] + 1) % size
        a, b, c = cc[tuple(lo)], cc[tuple(idx)], cc[tuple(hi)]
        denom = a - 2 * b + c
        out.append(idx[axis] + (0.5 * (a - c) / denom if denom < 0 else 0.0))
    z, y, x = out
    return (np.array([x, y, z]) + size / 2) % size - size / 2


def align_volumes(moving: np.ndarray, reference: np.ndarray, n_rotations: int = 4000, search_size: int = 24,
                  refine_size: int = 48, refine_steps: int = 60, seed: int = 0) -> Alignment:
    """Best rotation, translation and hand bringing ``moving`` onto ``reference`` (both (D, D, D))."""
    full = reference.shape[0]
    search_size, refine_size = min(search_size, full), min(refine_size, full)
    ref_s = _prepare(reference, search_size)
    ref_f = jnp.fft.fftn(ref_s)
    rotations = geometry.random_rotations(jax.random.key(seed), (n_rotations,))
    candidates = []
    for mirrored in (False, True):
        mov = _prepare(frames.mirror(moving) if mirrored else moving, search_size)
        scores = np.concatenate([np.asarray(_scores(ref_f, mov, rotations[i : i + 500])) for i in range(0, n_rotations, 500)])
        for i in np.argsort(-scores)[:3]:
            candidates.append((float(scores[i]), mirrored, np.asarray(rotations[i])))
    ref_r = _prepare(reference, refine_size, 0.6)
    ref_rf = jnp.fft.fftn(ref_r)
    best = None
    for _, mirrored, q0 in sorted(candidates, key=lambda c: -c[0])[:4]:
        mov = _prepare(frames.mirror(moving) if mirrored else moving, refine_size, 0.6)
        q, score = _refine(mov, ref_r, ref_rf, jnp.asarray(q0, jnp.float32), refine_steps)
        if best is None or score > best[0]:
            best = (score, mirrored, q)
    score, mirrored, q = best
    rotated = rotate(jnp.asarray(frames.mirror(moving) if mirrored else moving, jnp.float32), jnp.asarray(q))
    return Alignment(rotation=np.asarray(q), shift_voxels=align_translation(rotated, reference), mirrored=mirrored,
                     score=score)


def align_translation(moving: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Shift t (x, y, z voxels, sub-voxel) with moving(p - t) ~ reference(p): FFT cross-correlation peak."""
    size = reference.shape[0]
    mov, ref = _prepare(moving, size, 1.0), _prepare(reference, size, 1.0)
    cc = np.asarray(jnp.fft.ifftn(jnp.fft.fftn(ref) * jnp.conj(jnp.fft.fftn(mov))).real)
    return _subvoxel_shift(cc)


def fourier_shift(volume: jax.Array, shift: jax.Array) -> jax.Array:
    """V(p - t) for a continuous t = (x, y, z) voxels (phase ramp; differentiable in t)."""
    angles = fourier.shift_angles(volume.shape[0], jnp.asarray(shift, jnp.float32), ndim=3)
    return fourier.ifft_centered(fourier.fft_centered(volume, 3) * jnp.exp(-1j * angles), 3).real


@jax.jit
def _scores(reference_f: jax.Array, moving: jax.Array, rotations: jax.Array) -> jax.Array:
    """(B,) correlation peaks of the reference with ``moving`` turned by each of (B, 3, 3) ``rotations``.
    The maps are arguments, not captured: one program per shape serves every call."""
    return jax.vmap(lambda q: _xcorr_peak(reference_f, rotate(moving, q))[0])(rotations)


def _refine(mov, ref, ref_f, q0, steps: int, lr: float = 0.02):
    """Adam on the rotation's axis-angle perturbation and a continuous translation, jointly, starting
    from the integer FFT-correlation peak (a fractional shift left fixed would bias the rotation)."""
    _, index = _xcorr_peak(ref_f, rotate(mov, q0))
    rotation, score = _refine_from(mov, ref, q0, jnp.asarray(_shift_from_index(index, ref.shape[0]), jnp.float32),
                                   steps, lr)
    return np.asarray(rotation), float(score)


@functools.partial(jax.jit, static_argnames=("steps", "lr"))
def _refine_from(mov, ref, q0, shift0, steps: int, lr: float):
    """``_refine``'s Adam loop as one program: (rotation (3, 3), normalised correlation at the end)."""
    def ncc(params):
        omega, shift = params
        moved = fourier_shift(rotate(mov, geometry.so3_exp(omega) @ q0), shift)
        return jnp.mean(moved * ref) / (jnp.std(moved) + 1e-12)

    # the shift is optimised as shift / 10: Adam steps every parameter by about the learning rate, and a
    # voxel is worth ~10x a radian here; the rate decays linearly (large moves first, then settle)
    opt = optax.chain(optax.scale_by_adam(), optax.scale_by_schedule(lambda i: lr * (1.0 - i / steps) + 1e-4),
                      optax.scale(-1.0))
    grad = jax.grad(lambda p: -ncc((p[0], 10.0 * p[1])))

    def adam_step(_, carry):
        scaled, state = carry
        updates, state = opt.update(grad(scaled), state)
        return optax.apply_updates(scaled, updates), state

    scaled = (jnp.zeros(3, q0.dtype), shift0 / 10.0)
    scaled, _ = jax.lax.fori_loop(0, steps, adam_step, (scaled, opt.init(scaled)))
    params = (scaled[0], 10.0 * scaled[1])
    return geometry.so3_exp(params[0]) @ q0, ncc(params)


def apply_alignment(volume: np.ndarray, alignment: Alignment) -> np.ndarray:
    """The moving map in the reference frame (rotation in Fourier space on a 2x grid, then the shift)."""
    rotated = frames.align_map(volume, alignment.rotation, alignment.mirrored)
    return np.asarray(fourier_shift(jnp.asarray(rotated), jnp.asarray(alignment.shift_voxels, jnp.float32)), np.float32)


def align_known_rotation(volume: np.ndarray, reference: np.ndarray, rotation: np.ndarray, mirrored: bool) -> np.ndarray:
    """The map in the reference frame when its rotation and hand are known (e.g. from its poses):
    rotated and un-mirrored, then moved by the FFT cross-correlation peak's translation."""
    rotated = frames.align_map(volume, rotation, mirrored)
    shift = align_translation(rotated, reference)
    return np.asarray(fourier_shift(jnp.asarray(rotated), jnp.asarray(shift, jnp.float32)), np.float32)
