"""The particle table: typed, immutable per-particle metadata, whatever file it came from.

Conventions
-----------
* Poses are RELION's: ``euler_deg`` (N, 3) = (rlnAngleRot, rlnAngleTilt, rlnAnglePsi), converted to
  matrices by ``jaxcryo.geometry.euler_to_matrix``.
* ``origin_angstrom`` (N, 2) = (rlnOriginXAngst, rlnOriginYAngst): the translation that centres the
  particle, i.e. the particle's centre sits at (box centre - origin) in the image.
* ``image_index`` is 0-based (RELION's ``N@stack`` is 1-based); ``image_name`` keeps the input's text.
* Images are used as stored (RELION stacks: protein white). ``data.invert_contrast`` flips dark data.

Memory: every process holds the whole table, so it is kept compact (about 50 B per particle without
poses at 10^6 particles): a column whose values are all equal is a zero-stride view of one value, image
names are kept as their stack and number (``ImageNames``), other text columns are numpy variable-width
strings, and ``extra_columns`` keeps only the input's columns that no
field above represents (``column_order`` remembers where the input had them).
"""

from __future__ import annotations

import dataclasses
import pathlib

import numpy as np

CTF_FIELDS = (
    "defocus_u_angstrom",
    "defocus_v_angstrom",
    "defocus_angle_deg",
    "voltage_kv",
    "spherical_aberration_mm",
    "amplitude_contrast",
    "phase_shift_deg",
    "b_factor_angstrom2",
    "phase_flipped",
)


try:  # numpy >= 2.0
    from numpy.dtypes import StringDType

    _STRINGS = StringDType()
except ImportError:  # numpy 1.26 keeps object arrays of str
    _STRINGS = None


def compact_column(values: np.ndarray) -> np.ndarray:
    """A read-only column holding the same values in less memory.

    (N,) numbers all equal -> a zero-stride view of the first (8 B in all); text -> numpy's
    variable-width strings (16 B per row plus the characters beyond 15, against ~60 B per Python str
    object or 4 B per character of a fixed-width unicode array). Other arrays come back as they are.
    """
    values = np.asarray(values)
    if values.ndim == 1 and values.dtype.kind in "OUS" and _STRINGS is not None:
        if values.dtype.kind != "O" or all(isinstance(v, str) for v in values.tolist()):
            values = (values.astype(str) if values.dtype.kind == "S" else values).astype(_STRINGS)
    elif values.ndim == 1 and values.dtype.kind in "biuf" and len(values) > 1 and values.strides[0] != 0:
        first = values[:1].copy()  # a copy: a view would keep the whole column alive
        if np.all((values == first) | (np.isnan(values) & np.isnan(first) if values.dtype.kind == "f" else False)):
            values = np.broadcast_to(first, values.shape)
    if values.flags.writeable:
        values.setflags(write=False)
    return values


