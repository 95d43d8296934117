"""The noise model (jaxcryo.noise, jaxcryo.noisemodel) against known spectra, shapes and signs, and the
realistic simulator's effects."""

import pathlib

import jax.numpy as jnp
import numpy as np
import pytest

from experiments import common, quickstart
from jaxcryo import ctf as ctf_lib
from jaxcryo import inversion, noise, simulate
from jaxcryo.dataset import amortized_box, prepare_data, working_box
from jaxcryo.io import InputError, check_stacks, read_particles
from jaxcryo.io.loader import ImageSource
from jaxcryo.io.mrc import write_mrc
from jaxcryo.io.table import CTF_FIELDS
from jaxcryo.stages import stage_epochs

L = 48


def test_noise_power_recovers_a_coloured_spectrum_despite_a_particle():
    rng = np.random.default_rng(0)
    shape = simulate.noise_power_shape(L, 8.0)
    images = simulate.coloured_noise(rng, 400, L, 1.0, shape)
    images[:, 14:34, 14:34] += 5.0 * rng.normal(size=(400, 20, 20))  # a loud "particle" the mask must ignore
    background = noise.background_mask(L, 34.0)
    measured = noise.noise_power(images, background)
    truth = noise.radial_average(shape, L)
    ratio = measured[2: L // 2] / truth[2: L // 2]
    assert np.all(np.abs(ratio - 1) < 0.15), ratio
    # unmasked, the particle's power dominates: the mask is what makes the estimate right
    assert noise.noise_power(images, np.ones((L, L)))[5] > 2 * truth[5]


def test_whitening_makes_the_noise_white():
    rng = np.random.default_rng(1)
    images = simulate.coloured_noise(rng, 300, L, 2.0, simulate.noise_power_shape(L, 20.0))
    profile = noise.whitening_profile(noise.noise_power(images, np.ones((L, L))))
    white = noise.apply_radial_filter(images, np.repeat(profile[None], len(images), 0))
    power = noise.noise_power(white, np.ones((L, L)))[1: L // 2]
    assert np.all(np.abs(power - 1) < 0.12), power


def test_colour_ratio_reads_white_noise_as_one_and_coloured_noise_as_its_spectrum():
    rng = np.random.default_rng(4)
    white = noise.noise_power(rng.normal(size=(300, L, L)), np.ones((L, L)))
    assert noise.colour_ratio(white, L) == pytest.approx(1.0, abs=0.05)
    shape = simulate.noise_power_shape(L, 10.0)  # the simulator's spectrum: 10 x from k = 0 to Nyquist
    k = noise.radius_grid(L)
    # the ratio worked from the spectrum itself: its mean over the radii in (L/8, L/4] and (3L/8, L/2]
    expected = shape[(k > L / 8) & (k <= L / 4)].mean() / shape[(k > 3 * L / 8) & (k <= L / 2)].mean()
    coloured = noise.noise_power(simulate.coloured_noise(rng, 300, L, 1.0, shape), np.ones((L, L)))
    assert expected > 2.5 and noise.colour_ratio(coloured, L) == pytest.approx(expected, rel=0.08)


def test_per_particle_normalization_sets_background_mean_and_std():
    rng = np.random.default_rng(2)
    images = 3.0 * rng.normal(size=(5, L, L)) + np.arange(5)[:, None, None] * 10
    background = noise.background_mask(L, 30.0)
    out = noise.normalize_per_particle(images, background)
    outside = background > 0.999
    assert np.allclose(out[:, outside].mean(axis=1), 0, atol=0.05)
    assert np.allclose(out[:, outside].std(axis=1), 1, atol=0.05)


@pytest.fixture(scope="module")
def realistic_stack(tmp_path_factory):
    """600 realistic images (coloured noise, contrast spread, offsets, B-factor, astigmatism, shifts)."""
    out = tmp_path_factory.mktemp("realistic")
    cfg = common.simulate_config(volume="family:compact:3", n_images=600, image_size=L, pixel_size_angstrom=4.0,
                                 noise_color=10.0, b_factor_angstrom2=80.0, contrast_spread=0.15, offset_std=0.3,
                                 astigmatism_angstrom=700.0, max_shift_fraction=0.05, chunk_size=300, seed=3)
    sim = simulate.simulate_dataset(cfg, out, log=lambda *_: None)
    return out / "particles.star", sim


def _ctf(table, rows, size, pixel):
    fields = {k: jnp.asarray(getattr(table, k)[rows], jnp.float32) for k in CTF_FIELDS}
    return np.asarray(ctf_lib.ctf_grid(size, pixel, **fields))


def test_diameter_spectrum_and_contrast_of_a_realistic_stack(realistic_stack):
    star, sim = realistic_stack
    table = read_particles(star)
    source = ImageSource(table, check_stacks(table))
    images = source.read_raw(np.arange(len(table)))
    # the truth's extent: the widest projection of the map above 5 % of its peak
    proj = sim["volume"].sum(axis=0)
    extent = 2 * np.sqrt(((np.argwhere(proj > 0.05 * proj.max()) - L // 2) ** 2).sum(axis=1)).max()
    diameter = noise.estimate_diameter_px(images, 4.0)
    assert 0.9 * extent <= diameter <= 1.6 * extent, (diameter, extent)
    # the simulator's noise spectrum falls 10x from low frequency to Nyquist; the estimate sees it
    power = noise.noise_power(noise.normalize_per_particle(images, noise.background_mask(L, diameter)),
                              noise.background_mask(L, diameter))
    assert 7 < power[2] / power[L // 2 - 1] < 13
    ctf = _ctf(table, np.arange(len(table)), L, 4.0)
    assert noise.contrast_zscore(images, ctf, 4.0, diameter) > 10
    assert noise.contrast_zscore(-images, ctf, 4.0, diameter) < -10


@pytest.mark.parametrize("member", ["elongated:3", "flat:3"])
def test_the_diameter_covers_a_long_particle_end_to_end(tmp_path, member):
    """A rod's ends reach the largest radius only in its side views; the estimate must still cover 99 %
    of the particle's mass (measured from the box centre, where the masks are), so that the volume mask
    (1.2 x the estimate) keeps the whole particle. The former rule (10 % of the profile's peak) gave
    about half an elongated particle's length."""
    cfg = common.simulate_config(volume=f"family:{member}", n_images=600, image_size=L, pixel_size_angstrom=4.0,
                                 noise_color=10.0, b_factor_angstrom2=80.0, contrast_spread=0.15,
                                 astigmatism_angstrom=700.0, max_shift_fraction=0.05, chunk_size=300, seed=3)
    sim = simulate.simulate_dataset(cfg, tmp_path, log=lambda *_: None)
    table = read_particles(tmp_path / "particles.star")
    images = ImageSource(table, check_stacks(table)).read_raw(np.arange(len(table)))
    volume = np.clip(sim["volume"], 0, None)
    r = np.sqrt(((np.indices(volume.shape) - L // 2) ** 2).sum(axis=0)).ravel()
    order = np.argsort(r)
    mass = np.cumsum(volume.ravel()[order]) / volume.sum()
    extent_99 = 2 * r[order][np.searchsorted(mass, 0.99)]
    diameter = noise.estimate_diameter_px(images, 4.0)
    assert extent_99 <= 1.2 * diameter <= 2.0 * extent_99, (diameter, extent_99)


@pytest.mark.parametrize("diameter, message", [
    (1000.0, r"data.particle_diameter_angstrom = 1000.0 does not fit the 192 A box of .*particles.star"),
    (2.0, r"data.particle_diameter_angstrom = 2.0 is under 8 pixels of 4 A \(32 A\) in .*particles.star; "
          r"give the diameter in A"),
])
def test_a_diameter_no_particle_can_have_is_refused(realistic_stack, tmp_path, diameter, message):
    star, _ = realistic_stack
    config = quickstart.get_config()
    config.data.update(particles=str(star), particle_diameter_angstrom=diameter)
    config.model.volume_mask = True  # a run that uses the diameter
    with pytest.raises(InputError, match=message):
        prepare_data(config, tmp_path / "w", log=lambda *_: None)
    config.data.particle_diameter_angstrom = 100.0
    assert prepare_data(config, tmp_path / "w", log=lambda *_: None).particle_diameter_angstrom == 100.0


def test_a_bare_stack_is_said_to_be_taken_without_a_ctf(realistic_stack, tmp_path):
    star, _ = realistic_stack
    config = quickstart.get_config()
    said = []
    for particles in (star, star.with_suffix(".mrcs")):  # the star's CTFs; the same images as a bare stack
        config.data.particles = str(particles)
        prepare_data(config, tmp_path / "w", log=said.append)
    ctf_lines = [line for line in said if "no CTF parameters" in line]
    assert ctf_lines == [f"{star.with_suffix('.mrcs')}: no CTF parameters, so the images are taken as free of any "
                         "CTF (a bare stack holds none: for micrograph particles give their .star or .cs)"], said


def test_an_odd_box_is_said_to_run_slowly_with_the_even_box_to_use(realistic_stack, tmp_path):
    star, _ = realistic_stack
    table = read_particles(star)
    images = ImageSource(table, check_stacks(table)).read_raw(np.arange(len(table)))
    config = quickstart.get_config()
    said = []
    for size in (L, L - 1):
        write_mrc(tmp_path / f"box{size}.mrcs", images[:, :size, :size], 4.0, is_stack=True)
        config.data.particles = str(tmp_path / f"box{size}.mrcs")
        prepare_data(config, tmp_path / "w", log=said.append)
    odd = [line for line in said if "the box is odd" in line]
    assert odd == [f"{tmp_path / f'box{L - 1}.mrcs'}: the box is odd ({L - 1} px), which ran twice as slowly as an "
                   f"even one on a CPU; data.image_size={L - 2} Fourier-crops it to the even box below"], said


def test_the_main_config_whitens_coloured_noise_and_leaves_white_noise_alone(realistic_stack, tmp_path):
    star, _ = realistic_stack
    white_cfg = common.simulate_config(volume="family:compact:3", n_images=300, image_size=L, pixel_size_angstrom=4.0,
                                       chunk_size=300, seed=5)
    simulate.simulate_dataset(white_cfg, tmp_path / "white", log=lambda *_: None)
    config = quickstart.get_config()
    for particles, coloured in ((star, True), (tmp_path / "white" / "particles.star", False)):
        config.data.particles = str(particles)
        said = []
        data = prepare_data(config, tmp_path / "w", log=said.append)
        verdict = [line for line in said if line.startswith("noise: ")]
        assert len(verdict) == 1 and ("so coloured: images and CTFs are whitened" in verdict[0]) == coloured, said
        assert (data.source.profiles is not None) == coloured and (data.coarse.profiles is not None) == coloured
        # whitened images run the amortized stage at 8 A (the whole 48 px box here), white ones at 32 px
        assert data.coarse.image_size == (L if coloured else 32), data.coarse.image_size
        assert [line for line in said if "particles from" in line][0].endswith(
            f"(amortized stage at {L} px for whitened images)" if coloured else "(amortized stage at 32 px)"), said
    config.data.whiten_if_coloured = False  # the paper's data path: never measured, never whitened
    config.data.particles = str(star)
    said = []
    assert prepare_data(config, tmp_path / "w", log=said.append).source.profiles is None
    assert not [line for line in said if line.startswith("noise: ")]


def test_dark_stack_refused_before_anything_is_written(realistic_stack, tmp_path):
    star, _ = realistic_stack
    config = quickstart.get_config()
    config.data.update(particles=str(star), normalize="per_particle", whiten=True, invert_contrast=True)
    config.train.amortized_resolution_whitened_angstrom = 12.0  # an amortized box of 32 px, whitened on its own
    with pytest.raises(InputError, match=r"particles\.star: the protein looks dark in these images after inversion "
                                         r"\(contrast z = -\d+\.\d over 500 particles\)"):
        prepare_data(config, tmp_path / "w", log=lambda *_: None)
    assert not (tmp_path / "w").exists()
    config.data.invert_contrast = False
    data = prepare_data(config, tmp_path / "w", log=lambda *_: None)
    batch = data.source.batch(np.arange(8))
    assert batch.noise_radial.shape == (8, noise.n_radii(L)) and batch.images.shape == (8, L, L)
    assert data.coarse.profiles is not None and data.coarse.noise_radial(np.arange(2)).shape == (2, noise.n_radii(32))


def test_inversion_of_whitened_images_with_whitened_ctf_gives_the_same_map(realistic_stack):
    """Whitening multiplies images and CTF alike: on noise-free data the inversion must not change."""
    star, sim = realistic_stack
    table = read_particles(star)
    rows = np.arange(len(table))
    vol_h = simulate.slicing.volume_to_hartley(jnp.asarray(sim["volume"], jnp.float32), oversample=2)
    clean = np.asarray(simulate.clean_images(vol_h, jnp.asarray(sim["rotations"]), jnp.zeros((len(rows), 2)),
                                             jnp.asarray(_ctf(table, rows, L, 4.0), jnp.float32)))

    class Clean:  # an ImageSource stand-in holding noise-free images, whitened or not
        threads = 1

        def __init__(self, profiles=None, tell_ctf=True):
            self.table, self.image_size, self.pixel_size_angstrom = table, L, 4.0
            self.profiles, self.tell_ctf = profiles, tell_ctf

        def batch(self, r):
            from jaxcryo.io.loader import Batch

            if self.profiles is None:
                return Batch(r, clean[r])
            prof = np.repeat(self.profiles[None], len(r), 0)
            return Batch(r, noise.apply_radial_filter(clean[r], prof), prof if self.tell_ctf else None)

    labels = np.where(rows % 2, 2, 1)
    profile = (1.0 + 4.0 * np.linspace(0, 1, noise.n_radii(L)) ** 2).astype(np.float32)  # far from flat
    plain, whitened, ctf_not_whitened = (
        inversion.reconstruct(src, sim["rotations"], np.zeros((len(rows), 2), np.float32), labels, 64)["map"]
        for src in (Clean(), Clean(profile), Clean(profile, tell_ctf=False)))
    rel = lambda a, b: np.linalg.norm(a - b) / np.linalg.norm(a)  # noqa: E731
    assert rel(plain, whitened) < 0.02  # measured 0.005
    assert rel(plain, ctf_not_whitened) > 0.15  # measured 0.26  # the filtered map: the CTF's whitening is what undoes it


def test_schedule_in_steps_and_amortized_box():
    tc = common.base_config().train
    tc.update(amortized_steps=450, autodecoding_steps=450, epochs_amortized=30, epochs_autodecoding=12)
    assert stage_epochs(tc, 78) == {"amortized": 6, "autodecoding": 6}  # 5,000 particles
    assert stage_epochs(tc, 31) == {"amortized": 15, "autodecoding": 12}  # 2,000: capped
    assert stage_epochs(tc, 3125) == {"amortized": 2, "autodecoding": 2}  # 200,000: the floor
    tc.update(amortized_steps=0, autodecoding_steps=0)
    assert stage_epochs(tc, 78) == {"amortized": 30, "autodecoding": 12}
    tc.amortized_resolution_angstrom = 12.0
    assert amortized_box(tc, 64, 3.0) == 32 and amortized_box(tc, 128, 1.5) == 32 and amortized_box(tc, 256, 1.5) == 64
    assert amortized_box(tc, 24, 6.0) == 24  # never above the full box
    tc.amortized_image_size = 48
    assert amortized_box(tc, 64, 3.0) == 48
    assert amortized_box(tc, 64, 3.0, whitened=True) == 48  # no whitened resolution set: as before
    tc.amortized_resolution_whitened_angstrom = 8.0  # whitened images: the box whose Nyquist is 8 A, before either
    assert amortized_box(tc, 64, 3.0, whitened=True) == 48 and amortized_box(tc, 128, 1.5, whitened=True) == 48
    assert amortized_box(tc, 256, 1.0, whitened=True) == 64 and amortized_box(tc, 32, 3.0, whitened=True) == 32
    tc.amortized_image_size = 32
    assert amortized_box(tc, 64, 3.0, whitened=False) == 32 and amortized_box(tc, 64, 3.0, whitened=True) == 48
    dc = common.base_config().data
    assert working_box(dc, 128, 1.5) == 128  # off by default
    dc.working_resolution_angstrom = 4.0  # the smallest even box whose Nyquist reaches 4 A: 192 A / 2 A
    assert working_box(dc, 128, 1.5) == 96 and working_box(dc, 256, 1.06) == 136 and working_box(dc, 64, 1.5) == 48
    assert working_box(dc, 64, 3.0) == 64  # Nyquist 6 A: nothing to crop


def test_realistic_simulator_options_are_checked(tmp_path):
    cfg = common.simulate_config(n_images=8, image_size=16, contrast_spread=1.5)
    with pytest.raises(InputError, match="contrast_spread"):
        simulate.simulate_dataset(cfg, tmp_path)
    assert not (tmp_path / "particles.star").exists()


def test_particles_config_points_users_to_their_stack(tmp_path):
    from experiments import particles

    config = particles.get_config()
    with pytest.raises(InputError, match=r"--config=experiments/particles\.py --config\.data\.particles=PATH"):
        prepare_data(config, pathlib.Path(tmp_path), log=lambda *_: None)
