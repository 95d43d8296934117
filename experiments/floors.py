"""What the data allow, for a simulated set with its truth: python -m experiments.floors --data=DIR [--whiten]

DIR holds particles.star (and its stack), ground_truth.mrc and ground_truth_poses.star, as
``experiments.simulate``, ``experiments.zoo`` and ``experiments.outside_sim`` write them. Prints, under
the true map:
* the pose-error floor (``posterior.pose_error_floor``): how far each image's most likely pose lies from
  its true pose, median / mean / 90th percentile;
* the half-map floor (``posterior.half_map_floor``): the same, under the map that half the images make at
  their true poses instead of the true map (what a map made from the data allows);
* the mate floor (``posterior.mate_floor``): the share of images more likely at a pseudo-symmetry mate of
  their true pose (the map's own cyclic symmetry or mirror plane) than at the true pose itself, and the
  median evidence (nats) for the true pose. No method that takes each image's most likely pose turns
  fewer than this share to a mate.
With ``--run=WORKDIR`` it judges a finished run's poses too (``posterior.basin_test``): the run's final
poses (WORKDIR/poses.star) are aligned to the truth and sampled in three groups (within 20 deg of the
truth, 20-150 deg, turned >= 150 deg); under the true map each sampled pose and its true pose are moved
alike to their nearest maxima. Printed per group: its share of the stack, how many of the judged share
the truth's maximum (the run's map, not the data, held them off), and of the rest, how many the data
prefer at the run's pose. ``--nofloors`` skips the two floors.
``--whiten`` judges the images with the noise model of ``experiments/particles.py`` (per-particle
normalisation and whitening by the background's noise spectrum: the right likelihood for coloured
noise); without it, with white noise of one variance, as ``experiments.zoo``'s floor column is.
"""

import json
import pathlib

from absl import app, flags

from experiments import cli
from jaxcryo import runio
from jaxcryo.io.table import InputError

_DATA = flags.DEFINE_string("data", None, "A simulated set's directory (particles.star, ground_truth.*).")
_WHITEN = flags.DEFINE_bool("whiten", False, "Judge with particles.py's noise model (per-particle "
                            "normalisation, whitened images and CTFs).")
_IMAGES = flags.DEFINE_integer("n_mate_images", 512, "Images sampled for the mate floor (the pose floor takes "
                               "experiments.zoo's sample of 256).")
_RUN = flags.DEFINE_string("run", None, "A finished run's work directory (its poses.star) to judge under the true map.")
_RUN_IMAGES = flags.DEFINE_integer("n_run_images", 192, "Images judged per group of the run's poses.")
_FLOORS = flags.DEFINE_bool("floors", True, "Compute the pose and mate floors.")
flags.mark_flags_as_required(["data"])

# a run's pose error groups (deg): near the truth, in between, turned to a two-fold mate or end over end
RUN_GROUPS = {"within_20": (0.0, 20.0), "20_to_150": (20.0, 150.0), "from_150": (150.0, 180.1)}
SAME_BASIN_DEG = 2.0  # two maxima closer than this are one (Adam's polish stops ~0.1 deg from its maximum)


def floors(data_dir: pathlib.Path, whiten: bool, n_mate_images: int, run_dir: pathlib.Path | None = None,
           n_run_images: int = 192, with_floors: bool = True) -> dict:
    from experiments import particles
    from jaxcryo import noisemodel, posterior
    from jaxcryo.io import check_stacks, read_particles, read_volume
    from jaxcryo.io.loader import ImageSource, half_set_labels

    needed = [(data_dir / name, "a simulated set's directory")
              for name in ("particles.star", "ground_truth.mrc", "ground_truth_poses.star")]
    if run_dir is not None:
        needed.append((run_dir / "poses.star", "a finished run's directory"))
    for path, holder in needed:
        if not path.is_file():
            raise InputError(f"{path}: missing ({holder} holds it)")
    table = read_particles(data_dir / "particles.star")
    source = ImageSource(table, check_stacks(table))
    source.estimate_normalization()
    if whiten:  # particles.py's own noise model, whatever it becomes; a simulated set's contrast is known
        data_config = particles.get_config().data
        data_config.contrast_check = False
        noisemodel.set_up(source, (), data_config, seed=0)
    truth = read_particles(data_dir / "ground_truth_poses.star")
    if len(truth) != len(table):
        raise InputError(f"{data_dir / 'ground_truth_poses.star'}: {len(truth)} rows for {len(table)} particles")
    shifts = truth.displacements_angstrom()
    shifts_px = None if shifts is None else shifts / source.pixel_size_angstrom
    volume = read_volume(data_dir / "ground_truth.mrc")[0]
    true_rotations = truth.rotations()
    out = {}
    if with_floors:
        out.update(posterior.pose_error_floor(volume, source, true_rotations, true_shifts_px=shifts_px))
        out.update(posterior.half_map_floor(source, true_rotations, half_set_labels(table, 0), true_shifts_px=shifts_px))
        out.update(posterior.mate_floor(volume, source, true_rotations, n_mate_images, true_shifts_px=shifts_px))
    if run_dir is not None:
        run_table = read_particles(run_dir / "poses.star")
        if len(run_table) != len(table):
            raise InputError(f"{run_dir / 'poses.star'}: {len(run_table)} rows for {len(table)} particles")
        out["run"] = judge_run(volume, source, true_rotations, run_table.rotations(), shifts_px, n_run_images)
    return out


def judge_run(volume, source, true_rotations, run_rotations, true_shifts_px, n_per_group: int, seed: int = 0) -> dict:
    """``posterior.basin_test`` of a sample of each group of a run's poses (N, 3, 3) (``RUN_GROUPS``)."""
    import numpy as np

    from jaxcryo import evaluate, posterior

    aligned = evaluate.align_poses(run_rotations, true_rotations)
    error = aligned["rotation_error_deg"]
    in_truth_frame = evaluate.in_truth_frame(run_rotations, aligned["q"], aligned["mirrored"])
    rng = np.random.default_rng(seed)
    out = {}
    for name, (low, high) in RUN_GROUPS.items():
        members = np.nonzero((error >= low) & (error < high))[0]
        group = {"share": float(len(members) / len(error)), "judged": int(min(n_per_group, len(members)))}
        if len(members):
            rows = np.sort(rng.choice(members, group["judged"], replace=False))
            test = posterior.basin_test(volume, source, true_rotations, in_truth_frame, rows,
                                        true_shifts_px=true_shifts_px)
            apart = test["apart_deg"] > SAME_BASIN_DEG
            group.update(error_median_deg=float(np.median(error[members])),
                         in_truths_basin=float(np.mean(~apart)),
                         data_prefer_run=float(np.mean(apart & (test["evidence_nats"] > 0))),
                         data_prefer_truth=float(np.mean(apart & (test["evidence_nats"] <= 0))))
        out[name] = group
    return out


def main(argv):
    del argv
    with cli.exit_on_input_error():
        out = floors(pathlib.Path(_DATA.value), _WHITEN.value, _IMAGES.value,
                     None if _RUN.value is None else pathlib.Path(_RUN.value), _RUN_IMAGES.value, _FLOORS.value)
    print(json.dumps(runio.strict_json(dict(out, whiten=_WHITEN.value, n_mate_images=_IMAGES.value))))


if __name__ == "__main__":
    app.run(main, flags_parser=cli.parse_flags)
