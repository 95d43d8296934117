"""Spliceosome benchmark: --config.simulate.volume=SPLICEOSOME_MAP.mrc or --config.data.particles=..."""

from experiments import paper


def get_config():
    return paper.synthetic_config(pixel_size_angstrom=4.25)
