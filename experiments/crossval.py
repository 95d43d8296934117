"""Which pose set do the images support: python -m experiments.crossval --workdir=RUN [--poses=A.star,B.cs]

Scores the run's final poses (RUN/poses.star) and any other pose sets of the same particles (another
run's poses.star, a RELION or cryoSPARC refinement, a simulator's true poses — RUN/data's are added
when present) by cross-validated likelihood (``jaxcryo.crossval``): each half set's images at their
poses under the other half's map. Each set is first polished (``--polish`` alternations of half maps
and local refinement) so that sets are compared at their nearest self-consistent solutions. Prints,
per set: the mean per-image loss, its difference from the run's (negative: the images support that set
better) with its standard error, the half maps' FSC 0.143 and, with true poses, the median pose error.
"""

import json
import pathlib

import numpy as np
from absl import app, flags

from experiments import cli
from jaxcryo.io.table import InputError

_WORKDIR = flags.DEFINE_string("workdir", None, "A finished run's work directory (config.json, poses.star).")
_POSES = flags.DEFINE_list("poses", [], "Other pose sets of the same particles (.star or .cs), comma-separated.")
_POLISH = flags.DEFINE_integer("polish", 3, "Alternations of half maps and local pose refinement before scoring.")
flags.mark_flags_as_required(["workdir"])


def _pose_sets(workdir: pathlib.Path, others: list[str], n: int, pixel: float) -> dict:
    from jaxcryo.io import read_particles

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
        sets[name] = (table.rotations(), table.displacements_px(pixel))
    return sets


def main(argv):
    del argv
    import jax
    import ml_collections

    from jaxcryo import crossval, dataset, evaluate
    from jaxcryo.io.loader import half_set_labels

    workdir = pathlib.Path(_WORKDIR.value)
    with cli.exit_on_input_error():
        if not (workdir / "config.json").exists():
            raise InputError(f"{workdir}: not a run's work directory (no config.json)")
        config = ml_collections.ConfigDict(json.loads((workdir / "config.json").read_text()))
        config.progress_bar = False
        data = dataset.prepare_data(config, workdir, log=lambda *a: None)
        source = data.source
        sets = _pose_sets(workdir, _POSES.value, len(data.table), source.pixel_size_angstrom)
    labels = half_set_labels(data.table, config.seed)
    sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    scores = {name: crossval.score_poses(source, r, s, labels, sharding, polish=_POLISH.value)
              for name, (r, s) in sets.items()}
    truth = sets.get("truth")
    print(f"{'pose set':24s} {'mean loss':>10s} {'vs run':>11s} {'(se)':>9s} {'FSC0.143':>9s} {'median err':>10s}")
    for name, row in crossval.compare(scores, "run").items():
        err = ""
        if truth is not None:
            aligned = evaluate.align_poses(scores[name].rotations.astype(np.float64), truth[0].astype(np.float64))
            err = f"{np.median(aligned['rotation_error_deg']):9.2f}°"
        print(f"{name:24s} {row['mean_loss']:10.6f} {row['difference']:+11.2e} {row['difference_se']:9.1e} "
              f"{row['fsc0143_halfmaps_angstrom']:8.2f}Å {err:>10s}")


if __name__ == "__main__":
    app.run(main, flags_parser=cli.parse_flags)
