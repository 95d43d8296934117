"""The hierarchical pose search (jaxcryo.search) on clean projections of a known map."""

import jax
import jax.numpy as jnp
import numpy as np

from jaxcryo import ctf as ctf_lib
from jaxcryo import geometry, losses, phantoms, search, simulate, slicing


def _clean(n=8, size=32, seed=0):
    vol_h = slicing.volume_to_hartley(jnp.asarray(phantoms.protein_phantom(size, 6.0)))
    rots = geometry.random_rotations(jax.random.key(seed), (n,), jnp.float32)
    defocus = jnp.full((n,), 15_000.0)
    ctf = ctf_lib.ctf_grid(size, 6.0, defocus_u_angstrom=defocus, defocus_v_angstrom=defocus,
                           defocus_angle_deg=jnp.zeros(n), voltage_kv=300.0, spherical_aberration_mm=2.7,
                           amplitude_contrast=0.1).astype(jnp.float32)
    images = simulate.clean_images(vol_h, rots, jnp.zeros((n, 2)), ctf)
    return vol_h, rots, ctf, losses.images_to_hartley(images) * size, slicing.frequency_mask(size)


def test_global_search_keeps_the_best_k_in_order():
    vol_h, rots, ctf, target, mask = _clean()
    grid = jnp.concatenate([geometry.random_rotations(jax.random.key(3), (50,), jnp.float32), rots])
    best, loss, shifts = search.global_search(vol_h, grid, ctf, target, mask, top_k=3)
    assert best.shape == (8, 3, 3, 3) and loss.shape == (8, 3) and shifts is None
    assert np.all(np.diff(np.asarray(loss), axis=1) >= 0)
    assert np.max(np.asarray(geometry.geodesic_distance_deg(best[:, 0], rots))) < 1e-3  # the truth is first


def test_local_refinement_walks_from_a_coarse_pose_to_the_true_one():
    vol_h, rots, ctf, target, mask = _clean()
    off = geometry.so3_exp(jnp.deg2rad(8.0) * jax.random.normal(jax.random.key(1), (8, 3)) / jnp.sqrt(3.0)) @ rots
    start = geometry.geodesic_distance_deg(off, rots)
    refined, loss, _ = search.local_refine(vol_h, off[:, None], ctf, target, mask, jax.random.key(2), n_local=16,
                                           sigma_deg=10.0, rounds=4)
    after = geometry.geodesic_distance_deg(refined, rots)
    assert float(jnp.median(start)) > 4.0 and float(jnp.median(after)) < 2.0, (start, after)
    assert np.all(np.asarray(after) < np.asarray(start))
    before_loss = losses.per_image_loss(losses.predict(vol_h, off, ctf), target, mask)
    assert np.all(np.asarray(loss) <= np.asarray(before_loss))  # a round never makes a pose worse


def test_top_k_lets_the_second_coarse_candidate_win_after_refinement():
    """Two coarse candidates: the better-scoring one is far from the truth, the other 10 deg from it;
    refining both and choosing afterwards finds the truth, taking the first coarse winner would not."""
    vol_h, rots, ctf, target, mask = _clean(n=4)
    near = geometry.so3_exp(jnp.deg2rad(10.0) * jnp.array([[1.0, 0, 0]] * 4)) @ rots
    far = geometry.so3_exp(jnp.deg2rad(60.0) * jnp.array([[0, 1.0, 0]] * 4)) @ rots
    cands = jnp.stack([far, near], axis=1)
    refined, _, _ = search.local_refine(vol_h, cands, ctf, target, mask, jax.random.key(0), 16, 12.0, 4)
    assert float(jnp.max(geometry.geodesic_distance_deg(refined, rots))) < 3.0


def test_search_poses_shapes_and_settings_from_config():
    from experiments import quickstart

    vol_h, rots, ctf, target, mask = _clean(n=4)
    settings = search.SearchSettings(n_global=64, top_k=2, n_local=4, rounds=1)
    rot, loss, shift = search.search_poses(vol_h, ctf, target, mask, jax.random.key(0), settings)
    assert rot.shape == (4, 3, 3) and loss.shape == (4,) and shift is None
    cfg = search.SearchSettings.from_config(quickstart.get_config().model, estimate_shifts=False)
    assert cfg.n_global == 2048 and cfg.shift_radius_px == 0 and cfg.global_radius == 0.0
    model = quickstart.get_config().model
    model.search_global_radius = 0.5
    assert search.SearchSettings.from_config(model, estimate_shifts=False).global_radius == 0.5


