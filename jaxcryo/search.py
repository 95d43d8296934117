"""Pose search against the current map: a global search over shared rotations, then local refinement
of each image's best few (cryoDRGN's hierarchical pose search, in the matrix-product form of
``losses.search_losses``).

Global: G rotations (Haar-random, fresh for every call, shared by the batch) are scored for every
image by two matrix products; each image keeps its ``top_k`` best. Keeping several is what lets a
pseudo-symmetric particle's two mates both be refined before one is chosen: a coarse candidate near
the wrong mate can score better than one a little further from the true pose.
Local: each kept pose is perturbed ``n_local`` times by rotations of about ``sigma_deg`` (per image,
not shared), the best of the perturbed and unperturbed poses is kept, and the scale halves each
round, so ``rounds`` rounds reach about sigma / 2^rounds.

Shifts, when given, are the images' own: the global search tries each rotation at the image's shift
plus integer ``offsets`` (shifted copies share the slices); local rounds keep each candidate's shift.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp

from jaxcryo import fourier, geometry, losses, slicing


@dataclasses.dataclass(frozen=True)
class SearchSettings:
    """How poses are searched (``model.search_*`` in the configs); n_global = 0 means no search."""

    n_global: int = 0
    top_k: int = 1
    n_local: int = 0
    sigma_deg: float = 10.0
    rounds: int = 0
    shift_radius_px: int = 0  # with shifts: integer offsets tried around each image's shift
    global_radius: float = 0.0  # > 0: the global stage (and all local rounds but the last) up to this fraction of Nyquist

    @classmethod
    def from_config(cls, model_config, estimate_shifts: bool) -> "SearchSettings":
        mc = model_config
        return cls(n_global=int(mc.search_candidates), top_k=int(mc.get("search_top_k", 1)),
                   n_local=int(mc.get("search_local", 0)), sigma_deg=float(mc.get("search_local_sigma_deg", 10.0)),
                   rounds=int(mc.get("search_local_rounds", 0)),
                   shift_radius_px=int(mc.search_shift_radius_px) if estimate_shifts else 0,
                   global_radius=float(mc.get("search_global_radius", 0.0)))


def shift_offsets(radius_px: int) -> jnp.ndarray:
    """(S, 2) integer offsets (x, y) in [-radius, radius]^2: the shifts tried around each image's own."""
    r = jnp.arange(-radius_px, radius_px + 1, dtype=jnp.float32)
    return jnp.stack(jnp.meshgrid(r, r, indexing="xy"), -1).reshape(-1, 2)


