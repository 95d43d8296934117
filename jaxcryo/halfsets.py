"""Gold-standard half sets: two independent reconstructions, aligned, compared and combined.

WORKDIR/halfsets/half{1,2}.star   the split (rlnRandomSubset when the input has it, else seeded) — saved
WORKDIR/half1/, WORKDIR/half2/    two ordinary, independently resumable runs on the halves (at the same
                                  time on separate devices when there are two or more)
WORKDIR/reconstruction.mrc        (half 1 + half 2 aligned onto half 1) / 2
WORKDIR/poses.star                every particle's pose in half 1's frame, with rlnRandomSubset
WORKDIR/halfsets/fsc.csv          FSC between the aligned half maps (unmasked, soft mask)
WORKDIR/summary.json              resolution at FSC 0.143, the alignment, and each half's summary

Half 2's poses in half 1's frame: the alignment says aligned(p) = W(Q^T (p - t)) ~ V_1(p), with W = V_2
or V_2 mirrored (poses M R M). Then R_1 = R_W Q^T, and the translation t moves each particle's
projection by (R_1 t)_xy: (R_1 t)_xy * pixel size is added to the particle's own rlnOriginXAngst/YAngst
(its estimated shift; a mirror leaves images, hence shifts, unchanged).
"""

from __future__ import annotations

import concurrent.futures
import copy
import logging
import pathlib

import jax
import jax.numpy as jnp
import numpy as np

from jaxcryo import align, evaluate, frames, geometry, runio
from jaxcryo.io import read_particles, read_poses, read_volume, write_mrc
from jaxcryo.io.loader import half_set_labels
from jaxcryo.io.star import write_particles_star

GIVEN_POSES = ("poses", "start_poses")  # pose files of every particle: each half run gets its own rows


def split(config, workdir: pathlib.Path, particles: str, gt_poses: str | None):
    """Write the two halves' stars (and true-pose stars when known, and each half's rows of the pose
    files the config gives: ``config.poses``, ``config.start_poses``).

    Returns (per-half dicts with rows, particles, gt_poses, the given pose files by config key, datadir;
    the full table; the labels)."""
    table = read_particles(particles, config.data.datadir or None, config.data.pixel_size_angstrom or None)
    labels = half_set_labels(table, config.seed)
    given = {key: read_poses(config[key], len(table)) for key in GIVEN_POSES if config.get(key)}  # before writing
    out = workdir / "halfsets"
    out.mkdir(parents=True, exist_ok=True)
    truth = read_particles(gt_poses) if gt_poses else None
    halves = []
    for half in (1, 2):
        rows = np.nonzero(labels == half)[0]

        def own_rows(name: str, poses) -> str:  # this half's rows of a per-particle table, written once
            path = out / f"half{half}_{name}.star"
            if not path.exists():
                write_particles_star(path, poses.subset(rows))
            return str(path)

        star = out / f"half{half}.star"
        if not star.exists():
            write_particles_star(star, table.subset(rows), random_subset=np.full(len(rows), half))
        entry = {"rows": rows, "particles": str(star), "gt_poses": "" if truth is None else own_rows("ground_truth_poses", truth)}
        entry.update({key: own_rows(key, poses) for key, poses in given.items()})
        halves.append(entry)
    # image names stay as in the input: stacks are found through datadir = the input's folder
    datadir = config.data.datadir or str(pathlib.Path(particles).resolve().parent)
    return [dict(h, datadir=datadir) for h in halves], table, labels


def device_groups(devices, n_groups: int = 2) -> list | None:
    """Split devices into n_groups equal groups for concurrent runs; None when there are too few."""
    devices = list(devices)
    per_group = len(devices) // n_groups
    if per_group == 0:
        return None
    return [devices[i * per_group : (i + 1) * per_group] for i in range(n_groups)]


