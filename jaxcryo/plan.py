"""What a run says before it trains, mixed into ``jaxcryo.train.Run``: the one-line plan (N, boxes, pixel
sizes, epochs and steps per stage) and, after a stage's first steps, its expected training time."""

from __future__ import annotations

import logging

from jaxcryo.dataset import AMORTIZED, final_box_note
from jaxcryo.research import autodecoding_epochs_limit
from jaxcryo.stages import AUTODECODING, amortized_epochs_limit
from jaxcryo.starts import shift_starts, start_steps


# measured on CPU (docs/measurements.md, part 2): heads alone reach ~15 deg in 3-4 epochs on 50,000 images at
# SNR 0.1 (or 5,000 poses seen 10 times with fresh noise) and stay > 100 deg on 5,000 images
HEADS_NEED_PARTICLES = 50_000


def takes_centred(config) -> bool:
    """Whether a run takes every particle as centred: no shift estimated, none of its amortized starts
    estimating shifts (``train.amortized_shift_starts``) and no origins used."""
    return not (config.model.estimate_shifts or config.data.get("origins_as_shifts", False)
                or shift_starts(config, known_poses=False) > 0)


class RunPlan:
    """The plan and expected-time lines (the run's config, data and step counts are the Run's)."""

    def log_plan(self, epochs: dict) -> None:
        src, coarse, final = self.data.source, self.data.coarse, self.data.final
        final_box = final_box_note(src, final)
        logging.info("plan: %d particles, box %d px at %.3f A/px (amortized stage at %d px, %.2f A/px%s); amortized %d "
                     "epochs (%d steps), auto-decoding %d epochs (%d steps) of %d images; the expected wall time is logged "
                     "after each stage's first %d steps", self.n, src.image_size, src.pixel_size_angstrom, coarse.image_size,
                     coarse.pixel_size_angstrom, final_box, epochs[AMORTIZED], epochs[AMORTIZED] * self.steps_per_epoch,
                     epochs[AUTODECODING], epochs[AUTODECODING] * self.steps_per_epoch, self.config.train.batch_size,
                     2 * self.config.train.log_every)
        infers_poses = epochs[AMORTIZED] and not self.known_poses
        if infers_poses and self.config.data.particles and takes_centred(self.config):
            logging.info("plan: the particles are taken as centred (model.estimate_shifts=False): particles that sit "
                         "off centre, as picked ones do, need model.estimate_shifts=True or experiments/particles.py "
                         "(README, 'Inputs': +-5 % of the box left such a stack near random)")
        shifting = shift_starts(self.config, self.known_poses)
        each = start_steps(self.config.train, epochs[AMORTIZED], self.steps_per_epoch, shifting)
        if infers_poses and each:
            shifted = f", {shifting} of them estimating shifts" if shifting else ""
            logging.info("plan: the amortized stage starts %d times%s (%d steps each, %.2g epoch(s); its first %d steps "
                         "are the most likely start's)", int(self.config.train.get("amortized_starts", 1)) + shifting,
                         shifted, each, each / self.steps_per_epoch, each)
        if infers_poses and int(self.config.model.search_candidates) == 0 and self.n < HEADS_NEED_PARTICLES:
            logging.warning("plan: the encoder's heads alone propose the amortized stage's poses "
                            "(model.search_candidates=0), and they learn poses from about %d images' worth of signal "
                            "at SNR 0.1 (README, 'How well it works'); on %d particles expect them "
                            "near random and auto-decoding's re-search to find the poses, or set model.search_candidates",
                            HEADS_NEED_PARTICLES, self.n)
        most = amortized_epochs_limit(self.config.train, self.steps_per_epoch, epochs[AMORTIZED],
                                      self.config.model.fully_amortized)
        if infers_poses and most > epochs[AMORTIZED]:
            logging.info("plan: the amortized stage goes on past its %d epochs, up to %d, while the poses still move "
                         "(until fewer than %.0f %% of the images moved more than %g deg in an epoch)", epochs[AMORTIZED],
                         most, 100 * float(self.config.train.switch_moved_fraction), float(self.config.train.switch_threshold_deg))
        limit = autodecoding_epochs_limit(self.config, epochs[AUTODECODING]) if self.research is not None else 0
        if epochs[AUTODECODING] and limit > epochs[AUTODECODING]:
            logging.info("plan: auto-decoding goes on past its %d epochs, up to %d, while each re-search still moves "
                         ">= %.0f %% of the images", epochs[AUTODECODING], limit,
                         100 * float(self.config.train.get("research_repeat_fraction", 0.0)))

    def log_expected_time(self, stage: str, seconds_per_step: float, steps_done: int = 0) -> None:
        """Early in a stage: its training steps' expected duration at the rate just measured (compilation
        excluded), less ``steps_done`` (the chosen start's). The passes over the stack between epochs (poses,
        maps, re-search) come on top."""
        total = self.planned_epochs[stage] * self.steps_per_epoch - steps_done
        logging.info("%s stage: %d steps at %.3f s/step = about %.1f min of training steps (the passes over the "
                     "stack between epochs come on top)", stage, total, seconds_per_step, total * seconds_per_step / 60)
