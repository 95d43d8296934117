"""Shared pieces of the experiment configs (ml_collections, the flax-examples convention)."""

import ml_collections


def simulate_config(**overrides) -> ml_collections.ConfigDict:
    """The paper's synthetic-data settings: 300 kV, Cs 2.7 mm, w 0.1, defocus log-normal around 2 um."""
    cfg = ml_collections.ConfigDict()
    cfg.volume = "phantom"  # 'phantom', 'dimer_phantom' (near two-fold), an .mrc map, or a PDB/mmCIF model (needs jaxcryo[atoms])
    cfg.resolution_angstrom = 0.0  # atomic models / phantom: density resolution; 0 = 2.5 x pixel size
    cfg.n_images = 50_000
    cfg.image_size = 128
    cfg.pixel_size_angstrom = 3.0
    cfg.snr = 0.1
    cfg.max_shift_fraction = 0.0  # shifts uniform in +-fraction of the box, per axis
    cfg.defocus_angstrom = 20_000.0
    cfg.defocus_log_std = 0.2
    cfg.astigmatism_angstrom = 0.0  # |N(0, this^2)|: defocus U - V
    # realistic effects the reconstruction is not told (jaxcryo.simulate): all off = the paper's data
    cfg.b_factor_angstrom2 = 0.0  # envelope exp(-B k^2 / 4) on the signal
    cfg.contrast_spread = 0.0  # per-particle contrast scale uniform in 1 +- this
    cfg.offset_std = 0.0  # per-particle background offset, in noise standard deviations
    cfg.noise_color = 1.0  # noise power at |k| = 0 over that at Nyquist (1 = white)
    cfg.voltage_kv = 300.0
    cfg.spherical_aberration_mm = 2.7
    cfg.amplitude_contrast = 0.1
    cfg.chunk_size = 500
    cfg.seed = 0
    cfg.update(overrides)
    return cfg