def test_research_schedule_repeats_only_while_it_pays():
    from experiments import common
    from jaxcryo.research import research_due

    config = common.base_config()
    tc = config.train
    tc.update(research_every_epochs=2, research_candidates=64)
    due = lambda e, moved=0.0: research_due(config, e, 6, {"research_moved": moved})  # noqa: E731
    assert [e for e in range(1, 7) if due(e)] == [2, 4]  # fixed schedule; never after the last epoch
    tc.research_repeat_fraction = 0.02
    assert due(3, moved=0.25) and not due(3, moved=0.01) and not due(6, moved=0.5)


def test_autodecoding_goes_on_past_its_plan_only_while_the_research_moves_images():
    from experiments import common
    from jaxcryo.research import another_autodecoding_epoch, research_due

    config = common.base_config()
    config.model.search_candidates = 2048
    tc = config.train
    tc.update(research_every_epochs=2, research_candidates=64, research_repeat_fraction=0.02, epochs_autodecoding_max=9,
              epochs_autodecoding_max_heads_only=12)

    def simulate(moved_per_research):
        """Epochs run and epochs after which a re-search ran, when the k-th re-search moves moved_per_research[k]."""
        progress, ran, k = {"epoch": 0}, [], 0
        while another_autodecoding_epoch(config, progress["epoch"], 6, progress):
            progress["epoch"] += 1
            if research_due(config, progress["epoch"], 6, progress):
                progress.update(research_moved=moved_per_research[k], research_epoch=progress["epoch"])
                ran.append(progress["epoch"])
                k += 1
        return progress["epoch"], ran

    # settles early: the plan (6 epochs, searches after 2 and 4; after 3 only while the one before paid)
    assert simulate([0.01, 0.01, 0.01]) == (6, [2, 4])
    assert simulate([0.30, 0.01, 0.01]) == (6, [2, 3, 4])
    # still moving at the end of the plan: searched after 5 and 6, an epoch of refining after each, until
    # a search moves < 2 % (after 7) and epoch 8 refines what it moved
    assert simulate([0.3, 0.2, 0.1, 0.05, 0.03, 0.01, 0.01]) == (8, [2, 3, 4, 5, 6, 7])
    # never past the cap, and no search after the last epoch the cap allows
    assert simulate([0.5] * 10) == (9, [2, 3, 4, 5, 6, 7, 8])
    config.model.search_candidates = 0  # the heads alone posed the amortized stage: the re-search does the ab initio
    assert simulate([0.5] * 12) == (12, list(range(2, 12)))
    tc.epochs_autodecoding_max_heads_only = 0  # unset: the one cap
    assert simulate([0.5] * 10) == (9, [2, 3, 4, 5, 6, 7, 8])
    tc.epochs_autodecoding_max = 0  # off: the plan, as before
    assert simulate([0.5] * 10) == (6, [2, 3, 4, 5])
    tc.update(epochs_autodecoding_max=9, research_stop_fraction=0.01)  # a pass that moved < 1 % ends the searches
    assert simulate([0.30, 0.005, 0.3]) == (6, [2, 3])
    assert simulate([0.30, 0.01, 0.01]) == (6, [2, 3, 4])
    assert simulate([0.3, 0.2, 0.1, 0.05, 0.03, 0.005]) == (8, [2, 3, 4, 5, 6, 7])  # epoch 8 refines the last moves


