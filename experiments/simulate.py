"""Simulate a particle dataset: python -m experiments.simulate --config=experiments/quickstart.py --outdir=DIR

Uses the config's ``simulate`` section; override fields as --config.simulate.n_images=1000.
"""

from absl import app, flags
from ml_collections import config_flags

from experiments import cli
from jaxcryo.simulate import simulate_dataset

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file (Python, get_config()).")
_OUTDIR = flags.DEFINE_string("outdir", None, "Directory to write the dataset into.")
flags.mark_flags_as_required(["config", "outdir"])


def main(argv):
    del argv
    with cli.exit_on_input_error():
        simulate_dataset(_CONFIG.value.simulate, _OUTDIR.value)


if __name__ == "__main__":
    app.run(main, flags_parser=cli.parse_flags)
