"""The scale benchmark (``python -m experiments.bench --scale``): what a run costs as N grows.

For each N a stack of N random 32 px images (a star and one .mrcs, written once under --scale_dir and
memory-mapped) is opened by a real ``train.Run`` with the quickstart's model, in its own process so
that peak RSS is per N. Printed per N:
* host peak RSS (and RSS after the data are opened);
* device bytes per particle: the auto-decoding pose tables on one device, over N;
* images/s of the training steps of each stage (``--scale_steps`` steps after a compiling one, the real
  loader reading the stack);
* seconds per epoch outside training steps, in two parts: bookkeeping (epoch outputs, the switch's
  pose-change sample, the checkpoint's blocking part), which should not grow with N, and the
  method's own passes over the stack (auto-decoding's volume by inversion, the re-search when due),
  measured on a 20,000-image subset and scaled to N;
* the bookkeeping's share of an epoch (training steps + bookkeeping) at that N.
"""

from __future__ import annotations

import json
import pathlib
import resource
import shutil
import subprocess
import sys
import time

import numpy as np

SUBSET = 20_000  # images timed for the passes over the stack, scaled to N


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def anon_rss_gib() -> float:
    """Resident memory that is not file-backed (memory-mapped stack pages are the page cache's)."""
    try:
        for line in open("/proc/self/status"):
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return float("nan")


def write_random_stack(folder: pathlib.Path, n: int, size: int = 32, pixel: float = 4.0) -> pathlib.Path:
    """particles.star + particles.mrcs of ``n`` Gaussian-noise images (written once; reused)."""
    from jaxcryo.io import mrc
    from jaxcryo.io.star import write_particles_star
    from jaxcryo.io.table import ParticleTable

    star = folder / "particles.star"
    if star.exists():
        return star
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(n)
    writer = mrc.StackWriter(folder / "particles.mrcs", n, size, pixel)
    for start in range(0, n, 50_000):
        writer.write(rng.standard_normal((min(50_000, n - start), size, size), np.float32))
    writer.close()
    table = ParticleTable(
        source=str(star), image_path=np.full(n, str(folder / "particles.mrcs")), image_index=np.arange(n),
        image_name=np.array([f"{i + 1:07d}@particles.mrcs" for i in range(n)]), pixel_size_angstrom=np.full(n, pixel),
        image_size=np.full(n, size), optics_group=np.ones(n, np.int64),
        defocus_u_angstrom=rng.uniform(10_000, 25_000, n), defocus_v_angstrom=rng.uniform(10_000, 25_000, n),
        defocus_angle_deg=rng.uniform(0, 180, n), voltage_kv=np.full(n, 300.0), spherical_aberration_mm=np.full(n, 2.7),
        amplitude_contrast=np.full(n, 0.1), phase_shift_deg=np.zeros(n), b_factor_angstrom2=np.zeros(n),
        phase_flipped=np.zeros(n))
    write_particles_star(star, table)
    return star


def _timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def _timed_second(fn):
    """Seconds of the second call (the first compiles or creates what every later epoch reuses)."""
    fn(0)
    return _timed(lambda: fn(1))[1]


