"""A particle set from an outside simulator, to test jaxcryo on data its own simulator did not make:
python -m experiments.outside_sim --outdir=DIR [--n_images=5000 --seed=11 --snr=0.1 --realistic]
    [--atomic_model=PDB --atoms=A:27-305] [--box=64 --pixel_size_angstrom=3]
    [--voltage_kv=300 --spherical_aberration_mm=2.7 --amplitude_contrast=0.1 --defocus_um=1,2.5]

Needs cryoJAX (``pip install -e .[outside]``), used for every step of image formation: the particle
is a mixture of Gaussian pseudo-atoms (``GaussianMixtureVolume``) projected analytically in real space
(``GaussianMixtureProjection``: no Fourier slice, no interpolation), posed by ``EulerAnglePose`` and
blurred by ``AstigmaticCTF`` on a grid padded 2x — none of it jaxcryo's code. The particle itself is
new: two pseudo-atomic lobes of unequal size (random walks of 3.8 A steps confined to ellipsoids,
~1,700 pseudo-atoms, ~60 x 45 x 30 A) bridged by a helix-like arm; ``--shape_seed`` draws the lobes'
sizes and directions, so each seed is another particle. ``--atomic_model`` (a PDB/mmCIF file, .gz
accepted; gemmi reads it) with ``--atoms=CHAIN:FIRST-LAST`` takes a real protein instead: those residues'
atoms, each with its tabulated electron scattering factor (Peng 1996, five Gaussians per element;
cryoJAX's ``GaussianMixtureVolume.from_tabulated_parameters``).

Conventions, as cryoJAX documents them (checked image by image in tests/test_outside_golden.py):
RELION's angles are cryoJAX's negated, rlnDefocusAngle is 90 deg minus cryoJAX's astigmatism angle,
RELION's origin is minus cryoJAX's offset, and cryoJAX's CTF is minus RELION's, so the images are
negated (protein white, as RELION extracts it). SNR is the clean images' variance over the noise's.

Writes DIR/particles.star (RELION 3.1, optics + particles, no poses) and particles.mrcs,
DIR/ground_truth_poses.star (the same rows with rlnAngleRot/Tilt/Psi and rlnOriginX/YAngst) and
DIR/ground_truth.mrc (the pseudo-atoms rendered on the images' grid) — the layout ``experiments.zoo``
reads, so ``zoo.reference`` and ``zoo.pose_floor`` apply. ``--realistic`` adds issue 11's effects, each
drawn here and not by jaxcryo: offsets up to +-5 % of the box, astigmatism |N(0, 700)| A up to
1,500 A, a B-factor envelope of 80 A^2, contrast 1 +- 15 %, coloured noise (power falling
exponentially 10x from k = 0 to Nyquist) and per-image background offsets.
"""

import pathlib
import re

import numpy as np
from absl import app, flags

from experiments import cli

BOX, PIXEL_ANGSTROM, BATCH = 64, 3.0, 250  # the default set: 64 px at 3 A/px
OPTICS = {"voltage_kv": 300.0, "spherical_aberration_mm": 2.7, "amplitude_contrast": 0.1}  # the default microscope
DEFOCUS_ANGSTROM = (10000.0, 25000.0)  # the default range of mean defocus

_OUTDIR = flags.DEFINE_string("outdir", None, "Directory to write the particle set into.")
_N = flags.DEFINE_integer("n_images", 5000, "Number of particles.")
_SEED = flags.DEFINE_integer("seed", 11, "Seed of poses, CTFs and noise.")
_SHAPE_SEED = flags.DEFINE_integer("shape_seed", None, "Seed of the particle's shape (default: --seed).")
_SNR = flags.DEFINE_float("snr", 0.1, "Signal-to-noise ratio (variance of the clean images over the noise's).")
_TWO_FOLD = flags.DEFINE_bool("two_fold", False, "A pseudo-two-fold dimer (an arm the only large asymmetry).")
_REALISTIC = flags.DEFINE_bool("realistic", False, "Offsets, astigmatism, B factor, contrast, coloured noise.")
_SHIFT = flags.DEFINE_float("max_shift_fraction", 0.05, "With --realistic: offsets up to this fraction of the box "
                            "(0: centred particles, the same draws of everything else).")
