"""Jitted, data-parallel training steps of both stages (one XLA program per step).

Data parallelism: ``jax.shard_map`` over a 1-D mesh named ``data`` of all local devices. The batch is
split along its first axis; the volume, encoder parameters and optimiser states are replicated;
gradients, losses and BatchNorm statistics are averaged with ``pmean`` so every device applies the
same update (1 device or 8 give the same numbers up to float summation order). The per-image pose
table (auto-decoding) is replicated and its rows are gathered and scattered by batch index inside
the same jitted program.

Batch layout (a dict of arrays, leading axis B): ``images`` (B, L, L) float32, ``index`` (B,) int32
(rows of the particle table), and the CTF fields of ``jaxcryo.io.table.CTF_FIELDS`` (B,) float32.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import optax
from jax.sharding import PartitionSpec as P

from jaxcryo import ctf as ctf_lib
from jaxcryo import geometry, losses, models, slicing
from jaxcryo.io.table import CTF_FIELDS

AXIS = "data"


def make_mesh() -> jax.sharding.Mesh:
    return jax.make_mesh((jax.local_device_count(),), (AXIS,))


def _targets(batch: dict, pixel_size_angstrom: float, radius_fraction):
    """Hartley images, CTFs and the loss mask of a (per-device) batch."""
    images = batch["images"]
    size = images.shape[-1]
    ctf = ctf_lib.ctf_grid(size, pixel_size_angstrom, **{k: batch[k] for k in CTF_FIELDS}).astype(images.dtype)
    return losses.images_to_hartley(images), ctf, slicing.frequency_mask(size, radius_fraction)


def pose_adam(grad, m, v, count, lr, b1=0.9, b2=0.999, eps=1e-8):
    """Adam for per-image parameter rows (each row keeps its own step count)."""
    count = count + 1
    m = b1 * m + (1 - b1) * grad
    v = b2 * v + (1 - b2) * grad**2
    c = count.astype(grad.dtype)[:, None]
    update = -lr * (m / (1 - b1**c)) / (jnp.sqrt(v / (1 - b2**c)) + eps)
    return update, m, v, count


def make_amortized_step(encoder: models.PoseEncoder, enc_opt: optax.GradientTransformation,
                        vol_opt: optax.GradientTransformation, pixel_size_angstrom: float, loss_kind: str, mesh,
                        search_candidates: int = 0, distill_weight: float = 0.0, seed: int = 0):
    """Encoder + volume step. state keys: enc_params, batch_stats, enc_opt, vol_params, vol_opt, step.

    The paper's step (``search_candidates = 0``): M encoder heads compete (winner-takes-all).
    Search-augmented step (beyond the paper, for small compute budgets): G random Haar rotations,
    fresh each step and shared by the batch, compete with the heads; when a searched pose wins, the
    volume learns from it and the encoder head closest to it is pulled towards it with weight
    ``distill_weight`` (squared Frobenius distance), so the encoder is taught by the search.
    """

    def core(enc_params, batch_stats, vol_params, batch, radius, key):
        target, ctf, mask = _targets(batch, pixel_size_angstrom, radius)
        if search_candidates:  # scored outside the differentiated function: it needs no gradient
            grid = geometry.random_rotations(key, (search_candidates,), target.dtype)
            grid_losses = losses.search_losses(models.volume_hartley(vol_params), grid, ctf, target, mask)
            grid_best = jnp.argmin(grid_losses, axis=1)
            grid_rot, grid_loss = grid[grid_best], jnp.min(grid_losses, axis=1)

        def loss_fn(enc_params, vol_params):
            six, updated = encoder.apply({"params": enc_params, "batch_stats": batch_stats}, batch["images"],
                                         train=True, mutable=["batch_stats"])
            rots = geometry.rotation_from_6d(six)
            vol_h = models.volume_hartley(vol_params)
            if not search_candidates:
                loss, winner, _ = losses.winner_takes_all(vol_h, rots, ctf, target, mask, loss_kind)
                return jnp.mean(loss), (updated["batch_stats"], winner)
            head_losses = jax.lax.stop_gradient(
                losses.per_image_loss(losses.predict(jax.lax.stop_gradient(vol_h), jax.lax.stop_gradient(rots), ctf),
                                      target, mask, loss_kind))
            n_heads = rots.shape[1]
            head_winner = jnp.argmin(head_losses, axis=1)
            from_head = jnp.min(head_losses, axis=1) <= grid_loss
            winner = jnp.where(from_head, head_winner, n_heads)  # index M: a searched pose won
            head_rot = jnp.take_along_axis(rots, head_winner[:, None, None, None], axis=1)[:, 0]
            best = jnp.where(from_head[:, None, None], head_rot, grid_rot)
            loss = losses.per_image_loss(losses.predict(vol_h, best, ctf), target, mask, loss_kind)
            gap = jnp.sum((rots - jax.lax.stop_gradient(best)[:, None]) ** 2, axis=(-2, -1))  # (B, M)
            distill = jnp.where(from_head, 0.0, jnp.min(gap, axis=1))
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
                           search_candidates: int = 0):
    """(enc_params, batch_stats, vol_params, batch, radius, key) -> best rotations (B, 3, 3), winners (B,),
    and every head's rotation (B, M, 3, 3).

    The winner is the best encoder head, or (with ``search_candidates``) the best of the heads and
    that many random rotations drawn from ``key``; winner index M means "a searched pose".
    """

    def core(enc_params, batch_stats, vol_params, batch, radius, key):
        target, ctf, mask = _targets(batch, pixel_size_angstrom, radius)
        six = encoder.apply({"params": enc_params, "batch_stats": batch_stats}, batch["images"], train=False)
        rots = geometry.rotation_from_6d(six)
        vol_h = models.volume_hartley(vol_params)
        _, winner, head_losses = losses.winner_takes_all(vol_h, rots, ctf, target, mask, loss_kind)
        best = jnp.take_along_axis(rots, winner[:, None, None, None], axis=1)[:, 0]
        if search_candidates:
            grid = geometry.random_rotations(key, (search_candidates,), rots.dtype)
            grid_losses = losses.search_losses(vol_h, grid, ctf, target, mask)
            use_grid = jnp.min(grid_losses, axis=1) < jnp.min(head_losses, axis=1)
            best = jnp.where(use_grid[:, None, None], grid[jnp.argmin(grid_losses, axis=1)], best)
            winner = jnp.where(use_grid, rots.shape[1], winner)
        return best, winner, rots

    return jax.jit(jax.shard_map(core, mesh=mesh, in_specs=(P(), P(), P(), P(AXIS), P(), P()),
                                 out_specs=(P(AXIS), P(AXIS), P(AXIS)), check_vma=False))


def make_autodecoding_step(vol_opt: optax.GradientTransformation, pixel_size_angstrom: float, loss_kind: str,
                           pose_iters: int, vol_iters: int, pose_lr: float, mesh):
    """Per-image pose refinement then volume steps.

    state keys: vol_params, vol_opt, rotations (N, 3, 3), pose_m, pose_v (N, 3), pose_count (N,).
    For each image, omega starts at 0, takes ``pose_iters`` Adam steps on the loss of Exp(omega) R
    (volume frozen), is folded in (R <- Exp(omega) R) and reset; then ``vol_iters`` volume steps
    use the refined poses. ``pose_iters = 0`` keeps poses fixed (the known-pose oracle).
    """

    def refine_poses(vol_params, tables, batch, radius):
        """Tables are replicated: gather this device's rows, refine them, all-gather the updated rows
        of every device and scatter them, so every replica of the table stays identical."""
        idx = batch["index"]
        rot, m, v, count = (t[idx] for t in tables)
        target, ctf, mask = _targets(batch, pixel_size_angstrom, radius)
        frozen = jax.lax.stop_gradient(models.volume_hartley(vol_params))

        def pose_loss(omega):
            pred = losses.predict(frozen, geometry.so3_exp(omega) @ rot, ctf)
            return jnp.sum(losses.per_image_loss(pred, target, mask, loss_kind))

        def pose_iter(carry, _):
            omega, m, v, count = carry
            update, m, v, count = pose_adam(jax.grad(pose_loss)(omega), m, v, count, pose_lr)
            return (omega + update, m, v, count), None

        omega0 = jnp.zeros(rot.shape[:-2] + (3,), rot.dtype)
        (omega, m, v, count), _ = jax.lax.scan(pose_iter, (omega0, m, v, count), None, length=pose_iters)
        rot = geometry.so3_exp(omega) @ rot
        all_idx = jax.lax.all_gather(idx, AXIS, tiled=True)
        new_tables = tuple(t.at[all_idx].set(jax.lax.all_gather(r, AXIS, tiled=True))
                           for t, r in zip(tables, (rot, m, v, count)))
        return new_tables, rot

    def volume_grad(vol_params, rot, batch, radius):
        target, ctf, mask = _targets(batch, pixel_size_angstrom, radius)

        def vol_loss(vol_params):
            pred = losses.predict(models.volume_hartley(vol_params), rot, ctf)
            return jnp.mean(losses.per_image_loss(pred, target, mask, loss_kind))

        loss, g_vol = jax.value_and_grad(vol_loss)(vol_params)
        return jax.lax.pmean((g_vol, loss), AXIS)

    refine = jax.shard_map(refine_poses, mesh=mesh, in_specs=(P(), P(), P(AXIS), P()),
                           out_specs=(P(), P(AXIS)), check_vma=False)
    vol_grad = jax.shard_map(volume_grad, mesh=mesh, in_specs=(P(), P(AXIS), P(AXIS), P()),
                             out_specs=(P(), P()), check_vma=False)
    keys = ("rotations", "pose_m", "pose_v", "pose_count")

    @functools.partial(jax.jit, donate_argnums=(0,))
    def step(state, batch, radius):
        tables = tuple(state[k] for k in keys)
        if pose_iters > 0:
            tables, rot = refine(state["vol_params"], tables, batch, radius)
        else:
            rot = state["rotations"].at[batch["index"]].get(out_sharding=jax.NamedSharding(mesh, P(AXIS)))
        vol_params, vol_opt_state = state["vol_params"], state["vol_opt"]
        loss = None
        for _ in range(vol_iters):
            g_vol, loss = vol_grad(vol_params, rot, batch, radius)
            updates, vol_opt_state = vol_opt.update(g_vol, vol_opt_state, vol_params)
            vol_params = optax.apply_updates(vol_params, updates)
        if loss is None:  # no volume step: report the loss at the refined poses
            _, loss = vol_grad(vol_params, rot, batch, radius)
        new_state = dict(state, vol_params=vol_params, vol_opt=vol_opt_state)
        new_state.update(zip(keys, tables))
        return new_state, {"loss": loss}

    return step
