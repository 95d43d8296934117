"""Protein-like test densities: the built-in phantoms and a seeded family of particle shapes.

Every density is made of globular domains (random-walk chains packed at about one residue per
130 A^3) joined by helical linkers, rendered at a given resolution (``render_points``). Sizes are in
A and scale with the box, so a family member looks the same at 64 px / 3 A/px and 128 px / 1.5 A/px.

The family (``FAMILY``) spans what real particles look like, each member drawn from a seed:
compact (globular, 25-35 % of the box across), elongated, flat, dimer (pseudo-two-fold: two copies of
one subunit plus a small domain on one of them), trimer (pseudo-C3, likewise), ring (an open ring of
unequal domains), multidomain (five domains and one small asymmetric one) and atomic (one chain of the
6VXX spike model's S1 subunit, when the model file is at hand). Seeds 0-99 are for development; benchmarks hold
other seeds back (``experiments/zoo.py``).
"""

from __future__ import annotations

import os
import pathlib

import jax.numpy as jnp
import numpy as np

from jaxcryo import fourier
from jaxcryo.io.table import InputError

FAMILY = ("compact", "elongated", "flat", "dimer", "trimer", "ring", "multidomain", "atomic")


def gaussian_lowpass(volume: np.ndarray, sigma_angstrom: float, voxel_size_angstrom: float) -> np.ndarray:
    """Convolve with an isotropic Gaussian of std sigma (A), exactly, in Fourier space."""
    k = np.asarray(fourier.frequency_grid_3d(volume.shape[-1], voxel_size_angstrom))
    k2 = np.sum(k**2, axis=-1)
    f = np.asarray(fourier.fft_centered(jnp.asarray(volume), 3))
    return np.asarray(fourier.ifft_centered(jnp.asarray(f * np.exp(-2 * np.pi**2 * sigma_angstrom**2 * k2)), 3).real)


def render_points(points_angstrom: np.ndarray, weights: np.ndarray, box_size: int, voxel_size_angstrom: float,
                  resolution_angstrom: float) -> np.ndarray:
    """(P, 3) points (x, y, z) in A around the box centre -> (D, D, D) density at a resolution.

    Points are splatted trilinearly, then blurred by a Gaussian of std 0.225 * resolution (Chimera's
    molmap convention: the Fourier transform falls to 1/e^2... at 1/resolution, roughly).
    """
    grid = points_angstrom / voxel_size_angstrom + box_size // 2  # (x, y, z) voxel coordinates
    base = np.floor(grid).astype(np.int64)
    frac = grid - base
    vol = np.zeros((box_size,) * 3, np.float64)
    for corner in np.ndindex(2, 2, 2):
        idx = base + np.array(corner)
        w = weights * np.prod(np.where(np.array(corner), frac, 1 - frac), axis=1)
        ok = np.all((idx >= 0) & (idx < box_size), axis=1)
        np.add.at(vol, (idx[ok, 2], idx[ok, 1], idx[ok, 0]), w[ok])
    return gaussian_lowpass(vol, 0.225 * resolution_angstrom, voxel_size_angstrom).astype(np.float32)


def _chain_in_sphere(rng, centre, radius, n, step=3.8):
    """A self-avoiding-ish random walk of n points confined to a sphere: a crude polypeptide."""
    pts = np.empty((n, 3))
    p = centre.copy()
    for i in range(n):
        for _ in range(20):
            d = rng.normal(size=3)
            q = p + step * d / np.linalg.norm(d)
            if np.linalg.norm(q - centre) < radius:
                break
        else:
            q = centre + (p - centre) * 0.9
        pts[i] = p = q
    return pts


def domains(rng, centres: np.ndarray, sizes: np.ndarray, links) -> np.ndarray:
    """Globular domains of random-walk chains (about one residue per 130 A^3, protein packing) joined
    by helical linkers (5.4 A pitch): (P, 3) points in A."""
    chains = [_chain_in_sphere(rng, c, r, int(4 / 3 * np.pi * r**3 / 130)) for c, r in zip(centres, sizes)]
    linkers = []
    for a, b in links:
        t = np.linspace(0, 1, 40)[:, None]
        axis = centres[b] - centres[a]
        perp = np.cross(axis, [0.3, 0.5, 0.8])
        perp /= np.linalg.norm(perp)
        perp2 = np.cross(axis / np.linalg.norm(axis), perp)
        turn = 2 * np.pi * t * np.linalg.norm(axis) / 5.4
        linkers.append(centres[a] + t * axis + 2.3 * (np.cos(turn) * perp + np.sin(turn) * perp2))
    return np.concatenate(chains + linkers)


