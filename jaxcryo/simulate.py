"""Synthetic particle stacks as RELION writes them: volume sources, poses, CTF, shifts and noise.

Image model (the same as the reconstruction's): image = IFT[ CTF * S(A) * shift(t) ] + noise, where
S(A) is the central slice of ``jaxcryo.slicing`` at rotation A, the CTF is ``jaxcryo.ctf``'s (RELION
sign: protein white), and the particle's centre sits at (box centre + t) pixels; RELION's origin is the
translation that re-centres it, ``rlnOriginXAngst/YAngst = -t * pixel size``. The simulator slices a
2x oversampled volume so its projections are accurate to ~2e-2 (see ``jaxcryo.slicing``).

SNR (the paper's definition): variance of the noise-free images / variance of the noise, with the
signal variance measured over the first chunk of clean images (the noise level is then fixed for the
whole stack, as for a real detector).

Realistic effects (each off by default, each a ``simulate.*`` option; none is written to the star, so
a reconstruction is not told them): a B-factor envelope exp(-B |k|^2 / 4) on the signal; a per-particle
contrast scale uniform in 1 +- ``contrast_spread`` and background offset N(0, (offset_std * noise std)^2);
coloured noise whose power falls from ``noise_color`` times its Nyquist value at |k| = 0
(``noise_power_shape``); astigmatism and shifts as before.
"""

from __future__ import annotations

import dataclasses
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxcryo import ctf, fourier, geometry, phantoms, slicing
from jaxcryo.io.table import InputError


def resample_volume(volume: np.ndarray, voxel_size_angstrom: float, target_box: int,
                    target_voxel_angstrom: float) -> np.ndarray:
    """Change a map's voxel size by Fourier crop/pad, then its box by real-space crop/pad."""
    size = volume.shape[-1]
    fourier.ensure_sizes(volume.shape, "volume")
    new_size = int(round(size * voxel_size_angstrom / target_voxel_angstrom))
    v = jnp.asarray(volume, jnp.float32)
    if new_size < size:
        v = fourier.fourier_crop(v, new_size, 3)
    elif new_size > size:
        v = fourier.fourier_pad(v, new_size, 3)
    v = fourier.crop_center(v, target_box, 3) if new_size > target_box else fourier.pad_center(v, target_box, 3)
    return np.asarray(v)


@dataclasses.dataclass(frozen=True)
class SimulatedParams:
    """Per-image ground truth of one chunk."""

    rotations: np.ndarray  # (B, 3, 3)
    shifts_px: np.ndarray  # (B, 2) particle centre displacement t (x, y) in pixels
    defocus_u_angstrom: np.ndarray
    defocus_v_angstrom: np.ndarray
    defocus_angle_deg: np.ndarray


def draw_params(rng: np.random.Generator, key: jax.Array, n: int, max_shift_px: float, defocus_angstrom: float,
                defocus_log_std: float, astigmatism_angstrom: float) -> SimulatedParams:
    rot = np.asarray(geometry.random_rotations(key, (n,), jnp.float32))
    shifts = rng.uniform(-max_shift_px, max_shift_px, size=(n, 2)) if max_shift_px > 0 else np.zeros((n, 2))
    df = defocus_angstrom * np.exp(defocus_log_std * rng.normal(size=n))
    astig = np.abs(rng.normal(0.0, astigmatism_angstrom, size=n)) if astigmatism_angstrom > 0 else np.zeros(n)
    angle = rng.uniform(-180, 180, size=n) if astigmatism_angstrom > 0 else np.zeros(n)
    return SimulatedParams(rot, shifts, df + astig / 2, df - astig / 2, angle)


@jax.jit
def clean_images(volume_hartley, rotations, shifts_px, ctf_values):
    """(B, 3, 3), (B, 2), (B, L, L) -> (B, L, L) noise-free images."""
    size = ctf_values.shape[-1]
    slices = slicing.extract_slices(volume_hartley, rotations, size)
    f = fourier.hartley_to_fourier(slices) * ctf_values * jnp.exp(-1j * fourier.shift_angles(size, shifts_px))
    return fourier.ifft_centered(f).real