_COLOUR = flags.DEFINE_float("noise_power_ratio", 10.0, "With --realistic: the noise power at k = 0 over that at "
                             "Nyquist (1: white noise, the same draws of everything else).")
_BOX = flags.DEFINE_integer("box", BOX, "Image box (px).")
_PIXEL = flags.DEFINE_float("pixel_size_angstrom", PIXEL_ANGSTROM, "Pixel size (A); the particle keeps its size in A.")
_MODEL = flags.DEFINE_string("atomic_model", None, "A PDB/mmCIF file (.gz accepted): image its atoms instead.")
_ATOMS = flags.DEFINE_string("atoms", None, "With --atomic_model: CHAIN:FIRST-LAST, the residues to image.")
_VOLTAGE = flags.DEFINE_float("voltage_kv", OPTICS["voltage_kv"], "Accelerating voltage (kV).")
_CS = flags.DEFINE_float("spherical_aberration_mm", OPTICS["spherical_aberration_mm"], "Spherical aberration (mm).")
_AMPLITUDE = flags.DEFINE_float("amplitude_contrast", OPTICS["amplitude_contrast"], "Amplitude contrast ratio.")
_DEFOCUS = flags.DEFINE_list("defocus_um", [f"{v / 1e4:g}" for v in DEFOCUS_ANGSTROM], "MIN,MAX: mean defocus uniform in this range (um).")
flags.mark_flags_as_required(["outdir"])


def confined_walk(n: int, centre: np.ndarray, semi_axes_angstrom: np.ndarray, rng) -> np.ndarray:
    """(n, 3) pseudo-atoms of a random walk with 3.8 A steps that stays inside an ellipsoid."""
    p, points = np.array(centre, float), []
    for _ in range(n):
        for _ in range(50):
            q = p + 3.8 * rng.standard_normal(3) / np.sqrt(3)
            if np.sum(((q - centre) / semi_axes_angstrom) ** 2) <= 1:
                break
        p = q
        points.append(p)
    return np.array(points)


def pseudo_atoms(shape_seed: int, two_fold: bool = False) -> np.ndarray:
    """(M, 3) pseudo-atom positions in A about the centre of mass: two unequal lobes and an arm; with
    ``two_fold`` a pseudo-symmetric dimer instead: the first lobe and its copy turned 180 deg about an
    axis through the centre (the copy's walk redrawn at 30 % of its atoms, so the halves differ in
    detail), the arm the only large asymmetric feature."""
    rng = np.random.default_rng(shape_seed)
    u = rng.normal(size=3)
    u /= np.linalg.norm(u)
    w = rng.normal(size=3)
    w -= w @ u * u
    w /= np.linalg.norm(w)
    c1, c2 = -12 * u, 18 * u + 5 * w
    parts = [confined_walk(1100, c1, np.array([22, 17, 15]) * rng.uniform(0.85, 1.2, 3), rng),
             confined_walk(600, c2, np.array([14, 13, 11]) * rng.uniform(0.8, 1.25, 3), rng)]
    if two_fold:
        lobe = confined_walk(800, -17 * u, np.array([16, 14, 13]) * rng.uniform(0.85, 1.15, 3), rng)
        turn = 2 * np.outer(w, w) - np.eye(3)  # 180 deg about w
        copy = lobe @ turn.T
        redraw = rng.random(len(copy)) < 0.3
        copy[redraw] = confined_walk(int(redraw.sum()), 17 * u, np.array([16, 14, 13]), rng)
        parts = [lobe, copy]
        c2 = 17 * u
    t = np.linspace(0, 1, 45)[:, None]
    a0, a1 = 0.3 * c2 - 14 * w, c2 + 14 * w + 10 * np.cross(u, w)
    parts.append((1 - t) * a0 + t * a1 + 2.3 * np.c_[np.cos(t * 40), np.sin(t * 40), 0 * t])
    xyz = np.concatenate(parts)
    return xyz - xyz.mean(0)


