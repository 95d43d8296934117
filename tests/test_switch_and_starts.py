"""The amortized stage's end: the automatic switch's rule and pose sample, and several starts chosen by
likelihood (jaxcryo.stages, jaxcryo.switchwatch, jaxcryo.starts)."""

import json

import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from jaxcryo import losses, slicing, stages, starts, train
from jaxcryo.starts import start_steps
from tinyrun import tiny_config


def test_auto_switch_rule():
    assert not stages.auto_switch_due(1, 0.1, 0.2, min_epochs=2)  # too early
    assert not stages.auto_switch_due(3, None, 0.2, min_epochs=2)  # nothing to compare yet
    assert not stages.auto_switch_due(3, 0.46, 0.2, min_epochs=2)  # median 0, but 46 % still moving
    assert stages.auto_switch_due(3, 0.46, 0.5, min_epochs=2)  # the median rule would switch
    assert stages.auto_switch_due(3, 0.12, 0.2, min_epochs=2)


def test_auto_switch_waits_for_the_same_steps_whatever_the_stack_size():
    tc = ml_collections.ConfigDict({"switch_min_epochs": 2, "switch_min_steps": 156})
    assert stages.switch_min_epochs_for(tc, 78) == 2  # 5,000 particles: 2 epochs of 78 steps
    assert stages.switch_min_epochs_for(tc, 31) == 6  # 2,000: 156 steps take 6 epochs of 31 (5 give 155)
    assert stages.switch_min_epochs_for(tc, 3125) == 2  # 200,000: the epoch floor
    tc.switch_min_steps = 0
    assert stages.switch_min_epochs_for(tc, 31) == 2
    # the poses compared lie 78 steps apart: one epoch from 5,000 images up, three at 2,000
    tc.switch_window_steps = 78
    assert [stages.switch_window_epochs(tc, n) for n in (78, 31, 3125)] == [1, 3, 1]
    tc.switch_window_steps = 0
    assert stages.switch_window_epochs(tc, 31) == 1


def test_the_amortized_stage_goes_on_while_poses_move_up_to_its_step_cap():
    tc = ml_collections.ConfigDict({"switch": "auto", "amortized_steps_max": 1200, "epochs_amortized": 30})
    assert stages.amortized_epochs_limit(tc, 78, 6) == 16  # 5,000 particles: 16 epochs hold 1,200 steps (15 hold 1,170)
    assert stages.amortized_epochs_limit(tc, 31, 15) == 30  # 2,000: 39 epochs, capped by epochs_amortized
    assert stages.amortized_epochs_limit(tc, 3125, 2) == 2  # 200,000: the plan already holds the steps
    assert stages.amortized_epochs_limit(tc, 78, 0) == 0  # known poses: no amortized stage to extend
    assert stages.amortized_epochs_limit(tc, 78, 12, fully_amortized=True) == 12  # one stage, no switch
    tc.switch = "fixed"
    assert stages.amortized_epochs_limit(tc, 78, 6) == 6  # a fixed switch ends the stage at its plan
    tc.switch, tc.amortized_steps_max = "auto", 0
    assert stages.amortized_epochs_limit(tc, 78, 6) == 6  # off

    from types import SimpleNamespace

    from jaxcryo.epochloop import EpochLoop

    tc.amortized_steps_max = 1200
    loop = SimpleNamespace(config=SimpleNamespace(train=tc, model=SimpleNamespace(fully_amortized=False)),
                           steps_per_epoch=78, research=None)
    assert EpochLoop.another_epoch(loop, "amortized", {"epoch": 6}, 6)  # past the plan: the switch was not due
    assert EpochLoop.another_epoch(loop, "amortized", {"epoch": 15}, 6)
    assert not EpochLoop.another_epoch(loop, "amortized", {"epoch": 16}, 6)
    loop.config.model.fully_amortized = True  # one stage only: its length is the plan's
    assert not EpochLoop.another_epoch(loop, "amortized", {"epoch": 6}, 6)


@pytest.mark.slow  # a whole tiny run (154 s beside a 5,000-image run); the rule's own test is above
def test_the_amortized_stage_goes_past_its_plan_to_its_step_cap_while_the_switch_is_not_due(tmp_path, caplog):
    """6 steps an epoch: amortized_steps 6 plans the 2-epoch floor, amortized_steps_max 18 allows 3, and a
    switch that cannot come due (switch_min_epochs 10) lets the stage run all 3 and say why it ended."""
    config = tiny_config(epochs_amortized=4, switch="auto", switch_min_epochs=10, switch_min_steps=0,
                         amortized_steps=6, amortized_steps_max=18, switch_window_steps=0)  # poses compared an epoch apart
    with caplog.at_level("INFO"):
        summary = train.Run(config, tmp_path).run()
    assert summary["amortized_epochs_run"] == 3
    assert "amortized epoch 3 (past the 2 planned: the poses still move)" in caplog.text
    assert "the amortized stage ends at its limit of 3 epochs with its poses still moving" in caplog.text
    assert (tmp_path / "epoch_003" / "poses.star").exists()


