"""Quickstart: the built-in phantom, 64 px at 3 A/px, SNR 0.1, reconstructed on a 2-core CPU.

Beyond the paper's method (each a named option of experiments/common.py; see the README and docs/options.md):
* the amortized stage runs on 32 px images and a pose search competes with the encoder's heads
  (2,048 fresh random rotations per step, ``jaxcryo.search``);
* the amortized stage is measured in steps (``train.amortized_steps``), so a stack of 2,000 particles
  gets the learning one of 5,000 gets (in epochs it ended at 53 deg and failed, docs/options.md), and the switch
  to auto-decoding is automatic (``train.switch='auto'``: when the poses stop changing, i.e. fewer than
  20 % of the images moved more than 2 deg since the previous epoch, after at least 156 steps);
* auto-decoding takes its volume from a direct inversion at the current poses after every epoch and,
  every 2 epochs (every epoch while a pass still moves >= 2 % of the images, no more once a pass
  moves < 1 %), checks each image's pose
  against a fresh global search (``jaxcryo.research``) of 16,384 rotations ranked at half Nyquist;
  while those searches still move >= 2 % of the images, auto-decoding goes on past its 6 epochs (up
  to 20): a particle whose amortized stage ended far off gets the epochs it needs, an easy one none;
* with the re-search, each image's pose is also compared with its mates under the map's own
  pseudo-symmetry (``train.research_mates``, ``jaxcryo.pseudosym``): the modes of a pseudo-symmetric
  particle lie too far apart for local refinement and look too alike at low frequency for the search
  (``research.mates_due`` says after which re-searches: not again once they stop paying);
* the re-search and the mate test search with the map of every image but judge each image (found
  pose against current) with the map of the half set it is not in (``train.research_half_maps`` and
  ``train.research_judge_only``): a map of every image holds each image's own noise at its current
  pose, which then out-scores any other pose by that noise (a draw of compact:0 whose amortized stage
  ended at 87.6 deg stalled at 53.6 deg), while a half map, half as sharp, finds poses more slowly
  (ring:0 searched and judged with it ended with a mean error of 49.5 deg at the 16-epoch cap; judged
  only, 2.65 deg);
* one re-search or mate pass moves at most a fifth of the stack (``train.research_move_cap``; a random
  subset of the images that are more likely elsewhere, the rest judged again at the next pass): a
  draw of dimer:1001 whose passes moved 51-69 % of its images swung its whole assignment back and
  forth and stayed at 27 deg through 10 epochs (5.26 deg capped, in 20). Any gain in likelihood moves an
  image: the margin of e^3 that first stopped that swing held back, on realistic data, the small
  gains that lead out of a poor start (docs/options.md);
* the amortized stage starts three times for 78 steps each (one epoch of 5,000 particles) and the start
  whose map explains a fixed sample of images best goes on (``train.amortized_starts``,
  ``jaxcryo.starts``): whether it leaves its first plateau depends on the random draws; two more starts
  estimate in-plane shifts, and when one of them is the most likely the run estimates shifts from then on
  (``train.amortized_shift_starts``): particles off centre leave the centred starts' maps blurred, and on
  centred particles the shift starts' maps, with two more unknowns per image, form more slowly (a shift
  start is scored with what those unknowns fit of noise alone added, ``starts.noise_fit_allowance``);
* every stage works on images Fourier-cropped to the box whose Nyquist is 4 A, when the stack's is
  finer (``data.working_resolution_angstrom``: 128 px at 1.5 A/px runs at 96 px; this phantom's 64 px
  at 3 A/px is left as it is), and the final map is inverted at the stored box from the final poses;
* noise whose background spectrum is coloured is whitened, images and CTFs alike (``data.whiten_if_coloured``,
  ``jaxcryo.noisemodel``), and its amortized stage runs at 8 A instead of 12 A
  (``train.amortized_resolution_whitened_angstrom``); white noise, as in the paper's data, is used as it is;
* a soft spherical mask (the particle's estimated diameter x 1.2) on the map after each amortized epoch and
  on every auto-decoding inversion (``model.volume_mask``), as RELION and cryoSPARC mask each iteration;
* the final rotations are posterior means around the most likely ones (``train.posterior_mean_poses``,
  ``jaxcryo.posemean``), nearer the truth at this SNR, and the final map is marginalised over each
  image's pose posterior: every image inserted at its 8 heaviest draws, weighted
  (``train.posterior_map_draws``; RELION's expectation step, once, at the end).
"""

import ml_collections

from experiments import common


