"""One run over two processes (JAX's multi-controller runtime, gloo collectives on CPU) against one
process with two devices: the same losses, poses and map, one writer, and a resume that needs the
same number of processes."""

import json
import os
import pathlib
import socket
import subprocess
import sys

import mrcfile
import numpy as np
import pytest

from jaxcryo.io import read_particles

ROOT = pathlib.Path(__file__).resolve().parents[1]
ARGS = ["--config=experiments/quickstart.py", "--config.progress_bar=False", "--config.simulate.n_images=48",
        "--config.simulate.image_size=32", "--config.simulate.pixel_size_angstrom=6.0", "--config.model.n_heads=2",
        "--config.model.width=0.0625", "--config.model.search_candidates=64", "--config.train.batch_size=16",
        "--config.train.epochs_amortized=1", "--config.train.epochs_autodecoding=1",
        "--config.train.amortized_image_size=0", "--config.train.log_every=1", "--config.train.research_candidates=64",
        "--config.train.amortized_starts=1", "--config.train.amortized_shift_starts=0"]


def _start(workdir, devices: int, extra=()):
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", JAX_PLATFORMS="cpu")
    return subprocess.Popen([sys.executable, "-m", "experiments.run", *ARGS, f"--workdir={workdir}", *extra], cwd=ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _two_processes(workdir):
    with socket.socket() as s:  # a free port for the coordinator
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return [_start(workdir, 1, ["--multihost", f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2",
                                f"--process_id={i}"]) for i in (0, 1)]


def _finish(procs, timeout=600):
    outs = [p.communicate(timeout=timeout)[0] for p in procs]
    return [p.returncode for p in procs], outs


def _losses(workdir):
    return [(r["stage"], r["step"], r["loss"]) for r in map(json.loads, (workdir / "metrics.jsonl").read_text().splitlines())
            if not r.get("epoch_end")]


pytestmark = pytest.mark.slow  # three processes, two runs: ~2.7 min under load, over the default tier's share


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("distributed")
    procs = _two_processes(root / "two_processes") + [_start(root / "one_process", 2)]
    codes, outs = _finish(procs)
    assert codes == [0, 0, 0], "\n".join(o[-1500:] for o in outs)
    return root / "two_processes", root / "one_process", outs


def test_two_processes_give_the_run_of_one_process_with_two_devices(runs):
    multi, single, _ = runs
    a, b = _losses(multi), _losses(single)
    assert [x[:2] for x in a] == [x[:2] for x in b] and len(a) == 6
    np.testing.assert_allclose([x[2] for x in a], [x[2] for x in b], rtol=1e-4)
    pa, pb = read_particles(multi / "poses.star"), read_particles(single / "poses.star")
    assert len(pa) == 48 and len(set(pa.image_name.tolist())) == 48  # every particle once
    assert pa.image_name.tolist() == pb.image_name.tolist()
    np.testing.assert_allclose(pa.euler_deg, pb.euler_deg, atol=0.01)
    ma, mb = mrcfile.read(multi / "reconstruction.mrc"), mrcfile.read(single / "reconstruction.mrc")
    assert np.corrcoef(ma.ravel(), mb.ravel())[0, 1] > 0.999


def test_only_process_0_speaks(runs):
    _, _, outs = runs
    assert "finished:" in outs[0] and "finished:" not in outs[1]


def test_resume_needs_the_same_number_of_processes(runs):
    multi, _, _ = runs
    before = {p: p.read_bytes() for p in multi.rglob("*") if p.is_file()}
    codes, outs = _finish([_start(multi, 2)])
    assert codes == [2]
    assert f"error: {multi}: its run was written by 2 process(es); resume it with the same number" in outs[0]
    assert {p: p.read_bytes() for p in multi.rglob("*") if p.is_file()} == before
