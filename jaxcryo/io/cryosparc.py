"""cryoSPARC ``.cs`` particle files (numpy structured arrays), read without unpickling.

Pose convention: cryoSPARC stores ``alignments3D/pose`` as an axis-angle vector ``r`` whose rotation
``exp(r)`` maps image coordinates to the molecule's frame; ours (RELION's) is the inverse, so
``A = so3_exp(r)^T`` (cryoDRGN's ``parse_pose_csparc`` makes the same transpose). ``alignments3D/shift``
is in pixels of ``alignments3D/psize_A``, with RELION's origin sign (rlnOriginX = shift_x).
"""

from __future__ import annotations

import pathlib

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
        euler_deg=euler,
        origin_angstrom=origin,
        random_subset=subset,
    )