def _render(points: np.ndarray, box_size: int, voxel: float, resolution: float | None) -> np.ndarray:
    points = points - points.mean(axis=0)  # every density is centred on its centre of mass
    vol = render_points(points, np.ones(len(points)), box_size, voxel, resolution or 2.5 * voxel)
    return vol / vol.max()


def protein_phantom(box_size: int = 64, voxel_size_angstrom: float = 3.0, resolution_angstrom: float | None = None,
                    seed: int = 0) -> np.ndarray:
    """The quickstart's asymmetric, protein-like density: four globular domains of different sizes
    joined by helical linkers, in a molecule of radius ~0.3 box. Needs no files."""
    rng = np.random.default_rng(7919 + seed)
    radius = 0.3 * box_size * voxel_size_angstrom
    centres = radius * np.array([[-0.35, -0.25, 0.1], [0.45, -0.1, -0.2], [0.0, 0.5, 0.25], [0.1, 0.05, -0.55]])
    sizes = radius * np.array([0.5, 0.42, 0.36, 0.3])
    points = domains(rng, centres, sizes, ((0, 1), (1, 2), (0, 3)))
    res = resolution_angstrom or 2.5 * voxel_size_angstrom
    vol = render_points(points, np.ones(len(points)), box_size, voxel_size_angstrom, res)
    return vol / vol.max()


def dimer_phantom(box_size: int = 64, voxel_size_angstrom: float = 3.0, resolution_angstrom: float | None = None,
                  seed: int = 0) -> np.ndarray:
    """A near two-fold-symmetric density (the paper's HSP difficulty): a homodimer of two identical
    two-domain subunits related by 180 deg about z, plus one small domain (~5 % of the mass) on one
    subunit only, which is all that tells the true pose from its two-fold partner."""
    rng = np.random.default_rng(104729 + seed)
    radius = 0.3 * box_size * voxel_size_angstrom
    centres = radius * np.array([[0.42, 0.12, 0.1], [0.4, -0.45, -0.25]])
    subunit = domains(rng, centres, radius * np.array([0.4, 0.3]), ((0, 1),))
    partner = subunit * np.array([-1.0, -1.0, 1.0])  # the two-fold about z
    bridge = domains(rng, np.array([centres[0], centres[0] * [-1, -1, 1]]), np.zeros(2), ((0, 1),))
    mark_centre = radius * np.array([[0.45, 0.35, 0.62]])
    mark = domains(rng, np.vstack([centres[:1], mark_centre]), np.array([0.0, 0.22 * radius]), ((0, 1),))
    points = np.concatenate([subunit, partner, bridge, mark])
    res = resolution_angstrom or 2.5 * voxel_size_angstrom
    vol = render_points(points, np.ones(len(points)), box_size, voxel_size_angstrom, res)
    return vol / vol.max()


def shared_model_path() -> pathlib.Path:
    """The 6VXX spike model of the project's shared data ($JAXCRYO_SHARED, else ../shared beside the repo)."""
    root = os.environ.get("JAXCRYO_SHARED") or pathlib.Path(__file__).resolve().parents[2] / "shared"
    return pathlib.Path(root) / "data" / "atomic_models" / "6vxx.pdb.gz"


