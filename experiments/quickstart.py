"""Quickstart: the built-in phantom, 64 px at 3 A/px, SNR 0.1, reconstructed on a 2-core CPU."""

import ml_collections

from experiments import common


def get_config() -> ml_collections.ConfigDict:
    config = common.base_config()
    config.simulate = common.simulate_config(n_images=5_000, image_size=64, pixel_size_angstrom=3.0)
    config.model.width = 0.125
    config.model.search_candidates = 2048
    config.train.amortized_image_size = 32
    config.train.lr_encoder = 1e-3
    config.train.epochs_amortized = 6  # on the phantom poses settle in 1-2 epochs: the rest is margin
    config.train.epochs_autodecoding = 6
    config.model.estimate_shifts = False  # the simulated particles are centred; True for shifted data
    return config
