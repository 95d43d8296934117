"""End-to-end runs on a tiny simulated dataset: outputs, resume equality, NaN handling, evaluation."""

import json
import pathlib
import shutil

import jax
import jax.numpy as jnp
import mrcfile
import numpy as np
import pytest

from jaxcryo import evaluate, geometry, inversion, stages, train
from jaxcryo.io import InputError, read_particles
from tinyrun import Interrupt, interrupt_after, random_pose_star, tiny_config


def test_workdir_contract(finished_run, tmp_path):
    workdir, summary = finished_run
    with mrcfile.open(workdir / "reconstruction.mrc") as m:
        assert m.data.shape == (48, 48, 48) and m.voxel_size.x == pytest.approx(4.0)
        assert np.isfinite(m.data).all() and m.data.std() > 0
    particles = read_particles(workdir / "data" / "particles.star")
    poses = read_particles(workdir / "poses.star")
    assert len(poses) == 96 and poses.image_name.tolist() == particles.image_name.tolist()
    assert poses.euler_deg is not None and np.isfinite(poses.euler_deg).all()
    cs = read_particles(workdir / "poses.cs")  # the same poses for cryoSPARC, and the half sets of the final map
    assert np.allclose(cs.euler_deg, poses.euler_deg, atol=0.05) or np.allclose(
        np.asarray(geometry.euler_to_matrix(jnp.asarray(cs.euler_deg))), np.asarray(geometry.euler_to_matrix(jnp.asarray(poses.euler_deg))), atol=1e-4)
    assert sorted(set(poses.random_subset.tolist())) == [1, 2] and cs.random_subset.tolist() == poses.random_subset.tolist()
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    for key in ("stage", "epoch", "step", "loss", "elapsed_s", "images_per_s"):
        assert all(key in r for r in records)
    assert {r["stage"] for r in records} == {"amortized", "autodecoding"}
    assert any(p.name.startswith("events.out.tfevents") for p in workdir.iterdir())
    for epoch in ("epoch_001", "epoch_002"):
        assert (workdir / epoch / "reconstruction.mrc").exists() and (workdir / epoch / "poses.star").exists()
    assert json.loads((workdir / "config.json").read_text())["model"]["n_heads"] == 2
    assert "pose_error_median_deg" in summary and "fsc05_angstrom" in summary
    # the map is the inversion of the images at (8 weighted posterior draws around) the poses written
    # beside it: it matches the plain inversion at those poses far better than one at random poses
    rec = inversion.reconstruct_from_star(workdir / "data" / "particles.star", workdir / "poses.star")
    written = mrcfile.read(workdir / "reconstruction.mrc")
    other = inversion.reconstruct_from_star(workdir / "data" / "particles.star",
                                            random_pose_star(workdir / "poses.star", tmp_path, seed=1))
    # mean FSC over shells 1-12 of 24: measured 0.96 and 0.19
    match, random_match = (float(evaluate.fsc(written, m)[1:13].mean()) for m in (rec["map"], other["map"]))
    assert match > 0.9 and random_match < 0.4, (match, random_match)
    # beside it, the half sets' own unfiltered inversions (rlnRandomSubset of poses.star): the pair whose
    # FSC fsc_halfmaps.csv reports, each the inversion of its half at the written poses
    halves = [mrcfile.read(workdir / f"reconstruction_half{i}_unfil.mrc") for i in (1, 2)]
    csv = np.loadtxt(workdir / "fsc_halfmaps.csv", delimiter=",", skiprows=1)
    np.testing.assert_allclose(evaluate.fsc(*halves), csv[:, 1], atol=1e-4)
    for i, half in enumerate(halves, start=1):
        same, random_half = (float(evaluate.fsc(half, m[f"half{i}"])[1:13].mean()) for m in (rec, other))
        assert same > 0.9 and random_half < 0.4, (i, same, random_half)
    assert mrcfile.read(workdir / "decoder.mrc").shape == (48, 48, 48)


