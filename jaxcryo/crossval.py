"""Which of several pose sets do the images support: each set scored on images its map has not seen.

A pose set's own map always fits its own images (the map holds their noise), so two solutions of one
stack — two runs, two programs, or a run against the simulator's truth — are compared here the way
RELION keeps its half sets apart: each half set's images are scored under the map of the *other* half
set, inverted from that pose set (``inversion.reconstruct``, each half Wiener-filtered with its own
SSNR). Given poses are rarely each image's most likely pose under that map (a simulator's true poses
never are), so each scored image's pose is first refined locally against it (``search.local_refine``);
the maps are not rebuilt from the refined poses, so no image's noise reaches the map it is scored
under. The score is the mean per-image loss (``losses.per_image_loss``: half the squared residual per
Fourier coefficient); a lower score is a map and poses that predict unseen images better.

The halves are independent only if the poses were found with them kept apart: a gold-standard
refinement (``halfsets=True``, RELION's auto-refine; each file's rlnRandomSubset is used) or a
simulator's truth. An ordinary run fits every pose against a map of all the images, so its half maps
share noise and its score is flattered: every ordinary zoo run measured scores better than its own
true poses, the quickstart-like ring:0 by 2.8e-5 per image and elongated:0 by 4.8e-4 (docs/results.md, "Measured").
"""

from __future__ import annotations

import dataclasses
import functools
import json
import pathlib

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxcryo import dataset, evaluate, inversion, losses, models, search, steps
from jaxcryo.dataset import on_devices
from jaxcryo.io import read_particles
from jaxcryo.io.loader import chunks_read_ahead, half_set_labels
from jaxcryo.io.table import InputError

REFINE_CANDIDATES = 16  # local candidates per round
REFINE_SIGMA_DEG = 3.0  # first round's spread, halved each round
REFINE_ROUNDS = 4


@dataclasses.dataclass(frozen=True)
class Score:
    """(N,) per-image losses under the other half's map, the (N, 3, 3) rotations scored (refined), and
    the half maps' FSC 0.143 (A)."""

    losses: np.ndarray
    rotations: np.ndarray
    fsc0143_halfmaps_angstrom: float


def _other_half_volumes(source, rotations, shifts_px, labels, batch_size) -> tuple[dict, float]:
    """{half: volume (run units) of the other half set}, and the half maps' FSC 0.143 (A)."""
    rec = inversion.reconstruct(source, rotations, shifts_px, labels, batch_size, filtered_halves=True, full_map=False)
    vols = {1: models.hartley_from_map(jnp.asarray(rec["half2_filtered"])),
            2: models.hartley_from_map(jnp.asarray(rec["half1_filtered"]))}
    return vols, evaluate.resolution_at(rec["fsc_half"], 0.143, source.pixel_size_angstrom)


@functools.lru_cache(maxsize=8)  # one pair of programs per pixel size, not per pose set scored
def _make_scorers(pixel_size_angstrom: float):
    @jax.jit
    def score(vol_h, batch, rots, shifts):
        target, ctf, mask = steps.batch_targets(batch, pixel_size_angstrom, 1.0)
        return losses.loss_at(vol_h, rots, ctf, target, mask, shifts_px=shifts)

    @jax.jit
    def refine(vol_h, batch, rots, shifts, key):
        target, ctf, mask = steps.batch_targets(batch, pixel_size_angstrom, 1.0)
        found, loss, _ = search.local_refine(vol_h, rots[:, None], ctf, target, mask, key, REFINE_CANDIDATES,
                                             REFINE_SIGMA_DEG, REFINE_ROUNDS, shifts[:, None])
        return found, loss

    return score, refine


