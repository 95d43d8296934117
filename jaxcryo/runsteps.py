"""The jitted steps of a run, built for the kind of shift estimate it makes. A mixin of ``train.Run``:
a run may change kind once its amortized starts are scored (``jaxcryo.starts``), so the steps that
depend on it are built here rather than once in ``Run.__init__``."""

from __future__ import annotations

import numpy as np

from jaxcryo import models, steps
from jaxcryo.search import SearchSettings


class RunSteps:
    """The encoder, the amortized and auto-decoding steps and the encoder's inference pass."""

    def use_shifts(self, estimate: bool) -> None:
        """Build the steps for a run that estimates in-plane shifts (``estimate``) or takes the particles as
        centred: the encoder's shift heads, the search's offsets and auto-decoding's shift step. Called
        again when an amortized start of the other kind is trained or chosen (``jaxcryo.starts``) or a
        resumed run's checkpoint says which kind was chosen; a call for the kind already built does nothing."""
        if getattr(self, "estimate_shifts", None) == estimate:
            return
        config, mc, tc = self.config, self.config.model, self.config.train
        px, px_coarse, lk = self.data.source.pixel_size_angstrom, self.data.coarse.pixel_size_angstrom, config.loss.kind
        self.estimate_shifts = estimate
        # the amortized stage's own shift estimate (shift heads, offsets in its search), or none: it then
        # takes the particles as centred (or centred by their origins) and auto-decoding finds the shifts
        self.amortized_shifts = estimate and bool(mc.get("amortized_shifts", True))
        self.encoder = models.PoseEncoder(mc.n_heads, mc.width, steps.AXIS, self.amortized_shifts)
        self.infer_encoder = models.PoseEncoder(mc.n_heads, mc.width, None, self.amortized_shifts)
        settings = SearchSettings.from_config(mc, self.amortized_shifts)
        self.amortized_step = steps.make_amortized_step(self.encoder, self.enc_opt, self.vol_opt, px_coarse, lk, self.mesh,
                                                        settings, mc.distill_weight, config.seed, mc.max_shift_fraction,
                                                        config.loss.wta_relax)
        self.encoder_inference = steps.make_encoder_inference(self.infer_encoder, px_coarse, lk, self.mesh, settings,
                                                              mc.max_shift_fraction)
        self.uses_shifts = (estimate or self.pre_shift_angstrom is not None
                            or (self.known is not None and bool(np.any(self.known[1]))))
        pose_iters = 0 if self.known_poses else tc.pose_iters
        vol_iters = 0 if self.inverted_volume else tc.vol_iters
        self.autodecoding_step = steps.make_autodecoding_step(self.vol_opt_ad, px, lk, pose_iters, vol_iters,
                                                              tc.lr_pose, self.mesh, tc.lr_shift if estimate else 0.0,
                                                              self.contrast_prior_std)
        self.drop_kept_pass()
