"""The loader: seeded, resumable epochs, reading threads, device blocks and half sets."""

import threading
import time

import numpy as np
import pytest

from jaxcryo.io import InputError, check_stacks, read_particles
from jaxcryo.io.loader import (ImageSource, block_bounds, epoch_order, epoch_permutation, half_set_labels,
                               iterate_batches, read_ahead, steps_per_epoch)
from jaxcryo.io.star import write_particles_star
from tests.test_io import make_dataset


def test_loader_is_seeded_resumable_and_covers_the_epoch(tmp_path):
    t = read_particles(make_dataset(tmp_path, n=10))
    source = ImageSource(t, check_stacks(t))
    source.estimate_normalization(seed=0)
    full = list(iterate_batches(source, batch_size=3, seed=5, epoch=1))
    assert [s for s, _ in full] == [0, 1, 2]
    seen = np.concatenate([b.index for _, b in full])
    assert len(set(seen.tolist())) == 9  # 3 full batches; the last partial batch is dropped
    np.testing.assert_array_equal(seen, epoch_permutation(10, 5, 1)[:9])
    resumed = list(iterate_batches(source, batch_size=3, seed=5, epoch=1, start_step=2))
    np.testing.assert_array_equal(resumed[0][1].images, full[2][1].images)
    assert not np.array_equal(epoch_permutation(10, 5, 2), epoch_permutation(10, 5, 1))
    all_images = source.read(np.arange(10))
    assert abs(all_images.mean()) < 0.05 and abs(all_images.std() - 1) < 0.05
    # breaking out early stops the background thread cleanly
    for _ in iterate_batches(source, batch_size=2, seed=0, epoch=0):
        break


def test_reading_threads_give_the_same_batches_in_order(tmp_path):
    t = read_particles(make_dataset(tmp_path, n=10))
    one, three = ImageSource(t, check_stacks(t), threads=1), ImageSource(t, check_stacks(t), threads=3)
    for source in (one, three):
        source.estimate_normalization(seed=0)
    a, b = (list(iterate_batches(s, batch_size=2, seed=4, epoch=0)) for s in (one, three))
    assert [s for s, _ in b] == list(range(5))
    for (_, x), (_, y) in zip(a, b):
        np.testing.assert_array_equal(x.index, y.index)
        np.testing.assert_array_equal(x.images, y.images)


def test_read_ahead_keeps_order_bounds_its_lead_and_raises_where_it_failed():
    started, release = [], threading.Event()

    def read(i):
        started.append(i)
        if i == 0:
            release.wait(5)  # the first read is slow: later ones finish first but come out after it
        if i == 7:
            raise ValueError("item 7 is unreadable")
        return i * i

    out = read_ahead(read, range(10), threads=3, ahead=2)
    time.sleep(0.2)  # nothing starts before the consumer asks
    assert started == []
    first = threading.Thread(target=lambda: time.sleep(0.3) or release.set())
    first.start()
    assert next(out) == (0, 0)
    first.join()
    assert max(started) <= 0 + 2 + 3  # at most ahead + threads reads beyond the item handed out
    got = [next(out) for _ in range(6)]
    assert got == [(i, i * i) for i in range(1, 7)]
    with pytest.raises(ValueError, match="item 7"):
        next(out)
    # a consumer that stops early leaves no reading thread behind
    partial = read_ahead(lambda i: i, range(100), threads=2)
    next(partial)
    partial.close()
    assert not [t for t in threading.enumerate() if t.name.startswith("jaxcryo-read")]


def test_block_order_gives_each_device_its_own_particles():
    """Device d's slice of every step comes from block d (where its pose-table rows live); no particle
    twice in an epoch; one block is the plain permutation."""
    np.testing.assert_array_equal(block_bounds(10, 4), [0, 3, 6, 9, 10])
    assert steps_per_epoch(10, 4, blocks=4) == 1 and steps_per_epoch(100, 8, blocks=2) == 12
    order = epoch_order(100, 8, seed=3, epoch=2, blocks=2)
    assert order.shape == (12, 8)
    assert (order[:, :4] < 50).all() and (order[:, 4:] >= 50).all()
    assert len(set(order.ravel().tolist())) == 96
    np.testing.assert_array_equal(epoch_order(100, 8, 3, 2).ravel(), epoch_permutation(100, 3, 2)[:96])
    assert not np.array_equal(epoch_order(100, 8, 3, 1, blocks=2), order)


def test_half_sets_from_star_or_seeded(tmp_path):
    t = read_particles(make_dataset(tmp_path, n=10))
    labels = half_set_labels(t, seed=3)
    assert sorted(np.bincount(labels)[1:].tolist()) == [5, 5]
    np.testing.assert_array_equal(labels, half_set_labels(t, seed=3))
    with_subset = t.__class__(**{**t.__dict__, "random_subset": np.array([2, 1] * 5)})
    np.testing.assert_array_equal(half_set_labels(with_subset, seed=3), [2, 1] * 5)
    # one half of a gold-standard run (every row rlnRandomSubset 1) is split in two again
    one_half = t.__class__(**{**t.__dict__, "random_subset": np.ones(10, np.int64)})
    np.testing.assert_array_equal(half_set_labels(one_half, seed=3), labels)


def test_each_half_set_run_gets_its_own_rows_of_the_given_poses(tmp_path):
    # halfsets=True with config.start_poses (or poses): each half's run reads the rows of its own
    # particles, in their order; a pose file of another length is refused before anything is written.
    from experiments import quickstart
    from jaxcryo.halfsets import split

    star = make_dataset(tmp_path, n=10)
    table = read_particles(star)
    start = tmp_path / "start.star"
    euler = np.column_stack([np.arange(10) * 30.0, np.full(10, 90.0), np.arange(10) * 7.0])
    write_particles_star(start, table, euler_deg=euler)
    config = quickstart.get_config()
    config.start_poses = str(start)
    halves, _, labels = split(config, tmp_path / "run", str(star), None)
    for half, entry in enumerate(halves, start=1):
        own = read_particles(entry["start_poses"])
        np.testing.assert_array_equal(entry["rows"], np.nonzero(labels == half)[0])
        np.testing.assert_allclose(own.euler_deg, euler[entry["rows"]], atol=1e-4)
        assert own.image_name.tolist() == read_particles(entry["particles"]).image_name.tolist()
    write_particles_star(start, table.subset(np.arange(9)))
    with pytest.raises(InputError, match=rf"{start}: need 10 rows with rlnAngleRot/Tilt/Psi, got 9$"):
        split(config, tmp_path / "other", str(star), None)
    assert not (tmp_path / "other").exists()
