"""Which pose set do the images support: python -m experiments.crossval --workdir=RUN [--poses=A.star,B.cs] [--norefine]

Scores the run's final poses (RUN/poses.star) and any other pose sets of the same particles (another
run's poses.star, a RELION or cryoSPARC refinement, a simulator's true poses — RUN/data's are added
when present) on images their maps have not seen (``jaxcryo.crossval``): each half set's images,
their poses refined locally (``--refine``, default on), under the other half's map from the same pose
set. Prints, per set: the mean per-image loss, its difference from the run's (negative: the images
support that set better) with its standard error, the half maps' FSC 0.143 and, with true poses, the
median error of the poses scored.
"""

from absl import app, flags

from experiments import cli

_WORKDIR = flags.DEFINE_string("workdir", None, "A finished run's work directory (config.json, poses.star).")
_POSES = flags.DEFINE_list("poses", [], "Other pose sets of the same particles (.star or .cs), comma-separated.")
_REFINE = flags.DEFINE_bool("refine", True, "Refine each scored image's pose locally against the map it is scored under.")
flags.mark_flags_as_required(["workdir"])


def main(argv):
    del argv
    from jaxcryo import crossval

    with cli.exit_on_input_error():
        rows = crossval.score_workdir(_WORKDIR.value, _POSES.value, _REFINE.value)
    print(f"{'pose set':24s} {'mean loss':>10s} {'vs run':>11s} {'(se)':>9s} {'FSC0.143':>9s} {'median err':>10s}")
    for name, row in rows.items():
        err = f"{row['pose_error_median_deg']:9.2f}°" if "pose_error_median_deg" in row else ""
        print(f"{name:24s} {row['mean_loss']:10.6f} {row['difference']:+11.2e} {row['difference_se']:9.1e} "
              f"{row['fsc0143_halfmaps_angstrom']:8.2f}Å {err:>10s}")


if __name__ == "__main__":
    app.run(main, flags_parser=cli.parse_flags)
