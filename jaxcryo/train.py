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
``data.origins_as_shifts``: the input star's origins are each particle's starting shift; the amortized
stage sees the images re-centred by them (``steps._targets``). ``model.amortized_shifts=False``: the
amortized stage estimates no shifts and auto-decoding finds them.

Layout: ``Run`` holds the data, the mesh and the stage loop; the jitted steps for the kind of shift
estimate are built in ``jaxcryo.runsteps``, one epoch and the divergence guard are in
``jaxcryo.epochloop``, each stage's own pieces (the switch among them) in ``jaxcryo.stages``, the
encoder's poses for every image in ``jaxcryo.encoderposes``, several amortized starts in
``jaxcryo.starts``, the plan lines in ``jaxcryo.plan``, the final poses in ``jaxcryo.finalposes`` and
the outputs in ``jaxcryo.outputs`` (mixins of ``Run``).
"""

from __future__ import annotations

import json
import logging
import os
import pathlib
import time

import jax
import optax

from jaxcryo import configcheck, distributed, heldout, models, runio, steps
from jaxcryo.dataset import AMORTIZED, prepare_data, radial_log_amplitude
from jaxcryo.io import InputError
from jaxcryo.io.loader import steps_per_epoch
from jaxcryo.encoderposes import EncoderPoses
from jaxcryo.epochloop import EpochLoop
from jaxcryo.finalposes import FinalPoses
from jaxcryo.outputs import RunOutputs
from jaxcryo.plan import RunPlan
from jaxcryo.posemean import SLICES_PER_CALL, make_posterior_mean
from jaxcryo.research import log_if_unsettled, make_mate_test, make_research
from jaxcryo.runsteps import RunSteps
from jaxcryo.stages import AUTODECODING, AmortizedStage, AutodecodingStage, stage_epochs
from jaxcryo.starts import AmortizedStarts, shift_starts, start_steps
from jaxcryo.volumes import RunVolumes


class Run(RunSteps, EpochLoop, AmortizedStage, EncoderPoses, AmortizedStarts, AutodecodingStage, RunVolumes, FinalPoses,
          RunOutputs, RunPlan):
    """Holds the pieces of one reconstruction; ``run()`` executes or resumes it."""

    def __init__(self, config, workdir: pathlib.Path, devices=None):
        self.config, self.workdir = config, workdir
        self.data = checked_data(config, workdir)
        tc = config.train
        self.mesh = steps.make_mesh(devices)
        n_dev = self.mesh.devices.size
        if tc.batch_size % n_dev:
            raise InputError(f"config: train.batch_size {tc.batch_size} is not divisible by {n_dev} devices")
        self.batch_sharding = jax.NamedSharding(self.mesh, jax.sharding.PartitionSpec(steps.AXIS))
        self.replicated = jax.NamedSharding(self.mesh, jax.sharding.PartitionSpec())
        self.n = len(self.data.table)
        self.blocks = n_dev  # the pose tables' row blocks, one per device (steps, loader.epoch_order)
        self.table_rows = n_dev * -(-self.n // n_dev)
        self.steps_per_epoch = steps_per_epoch(self.n, tc.batch_size, self.blocks)
        # inference-only passes (and the re-search's): a multiple of the device count, no larger than N needs
        self.inference_batch = pass_batch(int(tc.get("inference_batch_size", tc.batch_size)), self.n, n_dev)
        self.research_batch = pass_batch(int(tc.get("research_batch_size", self.inference_batch)), self.n, n_dev)
        self.known_poses = bool(config.poses)
        self.start_poses = bool(config.get("start_poses", ""))
        mc = config.model
        # shift estimation: the config's, or (``train.amortized_shift_starts``) the chosen start's
        self.shift_starts = shift_starts(config, self.known_poses)
        if not self.known_poses and (mc.estimate_shifts or self.shift_starts) and not 0 < mc.max_shift_fraction < 0.5:
            raise InputError(f"config: model.max_shift_fraction must be in (0, 0.5), got {mc.max_shift_fraction}")
        self.pre_shift_angstrom = self.origin_displacements() if config.data.get("origins_as_shifts", False) else None
        given = config.poses or config.get("start_poses", "")  # held fixed, or refined from
        self.known = self.poses_from_file(given) if given else None
        px, lk = self.data.source.pixel_size_angstrom, config.loss.kind
        self.enc_opt, self.vol_opt = optax.adam(tc.lr_encoder), optax.adam(tc.lr_volume)
        self.vol_opt_ad = optax.adam(tc.lr_volume_autodecoding)
        if config.model.search_candidates and lk != "gaussian":
            raise InputError("config: model.search_candidates needs loss.kind='gaussian'")
        # Beyond the paper: the auto-decoding map from a direct inversion at the current poses (each epoch)
        self.inverted_volume = steps.inverted_volume(tc, self.known_poses)
        # Beyond the paper: a contrast scale per particle, fitted in auto-decoding (jaxcryo.steps)
        self.contrast_prior_std = 0.0 if self.known_poses else float(mc.get("contrast_prior_std", 0.0))
        self.fits_contrast = self.contrast_prior_std > 0
        self.use_shifts(bool(mc.estimate_shifts) and not self.known_poses)
        self.research = make_research(config, px, self.mesh) if not self.known_poses else None
        self.mate_test = make_mate_test(config, px, self.mesh) if self.research is not None else None
        self.research_judge = (steps.make_pose_losses(px, lk, self.mesh) if self.research is not None
                               and tc.get("research_half_maps", False) and tc.get("research_judge_only", False) else None)
        self.posterior_mean = (make_posterior_mean(px, self.mesh, int(tc.posterior_samples), float(tc.posterior_sigma_deg),
                                                   int(tc.get("posterior_map_draws", 0)))
                               if (tc.get("posterior_mean_poses", False) or int(tc.get("posterior_map_draws", 0)) > 0)
                               and not self.known_poses else None)
        # Beyond the paper: the final poses moved down the held-out likelihood (jaxcryo.heldout)
        self.heldout_passes = (heldout.make_passes(px, self.mesh)
                               if int(tc.get("heldout_steps", 0)) > 0 and not self.known_poses else None)
        if self.posterior_mean is not None:  # at most SLICES_PER_CALL draws per call bound the pass's memory
            self.posterior_batch = pass_batch(min(SLICES_PER_CALL // int(tc.posterior_samples), self.inference_batch),
                                              self.n, n_dev)
        self.checkpoints = runio.Checkpoints(workdir / "checkpoints")
        progress = self.checkpoints.latest_progress()  # checked before anything is written
        if progress is not None and progress.get("processes", 1) != distributed.process_count():
            raise InputError(f"{workdir}: its run was written by {progress.get('processes', 1)} process(es); "
                             f"resume it with the same number (this command started {distributed.process_count()})")
        # data spectra (host numpy, computed once): the volume's initial exponent at each box size
        self.radial = {src.image_size: radial_log_amplitude(src, seed=config.seed)
                       for src in (self.data.coarse, self.data.source)}
        self.start_time = time.perf_counter()

    # ---- the loop -----------------------------------------------------------------------------
    def run(self) -> dict:
        config, tc = self.config, self.config.train
        progress = self.checkpoints.latest_progress()
        epochs = stage_epochs(tc, self.steps_per_epoch, self.known_poses, config.model.fully_amortized, self.start_poses)
        self.planned_epochs = epochs
        # each start's steps; the stage's first
        self.steps_per_start = start_steps(tc, epochs[AMORTIZED], self.steps_per_epoch, self.shift_starts)
        if progress is None:
            self.elapsed_before = 0.0
            self.log_plan(epochs)
            state, progress = self.first_state()
        else:
            logging.info("resuming from %s", progress)
            self.use_shifts(bool(progress.get("estimate_shifts", self.estimate_shifts)))  # the kind of start chosen
            state = self.restore(progress)
            self.elapsed_before = progress.get("elapsed_s", 0.0)
        self.metrics = runio.MetricsWriter(self.workdir, progress if progress["global_step"] else None)
        try:
            for stage in (AMORTIZED, AUTODECODING):
                if progress["stage"] != stage:
                    continue
                while not progress.get("switch_due") and self.another_epoch(stage, progress, epochs[stage]):
                    state, progress = self.run_epoch(stage, state, progress, epochs[stage])
                if stage == AMORTIZED:
                    state, progress = self.switch(state, progress)
                    self.save(state, progress, "the stage switch")
                else:
                    log_if_unsettled(self.config, progress["epoch"], epochs[stage], progress)
            return self.finish(state, progress)
        finally:
            self.metrics.close()
            self.checkpoints.close()


def checked_data(config, workdir: pathlib.Path):
    """``dataset.prepare_data``, and a stack whose own box is below the encoder's (the settings are
    checked by ``configcheck.validate``) refused when the encoder is to pose it."""
    data = prepare_data(config, workdir)
    if not (config.poses or config.get("start_poses")) and data.coarse.image_size < models.MIN_ENCODER_BOX:
        raise InputError(f"{config.data.particles or 'the simulated particles'}: its box of {data.coarse.image_size} px "
                         f"is below the {models.MIN_ENCODER_BOX} px the pose encoder needs; extract the particles in a "
                         "larger box")
    return data


def pass_batch(requested: int, n: int, n_dev: int) -> int:
    """The batch of a pass that only reads: ``requested`` rounded down to a multiple of the device count,
    at least one image per device, and no larger than N images need."""
    wanted = min(requested, -(-n // n_dev) * n_dev)
    return max(n_dev, wanted - wanted % n_dev)


def _open_workdir(config, workdir: pathlib.Path) -> pathlib.Path | None:
    """Create the work directory, or check that the run it holds may be resumed with ``config``.
    Returns the outermost directory this call created (None if the work directory existed)."""
    created = next((p for p in reversed([workdir, *workdir.parents]) if not p.exists()), None)
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
    return created


def _remove_created(workdir: pathlib.Path, created: pathlib.Path | None) -> None:
    """Remove the directories ``_open_workdir`` created, up to ``created``, while they are empty: a
    command rejected for its input leaves no trace."""
    path = workdir
    while created is not None and path.is_relative_to(created):
        try:
            path.rmdir()
        except OSError:
            return
        path = path.parent


def train_and_evaluate(config, workdir, devices=None) -> dict:
    """Run (or resume) a reconstruction in ``workdir`` on ``devices`` (default: every process's devices).

    The config, the work directory and the data are all checked before anything is written, so a
    rejected command leaves an existing work directory as it was, and a new one is removed again."""
    workdir = pathlib.Path(workdir)
    configcheck.validate(config)
    halfsets = config.get("halfsets", False)
    if halfsets and distributed.process_count() > 1:
        raise InputError("config: halfsets=True runs in one process (its two halves on two groups of local "
                         "devices); with several processes run each half as its own job")
    created = _open_workdir(config, workdir)
    try:  # reads and checks the data
        checked = checked_data(config, workdir) if halfsets else Run(config, workdir, devices)
    except InputError:
        _remove_created(workdir, created)
        raise
    runio.write_json(workdir / "config.json", config.to_dict())
    if halfsets:
        from jaxcryo.halfsets import run_halfsets

        return run_halfsets(config, workdir, train_and_evaluate, checked, devices)
    return checked.run()
