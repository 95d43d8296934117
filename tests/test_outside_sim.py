"""experiments/outside_sim.py's own parts (the image formation itself needs cryoJAX, which the tests do not
install; its conventions are checked in test_outside_golden.py): the noise it adds, and that the set it
writes reads back through jaxcryo's front door with the poses and displacements drawn."""

import numpy as np
import pytest
from absl import app

from experiments import outside_sim
from jaxcryo.io import read_particles
from references import write_pdb


def test_noise_has_the_snr_and_colour_asked_for():
    rng = np.random.default_rng(0)
    clean = np.zeros((400, outside_sim.BOX, outside_sim.BOX))
    clean[:, 24:40, 24:40] = rng.uniform(0.5, 1.5, (400, 1, 1))
    noisy = outside_sim.add_noise(clean, 0.1, False, np.random.default_rng(1))
    np.testing.assert_allclose((noisy - clean).var(), clean.var(axis=(1, 2)).mean() / 0.1, rtol=0.02)
    # the noise's colour, seen past a signal that has power only in the corners of the spectrum (|k| = 0.71)
    checkerboard = np.repeat((np.indices((outside_sim.BOX, outside_sim.BOX)).sum(0) % 2 - 0.5)[None], 400, 0)
    k = np.sqrt(np.add.outer(np.fft.fftfreq(outside_sim.BOX) ** 2, np.fft.fftfreq(outside_sim.BOX) ** 2))

    def low_over_high(noise_power_ratio):
        images = outside_sim.add_noise(checkerboard, 0.1, True, np.random.default_rng(1), noise_power_ratio)
        power = np.abs(np.fft.fft2(images - images.mean(axis=(1, 2), keepdims=True))) ** 2
        return power[:, (k > 0.02) & (k < 0.06)].mean() / power[:, (k > 0.45) & (k < 0.5)].mean()

    assert 6 < low_over_high(10.0) < 9  # 10x from k = 0 to Nyquist: 10^(0.96 - 0.08) = 7.6x between these bands
    assert 0.9 < low_over_high(1.0) < 1.1


def test_written_set_reads_back_with_its_truth(tmp_path):
    rng = np.random.default_rng(2)
    p = outside_sim.draw_particles(12, True, rng)
    images = rng.standard_normal((12, outside_sim.BOX, outside_sim.BOX)).astype(np.float32)
    outside_sim.write_set(tmp_path, images, np.zeros((outside_sim.BOX,) * 3, np.float32), p)
    plain = read_particles(str(tmp_path / "particles.star"))
    assert plain.euler_deg is None and plain.origin_angstrom is None  # nothing for a run to find
    truth = read_particles(str(tmp_path / "ground_truth_poses.star"))
    np.testing.assert_allclose(truth.euler_deg, np.c_[p["rot"], p["tilt"], p["psi"]], atol=1e-5)
    np.testing.assert_allclose(truth.displacements_angstrom(), p["displacement"], atol=1e-5)
    assert np.abs(p["displacement"]).max() > 1.0 and np.abs(p["displacement"]).max() <= 0.05 * 64 * 3.0
    np.testing.assert_allclose(truth.defocus_u_angstrom - truth.defocus_v_angstrom,
                               p["defocus_u"] - p["defocus_v"], atol=1e-3)


def test_another_microscope_is_written_as_asked(tmp_path):
    optics = {"voltage_kv": 200.0, "spherical_aberration_mm": 2.0, "amplitude_contrast": 0.07}
    p = outside_sim.draw_particles(300, False, np.random.default_rng(5), defocus_angstrom=(6000.0, 16000.0))
    images = np.zeros((300, outside_sim.BOX, outside_sim.BOX), np.float32)
    outside_sim.write_set(tmp_path, images, np.zeros((outside_sim.BOX,) * 3, np.float32), p, optics=optics)
    table = read_particles(str(tmp_path / "particles.star"))
    assert np.all(table.voltage_kv == 200.0) and np.all(table.spherical_aberration_mm == 2.0)
    assert np.all(table.amplitude_contrast == 0.07)
    mean = (table.defocus_u_angstrom + table.defocus_v_angstrom) / 2
    assert 6000 <= mean.min() < 6500 and 15500 < mean.max() <= 16000


def test_two_fold_particle_is_a_pseudo_symmetric_dimer():
    xyz = outside_sim.pseudo_atoms(5, two_fold=True)
    lobe, copy, arm = xyz[:800], xyz[800:1600], xyz[1600:]
    assert len(arm) == 45
    # the copy is the lobe moved rigidly (30 % of it redrawn) ...
    same = np.abs(np.linalg.norm(lobe[:, None] - lobe[None], axis=-1)
                  - np.linalg.norm(copy[:, None] - copy[None], axis=-1)) < 1e-3
    rigid = same.mean(1) > 0.5
    assert 0.6 < rigid.mean() < 0.8
    # ... by a turn of 180 deg
    a, b = lobe[rigid] - lobe[rigid].mean(0), copy[rigid] - copy[rigid].mean(0)
    u, _, vt = np.linalg.svd(b.T @ a)
    turn = u @ np.diag([1, 1, np.linalg.det(u @ vt)]) @ vt
    assert np.abs(b - a @ turn.T).max() < 1e-3
    assert np.degrees(np.arccos(np.clip((np.trace(turn) - 1) / 2, -1, 1))) > 179.9


