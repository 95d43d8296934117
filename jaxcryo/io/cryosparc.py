"""cryoSPARC ``.cs`` particle files (numpy structured arrays), read without unpickling.

Pose convention: cryoSPARC stores ``alignments3D/pose`` as an axis-angle vector ``r`` whose rotation
``exp(r)`` maps image coordinates to the molecule's frame; ours (RELION's) is the inverse, so
``A = so3_exp(r)^T`` (cryoDRGN's ``parse_pose_csparc`` makes the same transpose). ``alignments3D/shift``
is in pixels of ``alignments3D/psize_A``, with RELION's origin sign (rlnOriginX = shift_x).
"""

from __future__ import annotations

import pathlib
import zlib

import numpy as np

from jaxcryo.io.star import resolve_stack_path
from jaxcryo.io.table import InputError, ParticleTable

_REQUIRED = ("blob/path", "blob/idx", "blob/psize_A", "blob/shape", "ctf/accel_kv", "ctf/cs_mm",
             "ctf/amp_contrast", "ctf/df1_A", "ctf/df2_A", "ctf/df_angle_rad")


def read_cs(path: pathlib.Path, datadir: str | None = None) -> ParticleTable:
    try:
        data = np.load(path, allow_pickle=False)
    except Exception as exc:
        raise InputError(f"{path}: not a readable cryoSPARC .cs file ({exc})") from None
    if not isinstance(data, np.ndarray) or data.dtype.names is None:
        raise InputError(f"{path}: not a cryoSPARC .cs file (no structured array)")
    names = set(data.dtype.names)
    for field in _REQUIRED:
        if field not in names:
            raise InputError(f"{path}: missing required field {field}")
    if len(data) == 0:
        raise InputError(f"{path}: no particles")
    blob_paths = [p.decode() if isinstance(p, bytes) else str(p) for p in data["blob/path"]]
    blob_paths = [p[1:] if p.startswith(">") else p for p in blob_paths]
    cache: dict[str, str] = {}
    resolved = np.array([cache.setdefault(p, resolve_stack_path(p, path, datadir)) for p in blob_paths], dtype=str)
    index = data["blob/idx"].astype(np.int64)
    shape = np.asarray(data["blob/shape"])
    if np.any(shape[:, 0] != shape[:, 1]):
        raise InputError(f"{path}: non-square images in blob/shape")

    euler = origin = subset = None
    prefix = next((p for p in ("alignments3D", "alignments_class_0") if f"{p}/pose" in names), None)
    if prefix is not None:
        from jaxcryo import geometry  # local: keeps metadata reading free of JAX start-up when unused
        import jax.numpy as jnp

        rot = np.swapaxes(np.asarray(geometry.so3_exp(jnp.asarray(data[f"{prefix}/pose"], jnp.float32))), -1, -2)
        euler = np.asarray(geometry.matrix_to_euler(jnp.asarray(rot)), np.float64)
        psize = data[f"{prefix}/psize_A"] if f"{prefix}/psize_A" in names else data["blob/psize_A"]
        origin = np.asarray(data[f"{prefix}/shift"], np.float64) * np.asarray(psize, np.float64)[:, None]
        if f"{prefix}/split" in names:
            subset = np.asarray(data[f"{prefix}/split"], np.int64) + 1
    rows = np.arange(len(data))
    return ParticleTable(
        source=str(path),
        image_path=resolved,
        image_index=index,
        image_name=np.array([f"{i + 1:06d}@{p}" for i, p in zip(index, blob_paths)], dtype=str),
        pixel_size_angstrom=data["blob/psize_A"].astype(np.float64),
        image_size=shape[:, 0].astype(np.int64),
        optics_group=(data["ctf/exp_group_id"].astype(np.int64) if "ctf/exp_group_id" in names else np.zeros_like(rows)),
        defocus_u_angstrom=data["ctf/df1_A"].astype(np.float64),
        defocus_v_angstrom=data["ctf/df2_A"].astype(np.float64),
        defocus_angle_deg=np.degrees(data["ctf/df_angle_rad"].astype(np.float64)),
        voltage_kv=data["ctf/accel_kv"].astype(np.float64),
        spherical_aberration_mm=data["ctf/cs_mm"].astype(np.float64),
        amplitude_contrast=data["ctf/amp_contrast"].astype(np.float64),
        phase_shift_deg=np.degrees(data["ctf/phase_shift_rad"].astype(np.float64)) if "ctf/phase_shift_rad" in names else np.zeros(len(rows)),
        b_factor_angstrom2=data["ctf/bfactor"].astype(np.float64) if "ctf/bfactor" in names else np.zeros(len(rows)),
        phase_flipped=np.zeros(len(rows)),  # cryoSPARC keeps its particles as extracted
        euler_deg=euler,
        origin_angstrom=origin,
        random_subset=subset,
    )