def score_poses(source, rotations: np.ndarray, shifts_px: np.ndarray, labels: np.ndarray, sharding,
                batch_size: int = 128, refine: bool = True, seed: int = 0) -> Score:
    """Score one pose set: ``rotations`` (N, 3, 3), ``shifts_px`` (N, 2) in pixels of ``source``'s box,
    ``labels`` (N,) half sets in {1, 2}; with ``refine`` each image's pose is refined locally against the
    other half's map before it is scored (the shifts stay as given)."""
    score, local = _make_scorers(float(source.pixel_size_angstrom))
    rotations = np.array(rotations, np.float32)
    shifts_px = np.asarray(shifts_px, np.float32)
    key = jax.random.PRNGKey(seed)
    vols, fsc0143 = _other_half_volumes(source, rotations, shifts_px, labels, batch_size)
    out = np.zeros(len(rotations))
    for half in (1, 2):
        for start, idx, padded, host in chunks_read_ahead(source, np.nonzero(labels == half)[0], batch_size):
            batch = on_devices(source, host, sharding)
            rots, shifts = jnp.asarray(rotations[padded]), jnp.asarray(shifts_px[padded])
            if refine:
                found, loss = local(vols[half], batch, rots, shifts, jax.random.fold_in(key, start * 2 + half))
                rotations[idx] = np.asarray(found)[: len(idx)]
            else:
                loss = score(vols[half], batch, rots, shifts)
            out[idx] = np.asarray(loss)[: len(idx)]
    return Score(out, rotations, fsc0143)


def compare(scores: dict[str, Score], baseline: str) -> dict[str, dict]:
    """Each set's mean loss and its paired difference from ``baseline``'s (mean and standard error over
    images; negative: the images support that set better)."""
    base = scores[baseline].losses
    rows = {}
    for name, s in scores.items():
        diff = s.losses - base
        rows[name] = {"mean_loss": float(s.losses.mean()), "difference": float(diff.mean()),
                      "difference_se": float(diff.std() / np.sqrt(len(diff))),
                      "fsc0143_halfmaps_angstrom": s.fsc0143_halfmaps_angstrom}
    return rows


def _pose_sets(workdir: pathlib.Path, others: list[str], n: int, pixel: float, seed: int) -> dict:
    """{name: (rotations (N, 3, 3), shifts (N, 2) px, half-set labels (N,))}: the run's poses.star,
    RUN/data's true poses when present, and ``others``. Each file's own half sets (rlnRandomSubset, as
    a gold-standard refinement writes them) are kept, else the run's seeded split."""
    paths = {"run": workdir / "poses.star"}
    truth = workdir / "data" / "ground_truth_poses.star"
    if truth.exists():
        paths["truth"] = truth
    paths.update({pathlib.Path(p).name: pathlib.Path(p) for p in others})
    sets = {}
    for name, path in paths.items():
        if not path.exists():
            raise InputError(f"{path}: no such pose file")
        table = read_particles(str(path))
        if len(table) != n or table.euler_deg is None:
            raise InputError(f"{path}: need {n} rows with poses (the run's particles, in order), got {len(table)}")
        sets[name] = (table.rotations(), table.displacements_px(pixel), half_set_labels(table, seed))
    return sets


def score_workdir(workdir, others: list[str] = (), refine: bool = True) -> dict[str, dict]:
    """``compare`` of a finished run's poses (baseline "run"), its simulated true poses ("truth", when
    RUN/data holds them) and the pose files ``others`` of the same particles (``score_poses``); with
    true poses each row also has "pose_error_median_deg" of the poses scored (after global alignment)."""
    workdir = pathlib.Path(workdir)
    if not (workdir / "config.json").exists():
        raise InputError(f"{workdir}: not a run's work directory (no config.json)")
    try:
        config = ml_collections.ConfigDict(json.loads((workdir / "config.json").read_text()))
    except ValueError:
        raise InputError(f"{workdir / 'config.json'}: unreadable; this work directory holds a damaged run") from None
    config.progress_bar = False
    data = dataset.prepare_data(config, workdir, log=lambda *a: None)
    sets = _pose_sets(workdir, list(others), len(data.table), data.source.pixel_size_angstrom, config.seed)
    sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    scores = {name: score_poses(data.source, r, s, labels, sharding, refine=refine) for name, (r, s, labels) in sets.items()}
    rows = compare(scores, "run")
    if "truth" in sets:
        for name, row in rows.items():
            aligned = evaluate.align_poses(scores[name].rotations.astype(np.float64), sets["truth"][0].astype(np.float64))
            row["pose_error_median_deg"] = float(np.median(aligned["rotation_error_deg"]))
    return rows