def run_halfsets(config, workdir: pathlib.Path, train_fn, data, devices=None) -> dict:
    """Both half-set runs, then ``combine``. ``data``: ``train.checked_data``'s, which simulated into
    WORKDIR/data when no particles were given. With two or more devices the halves run at the same
    time, each on its own half of the devices; with one they run one after the other."""
    particles = config.data.particles or str(workdir / "data" / "particles.star")
    halves, table, labels = split(config, workdir, particles, data.ground_truth_poses)
    configs = []
    for half, entry in enumerate(halves, start=1):
        cfg = copy.deepcopy(config)
        cfg.halfsets = False
        cfg.data.particles, cfg.data.datadir = entry["particles"], entry["datadir"]
        cfg.eval.ground_truth = data.ground_truth or ""
        cfg.eval.ground_truth_poses = entry["gt_poses"]
        for key in GIVEN_POSES:
            if key in entry:
                cfg[key] = entry[key]
        configs.append(cfg)
    groups = device_groups(devices if devices is not None else jax.local_devices())
    if groups is None:
        summaries = []
        for half, cfg in enumerate(configs, start=1):
            logging.info("half set %d: %d particles", half, len(halves[half - 1]["rows"]))
            summaries.append(train_fn(cfg, workdir / f"half{half}", devices))
    else:
        logging.info("half sets 1 and 2 (%d, %d particles) run concurrently on devices %s and %s",
                     len(halves[0]["rows"]), len(halves[1]["rows"]), *[[d.id for d in g] for g in groups])
        with runio.one_save_at_a_time(), concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
            futures = [pool.submit(train_fn, cfg, workdir / f"half{half}", group)
                       for half, (cfg, group) in enumerate(zip(configs, groups), start=1)]
            summaries = [f.result() for f in futures]
    return combine(workdir, table, labels, halves, summaries, data.ground_truth)


def combine(workdir: pathlib.Path, table, labels, halves, summaries, ground_truth) -> dict:
    map1, pixel = read_volume(workdir / "half1" / "reconstruction.mrc")
    map2, _ = read_volume(workdir / "half2" / "reconstruction.mrc")
    alignment = align.align_volumes(map2, map1)
    map2_aligned = align.apply_alignment(map2, alignment)
    curves = evaluate.fsc_curves(map1, map2_aligned)
    evaluate.write_fsc_csv(workdir / "halfsets" / "fsc.csv", curves, pixel)
    write_mrc(workdir / "reconstruction.mrc", 0.5 * (map1 + map2_aligned), pixel)

    rotations = np.zeros((len(table), 3, 3), np.float32)
    origins = np.zeros((len(table), 2))
    for half, entry in enumerate(halves, start=1):
        poses = read_particles(workdir / f"half{half}" / "poses.star", entry["datadir"])
        r = poses.rotations()
        if poses.origin_angstrom is not None:  # estimated per-image shifts
            origins[entry["rows"]] = poses.origin_angstrom
        if half == 2:
            if alignment.mirrored:
                r = frames.MIRROR @ r @ frames.MIRROR
            r = r @ alignment.rotation.T.astype(np.float32)
            origins[entry["rows"]] += (r @ alignment.shift_voxels.astype(np.float32))[:, :2] * pixel
        rotations[entry["rows"]] = r
    euler = np.asarray(geometry.matrix_to_euler(jnp.asarray(rotations)), np.float64)
    write_particles_star(workdir / "poses.star", table, euler_deg=euler, origin_angstrom=origins, random_subset=labels)
    summary = {
        "fsc0143_halfmaps_unmasked_angstrom": evaluate.resolution_at(curves["unmasked"], 0.143, pixel),
        "fsc0143_halfmaps_masked_angstrom": evaluate.resolution_at(curves["masked"], 0.143, pixel),
        "half2_to_half1": {"mirrored": alignment.mirrored, "shift_voxels": alignment.shift_voxels.tolist(),
                           "rotation": alignment.rotation.tolist(), "score": alignment.score},
        "half1": summaries[0], "half2": summaries[1],
    }
    if ground_truth:
        gt, _ = read_volume(ground_truth)
        combined = 0.5 * (map1 + map2_aligned)
        if gt.shape == combined.shape:
            to_truth = align.align_volumes(combined, gt)
            curve = evaluate.fsc(align.apply_alignment(combined, to_truth), gt)
            summary["fsc05_combined_vs_truth_angstrom"] = evaluate.resolution_at(curve, 0.5, pixel)
    runio.write_json(workdir / "summary.json", summary)
    logging.info("half maps: FSC 0.143 at %.2f A (soft mask %.2f A)", summary["fsc0143_halfmaps_unmasked_angstrom"],
                 summary["fsc0143_halfmaps_masked_angstrom"])
    return summary
