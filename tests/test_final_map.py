"""The final map of a tiny run: the direct inversion at the poses written (plain, posterior-weighted, after
held-out steps, at the stored box after a working resolution, masked), and the CTFs each stage's
batches carry."""

import shutil

import jax.numpy as jnp
import mrcfile
import numpy as np
import pytest

from jaxcryo import evaluate, geometry, inversion, train
from jaxcryo.io import read_particles
from tinyrun import random_pose_star, tiny_config


def test_true_poses_give_a_far_better_map_than_random_ones(finished_run, tmp_path):
    """The final-map path at the true poses against random poses, on the tiny set's 96 images."""
    data = finished_run[0] / "data"
    good = inversion.compare_with_truth(inversion.reconstruct_from_star(data / "particles.star",
                                                                        data / "ground_truth_poses.star")["map"],
                                        data / "ground_truth.mrc")
    random = random_pose_star(data / "ground_truth_poses.star", tmp_path, seed=0)
    bad = inversion.compare_with_truth(inversion.reconstruct_from_star(data / "particles.star", random)["map"],
                                       data / "ground_truth.mrc")
    assert good["fsc05_angstrom"] < 30.0 and bad["fsc05_angstrom"] > 1.5 * good["fsc05_angstrom"], (good, bad)


def test_plain_map_is_the_inversion_at_the_poses_written(finished_run, tmp_path):
    """With ``train.posterior_map_draws=0`` (may change on a rerun) the map is exactly the direct
    inversion of the images at the poses written beside it (random poses, or a map from other poses,
    fail this)."""
    reference, _ = finished_run
    shutil.copytree(reference, tmp_path / "run", symlinks=True)
    train.train_and_evaluate(tiny_config(posterior_map_draws=0), tmp_path / "run")
    rec = inversion.reconstruct_from_star(tmp_path / "run" / "data" / "particles.star", tmp_path / "run" / "poses.star")
    # the same inversion, summed in batches of 256 by the run and of 64 here: on this 96-image set the Wiener
    # filter's per-shell SNR carries the rounding to 2.4e-3 x the map's maximum on an AMD EPYC (under 1e-3 on
    # the Intel Xeon of earlier sessions); the map of the weighted posterior draws is 7.5e-2 away
    np.testing.assert_allclose(mrcfile.read(tmp_path / "run" / "reconstruction.mrc"), rec["map"], rtol=1e-3,
                               atol=5e-3 * np.abs(rec["map"]).max())


def test_weighted_map_with_the_most_likely_poses(finished_run, tmp_path):
    """``train.posterior_map_draws`` without ``train.posterior_mean_poses`` (both may change on a rerun):
    poses.star holds the last epoch's most likely poses, not the means the default wrote, and the map is
    still the weighted one."""
    reference, _ = finished_run
    shutil.copytree(reference, tmp_path / "run", symlinks=True)
    train.train_and_evaluate(tiny_config(posterior_mean_poses=False), tmp_path / "run")
    final = read_particles(tmp_path / "run" / "poses.star").rotations()
    np.testing.assert_allclose(final, read_particles(tmp_path / "run" / "epoch_002" / "poses.star").rotations(), atol=1e-4)
    means = read_particles(reference / "poses.star").rotations()
    assert float(np.median(np.asarray(geometry.geodesic_distance_deg(jnp.asarray(final), jnp.asarray(means))))) > 0.05
    a, b = mrcfile.read(reference / "reconstruction.mrc"), mrcfile.read(tmp_path / "run" / "reconstruction.mrc")
    # the same weighted sums in every shell; the Wiener filter differs, as its SNR comes from the half maps at
    # the final poses (means there, most likely here): map correlations of 0.955-0.992 were seen. An
    # inversion at the most likely poses instead falls to an FSC of 0.13-0.2 with this one past 10 shells.
    # The Nyquist shell is left out: its few voxels lie where the filter's regulariser outweighs the sums,
    # so the two filters differ most there (0.955 in a run whose other shells were all >= 0.997).
    assert float(np.min(evaluate.fsc(a, b)[:-1])) > 0.99


def test_held_out_steps_move_the_final_poses_and_the_map_follows(finished_run, tmp_path):
    """``train.heldout_steps`` (may change on a rerun) runs after the last epoch: the written poses leave
    the last epoch's most likely ones by no more than Adam's steps allow (2 steps of 0.02 rad on each
    axis: at most 4 deg), and the map is the inversion at the poses written."""
    reference, _ = finished_run
    shutil.copytree(reference, tmp_path / "run", symlinks=True)
    train.train_and_evaluate(tiny_config(posterior_mean_poses=False, posterior_map_draws=0, heldout_steps=2),
                             tmp_path / "run")
    final = read_particles(tmp_path / "run" / "poses.star").rotations()
    last = read_particles(tmp_path / "run" / "epoch_002" / "poses.star").rotations()
    moved = np.asarray(geometry.geodesic_distance_deg(jnp.asarray(final), jnp.asarray(last)))
    assert 0.1 < float(np.median(moved)) and float(np.max(moved)) < 4.0, (np.median(moved), np.max(moved))
    rec = inversion.reconstruct_from_star(tmp_path / "run" / "data" / "particles.star", tmp_path / "run" / "poses.star")
    np.testing.assert_allclose(mrcfile.read(tmp_path / "run" / "reconstruction.mrc"), rec["map"], rtol=1e-3,
                               atol=5e-3 * np.abs(rec["map"]).max())


