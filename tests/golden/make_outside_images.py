"""Writes outside_images.npz: whole particle images formed by cryoJAX 0.6.0 (an outside simulator), with
the map they were formed from, for the end-to-end convention test in tests/test_outside_golden.py.

Not run by the tests (they only read the .npz); kept so anyone can regenerate and check it, in a
separate environment that has cryoJAX, never in jaxcryo's own:

    python -m venv /tmp/outside && /tmp/outside/bin/pip install cryojax==0.6.0
    /tmp/outside/bin/python tests/golden/make_outside_images.py

cryoJAX forms each image its own way: the particle is a mixture of Gaussian pseudo-atoms projected
analytically in real space (``GaussianMixtureProjection``: no Fourier slice, no interpolation), the
pose is ``EulerAnglePose`` with RELION's angles negated (and its offset the particle's displacement, minus RELION's origin) and the CTF ``AstigmaticCTF`` with RELION's
defocus angle turned into cryoJAX's (90 deg minus it) — both as cryoJAX documents (see
test_outside_golden.py) — on a grid padded 2x before the CTF. cryoJAX's CTF is minus RELION's, so the
images are negated: protein white, as RELION extracts it. The map is the same Gaussians rendered on
the image grid (``AutoVolumeRenderFn``), stored as float16 to keep the file small.
"""

import importlib.metadata as metadata
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import cryojax.simulator as cxs

BOX, PIXEL_ANGSTROM = 32, 4.0
# RELION rot, tilt, psi (deg); defocus U, V (A) and rlnDefocusAngle (deg)
POSES = [[10.0, 20.0, 30.0], [-75.0, 130.0, 250.0], [0.0, 90.0, 0.0], [45.0, 60.0, -45.0], [170.0, 150.0, 15.0],
         [-120.0, 75.0, 95.0]]
# each particle's displacement from the box centre (A), cryoJAX's pose offset: positive moves the particle
# towards +x / +y (cryoJAX's documented convention, the opposite of RELION's origin: cryoJAX PR #364,
# ASPIRE-Python issue #1146), stored as RELION's rlnOriginXAngst/YAngst = minus it
OFFSETS = [[0.0, 0.0], [6.0, -10.0], [-8.0, 4.0], [0.0, 12.0], [10.0, 2.0], [-5.0, -7.0]]
DEFOCI = [[15500.0, 14500.0, 30.0], [22000.0, 21200.0, 125.0], [9000.0, 9000.0, 0.0], [18000.0, 16800.0, 70.0],
          [12000.0, 11700.0, 160.0], [25000.0, 24000.0, 95.0]]


def particle(seed: int = 3) -> np.ndarray:
    """(M, 3) pseudo-atom positions (A): an asymmetric particle, two unequal lobes and an arm."""
    rng = np.random.default_rng(seed)
    big = rng.normal(0, 1, (240, 3)) * [11.0, 8.0, 7.0] + [-8.0, 0.0, 0.0]
    small = rng.normal(0, 1, (110, 3)) * [6.0, 5.0, 5.0] + [14.0, 5.0, -2.0]
    t = np.linspace(0, 1, 30)[:, None]
    arm = (1 - t) * np.array([0.0, -8.0, 8.0]) + t * np.array([16.0, -22.0, 12.0])
    xyz = np.concatenate([big, small, arm])
    return xyz - xyz.mean(0)


def main():
    volume = cxs.GaussianMixtureVolume(jnp.asarray(particle(), jnp.float32), 1.0, 4.0)

    def image(pose, offset, defocus):
        config = cxs.BasicImageConfig((BOX, BOX), PIXEL_ANGSTROM, 300.0, pad_scale=2.0)
        rot, tilt, psi = pose
        du, dv, angle = defocus
        ctf = cxs.AstigmaticCTF(defocus_in_angstroms=(du + dv) / 2, astigmatism_in_angstroms=du - dv,
                                astigmatism_angle=90.0 - angle, spherical_aberration_in_mm=2.7)
        model = cxs.make_image_model(volume, config, cxs.EulerAnglePose(offset[0], offset[1], phi_angle=-rot, theta_angle=-tilt,
                                                                          psi_angle=-psi),
                                     cxs.ContrastTransferTheory(ctf, amplitude_contrast_ratio=0.1),
                                     cxs.GaussianMixtureProjection())
        return -model.simulate()

    images = np.stack([np.asarray(image(p, o, d), np.float32) for p, o, d in zip(POSES, OFFSETS, DEFOCI)])
    volume_map = np.asarray(cxs.AutoVolumeRenderFn(shape=(BOX,) * 3, voxel_size=PIXEL_ANGSTROM)(volume), np.float32)
    target = pathlib.Path(__file__).with_name("outside_images.npz")
    np.savez_compressed(target, images=images, map=volume_map.astype(np.float16), euler_relion_deg=np.asarray(POSES),
                        origin_relion_angstrom=-np.asarray(OFFSETS),
                        defocus_u_v_angle=np.asarray(DEFOCI), pixel_size_angstrom=PIXEL_ANGSTROM, voltage_kv=300.0,
                        spherical_aberration_mm=2.7, amplitude_contrast=0.1,
                        provenance=np.asarray(f"cryojax {metadata.version('cryojax')}, jax {jax.__version__}, "
                                              "tests/golden/make_outside_images.py"))
    print("wrote", target, target.stat().st_size, "bytes")


if __name__ == "__main__":
    main()
