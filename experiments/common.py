"""Shared pieces of the experiment configs (ml_collections, the flax-examples convention)."""

import ml_collections


def simulate_config(**overrides) -> ml_collections.ConfigDict:
    """The paper's synthetic-data settings: 300 kV, Cs 2.7 mm, w 0.1, defocus log-normal around 2 um."""
    cfg = ml_collections.ConfigDict()
    cfg.volume = "phantom"  # 'phantom', an .mrc map, or a PDB/mmCIF model (needs jaxcryo[atoms])
    cfg.resolution_angstrom = 0.0  # atomic models / phantom: density resolution; 0 = 2.5 x pixel size
    cfg.n_images = 50_000
    cfg.image_size = 128
    cfg.pixel_size_angstrom = 3.0
    cfg.snr = 0.1
    cfg.max_shift_fraction = 0.0  # shifts uniform in +-fraction of the box, per axis
    cfg.defocus_angstrom = 20_000.0
    cfg.defocus_log_std = 0.2
    cfg.astigmatism_angstrom = 0.0
    cfg.voltage_kv = 300.0
    cfg.spherical_aberration_mm = 2.7
    cfg.amplitude_contrast = 0.1
    cfg.chunk_size = 500
    cfg.seed = 0
    cfg.update(overrides)
    return cfg
