"""Setting up a stack's noise model from its own images (``data.*`` options; the math is ``jaxcryo.noise``).

Order: the particle diameter (given, or estimated from the images), then the contrast check (a stack
whose protein is dark is refused unless ``data.invert_contrast`` is set), then per-particle
normalisation over the background (``data.normalize='per_particle'``), then one whitening profile per
optics group measured on the normalised background (``data.whiten``; or, with
``data.whiten_if_coloured``, when that background's noise is coloured). Each image source (the full box
and the amortized stage's coarse box) gets its own masks and profiles at its own pixel size.
"""

from __future__ import annotations

import dataclasses
import logging

import jax.numpy as jnp
import numpy as np

from jaxcryo import ctf as ctf_lib
from jaxcryo import noise
from jaxcryo.io.loader import ImageSource
from jaxcryo.io.table import CTF_FIELDS, InputError

SAMPLE = 1000  # images per estimate (per optics group for the spectra)
CONTRAST_Z = 4.0  # standard errors: the protein is called dark below -this


def _sample(rows: np.ndarray, seed: int, n: int = SAMPLE) -> np.ndarray:
    return np.sort(np.random.default_rng(seed).choice(rows, size=min(n, len(rows)), replace=False))


def needs_diameter(data_config) -> bool:
    return data_config.get("normalize", "global") == "per_particle" or bool(data_config.get("whiten", False)) \
        or bool(data_config.get("whiten_if_coloured", False)) or bool(data_config.get("contrast_check", False))


MIN_DIAMETER_PX = 8  # a particle narrower than this is no particle for the masks and the noise estimate


def particle_diameter_angstrom(source: ImageSource, data_config, seed: int, log=logging.info) -> float:
    """``data.particle_diameter_angstrom``, or estimated from a sample of the images when it is 0."""
    given = float(data_config.get("particle_diameter_angstrom", 0.0))
    box_angstrom = source.image_size * source.pixel_size_angstrom
    if given:
        if not 0 < given <= box_angstrom * np.sqrt(2):
            raise InputError(f"config: data.particle_diameter_angstrom = {given} does not fit the "
                             f"{box_angstrom:.0f} A box of {source.table.source}")
        least = MIN_DIAMETER_PX * source.pixel_size_angstrom
        if given < least:  # the masks would hold a few pixels: a diameter in pixels or nm, not in A
            raise InputError(f"config: data.particle_diameter_angstrom = {given} is under {MIN_DIAMETER_PX} pixels of "
                             f"{source.pixel_size_angstrom:.3g} A ({least:.3g} A) in {source.table.source}; "
                             "give the diameter in A (0 = estimate it)")
        return given
    rows = _sample(np.arange(len(source.table)), seed)
    diameter = noise.estimate_diameter_px(source.normalized(rows), source.pixel_size_angstrom) * source.pixel_size_angstrom
    log(f"particle diameter estimated from {len(rows)} images: {diameter:.0f} A ({diameter / box_angstrom:.0%} of the "
        "box; set data.particle_diameter_angstrom to override)")
    return diameter


def check_contrast(source: ImageSource, diameter_angstrom: float, invert: bool, seed: int, log=logging.info) -> float:
    """Refuse (InputError) a stack whose protein is dark as the model will see it; returns the z-score."""
    rows = _sample(np.arange(len(source.table)), seed + 1, 500)
    fields = {k: jnp.asarray(getattr(source.table, k)[rows], jnp.float32) for k in CTF_FIELDS}
    ctf = np.asarray(ctf_lib.ctf_grid(source.image_size, source.pixel_size_angstrom, **fields))
    z = noise.contrast_zscore(source.normalized(rows), ctf, source.pixel_size_angstrom,
                              diameter_angstrom / source.pixel_size_angstrom)
    if z < -CONTRAST_Z:
        fix = ("the stack is white already: drop data.invert_contrast" if invert
               else "set data.invert_contrast=True (RELION and cryoSPARC extract protein white)")
        raise InputError(f"{source.table.source}: the protein looks dark in these images{' after inversion' if invert else ''} "
                         f"(contrast z = {z:.1f} over {len(rows)} particles); {fix}, or data.contrast_check=False to skip")
    log(f"contrast: protein white{' after inversion' if invert else ''} (z = {z:.1f} over {len(rows)} particles)"
        if z > CONTRAST_Z else f"contrast: undetermined (z = {z:.1f} over {len(rows)} particles); images used as they are")
    return z


def _background(source: ImageSource, diameter_angstrom: float) -> np.ndarray:
    """(L, L) background weights outside the particle at ``source``'s box; refuses a box with none."""
    background = noise.background_mask(source.image_size, diameter_angstrom / source.pixel_size_angstrom)
    if background.sum() < 0.05 * background.size:
        raise InputError(f"{source.table.source}: a {diameter_angstrom:.0f} A particle leaves no background in the "
                         f"{source.image_size * source.pixel_size_angstrom:.0f} A box; set data.particle_diameter_angstrom")
    return background


