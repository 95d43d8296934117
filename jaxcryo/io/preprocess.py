"""One-off preprocessing: Fourier-crop a particle stack to a smaller box, writing a new stack + star."""

from __future__ import annotations

import dataclasses
import pathlib

import numpy as np

from jaxcryo.io import check_stacks
from jaxcryo.io.loader import ImageSource
from jaxcryo.io.mrc import StackWriter
from jaxcryo.io.star import write_particles_star
from jaxcryo.io.table import ParticleTable


def downsample_dataset(table: ParticleTable, image_size: int, outdir, chunk_size: int = 1000,
                       invert_contrast: bool = False) -> pathlib.Path:
    """Write ``outdir/particles.{mrcs,star}`` at ``image_size`` px; returns the star path.

    The pixel size becomes pixel * L_in / L_out in the star; all other columns (CTF, poses in Angstrom,
    optics, the input's own columns) carry over. Images are not normalised here.
    """
    outdir = pathlib.Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    source = ImageSource(table, check_stacks(table), image_size, invert_contrast)
    writer = StackWriter(outdir / "particles.mrcs", len(table), source.image_size, source.pixel_size_angstrom)
    for start in range(0, len(table), chunk_size):
        writer.write(source.read_raw(np.arange(start, min(start + chunk_size, len(table)))))
    writer.close()
    n = len(table)
    names = np.array([f"{i + 1:06d}@particles.mrcs" for i in range(n)])
    small = dataclasses.replace(
        table, image_name=names, image_path=np.full(n, str((outdir / "particles.mrcs").resolve())),
        image_index=np.arange(n, dtype=np.int64), image_size=np.full(n, source.image_size, np.int64),
        pixel_size_angstrom=np.full(n, source.pixel_size_angstrom),
    )
    write_particles_star(outdir / "particles.star", small)
    return outdir / "particles.star"
