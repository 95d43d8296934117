"""Phase-flipped stacks (RELION's rlnCtfDataArePhaseFlipped) are modelled with |CTF|; CTF-premultiplied
ones (rlnCtfDataAreCtfPremultiplied) are refused. The flip applied to the images here is computed with
the float64 RELION-form CTF of ``tests/references.py``, not with ``jaxcryo.ctf``."""

import dataclasses

import jax.numpy as jnp
import mrcfile
import numpy as np
import pytest
import starfile

from experiments import quickstart
from jaxcryo import ctf, evaluate
from jaxcryo.inversion import compare_with_truth, reconstruct_from_star
from jaxcryo.io import read_particles
from jaxcryo.io.star import write_particles_star
from jaxcryo.io.table import InputError
from jaxcryo.simulate import simulate_dataset
from references import relion_form_ctf

PARAMS = dict(defocus_u_angstrom=21000.0, defocus_v_angstrom=18500.0, defocus_angle_deg=33.0, voltage_kv=300.0,
              spherical_aberration_mm=2.7, amplitude_contrast=0.1)


def test_a_flipped_image_has_the_absolute_ctf():
    both = {k: jnp.full(2, v) for k, v in PARAMS.items()}
    grids = np.asarray(ctf.ctf_grid(48, 2.0, phase_flipped=jnp.asarray([0.0, 1.0]), **both))
    plain = np.asarray(ctf.ctf_grid(48, 2.0, **PARAMS))
    np.testing.assert_allclose(grids[0], plain, atol=1e-9)
    np.testing.assert_allclose(grids[1], np.abs(plain), atol=1e-9)
    assert (plain < 0).mean() > 0.3  # the flip matters on this grid


def _phase_flip(images: np.ndarray, table, pixel: float) -> np.ndarray:
    """Each image's centred transform multiplied by the sign of its RELION-form CTF (relion_preprocess
    --phase_flip's operation), back to real space."""
    size = images.shape[-1]
    out = np.empty_like(images)
    for i, image in enumerate(images):
        sign = np.sign(relion_form_ctf(size, pixel, table.defocus_u_angstrom[i], table.defocus_v_angstrom[i],
                                       table.defocus_angle_deg[i], table.voltage_kv[i],
                                       table.spherical_aberration_mm[i], table.amplitude_contrast[i]))
        f = np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(image)))
        out[i] = np.real(np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(f * sign))))
    return out


@pytest.fixture(scope="module")
def flipped_set(tmp_path_factory):
    """A simulated set (600 x 32 px at 6 A/px, SNR 1) and its phase-flipped twin, flagged and not."""
    root = tmp_path_factory.mktemp("flip")
    config = quickstart.get_config().simulate
    config.update(n_images=600, image_size=32, pixel_size_angstrom=6.0, snr=1.0, chunk_size=600)
    simulate_dataset(config, str(root / "plain"), log=lambda *_: None)
    table = read_particles(root / "plain" / "particles.star")
    with mrcfile.open(root / "plain" / "particles.mrcs") as m:
        flipped = _phase_flip(m.data.astype(np.float64), table, 6.0).astype(np.float32)
    star = starfile.read(root / "plain" / "particles.star")
    for name, flag in (("flagged", 1), ("unflagged", 0)):
        (root / name).mkdir()
        with mrcfile.new(root / name / "particles.mrcs") as m:
            m.set_data(flipped)
            m.voxel_size = 6.0
        starfile.write({"optics": star["optics"].assign(rlnCtfDataArePhaseFlipped=flag), "particles": star["particles"]},
                       root / name / "particles.star")
    return root


def test_a_phase_flipped_stack_inverts_as_its_unflipped_original(flipped_set):
    # At the true poses the flagged flipped stack must give the original's map (the flip is undone by
    # modelling |CTF|); read as unflipped, the same images put every frequency beyond the CTF's first
    # zero with the wrong sign wherever the CTF is negative, and the map falls apart there.
    truth_poses, truth_map = flipped_set / "plain" / "ground_truth_poses.star", flipped_set / "plain" / "ground_truth.mrc"
    maps = {name: reconstruct_from_star(flipped_set / name / "particles.star", truth_poses)["map"]
            for name in ("plain", "flagged", "unflagged")}
    fsc = {name: compare_with_truth(volume, truth_map)["fsc05_angstrom"] for name, volume in maps.items()}
    assert fsc["flagged"] <= 1.03 * fsc["plain"], fsc
    assert fsc["unflagged"] > 1.5 * fsc["plain"], fsc
    same = evaluate.fsc(maps["flagged"], maps["plain"])
    assert np.min(same[1:]) > 0.97, same


def test_the_flag_is_read_and_written_back(flipped_set, tmp_path):
    table = read_particles(flipped_set / "flagged" / "particles.star")
    assert np.all(table.phase_flipped == 1)
    assert np.all(read_particles(flipped_set / "unflagged" / "particles.star").phase_flipped == 0)
    write_particles_star(tmp_path / "out.star", table)
    assert np.all(starfile.read(tmp_path / "out.star")["optics"]["rlnCtfDataArePhaseFlipped"] == 1)
    assert np.all(read_particles(tmp_path / "out.star").phase_flipped == 1)
    plain = dataclasses.replace(table, phase_flipped=np.zeros(len(table)))
    write_particles_star(tmp_path / "plain.star", plain)  # unflipped stacks keep the optics block they had
    assert "rlnCtfDataArePhaseFlipped" not in starfile.read(tmp_path / "plain.star")["optics"]


def test_relion30_per_particle_flag(flipped_set, tmp_path):
    star = starfile.read(flipped_set / "plain" / "particles.star")
    particles = star["particles"].merge(star["optics"], on="rlnOpticsGroup").drop(columns=["rlnOpticsGroupName"])
    particles["rlnCtfDataArePhaseFlipped"] = (np.arange(len(particles)) % 2).astype(int)
    starfile.write(particles, tmp_path / "relion30.star")  # one data block, no optics
    (tmp_path / "particles.mrcs").symlink_to(flipped_set / "plain" / "particles.mrcs")
    table = read_particles(tmp_path / "relion30.star")
    np.testing.assert_array_equal(table.phase_flipped, np.arange(len(table)) % 2)


@pytest.mark.parametrize("column, value, message", [
    ("rlnCtfDataAreCtfPremultiplied", 1, "CTF-premultiplied"),
    ("rlnCtfDataArePhaseFlipped", 2, "expected 0 or 1"),
])
def test_premultiplied_or_bad_flags_are_refused(flipped_set, tmp_path, column, value, message):
    star = starfile.read(flipped_set / "plain" / "particles.star")
    starfile.write({"optics": star["optics"].assign(**{column: value}), "particles": star["particles"]},
                   tmp_path / "particles.star")
    (tmp_path / "particles.mrcs").symlink_to(flipped_set / "plain" / "particles.mrcs")
    with pytest.raises(InputError, match=message) as info:
        read_particles(tmp_path / "particles.star")
    assert str(tmp_path / "particles.star") in str(info.value) and column in str(info.value)
