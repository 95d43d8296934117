"""How a run begins, mixed into ``jaxcryo.train.Run``: at given poses, from start poses, or with the
amortized stage from one start or several chosen by likelihood (``train.amortized_starts``, beyond the
paper): whether the amortized stage leaves its first plateau depends on the random draws, and how well
each start's map explains a fixed sample of images tells which start did."""

from __future__ import annotations

import logging

import jax
import numpy as np

from jaxcryo import distributed, evaluate, slicing
from jaxcryo.dataset import AMORTIZED
from jaxcryo.io import read_particles
from jaxcryo.io.loader import chunks_read_ahead, iterate_batches
from jaxcryo.stages import AUTODECODING, radius_at

SAMPLE = 1024  # images scoring each start


def shift_starts(config, known_poses: bool) -> int:
    """How many amortized starts estimate shifts besides ``train.amortized_starts``: those of
    ``train.amortized_shift_starts`` in a run that would take the particles as centred, infers poses and
    searches in its amortized stage. With the encoder's heads alone (``model.search_candidates=0``) none:
    on a stack of thousands every start is still near random when they are scored, and a shift start
    then wins by moving its blob-like map onto each projection's centre of mass, not because the
    particles sit off centre (three of four such runs on centred stacks chose one); auto-decoding from
    near-random poses with shifts free settled in a wrong map where the same run taken as centred did
    not (held-back multidomain:1001: 32.5 deg after 24 auto-decoding epochs against 2.99 deg)."""
    if known_poses or config.model.estimate_shifts or not int(config.model.search_candidates):
        return 0
    return int(config.train.get("amortized_shift_starts", 0))


def noise_fit_allowance(score: float, n_coefficients: int, unknowns: int = 2) -> float:
    """How much fitting ``unknowns`` more parameters per image lowers a mean loss ``score`` on noise
    alone (Akaike's correction): the Gaussian loss is 0.5 * mean(r^2) over the mask's n real
    coefficients, each fitted parameter takes one noise variance sigma^2 out of sum(r^2) on average,
    and at SNR << 1 the loss is about 0.5 * sigma^2. A start that estimates shifts is scored with this
    added, so that it does not win on a centred stack by fitting noise with its two shift unknowns."""
    return unknowns * float(score) / int(n_coefficients)


def start_steps(train_config, amortized_epochs: int, steps_per_epoch: int, shift_starts: int = 0) -> int:
    """Steps each amortized start trains (0: one start, none chosen; ``shift_starts`` are those that
    estimate shifts besides ``train.amortized_starts``), at most the stage's planned length; the chosen
    start's steps count as the stage's first. ``train.amortized_start_steps`` (> 0)
    sets them in steps: leaving the first plateau takes a number of steps, not of passes over the stack,
    so a 200,000-particle stack's starts cost what a 5,000-particle one's do. Otherwise
    ``train.amortized_start_epochs`` whole epochs."""
    if int(train_config.get("amortized_starts", 1)) + shift_starts <= 1:
        return 0
    planned = amortized_epochs * steps_per_epoch
    steps = int(train_config.get("amortized_start_steps", 0))
    return min(steps if steps > 0 else int(train_config.amortized_start_epochs) * steps_per_epoch, planned)


