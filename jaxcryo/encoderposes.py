"""The encoder's poses for every image (the amortized stage's epoch outputs and the switch), mixed into
``jaxcryo.train.Run``: the winning head's pose, or the best of a search around the heads, read out in
inference mode in padded chunks of ``train.inference_batch_size``."""

from __future__ import annotations

import jax
import numpy as np

from jaxcryo import distributed
from jaxcryo.dataset import AMORTIZED
from jaxcryo.io.loader import chunks_read_ahead

_KEPT = ("rotations", "shifts", "winners", "loss", "heads")  # a kept pass 0, before the origins' re-centring


def _inference_inputs(state) -> list:
    """The arrays the encoder's poses depend on: a kept pass holds them, so equal identity means equal inputs."""
    return jax.tree_util.tree_leaves((state["enc_params"], state["batch_stats"], state["vol_params"]))


class EncoderPoses:
    """Every image's pose from the encoder; the pass over all N images is kept while the state is the same."""

    def encoder_rotations(self, state, radius: float, heads_for: np.ndarray | None = None, passes: int = 1,
                          rows: np.ndarray | None = None):
        """Winning-head rotation (n, 3, 3), its shift (n, 2) in pixels of the full box and winner
        index (n,) of every image of ``rows`` (default: all N, in table order); with ``heads_for`` (row
        indices) also every head's rotation for those rows, (len, M, 3, 3). With a search, ``passes`` > 1
        draws that many sets of random candidates and keeps each image's best pose of all of them.

        A single pass over all N images is kept while the state is the same: the switch comes right
        after the last epoch's (``end_of_epoch``) and takes it as its own pass 0."""
        bs = self.inference_batch
        full = rows is None
        rows = np.arange(self.n) if full else np.asarray(rows)
        rots, winners = np.zeros((len(rows), 3, 3), np.float32), np.zeros(len(rows), np.int64)
        shifts, best_loss = np.zeros((len(rows), 2), np.float32), np.full(len(rows), np.inf)
        to_full = self.data.source.image_size / self.data.coarse.image_size  # same shift in A, finer pixels
        passes = passes if self.config.model.search_candidates else 1  # without a search every pass is the same
        return_heads = heads_for is not None
        heads_for = self.switch_heads_rows() if full and heads_for is None else heads_for
        first = self._kept_first_pass(state, radius, heads_for) if full else None
        heads = None
        if heads_for is not None:  # only the sampled rows are kept: memory stays bounded for any N
            position = np.full(self.n, -1)
            position[heads_for] = np.arange(len(heads_for))
            heads = np.zeros((len(heads_for), self.config.model.n_heads, 3, 3), np.float32)
        if first is not None:
            rots[:], shifts[:], winners[:], best_loss[:], heads[:] = (first[k] for k in _KEPT)
        key = jax.random.key(self.config.seed + 7)
        todo = range(0 if first is None else 1, passes)
        for start, idx, padded, host in chunks_read_ahead(self.data.coarse, rows, bs) if len(todo) else ():
            batch = self.training_batch(host, AMORTIZED)
            for p in todo:  # pass 0 uses the key of a single pass: passes=1 is unchanged
                pass_key = jax.random.fold_in(key, start if p == 0 else self.n * p + start)
                r, t, w, all_heads, loss = (distributed.to_host(x)[: len(idx)] for x in self.encoder_inference(
                    state["enc_params"], state["batch_stats"], state["vol_params"], batch, radius, pass_key))
                better = loss < best_loss[start:start + len(idx)]
                at = start + np.nonzero(better)[0]
                rots[at], winners[at], shifts[at], best_loss[at] = r[better], w[better], t[better] * to_full, loss[better]
                if heads is not None:  # the heads do not depend on the search's candidates
                    keep = position[idx] >= 0
                    heads[position[idx][keep]] = all_heads[keep]
        if full and first is None and passes == 1:
            self._first_pass = dict(zip(_KEPT, (a.copy() for a in (rots, shifts, winners, best_loss, heads))),
                                    of=_inference_inputs(state), radius=radius, heads_for=heads_for)
        if self.pre_shift_angstrom is not None:  # the stage saw the images re-centred by these
            shifts += (self.pre_shift_angstrom[rows] / self.data.source.pixel_size_angstrom).astype(np.float32)
        return (rots, shifts, winners, heads) if return_heads else (rots, shifts, winners)

    def _kept_first_pass(self, state, radius: float, heads_for: np.ndarray) -> dict | None:
        kept, inputs = getattr(self, "_first_pass", None), _inference_inputs(state)
        if (kept is None or kept["radius"] != radius or not np.array_equal(kept["heads_for"], heads_for)
                or len(kept["of"]) != len(inputs) or any(a is not b for a, b in zip(kept["of"], inputs))):
            return None
        return kept

    def drop_kept_pass(self) -> None:
        self._first_pass = None

    def switch_heads_rows(self) -> np.ndarray:
        """The images whose every head's pose the switch keeps (amortized_heads.npz): at most 20,000."""
        return np.sort(np.random.default_rng(self.config.seed).permutation(self.n)[:20_000])
