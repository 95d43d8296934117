"""The final poses, after auto-decoding's last epoch and before the final map: the held-out descent
(``train.heldout_steps``, ``jaxcryo.heldout``), then the posterior pass (``train.posterior_mean_poses``,
``train.posterior_map_draws``, ``jaxcryo.posemean``). A mixin of ``train.Run``: it reads the run's
config, data, mesh and pose tables. Neither is checkpointed: a run killed during them resumes from
auto-decoding's last checkpoint and makes them again, the same way (their draws are seeded)."""

from __future__ import annotations

import logging

import jax
import jax.numpy as jnp
import numpy as np

from jaxcryo import evaluate, geometry, heldout
from jaxcryo.research import per_image


class FinalPoses:
    """What happens to the poses between the last auto-decoding epoch and the final map."""

    def final_poses(self, state) -> tuple[dict, tuple | None]:
        """The state with its final rotations, and the posterior draws for the final map (or None)."""
        if self.heldout_passes is not None:
            state = self.heldout_pass(state)
        if self.posterior_mean is None:
            return state, None
        return self.posterior_pass(state)

    def heldout_pass(self, state) -> dict:
        """``train.heldout_steps`` steps down the held-out likelihood (``jaxcryo.heldout``): the state with
        its rotations moved; shifts and contrasts as they were."""
        tc = self.config.train
        start, shifts, contrast = self.inversion_poses(state)  # the stage inverts as the run's inversions do
        mask = self.volume_mask(self.data.source) if self.config.model.get("volume_mask", False) else None
        truth = self.data.ground_truth_poses
        truth_error = (lambda r: evaluate.pose_errors(r, truth)[1]["pose_error_median_deg"]) if truth else None
        n_steps = int(tc.heldout_steps)
        report = heldout.log_step(start, n_steps, truth_error)
        rotations = heldout.refine(self.heldout_passes, self.data.source, start, shifts, contrast,
                                   heldout.step_rates(float(tc.heldout_lr_rad), n_steps, float(tc.heldout_lr_final_fraction)),
                                   self.config.seed,
                                   self.inference_batch, (self.batch_sharding, self.replicated),
                                   None if mask is None else jnp.asarray(mask, jnp.float32), report)
        return dict(state, **self.place_tables({"rotations": rotations}))

    def posterior_pass(self, state) -> tuple[dict, tuple | None]:
        """The posterior pass (``jaxcryo.posemean``; each image judged with the map of the half set it is
        not in). Returns the state, with every rotation replaced by its posterior mean under
        ``train.posterior_mean_poses`` (else as it was), and with ``train.posterior_map_draws`` > 0 the
        draws the final map is made from: (the most likely rotations (N, 3, 3), offsets (N, T, 3),
        weights (N, T)), else None."""
        tables = self.host_tables(state, ("rotations", "shifts"))
        means, effective, omega, weights = per_image(self.posterior_mean, state["vol_params"], tables, self.data.source, self.posterior_batch,
                                     self.batch_sharding, jax.random.key(self.config.seed + 13), self.half_maps(state))
        moved = np.asarray(geometry.geodesic_distance_deg(jnp.asarray(means), jnp.asarray(tables["rotations"])))
        use_means = bool(self.config.train.get("posterior_mean_poses", False))
        logging.info("posterior-mean poses%s: %.2f deg (median) from the most likely ones; %.1f effective draws "
                     "of %d (median)", "" if use_means else " (not written: train.posterior_mean_poses is off)",
                     float(np.median(moved)), float(np.median(effective)), int(self.config.train.posterior_samples))
        draws = None
        if int(self.config.train.get("posterior_map_draws", 0)) > 0:
            draws = (tables["rotations"], omega, weights)
        if not use_means:
            return state, draws
        return dict(state, **self.place_tables({"rotations": means.astype(np.float32)})), draws