class AmortizedStarts:
    """A new run's first state; the starts, their score on the sample, and (simulated data only) the
    sample's pose error."""

    def first_state(self) -> tuple[dict, dict]:
        """A new run's state and progress: auto-decoding at the known poses (held fixed) or, with start
        poses, at their map; else the amortized stage, after its starts when there are several (checkpointed
        once chosen: a kill during the starts redoes them)."""
        tc = self.config.train
        if self.known_poses:
            progress = {"stage": AUTODECODING, "epoch": 0, "step": 0, "global_step": 0}
            return self.init_autodecoding(self.init_amortized()["vol_params"], *self.known), progress
        if self.start_poses:  # the map at the given poses first: a pose step needs a map to move against
            progress = {"stage": AUTODECODING, "epoch": 0, "step": 0, "global_step": 0, "amortized_epochs": 0}
            state = self.inverted(self.init_autodecoding(self.upsample_volume(self.init_amortized()["vol_params"]),
                                                         *self.known))
            self.save(state, progress, "the start poses' map")
            return state, progress
        if self.steps_per_start:
            done = self.steps_per_start
            state = self.amortized_starts(int(tc.get("amortized_starts", 1)), done)
            epoch, step = divmod(done, self.steps_per_epoch)  # the stage goes on mid-epoch after a part of one
            progress = {"stage": AMORTIZED, "epoch": epoch, "step": step, "global_step": done}
            self.save(state, progress, "the chosen start")
            return state, progress
        return self.init_amortized(), {"stage": AMORTIZED, "epoch": 0, "step": 0, "global_step": 0}

    def amortized_starts(self, n_starts: int, n_steps: int) -> dict:
        """Several starts chosen by likelihood (``train.amortized_starts``): each start trains ``n_steps``
        amortized steps (whole epochs, or part of one) from its own initialisation and search draws; the
        one whose map explains a fixed sample of images best (lowest mean loss at each image's best pose:
        heads or search, as at the switch) is kept. Whether the amortized stage leaves its first plateau
        depends on the random draws; the likelihood tells which start did.

        ``train.amortized_shift_starts`` more starts estimate in-plane shifts (a run that takes the particles
        as centred); when one of them is the most likely, the run goes on estimating shifts. On particles
        off centre the centred starts' maps stay blurred; on centred ones the shift starts' maps, with two
        more unknowns per image, form more slowly (README, 'Inputs'). A shift start's score carries what its
        two shift unknowns per image fit of noise alone (``noise_fit_allowance``, about 0.1 % of the loss):
        more than the margins by which shift starts won on centred stacks, a fraction of those by which they
        win off centre. (Scoring the centred starts at fitted shifts instead gives their maps real signal
        back on a stack off centre: it chose a centred start there.)"""
        tc, source, spe = self.config.train, self.data.coarse, self.steps_per_epoch
        rows = np.sort(np.random.default_rng([self.config.seed, 5]).permutation(self.n)[:SAMPLE])
        best, best_score = None, np.inf
        total = n_starts + self.shift_starts
        scored_at = radius_at(self.config, AMORTIZED, n_steps / spe)  # every start is scored on the same disc
        coefficients = int(np.sum(slicing.frequency_mask(source.image_size, scored_at)))
        for start in range(total):
            shifted = start >= n_starts
            self.use_shifts(shifted)
            state = self.init_amortized(start)
            for epoch in range(-(-n_steps // spe)):
                for step, batch in iterate_batches(source, tc.batch_size, self.config.seed + 7919 * start, epoch,
                                                   max_steps=min(spe, n_steps - epoch * spe)):
                    radius = radius_at(self.config, AMORTIZED, epoch + step / spe)
                    state, _ = self.amortized_step(state, self.training_batch(batch, AMORTIZED), radius)
            score, rotations = self.sample_inference(state, rows, scored_at)
            extra = noise_fit_allowance(score, coefficients) if shifted else 0.0
            kind = f" (estimating shifts; scored + {extra:.5f}, what its shifts fit of noise alone)" if shifted else ""
            logging.info("amortized start %d/%d%s: mean loss %.5f on %d images after %d steps%s", start + 1, total, kind,
                         score, len(rows), n_steps, self.sample_pose_error(rotations, rows))
            score += extra
            if score < best_score:
                best, best_score, chosen = state, score, start
        if self.shift_starts:
            shifted = chosen >= n_starts
            self.use_shifts(shifted)
            logging.info("amortized stage continues from start %d (the most likely): %s", chosen + 1,
                         "a start that estimates shifts, so every particle's shift is estimated from here on (the "
                         "particles may sit off centre)" if shifted else "the particles are taken as centred")
        else:
            logging.info("amortized stage continues from start %d (the most likely)", chosen + 1)
        return best

    def sample_pose_error(self, rotations: np.ndarray, rows: np.ndarray) -> str:
        """With known true poses (simulated data, for development only): the sample's median pose error."""
        if not self.data.ground_truth_poses:
            return ""
        truth = read_particles(self.data.ground_truth_poses)
        true_rot = truth.rotations(rows)
        err = evaluate.align_poses(rotations, true_rot)["rotation_error_deg"]
        return f" (median pose error {np.median(err):.1f} deg against the ground truth)"

    def sample_inference(self, state, rows: np.ndarray, radius: float) -> tuple[float, np.ndarray]:
        """Mean loss of ``rows``' images at their best pose (encoder heads or a fixed search; with shift heads
        at each image's most likely shift), and those poses (len(rows), 3, 3)."""
        total, key = 0.0, jax.random.key(self.config.seed + 13)
        rotations = np.zeros((len(rows), 3, 3), np.float32)
        for start, idx, padded, host in chunks_read_ahead(self.data.coarse, rows, self.inference_batch):
            batch = self.training_batch(host, AMORTIZED)
            out = self.encoder_inference(state["enc_params"], state["batch_stats"], state["vol_params"], batch, radius,
                                         jax.random.fold_in(key, start))
            rotations[start:start + len(idx)] = distributed.to_host(out[0])[: len(idx)]
            total += float(np.sum(distributed.to_host(out[-1])[: len(idx)]))
        return total / len(rows), rotations
