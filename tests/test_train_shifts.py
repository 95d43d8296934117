"""End-to-end shift and contrast handling on tiny simulated data with shifted particles of varying
contrast: estimated shifts are written as RELION origins and survive a resume; known origins drive the
known-pose oracle; fitted contrasts are written as cryoSPARC's per-particle scale."""

import json

import mrcfile
import numpy as np
import pytest

from jaxcryo import train
from jaxcryo.io import InputError, read_particles
from references import strict_json_loads
from tinyrun import Interrupt, interrupt_after, tiny_config

BOX, PIXEL = 48, 4.0


def shifted_config(**train_overrides):
    config = tiny_config(**train_overrides)
    config.simulate.update(max_shift_fraction=0.1, snr=10.0, contrast_spread=0.4)
    config.model.update(estimate_shifts=True, search_shift_radius_px=1, contrast_prior_std=0.3)
    return config


@pytest.fixture(scope="module")
def shifted_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("shifted")
    summary = train.train_and_evaluate(shifted_config(), workdir)
    return workdir, summary


def test_estimated_shifts_are_written_as_origins(shifted_run):
    workdir, summary = shifted_run
    poses = read_particles(workdir / "poses.star")
    assert poses.origin_angstrom is not None and np.isfinite(poses.origin_angstrom).all()
    assert np.abs(poses.origin_angstrom).max() > 0  # shifts were estimated, not left at 0
    # the amortized stage bounds shifts by max_shift_fraction; auto-decoding moves them a little at most
    assert np.abs(poses.origin_angstrom).max() <= 0.15 * BOX * PIXEL + 2 * PIXEL
    for key in ("shift_error_median_px", "shift_error_median_angstrom", "map_translation_angstrom"):
        assert key in summary
    assert summary["shift_error_median_px"] == pytest.approx(summary["shift_error_median_angstrom"] / PIXEL)
    ends = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert all("shift_error_median_px" in r for r in ends if r.get("epoch_end"))


def test_fitted_contrasts_follow_the_simulated_ones(shifted_run):
    workdir, summary = shifted_run
    fitted = np.load(workdir / "poses.cs")["alignments3D/alpha"]
    true = np.load(workdir / "data" / "ground_truth_contrast.npy")
    # the tiny run's poses are far from right (~120 deg), but an image's contrast still shows in its fit
    assert np.corrcoef(fitted, true)[0, 1] > 0.6
    assert summary["contrast_correlation"] == pytest.approx(np.corrcoef(fitted, true)[0, 1], abs=1e-6)
    assert abs(float(np.mean(fitted)) - 1.0) < 1e-3  # scaled to mean 1: the map carries the overall level


@pytest.mark.slow  # 21 s; resumes in both stages are checked bit-exactly in test_train
def test_resume_keeps_the_shift_table(shifted_run, tmp_path):
    reference, _ = shifted_run
    (tmp_path / "data").symlink_to(reference / "data")
    config = shifted_config()
    run = train.Run(config, tmp_path)
    interrupt_after(run, "autodecoding_step", 3)
    with pytest.raises(Interrupt):
        run.run()
    train.train_and_evaluate(config, tmp_path)
    a, b = read_particles(reference / "poses.star"), read_particles(tmp_path / "poses.star")
    np.testing.assert_allclose(b.origin_angstrom, a.origin_angstrom, atol=1e-3)
    np.testing.assert_allclose(b.euler_deg, a.euler_deg, atol=1e-3)


def test_known_pose_oracle_applies_the_origins(shifted_run, tmp_path):
    from jaxcryo import evaluate, inversion
    from jaxcryo.io.star import write_particles_star

    reference, _ = shifted_run
    truth = reference / "data" / "ground_truth_poses.star"
    workdir = tmp_path / "oracle"
    workdir.mkdir()
    (workdir / "data").symlink_to(reference / "data")
    config = shifted_config(epochs_autodecoding=1)
    config.poses = str(truth)
    config.model.estimate_shifts = False  # the oracle's shifts are the star's origins, held fixed
    with_origins = train.train_and_evaluate(config, workdir)
    assert with_origins["shift_error_median_px"] < 1e-3  # the origins are used and written back unchanged
    table = read_particles(truth)
    np.testing.assert_allclose(read_particles(workdir / "poses.star").origin_angstrom, table.origin_angstrom, atol=1e-3)
    # the reference: a direct inversion at the same poses with the origins dropped (particles taken as
    # centred), as a run that ignored them would make it (measured 8.7 A against 47 A)
    centred = tmp_path / "centred.star"
    write_particles_star(centred, table, origin_angstrom=np.zeros((len(table), 2)))
    ignored = inversion.reconstruct_from_star(reference / "data" / "particles.star", centred)["map"]
    truth_map = mrcfile.read(reference / "data" / "ground_truth.mrc")
    fsc05 = lambda m: evaluate.resolution_at(evaluate.fsc(m, truth_map), 0.5, PIXEL)  # noqa: E731
    with mrcfile.open(workdir / "reconstruction.mrc") as m:
        assert np.isfinite(m.data).all()
        assert fsc05(m.data) < 0.8 * fsc05(ignored), (fsc05(m.data), fsc05(ignored))


