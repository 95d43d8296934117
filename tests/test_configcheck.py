"""Resuming a work directory: which stored configs a new config may continue (jaxcryo.configcheck)."""

import pathlib

import pytest

from experiments import common, particles, quickstart
from jaxcryo import configcheck
from jaxcryo.io.table import InputError

STORED = pathlib.Path("WORKDIR/config.json")


def _without(config, keys) -> dict:
    """A config.json as a run stored before ``keys`` existed."""
    stored = config.to_dict()
    for key in keys:
        section, name = key.split(".")
        stored[section].pop(name)
    return stored


def test_the_added_options_default_to_what_older_runs_did():
    """Each option's default must still be the value that reproduces runs stored before it existed."""
    config = configcheck.flatten(common.base_config().to_dict())
    config.update(configcheck.flatten({"simulate": common.simulate_config().to_dict()}))
    assert {key: config[key] for key in configcheck.ADDED_OPTIONS} == configcheck.ADDED_OPTIONS


def test_a_run_stored_before_an_option_resumes_at_its_neutral_value():
    config = quickstart.get_config()
    stored = _without(config, ["data.origins_as_shifts", "model.amortized_shifts"])
    configcheck.check_resumable(stored, config, STORED)  # no error: those values do what the old run did


def test_a_run_stored_before_an_option_is_refused_when_the_option_changes_the_run():
    config = particles.get_config()  # research_mates=True: not what a run stored without the key did
    stored = _without(config, ["train.research_mates"])
    with pytest.raises(InputError, match=r"WORKDIR/config.json: .*another config \(train.research_mates \(added since "
                                         r"this run, which ran as False -> True\)\); use a new --workdir, or the same "
                                         r"config to resume \(to resume it as it ran: --config.train.research_mates=False\)$"):
        configcheck.check_resumable(stored, config, STORED)
    config.train.research_mates = False  # the line's own advice resumes it
    configcheck.check_resumable(stored, config, STORED)


def test_an_unknown_key_missing_from_the_stored_run_is_a_difference():
    config = quickstart.get_config()
    stored = _without(config, ["model.n_heads"])
    with pytest.raises(InputError, match=r"model.n_heads \(None -> 7\)"):
        configcheck.check_resumable(stored, config, STORED)


@pytest.mark.parametrize("key, value, message", [
    ("loss.wta_relax", 1.0, r"config: loss.wta_relax = 1.0; expected a weight in \[0, 1\)"),
    ("loss.wta_relax", float("nan"), r"config: loss.wta_relax = nan"),
    ("train.research_stop_fraction", 2.0, r"config: train.research_stop_fraction = 2.0; expected a fraction"),
])
def test_an_impossible_value_is_refused_in_one_line(key, value, message):
    config = quickstart.get_config()
    section, name = key.split(".")
    config[section][name] = value
    with pytest.raises(InputError, match=message):
        configcheck.validate(config)
    config[section][name] = 0.0
    configcheck.validate(config)  # the neutral value passes


@pytest.mark.parametrize("value", [0.0, -0.1, 1.5, float("nan")])
def test_a_move_cap_outside_its_range_is_refused(value):
    """``train.research_move_cap`` is a share of the stack in (0, 1]: 0 would stop every move."""
    config = quickstart.get_config()
    config.train.research_move_cap = value
    with pytest.raises(InputError, match=r"config: train.research_move_cap = .*; expected a fraction in \(0, 1\]"):
        configcheck.validate(config)
    config.train.research_move_cap = 1.0
    configcheck.validate(config)


@pytest.mark.parametrize("key", ["train.amortized_image_size", "data.image_size", "simulate.image_size"])
def test_a_box_below_the_encoders_is_refused_unless_the_poses_are_given(key):
    config = quickstart.get_config()
    section, name = key.split(".")
    config[section][name] = 24
    with pytest.raises(InputError, match=rf"config: {key} = 24 is below the 32 px the pose encoder needs"):
        configcheck.validate(config)
    config.poses = "known.star"  # no encoder: a small box is fine
    configcheck.validate(config)
    config.poses, config.start_poses = "", "start.star"  # nor when auto-decoding starts from given poses
    configcheck.validate(config)
    config.poses = "known.star"
    with pytest.raises(InputError, match=r"config: poses \(held fixed\) and start_poses \(refined\) are both set"):
        configcheck.validate(config)


@pytest.mark.parametrize("overrides, message", [
    ({"seed": -3}, r"config: seed = -3; expected an integer >= 0"),
    ({"train.amortized_resolution_angstrom": -5.0}, r"config: train.amortized_resolution_angstrom = -5.0; expected a resolution >= 0"),
    ({"data.datadir": "/nonexistent/stacks"}, r"config: data.datadir = '/nonexistent/stacks'; expected an existing folder"),
    ({"simulate.n_images": 10}, r"config: simulate.n_images = 10; expected at least one batch of train.batch_size = 64"),
])
def test_a_value_no_run_can_use_is_refused_before_anything_is_written(overrides, message):
    config = quickstart.get_config()
    for key, value in overrides.items():
        section, _, name = key.rpartition(".")
        (config[section] if section else config)[name] = value
    with pytest.raises(InputError, match=message):
        configcheck.validate(config)
