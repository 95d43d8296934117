"""SARS-CoV-2 spike (PDB 6VXX): --config.simulate.volume=6vxx.pdb.gz (needs jaxcryo[atoms]) or a map/stack.

The density is rendered from the atomic model at simulate.resolution_angstrom (default 2.5 x pixel).
"""

from experiments import paper


def get_config():
    config = paper.synthetic_config(pixel_size_angstrom=2.5)
    config.simulate.resolution_angstrom = 6.0
    return config
