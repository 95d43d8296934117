"""jaxcryo's CTF and Euler convention against numbers printed by other programs (cryoJAX 0.6.0,
cryoDRGN 4.3.1), stored with their provenance in tests/golden/outside_values.json by
tests/golden/make_outside_values.py. The other test files check our own re-derivations; these do not
share a line of code with jaxcryo.

``test_images_match_cryojax`` goes further: whole, shifted particle images that cryoJAX formed from a
pseudo-atomic particle (analytic real-space projection, its own CTF and pose code;
tests/golden/make_outside_images.py) against jaxcryo's forward model (Fourier slice of the same
particle's map, our CTF, our Euler matrices) — every convention between a star file's numbers and
the pixels at once, read through jaxcryo's own front door (a RELION 3.1 star and .mrcs).

The mappings between conventions, each stated by the outside program itself:
* cryoJAX's CTF is sin(chi' - phase - atan(w / sqrt(1 - w^2))) with chi' = -chi: minus RELION's (and
  ours), the dark-protein sign cryoDRGN also uses; its azimuth is atan2(k_x, k_y), measured from the
  k_y axis, so its astigmatism angle is 90 deg minus RELION's rlnDefocusAngle; its mean defocus and
  astigmatism are (dfU + dfV) / 2 and dfU - dfV.
* cryoDRGN's R_from_relion is RELION's matrix as is; cryoJAX's EulerAnglePose takes each RELION
  angle negated (its documentation).
"""

import json
import pathlib

import numpy as np
import pytest

import jax.numpy as jnp
import mrcfile
import pandas as pd
import starfile

from jaxcryo import ctf, geometry, losses, slicing
from jaxcryo.io import check_stacks, read_particles
from jaxcryo.io.loader import ImageSource
from jaxcryo.io.table import CTF_FIELDS

IMAGES = np.load(pathlib.Path(__file__).parent / "golden" / "outside_images.npz")
GOLDEN = json.loads((pathlib.Path(__file__).parent / "golden" / "outside_values.json").read_text())


def _our_ctf(case):
    mean, astig = case["defocus_in_angstroms"], case["astigmatism_in_angstroms"]
    freqs = np.asarray(GOLDEN["freqs_per_angstrom"], np.float64)
    return np.asarray(ctf.compute_ctf(freqs, mean + astig / 2, mean - astig / 2, 90.0 - case["astigmatism_angle_deg"],
                                      case["voltage_kv"], case["spherical_aberration_mm"], case["amplitude_contrast"],
                                      case["phase_shift_deg"]))


@pytest.mark.parametrize("index", range(3))
def test_ctf_matches_cryojax(index):
    case = GOLDEN["ctf_cryojax"][index]
    # the outside values were made at RELION's wavelength, which is the one jaxcryo computes
    assert float(ctf.electron_wavelength_angstrom(case["voltage_kv"])) == pytest.approx(
        case["wavelength_angstrom_used"], rel=1e-12)
    ours = _our_ctf(case)
    np.testing.assert_allclose(ours, -np.asarray(case["ctf"]), atol=1e-9)
    assert np.abs(ours - np.asarray(case["ctf"])).max() > 0.5  # the sign is not a detail the test could miss


def test_ctf_angle_convention_matters():
    case = dict(GOLDEN["ctf_cryojax"][0])
    case["astigmatism_angle_deg"] = 90.0 - case["astigmatism_angle_deg"]  # RELION's angle used as cryoJAX's
    assert np.abs(_our_ctf(case) + np.asarray(GOLDEN["ctf_cryojax"][0]["ctf"])).max() > 0.05


def test_wavelength_against_cryojax():
    # cryoJAX uses exact physical constants, RELION (and jaxcryo) a rounded formula: 3e-5 apart at 300 kV
    for kv, value in GOLDEN["wavelength_angstrom_cryojax"].items():
        assert float(ctf.electron_wavelength_angstrom(float(kv))) == pytest.approx(value, rel=1e-4)