def simulate_chunk(volume_hartley, params: SimulatedParams, image_size: int, voxel_size_angstrom: float,
                   voltage_kv: float, cs_mm: float, amplitude_contrast: float, b_factor_angstrom2: float = 0.0) -> np.ndarray:
    k2 = np.sum(np.asarray(fourier.frequency_grid_2d(image_size, voxel_size_angstrom)) ** 2, axis=-1)
    envelope = jnp.asarray(np.exp(-b_factor_angstrom2 * k2 / 4.0), jnp.float32)
    ctf_values = envelope * ctf.ctf_grid(image_size, voxel_size_angstrom, defocus_u_angstrom=params.defocus_u_angstrom,
                              defocus_v_angstrom=params.defocus_v_angstrom, defocus_angle_deg=params.defocus_angle_deg,
                              voltage_kv=voltage_kv, spherical_aberration_mm=cs_mm,
                              amplitude_contrast=amplitude_contrast).astype(jnp.float32)
    out = clean_images(volume_hartley, jnp.asarray(params.rotations), jnp.asarray(params.shifts_px, jnp.float32), ctf_values)
    return np.asarray(out)


def noise_power_shape(size: int, color: float) -> np.ndarray:
    """(L, L) relative noise power on the centred grid: color ** (1 - |k| / Nyquist) inside the Nyquist
    circle, 1 beyond, scaled to mean 1 (so the pixel variance is unchanged); color 1 = white."""
    k = np.asarray(fourier.radial_index_grid(size)) / (size // 2)
    shape = np.where(k < 1.0, float(color) ** (1.0 - np.minimum(k, 1.0)), 1.0)
    return shape / shape.mean()


def coloured_noise(rng: np.random.Generator, n: int, size: int, std: float, power: np.ndarray | None) -> np.ndarray:
    """(n, L, L) Gaussian noise of pixel standard deviation ``std`` with relative power ``power`` (L, L)
    on the centred frequency grid (None: white)."""
    white = rng.normal(0.0, std, size=(n, size, size))
    if power is None:
        return white.astype(np.float32)
    f = np.fft.fft2(white) * np.sqrt(np.fft.ifftshift(power))
    return np.fft.ifft2(f).real.astype(np.float32)


def load_volume(cfg, box_size: int, voxel_size_angstrom: float) -> np.ndarray:
    """The ground-truth volume named by ``cfg.volume`` ('phantom', 'dimer_phantom',
    'family:NAME:SEED' (``jaxcryo.phantoms``), an .mrc map, or a PDB/mmCIF model)."""
    source = str(cfg.volume)
    res = cfg.get("resolution_angstrom") or None
    if source in ("phantom", "dimer_phantom"):
        make = phantoms.protein_phantom if source == "phantom" else phantoms.dimer_phantom
        return make(box_size, voxel_size_angstrom, res, cfg.seed)
    try:
        member = phantoms.parse_family_source(source)
    except KeyError as exc:
        raise InputError(f"simulate.volume: {exc.args[0]}") from None
    if member is not None:
        return phantoms.family_member(*member, box_size, voxel_size_angstrom, res)
    path = pathlib.Path(source)
    suffixes = "".join(path.suffixes).lower()
    if suffixes.endswith((".mrc", ".map", ".mrc.gz")):
        from jaxcryo.io import read_volume

        vol, voxel = read_volume(path)
        return resample_volume(vol, voxel if voxel > 0 else voxel_size_angstrom, box_size, voxel_size_angstrom)
    if any(suffixes.endswith(s) for s in (".pdb", ".cif", ".ent", ".pdb.gz", ".cif.gz", ".ent.gz", ".mmcif")):
        return phantoms.atomic_model_volume(path, box_size, voxel_size_angstrom, cfg.resolution_angstrom or 2.5 * voxel_size_angstrom)
    raise InputError(f"{path}: unknown volume source (expected 'phantom', 'dimer_phantom', "
                     "'family:NAME:SEED', .mrc/.map or .pdb/.cif[.gz])")


def simulate_dataset(cfg, outdir: str | pathlib.Path, log=print) -> dict:
    """Write particles.star + particles.mrcs, ground_truth.mrc and ground_truth_poses.star to outdir.

    ``cfg`` fields: volume, n_images, image_size, pixel_size_angstrom, snr, max_shift_fraction,
    defocus_angstrom, defocus_log_std, astigmatism_angstrom, voltage_kv, spherical_aberration_mm,
    amplitude_contrast, chunk_size, seed, and the optional realistic effects b_factor_angstrom2,
    contrast_spread, offset_std, noise_color (see the module docstring). Every file is written under a temporary name and renamed
    when complete, so an interrupted run leaves no half dataset.
    """
    from jaxcryo.io import mrc
    from jaxcryo.io.star import write_particles_star
    from jaxcryo.io.table import ParticleTable

    if cfg.n_images < 1 or cfg.image_size < 8 or cfg.snr <= 0 or cfg.pixel_size_angstrom <= 0:
        raise InputError(f"simulate config: need n_images >= 1, image_size >= 8, snr > 0, pixel size > 0; got "
                         f"{cfg.n_images}, {cfg.image_size}, {cfg.snr}, {cfg.pixel_size_angstrom}")
    outdir = pathlib.Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    size, pixel, n = int(cfg.image_size), float(cfg.pixel_size_angstrom), int(cfg.n_images)
    start = time.perf_counter()
    volume = load_volume(cfg, size, pixel)
    vol_h = slicing.volume_to_hartley(jnp.asarray(volume, jnp.float32), oversample=2)
    rng = np.random.default_rng(cfg.seed)
    key = jax.random.key(cfg.seed)
    writer = mrc.StackWriter(outdir / "particles.mrcs", n, size, pixel)
    noise_std = None
    all_params, scales = [], []
    b_factor, spread = float(cfg.get("b_factor_angstrom2", 0.0)), float(cfg.get("contrast_spread", 0.0))
    offset_std, color = float(cfg.get("offset_std", 0.0)), float(cfg.get("noise_color", 1.0))
    if b_factor < 0 or not 0 <= spread < 1 or offset_std < 0 or color <= 0:
        raise InputError(f"simulate config: need b_factor_angstrom2 >= 0, 0 <= contrast_spread < 1, offset_std >= 0, "
                         f"noise_color > 0; got {b_factor}, {spread}, {offset_std}, {color}")
    power = None if color == 1.0 else noise_power_shape(size, color)
    for chunk_start in range(0, n, cfg.chunk_size):
        m = min(cfg.chunk_size, n - chunk_start)
        key, sub = jax.random.split(key)
        params = draw_params(rng, sub, m, cfg.max_shift_fraction * size, cfg.defocus_angstrom, cfg.defocus_log_std,
                             cfg.astigmatism_angstrom)
        clean = simulate_chunk(vol_h, params, size, pixel, cfg.voltage_kv, cfg.spherical_aberration_mm,
                               cfg.amplitude_contrast, b_factor)
        if noise_std is None:
            noise_std = float(np.sqrt(clean.var(axis=(1, 2)).mean() / cfg.snr))
        scale = 1.0 + rng.uniform(-spread, spread, size=(m, 1, 1)) if spread else 1.0
        offset = rng.normal(0.0, offset_std * noise_std, size=(m, 1, 1)) if offset_std else 0.0
        noise = coloured_noise(rng, m, size, noise_std, power)
        writer.write((clean * scale + offset + noise).astype(np.float32))
        all_params.append(params)
        scales.append(np.broadcast_to(scale, (m, 1, 1))[:, 0, 0])
    writer.close()
    rot = np.concatenate([p.rotations for p in all_params])
    shifts = np.concatenate([p.shifts_px for p in all_params])
    names = np.array([f"{i + 1:06d}@particles.mrcs" for i in range(n)])
    table = ParticleTable(
        source=str(outdir / "particles.star"), image_path=np.full(n, str(outdir / "particles.mrcs")),
        image_index=np.arange(n), image_name=names, pixel_size_angstrom=np.full(n, pixel),
        image_size=np.full(n, size), optics_group=np.ones(n, np.int64),
        defocus_u_angstrom=np.concatenate([p.defocus_u_angstrom for p in all_params]),
        defocus_v_angstrom=np.concatenate([p.defocus_v_angstrom for p in all_params]),
        defocus_angle_deg=np.concatenate([p.defocus_angle_deg for p in all_params]),
        voltage_kv=np.full(n, cfg.voltage_kv), spherical_aberration_mm=np.full(n, cfg.spherical_aberration_mm),
        amplitude_contrast=np.full(n, cfg.amplitude_contrast), phase_shift_deg=np.zeros(n),
        b_factor_angstrom2=np.zeros(n), phase_flipped=np.zeros(n),
    )
    euler = np.asarray(geometry.matrix_to_euler(jnp.asarray(rot, jnp.float32)), np.float64)
    write_particles_star(outdir / "ground_truth_poses.star", table, euler_deg=euler, origin_angstrom=-shifts * pixel)
    mrc.write_mrc(outdir / "ground_truth.mrc", volume, pixel)
    contrast = np.concatenate(scales).astype(np.float32)
    if spread:  # the per-particle contrast scales, for checking a fitted contrast (no star column holds them)
        np.save(outdir / "ground_truth_contrast.npy", contrast)
    # last: a run finds the simulation done by this file, so one killed before it simulates again
    write_particles_star(outdir / "particles.star", table)
    seconds = time.perf_counter() - start
    log(f"simulated {n} images of {size} px in {seconds:.1f} s ({n / seconds:.0f} images/s); noise std {noise_std:.4g}")
    return {"seconds": seconds, "noise_std": noise_std, "n_images": n, "rotations": rot, "shifts_px": shifts,
            "volume": volume, "contrast": contrast}