def read_atoms(path: str | pathlib.Path, chain: str | None = None, max_residue: int | None = None,
               min_residue: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Atom positions (P, 3) in A, centred on the centre of mass, and atomic numbers (P,) of a PDB/mmCIF
    model's first model (one chain and residues min_residue..max_residue if given); gemmi reads it (.gz
    accepted)."""
    try:
        import gemmi
    except ImportError:
        raise InputError(f"{path}: reading atomic models needs gemmi: pip install 'jaxcryo[atoms]'") from None
    path = pathlib.Path(path)
    if not path.is_file():
        raise InputError(f"{path}: atomic model not found")
    try:
        structure = gemmi.read_structure(str(path))
    except Exception as exc:
        raise InputError(f"{path}: not a readable PDB/mmCIF file ({exc})") from None
    xyz, z = [], []
    for ch in structure[0]:
        if chain is not None and ch.name != chain:
            continue
        for residue in ch:
            number = residue.seqid.num
            if (min_residue is not None and number < min_residue) or (max_residue is not None and number > max_residue):
                continue
            for atom in residue:
                xyz.append((atom.pos.x, atom.pos.y, atom.pos.z))
                z.append(atom.element.atomic_number)
    if not xyz:
        bounds = "" if min_residue is None and max_residue is None else \
            f"residues {'' if min_residue is None else min_residue}-{'' if max_residue is None else max_residue}"
        where = [w for w in (f"chain {chain}" if chain else "", bounds) if w]
        raise InputError(f"{path}: no atoms in the first model" + (f" ({', '.join(where)})" if where else ""))
    xyz, z = np.asarray(xyz), np.asarray(z, np.float64)
    return xyz - np.average(xyz, axis=0, weights=z), z


def atomic_model_volume(path: str | pathlib.Path, box_size: int, voxel_size_angstrom: float,
                        resolution_angstrom: float) -> np.ndarray:
    """Density of a PDB/mmCIF model (gemmi; .gz accepted), atoms weighted by atomic number, centred."""
    xyz, z = read_atoms(path)
    extent = np.abs(xyz).max() * 2
    if extent > box_size * voxel_size_angstrom:
        raise InputError(f"{path}: molecule spans {extent:.0f} A, larger than the box "
                         f"{box_size} x {voxel_size_angstrom} A = {box_size * voxel_size_angstrom:.0f} A")
    vol = render_points(xyz, z, box_size, voxel_size_angstrom, resolution_angstrom)
    return vol / vol.max()


# ---- the family ----------------------------------------------------------------------------------

def _unit(rng, n: int = 1) -> np.ndarray:
    v = rng.normal(size=(n, 3))
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _rot_z(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def _with_marker(rng, body: np.ndarray, anchor: np.ndarray, radius: float) -> np.ndarray:
    """body plus one small domain of the given radius touching it just beyond ``anchor``."""
    out = anchor / max(np.linalg.norm(anchor), 1e-6)
    centre = anchor + out * (radius + 4.0)
    return np.concatenate([body, domains(rng, np.vstack([anchor, centre]), np.array([0.0, radius]), ((0, 1),))])


def _compact(rng, box_a: float) -> np.ndarray:
    """3-4 domains packed into a sphere of diameter 25-35 % of the box (one globular particle)."""
    diameter = rng.uniform(0.25, 0.35) * box_a
    n = int(rng.integers(3, 5))
    tetra = np.array([[1, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1]]) / np.sqrt(3)  # spread-out directions
    q = np.linalg.qr(rng.normal(size=(3, 3)))[0]
    directions = tetra[:n] @ q.T + rng.normal(0, 0.15, (n, 3))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    sizes = diameter / 2 * rng.uniform(0.45, 0.6, n)
    centres = directions * (diameter / 2 - sizes)[:, None]
    return domains(rng, centres, sizes, [(i, i + 1) for i in range(n - 1)])


def _elongated(rng, box_a: float) -> np.ndarray:
    """4-5 domains along a gently bent line, 55-65 % of the box long."""
    n = int(rng.integers(4, 6))
    length = rng.uniform(0.55, 0.65) * box_a
    axis, bend = _unit(rng)[0], _unit(rng)[0]
    t = np.linspace(-0.5, 0.5, n)[:, None]
    centres = length * (t * axis + 0.12 * (t**2 - 1 / 12) * bend) + rng.normal(0, 2.0, (n, 3))
    sizes = rng.uniform(0.085, 0.11, n) * box_a
    return domains(rng, centres, sizes, [(i, i + 1) for i in range(n - 1)])


def _flat(rng, box_a: float) -> np.ndarray:
    """5-6 domains in a plane: a disc about 55 % of the box across and a third as thick."""
    n = int(rng.integers(5, 7))
    angles = np.sort(rng.uniform(0, 2 * np.pi, n))
    r = rng.uniform(0.1, 0.2, n) * box_a
    centres = np.stack([r * np.cos(angles), r * np.sin(angles), rng.normal(0, 1.5, n)], 1)
    sizes = rng.uniform(0.07, 0.09, n) * box_a
    return domains(rng, centres, sizes, [(i, (i + 1) % n) for i in range(n)])


def _oligomer(rng, box_a: float, copies: int) -> np.ndarray:
    """``copies`` identical two-domain subunits around z, plus a small domain (~4 % of the mass) on one."""
    radius = 0.17 * box_a
    a = np.array([radius * rng.uniform(0.55, 0.8), rng.normal(0, 3.0), rng.uniform(-0.25, 0.25) * radius])
    b = a + _unit(rng)[0] * radius * 0.65
    sizes = radius * rng.uniform([0.45, 0.32], [0.55, 0.4])
    subunit = domains(rng, np.vstack([a, b]), sizes, ((0, 1),))
    body = np.concatenate([subunit @ _rot_z(2 * np.pi * i / copies).T for i in range(copies)])
    return _with_marker(rng, body, b, 0.3 * sizes[1])


def _ring(rng, box_a: float) -> np.ndarray:
    """An open ring: 6 of 7 evenly spaced positions hold domains of unequal size, 45 % of the box across."""
    r = 0.17 * box_a
    angles = 2 * np.pi * np.arange(6) / 7 + rng.uniform(0, 2 * np.pi)
    centres = np.stack([r * np.cos(angles), r * np.sin(angles), rng.normal(0, 1.0, 6)], 1)
    sizes = rng.uniform(0.055, 0.075, 6) * box_a
    return domains(rng, centres, sizes, [(i, i + 1) for i in range(5)])


def _multidomain(rng, box_a: float) -> np.ndarray:
    """Five domains of similar size in a cluster 45-55 % of the box across, and one small domain."""
    extent = rng.uniform(0.45, 0.55) * box_a / 2
    sizes = rng.uniform(0.075, 0.095, 5) * box_a
    centres = _unit(rng, 5) * (extent - sizes)[:, None] * rng.uniform(0.6, 1.0, (5, 1))
    body = domains(rng, centres, sizes, [(i, i + 1) for i in range(4)])
    return _with_marker(rng, body, centres[-1] * 1.05, 0.35 * sizes[-1])


def _atomic(rng, box_a: float) -> np.ndarray:
    """The S1 subunit (residues up to 685) of one chain of the 6VXX spike (shared/data/atomic_models),
    about 110 A across, randomly turned (needs gemmi)."""
    xyz = read_atoms(shared_model_path(), chain="A", max_residue=685)[0]
    q = np.linalg.qr(rng.normal(size=(3, 3)))[0]
    return xyz @ (q * np.sign(np.linalg.det(q))).T


_MAKERS = {"compact": _compact, "elongated": _elongated, "flat": _flat,
           "dimer": lambda rng, box_a: _oligomer(rng, box_a, 2), "trimer": lambda rng, box_a: _oligomer(rng, box_a, 3),
           "ring": _ring, "multidomain": _multidomain, "atomic": _atomic}


def family_member(name: str, seed: int, box_size: int = 64, voxel_size_angstrom: float = 3.0,
                  resolution_angstrom: float | None = None) -> np.ndarray:
    """(D, D, D) density of family member ``name`` (one of ``FAMILY``) drawn with ``seed``, max 1."""
    if name not in _MAKERS:
        raise KeyError(f"unknown family member {name!r}; members: {', '.join(FAMILY)}")
    rng = np.random.default_rng([hash_name(name), seed])
    return _render(_MAKERS[name](rng, box_size * voxel_size_angstrom), box_size, voxel_size_angstrom,
                   resolution_angstrom)


def hash_name(name: str) -> int:
    """A stable integer per member name (Python's hash() is salted per process)."""
    return int.from_bytes(name.encode(), "little") % (2**31)


def parse_family_source(source: str) -> tuple[str, int] | None:
    """'family:NAME:SEED' -> (NAME, SEED); None for any other volume source."""
    if not source.startswith("family:"):
        return None
    parts = source.split(":")
    if len(parts) != 3 or parts[1] not in FAMILY or not parts[2].isdigit():
        raise KeyError(f"volume source {source!r}: expected family:NAME:SEED with NAME in {', '.join(FAMILY)}")
    return parts[1], int(parts[2])
