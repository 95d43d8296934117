"""Jitted, data-parallel training steps of both stages (one XLA program per step).

Data parallelism: ``jax.shard_map`` over a 1-D mesh named ``data`` of every process's devices
(``jaxcryo.distributed``: one process or many). The batch is
split along its first axis; the volume, encoder parameters and optimiser states are replicated;
gradients, losses and BatchNorm statistics are averaged with ``pmean`` so every device applies the
same update (1 device or 8 give the same numbers up to float summation order). The per-image pose
tables (auto-decoding) are sharded by particle: device d holds block d of the rows
(``loader.block_bounds``; the tables are padded to a whole number of blocks) and every auto-decoding
batch gives device d only rows of its own block (``loader.epoch_order``), so rows are gathered and
scattered where they live and a device holds 92 B per particle / the device count.

Batch layout (a dict of arrays, leading axis B): ``images`` (B, L, L) float32, ``index`` (B,) int32
(rows of the particle table), the CTF fields of ``jaxcryo.io.table.CTF_FIELDS`` (B,) float32 and, for
whitened images, ``noise_radial`` (B, R) (``jaxcryo.noise``).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import PartitionSpec as P

from jaxcryo import ctf as ctf_lib
from jaxcryo import distributed, geometry, losses, models, noise, pseudosym, search, slicing
from jaxcryo.io.table import CTF_FIELDS

AXIS = "data"


def make_mesh(devices=None) -> jax.sharding.Mesh:
    """A 1-D ``data`` mesh over ``devices`` (default: every process's devices, process by process)."""
    devices = list(devices) if devices is not None else distributed.ordered_devices()
    mesh = jax.make_mesh((len(devices),), (AXIS,), devices=devices)
    if list(mesh.devices.flat) != devices:  # each process's rows of a batch must stay contiguous
        raise ValueError("the mesh reordered the devices")
    return mesh


def batch_targets(batch: dict, pixel_size_angstrom: float, radius_fraction):
    """Hartley images, CTFs and the loss mask of a (per-device) batch."""
    images = batch["images"]
    size = images.shape[-1]
    if "ctf" in batch:  # made apart (``dataset.ctf_grids``), so no consumer recomputes it per pose
        ctf = batch["ctf"].astype(images.dtype)
    else:
        ctf = ctf_lib.ctf_grid(size, pixel_size_angstrom, **{k: batch[k] for k in CTF_FIELDS}).astype(images.dtype)
    if "noise_radial" in batch:  # whitened images: the model's CTF is whitened alike (jaxcryo.noise)
        ctf = ctf * noise.expand_radial(batch["noise_radial"], size)
    target = losses.images_to_hartley(images)
    if "pre_shift_angstrom" in batch:  # a known offset (the star's origin): moved back to the centre
        target = losses.shift_hartley(target, -batch["pre_shift_angstrom"] / pixel_size_angstrom)
    return target, ctf, slicing.frequency_mask(size, radius_fraction)


def pose_adam(grad, m, v, count, lr, b1=0.9, b2=0.999, eps=1e-8):
    """Adam for per-image parameter rows (each row keeps its own step count)."""
    count = count + 1
    m = b1 * m + (1 - b1) * grad
    v = b2 * v + (1 - b2) * grad**2
    c = count.astype(grad.dtype)[:, None]
    update = -lr * (m / (1 - b1**c)) / (jnp.sqrt(v / (1 - b2**c)) + eps)
    return update, m, v, count


def _head_poses(encoder_out, max_shift_fraction: float, size: int):
    """Encoder outputs -> rotations (B, M, 3, 3) and shifts in pixels (B, M, 2) or None."""
    rots, shifts = models.decode_poses(encoder_out, max_shift_fraction)
    return rots, None if shifts is None else shifts * size


def _take(x, index):
    """x (B, M, ...) at per-image index (B,) -> (B, ...)."""
    return jnp.take_along_axis(x, index.reshape(index.shape + (1,) * (x.ndim - 1)), axis=1)[:, 0]


def make_amortized_step(encoder: models.PoseEncoder, enc_opt: optax.GradientTransformation,
                        vol_opt: optax.GradientTransformation, pixel_size_angstrom: float, loss_kind: str, mesh,
                        settings: search.SearchSettings = search.SearchSettings(), distill_weight: float = 0.0,
                        seed: int = 0, max_shift_fraction: float = 0.0, wta_relax: float = 0.0):
    """Encoder + volume step. state keys: enc_params, batch_stats, enc_opt, vol_params, vol_opt, step.

    The paper's step (``settings.n_global = 0``): M encoder heads compete (winner-takes-all; relaxed by
    ``wta_relax``, see ``losses.winner_takes_all``).
    Search-augmented step (beyond the paper, for small compute budgets): a pose search
    (``jaxcryo.search``: G random rotations fresh each step, optionally refined locally) competes
    with the heads; when a searched pose wins, the
    volume learns from it and the encoder head closest to it is pulled towards it with weight
    ``distill_weight`` (squared Frobenius distance), so the encoder is taught by the search.
    With shift heads (``encoder.estimate_shifts``): the paper's step trains each winning head's shift by
    the loss gradient; the search-augmented step scores the searched rotations at the best head's shift,
    then takes the best shift at the winning rotation (``losses.best_shifts``, one FFT per image) for
    the volume's update and distils the head's shift towards it (squared distance in pixels).
    ``settings.shift_radius_px`` > 0 also tries every searched rotation at integer offsets up to that
    radius around the head's shift: the rotation search then tolerates a head's shift that is a pixel
    or two off, as it is before the map has formed.
    """
    search_candidates = settings.n_global

    def core(enc_params, batch_stats, vol_params, batch, radius, key):
        target, ctf, mask = batch_targets(batch, pixel_size_angstrom, radius)
        size = target.shape[-1]

        def loss_fn(enc_params, vol_params):
            out, updated = encoder.apply({"params": enc_params, "batch_stats": batch_stats}, batch["images"],
                                         train=True, mutable=["batch_stats"])
            rots, shifts = _head_poses(out, max_shift_fraction, size)
            vol_h = models.volume_hartley(vol_params)
            if not search_candidates:
                loss, winner, _ = losses.winner_takes_all(vol_h, rots, ctf, target, mask, loss_kind, shifts, wta_relax)
                return jnp.mean(loss), (updated["batch_stats"], winner)
            sg = jax.lax.stop_gradient
            head_losses = sg(losses.loss_at(sg(vol_h), sg(rots), ctf, target, mask, loss_kind, None if shifts is None else sg(shifts)))
            n_heads = rots.shape[1]
            head_winner = jnp.argmin(head_losses, axis=1)
            shift = None if shifts is None else _take(shifts, head_winner)
            grid_rot, grid_loss, _ = search.search_poses(sg(vol_h), ctf, target, mask, key, settings,
                                                         None if shift is None else sg(shift), loss_kind)
            from_head = jnp.min(head_losses, axis=1) <= grid_loss
            winner = jnp.where(from_head, head_winner, n_heads)  # index M: a searched pose won
            best = jnp.where(from_head[:, None, None], _take(rots, head_winner), grid_rot)
            gap = jnp.sum((rots - sg(best)[:, None]) ** 2, axis=(-2, -1))  # (B, M)
            distill = jnp.where(from_head, 0.0, jnp.min(gap, axis=1))
            if shift is not None:  # the best shift at the winning rotation; the winning head learns it
                max_px = max_shift_fraction * size
                shift_target = losses.best_shifts(sg(losses.predict(sg(vol_h), sg(best), ctf)), target, mask, max_px)
                distill = distill + jnp.sum((shift - shift_target) ** 2, axis=-1)
                shift = shift_target
            loss = losses.loss_at(vol_h, best, ctf, target, mask, loss_kind, shift)
            return jnp.mean(loss + distill_weight * distill), (updated["batch_stats"], winner)

        (loss, (stats, winner)), (g_enc, g_vol) = jax.value_and_grad(loss_fn, argnums=(0, 1), has_aux=True)(
            enc_params, vol_params)
        g_enc, g_vol, loss = jax.lax.pmean((g_enc, g_vol, loss), AXIS)
        return g_enc, g_vol, loss, stats, winner

    sharded = jax.shard_map(core, mesh=mesh, in_specs=(P(), P(), P(), P(AXIS), P(), P()),
                            out_specs=(P(), P(), P(), P(), P(AXIS)), check_vma=False)

    @functools.partial(jax.jit, donate_argnums=(0,))
    def step(state, batch, radius):
        key = jax.random.fold_in(jax.random.key(seed), state["step"])
        g_enc, g_vol, loss, stats, winner = sharded(state["enc_params"], state["batch_stats"], state["vol_params"],
                                                    batch, radius, key)
        enc_updates, enc_opt_state = enc_opt.update(g_enc, state["enc_opt"], state["enc_params"])
        vol_updates, vol_opt_state = vol_opt.update(g_vol, state["vol_opt"], state["vol_params"])
        new_state = dict(state, enc_params=optax.apply_updates(state["enc_params"], enc_updates), batch_stats=stats,
                         enc_opt=enc_opt_state, vol_params=optax.apply_updates(state["vol_params"], vol_updates),
                         vol_opt=vol_opt_state, step=state["step"] + 1)
        return new_state, {"loss": loss, "winner": winner}

    return step


def make_encoder_inference(encoder: models.PoseEncoder, pixel_size_angstrom: float, loss_kind: str, mesh,
                           settings: search.SearchSettings = search.SearchSettings(), max_shift_fraction: float = 0.0):
    """(enc_params, batch_stats, vol_params, batch, radius, key) -> best rotations (B, 3, 3), their
    shifts (B, 2) in pixels of the batch's images (0 without shift heads), winners (B,), every
    head's rotation (B, M, 3, 3), and the loss at the best pose (B,).

    The winner is the best encoder head, or (with a search, ``settings.n_global`` > 0) the best of the
    heads and the poses ``jaxcryo.search`` finds from ``key``; winner index M means "a searched pose"
    (scored at the best head's shift). With shift heads the shift returned is the best at the winning
    rotation (``losses.best_shifts``).
    """
    search_candidates = settings.n_global

    def core(enc_params, batch_stats, vol_params, batch, radius, key):
        target, ctf, mask = batch_targets(batch, pixel_size_angstrom, radius)
        out = encoder.apply({"params": enc_params, "batch_stats": batch_stats}, batch["images"], train=False)
        rots, shifts = _head_poses(out, max_shift_fraction, target.shape[-1])
        vol_h = models.volume_hartley(vol_params)
        _, winner, head_losses = losses.winner_takes_all(vol_h, rots, ctf, target, mask, loss_kind, shifts)
        best = _take(rots, winner)
        shift = jnp.zeros(best.shape[:1] + (2,), best.dtype) if shifts is None else _take(shifts, winner)
        if search_candidates:
            grid_rot, grid_loss, _ = search.search_poses(vol_h, ctf, target, mask, key, settings,
                                                         None if shifts is None else shift, loss_kind)
            use_grid = grid_loss < jnp.min(head_losses, axis=1)
            best = jnp.where(use_grid[:, None, None], grid_rot, best)
            winner = jnp.where(use_grid, rots.shape[1], winner)
        if shifts is not None:
            shift = losses.best_shifts(losses.predict(vol_h, best, ctf), target, mask, max_shift_fraction * target.shape[-1])
        final_loss = losses.loss_at(vol_h, best, ctf, target, mask, loss_kind, None if shifts is None else shift)
        return best, shift, winner, rots, final_loss

    return jax.jit(jax.shard_map(core, mesh=mesh, in_specs=(P(), P(), P(), P(AXIS), P(), P()),
                                 out_specs=(P(AXIS), P(AXIS), P(AXIS), P(AXIS), P(AXIS)), check_vma=False))


def make_pose_search(pixel_size_angstrom: float, loss_kind: str, mesh, settings: search.SearchSettings):
    """(vol_params, batch, radius, key, rotations (B, 3, 3), shifts (B, 2)) -> searched rotation (B, 3, 3),
    its shift (B, 2), its loss (B,) and the loss at the given pose (B,): the hierarchical search of
    ``jaxcryo.search`` against the current map, for images that already have a pose (auto-decoding),
    so the caller can keep whichever is more likely."""

    def core(vol_params, batch, radius, key, rot, shift):
        target, ctf, mask = batch_targets(batch, pixel_size_angstrom, radius)
        vol_h = models.volume_hartley(vol_params)
        found, found_loss, found_shift = search.search_poses(vol_h, ctf, target, mask, key, settings, shift, loss_kind)
        current = losses.loss_at(vol_h, rot, ctf, target, mask, loss_kind, shift)
        return found, found_shift, found_loss, current

    return jax.jit(jax.shard_map(core, mesh=mesh, in_specs=(P(), P(AXIS), P(), P(), P(AXIS), P(AXIS)),
                                 out_specs=(P(AXIS),) * 4, check_vma=False))


def make_pose_losses(pixel_size_angstrom: float, loss_kind: str, mesh):
    """(vol_params, batch, radius, rotations (B, K, 3, 3), shifts (B, K, 2)) -> each image's loss at each
    of its K poses (B, K): the re-search's judge when its candidates were found with another map."""

    def core(vol_params, batch, radius, rots, shifts):
        target, ctf, mask = batch_targets(batch, pixel_size_angstrom, radius)
        return (losses.loss_at(models.volume_hartley(vol_params), rots, ctf, target, mask, loss_kind, shifts),)

    return jax.jit(jax.shard_map(core, mesh=mesh, in_specs=(P(), P(AXIS), P(), P(AXIS), P(AXIS)),
                                 out_specs=(P(AXIS),), check_vma=False))


def make_mate_test(pixel_size_angstrom: float, loss_kind: str, mesh, n_local: int = 4, sigma_deg: float = 2.0,
                   rounds: int = 2):
    """(vol_params, batch, radius, key, rotations (B, 3, 3), shifts (B, 2), operators (K, 3, 3), centres (K, 3))
    -> the best pseudo-symmetry mate of each pose (``jaxcryo.pseudosym.mate_poses``), refined locally
    (``rounds`` of ``n_local`` perturbations from ``sigma_deg``: the detected axis is good to a degree or
    two), its shift (B, 2), its loss (B,) and the loss at the given pose (B,): ``make_pose_search``'s
    outputs, so ``jaxcryo.research`` treats both alike. Only the best of the K mates is refined (the
    mates of a pose are exact images of it under the symmetry, so their order does not change): K + 8
    slices per image."""

    def core(vol_params, batch, radius, key, rot, shift, operators, centres):
        target, ctf, mask = batch_targets(batch, pixel_size_angstrom, radius)
        vol_h = models.volume_hartley(vol_params)
        mates, mate_shifts = pseudosym.mate_poses(rot, shift, operators, centres)
        mate_loss = losses.loss_at(vol_h, mates, ctf, target, mask, loss_kind, mate_shifts)
        pick = jnp.argmin(mate_loss, axis=1)
        best, best_shift = _take(mates, pick)[:, None], _take(mate_shifts, pick)[:, None]
        found, found_loss, found_shift = search.local_refine(vol_h, best, ctf, target, mask, key, n_local, sigma_deg,
                                                             rounds, best_shift, loss_kind)
        current = losses.loss_at(vol_h, rot, ctf, target, mask, loss_kind, shift)
        return found, found_shift, found_loss, current

    return jax.jit(jax.shard_map(core, mesh=mesh, in_specs=(P(), P(AXIS), P(), P(), P(AXIS), P(AXIS), P(), P()),
                                 out_specs=(P(AXIS),) * 4, check_vma=False))


# name: (row shape, dtype, initial value). Rotations and shifts are given; Adam's moments and step
# counts start at 0 and contrasts at 1.
POSE_TABLE_LAYOUT = {"rotations": ((3, 3), np.float32, 0), "shifts": ((2,), np.float32, 0),
                     "pose_m": ((3,), np.float32, 0), "pose_v": ((3,), np.float32, 0),
                     "shift_m": ((2,), np.float32, 0), "shift_v": ((2,), np.float32, 0),
                     "pose_count": ((), np.int32, 0), "contrast": ((), np.float32, 1)}
POSE_TABLES = tuple(POSE_TABLE_LAYOUT)


def init_pose_tables(rotations, shifts_px) -> dict:
    """Per-image auto-decoding state (host arrays) from (N, 3, 3) rotations and (N, 2) shifts in pixels."""
    n = rotations.shape[0]
    given = {"rotations": np.asarray(rotations, np.float32), "shifts": np.asarray(shifts_px, np.float32)}
    return {k: given[k] if k in given else np.full((n,) + shape, fill, dtype)
            for k, (shape, dtype, fill) in POSE_TABLE_LAYOUT.items()}


def inverted_volume(train_config, known_poses: bool) -> bool:
    """Whether auto-decoding's volume is the direct inversion at the current poses after each epoch
    (``train.autodecoding_volume='inversion'``; with known poses the volume is fitted): its steps then
    take no volume iterations."""
    return train_config.get("autodecoding_volume", "gradient") == "inversion" and not known_poses


def make_autodecoding_step(vol_opt: optax.GradientTransformation, pixel_size_angstrom: float, loss_kind: str,
                           pose_iters: int, vol_iters: int, pose_lr: float, mesh, shift_lr: float = 0.0,
                           contrast_prior_std: float = 0.0):
    """Per-image pose refinement then volume steps.

    state keys: vol_params, vol_opt and the per-image tables of ``init_pose_tables``: rotations
    (N, 3, 3), shifts (N, 2) pixels, Adam moments of omega (N, 3) and of the shift (N, 2), step counts,
    contrast scales (N,) that multiply each image's predicted slice.
    For each image, omega starts at 0, takes ``pose_iters`` Adam steps on the loss of Exp(omega) R
    (volume frozen), is folded in (R <- Exp(omega) R) and reset; with ``shift_lr`` > 0 each image's
    shift also takes the same Adam steps beside omega (learning rate in pixels), otherwise the shifts
    stay as given (0, or a star's origins). With ``contrast_prior_std`` > 0 each image's contrast is
    then set to its most likely value at the refined pose (``losses.contrast_scale``: particles differ
    in ice thickness and dose), otherwise it stays 1. Then ``vol_iters`` volume steps use the refined
    poses and contrasts.
    ``pose_iters = 0`` keeps poses fixed (the known-pose oracle). ``step(state, batch, radius, lr_scale)``
    multiplies the pose and shift learning rates by ``lr_scale`` (the cosine schedule to ``train.lr_pose_final_fraction``).

    The shift is applied even when it is 0 and fixed: XLA:CPU compiles the pose gradient of
    ``map_coordinates`` about 3.5x faster with the phase ramp on the slice than without it (measured
    with ``experiments.bench``: 140 -> 520 images/s at 64 px), and it costs nothing measurable. With
    refined shifts the ramp goes on the target instead (``losses.loss_at``, the same loss): 370 -> 455
    images/s there, while fixed shifts on the target fall to 185 (the bench at 64 px, 2 cores). An odd
    box turns this around: the ramp on the slice makes the pose gradient 4x slower than the ramp on the
    target (63 px, 64 images: 341 against 80 ms), so odd boxes move the target.
    """
    refine_shifts = shift_lr > 0
    fit_contrast = contrast_prior_std > 0

    def local_rows(tables, batch):
        """This device's batch rows within its block of the tables."""
        return batch["index"] - jax.lax.axis_index(AXIS) * tables[0].shape[0]

    def refine_poses(vol_params, tables, batch, radius, lr_scale):
        """Gather this device's rows from its block of the tables, refine them, scatter them back."""
        idx = local_rows(tables, batch)
        rot, shift, m, v, sm, sv, count, contrast = (t[idx] for t in tables)
        target, ctf, mask = batch_targets(batch, pixel_size_angstrom, radius)
        frozen = jax.lax.stop_gradient(models.volume_hartley(vol_params))
        scaled_ctf = ctf * contrast[:, None, None]

        def pose_loss(omega, shift):
            rots = geometry.so3_exp(omega) @ rot
            if refine_shifts or target.shape[-1] % 2:  # the faster form in each case (docstring)
                return jnp.sum(losses.loss_at(frozen, rots, scaled_ctf, target, mask, loss_kind, shift))
            return jnp.sum(losses.per_image_loss(losses.predict(frozen, rots, scaled_ctf, shift), target, mask, loss_kind))

        def pose_iter(carry, _):
            omega, shift, m, v, sm, sv, count = carry
            if refine_shifts:
                g_omega, g_shift = jax.grad(pose_loss, argnums=(0, 1))(omega, shift)
                shift_update, sm, sv, _ = pose_adam(g_shift, sm, sv, count, shift_lr * lr_scale)
                shift = shift + shift_update
            else:
                g_omega = jax.grad(pose_loss)(omega, shift)
            update, m, v, new_count = pose_adam(g_omega, m, v, count, pose_lr * lr_scale)
            return (omega + update, shift, m, v, sm, sv, new_count), None

        omega0 = jnp.zeros(rot.shape[:-2] + (3,), rot.dtype)
        (omega, shift, m, v, sm, sv, count), _ = jax.lax.scan(
            pose_iter, (omega0, shift, m, v, sm, sv, count), None, length=pose_iters)
        rot = geometry.so3_exp(omega) @ rot
        if fit_contrast:
            contrast = losses.contrast_scale(losses.predict(frozen, rot, ctf, shift), target, mask, contrast_prior_std)
        new_tables = tuple(t.at[idx].set(r) for t, r in zip(tables, (rot, shift, m, v, sm, sv, count, contrast)))
        return new_tables, rot, shift, contrast

    def fixed_poses(tables, batch):
        idx = local_rows(tables, batch)
        return tables[0][idx], tables[1][idx], tables[-1][idx]

    def volume_grad(vol_params, rot, shift, contrast, batch, radius):
        target, ctf, mask = batch_targets(batch, pixel_size_angstrom, radius)
        ctf = ctf * contrast[:, None, None]

        def vol_loss(vol_params):
            return jnp.mean(losses.loss_at(models.volume_hartley(vol_params), rot, ctf, target, mask, loss_kind, shift))

        loss, g_vol = jax.value_and_grad(vol_loss)(vol_params)
        return jax.lax.pmean((g_vol, loss), AXIS)

    refine = jax.shard_map(refine_poses, mesh=mesh, in_specs=(P(), P(AXIS), P(AXIS), P(), P()),
                           out_specs=(P(AXIS),) * 4, check_vma=False)
    fixed = jax.shard_map(fixed_poses, mesh=mesh, in_specs=(P(AXIS), P(AXIS)), out_specs=(P(AXIS),) * 3,
                          check_vma=False)
    vol_grad = jax.shard_map(volume_grad, mesh=mesh, in_specs=(P(), P(AXIS), P(AXIS), P(AXIS), P(AXIS), P()),
                             out_specs=(P(), P()), check_vma=False)

    @functools.partial(jax.jit, donate_argnums=(0,))
    def step(state, batch, radius, lr_scale=1.0):
        rows = jax.NamedSharding(mesh, P(AXIS))  # a no-op for tables placed by particle block, as a run places them
        tables = tuple(jax.reshard(state[k], rows) for k in POSE_TABLES)
        if pose_iters > 0:
            tables, rot, shift, contrast = refine(state["vol_params"], tables, batch, radius,
                                                  jnp.asarray(lr_scale, jnp.float32))
        else:
            rot, shift, contrast = fixed(tables, batch)
        vol_params, vol_opt_state = state["vol_params"], state["vol_opt"]
        loss = None
        for _ in range(vol_iters):
            g_vol, loss = vol_grad(vol_params, rot, shift, contrast, batch, radius)
            updates, vol_opt_state = vol_opt.update(g_vol, vol_opt_state, vol_params)
            vol_params = optax.apply_updates(vol_params, updates)
        if loss is None:  # no volume step: report the loss at the refined poses
            _, loss = vol_grad(vol_params, rot, shift, contrast, batch, radius)
        new_state = dict(state, vol_params=vol_params, vol_opt=vol_opt_state)
        new_state.update(zip(POSE_TABLES, tables))
        return new_state, {"loss": loss}

    return step