def test_switch_follows_a_fixed_sample_kept_on_disk(tmp_path):
    """The automatic switch's pose change without epoch outputs: the sample is all images up to
    SWITCH_SAMPLE, else a fixed seeded subset; the change is the median angle to the previous epoch's
    sample (recomputed with scipy), read back from disk so a resumed run sees it; two epochs kept."""
    import types

    from scipy.spatial.transform import Rotation

    from jaxcryo import switchwatch

    run = types.SimpleNamespace(n=10, config=types.SimpleNamespace(seed=3), workdir=tmp_path)
    np.testing.assert_array_equal(switchwatch.SwitchWatch.switch_sample_rows(run), np.arange(10))
    run.n = 3 * switchwatch.SWITCH_SAMPLE
    rows = switchwatch.SwitchWatch.switch_sample_rows(run)
    assert len(np.unique(rows)) == switchwatch.SWITCH_SAMPLE and np.all(np.diff(rows) > 0) and rows.max() < run.n
    np.testing.assert_array_equal(rows, switchwatch.SwitchWatch.switch_sample_rows(run))
    poses = [Rotation.random(50, random_state=k) for k in range(3)]
    changes = [switchwatch.SwitchWatch.pose_change(run, e + 1, r.as_matrix().astype(np.float32), 90.0) for e, r in enumerate(poses)]
    assert changes[0] == {}
    angles = np.degrees((poses[1].inv() * poses[2]).magnitude())
    assert changes[2]["pose_change_median_deg"] == pytest.approx(np.median(angles), abs=0.01)
    assert changes[2]["pose_change_moved_fraction"] == pytest.approx(np.mean(angles > 90.0))
    assert 0.2 < changes[2]["pose_change_moved_fraction"] < 0.95  # random pairs: most but not all beyond 90 deg
    assert sorted(p.name for p in (tmp_path / "switch_poses").iterdir()) == ["epoch_002.npy", "epoch_003.npy"]
    # train.switch_window_steps: two epochs back, against epoch 2's poses (3's kept for the next comparison)
    later = Rotation.random(50, random_state=9)
    two_back = switchwatch.SwitchWatch.pose_change(run, 4, later.as_matrix().astype(np.float32), 90.0, back=2)
    angles = np.degrees((poses[1].inv() * later).magnitude())
    assert two_back["pose_change_median_deg"] == pytest.approx(np.median(angles), abs=0.01)
    assert sorted(p.name for p in (tmp_path / "switch_poses").iterdir()) == ["epoch_002.npy", "epoch_003.npy", "epoch_004.npy"]


@pytest.mark.slow  # ~30 s; the option is off by default
def test_amortized_starts_continue_from_the_most_likely(tmp_path, monkeypatch, caplog):
    """train.amortized_starts: each start trains from its own draws and the one with the lowest sample
    loss is kept (the score is faked as -step, so the second start, whose counter starts at 10^6, wins).
    Starts of 4 steps (train.amortized_start_steps) on a 6-step epoch: the stage goes on mid-epoch and
    trains the epoch's last 2 steps, not a whole epoch more."""
    config = tiny_config(amortized_starts=2, amortized_start_steps=4, epochs_amortized=1, epochs_autodecoding=1)
    scores = []

    def fake_score(self, state, rows, radius):
        scores.append(int(state["step"]))
        return -float(state["step"]), np.tile(np.eye(3, dtype=np.float32), (len(rows), 1, 1))

    monkeypatch.setattr(starts.AmortizedStarts, "sample_inference", fake_score)
    with caplog.at_level("INFO"):
        train.Run(config, tmp_path).run()
    assert scores == [4, 1_000_000 + 4]
    assert "amortized stage continues from start 2 (the most likely)" in caplog.text
    assert "starts 2 times (4 steps each, 0.67 epoch(s); its first 4 steps are the most likely start's)" in caplog.text
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    amortized = [(r["step"], r["global_step"]) for r in records if r["stage"] == "amortized"]
    assert amortized == [(6, 6), (6, 6)], amortized  # the step logged, then the epoch's end
    assert max(r["global_step"] for r in records) == 6 + 6