def group_noise_powers(source: ImageSource, background: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Each optics group's background noise power, measured on a sample of its images as ``source``
    now normalises them: (G, R) powers and each particle's group index (N,)."""
    groups, group_row = np.unique(source.table.optics_group, return_inverse=True)
    powers = np.stack([noise.noise_power(source.normalized(_sample(np.nonzero(group_row == g)[0], seed + g)), background)
                       for g in range(len(groups))])
    return powers, group_row


COLOURED_RATIO = 1.5  # eight white sets read 1.00-1.01, six with issue 11's coloured noise 3.15-3.17
# (noise falling exponentially by F from k = 0 to Nyquist reads sqrt(F): whitened above F ~ 2.25)


def noise_is_coloured(powers: np.ndarray, size: int, log=logging.info) -> bool:
    """``data.whiten_if_coloured``: whether any optics group's background noise power (G, R) at box
    ``size`` is coloured (``noise.colour_ratio`` above ``COLOURED_RATIO``); says which way it decided
    and why in one line."""
    ratio = max(noise.colour_ratio(p, size) for p in powers)
    verdict = ("coloured: images and CTFs are whitened" if ratio > COLOURED_RATIO
               else "white: the images are used as they are")
    log(f"noise: the background's power falls {ratio:.2f}x from 1/4-1/2 to 3/4-1 of Nyquist (white noise ~1, "
        f"coloured above {COLOURED_RATIO}), so {verdict} (data.whiten_if_coloured; data.whiten=True always whitens)")
    return ratio > COLOURED_RATIO


@dataclasses.dataclass(frozen=True)
class NoiseModel:
    """What ``decide`` chose on the working box, for every box of the same images."""

    diameter_angstrom: float | None  # None when no option needed it
    per_particle: bool = False  # each particle normalised over its background
    whiten: bool = False  # images and CTFs whitened by each optics group's background spectrum


def decide(source: ImageSource, data_config, seed: int, log=logging.info, need_diameter: bool = False) -> NoiseModel:
    """The noise model of the working box's images (``source``), applied to them: the diameter, the contrast
    check and whether to whiten are decided here, once, for every box of the same images (``apply``)."""
    if not (need_diameter or needs_diameter(data_config)):
        return NoiseModel(None)
    diameter = particle_diameter_angstrom(source, data_config, seed, log)
    if data_config.get("contrast_check", False):
        check_contrast(source, diameter, bool(data_config.invert_contrast), seed, log)
    per_particle = data_config.get("normalize", "global") == "per_particle"
    whiten = bool(data_config.get("whiten", False))
    measured = None
    if not whiten and data_config.get("whiten_if_coloured", False):
        background = _background(source, diameter)
        source.use_noise_model(background if per_particle else None)  # the spectra are measured on these images
        measured = group_noise_powers(source, background, seed)
        whiten = noise_is_coloured(measured[0], source.image_size, log)
    model = NoiseModel(diameter, per_particle, whiten)
    apply(model, source, seed, log, measured)
    return model


def apply(model: NoiseModel, src: ImageSource, seed: int, log=None, measured=None) -> None:
    """``model`` on the images of one box (its own masks and spectra at its own pixel size); ``log``
    describes the whitening (given for the working box only); ``measured``: ``group_noise_powers`` of
    ``src`` when ``decide`` measured them already."""
    if not (model.per_particle or model.whiten):
        return
    background = _background(src, model.diameter_angstrom)
    src.use_noise_model(background if model.per_particle else None)  # the spectra are measured on these images
    if not model.whiten:
        return
    powers, group_row = measured if measured is not None else group_noise_powers(src, background, seed)
    profiles = np.stack([noise.whitening_profile(p) for p in powers])
    src.use_noise_model(background if model.per_particle else None, profiles, group_row)
    if log is not None:
        span = profiles[:, 1: src.image_size // 2 + 1]
        log(f"whitening: {len(profiles)} optics group(s); noise power from low frequency to Nyquist falls "
            f"{float(np.median((span[:, -1] / span[:, 0]) ** 2)):.2g}x")


def set_up(source: ImageSource, others, data_config, seed: int, log=logging.info,
           need_diameter: bool = False) -> float | None:
    """The whole noise model for the working box's images (``source``) and the same images at the
    ``others``' boxes; returns the particle diameter in A (None when no option, nor ``need_diameter``,
    needed it)."""
    model = decide(source, data_config, seed, log, need_diameter)
    apply_to_others(model, source, others, seed)
    return model.diameter_angstrom


def apply_to_others(model: NoiseModel, source: ImageSource, others, seed: int) -> None:
    """``model``, decided on ``source``, on the same images at the ``others``' boxes (each once; ``source``
    itself, already set up, skipped)."""
    for src in {id(s): s for s in others if s is not source}.values():
        apply(model, src, seed)