class ImageNames:
    """The input's image names ('000012@Particles/stack.mrcs'), held as what they are made of: each row's
    stack text (an int32 code into the distinct texts; a zero-stride column when there is one stack) and
    its image number, ``image_index`` + 1 written with at least ``width`` digits. 0-4 B per row, against
    16 B plus the text per row as numpy strings (RELION's names run to 60-80 characters).

    Reads as a read-only (N,) text column: ``len``, ``x[i]`` (a str), ``x[rows]`` (a numpy text array),
    ``tolist()``, ``np.asarray(x)``; ``take(rows)`` keeps the compact form.
    """

    def __init__(self, index: np.ndarray, codes: np.ndarray, stacks: tuple[str, ...], width: int):
        self.index, self.codes, self.stacks, self.width = index, compact_column(codes), stacks, width

    @classmethod
    def encode(cls, names, index: np.ndarray) -> "ImageNames | None":
        """The compact form of text ``names`` whose numbers are ``index`` + 1, or None when any name
        is not NUMBER@STACK with that number written one way."""
        codes, numbers, stacks = np.empty(len(index), np.int32), [], {}
        for row, name in enumerate(np.asarray(names).tolist()):
            number, at, stack = str(name).partition("@")
            if not at:
                return None
            codes[row] = stacks.setdefault(stack, len(stacks))
            numbers.append(number)
        width = min(map(len, numbers), default=1)
        if any(text != f"{k:0{width}d}" for text, k in zip(numbers, (np.asarray(index) + 1).tolist())):
            return None
        return cls(index, codes, tuple(stacks), width)

    def __len__(self) -> int:
        return len(self.index)

    @property
    def dtype(self) -> np.dtype:
        return np.asarray(self[:0]).dtype

    def _text(self, index, codes) -> list[str]:
        return [f"{k + 1:0{self.width}d}@{self.stacks[c]}" for k, c in zip(np.asarray(index).tolist(), np.asarray(codes).tolist())]

    def __getitem__(self, idx):
        if np.isscalar(idx):
            return self._text([self.index[idx]], [self.codes[idx]])[0]
        return compact_column(np.array(self._text(self.index[idx], self.codes[idx]), dtype=_STRINGS or object))

    def take(self, idx, index: np.ndarray | None = None) -> "ImageNames":
        """The rows ``idx``; ``index``: their image indices when the caller already holds them."""
        return ImageNames(self.index[idx] if index is None else index, self.codes[idx], self.stacks, self.width)

    def tolist(self) -> list[str]:
        return self._text(self.index, self.codes)

    def __array__(self, dtype=None, copy=None):
        return np.asarray(self[:], dtype=dtype)


