"""RELION STAR files: 3.0 (one block) and 3.1/4/5 (optics + particles) in, 3.1 out."""

from __future__ import annotations

import logging
import pathlib
import warnings

import numpy as np
import pandas as pd
import starfile

from jaxcryo.io.table import InputError, ParticleTable, listed

_OPTICS_FIELDS = {  # our name -> RELION column; looked up per particle, then in its optics group
    "voltage_kv": "rlnVoltage",
    "spherical_aberration_mm": "rlnSphericalAberration",
    "amplitude_contrast": "rlnAmplitudeContrast",
}


def read_star_blocks(path: pathlib.Path) -> dict[str, pd.DataFrame]:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            blocks = starfile.read(path, always_dict=True)
    except Exception as exc:
        raise InputError(f"{path}: not a readable STAR file ({type(exc).__name__}: {exc})") from None
    blocks = {name: df for name, df in blocks.items() if isinstance(df, pd.DataFrame)}
    if not blocks:
        raise InputError(f"{path}: no data loop found (empty STAR file?)")
    return blocks


def _particles_and_optics(path, blocks) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    if "optics" in blocks:
        particles = blocks.get("particles")
        if particles is None:
            raise InputError(f"{path}: has data_optics but no data_particles block")
        return particles, blocks["optics"]
    with_images = [df for df in blocks.values() if "rlnImageName" in df.columns]
    if not with_images:
        raise InputError(f"{path}: missing required column rlnImageName")
    return with_images[0], None


def _column(path, df, name, default=None) -> np.ndarray:
    if name in df.columns:
        return df[name].to_numpy()
    if default is None:
        raise InputError(f"{path}: missing required column {name}")
    return np.full(len(df), default)


def resolve_stack_path(path_text: str, metadata_path: pathlib.Path, datadir: str | None) -> str:
    """Where a referenced stack lives: datadir (joined, then by basename), else beside the metadata, the
    working directory, the metadata's basename, and last the folders above the metadata — RELION writes
    paths relative to its project directory (Extract/job007/...) into stars kept deeper in it
    (Select/job010/particles.star), so a user who runs from elsewhere still finds the stacks."""
    rel = pathlib.Path(path_text)
    candidates = []
    if datadir is not None:
        candidates += [pathlib.Path(datadir) / rel, pathlib.Path(datadir) / rel.name]
    if rel.is_absolute():
        candidates.insert(0, rel)
    candidates += [metadata_path.parent / rel, pathlib.Path.cwd() / rel, metadata_path.parent / rel.name]
    if not rel.is_absolute():
        candidates += [folder / rel for folder in metadata_path.resolve().parent.parents]
    for c in candidates:
        if c.is_file():
            return str(c.resolve())
    return str(candidates[0].resolve() if datadir is not None else (metadata_path.parent / rel).resolve())


def parse_image_names(path, names: np.ndarray, datadir) -> tuple[np.ndarray, np.ndarray]:
    """'000012@stack.mrcs' -> (resolved stack path, 11). A name without '@' is image 0 of a file."""
    indices = np.empty(len(names), np.int64)
    paths = np.empty(len(names), object)
    cache: dict[str, str] = {}
    for i, name in enumerate(names):
        text = str(name)
        if "@" in text:
            number, stack = text.split("@", 1)
            try:
                indices[i] = int(number) - 1
            except ValueError:
                raise InputError(f"{path}: bad rlnImageName {text!r} in row {i + 1}") from None
        else:
            indices[i], stack = 0, text
        if indices[i] < 0:
            raise InputError(f"{path}: rlnImageName {text!r} in row {i + 1} has index < 1")
        if stack not in cache:
            cache[stack] = resolve_stack_path(stack, path, datadir)
        paths[i] = cache[stack]
    return paths, indices  # object array: rows of one stack share its str


def _float(path, df, name, default=None) -> np.ndarray:
    values = _column(path, df, name, default)
    try:
        return values.astype(np.float64)
    except (TypeError, ValueError):
        raise InputError(f"{path}: column {name} is not numeric") from None


# RELION 3.0's per-particle optics columns: the writer moves them to the optics block
_OPTICS_COLUMNS = ("rlnVoltage", "rlnSphericalAberration", "rlnAmplitudeContrast", "rlnMagnification",
                   "rlnDetectorPixelSize", "rlnImagePixelSize", "rlnCtfDataArePhaseFlipped")
_REPRESENTED = ("rlnImageName", "rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle", "rlnPhaseShift", "rlnCtfBfactor",
                "rlnOpticsGroup", "rlnRandomSubset") + _OPTICS_COLUMNS