def global_search(vol_h, grid, ctf, target, mask, shift_px=None, offsets=None, top_k: int = 1):
    """Best ``top_k`` of G shared rotations per image.

    Args: vol_h (D, D, D) Hartley volume; grid (G, 3, 3); ctf, target (B, L, L); mask (L, L);
      shift_px (B, 2) or None; offsets (S, 2) integer shifts tried around shift_px, or None.
    Returns: rotations (B, k, 3, 3), losses (B, k), shifts (B, k, 2) or None (ascending loss).
    """
    if shift_px is None:
        grid_losses = losses.search_losses(vol_h, grid, ctf, target, mask)  # (B, G)
        neg, flat = jax.lax.top_k(-grid_losses, top_k)
        return grid[flat], -neg, None
    if offsets is None:
        offsets = jnp.zeros((1, 2), target.dtype)
    tried = shift_px[:, None, :] + offsets[None]  # (B, S, 2)
    copies = losses.shift_hartley(target[:, None], -tried)  # the target moved back by each tried shift
    grid_losses = losses.search_losses(vol_h, grid, ctf, copies, mask).reshape(target.shape[0], -1)  # (B, S*G)
    neg, flat = jax.lax.top_k(-grid_losses, top_k)
    shifts = jnp.take_along_axis(tried, (flat // grid.shape[0])[..., None], axis=1)
    return grid[flat % grid.shape[0]], -neg, shifts


def global_crop(vol_h, ctf, target, radius_fraction: float, mask=None):
    """The central part of the centred Hartley volume (D, D, D), CTFs and images (B, L, L) that holds the
    frequencies up to ``radius_fraction`` of Nyquist, and the loss disc on it: slices of the cropped
    volume are the cropped slices (the same coefficients, fewer of them). A margin of one frequency
    keeps trilinear interpolation at the disc's edge inside the crop. ``mask`` (L, L), the caller's
    loss mask, is intersected with the disc: the coarse ranking never uses a frequency the loss itself
    leaves out (a marched loss disc smaller than the radius, a band-stop)."""
    size, vol_size = target.shape[-1], vol_h.shape[-1]
    crop = min(size, 2 * math.ceil(radius_fraction * size / 2) + 2)
    disc = slicing.frequency_mask(size, radius_fraction)
    if mask is not None:
        disc = disc & mask
    if crop >= size or vol_size % size:
        return vol_h, ctf, target, disc
    vol_crop = crop * (vol_size // size)
    return (fourier.crop_center(vol_h, vol_crop, ndim=3), fourier.crop_center(ctf, crop),
            fourier.crop_center(target, crop), fourier.crop_center(disc, crop))


# jitted here, not only inside the steps that call them: called on their own (cross-validation, tests),
# each of their ops would compile on its own
@functools.partial(jax.jit, static_argnames=("n_local", "rounds", "loss_kind"))
def local_refine(vol_h, rotations, ctf, target, mask, key, n_local: int, sigma_deg: float, rounds: int,
                 shifts_px=None, loss_kind: str = "gaussian"):
    """Refine (B, k, 3, 3) candidate poses locally and return each image's best: rotation (B, 3, 3),
    loss (B,), shift (B, 2) or None. The unperturbed pose stays a candidate, so a round never loses."""
    b, k = rotations.shape[:2]
    sigma = jnp.deg2rad(sigma_deg).astype(rotations.dtype)

    def score(rots, shifts):
        return losses.loss_at(vol_h, rots, ctf, target, mask, loss_kind, shifts)

    best_loss = score(rotations, shifts_px)  # (B, k)
    for r in range(rounds):
        key, sub = jax.random.split(key)
        omega = jax.random.normal(sub, (b, k, n_local, 3), rotations.dtype) * sigma / (2.0**r) / jnp.sqrt(3.0)
        cand = geometry.so3_exp(omega) @ rotations[:, :, None]  # (B, k, n, 3, 3)
        cand_shift = None if shifts_px is None else jnp.broadcast_to(shifts_px[:, :, None], (b, k, n_local, 2))
        cand_loss = score(cand, cand_shift)  # (B, k, n)
        pick = jnp.argmin(cand_loss, axis=-1)  # (B, k)
        picked_loss = jnp.take_along_axis(cand_loss, pick[..., None], axis=-1)[..., 0]
        picked = jnp.take_along_axis(cand, pick[..., None, None, None], axis=2)[:, :, 0]
        better = picked_loss < best_loss
        rotations = jnp.where(better[..., None, None], picked, rotations)
        best_loss = jnp.where(better, picked_loss, best_loss)
    winner = jnp.argmin(best_loss, axis=1)
    take = lambda x: jnp.take_along_axis(x, winner.reshape((b, 1) + (1,) * (x.ndim - 2)), axis=1)[:, 0]  # noqa: E731
    return take(rotations), jnp.min(best_loss, axis=1), None if shifts_px is None else take(shifts_px)


@functools.partial(jax.jit, static_argnames=("settings", "loss_kind"))
def search_poses(vol_h, ctf, target, mask, key, settings: SearchSettings, shift_px=None, loss_kind: str = "gaussian"):
    """The hierarchical search: global over ``settings.n_global`` fresh random rotations, keep
    ``top_k`` per image, refine each locally (when ``n_local`` and ``rounds`` are > 0). Returns each
    image's best rotation (B, 3, 3), its loss (B,) and shift (B, 2) (None without ``shift_px``).

    ``settings.global_radius`` (fraction of Nyquist), when > 0, runs the global stage on the
    frequencies up to it only, on centrally cropped arrays (``global_crop``): cryoDRGN's frequency
    marching inside its search. Ranking random rotations at half Nyquist picks the same candidates
    as the whole disc (measured on a particle's hard images, 30 % vs 30 % found near the truth) at a
    quarter of the cost, so four times as many rotations cover SO(3) for the same time, and coverage
    is what limits a search of random rotations (2,048 lie ~20 deg apart). The losses returned are
    always on ``mask``, comparable with any other pose's."""
    global_radius = settings.global_radius or None
    grid = geometry.random_rotations(key, (settings.n_global,), target.dtype)
    k_local = jax.random.fold_in(key, 1)
    offsets = shift_offsets(settings.shift_radius_px) if (shift_px is not None and settings.shift_radius_px) else None
    coarse = (vol_h, ctf, target, mask)
    if global_radius is not None:
        coarse = global_crop(vol_h, ctf, target, global_radius, mask)
    c_vol, c_ctf, c_target, c_mask = coarse
    # shifts are in pixels of the array's box: the crop's pixels are larger by size / crop
    to_crop = c_target.shape[-1] / target.shape[-1]
    scaled = lambda x, f: None if x is None else x * f  # noqa: E731
    rots, loss, shifts = global_search(c_vol, grid, c_ctf, c_target, c_mask, scaled(shift_px, to_crop),
                                       scaled(offsets, to_crop), settings.top_k)
    shifts = scaled(shifts, 1.0 / to_crop)
    if not (settings.n_local and settings.rounds):
        if global_radius is None:
            return rots[:, 0], loss[:, 0], None if shifts is None else shifts[:, 0]
        return local_refine(vol_h, rots, ctf, target, mask, k_local, 0, 0.0, 0, shifts, loss_kind)  # rescored
    if global_radius is None or settings.rounds == 1:
        return local_refine(vol_h, rots, ctf, target, mask, k_local, settings.n_local, settings.sigma_deg,
                            settings.rounds, shifts, loss_kind)
    # the marching goes on through the local rounds: all but the last on the crop (where the basins are
    # wide and slices 4x cheaper), the last, at the finest scale, on the whole disc
    rot, _, shift = local_refine(c_vol, rots, c_ctf, c_target, c_mask, k_local, settings.n_local, settings.sigma_deg,
                                 settings.rounds - 1, scaled(shifts, to_crop), loss_kind)
    shift = scaled(shift, 1.0 / to_crop)
    return local_refine(vol_h, rot[:, None], ctf, target, mask, jax.random.fold_in(k_local, 2), settings.n_local,
                        settings.sigma_deg / 2.0 ** (settings.rounds - 1), 1, None if shift is None else shift[:, None],
                        loss_kind)