def _all_shared(paths: np.ndarray) -> bool:
    """Whether an object column holds one str object per distinct value (checked on a sample)."""
    sample = paths[:: max(1, len(paths) // 64)]
    return len({id(p) for p in sample}) == len(set(sample.tolist()))


class InputError(ValueError):
    """Bad user input; the message is one line naming the file and the problem."""


def listed(items, most: int = 5) -> str:
    """'a, b, c' or, past ``most`` items, 'a, b, c, d, e and 3 more': a list that keeps a message one line."""
    items = [str(i) for i in items]
    return ", ".join(items[:most]) + (f" and {len(items) - most} more" if len(items) > most else "")


# Optics groups whose pixel sizes differ by at most this fraction of their mean are taken as one (their mean).
PIXEL_SIZE_SPREAD = 0.01

# Physically possible ranges (inclusive) of the per-particle values, and their column names by format.
VALUE_RANGES = {
    "pixel_size_angstrom": (1e-3, 100.0, "A"),
    "defocus_u_angstrom": (0.0, 1e5, "A"),
    "defocus_v_angstrom": (0.0, 1e5, "A"),
    "voltage_kv": (1.0, 3000.0, "kV"),
    "spherical_aberration_mm": (0.0, 20.0, "mm"),
    "amplitude_contrast": (0.0, 1.0, ""),
    "phase_flipped": (0.0, 1.0, ""),
}
COLUMN_NAMES = {
    "star": {"pixel_size_angstrom": "rlnImagePixelSize (or the stack header)", "defocus_u_angstrom": "rlnDefocusU",
             "defocus_v_angstrom": "rlnDefocusV", "voltage_kv": "rlnVoltage",
             "spherical_aberration_mm": "rlnSphericalAberration", "amplitude_contrast": "rlnAmplitudeContrast",
             "phase_flipped": "rlnCtfDataArePhaseFlipped"},
    "cs": {"pixel_size_angstrom": "blob/psize_A", "defocus_u_angstrom": "ctf/df1_A", "defocus_v_angstrom": "ctf/df2_A",
           "voltage_kv": "ctf/accel_kv", "spherical_aberration_mm": "ctf/cs_mm", "amplitude_contrast": "ctf/amp_contrast"},
    "stack": {"pixel_size_angstrom": "the stack header's pixel size"},
}


def check_values(table: "ParticleTable", kind: str) -> None:
    """Refuse impossible metadata: one line naming the file, the column, the first bad row and value."""
    names = COLUMN_NAMES[kind]
    for field, (low, high, unit) in VALUE_RANGES.items():
        if field not in names:
            continue
        values = np.asarray(getattr(table, field), np.float64)
        bad = ~np.isfinite(values) | (values < low) | (values > high)
        if np.any(bad):
            row = int(np.argmax(bad))
            hint = "; set data.pixel_size_angstrom" if field == "pixel_size_angstrom" else ""
            raise InputError(f"{table.source}: {names[field]} is {values[row]:g} at particle {row + 1} "
                             f"({int(bad.sum())} bad of {len(values)}); expected {low:g} to {high:g} {unit}{hint}")
    for field, label in (("euler_deg", "angles"), ("origin_angstrom", "origins")):
        values = getattr(table, field)
        if values is not None and not np.all(np.isfinite(values)):
            row = int(np.argmax(~np.all(np.isfinite(values), axis=1)))
            raise InputError(f"{table.source}: non-finite {label} at particle {row + 1}")


def _compact_fields(table: "ParticleTable") -> None:
    """Check every column's length and store each in its compact form (module docstring, "Memory")."""
    n = len(table.image_index)
    if table.image_path.dtype != object or (n and not _all_shared(table.image_path)):
        # one shared str per stack: 8 B per row, not 4 B per character or one str object per row
        shared: dict[str, str] = {}
        paths = np.empty(n, object)
        paths[:] = [shared.setdefault(str(p), str(p)) for p in table.image_path]
        object.__setattr__(table, "image_path", paths)
    if not isinstance(table.image_name, ImageNames):
        names = ImageNames.encode(table.image_name, table.image_index)
        if names is not None:
            object.__setattr__(table, "image_name", names)
    if len(table.image_name) != n:
        raise InputError(f"{table.source}: column image_name has {len(table.image_name)} rows, expected {n}")
    for field in dataclasses.fields(table):
        value = getattr(table, field.name)
        if isinstance(value, np.ndarray):
            if len(value) != n:
                raise InputError(f"{table.source}: column {field.name} has {len(value)} rows, expected {n}")
            if field.name != "image_path":
                object.__setattr__(table, field.name, compact_column(value))
    extra = {}
    for name, value in table.extra_columns.items():
        value = np.asarray(value)
        if len(value) != n:
            raise InputError(f"{table.source}: column {name} has {len(value)} rows, expected {n}")
        extra[name] = compact_column(value)
    object.__setattr__(table, "extra_columns", extra)


@dataclasses.dataclass(frozen=True)
class ParticleTable:
    """Per-particle metadata, all arrays of length N (read-only numpy arrays)."""

    source: str
    image_path: np.ndarray  # (N,) str, absolute or as repaired by datadir
    image_index: np.ndarray  # (N,) int64, 0-based index in the stack
    image_name: np.ndarray | ImageNames  # (N,) str, e.g. "000001@Particles/stack.mrcs" as in the input
    pixel_size_angstrom: np.ndarray  # (N,) float64
    image_size: np.ndarray  # (N,) int64
    optics_group: np.ndarray  # (N,) int64
    defocus_u_angstrom: np.ndarray
    defocus_v_angstrom: np.ndarray
    defocus_angle_deg: np.ndarray
    voltage_kv: np.ndarray
    spherical_aberration_mm: np.ndarray
    amplitude_contrast: np.ndarray
    phase_shift_deg: np.ndarray
    b_factor_angstrom2: np.ndarray
    # (N,) 1 where the images were phase-flipped by their CTF's sign (rlnCtfDataArePhaseFlipped), else 0:
    # such an image holds |CTF| x projection, and its noise stays white (jaxcryo.ctf.compute_ctf)
    phase_flipped: np.ndarray
    euler_deg: np.ndarray | None = None  # (N, 3)
    origin_angstrom: np.ndarray | None = None  # (N, 2)
    random_subset: np.ndarray | None = None  # (N,) int64 in {1, 2}
    # The input's columns that no field represents (RELION names), kept so writers can preserve them,
    # and the input's column order.
    extra_columns: dict = dataclasses.field(default_factory=dict, repr=False)
    optics_table: dict = dataclasses.field(default_factory=dict, repr=False)
    column_order: tuple = ()

    def __post_init__(self):
        _compact_fields(self)

    def __len__(self) -> int:
        return len(self.image_index)

    def ctf_params(self, idx=slice(None)) -> dict[str, np.ndarray]:
        """CTF parameters of the selected particles as a dict for ``jaxcryo.ctf.compute_ctf``."""
        return {name: getattr(self, name)[idx] for name in CTF_FIELDS}

    def subset(self, idx: np.ndarray) -> "ParticleTable":
        """A new table with the selected rows (e.g. one half set)."""
        changes = {}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if isinstance(value, np.ndarray):
                changes[field.name] = value[idx]
        if isinstance(self.image_name, ImageNames):
            changes["image_name"] = self.image_name.take(idx, changes["image_index"])
        changes["extra_columns"] = {k: np.asarray(v)[idx] for k, v in self.extra_columns.items()}
        return dataclasses.replace(self, **changes)

    def rotations(self, rows=slice(None)) -> np.ndarray:
        """(N, 3, 3) float32 rotation matrices of the selected rows' ``euler_deg`` (``jaxcryo.geometry``'s
        convention); InputError when the file holds no angles."""
        if self.euler_deg is None:
            raise InputError(f"{self.source}: no particle angles (rlnAngleRot/Tilt/Psi or alignments3D/pose)")
        import jax.numpy as jnp  # local: reading metadata stays free of JAX start-up

        from jaxcryo import geometry

        return np.asarray(geometry.euler_to_matrix(jnp.asarray(self.euler_deg[rows], jnp.float32)))

    def displacements_angstrom(self) -> np.ndarray | None:
        """(N, 2) each particle's displacement from the box centre in A (minus RELION's origin), or None
        when the file holds no origins."""
        return None if self.origin_angstrom is None else -np.asarray(self.origin_angstrom, np.float64)

    def displacements_px(self, pixel_size_angstrom: float) -> np.ndarray:
        """(N, 2) float32 displacements in pixels of ``pixel_size_angstrom``; zeros (centred particles)
        when the file holds no origins."""
        if self.origin_angstrom is None:
            return np.zeros((len(self), 2), np.float32)
        return (self.displacements_angstrom() / pixel_size_angstrom).astype(np.float32)

    def with_poses(self, euler_deg: np.ndarray, origin_angstrom: np.ndarray | None = None) -> "ParticleTable":
        return dataclasses.replace(self, euler_deg=np.asarray(euler_deg, np.float64), origin_angstrom=origin_angstrom)

    @property
    def box_size(self) -> int:
        """The common image size; raises InputError when images differ in size."""
        sizes = np.unique(self.image_size)
        if len(sizes) != 1:
            raise InputError(f"{self.source}: particles have different box sizes {sizes.tolist()}")
        return int(sizes[0])

    @property
    def pixel_sizes(self) -> np.ndarray:
        """The distinct pixel sizes of the particles (A, sorted), equal to 1e-6 A taken as one."""
        return np.unique(np.round(self.pixel_size_angstrom, 6))

    @property
    def common_pixel_size(self) -> float:
        """The particles' one pixel size: their mean when their optics groups' sizes lie within
        ``PIXEL_SIZE_SPREAD`` of it (one microscope's calibration across sessions: at 1 % a feature 60 A
        from the particle's centre lands 0.6 A off, far below an initial model's resolution), else
        InputError."""
        sizes = self.pixel_sizes
        mean = float(np.mean(self.pixel_size_angstrom))
        if sizes[-1] - sizes[0] > PIXEL_SIZE_SPREAD * mean:
            raise InputError(f"{self.source}: particles have pixel sizes {listed(sizes.tolist())} A, more than "
                             f"{PIXEL_SIZE_SPREAD:.0%} apart; rescale them to one (relion_image_handler --rescale_angpix "
                             "--new_box), or set data.pixel_size_angstrom to take them all as one")
        return float(sizes[0]) if len(sizes) == 1 else mean

    def stacks(self) -> list[str]:
        return sorted(set(self.image_path.tolist()))

    def missing_stacks(self) -> list[str]:
        return [p for p in self.stacks() if not pathlib.Path(p).is_file()]
