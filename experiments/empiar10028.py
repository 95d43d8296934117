"""EMPIAR-10028 (Plasmodium 80S ribosome, real data): --config.data.particles=shiny_2sets.star
--config.data.datadir=DIR_OF_STACKS. M = 15 heads, 15 + 15 epochs, images downsampled to 128 px."""

from experiments import common


def get_config():
    config = common.base_config()
    config.data.image_size = 128
    config.model.n_heads = 15
    config.model.width = 1.0
    config.train.batch_size = 64
    config.train.epochs_amortized = 15
    config.train.epochs_autodecoding = 15
    return config
