"""Outputs for the next tool (poses.cs) and the real-data path (experiments/particles.py) on real particles."""

import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcryo import geometry
from jaxcryo.io import read_particles
from jaxcryo.io.cryosparc import write_cs

REPO = __import__("pathlib").Path(__file__).resolve().parents[1]


def test_cs_pose_follows_cryosparcs_documented_convention(shared_formats, tmp_path):
    """cryoSPARC: alignments3D/pose is the axis-angle vector of the rotation taking image coordinates
    to the map's frame, the transpose of RELION's Euler matrix; alignments3D/shift is the RELION origin in
    pixels. Worked by hand: RELION's Euler matrix for (rot, tilt, psi) = (90, 0, 0) is
    [[0, 1, 0], [-1, 0, 0], [0, 0, 1]]; its transpose turns +90 degrees about z: pose = [0, 0, pi/2]."""
    table = read_particles(shared_formats / "empiar_10076_7.star")
    rot = np.asarray(geometry.euler_to_matrix(jnp.asarray(np.tile([90.0, 0.0, 0.0], (len(table), 1)), jnp.float32)))
    origin = np.tile([2.62, -1.31], (len(table), 1))  # A; the stack's pixel is 1.31 A
    write_cs(tmp_path / "p.cs", table, rot, origin)
    data = np.load(tmp_path / "p.cs")
    assert np.allclose(rot[0], [[0, 1, 0], [-1, 0, 0], [0, 0, 1]], atol=1e-6)
    assert np.allclose(data["alignments3D/pose"], [0.0, 0.0, np.pi / 2], atol=1e-5)
    assert np.allclose(data["alignments3D/shift"], [[2.0, -1.0]], atol=1e-4)
    assert np.allclose(data["alignments3D/psize_A"], 1.31, atol=1e-4)
    for field in ("uid", "blob/path", "blob/idx", "ctf/df1_A", "ctf/accel_kv"):
        assert field in data.dtype.names


@pytest.mark.parametrize("name", ["empiar_10076_7.star", "empiar_10076_7.cs"])
def test_cs_round_trip_through_the_reader(shared_formats, tmp_path, name):
    table = read_particles(shared_formats / name)
    rots = np.asarray(geometry.random_rotations(jax.random.key(0), (len(table),)))
    origin = np.random.default_rng(0).normal(0, 5, (len(table), 2))
    subset = 1 + np.arange(len(table)) % 2
    (tmp_path / "empiar_10076_7.mrc").symlink_to(shared_formats / "empiar_10076_7.mrc")
    write_cs(tmp_path / "poses.cs", table, rots, origin, subset)
    back = read_particles(tmp_path / "poses.cs")
    back_rot = geometry.euler_to_matrix(jnp.asarray(back.euler_deg, jnp.float32))
    assert float(jnp.max(geometry.geodesic_distance_deg(back_rot, jnp.asarray(rots)))) <= 0.01
    assert np.abs(back.origin_angstrom - origin).max() < 1e-4
    assert back.random_subset.tolist() == subset.tolist()
    assert np.allclose(back.defocus_u_angstrom, table.defocus_u_angstrom, atol=0.01)
    assert back.image_index.tolist() == table.image_index.tolist()
    if name.endswith(".cs"):  # the input's own fields travel unchanged
        original = np.load(shared_formats / name)
        data = np.load(tmp_path / "poses.cs")
        assert (data["uid"] == original["uid"]).all() and (data["blob/import_sig"] == original["blob/import_sig"]).all()


def _run(*args, cwd):
    return subprocess.run([sys.executable, "-m", "experiments.run", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=600)


def _particles_args(shared_formats, tmp_path):
    return ["--config=experiments/particles.py", f"--config.data.particles={shared_formats / 'empiar_10076_7.star'}",
              "--config.data.image_size=32", "--config.train.batch_size=4", "--config.train.epochs_amortized=2",
              "--config.train.epochs_autodecoding=2", "--config.model.search_candidates=32",
              "--config.train.research_candidates=32", "--config.progress_bar=False", f"--workdir={tmp_path / 'w'}"]


def test_real_dark_particles_refused_in_one_line(shared_formats, tmp_path):
    """Seven real EMPIAR-10076 particles: their protein is dark (the contrast check finds z ~ -12), so the
    real-data config refuses them without data.invert_contrast and writes nothing."""
    refused = _run(*_particles_args(shared_formats, tmp_path), cwd=REPO)
    assert refused.returncode != 0
    last = refused.stderr.strip().splitlines()[-1]
    assert "empiar_10076_7.star: the protein looks dark in these images" in last and "data.invert_contrast=True" in last
    assert not (tmp_path / "w").exists() or not any((tmp_path / "w").iterdir())


@pytest.mark.slow
def test_real_particles_through_the_particles_config(shared_formats, tmp_path):
    """The same seven particles, inverted: the whole real-data path runs (too few for a map: a smoke test)."""
    done = _run(*_particles_args(shared_formats, tmp_path), "--config.data.invert_contrast=True", cwd=REPO)
    assert done.returncode == 0, done.stderr[-2000:]
    work = tmp_path / "w"
    assert "plan: 7 particles, box 32 px" in done.stderr
    star, cs = read_particles(work / "poses.star"), read_particles(work / "poses.cs", str(shared_formats))
    assert len(star) == len(cs) == 7 and sorted(star.random_subset.tolist()) == [1, 1, 1, 2, 2, 2, 2]
    a = geometry.euler_to_matrix(jnp.asarray(star.euler_deg, jnp.float32))
    b = geometry.euler_to_matrix(jnp.asarray(cs.euler_deg, jnp.float32))
    assert float(jnp.max(geometry.geodesic_distance_deg(a, b))) <= 0.01
    assert np.abs(star.origin_angstrom - cs.origin_angstrom).max() < 1e-3
    summary = json.loads((work / "summary.json").read_text())
    assert summary["n_particles"] == 7
