"""Quickstart: the built-in phantom, 64 px at 3 A/px, SNR 0.1, on a 2-core CPU."""

import ml_collections

from experiments import common


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.simulate = common.simulate_config(n_images=5_000, image_size=64, pixel_size_angstrom=3.0)
    return config