def write_cs(path, table: ParticleTable, rotations: np.ndarray, origin_angstrom: np.ndarray | None,
             random_subset: np.ndarray | None = None, contrast: np.ndarray | None = None) -> None:
    """A cryoSPARC particle file for import: the reader's conventions inverted.

    ``rotations`` (N, 3, 3) in our (RELION's) convention -> ``alignments3D/pose`` = log(A^T) (f4, 3);
    ``origin_angstrom`` (N, 2) RELION origins -> ``alignments3D/shift`` in pixels of
    ``alignments3D/psize_A`` (the stack's pixel size); ``random_subset`` in {1, 2} -> ``alignments3D/split``;
    ``contrast`` (N,) per-particle scales -> ``alignments3D/alpha`` (cryoSPARC's per-particle scale).
    When the input was a .cs, every one of its fields is kept (``blob/*``, ``ctf/*``, ``uid``, ...) and
    only the alignments are replaced; otherwise ``uid``, ``blob/*`` and ``ctf/*`` are made from the table.
    Written under a temporary name and renamed.
    """
    import jax.numpy as jnp

    from jaxcryo import geometry

    n = len(table)
    pose = np.asarray(geometry.so3_log(jnp.asarray(np.swapaxes(rotations, -1, -2), jnp.float32)), np.float32)
    psize = np.asarray(table.pixel_size_angstrom, np.float32)
    origin = np.zeros((n, 2)) if origin_angstrom is None else np.asarray(origin_angstrom, np.float64)
    ours = {"alignments3D/pose": (pose, ("<f4", (3,))), "alignments3D/shift": ((origin / psize[:, None]).astype(np.float32), ("<f4", (2,))),
            "alignments3D/psize_A": (psize, "<f4")}
    if random_subset is not None:
        ours["alignments3D/split"] = (np.asarray(random_subset, np.uint32) - 1, "<u4")
    if contrast is not None:
        ours["alignments3D/alpha"] = (np.asarray(contrast, np.float32), "<f4")
    base = _input_fields(table)
    fields = [(name, base[name].dtype.descr[0][1] if base[name].ndim == 1 else (base[name].dtype.str, base[name].shape[1:]))
              for name in base if name not in ours]
    dtype = np.dtype(fields + [(name, spec) for name, (_, spec) in ours.items()])
    out = np.zeros(n, dtype)
    for name in base:
        if name not in ours:
            out[name] = base[name]
    for name, (values, _) in ours.items():
        out[name] = values
    path = pathlib.Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:  # np.save to a file object keeps the .cs name
        np.save(f, out)
    tmp.replace(path)


def _input_fields(table: ParticleTable) -> dict:
    """The input .cs's own fields (when the table came from one with the same rows), else a minimal
    import set made from the table."""
    source = pathlib.Path(table.source)
    if source.suffix == ".cs" and source.exists():
        data = np.load(source, allow_pickle=False)
        if len(data) == len(table):
            # stale 3D alignments go (ours replace them); 2D classification and the rest stay
            return {name: data[name] for name in data.dtype.names
                    if not name.startswith(("alignments3D", "alignments_class_"))}
    n = len(table)
    blob_path = np.array([str(p) for p in table.image_path], dtype="S")  # resolved: importable from anywhere
    return {
        "uid": np.random.default_rng(zlib.crc32(str(table.source).encode())).integers(1, 2**63, n, dtype=np.uint64),
        "blob/path": blob_path, "blob/idx": np.asarray(table.image_index, np.uint32),
        "blob/shape": np.repeat(np.asarray(table.image_size, np.uint32)[:, None], 2, axis=1),
        "blob/psize_A": np.asarray(table.pixel_size_angstrom, np.float32),
        "ctf/accel_kv": np.asarray(table.voltage_kv, np.float32), "ctf/cs_mm": np.asarray(table.spherical_aberration_mm, np.float32),
        "ctf/amp_contrast": np.asarray(table.amplitude_contrast, np.float32),
        "ctf/df1_A": np.asarray(table.defocus_u_angstrom, np.float32), "ctf/df2_A": np.asarray(table.defocus_v_angstrom, np.float32),
        "ctf/df_angle_rad": np.radians(np.asarray(table.defocus_angle_deg)).astype(np.float32),
        "ctf/phase_shift_rad": np.radians(np.asarray(table.phase_shift_deg)).astype(np.float32),
        "ctf/bfactor": np.asarray(table.b_factor_angstrom2, np.float32),
        "ctf/exp_group_id": np.asarray(table.optics_group, np.uint32),
    }
