"""The tiny simulated run that the end-to-end tests share (96 images, 48 px, 4 A/px, one short epoch
per stage), random poses to compare with, and a way to interrupt a run mid-stage."""

import pathlib

import numpy as np

from experiments import quickstart
from jaxcryo import train
from jaxcryo.io import read_particles


def tiny_config(**train_overrides):
    config = quickstart.get_config()
    config.progress_bar = False
    config.simulate.update(n_images=96, image_size=48, pixel_size_angstrom=4.0, chunk_size=96)
    # the map tests compare the written map with the plain inversion: the quickstart's mask has its own test
    config.model.update(n_heads=2, width=1 / 16, search_candidates=64, volume_mask=False)
    # one amortized start unless a test asks for more: the starts have their own tests
    config.train.update(dict(dict(batch_size=16, epochs_amortized=1, epochs_autodecoding=1, amortized_image_size=32,
                                  log_every=2, checkpoint_every_steps=2, amortized_starts=1, amortized_shift_starts=0),
                             **train_overrides))
    return config


class Interrupt(Exception):
    pass


def interrupt_after(run: train.Run, attr: str, n_calls: int):
    inner = getattr(run, attr)
    count = {"n": 0}

    def wrapped(*args):
        count["n"] += 1
        if count["n"] > n_calls:
            raise Interrupt
        return inner(*args)

    setattr(run, attr, wrapped)


def random_pose_star(star: pathlib.Path, out_dir: pathlib.Path, seed: int) -> pathlib.Path:
    """The particles of ``star`` at seeded uniformly random poses, written to out_dir/random.star."""
    from jaxcryo.io.star import write_particles_star

    table = read_particles(star)
    rng, n = np.random.default_rng(seed), len(table)
    euler = np.column_stack([rng.uniform(-180, 180, n), np.degrees(np.arccos(rng.uniform(-1, 1, n))), rng.uniform(-180, 180, n)])
    write_particles_star(out_dir / "random.star", table, euler_deg=euler)
    return out_dir / "random.star"
