"""EMPIAR-10028 (Plasmodium 80S ribosome, real data): --config.data.particles=shiny_2sets.star
--config.data.datadir=DIR_OF_STACKS. M = 15 heads, 15 + 15 epochs, images downsampled to 128 px; in-plane
shifts estimated (real particles are not exactly centred)."""

from experiments import paper


def get_config():
    config = paper.paper_training(n_heads=15, epochs_amortized=15, epochs_autodecoding=15)
    config.data.image_size = 128
    config.halfsets = True
    config.model.estimate_shifts = True
    return config
