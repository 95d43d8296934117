"""Real noise: the particle's extent, the background noise power spectrum, whitening, contrast sign.

Conventions (stated once here):
* Radial profiles are indexed by the integer radius r = round(|k|) in pixels of the box's frequency
  grid (r = L/2 is Nyquist); the corners run to r = ceil(L / sqrt 2). Shape (R,), R = ``n_radii(L)``.
* Power is that of the Hartley/Fourier coefficients scaled by 1/L (``jaxcryo.losses.images_to_hartley``),
  so white noise of unit pixel variance has power 1 at every radius.
* Whitening by w(r) = 1 / sqrt(power(r)) applies to the images *and* to the CTF (the model is
  w * CTF * slice + white noise of unit variance), which turns the Gaussian likelihood's unit-variance
  assumption into a true statement about coloured noise.
* The background is everything outside a circle of the particle's diameter (RELION's choice), with a
  soft cosine edge so the spectrum is not ringed by a hard cut.
"""

from __future__ import annotations

import functools

import numpy as np
import scipy.fft

from jaxcryo import fourier

LOWPASS_ANGSTROM = 20.0  # shape and contrast estimates look at low resolution, where the CTF spreads little
# The diameter is where the stack's variance profile falls to this fraction of its peak: the particle's
# full extent, not its core. A rod's ends lie at the largest radius only in its side views, so its
# profile has a long faint tail; at 10 % the estimate was half an elongated particle's length (the
# volume mask then cut its ends off and the run failed). At 3 % every member of the phantom family,
# develop and held back, fits inside 1.2 x the estimate (docs/measurements.md, part 1).
EXTENT_FRACTION = 0.03


def n_radii(size: int) -> int:
    return int(np.ceil(size / np.sqrt(2.0))) + 1


@functools.lru_cache(maxsize=16)
def radius_grid(size: int) -> np.ndarray:
    """(L, L) distance in pixels from the box centre (``fourier.radial_index_grid``), as a host array
    computed once per size: every whitened batch read uses it. Read-only."""
    grid = np.asarray(fourier.radial_index_grid(size), np.float64)
    grid.flags.writeable = False
    return grid


def background_mask(size: int, diameter_px: float, edge_px: float = 3.0) -> np.ndarray:
    """(L, L) weights: 0 inside the particle circle, 1 beyond diameter/2 + edge, cosine in between."""
    t = np.clip((radius_grid(size) - diameter_px / 2.0) / max(edge_px, 1e-6), 0.0, 1.0)
    return 0.5 - 0.5 * np.cos(np.pi * t)


def normalize_per_particle(images: np.ndarray, background: np.ndarray) -> np.ndarray:
    """(B, L, L) images scaled as RELION does: background mean 0 and standard deviation 1 per image."""
    w = background / background.sum()
    mean = np.einsum("bij,ij->b", images, w)[:, None, None]
    var = np.einsum("bij,ij->b", (images - mean) ** 2, w)[:, None, None]
    return ((images - mean) / np.sqrt(np.maximum(var, 1e-12))).astype(np.float32)


def radial_average(values: np.ndarray, size: int) -> np.ndarray:
    """(..., L, L) values on the centred frequency grid -> (R,) mean per integer radius."""
    r = np.round(radius_grid(size)).astype(int).ravel()
    flat = values.reshape(-1, size * size).mean(axis=0)
    return np.bincount(r, flat, n_radii(size)) / np.maximum(np.bincount(r, minlength=n_radii(size)), 1)


def noise_power(images: np.ndarray, background: np.ndarray) -> np.ndarray:
    """(R,) background noise power per radius from (B, L, L) images: the power spectrum of the images
    multiplied by the background weights, divided by the weights' mean square (the fraction of the
    image each spectrum was measured on)."""
    size = images.shape[-1]
    masked = (images - np.einsum("bij,ij->b", images, background / background.sum())[:, None, None]) * background
    f = np.fft.fftshift(np.fft.fft2(masked), axes=(-2, -1)) / size
    return radial_average(np.abs(f) ** 2, size) / np.mean(background**2)


def colour_ratio(power: np.ndarray, size: int) -> float:
    """How coloured the noise of a (R,) power profile at box ``size`` is: its mean power between a quarter
    and half of Nyquist over that between three quarters and Nyquist (1 for white noise). The lowest
    quarter is left out: there the background holds the CTF's delocalised signal of the particle, and all
    of a particle whose diameter was underestimated (a white dimer filling 60 % of its box read 1.6 x
    from low frequency to Nyquist, 1.01 x here; noise that falls 10 x to Nyquist reads 3.1 x)."""
    nyquist = size // 2
    r = np.arange(len(power))
    mid = (r > nyquist / 4) & (r <= nyquist / 2)
    high = (r > 3 * nyquist / 4) & (r <= nyquist)
    return float(power[mid].mean() / power[high].mean())


