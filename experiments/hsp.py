"""HSP (the paper's near-symmetric benchmark): --config.simulate.volume=HSP_MAP.mrc or --config.data.particles=..."""

from experiments import paper


def get_config():
    return paper.synthetic_config(pixel_size_angstrom=1.5)
