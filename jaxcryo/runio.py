"""A run's work directory: atomic checkpoints (orbax), metrics (JSON lines + TensorBoard), maps, poses.

WORKDIR layout
--------------
    config.json             the resolved config
    checkpoints/<n>/        orbax checkpoints, numbered in order of saving (written to a temporary name, renamed when complete,
                            so a kill -9 at any moment leaves the previous one intact)
    metrics.jsonl           one JSON object per logged point: stage, epoch, step, loss, elapsed_s,
                            images_per_s (+ evaluation figures when a ground truth is given)
    events.out.tfevents.*   the same scalars for TensorBoard
    epoch_NNN/              reconstruction.mrc and poses.star after each epoch (N <= train.epoch_outputs_max_particles)
    switch_poses/           the automatic switch's sample of poses at the last two amortized epochs

With several processes only process 0 writes these files (the functions below do nothing in the
others); every process writes its own part of each checkpoint.
    reconstruction.mrc      the final map (real space, voxel size set)
    reconstruction_half{1,2}_unfil.mrc   the two half sets' unfiltered, unmasked inversions (rlnRandomSubset)
    poses.star              RELION 3.1 star, one row per input particle
"""

from __future__ import annotations

import contextlib
import json
import logging
import pathlib
import threading

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from jaxcryo import distributed, geometry, slicing
from jaxcryo.io.cryosparc import write_cs
from jaxcryo.io.mrc import write_mrc
from jaxcryo.io.star import write_particles_star
from jaxcryo.io.table import ParticleTable


# orbax's asynchronous save is not safe for two managers saving at once in one process: its completion
# signals are process-wide, and one manager's commit can race the other's directory creation (two
# half sets run as threads failed with "File exists" under half2/checkpoints). Inside
# ``one_save_at_a_time()`` every save is synchronous and holds a process-wide lock.
_SAVE_LOCK = threading.Lock()
_EXCLUSIVE = threading.Event()


@contextlib.contextmanager
def one_save_at_a_time():
    """Make every checkpoint save in this process synchronous and serialised (concurrent runs as threads)."""
    _EXCLUSIVE.set()
    try:
        yield
    finally:
        _EXCLUSIVE.clear()


class Checkpoints:
    """Save/restore (state pytree, progress dict); the state's structure depends on the stage."""

    def __init__(self, directory: pathlib.Path, max_to_keep: int = 2):
        # asynchronous: the arrays are copied to the host before save() returns, written while training goes on
        options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, enable_async_checkpointing=True)
        self.manager = ocp.CheckpointManager(directory.resolve(), options=options)

    def latest_progress(self) -> dict | None:
        step = self.manager.latest_step()
        if step is None:
            return None
        return self.manager.restore(step, args=ocp.args.Composite(progress=ocp.args.JsonRestore()))["progress"]

    def restore_state(self, abstract_state):
        step = self.manager.latest_step()
        restored = self.manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state)))
        return restored["state"]

    def save(self, state, progress: dict) -> None:
        """Save under the next checkpoint number (the stage switch saves twice at one training step)."""
        if _EXCLUSIVE.is_set():
            with _SAVE_LOCK:
                self._save(state, progress)
                self.manager.wait_until_finished()
        else:
            self._save(state, progress)

    def _save(self, state, progress: dict) -> None:
        latest = self.manager.latest_step()
        self.manager.save(0 if latest is None else latest + 1, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), progress=ocp.args.JsonSave(progress)), force=True)

    def close(self):
        self.manager.wait_until_finished()
        self.manager.close()


class MetricsWriter:
    """Appends to metrics.jsonl and TensorBoard. On a resumed run (``resume``: the checkpoint's progress)
    the records the run will write again are dropped: those past its global step, and the end of an
    epoch whose checkpoint was not kept (checkpoints are asynchronous: a kill can come between an
    epoch's record and its save)."""

    def __init__(self, workdir: pathlib.Path, resume: dict | None):
        self.path, self.tb = workdir / "metrics.jsonl", None
        if not distributed.is_writer():  # one writer: the other processes' records are the same
            self.path = None
            return
        if resume is not None and self.path.exists():
            def redone(r):
                return r["global_step"] > resume["global_step"] or (
                    r.get("epoch_end", False) and r["stage"] == resume["stage"] and r["epoch"] > resume["epoch"])

            kept = [ln for ln in self.path.read_text().splitlines() if ln and not redone(json.loads(ln))]
            self.path.write_text("".join(ln + "\n" for ln in kept))
        try:
            from tensorboardX import SummaryWriter

            self.tb = SummaryWriter(str(workdir))
        except ImportError:  # TensorBoard files are optional; metrics.jsonl is the contract
            self.tb = None

    def write(self, record: dict) -> None:
        if self.path is None:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(strict_json(record)) + "\n")
        if self.tb is not None:
            for key, value in record.items():
                if isinstance(value, (int, float)) and key not in ("global_step", "epoch", "step"):
                    self.tb.add_scalar(f"{record['stage']}/{key}", value, record["global_step"])
            self.tb.flush()

    def close(self):
        if self.tb is not None:
            self.tb.close()


