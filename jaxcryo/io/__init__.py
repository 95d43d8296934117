"""Particle data in and out: one front door, ``read_particles``, for every supported format.

* RELION ``.star`` (3.0 single block; 3.1/4/5 optics + particles) -> ``jaxcryo.io.star``
* cryoSPARC ``.cs`` -> ``jaxcryo.io.cryosparc``
* a bare ``.mrcs``/``.mrc`` stack, or a ``.txt`` listing stacks (one per line) -> no CTF: amplitude
  contrast 1 and zero defocus make the CTF identically 1.
Metadata never needs the stacks; ``check_stacks`` validates every referenced stack (exists, readable,
not truncated, index in range, box size as the metadata says) and reports all problems in one line.
"""

from __future__ import annotations

import dataclasses
import functools
import pathlib
import sys

import numpy as np

from jaxcryo.io.mrc import Stack, read_volume, write_mrc
from jaxcryo.io.table import CTF_FIELDS, InputError, ParticleTable, check_values, listed

__all__ = ["read_particles", "read_poses", "check_stacks", "ParticleTable", "InputError", "Stack", "read_volume", "write_mrc", "CTF_FIELDS"]


def _stacks_table(source: pathlib.Path, stack_paths: list[pathlib.Path]) -> ParticleTable:
    paths, indices, names, pixel, sizes = [], [], [], [], []
    for stack_path in stack_paths:
        stack = Stack(stack_path)
        n = len(stack)
        paths += [str(stack_path.resolve())] * n
        indices.append(np.arange(n, dtype=np.int64))
        names += [f"{i + 1:06d}@{stack_path.name}" for i in range(n)]
        pixel += [stack.voxel_size_angstrom] * n  # 0 (unset) is refused unless data.pixel_size_angstrom is given
        sizes += [stack.image_size] * n
    n = len(paths)
    zeros = np.zeros(n)
    return ParticleTable(
        source=str(source), image_path=np.array(paths), image_index=np.concatenate(indices),
        image_name=np.array(names), pixel_size_angstrom=np.array(pixel), image_size=np.array(sizes, np.int64),
        optics_group=np.ones(n, np.int64), defocus_u_angstrom=zeros, defocus_v_angstrom=zeros,
        defocus_angle_deg=zeros, voltage_kv=np.full(n, 300.0), spherical_aberration_mm=zeros,
        amplitude_contrast=np.ones(n), phase_shift_deg=zeros, b_factor_angstrom2=zeros,
        phase_flipped=zeros,
    )


def read_particles(path, datadir: str | None = None, pixel_size_angstrom: float | None = None) -> ParticleTable:
    """Read particle metadata from a .star, .cs, .mrcs/.mrc or .txt file (dispatch on the suffix)."""
    from jaxcryo.io import cryosparc, star

    path = pathlib.Path(path)
    if path.is_dir():  # a job folder (RELION's Extract/job007/, cryoSPARC's J12/) given for the file in it
        held = sorted(p.name for p in path.iterdir() if p.suffix.lower() in (".star", ".cs", ".mrcs", ".txt"))
        raise InputError(f"{path}: a folder, not a particle file; "
                         + (f"give one of the files it holds: {listed(held)}" if held else "it holds no .star, .cs, .mrcs or .txt"))
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    suffix = path.suffix.lower()
    if suffix == ".star":
        table, kind = star.read_star(path, datadir, pixel_size_angstrom), "star"
    elif suffix == ".cs":
        table, kind = cryosparc.read_cs(path, datadir), "cs"
    elif suffix in (".mrcs", ".mrc"):
        table, kind = _stacks_table(path, [path]), "stack"
    elif suffix == ".txt":
        lines = [line.strip() for line in path.read_text().splitlines() if line.strip()]
        if not lines:
            raise InputError(f"{path}: empty list of stacks")
        base = pathlib.Path(datadir) if datadir else path.parent
        table, kind = _stacks_table(path, [p if p.is_absolute() else base / p for p in map(pathlib.Path, lines)]), "stack"
    else:
        raise InputError(f"{path}: unknown particle file type {suffix!r} (expected .star, .cs, .mrcs, .mrc or .txt)")
    if pixel_size_angstrom is not None:
        table = dataclasses.replace(table, pixel_size_angstrom=np.full(len(table), float(pixel_size_angstrom)))
    check_values(table, kind)
    _release_freed_heap()
    return table


def read_poses(path, n: int) -> ParticleTable:
    """A pose file of ``n`` particles, row for row (``config.poses``, ``config.start_poses``): read by
    ``read_particles`` and refused in one line unless it holds n rows with angles."""
    poses = read_particles(path)
    if len(poses) != n or poses.euler_deg is None:
        raise InputError(f"{path}: need {n} rows with rlnAngleRot/Tilt/Psi, got {len(poses)}")
    return poses


def _release_freed_heap() -> None:
    """Hand the parser's freed memory back to the system: glibc's heap (~0.2 GB per 10^6 star rows) and
    pyarrow's pool, which holds pandas' text columns (~50 MB per 10^6 rows); both keep freed memory
    otherwise, and every process would carry it through the run. A no-op where neither is there."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
    if "pyarrow" in sys.modules:  # pandas >= 3 keeps text in pyarrow arrays; never imported just for this
        sys.modules["pyarrow"].default_memory_pool().release_unused()


@functools.cache
def _malloc_trim():
    """glibc's malloc_trim from the running process's own symbols (no library search), or None."""
    import ctypes

    try:
        return ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None


def check_stacks(table: ParticleTable) -> dict[str, Stack]:
    """Open every referenced stack's header; raise one InputError line listing all problems."""
    missing = table.missing_stacks()
    if missing:
        raise InputError(f"{table.source}: {len(missing)} missing stack(s): {listed(missing)}")
    stacks = {p: Stack(p) for p in table.stacks()}
    for stack_path, stack in stacks.items():
        rows = table.image_path == stack_path
        top = int(table.image_index[rows].max())
        if top >= len(stack):
            raise InputError(f"{table.source}: image index {top + 1} beyond the {len(stack)} images of {stack_path}")
        expected = np.unique(table.image_size[rows])
        if np.any((expected != stack.image_size) & (expected != 0)):
            raise InputError(
                f"{table.source}: metadata says {expected.tolist()} px images but {stack_path} holds "
                f"{stack.image_size} px images"
            )
    return stacks
