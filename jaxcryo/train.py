"""``train_and_evaluate(config, workdir)``: both stages of semi-amortized reconstruction, resumable.

Stage "amortized": encoder + volume, winner-takes-all over M heads (``steps.make_amortized_step``).
Stage switch: every image's pose is initialised from its winning head (encoder in inference mode); the
state pytree swaps encoder parameters for a per-image pose table.
Stage "autodecoding": per-image pose refinement + volume steps (``steps.make_autodecoding_step``).
Known poses (``config.poses``): skip the encoder; the volume is fitted with the poses held fixed.

Shifts (``model.estimate_shifts``): the heads also predict in-plane shifts, the switch takes each
image's best shift at its winning rotation, and auto-decoding refines it per image. Shifts are kept
in pixels of the full box; poses.star gets RELION's origins, -shift * pixel size (jaxcryo.io.table).
Without estimation the particles are taken as centred (a known-pose star's origins are applied).
"""

from __future__ import annotations

import json
import logging
import os
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm import tqdm

from jaxcryo import configcheck, evaluate, geometry, inversion, models, runio, steps
from jaxcryo.dataset import AMORTIZED, device_batch, prepare_data, radial_log_amplitude
from jaxcryo.io import InputError, read_particles
from jaxcryo.io.loader import Batch, half_set_labels, iterate_batches, steps_per_epoch
from jaxcryo.io.mrc import write_mrc
from jaxcryo.research import research_poses
from jaxcryo.search import SearchSettings

AUTODECODING = "autodecoding"


def radius_at(config, stage: str, epoch_progress: float) -> float:
    """Loss-disc radius (fraction of Nyquist): ramps from radius_start to radius_end during the first
    radius_ramp_epochs of the amortized stage (frequency marching); radius_end afterwards."""
    lc = config.loss
    if stage != AMORTIZED or lc.radius_ramp_epochs <= 0:
        return float(lc.radius_end)
    t = min(epoch_progress / lc.radius_ramp_epochs, 1.0)
    return float(lc.radius_start + t * (lc.radius_end - lc.radius_start))


def pose_lr_scale(train_config, stage_progress: float) -> float:
    """Factor on the per-image pose and shift learning rates at a fraction of the auto-decoding stage:
    cosine from 1 down to ``train.lr_pose_final_fraction`` (1 = constant, the paper's). Adam moves a
    pose by about the learning rate per step whatever its gradient, so a constant rate leaves every
    pose jittering by that much around its optimum; decaying it lets poses settle."""
    final = float(train_config.get("lr_pose_final_fraction", 1.0))
    t = min(max(stage_progress, 0.0), 1.0)
    return final + (1.0 - final) * 0.5 * (1.0 + float(np.cos(np.pi * t)))


def auto_switch_due(epochs_done: int, pose_change_median_deg: float | None, threshold_deg: float,
                    min_epochs: int) -> bool:
    """The automatic stage switch: poses have stopped moving (median change between the last two
    epochs below threshold_deg) and at least min_epochs of auto-encoding are done."""
    return epochs_done >= min_epochs and pose_change_median_deg is not None and pose_change_median_deg < threshold_deg