def read_star(path: pathlib.Path, datadir: str | None = None, pixel_size_angstrom: float | None = None) -> ParticleTable:
    blocks = read_star_blocks(path)
    particles, optics = _particles_and_optics(path, blocks)
    if len(particles) == 0:
        raise InputError(f"{path}: no particles (empty data loop)")
    n = len(particles)
    merged = particles.copy()
    if optics is not None:
        groups = _column(path, particles, "rlnOpticsGroup").astype(np.int64)
        table = optics.set_index(optics["rlnOpticsGroup"].astype(np.int64))
        unknown = sorted(set(groups.tolist()) - set(table.index.tolist()))
        if unknown:
            raise InputError(f"{path}: particles refer to unknown optics group(s) {unknown}")
        for col in optics.columns:
            if col not in merged.columns:
                merged[col] = table.loc[groups, col].to_numpy()
    else:
        groups = _column(path, particles, "rlnOpticsGroup", 1).astype(np.int64)

    if pixel_size_angstrom is not None:
        pixel = np.full(n, float(pixel_size_angstrom))
    elif "rlnImagePixelSize" in merged.columns:
        pixel = _float(path, merged, "rlnImagePixelSize")
    elif {"rlnDetectorPixelSize", "rlnMagnification"} <= set(merged.columns):
        pixel = _float(path, merged, "rlnDetectorPixelSize") * 1e4 / _float(path, merged, "rlnMagnification")
    else:
        pixel = None

    image_paths, image_index = parse_image_names(path, _column(path, particles, "rlnImageName"), datadir)
    if "rlnImageSize" in merged.columns:
        size = _float(path, merged, "rlnImageSize").astype(np.int64)
    else:
        size = np.zeros(n, np.int64)  # unknown until the stack header is read
    if pixel is None or np.any(size == 0):
        from_headers = pixel is None
        pixel, size = _from_stack_headers(path, image_paths, pixel, size)
        if from_headers:  # MRC writers often leave a default there: the user should see which value ran
            found = ", ".join(f"{p:g}" for p in np.unique(pixel))
            logging.info("%s: no pixel size in the STAR file; taking %s A/px from the stacks' headers "
                         "(set data.pixel_size_angstrom if that is wrong)", path, found)

    euler = None
    if {"rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"} <= set(particles.columns):
        euler = np.stack([_float(path, particles, f"rlnAngle{a}") for a in ("Rot", "Tilt", "Psi")], axis=1)
    origin = None
    if {"rlnOriginXAngst", "rlnOriginYAngst"} <= set(particles.columns):
        origin = np.stack([_float(path, particles, "rlnOriginXAngst"), _float(path, particles, "rlnOriginYAngst")], 1)
    elif {"rlnOriginX", "rlnOriginY"} <= set(particles.columns):
        origin = np.stack([_float(path, particles, "rlnOriginX"), _float(path, particles, "rlnOriginY")], 1) * pixel[:, None]
    subset = _column(path, particles, "rlnRandomSubset").astype(np.int64) if "rlnRandomSubset" in particles else None

    defocus_u = _float(path, particles, "rlnDefocusU")
    flipped = _ctf_flag(path, merged, "rlnCtfDataArePhaseFlipped")
    if np.any(_ctf_flag(path, merged, "rlnCtfDataAreCtfPremultiplied")):
        raise InputError(f"{path}: the images are CTF-premultiplied (rlnCtfDataAreCtfPremultiplied 1), whose noise the "
                         "CTF colours; re-extract them without CTF premultiplication")
    if np.any(flipped):
        logging.info("%s: %d of %d particles are phase-flipped (rlnCtfDataArePhaseFlipped): modelled with |CTF|",
                     path, int(flipped.sum()), n)
    # columns the table's fields hold (the writer writes them from there), so not kept twice
    represented = set(_REPRESENTED) | ({"rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"} if euler is not None else set())
    represented |= {"rlnOriginXAngst", "rlnOriginYAngst", "rlnOriginX", "rlnOriginY"} if origin is not None else set()
    return ParticleTable(
        source=str(path),
        image_path=image_paths,
        image_index=image_index,
        image_name=particles["rlnImageName"].astype(str).to_numpy(),
        pixel_size_angstrom=pixel,
        image_size=size,
        optics_group=groups,
        defocus_u_angstrom=defocus_u,
        defocus_v_angstrom=_float(path, particles, "rlnDefocusV") if "rlnDefocusV" in particles else defocus_u,
        defocus_angle_deg=_float(path, particles, "rlnDefocusAngle", 0.0),
        voltage_kv=_float(path, merged, "rlnVoltage"),
        spherical_aberration_mm=_float(path, merged, "rlnSphericalAberration"),
        amplitude_contrast=_amplitude_contrast(path, merged),
        phase_shift_deg=_float(path, particles, "rlnPhaseShift", 0.0),
        b_factor_angstrom2=_float(path, particles, "rlnCtfBfactor", 0.0),
        phase_flipped=flipped,
        euler_deg=euler,
        origin_angstrom=origin,
        random_subset=subset,
        extra_columns={c: particles[c].to_numpy() for c in particles.columns if c not in represented},
        column_order=tuple(particles.columns),
        optics_table={c: optics[c].to_numpy() for c in optics.columns} if optics is not None else {},
    )


def _ctf_flag(path, merged, name: str) -> np.ndarray:
    """(N,) 0/1 of a RELION yes/no optics column (0 where absent); any other value is refused."""
    values = _float(path, merged, name, 0.0)
    bad = (values != 0) & (values != 1)
    if np.any(bad):
        row = int(np.argmax(bad))
        raise InputError(f"{path}: {name} is {values[row]:g} at particle {row + 1}; expected 0 or 1")
    return values


