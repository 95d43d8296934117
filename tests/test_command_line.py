"""The command line as a user runs it, in subprocesses: several devices, one-line errors, kill -9 and resume."""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import mrcfile
import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _run_cli(workdir: pathlib.Path, devices: int, extra=()):
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", JAX_PLATFORMS="cpu")
    args = [sys.executable, "-m", "experiments.run", "--config=experiments/quickstart.py", f"--workdir={workdir}",
            "--config.progress_bar=False", "--config.simulate.n_images=64", "--config.simulate.image_size=32",
            "--config.simulate.pixel_size_angstrom=6.0", "--config.model.n_heads=2", "--config.model.width=0.0625",
            "--config.model.search_candidates=64", "--config.train.batch_size=16", "--config.train.epochs_amortized=1",
            "--config.train.epochs_autodecoding=1", "--config.train.amortized_image_size=0", "--config.train.log_every=1",
            "--config.train.amortized_starts=1", "--config.train.amortized_shift_starts=0", *extra]
    return subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _losses(workdir):
    return [(r["stage"], r["loss"]) for r in map(json.loads, (workdir / "metrics.jsonl").read_text().splitlines())
            if not r.get("epoch_end")]


@pytest.mark.slow  # two end-to-end runs in subprocesses
def test_two_devices_give_the_same_losses_as_one(tmp_path):
    procs = [_run_cli(tmp_path / f"d{n}", n) for n in (1, 2)]
    for p in procs:
        out, _ = p.communicate(timeout=600)
        assert p.returncode == 0, out[-2000:]
    one, two = _losses(tmp_path / "d1"), _losses(tmp_path / "d2")
    assert [s for s, _ in one] == [s for s, _ in two] and len(one) == 8
    amortized = [i for i, (s, _) in enumerate(one) if s == "amortized"]
    np.testing.assert_allclose([two[i][1] for i in amortized], [one[i][1] for i in amortized], rtol=2e-4)
    # auto-decoding batches differ: each device draws from the block of particles whose poses it holds
    a, b = (mrcfile.read(tmp_path / d / "reconstruction.mrc") for d in ("d1", "d2"))
    assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.95


@pytest.mark.slow  # two end-to-end runs in subprocesses
def test_half_sets_on_two_devices_run_concurrently_with_the_sequential_result(tmp_path):
    procs = [_run_cli(tmp_path / f"d{n}", n, ["--config.halfsets=True"]) for n in (1, 2)]
    outs = []
    for p in procs:
        out, _ = p.communicate(timeout=900)
        assert p.returncode == 0, out[-2000:]
        outs.append(out)
    assert "run concurrently on devices [0] and [1]" in outs[1] and "run concurrently" not in outs[0]
    for half in ("half1", "half2"):  # each half alone on one device either way: the same numbers
        a = mrcfile.read(tmp_path / "d1" / half / "reconstruction.mrc")
        b = mrcfile.read(tmp_path / "d2" / half / "reconstruction.mrc")
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-4 * np.abs(a).max())
    assert (tmp_path / "d2" / "reconstruction.mrc").exists() and (tmp_path / "d2" / "summary.json").exists()


def test_bad_config_is_one_line(tmp_path):
    p = _run_cli(tmp_path, 1, ["--config.data.particles=/nonexistent/particles.star"])
    out, _ = p.communicate(timeout=300)
    assert p.returncode == 2
    assert out.strip().splitlines()[-1] == "error: /nonexistent/particles.star: file not found"


@pytest.mark.parametrize("content, message", [
    (None, "config file not found"),
    ("def get_config(:\n", "cannot load the config (SyntaxError: invalid syntax"),
])
def test_a_config_file_that_cannot_be_loaded_is_one_line(tmp_path, content, message):
    config = tmp_path / "my_config.py"
    if content is not None:
        config.write_text(content)
    p = subprocess.run([sys.executable, "-m", "experiments.run", f"--config={config}", f"--workdir={tmp_path / 'run'}"],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    last = p.stderr.strip().splitlines()[-1]
    assert p.returncode == 2 and last.startswith(f"error: {config}: {message}"), p.stderr[-2000:]
    assert not (tmp_path / "run").exists()


def test_floors_of_a_set_without_its_truth_is_one_line(tmp_path):
    (tmp_path / "particles.star").write_text("data_\n")
    p = subprocess.run([sys.executable, "-m", "experiments.floors", f"--data={tmp_path}"], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    missing = tmp_path / "ground_truth.mrc"
    assert p.returncode == 2
    assert p.stderr.strip().splitlines()[-1] == f"error: {missing}: missing (a simulated set's directory holds it)"


@pytest.mark.slow
def test_fault_injection_kill_minus_9_at_random_moments(tmp_path):
    """SIGKILL at seeded random moments (any stage, mid-checkpoint: one is saved every step, and at the
    switch of a downsampled amortized stage), rerunning the same command each time: the run finishes
    with the uninterrupted run's map and each epoch logged once."""
    extra = ["--config.simulate.image_size=48", "--config.simulate.pixel_size_angstrom=4.0",
             "--config.train.amortized_image_size=32", "--config.train.epochs_amortized=2",
             "--config.train.epochs_autodecoding=2", "--config.train.checkpoint_every_steps=1"]
    reference = tmp_path / "reference"
    start = time.perf_counter()
    p = _run_cli(reference, 1, extra)
    out, _ = p.communicate(timeout=900)
    assert p.returncode == 0, out[-2000:]
    total = time.perf_counter() - start
    killed = tmp_path / "killed"
    rng = np.random.default_rng(2026)
    for delay in rng.uniform(0.15 * total, 0.95 * total, size=6):
        p = _run_cli(killed, 1, extra)
        time.sleep(delay)
        p.send_signal(signal.SIGKILL)
        p.communicate()
    p = _run_cli(killed, 1, extra)
    out, _ = p.communicate(timeout=900)
    assert p.returncode == 0, out[-2000:]
    a, b = mrcfile.read(reference / "reconstruction.mrc"), mrcfile.read(killed / "reconstruction.mrc")
    assert np.corrcoef(a.ravel(), b.ravel())[0, 1] >= 0.99
    ends = [(r["stage"], r["epoch"]) for r in map(json.loads, (killed / "metrics.jsonl").read_text().splitlines())
            if r.get("epoch_end")]
    assert ends == [("amortized", 1), ("amortized", 2), ("autodecoding", 1), ("autodecoding", 2)]
