"""Your own particles: python -m experiments.run --config=experiments/particles.py --config.data.particles=PATH --workdir=DIR

PATH: a RELION 3.0/3.1/5 star or a cryoSPARC .cs (its stacks found beside it, or set --config.data.datadir).
What this config does beyond the quickstart, for real stacks (each a named option of experiments/common.py):
* the noise model (jaxcryo.noisemodel): the particle's diameter estimated from the images (or
  --config.data.particle_diameter_angstrom), each particle normalised over its background as RELION
  does, images and CTFs whitened by each optics group's background noise spectrum, and a stack with dark
  protein refused unless --config.data.invert_contrast=True;
* in-plane shifts estimated (the encoder's heads, then per image in auto-decoding);
* a soft spherical mask on the volume (the particle's diameter plus a margin), as the quickstart's;
* a contrast scale per particle fitted in auto-decoding (``model.contrast_prior_std``; written to poses.cs
  as cryoSPARC's per-particle scale): with contrasts spread +-40 % it took the median pose error from
  11.4 to 7.6 deg (docs/options.md);
* auto-decoding's re-search and mate test judge each image with the other half set's map
  (``train.research_half_maps``): a map of every image holds each image's own noise at its pose, which
  kept 43 % of realistic trimer:0's particles at a pseudo-C3 mate (16 % with it; docs/options.md);
* any gain in likelihood moves an image (``train.research_min_gain_nats`` 0): on coloured noise with a
  B-factor a better pose wins by few nats, and a margin of 3 held back the moves out of a poor start
  (realistic ring:1001 2.94 deg without it, 30.1 deg with it; docs/options.md); as in the quickstart, one pass
  moves at most a fifth of the stack (``train.research_move_cap``), against the swing of a whole
  pseudo-symmetric assignment between passes;
* every stage on images Fourier-cropped to the box whose Nyquist is 4 A (the quickstart's
  ``data.working_resolution_angstrom``), the final map inverted at the stored box;
* the amortized stage on a box whose Nyquist is 8 A, and both stages' lengths in steps, so 2,000 and
  200,000 particles both get a sensible run (at least 2 epochs each); the amortized stage goes on past
  its 450 steps while the poses still move, up to 1,200 (``train.amortized_steps_max``);
* particle offsets up to 6 % of the box (``model.max_shift_fraction``; raise it for a stack that is not
  centred: the range was the difference between failing and working on coloured-noise data, docs/measurements.md, part 1);
* the final rotations are posterior means around the most likely ones (``train.posterior_mean_poses``);
* outputs: reconstruction.mrc (direct inversion at each image's 8 heaviest posterior draws, weighted:
  ``train.posterior_map_draws``), decoder.mrc, poses.star (RELION 3.1,
  with the half sets) and poses.cs (cryoSPARC), fsc_halfmaps.csv.
A one-line plan (box, pixel size, N, steps per stage) is logged at the start; each stage's expected time
after its first steps.
"""

import ml_collections

from experiments import common


def get_config() -> ml_collections.ConfigDict:
    config = common.base_config()
    config.data.particles = ""  # required: --config.data.particles=PATH
    # no simulation unless a volume is named (experiments.zoo --realistic uses it to measure this config)
    config.simulate = common.simulate_config(volume="", n_images=5_000, image_size=64, pixel_size_angstrom=3.0)
    config.data.normalize = "per_particle"
    config.data.whiten = True
    config.data.contrast_check = True
    config.data.working_resolution_angstrom = 4.0  # the quickstart's: the final map alone at the stored box
    config.model.width = 0.125
    config.model.search_candidates = 2048
    config.model.estimate_shifts = True
    config.model.max_shift_fraction = 0.06  # centred stacks (RELION/cryoSPARC re-extraction): +-6 % of the box
    # the search tries each rotation at +-1 px around the head's shift (9 copies, not radius 2's 25): the
    # amortized steps 1.1 x faster at 48 px alone, 1.3-1.6 x beside other work, the same poses (outside seeds
    # 277 and 263, off centre: 9.82 and 6.28 deg against radius 2's 9.91 and 6.22; docs/options.md)
    config.model.search_shift_radius_px = 1
    config.model.volume_mask = True
    config.model.contrast_prior_std = 0.3  # real particles differ in ice thickness: fit each one's scale
    # on coloured-noise data the low frequencies carry little signal: a 12 A amortized stage ended at
    # 75-112 deg median pose error, an 8 A one at 17-18 deg (docs/measurements.md, part 1)
    config.train.amortized_resolution_angstrom = 8.0
    config.train.lr_encoder = 1e-3
    config.train.amortized_steps = 450  # about the quickstart's 6 epochs of 5,000 images
    config.train.epochs_amortized = 30  # caps for small stacks
    # and past its 450 steps while the poses still move, up to 1,200: the outside realistic dimer (seed 131)
    # ended its 6 planned epochs reassigning half its images and failed at 24.8 deg; 16 epochs took it to
    # 13.4, and its second draw from 112 to 13.0 (the realistic seed-7 dimer switched after 10 and ended as
    # before, 12.4; docs/options.md)
    config.train.amortized_steps_max = 1200
    config.train.autodecoding_steps = 450
    config.train.epochs_autodecoding = 12
    config.train.autodecoding_volume = "inversion"
    config.train.research_every_epochs = 2
    config.train.research_candidates = 16384  # the quickstart's re-search: ranked at half Nyquist
    config.train.research_global_radius = 0.5
    config.train.research_local = 4
    config.train.research_repeat_fraction = 0.02  # the quickstart's schedule: search again while it pays,
    config.train.research_stop_fraction = 0.01  # and stop searching once a pass moves < 1 %
    config.train.research_mates = True  # and each image's pose against its pseudo-symmetry mates (jaxcryo.pseudosym)
    config.train.research_half_maps = True  # both judged with the other half set's map (no self-noise)
    config.train.research_min_gain_nats = 0.0  # any gain moves an image (3 stalled realistic ring:1001 at 30 deg)
    config.train.research_move_cap = 0.2  # but a pass moves at most a fifth of the stack (the quickstart's)
    config.train.epochs_autodecoding_max = 16  # past the planned epochs too, up to this many
    config.train.posterior_mean_poses = True  # the final rotations: posterior means (jaxcryo.posemean)
    config.train.posterior_map_draws = 8  # and the final map marginalised over each pose posterior (its 8 heaviest draws)
    config.train.switch = "auto"
    config.train.switch_min_steps = 156  # the quickstart's: a small stack's short epochs do not switch it early
    config.train.switch_window_steps = 78  # nor their small moves per epoch (the quickstart's)
    return config
