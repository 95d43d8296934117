"""Throughput benchmarks (figures, not tests): training steps per stage, and the streaming loader.

    python -m experiments.bench --what=steps --config=experiments/quickstart.py
    python -m experiments.bench --what=steps --config=experiments/spike.py --steps=3
    python -m experiments.bench --what=loader --particles=DIR/particles.star [--config=experiments/particles.py
        --config.data.loader_threads=T]   (the loader as a run sets it up, per stage)
    python -m experiments.bench --what=slices   (forward loss forms and the global search's products: the pose searches' and mate test's cost)
    python -m experiments.bench --scale [--sizes=10000,100000,1000000]   (experiments/scale.py)

Steps run on random images (no disk) with the config's model and batch size; each stage is timed after
its first (compiling) call; the forward forms of --what=slices are the fastest of 3 calls after a
compiling one. Peak RSS is the process's maximum resident set size.
"""

import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app, flags
from ml_collections import config_flags

from experiments import cli
from experiments.scale import anon_rss_gib, measure_one, peak_rss_gib, run_all
from jaxcryo import runio
from jaxcryo.search import SearchSettings

_CONFIG = config_flags.DEFINE_config_file("config", "experiments/quickstart.py", "Experiment config.")
_WHAT = flags.DEFINE_enum("what", "steps", ["steps", "loader", "slices"], "What to time.")
_STEPS = flags.DEFINE_integer("steps", 10, "Timed steps per stage (after one compiling step).")
_PARTICLES = flags.DEFINE_string("particles", None, "Particle file for --what=loader.")
_SCALE = flags.DEFINE_bool("scale", False, "The scale benchmark over --sizes (experiments/scale.py).")
_SCALE_ONE = flags.DEFINE_bool("scale_one", False, "One N of the scale benchmark (run by --scale in a subprocess).")
_SIZES = flags.DEFINE_list("sizes", ["10000", "100000", "1000000"], "Particle counts of --scale.")
_SCALE_DIR = flags.DEFINE_string("scale_dir", "/tmp/jaxcryo_scale", "Where --scale writes its random stacks.")
_SCALE_STEPS = flags.DEFINE_integer("scale_steps", 40, "Timed training steps per stage and N in --scale.")


def _batch(size: int, batch_size: int, n: int, sharding, rng):
    from jaxcryo.dataset import ctf_grids
    from jaxcryo.io.loader import epoch_order
    from jaxcryo.io.table import CTF_FIELDS

    values = dict(defocus_u_angstrom=15000.0, defocus_v_angstrom=14000.0, defocus_angle_deg=10.0, voltage_kv=300.0,
                  spherical_aberration_mm=2.7, amplitude_contrast=0.1, phase_shift_deg=0.0, b_factor_angstrom2=0.0, phase_flipped=0.0)
    out = {"images": rng.normal(size=(batch_size, size, size)).astype(np.float32),
           # each device's rows from its own block of the pose tables, as the loader draws them
           "index": epoch_order(n, batch_size, int(rng.integers(1 << 30)), 0, blocks=len(sharding.device_set))[0]
           .astype(np.int32)}
    out.update({k: np.full(batch_size, values[k], np.float32) for k in CTF_FIELDS})
    out = jax.device_put(out, sharding)
    # the CTFs made apart, as a run's batches carry them (jaxcryo.dataset.ctf_grids); px 3 A as below
    return dict(out, ctf=ctf_grids({k: out[k] for k in CTF_FIELDS}, size, 3.0))


def _time(step, state, batches, replicated, rows=None):
    from jaxcryo.steps import POSE_TABLES

    # committed like a real run's state (pose tables sharded by particle): no recompilation, no resharding
    state = {k: jax.device_put(v, rows if (rows is not None and k in POSE_TABLES) else replicated) for k, v in state.items()}
    state, out = step(state, batches[0], 1.0)
    jax.block_until_ready(out["loss"])
    start = time.perf_counter()
    for b in batches[1:]:
        state, out = step(state, b, 1.0)
    jax.block_until_ready(out["loss"])
    return state, time.perf_counter() - start


def _best_seconds(fn, *args, repeats: int = 3) -> float:
    """The fastest of ``repeats`` calls after a compiling one: the least disturbed by a shared machine."""
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return min(times)


