"""Independent references shared by tests: analytic Gaussian projections, RELION-form CTF, a strict JSON reader."""

import json

import numpy as np


def gaussian_blobs():
    """(centres (K, 3) as (x, y, z) px from the box centre, sigmas (K,), amplitudes (K,))."""
    centres = np.array([[6.0, -3.0, 2.0], [-7.0, 4.0, -5.0], [2.0, 8.0, 6.0], [-2.0, -6.0, -8.0]])
    return centres, np.array([2.0, 2.5, 3.0, 2.2]), np.array([1.0, 0.7, 0.5, 0.9])


def blob_volume(size):
    centres, sigmas, amps = gaussian_blobs()
    c = np.arange(size) - size // 2
    z, y, x = np.meshgrid(c, c, c, indexing="ij")
    vol = np.zeros((size,) * 3)
    for p, s, a in zip(centres, sigmas, amps):
        vol += a * np.exp(-((x - p[0]) ** 2 + (y - p[1]) ** 2 + (z - p[2]) ** 2) / (2 * s**2))
    return vol


def analytic_projection(rot, size):
    """Integral along z of the blobs: 2D Gaussians of the same sigma at (A p)_xy."""
    centres, sigmas, amps = gaussian_blobs()
    c = np.arange(size) - size // 2
    y, x = np.meshgrid(c, c, indexing="ij")
    img = np.zeros((size, size))
    for p, s, a in zip(centres, sigmas, amps):
        q = rot @ p
        img += a * np.sqrt(2 * np.pi) * s * np.exp(-((x - q[0]) ** 2 + (y - q[1]) ** 2) / (2 * s**2))
    return img


def relion_form_ctf(size, pixel, dfu, dfv, dfang, kv, cs, w, phase=0.0, bfac=0.0):
    """RELION CTF::getCTF in float64: negative defocus, argument = K1 df u^2 + K2 u^4 - K5 - K3, -sin."""
    volts = kv * 1e3
    lam = 12.2643247 / np.sqrt(volts * (1 + volts * 0.978466e-6))
    k1 = np.pi * lam
    k2 = np.pi / 2 * cs * 1e7 * lam**3
    k3 = np.arctan(w / np.sqrt(1 - w * w))
    k4 = -bfac / 4.0
    k5 = np.radians(phase)
    defocus_average = -(dfu + dfv) * 0.5
    defocus_deviation = -(dfu - dfv) * 0.5
    idx = np.arange(size) - size // 2
    ky, kx = np.meshgrid(idx / (size * pixel), idx / (size * pixel), indexing="ij")
    u2 = kx**2 + ky**2
    ang = np.arctan2(ky, kx)
    deltaf = defocus_average + defocus_deviation * np.cos(2 * (ang - np.radians(dfang)))
    argument = k1 * deltaf * u2 + k2 * u2 * u2 - k5 - k3
    return -np.sin(argument) * np.exp(k4 * u2)


def write_pdb(path, residues: dict) -> None:
    """A PDB file written by gemmi: ``residues`` {(chain, number): [(atom name, element, (x, y, z) A)]},
    chains in order of first appearance."""
    import gemmi

    structure, model = gemmi.Structure(), gemmi.Model("1")
    for name in dict.fromkeys(chain for chain, _ in residues):
        chain = gemmi.Chain(name)
        for (chain_name, number), atoms in residues.items():
            if chain_name != name:
                continue
            residue = gemmi.Residue()
            residue.name, residue.seqid = "ALA", gemmi.SeqId(number, " ")
            for atom_name, element, position in atoms:
                atom = gemmi.Atom()
                atom.name, atom.element, atom.pos = atom_name, gemmi.Element(element), gemmi.Position(*position)
                residue.add_atom(atom)
            chain.add_residue(residue)
        model.add_chain(chain)
    structure.add_model(model)
    structure.write_pdb(str(path))


def strict_json_loads(text: str):
    """json.loads as strict readers (jq, JavaScript, Go) read: NaN and Infinity are not JSON."""
    def refuse(constant):
        raise ValueError(f"{constant} is not JSON")

    return json.loads(text, parse_constant=refuse)
