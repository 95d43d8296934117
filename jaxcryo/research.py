"""Auto-decoding's global check: every image's pose against a fresh search with the current map.

Per-image Adam only refines locally, so an image that left the amortized stage at the wrong mode (a
pseudo-symmetric mate, or a coarse pose in the wrong basin) stays there. Every few auto-decoding
epochs each image's current pose is compared with the best pose of a hierarchical search
(``jaxcryo.search``) against the map as it now is, sharper than the amortized stage's; an image takes
the searched pose when it is more likely (lower loss) and lies more than ``min_move_deg`` away (local
polishing is Adam's job), and its Adam moments restart (their direction belonged to the old pose).
With ``train.research_mates`` each pose is then compared, the same way, with its mates under the map's
own pseudo-symmetry (``mate_poses``, ``jaxcryo.pseudosym``), which the random search rarely samples
closely enough and ranks at too low a frequency to tell apart.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxcryo import distributed, geometry, pseudosym, slicing, steps
from jaxcryo.dataset import on_devices
from jaxcryo.io.loader import chunks_read_ahead
from jaxcryo.search import SearchSettings

RESET_ON_MOVE = ("pose_m", "pose_v", "shift_m", "shift_v", "pose_count")


@dataclasses.dataclass(frozen=True)
class HalfMaps:
    """The two half sets' own maps, for judging a particle without its own noise: (N,) half-set labels
    in {1, 2} and each half's volume parameters (``train.research_half_maps``).

    A map made from all the images holds each image's own noise at the image's current pose, so that
    pose out-scores any other (a mate, a searched pose) by the noise it put there; the map of the other
    half set does not (RELION's gold-standard refinement keeps the halves apart for this reason)."""

    labels: np.ndarray
    half1: dict
    half2: dict

    def groups(self) -> list[tuple[np.ndarray, dict]]:
        """[(rows of half 1, half 2's map), (rows of half 2, half 1's map)]."""
        return [(np.nonzero(self.labels == 1)[0], self.half2), (np.nonzero(self.labels == 2)[0], self.half1)]


def research_due(config, epochs_done: int, n_epochs: int, progress: dict) -> bool:
    """After auto-decoding epoch ``epochs_done`` of ``n_epochs`` planned: every ``research_every_epochs``
    epochs, and also after the next epoch while the previous pass still moved at least
    ``research_repeat_fraction`` of the images (a particle whose amortized stage ended far off keeps
    being searched while it pays; an easy one pays for the fixed schedule only). Never after the last
    epoch the stage may run (``autodecoding_epochs_limit``): moved poses need an epoch of refining.
    Once a pass moved fewer than ``research_stop_fraction`` of the images the poses are settled in their
    basins and the fixed schedule stops too (a search costs about an epoch of steps)."""
    if epochs_done >= autodecoding_epochs_limit(config, n_epochs):
        return False
    train_config = config.train
    moved = progress.get("research_moved")
    if moved is not None and moved < float(train_config.get("research_stop_fraction", 0.0)):
        return False
    if epochs_done < n_epochs and epochs_done % int(train_config.research_every_epochs) == 0:
        return True
    repeat = float(train_config.get("research_repeat_fraction", 0.0))
    return repeat > 0 and (moved or 0.0) >= repeat


def enabled(train_config) -> bool:
    """Whether auto-decoding re-searches at all (``train.research_every_epochs`` and ``research_candidates``)."""
    return bool(train_config.get("research_every_epochs", 0) and train_config.get("research_candidates", 0))


def make_research(config, pixel_size_angstrom: float, mesh):
    """The re-search's jitted pose search (``steps.make_pose_search``) on the full box, or None when off:
    the best 2 of ``train.research_candidates`` global rotations (ranked up to
    ``research_global_radius`` x Nyquist), each refined by 3 local rounds from 10 deg."""
    tc = config.train
    if not enabled(tc):
        return None
    coarse = float(tc.get("research_global_radius", 0.0))
    return steps.make_pose_search(pixel_size_angstrom, config.loss.kind, mesh, SearchSettings(
        n_global=int(tc.research_candidates), top_k=2, n_local=int(tc.get("research_local", 8)), sigma_deg=10.0,
        rounds=3, global_radius=coarse if coarse < config.loss.radius_end else 0.0))


def autodecoding_epochs_limit(config, n_epochs: int) -> int:
    """The most auto-decoding epochs: ``train.epochs_autodecoding_max`` when it is larger than the planned
    ``n_epochs`` (and a re-search runs), else ``n_epochs``. When the encoder's heads alone proposed the
    amortized stage's poses (``model.search_candidates=0``), ``train.epochs_autodecoding_max_heads_only``
    takes its place when set: on a stack of thousands the heads leave the poses near random, and the
    re-search then does the ab initio itself, a capped share of the stack a pass (docs/results.md, "Pose inference
    across particles": a run stopped at 20 epochs still moving 4 % a pass at 42 deg median, and at 40
    ended at 3.3 deg)."""
    if not enabled(config.train):
        return n_epochs
    return max(n_epochs, int(config.train.get(_limit_option(config), 0)))


def _limit_option(config) -> str:
    """The option that sets auto-decoding's epoch limit for this run: the heads' own when they alone
    posed the amortized stage and it is set."""
    heads_only = (int(config.model.search_candidates) == 0
                  and int(config.train.get("epochs_autodecoding_max_heads_only", 0)))
    return "epochs_autodecoding_max_heads_only" if heads_only else "epochs_autodecoding_max"


def another_autodecoding_epoch(config, epochs_done: int, n_epochs: int, progress: dict) -> bool:
    """Whether auto-decoding runs epoch ``epochs_done`` + 1: always within the ``n_epochs`` planned; past
    them (up to ``autodecoding_epochs_limit``) only after a re-search at the end of ``epochs_done``,
    which ran because the one before still moved ``research_repeat_fraction`` of the images: while the
    search keeps finding better poses the map is still improving, and the images it moved need an epoch
    of refining. A particle whose poses settle early stops at ``n_epochs``."""
    if epochs_done < n_epochs:
        return True
    return (epochs_done < autodecoding_epochs_limit(config, n_epochs)
            and progress.get("research_epoch") == epochs_done)


def unsettled_at_limit(config, epochs_done: int, n_epochs: int, progress: dict) -> float | None:
    """The share of the images the last re-search moved when auto-decoding ended at its epoch limit
    (``autodecoding_epochs_limit``) with that pass still moving at least ``research_repeat_fraction`` of
    them: the search was still finding better poses, so the run stopped before its poses settled.
    None when it ended settled, or before its limit."""
    if not enabled(config.train):
        return None
    repeat = float(config.train.get("research_repeat_fraction", 0.0))
    moved = progress.get("research_moved")
    if epochs_done < autodecoding_epochs_limit(config, n_epochs) or repeat <= 0 or moved is None or moved < repeat:
        return None
    return float(moved)


def settling_summary(config, progress: dict, n_epochs: int) -> dict:
    """summary.json's record of how auto-decoding ended: the epochs it ran and, when it stopped at its
    limit still moving images, the share its last re-search moved (``unsettled_at_limit``; else null)."""
    return {"autodecoding_epochs_run": int(progress["epoch"]),
            "autodecoding_unsettled_fraction": unsettled_at_limit(config, int(progress["epoch"]), n_epochs, progress)}


def log_if_unsettled(config, epochs_done: int, n_epochs: int, progress: dict) -> None:
    """Say so when auto-decoding stopped at its limit still moving images (``unsettled_at_limit``), as the
    amortized stage says when it ends at its limit still moving: the figures may improve with more epochs."""
    moved = unsettled_at_limit(config, epochs_done, n_epochs, progress)
    if moved is None:
        return
    logging.warning("auto-decoding ends at its limit of %d epochs with its poses still moving: its last re-search "
                    "(and mate test) moved %.1f %% of the images (train.research_repeat_fraction %.0f %%); more "
                    "epochs (train.%s) may still improve the map and poses", epochs_done, 100 * moved,
                    100 * float(config.train.research_repeat_fraction), _limit_option(config))


def make_mate_test(config, pixel_size_angstrom: float, mesh):
    """The pseudo-symmetry mate test's jitted function (``steps.make_mate_test``), or None when
    ``train.research_mates`` is off or there is no re-search to go with."""
    if not (enabled(config.train) and config.train.get("research_mates", False)):
        return None
    return steps.make_mate_test(pixel_size_angstrom, config.loss.kind, mesh)


# a mate pass that moved fewer than this share of the images under the map's present symmetry is not
# repeated under it: in the 12 runs of the fifteenth to seventeenth sessions with several mate passes, no
# pass after one below 0.25 % moved more than 0.1 % (one after 0.8 % moved 1.0 %), and on a realistic
# near-cylinder six such passes cost ~3 min (docs/options.md)
MATES_SETTLED_FRACTION = 0.0025


def mates_due(train_config, research_moved: float, progress: dict, symmetry: Callable[[], dict]) -> bool:
    """Whether the mates are tested after a re-search that moved ``research_moved`` of the images: the
    first time; while the last mate pass still moved ``research_stop_fraction``; and while the map is
    still changing (that re-search moved at least ``research_repeat_fraction``; the symmetry a poor map
    shows is not the particle's), unless the last pass moved fewer than ``MATES_SETTLED_FRACTION`` and
    the map's pseudo-symmetry (``symmetry()``, called only then) is still the one it tested."""
    last = progress.get("mates_moved")
    if last is None or last >= float(train_config.get("research_stop_fraction", 0.0)):
        return True
    if research_moved < float(train_config.get("research_repeat_fraction", 0.0)):
        return False
    return last >= MATES_SETTLED_FRACTION or not pseudosym.same_symmetry(progress.get("mates_symmetry"), symmetry())


def mate_poses(mate_test, vol_params, tables: dict, source, batch_size: int, sharding, radius: float, key,
               refine_shifts: bool, sym: dict, halves: HalfMaps | None = None, judge=None,
               min_gain_nats: float = 0.0, move_cap: float = 1.0, count_min_deg: float = 0.0) -> tuple[dict, float]:
    """Every image's pose against its mates under the map's pseudo-symmetry ``sym``
    (``pseudosym.pseudo_symmetry`` of ``vol_params``: its rotations and its mirror plane): an image takes
    its best mate when that is more likely (under the other half's map with ``halves``). Returns the tables and the fraction moved.
    Without refined shifts the mates keep the image's shift (the tables could not hold another), so
    their centre correction is left out."""
    operators = jnp.asarray(sym["operators"], jnp.float32)
    centres = jnp.asarray(sym["centres_px"] if refine_shifts else np.zeros((len(operators), 3)), jnp.float32)

    def search(vol, batch, radius, key, rots, shifts):
        return mate_test(vol, batch, radius, key, rots, shifts, operators, centres)

    return research_poses(search, vol_params, tables, source, batch_size, sharding, radius, key, refine_shifts,
                          halves=halves, judge=judge, min_gain_nats=min_gain_nats, move_cap=move_cap,
                          count_min_deg=count_min_deg)


def damped(better: np.ndarray, cap: float, key) -> np.ndarray:
    """(N,) images more likely elsewhere -> (N,) those that move: all of them when they are at most
    ``cap`` of the N, else a random ``cap`` x N of them (each with probability cap x N / their number).

    Every image is judged against one map, and the map is then re-made from the new poses. When many
    images are better elsewhere at once (a pseudo-symmetric particle's assignment between its modes
    still mixed), moving them all makes a map that favours the old assignment, and the next pass moves
    them back: the whole assignment swings between passes. Bounding how much of the stack one pass may
    move keeps each new map mostly the old assignment's (a damped iteration); the images left behind
    are judged again at the next pass. Passes that move few images are not slowed."""
    wanted = int(better.sum())
    if wanted <= cap * len(better):
        return better
    draw = jax.random.uniform(jax.random.fold_in(key, 0x5ADE), (len(better),))
    return better & (np.asarray(draw) < cap * len(better) / wanted)


def per_image(fn, vol_params, tables: dict, source, batch_size: int, sharding, key,
              halves: HalfMaps | None = None) -> list[np.ndarray]:
    """``fn(vol, batch, key, rotations (B, 3, 3), shifts (B, 2))`` -> (B, ...) arrays, run over every image
    in padded chunks of ``batch_size``, each image with the map of the half set it is not in when
    ``halves`` is given (else ``vol_params``); returns the outputs as host arrays of N rows."""
    n = len(source.table)
    groups = [(np.arange(n), vol_params)] if halves is None else halves.groups()
    outputs = None
    for g, (group_rows, vol) in enumerate(groups):
        for start, idx, padded, host in chunks_read_ahead(source, group_rows, batch_size):
            batch = on_devices(source, host, sharding)
            rows = distributed.put_rows((tables["rotations"][padded], tables["shifts"][padded]), sharding)
            results = [distributed.to_host(x)[: len(idx)] for x in fn(vol, batch, jax.random.fold_in(key, g * n + start), *rows)]
            if outputs is None:
                outputs = [np.zeros((n,) + x.shape[1:], x.dtype) for x in results]
            for out, x in zip(outputs, results):
                out[idx] = x
    return outputs


def evidence_nats(current: np.ndarray, found: np.ndarray, image_size: int, radius: float) -> np.ndarray:
    """(N,) losses at the current and at the found pose -> (N,) log-likelihood ratios (nats) of found over
    current.

    The Gaussian loss is 0.5 x the mean over the M coefficients of the loss disc of (y - p)^2, so the
    log-likelihood of a pose is -M x loss / s^2 for noise of variance s^2 per coefficient. At the SNR of
    cryo-EM the residual is mostly noise, so s^2 is estimated from the data as 2 x the median current
    loss: no assumption about how the images were scaled."""
    m = float(np.sum(np.asarray(slicing.frequency_mask(image_size, radius))))
    noise_var = 2.0 * max(float(np.median(current)), 1e-12)
    return (np.asarray(current, np.float64) - np.asarray(found, np.float64)) * m / noise_var


def research_poses(pose_search, vol_params, tables: dict, source, batch_size: int, sharding, radius: float, key,
                   refine_shifts: bool, min_move_deg: float = 5.0, halves: HalfMaps | None = None,
                   judge=None, min_gain_nats: float = 0.0, move_cap: float = 1.0,
                   count_min_deg: float = 0.0) -> tuple[dict, float]:
    """Returns the pose tables (host arrays of N rows, ``steps.POSE_TABLES``) with moved images updated
    and the fraction of images moved, counting only moves longer than ``count_min_deg``
    (``train.research_count_min_deg``, what the schedule sees: ``research_due``).

    ``pose_search``: ``steps.make_pose_search``'s function (or anything with its arguments and outputs,
    as ``mate_poses`` makes); ``source``: the full-box ImageSource. With ``halves`` each image is
    searched and judged with the map of the half set it is not in, else with ``vol_params``; with
    ``halves`` and ``judge`` (``steps.make_pose_losses``' function) searched with ``vol_params`` and
    judged (found pose against current) with the other half's map (``train.research_judge_only``).
    An image moves only when the found pose is more likely by ``min_gain_nats`` (``evidence_nats``;
    ``train.research_min_gain_nats``): between near-equal poses (the mates of a pseudo-symmetric map)
    the noise picks a winner at random, and images that change sides every pass keep the map symmetric.
    At most ``move_cap`` of the images move (``train.research_move_cap``; a random subset of those that
    qualify, drawn with ``key``, so every process draws the same): see ``damped``.
    """
    found, found_shift, found_loss, current = per_image(
        lambda vol, batch, k, rot, shift: pose_search(vol, batch, radius, k, rot, shift),
        vol_params, tables, source, batch_size, sharding, key, None if judge is not None else halves)
    if judge is not None and halves is not None:
        pairs = {"rotations": np.stack([tables["rotations"], found], 1),
                 "shifts": np.stack([tables["shifts"], found_shift if refine_shifts else tables["shifts"]], 1)}
        (both,) = per_image(lambda vol, batch, k, rot, shift: judge(vol, batch, radius, rot, shift),
                            None, pairs, source, batch_size, sharding, key, halves)
        current, found_loss = both[:, 0], both[:, 1]
    rots, shifts = tables["rotations"].copy(), tables["shifts"].copy()
    distance_deg = np.asarray(geometry.geodesic_distance_deg(jnp.asarray(found), jnp.asarray(rots)))
    far = distance_deg > min_move_deg
    evidence = evidence_nats(current, found_loss, source.image_size, radius)
    better = (evidence > min_gain_nats) & far
    moved = damped(better, move_cap, key)
    if min_gain_nats > 0 or move_cap < 1:
        # what the margin and the damping held back: a run that stalls with most better poses unmoved says so here
        logging.info("%.1f %% of the images are more likely at a pose found more than %g deg away; %.1f %% by "
                     "more than the margin of %g nats (train.research_min_gain_nats); %.1f %% moved (at most "
                     "%g of the stack per pass, train.research_move_cap)%s", 100 * np.mean((evidence > 0) & far),
                     min_move_deg, 100 * better.mean(), min_gain_nats, 100 * moved.mean(), move_cap,
                     f", by a median gain of {np.median(evidence[moved]):.2f} nats" if moved.any() else "")
    rots[moved] = found[moved]
    if refine_shifts:
        shifts[moved] = found_shift[moved]
    new = dict(tables, rotations=rots, shifts=shifts)
    for name in RESET_ON_MOVE:
        new[name] = tables[name].copy()
        new[name][moved] = 0
    return new, float(np.mean(moved & (distance_deg > count_min_deg)))
