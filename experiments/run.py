"""Reconstruct: python -m experiments.run --config=experiments/quickstart.py --workdir=runs/quickstart

Only parses flags (the flax-examples convention); the work is ``jaxcryo.train.train_and_evaluate``.
Several processes (hosts, or GPUs each in its own process): ``--multihost`` on every process, with
``--coordinator_address``, ``--num_processes`` and ``--process_id`` or, on SLURM and TPU pods, none of
them (detected); every process gets the same ``--config`` and ``--workdir`` (see BUILD.md).
"""

import logging

from absl import app, flags
from ml_collections import config_flags

from experiments import cli

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file (Python, get_config()).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Work directory: outputs, checkpoints; rerun to resume.")
_MULTIHOST = flags.DEFINE_bool("multihost", False, "One run over several processes (jax.distributed.initialize).")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "With --multihost: host:port of process 0 "
                                   "(default: detected from the cluster environment).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "With --multihost: how many processes.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "With --multihost: this process's index, 0 to num_processes - 1.")
_XLA_CACHE = flags.DEFINE_string("xla_cache_dir", "~/.cache/jaxcryo/xla", "Where compiled programs are kept between "
                                 "runs, so a resumed or repeated run skips recompiling ('' = off; "
                                 "JAX_COMPILATION_CACHE_DIR wins).")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    del argv
    explicit = (_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
    if not _MULTIHOST.value and any(v is not None for v in explicit):
        raise app.UsageError("--coordinator_address, --num_processes and --process_id need --multihost")
    if _MULTIHOST.value:
        from jaxcryo import distributed

        distributed.initialize(*explicit)
    import jax

    from jaxcryo.train import train_and_evaluate

    cli.use_compilation_cache(_XLA_CACHE.value)
    # one process speaks: the others' lines would repeat process 0's
    logging.getLogger().setLevel(logging.INFO if jax.process_index() == 0 else logging.WARNING)
    for handler in logging.getLogger().handlers:  # orbax logs every save step at INFO
        handler.addFilter(lambda record: "orbax" not in record.pathname or record.levelno >= logging.WARNING)
    with cli.exit_on_input_error():
        train_and_evaluate(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
    app.run(main, flags_parser=cli.parse_flags)
