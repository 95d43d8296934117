"""One epoch of either stage and the divergence guard, mixed into ``jaxcryo.train.Run``: the steps over
the stack, metrics and logging, the work between epochs (``jaxcryo.stages``), the epoch's outputs
(``jaxcryo.outputs``) and checkpoints that hold only states checked finite."""

from __future__ import annotations

import logging
import time

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from jaxcryo import distributed
from jaxcryo.dataset import AMORTIZED
from jaxcryo.io.loader import iterate_batches
from jaxcryo.research import another_autodecoding_epoch
from jaxcryo.stages import AUTODECODING, amortized_epochs_limit, pose_lr_scale, radius_at


class EpochLoop:
    """``run_epoch``, whether another one runs, and the guard around every checkpoint and restore."""

    def run_epoch(self, stage: str, state, progress: dict, n_epochs: int):
        config, tc = self.config, self.config.train
        epoch, start_step = progress["epoch"], progress["step"]
        step_fn = self.amortized_step if stage == AMORTIZED else self.autodecoding_step
        bar = tqdm(total=self.steps_per_epoch, initial=start_step, desc=f"{stage} {epoch + 1}/{max(n_epochs, epoch + 1)}",
                   unit="step", leave=False, dynamic_ncols=True, disable=not (config.progress_bar and distributed.is_writer()))
        winners = np.zeros(config.model.n_heads + (1 if config.model.search_candidates else 0), np.int64)
        losses_seen, t0, images_seen = [], time.perf_counter(), 0
        seed = config.seed + (0 if stage == AMORTIZED else 1000)
        first_step = self.steps_per_start if stage == AMORTIZED else 0  # the stage's first step after the starts
        first_window = epoch * self.steps_per_epoch + start_step == first_step  # time this epoch's first steps
        for step, batch in iterate_batches(self.data.source_for(stage), tc.batch_size, seed, epoch, start_step,
                                           blocks=1 if stage == AMORTIZED else self.blocks, max_steps=self.steps_per_epoch):
            radius = radius_at(config, stage, epoch + step / self.steps_per_epoch)
            extra = () if stage == AMORTIZED else (pose_lr_scale(tc, (epoch + step / self.steps_per_epoch) / n_epochs),)
            state, out = step_fn(state, self.training_batch(batch, stage), radius, *extra)
            images_seen += tc.batch_size
            bar.update(1)
            # the second window of the stage's first steps (after the starts, if any), compiled: its rate
            if first_window and step + 1 - start_step in (tc.log_every, 2 * tc.log_every):
                jax.block_until_ready(out["loss"])
                if step + 1 - start_step == tc.log_every:
                    window_start = time.perf_counter()
                else:
                    self.log_expected_time(stage, (time.perf_counter() - window_start) / tc.log_every, first_step)
            progress = dict(progress, stage=stage, epoch=epoch, step=step + 1, global_step=progress["global_step"] + 1)
            log_now = (step + 1) % tc.log_every == 0 or step + 1 == self.steps_per_epoch
            save_now = bool(tc.checkpoint_every_steps) and progress["global_step"] % tc.checkpoint_every_steps == 0
            if log_now or save_now:  # the only host syncs: a loss is checked before anything is kept
                loss = float(out["loss"])
                if not np.isfinite(loss):
                    self.stop(f"{stage} epoch {epoch + 1} step {step + 1}: loss is {loss}")
            if log_now:
                if "winner" in out:
                    winners += np.bincount(distributed.to_host(out["winner"]), minlength=len(winners))
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
        state, progress = self.between_epochs(stage, state, progress, n_epochs)
        self.check_finite(state, f"end of {stage} epoch {epoch + 1}")
        summary = self.end_of_epoch(stage, state, epoch + 1 + progress.get("amortized_epochs", 0))
        rate = images_seen / max(time.perf_counter() - t0, 1e-9)
        hist = f" winners {winners.tolist()}" if stage == AMORTIZED else ""
        why = "the poses still move" if stage == AMORTIZED else "the re-search still moves images"
        label = f"{epoch + 1}/{n_epochs}" if epoch < n_epochs else f"{epoch + 1} (past the {n_epochs} planned: {why})"
        logging.info("%s epoch %s: loss %.5f, %.0f images/s%s%s", stage, label,
                     np.mean(losses_seen) if losses_seen else float("nan"), rate, hist,
                     "".join(f", {k} {v:.3g}" for k, v in summary.items() if isinstance(v, float)))
        self.metrics.write({"stage": stage, "epoch": epoch + 1, "step": self.steps_per_epoch,
                            "global_step": progress["global_step"], "loss": float(np.mean(losses_seen or [np.nan])),
                            "elapsed_s": self.elapsed(), "images_per_s": rate, "epoch_end": True,
                            "winner_histogram": winners.tolist(), **summary})
        if stage == AMORTIZED:  # decided before the save: a run killed before its switch resumes at the switch
            progress = dict(progress, switch_due=self.should_switch(progress["epoch"]))
        self.save(state, progress, f"end of {stage} epoch {epoch + 1}")
        return state, progress

    def stop(self, what: str):
        """Stop a diverged run; the checkpoints hold only states that were checked finite."""
        latest = self.checkpoints.latest_progress()
        kept = (f"the last good checkpoint (global step {latest['global_step']}) in {self.workdir / 'checkpoints'} "
                "is kept" if latest else "no checkpoint had been written yet")
        raise FloatingPointError(f"{what}; stopping ({kept}; lower the learning rates)")

    def check_finite(self, state, what: str) -> None:
        bad = int(_count_non_finite(state))
        if bad:
            self.stop(f"{what}: the model holds {bad} non-finite values")

    def save(self, state, progress: dict, what: str) -> None:
        self.check_finite(state, what)
        self.checkpoints.save(state, self.stamp(progress))

    def stamp(self, progress: dict) -> dict:
        return dict(progress, elapsed_s=self.elapsed(), processes=distributed.process_count(),
                    pose_table_rows=self.table_rows, estimate_shifts=self.estimate_shifts)

    def elapsed(self) -> float:
        return self.elapsed_before + time.perf_counter() - self.start_time

    def another_epoch(self, stage: str, progress: dict, n_epochs: int) -> bool:
        """Whether ``stage`` runs another epoch: the planned ones; in auto-decoding those the re-search
        still asks for (``research.another_autodecoding_epoch``); in the amortized stage, while its switch
        is not due, up to ``stages.amortized_epochs_limit`` (the caller stops at a due switch)."""
        if stage == AUTODECODING and self.research is not None:
            return another_autodecoding_epoch(self.config, progress["epoch"], n_epochs, progress)
        if stage == AMORTIZED:
            return progress["epoch"] < amortized_epochs_limit(self.config.train, self.steps_per_epoch, n_epochs,
                                                              self.config.model.fully_amortized)
        return progress["epoch"] < n_epochs

    def restore(self, progress: dict):
        """The state of the latest checkpoint, placed for this run's devices (the pose tables re-padded
        when it was saved with another device count)."""
        if progress["stage"] == AMORTIZED:
            abstract = jax.eval_shape(self.init_amortized)
            abstract = jax.tree_util.tree_map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=self.replicated),
                                              abstract)
            return self.checkpoints.restore_state(abstract)
        stored_rows = int(progress.get("pose_table_rows", self.n))  # N before the tables were sharded
        state = self.checkpoints.restore_state(self.abstract_autodecoding(stored_rows))
        if stored_rows != self.table_rows:  # saved with another device count: re-pad for this one
            state = dict(state, **self.place_tables(self.host_tables(state)))
        return state


@jax.jit
def _count_non_finite(state) -> jax.Array:
    """Non-finite values in every floating leaf of ``state``, counted in one program (not one per leaf)."""
    return sum(jnp.sum(~jnp.isfinite(x)) for x in jax.tree_util.tree_leaves(state)
               if jnp.issubdtype(x.dtype, jnp.floating))
