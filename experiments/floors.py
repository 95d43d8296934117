"""What the data allow, for a simulated set with its truth: python -m experiments.floors --data=DIR [--whiten]

DIR holds particles.star (and its stack), ground_truth.mrc and ground_truth_poses.star, as
``experiments.simulate``, ``experiments.zoo`` and ``experiments.outside_sim`` write them. Prints, under
the true map:
* the pose-error floor (``posterior.pose_error_floor``): how far each image's most likely pose lies from
  its true pose, median / mean / 90th percentile;
* the mate floor (``posterior.mate_floor``): the share of images more likely at a pseudo-symmetry mate of
  their true pose (the map's own cyclic symmetry or mirror plane) than at the true pose itself, and the
  median evidence (nats) for the true pose. No method that takes each image's most likely pose turns
  fewer than this share to a mate.
``--whiten`` judges the images with the noise model of ``experiments/particles.py`` (per-particle
normalisation and whitening by the background's noise spectrum: the right likelihood for coloured
noise); without it, with white noise of one variance, as ``experiments.zoo``'s floor column is.
"""

import json
import pathlib

from absl import app, flags

from experiments import cli
from jaxcryo.io.table import InputError

_DATA = flags.DEFINE_string("data", None, "A simulated set's directory (particles.star, ground_truth.*).")
_WHITEN = flags.DEFINE_bool("whiten", False, "Judge with particles.py's noise model (per-particle "
                            "normalisation, whitened images and CTFs).")
_IMAGES = flags.DEFINE_integer("n_mate_images", 512, "Images sampled for the mate floor (the pose floor takes "
                               "experiments.zoo's sample of 256).")
flags.mark_flags_as_required(["data"])


def floors(data_dir: pathlib.Path, whiten: bool, n_mate_images: int) -> dict:
    from experiments import particles
    from jaxcryo import noisemodel, posterior
    from jaxcryo.io import check_stacks, read_particles, read_volume
    from jaxcryo.io.loader import ImageSource

    for name in ("particles.star", "ground_truth.mrc", "ground_truth_poses.star"):
        if not (data_dir / name).is_file():
            raise InputError(f"{data_dir / name}: missing (a simulated set's directory holds it)")
    table = read_particles(data_dir / "particles.star")
    source = ImageSource(table, check_stacks(table))
    source.estimate_normalization()
    if whiten:  # particles.py's own noise model, whatever it becomes; a simulated set's contrast is known
        data_config = particles.get_config().data
        data_config.contrast_check = False
        noisemodel.set_up(source, source, data_config, seed=0)
    truth = read_particles(data_dir / "ground_truth_poses.star")
    if len(truth) != len(table):
        raise InputError(f"{data_dir / 'ground_truth_poses.star'}: {len(truth)} rows for {len(table)} particles")
    shifts = truth.displacements_angstrom()
    shifts_px = None if shifts is None else shifts / source.pixel_size_angstrom
    volume = read_volume(data_dir / "ground_truth.mrc")[0]
    out = posterior.pose_error_floor(volume, source, truth.rotations(), true_shifts_px=shifts_px)
    out.update(posterior.mate_floor(volume, source, truth.rotations(), n_mate_images, true_shifts_px=shifts_px))
    return out


def main(argv):
    del argv
    with cli.exit_on_input_error():
        out = floors(pathlib.Path(_DATA.value), _WHITEN.value, _IMAGES.value)
    print(json.dumps(dict(out, whiten=_WHITEN.value, n_mate_images=_IMAGES.value)))


if __name__ == "__main__":
    app.run(main, flags_parser=cli.parse_flags)