def measure_one(config, star: pathlib.Path, workdir: pathlib.Path, n_steps: int) -> dict:
    """One N, in this process: the figures above as a dict."""
    import jax

    from jaxcryo import train
    from jaxcryo.dataset import AMORTIZED
    from jaxcryo.io.loader import iterate_batches
    from jaxcryo.stages import AUTODECODING
    from jaxcryo.steps import POSE_TABLES

    config.data.particles = str(star)
    run, open_s = _timed(lambda: train.Run(config, workdir))
    run.elapsed_before = 0.0
    out = {"n": run.n, "open_s": open_s, "rss_after_open_gib": anon_rss_gib()}
    bs = config.train.batch_size

    def train_rate(stage, state, step_fn, extra=()):
        batches = iterate_batches(run.data.source_for(stage), bs, config.seed, 0)
        state, _ = step_fn(state, run.training_batch(next(batches)[1], stage), 1.0, *extra)  # compiles, as a run feeds it
        jax.block_until_ready(state)
        start = time.perf_counter()
        for _ in range(n_steps):
            state, o = step_fn(state, run.training_batch(next(batches)[1], stage), 1.0, *extra)
        jax.block_until_ready(o["loss"])
        batches.close()
        return state, n_steps * bs / (time.perf_counter() - start)

    state, out["amortized_images_per_s"] = train_rate(AMORTIZED, run.init_amortized(), run.amortized_step)
    out["amortized_end_of_epoch_s"] = _timed_second(lambda i: run.end_of_epoch(AMORTIZED, state, 1 + i))
    out["amortized_checkpoint_s"] = _timed_second(lambda i: run.save(state, {"stage": AMORTIZED, "epoch": 1 + i, "step": 0,
                                                                            "global_step": 1 + i}, "bench"))
    rows = np.arange(min(SUBSET, run.n))
    _, seconds = _timed(lambda: run.encoder_rotations(state, 1.0, rows=rows))
    out["switch_pass_images_per_s"] = len(rows) / seconds
    tables = (np.zeros((run.n, 3, 3), np.float32) + np.eye(3, dtype=np.float32), np.zeros((run.n, 2), np.float32))
    ad = run.init_autodecoding(run.upsample_volume(state["vol_params"]), *tables)
    out["device_bytes_per_particle"] = sum(ad[k].addressable_shards[0].data.nbytes for k in POSE_TABLES) / run.n
    ad, out["autodecoding_images_per_s"] = train_rate(AUTODECODING, ad, run.autodecoding_step, (1.0,))
    out["autodecoding_end_of_epoch_s"] = _timed_second(lambda i: run.end_of_epoch(AUTODECODING, ad, 3 + i))
    out["autodecoding_checkpoint_s"] = _timed_second(lambda i: run.save(ad, {"stage": AUTODECODING, "epoch": 1 + i,
                                                                            "step": 0, "global_step": 3 + i}, "bench"))
    run.checkpoints.close()
    if run.inverted_volume:
        from jaxcryo import inversion
        from jaxcryo.io.loader import half_set_labels

        labels = half_set_labels(run.data.table, 0)[rows]
        sub = run.data.source
        _, seconds = _timed(lambda: inversion.accumulate(sub, tables[0][rows], tables[1][rows], labels, run.inference_batch))
        out["inversion_images_per_s"] = len(rows) / seconds
    out["peak_rss_gib"] = peak_rss_gib()
    return out


def report(results: list[dict]) -> None:
    print(f"{'N':>9} {'open s':>7} {'RSS GiB':>8} {'peak GiB':>9} {'dev B/particle':>15} {'amort img/s':>12} "
          f"{'AD img/s':>9} {'bookkeep s/epoch (A, AD)':>25} {'share':>7} {'passes s/epoch':>15}")
    for r in results:
        n = r["n"]
        keep_a = r["amortized_end_of_epoch_s"] + r["amortized_checkpoint_s"]
        keep_ad = r["autodecoding_end_of_epoch_s"] + r["autodecoding_checkpoint_s"]
        train_a = n / r["amortized_images_per_s"]
        train_ad = n / r["autodecoding_images_per_s"]
        share = max(keep_a / (keep_a + train_a), keep_ad / (keep_ad + train_ad))
        passes = n / r["inversion_images_per_s"] if "inversion_images_per_s" in r else 0.0
        print(f"{n:9d} {r['open_s']:7.1f} {r['rss_after_open_gib']:8.2f} {r['peak_rss_gib']:9.2f} "
              f"{r['device_bytes_per_particle']:15.1f} {r['amortized_images_per_s']:12.0f} {r['autodecoding_images_per_s']:9.0f} "
              f"{keep_a:12.2f} {keep_ad:12.2f} {100 * share:6.2f}% {passes:15.0f}")
    print("share: bookkeeping over (training steps + bookkeeping) of one epoch, the larger of the two stages; "
          "passes: auto-decoding's inversion over all N (the method's volume update), from its rate on "
          f"{SUBSET} images; the switch's one-off pass runs at {results[-1]['switch_pass_images_per_s']:.0f} images/s")


def run_all(sizes: list[int], scale_dir: pathlib.Path, n_steps: int, config_path: str) -> None:
    results = []
    for n in sizes:
        star = write_random_stack(scale_dir / f"n{n}", n)
        work = scale_dir / f"n{n}" / "work"
        if work.exists():
            shutil.rmtree(work)
        cmd = [sys.executable, "-m", "experiments.bench", "--scale_one", f"--particles={star}", f"--config={config_path}",
               f"--scale_steps={n_steps}", f"--scale_dir={work}"]
        done = subprocess.run(cmd, capture_output=True, text=True)
        line = [ln for ln in done.stdout.splitlines() if ln.startswith("RESULT ")]
        if done.returncode or not line:
            raise SystemExit(f"scale bench at N={n} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
        results.append(json.loads(line[0][len("RESULT "):]))
        print(f"N={n}: {results[-1]}", flush=True)
    report(results)