# a kill inside auto-decoding: slow tier (another whole run); a kill in the amortized stage and one at the
# switch stay in the default tier
@pytest.mark.parametrize("attr, n_calls", [("amortized_step", 3), pytest.param("autodecoding_step", 3, marks=pytest.mark.slow)])
def test_resume_mid_stage_gives_the_uninterrupted_result(finished_run, tmp_path, attr, n_calls):
    reference, _ = finished_run
    (tmp_path / "data").symlink_to(reference / "data")
    config = tiny_config()
    run = train.Run(config, tmp_path)
    interrupt_after(run, attr, n_calls)
    with pytest.raises(Interrupt):
        run.run()
    assert any((tmp_path / "checkpoints").iterdir())
    train.train_and_evaluate(config, tmp_path)  # resumes from the last checkpoint
    a, b = mrcfile.read(reference / "reconstruction.mrc"), mrcfile.read(tmp_path / "reconstruction.mrc")
    np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5 * np.abs(a).max())
    pa, pb = read_particles(reference / "poses.star"), read_particles(tmp_path / "poses.star")
    np.testing.assert_allclose(pb.euler_deg, pa.euler_deg, atol=1e-3)
    steps = [json.loads(line)["global_step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(steps)  # records past the checkpoint were dropped, none duplicated


def test_a_run_killed_before_its_switch_resumes_at_the_switch(finished_run, tmp_path, monkeypatch):
    """The automatic switch is decided at the end of an epoch and kept in that epoch's checkpoint: a run
    killed during the switch (its passes take a minute on a real stack) does not train another
    amortized epoch when it resumes."""
    reference, _ = finished_run
    (tmp_path / "data").symlink_to(reference / "data")
    monkeypatch.setattr(stages.AmortizedStage, "should_switch", lambda self, epochs_done: True)
    config = tiny_config(epochs_amortized=3)
    run = train.Run(config, tmp_path)
    interrupt_after(run, "switch", 0)
    with pytest.raises(Interrupt):
        run.run()
    summary = train.train_and_evaluate(config, tmp_path)
    assert summary["amortized_epochs_run"] == 1
    assert summary["autodecoding_epochs_run"] == config.train.epochs_autodecoding  # no re-search: the plan, settled
    assert summary["autodecoding_unsettled_fraction"] is None
    ends = [(r["stage"], r["epoch"]) for r in map(json.loads, (tmp_path / "metrics.jsonl").read_text().splitlines())
            if r.get("epoch_end")]
    assert ends[0] == ("amortized", 1) and {stage for stage, _ in ends[1:]} == {"autodecoding"}, ends


# the auto-decoding case compiles another step (a gradient volume): the same stop, in the slow tier
@pytest.mark.parametrize("overrides", [dict(lr_volume=1e30), pytest.param(
    dict(lr_volume_autodecoding=1e38, autodecoding_volume="gradient"), marks=pytest.mark.slow)])
def test_divergence_stops_with_a_clear_message_and_keeps_only_finite_checkpoints(finished_run, tmp_path, overrides):
    reference, _ = finished_run
    (tmp_path / "data").symlink_to(reference / "data")
    config = tiny_config(checkpoint_every_steps=1, log_every=100, **overrides)
    with pytest.raises(FloatingPointError, match=r"(amortized|autodecoding) epoch 1 step \d+: (loss is (nan|inf)|the model "
                                                 r"holds \d+ non-finite values); stopping") as info:
        train.train_and_evaluate(config, tmp_path)
    run = train.Run(config, tmp_path)
    kept = run.checkpoints.latest_progress()
    if kept is None:
        assert "no checkpoint had been written yet" in str(info.value)
    else:
        assert f"global step {kept['global_step']}" in str(info.value)
        state = run.restore(kept)
        assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree_util.tree_leaves(state))
    for epoch_map in tmp_path.glob("epoch_*/reconstruction.mrc"):
        assert np.isfinite(mrcfile.read(epoch_map)).all(), epoch_map


def test_rerun_of_a_finished_run_resumes_at_the_end(finished_run, tmp_path):
    """The README's command run twice: the second finds the last checkpoint (auto-decoding, full box,
    after a downsampled amortized stage) and rewrites the same outputs."""
    reference, summary = finished_run
    shutil.copytree(reference, tmp_path / "run", symlinks=True)
    again = train.train_and_evaluate(tiny_config(), tmp_path / "run")
    assert again["pose_error_median_deg"] == pytest.approx(summary["pose_error_median_deg"], abs=1e-4)
    np.testing.assert_array_equal(mrcfile.read(tmp_path / "run" / "reconstruction.mrc"),
                                  mrcfile.read(reference / "reconstruction.mrc"))


def _snapshot(root: pathlib.Path) -> dict:
    return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file() and "data" not in p.parts}