def test_euler_matches_cryodrgn_and_cryojax():
    eulers = np.asarray(GOLDEN["euler_relion_deg"], np.float64)
    ours = np.asarray(geometry.euler_to_matrix(eulers))
    np.testing.assert_allclose(ours, np.asarray(GOLDEN["rotation_cryodrgn_R_from_relion"]), atol=1e-12)
    np.testing.assert_allclose(ours, np.asarray(GOLDEN["rotation_cryojax_EulerAnglePose_negated"]), atol=1e-12)
    # and the inverse map gives back angles with the same matrix (poles put all in-plane rotation in psi)
    again = np.asarray(geometry.euler_to_matrix(geometry.matrix_to_euler(ours)))
    np.testing.assert_allclose(again, ours, atol=1e-9)
    assert np.abs(ours - np.swapaxes(ours, -1, -2)).max() > 0.5  # transposed would be caught


def _write_star(directory, euler_deg, origin_angstrom) -> str:
    """The golden images as a user's RELION 3.1 star + .mrcs, with the given angles and origins."""
    images = IMAGES["images"]
    with mrcfile.new(directory / "outside.mrcs", overwrite=True) as stack:
        stack.set_data(images)
    du, dv, angle = np.asarray(IMAGES["defocus_u_v_angle"]).T
    optics = pd.DataFrame({"rlnOpticsGroup": [1], "rlnAmplitudeContrast": [0.1], "rlnSphericalAberration": [2.7],
                           "rlnVoltage": [300.0], "rlnImagePixelSize": [float(IMAGES["pixel_size_angstrom"])],
                           "rlnImageSize": [images.shape[-1]], "rlnImageDimensionality": [2]})
    euler, origin = np.asarray(euler_deg), np.asarray(origin_angstrom)
    particles = pd.DataFrame({"rlnImageName": [f"{i + 1}@outside.mrcs" for i in range(len(images))],
                              "rlnDefocusU": du, "rlnDefocusV": dv, "rlnDefocusAngle": angle, "rlnOpticsGroup": 1,
                              "rlnAngleRot": euler[:, 0], "rlnAngleTilt": euler[:, 1], "rlnAnglePsi": euler[:, 2],
                              "rlnOriginXAngst": origin[:, 0], "rlnOriginYAngst": origin[:, 1]})
    starfile.write({"optics": optics, "particles": particles}, directory / "outside.star", overwrite=True)
    return str(directory / "outside.star")


def _correlations(directory, euler_deg, origin_angstrom):
    """Per image: correlation of jaxcryo's prediction (from the star as read by jaxcryo's front door)
    with cryoJAX's image."""
    table = read_particles(_write_star(directory, euler_deg, origin_angstrom))
    source = ImageSource(table, check_stacks(table))
    rows = np.arange(len(table))
    grid = ctf.ctf_grid(source.image_size, table.pixel_size_angstrom,
                        **{k: getattr(table, k) for k in CTF_FIELDS})
    volume_h = slicing.volume_to_hartley(jnp.asarray(IMAGES["map"], jnp.float32))
    ours = np.asarray(losses.predict(volume_h, jnp.asarray(table.rotations(), jnp.float32), jnp.asarray(grid, jnp.float32),
                                     jnp.asarray(table.displacements_px(source.pixel_size_angstrom))))
    theirs = np.asarray(losses.images_to_hartley(jnp.asarray(source.read(rows), jnp.float32)))
    return np.array([np.corrcoef(a.ravel(), b.ravel())[0, 1] for a, b in zip(ours, theirs)])


def test_images_match_cryojax(tmp_path):
    euler, origin = IMAGES["euler_relion_deg"], IMAGES["origin_relion_angstrom"]
    # measured 0.995-0.9998 (the residual: trilinear slicing of the rendered map against analytic
    # projection); the CTF's sign flipped would give -0.99
    assert _correlations(tmp_path, euler, origin).min() > 0.99
    # cryoJAX's angles taken for RELION's, and the origins' sign flipped: both far off
    assert _correlations(tmp_path, -np.asarray(euler), origin).mean() < 0.7
    assert _correlations(tmp_path, euler, -np.asarray(origin))[1:].max() < 0.9  # image 0 is centred
