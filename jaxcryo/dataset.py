"""The particle data a run trains on: read (or simulate), checked, normalised, batched onto devices."""

from __future__ import annotations

import dataclasses
import functools
import logging
import pathlib

import jax
import jax.numpy as jnp
import numpy as np

from jaxcryo import ctf as ctf_lib
from jaxcryo import distributed, fourier, losses, noisemodel
from jaxcryo.io import InputError, check_stacks, read_particles
from jaxcryo.io.loader import ImageSource
from jaxcryo.io.table import CTF_FIELDS, ParticleTable

AMORTIZED = "amortized"


@dataclasses.dataclass
class Data:
    table: ParticleTable
    source: ImageSource  # images at the working box (auto-decoding, inversions, re-search, posterior)
    coarse: ImageSource  # images for the amortized stage (Fourier-cropped when amortized_image_size is set)
    final: ImageSource  # images at the final map's box: the stored one (or data.image_size); may be source
    ground_truth: str | None
    ground_truth_poses: str | None
    particle_diameter_angstrom: float | None = None  # given or estimated when an option needed it

    def source_for(self, stage: str) -> ImageSource:
        return self.coarse if stage == AMORTIZED else self.source


def prepare_data(config, workdir: pathlib.Path, log=logging.info) -> Data:
    """Read (or, with no particles given, simulate into WORKDIR/data) and check the particle stack."""
    particles, gt, gt_poses = config.data.particles, config.eval.ground_truth, config.eval.ground_truth_poses
    if not particles:
        if "simulate" not in config or not config.simulate.volume:
            raise InputError("config: give data.particles (a .star/.cs/.mrcs) or simulate.volume (a map or PDB "
                             "model to simulate particles from); for your own stack use "
                             "--config=experiments/particles.py --config.data.particles=PATH")
        from jaxcryo.simulate import simulate_dataset

        data_dir = workdir / "data"
        if distributed.is_writer() and not (data_dir / "particles.star").exists():
            simulate_dataset(config.simulate, data_dir, log=log)
        distributed.barrier("simulated")
        particles = str(data_dir / "particles.star")
        gt, gt_poses = gt or str(data_dir / "ground_truth.mrc"), gt_poses or str(data_dir / "ground_truth_poses.star")
    table = read_particles(particles, config.data.datadir or None, config.data.pixel_size_angstrom or None)
    if not np.any(table.defocus_u_angstrom) and np.all(table.amplitude_contrast == 1.0):
        log(f"{particles}: no CTF parameters, so the images are taken as free of any CTF (a bare stack holds none: "
            "for micrograph particles give their .star or .cs)")
    stacks = check_stacks(table)
    pixels = table.pixel_sizes
    if len(pixels) > 1:  # within PIXEL_SIZE_SPREAD, else common_pixel_size refuses them below
        log(f"{particles}: the optics groups' pixel sizes {pixels.min():g}-{pixels.max():g} A are taken as one, "
            f"{table.common_pixel_size:.4f} A (set data.pixel_size_angstrom to choose it)")
    threads = int(config.data.get("loader_threads", 0))
    final = ImageSource(table, stacks, config.data.image_size or None, config.data.invert_contrast, threads)
    size = working_box(config.data, final.image_size, final.pixel_size_angstrom)
    source = ImageSource(table, stacks, size, config.data.invert_contrast, threads) if size < final.image_size else final
    source.estimate_normalization(seed=config.seed)  # unit noise at the box the likelihood is computed at
    if final is not source:  # and at the final map's box, as an inversion of the stored stack scales it
        final.estimate_normalization(seed=config.seed)
    if source.image_size % 2:  # XLA:CPU's fast forms of the slice gradients are those of even boxes
        log(f"{particles}: the box is odd ({source.image_size} px), which ran twice as slowly as an even one on a "
            f"CPU; data.image_size={source.image_size - 1} Fourier-crops it to the even box below")
    model = noisemodel.decide(source, config.data, config.seed, log,
                              need_diameter=bool(config.model.get("volume_mask", False)))
    coarse_size = amortized_box(config.train, source.image_size, source.pixel_size_angstrom, model.whiten)
    coarse = cropped(source, coarse_size, table, stacks, config.data.invert_contrast)
    noisemodel.apply_to_others(model, source, (coarse, final), config.seed)
    why = " for whitened images" if model.whiten and whitened_resolution(config.train) else ""
    log(f"{len(table)} particles from {particles}: box {source.input_size} -> {source.image_size} px, "
        f"{source.pixel_size_angstrom:.3f} A/px (amortized stage at {coarse.image_size} px{why}"
        f"{final_box_note(source, final)})")
    return Data(table, source, coarse, final, gt or None, gt_poses or None, model.diameter_angstrom)


def final_box_note(source: ImageSource, final: ImageSource) -> str:
    """'; the final map at L px, p A/px' when the final map's box is not the working one, else ''."""
    return "" if final is source else f"; the final map at {final.image_size} px, {final.pixel_size_angstrom:.3f} A/px"


def cropped(source: ImageSource, size: int, table: ParticleTable, stacks, invert_contrast: bool) -> ImageSource:
    """``source`` itself at its own box, else the same images Fourier-cropped to ``size`` with the same
    scaling (a volume carries over between the boxes)."""
    if size >= source.image_size:
        return source
    out = ImageSource(table, stacks, size, invert_contrast, source.threads)
    out.mean, out.std = source.mean, source.std
    return out