def bench_steps(config) -> None:
    from jaxcryo import models, stages, steps

    tc, mc = config.train, config.model
    size = config.simulate.image_size if "simulate" in config else config.data.image_size
    coarse = tc.amortized_image_size or size
    n, bs = 10_000, tc.batch_size
    mesh = steps.make_mesh()
    sharding = jax.NamedSharding(mesh, jax.sharding.PartitionSpec(steps.AXIS))
    replicated = jax.NamedSharding(mesh, jax.sharding.PartitionSpec())
    rng = np.random.default_rng(0)
    px = 3.0
    shifts = bool(mc.estimate_shifts)
    enc = models.PoseEncoder(mc.n_heads, mc.width, steps.AXIS, shifts)
    eo, vo = optax.adam(tc.lr_encoder), optax.adam(tc.lr_volume)
    init = stages.initial_state(models.PoseEncoder(mc.n_heads, mc.width, None, shifts), eo, vo, coarse, np.zeros(coarse), 0.1, 0)
    state = init(jax.random.key(0), jax.random.key(1))
    step = steps.make_amortized_step(enc, eo, vo, px, config.loss.kind, mesh, SearchSettings.from_config(mc, shifts),
                                     mc.distill_weight, max_shift_fraction=mc.max_shift_fraction)
    batches = [_batch(coarse, bs, n, sharding, rng) for _ in range(_STEPS.value + 1)]
    _, seconds = _time(step, state, batches, replicated)
    print(f"amortized     {coarse:4d} px  M={mc.n_heads:2d}  width={mc.width:<6g} batch={bs}  search={mc.search_candidates:5d} shifts={shifts}: "
          f"{_STEPS.value * bs / seconds:8.1f} images/s  (devices: {jax.local_device_count()})")
    vol = models.init_volume(size, np.zeros(size), jax.random.key(1), 0.1)
    state = {"vol_params": vol, "vol_opt": vo.init(vol),
             **steps.init_pose_tables(jnp.broadcast_to(jnp.eye(3), (n, 3, 3)), jnp.zeros((n, 2)))}
    # as a run builds it: a stage whose volume is the direct inversion takes no volume steps (its inversion
    # after each epoch is not in this figure)
    vol_iters = 0 if steps.inverted_volume(tc, known_poses=False) else tc.vol_iters
    step = steps.make_autodecoding_step(vo, px, config.loss.kind, tc.pose_iters, vol_iters, tc.lr_pose, mesh,
                                        tc.lr_shift if shifts else 0.0)
    batches = [_batch(size, bs, n, sharding, rng) for _ in range(_STEPS.value + 1)]
    _, seconds = _time(step, state, batches, replicated, sharding)
    print(f"autodecoding  {size:4d} px  pose_iters={tc.pose_iters} vol_iters={vol_iters} batch={bs} shifts={shifts}: "
          f"{_STEPS.value * bs / seconds:8.1f} images/s")
    print(f"peak RSS {peak_rss_gib():.2f} GiB")


def bench_loader(config, path: str) -> None:
    """The training loader as a run sets it up (``dataset.prepare_data``: working and amortized boxes,
    the config's noise model), each stage's images read for up to 30 s with ``data.loader_threads``
    threads (``--config.data.loader_threads``; 0 = ``default_threads``)."""
    import tempfile

    from jaxcryo.dataset import prepare_data
    from jaxcryo.io.loader import iterate_batches

    config.data.particles = path or config.data.particles
    with tempfile.TemporaryDirectory() as workdir:
        data = prepare_data(config, pathlib.Path(workdir), log=lambda *_: None)
    for stage, source in (("amortized", data.coarse), ("auto-decoding", data.source)):
        start, n, anon = time.perf_counter(), 0, 0.0
        for _, batch in iterate_batches(source, 64, seed=0, epoch=0):
            n += 1
            if n % 20 == 0:
                anon = max(anon, anon_rss_gib())
            if time.perf_counter() - start > 30:
                break
        seconds = time.perf_counter() - start
        noise = "whitened" if source.profiles is not None else "not whitened"
        print(f"loader, {stage} box {source.image_size} px ({noise}), {source.threads} thread(s): {n * 64 / seconds:.0f} "
              f"images/s ({n} batches of 64, shuffled over {len(data.table)} particles); peak anonymous RSS {anon:.2f} GiB")
    print(f"peak RSS {peak_rss_gib():.2f} GiB (incl. mapped stack pages)")