def model_atoms(path: str, selection: str) -> tuple[np.ndarray, np.ndarray]:
    """(M, 3) positions in A about their centre and (M,) atomic numbers of the atoms of one chain's
    residues FIRST-LAST (``selection`` "CHAIN:FIRST-LAST") in the first model of ``path``, read by the
    zoo's reader (``phantoms.read_atoms``; only the atom list, not the image formation, is jaxcryo's).
    Hydrogens are left out: most deposited models have none, and a set should not depend on whether
    its model's authors added them."""
    from jaxcryo import phantoms
    from jaxcryo.io import InputError

    match = re.fullmatch(r"(\w+):(-?\d+)-(-?\d+)", selection or "")
    if match is None:
        raise app.UsageError(f"--atoms={selection!r}: give CHAIN:FIRST-LAST, e.g. A:27-305")
    chain, first, last = match.group(1), int(match.group(2)), int(match.group(3))
    try:
        xyz, atomic_numbers = phantoms.read_atoms(path, chain, min_residue=first, max_residue=last)
    except InputError as exc:
        raise app.UsageError(str(exc)) from None
    heavy = atomic_numbers > 1
    if not heavy.any():
        raise app.UsageError(f"{path}: only hydrogens in chain {chain}, residues {first}-{last}")
    xyz = xyz[heavy]
    return xyz - xyz.mean(0), atomic_numbers[heavy].astype(int)


def draw_particles(n: int, realistic: bool, rng, max_shift_fraction: float = 0.05, box: int = BOX,
                   pixel_angstrom: float = PIXEL_ANGSTROM, defocus_angstrom: tuple = DEFOCUS_ANGSTROM) -> dict:
    """RELION angles uniform on SO(3) (deg), mean defocus uniform in ``defocus_angstrom``, astigmatism and
    displacements (A). The displacements are drawn whatever their bound, so a centred set shares every
    other draw."""
    astigmatism = np.minimum(np.abs(rng.normal(0, 700 if realistic else 350, n)), 1500)
    mean = rng.uniform(*defocus_angstrom, n)
    return {"rot": rng.uniform(-180, 180, n), "tilt": np.degrees(np.arccos(rng.uniform(-1, 1, n))),
            "psi": rng.uniform(-180, 180, n), "defocus_u": mean + astigmatism / 2, "defocus_v": mean - astigmatism / 2,
            "defocus_angle": rng.uniform(0, 180, n),
            "displacement": (rng.uniform(-max_shift_fraction, max_shift_fraction, (n, 2)) * box * pixel_angstrom
                             if realistic else np.zeros((n, 2)))}


def clean_images(xyz: np.ndarray, p: dict, atomic_numbers: np.ndarray | None = None, box: int = BOX,
                 pixel_angstrom: float = PIXEL_ANGSTROM, optics: dict = OPTICS) -> tuple[np.ndarray, np.ndarray]:
    """cryoJAX's noise-free images (N, box, box) of the (M, 3) atoms at ``p``, and the map (box,)^3:
    pseudo-atoms (Gaussians of variance 3 A^2), or with ``atomic_numbers`` their scattering factors;
    ``optics`` as ``OPTICS``."""
    import jax
    import jax.numpy as jnp
    import cryojax.constants as cxc
    import cryojax.simulator as cxs

    if atomic_numbers is None:
        volume = cxs.GaussianMixtureVolume(jnp.asarray(xyz, jnp.float32), 1.0, 3.0)
    else:
        volume = cxs.GaussianMixtureVolume.from_tabulated_parameters(
            jnp.asarray(xyz, jnp.float32), cxc.PengScatteringFactorParameters(np.asarray(atomic_numbers)))

    @jax.jit
    @jax.vmap
    def simulate(rot, tilt, psi, du, dv, angle, dx, dy):
        config = cxs.BasicImageConfig((box, box), pixel_angstrom, optics["voltage_kv"], pad_scale=2.0)  # built here: it caches grids
        pose = cxs.EulerAnglePose(dx, dy, phi_angle=-rot, theta_angle=-tilt, psi_angle=-psi)
        ctf = cxs.AstigmaticCTF(defocus_in_angstroms=(du + dv) / 2, astigmatism_in_angstroms=du - dv,
                                astigmatism_angle=90.0 - angle, spherical_aberration_in_mm=optics["spherical_aberration_mm"])
        transfer = cxs.ContrastTransferTheory(ctf, amplitude_contrast_ratio=optics["amplitude_contrast"])
        model = cxs.make_image_model(volume, config, pose, transfer,
                                     cxs.GaussianMixtureProjection())
        return -model.simulate()

    columns = [p["rot"], p["tilt"], p["psi"], p["defocus_u"], p["defocus_v"], p["defocus_angle"],
               p["displacement"][:, 0], p["displacement"][:, 1]]
    images = np.concatenate([np.asarray(simulate(*[jnp.asarray(c[i:i + BATCH], jnp.float32) for c in columns]))
                             for i in range(0, len(p["rot"]), BATCH)])
    volume_map = np.asarray(cxs.AutoVolumeRenderFn(shape=(box,) * 3, voxel_size=pixel_angstrom)(volume), np.float32)
    return images, volume_map


