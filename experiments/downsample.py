"""Fourier-crop a particle stack: python -m experiments.downsample --particles=P.star --image_size=64 --outdir=DIR"""

from absl import app, flags

from experiments import cli
from jaxcryo.io import read_particles
from jaxcryo.io.preprocess import downsample_dataset

_PARTICLES = flags.DEFINE_string("particles", None, "Particles: .star, .cs, .mrcs or .txt.")
_DATADIR = flags.DEFINE_string("datadir", None, "Directory holding the stacks (repairs broken paths).")
_SIZE = flags.DEFINE_integer("image_size", None, "Target box in pixels.")
_OUTDIR = flags.DEFINE_string("outdir", None, "Output directory (particles.mrcs + particles.star).")
_INVERT = flags.DEFINE_bool("invert_contrast", False, "Multiply images by -1 (dark-protein data).")
flags.mark_flags_as_required(["particles", "image_size", "outdir"])


def main(argv):
    del argv
    with cli.exit_on_input_error():
        table = read_particles(_PARTICLES.value, _DATADIR.value)
        star = downsample_dataset(table, _SIZE.value, _OUTDIR.value, invert_contrast=_INVERT.value)
    print(f"wrote {star}")


if __name__ == "__main__":
    app.run(main, flags_parser=cli.parse_flags)
