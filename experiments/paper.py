"""The paper's synthetic-benchmark settings, shared by hsp.py, spike.py and spliceosome.py.

CryoSPIN's synthetic datasets: 50,000 images of 128 px at SNR 0.1 with CTF, M = 7 heads, 7 epochs of
auto-encoding then 13 of auto-decoding, batch 64, the full-width encoder. The density is the user's
(``--config.simulate.volume=MAP.mrc|MODEL.pdb``) or an existing stack (``--config.data.particles``).
"""

import ml_collections

from experiments import common


def paper_training(n_heads: int, epochs_amortized: int, epochs_autodecoding: int) -> ml_collections.ConfigDict:
    """The base config with the paper's model and schedule: full width, batch 64."""
    config = common.base_config()
    config.model.n_heads = n_heads
    config.model.width = 1.0
    config.train.batch_size = 64
    config.train.epochs_amortized = epochs_amortized
    config.train.epochs_autodecoding = epochs_autodecoding
    return config


def synthetic_config(pixel_size_angstrom: float, volume: str = "") -> ml_collections.ConfigDict:
    config = paper_training(n_heads=7, epochs_amortized=7, epochs_autodecoding=13)
    config.simulate = common.simulate_config(volume=volume, n_images=50_000, image_size=128,
                                             pixel_size_angstrom=pixel_size_angstrom)
    return config