@pytest.mark.parametrize("change, message", [
    (lambda c: c.model.update(n_heads=3), r"config.json: this work directory holds a run with another config "
                                          r"\(model.n_heads \(2 -> 3\)\)"),
    (lambda c: c.data.update(image_size=31), r"config: data.image_size = 31 must be an even box"),
    (lambda c: c.data.update(pixel_size_angstrom=-3.0), r"config: data.pixel_size_angstrom = -3.0"),
    (lambda c: c.train.update(posterior_samples=1), r"config: train.posterior_samples = 1; expected an integer >= 2"),
    (lambda c: c.train.update(posterior_map_draws=33), r"config: train.posterior_map_draws = 33; expected an integer from 0"),
    (lambda c: c.data.update(particles="/nonexistent.star"), r"another config \(data.particles"),
])
def test_a_rejected_rerun_leaves_the_work_directory_untouched(finished_run, tmp_path, change, message):
    reference, _ = finished_run
    shutil.copytree(reference, tmp_path / "run", symlinks=True)
    before = _snapshot(tmp_path / "run")
    config = tiny_config()
    change(config)
    with pytest.raises(InputError, match=message):
        train.train_and_evaluate(config, tmp_path / "run")
    assert _snapshot(tmp_path / "run") == before


@pytest.mark.parametrize("halfsets", [False, True])
def test_a_command_rejected_for_its_data_leaves_no_new_work_directory(tmp_path, halfsets):
    (tmp_path / "kept").mkdir()
    (tmp_path / "kept" / "notes.txt").write_text("mine")
    config = tiny_config()
    config.data.particles = str(tmp_path / "missing.star")
    config.halfsets = halfsets
    for workdir in (tmp_path / "new" / "deeper" / "run", tmp_path / "kept" / "run"):
        with pytest.raises(InputError, match="missing.star: file not found"):
            train.train_and_evaluate(config, workdir)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kept"]  # the nested new folders are gone
    assert [p.name for p in (tmp_path / "kept").iterdir()] == ["notes.txt"]  # an existing parent stays

