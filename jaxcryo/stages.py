"""The two stages' own pieces, mixed into ``jaxcryo.train.Run`` (which holds the data, the mesh, the
jitted steps and the config): how each stage's state is made, the switch (the encoder's poses are
read out by ``jaxcryo.encoderposes``), when to switch, and (beyond the paper) auto-decoding's global
re-search between epochs (the volumes made by direct inversion are ``jaxcryo.volumes``'s).
"""

from __future__ import annotations

import functools
import logging

import jax
import jax.numpy as jnp
import numpy as np

from jaxcryo import distributed, fourier, models, pseudosym, steps
from jaxcryo.dataset import AMORTIZED, device_batch
from jaxcryo.io import InputError, read_poses
from jaxcryo.research import mate_poses, mates_due, research_due, research_poses

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


def epochs_for_steps(steps: int, steps_per_epoch: int) -> int:
    """The whole epochs that hold at least ``steps`` steps (0 for 0)."""
    return -(-int(steps) // max(int(steps_per_epoch), 1))


def stage_epochs(train_config, steps_per_epoch: int, known_poses: bool = False, fully_amortized: bool = False,
                 start_poses: bool = False) -> dict:
    """Epochs of each stage. ``train.amortized_steps`` / ``autodecoding_steps`` (> 0) set a stage's length
    in steps, so a small and a large stack both get a sensible run: the encoder learns from a number of
    images, not of passes; each is rounded up to whole epochs, at least 2 and at most the stage's
    ``epochs_*`` (with steps, a cap). Auto-decoding refines every image's own pose, so its 2-epoch
    floor is what a large stack gets. Known poses fit the map alone for both stages' epochs; start poses
    (``config.start_poses``) skip the amortized stage."""
    tc = train_config

    def epochs(steps_key: str, epochs_key: str) -> int:
        steps, cap = int(tc.get(steps_key, 0)), int(tc[epochs_key])
        return cap if steps <= 0 else int(min(cap, max(2, epochs_for_steps(steps, steps_per_epoch))))

    amortized, autodecoding = epochs("amortized_steps", "epochs_amortized"), epochs("autodecoding_steps", "epochs_autodecoding")
    if known_poses:
        return {AMORTIZED: 0, AUTODECODING: amortized + autodecoding}
    if start_poses:
        return {AMORTIZED: 0, AUTODECODING: autodecoding}
    if fully_amortized:
        return {AMORTIZED: amortized + autodecoding, AUTODECODING: 0}
    return {AMORTIZED: amortized, AUTODECODING: autodecoding}


def amortized_epochs_limit(train_config, steps_per_epoch: int, planned: int, fully_amortized: bool = False) -> int:
    """The most amortized epochs: the ``planned`` ones, or with ``train.switch='auto'`` and
    ``train.amortized_steps_max`` > 0 the whole epochs that hold that many steps (at most
    ``train.epochs_amortized``; a fully amortized run, one stage with no switch, and a run with known
    poses, no amortized stage, keep their plan). The stage then goes on past its plan while the switch
    is not due, that is while the poses still move: on a hard stack (coloured noise, a weak signal) the plan can end with
    the search still reassigning most images, tens of degrees an epoch, and auto-decoding then starts
    from poses far from any solution (docs/results.md, "Your own particles": the outside simulator's realistic
    dimer, seed 131, ended its 6 planned epochs at a median pose change of 34 deg an epoch)."""
    steps = int(train_config.get("amortized_steps_max", 0))
    if steps <= 0 or planned <= 0 or fully_amortized or train_config.switch != "auto":
        return planned
    return max(planned, min(int(train_config.epochs_amortized), epochs_for_steps(steps, steps_per_epoch)))


def auto_switch_due(epochs_done: int, moved_fraction: float | None, max_fraction: float, min_epochs: int) -> bool:
    """The automatic stage switch: poses have stopped moving (fewer than ``max_fraction`` of the images
    moved more than ``train.switch_threshold_deg`` between the last two epochs) and at least
    ``min_epochs`` of auto-encoding are done. ``max_fraction`` 0.5 is "the median change is below the
    threshold"; the epoch-end poses come from a fixed candidate set, so the median is 0 as soon as half
    of the images keep their candidate, while the other half may still be finding their basin."""
    return epochs_done >= min_epochs and moved_fraction is not None and moved_fraction < max_fraction


def switch_min_epochs_for(train_config, steps_per_epoch: int) -> int:
    """The fewest amortized epochs before the automatic switch: ``train.switch_min_epochs``, and enough
    epochs for ``train.switch_min_steps`` steps. The switch compares the poses of consecutive epochs;
    a small stack's epochs are short, so its poses move little between two of them while the map is
    still young, and a rule in epochs alone would switch it after a fraction of the steps a large
    stack gets."""
    steps = int(train_config.get("switch_min_steps", 0))
    return max(int(train_config.switch_min_epochs), epochs_for_steps(steps, steps_per_epoch))


def switch_window_epochs(train_config, steps_per_epoch: int) -> int:
    """How many epochs back the automatic switch compares each pose: enough for
    ``train.switch_window_steps`` steps, at least one (``SwitchWatch.pose_change``'s ``back``)."""
    return max(1, epochs_for_steps(int(train_config.get("switch_window_steps", 0)), steps_per_epoch))


def initial_state(encoder, enc_opt, vol_opt, size: int, radial_log_amplitude: np.ndarray, init_scale: float, start: int):
    """(k_enc, k_vol) -> the amortized stage's state for images of ``size`` px, as one compiled program
    (run eagerly, each of the encoder's initialiser ops would compile on its own)."""

    @jax.jit
    def init(k_enc, k_vol):
        variables = encoder.init(k_enc, jnp.zeros((2, size, size), jnp.float32), train=False)
        vol = models.init_volume(size, radial_log_amplitude, k_vol, init_scale)
        return {"enc_params": variables["params"], "batch_stats": variables["batch_stats"],
                "enc_opt": enc_opt.init(variables["params"]), "vol_params": vol, "vol_opt": vol_opt.init(vol),
                "step": jnp.full((), start * 1_000_000, jnp.int32)}

    return init


class AmortizedStage:
    """Encoder + volume state, the volume's carry to the full box, the switch."""

    def init_amortized(self, start: int = 0) -> dict:
        """Encoder + volume state; ``start`` > 0 draws another initialisation and other search
        candidates (its step counter, which seeds them, starts at start x 10^6)."""
        key = jax.random.key(self.config.seed)
        key = jax.random.fold_in(key, start) if start else key
        k_enc, k_vol = jax.random.split(key)
        source = self.data.source_for(AUTODECODING if self.known_poses else AMORTIZED)
        size = source.image_size
        init = initial_state(self.infer_encoder, self.enc_opt, self.vol_opt, size, self.radial[size],
                             self.config.model.volume_init_scale, start)
        return distributed.put_replicated(init(k_enc, k_vol), self.replicated)

    def training_batch(self, batch, stage: str) -> dict:
        """A loader's batch on the devices for ``stage``'s step: the amortized stage's images re-centred by
        the origins when they are known (auto-decoding's shifts are in its pose tables)."""
        return device_batch(batch, self.data.table, self.batch_sharding, self.data.source_for(stage).pixel_size_angstrom,
                            self.pre_shift_angstrom if stage == AMORTIZED else None)

    def upsample_volume(self, vol_params) -> dict:
        """Carry the amortized stage's volume to the full box: zero-pad its Hartley transform.

        Coefficients are in 1/L-scaled image units and Fourier cropping keeps pixel values, so the
        same frequency has L_full / L_coarse times the value in the larger box.
        """
        small, full = self.data.coarse.image_size, self.data.source.image_size
        if small == full:
            return vol_params
        h = fourier.pad_center(models.volume_hartley(vol_params), full, ndim=3) * (full / small)
        exponent = models.init_volume(full, self.radial[full], jax.random.key(0))["exponent"]
        return distributed.put_replicated(models.params_from_hartley(h, exponent), self.replicated)

    def origin_displacements(self) -> np.ndarray:
        """(N, 2) each particle's offset in A from its star's origins (``data.origins_as_shifts``): e.g.
        RELION's 2D classification centres particles; the amortized stage needs them registered."""
        shifts = self.data.table.displacements_angstrom()
        if shifts is None:
            raise InputError(f"{self.config.data.particles or 'the particle file'}: data.origins_as_shifts is set "
                             "but it holds no origins (rlnOriginXAngst/YAngst, rlnOriginX/Y or a .cs file's alignment shifts)")
        return shifts.astype(np.float32)

    def switch(self, state, progress: dict) -> tuple[dict, dict]:
        """The stage switch: every image's pose from the encoder (best of ``train.switch_search_passes``
        searches), the volume carried to the full box; every head's pose for a sample of images is kept
        for the per-head figures (amortized_heads.npz). Returns auto-decoding's state and progress."""
        config = self.config
        moved = self.last_moved_fraction()
        if config.train.switch == "auto" and not progress.get("switch_due") and moved is not None:
            logging.info("the amortized stage ends at its limit of %d epochs with its poses still moving: %.0f %% of the "
                         "images moved more than %.1f deg in its last %d epoch(s)", progress["epoch"], 100 * moved,
                         config.train.switch_threshold_deg, switch_window_epochs(config.train, self.steps_per_epoch))
        sample = self.switch_heads_rows()
        rots, shifts, winners, heads = self.encoder_rotations(state, radius_at(config, AMORTIZED, 1e9), sample,
                                                              config.train.switch_search_passes)
        self.drop_kept_pass()  # its state is gone
        if distributed.is_writer():
            np.savez_compressed(self.workdir / "amortized_heads.npz", rows=sample, heads=heads,
                                winners=winners[sample], chosen=rots[sample])
        state = self.init_autodecoding(self.upsample_volume(state["vol_params"]), rots, shifts)
        if self.inverted_volume:
            state = self.inverted(state)
        progress = {k: v for k, v in progress.items() if k != "switch_due"}
        return state, dict(progress, stage=AUTODECODING, epoch=0, step=0, amortized_epochs=progress["epoch"])

    def last_moved_fraction(self) -> float | None:
        """The fraction of the images that moved more than ``train.switch_threshold_deg`` in the last
        epoch (``end_of_epoch``'s summary), None before two epochs can be compared."""
        return getattr(self, "last_summary", {}).get("pose_change_moved_fraction")

    def should_switch(self, epochs_done: int) -> bool:
        """train.switch='auto': leave auto-encoding once the images' poses stop moving (fewer than
        switch_moved_fraction of them moved more than switch_threshold_deg over ``switch_window_epochs``),
        after at least switch_min_epochs and switch_min_steps (``switch_min_epochs_for``)."""
        tc = self.config.train
        moved = self.last_moved_fraction()
        limit = float(tc.get("switch_moved_fraction", 0.5))
        min_epochs = switch_min_epochs_for(tc, self.steps_per_epoch)
        if tc.switch != "auto" or not auto_switch_due(epochs_done, moved, limit, min_epochs):
            return False
        logging.info("switching to auto-decoding after epoch %d: %.0f %% of the images moved more than %.1f deg "
                     "(< %.0f %%)", epochs_done, 100 * moved, tc.switch_threshold_deg, 100 * limit)
        return True


class AutodecodingStage:
    """Per-image pose tables; known poses; the volume by direct inversion at the current poses."""

    def init_autodecoding(self, vol_params, rotations: np.ndarray, shifts_px: np.ndarray) -> dict:
        """Auto-decoding state: (N, 3, 3) rotations and (N, 2) shifts in pixels of the full box."""
        state = distributed.put_replicated({"vol_params": vol_params, "vol_opt": self.vol_opt_ad.init(vol_params)},
                                           self.replicated)
        given = self.place_tables({"rotations": np.asarray(rotations, np.float32),
                                   "shifts": np.asarray(shifts_px, np.float32)})
        return dict(state, **given, **self.fresh_tables([k for k in steps.POSE_TABLES if k not in given]))

    def fresh_tables(self, names) -> dict:
        """Pose tables ``names`` at their initial values (``steps.POSE_TABLE_LAYOUT``), made on the
        devices in their blocks: no N-row host array (on a CPU host and device share one memory)."""
        layout = {k: steps.POSE_TABLE_LAYOUT[k] for k in names}
        rows = self.table_rows
        make = jax.jit(lambda: {k: jnp.full((rows,) + shape, fill, dtype) for k, (shape, dtype, fill) in layout.items()},
                       out_shardings=self.batch_sharding)
        return make()

    def abstract_autodecoding(self, table_rows: int) -> dict:
        """Shapes and shardings of an auto-decoding checkpoint: the full-box volume (whatever size the
        amortized stage ran at) and pose tables of ``table_rows`` rows (padded for the device count of
        the run that saved them; sharded by row when this mesh divides them)."""
        full = self.data.source.image_size
        vol = jax.eval_shape(lambda: models.init_volume(full, self.radial[full], jax.random.key(0)))
        vol_state = jax.eval_shape(lambda v: {"vol_params": v, "vol_opt": self.vol_opt_ad.init(v)}, vol)
        rows = self.batch_sharding if table_rows % self.blocks == 0 else self.replicated
        return dict(jax.tree_util.tree_map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=self.replicated),
                                           vol_state),
                    **{k: jax.ShapeDtypeStruct((table_rows,) + shape, dtype, sharding=rows)
                       for k, (shape, dtype, _) in steps.POSE_TABLE_LAYOUT.items()})

    def place_tables(self, tables: dict) -> dict:
        """Host pose tables of N rows -> device tables padded to whole blocks, block d on device d."""
        n = next(iter(tables.values())).shape[0]
        padded = {k: t if n == self.table_rows else np.concatenate([t, np.zeros((self.table_rows - n,) + t.shape[1:], t.dtype)])
                  for k, t in tables.items()}  # no copy when nothing pads: the tables are 92 B per particle
        return distributed.put_rows(padded, self.batch_sharding)

    def host_tables(self, state, names=steps.POSE_TABLES) -> dict:
        """The state's pose tables as host arrays of N rows (padding dropped)."""
        return {k: np.array(distributed.to_host(state[k])[: self.n]) for k in names}

    def poses_from_file(self, path: str) -> tuple[np.ndarray, np.ndarray]:
        """Rotations (N, 3, 3) and shifts (N, 2, pixels) of a star or .cs with the particles' rows in
        their order (``config.poses``, ``config.start_poses``); shifts from its origins."""
        poses = read_poses(path, self.n)
        return poses.rotations(), poses.displacements_px(self.data.source.pixel_size_angstrom)

    def between_epochs(self, stage: str, state, progress: dict, n_epochs: int) -> tuple[dict, dict]:
        """After each epoch, beyond the paper when configured: auto-decoding's global re-search
        (``jaxcryo.research``), the volume by direct inversion at the current poses, or the volume mask."""
        config, epoch = self.config, progress["epoch"]
        if stage == AUTODECODING and self.research is not None and research_due(config, epoch, n_epochs, progress):
            halves = self.half_maps(state) if config.train.get("research_half_maps", False) else None
            min_gain = float(config.train.get("research_min_gain_nats", 0.0))
            move_cap = float(config.train.get("research_move_cap", 1.0))
            count_deg = float(config.train.get("research_count_min_deg", 0.0))
            tables, moved = research_poses(self.research, state["vol_params"], self.host_tables(state), self.data.source,
                                           self.research_batch, self.batch_sharding, radius_at(config, stage, epoch),
                                           jax.random.fold_in(jax.random.key(config.seed + 11), epoch - 1),
                                           self.estimate_shifts, halves=halves, judge=self.research_judge,
                                           min_gain_nats=min_gain, move_cap=move_cap, count_min_deg=count_deg)
            moved_farther = f" more than {count_deg:g} deg" if count_deg else ""
            logging.info("auto-decoding epoch %d: %.1f %% of the images moved%s to a more likely pose found by search",
                         epoch, 100 * moved, moved_farther)
            symmetry = functools.cache(lambda: pseudosym.pseudo_symmetry(models.volume_hartley(state["vol_params"]),
                                                                         self.data.source.pixel_size_angstrom))
            if self.mate_test is not None and mates_due(config.train, moved, progress, symmetry):
                sym = symmetry()
                tables, mates_moved = mate_poses(self.mate_test, state["vol_params"], tables, self.data.source,
                                                 self.research_batch, self.batch_sharding, radius_at(config, stage, epoch),
                                                 jax.random.fold_in(jax.random.key(config.seed + 12), epoch - 1),
                                                 self.estimate_shifts, sym, halves=halves, judge=self.research_judge,
                                                 min_gain_nats=min_gain, move_cap=move_cap, count_min_deg=count_deg)
                moved += mates_moved  # at most the share moved by either (a pose rarely moves twice)
                progress = dict(progress, mates_moved=mates_moved,
                                mates_symmetry={"order": int(sym["order"]), "axis": np.asarray(sym["axis"]).tolist(),
                                                "mirror_normal": np.asarray(sym["mirror_normal"]).tolist()})
                logging.info("auto-decoding epoch %d: the map is closest to C%d symmetry (axis %s, self-correlation "
                             "%.2f at %.0f A) and to its mirror image in the plane normal to %s (%.2f); %.1f %% of the "
                             "images moved%s to a more likely mate", epoch, sym["order"], np.round(sym["axis"], 2).tolist(),
                             sym["correlation"], pseudosym.RESOLUTION_ANGSTROM,
                             np.round(sym["mirror_normal"], 2).tolist(), sym["mirror_correlation"], 100 * mates_moved,
                             moved_farther)
            elif symmetry.cache_info().currsize:
                logging.info("auto-decoding epoch %d: the map's pseudo-symmetry (C%d and a mirror plane) is still the one its "
                             "mates were tested under, when %.1f %% moved; not tested again", epoch, symmetry()["order"],
                             100 * progress["mates_moved"])
            state = dict(state, **self.place_tables(tables))
            progress = dict(progress, research_moved=moved, research_epoch=epoch)  # checkpointed: a resumed run makes the same choice
        if stage == AUTODECODING and self.inverted_volume:
            state = self.inverted(state)  # masked there when model.volume_mask is on
        elif config.model.get("volume_mask", False):
            state = self.masked(state, self.data.source_for(stage))
        return state, progress