def resolution_box(box: int, pixel_size_angstrom: float, resolution_angstrom: float) -> int:
    """The smallest even box (>= 32 px, the pose encoder's floor; <= ``box``) whose Nyquist reaches
    ``resolution_angstrom`` for images of ``box`` px at ``pixel_size_angstrom``; ``box`` when it is 0."""
    if resolution_angstrom <= 0:
        return box
    return min(max(2 * int(np.ceil(box * pixel_size_angstrom / resolution_angstrom)), 32), box)


def working_box(data_config, box: int, pixel_size_angstrom: float) -> int:
    """The box every stage works at (``data.working_resolution_angstrom``): detail finer than the poses can
    use costs time in every step and pass, and only the final map is made at the stored box."""
    return resolution_box(box, pixel_size_angstrom, float(data_config.get("working_resolution_angstrom", 0.0)))


def whitened_resolution(train_config) -> float:
    return float(train_config.get("amortized_resolution_whitened_angstrom", 0.0))


def amortized_box(train_config, box: int, pixel_size_angstrom: float, whitened: bool = False) -> int:
    """The amortized stage's box: ``train.amortized_image_size`` when set, else the ``resolution_box`` of
    ``train.amortized_resolution_angstrom`` (0: ``box``): the stage finds coarse poses, which need no
    finer detail. Whitened images (coloured noise) take the ``resolution_box`` of
    ``train.amortized_resolution_whitened_angstrom`` when it is set, before either: whitening takes the
    weight off the low frequencies, where such noise is strongest, so coarse poses need finer ones."""
    if whitened and whitened_resolution(train_config) > 0:
        return resolution_box(box, pixel_size_angstrom, whitened_resolution(train_config))
    size = int(train_config.amortized_image_size)
    if size > 0:
        return min(size, box)
    return resolution_box(box, pixel_size_angstrom, float(train_config.get("amortized_resolution_angstrom", 0.0)))


def radial_log_amplitude(source: ImageSource, n_images: int = 256, seed: int = 0) -> np.ndarray:
    """log of the RMS Hartley amplitude of the (normalised) images per integer radius: the volume's
    initial exponent, so the mantissa starts O(1) at every frequency."""
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(len(source.table), size=min(n_images, len(source.table)), replace=False))
    h = np.asarray(losses.images_to_hartley(jnp.asarray(source.normalized(rows))))  # the volume is not whitened
    radius = np.round(np.asarray(fourier.radial_index_grid(source.image_size))).astype(int)
    power = np.bincount(radius.ravel(), (h**2).mean(axis=0).ravel()) / np.maximum(np.bincount(radius.ravel()), 1)
    return 0.5 * np.log(np.maximum(power, 1e-12))


def host_batch(batch, table: ParticleTable, displacements_angstrom: np.ndarray | None = None) -> dict:
    """A ``Batch``'s rows in ``steps``' layout as host (numpy) arrays, without the CTF grids."""
    out = {"images": batch.images, "index": batch.index.astype(np.int32)}
    if displacements_angstrom is not None:
        out["pre_shift_angstrom"] = displacements_angstrom[batch.index].astype(np.float32)
    if batch.noise_radial is not None:
        out["noise_radial"] = batch.noise_radial
    for key in CTF_FIELDS:
        out[key] = getattr(table, key)[batch.index].astype(np.float32)
    return out


def device_batch(batch, table: ParticleTable, sharding, pixel_size_angstrom: float,
                 displacements_angstrom: np.ndarray | None = None) -> dict:
    """The device arrays of a batch (``steps``' layout) from this process's rows (a ``Batch``): with
    several processes each passes its own rows and the arrays span them all. Each image's CTF (B, L, L)
    at the images' ``pixel_size_angstrom``, made on the devices by a program of its own (``ctf_grids``).
    ``displacements_angstrom`` (N, 2): each particle's known offset from the box centre, which the step
    takes out of its image (``pre_shift_angstrom``, ``steps.batch_targets``)."""
    out = distributed.put_local(host_batch(batch, table, displacements_angstrom), sharding)
    return dict(out, ctf=ctf_grids({k: out[k] for k in CTF_FIELDS}, batch.images.shape[-1], float(pixel_size_angstrom)))


@functools.partial(jax.jit, static_argnames=("size", "pixel_size_angstrom"))
def ctf_grids(fields: dict, size: int, pixel_size_angstrom: float) -> jax.Array:
    """(B,) CTF_FIELDS -> (B, L, L) CTFs, in a program apart from the steps': within a step XLA:CPU (jax
    0.10) fuses the CTF's computation into each consumer that scores several poses per image, and so
    recomputes its sines for every pose (optimisation barriers are dropped there); the posterior pass
    (32 poses per image) ran 2.75 x slower so. Made once per batch, it is one array every program reads."""
    return ctf_lib.ctf_grid(size, pixel_size_angstrom, **fields).astype(jnp.float32)


def on_devices(source, batch, sharding, displacements_angstrom: np.ndarray | None = None) -> dict:
    """``device_batch`` of a Batch of ``source``'s images (this process's rows), at its pixel size."""
    return device_batch(batch, source.table, sharding, source.pixel_size_angstrom, displacements_angstrom)