def volume_to_real(volume_h: jax.Array) -> np.ndarray:
    """(D, D, D) Hartley coefficients (1/L-scaled image units) -> real-space map, float32."""
    return np.asarray(slicing.hartley_to_volume(volume_h) * volume_h.shape[-1], np.float32)


def write_map(path: pathlib.Path, volume_h: jax.Array, pixel_size_angstrom: float) -> np.ndarray:
    """Write the map (process 0) and return it, real space (every process)."""
    real = volume_to_real(volume_h)
    write_volume(path, real, pixel_size_angstrom)
    return real


def write_volume(path: pathlib.Path, volume: np.ndarray, pixel_size_angstrom: float) -> None:
    if distributed.is_writer():
        path.parent.mkdir(parents=True, exist_ok=True)
        write_mrc(path, volume, pixel_size_angstrom)


def write_poses(path: pathlib.Path, table: ParticleTable, rotations: np.ndarray,
                origin_angstrom: np.ndarray | None = None, random_subset: np.ndarray | None = None,
                cs_too: bool = False, contrast: np.ndarray | None = None) -> None:
    """RELION star with the input's rows and columns, poses replaced by ``rotations`` (N, 3, 3) (and,
    with ``cs_too``, the same poses as a cryoSPARC .cs beside it, ``jaxcryo.io.cryosparc.write_cs``, with
    the fitted per-particle ``contrast`` as cryoSPARC's per-particle scale when given).

    Without estimated shifts the model treats particles as centred, so any input origins are written
    as 0 to stay consistent with the map.
    """
    if not distributed.is_writer():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    euler = np.asarray(geometry.matrix_to_euler(jnp.asarray(rotations, jnp.float32)), np.float64)
    if origin_angstrom is None and table.origin_angstrom is not None:
        origin_angstrom = np.zeros((len(table), 2))
    write_particles_star(path, table, euler_deg=euler, origin_angstrom=origin_angstrom, random_subset=random_subset)
    if cs_too:
        write_cs(path.with_suffix(".cs"), table, rotations, origin_angstrom, random_subset, contrast)
        if np.any(table.phase_flipped):  # a .cs has no field that says so
            logging.warning("%s: these particles are phase-flipped, which cryoSPARC would not know from this file; "
                            "take %s into RELION instead", path.with_suffix(".cs"), path.name)


def strict_json(obj):
    """``obj`` with every float that is not finite (a loss of an epoch that ran no step, a correlation
    of constants) as None: json.dumps would write NaN or Infinity, which JSON does not have and strict
    readers (jq, JavaScript, Go) reject."""
    if isinstance(obj, float):
        return obj if np.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: strict_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict_json(v) for v in obj]
    return obj


def write_json(path: pathlib.Path, obj) -> None:
    if not distributed.is_writer():
        return
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(strict_json(obj), indent=2, sort_keys=True, default=str))
    tmp.replace(path)


def machine() -> dict:
    """What the figures of a run or benchmark were measured on: CPU model, cores, load average,
    accelerators. Timings differ several-fold between CPU models of the same core count."""
    import os
    import platform

    model = platform.processor() or platform.machine()
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    return {"cpu": model, "cpu_cores": os.cpu_count(), "load_average_1min": round(load[0], 2),
            "devices": [str(d) for d in jax.devices()], "packages": package_versions()}


def package_versions() -> dict:
    """Versions of the packages whose numerics shape a run: the same code and seed can take another
    path through the amortized stage with another jax or XLA (observed between two installs)."""
    from importlib import metadata

    out = {}
    for name in ("jax", "jaxlib", "flax", "optax", "numpy", "orbax-checkpoint"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def describe_machine() -> str:
    m = machine()
    versions = ", ".join(f"{k} {v}" for k, v in m["packages"].items() if k in ("jax", "flax") and v)
    return (f"{m['cpu']}, {m['cpu_cores']} cores, load {m['load_average_1min']}, devices {', '.join(m['devices'])}"
            f"; {versions}")
