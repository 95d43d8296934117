"""Writes outside_values.json: CTF and Euler-angle values computed by programs other than jaxcryo.

Not run by the tests (they only read the JSON); kept so anyone can regenerate and check the numbers.
Run it in a separate environment that has the outside programs, never in jaxcryo's own:

    python -m venv /tmp/outside && /tmp/outside/bin/pip install cryojax==0.6.0 pyyaml
    /tmp/outside/bin/pip install --no-deps cryodrgn==4.3.1
    /tmp/outside/bin/python tests/golden/make_outside_values.py

* CTF: cryoJAX 0.6.0, ``cryojax.simulator.AstigmaticCTF`` called on chosen (k_x, k_y) points, and
  ``cryojax.constants.wavelength_from_kilovolts``. The CTF is evaluated at the wavelength of RELION's
  formula (passed in), so the CTF formula and the wavelength are compared separately.
* Euler angles: cryoDRGN 4.3.1, ``cryodrgn.utils.R_from_relion`` (RELION's rot, tilt, psi to the
  matrix cryoDRGN uses on its poses). Its module imports torch and igraph at the top, so only that
  function's own source is compiled here (it needs numpy alone); and cryoJAX's ``EulerAnglePose`` with
  each angle negated, as its documentation says converts RELION angles.
"""

import ast
import importlib.metadata as metadata
import json
import pathlib

import numpy as np

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import cryodrgn  # noqa: E402
from cryojax.constants import wavelength_from_kilovolts  # noqa: E402
from cryojax.simulator import AstigmaticCTF, EulerAnglePose  # noqa: E402

FREQS = [[0.05, 0.0], [0.0, 0.05], [0.03, 0.04], [-0.06, 0.02], [0.1, -0.07], [0.12, 0.09], [-0.15, -0.11],
         [0.2, 0.05]]  # (k_x, k_y) in 1/A
# (mean defocus, astigmatism, cryoJAX angle, kV, Cs mm, amplitude contrast, phase shift deg)
CTF_CASES = [(15000.0, 1000.0, 60.0, 300.0, 2.7, 0.1, 0.0), (22000.0, -800.0, 125.0, 200.0, 2.0, 0.07, 0.0),
             (8000.0, 300.0, -20.0, 300.0, 0.01, 0.1, 90.0)]
EULER_CASES = [[10.0, 20.0, 30.0], [-75.0, 130.0, 250.0], [0.0, 90.0, 0.0], [45.0, 0.0, -45.0],
               [170.0, 180.0, 15.0], [-120.0, 60.0, 95.0]]


def relion_wavelength(kv: float) -> float:
    volts = kv * 1e3
    return 12.2643247 / np.sqrt(volts * (1.0 + 0.978466e-6 * volts))


def cryodrgn_r_from_relion():
    path = pathlib.Path(cryodrgn.__file__).parent / "utils.py"
    tree = ast.parse(path.read_text())
    fn = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "R_from_relion"]
    namespace = {"np": np}
    exec(compile(ast.Module(fn, []), str(path), "exec"), namespace)
    return namespace["R_from_relion"]


def main():
    ctf_rows = []
    for mean, astig, angle, kv, cs, w, phase in CTF_CASES:
        ctf = AstigmaticCTF(defocus_in_angstroms=mean, astigmatism_in_angstroms=astig, astigmatism_angle=angle,
                            spherical_aberration_in_mm=cs)
        values = ctf(jnp.asarray(FREQS)[None], relion_wavelength(kv), amplitude_contrast_ratio=w, phase_shift=phase)
        ctf_rows.append({"defocus_in_angstroms": mean, "astigmatism_in_angstroms": astig,
                         "astigmatism_angle_deg": angle, "voltage_kv": kv, "spherical_aberration_mm": cs,
                         "amplitude_contrast": w, "phase_shift_deg": phase,
                         "wavelength_angstrom_used": relion_wavelength(kv),
                         "ctf": np.asarray(values)[0].tolist()})
    wavelengths = {str(kv): float(wavelength_from_kilovolts(kv)) for kv in (100.0, 200.0, 300.0)}
    r_from_relion = cryodrgn_r_from_relion()
    eulers = np.asarray(EULER_CASES)
    cryojax_mats = [np.asarray(EulerAnglePose(phi_angle=-a, theta_angle=-b, psi_angle=-c).rotation.as_matrix()).tolist()
                    for a, b, c in EULER_CASES]
    out = {
        "provenance": {
            "cryojax": metadata.version("cryojax"), "cryodrgn": metadata.version("cryodrgn"),
            "jax": jax.__version__, "script": "tests/golden/make_outside_values.py",
        },
        "freqs_per_angstrom": FREQS,
        "ctf_cryojax": ctf_rows,
        "wavelength_angstrom_cryojax": wavelengths,
        "euler_relion_deg": EULER_CASES,
        "rotation_cryodrgn_R_from_relion": r_from_relion(eulers).tolist(),
        "rotation_cryojax_EulerAnglePose_negated": cryojax_mats,
    }
    target = pathlib.Path(__file__).with_name("outside_values.json")
    target.write_text(json.dumps(out, indent=1) + "\n")
    print("wrote", target)


if __name__ == "__main__":
    main()