def test_start_poses_are_refined_from_where_they_are_given(shifted_run, tmp_path):
    # config.start_poses: no amortized stage; auto-decoding refines each given pose. Given the truth
    # turned 8 deg about a random axis per image, two epochs bring the median back within 4 deg and
    # keep the origins; an ignored start (the amortized stage, ~120 deg on this tiny run) or a pose step
    # that does not move (8 deg) cannot meet that.
    from jaxcryo import geometry
    from jaxcryo.io.star import write_particles_star

    reference, _ = shifted_run
    truth = read_particles(reference / "data" / "ground_truth_poses.star")
    rng = np.random.default_rng(3)
    axes = rng.normal(size=(len(truth), 3))
    omega = np.radians(8.0) * axes / np.linalg.norm(axes, axis=1, keepdims=True)
    turned = np.asarray(geometry.so3_exp(omega.astype(np.float32))) @ truth.rotations()
    start = tmp_path / "start.star"
    write_particles_star(start, truth, euler_deg=np.asarray(geometry.matrix_to_euler(turned)))
    workdir = tmp_path / "start"
    workdir.mkdir()
    (workdir / "data").symlink_to(reference / "data")
    config = shifted_config(epochs_autodecoding=2, posterior_mean_poses=False)
    config.start_poses = str(start)
    summary = train.train_and_evaluate(config, workdir)
    assert summary["amortized_epochs_run"] == 0 and not (workdir / "amortized_heads.npz").exists()
    given = np.asarray(geometry.geodesic_distance_deg(turned, truth.rotations()))
    assert np.median(given) == pytest.approx(8.0, abs=0.01)
    assert summary["pose_error_median_deg"] < 4.0, summary
    assert summary["shift_error_median_px"] < 0.5, summary


def test_report_reads_the_shifts_back_from_poses_star(shifted_run):
    from jaxcryo.report import evaluate_workdir

    workdir, summary = shifted_run
    report = evaluate_workdir(workdir)
    assert report["shift_error_median_px"] == pytest.approx(summary["shift_error_median_px"], rel=1e-3, abs=1e-3)


@pytest.mark.slow  # ~35 s of compiling another encoder; the re-centring itself: test_shifts.py
def test_origins_centre_the_amortized_stage(shifted_run, tmp_path):
    # data.origins_as_shifts with model.amortized_shifts=False: the amortized stage sees each image
    # re-centred by its star's origin and estimates no shift; auto-decoding starts from the origins.
    # Given the true origins, the stage's shifts are exact; particles taken as centred would be off by
    # the simulated shifts (up to 10 % of the box, a median of ~2 px).
    reference, _ = shifted_run
    truth = reference / "data" / "ground_truth_poses.star"
    workdir = tmp_path / "origins"
    workdir.mkdir()
    (workdir / "data").symlink_to(reference / "data")
    config = shifted_config(epochs_autodecoding=0, posterior_mean_poses=False)  # the test reads the amortized stage
    config.data.particles = str(truth)  # a star with origins (its angles are not used)
    config.data.origins_as_shifts = True
    config.model.amortized_shifts = False
    config.eval.ground_truth = str(reference / "data" / "ground_truth.mrc")
    config.eval.ground_truth_poses = str(truth)
    train.train_and_evaluate(config, workdir)
    ends = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    amortized = next(r for r in ends if r.get("epoch_end") and r["stage"] == "amortized")
    assert amortized["shift_error_median_px"] < 0.05, amortized
    true_shift_px = np.hypot(*read_particles(truth).origin_angstrom.T) / PIXEL
    assert np.median(true_shift_px) > 1.0  # the set is one where ignoring the origins would fail
    # no auto-decoding epoch fitted a contrast: the summary says nothing of one (and stays strict JSON)
    summary = strict_json_loads((workdir / "summary.json").read_text())
    assert "contrast_correlation" not in summary


def test_origins_as_shifts_needs_origins(shifted_run, tmp_path):
    reference, _ = shifted_run
    config = shifted_config()
    config.data.particles = str(reference / "data" / "particles.star")  # no origins in it
    config.data.origins_as_shifts = True
    with pytest.raises(InputError, match="particles.star: data.origins_as_shifts is set but it holds no origins"):
        train.train_and_evaluate(config, tmp_path / "run")


def test_a_start_that_estimates_shifts_sets_the_run_s_shifts_and_survives_a_resume(shifted_run, tmp_path, monkeypatch, caplog):
    """train.amortized_shift_starts: a run that takes the particles as centred also trains starts that
    estimate shifts; when one of those is the most likely (here by a faked score), the run goes on with
    shift heads and auto-decoding's shift step, and a run killed after the choice resumes with them (the
    checkpoint holds shift heads: restored into a centred encoder it would not load)."""
    from jaxcryo import starts

    reference, _ = shifted_run
    (tmp_path / "data").symlink_to(reference / "data")
    config = shifted_config(amortized_starts=1, amortized_shift_starts=1, amortized_start_steps=4)
    config.model.estimate_shifts = False
    kinds = []

    def fake_score(self, state, rows, radius):
        kinds.append(self.estimate_shifts)
        return (0.0 if self.estimate_shifts else 1.0), np.tile(np.eye(3, dtype=np.float32), (len(rows), 1, 1))

    monkeypatch.setattr(starts.AmortizedStarts, "sample_inference", fake_score)
    run = train.Run(config, tmp_path)
    interrupt_after(run, "save", 1)  # the chosen start's checkpoint is written, the next save is not
    with caplog.at_level("INFO"), pytest.raises(Interrupt):
        run.run()
    assert kinds == [False, True]
    assert "continues from start 2 (the most likely): a start that estimates shifts, so every" in caplog.text
    summary = train.train_and_evaluate(config, tmp_path)
    assert kinds == [False, True]  # the resumed run does not start again
    assert summary["shift_error_median_px"] is not None
    poses = read_particles(tmp_path / "poses.star")
    assert poses.origin_angstrom is not None and np.abs(poses.origin_angstrom).max() > 0
    assert np.abs(poses.origin_angstrom).max() <= 0.15 * BOX * PIXEL + 2 * PIXEL
