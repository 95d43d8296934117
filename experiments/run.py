"""Reconstruct: python -m experiments.run --config=experiments/quickstart.py --workdir=runs/quickstart

Only parses flags (the flax-examples convention); the work is ``jaxcryo.train.train_and_evaluate``.
"""

import logging

from absl import app, flags
from ml_collections import config_flags

from experiments import cli

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file (Python, get_config()).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Work directory: outputs, checkpoints; rerun to resume.")
_MULTIHOST = flags.DEFINE_bool("multihost", False, "Call jax.distributed.initialize() (multi-host GPU/TPU).")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    del argv
    import jax

    if _MULTIHOST.value:
        jax.distributed.initialize()
    from jaxcryo.train import train_and_evaluate

    logging.getLogger().setLevel(logging.INFO)
    for handler in logging.getLogger().handlers:  # orbax logs every save step at INFO
        handler.addFilter(lambda record: "orbax" not in record.pathname or record.levelno >= logging.WARNING)
    with cli.exit_on_input_error():
        train_and_evaluate(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
    app.run(main, flags_parser=cli.parse_flags)
