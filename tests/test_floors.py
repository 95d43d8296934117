"""The floors of a simulated set (``jaxcryo.posterior``): what its data allow, whatever the method."""

import pytest

from experiments import quickstart
from jaxcryo import posterior
from jaxcryo.io import check_stacks, read_particles
from jaxcryo.io.loader import ImageSource, half_set_labels
from jaxcryo.simulate import simulate_dataset


def _simulated(tmp_path, snr: float):
    config = quickstart.get_config().simulate
    config.update(n_images=512, image_size=32, pixel_size_angstrom=6.0, snr=snr, chunk_size=512)
    simulate_dataset(config, str(tmp_path))  # the jaxcryo simulator: images and ground_truth.mrc from one map
    table = read_particles(tmp_path / "particles.star")
    source = ImageSource(table, check_stacks(table))
    source.estimate_normalization()
    return source, read_particles(tmp_path / "ground_truth_poses.star").rotations(), half_set_labels(table, 0)


@pytest.mark.slow  # ~55 s: two simulated sets, an inversion and two polishes each
def test_the_half_map_floor_lies_a_little_above_the_true_maps(tmp_path):
    # Each image's nearest maximum from its true pose under the other half set's map made at the true
    # poses, against the same under the true map: the half map is noisier and low-passed, so its floor
    # is the higher, by under a degree at SNR 100 (the inversion's own interpolation error at 32 px)
    # and by a little more at SNR 0.05, where both spread by degrees. A floor judged under a map made
    # at wrong poses, or a test that ignored the noise, would break one of the bounds.
    from jaxcryo.io import read_volume

    floors = {}
    for snr in (100.0, 0.05):
        source, rotations, labels = _simulated(tmp_path / str(snr), snr)
        half = posterior.half_map_floor(source, rotations, labels, n_images=64, steps=100)["half_map_floor_median_deg"]
        true = posterior.pose_error_floor(read_volume(tmp_path / str(snr) / "ground_truth.mrc")[0], source, rotations,
                                          n_images=64, steps=100)["floor_median_deg"]
        floors[snr] = (half, true)
    (high_half, high_true), (low_half, low_true) = floors[100.0], floors[0.05]
    assert high_true <= high_half < high_true + 1.0 and high_half < 1.5, floors
    assert low_true <= low_half < low_true + 2.5 and low_half > 4 * high_half, floors
