"""A run's outputs, mixed into ``jaxcryo.train.Run``: epoch folders, the final map (direct inversion at
the final poses, ``jaxcryo.inversion``) beside the learned volume (decoder.mrc), poses.star,
summary.json, and the evaluation against a ground truth when one is known."""

from __future__ import annotations

import logging
import pathlib

import numpy as np

from jaxcryo import distributed, evaluate, inversion, models, runio
from jaxcryo.dataset import AMORTIZED
from jaxcryo.research import settling_summary
from jaxcryo.stages import AUTODECODING, radius_at, switch_window_epochs
from jaxcryo.switchwatch import SwitchWatch


class RunOutputs(SwitchWatch):
    """What a run writes, from its state."""

    def current_poses(self, stage: str, state) -> tuple[np.ndarray, np.ndarray]:
        """Rotations (N, 3, 3) and shifts (N, 2) in pixels of the working box (``data.source``), in table order."""
        if stage == AMORTIZED:
            return self.encoder_rotations(state, radius_at(self.config, AMORTIZED, 1e9))[:2]
        poses = self.host_tables(state, ("rotations", "shifts"))
        return poses["rotations"], poses["shifts"]

    def write_outputs(self, stage: str, state, out: pathlib.Path) -> tuple[dict, np.ndarray]:
        """reconstruction.mrc and poses.star into ``out``, and the evaluation against the ground truth
        when one is known; returns (summary, rotations)."""
        rots, shifts = self.current_poses(stage, state)
        pixel = self.data.source_for(stage).pixel_size_angstrom
        volume = runio.write_map(out / "reconstruction.mrc", models.volume_hartley(state["vol_params"]), pixel)
        working_pixel = self.data.source.pixel_size_angstrom  # the shifts' pixels, whatever the stage
        shifts_angstrom = shifts * working_pixel if self.uses_shifts else None
        # RELION's origin is the translation that centres the particle: minus its displacement
        runio.write_poses(out / "poses.star", self.data.table, rots, None if shifts_angstrom is None else -shifts_angstrom)
        summary = evaluate.summarize(volume, rots, pixel, self.data.ground_truth, self.data.ground_truth_poses,
                                     shifts_angstrom, working_pixel)
        return summary, rots

    def end_of_epoch(self, stage: str, state, epoch: int) -> dict:
        """Write epoch_NNN/ (NNN counts both stages) and evaluate, while N is at most
        ``train.epoch_outputs_max_particles``; in the amortized stage also the median change since the
        previous epoch of the poses of a fixed sample of images (what the automatic switch watches),
        so its cost does not grow with N."""
        limit = int(self.config.train.get("epoch_outputs_max_particles", -1))
        summary, rots = {}, None
        if limit < 0 or self.n <= limit:
            summary, rots = self.write_outputs(stage, state, self.workdir / f"epoch_{epoch:03d}")
        if stage == AMORTIZED:
            rows = self.switch_sample_rows()
            if rots is not None:
                sample = rots[rows]
            else:
                sample = self.encoder_rotations(state, radius_at(self.config, AMORTIZED, 1e9), rows=rows)[0]
            summary.update(self.pose_change(epoch, sample, float(self.config.train.switch_threshold_deg),
                                            switch_window_epochs(self.config.train, self.steps_per_epoch)))
        self.last_summary = summary
        return summary

    def finish(self, state, progress: dict) -> dict:
        """Final outputs: the learned volume as decoder.mrc, poses.star (RELION 3.1, with the half sets as
        rlnRandomSubset) and poses.cs (cryoSPARC), and reconstruction.mrc made by a Wiener-filtered
        direct inversion of the images at the final poses (``jaxcryo.inversion``; the filter's SNR
        comes from the two half sets, whose FSC is the run's own resolution estimate) with the two half
        sets' own unfiltered inversions beside it (reconstruction_half1_unfil.mrc, ..._half2_unfil.mrc)."""
        stage = AUTODECODING if "rotations" in state else AMORTIZED
        draws = None
        if stage == AUTODECODING:
            state, draws = self.final_poses(state)
        decoder, rots = self.write_outputs(stage, state, self.workdir)
        if distributed.is_writer():
            (self.workdir / "reconstruction.mrc").replace(self.workdir / "decoder.mrc")
        summary = {f"decoder_{k}": v for k, v in decoder.items() if k.startswith("fsc")}
        contrast = self.contrast_table(state) if stage != AMORTIZED else None
        summary.update(self.final_map(rots, np.asarray(self.current_poses(stage, state)[1]), contrast, draws))
        summary.update(evaluate.contrast_correlation(contrast, self.data.ground_truth_poses))
        if stage == AUTODECODING:
            summary.update(settling_summary(self.config, progress, self.planned_epochs[AUTODECODING]))
        summary.update(elapsed_s=self.elapsed(), n_particles=self.n, switch_rule=self.config.train.switch,
                       amortized_epochs_run=progress.get("amortized_epochs", 0), machine=runio.machine())
        runio.write_json(self.workdir / "summary.json", summary)
        logging.info("finished: %s", {k: (round(v, 4) if isinstance(v, float) else v) for k, v in summary.items()})
        return summary

    def final_map(self, rotations: np.ndarray, shifts_px: np.ndarray, contrast: np.ndarray | None = None,
                  draws: tuple | None = None) -> dict:
        """Write reconstruction.mrc (direct inversion at the final poses and, when fitted, contrasts; with
        ``draws`` from ``posterior_pass``, at each image's weighted posterior draws instead; the
        half-map FSC is then still that of the inversion at the final poses) and evaluate it. The map is
        made at the final box (``data.working_resolution_angstrom``: the stored one, finer than the working
        box the poses were found at); ``shifts_px`` are in pixels of the working box."""
        source = self.data.final
        shifts_px = shifts_px * (self.data.source.pixel_size_angstrom / source.pixel_size_angstrom)
        rec = inversion.reconstruct(source, rotations, shifts_px if self.uses_shifts else np.zeros_like(shifts_px),
                                    self.half_labels, self.inference_batch, contrast, draws=draws)
        pixel = source.pixel_size_angstrom
        volume = rec["map"]
        if self.config.model.get("volume_mask", False):  # the map the run worked with; half maps stay unmasked
            volume = volume * self.volume_mask(source)
        runio.write_volume(self.workdir / "reconstruction.mrc", volume, pixel)
        # unfiltered and unmasked, as RELION's PostProcess and local-resolution tools take them
        for half in ("half1", "half2"):
            runio.write_volume(self.workdir / f"reconstruction_{half}_unfil.mrc", rec[half], pixel)
        if distributed.is_writer():
            evaluate.write_fsc_csv(self.workdir / "fsc_halfmaps.csv", {"unmasked": rec["fsc_half"],
                                                                        "masked": rec["fsc_half_masked"]}, pixel)
        out = {"fsc0143_halfmaps_angstrom": evaluate.resolution_at(rec["fsc_half"], 0.143, pixel),
               "fsc0143_halfmaps_masked_angstrom": evaluate.resolution_at(rec["fsc_half_masked"], 0.143, pixel)}
        how = "direct inversion" if draws is None else f"direct inversion at {draws[1].shape[1]} weighted posterior draws per image"
        logging.info("final map by %s: half-map FSC 0.143 at %.2f A (soft mask %.2f A)", how,
                     out["fsc0143_halfmaps_angstrom"], out["fsc0143_halfmaps_masked_angstrom"])
        shifts_angstrom = shifts_px * pixel if self.uses_shifts else None
        # the final poses again, with the half sets of this map (rlnRandomSubset), and for cryoSPARC
        runio.write_poses(self.workdir / "poses.star", self.data.table, rotations,
                          None if shifts_angstrom is None else -shifts_angstrom, self.half_labels, cs_too=True,
                          contrast=contrast)
        out.update(evaluate.summarize(volume, rotations, pixel, self.data.ground_truth, self.data.ground_truth_poses,
                                      shifts_angstrom, pixel))
        return out