def add_noise(clean: np.ndarray, snr: float, realistic: bool, rng, noise_power_ratio: float = 10.0,
              pixel_angstrom: float = PIXEL_ANGSTROM) -> np.ndarray:
    """Gaussian noise at ``snr``; with ``realistic`` first the B 80 A^2 envelope and contrast scales, and
    the noise coloured (its power falling exponentially by ``noise_power_ratio`` from k = 0 to Nyquist),
    plus a background offset per image."""
    n = len(clean)
    box = clean.shape[-1]
    k = np.sqrt(np.add.outer(np.fft.fftfreq(box) ** 2, np.fft.fftfreq(box) ** 2))  # cycles per pixel
    if realistic:
        clean = np.real(np.fft.ifft2(np.fft.fft2(clean) * np.exp(-80.0 * (k / pixel_angstrom) ** 2 / 4)))
        clean = clean * rng.uniform(0.85, 1.15, n)[:, None, None]
    sigma = np.sqrt(clean.var(axis=(1, 2)).mean() / snr)
    noise = rng.standard_normal(clean.shape)
    if realistic:
        noise = np.real(np.fft.ifft2(np.fft.fft2(noise) * np.sqrt(noise_power_ratio ** (-np.minimum(k, 0.5) / 0.5))))
        noise /= noise.std()
    images = clean + sigma * noise
    if realistic:
        images = images + 0.2 * sigma * rng.standard_normal(n)[:, None, None]
    return images.astype(np.float32)


def write_set(outdir: pathlib.Path, images: np.ndarray, volume_map: np.ndarray, p: dict,
              pixel_angstrom: float = PIXEL_ANGSTROM, optics: dict = OPTICS) -> None:
    import mrcfile
    import pandas as pd
    import starfile

    outdir.mkdir(parents=True, exist_ok=True)
    for name, data in (("particles.mrcs", images), ("ground_truth.mrc", volume_map)):
        with mrcfile.new(outdir / name, overwrite=True) as f:
            f.set_data(data)
            f.voxel_size = pixel_angstrom
    n = len(images)
    group = pd.DataFrame({"rlnOpticsGroup": [1], "rlnOpticsGroupName": ["opticsGroup1"],
                          "rlnAmplitudeContrast": [optics["amplitude_contrast"]],
                          "rlnSphericalAberration": [optics["spherical_aberration_mm"]],
                          "rlnVoltage": [optics["voltage_kv"]], "rlnImagePixelSize": [pixel_angstrom],
                          "rlnImageSize": [images.shape[-1]], "rlnImageDimensionality": [2]})
    particles = pd.DataFrame({"rlnImageName": [f"{i + 1:06d}@particles.mrcs" for i in range(n)],
                              "rlnMicrographName": [f"mic{i // 100:04d}.mrc" for i in range(n)],
                              "rlnDefocusU": p["defocus_u"], "rlnDefocusV": p["defocus_v"],
                              "rlnDefocusAngle": p["defocus_angle"], "rlnOpticsGroup": 1})
    starfile.write({"optics": group, "particles": particles}, outdir / "particles.star", overwrite=True)
    truth = particles.assign(rlnAngleRot=p["rot"], rlnAngleTilt=p["tilt"], rlnAnglePsi=p["psi"],
                             rlnOriginXAngst=-p["displacement"][:, 0], rlnOriginYAngst=-p["displacement"][:, 1])
    starfile.write({"optics": group, "particles": truth}, outdir / "ground_truth_poses.star", overwrite=True)