def get_config() -> ml_collections.ConfigDict:
    config = common.base_config()
    config.simulate = common.simulate_config(n_images=5_000, image_size=64, pixel_size_angstrom=3.0)
    # no stage needs detail finer than 4 A (the maps of 5,000 images reach ~5.4 A at 1.5 A/px); the final map
    # is inverted at the stored box. 128 px at 1.5 A/px: the same map and poses, 15 % sooner (docs/options.md)
    config.data.working_resolution_angstrom = 4.0
    config.model.width = 0.125
    config.model.search_candidates = 2048
    config.train.amortized_image_size = 32
    config.train.lr_encoder = 1e-3
    # the encoder and the map learn per step, not per pass over the stack: at most 468 steps (6 epochs of
    # 5,000 particles; 2,000 get 16 epochs, 50,000 the 2-epoch floor), ending sooner by the automatic switch,
    # when the map (and so the poses) stop changing, but not before 156 steps
    config.train.amortized_steps = 468
    config.train.epochs_amortized = 30  # a cap for small stacks
    # three starts of 78 steps (one epoch of 5,000 particles; on any stack, leaving the first plateau takes
    # steps, not passes), each from its own initialisation and search draws, and the one whose map explains
    # a fixed sample of 1,024 images best goes on (train.amortized_starts): whether the amortized stage leaves
    # its first plateau depends on the draws (held-back multidomain:1001 failed at 45.6 deg from one start;
    # of three starts two left it, and the sample's likelihood ranked all three as their pose errors)
    config.train.amortized_starts = 3
    config.train.amortized_start_steps = 78
    config.train.switch = "auto"
    config.train.switch_moved_fraction = 0.2  # when fewer than 20 % of the images moved > 2 deg (over the window below)
    config.train.switch_min_steps = 156
    config.train.switch_window_steps = 78  # poses compared 78 steps apart (a 5,000-image epoch), whatever the stack
    config.train.epochs_autodecoding = 6  # each image's own pose is refined per visit: auto-decoding counts epochs
    config.train.autodecoding_volume = "inversion"
    config.train.research_every_epochs = 2
    config.train.research_candidates = 16384
    config.train.research_global_radius = 0.5
    config.train.epochs_autodecoding_max = 20  # compact:0 searched from 87.6 deg was still moving at 16 (6.5 deg); 4.20 deg at 20
    # the paper's path (model.search_candidates=0): the outside NTD, its heads near random, 42.3 deg at 20, 3.3 deg at 40
    config.train.epochs_autodecoding_max_heads_only = 40
    config.train.posterior_mean_poses = True  # the final rotations: posterior means (jaxcryo.posemean)
    config.train.posterior_map_draws = 8  # and the final map marginalised over each pose posterior (its 8 heaviest draws)
    config.train.research_local = 4
    config.train.research_repeat_fraction = 0.02  # and after the next epoch too while a pass moves >= 2 % of the images
    config.train.research_stop_fraction = 0.01  # and stop searching once a pass moves < 1 %
    config.train.research_mates = True  # and each image's pose against its pseudo-symmetry mates (jaxcryo.pseudosym)
    config.train.research_half_maps = True  # both judged with the other half set's map (no self-noise)
    config.train.research_judge_only = True  # ... but searched with the map of every image (twice the SNR)
    config.train.research_min_gain_nats = 0.0  # ... any gain moves an image,
    config.train.research_move_cap = 0.2  # ... but a pass moves at most a fifth of the stack
    # particles taken as centred, unless one of two more amortized starts that estimate shifts (+-6 % of the
    # box, the search trying +-1 px) is the most likely (train.amortized_shift_starts, jaxcryo.starts): on a
    # stack +-5 % off centre the centred starts' maps stay blurred (taken as centred it ended at 71 deg), and on
    # a centred one the shift starts' form more slowly (with shifts always on: +0.5-0.7 deg); none with the heads
    # alone (model.search_candidates=0), whose starts are all near random when scored (jaxcryo.starts.shift_starts)
    config.model.estimate_shifts = False
    config.train.amortized_shift_starts = 2
    config.model.max_shift_fraction = 0.06
    config.model.search_shift_radius_px = 1
    # white noise is taken as it is; noise whose background spectrum is coloured (falling > 1.5 x from mid to high
    # frequency) is whitened, as particles.py always does: on two centred outside sets with issue 11's coloured
    # noise the median went 12.2 -> 10.2 and 10.3 -> 9.3 deg, the maps 1.07 -> 1.05 and 1.08 -> 1.06 x the reference
    config.data.whiten_if_coloured = True
    # and whitened images run the amortized stage on the box whose Nyquist is 8 A, as particles.py's does:
    # whitening takes the weight off the low frequencies, where coloured noise is strongest
    config.train.amortized_resolution_whitened_angstrom = 8.0
    # a soft spherical mask on the map (the particle's estimated diameter x 1.2, 12 A edge) after each amortized
    # epoch and on every auto-decoding inversion, as RELION and cryoSPARC mask each iteration: the box's solvent
    # noise no longer enters the slices the poses are judged by. On 9 sets (white and coloured, centred and off
    # centre, two held back) every median fell (by 0-1 deg) and the re-searches settled sooner (outside seed 211:
    # 20 -> 7 auto-decoding epochs); the masked final map came 3-14 % nearer the truth, most of it the mask itself
    config.model.volume_mask = True
    return config
