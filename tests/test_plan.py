"""The run's plan lines (jaxcryo.plan): what a user reads before training starts."""

import logging
from types import SimpleNamespace

import pytest

from experiments import particles, quickstart
from jaxcryo.plan import HEADS_NEED_PARTICLES, RunPlan


def _plan(n: int, search_candidates: int, known_poses: bool = False, config_module=quickstart) -> RunPlan:
    config = config_module.get_config()
    config.model.search_candidates = search_candidates
    plan = RunPlan()
    source = SimpleNamespace(image_size=64, pixel_size_angstrom=3.0)
    coarse = SimpleNamespace(image_size=32, pixel_size_angstrom=6.0)
    plan.__dict__.update(data=SimpleNamespace(source=source, coarse=coarse, final=source), n=n, steps_per_epoch=max(1, n // 64),
                         config=config, research=None, known_poses=known_poses)
    return plan


@pytest.mark.parametrize("n, candidates, known, warned", [
    (5_000, 0, False, True),    # the paper's heads alone on a small stack
    (5_000, 2048, False, False),  # the main config's search
    (HEADS_NEED_PARTICLES, 0, False, False),  # enough signal at SNR 0.1
    (5_000, 0, True, False),    # known poses: no pose inference
])
def test_the_plan_warns_when_the_heads_alone_meet_a_small_stack(caplog, n, candidates, known, warned):
    with caplog.at_level(logging.INFO):
        _plan(n, candidates, known).log_plan({"amortized": 6, "autodecoding": 6})
    lines = [r.getMessage() for r in caplog.records]
    assert any(line.startswith(f"plan: {n} particles, box 64 px") for line in lines)
    warning = [r for r in caplog.records if "heads alone" in r.getMessage()]
    assert bool(warning) == warned
    if warned:
        assert warning[0].levelno == logging.WARNING and f"on {n} particles" in warning[0].getMessage()


@pytest.mark.parametrize("starts, shifted, known, said", [
    (3, 2, False, "5 times, 2 of them estimating shifts"), (3, 0, False, "3 times"), (1, 0, False, ""),
    (1, 1, False, "2 times, 1 of them estimating shifts"), (3, 2, True, "")])
def test_the_plan_says_how_many_amortized_starts_run(caplog, starts, shifted, known, said):
    plan = _plan(5_000, 2048, known)
    plan.config.train.amortized_starts = starts
    plan.config.train.amortized_shift_starts = shifted
    with caplog.at_level(logging.INFO):
        plan.log_plan({"amortized": 6, "autodecoding": 6})
    lines = [r.getMessage() for r in caplog.records if "starts" in r.getMessage()]
    assert bool(lines) == bool(said)
    if said:
        assert lines[0] == ("plan: the amortized stage starts %s (%d steps each, 1 epoch(s); its first %d steps are "
                            "the most likely start's)" % (said, plan.steps_per_epoch, plan.steps_per_epoch))


@pytest.mark.parametrize("candidates, limit", [(2048, 20), (0, 40)])
def test_the_plan_gives_auto_decodings_epoch_cap_for_how_the_amortized_stage_posed(caplog, candidates, limit):
    plan = _plan(5_000, candidates)
    plan.research = object()  # a re-search runs (the quickstart's)
    with caplog.at_level(logging.INFO):
        plan.log_plan({"amortized": 6, "autodecoding": 6})
    lines = [r.getMessage() for r in caplog.records if "goes on past" in r.getMessage()]
    assert lines == [f"plan: auto-decoding goes on past its 6 epochs, up to {limit}, while each re-search still "
                     "moves >= 2 % of the images"]


@pytest.mark.parametrize("config_module, known, said", [(particles, False, True), (particles, True, False),
                                                        (quickstart, False, False)])
def test_the_plan_says_the_amortized_stage_may_go_on(caplog, config_module, known, said):
    plan = _plan(5_000, 2048, known, config_module)
    with caplog.at_level(logging.INFO):
        plan.log_plan({"amortized": 6, "autodecoding": 6})
    lines = [r.getMessage() for r in caplog.records if "amortized stage goes on" in r.getMessage()]
    assert lines == (["plan: the amortized stage goes on past its 6 epochs, up to 16, while the poses still move "
                      "(until fewer than 50 % of the images moved more than 2 deg in an epoch)"] if said else [])


@pytest.mark.parametrize("config_module, particles_given, shift_starts, candidates, said", [
    (quickstart, True, 0, 2048, True), (quickstart, True, 2, 2048, False), (quickstart, False, 0, 2048, False),
    (particles, True, 0, 2048, False),
    (quickstart, True, 2, 0, True)])  # the heads alone: no shift starts (starts.shift_starts), so taken as centred
def test_the_plan_says_when_the_particles_are_taken_as_centred(caplog, config_module, particles_given, shift_starts,
                                                               candidates, said):
    plan = _plan(5_000, candidates, config_module=config_module)
    plan.config.data.particles = "stack.star" if particles_given else ""  # "": the run simulates its own, centred
    plan.config.train.amortized_shift_starts = shift_starts  # starts that estimate shifts decide it from the data
    with caplog.at_level(logging.INFO):
        plan.log_plan({"amortized": 6, "autodecoding": 6})
    lines = [r.getMessage() for r in caplog.records if "taken as centred" in r.getMessage()]
    assert lines == (["plan: the particles are taken as centred (model.estimate_shifts=False): particles that sit off "
                      "centre, as picked ones do, need model.estimate_shifts=True or experiments/particles.py (README, "
                      "'Inputs': +-5 % of the box left such a stack near random)"] if said else [])