class Run:
    """Holds the pieces of one reconstruction; ``run()`` executes or resumes it."""

    def __init__(self, config, workdir: pathlib.Path, devices=None):
        self.config, self.workdir = config, workdir
        self.data = prepare_data(config, workdir)
        tc = config.train
        self.mesh = steps.make_mesh(devices)
        n_dev = self.mesh.devices.size
        if tc.batch_size % n_dev:
            raise InputError(f"config: train.batch_size {tc.batch_size} is not divisible by {n_dev} devices")
        self.batch_sharding = jax.NamedSharding(self.mesh, jax.sharding.PartitionSpec(steps.AXIS))
        self.replicated = jax.NamedSharding(self.mesh, jax.sharding.PartitionSpec())
        self.n = len(self.data.table)
        self.steps_per_epoch = steps_per_epoch(self.n, tc.batch_size)
        self.known_poses = bool(config.poses)
        mc = config.model
        self.estimate_shifts = bool(mc.estimate_shifts) and not self.known_poses
        if self.estimate_shifts and not 0 < mc.max_shift_fraction < 0.5:
            raise InputError(f"config: model.max_shift_fraction must be in (0, 0.5), got {mc.max_shift_fraction}")
        self.encoder = models.PoseEncoder(mc.n_heads, mc.width, steps.AXIS, self.estimate_shifts)
        self.infer_encoder = models.PoseEncoder(mc.n_heads, mc.width, None, self.estimate_shifts)
        self.known = self.known_poses_from_file() if self.known_poses else None
        px, px_coarse, lk = self.data.source.pixel_size_angstrom, self.data.coarse.pixel_size_angstrom, config.loss.kind
        self.enc_opt, self.vol_opt = optax.adam(tc.lr_encoder), optax.adam(tc.lr_volume)
        self.vol_opt_ad = optax.adam(tc.lr_volume_autodecoding)
        search = config.model.search_candidates
        if search and lk != "gaussian":
            raise InputError("config: model.search_candidates needs loss.kind='gaussian'")
        settings = SearchSettings.from_config(mc, self.estimate_shifts)
        self.amortized_step = steps.make_amortized_step(self.encoder, self.enc_opt, self.vol_opt, px_coarse, lk, self.mesh,
                                                        settings, mc.distill_weight, config.seed, mc.max_shift_fraction)
        self.encoder_inference = steps.make_encoder_inference(self.infer_encoder, px_coarse, lk, self.mesh, settings,
                                                              mc.max_shift_fraction)
        pose_iters = 0 if self.known_poses else tc.pose_iters
        self.uses_shifts = self.estimate_shifts or (self.known is not None and bool(np.any(self.known[1])))
        # Beyond the paper: the auto-decoding map from a direct inversion at the current poses (each epoch)
        self.inverted_volume = tc.get("autodecoding_volume", "gradient") == "inversion" and not self.known_poses
        vol_iters = 0 if self.inverted_volume else tc.vol_iters
        self.autodecoding_step = steps.make_autodecoding_step(self.vol_opt_ad, px, lk, pose_iters, vol_iters,
                                                              tc.lr_pose, self.mesh,
                                                              tc.lr_shift if self.estimate_shifts else 0.0)
        self.research = None
        if tc.get("research_every_epochs", 0) and tc.get("research_candidates", 0) and not self.known_poses:
            self.research = steps.make_pose_search(px, lk, self.mesh, SearchSettings(
                n_global=int(tc.research_candidates), top_k=4, n_local=8, sigma_deg=10.0, rounds=3))
        self.checkpoints = runio.Checkpoints(workdir / "checkpoints")
        # data spectra (host numpy, computed once): the volume's initial exponent at each box size
        self.radial = {src.image_size: radial_log_amplitude(src, seed=config.seed)
                       for src in (self.data.coarse, self.data.source)}
        self.start_time = time.perf_counter()

    # ---- state construction -------------------------------------------------------------------
    def init_amortized(self) -> dict:
        key = jax.random.key(self.config.seed)
        k_enc, k_vol = jax.random.split(key)
        source = self.data.source_for(AUTODECODING if self.known_poses else AMORTIZED)
        size = source.image_size
        variables = self.infer_encoder.init(k_enc, jnp.zeros((2, size, size), jnp.float32), train=False)
        vol = models.init_volume(size, self.radial[size], k_vol, self.config.model.volume_init_scale)
        state = {"enc_params": variables["params"], "batch_stats": variables["batch_stats"],
                 "enc_opt": self.enc_opt.init(variables["params"]), "vol_params": vol, "vol_opt": self.vol_opt.init(vol),
                 "step": jnp.zeros((), jnp.int32)}
        return jax.device_put(state, self.replicated)

    def upsample_volume(self, vol_params) -> dict:
        """Carry the amortized stage's volume to the full box: zero-pad its Hartley transform.

        Coefficients are in 1/L-scaled image units and Fourier cropping keeps pixel values, so the
        same frequency has L_full / L_coarse times the value in the larger box.
        """
        small, full = self.data.coarse.image_size, self.data.source.image_size
        if small == full:
            return vol_params
        from jaxcryo import fourier

        h = fourier.pad_center(models.volume_hartley(vol_params), full, ndim=3) * (full / small)
        exponent = models.init_volume(full, self.radial[full], jax.random.key(0))["exponent"]
        return jax.device_put(models.params_from_hartley(h, exponent), self.replicated)

    def inverted(self, state) -> dict:
        """``train.autodecoding_volume='inversion'``: the state's volume replaced by the Wiener-filtered
        direct inversion of the images at the state's poses (``jaxcryo.inversion``): the volume that
        best explains the images at those poses, where a few gradient steps per epoch only approach it."""
        shifts = np.asarray(state["shifts"]) if self.uses_shifts else np.zeros((self.n, 2), np.float32)
        rec = inversion.reconstruct(self.data.source, np.asarray(state["rotations"]), shifts,
                                    half_set_labels(self.data.table, self.config.seed), self.config.train.batch_size)
        h = models.hartley_from_map(rec["map"])
        vol = models.params_from_hartley(h, state["vol_params"]["exponent"])
        return dict(state, vol_params=jax.device_put(vol, self.replicated))

    def init_autodecoding(self, vol_params, rotations: np.ndarray, shifts_px: np.ndarray) -> dict:
        """Auto-decoding state: (N, 3, 3) rotations and (N, 2) shifts in pixels of the full box."""
        state = {"vol_params": vol_params, "vol_opt": self.vol_opt_ad.init(vol_params),
                 **steps.init_pose_tables(rotations, shifts_px)}
        return jax.device_put(state, self.replicated)

    def known_poses_from_file(self) -> tuple[np.ndarray, np.ndarray]:
        """Rotations (N, 3, 3) and shifts (N, 2, pixels) of config.poses; shifts from its origins."""
        poses = read_particles(self.config.poses)
        if len(poses) != self.n or poses.euler_deg is None:
            raise InputError(f"{self.config.poses}: need {self.n} rows with rlnAngleRot/Tilt/Psi, got {len(poses)}")
        rots = np.asarray(geometry.euler_to_matrix(jnp.asarray(poses.euler_deg, jnp.float32)))
        shifts = np.zeros((self.n, 2), np.float32)
        if poses.origin_angstrom is not None:  # the particle sits at centre - origin (jaxcryo.io.table)
            shifts = (-poses.origin_angstrom / self.data.source.pixel_size_angstrom).astype(np.float32)
        return rots, shifts

    def encoder_rotations(self, state, radius: float, heads_for: np.ndarray | None = None, passes: int = 1):
        """Winning-head rotation (N, 3, 3), its shift (N, 2) in pixels of the full box and winner
        index (N,) of every image, in table order; with ``heads_for`` (row indices) also every head's
        rotation for those rows, (len, M, 3, 3). With a search, ``passes`` > 1 draws that many sets of
        random candidates and keeps each image's best pose of all of them."""
        bs = self.config.train.batch_size
        rots, winners = np.zeros((self.n, 3, 3), np.float32), np.zeros(self.n, np.int64)
        shifts = np.zeros((self.n, 2), np.float32)
        to_full = self.data.source.image_size / self.data.coarse.image_size  # same shift in A, finer pixels
        heads = None
        if heads_for is not None:  # only the sampled rows are kept: memory stays bounded for any N
            position = np.full(self.n, -1)
            position[heads_for] = np.arange(len(heads_for))
            heads = np.zeros((len(heads_for), self.config.model.n_heads, 3, 3), np.float32)
        key = jax.random.key(self.config.seed + 7)
        passes = passes if self.config.model.search_candidates else 1  # without a search every pass is the same
        for start in range(0, self.n, bs):
            idx = np.arange(start, min(start + bs, self.n))
            padded = np.concatenate([idx, np.repeat(idx[-1:], bs - len(idx))])  # static batch shape
            batch = device_batch(Batch(padded, self.data.coarse.read(padded)), self.data.table, self.batch_sharding)
            best_loss = np.full(len(idx), np.inf)
            for p in range(passes):  # pass 0 uses the key of a single pass: passes=1 is unchanged
                pass_key = jax.random.fold_in(key, start if p == 0 else self.n * p + start)
                r, t, w, all_heads, loss = (np.asarray(x)[: len(idx)] for x in self.encoder_inference(
                    state["enc_params"], state["batch_stats"], state["vol_params"], batch, radius, pass_key))
                better = loss < best_loss
                best_loss = np.where(better, loss, best_loss)
                rots[idx[better]], winners[idx[better]], shifts[idx[better]] = r[better], w[better], t[better] * to_full
            if heads is not None:
                keep = position[idx] >= 0
                heads[position[idx][keep]] = all_heads[keep]
        return (rots, shifts, winners) if heads is None else (rots, shifts, winners, heads)

    # ---- the loop -----------------------------------------------------------------------------
    def run(self) -> dict:
        config, tc = self.config, self.config.train
        progress = self.checkpoints.latest_progress()
        if progress is None:
            if self.known_poses:
                progress = {"stage": AUTODECODING, "epoch": 0, "step": 0, "global_step": 0}
                vol = self.init_amortized()["vol_params"]
                state = self.init_autodecoding(vol, *self.known)
            else:
                progress = {"stage": AMORTIZED, "epoch": 0, "step": 0, "global_step": 0}
                state = self.init_amortized()
            self.elapsed_before = 0.0
        else:
            logging.info("resuming from %s", progress)
            state = self.restore(progress)
            self.elapsed_before = progress.get("elapsed_s", 0.0)
        self.metrics = runio.MetricsWriter(self.workdir, progress["global_step"] if progress["global_step"] else None)
        epochs = {AMORTIZED: 0 if self.known_poses else tc.epochs_amortized,
                  AUTODECODING: tc.epochs_autodecoding + (tc.epochs_amortized if self.known_poses else 0)}
        if config.model.fully_amortized:
            epochs = {AMORTIZED: tc.epochs_amortized + tc.epochs_autodecoding, AUTODECODING: 0}
        try:
            for stage in (AMORTIZED, AUTODECODING):
                if progress["stage"] != stage:
                    continue
                while progress["epoch"] < epochs[stage]:
                    state, progress = self.run_epoch(stage, state, progress, epochs[stage])
                    if stage == AMORTIZED and self.should_switch(progress["epoch"]):
                        break
                if stage == AMORTIZED:
                    # every head's pose for a sample of images, kept for the per-head figures
                    sample = np.sort(np.random.default_rng(config.seed).permutation(self.n)[:20_000])
                    rots, shifts, winners, heads = self.encoder_rotations(state, radius_at(config, AMORTIZED, 1e9), sample,
                                                                          tc.switch_search_passes)
                    np.savez_compressed(self.workdir / "amortized_heads.npz", rows=sample, heads=heads,
                                        winners=winners[sample], chosen=rots[sample])
                    state = self.init_autodecoding(self.upsample_volume(state["vol_params"]), rots, shifts)
                    if self.inverted_volume:
                        state = self.inverted(state)
                    progress = dict(progress, stage=AUTODECODING, epoch=0, step=0, amortized_epochs=progress["epoch"])
                    self.save(state, progress, "the stage switch")
            return self.finish(state, progress)
        finally:
            self.metrics.close()
            self.checkpoints.close()

    def stamp(self, progress: dict) -> dict:
        return dict(progress, elapsed_s=self.elapsed())

    def elapsed(self) -> float:
        return self.elapsed_before + time.perf_counter() - self.start_time

    def restore(self, progress: dict):
        if progress["stage"] == AMORTIZED:
            abstract = jax.eval_shape(self.init_amortized)
        else:  # auto-decoding holds the full-box volume, whatever size the amortized stage ran at
            full = self.data.source.image_size
            vol = jax.eval_shape(lambda: models.init_volume(full, self.radial[full], jax.random.key(0)))
            abstract = jax.eval_shape(lambda v: self.init_autodecoding(
                v, np.zeros((self.n, 3, 3), np.float32), np.zeros((self.n, 2), np.float32)), vol)
        abstract = jax.tree_util.tree_map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=self.replicated), abstract)
        return self.checkpoints.restore_state(abstract)

    def run_epoch(self, stage: str, state, progress: dict, n_epochs: int):
        config, tc = self.config, self.config.train
        epoch, start_step = progress["epoch"], progress["step"]
        step_fn = self.amortized_step if stage == AMORTIZED else self.autodecoding_step
        bar = tqdm(total=self.steps_per_epoch, initial=start_step, desc=f"{stage} {epoch + 1}/{n_epochs}",
                   unit="step", leave=False, dynamic_ncols=True, disable=not config.progress_bar)
        winners = np.zeros(config.model.n_heads + (1 if config.model.search_candidates else 0), np.int64)
        losses_seen, t0, images_seen = [], time.perf_counter(), 0
        seed = config.seed + (0 if stage == AMORTIZED else 1000)
        for step, batch in iterate_batches(self.data.source_for(stage), tc.batch_size, seed, epoch, start_step):
            radius = radius_at(config, stage, epoch + step / self.steps_per_epoch)
            extra = () if stage == AMORTIZED else (pose_lr_scale(tc, (epoch + step / self.steps_per_epoch) / n_epochs),)
            state, out = step_fn(state, device_batch(batch, self.data.table, self.batch_sharding), radius, *extra)
            images_seen += tc.batch_size
            bar.update(1)
            progress = dict(progress, stage=stage, epoch=epoch, step=step + 1, global_step=progress["global_step"] + 1)
            log_now = (step + 1) % tc.log_every == 0 or step + 1 == self.steps_per_epoch
            save_now = bool(tc.checkpoint_every_steps) and progress["global_step"] % tc.checkpoint_every_steps == 0
            if log_now or save_now:  # the only host syncs: a loss is checked before anything is kept
                loss = float(out["loss"])
                if not np.isfinite(loss):
                    self.stop(f"{stage} epoch {epoch + 1} step {step + 1}: loss is {loss}")
            if log_now:
                if "winner" in out:
                    winners += np.bincount(np.asarray(out["winner"]), minlength=len(winners))
                rate = images_seen / (time.perf_counter() - t0)
                losses_seen.append(loss)
                self.metrics.write({"stage": stage, "epoch": epoch + 1, "step": step + 1,
                                    "global_step": progress["global_step"], "loss": loss, "radius": radius,
                                    "elapsed_s": self.elapsed(), "images_per_s": rate})
                bar.set_postfix(loss=f"{loss:.4f}", img_s=f"{rate:.0f}")
            if save_now:
                self.save(state, progress, f"{stage} epoch {epoch + 1} step {step + 1}")
        bar.close()
        progress = dict(progress, epoch=epoch + 1, step=0)
        if stage == AUTODECODING and self.research is not None and (epoch + 1) % tc.research_every_epochs == 0 \
                and epoch + 1 < n_epochs:
            state, moved = research_poses(self.research, state, self.data.source, tc.batch_size, self.batch_sharding,
                                          self.replicated, radius_at(config, stage, epoch + 1),
                                          jax.random.fold_in(jax.random.key(config.seed + 11), epoch), self.estimate_shifts)
            logging.info("auto-decoding epoch %d: %.1f %% of the images moved to a more likely pose found by search",
                         epoch + 1, 100 * moved)
        if stage == AUTODECODING and self.inverted_volume:
            state = self.inverted(state)
        self.check_finite(state, f"end of {stage} epoch {epoch + 1}")
        summary = self.end_of_epoch(stage, state, epoch + 1 + progress.get("amortized_epochs", 0))
        rate = images_seen / max(time.perf_counter() - t0, 1e-9)
        hist = f" winners {winners.tolist()}" if stage == AMORTIZED else ""
        logging.info("%s epoch %d/%d: loss %.5f, %.0f images/s%s%s", stage, epoch + 1, n_epochs,
                     np.mean(losses_seen) if losses_seen else float("nan"), rate, hist,
                     "".join(f", {k} {v:.3g}" for k, v in summary.items() if isinstance(v, float)))
        self.metrics.write({"stage": stage, "epoch": epoch + 1, "step": self.steps_per_epoch,
                            "global_step": progress["global_step"], "loss": float(np.mean(losses_seen or [np.nan])),
                            "elapsed_s": self.elapsed(), "images_per_s": rate, "epoch_end": True,
                            "winner_histogram": winners.tolist(), **summary})
        self.save(state, progress, f"end of {stage} epoch {epoch + 1}")
        return state, progress

    def stop(self, what: str):
        """Stop a diverged run; the checkpoints hold only states that were checked finite."""
        latest = self.checkpoints.latest_progress()
        kept = (f"the last good checkpoint (global step {latest['global_step']}) in {self.workdir / 'checkpoints'} "
                "is kept" if latest else "no checkpoint had been written yet")
        raise FloatingPointError(f"{what}; stopping ({kept}; lower the learning rates)")

    def check_finite(self, state, what: str) -> None:
        bad = sum(int(jnp.sum(~jnp.isfinite(x))) for x in jax.tree_util.tree_leaves(state)
                  if jnp.issubdtype(x.dtype, jnp.floating))
        if bad:
            self.stop(f"{what}: the model holds {bad} non-finite values")

    def save(self, state, progress: dict, what: str) -> None:
        self.check_finite(state, what)
        self.checkpoints.save(state, self.stamp(progress))

    def current_poses(self, stage: str, state) -> tuple[np.ndarray, np.ndarray]:
        """Rotations (N, 3, 3) and shifts (N, 2) in pixels of the full box, in table order."""
        if stage == AMORTIZED:
            return self.encoder_rotations(state, radius_at(self.config, AMORTIZED, 1e9))[:2]
        return np.asarray(state["rotations"]), np.asarray(state["shifts"])

    def write_outputs(self, stage: str, state, out: pathlib.Path) -> tuple[dict, np.ndarray]:
        """reconstruction.mrc and poses.star into ``out``, and the evaluation against the ground truth
        when one is known; returns (summary, rotations)."""
        rots, shifts = self.current_poses(stage, state)
        pixel = self.data.source_for(stage).pixel_size_angstrom
        volume = runio.write_map(out / "reconstruction.mrc", models.volume_hartley(state["vol_params"]), pixel)
        full_pixel = self.data.source.pixel_size_angstrom
        shifts_angstrom = shifts * full_pixel if self.uses_shifts else None
        # RELION's origin is the translation that centres the particle: minus its displacement
        runio.write_poses(out / "poses.star", self.data.table, rots, None if shifts_angstrom is None else -shifts_angstrom)
        summary = evaluate.summarize(volume, rots, pixel, self.data.ground_truth, self.data.ground_truth_poses,
                                     shifts_angstrom, full_pixel)
        return summary, rots

    def end_of_epoch(self, stage: str, state, epoch: int) -> dict:
        """Write epoch_NNN/ (NNN counts both stages) and evaluate; in the amortized stage also the median
        change of every image's pose since the previous epoch (what the automatic switch watches)."""
        summary, rots = self.write_outputs(stage, state, self.workdir / f"epoch_{epoch:03d}")
        previous = self.workdir / f"epoch_{epoch - 1:03d}" / "poses.star"
        if stage == AMORTIZED and previous.exists():  # read back from disk, so a resumed run sees it too
            before = geometry.euler_to_matrix(jnp.asarray(read_particles(previous).euler_deg, jnp.float32))
            change = geometry.geodesic_distance_deg(before, jnp.asarray(rots))
            summary["pose_change_median_deg"] = float(jnp.median(change))
        self.last_summary = summary
        return summary

    def should_switch(self, epochs_done: int) -> bool:
        """train.switch='auto': leave auto-encoding once the images' poses stop moving (median change
        between consecutive epochs below switch_threshold_deg), after at least switch_min_epochs."""
        tc = self.config.train
        change = getattr(self, "last_summary", {}).get("pose_change_median_deg")
        if tc.switch != "auto" or not auto_switch_due(epochs_done, change, tc.switch_threshold_deg, tc.switch_min_epochs):
            return False
        logging.info("switching to auto-decoding after epoch %d: median pose change %.2f deg < %.2f deg",
                     epochs_done, change, tc.switch_threshold_deg)
        return True

    def finish(self, state, progress: dict) -> dict:
        """Final outputs: the learned volume as decoder.mrc, poses.star, and reconstruction.mrc made by a
        Wiener-filtered direct inversion of the images at the final poses (``jaxcryo.inversion``; the
        filter's SNR comes from the two half sets, whose FSC is the run's own resolution estimate)."""
        stage = AUTODECODING if "rotations" in state else AMORTIZED
        decoder, rots = self.write_outputs(stage, state, self.workdir)
        (self.workdir / "reconstruction.mrc").replace(self.workdir / "decoder.mrc")
        summary = {f"decoder_{k}": v for k, v in decoder.items() if k.startswith("fsc")}
        summary.update(self.final_map(rots, np.asarray(self.current_poses(stage, state)[1])))
        summary.update(elapsed_s=self.elapsed(), n_particles=self.n, switch_rule=self.config.train.switch,
                       amortized_epochs_run=progress.get("amortized_epochs", 0), machine=runio.machine())
        runio.write_json(self.workdir / "summary.json", summary)
        logging.info("finished: %s", {k: (round(v, 4) if isinstance(v, float) else v) for k, v in summary.items()})
        return summary

    def final_map(self, rotations: np.ndarray, shifts_px: np.ndarray) -> dict:
        """Write reconstruction.mrc (direct inversion at the final poses) and evaluate it."""
        source = self.data.source
        labels = half_set_labels(self.data.table, self.config.seed)
        rec = inversion.reconstruct(source, rotations, shifts_px if self.uses_shifts else np.zeros_like(shifts_px),
                                    labels, self.config.train.batch_size)
        pixel = source.pixel_size_angstrom
        write_mrc(self.workdir / "reconstruction.mrc", rec["map"], pixel)
        evaluate.write_fsc_csv(self.workdir / "fsc_halfmaps.csv", {"unmasked": rec["fsc_half"],
                                                                    "masked": rec["fsc_half_masked"]}, pixel)
        out = {"fsc0143_halfmaps_angstrom": evaluate.resolution_at(rec["fsc_half"], 0.143, pixel),
               "fsc0143_halfmaps_masked_angstrom": evaluate.resolution_at(rec["fsc_half_masked"], 0.143, pixel)}
        logging.info("final map by direct inversion: half-map FSC 0.143 at %.2f A (soft mask %.2f A)",
                     out["fsc0143_halfmaps_angstrom"], out["fsc0143_halfmaps_masked_angstrom"])
        shifts_angstrom = shifts_px * self.data.source.pixel_size_angstrom if self.uses_shifts else None
        out.update(evaluate.summarize(rec["map"], rotations, pixel, self.data.ground_truth, self.data.ground_truth_poses,
                                      shifts_angstrom, pixel))
        return out


