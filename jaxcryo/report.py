"""Evaluation report of a finished (or running) work directory: numbers, CSV curves and figures.

``evaluate_workdir(workdir, ground_truth, ground_truth_poses)`` writes ``WORKDIR/eval/``:
report.json, fsc.csv, and (with matplotlib, ``pip install 'jaxcryo[plots]'``) fsc.png, map_views.png,
pose_error_per_epoch.png, resolution_vs_time.png, winner_histogram.png.
"""

from __future__ import annotations

import json
import pathlib

import jax.numpy as jnp
import numpy as np

from jaxcryo import align, evaluate, fourier, posterior, runio
from jaxcryo.io import check_stacks, read_particles, read_volume, write_mrc
from jaxcryo.io.loader import ImageSource


def _landscapes(workdir: pathlib.Path, volume: np.ndarray, pixel: float, pose_alignment, ground_truth_poses,
                n_particles: int = 4) -> dict:
    """Per-head errors over view directions (needs true poses) and view log-posteriors of a few
    particles, from the heads saved at the stage switch (``amortized_heads.npz``)."""
    path = workdir / "amortized_heads.npz"
    if not path.exists():
        return {}
    saved = np.load(path, allow_pickle=False)
    rows, heads = saved["rows"], saved["heads"]
    out = {}
    if pose_alignment is not None:
        truth = read_particles(ground_truth_poses)
        r_true = truth.rotations(rows)
        out["head_errors"] = posterior.per_head_error_maps(heads, r_true, pose_alignment["q"], pose_alignment["mirrored"])
    config = json.loads((workdir / "config.json").read_text())
    particles = config["data"]["particles"] or str(workdir / "data" / "particles.star")
    table = read_particles(particles, config["data"]["datadir"] or None, config["data"]["pixel_size_angstrom"] or None)
    source = ImageSource(table, check_stacks(table), volume.shape[0], config["data"]["invert_contrast"])
    source.estimate_normalization(seed=config["seed"])  # the training run's scaling
    pick = rows[:n_particles]
    volume_h = fourier.ht(jnp.asarray(volume), 3) / volume.shape[0]  # inverse of runio.volume_to_real
    ctf_params = {k: jnp.asarray(v, jnp.float32) for k, v in table.ctf_params(pick).items()}
    out["log_posterior"] = posterior.view_log_posterior(volume_h, source.read(pick), ctf_params, source.pixel_size_angstrom)
    out["head_views"] = heads[:n_particles, :, 2, :]
    out["final_views"] = read_particles(workdir / "poses.star").rotations(pick)[:, 2, :]
    return out


def evaluate_workdir(workdir, ground_truth: str | None = None, ground_truth_poses: str | None = None) -> dict:
    workdir = pathlib.Path(workdir)
    out_dir = workdir / "eval"
    out_dir.mkdir(exist_ok=True)
    if ground_truth is None and (workdir / "data" / "ground_truth.mrc").exists():
        ground_truth = str(workdir / "data" / "ground_truth.mrc")
    if ground_truth_poses is None and (workdir / "data" / "ground_truth_poses.star").exists():
        ground_truth_poses = str(workdir / "data" / "ground_truth_poses.star")
    volume, pixel = read_volume(workdir / "reconstruction.mrc")
    report: dict = {"workdir": str(workdir), "pixel_size_angstrom": pixel, "box": volume.shape[0]}
    pose_alignment = None
    if ground_truth_poses:
        poses = read_particles(workdir / "poses.star")
        pose_alignment, figures = evaluate.pose_errors(poses.rotations(), ground_truth_poses,
                                                       poses.displacements_angstrom(), pixel)
        figures["hand_mirrored"] = figures.pop("mirrored")
        report.update(figures)
    curves = {}
    if ground_truth:
        gt, _ = read_volume(ground_truth)
        if pose_alignment is not None:  # the poses fix the rotation and hand; the FFT peak the shift
            aligned = align.align_known_rotation(volume, gt, pose_alignment["q"], pose_alignment["mirrored"])
        else:
            result = align.align_volumes(volume, gt)
            aligned = align.apply_alignment(volume, result)
            report.update(hand_mirrored=bool(result.mirrored), alignment_score=result.score)
        curves = evaluate.fsc_curves(aligned, gt)
        for name, curve in curves.items():
            report[f"fsc05_{name}_angstrom"] = evaluate.resolution_at(curve, 0.5, pixel)
            report[f"fsc0143_{name}_angstrom"] = evaluate.resolution_at(curve, 0.143, pixel)
        evaluate.write_fsc_csv(out_dir / "fsc.csv", curves, pixel)
        write_mrc(out_dir / "aligned_map.mrc", aligned, pixel)
    landscapes = _landscapes(workdir, volume, pixel, pose_alignment, ground_truth_poses)
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()] \
        if (workdir / "metrics.jsonl").exists() else []
    runio.write_json(out_dir / "report.json", report)
    try:
        from jaxcryo import figures
    except ImportError:
        report["figures"] = "matplotlib not installed: pip install 'jaxcryo[plots]'"
    else:
        report["figures"] = figures.write_all(out_dir, volume, pixel, curves, records)
        if "head_errors" in landscapes:
            figures.head_error_figure(out_dir / "head_error_sphere.png", landscapes["head_errors"])
            report["figures"].append("head_error_sphere.png")
        if "log_posterior" in landscapes:
            figures.posterior_figure(out_dir / "view_posterior.png", landscapes["log_posterior"],
                                     landscapes["head_views"], landscapes["final_views"])
            report["figures"].append("view_posterior.png")
        runio.write_json(out_dir / "report.json", report)
    return report