def test_a_run_that_stops_at_its_limit_still_moving_says_so(caplog):
    from experiments import common
    from jaxcryo.research import (another_autodecoding_epoch, log_if_unsettled, research_due, settling_summary,
                                  unsettled_at_limit)

    config = common.base_config()
    config.model.search_candidates = 2048
    config.train.update(research_every_epochs=2, research_candidates=64, research_repeat_fraction=0.02,
                        research_stop_fraction=0.01, epochs_autodecoding_max=9)

    def end(moved_per_research):
        """The progress at the end of auto-decoding when the k-th re-search moves moved_per_research[k]."""
        progress, k = {"epoch": 0}, 0
        while another_autodecoding_epoch(config, progress["epoch"], 6, progress):
            progress["epoch"] += 1
            if research_due(config, progress["epoch"], 6, progress):
                progress.update(research_moved=moved_per_research[k], research_epoch=progress["epoch"])
                k += 1
        return progress

    still = end([0.3, 0.2, 0.1, 0.08, 0.05, 0.04, 0.03])  # the last pass (after epoch 8) moved 3 %: cut at 9
    assert still["epoch"] == 9 and unsettled_at_limit(config, 9, 6, still) == 0.03
    settled = end([0.3, 0.2, 0.1, 0.05, 0.03, 0.01, 0.01])  # a pass below 2 %: ended at 8, before the limit
    assert settled["epoch"] == 8 and unsettled_at_limit(config, 8, 6, settled) is None
    calm = end([0.01, 0.01])  # settled within the plan
    assert calm["epoch"] == 6 and unsettled_at_limit(config, 6, 6, calm) is None
    with caplog.at_level("WARNING"):
        log_if_unsettled(config, 8, 6, settled)
        assert not caplog.records
        log_if_unsettled(config, 9, 6, still)
    assert "limit of 9 epochs with its poses still moving" in caplog.text and "3.0 %" in caplog.text
    assert "(train.epochs_autodecoding_max)" in caplog.text
    assert settling_summary(config, still, 6) == {"autodecoding_epochs_run": 9, "autodecoding_unsettled_fraction": 0.03}
    assert settling_summary(config, settled, 6) == {"autodecoding_epochs_run": 8, "autodecoding_unsettled_fraction": None}
    config.model.search_candidates, config.train.epochs_autodecoding_max_heads_only = 0, 12  # the heads' path
    assert unsettled_at_limit(config, 9, 6, still) is None  # its limit is 12
    config.train.research_every_epochs = 0  # no re-search: nothing to say
    assert unsettled_at_limit(config, 12, 6, dict(still, epoch=12)) is None


def test_the_cropped_global_stage_is_the_low_frequency_disc_of_the_full_one():
    """Slices of the cropped volume are the cropped slices, so the global stage on the crop ranks
    candidates exactly as the whole arrays would with the loss disc cut at the same radius."""
    vol_h, rots, ctf, target, mask = _clean(n=6)
    c_vol, c_ctf, c_target, c_mask = search.global_crop(vol_h, ctf, target, 0.5)
    assert c_vol.shape == (18, 18, 18) and c_target.shape == (6, 18, 18) and int(c_mask.sum()) < c_mask.size
    full = slicing.extract_slices(vol_h, rots, 32)
    cropped = slicing.extract_slices(c_vol, rots, 18)
    from jaxcryo import fourier

    in_disc = c_mask[None]
    np.testing.assert_allclose(np.asarray(cropped * in_disc), np.asarray(fourier.crop_center(full, 18) * in_disc), rtol=1e-5, atol=1e-3)
    grid = geometry.random_rotations(jax.random.key(5), (256,), jnp.float32)
    on_crop = losses.search_losses(c_vol, grid, c_ctf, c_target, c_mask)
    on_full = losses.search_losses(vol_h, grid, ctf, target, slicing.frequency_mask(32, 0.5))
    np.testing.assert_allclose(np.asarray(on_crop), np.asarray(on_full), rtol=1e-4, atol=1e-6)
    assert np.array_equal(np.argsort(np.asarray(on_crop), axis=1)[:, :5], np.argsort(np.asarray(on_full), axis=1)[:, :5])
    # the search returns losses on the whole disc whatever the global stage used
    settings = search.SearchSettings(n_global=512, top_k=2, n_local=4, rounds=2, global_radius=0.5)
    rot, loss, _ = search.search_poses(vol_h, ctf, target, mask, jax.random.key(0), settings)
    np.testing.assert_allclose(np.asarray(loss), np.asarray(losses.per_image_loss(losses.predict(vol_h, rot, ctf), target, mask)),
                               rtol=1e-5)