def test_atomic_model_selection_takes_one_chains_residues_about_their_centre(tmp_path):
    pytest.importorskip("gemmi")
    write_pdb(tmp_path / "tiny.pdb", {("A", 5): [("N", "N", (0.0, 0.0, 0.0)), ("CA", "C", (4.0, 0.0, 0.0))],
                                      ("A", 6): [("S", "S", (4.0, 6.0, 0.0)), ("H", "H", (9.0, 9.0, 9.0))],
                                      ("A", 7): [("O", "O", (50.0, 0.0, 0.0))], ("B", 6): [("C", "C", (0.0, 0.0, 80.0))]})

    xyz, atomic_numbers = outside_sim.model_atoms(str(tmp_path / "tiny.pdb"), "A:5-6")
    # N, C and S of chain A's residues 5-6; the hydrogen is left out, as most deposited models leave it out
    assert sorted(atomic_numbers.tolist()) == [6, 7, 16]
    expected = np.array([[0.0, 0.0, 0.0], [4.0, 0.0, 0.0], [4.0, 6.0, 0.0]])
    np.testing.assert_allclose(np.sort(xyz, 0), np.sort(expected - expected.mean(0), 0), atol=1e-3)
    assert outside_sim.model_atoms(str(tmp_path / "tiny.pdb"), "A:6-6")[1].tolist() == [16]  # from residue 6 on
    with pytest.raises(app.UsageError, match="CHAIN:FIRST-LAST"):
        outside_sim.model_atoms(str(tmp_path / "tiny.pdb"), "A5-6")
    with pytest.raises(app.UsageError, match="missing.pdb: atomic model not found"):
        outside_sim.model_atoms(str(tmp_path / "missing.pdb"), "A:5-6")
    with pytest.raises(app.UsageError, match=r"no atoms in the first model \(chain C, residues 1-9\)"):
        outside_sim.model_atoms(str(tmp_path / "tiny.pdb"), "C:1-9")


def test_a_centred_set_shares_every_other_draw():
    """``--max_shift_fraction=0`` centres the particles and changes nothing else drawn (poses, CTFs),
    so a centred and an offset set can be compared image by image."""
    offset = outside_sim.draw_particles(50, True, np.random.default_rng(7))
    centred = outside_sim.draw_particles(50, True, np.random.default_rng(7), max_shift_fraction=0.0)
    assert np.all(centred["displacement"] == 0)
    bound = 0.05 * outside_sim.BOX * outside_sim.PIXEL_ANGSTROM
    assert 0.5 * bound < np.abs(offset["displacement"]).max() <= bound
    for key in ("rot", "tilt", "psi", "defocus_u", "defocus_v", "defocus_angle"):
        np.testing.assert_array_equal(centred[key], offset[key])


def test_another_box_and_pixel_size_reach_the_star_and_the_offsets(tmp_path):
    """``--box`` / ``--pixel_size_angstrom``: the offsets scale with the box in A, and the star says the box
    and pixel size the stack was made at."""
    p = outside_sim.draw_particles(40, True, np.random.default_rng(3), box=128, pixel_angstrom=1.5)
    bound = 0.05 * 128 * 1.5
    assert 0.5 * bound < np.abs(p["displacement"]).max() <= bound
    images = np.zeros((40, 128, 128), np.float32)
    outside_sim.write_set(tmp_path, images, np.zeros((128,) * 3, np.float32), p, pixel_angstrom=1.5)
    table = read_particles(str(tmp_path / "particles.star"))
    assert np.all(table.pixel_size_angstrom == 1.5) and np.all(table.image_size == 128)
    # the B 80 A^2 envelope is in A: a checkerboard (|k| = 0.71 / px) keeps exp(-80 (0.71 / 1.5)^2 / 4) = 1.2 %
    # of its amplitude at 1.5 A/px (33 % at 3 A/px); noise negligible at this SNR
    checkerboard = np.repeat((np.indices((128, 128)).sum(0) % 2 - 0.5)[None], 40, 0)
    kept = outside_sim.add_noise(checkerboard, 1e12, True, np.random.default_rng(4), pixel_angstrom=1.5).std(axis=(1, 2)) / 0.5
    np.testing.assert_allclose(np.median(kept), np.exp(-80 * 0.5 / 1.5**2 / 4), rtol=0.2)