@pytest.mark.parametrize("halfsets", [False, True])
def test_a_stack_below_the_encoders_box_is_refused_in_one_line(tmp_path, halfsets):
    from experiments import common
    from jaxcryo import simulate

    simulate.simulate_dataset(common.simulate_config(n_images=16, image_size=24, pixel_size_angstrom=4.0),
                              tmp_path / "small", log=lambda *_: None)
    config = tiny_config()
    config.data.particles = str(tmp_path / "small" / "particles.star")
    config.halfsets = halfsets
    with pytest.raises(InputError, match=r"small/particles.star: its box of 24 px is below the 32 px the pose encoder"):
        train.train_and_evaluate(config, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_more_epochs_resume_a_finished_run(finished_run, tmp_path):
    reference, _ = finished_run
    shutil.copytree(reference, tmp_path / "run", symlinks=True)
    summary = train.train_and_evaluate(tiny_config(epochs_autodecoding=2), tmp_path / "run")
    assert (tmp_path / "run" / "epoch_003" / "poses.star").exists() and np.isfinite(summary["pose_error_median_deg"])


def test_evaluate_report_and_figures(finished_run):
    pytest.importorskip("matplotlib")
    from jaxcryo.report import evaluate_workdir

    workdir, summary = finished_run
    report = evaluate_workdir(workdir)
    for key in ("pose_error_median_deg", "view_error_median_deg", "fsc05_unmasked_angstrom", "fsc05_masked_angstrom",
                "fsc0143_masked_angstrom"):
        assert key in report and np.isfinite(report[key])
    assert report["pose_error_median_deg"] == pytest.approx(summary["pose_error_median_deg"], rel=1e-4)
    # the report's FSC is that of its own aligned map against the truth, recomputed here
    curve = evaluate.fsc(mrcfile.read(workdir / "eval" / "aligned_map.mrc"), mrcfile.read(workdir / "data" / "ground_truth.mrc"))
    assert report["fsc05_unmasked_angstrom"] == pytest.approx(evaluate.resolution_at(curve, 0.5, 4.0), rel=1e-3)
    for name in ("report.json", "fsc.csv", "aligned_map.mrc", "fsc.png", "map_views.png", "pose_error_per_epoch.png",
                 "resolution_vs_time.png", "winner_histogram.png", "head_error_sphere.png", "view_posterior.png"):
        assert (workdir / "eval" / name).exists(), name
    csv = np.loadtxt(workdir / "eval" / "fsc.csv", delimiter=",", skiprows=1)
    assert csv.shape == (25, 3) and csv[0, 1] > 0.9


@pytest.mark.slow  # another whole run (~20 s); the rule itself: test_switch_and_starts.py
def test_auto_switch_end_to_end(finished_run, tmp_path):
    reference, _ = finished_run
    (tmp_path / "data").symlink_to(reference / "data")
    # switch_window_steps=0: poses compared one epoch apart (the quickstart's 78-step window is 13 of these epochs)
    config = tiny_config(epochs_amortized=4, switch="auto", switch_threshold_deg=180.0, switch_min_epochs=2,
                         switch_min_steps=0, switch_window_steps=0)
    summary = train.train_and_evaluate(config, tmp_path)
    assert summary["amortized_epochs_run"] == 2 and summary["switch_rule"] == "auto"
    ends = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    changes = [r["pose_change_median_deg"] for r in ends if r.get("epoch_end") and "pose_change_median_deg" in r]
    # the logged change is the median angle between the two epochs' poses, recomputed with scipy
    from scipy.spatial.transform import Rotation

    def rotations(epoch):
        euler = read_particles(tmp_path / f"epoch_{epoch:03d}" / "poses.star").euler_deg
        return Rotation.from_euler("ZYZ", euler, degrees=True)

    expected = np.median(np.degrees((rotations(1).inv() * rotations(2)).magnitude()))
    assert len(changes) == 1 and changes[0] == pytest.approx(expected, abs=0.05)
    assert [r["pose_change_moved_fraction"] for r in ends if "pose_change_moved_fraction" in r] == [0.0]  # none > 180 deg
    assert (tmp_path / "epoch_003" / "poses.star").exists() and not (tmp_path / "epoch_004").exists()


@pytest.mark.slow  # 77 s; its pieces have fast tests: the split (test_loader), map alignment (test_align), FSC (test_evaluate)
def test_half_sets_end_to_end(finished_run, tmp_path):
    reference, _ = finished_run
    (tmp_path / "data").symlink_to(reference / "data")
    config = tiny_config()
    config.halfsets = True
    summary = train.train_and_evaluate(config, tmp_path)
    labels = read_particles(tmp_path / "halfsets" / "half1.star")
    assert len(labels) == 48 and len(read_particles(tmp_path / "halfsets" / "half2.star")) == 48
    poses = read_particles(tmp_path / "poses.star")
    assert len(poses) == 96 and sorted(np.bincount(poses.random_subset)[1:].tolist()) == [48, 48]
    assert poses.image_name.tolist() == read_particles(reference / "data" / "particles.star").image_name.tolist()
    with mrcfile.open(tmp_path / "reconstruction.mrc") as m:
        assert m.data.shape == (48, 48, 48) and m.voxel_size.x == pytest.approx(4.0)
    csv = np.loadtxt(tmp_path / "halfsets" / "fsc.csv", delimiter=",", skiprows=1)
    assert summary["fsc0143_halfmaps_unmasked_angstrom"] == pytest.approx(evaluate.resolution_at(csv[:, 1], 0.143, 4.0))
    assert "pose_error_median_deg" in summary["half1"] and "pose_error_median_deg" in summary["half2"]
    # each half run splits its own images in two for its Wiener filter (its star says subset 1 or 2 on
    # every row; read as the split, one inner half was empty and the filter erased the map)
    for half in (1, 2):
        inner = read_particles(tmp_path / f"half{half}" / "poses.star").random_subset
        assert sorted(np.bincount(inner)[1:].tolist()) == [24, 24], inner


def test_crossval_of_a_run_prefers_the_true_poses_to_random_ones(finished_run, tmp_path):
    """experiments.crossval's scores of a finished run: the run's poses, the simulator's and a random set."""
    import starfile

    from jaxcryo import crossval
    from jaxcryo.io.table import InputError

    workdir, _ = finished_run
    random_star = random_pose_star(workdir / "data" / "ground_truth_poses.star", tmp_path, seed=0)
    rows = crossval.score_workdir(workdir, [str(random_star)], refine=False)
    assert set(rows) == {"run", "truth", "random.star"}
    assert rows["run"]["difference"] == 0.0
    assert rows["truth"]["pose_error_median_deg"] < 1e-3
    assert rows["random.star"]["pose_error_median_deg"] > 60
    truth, random = rows["truth"], rows["random.star"]
    assert random["difference"] - truth["difference"] > 3 * (random["difference_se"] + truth["difference_se"]), rows
    with pytest.raises(InputError, match="not a run's work directory"):
        crossval.score_workdir(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(InputError, match="config.json: unreadable"):
        crossval.score_workdir(tmp_path)
    star = starfile.read(workdir / "data" / "ground_truth_poses.star", always_dict=True)
    block = "particles" if "particles" in star else next(iter(star))
    star[block] = star[block].iloc[:10]
    starfile.write(star, tmp_path / "short.star")
    with pytest.raises(InputError, match="short.star: need 96 rows"):
        crossval.score_workdir(workdir, [str(tmp_path / "short.star")], refine=False)