def _amplitude_contrast(path, merged) -> np.ndarray:
    """rlnAmplitudeContrast, or 0.1 (the usual value for cryo samples) with a warning when absent:
    refinement exports such as csparc2star's often omit it, and refusing them helps nobody."""
    if "rlnAmplitudeContrast" in merged.columns:
        return _float(path, merged, "rlnAmplitudeContrast")
    logging.warning("%s: no rlnAmplitudeContrast column; using 0.1", path)
    return np.full(len(merged), 0.1)


def _from_stack_headers(path, image_paths, pixel, size):
    """Fill a missing pixel size / image size from the stacks' headers (header only, no data)."""
    from jaxcryo.io.mrc import Stack

    stacks = sorted(set(image_paths.tolist()))
    missing = [p for p in stacks if not pathlib.Path(p).is_file()]
    if pixel is None and missing:  # else the missing stack's rows would be refused for a NaN pixel size
        raise InputError(f"{path}: no pixel size in the STAR file, and {len(missing)} of the stacks to read it from "
                         f"are missing: {listed(missing)} (set data.datadir, or data.pixel_size_angstrom)")
    pixel = np.full(len(image_paths), np.nan) if pixel is None else pixel.copy()
    size = size.copy()
    for stack_path in stacks:
        rows = image_paths == stack_path
        if stack_path in missing:
            continue  # only the box is wanted from it: reported as missing when a run checks its stacks
        stack = Stack(stack_path)
        size[rows & (size == 0)] = stack.image_size
        pixel[rows & np.isnan(pixel)] = stack.voxel_size_angstrom
    return pixel, size


def write_particles_star(path, table: ParticleTable, euler_deg=None, origin_angstrom=None, random_subset=None) -> None:
    """RELION 3.1 star: optics block per optics group, particle rows keeping the input's columns.

    Poses (RELION Euler degrees) and origins (A) override the table's; written atomically.
    """
    path = pathlib.Path(path)
    particles = pd.DataFrame({k: np.asarray(v) for k, v in table.extra_columns.items()})
    if particles.empty:
        particles = pd.DataFrame(index=np.arange(len(table)))
    particles["rlnImageName"] = np.asarray(table.image_name)
    particles["rlnDefocusU"] = table.defocus_u_angstrom
    particles["rlnDefocusV"] = table.defocus_v_angstrom
    particles["rlnDefocusAngle"] = table.defocus_angle_deg
    particles["rlnPhaseShift"] = table.phase_shift_deg
    particles["rlnCtfBfactor"] = table.b_factor_angstrom2
    euler = table.euler_deg if euler_deg is None else np.asarray(euler_deg)
    origin = table.origin_angstrom if origin_angstrom is None else np.asarray(origin_angstrom)
    subset = table.random_subset if random_subset is None else np.asarray(random_subset)
    if euler is not None:
        particles["rlnAngleRot"], particles["rlnAngleTilt"], particles["rlnAnglePsi"] = euler.T
    if origin is not None:
        particles["rlnOriginXAngst"], particles["rlnOriginYAngst"] = origin.T
    # per-particle optics columns of RELION 3.0 move to the optics block; pixel origins become Angstrom
    particles = particles.drop(columns=["rlnOriginX", "rlnOriginY", *_OPTICS_COLUMNS], errors="ignore")
    if subset is not None:
        particles["rlnRandomSubset"] = subset

    # optics groups: one row per distinct (group, optics values) combination
    keys = np.stack([table.optics_group, table.voltage_kv, table.spherical_aberration_mm, table.amplitude_contrast,
                     table.pixel_size_angstrom, table.image_size, table.phase_flipped], axis=1)
    unique, inverse = np.unique(keys, axis=0, return_inverse=True)
    optics = pd.DataFrame({
        "rlnOpticsGroup": np.arange(1, len(unique) + 1),
        "rlnOpticsGroupName": [f"opticsGroup{int(g)}" for g in unique[:, 0]],
        "rlnVoltage": unique[:, 1],
        "rlnSphericalAberration": unique[:, 2],
        "rlnAmplitudeContrast": unique[:, 3],
        "rlnImagePixelSize": unique[:, 4],
        "rlnImageSize": unique[:, 5].astype(np.int64),
        "rlnImageDimensionality": 2,
    })
    if np.any(unique[:, 6]):  # the next program must model these images as phase-flipped too
        optics["rlnCtfDataArePhaseFlipped"] = unique[:, 6].astype(np.int64)
    particles["rlnOpticsGroup"] = inverse.reshape(-1) + 1
    first = [c for c in table.column_order if c in particles.columns]  # the input's order, then new columns
    particles = particles[first + [c for c in particles.columns if c not in first]]
    tmp = path.with_name(path.name + ".tmp")
    starfile.write({"optics": optics, "particles": particles}, tmp, overwrite=True)
    tmp.replace(path)
