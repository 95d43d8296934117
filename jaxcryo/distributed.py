"""One run over many processes on JAX's multi-controller runtime (``jax.distributed``).

Every process runs the same program on the same (seeded) batch order; the mesh spans every process's
devices, ordered by process, so process p holds the contiguous block p of every batch and reads only
those images. Conventions used by the rest of the package:

* a batch's rows: ``local_rows(batch_size)`` of every global batch are this process's; its arrays go to
  the devices with ``put_local`` (already the local rows) or ``put_rows`` (the whole batch, sliced here);
* results sharded over the batch come back to every process with ``to_host`` (an all-gather), so every
  decision taken on the host (the switch, the re-search, a divergence) is the same in every process;
* replicated state is put with ``put_replicated`` (host values, identical in every process);
* one writer: process 0 writes maps, stars, metrics and figures (``is_writer``); orbax checkpoints are
  written by all processes together (each its own shards, process 0 the metadata).

With one process every function reduces to the single-machine path (``jax.device_put``, ``np.asarray``).
"""

from __future__ import annotations

import jax
import numpy as np


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> None:
    """``jax.distributed.initialize``; with no arguments the cluster is detected (SLURM, TPU pods, ...).
    CPU processes exchange collectives through gloo, so two processes on one machine make a real run."""
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                               process_id=process_id)


def process_count() -> int:
    return jax.process_count()


def is_writer() -> bool:
    """Process 0 writes every file a run leaves (checkpoints excepted: orbax coordinates those)."""
    return jax.process_index() == 0


def ordered_devices() -> list:
    """Every process's devices, process by process: a batch's rows for process p are contiguous."""
    return sorted(jax.devices(), key=lambda d: (d.process_index, d.id))


def local_rows(batch_size: int) -> slice:
    """The rows of a global batch of ``batch_size`` that this process reads (processes own equal
    numbers of devices; ``batch_size`` is a multiple of the global device count)."""
    n, p = jax.process_count(), jax.process_index()
    if batch_size % n:
        raise ValueError(f"a batch of {batch_size} does not split over {n} processes")
    share = batch_size // n
    return slice(p * share, (p + 1) * share)


def put_local(tree, sharding):
    """Global arrays, sharded over the batch, from this process's rows of every leaf (host arrays)."""
    if jax.process_count() == 1:
        return jax.device_put(tree, sharding)

    def one(x):
        x = np.asarray(x)
        return jax.make_array_from_process_local_data(sharding, x, (x.shape[0] * jax.process_count(),) + x.shape[1:])

    return jax.tree_util.tree_map(one, tree)


def put_rows(tree, sharding):
    """``put_local`` from whole-batch host arrays: each process keeps its own rows."""
    if jax.process_count() == 1:
        return jax.device_put(tree, sharding)
    leaves = jax.tree_util.tree_leaves(tree)
    part = local_rows(np.shape(leaves[0])[0])
    return put_local(jax.tree_util.tree_map(lambda x: np.asarray(x)[part], tree), sharding)


def put_replicated(tree, sharding):
    """Replicated global arrays from values that are the same in every process. Across processes the
    values go through the host: device_put of a committed single-device array to a multi-process
    sharding makes an array orbax cannot save (JAX 0.10)."""
    if jax.process_count() == 1:
        return jax.device_put(tree, sharding)
    return jax.device_put(jax.tree_util.tree_map(np.asarray, tree), sharding)


def to_host(x) -> np.ndarray:
    """The whole of a global array as numpy, in every process (an all-gather when it is sharded)."""
    if jax.process_count() == 1 or x.is_fully_replicated:
        return np.asarray(x)
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def process_share(rows: np.ndarray) -> np.ndarray:
    """This process's contiguous block of ``rows`` when every process takes one (host-side passes whose
    results are summed over processes, e.g. the direct inversion)."""
    return np.array_split(np.asarray(rows), jax.process_count())[jax.process_index()]


def sum_over_processes(x: np.ndarray) -> np.ndarray:
    """The sum of a host array over processes, in every process."""
    if jax.process_count() == 1:
        return x
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(np.asarray(x))).sum(axis=0)


def barrier(name: str) -> None:
    """Every process waits here until all have arrived (e.g. until the writer's file exists)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)
