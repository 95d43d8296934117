"""Evaluate a run: python -m experiments.evaluate --workdir=DIR [--ground_truth=MAP.mrc] [--ground_truth_poses=STAR]

Writes DIR/eval/report.json, fsc.csv, aligned_map.mrc and PNG figures; prints a short table. The
simulator's ground truth in DIR/data is used when no ground truth is given.
"""

import pathlib

from absl import app, flags

from experiments import cli
from jaxcryo.io.table import InputError

_WORKDIR = flags.DEFINE_string("workdir", None, "A run's work directory.")
_GT = flags.DEFINE_string("ground_truth", None, "Ground-truth map (MRC) for the FSC.")
_GT_POSES = flags.DEFINE_string("ground_truth_poses", None, "Star with the true poses, for pose errors.")
flags.mark_flags_as_required(["workdir"])


def main(argv):
    del argv
    from jaxcryo.report import evaluate_workdir

    with cli.exit_on_input_error():
        if not pathlib.Path(_WORKDIR.value).is_dir():
            raise InputError(f"{_WORKDIR.value}: no such work directory")
        report = evaluate_workdir(_WORKDIR.value, _GT.value, _GT_POSES.value)
    for key, value in report.items():
        shown = f"{value:.3f}" if isinstance(value, float) else value
        print(f"{key:28s} {shown}")


if __name__ == "__main__":
    app.run(main, flags_parser=cli.parse_flags)