@pytest.mark.parametrize("n_starts, shifted, epochs_each, steps_each, spe, planned, expected", [
    (1, 0, 1, 0, 78, 6, 0),          # one start: none chosen
    (3, 0, 1, 0, 78, 6, 78),         # whole epochs
    (3, 0, 2, 0, 78, 1, 78),         # no longer than the stage
    (3, 0, 1, 80, 3125, 6, 80),      # in steps: a part of a large stack's epoch
    (3, 0, 1, 80, 10, 6, 60),        # and still no longer than the stage
    (1, 1, 1, 0, 78, 6, 78),         # one centred start and one that estimates shifts: a choice
])
def test_start_steps_in_epochs_or_steps(n_starts, shifted, epochs_each, steps_each, spe, planned, expected):
    config = tiny_config()
    config.train.update(amortized_starts=n_starts, amortized_start_epochs=epochs_each, amortized_start_steps=steps_each)
    assert start_steps(config.train, planned, spe, shifted) == expected


@pytest.mark.parametrize("estimate_shifts, known_poses, candidates, expected", [
    (False, False, 64, 2), (True, False, 64, 0), (False, True, 64, 0),
    (False, False, 0, 0)])  # heads alone: every start near random when scored, so no shift start
def test_shift_starts_only_where_the_run_would_take_the_particles_as_centred(estimate_shifts, known_poses, candidates,
                                                                              expected):
    config = tiny_config(amortized_shift_starts=2)
    config.model.estimate_shifts = estimate_shifts  # a run that estimates shifts anyway has none to choose
    config.model.search_candidates = candidates
    assert starts.shift_starts(config, known_poses) == expected


@pytest.mark.parametrize("radius", [1.0, 0.5])
def test_the_shift_starts_allowance_is_what_two_shift_unknowns_fit_of_noise(radius):
    """starts.noise_fit_allowance against a Monte Carlo: 2,000 images of one blob in unit-variance white
    noise, each scored at zero shift and at its most likely shift (losses.best_shifts, as a shift start
    is scored); the mean loss falls by what the formula says (within 15 %: best_shifts' prior holds it
    back ~5 %), not by half of it (one unknown) or twice."""
    size, n = 32, 2000
    y, x = np.mgrid[:size, :size] - size // 2
    blob = 8 * np.exp(-((x - 2) ** 2 + (y + 1) ** 2) / 18.0) + 4 * np.exp(-((x + 4) ** 2 + (y - 3) ** 2) / 8.0)
    noise = np.random.default_rng(0).normal(size=(n, size, size))
    pred = losses.images_to_hartley(jnp.asarray(np.broadcast_to(blob, (n, size, size)), jnp.float32))
    target = losses.images_to_hartley(jnp.asarray(blob + noise, jnp.float32))
    mask = slicing.frequency_mask(size, radius)
    centred = losses.per_image_loss(pred, target, mask)
    fitted_shift = losses.best_shifts(pred, target, mask, 0.06 * size)
    fitted = float(jnp.mean(losses.per_image_loss(losses.shift_hartley(pred, fitted_shift), target, mask)))
    allowance = starts.noise_fit_allowance(fitted, int(np.sum(mask)))
    assert float(jnp.mean(centred)) - fitted == pytest.approx(allowance, rel=0.15)


@pytest.mark.slow  # ~18 s of compiling a run's passes; a saving, not a result: results are the same either way
def test_the_switch_reuses_the_last_pass_over_every_image_while_the_state_is_the_same(tmp_path):
    """The switch's pass 0 is the end-of-epoch pass (same state, key and chunks): kept, it is not run
    again, and the switch's poses, winners and heads are exactly those of a run that recomputes it."""
    config = tiny_config(inference_batch_size=32)  # 96 images: 3 chunks
    config.model.volume_init_scale = 0.1  # a random map: the searches' losses differ
    run = train.Run(config, tmp_path)
    calls = []
    inference = run.encoder_inference
    run.encoder_inference = lambda *args: calls.append(1) or inference(*args)
    state, radius, sample = run.init_amortized(), stages.radius_at(run.config, stages.AMORTIZED, 1e9), run.switch_heads_rows()
    fresh = run.encoder_rotations(state, radius, sample, passes=3)
    assert len(calls) == 9
    first = run.encoder_rotations(state, radius)  # the end-of-epoch pass: kept
    assert len(calls) == 12
    reused = run.encoder_rotations(state, radius, sample, passes=3)
    assert len(calls) == 12 + 6  # passes 1 and 2 only
    for a, b in zip(fresh, reused, strict=True):
        np.testing.assert_array_equal(a, b)
    assert np.mean(np.any(fresh[0] != first[0], axis=(1, 2))) > 0.1  # the later passes did change poses
    other = dict(state, vol_params=dict(state["vol_params"]))  # equal values, but not the kept state's arrays
    other["vol_params"]["mantissa"] = state["vol_params"]["mantissa"] + 0
    run.encoder_rotations(other, radius, sample, passes=3)
    assert len(calls) == 18 + 9