def main(argv):
    del argv
    shape_seed = _SEED.value if _SHAPE_SEED.value is None else _SHAPE_SEED.value
    rng = np.random.default_rng(_SEED.value)
    if _ATOMS.value and not _MODEL.value:
        raise app.UsageError("--atoms selects residues of an --atomic_model; give the model file too")
    if _MODEL.value and (_TWO_FOLD.value or _SHAPE_SEED.value is not None):
        raise app.UsageError("--two_fold and --shape_seed shape the pseudo-atomic particle; --atomic_model replaces it")
    if not 0 <= _SHIFT.value <= 0.5:
        raise app.UsageError(f"--max_shift_fraction={_SHIFT.value}: give a fraction of the box in [0, 0.5]")
    if not _COLOUR.value >= 1:
        raise app.UsageError(f"--noise_power_ratio={_COLOUR.value}: give a ratio >= 1 (1: white noise)")
    for name in ("max_shift_fraction", "noise_power_ratio"):
        if flags.FLAGS[name].present and not _REALISTIC.value:
            raise app.UsageError(f"--{name} sets one of --realistic's effects; give --realistic too")
    if _BOX.value < 16 or not _PIXEL.value > 0:
        raise app.UsageError(f"--box={_BOX.value} --pixel_size_angstrom={_PIXEL.value}: give a box of at least 16 px "
                             "and a positive pixel size")
    try:
        defocus = tuple(1e4 * float(v) for v in _DEFOCUS.value)
    except ValueError:
        defocus = ()
    if len(defocus) != 2 or not 0 < defocus[0] <= defocus[1]:
        raise app.UsageError(f"--defocus_um={','.join(_DEFOCUS.value)}: give MIN,MAX in um with 0 < MIN <= MAX")
    if not (_VOLTAGE.value > 0 and _CS.value >= 0 and 0 <= _AMPLITUDE.value < 1):
        raise app.UsageError(f"--voltage_kv={_VOLTAGE.value} --spherical_aberration_mm={_CS.value} --amplitude_contrast="
                             f"{_AMPLITUDE.value}: give a positive voltage, Cs >= 0 and an amplitude contrast in [0, 1)")
    optics = dict(zip(OPTICS, (_VOLTAGE.value, _CS.value, _AMPLITUDE.value)))
    if _MODEL.value:
        xyz, atomic_numbers = model_atoms(_MODEL.value, _ATOMS.value)
    else:
        xyz, atomic_numbers = pseudo_atoms(shape_seed, _TWO_FOLD.value), None
    box, pixel = _BOX.value, _PIXEL.value
    p = draw_particles(_N.value, _REALISTIC.value, rng, _SHIFT.value, box, pixel, defocus)
    clean, volume_map = clean_images(xyz, p, atomic_numbers, box, pixel, optics)
    images = add_noise(clean, _SNR.value, _REALISTIC.value, rng, _COLOUR.value, pixel)
    write_set(pathlib.Path(_OUTDIR.value), images, volume_map, p, pixel, optics)
    print(f"wrote {_N.value} images of a {len(xyz)}-{'' if _MODEL.value else 'pseudo-'}atom particle (extent {np.ptp(xyz, 0).round(0)} A) "
          f"to {_OUTDIR.value}")


if __name__ == "__main__":
    app.run(main, flags_parser=cli.parse_flags)