def base_config() -> ml_collections.ConfigDict:
    """The paper's reconstruction settings (CryoSPIN, synthetic datasets); configs override parts."""
    config = ml_collections.ConfigDict()
    config.seed = 0
    config.progress_bar = True

    config.data = ml_collections.ConfigDict()
    config.data.particles = ""  # .star, .cs, .mrcs or .txt; empty = simulate into WORKDIR/data
    config.data.datadir = ""  # where the stacks are, when the paths in the metadata are broken
    config.data.image_size = 0  # Fourier-crop to this box on the fly (0 = as stored)
    # every stage works on the images Fourier-cropped to the smallest even box whose Nyquist reaches this
    # resolution; the final map (and its half maps) is inverted at the box above from the final poses (0 = off)
    config.data.working_resolution_angstrom = 0.0
    config.data.pixel_size_angstrom = 0.0  # override (0 = from the metadata)
    config.data.invert_contrast = False  # set for dark-protein stacks
    # background threads that read, crop, normalise and whiten the images, in order (0 = a quarter of
    # the host's cores, 1 to 4: jaxcryo.io.loader.default_threads); the results do not depend on it
    config.data.loader_threads = 0
    # the noise model (jaxcryo.noisemodel): the particle's diameter (0 = estimated from the images) sets
    # the background for per-particle normalisation ('per_particle', as RELION) and the noise spectra
    # that whiten images and CTFs per optics group; a dark-protein stack is refused unless inverted
    config.data.particle_diameter_angstrom = 0.0
    config.data.normalize = "global"  # 'global': one mean and std for the stack (the paper's synthetic data)
    config.data.whiten = False
    # measure the background's noise spectrum and whiten only when it is coloured (noisemodel.noise_is_coloured)
    config.data.whiten_if_coloured = False
    config.data.contrast_check = True
    # each particle's offset taken from the star's origins (rlnOriginXAngst/YAngst, cryoSPARC's shifts), e.g. from
    # RELION's 2D classification or a previous run's poses.star: the amortized stage sees the particles
    # re-centred by them and auto-decoding starts from them (False: the origins are ignored)
    config.data.origins_as_shifts = False

    config.poses = ""  # a star with known poses: fit the volume only (the known-pose oracle)
    # a star (or .cs) with a pose for every particle to start auto-decoding from: no amortized stage; each
    # pose (and origin) refined from there, e.g. a previous run's poses.star, or with the true poses, how
    # far the method's own auto-decoding takes a perfect start (docs/results.md, "Your own particles")
    config.start_poses = ""
    config.halfsets = False  # two independent half-set runs, aligned; gold-standard FSC (WORKDIR/half1, half2)

    config.model = ml_collections.ConfigDict()
    config.model.n_heads = 7
    config.model.width = 1.0  # channel multiplier of the VGG backbone (1.0 = the paper)
    config.model.volume_init_scale = 0.0  # mantissa ~ N(0, s^2) at start (0 = empty volume)
    config.model.fully_amortized = False  # keep the encoder to the end (the paper's baseline)
    # a soft spherical mask (the particle's diameter x MASK_MARGIN, jaxcryo.volumes) on the volume after each
    # amortized epoch and on every auto-decoding inversion, as RELION and cryoSPARC mask each iteration
    config.model.volume_mask = False
    # Beyond the paper, for small compute budgets: this many random poses per step compete with the
    # encoder's heads (scored by two matrix products); the encoder is taught by the winners.
    config.model.search_candidates = 0
    config.model.distill_weight = 0.1
    # Beyond the paper (its code never estimates shifts): each head also predicts an in-plane shift,
    # bounded by +-max_shift_fraction of the box, refined per image in auto-decoding. Off for the
    # paper's centred synthetic data; real-data configs turn it on.
    config.model.estimate_shifts = False
    config.model.max_shift_fraction = 0.15
    # with estimate_shifts: False = the amortized stage estimates no shifts (it takes the particles as centred,
    # or centred by their origins with data.origins_as_shifts) and auto-decoding finds them (docs/measurements.md, part 1: a
    # shift estimate made with a young map registers the particles too poorly for the stage to form one)
    config.model.amortized_shifts = True
    # Beyond the paper: > 0 fits each particle's contrast scale in auto-decoding (images differ in ice
    # thickness and dose), with a N(1, this^2) prior; written as cryoSPARC's per-particle scale
    config.model.contrast_prior_std = 0.0
    config.model.search_shift_radius_px = 2  # with search_candidates: also try shifts +-this many (amortized) px
    # hierarchical search (jaxcryo.search): keep the best top_k candidates per image and refine each by
    # search_local perturbations of ~search_local_sigma_deg, halved each of search_local_rounds rounds
    config.model.search_top_k = 1
    config.model.search_local = 0
    config.model.search_local_sigma_deg = 10.0
    config.model.search_local_rounds = 0
    # > 0: the global stage ranks its rotations on the frequencies up to this fraction of Nyquist only (as
    # train.research_global_radius does for the re-search: a rotation ~4x cheaper at 0.5; 4x the rotations
    # ran 1.2x slower a step, docs/options.md), and the best search_top_k are scored again on the whole disc
    config.model.search_global_radius = 0.0

    config.loss = ml_collections.ConfigDict()
    config.loss.kind = "gaussian"  # the paper's Gaussian NLL; 'l1_fourier' = the official code's loss
    config.loss.radius_start = 1.0  # loss disc radius, fraction of Nyquist, at the start ...
    config.loss.radius_end = 1.0  # ... and after radius_ramp_epochs of the amortized stage
    config.loss.radius_ramp_epochs = 0.0
    # beyond the paper: > 0 gives each losing head's loss this weight / (M - 1) (relaxed winner-takes-all),
    # poses only: a head that never wins still learns (jaxcryo.losses.winner_takes_all)
    config.loss.wta_relax = 0.0

    config.train = ml_collections.ConfigDict()
    config.train.batch_size = 64
    # passes that only read poses or maps (the switch, the epoch-end poses, the re-search, the inversion):
    # larger batches share each searched slice among more images; a performance knob, not a method one
    config.train.inference_batch_size = 256
    config.train.amortized_image_size = 0  # run the amortized stage on images Fourier-cropped to this box
    config.train.amortized_resolution_angstrom = 0.0  # with amortized_image_size 0: the box whose Nyquist is this
    # > 0: images that are whitened (data.whiten, or coloured noise under data.whiten_if_coloured) run the
    # amortized stage on the box whose Nyquist is this instead, whatever the two options above say
    config.train.amortized_resolution_whitened_angstrom = 0.0
    config.train.epochs_amortized = 7  # with switch='auto': the most auto-encoding epochs
    # > 0: a stage's length in steps, rounded up to whole epochs, at least 2 and at most epochs_* (a cap)
    config.train.amortized_steps = 0
    # > 0 with switch='auto': the amortized stage goes on past its planned epochs while the poses still move,
    # up to the epochs that hold this many steps (at most epochs_amortized)
    config.train.amortized_steps_max = 0
    config.train.autodecoding_steps = 0
    # beyond the paper: this many amortized starts, each amortized_start_epochs long (or, when > 0,
    # amortized_start_steps steps: a part of an epoch on a large stack); the most likely is kept
    config.train.amortized_starts = 1
    config.train.amortized_start_epochs = 2
    config.train.amortized_start_steps = 0
    # with model.estimate_shifts=False: this many more starts estimate shifts, and when one of them is the
    # most likely the run goes on estimating them (particles off centre; jaxcryo.starts)
    config.train.amortized_shift_starts = 0
    config.train.switch = "fixed"  # 'fixed': after epochs_amortized; 'auto': when poses stop moving
    config.train.switch_threshold_deg = 2.0  # 'auto': an image "moved" when its pose changed more than this ...
    config.train.switch_moved_fraction = 0.5  # ... and the switch comes when fewer than this share moved (0.5: the median)
    config.train.switch_min_epochs = 2
    config.train.switch_min_steps = 0  # and at least this many steps (a small stack's epochs are short)
    config.train.switch_window_steps = 0  # the poses compared lie at least this many steps apart (0: one epoch)
    config.train.switch_search_passes = 4  # with a search: poses at the switch = best of this many searches
    config.train.epochs_autodecoding = 13
    config.train.lr_encoder = 1e-4
    config.train.lr_volume = 1e-2
    config.train.lr_volume_autodecoding = 1e-3  # the decoder's learning rate is lowered at the switch
    # 'gradient' (the paper): vol_iters Adam steps on the volume per step; 'inversion' (beyond the paper):
    # the volume is the direct inversion at the current poses, made at the switch and after every epoch
    config.train.autodecoding_volume = "gradient"
    config.train.lr_pose = 0.05
    config.train.lr_pose_final_fraction = 1.0  # cosine decay of lr_pose (and lr_shift) over auto-decoding to this
    config.train.lr_shift = 0.1  # per-image shift, pixels per Adam step (with model.estimate_shifts)
    config.train.pose_iters = 5
    # Beyond the paper: every this many auto-decoding epochs, each image's pose is checked against a global
    # search of research_candidates rotations (refined locally) with the current map (jaxcryo.research)
    config.train.research_every_epochs = 0
    config.train.research_candidates = 0
    config.train.research_local = 8  # perturbations per kept candidate and round (best 2 kept, 3 rounds from 10 deg)
    config.train.research_repeat_fraction = 0.0  # > 0: search again after the next epoch while a pass moves this much
    config.train.research_stop_fraction = 0.0  # > 0: no further re-search once a pass moved fewer than this
    # the re-search's global stage (and all but its last local round) on the frequencies up to this fraction
    # of Nyquist only, on cropped arrays: as good at ranking, 4x cheaper at 0.5 (jaxcryo.search); 0 = all
    config.train.research_global_radius = 0.0
    # with the re-search (while it pays: research.mates_due), also every image's pose against its mates
    # under the map's own pseudo-symmetry (jaxcryo.pseudosym): the modes of a pseudo-symmetric particle lie
    # too far apart for local refinement and too alike at low frequency for the global search
    config.train.research_mates = False
    # the re-search and the mate test judge each image with the map of the half set it is not in: a map
    # made from every image holds each image's own noise at its current pose, which then out-scores any
    # other pose by that noise (RELION's gold-standard halves; jaxcryo.research.HalfMaps)
    config.train.research_half_maps = False
    # with research_half_maps: search (and pick each image's best mate) with the map of every image, whose
    # SNR is twice a half map's, and judge only (found pose against current) with the other half's map
    config.train.research_judge_only = False
    # an image takes a searched pose or a mate only when it is this many nats more likely (a likelihood
    # ratio of e^x; jaxcryo.research.evidence_nats): 0 = any gain, however small
    config.train.research_min_gain_nats = 0.0
    # at most this share of the stack moves at one re-search or mate pass (a random subset of the images
    # that qualify; the rest are judged again at the next pass): moving all at once can swing a
    # pseudo-symmetric particle's whole assignment back and forth between passes
    # (jaxcryo.research.damped); 1 = no cap
    config.train.research_move_cap = 1.0
    # the re-search's schedule (search again, stop, run past the planned epochs, test the mates) counts
    # only the images a pass moved farther than this: on a particle whose posterior is broad, images
    # hop 5-15 deg between near-equal poses at every pass, and those hops keep the schedule going while
    # changing little (white dimer:1001: 9 -> 8 deg for the images moved); 0 = every move (over 5 deg)
    config.train.research_count_min_deg = 0.0
    # the re-search's batch: its global rotations' slices are shared by the batch (a performance knob)
    config.train.research_batch_size = 1024
    # > epochs_autodecoding: auto-decoding goes on past its planned epochs, up to this many, while each
    # re-search still moves research_repeat_fraction of the images (jaxcryo.research)
    config.train.epochs_autodecoding_max = 0
    # the same cap when the encoder's heads alone proposed the amortized stage's poses (model.search_candidates=0;
    # 0 = epochs_autodecoding_max): the re-search then does the ab initio from near random poses
    config.train.epochs_autodecoding_max_heads_only = 0
    # > 0: after auto-decoding, this many steps of per-image Adam (heldout_lr_rad, falling linearly to
    # heldout_lr_rad x heldout_lr_final_fraction) on the likelihood of each half of the images under the
    # other half's Wiener map, differentiated through that map's inversion too, a fresh half split each
    # step (jaxcryo.heldout). 15 steps: SNR 0.5 3.52 -> 2.95 and 1.05 -> 0.83 deg, 128 px 2.47 -> 2.16 deg,
    # white SNR 0.1 2-7 % lower medians; ~12 s a step per 5,000 images of 64 px on 2 cores
    # (docs/options.md), so off here
    config.train.heldout_steps = 0
    config.train.heldout_lr_rad = 0.02
    config.train.heldout_lr_final_fraction = 0.1
    # after auto-decoding, each rotation replaced by its posterior mean: posterior_samples draws ~
    # posterior_sigma_deg around it, weighted by their likelihood under the other half set's map
    # (jaxcryo.posemean; nearer the truth than the most likely pose, which the paper reports)
    config.train.posterior_mean_poses = False
    config.train.posterior_samples = 32  # 64 estimate the mean better (4.41 vs 4.46 deg, docs/options.md) at twice the cost
    config.train.posterior_sigma_deg = 3.0
    # > 0: the final map marginalised over each image's pose posterior: every image inserted at its this
    # many heaviest posterior draws, weighted (RELION's expectation step; jaxcryo.inversion); 0: one
    # insertion per image at its final pose (the posterior mean with posterior_mean_poses)
    config.train.posterior_map_draws = 0
    config.train.vol_iters = 1
    config.train.log_every = 20
    config.train.checkpoint_every_steps = 500
    # epoch_NNN/ (map + poses.star of every particle after each epoch) while N is at most this (-1: always,
    # 0: never): each costs an inference pass over the stack (27 % of an amortized epoch, experiments.bench --scale)
    config.train.epoch_outputs_max_particles = 20_000

    config.eval = ml_collections.ConfigDict()
    config.eval.ground_truth = ""  # a map to compare against (FSC) after each epoch
    config.eval.ground_truth_poses = ""  # a star with the true poses (pose error) after each epoch
    return config