def bench_slices(size: int = 64, images: int = 256, poses: int = 15) -> None:
    """Forward losses of ``poses`` poses per image, the forms the pose searches and the mate test use,
    and the two that XLA:CPU runs slowly (``losses.weighted_sum``, ``losses.loss_at``)."""
    from jaxcryo import geometry, losses, slicing

    keys = jax.random.split(jax.random.key(0), 5)
    vol = jax.random.normal(keys[0], (size,) * 3)
    rots = geometry.random_rotations(keys[1], (images, poses))
    ctf, target = (jax.random.normal(k, (images, size, size)) for k in keys[2:4])
    shifts = jax.random.normal(keys[4], (images, poses, 2))
    mask = slicing.frequency_mask(size, 1.0)
    forms = {
        "slices alone": lambda: slicing.extract_slices(vol, rots, size),
        "loss, summed with jnp.sum": lambda: 0.5 * jnp.sum((losses.predict(vol, rots, ctf) - target[:, None]) ** 2 * mask,
                                                           axis=(-2, -1)),
        "loss (losses.per_image_loss)": lambda: losses.per_image_loss(losses.predict(vol, rots, ctf), target, mask),
        "loss, shifted slices": lambda: losses.per_image_loss(losses.predict(vol, rots, ctf, shifts), target, mask),
        "loss, shifted target (losses.loss_at)": lambda: losses.loss_at(vol, rots, ctf, target, mask, shifts_px=shifts),
    }
    for name, form in forms.items():
        seconds = _best_seconds(jax.jit(form))
        print(f"{name:40s} {images} x {poses} poses at {size} px: {1000 * seconds:6.0f} ms, {images * poses / seconds:8.0f} slices/s")


def bench_global_search(size: int = 48, images: int = 64, rotations: int = 2_048) -> None:
    """The global search's shared-rotation products (``losses.search_losses`` through
    ``search.global_search``) with 1, 9 and 25 shifted copies per image, beside the bare matrix product
    of the same shape: a gap of several times means XLA has fused an operand (the slices or the copies)
    into the product and redoes it per tile (docs/results.md, "Measured")."""
    from jaxcryo import geometry, search, slicing

    keys = jax.random.split(jax.random.key(0), 4)
    vol = jax.random.normal(keys[0], (size,) * 3)
    ctf, target = (jax.random.normal(k, (images, size, size)) for k in keys[1:3])
    grid = geometry.random_rotations(keys[3], (rotations,))
    mask, shift = slicing.frequency_mask(size, 1.0), jnp.zeros((images, 2))

    for radius in (0, 1, 2):
        offsets = search.shift_offsets(radius)
        copies = offsets.shape[0]
        found = jax.jit(lambda v, c, t, s, o=offsets: search.global_search(v, grid, c, t, mask, s, o))
        bare = jax.jit(lambda a, b: a @ b.T)
        a, b = jnp.ones((images * copies, size * size)), jnp.ones((rotations, size * size))
        seconds, floor = _best_seconds(found, vol, ctf, target, shift), _best_seconds(bare, a, b)
        print(f"global search, {copies:2d} copies: {images} images x {rotations} rotations at {size} px: "
              f"{1000 * seconds:6.0f} ms ({images / seconds:7.0f} images/s); the bare product {1000 * floor:5.0f} ms")


def main(argv):
    del argv
    import json

    if _SCALE_ONE.value:
        result = measure_one(_CONFIG.value, pathlib.Path(_PARTICLES.value), pathlib.Path(_SCALE_DIR.value),
                                   _SCALE_STEPS.value)
        print("RESULT " + json.dumps(result))
        return
    print(f"machine: {runio.describe_machine()}")
    if _SCALE.value:
        run_all([int(s) for s in _SIZES.value], pathlib.Path(_SCALE_DIR.value), _SCALE_STEPS.value,
                      config_flags.get_config_filename(flags.FLAGS["config"]))
    elif _WHAT.value == "loader":
        bench_loader(_CONFIG.value, _PARTICLES.value)
    elif _WHAT.value == "slices":
        bench_slices()
        bench_global_search()
    else:
        bench_steps(_CONFIG.value)


if __name__ == "__main__":
    app.run(main, flags_parser=cli.parse_flags)