def test_the_cropped_global_stage_keeps_to_the_callers_loss_mask():
    """A loss disc smaller than the global radius (a marched loss) bounds the coarse ranking too: noise
    put only on the frequencies between the two discs changes no coarse loss, on the crop or in the
    uncropped fallback, and the coarse losses are those of the whole arrays under the small disc."""
    vol_h, _, ctf, target, _ = _clean(n=6)
    small = slicing.frequency_mask(32, 0.3)
    ring = slicing.frequency_mask(32, 0.5) & ~small
    noisy = target + 50.0 * ring * jax.random.normal(jax.random.key(1), target.shape)
    grid = geometry.random_rotations(jax.random.key(5), (128,), jnp.float32)
    on_small = losses.search_losses(vol_h, grid, ctf, target, small)

    def coarse_losses(images, radius, mask):
        c_vol, c_ctf, c_target, c_mask = search.global_crop(vol_h, ctf, images, radius, mask)
        return losses.search_losses(c_vol, grid, c_ctf, c_target, c_mask)

    for radius in (0.5, 1.0):  # 1.0: nothing to crop, the arrays come back whole
        clean_l, noisy_l = coarse_losses(target, radius, small), coarse_losses(noisy, radius, small)
        np.testing.assert_allclose(np.asarray(noisy_l), np.asarray(clean_l), rtol=1e-5)
        np.testing.assert_allclose(np.asarray(clean_l), np.asarray(on_small), rtol=1e-4, atol=1e-6)
    # without the caller's mask the ring is inside the coarse disc, and its noise counts
    unmasked_gain = coarse_losses(noisy, 0.5, None) - coarse_losses(target, 0.5, None)
    assert float(jnp.min(unmasked_gain)) > float(jnp.max(on_small))


def test_cropped_global_stage_applies_shifts_in_the_crops_pixels():
    """A shift of s pixels of the box is s * crop / box pixels of the crop: shifted clean images are
    matched exactly at their true pose and shift on the crop, and the shift comes back in box pixels."""
    vol_h, rots, _, _, mask = _clean(n=4)
    size = 32
    shifts = jnp.array([[3.0, -2.0], [-1.5, 2.5], [0.0, 4.0], [2.0, 0.0]])
    ctf = jnp.ones((4, size, size))
    target = losses.images_to_hartley(simulate.clean_images(vol_h, rots, shifts, ctf)) * size
    c_vol, c_ctf, c_target, c_mask = search.global_crop(vol_h, ctf, target, 0.5)
    grid = jnp.concatenate([rots, geometry.random_rotations(jax.random.key(3), (60,), jnp.float32)])
    scale = c_target.shape[-1] / size
    _, loss, found = search.global_search(c_vol, grid, c_ctf, c_target, c_mask, shifts * scale, top_k=1)
    unshifted = search.global_search(c_vol, grid, c_ctf, c_target, c_mask, shifts, top_k=1)[1]  # box pixels: wrong
    typical = float(jnp.mean(losses.search_losses(c_vol, grid, c_ctf, c_target, c_mask)))
    assert float(jnp.max(loss)) < 1e-3 * typical < float(jnp.min(unshifted))
    settings = search.SearchSettings(n_global=64, top_k=1, n_local=4, rounds=2, global_radius=0.5)
    rot, loss, shift = search.search_poses(vol_h, ctf, target, mask, jax.random.key(0), settings, shift_px=shifts)
    np.testing.assert_allclose(np.asarray(shift), np.asarray(shifts), atol=1e-5)


def _stub_source(n: int, size: int):
    """A source class for ``research_poses``: n blank images of size px with zero CTF fields, each
    instance recording the rows it was asked for (``seen``)."""
    from jaxcryo.io.loader import Batch
    from jaxcryo.io.table import CTF_FIELDS

    class Table:
        def __len__(self):
            return n

    table = Table()
    for key in CTF_FIELDS:
        setattr(table, key, np.zeros(n, np.float32))

    class Source:
        threads = 1

        def __init__(self):
            self.table, self.image_size, self.pixel_size_angstrom, self.seen = table, size, 3.0, []

        def batch(self, rows):
            self.seen.append(np.array(rows))
            return Batch(np.asarray(rows), np.zeros((len(rows), size, size), np.float32))

    return Source