def test_a_working_resolution_runs_on_cropped_images_and_inverts_the_final_map_at_the_stored_box(finished_run, tmp_path):
    """``data.working_resolution_angstrom`` 12 A on the 48 px, 4 A/px stack: every stage works at 32 px
    (6 A/px; decoder.mrc there), and reconstruction.mrc is the inversion at the stored 48 px box of the
    poses and origins written: known poses with origins of up to 6 A, so shifts carried from the working
    box's pixels at the wrong scale (or a map at the working box) fail."""
    from jaxcryo import runio

    reference, _ = finished_run
    table = read_particles(reference / "data" / "particles.star")
    truth = read_particles(reference / "data" / "ground_truth_poses.star").rotations()
    origins = np.random.default_rng(0).uniform(-6.0, 6.0, (len(truth), 2))
    runio.write_poses(tmp_path / "known.star", table, truth, origins)
    config = tiny_config(posterior_mean_poses=False, posterior_map_draws=0)
    config.data.particles = str(reference / "data" / "particles.star")
    config.data.working_resolution_angstrom = 12.0
    config.poses = str(tmp_path / "known.star")
    train.train_and_evaluate(config, tmp_path / "run")
    with mrcfile.open(tmp_path / "run" / "decoder.mrc") as m:
        assert m.data.shape == (32, 32, 32) and m.voxel_size.x == pytest.approx(6.0)
    with mrcfile.open(tmp_path / "run" / "reconstruction.mrc") as m:
        assert m.data.shape == (48, 48, 48) and m.voxel_size.x == pytest.approx(4.0)
        final = np.asarray(m.data)
    written = read_particles(tmp_path / "run" / "poses.star")
    np.testing.assert_allclose(written.displacements_px(4.0), read_particles(tmp_path / "known.star").displacements_px(4.0),
                               atol=1e-3)
    rec = inversion.reconstruct_from_star(reference / "data" / "particles.star", tmp_path / "run" / "poses.star")
    np.testing.assert_allclose(final, rec["map"], rtol=1e-3, atol=5e-3 * np.abs(rec["map"]).max())
    centred = inversion.reconstruct_from_star(reference / "data" / "particles.star", reference / "data" / "ground_truth_poses.star")
    assert np.abs(final - centred["map"]).max() > 0.05 * np.abs(rec["map"]).max()  # the origins mattered


def test_the_map_written_is_the_inversion_masked_by_the_particle_s_diameter(finished_run, tmp_path):
    """``model.volume_mask`` (the quickstart's): reconstruction.mrc is the inversion at the poses written
    times a soft sphere of the particle's diameter x 1.2 with a 12 A edge. Given 100 A on this 48 px,
    4 A/px box (the mask 1 out to 60 A, 0 beyond 72 A): the plain inversion within 58 A of the centre,
    zero beyond 74 A, where the inversion itself is not; the half maps are left as inverted."""
    reference, _ = finished_run
    config = tiny_config(posterior_mean_poses=False, posterior_map_draws=0)
    config.model.volume_mask = True
    config.data.particles = str(reference / "data" / "particles.star")
    config.data.particle_diameter_angstrom = 100.0
    config.poses = str(reference / "data" / "ground_truth_poses.star")
    train.train_and_evaluate(config, tmp_path / "run")
    final = mrcfile.read(tmp_path / "run" / "reconstruction.mrc")
    rec = inversion.reconstruct_from_star(reference / "data" / "particles.star", tmp_path / "run" / "poses.star")
    c = np.arange(48) - 24
    radius_angstrom = 4.0 * np.sqrt(c[:, None, None] ** 2 + c[None, :, None] ** 2 + c[None, None, :] ** 2)
    inside, outside = radius_angstrom < 58.0, radius_angstrom > 74.0
    scale = np.abs(rec["map"]).max()
    np.testing.assert_allclose(final[inside], rec["map"][inside], rtol=1e-3, atol=5e-3 * scale)
    assert np.abs(final[outside]).max() < 1e-6 * scale < 0.05 * scale < np.abs(rec["map"][outside]).max()
    half = mrcfile.read(tmp_path / "run" / "reconstruction_half1_unfil.mrc")
    assert np.abs(half[outside]).max() > 0.05 * np.abs(half).max()


def test_each_stage_s_batches_carry_the_ctfs_of_their_own_box_and_pixel(finished_run, tmp_path):
    """``Run.training_batch`` and ``dataset.on_devices`` add each image's CTF (``dataset.ctf_grids``),
    which the steps read instead of computing it: it must be the CTF at the stage's own box and pixel
    size (the amortized stage's images are Fourier-cropped, so their pixels are larger)."""
    from jaxcryo import ctf as ctf_lib
    from jaxcryo.dataset import AMORTIZED, on_devices
    from jaxcryo.io.loader import iterate_batches
    from jaxcryo.io.table import CTF_FIELDS
    from jaxcryo.stages import AUTODECODING

    reference, _ = finished_run
    (tmp_path / "data").symlink_to(reference / "data")
    run = train.Run(tiny_config(), tmp_path)
    assert run.data.coarse.image_size == 32 and run.data.source.image_size == 48
    for stage in (AMORTIZED, AUTODECODING):
        source = run.data.source_for(stage)
        _, loaded = next(iter(iterate_batches(source, 16, 0, 0)))
        for batch in (run.training_batch(loaded, stage), on_devices(source, loaded, run.batch_sharding)):
            fields = {k: jnp.asarray(getattr(run.data.table, k)[loaded.index]) for k in CTF_FIELDS}
            expected = ctf_lib.ctf_grid(source.image_size, source.pixel_size_angstrom, **fields)
            np.testing.assert_allclose(np.asarray(batch["ctf"]), np.asarray(expected), atol=1e-5)
            other = ctf_lib.ctf_grid(source.image_size, 4.0 if stage == AMORTIZED else 6.0, **fields)
            assert float(jnp.max(jnp.abs(batch["ctf"] - other))) > 0.1  # the other stage's pixel would show