def _open_workdir(config, workdir: pathlib.Path) -> None:
    """Create the work directory, or check that the run it holds may be resumed with ``config``."""
    try:
        workdir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"{workdir}: cannot create the work directory ({exc.strerror or exc})") from None
    if not os.access(workdir, os.W_OK | os.X_OK):
        raise InputError(f"{workdir}: the work directory is not writable")
    stored = workdir / "config.json"
    checkpoints = workdir / "checkpoints"
    if stored.exists() and checkpoints.is_dir() and any(checkpoints.iterdir()):
        try:
            previous = json.loads(stored.read_text())
        except ValueError:
            raise InputError(f"{stored}: unreadable; this work directory holds a damaged run") from None
        configcheck.check_resumable(previous, config, stored)


def train_and_evaluate(config, workdir, devices=None) -> dict:
    """Run (or resume) a reconstruction in ``workdir`` on ``devices`` (default: all local devices).

    The config, the work directory and the data are all checked before anything is written, so a
    rejected command leaves an existing work directory as it was."""
    workdir = pathlib.Path(workdir)
    configcheck.validate(config)
    _open_workdir(config, workdir)
    if config.get("halfsets", False):
        from jaxcryo import halfsets

        runio.write_json(workdir / "config.json", config.to_dict())
        return halfsets.run_halfsets(config, workdir, train_and_evaluate, devices)
    run = Run(config, workdir, devices)  # reads and checks the data
    runio.write_json(workdir / "config.json", config.to_dict())
    return run.run()