def test_with_half_maps_each_image_is_searched_and_judged_with_the_other_halfs_map():
    """``research_poses`` with ``HalfMaps``: the rows of half set 1 meet half 2's map and vice versa,
    every row once (a stub search whose found pose wins only under the map tagged 1)."""
    import jax
    import jax.numpy as jnp

    from jaxcryo import steps
    from jaxcryo.research import HalfMaps, research_poses

    n, size = 10, 8
    Source = _stub_source(n, size)

    def search(vol, batch, radius, key, rots, shifts):
        half_turn = jnp.asarray(np.diag([-1.0, -1.0, 1.0]), jnp.float32)
        ones = jnp.ones(rots.shape[0], jnp.float32)
        return rots @ half_turn, shifts, vol["tag"] * ones, 1.5 * ones  # more likely only under map 1

    labels = np.array([1, 2, 2, 1, 1, 2, 1, 2, 2, 1])
    tables = steps.init_pose_tables(np.tile(np.eye(3, dtype=np.float32), (n, 1, 1)), np.zeros((n, 2), np.float32))
    mesh = steps.make_mesh(jax.devices()[:1])
    sharding = jax.NamedSharding(mesh, jax.sharding.PartitionSpec(steps.AXIS))
    source = Source()
    new, moved = research_poses(search, {"tag": jnp.float32(0.0)}, tables, source, 4, sharding, 1.0, jax.random.key(0),
                                False, halves=HalfMaps(labels, {"tag": jnp.float32(1.0)}, {"tag": jnp.float32(2.0)}))
    went = np.abs(new["rotations"][:, 0, 0] + 1) < 1e-6  # the rows that took the half-turned pose
    np.testing.assert_array_equal(went, labels == 2)
    assert moved == np.mean(labels == 2)
    seen = np.concatenate(source.seen)
    assert set(seen.tolist()) == set(range(n))  # every row searched (the padded chunks repeat rows)
    # without halves every row meets the one map (tag 0: every found pose wins)
    new, moved = research_poses(search, {"tag": jnp.float32(0.0)}, tables, Source(), 4, sharding, 1.0,
                                jax.random.key(0), False)
    assert moved == 1.0
    # with a judge: searched with the map of every image (tag 0), judged with the other half's map
    searched_with = []

    def recording_search(vol, batch, radius, key, rots, shifts):
        searched_with.append(float(vol["tag"]))
        return search(vol, batch, radius, key, rots, shifts)

    def judge(vol, batch, radius, rots, shifts):  # (B, 2) poses: the current one, the found one
        assert rots.shape[1:] == (2, 3, 3) and shifts.shape[1:] == (2, 2)
        found_turned = jnp.abs(rots[:, 1, 0, 0] + 1) < 1e-6
        return (jnp.stack([jnp.full(rots.shape[0], 1.5), jnp.where(found_turned, vol["tag"], 9.0)], 1),)

    new, moved = research_poses(recording_search, {"tag": jnp.float32(0.0)}, tables, Source(), 4, sharding, 1.0,
                                jax.random.key(0), False,
                                halves=HalfMaps(labels, {"tag": jnp.float32(1.0)}, {"tag": jnp.float32(2.0)}), judge=judge)
    assert set(searched_with) == {0.0}
    went = np.abs(new["rotations"][:, 0, 0] + 1) < 1e-6
    np.testing.assert_array_equal(went, labels == 2)  # half 2's rows meet map 1 (1 < 1.5); half 1's map 2 (2 > 1.5)
    assert moved == np.mean(labels == 2)


def test_evidence_is_the_gaussian_log_likelihood_ratio_of_two_poses():
    """``evidence_nats`` from the losses alone against log N(y; p_found, s^2) - log N(y; p_current, s^2)
    summed over the loss disc, with s known (images whose current pose is right: residual = noise)."""
    import jax.numpy as jnp

    from jaxcryo import losses, slicing
    from jaxcryo.research import evidence_nats

    rng = np.random.default_rng(3)
    n, size, s = 400, 16, 1.7
    signal = rng.normal(size=(n, size, size))
    other = signal + 0.05 * rng.normal(size=(n, size, size))  # a near-equal pose's prediction
    y = signal + s * rng.normal(size=(n, size, size))
    mask = np.asarray(slicing.frequency_mask(size, 0.75))
    current = np.asarray(losses.per_image_loss(jnp.asarray(signal, jnp.float32), jnp.asarray(y, jnp.float32),
                                               jnp.asarray(mask)))
    found = np.asarray(losses.per_image_loss(jnp.asarray(other, jnp.float32), jnp.asarray(y, jnp.float32),
                                             jnp.asarray(mask)))
    exact = 0.5 * (((y - signal) ** 2 - (y - other) ** 2) * mask).sum(axis=(1, 2)) / s**2
    got = evidence_nats(current, found, size, 0.75)
    # the noise variance is estimated from the median current loss: within a few per cent of s^2
    np.testing.assert_allclose(got, exact, rtol=0.06, atol=0.02)
    assert np.corrcoef(got, exact)[0, 1] > 0.999


