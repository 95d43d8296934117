"""The off-centre check (jaxcryo.centring) against stacks simulated with known offsets."""

import numpy as np
import pytest

from experiments import common, quickstart
from jaxcryo import centring, simulate
from jaxcryo.dataset import prepare_data, takes_centred
from jaxcryo.io import check_stacks, read_particles
from jaxcryo.io.loader import ImageSource

L = 48


@pytest.fixture(scope="module")
def stacks(tmp_path_factory):
    """The same 1,200 views of one particle (48 px at 4 A/px, SNR 0.3) centred and up to +-8 % off."""
    out = {}
    for name, shift in (("centred", 0.0), ("offset", 0.08)):
        cfg = common.simulate_config(volume="family:compact:3", n_images=1200, image_size=L, pixel_size_angstrom=4.0,
                                     snr=0.3, max_shift_fraction=shift, chunk_size=600, seed=5)
        outdir = tmp_path_factory.mktemp(name)
        simulate.simulate_dataset(cfg, outdir, log=lambda *_: None)
        out[name] = outdir / "particles.star"
    return out


def _spread_angstrom(star):
    table = read_particles(star)
    source = ImageSource(table, check_stacks(table))
    source.estimate_normalization(seed=0)
    said = []
    return centring.check(source, seed=0, log=said.append), said, table


def test_offsets_are_measured_and_centred_particles_pass_quietly(stacks):
    offset, said_offset, table = _spread_angstrom(stacks["offset"])
    truth = read_particles(stacks["offset"].parent / "ground_truth_poses.star")
    true_std = float(np.mean(np.std(truth.displacements_angstrom(), axis=0)))  # uniform +-3.8 px: ~8.9 A
    assert true_std > 8
    # the covariance of the two checkerboard halves' centres holds the offsets (and each view's blob centre)
    assert 0.8 * true_std < offset < 1.3 * true_std
    assert said_offset == [f"{table.source}: the particles look off-centre (their centres spread ~{offset:.1f} A per "
                           "axis over 1200 images; centred stacks read 1.4-4.4 A) and this config takes them as centred: "
                           "set model.estimate_shifts=True, or use experiments/particles.py"]
    centred, said_centred, _ = _spread_angstrom(stacks["centred"])
    assert centred < centring.WARN_ANGSTROM and said_centred == []


def test_the_halves_noise_does_not_read_as_offsets():
    # pure white noise: the two halves' centres share no signal, so their covariance is ~0 however noisy
    rng = np.random.default_rng(0)
    images = rng.normal(size=(800, L, L)).astype(np.float32)
    ctf = np.ones((800, L, L), np.float32)
    spread_px, noise_px = centring.offset_spread_px(images, ctf, 4.0)
    assert noise_px > 3 and abs(spread_px) < 0.35 * noise_px


def test_only_a_run_that_takes_particles_as_centred_checks(stacks, tmp_path):
    config = quickstart.get_config()
    config.data.particles = str(stacks["offset"])
    assert takes_centred(config)
    said = []
    prepare_data(config, tmp_path / "a", log=said.append)
    assert sum("look off-centre" in line for line in said) == 1
    config.model.estimate_shifts = True
    assert not takes_centred(config)
    said = []
    prepare_data(config, tmp_path / "b", log=said.append)
    assert not any("look off-centre" in line for line in said)