def whitening_profile(power: np.ndarray) -> np.ndarray:
    """(R,) w = 1 / sqrt(power); bins with no measurable power (none should have any) keep w = 1."""
    ok = np.isfinite(power) & (power > 1e-8 * np.nanmax(power))
    return np.where(ok, 1.0 / np.sqrt(np.where(ok, power, 1.0)), 1.0).astype(np.float32)


def expand_radial(profiles, size: int):
    """(B, R) profiles -> (B, L, L) on the centred frequency grid (numpy or jax arrays)."""
    return profiles[:, _radius_index(size)]


@functools.lru_cache(maxsize=16)
def _radius_index(size: int) -> np.ndarray:
    index = np.round(radius_grid(size)).astype(np.int32)
    index.flags.writeable = False
    return index


def fourier_filter(images: np.ndarray, filt: np.ndarray) -> np.ndarray:
    """(B, L, L) real images multiplied in Fourier space by ``filt`` ((L, L) or (B, L, L), centred grid,
    even: filt(-k) = filt(k), as radial profiles and CTFs are). A circular shift of the image only
    turns its transform's phases, so the image needs no centring, and an even filter keeps a real
    image real: the half-plane transform does it at half the cost (this runs on every image read)."""
    size = images.shape[-1]
    half = np.fft.ifftshift(filt, axes=(-2, -1))[..., : size // 2 + 1].astype(np.float32)
    # single precision: the images are float32, and scipy's transform keeps it (numpy's computes in double)
    return scipy.fft.irfft2(scipy.fft.rfft2(images.astype(np.float32, copy=False)) * half, s=images.shape[-2:])


def apply_radial_filter(images: np.ndarray, profiles: np.ndarray) -> np.ndarray:
    """Filter (B, L, L) real images by per-image radial profiles (B, R) in Fourier space."""
    return fourier_filter(images, expand_radial(profiles, images.shape[-1])).astype(np.float32)


def _lowpass(images: np.ndarray, pixel_size_angstrom: float, phase_flip: np.ndarray | None = None) -> np.ndarray:
    """Gaussian low-pass to ~LOWPASS_ANGSTROM, optionally multiplied by sign(CTF) (B, L, L) first."""
    size = images.shape[-1]
    k = radius_grid(size) / (size * pixel_size_angstrom)  # 1/A
    filt = np.exp(-0.5 * (k * LOWPASS_ANGSTROM) ** 2)
    return fourier_filter(images, filt if phase_flip is None else filt * phase_flip)


def estimate_diameter_px(images: np.ndarray, pixel_size_angstrom: float) -> float:
    """The particle's diameter in pixels from (B, L, L) centred particle images: where the radial
    profile of the low-passed images' variance across the stack falls to the noise floor (measured in
    the box's corners) plus ``EXTENT_FRACTION`` of its peak above it. Sign-free, so the CTF's phase flips
    do not matter; its delocalisation at 20 A widens the estimate by a few nm, which errs on the safe side."""
    size = images.shape[-1]
    low = _lowpass(images - images.mean(axis=(1, 2), keepdims=True), pixel_size_angstrom)
    var = low.var(axis=0)
    r = radius_grid(size)
    profile = np.array([var[(r >= i - 0.5) & (r < i + 0.5)].mean() for i in range(size // 2 + 1)])
    floor = np.median(var[r > 0.5 * size])
    above = profile - floor
    level = EXTENT_FRACTION * above.max()
    outside = np.nonzero(above < level)[0]
    radius = outside[0] if len(outside) else size // 2
    return float(np.clip(2.0 * radius, 0.25 * size, 0.9 * size))


def contrast_zscore(images: np.ndarray, ctf: np.ndarray, pixel_size_angstrom: float, diameter_px: float) -> float:
    """How many standard errors brighter the particle is than its background, over (B, L, L) images
    with their CTFs (B, L, L) on the centred grid: each image is phase-flipped (sign of its CTF) and
    low-passed, which turns it into a positive multiple of the projected density when the protein is
    white (the model's convention). Large and negative: the protein is dark."""
    flipped = _lowpass(images, pixel_size_angstrom, np.sign(ctf))
    r = radius_grid(images.shape[-1])
    inside, outside = r < 0.35 * diameter_px, r > 0.5 * diameter_px + 2
    if not outside.any():
        outside = r > 0.45 * images.shape[-1]
    diff = flipped[:, inside].mean(axis=1) - flipped[:, outside].mean(axis=1)
    return float(diff.mean() / (diff.std(ddof=1) / np.sqrt(len(diff)) + 1e-12))
