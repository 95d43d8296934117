"""Streaming particle batches: memory-mapped reads on a background thread, seeded and resumable.

* Order: epoch ``e`` visits particles in ``default_rng([seed, e]).permutation(N)``, so any position
  (epoch, step) can be reproduced after a restart without saving the permutation.
* Memory: at most ``prefetch`` + ``threads`` + 1 batches live on the host, whatever N is.
* Threads: ``ImageSource.threads`` background threads read batches (``read_ahead``), in order: the
  transforms of the crop and the whitening release the GIL, so a GPU host's cores keep its device fed
  (one thread reads ~16,000 images/s of 64 px, a GPU's steps take ~100,000). Passes over the stack
  read ahead the same way (``chunks_read_ahead``).
* Processes: every process walks the same order and reads only its own rows of each batch
  (``jaxcryo.distributed.local_rows``).
* Images: read as stored, optionally contrast-inverted, Fourier-cropped to ``image_size`` (pixel size
  scales by L_in / L_out) and normalised, either as ``(x - mean) / std`` with statistics measured once
  on a seeded sample of images (``estimate_normalization``) so every batch is scaled alike, or per
  particle over its background as RELION does (``use_noise_model``); then optionally whitened by its
  optics group's radial profile (``jaxcryo.noise``), which each Batch carries (``noise_radial``) so
  the CTF can be whitened alike on the device.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import os
from typing import Callable, Iterable, Iterator

import numpy as np
import scipy.fft

from jaxcryo import distributed, noise
from jaxcryo.io.mrc import Stack
from jaxcryo.io.table import InputError, ParticleTable


def fourier_crop_numpy(images: np.ndarray, new_size: int) -> np.ndarray:
    """(B, L, L) -> (B, l, l), l even: the host thread's twin of ``jaxcryo.fourier.fourier_crop`` (equal to
    float32 rounding). It runs on every image read of a cropped box, so it takes the half-plane transform
    in single precision (5 x faster at 128 -> 96 px than the full complex transform in double). The twin
    keeps frequencies -l/2 .. l/2 - 1 and takes the real part, which averages the new Nyquist row's
    -l/2 and +l/2 halves; the half plane does that explicitly (its corner is the +l/2, +l/2 term)."""
    size = images.shape[-1]
    if new_size == size:
        return images
    if new_size % 2:
        raise ValueError(f"an even box is needed to crop to, not {new_size}")
    h = new_size // 2
    f = scipy.fft.rfft2(np.fft.ifftshift(images.astype(np.float32, copy=False), axes=(-2, -1)))
    nyquist = 0.5 * (f[..., size - h : size - h + 1, : h + 1] + f[..., h : h + 1, : h + 1])
    nyquist[..., h] = f[..., h : h + 1, h]
    f = np.concatenate([f[..., :h, : h + 1], nyquist, f[..., size - h + 1 :, : h + 1]], axis=-2)
    out = np.fft.fftshift(scipy.fft.irfft2(f, s=(new_size, new_size)), axes=(-2, -1))
    return (out * (new_size / size) ** 2).astype(np.float32)


@dataclasses.dataclass(frozen=True)
class Batch:
    index: np.ndarray  # (B,) int64 rows of the particle table
    images: np.ndarray  # (B, L, L) float32, normalised (and whitened when the source whitens)
    noise_radial: np.ndarray | None = None  # (B, R) float32 whitening profiles (jaxcryo.noise), or None


class ImageSource:
    """Random access to the (processed) images of a table: ``source.read(rows)`` -> (B, L, L)."""

    def __init__(self, table: ParticleTable, stacks: dict[str, Stack], image_size: int | None = None,
                 invert_contrast: bool = False, threads: int = 0):
        self.table = table
        self.threads = threads or default_threads()  # background readers (``read_ahead``)
        self.stacks = stacks
        self.input_size = table.box_size
        self.image_size = image_size or self.input_size
        if self.image_size > self.input_size:
            raise InputError(f"{table.source}: data.image_size {self.image_size} exceeds the box {self.input_size}")
        self.sign = -1.0 if invert_contrast else 1.0
        self.pixel_size_angstrom = table.common_pixel_size * self.input_size / self.image_size
        self.mean, self.std = 0.0, 1.0
        self.background: np.ndarray | None = None  # (L, L) weights: normalise each particle over them
        self.profiles: np.ndarray | None = None  # (G, R) whitening profiles, one per optics group
        self.group_row: np.ndarray | None = None  # (N,) row of ``profiles`` for each particle

    def use_noise_model(self, background: np.ndarray | None, profiles: np.ndarray | None = None,
                        group_row: np.ndarray | None = None) -> None:
        """Per-particle normalisation over ``background`` (L, L) and/or whitening by ``profiles`` (G, R)."""
        self.background, self.profiles, self.group_row = background, profiles, group_row

    def read_raw(self, rows: np.ndarray) -> np.ndarray:
        out = np.empty((len(rows), self.input_size, self.input_size), np.float32)
        paths, idx = self.table.image_path[rows], self.table.image_index[rows]
        for stack_path in np.unique(paths):
            sel = np.nonzero(paths == stack_path)[0]
            order = np.argsort(idx[sel])  # ascending offsets: sequential reads on disk
            out[sel[order]] = self.stacks[stack_path][idx[sel][order]]
        bad = ~np.isfinite(out).all(axis=(1, 2))
        if bad.any():
            names = ", ".join(self.table.image_name[rows[bad]][:5].tolist())
            raise InputError(f"{self.table.source}: NaN/Inf pixels in {int(bad.sum())} particle(s): {names}")
        return fourier_crop_numpy(self.sign * out, self.image_size)

    def estimate_normalization(self, seed: int = 0, n_sample: int = 1000) -> tuple[float, float]:
        """Mean and std of pixel values over a seeded sample of images; used by ``read``."""
        rng = np.random.default_rng(seed)
        rows = np.sort(rng.choice(len(self.table), size=min(n_sample, len(self.table)), replace=False))
        sample = self.read_raw(rows)
        self.mean, self.std = float(sample.mean()), float(sample.std())
        if not self.std > 0:
            raise InputError(f"{self.table.source}: images have zero variance")
        return self.mean, self.std

    def normalized(self, rows: np.ndarray) -> np.ndarray:
        """Images scaled to unit noise but not whitened, (B, L, L)."""
        raw = self.read_raw(rows)
        if self.background is not None:
            return noise.normalize_per_particle(raw, self.background)
        return (raw - self.mean) / self.std

    def noise_radial(self, rows: np.ndarray) -> np.ndarray | None:
        return None if self.profiles is None else self.profiles[self.group_row[rows]]

    def read(self, rows: np.ndarray) -> np.ndarray:
        images = self.normalized(rows)
        if self.profiles is not None:
            images = noise.apply_radial_filter(images, self.noise_radial(rows))
        return images

    def batch(self, rows: np.ndarray) -> "Batch":
        return Batch(rows, self.read(rows), self.noise_radial(rows))


_END = object()


def default_threads() -> int:
    """Reading threads when none are asked for: a quarter of the host's cores, 1 to 4 (1 on a 2-core
    machine, where XLA's own threads take the cores; 4 on a 16-core GPU host)."""
    return max(1, min(4, (os.cpu_count() or 1) // 4))


def read_ahead(read: Callable, items: Iterable, threads: int = 1, ahead: int = 2) -> Iterator[tuple]:
    """(item, read(item)) for each of ``items`` in order, each read on one of ``threads`` background
    threads, at most ``ahead`` + ``threads`` items ahead of the consumer. A read's exception is raised
    in the consumer at its item; a consumer that stops early leaves no read running."""
    items = iter(items)
    with concurrent.futures.ThreadPoolExecutor(max_workers=threads, thread_name_prefix="jaxcryo-read") as pool:
        pending: collections.deque = collections.deque()

        def submit() -> None:
            item = next(items, _END)
            if item is not _END:
                pending.append((item, pool.submit(read, item)))

        try:
            for _ in range(ahead + threads):
                submit()
            while pending:
                item, future = pending.popleft()
                result = future.result()
                submit()
                yield item, result
        finally:
            for _, future in pending:
                future.cancel()


def chunks_read_ahead(source: "ImageSource", rows: np.ndarray, batch_size: int,
                      own_share: bool = True) -> Iterator[tuple]:
    """``padded_chunks(rows, batch_size)`` as (start, chunk, padded chunk, Batch), each chunk's images read
    ahead on ``source.threads`` threads: this process's share of the padded chunk
    (``distributed.local_rows``), or all of it with ``own_share=False`` (rows that are this process's
    already). Host work only: the consumer puts a Batch on the devices, so every process launches its
    device programs in one order, whatever the threads do."""
    def read(chunk):
        padded = chunk[2]
        return source.batch(padded[distributed.local_rows(len(padded))] if own_share else padded)

    for (start, chunk, padded), batch in read_ahead(read, padded_chunks(rows, batch_size), source.threads):
        yield start, chunk, padded, batch


def epoch_permutation(n: int, seed: int, epoch: int, shuffle: bool = True) -> np.ndarray:
    return np.random.default_rng([seed, epoch]).permutation(n) if shuffle else np.arange(n)


def block_bounds(n: int, blocks: int) -> np.ndarray:
    """(blocks + 1,) row bounds: block d holds rows [bounds[d], bounds[d + 1]), ceil(n / blocks) each but
    the last. Device d of the mesh owns block d of the per-image pose tables (``jaxcryo.steps``)."""
    size = -(-n // blocks)
    return np.minimum(np.arange(blocks + 1) * size, n)


def steps_per_epoch(n: int, batch_size: int, blocks: int = 1) -> int:
    """Full batches only: every step has the same static shape (no recompilation). With ``blocks`` > 1
    each step takes batch_size / blocks rows from every block, so the smallest block sets the count."""
    if n < batch_size:
        raise InputError(f"{n} particles is fewer than one batch of {batch_size}")
    if blocks == 1:
        return n // batch_size
    return int(np.diff(block_bounds(n, blocks)).min()) // (batch_size // blocks)


def epoch_order(n: int, batch_size: int, seed: int, epoch: int, shuffle: bool = True, blocks: int = 1) -> np.ndarray:
    """(steps, batch_size) rows of each step of an epoch. One block: a permutation of all rows
    (``epoch_permutation``). Several: each step's i-th slice of batch_size / blocks rows comes from
    block i, in that block's own permutation, so every device reads the rows whose poses it holds."""
    n_steps = steps_per_epoch(n, batch_size, blocks)
    if blocks == 1:
        return epoch_permutation(n, seed, epoch, shuffle)[: n_steps * batch_size].reshape(n_steps, batch_size)
    bounds, share = block_bounds(n, blocks), batch_size // blocks
    parts = [bounds[d] + (np.random.default_rng([seed, epoch, d]).permutation(bounds[d + 1] - bounds[d]) if shuffle
                          else np.arange(bounds[d + 1] - bounds[d]))[: n_steps * share].reshape(n_steps, share)
             for d in range(blocks)]
    return np.concatenate(parts, axis=1)


def iterate_batches(source: ImageSource, batch_size: int, seed: int, epoch: int, start_step: int = 0,
                    shuffle: bool = True, prefetch: int = 2, blocks: int = 1, max_steps: int | None = None):
    """Yield (step, Batch) for one epoch from ``start_step`` on (``epoch_order``, at most ``max_steps``
    steps), read ahead on ``source.threads`` background threads (``read_ahead``). Each Batch holds this
    process's rows of the global batch of ``batch_size``.
    """
    order = epoch_order(len(source.table), batch_size, seed, epoch, shuffle, blocks)[:max_steps]
    mine = distributed.local_rows(batch_size)
    yield from read_ahead(lambda step: source.batch(order[step][mine]), range(start_step, len(order)),
                          source.threads, prefetch)


def padded_chunks(rows: np.ndarray, batch_size: int):
    """Consecutive chunks of ``rows``, each padded to ``batch_size`` by repeating its last row (static
    batch shapes, so one compiled program serves every chunk): yields (start, chunk, padded chunk)."""
    for start in range(0, len(rows), batch_size):
        chunk = rows[start:start + batch_size]
        yield start, chunk, np.concatenate([chunk, np.repeat(chunk[-1:], batch_size - len(chunk))])


def half_set_labels(table: ParticleTable, seed: int) -> np.ndarray:
    """(N,) labels in {1, 2}: the table's rlnRandomSubset when it holds both halves, else a seeded even
    split. A table whose subsets are all one value (one half set of a gold-standard run, whose star
    says rlnRandomSubset 1 on every row) must still be split: inverting it as one half and an empty
    other gives a half-set FSC of 0 and a Wiener filter that erases the map."""
    if table.random_subset is not None and set(np.unique(table.random_subset).tolist()) == {1, 2}:
        return np.asarray(table.random_subset, np.int64)
    labels = np.ones(len(table), np.int64)
    labels[np.random.default_rng([seed, 12]).permutation(len(table))[len(table) // 2 :]] = 2
    return labels
