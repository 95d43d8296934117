"""How far a stack's particles sit off the box centre, from the images alone (no map, no poses).

A config that takes the particles as centred (``model.estimate_shifts=False``, the main config's
choice for centred synthetic stacks) fails outright on picked particles that sit a few pixels off:
on an outside set with offsets up to +-5 % of a 64 px box (std ~5.5 A) its amortized stage stayed near
random (71 deg, 12.9 A against 4.4 deg, 7.7 A with shifts estimated; docs/measurements.md, part 2).
So a run that does not estimate shifts checks first and says so in one line when they look off.

The estimate: each image, phase-flipped by its CTF's sign and low-passed to ``noise.LOWPASS_ANGSTROM``, is
cross-correlated with the stack's own rotationally averaged mean image (a centred blob); the peak is its
centre. Noise scatters those centres as much as offsets do, so each image is split into its two
checkerboard sublattices, whose noise is independent when the noise is white (the run has whitened
coloured noise by then): the covariance of the two halves' centres across the stack holds the offsets
and not the noise. It also holds how far each view's blob centre lies from the particle's centre,
which is why centred stacks read 1.4-4.4 A (five outside sets and the quickstart's, 35-60 A particles at
3 A/px, 2,000 images each) against 6.4-6.7 A for offsets of std 5.5 A (two outside sets): a warning,
not a decision.
"""

from __future__ import annotations

import logging

import jax.numpy as jnp
import numpy as np

from jaxcryo import ctf as ctf_lib
from jaxcryo import noise
from jaxcryo.io.table import CTF_FIELDS

WARN_ANGSTROM = 5.0  # offset spread (std per axis) above which a run that takes particles as centred warns
MIN_IMAGES = 200  # fewer: the covariance across the stack is too noisy to say anything
SAMPLE = 2000  # images in the estimate (~2 s at 64 px)


def _peaks(cc: np.ndarray, max_px: float) -> np.ndarray:
    """(B, L, L) correlations on the centred grid -> (B, 2) peak offsets (x, y) within +-max_px, refined
    by a parabola through the peak and its neighbours."""
    size = cc.shape[-1]
    t = np.arange(size) - size // 2
    allowed = np.abs(t) <= max_px
    cc = np.where(allowed[:, None] & allowed[None, :], cc, -np.inf)
    flat = np.argmax(cc.reshape(len(cc), -1), axis=1)
    iy, ix = flat // size, flat % size
    rows = np.arange(len(cc))

    def at(y, x):
        return cc[rows, np.clip(y, 0, size - 1), np.clip(x, 0, size - 1)]

    def vertex(minus, centre, plus):
        ok = np.isfinite(minus) & np.isfinite(plus)
        curvature = np.where(ok, minus - 2 * centre + plus, -1.0)
        return np.where(ok & (curvature < 0), np.clip(0.5 * (minus - plus) / curvature, -0.5, 0.5), 0.0)

    centre = at(iy, ix)
    return np.stack([t[ix] + vertex(at(iy, ix - 1), centre, at(iy, ix + 1)),
                     t[iy] + vertex(at(iy - 1, ix), centre, at(iy + 1, ix))], axis=1)


def _centres(images: np.ndarray, template: np.ndarray, max_px: float) -> np.ndarray:
    """(B, 2) where (B, L, L) images correlate best with the (B, L, L) centred Fourier templates."""
    f = np.fft.fft2(np.fft.ifftshift(images, axes=(-2, -1)))
    cc = np.fft.fftshift(np.fft.ifft2(f * np.conj(np.fft.ifftshift(template, axes=(-2, -1)))).real, axes=(-2, -1))
    return _peaks(cc, max_px)


def offset_spread_px(images: np.ndarray, ctf: np.ndarray, pixel_size_angstrom: float) -> tuple[float, float]:
    """(offset std per axis, noise std of one half's centre), both in pixels, from (B, L, L) images with
    white noise and their CTFs (B, L, L) on the centred grid (module docstring). The first is signed:
    negative when the halves' centres anti-correlate (no offsets; noise)."""
    size = images.shape[-1]
    k = noise.radius_grid(size) / (size * pixel_size_angstrom)
    filt = np.exp(-0.5 * (k * noise.LOWPASS_ANGSTROM) ** 2)
    spectra = np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(images, axes=(-2, -1))), axes=(-2, -1))
    mean = (spectra * ctf).mean(axis=0).real / ((ctf**2).mean(axis=0) + 1e-3)
    mean = noise.expand_radial(noise.radial_average(mean, size)[None], size)[0]
    template = ctf * mean * filt  # each image's own CTF on the stack's blob, low-passed
    yy, xx = np.indices((size, size))
    checker = ((yy + xx) % 2 == 0).astype(images.dtype)
    a = _centres(2 * images * checker, template, size / 4)
    b = _centres(2 * images * (1 - checker), template, size / 4)
    cov = float(np.mean([np.cov(a[:, i], b[:, i])[0, 1] for i in range(2)]))
    return float(np.sign(cov) * np.sqrt(abs(cov))), float(np.sqrt(np.mean(np.var(a - b, axis=0)) / 4))


def check(source, seed: int, log=logging.warning) -> float:
    """Estimate the offset spread of ``source``'s particles (an ``ImageSource`` as the run will read
    them) on a sample, and ``log`` one line when it exceeds ``WARN_ANGSTROM``; returns it in A."""
    rows = np.sort(np.random.default_rng([seed, 2]).choice(len(source.table), min(SAMPLE, len(source.table)), replace=False))
    fields = {k: jnp.asarray(getattr(source.table, k)[rows], jnp.float32) for k in CTF_FIELDS}
    ctf = np.asarray(ctf_lib.ctf_grid(source.image_size, source.pixel_size_angstrom, **fields))
    spread_px, _ = offset_spread_px(source.normalized(rows), ctf, source.pixel_size_angstrom)
    spread = spread_px * source.pixel_size_angstrom
    if spread > WARN_ANGSTROM:
        log(f"{source.table.source}: the particles look off-centre (their centres spread ~{spread:.1f} A per axis over "
            f"{len(rows)} images; centred stacks read 1.4-4.4 A) and this config takes them as centred: set "
            "model.estimate_shifts=True, or use experiments/particles.py")
    return spread
