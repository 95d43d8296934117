"""What the automatic switch to auto-decoding watches: the pose change of a fixed sample of images
between amortized epochs (``train.switch='auto'``), mixed into ``jaxcryo.train.Run`` through
``jaxcryo.outputs.RunOutputs``. The sample's poses are kept on disk (WORKDIR/switch_poses/), so a
resumed run compares with the epoch before the interruption."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from jaxcryo import distributed, geometry

SWITCH_SAMPLE = 5_000  # images whose pose change the automatic switch follows (a median: 5,000 pin it to ~0.1 deg)


class SwitchWatch:
    """Needs ``self.n``, ``self.config.seed`` and ``self.workdir``."""

    def switch_sample_rows(self) -> np.ndarray:
        """The images whose poses the automatic switch follows: all of them up to SWITCH_SAMPLE, else
        a seeded sample of that many."""
        if self.n <= SWITCH_SAMPLE:
            return np.arange(self.n)
        return np.sort(np.random.default_rng([self.config.seed, 17]).permutation(self.n)[:SWITCH_SAMPLE])

    def pose_change(self, epoch: int, sample: np.ndarray, moved_deg: float, back: int = 1) -> dict:
        """{"pose_change_median_deg", "pose_change_moved_fraction" (the share that moved more than
        ``moved_deg``)} against the sample poses of ``back`` epochs before, which are kept in
        WORKDIR/switch_poses/ (so a resumed run sees them too); {} before there are any.

        ``back`` > 1 (``train.switch_window_steps``) compares poses as many steps apart on a small stack
        as on a large one: its short epochs move each pose less, so one epoch's change would call the
        poses settled while they still travel (2,000 realistic images switched at 61 deg and failed)."""
        folder = self.workdir / "switch_poses"
        if distributed.is_writer():
            folder.mkdir(exist_ok=True)
            tmp = folder / f"epoch_{epoch:03d}.tmp.npy"
            np.save(tmp, sample)
            tmp.replace(folder / f"epoch_{epoch:03d}.npy")
            for old in folder.glob("epoch_*.npy"):
                if old.name < f"epoch_{epoch - back:03d}.npy":
                    old.unlink()
        distributed.barrier(f"switch poses {epoch}")
        previous = folder / f"epoch_{epoch - back:03d}.npy"
        if not previous.exists():
            return {}
        change = geometry.geodesic_distance_deg(jnp.asarray(np.load(previous)), jnp.asarray(sample))
        return {"pose_change_median_deg": float(jnp.median(change)),
                "pose_change_moved_fraction": float(jnp.mean(change > moved_deg))}