def test_an_image_moves_only_when_the_found_pose_is_more_likely_by_the_margin(caplog):
    """``research_poses(..., min_gain_nats=g)``: rows whose found pose wins by less than g nats stay, and
    the log says how many the margin held back."""
    import logging

    import jax
    import jax.numpy as jnp

    from jaxcryo import slicing, steps
    from jaxcryo.research import research_poses

    n, size = 8, 8
    gains = np.array([-1.0, 0.5, 1.0, 2.9, 3.1, 5.0, 40.0, 0.0])  # nats in favour of the found pose
    m = float(np.sum(np.asarray(slicing.frequency_mask(size, 1.0))))
    current = np.ones(n, np.float32)  # median loss 1: noise variance 2 per coefficient
    found = (current - gains * 2.0 / m).astype(np.float32)

    Source = _stub_source(n, size)

    def search(vol, batch, radius, key, rots, shifts):
        half_turn = jnp.asarray(np.diag([-1.0, -1.0, 1.0]), jnp.float32)
        rows = np.asarray(batch["index"])
        return rots @ half_turn, shifts, jnp.asarray(found[rows]), jnp.asarray(current[rows])

    tables = steps.init_pose_tables(np.tile(np.eye(3, dtype=np.float32), (n, 1, 1)), np.zeros((n, 2), np.float32))
    sharding = jax.NamedSharding(steps.make_mesh(jax.devices()[:1]), jax.sharding.PartitionSpec(steps.AXIS))
    caplog.set_level(logging.INFO)
    for margin, expected in ((0.0, gains > 0), (3.0, gains > 3.0)):
        new, moved = research_poses(search, {}, tables, Source(), 4, sharding, 1.0, jax.random.key(0), False,
                                    min_gain_nats=margin)
        went = np.abs(new["rotations"][:, 0, 0] + 1) < 1e-6
        np.testing.assert_array_equal(went, expected)
        assert moved == expected.mean()
    # 6 of 8 are more likely at the found pose, 3 of 8 by more than 3 nats
    assert "75.0 % of the images are more likely" in caplog.text and "37.5 % by more than the margin of 3" in caplog.text
    assert "by a median gain of 5.00 nats" in caplog.text  # the three moved past the margin: 3.1, 5.0, 40.0
    caplog.clear()
    research_poses(search, {}, tables, Source(), 4, sharding, 1.0, jax.random.key(0), False, min_gain_nats=100.0)
    assert "0.0 % moved" in caplog.text and "median gain" not in caplog.text  # none moved: no median to give
    # capped at 1/4 of the stack: each of the 6 rows that qualify moves with probability 2/6 (at least one
    # and at most 4 for this key; none of the others), the same rows for the same key
    runs = [research_poses(search, {}, tables, Source(), 4, sharding, 1.0, jax.random.key(k), False, move_cap=0.25)
            for k in (1, 1)]
    went = [np.abs(new["rotations"][:, 0, 0] + 1) < 1e-6 for new, _ in runs]
    assert not np.any(went[0] & ~(gains > 0))
    np.testing.assert_array_equal(went[0], went[1])
    assert runs[0][1] == went[0].mean() and 0 < went[0].sum() <= 4
    assert "moved (at most 0.25 of the stack per pass" in caplog.text
    # the schedule's count: the half-turn moves (180 deg) count above 90 deg, not above 180
    for count_deg, share in ((90.0, np.mean(gains > 0)), (180.0, 0.0)):
        new, counted = research_poses(search, {}, tables, Source(), 4, sharding, 1.0, jax.random.key(0), False,
                                      count_min_deg=count_deg)
        np.testing.assert_array_equal(np.abs(new["rotations"][:, 0, 0] + 1) < 1e-6, gains > 0)
        assert counted == share


def test_a_pass_moves_at_most_the_cap_a_random_subset_of_the_images_that_qualify():
    """``research.damped``: when more than ``cap`` of the stack qualify, each moves with probability
    cap x N / their number (about cap x N in all), no other image moves, the draw is the key's (every
    process makes the same); when fewer qualify, all of them move."""
    import jax

    from jaxcryo.research import damped

    better = np.random.default_rng(0).random(20000) < 0.4
    one, again, other = (damped(better, 0.2, jax.random.key(k)) for k in (3, 3, 4))
    assert not np.any(one & ~better)
    np.testing.assert_array_equal(one, again)
    assert abs(one.mean() - 0.2) < 0.01  # binomial sd 0.0025
    assert np.mean(one[better] == other[better]) < 0.55  # another key, another (independent) half
    np.testing.assert_array_equal(damped(better, float(better.mean()) + 1e-6, jax.random.key(3)), better)
    np.testing.assert_array_equal(damped(better, 1.0, jax.random.key(3)), better)
